/* test_cli.c: the pure parts of the capgate subcommands: durations as the options take them, and
 * latency quantiles from the non-cumulative buckets of /admin/stats. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "cli.h"

static void test_durations(void **state) {
    uint64_t s;
    assert_int_equal(cli_parse_duration("90", &s), 0);
    assert_int_equal(s, 90);
    assert_int_equal(cli_parse_duration("90s", &s), 0);
    assert_int_equal(s, 90);
    assert_int_equal(cli_parse_duration("15m", &s), 0);
    assert_int_equal(s, 900);
    assert_int_equal(cli_parse_duration("1h", &s), 0);
    assert_int_equal(s, 3600);
    assert_int_equal(cli_parse_duration("2d", &s), 0);
    assert_int_equal(s, 172800);
    static const char *const bad[] = {
        "", "h", "0", "0m", "-1h", "1y", "1.5h", " 1h", "1hh", "99999999999999999999s", "4000d"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (cli_parse_duration(bad[i], &s) == 0) fail_msg("\"%s\" accepted", bad[i]);
    assert_true(cli_is_subcommand("stats") && cli_is_subcommand("audit") &&
                cli_is_subcommand("top") && cli_is_subcommand("health"));
    assert_false(cli_is_subcommand("--config") || cli_is_subcommand("stat"));
}

static void test_quantiles(void **state) {
    /* le_1ms .. le_inf, not cumulative */
    uint64_t b[9] = {50, 0, 40, 0, 0, 0, 0, 9, 1};
    assert_int_equal(cli_bucket_quantile(b, 0.5), 1000);
    assert_int_equal(cli_bucket_quantile(b, 0.51), 10000);
    assert_int_equal(cli_bucket_quantile(b, 0.9), 10000);
    assert_int_equal(cli_bucket_quantile(b, 0.95), 5000000);
    assert_int_equal(cli_bucket_quantile(b, 0.99), 5000000);
    assert_true(cli_bucket_quantile(b, 1.0) == UINT64_MAX);
    uint64_t none[9] = {0};
    assert_int_equal(cli_bucket_quantile(none, 0.5), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_quantiles),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
