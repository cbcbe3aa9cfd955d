/* pipeline.c: one front request's state machine. The stages run in a fixed order from a table;
 * a stage may finish later (from an upstream or store callback) and the request resumes where
 * it left off. A client that goes away mid-request only marks the context cancelled: the
 * pending stage still completes, is recorded, and the context is released then, in the one
 * place that releases it (ctx_release). */
#include "pipeline.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <event2/event.h>
#include <openssl/rand.h>

#include "api3.h"
#include "audit.h"
#include "auth.h"
#include "capgate/apierr.h"
#include "capgate/clock.h"
#include "capgate/httpd.h"
#include "capgate/log.h"
#include "capgate/num.h"
#include "capgate/params.h"
#include "capgate/poison.h"
#include "capgate/reply.h"
#include "capgate/rng.h"
#include "capgate/sign.h"
#include "capgate/strbuf.h"
#include "config.h"
#include "idem.h"
#include "limit.h"
#include "minute_stats.h"
#include "pool.h"
#include "prometheus.h"
#include "realip.h"
#include "store.h"
#include "upstream.h"

#define PIPELINE_API_PATH "/v2/index.php"
#define PIPELINE_JSON "application/json"
/* CaptchaQuery script=1's reply when upstream named no type, and for a replayed one. */
#define PIPELINE_SCRIPT_TYPE "application/javascript; charset=utf-8"
#define PIPELINE_KEY_PREFIX "capgate:" /* limit keys without a redis section */

/* ---- randomness ---- */

int pipeline_worker_seed(struct pipeline_worker *w) {
    do {
        if (RAND_bytes((unsigned char *)w->rng, sizeof(w->rng)) != 1) return -1;
    } while (!(w->rng[0] | w->rng[1] | w->rng[2] | w->rng[3]));
    return 0;
}

uint64_t pipeline_random(struct pipeline_worker *w) {
    return rng_next(w->rng);
}

/* ---- pure decisions ---- */

int pipeline_http_status(int code, int semantic, int timed_out, int framing_status) {
    if (!semantic) return 200;
    if (framing_status) return framing_status;
    if (code == 0) return 200;
    if (code == 4000) return 400;
    if (code >= 4100 && code < 4200) return 401;
    if (code == 4300 || code == 4600) return 403;
    if (code == 4400) return 429;
    if (code == 4500) return 401;
    if (code == 5000) return 404;
    if (code == 6200) return timed_out ? 504 : 502;
    if (code >= 5000) return 500;
    return 400;
}

int pipeline_authorize(const struct config_app *app, const struct v2_fields *f, char *err,
                       size_t errlen) {
    if (!(app->actions & (1u << f->action))) {
        snprintf(err, errlen, "app %s may not call Action %s", app->name,
                 validate_action_name(f->action));
        return -1;
    }
    if (app->business_any) return 0;
    if (!f->has_business_id) {
        snprintf(err, errlen, "app %s must send a businessId it is allowed to use", app->name);
        return -1;
    }
    for (size_t i = 0; i < app->n_business_ids; i++)
        if (app->business_ids[i] == f->business_id) return 0;
    snprintf(err, errlen, "app %s may not use businessId %u", app->name, (unsigned)f->business_id);
    return -1;
}

int pipeline_reply_may_be_script(const struct v2_fields *f) {
    return f->action == V2_ACTION_CAPTCHA_QUERY && f->has_script && f->script == 1;
}

static void copy_str(char *dst, size_t cap, const char *src);

enum pipeline_decision pipeline_limit_verdict(const struct limit_bucket *b, size_t n,
                                              const struct limit_outcome *o, char *rule,
                                              size_t rulelen, char *msg, size_t msglen) {
    copy_str(rule, rulelen, "");
    copy_str(msg, msglen, "");
    if (!o->allowed && o->denied >= 0 && (size_t)o->denied < n) {
        const char *name = b[o->denied].rule ? b[o->denied].rule->name : "";
        /* Whole seconds rounded up, at least 1: the same number as Retry-After. */
        uint64_t s = (o->retry_after_us + 999999) / 1000000;
        copy_str(rule, rulelen, name);
        snprintf(msg, msglen, "rate limit %s exceeded; retry in %llu s", name,
                 (unsigned long long)(s ? s : 1));
        return PIPELINE_LIMITED;
    }
    if (o->shadow_denied >= 0 && (size_t)o->shadow_denied < n) {
        copy_str(rule, rulelen, b[o->shadow_denied].rule ? b[o->shadow_denied].rule->name : "");
        return PIPELINE_SHADOW_LIMITED;
    }
    return PIPELINE_FORWARDED;
}

enum pipeline_store_fallback pipeline_store_fallback(enum config_store_error policy,
                                                     int local_tried, int closing) {
    if (closing) return PIPELINE_STORE_DENY;
    if (policy == CONFIG_STORE_ERROR_ALLOW) return PIPELINE_STORE_ALLOW;
    if (policy == CONFIG_STORE_ERROR_DENY || local_tried) return PIPELINE_STORE_DENY;
    return PIPELINE_STORE_LOCAL;
}

void pipeline_limit_headers_cleanup(struct pipeline_limit_headers *h) {
    for (size_t i = 0; i < h->count; i++) free(h->value[i]);
    memset(h, 0, sizeof(*h));
}

int pipeline_limit_headers_init(struct pipeline_limit_headers *h, const struct limit_bucket *b,
                                size_t n, const struct limit_outcome *o) {
    static const char *const names[PIPELINE_LIMIT_HEADERS_MAX] = {"RateLimit-Policy", "RateLimit",
                                                                  "Retry-After"};
    struct strbuf v[PIPELINE_LIMIT_HEADERS_MAX];
    int rc = -1;

    memset(h, 0, sizeof(*h));
    for (size_t i = 0; i < PIPELINE_LIMIT_HEADERS_MAX; i++) strbuf_init(&v[i]);
    if (limit_headers(b, n, o, &v[0], &v[1], &v[2]) != 0) goto out;
    for (size_t i = 0; i < PIPELINE_LIMIT_HEADERS_MAX; i++) {
        if (!v[i].len) continue;
        h->name[h->count] = names[i];
        h->value[h->count] = strbuf_detach(&v[i]);
        if (!h->value[h->count]) goto out;
        h->count++;
    }
    rc = 0;
out:
    for (size_t i = 0; i < PIPELINE_LIMIT_HEADERS_MAX; i++) strbuf_cleanup(&v[i]);
    if (rc != 0) pipeline_limit_headers_cleanup(h);
    return rc;
}

/* ---- the request context ---- */

enum pipeline_state {
    ST_NEW,
    ST_PARSED,
    ST_AUTHED,
    ST_VALIDATED,
    ST_AUTHORIZED,
    ST_REPLAY,
    ST_LIMITED,
    ST_POOL,
    ST_UPSTREAM,
    ST_REPLIED,
    ST_AUDITED,
    ST_COUNT
};

static const char *const state_names[ST_COUNT] = {
    [ST_NEW] = "new",
    [ST_PARSED] = "parsed",
    [ST_AUTHED] = "authed",
    [ST_VALIDATED] = "validated",
    [ST_AUTHORIZED] = "authorized",
    [ST_REPLAY] = "replay",
    [ST_LIMITED] = "limited?",
    [ST_POOL] = "pool",
    [ST_UPSTREAM] = "upstream",
    [ST_REPLIED] = "replied",
    [ST_AUDITED] = "audited",
};

enum stage_result { STAGE_NEXT, STAGE_FINISH, STAGE_PENDING };

struct pipeline_ctx {
    struct pipeline_worker *w;
    struct httpd_req *req;       /* NULL once replied or cancelled */
    struct shared_config *pc;    /* reference held for the request's life */
    const struct config *config; /* pc->config */
    enum pipeline_state state;
    size_t stage; /* index of the next stage to run */
    int parsed;   /* params hold the request's parameters */
    int cancelled;
    int in_stage; /* a stage function is on the stack */
    int resumed;  /* pipeline_resume came while in_stage */
    enum stage_result resumed_with;
    uint64_t start_us; /* monotonic */
    struct params params;
    const struct config_app *app; /* borrowed from config */
    struct v2_fields fields;
    struct pipeline_record rec;
    /* API 3.0 (api3.h): a request to /; its body (or its fields) parsed by validate */
    int v3;
    enum api3_shape shape3; /* JSON, or a GET query / form / multipart (params hold its fields) */
    int v1;                 /* the params are signed v1 (api3req.h) */
    const char *version3;   /* X-TC-Version or v1's Version, borrowed */
    const char *code3;      /* the next ctx_error's 3.0 Error.Code (static), NULL: from its code */
    json_t *body3;
    uint32_t captcha_app_id;
    struct params audit_params; /* 3.0: the per-user fields under the audit's v2 names */
    /* rate limits: the request's n_buckets buckets (in the scratch part below) */
    size_t n_buckets;
    int local_tried; /* on_store_error "local": the local buckets were asked */
    int has_nonce;   /* signed: the Nonce the limit stage claims with Redis */
    uint64_t nonce;
    int shadow_limited; /* a shadow rule would have refused (kept for the audit) */
    struct pipeline_limit_headers limit_headers;
    /* the reply, ready once a stage finished */
    int reply_status;
    char *reply_body;
    size_t reply_len;
    char *reply_url;                /* a successful CaptchaIframeQuery's url, for the audit */
    char *reply_type;               /* the reply's Content-Type when not JSON (a script) */
    int storable;                   /* the reply is upstream's or a pool hit: replayable */
    int replayed;                   /* the reply is a stored one: Idempotent-Replayed: true */
    int idem_owned;                 /* this request holds idem_key: finish it at the end */
    struct pipeline_ctx *next_free; /* the worker's free list; also the worker's list of
                                     * replies waiting for their audit record (commit) */
    uint64_t commit_seq;            /* audit.commit durable: the record's number (audit.h) */
    /* Scratch: every field from here on is written before it is read, so a context taken from
     * the worker's free list clears only the part above (4.6 KB of buckets stay as they are). */
    struct limit_bucket buckets[LIMIT_MAX_BUCKETS]; /* rules borrowed from config */
    char idem_key[IDEM_KEY_MAX];
    char idem_fp[STORE_IDEM_FP_LEN + 1];
    /* Kept with a context on the worker's free list: the storage of the request's parameter
     * list (taken back into params by pipeline_handle) and of the list forward_sign builds,
     * emptied by params_reset, so parsing and signing a request allocate nothing once the
     * context has served one (params_reset bounds what is kept). */
    struct params kept_params;
    struct params fwd_params;
    /* and the buffer an upstream reply's body is copied to (reply_body_room) */
    char *body_buf;
    size_t body_cap;
};
#define CTX_CLEARED offsetof(struct pipeline_ctx, buckets)

static void set_state(struct pipeline_ctx *ctx, enum pipeline_state to) {
    log_debug("request %s: %s -> %s", ctx->rec.request_id, state_names[ctx->state],
              state_names[to]);
    ctx->state = to;
}

static void copy_str(char *dst, size_t cap, const char *src) {
    if (!cap) return;
    size_t n = src ? strlen(src) : 0;
    if (n >= cap) n = cap - 1;
    if (n) memcpy(dst, src, n);
    dst[n] = '\0';
}

/* An upstream reply body larger than this gets a buffer of its own, not the context's kept one. */
#define CTX_KEPT_BODY_MAX 4096

/* Drops the reply body: freed, unless it is the context's kept buffer. */
static void reply_body_drop(struct pipeline_ctx *ctx) {
    if (ctx->reply_body != ctx->body_buf) free(ctx->reply_body);
    ctx->reply_body = NULL;
}

/* n bytes for the reply body (the one before is dropped): the context's kept buffer, made or
 * grown to n when n is at most CTX_KEPT_BODY_MAX, else a malloc'd one. NULL on OOM. */
static char *reply_body_room(struct pipeline_ctx *ctx, size_t n) {
    reply_body_drop(ctx);
    if (n > CTX_KEPT_BODY_MAX) return ctx->reply_body = malloc(n);
    if (n > ctx->body_cap) {
        size_t cap = n < 1024 ? 1024 : n;
        free(ctx->body_buf);
        ctx->body_cap = 0;
        if (!(ctx->body_buf = malloc(cap))) return NULL;
        ctx->body_cap = cap;
    }
    return ctx->reply_body = ctx->body_buf;
}

/* Prepares an error reply in the API's shape; returns STAGE_FINISH for the caller to return. */
static enum stage_result ctx_error(struct pipeline_ctx *ctx, int code,
                                   enum pipeline_decision decision, int timed_out,
                                   int framing_status, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static enum stage_result ctx_error(struct pipeline_ctx *ctx, int code,
                                   enum pipeline_decision decision, int timed_out,
                                   int framing_status, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    reply_body_drop(ctx);
    if (ctx->v3) {
        /* 3.0 answers its errors with HTTP 200, which is what its SDKs read the Error from; only
         * a request that could not be read whole keeps its framing status */
        const char *code3 = ctx->code3 ? ctx->code3 : api3_code_name(code);
        ctx->code3 = NULL;
        ctx->reply_body = api3_error_body(code3, msg, ctx->rec.request_id);
        ctx->reply_len = ctx->reply_body ? strlen(ctx->reply_body) : 0;
        ctx->reply_status = framing_status ? framing_status : 200;
        ctx->rec.decision = decision;
        ctx->rec.code = code;
        ctx->rec.no_code = 0;
        free(ctx->reply_type);
        ctx->reply_type = NULL;
        copy_str(ctx->rec.code_desc, sizeof(ctx->rec.code_desc), code3);
        return STAGE_FINISH;
    }
    ctx->reply_body = reply_error(code, "%s", msg);
    ctx->reply_len = ctx->reply_body ? strlen(ctx->reply_body) : 0;
    ctx->reply_status =
        pipeline_http_status(code, ctx->config->http_errors_semantic, timed_out, framing_status);
    ctx->rec.decision = decision;
    ctx->rec.code = code;
    ctx->rec.no_code = 0;
    free(ctx->reply_type);
    ctx->reply_type = NULL;
    copy_str(ctx->rec.code_desc, sizeof(ctx->rec.code_desc),
             apierr_desc(code) ? apierr_desc(code) : "InternalError");
    return STAGE_FINISH;
}

/* ---- stages ---- */

static const char *req_header(const struct httpd_req *req, const char *name);

/* A 3.0 error with its own Error.Code (ctx_error picks one from the v2 code otherwise). */
#define ctx_error3(ctx, code3_, code, decision, ...) \
    ((ctx)->code3 = (code3_), ctx_error((ctx), (code), (decision), 0, 0, __VA_ARGS__))

/* Any request to / is a 3.0 call: POST JSON, GET, a form or multipart (api3req.h). */
static int is_api3(const struct httpd_req *req) {
    return req->path && strcmp(req->path, API3_PATH) == 0;
}

/* 3.0: the shape of the request; the body is parsed once the caller is authenticated. */
static enum stage_result stage_parse3(struct pipeline_ctx *ctx) {
    struct httpd_req *req = ctx->req;
    const char *action = req_header(req, "X-TC-Action");
    ctx->rec.api3 = 1;
    if (action) {
        copy_str(ctx->rec.action, sizeof(ctx->rec.action), action);
        ctx->rec.action_id = validate_action3_parse(action);
    }
    const char *ct = req->content_type ? req->content_type : "";
    if (strcmp(req->method, "POST") != 0 ||
        strncasecmp(ct, API3_CONTENT_TYPE, strlen(API3_CONTENT_TYPE)) != 0 ||
        (ct[strlen(API3_CONTENT_TYPE)] && ct[strlen(API3_CONTENT_TYPE)] != ';')) {
        /* not POST JSON: GET, a form or multipart, TC3 or v1 signed (api3req.h) */
        const char *code = NULL;
        char err[256];
        if (api3req_shape(req->method, ct, &ctx->shape3, &code, err, sizeof(err)) != 0 ||
            api3req_params(ctx->shape3, req->query, ct, req->body, req->body_len, &ctx->params, err,
                           sizeof(err)) != 0)
            return ctx_error3(ctx, code ? code : "InvalidParameter", APIERR_INVALID_PARAMETER,
                              PIPELINE_INVALID, "%s", err);
        ctx->v1 = api3req_is_v1(&ctx->params);
        if (ctx->v1) {
            /* v1 names the Action and Version among its parameters (checked by authenticate) */
            action = params_get(&ctx->params, "Action");
            copy_str(ctx->rec.action, sizeof(ctx->rec.action), action);
            ctx->rec.action_id = validate_action3_parse(action);
            ctx->version3 = params_get(&ctx->params, "Version");
            return STAGE_NEXT;
        }
    }
    ctx->version3 = req_header(req, "X-TC-Version");
    static const char *const need[] = {"X-TC-Action", "X-TC-Version"};
    for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
        const char *h = req_header(req, need[i]);
        if (!h || !*h)
            return ctx_error3(ctx, "MissingParameter", APIERR_INVALID_PARAMETER, PIPELINE_INVALID,
                              "the header %s is missing", need[i]);
    }
    return STAGE_NEXT;
}

static enum stage_result stage_parse(struct pipeline_ctx *ctx) {
    struct httpd_req *req = ctx->req;
    char err[256];
    if (ctx->v3) return stage_parse3(ctx);
    if (strcmp(req->path, PIPELINE_API_PATH) != 0)
        return ctx_error(ctx, APIERR_NOT_FOUND, PIPELINE_INVALID, 0, 0,
                         "no resource at %.200s; the API is GET|POST %s", req->path,
                         PIPELINE_API_PATH);
    int rc;
    if (strcmp(req->method, "GET") == 0) {
        rc = req->query ? params_parse_urlencoded(&ctx->params, req->query, strlen(req->query), err,
                                                  sizeof(err))
                        : 0;
    } else if (strcmp(req->method, "POST") == 0) {
        rc = params_parse_body(&ctx->params, req->content_type, req->body, req->body_len, err,
                               sizeof(err));
    } else {
        return ctx_error(ctx, APIERR_INVALID_PARAMETER, PIPELINE_INVALID, 0, 0,
                         "method %.32s is not allowed; use GET or POST", req->method);
    }
    if (rc != 0) return ctx_error(ctx, APIERR_INVALID_PARAMETER, PIPELINE_INVALID, 0, 0, "%s", err);
    ctx->parsed = 1;
    const char *action = params_get(&ctx->params, "Action");
    copy_str(ctx->rec.action, sizeof(ctx->rec.action), action);
    /* known now, so refusals before validation (4100, 4500) are counted under it; anything else
     * stays "unknown", which keeps the label's values bounded */
    ctx->rec.action_id = validate_action_parse(action);
    return STAGE_NEXT;
}

static const char *req_header(const struct httpd_req *req, const char *name) {
    if (!req) return NULL;
    for (size_t i = 0; i < req->header_count; i++)
        if (strcasecmp(req->headers[i].name, name) == 0) return req->headers[i].value;
    return NULL;
}

static const char *req_header_tc3(void *arg, const char *lname) {
    return req_header(arg, lname);
}

static enum stage_result stage_authenticate3(struct pipeline_ctx *ctx) {
    struct api3_auth_result r;
    struct api3_auth_request ar = {
        .header = req_header_tc3,
        .header_arg = ctx->req,
        .host = ctx->req->host ? ctx->req->host : "",
        .body = ctx->req->body,
        .body_len = ctx->req->body_len,
        .now_s = clock_wall_us() / 1000000,
        .shape = ctx->shape3,
        .method = ctx->req->method,
        .query = ctx->req->query,
        .v1 = ctx->v1 ? &ctx->params : NULL,
        .nonces = ctx->w->nonces,
    };
    if (api3_authenticate(ctx->config, &ar, &r) != 0) {
        if (r.claimed)
            copy_str(ctx->rec.app, sizeof(ctx->rec.app), r.claimed->name);
        else if (!r.bearer && r.secret_id[0])
            copy_str(ctx->rec.secret_id, sizeof(ctx->rec.secret_id), r.secret_id);
        return ctx_error3(ctx, r.code, r.apierr,
                          r.apierr == APIERR_INVALID_PARAMETER ? PIPELINE_INVALID
                                                               : PIPELINE_UNAUTHORIZED,
                          "%s", r.message);
    }
    ctx->app = r.app;
    ctx->has_nonce = r.has_nonce;
    ctx->nonce = r.nonce;
    copy_str(ctx->rec.app, sizeof(ctx->rec.app), r.app->name);
    return STAGE_NEXT;
}

static enum stage_result stage_authenticate(struct pipeline_ctx *ctx) {
    struct auth_result r;
    if (ctx->v3) return stage_authenticate3(ctx);
    struct auth_request ar = {
        .params = &ctx->params,
        .authorization = req_header(ctx->req, "Authorization"),
        .method = ctx->req->method,
        .host = ctx->req->host ? ctx->req->host : "",
        .path = ctx->req->path,
        .now_s = clock_wall_us() / 1000000,
    };
    if (auth_authenticate(ctx->config, ctx->w->nonces, &ar, &r) != 0) {
        /* who failed: the app the SecretId belongs to, or else the SecretId itself, so an
         * operator can find a misconfigured client */
        const char *sid = params_get(&ctx->params, "SecretId");
        if (r.claimed)
            copy_str(ctx->rec.app, sizeof(ctx->rec.app), r.claimed->name);
        else if (!r.bearer && sid)
            copy_str(ctx->rec.secret_id, sizeof(ctx->rec.secret_id), sid);
        return ctx_error(ctx, r.code,
                         r.code == APIERR_INVALID_PARAMETER ? PIPELINE_INVALID
                                                            : PIPELINE_UNAUTHORIZED,
                         0, 0, "%s", r.message);
    }
    ctx->app = r.app;
    ctx->has_nonce = r.has_nonce;
    ctx->nonce = r.nonce;
    copy_str(ctx->rec.app, sizeof(ctx->rec.app), r.app->name);
    return STAGE_NEXT;
}

/* The body's top-level strings and integers as parameters (AppSecretKey left out): the
 * idempotency fingerprint's input, with Action and Version. 0/-1 (OOM). */
static int body3_params(struct pipeline_ctx *ctx) {
    const char *key;
    json_t *v;
    if (params_adds(&ctx->params, "Action", ctx->rec.action) ||
        params_adds(&ctx->params, "Version", API3_VERSION))
        return -1;
    json_object_foreach(ctx->body3, key, v) {
        char num[32];
        const char *s = NULL;
        if (strcmp(key, "AppSecretKey") == 0) continue;
        if (json_is_string(v)) {
            s = json_string_value(v);
        } else if (json_is_integer(v)) {
            snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(v));
            s = num;
        }
        if (s && params_adds(&ctx->params, key, s)) return -1;
    }
    /* the audit reads the per-user fields by their v2 names */
    const struct v2_fields *f = &ctx->fields;
    if ((f->user_ip && params_adds(&ctx->audit_params, "userIp", f->user_ip)) ||
        (f->imei && params_adds(&ctx->audit_params, "imei", f->imei)) ||
        (f->mac_address && params_adds(&ctx->audit_params, "macAddress", f->mac_address)))
        return -1;
    return 0;
}

/* 3.0: the Action one this gateway fronts, the Version 2019-07-22. */
static enum stage_result check_action_version3(struct pipeline_ctx *ctx) {
    if (ctx->rec.action_id == V2_ACTION_UNKNOWN)
        return ctx_error3(ctx, "InvalidAction", APIERR_VERSION, PIPELINE_INVALID,
                          "the Action %.64s is not fronted by this gateway (it has "
                          "DescribeCaptchaResult and DescribeCaptchaMiniResult)",
                          ctx->rec.action);
    if (strcmp(ctx->version3, API3_VERSION) != 0)
        return ctx_error3(ctx, "NoSuchVersion", APIERR_VERSION, PIPELINE_INVALID,
                          "the Version %.40s does not exist; use " API3_VERSION, ctx->version3);
    return STAGE_NEXT;
}

static enum stage_result stage_validate3(struct pipeline_ctx *ctx) {
    char err[256];
    const char *code = NULL;
    enum stage_result next;
    if (ctx->shape3 != API3_SHAPE_JSON) {
        /* the fields as strings, typed by the Action's model; the list is then reused for the
         * fingerprint's parameters (body3_params), as a JSON call's */
        if ((next = check_action_version3(ctx)) != STAGE_NEXT) return next;
        ctx->body3 = api3req_body(
            &ctx->params, ctx->v1,
            validate_api3_fields(ctx->rec.action_id == V3_ACTION_DESCRIBE_CAPTCHA_MINI_RESULT),
            validate_action_name(ctx->rec.action_id), &code, err, sizeof(err));
        if (!ctx->body3)
            return ctx_error3(ctx, code, APIERR_INVALID_PARAMETER, PIPELINE_INVALID, "%s", err);
        ctx->version3 = API3_VERSION; /* it may point into the list emptied here */
        params_reset(&ctx->params);
    } else {
        json_error_t jerr;
        ctx->body3 = json_loadb(ctx->req->body, ctx->req->body_len, JSON_REJECT_DUPLICATES, &jerr);
        if (!ctx->body3)
            return ctx_error3(ctx, "InvalidParameter", APIERR_INVALID_PARAMETER, PIPELINE_INVALID,
                              "the body is not JSON: %s (at byte %d)", jerr.text, jerr.position);
        if (!json_is_object(ctx->body3))
            return ctx_error3(ctx, "InvalidParameter", APIERR_INVALID_PARAMETER, PIPELINE_INVALID,
                              "the body must be a JSON object");
        if ((next = check_action_version3(ctx)) != STAGE_NEXT) return next;
    }
    if (api3_validate(ctx->config, ctx->rec.action_id, ctx->body3, &ctx->fields,
                      &ctx->captcha_app_id, &code, err, sizeof(err)) != 0)
        return ctx_error3(ctx, code, APIERR_INVALID_PARAMETER, PIPELINE_INVALID, "%s", err);
    if (body3_params(ctx) != 0)
        return ctx_error(ctx, APIERR_INTERNAL, PIPELINE_INVALID, 0, 0, "out of memory");
    ctx->parsed = 1;
    return STAGE_NEXT;
}

static enum stage_result stage_validate(struct pipeline_ctx *ctx) {
    char err[256];
    enum v2_action action = ctx->rec.action_id;
    if (ctx->v3) {
        enum stage_result r = stage_validate3(ctx);
        if (r != STAGE_NEXT) return r;
    } else if (validate_request(action, &ctx->params, &ctx->fields, err, sizeof(err)) != 0) {
        return ctx_error(ctx, validate_error_code(action, &ctx->params), PIPELINE_INVALID, 0, 0,
                         "%s", err);
    }
    const struct v2_fields *f = &ctx->fields;
    struct pipeline_record *rec = &ctx->rec;
    rec->has_business_id = f->has_business_id;
    rec->business_id = f->business_id;
    rec->has_scene_id = f->has_scene_id;
    rec->scene_id = f->scene_id;
    rec->has_captcha_type = f->has_captcha_type;
    rec->captcha_type = f->captcha_type;
    rec->has_client_type = f->has_client_type;
    rec->client_type = f->client_type;
    rec->has_account_type = f->has_account_type;
    rec->account_type = f->account_type;
    return STAGE_NEXT;
}

static enum stage_result stage_authorize(struct pipeline_ctx *ctx) {
    char err[256];
    if (pipeline_authorize(ctx->app, &ctx->fields, err, sizeof(err)) != 0 ||
        (ctx->v3 &&
         api3_authorize_captcha_app(ctx->app, ctx->captcha_app_id, err, sizeof(err)) != 0))
        return ctx_error(ctx, APIERR_ACCESS_DENIED, PIPELINE_DENIED, 0, 0, "%s", err);
    return STAGE_NEXT;
}

static void pipeline_resume(struct pipeline_ctx *ctx, enum stage_result r);
static void record_upstream_reply(struct pipeline_ctx *ctx, struct reply_fields *f);
static void record_upstream_reply3(struct pipeline_ctx *ctx, const char *body, size_t len);

static const char *store_prefix(const struct pipeline_ctx *ctx) {
    const struct config_redis *redis = ctx->w->boot->redis;
    return redis && redis->key_prefix ? redis->key_prefix : PIPELINE_KEY_PREFIX;
}

/* Idempotent replay (idem.h): a stored reply byte for byte, a wait for a concurrent duplicate,
 * or the key taken for this request. */
static void replay_done(const char *err, enum store_idem_state state, const char *body, size_t len,
                        void *arg) {
    struct pipeline_ctx *ctx = arg;
    if (err && state == STORE_IDEM_PENDING) {
        pipeline_resume(
            ctx, ctx_error(ctx, APIERR_UNAVAILABLE, PIPELINE_UPSTREAM_ERROR, 1, 0, "%s", err));
        return;
    }
    if (err) {
        log_warn("request %s: idempotency store failed (%s); served without replay",
                 ctx->rec.request_id, err);
        pipeline_resume(ctx, STAGE_NEXT);
        return;
    }
    switch (state) {
    case STORE_IDEM_NEW:
        ctx->idem_owned = 1;
        pipeline_resume(ctx, STAGE_NEXT);
        return;
    case STORE_IDEM_DONE:
        reply_body_drop(ctx);
        if (!(ctx->reply_body = malloc(len + 1))) {
            pipeline_resume(
                ctx, ctx_error(ctx, APIERR_INTERNAL, PIPELINE_REPLAYED, 0, 0, "out of memory"));
            return;
        }
        memcpy(ctx->reply_body, body, len);
        ctx->reply_body[len] = 0;
        ctx->reply_len = len;
        ctx->reply_status = 200;
        ctx->replayed = 1;
        ctx->rec.decision = PIPELINE_REPLAYED;
        if (ctx->v3) {
            record_upstream_reply3(ctx, body, len);
        } else {
            struct reply_fields f;
            if (reply_scan(body, len, &f) == 0) {
                record_upstream_reply(ctx, &f);
                reply_fields_cleanup(&f);
            } else if (pipeline_reply_may_be_script(&ctx->fields)) {
                /* the only body stored that is not JSON: a script, replayed as one */
                ctx->rec.no_code = 1;
                ctx->rec.code_desc[0] = '\0';
                ctx->reply_type = strdup(PIPELINE_SCRIPT_TYPE);
            }
        }
        pipeline_resume(ctx, STAGE_FINISH);
        return;
    case STORE_IDEM_MISMATCH:
    case STORE_IDEM_PENDING:
        pipeline_resume(ctx, ctx_error(ctx, APIERR_INVALID_PARAMETER, PIPELINE_INVALID, 0, 0,
                                       IDEM_MISMATCH_MESSAGE));
        return;
    }
}

static enum stage_result stage_replay(struct pipeline_ctx *ctx) {
    const char *h = req_header(ctx->req, IDEM_HEADER);
    const struct config_upstream *up = &ctx->w->boot->upstream;
    char err[256];
    if (!h) return STAGE_NEXT;
    if (idem_header_check(h, err, sizeof(err)) != 0)
        return ctx_error(ctx, APIERR_INVALID_PARAMETER, PIPELINE_INVALID, 0, 0, "%s", err);
    if (ctx->w->store_closing ||
        idem_key(store_prefix(ctx), ctx->app->name, h, ctx->idem_key, sizeof(ctx->idem_key)) ||
        idem_fingerprint(&ctx->params, ctx->idem_fp) ||
        idem_begin(ctx->w->store, ctx->w->base, &ctx->w->idem_waits, ctx->idem_key, ctx->idem_fp,
                   up->timeout_ms + IDEM_PENDING_MARGIN_MS, up->timeout_ms, replay_done, ctx)) {
        log_warn("request %s: idempotency not checked (out of memory or shutting down)",
                 ctx->rec.request_id);
        return STAGE_NEXT;
    }
    return STAGE_PENDING;
}

/* The prefetch pool (pool.h): a hit is the reply; a miss goes on to upstream. */
static void pool_done(const char *url, void *arg) {
    struct pipeline_ctx *ctx = arg;
    if (!url) {
        pipeline_resume(ctx, STAGE_NEXT);
        return;
    }
    reply_body_drop(ctx);
    free(ctx->reply_url);
    ctx->reply_url = strdup(url);
    if (!(ctx->reply_body = pool_hit_body(url))) {
        pipeline_resume(ctx, ctx_error(ctx, APIERR_INTERNAL, PIPELINE_POOL, 0, 0, "out of memory"));
        return;
    }
    ctx->reply_len = strlen(ctx->reply_body);
    ctx->reply_status = 200;
    ctx->storable = 1;
    ctx->rec.decision = PIPELINE_POOL;
    ctx->rec.code = 0;
    copy_str(ctx->rec.code_desc, sizeof(ctx->rec.code_desc), "Success");
    pipeline_resume(ctx, STAGE_FINISH);
}

static enum stage_result stage_pool(struct pipeline_ctx *ctx) {
    const struct config_pool_profile *pr;
    /* 3.0 has no URL to prefetch */
    if (ctx->v3 || !ctx->w->pool || ctx->w->store_closing ||
        !(pr = pool_match(&ctx->config->pool, &ctx->fields, &ctx->params)))
        return STAGE_NEXT;
    if (pool_take(ctx->w->pool, ctx->w->store, store_prefix(ctx), ctx->config->pool.ttl_s, pr,
                  pool_done, ctx) != 0)
        return STAGE_NEXT;
    return STAGE_PENDING;
}

/* The headers every reply after the limit stage carries; a failure only loses the headers. */
static void limit_set_headers(struct pipeline_ctx *ctx, const struct limit_outcome *o) {
    pipeline_limit_headers_cleanup(&ctx->limit_headers);
    if (pipeline_limit_headers_init(&ctx->limit_headers, ctx->buckets, ctx->n_buckets, o) != 0)
        log_warn("request %s: out of memory for the rate-limit headers", ctx->rec.request_id);
}

/* capgate_limit_decisions_total: a refusal counts for the refusing rule only (nothing was
 * taken from the others); an admission counts for every rule, as shadow_limited for the shadow
 * rule that would have refused. */
static void limit_count(struct pipeline_ctx *ctx, const struct limit_outcome *o) {
    struct stats_worker *st = ctx->w->stats;
    if (!o->allowed && o->denied >= 0 && (size_t)o->denied < ctx->n_buckets) {
        stats_count_limit(st, ctx->buckets[o->denied].rule->name, "limited");
        return;
    }
    for (size_t i = 0; i < ctx->n_buckets; i++)
        stats_count_limit(st, ctx->buckets[i].rule->name,
                          (int)i == o->shadow_denied ? "shadow_limited" : "admitted");
}

static void limit_done(const char *err, const struct limit_outcome *o, void *arg) {
    struct pipeline_ctx *ctx = arg;
    struct pipeline_worker *w = ctx->w;
    char msg[256];

    if (err) {
        switch (pipeline_store_fallback(ctx->config->on_store_error, ctx->local_tried,
                                        w->store_closing)) {
        case PIPELINE_STORE_LOCAL:
            if (!ctx->n_buckets) {
                /* only the Nonce was asked: this process's cache checked it in authenticate */
                log_debug("request %s: store failed (%s); the Nonce stays checked locally",
                          ctx->rec.request_id, err);
                pipeline_resume(ctx, STAGE_NEXT);
                return;
            }
            log_debug("request %s: rate-limit store failed (%s); local buckets decide",
                      ctx->rec.request_id, err);
            ctx->local_tried = 1;
            store_limit_local(w->store, ctx->buckets, ctx->n_buckets, limit_done, ctx);
            return;
        case PIPELINE_STORE_ALLOW:
            log_debug("request %s: rate-limit store failed (%s); admitted unlimited",
                      ctx->rec.request_id, err);
            limit_set_headers(ctx, NULL);
            pipeline_resume(ctx, STAGE_NEXT);
            return;
        case PIPELINE_STORE_DENY:
            pipeline_resume(ctx,
                            ctx_error(ctx, APIERR_UNAVAILABLE, PIPELINE_LIMITED, 0, 0,
                                      "%s store unavailable: %s",
                                      ctx->n_buckets ? "rate-limit" : "replay-protection", err));
            return;
        }
    }
    if (o->replay) {
        /* another instance took this Nonce first; no token was taken here */
        auth_replay_message(ctx->app->secret_id, ctx->nonce, msg, sizeof(msg));
        pipeline_resume(ctx, ctx_error(ctx, APIERR_REPLAY, PIPELINE_UNAUTHORIZED, 0, 0, "%s", msg));
        return;
    }
    limit_count(ctx, o);
    limit_set_headers(ctx, o);
    enum pipeline_decision d = pipeline_limit_verdict(
        ctx->buckets, ctx->n_buckets, o, ctx->rec.rule, sizeof(ctx->rec.rule), msg, sizeof(msg));
    if (d == PIPELINE_LIMITED) {
        pipeline_resume(ctx,
                        ctx_error(ctx, APIERR_LIMIT_EXCEEDED, PIPELINE_LIMITED, 0, 0, "%s", msg));
        return;
    }
    if (d == PIPELINE_SHADOW_LIMITED) {
        ctx->shadow_limited = 1;
        ctx->rec.decision = PIPELINE_SHADOW_LIMITED;
    }
    pipeline_resume(ctx, STAGE_NEXT);
}

/* Buckets are named from the startup config's key prefix: the store it talks to is that one.
 * With Redis, a signed request's Nonce is claimed for every instance in the same command (a lone
 * SET NX when no rule applies), so a replay sent to another instance is refused too; without
 * Redis there is one process, whose nonce cache authenticate already asked. */
static enum stage_result stage_limit(struct pipeline_ctx *ctx) {
    const struct config_redis *redis = ctx->w->boot->redis;
    const char *prefix = redis && redis->key_prefix ? redis->key_prefix : PIPELINE_KEY_PREFIX;
    const struct v2_fields *f = &ctx->fields;
    char nonce_key[LIMIT_KEY_MAX + 160];
    struct store_nonce nonce = {nonce_key, 0};
    int claim = 0, n;

    n = limit_buckets(ctx->config, prefix, ctx->app->name, f->has_business_id, f->business_id,
                      f->has_scene_id, f->scene_id, ctx->buckets, LIMIT_MAX_BUCKETS);
    if (n < 0) {
        /* a rule that cannot be checked is not skipped: the request is refused (fail closed);
         * the config's bounds keep this from happening (limit.h) */
        log_error("request %s: the rate-limit buckets of app %s could not be built; refused",
                  ctx->rec.request_id, ctx->app->name);
        return ctx_error(ctx, APIERR_INTERNAL, PIPELINE_LIMITED, 0, 0,
                         "the rate limits could not be checked");
    }
    ctx->n_buckets = (size_t)n;
    if (redis && ctx->has_nonce && ctx->app->secret_id) {
        if (auth_nonce_key(prefix, ctx->app->secret_id, ctx->nonce, nonce_key, sizeof(nonce_key)) ==
            0) {
            nonce.ttl_ms = (unsigned)(validate_nonce_ttl_s(ctx->config->timestamp_window_s) * 1000);
            claim = 1;
        } else {
            log_warn("request %s: Nonce key too long; checked in this process only",
                     ctx->rec.request_id);
        }
    }
    if (!ctx->n_buckets && !claim) return STAGE_NEXT;
    store_limit_nonce(ctx->w->store, ctx->buckets, ctx->n_buckets, claim ? &nonce : NULL,
                      limit_done, ctx);
    return STAGE_PENDING;
}

/* 3.0: code 0 "Success" for a Response without Error, else the Error.Code and its class. */
static void record_upstream_reply3(struct pipeline_ctx *ctx, const char *body, size_t len) {
    int has_error = 0;
    char desc[sizeof(ctx->rec.code_desc)];
    if (api3_reply_scan(body, len, &has_error, desc, sizeof(desc)) != 0) {
        ctx->rec.code = APIERR_INTERNAL;
        copy_str(ctx->rec.code_desc, sizeof(ctx->rec.code_desc), "InternalError");
        return;
    }
    ctx->rec.code = has_error ? api3_code_class(desc) : 0;
    copy_str(ctx->rec.code_desc, sizeof(ctx->rec.code_desc), has_error ? desc : "Success");
}

/* The upstream reply's code and codeDesc for the record, and a successful CaptchaIframeQuery's
 * url for the audit (which keeps only its hash), from the upstream client's scan of the body; the
 * body passes unchanged. */
static void record_upstream_reply(struct pipeline_ctx *ctx, struct reply_fields *f) {
    struct pipeline_record *rec = &ctx->rec;
    if (f->has_code) rec->code = (int)f->code;
    if (f->has_code_desc) copy_str(rec->code_desc, sizeof(rec->code_desc), f->code_desc);
    if (rec->action_id == V2_ACTION_CAPTCHA_IFRAME_QUERY && f->has_code && f->code == 0 && f->url) {
        free(ctx->reply_url);
        ctx->reply_url = f->url;
        f->url = NULL;
    }
}

/* A 2xx reply to CaptchaQuery script=1 that is not JSON is the script the doc page describes:
 * passed through byte for byte with upstream's Content-Type (or PIPELINE_SCRIPT_TYPE), and
 * recorded with no API code (the audit's code is null, codeDesc ""; no code:<N> is counted). */
static int record_script_reply(struct pipeline_ctx *ctx, const struct upstream_result *r) {
    const char *type = r->content_type && *r->content_type ? r->content_type : PIPELINE_SCRIPT_TYPE;
    ctx->rec.no_code = 1;
    ctx->rec.code = 0;
    ctx->rec.code_desc[0] = '\0';
    free(ctx->reply_type);
    ctx->reply_type = strdup(type);
    return ctx->reply_type ? 0 : -1;
}

static void forward_done(const struct upstream_result *r, void *arg) {
    struct pipeline_ctx *ctx = arg;
    ctx->rec.upstream_status = r->http_status;
    ctx->rec.upstream_latency_us = r->latency_us;
    if (r->ok && !r->fields && record_script_reply(ctx, r) != 0) {
        ctx_error(ctx, APIERR_INTERNAL, PIPELINE_UPSTREAM_ERROR, 0, 0, "out of memory");
    } else if (r->ok) {
        /* A shadow refusal stays the decision of a request that was forwarded anyway. */
        ctx->rec.decision = ctx->shadow_limited ? PIPELINE_SHADOW_LIMITED : PIPELINE_FORWARDED;
        if (reply_body_room(ctx, r->body_len + 1)) {
            memcpy(ctx->reply_body, r->body, r->body_len);
            ctx->reply_body[r->body_len] = '\0';
            ctx->reply_len = r->body_len;
            ctx->reply_status = 200;
            ctx->storable = 1;
            if (ctx->v3)
                record_upstream_reply3(ctx, r->body, r->body_len);
            else if (r->fields)
                record_upstream_reply(ctx, r->fields);
        } else {
            ctx_error(ctx, APIERR_INTERNAL, PIPELINE_UPSTREAM_ERROR, 0, 0, "out of memory");
        }
    } else {
        ctx_error(ctx, APIERR_UNAVAILABLE, PIPELINE_UPSTREAM_ERROR, r->timed_out, 0, "%s",
                  r->error ? r->error : "upstream call failed");
    }
    pipeline_resume(ctx, STAGE_NEXT);
}

/* The parameters of one upstream attempt, from the request's own (kept for its life): every
 * attempt, a retry included, gets a fresh Timestamp, Nonce and Signature. */
static char *forward_sign(void *arg) {
    struct pipeline_ctx *ctx = arg;
    const struct config_upstream *up = &ctx->w->boot->upstream;
    struct params *out = &ctx->fwd_params; /* kept with the context; emptied here */
    char *encoded = NULL;
    if (upstream_params_into(&ctx->params, up, clock_wall_us() / 1000000, pipeline_random(ctx->w),
                             out) == 0)
        encoded = params_encode(out);
    params_reset(out);
    return encoded;
}

/* The headers the 3.0 upstream request signs (content-type;host): the Host the upstream client
 * sends (upstream.v3_url's host[:port]). */
struct sign_headers3 {
    const char *host, *type;
};

static const char *forward_header3(void *arg, const char *lname) {
    const struct sign_headers3 *h = arg;
    if (strcmp(lname, "host") == 0) return h->host;
    if (strcmp(lname, "content-type") == 0) return h->type;
    return NULL;
}

/* One 3.0 attempt: the body (with the gateway's AppSecretKey when it injects one) signed TC3
 * with the real credential at this moment, so a retry carries a fresh X-TC-Timestamp. */
static int forward_build3(void *arg, struct upstream_attempt *a) {
    struct pipeline_ctx *ctx = arg;
    const struct config_upstream *up = &ctx->w->boot->upstream;
    uint64_t now = clock_wall_us() / 1000000;
    char ts[NUM_U64_DIGITS + 1];
    if (!(a->body = api3_forward_body(ctx->config, ctx->body3, ctx->captcha_app_id, &a->body_len)))
        return -1;
    a->content_type = API3_CONTENT_TYPE;
    *num_put_u64(ts, now) = '\0';
    struct sign_headers3 h = {up->v3_sign_host, API3_CONTENT_TYPE};
    struct tc3_request r = {"POST", "/", "", a->body, a->body_len, forward_header3, &h};
    copy_str(a->name[0], sizeof(a->name[0]), "X-TC-Action");
    copy_str(a->value[0], sizeof(a->value[0]), validate_action_name(ctx->rec.action_id));
    copy_str(a->name[1], sizeof(a->name[1]), "X-TC-Version");
    copy_str(a->value[1], sizeof(a->value[1]), API3_VERSION);
    copy_str(a->name[2], sizeof(a->name[2]), "X-TC-Timestamp");
    copy_str(a->value[2], sizeof(a->value[2]), ts);
    copy_str(a->name[3], sizeof(a->name[3]), "Authorization");
    a->n_headers = 4;
    if (tc3_authorization(&r, up->secret_id, up->secret_key, API3_SERVICE, now, a->value[3],
                          sizeof(a->value[3])) != 0)
        return -1;
    return 0;
}

static enum stage_result stage_forward(struct pipeline_ctx *ctx) {
    const struct config_upstream *up = &ctx->w->boot->upstream;
    if (ctx->v3) {
        if (!ctx->w->upstream3 ||
            upstream_call_built(ctx->w->upstream3, forward_build3, 0, forward_done, ctx) != 0)
            return ctx_error(ctx, APIERR_UNAVAILABLE, PIPELINE_UPSTREAM_ERROR, 0, 0,
                             "the upstream call could not be started");
        return STAGE_PENDING;
    }
    if (upstream_call_signed(ctx->w->upstream, up->post ? "POST" : "GET", forward_sign,
                             pipeline_reply_may_be_script(&ctx->fields) ? UPSTREAM_RAW_OK : 0,
                             forward_done, ctx) != 0)
        return ctx_error(ctx, APIERR_UNAVAILABLE, PIPELINE_UPSTREAM_ERROR, 0, 0,
                         "the upstream call could not be started");
    return STAGE_PENDING;
}

struct pipeline_stage {
    enum stage_result (*run)(struct pipeline_ctx *ctx);
    enum pipeline_state done; /* the state once the stage said "next" */
};

static const struct pipeline_stage stages[] = {
    {stage_parse, ST_PARSED},       {stage_authenticate, ST_AUTHED},
    {stage_validate, ST_VALIDATED}, {stage_authorize, ST_AUTHORIZED},
    {stage_replay, ST_REPLAY},      {stage_limit, ST_LIMITED},
    {stage_pool, ST_POOL},          {stage_forward, ST_UPSTREAM},
};
#define N_STAGES (sizeof(stages) / sizeof(stages[0]))

/* ---- reply, audit, release ---- */

/* A context for a new request: one from the worker's free list, its first CTX_CLEARED bytes
 * cleared, or a new one. NULL on OOM. */
static struct pipeline_ctx *ctx_new(struct pipeline_worker *w) {
    struct pipeline_ctx *ctx = w->free_ctx;
    if (!ctx) return calloc(1, sizeof(*ctx));
    poison_clear(ctx, sizeof(*ctx));
    w->free_ctx = ctx->next_free;
    w->n_free_ctx--;
    memset(ctx, 0, CTX_CLEARED);
    return ctx;
}

/* Frees a context that is on no list, with the storage it keeps. */
static void ctx_destroy(struct pipeline_ctx *ctx) {
    params_cleanup(&ctx->kept_params);
    params_cleanup(&ctx->fwd_params);
    free(ctx->body_buf);
    free(ctx);
}

void pipeline_worker_cleanup(struct pipeline_worker *w) {
    while (w->free_ctx) {
        struct pipeline_ctx *ctx = w->free_ctx;
        poison_clear(ctx, sizeof(*ctx));
        w->free_ctx = ctx->next_free;
        ctx_destroy(ctx);
    }
    w->n_free_ctx = 0;
}

static void ctx_release(struct pipeline_ctx *ctx) {
    struct pipeline_worker *w = ctx->w;
    /* the request's list keeps its storage for the context's next request */
    params_reset(&ctx->params);
    ctx->kept_params = ctx->params;
    params_init(&ctx->params);
    params_cleanup(&ctx->audit_params);
    json_decref(ctx->body3);
    pipeline_limit_headers_cleanup(&ctx->limit_headers);
    reply_body_drop(ctx);
    free(ctx->reply_url);
    free(ctx->reply_type);
    shared_config_unref(ctx->pc);
    if (w->n_free_ctx < PIPELINE_FREE_CTX_MAX) {
        ctx->next_free = w->free_ctx;
        w->free_ctx = ctx;
        w->n_free_ctx++;
        poison_mark(ctx, sizeof(*ctx));
    } else {
        ctx_destroy(ctx);
    }
    w->live--;
    stats_inflight_add(w->stats, -1);
    if (w->on_release) w->on_release(w);
}

static void ctx_reply(struct pipeline_ctx *ctx) {
    if (ctx->cancelled || !ctx->req) {
        ctx->rec.http_status = 0;
        return;
    }
    struct httpd_req *req = ctx->req;
    ctx->req = NULL;
    httpd_set_cancel(req, NULL, NULL);
    if (!ctx->reply_body) {
        static const char oom[] = REPLY_OOM_JSON;
        ctx->rec.code = APIERR_INTERNAL;
        httpd_add_header(req, "X-Request-Id", ctx->rec.request_id);
        httpd_reply(req, 500, PIPELINE_JSON, oom, sizeof(oom) - 1);
        ctx->rec.http_status = 500;
        return;
    }
    httpd_add_header(req, "X-Request-Id", ctx->rec.request_id);
    if (ctx->replayed) httpd_add_header(req, "Idempotent-Replayed", "true");
    for (size_t i = 0; i < ctx->limit_headers.count; i++)
        httpd_add_header(req, ctx->limit_headers.name[i], ctx->limit_headers.value[i]);
    httpd_reply(req, ctx->reply_status, ctx->reply_type ? ctx->reply_type : PIPELINE_JSON,
                ctx->reply_body, ctx->reply_len);
    ctx->rec.http_status = ctx->reply_status;
}

/* The end of every request, whatever became of it: counters, the metrics batch, the audit (whose
 * thread also writes the access line: no log write here on the worker's loop). 0 when the record
 * was submitted. */
static int ctx_audit(struct pipeline_ctx *ctx) {
    struct pipeline_worker *w = ctx->w;
    int rc = -1;
    ctx->rec.latency_us = clock_mono_us() - ctx->start_us;
    if (w->metrics) metrics_record(w->metrics, w->id, &ctx->rec);
    if (w->audit) {
        struct audit_record ar;
        const struct params *p = !ctx->parsed ? NULL : ctx->v3 ? &ctx->audit_params : &ctx->params;
        if (audit_record_init(&ar, &ctx->rec, p, ctx->reply_url, w->audit_config, w->instance) !=
                0 ||
            audit_submit(w->audit, w->id, &ar) != 0) {
            stats_count_audit_failure(w->stats);
            log_error("request %s: audit record not submitted", ctx->rec.request_id);
        } else {
            rc = 0;
        }
    }
    stats_count_request(ctx->w->stats, ctx->rec.app[0] ? ctx->rec.app : "-",
                        validate_action_name(ctx->rec.action_id),
                        pipeline_decision_name(ctx->rec.decision));
    return rc;
}

/* ---- audit.commit "durable": a reply waits until its audit record is stored ---- */

/* On the sink thread (audit_on_durable): wake the worker. */
static void commit_notify(void *arg) {
    event_active(arg, EV_READ, 0);
}

/* Sends the replies whose records are stored now, oldest first (the records are numbered in
 * submit order, so the list is in number order). */
static void commit_run(evutil_socket_t fd, short what, void *arg) {
    struct pipeline_worker *w = arg;
    uint64_t durable = audit_durable_seq(w->audit, w->id);
    (void)fd;
    (void)what;
    while (w->commit_head && w->commit_head->commit_seq <= durable) {
        struct pipeline_ctx *ctx = w->commit_head;
        w->commit_head = ctx->next_free;
        if (!w->commit_head) w->commit_tail = NULL;
        ctx->next_free = NULL;
        ctx_reply(ctx);
        set_state(ctx, ST_AUDITED);
        ctx_release(ctx);
    }
}

int pipeline_worker_commit_init(struct pipeline_worker *w) {
    if (!audit_commit_durable(w->audit)) return 0;
    if (!(w->commit_ev = event_new(w->base, -1, 0, commit_run, w))) return -1;
    audit_on_durable(w->audit, w->id, commit_notify, w->commit_ev);
    return 0;
}

void pipeline_worker_commit_close(struct pipeline_worker *w) {
    if (!w->commit_ev) return;
    audit_on_durable(w->audit, w->id, NULL, NULL);
    while (w->commit_head) { /* the sink did not confirm them before the shutdown */
        struct pipeline_ctx *ctx = w->commit_head;
        w->commit_head = ctx->next_free;
        ctx->next_free = NULL;
        ctx_reply(ctx);
        ctx_release(ctx);
    }
    w->commit_tail = NULL;
    event_free(w->commit_ev);
    w->commit_ev = NULL;
}

/* The record goes to the audit before the reply: the reply waits on the worker's commit list
 * until the sink stored the record (commit_run). 0 parked, -1 not (no record was submitted: the
 * caller replies now). The record says what the reply will be: its status, and the latency up
 * to now (the wait for the record is not in it). */
static int ctx_commit(struct pipeline_ctx *ctx) {
    struct pipeline_worker *w = ctx->w;
    if (ctx->cancelled || !ctx->req || !ctx->reply_body) return -1;
    ctx->rec.http_status = ctx->reply_status;
    if (ctx_audit(ctx) != 0) { /* nothing to wait for */
        ctx_reply(ctx);
        set_state(ctx, ST_AUDITED);
        ctx_release(ctx);
        return 0;
    }
    set_state(ctx, ST_REPLIED);
    ctx->commit_seq = audit_last_seq(w->audit, w->id);
    ctx->next_free = NULL;
    if (w->commit_tail)
        w->commit_tail->next_free = ctx;
    else
        w->commit_head = ctx;
    w->commit_tail = ctx;
    if (audit_durable_seq(w->audit, w->id) >= ctx->commit_seq)
        event_active(w->commit_ev, EV_READ, 0);
    return 0;
}

static void ctx_finish(struct pipeline_ctx *ctx) {
    /* the idempotency key this request holds: its reply is stored before it is sent, so a
     * duplicate polling for it finds it as early as possible */
    if (ctx->idem_owned && !ctx->w->store_closing)
        idem_finish(ctx->w->store, ctx->idem_key, ctx->idem_fp, ctx->storable, ctx->reply_body,
                    ctx->reply_len, ctx->config->idempotency_ttl_s * 1000u);
    if (ctx->w->commit_ev && ctx_commit(ctx) == 0) return;
    ctx_reply(ctx);
    set_state(ctx, ST_REPLIED);
    ctx_audit(ctx);
    set_state(ctx, ST_AUDITED);
    ctx_release(ctx);
}

/* Runs stages from ctx->stage until one is pending or the reply is ready. */
static void ctx_run(struct pipeline_ctx *ctx) {
    while (ctx->stage < N_STAGES) {
        ctx->in_stage = 1;
        ctx->resumed = 0;
        enum stage_result r = stages[ctx->stage].run(ctx);
        ctx->in_stage = 0;
        if (r == STAGE_PENDING) {
            if (!ctx->resumed) return;
            r = ctx->resumed_with;
        }
        if (r == STAGE_FINISH) break;
        set_state(ctx, stages[ctx->stage].done);
        ctx->stage++;
    }
    ctx_finish(ctx);
}

/* A pending stage completed: "next" continues with the following stage (after the last one,
 * the reply); "finish" replies with what the stage prepared. */
static void pipeline_resume(struct pipeline_ctx *ctx, enum stage_result r) {
    if (ctx->in_stage) {
        ctx->resumed = 1;
        ctx->resumed_with = r;
        return;
    }
    if (r == STAGE_FINISH) {
        ctx_finish(ctx);
        return;
    }
    set_state(ctx, stages[ctx->stage].done);
    ctx->stage++;
    ctx_run(ctx);
}

static void pipeline_cancel(struct httpd_req *req, void *arg) {
    struct pipeline_ctx *ctx = arg;
    log_debug("request %s: client went away in state %s", ctx->rec.request_id,
              state_names[ctx->state]);
    ctx->cancelled = 1;
    ctx->req = NULL;
}

void pipeline_handle(struct httpd_req *req, void *arg) {
    struct pipeline_worker *w = arg;
    struct pipeline_ctx *ctx = ctx_new(w);
    if (!ctx) {
        static const char oom[] = REPLY_OOM_JSON;
        httpd_reply(req, 500, PIPELINE_JSON, oom, sizeof(oom) - 1);
        return;
    }
    ctx->w = w;
    ctx->req = req;
    ctx->pc = shared_config_ref(w->config);
    ctx->config = ctx->pc->config;
    ctx->start_us = clock_mono_us();
    ctx->state = ST_NEW;
    ctx->params = ctx->kept_params; /* empty (params_reset), or zero in a new context */
    params_init(&ctx->kept_params);
    params_init(&ctx->audit_params);
    ctx->rec.ts_us = clock_wall_us();
    *num_put_hex64(ctx->rec.request_id, pipeline_random(w)) = '\0';
    /* the peer, or the client a trusted proxy names (config trusted_proxies) */
    realip_client(ctx->config->trusted_proxies, ctx->config->n_trusted_proxies, req->peer_ip,
                  req->headers, req->header_count, ctx->rec.client_ip, sizeof(ctx->rec.client_ip));
    ctx->rec.decision = PIPELINE_INVALID;
    w->live++;
    stats_inflight_add(w->stats, 1);
    httpd_set_cancel(req, pipeline_cancel, ctx);

    /* 3.0 calls get 3.0's error shape from here on, framing errors included */
    ctx->v3 = is_api3(req);
    ctx->rec.api3 = ctx->v3;
    if (req->error_status) {
        if (ctx->v3) {
            ctx->code3 = req->error_status == 413 ? "RequestSizeLimitExceeded" : "InvalidParameter";
            copy_str(ctx->rec.action, sizeof(ctx->rec.action), req_header(req, "X-TC-Action"));
        }
        ctx_error(ctx, APIERR_INVALID_PARAMETER, PIPELINE_INVALID, 0, req->error_status, "%s",
                  req->error_message ? req->error_message : "malformed request");
        ctx_finish(ctx);
        return;
    }
    ctx_run(ctx);
}
