/* store.h: the shared state behind rate limits, and later the prefetch pool and idempotent replay:
 * one interface, two implementations chosen by the config (a "redis" section or not).
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
/* Pending callbacks fire with err "store closed" before it returns. Not from inside a store
 * callback (free on the next loop turn instead). */
void store_free(struct store *s);
int store_connected(const struct store *s);  /* 1 when the backend is reachable right now */

struct store_stats {
    uint64_t commands, errors, timeouts, reconnects, noscript_reloads;
};
void store_get_stats(const struct store *s, struct store_stats *out);

/* Checks n buckets atomically (all admit and all take a token, or none takes one; shadow buckets
 * never refuse but report shadow_denied). cb gets err NULL and the outcome, or err (a sentence: "redis
 * timed out after 100 ms", "redis connection refused") and no outcome when the store failed; the caller
 * then applies on_store_error. */
typedef void (*store_limit_fn)(const char *err, const struct limit_outcome *o, void *arg);
void store_limit(struct store *s, const struct limit_bucket *b, size_t n, store_limit_fn cb,
                 void *arg);
/* The same check against this process's own buckets only (on_store_error "local": the in-process
 * buckets keep enforcing while Redis is unreachable). For the memory store it is store_limit. */
void store_limit_local(struct store *s, const struct limit_bucket *b, size_t n, store_limit_fn cb,
                       void *arg);

/* ---- Backends. store.c owns struct store (the deferred-callback queue, the counters) and dispatches
 * to these; the gateway uses only the functions above. ---- */

/* Memory (store_memory.c): buckets in a hash table shared by every thread, striped mutexes taken
 * in ascending stripe order. Expired buckets (TAT in the past by more than the tolerance) are
 * dropped as the table is touched. */
struct store_memory;
struct store_memory *store_memory_new(void);  /* NULL on OOM */
void store_memory_free(struct store_memory *m);
/* limit_decide over the stored TATs, then writes the admitted buckets; synchronous, any thread.
 * Time is the caller's (monotonic µs in the store, explicit in tests). */
void store_memory_check(struct store_memory *m, const struct limit_bucket *b, size_t n,
                        uint64_t now_us, struct limit_outcome *o);
size_t store_memory_count(struct store_memory *m); /* buckets held, expired ones included */

/* Where the redis backend connects; store_shared owns a copy of the config's values. */
struct store_redis_options {
    char *host;
    int port;
    unsigned db;
    char *password;       /* NULL: no AUTH */
    unsigned timeout_ms;  /* every command, queue wait included */
};

/* Redis (store_redis.c): one connection on the worker's base, owned by a struct store. */
struct store_redis;
struct store_redis *store_redis_new(const struct store_redis_options *opt, struct store *owner,
                                    struct event_base *base, char *err, size_t errlen);
/* Pending callbacks fire with "store closed" before it returns. */
void store_redis_free(struct store_redis *r);
int store_redis_connected(const struct store_redis *r);
void store_redis_limit(struct store_redis *r, const struct limit_bucket *b, size_t n,
                       store_limit_fn cb, void *arg);

/* For the backends: deliver cb(err, o) from the owner's base on a later loop turn (err and o are
 * copied; o NULL when err is set), and count in the owner's statistics. */
void store_defer(struct store *s, store_limit_fn cb, void *arg, const char *err,
                 const struct limit_outcome *o);
enum store_counter { STORE_COMMANDS, STORE_ERRORS, STORE_TIMEOUTS, STORE_RECONNECTS,
                     STORE_NOSCRIPT_RELOADS };
void store_count(struct store *s, enum store_counter c);

#endif
