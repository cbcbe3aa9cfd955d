/* auth.h: which app sent a request. Two modes (docs/design.md "Gateway"): a bearer token
 * ("Authorization: Bearer <token>", compared in constant time), or the app's own v2 signature,
 * checked like upstream: public params (4000) → SecretId known (4100) → Timestamp inside the
 * window (4500) → Nonce not used by this SecretId inside the window (4500) → signature (4100);
 * the Nonce is recorded only once all of that passed. No I/O; the clock comes from the caller.
 * The cache is per process; with Redis the limit stage also claims the Nonce for every instance
 * (auth_nonce_key, store_limit_nonce), from has_nonce/nonce of the result. */
#ifndef CAPGATE_AUTH_H
#define CAPGATE_AUTH_H
#include <stddef.h>
#include <stdint.h>

struct config;
struct config_app;
struct params;
struct nonce_cache;

/* What the request carried. All borrowed for the call. */
struct auth_request {
    const struct params *params;
    const char *authorization; /* the Authorization header value, or NULL */
    const char *method;        /* "GET" / "POST", as signed by the client */
    const char *host;          /* the Host header as sent ("" when absent) */
    const char *path;          /* the request path as sent */
    uint64_t now_s;            /* wall clock, Unix seconds */
};

/* The verdict: code 0 and app set, or an API code (enum apierr_code: 4000, 4100, 4500, or 6000
 * when the Nonce could not be recorded) with message. */
struct auth_result {
    int code;
    const struct config_app *app;     /* borrowed from the config, valid while it is */
    int token;                        /* 1 when the app came by bearer token */
    int bearer;                       /* an Authorization: Bearer header decided (either way) */
    const struct config_app *claimed; /* the app whose SecretId the request names, also when
                                       * it was refused (who failed, for the audit); NULL when
                                       * no app has it or a bearer token decided */
    int has_nonce;                    /* a signed request: its Nonce passed the in-process cache */
    uint64_t nonce;
    char message[256];
};

/* Authenticates req against c; nonces (shared by all workers) records the Nonce of a signed
 * request that passed. Returns 0 (r->app set) or -1 (r->code and r->message set). */
int auth_authenticate(const struct config *c, struct nonce_cache *nonces,
                      const struct auth_request *req, struct auth_result *r);

/* The key that claims a signed request's Nonce across instances sharing one Redis:
 * "<prefix>nonce:<SecretId>:<Nonce>" (the Nonce in decimal, as the in-process cache keys it). 0, or
 * -1 when it does not fit in out. */
int auth_nonce_key(const char *prefix, const char *secret_id, uint64_t nonce, char *out,
                   size_t outlen);
/* The 4500 message for a Nonce another instance already claimed:
 * "Nonce <n> was already used by SecretId <id>". */
void auth_replay_message(const char *secret_id, uint64_t nonce, char *out, size_t outlen);

/* The bearer token of an Authorization value ("Bearer abc" → "abc", scheme case-insensitive,
 * spaces trimmed), with *len; NULL when the value is not a Bearer credential. */
const char *auth_bearer_token(const char *authorization, size_t *len);

#endif
