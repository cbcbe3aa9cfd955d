/* test_pipeline.c: the pipeline's pure decisions: HTTP status mapping in both modes, app
 * authorization, the limit verdict and headers. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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

static void test_reply_may_be_script(void **state) {
    struct v2_fields f;
    memset(&f, 0, sizeof f);
    f.action = V2_ACTION_CAPTCHA_QUERY;
    assert_false(pipeline_reply_may_be_script(&f));
    f.has_script = 1;
    assert_false(pipeline_reply_may_be_script(&f)); /* script=0: JSON */
    f.script = 1;
    assert_true(pipeline_reply_may_be_script(&f));
    f.action = V2_ACTION_CAPTCHA_IFRAME_QUERY;
    assert_false(pipeline_reply_may_be_script(&f));
}

/* Two enforcing rules and a shadow one, as limit_buckets would give them. */
static struct config_limit rules[3] = {
    {.name = "login", .scope = CONFIG_SCOPE_PARAMS, .rate = 1, .period_s = 2, .burst = 3},
    {.name = "all", .scope = CONFIG_SCOPE_GLOBAL, .rate = 10, .period_s = 0.5, .burst = 10},
    {.name = "trial",
     .scope = CONFIG_SCOPE_APP,
     .rate = 1,
     .period_s = 60,
     .burst = 1,
     .shadow = 1},
};

static void make_buckets(struct limit_bucket *b) {
    memset(b, 0, 3 * sizeof(*b));
    for (int i = 0; i < 3; i++) {
        b[i].rule = &rules[i];
        snprintf(b[i].key, sizeof(b[i].key), "capgate:rl:%s", rules[i].name);
        b[i].shadow = rules[i].shadow;
    }
}

static void test_limit_verdict(void **state) {
    struct limit_bucket b[3];
    struct limit_outcome o = {.allowed = 1, .denied = -1, .shadow_denied = -1};
    char rule[64], msg[256];
    make_buckets(b);

    assert_int_equal(pipeline_limit_verdict(b, 3, &o, rule, sizeof(rule), msg, sizeof(msg)),
                     PIPELINE_FORWARDED);
    assert_string_equal(rule, "");
    assert_string_equal(msg, "");

    o.shadow_denied = 2;
    assert_int_equal(pipeline_limit_verdict(b, 3, &o, rule, sizeof(rule), msg, sizeof(msg)),
                     PIPELINE_SHADOW_LIMITED);
    assert_string_equal(rule, "trial");
    assert_string_equal(msg, "");

    /* Refused: the refusing rule, and the wait rounded up to whole seconds (as Retry-After). */
    o.allowed = 0;
    o.denied = 0;
    o.retry_after_us = 1000001;
    assert_int_equal(pipeline_limit_verdict(b, 3, &o, rule, sizeof(rule), msg, sizeof(msg)),
                     PIPELINE_LIMITED);
    assert_string_equal(rule, "login");
    assert_string_equal(msg, "rate limit login exceeded; retry in 2 s");
    o.denied = 1;
    o.retry_after_us = 1;
    assert_int_equal(pipeline_limit_verdict(b, 3, &o, rule, sizeof(rule), msg, sizeof(msg)),
                     PIPELINE_LIMITED);
    assert_string_equal(msg, "rate limit all exceeded; retry in 1 s");
    o.retry_after_us = 0; /* at least 1 s, never "retry in 0 s" */
    pipeline_limit_verdict(b, 3, &o, rule, sizeof(rule), msg, sizeof(msg));
    assert_string_equal(msg, "rate limit all exceeded; retry in 1 s");
    o.retry_after_us = 3000000;
    pipeline_limit_verdict(b, 3, &o, rule, sizeof(rule), msg, sizeof(msg));
    assert_string_equal(msg, "rate limit all exceeded; retry in 3 s");

    /* A short rule buffer cuts the name, never overflows. */
    char small[4];
    o.denied = 0;
    pipeline_limit_verdict(b, 3, &o, small, sizeof(small), msg, sizeof(msg));
    assert_string_equal(small, "log");
}

/* A record keeps app and rule names as long as the config allows (64 bytes) whole. */
static void test_record_names_whole(void **state) {
    static const char name[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._";
    struct config_limit r = {
        .name = (char *)name, .scope = CONFIG_SCOPE_GLOBAL, .rate = 1, .period_s = 1, .burst = 1};
    struct limit_bucket b = {.rule = &r};
    struct limit_outcome o = {.allowed = 0, .denied = 0, .shadow_denied = -1, .retry_after_us = 1};
    struct pipeline_record rec;
    char msg[256];
    assert_int_equal(strlen(name), CONFIG_NAME_MAX);
    assert_true(sizeof(rec.app) > CONFIG_NAME_MAX);
    assert_int_equal(
        pipeline_limit_verdict(&b, 1, &o, rec.rule, sizeof(rec.rule), msg, sizeof(msg)),
        PIPELINE_LIMITED);
    assert_string_equal(rec.rule, name);
}

static void test_store_fallback(void **state) {
    assert_int_equal(pipeline_store_fallback(CONFIG_STORE_ERROR_LOCAL, 0, 0), PIPELINE_STORE_LOCAL);
    /* the local buckets failed too: nothing left to decide with */
    assert_int_equal(pipeline_store_fallback(CONFIG_STORE_ERROR_LOCAL, 1, 0), PIPELINE_STORE_DENY);
    assert_int_equal(pipeline_store_fallback(CONFIG_STORE_ERROR_ALLOW, 0, 0), PIPELINE_STORE_ALLOW);
    assert_int_equal(pipeline_store_fallback(CONFIG_STORE_ERROR_DENY, 0, 0), PIPELINE_STORE_DENY);
    /* shutting down: no new store call, whatever the policy */
    assert_int_equal(pipeline_store_fallback(CONFIG_STORE_ERROR_LOCAL, 0, 1), PIPELINE_STORE_DENY);
    assert_int_equal(pipeline_store_fallback(CONFIG_STORE_ERROR_ALLOW, 0, 1), PIPELINE_STORE_DENY);
}

static const char *header(const struct pipeline_limit_headers *h, const char *name) {
    for (size_t i = 0; i < h->count; i++)
        if (strcmp(h->name[i], name) == 0) return h->value[i];
    return NULL;
}

static void test_limit_headers(void **state) {
    struct limit_bucket b[3];
    struct pipeline_limit_headers h;
    struct limit_outcome o = {.allowed = 1,
                              .denied = -1,
                              .shadow_denied = -1,
                              .remaining = {2, 7, 0},
                              .reset_us = {2000000, 400000, 0}};
    make_buckets(b);

    /* Admitted: the policy of the enforcing rules (not the shadow one) and the tightest bucket. */
    assert_int_equal(pipeline_limit_headers_init(&h, b, 3, &o), 0);
    assert_int_equal(h.count, 2);
    assert_string_equal(h.name[0], "RateLimit-Policy");
    assert_string_equal(header(&h, "RateLimit-Policy"), "\"login\";q=3;w=2, \"all\";q=10;w=1");
    assert_string_equal(header(&h, "RateLimit"), "\"login\";r=2;t=2");
    assert_null(header(&h, "Retry-After"));
    pipeline_limit_headers_cleanup(&h);
    assert_int_equal(h.count, 0);

    /* Refused by "all": RateLimit names it with r=0, Retry-After in whole seconds. */
    o.allowed = 0;
    o.denied = 1;
    o.retry_after_us = 1500000;
    o.remaining[1] = 0;
    assert_int_equal(pipeline_limit_headers_init(&h, b, 3, &o), 0);
    assert_int_equal(h.count, 3);
    assert_string_equal(header(&h, "RateLimit"), "\"all\";r=0;t=1");
    assert_string_equal(header(&h, "Retry-After"), "2");
    pipeline_limit_headers_cleanup(&h);

    /* The store failed and the request went through (on_store_error "allow"): policy only. */
    assert_int_equal(pipeline_limit_headers_init(&h, b, 3, NULL), 0);
    assert_int_equal(h.count, 1);
    assert_string_equal(h.name[0], "RateLimit-Policy");
    pipeline_limit_headers_cleanup(&h);

    /* Only a shadow rule: nothing to say. */
    assert_int_equal(pipeline_limit_headers_init(&h, &b[2], 1, NULL), 0);
    assert_int_equal(h.count, 0);
    pipeline_limit_headers_cleanup(&h);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_http_status),         cmocka_unit_test(test_authorize),
        cmocka_unit_test(test_reply_may_be_script), cmocka_unit_test(test_limit_verdict),
        cmocka_unit_test(test_record_names_whole),  cmocka_unit_test(test_store_fallback),
        cmocka_unit_test(test_limit_headers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
