/* pipeline.h: one front request through the gateway, as an explicit state machine:
 *   parsed → authed → validated → authorized → replay → limit → pool → upstream → replied → audited
 * Each stage is a function that decides "next", "finish" (the reply is ready) or "pending" (it
 * resumes later from a callback), so stages that wait on Redis or upstream slot in without
 * blocking the worker's event loop. A request context has one place where it is released. The
 * pure decisions (HTTP status mapping, authorization, the outgoing parameters) are exported for
 * unit tests. */
#ifndef CAPGATE_PIPELINE_H
#define CAPGATE_PIPELINE_H
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include "capgate/validate.h"
#include "config.h"
#include "idem.h"
#include "limit.h"
#include "record.h"
#include "shared_config.h"

struct audit;
struct config;
struct config_app;
struct config_upstream;
struct event_base;
struct httpd_req;
struct metrics;
struct nonce_cache;
struct params;
struct pipeline_ctx;
struct pool;
struct stats_worker;
struct store;
struct upstream;

/* A worker's environment, owned by the gateway (one per worker thread); everything here is
 * used only on that worker's thread, except nonces (shared, locked inside). */
struct pipeline_worker {
    unsigned id;
    struct event_base *base;
    struct shared_config *config; /* for new requests; the worker's own reference */
    const struct config *boot;    /* the startup config: upstream and listener settings
                                        * (they need a restart), valid for the process life */
    struct upstream *upstream;
    struct upstream *upstream3; /* API 3.0 (upstream.v3_url); NULL: 3.0 calls fail 6200 */
    struct stats_worker *stats;
    struct nonce_cache *nonces;
    struct store *store;          /* rate-limit buckets, the worker's own */
    int store_closing;            /* set before store_free: its "store closed" callbacks
                                        * end their requests instead of retrying locally */
    struct idem_waits idem_waits; /* requests waiting on an Idempotency-Key (idem.h) */
    /* Process-wide sinks, fed at the end of every request (worker id = id); may be NULL. */
    struct audit *audit;
    struct metrics *metrics;
    struct pool *pool; /* prefetch pool counters (pool.h); NULL: no pool stage */
    const struct config_audit *audit_config; /* pii settings of the sink (the boot config) */
    const char *instance;                    /* the audit records' "instance" */
    uint64_t rng[4];                         /* xoshiro256**, seeded from the CSPRNG */
    size_t live;                             /* request contexts not yet released */
    /* Released contexts kept for new requests (at most PIPELINE_FREE_CTX_MAX): a context is
     * 5.7 KB, past malloc's fast bins, and each such malloc consolidates them. */
    struct pipeline_ctx *free_ctx;
    size_t n_free_ctx;
    /* Called (if set) each time a context is released, after live was decremented. */
    void (*on_release)(struct pipeline_worker *w);
};

#define PIPELINE_FREE_CTX_MAX 256

/* Frees the worker's kept contexts, once no request of w is live (after its httpd, store and
 * upstream are freed). */
void pipeline_worker_cleanup(struct pipeline_worker *w);

/* Seeds w->rng from OpenSSL's CSPRNG. 0/-1. */
int pipeline_worker_seed(struct pipeline_worker *w);
uint64_t pipeline_random(struct pipeline_worker *w);

/* The httpd handler of the front listener; arg is the struct pipeline_worker. */
void pipeline_handle(struct httpd_req *req, void *arg);

/* ---- pure decisions ---- */

/* The HTTP status of a gateway reply with API code. compat (semantic 0): always 200. semantic:
 * framing_status when non-zero (413, 414, 431, 408, ...); 0 → 200, 4000 → 400, 4100-4199 → 401,
 * 4300 → 403, 4400 → 429, 4500 → 401, 4600 → 403, 5000 → 404, 6200 → 502 (504 when
 * timed_out), other 5xxx/6xxx → 500. */
int pipeline_http_status(int code, int semantic, int timed_out, int framing_status);

/* May app call this Action with these fields? 0, or -1 with err naming what was refused
 * (the reply is then 4300 AccessDenied). */
int pipeline_authorize(const struct config_app *app, const struct v2_fields *f, char *err,
                       size_t errlen);

/* 1 for CaptchaQuery with script=1: its documented reply is JavaScript, not JSON, so a 2xx
 * non-JSON reply is passed through (UPSTREAM_RAW_OK) instead of being an upstream error. */
int pipeline_reply_may_be_script(const struct v2_fields *f);
/* The limit stage's reading of a store outcome o over the request's n buckets b:
 *  - PIPELINE_LIMITED: an enforcing bucket refused; rule gets its rule's name and msg the 4400
 *    reply's message "rate limit <rule> exceeded; retry in N s" (N as in Retry-After);
 *  - PIPELINE_SHADOW_LIMITED: admitted, but a shadow bucket would have refused; rule names it;
 *  - PIPELINE_FORWARDED: admitted; rule "".
 * msg is "" unless refused. */
enum pipeline_decision pipeline_limit_verdict(const struct limit_bucket *b, size_t n,
                                              const struct limit_outcome *o, char *rule,
                                              size_t rulelen, char *msg, size_t msglen);

/* What the limit stage does when the store failed (err from store_limit). */
enum pipeline_store_fallback {
    PIPELINE_STORE_LOCAL, /* ask the in-process buckets (store_limit_local) */
    PIPELINE_STORE_ALLOW, /* continue unlimited */
    PIPELINE_STORE_DENY   /* answer 6200 "rate-limit store unavailable: <err>" */
};
/* policy is the config's on_store_error; local_tried: the local buckets were already asked
 * (and failed too); closing: the store is being freed (no new call may start). */
enum pipeline_store_fallback pipeline_store_fallback(enum config_store_error policy,
                                                     int local_tried, int closing);

/* The rate-limit headers of a reply, names in the order they are sent; values owned. */
#define PIPELINE_LIMIT_HEADERS_MAX 3
struct pipeline_limit_headers {
    size_t count;
    const char *name[PIPELINE_LIMIT_HEADERS_MAX]; /* static strings */
    char *value[PIPELINE_LIMIT_HEADERS_MAX];
};
/* Fills h (initialised by the call) from limit_headers: RateLimit-Policy and RateLimit for the
 * enforcing buckets, Retry-After when o refused the request; o NULL (the store failed and the
 * request is let through) gives RateLimit-Policy only. Empty values are left out. 0, or -1 on
 * OOM (h then empty). The caller cleans up with pipeline_limit_headers_cleanup (also on
 * failure). */
int pipeline_limit_headers_init(struct pipeline_limit_headers *h, const struct limit_bucket *b,
                                size_t n, const struct limit_outcome *o);
void pipeline_limit_headers_cleanup(struct pipeline_limit_headers *h);

#endif
