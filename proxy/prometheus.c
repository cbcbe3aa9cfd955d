/* prometheus.c: the counters behind /metrics, per worker and without locks. A worker owns its
 * table: it fills a slot's labels and then publishes the slot with a release store; the scraper
 * only reads slots it saw published (acquire), so it never sees half-written labels. Slots are
 * never removed. */
#include "prometheus.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/strbuf.h"

struct stats_series {
    atomic_int used;
    char app[STATS_LABEL_MAX];
    char action[STATS_LABEL_MAX];
    char decision[STATS_LABEL_MAX];
    atomic_uint_fast64_t count;
};

/* An open-addressing table of series; slots are never removed. */
struct stats_table {
    struct stats_series *series;
    size_t cap;
    size_t n_used; /* slots taken; read and written by the worker only */
};

struct stats_worker {
    unsigned id;
    struct stats_table requests; /* (app, action, decision) */
    struct stats_table limits;   /* (rule, "", decision) */
    atomic_int_fast64_t inflight;
    atomic_uint_fast64_t connections;
    /* the worker's upstream stats, copied after each call */
    atomic_uint_fast64_t up_buckets[UPSTREAM_LATENCY_BUCKETS];
    atomic_uint_fast64_t up_sum_us;
    atomic_int up_breaker, up3_breaker; /* the 2.0 and the 3.0 upstream's */
    atomic_uint_fast64_t up_open;
    /* per API generation (0: 2.0, 1: 3.0): the host's addresses known, connect failures at one
     * of them, failed lookups */
    atomic_uint_fast64_t up_addresses[2], up_connect_failures[2], up_dns_failures[2];
    /* the worker's rate-limit store, copied on each publish */
    atomic_int store_connected;
    atomic_uint_fast64_t store_commands, store_errors, store_timeouts, store_reconnects;
    atomic_uint_fast64_t store_fast_fails;
    atomic_uint_fast64_t audit_failures;
    struct stats_series series[STATS_MAX_SERIES];
    struct stats_series limit_series[STATS_MAX_LIMIT_SERIES];
};

struct stats_worker *stats_worker_new(unsigned id) {
    struct stats_worker *w = calloc(1, sizeof(*w));
    if (!w) return NULL;
    w->id = id;
    w->requests.series = w->series;
    w->requests.cap = STATS_MAX_SERIES;
    w->limits.series = w->limit_series;
    w->limits.cap = STATS_MAX_LIMIT_SERIES;
    /* Until the first publish says otherwise (the memory store is always reachable). */
    atomic_store_explicit(&w->store_connected, 1, memory_order_relaxed);
    return w;
}

void stats_worker_free(struct stats_worker *w) {
    free(w);
}

static void stats_copy_label(char dst[STATS_LABEL_MAX], const char *src) {
    size_t n = strlen(src);
    if (n >= STATS_LABEL_MAX) n = STATS_LABEL_MAX - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static int stats_label_eq(const char label[STATS_LABEL_MAX], const char *s) {
    size_t n = strlen(s);
    if (n >= STATS_LABEL_MAX) n = STATS_LABEL_MAX - 1;
    return strncmp(label, s, n) == 0 && label[n] == '\0';
}

static size_t stats_hash(const char *app, const char *action, const char *decision, size_t cap) {
    uint64_t h = 0xcbf29ce484222325ULL;
    const char *parts[3] = {app, action, decision};
    for (int i = 0; i < 3; i++) {
        for (size_t j = 0; parts[i][j] && j < STATS_LABEL_MAX - 1; j++) {
            h ^= (unsigned char)parts[i][j];
            h *= 0x100000001b3ULL;
        }
        h ^= 0xff;
        h *= 0x100000001b3ULL;
    }
    return (size_t)(h % cap);
}

static struct stats_series *stats_find(const struct stats_table *t, const char *app,
                                       const char *action, const char *decision, int *free_slot) {
    size_t i = stats_hash(app, action, decision, t->cap);
    *free_slot = -1;
    for (size_t probes = 0; probes < t->cap; probes++, i = (i + 1) % t->cap) {
        const struct stats_series *s = &t->series[i];
        if (!atomic_load_explicit(&s->used, memory_order_acquire)) {
            *free_slot = (int)i;
            return NULL;
        }
        if (stats_label_eq(s->app, app) && stats_label_eq(s->action, action) &&
            stats_label_eq(s->decision, decision))
            return (struct stats_series *)s;
    }
    return NULL;
}

/* Counts one in the series (app, action, decision) of t; once t is nearly full, new series go
 * to app "~" instead. */
static void stats_table_count(struct stats_table *t, const char *app, const char *action,
                              const char *decision) {
    int slot;
    struct stats_series *s = stats_find(t, app, action, decision, &slot);
    if (!s && slot >= 0 && t->n_used < t->cap - t->cap / 16) {
        /* The last slots are kept for the overflow series below. */
        s = &t->series[slot];
    } else if (!s) {
        s = stats_find(t, "~", action, decision, &slot);
        if (!s && slot >= 0) {
            s = &t->series[slot];
            app = "~";
        }
    }
    if (!s) return;
    if (!atomic_load_explicit(&s->used, memory_order_relaxed)) {
        t->n_used++;
        stats_copy_label(s->app, app);
        stats_copy_label(s->action, action);
        stats_copy_label(s->decision, decision);
        atomic_store_explicit(&s->used, 1, memory_order_release);
    }
    atomic_fetch_add_explicit(&s->count, 1, memory_order_relaxed);
}

void stats_count_request(struct stats_worker *w, const char *app, const char *action,
                         const char *decision) {
    stats_table_count(&w->requests, app, action, decision);
}

void stats_count_limit(struct stats_worker *w, const char *rule, const char *decision) {
    stats_table_count(&w->limits, rule, "", decision);
}

uint64_t stats_requests(const struct stats_worker *w, const char *app, const char *action,
                        const char *decision) {
    int slot;
    const struct stats_series *s = stats_find(&w->requests, app, action, decision, &slot);
    return s ? atomic_load_explicit(&s->count, memory_order_relaxed) : 0;
}

uint64_t stats_limit_decisions(const struct stats_worker *w, const char *rule,
                               const char *decision) {
    int slot;
    const struct stats_series *s = stats_find(&w->limits, rule, "", decision, &slot);
    return s ? atomic_load_explicit(&s->count, memory_order_relaxed) : 0;
}

void stats_set_store(struct stats_worker *w, int connected, uint64_t commands, uint64_t errors,
                     uint64_t timeouts, uint64_t reconnects) {
    atomic_store_explicit(&w->store_connected, connected ? 1 : 0, memory_order_relaxed);
    atomic_store_explicit(&w->store_commands, commands, memory_order_relaxed);
    atomic_store_explicit(&w->store_errors, errors, memory_order_relaxed);
    atomic_store_explicit(&w->store_timeouts, timeouts, memory_order_relaxed);
    atomic_store_explicit(&w->store_reconnects, reconnects, memory_order_relaxed);
}

void stats_set_store_fast_fails(struct stats_worker *w, uint64_t fast_fails) {
    atomic_store_explicit(&w->store_fast_fails, fast_fails, memory_order_relaxed);
}

void stats_count_audit_failure(struct stats_worker *w) {
    atomic_fetch_add_explicit(&w->audit_failures, 1, memory_order_relaxed);
}

int stats_store_connected(struct stats_worker *const *workers, size_t n_workers) {
    for (size_t i = 0; i < n_workers; i++)
        if (!atomic_load_explicit(&workers[i]->store_connected, memory_order_relaxed)) return 0;
    return 1;
}

void stats_inflight_add(struct stats_worker *w, int delta) {
    atomic_fetch_add_explicit(&w->inflight, delta, memory_order_relaxed);
}

void stats_set_connections(struct stats_worker *w, size_t front_connections) {
    atomic_store_explicit(&w->connections, front_connections, memory_order_relaxed);
}

void stats_set_upstream(struct stats_worker *w, const struct upstream_stats *s) {
    for (int i = 0; i < UPSTREAM_LATENCY_BUCKETS; i++)
        atomic_store_explicit(&w->up_buckets[i], s->latency_buckets[i], memory_order_relaxed);
    atomic_store_explicit(&w->up_sum_us, s->latency_sum_us, memory_order_relaxed);
    atomic_store_explicit(&w->up_breaker, (int)s->breaker, memory_order_relaxed);
    atomic_store_explicit(&w->up_open, s->open_connections, memory_order_relaxed);
}

void stats_set_upstream_addresses(struct stats_worker *w, int v3, const struct upstream_stats *s) {
    v3 = v3 ? 1 : 0;
    atomic_store_explicit(&w->up_addresses[v3], s->addresses, memory_order_relaxed);
    atomic_store_explicit(&w->up_connect_failures[v3], s->connect_failures, memory_order_relaxed);
    atomic_store_explicit(&w->up_dns_failures[v3], s->dns_failures, memory_order_relaxed);
}

void stats_set_upstream3_breaker(struct stats_worker *w, enum breaker_state state) {
    atomic_store_explicit(&w->up3_breaker, (int)state, memory_order_relaxed);
}

/* ---- rendering ---- */

struct stats_row {
    const char *app, *action, *decision;
    uint64_t count;
};

static int stats_row_cmp(const void *a, const void *b) {
    const struct stats_row *x = a, *y = b;
    int c = strcmp(x->app, y->app);
    if (!c) c = strcmp(x->action, y->action);
    if (!c) c = strcmp(x->decision, y->decision);
    return c;
}

/* Label value escaping of the text format: backslash, double quote and line feed. */
static int stats_append_label(struct strbuf *out, const char *v) {
    for (; *v; v++) {
        int rc;
        if (*v == '\\')
            rc = strbuf_appends(out, "\\\\");
        else if (*v == '"')
            rc = strbuf_appends(out, "\\\"");
        else if (*v == '\n')
            rc = strbuf_appends(out, "\\n");
        else
            rc = strbuf_appendc(out, *v);
        if (rc) return -1;
    }
    return 0;
}

/* One counter family from one table of every worker: the same labels from several workers
 * are one series. With rule_family the table holds (rule, "", decision) and renders
 * {rule,decision}; otherwise (app, action, decision). */
static int stats_render_table(struct strbuf *out, struct stats_worker *const *workers,
                              size_t n_workers, int rule_family) {
    struct stats_row *rows = NULL;
    size_t n_rows = 0, cap = rule_family ? STATS_MAX_LIMIT_SERIES : STATS_MAX_SERIES;
    const char *name = rule_family ? "capgate_limit_decisions_total" : "capgate_requests_total";
    int rc = -1;

    if (n_workers) {
        rows = calloc(n_workers * cap, sizeof(*rows));
        if (!rows) goto out;
    }
    for (size_t w = 0; w < n_workers; w++) {
        const struct stats_table *t = rule_family ? &workers[w]->limits : &workers[w]->requests;
        for (size_t i = 0; i < t->cap; i++) {
            const struct stats_series *s = &t->series[i];
            if (!atomic_load_explicit(&s->used, memory_order_acquire)) continue;
            rows[n_rows].app = s->app;
            rows[n_rows].action = s->action;
            rows[n_rows].decision = s->decision;
            rows[n_rows].count = atomic_load_explicit(&s->count, memory_order_relaxed);
            n_rows++;
        }
    }
    if (n_rows) qsort(rows, n_rows, sizeof(*rows), stats_row_cmp);
    /* The same labels from several workers are one series: merge neighbours after sorting. */
    size_t merged = 0;
    for (size_t j = 0; j < n_rows; j++) {
        if (merged && !stats_row_cmp(&rows[merged - 1], &rows[j]))
            rows[merged - 1].count += rows[j].count;
        else
            rows[merged++] = rows[j];
    }
    n_rows = merged;
    if (strbuf_appendf(out, "# HELP %s %s\n# TYPE %s counter\n", name,
                       rule_family ? "Rate-limit decisions by rule: admitted, limited, "
                                     "shadow_limited."
                                   : "Front requests by app, Action and decision.",
                       name))
        goto out;
    for (size_t j = 0; j < n_rows; j++) {
        int bad;
        if (rule_family)
            bad = strbuf_appendf(out, "%s{rule=\"", name) || stats_append_label(out, rows[j].app);
        else
            bad = strbuf_appendf(out, "%s{app=\"", name) || stats_append_label(out, rows[j].app) ||
                  strbuf_appends(out, "\",action=\"") || stats_append_label(out, rows[j].action);
        if (bad || strbuf_appends(out, "\",decision=\"") ||
            stats_append_label(out, rows[j].decision) ||
            strbuf_appendf(out, "\"} %llu\n", (unsigned long long)rows[j].count))
            goto out;
    }
    rc = 0;
out:
    free(rows);
    return rc;
}

static int stats_render_store(struct strbuf *out, struct stats_worker *const *workers,
                              size_t n_workers) {
    uint64_t commands = 0, errors = 0, timeouts = 0, reconnects = 0, audit_failures = 0;
    uint64_t fast_fails = 0;
    if (strbuf_appends(out, "# HELP capgate_store_connected Store (rate limits, pool, "
                            "idempotency) reachable, per worker (1 yes, 0 no).\n"
                            "# TYPE capgate_store_connected gauge\n"))
        return -1;
    for (size_t w = 0; w < n_workers; w++) {
        const struct stats_worker *x = workers[w];
        if (strbuf_appendf(out, "capgate_store_connected{worker=\"%u\"} %d\n", x->id,
                           atomic_load_explicit(&x->store_connected, memory_order_relaxed)))
            return -1;
        commands += atomic_load_explicit(&x->store_commands, memory_order_relaxed);
        errors += atomic_load_explicit(&x->store_errors, memory_order_relaxed);
        timeouts += atomic_load_explicit(&x->store_timeouts, memory_order_relaxed);
        reconnects += atomic_load_explicit(&x->store_reconnects, memory_order_relaxed);
        fast_fails += atomic_load_explicit(&x->store_fast_fails, memory_order_relaxed);
        audit_failures += atomic_load_explicit(&x->audit_failures, memory_order_relaxed);
    }
    if (strbuf_appendf(out,
                       "# HELP capgate_store_commands_total Commands sent to the store: "
                       "rate-limit checks, pool and idempotency commands.\n"
                       "# TYPE capgate_store_commands_total counter\n"
                       "capgate_store_commands_total %llu\n"
                       "# HELP capgate_store_errors_total Store commands that failed (a "
                       "rate-limit check is then answered per on_store_error).\n"
                       "# TYPE capgate_store_errors_total counter\n"
                       "capgate_store_errors_total %llu\n"
                       "# HELP capgate_store_timeouts_total Store commands that timed out.\n"
                       "# TYPE capgate_store_timeouts_total counter\n"
                       "capgate_store_timeouts_total %llu\n"
                       "# HELP capgate_store_reconnects_total Store reconnection attempts.\n"
                       "# TYPE capgate_store_reconnects_total counter\n"
                       "capgate_store_reconnects_total %llu\n"
                       "# HELP capgate_audit_submit_failures_total Audit records not handed "
                       "to the sink (out of memory).\n"
                       "# TYPE capgate_audit_submit_failures_total counter\n"
                       "capgate_audit_submit_failures_total %llu\n",
                       (unsigned long long)commands, (unsigned long long)errors,
                       (unsigned long long)timeouts, (unsigned long long)reconnects,
                       (unsigned long long)audit_failures))
        return -1;
    if (strbuf_appendf(out,
                       "# HELP capgate_store_up Store up in every worker (1), or down in "
                       "at least one (0): not connected, or marked down after a timeout "
                       "until a probe answers; requests then go straight to "
                       "on_store_error.\n"
                       "# TYPE capgate_store_up gauge\n"
                       "capgate_store_up %d\n"
                       "# HELP capgate_store_fast_failures_total Store commands refused at "
                       "once because the store was marked down.\n"
                       "# TYPE capgate_store_fast_failures_total counter\n"
                       "capgate_store_fast_failures_total %llu\n",
                       stats_store_connected(workers, n_workers), (unsigned long long)fast_fails))
        return -1;
    return 0;
}

static int stats_render_heartbeat(struct strbuf *out, const struct stats_process *p) {
    if (!p->has_heartbeat) return 0;
    return strbuf_appendf(out,
                          "# HELP capgate_store_live_instances Instances the last heartbeat "
                          "answer counted (kept through an outage); on_store_error \"local\" "
                          "enforces each shared rule at rate / this.\n"
                          "# TYPE capgate_store_live_instances gauge\n"
                          "capgate_store_live_instances %u\n",
                          p->live_instances);
}

static int stats_render_sinks(struct strbuf *out, const struct stats_process *p) {
    if (p->has_audit &&
        strbuf_appendf(
            out,
            "# HELP capgate_audit_queue_depth Audit records waiting for the "
            "sink.\n# TYPE capgate_audit_queue_depth gauge\n"
            "capgate_audit_queue_depth %llu\n"
            "# HELP capgate_audit_spool_records Audit records in the spool, not "
            "yet replayed.\n# TYPE capgate_audit_spool_records gauge\n"
            "capgate_audit_spool_records %llu\n"
            "# HELP capgate_audit_held_records Audit records held in memory "
            "because the spool refused them.\n"
            "# TYPE capgate_audit_held_records gauge\n"
            "capgate_audit_held_records %llu\n"
            "# HELP capgate_audit_overflow_records Audit records in the worker "
            "queues' overflow lists.\n"
            "# TYPE capgate_audit_overflow_records gauge\n"
            "capgate_audit_overflow_records %llu\n"
            "# HELP capgate_audit_records_total Audit records by what became of "
            "them.\n# TYPE capgate_audit_records_total counter\n"
            "capgate_audit_records_total{result=\"written\"} %llu\n"
            "capgate_audit_records_total{result=\"spooled\"} %llu\n"
            "capgate_audit_records_total{result=\"replayed\"} %llu\n"
            "capgate_audit_records_total{result=\"overflowed\"} %llu\n"
            "# HELP capgate_audit_file_errors_total Failed writes, fsyncs and "
            "reopens of the audit file and the spool.\n"
            "# TYPE capgate_audit_file_errors_total counter\n"
            "capgate_audit_file_errors_total %llu\n",
            (unsigned long long)p->audit_queue_depth, (unsigned long long)p->audit_spool_records,
            (unsigned long long)p->audit_held_records,
            (unsigned long long)p->audit_overflow_records, (unsigned long long)p->audit_written,
            (unsigned long long)p->audit_spooled, (unsigned long long)p->audit_replayed,
            (unsigned long long)p->audit_overflowed, (unsigned long long)p->audit_file_errors))
        return -1;
    if (p->has_metrics &&
        strbuf_appendf(out,
                       "# HELP capgate_metrics_flushes_total Metrics flush cycles that "
                       "wrote their batch.\n# TYPE capgate_metrics_flushes_total counter\n"
                       "capgate_metrics_flushes_total %llu\n"
                       "# HELP capgate_metrics_flush_errors_total Metrics flush cycles that "
                       "failed.\n# TYPE capgate_metrics_flush_errors_total counter\n"
                       "capgate_metrics_flush_errors_total %llu\n",
                       (unsigned long long)p->metrics_flushes,
                       (unsigned long long)p->metrics_flush_errors))
        return -1;
    return 0;
}

static int stats_render_upstream(struct strbuf *out, struct stats_worker *const *workers,
                                 size_t n_workers) {
    uint64_t buckets[UPSTREAM_LATENCY_BUCKETS] = {0};
    uint64_t sum_us = 0, cumulative = 0, open = 0;

    for (size_t w = 0; w < n_workers; w++) {
        for (int i = 0; i < UPSTREAM_LATENCY_BUCKETS; i++)
            buckets[i] += atomic_load_explicit(&workers[w]->up_buckets[i], memory_order_relaxed);
        sum_us += atomic_load_explicit(&workers[w]->up_sum_us, memory_order_relaxed);
        open += atomic_load_explicit(&workers[w]->up_open, memory_order_relaxed);
    }
    if (strbuf_appends(out, "# HELP capgate_upstream_request_duration_seconds Upstream call "
                            "latency, retries included.\n"
                            "# TYPE capgate_upstream_request_duration_seconds histogram\n"))
        return -1;
    for (int i = 0; i < UPSTREAM_LATENCY_BUCKETS; i++) {
        cumulative += buckets[i];
        int rc;
        if (upstream_latency_bounds_us[i] == UINT64_MAX)
            rc = strbuf_appendf(
                out, "capgate_upstream_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
                (unsigned long long)cumulative);
        else
            rc = strbuf_appendf(
                out, "capgate_upstream_request_duration_seconds_bucket{le=\"%g\"} %llu\n",
                (double)upstream_latency_bounds_us[i] / 1e6, (unsigned long long)cumulative);
        if (rc) return -1;
    }
    if (strbuf_appendf(out,
                       "capgate_upstream_request_duration_seconds_sum %.6f\n"
                       "capgate_upstream_request_duration_seconds_count %llu\n",
                       (double)sum_us / 1e6, (unsigned long long)cumulative))
        return -1;
    if (strbuf_appends(out,
                       "# HELP capgate_upstream_breaker_state Upstream circuit breakers (one per "
                       "process and API generation, as each worker last saw it): "
                       "0 closed, 1 open, 2 half-open.\n"
                       "# TYPE capgate_upstream_breaker_state gauge\n"))
        return -1;
    for (size_t w = 0; w < n_workers; w++) {
        for (int v3 = 0; v3 < 2; v3++) {
            int st = atomic_load_explicit(v3 ? &workers[w]->up3_breaker : &workers[w]->up_breaker,
                                          memory_order_relaxed);
            int code = st == BREAKER_OPEN ? 1 : st == BREAKER_HALF_OPEN ? 2 : 0;
            if (strbuf_appendf(out,
                               "capgate_upstream_breaker_state{worker=\"%u\",api=\"v%d\"} %d\n",
                               workers[w]->id, v3 ? 3 : 2, code))
                return -1;
        }
    }
    if (strbuf_appends(out, "# HELP capgate_upstream_addresses Addresses of the upstream host each "
                            "worker knows (its last lookup's answer; 1 for an IP literal).\n"
                            "# TYPE capgate_upstream_addresses gauge\n"))
        return -1;
    for (size_t w = 0; w < n_workers; w++)
        for (int v3 = 0; v3 < 2; v3++)
            if (strbuf_appendf(out, "capgate_upstream_addresses{worker=\"%u\",api=\"v%d\"} %llu\n",
                               workers[w]->id, v3 ? 3 : 2,
                               (unsigned long long)atomic_load_explicit(
                                   &workers[w]->up_addresses[v3], memory_order_relaxed)))
                return -1;
    for (int m = 0; m < 2; m++) {
        static const char *const help[2] = {
            "# HELP capgate_upstream_connect_failures_total Connects (TCP or TLS handshake) to "
            "one address of the upstream host name that failed (the call went on with the next "
            "address).\n# TYPE capgate_upstream_connect_failures_total counter\n",
            "# HELP capgate_upstream_dns_failures_total Lookups of the upstream host name that "
            "failed.\n# TYPE capgate_upstream_dns_failures_total counter\n"};
        if (strbuf_appends(out, help[m])) return -1;
        for (int v3 = 0; v3 < 2; v3++) {
            uint64_t sum = 0;
            for (size_t w = 0; w < n_workers; w++)
                sum += atomic_load_explicit(m ? &workers[w]->up_dns_failures[v3]
                                              : &workers[w]->up_connect_failures[v3],
                                            memory_order_relaxed);
            if (strbuf_appendf(out, "%s{api=\"v%d\"} %llu\n",
                               m ? "capgate_upstream_dns_failures_total"
                                 : "capgate_upstream_connect_failures_total",
                               v3 ? 3 : 2, (unsigned long long)sum))
                return -1;
        }
    }
    if (strbuf_appendf(out,
                       "# HELP capgate_upstream_open_connections Upstream connections in the "
                       "pools.\n# TYPE capgate_upstream_open_connections gauge\n"
                       "capgate_upstream_open_connections %llu\n",
                       (unsigned long long)open))
        return -1;
    return 0;
}

int stats_render(struct strbuf *out, struct stats_worker *const *workers, size_t n_workers,
                 const struct stats_process *p) {
    uint64_t conns = 0;
    int64_t inflight = 0;

    if (stats_render_table(out, workers, n_workers, 0)) return -1;
    if (stats_render_upstream(out, workers, n_workers)) return -1;
    if (stats_render_table(out, workers, n_workers, 1)) return -1;
    if (stats_render_store(out, workers, n_workers)) return -1;
    if (stats_render_heartbeat(out, p) || stats_render_sinks(out, p)) return -1;
    for (size_t w = 0; w < n_workers; w++) {
        conns += atomic_load_explicit(&workers[w]->connections, memory_order_relaxed);
        inflight += atomic_load_explicit(&workers[w]->inflight, memory_order_relaxed);
    }
    if (inflight < 0) inflight = 0;
    if (strbuf_appendf(out,
                       "# HELP capgate_open_connections Open front connections.\n"
                       "# TYPE capgate_open_connections gauge\n"
                       "capgate_open_connections %llu\n"
                       "# HELP capgate_inflight_requests Front requests being processed.\n"
                       "# TYPE capgate_inflight_requests gauge\n"
                       "capgate_inflight_requests %lld\n"
                       "# HELP capgate_config_reloads_total Configuration reloads by result.\n"
                       "# TYPE capgate_config_reloads_total counter\n"
                       "capgate_config_reloads_total{result=\"success\"} %llu\n"
                       "capgate_config_reloads_total{result=\"failure\"} %llu\n",
                       (unsigned long long)conns, (long long)inflight,
                       (unsigned long long)p->reloads_ok, (unsigned long long)p->reloads_failed))
        return -1;
    return 0;
}
