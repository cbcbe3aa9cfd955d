/* pool.c: the prefetch pool: which requests it serves, the counters behind /metrics and
 * /admin/stats, the lookup on the request path, and the one background refiller per process.
 * URLs live only in the store (store_pool_*); this module keeps no URL itself, so a URL is handed
 * out by exactly one store pop whatever the number of workers and instances. */
#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include <event2/event.h>

#include "capgate/clock.h"
#include "capgate/log.h"
#include "capgate/params.h"
#include "capgate/rng.h"
#include "capgate/strbuf.h"
#include "capgate/validate.h"
#include "limit.h"
#include "shared_config.h"
#include "store.h"
#include "upstream.h"

#define POOL_DEFAULT_PREFIX "capgate:" /* as the limit keys without a redis section */

/* ---- pure ---- */

int pool_profile_id(const struct config_pool_profile *pr, char *out, size_t cap) {
    char b[16] = "-", s[16] = "-";
    int n;
    if (pr->has_business_id) snprintf(b, sizeof b, "%u", (unsigned)pr->business_id);
    if (pr->has_scene_id) snprintf(s, sizeof s, "%u", (unsigned)pr->scene_id);
    n = snprintf(out, cap, "ct%u-dl%u-h%u-cl%u-ac%u-b%s-s%s", (unsigned)pr->captcha_type,
                 (unsigned)pr->disturb_level, (unsigned)pr->is_https, (unsigned)pr->client_type,
                 (unsigned)pr->account_type, b, s);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

int pool_key(const char *prefix, const struct config_pool_profile *pr, char *out, size_t cap) {
    char id[POOL_ID_MAX];
    int n;
    if (pool_profile_id(pr, id, sizeof id) != 0) return -1;
    n = snprintf(out, cap, "%spool:%s", prefix ? prefix : "", id);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

/* Parameters a pooled request may carry besides the public ones and the profile's ids. */
static const char *const pool_allowed_params[] = {
    "Action",  V2_REQUEST_CLIENT, "captchaType", "disturbLevel",
    "isHttps", "clientType",      "accountType", NULL,
};

static int pool_param_allowed(const char *name, const struct config_pool_profile *pr) {
    if (validate_is_public(name)) return 1;
    for (size_t i = 0; pool_allowed_params[i]; i++)
        if (strcmp(name, pool_allowed_params[i]) == 0) return 1;
    if (pr->has_business_id && strcmp(name, "businessId") == 0) return 1;
    if (pr->has_scene_id && strcmp(name, "sceneId") == 0) return 1;
    return 0;
}

static int pool_profile_equal(const struct config_pool_profile *pr, const struct v2_fields *f) {
    return f->has_captcha_type && f->captcha_type == pr->captcha_type && f->has_disturb_level &&
           f->disturb_level == pr->disturb_level && f->has_is_https &&
           f->is_https == pr->is_https && f->has_client_type && f->client_type == pr->client_type &&
           f->has_account_type && f->account_type == pr->account_type &&
           (int)f->has_business_id == pr->has_business_id &&
           (!pr->has_business_id || f->business_id == pr->business_id) &&
           (int)f->has_scene_id == pr->has_scene_id &&
           (!pr->has_scene_id || f->scene_id == pr->scene_id);
}

const struct config_pool_profile *pool_match(const struct config_pool *cfg,
                                             const struct v2_fields *f, const struct params *p) {
    const struct config_pool_profile *pr = NULL;
    if (!cfg || !cfg->n_profiles || f->action != V2_ACTION_CAPTCHA_IFRAME_QUERY) return NULL;
    for (size_t i = 0; validate_user_fields[i]; i++)
        if (params_get(p, validate_user_fields[i])) return NULL;
    for (size_t i = 0; i < cfg->n_profiles && !pr; i++)
        if (pool_profile_equal(&cfg->profiles[i], f)) pr = &cfg->profiles[i];
    if (!pr) return NULL;
    for (size_t i = 0; i < p->count; i++)
        if (!pool_param_allowed(p->items[i].name, pr)) return NULL;
    return pr;
}

char *pool_hit_body(const char *url) {
    json_t *j = json_pack("{s:i, s:s, s:s, s:s}", "code", 0, "codeDesc", "Success", "message",
                          "No Error", "url", url);
    char *out = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    return out;
}

/* ---- process-wide state ---- */

struct pool_depth {
    char id[POOL_ID_MAX];
    size_t depth;
    uint64_t hits, misses; /* this profile's lookups, so a hit ratio can be told per profile */
};

struct pool {
    atomic_uint_fast64_t hits, misses, discarded;
    pthread_mutex_t lock; /* depths */
    struct pool_depth *depths;
    size_t n_depths;
};

struct pool *pool_new(void) {
    struct pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    atomic_init(&p->hits, 0);
    atomic_init(&p->misses, 0);
    atomic_init(&p->discarded, 0);
    pthread_mutex_init(&p->lock, NULL);
    return p;
}

void pool_free(struct pool *p) {
    if (!p) return;
    pthread_mutex_destroy(&p->lock);
    free(p->depths);
    free(p);
}

void pool_get_totals(const struct pool *p, struct pool_totals *out) {
    struct pool *m = (struct pool *)p; /* atomics are read-only here */
    out->hits = atomic_load_explicit(&m->hits, memory_order_relaxed);
    out->misses = atomic_load_explicit(&m->misses, memory_order_relaxed);
    out->discarded_expired = atomic_load_explicit(&m->discarded, memory_order_relaxed);
}

double pool_hit_ratio(const struct pool_totals *t) {
    uint64_t n = t->hits + t->misses;
    return n ? (double)t->hits / (double)n : 0.0;
}

/* The profiles of the running config, keeping the depths already known. On OOM the old list
 * stays. */
static void pool_set_profiles(struct pool *p, const struct config_pool *cfg) {
    struct pool_depth *d = calloc(cfg->n_profiles ? cfg->n_profiles : 1, sizeof *d);
    if (!d) return;
    pthread_mutex_lock(&p->lock);
    for (size_t i = 0; i < cfg->n_profiles; i++) {
        pool_profile_id(&cfg->profiles[i], d[i].id, sizeof d[i].id);
        for (size_t j = 0; j < p->n_depths; j++)
            if (strcmp(p->depths[j].id, d[i].id) == 0) d[i] = p->depths[j];
    }
    free(p->depths);
    p->depths = d;
    p->n_depths = cfg->n_profiles;
    pthread_mutex_unlock(&p->lock);
}

/* One lookup of profile id, a hit or a miss. */
static void pool_note_lookup(struct pool *p, const char *id, int hit) {
    pthread_mutex_lock(&p->lock);
    for (size_t i = 0; i < p->n_depths; i++) {
        if (strcmp(p->depths[i].id, id) != 0) continue;
        if (hit)
            p->depths[i].hits++;
        else
            p->depths[i].misses++;
    }
    pthread_mutex_unlock(&p->lock);
}

/* delta 0: set to depth; else add delta (at least 0). */
static void pool_note_depth(struct pool *p, const char *id, size_t depth, int delta) {
    pthread_mutex_lock(&p->lock);
    for (size_t i = 0; i < p->n_depths; i++) {
        if (strcmp(p->depths[i].id, id) != 0) continue;
        if (!delta)
            p->depths[i].depth = depth;
        else if (delta > 0)
            p->depths[i].depth += (size_t)delta;
        else if (p->depths[i].depth >= (size_t)-delta)
            p->depths[i].depth -= (size_t)-delta;
        else
            p->depths[i].depth = 0;
    }
    pthread_mutex_unlock(&p->lock);
}

int pool_render_metrics(const struct pool *p, struct strbuf *out) {
    struct pool *m = (struct pool *)p;
    struct pool_totals t;
    int rc = 0;
    pool_get_totals(p, &t);
    rc |= strbuf_appendf(out,
                         "# HELP capgate_pool_hits_total Requests served a pooled captcha URL.\n"
                         "# TYPE capgate_pool_hits_total counter\n"
                         "capgate_pool_hits_total %llu\n"
                         "# HELP capgate_pool_misses_total Pool lookups that found no fresh URL "
                         "(the request went upstream).\n"
                         "# TYPE capgate_pool_misses_total counter\n"
                         "capgate_pool_misses_total %llu\n"
                         "# HELP capgate_pool_discarded_expired_total Pooled URLs dropped "
                         "unserved after pool.ttl_s.\n"
                         "# TYPE capgate_pool_discarded_expired_total counter\n"
                         "capgate_pool_discarded_expired_total %llu\n"
                         "# HELP capgate_pool_depth Fresh URLs ready per profile, as last seen.\n"
                         "# TYPE capgate_pool_depth gauge\n",
                         (unsigned long long)t.hits, (unsigned long long)t.misses,
                         (unsigned long long)t.discarded_expired);
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->n_depths; i++)
        rc |= strbuf_appendf(out, "capgate_pool_depth{profile=\"%s\"} %zu\n", m->depths[i].id,
                             m->depths[i].depth);
    rc |= strbuf_appends(out, "# HELP capgate_pool_profile_hits_total Pool lookups of a profile "
                              "served a pooled URL.\n"
                              "# TYPE capgate_pool_profile_hits_total counter\n");
    for (size_t i = 0; i < m->n_depths; i++)
        rc |= strbuf_appendf(out, "capgate_pool_profile_hits_total{profile=\"%s\"} %llu\n",
                             m->depths[i].id, (unsigned long long)m->depths[i].hits);
    rc |= strbuf_appends(out, "# HELP capgate_pool_profile_misses_total Pool lookups of a "
                              "profile that found no fresh URL.\n"
                              "# TYPE capgate_pool_profile_misses_total counter\n");
    for (size_t i = 0; i < m->n_depths; i++)
        rc |= strbuf_appendf(out, "capgate_pool_profile_misses_total{profile=\"%s\"} %llu\n",
                             m->depths[i].id, (unsigned long long)m->depths[i].misses);
    pthread_mutex_unlock(&m->lock);
    return rc ? -1 : 0;
}

int pool_render_json(const struct pool *p, struct strbuf *out) {
    struct pool *m = (struct pool *)p;
    struct pool_totals t;
    int rc = 0;
    pool_get_totals(p, &t);
    rc |= strbuf_appendf(out,
                         "{\"hits\":%llu,\"misses\":%llu,\"hit_ratio\":%.6f,"
                         "\"discarded_expired\":%llu,\"depth\":{",
                         (unsigned long long)t.hits, (unsigned long long)t.misses,
                         pool_hit_ratio(&t), (unsigned long long)t.discarded_expired);
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->n_depths; i++)
        rc |=
            strbuf_appendf(out, "%s\"%s\":%zu", i ? "," : "", m->depths[i].id, m->depths[i].depth);
    rc |= strbuf_appends(out, "},\"profiles\":{");
    for (size_t i = 0; i < m->n_depths; i++) {
        const struct pool_depth *d = &m->depths[i];
        struct pool_totals pt = {.hits = d->hits, .misses = d->misses};
        rc |= strbuf_appendf(out,
                             "%s\"%s\":{\"depth\":%zu,\"hits\":%llu,\"misses\":%llu,"
                             "\"hit_ratio\":%.6f}",
                             i ? "," : "", d->id, d->depth, (unsigned long long)d->hits,
                             (unsigned long long)d->misses, pool_hit_ratio(&pt));
    }
    pthread_mutex_unlock(&m->lock);
    rc |= strbuf_appends(out, "}}");
    return rc ? -1 : 0;
}

/* ---- the request path ---- */

struct pool_take {
    struct pool *pool;
    pool_take_fn cb;
    void *arg;
    char id[POOL_ID_MAX];
};

static void pool_take_done(const char *err, const struct store_pool_result *r, void *arg) {
    struct pool_take *t = arg;
    struct pool *p = t->pool;
    const char *url = NULL;
    if (err) {
        log_debug("pool %s: store failed (%s); the request goes upstream", t->id, err);
    } else {
        if (r->discarded)
            atomic_fetch_add_explicit(&p->discarded, r->discarded, memory_order_relaxed);
        url = r->url;
    }
    if (url) {
        atomic_fetch_add_explicit(&p->hits, 1, memory_order_relaxed);
        pool_note_depth(p, t->id, 0, -1);
    } else {
        atomic_fetch_add_explicit(&p->misses, 1, memory_order_relaxed);
        if (!err) pool_note_depth(p, t->id, 0, 0);
    }
    pool_note_lookup(p, t->id, url != NULL);
    t->cb(url, t->arg);
    free(t);
}

int pool_take(struct pool *p, struct store *s, const char *key_prefix, unsigned ttl_s,
              const struct config_pool_profile *pr, pool_take_fn cb, void *arg) {
    char key[POOL_KEY_MAX];
    struct pool_take *t = calloc(1, sizeof *t);
    if (!t) return -1;
    if (pool_key(key_prefix, pr, key, sizeof key) != 0 ||
        pool_profile_id(pr, t->id, sizeof t->id) != 0) {
        free(t);
        return -1;
    }
    t->pool = p;
    t->cb = cb;
    t->arg = arg;
    store_pool_pop(s, key, ttl_s * 1000u, pool_take_done, t);
    return 0;
}

/* ---- the refiller ---- */

enum pool_refiller_state { POOL_IDLE, POOL_FILLING, POOL_BACKING_OFF };
static const char *const pool_refiller_state_names[] = {"idle", "filling", "backing off"};

struct pool_refiller {
    struct pool *pool;
    struct pool_refiller_env env; /* a copy; what it points to is borrowed */
    const char *prefix;           /* borrowed from the boot config */
    enum pool_refiller_state state;
    struct event *tick;
    int stopped;
    unsigned backoff_ms;         /* the next pause */
    uint64_t backoff_until_us;   /* monotonic */
    struct shared_config *round; /* the config of the running round, a reference */
    unsigned pending;            /* depth reads and fetches of the round not yet ended */
    unsigned fetching;           /* fetches in flight */
    char last_err[200];
};

/* One profile in a round: its depth read, then its fetches. */
struct pool_fill {
    struct pool_refiller *r;
    const struct config_pool_profile *pr; /* borrowed from r->round */
    char id[POOL_ID_MAX];
    char key[POOL_KEY_MAX];
    unsigned ttl_ms;
    size_t want; /* fetches still to start */
    struct limit_bucket buckets[LIMIT_MAX_BUCKETS];
    size_t n_buckets;
};

static void pool_refiller_set_state(struct pool_refiller *r, enum pool_refiller_state to) {
    if (r->state == to) return;
    if (to == POOL_BACKING_OFF)
        log_warn("pool refiller: upstream failed (%s); backing off %u ms", r->last_err,
                 r->backoff_ms);
    else if (r->state == POOL_BACKING_OFF)
        log_info("pool refiller: %s → %s", pool_refiller_state_names[r->state],
                 pool_refiller_state_names[to]);
    else
        log_debug("pool refiller: %s → %s", pool_refiller_state_names[r->state],
                  pool_refiller_state_names[to]);
    r->state = to;
}

/* One piece of the round ended; the last one ends the round. */
static void pool_round_step_done(struct pool_refiller *r) {
    if (--r->pending) return;
    shared_config_unref(r->round);
    r->round = NULL;
    if (r->state == POOL_FILLING) pool_refiller_set_state(r, POOL_IDLE);
}

static void pool_fill_start(struct pool_fill *f);

static void pool_fill_end(struct pool_fill *f) {
    struct pool_refiller *r = f->r;
    free(f);
    pool_round_step_done(r);
}

static void pool_fetch_failed(struct pool_refiller *r, const char *why) {
    if (r->stopped) return;
    snprintf(r->last_err, sizeof r->last_err, "%s", why);
    if (r->state != POOL_BACKING_OFF) {
        pool_refiller_set_state(r, POOL_BACKING_OFF);
        r->backoff_until_us = clock_mono_us() + (uint64_t)r->backoff_ms * 1000;
        r->backoff_ms =
            r->backoff_ms * 2 > POOL_BACKOFF_MAX_MS ? POOL_BACKOFF_MAX_MS : r->backoff_ms * 2;
    }
}

static void pool_pushed(const char *err, const struct store_pool_result *res, void *arg) {
    struct pool_fill *f = arg;
    struct pool_refiller *r = f->r;
    r->fetching--;
    if (err)
        log_debug("pool %s: url not stored: %s", f->id, err);
    else
        pool_note_depth(r->pool, f->id, res->depth, 0);
    pool_fill_start(f);
}

/* The url of a code 0 reply (taken from the upstream client's scan), or NULL with why set. */
static char *pool_reply_url(const struct upstream_result *u, char *why, size_t whylen) {
    struct reply_fields *f = u->fields;
    char *out;
    if (!u->ok || !f) {
        snprintf(why, whylen, "%s", u->error ? u->error : "upstream call failed");
        return NULL;
    }
    if (!f->has_code) {
        snprintf(why, whylen, "upstream reply has no code");
        return NULL;
    }
    if (f->code != 0) {
        snprintf(why, whylen, "upstream answered code %lld", f->code);
        return NULL;
    }
    if (!f->url) {
        snprintf(why, whylen, "upstream answered code 0 without a url");
        return NULL;
    }
    out = f->url;
    f->url = NULL;
    return out;
}

static void pool_fetched(const struct upstream_result *u, void *arg) {
    struct pool_fill *f = arg;
    struct pool_refiller *r = f->r;
    char why[200] = "";
    char *url = pool_reply_url(u, why, sizeof why);
    if (!url || r->stopped) {
        r->fetching--;
        if (!url) pool_fetch_failed(r, why);
        free(url);
        f->want = 0;
        pool_fill_end(f);
        return;
    }
    if (r->state == POOL_BACKING_OFF) {
        r->backoff_ms = POOL_BACKOFF_MIN_MS;
        pool_refiller_set_state(r, POOL_FILLING);
    }
    r->backoff_ms = POOL_BACKOFF_MIN_MS;
    store_pool_push(r->env.store, f->key, url, f->pr->size ? f->pr->size : 1, f->ttl_ms,
                    pool_pushed, f);
    free(url);
}

/* One attempt's CaptchaIframeQuery with exactly the profile's parameters, freshly signed (a
 * retry gets a new Nonce). NULL on OOM. */
static char *pool_fetch_sign(void *arg) {
    struct pool_fill *f = arg;
    struct pool_refiller *r = f->r;
    const struct config_upstream *up = &r->env.boot->upstream;
    const struct config_pool_profile *pr = f->pr;
    struct params in, out;
    char num[16], *encoded = NULL;
    params_init(&in);
    params_init(&out);
    if (params_adds(&in, "Action", "CaptchaIframeQuery") != 0) goto out;
#define POOL_ADD_UINT(name, v) \
    do { \
        snprintf(num, sizeof num, "%u", (unsigned)(v)); \
        if (params_adds(&in, name, num) != 0) goto out; \
    } while (0)
    POOL_ADD_UINT("captchaType", pr->captcha_type);
    POOL_ADD_UINT("disturbLevel", pr->disturb_level);
    POOL_ADD_UINT("isHttps", pr->is_https);
    POOL_ADD_UINT("clientType", pr->client_type);
    POOL_ADD_UINT("accountType", pr->account_type);
    if (pr->has_business_id) POOL_ADD_UINT("businessId", pr->business_id);
    if (pr->has_scene_id) POOL_ADD_UINT("sceneId", pr->scene_id);
#undef POOL_ADD_UINT
    if (upstream_params(&in, up, clock_wall_us() / 1000000, rng_next(r->env.rng), &out) == 0)
        encoded = params_encode(&out);
out:
    params_cleanup(&in);
    params_cleanup(&out);
    return encoded;
}

/* Sends one CaptchaIframeQuery for the profile, signed per attempt. 0/-1. */
static int pool_fetch_send(struct pool_fill *f) {
    const struct config_upstream *up = &f->r->env.boot->upstream;
    return upstream_call_signed(f->r->env.upstream, up->post ? "POST" : "GET", pool_fetch_sign, 0,
                                pool_fetched, f);
}

static void pool_token_done(const char *err, const struct limit_outcome *o, void *arg) {
    struct pool_fill *f = arg;
    struct pool_refiller *r = f->r;
    if (r->stopped || err || !o->allowed) {
        /* no token (or no store): this profile waits for the next tick */
        if (err && !r->stopped) log_debug("pool %s: global limit store failed: %s", f->id, err);
        r->fetching--;
        f->want = 0;
        pool_fill_end(f);
        return;
    }
    if (pool_fetch_send(f) != 0) {
        r->fetching--;
        f->want = 0;
        log_warn("pool %s: the refill call could not be started", f->id);
        pool_fill_end(f);
    }
}

/* Starts the profile's next fetch, one at a time per profile, while there is room; ends the
 * profile's part of the round when nothing is left to start. */
static void pool_fill_start(struct pool_fill *f) {
    struct pool_refiller *r = f->r;
    if (r->stopped || r->state == POOL_BACKING_OFF || !f->want ||
        r->fetching >= POOL_REFILL_CONCURRENCY) {
        pool_fill_end(f);
        return;
    }
    f->want--;
    r->fetching++;
    pool_refiller_set_state(r, POOL_FILLING);
    if (f->n_buckets) {
        store_limit(r->env.store, f->buckets, f->n_buckets, pool_token_done, f);
        return;
    }
    if (pool_fetch_send(f) != 0) {
        r->fetching--;
        log_warn("pool %s: the refill call could not be started", f->id);
        pool_fill_end(f);
    }
}

static void pool_depth_read(const char *err, const struct store_pool_result *res, void *arg) {
    struct pool_fill *f = arg;
    struct pool_refiller *r = f->r;
    if (err || r->stopped) {
        if (err && !r->stopped) log_debug("pool %s: depth not read: %s", f->id, err);
        pool_fill_end(f);
        return;
    }
    if (res->discarded)
        atomic_fetch_add_explicit(&r->pool->discarded, res->discarded, memory_order_relaxed);
    pool_note_depth(r->pool, f->id, res->depth, 0);
    f->want = res->depth < f->pr->size ? f->pr->size - res->depth : 0;
    pool_fill_start(f);
}

/* Global rules only: the buckets limit_buckets gives for no app and no ids, scope global. The
 * count, or -1 when they cannot be built (no refill then: never without the global tokens). */
static int pool_global_buckets(const struct config *cfg, const char *prefix,
                               struct limit_bucket *out) {
    struct limit_bucket all[LIMIT_MAX_BUCKETS];
    int n = limit_buckets(cfg, prefix, "-", 0, 0, 0, 0, all, LIMIT_MAX_BUCKETS), k = 0;
    for (int i = 0; i < n; i++)
        if (all[i].rule && all[i].rule->scope == CONFIG_SCOPE_GLOBAL) out[k++] = all[i];
    return n < 0 ? -1 : k;
}

static void pool_refiller_tick(evutil_socket_t fd, short what, void *arg) {
    struct pool_refiller *r = arg;
    const struct config *cfg;
    int nb;
    if (r->stopped || r->round) return;
    pool_set_profiles(r->pool, &(*r->env.config)->config->pool);
    if (r->state == POOL_BACKING_OFF) {
        if (clock_mono_us() < r->backoff_until_us) return;
        pool_refiller_set_state(r, POOL_IDLE);
    }
    cfg = (*r->env.config)->config;
    if (!cfg->pool.n_profiles || *r->env.store_closing) return;
    r->round = shared_config_ref(*r->env.config);
    r->pending = 1; /* this function's own step, ended below */
    for (size_t i = 0; i < cfg->pool.n_profiles; i++) {
        struct pool_fill *f = calloc(1, sizeof *f);
        if (!f) break;
        f->r = r;
        f->pr = &cfg->pool.profiles[i];
        f->ttl_ms = cfg->pool.ttl_s * 1000u;
        if (pool_profile_id(f->pr, f->id, sizeof f->id) != 0 ||
            pool_key(r->prefix, f->pr, f->key, sizeof f->key) != 0 ||
            (nb = pool_global_buckets(cfg, r->prefix, f->buckets)) < 0) {
            free(f);
            continue;
        }
        f->n_buckets = (size_t)nb;
        r->pending++;
        store_pool_depth(r->env.store, f->key, f->ttl_ms, pool_depth_read, f);
    }
    pool_round_step_done(r);
}

struct pool_refiller *pool_refiller_new(struct pool *p, const struct pool_refiller_env *env,
                                        char *err, size_t errlen) {
    struct pool_refiller *r = calloc(1, sizeof *r);
    const struct config *boot = env->boot;
    struct timeval tv = {0, POOL_REFILL_TICK_MS * 1000};
    if (!r) goto oom;
    r->pool = p;
    r->env = *env;
    r->prefix =
        boot->redis && boot->redis->key_prefix ? boot->redis->key_prefix : POOL_DEFAULT_PREFIX;
    r->state = POOL_IDLE;
    r->backoff_ms = POOL_BACKOFF_MIN_MS;
    if (!(r->tick = event_new(env->base, -1, EV_PERSIST, pool_refiller_tick, r))) goto oom;
    event_add(r->tick, &tv);
    pool_set_profiles(p, &(*env->config)->config->pool);
    return r;
oom:
    snprintf(err, errlen, "pool refiller: out of memory");
    pool_refiller_free(r);
    return NULL;
}

void pool_refiller_stop(struct pool_refiller *r) {
    if (!r) return;
    r->stopped = 1;
    if (r->tick) event_del(r->tick);
}

void pool_refiller_free(struct pool_refiller *r) {
    if (!r) return;
    if (r->pending) log_warn("pool refiller: freed with %u step(s) unanswered", r->pending);
    if (r->tick) event_free(r->tick);
    shared_config_unref(r->round);
    free(r);
}
