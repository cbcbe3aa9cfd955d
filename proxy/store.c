/* store.c: the store interface over its two backends. It owns what both share: the per-worker
 * queue that delivers callbacks on a later loop turn (so none fires inside the call that started
 * it), the counters behind /metrics, and the choice of backend from the config. */
#include "store.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <event2/event.h>

#include "capgate/clock.h"
#include "capgate/log.h"
#include "config.h"
#include "redis_conn.h"

enum store_kind { STORE_KIND_MEMORY, STORE_KIND_REDIS };

struct store_shared {
    enum store_kind kind;
    struct store_memory *memory; /* the memory store, or the local fallback beside redis */
    struct redis_target *redis;  /* the settings at start; SIGHUP publishes newer (redis_conn.h) */
};

enum store_deferred_kind { STORE_DEFERRED_LIMIT, STORE_DEFERRED_POOL, STORE_DEFERRED_IDEM };

struct store_deferred {
    struct store_deferred *next;
    enum store_deferred_kind kind;
    store_limit_fn cb;
    store_pool_fn pool_cb;
    store_idem_fn idem_cb;
    void *arg;
    int failed;
    char err[160];
    struct limit_outcome outcome;
    struct store_pool_result pool; /* pool.url owned (the cast away const is ours) */
    struct store_idem_result idem; /* idem.body owned */
};

struct store {
    struct store_shared *sh;
    struct event_base *base;
    struct event *deferred_ev;
    struct store_deferred *head, *tail;
    struct store_redis *redis; /* NULL for the memory store */
    atomic_uint_fast64_t counters[STORE_FAST_FAILS + 1];
};

struct store_shared *store_shared_new(const struct config *cfg, char *err, size_t errlen) {
    struct store_shared *sh = calloc(1, sizeof *sh);
    if (!sh) goto oom;
    if (!(sh->memory = store_memory_new())) goto oom;
    if (cfg && cfg->redis) {
        sh->kind = STORE_KIND_REDIS;
        if (!(sh->redis = redis_target_new(cfg->redis, err, errlen))) goto fail;
    } else {
        sh->kind = STORE_KIND_MEMORY;
    }
    return sh;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    store_shared_free(sh);
    return NULL;
}

void store_shared_free(struct store_shared *sh) {
    if (!sh) return;
    store_memory_free(sh->memory);
    redis_target_unref(sh->redis);
    free(sh);
}

const char *store_shared_kind(const struct store_shared *sh) {
    return sh->kind == STORE_KIND_REDIS ? "redis" : "memory";
}

/* Calls d's callback once (err overrides: STORE_CLOSED_MESSAGE) and frees d. */
static void store_deferred_fire(struct store_deferred *d, const char *err) {
    int failed = err || d->failed;
    if (!err) err = d->err;
    switch (d->kind) {
    case STORE_DEFERRED_LIMIT:
        d->cb(failed ? err : NULL, failed ? NULL : &d->outcome, d->arg);
        break;
    case STORE_DEFERRED_POOL:
        d->pool_cb(failed ? err : NULL, failed ? NULL : &d->pool, d->arg);
        break;
    case STORE_DEFERRED_IDEM:
        d->idem_cb(failed ? err : NULL, failed ? NULL : &d->idem, d->arg);
        break;
    }
    free((char *)d->pool.url);
    free((char *)d->idem.body);
    free(d);
}

static void store_run_deferred(evutil_socket_t fd, short what, void *arg) {
    struct store *s = arg;
    /* take the whole list: callbacks that queue more run on the next turn */
    struct store_deferred *d = s->head;
    s->head = s->tail = NULL;
    while (d) {
        struct store_deferred *next = d->next;
        store_deferred_fire(d, NULL);
        d = next;
    }
}

static struct store_deferred *store_deferred_new(struct store *s, enum store_deferred_kind kind,
                                                 void *arg, const char *err, int failed) {
    struct store_deferred *d = calloc(1, sizeof *d);
    if (!d) {
        /* answering now would break "never inside the call", and every later path allocates
         * too: the one case where a callback is lost, so say so */
        log_error("store: out of memory queueing a callback; the request stays pending");
        return NULL;
    }
    d->kind = kind;
    d->arg = arg;
    if (failed) {
        d->failed = 1;
        snprintf(d->err, sizeof d->err, "%s", err ? err : "store failed");
        store_count(s, STORE_ERRORS);
    }
    return d;
}

static void store_deferred_queue(struct store *s, struct store_deferred *d) {
    if (s->tail)
        s->tail->next = d;
    else
        s->head = d;
    s->tail = d;
    event_active(s->deferred_ev, EV_TIMEOUT, 0);
}

void store_defer(struct store *s, store_limit_fn cb, void *arg, const char *err,
                 const struct limit_outcome *o) {
    struct store_deferred *d = store_deferred_new(s, STORE_DEFERRED_LIMIT, arg, err, err || !o);
    if (!d) return;
    d->cb = cb;
    if (!d->failed) d->outcome = *o;
    store_deferred_queue(s, d);
}

void store_defer_pool(struct store *s, store_pool_fn cb, void *arg, const char *err,
                      const struct store_pool_result *r) {
    struct store_deferred *d = store_deferred_new(s, STORE_DEFERRED_POOL, arg, err, err || !r);
    if (!d) return;
    d->pool_cb = cb;
    if (!d->failed) {
        d->pool = *r;
        d->pool.url = NULL;
        if (r->url && !(d->pool.url = strdup(r->url))) {
            d->failed = 1;
            snprintf(d->err, sizeof d->err, "out of memory");
        }
    }
    store_deferred_queue(s, d);
}

void store_defer_idem(struct store *s, store_idem_fn cb, void *arg, const char *err,
                      const struct store_idem_result *r) {
    struct store_deferred *d = store_deferred_new(s, STORE_DEFERRED_IDEM, arg, err, err || !r);
    if (!d) return;
    d->idem_cb = cb;
    if (!d->failed) {
        d->idem = *r;
        d->idem.body = NULL;
        if (r->body) {
            char *b = malloc(r->body_len + 1);
            if (b) {
                memcpy(b, r->body, r->body_len);
                b[r->body_len] = 0;
                d->idem.body = b;
            } else {
                d->failed = 1;
                snprintf(d->err, sizeof d->err, "out of memory");
            }
        }
    }
    store_deferred_queue(s, d);
}

void store_count(struct store *s, enum store_counter c) {
    atomic_fetch_add_explicit(&s->counters[c], 1, memory_order_relaxed);
}

struct store *store_new(struct store_shared *sh, struct event_base *base, char *err,
                        size_t errlen) {
    struct store *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->sh = sh;
    s->base = base;
    for (size_t i = 0; i <= STORE_FAST_FAILS; i++) atomic_init(&s->counters[i], 0);
    if (!(s->deferred_ev = event_new(base, -1, 0, store_run_deferred, s))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (sh->kind == STORE_KIND_REDIS &&
        !(s->redis = store_redis_new(sh->redis, s, base, err, errlen)))
        goto fail;
    return s;
fail:
    store_free(s);
    return NULL;
}

void store_free(struct store *s) {
    struct store_deferred *d;
    if (!s) return;
    /* the redis backend fails its pending commands through the deferred queue or directly */
    store_redis_free(s->redis);
    s->redis = NULL;
    while ((d = s->head)) {
        s->head = d->next;
        if (!s->head) s->tail = NULL;
        store_deferred_fire(d, STORE_CLOSED_MESSAGE);
    }
    if (s->deferred_ev) event_free(s->deferred_ev);
    free(s);
}

int store_connected(const struct store *s) {
    return s->redis ? store_redis_connected(s->redis) : 1;
}

void store_get_stats(const struct store *s, struct store_stats *out) {
    struct store *m = (struct store *)s; /* atomics are read-only here */
    out->commands = atomic_load_explicit(&m->counters[STORE_COMMANDS], memory_order_relaxed);
    out->errors = atomic_load_explicit(&m->counters[STORE_ERRORS], memory_order_relaxed);
    out->timeouts = atomic_load_explicit(&m->counters[STORE_TIMEOUTS], memory_order_relaxed);
    out->reconnects = atomic_load_explicit(&m->counters[STORE_RECONNECTS], memory_order_relaxed);
    out->noscript_reloads =
        atomic_load_explicit(&m->counters[STORE_NOSCRIPT_RELOADS], memory_order_relaxed);
    out->fast_fails = atomic_load_explicit(&m->counters[STORE_FAST_FAILS], memory_order_relaxed);
}

void store_limit_local(struct store *s, const struct limit_bucket *b, size_t n, store_limit_fn cb,
                       void *arg) {
    struct limit_outcome o;
    if (n > LIMIT_MAX_BUCKETS) {
        store_defer(s, cb, arg, "too many buckets for one request", NULL);
        return;
    }
    store_memory_check(s->sh->memory, b, n, clock_mono_us(), &o);
    if (!s->redis) store_count(s, STORE_COMMANDS);
    store_defer(s, cb, arg, NULL, &o);
}

void store_limit(struct store *s, const struct limit_bucket *b, size_t n, store_limit_fn cb,
                 void *arg) {
    store_limit_nonce(s, b, n, NULL, cb, arg);
}

void store_limit_nonce(struct store *s, const struct limit_bucket *b, size_t n,
                       const struct store_nonce *nonce, store_limit_fn cb, void *arg) {
    if (s->redis)
        store_redis_limit(s->redis, b, n, nonce, cb, arg);
    else
        store_limit_local(s, b, n, cb, arg);
}

/* ---- prefetch pool and idempotency: the memory backend answers at once (deferred), the redis
 * backend runs one script per call ---- */

static uint64_t store_now_ms(void) {
    return clock_wall_us() / 1000;
}

void store_pool_push(struct store *s, const char *key, const char *url, size_t cap, unsigned ttl_ms,
                     store_pool_fn cb, void *arg) {
    struct store_pool_result r = {0};
    if (s->redis) {
        char capbuf[24], ttlbuf[24];
        const char *argv[3] = {url, capbuf, ttlbuf};
        size_t argvlen[3];
        snprintf(capbuf, sizeof capbuf, "%zu", cap);
        snprintf(ttlbuf, sizeof ttlbuf, "%u", ttl_ms);
        for (size_t i = 0; i < 3; i++) argvlen[i] = strlen(argv[i]);
        store_redis_pool(s->redis, STORE_OP_POOL_PUSH, key, argv, argvlen, 3, cb, arg);
        return;
    }
    store_count(s, STORE_COMMANDS);
    if (store_memory_pool_push(s->sh->memory, key, url, cap, ttl_ms, store_now_ms(), &r.depth))
        store_defer_pool(s, cb, arg, "out of memory", NULL);
    else
        store_defer_pool(s, cb, arg, NULL, &r);
}

static void store_pool_take(struct store *s, enum store_redis_op op, const char *key,
                            unsigned ttl_ms, store_pool_fn cb, void *arg) {
    struct store_pool_result r = {0};
    char *url = NULL;
    int rc;
    if (s->redis) {
        char ttlbuf[24];
        const char *argv[1] = {ttlbuf};
        size_t argvlen[1];
        snprintf(ttlbuf, sizeof ttlbuf, "%u", ttl_ms);
        argvlen[0] = strlen(ttlbuf);
        store_redis_pool(s->redis, op, key, argv, argvlen, 1, cb, arg);
        return;
    }
    store_count(s, STORE_COMMANDS);
    if (op == STORE_OP_POOL_POP)
        rc = store_memory_pool_pop(s->sh->memory, key, ttl_ms, store_now_ms(), &url, &r.discarded);
    else
        rc = store_memory_pool_depth(s->sh->memory, key, ttl_ms, store_now_ms(), &r.depth,
                                     &r.discarded);
    r.url = url;
    if (rc)
        store_defer_pool(s, cb, arg, "out of memory", NULL);
    else
        store_defer_pool(s, cb, arg, NULL, &r);
    free(url);
}

void store_pool_pop(struct store *s, const char *key, unsigned ttl_ms, store_pool_fn cb,
                    void *arg) {
    store_pool_take(s, STORE_OP_POOL_POP, key, ttl_ms, cb, arg);
}

void store_pool_depth(struct store *s, const char *key, unsigned ttl_ms, store_pool_fn cb,
                      void *arg) {
    store_pool_take(s, STORE_OP_POOL_DEPTH, key, ttl_ms, cb, arg);
}

static int store_fp_ok(const char *fp) {
    size_t n = 0;
    for (; fp[n]; n++)
        if (fp[n] == '|') return 0;
    return n == STORE_IDEM_FP_LEN;
}

void store_idem_begin(struct store *s, const char *key, const char *fp, unsigned pending_ms,
                      store_idem_fn cb, void *arg) {
    struct store_idem_result r = {0};
    char *body = NULL;
    if (!store_fp_ok(fp)) {
        store_defer_idem(s, cb, arg, "malformed idempotency fingerprint", NULL);
        return;
    }
    if (s->redis) {
        char ttlbuf[24];
        const char *argv[2] = {fp, ttlbuf};
        size_t argvlen[2];
        snprintf(ttlbuf, sizeof ttlbuf, "%u", pending_ms ? pending_ms : 1);
        argvlen[0] = strlen(fp);
        argvlen[1] = strlen(ttlbuf);
        store_redis_idem(s->redis, STORE_OP_IDEM_BEGIN, key, argv, argvlen, 2, cb, arg);
        return;
    }
    store_count(s, STORE_COMMANDS);
    if (store_memory_idem_begin(s->sh->memory, key, fp, pending_ms, store_now_ms(), &r.state, &body,
                                &r.body_len)) {
        store_defer_idem(s, cb, arg, "out of memory", NULL);
        return;
    }
    r.body = body;
    store_defer_idem(s, cb, arg, NULL, &r);
    free(body);
}

void store_idem_complete(struct store *s, const char *key, const char *fp, const char *body,
                         size_t body_len, unsigned ttl_ms, store_idem_fn cb, void *arg) {
    struct store_idem_result r = {0};
    if (!store_fp_ok(fp)) {
        store_defer_idem(s, cb, arg, "malformed idempotency fingerprint", NULL);
        return;
    }
    if (s->redis) {
        char ttlbuf[24];
        const char *argv[3] = {fp, body, ttlbuf};
        size_t argvlen[3];
        snprintf(ttlbuf, sizeof ttlbuf, "%u", ttl_ms ? ttl_ms : 1);
        argvlen[0] = strlen(fp);
        argvlen[1] = body_len;
        argvlen[2] = strlen(ttlbuf);
        store_redis_idem(s->redis, STORE_OP_IDEM_COMPLETE, key, argv, argvlen, 3, cb, arg);
        return;
    }
    store_count(s, STORE_COMMANDS);
    if (store_memory_idem_complete(s->sh->memory, key, fp, body, body_len, ttl_ms, store_now_ms(),
                                   &r.state))
        store_defer_idem(s, cb, arg, "out of memory", NULL);
    else
        store_defer_idem(s, cb, arg, NULL, &r);
}

void store_idem_abandon(struct store *s, const char *key, const char *fp, store_idem_fn cb,
                        void *arg) {
    struct store_idem_result r = {0};
    if (!store_fp_ok(fp)) {
        store_defer_idem(s, cb, arg, "malformed idempotency fingerprint", NULL);
        return;
    }
    if (s->redis) {
        const char *argv[1] = {fp};
        size_t argvlen[1] = {strlen(fp)};
        store_redis_idem(s->redis, STORE_OP_IDEM_ABANDON, key, argv, argvlen, 1, cb, arg);
        return;
    }
    store_count(s, STORE_COMMANDS);
    store_memory_idem_abandon(s->sh->memory, key, fp, store_now_ms(), &r.state);
    store_defer_idem(s, cb, arg, NULL, &r);
}
