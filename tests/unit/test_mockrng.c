/* test_mockrng.c: the mock's random values: a seed gives a reproducible stream, another seed a
 * different one; tokens use the URL-safe alphabet; unit draws stay in [0, 1). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "mockrng.h"

static void test_seed_reproducible(void **state) {
    struct mockrng a, b, c;
    char ta[65], tb[65], tc[65];
    mockrng_init(&a, 1, 42);
    mockrng_init(&b, 1, 42);
    mockrng_init(&c, 1, 43);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(mockrng_token(&a, ta, 64), 0);
        assert_int_equal(mockrng_token(&b, tb, 64), 0);
        assert_int_equal(mockrng_token(&c, tc, 64), 0);
        assert_string_equal(ta, tb);
        assert_string_not_equal(ta, tc);
        assert_int_equal(strlen(ta), 64);
        assert_int_equal(strspn(ta, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                    "0123456789-_"),
                         64);
    }
    assert_true(mockrng_u64(&a) == mockrng_u64(&b));
}

static void test_unseeded_differs(void **state) {
    struct mockrng a;
    char t1[33], t2[33];
    mockrng_init(&a, 0, 42);
    assert_int_equal(mockrng_token(&a, t1, 32), 0);
    assert_int_equal(mockrng_token(&a, t2, 32), 0);
    assert_string_not_equal(t1, t2);
}

static void test_unit_range(void **state) {
    struct mockrng r;
    double lo = 1.0, hi = 0.0;
    mockrng_init(&r, 1, 7);
    for (int i = 0; i < 10000; i++) {
        double d = mockrng_unit(&r);
        assert_true(d >= 0.0 && d < 1.0);
        if (d < lo) lo = d;
        if (d > hi) hi = d;
    }
    assert_true(lo < 0.01);
    assert_true(hi > 0.99);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seed_reproducible),
        cmocka_unit_test(test_unseeded_differs),
        cmocka_unit_test(test_unit_range),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
