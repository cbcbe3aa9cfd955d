/* mock.c: capgate-mock's request dispatch and the v2 API: the checks in upstream's order
 * (parse, https-only, public params, SecretId, Timestamp, Nonce, signature, quota, Action),
 * then injected faults, then the Action itself. */
#include "mock.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "capgate/apierr.h"
#include "capgate/clock.h"
#include "capgate/httpd.h"
#include "capgate/log.h"
#include "capgate/params.h"
#include "capgate/reply.h"
#include "capgate/sign.h"
#include "capgate/strbuf.h"
#include "capgate/tls.h"
#include "capgate/validate.h"

/* One API call on its way through the checks. Lives on the stack unless a fault delays or
 * stalls it; then it moves to the heap and its cancel callback owns it. */
struct call {
    struct mock *m;
    struct httpd_req *req;
    struct params params;
    struct v2_public pub;
    struct v2_fields fields;
    enum journal_verdict verdict;
    struct fault_effect fault;
    int has_fault;
    struct event *timer;
    int api3; /* an API 3.0 call (api3.c) */
    struct api3_call a3;
};

void mock_reply_json(struct httpd_req *req, int status, json_t *obj) {
    char *text = obj ? reply_dump(obj) : NULL;
    json_decref(obj);
    if (!text) {
        static const char oom[] = REPLY_OOM_JSON;
        httpd_reply(req, 500, "application/json", oom, sizeof(oom) - 1);
        return;
    }
    httpd_reply(req, status, "application/json", text, strlen(text));
    free(text);
}

static json_t *error_obj(int code, const char *fmt, va_list ap) {
    char msg[1024];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    return reply_new(code, msg);
}

void mock_reply_error(struct httpd_req *req, int status, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    json_t *o = error_obj(code, fmt, ap);
    va_end(ap);
    mock_reply_json(req, status, o);
}

/* ---- state ---- */

static void free_value(void *v) {
    free(v);
}

/* "<space>:<cred>:<nonce>", or "<cred>:<nonce>" for v2's space "". */
static int nonce_key(char *out, size_t len, const char *space, int cred, uint64_t nonce) {
    int n = snprintf(out, len, "%s%s%d:%llu", space, *space ? ":" : "", cred,
                     (unsigned long long)nonce);
    return n < 0 || (size_t)n >= len ? -1 : n;
}

int mock_nonce_used(struct mock *m, const char *space, int cred, uint64_t nonce) {
    char key[64];
    int n = nonce_key(key, sizeof(key), space, cred, nonce);
    if (n < 0) return 0;
    etable_expire(m->nonces, clock_mono_us());
    return etable_find(m->nonces, key, (size_t)n, NULL);
}

void mock_nonce_spend(struct mock *m, const char *space, int cred, uint64_t nonce) {
    char key[64];
    int n = nonce_key(key, sizeof(key), space, cred, nonce);
    uint64_t ttl_us = validate_nonce_ttl_s(m->opts->timestamp_window) * 1000000u;
    if (n < 0 || etable_put(m->nonces, key, (size_t)n, NULL, clock_mono_us() + ttl_us) != 0)
        log_warn("nonce table: out of memory");
}

int mock_quota_take(struct mock *m, int cred, uint64_t now_s) {
    if (!m->opts->quota) return 0;
    struct mock_quota *q = &m->quota[cred];
    if (q->second != now_s) {
        q->second = now_s;
        q->count = 0;
    }
    if (q->count >= m->opts->quota) return -1;
    q->count++;
    return 0;
}

void mock_reset(struct mock *m) {
    etable_clear(m->nonces);
    etable_clear(m->urls);
    etable_clear(m->tickets);
    faults_clear(&m->faults);
    journal_clear(m->journal);
    memset(m->quota, 0, m->opts->ncreds * sizeof(*m->quota));
    m->api_calls = 0;
}

static double fault_draw(void *arg) {
    return mockrng_unit(arg);
}

static void record(struct call *c, int code, const char *fault) {
    struct mock *m = c->m;
    if (c->api3) {
        /* 3.0 calls: code 0 for a Response without Error, 1 with one; its Code goes in the
         * entry's params as "Error.Code". */
        params_cleanup(&c->params);
        params_init(&c->params);
        api3_journal_params(&c->a3, &c->params);
        if (code > 0 && c->a3.code) params_adds(&c->params, "Error.Code", c->a3.code);
        if (code > 0) code = 1;
    }
    if (journal_add(m->journal, clock_wall_us(), c->req->method, params_get(&c->params, "Action"),
                    params_get(&c->params, "SecretId"), c->verdict, code, fault, &c->params) != 0)
        log_warn("journal: out of memory, a request went unrecorded");
}

static void call_error(struct call *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void call_error(struct call *c, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    json_t *o = error_obj(code, fmt, ap);
    va_end(ap);
    record(c, code, NULL);
    log_debug("api: %s -> %d", c->req->target, code);
    mock_reply_json(c->req, 200, o);
}

/* ---- actions ---- */

static int issue_url(struct mock *m, uint32_t client_type, char asig[MOCK_ASIG_LEN + 1],
                     int fetched) {
    struct mock_url *u = calloc(1, sizeof(*u));
    if (!u || mockrng_token(&m->rng, asig, MOCK_ASIG_LEN) != 0) {
        free(u);
        return -1;
    }
    uint64_t now = clock_mono_us();
    u->created_us = now;
    u->created_wall_s = clock_wall_us() / 1000000u;
    u->appid = m->app_id;
    u->client_type = client_type;
    u->fetched = fetched ? 1 : 0;
    etable_expire(m->urls, now);
    if (etable_put(m->urls, asig, MOCK_ASIG_LEN, u, now + m->ttl_us) != 0) {
        free(u);
        return -1;
    }
    return 0;
}

static json_t *success_obj(void) {
    return reply_new(0, NULL);
}

/* The origin of a captcha URL. isHttps is "whether the returned JavaScript uses HTTPS" (the
 * CaptchaIframeQuery doc page), so with 1 the URL is https://: --public-url when it is https,
 * else the TLS listener, else the http origin (--public-url or the listener) with its scheme
 * changed (nothing answers TLS there: run the mock with --tls-listen to load such a URL). With 0
 * it is --public-url or the plain listener, as before. */
static void url_origin(const struct mock *m, int https, char *out, size_t len) {
    static const char http[] = "http://";
    const char *base = m->url_base;
    if (!https || strncmp(base, "https://", 8) == 0) {
        snprintf(out, len, "%s", base);
        return;
    }
    if (!m->opts->public_url && m->https_base[0]) {
        snprintf(out, len, "%s", m->https_base);
        return;
    }
    if (strncmp(base, http, sizeof(http) - 1) == 0) base += sizeof(http) - 1;
    snprintf(out, len, "https://%s", base);
}

static void action_iframe_query(struct call *c, char *fault) {
    struct mock *m = c->m;
    char asig[MOCK_ASIG_LEN + 1];
    if (issue_url(m, c->fields.client_type, asig, 0) != 0) {
        call_error(c, APIERR_INTERNAL, "out of memory");
        return;
    }
    char origin[320], url[1024];
    url_origin(m, c->fields.is_https == 1, origin, sizeof(origin));
    snprintf(url, sizeof(url), "%s%s?appid=%s&clientype=%u&lang=2052&asig=%s", origin,
             MOCK_WIDGET_PATH, m->appid, c->fields.client_type, asig);
    json_t *o = success_obj();
    json_object_set_new(o, "url", json_string(url));
    record(c, 0, fault);
    mock_reply_json(c->req, 200, o);
}

static void action_query(struct call *c, char *fault) {
    struct mock *m = c->m;
    char asig[MOCK_ASIG_LEN + 1];
    struct strbuf js;
    strbuf_init(&js);
    /* The script is handed out now, so its asig counts as fetched: a later GET is refused. */
    if (issue_url(m, c->fields.client_type, asig, 1) != 0 ||
        widget_script(&js, m->url_base, asig) != 0) {
        strbuf_cleanup(&js);
        call_error(c, APIERR_INTERNAL, "out of memory");
        return;
    }
    record(c, 0, fault);
    if (c->fields.has_script && c->fields.script == 1) {
        httpd_add_header(c->req, "Access-Control-Allow-Origin", "*");
        httpd_reply(c->req, 200, "application/javascript; charset=utf-8", js.s, js.len);
    } else {
        json_t *o = success_obj();
        json_object_set_new(o, "script", json_stringn(js.s, js.len));
        mock_reply_json(c->req, 200, o);
    }
    strbuf_cleanup(&js);
}

static void action_check(struct call *c, char *fault) {
    struct mock *m = c->m;
    const char *ticket = c->fields.ticket;
    void *v = NULL;
    uint64_t now = clock_mono_us();
    etable_expire(m->tickets, now);
    if (!etable_find(m->tickets, ticket, strlen(ticket), &v)) {
        record(c, APIERR_OPERATION_FAILED, fault);
        mock_reply_json(c->req, 200,
                        reply_new(APIERR_OPERATION_FAILED, "verification failed: unknown ticket"));
        return;
    }
    struct mock_ticket *t = v;
    const char *why = NULL;
    if (now - t->solved_us >= m->ttl_us)
        why = "verification failed: ticket expired";
    else if (t->checks >= MOCK_TICKET_CHECKS)
        why = "verification failed: ticket already checked twice";
    if (why) {
        record(c, APIERR_OPERATION_FAILED, fault);
        mock_reply_json(c->req, 200, reply_new(APIERR_OPERATION_FAILED, why));
        return;
    }
    t->checks++;
    json_t *o = success_obj();
    json_object_set_new(o, "evilLevel", json_integer(0));
    record(c, 0, fault);
    mock_reply_json(c->req, 200, o);
}

static void finish_api3(struct call *c, char *fdesc) {
    json_t *resp = NULL;
    if (c->has_fault && c->fault.code) {
        /* A code fault on a 3.0 call: InternalError, naming the rule's code. */
        c->a3.code = "InternalError";
        snprintf(c->a3.msg, sizeof(c->a3.msg), "injected by capgate-mock (fault code %d)",
                 c->fault.code);
    } else {
        resp = api3_run(c->m, &c->a3);
    }
    record(c, resp ? 0 : 1, fdesc);
    api3_reply(c->m, c->req, resp, c->a3.code, c->a3.msg);
}

/* Ends the call as its fault (if any) and Action say. */
static void finish(struct call *c) {
    char fault[64];
    char *fdesc = NULL;
    if (c->has_fault) {
        faults_describe(&c->fault, fault, sizeof(fault));
        fdesc = fault;
    }
    static const char broken[] = "{\"code\":0,\"codeDesc\":\"Success\",\"message\":\"No Er";
    static const char page500[] =
        "<html><head><title>500 Internal Server Error</title></head><body>"
        "<h1>500 Internal Server Error</h1><p>injected by capgate-mock</p></body></html>\n";
    if (c->has_fault && c->fault.network != FAULT_NET_NONE) {
        switch (c->fault.network) {
        case FAULT_NET_RESET:
            record(c, -1, fdesc);
            httpd_reset(c->req);
            return;
        case FAULT_NET_CLOSE:
            record(c, -1, fdesc);
            httpd_drop(c->req);
            return;
        case FAULT_NET_MALFORMED_JSON:
            record(c, -1, fdesc);
            httpd_reply(c->req, 200, "application/json", broken, sizeof(broken) - 1);
            return;
        case FAULT_NET_HTTP_500:
            record(c, -1, fdesc);
            httpd_reply(c->req, 500, "text/html", page500, sizeof(page500) - 1);
            return;
        default: return; /* stall is handled by the caller: it needs the cancel callback */
        }
    }
    if (c->api3) {
        finish_api3(c, fdesc);
        return;
    }
    if (c->has_fault && c->fault.code) {
        record(c, c->fault.code, fdesc);
        mock_reply_json(c->req, 200, reply_new(c->fault.code, NULL));
        return;
    }
    switch (c->fields.action) {
    case V2_ACTION_CAPTCHA_IFRAME_QUERY: action_iframe_query(c, fdesc); break;
    case V2_ACTION_CAPTCHA_QUERY: action_query(c, fdesc); break;
    case V2_ACTION_CAPTCHA_CHECK: action_check(c, fdesc); break;
    default: call_error(c, APIERR_INVALID_PARAMETER, "unknown Action"); break;
    }
}

/* ---- faults that outlive the handler ---- */

static void heap_call_free(struct call *c) {
    if (c->timer) event_free(c->timer);
    json_decref(c->a3.body);
    params_cleanup(&c->params);
    c->m->pending--;
    free(c);
}

static void stall_cancel(struct httpd_req *req, void *arg) {
    struct call *c = arg;
    log_debug("api: stalled call ended by its connection");
    heap_call_free(c);
}

/* A stall keeps the call until the peer gives up (closes, or shuts down its sending side:
 * nothing will ever answer it); the cancel callback frees it. */
static void stall(struct call *c) {
    char fault[64];
    faults_describe(&c->fault, fault, sizeof(fault));
    record(c, -1, fault);
    if (c->timer) {
        event_free(c->timer);
        c->timer = NULL;
    }
    httpd_set_cancel(c->req, stall_cancel, c);
    httpd_cancel_on_eof(c->req);
}

static void delay_cancel(struct httpd_req *req, void *arg) {
    heap_call_free(arg);
}

static void delay_fired(evutil_socket_t fd, short what, void *arg) {
    struct call *c = arg;
    if (c->fault.network == FAULT_NET_STALL) {
        stall(c);
        return;
    }
    httpd_set_cancel(c->req, NULL, NULL);
    finish(c);
    heap_call_free(c);
}

/* Moves the stack call to the heap (params change owner). NULL on OOM. */
static struct call *call_to_heap(struct call *c) {
    struct call *h = malloc(sizeof(*h));
    if (!h) return NULL;
    *h = *c;
    if (c->a3.action == c->a3.action_buf) h->a3.action = h->a3.action_buf; /* v1's, copied */
    params_init(&c->params);
    c->a3.body = NULL;
    h->m->pending++;
    return h;
}

static void apply_fault(struct call *c) {
    if (c->fault.delay_ms == 0 && c->fault.network != FAULT_NET_STALL) {
        finish(c);
        return;
    }
    struct call *h = call_to_heap(c);
    if (!h) {
        call_error(c, APIERR_INTERNAL, "out of memory");
        return;
    }
    /* fields point into the params' heap strings, which moved along unchanged. */
    if (c->fault.delay_ms == 0) {
        stall(h);
        return;
    }
    h->timer = evtimer_new(h->m->base, delay_fired, h);
    struct timeval tv = {(time_t)(c->fault.delay_ms / 1000),
                         (suseconds_t)(c->fault.delay_ms % 1000) * 1000};
    if (!h->timer || evtimer_add(h->timer, &tv) != 0) {
        *c = *h; /* back to the stack so the caller frees params once */
        if (h->a3.action == h->a3.action_buf) c->a3.action = c->a3.action_buf;
        if (c->timer) event_free(c->timer);
        c->timer = NULL;
        c->m->pending--;
        free(h);
        call_error(c, APIERR_INTERNAL, "cannot arm the delay timer");
        return;
    }
    httpd_set_cancel(h->req, delay_cancel, h);
}

/* ---- the checks ---- */

static int find_credential(const struct mock *m, const char *secret_id) {
    for (size_t i = 0; i < m->opts->ncreds; i++)
        if (strcmp(m->opts->creds[i].secret_id, secret_id) == 0) return (int)i;
    return -1;
}

static void handle_api(struct mock *m, struct httpd_req *req) {
    struct call c;
    memset(&c, 0, sizeof(c));
    c.m = m;
    c.req = req;
    c.verdict = JOURNAL_UNCHECKED;
    params_init(&c.params);
    m->api_calls++;
    char err[512];

    int is_get = strcmp(req->method, "GET") == 0, is_post = strcmp(req->method, "POST") == 0;
    if (!is_get && !is_post) {
        call_error(&c, APIERR_INVALID_PARAMETER, "method %s is not allowed; use GET or POST",
                   req->method);
        goto out;
    }
    int rc = is_get ? params_parse_urlencoded(&c.params, req->query ? req->query : "",
                                              req->query ? strlen(req->query) : 0, err, sizeof(err))
                    : params_parse_body(&c.params, req->content_type, req->body, req->body_len, err,
                                        sizeof(err));
    if (rc != 0) {
        call_error(&c, APIERR_INVALID_PARAMETER, "%s", err);
        goto out;
    }
    if (m->opts->https_only && !req->is_tls) {
        call_error(&c, APIERR_HTTPS_REQUIRED, "this endpoint accepts HTTPS only");
        goto out;
    }
    if (validate_public(&c.params, &c.pub, err, sizeof(err)) != 0) {
        call_error(&c, APIERR_INVALID_PARAMETER, "%s", err);
        goto out;
    }
    int cred = find_credential(m, c.pub.secret_id);
    if (cred < 0) {
        call_error(&c, APIERR_AUTH_FAILURE, "SecretId %s does not exist", c.pub.secret_id);
        goto out;
    }
    uint64_t now_s = clock_wall_us() / 1000000u;
    uint64_t window = m->opts->timestamp_window;
    uint64_t skew = c.pub.timestamp > now_s ? c.pub.timestamp - now_s : now_s - c.pub.timestamp;
    if (skew > window) {
        call_error(&c, APIERR_REPLAY,
                   "Timestamp %llu is outside the window of %llu s "
                   "(skew %s%llu s)",
                   (unsigned long long)c.pub.timestamp, (unsigned long long)window,
                   c.pub.timestamp > now_s ? "+" : "-", (unsigned long long)skew);
        goto out;
    }
    if (mock_nonce_used(m, "", cred, c.pub.nonce)) {
        call_error(&c, APIERR_REPLAY,
                   "the Nonce %llu was already used by this SecretId within "
                   "the last %llu s",
                   (unsigned long long)c.pub.nonce,
                   (unsigned long long)validate_nonce_ttl_s(window));
        goto out;
    }
    const struct mock_credential *cr = &m->opts->creds[cred];
    if (sign_verify(&c.params, req->method, req->host ? req->host : "", req->path,
                    cr->secret_key) != 0) {
        c.verdict = JOURNAL_SIG_BAD;
        call_error(&c, APIERR_AUTH_FAILURE,
                   "signature verification failed: the Signature does "
                   "not match the request signed with the SecretKey of %s",
                   c.pub.secret_id);
        goto out;
    }
    c.verdict = JOURNAL_SIG_OK;
    mock_nonce_spend(m, "", cred, c.pub.nonce);
    if (mock_quota_take(m, cred, now_s) != 0) {
        call_error(&c, APIERR_LIMIT_EXCEEDED, "quota of %u requests/s for SecretId %s exceeded",
                   m->opts->quota, c.pub.secret_id);
        goto out;
    }
    /* An Action other than the three: 6100, the code the error code page gives for an
     * interface this version does not have (validate_error_code). */
    enum v2_action action = validate_action_parse(c.pub.action);
    if (validate_request(action, &c.params, &c.fields, err, sizeof(err)) != 0) {
        call_error(&c, validate_error_code(action, &c.params), "%s", err);
        goto out;
    }
    c.fields.action = action;
    c.has_fault = faults_match(&m->faults, c.pub.action, c.pub.secret_id, fault_draw, &m->fault_rng,
                               &c.fault);
    if (c.has_fault)
        apply_fault(&c);
    else
        finish(&c);
out:
    params_cleanup(&c.params);
}

/* API 3.0: the checks (api3.c), then faults (matched on the Action), then the Action. */
static void handle_api3(struct mock *m, struct httpd_req *req) {
    struct call c;
    memset(&c, 0, sizeof(c));
    c.m = m;
    c.req = req;
    c.api3 = 1;
    params_init(&c.params);
    m->api_calls++;
    if (api3_check(m, req, &c.a3) != 0) {
        c.verdict = c.a3.verdict;
        record(&c, 1, NULL);
        api3_reply(m, req, NULL, c.a3.code, c.a3.msg);
        goto out;
    }
    c.verdict = c.a3.verdict;
    c.has_fault =
        faults_match(&m->faults, c.a3.action, c.a3.secret_id, fault_draw, &m->fault_rng, &c.fault);
    /* A delayed or stalled call moves to the heap with its body (call_to_heap). */
    if (c.has_fault)
        apply_fault(&c);
    else
        finish(&c);
out:
    json_decref(c.a3.body);
    params_cleanup(&c.params);
}

/* ---- routing ---- */

static int path_is(const char *path, const char *want) {
    return strcmp(path, want) == 0;
}

static void handle(struct httpd_req *req, void *arg) {
    struct mock *m = arg;
    if (req->error_status != 0 && req->path && path_is(req->path, MOCK_API3_PATH)) {
        /* 3.0's shape; a body over the limit is RequestSizeLimitExceeded. */
        struct params none;
        params_init(&none);
        const char *code =
            req->error_status == 413 ? "RequestSizeLimitExceeded" : "InvalidParameter";
        journal_add(m->journal, clock_wall_us(), req->method, NULL, NULL, JOURNAL_UNCHECKED, 1,
                    NULL, &none);
        api3_reply(m, req, NULL, code,
                   req->error_message ? req->error_message : "malformed request");
        return;
    }
    if (req->error_status != 0) {
        /* The server found a framing error; answer in the API's shape, it closes after. */
        if (!req->path || !*req->path || path_is(req->path, MOCK_API_PATH)) {
            struct params none;
            params_init(&none);
            journal_add(m->journal, clock_wall_us(), req->method, NULL, NULL, JOURNAL_UNCHECKED,
                        APIERR_INVALID_PARAMETER, NULL, &none);
        }
        mock_reply_error(req, 200, APIERR_INVALID_PARAMETER, "%s",
                         req->error_message ? req->error_message : "malformed request");
        return;
    }
    const char *path = req->path ? req->path : "";
    if (path_is(path, MOCK_API_PATH))
        handle_api(m, req);
    else if (path_is(path, MOCK_API3_PATH))
        handle_api3(m, req);
    else if (strncmp(path, MOCK_ADMIN_PREFIX, strlen(MOCK_ADMIN_PREFIX)) == 0)
        admin_handle(m, req);
    else if (path_is(path, MOCK_WIDGET_PATH))
        widget_handle_fetch(m, req);
    else if (path_is(path, MOCK_SOLVE_PATH))
        widget_handle_solve(m, req);
    else if (path_is(path, MOCK_TCAPTCHA_PATH))
        tcaptcha_handle_script(m, req);
    else if (path_is(path, MOCK_TCAPTCHA_WIDGET_PATH))
        tcaptcha_handle_widget(m, req);
    else
        mock_reply_error(req, 200, APIERR_NOT_FOUND, "no resource at path %.200s", path);
}

/* ---- shared by the widget and admin endpoints ---- */

const char *mock_app_secret(const struct mock *m, uint64_t appid) {
    if (m->opts->napps == 0) return appid == m->app_id ? MOCKOPTS_DEFAULT_APP_SECRET_KEY : NULL;
    for (size_t i = 0; i < m->opts->napps; i++)
        if (strtoull(m->opts->apps[i].secret_id, NULL, 10) == appid)
            return m->opts->apps[i].secret_key;
    return NULL;
}

int mock_issue_captcha(struct mock *m, uint64_t appid, char asig[MOCK_ASIG_LEN + 1]) {
    if (issue_url(m, 0, asig, 1) != 0) return -1;
    void *v = NULL;
    if (etable_find(m->urls, asig, MOCK_ASIG_LEN, &v)) ((struct mock_url *)v)->appid = appid;
    return 0;
}

int mock_solve(struct mock *m, const char *asig, char *ticket, char *randstr, int *status,
               char *err, size_t errlen) {
    uint64_t now = clock_mono_us();
    void *v = NULL;
    etable_expire(m->urls, now);
    if (!etable_find(m->urls, asig, strlen(asig), &v)) {
        *status = 404;
        snprintf(err, errlen, "unknown or expired captcha (asig %.80s)", asig);
        return -1;
    }
    struct mock_url *u = v;
    if (u->solved) {
        *status = 409;
        snprintf(err, errlen, "this captcha was already solved; request a new URL");
        return -1;
    }
    struct mock_ticket *t = calloc(1, sizeof(*t));
    memcpy(ticket, "t03", 3);
    if (!t || mockrng_token(&m->rng, ticket + 3, MOCK_TICKET_LEN - 3) != 0 ||
        mockrng_token(&m->rng, randstr + 1, MOCK_RANDSTR_LEN - 1) != 0)
        goto oom;
    randstr[0] = '@';
    t->solved_us = now;
    t->appid = u->appid;
    t->get_wall_s = u->created_wall_s;
    t->solve_wall_s = clock_wall_us() / 1000000u;
    memcpy(t->randstr, randstr, MOCK_RANDSTR_LEN);
    etable_expire(m->tickets, now);
    /* Kept for twice the lifetime so a late check hears "expired" rather than "unknown". */
    if (etable_put(m->tickets, ticket, MOCK_TICKET_LEN, t, now + 2 * m->ttl_us) != 0) goto oom;
    u->solved = 1;
    return 0;
oom:
    free(t);
    *status = 500;
    snprintf(err, errlen, "out of memory");
    return -1;
}

static int host_is_plain(const char *h) {
    if (!h || !*h || strlen(h) > 255) return 0;
    for (; *h; h++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]", *h))
            return 0;
    return 1;
}

void mock_origin_for(const struct mock *m, const struct httpd_req *req, char *out, size_t len) {
    if (m->opts->public_url)
        snprintf(out, len, "%s", m->opts->public_url);
    else if (host_is_plain(req->host))
        snprintf(out, len, "%s://%s", req->is_tls ? "https" : "http", req->host);
    else
        snprintf(out, len, "%s", req->is_tls && m->https_base[0] ? m->https_base : m->http_base);
}

/* ---- lifecycle ---- */

static void base_url(char *out, size_t len, const char *scheme, const char *host, int port) {
    if (strchr(host, ':'))
        snprintf(out, len, "%s://[%s]:%d", scheme, host, port);
    else
        snprintf(out, len, "%s://%s:%d", scheme, host, port);
}

struct mock *mock_new(struct event_base *base, const struct mock_opts *opts, char *err,
                      size_t errlen) {
    struct mock *m = calloc(1, sizeof(*m));
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    m->base = base;
    m->opts = opts;
    faults_init(&m->faults);
    mockrng_init(&m->rng, opts->has_seed, opts->seed);
    mockrng_init(&m->fault_rng, opts->has_seed, opts->seed ^ 0x5deece66dull);
    mockrng_init(&m->rid_rng, opts->has_seed, opts->seed ^ 0x3c6ef372fe94f82bull);
    m->ttl_us = (uint64_t)opts->captcha_ttl_s * 1000000u;
    /* A ten-digit captcha app id, fixed for the process as an account's would be. */
    m->app_id = 1900000000ull + mockrng_u64(&m->rng) % 99999999ull;
    /* Numeric ids, checked by mockopts. */
    if (opts->napps) m->app_id = strtoull(opts->apps[0].secret_id, NULL, 10);
    snprintf(m->appid, sizeof(m->appid), "%llu", (unsigned long long)m->app_id);
    m->nonces = etable_new(MOCK_MAX_NONCES, NULL);
    m->urls = etable_new(MOCK_MAX_URLS, free_value);
    m->tickets = etable_new(MOCK_MAX_TICKETS, free_value);
    m->journal = journal_new(JOURNAL_DEFAULT_CAPACITY);
    m->quota = calloc(opts->ncreds ? opts->ncreds : 1, sizeof(*m->quota));
    if (!m->nonces || !m->urls || !m->tickets || !m->journal || !m->quota) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (opts->faults && faults_add_json(&m->faults, opts->faults, err, errlen) != 0) {
        char msg[512];
        snprintf(msg, sizeof(msg), "config key \"faults\": %s", err);
        snprintf(err, errlen, "%s", msg);
        goto fail;
    }
    struct httpd_limits lim;
    httpd_limits_default(&lim);
    lim.header_timeout_ms = opts->header_timeout_ms;
    lim.body_timeout_ms = opts->body_timeout_ms;
    /* 32 descriptors kept for stdio, the listeners, the event loop and files. */
    size_t nofile = 0;
    lim.max_connections =
        opts->max_connections ? opts->max_connections : httpd_default_max_connections(32, &nofile);
    if (!opts->max_connections)
        log_info("max_connections %zu (RLIMIT_NOFILE %zu)", lim.max_connections, nofile);
    m->httpd = httpd_new(base, &lim, handle, m);
    if (!m->httpd) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    char host[256];
    int port;
    if (mockopts_split_hostport(opts->listen, host, sizeof(host), &port, err, errlen) != 0)
        goto fail;
    char lerr[256];
    int bound = httpd_listen(m->httpd, host, port, NULL, 0, lerr, sizeof(lerr));
    if (bound < 0) {
        snprintf(err, errlen, "--listen %s: %s", opts->listen, lerr);
        goto fail;
    }
    base_url(m->http_base, sizeof(m->http_base), "http", host, bound);
    if (opts->tls_listen) {
        m->tls = tls_server_new(opts->tls_cert, opts->tls_key, lerr, sizeof(lerr));
        if (!m->tls) {
            snprintf(err, errlen, "TLS: %s", lerr);
            goto fail;
        }
        if (mockopts_split_hostport(opts->tls_listen, host, sizeof(host), &port, err, errlen) != 0)
            goto fail;
        bound = httpd_listen(m->httpd, host, port, m->tls, 0, lerr, sizeof(lerr));
        if (bound < 0) {
            snprintf(err, errlen, "--tls-listen %s: %s", opts->tls_listen, lerr);
            goto fail;
        }
        base_url(m->https_base, sizeof(m->https_base), "https", host, bound);
    }
    m->url_base = opts->public_url ? opts->public_url : m->http_base;
    return m;
fail:
    mock_free(m);
    return NULL;
}

void mock_free(struct mock *m) {
    if (!m) return;
    /* First the server: pending delayed/stalled calls are cancelled and free themselves. */
    if (m->httpd) httpd_free(m->httpd);
    tls_server_free(m->tls);
    etable_free(m->nonces);
    etable_free(m->urls);
    etable_free(m->tickets);
    journal_free(m->journal);
    faults_cleanup(&m->faults);
    free(m->quota);
    free(m);
}
