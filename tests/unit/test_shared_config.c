/* test_shared_config.c: the reference count of a loaded config: the last unref frees it (the
 * ASan build and valgrind see a leak or a double free otherwise). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "config.h"
#include "shared_config.h"

static void test_config_refcount(void **state) {
    struct config *c = NULL;
    char err[256];
    assert_int_equal(
        config_load_string("{\"upstream\": {\"url\": \"https://127.0.0.1/v2/index.php\","
                           " \"secret_id\": \"AKID\", \"secret_key\": \"k\"}}",
                           "t.json", &c, err, sizeof(err)),
        0);
    struct shared_config *pc = shared_config_new(c);
    assert_non_null(pc);
    assert_ptr_equal(shared_config_ref(pc), pc);
    shared_config_unref(pc);
    assert_ptr_equal(pc->config, c); /* still alive: one reference left */
    shared_config_unref(pc);
    shared_config_unref(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_refcount),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
