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

enum store_kind { STORE_KIND_MEMORY, STORE_KIND_REDIS };

struct store_shared {
    enum store_kind kind;
    struct store_memory *memory;         /* the memory store, or the local fallback beside redis */
    struct store_redis_options redis;    /* copies of the config's strings (it may be reloaded) */
};

struct store_deferred {
    struct store_deferred *next;
    store_limit_fn cb;
    void *arg;
    int failed;
    char err[160];
    struct limit_outcome outcome;
};

struct store {
    struct store_shared *sh;
    struct event_base *base;
    struct event *deferred_ev;
    struct store_deferred *head, *tail;
    struct store_redis *redis;           /* NULL for the memory store */
    atomic_uint_fast64_t counters[STORE_NOSCRIPT_RELOADS + 1];
};

static void store_secret_free(char *s) {
    if (!s) return;
    /* volatile so the wipe is not optimised away */
    for (volatile char *p = s; *p; p++) *p = 0;
    free(s);
}

struct store_shared *store_shared_new(const struct config *cfg, char *err, size_t errlen) {
    struct store_shared *sh = calloc(1, sizeof *sh);
    if (!sh) goto oom;
    if (!(sh->memory = store_memory_new())) goto oom;
    if (cfg && cfg->redis) {
        const struct config_redis *r = cfg->redis;
        sh->kind = STORE_KIND_REDIS;
        if (!r->host || !*r->host) {
            snprintf(err, errlen, "redis: no host");
            goto fail;
        }
        if (!(sh->redis.host = strdup(r->host))) goto oom;
        if (r->password && !(sh->redis.password = strdup(r->password))) goto oom;
        sh->redis.port = r->port ? r->port : 6379;
        sh->redis.db = r->db;
        sh->redis.timeout_ms = r->timeout_ms ? r->timeout_ms : 100;
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
    free(sh->redis.host);
    store_secret_free(sh->redis.password);
    free(sh);
}

const char *store_shared_kind(const struct store_shared *sh) {
    return sh->kind == STORE_KIND_REDIS ? "redis" : "memory";
}

static void store_run_deferred(evutil_socket_t fd, short what, void *arg) {
    struct store *s = arg;
    /* take the whole list: callbacks that queue more run on the next turn */
    struct store_deferred *d = s->head;
    s->head = s->tail = NULL;
    while (d) {
        struct store_deferred *next = d->next;
        d->cb(d->failed ? d->err : NULL, d->failed ? NULL : &d->outcome, d->arg);
        free(d);
        d = next;
    }
}

void store_defer(struct store *s, store_limit_fn cb, void *arg, const char *err,
                 const struct limit_outcome *o) {
    struct store_deferred *d = calloc(1, sizeof *d);
    if (!d) {
        /* answering now would break "never inside the call", and every later path allocates
         * too: the one case where a callback is lost, so say so */
        log_error("store: out of memory queueing a callback; the request stays pending");
        return;
    }
    d->cb = cb;
    d->arg = arg;
    if (err || !o) {
        d->failed = 1;
        snprintf(d->err, sizeof d->err, "%s", err ? err : "store failed");
        store_count(s, STORE_ERRORS);
    } else {
        d->outcome = *o;
    }
    if (s->tail) s->tail->next = d;
    else s->head = d;
    s->tail = d;
    event_active(s->deferred_ev, EV_TIMEOUT, 0);
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
    for (size_t i = 0; i <= STORE_NOSCRIPT_RELOADS; i++) atomic_init(&s->counters[i], 0);
    if (!(s->deferred_ev = event_new(base, -1, 0, store_run_deferred, s))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (sh->kind == STORE_KIND_REDIS &&
        !(s->redis = store_redis_new(&sh->redis, s, base, err, errlen)))
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
        d->cb("store closed", NULL, d->arg);
        free(d);
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
    if (s->redis) store_redis_limit(s->redis, b, n, cb, arg);
    else store_limit_local(s, b, n, cb, arg);
}
