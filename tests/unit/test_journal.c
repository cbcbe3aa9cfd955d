/* test_journal.c: the request journal: oldest-first order, the ring overwriting the oldest,
 * Signature never stored, limit and action filters, clear. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "capgate/params.h"
#include "journal.h"

static void add_n(struct journal *j, int from, int to, const char *action) {
    for (int i = from; i < to; i++) {
        char nonce[16];
        struct params p;
        params_init(&p);
        snprintf(nonce, sizeof(nonce), "%d", i);
        assert_int_equal(params_adds(&p, "Nonce", nonce), 0);
        assert_int_equal(params_adds(&p, "Signature", "c2VjcmV0"), 0);
        assert_int_equal(journal_add(j, 1000000u * (uint64_t)i, "GET", action, "AKIDx",
                                     JOURNAL_SIG_OK, i, NULL, &p),
                         0);
        params_cleanup(&p);
    }
}

static int nonce_of(json_t *entry) {
    const char *s = json_string_value(json_object_get(json_object_get(entry, "params"), "Nonce"));
    assert_non_null(s);
    return (int)strtol(s, NULL, 10);
}

static void test_entry_fields_without_signature(void **state) {
    struct journal *j = journal_new(4);
    struct params p;
    params_init(&p);
    assert_int_equal(params_adds(&p, "Action", "CaptchaCheck"), 0);
    assert_int_equal(params_adds(&p, "Signature", "c2VjcmV0"), 0);
    assert_int_equal(params_adds(&p, "uid", "\xe7\x94\xa8"), 0);
    assert_int_equal(journal_add(j, 1795888725123456u, "POST", "CaptchaCheck", NULL,
                                 JOURNAL_SIG_BAD, 4100, NULL, &p),
                     0);
    assert_int_equal(
        journal_add(j, 1795888725123456u, NULL, NULL, NULL, JOURNAL_UNCHECKED, -1, "reset", NULL),
        0);
    params_cleanup(&p);
    json_t *o = journal_to_json(j, 0, NULL);
    json_t *arr = json_object_get(o, "requests");
    assert_int_equal(json_array_size(arr), 2);
    json_t *e = json_array_get(arr, 0);
    assert_string_equal(json_string_value(json_object_get(e, "method")), "POST");
    assert_string_equal(json_string_value(json_object_get(e, "action")), "CaptchaCheck");
    assert_true(json_is_null(json_object_get(e, "secret_id")));
    assert_string_equal(json_string_value(json_object_get(e, "signature")), "bad");
    assert_int_equal(json_integer_value(json_object_get(e, "code")), 4100);
    assert_string_equal(json_string_value(json_object_get(e, "time")), "2026-11-28T17:58:45.123Z");
    json_t *ps = json_object_get(e, "params");
    assert_null(json_object_get(ps, "Signature"));
    assert_string_equal(json_string_value(json_object_get(ps, "uid")), "\xe7\x94\xa8");
    assert_int_equal(json_object_size(ps), 2);
    json_t *e2 = json_array_get(arr, 1);
    assert_true(json_is_null(json_object_get(e2, "code")));
    assert_string_equal(json_string_value(json_object_get(e2, "fault")), "reset");
    assert_string_equal(json_string_value(json_object_get(e2, "signature")), "unchecked");
    json_decref(o);
    journal_free(j);
}

static void test_ring_keeps_newest_oldest_first(void **state) {
    struct journal *j = journal_new(5);
    add_n(j, 0, 12, "CaptchaIframeQuery");
    assert_int_equal(journal_count(j), 5);
    assert_int_equal(journal_total(j), 12);
    json_t *o = journal_to_json(j, 0, NULL);
    json_t *arr = json_object_get(o, "requests");
    assert_int_equal(json_array_size(arr), 5);
    for (int i = 0; i < 5; i++) assert_int_equal(nonce_of(json_array_get(arr, i)), 7 + i);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(arr, 4), "seq")), 12);
    json_decref(o);
    journal_free(j);
}

static void test_limit_and_action_filter(void **state) {
    struct journal *j = journal_new(100);
    add_n(j, 0, 3, "CaptchaIframeQuery");
    add_n(j, 3, 6, "CaptchaCheck");
    add_n(j, 6, 8, "CaptchaIframeQuery");
    json_t *o = journal_to_json(j, 3, "CaptchaIframeQuery");
    json_t *arr = json_object_get(o, "requests");
    assert_int_equal(json_array_size(arr), 3);
    assert_int_equal(nonce_of(json_array_get(arr, 0)), 2);
    assert_int_equal(nonce_of(json_array_get(arr, 1)), 6);
    assert_int_equal(nonce_of(json_array_get(arr, 2)), 7);
    json_decref(o);
    o = journal_to_json(j, 2, NULL);
    arr = json_object_get(o, "requests");
    assert_int_equal(json_array_size(arr), 2);
    assert_int_equal(nonce_of(json_array_get(arr, 0)), 6);
    json_decref(o);
    o = journal_to_json(j, 0, "CaptchaQuery");
    assert_int_equal(json_array_size(json_object_get(o, "requests")), 0);
    json_decref(o);
    journal_free(j);
}

static void test_clear(void **state) {
    struct journal *j = journal_new(3);
    add_n(j, 0, 5, "CaptchaCheck");
    journal_clear(j);
    assert_int_equal(journal_count(j), 0);
    assert_int_equal(journal_total(j), 0);
    add_n(j, 0, 1, "CaptchaCheck");
    json_t *o = journal_to_json(j, 0, NULL);
    assert_int_equal(json_array_size(json_object_get(o, "requests")), 1);
    json_decref(o);
    journal_free(j);
    journal_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_entry_fields_without_signature),
        cmocka_unit_test(test_ring_keeps_newest_oldest_first),
        cmocka_unit_test(test_limit_and_action_filter),
        cmocka_unit_test(test_clear),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
