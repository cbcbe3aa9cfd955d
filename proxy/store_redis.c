/* store_redis.c: the redis backend of one worker: a hiredis async connection on the worker's
 * event_base, driven by an explicit state machine
 *   disconnected → connecting → (authenticating → selecting) → loading → ready
 * and, on any error or disconnect, backoff (100 ms doubling to 5 s, with jitter) → connecting.
 * hiredis 0.14 has no command timeouts, so every command carries its own timer: on expiry the
 * caller hears "redis timed out after N ms" and the command is marked abandoned; hiredis still
 * calls back later (with the late reply, or NULL when the connection goes), and only then is the
 * command freed. Callers only ever hear back through the owner's deferred queue (store_defer), so
 * no caller callback runs inside hiredis or inside store_limit.
 * Limit calls with buckets are not sent one by one: those of one event-loop turn wait on r->batch
 * and a flush event (run later in the same turn) sends them as one EVALSHA of the limit script, a
 * BATCH command that owns them as its members (each keeps its own timer and is answered from its
 * part of the reply); a lone Nonce claim is a plain SET NX. The prefetch pool and idempotency
 * operations are one script each (store_lua.h); every script is loaded at connect (pipelined,
 * ready after the last reply) and the one a command needs is loaded again after NOSCRIPT.
 * Fail fast: the first command that times out (or a lost connection) marks the store down, and
 * from then on every command is answered at once with an error (the caller applies
 * on_store_error) instead of waiting timeout_ms for a server known not to answer. The store is up
 * again when a probe succeeds: a PING on the same connection (its reply comes after every late
 * one, so Redis has caught up), or, once the connection was dropped, the reconnect's handshake.
 * Where it connects comes from redis_conn.h: with sentinels every connect first asks them for the
 * master (without blocking the loop) and the handshake ends with ROLE, which must say master; a
 * -READONLY reply (the server became a replica: nothing was written) puts the command back in the
 * queue, once, and the connection is replaced as soon as its other replies are in, without
 * backoff (so the next connect discovers again); a second -READONLY for the same command drops
 * the connection and backs off, as a server still named master but refusing writes would
 * otherwise be reconnected to in a loop; a +switch-master
 * heard by the watch, or a SIGHUP that published new settings, moves the epoch: the connection
 * then takes no new command, and once its last reply is in it is closed and a new one made. */
#include "store_backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#include "capgate/clock.h"
#include "capgate/log.h"
#include "capgate/net.h"
#include "capgate/num.h"
#include "capgate/strbuf.h"
#include "redis_conn.h"
#include "resp.h"
#include "store_lua.h"

#define STORE_REDIS_QUEUE_MAX 4096 /* commands waiting for a connection */
#define STORE_REDIS_BACKOFF_MIN_MS 100
#define STORE_REDIS_BACKOFF_MAX_MS 5000
#define STORE_REDIS_TIMEOUTS_DROP 3 /* consecutive timed-out replies that drop the link */
/* store_redis_on_cmd_timeout: at most this many loop turns for replies waiting to be read */
#define STORE_REDIS_GRACE_TURNS 3u
#define STORE_REDIS_SHA_LEN 40
#define STORE_REDIS_PROBE_RETRY_MS 50 /* after a probe answered with an error (-LOADING) */
/* Limit calls that share one EVALSHA at most: the calls of one event-loop turn go out together
 * (the fixed cost of a script call, its TIME and MGET, and one SET per bucket key are paid once
 * per batch instead of once per request); the bound keeps one script's run time, and so what it
 * holds Redis up, short. */
#define STORE_REDIS_BATCH_MAX 64

enum store_redis_state {
    STORE_REDIS_DISCONNECTED,
    STORE_REDIS_DISCOVERING,
    STORE_REDIS_CONNECTING,
    STORE_REDIS_AUTHENTICATING,
    STORE_REDIS_SELECTING,
    STORE_REDIS_CHECKING_ROLE,
    STORE_REDIS_LOADING,
    STORE_REDIS_READY,
    STORE_REDIS_BACKOFF,
};

static const char *const store_redis_state_names[] = {
    "disconnected",  "finding the master", "connecting", "authenticating", "selecting",
    "checking ROLE", "loading scripts",    "ready",      "backoff",
};

/* Script 0 is the limit script; script 1 + op serves enum store_op. */
static const char *const store_redis_scripts[] = {
    STORE_LUA_LIMIT,      STORE_LUA_POOL_PUSH,     STORE_LUA_POOL_POP,     STORE_LUA_POOL_DEPTH,
    STORE_LUA_IDEM_BEGIN, STORE_LUA_IDEM_COMPLETE, STORE_LUA_IDEM_ABANDON, STORE_LUA_HEARTBEAT,
};
#define STORE_REDIS_N_SCRIPTS (sizeof store_redis_scripts / sizeof store_redis_scripts[0])
#define STORE_REDIS_CACHE_ARGS 3 /* most string arguments of a cache script */

enum store_redis_cmd_kind {
    STORE_REDIS_CMD_LIMIT, /* a caller's EVALSHA, or SET NX of a lone Nonce */
    STORE_REDIS_CMD_CACHE, /* a caller's pool or idempotency EVALSHA */
    STORE_REDIS_CMD_AUTH,
    STORE_REDIS_CMD_SELECT,
    STORE_REDIS_CMD_ROLE,   /* sentinels: the master's address must be a master */
    STORE_REDIS_CMD_LOAD,   /* SCRIPT LOAD while connecting */
    STORE_REDIS_CMD_RELOAD, /* SCRIPT LOAD after NOSCRIPT */
    STORE_REDIS_CMD_PROBE,  /* PING while marked down on a live connection */
    STORE_REDIS_CMD_BATCH,  /* one EVALSHA of the limit script for several LIMIT commands (its
                             * members); inflight itself, and owner of the members once sent */
};

enum store_redis_cmd_where {
    STORE_REDIS_QUEUED,    /* on r->queue, waiting for ready */
    STORE_REDIS_INFLIGHT,  /* handed to hiredis, on r->inflight */
    STORE_REDIS_ABANDONED, /* handed to hiredis, caller already answered: free on callback */
    STORE_REDIS_BATCHED,   /* on r->batch, waiting for this loop turn's flush */
};

struct store_redis_cmd {
    struct store_redis_cmd *prev, *next;
    struct store_redis *r; /* NULL once abandoned */
    enum store_redis_cmd_kind kind;
    enum store_redis_cmd_where where;
    store_limit_fn cb;
    store_pool_fn pool_cb; /* CACHE commands: one of these two */
    store_idem_fn idem_cb;
    void *arg;
    struct event *timer; /* caller commands only */
    int noscript_retried;
    int readonly_retried; /* queued again once after -READONLY */
    unsigned graced;      /* loop turns the timeout gave a reply waiting to be read */
    unsigned script;      /* index in store_redis_scripts */
    enum store_op op;     /* CACHE */
    size_t argc;          /* CACHE: owned argv strings */
    char *argv[STORE_REDIS_CACHE_ARGS];
    size_t argvlen[STORE_REDIS_CACHE_ARGS];
    size_t n;
    uint64_t emission_us[LIMIT_MAX_BUCKETS], tolerance_us[LIMIT_MAX_BUCKETS];
    int shadow[LIMIT_MAX_BUCKETS];
    char *keys[LIMIT_MAX_BUCKETS];
    char *nonce_key; /* LIMIT: the Nonce to claim, NULL: none */
    unsigned nonce_ttl_ms;
    struct store_redis_cmd **members; /* BATCH: the LIMIT commands, in request order; a member
                                       * is on r->inflight until answered or abandoned, and is
                                       * freed with its batch */
    size_t n_members;
};

struct store_redis_list {
    struct store_redis_cmd *head, *tail;
    size_t count;
};

struct store_redis {
    struct store *owner;
    struct event_base *base;
    struct redis_target *t; /* the settings connected with (refreshed at each connect) */
    uint64_t epoch;         /* redis_conn_epoch() when they were taken */
    unsigned timeout_ms;
    char addr[REDIS_CONN_HOST_MAX + 16]; /* the server connected to, for logs */
    struct redis_resolve *resolve;       /* DISCOVERING */
    struct redis_dial *dial;             /* CONNECTING, before hiredis has the connection */
    struct evdns_base *dns;              /* host names, looked up without blocking the loop */
    struct redis_watch *watch;           /* +switch-master, with sentinels */
    int switching; /* the epoch moved: no new command here; reconnect once inflight is empty */
    enum store_redis_state state;
    redisAsyncContext *ac;
    struct event *backoff_timer, *handshake_timer;
    unsigned backoff_ms;       /* the next backoff's base */
    uint64_t backoff_until_us; /* monotonic */
    unsigned consecutive_timeouts;
    int down;           /* marked down: commands fail at once (fail fast) */
    int probing;        /* a PING probe is in flight */
    char down_why[128]; /* what marked it down */
    struct event *probe_timer;
    uint64_t rng;
    char sha[STORE_REDIS_N_SCRIPTS][STORE_REDIS_SHA_LEN + 1];
    char last_err[128];
    struct store_redis_list queue, inflight;
    struct store_redis_list batch; /* LIMIT commands of this loop turn, sent by flush_ev */
    struct event *flush_ev;
    struct strbuf resp; /* the command being sent, formatted (resp.h) */
};

static void store_redis_connect(struct store_redis *r);
static int store_redis_send(struct store_redis *r, struct store_redis_cmd *c);
static void store_redis_batch_add(struct store_redis *r, struct store_redis_cmd *c);

/* Every worker retries while Redis is down: one warning when that starts (and when the error
 * changes), a summary a minute, one line when a connection is ready again. */
static struct log_limiter store_redis_warning = LOG_LIMITER_INIT(60, 0);

static void store_redis_set_state(struct store_redis *r, enum store_redis_state to) {
    if (r->state == to) return;
    if (to == STORE_REDIS_READY) {
        log_limited_ok(&store_redis_warning, LOG_LEVEL_INFO, "redis %s: connected again", r->addr);
    }
    if (to == STORE_REDIS_READY)
        log_info("redis %s: %s → %s", r->addr, store_redis_state_names[r->state],
                 store_redis_state_names[to]);
    else
        log_debug("redis %s: %s → %s", r->addr, store_redis_state_names[r->state],
                  store_redis_state_names[to]);
    r->state = to;
}

static void store_redis_probe(struct store_redis *r);

/* Every worker marks its store down: one warning when that starts (or its reason changes), a
 * summary a minute, one line when a store is up again. */
static struct log_limiter store_redis_down_warning = LOG_LIMITER_INIT(60, 0);

/* Fail fast from now on (see the top of the file); on a live connection, probe it. */
static void store_redis_mark_down(struct store_redis *r, const char *why) {
    if (!r->down) {
        r->down = 1;
        snprintf(r->down_why, sizeof r->down_why, "%.*s", (int)sizeof r->down_why - 1, why);
        log_limited(&store_redis_down_warning, LOG_LEVEL_WARN,
                    "redis %s: store marked down (%s); commands fail at once until it "
                    "answers",
                    r->addr, why);
    }
    if (r->state == STORE_REDIS_READY) store_redis_probe(r);
}

static void store_redis_mark_up(struct store_redis *r, const char *how) {
    if (!r->down) return;
    r->down = 0;
    r->down_why[0] = 0;
    event_del(r->probe_timer);
    log_limited_ok(&store_redis_down_warning, LOG_LEVEL_INFO, "redis %s: store up again (%s)",
                   r->addr, how);
}

static void store_redis_list_push(struct store_redis_list *l, struct store_redis_cmd *c) {
    c->prev = l->tail;
    c->next = NULL;
    if (l->tail)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
    l->count++;
}

static void store_redis_list_remove(struct store_redis_list *l, struct store_redis_cmd *c) {
    if (c->prev)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        l->tail = c->prev;
    c->prev = c->next = NULL;
    l->count--;
}

static void store_redis_cmd_free(struct store_redis_cmd *c) {
    if (!c) return;
    for (size_t i = 0; i < c->n_members; i++) store_redis_cmd_free(c->members[i]);
    free(c->members);
    if (c->timer) event_free(c->timer);
    for (size_t i = 0; i < c->n; i++) free(c->keys[i]);
    for (size_t i = 0; i < c->argc; i++) free(c->argv[i]);
    free(c->nonce_key);
    free(c);
}

/* Answers the caller once, through the deferred queue; the command stays where it is. */
static void store_redis_answer(struct store_redis *r, struct store_redis_cmd *c, const char *err,
                               const struct limit_outcome *o) {
    store_limit_fn cb = c->cb;
    store_pool_fn pool_cb = c->pool_cb;
    store_idem_fn idem_cb = c->idem_cb;
    if (c->timer) event_del(c->timer);
    c->cb = NULL;
    c->pool_cb = NULL;
    c->idem_cb = NULL;
    if (!cb && !pool_cb && !idem_cb) return;
    /* the heartbeat is the store's own: the counters are the callers' commands */
    if (err && strncmp(err, "redis timed out", 15) == 0 &&
        !(c->kind == STORE_REDIS_CMD_CACHE && c->op == STORE_OP_HEARTBEAT))
        store_count(r->owner, STORE_TIMEOUTS);
    if (cb)
        store_defer(r->owner, cb, c->arg, err, o);
    else if (pool_cb)
        store_defer_pool(r->owner, pool_cb, c->arg, err ? err : "store failed", NULL);
    else
        store_defer_idem(r->owner, idem_cb, c->arg, err ? err : "store failed", NULL);
}

/* A CACHE command's successful answer (err NULL), once. */
static void store_redis_answer_cache(struct store_redis *r, struct store_redis_cmd *c,
                                     const struct store_pool_result *pr,
                                     const struct store_idem_result *ir) {
    store_pool_fn pool_cb = c->pool_cb;
    store_idem_fn idem_cb = c->idem_cb;
    if (c->timer) event_del(c->timer);
    c->pool_cb = NULL;
    c->idem_cb = NULL;
    if (pool_cb)
        store_defer_pool(r->owner, pool_cb, c->arg, NULL, pr);
    else if (idem_cb)
        store_defer_idem(r->owner, idem_cb, c->arg, NULL, ir);
}

static int store_redis_caller_cmd(const struct store_redis_cmd *c) {
    return c->kind == STORE_REDIS_CMD_LIMIT || c->kind == STORE_REDIS_CMD_CACHE;
}

/* Every inflight command is answered (caller commands with err) and left to hiredis to free. */
static void store_redis_abandon_inflight(struct store_redis *r, const char *err) {
    struct store_redis_cmd *c;
    while ((c = r->inflight.head)) {
        store_redis_list_remove(&r->inflight, c);
        if (store_redis_caller_cmd(c)) store_redis_answer(r, c, err, NULL);
        if (c->timer) event_del(c->timer);
        c->where = STORE_REDIS_ABANDONED;
        c->r = NULL;
    }
    r->probing = 0;
}

static unsigned store_redis_jitter(struct store_redis *r, unsigned ms) {
    /* xorshift64: spreads the workers' reconnects over ±20% */
    r->rng ^= r->rng << 13;
    r->rng ^= r->rng >> 7;
    r->rng ^= r->rng << 17;
    return ms * 4 / 5 + (unsigned)(r->rng % (ms * 2 / 5 + 1));
}

static void store_redis_backoff(struct store_redis *r, const char *why) {
    unsigned ms = store_redis_jitter(r, r->backoff_ms);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    if (why) snprintf(r->last_err, sizeof r->last_err, "%s", why);
    log_limited(&store_redis_warning, LOG_LEVEL_WARN, "redis %s: %s; retrying in %u ms", r->addr,
                r->last_err, ms);
    store_redis_set_state(r, STORE_REDIS_BACKOFF);
    store_redis_mark_down(r, r->last_err);
    event_del(r->probe_timer);
    event_del(r->handshake_timer);
    redis_dial_cancel(r->dial);
    r->dial = NULL;
    redis_resolve_cancel(r->resolve);
    r->resolve = NULL;
    r->backoff_until_us = clock_mono_us() + (uint64_t)ms * 1000;
    r->backoff_ms = r->backoff_ms * 2 > STORE_REDIS_BACKOFF_MAX_MS ? STORE_REDIS_BACKOFF_MAX_MS
                                                                   : r->backoff_ms * 2;
    event_add(r->backoff_timer, &tv);
}

/* Closes the connection on purpose (error reply, handshake timeout, a server that stopped
 * answering) and backs off. Safe inside a hiredis callback: hiredis then frees after it returns. */
static void store_redis_drop(struct store_redis *r, const char *why) {
    redisAsyncContext *ac = r->ac;
    static const char lost[] = "redis connection lost: ";
    char err[200];
    snprintf(err, sizeof err, "%s%.*s", lost, (int)(sizeof err - sizeof lost), why); /* cut */
    r->ac = NULL;
    store_redis_abandon_inflight(r, err);
    if (ac) {
        ac->data = NULL;
        ac->onConnect = NULL;
        ac->onDisconnect = NULL;
        redisAsyncFree(ac);
    }
    store_redis_backoff(r, why);
}

static int store_redis_send_internal(struct store_redis *r, enum store_redis_cmd_kind kind,
                                     unsigned script) {
    struct store_redis_cmd *c = calloc(1, sizeof *c);
    if (!c) return -1;
    c->r = r;
    c->kind = kind;
    c->script = script;
    if (store_redis_send(r, c) != 0) {
        store_redis_cmd_free(c);
        return -1;
    }
    return 0;
}

/* The handshake step after state `from`, or ready. */
static void store_redis_handshake_next(struct store_redis *r) {
    enum store_redis_state next = r->state;
    if (r->state == STORE_REDIS_CONNECTING && redis_target_password(r->t))
        next = STORE_REDIS_AUTHENTICATING;
    else if ((r->state == STORE_REDIS_CONNECTING || r->state == STORE_REDIS_AUTHENTICATING) &&
             redis_target_db(r->t))
        next = STORE_REDIS_SELECTING;
    else if (r->state != STORE_REDIS_CHECKING_ROLE && r->state != STORE_REDIS_LOADING &&
             redis_target_uses_sentinels(r->t))
        next = STORE_REDIS_CHECKING_ROLE;
    else if (r->state != STORE_REDIS_LOADING)
        next = STORE_REDIS_LOADING;
    else
        next = STORE_REDIS_READY;
    store_redis_set_state(r, next);
    if (next == STORE_REDIS_READY) {
        struct store_redis_cmd *c;
        event_del(r->handshake_timer);
        r->backoff_ms = STORE_REDIS_BACKOFF_MIN_MS;
        r->consecutive_timeouts = 0;
        r->last_err[0] = 0;
        store_redis_mark_up(r, "connected");
        while (r->state == STORE_REDIS_READY && (c = r->queue.head)) {
            store_redis_list_remove(&r->queue, c);
            if (c->kind == STORE_REDIS_CMD_LIMIT && c->n > 0) {
                store_redis_batch_add(r, c);
                continue;
            }
            if (store_redis_send(r, c) != 0) {
                store_redis_answer(r, c, "redis command could not be sent", NULL);
                store_redis_cmd_free(c);
            }
        }
        return;
    }
    if (next == STORE_REDIS_LOADING) {
        /* every script at once; the last reply makes the connection ready */
        for (unsigned i = 0; i < STORE_REDIS_N_SCRIPTS; i++)
            if (store_redis_send_internal(r, STORE_REDIS_CMD_LOAD, i)) {
                store_redis_drop(r, "could not send the handshake");
                return;
            }
        return;
    }
    if (store_redis_send_internal(r,
                                  next == STORE_REDIS_AUTHENTICATING ? STORE_REDIS_CMD_AUTH
                                  : next == STORE_REDIS_SELECTING    ? STORE_REDIS_CMD_SELECT
                                                                     : STORE_REDIS_CMD_ROLE,
                                  0))
        store_redis_drop(r, "could not send the handshake");
}

static void store_redis_on_connect(const redisAsyncContext *ac, int status) {
    struct store_redis *r = ac->data;
    if (!r) return;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this returns */
        char why[128];
        snprintf(why, sizeof why, "connect failed: %s", ac->errstr[0] ? ac->errstr : "error");
        r->ac = NULL;
        store_redis_abandon_inflight(r, why);
        store_redis_backoff(r, why);
        return;
    }
    store_redis_handshake_next(r);
}

static void store_redis_on_disconnect(const redisAsyncContext *ac, int status) {
    struct store_redis *r = ac->data;
    char why[128];
    if (!r) return;
    /* hiredis has already answered every pending command with NULL, and frees ac next */
    snprintf(why, sizeof why, "disconnected: %s",
             status == REDIS_OK ? "closed"
             : ac->errstr[0]    ? ac->errstr
                                : "error");
    r->ac = NULL;
    store_redis_abandon_inflight(r, why);
    store_redis_backoff(r, why);
}

/* Parses one request's part of the limit script's reply (store_lua.h), of n buckets, from
 * element *at on, into o (NULL: check only) and moves *at past it: 0, or -1 when it has the
 * wrong shape. */
static int store_redis_parse_outcome(const redisReply *rep, size_t *at, size_t n,
                                     struct limit_outcome *o) {
    redisReply **e = rep->element + *at;
    size_t left = rep->elements - *at;
    if (left < 1 || e[0]->type != REDIS_REPLY_INTEGER) return -1;
    if (e[0]->integer == 2) { /* a replayed Nonce: nothing else was looked at */
        if (o) {
            memset(o, 0, sizeof *o);
            o->replay = 1;
            o->denied = o->shadow_denied = -1;
        }
        *at += 1;
        return 0;
    }
    if (left < 4 + 2 * n || (e[0]->integer != 0 && e[0]->integer != 1)) return -1;
    for (size_t i = 1; i < 4 + 2 * n; i++)
        if (e[i]->type != REDIS_REPLY_INTEGER) return -1;
    if (e[1]->integer < -1 || e[1]->integer >= (long long)n || e[2]->integer < -1 ||
        e[2]->integer >= (long long)n || e[3]->integer < 0)
        return -1;
    *at += 4 + 2 * n;
    if (!o) return 0;
    memset(o, 0, sizeof *o);
    o->allowed = e[0]->integer == 1;
    o->denied = (int)e[1]->integer;
    o->shadow_denied = (int)e[2]->integer;
    o->retry_after_us = (uint64_t)e[3]->integer;
    for (size_t i = 0; i < n; i++) {
        long long rem = e[4 + 2 * i]->integer, reset = e[5 + 2 * i]->integer;
        o->remaining[i] = rem > 0 ? (uint64_t)rem : 0;
        o->reset_us[i] = reset > 0 ? (uint64_t)reset : 0;
    }
    return 0;
}

/* The reply of a lone Nonce claim (a LIMIT command without buckets, a plain SET NX): nil when
 * the key was already claimed, "OK" when the SET claimed it. 1 when rep is one of those and *o is
 * set, 0 when it is neither. */
static int store_redis_parse_nonce(const struct store_redis_cmd *c, const redisReply *rep,
                                   struct limit_outcome *o) {
    int replay;
    if (!c->nonce_key || c->n != 0) return 0;
    if (rep->type == REDIS_REPLY_NIL)
        replay = 1;
    else if (rep->type == REDIS_REPLY_STATUS && strcmp(rep->str, "OK") == 0)
        replay = 0;
    else
        return 0;
    memset(o, 0, sizeof *o);
    o->allowed = !replay;
    o->replay = replay;
    o->denied = o->shadow_denied = -1;
    return 1;
}

/* The reply of a CACHE script: 0 and the result, or -1 when it has the wrong shape. */
static int store_redis_parse_cache(const struct store_redis_cmd *c, const redisReply *rep,
                                   struct store_pool_result *pr, struct store_idem_result *ir) {
    memset(pr, 0, sizeof *pr);
    memset(ir, 0, sizeof *ir);
    switch (c->op) {
    case STORE_OP_POOL_PUSH:
    case STORE_OP_HEARTBEAT:
        if (rep->type != REDIS_REPLY_INTEGER || rep->integer < 0) return -1;
        pr->depth = (size_t)rep->integer;
        return 0;
    case STORE_OP_POOL_POP:
    case STORE_OP_POOL_DEPTH:
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 || rep->elements > 2 ||
            rep->element[0]->type != REDIS_REPLY_INTEGER || rep->element[0]->integer < 0)
            return -1;
        pr->discarded = (unsigned)rep->element[0]->integer;
        if (c->op == STORE_OP_POOL_POP) {
            if (rep->elements == 2) {
                if (rep->element[1]->type != REDIS_REPLY_STRING) return -1;
                pr->url = rep->element[1]->str;
            }
            return 0;
        }
        if (rep->elements != 2 || rep->element[1]->type != REDIS_REPLY_INTEGER ||
            rep->element[1]->integer < 0)
            return -1;
        pr->depth = (size_t)rep->element[1]->integer;
        return 0;
    case STORE_OP_IDEM_BEGIN:
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 ||
            rep->element[0]->type != REDIS_REPLY_INTEGER)
            return -1;
        switch (rep->element[0]->integer) {
        case 0: ir->state = STORE_IDEM_NEW; break;
        case 1: ir->state = STORE_IDEM_PENDING; break;
        case 3: ir->state = STORE_IDEM_MISMATCH; break;
        case 2:
            if (rep->elements != 2 || rep->element[1]->type != REDIS_REPLY_STRING) return -1;
            ir->state = STORE_IDEM_DONE;
            ir->body = rep->element[1]->str;
            ir->body_len = rep->element[1]->len;
            break;
        default: return -1;
        }
        return 0;
    case STORE_OP_IDEM_COMPLETE:
    case STORE_OP_IDEM_ABANDON:
        if (rep->type != REDIS_REPLY_INTEGER || (rep->integer != 2 && rep->integer != 3)) return -1;
        ir->state = rep->integer == 2 ? STORE_IDEM_DONE : STORE_IDEM_MISMATCH;
        return 0;
    }
    return -1;
}

static void store_redis_on_limit_reply(struct store_redis *r, struct store_redis_cmd *c,
                                       redisReply *rep) {
    struct limit_outcome o;
    struct store_pool_result pr;
    struct store_idem_result ir;
    char err[200];
    r->consecutive_timeouts = 0;
    if (rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0 &&
        !c->noscript_retried) {
        /* the script cache was flushed (restart, SCRIPT FLUSH, failover): load and retry once;
         * both go down the same connection, so the retry runs after the load */
        c->noscript_retried = 1;
        store_count(r->owner, STORE_NOSCRIPT_RELOADS);
        log_info("redis %s: script missing (NOSCRIPT), loading it again", r->addr);
        if (store_redis_send_internal(r, STORE_REDIS_CMD_RELOAD, c->script) == 0 &&
            store_redis_send(r, c) == 0)
            return;
        store_redis_answer(r, c, "redis script could not be reloaded", NULL);
        store_redis_cmd_free(c);
        return;
    }
    if (redis_conn_is_readonly(rep)) {
        /* a replica now: the master moved; find it again, and run the command there */
        if (!c->readonly_retried) {
            c->readonly_retried = 1;
            c->where = STORE_REDIS_QUEUED;
            store_redis_list_push(&r->queue, c);
            if (!r->switching)
                log_info("redis %s: -READONLY: the server is a replica now; finding the master",
                         r->addr);
            r->switching = 1; /* replaced once the replies in flight are in (on_reply) */
            return;
        }
        snprintf(err, sizeof err, "redis error: %s", rep->str);
        store_redis_answer(r, c, err, NULL);
        store_redis_cmd_free(c);
        store_redis_drop(r, "-READONLY again after finding the master anew");
        return;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        snprintf(err, sizeof err, "redis error: %s", rep->str);
        store_redis_answer(r, c, err, NULL);
    } else if (c->kind == STORE_REDIS_CMD_CACHE) {
        if (store_redis_parse_cache(c, rep, &pr, &ir) != 0)
            store_redis_answer(r, c, "redis replied to a cache script in an unexpected shape",
                               NULL);
        else
            store_redis_answer_cache(r, c, &pr, &ir);
    } else if (store_redis_parse_nonce(c, rep, &o)) {
        store_redis_answer(r, c, NULL, &o);
    } else {
        store_redis_answer(r, c, "redis replied to a Nonce claim in an unexpected shape", NULL);
    }
    store_redis_cmd_free(c);
}

/* Answers every member of batch b still waiting (not timed out) with err. */
static void store_redis_batch_fail(struct store_redis *r, struct store_redis_cmd *b,
                                   const char *err) {
    for (size_t i = 0; i < b->n_members; i++) {
        struct store_redis_cmd *m = b->members[i];
        if (m->where != STORE_REDIS_INFLIGHT) continue;
        store_redis_list_remove(&r->inflight, m);
        m->where = STORE_REDIS_QUEUED; /* on no list; freed with b */
        store_redis_answer(r, m, err, NULL);
    }
}

/* The limit script's reply to batch b: each waiting member hears its part; b is freed (with its
 * members) unless it went out again after NOSCRIPT. */
static void store_redis_on_batch_reply(struct store_redis *r, struct store_redis_cmd *b,
                                       redisReply *rep) {
    char err[200];
    size_t at = 0, i = 0;
    r->consecutive_timeouts = 0;
    if (rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0 &&
        !b->noscript_retried) {
        /* as for a cache script: load it and send the batch again down the same connection */
        b->noscript_retried = 1;
        store_count(r->owner, STORE_NOSCRIPT_RELOADS);
        log_info("redis %s: script missing (NOSCRIPT), loading it again", r->addr);
        if (store_redis_send_internal(r, STORE_REDIS_CMD_RELOAD, b->script) == 0 &&
            store_redis_send(r, b) == 0)
            return;
        store_redis_batch_fail(r, b, "redis script could not be reloaded");
        store_redis_cmd_free(b);
        return;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        snprintf(err, sizeof err, "redis error: %s", rep->str);
        store_redis_batch_fail(r, b, err);
        store_redis_cmd_free(b);
        return;
    }
    /* the whole shape first, so a malformed reply answers no member with a wrong part */
    if (rep->type == REDIS_REPLY_ARRAY) {
        for (i = 0; i < b->n_members; i++)
            if (store_redis_parse_outcome(rep, &at, b->members[i]->n, NULL) != 0) break;
    }
    if (rep->type != REDIS_REPLY_ARRAY || i < b->n_members || at != rep->elements) {
        store_redis_batch_fail(r, b, "redis replied to the limit script in an unexpected shape");
        store_redis_cmd_free(b);
        return;
    }
    at = 0;
    for (i = 0; i < b->n_members; i++) {
        struct store_redis_cmd *m = b->members[i];
        struct limit_outcome o;
        (void)store_redis_parse_outcome(rep, &at, m->n, &o);
        if (m->where != STORE_REDIS_INFLIGHT) continue; /* timed out: answered already */
        store_redis_list_remove(&r->inflight, m);
        m->where = STORE_REDIS_QUEUED; /* on no list; freed with b */
        store_redis_answer(r, m, NULL, &o);
    }
    store_redis_cmd_free(b);
}

static void store_redis_reconnect_now(struct store_redis *r);

static void store_redis_on_reply_cmd(redisAsyncContext *ac, void *reply, void *privdata) {
    struct store_redis_cmd *c = privdata;
    struct store_redis *r = c->r;
    redisReply *rep = reply;
    char why[200];
    if (c->where == STORE_REDIS_ABANDONED || !r) {
        store_redis_cmd_free(c);
        return;
    }
    store_redis_list_remove(&r->inflight, c);
    c->where = STORE_REDIS_QUEUED; /* on no list for now */
    if (!rep) {
        /* the connection is going; the disconnect callback follows */
        snprintf(why, sizeof why, "redis connection lost: %s",
                 ac->errstr[0] ? ac->errstr : "closed");
        if (store_redis_caller_cmd(c)) store_redis_answer(r, c, why, NULL);
        if (c->kind == STORE_REDIS_CMD_BATCH) store_redis_batch_fail(r, c, why);
        store_redis_cmd_free(c);
        return;
    }
    switch (c->kind) {
    case STORE_REDIS_CMD_BATCH: store_redis_on_batch_reply(r, c, rep); return;
    case STORE_REDIS_CMD_LIMIT:
    case STORE_REDIS_CMD_CACHE: store_redis_on_limit_reply(r, c, rep); return;
    case STORE_REDIS_CMD_AUTH:
    case STORE_REDIS_CMD_SELECT:
        store_redis_cmd_free(c);
        if (rep->type == REDIS_REPLY_ERROR) {
            snprintf(why, sizeof why, "%s refused: %s",
                     r->state == STORE_REDIS_AUTHENTICATING ? "AUTH" : "SELECT", rep->str);
            store_redis_drop(r, why);
            return;
        }
        store_redis_handshake_next(r);
        return;
    case STORE_REDIS_CMD_ROLE: {
        char role[32];
        int m = redis_conn_parse_role(rep, role, sizeof role);
        store_redis_cmd_free(c);
        if (m != 1) {
            snprintf(why, sizeof why, "%s",
                     m == 0 ? "not a master (ROLE says so): the sentinels' answer is stale"
                            : "ROLE: unexpected reply");
            store_redis_drop(r, why);
            return;
        }
        store_redis_handshake_next(r);
        return;
    }
    case STORE_REDIS_CMD_PROBE:
        store_redis_cmd_free(c);
        r->probing = 0;
        if (rep->type == REDIS_REPLY_ERROR) {
            /* answering but not serving (-LOADING, -BUSY): stay down, ask again shortly */
            struct timeval tv = {0, STORE_REDIS_PROBE_RETRY_MS * 1000};
            snprintf(r->down_why, sizeof r->down_why, "PING: %s", rep->str);
            event_add(r->probe_timer, &tv);
            return;
        }
        r->consecutive_timeouts = 0;
        store_redis_mark_up(r, "PING answered");
        return;
    case STORE_REDIS_CMD_LOAD:
    case STORE_REDIS_CMD_RELOAD: {
        enum store_redis_cmd_kind kind = c->kind;
        unsigned script = c->script;
        store_redis_cmd_free(c);
        if (rep->type != REDIS_REPLY_STRING || rep->len != STORE_REDIS_SHA_LEN) {
            snprintf(why, sizeof why, "SCRIPT LOAD failed: %s",
                     rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
            store_redis_drop(r, why);
            return;
        }
        memcpy(r->sha[script], rep->str, STORE_REDIS_SHA_LEN);
        r->sha[script][STORE_REDIS_SHA_LEN] = 0;
        if (kind == STORE_REDIS_CMD_LOAD && script + 1 == STORE_REDIS_N_SCRIPTS)
            store_redis_handshake_next(r);
    }
        return;
    }
}

/* FNV-1a of a bucket key: compared before the key itself while entries are deduplicated. */
static uint32_t store_redis_key_hash(const char *k) {
    uint32_t h = 2166136261u;
    for (; *k; k++) h = (h ^ (unsigned char)*k) * 16777619u;
    return h;
}

/* The EVALSHA of batch b (store_lua.h has the layout) formatted into r->resp: 0, or -1 on OOM.
 * Buckets that share a key and its parameters become one entry. */
static int store_redis_format_batch(struct store_redis *r, const struct store_redis_cmd *b) {
    size_t total = 0, m = 0, nonces = 0, argc = 0, k;
    for (k = 0; k < b->n_members; k++) {
        total += b->members[k]->n;
        nonces += b->members[k]->nonce_key != NULL;
    }
    /* one block: entries (request bucket → entry), argv, lengths, and the numbers' text */
    size_t max_argc = 3 + total + nonces + 2 + 4 * total + 2 * b->n_members + total;
    size_t n_nums = 3 + 3 * total + 2 * b->n_members + total;
    struct entry {
        const struct store_redis_cmd *c;
        size_t i; /* the bucket of c this entry stands for */
        uint32_t hash;
    } * ent;
    size_t *idx;
    const char **argv;
    size_t *len;
    char(*num)[24], *end;
    size_t nn = 0;
    char *block = malloc(total * (sizeof *ent + sizeof *idx) +
                         max_argc * (sizeof *argv + sizeof *len) + n_nums * sizeof *num);
    int rc = -1;
    if (!block) return -1;
    ent = (struct entry *)(void *)block;
    idx = (size_t *)(void *)(ent + total);
    argv = (const char **)(void *)(idx + total);
    len = (size_t *)(void *)(argv + max_argc);
    num = (char(*)[24])(void *)(len + max_argc);
    for (k = 0, total = 0; k < b->n_members; k++) {
        const struct store_redis_cmd *c = b->members[k];
        for (size_t i = 0; i < c->n; i++, total++) {
            uint32_t h = store_redis_key_hash(c->keys[i]);
            size_t j;
            for (j = 0; j < m; j++) {
                const struct store_redis_cmd *d = ent[j].c;
                size_t di = ent[j].i;
                if (ent[j].hash == h && d->emission_us[di] == c->emission_us[i] &&
                    d->tolerance_us[di] == c->tolerance_us[i] && d->shadow[di] == c->shadow[i] &&
                    strcmp(d->keys[di], c->keys[i]) == 0)
                    break;
            }
            if (j == m) ent[m++] = (struct entry){c, i, h};
            idx[total] = j + 1;
        }
    }
#define PUT_NUM(v) \
    do { \
        end = num_put_u64(num[nn], (v)); \
        len[argc] = (size_t)(end - num[nn]); \
        argv[argc++] = num[nn++]; \
    } while (0)
    argv[argc] = "EVALSHA";
    len[argc++] = 7;
    argv[argc] = r->sha[0];
    len[argc++] = STORE_REDIS_SHA_LEN;
    PUT_NUM(m + nonces);
    for (k = 0; k < m; k++) {
        argv[argc] = ent[k].c->keys[ent[k].i];
        len[argc] = strlen(argv[argc]);
        argc++;
    }
    for (k = 0; k < b->n_members; k++) {
        if (!b->members[k]->nonce_key) continue;
        argv[argc] = b->members[k]->nonce_key;
        len[argc] = strlen(argv[argc]);
        argc++;
    }
    PUT_NUM(m);
    PUT_NUM(b->n_members);
    for (k = 0; k < m; k++) {
        const struct store_redis_cmd *c = ent[k].c;
        uint64_t tol = c->tolerance_us[ent[k].i], px_ms = tol / 1000 + (tol % 1000 != 0);
        PUT_NUM(c->emission_us[ent[k].i]);
        PUT_NUM(tol);
        argv[argc] = c->shadow[ent[k].i] ? "1" : "0";
        len[argc++] = 1;
        PUT_NUM(px_ms ? px_ms : 1); /* SET PX 0 is an error; a TAT is written only when e <= tol */
    }
    for (k = 0, total = 0; k < b->n_members; k++) {
        const struct store_redis_cmd *c = b->members[k];
        PUT_NUM(c->n);
        for (size_t i = 0; i < c->n; i++) PUT_NUM(idx[total++]);
        PUT_NUM(c->nonce_key ? c->nonce_ttl_ms : 0);
    }
#undef PUT_NUM
    strbuf_reset(&r->resp);
    rc = resp_append_command(&r->resp, (int)argc, argv, len);
    free(block);
    return rc;
}

static void store_redis_on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    struct store_redis_cmd *c = privdata;
    struct store_redis *r = c->where == STORE_REDIS_ABANDONED ? NULL : c->r;
    store_redis_on_reply_cmd(ac, reply, privdata);
    /* the last reply of a connection whose settings are out of date */
    if (r && r->switching && r->ac == ac && r->inflight.count == 0) store_redis_reconnect_now(r);
}

/* Hands c to hiredis: 0, or -1 (nothing was handed over; c is the caller's again). */
static int store_redis_send(struct store_redis *r, struct store_redis_cmd *c) {
    const char *argv[4 + STORE_REDIS_CACHE_ARGS];
    size_t argvlen[4 + STORE_REDIS_CACHE_ARGS];
    char nums[1][24];
    char dbuf[16];
    int argc = 0;
    if (!r->ac) return -1;
    switch (c->kind) {
    case STORE_REDIS_CMD_AUTH:
        argv[argc++] = "AUTH";
        argv[argc++] = redis_target_password(r->t);
        break;
    case STORE_REDIS_CMD_SELECT:
        snprintf(dbuf, sizeof dbuf, "%u", redis_target_db(r->t));
        argv[argc++] = "SELECT";
        argv[argc++] = dbuf;
        break;
    case STORE_REDIS_CMD_PROBE: argv[argc++] = "PING"; break;
    case STORE_REDIS_CMD_ROLE: argv[argc++] = "ROLE"; break;
    case STORE_REDIS_CMD_LOAD:
    case STORE_REDIS_CMD_RELOAD:
        argv[argc++] = "SCRIPT";
        argv[argc++] = "LOAD";
        argv[argc++] = store_redis_scripts[c->script];
        break;
    case STORE_REDIS_CMD_CACHE:
        if (c->op == STORE_OP_HEARTBEAT) {
            /* EVAL, once a second: the store's own upkeep stays apart from the callers'
             * EVALSHA in Redis's command statistics */
            argv[argc++] = "EVAL";
            argv[argc++] = store_redis_scripts[c->script];
        } else {
            argv[argc++] = "EVALSHA";
            argv[argc++] = r->sha[c->script];
        }
        argv[argc++] = "1";
        argv[argc++] = c->keys[0];
        for (int i = 0; i < argc; i++) argvlen[i] = strlen(argv[i]);
        for (size_t i = 0; i < c->argc; i++) {
            argv[argc] = c->argv[i];
            argvlen[argc++] = c->argvlen[i];
        }
        goto send;
    case STORE_REDIS_CMD_LIMIT:
        /* only a Nonce to claim, no script needed (commands with buckets go in a batch) */
        if (c->n != 0 || !c->nonce_key) return -1;
        *num_put_u64(nums[0], c->nonce_ttl_ms) = '\0';
        argv[argc++] = "SET";
        argv[argc++] = c->nonce_key;
        argv[argc++] = "1";
        argv[argc++] = "NX";
        argv[argc++] = "PX";
        argv[argc++] = nums[0];
        break;
    case STORE_REDIS_CMD_BATCH:
        if (store_redis_format_batch(r, c) != 0) return -1;
        goto formatted;
    }
    for (int i = 0; i < argc; i++) argvlen[i] = strlen(argv[i]);
send:
    strbuf_reset(&r->resp);
    if (resp_append_command(&r->resp, argc, argv, argvlen) != 0) return -1;
formatted:
    if (redisAsyncFormattedCommand(r->ac, store_redis_on_reply, c, r->resp.s, r->resp.len) !=
        REDIS_OK)
        return -1;
    if (store_redis_caller_cmd(c) &&
        !(c->kind == STORE_REDIS_CMD_CACHE && c->op == STORE_OP_HEARTBEAT))
        store_count(r->owner, STORE_COMMANDS);
    c->where = STORE_REDIS_INFLIGHT;
    store_redis_list_push(&r->inflight, c);
    return 0;
}

/* Bytes of replies wait to be read on r's connection: in the socket, or read by hiredis and not
 * yet parsed. */
static int store_redis_reply_waiting(const struct store_redis *r) {
    const redisContext *c = r->ac ? &r->ac->c : NULL;

    if (!c) return 0;
    if (c->reader && c->reader->len > c->reader->pos) return 1;
    return net_bytes_waiting(c->fd);
}

static void store_redis_on_cmd_timeout(evutil_socket_t fd, short what, void *arg) {
    struct store_redis_cmd *c = arg;
    struct store_redis *r = c->r;
    char err[200];
    if (c->where == STORE_REDIS_BATCHED) { /* the flush never ran: not to be expected */
        snprintf(err, sizeof err, "redis timed out after %u ms before the command was sent",
                 r->timeout_ms);
        store_redis_list_remove(&r->batch, c);
        store_redis_answer(r, c, err, NULL);
        store_redis_cmd_free(c);
        return;
    }
    if (c->where == STORE_REDIS_QUEUED) {
        snprintf(err, sizeof err, "redis timed out after %u ms waiting for a connection%s%s%s",
                 r->timeout_ms, r->last_err[0] ? " (last error: " : "", r->last_err,
                 r->last_err[0] ? ")" : "");
        store_redis_list_remove(&r->queue, c);
        store_redis_answer(r, c, err, NULL);
        store_redis_cmd_free(c);
        store_redis_mark_down(r, "no connection within timeout_ms");
        return;
    }
    /* Sent, and bytes of replies wait on the connection (in the socket or in hiredis's reader):
     * the process itself was late (stopped, or not scheduled, past timeout_ms), and libevent ran
     * this timer before the read that hands them over (a stopped and continued process gets
     * EINTR from epoll_wait, then its expired timers). A few more loop turns let hiredis read
     * them; a reply still missing then times out. As upstream.c's deadline. */
    if (c->graced < STORE_REDIS_GRACE_TURNS && store_redis_reply_waiting(r)) {
        struct timeval zero = {0, 0};
        c->graced++;
        event_add(c->timer, &zero);
        return;
    }
    /* sent: answer now, let hiredis hand the late reply (or NULL) to a command marked abandoned */
    snprintf(err, sizeof err, "redis timed out after %u ms", r->timeout_ms);
    store_redis_list_remove(&r->inflight, c);
    if (c->kind == STORE_REDIS_CMD_PROBE)
        r->probing = 0;
    else
        store_redis_answer(r, c, err, NULL);
    c->where = STORE_REDIS_ABANDONED;
    c->r = NULL;
    if (++r->consecutive_timeouts >= STORE_REDIS_TIMEOUTS_DROP && r->ac) {
        snprintf(err, sizeof err, "%u commands in a row timed out", r->consecutive_timeouts);
        store_redis_drop(r, err);
        return;
    }
    store_redis_mark_down(r, err); /* probes again when the probe itself timed out */
}

/* One PING at a time on the live connection, timed out like any command. */
static void store_redis_probe(struct store_redis *r) {
    struct store_redis_cmd *c;
    struct timeval tv = {r->timeout_ms / 1000, (r->timeout_ms % 1000) * 1000};
    if (r->probing || r->state != STORE_REDIS_READY || !r->ac) return;
    if (!(c = calloc(1, sizeof *c))) return; /* the next timeout or reconnect probes again */
    c->r = r;
    c->kind = STORE_REDIS_CMD_PROBE;
    if (!(c->timer = event_new(r->base, -1, 0, store_redis_on_cmd_timeout, c)) ||
        store_redis_send(r, c) != 0) {
        store_redis_cmd_free(c);
        store_redis_drop(r, "could not send a probe");
        return;
    }
    event_add(c->timer, &tv);
    r->probing = 1;
}

static void store_redis_on_probe_timer(evutil_socket_t fd, short what, void *arg) {
    store_redis_probe(arg);
}

static void store_redis_on_backoff(evutil_socket_t fd, short what, void *arg) {
    struct store_redis *r = arg;
    store_count(r->owner, STORE_RECONNECTS);
    store_redis_connect(r);
}

static void store_redis_on_handshake_timeout(evutil_socket_t fd, short what, void *arg) {
    struct store_redis *r = arg;
    char why[96];
    snprintf(why, sizeof why, "no answer while %s", store_redis_state_names[r->state]);
    store_redis_drop(r, why);
}

static void store_redis_on_dial(const char *err, redisAsyncContext *ac, void *arg) {
    struct store_redis *r = arg;
    char why[300];
    r->dial = NULL;
    if (err) {
        snprintf(why, sizeof why, "connect failed: %s", err);
        store_redis_backoff(r, why);
        return;
    }
    ac->data = r;
    redisAsyncSetConnectCallback(ac, store_redis_on_connect);
    redisAsyncSetDisconnectCallback(ac, store_redis_on_disconnect);
    r->ac = ac;
}

/* Connects to host:port, found by the resolve or given: its name looked up first (redis_conn.h),
 * the handshake timer covering the lookup too. */
static void store_redis_connect_to(struct store_redis *r, const char *host, int port) {
    unsigned hs_ms = r->timeout_ms * 2 < 1000 ? 1000 : r->timeout_ms * 2;
    struct timeval tv = {hs_ms / 1000, (hs_ms % 1000) * 1000};
    snprintf(r->addr, sizeof r->addr, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
    store_redis_set_state(r, STORE_REDIS_CONNECTING);
    if (!(r->dial = redis_dial_start(r->base, r->dns, host, port, store_redis_on_dial, r))) {
        store_redis_backoff(r, "connect failed: out of memory");
        return;
    }
    event_add(r->handshake_timer, &tv);
}

/* Sends this loop turn's limit calls, STORE_REDIS_BATCH_MAX to a script call; they go back to the
 * queue when the connection went meanwhile. Each member counts as one command, as it would
 * alone. */
static void store_redis_on_flush(evutil_socket_t fd, short what, void *arg) {
    struct store_redis *r = arg;
    struct store_redis_cmd *c, *b;
    while (r->batch.head) {
        size_t n = r->batch.count < STORE_REDIS_BATCH_MAX ? r->batch.count : STORE_REDIS_BATCH_MAX;
        if (r->state != STORE_REDIS_READY || !r->ac || r->switching) {
            while ((c = r->batch.head)) {
                store_redis_list_remove(&r->batch, c);
                c->where = STORE_REDIS_QUEUED;
                store_redis_list_push(&r->queue, c);
            }
            return;
        }
        if (!(b = calloc(1, sizeof *b)) || !(b->members = calloc(n, sizeof *b->members))) {
            free(b);
            for (size_t i = 0; i < n && (c = r->batch.head); i++) {
                store_redis_list_remove(&r->batch, c);
                store_redis_answer(r, c, "out of memory", NULL);
                store_redis_cmd_free(c);
            }
            continue;
        }
        b->r = r;
        b->kind = STORE_REDIS_CMD_BATCH;
        b->script = 0;
        while (b->n_members < n) {
            c = r->batch.head;
            store_redis_list_remove(&r->batch, c);
            c->where = STORE_REDIS_INFLIGHT;
            store_redis_list_push(&r->inflight, c);
            b->members[b->n_members++] = c;
        }
        if (store_redis_send(r, b) != 0) {
            store_redis_batch_fail(r, b, "redis command could not be sent");
            store_redis_cmd_free(b);
            continue;
        }
        for (size_t i = 0; i < n; i++) store_count(r->owner, STORE_COMMANDS);
    }
}

/* Puts a LIMIT command with buckets into this loop turn's batch (the connection is ready). */
static void store_redis_batch_add(struct store_redis *r, struct store_redis_cmd *c) {
    c->where = STORE_REDIS_BATCHED;
    store_redis_list_push(&r->batch, c);
    if (r->batch.count == 1) event_active(r->flush_ev, EV_TIMEOUT, 0);
}

static void store_redis_on_resolved(const char *err, const char *host, int port, void *arg) {
    struct store_redis *r = arg;
    r->resolve = NULL;
    if (err) {
        store_redis_backoff(r, err);
        return;
    }
    store_redis_connect_to(r, host, port);
}

static void store_redis_check_epoch(struct store_redis *r);

static void store_redis_on_switch(void *arg) {
    store_redis_check_epoch(arg);
}

/* Takes the current settings (a SIGHUP may have published new ones), then connects: through
 * the sentinels, or straight to the configured host. */
static void store_redis_connect(struct store_redis *r) {
    struct redis_target *before = r->t;
    redis_target_ref(before);
    r->epoch = redis_conn_refresh(&r->t);
    r->timeout_ms = redis_target_timeout_ms(r->t);
    r->switching = 0;
    if (r->t != before || (!r->watch && redis_target_uses_sentinels(r->t))) {
        redis_watch_free(r->watch);
        r->watch = redis_watch_start(r->t, r->base, r->dns, store_redis_on_switch, r);
    }
    redis_target_unref(before);
    snprintf(r->addr, sizeof r->addr, "%s", redis_target_name(r->t)); /* until connect_to */
    store_redis_set_state(r, STORE_REDIS_DISCOVERING);
    redis_resolve_cancel(r->resolve);
    if (!(r->resolve = redis_resolve_start(r->t, r->base, r->dns, store_redis_on_resolved, r)))
        store_redis_backoff(r, "connect failed: out of memory");
}

/* Closes the connection without marking the store down, and connects now. */
static void store_redis_reconnect_now(struct store_redis *r) {
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    store_redis_abandon_inflight(r, "redis connection closed: settings changed");
    if (ac) {
        ac->data = NULL;
        ac->onConnect = NULL;
        ac->onDisconnect = NULL;
        redisAsyncFree(ac);
    }
    event_del(r->probe_timer);
    event_del(r->handshake_timer);
    event_del(r->backoff_timer);
    redis_dial_cancel(r->dial);
    r->dial = NULL;
    r->backoff_ms = STORE_REDIS_BACKOFF_MIN_MS;
    store_redis_connect(r);
}

/* The epoch moved (a master switch, new settings): a ready connection takes no new command and
 * is replaced once its replies are in; one waiting to retry retries now. */
static void store_redis_check_epoch(struct store_redis *r) {
    if (redis_conn_epoch() == r->epoch) return;
    if (r->state == STORE_REDIS_READY && r->ac) {
        if (!r->switching)
            log_info("redis %s: new settings or a new master; reconnecting after %zu "
                     "pending repl%s",
                     r->addr, r->inflight.count, r->inflight.count == 1 ? "y" : "ies");
        r->switching = 1;
        if (r->inflight.count == 0) store_redis_reconnect_now(r);
    } else if (r->state == STORE_REDIS_BACKOFF) {
        store_redis_reconnect_now(r);
    }
}

struct store_redis *store_redis_new(struct redis_target *t, struct store *owner,
                                    struct event_base *base, char *err, size_t errlen) {
    struct store_redis *r = calloc(1, sizeof *r);
    if (!r) goto oom;
    r->owner = owner;
    r->base = base;
    r->t = redis_target_ref(t);
    r->state = STORE_REDIS_DISCONNECTED;
    r->backoff_ms = STORE_REDIS_BACKOFF_MIN_MS;
    strbuf_init(&r->resp);
    r->rng = clock_mono_us() ^ (uint64_t)(uintptr_t)r ^ 0x9e3779b97f4a7c15ULL;
    if (!r->rng) r->rng = 1;
    if (!(r->backoff_timer = event_new(base, -1, 0, store_redis_on_backoff, r))) goto oom;
    if (!(r->handshake_timer = event_new(base, -1, 0, store_redis_on_handshake_timeout, r)))
        goto oom;
    if (!(r->probe_timer = event_new(base, -1, 0, store_redis_on_probe_timer, r))) goto oom;
    if (!(r->flush_ev = event_new(base, -1, 0, store_redis_on_flush, r))) goto oom;
    /* NULL leaves only numeric addresses usable (the dial then says so) */
    r->dns = redis_dns_new(base);
    /* a failure to connect now is not an error: commands wait, and the backoff retries */
    store_redis_connect(r);
    return r;
oom:
    snprintf(err, errlen, "out of memory");
    store_redis_free(r);
    return NULL;
}

void store_redis_free(struct store_redis *r) {
    struct store_redis_cmd *c;
    redisAsyncContext *ac;
    if (!r) return;
    while ((c = r->queue.head)) {
        store_redis_list_remove(&r->queue, c);
        store_redis_answer(r, c, STORE_CLOSED_MESSAGE, NULL);
        store_redis_cmd_free(c);
    }
    while ((c = r->batch.head)) {
        store_redis_list_remove(&r->batch, c);
        store_redis_answer(r, c, STORE_CLOSED_MESSAGE, NULL);
        store_redis_cmd_free(c);
    }
    store_redis_abandon_inflight(r, STORE_CLOSED_MESSAGE);
    if ((ac = r->ac)) {
        r->ac = NULL;
        ac->data = NULL;
        ac->onConnect = NULL;
        ac->onDisconnect = NULL;
        redisAsyncFree(ac); /* answers the abandoned commands with NULL: they free themselves */
    }
    redis_resolve_cancel(r->resolve);
    redis_dial_cancel(r->dial);
    redis_watch_free(r->watch);
    redis_target_unref(r->t);
    /* after every lookup on it is cancelled; pending cancel callbacks run now and free theirs */
    if (r->dns) evdns_base_free(r->dns, 1);
    if (r->backoff_timer) event_free(r->backoff_timer);
    if (r->handshake_timer) event_free(r->handshake_timer);
    if (r->probe_timer) event_free(r->probe_timer);
    if (r->flush_ev) event_free(r->flush_ev);
    strbuf_cleanup(&r->resp);
    free(r);
}

int store_redis_connected(const struct store_redis *r) {
    return r->state == STORE_REDIS_READY && !r->down;
}

/* The error of a command refused at once because the store is marked down. */
static void store_redis_down_error(struct store_redis *r, char *err, size_t errlen) {
    store_count(r->owner, STORE_FAST_FAILS);
    snprintf(err, errlen, "redis unavailable (marked down: %s; %s)", r->down_why,
             r->state == STORE_REDIS_READY ? "probing" : "reconnecting");
}

void store_redis_limit(struct store_redis *r, const struct limit_bucket *b, size_t n,
                       const struct store_nonce *nonce, store_limit_fn cb, void *arg) {
    struct store_redis_cmd *c = NULL;
    struct timeval tv = {r->timeout_ms / 1000, (r->timeout_ms % 1000) * 1000};
    char err[200];
    if (nonce && (!nonce->key || !*nonce->key)) nonce = NULL;
    if ((n == 0 && !nonce) || n > LIMIT_MAX_BUCKETS) {
        struct limit_outcome o;
        if (n == 0) {
            memset(&o, 0, sizeof o);
            o.allowed = 1;
            o.denied = o.shadow_denied = -1;
            store_defer(r->owner, cb, arg, NULL, &o);
        } else {
            store_defer(r->owner, cb, arg, "too many buckets for one request", NULL);
        }
        return;
    }
    store_redis_check_epoch(r);
    /* known down: say so now rather than after timeout_ms */
    if (r->down) {
        store_redis_down_error(r, err, sizeof err);
        store_defer(r->owner, cb, arg, err, NULL);
        return;
    }
    if ((r->state != STORE_REDIS_READY || r->switching) &&
        r->queue.count >= STORE_REDIS_QUEUE_MAX) {
        store_defer(r->owner, cb, arg,
                    "redis queue full: too many commands waiting for a connection", NULL);
        return;
    }
    if (!(c = calloc(1, sizeof *c))) goto oom;
    c->r = r;
    c->kind = STORE_REDIS_CMD_LIMIT;
    c->cb = cb;
    c->arg = arg;
    for (size_t i = 0; i < n; i++) {
        if (!(c->keys[i] = strdup(b[i].key))) goto oom;
        c->n = i + 1;
        c->emission_us[i] = b[i].emission_us ? b[i].emission_us : 1;
        c->tolerance_us[i] = b[i].tolerance_us;
        c->shadow[i] = b[i].shadow;
    }
    if (nonce) {
        if (!(c->nonce_key = strdup(nonce->key))) goto oom;
        c->nonce_ttl_ms = nonce->ttl_ms ? nonce->ttl_ms : 1;
    }
    if (!(c->timer = event_new(r->base, -1, 0, store_redis_on_cmd_timeout, c))) goto oom;
    event_add(c->timer, &tv);
    if (r->state == STORE_REDIS_READY && !r->switching && n > 0) {
        store_redis_batch_add(r, c);
        return;
    }
    if (r->state == STORE_REDIS_READY && !r->switching && store_redis_send(r, c) == 0) return;
    c->where = STORE_REDIS_QUEUED;
    store_redis_list_push(&r->queue, c);
    return;
oom:
    store_redis_cmd_free(c);
    store_defer(r->owner, cb, arg, "out of memory", NULL);
}

/* Queues or sends one cache script; exactly one of pool_cb / idem_cb is set. */
static void store_redis_cache(struct store_redis *r, enum store_op op, const char *key,
                              const char *const *argv, const size_t *argvlen, size_t argc,
                              store_pool_fn pool_cb, store_idem_fn idem_cb, void *arg) {
    struct store_redis_cmd *c = NULL;
    struct timeval tv = {r->timeout_ms / 1000, (r->timeout_ms % 1000) * 1000};
    char err[200];
    const char *fail = NULL;
    if (argc > STORE_REDIS_CACHE_ARGS) {
        fail = "too many script arguments";
        goto failed;
    }
    store_redis_check_epoch(r);
    if (r->down) {
        store_redis_down_error(r, err, sizeof err);
        fail = err;
        goto failed;
    }
    if ((r->state != STORE_REDIS_READY || r->switching) &&
        r->queue.count >= STORE_REDIS_QUEUE_MAX) {
        fail = "redis queue full: too many commands waiting for a connection";
        goto failed;
    }
    fail = "out of memory";
    if (!(c = calloc(1, sizeof *c))) goto failed;
    c->r = r;
    c->kind = STORE_REDIS_CMD_CACHE;
    c->op = op;
    c->script = 1 + (unsigned)op;
    c->arg = arg;
    if (!(c->keys[0] = strdup(key))) goto failed;
    c->n = 1;
    for (size_t i = 0; i < argc; i++) {
        if (!(c->argv[i] = malloc(argvlen[i] + 1))) goto failed;
        memcpy(c->argv[i], argv[i], argvlen[i]);
        c->argv[i][argvlen[i]] = 0;
        c->argvlen[i] = argvlen[i];
        c->argc = i + 1;
    }
    if (!(c->timer = event_new(r->base, -1, 0, store_redis_on_cmd_timeout, c))) goto failed;
    c->pool_cb = pool_cb;
    c->idem_cb = idem_cb;
    event_add(c->timer, &tv);
    if (r->state == STORE_REDIS_READY && !r->switching && store_redis_send(r, c) == 0) return;
    c->where = STORE_REDIS_QUEUED;
    store_redis_list_push(&r->queue, c);
    return;
failed:
    store_redis_cmd_free(c);
    if (pool_cb)
        store_defer_pool(r->owner, pool_cb, arg, fail, NULL);
    else
        store_defer_idem(r->owner, idem_cb, arg, fail, NULL);
}

/* ---- the redis backend's table (store_backend.h) ---- */

static int store_redis_op_open(struct store *s, struct event_base *base, void **state, char *err,
                               size_t errlen) {
    return (*state = store_redis_new(store_redis_target_of(s), s, base, err, errlen)) ? 0 : -1;
}

static void store_redis_op_close(void *state) {
    store_redis_free(state);
}

static int store_redis_op_connected(const void *state) {
    return store_redis_connected(state);
}

static void store_redis_op_limit(struct store *s, void *state, const struct limit_bucket *b,
                                 size_t n, const struct store_nonce *nonce, store_limit_fn cb,
                                 void *arg) {
    store_redis_limit(state, b, n, nonce, cb, arg);
}

/* The pool scripts' string arguments (store_lua.h): push url, cap, ttl_ms; pop and depth
 * ttl_ms. */
static void store_redis_op_pool(struct store *s, void *state, const struct store_pool_req *req,
                                store_pool_fn cb, void *arg) {
    char capbuf[24], ttlbuf[24];
    const char *argv[3];
    size_t argvlen[3], argc = 0;
    snprintf(capbuf, sizeof capbuf, "%zu", req->cap);
    snprintf(ttlbuf, sizeof ttlbuf, "%u", req->ttl_ms);
    if (req->op == STORE_OP_POOL_PUSH) {
        argv[argc++] = req->url;
        argv[argc++] = capbuf;
    }
    argv[argc++] = ttlbuf;
    for (size_t i = 0; i < argc; i++) argvlen[i] = strlen(argv[i]);
    store_redis_cache(state, req->op, req->key, argv, argvlen, argc, cb, NULL, arg);
}

/* The idempotency scripts' string arguments (store_lua.h): begin fp, pending_ms; complete fp,
 * body, ttl_ms; abandon fp. A TTL of 0 is sent as 1 (PX 0 is an error). */
static void store_redis_op_idem(struct store *s, void *state, const struct store_idem_req *req,
                                store_idem_fn cb, void *arg) {
    char ttlbuf[24];
    const char *argv[3];
    size_t argvlen[3], argc = 0;
    snprintf(ttlbuf, sizeof ttlbuf, "%u", req->ttl_ms ? req->ttl_ms : 1);
    argv[argc] = req->fp;
    argvlen[argc++] = strlen(req->fp);
    if (req->op == STORE_OP_IDEM_COMPLETE) {
        argv[argc] = req->body;
        argvlen[argc++] = req->body_len;
    }
    if (req->op != STORE_OP_IDEM_ABANDON) {
        argv[argc] = ttlbuf;
        argvlen[argc++] = strlen(ttlbuf);
    }
    store_redis_cache(state, req->op, req->key, argv, argvlen, argc, NULL, cb, arg);
}

static void store_redis_op_heartbeat(struct store *s, void *state, const char *key,
                                     const char *const argv[2], const size_t argvlen[2],
                                     store_pool_fn cb, void *arg) {
    (void)s;
    store_redis_cache(state, STORE_OP_HEARTBEAT, key, argv, argvlen, 2, cb, NULL, arg);
}

const struct store_ops store_redis_ops = {
    .kind = "redis",
    .open = store_redis_op_open,
    .close = store_redis_op_close,
    .connected = store_redis_op_connected,
    .limit = store_redis_op_limit,
    .pool = store_redis_op_pool,
    .idem = store_redis_op_idem,
    .heartbeat = store_redis_op_heartbeat,
};
