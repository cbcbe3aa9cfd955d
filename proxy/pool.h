/* pool.h: the prefetch pool (docs/design.md "Caches"). For each configured profile (an exact
 * CaptchaIframeQuery parameter set) single-use URLs are fetched ahead of time by one background
 * refiller per process and kept in the store (store_pool_*: a Redis list per profile shared by
 * every instance, or a ring in memory); a front request that equals a profile and carries no
 * per-user field pops one. Each URL is handed out at most once and never once ttl_s old; an empty
 * pool or a store error means a normal upstream call, never an error.
 *
 * Profile ids are derived from the parameters ("ct9-dl1-h1-cl2-ac0-b7-s8", "b-"/"s-" when
 * absent), so a reload that keeps a profile keeps its pool: key <prefix>pool:<id>.
 *
 * Refiller (one per process, on worker 0's event loop, with that worker's store and upstream
 * client, handed over as a struct pool_refiller_env), an explicit state machine:
 *   idle → filling (fetches in flight) → idle, and on an upstream failure → backing off (0.5 s
 *   doubling to 30 s; no fetch starts meanwhile) → idle once the pause is over.
 * Every POOL_REFILL_TICK_MS it reads each profile's depth (which also drops expired entries) and
 * starts up to size - depth fetches, at most POOL_REFILL_CONCURRENCY in flight. A fetch first
 * takes a token from the global limit rules only (scope "global"; refused or store error: the
 * fetch is skipped until the next tick), then calls upstream with exactly the profile's
 * parameters, signed with the real key like a forwarded request, and pushes the url of a code 0
 * reply. Entering and leaving "backing off" are logged once each. Several instances on one Redis
 * each run a refiller; they may overfill by up to their in-flight fetches (the list is capped at
 * size). */
#ifndef CAPGATE_POOL_H
#define CAPGATE_POOL_H
#include <stddef.h>
#include <stdint.h>
#include "config.h"

struct params;
struct store;
struct strbuf;
struct v2_fields;

#define POOL_ID_MAX 96
#define POOL_KEY_MAX 192
#define POOL_REFILL_TICK_MS 200
#define POOL_REFILL_CONCURRENCY 4
#define POOL_BACKOFF_MIN_MS 500
#define POOL_BACKOFF_MAX_MS 30000

/* ---- pure ---- */

/* The profile's id (see above). 0, or -1 when out is too small. */
int pool_profile_id(const struct config_pool_profile *pr, char *out, size_t cap);
/* "<prefix>pool:<id>". 0/-1 (too small). */
int pool_key(const char *prefix, const struct config_pool_profile *pr, char *out, size_t cap);
/* The profile a validated request is served from, or NULL: Action CaptchaIframeQuery; the five
 * UInts equal; businessId and sceneId equal, or both absent; none of validate_user_fields[]
 * present; no parameter besides the public ones (validate_public_params), RequestClient, Action
 * and the profile's own. Borrowed from cfg. */
const struct config_pool_profile *pool_match(const struct config_pool *cfg,
                                             const struct v2_fields *f, const struct params *p);
/* The reply to a hit, in upstream's shape: {"code":0,"codeDesc":"Success","message":"No Error",
 * "url":"..."}. Caller frees; NULL on OOM. */
char *pool_hit_body(const char *url);

/* ---- process-wide state: counters and the depth per profile (any thread) ---- */

struct pool;
struct pool *pool_new(void);    /* NULL on OOM */
void pool_free(struct pool *p); /* NULL accepted; after every user */

struct pool_totals {
    uint64_t hits, misses, discarded_expired;
};
void pool_get_totals(const struct pool *p, struct pool_totals *out);
/* hits / (hits + misses), 0 when there was no lookup. */
double pool_hit_ratio(const struct pool_totals *t);
/* Appends capgate_pool_hits_total, capgate_pool_misses_total,
 * capgate_pool_discarded_expired_total, capgate_pool_depth{profile="<id>"} (the last depth the
 * refiller or a lookup saw, for the profiles of the running config) and, per such profile,
 * capgate_pool_profile_hits_total and capgate_pool_profile_misses_total. 0/-1 (OOM). */
int pool_render_metrics(const struct pool *p, struct strbuf *out);
/* Appends a JSON object: {"hits":N,"misses":N,"hit_ratio":R,"discarded_expired":N,
 * "depth":{"<id>":N,...},"profiles":{"<id>":{"depth":N,"hits":N,"misses":N,"hit_ratio":R},...}}.
 * 0/-1. */
int pool_render_json(const struct pool *p, struct strbuf *out);

/* ---- the request path ---- */

/* url: the URL handed out (borrowed for the call), or NULL: a miss (empty pool, store error). */
typedef void (*pool_take_fn)(const char *url, void *arg);
/* Pops a URL of profile pr (from the config the request holds) for the request. cb fires exactly
 * once, never inside this call (also when the store fails: a miss). Counts the hit or the miss
 * and the expired entries dropped. 0, or -1 on OOM (cb not called). */
int pool_take(struct pool *p, struct store *s, const char *key_prefix, unsigned ttl_s,
              const struct config_pool_profile *pr, pool_take_fn cb, void *arg);

/* ---- the refiller ---- */

struct pool_refiller;
struct event_base;
struct shared_config;
struct upstream;
/* What the refiller works with: everything is used on one thread (the one running base's loop)
 * and is borrowed; each pointer outlives the refiller (store and upstream: until
 * pool_refiller_stop). */
struct pool_refiller_env {
    struct event_base *base;
    struct store *store;                 /* pool lists and depths, the global limit tokens */
    const int *store_closing;            /* *store_closing set: the store is being freed, no
                                          * round starts */
    struct upstream *upstream;           /* the refill calls */
    const struct config *boot;           /* the startup config: the key prefix and the upstream
                                          * credentials (both need a restart to change) */
    struct shared_config *const *config; /* the running config: read on every tick (a reload
                                          * swaps *config), a reference held for each round */
    uint64_t *rng;                       /* the thread's xoshiro256** state (capgate/rng.h), for
                                          * the refill calls' Nonces */
};
/* Starts refilling the profiles of the running config. NULL and err on OOM. */
struct pool_refiller *pool_refiller_new(struct pool *p, const struct pool_refiller_env *env,
                                        char *err, size_t errlen);
/* No new work from now on (a fetch whose callback arrives later only ends). Call before the
 * store and the upstream client it uses are freed. NULL accepted. */
void pool_refiller_stop(struct pool_refiller *r);
/* After the store and upstream client were freed (every pending callback has fired). NULL
 * accepted. */
void pool_refiller_free(struct pool_refiller *r);

#endif
