/* api3req.h: the request shapes of API 3.0 besides POST JSON, shared by the gateway's 3.0 front
 * (proxy/api3.c, pipeline.c) and the mock's (mockserver/api3.c). What the official SDKs send
 * (tencentcloud-sdk-nodejs common/http/http_connection.js and common/abstract_client.js,
 * tencentcloud-sdk-python common/abstract_client.py):
 *   - TC3-HMAC-SHA256 over POST application/json (the default; not handled here),
 *   - TC3 over GET /?<fields> (Content-Type application/x-www-form-urlencoded, the query signed
 *     as sent, the payload hash that of ""),
 *   - TC3 over POST multipart/form-data (the payload hash that of the body),
 *   - the v1 signature (profile.signMethod HmacSHA1 / HmacSHA256) over GET /?<query> or POST
 *     application/x-www-form-urlencoded, the common parameters (Action, Version, SecretId,
 *     Timestamp, Nonce, Signature, ...) among the fields; string to sign and signature as v2's
 *     (common/sign.c).
 * Values arrive as strings; api3req_body types them by the Action's field model (validate.h). */
#ifndef CAPGATE_API3REQ_H
#define CAPGATE_API3REQ_H
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "capgate/sign.h"
#include "capgate/tc3.h"
#include "capgate/validate.h"

struct params;
struct sign_key;

enum api3_shape {
    API3_SHAPE_JSON,      /* POST application/json */
    API3_SHAPE_QUERY,     /* GET, the fields in the query */
    API3_SHAPE_FORM,      /* POST application/x-www-form-urlencoded */
    API3_SHAPE_MULTIPART, /* POST multipart/form-data */
};

/* Sets *code to c and err to the formatted message; returns -1. The failure of every check here
 * and of the 3.0 fronts (a 3.0 Error.Code and its Message). */
int api3req_fail(const char **code, const char *c, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* The shape of a request by method and Content-Type (its parameters ignored, the type compared
 * case-insensitively; a GET's type is not looked at). 0, or -1 with *code (UnsupportedProtocol
 * for a method other than GET and POST, InvalidParameter for a POST of another type) and err. */
int api3req_shape(const char *method, const char *content_type, enum api3_shape *out,
                  const char **code, char *err, size_t errlen);

/* Decodes the fields of a QUERY, FORM or MULTIPART request into p (params.h rules: duplicates,
 * bad percent-encoding and invalid UTF-8 are errors). 0, or -1 with err (InvalidParameter). */
int api3req_params(enum api3_shape s, const char *query, const char *content_type, const void *body,
                   size_t len, struct params *p, char *err, size_t errlen);

/* 1 when p is signed with the v1 signature (it holds a Signature). */
int api3req_is_v1(const struct params *p);
/* The common parameters of v1 (abstract_client formatRequestData / _build_req_with_old_signature):
 * Action, Version, Region, Timestamp, Nonce, SecretId, Signature, SignatureMethod, Token,
 * Language, RequestClient. 1 when name is one of them. */
int api3req_is_common(const char *name);

/* A v1 request's common parameters; strings borrowed from the params. */
struct api3_v1 {
    const char *action, *version, *secret_id, *signature;
    const char *token; /* NULL or "" when absent */
    uint64_t timestamp, nonce;
    enum sign_method method; /* HmacSHA256 when SignatureMethod says so, else HmacSHA1 */
};
/* Reads them: Action, Version, SecretId, Timestamp, Nonce and Signature must be present and
 * non-empty (MissingParameter), Timestamp and Nonce decimal (InvalidParameter). 0 or -1. */
int api3req_v1_public(const struct params *p, struct api3_v1 *out, const char **code, char *err,
                      size_t errlen);
/* Verifies a v1 Signature: METHOD + Host + "/" + "?" + the sorted parameters (sign.h), with the
 * Host as sent (the Node SDK signs its endpoint, port included) or without its port (the Python
 * SDK's hostname). k when not NULL (precomputed states), else key. 0 match, -1 not. */
int api3req_v1_verify(const struct params *p, const char *method, const char *host,
                      const struct sign_key *k, const char *key);

/* The value of X-TC-Content-SHA256 with which the Python, Java and Go SDKs (their profile's
 * unsignedPayload) sign the string "UNSIGNED-PAYLOAD" in place of the body. */
#define API3REQ_UNSIGNED_PAYLOAD "UNSIGNED-PAYLOAD"

/* Verifies a's TC3 signature over a request of shape s, whose headers header(arg, lname) gives
 * (the lower-case name; "host" included). What is signed follows the shape: GET signs the query
 * as sent and an empty payload, a form or multipart POST the query as sent and the body, a JSON
 * POST the body; with "X-TC-Content-SHA256: UNSIGNED-PAYLOAD" the payload is that string, not
 * the body. The Host is tried as sent, then without its port (the Node SDK signs URL.hostname
 * but sends URL.host). tc3_verify's result: 0, -1 mismatch (err says what), -2 OOM or a signed
 * header missing. */
int api3req_tc3_verify(enum api3_shape s, const char *query, const void *body, size_t body_len,
                       tc3_header_fn header, void *arg, const struct tc3_auth *a,
                       const char *secret_key, uint64_t timestamp, char *err, size_t errlen);

/* The fields of p as a JSON object typed by fields (validate_api3_fields): an Integer field's
 * value must be an optional '-' and 1..19 digits (it becomes a JSON integer; its range is the
 * validator's), a String stays a string. With v1 the common parameters are left out. NULL with
 * *code UnknownParameter ("X is not a parameter of <action>"), InvalidParameterValue ("X must be
 * an Integer; got \"abc\"") or InternalError (OOM), and err. */
json_t *api3req_body(const struct params *p, int v1, const struct api3_field *fields,
                     const char *action, const char **code, char *err, size_t errlen);

#endif
