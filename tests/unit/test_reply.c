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

static void test_dump_null(void **state) {
    assert_null(reply_dump(NULL));
}

/* The out-of-memory literal is exactly what reply_error would have built. */
static void test_oom_literal(void **state) {
    char *text = reply_error(6000, "out of memory");
    assert_string_equal(text, REPLY_OOM_JSON);
    free(text);
}

/* reply_scan must agree with jansson on every input: validity, code, codeDesc and url. */
static void expect_like_jansson(const char *text, size_t len) {
    struct reply_fields f;
    int rc = reply_scan(text, len, &f);
    json_t *j = json_loadb(text, len, 0, NULL);
    assert_int_equal(rc == 0, json_is_object(j));
    if (rc == 0) {
        json_t *code = json_object_get(j, "code");
        json_t *desc = json_object_get(j, "codeDesc");
        json_t *url = json_object_get(j, "url");
        assert_int_equal(f.has_code, json_is_integer(code));
        if (f.has_code) assert_true(f.code == json_integer_value(code));
        assert_int_equal(f.has_code_desc, json_is_string(desc));
        if (f.has_code_desc) { /* cut to fit */
            size_t n = strlen(json_string_value(desc));
            if (n > REPLY_CODE_DESC_MAX - 1) n = REPLY_CODE_DESC_MAX - 1;
            assert_int_equal(strlen(f.code_desc), n);
            assert_memory_equal(f.code_desc, json_string_value(desc), n);
        }
        assert_int_equal(f.url != NULL, json_is_string(url));
        if (f.url) assert_string_equal(f.url, json_string_value(url));
        reply_fields_cleanup(&f);
    }
    assert_int_equal(reply_scan(text, len, NULL), rc);
    json_decref(j);
}

static void test_scan_agrees_with_jansson(void **state) {
    static const char *const cases[] = {
        "{\"code\":0,\"codeDesc\":\"Success\",\"message\":\"No "
        "Error\",\"url\":\"http://h/t.js?a=1&b=2\"}",
        " \r\n\t{ \"code\" : -0 , \"codeDesc\" : \"Su\\\"cc\\\\ess\\/\\b\\f\\n\\r\\t\" }\n",
        "{\"url\":\"https:\\/\\/ssl.captcha.qq.com\\/template\\/TCapIframeApi.js?appid=1\"}",
        "{\"code\":5100,\"codeDesc\":\"OperationFailed\",\"message\":"
        "\"\\u9a8c\\u8bc1\\u5931\\u8d25\"}",
        "{\"code\":1,\"code\":\"2\",\"codeDesc\":3,\"codeDesc\":\"last\",\"url\":null}",
        "{\"code\":12.5}",
        "{\"code\":1e3}",
        "{\"code\":-1E-2}",
        "{\"code\":0.0}",
        "{\"code\":123456789012345678}",
        "{\"code\":1234567890123456789}",
        "{\"code\":99999999999999999999}",
        "{\"code\":-9223372036854775808}",
        "{\"code\":01}",
        "{\"code\":-}",
        "{\"code\":+1}",
        "{\"code\":1x}",
        "{\"a\":[1,[2,{\"b\":[true,false,null]}],\"s\",{}],\"code\":7,\"e\":[],\"o\":{}}",
        "{\"c\\u006fde\":4,\"codeDesc\":\"x\"}",
        "{\"co\\nde\":4}",
        "{}",
        "{ }",
        "[]",
        "[{\"code\":0}]",
        "\"str\"",
        "12",
        "true",
        "null",
        "",
        " ",
        "{",
        "}",
        "{\"a\"}",
        "{\"a\":}",
        "{\"a\":1,}",
        "{,}",
        "{\"a\":1}x",
        "{\"a\":1}{}",
        "{\"a\":[1,]}",
        "{\"a\":[,1]}",
        "{\"a\":tru}",
        "{\"a\":truex}",
        "{\"a\":nul}",
        "{\"a\":\"\\x\"}",
        "{\"a\":\"\\u00\"}",
        "{\"a\":\"\\u0000\"}",
        "{\"a\":\"\\ud800\"}",
        "{\"a\":\"\\ud83d\\ude00\"}",
        "{\"a\":\"tab\there\"}",
        "{\"a\":\"unterminated}",
        "{\"codeDesc\":\"\xe9\xaa\x8c\xe8\xaf\x81\"}",
        "{\"a\":\"\xc0\xaf\"}",
        "{\"a\":\"\xed\xa0\x80\"}",
        "{\"a\":\"\xf4\x90\x80\x80\"}",
        "{\"a\":\"\xe9\xaa\"}",
        "{\"a\":\"\x80\"}",
        "\xef\xbb\xbf{}",
        "{\"codeDesc\":\"0123456789012345678901234567890123456789012345678901234567890123456789\"}",
        "{\"a\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],"
        "\"code\":3}",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_like_jansson(cases[i], strlen(cases[i]));
    /* a NUL byte inside the text */
    expect_like_jansson("{\"a\":1}\0", 8);
    expect_like_jansson("{\"a\":\"x\0y\"}", 11);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_success_shape),
        cmocka_unit_test(test_caller_fields_follow),
        cmocka_unit_test(test_custom_message),
        cmocka_unit_test(test_unknown_code),
        cmocka_unit_test(test_reply_error_formats),
        cmocka_unit_test(test_non_utf8_repaired),
        cmocka_unit_test(test_dump_null),
        cmocka_unit_test(test_oom_literal),
        cmocka_unit_test(test_scan_agrees_with_jansson),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
