/* test_realip.c: the client address behind trusted proxies: only a trusted peer's headers count,
 * X-Forwarded-For read from the right as nginx's real_ip_recursive does, X-Real-IP as the
 * fallback, malformed elements, ports and brackets, IPv6. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "realip.h"

static struct net_cidr trusted[3];

static int setup(void **state) {
    char err[128];
    if (net_parse_cidr("10.0.0.0/8", &trusted[0], err, sizeof err) ||
        net_parse_cidr("192.168.7.1", &trusted[1], err, sizeof err) ||
        net_parse_cidr("fd00::/8", &trusted[2], err, sizeof err))
        return -1;
    return 0;
}

/* The address realip_client picks for peer and headers (name, value pairs, NULL-ended). */
static const char *pick(const char *peer, int *decided, ...) {
    static char out[64];
    struct httpd_header h[8];
    size_t n = 0;
    va_list ap;
    va_start(ap, decided);
    for (const char *name; n < 8 && (name = va_arg(ap, const char *));) {
        h[n].name = name;
        h[n].value = va_arg(ap, const char *);
        n++;
    }
    va_end(ap);
    *decided = realip_client(trusted, 3, peer, h, n, out, sizeof out);
    return out;
}

static void test_untrusted_peer_is_the_client(void **state) {
    int d;
    /* a spoofing client: its headers say nothing */
    assert_string_equal(pick("203.0.113.5", &d, "X-Forwarded-For", "1.2.3.4", NULL), "203.0.113.5");
    assert_int_equal(d, 0);
    assert_string_equal(pick("203.0.113.5", &d, "X-Real-IP", "1.2.3.4", NULL), "203.0.113.5");
    assert_int_equal(d, 0);
    /* no list at all */
    struct httpd_header h = {"X-Forwarded-For", "1.2.3.4"};
    char out[64];
    assert_int_equal(realip_client(NULL, 0, "10.1.1.1", &h, 1, out, sizeof out), 0);
    assert_string_equal(out, "10.1.1.1");
}

static void test_forwarded_for_from_the_right(void **state) {
    int d;
    /* one proxy */
    assert_string_equal(pick("10.0.0.2", &d, "X-Forwarded-For", "198.51.100.7", NULL),
                        "198.51.100.7");
    assert_int_equal(d, 1);
    /* the client's own prefix is left of the first untrusted hop: ignored */
    assert_string_equal(pick("10.0.0.2", &d, "X-Forwarded-For",
                             "6.6.6.6, 198.51.100.7, 192.168.7.1,10.9.9.9", NULL),
                        "198.51.100.7");
    /* every hop trusted: the leftmost */
    assert_string_equal(pick("10.0.0.2", &d, "X-Forwarded-For", "10.3.3.3, 192.168.7.1", NULL),
                        "10.3.3.3");
    /* two headers are one list, the later header holding the newer hops */
    assert_string_equal(pick("10.0.0.2", &d, "X-Forwarded-For", "198.51.100.9", "x-forwarded-for",
                             "10.4.4.4", NULL),
                        "198.51.100.9");
    /* a malformed element ends the walk at the last good address */
    assert_string_equal(pick("10.0.0.2", &d, "X-Forwarded-For", "1.1.1.1, garbage, 10.5.5.5", NULL),
                        "10.5.5.5");
    assert_int_equal(d, 1);
    assert_string_equal(pick("10.0.0.2", &d, "X-Forwarded-For", "unknown", NULL), "10.0.0.2");
    assert_int_equal(d, 0);
    assert_string_equal(pick("10.0.0.2", &d, "X-Forwarded-For", " , ", NULL), "10.0.0.2");
    assert_int_equal(d, 0);
    /* ports and brackets; IPv6 and an IPv4-mapped address */
    assert_string_equal(pick("10.0.0.2", &d, "X-Forwarded-For", "198.51.100.7:5555", NULL),
                        "198.51.100.7");
    assert_string_equal(pick("10.0.0.2", &d, "X-Forwarded-For", "[2001:db8::1]:443", NULL),
                        "2001:db8::1");
    assert_string_equal(pick("fd12::1", &d, "X-Forwarded-For", "2001:db8::2, fd00::9", NULL),
                        "2001:db8::2");
    assert_string_equal(pick("10.0.0.2", &d, "X-Forwarded-For", "::ffff:198.51.100.8", NULL),
                        "198.51.100.8");
    assert_string_equal(pick("10.0.0.2", &d, "X-Forwarded-For", "1.2.3.4:99999x", NULL),
                        "10.0.0.2");
}

static void test_real_ip(void **state) {
    int d;
    assert_string_equal(pick("192.168.7.1", &d, "X-Real-IP", "198.51.100.20", NULL),
                        "198.51.100.20");
    assert_int_equal(d, 1);
    /* X-Forwarded-For wins when both are there */
    assert_string_equal(pick("192.168.7.1", &d, "X-Real-IP", "198.51.100.20", "X-Forwarded-For",
                             "198.51.100.21", NULL),
                        "198.51.100.21");
    assert_string_equal(pick("192.168.7.1", &d, "X-Real-IP", "not an address", NULL),
                        "192.168.7.1");
    assert_int_equal(d, 0);
    /* 192.168.7.1 is trusted, 192.168.7.2 is not */
    assert_string_equal(pick("192.168.7.2", &d, "X-Real-IP", "198.51.100.20", NULL), "192.168.7.2");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_untrusted_peer_is_the_client),
        cmocka_unit_test(test_forwarded_for_from_the_right),
        cmocka_unit_test(test_real_ip),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
