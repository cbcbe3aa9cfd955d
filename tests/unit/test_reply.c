/* test_reply.c: the JSON reply shape: key order, compact text, defaults from the error table,
 * unknown codes, caller fields after the fixed three. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "capgate/reply.h"

static void test_success_shape(void **state) {
    json_t *obj = reply_new(0, NULL);
    assert_non_null(obj);
    char *text = reply_dump(obj);
    assert_string_equal(text, "{\"code\":0,\"codeDesc\":\"Success\",\"message\":\"No Error\"}");
    free(text);
    json_decref(obj);
}

static void test_caller_fields_follow(void **state) {
    json_t *obj = reply_new(0, NULL);
    assert_non_null(obj);
    assert_int_equal(json_object_set_new(obj, "url", json_string("https://x/a?b=1")), 0);
    assert_int_equal(json_object_set_new(obj, "n", json_integer(3)), 0);
    char *text = reply_dump(obj);
    assert_string_equal(text, "{\"code\":0,\"codeDesc\":\"Success\",\"message\":\"No Error\","
                              "\"url\":\"https://x/a?b=1\",\"n\":3}");
    free(text);
    json_decref(obj);
}

static void test_custom_message(void **state) {
    json_t *obj = reply_new(4000, "missing required parameter ticket");
    char *text = reply_dump(obj);
    assert_string_equal(text, "{\"code\":4000,\"codeDesc\":\"InvalidParameter\","
                              "\"message\":\"missing required parameter ticket\"}");
    free(text);
    json_decref(obj);
}

static void test_unknown_code(void **state) {
    json_t *obj = reply_new(4242, NULL);
    assert_non_null(obj);
    assert_int_equal(json_integer_value(json_object_get(obj, "code")), 4242);
    assert_string_equal(json_string_value(json_object_get(obj, "codeDesc")), "InternalError");
    assert_true(strlen(json_string_value(json_object_get(obj, "message"))) > 0);
    json_decref(obj);
}

static void test_reply_error_formats(void **state) {
    char *text = reply_error(4500, "Nonce %u was already used", 42u);
    assert_string_equal(text, "{\"code\":4500,\"codeDesc\":\"ReplayAttack\","
                              "\"message\":\"Nonce 42 was already used\"}");
    free(text);
    /* Quotes and control characters are escaped, so the text stays valid JSON. */
    text = reply_error(4000, "bad \"%s\"", "a\nb");
    assert_string_equal(text, "{\"code\":4000,\"codeDesc\":\"InvalidParameter\","
                              "\"message\":\"bad \\\"a\\nb\\\"\"}");
    free(text);
}

static void test_non_utf8_repaired(void **state) {
    /* A raw byte echoed from a request, or a character cut by a fixed buffer, must not lose the
     * reply: bad bytes become '?', good characters stay. */
    char *text = reply_error(4000, "bad value %s", "\xff\xfe ok \xE5\xBC\xA0 \xE5\xBC");
    assert_string_equal(text, "{\"code\":4000,\"codeDesc\":\"InvalidParameter\","
                              "\"message\":\"bad value ?? ok \xE5\xBC\xA0 ??\"}");
    free(text);
    json_t *obj = reply_new(5100, "\xC0\x80");
    assert_non_null(obj);
    assert_string_equal(json_string_value(json_object_get(obj, "message")), "??");
    json_decref(obj);
}

static void test_dump_null(void **state) { assert_null(reply_dump(NULL)); }

/* The out-of-memory literal is exactly what reply_error would have built. */
static void test_oom_literal(void **state) {
    char *text = reply_error(6000, "out of memory");
    assert_string_equal(text, REPLY_OOM_JSON);
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_success_shape),    cmocka_unit_test(test_caller_fields_follow),
        cmocka_unit_test(test_custom_message),   cmocka_unit_test(test_unknown_code),
        cmocka_unit_test(test_reply_error_formats), cmocka_unit_test(test_non_utf8_repaired),
        cmocka_unit_test(test_dump_null),        cmocka_unit_test(test_oom_literal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
