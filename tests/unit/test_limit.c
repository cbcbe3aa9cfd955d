/* test_limit.c: the rate-limit decisions without I/O: which buckets a request falls in for every
 * rule shape, GCRA burst, refusal and refill at explicit times, and the header text. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "capgate/strbuf.h"
#include "config.h"
#include "limit.h"

#define PARAMS(n, bany, bid, sany, sid, rt, per, bu) \
    { \
        .name = (n), .scope = CONFIG_SCOPE_PARAMS, .business_any = (bany), .business_id = (bid), \
        .scene_any = (sany), .scene_id = (sid), .rate = (rt), .period_s = (per), .burst = (bu) \
    }
#define SCOPED(n, sc, rt, per, bu) \
    { \
        .name = (n), .scope = (sc), .business_any = 1, .scene_any = 1, .rate = (rt), \
        .period_s = (per), .burst = (bu) \
    }

static struct config_limit rules[] = {
    PARAMS("login", 0, 1, 0, 2, 50, 1, 100),
    PARAMS("biz1-any-scene", 0, 1, 1, 0, 10, 1, 10),
    PARAMS("any-biz-scene7", 1, 0, 0, 7, 5, 1, 5),
    SCOPED("per-app", CONFIG_SCOPE_APP, 200, 1, 200),
    PARAMS("per-scene", 1, 0, 1, 0, 20, 1, 20),
    SCOPED("quota", CONFIG_SCOPE_GLOBAL, 1000, 1, 1000),
    SCOPED("per-app-minute", CONFIG_SCOPE_APP, 600, 60, 600),
};

static struct config cfg_with(struct config_limit *l, size_t n) {
    struct config c;
    memset(&c, 0, sizeof c);
    c.limits = l;
    c.n_limits = n;
    return c;
}

static void test_exact_rule_then_app_then_global(void **state) {
    struct config c = cfg_with(rules, sizeof rules / sizeof rules[0]);
    struct limit_bucket b[LIMIT_MAX_BUCKETS];
    size_t n = limit_buckets(&c, "cg:", "shop", 1, 1, 1, 2, b, LIMIT_MAX_BUCKETS);
    assert_int_equal(n, 4);
    assert_string_equal(b[0].key, "cg:rl:login:1:2");
    assert_ptr_equal(b[0].rule, &rules[0]);
    assert_int_equal(b[0].emission_us, 20000);
    assert_int_equal(b[0].tolerance_us, 2000000);
    /* app rules in file order, then global */
    assert_string_equal(b[1].key, "cg:rl:per-app:app:shop");
    assert_string_equal(b[2].key, "cg:rl:per-app-minute:app:shop");
    assert_int_equal(b[2].emission_us, 100000);
    assert_string_equal(b[3].key, "cg:rl:quota:global");
    assert_int_equal(b[3].emission_us, 1000);
    assert_int_equal(b[3].tolerance_us, 1000000);
}

/* A rule naming an app: a params rule matches only that app's requests (so it can come before
 * the rule every app falls under), a scope app rule is a bucket of that app only. */
static void test_rules_naming_an_app(void **state) {
    struct config_limit r[] = {
        PARAMS("p42-login", 0, 1, 1, 0, 2, 1, 2),
        PARAMS("login", 0, 1, 1, 0, 50, 1, 50),
        SCOPED("p42", CONFIG_SCOPE_APP, 5, 1, 5),
        SCOPED("per-app", CONFIG_SCOPE_APP, 100, 1, 100),
    };
    r[0].app = "partner-42";
    r[2].app = "partner-42";
    struct config c = cfg_with(r, sizeof r / sizeof r[0]);
    struct limit_bucket b[LIMIT_MAX_BUCKETS];
    int n = limit_buckets(&c, "cg:", "partner-42", 1, 1, 1, 2, b, LIMIT_MAX_BUCKETS);
    assert_int_equal(n, 3);
    assert_string_equal(b[0].key, "cg:rl:p42-login:1:2");
    assert_string_equal(b[1].key, "cg:rl:p42:app:partner-42");
    assert_string_equal(b[2].key, "cg:rl:per-app:app:partner-42");
    n = limit_buckets(&c, "cg:", "shop", 1, 1, 1, 2, b, LIMIT_MAX_BUCKETS);
    assert_int_equal(n, 2);
    assert_string_equal(b[0].key, "cg:rl:login:1:2");
    assert_string_equal(b[1].key, "cg:rl:per-app:app:shop");
    /* no app known: none of the named rules */
    n = limit_buckets(&c, "cg:", NULL, 1, 1, 1, 2, b, LIMIT_MAX_BUCKETS);
    assert_int_equal(n, 2);
    assert_string_equal(b[0].key, "cg:rl:login:1:2");
}

static void test_star_on_either_side(void **state) {
    struct config c = cfg_with(rules, sizeof rules / sizeof rules[0]);
    struct limit_bucket b[LIMIT_MAX_BUCKETS];
    /* businessId 1 with another scene: the second rule ("*" scene) */
    size_t n = limit_buckets(&c, "cg:", "shop", 1, 1, 1, 3, b, LIMIT_MAX_BUCKETS);
    assert_int_equal(n, 4);
    assert_string_equal(b[0].key, "cg:rl:biz1-any-scene:1:3");
    /* businessId 1 without a scene: "*" matches the absent value, keyed "-" */
    n = limit_buckets(&c, "cg:", "shop", 1, 1, 0, 0, b, LIMIT_MAX_BUCKETS);
    assert_string_equal(b[0].key, "cg:rl:biz1-any-scene:1:-");
    /* "*" business, exact scene */
    n = limit_buckets(&c, "cg:", "shop", 1, 9, 1, 7, b, LIMIT_MAX_BUCKETS);
    assert_string_equal(b[0].key, "cg:rl:any-biz-scene7:9:7");
    n = limit_buckets(&c, "cg:", "shop", 0, 0, 1, 7, b, LIMIT_MAX_BUCKETS);
    assert_string_equal(b[0].key, "cg:rl:any-biz-scene7:-:7");
    /* both "*" */
    n = limit_buckets(&c, "cg:", "shop", 1, 4, 1, 5, b, LIMIT_MAX_BUCKETS);
    assert_string_equal(b[0].key, "cg:rl:per-scene:4:5");
    n = limit_buckets(&c, "cg:", "shop", 0, 0, 0, 0, b, LIMIT_MAX_BUCKETS);
    assert_int_equal(n, 4);
    assert_string_equal(b[0].key, "cg:rl:per-scene:-:-");
    assert_string_equal(b[1].key, "cg:rl:per-app:app:shop");
}

static void test_exact_rule_needs_the_param(void **state) {
    /* an exact businessId never matches an absent one, nor does an exact scene */
    struct config_limit only[] = {
        PARAMS("exact", 0, 1, 0, 2, 1, 1, 1),
        PARAMS("biz-only", 0, 1, 1, 0, 1, 1, 1),
    };
    struct config c = cfg_with(only, 2);
    struct limit_bucket b[4];
    assert_int_equal(limit_buckets(&c, "", "a", 0, 0, 1, 2, b, 4), 0);
    assert_int_equal(limit_buckets(&c, "", "a", 1, 1, 0, 0, b, 4), 1);
    assert_string_equal(b[0].key, "rl:biz-only:1:-");
    assert_int_equal(limit_buckets(&c, "", "a", 1, 2, 1, 2, b, 4), 0);
    /* no prefix and no app: the key still has a shape */
    assert_int_equal(limit_buckets(&c, NULL, NULL, 1, 1, 1, 2, b, 4), 1);
    assert_string_equal(b[0].key, "rl:exact:1:2");
}

static void test_first_match_in_file_order(void **state) {
    /* a broad rule first shadows the exact one behind it */
    struct config_limit order[] = {
        PARAMS("broad", 1, 0, 1, 0, 1, 1, 1),
        PARAMS("exact", 0, 1, 0, 2, 1, 1, 1),
    };
    struct config c = cfg_with(order, 2);
    struct limit_bucket b[4];
    assert_int_equal(limit_buckets(&c, "p:", "a", 1, 1, 1, 2, b, 4), 1);
    assert_string_equal(b[0].key, "p:rl:broad:1:2");
}

static void test_keys_ignore_config_version_and_cap(void **state) {
    /* the same rule in two loaded configs gives the same key: counters survive a reload */
    struct config_limit v1[] = {PARAMS("r", 1, 0, 1, 0, 10, 1, 10)};
    struct config_limit v2[] = {SCOPED("g", CONFIG_SCOPE_GLOBAL, 5, 1, 5),
                                PARAMS("r", 1, 0, 1, 0, 99, 2, 3)};
    struct config c1 = cfg_with(v1, 1), c2 = cfg_with(v2, 2);
    struct limit_bucket a[4], b[4];
    assert_int_equal(limit_buckets(&c1, "x:", "a", 1, 3, 1, 4, a, 4), 1);
    assert_int_equal(limit_buckets(&c2, "x:", "a", 1, 3, 1, 4, b, 4), 2);
    assert_string_equal(a[0].key, b[0].key);
    assert_int_equal(b[0].emission_us, 20202); /* 2 s / 99 = 20202.02 µs, rounded */
    /* buckets that do not fit the cap are not dropped: the request cannot be checked */
    assert_int_equal(limit_buckets(&c2, "x:", "a", 1, 3, 1, 4, b, 1), -1);
    assert_int_equal(limit_buckets(&c2, "x:", "a", 1, 3, 1, 4, b, 0), -1);
    assert_int_equal(limit_buckets(&c1, "x:", "a", 0, 0, 0, 0, b, 1), 1);
    assert_int_equal(limit_buckets(&c2, "x:", "a", 1, 3, 1, 4, b, 2), 2);
}

/* A key over LIMIT_KEY_MAX bytes is never skipped silently (and a params rule whose key failed
 * does not hand over to the next one): -1, the request is refused. */
static void test_key_too_long_fails_closed(void **state) {
    char prefix[LIMIT_KEY_MAX], app[LIMIT_KEY_MAX];
    struct config_limit p[] = {PARAMS("first", 1, 0, 1, 0, 10, 1, 10),
                               PARAMS("second", 1, 0, 1, 0, 10, 1, 10)};
    struct config_limit a[] = {SCOPED("per-app", CONFIG_SCOPE_APP, 10, 1, 10)};
    struct config_limit g[] = {SCOPED("quota", CONFIG_SCOPE_GLOBAL, 10, 1, 10)};
    struct config cp = cfg_with(p, 2), ca = cfg_with(a, 1), cg = cfg_with(g, 1);
    struct limit_bucket b[4];
    memset(prefix, 'p', sizeof prefix - 12);
    prefix[sizeof prefix - 12] = '\0'; /* "<prefix>rl:first:-:-" is just over */
    memset(app, 'a', sizeof app - 1);
    app[sizeof app - 1] = '\0';
    assert_int_equal(limit_buckets(&cp, prefix, "a", 0, 0, 0, 0, b, 4), -1);
    assert_int_equal(limit_buckets(&ca, "x:", app, 0, 0, 0, 0, b, 4), -1);
    assert_int_equal(limit_buckets(&cg, prefix, "a", 0, 0, 0, 0, b, 4), -1);
    prefix[sizeof prefix - 20] = '\0';
    assert_int_equal(limit_buckets(&cp, prefix, "a", 0, 0, 0, 0, b, 4), 1);
    assert_string_equal(b[0].rule->name, "first");
    assert_int_equal(limit_buckets(&cg, prefix, "a", 0, 0, 0, 0, b, 4), 1);
}

static void test_shadow_flag(void **state) {
    struct config_limit l[] = {PARAMS("try", 1, 0, 1, 0, 2, 1, 4),
                               SCOPED("g", CONFIG_SCOPE_GLOBAL, 5, 1, 5)};
    l[0].shadow = 1;
    struct config c = cfg_with(l, 2);
    struct limit_bucket b[4];
    assert_int_equal(limit_buckets(&c, "", "a", 1, 1, 1, 1, b, 4), 2);
    assert_int_equal(b[0].shadow, 1);
    assert_int_equal(b[1].shadow, 0);
    assert_int_equal(b[0].emission_us, 500000);
    assert_int_equal(b[0].tolerance_us, 2000000);
}

static void test_gcra_burst_then_refusal(void **state) {
    const uint64_t e = 100000, tol = 3 * e, t0 = 1000000000;
    uint64_t tat = 0, nt, ra, rem;
    /* a burst of 3 at the same instant */
    for (uint64_t i = 0; i < 3; i++) {
        assert_int_equal(limit_gcra(t0, tat, e, tol, &nt, &ra, &rem), 1);
        assert_int_equal(nt, t0 + (i + 1) * e);
        assert_int_equal(ra, 0);
        assert_int_equal(rem, 2 - i);
        tat = nt;
    }
    /* the fourth is refused: it would be admitted one emission interval later */
    assert_int_equal(limit_gcra(t0, tat, e, tol, &nt, &ra, &rem), 0);
    assert_int_equal(nt, tat);
    assert_int_equal(ra, e);
    assert_int_equal(rem, 0);
    /* part of the way there: the exact remainder */
    assert_int_equal(limit_gcra(t0 + 30000, tat, e, tol, &nt, &ra, &rem), 0);
    assert_int_equal(ra, 70000);
    /* exactly at the boundary it is admitted with nothing left */
    assert_int_equal(limit_gcra(t0 + e, tat, e, tol, &nt, &ra, &rem), 1);
    assert_int_equal(nt, tat + e);
    assert_int_equal(rem, 0);
}

static void test_gcra_refill(void **state) {
    const uint64_t e = 250000, tol = 4 * e, t0 = 5000000;
    uint64_t tat = 0, nt, ra, rem;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(limit_gcra(t0, tat, e, tol, &nt, &ra, &rem), 1);
        tat = nt;
    }
    assert_int_equal(limit_gcra(t0, tat, e, tol, &nt, &ra, &rem), 0);
    /* two intervals later: two tokens are back (one taken now, one left) */
    assert_int_equal(limit_gcra(t0 + 2 * e, tat, e, tol, &nt, &ra, &rem), 1);
    assert_int_equal(rem, 1);
    /* long after the TAT the bucket is full again: burst - 1 left */
    assert_int_equal(limit_gcra(t0 + 100 * e, tat, e, tol, &nt, &ra, &rem), 1);
    assert_int_equal(rem, 3);
    assert_int_equal(nt, t0 + 101 * e);
    /* a bucket never seen (tat 0) */
    assert_int_equal(limit_gcra(t0, 0, e, tol, &nt, &ra, &rem), 1);
    assert_int_equal(rem, 3);
}

static void test_gcra_fractional_burst(void **state) {
    /* burst 1.5: one request, then the next only after half an interval */
    const uint64_t e = 1000, tol = 1500;
    uint64_t nt, ra, rem;
    assert_int_equal(limit_gcra(10000, 0, e, tol, &nt, &ra, &rem), 1);
    assert_int_equal(rem, 0);
    assert_int_equal(limit_gcra(10000, nt, e, tol, &nt, &ra, &rem), 0);
    assert_int_equal(ra, 500);
    assert_int_equal(limit_gcra(10500, 11000, e, tol, &nt, &ra, &rem), 1);
}

static void test_headers_allowed(void **state) {
    struct config c = cfg_with(rules, sizeof rules / sizeof rules[0]);
    struct limit_bucket b[LIMIT_MAX_BUCKETS];
    struct limit_outcome o;
    struct strbuf p, r, ra;
    size_t n = limit_buckets(&c, "cg:", "shop", 1, 1, 1, 2, b, LIMIT_MAX_BUCKETS);
    strbuf_init(&p);
    strbuf_init(&r);
    strbuf_init(&ra);
    memset(&o, 0, sizeof o);
    o.allowed = 1;
    o.denied = o.shadow_denied = -1;
    o.remaining[0] = 42;
    o.reset_us[0] = 1160000;
    o.remaining[1] = 199;
    o.reset_us[1] = 5000;
    o.remaining[2] = 42;
    o.reset_us[2] = 100000;
    o.remaining[3] = 999;
    o.reset_us[3] = 1000;
    assert_int_equal(limit_headers(b, n, &o, &p, &r, &ra), 0);
    assert_string_equal(p.s, "\"login\";q=100;w=1, \"per-app\";q=200;w=1, "
                             "\"per-app-minute\";q=600;w=60, \"quota\";q=1000;w=1");
    /* fewest tokens left; of the two with 42 the one that takes longer to refill */
    assert_string_equal(r.s, "\"login\";r=42;t=2");
    assert_int_equal(ra.len, 0);
    strbuf_cleanup(&p);
    strbuf_cleanup(&r);
    strbuf_cleanup(&ra);
}

static void test_headers_refused_and_shadow(void **state) {
    struct config_limit l[] = {PARAMS("sh\"adow", 1, 0, 1, 0, 1, 1, 1),
                               SCOPED("app", CONFIG_SCOPE_APP, 5, 0.5, 2.7),
                               SCOPED("g", CONFIG_SCOPE_GLOBAL, 5, 1, 5)};
    l[0].shadow = 1;
    struct config c = cfg_with(l, 3);
    struct limit_bucket b[4];
    struct limit_outcome o;
    struct strbuf p, r, ra;
    size_t n = limit_buckets(&c, "", "a", 1, 1, 1, 1, b, 4);
    assert_int_equal(n, 3);
    strbuf_init(&p);
    strbuf_init(&r);
    strbuf_init(&ra);
    memset(&o, 0, sizeof o);
    o.allowed = 0;
    o.denied = 2;
    o.shadow_denied = 0;
    o.retry_after_us = 1000001;
    o.remaining[1] = 1;
    o.reset_us[1] = 100000;
    o.remaining[2] = 0;
    o.reset_us[2] = 2000000;
    assert_int_equal(limit_headers(b, n, &o, &p, &r, &ra), 0);
    /* the shadow rule is not announced; integers: floor(burst), period rounded up */
    assert_string_equal(p.s, "\"app\";q=2;w=1, \"g\";q=5;w=1");
    assert_string_equal(r.s, "\"g\";r=0;t=2");
    assert_string_equal(ra.s, "2");
    /* a tiny wait still says at least one second */
    strbuf_reset(&p);
    strbuf_reset(&r);
    strbuf_reset(&ra);
    o.retry_after_us = 1;
    assert_int_equal(limit_headers(b, n, &o, &p, &r, &ra), 0);
    assert_string_equal(ra.s, "1");
    /* no outcome: only the policy; only shadow buckets: nothing at all */
    strbuf_reset(&p);
    strbuf_reset(&r);
    strbuf_reset(&ra);
    assert_int_equal(limit_headers(b, n, NULL, &p, &r, &ra), 0);
    assert_string_equal(p.s, "\"app\";q=2;w=1, \"g\";q=5;w=1");
    assert_int_equal(r.len, 0);
    assert_int_equal(ra.len, 0);
    strbuf_reset(&p);
    o.allowed = 1;
    o.denied = -1;
    assert_int_equal(limit_headers(b, 1, &o, &p, &r, &ra), 0);
    assert_int_equal(p.len, 0);
    assert_int_equal(r.len, 0);
    assert_int_equal(ra.len, 0);
    /* a quote in a name is escaped when it is announced */
    l[0].shadow = 0;
    b[0].shadow = 0;
    assert_int_equal(limit_headers(b, 1, NULL, &p, &r, &ra), 0);
    assert_string_equal(p.s, "\"sh\\\"adow\";q=1;w=1");
    strbuf_cleanup(&p);
    strbuf_cleanup(&r);
    strbuf_cleanup(&ra);
}

/* The slowest rate the config allows with the largest burst: the tolerance stays in range. */
static void test_extreme_rule_times(void **state) {
    struct config_limit slow[] = {SCOPED("slow", CONFIG_SCOPE_GLOBAL, 1e-9, 86400, 1e9)};
    struct config c = cfg_with(slow, 1);
    struct limit_bucket b[LIMIT_MAX_BUCKETS];
    (void)state;
    assert_int_equal(limit_buckets(&c, "cg:", "shop", 1, 1, 1, 2, b, LIMIT_MAX_BUCKETS), 1);
    assert_true(b[0].emission_us == (uint64_t)1e15);
    assert_true(b[0].tolerance_us == (uint64_t)1e18);
    assert_true(b[0].tolerance_us >= b[0].emission_us);
}

/* Numbers as printf's %.0f and %llu write them on both sides of 2^53 (below it the header is
 * built without printf), and names with bytes that need escaping or replacing. */
static void test_headers_number_and_name_edges(void **state) {
    struct config_limit l[] = {SCOPED("big", CONFIG_SCOPE_GLOBAL, 1, 1e20, 1e20),
                               SCOPED("edge", CONFIG_SCOPE_APP, 1, 1, 9007199254740991.0),
                               SCOPED("a\x01"
                                      "b\\c\"d\xc3\xa9",
                                      CONFIG_SCOPE_GLOBAL, 1, 1, 1)};
    struct config c = cfg_with(l, 3);
    struct limit_bucket b[4];
    struct limit_outcome o;
    struct strbuf p, r, ra;
    size_t n = limit_buckets(&c, "", "a", 1, 1, 1, 1, b, 4);
    (void)state;
    assert_int_equal(n, 3);
    strbuf_init(&p);
    strbuf_init(&r);
    strbuf_init(&ra);
    memset(&o, 0, sizeof o);
    o.allowed = 1;
    o.denied = o.shadow_denied = -1;
    o.remaining[0] = UINT64_MAX;
    o.reset_us[0] = 1;
    o.remaining[1] = UINT64_MAX;
    o.reset_us[1] = 1;
    o.remaining[2] = 18446744073709551614u;
    o.reset_us[2] = UINT64_MAX;
    assert_int_equal(limit_headers(b, n, &o, &p, &r, &ra), 0);
    /* app rules come before global ones */
    assert_string_equal(p.s, "\"edge\";q=9007199254740991;w=1, "
                             "\"big\";q=100000000000000000000;w=100000000000000000000, "
                             "\"a?b\\\\c\\\"d??\";q=1;w=1");
    assert_string_equal(r.s, "\"a?b\\\\c\\\"d??\";r=18446744073709551614;t=18446744073710");
    assert_int_equal(ra.len, 0);
    strbuf_cleanup(&p);
    strbuf_cleanup(&r);
    strbuf_cleanup(&ra);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_rule_then_app_then_global),
        cmocka_unit_test(test_key_too_long_fails_closed),
        cmocka_unit_test(test_star_on_either_side),
        cmocka_unit_test(test_exact_rule_needs_the_param),
        cmocka_unit_test(test_first_match_in_file_order),
        cmocka_unit_test(test_keys_ignore_config_version_and_cap),
        cmocka_unit_test(test_shadow_flag),
        cmocka_unit_test(test_gcra_burst_then_refusal),
        cmocka_unit_test(test_gcra_refill),
        cmocka_unit_test(test_gcra_fractional_burst),
        cmocka_unit_test(test_headers_allowed),
        cmocka_unit_test(test_headers_refused_and_shadow),
        cmocka_unit_test(test_headers_number_and_name_edges),
        cmocka_unit_test(test_extreme_rule_times),
        cmocka_unit_test(test_rules_naming_an_app),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
