/* api3.c: the API 3.0 front's pure parts (api3.h): authentication, validation, authorization of
 * CaptchaAppIds, the body sent upstream with an injected AppSecretKey, and the 3.0 error shape.
 * The TC3 signature itself is common/tc3.c's, the one the mock verifies with. */
#include "api3.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/crypto.h>

#include "auth.h"
#include "capgate/apierr.h"
#include "capgate/num.h"
#include "capgate/params.h"
#include "capgate/strbuf.h"
#include "capgate/validate.h"
#include "config.h"
#include "nonce.h"

/* ---- error shape and codes ---- */

const char *api3_code_name(int apierr) {
    switch (apierr) {
    case APIERR_INVALID_PARAMETER: return "InvalidParameter";
    case APIERR_AUTH_FAILURE: return "AuthFailure.SignatureFailure";
    case APIERR_ACCESS_DENIED: return "UnauthorizedOperation";
    case APIERR_LIMIT_EXCEEDED: return "RequestLimitExceeded";
    case APIERR_REPLAY: return "AuthFailure.SignatureExpire";
    case APIERR_HTTPS_REQUIRED: return "UnsupportedProtocol";
    case APIERR_NOT_FOUND: return "UnsupportedOperation";
    case APIERR_VERSION: return "InvalidAction";
    case APIERR_UNAVAILABLE: return "ServiceUnavailable";
    default: return "InternalError";
    }
}

int api3_code_class(const char *code) {
    if (!code) return APIERR_INTERNAL;
    if (strncmp(code, "AuthFailure", 11) == 0) return APIERR_AUTH_FAILURE;
    if (strcmp(code, "RequestLimitExceeded") == 0 ||
        strncmp(code, "RequestLimitExceeded.", 21) == 0)
        return APIERR_LIMIT_EXCEEDED;
    if (strncmp(code, "UnauthorizedOperation", 21) == 0) return APIERR_ACCESS_DENIED;
    if (strncmp(code, "InvalidParameter", 16) == 0 || strncmp(code, "MissingParameter", 16) == 0 ||
        strncmp(code, "UnknownParameter", 16) == 0 || strcmp(code, "RequestSizeLimitExceeded") == 0)
        return APIERR_INVALID_PARAMETER;
    if (strcmp(code, "InvalidAction") == 0 || strcmp(code, "NoSuchVersion") == 0)
        return APIERR_VERSION;
    if (strcmp(code, "UnsupportedProtocol") == 0) return APIERR_HTTPS_REQUIRED;
    if (strncmp(code, "ResourceUnavailable", 19) == 0 || strcmp(code, "ServiceUnavailable") == 0)
        return APIERR_UNAVAILABLE;
    return APIERR_INTERNAL;
}

char *api3_error_body(const char *code, const char *message, const char *request_id) {
    json_t *o = json_pack("{s:{s:{s:s, s:s}, s:s}}", "Response", "Error", "Code", code, "Message",
                          message, "RequestId", request_id);
    char *s = NULL;
    if (!o) {
        /* a message that is not UTF-8 (it echoes the request): said without it */
        o = json_pack("{s:{s:{s:s, s:s}, s:s}}", "Response", "Error", "Code", code, "Message",
                      "the request is malformed", "RequestId", request_id);
    }
    if (o) s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

/* ---- authentication ---- */

static int fail(struct api3_auth_result *r, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct api3_auth_result *r, const char *code, const char *fmt, ...) {
    va_list ap;
    r->code = code;
    r->apierr = api3_code_class(code);
    r->app = NULL;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof(r->message), fmt, ap);
    va_end(ap);
    return -1;
}

/* The request's headers for tc3 (api3req_tc3_verify), by lower-case name. */
static const char *hdr_as_sent(void *arg, const char *lname) {
    const struct api3_auth_request *req = arg;
    return req->header(req->header_arg, lname);
}

/* The gateway issues permanent keys: a Token (a temporary credential's) cannot belong to one. */
#define TOKEN_REFUSED \
    "a Token (temporary credential) is not accepted: the gateway issues permanent keys; send none"

/* v1: the common parameters in the query or form, the signature over them (api3req.h). */
static int authenticate_v1(const struct config *c, const struct api3_auth_request *req,
                           struct api3_auth_result *r) {
    struct api3_v1 v;
    char err[256];
    const char *code = NULL;
    if (api3req_v1_public(req->v1, &v, &code, err, sizeof(err)) != 0) {
        const char *sid = params_get(req->v1, "SecretId");
        if (sid) snprintf(r->secret_id, sizeof(r->secret_id), "%s", sid);
        const struct config_app *claimed = config_find_app_by_secret_id(c, sid);
        fail(r, code, "%s", err);
        r->claimed = claimed;
        return -1;
    }
    snprintf(r->secret_id, sizeof(r->secret_id), "%s", v.secret_id);
    const struct config_app *app = config_find_app_by_secret_id(c, v.secret_id);
    if (!app)
        return fail(r, "AuthFailure.SecretIdNotFound",
                    "SecretId %.128s is not known at this gateway", v.secret_id);
    r->claimed = app;
    uint64_t window = c->timestamp_window_s;
    if (!tc3_timestamp_fresh(v.timestamp, req->now_s, window))
        return fail(r, "AuthFailure.SignatureExpire",
                    "Timestamp %llu is %llu s from the server time; at most %llu s is accepted",
                    (unsigned long long)v.timestamp,
                    (unsigned long long)(v.timestamp > req->now_s ? v.timestamp - req->now_s
                                                                  : req->now_s - v.timestamp),
                    (unsigned long long)window);
    if (req->nonces && nonce_cache_seen(req->nonces, v.secret_id, v.nonce, req->now_s)) goto replay;
    if (api3req_v1_verify(req->v1, req->method, req->host, app->sign_key, app->secret_key) != 0)
        return fail(r, "AuthFailure.SignatureFailure",
                    "the Signature does not match the request (%s over the method, Host, path "
                    "and sorted parameters)",
                    sign_method_name(v.method));
    if (v.token && *v.token) return fail(r, "AuthFailure.TokenFailure", TOKEN_REFUSED);
    /* only a correctly signed request spends its Nonce, so a forger cannot burn an app's */
    if (req->nonces) {
        int rc = nonce_cache_insert(req->nonces, v.secret_id, v.nonce, req->now_s,
                                    validate_nonce_ttl_s(window));
        if (rc == 1) goto replay;
        if (rc < 0) return fail(r, "InternalError", "the Nonce could not be recorded");
    }
    r->app = app;
    r->has_nonce = 1;
    r->nonce = v.nonce;
    return 0;
replay:
    return fail(r, "AuthFailure.SignatureExpire", "Nonce %llu was already used by SecretId %.128s",
                (unsigned long long)v.nonce, v.secret_id);
}

int api3_authenticate(const struct config *c, const struct api3_auth_request *req,
                      struct api3_auth_result *r) {
    const char *authz = req->header(req->header_arg, "authorization");
    struct tc3_auth a;
    char err[256];
    size_t token_len = 0;

    memset(r, 0, sizeof(*r));
    const char *token = auth_bearer_token(authz, &token_len);
    if (token) {
        r->bearer = 1;
        const struct config_app *app = config_find_app_by_token(c, token, token_len);
        if (!app)
            return fail(r, "AuthFailure.InvalidAuthorization",
                        "the bearer token is not valid at this gateway");
        r->app = app;
        return 0;
    }
    if (req->v1) return authenticate_v1(c, req, r);
    if (!authz || !*authz)
        return fail(r, "AuthFailure.InvalidAuthorization",
                    "the Authorization header is missing; sign with TC3-HMAC-SHA256 or send "
                    "Authorization: Bearer <token>");
    if (tc3_parse_authorization(authz, &a, err, sizeof(err)) != 0)
        return fail(r, "AuthFailure.InvalidAuthorization", "%s", err);
    snprintf(r->secret_id, sizeof(r->secret_id), "%s", a.secret_id);
    const char *tss = req->header(req->header_arg, "x-tc-timestamp");
    uint64_t ts;
    if (!tss || !*tss) return fail(r, "MissingParameter", "the header X-TC-Timestamp is missing");
    if (num_parse_u64(tss, strlen(tss), &ts) != 0)
        return fail(r, "InvalidParameter", "X-TC-Timestamp %.40s is not a Unix time in seconds",
                    tss);
    const struct config_app *app = config_find_app_by_secret_id(c, a.secret_id);
    if (!app)
        return fail(r, "AuthFailure.SecretIdNotFound", "SecretId %s is not known at this gateway",
                    a.secret_id);
    r->claimed = app;
    if (!tc3_timestamp_fresh(ts, req->now_s, c->timestamp_window_s))
        return fail(r, "AuthFailure.SignatureExpire",
                    "X-TC-Timestamp %llu is %llu s from the server time; at most %u s is "
                    "accepted",
                    (unsigned long long)ts,
                    (unsigned long long)(ts > req->now_s ? ts - req->now_s : req->now_s - ts),
                    c->timestamp_window_s);
    /* The SDKs derive the service from the endpoint (endpoint.split(".")[0]): "captcha" for
     * Tencent's, the Host's first label for a gateway reached by another name. */
    const char *host = req->host ? req->host : "";
    size_t label = strcspn(host, ".:");
    if (strcmp(a.service, API3_SERVICE) != 0 &&
        (strlen(a.service) != label || strncmp(a.service, host, label) != 0))
        return fail(r, "AuthFailure.SignatureFailure",
                    "the Credential's service %s is neither " API3_SERVICE
                    " nor the first label of the Host",
                    a.service);
    int rc = api3req_tc3_verify(req->shape, req->query, req->body, req->body_len, hdr_as_sent,
                                (void *)req, &a, app->secret_key, ts, err, sizeof(err));
    if (rc == -2 && strstr(err, "missing"))
        return fail(r, "AuthFailure.SignatureFailure", "%s", err);
    if (rc != 0)
        return fail(r, rc == -1 ? "AuthFailure.SignatureFailure" : "InternalError", "%s", err);
    const char *tc_token = req->header(req->header_arg, "x-tc-token");
    if (tc_token && *tc_token) return fail(r, "AuthFailure.TokenFailure", TOKEN_REFUSED);
    r->app = app;
    return 0;
}

/* ---- validation ---- */

static uint32_t u32_of(json_t *body, const char *name, int *has) {
    json_t *v = json_object_get(body, name);
    *has = v != NULL;
    return v ? (uint32_t)json_integer_value(v) : 0;
}

int api3_validate(const struct config *c, enum v2_action action, json_t *body, struct v2_fields *f,
                  uint32_t *captcha_app_id, const char **code, char *err, size_t errlen) {
    const struct api3_field *fields =
        validate_api3_fields(action == V3_ACTION_DESCRIBE_CAPTCHA_MINI_RESULT);
    const char *aname = validate_action_name(action);
    const char *key;
    json_t *v;
    int has;

    memset(f, 0, sizeof(*f));
    f->action = action;
    if (!json_is_object(body))
        return api3req_fail(code, "InvalidParameter", err, errlen,
                            "the body must be a JSON object");
    json_object_foreach(body, key, v) {
        const struct api3_field *k = fields;
        while (k->name && strcmp(k->name, key) != 0) k++;
        if (!k->name)
            return api3req_fail(code, "UnknownParameter", err, errlen,
                                "%.64s is not a parameter of %s", key, aname);
        if (k->type == API3_INT) {
            /* Integer in the SDK model; the ids the gateway keys limits by are UInt32 there */
            if (!json_is_integer(v))
                return api3req_fail(code, "InvalidParameter", err, errlen,
                                    "%s must be an Integer; got a JSON %s", key,
                                    json_is_string(v)    ? "string"
                                    : json_is_real(v)    ? "real number"
                                    : json_is_boolean(v) ? "boolean"
                                    : json_is_null(v)    ? "null"
                                    : json_is_array(v)   ? "array"
                                                         : "object");
            if (json_integer_value(v) < 0 || json_integer_value(v) > (json_int_t)UINT32_MAX)
                return api3req_fail(code, "InvalidParameterValue", err, errlen,
                                    "%s must be 0..4294967295; got %lld", key,
                                    (long long)json_integer_value(v));
        } else {
            if (!json_is_string(v))
                return api3req_fail(code, "InvalidParameter", err, errlen, "%s must be a String",
                                    key);
            if (json_string_length(v) > API3_STRING_MAX)
                return api3req_fail(code, "InvalidParameterValue", err, errlen,
                                    "%s is %zu bytes; at most %d are accepted", key,
                                    json_string_length(v), API3_STRING_MAX);
        }
    }
    *captcha_app_id = u32_of(body, "CaptchaAppId", &has);
    for (const struct api3_field *k = fields; k->name; k++) {
        if (!k->required || json_object_get(body, k->name)) continue;
        /* the gateway holds this CaptchaAppId's key: the app need not send one */
        if (strcmp(k->name, "AppSecretKey") == 0 && has &&
            config_find_captcha_app(c, *captcha_app_id))
            continue;
        return api3req_fail(code, "MissingParameter", err, errlen, "the parameter %s is missing%s",
                            k->name,
                            strcmp(k->name, "AppSecretKey") == 0
                                ? " (and the gateway holds no AppSecretKey for this CaptchaAppId)"
                                : "");
    }
    f->captcha_type = u32_of(body, "CaptchaType", &has);
    f->has_captcha_type = 1;
    if (f->captcha_type != 9)
        return api3req_fail(code, "InvalidParameterValue", err, errlen,
                            "CaptchaType must be 9; got %u", f->captcha_type);
    f->business_id = u32_of(body, "BusinessId", &has);
    f->has_business_id = has != 0;
    f->scene_id = u32_of(body, "SceneId", &has);
    f->has_scene_id = has != 0;
    f->user_ip = json_string_value(json_object_get(body, "UserIp"));
    f->ticket = json_string_value(json_object_get(body, "Ticket"));
    f->mac_address = json_string_value(json_object_get(body, "MacAddress"));
    f->imei = json_string_value(json_object_get(body, "Imei"));
    return 0;
}

int api3_authorize_captcha_app(const struct config_app *app, uint32_t captcha_app_id, char *err,
                               size_t errlen) {
    if (app->captcha_any) return 0;
    for (size_t i = 0; i < app->n_captcha_app_ids; i++)
        if (app->captcha_app_ids[i] == captcha_app_id) return 0;
    snprintf(err, errlen, "app %s may not use CaptchaAppId %u", app->name,
             (unsigned)captcha_app_id);
    return -1;
}

/* ---- upstream body ---- */

/* Appends s as a JSON string (quotes and escapes). 0/-1. */
static int put_json_string(struct strbuf *b, const char *s) {
    static const char hexd[] = "0123456789abcdef";
    if (strbuf_append(b, "\"", 1)) return -1;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[7];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            if (strbuf_append(b, esc, 2)) return -1;
        } else if (*p < 0x20) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hexd[*p >> 4];
            esc[5] = hexd[*p & 15];
            if (strbuf_append(b, esc, 6)) return -1;
        } else if (strbuf_append(b, (const char *)p, 1)) {
            return -1;
        }
    }
    return strbuf_append(b, "\"", 1);
}

char *api3_forward_body(const struct config *c, json_t *body, uint32_t captcha_app_id,
                        size_t *len) {
    const struct config_captcha_app *ca = config_find_captcha_app(c, captcha_app_id);
    int inject = ca && (ca->inject_always || !json_object_get(body, "AppSecretKey"));
    json_t *copy = NULL;
    char *text = NULL, *out = NULL;
    struct strbuf b;

    if (!inject) {
        text = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (text) *len = strlen(text);
        return text;
    }
    /* The key never enters jansson's heap: the rest is dumped, the key spliced in by hand into
     * a buffer the caller wipes. */
    strbuf_init(&b);
    if (!(copy = json_copy(body))) goto out;
    json_object_del(copy, "AppSecretKey");
    if (!(text = json_dumps(copy, JSON_COMPACT | JSON_PRESERVE_ORDER))) goto out;
    size_t n = strlen(text);
    if (n < 2 || text[n - 1] != '}') goto out;
    /* room for all of it at once: no realloc leaves a copy of the key behind */
    if (strbuf_reserve(&b, n + 20 + 6 * strlen(ca->app_secret_key))) goto out;
    if (strbuf_append(&b, text, n - 1) || (n > 2 && strbuf_append(&b, ",", 1)) ||
        strbuf_append(&b, "\"AppSecretKey\":", 15) || put_json_string(&b, ca->app_secret_key) ||
        strbuf_append(&b, "}", 1))
        goto out;
    *len = b.len;
    out = strbuf_detach(&b);
out:
    if (!out && b.s) OPENSSL_cleanse(b.s, b.len);
    strbuf_cleanup(&b);
    free(text);
    json_decref(copy);
    return out;
}

int api3_reply_scan(const char *body, size_t len, int *has_error, char *desc, size_t desclen) {
    json_t *o = json_loadb(body, len, 0, NULL);
    json_t *resp = json_object_get(o, "Response");
    int rc = -1;
    *has_error = 0;
    if (desclen) desc[0] = '\0';
    if (json_is_object(resp)) {
        json_t *e = json_object_get(resp, "Error");
        const char *code = json_string_value(json_object_get(e, "Code"));
        if (e) {
            *has_error = 1;
            snprintf(desc, desclen, "%s", code ? code : "InternalError");
        }
        rc = 0;
    }
    json_decref(o);
    return rc;
}
