/* resp.c: RESP command formatting (see resp.h). */
#include "resp.h"

#include <string.h>

#include "capgate/num.h"

/* "<c><n>\r\n" */
static int put_count(struct strbuf *out, char c, size_t n) {
    char head[2 + NUM_U64_DIGITS + 2];
    char *o = head;
    *o++ = c;
    o = num_put_u64(o, n);
    *o++ = '\r';
    *o++ = '\n';
    return strbuf_append(out, head, (size_t)(o - head));
}

int resp_append_command(struct strbuf *out, int argc, const char *const *argv,
                        const size_t *len) {
    if (argc < 0 || put_count(out, '*', (size_t)argc) != 0)
        return -1;
    for (int i = 0; i < argc; i++) {
        size_t n = len ? len[i] : strlen(argv[i]);
        if (put_count(out, '$', n) != 0 || strbuf_append(out, argv[i], n) != 0 ||
            strbuf_append(out, "\r\n", 2) != 0)
            return -1;
    }
    return 0;
}
