/* store.c: the store interface over its two backends (store_backend.h: a table of operations,
 * store_memory_ops or store_redis_ops). It owns what both share: the per-worker queue that
 * delivers callbacks on a later loop turn (so none fires inside the call that started it), the
 * counters behind /metrics, the checks of arguments, and the choice of backend from the
 * config. */
#include "store_backend.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <event2/event.h>

#include "capgate/clock.h"
#include "capgate/log.h"
#include "capgate/secmem.h"
#include "config.h"

struct store_shared {
    const struct store_ops *ops;
    struct store_memory *memory;      /* the memory store, or the local fallback beside redis */
    struct store_redis_options redis; /* copies of the config's strings (it may be reloaded) */
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
    const struct store_ops *ops; /* sh->ops */
    void *backend;               /* the backend's state for this store (redis: its connection) */
    atomic_uint_fast64_t counters[STORE_FAST_FAILS + 1];
};

/* The password copy lives in secmem: out of core dumps, wiped when freed. */
static void store_secret_free(char *s) {
    secmem_free(s);
}

struct store_shared *store_shared_new(const struct config *cfg, char *err, size_t errlen) {
    struct store_shared *sh = calloc(1, sizeof *sh);
    if (!sh) goto oom;
    if (!(sh->memory = store_memory_new())) goto oom;
    if (cfg && cfg->redis) {
        const struct config_redis *r = cfg->redis;
        sh->ops = &store_redis_ops;
        if (!r->host || !*r->host) {
            snprintf(err, errlen, "redis: no host");
            goto fail;
        }
        if (!(sh->redis.host = strdup(r->host))) goto oom;
        if (r->password && !(sh->redis.password = secmem_strdup(r->password))) goto oom;
        sh->redis.port = r->port ? r->port : 6379;
        sh->redis.db = r->db;
        sh->redis.timeout_ms = r->timeout_ms ? r->timeout_ms : 100;
    } else {
        sh->ops = &store_memory_ops;
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
    free(sh->redis.host);
    store_secret_free(sh->redis.password);
    free(sh);
}

const char *store_shared_kind(const struct store_shared *sh) {
    return sh->ops->kind;
}

struct store_memory *store_memory_of(struct store *s) {
    return s->sh->memory;
}

const struct store_redis_options *store_redis_options_of(struct store *s) {
    return &s->sh->redis;
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
    s->ops = sh->ops;
    s->base = base;
    for (size_t i = 0; i <= STORE_FAST_FAILS; i++) atomic_init(&s->counters[i], 0);
    if (!(s->deferred_ev = event_new(base, -1, 0, store_run_deferred, s))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (s->ops->open(s, base, &s->backend, err, errlen) != 0) goto fail;
    return s;
fail:
    store_free(s);
    return NULL;
}

void store_free(struct store *s) {
    struct store_deferred *d;
    if (!s) return;
    /* the redis backend fails its pending commands through the deferred queue or directly */
    if (s->backend) s->ops->close(s->backend);
    s->backend = NULL;
    while ((d = s->head)) {
        s->head = d->next;
        if (!s->head) s->tail = NULL;
        store_deferred_fire(d, STORE_CLOSED_MESSAGE);
    }
    if (s->deferred_ev) event_free(s->deferred_ev);
    free(s);
}

int store_connected(const struct store *s) {
    return s->ops->connected(s->backend);
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
    if (s->ops == &store_memory_ops) store_count(s, STORE_COMMANDS); /* it is the store's check */
    store_defer(s, cb, arg, NULL, &o);
}

void store_limit(struct store *s, const struct limit_bucket *b, size_t n, store_limit_fn cb,
                 void *arg) {
    store_limit_nonce(s, b, n, NULL, cb, arg);
}

void store_limit_nonce(struct store *s, const struct limit_bucket *b, size_t n,
                       const struct store_nonce *nonce, store_limit_fn cb, void *arg) {
    s->ops->limit(s, s->backend, b, n, nonce, cb, arg);
}

/* ---- prefetch pool and idempotency: the memory backend answers at once (deferred), the redis
 * backend runs one script per call ---- */

void store_pool_push(struct store *s, const char *key, const char *url, size_t cap, unsigned ttl_ms,
                     store_pool_fn cb, void *arg) {
    struct store_pool_req req = {STORE_OP_POOL_PUSH, key, url, cap, ttl_ms};
    s->ops->pool(s, s->backend, &req, cb, arg);
}

void store_pool_pop(struct store *s, const char *key, unsigned ttl_ms, store_pool_fn cb,
                    void *arg) {
    struct store_pool_req req = {STORE_OP_POOL_POP, key, NULL, 0, ttl_ms};
    s->ops->pool(s, s->backend, &req, cb, arg);
}

void store_pool_depth(struct store *s, const char *key, unsigned ttl_ms, store_pool_fn cb,
                      void *arg) {
    struct store_pool_req req = {STORE_OP_POOL_DEPTH, key, NULL, 0, ttl_ms};
    s->ops->pool(s, s->backend, &req, cb, arg);
}

static int store_fp_ok(const char *fp) {
    size_t n = 0;
    for (; fp[n]; n++)
        if (fp[n] == '|') return 0;
    return n == STORE_IDEM_FP_LEN;
}

/* Checks the fingerprint, then hands the operation to the backend. */
static void store_idem(struct store *s, const struct store_idem_req *req, store_idem_fn cb,
                       void *arg) {
    if (!store_fp_ok(req->fp)) {
        store_defer_idem(s, cb, arg, "malformed idempotency fingerprint", NULL);
        return;
    }
    s->ops->idem(s, s->backend, req, cb, arg);
}

void store_idem_begin(struct store *s, const char *key, const char *fp, unsigned pending_ms,
                      store_idem_fn cb, void *arg) {
    struct store_idem_req req = {STORE_OP_IDEM_BEGIN, key, fp, NULL, 0, pending_ms};
    store_idem(s, &req, cb, arg);
}

void store_idem_complete(struct store *s, const char *key, const char *fp, const char *body,
                         size_t body_len, unsigned ttl_ms, store_idem_fn cb, void *arg) {
    struct store_idem_req req = {STORE_OP_IDEM_COMPLETE, key, fp, body, body_len, ttl_ms};
    store_idem(s, &req, cb, arg);
}

void store_idem_abandon(struct store *s, const char *key, const char *fp, store_idem_fn cb,
                        void *arg) {
    struct store_idem_req req = {STORE_OP_IDEM_ABANDON, key, fp, NULL, 0, 0};
    store_idem(s, &req, cb, arg);
}
