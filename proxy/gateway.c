/* gateway.c: process lifecycle. The main thread owns the signals, the admin listener and the
 * current config; each worker thread owns an event base, a front httpd, an upstream pool and a
 * rate-limit store, and shares nothing on the request path but the nonce cache and the store's
 * process-wide part (made once at start, so counters survive reloads). The main thread talks to a worker
 * only through its mailbox (a mutex-protected slot plus event_active on the worker's base): a
 * new config after SIGHUP, or the order to drain. SIGUSR1 (and SIGHUP too) has the audit sink
 * reopen its file after a log rotation. */
#include "gateway.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <event2/event.h>

#include "admin.h"
#include "audit.h"
#include "capgate/alloc.h"
#include "capgate/clock.h"
#include "capgate/httpd.h"
#include "capgate/log.h"
#include "capgate/sdnotify.h"
#include "capgate/thread.h"
#include "capgate/tls.h"
#include "config.h"
#include "demo.h"
#include "idem.h"
#include "minute_stats.h"
#include "nonce.h"
#include "pipeline.h"
#include "pool.h"
#include "prometheus.h"
#include "redis_conn.h"
#include "store.h"
#include "upstream.h"

#define GATEWAY_NONCE_MAX 1000000 /* replay cache entries, all SecretIds together */
/* A stripe's table doubles (a rehash of all its entries, on the request that fills it to half)
 * as the cache fills. With 64 stripes of up to 15,625 entries each doubling held the worker's
 * loop for 0.1-0.5 ms, 64 of them close together around 131k, 262k and 524k entries: enough for
 * the p99 of a constant-rate run that crosses one (the bench's wrk runs leave 300-400k). With
 * 1024 stripes (up to 976 entries) a doubling costs about 0.1 ms at most, and the stripes about
 * 0.9 MB. */
#define GATEWAY_NONCE_STRIPES 1024
#define GATEWAY_TICK_MS 200 /* publishing of worker gauges, drain checks */

struct gateway;

struct gateway_worker {
    struct gateway *g;
    struct pipeline_worker pw;
    struct httpd *httpd;
    struct event *wake; /* activated by the main thread: look at the mailbox */
    struct event *tick;
    pthread_t thread;
    int started;
    struct pool_refiller *refiller; /* worker 0 only: the process's one prefetch refiller */
    /* mailbox, under lock */
    pthread_mutex_t lock;
    struct shared_config *pending;
    int stop;
    /* worker thread only */
    int draining;
    uint64_t drain_deadline_us;
};

struct gateway {
    char *path;
    struct shared_config *current; /* the latest good config (main thread) */
    struct shared_config *boot;    /* the startup config: listeners, workers, upstream */
    struct event_base *base;
    struct event *sig_term, *sig_int, *sig_hup, *sig_usr1, *workers_done;
    SSL_CTX *ssl_ctx;
    struct tls_server *front_tls; /* the HTTPS front's certificate; NULL without tls_listen */
    struct breaker breaker;       /* one for the process: upstream is one service */
    struct breaker breaker3;      /* the API 3.0 upstream's (another host, another service) */
    struct nonce_cache *nonces;
    struct store_shared *store_shared; /* lives as long as the process: counters survive SIGHUP */
    struct metrics *metrics; /* per-(businessId, sceneId, minute) counters, one flush thread */
    struct pool *pool;       /* prefetch pool counters; URLs live in the store */
    struct audit *audit;     /* one record per request, one sink thread; reads boot */
    struct gateway_worker *workers;
    unsigned n_workers;
    unsigned n_started; /* worker threads running (a prefix of workers) */
    struct stats_worker **stats;
    struct stats_process process;
    struct admin *admin;
    struct demo *demo;               /* the admin listener's /demo page */
    struct httpd_budget connections; /* http.max_connections, counted over all workers */
    int draining;
    atomic_uint finished;
};

static void gateway_warn(const char *msg, void *arg) {
    log_warn("config: %s", msg);
}

/* "host:port", with brackets around an IPv6 host. */
static void gateway_host_port(char *out, size_t cap, const char *host, int port) {
    if (strchr(host, ':'))
        snprintf(out, cap, "[%s]:%d", host, port);
    else
        snprintf(out, cap, "%s:%d", host, port);
}

/* ---- worker thread ---- */

static struct gateway_worker *worker_of(struct pipeline_worker *pw) {
    return (struct gateway_worker *)((char *)pw - offsetof(struct gateway_worker, pw));
}

static void worker_publish(struct gateway_worker *w) {
    struct upstream_stats us;
    struct store_stats ss;
    upstream_get_stats(w->pw.upstream, &us);
    if (w->pw.upstream3) {
        /* the 3.0 upstream's calls and connections count in the same families; its breaker
         * has its own series (api="v3") */
        struct upstream_stats us3;
        upstream_get_stats(w->pw.upstream3, &us3);
        for (int i = 0; i < UPSTREAM_LATENCY_BUCKETS; i++)
            us.latency_buckets[i] += us3.latency_buckets[i];
        us.latency_sum_us += us3.latency_sum_us;
        us.latency_count += us3.latency_count;
        us.open_connections += us3.open_connections;
        us.idle_connections += us3.idle_connections;
        stats_set_upstream3_breaker(w->pw.stats, us3.breaker);
        stats_set_upstream_addresses(w->pw.stats, 1, &us3);
    }
    stats_set_upstream_addresses(w->pw.stats, 0, &us);
    stats_set_upstream(w->pw.stats, &us);
    store_get_stats(w->pw.store, &ss);
    stats_set_store(w->pw.stats, store_connected(w->pw.store), ss.commands, ss.errors, ss.timeouts,
                    ss.reconnects);
    stats_set_store_fast_fails(w->pw.stats, ss.fast_fails);
    stats_set_connections(w->pw.stats, httpd_connections(w->httpd));
}

static void worker_check_drain(struct gateway_worker *w) {
    if (!w->draining) return;
    /* Connections too: a reply just handed to httpd may still be in its output buffer. */
    int idle = w->pw.live == 0 && httpd_inflight(w->httpd) == 0 && httpd_connections(w->httpd) == 0;
    if (idle || clock_mono_us() >= w->drain_deadline_us) {
        if (!idle)
            log_warn("worker %u: drain deadline reached with %zu request(s) in flight", w->pw.id,
                     w->pw.live);
        event_base_loopexit(w->pw.base, NULL);
    }
}

static void worker_on_release(struct pipeline_worker *pw) {
    struct gateway_worker *w = worker_of(pw);
    worker_publish(w);
    worker_check_drain(w);
}

static void worker_tick(evutil_socket_t fd, short what, void *arg) {
    struct gateway_worker *w = arg;
    worker_publish(w);
    worker_check_drain(w);
}

static void worker_wake(evutil_socket_t fd, short what, void *arg) {
    struct gateway_worker *w = arg;
    struct shared_config *fresh;
    int stop;

    pthread_mutex_lock(&w->lock);
    fresh = w->pending;
    w->pending = NULL;
    stop = w->stop;
    pthread_mutex_unlock(&w->lock);

    if (fresh) {
        /* Requests in flight hold their own reference to the old config. */
        shared_config_unref(w->pw.config);
        w->pw.config = fresh;
        log_debug("worker %u: new config in use for new requests", w->pw.id);
    }
    if (stop && !w->draining) {
        const struct config *boot = w->pw.boot;
        w->draining = 1;
        w->drain_deadline_us =
            clock_mono_us() + (uint64_t)boot->upstream.timeout_ms * 1000 + 1000000;
        httpd_stop_accepting(w->httpd);
        pool_refiller_stop(w->refiller);
        log_debug("worker %u: draining %zu request(s)", w->pw.id, w->pw.live);
        worker_check_drain(w);
    }
}

static void *worker_main(void *arg) {
    struct gateway_worker *w = arg;
    struct gateway *g = w->g;
    char name[16];
    snprintf(name, sizeof(name), "capgate-w%u", (unsigned)(w - g->workers));
    thread_name(name);
    event_base_loop(w->pw.base, EVLOOP_NO_EXIT_ON_EMPTY);
    atomic_fetch_add(&g->finished, 1);
    event_active(g->workers_done, EV_READ, 0);
    return NULL;
}

/* Sends the worker a new config (one reference is taken for it) and/or the order to stop. */
static void worker_post(struct gateway_worker *w, struct shared_config *pc, int stop) {
    pthread_mutex_lock(&w->lock);
    if (pc) {
        shared_config_unref(w->pending);
        w->pending = shared_config_ref(pc);
    }
    if (stop) w->stop = 1;
    pthread_mutex_unlock(&w->lock);
    event_active(w->wake, EV_READ, 0);
}

/* A worker's loop. The epoll changelist folds the EV_READ/EV_WRITE toggles made on one descriptor
 * within a loop turn (evhttp's client makes several per upstream call) into one epoll_ctl. Its
 * one hazard, a watched descriptor cloned with dup(), does not occur in capgate. */
static struct event_base *worker_base_new(void) {
    struct event_config *cfg = event_config_new();
    struct event_base *base;
    if (!cfg) return NULL;
    event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    return base;
}

static int worker_init(struct gateway *g, unsigned i, const struct httpd_limits *lim,
                       const struct upstream_options *uo, const struct upstream_options *uo3,
                       char *err, size_t errlen) {
    struct gateway_worker *w = &g->workers[i];
    w->g = g;
    pthread_mutex_init(&w->lock, NULL);
    w->pw.id = i;
    w->pw.boot = g->boot->config;
    w->pw.config = shared_config_ref(g->current);
    w->pw.nonces = g->nonces;
    w->pw.on_release = worker_on_release;
    idem_waits_init(&w->pw.idem_waits);
    if (pipeline_worker_seed(&w->pw) != 0) {
        snprintf(err, errlen, "worker %u: no random seed from the CSPRNG", i);
        return -1;
    }
    w->pw.stats = g->stats[i];
    w->pw.metrics = g->metrics;
    w->pw.pool = g->pool;
    w->pw.audit = g->audit;
    w->pw.audit_config = &g->boot->config->audit;
    w->pw.instance = g->boot->config->instance ? g->boot->config->instance : "";
    w->pw.base = worker_base_new();
    if (!w->pw.base) goto oom;
    if (pipeline_worker_commit_init(&w->pw) != 0) goto oom;
    w->pw.upstream = upstream_new(w->pw.base, uo, err, errlen);
    if (!w->pw.upstream) return -1;
    w->pw.upstream3 = upstream_new(w->pw.base, uo3, err, errlen);
    if (!w->pw.upstream3) return -1;
    /* A Redis that is down now is no reason not to start: the store connects in the
     * background and requests are served per on_store_error meanwhile. */
    w->pw.store = store_new(g->store_shared, w->pw.base, err, errlen);
    if (!w->pw.store) return -1;
    if (i == 0) {
        struct pool_refiller_env env = {
            .base = w->pw.base,
            .store = w->pw.store,
            .store_closing = &w->pw.store_closing,
            .upstream = w->pw.upstream,
            .boot = w->pw.boot,
            .config = &w->pw.config,
            .rng = w->pw.rng,
        };
        if (!(w->refiller = pool_refiller_new(g->pool, &env, err, errlen))) return -1;
    }
    w->httpd = httpd_new(w->pw.base, lim, pipeline_handle, &w->pw);
    w->wake = event_new(w->pw.base, -1, 0, worker_wake, w);
    w->tick = event_new(w->pw.base, -1, EV_PERSIST, worker_tick, w);
    if (!w->httpd || !w->wake || !w->tick) goto oom;
    struct timeval tv = {0, GATEWAY_TICK_MS * 1000};
    event_add(w->tick, &tv);
    return 0;
oom:
    snprintf(err, errlen, "worker %u: out of memory", i);
    return -1;
}

/* After the worker's thread ended (or never started). Pending requests are cancelled by
 * httpd_free; those waiting on an Idempotency-Key between two lookups end with "store closed"
 * in idem_waits_close (their poll timers are on the loop freed last), those waiting on the
 * store end with "store closed" inside store_free (no new store call starts then), those
 * waiting on upstream complete inside upstream_free; either way they are released there. */
static void worker_cleanup(struct gateway_worker *w) {
    size_t n;
    w->pw.on_release = NULL;
    httpd_free(w->httpd);
    w->httpd = NULL;
    pipeline_worker_commit_close(&w->pw);
    w->pw.store_closing = 1;
    pool_refiller_stop(w->refiller);
    n = idem_waits_close(&w->pw.idem_waits);
    if (n) log_debug("worker %u: %zu idempotency waits ended by the shutdown", w->pw.id, n);
    store_free(w->pw.store);
    w->pw.store = NULL;
    upstream_free(w->pw.upstream);
    w->pw.upstream = NULL;
    upstream_free(w->pw.upstream3);
    w->pw.upstream3 = NULL;
    pool_refiller_free(w->refiller); /* its store and upstream callbacks have all fired */
    w->refiller = NULL;
    pipeline_worker_cleanup(&w->pw); /* every request context is released by now */
    if (w->wake) event_free(w->wake);
    if (w->tick) event_free(w->tick);
    shared_config_unref(w->pending);
    shared_config_unref(w->pw.config);
    /* Objects freed above may still be held by callbacks libevent deferred: a bufferevent of an
     * upstream connection whose read or event callback was queued when evhttp freed it, an
     * evdns lookup that evdns_base_free failed. event_base_free cancels such callbacks without
     * running them, and what they hold leaked (as many as the upstream connections that were
     * busy at the stop). One non-blocking turn runs them: their own callbacks were cleared when
     * their owners freed them, so they only release. Nothing of the worker's is registered any
     * more (only libevent's notification event). */
    if (w->pw.base) event_base_loop(w->pw.base, EVLOOP_NONBLOCK);
    if (w->pw.base) event_base_free(w->pw.base);
    if (w->g) pthread_mutex_destroy(&w->lock);
}

/* ---- reload ---- */

static void reload_log_change(const char *path, const char *detail, int applied, void *arg) {
    if (applied)
        log_info("reload: %s %s", path, detail);
    else
        log_warn("reload: %s %s; not applied, it needs a restart", path, detail);
}

struct reload_keys {
    char line[512];
    size_t used;
    const char *last; /* the top-level key added last */
};

/* Collects the top-level keys a reload applies, for the "no change" line. */
static void reload_key(const struct config_key *k, void *arg) {
    struct reload_keys *rk = arg;
    int w;
    if (!k->reload || (rk->last && strcmp(rk->last, k->top) == 0)) return;
    if (rk->last && rk->used < sizeof rk->line) {
        w = snprintf(rk->line + rk->used, sizeof rk->line - rk->used, ", %s", rk->last);
        if (w > 0) rk->used += (size_t)w;
    }
    rk->last = k->top;
}

/* Logs every change a reload applies (compared with the running config) and every change it
 * cannot apply without a restart (compared with the config the process started with, which is
 * what those parts still run on); config.c's tables say which is which. */
static void reload_log_changes(const struct config *old, const struct config *boot,
                               const struct config *c) {
    if (!config_diff(old, c, 1, reload_log_change, NULL)) {
        struct reload_keys rk = {.used = 0};
        config_keys(reload_key, &rk);
        log_info("reload: no change to %s%s%s", rk.used > 2 ? rk.line + 2 : "",
                 rk.used > 2 ? " or " : "", rk.last ? rk.last : "");
    }
    config_diff(boot, c, 0, reload_log_change, NULL);
}

static void gateway_reload(struct gateway *g) {
    struct config *c = NULL;
    enum log_level level;
    char err[1024];
    if (g->draining) {
        log_info("reload ignored: shutting down");
        return;
    }
    if (config_load(g->path, &c, err, sizeof(err)) != 0) {
        log_error("reload refused: %s; keeping the running config", err);
        g->process.reloads_failed++;
        return;
    }
    config_warnings(c, gateway_warn, NULL);
    /* The certificate is read again on every reload (the usual renewal keeps the paths), before
     * anything else is applied: a certificate that does not load refuses the whole reload, and
     * new handshakes keep the old one. */
    if (g->front_tls && c->tls.cert_file &&
        tls_server_reload(g->front_tls, c->tls.cert_file, c->tls.key_file, err, sizeof(err)) != 0) {
        log_error("reload refused: tls: %s; keeping the running config and certificate", err);
        g->process.reloads_failed++;
        config_free(c);
        return;
    }
    if (g->front_tls && c->tls.cert_file)
        log_info("reload: tls certificate %s loaded for new connections", c->tls.cert_file);
    /* the redis connection settings: whether Redis is used at all and its key_prefix stay as
     * at start (reload_log_changes says so) */
    if (c->redis && g->boot->config->redis && redis_conn_publish(c->redis, err, sizeof(err)) != 0) {
        log_error("reload refused: redis: %s; keeping the running config", err);
        g->process.reloads_failed++;
        config_free(c);
        return;
    }
    reload_log_changes(g->current->config, g->boot->config, c);
    struct shared_config *pc = shared_config_new(c);
    if (!pc) {
        log_error("reload refused: out of memory; keeping the running config");
        g->process.reloads_failed++;
        return;
    }
    /* the level first, so the workers' own lines about the new config follow it */
    if (!c->log_level || log_level_parse(c->log_level, &level) != 0) level = LOG_LEVEL_INFO;
    log_set_level(level);
    for (unsigned i = 0; i < g->n_workers; i++) worker_post(&g->workers[i], pc, 0);
    shared_config_unref(g->current);
    g->current = pc;
    demo_configure(g->demo, c);
    g->process.reloads_ok++;
    log_info("reload: config %s applied", g->path);
}

/* ---- main thread ---- */

static void on_signal(evutil_socket_t sig, short what, void *arg) {
    struct gateway *g = arg;
    if (sig == SIGHUP) {
        log_info("SIGHUP: reloading %s", g->path);
        gateway_reload(g);
        /* whether or not the reload took: a logrotate postrotate may send either signal */
        audit_reopen(g->audit);
        return;
    }
    if (sig == SIGUSR1) {
        log_info("SIGUSR1: reopening the audit file");
        audit_reopen(g->audit);
        return;
    }
    if (g->draining) {
        log_info("%s: already draining", sig == SIGINT ? "SIGINT" : "SIGTERM");
        return;
    }
    log_info("%s: draining in-flight requests, then exiting", sig == SIGINT ? "SIGINT" : "SIGTERM");
    g->draining = 1;
    for (unsigned i = 0; i < g->n_workers; i++) worker_post(&g->workers[i], NULL, 1);
}

static void on_workers_done(evutil_socket_t fd, short what, void *arg) {
    struct gateway *g = arg;
    if (atomic_load(&g->finished) >= g->n_started) event_base_loopexit(g->base, NULL);
}

/* /admin/config: the config now running (the last applied reload), masked. */
static char *gateway_dump_config(void *arg) {
    struct gateway *g = arg;
    return config_dump_masked(g->current->config);
}

struct gateway *gateway_new(const char *path, struct config *c, char *err, size_t errlen) {
    struct gateway *g = calloc(1, sizeof(*g));
    struct httpd_limits lim;
    struct upstream_options uo, uo3;
    char hp[300];

    if (!g) {
        config_free(c);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    atomic_init(&g->finished, 0);
    g->path = strdup(path);
    g->current = shared_config_new(c);
    if (!g->path || !g->current) goto oom;
    g->boot = shared_config_ref(g->current);
    c = g->current->config;
    config_warnings(c, gateway_warn, NULL);

    g->base = event_base_new();
    g->nonces = nonce_cache_new(GATEWAY_NONCE_MAX, GATEWAY_NONCE_STRIPES);
    g->n_workers = c->workers ? c->workers : 1;
    g->workers = calloc(g->n_workers, sizeof(*g->workers));
    g->stats = calloc(g->n_workers, sizeof(*g->stats));
    if (!g->base || !g->nonces || !g->workers || !g->stats) goto oom;
    for (unsigned i = 0; i < g->n_workers; i++)
        if (!(g->stats[i] = stats_worker_new(i))) goto oom;
    if (!(g->pool = pool_new())) goto oom;
    g->store_shared = store_shared_new(c, err, errlen);
    if (!g->store_shared) goto fail;
    /* every Redis client connects with the settings published last (SIGHUP publishes anew) */
    if (c->redis && redis_conn_publish(c->redis, err, errlen) != 0) goto fail;
    /* Redis is not contacted here: an unreachable one only delays the flushes. */
    g->metrics = metrics_new(c, g->n_workers, err, errlen);
    if (!g->metrics) goto fail;
    /* Borrows the boot config (kept until gateway_free); a Redis that is down means spooling. */
    g->audit = audit_new(c, g->n_workers, err, errlen);
    if (!g->audit) goto fail;

    if (c->upstream.tls || c->upstream.v3_tls) {
        g->ssl_ctx = tls_client_ctx_new(c->upstream.ca_file, c->upstream.verify_tls, err, errlen);
        if (!g->ssl_ctx) goto fail;
    }
    memset(&uo, 0, sizeof(uo));
    uo.tls = c->upstream.tls;
    uo.host = c->upstream.host;
    uo.port = c->upstream.port;
    uo.path = c->upstream.path;
    uo.sign_host = c->upstream.sign_host;
    uo.ssl_ctx = g->ssl_ctx;
    uo.verify_tls = c->upstream.verify_tls;
    uo.connect_timeout_ms = c->upstream.connect_timeout_ms;
    uo.timeout_ms = c->upstream.timeout_ms;
    uo.retries = c->upstream.retries;
    uo.max_connections = c->upstream.max_connections;
    uo.resolver = c->upstream.resolver;
    uo.resolve_interval_ms = c->upstream.resolve_interval_ms;
    breaker_init(&g->breaker, c->upstream.breaker_failures, c->upstream.breaker_open_ms);
    uo.breaker = &g->breaker;
    /* API 3.0: the same client, credential, TLS settings and timeouts, towards upstream.v3_url */
    uo3 = uo;
    uo3.tls = c->upstream.v3_tls;
    uo3.host = c->upstream.v3_host;
    uo3.port = c->upstream.v3_port;
    uo3.path = c->upstream.v3_path;
    uo3.sign_host = c->upstream.v3_sign_host;
    breaker_init(&g->breaker3, c->upstream.breaker_failures, c->upstream.breaker_open_ms);
    uo3.breaker = &g->breaker3;

    httpd_limits_default(&lim);
    if (c->http.max_uri) lim.max_uri = c->http.max_uri;
    if (c->http.max_header_bytes) lim.max_header_bytes = c->http.max_header_bytes;
    if (c->http.max_headers) lim.max_headers = c->http.max_headers;
    if (c->http.max_body) lim.max_body = c->http.max_body;
    if (c->http.header_timeout_ms) lim.header_timeout_ms = c->http.header_timeout_ms;
    if (c->http.body_timeout_ms) lim.body_timeout_ms = c->http.body_timeout_ms;
    if (c->http.idle_timeout_ms) lim.idle_timeout_ms = c->http.idle_timeout_ms;
    /* Descriptors besides front connections: each worker's upstream connections plus 16 (its
     * Redis connections, event loop, wake-up pipe), the admin listener's connections, and 64
     * for the rest (stdio, listeners, metrics and audit Redis connections, files). */
    size_t reserve = 64 + ADMIN_MAX_CONNECTIONS +
                     (size_t)g->n_workers * ((size_t)c->upstream.max_connections + 16);
    size_t nofile = 0;
    size_t max_conns = c->http.max_connections ? c->http.max_connections
                                               : httpd_default_max_connections(reserve, &nofile);
    httpd_budget_init(&g->connections, max_conns);
    if (c->http.max_connections)
        log_info("http: max_connections %zu", max_conns);
    else
        log_info("http: max_connections %zu (RLIMIT_NOFILE %zu, %zu kept for upstream, Redis and "
                 "files)",
                 max_conns, nofile, nofile - max_conns);

    if (c->tls_listen_host &&
        !(g->front_tls = tls_server_new(c->tls.cert_file, c->tls.key_file, err, errlen)))
        goto fail;
    int port = c->listen_port, tls_port = c->tls_listen_port;
    for (unsigned i = 0; i < g->n_workers; i++) {
        if (worker_init(g, i, &lim, &uo, &uo3, err, errlen) != 0) goto fail;
        httpd_set_budget(g->workers[i].httpd, &g->connections);
        /* Port 0: the first worker picks the port, the others share it. */
        if (c->listen_host) {
            int got = httpd_listen(g->workers[i].httpd, c->listen_host, port, NULL, 1, err, errlen);
            if (got < 0) goto fail;
            port = got;
        }
        if (c->tls_listen_host) {
            int got = httpd_listen(g->workers[i].httpd, c->tls_listen_host, tls_port, g->front_tls,
                                   1, err, errlen);
            if (got < 0) goto fail;
            tls_port = got;
        }
    }

    /* config_load refuses demo without the plain listener */
    g->demo = demo_new(g->base, c->listen_host ? c->listen_host : "127.0.0.1", port);
    if (!g->demo || demo_configure(g->demo, c) != 0) goto oom;
    struct admin_source src = {.workers = g->stats,
                               .n_workers = g->n_workers,
                               .process = &g->process,
                               .draining = &g->draining,
                               .demo = g->demo,
                               .metrics = g->metrics,
                               .audit = g->audit,
                               .pool = g->pool,
                               .store = g->store_shared,
                               .token = c->admin.token,
                               .dump_config = gateway_dump_config,
                               .dump_arg = g};
    g->admin = admin_new(g->base, &src);
    if (!g->admin) goto oom;
    int admin_port = admin_listen(g->admin, c->admin_host, c->admin_port, err, errlen);
    if (admin_port < 0) goto fail;

    g->sig_term = evsignal_new(g->base, SIGTERM, on_signal, g);
    g->sig_int = evsignal_new(g->base, SIGINT, on_signal, g);
    g->sig_hup = evsignal_new(g->base, SIGHUP, on_signal, g);
    g->sig_usr1 = evsignal_new(g->base, SIGUSR1, on_signal, g);
    g->workers_done = event_new(g->base, -1, 0, on_workers_done, g);
    if (!g->sig_term || !g->sig_int || !g->sig_hup || !g->sig_usr1 || !g->workers_done) goto oom;
    event_add(g->sig_term, NULL);
    event_add(g->sig_int, NULL);
    event_add(g->sig_hup, NULL);
    event_add(g->sig_usr1, NULL);

    if (c->listen_host) {
        gateway_host_port(hp, sizeof(hp), c->listen_host, port);
        printf("capgate listening on http://%s\n", hp);
    }
    if (c->tls_listen_host) {
        gateway_host_port(hp, sizeof(hp), c->tls_listen_host, tls_port);
        printf("capgate listening on https://%s\n", hp);
    }
    gateway_host_port(hp, sizeof(hp), c->admin_host, admin_port);
    printf("capgate admin listening on http://%s\n", hp);
    fflush(stdout);
    log_info("capgate %s: %u worker(s), upstream %s, %s store, %s malloc", c->path, g->n_workers,
             c->upstream.url, store_shared_kind(g->store_shared), alloc_name());
    /* Every listener is bound: Type=notify units count as started from here. */
    if (sd_notify_state("READY=1") < 0)
        log_warn("cannot notify $NOTIFY_SOCKET: %s", strerror(errno));
    return g;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    gateway_free(g);
    return NULL;
}

int gateway_run(struct gateway *g) {
    int rc = 0;

    /* The workers leave the signals to the main thread. */
    for (unsigned i = 0; i < g->n_workers; i++) {
        struct gateway_worker *w = &g->workers[i];
        if (thread_start(&w->thread, NULL, worker_main, w) != 0) {
            log_error("worker %u: thread not started", i);
            rc = -1;
            break;
        }
        w->started = 1;
        g->n_started++;
    }
    if (rc != 0) {
        /* Stop the workers that did start; the loop below ends when they all finished. */
        g->draining = 1;
        for (unsigned i = 0; i < g->n_started; i++) worker_post(&g->workers[i], NULL, 1);
    }
    if (g->n_started) event_base_loop(g->base, EVLOOP_NO_EXIT_ON_EMPTY);
    /* Admin queries still running answer on this base: let them, then nothing is left on it. */
    admin_stop_accepting(g->admin);
    while (admin_pending(g->admin) > 0) event_base_loop(g->base, EVLOOP_ONCE);
    for (unsigned i = 0; i < g->n_started; i++) {
        pthread_join(g->workers[i].thread, NULL);
        g->workers[i].started = 0;
    }
    g->n_started = 0;
    if (rc == 0) log_info("drained; exiting");
    return rc;
}

void gateway_free(struct gateway *g) {
    if (!g) return;
    for (unsigned i = 0; g->workers && i < g->n_workers; i++)
        if (g->workers[i].started) {
            worker_post(&g->workers[i], NULL, 1);
            pthread_join(g->workers[i].thread, NULL);
        }
    for (unsigned i = 0; g->workers && i < g->n_workers; i++) worker_cleanup(&g->workers[i]);
    free(g->workers);
    admin_free(g->admin);
    demo_free(g->demo);       /* after admin_free: its requests are ended or cancelled by then */
    metrics_free(g->metrics); /* after the workers: its last flush has every request */
    audit_free(g->audit);     /* after the workers too: it drains every record submitted */
    if (g->sig_term) event_free(g->sig_term);
    if (g->sig_int) event_free(g->sig_int);
    if (g->sig_hup) event_free(g->sig_hup);
    if (g->sig_usr1) event_free(g->sig_usr1);
    if (g->workers_done) event_free(g->workers_done);
    for (unsigned i = 0; g->stats && i < g->n_workers; i++) stats_worker_free(g->stats[i]);
    free(g->stats);
    nonce_cache_free(g->nonces);
    store_shared_free(g->store_shared);
    redis_conn_unpublish();
    pool_free(g->pool);
    if (g->ssl_ctx) SSL_CTX_free(g->ssl_ctx);
    tls_server_free(g->front_tls); /* after the workers' httpd: no accept is left */
    if (g->base) event_base_free(g->base);
    shared_config_unref(g->boot);
    shared_config_unref(g->current);
    free(g->path);
    free(g);
}
