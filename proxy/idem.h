/* idem.h: idempotent replay (docs/design.md "Caches"). A request with an Idempotency-Key header (1
 * to 128 printable ASCII characters, space included) is scoped per app: key
 * <prefix>idem:<app>:<hex SHA-256 of the header value>. Its fingerprint is the hex SHA-256 over
 * the Action and the business parameters sorted by name (the public parameters SecretId
 * Signature Timestamp Nonce Region SignatureMethod Token and RequestClient excluded), so a
 * re-signed retry matches and other parameters do not.
 *
 * Life of a key (store_idem_*): the first request writes a pending marker (for the upstream
 * timeout plus a margin, so a crashed owner never blocks the key for long) and proceeds; at its
 * release point the final reply is stored for idempotency.ttl_s when it is storable (an upstream
 * pass-through, API errors such as 5100 included, or a pool hit), or the marker is removed
 * (the gateway's own errors: 4000, 4100, 4300, 4400, 6200, ...). A repeat finds the reply and gets
 * it byte for byte; a concurrent duplicate finds the marker and polls every IDEM_POLL_MS until the
 * reply is there, the marker is gone (it then owns the key and proceeds), or the wait bound
 * passes (6200 "idempotent request still in progress"); another fingerprint under the key is a
 * mismatch (4000). */
#ifndef CAPGATE_IDEM_H
#define CAPGATE_IDEM_H
#include <stddef.h>
#include "store.h"

struct event_base;
struct params;

#define IDEM_HEADER "Idempotency-Key"
#define IDEM_HEADER_MAX 128
#define IDEM_KEY_MAX 320
#define IDEM_POLL_MS 20
#define IDEM_PENDING_MARGIN_MS 1000
#define IDEM_MISMATCH_MESSAGE "the Idempotency-Key was used with different parameters"
#define IDEM_IN_PROGRESS_MESSAGE "idempotent request still in progress"

/* ---- pure ---- */

/* 0 when value is a usable key, or -1 with err naming the header and the rule. */
int idem_header_check(const char *value, char *err, size_t errlen);
/* "<prefix>idem:<app>:<sha256 hex of value>". 0/-1 (too small, or no digest). */
int idem_key(const char *prefix, const char *app, const char *value, char *out, size_t cap);
/* The fingerprint (see above) into out[STORE_IDEM_FP_LEN + 1]. 0, or -1 on OOM. */
int idem_fingerprint(const struct params *p, char *out);

/* ---- async ---- */

/* The idempotency waits of one worker, for its shutdown: every idem_begin is registered here
 * until its callback fires. The caller embeds it (all zero is an empty registry too). */
struct idem_wait;
struct idem_waits {
    struct idem_wait *head; /* newest first */
    int closed;             /* idem_waits_close ran: a wait is never armed again */
};
void idem_waits_init(struct idem_waits *ws);
/* At shutdown, after the worker's loop stopped and before store_free: every wait between polls
 * (its timer armed, no store command pending) gets err STORE_CLOSED_MESSAGE, as on a store
 * error, once, and is freed; its timer goes with it, before the loop is freed. A wait with a
 * store command pending stays registered and ends inside store_free; from now on a
 * STORE_IDEM_PENDING answer ends a wait with STORE_CLOSED_MESSAGE instead of arming its timer.
 * The registry is empty once store_free has returned. Returns how many waits it ended. */
size_t idem_waits_close(struct idem_waits *ws);

/* The outcome of idem_begin, exactly once, never inside idem_begin:
 *  - err NULL, STORE_IDEM_NEW: the caller owns the key; it must call idem_finish at the end;
 *  - err NULL, STORE_IDEM_DONE: body/len is the stored reply (borrowed for the callback);
 *  - err NULL, STORE_IDEM_MISMATCH: the key holds other parameters;
 *  - err IDEM_IN_PROGRESS_MESSAGE, STORE_IDEM_PENDING: the wait bound passed;
 *  - other err (the store failed or closed): the caller proceeds without idempotency. */
typedef void (*idem_begin_fn)(const char *err, enum store_idem_state state, const char *body,
                              size_t len, void *arg);
/* Starts the lookup on s; polls on base while another request holds the key, for at most
 * wait_ms. The wait is registered in waits (borrowed; the worker's, on base) until cb fires.
 * key and fp are copied. 0, or -1 on OOM (cb not called). */
int idem_begin(struct store *s, struct event_base *base, struct idem_waits *waits, const char *key,
               const char *fp, unsigned pending_ms, unsigned wait_ms, idem_begin_fn cb, void *arg);
/* The owner's end: stores body for ttl_ms when storable, else removes the marker. Fire and
 * forget (a failure is logged; the marker then expires by itself). */
void idem_finish(struct store *s, const char *key, const char *fp, int storable, const char *body,
                 size_t len, unsigned ttl_ms);

#endif
