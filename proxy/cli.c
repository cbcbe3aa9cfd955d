/* cli.c: capgate stats | audit | top | health, clients of the admin API (cli.h). Each request
 * runs the CLI's own event loop until its reply (or the timeout) arrives: a blocking call in
 * effect, which suits a command line. Tables are built whole, then printed with every column as
 * wide as its widest cell; numbers right-aligned. */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "capgate/num.h"
#include "capgate/strbuf.h"
#include "minute_stats.h"
#include "record.h"

#define CLI_DEFAULT_ADMIN "http://127.0.0.1:8081" /* config.c's default admin_listen */
#define CLI_TIMEOUT_S 10
#define CLI_TOKEN_MAX 65536

/* ---- pure parts ---- */

int cli_parse_duration(const char *s, uint64_t *seconds) {
    size_t len = s ? strlen(s) : 0;
    uint64_t unit = 1, v;
    if (len == 0) return -1;
    switch (s[len - 1]) {
    case 's': len--; break;
    case 'm': unit = 60, len--; break;
    case 'h': unit = 3600, len--; break;
    case 'd': unit = 86400, len--; break;
    default: break;
    }
    if (num_parse_range(s, len, 1, 10ull * 366 * 86400, &v) != 0 || v * unit > 10ull * 366 * 86400)
        return -1;
    *seconds = v * unit;
    return 0;
}

/* The upper bounds of le_1ms .. le_5s, as minute_stats.c counts them. */
static const uint64_t bucket_bounds_us[METRICS_BUCKETS - 1] = {1000,   5000,   10000,   50000,
                                                               100000, 500000, 1000000, 5000000};

uint64_t cli_bucket_quantile(const uint64_t *buckets, double q) {
    uint64_t total = 0, seen = 0;
    for (unsigned i = 0; i < METRICS_BUCKETS; i++) total += buckets[i];
    if (!total) return 0;
    for (unsigned i = 0; i < METRICS_BUCKETS; i++) {
        seen += buckets[i];
        if ((double)seen >= q * (double)total)
            return i < METRICS_BUCKETS - 1 ? bucket_bounds_us[i] : UINT64_MAX;
    }
    return UINT64_MAX;
}

/* ---- options ---- */

struct cli_opts {
    const char *admin;      /* base URL */
    const char *token_file; /* --token-file */
    int json;
    /* stats, audit */
    const char *business, *scene, *app, *decision, *code, *group, *since, *step, *limit;
    int series, follow;
    /* top */
    long iterations; /* -n; 0: until interrupted */
    uint64_t interval_s;
};

static void usage(FILE *out) {
    fprintf(out,
            "usage: capgate stats  [--business N|-] [--scene N|-] [--app NAME] [--since 1h]\n"
            "                      [--step 1m] [--group business|scene|app|none] [--series]\n"
            "       capgate audit  [--business N] [--scene N] [--app NAME] [--decision D]\n"
            "                      [--code N] [--since 10m] [--limit N] [--follow]\n"
            "                      [--interval 1s]\n"
            "       capgate top    [--interval 1s] [--once | -n N]\n"
            "       capgate health\n"
            "Common options: --admin URL (default $CAPGATE_ADMIN_URL, else %s),\n"
            "  --token-file FILE (default: the token in $CAPGATE_ADMIN_TOKEN), --json (the\n"
            "  admin API's JSON: stats and health one object, audit one record per line, top one\n"
            "  snapshot per line), --help.\n"
            "Exit status: 0 done (health: ready), 1 the gateway failed or is not ready, 2 usage.\n",
            CLI_DEFAULT_ADMIN);
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...) {
    va_list ap;
    fputs("capgate: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    usage(stderr);
    return 2;
}

const char *cli_flag_value(int argc, char **argv, int *i, const char *name, int *missing) {
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0) return NULL;
    if (argv[*i][n] == '=') return argv[*i] + n + 1;
    if (argv[*i][n] != '\0') return NULL;
    if (*i + 1 >= argc) {
        *missing = 1;
        return NULL;
    }
    return argv[++*i];
}

/* Which options a subcommand takes. */
enum { OPT_FILTERS = 1, OPT_STATS = 2, OPT_AUDIT = 4, OPT_TOP = 8 };

static int parse_opts(int argc, char **argv, unsigned allowed, struct cli_opts *o) {
    memset(o, 0, sizeof(*o));
    o->interval_s = 1;
    for (int i = 1; i < argc; i++) {
        int missing = 0;
        const char *v;
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if ((v = cli_flag_value(argc, argv, &i, "--admin", &missing))) {
            o->admin = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--token-file", &missing))) {
            o->token_file = v;
        } else if (strcmp(a, "--json") == 0) {
            o->json = 1;
        } else if ((allowed & OPT_FILTERS) &&
                   (v = cli_flag_value(argc, argv, &i, "--business", &missing))) {
            o->business = v;
        } else if ((allowed & OPT_FILTERS) &&
                   (v = cli_flag_value(argc, argv, &i, "--scene", &missing))) {
            o->scene = v;
        } else if ((allowed & OPT_FILTERS) &&
                   (v = cli_flag_value(argc, argv, &i, "--app", &missing))) {
            o->app = v;
        } else if ((allowed & (OPT_STATS | OPT_AUDIT)) &&
                   (v = cli_flag_value(argc, argv, &i, "--since", &missing))) {
            o->since = v;
        } else if ((allowed & OPT_STATS) &&
                   (v = cli_flag_value(argc, argv, &i, "--step", &missing))) {
            o->step = v;
        } else if ((allowed & OPT_STATS) &&
                   (v = cli_flag_value(argc, argv, &i, "--group", &missing))) {
            o->group = v;
        } else if ((allowed & OPT_STATS) && strcmp(a, "--series") == 0) {
            o->series = 1;
        } else if ((allowed & OPT_AUDIT) &&
                   (v = cli_flag_value(argc, argv, &i, "--decision", &missing))) {
            o->decision = v;
        } else if ((allowed & OPT_AUDIT) &&
                   (v = cli_flag_value(argc, argv, &i, "--code", &missing))) {
            o->code = v;
        } else if ((allowed & OPT_AUDIT) &&
                   (v = cli_flag_value(argc, argv, &i, "--limit", &missing))) {
            o->limit = v;
        } else if ((allowed & OPT_AUDIT) && (strcmp(a, "--follow") == 0 || strcmp(a, "-f") == 0)) {
            o->follow = 1;
        } else if ((allowed & (OPT_AUDIT | OPT_TOP)) &&
                   (v = cli_flag_value(argc, argv, &i, "--interval", &missing))) {
            if (cli_parse_duration(v, &o->interval_s) != 0 || o->interval_s > 3600)
                return usage_error("--interval must be a duration of 1s to 1h; got \"%s\"", v);
        } else if ((allowed & OPT_TOP) && strcmp(a, "--once") == 0) {
            o->iterations = 1;
        } else if ((allowed & OPT_TOP) && (v = cli_flag_value(argc, argv, &i, "-n", &missing))) {
            uint64_t n;
            if (num_parse_range(v, strlen(v), 1, 1000000, &n) != 0)
                return usage_error("-n must be 1..1000000; got \"%s\"", v);
            o->iterations = (long)n;
        } else if (missing) {
            return usage_error("%s needs a value", a);
        } else {
            return usage_error("%s: unknown option %s", argv[0], a);
        }
    }
    if (!o->admin) o->admin = getenv("CAPGATE_ADMIN_URL");
    if (!o->admin || !*o->admin) o->admin = CLI_DEFAULT_ADMIN;
    return 0;
}

/* ---- the HTTP client ---- */

struct cli_http {
    struct event_base *base;
    struct evhttp_connection *conn;
    struct evhttp_uri *uri;
    char host[256];
    int port;
    char prefix[512]; /* the URL's path without its trailing '/' */
    char *token;      /* NULL: none */
};

struct cli_reply {
    struct event_base *base;
    int done, status;
    enum evhttp_request_error error;
    int has_error;
    struct strbuf body;
};

static void http_error(enum evhttp_request_error e, void *arg) {
    struct cli_reply *r = arg;
    r->has_error = 1;
    r->error = e;
}

static void http_done(struct evhttp_request *req, void *arg) {
    struct cli_reply *r = arg;
    r->done = 1;
    if (req && evhttp_request_get_response_code(req)) {
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t n = evbuffer_get_length(in);
        r->status = evhttp_request_get_response_code(req);
        if (n) {
            const unsigned char *p = evbuffer_pullup(in, -1);
            if (p) strbuf_append(&r->body, (const char *)p, n);
        }
    }
    event_base_loopexit(r->base, NULL);
}

static const char *http_error_name(const struct cli_reply *r) {
    if (!r->has_error) return "no answer";
    switch (r->error) {
    case EVREQ_HTTP_TIMEOUT: return "timed out";
    case EVREQ_HTTP_EOF: return "connection refused or closed";
    case EVREQ_HTTP_INVALID_HEADER: return "malformed reply";
    case EVREQ_HTTP_BUFFER_ERROR: return "connection error";
    default: return "request failed";
    }
}

/* Reads the token: --token-file, else $CAPGATE_ADMIN_TOKEN. 0, or -1 (said why). */
static int http_token(struct cli_http *h, const struct cli_opts *o) {
    const char *env = getenv("CAPGATE_ADMIN_TOKEN");
    if (o->token_file) {
        FILE *f = fopen(o->token_file, "r");
        char *buf;
        size_t n;
        if (!f) {
            fprintf(stderr, "capgate: --token-file %s: %s\n", o->token_file, strerror(errno));
            return -1;
        }
        if (!(buf = malloc(CLI_TOKEN_MAX + 1))) {
            fclose(f);
            fprintf(stderr, "capgate: out of memory\n");
            return -1;
        }
        n = fread(buf, 1, CLI_TOKEN_MAX + 1, f);
        fclose(f);
        if (n > CLI_TOKEN_MAX) {
            free(buf);
            fprintf(stderr, "capgate: --token-file %s: larger than 64 KiB\n", o->token_file);
            return -1;
        }
        if (n && buf[n - 1] == '\n') n--; /* one trailing newline, as config.c's *_file */
        if (n && buf[n - 1] == '\r') n--;
        buf[n] = '\0';
        h->token = buf;
    } else if (env && *env) {
        h->token = strdup(env);
        if (!h->token) return -1;
    }
    return 0;
}

static void http_close(struct cli_http *h) {
    if (h->conn) evhttp_connection_free(h->conn);
    if (h->uri) evhttp_uri_free(h->uri);
    if (h->base) event_base_free(h->base);
    if (h->token) {
        memset(h->token, 0, strlen(h->token));
        free(h->token);
    }
    memset(h, 0, sizeof(*h));
}

static int http_open(struct cli_http *h, const struct cli_opts *o) {
    const char *scheme, *host, *path;
    memset(h, 0, sizeof(*h));
    if (!(h->uri = evhttp_uri_parse(o->admin)) || !(scheme = evhttp_uri_get_scheme(h->uri)) ||
        strcmp(scheme, "http") != 0 || !(host = evhttp_uri_get_host(h->uri)) || !*host) {
        fprintf(stderr,
                "capgate: the admin URL must be http://HOST[:PORT] (the admin listener is plain "
                "HTTP); got \"%s\"\n",
                o->admin);
        http_close(h);
        return -1;
    }
    snprintf(h->host, sizeof(h->host), "%s", host);
    h->port = evhttp_uri_get_port(h->uri) > 0 ? evhttp_uri_get_port(h->uri) : 80;
    path = evhttp_uri_get_path(h->uri);
    snprintf(h->prefix, sizeof(h->prefix), "%s", path ? path : "");
    size_t pl = strlen(h->prefix);
    while (pl && h->prefix[pl - 1] == '/') h->prefix[--pl] = '\0';
    if (http_token(h, o) != 0 || !(h->base = event_base_new()) ||
        !(h->conn = evhttp_connection_base_new(h->base, NULL, h->host, (unsigned short)h->port))) {
        if (h->base && !h->conn) fprintf(stderr, "capgate: cannot make a connection\n");
        http_close(h);
        return -1;
    }
    evhttp_connection_set_timeout(h->conn, CLI_TIMEOUT_S);
    evhttp_connection_set_retries(h->conn, 0);
    return 0;
}

/* GET prefix + path_query. 0 with the status and body in r (the caller cleans r->body), or -1
 * after saying on stderr why nothing came back. */
static int http_get(struct cli_http *h, const char *path_query, struct cli_reply *r) {
    char uri[2048], auth[CLI_TOKEN_MAX + 16];
    struct evhttp_request *req;
    struct evkeyvalq *hdr;
    memset(r, 0, sizeof(*r));
    strbuf_init(&r->body);
    r->base = h->base;
    snprintf(uri, sizeof(uri), "%s%s", h->prefix, path_query);
    if (!(req = evhttp_request_new(http_done, r))) goto oom;
    evhttp_request_set_error_cb(req, http_error);
    hdr = evhttp_request_get_output_headers(req);
    evhttp_add_header(hdr, "Host", h->host);
    evhttp_add_header(hdr, "Accept", "application/json");
    if (h->token) {
        snprintf(auth, sizeof(auth), "Bearer %s", h->token);
        evhttp_add_header(hdr, "Authorization", auth);
        memset(auth, 0, sizeof(auth));
    }
    if (evhttp_make_request(h->conn, req, EVHTTP_REQ_GET, uri) != 0) {
        fprintf(stderr, "capgate: cannot send GET %s\n", uri);
        return -1; /* evhttp freed req */
    }
    event_base_dispatch(h->base);
    if (!r->done || !r->status) {
        fprintf(stderr, "capgate: GET http://%s:%d%s: %s\n", h->host, h->port, uri,
                http_error_name(r));
        strbuf_cleanup(&r->body);
        return -1;
    }
    return 0;
oom:
    fprintf(stderr, "capgate: out of memory\n");
    return -1;
}

/* GET path_query as JSON with status 200; NULL after saying why (the API's "error" text when it
 * gave one). */
static json_t *http_json(struct cli_http *h, const char *path_query, char **raw) {
    struct cli_reply r;
    json_error_t jerr;
    json_t *j;
    if (raw) *raw = NULL;
    if (http_get(h, path_query, &r) != 0) return NULL;
    j = r.body.s ? json_loadb(r.body.s, r.body.len, 0, &jerr) : NULL;
    if (r.status != 200) {
        const char *e = j ? json_string_value(json_object_get(j, "error")) : NULL;
        fprintf(stderr, "capgate: GET %s: HTTP %d: %s\n", path_query, r.status,
                e ? e : (r.body.s ? r.body.s : ""));
        json_decref(j);
        j = NULL;
    } else if (!j) {
        fprintf(stderr, "capgate: GET %s: the answer is not JSON: %s\n", path_query, jerr.text);
    } else if (raw) {
        *raw = strbuf_detach(&r.body);
    }
    strbuf_cleanup(&r.body);
    return j;
}

/* ---- tables ---- */

struct table {
    size_t ncols;
    char **cells; /* row-major, heap strings */
    size_t n, cap;
    const char *right; /* per column: 'r' right-aligned, else left */
};

static void table_init(struct table *t, size_t ncols, const char *right) {
    memset(t, 0, sizeof(*t));
    t->ncols = ncols;
    t->right = right;
}

static void table_cell(struct table *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void table_cell(struct table *t, const char *fmt, ...) {
    va_list ap;
    char buf[512];
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        char **cells = realloc(t->cells, cap * sizeof(*cells));
        if (!cells) return;
        t->cells = cells;
        t->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if ((t->cells[t->n] = strdup(buf))) t->n++;
}

static void table_print(struct table *t, FILE *out) {
    size_t width[32] = {0};
    size_t rows = t->n / t->ncols;
    for (size_t i = 0; i < rows * t->ncols; i++) {
        size_t w = strlen(t->cells[i]);
        if (w > width[i % t->ncols]) width[i % t->ncols] = w;
    }
    for (size_t r = 0; r < rows; r++) {
        for (size_t c = 0; c < t->ncols; c++) {
            const char *s = t->cells[r * t->ncols + c];
            int w = (int)width[c];
            if (c + 1 == t->ncols && t->right[c] != 'r')
                fprintf(out, "%s", s); /* no trailing blanks */
            else
                fprintf(out, t->right[c] == 'r' ? "%*s" : "%-*s", w, s);
            if (c + 1 < t->ncols) fputs("  ", out);
        }
        fputc('\n', out);
    }
    for (size_t i = 0; i < t->n; i++) free(t->cells[i]);
    free(t->cells);
    memset(t, 0, sizeof(*t));
}

/* ---- numbers from the API's JSON ---- */

static uint64_t jnum(const json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

/* A group's or the totals' id text: a number, a string, or "-". */
static void jid(const json_t *o, const char *key, char *buf, size_t len) {
    json_t *v = json_object_get(o, key);
    if (json_is_integer(v))
        snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else if (json_is_string(v))
        snprintf(buf, len, "%s", json_string_value(v));
    else
        snprintf(buf, len, "-");
}

static void fmt_ms(char *buf, size_t len, uint64_t us) {
    if (us == UINT64_MAX)
        snprintf(buf, len, ">5000");
    else
        snprintf(buf, len, "%.1f", (double)us / 1000.0);
}

static void fmt_time(char *buf, size_t len, uint64_t unix_s, int with_date) {
    time_t t = (time_t)unix_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, len, with_date ? "%Y-%m-%dT%H:%M:%SZ" : "%H:%M:%SZ", &tm);
}

/* The decision columns of the tables, by their /admin/stats field names. */
static const char *const decision_cols[PIPELINE_DECISION_COUNT] = {
    "forwarded", "pool",         "replayed", "limited",       "shadow_limited",
    "invalid",   "unauthorized", "denied",   "upstream_error"};
static const char *const decision_heads[PIPELINE_DECISION_COUNT] = {
    "FORWARDED", "POOL", "REPLAYED", "LIMITED", "SHADOW", "INVALID", "UNAUTH", "DENIED", "UP_ERR"};

/* One row of counts: requests, decisions, avg/p50/p95/p99 latency in ms. */
static void counts_row(struct table *t, const json_t *c) {
    uint64_t req = jnum(c, "requests"), buckets[METRICS_BUCKETS];
    char ms[32];
    table_cell(t, "%" PRIu64, req);
    for (unsigned d = 0; d < PIPELINE_DECISION_COUNT; d++)
        table_cell(t, "%" PRIu64, jnum(c, decision_cols[d]));
    for (unsigned b = 0; b < METRICS_BUCKETS; b++) buckets[b] = jnum(c, metrics_bucket_name(b));
    if (req)
        table_cell(t, "%.1f", (double)jnum(c, "latency_us_sum") / (double)req / 1000.0);
    else
        table_cell(t, "-");
    static const double qs[3] = {0.5, 0.95, 0.99};
    for (unsigned i = 0; i < 3; i++) {
        if (!req) {
            table_cell(t, "-");
            continue;
        }
        fmt_ms(ms, sizeof(ms), cli_bucket_quantile(buckets, qs[i]));
        table_cell(t, "<=%s", ms);
    }
}

static void counts_head(struct table *t) {
    table_cell(t, "REQUESTS");
    for (unsigned d = 0; d < PIPELINE_DECISION_COUNT; d++) table_cell(t, "%s", decision_heads[d]);
    table_cell(t, "AVG_MS");
    table_cell(t, "P50_MS");
    table_cell(t, "P95_MS");
    table_cell(t, "P99_MS");
}

#define COUNT_COLS (1 + PIPELINE_DECISION_COUNT + 4)

static void say_partial(const json_t *j) {
    if (json_is_true(json_object_get(j, "partial"))) {
        const char *why = json_string_value(json_object_get(j, "reason"));
        fprintf(stderr, "capgate: partial answer: %s\n", why ? why : "(no reason given)");
    }
}

/* stdout is a pipe whose reader left: stop quietly. */
static int out_flush(void) {
    if (fflush(stdout) != 0 && errno == EPIPE) exit(0);
    return 0;
}

/* ---- capgate stats ---- */

static int append_param(struct strbuf *q, const char *name, const char *value) {
    char *enc = evhttp_encode_uri(value);
    int rc = !enc || strbuf_appendf(q, "%s%s=%s", q->len ? "&" : "", name, enc);
    free(enc);
    return rc ? -1 : 0;
}

static int cmd_stats(int argc, char **argv) {
    struct cli_opts o;
    struct cli_http h;
    struct strbuf q;
    uint64_t since = 3600, step = 60, now = (uint64_t)time(NULL);
    char *raw = NULL, path[2048];
    json_t *j;
    int rc = 1;
    if (parse_opts(argc, argv, OPT_FILTERS | OPT_STATS, &o) != 0) return 2;
    if (o.since && cli_parse_duration(o.since, &since) != 0)
        return usage_error("--since must be a duration (90s, 15m, 1h, 2d); got \"%s\"", o.since);
    if (o.step && (cli_parse_duration(o.step, &step) != 0 || step % 60 != 0))
        return usage_error("--step must be whole minutes (1m, 5m, 1h); got \"%s\"", o.step);
    /* without --step: whole minutes, as few as keep the span (since, plus the minute alignment
     * of from and the current second) within the API's METRICS_QUERY_MAX_STEPS */
    if (!o.step)
        while ((since + 61 + step - 1) / step > METRICS_QUERY_MAX_STEPS) step += 60;
    strbuf_init(&q);
    char from[32], to[32], st[32];
    snprintf(from, sizeof(from), "%" PRIu64, now > since ? now - since : 0);
    snprintf(to, sizeof(to), "%" PRIu64, now + 1);
    snprintf(st, sizeof(st), "%" PRIu64, step);
    if (append_param(&q, "from", from) || append_param(&q, "to", to) ||
        append_param(&q, "step", st) || append_param(&q, "fill", "none") ||
        (o.business && append_param(&q, "businessId", o.business)) ||
        (o.scene && append_param(&q, "sceneId", o.scene)) ||
        (o.app && append_param(&q, "app", o.app)) ||
        (o.group && append_param(&q, "group", o.group))) {
        strbuf_cleanup(&q);
        fprintf(stderr, "capgate: out of memory\n");
        return 1;
    }
    snprintf(path, sizeof(path), "/admin/stats?%s", q.s);
    strbuf_cleanup(&q);
    if (http_open(&h, &o) != 0) return 1;
    if (!(j = http_json(&h, path, &raw))) goto out;
    rc = 0;
    say_partial(j);
    if (o.json) {
        printf("%s\n", raw);
        goto out;
    }
    const char *group = json_string_value(json_object_get(j, "group"));
    int by_app = group && strcmp(group, "app") == 0;
    int business_only = group && strcmp(group, "business") == 0;
    size_t idcols = by_app || business_only ? 1 : 2;
    char right[64];
    memset(right, 'r', sizeof(right));
    memset(right, 'l', idcols); /* the ids left, the numbers right */
    struct table t;
    table_init(&t, idcols + COUNT_COLS, right);
    if (by_app) {
        table_cell(&t, "APP");
    } else {
        table_cell(&t, "BUSINESS");
        if (!business_only) table_cell(&t, "SCENE");
    }
    counts_head(&t);
    size_t i;
    json_t *g;
    char a[96], b[32];
    json_array_foreach(json_object_get(j, "groups"), i, g) {
        if (by_app) {
            jid(g, "app", a, sizeof(a));
            table_cell(&t, "%s", a);
        } else {
            jid(g, "businessId", b, sizeof(b));
            table_cell(&t, "%s", b);
            if (!business_only) {
                jid(g, "sceneId", b, sizeof(b));
                table_cell(&t, "%s", b);
            }
        }
        counts_row(&t, json_object_get(g, "totals"));
    }
    table_cell(&t, "TOTAL");
    if (idcols == 2) table_cell(&t, " ");
    counts_row(&t, json_object_get(j, "totals"));
    fmt_time(a, sizeof(a), jnum(j, "from"), 1);
    fmt_time(b, sizeof(b), jnum(j, "to"), 1);
    printf("%s .. %s, step %" PRIu64 " s, by %s%s\n", a, b, jnum(j, "step"), group ? group : "?",
           json_is_true(json_object_get(j, "partial")) ? " (PARTIAL: this instance only)" : "");
    table_print(&t, stdout);
    if (o.series) {
        struct table s;
        char sr[64];
        memset(sr, 'r', sizeof(sr));
        sr[0] = 'l';
        table_init(&s, 1 + COUNT_COLS, sr);
        table_cell(&s, "TIME");
        counts_head(&s);
        json_array_foreach(json_object_get(j, "series"), i, g) {
            fmt_time(a, sizeof(a), jnum(g, "ts"), 1);
            table_cell(&s, "%s", a);
            counts_row(&s, g);
        }
        printf("\n");
        table_print(&s, stdout);
    }
out:
    free(raw);
    json_decref(j);
    http_close(&h);
    return rc;
}

/* ---- capgate audit ---- */

static void audit_head(struct table *t) {
    static const char *const heads[] = {"TIME",     "REQUEST_ID", "APP",      "ACTION",
                                        "BUSINESS", "SCENE",      "DECISION", "RULE",
                                        "CODE",     "MS",         "CLIENT_IP"};
    for (size_t i = 0; i < sizeof(heads) / sizeof(heads[0]); i++) table_cell(t, "%s", heads[i]);
}

static const char *jstr(const json_t *o, const char *key) {
    const char *s = json_string_value(json_object_get(o, key));
    return s && *s ? s : "-";
}

static void audit_row(struct table *t, const json_t *r) {
    char b[32];
    table_cell(t, "%s", jstr(r, "ts"));
    table_cell(t, "%s", jstr(r, "request_id"));
    table_cell(t, "%s", jstr(r, "app"));
    table_cell(t, "%s", jstr(r, "action"));
    jid(r, "businessId", b, sizeof(b));
    table_cell(t, "%s", b);
    jid(r, "sceneId", b, sizeof(b));
    table_cell(t, "%s", b);
    table_cell(t, "%s", jstr(r, "decision"));
    table_cell(t, "%s", jstr(r, "rule"));
    jid(r, "code", b, sizeof(b));
    table_cell(t, "%s", b);
    table_cell(t, "%.1f", (double)jnum(r, "latency_us") / 1000.0);
    table_cell(t, "%s", jstr(r, "client_ip"));
}

/* The record's ts ("2026-11-28T18:30:27.548Z") in Unix milliseconds; 0 when it is not one. */
static uint64_t iso_ms(const char *s) {
    struct tm tm;
    unsigned ms = 0;
    memset(&tm, 0, sizeof(tm));
    const char *rest = s ? strptime(s, "%Y-%m-%dT%H:%M:%S", &tm) : NULL;
    if (!rest) return 0;
    if (*rest == '.') {
        rest++;
        for (int i = 0; i < 3 && *rest >= '0' && *rest <= '9'; i++, rest++)
            ms = ms * 10 + (unsigned)(*rest - '0');
    }
    time_t t = timegm(&tm);
    return t < 0 ? 0 : (uint64_t)t * 1000u + ms;
}

/* --follow asks again from LOOKBACK_MS before the newest record printed: the sink writes each
 * worker's queue in batches, so a record may reach the stream a little after a newer one of
 * another worker. What was printed is remembered by request id for that long. */
#define LOOKBACK_MS 5000
#define SEEN_MAX 16384

struct seen_id {
    uint64_t ms;
    char id[17];
};

struct seen {
    uint64_t newest_ms; /* the newest ts printed; 0: none yet */
    struct seen_id *e;
    size_t n;
};

static int seen_has(const struct seen *s, const char *id) {
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->e[i].id, id) == 0) return 1;
    return 0;
}

/* Remembers id; forgets the ids older than the look-back window (and the oldest when full). */
static void seen_add(struct seen *s, uint64_t ms, const char *id) {
    size_t keep = 0;
    if (ms > s->newest_ms) s->newest_ms = ms;
    for (size_t i = 0; i < s->n; i++)
        if (s->e[i].ms + LOOKBACK_MS + 1000 >= s->newest_ms) s->e[keep++] = s->e[i];
    s->n = keep;
    if (s->n == SEEN_MAX) memmove(&s->e[0], &s->e[1], --s->n * sizeof(s->e[0]));
    s->e[s->n].ms = ms;
    snprintf(s->e[s->n].id, sizeof(s->e[0].id), "%.16s", id);
    s->n++;
}

struct audit_item {
    uint64_t ms;
    size_t order; /* oldest first among equal ms: the API's newest-first order, reversed */
    json_t *rec;
};

static int audit_item_cmp(const void *a, const void *b) {
    const struct audit_item *x = a, *y = b;
    if (x->ms != y->ms) return x->ms < y->ms ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

static int cmd_audit(int argc, char **argv) {
    struct cli_opts o;
    struct cli_http h;
    struct strbuf base;
    struct seen *seen = NULL;
    uint64_t since_s = 0, limit = 100;
    int rc = 1, header = 0;
    char path[2048], right[16] = "llllllllrrl";
    if (parse_opts(argc, argv, OPT_FILTERS | OPT_AUDIT, &o) != 0) return 2;
    if (o.since && cli_parse_duration(o.since, &since_s) != 0)
        return usage_error("--since must be a duration (90s, 15m, 1h, 2d); got \"%s\"", o.since);
    if (o.limit && num_parse_range(o.limit, strlen(o.limit), 1, 1000, &limit) != 0)
        return usage_error("--limit must be 1..1000; got \"%s\"", o.limit);
    strbuf_init(&base);
    char lim[24];
    snprintf(lim, sizeof(lim), "%" PRIu64, o.follow ? 1000 : limit);
    if ((o.business && append_param(&base, "businessId", o.business)) ||
        (o.scene && append_param(&base, "sceneId", o.scene)) ||
        (o.app && append_param(&base, "app", o.app)) ||
        (o.decision && append_param(&base, "decision", o.decision)) ||
        (o.code && append_param(&base, "code", o.code)) || append_param(&base, "limit", lim) ||
        !(seen = calloc(1, sizeof(*seen))) || !(seen->e = calloc(SEEN_MAX, sizeof(*seen->e)))) {
        if (seen) free(seen->e);
        strbuf_cleanup(&base);
        fprintf(stderr, "capgate: out of memory\n");
        return 1;
    }
    if (http_open(&h, &o) != 0) {
        strbuf_cleanup(&base);
        free(seen->e);
        free(seen);
        return 1;
    }
    uint64_t since_ms = since_s ? ((uint64_t)time(NULL) - since_s) * 1000u : 0;
    int was_partial = 0;
    for (;;) {
        uint64_t from_ms = seen->newest_ms
                               ? (seen->newest_ms > LOOKBACK_MS ? seen->newest_ms - LOOKBACK_MS : 1)
                               : since_ms;
        if (from_ms)
            snprintf(path, sizeof(path), "/admin/audit?%s&since=%" PRIu64, base.s, from_ms);
        else
            snprintf(path, sizeof(path), "/admin/audit?%s", base.s);
        json_t *j = http_json(&h, path, NULL);
        if (!j) {
            if (!o.follow) goto out;
        } else {
            json_t *recs = json_object_get(j, "records");
            struct table t;
            size_t n = json_array_size(recs), m = 0;
            struct audit_item *items = n ? calloc(n, sizeof(*items)) : NULL;
            int partial = json_is_true(json_object_get(j, "partial"));
            if (partial && !was_partial) say_partial(j);
            if (!partial && was_partial) fprintf(stderr, "capgate: whole answers again\n");
            was_partial = partial;
            table_init(&t, 11, right);
            if (!o.json && !header) {
                audit_head(&t);
                header = 1;
            }
            /* newest first from the API (in stream order); printed oldest first by ts, as a
             * log reads */
            for (size_t k = 0; items && k < n; k++) {
                json_t *r = json_array_get(recs, k);
                const char *id = jstr(r, "request_id");
                if (o.follow && seen_has(seen, id)) continue;
                items[m].ms = iso_ms(json_string_value(json_object_get(r, "ts")));
                items[m].order = n - k;
                items[m++].rec = r;
            }
            if (m) qsort(items, m, sizeof(*items), audit_item_cmp);
            for (size_t k = 0; k < m; k++) {
                if (o.follow) seen_add(seen, items[k].ms, jstr(items[k].rec, "request_id"));
                if (o.json) {
                    char *line = json_dumps(items[k].rec, JSON_COMPACT | JSON_PRESERVE_ORDER);
                    if (line) printf("%s\n", line);
                    free(line);
                } else {
                    audit_row(&t, items[k].rec);
                }
            }
            free(items);
            table_print(&t, stdout);
            out_flush();
            json_decref(j);
        }
        if (!o.follow) break;
        sleep((unsigned)o.interval_s);
    }
    rc = 0;
out:
    strbuf_cleanup(&base);
    free(seen->e);
    free(seen);
    http_close(&h);
    return rc;
}

/* ---- capgate health ---- */

/* The value of the first sample of family name (no labels, or any) in Prometheus text; -1 when
 * absent. With max, the largest of its samples. */
static double prom_value(const char *text, const char *name, int max) {
    size_t n = strlen(name);
    double best = -1;
    for (const char *p = text; p && *p;) {
        const char *eol = strchr(p, '\n');
        if (strncmp(p, name, n) == 0 && (p[n] == ' ' || p[n] == '{')) {
            const char *v = strchr(p + n, ' ');
            if (v && (!eol || v < eol)) {
                double d = strtod(v + 1, NULL);
                if (!max) return d;
                if (d > best) best = d;
            }
        }
        p = eol ? eol + 1 : NULL;
    }
    return best;
}

static int cmd_health(int argc, char **argv) {
    struct cli_opts o;
    struct cli_http h;
    struct cli_reply live, ready, metrics;
    int rc = 1, have_metrics;
    json_t *rj = NULL, *out = NULL;
    if (parse_opts(argc, argv, 0, &o) != 0) return 2;
    if (http_open(&h, &o) != 0) return 1;
    if (http_get(&h, "/healthz", &live) != 0) {
        http_close(&h);
        return 1;
    }
    if (http_get(&h, "/readyz", &ready) != 0) {
        strbuf_cleanup(&live.body);
        http_close(&h);
        return 1;
    }
    have_metrics = http_get(&h, "/metrics", &metrics) == 0;
    if (have_metrics && metrics.status != 200) {
        fprintf(stderr, "capgate: GET /metrics: HTTP %d (%s)\n", metrics.status,
                metrics.status == 401 ? "give the admin token: --token-file or "
                                        "CAPGATE_ADMIN_TOKEN"
                                      : "no metrics");
        strbuf_cleanup(&metrics.body);
        have_metrics = 0;
    }
    rj = ready.body.s ? json_loadb(ready.body.s, ready.body.len, 0, NULL) : NULL;
    const char *status = rj ? json_string_value(json_object_get(rj, "status")) : NULL;
    const char *store = rj ? json_string_value(json_object_get(rj, "store")) : NULL;
    const char *audit = rj ? json_string_value(json_object_get(rj, "audit")) : NULL;
    int is_ready = ready.status == 200 && status && strcmp(status, "ready") == 0;
    const char *mt = have_metrics && metrics.body.s ? metrics.body.s : "";
    double breaker = prom_value(mt, "capgate_upstream_breaker_state", 1);
    double spool = prom_value(mt, "capgate_audit_spool_records", 0);
    double queue = prom_value(mt, "capgate_audit_queue_depth", 0);
    double inflight = prom_value(mt, "capgate_inflight_requests", 0);
    double conns = prom_value(mt, "capgate_open_connections", 0);
    static const char *const breaker_names[] = {"closed", "open", "half-open"};
    const char *bname = breaker >= 0 && breaker <= 2 ? breaker_names[(int)breaker] : "-";
    if (o.json) {
        out = json_pack("{s:b,s:s,s:s,s:s}", "live", live.status == 200, "status",
                        status ? status : "unknown", "store", store ? store : "unknown", "audit",
                        audit ? audit : "unknown");
        if (out && have_metrics) {
            json_object_set_new(out, "breaker", json_string(bname));
            json_object_set_new(out, "audit_spool_records", json_integer((json_int_t)spool));
            json_object_set_new(out, "audit_queue_depth", json_integer((json_int_t)queue));
            json_object_set_new(out, "inflight_requests", json_integer((json_int_t)inflight));
            json_object_set_new(out, "open_connections", json_integer((json_int_t)conns));
        }
        char *text = out ? json_dumps(out, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        if (text) printf("%s\n", text);
        free(text);
    } else {
        struct table t;
        table_init(&t, 2, "ll");
        table_cell(&t, "live");
        table_cell(&t, "%s", live.status == 200 ? "yes" : "no");
        table_cell(&t, "status");
        table_cell(&t, "%s", status ? status : "unknown");
        table_cell(&t, "store");
        table_cell(&t, "%s", store ? store : "unknown");
        table_cell(&t, "audit");
        table_cell(&t, "%s", audit ? audit : "unknown");
        if (have_metrics) {
            table_cell(&t, "breaker");
            table_cell(&t, "%s", bname);
            table_cell(&t, "audit spool");
            table_cell(&t, "%.0f records", spool < 0 ? 0 : spool);
            table_cell(&t, "audit queue");
            table_cell(&t, "%.0f records", queue < 0 ? 0 : queue);
            table_cell(&t, "in flight");
            table_cell(&t, "%.0f requests, %.0f connections", inflight < 0 ? 0 : inflight,
                       conns < 0 ? 0 : conns);
        }
        table_print(&t, stdout);
    }
    rc = is_ready ? 0 : 1;
    json_decref(out);
    json_decref(rj);
    strbuf_cleanup(&live.body);
    strbuf_cleanup(&ready.body);
    if (have_metrics) strbuf_cleanup(&metrics.body);
    http_close(&h);
    return rc;
}

/* ---- capgate top ---- */

struct top_prev {
    char key[80];
    uint64_t requests;
};

struct top_state {
    struct top_prev prev[2][512]; /* [business, app] */
    size_t n_prev[2];
    double prev_at; /* monotonic seconds of the previous snapshot; 0: none */
};

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Requests of key at the previous snapshot (-1: not seen), then remembers this one. */
static double top_rate(struct top_state *s, int kind, const char *key, uint64_t requests,
                       double elapsed, struct top_prev *next, size_t *n_next) {
    double rate = -1;
    for (size_t i = 0; i < s->n_prev[kind]; i++) {
        if (strcmp(s->prev[kind][i].key, key) == 0 && requests >= s->prev[kind][i].requests &&
            elapsed > 0) {
            rate = (double)(requests - s->prev[kind][i].requests) / elapsed;
            break;
        }
    }
    if (*n_next < 512) {
        snprintf(next[*n_next].key, sizeof(next[0].key), "%.79s", key);
        next[(*n_next)++].requests = requests;
    }
    return rate;
}

struct top_row {
    char key[80];
    const json_t *totals;
    uint64_t requests;
};

static int top_row_cmp(const void *a, const void *b) {
    const struct top_row *x = a, *y = b;
    if (x->requests != y->requests) return x->requests > y->requests ? -1 : 1;
    return strcmp(x->key, y->key);
}

/* One table (businesses or apps) of snapshot j into t, rows sorted by requests. */
static void top_table(struct top_state *s, int kind, const json_t *j, double elapsed,
                      json_t *json_rows, FILE *out) {
    struct top_row rows[512];
    struct top_prev next[512];
    size_t n = 0, n_next = 0, i;
    json_t *g;
    json_array_foreach(json_object_get(j, "groups"), i, g) {
        if (n == 512) break;
        jid(g, kind ? "app" : "businessId", rows[n].key, sizeof(rows[n].key));
        rows[n].totals = json_object_get(g, "totals");
        rows[n].requests = jnum(rows[n].totals, "requests");
        n++;
    }
    if (n) qsort(rows, n, sizeof(rows[0]), top_row_cmp);
    struct table t;
    char right[64];
    memset(right, 'r', sizeof(right));
    right[0] = 'l';
    table_init(&t, 2 + COUNT_COLS, right);
    table_cell(&t, "%s", kind ? "APP" : "BUSINESS");
    table_cell(&t, "REQ/S");
    counts_head(&t);
    for (i = 0; i < n; i++) {
        double rate = top_rate(s, kind, rows[i].key, rows[i].requests, elapsed, next, &n_next);
        if (json_rows) {
            json_t *r = json_pack("{s:s,s:O}", kind ? "app" : "businessId", rows[i].key, "totals",
                                  rows[i].totals);
            if (r && rate >= 0) json_object_set_new(r, "rate", json_real(rate));
            json_array_append_new(json_rows, r);
            continue;
        }
        table_cell(&t, "%s", rows[i].key);
        if (rate >= 0)
            table_cell(&t, "%.1f", rate);
        else
            table_cell(&t, "-");
        counts_row(&t, rows[i].totals);
    }
    memcpy(s->prev[kind], next, n_next * sizeof(next[0]));
    s->n_prev[kind] = n_next;
    if (json_rows) {
        for (i = 0; i < t.n; i++) free(t.cells[i]);
        free(t.cells);
        return;
    }
    table_print(&t, out);
}

static int cmd_top(int argc, char **argv) {
    struct cli_opts o;
    struct cli_http h;
    struct top_state *s;
    int tty, rc = 1;
    if (parse_opts(argc, argv, OPT_TOP, &o) != 0) return 2;
    if (!(s = calloc(1, sizeof(*s)))) return 1;
    if (http_open(&h, &o) != 0) {
        free(s);
        return 1;
    }
    tty = !o.json && isatty(STDOUT_FILENO);
    for (long it = 0; o.iterations == 0 || it < o.iterations; it++) {
        /* the current and the previous minute: a window that always holds a full minute */
        uint64_t now = (uint64_t)time(NULL);
        char path[256], ready_line[160] = "";
        json_t *biz, *apps, *rj;
        snprintf(path, sizeof(path),
                 "/admin/stats?from=%" PRIu64 "&to=%" PRIu64 "&step=60&fill=none&group=business",
                 now - 60, now + 1);
        biz = http_json(&h, path, NULL);
        snprintf(path, sizeof(path),
                 "/admin/stats?from=%" PRIu64 "&to=%" PRIu64 "&step=60&fill=none&group=app",
                 now - 60, now + 1);
        apps = biz ? http_json(&h, path, NULL) : NULL;
        rj = apps ? http_json(&h, "/readyz", NULL) : NULL;
        if (!biz || !apps) {
            json_decref(biz);
            json_decref(apps);
            goto out;
        }
        double at = mono_s(), elapsed = s->prev_at ? at - s->prev_at : 0;
        char when[32];
        fmt_time(when, sizeof(when), now, 1);
        snprintf(ready_line, sizeof(ready_line), "store %s, audit %s",
                 rj ? json_string_value(json_object_get(rj, "store")) : "?",
                 rj ? json_string_value(json_object_get(rj, "audit")) : "?");
        uint64_t from = jnum(biz, "from");
        const json_t *tot = json_object_get(biz, "totals");
        if (o.json) {
            json_t *snap =
                json_pack("{s:s,s:I,s:I,s:b,s:[],s:[]}", "time", when, "from", (json_int_t)from,
                          "to", (json_int_t)(now + 1), "partial",
                          json_is_true(json_object_get(biz, "partial")), "businesses", "apps");
            if (snap) {
                top_table(s, 0, biz, elapsed, json_object_get(snap, "businesses"), stdout);
                top_table(s, 1, apps, elapsed, json_object_get(snap, "apps"), stdout);
                json_object_set(snap, "totals", (json_t *)tot);
                char *line = json_dumps(snap, JSON_COMPACT | JSON_PRESERVE_ORDER);
                if (line) printf("%s\n", line);
                free(line);
            }
            json_decref(snap);
        } else {
            if (tty) fputs("\033[H\033[2J", stdout); /* home, clear: redraw in place */
            printf("capgate top - %s - %s - %" PRIu64 " requests since %" PRIu64 "s ago%s\n\n",
                   when, ready_line, jnum(tot, "requests"), now - from,
                   json_is_true(json_object_get(biz, "partial"))
                       ? " - PARTIAL (redis down: this instance only)"
                       : "");
            top_table(s, 0, biz, elapsed, NULL, stdout);
            putchar('\n');
            top_table(s, 1, apps, elapsed, NULL, stdout);
            if (!tty) putchar('\n'); /* snapshots one after the other */
        }
        s->prev_at = at;
        out_flush();
        json_decref(biz);
        json_decref(apps);
        json_decref(rj);
        if (o.iterations == 0 || it + 1 < o.iterations) sleep((unsigned)o.interval_s);
    }
    rc = 0;
out:
    free(s);
    http_close(&h);
    return rc;
}

/* ---- dispatch ---- */

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
} commands[] = {
    {"stats", cmd_stats},
    {"audit", cmd_audit},
    {"top", cmd_top},
    {"health", cmd_health},
};

int cli_is_subcommand(const char *name) {
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(name, commands[i].name) == 0) return 1;
    return 0;
}

int cli_main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN); /* a closed pipe is EPIPE on write: out_flush ends quietly */
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(argv[0], commands[i].name) == 0) return commands[i].run(argc, argv);
    return usage_error("unknown subcommand %s", argv[0]);
}
