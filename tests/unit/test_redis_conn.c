/* test_redis_conn.c: the pure parts of redis_conn.c, as the Sentinel client guidelines
 * (https://redis.io/docs/reference/sentinel-clients/) describe the replies: SENTINEL
 * get-master-addr-by-name ([ip, port] or nil), ROLE (its first element names the role) and the
 * +switch-master message ("<name> <old-ip> <old-port> <new-ip> <new-port>"); a target's name and
 * the process-wide epoch (publish of the same settings leaves it, new ones move it). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "config.h"
#include "redis_conn.h"

static redisReply str_reply(int type, const char *s) {
    redisReply r;
    memset(&r, 0, sizeof r);
    r.type = type;
    r.str = (char *)s;
    r.len = strlen(s);
    return r;
}

static void test_master_addr(void **state) {
    redisReply host = str_reply(REDIS_REPLY_STRING, "10.0.0.7");
    redisReply port = str_reply(REDIS_REPLY_STRING, "6380");
    redisReply *two[2] = {&host, &port};
    redisReply arr = {.type = REDIS_REPLY_ARRAY, .elements = 2, .element = two};
    redisReply nil = {.type = REDIS_REPLY_NIL};
    redisReply err = str_reply(REDIS_REPLY_ERROR, "ERR No such master with that name");
    char h[64];
    int p = 0;
    const char *why = NULL;
    assert_int_equal(redis_conn_parse_master_addr(&arr, h, sizeof h, &p, &why), 0);
    assert_string_equal(h, "10.0.0.7");
    assert_int_equal(p, 6380);

    assert_int_equal(redis_conn_parse_master_addr(&nil, h, sizeof h, &p, &why), -1);
    assert_string_equal(why, "the sentinel does not know this master");
    assert_int_equal(redis_conn_parse_master_addr(&err, h, sizeof h, &p, &why), -1);
    assert_string_equal(why, "ERR No such master with that name");
    assert_int_equal(redis_conn_parse_master_addr(NULL, h, sizeof h, &p, &why), -1);

    /* wrong shapes: one element, a port that is no port, a host longer than the buffer */
    arr.elements = 1;
    assert_int_equal(redis_conn_parse_master_addr(&arr, h, sizeof h, &p, &why), -1);
    assert_string_equal(why, "the reply is not [host, port]");
    arr.elements = 2;
    port = str_reply(REDIS_REPLY_STRING, "65536");
    assert_int_equal(redis_conn_parse_master_addr(&arr, h, sizeof h, &p, &why), -1);
    port = str_reply(REDIS_REPLY_STRING, "0");
    assert_int_equal(redis_conn_parse_master_addr(&arr, h, sizeof h, &p, &why), -1);
    port = str_reply(REDIS_REPLY_INTEGER, "");
    assert_int_equal(redis_conn_parse_master_addr(&arr, h, sizeof h, &p, &why), -1);
    port = str_reply(REDIS_REPLY_STRING, "6379");
    assert_int_equal(redis_conn_parse_master_addr(&arr, h, 8, &p, &why), -1);
    assert_int_equal(redis_conn_parse_master_addr(&arr, h, 9, &p, &why), 0);
}

static void test_role(void **state) {
    redisReply name = str_reply(REDIS_REPLY_STRING, "master");
    redisReply offset = {.type = REDIS_REPLY_INTEGER, .integer = 3129659};
    redisReply *els[2] = {&name, &offset};
    redisReply arr = {.type = REDIS_REPLY_ARRAY, .elements = 2, .element = els};
    redisReply err = str_reply(REDIS_REPLY_ERROR, "ERR unknown command");
    char role[16];
    assert_int_equal(redis_conn_parse_role(&arr, role, sizeof role), 1);
    assert_string_equal(role, "master");
    name = str_reply(REDIS_REPLY_STRING, "slave");
    assert_int_equal(redis_conn_parse_role(&arr, role, sizeof role), 0);
    assert_string_equal(role, "slave");
    name = str_reply(REDIS_REPLY_STRING, "sentinel");
    assert_int_equal(redis_conn_parse_role(&arr, role, sizeof role), 0);
    assert_int_equal(redis_conn_parse_role(&err, role, sizeof role), -1);
    arr.elements = 0;
    assert_int_equal(redis_conn_parse_role(&arr, role, sizeof role), -1);
    assert_int_equal(redis_conn_parse_role(NULL, role, sizeof role), -1);
}

static int sw(const char *msg, char *host, int *port) {
    return redis_conn_parse_switch(msg, strlen(msg), "mymaster", host, 64, port);
}

static void test_switch(void **state) {
    char host[64];
    int port = 0;
    assert_int_equal(sw("mymaster 127.0.0.1 6379 127.0.0.1 6380", host, &port), 1);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 6380);
    assert_int_equal(sw("mymaster ::1 6379 ::1 6381", host, &port), 1);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 6381);
    /* another master of the same sentinels, or one whose name only starts like ours */
    assert_int_equal(sw("other 10.0.0.1 6379 10.0.0.2 6379", host, &port), 0);
    assert_int_equal(sw("mymaster2 10.0.0.1 6379 10.0.0.2 6379", host, &port), 0);
    /* malformed */
    assert_int_equal(sw("", host, &port), -1);
    assert_int_equal(sw("mymaster 10.0.0.1 6379 10.0.0.2", host, &port), -1);
    assert_int_equal(sw("mymaster 10.0.0.1 6379 10.0.0.2 6380 extra", host, &port), -1);
    assert_int_equal(sw("mymaster 10.0.0.1 6379 10.0.0.2 0", host, &port), -1);
    assert_int_equal(sw("mymaster 10.0.0.1 6379 10.0.0.2 70000", host, &port), -1);
    assert_int_equal(sw("mymaster 10.0.0.1 x 10.0.0.2 6380", host, &port), -1);
    assert_int_equal(sw("mymaster  10.0.0.1 6379 10.0.0.2 6380", host, &port), -1);
    assert_int_equal(sw("mymaster 10.0.0.1 6379 10.0.0.2 6380 ", host, &port), -1);
    /* a host longer than the buffer */
    assert_int_equal(
        redis_conn_parse_switch("mymaster a 1 abcdefgh 2", 23, "mymaster", host, 8, &port), -1);
}

static void test_readonly(void **state) {
    redisReply ro =
        str_reply(REDIS_REPLY_ERROR, "READONLY You can't write against a read only replica.");
    redisReply other = str_reply(REDIS_REPLY_ERROR, "ERR wrong number of arguments");
    redisReply ok = str_reply(REDIS_REPLY_STATUS, "READONLY");
    assert_true(redis_conn_is_readonly(&ro));
    assert_false(redis_conn_is_readonly(&other));
    assert_false(redis_conn_is_readonly(&ok));
    assert_false(redis_conn_is_readonly(NULL));
}

static void test_target_and_epoch(void **state) {
    struct config_redis_sentinel s[2] = {{.host = "10.0.0.1", .port = 26379},
                                         {.host = "10.0.0.2", .port = 26379}};
    struct config_redis direct = {.host = "::1", .port = 6380, .timeout_ms = 0};
    struct config_redis sent = {
        .host = "m", .sentinels = s, .n_sentinels = 2, .master_name = "m", .timeout_ms = 250};
    char err[128];
    struct redis_target *t = redis_target_new(&direct, err, sizeof err), *u;
    uint64_t e0;
    assert_non_null(t);
    assert_string_equal(redis_target_name(t), "[::1]:6380");
    assert_int_equal(redis_target_timeout_ms(t), 100); /* the default */
    assert_false(redis_target_uses_sentinels(t));
    u = redis_target_new(&sent, err, sizeof err);
    assert_non_null(u);
    assert_string_equal(redis_target_name(u), "master m via 2 sentinels");
    assert_true(redis_target_uses_sentinels(u));
    sent.master_name = NULL;
    assert_null(redis_target_new(&sent, err, sizeof err));
    assert_string_equal(err, "redis: sentinels without master_name");
    sent.master_name = "m";

    /* nothing published: a client keeps its own target */
    e0 = redis_conn_refresh(&t);
    assert_string_equal(redis_target_name(t), "[::1]:6380");
    assert_int_equal(redis_conn_publish(&sent, err, sizeof err), 0);
    assert_true(redis_conn_epoch() > e0);
    e0 = redis_conn_refresh(&t);
    assert_string_equal(redis_target_name(t), "master m via 2 sentinels");
    /* the same settings again (a SIGHUP for a log rotation): no reconnect */
    assert_int_equal(redis_conn_publish(&sent, err, sizeof err), 0);
    assert_int_equal(redis_conn_epoch(), e0);
    sent.timeout_ms = 300;
    assert_int_equal(redis_conn_publish(&sent, err, sizeof err), 0);
    assert_true(redis_conn_epoch() > e0);
    e0 = redis_conn_epoch();
    redis_conn_master_switched("m", "10.0.0.9", 6379);
    assert_true(redis_conn_epoch() > e0);
    redis_conn_unpublish();
    redis_target_unref(t);
    redis_target_unref(u);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_master_addr),      cmocka_unit_test(test_role),
        cmocka_unit_test(test_switch),           cmocka_unit_test(test_readonly),
        cmocka_unit_test(test_target_and_epoch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
