/* test_api3.c: the gateway's API 3.0 front without I/O (proxy/api3.c): TC3 and bearer
 * authentication with each refusal's 3.0 code, the Actions' field rules, CaptchaAppId
 * authorization, the upstream body with the gateway's AppSecretKey (escaped, never twice), the
 * 3.0 error shape and the code classes the metrics count. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "api3.h"
#include "capgate/apierr.h"
#include "capgate/params.h"
#include "capgate/sign.h"
#include "capgate/tc3.h"
#include "config.h"
#include "nonce.h"

#define NOW 1764300000ull

static const char *const CONFIG_TEXT =
    "{\"upstream\": {\"secret_id\": \"AKIDup\", \"secret_key\": \"up-key\"},"
    " \"apps\": ["
    "  {\"name\": \"sig\", \"auth\": \"signature\", \"secret_id\": \"AKIDsig\","
    "   \"secret_key\": \"sig-key\"},"
    "  {\"name\": \"tok\", \"auth\": \"token\", \"token\": \"tok-secret\","
    "   \"captcha_app_ids\": [7]}],"
    " \"captcha_apps\": ["
    "  {\"captcha_app_id\": 7, \"app_secret_key\": \"k\\\"ey\\\\7\"},"
    "  {\"captcha_app_id\": 8, \"app_secret_key\": \"key8\", \"inject\": \"always\"}]}";

static struct config *load(void) {
    struct config *c = NULL;
    char err[512];
    if (config_load_string(CONFIG_TEXT, "t.json", &c, err, sizeof err) != 0)
        fail_msg("config: %s", err);
    return c;
}

/* A request's headers: lower-case name → value. */
struct hdrs {
    const char *name[8];
    const char *value[8];
    size_t n;
};

static const char *hdr(void *arg, const char *lname) {
    struct hdrs *h = arg;
    for (size_t i = 0; i < h->n; i++)
        if (strcmp(h->name[i], lname) == 0) return h->value[i];
    return NULL;
}

static void hdr_set(struct hdrs *h, const char *name, const char *value) {
    for (size_t i = 0; i < h->n; i++)
        if (strcmp(h->name[i], name) == 0) {
            h->value[i] = value;
            return;
        }
    h->name[h->n] = name;
    h->value[h->n++] = value;
}

static const char BODY[] = "{\"CaptchaType\":9}";

/* Signs BODY for host_signed as a client does (common/tc3.c) into auth; the request then
 * carries host_sent. */
static void sign(struct hdrs *h, char *auth, size_t authlen, const char *id, const char *key,
                 const char *service, uint64_t ts, const char *host_signed, char *tsbuf) {
    struct hdrs s = {.n = 0};
    hdr_set(&s, "content-type", "application/json");
    hdr_set(&s, "host", host_signed);
    struct tc3_request r = {"POST", "/", "", BODY, strlen(BODY), hdr, &s};
    assert_int_equal(tc3_authorization(&r, id, key, service, ts, auth, authlen), 0);
    snprintf(tsbuf, 24, "%llu", (unsigned long long)ts);
    hdr_set(h, "content-type", "application/json");
    hdr_set(h, "authorization", auth);
    hdr_set(h, "x-tc-timestamp", tsbuf);
}

static int authn(const struct config *c, struct hdrs *h, const char *host,
                 struct api3_auth_result *r) {
    struct api3_auth_request ar = {.header = hdr,
                                   .header_arg = h,
                                   .host = host,
                                   .body = BODY,
                                   .body_len = strlen(BODY),
                                   .now_s = NOW};
    return api3_authenticate(c, &ar, r);
}

/* v1 (HmacSHA1 / HmacSHA256 in the query or form) and Tokens, at the gateway. */
static void v1_params(struct params *p, const char *method, const char *host, const char *key,
                      const char *nonce, uint64_t ts) {
    char tsbuf[24];
    snprintf(tsbuf, sizeof tsbuf, "%llu", (unsigned long long)ts);
    params_init(p);
    assert_int_equal(params_adds(p, "Action", "DescribeCaptchaResult"), 0);
    assert_int_equal(params_adds(p, "Version", "2019-07-22"), 0);
    assert_int_equal(params_adds(p, "SecretId", "AKIDsig"), 0);
    assert_int_equal(params_adds(p, "Timestamp", tsbuf), 0);
    assert_int_equal(params_adds(p, "Nonce", nonce), 0);
    assert_int_equal(params_adds(p, "SignatureMethod", "HmacSHA256"), 0);
    assert_int_equal(params_adds(p, "CaptchaType", "9"), 0);
    assert_int_equal(sign_params(p, method, host, "/", key), 0);
}

static int authn_v1(const struct config *c, struct nonce_cache *n, const struct params *p,
                    const char *method, const char *host, struct api3_auth_result *r) {
    struct hdrs h = {.n = 0};
    struct api3_auth_request ar = {.header = hdr,
                                   .header_arg = &h,
                                   .host = host,
                                   .now_s = NOW,
                                   .shape =
                                       strcmp(method, "GET") ? API3_SHAPE_FORM : API3_SHAPE_QUERY,
                                   .method = method,
                                   .v1 = p,
                                   .nonces = n};
    return api3_authenticate(c, &ar, r);
}

static void test_authenticate_v1(void **state) {
    (void)state;
    struct config *c = load();
    struct nonce_cache *n = nonce_cache_new(1000, 1);
    struct api3_auth_result r;
    struct params p;
    assert_non_null(n);
    /* signed for the Host as sent (the Node SDK's endpoint, port included) */
    v1_params(&p, "GET", "gw.example:8443", "sig-key", "11", NOW - 5);
    assert_int_equal(authn_v1(c, n, &p, "GET", "gw.example:8443", &r), 0);
    assert_string_equal(r.app->name, "sig");
    assert_true(r.has_nonce);
    assert_int_equal(r.nonce, 11);
    /* the same Nonce again: a replay */
    assert_int_equal(authn_v1(c, n, &p, "GET", "gw.example:8443", &r), -1);
    assert_string_equal(r.code, "AuthFailure.SignatureExpire");
    assert_non_null(strstr(r.message, "Nonce 11 was already used"));
    params_cleanup(&p);
    /* a wrong key does not spend its Nonce */
    v1_params(&p, "POST", "gw.example", "not-the-key", "12", NOW);
    assert_int_equal(authn_v1(c, n, &p, "POST", "gw.example:8443", &r), -1);
    assert_string_equal(r.code, "AuthFailure.SignatureFailure");
    assert_string_equal(r.claimed->name, "sig");
    params_cleanup(&p);
    /* signed without the port, POST: accepted, Nonce 12 still free */
    v1_params(&p, "POST", "gw.example", "sig-key", "12", NOW);
    assert_int_equal(authn_v1(c, n, &p, "POST", "gw.example:8443", &r), 0);
    /* signed for POST, sent as GET */
    params_cleanup(&p);
    v1_params(&p, "POST", "gw.example", "sig-key", "13", NOW);
    assert_int_equal(authn_v1(c, n, &p, "GET", "gw.example", &r), -1);
    assert_string_equal(r.code, "AuthFailure.SignatureFailure");
    params_cleanup(&p);
    /* old, unknown SecretId, missing Nonce, a Token */
    v1_params(&p, "GET", "gw.example", "sig-key", "14", NOW - 301);
    assert_int_equal(authn_v1(c, n, &p, "GET", "gw.example", &r), -1);
    assert_string_equal(r.code, "AuthFailure.SignatureExpire");
    params_cleanup(&p);
    v1_params(&p, "GET", "gw.example", "sig-key", "15", NOW);
    assert_int_equal(params_set(&p, "SecretId", "AKIDnobody"), 0);
    assert_int_equal(authn_v1(c, n, &p, "GET", "gw.example", &r), -1);
    assert_string_equal(r.code, "AuthFailure.SecretIdNotFound");
    assert_string_equal(r.secret_id, "AKIDnobody");
    assert_int_equal(params_remove(&p, "Nonce"), 1);
    assert_int_equal(authn_v1(c, n, &p, "GET", "gw.example", &r), -1);
    assert_string_equal(r.code, "MissingParameter");
    assert_non_null(strstr(r.message, "Nonce"));
    params_cleanup(&p);
    params_init(&p);
    v1_params(&p, "GET", "gw.example", "sig-key", "16", NOW);
    assert_int_equal(params_remove(&p, "Signature"), 1);
    assert_int_equal(params_adds(&p, "Token", "tmp"), 0);
    assert_int_equal(sign_params(&p, "GET", "gw.example", "/", "sig-key"), 0);
    assert_int_equal(authn_v1(c, n, &p, "GET", "gw.example", &r), -1);
    assert_string_equal(r.code, "AuthFailure.TokenFailure");
    params_cleanup(&p);
    nonce_cache_free(n);
    config_free(c);
}

static void test_authenticate(void **state) {
    struct config *c = load();
    struct api3_auth_result r;
    char auth[512], ts[24];
    struct hdrs h = {.n = 0};

    /* signed for the host without its port (the Node SDK), sent with it; service captcha */
    sign(&h, auth, sizeof auth, "AKIDsig", "sig-key", "captcha", NOW - 10, "gw.example", ts);
    hdr_set(&h, "host", "gw.example:8443");
    assert_int_equal(authn(c, &h, "gw.example:8443", &r), 0);
    assert_string_equal(r.app->name, "sig");
    /* the service an SDK derives from the endpoint 127.0.0.1:PORT */
    sign(&h, auth, sizeof auth, "AKIDsig", "sig-key", "127", NOW, "127.0.0.1:9", ts);
    hdr_set(&h, "host", "127.0.0.1:9");
    assert_int_equal(authn(c, &h, "127.0.0.1:9", &r), 0);
    /* another service */
    sign(&h, auth, sizeof auth, "AKIDsig", "sig-key", "cvm", NOW, "127.0.0.1:9", ts);
    assert_int_equal(authn(c, &h, "127.0.0.1:9", &r), -1);
    assert_string_equal(r.code, "AuthFailure.SignatureFailure");
    assert_non_null(strstr(r.message, "cvm"));
    /* the wrong key */
    sign(&h, auth, sizeof auth, "AKIDsig", "not-the-key", "captcha", NOW, "127.0.0.1:9", ts);
    assert_int_equal(authn(c, &h, "127.0.0.1:9", &r), -1);
    assert_string_equal(r.code, "AuthFailure.SignatureFailure");
    assert_int_equal(r.apierr, APIERR_AUTH_FAILURE);
    assert_string_equal(r.claimed->name, "sig");
    /* signed for another host */
    sign(&h, auth, sizeof auth, "AKIDsig", "sig-key", "captcha", NOW, "evil.example", ts);
    assert_int_equal(authn(c, &h, "127.0.0.1:9", &r), -1);
    assert_string_equal(r.code, "AuthFailure.SignatureFailure");
    /* outside the window (300 s), either way; inside at the edge */
    sign(&h, auth, sizeof auth, "AKIDsig", "sig-key", "captcha", NOW - 301, "127.0.0.1:9", ts);
    assert_int_equal(authn(c, &h, "127.0.0.1:9", &r), -1);
    assert_string_equal(r.code, "AuthFailure.SignatureExpire");
    sign(&h, auth, sizeof auth, "AKIDsig", "sig-key", "captcha", NOW + 301, "127.0.0.1:9", ts);
    assert_int_equal(authn(c, &h, "127.0.0.1:9", &r), -1);
    assert_string_equal(r.code, "AuthFailure.SignatureExpire");
    sign(&h, auth, sizeof auth, "AKIDsig", "sig-key", "captcha", NOW - 300, "127.0.0.1:9", ts);
    assert_int_equal(authn(c, &h, "127.0.0.1:9", &r), 0);
    /* an unknown SecretId: named, for the audit */
    sign(&h, auth, sizeof auth, "AKIDnobody", "sig-key", "captcha", NOW, "127.0.0.1:9", ts);
    assert_int_equal(authn(c, &h, "127.0.0.1:9", &r), -1);
    assert_string_equal(r.code, "AuthFailure.SecretIdNotFound");
    assert_string_equal(r.secret_id, "AKIDnobody");
    assert_null(r.claimed);
    /* X-TC-Timestamp not digits, or missing */
    sign(&h, auth, sizeof auth, "AKIDsig", "sig-key", "captcha", NOW, "127.0.0.1:9", ts);
    hdr_set(&h, "x-tc-timestamp", "12a");
    assert_int_equal(authn(c, &h, "127.0.0.1:9", &r), -1);
    assert_string_equal(r.code, "InvalidParameter");
    assert_int_equal(r.apierr, APIERR_INVALID_PARAMETER);
    hdr_set(&h, "x-tc-timestamp", "");
    assert_int_equal(authn(c, &h, "127.0.0.1:9", &r), -1);
    assert_string_equal(r.code, "MissingParameter");
    /* no Authorization, a garbled one */
    hdr_set(&h, "authorization", "");
    assert_int_equal(authn(c, &h, "127.0.0.1:9", &r), -1);
    assert_string_equal(r.code, "AuthFailure.InvalidAuthorization");
    hdr_set(&h, "authorization", "TC3-HMAC-SHA256 Credential=AKIDsig");
    assert_int_equal(authn(c, &h, "127.0.0.1:9", &r), -1);
    assert_string_equal(r.code, "AuthFailure.InvalidAuthorization");
    /* bearer tokens */
    hdr_set(&h, "authorization", "Bearer tok-secret");
    assert_int_equal(authn(c, &h, "127.0.0.1:9", &r), 0);
    assert_string_equal(r.app->name, "tok");
    assert_true(r.bearer);
    hdr_set(&h, "authorization", "Bearer tok-secreT");
    assert_int_equal(authn(c, &h, "127.0.0.1:9", &r), -1);
    assert_string_equal(r.code, "AuthFailure.InvalidAuthorization");
    /* a Token on a gateway key (permanent): refused by name; an empty one is no Token */
    sign(&h, auth, sizeof auth, "AKIDsig", "sig-key", "captcha", NOW, "127.0.0.1:9", ts);
    hdr_set(&h, "x-tc-token", "");
    assert_int_equal(authn(c, &h, "127.0.0.1:9", &r), 0);
    hdr_set(&h, "x-tc-token", "tmp-token");
    assert_int_equal(authn(c, &h, "127.0.0.1:9", &r), -1);
    assert_string_equal(r.code, "AuthFailure.TokenFailure");
    assert_int_equal(r.apierr, APIERR_AUTH_FAILURE);
    config_free(c);
}

/* The body parsed last: f's strings are borrowed from it. */
static json_t *last_body;

static int validate(const struct config *c, enum v2_action a, const char *text, const char **code,
                    char *err, size_t errlen, struct v2_fields *f, uint32_t *id) {
    json_decref(last_body);
    last_body = json_loads(text, 0, NULL);
    assert_non_null(last_body);
    return api3_validate(c, a, last_body, f, id, code, err, errlen);
}

#define FULL \
    "\"CaptchaType\":9,\"Ticket\":\"t\",\"UserIp\":\"1.2.3.4\",\"Randstr\":\"@r\"," \
    "\"CaptchaAppId\":9,\"AppSecretKey\":\"s\""

static void test_validate(void **state) {
    struct config *c = load();
    struct v2_fields f;
    uint32_t id = 0;
    const char *code = NULL;
    char err[256];
    const enum v2_action R = V3_ACTION_DESCRIBE_CAPTCHA_RESULT;
    const enum v2_action M = V3_ACTION_DESCRIBE_CAPTCHA_MINI_RESULT;
    static const struct {
        enum v2_action a;
        const char *body, *code, *msg;
    } bad[] = {
        {V3_ACTION_DESCRIBE_CAPTCHA_RESULT, "[]", "InvalidParameter", "JSON object"},
        {V3_ACTION_DESCRIBE_CAPTCHA_RESULT, "{" FULL ",\"Foo\":1}", "UnknownParameter",
         "Foo is not a parameter of DescribeCaptchaResult"},
        {V3_ACTION_DESCRIBE_CAPTCHA_MINI_RESULT, "{" FULL "}", "UnknownParameter",
         "Randstr is not a parameter of DescribeCaptchaMiniResult"},
        {V3_ACTION_DESCRIBE_CAPTCHA_RESULT,
         "{\"CaptchaType\":9,\"Ticket\":\"t\",\"UserIp\":\"u\",\"Randstr\":\"r\","
         "\"CaptchaAppId\":\"9\",\"AppSecretKey\":\"s\"}",
         "InvalidParameter", "CaptchaAppId must be an Integer; got a JSON string"},
        {V3_ACTION_DESCRIBE_CAPTCHA_RESULT, "{" FULL ",\"BusinessId\":1.5}", "InvalidParameter",
         "BusinessId must be an Integer; got a JSON real number"},
        {V3_ACTION_DESCRIBE_CAPTCHA_RESULT, "{" FULL ",\"SceneId\":4294967296}",
         "InvalidParameterValue", "SceneId must be 0..4294967295"},
        {V3_ACTION_DESCRIBE_CAPTCHA_RESULT, "{" FULL ",\"Imei\":5}", "InvalidParameter",
         "Imei must be a String"},
        {V3_ACTION_DESCRIBE_CAPTCHA_RESULT,
         "{\"CaptchaType\":9,\"Ticket\":\"t\",\"UserIp\":\"u\",\"CaptchaAppId\":9,"
         "\"AppSecretKey\":\"s\"}",
         "MissingParameter", "Randstr"},
        /* no key from the app, and the gateway holds none for CaptchaAppId 9 */
        {V3_ACTION_DESCRIBE_CAPTCHA_MINI_RESULT,
         "{\"CaptchaType\":9,\"Ticket\":\"t\",\"UserIp\":\"u\",\"CaptchaAppId\":9}",
         "MissingParameter", "AppSecretKey is missing (and the gateway holds no"},
        {V3_ACTION_DESCRIBE_CAPTCHA_RESULT,
         "{\"CaptchaType\":1,\"Ticket\":\"t\",\"UserIp\":\"u\",\"Randstr\":\"r\","
         "\"CaptchaAppId\":9,\"AppSecretKey\":\"s\"}",
         "InvalidParameterValue", "CaptchaType must be 9; got 1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        code = NULL;
        if (validate(c, bad[i].a, bad[i].body, &code, err, sizeof err, &f, &id) != -1)
            fail_msg("case %zu accepted: %s", i, bad[i].body);
        if (strcmp(code, bad[i].code) != 0 || !strstr(err, bad[i].msg))
            fail_msg("case %zu: %s %s; expected %s ...%s...", i, code, err, bad[i].code,
                     bad[i].msg);
    }
    /* the fields the limits, the metrics and the audit read */
    assert_int_equal(validate(c, R,
                              "{" FULL ",\"BusinessId\":77,\"SceneId\":5,\"Imei\":\"im\","
                              "\"MacAddress\":\"ma\",\"NeedGetCaptchaTime\":1}",
                              &code, err, sizeof err, &f, &id),
                     0);
    assert_int_equal(f.action, R);
    assert_true(f.has_business_id && f.business_id == 77);
    assert_true(f.has_scene_id && f.scene_id == 5);
    assert_true(f.has_captcha_type && f.captcha_type == 9);
    assert_string_equal(f.user_ip, "1.2.3.4");
    assert_string_equal(f.imei, "im");
    assert_string_equal(f.mac_address, "ma");
    assert_int_equal(id, 9);
    /* CaptchaAppId 7's key is the gateway's: the app may leave it out */
    assert_int_equal(validate(c, M,
                              "{\"CaptchaType\":9,\"Ticket\":\"t\",\"UserIp\":\"u\","
                              "\"CaptchaAppId\":7}",
                              &code, err, sizeof err, &f, &id),
                     0);
    assert_false(f.has_business_id);
    assert_int_equal(id, 7);
    json_decref(last_body);
    last_body = NULL;
    config_free(c);
}

static void test_authorize_captcha_app(void **state) {
    struct config *c = load();
    char err[128];
    assert_int_equal(api3_authorize_captcha_app(&c->apps[0], 12345, err, sizeof err), 0);
    assert_int_equal(api3_authorize_captcha_app(&c->apps[1], 7, err, sizeof err), 0);
    assert_int_equal(api3_authorize_captcha_app(&c->apps[1], 8, err, sizeof err), -1);
    assert_string_equal(err, "app tok may not use CaptchaAppId 8");
    config_free(c);
}

static char *forward(const struct config *c, const char *text, uint32_t id) {
    json_t *body = json_loads(text, 0, NULL);
    size_t len = 0;
    assert_non_null(body);
    char *out = api3_forward_body(c, body, id, &len);
    json_decref(body);
    assert_non_null(out);
    assert_int_equal(len, strlen(out));
    return out;
}

static void test_forward_body(void **state) {
    struct config *c = load();
    char *s;
    json_t *j;
    /* injected when missing, escaped */
    s = forward(c, "{\"CaptchaType\":9,\"CaptchaAppId\":7}", 7);
    assert_string_equal(s,
                        "{\"CaptchaType\":9,\"CaptchaAppId\":7,\"AppSecretKey\":\"k\\\"ey\\\\7\"}");
    assert_non_null(j = json_loads(s, 0, NULL));
    assert_string_equal(json_string_value(json_object_get(j, "AppSecretKey")), "k\"ey\\7");
    json_decref(j);
    free(s);
    /* "missing": the app's own key stays */
    s = forward(c, "{\"CaptchaAppId\":7,\"AppSecretKey\":\"apps\"}", 7);
    assert_string_equal(s, "{\"CaptchaAppId\":7,\"AppSecretKey\":\"apps\"}");
    free(s);
    /* "always": replaced, once */
    s = forward(c, "{\"AppSecretKey\":\"apps\",\"CaptchaAppId\":8}", 8);
    assert_string_equal(s, "{\"CaptchaAppId\":8,\"AppSecretKey\":\"key8\"}");
    free(s);
    /* a CaptchaAppId the gateway holds nothing for: as sent */
    s = forward(c, "{\"CaptchaAppId\":9}", 9);
    assert_string_equal(s, "{\"CaptchaAppId\":9}");
    free(s);
    config_free(c);
}

static void test_errors_and_classes(void **state) {
    char *s = api3_error_body("AuthFailure.SignatureFailure", "bad \"sig\"", "0123456789abcdef");
    assert_string_equal(s, "{\"Response\":{\"Error\":{\"Code\":\"AuthFailure.SignatureFailure\","
                           "\"Message\":\"bad \\\"sig\\\"\"},\"RequestId\":\"0123456789abcdef\"}}");
    free(s);
    /* a message that is not UTF-8 still gives the shape */
    s = api3_error_body("InvalidParameter", "\xff\xfe", "r");
    assert_non_null(strstr(s, "\"Code\":\"InvalidParameter\""));
    free(s);
    assert_int_equal(api3_code_class("AuthFailure.SecretIdNotFound"), APIERR_AUTH_FAILURE);
    assert_int_equal(api3_code_class("RequestLimitExceeded"), APIERR_LIMIT_EXCEEDED);
    assert_int_equal(api3_code_class("UnauthorizedOperation"), APIERR_ACCESS_DENIED);
    assert_int_equal(api3_code_class("MissingParameter"), APIERR_INVALID_PARAMETER);
    assert_int_equal(api3_code_class("InvalidParameterValue"), APIERR_INVALID_PARAMETER);
    assert_int_equal(api3_code_class("InvalidAction"), APIERR_VERSION);
    assert_int_equal(api3_code_class("ServiceUnavailable"), APIERR_UNAVAILABLE);
    assert_int_equal(api3_code_class("FailedOperation"), APIERR_INTERNAL);
    assert_string_equal(api3_code_name(APIERR_LIMIT_EXCEEDED), "RequestLimitExceeded");
    assert_string_equal(api3_code_name(APIERR_ACCESS_DENIED), "UnauthorizedOperation");
    assert_string_equal(api3_code_name(APIERR_UNAVAILABLE), "ServiceUnavailable");
    /* every gateway code maps to a 3.0 code of the same class */
    static const int codes[] = {APIERR_INVALID_PARAMETER, APIERR_AUTH_FAILURE, APIERR_ACCESS_DENIED,
                                APIERR_LIMIT_EXCEEDED,    APIERR_VERSION,      APIERR_UNAVAILABLE,
                                APIERR_INTERNAL};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        assert_int_equal(api3_code_class(api3_code_name(codes[i])), codes[i]);
    int has_error = -1;
    char desc[48];
    const char *ok = "{\"Response\":{\"CaptchaCode\":1,\"RequestId\":\"x\"}}";
    assert_int_equal(api3_reply_scan(ok, strlen(ok), &has_error, desc, sizeof desc), 0);
    assert_int_equal(has_error, 0);
    const char *e = "{\"Response\":{\"Error\":{\"Code\":\"AuthFailure.SignatureExpire\"}}}";
    assert_int_equal(api3_reply_scan(e, strlen(e), &has_error, desc, sizeof desc), 0);
    assert_int_equal(has_error, 1);
    assert_string_equal(desc, "AuthFailure.SignatureExpire");
    assert_int_equal(api3_reply_scan("{\"code\":0}", 10, &has_error, desc, sizeof desc), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_authenticate),          cmocka_unit_test(test_validate),
        cmocka_unit_test(test_authorize_captcha_app), cmocka_unit_test(test_forward_body),
        cmocka_unit_test(test_errors_and_classes),    cmocka_unit_test(test_authenticate_v1),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
