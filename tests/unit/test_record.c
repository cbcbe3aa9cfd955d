/* test_record.c: the decision names of the request record: each decision has its own name, and
 * a value out of range reads "unknown". */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "record.h"

static void test_decision_names(void **state) {
    assert_string_equal(pipeline_decision_name(PIPELINE_FORWARDED), "forwarded");
    assert_string_equal(pipeline_decision_name(PIPELINE_SHADOW_LIMITED), "shadow_limited");
    assert_string_equal(pipeline_decision_name(PIPELINE_UPSTREAM_ERROR), "upstream_error");
    assert_string_equal(pipeline_decision_name(PIPELINE_DECISION_COUNT), "unknown");
    assert_string_equal(pipeline_decision_name((enum pipeline_decision) - 1), "unknown");
}

/* A decision added to the enum without a name would read NULL (or share a name). */
static void test_every_decision_named_once(void **state) {
    for (int d = 0; d < PIPELINE_DECISION_COUNT; d++) {
        const char *n = pipeline_decision_name((enum pipeline_decision)d);
        assert_non_null(n);
        assert_true(n[0] != '\0');
        assert_string_not_equal(n, "unknown");
        for (int e = 0; e < d; e++)
            assert_string_not_equal(n, pipeline_decision_name((enum pipeline_decision)e));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decision_names),
        cmocka_unit_test(test_every_decision_named_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
