/* test_net.c: host:port splitting (brackets, optional port, bounds) and IP literal detection. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <sys/socket.h>

#include "capgate/net.h"

static void test_split_forms(void **state) {
    char host[NET_HOST_MAX];
    int port = 7;
    (void)state;
    assert_int_equal(net_split_host_port("127.0.0.1:0", host, sizeof host, &port, 1), 0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 0);
    assert_int_equal(net_split_host_port("[::1]:9000", host, sizeof host, &port, 1), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 9000);
    assert_int_equal(net_split_host_port("example.com", host, sizeof host, &port, 0), 0);
    assert_string_equal(host, "example.com");
    assert_int_equal(port, -1);
    assert_int_equal(net_split_host_port("[fe80::1]", host, sizeof host, &port, 0), 0);
    assert_string_equal(host, "fe80::1");
    assert_int_equal(port, -1);
    assert_int_equal(net_split_host_port("h:65535", host, sizeof host, &port, 1), 0);
    assert_int_equal(port, 65535);
}

static void test_split_rejects(void **state) {
    static const char *const bad[] = {
        "",         ":80",    "h:70000", "h:",   "h:-1",   "h: 80", "h:80x",
        "::1:9000", "[::1]x", "[]:80",   "[::1", "[::1]:", "host",  "[::1]",
    };
    char host[NET_HOST_MAX] = "untouched";
    int port = 7;
    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(net_split_host_port(bad[i], host, sizeof host, &port, 1), -1);
        assert_string_equal(host, "untouched");
        assert_int_equal(port, 7);
    }
    assert_int_equal(net_split_host_port("::1", host, sizeof host, &port, 0), -1);
}

static void test_split_host_too_long(void **state) {
    char small[5];
    int port;
    (void)state;
    assert_int_equal(net_split_host_port("abcd:1", small, sizeof small, &port, 1), 0);
    assert_string_equal(small, "abcd");
    assert_int_equal(net_split_host_port("abcde:1", small, sizeof small, &port, 1), -1);
    assert_int_equal(net_split_host_port("[::ffff]:1", small, sizeof small, &port, 1), -1);
}

static void test_ip_literal(void **state) {
    (void)state;
    assert_true(net_is_ip_literal("127.0.0.1"));
    assert_true(net_is_ip_literal("::1"));
    assert_true(net_is_ip_literal("2001:db8::8a2e:370:7334"));
    assert_false(net_is_ip_literal("[::1]"));
    assert_false(net_is_ip_literal("localhost"));
    assert_false(net_is_ip_literal("1.2.3"));
    assert_false(net_is_ip_literal("1.2.3.4:80"));
    assert_false(net_is_ip_literal(""));
    assert_false(net_is_ip_literal(NULL));
}

static void test_cidr(void **state) {
    struct net_cidr c;
    struct net_addr a;
    char err[160], text[64];
    assert_int_equal(net_parse_cidr("10.1.0.0/16", &c, err, sizeof err), 0);
    assert_int_equal(net_parse_addr("10.1.255.9", 10, &a), 0);
    assert_true(net_cidr_match(&c, &a));
    assert_int_equal(net_parse_addr("10.2.0.1", 8, &a), 0);
    assert_false(net_cidr_match(&c, &a));
    /* a prefix that is not a whole number of bytes */
    assert_int_equal(net_parse_cidr("172.16.0.0/12", &c, err, sizeof err), 0);
    assert_int_equal(net_parse_addr("172.31.255.255", 14, &a), 0);
    assert_true(net_cidr_match(&c, &a));
    assert_int_equal(net_parse_addr("172.32.0.0", 10, &a), 0);
    assert_false(net_cidr_match(&c, &a));
    /* IPv6, and an IPv4-mapped address taken as IPv4 */
    assert_int_equal(net_parse_cidr("2001:db8::/32", &c, err, sizeof err), 0);
    assert_int_equal(net_parse_addr("2001:db8:ffff::1", 16, &a), 0);
    assert_true(net_cidr_match(&c, &a));
    assert_int_equal(net_parse_addr("::ffff:10.1.2.3", 15, &a), 0);
    assert_int_equal(a.family, AF_INET);
    net_addr_format(&a, text, sizeof text);
    assert_string_equal(text, "10.1.2.3");
    assert_false(net_cidr_match(&c, &a));
    /* a bare address is all of its bits */
    assert_int_equal(net_parse_cidr("::1", &c, err, sizeof err), 0);
    assert_int_equal(c.prefix, 128);
    /* refusals */
    assert_int_equal(net_parse_cidr("10.0.0.1/8", &c, err, sizeof err), -1);
    assert_string_equal(err, "10.0.0.1/8 has bits set past its /8 prefix");
    assert_int_equal(net_parse_cidr("10.0.0.0/33", &c, err, sizeof err), -1);
    assert_int_equal(net_parse_cidr("10.0.0.0/", &c, err, sizeof err), -1);
    assert_int_equal(net_parse_cidr("10.0.0.0/8/8", &c, err, sizeof err), -1);
    assert_int_equal(net_parse_cidr("/8", &c, err, sizeof err), -1);
    assert_int_equal(net_parse_cidr("", &c, err, sizeof err), -1);
    assert_int_equal(net_parse_addr("1.2.3.4 ", 8, &a), -1);
    assert_int_equal(net_parse_addr("1.2.3", 5, &a), -1);
    assert_int_equal(net_parse_addr("[::1]", 5, &a), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_forms),
        cmocka_unit_test(test_split_rejects),
        cmocka_unit_test(test_split_host_too_long),
        cmocka_unit_test(test_ip_literal),
        cmocka_unit_test(test_cidr),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
