/* mockrng.c: RAND_bytes, or xoshiro256** seeded through splitmix64 for --seed runs. The seeded
 * stream is for reproducible tests, not secrecy: the mock never guards real secrets. */
#include "mockrng.h"

#include <string.h>

#include <openssl/rand.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(struct mockrng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

void mockrng_init(struct mockrng *r, int seeded, uint64_t seed) {
    memset(r, 0, sizeof(*r));
    r->seeded = seeded ? 1 : 0;
    if (!r->seeded) return;
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

int mockrng_bytes(struct mockrng *r, unsigned char *buf, size_t n) {
    if (!r->seeded) return RAND_bytes(buf, (int)n) == 1 ? 0 : -1;
    while (n > 0) {
        uint64_t v = xoshiro_next(r);
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
