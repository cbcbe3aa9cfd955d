/* idem.c: Idempotency-Key handling: the header rule, the per-app key, the parameter fingerprint,
 * and the wait of a concurrent duplicate (a timer on the worker's loop between store lookups, so
 * the loop never blocks and the caller hears back exactly once; each wait is in its worker's
 * registry, so a shutdown between two lookups ends it too). */
#include "idem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>
#include <openssl/evp.h>

#include "capgate/clock.h"
#include "capgate/log.h"
#include "capgate/params.h"
#include "capgate/validate.h"

/* ---- pure ---- */

int idem_header_check(const char *value, char *err, size_t errlen) {
    size_t n = strlen(value);
    if (n == 0 || n > IDEM_HEADER_MAX) {
        snprintf(err, errlen, IDEM_HEADER " must be 1 to %d characters; got %zu", IDEM_HEADER_MAX,
                 n);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)value[i];
        if (c < 0x20 || c > 0x7e) {
            snprintf(err, errlen,
                     IDEM_HEADER " must be printable ASCII; got byte 0x%02x at position %zu", c,
                     i + 1);
            return -1;
        }
    }
    return 0;
}

static void idem_hex(const unsigned char *d, size_t n, char *out) {
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[2 * n] = 0;
}

int idem_key(const char *prefix, const char *app, const char *value, char *out, size_t cap) {
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    int n;
    if (EVP_Digest(value, strlen(value), d, &dlen, EVP_sha256(), NULL) != 1) return -1;
    idem_hex(d, dlen, hex);
    n = snprintf(out, cap, "%sidem:%s:%s", prefix ? prefix : "", app, hex);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

/* Each field as its length (8 bytes, big-endian) then its bytes: no two lists hash alike. */
static int idem_digest_field(EVP_MD_CTX *md, const char *s, size_t n) {
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
    return EVP_DigestUpdate(md, len, sizeof len) == 1 && EVP_DigestUpdate(md, s, n) == 1 ? 0 : -1;
}

int idem_fingerprint(const struct params *p, char *out) {
    struct params sorted;
    EVP_MD_CTX *md = NULL;
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    const char *action = params_get(p, "Action");
    int rc = -1;
    params_init(&sorted);
    if (params_copy(&sorted, p) != 0) goto out;
    params_sort(&sorted);
    if (!(md = EVP_MD_CTX_new()) || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) goto out;
    if (idem_digest_field(md, action ? action : "", action ? strlen(action) : 0) != 0) goto out;
    for (size_t i = 0; i < sorted.count; i++) {
        const struct param *it = &sorted.items[i];
        if (validate_is_public(it->name) || strcmp(it->name, V2_REQUEST_CLIENT) == 0 ||
            strcmp(it->name, "Action") == 0)
            continue;
        if (idem_digest_field(md, it->name, it->name_len) != 0 ||
            idem_digest_field(md, it->value, it->value_len) != 0)
            goto out;
    }
    if (EVP_DigestFinal_ex(md, d, &dlen) != 1 || dlen * 2 != STORE_IDEM_FP_LEN) goto out;
    idem_hex(d, dlen, out);
    rc = 0;
out:
    EVP_MD_CTX_free(md);
    params_cleanup(&sorted);
    return rc;
}

/* ---- async ---- */

struct idem_wait {
    struct idem_waits *waits; /* the registry it is in until cb fires */
    struct idem_wait *prev, *next;
    struct store *store;
    struct event *timer;
    int polling; /* timer armed, no store command pending */
    char *key;
    char fp[STORE_IDEM_FP_LEN + 1];
    unsigned pending_ms;
    uint64_t deadline_us; /* monotonic */
    idem_begin_fn cb;
    void *arg;
};

void idem_waits_init(struct idem_waits *ws) {
    ws->head = NULL;
    ws->closed = 0;
}

static void idem_waits_unlink(struct idem_wait *w) {
    if (w->prev)
        w->prev->next = w->next;
    else
        w->waits->head = w->next;
    if (w->next) w->next->prev = w->prev;
    w->prev = w->next = NULL;
}

static void idem_wait_free(struct idem_wait *w) {
    if (w->timer) event_free(w->timer);
    free(w->key);
    free(w);
}

/* The one way a registered wait ends: out of the registry first, so nothing else can end it. */
static void idem_wait_end(struct idem_wait *w, const char *err, enum store_idem_state state,
                          const char *body, size_t len) {
    idem_waits_unlink(w);
    w->cb(err, state, body, len, w->arg);
    idem_wait_free(w);
}

static void idem_on_begin(const char *err, const struct store_idem_result *r, void *arg) {
    struct idem_wait *w = arg;
    uint64_t now, left, us;
    if (err) {
        idem_wait_end(w, err, STORE_IDEM_NEW, NULL, 0);
        return;
    }
    if (r->state != STORE_IDEM_PENDING) {
        idem_wait_end(w, NULL, r->state, r->body, r->body_len);
        return;
    }
    if (w->waits->closed) {
        idem_wait_end(w, STORE_CLOSED_MESSAGE, STORE_IDEM_NEW, NULL, 0);
        return;
    }
    now = clock_mono_us();
    if (now >= w->deadline_us) {
        idem_wait_end(w, IDEM_IN_PROGRESS_MESSAGE, STORE_IDEM_PENDING, NULL, 0);
        return;
    }
    left = w->deadline_us - now;
    us = left < IDEM_POLL_MS * 1000 ? left : IDEM_POLL_MS * 1000;
    struct timeval tv = {(time_t)(us / 1000000), (suseconds_t)(us % 1000000)};
    event_add(w->timer, &tv);
    w->polling = 1;
}

static void idem_on_poll(evutil_socket_t fd, short what, void *arg) {
    struct idem_wait *w = arg;
    w->polling = 0;
    store_idem_begin(w->store, w->key, w->fp, w->pending_ms, idem_on_begin, w);
}

size_t idem_waits_close(struct idem_waits *ws) {
    struct idem_wait *w, *next, *armed = NULL, **tail = &armed;
    size_t n = 0;
    ws->closed = 1;
    /* Take the armed waits out before any callback runs: a callback may register new waits
     * (their store commands end in store_free). */
    for (w = ws->head; w; w = next) {
        next = w->next;
        if (!w->polling) continue;
        idem_waits_unlink(w);
        event_del(w->timer);
        w->polling = 0;
        *tail = w;
        tail = &w->next;
    }
    while ((w = armed)) {
        armed = w->next;
        w->cb(STORE_CLOSED_MESSAGE, STORE_IDEM_NEW, NULL, 0, w->arg);
        idem_wait_free(w);
        n++;
    }
    return n;
}

int idem_begin(struct store *s, struct event_base *base, struct idem_waits *waits, const char *key,
               const char *fp, unsigned pending_ms, unsigned wait_ms, idem_begin_fn cb, void *arg) {
    struct idem_wait *w = calloc(1, sizeof *w);
    if (!w) return -1;
    if (!(w->key = strdup(key)) || !(w->timer = evtimer_new(base, idem_on_poll, w))) {
        idem_wait_free(w);
        return -1;
    }
    snprintf(w->fp, sizeof w->fp, "%s", fp);
    w->store = s;
    w->pending_ms = pending_ms;
    w->deadline_us = clock_mono_us() + (uint64_t)wait_ms * 1000;
    w->cb = cb;
    w->arg = arg;
    w->waits = waits;
    w->next = waits->head;
    if (w->next) w->next->prev = w;
    waits->head = w;
    store_idem_begin(s, key, w->fp, pending_ms, idem_on_begin, w);
    return 0;
}

static void idem_on_finish(const char *err, const struct store_idem_result *r, void *arg) {
    if (err && strcmp(err, STORE_CLOSED_MESSAGE) != 0)
        log_warn("idempotency record not finished: %s (it expires by itself)", err);
    else if (!err && r->state == STORE_IDEM_MISMATCH)
        log_debug("idempotency record was no longer ours to finish (pending marker expired)");
}

void idem_finish(struct store *s, const char *key, const char *fp, int storable, const char *body,
                 size_t len, unsigned ttl_ms) {
    if (storable && body)
        store_idem_complete(s, key, fp, body, len, ttl_ms, idem_on_finish, NULL);
    else
        store_idem_abandon(s, key, fp, idem_on_finish, NULL);
}
