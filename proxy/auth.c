/* auth.c: app authentication. The order of the checks is the upstream's, so an app sees the
 * same codes through the gateway as it would calling Tencent directly; the Nonce is checked
 * before the signature (a cheap refusal of obvious replays) and recorded after it (an attacker
 * without the key cannot burn an app's nonces), with the record itself atomic so that two copies
 * racing on different workers cannot both pass. */
#include "auth.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "capgate/apierr.h"
#include "capgate/params.h"
#include "capgate/sign.h"
#include "capgate/validate.h"
#include "config.h"
#include "nonce.h"

static int auth_fail(struct auth_result *r, enum apierr_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int auth_fail(struct auth_result *r, enum apierr_code code, const char *fmt, ...) {
    va_list ap;
    r->code = code;
    r->app = NULL;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof(r->message), fmt, ap);
    va_end(ap);
    return -1;
}

const char *auth_bearer_token(const char *authorization, size_t *len) {
    if (!authorization) return NULL;
    while (*authorization == ' ' || *authorization == '\t') authorization++;
    if (strncasecmp(authorization, "Bearer", 6) != 0) return NULL;
    const char *t = authorization + 6;
    if (*t != ' ' && *t != '\t' && *t != '\0') return NULL;
    while (*t == ' ' || *t == '\t') t++;
    size_t n = strlen(t);
    while (n && (t[n - 1] == ' ' || t[n - 1] == '\t')) n--;
    *len = n;
    return t;
}

static int auth_token(const struct config *c, const char *token, size_t len,
                      struct auth_result *r) {
    const struct config_app *app = config_find_app_by_token(c, token, len);
    if (!app)
        return auth_fail(r, APIERR_AUTH_FAILURE, "the bearer token is not valid at this gateway");
    r->app = app;
    r->token = 1;
    return 0;
}

int auth_authenticate(const struct config *c, struct nonce_cache *nonces,
                      const struct auth_request *req, struct auth_result *r) {
    struct v2_public pub;
    char err[200];
    size_t token_len = 0;

    memset(r, 0, sizeof(*r));
    const char *token = auth_bearer_token(req->authorization, &token_len);
    if (token) {
        r->bearer = 1;
        return auth_token(c, token, token_len, r);
    }

    if (validate_public(req->params, &pub, err, sizeof(err)) != 0) {
        r->claimed = config_find_app_by_secret_id(c, params_get(req->params, "SecretId"));
        return auth_fail(r, APIERR_INVALID_PARAMETER, "%s", err);
    }
    const struct config_app *app = config_find_app_by_secret_id(c, pub.secret_id);
    if (!app) return auth_fail(r, APIERR_AUTH_FAILURE, "SecretId is not known at this gateway");
    r->claimed = app;

    uint64_t window = c->timestamp_window_s;
    uint64_t skew =
        pub.timestamp > req->now_s ? pub.timestamp - req->now_s : req->now_s - pub.timestamp;
    if (skew > window)
        return auth_fail(r, APIERR_REPLAY,
                         "Timestamp %llu is outside the allowed window of "
                         "%llu s around the server time",
                         (unsigned long long)pub.timestamp, (unsigned long long)window);
    if (nonce_cache_seen(nonces, pub.secret_id, pub.nonce, req->now_s))
        return auth_fail(r, APIERR_REPLAY, "Nonce %llu was already used by this SecretId",
                         (unsigned long long)pub.nonce);
    /* app->sign_key: made at config load; a config built by hand (tests) may only have the key */
    if ((app->sign_key ? sign_verify_key(req->params, req->method, req->host ? req->host : "",
                                         req->path, app->sign_key)
                       : sign_verify(req->params, req->method, req->host ? req->host : "",
                                     req->path, app->secret_key)) != 0)
        return auth_fail(r, APIERR_AUTH_FAILURE, "the Signature does not match the request");
    int rc = nonce_cache_insert(nonces, pub.secret_id, pub.nonce, req->now_s,
                                validate_nonce_ttl_s(window));
    if (rc == 1)
        return auth_fail(r, APIERR_REPLAY, "Nonce %llu was already used by this SecretId",
                         (unsigned long long)pub.nonce);
    if (rc < 0) return auth_fail(r, APIERR_INTERNAL, "the Nonce could not be recorded");
    r->app = app;
    r->has_nonce = 1;
    r->nonce = pub.nonce;
    return 0;
}

int auth_nonce_key(const char *prefix, const char *secret_id, uint64_t nonce, char *out,
                   size_t outlen) {
    int n = snprintf(out, outlen, "%snonce:%s:%llu", prefix ? prefix : "", secret_id,
                     (unsigned long long)nonce);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

void auth_replay_message(const char *secret_id, uint64_t nonce, char *out, size_t outlen) {
    snprintf(out, outlen, "Nonce %llu was already used by SecretId %s", (unsigned long long)nonce,
             secret_id);
}
