/* num.h: the one checked parser for every number that comes from outside (no atoi). */
#ifndef CAPGATE_NUM_H
#define CAPGATE_NUM_H
#include <stddef.h>
#include <stdint.h>

/* Decimal digits only: no sign, no spaces, no trailing text, at least one digit, in range.
 * Leading zeros are accepted ("007" is 7). Returns 0 and sets *out, or -1. s need not be
 * NUL-terminated; len is its length. */
int num_parse_u32(const char *s, size_t len, uint32_t *out);
int num_parse_u64(const char *s, size_t len, uint64_t *out);
/* Same, with the range [min, max]. */
int num_parse_range(const char *s, size_t len, uint64_t min, uint64_t max, uint64_t *out);
/* NUL-terminated convenience: num_parse_u64(s, strlen(s), out). */
int num_parse_u64z(const char *s, uint64_t *out);

/* Writes v in decimal at o, without a NUL (at most NUM_U64_DIGITS bytes); returns the end. */
#define NUM_U64_DIGITS 20
char *num_put_u64(char *o, uint64_t v);
/* The same for a signed v ('-' first when negative; at most NUM_U64_DIGITS + 1 bytes). */
char *num_put_i64(char *o, int64_t v);
/* Writes v as 16 lower-case hex digits at o, without a NUL; returns the end. */
char *num_put_hex64(char *o, uint64_t v);

#endif
