/* mockrng.h: the mock's source of random values (asig, tickets, randstr, appid, fault draws):
 * OpenSSL's RAND_bytes, or with --seed a deterministic xoshiro256** stream so two runs with the
 * same seed and the same requests produce the same values. */
#ifndef CAPGATE_MOCKRNG_H
#define CAPGATE_MOCKRNG_H
#include <stddef.h>
#include <stdint.h>

struct mockrng {
    int seeded;    /* 1: deterministic stream from seed; 0: RAND_bytes */
    uint64_t s[4]; /* xoshiro256** state */
};

/* seeded = 0 ignores seed. */
void mockrng_init(struct mockrng *r, int seeded, uint64_t seed);
/* n random bytes into buf. 0, or -1 when RAND_bytes fails. */
int mockrng_bytes(struct mockrng *r, unsigned char *buf, size_t n);
/* len characters from A-Z a-z 0-9 - _ into out (out[len] = NUL; out holds len + 1). 0/-1. */
int mockrng_token(struct mockrng *r, char *out, size_t len);
/* A uniform draw in [0, 1). A RAND_bytes failure yields 0. */
double mockrng_unit(struct mockrng *r);
/* A uniform 64-bit value. A RAND_bytes failure yields 0. */
uint64_t mockrng_u64(struct mockrng *r);

#endif
