/* fuzz_resp.c: the RESP formatter (proxy/resp.c). The input is a list of arguments, each a
 * length byte then that many bytes; the formatted command is read back by a parser written here
 * from the RESP spec and must give the same arguments, byte for byte, and nothing after them.
 * The same command, formatted after text already in the buffer, must append exactly it. */
#include <string.h>

#include "capgate/strbuf.h"
#include "fuzz.h"
#include "resp.h"

#define MAX_ARGS 64

/* Reads a decimal line "<prefix><n>\r\n" at *pos; -1 when malformed. */
static long long read_len(const char *s, size_t len, size_t *pos, char prefix) {
    long long n = 0;
    size_t i = *pos;
    if (i >= len || s[i] != prefix) return -1;
    i++;
    if (i >= len || s[i] < '0' || s[i] > '9') return -1;
    while (i < len && s[i] >= '0' && s[i] <= '9') {
        n = n * 10 + (s[i] - '0');
        if (n > (1 << 20)) return -1;
        i++;
    }
    if (i + 1 >= len || s[i] != '\r' || s[i + 1] != '\n') return -1;
    *pos = i + 2;
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *argv[MAX_ARGS];
    size_t lens[MAX_ARGS];
    int argc = 0, use_len = size > 0 && (data[0] & 1);
    size_t i = size ? 1 : 0;
    while (i < size && argc < MAX_ARGS) {
        size_t n = data[i++];
        if (n > size - i) n = size - i;
        argv[argc] = (const char *)data + i;
        lens[argc] = n;
        argc++;
        i += n;
    }
    /* Without lengths the arguments are NUL-terminated copies (cut at an inner NUL). */
    char *copies[MAX_ARGS];
    for (int a = 0; a < argc; a++) {
        copies[a] = NULL;
        if (!use_len) {
            copies[a] = strndup(argv[a], lens[a]);
            FUZZ_CHECK(copies[a]);
            argv[a] = copies[a];
            lens[a] = strlen(copies[a]);
        }
    }

    struct strbuf out;
    strbuf_init(&out);
    FUZZ_CHECK(resp_append_command(&out, argc, argv, use_len ? lens : NULL) == 0);
    size_t pos = 0;
    FUZZ_CHECK(read_len(out.s, out.len, &pos, '*') == argc);
    for (int a = 0; a < argc; a++) {
        long long n = read_len(out.s, out.len, &pos, '$');
        FUZZ_CHECK(n == (long long)lens[a]);
        FUZZ_CHECK(pos + lens[a] + 2 <= out.len);
        FUZZ_CHECK(memcmp(out.s + pos, argv[a], lens[a]) == 0);
        pos += lens[a];
        FUZZ_CHECK(out.s[pos] == '\r' && out.s[pos + 1] == '\n');
        pos += 2;
    }
    FUZZ_CHECK(pos == out.len);

    /* appending keeps what was there */
    struct strbuf two;
    strbuf_init(&two);
    FUZZ_CHECK(strbuf_appends(&two, "PING\r\n") == 0);
    FUZZ_CHECK(resp_append_command(&two, argc, argv, use_len ? lens : NULL) == 0);
    FUZZ_CHECK(two.len == out.len + 6);
    FUZZ_CHECK(memcmp(two.s, "PING\r\n", 6) == 0 && memcmp(two.s + 6, out.s, out.len) == 0);
    /* a negative argc leaves the buffer unchanged */
    FUZZ_CHECK(resp_append_command(&two, -1, argv, NULL) == -1 && two.len == out.len + 6);

    strbuf_cleanup(&two);
    strbuf_cleanup(&out);
    for (int a = 0; a < argc; a++) free(copies[a]);
    return 0;
}
