/* admin.h: the admin listener (config "admin_listen", localhost by default), served by its own
 * httpd on the main thread's event base: GET /healthz, GET /readyz (503 while draining; its
 * JSON says "store":"up" or "down" and the audit sink's state), GET /metrics (Prometheus
 * text of every worker summed, and the sinks' counters), GET /admin/stats (metrics_query,
 * docs/design.md "Metrics"), GET /admin/audit (audit_query, "Audit"), each 400 naming a bad
 * parameter, and GET /admin/config (the running config, masked). With admin.token everything
 * but the two probes needs it as a bearer token (401 otherwise). Anything else is a 404 in
 * JSON. */
#ifndef CAPGATE_ADMIN_H
#define CAPGATE_ADMIN_H
#include <stddef.h>

struct event_base;
struct stats_worker;
struct stats_process;
struct audit;
struct demo;
struct metrics;
struct pool;
struct store_shared;
struct admin;

/* The admin listener's own max_connections: an operator can still reach /metrics while the
 * front listener is full. */
#define ADMIN_MAX_CONNECTIONS 64

/* What the admin listener reports; everything borrowed and read on the main thread, and must
 * outlive the admin. */
struct admin_source {
    struct stats_worker *const *workers; /* one per worker */
    size_t n_workers;
    const struct stats_process *process;
    const int *draining;              /* non-zero once shutdown began */
    struct demo *demo;                /* the /demo page (demo.h); off unless "demo": true */
    struct metrics *metrics;          /* /admin/stats and the flush counters; NULL: none */
    struct audit *audit;              /* /admin/audit and the sink's counters; NULL: none */
    struct pool *pool;                /* prefetch pool counters in /metrics and as "pool" in
                                           * /admin/stats; NULL: none */
    const struct store_shared *store; /* capgate_store_live_instances with a Redis store */
    const char *token;                /* admin.token: every path but /healthz and /readyz
                                           * needs "Authorization: Bearer <token>"; NULL: open */
    char *(*dump_config)(void *arg);  /* /admin/config: the running config, secrets masked
                                           * (malloc'd; NULL on OOM) */
    void *dump_arg;
};

/* NULL on OOM. */
struct admin *admin_new(struct event_base *base, const struct admin_source *src);
/* Listens on host:port (0 picks one). Returns the bound port, or -1 with err. */
int admin_listen(struct admin *a, const char *host, int port, char *err, size_t errlen);
/* Queries started and not yet answered (their callbacks arrive on the admin's base). */
size_t admin_pending(const struct admin *a);
/* Shutdown: no new connection; requests on open ones are still answered. */
void admin_stop_accepting(struct admin *a);
/* Call once admin_pending is 0 (the base must run until then). NULL accepted. */
void admin_free(struct admin *a);

#endif
