/* test_store.c: one contract suite for both stores, driven on a real event_base: burst, refusal
 * and refill; all-or-none over a request's buckets; shadow buckets; independent keys; callbacks
 * never inside store_limit. It runs against the memory store and against a redis-server this test
 * starts on a free loopback port; Redis alone adds AUTH and a db number from the config, NOSCRIPT
 * recovery, a stopped server (timeout) and a restarted one (reconnect). The prefetch pool's and
 * the idempotency records' operations run through the same contract on both stores: capping,
 * FIFO order, expiry by TTL with the discarded count, each URL popped once across two stores
 * sharing the backend, and the pending → done / mismatch / abandon life of a record. A Nonce
 * claimed with the limit check (store_limit_nonce) is refused the second time in Redis, across
 * stores too, without taking a token, and expires; the memory store ignores it. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <cmocka.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "capgate/clock.h"
#include "capgate/log.h"
#include "config.h"
#include "redis_server.h"
#include "store_backend.h" /* the memory tables, tested directly */

#define TIMEOUT_MS 100       /* the tests of timeouts: a stopped or wrong server */
#define CALL_TIMEOUT_MS 5000 /* every other test: a busy machine must not make a call time out */
#define SLACK_MS 150

/* ---- a redis-server of our own (redis_server.h) ---- */

static struct redis_server main_redis = {.pid = -1};

static long long redis_int(const struct redis_server *rp, unsigned db, const char *cmd,
                           const char *key) {
    redisContext *c = redis_server_connect(rp);
    redisReply *rep;
    long long v = -1;
    if (!c) return -1;
    rep = redisCommand(c, "SELECT %u", db);
    if (rep) freeReplyObject(rep);
    rep = key ? redisCommand(c, "%s %s", cmd, key) : redisCommand(c, "%s", cmd);
    if (rep && rep->type == REDIS_REPLY_INTEGER)
        v = rep->integer;
    else if (rep && rep->type == REDIS_REPLY_STATUS)
        v = 0;
    if (rep) freeReplyObject(rep);
    redisFree(c);
    return v;
}

/* ---- driving a store ---- */

struct fixture {
    struct event_base *base;
    struct config cfg;
    struct config_redis redis;
    struct store_shared *sh;
    struct store *store;
    int is_redis;
    struct redis_server *rp;
};

struct call {
    int fired, returned, fired_inside;
    int failed;
    char err[256];
    struct limit_outcome o;
    uint64_t elapsed_us;
};

static void on_limit(const char *err, const struct limit_outcome *o, void *arg) {
    struct call *c = arg;
    c->fired++;
    if (!c->returned) c->fired_inside = 1;
    if (err) {
        c->failed = 1;
        snprintf(c->err, sizeof c->err, "%s", err);
        assert_null(o);
    } else {
        assert_non_null(o);
        c->o = *o;
    }
}

static void run_loop_ms(struct fixture *f, unsigned ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(f->base, &tv);
    event_base_dispatch(f->base);
}

static void guard_cb(evutil_socket_t fd, short what, void *arg) {}

/* One store_limit (or store_limit_local, or store_limit_nonce when nonce is set) call, run to
 * its callback (bounded at 5 s). */
static void call_with(struct fixture *f, int local, const struct limit_bucket *b, size_t n,
                      const struct store_nonce *nonce, struct call *c) {
    uint64_t t0 = clock_mono_us();
    struct timeval tick = {0, 10000};
    struct event *guard = event_new(f->base, -1, EV_PERSIST, guard_cb, NULL);
    memset(c, 0, sizeof *c);
    event_add(guard, &tick);
    if (local)
        store_limit_local(f->store, b, n, on_limit, c);
    else if (nonce)
        store_limit_nonce(f->store, b, n, nonce, on_limit, c);
    else
        store_limit(f->store, b, n, on_limit, c);
    c->returned = 1;
    assert_int_equal(c->fired, 0);
    while (!c->fired && clock_mono_us() - t0 < 5000000) event_base_loop(f->base, EVLOOP_ONCE);
    c->elapsed_us = clock_mono_us() - t0;
    event_free(guard);
    assert_int_equal(c->fired, 1);
    assert_int_equal(c->fired_inside, 0);
}

static void call(struct fixture *f, int local, const struct limit_bucket *b, size_t n,
                 struct call *c) {
    call_with(f, local, b, n, NULL, c);
}

static void call_nonce_ok(struct fixture *f, const struct limit_bucket *b, size_t n,
                          const char *key, unsigned ttl_ms, struct call *c) {
    struct store_nonce nonce = {key, ttl_ms};
    call_with(f, 0, b, n, &nonce, c);
    if (c->failed) fail_msg("store_limit_nonce failed: %s", c->err);
}

static void call_ok(struct fixture *f, const struct limit_bucket *b, size_t n, struct call *c) {
    call(f, 0, b, n, c);
    if (c->failed) fail_msg("store_limit failed: %s", c->err);
}

static unsigned key_serial;

static void bucket(struct limit_bucket *b, const char *name, uint64_t emission_us, unsigned burst,
                   int shadow) {
    memset(b, 0, sizeof *b);
    snprintf(b->key, sizeof b->key, "capgate-test:%d:%u:rl:%s", (int)getpid(), key_serial, name);
    b->emission_us = emission_us;
    b->tolerance_us = emission_us * burst;
    b->shadow = shadow;
}

static struct fixture *fixture_new_ms(struct redis_server *rp, unsigned db, const char *password,
                                      unsigned timeout_ms) {
    struct fixture *f = calloc(1, sizeof *f);
    char err[256] = "";
    assert_non_null(f);
    assert_non_null(f->base = event_base_new());
    if (rp) {
        /* a case that failed while it had the server stopped must not fail the next ones too */
        if (rp->pid > 0) kill(rp->pid, SIGCONT);
        f->is_redis = 1;
        f->rp = rp;
        f->redis.host = "127.0.0.1";
        f->redis.port = rp->port;
        f->redis.db = db;
        f->redis.password = (char *)password;
        f->redis.timeout_ms = timeout_ms;
        f->redis.key_prefix = "capgate:";
        f->cfg.redis = &f->redis;
    }
    f->sh = store_shared_new(&f->cfg, err, sizeof err);
    if (!f->sh) fail_msg("store_shared_new: %s", err);
    assert_string_equal(store_shared_kind(f->sh), rp ? "redis" : "memory");
    f->store = store_new(f->sh, f->base, err, sizeof err);
    if (!f->store) fail_msg("store_new: %s", err);
    key_serial++;
    return f;
}

#define fixture_new(rp, db, password) fixture_new_ms(rp, db, password, CALL_TIMEOUT_MS)

static void fixture_free(struct fixture *f) {
    store_free(f->store);
    store_shared_free(f->sh);
    event_base_free(f->base);
    free(f);
}

/* ---- the contract, for both stores ---- */

static void contract_burst_refusal_refill(struct fixture *f) {
    struct limit_bucket b;
    struct call c;
    bucket(&b, "burst", 200000, 3, 0);
    for (uint64_t i = 0; i < 3; i++) {
        call_ok(f, &b, 1, &c);
        assert_int_equal(c.o.allowed, 1);
        assert_int_equal(c.o.denied, -1);
        assert_int_equal(c.o.remaining[0], 2 - i);
        assert_int_equal(c.o.retry_after_us, 0);
        assert_true(c.o.reset_us[0] > 0 && c.o.reset_us[0] <= 600000);
    }
    call_ok(f, &b, 1, &c);
    assert_int_equal(c.o.allowed, 0);
    assert_int_equal(c.o.denied, 0);
    assert_int_equal(c.o.remaining[0], 0);
    /* one emission interval at most, less the time the calls took */
    assert_true(c.o.retry_after_us > 100000 && c.o.retry_after_us <= 200000);
    run_loop_ms(f, (unsigned)(c.o.retry_after_us / 1000) + 20);
    call_ok(f, &b, 1, &c);
    assert_int_equal(c.o.allowed, 1);
    assert_int_equal(c.o.remaining[0], 0);
}

static void contract_all_or_none(struct fixture *f) {
    struct limit_bucket b[2];
    struct call c;
    bucket(&b[0], "wide", 1000000, 5, 0);
    bucket(&b[1], "narrow", 1000000, 1, 0);
    call_ok(f, b, 2, &c);
    assert_int_equal(c.o.allowed, 1);
    assert_int_equal(c.o.remaining[0], 4);
    assert_int_equal(c.o.remaining[1], 0);
    /* narrow refuses: wide reports its 4 tokens untouched */
    call_ok(f, b, 2, &c);
    assert_int_equal(c.o.allowed, 0);
    assert_int_equal(c.o.denied, 1);
    assert_int_equal(c.o.remaining[0], 4);
    assert_int_equal(c.o.remaining[1], 0);
    assert_true(c.o.retry_after_us > 900000 && c.o.retry_after_us <= 1000000);
    call_ok(f, b, 2, &c);
    assert_int_equal(c.o.allowed, 0);
    /* and wide alone still has them: the refusals took nothing */
    call_ok(f, b, 1, &c);
    assert_int_equal(c.o.allowed, 1);
    assert_int_equal(c.o.remaining[0], 3);
}

static void contract_shadow(struct fixture *f) {
    struct limit_bucket b[2];
    struct call c;
    bucket(&b[0], "shadow", 1000000, 1, 1);
    bucket(&b[1], "enforced", 1000000, 10, 0);
    call_ok(f, b, 2, &c);
    assert_int_equal(c.o.allowed, 1);
    assert_int_equal(c.o.shadow_denied, -1);
    for (int i = 0; i < 3; i++) {
        call_ok(f, b, 2, &c);
        assert_int_equal(c.o.allowed, 1);
        assert_int_equal(c.o.denied, -1);
        assert_int_equal(c.o.shadow_denied, 0);
        assert_int_equal(c.o.remaining[1], 8 - i);
    }
}

static void contract_independent_keys(struct fixture *f) {
    struct limit_bucket a, b;
    struct call c;
    bucket(&a, "one", 5000000, 1, 0);
    bucket(&b, "two", 5000000, 1, 0);
    call_ok(f, &a, 1, &c);
    assert_int_equal(c.o.allowed, 1);
    call_ok(f, &a, 1, &c);
    assert_int_equal(c.o.allowed, 0);
    call_ok(f, &b, 1, &c);
    assert_int_equal(c.o.allowed, 1);
}

static void contract_local(struct fixture *f) {
    /* the process's own buckets: also async, also all-or-none */
    struct limit_bucket b;
    struct call c;
    bucket(&b, "local", 5000000, 2, 0);
    call(f, 1, &b, 1, &c);
    assert_int_equal(c.failed, 0);
    assert_int_equal(c.o.remaining[0], 1);
    call(f, 1, &b, 1, &c);
    call(f, 1, &b, 1, &c);
    assert_int_equal(c.o.allowed, 0);
}

static void run_contract(struct fixture *f) {
    struct store_stats st;
    contract_burst_refusal_refill(f);
    contract_all_or_none(f);
    contract_shadow(f);
    contract_independent_keys(f);
    contract_local(f);
    assert_int_equal(store_connected(f->store), 1);
    store_get_stats(f->store, &st);
    /* 16 store_limit calls; the memory store also counts the 3 local ones */
    assert_int_equal(st.commands, f->is_redis ? 16 : 19);
    assert_int_equal(st.errors, 0);
    assert_int_equal(st.timeouts, 0);
}

/* A signed request's Nonce claimed with its limit check (store_limit_nonce). Redis: the second
 * claim of a key is a replay that takes no token from the buckets, with or without buckets, and
 * the key expires after its TTL; memory: the nonce is ignored (the process's own cache has it). */
static void contract_nonce(struct fixture *f) {
    struct limit_bucket b;
    struct call c;
    char key[128], lone[128];
    bucket(&b, "nonce", 5000000, 2, 0);
    snprintf(key, sizeof key, "capgate-test:%d:%u:nonce:AKIDx:42", (int)getpid(), key_serial);
    snprintf(lone, sizeof lone, "capgate-test:%d:%u:nonce:AKIDx:43", (int)getpid(), key_serial);
    call_nonce_ok(f, &b, 1, key, 60000, &c);
    assert_int_equal(c.o.allowed, 1);
    assert_int_equal(c.o.replay, 0);
    assert_int_equal(c.o.remaining[0], 1);
    call_nonce_ok(f, &b, 1, key, 60000, &c);
    if (f->is_redis) {
        assert_int_equal(c.o.replay, 1);
        assert_int_equal(c.o.allowed, 0);
        assert_int_equal(c.o.denied, -1);
        assert_int_equal(c.o.shadow_denied, -1);
        /* the replay took nothing: the bucket still has its last token */
        call_ok(f, &b, 1, &c);
        assert_int_equal(c.o.allowed, 1);
        assert_int_equal(c.o.remaining[0], 0);
        assert_true(redis_int(f->rp, 0, "PTTL", key) > 59000);
    } else {
        assert_int_equal(c.o.replay, 0);
        assert_int_equal(c.o.allowed, 1);
        assert_int_equal(c.o.remaining[0], 0);
    }
    /* no bucket: the claim alone (a plain SET NX PX in Redis) */
    call_nonce_ok(f, NULL, 0, lone, 200, &c);
    assert_int_equal(c.o.allowed, 1);
    assert_int_equal(c.o.replay, 0);
    call_nonce_ok(f, NULL, 0, lone, 200, &c);
    assert_int_equal(c.o.replay, f->is_redis);
    assert_int_equal(c.o.allowed, !f->is_redis);
    if (f->is_redis) {
        long long ttl = redis_int(f->rp, 0, "PTTL", lone);
        assert_true(ttl > 0 && ttl <= 200);
    }
    /* expired: the same Nonce may be claimed again */
    run_loop_ms(f, 250);
    call_nonce_ok(f, NULL, 0, lone, 200, &c);
    assert_int_equal(c.o.allowed, 1);
    assert_int_equal(c.o.replay, 0);
}

/* ---- prefetch pool and idempotency records, for both stores ---- */

struct cache_call {
    int fired, returned, fired_inside, failed;
    char err[256];
    char *url;
    size_t depth;
    unsigned discarded;
    enum store_idem_state state;
    char *body;
    size_t body_len;
};

static void cache_reset(struct cache_call *c) {
    free(c->url);
    free(c->body);
    memset(c, 0, sizeof *c);
}

static void cache_failed(struct cache_call *c, const char *err) {
    c->failed = 1;
    snprintf(c->err, sizeof c->err, "%s", err);
}

static void on_pool(const char *err, const struct store_pool_result *r, void *arg) {
    struct cache_call *c = arg;
    c->fired++;
    if (!c->returned) c->fired_inside = 1;
    if (err) {
        assert_null(r);
        cache_failed(c, err);
        return;
    }
    c->url = r->url ? strdup(r->url) : NULL;
    c->depth = r->depth;
    c->discarded = r->discarded;
}

static void on_idem(const char *err, const struct store_idem_result *r, void *arg) {
    struct cache_call *c = arg;
    c->fired++;
    if (!c->returned) c->fired_inside = 1;
    if (err) {
        assert_null(r);
        cache_failed(c, err);
        return;
    }
    c->state = r->state;
    if (r->body) {
        c->body = malloc(r->body_len + 1);
        memcpy(c->body, r->body, r->body_len);
        c->body[r->body_len] = 0;
        c->body_len = r->body_len;
    }
}

/* Runs f's loop until every call in c[0..n) fired (bounded at 5 s); each fired once, never
 * inside the call that started it, without error. */
static void cache_wait(struct fixture *f, struct cache_call *c, size_t n) {
    uint64_t t0 = clock_mono_us();
    struct timeval tick = {0, 10000};
    struct event *guard = event_new(f->base, -1, EV_PERSIST, guard_cb, NULL);
    size_t done;
    event_add(guard, &tick);
    for (;;) {
        done = 0;
        for (size_t i = 0; i < n; i++) done += c[i].fired != 0;
        if (done == n || clock_mono_us() - t0 > 5000000) break;
        event_base_loop(f->base, EVLOOP_ONCE);
    }
    event_free(guard);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(c[i].fired, 1);
        assert_int_equal(c[i].fired_inside, 0);
        if (c[i].failed) fail_msg("store call failed: %s", c[i].err);
    }
}

#define CACHE_CALL(f, c, expr) \
    do { \
        cache_reset(c); \
        expr; \
        (c)->returned = 1; \
        assert_int_equal((c)->fired, 0); \
        cache_wait(f, c, 1); \
    } while (0)

static void cache_key(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "capgate-test:%d:%u:%s", (int)getpid(), key_serial, name);
}

static void contract_pool(struct fixture *f, struct fixture *other) {
    char key[128], url[64];
    struct cache_call c = {0}, many[24];
    cache_key(key, sizeof key, "pool:fifo");
    /* capped at 2: the oldest goes */
    for (int i = 1; i <= 3; i++) {
        snprintf(url, sizeof url, "https://captcha.test/u%d?a=1|b", i);
        CACHE_CALL(f, &c, store_pool_push(f->store, key, url, 2, 60000, on_pool, &c));
        assert_int_equal(c.depth, i < 2 ? (size_t)i : 2);
    }
    CACHE_CALL(f, &c, store_pool_depth(f->store, key, 60000, on_pool, &c));
    assert_int_equal(c.depth, 2);
    assert_int_equal(c.discarded, 0);
    CACHE_CALL(f, &c, store_pool_pop(f->store, key, 60000, on_pool, &c));
    assert_string_equal(c.url, "https://captcha.test/u2?a=1|b");
    CACHE_CALL(f, &c, store_pool_pop(other->store, key, 60000, on_pool, &c));
    assert_string_equal(c.url, "https://captcha.test/u3?a=1|b");
    CACHE_CALL(f, &c, store_pool_pop(f->store, key, 60000, on_pool, &c));
    assert_null(c.url);
    assert_int_equal(c.discarded, 0);

    /* never after the TTL: depth and pop drop what expired and say how many */
    cache_key(key, sizeof key, "pool:ttl");
    CACHE_CALL(f, &c, store_pool_push(f->store, key, "https://x/old1", 10, 100, on_pool, &c));
    CACHE_CALL(f, &c, store_pool_push(f->store, key, "https://x/old2", 10, 100, on_pool, &c));
    run_loop_ms(f, 130);
    CACHE_CALL(f, &c, store_pool_push(f->store, key, "https://x/new", 10, 100, on_pool, &c));
    CACHE_CALL(f, &c, store_pool_depth(f->store, key, 100, on_pool, &c));
    assert_int_equal(c.depth, 1);
    assert_int_equal(c.discarded, 2);
    run_loop_ms(f, 130);
    CACHE_CALL(f, &c, store_pool_pop(f->store, key, 100, on_pool, &c));
    assert_null(c.url);
    assert_int_equal(c.discarded, 1);

    /* each URL once, across two stores on the same backend, popped concurrently */
    cache_key(key, sizeof key, "pool:once");
    for (int i = 0; i < 20; i++) {
        snprintf(url, sizeof url, "https://x/once%d", i);
        CACHE_CALL(f, &c, store_pool_push(f->store, key, url, 100, 60000, on_pool, &c));
    }
    memset(many, 0, sizeof many);
    for (int i = 0; i < 24; i++) {
        struct fixture *which = i % 2 ? other : f;
        store_pool_pop(which->store, key, 60000, on_pool, &many[i]);
        many[i].returned = 1;
    }
    cache_wait(f, many, 24); /* the other base's callbacks: see below */
    {
        int got = 0, none = 0;
        for (int i = 0; i < 24; i++) {
            if (!many[i].url) {
                none++;
                continue;
            }
            got++;
            for (int j = 0; j < i; j++)
                if (many[j].url) assert_string_not_equal(many[i].url, many[j].url);
        }
        assert_int_equal(got, 20);
        assert_int_equal(none, 4);
    }
    for (int i = 0; i < 24; i++) cache_reset(&many[i]);
    cache_reset(&c);
}

static void contract_idem(struct fixture *f, struct fixture *other) {
    char key[128], fa[STORE_IDEM_FP_LEN + 1], fb[STORE_IDEM_FP_LEN + 1];
    static const char body[] = "{\"code\":0,\"url\":\"https://x/a|b\"}\n\x01 tail";
    struct cache_call c = {0};
    memset(fa, 'a', STORE_IDEM_FP_LEN);
    memset(fb, 'b', STORE_IDEM_FP_LEN);
    fa[STORE_IDEM_FP_LEN] = fb[STORE_IDEM_FP_LEN] = 0;
    cache_key(key, sizeof key, "idem:k1");

    CACHE_CALL(f, &c, store_idem_begin(f->store, key, fa, 5000, on_idem, &c));
    assert_int_equal(c.state, STORE_IDEM_NEW);
    CACHE_CALL(f, &c, store_idem_begin(other->store, key, fa, 5000, on_idem, &c));
    assert_int_equal(c.state, STORE_IDEM_PENDING);
    CACHE_CALL(f, &c, store_idem_begin(f->store, key, fb, 5000, on_idem, &c));
    assert_int_equal(c.state, STORE_IDEM_MISMATCH);
    /* only the pending marker's own fingerprint completes it */
    CACHE_CALL(f, &c, store_idem_complete(f->store, key, fb, "x", 1, 5000, on_idem, &c));
    assert_int_equal(c.state, STORE_IDEM_MISMATCH);
    CACHE_CALL(f, &c,
               store_idem_complete(f->store, key, fa, body, sizeof body - 1, 150, on_idem, &c));
    assert_int_equal(c.state, STORE_IDEM_DONE);
    CACHE_CALL(f, &c, store_idem_begin(other->store, key, fa, 5000, on_idem, &c));
    assert_int_equal(c.state, STORE_IDEM_DONE);
    assert_int_equal(c.body_len, sizeof body - 1);
    assert_memory_equal(c.body, body, sizeof body - 1);
    CACHE_CALL(f, &c, store_idem_begin(f->store, key, fb, 5000, on_idem, &c));
    assert_int_equal(c.state, STORE_IDEM_MISMATCH);
    /* done is final: neither complete nor abandon touch it */
    CACHE_CALL(f, &c, store_idem_complete(f->store, key, fa, "y", 1, 5000, on_idem, &c));
    assert_int_equal(c.state, STORE_IDEM_MISMATCH);
    CACHE_CALL(f, &c, store_idem_abandon(f->store, key, fa, on_idem, &c));
    assert_int_equal(c.state, STORE_IDEM_MISMATCH);
    /* the reply lives ttl_ms */
    run_loop_ms(f, 200);
    CACHE_CALL(f, &c, store_idem_begin(f->store, key, fb, 5000, on_idem, &c));
    assert_int_equal(c.state, STORE_IDEM_NEW);

    /* abandon frees the key at once; a pending marker expires by itself */
    cache_key(key, sizeof key, "idem:k2");
    CACHE_CALL(f, &c, store_idem_begin(f->store, key, fa, 100, on_idem, &c));
    assert_int_equal(c.state, STORE_IDEM_NEW);
    CACHE_CALL(f, &c, store_idem_abandon(f->store, key, fb, on_idem, &c));
    assert_int_equal(c.state, STORE_IDEM_MISMATCH);
    CACHE_CALL(f, &c, store_idem_abandon(f->store, key, fa, on_idem, &c));
    assert_int_equal(c.state, STORE_IDEM_DONE);
    CACHE_CALL(f, &c, store_idem_begin(other->store, key, fa, 100, on_idem, &c));
    assert_int_equal(c.state, STORE_IDEM_NEW);
    run_loop_ms(f, 150);
    CACHE_CALL(f, &c, store_idem_begin(f->store, key, fa, 100, on_idem, &c));
    assert_int_equal(c.state, STORE_IDEM_NEW);
    /* a malformed fingerprint is refused, asynchronously */
    cache_reset(&c);
    store_idem_begin(f->store, key, "short", 100, on_idem, &c);
    c.returned = 1;
    assert_int_equal(c.fired, 0);
    run_loop_ms(f, 20);
    assert_int_equal(c.failed, 1);
    cache_reset(&c);
}

/* A second store on the same backend, driven from f's base (two instances sharing Redis, or two
 * workers sharing the memory store). */
static struct fixture *fixture_peer(struct fixture *f) {
    struct fixture *p = calloc(1, sizeof *p);
    char err[256] = "";
    assert_non_null(p);
    p->base = f->base;
    p->is_redis = f->is_redis;
    p->rp = f->rp;
    p->sh = f->sh;
    if (f->is_redis) {
        p->redis = f->redis;
        p->cfg.redis = &p->redis;
        p->sh = store_shared_new(&p->cfg, err, sizeof err);
        if (!p->sh) fail_msg("store_shared_new: %s", err);
    }
    p->store = store_new(p->sh, f->base, err, sizeof err);
    if (!p->store) fail_msg("store_new: %s", err);
    return p;
}

static void fixture_peer_free(struct fixture *p) {
    store_free(p->store);
    if (p->is_redis) store_shared_free(p->sh);
    free(p);
}

static void run_cache_contract(struct fixture *f) {
    struct fixture *other = fixture_peer(f);
    contract_pool(f, other);
    contract_idem(f, other);
    fixture_peer_free(other);
}

static void test_memory_contract(void **state) {
    struct fixture *f = fixture_new(NULL, 0, NULL);
    run_contract(f);
    run_cache_contract(f);
    fixture_free(f);
}

static void test_memory_nonce(void **state) {
    struct fixture *f = fixture_new(NULL, 0, NULL);
    contract_nonce(f);
    fixture_free(f);
}

static void test_memory_expiry_and_closed(void **state) {
    struct store_memory *m = store_memory_new();
    struct limit_bucket b[3];
    struct limit_outcome o;
    struct fixture *f;
    struct call c;
    assert_non_null(m);
    bucket(&b[0], "e1", 1000, 2, 0);
    bucket(&b[1], "e2", 1000, 2, 0);
    bucket(&b[2], "e3", 50000, 2, 0);
    store_memory_check(m, b, 3, 1000000, &o);
    assert_int_equal(o.allowed, 1);
    assert_int_equal(store_memory_count(m), 3);
    /* long past TAT + tolerance, touching the table drops what expired */
    for (int i = 0; i < 400; i++)
        store_memory_check(m, &b[2], 1, 1000000 + 20000 * (uint64_t)i, &o);
    assert_int_equal(store_memory_count(m), 1);
    store_memory_free(m);

    /* a callback still pending when the store goes fires once, with "store closed" */
    f = fixture_new(NULL, 0, NULL);
    memset(&c, 0, sizeof c);
    store_limit(f->store, b, 1, on_limit, &c);
    c.returned = 1;
    assert_int_equal(c.fired, 0);
    store_free(f->store);
    f->store = NULL;
    assert_int_equal(c.fired, 1);
    assert_string_equal(c.err, "store closed");
    fixture_free(f);
}

/* The idempotency table's size is driven by clients (rate x ttl_s): it grows, and every record
 * stays findable across the rehash; expired records go before it grows. */
static void test_memory_idem_grows(void **state) {
    struct store_memory *m = store_memory_new();
    enum store_idem_state st;
    char key[32], *body;
    size_t len, first = 0;
    assert_non_null(m);
    first = store_memory_idem_chains(m);
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(store_memory_idem_begin(m, key, "fp", 60000, 1000, &st, &body, &len), 0);
        assert_int_equal(st, STORE_IDEM_NEW);
    }
    assert_true(store_memory_idem_chains(m) >= 4 * first);
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(store_memory_idem_begin(m, key, "fp", 60000, 2000, &st, &body, &len), 0);
        assert_int_equal(st, STORE_IDEM_PENDING);
    }
    /* long after the pending markers expired, new records sweep them instead of growing more */
    size_t grown = store_memory_idem_chains(m);
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "n%d", i);
        assert_int_equal(store_memory_idem_begin(m, key, "fp", 60000, 100000, &st, &body, &len), 0);
    }
    assert_int_equal(store_memory_idem_chains(m), grown);
    assert_true(store_memory_idem_count(m) <= 5000 + grown);
    store_memory_free(m);
}

static int redis_group_setup(void **state) {
    main_redis.port = redis_server_free_port();
    if (main_redis.port <= 0 || redis_server_start(&main_redis) != 0) {
        fprintf(stderr, "test_store: could not start redis-server; failing the redis cases\n");
        main_redis.pid = -1;
        return -1;
    }
    return 0;
}

static int redis_group_teardown(void **state) {
    redis_server_stop(&main_redis);
    return 0;
}

static void test_redis_contract(void **state) {
    struct fixture *f = fixture_new(&main_redis, 0, NULL);
    struct limit_bucket b;
    long long ttl;
    run_contract(f);
    /* the bucket lives in Redis with an expiry no longer than its tolerance */
    bucket(&b, "burst", 200000, 3, 0);
    ttl = redis_int(&main_redis, 0, "PTTL", b.key);
    assert_true(ttl > 0 && ttl <= 600);
    run_cache_contract(f);
    fixture_free(f);
}

static void test_redis_nonce(void **state) {
    /* also across two stores sharing the server (two instances): one claim wins */
    struct fixture *f = fixture_new(&main_redis, 0, NULL);
    struct fixture *g = fixture_new(&main_redis, 0, NULL);
    struct limit_bucket b;
    struct call c;
    struct store_stats st;
    char key[128];
    contract_nonce(f);
    store_get_stats(f->store, &st);
    /* one command per call: the claim rides in the limit's EVALSHA or is the lone SET */
    assert_int_equal(st.commands, 6);
    assert_int_equal(st.errors, 0);
    bucket(&b, "nonce-peer", 5000000, 5, 0);
    snprintf(key, sizeof key, "capgate-test:%d:%u:nonce:AKIDpeer:7", (int)getpid(), key_serial);
    call_nonce_ok(f, &b, 1, key, 60000, &c);
    assert_int_equal(c.o.allowed, 1);
    call_nonce_ok(g, &b, 1, key, 60000, &c);
    assert_int_equal(c.o.replay, 1);
    call_nonce_ok(g, NULL, 0, key, 60000, &c);
    assert_int_equal(c.o.replay, 1);
    /* after SCRIPT FLUSH the claim still rides in the (reloaded) script */
    assert_int_equal(redis_int(&main_redis, 0, "SCRIPT", "FLUSH"), 0);
    call_nonce_ok(g, &b, 1, key, 60000, &c);
    assert_int_equal(c.o.replay, 1);
    call_ok(g, &b, 1, &c);
    assert_int_equal(c.o.remaining[0], 3);
    fixture_free(g);
    fixture_free(f);
}

static void test_redis_cache_layout(void **state) {
    /* the pool is a Redis list expiring with 2 * ttl; an idempotency record a string with PX */
    struct fixture *f = fixture_new(&main_redis, 0, NULL);
    struct cache_call c = {0};
    char key[128], fp[STORE_IDEM_FP_LEN + 1];
    long long ttl;
    cache_key(key, sizeof key, "layout:pool");
    CACHE_CALL(f, &c, store_pool_push(f->store, key, "https://x/1", 5, 60000, on_pool, &c));
    assert_int_equal(redis_int(&main_redis, 0, "LLEN", key), 1);
    ttl = redis_int(&main_redis, 0, "PTTL", key);
    assert_true(ttl > 60000 && ttl <= 120000);
    memset(fp, 'c', STORE_IDEM_FP_LEN);
    fp[STORE_IDEM_FP_LEN] = 0;
    cache_key(key, sizeof key, "layout:idem");
    CACHE_CALL(f, &c, store_idem_begin(f->store, key, fp, 3500, on_idem, &c));
    ttl = redis_int(&main_redis, 0, "PTTL", key);
    assert_true(ttl > 3000 && ttl <= 3500);
    /* scripts flushed: each cache operation reloads its own script and succeeds */
    assert_int_equal(redis_int(&main_redis, 0, "SCRIPT", "FLUSH"), 0);
    CACHE_CALL(f, &c, store_idem_complete(f->store, key, fp, "{}", 2, 300000, on_idem, &c));
    assert_int_equal(c.state, STORE_IDEM_DONE);
    ttl = redis_int(&main_redis, 0, "PTTL", key);
    assert_true(ttl > 290000 && ttl <= 300000);
    cache_key(key, sizeof key, "layout:pool");
    CACHE_CALL(f, &c, store_pool_pop(f->store, key, 60000, on_pool, &c));
    assert_string_equal(c.url, "https://x/1");
    cache_reset(&c);
    fixture_free(f);
}

static void test_redis_auth_and_db(void **state) {
    struct redis_server rp = {
        .pid = -1, .port = redis_server_free_port(), .password = "s3cret pass"};
    struct fixture *f;
    struct limit_bucket b;
    struct call c;
    assert_int_equal(redis_server_start(&rp), 0);
    f = fixture_new(&rp, 5, "s3cret pass");
    bucket(&b, "db5", 1000000, 2, 0);
    call_ok(f, &b, 1, &c);
    assert_int_equal(c.o.allowed, 1);
    assert_int_equal(redis_int(&rp, 5, "EXISTS", b.key), 1);
    assert_int_equal(redis_int(&rp, 0, "EXISTS", b.key), 0);
    fixture_free(f);

    /* a wrong password never admits: the caller hears an error within the timeout */
    f = fixture_new_ms(&rp, 0, "wrong", TIMEOUT_MS);
    call(f, 0, &b, 1, &c);
    assert_int_equal(c.failed, 1);
    assert_true(c.elapsed_us <= (TIMEOUT_MS + SLACK_MS) * 1000);
    assert_int_equal(store_connected(f->store), 0);
    fixture_free(f);
    redis_server_stop(&rp);
}

static void test_redis_noscript(void **state) {
    struct fixture *f = fixture_new(&main_redis, 0, NULL);
    struct limit_bucket b;
    struct call c;
    struct store_stats st;
    bucket(&b, "noscript", 1000000, 5, 0);
    call_ok(f, &b, 1, &c);
    assert_int_equal(redis_int(&main_redis, 0, "SCRIPT", "FLUSH"), 0);
    call_ok(f, &b, 1, &c);
    assert_int_equal(c.o.allowed, 1);
    assert_int_equal(c.o.remaining[0], 3);
    store_get_stats(f->store, &st);
    assert_int_equal(st.noscript_reloads, 1);
    assert_int_equal(st.errors, 0);
    /* loaded again: no further reload */
    call_ok(f, &b, 1, &c);
    store_get_stats(f->store, &st);
    assert_int_equal(st.noscript_reloads, 1);
    fixture_free(f);
}

/* calls=N of one command in INFO commandstats (0 when it never ran). */
static long long redis_calls(const char *cmd) {
    redisContext *c = redis_server_connect(&main_redis);
    redisReply *rep;
    char pat[64];
    long long v = 0;
    const char *p;
    if (!c) return -1;
    rep = redisCommand(c, "INFO commandstats");
    snprintf(pat, sizeof pat, "cmdstat_%s:calls=", cmd);
    if (rep && rep->type == REDIS_REPLY_STRING && (p = strstr(rep->str, pat)))
        v = strtoll(p + strlen(pat), NULL, 10);
    if (rep) freeReplyObject(rep);
    redisFree(c);
    return v;
}

/* The limit calls of one loop turn share one EVALSHA (store_lua.h): each request is decided as
 * if alone, in order: a later one sees what an earlier one took, a refusal names the bucket that
 * refused and takes nothing, a shadow bucket reports without refusing, a Nonce claimed earlier in
 * the same batch is a replay; each key written is SET once. The memory store, called one request
 * at a time, must agree on every decision and remaining count. */
#define BATCH_N 9
static void test_redis_batch(void **state) {
    struct fixture *f = fixture_new(&main_redis, 0, NULL);
    struct fixture *mem = fixture_new(NULL, 0, NULL);
    struct limit_bucket a, bb, sh, set[BATCH_N][3];
    struct store_nonce nonce[BATCH_N];
    struct call c[BATCH_N], m;
    size_t nb[BATCH_N];
    char nkey[2][128];
    long long evalsha0, set0;
    uint64_t t0;
    int done;
    bucket(&a, "batch-a", 10000000, 3, 0);   /* 3 requests, then refuses for 10 s */
    bucket(&bb, "batch-b", 10000000, 5, 0);  /* 5 */
    bucket(&sh, "batch-sh", 10000000, 2, 1); /* shadow: reports from the 3rd on */
    snprintf(nkey[0], sizeof nkey[0], "capgate-test:%d:%u:nonce:AKIDbatch:1", (int)getpid(),
             key_serial);
    snprintf(nkey[1], sizeof nkey[1], "capgate-test:%d:%u:nonce:AKIDbatch:2", (int)getpid(),
             key_serial);
    for (int i = 0; i < BATCH_N; i++) {
        memset(&nonce[i], 0, sizeof nonce[i]);
        /* requests 0-5: [b, a, sh]; 6: [b] alone; 7, 8: [b] with the same Nonce */
        set[i][0] = bb;
        set[i][1] = a;
        set[i][2] = sh;
        nb[i] = i < 6 ? 3 : 1;
        if (i >= 7) nonce[i] = (struct store_nonce){nkey[0], 60000};
    }
    nonce[2] = (struct store_nonce){nkey[1], 60000};
    evalsha0 = redis_calls("evalsha");
    set0 = redis_calls("set");
    for (int i = 0; i < BATCH_N; i++) {
        memset(&c[i], 0, sizeof c[i]);
        store_limit_nonce(f->store, set[i], nb[i], nonce[i].key ? &nonce[i] : NULL, on_limit,
                          &c[i]);
        c[i].returned = 1;
    }
    t0 = clock_mono_us();
    do {
        event_base_loop(f->base, EVLOOP_ONCE);
        done = 1;
        for (int i = 0; i < BATCH_N; i++) done &= c[i].fired == 1;
    } while (!done && clock_mono_us() - t0 < 5000000);
    assert_true(done);
    assert_int_equal(redis_calls("evalsha") - evalsha0, 1);
    /* a SET NX per Nonce claim (requests 2, 7 and 8), then one SET per bucket key written (a,
     * b, and sh, which admitted requests 0 and 1) */
    assert_int_equal(redis_calls("set") - set0, 3 + 3);
    for (int i = 0; i < BATCH_N; i++) {
        if (c[i].failed) fail_msg("request %d: %s", i, c[i].err);
        assert_int_equal(c[i].fired_inside, 0);
    }
    for (int i = 0; i < 8; i++) {
        /* the memory store, one request at a time (it ignores Nonces) */
        call(mem, 0, set[i], nb[i], &m);
        assert_int_equal(c[i].o.replay, 0);
        assert_int_equal(c[i].o.allowed, m.o.allowed);
        assert_int_equal(c[i].o.denied, m.o.denied);
        assert_int_equal(c[i].o.shadow_denied, m.o.shadow_denied);
        for (size_t k = 0; k < nb[i]; k++) assert_int_equal(c[i].o.remaining[k], m.o.remaining[k]);
    }
    /* spelled out: a refuses the 4th to 6th (index 1), the shadow bucket reports from the 3rd,
     * b keeps what the refused ones did not take */
    assert_int_equal(c[2].o.allowed, 1);
    assert_int_equal(c[2].o.shadow_denied, 2);
    assert_int_equal(c[3].o.allowed, 0);
    assert_int_equal(c[3].o.denied, 1);
    assert_true(c[3].o.retry_after_us > 0);
    assert_int_equal(c[6].o.allowed, 1);
    assert_int_equal(c[6].o.remaining[0], 1); /* 3 + this one taken of 5 */
    assert_int_equal(c[7].o.allowed, 1);      /* the last of b */
    assert_int_equal(c[7].o.remaining[0], 0);
    assert_int_equal(c[8].o.replay, 1); /* the same Nonce, claimed by request 7 */
    assert_int_equal(c[8].o.allowed, 0);
    fixture_free(mem);
    fixture_free(f);
}

/* Calls until one succeeds, bounded; returns the number of calls that failed first. */
static int call_until_ok(struct fixture *f, const struct limit_bucket *b, unsigned within_ms) {
    uint64_t t0 = clock_mono_us();
    int failures = 0;
    struct call c;
    for (;;) {
        call(f, 0, b, 1, &c);
        if (!c.failed) return failures;
        failures++;
        if (clock_mono_us() - t0 > within_ms * 1000ULL)
            fail_msg("store still failing after %u ms: %s", within_ms, c.err);
        run_loop_ms(f, 50);
    }
}

#define MARKED_DOWN "redis unavailable (marked down: "

static void test_redis_timeout(void **state) {
    struct fixture *f = fixture_new_ms(&main_redis, 0, NULL, TIMEOUT_MS);
    struct limit_bucket b;
    struct call c;
    struct store_stats st;
    bucket(&b, "stopped", 1000, 1000, 0);
    call_ok(f, &b, 1, &c);
    kill(main_redis.pid, SIGSTOP);
    /* the first command waits out its timeout... */
    call(f, 0, &b, 1, &c);
    assert_int_equal(c.failed, 1);
    assert_string_equal(c.err, "redis timed out after 100 ms");
    /* The bound that matters is the upper one (a dead Redis never makes a request wait
     * longer). The lower one only shows the timer is the command's: libevent times it
     * from the loop's cached clock (CLOCK_MONOTONIC_COARSE, taken when the loop iteration
     * began), so under a sanitizer on a loaded machine it may fire some ms early. */
    assert_true(c.elapsed_us >= TIMEOUT_MS * 1000 / 2);
    assert_true(c.elapsed_us <= (TIMEOUT_MS + SLACK_MS) * 1000);
    assert_int_equal(store_connected(f->store), 0);
    /* ...and marks the store down: the next ones are refused at once, without a timer */
    for (int i = 0; i < 3; i++) {
        call(f, 0, &b, 1, &c);
        assert_int_equal(c.failed, 1);
        if (strncmp(c.err, MARKED_DOWN, strlen(MARKED_DOWN)) != 0)
            fail_msg("not refused as marked down: %s", c.err);
        assert_non_null(strstr(c.err, "redis timed out after 100 ms"));
    }
    {
        /* the pool and idempotency commands too */
        struct cache_call cc = {0};
        char key[128];
        cache_key(key, sizeof key, "stopped-pool");
        uint64_t t0 = clock_mono_us();
        store_pool_pop(f->store, key, 60000, on_pool, &cc);
        cc.returned = 1;
        while (!cc.fired && clock_mono_us() - t0 < 5000000) run_loop_ms(f, 5);
        assert_int_equal(cc.fired, 1);
        assert_int_equal(cc.failed, 1);
        if (strncmp(cc.err, MARKED_DOWN, strlen(MARKED_DOWN)) != 0)
            fail_msg("pool pop not refused as marked down: %s", cc.err);
        cache_reset(&cc);
    }
    store_get_stats(f->store, &st);
    assert_int_equal(st.timeouts, 1);
    assert_int_equal(st.fast_fails, 4);
    assert_int_equal(st.errors, 5);
    assert_int_equal(store_connected(f->store), 0);
    kill(main_redis.pid, SIGCONT);
    /* the probe (a PING on the same connection, or a reconnect) brings it back by itself */
    call_until_ok(f, &b, 3000);
    call_ok(f, &b, 1, &c);
    assert_int_equal(c.o.allowed, 1);
    assert_int_equal(store_connected(f->store), 1);
    fixture_free(f);
}

static void test_redis_probe_drop(void **state) {
    /* a server that stays stopped: the probes time out too, the third timeout in a row drops
     * the connection, commands keep failing at once meanwhile, and the reconnect's handshake is
     * the probe that brings the store back after SIGCONT */
    struct fixture *f = fixture_new_ms(&main_redis, 0, NULL, TIMEOUT_MS);
    struct limit_bucket b;
    struct call c;
    struct store_stats st;
    bucket(&b, "stopped-long", 1000, 1000, 0);
    call_ok(f, &b, 1, &c);
    kill(main_redis.pid, SIGSTOP);
    call(f, 0, &b, 1, &c);
    assert_string_equal(c.err, "redis timed out after 100 ms");
    run_loop_ms(f, 4 * TIMEOUT_MS);
    for (int i = 0; i < 3; i++) {
        call(f, 0, &b, 1, &c);
        assert_int_equal(c.failed, 1);
        if (strncmp(c.err, MARKED_DOWN, strlen(MARKED_DOWN)) != 0)
            fail_msg("not refused as marked down: %s", c.err);
        run_loop_ms(f, 30);
    }
    store_get_stats(f->store, &st);
    assert_int_equal(st.timeouts, 1);
    assert_int_equal(st.fast_fails, 3);
    assert_int_equal(store_connected(f->store), 0);
    kill(main_redis.pid, SIGCONT);
    call_until_ok(f, &b, 8000);
    assert_int_equal(store_connected(f->store), 1);
    store_get_stats(f->store, &st);
    assert_true(st.reconnects >= 1);
    fixture_free(f);
}

static void test_redis_free_with_pending(void **state) {
    /* freed with one command abandoned after its timeout and one still waiting for its reply:
     * the waiting one hears "store closed" once, the abandoned one is freed with the link */
    /* 1 s: the second command goes out 40 ms after the first, well before the first times out
     * and marks the store down, even on a busy machine */
    struct fixture *f = fixture_new_ms(&main_redis, 0, NULL, 1000);
    struct limit_bucket b;
    struct call c, first, pending;
    uint64_t t0;
    bucket(&b, "pending", 1000, 1000, 0);
    call_ok(f, &b, 1, &c);
    kill(main_redis.pid, SIGSTOP);
    /* both sent before the first timeout marks the store down */
    memset(&first, 0, sizeof first);
    memset(&pending, 0, sizeof pending);
    store_limit(f->store, &b, 1, on_limit, &first);
    first.returned = 1;
    run_loop_ms(f, 40);
    store_limit(f->store, &b, 1, on_limit, &pending);
    pending.returned = 1;
    t0 = clock_mono_us();
    while (!first.fired && clock_mono_us() - t0 < 5000000) run_loop_ms(f, 5);
    assert_string_equal(first.err, "redis timed out after 1000 ms");
    assert_int_equal(pending.fired, 0);
    store_free(f->store);
    f->store = NULL;
    assert_int_equal(pending.fired, 1);
    assert_string_equal(pending.err, "store closed");
    kill(main_redis.pid, SIGCONT);
    fixture_free(f);
}

static void test_redis_reconnect(void **state) {
    struct fixture *f = fixture_new_ms(&main_redis, 0, NULL, TIMEOUT_MS);
    struct limit_bucket b;
    struct call c;
    struct store_stats st;
    bucket(&b, "restart", 1000, 1000, 0);
    call_ok(f, &b, 1, &c);
    redis_server_stop(&main_redis);
    /* down: an error, never a wait past the timeout; the local buckets still answer */
    for (int i = 0; i < 3; i++) {
        call(f, 0, &b, 1, &c);
        assert_int_equal(c.failed, 1);
        assert_true(c.elapsed_us <= (TIMEOUT_MS + SLACK_MS) * 1000);
        run_loop_ms(f, 30);
    }
    assert_int_equal(store_connected(f->store), 0);
    call(f, 1, &b, 1, &c);
    assert_int_equal(c.failed, 0);
    assert_int_equal(c.o.allowed, 1);
    assert_int_equal(redis_server_start(&main_redis), 0);
    call_until_ok(f, &b, 8000);
    assert_int_equal(store_connected(f->store), 1);
    store_get_stats(f->store, &st);
    assert_true(st.reconnects >= 1);
    fixture_free(f);
}

int main(void) {
    const struct CMUnitTest memory_tests[] = {
        cmocka_unit_test(test_memory_contract),
        cmocka_unit_test(test_memory_expiry_and_closed),
        cmocka_unit_test(test_memory_idem_grows),
        cmocka_unit_test(test_memory_nonce),
    };
    const struct CMUnitTest redis_tests[] = {
        cmocka_unit_test(test_redis_contract),
        cmocka_unit_test(test_redis_nonce),
        cmocka_unit_test(test_redis_cache_layout),
        cmocka_unit_test(test_redis_auth_and_db),
        cmocka_unit_test(test_redis_noscript),
        cmocka_unit_test(test_redis_timeout),
        cmocka_unit_test(test_redis_batch),
        cmocka_unit_test(test_redis_probe_drop),
        cmocka_unit_test(test_redis_free_with_pending),
        cmocka_unit_test(test_redis_reconnect),
    };
    int failed;
    signal(SIGPIPE, SIG_IGN);
    log_init("test_store", LOG_LEVEL_ERROR);
    failed = cmocka_run_group_tests_name("memory", memory_tests, NULL, NULL);
    failed +=
        cmocka_run_group_tests_name("redis", redis_tests, redis_group_setup, redis_group_teardown);
    return failed ? 1 : 0;
}
