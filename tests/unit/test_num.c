/* test_num.c: the checked decimal parser: digits only, bounds, overflow at the exact edge; the
 * decimal and hex writers against printf. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "capgate/num.h"

static int parse32(const char *s, uint32_t *out) {
    return num_parse_u32(s, strlen(s), out);
}

static void test_u32_accepts_digits(void **state) {
    uint32_t v = 99;
    assert_int_equal(parse32("0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(parse32("007", &v), 0);
    assert_int_equal(v, 7);
    assert_int_equal(parse32("4294967295", &v), 0);
    assert_int_equal(v, UINT32_MAX);
    assert_int_equal(parse32("0004294967295", &v), 0);
    assert_int_equal(v, UINT32_MAX);
}

static void test_u32_rejects(void **state) {
    static const char *const bad[] = {
        "",    "-1",   "+1",  " 1",         "1 ",          "1a",
        "a1",  "0x10", "1.0", "4294967296", "99999999999", "18446744073709551616",
        "1e3", "\t5",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint32_t v = 12345;
        assert_int_equal(parse32(bad[i], &v), -1);
        assert_int_equal(v, 12345); /* untouched on failure */
    }
    uint32_t v;
    assert_int_equal(num_parse_u32(NULL, 0, &v), -1);
}

static void test_u64_edges(void **state) {
    uint64_t v = 0;
    assert_int_equal(num_parse_u64z("18446744073709551615", &v), 0);
    assert_true(v == UINT64_MAX);
    assert_int_equal(num_parse_u64z("18446744073709551616", &v), -1);
    assert_int_equal(num_parse_u64z("18446744073709551620", &v), -1);
    assert_int_equal(num_parse_u64z("184467440737095516150", &v), -1);
    assert_int_equal(num_parse_u64z("9223372036854775807", &v), 0);
    assert_true(v == INT64_MAX);
    assert_int_equal(num_parse_u64z("-0", &v), -1);
    assert_int_equal(num_parse_u64z(NULL, &v), -1);
}

static void test_len_not_nul_terminated(void **state) {
    uint64_t v = 0;
    const char buf[] = {'1', '2', '3', 'x'};
    assert_int_equal(num_parse_u64(buf, 3, &v), 0);
    assert_int_equal(v, 123);
    assert_int_equal(num_parse_u64(buf, 4, &v), -1);
    /* An embedded NUL is not a digit. */
    assert_int_equal(num_parse_u64("1\0002", 3, &v), -1);
}

static void test_range(void **state) {
    uint64_t v = 0;
    assert_int_equal(num_parse_range("5", 1, 1, 10, &v), 0);
    assert_int_equal(v, 5);
    assert_int_equal(num_parse_range("1", 1, 1, 10, &v), 0);
    assert_int_equal(num_parse_range("10", 2, 1, 10, &v), 0);
    assert_int_equal(v, 10);
    assert_int_equal(num_parse_range("0", 1, 1, 10, &v), -1);
    assert_int_equal(num_parse_range("11", 2, 1, 10, &v), -1);
    assert_int_equal(num_parse_range("100", 3, 1, 10, &v), -1);
    assert_int_equal(num_parse_range("0", 1, 0, 0, &v), 0);
    assert_int_equal(num_parse_range("1", 1, 0, 0, &v), -1);
}

/* num_put_u64, num_put_hex64 and num_put_i64 write what printf's %llu, %016llx and %lld write,
 * with no NUL. */
static void test_writers_match_printf(void **state) {
    static const uint64_t values[] = {0,
                                      1,
                                      9,
                                      10,
                                      99,
                                      100,
                                      4294967295u,
                                      4294967296u,
                                      1795897256,
                                      999999999999,
                                      10000000000000000000u,
                                      UINT64_MAX};
    char got[32], want[32];
    (void)state;
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        memset(got, 'x', sizeof(got));
        char *end = num_put_u64(got, values[i]);
        assert_int_equal(*end, 'x');
        *end = '\0';
        snprintf(want, sizeof(want), "%llu", (unsigned long long)values[i]);
        assert_string_equal(got, want);
        assert_true((size_t)(end - got) <= NUM_U64_DIGITS);
        memset(got, 'x', sizeof(got));
        end = num_put_hex64(got, values[i]);
        assert_int_equal(end - got, 16);
        assert_int_equal(*end, 'x');
        *end = '\0';
        snprintf(want, sizeof(want), "%016llx", (unsigned long long)values[i]);
        assert_string_equal(got, want);
    }
    /* every digit count (10^k - 1, 10^k, 10^k + 1) and pseudo-random values: the writer emits
     * two digits per step, so odd and even lengths and every pair must come out right */
    uint64_t x = 0x9e3779b97f4a7c15u, p10 = 1;
    for (int k = 0; k < 20000; k++) {
        uint64_t v;
        if (k < 60) {
            v = p10 + (uint64_t)(k % 3) - 1;
            if (k % 3 == 2 && p10 <= UINT64_MAX / 10) p10 *= 10;
        } else {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            v = x >> (k % 64);
        }
        memset(got, 'x', sizeof(got));
        char *end = num_put_u64(got, v);
        assert_int_equal(*end, 'x');
        *end = '\0';
        snprintf(want, sizeof(want), "%llu", (unsigned long long)v);
        assert_string_equal(got, want);
    }
    static const int64_t signed_values[] = {
        0, 1, -1, 9, -10, INT32_MIN, INT32_MAX, INT64_MAX, INT64_MIN, INT64_MIN + 1};
    for (size_t i = 0; i < sizeof(signed_values) / sizeof(signed_values[0]); i++) {
        memset(got, 'x', sizeof(got));
        char *end = num_put_i64(got, signed_values[i]);
        assert_int_equal(*end, 'x');
        *end = '\0';
        snprintf(want, sizeof(want), "%lld", (long long)signed_values[i]);
        assert_string_equal(got, want);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_u32_accepts_digits),
        cmocka_unit_test(test_u32_rejects),
        cmocka_unit_test(test_u64_edges),
        cmocka_unit_test(test_len_not_nul_terminated),
        cmocka_unit_test(test_range),
        cmocka_unit_test(test_writers_match_printf),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
