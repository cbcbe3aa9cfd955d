/* test_audit.c: audit records (JSON, stream fields, PII hashing), query parsing, the per-worker
 * queues (a producer thread against the sink, order and count) and the sink against a real
 * redis-server started here: live XADDs, spooling while Redis is down, ordered idempotent
 * replay when it returns, and replay of a spool left by an earlier audit object. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "audit.h"
#include "audit_internal.h"
#include "capgate/log.h"
#include "capgate/params.h"
#include "capgate/strbuf.h"
#include "config.h"
#include "record.h"
#include "redis_server.h"

static const char pii_key[] = "test-pii-key-0123456789";

/* Linked with -Wl,--wrap=calloc: while fail_pointer_arrays is set, every calloc of pointer-sized
 * elements (the sink's arrays of records) fails, as on an out-of-memory. */
static atomic_int fail_pointer_arrays;
void *__real_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size) {
    if (size == sizeof(void *) && atomic_load(&fail_pointer_arrays)) return NULL;
    return __real_calloc(n, size);
}

static void hex_prefix(const unsigned char *md, size_t bytes, char *out) {
    for (size_t i = 0; i < bytes; i++) snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static void expected_hmac(const char *value, char out[33]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    assert_non_null(HMAC(EVP_sha256(), pii_key, (int)strlen(pii_key), (const unsigned char *)value,
                         strlen(value), md, &len));
    hex_prefix(md, 16, out);
}

static void sample_pipeline_record(struct pipeline_record *pr, const char *request_id) {
    memset(pr, 0, sizeof(*pr));
    pr->ts_us = 1764351822123000ull; /* 2025-11-28T17:43:42.123Z */
    snprintf(pr->request_id, sizeof(pr->request_id), "%s", request_id);
    snprintf(pr->app, sizeof(pr->app), "shop-web");
    snprintf(pr->client_ip, sizeof(pr->client_ip), "127.0.0.1");
    snprintf(pr->action, sizeof(pr->action), "CaptchaIframeQuery");
    pr->has_business_id = 1;
    pr->business_id = 7;
    pr->has_scene_id = 0;
    pr->has_captcha_type = 1;
    pr->captcha_type = 9;
    pr->has_client_type = 1;
    pr->client_type = 2;
    pr->has_account_type = 1;
    pr->account_type = 4;
    pr->decision = PIPELINE_LIMITED;
    snprintf(pr->rule, sizeof(pr->rule), "login");
    pr->code = 4400;
    snprintf(pr->code_desc, sizeof(pr->code_desc), "LimitExceeded");
    pr->http_status = 200;
    pr->upstream_status = 0;
    pr->latency_us = 1234;
    pr->upstream_latency_us = 0;
}

static void sample_params(struct params *p) {
    params_init(p);
    assert_int_equal(params_adds(p, "Action", "CaptchaIframeQuery"), 0);
    assert_int_equal(params_adds(p, "SecretId", "AKIDsecretidvalue"), 0);
    assert_int_equal(params_adds(p, "Signature", "c2lnbmF0dXJlLXZhbHVl"), 0);
    assert_int_equal(params_adds(p, "uid", "user-42"), 0);
    assert_int_equal(params_adds(p, "userIp", "203.0.113.9"), 0);
    assert_int_equal(params_adds(p, "imei", "356938035643809"), 0);
    assert_int_equal(params_adds(p, "macAddress", "00:11:22:33:44:55"), 0);
    assert_int_equal(params_adds(p, "associateAccount", "alice@example.com"), 0);
}

static struct config_audit audit_cfg(int raw) {
    struct config_audit c = {0};
    c.stream = "capgate:audit";
    c.maxlen = 1000;
    c.pii_raw = raw;
    c.pii_key = (char *)pii_key;
    c.pii_key_len = strlen(pii_key);
    return c;
}

static json_t *record_object(const struct audit_record *r) {
    struct strbuf b;
    strbuf_init(&b);
    assert_int_equal(audit_record_json(r, &b), 0);
    json_t *o = json_loads(b.s, 0, NULL);
    assert_non_null(o);
    assert_null(strstr(b.s, "AKIDsecretidvalue"));
    assert_null(strstr(b.s, "c2lnbmF0dXJlLXZhbHVl"));
    assert_null(strstr(b.s, "Signature"));
    assert_null(strstr(b.s, "asig"));
    strbuf_cleanup(&b);
    return o;
}

static const char *jstr(json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    assert_true(json_is_string(v));
    return json_string_value(v);
}

static long long jint(json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    assert_true(json_is_integer(v));
    return json_integer_value(v);
}

static void test_record_json_hashed(void **state) {
    struct pipeline_record pr;
    struct params p;
    struct audit_record r;
    struct config_audit cfg = audit_cfg(0);
    const char *url = "https://captcha.example/template/TCapIframeApi.js?appid=1&asig=secretasig";
    sample_pipeline_record(&pr, "0123456789abcdef");
    sample_params(&p);
    assert_int_equal(audit_record_init(&r, &pr, &p, url, &cfg, "host:1"), 0);
    json_t *o = record_object(&r);
    assert_int_equal(json_object_size(o), 26);
    assert_string_equal(jstr(o, "ts"), "2025-11-28T17:43:42.123Z");
    assert_string_equal(jstr(o, "api"), "v2");
    assert_true(json_is_null(json_object_get(o, "secret_id")));
    assert_string_equal(jstr(o, "request_id"), "0123456789abcdef");
    assert_string_equal(jstr(o, "instance"), "host:1");
    assert_string_equal(jstr(o, "app"), "shop-web");
    assert_string_equal(jstr(o, "client_ip"), "127.0.0.1");
    assert_string_equal(jstr(o, "action"), "CaptchaIframeQuery");
    assert_int_equal(jint(o, "businessId"), 7);
    assert_true(json_is_null(json_object_get(o, "sceneId")));
    assert_int_equal(jint(o, "captchaType"), 9);
    assert_int_equal(jint(o, "clientType"), 2);
    assert_int_equal(jint(o, "accountType"), 4);
    assert_string_equal(jstr(o, "decision"), "limited");
    assert_string_equal(jstr(o, "rule"), "login");
    assert_int_equal(jint(o, "code"), 4400);
    assert_string_equal(jstr(o, "codeDesc"), "LimitExceeded");
    assert_int_equal(jint(o, "upstream_status"), 0);
    assert_int_equal(jint(o, "latency_us"), 1234);
    assert_int_equal(jint(o, "upstream_latency_us"), 0);
    static const char *const pii[][2] = {{"uid", "user-42"},
                                         {"userIp", "203.0.113.9"},
                                         {"imei", "356938035643809"},
                                         {"macAddress", "00:11:22:33:44:55"},
                                         {"associateAccount", "alice@example.com"}};
    for (size_t i = 0; i < 5; i++) {
        char want[33];
        expected_hmac(pii[i][1], want);
        assert_string_equal(jstr(o, pii[i][0]), want);
    }
    unsigned char md[SHA256_DIGEST_LENGTH];
    char want_url[17];
    SHA256((const unsigned char *)url, strlen(url), md);
    hex_prefix(md, 8, want_url);
    assert_string_equal(jstr(o, "url_sha256"), want_url);
    json_decref(o);

    /* JSON and stream fields both read back to the same record */
    struct strbuf b;
    struct audit_record back;
    strbuf_init(&b);
    assert_int_equal(audit_record_json(&r, &b), 0);
    assert_int_equal(audit_record_from_json(b.s, b.len, &back), 0);
    back.http_status = r.http_status; /* the access line's only: not in the JSON */
    assert_memory_equal(&back, &r, sizeof(r));
    strbuf_cleanup(&b);
    struct audit_fields f;
    audit_record_fields(&r, &f);
    assert_int_equal(f.count, 24); /* sceneId absent */
    assert_string_equal(f.name[0], "ts");
    assert_memory_equal(f.value[0], "2025-11-28T17:43:42.123Z", 24);
    assert_int_equal(audit_record_from_fields(&back, f.count, f.name, f.value, f.value_len), 0);
    back.http_status = r.http_status; /* nor in the stream */
    assert_memory_equal(&back, &r, sizeof(r));
    /* a stream entry: its one "json" field (the JSON above), or the flat fields of earlier
     * versions, or both mixed with fields a consumer added: the same record each time */
    {
        const char *names[3] = {"note", AUDIT_STREAM_FIELD, "ts"};
        const char *values[3] = {"added by a consumer", NULL, "1999-01-01T00:00:00.000Z"};
        size_t lens[3] = {19, 0, 24};
        strbuf_init(&b);
        assert_int_equal(audit_record_json(&r, &b), 0);
        values[1] = b.s;
        lens[1] = b.len;
        memset(&back, 0xAA, sizeof(back));
        assert_int_equal(audit_record_from_entry(&back, 3, names, values, lens), 0);
        back.http_status = r.http_status;
        assert_memory_equal(&back, &r, sizeof(r));
        memset(&back, 0xAA, sizeof(back));
        assert_int_equal(audit_record_from_entry(&back, f.count, f.name, f.value, f.value_len), 0);
        back.http_status = r.http_status;
        assert_memory_equal(&back, &r, sizeof(r));
        /* a "json" field that is not a record's JSON is an error, not an empty record */
        values[1] = "{\"ts\":12}";
        lens[1] = strlen(values[1]);
        assert_int_equal(audit_record_from_entry(&back, 3, names, values, lens), -1);
        values[1] = "not json";
        lens[1] = strlen(values[1]);
        assert_int_equal(audit_record_from_entry(&back, 3, names, values, lens), -1);
        strbuf_cleanup(&b);
    }
    params_cleanup(&p);
}

static void test_record_raw_no_url(void **state) {
    struct pipeline_record pr;
    struct params p;
    struct audit_record r;
    struct config_audit cfg = audit_cfg(1);
    sample_pipeline_record(&pr, "fedcba9876543210");
    pr.decision = PIPELINE_FORWARDED;
    pr.rule[0] = '\0';
    pr.code = 0;
    pr.upstream_status = 200;
    pr.upstream_latency_us = 800;
    sample_params(&p);
    params_remove(&p, "imei");
    assert_int_equal(audit_record_init(&r, &pr, &p, NULL, &cfg, "i"), 0);
    json_t *o = record_object(&r);
    assert_string_equal(jstr(o, "uid"), "user-42");
    assert_string_equal(jstr(o, "associateAccount"), "alice@example.com");
    assert_true(json_is_null(json_object_get(o, "imei")));
    assert_true(json_is_null(json_object_get(o, "url_sha256")));
    assert_true(json_is_null(json_object_get(o, "rule")));
    assert_string_equal(jstr(o, "decision"), "forwarded");
    assert_int_equal(jint(o, "upstream_status"), 200);
    assert_int_equal(jint(o, "upstream_latency_us"), 800);
    json_decref(o);
    params_cleanup(&p);

    /* an unknown SecretId is kept, cut at 128 bytes; the record reads back the same */
    pr.app[0] = '\0';
    memset(pr.secret_id, 'S', sizeof(pr.secret_id) - 1);
    pr.secret_id[sizeof(pr.secret_id) - 1] = '\0';
    assert_int_equal(audit_record_init(&r, &pr, NULL, NULL, &cfg, "i"), 0);
    o = record_object(&r);
    assert_int_equal(strlen(jstr(o, "secret_id")), 128);
    json_decref(o);
    {
        struct strbuf b;
        struct audit_record back;
        strbuf_init(&b);
        assert_int_equal(audit_record_json(&r, &b), 0);
        assert_int_equal(audit_record_from_json(b.s, b.len, &back), 0);
        assert_string_equal(back.secret_id, r.secret_id);
        strbuf_cleanup(&b);
    }
    pr.secret_id[0] = '\0';

    /* no params at all: every per-user field is null */
    assert_int_equal(audit_record_init(&r, &pr, NULL, NULL, &cfg, "i"), 0);
    o = record_object(&r);
    assert_true(json_is_null(json_object_get(o, "uid")));
    assert_true(json_is_null(json_object_get(o, "userIp")));
    json_decref(o);

    /* a raw value longer than the buffer is cut at a UTF-8 boundary */
    params_init(&p);
    char longv[200];
    memset(longv, 'x', sizeof(longv));
    memcpy(longv + 63, "\xc3\xa9", 2); /* straddles the 64-byte cut */
    longv[199] = '\0';
    assert_int_equal(params_adds(&p, "uid", longv), 0);
    assert_int_equal(audit_record_init(&r, &pr, &p, NULL, &cfg, "i"), 0);
    assert_int_equal(strlen(r.uid), 63);
    params_cleanup(&p);
}

/* A reply without an API code (CaptchaQuery script=1's JavaScript, passed through): code is
 * null in JSON, left out of the stream's fields, and stays absent when read back. */
static void test_record_no_code(void **state) {
    struct pipeline_record pr;
    struct audit_record r, back;
    struct config_audit cfg = audit_cfg(1);
    struct audit_fields f;
    struct strbuf b;
    sample_pipeline_record(&pr, "00112233445566ff");
    pr.decision = PIPELINE_FORWARDED;
    pr.no_code = 1;
    pr.code_desc[0] = '\0';
    assert_int_equal(audit_record_init(&r, &pr, NULL, NULL, &cfg, "i"), 0);
    json_t *o = record_object(&r);
    assert_true(json_is_null(json_object_get(o, "code")));
    assert_string_equal(jstr(o, "codeDesc"), "");
    json_decref(o);
    audit_record_fields(&r, &f);
    for (size_t i = 0; i < f.count; i++) assert_string_not_equal(f.name[i], "code");
    strbuf_init(&b);
    assert_int_equal(audit_record_json(&r, &b), 0);
    assert_non_null(strstr(b.s, "\"code\":null,"));
    assert_int_equal(audit_record_from_json(b.s, b.len, &back), 0);
    assert_int_equal(back.has_code, 0);
    strbuf_cleanup(&b);
    /* with a code (0 included) it is there */
    pr.no_code = 0;
    pr.code = 0;
    assert_int_equal(audit_record_init(&r, &pr, NULL, NULL, &cfg, "i"), 0);
    audit_record_fields(&r, &f);
    int seen = 0;
    for (size_t i = 0; i < f.count; i++)
        if (strcmp(f.name[i], "code") == 0) seen = f.value_len[i] == 1 && f.value[i][0] == '0';
    assert_true(seen);
}

/* Config names are up to CONFIG_NAME_MAX bytes: the record and the app filter hold them whole. */
static void test_record_whole_names(void **state) {
    struct pipeline_record pr;
    struct audit_record r;
    struct audit_query q;
    struct config_audit cfg = audit_cfg(1);
    char name[CONFIG_NAME_MAX + 1], query[CONFIG_NAME_MAX + 8], err[256];
    memset(name, 'a', CONFIG_NAME_MAX);
    name[CONFIG_NAME_MAX] = '\0';
    name[CONFIG_NAME_MAX - 1] = 'z';
    sample_pipeline_record(&pr, "0011223344556677");
    snprintf(pr.app, sizeof(pr.app), "%s", name);
    snprintf(pr.rule, sizeof(pr.rule), "%s", name);
    assert_int_equal(audit_record_init(&r, &pr, NULL, NULL, &cfg, "i"), 0);
    assert_string_equal(r.app, name);
    assert_string_equal(r.rule, name);
    json_t *o = record_object(&r);
    assert_string_equal(jstr(o, "app"), name);
    assert_string_equal(jstr(o, "rule"), name);
    json_decref(o);
    snprintf(query, sizeof(query), "app=%s", name);
    assert_int_equal(audit_query_parse(query, &q, err, sizeof(err)), 0);
    assert_string_equal(q.app, name);
}

/* ---- audit_record_json against jansson ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void) { /* xorshift64*: the same records on every run */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

/* A valid UTF-8 string of up to size-1 bytes: ASCII, every character JSON escapes, DEL, '/',
 * and 2-, 3- and 4-byte sequences; empty about one time in four. */
static void random_string(char *dst, size_t size) {
    static const char *const pieces[] = {"a",
                                         "Z",
                                         "0",
                                         " ",
                                         "/",
                                         "\"",
                                         "\\",
                                         "\b",
                                         "\f",
                                         "\n",
                                         "\r",
                                         "\t",
                                         "\x01",
                                         "\x1f",
                                         "\x7f",
                                         "\xc3\xa9",
                                         "\xc2\x80",
                                         "\xdf\xbf",
                                         "\xe2\x82\xac",
                                         "\xe4\xb8\xad",
                                         "\xef\xbf\xbf",
                                         "\xed\x9f\xbf",
                                         "\xf0\x9f\x98\x80",
                                         "\xf4\x8f\xbf\xbf",
                                         "u00",
                                         "null",
                                         "}",
                                         ",:"};
    size_t len = 0, want = rng_next() % 4 == 0 ? 0 : rng_next() % size;
    while (len < want) {
        const char *piece;
        if (rng_next() % 3 == 0) {
            static char ctl[2];
            ctl[0] = (char)(1 + rng_next() % 0x1f); /* any control character */
            piece = ctl;
        } else {
            piece = pieces[rng_next() % (sizeof(pieces) / sizeof(pieces[0]))];
        }
        size_t n = strlen(piece);
        if (len + n > size - 1) break;
        memcpy(dst + len, piece, n);
        len += n;
    }
    dst[len] = '\0';
}

static uint64_t random_u64(void) {
    static const uint64_t edges[] = {0,
                                     1,
                                     9,
                                     10,
                                     4294967295ull,
                                     4294967296ull,
                                     9223372036854775807ull,
                                     9223372036854775808ull,
                                     18446744073709551615ull};
    return rng_next() % 4 == 0 ? edges[rng_next() % (sizeof(edges) / sizeof(edges[0]))]
                               : rng_next() >> (rng_next() % 64);
}

static void random_record(struct audit_record *r) {
    static const uint64_t ts_edges[] = {0,
                                        999,
                                        86399999999ull,
                                        951782400000000ull,
                                        1764351822123000ull,
                                        253402300799999999ull,
                                        253402300800000000ull,
                                        4102444800000000ull};
    memset(r, 0, sizeof(*r));
    r->ts_us = rng_next() % 2 ? ts_edges[rng_next() % (sizeof(ts_edges) / sizeof(ts_edges[0]))]
                              : rng_next() % 1000000000000000000ull;
    random_string(r->request_id, sizeof(r->request_id));
    random_string(r->instance, sizeof(r->instance));
    random_string(r->app, sizeof(r->app));
    random_string(r->secret_id, sizeof(r->secret_id));
    random_string(r->client_ip, sizeof(r->client_ip));
    random_string(r->action, sizeof(r->action));
    random_string(r->api, sizeof(r->api));
    int *has[] = {&r->has_business_id, &r->has_scene_id, &r->has_captcha_type, &r->has_client_type,
                  &r->has_account_type};
    uint32_t *val[] = {&r->business_id, &r->scene_id, &r->captcha_type, &r->client_type,
                       &r->account_type};
    for (size_t i = 0; i < 5; i++) {
        *has[i] = (int)(rng_next() % 2);
        *val[i] = *has[i] ? (uint32_t)random_u64() : 0;
    }
    random_string(r->decision, sizeof(r->decision));
    random_string(r->rule, sizeof(r->rule));
    r->has_code = (int)(rng_next() % 4 != 0); /* no code: a passed-through script */
    r->code = r->has_code ? (int)(uint32_t)random_u64() : 0;
    random_string(r->code_desc, sizeof(r->code_desc));
    r->upstream_status = (int)(uint32_t)random_u64();
    r->latency_us = random_u64();
    r->upstream_latency_us = random_u64();
    random_string(r->uid, sizeof(r->uid));
    random_string(r->user_ip, sizeof(r->user_ip));
    random_string(r->imei, sizeof(r->imei));
    random_string(r->mac_address, sizeof(r->mac_address));
    random_string(r->associate_account, sizeof(r->associate_account));
    random_string(r->url_sha256, sizeof(r->url_sha256));
}

/* What audit_record_json printed when it built a jansson object (docs/design.md "Audit" order, null
 * for an absent optional value, the time through gmtime_r) and dumped it compact. */
static char *reference_json(const struct audit_record *r) {
    time_t s = (time_t)(r->ts_us / 1000000);
    struct tm tm;
    char ts[32];
    assert_non_null(gmtime_r(&s, &tm));
    snprintf(ts, sizeof(ts), "%04u-%02u-%02uT%02u:%02u:%02u.%03uZ",
             (unsigned)(tm.tm_year + 1900) % 10000u, (unsigned)(tm.tm_mon + 1) % 100u,
             (unsigned)tm.tm_mday % 100u, (unsigned)tm.tm_hour % 100u, (unsigned)tm.tm_min % 100u,
             (unsigned)tm.tm_sec % 100u, (unsigned)(r->ts_us / 1000 % 1000));
#define OPT_STR(v) ((v)[0] ? json_string(v) : json_null())
#define OPT_U32(h, v) ((h) ? json_integer(v) : json_null())
    json_t *o = json_pack(
        "{s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,"
        "s:o,s:o,s:o,s:o,s:o}",
        "ts", json_string(ts), "request_id", json_string(r->request_id), "instance",
        json_string(r->instance), "app", json_string(r->app), "secret_id", OPT_STR(r->secret_id),
        "client_ip", json_string(r->client_ip), "api", json_string(r->api), "action",
        json_string(r->action), "businessId", OPT_U32(r->has_business_id, r->business_id),
        "sceneId", OPT_U32(r->has_scene_id, r->scene_id), "captchaType",
        OPT_U32(r->has_captcha_type, r->captcha_type), "clientType",
        OPT_U32(r->has_client_type, r->client_type), "accountType",
        OPT_U32(r->has_account_type, r->account_type), "decision", json_string(r->decision), "rule",
        OPT_STR(r->rule), "code", r->has_code ? json_integer(r->code) : json_null(), "codeDesc",
        json_string(r->code_desc), "upstream_status", json_integer(r->upstream_status),
        "latency_us", json_integer((json_int_t)r->latency_us), "upstream_latency_us",
        json_integer((json_int_t)r->upstream_latency_us), "uid", OPT_STR(r->uid), "userIp",
        OPT_STR(r->user_ip), "imei", OPT_STR(r->imei), "macAddress", OPT_STR(r->mac_address),
        "associateAccount", OPT_STR(r->associate_account), "url_sha256", OPT_STR(r->url_sha256));
#undef OPT_STR
#undef OPT_U32
    assert_non_null(o);
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    assert_non_null(text);
    json_decref(o);
    return text;
}

/* The direct writer prints what jansson printed, byte for byte: escapes, UTF-8, empty and absent
 * fields, numbers at their edges, dates past 9999; and reads back to the same record. */
static void test_record_json_matches_jansson(void **state) {
    struct audit_record r, back;
    struct strbuf b;
    strbuf_init(&b);
    for (int i = 0; i < 20000; i++) {
        random_record(&r);
        char *want = reference_json(&r);
        strbuf_reset(&b);
        assert_int_equal(audit_record_json(&r, &b), 0);
        if (b.len != strlen(want) || memcmp(b.s, want, b.len) != 0)
            fail_msg("record %d:\n  got  %s\n  want %s", i, b.s, want);
        /* those that can come back: ms precision, a year below 10000, numbers in range */
        if (r.ts_us < 253402300800000000ull && r.ts_us % 1000 == 0 && (int64_t)r.latency_us >= 0 &&
            (int64_t)r.upstream_latency_us >= 0 && r.code > INT32_MIN &&
            r.upstream_status > INT32_MIN) {
            assert_int_equal(audit_record_from_json(b.s, b.len, &back), 0);
            assert_memory_equal(&back, &r, sizeof(r));
        }
        free(want);
    }
    /* appends: a second record follows the first */
    random_record(&r);
    char *want = reference_json(&r);
    size_t before = b.len;
    assert_int_equal(audit_record_json(&r, &b), 0);
    assert_string_equal(b.s + before, want);
    free(want);
    /* jansson refused a string that is not UTF-8; so does the writer, and appends nothing */
    snprintf(r.uid, sizeof(r.uid), "ab\xc3(");
    before = b.len;
    assert_int_equal(audit_record_json(&r, &b), -1);
    assert_int_equal(b.len, before);
    strbuf_cleanup(&b);
}

static void test_query_parse(void **state) {
    struct audit_query q;
    char err[256];
    assert_int_equal(audit_query_parse(NULL, &q, err, sizeof(err)), 0);
    assert_int_equal(q.limit, 100);
    assert_false(q.has_business_id);
    assert_int_equal(audit_query_parse("businessId=1&sceneId=2&app=shop-web&decision=denied"
                                       "&since=1700000000&limit=1000",
                                       &q, err, sizeof(err)),
                     0);
    assert_true(q.has_business_id && q.business_id == 1 && q.has_scene_id && q.scene_id == 2);
    assert_string_equal(q.app, "shop-web");
    assert_string_equal(q.decision, "denied");
    assert_int_equal(q.since_ms, 1700000000000ull);
    assert_int_equal(q.limit, 1000);
    assert_int_equal(audit_query_parse("since=1700000000123", &q, err, sizeof(err)), 0);
    assert_int_equal(q.since_ms, 1700000000123ull);
    assert_false(q.has_code);
    assert_int_equal(audit_query_parse("code=4400", &q, err, sizeof(err)), 0);
    assert_true(q.has_code && q.code == 4400);
    assert_int_equal(audit_query_parse("code=0", &q, err, sizeof(err)), 0);
    assert_true(q.has_code && q.code == 0);
    assert_int_equal(audit_query_parse("code=-2147483648", &q, err, sizeof(err)), 0);
    assert_true(q.has_code && q.code == INT32_MIN);

    static const char *const bad[][2] = {{"limit=0", "limit"},
                                         {"limit=1001", "limit"},
                                         {"limit=x", "limit"},
                                         {"businessId=-1", "businessId"},
                                         {"sceneId=4294967296", "sceneId"},
                                         {"decision=maybe", "decision"},
                                         {"since=yesterday", "since"},
                                         {"code=", "code"},
                                         {"code=44x", "code"},
                                         {"code=-", "code"},
                                         {"code=2147483648", "code"},
                                         {"code=-2147483649", "code"},
                                         {"code=1&code=2", "code"},
                                         {"foo=1", "unknown parameter foo"},
                                         {"app=a&app=b", "app"},
                                         {"businessId=%zz", "businessId"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        assert_int_equal(audit_query_parse(bad[i][0], &q, err, sizeof(err)), -1);
        if (!strstr(err, bad[i][1]))
            fail_msg("%s: error \"%s\" does not name %s", bad[i][0], err, bad[i][1]);
    }
}

/* ---- helpers for the sink tests ---- */

static void make_record(struct audit_record *r, const char *prefix, unsigned i, unsigned worker) {
    struct pipeline_record pr;
    struct config_audit cfg = audit_cfg(0);
    char id[17];
    snprintf(id, sizeof(id), "%s%08x", prefix, i);
    sample_pipeline_record(&pr, id);
    pr.business_id = worker;
    pr.decision = (enum pipeline_decision)(i % PIPELINE_DECISION_COUNT);
    assert_int_equal(audit_record_init(r, &pr, NULL, NULL, &cfg, "test"), 0);
}

static char *make_tmpdir(void) {
    char tmpl[] = "/tmp/capgate-test-audit-XXXXXX";
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return strdup(d);
}

static void rm_rf(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[1024];
    if (!d) return;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
            rm_rf(path);
        else
            unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

#define WAIT_UNTIL(cond, ms, what) \
    do { \
        uint64_t deadline_ = now_ms() + (ms); \
        while (!(cond)) { \
            if (now_ms() > deadline_) fail_msg("timed out waiting for %s", what); \
            sleep_ms(5); \
        } \
    } while (0)

static struct audit_stats stats_of(struct audit *a) {
    struct audit_stats s;
    audit_get_stats(a, &s);
    return s;
}

/* ---- the queue: producers against the sink, through the memory stream and audit.file ---- */

struct producer {
    struct audit *a;
    unsigned worker, count;
};

static void *produce(void *arg) {
    struct producer *p = arg;
    struct audit_record r;
    for (unsigned i = 0; i < p->count; i++) {
        make_record(&r, p->worker ? "bbbbbbbb" : "aaaaaaaa", i, p->worker);
        assert_int_equal(audit_submit(p->a, p->worker, &r), 0);
    }
    return NULL;
}

static void test_queue_order_and_count(void **state) {
    char *dir = make_tmpdir();
    char file[512];
    snprintf(file, sizeof(file), "%s/audit.jsonl", dir);
    struct config cfg = {0};
    cfg.audit = audit_cfg(0);
    cfg.audit.maxlen = 50;
    cfg.audit.file = file;
    cfg.instance = "test";
    char err[256];
    struct audit *a = audit_new(&cfg, 2, err, sizeof(err));
    assert_non_null(a);
    assert_string_equal(audit_state_name(a), "memory");
    struct audit_record r;
    assert_int_equal(audit_submit(a, 2, (make_record(&r, "cccccccc", 0, 0), &r)), -1);

    const unsigned count = 40000;
    struct producer p[2] = {{a, 0, count}, {a, 1, count}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&t[i], NULL, produce, &p[i]), 0);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    WAIT_UNTIL(stats_of(a).written == 2 * count, 10000, "the sink to take every record");
    struct audit_stats s = stats_of(a);
    assert_int_equal(s.queue_depth, 0);
    assert_int_equal(s.spooled, 0);
    /* the sink gave the finished nodes back to their worker's ring, which never holds more than
     * its cap (the records below, read back whole, went through reused nodes) */
    for (unsigned w = 0; w < 2; w++) {
        size_t kept = atomic_load(&a->queues[w]->free_tail) - atomic_load(&a->queues[w]->free_head);
        assert_true(kept > 0);
        assert_true(kept <= AUDIT_FREE_RING);
    }
    audit_free(a);

    /* every record in audit.file, each worker's in submission order */
    FILE *f = fopen(file, "r");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0;
    unsigned next[2] = {0, 0};
    while (getline(&line, &cap, f) > 0) {
        assert_int_equal(audit_record_from_json(line, strlen(line), &r), 0);
        unsigned w = r.request_id[0] == 'b';
        char want[17];
        snprintf(want, sizeof(want), "%s%08x", w ? "bbbbbbbb" : "aaaaaaaa", next[w]);
        assert_string_equal(r.request_id, want);
        assert_int_equal(r.business_id, w);
        next[w]++;
    }
    free(line);
    fclose(f);
    assert_int_equal(next[0], count);
    assert_int_equal(next[1], count);
    rm_rf(dir);
    free(dir);
}

/* The sink writes one access line per record taken from the worker queues, each worker's in
 * order, in the text format and in JSON. */
static void test_access_lines(void **state) {
    char *dir = make_tmpdir();
    char errfile[512];
    snprintf(errfile, sizeof(errfile), "%s/stderr.txt", dir);
    struct config cfg = {0};
    cfg.audit = audit_cfg(0);
    cfg.audit.maxlen = 50;
    cfg.instance = "test";
    char err[256];
    log_set_level(LOG_LEVEL_INFO);
    fflush(stderr);
    int saved = dup(2), fd = open(errfile, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    close(fd);
    struct audit *a = audit_new(&cfg, 2, err, sizeof(err));
    assert_non_null(a);
    const unsigned count = 3000;
    struct producer p[2] = {{a, 0, count}, {a, 1, count}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&t[i], NULL, produce, &p[i]), 0);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    WAIT_UNTIL(stats_of(a).written == 2 * count, 10000, "the sink to take every record");
    audit_free(a);
    log_set_json(1);
    cfg.audit.file = NULL;
    a = audit_new(&cfg, 1, err, sizeof(err));
    assert_non_null(a);
    struct pipeline_record pr;
    struct config_audit acfg = audit_cfg(0);
    struct audit_record r;
    sample_pipeline_record(&pr, "cccccccc00000000");
    pr.no_code = 1;
    pr.upstream_status = 502;
    pr.upstream_latency_us = 2500;
    pr.http_status = 503;
    assert_int_equal(audit_record_init(&r, &pr, NULL, NULL, &acfg, "test"), 0);
    assert_int_equal(audit_submit(a, 0, &r), 0);
    audit_free(a);
    log_set_json(0);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    log_set_level(LOG_LEVEL_WARN);

    FILE *f = fopen(errfile, "r");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0;
    unsigned next[2] = {0, 0}, json_lines = 0;
    while (getline(&line, &cap, f) > 0) {
        const char *text = strstr(line, " INFO access ");
        if (line[0] == '{' && strstr(line, "\"msg\":\"access\"")) {
            json_t *o = json_loads(line, 0, NULL);
            assert_non_null(o);
            assert_string_equal(json_string_value(json_object_get(o, "msg")), "access");
            assert_string_equal(json_string_value(json_object_get(o, "request_id")),
                                "cccccccc00000000");
            assert_true(json_is_null(json_object_get(o, "code")));
            assert_true(json_is_null(json_object_get(o, "sceneId")));
            assert_int_equal(json_integer_value(json_object_get(o, "businessId")), 7);
            assert_int_equal(json_integer_value(json_object_get(o, "http")), 503);
            assert_int_equal(json_integer_value(json_object_get(o, "upstream_status")), 502);
            assert_true(json_real_value(json_object_get(o, "upstream_ms")) == 2.5);
            json_decref(o);
            json_lines++;
            continue;
        }
        if (!text) continue;
        unsigned w = strstr(text, "request_id=b") != NULL;
        char want[512];
        snprintf(
            want, sizeof(want),
            " INFO access request_id=%s%08x app=shop-web "
            "action=CaptchaIframeQuery businessId=%u sceneId=- decision=%s rule=login "
            "code=4400 http=200 latency_ms=1.234 upstream_ms=- client_ip=127.0.0.1\n",
            w ? "bbbbbbbb" : "aaaaaaaa", next[w], w,
            pipeline_decision_name((enum pipeline_decision)(next[w] % PIPELINE_DECISION_COUNT)));
        assert_string_equal(text, want);
        next[w]++;
    }
    free(line);
    fclose(f);
    assert_int_equal(next[0], count);
    assert_int_equal(next[1], count);
    assert_int_equal(json_lines, 1);
    rm_rf(dir);
    free(dir);
}

/* ---- the read side over the memory stream ---- */

struct query_result {
    int calls, status;
    json_t *json;
    struct event_base *base;
};

static void query_done(const char *json, int status, void *arg) {
    struct query_result *res = arg;
    res->calls++;
    res->status = status;
    res->json = json_loads(json, 0, NULL);
    event_base_loopbreak(res->base);
}

static struct query_result run_query(struct audit *a, const char *qs) {
    struct audit_query q;
    char err[256];
    struct query_result res = {0};
    assert_int_equal(audit_query_parse(qs, &q, err, sizeof(err)), 0);
    res.base = event_base_new();
    assert_non_null(res.base);
    audit_query(a, &q, res.base, query_done, &res);
    struct timeval tv = {10, 0};
    event_base_loopexit(res.base, &tv);
    event_base_dispatch(res.base);
    event_base_free(res.base);
    assert_int_equal(res.calls, 1);
    assert_non_null(res.json);
    return res;
}

static void test_query_memory(void **state) {
    struct config cfg = {0};
    cfg.audit = audit_cfg(0);
    cfg.audit.maxlen = 30;
    cfg.instance = "test";
    char err[256];
    struct audit *a = audit_new(&cfg, 1, err, sizeof(err));
    assert_non_null(a);
    struct audit_record r;
    for (unsigned i = 0; i < 40; i++) {
        make_record(&r, "dddddddd", i, i % 2);
        /* codes by i % 3: 0, 4100, none */
        r.code = i % 3 == 1 ? 4100 : 0;
        r.has_code = i % 3 != 2;
        assert_int_equal(audit_submit(a, 0, &r), 0);
    }
    WAIT_UNTIL(stats_of(a).written == 40, 5000, "records in the memory stream");

    struct query_result res = run_query(a, "limit=5");
    assert_int_equal(res.status, 200);
    json_t *recs = json_object_get(res.json, "records");
    assert_int_equal(json_array_size(recs), 5);
    assert_string_equal(jstr(json_array_get(recs, 0), "request_id"), "dddddddd00000027");
    assert_string_equal(jstr(json_array_get(recs, 4), "request_id"), "dddddddd00000023");
    assert_int_equal(jint(res.json, "scanned"), 5);
    json_decref(res.json);

    /* only the newest 30 are kept; filters apply */
    res = run_query(a, "businessId=1&decision=forwarded&limit=1000");
    recs = json_object_get(res.json, "records");
    assert_int_equal(jint(res.json, "scanned"), 30);
    for (size_t i = 0; i < json_array_size(recs); i++) {
        assert_int_equal(jint(json_array_get(recs, i), "businessId"), 1);
        assert_string_equal(jstr(json_array_get(recs, i), "decision"), "forwarded");
    }
    /* i % 9 == 0 (forwarded) and odd, among 10..39: 27 */
    assert_int_equal(json_array_size(recs), 1);
    json_decref(res.json);

    /* by the reply's API code: 4100 is i % 3 == 1 among 10..39 (10, 13, ... 37); code=0 does not
     * match the records without a code */
    static const struct {
        const char *qs;
        int code;
        size_t n;
    } by_code[] = {{"code=4100&limit=1000", 4100, 10}, {"code=0&limit=1000", 0, 10}};
    for (size_t k = 0; k < sizeof(by_code) / sizeof(by_code[0]); k++) {
        res = run_query(a, by_code[k].qs);
        recs = json_object_get(res.json, "records");
        assert_int_equal(json_array_size(recs), by_code[k].n);
        for (size_t i = 0; i < json_array_size(recs); i++) {
            json_t *c = json_object_get(json_array_get(recs, i), "code");
            assert_true(json_is_integer(c) && json_integer_value(c) == by_code[k].code);
        }
        json_decref(res.json);
    }
    audit_free(a);
}

/* ---- the sink against redis-server ---- */

static redisContext *redis_client(int port) {
    struct redis_server s = {.port = port};
    return redis_server_connect(&s);
}

static void redis_start(struct redis_server *s) {
    assert_int_equal(redis_server_start(s), 0);
}

/* request_ids of the stream, oldest first; *n set. Caller frees. */
static char (*stream_ids(int port, size_t *n))[17] {
    redisContext *c = redis_client(port);
    assert_non_null(c);
    redisReply *r = redisCommand(c, "XRANGE capgate:audit - +");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    char(*ids)[17] = calloc(r->elements + 1, 17);
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *kv = r->element[i]->element[1];
        const char *names[AUDIT_FIELDS_MAX], *values[AUDIT_FIELDS_MAX];
        size_t lens[AUDIT_FIELDS_MAX], m = 0;
        struct audit_record rec;
        for (size_t j = 0; j + 1 < kv->elements && m < AUDIT_FIELDS_MAX; j += 2, m++) {
            names[m] = kv->element[j]->str;
            values[m] = kv->element[j + 1]->str;
            lens[m] = kv->element[j + 1]->len;
        }
        /* the gateway writes the "json" field; the test's own filler entries flat fields */
        assert_int_equal(audit_record_from_entry(&rec, m, names, values, lens), 0);
        snprintf(ids[i], 17, "%s", rec.request_id);
    }
    *n = r->elements;
    freeReplyObject(r);
    redisFree(c);
    return ids;
}

/* Checks that the stream holds exactly the ids prefix+[0, count) once each, in order, after
 * `from` entries that are not checked. */
static void assert_stream_tail(int port, size_t from, const char *prefix, unsigned count) {
    size_t n;
    char(*ids)[17] = stream_ids(port, &n);
    assert_int_equal(n, from + count);
    for (unsigned i = 0; i < count; i++) {
        char want[17];
        snprintf(want, sizeof(want), "%s%08x", prefix, i);
        assert_string_equal(ids[from + i], want);
    }
    free(ids);
}

static size_t count_spool_lines(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    size_t lines = 0;
    assert_non_null(d);
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len < 6 || strcmp(e->d_name + len - 6, ".jsonl") != 0) continue;
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "r");
        int c;
        assert_non_null(f);
        while ((c = getc(f)) != EOF) lines += c == '\n';
        fclose(f);
    }
    closedir(d);
    return lines;
}

static void copy_dir_files(const char *from, const char *to) {
    DIR *d = opendir(from);
    struct dirent *e;
    assert_non_null(d);
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char src[1024], dst[1024], buf[65536];
        snprintf(src, sizeof(src), "%s/%s", from, e->d_name);
        snprintf(dst, sizeof(dst), "%s/%s", to, e->d_name);
        int in = open(src, O_RDONLY), out = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        ssize_t n;
        assert_true(in >= 0 && out >= 0);
        while ((n = read(in, buf, sizeof(buf))) > 0)
            assert_int_equal(write(out, buf, (size_t)n), n);
        close(in);
        close(out);
    }
    closedir(d);
}

static void submit_n(struct audit *a, const char *prefix, unsigned n) {
    struct audit_record r;
    for (unsigned i = 0; i < n; i++) {
        make_record(&r, prefix, i, 0);
        assert_int_equal(audit_submit(a, 0, &r), 0);
    }
}

static void test_sink_redis(void **state) {
    struct redis_server rs = {.pid = -1};
    char *dir = make_tmpdir();
    char spool[512], copy[512];
    rs.dir = dir;
    snprintf(spool, sizeof(spool), "%s/spool/nested", dir);
    snprintf(copy, sizeof(copy), "%s/copy", dir);
    assert_int_equal(mkdir(copy, 0700), 0);
    rs.port = redis_server_free_port();
    redis_start(&rs);

    struct config_redis rc = {0};
    rc.host = "127.0.0.1";
    rc.port = rs.port;
    rc.timeout_ms = 300;
    rc.key_prefix = "capgate:";
    struct config cfg = {0};
    cfg.redis = &rc;
    cfg.audit = audit_cfg(0);
    cfg.audit.maxlen = 100000;
    cfg.audit.spool_dir = spool;
    cfg.instance = "test host:1";
    char err[256];

    /* live: XADD */
    struct audit *a = audit_new(&cfg, 1, err, sizeof(err));
    assert_non_null(a);
    WAIT_UNTIL(strcmp(audit_state_name(a), "live") == 0, 5000, "live");
    /* one process per spool directory */
    assert_null(audit_new(&cfg, 1, err, sizeof(err)));
    assert_non_null(strstr(err, "in use by another capgate process"));
    submit_n(a, "a0000000", 100);
    WAIT_UNTIL(stats_of(a).written == 100, 5000, "100 live writes");
    assert_stream_tail(rs.port, 0, "a0000000", 100);

    /* Redis down: records go to the spool */
    redis_server_stop(&rs);
    submit_n(a, "b0000000", 300);
    WAIT_UNTIL(stats_of(a).spooled == 300, 5000, "300 spooled records");
    assert_string_equal(audit_state_name(a), "spooling");
    assert_int_equal(stats_of(a).spool_depth, 300);
    assert_true(stats_of(a).redis_errors > 0);
    WAIT_UNTIL(count_spool_lines(spool) == 300, 2000, "300 lines in the spool files");
    copy_dir_files(spool, copy);
    /* /admin/audit meanwhile: this process's ring, spooled records included, said partial */
    struct query_result qr = run_query(a, "limit=1000");
    assert_int_equal(qr.status, 200);
    assert_true(json_is_true(json_object_get(qr.json, "partial")));
    assert_non_null(strstr(json_string_value(json_object_get(qr.json, "reason")), "redis"));
    assert_int_equal(json_array_size(json_object_get(qr.json, "records")), 400);
    json_decref(qr.json);

    /* Redis back (empty: no persistence): the spool is replayed in order, once each */
    redis_start(&rs);
    WAIT_UNTIL(strcmp(audit_state_name(a), "live") == 0 && stats_of(a).spool_depth == 0, 10000,
               "replay and live again");
    assert_int_equal(stats_of(a).replayed, 300);
    assert_stream_tail(rs.port, 0, "b0000000", 300);
    assert_int_equal(count_spool_lines(spool), 0);
    qr = run_query(a, "limit=5");
    assert_int_equal(qr.status, 200);
    assert_true(json_is_false(json_object_get(qr.json, "partial")));
    assert_int_equal(json_array_size(json_object_get(qr.json, "records")), 5);
    json_decref(qr.json);
    submit_n(a, "c0000000", 10);
    WAIT_UNTIL(stats_of(a).written == 110, 5000, "live writes after the replay");
    assert_stream_tail(rs.port, 300, "c0000000", 10);
    audit_free(a);

    /* the same spool again, in a new audit object: idempotent, nothing is added */
    copy_dir_files(copy, spool);
    a = audit_new(&cfg, 1, err, sizeof(err));
    assert_non_null(a);
    assert_int_equal(stats_of(a).spool_depth, 300);
    WAIT_UNTIL(strcmp(audit_state_name(a), "live") == 0 && stats_of(a).spool_depth == 0, 10000,
               "second replay");
    assert_int_equal(stats_of(a).replayed, 300);
    assert_int_equal(count_spool_lines(spool), 0);
    {
        size_t n;
        free(stream_ids(rs.port, &n));
        assert_int_equal(n, 310);
    }
    audit_free(a);

    /* restart: records spooled by an object that stops while Redis is down are replayed by the
     * next one */
    redis_server_stop(&rs);
    a = audit_new(&cfg, 1, err, sizeof(err));
    assert_non_null(a);
    submit_n(a, "d0000000", 50);
    audit_free(a);
    assert_int_equal(count_spool_lines(spool), 50);
    redis_start(&rs);
    a = audit_new(&cfg, 1, err, sizeof(err));
    assert_non_null(a);
    WAIT_UNTIL(strcmp(audit_state_name(a), "live") == 0 && stats_of(a).spool_depth == 0, 10000,
               "replay after a restart");
    assert_stream_tail(rs.port, 0, "d0000000", 50);
    audit_free(a);

    redis_server_stop(&rs);
    rm_rf(dir);
    free(dir);
}

/* Appends n records prefix+[0, n) to the spool file f as spool lines, with `extra` (JSON members,
 * "" for none) before the closing brace. */
static void spool_write(FILE *f, const char *prefix, unsigned n, const char *extra) {
    struct audit_record r;
    struct strbuf b;
    strbuf_init(&b);
    for (unsigned i = 0; i < n; i++) {
        make_record(&r, prefix, i, 0);
        strbuf_reset(&b);
        assert_int_equal(audit_record_json(&r, &b), 0);
        b.s[b.len - 1] = '\0'; /* the closing brace */
        fprintf(f, "%s%s}\n", b.s, extra);
    }
    strbuf_cleanup(&b);
}

static void redis_exec(int port, const char *cmd) {
    redisContext *c = redis_client(port);
    assert_non_null(c);
    redisReply *r = redisCommand(c, cmd);
    assert_non_null(r);
    assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
    freeReplyObject(r);
    redisFree(c);
}

/* Uncertain records (a live batch whose EXEC went unanswered) are checked against their batch
 * key, one GET, and not against the stream: a batch the key shows landed is skipped, any other
 * uncertain record is replayed, each exactly once. */
static void test_sink_uncertain_replay(void **state) {
    struct redis_server rs = {0};
    char *dir = make_tmpdir();
    char spool[512], seg[600];
    rs.dir = dir;
    snprintf(spool, sizeof(spool), "%s/spool", dir);
    assert_int_equal(mkdir(spool, 0700), 0);
    rs.port = redis_server_free_port();
    redis_start(&rs);
    /* batch 5 of run aaaa... landed (its records are in the stream, its key says 7); batch 8 of
     * the same run did not; run bbbb... has no key at all */
    for (unsigned i = 0; i < 5; i++) {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "XADD capgate:audit * request_id u0000000%08x", i);
        redis_exec(rs.port, cmd);
    }
    redis_exec(rs.port, "SET capgate:audit:batch:aaaaaaaaaaaaaaaa 7");
    snprintf(seg, sizeof(seg), "%s/00000000000000001-000000-test.jsonl", spool);
    FILE *f = fopen(seg, "w");
    assert_non_null(f);
    spool_write(f, "u0000000", 5, ",\"uncertain\":true,\"batch\":\"aaaaaaaaaaaaaaaa:5\"");
    spool_write(f, "v0000000", 5, ",\"uncertain\":true,\"batch\":\"aaaaaaaaaaaaaaaa:8\"");
    spool_write(f, "w0000000", 5, ",\"uncertain\":true,\"batch\":\"bbbbbbbbbbbbbbbb:1\"");
    spool_write(f, "x0000000", 5, ",\"uncertain\":true"); /* an older version's spool */
    spool_write(f, "y0000000", 5, "");
    fclose(f);

    struct config_redis rc = {0};
    rc.host = "127.0.0.1";
    rc.port = rs.port;
    rc.timeout_ms = 300;
    rc.key_prefix = "capgate:";
    struct config cfg = {0};
    cfg.redis = &rc;
    cfg.audit = audit_cfg(0);
    cfg.audit.maxlen = 100000;
    cfg.audit.spool_dir = spool;
    cfg.instance = "test";
    char err[256];
    struct audit *a = audit_new(&cfg, 1, err, sizeof(err));
    assert_non_null(a);
    assert_int_equal(stats_of(a).spool_depth, 25);
    WAIT_UNTIL(strcmp(audit_state_name(a), "live") == 0 && stats_of(a).spool_depth == 0, 10000,
               "replay");
    size_t n;
    char(*ids)[17] = stream_ids(rs.port, &n);
    assert_int_equal(n, 25);
    const char *order[] = {"u0000000", "v0000000", "w0000000", "x0000000", "y0000000"};
    for (size_t k = 0; k < 25; k++) {
        char want[17];
        snprintf(want, sizeof(want), "%s%08x", order[k / 5], (unsigned)(k % 5));
        assert_string_equal(ids[k], want);
    }
    free(ids);
    audit_free(a);
    redis_server_stop(&rs);
    rm_rf(dir);
    free(dir);
}

/* A live batch sent to a stopped Redis: no EXEC answer, so its records spool as uncertain with
 * their batch number. When Redis resumes it runs the batch still unread on the lost connection
 * (or the sink's CLIENT KILL discards it); either way each record ends in the stream once. */
static void test_sink_uncertain_live(void **state) {
    struct redis_server rs = {0};
    char *dir = make_tmpdir();
    char spool[512];
    rs.dir = dir;
    snprintf(spool, sizeof(spool), "%s/spool", dir);
    rs.port = redis_server_free_port();
    redis_start(&rs);
    struct config_redis rc = {0};
    rc.host = "127.0.0.1";
    rc.port = rs.port;
    rc.timeout_ms = 200;
    rc.key_prefix = "capgate:";
    struct config cfg = {0};
    cfg.redis = &rc;
    cfg.audit = audit_cfg(0);
    cfg.audit.maxlen = 100000;
    cfg.audit.spool_dir = spool;
    cfg.instance = "test";
    char err[256];
    struct audit *a = audit_new(&cfg, 1, err, sizeof(err));
    assert_non_null(a);
    WAIT_UNTIL(strcmp(audit_state_name(a), "live") == 0, 5000, "live");
    submit_n(a, "f0000000", 10);
    WAIT_UNTIL(stats_of(a).written == 10, 5000, "10 live writes");
    kill(rs.pid, SIGSTOP);
    submit_n(a, "g0000000", 20);
    WAIT_UNTIL(stats_of(a).spooled == 20, 5000, "20 spooled records");
    WAIT_UNTIL(count_spool_lines(spool) == 20, 2000, "20 lines in the spool");
    {
        /* every spooled line carries "uncertain":true and its batch */
        DIR *d = opendir(spool);
        struct dirent *e;
        size_t tagged = 0;
        assert_non_null(d);
        while ((e = readdir(d)) != NULL) {
            size_t len = strlen(e->d_name);
            if (len < 6 || strcmp(e->d_name + len - 6, ".jsonl") != 0) continue;
            char path[1024], line[8192];
            snprintf(path, sizeof(path), "%s/%s", spool, e->d_name);
            FILE *f = fopen(path, "r");
            assert_non_null(f);
            while (fgets(line, sizeof(line), f))
                tagged += strstr(line, "\"uncertain\":true,\"batch\":\"") != NULL;
            fclose(f);
        }
        closedir(d);
        assert_true(tagged >= 1);
    }
    kill(rs.pid, SIGCONT);
    WAIT_UNTIL(strcmp(audit_state_name(a), "live") == 0 && stats_of(a).spool_depth == 0, 15000,
               "replay after SIGCONT");
    submit_n(a, "h0000000", 5);
    WAIT_UNTIL(stats_of(a).written >= 15, 5000, "live writes after the replay");
    assert_stream_tail(rs.port, 10 + 20, "h0000000", 5);
    {
        size_t n;
        char(*ids)[17] = stream_ids(rs.port, &n);
        for (unsigned i = 0; i < 20; i++) {
            char want[17];
            unsigned seen = 0;
            snprintf(want, sizeof(want), "g0000000%08x", i);
            for (size_t k = 0; k < n; k++) seen += strcmp(ids[k], want) == 0;
            assert_int_equal(seen, 1);
        }
        free(ids);
    }
    audit_free(a);
    redis_server_stop(&rs);
    rm_rf(dir);
    free(dir);
}

/* An out-of-memory in a failed live write keeps the records: they reach the spool and, once
 * Redis is back, the stream. */
static void test_sink_live_failure_oom(void **state) {
    struct redis_server rs = {.pid = -1};
    char *dir = make_tmpdir();
    char spool[512];
    rs.dir = dir;
    snprintf(spool, sizeof(spool), "%s/spool", dir);
    rs.port = redis_server_free_port();
    redis_start(&rs);
    struct config_redis rc = {0};
    rc.host = "127.0.0.1";
    rc.port = rs.port;
    rc.timeout_ms = 300;
    rc.key_prefix = "capgate:";
    struct config cfg = {0};
    cfg.redis = &rc;
    cfg.audit = audit_cfg(0);
    cfg.audit.maxlen = 100000;
    cfg.audit.spool_dir = spool;
    cfg.instance = "test";
    char err[256];
    struct audit *a = audit_new(&cfg, 1, err, sizeof(err));
    assert_non_null(a);
    WAIT_UNTIL(strcmp(audit_state_name(a), "live") == 0, 5000, "live");
    atomic_store(&fail_pointer_arrays, 1);
    redis_server_stop(&rs);
    submit_n(a, "e0000000", 100);
    WAIT_UNTIL(stats_of(a).spooled == 100, 5000, "100 spooled records");
    atomic_store(&fail_pointer_arrays, 0);
    redis_start(&rs);
    WAIT_UNTIL(strcmp(audit_state_name(a), "live") == 0 && stats_of(a).spool_depth == 0, 10000,
               "replay and live again");
    assert_stream_tail(rs.port, 0, "e0000000", 100);
    audit_free(a);
    redis_server_stop(&rs);
    rm_rf(dir);
    free(dir);
}

/* Stopping while Redis is down and the spool directory is gone: every record, held by the sink
 * or still in the worker queue, ends as one "capgate audit record (unsaved):" line on stderr. */
static void test_sink_stop_unsaved(void **state) {
    char *dir = make_tmpdir();
    char spool[512], errfile[512];
    snprintf(spool, sizeof(spool), "%s/spool", dir);
    snprintf(errfile, sizeof(errfile), "%s/stderr.txt", dir);
    struct config_redis rc = {0};
    rc.host = "127.0.0.1";
    rc.port = redis_server_free_port(); /* nothing listens there */
    rc.timeout_ms = 300;
    rc.key_prefix = "capgate:";
    struct config cfg = {0};
    cfg.redis = &rc;
    cfg.audit = audit_cfg(0);
    cfg.audit.maxlen = 100000;
    cfg.audit.spool_dir = spool;
    cfg.instance = "test";
    char err[256];
    struct audit *a = audit_new(&cfg, 1, err, sizeof(err));
    assert_non_null(a);
    WAIT_UNTIL(strcmp(audit_state_name(a), "spooling") == 0, 5000, "spooling");
    rm_rf(spool);
    const unsigned count = 1500; /* more than one sink batch: some stay in the queue */
    submit_n(a, "f0000000", count);
    sleep_ms(100);

    fflush(stderr);
    int saved = dup(2), fd = open(errfile, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    close(fd);
    audit_free(a);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);

    FILE *f = fopen(errfile, "r");
    assert_non_null(f);
    static const char prefix[] = "capgate audit record (unsaved): ";
    char *line = NULL;
    size_t cap = 0;
    unsigned next = 0;
    int counted = 0;
    while (getline(&line, &cap, f) > 0) {
        if (strncmp(line, prefix, strlen(prefix)) != 0) {
            counted |= strstr(line, "1500 of 1500 remaining records") != NULL;
            continue;
        }
        struct audit_record r;
        char want[17];
        assert_int_equal(
            audit_record_from_json(line + strlen(prefix), strlen(line + strlen(prefix)), &r), 0);
        snprintf(want, sizeof(want), "f0000000%08x", next++);
        assert_string_equal(r.request_id, want);
    }
    free(line);
    fclose(f);
    assert_int_equal(next, count);
    assert_true(counted);
    rm_rf(dir);
    free(dir);
}

/* While the spool refuses records the sink holds them and the worker queue waits: both show in
 * the stats, and both drain once the spool takes records again. */
static void test_sink_held_stats(void **state) {
    char *dir = make_tmpdir();
    char spool[512];
    snprintf(spool, sizeof(spool), "%s/spool", dir);
    struct config_redis rc = {0};
    rc.host = "127.0.0.1";
    rc.port = redis_server_free_port(); /* nothing listens there */
    rc.timeout_ms = 300;
    rc.key_prefix = "capgate:";
    struct config cfg = {0};
    cfg.redis = &rc;
    cfg.audit = audit_cfg(0);
    cfg.audit.maxlen = 100000;
    cfg.audit.spool_dir = spool;
    cfg.instance = "test";
    char err[256];
    struct audit *a = audit_new(&cfg, 1, err, sizeof(err));
    assert_non_null(a);
    WAIT_UNTIL(strcmp(audit_state_name(a), "spooling") == 0, 5000, "spooling");
    rm_rf(spool);
    submit_n(a, "g0000000", 512);
    WAIT_UNTIL(stats_of(a).held_records == 512, 5000, "512 held records");
    submit_n(a, "h0000000", AUDIT_RING_SIZE + 100);
    struct audit_stats s = stats_of(a);
    assert_int_equal(s.held_records, 512);
    assert_int_equal(s.overflow_records, 100);
    assert_int_equal(s.queue_depth, AUDIT_RING_SIZE + 100);
    assert_int_equal(mkdir(spool, 0700), 0);
    WAIT_UNTIL(stats_of(a).spooled == 512 + AUDIT_RING_SIZE + 100, 10000, "every record spooled");
    s = stats_of(a);
    assert_int_equal(s.held_records, 0);
    assert_int_equal(s.overflow_records, 0);
    assert_int_equal(s.queue_depth, 0);
    audit_free(a);
    rm_rf(dir);
    free(dir);
}

/* ---- audit.commit "durable": the per-worker marks ---- */

static atomic_int notified;
static void count_notify(void *arg) {
    (void)arg;
    atomic_fetch_add(&notified, 1);
}

/* Lines in path (0 when it does not open). */
static unsigned count_lines(const char *path) {
    FILE *f = fopen(path, "r");
    unsigned n = 0;
    int c;
    if (!f) return 0;
    while ((c = getc(f)) != EOF) n += c == '\n';
    fclose(f);
    return n;
}

/* Without Redis: a worker's mark reaches each record only once the audit file holds it (fsynced
 * with its batch), and the sink calls the worker's notify. */
static void test_commit_durable_memory(void **state) {
    char *dir = make_tmpdir();
    char path[1024];
    struct config cfg = {0};
    cfg.audit = audit_cfg(0);
    cfg.audit.spool_dir = dir;
    cfg.audit.commit_durable = 1;
    cfg.instance = "test";
    char err[256];
    struct audit *a = audit_new(&cfg, 2, err, sizeof(err));
    assert_non_null(a);
    assert_int_equal(audit_commit_durable(a), 1);
    atomic_store(&notified, 0);
    audit_on_durable(a, 0, count_notify, NULL);
    audit_on_durable(a, 1, count_notify, NULL);
    snprintf(path, sizeof(path), "%s/audit.jsonl", dir);
    struct audit_record r;
    for (unsigned i = 0; i < 300; i++) {
        make_record(&r, i % 2 ? "bbbbbbbb" : "aaaaaaaa", i, 0);
        assert_int_equal(audit_submit(a, i % 2, &r), 0);
        assert_int_equal(audit_last_seq(a, i % 2), i / 2 + 1);
        /* whatever the mark says is stored is in the file already */
        uint64_t d0 = audit_durable_seq(a, 0), d1 = audit_durable_seq(a, 1);
        assert_true(count_lines(path) >= d0 + d1);
    }
    WAIT_UNTIL(audit_durable_seq(a, 0) == 150 && audit_durable_seq(a, 1) == 150, 5000,
               "both marks at 150");
    assert_int_equal(count_lines(path), 300);
    assert_true(atomic_load(&notified) >= 2);
    audit_free(a);
    rm_rf(dir);
    free(dir);
}

/* With Redis down and the spool refusing records (its directory gone), the held records are not
 * stored: the mark stays; once the spool takes them it moves to the last one. */
static void test_commit_durable_held(void **state) {
    char *dir = make_tmpdir();
    char spool[512];
    snprintf(spool, sizeof(spool), "%s/spool", dir);
    struct config_redis rc = {0};
    rc.host = "127.0.0.1";
    rc.port = redis_server_free_port(); /* nothing listens there */
    rc.timeout_ms = 300;
    rc.key_prefix = "capgate:";
    struct config cfg = {0};
    cfg.redis = &rc;
    cfg.audit = audit_cfg(0);
    cfg.audit.maxlen = 100000;
    cfg.audit.spool_dir = spool;
    cfg.audit.commit_durable = 1;
    cfg.instance = "test";
    char err[256];
    struct audit *a = audit_new(&cfg, 1, err, sizeof(err));
    assert_non_null(a);
    WAIT_UNTIL(strcmp(audit_state_name(a), "spooling") == 0, 5000, "spooling");
    rm_rf(spool); /* before a segment is open: then every write to the spool fails */
    submit_n(a, "d0000000", 30);
    /* the sink may take the first records before the rest are submitted (durable: no gather
     * wait); while it retries those, the others wait in the queue */
    WAIT_UNTIL(stats_of(a).held_records > 0 &&
                   stats_of(a).held_records + stats_of(a).queue_depth == 30,
               5000, "30 records held or queued");
    sleep_ms(50);
    assert_int_equal(audit_durable_seq(a, 0), 0);
    assert_int_equal(mkdir(spool, 0700), 0);
    WAIT_UNTIL(audit_durable_seq(a, 0) == 30, 10000, "the held records spooled and stored");
    submit_n(a, "c0000000", 20);
    WAIT_UNTIL(audit_durable_seq(a, 0) == 50, 5000, "20 more spooled and stored");
    audit_free(a);
    rm_rf(dir);
    free(dir);
}

/* ---- the sink thread's signal mask ---- */

/* Thread ids of this process into ids (at most cap); the count. */
static size_t task_ids(long *ids, size_t cap) {
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    size_t n = 0;
    assert_non_null(d);
    while ((e = readdir(d)) != NULL && n < cap)
        if (e->d_name[0] != '.') ids[n++] = strtol(e->d_name, NULL, 10);
    closedir(d);
    return n;
}

/* The SigBlk mask of thread tid, or 0 when it cannot be read. */
static unsigned long long task_blocked(long tid) {
    char path[128], line[256];
    unsigned long long mask = 0;
    snprintf(path, sizeof(path), "/proc/self/task/%ld/status", tid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, "SigBlk:", 7) == 0) mask = strtoull(line + 7, NULL, 16);
    fclose(f);
    return mask;
}

/* Without Redis the memory stream ends with the process; every record also lands, in order, in
 * <spool_dir>/audit.jsonl so none is lost across a restart (a second run appends). */
static void test_memory_mode_keeps_file(void **state) {
    char *dir = make_tmpdir();
    char path[1024], line[4096], want[32];
    for (int run = 0; run < 2; run++) {
        struct config cfg = {0};
        cfg.audit = audit_cfg(0);
        cfg.audit.spool_dir = dir;
        cfg.instance = "test";
        char err[256];
        struct audit *a = audit_new(&cfg, 1, err, sizeof(err));
        assert_non_null(a);
        struct audit_record r;
        for (unsigned i = 0; i < 50; i++) {
            make_record(&r, run ? "bbbbbbbb" : "aaaaaaaa", i, 0);
            assert_int_equal(audit_submit(a, 0, &r), 0);
        }
        audit_free(a);
    }
    snprintf(path, sizeof(path), "%s/audit.jsonl", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    unsigned n = 0;
    while (fgets(line, sizeof(line), f)) {
        snprintf(want, sizeof(want), "\"%s%08x\"", n < 50 ? "aaaaaaaa" : "bbbbbbbb", n % 50);
        assert_non_null(strstr(line, want));
        n++;
    }
    fclose(f);
    assert_int_equal(n, 100);
    rm_rf(dir);
    free(dir);
}

/* The sink starts through thread_start: the asynchronous signals are blocked, the synchronous
 * ones (a crash) stay deliverable so it is reported where it happened. It then makes itself
 * SCHED_BATCH. */
static void test_sink_signal_mask(void **state) {
    long before[256], after[256], sink = 0;
    size_t n_before = task_ids(before, 256);
    struct config cfg = {0};
    cfg.audit = audit_cfg(0);
    cfg.instance = "test";
    char err[256];
    struct audit *a = audit_new(&cfg, 1, err, sizeof(err));
    assert_non_null(a);
    size_t n_after = task_ids(after, 256);
    for (size_t i = 0; i < n_after && !sink; i++) {
        int old = 0;
        for (size_t j = 0; j < n_before; j++) old |= after[i] == before[j];
        if (!old) sink = after[i];
    }
    assert_true(sink > 0);
    /* glibc starts a thread with every signal blocked and sets the mask it was given a moment
     * later */
    WAIT_UNTIL(!(task_blocked(sink) & (1ull << (SIGSEGV - 1))), 2000,
               "SIGSEGV deliverable in the sink thread");
    unsigned long long mask = task_blocked(sink);
    assert_true(mask & (1ull << (SIGTERM - 1)));
    assert_true(mask & (1ull << (SIGPIPE - 1)));
    assert_false(mask & (1ull << (SIGSEGV - 1)));
    assert_false(mask & (1ull << (SIGBUS - 1)));
    /* and it is background work (thread_background): waking up, it preempts no worker */
    WAIT_UNTIL(sched_getscheduler((pid_t)sink) == SCHED_BATCH, 2000,
               "the sink thread runs as SCHED_BATCH");
    audit_free(a);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();
    log_set_level(LOG_LEVEL_WARN); /* the sink's access lines: test_access_lines asks for them */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_record_json_hashed),
        cmocka_unit_test(test_record_raw_no_url),
        cmocka_unit_test(test_record_no_code),
        cmocka_unit_test(test_record_whole_names),
        cmocka_unit_test(test_record_json_matches_jansson),
        cmocka_unit_test(test_query_parse),
        cmocka_unit_test(test_queue_order_and_count),
        cmocka_unit_test(test_access_lines),
        cmocka_unit_test(test_query_memory),
        cmocka_unit_test(test_sink_redis),
        cmocka_unit_test(test_sink_signal_mask),
        cmocka_unit_test(test_memory_mode_keeps_file),
        cmocka_unit_test(test_sink_uncertain_replay),
        cmocka_unit_test(test_sink_uncertain_live),
        cmocka_unit_test(test_sink_live_failure_oom),
        cmocka_unit_test(test_sink_stop_unsaved),
        cmocka_unit_test(test_sink_held_stats),
        cmocka_unit_test(test_commit_durable_memory),
        cmocka_unit_test(test_commit_durable_held),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
