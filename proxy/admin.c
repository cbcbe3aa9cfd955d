/* admin.c: health, readiness and metrics for operators and orchestrators. It runs on the main
 * thread, which owns no request path, so a slow scrape never delays an API request. Queries
 * that read Redis (/admin/stats, /admin/audit) run off this thread and answer later from their callback; a
 * client that leaves meanwhile only detaches its request from the query. */
#include "admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "capgate/httpd.h"
#include "capgate/log.h"
#include "audit.h"
#include "dashboard.h"
#include "capgate/strbuf.h"
#include "demo.h"
#include "minute_stats.h"
#include "pool.h"
#include "prometheus.h"
#include "store.h"

#define ADMIN_JSON "application/json"

struct admin {
    struct event_base *base;
    struct httpd *httpd;
    struct admin_source src;
    size_t pending; /* queries whose done callback has not fired yet */
};

/* One query in flight: lives from the start of the query to its done callback, which fires
 * exactly once whatever became of the client. */
struct admin_query {
    struct admin *a;
    struct httpd_req *req; /* NULL once the client went away */
    int add_pool;          /* /admin/stats: the pool totals join the answer as "pool" */
};

static void admin_json(struct httpd_req *req, int status, const char *body) {
    httpd_reply(req, status, ADMIN_JSON, body, strlen(body));
}

/* {"error": msg}, msg escaped as JSON. */
static void admin_error(struct httpd_req *req, int status, const char *msg) {
    struct strbuf b;
    strbuf_init(&b);
    int bad = strbuf_appends(&b, "{\"error\":\"");
    for (const unsigned char *p = (const unsigned char *)msg; !bad && *p; p++) {
        if (*p == '"' || *p == '\\')
            bad = strbuf_appendc(&b, '\\') || strbuf_appendc(&b, (char)*p);
        else if (*p < 0x20)
            bad = strbuf_appendf(&b, "\\u%04x", *p);
        else
            bad = strbuf_appendc(&b, (char)*p);
    }
    if (bad || strbuf_appends(&b, "\"}"))
        admin_json(req, 500, "{\"error\":\"out of memory\"}");
    else
        admin_json(req, status, b.s);
    strbuf_cleanup(&b);
}

static void admin_query_cancel(struct httpd_req *req, void *arg) {
    struct admin_query *q = arg;
    q->req = NULL;
}

/* json (an object) with ,"pool":{...} before its closing brace; NULL when it is not an object
 * or on OOM. Caller frees. */
static char *admin_with_pool(const struct pool *p, const char *json) {
    struct strbuf b;
    size_t n = strlen(json);
    while (n && (json[n - 1] == '\n' || json[n - 1] == ' ')) n--;
    if (n < 2 || json[0] != '{' || json[n - 1] != '}') return NULL;
    strbuf_init(&b);
    if (strbuf_append(&b, json, n - 1) || strbuf_appends(&b, n > 2 ? ",\"pool\":" : "\"pool\":") ||
        pool_render_json(p, &b) || strbuf_appendc(&b, '}')) {
        strbuf_cleanup(&b);
        return NULL;
    }
    return strbuf_detach(&b);
}

static void admin_query_done(const char *json, int http_status, void *arg) {
    struct admin_query *q = arg;
    char *with_pool = NULL;
    if (q->req && json && q->add_pool && q->a->src.pool && http_status == 200)
        with_pool = admin_with_pool(q->a->src.pool, json);
    if (with_pool) json = with_pool;
    if (q->req) {
        httpd_set_cancel(q->req, NULL, NULL);
        if (json)
            admin_json(q->req, http_status, json);
        else
            admin_json(q->req, 500, "{\"error\":\"query failed\"}");
    }
    q->a->pending--;
    free(with_pool);
    free(q);
}

/* A query context for req, or NULL after answering 500 (OOM). */
static struct admin_query *admin_query_new(struct admin *a, struct httpd_req *req) {
    struct admin_query *q = calloc(1, sizeof(*q));
    if (!q) {
        admin_json(req, 500, "{\"error\":\"out of memory\"}");
        return NULL;
    }
    q->a = a;
    q->req = req;
    a->pending++;
    httpd_set_cancel(req, admin_query_cancel, q);
    return q;
}

static void admin_stats(struct admin *a, struct httpd_req *req) {
    struct metrics_query mq;
    char err[256];
    if (!a->src.metrics) {
        admin_json(req, 503, "{\"error\":\"metrics are not running\"}");
        return;
    }
    if (metrics_query_parse(req->query, &mq, err, sizeof(err)) != 0) {
        admin_error(req, 400, err);
        return;
    }
    struct admin_query *q = admin_query_new(a, req);
    if (!q) return;
    q->add_pool = 1;
    metrics_query(a->src.metrics, &mq, a->base, admin_query_done, q);
}

static void admin_audit(struct admin *a, struct httpd_req *req) {
    struct audit_query aq;
    char err[256];
    if (!a->src.audit) {
        admin_json(req, 503, "{\"error\":\"the audit is not running\"}");
        return;
    }
    if (audit_query_parse(req->query, &aq, err, sizeof(err)) != 0) {
        admin_error(req, 400, err);
        return;
    }
    struct admin_query *q = admin_query_new(a, req);
    if (q) audit_query(a->src.audit, &aq, a->base, admin_query_done, q);
}

static void admin_metrics(struct admin *a, struct httpd_req *req) {
    struct strbuf b;
    struct stats_process p = *a->src.process;
    if (a->src.metrics) {
        struct metrics_stats ms;
        metrics_get_stats(a->src.metrics, &ms);
        p.has_metrics = 1;
        p.metrics_flushes = ms.flushes;
        p.metrics_flush_errors = ms.flush_errors;
    }
    if (a->src.store && strcmp(store_shared_kind(a->src.store), "redis") == 0) {
        p.has_heartbeat = 1;
        p.live_instances = store_live_instances(a->src.store);
    }
    if (a->src.audit) {
        struct audit_stats as;
        audit_get_stats(a->src.audit, &as);
        p.has_audit = 1;
        p.audit_queue_depth = as.queue_depth;
        p.audit_spool_records = as.spool_depth;
        p.audit_written = as.written;
        p.audit_spooled = as.spooled;
        p.audit_replayed = as.replayed;
        p.audit_overflowed = as.overflowed;
        p.audit_held_records = as.held_records;
        p.audit_overflow_records = as.overflow_records;
        p.audit_file_errors = as.file_errors;
    }
    strbuf_init(&b);
    if (stats_render(&b, a->src.workers, a->src.n_workers, &p) != 0 ||
        (a->src.pool && pool_render_metrics(a->src.pool, &b) != 0)) {
        strbuf_cleanup(&b);
        admin_json(req, 500, "{\"error\":\"out of memory\"}");
        return;
    }
    httpd_reply(req, 200, "text/plain; version=0.0.4", b.s ? b.s : "", b.len);
    strbuf_cleanup(&b);
}

/* Ready while not draining. A store that is down does not make the gateway unready: requests
 * are still served per on_store_error; the JSON says so for operators. */
static void admin_ready(struct admin *a, struct httpd_req *req) {
    char body[160];
    int store_up = stats_store_connected(a->src.workers, a->src.n_workers);
    snprintf(body, sizeof(body), "{\"status\":\"%s\",\"store\":\"%s\",\"audit\":\"%s\"}",
             *a->src.draining ? "draining" : "ready", store_up ? "up" : "down",
             a->src.audit ? audit_state_name(a->src.audit) : "off");
    admin_json(req, *a->src.draining ? 503 : 200, body);
}

/* The request carries "Authorization: Bearer <token>" (RFC 6750 section 2.1; the scheme is
 * case-insensitive, RFC 9110 section 11.1). Both sides are hashed first so the comparison takes
 * the same time whatever the sent value's length or first wrong byte. */
static int admin_authorized(const struct admin *a, const struct httpd_req *req) {
    unsigned char want[SHA256_DIGEST_LENGTH], got[SHA256_DIGEST_LENGTH];
    const char *sent = NULL;
    if (!a->src.token) return 1;
    for (size_t i = 0; i < req->header_count; i++) {
        if (strcasecmp(req->headers[i].name, "Authorization") == 0) {
            sent = req->headers[i].value;
            break;
        }
    }
    if (!sent || strncasecmp(sent, "Bearer ", 7) != 0) return 0;
    sent += 7;
    while (*sent == ' ') sent++;
    SHA256((const unsigned char *)a->src.token, strlen(a->src.token), want);
    SHA256((const unsigned char *)sent, strlen(sent), got);
    return CRYPTO_memcmp(want, got, sizeof want) == 0;
}

static void admin_config(struct admin *a, struct httpd_req *req) {
    char *dump = a->src.dump_config ? a->src.dump_config(a->src.dump_arg) : NULL;
    if (!dump) {
        admin_json(req, 500, "{\"error\":\"out of memory\"}");
        return;
    }
    admin_json(req, 200, dump);
    free(dump);
}

static void admin_handle(struct httpd_req *req, void *arg) {
    struct admin *a = arg;
    if (req->error_status) {
        admin_json(req, req->error_status, "{\"error\":\"malformed request\"}");
        return;
    }
    int get = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
    /* The probes stay open: an orchestrator's health check carries no token. */
    if (get && strcmp(req->path, "/healthz") == 0) {
        admin_json(req, 200, "{\"status\":\"ok\"}");
        return;
    } else if (get && strcmp(req->path, "/readyz") == 0) {
        admin_ready(a, req);
        return;
    }
    /* The dashboard's files hold no data (its script fetches the endpoints below with the
     * token), so a browser can load the page before it has a token to send. */
    if (dashboard_handle(req, a->src.token != NULL, admin_authorized(a, req))) return;
    if (!admin_authorized(a, req)) {
        admin_json(req, 401,
                   "{\"error\":\"unauthorized: this admin listener needs "
                   "'Authorization: Bearer <admin token>' (admin.token_file)\"}");
        return;
    }
    if (demo_handle(a->src.demo, req)) return;
    if (get && strcmp(req->path, "/metrics") == 0) {
        admin_metrics(a, req);
    } else if (get && strcmp(req->path, "/admin/stats") == 0) {
        admin_stats(a, req);
    } else if (get && strcmp(req->path, "/admin/audit") == 0) {
        admin_audit(a, req);
    } else if (get && strcmp(req->path, "/admin/config") == 0) {
        admin_config(a, req);
    } else if (strcmp(req->path, "/healthz") == 0 || strcmp(req->path, "/readyz") == 0 ||
               strcmp(req->path, "/metrics") == 0 || strcmp(req->path, "/admin/stats") == 0 ||
               strcmp(req->path, "/admin/audit") == 0 || strcmp(req->path, "/admin/config") == 0) {
        admin_json(req, 405, "{\"error\":\"method not allowed; use GET\"}");
    } else {
        admin_json(req, 404,
                   "{\"error\":\"not found; try /healthz, /readyz, /metrics, "
                   "/admin/stats, /admin/audit, /admin/config or /dashboard\"}");
    }
}

struct admin *admin_new(struct event_base *base, const struct admin_source *src) {
    struct httpd_limits lim;
    struct admin *a = calloc(1, sizeof(*a));
    if (!a) return NULL;
    a->base = base;
    a->src = *src;
    httpd_limits_default(&lim);
    lim.max_connections = ADMIN_MAX_CONNECTIONS;
    a->httpd = httpd_new(base, &lim, admin_handle, a);
    if (!a->httpd) {
        free(a);
        return NULL;
    }
    return a;
}

int admin_listen(struct admin *a, const char *host, int port, char *err, size_t errlen) {
    return httpd_listen(a->httpd, host, port, NULL, 0, err, errlen);
}

size_t admin_pending(const struct admin *a) {
    return a ? a->pending : 0;
}

void admin_stop_accepting(struct admin *a) {
    if (a) httpd_stop_accepting(a->httpd);
}

void admin_free(struct admin *a) {
    if (!a) return;
    if (a->pending)
        log_error("admin: freed with %zu query(ies) in flight; their replies are lost", a->pending);
    httpd_free(a->httpd);
    free(a);
}
