/* api3.c: the API 3.0 face of the mock (captcha.tencentcloudapi.com): POST / with a JSON body,
 * X-TC-* headers and a TC3-HMAC-SHA256 Authorization (common/tc3.c), or the other shapes the
 * official SDKs send (GET, a form, multipart; TC3 or v1 signed: capgate/api3req.h), answered in
 * 3.0's shape
 * {"Response": {..., "RequestId"}} or {"Response": {"Error": {"Code", "Message"}, "RequestId"}}.
 * Error codes are the API 3.0 common ones (AuthFailure.*, MissingParameter, InvalidParameter,
 * InvalidAction, NoSuchVersion, UnsupportedProtocol, RequestLimitExceeded, ...); the Actions and
 * their fields follow the official SDK's models (captcha v20190722). */
#include "mock.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "capgate/api3req.h"
#include "capgate/clock.h"
#include "capgate/httpd.h"
#include "capgate/log.h"
#include "capgate/params.h"
#include "capgate/tc3.h"
#include "capgate/validate.h"

static const char *header(const struct httpd_req *req, const char *name) {
    for (size_t i = 0; i < req->header_count; i++)
        if (strcasecmp(req->headers[i].name, name) == 0) return req->headers[i].value;
    return NULL;
}

/* The request's headers for tc3 (api3req_tc3_verify), by lower-case name. */
static const char *hdr_as_sent(void *arg, const char *lname) {
    return header(arg, lname);
}

static int fail(struct api3_call *c, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct api3_call *c, const char *code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->msg, sizeof(c->msg), fmt, ap);
    va_end(ap);
    c->code = code;
    return -1;
}

static int find_cred(const struct mock *m, const char *id) {
    for (size_t i = 0; i < m->opts->ncreds; i++)
        if (strcmp(m->opts->creds[i].secret_id, id) == 0) return (int)i;
    return -1;
}

static int parse_u64(const char *s, uint64_t *out) {
    if (!s || !*s || strlen(s) > 19) return -1;
    uint64_t v = 0;
    for (; *s; s++) {
        if (!isdigit((unsigned char)*s)) return -1;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return 0;
}

/* The mock takes permanent credentials only (--cred): a Token is a temporary credential's, which
 * none of them is. Tencent answers a token that does not hold with AuthFailure.TokenFailure (the
 * API 3.0 common error codes). */
#define TOKEN_FAILURE "the Token is not valid: SecretId %s is a permanent key, which takes no Token"

static int check_quota(struct mock *m, struct api3_call *c, uint64_t now) {
    if (mock_quota_take(m, c->cred, now) != 0)
        return fail(c, "RequestLimitExceeded", "quota of %u requests/s for SecretId %s exceeded",
                    m->opts->quota, c->secret_id);
    return 0;
}

static int check_action(struct api3_call *c, const char *ver) {
    if (strcmp(c->action, "DescribeCaptchaResult") != 0 &&
        strcmp(c->action, "DescribeCaptchaMiniResult") != 0)
        return fail(c, "InvalidAction",
                    "the Action %.64s does not exist (this emulator has "
                    "DescribeCaptchaResult and DescribeCaptchaMiniResult)",
                    c->action);
    if (strcmp(ver, MOCK_API3_VERSION) != 0)
        return fail(c, "NoSuchVersion", "the Version %.40s does not exist; use " MOCK_API3_VERSION,
                    ver);
    return 0;
}

/* The fields of a GET, form or multipart call, typed into c->body. */
static int type_fields(struct api3_call *c, const struct params *p, int v1) {
    const char *code = "InternalError";
    int mini = strcmp(c->action, "DescribeCaptchaMiniResult") == 0;
    c->body =
        api3req_body(p, v1, validate_api3_fields(mini), c->action, &code, c->msg, sizeof(c->msg));
    if (!c->body) c->code = code;
    return c->body ? 0 : -1;
}

/* v1: the common parameters among the fields, signed HmacSHA1 / HmacSHA256 (api3req.h); the
 * Nonce spent once per SecretId within twice the window, as v2's. */
static int check_v1(struct mock *m, struct httpd_req *req, struct api3_call *c,
                    const struct params *p) {
    struct api3_v1 v;
    const char *code = NULL;
    if (api3req_v1_public(p, &v, &code, c->msg, sizeof(c->msg)) != 0) {
        c->code = code;
        return -1;
    }
    snprintf(c->action_buf, sizeof(c->action_buf), "%s", v.action);
    c->action = c->action_buf;
    snprintf(c->secret_id, sizeof(c->secret_id), "%s", v.secret_id);
    c->cred = find_cred(m, v.secret_id);
    if (c->cred < 0)
        return fail(c, "AuthFailure.SecretIdNotFound", "SecretId %s does not exist", c->secret_id);
    uint64_t now = clock_wall_us() / 1000000u, window = m->opts->timestamp_window;
    if (!tc3_timestamp_fresh(v.timestamp, now, window))
        return fail(c, "AuthFailure.SignatureExpire",
                    "Timestamp %llu is %llu s from the server time; at most %llu s is accepted",
                    (unsigned long long)v.timestamp,
                    (unsigned long long)(v.timestamp > now ? v.timestamp - now : now - v.timestamp),
                    (unsigned long long)window);
    if (mock_nonce_used(m, "v3", c->cred, v.nonce))
        return fail(c, "AuthFailure.SignatureExpire",
                    "the Nonce %llu was already used by this SecretId within the last %llu s",
                    (unsigned long long)v.nonce, (unsigned long long)validate_nonce_ttl_s(window));
    if (api3req_v1_verify(p, req->method, req->host, NULL, m->opts->creds[c->cred].secret_key) !=
        0) {
        c->verdict = JOURNAL_SIG_BAD;
        return fail(c, "AuthFailure.SignatureFailure",
                    "the Signature does not match the request signed %s with the SecretKey of %s",
                    sign_method_name(v.method), c->secret_id);
    }
    c->verdict = JOURNAL_SIG_OK;
    if (v.token && *v.token)
        return fail(c, "AuthFailure.TokenFailure", TOKEN_FAILURE, c->secret_id);
    mock_nonce_spend(m, "v3", c->cred, v.nonce);
    if (check_quota(m, c, now) != 0) return -1;
    if (check_action(c, v.version) != 0) return -1;
    return type_fields(c, p, 1);
}

static int check(struct mock *m, struct httpd_req *req, struct api3_call *c, struct params *p) {
    c->cred = -1;
    c->verdict = JOURNAL_UNCHECKED;
    c->action = header(req, "x-tc-action");
    if (m->opts->https_only && !req->is_tls)
        return fail(c, "UnsupportedProtocol", "this endpoint accepts HTTPS only");
    enum api3_shape shape;
    const char *code = NULL;
    const char *ct = req->content_type ? req->content_type : "";
    if (api3req_shape(req->method, ct, &shape, &code, c->msg, sizeof(c->msg)) != 0) {
        c->code = code;
        return -1;
    }
    if (shape != API3_SHAPE_JSON) {
        if (api3req_params(shape, req->query, ct, req->body, req->body_len, p, c->msg,
                           sizeof(c->msg)) != 0) {
            c->code = "InvalidParameter";
            return -1;
        }
        if (api3req_is_v1(p)) return check_v1(m, req, c, p);
    }
    static const char *const need[] = {"X-TC-Action", "X-TC-Version", "X-TC-Timestamp",
                                       "Authorization"};
    for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++)
        if (!header(req, need[i]) || !*header(req, need[i]))
            return i == 3 ? fail(c, "AuthFailure.InvalidAuthorization",
                                 "the Authorization header is missing")
                          : fail(c, "MissingParameter", "the header %s is missing", need[i]);
    uint64_t ts;
    const char *tss = header(req, "x-tc-timestamp");
    if (parse_u64(tss, &ts) != 0)
        return fail(c, "InvalidParameter", "X-TC-Timestamp %.40s is not a Unix time in seconds",
                    tss);
    struct tc3_auth a;
    char err[256];
    if (tc3_parse_authorization(header(req, "authorization"), &a, err, sizeof(err)) != 0)
        return fail(c, "AuthFailure.InvalidAuthorization", "%s", err);
    snprintf(c->secret_id, sizeof(c->secret_id), "%s", a.secret_id);
    c->cred = find_cred(m, a.secret_id);
    if (c->cred < 0)
        return fail(c, "AuthFailure.SecretIdNotFound", "SecretId %s does not exist", a.secret_id);
    uint64_t now = clock_wall_us() / 1000000u;
    if (!tc3_timestamp_fresh(ts, now, m->opts->timestamp_window))
        return fail(c, "AuthFailure.SignatureExpire",
                    "X-TC-Timestamp %llu is %llu s from the "
                    "server time; at most %u s is accepted",
                    (unsigned long long)ts, (unsigned long long)(ts > now ? ts - now : now - ts),
                    m->opts->timestamp_window);
    /* The service of the scope: "captcha", or the first label of the Host, which is what the
     * SDKs derive from an endpoint (endpoint.split(".")[0]) when pointed at the emulator. */
    size_t label = strcspn(req->host ? req->host : "", ".");
    if (strcmp(a.service, "captcha") != 0 &&
        (!req->host || strlen(a.service) != label || strncmp(a.service, req->host, label) != 0))
        return fail(c, "AuthFailure.SignatureFailure",
                    "the Credential service %s is neither "
                    "captcha nor the first label of the Host",
                    a.service);
    const char *key = m->opts->creds[c->cred].secret_key;
    int rc = api3req_tc3_verify(shape, req->query, req->body, req->body_len, hdr_as_sent,
                                (void *)req, &a, key, ts, err, sizeof(err));
    if (rc != 0) {
        c->verdict = JOURNAL_SIG_BAD;
        return fail(c, "AuthFailure.SignatureFailure", "%s (signed with the SecretKey of %s)", err,
                    a.secret_id);
    }
    c->verdict = JOURNAL_SIG_OK;
    const char *token = header(req, "x-tc-token");
    if (token && *token) return fail(c, "AuthFailure.TokenFailure", TOKEN_FAILURE, a.secret_id);
    if (check_quota(m, c, now) != 0) return -1;
    if (shape != API3_SHAPE_JSON) {
        if (check_action(c, header(req, "x-tc-version")) != 0) return -1;
        return type_fields(c, p, 0);
    }
    json_error_t jerr;
    c->body = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!c->body) return fail(c, "InvalidParameter", "the body is not JSON: %s", jerr.text);
    if (!json_is_object(c->body))
        return fail(c, "InvalidParameter", "the body must be a JSON object");
    return check_action(c, header(req, "x-tc-version"));
}

int api3_check(struct mock *m, struct httpd_req *req, struct api3_call *c) {
    struct params p;
    params_init(&p);
    int rc = check(m, req, c, &p);
    params_cleanup(&p);
    return rc;
}

/* ---- the Actions ---- */

static int check_fields(struct api3_call *c, const struct api3_field *f) {
    const char *key;
    json_t *v;
    json_object_foreach(c->body, key, v) {
        const struct api3_field *k = f;
        while (k->name && strcmp(k->name, key) != 0) k++;
        if (!k->name)
            return fail(c, "UnknownParameter", "%.64s is not a parameter of %s", key, c->action);
        if (k->type == API3_INT && (!json_is_integer(v) || json_integer_value(v) < 0))
            return fail(c, "InvalidParameter", "%s must be a non-negative integer", key);
        if (k->type == API3_STR && !json_is_string(v))
            return fail(c, "InvalidParameter", "%s must be a string", key);
    }
    for (; f->name; f++)
        if (f->required && !json_object_get(c->body, f->name))
            return fail(c, "MissingParameter", "the parameter %s is missing", f->name);
    if (json_integer_value(json_object_get(c->body, "CaptchaType")) != 9)
        return fail(c, "InvalidParameterValue", "CaptchaType must be 9");
    return 0;
}

static json_t *result(int code, const char *msg) {
    return json_pack("{s:i, s:s}", "CaptchaCode", code, "CaptchaMsg", msg);
}

json_t *api3_run(struct mock *m, struct api3_call *c) {
    int mini = strcmp(c->action, "DescribeCaptchaMiniResult") == 0;
    if (check_fields(c, validate_api3_fields(mini)) != 0) return NULL;
    const char *ticket = json_string_value(json_object_get(c->body, "Ticket"));
    const char *randstr = json_string_value(json_object_get(c->body, "Randstr"));
    const char *secret = json_string_value(json_object_get(c->body, "AppSecretKey"));
    uint64_t appid = (uint64_t)json_integer_value(json_object_get(c->body, "CaptchaAppId"));
    /* Codes as the SDK models document them (DescribeCaptchaResultResponse.CaptchaCode and
     * DescribeCaptchaMiniResultResponse.CaptchaCode). */
    const char *key = mock_app_secret(m, appid);
    if (!key)
        return mini ? result(16, "CaptchaAppId wrong format")
                    : result(100, "appid-secretkey-ticket mismatch");
    if (strcmp(secret, key) != 0)
        return result(100, mini ? "param err" : "appid-secretkey-ticket mismatch");
    uint64_t now = clock_mono_us();
    void *v = NULL;
    etable_expire(m->tickets, now);
    if (!etable_find(m->tickets, ticket, strlen(ticket), &v))
        return mini ? result(25, "invalid ticket") : result(15, "decrypt fail");
    struct mock_ticket *t = v;
    if (t->appid != appid)
        return mini ? result(7, "CaptchaAppId does not match")
                    : result(16, "appid-ticket mismatch");
    if (!mini && strcmp(randstr, t->randstr) != 0) return result(7, "captcha no match");
    if (now - t->solved_us >= m->ttl_us) return result(8, "ticket expired");
    if (t->v3_checks > 0) return mini ? result(25, "invalid ticket") : result(9, "ticket reused");
    t->v3_checks++;
    json_t *o = result(1, mini ? "ticket verification succeeded" : "OK");
    if (!mini) {
        int need_time = json_integer_value(json_object_get(c->body, "NeedGetCaptchaTime")) == 1;
        json_object_set_new(o, "EvilLevel", json_integer(0));
        json_object_set_new(o, "GetCaptchaTime",
                            json_integer(need_time ? (json_int_t)t->get_wall_s : 0));
        json_object_set_new(o, "EvilBitmap", json_null());
        json_object_set_new(o, "SubmitCaptchaTime", json_integer((json_int_t)t->solve_wall_s));
        json_object_set_new(o, "DeviceRiskCategory", json_null());
        json_object_set_new(o, "Score", json_integer(0));
    }
    return o;
}

void api3_reply(struct mock *m, struct httpd_req *req, json_t *resp, const char *code,
                const char *msg) {
    char rid[40];
    char hex[40];
    snprintf(hex, sizeof(hex), "%016llx%016llx", (unsigned long long)mockrng_u64(&m->rid_rng),
             (unsigned long long)mockrng_u64(&m->rid_rng));
    /* A UUID-shaped RequestId, as the real service returns. */
    snprintf(rid, sizeof(rid), "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16,
             hex + 20);
    if (!resp) resp = json_pack("{s:{s:s, s:s}}", "Error", "Code", code, "Message", msg);
    if (resp) json_object_set_new(resp, "RequestId", json_string(rid));
    mock_reply_json(req, 200, resp ? json_pack("{s:o}", "Response", resp) : NULL);
}

void api3_journal_params(const struct api3_call *c, struct params *out) {
    if (c->action) params_adds(out, "Action", c->action);
    if (c->secret_id[0]) params_adds(out, "SecretId", c->secret_id);
    if (!json_is_object(c->body)) return;
    const char *key;
    json_t *v;
    json_object_foreach(c->body, key, v) {
        char num[32];
        const char *s = NULL;
        if (strcmp(key, "AppSecretKey") == 0)
            s = "***";
        else if (json_is_string(v))
            s = json_string_value(v);
        else if (json_is_integer(v)) {
            snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(v));
            s = num;
        }
        if (s) params_adds(out, key, s);
    }
}
