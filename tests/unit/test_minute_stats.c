/* test_minute_stats.c: metrics key and field naming, latency buckets, batching, merging and
 * trimming, /admin/stats query parsing and JSON, the in-memory mode end to end, and the Redis
 * mode against a real redis-server started here (sums, TTLs, index, a query across minutes, an
 * outage). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <dirent.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "capgate/clock.h"
#include "config.h"
#include "minute_stats.h"
#include "redis_server.h"

static struct pipeline_record rec(uint64_t ts_s, int has_b, uint32_t b, int has_s, uint32_t s,
                                  enum pipeline_decision d, int code, uint64_t latency_us) {
    struct pipeline_record r;
    memset(&r, 0, sizeof(r));
    r.ts_us = ts_s * 1000000u + 123;
    r.has_business_id = has_b;
    r.business_id = b;
    r.has_scene_id = has_s;
    r.scene_id = s;
    r.decision = d;
    r.code = code;
    r.latency_us = latency_us;
    return r;
}

static void test_names(void **state) {
    char buf[128];
    struct metrics_key k = {.minute = 29000000,
                            .business_id = 7,
                            .scene_id = 42,
                            .has_business_id = 1,
                            .has_scene_id = 1};
    assert_int_equal(metrics_key_name(buf, sizeof(buf), "capgate:", &k),
                     (int)strlen("capgate:m:7:42:29000000"));
    assert_string_equal(buf, "capgate:m:7:42:29000000");
    k.has_scene_id = 0;
    metrics_key_name(buf, sizeof(buf), "p:", &k);
    assert_string_equal(buf, "p:m:7:-:29000000");
    assert_int_equal(metrics_key_name(buf, 8, "p:", &k), -1);
    k.has_business_id = 0;
    metrics_pair_name(buf, sizeof(buf), &k);
    assert_string_equal(buf, "-:-");

    struct metrics_key p;
    assert_int_equal(metrics_pair_parse("12:-", &p), 0);
    assert_true(p.has_business_id && p.business_id == 12 && !p.has_scene_id);
    assert_int_equal(metrics_pair_parse("4294967295:0", &p), 0);
    assert_true(p.business_id == 4294967295u && p.has_scene_id && p.scene_id == 0);
    assert_int_equal(metrics_pair_parse("12", &p), -1);
    assert_int_equal(metrics_pair_parse("x:1", &p), -1);
    assert_int_equal(metrics_pair_parse("1:4294967296", &p), -1);

    struct pipeline_record r = rec(600, 1, 3, 0, 0, PIPELINE_FORWARDED, 0, 1);
    metrics_key_of(&r, &k);
    assert_int_equal(k.minute, 10);
    assert_true(k.has_business_id && k.business_id == 3 && !k.has_scene_id);
}

static void test_buckets(void **state) {
    static const struct {
        uint64_t us;
        const char *name;
    } cases[] = {{0, "le_1ms"},        {1000, "le_1ms"},     {1001, "le_5ms"},
                 {5000, "le_5ms"},     {10000, "le_10ms"},   {50000, "le_50ms"},
                 {100000, "le_100ms"}, {100001, "le_500ms"}, {1000000, "le_1s"},
                 {5000000, "le_5s"},   {5000001, "le_inf"},  {UINT64_MAX, "le_inf"}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        assert_string_equal(metrics_bucket_name(metrics_bucket_index(cases[i].us)), cases[i].name);
    assert_null(metrics_bucket_name(METRICS_BUCKETS));
}

struct fields {
    char text[1024];
};

static void collect(const char *name, uint64_t value, void *arg) {
    struct fields *f = arg;
    size_t n = strlen(f->text);
    snprintf(f->text + n, sizeof(f->text) - n, "%s=%llu ", name, (unsigned long long)value);
}

static void test_cell_fields(void **state) {
    struct metrics_batch *b = metrics_batch_new();
    struct pipeline_record r1 = rec(60, 1, 1, 1, 2, PIPELINE_FORWARDED, 0, 800);
    struct pipeline_record r2 = rec(61, 1, 1, 1, 2, PIPELINE_LIMITED, 4400, 3000);
    struct pipeline_record r3 = rec(119, 1, 1, 1, 2, PIPELINE_INVALID, -1, 7000000);
    assert_int_equal(metrics_batch_add(b, &r1, 100), 0);
    assert_int_equal(metrics_batch_add(b, &r2, 100), 0);
    assert_int_equal(metrics_batch_add(b, &r3, 100), 0);
    assert_int_equal(metrics_batch_count(b), 1);
    struct metrics_key k;
    metrics_key_of(&r1, &k);
    const struct metrics_cell *c = metrics_batch_find(b, &k);
    assert_non_null(c);

    struct fields f = {""};
    metrics_cell_foreach(c, 0, collect, &f);
    assert_string_equal(f.text, "requests=3 forwarded=1 limited=1 invalid=1 code:-1=1 code:0=1 "
                                "code:4400=1 latency_us_sum=7003800 le_1ms=1 le_5ms=1 le_inf=1 ");
    memset(&f, 0, sizeof(f));
    metrics_cell_foreach(c, 1, collect, &f);
    assert_non_null(strstr(f.text, "requests=3 forwarded=1 pool=0 replayed=0 limited=1 "
                                   "shadow_limited=0 invalid=1 unauthorized=0 denied=0 "
                                   "upstream_error=0 code:-1=1"));
    assert_non_null(strstr(f.text, "le_5s=0 le_inf=1 "));

    /* reading the fields back (as from an HGETALL) rebuilds the same cell */
    struct metrics_cell back;
    memset(&back, 0, sizeof(back));
    assert_int_equal(metrics_cell_add_field(&back, "requests", 3), 0);
    assert_int_equal(metrics_cell_add_field(&back, "forwarded", 1), 0);
    assert_int_equal(metrics_cell_add_field(&back, "limited", 1), 0);
    assert_int_equal(metrics_cell_add_field(&back, "invalid", 1), 0);
    assert_int_equal(metrics_cell_add_field(&back, "code:4400", 1), 0);
    assert_int_equal(metrics_cell_add_field(&back, "code:0", 1), 0);
    assert_int_equal(metrics_cell_add_field(&back, "code:-1", 1), 0);
    assert_int_equal(metrics_cell_add_field(&back, "latency_us_sum", 7003800), 0);
    assert_int_equal(metrics_cell_add_field(&back, "le_1ms", 1), 0);
    assert_int_equal(metrics_cell_add_field(&back, "le_5ms", 1), 0);
    assert_int_equal(metrics_cell_add_field(&back, "le_inf", 1), 0);
    assert_int_equal(metrics_cell_add_field(&back, "bogus", 1), -1);
    assert_int_equal(metrics_cell_add_field(&back, "code:x", 1), -1);
    struct fields g = {""};
    metrics_cell_foreach(&back, 0, collect, &g);
    memset(&f, 0, sizeof(f));
    metrics_cell_foreach(c, 0, collect, &f);
    assert_string_equal(g.text, f.text);
    metrics_cell_cleanup(&back);
    metrics_batch_free(b);
}

static void test_batch_merge_and_trim(void **state) {
    struct metrics_batch *a = metrics_batch_new(), *b = metrics_batch_new();
    /* 3 pairs x 40 minutes in a, forcing several table growths */
    for (uint64_t minute = 100; minute < 140; minute++)
        for (uint32_t s = 0; s < 3; s++) {
            struct pipeline_record r = rec(minute * 60, 1, 9, 1, s, PIPELINE_FORWARDED, 0, 10);
            assert_int_equal(metrics_batch_add(a, &r, SIZE_MAX), 0);
            assert_int_equal(metrics_batch_add(b, &r, SIZE_MAX), 0);
        }
    struct pipeline_record absent = rec(100 * 60, 0, 0, 0, 0, PIPELINE_UNAUTHORIZED, 4100, 10);
    assert_int_equal(metrics_batch_add(b, &absent, SIZE_MAX), 0);
    assert_int_equal(metrics_batch_count(a), 120);
    assert_int_equal(metrics_batch_merge(a, b), 0);
    assert_int_equal(metrics_batch_count(a), 121);
    struct metrics_key k = {
        .minute = 117, .business_id = 9, .scene_id = 2, .has_business_id = 1, .has_scene_id = 1};
    assert_int_equal(metrics_batch_find(a, &k)->requests, 2);
    assert_int_equal(metrics_batch_find(a, &k)->codes[0].n, 2);
    struct metrics_key none = {.minute = 100};
    assert_int_equal(metrics_batch_find(a, &none)->decisions[PIPELINE_UNAUTHORIZED], 1);

    /* a bounded batch refuses new keys but still counts existing ones */
    struct metrics_batch *small = metrics_batch_new();
    struct pipeline_record r1 = rec(60, 1, 1, 1, 1, PIPELINE_FORWARDED, 0, 1);
    struct pipeline_record r2 = rec(60, 1, 1, 1, 2, PIPELINE_FORWARDED, 0, 1);
    assert_int_equal(metrics_batch_add(small, &r1, 1), 0);
    assert_int_equal(metrics_batch_add(small, &r2, 1), -1);
    assert_int_equal(metrics_batch_add(small, &r1, 1), 0);
    assert_int_equal(metrics_batch_count(small), 1);
    metrics_batch_free(small);

    /* trimming drops whole minutes, oldest first */
    uint64_t reqs = 0;
    assert_int_equal(metrics_batch_trim(a, 100, 0, &reqs), 22); /* minutes 100..106 */
    assert_int_equal(reqs, 43);
    assert_int_equal(metrics_batch_count(a), 99);
    k.minute = 106;
    assert_null(metrics_batch_find(a, &k));
    k.minute = 107;
    assert_non_null(metrics_batch_find(a, &k));
    assert_int_equal(metrics_batch_trim(a, SIZE_MAX, 130, &reqs), 69); /* before minute 130 */
    assert_int_equal(metrics_batch_count(a), 30);
    assert_non_null(metrics_batch_find(
        a, &(struct metrics_key){
               .minute = 139, .business_id = 9, .has_business_id = 1, .has_scene_id = 1}));
    metrics_batch_clear(a);
    assert_int_equal(metrics_batch_count(a), 0);
    metrics_batch_free(a);
    metrics_batch_free(b);
}

static void test_query_parse(void **state) {
    struct metrics_query q;
    char err[256];
    uint64_t now = clock_wall_us() / 1000000u;
    assert_int_equal(metrics_query_parse(NULL, &q, err, sizeof(err)), 0);
    assert_true(q.to >= now && q.to <= now + 2);
    assert_int_equal(q.from % 60, 0);
    assert_true(q.to - q.from >= 3600 && q.to - q.from < 3660);
    assert_int_equal(q.step, 60);
    assert_int_equal(q.business_match, METRICS_MATCH_ANY);

    assert_int_equal(metrics_query_parse("businessId=7&sceneId=-&from=6030&to=12000&step=300", &q,
                                         err, sizeof(err)),
                     0);
    assert_int_equal(q.business_match, METRICS_MATCH_ID);
    assert_int_equal(q.business_id, 7);
    assert_int_equal(q.scene_match, METRICS_MATCH_ABSENT);
    assert_int_equal(q.from, 6000);
    assert_int_equal(q.to, 12000);
    assert_int_equal(q.step, 300);
    assert_int_equal(metrics_query_parse("from=6000", &q, err, sizeof(err)), 0);
    assert_int_equal(q.to, 9600);

    static const struct {
        const char *qs, *needle;
    } bad[] = {
        {"businessId=abc", "businessId"},
        {"sceneId=-1", "sceneId"},
        {"businessId=4294967296", "businessId"},
        {"from=x", "from"},
        {"to=-5", "to"},
        {"step=90", "step"},
        {"step=0", "step"},
        {"from=6000&to=6000", "to must be later than from"},
        {"from=10&to=5", "to must be later than from"}, /* not hidden by minute alignment */
        {"from=0&to=86460", "limit is 1440"},
        {"color=red", "unknown parameter color"},
        {"from=1&from=2", "from"},
        {"group=day", "group must be business, scene, app or none"},
        {"fill=linear", "fill must be zero or none"},
        {"app=no%20space", "app must be an app name"},
        {"app=a&app=b", "app"},
        {"app=a&businessId=1", "app cannot be combined with businessId"},
        {"group=app&sceneId=-", "group=app cannot be combined"},
        {"app=a&group=business", "app cannot be combined with group=business"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = 0;
        assert_int_equal(metrics_query_parse(bad[i].qs, &q, err, sizeof(err)), -1);
        if (!strstr(err, bad[i].needle)) fail_msg("%s: %s", bad[i].qs, err);
    }
    assert_int_equal(metrics_query_parse("from=0&to=86400", &q, err, sizeof(err)), 0);
    assert_int_equal(q.group, METRICS_GROUP_SCENE);
    assert_false(q.by_app || q.fill_none);
    assert_int_equal(metrics_query_parse("app=partner-42&fill=none", &q, err, sizeof(err)), 0);
    assert_string_equal(q.app, "partner-42");
    assert_int_equal(q.group, METRICS_GROUP_APP); /* app= alone: its own group */
    assert_true(q.by_app && q.fill_none);
    assert_int_equal(metrics_query_parse("app=-&group=none", &q, err, sizeof(err)), 0);
    assert_int_equal(q.group, METRICS_GROUP_NONE);
    assert_true(q.by_app);
    assert_int_equal(metrics_query_parse("group=business&businessId=3", &q, err, sizeof(err)), 0);
    assert_int_equal(q.group, METRICS_GROUP_BUSINESS);
    assert_false(q.by_app);
}

/* An id in the reply: a number, or "-" when absent (want -1). */
static int id_is(json_t *v, long long want) {
    if (want < 0) return json_is_string(v) && strcmp(json_string_value(v), "-") == 0;
    return json_is_integer(v) && json_integer_value(v) == want;
}

/* The pair (b, s) of the reply; -1 stands for "-". Borrowed from root. */
static json_t *find_pair(json_t *root, long long b, long long s) {
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(root, "groups"), i, p) {
        if (id_is(json_object_get(p, "businessId"), b) && id_is(json_object_get(p, "sceneId"), s))
            return p;
    }
    return NULL;
}

static json_int_t jint(json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    if (!v) return -1;
    return json_integer_value(v);
}

static void test_query_json(void **state) {
    struct metrics_batch *b = metrics_batch_new();
    struct metrics_query q;
    char err[256];
    struct pipeline_record rs[] = {
        rec(6000, 1, 1, 1, 2, PIPELINE_FORWARDED, 0, 500),
        rec(6059, 1, 1, 1, 2, PIPELINE_FORWARDED, 0, 500),
        rec(6061, 1, 1, 1, 2, PIPELINE_LIMITED, 4400, 2000),
        rec(6300, 1, 1, 1, 2, PIPELINE_FORWARDED, 5100, 20000),
        rec(6000, 0, 0, 0, 0, PIPELINE_INVALID, 4000, 100),
        rec(5999, 1, 1, 1, 2, PIPELINE_FORWARDED, 0, 1), /* before from */
        rec(6600, 1, 1, 1, 2, PIPELINE_FORWARDED, 0, 1), /* at to: excluded */
    };
    memcpy(rs[2].rule, "login", sizeof("login")); /* the refusal names its rule */
    for (size_t i = 0; i < sizeof(rs) / sizeof(rs[0]); i++)
        assert_int_equal(metrics_batch_add(b, &rs[i], SIZE_MAX), 0);
    assert_int_equal(metrics_query_parse("from=6000&to=6600&step=300", &q, err, sizeof(err)), 0);
    char *text = metrics_query_json(&q, b, NULL, 0);
    json_t *root = json_loads(text, 0, NULL);
    assert_non_null(root);
    assert_int_equal(jint(root, "from"), 6000);
    assert_int_equal(jint(root, "to"), 6600);
    assert_int_equal(jint(root, "step"), 300);
    assert_int_equal(json_array_size(json_object_get(root, "groups")), 2);
    /* numbers first, "-" last */
    assert_int_equal(jint(json_array_get(json_object_get(root, "groups"), 0), "businessId"), 1);
    json_t *p = find_pair(root, 1, 2);
    assert_non_null(p);
    json_t *t = json_object_get(p, "totals");
    assert_int_equal(jint(t, "requests"), 4);
    assert_int_equal(jint(t, "forwarded"), 3);
    assert_int_equal(jint(t, "limited"), 1);
    assert_int_equal(jint(t, "pool"), 0); /* totals hold every field */
    assert_int_equal(jint(t, "code:0"), 2);
    assert_int_equal(jint(t, "code:4400"), 1);
    assert_int_equal(jint(t, "code:5100"), 1);
    assert_int_equal(jint(t, "rule:login"), 1);
    assert_int_equal(jint(t, "latency_us_sum"), 23000);
    assert_int_equal(jint(t, "le_1ms"), 2);
    assert_int_equal(jint(t, "le_5ms"), 1);
    assert_int_equal(jint(t, "le_50ms"), 1);
    json_t *series = json_object_get(p, "series");
    assert_int_equal(json_array_size(series), 2);
    json_t *s0 = json_array_get(series, 0), *s1 = json_array_get(series, 1);
    assert_int_equal(jint(s0, "ts"), 6000);
    assert_int_equal(jint(s0, "requests"), 3);
    assert_int_equal(jint(s0, "pool"), -1); /* zeros omitted in series */
    assert_int_equal(jint(s1, "ts"), 6300);
    assert_int_equal(jint(s1, "requests"), 1);
    assert_int_equal(jint(s1, "code:5100"), 1);
    assert_int_equal(jint(s0, "rule:login"), 1);
    assert_int_equal(jint(s1, "rule:login"), 0);
    assert_int_equal(jint(s1, "code:0"), 0); /* fill zero: every field of the totals */
    assert_int_equal(jint(s1, "pool"), -1);  /* but none that is zero throughout */
    p = find_pair(root, -1, -1);
    assert_non_null(p);
    assert_int_equal(jint(json_object_get(p, "totals"), "invalid"), 1);
    t = json_object_get(root, "totals");
    assert_int_equal(jint(t, "requests"), 5);
    assert_int_equal(jint(t, "code:4000"), 1);
    json_decref(root);
    free(text);

    /* filters */
    assert_int_equal(metrics_query_parse("businessId=-&from=6000&to=6600", &q, err, sizeof(err)),
                     0);
    text = metrics_query_json(&q, b, NULL, 0);
    root = json_loads(text, 0, NULL);
    assert_int_equal(json_array_size(json_object_get(root, "groups")), 1);
    assert_non_null(find_pair(root, -1, -1));
    assert_int_equal(json_array_size(json_object_get(find_pair(root, -1, -1), "series")), 10);
    json_decref(root);
    free(text);
    assert_int_equal(
        metrics_query_parse("businessId=1&sceneId=3&from=6000&to=6600", &q, err, sizeof(err)), 0);
    text = metrics_query_json(&q, b, NULL, 0);
    root = json_loads(text, 0, NULL);
    assert_int_equal(json_array_size(json_object_get(root, "groups")), 0);
    assert_int_equal(jint(json_object_get(root, "totals"), "requests"), 0);
    json_decref(root);
    free(text);
    metrics_batch_free(b);
}

/* ---- end to end ---- */

struct query_result {
    int calls;
    int status;
    json_t *json;
    struct event_base *base;
};

static void query_done(const char *json, int status, void *arg) {
    struct query_result *r = arg;
    r->calls++;
    r->status = status;
    r->json = json_loads(json, 0, NULL);
    event_base_loopbreak(r->base);
}

static json_t *run_query(struct metrics *m, const char *qs, int *status) {
    struct metrics_query q;
    char err[256];
    struct query_result r = {0};
    struct timeval limit = {10, 0};
    assert_int_equal(metrics_query_parse(qs, &q, err, sizeof(err)), 0);
    r.base = event_base_new();
    metrics_query(m, &q, r.base, query_done, &r);
    assert_int_equal(r.calls, 0); /* never inside the call */
    event_base_loopexit(r.base, &limit);
    event_base_dispatch(r.base);
    assert_int_equal(r.calls, 1);
    event_base_free(r.base);
    *status = r.status;
    return r.json;
}

static void test_memory_mode(void **state) {
    struct config cfg;
    char err[256], qs[128];
    int status;
    memset(&cfg, 0, sizeof(cfg));
    cfg.metrics.flush_ms = 60000; /* only explicit flushes in this test */
    cfg.metrics.retention_s = 3600;
    struct metrics *m = metrics_new(&cfg, 2, err, sizeof(err));
    assert_non_null(m);
    uint64_t now = clock_wall_us() / 1000000u;
    uint64_t m0 = (now / 60 - 2) * 60, m1 = m0 + 60;
    for (int i = 0; i < 50; i++) {
        struct pipeline_record r =
            rec(i % 2 ? m0 : m1, 1, 5, 1, 6, i % 5 ? PIPELINE_FORWARDED : PIPELINE_DENIED,
                i % 5 ? 0 : 4300, 1500);
        metrics_record(m, (unsigned)(i % 2), &r);
    }
    struct pipeline_record old = rec(now - 7200, 1, 5, 1, 6, PIPELINE_FORWARDED, 0, 1);
    metrics_record(m, 0, &old); /* beyond retention: pruned */
    metrics_record(m, 9, &old); /* no such worker: dropped */
    metrics_flush(m);
    /* a second round after the flush lands in the same tables */
    struct pipeline_record more = rec(m1, 1, 5, 1, 6, PIPELINE_POOL, 0, 200);
    metrics_record(m, 1, &more);
    metrics_flush(m);

    snprintf(qs, sizeof(qs), "from=%llu&to=%llu", (unsigned long long)(now - 10800),
             (unsigned long long)now + 60);
    json_t *root = run_query(m, qs, &status);
    assert_int_equal(status, 200);
    assert_non_null(root);
    json_t *p = find_pair(root, 5, 6);
    assert_non_null(p);
    json_t *t = json_object_get(p, "totals");
    assert_int_equal(jint(t, "requests"), 51);
    assert_int_equal(jint(t, "forwarded"), 40);
    assert_int_equal(jint(t, "denied"), 10);
    assert_int_equal(jint(t, "pool"), 1);
    assert_int_equal(jint(t, "code:4300"), 10);
    assert_int_equal(jint(t, "code:0"), 41);
    assert_int_equal(jint(t, "le_5ms"), 50);
    assert_int_equal(jint(t, "le_1ms"), 1);
    assert_int_equal(jint(t, "latency_us_sum"), 50 * 1500 + 200);
    json_decref(root);

    /* one minute only */
    snprintf(qs, sizeof(qs), "businessId=5&from=%llu&to=%llu", (unsigned long long)m0,
             (unsigned long long)m1);
    root = run_query(m, qs, &status);
    assert_int_equal(jint(json_object_get(root, "totals"), "requests"), 25);
    json_decref(root);

    struct metrics_stats st;
    metrics_get_stats(m, &st);
    assert_int_equal(st.flushes, 2);
    assert_int_equal(st.flush_errors, 0);
    assert_int_equal(st.pending_keys, 0);
    assert_int_equal(st.dropped_requests, 1);
    metrics_free(m);
}

/* Without Redis the in-process tables are bounded whatever the clients send: distinct sceneIds
 * beyond METRICS_MEMORY_MAX_KEYS drop the oldest minutes, counted. */
static void test_memory_mode_bounded(void **state) {
    struct config cfg;
    char err[256];
    struct metrics_stats st;
    const uint32_t per_minute = METRICS_MEMORY_MAX_KEYS / 2 + 1000;
    memset(&cfg, 0, sizeof(cfg));
    cfg.metrics.flush_ms = 60000; /* only explicit flushes */
    cfg.metrics.retention_s = 3600;
    struct metrics *m = metrics_new(&cfg, 1, err, sizeof(err));
    assert_non_null(m);
    uint64_t now = clock_wall_us() / 1000000u;
    uint64_t m0 = (now / 60 - 2) * 60, m1 = m0 + 60;
    for (int minute = 0; minute < 2; minute++) {
        for (uint32_t s = 0; s < per_minute; s++) {
            struct pipeline_record r = rec(minute ? m1 : m0, 1, 5, 1, s, PIPELINE_FORWARDED, 0, 1);
            metrics_record(m, 0, &r);
            if ((s + 1) % 50000 == 0) metrics_flush(m);
        }
        metrics_flush(m);
    }
    metrics_get_stats(m, &st);
    assert_int_equal(st.dropped_keys, per_minute + 1); /* the older minute, whole: its pairs
                                                        * and its app's cell */
    assert_int_equal(st.dropped_requests, per_minute);
    metrics_free(m);
}

/* Workers record while the flush thread keeps taking their batches: nothing is lost or counted
 * twice. */
/* The tasks of this process other than the caller, as thread ids; n returned, at most cap. */
static size_t other_tasks(long *out, size_t cap) {
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    size_t n = 0;
    long self = (long)gettid();
    assert_non_null(d);
    while ((e = readdir(d)) && n < cap) {
        long id = strtol(e->d_name, NULL, 10);
        if (id > 0 && id != self) out[n++] = id;
    }
    closedir(d);
    return n;
}

/* The SigBlk mask of thread tid, from /proc. */
static unsigned long long task_sigblk(long tid) {
    char path[64], line[256];
    unsigned long long mask = 0;
    snprintf(path, sizeof(path), "/proc/self/task/%ld/status", tid);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "SigBlk: %llx", &mask) == 1) break;
    fclose(f);
    return mask;
}

/* The flush thread must never take SIGHUP/SIGTERM/SIGINT (the main thread's loop handles them;
 * taken here, an EINTR fails hiredis's blocking connect): it is started with them blocked, even
 * when the caller has them unblocked. */
static void test_flush_thread_blocks_signals(void **state) {
    struct config cfg;
    char err[256];
    long before[64], after[64];
    sigset_t none, old;
    memset(&cfg, 0, sizeof(cfg));
    cfg.metrics.flush_ms = 60000;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, &old);
    size_t nb = other_tasks(before, 64);
    struct metrics *m = metrics_new(&cfg, 1, err, sizeof(err));
    assert_non_null(m);
    size_t na = other_tasks(after, 64), checked = 0;
    for (size_t i = 0; i < na; i++) {
        int known = 0;
        for (size_t j = 0; j < nb; j++) known |= before[j] == after[i];
        if (known) continue;
        unsigned long long blk = task_sigblk(after[i]);
        assert_true(blk & (1ull << (SIGHUP - 1)));
        assert_true(blk & (1ull << (SIGINT - 1)));
        assert_true(blk & (1ull << (SIGTERM - 1)));
        checked++;
    }
    assert_true(checked >= 1);
    metrics_free(m);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

struct worker_arg {
    struct metrics *m;
    unsigned id;
    uint64_t ts;
};

static void *worker_main(void *arg) {
    struct worker_arg *w = arg;
    for (int i = 0; i < 20000; i++) {
        struct pipeline_record r =
            rec(w->ts, 1, 77, 1, (uint32_t)(i % 7), PIPELINE_FORWARDED, 0, 10);
        metrics_record(w->m, w->id, &r);
    }
    return NULL;
}

static void test_concurrent_handover(void **state) {
    struct config cfg;
    char err[256], qs[128];
    int status;
    pthread_t t[2];
    memset(&cfg, 0, sizeof(cfg));
    cfg.metrics.flush_ms = 1;
    cfg.metrics.retention_s = 3600;
    struct metrics *m = metrics_new(&cfg, 2, err, sizeof(err));
    assert_non_null(m);
    uint64_t now = clock_wall_us() / 1000000u;
    struct worker_arg wa[2] = {{m, 0, now - 120}, {m, 1, now - 120}};
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &wa[i]), 0);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    metrics_flush(m);
    snprintf(qs, sizeof(qs), "businessId=77&from=%llu&to=%llu", (unsigned long long)(now - 600),
             (unsigned long long)now + 60);
    json_t *root = run_query(m, qs, &status);
    assert_int_equal(status, 200);
    assert_int_equal(jint(json_object_get(root, "totals"), "requests"), 40000);
    assert_int_equal(json_array_size(json_object_get(root, "groups")), 7);
    json_decref(root);
    struct metrics_stats st;
    metrics_get_stats(m, &st);
    assert_true(st.flushes >= 1);
    assert_int_equal(st.dropped_requests, 0);
    metrics_free(m);
}

/* A redis-server of our own on a free loopback port (redis_server.h). */
static struct redis_server redis = {.pid = -1};

static redisContext *redis_client(void) {
    return redis_server_connect(&redis);
}

static void redis_start(void) {
    assert_int_equal(redis_server_start(&redis), 0);
}

static void redis_stop(void) {
    redis_server_stop(&redis);
}

static long long redis_int(redisContext *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    long long v = r->type == REDIS_REPLY_INTEGER  ? r->integer
                  : r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10)
                                                  : -1;
    freeReplyObject(r);
    return v;
}

static void test_redis_mode(void **state) {
    struct config cfg;
    struct config_redis rc;
    char err[256], key[128], qs[128];
    int status;
    redis.port = redis_server_free_port();
    redis_start();
    memset(&cfg, 0, sizeof(cfg));
    memset(&rc, 0, sizeof(rc));
    rc.host = "127.0.0.1";
    rc.port = redis.port;
    rc.timeout_ms = 500;
    rc.key_prefix = "t:";
    cfg.redis = &rc;
    cfg.metrics.flush_ms = 60000;
    cfg.metrics.retention_s = 600;
    struct metrics *m = metrics_new(&cfg, 2, err, sizeof(err));
    assert_non_null(m);

    uint64_t now = clock_wall_us() / 1000000u;
    uint64_t m0 = (now / 60 - 3) * 60, m1 = m0 + 60;
    for (int i = 0; i < 30; i++) {
        struct pipeline_record r =
            rec(i < 20 ? m0 + 5 : m1 + 5, 1, 11, 0, 0,
                i % 3 ? PIPELINE_FORWARDED : PIPELINE_UPSTREAM_ERROR, i % 3 ? 0 : 6200, 60000);
        if (i < 5) memcpy(r.app, "partner-42", sizeof("partner-42"));
        metrics_record(m, (unsigned)(i % 2), &r);
    }
    struct pipeline_record other = rec(m1, 1, 2, 1, 4, PIPELINE_LIMITED, 4400, 10);
    memcpy(other.rule, "tight", sizeof("tight"));
    metrics_record(m, 0, &other);
    metrics_flush(m);

    redisContext *c = redis_client();
    assert_non_null(c);
    snprintf(key, sizeof(key), "t:m:11:-:%llu", (unsigned long long)(m0 / 60));
    assert_int_equal(redis_int(c, "HGET %s requests", key), 20);
    assert_int_equal(redis_int(c, "HGET %s forwarded", key), 13);
    assert_int_equal(redis_int(c, "HGET %s upstream_error", key), 7);
    assert_int_equal(redis_int(c, "HGET %s code:6200", key), 7);
    assert_int_equal(redis_int(c, "HGET %s le_100ms", key), 20);
    assert_int_equal(redis_int(c, "HGET %s latency_us_sum", key), 20 * 60000);
    assert_int_equal(redis_int(c, "HEXISTS %s pool", key), 0); /* zeros are not written */
    long long ttl = redis_int(c, "TTL %s", key);
    assert_true(ttl > 0 && ttl <= 600);
    ttl = redis_int(c, "TTL t:m:index");
    assert_true(ttl > 0 && ttl <= 600);
    assert_int_equal(redis_int(c, "SCARD t:m:index"), 2);
    assert_int_equal(redis_int(c, "SISMEMBER t:m:index 11:-"), 1);
    assert_int_equal(redis_int(c, "SISMEMBER t:m:index 2:4"), 1);
    /* per app: the same fields, once more per request */
    snprintf(key, sizeof(key), "t:m:app:partner-42:%llu", (unsigned long long)(m0 / 60));
    assert_int_equal(redis_int(c, "HGET %s requests", key), 5);
    assert_int_equal(redis_int(c, "HGET %s upstream_error", key), 2);
    snprintf(key, sizeof(key), "t:m:app:-:%llu", (unsigned long long)(m0 / 60));
    assert_int_equal(redis_int(c, "HGET %s requests", key), 15);
    assert_int_equal(redis_int(c, "SCARD t:m:apps"), 2);
    ttl = redis_int(c, "TTL t:m:apps");
    assert_true(ttl > 0 && ttl <= 600);
    snprintf(key, sizeof(key), "t:m:11:-:%llu", (unsigned long long)(m0 / 60));

    /* a query across both minutes sums them */
    snprintf(qs, sizeof(qs), "from=%llu&to=%llu", (unsigned long long)m0,
             (unsigned long long)m1 + 60);
    json_t *root = run_query(m, qs, &status);
    assert_int_equal(status, 200);
    json_t *p = find_pair(root, 11, -1);
    assert_non_null(p);
    assert_int_equal(jint(json_object_get(p, "totals"), "requests"), 30);
    assert_int_equal(jint(json_object_get(p, "totals"), "upstream_error"), 10);
    assert_int_equal(json_array_size(json_object_get(p, "series")), 2);
    assert_int_equal(jint(json_array_get(json_object_get(p, "series"), 1), "requests"), 10);
    assert_int_equal(jint(json_object_get(root, "totals"), "requests"), 31);
    assert_int_equal(jint(json_object_get(root, "totals"), "code:4400"), 1);
    json_decref(root);
    /* grouped by app: the same totals; one app alone; fill none leaves out empty minutes */
    snprintf(qs, sizeof(qs), "from=%llu&to=%llu&group=app&fill=none", (unsigned long long)m0,
             (unsigned long long)m1 + 120);
    root = run_query(m, qs, &status);
    assert_int_equal(status, 200);
    assert_int_equal(jint(json_object_get(root, "totals"), "requests"), 31);
    assert_int_equal(json_array_size(json_object_get(root, "groups")), 2);
    p = json_array_get(json_object_get(root, "groups"), 0);
    assert_string_equal(json_string_value(json_object_get(p, "app")), "-");
    assert_int_equal(jint(json_object_get(p, "totals"), "requests"), 26);
    assert_int_equal(json_array_size(json_object_get(p, "series")), 2);
    assert_int_equal(json_array_size(json_object_get(root, "series")), 2); /* of 3 steps */
    json_decref(root);
    snprintf(qs, sizeof(qs), "from=%llu&to=%llu&app=partner-42", (unsigned long long)m0,
             (unsigned long long)m1 + 60);
    root = run_query(m, qs, &status);
    assert_int_equal(status, 200);
    assert_int_equal(jint(json_object_get(root, "totals"), "requests"), 5);
    assert_int_equal(json_array_size(json_object_get(root, "groups")), 1);
    json_decref(root);

    /* a second flush adds to the same hashes */
    metrics_record(m, 1, &other);
    metrics_flush(m);
    snprintf(key, sizeof(key), "t:m:2:4:%llu", (unsigned long long)(m1 / 60));
    assert_int_equal(redis_int(c, "HGET %s limited", key), 2);
    assert_int_equal(redis_int(c, "HGET %s rule:tight", key), 2);
    redisFree(c);

    /* Redis down: the sums are kept, queries answer 503, and they arrive after the restart */
    redis_stop();
    for (int i = 0; i < 4; i++) metrics_record(m, (unsigned)(i % 2), &other);
    metrics_flush(m);
    struct metrics_stats st;
    metrics_get_stats(m, &st);
    assert_int_equal(st.flush_errors, 1);
    assert_int_equal(st.pending_keys, 2); /* the pair's hash and the app's */
    metrics_record(m, 0, &other);
    metrics_flush(m);
    metrics_get_stats(m, &st);
    assert_int_equal(st.flush_errors, 2);
    /* queries answer from this process's own counts, said to be partial */
    snprintf(qs, sizeof(qs), "from=%llu&to=%llu", (unsigned long long)m0,
             (unsigned long long)m1 + 60);
    root = run_query(m, qs, &status);
    assert_int_equal(status, 200);
    assert_true(json_is_true(json_object_get(root, "partial")));
    assert_non_null(strstr(json_string_value(json_object_get(root, "reason")), "redis"));
    assert_true(jint(root, "since") > 0);
    /* 32 counted and flushed before, 5 since (held): all this process's */
    assert_int_equal(jint(json_object_get(root, "totals"), "requests"), 37);
    json_decref(root);

    redis_start(); /* empty: --save '' */
    metrics_flush(m);
    metrics_get_stats(m, &st);
    assert_int_equal(st.pending_keys, 0);
    assert_int_equal(st.flushes, 3);
    c = redis_client();
    assert_non_null(c);
    assert_int_equal(redis_int(c, "HGET %s limited", key), 5);
    assert_int_equal(redis_int(c, "HGET %s requests", key), 5);
    redisFree(c);

    /* the final flush of metrics_free */
    metrics_record(m, 0, &other);
    metrics_free(m);
    c = redis_client();
    assert_int_equal(redis_int(c, "HGET %s requests", key), 6);
    redisFree(c);
    redis_stop();
}

/* An EXEC that ran but answered after redis.timeout_ms is not written again (the batch key of
 * the late batch shows it landed), and a batch that never ran is sent again: the hash counts
 * equal the requests recorded, exactly. The late reply: the server is stopped (SIGSTOP) with the
 * flush sent to it, continued after the flush timed out. */
static long long wait_count(const char *key, long long want) {
    long long v = -1;
    for (int i = 0; i < 500; i++) { /* up to 5 s for the late EXEC to run */
        redisContext *c = redis_client();
        assert_non_null(c);
        v = redis_int(c, "HGET %s requests", key);
        redisFree(c);
        if (v >= want) break;
        usleep(10000);
    }
    return v;
}

static void test_redis_late_exec(void **state) {
    struct config cfg;
    struct config_redis rc;
    char err[256], key[128];
    (void)state;
    redis.port = redis_server_free_port();
    redis_start();
    memset(&cfg, 0, sizeof(cfg));
    memset(&rc, 0, sizeof(rc));
    rc.host = "127.0.0.1";
    rc.port = redis.port;
    rc.timeout_ms = 200;
    rc.key_prefix = "late:";
    cfg.redis = &rc;
    cfg.metrics.flush_ms = 60000;
    cfg.metrics.retention_s = 600;
    struct metrics *m = metrics_new(&cfg, 1, err, sizeof(err));
    assert_non_null(m);
    uint64_t m0 = (clock_wall_us() / 60000000u - 1) * 60;
    snprintf(key, sizeof(key), "late:m:7:-:%llu", (unsigned long long)(m0 / 60));
    struct pipeline_record r = rec(m0 + 1, 1, 7, 0, 0, PIPELINE_FORWARDED, 0, 1000);

    /* a first flush opens the connection */
    for (int i = 0; i < 3; i++) metrics_record(m, 0, &r);
    metrics_flush(m);
    assert_int_equal(wait_count(key, 3), 3);

    /* the next batch reaches a stopped server: no reply within the timeout */
    for (int i = 0; i < 5; i++) metrics_record(m, 0, &r);
    assert_int_equal(kill(redis.pid, SIGSTOP), 0);
    metrics_flush(m);
    struct metrics_stats st;
    metrics_get_stats(m, &st);
    assert_int_equal(st.flush_errors, 1);
    assert_int_equal(kill(redis.pid, SIGCONT), 0);
    /* the server runs the batch late */
    assert_int_equal(wait_count(key, 8), 8);

    /* the next flush finds the batch written and does not send it again */
    for (int i = 0; i < 2; i++) metrics_record(m, 0, &r);
    metrics_flush(m);
    redisContext *c = redis_client();
    assert_non_null(c);
    assert_int_equal(redis_int(c, "HGET %s requests", key), 10);
    assert_int_equal(redis_int(c, "HGET %s forwarded", key), 10);
    redisFree(c);
    metrics_get_stats(m, &st);
    assert_int_equal(st.pending_keys, 0);

    /* a batch that never ran (the stopped server is killed, a new empty one takes its port) is
     * sent again, once */
    for (int i = 0; i < 4; i++) metrics_record(m, 0, &r);
    assert_int_equal(kill(redis.pid, SIGSTOP), 0);
    metrics_flush(m);
    assert_int_equal(kill(redis.pid, SIGKILL), 0);
    redis_stop();
    redis_start();
    metrics_flush(m);
    metrics_get_stats(m, &st);
    assert_int_equal(st.pending_keys, 0);
    c = redis_client();
    assert_non_null(c);
    assert_int_equal(redis_int(c, "HGET %s requests", key), 4);
    redisFree(c);
    metrics_free(m);
    c = redis_client();
    assert_int_equal(redis_int(c, "HGET %s requests", key), 4);
    redisFree(c);
    redis_stop();
}

static int teardown_redis(void **state) {
    redis_stop();
    return 0;
}

int main(void) {
    evthread_use_pthreads();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_buckets),
        cmocka_unit_test(test_cell_fields),
        cmocka_unit_test(test_batch_merge_and_trim),
        cmocka_unit_test(test_query_parse),
        cmocka_unit_test(test_query_json),
        cmocka_unit_test(test_memory_mode),
        cmocka_unit_test(test_memory_mode_bounded),
        cmocka_unit_test(test_concurrent_handover),
        cmocka_unit_test(test_flush_thread_blocks_signals),
        cmocka_unit_test_teardown(test_redis_mode, teardown_redis),
        cmocka_unit_test_teardown(test_redis_late_exec, teardown_redis),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
