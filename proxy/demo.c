/* demo.c: the /demo page and its two calls. The page never sees a credential: each of its calls
 * becomes a real front API call made here with evhttp's client on the main thread's base, so the
 * demo exercises exactly what an app's call goes through. A call outlives its browser request
 * when the browser leaves (the reply is then dropped), and is freed by a deferred event, never
 * inside evhttp's own callback. */
#include "demo.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/crypto.h>

#include "api3.h"
#include "capgate/clock.h"
#include "capgate/httpd.h"
#include "capgate/log.h"
#include "capgate/secmem.h"
#include "capgate/strbuf.h"
#include "config.h"

#define DEMO_JSON "application/json"
#define DEMO_API_PATH "/v2/index.php"
#define DEMO_MAX_BODY 4096 /* the page sends {"ticket": "..."} */
#define DEMO_MAX_TICKET 2048
#define DEMO_MAX_REPLY (1u << 20) /* front replies to the two Actions are small */
#define DEMO_MAX_REPLY_HEADERS 16384
#define DEMO_TIMEOUT_SLACK_MS 2000 /* past the front's own bound on its reply */

/* The business parameters of the page's two calls (docs/design.md "Protocol"). */
#define DEMO_IFRAME_FORM \
    "Action=CaptchaIframeQuery&captchaType=9&disturbLevel=1&isHttps=0&clientType=2&accountType=0"
#define DEMO_CHECK_FORM "Action=CaptchaCheck&captchaType=9"

enum demo_call_state {
    CALL_SENT, /* waiting for the front listener */
    CALL_DONE, /* evhttp's callback ran (or the send failed); waiting to be reaped */
};

static const char *const call_state_names[] = {"sent", "done"};

struct demo_call {
    struct demo *d;
    enum demo_call_state state;
    const char *action;    /* static string */
    struct httpd_req *req; /* the browser's request; NULL once ended or cancelled */
    struct evhttp_connection *evcon;
    int error_kind; /* enum evhttp_request_error + 1; 0: none reported */
    TAILQ_ENTRY(demo_call) link;
};
TAILQ_HEAD(demo_call_list, demo_call);

struct demo {
    struct event_base *base;
    char *front_host;      /* where to connect */
    char *front_authority; /* Host header: host:port, [v6]:port */
    int front_port;
    int on;
    char *app;   /* demo_app's name */
    char *token; /* demo_app's token; wiped when replaced */
    unsigned timeout_ms;
    char *tcaptcha_url;         /* the 3.0 flow's TCaptcha.js */
    uint32_t captcha_app_id;    /* the 3.0 flow's CaptchaAppId */
    int v3;                     /* the 3.0 flow has a CaptchaAppId */
    struct demo_call_list live; /* CALL_SENT */
    struct demo_call_list dead; /* CALL_DONE */
    struct event *reap_ev;
};

/* ---- the page ---------------------------------------------------------------------------- */

/* Self-contained: inline CSS and ES5, no external resource. Everything that came from a reply
 * is shown with textContent. The widget script comes from the URL CaptchaIframeQuery returned. */
static const char demo_page[] =
    "<!doctype html>\n"
    "<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<title>capgate demo</title>\n"
    "<style>\n"
    "body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:52em;padding:0 1em;"
    "color:#1f2328}\n"
    "button{font:inherit;padding:.4em 1.2em;cursor:pointer}\n"
    "code{background:#eff1f3;padding:0 .25em;border-radius:3px}\n"
    "#captcha{margin:1em 0;min-height:2.5em}\n"
    "#result{font-weight:bold;min-height:1.5em}\n"
    "#result.pass{color:#116329}#result.fail{color:#a40e26}\n"
    "#log{border:1px solid #d0d7de;border-radius:6px;background:#f6f8fa;padding:.5em 1em}\n"
    "#log .entry{margin:.5em 0}#log .label{font-weight:bold}\n"
    "#log pre{margin:.2em 0 0;white-space:pre-wrap;word-break:break-all;"
    "font:13px/1.4 ui-monospace,monospace}\n"
    "</style></head>\n"
    "<body>\n"
    "<h1>capgate demo</h1>\n"
    "<p>The whole captcha flow through capgate: <code>CaptchaIframeQuery</code>, the widget, then "
    "<code>CaptchaCheck</code> with its ticket. Each is a real call to the front API as the demo "
    "app, so it is authenticated, validated, rate-limited, audited and counted.</p>\n"
    "<p>API 3.0: <code>TCaptcha.js</code>, then <code>DescribeCaptchaResult</code> through the "
    "gateway (which adds the AppSecretKey it holds for the CaptchaAppId).</p>\n"
    "<p><button id=\"start\" type=\"button\">Get captcha</button>\n"
    "<button id=\"start3\" type=\"button\">API 3.0: TCaptcha.js</button></p>\n"
    "<div id=\"captcha\"></div>\n"
    "<p id=\"result\" data-code=\"\" role=\"status\"></p>\n"
    "<h2>Replies</h2>\n"
    "<div id=\"log\" aria-live=\"polite\"></div>\n"
    "<script>\n"
    "(function () {\n"
    "  'use strict';\n"
    "  var start = document.getElementById('start');\n"
    "  var start3 = document.getElementById('start3');\n"
    "  var box = document.getElementById('captcha');\n"
    "  var logPane = document.getElementById('log');\n"
    "  var result = document.getElementById('result');\n"
    "  var round = 0;\n"
    "  function log(kind, label, text) {\n"
    "    var entry = document.createElement('div');\n"
    "    var head = document.createElement('div');\n"
    "    var pre = document.createElement('pre');\n"
    "    entry.className = 'entry';\n"
    "    entry.setAttribute('data-kind', kind);\n"
    "    head.className = 'label';\n"
    "    head.textContent = label;\n"
    "    pre.textContent = text;\n"
    "    entry.appendChild(head);\n"
    "    entry.appendChild(pre);\n"
    "    logPane.appendChild(entry);\n"
    "  }\n"
    "  function show(code, text) {\n"
    "    result.textContent = text;\n"
    "    result.setAttribute('data-code', String(code));\n"
    "    result.className = code === 0 ? 'pass' : 'fail';\n"
    "    start.disabled = false;\n"
    "    start3.disabled = false;\n"
    "  }\n"
    "  function describe(j) {\n"
    "    return 'code ' + j.code + ' (' + j.codeDesc + '): ' + j.message;\n"
    "  }\n"
    "  function post(path, payload) {\n"
    "    return fetch(path, { method: 'POST', cache: 'no-store', credentials: 'same-origin',\n"
    "      headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(payload) })\n"
    "      .then(function (r) {\n"
    "        return r.text().then(function (text) {\n"
    "          var j = null;\n"
    "          try { j = JSON.parse(text); } catch (e) { j = null; }\n"
    "          log('reply', 'POST ' + path + ' \\u2192 HTTP ' + r.status,\n"
    "              j !== null ? JSON.stringify(j, null, 2) : text);\n"
    "          if (!r.ok || j === null || typeof j !== 'object') {\n"
    "            throw new Error(j && typeof j.error === 'string' ? j.error\n"
    "                                                          : 'HTTP ' + r.status);\n"
    "          }\n"
    "          return j;\n"
    "        });\n"
    "      });\n"
    "  }\n"
    "  function loadScript(url) {\n"
    "    return new Promise(function (resolve, reject) {\n"
    "      var s = document.createElement('script');\n"
    "      s.src = url;\n"
    "      s.onload = resolve;\n"
    "      s.onerror = function () { reject(new Error('could not load the widget script')); };\n"
    "      document.head.appendChild(s);\n"
    "    });\n"
    "  }\n"
    "  function check(mine, res) {\n"
    "    if (mine !== round) return;\n"
    "    log('widget', 'widget callback', JSON.stringify(res, null, 2));\n"
    "    if (!res || res.ret !== 0 || typeof res.ticket !== 'string') {\n"
    "      show('closed', 'The captcha was closed without a ticket (ret ' +\n"
    "           (res ? res.ret : '?') + ').');\n"
    "      return;\n"
    "    }\n"
    "    result.textContent = 'Checking the ticket with CaptchaCheck\\u2026';\n"
    "    post('/demo/api/check', { ticket: res.ticket }).then(function (j) {\n"
    "      if (j.code === 0) show(0, 'CaptchaCheck passed: code 0');\n"
    "      else show(j.code, 'CaptchaCheck failed: ' + describe(j));\n"
    "    }).catch(function (e) { show('error', 'CaptchaCheck failed: ' + e.message); });\n"
    "  }\n"
    "  start.addEventListener('click', function () {\n"
    "    var mine = ++round;\n"
    "    start.disabled = true;\n"
    "    while (box.firstChild) box.removeChild(box.firstChild);\n"
    "    result.className = '';\n"
    "    result.setAttribute('data-code', '');\n"
    "    result.textContent = 'Asking for a captcha URL with CaptchaIframeQuery\\u2026';\n"
    "    post('/demo/api/iframe', {}).then(function (j) {\n"
    "      if (j.code !== 0) {\n"
    "        show(j.code, 'CaptchaIframeQuery failed: ' + describe(j));\n"
    "        return null;\n"
    "      }\n"
    "      if (typeof j.url !== 'string' || !/^https?:\\/\\//.test(j.url)) {\n"
    "        throw new Error('the reply has no http(s) url');\n"
    "      }\n"
    "      return loadScript(j.url).then(function () {\n"
    "        if (typeof window.capInit !== 'function') {\n"
    "          throw new Error('the widget script defines no capInit');\n"
    "        }\n"
    "        result.textContent = 'Solve the captcha.';\n"
    "        window.capInit(box, { callback: function (res) { check(mine, res); } });\n"
    "      });\n"
    "    }).catch(function (e) { show('error', 'CaptchaIframeQuery failed: ' + e.message); });\n"
    "  });\n"
    "  function check3(mine, res) {\n"
    "    if (mine !== round) return;\n"
    "    log('widget', 'TencentCaptcha callback', JSON.stringify(res, null, 2));\n"
    "    if (!res || res.ret !== 0 || typeof res.ticket !== 'string') {\n"
    "      show('closed', 'The captcha was closed without a ticket (ret ' +\n"
    "           (res ? res.ret : '?') + ').');\n"
    "      return;\n"
    "    }\n"
    "    result.textContent = 'Checking the ticket with DescribeCaptchaResult\\u2026';\n"
    "    post('/demo/api/check3', { ticket: res.ticket, randstr: res.randstr })\n"
    "      .then(function (j) {\n"
    "        var r = j.Response || {};\n"
    "        if (r.Error) {\n"
    "          show(r.Error.Code, 'DescribeCaptchaResult failed: ' + r.Error.Code + ': ' +\n"
    "               r.Error.Message);\n"
    "        } else if (r.CaptchaCode === 1) {\n"
    "          show(0, 'DescribeCaptchaResult passed: CaptchaCode 1');\n"
    "        } else {\n"
    "          show(r.CaptchaCode, 'DescribeCaptchaResult: CaptchaCode ' + r.CaptchaCode +\n"
    "               ' (' + r.CaptchaMsg + ')');\n"
    "        }\n"
    "      }).catch(function (e) { show('error', 'DescribeCaptchaResult failed: ' + e.message); "
    "});\n"
    "  }\n"
    "  start3.addEventListener('click', function () {\n"
    "    var mine = ++round;\n"
    "    start.disabled = true;\n"
    "    start3.disabled = true;\n"
    "    while (box.firstChild) box.removeChild(box.firstChild);\n"
    "    result.className = '';\n"
    "    result.setAttribute('data-code', '');\n"
    "    result.textContent = 'Loading TCaptcha.js\\u2026';\n"
    "    post('/demo/api/config3', {}).then(function (cfg) {\n"
    "      if (typeof cfg.tcaptchaUrl !== 'string' || !/^https?:\\/\\//.test(cfg.tcaptchaUrl)) {\n"
    "        throw new Error('no http(s) TCaptcha.js url');\n"
    "      }\n"
    "      return loadScript(cfg.tcaptchaUrl).then(function () {\n"
    "        if (typeof window.TencentCaptcha !== 'function') {\n"
    "          throw new Error('TCaptcha.js defines no TencentCaptcha');\n"
    "        }\n"
    "        result.textContent = 'Solve the captcha.';\n"
    "        new window.TencentCaptcha(String(cfg.captchaAppId),\n"
    "          function (res) { check3(mine, res); }, {}).show();\n"
    "      });\n"
    "    }).catch(function (e) { show('error', 'TCaptcha.js failed: ' + e.message); });\n"
    "  });\n"
    "}());\n"
    "</script>\n"
    "</body></html>\n";

/* ---- small helpers ----------------------------------------------------------------------- */

/* The token copy lives in secmem: out of core dumps, wiped when freed. */
static void secret_freez(char *s) {
    secmem_free(s);
}

static void call_set_state(struct demo_call *call, enum demo_call_state to) {
    log_debug("demo: %s call %p: %s -> %s", call->action, (void *)call,
              call_state_names[call->state], call_state_names[to]);
    call->state = to;
}

/* {"error": msg}, escaped by jansson. */
static void reply_error(struct httpd_req *req, int status, const char *msg) {
    json_t *o = json_pack("{s:s}", "error", msg);
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    httpd_add_header(req, "Cache-Control", "no-store");
    if (body)
        httpd_reply(req, status, DEMO_JSON, body, strlen(body));
    else
        httpd_reply(req, 500, DEMO_JSON, "{\"error\":\"out of memory\"}", 25);
    free(body);
    json_decref(o);
}

static void reply_method(struct httpd_req *req, const char *allow) {
    char msg[80];
    snprintf(msg, sizeof msg, "method not allowed; use %s", allow);
    httpd_add_header(req, "Allow", allow);
    reply_error(req, 405, msg);
}

/* "application/json", optionally followed by parameters (; charset=utf-8). Requiring it keeps
 * other origins from posting here without a CORS preflight, which this listener never grants. */
static int is_json_content_type(const char *ct) {
    size_t n = strlen("application/json");
    if (!ct || strncasecmp(ct, "application/json", n) != 0) return 0;
    return ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ';
}

/* ---- the call to the front listener ------------------------------------------------------ */

static void call_free(struct demo_call *call) {
    /* Frees the request still queued on it, if any, without calling back. */
    if (call->evcon) evhttp_connection_free(call->evcon);
    free(call);
}

static void reap_cb(evutil_socket_t fd, short what, void *arg) {
    struct demo *d = arg;
    struct demo_call *call;
    while ((call = TAILQ_FIRST(&d->dead)) != NULL) {
        TAILQ_REMOVE(&d->dead, call, link);
        call_free(call);
    }
}

/* Ends the browser's request (if it is still there) and retires the call. Once per call. */
static void call_finish(struct demo_call *call, int status, const char *body, size_t len,
                        const char *error) {
    struct demo *d = call->d;
    if (call->req) {
        struct httpd_req *req = call->req;
        call->req = NULL;
        httpd_set_cancel(req, NULL, NULL);
        if (error) {
            reply_error(req, status, error);
        } else {
            httpd_add_header(req, "Cache-Control", "no-store");
            httpd_reply(req, status, DEMO_JSON, body, len);
        }
    } else {
        log_debug("demo: %s finished after the browser left; reply dropped", call->action);
    }
    if (error) log_warn("demo: %s: %s", call->action, error);
    TAILQ_REMOVE(&d->live, call, link);
    TAILQ_INSERT_TAIL(&d->dead, call, link);
    call_set_state(call, CALL_DONE);
    event_active(d->reap_ev, EV_TIMEOUT, 1);
}

static int body_is_json_object(const char *s, size_t len) {
    json_t *j = json_loadb(s, len, 0, NULL);
    int ok = j && json_is_object(j);
    json_decref(j);
    return ok;
}

/* evhttp reports the kind of a failure here, just before the request callback. */
static void call_error_cb(enum evhttp_request_error error, void *arg) {
    struct demo_call *call = arg;
    if (!call->error_kind) call->error_kind = (int)error + 1;
}

static void call_done_cb(struct evhttp_request *evreq, void *arg) {
    struct demo_call *call = arg;
    struct demo *d = call->d;
    char msg[300];
    int status = evreq ? evhttp_request_get_response_code(evreq) : 0;

    if (call->state != CALL_SENT) return;
    if (call->error_kind || status <= 0) {
        const char *what;
        switch (call->error_kind ? call->error_kind - 1 : -1) {
        case EVREQ_HTTP_TIMEOUT: what = "did not answer in time"; break;
        case EVREQ_HTTP_EOF: what = "closed the connection before answering"; break;
        case EVREQ_HTTP_INVALID_HEADER: what = "answered with an invalid header"; break;
        case EVREQ_HTTP_DATA_TOO_LONG: what = "answered with a reply that is too large"; break;
        case EVREQ_HTTP_BUFFER_ERROR: what = "failed on the connection"; break;
        default: what = "could not be reached (connection refused?)"; break;
        }
        snprintf(msg, sizeof msg, "%s: the front listener at %s %s", call->action,
                 d->front_authority, what);
        call_finish(call, 502, NULL, 0, msg);
        return;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(evreq);
    size_t len = evbuffer_get_length(in);
    const char *body = len ? (const char *)evbuffer_pullup(in, -1) : NULL;
    if (!body || !body_is_json_object(body, len)) {
        snprintf(msg, sizeof msg, "%s: the front listener at %s answered HTTP %d with %s",
                 call->action, d->front_authority, status,
                 body ? "a body that is not a JSON object" : "an empty body");
        call_finish(call, 502, NULL, 0, msg);
        return;
    }
    /* The front's own status (200 in "compat" mode, 4xx/5xx in "semantic" mode) is not the
     * page's concern: the JSON carries the code. */
    call_finish(call, 200, body, len, NULL);
}

/* The browser left before the reply: the call goes on, its reply will be dropped. */
static void call_cancel_cb(struct httpd_req *req, void *arg) {
    struct demo_call *call = arg;
    call->req = NULL;
    log_debug("demo: browser left during %s", call->action);
}

/* Starts a front call for req: a v2 form body to DEMO_API_PATH, or (v3) a 3.0 JSON body to /
 * with the X-TC-* headers; req is ended by the call from here on, whatever happens. */
static void call_start(struct demo *d, struct httpd_req *req, const char *action, const char *form,
                       int v3) {
    struct demo_call *call = calloc(1, sizeof *call);
    struct evhttp_request *evreq = NULL;
    struct evkeyvalq *h;
    char auth[1024];
    struct timeval tv = {d->timeout_ms / 1000, (d->timeout_ms % 1000) * 1000};
    char ts[32];
    int rc;

    if (!call) {
        reply_error(req, 500, "out of memory");
        return;
    }
    call->d = d;
    call->action = action;
    call->state = CALL_SENT;
    call->req = req;
    TAILQ_INSERT_TAIL(&d->live, call, link);
    httpd_set_cancel(req, call_cancel_cb, call);

    if ((size_t)snprintf(auth, sizeof auth, "Bearer %s", d->token) >= sizeof auth) {
        call_finish(call, 500, NULL, 0, "the demo app's token is too long for a header");
        goto out;
    }
    call->evcon =
        evhttp_connection_base_new(d->base, NULL, d->front_host, (ev_uint16_t)d->front_port);
    evreq = evhttp_request_new(call_done_cb, call);
    if (!call->evcon || !evreq) goto oom;
    evhttp_connection_set_retries(call->evcon, 0);
    evhttp_connection_set_timeout_tv(call->evcon, &tv);
    evhttp_connection_set_max_body_size(call->evcon, DEMO_MAX_REPLY);
    evhttp_connection_set_max_headers_size(call->evcon, DEMO_MAX_REPLY_HEADERS);
    evhttp_request_set_error_cb(evreq, call_error_cb);
    h = evhttp_request_get_output_headers(evreq);
    snprintf(ts, sizeof ts, "%llu", (unsigned long long)(clock_wall_us() / 1000000));
    if (v3 && (evhttp_add_header(h, "X-TC-Action", action) ||
               evhttp_add_header(h, "X-TC-Version", API3_VERSION) ||
               evhttp_add_header(h, "X-TC-Timestamp", ts)))
        goto oom;
    if (evhttp_add_header(h, "Host", d->front_authority) ||
        evhttp_add_header(h, "Authorization", auth) ||
        evhttp_add_header(h, "Content-Type",
                          v3 ? API3_CONTENT_TYPE : "application/x-www-form-urlencoded") ||
        evhttp_add_header(h, "Accept", "application/json") ||
        evhttp_add_header(h, "User-Agent", "capgate-demo") ||
        evhttp_add_header(h, "Connection", "close") ||
        evbuffer_add(evhttp_request_get_output_buffer(evreq), form, strlen(form)))
        goto oom;
    /* evhttp owns evreq from here, also on failure. A connect that fails at once may run
     * call_done_cb before this returns; call->state tells. */
    rc = evhttp_make_request(call->evcon, evreq, EVHTTP_REQ_POST, v3 ? API3_PATH : DEMO_API_PATH);
    evreq = NULL;
    if (rc != 0 && call->state == CALL_SENT)
        call_finish(call, 502, NULL, 0, "could not send the request to the front listener");
    goto out;
oom:
    call_finish(call, 500, NULL, 0, "out of memory");
out:
    OPENSSL_cleanse(auth, sizeof auth);
    if (evreq) evhttp_request_free(evreq);
}

/* ---- the page's two calls ---------------------------------------------------------------- */

/* The checks both calls share. 0, or -1 after a reply. */
static int check_post(struct httpd_req *req) {
    char msg[120];
    if (strcmp(req->method, "POST") != 0) {
        reply_method(req, "POST");
        return -1;
    }
    if (!is_json_content_type(req->content_type)) {
        reply_error(req, 400, "Content-Type must be application/json");
        return -1;
    }
    if (req->body_len > DEMO_MAX_BODY) {
        snprintf(msg, sizeof msg, "request body is %zu bytes; the limit is %d", req->body_len,
                 DEMO_MAX_BODY);
        reply_error(req, 400, msg);
        return -1;
    }
    return 0;
}

static void api_iframe(struct demo *d, struct httpd_req *req) {
    if (check_post(req) != 0) return;
    /* No input is needed; an empty body or any JSON object is fine. */
    if (req->body_len && !body_is_json_object(req->body, req->body_len)) {
        reply_error(req, 400, "request body is not a JSON object");
        return;
    }
    call_start(d, req, "CaptchaIframeQuery", DEMO_IFRAME_FORM, 0);
}

static void api_check(struct demo *d, struct httpd_req *req) {
    json_t *root = NULL, *ticket;
    char *ticket_enc = NULL, *ip_enc = NULL;
    struct strbuf form;
    char msg[120];

    strbuf_init(&form);
    if (check_post(req) != 0) goto out;
    root = json_loadb(req->body, req->body_len, 0, NULL);
    if (!root || !json_is_object(root)) {
        reply_error(req, 400, "request body is not a JSON object");
        goto out;
    }
    ticket = json_object_get(root, "ticket");
    if (!ticket) {
        reply_error(req, 400, "ticket is missing");
        goto out;
    }
    if (!json_is_string(ticket) || json_string_length(ticket) == 0 ||
        strlen(json_string_value(ticket)) != json_string_length(ticket)) {
        reply_error(req, 400, "ticket must be a non-empty string without NUL characters");
        goto out;
    }
    if (json_string_length(ticket) > DEMO_MAX_TICKET) {
        snprintf(msg, sizeof msg, "ticket is %zu bytes; the limit is %d",
                 json_string_length(ticket), DEMO_MAX_TICKET);
        reply_error(req, 400, msg);
        goto out;
    }
    ticket_enc = evhttp_uriencode(json_string_value(ticket), -1, 0);
    ip_enc = evhttp_uriencode(req->peer_ip ? req->peer_ip : "", -1, 0);
    if (!ticket_enc || !ip_enc ||
        strbuf_appendf(&form, "%s&ticket=%s&userIp=%s", DEMO_CHECK_FORM, ticket_enc, ip_enc)) {
        reply_error(req, 500, "out of memory");
        goto out;
    }
    call_start(d, req, "CaptchaCheck", form.s, 0);
out:
    free(ticket_enc);
    free(ip_enc);
    strbuf_cleanup(&form);
    json_decref(root);
}

/* The 3.0 flow's settings: {"tcaptchaUrl", "captchaAppId"}. */
static void api_config3(struct demo *d, struct httpd_req *req) {
    if (check_post(req) != 0) return;
    if (!d->v3) {
        reply_error(req, 404,
                    "the API 3.0 flow has no CaptchaAppId: set demo_captcha_app_id or "
                    "captcha_apps");
        return;
    }
    json_t *o = json_pack("{s:s, s:I}", "tcaptchaUrl", d->tcaptcha_url, "captchaAppId",
                          (json_int_t)d->captcha_app_id);
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!body) {
        reply_error(req, 500, "out of memory");
        return;
    }
    httpd_add_header(req, "Cache-Control", "no-store");
    httpd_reply(req, 200, DEMO_JSON, body, strlen(body));
    free(body);
}

/* {"ticket", "randstr"} → DescribeCaptchaResult through the front, as the demo app; the
 * AppSecretKey is the gateway's (captcha_apps), never the page's. */
static void api_check3(struct demo *d, struct httpd_req *req) {
    json_t *root = NULL, *out = NULL;
    char *body = NULL;
    if (check_post(req) != 0) goto out;
    if (!d->v3) {
        reply_error(req, 404, "the API 3.0 flow has no CaptchaAppId");
        goto out;
    }
    root = json_loadb(req->body, req->body_len, 0, NULL);
    if (!root || !json_is_object(root)) {
        reply_error(req, 400, "request body is not a JSON object");
        goto out;
    }
    static const char *const need[] = {"ticket", "randstr"};
    for (size_t i = 0; i < 2; i++) {
        json_t *v = json_object_get(root, need[i]);
        if (!json_is_string(v) || json_string_length(v) == 0 ||
            json_string_length(v) > DEMO_MAX_TICKET) {
            char msg[120];
            snprintf(msg, sizeof msg, "%s must be a string of 1..%d bytes", need[i],
                     DEMO_MAX_TICKET);
            reply_error(req, 400, msg);
            goto out;
        }
    }
    out = json_pack("{s:i, s:O, s:s, s:O, s:I}", "CaptchaType", 9, "Ticket",
                    json_object_get(root, "ticket"), "UserIp", req->peer_ip ? req->peer_ip : "",
                    "Randstr", json_object_get(root, "randstr"), "CaptchaAppId",
                    (json_int_t)d->captcha_app_id);
    if (!out || !(body = json_dumps(out, JSON_COMPACT | JSON_PRESERVE_ORDER))) {
        reply_error(req, 500, "out of memory");
        goto out;
    }
    call_start(d, req, "DescribeCaptchaResult", body, 1);
out:
    free(body);
    json_decref(out);
    json_decref(root);
}

static void page(struct httpd_req *req) {
    if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
        reply_method(req, "GET");
        return;
    }
    httpd_add_header(req, "Cache-Control", "no-store");
    httpd_add_header(req, "X-Content-Type-Options", "nosniff");
    httpd_add_header(req, "Referrer-Policy", "no-referrer");
    httpd_reply(req, 200, "text/html; charset=utf-8", demo_page, sizeof demo_page - 1);
}

int demo_handle(struct demo *d, struct httpd_req *req) {
    if (!d || !d->on) return 0;
    if (strcmp(req->path, "/demo") == 0)
        page(req);
    else if (strcmp(req->path, "/demo/api/iframe") == 0)
        api_iframe(d, req);
    else if (strcmp(req->path, "/demo/api/check") == 0)
        api_check(d, req);
    else if (strcmp(req->path, "/demo/api/config3") == 0)
        api_config3(d, req);
    else if (strcmp(req->path, "/demo/api/check3") == 0)
        api_check3(d, req);
    else
        return 0;
    return 1;
}

/* ---- lifecycle --------------------------------------------------------------------------- */

struct demo *demo_new(struct event_base *base, const char *front_host, int front_port) {
    struct demo *d = calloc(1, sizeof *d);
    char authority[300];
    const char *host = front_host;
    if (!d) return NULL;
    /* A wildcard listener is reachable on loopback. */
    if (strcmp(host, "0.0.0.0") == 0 || host[0] == '\0')
        host = "127.0.0.1";
    else if (strcmp(host, "::") == 0)
        host = "::1";
    if (strchr(host, ':'))
        snprintf(authority, sizeof authority, "[%s]:%d", host, front_port);
    else
        snprintf(authority, sizeof authority, "%s:%d", host, front_port);
    d->base = base;
    d->front_port = front_port;
    d->front_host = strdup(host);
    d->front_authority = strdup(authority);
    d->reap_ev = event_new(base, -1, 0, reap_cb, d);
    TAILQ_INIT(&d->live);
    TAILQ_INIT(&d->dead);
    if (!d->front_host || !d->front_authority || !d->reap_ev) {
        demo_free(d);
        return NULL;
    }
    return d;
}

int demo_configure(struct demo *d, const struct config *c) {
    const struct config_app *app = NULL;
    char *name = NULL, *token = NULL;

    for (size_t i = 0; c->demo_app && i < c->n_apps && !app; i++)
        if (strcmp(c->apps[i].name, c->demo_app) == 0) app = &c->apps[i];
    /* config_load made sure a demo has its token app. */
    if (c->demo && app && app->auth == CONFIG_AUTH_TOKEN) {
        name = strdup(app->name);
        token = secmem_strdup(app->token);
        if (!name || !token) {
            free(name);
            secret_freez(token);
            name = token = NULL;
            d->on = 0;
            log_error("demo: out of memory; the /demo page is off");
            return -1;
        }
    }
    free(d->app);
    secret_freez(d->token);
    d->app = name;
    d->token = token;
    d->on = token != NULL;
    char *url = strdup(c->demo_tcaptcha_url ? c->demo_tcaptcha_url : "");
    if (url) {
        free(d->tcaptcha_url);
        d->tcaptcha_url = url;
    }
    d->v3 = 1;
    if (c->has_demo_captcha_app_id)
        d->captcha_app_id = c->demo_captcha_app_id;
    else if (c->n_captcha_apps)
        d->captcha_app_id = c->captcha_apps[0].captcha_app_id;
    else
        d->v3 = 0;
    if (!d->tcaptcha_url) d->v3 = 0;
    d->timeout_ms = c->upstream.connect_timeout_ms +
                    c->upstream.timeout_ms * (c->upstream.retries + 1) + DEMO_TIMEOUT_SLACK_MS;
    if (d->on)
        log_info("demo: /demo on the admin listener calls %s as app %s", d->front_authority,
                 d->app);
    return 0;
}

void demo_free(struct demo *d) {
    struct demo_call *call;
    if (!d) return;
    while ((call = TAILQ_FIRST(&d->live)) != NULL) {
        TAILQ_REMOVE(&d->live, call, link);
        call_free(call);
    }
    while ((call = TAILQ_FIRST(&d->dead)) != NULL) {
        TAILQ_REMOVE(&d->dead, call, link);
        call_free(call);
    }
    if (d->reap_ev) event_free(d->reap_ev);
    free(d->front_host);
    free(d->front_authority);
    free(d->app);
    free(d->tcaptcha_url);
    secret_freez(d->token);
    free(d);
}
