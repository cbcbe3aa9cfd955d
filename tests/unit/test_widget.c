/* test_widget.c: the widget script text: the browser API it defines, the element ids the
 * browser test clicks, and the origin and asig written as escaped JavaScript strings. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "capgate/strbuf.h"
#include "mock.h"

static void test_script_api(void **state) {
    struct strbuf b;
    strbuf_init(&b);
    assert_int_equal(widget_script(&b, "http://127.0.0.1:9000", "abc-_123"), 0);
    const char *want[] = {"window.capInit = function",
                          "window.capGetTicket = function",
                          "window.capRefresh = function",
                          "window.capDestroy = function",
                          "capgate-mock-solve",
                          "capgate-mock-close",
                          "var ORIGIN = \"http://127.0.0.1:9000\";",
                          "var ASIG = \"abc-_123\";",
                          "/__widget/solve?asig=",
                          "ret: 0",
                          "ret: 1"};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (!strstr(b.s, want[i])) fail_msg("script lacks %s", want[i]);
    strbuf_cleanup(&b);
}

static void test_origin_escaped(void **state) {
    struct strbuf b;
    strbuf_init(&b);
    assert_int_equal(widget_script(&b, "http://x\";alert(1);//", "a"), 0);
    assert_null(strstr(b.s, "x\";alert"));
    assert_non_null(strstr(b.s, "x\\\";alert"));
    strbuf_cleanup(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_script_api),
        cmocka_unit_test(test_origin_escaped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
