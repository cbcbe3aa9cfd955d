/* test_pipeline.c: the pipeline's pure decisions: HTTP status mapping in both modes, app
 * authorization, the parameters sent upstream (public params replaced, signed with the real
 * key), timeout detection, decision names and the shared config's reference count. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "capgate/params.h"
#include "capgate/sign.h"
#include "config.h"
#include "pipeline.h"

static void test_http_status(void **state) {
    /* compat: 200 whatever happened */
    const int codes[] = {0, 4000, 4100, 4300, 4400, 4500, 5000, 6000, 6200};
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        assert_int_equal(pipeline_http_status(codes[i], 0, 0, 0), 200);
        assert_int_equal(pipeline_http_status(codes[i], 0, 1, 413), 200);
    }
    assert_int_equal(pipeline_http_status(0, 1, 0, 0), 200);
    assert_int_equal(pipeline_http_status(4000, 1, 0, 0), 400);
    assert_int_equal(pipeline_http_status(4100, 1, 0, 0), 401);
    assert_int_equal(pipeline_http_status(4104, 1, 0, 0), 401);
    assert_int_equal(pipeline_http_status(4500, 1, 0, 0), 401);
    assert_int_equal(pipeline_http_status(4300, 1, 0, 0), 403);
    assert_int_equal(pipeline_http_status(4400, 1, 0, 0), 429);
    assert_int_equal(pipeline_http_status(5000, 1, 0, 0), 404);
    assert_int_equal(pipeline_http_status(6000, 1, 0, 0), 500);
    assert_int_equal(pipeline_http_status(6200, 1, 0, 0), 502);
    assert_int_equal(pipeline_http_status(6200, 1, 1, 0), 504);
    /* framing errors keep the server's status */
    assert_int_equal(pipeline_http_status(4000, 1, 0, 413), 413);
    assert_int_equal(pipeline_http_status(4000, 1, 0, 414), 414);
    assert_int_equal(pipeline_http_status(4000, 1, 0, 431), 431);
    assert_int_equal(pipeline_http_status(4000, 1, 0, 408), 408);
}

static void test_timed_out(void **state) {
    assert_true(pipeline_upstream_timed_out("upstream timed out after 3000 ms"));
    assert_true(pipeline_upstream_timed_out("connect timed out after 1000 ms"));
    assert_false(pipeline_upstream_timed_out("upstream answered HTTP 500"));
    assert_false(pipeline_upstream_timed_out(NULL));
}

static void test_decision_names(void **state) {
    assert_string_equal(pipeline_decision_name(PIPELINE_FORWARDED), "forwarded");
    assert_string_equal(pipeline_decision_name(PIPELINE_SHADOW_LIMITED), "shadow_limited");
    assert_string_equal(pipeline_decision_name(PIPELINE_UPSTREAM_ERROR), "upstream_error");
    assert_string_equal(pipeline_decision_name(PIPELINE_DECISION_COUNT), "unknown");
}

static void test_authorize(void **state) {
    uint32_t ids[] = {1, 2};
    struct config_app app = {.name = "shop",
                             .actions = 1u << V2_ACTION_CAPTCHA_IFRAME_QUERY,
                             .business_ids = ids,
                             .n_business_ids = 2};
    struct v2_fields f = {.action = V2_ACTION_CAPTCHA_IFRAME_QUERY};
    char err[256];

    /* a list requires a businessId from it */
    assert_int_equal(pipeline_authorize(&app, &f, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "businessId"));
    f.has_business_id = 1;
    f.business_id = 2;
    assert_int_equal(pipeline_authorize(&app, &f, err, sizeof(err)), 0);
    f.business_id = 3;
    assert_int_equal(pipeline_authorize(&app, &f, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "businessId 3"));
    /* Actions outside the mask */
    f.business_id = 1;
    f.action = V2_ACTION_CAPTCHA_CHECK;
    assert_int_equal(pipeline_authorize(&app, &f, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "CaptchaCheck"));
    /* "*": anything, absent included */
    app.actions = ~0u;
    app.business_any = 1;
    f.has_business_id = 0;
    assert_int_equal(pipeline_authorize(&app, &f, err, sizeof(err)), 0);
}

static void test_upstream_params(void **state) {
    struct config_upstream up = {.secret_id = "AKIDreal", .secret_key = "real-key",
                                 .region = "gz", .signature_method = SIGN_HMAC_SHA256,
                                 .post = 1, .sign_host = "csec.api.qcloud.com",
                                 .path = "/v2/index.php"};
    struct params in, out;
    params_init(&in);
    assert_int_equal(params_adds(&in, "Action", "CaptchaIframeQuery"), 0);
    assert_int_equal(params_adds(&in, "SecretId", "AKIDapp"), 0);
    assert_int_equal(params_adds(&in, "Signature", "appsig"), 0);
    assert_int_equal(params_adds(&in, "Timestamp", "1"), 0);
    assert_int_equal(params_adds(&in, "Nonce", "2"), 0);
    assert_int_equal(params_adds(&in, "Region", "sh"), 0);
    assert_int_equal(params_adds(&in, "SignatureMethod", "HmacSHA1"), 0);
    assert_int_equal(params_adds(&in, "Token", "t"), 0);
    assert_int_equal(params_adds(&in, "captchaType", "1"), 0);
    assert_int_equal(params_adds(&in, "RequestClient", "SDK_NODE_1.0"), 0);

    assert_int_equal(pipeline_upstream_params(&in, &up, 1700000000, 18446744073709551615ULL, &out), 0);
    assert_string_equal(params_get(&out, "Action"), "CaptchaIframeQuery");
    assert_string_equal(params_get(&out, "SecretId"), "AKIDreal");
    assert_string_equal(params_get(&out, "Timestamp"), "1700000000");
    assert_string_equal(params_get(&out, "Nonce"), "18446744073709551615");
    assert_string_equal(params_get(&out, "Region"), "gz");
    assert_string_equal(params_get(&out, "SignatureMethod"), "HmacSHA256");
    assert_null(params_get(&out, "Token"));
    assert_string_equal(params_get(&out, "captchaType"), "1");
    assert_string_equal(params_get(&out, "RequestClient"), "SDK_NODE_1.0");
    assert_string_not_equal(params_get(&out, "Signature"), "appsig");
    /* signed for upstream's host, path and method with the real key */
    assert_int_equal(sign_verify(&out, "POST", "csec.api.qcloud.com", "/v2/index.php", "real-key"), 0);
    assert_int_equal(sign_verify(&out, "GET", "csec.api.qcloud.com", "/v2/index.php", "real-key"), -1);
    assert_int_equal(sign_verify(&out, "POST", "csec.api.qcloud.com", "/v2/index.php", "app-key"), -1);
    /* the input is untouched */
    assert_string_equal(params_get(&in, "SecretId"), "AKIDapp");
    params_cleanup(&out);

    up.post = 0;
    up.signature_method = SIGN_HMAC_SHA1;
    assert_int_equal(pipeline_upstream_params(&in, &up, 5, 6, &out), 0);
    assert_string_equal(params_get(&out, "SignatureMethod"), "HmacSHA1");
    assert_int_equal(sign_verify(&out, "GET", "csec.api.qcloud.com", "/v2/index.php", "real-key"), 0);
    /* each name once */
    size_t n = 0;
    for (size_t i = 0; i < out.count; i++) n += strcmp(out.items[i].name, "Nonce") == 0;
    assert_int_equal(n, 1);
    params_cleanup(&out);
    params_cleanup(&in);
}

static void test_config_refcount(void **state) {
    struct config *c = NULL;
    char err[256];
    assert_int_equal(config_load_string("{\"upstream\": {\"url\": \"https://127.0.0.1/v2/index.php\","
                                        " \"secret_id\": \"AKID\", \"secret_key\": \"k\"}}",
                                        "t.json", &c, err, sizeof(err)), 0);
    struct pipeline_config *pc = pipeline_config_new(c);
    assert_non_null(pc);
    assert_ptr_equal(pipeline_config_ref(pc), pc);
    pipeline_config_unref(pc);
    assert_ptr_equal(pc->config, c);  /* still alive: one reference left */
    pipeline_config_unref(pc);
    pipeline_config_unref(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_http_status),
        cmocka_unit_test(test_timed_out),
        cmocka_unit_test(test_decision_names),
        cmocka_unit_test(test_authorize),
        cmocka_unit_test(test_upstream_params),
        cmocka_unit_test(test_config_refcount),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
