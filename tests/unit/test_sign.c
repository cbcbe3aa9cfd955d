/* test_sign.c: v2 signing against the official Node SDK's vectors (tests/data/), the string
 * to sign's ordering, '_' and '@' rules, HMAC known answers, and rejection of every tampered
 * input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "capgate/params.h"
#include "capgate/sign.h"
#include "capgate/strbuf.h"

struct vector {
    const char *name, *method, *host, *path, *secret_key, *signature_method, *encoded_params,
        *expected_signature;
};

static json_t *load_vectors(void) {
    json_error_t jerr;
    json_t *root = json_load_file(CAPGATE_TESTDATA_DIR "/v2-signature-vectors.json", 0, &jerr);
    if (!root) fail_msg("cannot load vectors: %s (line %d)", jerr.text, jerr.line);
    json_t *vectors = json_object_get(root, "vectors");
    assert_true(json_is_array(vectors));
    assert_true(json_array_size(vectors) >= 5);
    return root;
}

static void vector_from_json(json_t *v, struct vector *out) {
    assert_int_equal(json_unpack(v, "{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "name", &out->name,
                                 "method", &out->method, "host", &out->host, "path", &out->path,
                                 "secret_key", &out->secret_key, "signature_method",
                                 &out->signature_method, "encoded_params", &out->encoded_params,
                                 "expected_signature", &out->expected_signature),
                     0);
}

static void parse_vector(const struct vector *v, struct params *p) {
    char err[256];
    params_init(p);
    if (params_parse_urlencoded(p, v->encoded_params, strlen(v->encoded_params), err, sizeof err) !=
        0)
        fail_msg("%s: %s", v->name, err);
}

static int verify(const struct params *p, const struct vector *v) {
    return sign_verify(p, v->method, v->host, v->path, v->secret_key);
}

static void check_vector(const struct vector *v) {
    struct params p, resigned;
    char sig[SIGN_B64_MAX];
    parse_vector(v, &p);

    /* As received: accepted. */
    assert_int_equal(verify(&p, v), 0);
    assert_string_equal(params_get(&p, "Signature"), v->expected_signature);

    /* Recomputed from the string to sign. */
    char *text = sign_string_to_sign(v->method, v->host, v->path, &p);
    assert_non_null(text);
    assert_null(strstr(text, "Signature="));
    assert_int_equal(sign_compute(sign_method_parse(params_get(&p, "SignatureMethod")),
                                  v->secret_key, strlen(v->secret_key), text, strlen(text), sig),
                     0);
    assert_string_equal(sig, v->expected_signature);
    assert_int_equal(sign_method_parse(params_get(&p, "SignatureMethod")),
                     sign_method_parse(v->signature_method));
    free(text);

    /* Re-signed from scratch: the same Signature. */
    assert_int_equal(params_copy(&resigned, &p), 0);
    assert_int_equal(params_remove(&resigned, "Signature"), 1);
    assert_int_equal(sign_params(&resigned, v->method, v->host, v->path, v->secret_key), 0);
    assert_string_equal(params_get(&resigned, "Signature"), v->expected_signature);
    params_cleanup(&resigned);

    /* A wrong key. */
    assert_int_equal(
        sign_verify(&p, v->method, v->host, v->path, "Gu5t9xGARNpq86cd98joQYCN3EXAMPLF"), -1);
    assert_int_equal(sign_verify(&p, v->method, v->host, v->path, ""), -1);

    /* A changed value. */
    struct params changed;
    assert_int_equal(params_copy(&changed, &p), 0);
    assert_int_equal(params_set(&changed, "Nonce", "1"), 0);
    assert_int_equal(verify(&changed, v), -1);
    params_cleanup(&changed);
    assert_int_equal(params_copy(&changed, &p), 0);
    assert_int_equal(params_set(&changed, "captchaType", "2"), 0);
    assert_int_equal(verify(&changed, v), -1);
    params_cleanup(&changed);
    /* An added parameter is signed too. */
    assert_int_equal(params_copy(&changed, &p), 0);
    assert_int_equal(params_adds(&changed, "extra", ""), 0);
    assert_int_equal(verify(&changed, v), -1);
    params_cleanup(&changed);

    /* A changed host: the port is part of it. */
    char host[256];
    const char *colon = strchr(v->host, ':');
    if (colon)
        snprintf(host, sizeof host, "%.*s", (int)(colon - v->host), v->host);
    else
        snprintf(host, sizeof host, "%s:443", v->host);
    assert_int_equal(sign_verify(&p, v->method, host, v->path, v->secret_key), -1);
    assert_int_equal(sign_verify(&p, v->method, "csec.api.qcloud.co", v->path, v->secret_key), -1);

    /* A changed method and path. */
    const char *other = strcmp(v->method, "GET") == 0 ? "POST" : "GET";
    assert_int_equal(sign_verify(&p, other, v->host, v->path, v->secret_key), -1);
    assert_int_equal(sign_verify(&p, v->method, v->host, "/v2/index.php/", v->secret_key), -1);

    /* A changed or missing Signature. */
    assert_int_equal(params_copy(&changed, &p), 0);
    char bad[SIGN_B64_MAX];
    snprintf(bad, sizeof bad, "%s", v->expected_signature);
    bad[0] = bad[0] == 'A' ? 'B' : 'A';
    params_set(&changed, "Signature", bad);
    assert_int_equal(verify(&changed, v), -1);
    bad[strlen(bad) - 1] = '\0'; /* shorter */
    params_set(&changed, "Signature", bad);
    assert_int_equal(verify(&changed, v), -1);
    params_set(&changed, "Signature", "");
    assert_int_equal(verify(&changed, v), -1);
    params_remove(&changed, "Signature");
    assert_int_equal(verify(&changed, v), -1);
    params_cleanup(&changed);

    params_cleanup(&p);
}

static void test_vectors(void **state) {
    json_t *root = load_vectors();
    json_t *vectors = json_object_get(root, "vectors");
    size_t i;
    json_t *item;
    json_array_foreach(vectors, i, item) {
        struct vector v;
        vector_from_json(item, &v);
        check_vector(&v);
    }
    json_decref(root);
}

/* The same parameters sent as multipart/form-data (the Java SDK) verify the same way. */
static void test_vectors_multipart(void **state) {
    json_t *root = load_vectors();
    json_t *vectors = json_object_get(root, "vectors");
    size_t i;
    json_t *item;
    json_array_foreach(vectors, i, item) {
        struct vector v;
        struct params url, multi;
        struct strbuf body;
        char err[256];
        vector_from_json(item, &v);
        parse_vector(&v, &url);

        strbuf_init(&body);
        for (size_t k = 0; k < url.count; k++)
            strbuf_appendf(&body,
                           "\r\n--capgateBoundary7d9\r\nContent-Disposition: form-data; "
                           "name=\"%s\"\r\n\r\n%s",
                           url.items[k].name, url.items[k].value);
        strbuf_appends(&body, "\r\n--capgateBoundary7d9--\r\n");
        params_init(&multi);
        if (params_parse_body(&multi, "multipart/form-data; boundary=capgateBoundary7d9", body.s,
                              body.len, err, sizeof err) != 0)
            fail_msg("%s: %s", v.name, err);
        assert_int_equal(multi.count, url.count);
        assert_int_equal(verify(&multi, &v), 0);

        char *a = sign_string_to_sign(v.method, v.host, v.path, &url);
        char *b = sign_string_to_sign(v.method, v.host, v.path, &multi);
        assert_string_equal(a, b);
        free(a);
        free(b);
        /* Tampering is caught in this form too. */
        params_set(&multi, "Region", "bj");
        assert_int_equal(verify(&multi, &v), -1);

        params_cleanup(&multi);
        params_cleanup(&url);
        strbuf_cleanup(&body);
    }
    json_decref(root);
}

static void test_string_to_sign_rules(void **state) {
    struct params p;
    params_init(&p);
    params_adds(&p, "a_b", "1");
    params_adds(&p, "_x", "lead");
    params_adds(&p, "a.c", "2");
    params_adds(&p, "Signature", "ignored");
    params_adds(&p, "B", "x y&z=\xE5\xBC\xA0");
    char *text = sign_string_to_sign("GET", "h:8080", "/v2/index.php", &p);
    /* Ordered by the name as sent ('.' 0x2e < '_' 0x5f), then '_' past position 0 written '.';
     * values raw. */
    assert_string_equal(text, "GETh:8080/v2/index.php?B=x y&z=\xE5\xBC\xA0&_x=lead&a.c=2&a.b=1");
    free(text);
    /* The caller's order is untouched. */
    assert_string_equal(p.items[0].name, "a_b");
    assert_string_equal(p.items[4].name, "B");
    params_cleanup(&p);

    params_init(&p);
    text = sign_string_to_sign("POST", "h", "/", &p);
    assert_string_equal(text, "POSTh/?");
    free(text);
}

static void test_string_to_sign_many_params(void **state) {
    struct params p;
    char name[16];
    params_init(&p);
    for (int i = 99; i >= 0; i--) {
        snprintf(name, sizeof name, "k%02d", i);
        params_adds(&p, name, "v");
    }
    char *text = sign_string_to_sign("GET", "h", "/", &p);
    assert_non_null(text);
    assert_memory_equal(text, "GETh/?k00=v&k01=v&k02=v", 23);
    assert_non_null(strstr(text, "&k98=v&k99=v"));
    assert_int_equal(strlen(text), 6 + 100 * 5 + 99);
    free(text);
    params_cleanup(&p);
}

static void test_hmac_known_answers(void **state) {
    static const char data[] = "what do ya want for nothing?";
    char out[SIGN_B64_MAX];
    /* RFC 2202 and RFC 4231 test case 2, base64. */
    assert_int_equal(sign_compute(SIGN_HMAC_SHA1, "Jefe", 4, data, strlen(data), out), 0);
    assert_string_equal(out, "7/zfauXrL6LSdBbV8YTfnCWafHk=");
    assert_int_equal(sign_compute(SIGN_HMAC_SHA256, "Jefe", 4, data, strlen(data), out), 0);
    assert_string_equal(out, "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM=");
    assert_int_equal(strlen(out), 44);
    assert_int_equal(sign_compute(SIGN_HMAC_SHA1, "", 0, "", 0, out), 0);
    assert_string_equal(out, "+9sdGxiqbAgyS31ktx+3Y3BpDh0=");
}

static void test_method_names(void **state) {
    assert_int_equal(sign_method_parse("HmacSHA256"), SIGN_HMAC_SHA256);
    assert_int_equal(sign_method_parse("HmacSHA1"), SIGN_HMAC_SHA1);
    assert_int_equal(sign_method_parse(NULL), SIGN_HMAC_SHA1);
    assert_int_equal(sign_method_parse("hmacsha256"), SIGN_HMAC_SHA1);
    assert_int_equal(sign_method_parse(""), SIGN_HMAC_SHA1);
    assert_string_equal(sign_method_name(SIGN_HMAC_SHA1), "HmacSHA1");
    assert_string_equal(sign_method_name(SIGN_HMAC_SHA256), "HmacSHA256");
}

static void test_sign_then_verify(void **state) {
    struct params p;
    params_init(&p);
    params_adds(&p, "Action", "CaptchaCheck");
    params_adds(&p, "SignatureMethod", "HmacSHA256");
    assert_int_equal(sign_params(&p, "POST", "gw.internal:8080", "/v2/index.php", "k"), 0);
    assert_int_equal(params_find(&p, "Signature")->value_len, 44);
    assert_int_equal(sign_verify(&p, "POST", "gw.internal:8080", "/v2/index.php", "k"), 0);
    /* Signing again replaces the Signature rather than adding a second one. */
    assert_int_equal(sign_params(&p, "POST", "gw.internal:8080", "/v2/index.php", "k"), 0);
    assert_int_equal(p.count, 3);
    /* The method comes from SignatureMethod, so downgrading it breaks the signature. */
    params_set(&p, "SignatureMethod", "HmacSHA1");
    assert_int_equal(sign_verify(&p, "POST", "gw.internal:8080", "/v2/index.php", "k"), -1);
    params_cleanup(&p);
}

/* The per-thread keyed contexts: more keys than slots, both methods, an empty and a long key,
 * each computed again after the others; every result equals one-shot HMAC. */
static void test_compute_many_keys(void **state) {
    char keys[12][160];
    size_t lens[12];
    for (int i = 0; i < 12; i++) {
        memset(keys[i], 'a' + i, sizeof keys[i]);
        lens[i] = i == 0 ? 0 : i == 11 ? sizeof keys[i] : (size_t)(8 + i);
    }
    static const char data[] = "GETcsec.api.qcloud.com/v2/index.php?Action=CaptchaIframeQuery";
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 12; i++) {
            for (int m = 0; m < 2; m++) {
                enum sign_method method = m ? SIGN_HMAC_SHA256 : SIGN_HMAC_SHA1;
                unsigned char md[EVP_MAX_MD_SIZE];
                unsigned int md_len = 0;
                char want[SIGN_B64_MAX], got[SIGN_B64_MAX];
                assert_non_null(HMAC(m ? EVP_sha256() : EVP_sha1(), keys[i], (int)lens[i],
                                     (const unsigned char *)data, sizeof data - 1, md, &md_len));
                EVP_EncodeBlock((unsigned char *)want, md, (int)md_len);
                assert_int_equal(sign_compute(method, keys[i], lens[i], data, sizeof data - 1, got),
                                 0);
                assert_string_equal(got, want);
            }
        }
    }
}

/* Precomputed key states (sign_key_new): RFC 2202 / RFC 4231 answers, and equality with
 * one-shot HMAC for keys shorter than, exactly, and longer than the 64-byte block (a longer key
 * is hashed first), messages of 0 to 300 bytes (across block and padding boundaries), both
 * methods; sign_params_key and sign_verify_key agree with the string-key forms. */
static void test_key_states(void **state) {
    static const char data[] = "what do ya want for nothing?";
    char out[SIGN_B64_MAX];
    struct sign_key *jefe = sign_key_new("Jefe", 4);
    assert_non_null(jefe);
    assert_int_equal(sign_compute_key(jefe, SIGN_HMAC_SHA1, data, strlen(data), out), 0);
    assert_string_equal(out, "7/zfauXrL6LSdBbV8YTfnCWafHk=");
    assert_int_equal(sign_compute_key(jefe, SIGN_HMAC_SHA256, data, strlen(data), out), 0);
    assert_string_equal(out, "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM=");
    sign_key_free(jefe);
    /* RFC 4231 test case 6 (60e43159...7f54 in hex): a 131-byte key of 0xaa. */
    unsigned char aa[131];
    memset(aa, 0xaa, sizeof aa);
    static const char big[] = "Test Using Larger Than Block-Size Key - Hash Key First";
    struct sign_key *k131 = sign_key_new((const char *)aa, sizeof aa);
    assert_non_null(k131);
    assert_int_equal(sign_compute_key(k131, SIGN_HMAC_SHA256, big, strlen(big), out), 0);
    assert_string_equal(out, "YOQxWR7gtn8Niiaqy/W3f44LxiE3KMUUBUYEDw7jf1Q=");
    sign_key_free(k131);
    sign_key_free(NULL);

    char key[200], msg[300];
    for (size_t i = 0; i < sizeof msg; i++) msg[i] = (char)('!' + i % 90);
    static const size_t key_lens[] = {0, 1, 20, 63, 64, 65, 128, 200};
    for (size_t ki = 0; ki < sizeof key_lens / sizeof key_lens[0]; ki++) {
        size_t kl = key_lens[ki];
        for (size_t i = 0; i < kl; i++) key[i] = (char)(0x20 + (i * 7 + kl) % 90);
        struct sign_key *k = sign_key_new(key, kl);
        assert_non_null(k);
        for (size_t ml = 0; ml <= sizeof msg; ml += ml < 70 ? 1 : 23) {
            for (int m = 0; m < 2; m++) {
                unsigned char md[EVP_MAX_MD_SIZE];
                unsigned int md_len = 0;
                char want[SIGN_B64_MAX], got[SIGN_B64_MAX], cached[SIGN_B64_MAX];
                assert_non_null(HMAC(m ? EVP_sha256() : EVP_sha1(), kl ? key : "", (int)kl,
                                     (const unsigned char *)msg, ml, md, &md_len));
                EVP_EncodeBlock((unsigned char *)want, md, (int)md_len);
                enum sign_method method = m ? SIGN_HMAC_SHA256 : SIGN_HMAC_SHA1;
                assert_int_equal(sign_compute_key(k, method, msg, ml, got), 0);
                assert_string_equal(got, want);
                assert_int_equal(sign_compute(method, key, kl, msg, ml, cached), 0);
                assert_string_equal(cached, want);
            }
        }
        sign_key_free(k);
    }

    struct params p, q;
    struct sign_key *k = sign_key_new("k", 1);
    assert_non_null(k);
    params_init(&p);
    params_adds(&p, "Action", "CaptchaCheck");
    params_adds(&p, "SignatureMethod", "HmacSHA256");
    assert_int_equal(params_copy(&q, &p), 0);
    assert_int_equal(sign_params_key(&p, "GET", "gw:1", "/v2/index.php", k), 0);
    assert_int_equal(sign_params(&q, "GET", "gw:1", "/v2/index.php", "k"), 0);
    assert_string_equal(params_get(&p, "Signature"), params_get(&q, "Signature"));
    assert_int_equal(sign_verify_key(&p, "GET", "gw:1", "/v2/index.php", k), 0);
    assert_int_equal(sign_verify_key(&p, "GET", "gw:2", "/v2/index.php", k), -1);
    sign_key_free(k);
    k = sign_key_new("K", 1);
    assert_int_equal(sign_verify_key(&p, "GET", "gw:1", "/v2/index.php", k), -1);
    sign_key_free(k);
    params_cleanup(&p);
    params_cleanup(&q);
}

/* ---- the '@' rule ----
 * Inline vectors, computed outside the code under test with openssl from the string to sign
 * that the SDKs' rule gives (QcloudApi/qcloudapi-sdk-python QcloudApi/common/sign.py, -php
 * Common/Sign.php, -java Common/Sign.java, CFETeam/qcloudapi-sdk index.js: with POST a value
 * starting with '@' is left out; with GET nothing is), e.g.
 *   printf '%s' "$STRING" | openssl dgst -sha1 -hmac testkey-0123456789 -binary | base64 */
#define AT_KEY "testkey-0123456789"
#define AT_HOST "csec.api.qcloud.com"
#define AT_PATH "/v2/index.php"
#define AT_SORTED_HEAD \
    "Action=CaptchaCheck&Nonce=1234&SecretId=AKIDtest&Timestamp=1700000000" \
    "&captchaType=9"
#define AT_SORTED_TAIL "ticket=t03xyz&userIp=127.0.0.1"
/* POST, randstr left out */
#define AT_POST_STRING "POST" AT_HOST AT_PATH "?" AT_SORTED_HEAD "&" AT_SORTED_TAIL
#define AT_POST_SIG "HQg+OnKwLQFmcgmxWlfGkM4R8fM="
/* POST over every parameter (the Node SDK with a Version) */
#define AT_POST_FULL_SIG "ETi+8wITqtYyjjPLBGmYLZzItMI="
/* GET, randstr signed */
#define AT_GET_STRING "GET" AT_HOST AT_PATH "?" AT_SORTED_HEAD "&randstr=@abc&" AT_SORTED_TAIL
#define AT_GET_SIG "BEe4VOL3R/iVweEGIxlT5zhwhaE="
/* GET with randstr left out: what no SDK makes */
#define AT_GET_SHORT_SIG "NIyLSVJe4//IaiV8BuVwKlB8JYY="

static void at_params(struct params *p, const char *signature) {
    params_init(p);
    /* Not in order: the rule is applied on the sorted index, the list keeps its order. */
    params_adds(p, "ticket", "t03xyz");
    params_adds(p, "randstr", "@abc");
    params_adds(p, "Action", "CaptchaCheck");
    params_adds(p, "userIp", "127.0.0.1");
    params_adds(p, "Nonce", "1234");
    params_adds(p, "captchaType", "9");
    params_adds(p, "SecretId", "AKIDtest");
    params_adds(p, "Timestamp", "1700000000");
    if (signature) params_adds(p, "Signature", signature);
}

static void test_at_rule_string_to_sign(void **state) {
    struct params p;
    at_params(&p, "x");
    char *text = sign_string_to_sign("POST", AT_HOST, AT_PATH, &p);
    assert_string_equal(text, AT_POST_STRING);
    free(text);
    text = sign_string_to_sign("GET", AT_HOST, AT_PATH, &p);
    assert_string_equal(text, AT_GET_STRING);
    free(text);
    /* The SDKs compare the method in upper case; "post" is not POST. */
    text = sign_string_to_sign("post", AT_HOST, AT_PATH, &p);
    assert_non_null(strstr(text, "&randstr=@abc&"));
    free(text);
    assert_int_equal(sign_skips_at("POST"), 1);
    assert_int_equal(sign_skips_at("GET"), 0);
    assert_int_equal(sign_skips_at(NULL), 0);
    params_cleanup(&p);

    /* Only a leading '@' counts; an empty value and a lone '@' are told apart; SHA-256 too. */
    params_init(&p);
    params_adds(&p, "userIp", "::1");
    params_adds(&p, "mail", "a@b");
    params_adds(&p, "empty", "");
    params_adds(&p, "at", "@");
    params_adds(&p, "file", "@/etc/passwd");
    params_adds(&p, "Action", "CaptchaCheck");
    params_adds(&p, "Nonce", "99");
    params_adds(&p, "SecretId", "AKIDtest");
    params_adds(&p, "SignatureMethod", "HmacSHA256");
    params_adds(&p, "Timestamp", "1700000001");
    params_adds(&p, "captchaType", "9");
    params_adds(&p, "ticket", "t03xyz");
    text = sign_string_to_sign("POST", AT_HOST, AT_PATH, &p);
    assert_string_equal(text, "POST" AT_HOST AT_PATH "?Action=CaptchaCheck&Nonce=99"
                              "&SecretId=AKIDtest&SignatureMethod=HmacSHA256"
                              "&Timestamp=1700000001&captchaType=9&empty=&mail=a@b"
                              "&ticket=t03xyz&userIp=::1");
    free(text);
    assert_int_equal(sign_params(&p, "POST", AT_HOST, AT_PATH, AT_KEY), 0);
    assert_string_equal(params_get(&p, "Signature"),
                        "+fmX8t/34z4u0Xcrxw0S/hz9GRqLka4jnnSbddQYFLA=");
    /* Still in the list: the value is sent, only not signed. */
    assert_string_equal(params_get(&p, "file"), "@/etc/passwd");
    assert_string_equal(params_get(&p, "at"), "@");
    params_cleanup(&p);
}

static void test_at_rule_sign_and_verify(void **state) {
    struct params p;

    /* Signing a POST leaves randstr out of the string and in the parameters. */
    at_params(&p, NULL);
    assert_int_equal(sign_params(&p, "POST", AT_HOST, AT_PATH, AT_KEY), 0);
    assert_string_equal(params_get(&p, "Signature"), AT_POST_SIG);
    assert_string_equal(params_get(&p, "randstr"), "@abc");
    assert_int_equal(sign_params(&p, "GET", AT_HOST, AT_PATH, AT_KEY), 0);
    assert_string_equal(params_get(&p, "Signature"), AT_GET_SIG);
    params_cleanup(&p);

    /* POST: the SDKs' form verifies, and the '@' value is not covered by it. */
    at_params(&p, AT_POST_SIG);
    assert_int_equal(sign_verify(&p, "POST", AT_HOST, AT_PATH, AT_KEY), 0);
    params_set(&p, "randstr", "@zzz");
    assert_int_equal(sign_verify(&p, "POST", AT_HOST, AT_PATH, AT_KEY), 0);
    /* ...but every other parameter is, and a value no longer starting with '@' is signed. */
    params_set(&p, "randstr", "abc");
    assert_int_equal(sign_verify(&p, "POST", AT_HOST, AT_PATH, AT_KEY), -1);
    params_set(&p, "randstr", "@abc");
    params_set(&p, "ticket", "t03xyy");
    assert_int_equal(sign_verify(&p, "POST", AT_HOST, AT_PATH, AT_KEY), -1);
    params_cleanup(&p);
    /* The same signature is not a GET's. */
    at_params(&p, AT_POST_SIG);
    assert_int_equal(sign_verify(&p, "GET", AT_HOST, AT_PATH, AT_KEY), -1);
    assert_int_equal(sign_verify(&p, "POST", AT_HOST, AT_PATH, "wrong-key"), -1);
    params_cleanup(&p);

    /* POST signed over every parameter (Node SDK with a Version) verifies, and then the '@'
     * value is covered. */
    at_params(&p, AT_POST_FULL_SIG);
    assert_int_equal(sign_verify(&p, "POST", AT_HOST, AT_PATH, AT_KEY), 0);
    params_set(&p, "randstr", "@zzz");
    assert_int_equal(sign_verify(&p, "POST", AT_HOST, AT_PATH, AT_KEY), -1);
    params_cleanup(&p);

    /* GET: only the form over every parameter. */
    at_params(&p, AT_GET_SIG);
    assert_int_equal(sign_verify(&p, "GET", AT_HOST, AT_PATH, AT_KEY), 0);
    params_set(&p, "randstr", "@zzz");
    assert_int_equal(sign_verify(&p, "GET", AT_HOST, AT_PATH, AT_KEY), -1);
    params_cleanup(&p);
    at_params(&p, AT_GET_SHORT_SIG);
    assert_int_equal(sign_verify(&p, "GET", AT_HOST, AT_PATH, AT_KEY), -1);
    params_cleanup(&p);
}

/* ---- the SDKs' spellings of a name with '_' (common/sign.c enum name_form) ----
 * Signed outside the code under test, as above, from these strings (GET, key AT_KEY):
 *   PHP/Node/docs: sorted as sent, '_' past the first byte to '.'
 *     ...?Action=CaptchaCheck&Nonce=7&SecretId=AKIDtest&Timestamp=1700000000&_lead=2
 *        &userIp=1.2.3.4&user.x=1
 *   Java: sorted as sent, every '_' to '.'
 *     ...&Timestamp=1700000000&.lead=2&userIp=1.2.3.4&user.x=1
 *   Python 2.0.15: every '_' to '.', then sorted
 *     ...?.lead=2&Action=CaptchaCheck&Nonce=7&SecretId=AKIDtest&Timestamp=1700000000&user.x=1
 *        &userIp=1.2.3.4 */
#define NAMES_SIG_SENT "bi1t7juApPAaNOSmODM5F49VH1Q="
#define NAMES_SIG_JAVA "Ckj7+54bCORWEI7AuJI1IRuTtc4="
#define NAMES_SIG_PYTHON "wjw2AOrErfVjv/wBSvEh3x9QwEk="

static void names_params(struct params *p, const char *signature) {
    params_init(p);
    params_adds(p, "user_x", "1");
    params_adds(p, "Action", "CaptchaCheck");
    params_adds(p, "userIp", "1.2.3.4");
    params_adds(p, "_lead", "2");
    params_adds(p, "Nonce", "7");
    params_adds(p, "SecretId", "AKIDtest");
    params_adds(p, "Timestamp", "1700000000");
    params_adds(p, "Signature", signature);
}

static void test_underscore_name_forms(void **state) {
    const char *ok[] = {NAMES_SIG_SENT, NAMES_SIG_JAVA, NAMES_SIG_PYTHON};
    struct params p;
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        names_params(&p, ok[i]);
        assert_int_equal(sign_verify(&p, "GET", AT_HOST, AT_PATH, AT_KEY), 0);
        /* every form still covers every value */
        params_set(&p, "user_x", "2");
        assert_int_equal(sign_verify(&p, "GET", AT_HOST, AT_PATH, AT_KEY), -1);
        params_set(&p, "user_x", "1");
        params_set(&p, "_lead", "3");
        assert_int_equal(sign_verify(&p, "GET", AT_HOST, AT_PATH, AT_KEY), -1);
        params_cleanup(&p);
    }
    /* The gateway signs in the first form only. */
    names_params(&p, "x");
    assert_int_equal(sign_params(&p, "GET", AT_HOST, AT_PATH, AT_KEY), 0);
    assert_string_equal(params_get(&p, "Signature"), NAMES_SIG_SENT);
    params_cleanup(&p);
    /* Without a '_' in any name there is one form: a Python-order signature of other names is
     * not accepted by accident. */
    at_params(&p, NAMES_SIG_PYTHON);
    assert_int_equal(sign_verify(&p, "GET", AT_HOST, AT_PATH, AT_KEY), -1);
    params_cleanup(&p);
}

/* The string to sign is built on the stack up to 2 KB and malloc'd beyond: signatures on both
 * sides of that size equal the HMAC of sign_string_to_sign's string, and verify. */
static void test_sign_around_the_stack_buffer(void **state) {
    static char value[2200];
    struct sign_key *k = sign_key_new("key", 3);
    assert_non_null(k);
    memset(value, 'v', sizeof value - 1);
    for (size_t len = 1900; len <= 2100; len += 7) {
        struct params p;
        params_init(&p);
        assert_int_equal(params_adds(&p, "Action", "CaptchaIframeQuery"), 0);
        assert_int_equal(params_add(&p, "uid", 3, value, len), 0);
        assert_int_equal(params_adds(&p, "SignatureMethod", "HmacSHA256"), 0);
        char *text = sign_string_to_sign("GET", "h.example", "/v2/index.php", &p);
        assert_non_null(text);
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned md_len = 0;
        char want[SIGN_B64_MAX];
        assert_non_null(
            HMAC(EVP_sha256(), "key", 3, (const unsigned char *)text, strlen(text), md, &md_len));
        EVP_EncodeBlock((unsigned char *)want, md, (int)md_len);
        free(text);
        assert_int_equal(sign_params_key(&p, "GET", "h.example", "/v2/index.php", k), 0);
        assert_string_equal(params_get(&p, "Signature"), want);
        assert_int_equal(sign_verify_key(&p, "GET", "h.example", "/v2/index.php", k), 0);
        params_cleanup(&p);
    }
    sign_key_free(k);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_vectors_multipart),
        cmocka_unit_test(test_string_to_sign_rules),
        cmocka_unit_test(test_string_to_sign_many_params),
        cmocka_unit_test(test_hmac_known_answers),
        cmocka_unit_test(test_method_names),
        cmocka_unit_test(test_sign_then_verify),
        cmocka_unit_test(test_compute_many_keys),
        cmocka_unit_test(test_key_states),
        cmocka_unit_test(test_sign_around_the_stack_buffer),
        cmocka_unit_test(test_at_rule_string_to_sign),
        cmocka_unit_test(test_underscore_name_forms),
        cmocka_unit_test(test_at_rule_sign_and_verify),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
