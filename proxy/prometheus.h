/* prometheus.h: the gateway's per-worker counters and their Prometheus text (/metrics). Each
 * worker writes only its own struct stats_worker (relaxed atomics, no locks); the admin listener
 * on the main thread sums every worker at scrape time. Label values are bounded by the caller:
 * app names from the config ("-" before authentication), Action names from
 * validate_action_name(), decisions from pipeline_decision_name() (record.h). */
#ifndef CAPGATE_PROMETHEUS_H
#define CAPGATE_PROMETHEUS_H
#include <stddef.h>
#include <stdint.h>
#include "config.h"
#include "upstream.h"

#define STATS_MAX_SERIES 1024 /* (app, action, decision) triples per worker; more go to app "~" */
#define STATS_MAX_LIMIT_SERIES 256 /* (rule, decision) pairs per worker; more go to rule "~" */
/* An app or rule name whole (config.h bounds them); Action names and decisions are shorter. */
#define STATS_LABEL_MAX (CONFIG_NAME_MAX + 1)

struct strbuf;
struct stats_worker;

/* id is the worker's number, used as the label of its breaker gauge. NULL on OOM. */
struct stats_worker *stats_worker_new(unsigned id);
void stats_worker_free(struct stats_worker *w); /* NULL accepted */

/* Worker thread only. */
void stats_count_request(struct stats_worker *w, const char *app, const char *action,
                         const char *decision);
void stats_inflight_add(struct stats_worker *w, int delta);
void stats_set_connections(struct stats_worker *w, size_t front_connections);
void stats_set_upstream(struct stats_worker *w, const struct upstream_stats *s);
/* The upstream's addresses, connect failures and failed lookups; v3: the API 3.0 upstream's. */
void stats_set_upstream_addresses(struct stats_worker *w, int v3, const struct upstream_stats *s);
/* The API 3.0 upstream's breaker (its calls and connections count in stats_set_upstream's). */
void stats_set_upstream3_breaker(struct stats_worker *w, enum breaker_state state);
/* decision: "admitted", "limited" or "shadow_limited"; rule: a limit rule's name. */
void stats_count_limit(struct stats_worker *w, const char *rule, const char *decision);
/* The worker's rate-limit store, copied on each publish: reachable now, and its counters. */
void stats_set_store(struct stats_worker *w, int connected, uint64_t commands, uint64_t errors,
                     uint64_t timeouts, uint64_t reconnects);
/* Commands the worker's store refused at once because it was marked down (fail fast). */
void stats_set_store_fast_fails(struct stats_worker *w, uint64_t fast_fails);
/* An audit record the worker could not hand to the sink (OOM). */
void stats_count_audit_failure(struct stats_worker *w);

/* Any thread: one counter's current value (0 when the triple was never counted). */
uint64_t stats_requests(const struct stats_worker *w, const char *app, const char *action,
                        const char *decision);
uint64_t stats_limit_decisions(const struct stats_worker *w, const char *rule,
                               const char *decision);
/* Any thread: 1 when every worker's store was reachable at its last publish. */
int stats_store_connected(struct stats_worker *const *workers, size_t n_workers);

/* Process-wide numbers the main thread owns, and the sinks' counters the admin listener copies
 * in before rendering (has_audit / has_metrics: 0 leaves those families out). */
struct stats_process {
    uint64_t reloads_ok;
    uint64_t reloads_failed;
    int has_audit;
    uint64_t audit_queue_depth, audit_spool_records;
    uint64_t audit_written, audit_spooled, audit_replayed, audit_overflowed;
    uint64_t audit_held_records, audit_overflow_records, audit_file_errors;
    int has_metrics;
    uint64_t metrics_flushes, metrics_flush_errors;
    int has_heartbeat;       /* a Redis store: the instances publish heartbeats */
    unsigned live_instances; /* the count of the last heartbeat answer */
};

/* Appends the Prometheus text exposition (version 0.0.4) of every worker summed, series sorted
 * by labels: capgate_requests_total{app,action,decision},
 * capgate_upstream_request_duration_seconds (histogram), capgate_upstream_breaker_state{worker,api},
 * capgate_upstream_open_connections, capgate_open_connections, capgate_inflight_requests,
 * capgate_config_reloads_total{result}, capgate_limit_decisions_total{rule,decision},
 * capgate_store_connected{worker}, capgate_store_up, capgate_store_commands_total,
 * capgate_store_errors_total, capgate_store_timeouts_total, capgate_store_reconnects_total,
 * capgate_store_fast_failures_total, capgate_store_live_instances (with p->has_heartbeat), and
 * with p's sinks
 * capgate_audit_queue_depth, capgate_audit_spool_records, capgate_audit_held_records,
 * capgate_audit_overflow_records, capgate_audit_records_total{result},
 * capgate_audit_file_errors_total, capgate_audit_submit_failures_total,
 * capgate_metrics_flushes_total, capgate_metrics_flush_errors_total. 0, or -1 on OOM. */
int stats_render(struct strbuf *out, struct stats_worker *const *workers, size_t n_workers,
                 const struct stats_process *p);

#endif
