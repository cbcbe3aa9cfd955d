/* test_faults.c: fault rules: strict parsing (unknown fields, types, ranges, exclusive effects,
 * all-or-nothing arrays), matching by action/secret_id in order, probability, times. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "faults.h"

static json_t *js(const char *text) {
    json_error_t e;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &e);
    assert_non_null(v);
    return v;
}

static int add(struct faults *f, const char *text, char *err, size_t errlen) {
    json_t *v = js(text);
    int rc = faults_add_json(f, v, err, errlen);
    json_decref(v);
    return rc;
}

static double draw_fixed(void *arg) {
    return *(double *)arg;
}

static void test_parse_full_rule(void **state) {
    struct faults f;
    char err[256];
    faults_init(&f);
    assert_int_equal(add(&f,
                         "{\"action\":\"CaptchaIframeQuery\",\"secret_id\":null,\"code\":6000,"
                         "\"delay_ms\":0,\"network\":null,\"probability\":1.0,\"times\":null}",
                         err, sizeof(err)),
                     0);
    assert_int_equal(f.count, 1);
    assert_string_equal(f.rules[0].action, "CaptchaIframeQuery");
    assert_null(f.rules[0].secret_id);
    assert_int_equal(f.rules[0].code, 6000);
    assert_int_equal(f.rules[0].times, -1);
    faults_cleanup(&f);
}

static void expect_error(const char *text, const char *needle) {
    struct faults f;
    char err[256] = "";
    faults_init(&f);
    assert_int_equal(add(&f, text, err, sizeof(err)), -1);
    if (!strstr(err, needle)) fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
    assert_int_equal(f.count, 0);
    faults_cleanup(&f);
}

static void test_parse_errors_name_the_field(void **state) {
    expect_error("{\"netwrok\":\"reset\"}", "netwrok");
    expect_error("{\"network\":\"explode\"}", "network");
    expect_error("{\"code\":1234}", "code");
    expect_error("{\"code\":\"6000\"}", "code");
    expect_error("{\"code\":6000,\"probability\":1.5}", "probability");
    expect_error("{\"code\":6000,\"probability\":\"1\"}", "probability");
    expect_error("{\"code\":6000,\"times\":0}", "times");
    expect_error("{\"code\":6000,\"times\":1.5}", "times");
    expect_error("{\"delay_ms\":-1}", "delay_ms");
    expect_error("{\"code\":6000,\"action\":5}", "action");
    expect_error("{\"action\":\"CaptchaCheck\"}", "needs an effect");
    expect_error("{\"code\":6000,\"network\":\"reset\"}", "exclude");
    expect_error("[]", "empty");
    expect_error("7", "object");
}

static void test_array_is_all_or_nothing(void **state) {
    struct faults f;
    char err[256];
    faults_init(&f);
    assert_int_equal(
        add(&f, "[{\"code\":6000},{\"network\":\"reset\",\"times\":\"x\"}]", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "faults[1].times"));
    assert_int_equal(f.count, 0);
    assert_int_equal(add(&f, "[{\"code\":6000},{\"network\":\"stall\"}]", err, sizeof(err)), 0);
    assert_int_equal(f.count, 2);
    assert_int_equal(f.rules[1].network, FAULT_NET_STALL);
    faults_cleanup(&f);
}

static void test_match_in_order_with_filters(void **state) {
    struct faults f;
    char err[256];
    struct fault_effect e;
    double d = 0.5;
    faults_init(&f);
    assert_int_equal(add(&f,
                         "[{\"action\":\"CaptchaCheck\",\"code\":5100},"
                         "{\"secret_id\":\"AKIDa\",\"network\":\"close\"},"
                         "{\"delay_ms\":250}]",
                         err, sizeof(err)),
                     0);
    assert_int_equal(faults_match(&f, "CaptchaCheck", "AKIDa", draw_fixed, &d, &e), 1);
    assert_int_equal(e.code, 5100);
    assert_int_equal(e.network, FAULT_NET_NONE);
    assert_int_equal(faults_match(&f, "CaptchaIframeQuery", "AKIDa", draw_fixed, &d, &e), 1);
    assert_int_equal(e.network, FAULT_NET_CLOSE);
    assert_int_equal(e.code, 0);
    assert_int_equal(faults_match(&f, "CaptchaIframeQuery", "AKIDb", draw_fixed, &d, &e), 1);
    assert_int_equal(e.delay_ms, 250);
    assert_int_equal(e.network, FAULT_NET_NONE);
    /* A NULL secret_id only matches rules that accept any. */
    assert_int_equal(faults_match(&f, NULL, NULL, draw_fixed, &d, &e), 1);
    assert_int_equal(e.delay_ms, 250);
    faults_cleanup(&f);
}

static void test_no_rule_no_match(void **state) {
    struct faults f;
    char err[256];
    struct fault_effect e;
    double d = 0.0;
    faults_init(&f);
    assert_int_equal(faults_match(&f, "CaptchaCheck", "x", draw_fixed, &d, &e), 0);
    assert_int_equal(add(&f, "{\"action\":\"CaptchaQuery\",\"code\":6200}", err, sizeof(err)), 0);
    assert_int_equal(faults_match(&f, "CaptchaCheck", "x", draw_fixed, &d, &e), 0);
    faults_cleanup(&f);
}

static void test_probability(void **state) {
    struct faults f;
    char err[256];
    struct fault_effect e;
    double d;
    faults_init(&f);
    assert_int_equal(add(&f,
                         "[{\"code\":6000,\"probability\":0},"
                         "{\"code\":6100,\"probability\":0.3},{\"code\":6200}]",
                         err, sizeof(err)),
                     0);
    d = 0.0; /* even the lowest draw never fires probability 0 */
    assert_int_equal(faults_match(&f, "A", "s", draw_fixed, &d, &e), 1);
    assert_int_equal(e.code, 6100);
    d = 0.29;
    assert_int_equal(faults_match(&f, "A", "s", draw_fixed, &d, &e), 1);
    assert_int_equal(e.code, 6100);
    d = 0.3; /* a rule that does not fire lets the next one try */
    assert_int_equal(faults_match(&f, "A", "s", draw_fixed, &d, &e), 1);
    assert_int_equal(e.code, 6200);
    assert_int_equal(f.rules[0].fired, 0);
    faults_cleanup(&f);
}

static void test_times_expire_rule(void **state) {
    struct faults f;
    char err[256];
    struct fault_effect e;
    double d = 0.0;
    faults_init(&f);
    assert_int_equal(add(&f, "[{\"code\":6000,\"times\":2},{\"code\":4300}]", err, sizeof(err)), 0);
    assert_int_equal(faults_match(&f, "A", "s", draw_fixed, &d, &e), 1);
    assert_int_equal(e.code, 6000);
    assert_int_equal(faults_match(&f, "A", "s", draw_fixed, &d, &e), 1);
    assert_int_equal(e.code, 6000);
    assert_int_equal(f.count, 1);
    assert_int_equal(faults_match(&f, "A", "s", draw_fixed, &d, &e), 1);
    assert_int_equal(e.code, 4300);
    faults_cleanup(&f);
}

static void test_to_json_and_describe(void **state) {
    struct faults f;
    char err[256], desc[64];
    faults_init(&f);
    assert_int_equal(add(&f,
                         "{\"action\":\"CaptchaCheck\",\"delay_ms\":100,"
                         "\"network\":\"malformed_json\",\"times\":3}",
                         err, sizeof(err)),
                     0);
    json_t *a = faults_to_json(&f);
    assert_int_equal(json_array_size(a), 1);
    json_t *r = json_array_get(a, 0);
    assert_string_equal(json_string_value(json_object_get(r, "network")), "malformed_json");
    assert_int_equal(json_integer_value(json_object_get(r, "times")), 3);
    assert_true(json_is_null(json_object_get(r, "secret_id")));
    json_decref(a);
    struct fault_effect e = {0, 100, FAULT_NET_MALFORMED_JSON};
    faults_describe(&e, desc, sizeof(desc));
    assert_string_equal(desc, "delay_ms 100, malformed_json");
    struct fault_effect c = {6000, 0, FAULT_NET_NONE};
    faults_describe(&c, desc, sizeof(desc));
    assert_string_equal(desc, "code 6000");
    faults_cleanup(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_full_rule),
        cmocka_unit_test(test_parse_errors_name_the_field),
        cmocka_unit_test(test_array_is_all_or_nothing),
        cmocka_unit_test(test_match_in_order_with_filters),
        cmocka_unit_test(test_no_rule_no_match),
        cmocka_unit_test(test_probability),
        cmocka_unit_test(test_times_expire_rule),
        cmocka_unit_test(test_to_json_and_describe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
