/* api3.h: the gateway's API 3.0 front (captcha.tencentcloudapi.com, Version 2019-07-22) beside
 * the v2 one: POST / with a JSON body, the X-TC-* headers and a TC3-HMAC-SHA256 Authorization
 * (common/tc3.c) signed with the app's own gateway-issued SecretKey, or the app's bearer token.
 * Pure functions without I/O; the pipeline (pipeline.c) runs them in its stages, so 3.0 calls get
 * the same limits, replay, metrics and audit as v2 ones. Field names, types and codes: the
 * official Node SDK (tencentcloud-sdk-nodejs, services/captcha/v20190722/captcha_models.d.ts) and
 * the API 3.0 common error codes (README "Protocol rules and their sources", docs/api3.md). */
#ifndef CAPGATE_API3_H
#define CAPGATE_API3_H
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "capgate/api3req.h"
#include "capgate/tc3.h"
#include "capgate/validate.h"

struct config;
struct config_app;
struct nonce_cache;
struct params;

#define API3_VERSION "2019-07-22"
#define API3_SERVICE "captcha"
#define API3_PATH "/"
#define API3_CONTENT_TYPE "application/json"
/* The longest string field accepted (a Ticket is a few hundred bytes). */
#define API3_STRING_MAX 4096

/* The 3.0 Error.Code a gateway error of v2 API code apierr is answered with
 * ("AuthFailure.SignatureFailure" for 4100, "RequestLimitExceeded" for 4400, ...). */
const char *api3_code_name(int apierr);
/* The v2 API code class of a 3.0 Error.Code (AuthFailure.* 4100, RequestLimitExceeded 4400,
 * UnauthorizedOperation 4300, InvalidParameter / MissingParameter / UnknownParameter 4000,
 * InvalidAction / NoSuchVersion 6100, ResourceUnavailable / ServiceUnavailable 6200, others
 * 6000): what the record's numeric code and the metrics' code:<N> count a 3.0 error under. */
int api3_code_class(const char *code);
/* {"Response":{"Error":{"Code":code,"Message":message},"RequestId":request_id}}, malloc'd;
 * NULL on OOM. */
char *api3_error_body(const char *code, const char *message, const char *request_id);

/* One request's authentication input; strings borrowed for the call. */
struct api3_auth_request {
    tc3_header_fn header; /* the request's headers by lower-case name */
    void *header_arg;
    const char *host; /* the Host header as sent ("" when absent) */
    const void *body;
    size_t body_len;
    uint64_t now_s;
    /* the shape (api3req.h); JSON (0) is POST / with the body signed, as before */
    enum api3_shape shape;
    const char *method;         /* QUERY, FORM, MULTIPART: the method ("GET", "POST") */
    const char *query;          /* the query as sent (TC3 over GET signs it); NULL: none */
    const struct params *v1;    /* a v1-signed request's parameters (api3req_is_v1), or NULL */
    struct nonce_cache *nonces; /* v1: where its Nonce is remembered (as v2's, auth.c) */
};

struct api3_auth_result {
    const struct config_app *app;          /* set on success */
    const struct config_app *claimed;      /* the app the SecretId names, also on failure */
    int bearer;                            /* an Authorization: Bearer header decided */
    const char *code;                      /* failure: the 3.0 Error.Code (static) */
    int apierr;                            /* failure: its v2 class (4100, 4000, ...) */
    char secret_id[TC3_MAX_SECRET_ID + 1]; /* the Credential's SecretId ("" when none) */
    int has_nonce;                         /* v1: the Nonce, claimed with Redis by the limit */
    uint64_t nonce;                        /* stage as a v2 one's */
    char message[256];
};

/* Authenticates a 3.0 request against c. Bearer: a token app (constant-time). TC3: the
 * Authorization parses (AuthFailure.InvalidAuthorization), X-TC-Timestamp is digits
 * (InvalidParameter), the SecretId is a signature app's (AuthFailure.SecretIdNotFound), the
 * timestamp is within auth.timestamp_window_s (AuthFailure.SignatureExpire), the scope's service
 * is "captcha" or the Host's first label (what the SDKs derive from an endpoint) and the scope's
 * date and the signature match, with the Host as sent or without its port (the Node SDK signs
 * URL.hostname) (AuthFailure.SignatureFailure). TC3 has no Nonce: replays within the window are
 * not refused (as by Tencent's service). TC3 over GET signs the query and the hash of "", over
 * FORM / MULTIPART the body. v1 (req->v1): its common parameters (MissingParameter,
 * InvalidParameter), the SecretId, the Timestamp window, the Nonce not seen before, the
 * Signature (api3req_v1_verify), then the Nonce recorded (AuthFailure.SignatureExpire on a
 * replay, as v2's 4500). A Token (X-TC-Token or v1's Token) is AuthFailure.TokenFailure: the
 * gateway issues permanent keys only. 0 (r->app set) or -1 (r->code, r->message). */
int api3_authenticate(const struct config *c, const struct api3_auth_request *req,
                      struct api3_auth_result *r);

/* Validates a body (a parsed JSON value) for a 3.0 action, filling f (action, CaptchaType,
 * BusinessId, SceneId, UserIp, MacAddress, Imei; strings borrowed from body) and
 * *captcha_app_id. A missing AppSecretKey is allowed when c's captcha_apps holds the
 * CaptchaAppId's key (the gateway injects it). On failure -1 with *code (InvalidParameter,
 * UnknownParameter, MissingParameter, InvalidParameterValue) and err naming the field. */
int api3_validate(const struct config *c, enum v2_action action, json_t *body, struct v2_fields *f,
                  uint32_t *captcha_app_id, const char **code, char *err, size_t errlen);

/* May app verify tickets of captcha_app_id (apps[].captcha_app_ids)? 0, or -1 with err. */
int api3_authorize_captcha_app(const struct config_app *app, uint32_t captcha_app_id, char *err,
                               size_t errlen);

/* The body sent upstream: body as compact JSON, with the gateway's AppSecretKey for the
 * CaptchaAppId when c's captcha_apps holds it and the app sent none (or "inject": "always").
 * malloc'd, *len set; the caller wipes it before freeing it (it may hold the key). NULL on OOM. */
char *api3_forward_body(const struct config *c, json_t *body, uint32_t captcha_app_id, size_t *len);

/* Scans a 3.0 reply: *has_error and the Error.Code (cut to desclen) when it has one. 0 for a
 * JSON object with a "Response" object, -1 otherwise. */
int api3_reply_scan(const char *body, size_t len, int *has_error, char *desc, size_t desclen);

#endif
