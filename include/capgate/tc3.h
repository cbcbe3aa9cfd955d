/* tc3.h: API 3.0 request signing, TC3-HMAC-SHA256, for the mock (verifying callers) and the
 * gateway (verifying its apps, re-signing upstream). The rules, from Tencent's "签名方法 v3"
 * page and the official SDKs' signers (tencentcloud-sdk-nodejs common/sign.js):
 *   CanonicalRequest = METHOD \n URI \n QUERY \n CanonicalHeaders \n SignedHeaders \n
 *                      hex(SHA256(payload))
 *   CanonicalHeaders = for each signed header: lower(name) ":" lower(trim(value)) "\n"
 *   StringToSign     = "TC3-HMAC-SHA256" \n Timestamp \n Date/Service/tc3_request \n
 *                      hex(SHA256(CanonicalRequest))
 *   key = HMAC(HMAC(HMAC("TC3" + SecretKey, Date), Service), "tc3_request")
 *   Signature = hex(HMAC-SHA256(key, StringToSign)), Date = the UTC day of Timestamp.
 *   Authorization: TC3-HMAC-SHA256 Credential=ID/Date/Service/tc3_request,
 *                  SignedHeaders=content-type;host, Signature=HEX */
#ifndef CAPGATE_TC3_H
#define CAPGATE_TC3_H
#include <stddef.h>
#include <stdint.h>

#define TC3_ALGORITHM "TC3-HMAC-SHA256"
#define TC3_HEX_LEN 64
#define TC3_DATE_LEN 10 /* YYYY-MM-DD */
#define TC3_MAX_SECRET_ID 128
#define TC3_MAX_SERVICE 64
#define TC3_MAX_SIGNED_HEADERS 256

/* A parsed Authorization header. */
struct tc3_auth {
    char secret_id[TC3_MAX_SECRET_ID + 1];
    char date[TC3_DATE_LEN + 1];
    char service[TC3_MAX_SERVICE + 1];
    char signed_headers[TC3_MAX_SIGNED_HEADERS + 1]; /* as sent, e.g. "content-type;host" */
    char signature[TC3_HEX_LEN + 1];                 /* lower-case hex */
};

/* Looks up a request header by its lower-case name; NULL when absent. */
typedef const char *(*tc3_header_fn)(void *arg, const char *lname);

/* What is signed of one request. uri "" counts as "/". */
struct tc3_request {
    const char *method; /* "POST" */
    const char *uri;    /* "/" */
    const char *query;  /* "" for POST */
    const void *payload;
    size_t payload_len;
    tc3_header_fn header;
    void *header_arg;
};

/* The UTC date of a Unix time, "YYYY-MM-DD". 0/-1. */
int tc3_date(uint64_t timestamp, char out[TC3_DATE_LEN + 1]);
/* hex(SHA-256(data)) in lower case. 0/-1. */
int tc3_sha256_hex(const void *data, size_t len, char out[TC3_HEX_LEN + 1]);

/* Parses "TC3-HMAC-SHA256 Credential=ID/DATE/SERVICE/tc3_request, SignedHeaders=..., Signature=..."
 * (the three parts in that order, ", " or "," between them). 0, or -1 with err naming what is
 * wrong. SignedHeaders must be lower-case names separated by ';' and include content-type and
 * host (the doc's minimum). */
int tc3_parse_authorization(const char *value, struct tc3_auth *out, char *err, size_t errlen);

/* The canonical request over the headers listed in signed_headers (';'-separated). Caller
 * frees; NULL on OOM or when a listed header is missing (then *missing names it, if given). */
char *tc3_canonical_request(const struct tc3_request *r, const char *signed_headers,
                            const char **missing);
/* The string to sign. Caller frees; NULL on OOM. */
char *tc3_string_to_sign(uint64_t timestamp, const char *date, const char *service,
                         const char *canonical_request);
/* hex(HMAC-SHA256(derived key, string_to_sign)). 0/-1. */
int tc3_signature(const char *secret_key, const char *date, const char *service,
                  const char *string_to_sign, char out[TC3_HEX_LEN + 1]);

/* Signs r (its headers must include content-type and host) as a client does:
 * writes the Authorization value into out. 0, or -1 (OOM, too small). */
int tc3_authorization(const struct tc3_request *r, const char *secret_id, const char *secret_key,
                      const char *service, uint64_t timestamp, char *out, size_t outlen);

/* Verifies r against a parsed Authorization for secret_key and timestamp: the date of the
 * credential scope must be the UTC date of timestamp, and the signature must match (constant
 * time). 0 match; -1 mismatch (err says which part); -2 OOM or a listed header missing. */
int tc3_verify(const struct tc3_request *r, const struct tc3_auth *a, const char *secret_key,
               uint64_t timestamp, char *err, size_t errlen);

/* The Host without its port, as a client may have signed it: "host:port" -> "host",
 * "[v6]:port" -> "[v6]"; a bare IPv6 address stays whole. NULL is "". Cut to len - 1 bytes. */
void tc3_host_without_port(const char *host, char *out, size_t len);

/* 1 when |timestamp - now| <= window seconds. */
int tc3_timestamp_fresh(uint64_t timestamp, uint64_t now, uint64_t window);

#endif
