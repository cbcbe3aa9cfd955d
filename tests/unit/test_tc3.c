/* test_tc3.c: TC3-HMAC-SHA256 against vectors computed elsewhere: the Authorization values come
 * from the official Node SDK's signer (tests/unit/gen_tc3_vectors.mjs prints them), the payload
 * and canonical request hashes from `openssl dgst -sha256`. Also the Authorization parser's
 * refusals, the date of the scope at midnight UTC, header case/space rules and the skew window. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "capgate/tc3.h"

struct hdrs {
    const char *content_type;
    const char *host;
};

static const char *get(void *arg, const char *lname) {
    struct hdrs *h = arg;
    if (strcmp(lname, "content-type") == 0) return h->content_type;
    if (strcmp(lname, "host") == 0) return h->host;
    return NULL;
}

struct vec {
    const char *id, *key, *service, *host, *body, *auth;
    uint64_t ts;
};

/* From gen_tc3_vectors.mjs (the SDK's Sign.sign3). */
static const struct vec vecs[] = {
    {"AKIDexample", "secret-key", "captcha", "captcha.tencentcloudapi.com",
     "{\"CaptchaType\":9,\"Ticket\":\"t03abc\",\"UserIp\":\"1.2.3.4\",\"Randstr\":\"@xyz\","
     "\"CaptchaAppId\":190000001,\"AppSecretKey\":\"k\"}",
     "TC3-HMAC-SHA256 Credential=AKIDexample/2023-11-14/captcha/tc3_request, "
     "SignedHeaders=content-type;host, "
     "Signature=3fc45b77fc18f7e8fe3b2820aa9b1e7e3488c6f255b27c1588cbc68860d099d0",
     1700000000},
    {"AKIDcapgateMockTestKey00000000000000", "capgate-mock-secret", "127", "127.0.0.1", "{}",
     "TC3-HMAC-SHA256 Credential=AKIDcapgateMockTestKey00000000000000/2026-12-06/127/"
     "tc3_request, SignedHeaders=content-type;host, "
     "Signature=caf6924c12116336de67efd8d401a08e14bb840b135d6069c10d760ec1ba0ac0",
     1796562092},
    {"id", "", "captcha", "captcha.tencentcloudapi.com", "{\"Ticket\":\"\xc3\xa9\"}",
     "TC3-HMAC-SHA256 Credential=id/2023-12-31/captcha/tc3_request, "
     "SignedHeaders=content-type;host, "
     "Signature=9cae1c8dccbb16532e3aa22478e380e3a509843e48eb3945c46a0b06cb8486a4",
     1704067199},
};

static struct tc3_request req_for(const struct vec *v, struct hdrs *h) {
    struct tc3_request r = {"POST", "/", "", v->body, strlen(v->body), get, h};
    return r;
}

static void test_authorization_matches_sdk(void **state) {
    for (size_t i = 0; i < sizeof(vecs) / sizeof(vecs[0]); i++) {
        struct hdrs h = {"application/json", vecs[i].host};
        struct tc3_request r = req_for(&vecs[i], &h);
        char out[512];
        assert_int_equal(tc3_authorization(&r, vecs[i].id, vecs[i].key, vecs[i].service, vecs[i].ts,
                                           out, sizeof(out)),
                         0);
        assert_string_equal(out, vecs[i].auth);
    }
}

static void test_canonical_request_hashes(void **state) {
    const struct vec *v = &vecs[0];
    struct hdrs h = {"application/json", v->host};
    struct tc3_request r = req_for(v, &h);
    char hex[TC3_HEX_LEN + 1];
    assert_int_equal(tc3_sha256_hex(v->body, strlen(v->body), hex), 0);
    /* openssl dgst -sha256 of the body */
    assert_string_equal(hex, "52874e6cef29ef055a66e5b8414023b4ff55769f4ef5d6279286fc65e185789d");
    char *c = tc3_canonical_request(&r, "content-type;host", NULL);
    assert_non_null(c);
    assert_string_equal(c, "POST\n/\n\ncontent-type:application/json\n"
                           "host:captcha.tencentcloudapi.com\n\ncontent-type;host\n"
                           "52874e6cef29ef055a66e5b8414023b4ff55769f4ef5d6279286fc65e185789d");
    char *sts = tc3_string_to_sign(v->ts, "2023-11-14", "captcha", c);
    assert_non_null(sts);
    /* openssl dgst -sha256 of the canonical request above */
    assert_string_equal(sts, "TC3-HMAC-SHA256\n1700000000\n2023-11-14/captcha/tc3_request\n"
                             "8ec14f98735c656167416b55d50f02995f1eba4b92709cfa0df6837c606e2d82");
    free(sts);
    free(c);
    /* Header values are trimmed and lower-cased; the same signature results. */
    struct hdrs h2 = {"  Application/JSON ", "CAPTCHA.tencentcloudapi.com"};
    r.header_arg = &h2;
    char out[512];
    assert_int_equal(tc3_authorization(&r, v->id, v->key, v->service, v->ts, out, sizeof(out)), 0);
    assert_string_equal(out, v->auth);
}

static void test_verify(void **state) {
    char err[256];
    for (size_t i = 0; i < sizeof(vecs) / sizeof(vecs[0]); i++) {
        struct hdrs h = {"application/json", vecs[i].host};
        struct tc3_request r = req_for(&vecs[i], &h);
        struct tc3_auth a;
        assert_int_equal(tc3_parse_authorization(vecs[i].auth, &a, err, sizeof(err)), 0);
        assert_string_equal(a.secret_id, vecs[i].id);
        assert_string_equal(a.service, vecs[i].service);
        assert_int_equal(tc3_verify(&r, &a, vecs[i].key, vecs[i].ts, err, sizeof(err)), 0);
        /* Wrong key, changed body, another day, another host: each fails. */
        assert_int_equal(tc3_verify(&r, &a, "other", vecs[i].ts, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "Signature"));
        assert_int_equal(tc3_verify(&r, &a, vecs[i].key, vecs[i].ts + 86400, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "date"));
        r.payload_len--;
        assert_int_equal(tc3_verify(&r, &a, vecs[i].key, vecs[i].ts, err, sizeof(err)), -1);
        r.payload_len++;
        h.host = "example.com";
        assert_int_equal(tc3_verify(&r, &a, vecs[i].key, vecs[i].ts, err, sizeof(err)), -1);
        h.host = NULL;
        assert_int_equal(tc3_verify(&r, &a, vecs[i].key, vecs[i].ts, err, sizeof(err)), -2);
        assert_non_null(strstr(err, "host"));
    }
    /* A changed signature digit fails; upper-case hex is the same signature. */
    char buf[512];
    snprintf(buf, sizeof(buf), "%s", vecs[0].auth);
    struct hdrs h = {"application/json", vecs[0].host};
    struct tc3_request r = req_for(&vecs[0], &h);
    struct tc3_auth a;
    for (char *p = strstr(buf, "Signature=") + 10; *p; p++)
        if (*p >= 'a' && *p <= 'f') *p = (char)(*p - 'a' + 'A');
    assert_int_equal(tc3_parse_authorization(buf, &a, err, sizeof(err)), 0);
    assert_int_equal(tc3_verify(&r, &a, vecs[0].key, vecs[0].ts, err, sizeof(err)), 0);
    buf[strlen(buf) - 1] = buf[strlen(buf) - 1] == '0' ? '1' : '0';
    assert_int_equal(tc3_parse_authorization(buf, &a, err, sizeof(err)), 0);
    assert_int_equal(tc3_verify(&r, &a, vecs[0].key, vecs[0].ts, err, sizeof(err)), -1);
}

static void test_parse_refusals(void **state) {
    static const char *const bad[] = {
        "",
        "HMAC-SHA256 Credential=a/2023-11-14/captcha/tc3_request, SignedHeaders=content-type;host,"
        " Signature=3fc45b77fc18f7e8fe3b2820aa9b1e7e3488c6f255b27c1588cbc68860d099d0",
        "TC3-HMAC-SHA256 Credential=a/2023-11-14/captcha, SignedHeaders=content-type;host, "
        "Signature=3fc45b77fc18f7e8fe3b2820aa9b1e7e3488c6f255b27c1588cbc68860d099d0",
        "TC3-HMAC-SHA256 Credential=a/20231114/captcha/tc3_request, SignedHeaders=content-type;"
        "host, Signature=3fc45b77fc18f7e8fe3b2820aa9b1e7e3488c6f255b27c1588cbc68860d099d0",
        "TC3-HMAC-SHA256 Credential=/2023-11-14/captcha/tc3_request, SignedHeaders=content-type;"
        "host, Signature=3fc45b77fc18f7e8fe3b2820aa9b1e7e3488c6f255b27c1588cbc68860d099d0",
        "TC3-HMAC-SHA256 Credential=a/2023-11-14/captcha/tc3_request, SignedHeaders=host, "
        "Signature=3fc45b77fc18f7e8fe3b2820aa9b1e7e3488c6f255b27c1588cbc68860d099d0",
        "TC3-HMAC-SHA256 Credential=a/2023-11-14/captcha/tc3_request, SignedHeaders=Content-Type;"
        "host, Signature=3fc45b77fc18f7e8fe3b2820aa9b1e7e3488c6f255b27c1588cbc68860d099d0",
        "TC3-HMAC-SHA256 Credential=a/2023-11-14/captcha/tc3_request, SignedHeaders=content-type;"
        "host, Signature=3fc45b77",
        "TC3-HMAC-SHA256 Credential=a/2023-11-14/captcha/tc3_request, SignedHeaders=content-type;"
        "host, Signature=zfc45b77fc18f7e8fe3b2820aa9b1e7e3488c6f255b27c1588cbc68860d099d0",
        "TC3-HMAC-SHA256 Credential=a/2023-11-14/captcha/tc3_request, SignedHeaders=content-type;"
        "host, Signature=3fc45b77fc18f7e8fe3b2820aa9b1e7e3488c6f255b27c1588cbc68860d099d0, x",
    };
    char err[256];
    struct tc3_auth a;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        assert_int_equal(tc3_parse_authorization(bad[i], &a, err, sizeof(err)), -1);
        assert_true(strlen(err) > 0);
    }
    assert_int_equal(tc3_parse_authorization(NULL, &a, err, sizeof(err)), -1);
    /* Without the space after the commas, as some clients write it. */
    assert_int_equal(
        tc3_parse_authorization("TC3-HMAC-SHA256 Credential=a/2023-11-14/captcha/tc3_request,"
                                "SignedHeaders=content-type;host;x-tc-action,Signature="
                                "3fc45b77fc18f7e8fe3b2820aa9b1e7e3488c6f255b27c1588cbc68860d099d0",
                                &a, err, sizeof(err)),
        0);
    assert_string_equal(a.signed_headers, "content-type;host;x-tc-action");
}

static void test_date_and_skew(void **state) {
    char d[TC3_DATE_LEN + 1];
    assert_int_equal(tc3_date(1704067199, d), 0);
    assert_string_equal(d, "2023-12-31");
    assert_int_equal(tc3_date(1704067200, d), 0);
    assert_string_equal(d, "2024-01-01");
    assert_int_equal(tc3_date(0, d), 0);
    assert_string_equal(d, "1970-01-01");
    assert_true(tc3_timestamp_fresh(1000, 1300, 300));
    assert_true(tc3_timestamp_fresh(1300, 1000, 300));
    assert_false(tc3_timestamp_fresh(999, 1300, 300));
    assert_false(tc3_timestamp_fresh(1301, 1000, 300));
}

static void test_host_without_port(void **state) {
    (void)state;
    static const char *const cases[][2] = {
        {"captcha.tencentcloudapi.com", "captcha.tencentcloudapi.com"},
        {"127.0.0.1:8443", "127.0.0.1"},
        {"gw.example:443", "gw.example"},
        {"[::1]:8443", "[::1]"},
        {"[::1]", "[::1]"},
        {"::1", "::1"}, /* a bare IPv6 address has more than one colon: kept whole */
        {"", ""},
    };
    char out[64];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        tc3_host_without_port(cases[i][0], out, sizeof(out));
        assert_string_equal(out, cases[i][1]);
    }
    tc3_host_without_port(NULL, out, sizeof(out));
    assert_string_equal(out, "");
    char small[5];
    tc3_host_without_port("abcdefgh:1", small, sizeof(small));
    assert_string_equal(small, "abcd");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_authorization_matches_sdk),
        cmocka_unit_test(test_canonical_request_hashes),
        cmocka_unit_test(test_verify),
        cmocka_unit_test(test_parse_refusals),
        cmocka_unit_test(test_date_and_skew),
        cmocka_unit_test(test_host_without_port),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
