/* test_pool.c: the prefetch pool's decisions and its lookup: profile ids and keys, which requests
 * a profile serves (exact params, no per-user field, no extra parameter, the right Action), the
 * hit body in upstream's shape, and pool_take over the memory store (hit, miss, expired entries
 * counted, callbacks never inside the call), with the counters /metrics and /admin/stats show. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <event2/event.h>
#include <jansson.h>

#include "capgate/log.h"
#include "capgate/params.h"
#include "capgate/strbuf.h"
#include "capgate/validate.h"
#include "config.h"
#include "pool.h"
#include "store.h"

static const struct config_pool_profile with_ids = {
    .captcha_type = 9,
    .disturb_level = 1,
    .is_https = 1,
    .client_type = 2,
    .account_type = 0,
    .has_business_id = 1,
    .business_id = 7,
    .has_scene_id = 1,
    .scene_id = 8,
    .size = 4,
};
static const struct config_pool_profile without_ids = {
    .captcha_type = 9,
    .disturb_level = 1,
    .is_https = 1,
    .client_type = 2,
    .account_type = 0,
    .size = 2,
};

static const char base_query[] =
    "Action=CaptchaIframeQuery&SecretId=AKIDx&Signature=sig&Timestamp=1&Nonce=2"
    "&SignatureMethod=HmacSHA256&Region=gz&RequestClient=SDK&captchaType=9&disturbLevel=1"
    "&isHttps=1&clientType=2&accountType=0";

/* The profile matched by the request base_query + extra, NULL when none. */
static const struct config_pool_profile *match(const struct config_pool *cfg, const char *extra) {
    struct params p;
    struct v2_fields f;
    char err[256], q[1024];
    const struct config_pool_profile *pr;
    snprintf(q, sizeof q, "%s%s", base_query, extra);
    params_init(&p);
    assert_int_equal(params_parse_urlencoded(&p, q, strlen(q), err, sizeof err), 0);
    if (validate_request(validate_action_parse(params_get(&p, "Action")), &p, &f, err,
                         sizeof err) != 0)
        fail_msg("invalid test request %s: %s", q, err);
    pr = pool_match(cfg, &f, &p);
    params_cleanup(&p);
    return pr;
}

static void test_ids_and_keys(void **state) {
    char id[POOL_ID_MAX], key[POOL_KEY_MAX], tiny[8];
    assert_int_equal(pool_profile_id(&with_ids, id, sizeof id), 0);
    assert_string_equal(id, "ct9-dl1-h1-cl2-ac0-b7-s8");
    assert_int_equal(pool_profile_id(&without_ids, id, sizeof id), 0);
    assert_string_equal(id, "ct9-dl1-h1-cl2-ac0-b--s-");
    assert_int_equal(pool_key("capgate:", &with_ids, key, sizeof key), 0);
    assert_string_equal(key, "capgate:pool:ct9-dl1-h1-cl2-ac0-b7-s8");
    assert_int_equal(pool_key("capgate:", &with_ids, tiny, sizeof tiny), -1);
}

static void test_match(void **state) {
    struct config_pool_profile both[2] = {with_ids, without_ids};
    struct config_pool cfg = {.ttl_s = 60, .profiles = both, .n_profiles = 2};
    struct config_pool only_ids = {.ttl_s = 60, .profiles = both, .n_profiles = 1};
    struct config_pool none = {.ttl_s = 60};

    assert_ptr_equal(match(&cfg, "&businessId=7&sceneId=8"), &both[0]);
    assert_ptr_equal(match(&cfg, ""), &both[1]);
    /* a profile without businessId does not serve a request with one, and the reverse */
    assert_null(match(&only_ids, ""));
    assert_null(match(&cfg, "&businessId=7"));
    assert_null(match(&cfg, "&businessId=7&sceneId=9"));
    assert_null(match(&cfg, "&businessId=6&sceneId=8"));
    assert_null(match(&none, "&businessId=7&sceneId=8"));
    /* any per-user field keeps a request out */
    for (size_t i = 0; validate_user_fields[i]; i++) {
        char extra[128];
        const char *v = strcmp(validate_user_fields[i], "userIp") == 0         ? "10.1.2.3"
                        : strcmp(validate_user_fields[i], "registerTime") == 0 ? "1700000000"
                                                                               : "x1";
        snprintf(extra, sizeof extra, "&businessId=7&sceneId=8&%s=%s", validate_user_fields[i], v);
        assert_null(match(&cfg, extra));
    }
    /* so does a parameter the pooled URL was not fetched with */
    assert_null(match(&cfg, "&businessId=7&sceneId=8&lang=en"));
}

static void test_match_other_values(void **state) {
    struct config_pool_profile one = with_ids;
    struct config_pool cfg = {.ttl_s = 60, .profiles = &one, .n_profiles = 1};
    struct params p;
    struct v2_fields f;
    char err[256];
    static const char check[] = "Action=CaptchaQuery&captchaType=9&disturbLevel=1&isHttps=1"
                                "&clientType=2&accountType=0&businessId=7&sceneId=8"
                                "&registerTime=1&userIp=h&script=0";
    params_init(&p);
    assert_int_equal(params_parse_urlencoded(&p, check, strlen(check), err, sizeof err), 0);
    assert_int_equal(validate_request(V2_ACTION_CAPTCHA_QUERY, &p, &f, err, sizeof err), 0);
    assert_null(pool_match(&cfg, &f, &p)); /* another Action */
    params_cleanup(&p);
    one.client_type = 4;
    assert_null(match(&cfg, "&businessId=7&sceneId=8"));
}

static void test_hit_body(void **state) {
    char *b = pool_hit_body("https://x.test/TCapIframeApi.js?appid=1&asig=\"q\"");
    json_t *j = json_loads(b, 0, NULL);
    assert_non_null(j);
    assert_int_equal(json_integer_value(json_object_get(j, "code")), 0);
    assert_string_equal(json_string_value(json_object_get(j, "codeDesc")), "Success");
    assert_string_equal(json_string_value(json_object_get(j, "message")), "No Error");
    assert_string_equal(json_string_value(json_object_get(j, "url")),
                        "https://x.test/TCapIframeApi.js?appid=1&asig=\"q\"");
    assert_int_equal(json_object_size(j), 4);
    assert_ptr_equal(strstr(b, "{\"code\":0,\"codeDesc\":\"Success\""), b);
    json_decref(j);
    free(b);
}

/* ---- pool_take over the memory store ---- */

struct take {
    int fired, returned, inside;
    char *url;
};

static void on_take(const char *url, void *arg) {
    struct take *t = arg;
    t->fired++;
    if (!t->returned) t->inside = 1;
    t->url = url ? strdup(url) : NULL;
}

static void on_push(const char *err, const struct store_pool_result *r, void *arg) {
    int *fired = arg;
    assert_null(err);
    (*fired)++;
}

static void run_until(struct event_base *base, const int *flag) {
    for (int i = 0; i < 1000 && !*flag; i++) event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    assert_true(*flag);
}

static void take(struct event_base *base, struct pool *p, struct store *s, unsigned ttl_s,
                 struct take *t) {
    memset(t, 0, sizeof *t);
    assert_int_equal(pool_take(p, s, "t:", ttl_s, &with_ids, on_take, t), 0);
    t->returned = 1;
    assert_int_equal(t->fired, 0);
    run_until(base, &t->fired);
    assert_int_equal(t->fired, 1);
    assert_int_equal(t->inside, 0);
}

static void test_take(void **state) {
    struct config cfg;
    char err[256], key[POOL_KEY_MAX];
    struct event_base *base = event_base_new();
    struct store_shared *sh;
    struct store *s;
    struct pool *p = pool_new();
    struct pool_totals t;
    struct take tk;
    struct strbuf b;
    int pushed = 0;

    memset(&cfg, 0, sizeof cfg);
    assert_non_null(sh = store_shared_new(&cfg, err, sizeof err));
    assert_non_null(s = store_new(sh, base, err, sizeof err));
    assert_non_null(p);
    assert_int_equal(pool_key("t:", &with_ids, key, sizeof key), 0);

    store_pool_push(s, key, "https://x/1", 4, 60000, on_push, &pushed);
    store_pool_push(s, key, "https://x/2", 4, 60000, on_push, &pushed);
    while (pushed < 2) event_base_loop(base, EVLOOP_ONCE);
    take(base, p, s, 60, &tk);
    assert_string_equal(tk.url, "https://x/1");
    free(tk.url);
    take(base, p, s, 60, &tk);
    assert_string_equal(tk.url, "https://x/2");
    free(tk.url);
    take(base, p, s, 60, &tk);
    assert_null(tk.url);

    /* an entry past the ttl is dropped and counted, and the lookup is a miss */
    pushed = 0;
    store_pool_push(s, key, "https://x/old", 4, 60000, on_push, &pushed);
    while (pushed < 1) event_base_loop(base, EVLOOP_ONCE);
    {
        struct timeval tv = {1, 50000};
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
    }
    take(base, p, s, 1, &tk);
    assert_null(tk.url);

    pool_get_totals(p, &t);
    assert_int_equal(t.hits, 2);
    assert_int_equal(t.misses, 2);
    assert_int_equal(t.discarded_expired, 1);
    assert_true(pool_hit_ratio(&t) > 0.49 && pool_hit_ratio(&t) < 0.51);

    strbuf_init(&b);
    assert_int_equal(pool_render_metrics(p, &b), 0);
    assert_non_null(strstr(b.s, "\ncapgate_pool_hits_total 2\n"));
    assert_non_null(strstr(b.s, "\ncapgate_pool_misses_total 2\n"));
    assert_non_null(strstr(b.s, "\ncapgate_pool_discarded_expired_total 1\n"));
    assert_non_null(strstr(b.s, "# TYPE capgate_pool_depth gauge\n"));
    strbuf_reset(&b);
    assert_int_equal(pool_render_json(p, &b), 0);
    {
        json_t *j = json_loads(b.s, 0, NULL);
        assert_non_null(j);
        assert_int_equal(json_integer_value(json_object_get(j, "hits")), 2);
        assert_true(json_real_value(json_object_get(j, "hit_ratio")) > 0.49);
        assert_true(json_is_object(json_object_get(j, "depth")));
        json_decref(j);
    }
    strbuf_cleanup(&b);
    store_free(s);
    store_shared_free(sh);
    pool_free(p);
    event_base_free(base);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_and_keys),
        cmocka_unit_test(test_match),
        cmocka_unit_test(test_match_other_values),
        cmocka_unit_test(test_hit_body),
        cmocka_unit_test(test_take),
    };
    log_init("test_pool", LOG_LEVEL_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
