/* widget.c: the test captcha widget a browser loads from a captcha URL (single use), and the
 * endpoint its button calls to get a ticket. The script is plain ES5 so any browser runs it. */
#include "mock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/apierr.h"
#include "capgate/clock.h"
#include "capgate/httpd.h"
#include "capgate/strbuf.h"

/* The script, split where the origin and the asig go (each written as a JSON string). */
static const char script_head[] =
    "/* capgate-mock test captcha widget: not a real captcha. Its button asks the mock for a\n"
    " * ticket, as a solved puzzle would. API: capInit(element, opts), capGetTicket(),\n"
    " * capRefresh(), capDestroy(); opts.callback gets {ret: 0, ticket, randstr} or {ret: 1}. */\n"
    "(function () {\n"
    "  'use strict';\n"
    "  var ORIGIN = ";
static const char script_mid[] = ";\n  var ASIG = ";
static const char script_tail[] =
    ";\n"
    "  var state = { element: null, opts: {}, root: null, last: null, solved: false };\n"
    "  function report(res) {\n"
    "    var cb = state.opts && state.opts.callback;\n"
    "    if (typeof cb === 'function') {\n"
    "      try { cb(res); } catch (e) { console.error('capgate-mock: callback threw', e); }\n"
    "    }\n"
    "  }\n"
    "  function resolveElement(el) {\n"
    "    if (typeof el === 'string') el = document.getElementById(el);\n"
    "    return el || document.body;\n"
    "  }\n"
    "  function remove() {\n"
    "    if (state.root && state.root.parentNode) state.root.parentNode.removeChild(state.root);\n"
    "    state.root = null;\n"
    "  }\n"
    "  function render() {\n"
    "    remove();\n"
    "    var root = document.createElement('div');\n"
    "    root.id = 'capgate-mock-widget';\n"
    "    root.setAttribute('style', 'display:inline-block;padding:12px 16px;border:1px solid "
    "#999;border-radius:6px;background:#fff;color:#222;font:14px sans-serif');\n"
    "    var button = document.createElement('button');\n"
    "    button.id = 'capgate-mock-solve';\n"
    "    button.type = 'button';\n"
    "    button.textContent = 'I am not a robot (capgate-mock)';\n"
    "    var close = document.createElement('a');\n"
    "    close.id = 'capgate-mock-close';\n"
    "    close.href = '#';\n"
    "    close.textContent = 'close';\n"
    "    close.setAttribute('style', 'margin-left:12px');\n"
    "    var status = document.createElement('span');\n"
    "    status.id = 'capgate-mock-status';\n"
    "    status.setAttribute('style', 'margin-left:12px');\n"
    "    if (state.solved) { button.disabled = true; status.textContent = 'solved'; }\n"
    "    button.addEventListener('click', function () {\n"
    "      button.disabled = true;\n"
    "      status.textContent = 'checking...';\n"
    "      fetch(ORIGIN + '/__widget/solve?asig=' + encodeURIComponent(ASIG),\n"
    "            { method: 'GET', mode: 'cors', credentials: 'omit', cache: 'no-store' })\n"
    "        .then(function (r) {\n"
    "          return r.json().then(function (body) {\n"
    "            if (!r.ok || !body.ticket) throw new Error(body.message || ('HTTP ' + "
    "r.status));\n"
    "            return body;\n"
    "          });\n"
    "        })\n"
    "        .then(function (body) {\n"
    "          state.solved = true;\n"
    "          state.last = { ticket: body.ticket, randstr: body.randstr };\n"
    "          status.textContent = 'solved';\n"
    "          report({ ret: 0, ticket: body.ticket, randstr: body.randstr });\n"
    "        })\n"
    "        .catch(function (e) {\n"
    "          button.disabled = state.solved;\n"
    "          status.textContent = 'error: ' + e.message;\n"
    "          console.error('capgate-mock: solving the captcha failed: ' + e.message);\n"
    "        });\n"
    "    });\n"
    "    close.addEventListener('click', function (ev) {\n"
    "      ev.preventDefault();\n"
    "      remove();\n"
    "      report({ ret: 1 });\n"
    "    });\n"
    "    root.appendChild(button);\n"
    "    root.appendChild(close);\n"
    "    root.appendChild(status);\n"
    "    state.element.appendChild(root);\n"
    "    state.root = root;\n"
    "  }\n"
    "  window.capInit = function (element, opts) {\n"
    "    state.element = resolveElement(element);\n"
    "    state.opts = opts || {};\n"
    "    render();\n"
    "  };\n"
    "  window.capGetTicket = function () {\n"
    "    return state.last ? { ticket: state.last.ticket, randstr: state.last.randstr }\n"
    "                      : { ticket: '', randstr: '' };\n"
    "  };\n"
    "  window.capRefresh = function () { if (state.element) render(); };\n"
    "  window.capDestroy = function () { remove(); state.element = null; };\n"
    "})();\n";

static int append_js_string(struct strbuf *out, const char *s) {
    json_t *j = json_string(s);
    char *text = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    int rc = text ? strbuf_appends(out, text) : -1;
    free(text);
    json_decref(j);
    return rc;
}

int widget_script(struct strbuf *out, const char *origin, const char *asig) {
    if (strbuf_appends(out, script_head) != 0 || append_js_string(out, origin) != 0 ||
        strbuf_appends(out, script_mid) != 0 || append_js_string(out, asig) != 0 ||
        strbuf_appends(out, script_tail) != 0)
        return -1;
    return 0;
}

/* The value of name in a raw query, when it is made of URL-safe characters only (asig values
 * are), copied into out. 0/-1. */
static int query_token(const char *query, const char *name, char *out, size_t len) {
    size_t nl = strlen(name);
    const char *p = query;
    while (p && *p) {
        const char *end = strchr(p, '&');
        size_t pl = end ? (size_t)(end - p) : strlen(p);
        if (pl > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
            size_t vl = pl - nl - 1;
            if (vl == 0 || vl >= len) return -1;
            for (size_t i = 0; i < vl; i++) {
                char c = p[nl + 1 + i];
                if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                      c == '-' || c == '_'))
                    return -1;
            }
            memcpy(out, p + nl + 1, vl);
            out[vl] = '\0';
            return 0;
        }
        p = end ? end + 1 : NULL;
    }
    return -1;
}

static void refuse(struct httpd_req *req, const char *why) {
    struct strbuf b;
    strbuf_init(&b);
    json_t *j = json_string(why);
    char *quoted = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    int ok = strbuf_appendf(&b,
                            "/* capgate-mock: %s\n * Captcha URLs are single-use: ask "
                            "CaptchaIframeQuery for a new one. */\n"
                            "console.error(\"capgate-mock: \" + %s);\n",
                            why, quoted ? quoted : "\"refused\"") == 0;
    httpd_add_header(req, "Cache-Control", "no-store");
    httpd_add_header(req, "Access-Control-Allow-Origin", "*");
    if (ok)
        httpd_reply(req, 404, "application/javascript; charset=utf-8", b.s, b.len);
    else
        httpd_reply(req, 404, "application/javascript", "", 0);
    free(quoted);
    json_decref(j);
    strbuf_cleanup(&b);
}

void widget_handle_fetch(struct mock *m, struct httpd_req *req) {
    char asig[MOCK_ASIG_LEN + 1];
    if (strcmp(req->method, "GET") != 0) {
        refuse(req, "the widget script is fetched with GET");
        return;
    }
    if (!req->query || query_token(req->query, "asig", asig, sizeof(asig)) != 0) {
        refuse(req, "this URL has no valid asig parameter");
        return;
    }
    void *v = NULL;
    etable_expire(m->urls, clock_mono_us());
    if (!etable_find(m->urls, asig, strlen(asig), &v)) {
        refuse(req, "unknown or expired captcha URL (asig not issued, or older than its "
                    "lifetime)");
        return;
    }
    struct mock_url *u = v;
    if (u->fetched) {
        refuse(req, "this captcha URL was already used; a URL serves its widget once");
        return;
    }
    char origin[MOCKOPTS_MAX_URL + 64];
    mock_origin_for(m, req, origin, sizeof(origin));
    struct strbuf js;
    strbuf_init(&js);
    if (widget_script(&js, origin, asig) != 0) {
        strbuf_cleanup(&js);
        refuse(req, "out of memory");
        return;
    }
    u->fetched = 1;
    httpd_add_header(req, "Cache-Control", "no-store");
    httpd_add_header(req, "Access-Control-Allow-Origin", "*");
    httpd_reply(req, 200, "application/javascript; charset=utf-8", js.s, js.len);
    strbuf_cleanup(&js);
}

void widget_handle_solve(struct mock *m, struct httpd_req *req) {
    httpd_add_header(req, "Access-Control-Allow-Origin", "*");
    httpd_add_header(req, "Cache-Control", "no-store");
    if (strcmp(req->method, "OPTIONS") == 0) {
        httpd_add_header(req, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
        httpd_add_header(req, "Access-Control-Allow-Headers", "Content-Type");
        httpd_add_header(req, "Access-Control-Max-Age", "600");
        httpd_reply(req, 204, NULL, "", 0);
        return;
    }
    if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "POST") != 0) {
        mock_reply_error(req, 405, APIERR_INVALID_PARAMETER, "method %s is not allowed; use GET",
                         req->method);
        return;
    }
    char asig[MOCK_ASIG_LEN + 1], ticket[MOCK_TICKET_LEN + 1], randstr[MOCK_RANDSTR_LEN + 1];
    char err[256];
    int status = 400;
    if (!req->query || query_token(req->query, "asig", asig, sizeof(asig)) != 0) {
        mock_reply_error(req, 400, APIERR_INVALID_PARAMETER, "missing or malformed asig parameter");
        return;
    }
    if (mock_solve(m, asig, ticket, randstr, &status, err, sizeof(err)) != 0) {
        mock_reply_error(req, status, status == 404 ? APIERR_NOT_FOUND : APIERR_OPERATION_FAILED,
                         "%s", err);
        return;
    }
    mock_reply_json(req, 200, json_pack("{s:s, s:s}", "ticket", ticket, "randstr", randstr));
}
