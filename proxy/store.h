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

/* The backends (store_memory.c, store_redis.c) sit behind a table of operations declared in the
 * private header store_backend.h. */

#endif
