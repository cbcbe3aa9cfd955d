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
/* Pending callbacks fire with err "store closed" before it returns. */
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

#endif
