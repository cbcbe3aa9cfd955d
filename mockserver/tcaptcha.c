/* tcaptcha.c: an emulation of TCaptcha.js, the front-end script of API 3.0 captchas:
 * `new TencentCaptcha(appId, callback, options).show()` shows a widget; solving it calls back
 * {ret: 0, ticket, randstr, appid, bizState}, closing it {ret: 2, ticket: null, appid,
 * bizState}, getTicket() returns {appid, ticket} (tencentyun/qcloud-documents
 * product/安全服务/验证码/SDK/Web前端接入.md). It is a thin wrapper:
 * show() loads GET /__widget/tcaptcha.js?appid=N, which issues a captcha for that CaptchaAppId
 * and answers the v2 test widget's script for it (widget.c), then drives capInit. Tickets come
 * from the same /__widget/solve, so POST /__admin/solve and DescribeCaptchaResult see them. */
#include "mock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/httpd.h"
#include "capgate/strbuf.h"

static const char tcaptcha_head[] =
    "/* capgate-mock TCaptcha.js emulation: not a real captcha. */\n"
    "(function () {\n"
    "  'use strict';\n"
    "  var ORIGIN = ";
static const char tcaptcha_tail[] =
    ";\n"
    "  function TencentCaptcha(appId, callback, options) {\n"
    "    if (!(this instanceof TencentCaptcha)) return new TencentCaptcha(appId, callback, "
    "options);\n"
    "    if (typeof appId !== 'string' && typeof appId !== 'number') throw new Error("
    "'TencentCaptcha: appId is required');\n"
    "    this.appid = String(appId);\n"
    "    this.callback = typeof callback === 'function' ? callback : function () {};\n"
    "    this.options = options || {};\n"
    "    this.last = null;\n"
    "    this.box = null;\n"
    "  }\n"
    "  TencentCaptcha.prototype.reply = function (res) {\n"
    "    res.appid = this.appid;\n"
    "    if (this.options.bizState !== undefined) res.bizState = this.options.bizState;\n"
    "    try { this.callback(res); } catch (e) { console.error('capgate-mock: callback threw',"
    " e); }\n"
    "  };\n"
    "  TencentCaptcha.prototype.show = function () {\n"
    "    var self = this;\n"
    "    self.destroy();\n"
    "    var box = document.createElement('div');\n"
    "    box.id = 'capgate-mock-tcaptcha';\n"
    "    box.setAttribute('style', 'position:fixed;top:30%;left:50%;transform:translateX(-50%);"
    "z-index:2000000000');\n"
    "    document.body.appendChild(box);\n"
    "    self.box = box;\n"
    "    var s = document.createElement('script');\n"
    "    s.src = ORIGIN + '/__widget/tcaptcha.js?appid=' + encodeURIComponent(self.appid) +\n"
    "            '&_=' + Date.now();\n"
    "    s.onload = function () {\n"
    "      window.capInit(box, { callback: function (r) {\n"
    "        if (r.ret === 0) {\n"
    "          self.last = { ticket: r.ticket, randstr: r.randstr };\n"
    "          self.destroy();\n"
    "          self.reply({ ret: 0, ticket: r.ticket, randstr: r.randstr });\n"
    "        } else {\n"
    "          self.destroy();\n"
    "          self.reply({ ret: 2, ticket: null });\n"
    "        }\n"
    "      } });\n"
    "    };\n"
    "    s.onerror = function () {\n"
    "      self.destroy();\n"
    "      self.reply({ ret: 0, ticket: 'trerror_1001_' + self.appid + '_' + Date.now(),\n"
    "                   randstr: '@' + Math.random().toString(36).slice(2, 5), errorCode: 1001,"
    "\n                   errorMessage: 'capgate-mock: the widget script failed to load' });\n"
    "    };\n"
    "    box.appendChild(s);\n"
    "  };\n"
    "  TencentCaptcha.prototype.destroy = function () {\n"
    "    if (this.box && this.box.parentNode) this.box.parentNode.removeChild(this.box);\n"
    "    this.box = null;\n"
    "  };\n"
    "  TencentCaptcha.prototype.getTicket = function () {\n"
    "    return { appid: this.appid, ticket: this.last ? this.last.ticket : '' };\n"
    "  };\n"
    "  window.TencentCaptcha = TencentCaptcha;\n"
    "})();\n";

static void js_reply(struct httpd_req *req, int status, const char *s, size_t n) {
    httpd_add_header(req, "Cache-Control", "no-store");
    httpd_add_header(req, "Access-Control-Allow-Origin", "*");
    httpd_reply(req, status, "application/javascript; charset=utf-8", s, n);
}

static void js_error(struct httpd_req *req, int status, const char *why) {
    char buf[512];
    json_t *j = json_string(why);
    char *q = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    int n = snprintf(buf, sizeof(buf), "console.error(\"capgate-mock: \" + %s);\n",
                     q ? q : "\"refused\"");
    free(q);
    json_decref(j);
    js_reply(req, status, buf, n > 0 && (size_t)n < sizeof(buf) ? (size_t)n : 0);
}

void tcaptcha_handle_script(struct mock *m, struct httpd_req *req) {
    if (strcmp(req->method, "GET") != 0) {
        js_error(req, 405, "TCaptcha.js is fetched with GET");
        return;
    }
    char origin[MOCKOPTS_MAX_URL + 64];
    mock_origin_for(m, req, origin, sizeof(origin));
    json_t *j = json_string(origin);
    char *q = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    json_decref(j);
    struct strbuf b;
    strbuf_init(&b);
    if (!q || strbuf_appends(&b, tcaptcha_head) != 0 || strbuf_appends(&b, q) != 0 ||
        strbuf_appends(&b, tcaptcha_tail) != 0)
        js_error(req, 500, "out of memory");
    else
        js_reply(req, 200, b.s, b.len);
    free(q);
    strbuf_cleanup(&b);
}

/* The appid=N of the query: 1 to 18 digits. 0/-1. */
static int query_appid(const char *query, uint64_t *out) {
    for (const char *p = query; p && *p;) {
        if (strncmp(p, "appid=", 6) == 0) {
            p += 6;
            size_t n = strspn(p, "0123456789");
            if (n == 0 || n > 18 || (p[n] && p[n] != '&')) return -1;
            uint64_t v = 0;
            for (size_t i = 0; i < n; i++) v = v * 10 + (uint64_t)(p[i] - '0');
            if (v == 0) return -1;
            *out = v;
            return 0;
        }
        p = strchr(p, '&');
        if (p) p++;
    }
    return -1;
}

void tcaptcha_handle_widget(struct mock *m, struct httpd_req *req) {
    uint64_t appid;
    char asig[MOCK_ASIG_LEN + 1];
    if (strcmp(req->method, "GET") != 0) {
        js_error(req, 405, "the widget script is fetched with GET");
        return;
    }
    if (!req->query || query_appid(req->query, &appid) != 0) {
        js_error(req, 400, "appid must be the numeric CaptchaAppId");
        return;
    }
    if (mock_issue_captcha(m, appid, asig) != 0) {
        js_error(req, 500, "out of memory");
        return;
    }
    char origin[MOCKOPTS_MAX_URL + 64];
    mock_origin_for(m, req, origin, sizeof(origin));
    struct strbuf js;
    strbuf_init(&js);
    if (widget_script(&js, origin, asig) != 0)
        js_error(req, 500, "out of memory");
    else
        js_reply(req, 200, js.s, js.len);
    strbuf_cleanup(&js);
}
