/* test_auth.c: app authentication in both modes, every refusal with its code and message, the
 * order of the checks, and that a Nonce is recorded only after a request passed. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "auth.h"
#include "capgate/params.h"
#include "capgate/sign.h"
#include "config.h"
#include "nonce.h"

#define NOW 1700000000ULL
#define HOST "127.0.0.1:8080"
#define PATH "/v2/index.php"

static const char *config_text =
    "{\"upstream\": {\"url\": \"https://127.0.0.1:9443/v2/index.php\", \"secret_id\": \"AKIDreal\","
    " \"secret_key\": \"real-key\"},"
    " \"auth\": {\"timestamp_window_s\": 300},"
    " \"apps\": ["
    "  {\"name\": \"shop\", \"auth\": \"signature\", \"secret_id\": \"AKIDshop\", \"secret_key\": "
    "\"shop-key\"},"
    "  {\"name\": \"batch\", \"auth\": \"token\", \"token\": \"batch-token-1234\"}"
    " ]}";

struct fixture {
    struct config *config;
    struct nonce_cache *nonces;
    struct params p;
};

static int setup(void **state) {
    static struct fixture f;
    char err[512];
    if (config_load_string(config_text, "test.json", &f.config, err, sizeof(err)) != 0) {
        fprintf(stderr, "config: %s\n", err);
        return -1;
    }
    f.nonces = nonce_cache_new(1000, 4);
    params_init(&f.p);
    *state = &f;
    return 0;
}

static int teardown(void **state) {
    struct fixture *f = *state;
    params_cleanup(&f->p);
    nonce_cache_free(f->nonces);
    config_free(f->config);
    return 0;
}

/* A signed CaptchaIframeQuery from AKIDshop (or secret_id) with the given key, Timestamp, Nonce. */
static void signed_params(struct params *p, const char *secret_id, const char *key, uint64_t ts,
                          const char *nonce) {
    char tsbuf[32];
    params_cleanup(p);
    params_init(p);
    snprintf(tsbuf, sizeof(tsbuf), "%llu", (unsigned long long)ts);
    assert_int_equal(params_adds(p, "Action", "CaptchaIframeQuery"), 0);
    assert_int_equal(params_adds(p, "SecretId", secret_id), 0);
    assert_int_equal(params_adds(p, "Timestamp", tsbuf), 0);
    assert_int_equal(params_adds(p, "Nonce", nonce), 0);
    assert_int_equal(params_adds(p, "Region", "gz"), 0);
    assert_int_equal(params_adds(p, "captchaType", "1"), 0);
    assert_int_equal(sign_params(p, "GET", HOST, PATH, key), 0);
}

static int run(struct fixture *f, const char *authorization, struct auth_result *r) {
    struct auth_request req = {.params = &f->p,
                               .authorization = authorization,
                               .method = "GET",
                               .host = HOST,
                               .path = PATH,
                               .now_s = NOW};
    return auth_authenticate(f->config, f->nonces, &req, r);
}

static void test_signature_ok_then_replay(void **state) {
    struct fixture *f = *state;
    struct auth_result r;
    signed_params(&f->p, "AKIDshop", "shop-key", NOW - 10, "18446744073709551615");
    assert_int_equal(run(f, NULL, &r), 0);
    assert_int_equal(r.code, 0);
    assert_string_equal(r.app->name, "shop");
    assert_int_equal(r.token, 0);
    /* the Nonce goes on to the limit stage's claim across instances */
    assert_int_equal(r.has_nonce, 1);
    assert_true(r.nonce == UINT64_MAX);
    /* the same request again is a replay */
    assert_int_equal(run(f, NULL, &r), -1);
    assert_int_equal(r.code, 4500);
    assert_non_null(strstr(r.message, "Nonce"));
    assert_non_null(strstr(r.message, "already used"));
}

static void test_signature_refusals(void **state) {
    struct fixture *f = *state;
    struct auth_result r;

    signed_params(&f->p, "AKIDshop", "wrong-key", NOW, "1");
    assert_int_equal(run(f, NULL, &r), -1);
    assert_int_equal(r.code, 4100);
    assert_null(r.app);
    /* who failed: the app the SecretId names (for the audit), though it is not authenticated */
    assert_non_null(r.claimed);
    assert_string_equal(r.claimed->name, "shop");
    /* a refused signature does not burn the Nonce */
    signed_params(&f->p, "AKIDshop", "shop-key", NOW, "1");
    assert_int_equal(run(f, NULL, &r), 0);

    signed_params(&f->p, "AKIDnobody", "shop-key", NOW, "2");
    assert_int_equal(run(f, NULL, &r), -1);
    assert_int_equal(r.code, 4100);
    assert_non_null(strstr(r.message, "SecretId"));
    assert_null(r.claimed);
    assert_int_equal(r.bearer, 0);

    signed_params(&f->p, "AKIDshop", "shop-key", NOW - 301, "3");
    assert_int_equal(run(f, NULL, &r), -1);
    assert_int_equal(r.code, 4500);
    assert_string_equal(r.claimed->name, "shop");
    assert_non_null(strstr(r.message, "Timestamp"));
    assert_non_null(strstr(r.message, "outside"));
    signed_params(&f->p, "AKIDshop", "shop-key", NOW + 301, "3");
    assert_int_equal(run(f, NULL, &r), -1);
    assert_int_equal(r.code, 4500);
    signed_params(&f->p, "AKIDshop", "shop-key", NOW + 300, "3");
    assert_int_equal(run(f, NULL, &r), 0);

    /* the Host is part of what was signed */
    signed_params(&f->p, "AKIDshop", "shop-key", NOW, "4");
    struct auth_request req = {
        .params = &f->p, .method = "GET", .host = "127.0.0.1:9999", .path = PATH, .now_s = NOW};
    assert_int_equal(auth_authenticate(f->config, f->nonces, &req, &r), -1);
    assert_int_equal(r.code, 4100);
    /* and the method */
    req.host = HOST;
    req.method = "POST";
    assert_int_equal(auth_authenticate(f->config, f->nonces, &req, &r), -1);
    assert_int_equal(r.code, 4100);

    /* missing public parameters are 4000, before anything else */
    assert_int_equal(params_remove(&f->p, "Nonce"), 1);
    assert_int_equal(run(f, NULL, &r), -1);
    assert_int_equal(r.code, 4000);
    assert_non_null(strstr(r.message, "Nonce"));
    assert_string_equal(r.claimed->name, "shop");
}

static void test_token(void **state) {
    struct fixture *f = *state;
    struct auth_result r;
    params_cleanup(&f->p);
    params_init(&f->p);
    assert_int_equal(params_adds(&f->p, "Action", "CaptchaIframeQuery"), 0);
    assert_int_equal(run(f, "Bearer batch-token-1234", &r), 0);
    assert_string_equal(r.app->name, "batch");
    assert_int_equal(r.token, 1);
    assert_int_equal(r.has_nonce, 0);
    assert_int_equal(run(f, "bearer   batch-token-1234  ", &r), 0);
    assert_int_equal(run(f, "Bearer batch-token-123", &r), -1);
    assert_int_equal(r.code, 4100);
    assert_int_equal(r.bearer, 1);
    assert_null(r.claimed);
    assert_int_equal(run(f, "Bearer ", &r), -1);
    assert_int_equal(r.code, 4100);
    /* a signature app's key is not a token */
    assert_int_equal(run(f, "Bearer shop-key", &r), -1);
    assert_int_equal(r.code, 4100);
    /* another scheme means signature mode, which needs the public params */
    assert_int_equal(run(f, "Basic YmF0Y2g6eA==", &r), -1);
    assert_int_equal(r.code, 4000);
}

static void test_nonce_key_and_message(void **state) {
    char key[64], small[16], msg[128];
    assert_int_equal(
        auth_nonce_key("capgate:", "AKIDshop", 18446744073709551615ULL, key, sizeof(key)), 0);
    assert_string_equal(key, "capgate:nonce:AKIDshop:18446744073709551615");
    assert_int_equal(auth_nonce_key("capgate:", "AKIDshop", 7, small, sizeof(small)), -1);
    auth_replay_message("AKIDshop", 7, msg, sizeof(msg));
    assert_string_equal(msg, "Nonce 7 was already used by SecretId AKIDshop");
}

static void test_bearer_parse(void **state) {
    size_t n = 0;
    const char *t = auth_bearer_token("Bearer abc", &n);
    assert_non_null(t);
    assert_int_equal(n, 3);
    assert_memory_equal(t, "abc", 3);
    assert_null(auth_bearer_token("Bearerabc", &n));
    assert_null(auth_bearer_token("Token abc", &n));
    assert_null(auth_bearer_token(NULL, &n));
    t = auth_bearer_token("BEARER", &n);
    assert_non_null(t);
    assert_int_equal(n, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_signature_ok_then_replay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signature_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token, setup, teardown),
        cmocka_unit_test(test_nonce_key_and_message),
        cmocka_unit_test(test_bearer_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
