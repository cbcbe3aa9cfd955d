/* test_api3req.c: API 3.0's other request shapes (capgate/api3req.h): the shape of a method and
 * Content-Type, the decoding of a query / form / multipart body, the typing of string values by
 * the field model, v1's common parameters, and signatures checked against vectors the official
 * Node SDK computed (tests/unit/gen_api3req_vectors.mjs prints them): v1 HmacSHA1 / HmacSHA256
 * (its string to sign too) and TC3 over GET and multipart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "capgate/api3req.h"
#include "capgate/params.h"
#include "capgate/sign.h"
#include "capgate/tc3.h"

/* From gen_api3req_vectors.mjs: what the SDK sends, and its string to sign. */
struct v1vec {
    const char *method, *host, *key, *sent, *string_to_sign;
};
static const struct v1vec v1vecs[] = {
    {"GET", "captcha.tencentcloudapi.com", "secret-key",
     "CaptchaType=9&Ticket=t03abc&UserIp=1.2.3.4&Randstr=%40xyz&CaptchaAppId=190000001&"
     "AppSecretKey=k&Action=DescribeCaptchaResult&Nonce=4242&Timestamp=1700000000&"
     "Version=2019-07-22&SecretId=AKIDexample&RequestClient=SDK_NODEJS_4.1.313&"
     "SignatureMethod=HmacSHA1&Signature=59FOD2FHaOrhitlbgHgHl2g3DG0%3D",
     "GETcaptcha.tencentcloudapi.com/?Action=DescribeCaptchaResult&AppSecretKey=k&"
     "CaptchaAppId=190000001&CaptchaType=9&Nonce=4242&Randstr=@xyz&"
     "RequestClient=SDK_NODEJS_4.1.313&SecretId=AKIDexample&SignatureMethod=HmacSHA1&"
     "Ticket=t03abc&Timestamp=1700000000&UserIp=1.2.3.4&Version=2019-07-22"},
    {"POST", "127.0.0.1:8443", "capgate-mock-secret",
     "CaptchaType=9&Ticket=a%2Bb%2Fc%3Dd%26e%20%C3%A9&UserIp=%3A%3A1&Randstr=r&CaptchaAppId=7&"
     "AppSecretKey=x%20y&Action=DescribeCaptchaResult&Nonce=65535&Timestamp=1796562092&"
     "Version=2019-07-22&SecretId=AKIDcapgateMockTestKey00000000000000&Region=ap-guangzhou&"
     "SignatureMethod=HmacSHA256&Signature=Ox48yXpSCquWy67htsJ6EsN5myAuN9ECPI7wlWs3t7E%3D",
     "POST127.0.0.1:8443/?Action=DescribeCaptchaResult&AppSecretKey=x y&CaptchaAppId=7&"
     "CaptchaType=9&Nonce=65535&Randstr=r&Region=ap-guangzhou&"
     "SecretId=AKIDcapgateMockTestKey00000000000000&SignatureMethod=HmacSHA256&"
     "Ticket=a+b/c=d&e \xc3\xa9&Timestamp=1796562092&UserIp=::1&Version=2019-07-22"},
    {"GET", "gw.example", "",
     "CaptchaType=9&Ticket=t&UserIp=10.0.0.1&CaptchaAppId=1&AppSecretKey=k&"
     "Action=DescribeCaptchaMiniResult&Nonce=0&Timestamp=1704067199&Version=2019-07-22&"
     "SecretId=id&Language=en-US&Token=tok&SignatureMethod=HmacSHA256&"
     "Signature=8uSwW%2B0iHButH%2BoOVTWjiXU2vYz3bPA%2Fe7dKCi6az2I%3D",
     "GETgw.example/?Action=DescribeCaptchaMiniResult&AppSecretKey=k&CaptchaAppId=1&"
     "CaptchaType=9&Language=en-US&Nonce=0&SecretId=id&SignatureMethod=HmacSHA256&Ticket=t&"
     "Timestamp=1704067199&Token=tok&UserIp=10.0.0.1&Version=2019-07-22"},
};

static void parse(struct params *p, const char *s) {
    char err[256];
    params_init(p);
    assert_int_equal(params_parse_urlencoded(p, s, strlen(s), err, sizeof(err)), 0);
}

static void test_v1_matches_sdk(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof(v1vecs) / sizeof(v1vecs[0]); i++) {
        const struct v1vec *v = &v1vecs[i];
        struct params p;
        parse(&p, v->sent);
        assert_true(api3req_is_v1(&p));
        /* the string to sign is the SDK's (sign.c's, over the parameters but Signature) */
        char *sts = sign_string_to_sign(v->method, v->host, "/", &p);
        assert_non_null(sts);
        assert_string_equal(sts, v->string_to_sign);
        free(sts);
        assert_int_equal(api3req_v1_verify(&p, v->method, v->host, NULL, v->key), 0);
        /* with precomputed key states too */
        struct sign_key *k = sign_key_new(v->key, strlen(v->key));
        assert_non_null(k);
        assert_int_equal(api3req_v1_verify(&p, v->method, v->host, k, NULL), 0);
        sign_key_free(k);
        /* another key, method or host does not verify */
        assert_int_equal(api3req_v1_verify(&p, v->method, v->host, NULL, "other"), -1);
        assert_int_equal(
            api3req_v1_verify(&p, strcmp(v->method, "GET") ? "GET" : "POST", v->host, NULL, v->key),
            -1);
        assert_int_equal(api3req_v1_verify(&p, v->method, "other.example", NULL, v->key), -1);
        /* a value changed after signing does not verify */
        assert_int_equal(params_set(&p, "CaptchaType", "8"), 0);
        assert_int_equal(api3req_v1_verify(&p, v->method, v->host, NULL, v->key), -1);
        params_cleanup(&p);
    }
    /* signed over the Host without its port (the Python SDK's hostname): sent with one */
    struct params p;
    parse(&p, v1vecs[0].sent);
    assert_int_equal(
        api3req_v1_verify(&p, "GET", "captcha.tencentcloudapi.com:443", NULL, "secret-key"), 0);
    params_cleanup(&p);
}

static void test_v1_public(void **state) {
    (void)state;
    struct params p;
    struct api3_v1 v;
    const char *code = NULL;
    char err[256];
    parse(&p, v1vecs[2].sent);
    assert_int_equal(api3req_v1_public(&p, &v, &code, err, sizeof(err)), 0);
    assert_string_equal(v.action, "DescribeCaptchaMiniResult");
    assert_string_equal(v.version, "2019-07-22");
    assert_string_equal(v.secret_id, "id");
    assert_string_equal(v.token, "tok");
    assert_int_equal(v.timestamp, 1704067199);
    assert_int_equal(v.nonce, 0);
    assert_int_equal(v.method, SIGN_HMAC_SHA256);
    params_cleanup(&p);

    static const struct {
        const char *q, *code, *word;
    } bad[] = {
        {"Version=1&SecretId=a&Timestamp=1&Nonce=1&Signature=s", "MissingParameter", "Action"},
        {"Action=A&SecretId=a&Timestamp=1&Nonce=1&Signature=s", "MissingParameter", "Version"},
        {"Action=A&Version=1&Timestamp=1&Nonce=1&Signature=s", "MissingParameter", "SecretId"},
        {"Action=A&Version=1&SecretId=a&Nonce=1&Signature=s", "MissingParameter", "Timestamp"},
        {"Action=A&Version=1&SecretId=a&Timestamp=1&Signature=s", "MissingParameter", "Nonce"},
        {"Action=A&Version=1&SecretId=a&Timestamp=1&Nonce=1&Signature=", "MissingParameter",
         "Signature"},
        {"Action=A&Version=1&SecretId=a&Timestamp=x&Nonce=1&Signature=s", "InvalidParameter",
         "Timestamp x"},
        {"Action=A&Version=1&SecretId=a&Timestamp=1&Nonce=-1&Signature=s", "InvalidParameter",
         "Nonce -1"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        parse(&p, bad[i].q);
        assert_int_equal(api3req_v1_public(&p, &v, &code, err, sizeof(err)), -1);
        assert_string_equal(code, bad[i].code);
        assert_non_null(strstr(err, bad[i].word));
        params_cleanup(&p);
    }
    /* SignatureMethod other than HmacSHA256 is HmacSHA1 (the v1 doc's rule) */
    parse(&p, "Action=A&Version=1&SecretId=a&Timestamp=1&Nonce=1&Signature=s&SignatureMethod=x");
    assert_int_equal(api3req_v1_public(&p, &v, &code, err, sizeof(err)), 0);
    assert_int_equal(v.method, SIGN_HMAC_SHA1);
    assert_null(v.token);
    params_cleanup(&p);
}

static void test_shape(void **state) {
    (void)state;
    enum api3_shape s;
    const char *code = NULL;
    char err[256];
    assert_int_equal(api3req_shape("GET", NULL, &s, &code, err, sizeof(err)), 0);
    assert_int_equal(s, API3_SHAPE_QUERY);
    assert_int_equal(
        api3req_shape("POST", "application/json; charset=utf-8", &s, &code, err, sizeof(err)), 0);
    assert_int_equal(s, API3_SHAPE_JSON);
    assert_int_equal(
        api3req_shape("POST", "Application/X-WWW-Form-Urlencoded", &s, &code, err, sizeof(err)), 0);
    assert_int_equal(s, API3_SHAPE_FORM);
    assert_int_equal(
        api3req_shape("POST", "multipart/form-data; boundary=x", &s, &code, err, sizeof(err)), 0);
    assert_int_equal(s, API3_SHAPE_MULTIPART);
    assert_int_equal(api3req_shape("POST", "text/plain", &s, &code, err, sizeof(err)), -1);
    assert_string_equal(code, "InvalidParameter");
    assert_non_null(strstr(err, "text/plain"));
    assert_int_equal(api3req_shape("POST", "application/jsonx", &s, &code, err, sizeof(err)), -1);
    assert_int_equal(api3req_shape("POST", NULL, &s, &code, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "(none)"));
    assert_int_equal(api3req_shape("PUT", "application/json", &s, &code, err, sizeof(err)), -1);
    assert_string_equal(code, "UnsupportedProtocol");
}

static json_t *body_of(const char *q, int v1, int mini, const char **code, char *err) {
    struct params p;
    parse(&p, q);
    json_t *o =
        api3req_body(&p, v1, validate_api3_fields(mini),
                     mini ? "DescribeCaptchaMiniResult" : "DescribeCaptchaResult", code, err, 256);
    params_cleanup(&p);
    return o;
}

static void test_body_typing(void **state) {
    (void)state;
    const char *code = NULL;
    char err[256];
    json_t *o = body_of("CaptchaType=9&Ticket=t&CaptchaAppId=4294967295&NeedGetCaptchaTime=-1&"
                        "Action=DescribeCaptchaResult&Nonce=5",
                        1, 0, &code, err);
    assert_non_null(o);
    assert_true(json_is_integer(json_object_get(o, "CaptchaType")));
    assert_int_equal(json_integer_value(json_object_get(o, "CaptchaType")), 9);
    assert_int_equal(json_integer_value(json_object_get(o, "CaptchaAppId")), 4294967295LL);
    /* the range is the validator's, as for JSON: -1 stays an Integer here */
    assert_int_equal(json_integer_value(json_object_get(o, "NeedGetCaptchaTime")), -1);
    assert_string_equal(json_string_value(json_object_get(o, "Ticket")), "t");
    assert_null(json_object_get(o, "Action")); /* v1's common parameters are left out */
    assert_null(json_object_get(o, "Nonce"));
    assert_int_equal(json_object_size(o), 4);
    json_decref(o);

    static const struct {
        const char *q;
        int v1;
        const char *code, *msg;
    } bad[] = {
        {"CaptchaType=abc", 0, "InvalidParameterValue",
         "CaptchaType must be an Integer; got \"abc\""},
        {"CaptchaType=", 0, "InvalidParameterValue", "CaptchaType must be an Integer; got \"\""},
        {"CaptchaType=-", 0, "InvalidParameterValue", "got \"-\""},
        {"CaptchaType=9.0", 0, "InvalidParameterValue", "got \"9.0\""},
        {"CaptchaType=%2B9", 0, "InvalidParameterValue", "got \"+9\""},
        {"CaptchaType=99999999999999999999", 0, "InvalidParameterValue", "must be an Integer"},
        {"Color=red", 0, "UnknownParameter", "Color is not a parameter of DescribeCaptchaResult"},
        /* without v1, a common parameter's name is just an unknown field */
        {"Nonce=1", 0, "UnknownParameter", "Nonce is not a parameter"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_null(body_of(bad[i].q, bad[i].v1, 0, &code, err));
        assert_string_equal(code, bad[i].code);
        assert_non_null(strstr(err, bad[i].msg));
    }
    /* the Mini action's own model: no Randstr */
    assert_null(body_of("Randstr=x", 0, 1, &code, err));
    assert_string_equal(code, "UnknownParameter");
}

static void test_params_of_shapes(void **state) {
    (void)state;
    struct params p;
    char err[256];
    params_init(&p);
    assert_int_equal(
        api3req_params(API3_SHAPE_QUERY, "a=1&b=%41", NULL, "", 0, &p, err, sizeof(err)), 0);
    assert_string_equal(params_get(&p, "b"), "A");
    params_cleanup(&p);
    params_init(&p);
    assert_int_equal(api3req_params(API3_SHAPE_QUERY, NULL, NULL, "", 0, &p, err, sizeof(err)), 0);
    assert_int_equal(p.count, 0);
    assert_int_equal(api3req_params(API3_SHAPE_QUERY, "a=%zz", NULL, "", 0, &p, err, sizeof(err)),
                     -1);
    params_cleanup(&p);
    params_init(&p);
    assert_int_equal(
        api3req_params(API3_SHAPE_FORM, "x=1", NULL, "a=1&a=2", 7, &p, err, sizeof(err)), -1);
    params_cleanup(&p);
    params_init(&p);
    const char *mp = "--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--B--\r\n";
    assert_int_equal(api3req_params(API3_SHAPE_MULTIPART, NULL, "multipart/form-data; boundary=B",
                                    mp, strlen(mp), &p, err, sizeof(err)),
                     0);
    assert_string_equal(params_get(&p, "a"), "1");
    params_cleanup(&p);
    params_init(&p);
    assert_int_equal(
        api3req_params(API3_SHAPE_JSON, NULL, "application/json", "{}", 2, &p, err, sizeof(err)),
        -1);
    params_cleanup(&p);
}

/* TC3 over GET and multipart, from gen_api3req_vectors.mjs (the SDK's Sign.sign3). */
struct hdrs {
    const char *content_type, *host;
};
static const char *get(void *arg, const char *lname) {
    struct hdrs *h = arg;
    if (strcmp(lname, "content-type") == 0) return h->content_type;
    if (strcmp(lname, "host") == 0) return h->host;
    return NULL;
}

#define TC3_ID "AKIDcapgateMockTestKey00000000000000"
#define TC3_KEY "capgate-mock-secret"
#define TC3_TS 1796562092u
#define BOUNDARY "--------------------------123456789012345678901234"

static void check_tc3(struct tc3_request *r, const char *auth_sig) {
    char value[512];
    snprintf(value, sizeof(value),
             "TC3-HMAC-SHA256 Credential=" TC3_ID "/2026-12-06/127/tc3_request, "
             "SignedHeaders=content-type;host, Signature=%s",
             auth_sig);
    struct tc3_auth a;
    char err[256];
    assert_int_equal(tc3_parse_authorization(value, &a, err, sizeof(err)), 0);
    assert_int_equal(tc3_verify(r, &a, TC3_KEY, TC3_TS, err, sizeof(err)), 0);
    assert_int_equal(tc3_verify(r, &a, "other", TC3_TS, err, sizeof(err)), -1);
}

static void test_tc3_get_and_multipart_match_sdk(void **state) {
    (void)state;
    struct hdrs h = {"application/x-www-form-urlencoded", "127.0.0.1"};
    struct tc3_request r = {
        "GET", "/", "CaptchaType=9&Ticket=t%2B1&UserIp=1.2.3.4&CaptchaAppId=7&AppSecretKey=k",
        "",    0,   get,
        &h};
    check_tc3(&r, "fabe60a4a7a63642dcd280810642a00380ed5deb467ecb03bc400dce86f38f15");
    /* the body form-data sends for the SDK's parts; the SDK hashed its own rendering of them */
#define PART(n, v) \
    "--" BOUNDARY "\r\nContent-Disposition: form-data; name=\"" n "\"\r\n\r\n" v "\r\n"
    static const char body[] =
        PART("CaptchaType", "9") PART("Ticket", "t") PART("UserIp", "1.2.3.4")
            PART("CaptchaAppId", "7") PART("AppSecretKey", "k") "--" BOUNDARY "--\r\n";
#undef PART
    struct hdrs hm = {"multipart/form-data; boundary=" BOUNDARY, "127.0.0.1"};
    struct tc3_request m = {"POST", "/", "", body, sizeof(body) - 1, get, &hm};
    check_tc3(&m, "7ef537a0cb972d1e8d6567290d4be916b66f02b8daa0120bcce70056bb0112ef");
    /* and the parts decode to the fields */
    struct params p;
    char err[256];
    params_init(&p);
    assert_int_equal(api3req_params(API3_SHAPE_MULTIPART, NULL, hm.content_type, body,
                                    sizeof(body) - 1, &p, err, sizeof(err)),
                     0);
    assert_int_equal(p.count, 5);
    assert_string_equal(params_get(&p, "UserIp"), "1.2.3.4");
    params_cleanup(&p);
}

/* X-TC-Content-SHA256: UNSIGNED-PAYLOAD (the unsignedPayload of the Python, Java and Go SDKs):
 * the payload signed is that string, not the body. The signatures are the official Python SDK's
 * (TencentCloud/tencentcloud-sdk-python, AbstractClient._get_tc3_signature) for this body, the
 * Host captcha.tencentcloudapi.com, X-TC-Timestamp 1765000000 and the key below, computed with
 * and without the header. */
struct hdrs3 {
    const char *host, *content_sha;
};
static const char *get3(void *arg, const char *lname) {
    struct hdrs3 *h = arg;
    if (strcmp(lname, "content-type") == 0) return "application/json";
    if (strcmp(lname, "host") == 0) return h->host;
    if (strcmp(lname, "x-tc-content-sha256") == 0) return h->content_sha;
    return NULL;
}

static int verify3(const char *sig, const char *host, const char *content_sha) {
    static const char body[] = "{\"CaptchaType\":9,\"Ticket\":\"t\",\"UserIp\":\"127.0.0.1\","
                               "\"Randstr\":\"r\",\"CaptchaAppId\":190000001,"
                               "\"AppSecretKey\":\"k\"}";
    char value[512], err[256];
    struct tc3_auth a;
    struct hdrs3 h = {host, content_sha};
    snprintf(value, sizeof(value),
             "TC3-HMAC-SHA256 Credential=AKIDtest/2025-12-06/captcha/tc3_request, "
             "SignedHeaders=content-type;host, Signature=%s",
             sig);
    assert_int_equal(tc3_parse_authorization(value, &a, err, sizeof(err)), 0);
    return api3req_tc3_verify(API3_SHAPE_JSON, NULL, body, sizeof(body) - 1, get3, &h, &a,
                              "capgate-test-secret-key", 1765000000u, err, sizeof(err));
}

static void test_tc3_unsigned_payload_matches_sdk(void **state) {
    (void)state;
    const char *unsigned_sig = "784171c99388da90c0307e2f7feec17eeb3791e15a5a6f0149a87d90e3074761";
    const char *signed_sig = "4f0701ef7fcabac3483bcc1b47552e6e4dd112dcf53dc4c07e687dc0c4610f21";
    const char *host = "captcha.tencentcloudapi.com";
    assert_int_equal(verify3(unsigned_sig, host, "UNSIGNED-PAYLOAD"), 0);
    assert_int_equal(verify3(signed_sig, host, NULL), 0);
    /* each only in its own mode: the header decides what is hashed */
    assert_int_equal(verify3(unsigned_sig, host, NULL), -1);
    assert_int_equal(verify3(signed_sig, host, "UNSIGNED-PAYLOAD"), -1);
    /* another value of the header (a hash of the body, as some clients send) signs the body */
    assert_int_equal(verify3(signed_sig, host,
                             "0000000000000000000000000000000000000000000000000000000000000000"),
                     0);
    /* signed without the port, sent with it */
    assert_int_equal(verify3(unsigned_sig, "captcha.tencentcloudapi.com:443", "UNSIGNED-PAYLOAD"),
                     0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1_matches_sdk),
        cmocka_unit_test(test_v1_public),
        cmocka_unit_test(test_shape),
        cmocka_unit_test(test_body_typing),
        cmocka_unit_test(test_params_of_shapes),
        cmocka_unit_test(test_tc3_get_and_multipart_match_sdk),
        cmocka_unit_test(test_tc3_unsigned_payload_matches_sdk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
