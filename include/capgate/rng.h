/* rng.h: xoshiro256**, a fast non-cryptographic generator for jitter, sampling and the mock's
 * reproducible --seed streams. Never for secrets: those come from OpenSSL's RAND_bytes. */
#ifndef CAPGATE_RNG_H
#define CAPGATE_RNG_H
#include <stdint.h>

/* Fills the four state words from one 64-bit seed through splitmix64 (never all zero). */
void rng_seed(uint64_t s[4], uint64_t seed);
/* The next value of the stream; advances s. s must not be all zero. */
uint64_t rng_next(uint64_t s[4]);

#endif
