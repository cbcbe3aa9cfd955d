/* admin.c: health, readiness and metrics for operators and orchestrators. It runs on the main
 * thread, which owns no request path, so a slow scrape never delays an API request. */
#include "admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/httpd.h"
#include "capgate/log.h"
#include "capgate/strbuf.h"
#include "demo.h"
#include "stats.h"

#define ADMIN_JSON "application/json"

struct admin {
    struct httpd *httpd;
    struct admin_source src;
};

static void admin_json(struct httpd_req *req, int status, const char *body) {
    httpd_reply(req, status, ADMIN_JSON, body, strlen(body));
}

static void admin_metrics(struct admin *a, struct httpd_req *req) {
    struct strbuf b;
    strbuf_init(&b);
    if (stats_render(&b, a->src.workers, a->src.n_workers, a->src.process) != 0) {
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
    char body[128];
    int store_up = stats_store_connected(a->src.workers, a->src.n_workers);
    snprintf(body, sizeof(body), "{\"status\":\"%s\",\"store\":\"%s\"}",
             *a->src.draining ? "draining" : "ready", store_up ? "up" : "down");
    admin_json(req, *a->src.draining ? 503 : 200, body);
}

static void admin_handle(struct httpd_req *req, void *arg) {
    struct admin *a = arg;
    if (req->error_status) {
        admin_json(req, req->error_status, "{\"error\":\"malformed request\"}");
        return;
    }
    if (demo_handle(a->src.demo, req)) return;
    int get = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
    if (get && strcmp(req->path, "/healthz") == 0) {
        admin_json(req, 200, "{\"status\":\"ok\"}");
    } else if (get && strcmp(req->path, "/readyz") == 0) {
        admin_ready(a, req);
    } else if (get && strcmp(req->path, "/metrics") == 0) {
        admin_metrics(a, req);
    } else if (strcmp(req->path, "/healthz") == 0 || strcmp(req->path, "/readyz") == 0 ||
               strcmp(req->path, "/metrics") == 0) {
        admin_json(req, 405, "{\"error\":\"method not allowed; use GET\"}");
    } else {
        admin_json(req, 404, "{\"error\":\"not found; try /healthz, /readyz or /metrics\"}");
    }
}

struct admin *admin_new(struct event_base *base, const struct admin_source *src) {
    struct httpd_limits lim;
    struct admin *a = calloc(1, sizeof(*a));
    if (!a) return NULL;
    a->src = *src;
    httpd_limits_default(&lim);
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

void admin_free(struct admin *a) {
    if (!a) return;
    httpd_free(a->httpd);
    free(a);
}
