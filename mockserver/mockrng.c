/* mockrng.c: RAND_bytes, or the shared xoshiro256** stream (capgate/rng.h) for --seed runs.
 * The seeded stream is for reproducible tests, not secrecy: the mock never guards real secrets. */
#include "mockrng.h"

#include <string.h>

#include <openssl/rand.h>

#include "capgate/rng.h"

void mockrng_init(struct mockrng *r, int seeded, uint64_t seed) {
    memset(r, 0, sizeof(*r));
    r->seeded = seeded ? 1 : 0;
    if (r->seeded) rng_seed(r->s, seed);
}

int mockrng_bytes(struct mockrng *r, unsigned char *buf, size_t n) {
    if (!r->seeded) return RAND_bytes(buf, (int)n) == 1 ? 0 : -1;
    while (n > 0) {
        uint64_t v = rng_next(r->s);
        size_t k = n < 8 ? n : 8;
        for (size_t i = 0; i < k; i++) buf[i] = (unsigned char)(v >> (8 * i));
        buf += k;
        n -= k;
    }
    return 0;
}

int mockrng_token(struct mockrng *r, char *out, size_t len) {
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char raw[128];
    size_t done = 0;
    while (done < len) {
        size_t k = len - done < sizeof(raw) ? len - done : sizeof(raw);
        if (mockrng_bytes(r, raw, k) != 0) return -1;
        /* 64 symbols: the low six bits of each byte are uniform, no modulo bias. */
        for (size_t i = 0; i < k; i++) out[done + i] = alphabet[raw[i] & 63];
        done += k;
    }
    out[len] = '\0';
    return 0;
}

uint64_t mockrng_u64(struct mockrng *r) {
    unsigned char b[8];
    if (mockrng_bytes(r, b, sizeof(b)) != 0) return 0;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | b[i];
    return v;
}

double mockrng_unit(struct mockrng *r) {
    return (double)(mockrng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
}
