/* stats.h: the gateway's per-worker counters and their Prometheus text. Each worker writes only
 * its own struct stats_worker (relaxed atomics, no locks); the admin listener on the main thread
 * sums every worker at scrape time. Label values are bounded by the caller: app names from the
 * config ("-" before authentication), Action names from validate_action_name(), decisions from
 * the pipeline's table. */
#ifndef CAPGATE_STATS_H
#define CAPGATE_STATS_H
#include <stddef.h>
#include <stdint.h>
#include "upstream.h"

#define STATS_MAX_SERIES 1024   /* (app, action, decision) triples per worker; more go to app "~" */
#define STATS_LABEL_MAX 64      /* longer label values are cut */

struct strbuf;
struct stats_worker;

/* id is the worker's number, used as the label of its breaker gauge. NULL on OOM. */
struct stats_worker *stats_worker_new(unsigned id);
void stats_worker_free(struct stats_worker *w);  /* NULL accepted */

/* Worker thread only. */
void stats_count_request(struct stats_worker *w, const char *app, const char *action,
                         const char *decision);
void stats_inflight_add(struct stats_worker *w, int delta);
void stats_set_connections(struct stats_worker *w, size_t front_connections);
void stats_set_upstream(struct stats_worker *w, const struct upstream_stats *s);

/* Any thread: one counter's current value (0 when the triple was never counted). */
uint64_t stats_requests(const struct stats_worker *w, const char *app, const char *action,
                        const char *decision);

/* Process-wide numbers the main thread owns. */
struct stats_process {
    uint64_t reloads_ok;
    uint64_t reloads_failed;
};

/* Appends the Prometheus text exposition (version 0.0.4) of every worker summed, series sorted
 * by labels: capgate_requests_total{app,action,decision},
 * capgate_upstream_request_duration_seconds (histogram), capgate_upstream_breaker_state{worker},
 * capgate_upstream_open_connections, capgate_open_connections, capgate_inflight_requests,
 * capgate_config_reloads_total{result}. 0, or -1 on OOM. */
int stats_render(struct strbuf *out, struct stats_worker *const *workers, size_t n_workers,
                 const struct stats_process *p);

#endif
