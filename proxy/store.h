/* store.h: the shared state behind rate limits, the prefetch pool and idempotent replay
 * (docs/design.md "Store interface"): one interface, two implementations chosen by the config (a
 * "redis" section or not).
 *  - redis: hiredis async on the worker's event_base, one connection per worker, pipelined,
 *    reconnecting with backoff, every command timed out after redis.timeout_ms (hiredis 0.14 has no
 *    async timeouts, so each command carries a timer; a late reply is discarded). Limits run as one
 *    EVALSHA per request over all its keys, timed by Redis TIME; scripts load at connect and again after
 *    NOSCRIPT.
 *  - memory: in-process tables shared by the workers of one process (striped mutexes, short critical
 *    sections), the embedded default.
 * Every callback fires exactly once, never from inside the call that started it. */
#ifndef CAPGATE_STORE_H
#define CAPGATE_STORE_H
#include <stddef.h>
#include <stdint.h>
#include "limit.h"

struct event_base;
struct config;
struct store_shared;
struct store;

/* Process-wide part, made once at start from the config (redis section or not). NULL + err on
 * failure. Shared by all workers; freed after every store made from it. */
struct store_shared *store_shared_new(const struct config *cfg, char *err, size_t errlen);
void store_shared_free(struct store_shared *sh);
const char *store_shared_kind(const struct store_shared *sh); /* "redis" or "memory" */

/* One per worker, on the worker's base. Connecting happens in the background; commands before the
 * connection is up wait for it (bounded by timeout_ms). NULL + err on failure. */
struct store *store_new(struct store_shared *sh, struct event_base *base, char *err, size_t errlen);
/* Pending callbacks fire with err STORE_CLOSED_MESSAGE before it returns. Not from inside a
 * store callback (free on the next loop turn instead). */
#define STORE_CLOSED_MESSAGE "store closed"
void store_free(struct store *s);
/* 1 when the backend is reachable right now: redis connected and not marked down (a command
 * timed out and no probe has succeeded since; commands then fail at once, see store_redis.c). */
int store_connected(const struct store *s);

struct store_stats {
    uint64_t commands, errors, timeouts, reconnects, noscript_reloads;
    uint64_t fast_fails; /* commands refused at once while the store was marked down */
};
void store_get_stats(const struct store *s, struct store_stats *out);

/* Checks n buckets atomically (all admit and all take a token, or none takes one; shadow buckets
 * never refuse but report shadow_denied). cb gets err NULL and the outcome, or err (a sentence: "redis
 * timed out after 100 ms", "redis connection refused") and no outcome when the store failed; the caller
 * then applies on_store_error. */
typedef void (*store_limit_fn)(const char *err, const struct limit_outcome *o, void *arg);
void store_limit(struct store *s, const struct limit_bucket *b, size_t n, store_limit_fn cb,
                 void *arg);
/* A signed request's Nonce to claim across every process sharing the store (docs/design.md
 * "Decisions": a replay to another instance is refused as upstream refuses it). key
 * "<prefix>nonce:<SecretId>:<Nonce>", held for ttl_ms (validate_nonce_ttl_s(window) * 1000); both
 * borrowed for the call. */
struct store_nonce {
    const char *key;
    unsigned ttl_ms;
};
/* store_limit that also claims nonce (NULL: none) in the same command. redis: SET NX PX before any
 * bucket is touched, inside the limit script (the nonce key an extra KEYS entry), or a plain
 * "SET key 1 NX PX ttl" when n is 0; a key already there answers o->replay (allowed 0, denied -1,
 * no token taken). memory: nonce is ignored (the process's own nonce cache already checked it);
 * n 0 then answers allowed. On err neither the claim nor the check is known. */
void store_limit_nonce(struct store *s, const struct limit_bucket *b, size_t n,
                       const struct store_nonce *nonce, store_limit_fn cb, void *arg);
/* The same check against this process's own buckets only (on_store_error "local": the in-process
 * buckets keep enforcing while Redis is unreachable). For the memory store it is store_limit. */
void store_limit_local(struct store *s, const struct limit_bucket *b, size_t n, store_limit_fn cb,
                       void *arg);

/* ---- Prefetch pool (pool.h): one FIFO of single-use captcha URLs per profile key. ----
 * Entries carry their creation time (Redis TIME in the script, the wall clock in memory); an
 * entry whose age is ttl_ms or more is never returned: pop and depth drop such entries from the
 * front (entries are in creation order) and report how many they dropped. Each URL is returned
 * by at most one pop, across every process sharing the store.
 *  - redis: a list per key, entries "<created_ms>|<url>", RPUSH by a script that caps the list
 *    (the oldest entries go beyond cap) and sets PEXPIRE 2 * ttl_ms on the key (an abandoned
 *    profile's list disappears); pop is a script: LPOP until a fresh entry.
 *  - memory: a ring per key under one mutex, shared by the workers of the process. */
struct store_pool_result {
    const char *url;    /* pop: the URL handed out (borrowed for the callback), NULL: none */
    size_t depth;       /* push: entries after the push; depth: fresh entries left */
    unsigned discarded; /* pop, depth: expired entries dropped by this call */
};
/* err NULL and r set, or err set (a sentence) and r NULL. */
typedef void (*store_pool_fn)(const char *err, const struct store_pool_result *r, void *arg);
/* Appends url (copied) to key's list, capped at cap entries (the oldest are dropped beyond). */
void store_pool_push(struct store *s, const char *key, const char *url, size_t cap, unsigned ttl_ms,
                     store_pool_fn cb, void *arg);
/* Removes and returns the oldest entry younger than ttl_ms, dropping older ones before it. */
void store_pool_pop(struct store *s, const char *key, unsigned ttl_ms, store_pool_fn cb, void *arg);
/* Drops the expired entries at the front and reports the fresh count. */
void store_pool_depth(struct store *s, const char *key, unsigned ttl_ms, store_pool_fn cb,
                      void *arg);

/* ---- Idempotency records (idem.h): key → pending(fingerprint) or done(fingerprint, body). ----
 * fingerprint is a 64-character hex digest (no '|'). redis: one string per key, "P|<fp>" or
 * "D|<fp>|<body>", every operation one script (atomic against concurrent duplicates on any
 * instance); memory: a hash table under one mutex, expired entries dropped as it is touched. */
enum store_idem_state {
    STORE_IDEM_NEW,      /* begin: no record; a pending marker of ours is now in place */
    STORE_IDEM_PENDING,  /* begin: someone holds the key with this fingerprint, no reply yet */
    STORE_IDEM_DONE,     /* begin: a reply is stored (body); complete/abandon: done as asked */
    STORE_IDEM_MISMATCH, /* begin: the key holds another fingerprint; complete/abandon: the
                            * pending marker was not ours any more (expired, replaced): nothing
                            * was written */
};
struct store_idem_result {
    enum store_idem_state state;
    const char *body; /* STORE_IDEM_DONE from begin: the stored reply, borrowed for the
                            * callback; else NULL */
    size_t body_len;
};
typedef void (*store_idem_fn)(const char *err, const struct store_idem_result *r, void *arg);
#define STORE_IDEM_FP_LEN 64
/* Reads key; when absent, writes a pending marker with fingerprint fp for pending_ms. */
void store_idem_begin(struct store *s, const char *key, const char *fp, unsigned pending_ms,
                      store_idem_fn cb, void *arg);
/* Replaces our pending marker (same fp) with the reply body for ttl_ms. */
void store_idem_complete(struct store *s, const char *key, const char *fp, const char *body,
                         size_t body_len, unsigned ttl_ms, store_idem_fn cb, void *arg);
/* Removes our pending marker (same fp): the reply is not to be replayed. */
void store_idem_abandon(struct store *s, const char *key, const char *fp, store_idem_fn cb,
                        void *arg);

/* ---- Backends. store.c owns struct store (the deferred-callback queue, the counters) and dispatches
 * to these; the gateway uses only the functions above. ---- */

/* Memory (store_memory.c): buckets in a hash table shared by every thread, striped mutexes taken
 * in ascending stripe order. Expired buckets (TAT in the past by more than the tolerance) are
 * dropped as the table is touched. */
struct store_memory;
struct store_memory *store_memory_new(void); /* NULL on OOM */
void store_memory_free(struct store_memory *m);
/* limit_decide over the stored TATs, then writes the admitted buckets; synchronous, any thread.
 * Time is the caller's (monotonic µs in the store, explicit in tests). */
void store_memory_check(struct store_memory *m, const struct limit_bucket *b, size_t n,
                        uint64_t now_us, struct limit_outcome *o);
size_t store_memory_count(struct store_memory *m); /* buckets held, expired ones included */

/* Memory pool and idempotency records (store_memory.c), synchronous, any thread, the time given
 * in wall-clock ms by the caller. url/body in the results are malloc'ed copies the caller frees
 * (r->url cast, or the body out-parameter). */
int store_memory_pool_push(struct store_memory *m, const char *key, const char *url, size_t cap,
                           unsigned ttl_ms, uint64_t now_ms, size_t *depth);
int store_memory_pool_pop(struct store_memory *m, const char *key, unsigned ttl_ms, uint64_t now_ms,
                          char **url, unsigned *discarded);
int store_memory_pool_depth(struct store_memory *m, const char *key, unsigned ttl_ms,
                            uint64_t now_ms, size_t *depth, unsigned *discarded);
/* 0 and *state (and *body, *len for DONE; the caller frees body), or -1 on OOM. */
int store_memory_idem_begin(struct store_memory *m, const char *key, const char *fp,
                            unsigned pending_ms, uint64_t now_ms, enum store_idem_state *state,
                            char **body, size_t *len);
int store_memory_idem_complete(struct store_memory *m, const char *key, const char *fp,
                               const char *body, size_t len, unsigned ttl_ms, uint64_t now_ms,
                               enum store_idem_state *state);
int store_memory_idem_abandon(struct store_memory *m, const char *key, const char *fp,
                              uint64_t now_ms, enum store_idem_state *state);
size_t store_memory_idem_count(struct store_memory *m);  /* records held, expired ones included */
size_t store_memory_idem_chains(struct store_memory *m); /* the table grows with its records */

/* Redis (store_redis.c): one connection on the worker's base, owned by a struct store. */
struct store_redis;
/* t: where it connects first (redis_conn.h; a reference is taken); every connect takes the
 * process's current settings when a SIGHUP published newer ones. */
struct redis_target;
struct store_redis *store_redis_new(struct redis_target *t, struct store *owner,
                                    struct event_base *base, char *err, size_t errlen);
/* Pending callbacks fire with STORE_CLOSED_MESSAGE before it returns. */
void store_redis_free(struct store_redis *r);
int store_redis_connected(const struct store_redis *r);
void store_redis_limit(struct store_redis *r, const struct limit_bucket *b, size_t n,
                       const struct store_nonce *nonce, store_limit_fn cb, void *arg);
/* One of the cache scripts (store_lua.h) over one key with string arguments (copied); the reply
 * is answered as a pool or an idempotency result through store_defer_pool / store_defer_idem. */
enum store_redis_op {
    STORE_OP_POOL_PUSH,
    STORE_OP_POOL_POP,
    STORE_OP_POOL_DEPTH,
    STORE_OP_IDEM_BEGIN,
    STORE_OP_IDEM_COMPLETE,
    STORE_OP_IDEM_ABANDON
};
void store_redis_pool(struct store_redis *r, enum store_redis_op op, const char *key,
                      const char *const *argv, const size_t *argvlen, size_t argc, store_pool_fn cb,
                      void *arg);
void store_redis_idem(struct store_redis *r, enum store_redis_op op, const char *key,
                      const char *const *argv, const size_t *argvlen, size_t argc, store_idem_fn cb,
                      void *arg);

/* For the backends: deliver cb(err, o) from the owner's base on a later loop turn (err and o are
 * copied; o NULL when err is set), and count in the owner's statistics. */
void store_defer(struct store *s, store_limit_fn cb, void *arg, const char *err,
                 const struct limit_outcome *o);
void store_defer_pool(struct store *s, store_pool_fn cb, void *arg, const char *err,
                      const struct store_pool_result *r);
void store_defer_idem(struct store *s, store_idem_fn cb, void *arg, const char *err,
                      const struct store_idem_result *r);
enum store_counter {
    STORE_COMMANDS,
    STORE_ERRORS,
    STORE_TIMEOUTS,
    STORE_RECONNECTS,
    STORE_NOSCRIPT_RELOADS,
    STORE_FAST_FAILS
};
void store_count(struct store *s, enum store_counter c);

#endif
