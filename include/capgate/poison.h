/* poison.h: marks memory a free list keeps for reuse as unaddressable under AddressSanitizer, so
 * a use after release is still reported although the block was never handed back to malloc.
 * Without ASan both are no-ops. */
#ifndef CAPGATE_POISON_H
#define CAPGATE_POISON_H
#include <stddef.h>

#if defined(__SANITIZE_ADDRESS__)
#define CAPGATE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CAPGATE_ASAN 1
#endif
#endif

#ifdef CAPGATE_ASAN
#include <sanitizer/asan_interface.h>
#define poison_mark(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define poison_clear(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define poison_mark(p, n) ((void)(p), (void)(n))
#define poison_clear(p, n) ((void)(p), (void)(n))
#endif

#endif
