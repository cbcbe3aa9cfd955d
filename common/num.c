/* num.c: the checked decimal parser for every number that comes from outside. Strict on purpose:
 * strtoul would accept spaces, a sign and trailing text, and the API rejects all of those. */
#include "capgate/num.h"

#include <string.h>

int num_parse_range(const char *s, size_t len, uint64_t min, uint64_t max, uint64_t *out) {
    uint64_t v = 0;
    if (!s || len == 0) return -1;
    for (size_t i = 0; i < len; i++) {
        unsigned d = (unsigned char)s[i] - (unsigned)'0';
        if (d > 9) return -1;
        /* v * 10 + d must not pass max; checked before multiplying so nothing wraps. */
        if (d > max || v > (max - d) / 10) return -1;
        v = v * 10 + d;
    }
    if (v < min) return -1;
    *out = v;
    return 0;
}

int num_parse_u64(const char *s, size_t len, uint64_t *out) {
    return num_parse_range(s, len, 0, UINT64_MAX, out);
}

int num_parse_u32(const char *s, size_t len, uint32_t *out) {
    uint64_t v;
    if (num_parse_range(s, len, 0, UINT32_MAX, &v) != 0) return -1;
    *out = (uint32_t)v;
    return 0;
}

int num_parse_u64z(const char *s, uint64_t *out) {
    if (!s) return -1;
    return num_parse_u64(s, strlen(s), out);
}

/* Two digits per division: a Nonce has up to 20 of them, and every forwarded request writes a
 * Timestamp and a Nonce, and its audit record a few more numbers. */
char *num_put_u64(char *o, uint64_t v) {
    static const char pairs[] =
        "00010203040506070809101112131415161718192021222324252627282930313233"
        "34353637383940414243444546474849505152535455565758596061626364656667"
        "6869707172737475767778798081828384858687888990919293949596979899";
    char tmp[NUM_U64_DIGITS];
    char *t = tmp + sizeof tmp;
    while (v >= 100) {
        unsigned r = (unsigned)(v % 100);
        v /= 100;
        t -= 2;
        memcpy(t, pairs + 2 * r, 2);
    }
    if (v >= 10) {
        t -= 2;
        memcpy(t, pairs + 2 * v, 2);
    } else {
        *--t = (char)('0' + v);
    }
    size_t n = (size_t)(tmp + sizeof tmp - t);
    memcpy(o, t, n);
    return o + n;
}

char *num_put_i64(char *o, int64_t v) {
    if (v >= 0) return num_put_u64(o, (uint64_t)v);
    *o++ = '-';
    return num_put_u64(o, (uint64_t)0 - (uint64_t)v);
}

char *num_put_hex64(char *o, uint64_t v) {
    static const char hex[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--) {
        o[i] = hex[v & 15];
        v >>= 4;
    }
    return o + 16;
}
