/* test_breaker.c: the circuit breaker's state machine, every transition with explicit times. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "breaker.h"

static void test_starts_closed_and_allows(void **state) {
    struct breaker b;

    breaker_init(&b, 3, 1000);
    assert_int_equal(breaker_state(&b), BREAKER_CLOSED);
    for (int i = 0; i < 100; i++) assert_int_equal(breaker_allow(&b, (uint64_t)i), 1);
    assert_int_equal(breaker_retry_in_ms(&b, 0), 0);
}

static void test_opens_after_consecutive_failures(void **state) {
    struct breaker b;

    breaker_init(&b, 3, 1000);
    breaker_record(&b, 0, 10);
    breaker_record(&b, 0, 11);
    assert_int_equal(breaker_state(&b), BREAKER_CLOSED);
    assert_int_equal(breaker_allow(&b, 12), 1);
    breaker_record(&b, 0, 12);
    assert_int_equal(breaker_state(&b), BREAKER_OPEN);
    assert_int_equal(breaker_opened_after(&b), 3);
    assert_int_equal(breaker_allow(&b, 12), 0);
    assert_int_equal(breaker_allow(&b, 1011), 0);
    assert_int_equal(breaker_retry_in_ms(&b, 12), 1000);
    assert_int_equal(breaker_retry_in_ms(&b, 812), 200);
    assert_int_equal(breaker_retry_in_ms(&b, 1011), 1);
    assert_int_equal(breaker_retry_in_ms(&b, 5000), 0);
    /* rejections do not move the clock of the pause */
    assert_int_equal(breaker_state(&b), BREAKER_OPEN);
}

static void test_success_resets_the_count(void **state) {
    struct breaker b;

    breaker_init(&b, 3, 1000);
    breaker_record(&b, 0, 1);
    breaker_record(&b, 0, 2);
    breaker_record(&b, 1, 3);
    breaker_record(&b, 0, 4);
    breaker_record(&b, 0, 5);
    assert_int_equal(breaker_state(&b), BREAKER_CLOSED);
    breaker_record(&b, 0, 6);
    assert_int_equal(breaker_state(&b), BREAKER_OPEN);
}

static void test_half_open_admits_one_probe(void **state) {
    struct breaker b;

    breaker_init(&b, 2, 500);
    breaker_record(&b, 0, 100);
    breaker_record(&b, 0, 100);
    assert_int_equal(breaker_state(&b), BREAKER_OPEN);
    assert_int_equal(breaker_allow(&b, 599), 0);
    assert_int_equal(breaker_state(&b), BREAKER_OPEN);
    /* the pause is over, but the state moves only on the next allow */
    assert_int_equal(breaker_state(&b), BREAKER_OPEN);
    assert_int_equal(breaker_allow(&b, 600), 1);
    assert_int_equal(breaker_state(&b), BREAKER_HALF_OPEN);
    assert_int_equal(breaker_retry_in_ms(&b, 600), 0);
    assert_int_equal(breaker_allow(&b, 601), 0);
    assert_int_equal(breaker_allow(&b, 10000), 0);
}

static void test_probe_success_closes(void **state) {
    struct breaker b;

    breaker_init(&b, 1, 500);
    breaker_record(&b, 0, 0);
    assert_int_equal(breaker_state(&b), BREAKER_OPEN);
    assert_int_equal(breaker_allow(&b, 500), 1);
    breaker_record(&b, 1, 520);
    assert_int_equal(breaker_state(&b), BREAKER_CLOSED);
    assert_int_equal(breaker_allow(&b, 521), 1);
    assert_int_equal(breaker_allow(&b, 521), 1);
    /* the failure count starts over */
    breaker_init(&b, 2, 500);
    breaker_record(&b, 0, 0);
    breaker_record(&b, 0, 0);
    assert_int_equal(breaker_allow(&b, 500), 1);
    breaker_record(&b, 1, 510);
    breaker_record(&b, 0, 511);
    assert_int_equal(breaker_state(&b), BREAKER_CLOSED);
    breaker_record(&b, 0, 512);
    assert_int_equal(breaker_state(&b), BREAKER_OPEN);
}

static void test_probe_failure_reopens_from_then(void **state) {
    struct breaker b;

    breaker_init(&b, 2, 500);
    breaker_record(&b, 0, 0);
    breaker_record(&b, 0, 0);
    assert_int_equal(breaker_allow(&b, 700), 1);
    breaker_record(&b, 0, 900);
    assert_int_equal(breaker_state(&b), BREAKER_OPEN);
    assert_int_equal(breaker_opened_after(&b), 3);
    /* the new pause counts from the probe's failure */
    assert_int_equal(breaker_retry_in_ms(&b, 900), 500);
    assert_int_equal(breaker_allow(&b, 1399), 0);
    assert_int_equal(breaker_allow(&b, 1400), 1);
    assert_int_equal(breaker_state(&b), BREAKER_HALF_OPEN);
    breaker_record(&b, 1, 1401);
    assert_int_equal(breaker_state(&b), BREAKER_CLOSED);
}

static void test_results_while_open_are_ignored(void **state) {
    struct breaker b;

    breaker_init(&b, 1, 500);
    breaker_record(&b, 0, 100);
    assert_int_equal(breaker_state(&b), BREAKER_OPEN);
    /* late results of calls admitted before it opened */
    breaker_record(&b, 1, 200);
    assert_int_equal(breaker_state(&b), BREAKER_OPEN);
    breaker_record(&b, 0, 400);
    assert_int_equal(breaker_state(&b), BREAKER_OPEN);
    assert_int_equal(breaker_retry_in_ms(&b, 400), 200);
    assert_int_equal(breaker_allow(&b, 600), 1);
}

static void test_zero_threshold_means_one(void **state) {
    struct breaker b;

    breaker_init(&b, 0, 0);
    breaker_record(&b, 0, 5);
    assert_int_equal(breaker_state(&b), BREAKER_OPEN);
    /* open_ms 0: the next allow is the probe */
    assert_int_equal(breaker_allow(&b, 5), 1);
    assert_int_equal(breaker_state(&b), BREAKER_HALF_OPEN);
    assert_int_equal(breaker_allow(&b, 5), 0);
}

static void test_state_names(void **state) {
    assert_string_equal(breaker_state_name(BREAKER_CLOSED), "closed");
    assert_string_equal(breaker_state_name(BREAKER_OPEN), "open");
    assert_string_equal(breaker_state_name(BREAKER_HALF_OPEN), "half-open");
    assert_string_equal(breaker_state_name((enum breaker_state)7), "unknown");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_starts_closed_and_allows),
        cmocka_unit_test(test_opens_after_consecutive_failures),
        cmocka_unit_test(test_success_resets_the_count),
        cmocka_unit_test(test_half_open_admits_one_probe),
        cmocka_unit_test(test_probe_success_closes),
        cmocka_unit_test(test_probe_failure_reopens_from_then),
        cmocka_unit_test(test_results_while_open_are_ignored),
        cmocka_unit_test(test_zero_threshold_means_one),
        cmocka_unit_test(test_state_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
