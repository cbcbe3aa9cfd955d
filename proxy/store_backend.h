/* store_backend.h: the store's two backends behind one table of operations. Private to the
 * store module (store.c, store_memory.c, store_redis.c) and its unit test; the gateway uses
 * store.h only. store.c owns struct store (the deferred-callback queue, the counters) and the
 * checks both backends share, picks the table from the config (a "redis" section or not) and
 * calls it; each backend implements it over its own state and answers through store_defer*. */
#ifndef CAPGATE_STORE_BACKEND_H
#define CAPGATE_STORE_BACKEND_H
#include "store.h"

struct store_memory;
struct store_redis_options;

/* A prefetch pool or idempotency operation and its arguments (borrowed for the call). */
enum store_op {
    STORE_OP_POOL_PUSH,
    STORE_OP_POOL_POP,
    STORE_OP_POOL_DEPTH,
    STORE_OP_IDEM_BEGIN,
    STORE_OP_IDEM_COMPLETE,
    STORE_OP_IDEM_ABANDON
};
struct store_pool_req {
    enum store_op op; /* POOL_* */
    const char *key;
    const char *url; /* push */
    size_t cap;      /* push */
    unsigned ttl_ms;
};
struct store_idem_req {
    enum store_op op; /* IDEM_*; fp already checked (store.c) */
    const char *key, *fp;
    const char *body; /* complete */
    size_t body_len;
    unsigned ttl_ms; /* begin: pending_ms; complete: ttl_ms */
};

/* One backend. Every operation answers exactly once, through store_defer / store_defer_pool /
 * store_defer_idem (never inside the call); state is what open made for this store. */
struct store_ops {
    const char *kind; /* "memory" or "redis" (store_shared_kind) */
    /* The per-worker state of store s on base (NULL when the backend keeps none): 0, or -1 and
     * err. */
    int (*open)(struct store *s, struct event_base *base, void **state, char *err, size_t errlen);
    /* Pending callbacks fire with STORE_CLOSED_MESSAGE before it returns. */
    void (*close)(void *state);
    int (*connected)(const void *state); /* store_connected */
    /* store_limit_nonce (the memory backend ignores the Nonce: the process's cache checked it) */
    void (*limit)(struct store *s, void *state, const struct limit_bucket *b, size_t n,
                  const struct store_nonce *nonce, store_limit_fn cb, void *arg);
    void (*pool)(struct store *s, void *state, const struct store_pool_req *req, store_pool_fn cb,
                 void *arg);
    void (*idem)(struct store *s, void *state, const struct store_idem_req *req, store_idem_fn cb,
                 void *arg);
};
extern const struct store_ops store_memory_ops;
extern const struct store_ops store_redis_ops;

/* What store_shared holds for the backends: the process's memory tables (the memory store, or
 * the local fallback beside Redis) and the Redis connection options. */
struct store_memory *store_memory_of(struct store *s);
const struct store_redis_options *store_redis_options_of(struct store *s);

/* Memory (store_memory.c): buckets in a hash table shared by every thread, striped mutexes taken
 * in ascending stripe order. Expired buckets (TAT in the past by more than the tolerance) are
 * dropped as the table is touched. */
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

/* Where the redis backend connects; store_shared owns a copy of the config's values. */
struct store_redis_options {
    char *host;
    int port;
    unsigned db;
    char *password;      /* NULL: no AUTH */
    unsigned timeout_ms; /* every command, queue wait included */
};

/* Redis (store_redis.c): one connection on the worker's base, owned by a struct store; its
 * table is store_redis_ops. */
struct store_redis;
struct store_redis *store_redis_new(const struct store_redis_options *opt, struct store *owner,
                                    struct event_base *base, char *err, size_t errlen);
/* Pending callbacks fire with STORE_CLOSED_MESSAGE before it returns. */
void store_redis_free(struct store_redis *r);
int store_redis_connected(const struct store_redis *r);
void store_redis_limit(struct store_redis *r, const struct limit_bucket *b, size_t n,
                       const struct store_nonce *nonce, store_limit_fn cb, void *arg);

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
