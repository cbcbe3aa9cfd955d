/* test_resp.c: RESP command formatting against hiredis's own formatter (redisFormatCommandArgv),
 * byte for byte: no argument, empty and binary arguments (NUL, CR LF), a long one, lengths
 * given or taken with strlen, many random commands; and appending after what out holds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "capgate/strbuf.h"
#include "resp.h"

/* resp_append_command(argc, argv, len) to a fresh buffer equals hiredis's formatting. */
static void assert_same(int argc, const char **argv, const size_t *len) {
    char *want = NULL;
    int want_len = redisFormatCommandArgv(&want, argc, argv, len);
    struct strbuf got;
    strbuf_init(&got);
    assert_true(want_len >= 0);
    assert_int_equal(resp_append_command(&got, argc, argv, len), 0);
    assert_int_equal(got.len, (size_t)want_len);
    assert_memory_equal(got.s, want, got.len);
    redisFreeCommand(want);
    strbuf_cleanup(&got);
}

static void test_fixed_commands(void **state) {
    const char *ping[] = {"PING"};
    assert_same(1, ping, NULL);
    assert_same(0, ping, NULL);

    const char *xadd[] = {"XADD", "capgate:audit", "MAXLEN", "~",    "1000000",
                          "*",    "app",           "",       "code", "0"};
    assert_same(10, xadd, NULL);

    const char bin[] = {'a', '\0', '\r', '\n', 'b'};
    const char *args[] = {"SET", "k", bin};
    size_t lens[] = {3, 1, sizeof bin};
    assert_same(3, args, lens);

    char *big = malloc(100001);
    assert_non_null(big);
    memset(big, 'x', 100000);
    big[100000] = '\0';
    const char *set_big[] = {"SET", "big", big};
    assert_same(3, set_big, NULL);
    free(big);
}

static void test_random_commands(void **state) {
    char pool[4096];
    const char *argv[64];
    size_t len[64];
    srand(12345);
    for (size_t i = 0; i < sizeof pool; i++) pool[i] = (char)(rand() & 0xff);
    for (int round = 0; round < 2000; round++) {
        int argc = 1 + rand() % 64;
        for (int i = 0; i < argc; i++) {
            size_t n = (size_t)(rand() % 300);
            argv[i] = pool + rand() % (int)(sizeof pool - n);
            len[i] = n;
        }
        assert_same(argc, argv, len);
    }
}

static void test_appends_after_what_is_there(void **state) {
    const char *get[] = {"GET", "key"};
    struct strbuf b;
    strbuf_init(&b);
    assert_int_equal(strbuf_appends(&b, "*1\r\n$4\r\nPING\r\n"), 0);
    assert_int_equal(resp_append_command(&b, 2, get, NULL), 0);
    assert_string_equal(b.s, "*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n");
    assert_int_equal(resp_append_command(&b, -1, get, NULL), -1);
    strbuf_cleanup(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixed_commands),
        cmocka_unit_test(test_random_commands),
        cmocka_unit_test(test_appends_after_what_is_there),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
