/* strbuf.h: a growable NUL-terminated byte string. Embed it; init/cleanup. */
#ifndef CAPGATE_STRBUF_H
#define CAPGATE_STRBUF_H
#include <stddef.h>

struct strbuf {
    char *s; /* always NUL-terminated once anything was appended; NULL when empty */
    size_t len;
    size_t cap;
};

void strbuf_init(struct strbuf *b);
void strbuf_cleanup(struct strbuf *b);                        /* frees; the buffer is empty again */
void strbuf_reset(struct strbuf *b);                          /* len = 0, keeps memory */
int strbuf_append(struct strbuf *b, const char *s, size_t n); /* 0, or -1 on OOM */
/* Room for extra more bytes (and the NUL) after b->len, for a caller that writes at
 * b->s + b->len and then sets len and the NUL itself. 0, or -1 on OOM. */
int strbuf_reserve(struct strbuf *b, size_t extra);
int strbuf_appends(struct strbuf *b, const char *s);
int strbuf_appendc(struct strbuf *b, char c);
int strbuf_appendf(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Returns the string (never NULL on success: "" for empty) and leaves b empty; caller frees. */
char *strbuf_detach(struct strbuf *b);

#endif
