/* dashboard.c: serves the files of proxy/dashboard/ (embedded at build time by
 * cmake/embed_files.cmake) under a strict Content-Security-Policy: scripts and styles only from
 * this origin, no inline code, no eval, no frames, fetches only to this origin. None of the files
 * holds data, so they need no token; every number the page shows comes from an admin endpoint
 * that does. */
#include "dashboard.h"

#include <string.h>

#include "capgate/httpd.h"
#include "embedded.h"

#define DASHBOARD_PREFIX "/dashboard"

/* 'self' everywhere the page needs it and nothing else: the page's own module scripts and
 * stylesheet, fetch() to the admin endpoints, the inline SVG it draws (no external image), and
 * the data: favicon that keeps the browser from asking for /favicon.ico. */
#define DASHBOARD_CSP \
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " \
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; " \
    "frame-ancestors 'none'"

static const char *content_type(const char *name) {
    const char *dot = strrchr(name, '.');
    if (dot && strcmp(dot, ".html") == 0) return "text/html; charset=utf-8";
    if (dot && strcmp(dot, ".css") == 0) return "text/css; charset=utf-8";
    /* .mjs: ES modules, which a browser runs only when served as JavaScript. */
    if (dot && (strcmp(dot, ".mjs") == 0 || strcmp(dot, ".js") == 0))
        return "text/javascript; charset=utf-8";
    return "application/octet-stream";
}

static void common_headers(struct httpd_req *req) {
    httpd_add_header(req, "Content-Security-Policy", DASHBOARD_CSP);
    httpd_add_header(req, "X-Content-Type-Options", "nosniff");
    httpd_add_header(req, "X-Frame-Options", "DENY");
    httpd_add_header(req, "Referrer-Policy", "no-referrer");
    /* The files change with the binary; a reload after an upgrade must not mix versions. */
    httpd_add_header(req, "Cache-Control", "no-store");
}

static void reply_json(struct httpd_req *req, int status, const char *body) {
    common_headers(req);
    httpd_reply(req, status, "application/json", body, strlen(body));
}

static const struct embedded_file *find_file(const char *name) {
    for (const struct embedded_file *f = dashboard_files; f->name; f++)
        if (strcmp(f->name, name) == 0) return f;
    return NULL;
}

int dashboard_handle(struct httpd_req *req, int token_required, int authorized) {
    const char *path = req->path;
    size_t n = strlen(DASHBOARD_PREFIX);
    if (strncmp(path, DASHBOARD_PREFIX, n) != 0 || (path[n] != '\0' && path[n] != '/')) return 0;
    if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
        httpd_add_header(req, "Allow", "GET, HEAD");
        reply_json(req, 405, "{\"error\":\"method not allowed; use GET\"}");
        return 1;
    }
    const char *name = path[n] == '\0' || path[n + 1] == '\0' ? "index.html" : path + n + 1;
    if (strcmp(name, "auth") == 0) {
        /* Whether the page must ask for a token, and whether the one it sent is right, as a 200
         * either way: a 401 would put an error in the browser's console. It tells no more
         * than a 401 from /metrics would. */
        reply_json(req, 200,
                   token_required ? (authorized ? "{\"token_required\":true,\"authorized\":true}"
                                                : "{\"token_required\":true,\"authorized\":false}")
                                  : "{\"token_required\":false,\"authorized\":true}");
        return 1;
    }
    const struct embedded_file *f = find_file(name);
    if (!f) {
        reply_json(req, 404, "{\"error\":\"not found; the dashboard is /dashboard\"}");
        return 1;
    }
    common_headers(req);
    httpd_reply(req, 200, content_type(f->name), (const char *)f->data, f->len);
    return 1;
}
