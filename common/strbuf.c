/* strbuf.c: a growable NUL-terminated byte string. */
#include "capgate/strbuf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void strbuf_init(struct strbuf *b) {
    b->s = NULL;
    b->len = 0;
    b->cap = 0;
}

void strbuf_cleanup(struct strbuf *b) {
    free(b->s);
    strbuf_init(b);
}

void strbuf_reset(struct strbuf *b) {
    b->len = 0;
    if (b->s) b->s[0] = '\0';
}

int strbuf_reserve(struct strbuf *b, size_t extra) {
    if (extra > SIZE_MAX / 2 - b->len) return -1;
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) cap *= 2;
    char *s = realloc(b->s, cap);
    if (!s) return -1;
    b->s = s;
    b->cap = cap;
    return 0;
}

int strbuf_append(struct strbuf *b, const char *s, size_t n) {
    if (strbuf_reserve(b, n) != 0) return -1;
    if (n) memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
    return 0;
}

int strbuf_appends(struct strbuf *b, const char *s) {
    return strbuf_append(b, s, strlen(s));
}

int strbuf_appendc(struct strbuf *b, char c) {
    return strbuf_append(b, &c, 1);
}

int strbuf_appendf(struct strbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || strbuf_reserve(b, (size_t)n) != 0) return -1;
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

char *strbuf_detach(struct strbuf *b) {
    char *s = b->s ? b->s : strdup("");
    strbuf_init(b);
    return s;
}
