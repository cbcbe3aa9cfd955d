/* fuzz.h: what every libFuzzer target in tests/fuzz shares. A broken invariant aborts with a
 * message, so libFuzzer (and ASan) report it as a crash and keep the input. */
#ifndef CAPGATE_FUZZ_H
#define CAPGATE_FUZZ_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(cond) \
    do { \
        if (!(cond)) { \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond); \
            abort(); \
        } \
    } while (0)

/* 1 when s[0..len) holds no control byte (an error message must carry none from the input). */
static inline int fuzz_no_ctl(const char *s, size_t len) {
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f) return 0;
    }
    return 1;
}

#endif
