/* upstream.h: the gateway's client for the real v2 API: evhttp over plain TCP or verified TLS
 * (bufferevent_openssl), a keep-alive pool with a bounded wait queue, per-call total timeout,
 * connect timeout, retries of calls that never reached upstream, and a circuit breaker. */
#ifndef CAPGATE_UPSTREAM_H
#define CAPGATE_UPSTREAM_H
#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>
#include "breaker.h"
#include "capgate/reply.h"

struct config_upstream;
struct event_base;
struct params;
struct upstream;

struct upstream_options {
    int tls;          /* 1: https (bufferevent_openssl), 0: plain http */
    const char *host; /* connect to, and with TLS the SNI and certificate name */
    int port;
    const char *path;            /* "/v2/index.php" */
    const char *sign_host;       /* the Host header */
    SSL_CTX *ssl_ctx;            /* borrowed, must outlive the upstream (tls_client_ctx_new) */
    int verify_tls;              /* hostname check per connection (the ctx verifies the chain) */
    unsigned connect_timeout_ms; /* TCP connect + TLS handshake of one attempt (0: 1000) */
    unsigned timeout_ms;         /* whole call, queueing and retries included (0: 3000) */
    unsigned retries;            /* extra attempts after a retriable failure */
    unsigned max_connections;    /* keep-alive pool cap for this worker (0: 64) */
    unsigned breaker_failures;   /* consecutive failures that open the breaker (0: 5) */
    unsigned breaker_open_ms;    /* pause before a probe (0: 5000) */
    unsigned max_queued;         /* calls waiting for a free connection (0: 1024); beyond it a
                                 * call fails at once with "upstream queue is full" */
    const char *tls_name;        /* name for SNI and the certificate check (NULL: host) */
    struct breaker *breaker;     /* shared by every worker's upstream (borrowed, initialised by
                                 * the caller, outlives the upstream); NULL: a breaker of its own
                                 * from breaker_failures/breaker_open_ms */

    /* Host name lookups (an IP literal is never looked up): "ip[:port]" nameservers separated
     * by spaces or commas, only those asked; NULL or "": the system's (/etc/resolv.conf and
     * /etc/hosts). The name is looked up again every resolve_interval_ms (0: 30000). */
    const char *resolver;
    unsigned resolve_interval_ms;
}; /* strings are copied by upstream_new */

/* One per worker (per event_base); not thread-safe; nothing is shared with other workers except
 * the SSL_CTX and the breaker (both borrowed; the breaker is lock-free). NULL and err on a bad option or OOM. */
struct upstream *upstream_new(struct event_base *base, const struct upstream_options *o, char *err,
                              size_t errlen);
/* Pending and queued calls complete with an error ("upstream client shut down") first, inside
 * this call; then every connection is closed. Accepts NULL. Must not be called from inside an
 * upstream_done_fn of this upstream. */
void upstream_free(struct upstream *u);

struct upstream_result {
    int ok;           /* 1: HTTP 2xx with a body that is a JSON object (or, with
                             * UPSTREAM_RAW_OK, any non-empty body) */
    int http_status;  /* 0 when no reply status was received */
    const char *body; /* the raw body, borrowed, valid during the callback only (also on
                             * !ok when a body was received); NULL when none */
    size_t body_len;
    const char *error;           /* !ok: one sentence for the 6200 message, e.g. "upstream timed out
                             * after 3000 ms", "upstream answered HTTP 500", "upstream reply is
                             * not JSON", "upstream TLS certificate verification failed: ...",
                             * "circuit breaker open after 5 consecutive failures; retrying in
                             * 4200 ms", "connection refused"; NULL when ok. Borrowed, valid
                             * during the callback. */
    int breaker_rejected;        /* 1: the breaker was open; nothing was attempted */
    unsigned attempts;           /* connection attempts made (0 when rejected or queued out) */
    uint64_t latency_us;         /* from upstream_call to the callback */
    int nothing_sent;            /* 1 when no request bytes reached upstream (connect/TLS failed,
                             * breaker, queue full, timed out while queued) */
    int timed_out;               /* !ok because a timer ran out: the call's timeout_ms (queued or
                             * sent), or the last attempt's connect_timeout_ms (a 504, where
                             * other failures are a 502) */
    const char *content_type;    /* upstream's Content-Type header when the body is not JSON
                                    * (fields NULL), else NULL; NULL when none (borrowed for
                                    * the callback) */
    struct reply_fields *fields; /* the body's code, codeDesc and url when it is a JSON object
                                    * (from the scan that decided ok), else NULL. Borrowed for the
                                    * callback, which may take fields->url (setting it to NULL). */
};

/* Fires exactly once per accepted call, on the worker's thread, never from inside upstream_call.
 * The result and its strings are borrowed for the duration of the callback. The callback may
 * call upstream_call again, but not upstream_free. */
typedef void (*upstream_done_fn)(const struct upstream_result *r, void *arg);

/* Sends one v2 call: method "POST" (encoded_params as an x-www-form-urlencoded body) or "GET"
 * (encoded_params as the query). encoded_params is copied. Headers: Host (sign_host),
 * Content-Type (POST), User-Agent: capgate/<version> (HTTP/1.1 keeps the connection alive).
 *
 * Retries (at most `retries` extra attempts, all within timeout_ms) happen only when the request
 * cannot have been processed upstream: connection refused, connect timeout, TLS handshake failure
 * (not a certificate verification failure: it would fail again); and one exception: a connection reset (RST, or a close) before any reply
 * byte on a reused keep-alive connection, the usual race with the server closing an idle
 * connection. A failure after a reply byte arrived, a timeout after the request was written and
 * any HTTP status are never retried. Outcomes reported to the breaker: a reply that is a JSON
 * object (any HTTP status below 500) counts as success; timeouts, connection and TLS failures,
 * HTTP 5xx and garbage count as failures. While the breaker is open, the call completes
 * asynchronously with breaker_rejected = 1.
 * Returns 0, or -1 on OOM or a method other than GET/POST (cb not called). */
int upstream_call(struct upstream *u, const char *method, const char *encoded_params,
                  upstream_done_fn cb, void *arg);

/* upstream_call with flags. UPSTREAM_RAW_OK: a 2xx reply with a non-empty body that is not JSON
 * is ok too (r->ok 1, r->fields NULL, r->content_type upstream's) and a breaker success, for
 * CaptchaQuery script=1, whose documented reply is JavaScript. Other replies as upstream_call. */
#define UPSTREAM_RAW_OK 1u
int upstream_call_flags(struct upstream *u, const char *method, const char *encoded_params,
                        unsigned flags, upstream_done_fn cb, void *arg);

/* Builds the encoded, signed parameters of one attempt: a malloc'd string, or NULL on OOM (the
 * attempt then fails, not retried). arg is upstream_call_signed's. */
typedef char *(*upstream_sign_fn)(void *arg);
/* upstream_call, with the parameters built by sign for every attempt, just before it is sent: a
 * retry goes out with a fresh Nonce, Timestamp and Signature (upstream refuses a Nonce it has
 * seen with 4500, and a retried request may well have been seen), and a call that waited for a
 * free connection is signed when it leaves, not when it was queued. sign runs on the worker's
 * thread, the first time inside this call. flags as upstream_call_flags. 0, or -1 as
 * upstream_call. */
int upstream_call_signed(struct upstream *u, const char *method, upstream_sign_fn sign,
                         unsigned flags, upstream_done_fn cb, void *arg);

/* One attempt of an API 3.0 call as its build function makes it: a POST of body with the given
 * Content-Type and headers besides Host (sign_host) and User-Agent, which the signature
 * covers (X-TC-*, Authorization). */
#define UPSTREAM_ATTEMPT_HEADERS 6
struct upstream_attempt {
    char *body; /* malloc'd by the build function; wiped and freed by the upstream (it may hold
                 * an injected AppSecretKey) */
    size_t body_len;
    const char *content_type; /* static */
    size_t n_headers;
    char name[UPSTREAM_ATTEMPT_HEADERS][32];
    char value[UPSTREAM_ATTEMPT_HEADERS][512];
};
/* Fills out (zeroed by the caller) for one attempt; 0, or -1 on OOM (the attempt then fails,
 * not retried). */
typedef int (*upstream_build_fn)(void *arg, struct upstream_attempt *out);
/* upstream_call_signed for a request that is more than parameters (API 3.0: a JSON body and
 * signed headers): build runs for every attempt, so each one goes out with a fresh timestamp
 * and signature. Retries, timeouts, breaker and flags as upstream_call_signed. */
int upstream_call_built(struct upstream *u, upstream_build_fn build, unsigned flags,
                        upstream_done_fn cb, void *arg);

/* Latency histogram: bucket i counts calls with latency <= upstream_latency_bounds_us[i] and
 * above bound i-1 (per bucket, not cumulative; sum them for Prometheus). The last bound is
 * UINT64_MAX (+Inf). Bounds: 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000 ms, +Inf. */
#define UPSTREAM_LATENCY_BUCKETS 13
extern const uint64_t upstream_latency_bounds_us[UPSTREAM_LATENCY_BUCKETS];

struct upstream_stats {
    uint64_t requests; /* calls accepted by upstream_call */
    uint64_t failures; /* calls completed with !ok (breaker rejections included) */
    uint64_t retries;  /* extra attempts made */
    uint64_t breaker_rejections;
    enum breaker_state breaker;
    unsigned open_connections; /* connections in the pool, busy or idle */
    unsigned idle_connections;
    unsigned addresses;        /* the host's addresses known (0: a host name not resolved yet) */
    uint64_t connect_failures; /* connects (TCP or TLS handshake) that failed at one address of
                                * a host name (an IP literal's are not counted) */
    uint64_t dns_failures;     /* lookups of the host name that failed */
    uint64_t latency_buckets[UPSTREAM_LATENCY_BUCKETS]; /* completed calls, not rejections */
    uint64_t latency_sum_us, latency_count;
};
void upstream_get_stats(const struct upstream *u, struct upstream_stats *out);
/* Finished calls u keeps for reuse (at most 64): for tests. */
unsigned upstream_pooled_calls(const struct upstream *u);

/* The parameters sent upstream: a copy of in without the app's public parameters
 * (validate_public_params: SecretId, Signature, Timestamp, Nonce, Region, SignatureMethod,
 * Token; Action and RequestClient stay), plus the gateway's own (SecretId, Timestamp now_s,
 * Nonce, Region, SignatureMethod), signed with the real key for up's sign_host, path and
 * method. out is initialised by the call; the caller cleans it up (also on failure). 0, or -1
 * on OOM. */
int upstream_params(const struct params *in, const struct config_upstream *up, uint64_t now_s,
                    uint64_t nonce, struct params *out);
/* upstream_params into out, an initialised list it empties first and whose storage it reuses
 * (params_assign_without): for a caller that keeps one list across requests. */
int upstream_params_into(const struct params *in, const struct config_upstream *up, uint64_t now_s,
                         uint64_t nonce, struct params *out);

#endif
