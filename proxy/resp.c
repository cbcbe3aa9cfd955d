/* resp.c: RESP command formatting (see resp.h). */
#include "resp.h"

#include <stdint.h>
#include <string.h>

#include "capgate/num.h"

/* The most a "<c><n>\r\n" line takes. */
#define RESP_HEAD_MAX (1 + NUM_U64_DIGITS + 2)

static char *put_head(char *o, char c, size_t n) {
    *o++ = c;
    o = num_put_u64(o, n);
    *o++ = '\r';
    *o++ = '\n';
    return o;
}

/* One reservation for the whole command, then the bytes written in place. */
int resp_append_command(struct strbuf *out, int argc, const char *const *argv, const size_t *len) {
    size_t need = RESP_HEAD_MAX;
    if (argc < 0) return -1;
    for (int i = 0; i < argc; i++) {
        size_t n = len ? len[i] : strlen(argv[i]);
        if (n > SIZE_MAX / 4 - need) return -1;
        need += RESP_HEAD_MAX + n + 2;
    }
    if (strbuf_reserve(out, need) != 0) return -1;
    char *o = put_head(out->s + out->len, '*', (size_t)argc);
    for (int i = 0; i < argc; i++) {
        size_t n = len ? len[i] : strlen(argv[i]);
        o = put_head(o, '$', n);
        memcpy(o, argv[i], n);
        o += n;
        *o++ = '\r';
        *o++ = '\n';
    }
    out->len = (size_t)(o - out->s);
    out->s[out->len] = '\0';
    return 0;
}
