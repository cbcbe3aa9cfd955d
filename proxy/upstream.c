/* upstream.c: the gateway's client for the real v2 API (see upstream.h). evhttp does the HTTP/1.1
 * framing; this file owns the pool, the timers, the retry rules and the breaker. evhttp's own
 * retries are never used: a connection that errors, or that the server closes while it is idle,
 * is discarded. One that a reply closed (Connection: close) goes back to the pool, and evhttp
 * opens a new socket under it for its next call (over TLS too: checked by hand against an nginx
 * with keepalive_requests 2). A host name is looked up here (evdns_getaddrinfo), not by evhttp:
 * each connection is given one numeric address to connect to (and to reconnect to), chosen from
 * the host's addresses (upaddr.h), and a connect that fails goes on at the next address within
 * the same attempt. evhttp adds no Host header of its own (libevent 2.1.12's
 * evhttp_make_header_request writes only the request line and Content-Length): call_send's Host
 * and the TLS name stay the configured host. */
#include "upstream.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/bufferevent_struct.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509.h>

#include "capgate/bevread.h"
#include "capgate/clock.h"
#include "capgate/log.h"
#include "capgate/net.h"
#include "capgate/num.h"
#include "capgate/params.h"
#include "capgate/reply.h"
#include "capgate/sign.h"
#include "capgate/tls.h"
#include "capgate/validate.h"
#include "capgate/version.h"
#include "config.h"
#include "upaddr.h"

#define UPSTREAM_DEFAULT_CONNECT_MS 1000u
#define UPSTREAM_DEFAULT_TIMEOUT_MS 3000u
#define UPSTREAM_DEFAULT_MAX_CONNECTIONS 64u
#define UPSTREAM_DEFAULT_BREAKER_FAILURES 5u
#define UPSTREAM_DEFAULT_BREAKER_OPEN_MS 5000u
#define UPSTREAM_DEFAULT_MAX_QUEUED 1024u
#define UPSTREAM_DEFAULT_RESOLVE_INTERVAL_MS 30000u
/* A lookup that a connect failure, or a call finding no address, asks for starts no sooner than
 * this after the last one ended. */
#define UPSTREAM_RESOLVE_MIN_MS 1000u
/* A failed lookup is tried again after this (or resolve_interval_ms when that is shorter). */
#define UPSTREAM_RESOLVE_RETRY_MS 5000u
/* evhttp's per-connection read/write timeout: a backstop behind our own timers, and the idle
 * time after which evhttp drops a keep-alive connection. */
#define UPSTREAM_IDLE_MS 30000u
#define UPSTREAM_MAX_BODY (1024 * 1024)
#define UPSTREAM_MAX_HEADERS (64 * 1024)
/* deadline_cb: at most this many loop turns for a reply whose bytes wait to be read or parsed */
#define UPSTREAM_DEADLINE_GRACE_TURNS 3u
/* conn_tls_write_now: libevent's default max_single_write */
#define UPSTREAM_TLS_WRITE_NOW_MAX 16384u
/* Finished calls kept, with their two timers, for the next ones (call_free): a forwarded request
 * then allocates no call and no timer. At most this many per upstream; a worker has at most
 * max_connections calls on the wire, so more are seldom reused. */
#define UPSTREAM_CALL_POOL_MAX 64u

const uint64_t upstream_latency_bounds_us[UPSTREAM_LATENCY_BUCKETS] = {
    1000,   2500,   5000,    10000,   25000,   50000,      100000,
    250000, 500000, 1000000, 2500000, 5000000, UINT64_MAX,
};

enum conn_state { CONN_CONNECTING, CONN_BUSY, CONN_IDLE, CONN_DEAD };
static const char *const conn_state_names[] = {
    [CONN_CONNECTING] = "connecting",
    [CONN_BUSY] = "busy",
    [CONN_IDLE] = "idle",
    [CONN_DEAD] = "dead",
};

enum call_state { CALL_QUEUED, CALL_ACTIVE, CALL_FAILING_FAST, CALL_DONE };
static const char *const call_state_names[] = {
    [CALL_QUEUED] = "queued",
    [CALL_ACTIVE] = "active",
    [CALL_FAILING_FAST] = "failing-fast",
    [CALL_DONE] = "done",
};

struct upstream_call;

/* One keep-alive connection; carries at most one call at a time. */
struct conn {
    struct upstream *u;
    struct evhttp_connection *evcon;
    struct bufferevent *bev; /* owned by evcon */
    struct evbuffer_cb_entry *out_cb, *in_cb;
    struct event *watch;        /* the second read watcher (conn_watch_arm) */
    struct event *tls_pending;  /* TLS: looks for records read ahead (conn_tls_pending_cb) */
    int tls_session_saved;      /* TLS: this socket's session went to u->tls_session */
    evutil_socket_t nodelay_fd; /* the socket TCP_NODELAY was set on; -1 none */
    enum conn_state state;
    struct upstream_call *call;   /* CONNECTING/BUSY */
    uint64_t out_added, in_added; /* bytes queued for writing / received, ever */
    unsigned replies;             /* completed replies: > 0 means reused */
    int addr_ok;                  /* the address answered: its failures were cleared */
    int retire;                   /* its address left the host's list: closed when idle */
    char addr[UPADDR_TEXT];       /* the numeric address evhttp connects to */
    int verify_error;             /* X509_V_OK or the first certificate error */
    TAILQ_ENTRY(conn) link;       /* u->conns or u->dead */
};
TAILQ_HEAD(conn_list, conn);

struct upstream_call {
    struct upstream *u;
    enum call_state state;
    int post;
    unsigned flags; /* UPSTREAM_RAW_OK */
    char *params;
    upstream_sign_fn sign;   /* NULL: params as given, for every attempt */
    upstream_build_fn build; /* set: att is built for every attempt (params unused) */
    struct upstream_attempt *att;
    upstream_done_fn cb;
    void *arg;
    struct event *deadline;      /* the total timeout; also delivers fail-fast results */
    struct event *connect_timer; /* the connect phase of an attempt on a new connection */
    uint64_t start_us;
    struct conn *conn;          /* ACTIVE */
    uint64_t snap_out, snap_in; /* conn counters when this attempt started */
    int admitted;               /* breaker_allow said yes: the outcome is recorded */
    int sent_any;               /* request bytes reached a connection in some attempt */
    int submitting;             /* inside upstream_call: results are deferred */
    int fast_success;           /* CALL_FAILING_FAST: the breaker outcome to record */
    unsigned attempts;
    uint32_t tried;              /* this attempt's addresses dialled: bit i is u->addrs.a[i] */
    unsigned tried_gen;          /* u->addrs_gen that tried refers to */
    struct upstream_result fast; /* CALL_FAILING_FAST: the result to deliver */
    int timed_out;               /* the call ends on a timeout: total, or the last
                                         * attempt's connect (upstream_result.timed_out) */
    unsigned graced;             /* loop turns deadline_cb gave a reply's waiting bytes */
    char errbuf[256];
    struct upstream_call *next_free;  /* u->free_calls */
    TAILQ_ENTRY(upstream_call) link;  /* u->calls */
    TAILQ_ENTRY(upstream_call) qlink; /* u->queue while QUEUED */
};
TAILQ_HEAD(call_list, upstream_call);

struct resolve_req;

struct upstream {
    struct event_base *base;
    struct evdns_base *dns; /* only for a host name; NULL for an IP literal */
    /* The host's addresses: an IP literal's one, or a host name's as last resolved; new
     * connections rotate over them, skipping those that failed recently (upaddr.h). */
    struct upaddr_list addrs;
    unsigned addrs_gen; /* bumped when the set of addresses changes */
    int literal;        /* host is an IP literal: never resolved */
    unsigned resolve_interval_ms;
    struct event *resolve_ev;             /* the next lookup (host name only) */
    uint64_t resolve_at_ms;               /* when resolve_ev fires; UINT64_MAX: not pending */
    uint64_t resolve_done_ms;             /* when the last lookup ended (0: none yet) */
    struct resolve_req *resolving;        /* the lookup in flight, NULL if none */
    uint64_t lookup_requests;             /* stats.requests when the last lookup started */
    int resolve_stale;                    /* the next call starts a lookup (none runs while idle) */
    char resolve_err[192];                /* the last lookup's failure; "" after a success */
    struct log_limiter dns_log, addr_log; /* this host's repeated lookup / address failures */
    int limiters;                         /* both initialised */
    int tls;
    char *host, *path, *sign_host, *tls_name, *user_agent;
    int port;
    SSL_CTX *ssl_ctx;
    SSL_SESSION *tls_session; /* the last connection's, offered by the next (conn_new) */
    int verify_tls;
    unsigned connect_timeout_ms, timeout_ms, retries, max_connections, max_queued;
    struct breaker own_breaker; /* used when the options name no shared one */
    struct breaker *breaker;    /* own_breaker, or the process-wide one (borrowed) */
    struct conn_list conns;     /* live: connecting, busy, idle */
    struct conn_list dead;      /* waiting for reap_ev */
    struct event *reap_ev;
    struct call_list calls; /* every call not yet completed */
    struct call_list queue;
    unsigned n_conns, n_idle, n_queued;
    struct upstream_call *free_calls; /* finished calls for reuse (call_free) */
    unsigned n_free_calls;            /* <= UPSTREAM_CALL_POOL_MAX */
    char *uri;                        /* the GET request target of call_send, reused */
    size_t uri_cap;
    int closing; /* upstream_free is running */
    struct upstream_stats stats;
};

static void call_start_attempt(struct upstream_call *c);
static void pump_queue(struct upstream *u);
static void deadline_cb(evutil_socket_t fd, short what, void *arg);
static void connect_timer_cb(evutil_socket_t fd, short what, void *arg);
static void resolve_soon(struct upstream *u);

static uint64_t now_ms(void) {
    return clock_mono_us() / 1000;
}

static struct timeval ms_tv(unsigned ms) {
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

static char *dup_str(const char *s) {
    size_t n;
    char *d;

    if (!s) return NULL;
    n = strlen(s) + 1;
    d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* --- connections ------------------------------------------------------------------------ */

/* evhttp turns EV_READ off and on again around every request it sends and every reply it reads.
 * libevent's epoll backend folds the pair made in one loop turn, but re-registers a descriptor
 * that gets EV_READ again even when it never lost it: an epoll_ctl each time, two per call. A
 * second read watcher on the same socket keeps libevent's count of readers above zero, so those
 * toggles never reach epoll. It does nothing when it fires beside the bufferevent's read. Should
 * it find the socket readable while the bufferevent is not waiting to read (evhttp not reading;
 * over TLS also a handshake step or a read held back by a write), it would fire on every loop
 * turn, so it then steps aside until the connection is next idle (a safety net: libevent 2.1's
 * evhttp reads even while a request is still being written). It is removed before evhttp closes
 * the socket (conn_close_cb, conn_destroy), so a later socket with the same number starts with a
 * true count. Over TLS the same holds: bufferevent_openssl adds and deletes its own read event
 * (struct bufferevent's ev_read) on evhttp's toggles, and this watcher only keeps epoll's
 * registration; what OpenSSL has read ahead of the socket is conn_tls_pending_cb's business. */
static void conn_watch_cb(evutil_socket_t fd, short what, void *arg) {
    struct conn *k = arg;

    if (!(bufferevent_get_enabled(k->bev) & EV_READ) ||
        (k->u->tls && !event_pending(&k->bev->ev_read, EV_READ, NULL)))
        event_del(k->watch);
}

/* On a connection that has just become idle: evhttp reads (close detection) and the socket is
 * connected. A plain socket reads with one system call from now on (bevread.h; evhttp's
 * reconnect on the same bufferevent gives libevent's read back, so this is done at each idle
 * turn, a no-op once done). */
static void conn_watch_arm(struct conn *k) {
    evutil_socket_t fd = bufferevent_getfd(k->bev);

    if (fd < 0) return;
    if (!k->u->tls) (void)bevread_install(k->bev);
    if (!k->watch) {
        k->watch = event_new(k->u->base, fd, EV_READ | EV_PERSIST, conn_watch_cb, k);
        if (!k->watch) return; /* only the saving is lost */
    }
    if (!event_pending(k->watch, EV_READ, NULL)) event_add(k->watch, NULL);
}

/* TLS read-ahead. With SSL_set_read_ahead (conn_new) one read() takes a whole record, and
 * whatever else the socket holds, instead of a 5-byte header and then the rest: half the reads.
 * But bufferevent_openssl (libevent 2.1 and 2.2) reads on until SSL_pending() is 0, and
 * SSL_pending() counts only the record being decoded: further records already pulled into
 * OpenSSL's buffer stay there, out of epoll's sight, until more bytes reach the socket. A reply
 * whose last records came in one segment with the first would wait for the timeout. So after
 * each read that brought data (conn_in_cb), when a connection turns idle and after a request is
 * written, this runs as a deferred event: if OpenSSL holds unread bytes (SSL_has_pending) while
 * the bufferevent reads, it makes the bufferevent's own read event active, and libevent's
 * consider_reading decodes them with all its error and close handling (a close_notify read
 * ahead is reported as EOF there). Bytes of an incomplete record cost one read() that finds the
 * socket empty; their remainder wakes epoll as usual. */
static void conn_tls_pending_cb(evutil_socket_t fd, short what, void *arg) {
    struct conn *k = arg;
    SSL *ssl = bufferevent_openssl_get_ssl(k->bev);

    if (ssl && SSL_has_pending(ssl) && (bufferevent_get_enabled(k->bev) & EV_READ) &&
        bufferevent_getfd(k->bev) >= 0)
        event_active(&k->bev->ev_read, EV_READ, 1);
}

static void conn_tls_check_pending(struct conn *k) {
    if (k->tls_pending) event_active(k->tls_pending, EV_READ, 1);
}

/* TLS session reuse: the first time a socket's connection turns idle (its handshake, and TLS
 * 1.3's session tickets, came before the reply), its session is kept for the next connection,
 * which offers it (conn_new): an abbreviated handshake instead of a certificate chain to verify
 * and a key exchange. Only a verified, resumable session is kept. */
static void conn_tls_save_session(struct conn *k) {
    struct upstream *u = k->u;
    SSL *ssl;
    SSL_SESSION *s;

    if (!u->tls || k->tls_session_saved) return;
    k->tls_session_saved = 1;
    ssl = bufferevent_openssl_get_ssl(k->bev);
    if (!ssl || k->verify_error != X509_V_OK) return;
    log_debug("upstream %s:%d: connection %p: %s, TLS session %s", u->host, u->port, (void *)k,
              SSL_get_version(ssl), SSL_session_reused(ssl) ? "resumed" : "new");
    /* A copy: OpenSSL marks a connection's own session not resumable when the connection is
     * freed without a close_notify of ours, as evhttp frees them. */
    if (!SSL_get0_session(ssl) || !SSL_SESSION_is_resumable(SSL_get0_session(ssl))) return;
    s = SSL_SESSION_dup(SSL_get0_session(ssl));
    if (!s) return;
    SSL_SESSION_free(u->tls_session);
    u->tls_session = s;
    log_debug("upstream %s:%d: connection %p: TLS session kept for the next connection", u->host,
              u->port, (void *)k);
}

/* Offers the kept session on ssl, before its handshake. A copy again: should this connection end
 * without a close_notify too, OpenSSL marks the session it used, not the one kept. A failure
 * only costs a full handshake. */
static void conn_tls_offer_session(struct upstream *u, SSL *ssl) {
    SSL_SESSION *s = u->tls_session ? SSL_SESSION_dup(u->tls_session) : NULL;

    if (s && SSL_set_session(ssl, s) != 1) ERR_clear_error();
    SSL_SESSION_free(s);
}

/* The socket is closing: a new one (evhttp's reconnect) gets a watcher of its own. */
static void conn_watch_stop(struct conn *k) {
    if (k->watch) event_free(k->watch); /* deletes it too */
    k->watch = NULL;
}

/* TCP_NODELAY on each socket evhttp opens for k (a new connection, or evhttp's reconnect after
 * a reply that closed the last one). Without it Nagle's algorithm holds the second segment of a
 * request written in two until the server acknowledges the first, and a server delays that
 * acknowledgement expecting to send it with the reply: up to 40 ms per request on a warm
 * connection. bufferevent_openssl writes a TLS record per buffer chain, so over HTTPS nearly
 * every request went out in two segments and waited. */
static void conn_nodelay(struct conn *k) {
    evutil_socket_t fd = bufferevent_getfd(k->bev);
    int one = 1;

    if (fd < 0 || fd == k->nodelay_fd) return;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == 0) k->nodelay_fd = fd;
}

static void conn_set_state(struct conn *k, enum conn_state to) {
    struct upstream *u = k->u;

    if (k->state == to) return;
    log_debug("upstream %s:%d: connection %p %s -> %s", u->host, u->port, (void *)k,
              conn_state_names[k->state], conn_state_names[to]);
    /* Idle connections sit at the head of u->conns, so call_start_attempt finds one at once. */
    if (k->state == CONN_IDLE) u->n_idle--;
    if (to == CONN_IDLE) {
        u->n_idle++;
        TAILQ_REMOVE(&u->conns, k, link);
        TAILQ_INSERT_HEAD(&u->conns, k, link);
    } else if (k->state == CONN_IDLE && to != CONN_DEAD) {
        TAILQ_REMOVE(&u->conns, k, link);
        TAILQ_INSERT_TAIL(&u->conns, k, link);
    }
    if (to == CONN_IDLE) {
        conn_watch_arm(k);
        conn_tls_save_session(k);
        conn_tls_check_pending(k);
    }
    if (to == CONN_DEAD) {
        conn_watch_stop(k);
        TAILQ_REMOVE(&u->conns, k, link);
        TAILQ_INSERT_TAIL(&u->dead, k, link);
        u->n_conns--;
        k->call = NULL;
        event_active(u->reap_ev, EV_TIMEOUT, 1);
    }
    k->state = to;
}

static void conn_destroy(struct conn *k) {
    conn_watch_stop(k);
    if (k->tls_pending) event_free(k->tls_pending);
    if (k->evcon) {
        evhttp_connection_set_closecb(k->evcon, NULL, NULL);
        if (k->out_cb) evbuffer_remove_cb_entry(bufferevent_get_output(k->bev), k->out_cb);
        if (k->in_cb) evbuffer_remove_cb_entry(bufferevent_get_input(k->bev), k->in_cb);
        /* frees the bufferevent, the SSL and any request of ours still on it, without callbacks */
        evhttp_connection_free(k->evcon);
    }
    free(k);
}

/* Dead connections are freed here, outside evhttp's callbacks (which still use them). */
static void reap_cb(evutil_socket_t fd, short what, void *arg) {
    struct upstream *u = arg;
    struct conn *k;

    while ((k = TAILQ_FIRST(&u->dead)) != NULL) {
        TAILQ_REMOVE(&u->dead, k, link);
        conn_destroy(k);
    }
    pump_queue(u);
}

static void conn_out_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg) {
    struct conn *k = arg;

    k->out_added += info->n_added;
}

static void conn_in_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg) {
    struct conn *k = arg;

    k->in_added += info->n_added;
    if (info->n_added) conn_tls_check_pending(k);
}

/* evhttp closed the socket (peer closed an idle connection, Connection: close, error). */
static void conn_close_cb(struct evhttp_connection *evcon, void *arg) {
    struct conn *k = arg;

    conn_watch_stop(k);
    k->nodelay_fd = -1; /* a socket evhttp opens later may get the same number */
    k->tls_session_saved = 0;
    if (k->u->tls) {
        /* evhttp may reconnect on this SSL (after a reply with Connection: close), which
         * SSL_clear()s it first. Marked as shut down, the SSL keeps the session it is given
         * here through that SSL_clear rather than dropping it as one left uncleanly. */
        SSL *ssl = bufferevent_openssl_get_ssl(k->bev);
        if (ssl && k->u->tls_session) {
            SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
            conn_tls_offer_session(k->u, ssl);
        }
    }
    if (k->state == CONN_IDLE) conn_set_state(k, CONN_DEAD);
    /* CONNECTING/BUSY: the request callback follows and decides */
}

static int conn_verify_cb(int preverify_ok, X509_STORE_CTX *store) {
    SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
    struct conn *k = ssl ? SSL_get_app_data(ssl) : NULL;

    if (!preverify_ok && k && k->verify_error == X509_V_OK)
        k->verify_error = X509_STORE_CTX_get_error(store);
    return preverify_ok;
}

/* A connection to addr, one of u->addrs: evhttp connects to that numeric address (no lookup),
 * and reconnects to it after a reply that closed the socket. The Host header (call_send) and
 * the TLS name (SNI and the certificate check) stay u's configured names. */
static struct conn *conn_new(struct upstream *u, const char *addr, char *err, size_t errlen) {
    struct conn *k = calloc(1, sizeof(*k));
    struct bufferevent *bev = NULL;
    SSL *ssl = NULL;

    if (!k) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    k->u = u;
    k->verify_error = X509_V_OK;
    k->nodelay_fd = -1;
    snprintf(k->addr, sizeof(k->addr), "%s", addr);
    if (u->tls) {
        ssl = tls_client_ssl_new(u->ssl_ctx, u->tls_name, u->verify_tls);
        if (!ssl) {
            snprintf(err, errlen, "could not set up TLS for upstream %s", u->tls_name);
            goto fail;
        }
        SSL_set_app_data(ssl, k);
        SSL_set_verify(ssl, SSL_get_verify_mode(ssl), conn_verify_cb);
        /* safe with conn_tls_pending_cb only */
        SSL_set_read_ahead(ssl, 1);
        conn_tls_offer_session(u, ssl);
        k->tls_pending = event_new(u->base, -1, 0, conn_tls_pending_cb, k);
        if (!k->tls_pending) {
            SSL_free(ssl);
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        bev = bufferevent_openssl_socket_new(u->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                             BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
        if (!bev) {
            SSL_free(ssl);
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    } else {
        bev = bufferevent_socket_new(u->base, -1, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
        if (!bev) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    }
    k->evcon =
        evhttp_connection_base_bufferevent_new(u->base, NULL, bev, k->addr, (ev_uint16_t)u->port);
    if (!k->evcon) {
        bufferevent_free(bev);
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    k->bev = bev;
    evhttp_connection_set_retries(k->evcon, 0);
    {
        struct timeval tv = ms_tv(u->timeout_ms + 1000 > UPSTREAM_IDLE_MS ? u->timeout_ms + 1000
                                                                          : UPSTREAM_IDLE_MS);
        evhttp_connection_set_timeout_tv(k->evcon, &tv);
    }
    evhttp_connection_set_max_body_size(k->evcon, UPSTREAM_MAX_BODY);
    evhttp_connection_set_max_headers_size(k->evcon, UPSTREAM_MAX_HEADERS);
    evhttp_connection_set_closecb(k->evcon, conn_close_cb, k);
    k->out_cb = evbuffer_add_cb(bufferevent_get_output(bev), conn_out_cb, k);
    k->in_cb = evbuffer_add_cb(bufferevent_get_input(bev), conn_in_cb, k);
    if (!k->out_cb || !k->in_cb) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    k->state = CONN_CONNECTING;
    TAILQ_INSERT_TAIL(&u->conns, k, link);
    u->n_conns++;
    log_debug("upstream %s:%d: new connection %p to %s", u->host, u->port, (void *)k, k->addr);
    return k;
fail:
    if (k) conn_destroy(k);
    return NULL;
}

/* --- calls ------------------------------------------------------------------------------- */

static void call_set_state(struct upstream_call *c, enum call_state to) {
    if (c->state != to)
        log_debug("upstream call %p: %s -> %s", (void *)c, call_state_names[c->state],
                  call_state_names[to]);
    if (c->state == CALL_QUEUED) {
        TAILQ_REMOVE(&c->u->queue, c, qlink);
        c->u->n_queued--;
    }
    if (to == CALL_QUEUED) {
        TAILQ_INSERT_TAIL(&c->u->queue, c, qlink);
        c->u->n_queued++;
    }
    c->state = to;
}

static void attempt_clear(struct upstream_attempt *a) {
    if (!a) return;
    if (a->body) OPENSSL_cleanse(a->body, a->body_len);
    free(a->body);
    memset(a, 0, sizeof(*a));
}

static void call_destroy(struct upstream_call *c) {
    if (c->deadline) event_free(c->deadline);
    if (c->connect_timer) event_free(c->connect_timer);
    free(c->params);
    attempt_clear(c->att);
    free(c->att);
    free(c);
}

/* A call that ended goes back to u's pool, cleared but for its timers (never pending here:
 * call_finish removed them, and a call that failed in call_submit never added them) and its
 * attempt buffer; or is freed when the pool is full or the upstream is closing. */
static void call_free(struct upstream_call *c) {
    if (!c) return;
    struct upstream *u = c->u;
    if (u->closing || u->n_free_calls >= UPSTREAM_CALL_POOL_MAX || !c->deadline ||
        !c->connect_timer) {
        call_destroy(c);
        return;
    }
    struct event *deadline = c->deadline, *connect_timer = c->connect_timer;
    struct upstream_attempt *att = c->att;
    free(c->params);
    attempt_clear(att);
    memset(c, 0, sizeof(*c));
    c->u = u;
    c->deadline = deadline;
    c->connect_timer = connect_timer;
    c->att = att;
    c->next_free = u->free_calls;
    u->free_calls = c;
    u->n_free_calls++;
}

/* A cleared call: from u's pool, or a new one with its timers. NULL on OOM. */
static struct upstream_call *call_new(struct upstream *u) {
    struct upstream_call *c = u->free_calls;
    if (c) {
        u->free_calls = c->next_free;
        u->n_free_calls--;
        c->next_free = NULL;
        return c;
    }
    if (!(c = calloc(1, sizeof(*c)))) return NULL;
    c->u = u;
    c->deadline = evtimer_new(u->base, deadline_cb, c);
    c->connect_timer = evtimer_new(u->base, connect_timer_cb, c);
    if (!c->deadline || !c->connect_timer) {
        call_destroy(c);
        return NULL;
    }
    return c;
}

static void record_latency(struct upstream_stats *s, uint64_t us) {
    size_t i = 0;

    while (i + 1 < UPSTREAM_LATENCY_BUCKETS && us > upstream_latency_bounds_us[i]) i++;
    s->latency_buckets[i]++;
    s->latency_sum_us += us;
    s->latency_count++;
}

/* The one place a call ends: the user's callback runs, then the call is freed. breaker_success
 * is 1/0 for an admitted call's outcome. */
static void call_finish(struct upstream_call *c, struct upstream_result *r, int breaker_success) {
    struct upstream *u = c->u;
    struct conn *k = c->conn;

    event_del(c->deadline);
    event_del(c->connect_timer);
    if (k) {
        if (k->out_added != c->snap_out) c->sent_any = 1;
        k->call = NULL;
        c->conn = NULL;
        if (k->state != CONN_DEAD)
            conn_set_state(k, CONN_DEAD); /* a connection left mid-call is not reusable */
    }
    if (c->submitting) {
        /* evhttp failed synchronously inside upstream_call: deliver on the next loop turn */
        struct timeval zero = {0, 0};
        c->fast = *r;
        c->fast_success = breaker_success;
        call_set_state(c, CALL_FAILING_FAST);
        evtimer_add(c->deadline, &zero);
        return;
    }
    call_set_state(c, CALL_DONE);
    TAILQ_REMOVE(&u->calls, c, link);
    r->timed_out = !r->ok && c->timed_out;
    if (c->admitted) breaker_record(u->breaker, breaker_success, now_ms());
    r->attempts = c->attempts;
    r->latency_us = clock_mono_us() - c->start_us;
    if (!r->breaker_rejected) r->nothing_sent = !c->sent_any;
    if (!r->ok) u->stats.failures++;
    if (r->breaker_rejected)
        u->stats.breaker_rejections++;
    else
        record_latency(&u->stats, r->latency_us);
    /* A failed call at warn; when the upstream is down every call fails the same way, so the
     * repeats are counted and summarised (log_limited) rather than logged one by one. */
    if (!r->ok) {
        static struct log_limiter failures = LOG_LIMITER_INIT(10, 5000);
        log_limited(&failures, LOG_LEVEL_WARN,
                    "upstream %s:%d: call failed after %u attempt(s): %s", u->host, u->port,
                    c->attempts, r->error);
    }
    c->cb(r, c->arg);
    call_free(c);
}

static void call_fail(struct upstream_call *c, int breaker_success, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void call_fail(struct upstream_call *c, int breaker_success, const char *fmt, ...) {
    struct upstream_result r;
    va_list ap;

    memset(&r, 0, sizeof(r));
    va_start(ap, fmt);
    vsnprintf(c->errbuf, sizeof(c->errbuf), fmt, ap);
    va_end(ap);
    r.error = c->errbuf;
    call_finish(c, &r, breaker_success);
}

/* Completes the call from its deadline event on the next loop turn (never inside upstream_call). */
static void call_fail_soon(struct upstream_call *c, int breaker_rejected, const char *msg) {
    struct timeval zero = {0, 0};

    snprintf(c->errbuf, sizeof(c->errbuf), "%s", msg);
    memset(&c->fast, 0, sizeof(c->fast));
    c->fast.error = c->errbuf;
    c->fast.breaker_rejected = breaker_rejected;
    c->fast.nothing_sent = 1;
    c->fast_success = 0;
    call_set_state(c, CALL_FAILING_FAST);
    evtimer_add(c->deadline, &zero);
}

/* Bytes for the call's attempt wait to be read (in the socket, or over TLS read ahead by
 * OpenSSL) or parsed (in the bufferevent's input): deadline_cb's grace. */
static int call_reply_waiting(const struct upstream_call *c) {
    const struct conn *k = c->conn;
    SSL *ssl;

    if (!k || !k->bev) return 0;
    if (evbuffer_get_length(bufferevent_get_input(k->bev)) > 0) return 1;
    if (k->u->tls && (ssl = bufferevent_openssl_get_ssl(k->bev)) && SSL_has_pending(ssl)) return 1;
    return net_bytes_waiting(bufferevent_getfd(k->bev));
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg) {
    struct upstream_call *c = arg;

    if (c->state == CALL_FAILING_FAST) {
        struct upstream_result r = c->fast;
        call_finish(c, &r, c->fast_success);
        return;
    }
    /* Bytes of the reply wait on this attempt's connection, in the socket or read but not yet
     * parsed. When the process itself was late past the timeout (stopped, or not scheduled: a
     * VM pause, a debugger, swapping), the reply came in time and only this loop has not seen
     * it: libevent runs expired timers in the turn that first reads those bytes, or before
     * (epoll_wait returns EINTR to a stopped and continued process), and evhttp parses them in
     * a deferred callback queued behind the timer. Failing now would call such replies
     * timeouts, and the breaker would open on all the calls in flight. A few more turns let
     * evhttp read and parse them; a reply still incomplete then times out. */
    if (c->graced < UPSTREAM_DEADLINE_GRACE_TURNS && call_reply_waiting(c)) {
        struct timeval zero = {0, 0};
        c->graced++;
        evtimer_add(c->deadline, &zero);
        return;
    }
    c->timed_out = 1;
    call_fail(c, 0, "upstream timed out after %u ms", c->u->timeout_ms);
}

static unsigned remaining_ms(const struct upstream_call *c) {
    uint64_t spent = (clock_mono_us() - c->start_us) / 1000;

    return spent >= c->u->timeout_ms ? 0 : (unsigned)(c->u->timeout_ms - spent);
}

/* A failed attempt: retried on a fresh or idle connection when allowed, else the call fails. */
static void call_attempt_failed(struct upstream_call *c, int retriable, const char *msg) {
    struct upstream *u = c->u;

    if (c->conn) {
        struct conn *k = c->conn;
        c->conn = NULL;
        conn_set_state(k, CONN_DEAD);
    }
    event_del(c->connect_timer);
    if (retriable && c->attempts <= u->retries && remaining_ms(c) > 0) {
        log_debug("upstream call %p: attempt %u failed (%s); retrying", (void *)c, c->attempts,
                  msg);
        u->stats.retries++;
        c->timed_out = 0; /* the next attempt decides */
        call_start_attempt(c);
        return;
    }
    call_fail(c, 0, "%s", msg);
}

static void call_dial(struct upstream_call *c, const char *last_error);

/* k's address answered (the request went out on it): its failures are forgotten. */
static void conn_addr_ok(struct conn *k) {
    struct upstream *u = k->u;

    k->addr_ok = 1;
    if (upaddr_ok(&u->addrs, k->addr))
        log_info("upstream %s:%d: address %s answers again", u->host, u->port, k->addr);
}

/* The connect phase of c's attempt (TCP connect, TLS handshake) failed: nothing was sent, so
 * trying another address is safe. The address is held (upaddr_failed) and the attempt goes on
 * with the next address it has not dialled, while the call's timeout allows; when none is left
 * the attempt has failed, and may be retried as before. */
static void call_connect_failed(struct upstream_call *c, const char *msg) {
    struct upstream *u = c->u;
    struct conn *k = c->conn;

    if (k && !u->literal) {
        uint64_t hold = upaddr_failed(&u->addrs, k->addr, now_ms());
        u->stats.connect_failures++;
        log_limited(&u->addr_log, LOG_LEVEL_WARN,
                    "upstream %s:%d: address %s failed: %s; not used for %llu ms%s", u->host,
                    u->port, k->addr, msg, (unsigned long long)hold,
                    u->addrs.n > 1 ? " (the attempt goes on with the next address)" : "");
        resolve_soon(u); /* the name may point elsewhere now */
        if (u->addrs.n > 1 && remaining_ms(c) > 0) {
            c->conn = NULL;
            conn_set_state(k, CONN_DEAD);
            event_del(c->connect_timer);
            call_dial(c, msg);
            return;
        }
    }
    call_attempt_failed(c, 1, msg);
}

static void connect_timer_cb(evutil_socket_t fd, short what, void *arg) {
    struct upstream_call *c = arg;
    char msg[128];

    if (!c->conn || c->conn->out_added != c->snap_out) return; /* connected: the request went out */
    snprintf(msg, sizeof(msg), "upstream connect to %s:%d timed out after %u ms", c->u->host,
             c->u->port, c->u->connect_timeout_ms);
    c->timed_out = 1;
    call_connect_failed(c, msg);
}

static void call_got_reply(struct upstream_call *c, struct evhttp_request *req) {
    struct upstream *u = c->u;
    struct conn *k = c->conn;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    struct upstream_result r;
    struct reply_fields fields;
    int json, raw_ok;

    memset(&r, 0, sizeof(r));
    r.http_status = evhttp_request_get_response_code(req);
    r.body_len = len;
    r.body = len ? (const char *)evbuffer_pullup(in, -1) : NULL;
    json = r.body && reply_scan(r.body, len, &fields) == 0;
    if (json)
        r.fields = &fields;
    else /* only a reply that is not JSON passes its type on (upstream.h) */
        r.content_type = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
    /* a reply the caller said may be other than JSON (CaptchaQuery script=1: JavaScript) */
    raw_ok = !json && r.body && (c->flags & UPSTREAM_RAW_OK) && r.http_status >= 200 &&
             r.http_status < 300;
    c->sent_any = 1;
    if (!k->addr_ok) conn_addr_ok(k);
    k->replies++;
    /* the reply is complete: the connection goes back to the pool unless evhttp closed it */
    c->conn = NULL;
    k->call = NULL;
    if (k->state != CONN_DEAD) conn_set_state(k, k->retire ? CONN_DEAD : CONN_IDLE);
    /* not 2xx: a 1xx (or a bare "2") is no final answer either (found by tests/fuzz) */
    if (r.http_status < 200 || r.http_status >= 300) {
        snprintf(c->errbuf, sizeof(c->errbuf), "upstream answered HTTP %d", r.http_status);
        r.error = c->errbuf;
    } else if (!json && !raw_ok) {
        snprintf(c->errbuf, sizeof(c->errbuf), "%s",
                 len ? "upstream reply is not JSON" : "upstream reply is empty");
        r.error = c->errbuf;
    } else {
        r.ok = 1;
    }
    /* r.fields points into this frame: fine, as a reply never arrives inside upstream_call (the
     * one case where call_finish keeps r for later) */
    call_finish(c, &r, (json && r.http_status < 500) || raw_ok);
    if (json) reply_fields_cleanup(&fields);
    pump_queue(u);
}

/* errno-free description of an attempt that died before a reply was complete. */
static void call_got_error(struct upstream_call *c, enum evhttp_request_error error, int refused,
                           int saved_errno) {
    struct upstream *u = c->u;
    struct conn *k = c->conn;
    int sent = k->out_added != c->snap_out;
    int got_bytes = k->in_added != c->snap_in;
    unsigned long ssl_err = u->tls ? bufferevent_get_openssl_error(k->bev) : 0;
    char msg[256];

    if (sent) {
        c->sent_any = 1;
        if (!k->addr_ok) conn_addr_ok(k);
    }
    if (k->verify_error != X509_V_OK) {
        snprintf(msg, sizeof(msg), "upstream TLS certificate verification failed: %s",
                 X509_verify_cert_error_string(k->verify_error));
        call_attempt_failed(c, 0, msg);
    } else if (!sent) {
        if (ssl_err) {
            char e[160];
            ERR_error_string_n(ssl_err, e, sizeof(e));
            snprintf(msg, sizeof(msg), "upstream TLS handshake with %s:%d failed: %s", u->host,
                     u->port, e);
        } else if (refused || saved_errno == ECONNREFUSED) {
            snprintf(msg, sizeof(msg), "connection refused by upstream %s:%d", u->host, u->port);
        } else if (saved_errno == ECONNRESET) {
            snprintf(msg, sizeof(msg), "connection reset by upstream %s:%d during connect", u->host,
                     u->port);
        } else if (u->tls) {
            snprintf(msg, sizeof(msg),
                     "upstream %s:%d closed the connection during the TLS "
                     "handshake",
                     u->host, u->port);
        } else {
            snprintf(msg, sizeof(msg), "could not connect to upstream %s:%d%s%s", u->host, u->port,
                     saved_errno ? ": " : "", saved_errno ? strerror(saved_errno) : "");
        }
        ERR_clear_error();
        call_connect_failed(c, msg);
    } else if (!got_bytes && error == EVREQ_HTTP_EOF) {
        /* the request went out and nothing came back: retry only the stale keep-alive race */
        snprintf(msg, sizeof(msg), "upstream %s the connection before replying",
                 saved_errno == ECONNRESET ? "reset" : "closed");
        call_attempt_failed(c, k->replies > 0, msg);
    } else if (error == EVREQ_HTTP_TIMEOUT) {
        call_attempt_failed(c, 0, "upstream stopped sending mid-reply");
    } else if (error == EVREQ_HTTP_DATA_TOO_LONG) {
        snprintf(msg, sizeof(msg), "upstream reply is malformed or larger than %d bytes",
                 UPSTREAM_MAX_BODY);
        call_attempt_failed(c, 0, msg);
    } else if (error == EVREQ_HTTP_INVALID_HEADER) {
        call_attempt_failed(c, 0, "upstream reply has an invalid header");
    } else {
        call_attempt_failed(c, 0,
                            got_bytes ? "upstream closed the connection mid-reply"
                                      : "upstream connection failed before replying");
    }
}

/* evhttp: the error kind comes first (evhttp_connection_fail_), then the request callback. */
static void request_error_cb(enum evhttp_request_error error, void *arg) {
    struct conn *k = arg;
    int saved_errno = errno;
    struct upstream_call *c = k->call;

    if (!c || error == EVREQ_HTTP_REQUEST_CANCEL) return;
    call_got_error(c, error, 0, saved_errno);
}

/* Over TLS the output buffer holds plaintext, which bufferevent_openssl encrypts a buffer chain
 * at a time: evhttp's request line and headers in two chains made two TLS records and two
 * writes. Made one chain here, the request goes out as one record in one write, by the same
 * SSL_write libevent's do_write would make on the next loop turn (and then an epoll_ctl to watch
 * for writability, another to stop). Only on an idle connection whose output held nothing
 * before this request (conn_write_now runs for CONN_BUSY, after a completed reply), so no
 * earlier SSL_write waits to be retried. If OpenSSL wants to retry (the socket is full, or it
 * must read first), the bytes stay at the head of the buffer, unmoved: libevent's next
 * SSL_write offers the same bytes, as OpenSSL requires, and handles what follows: it offers at
 * most its max_single_write (16384 by default), so a larger request is left to it. Returns 0
 * when the whole request went out. */
static int conn_tls_write_now(struct conn *k, struct evbuffer *out) {
    SSL *ssl = bufferevent_openssl_get_ssl(k->bev);
    size_t len = evbuffer_get_length(out);
    unsigned char *data;
    int n;

    data = evbuffer_pullup(out, -1); /* NULL on OOM: the chains are then sent as they are */
    if (!ssl || !data || len > UPSTREAM_TLS_WRITE_NOW_MAX || !SSL_is_init_finished(ssl)) return -1;
    ERR_clear_error();
    n = SSL_write(ssl, data, (int)len);
    if (n <= 0) {
        /* retried, or the error reported, by bufferevent_openssl's own write */
        ERR_clear_error();
        return -1;
    }
    evbuffer_drain(out, (size_t)n);
    return (size_t)n == len ? 0 : -1;
}

/* On an established connection, writes the request evhttp just queued at once instead of on the
 * next loop turn, then runs evhttp's write-done callback, which turns the connection to reading.
 * The bufferevent's write event, enabled and disabled within this turn, never reaches epoll, and
 * the request waits for no extra loop turn. Whatever the socket does not take (or an error) is
 * left to the bufferevent, which reports it as before. */
static void conn_write_now(struct conn *k) {
    struct evbuffer *out = bufferevent_get_output(k->bev);
    evutil_socket_t fd = bufferevent_getfd(k->bev);
    bufferevent_data_cb write_cb = NULL;
    void *cb_arg = NULL;
    int written;

    if (fd < 0 || evbuffer_get_length(out) == 0) return;
    if (k->u->tls) {
        if (conn_tls_write_now(k, out) != 0) return;
    } else {
        /* A socket bufferevent keeps its output's start frozen except inside its own write;
         * this is that write, done early. */
        evbuffer_unfreeze(out, 1);
        written = evbuffer_write(out, fd);
        evbuffer_freeze(out, 1);
        if (written <= 0 || evbuffer_get_length(out) > 0) return;
    }
    bufferevent_getcb(k->bev, NULL, &write_cb, NULL, &cb_arg);
    if (write_cb) write_cb(k->bev, cb_arg);
    conn_tls_check_pending(k);
}

static void request_done_cb(struct evhttp_request *req, void *arg) {
    struct conn *k = arg;
    struct upstream_call *c = k->call;

    if (!c) return; /* already handled by request_error_cb, or the call left */
    if (req && evhttp_request_get_response_code(req) > 0) {
        call_got_reply(c, req);
        return;
    }
    /* evhttp's connect failure path: no error callback, no status (connection refused) */
    call_got_error(c, EVREQ_HTTP_EOF, 1, errno);
}

/* path?params in u's reusable buffer (evhttp copies the target); NULL on OOM. */
static const char *get_target(struct upstream *u, const char *params) {
    size_t path_len = strlen(u->path), params_len = strlen(params);
    size_t n = path_len + 1 + params_len + 1;
    if (n > u->uri_cap) {
        char *grown = realloc(u->uri, n);
        if (!grown) return NULL;
        u->uri = grown;
        u->uri_cap = n;
    }
    char *o = (char *)memcpy(u->uri, u->path, path_len) + path_len;
    if (params_len) *o++ = '?';
    memcpy(o, params, params_len + 1);
    return u->uri;
}

static int call_send(struct upstream_call *c, struct conn *k) {
    struct upstream *u = c->u;
    struct evhttp_request *req = evhttp_request_new(request_done_cb, k);
    struct evkeyvalq *h;
    const char *uri = NULL;
    int rc = -1;

    if (!req) goto out;
    evhttp_request_set_error_cb(req, request_error_cb);
    h = evhttp_request_get_output_headers(req);
    /* HTTP/1.1 keeps the connection alive without a Connection header; each header costs evhttp
     * a printf and three allocations per request. */
    if (evhttp_add_header(h, "Host", u->sign_host) ||
        evhttp_add_header(h, "User-Agent", u->user_agent))
        goto out;
    if (c->att) {
        for (size_t i = 0; i < c->att->n_headers; i++)
            if (evhttp_add_header(h, c->att->name[i], c->att->value[i])) goto out;
        if (evhttp_add_header(h, "Content-Type", c->att->content_type) ||
            evbuffer_add(evhttp_request_get_output_buffer(req), c->att->body, c->att->body_len))
            goto out;
        uri = u->path;
    } else if (c->post) {
        if (evhttp_add_header(h, "Content-Type", "application/x-www-form-urlencoded") ||
            evbuffer_add(evhttp_request_get_output_buffer(req), c->params, strlen(c->params)))
            goto out;
        uri = u->path;
    } else {
        uri = get_target(u, c->params);
    }
    if (!uri) goto out;
    k->call = c;
    c->conn = k;
    c->snap_out = k->out_added;
    c->snap_in = k->in_added;
    /* evhttp owns req from here, even when this fails (it frees it on its strdup failure). A
     * connect that fails at once runs request_done_cb before this returns. */
    rc = evhttp_make_request(k->evcon, req, c->post ? EVHTTP_REQ_POST : EVHTTP_REQ_GET, uri);
    req = NULL;
    if (rc != 0) {
        k->call = NULL;
        c->conn = NULL;
    } else {
        conn_nodelay(k);
        if (k->state == CONN_BUSY) conn_write_now(k);
    }
out:
    if (req) evhttp_request_free(req);
    return rc;
}

/* One attempt: an idle connection, else a new one below the cap, else the queue. */
static void call_start_attempt(struct upstream_call *c) {
    struct upstream *u = c->u;
    struct conn *k;

    if (u->resolve_stale) resolve_soon(u);
    k = u->n_idle ? TAILQ_FIRST(&u->conns) : NULL; /* idle ones are at the head */
    if (!k && u->addrs.n == 0) {
        /* a host name with no address yet: the call waits for the lookup (within its timeout),
         * or fails now when the last lookup failed a moment ago */
        if (u->resolve_err[0] && !u->resolving &&
            now_ms() - u->resolve_done_ms < UPSTREAM_RESOLVE_MIN_MS) {
            call_set_state(c, CALL_ACTIVE);
            call_fail(c, 0, "%s", u->resolve_err);
            return;
        }
        call_set_state(c, CALL_QUEUED);
        resolve_soon(u);
        return;
    }
    if (!k && u->n_conns >= u->max_connections) {
        call_set_state(c, CALL_QUEUED);
        return;
    }
    call_set_state(c, CALL_ACTIVE);
    c->attempts++;
    if (c->sign) {
        char *fresh = c->sign(c->arg);
        if (!fresh) {
            call_attempt_failed(c, 0, "upstream request could not be signed (out of memory)");
            return;
        }
        free(c->params);
        c->params = fresh;
    }
    if (c->build) {
        if (!c->att) c->att = calloc(1, sizeof(*c->att));
        attempt_clear(c->att);
        if (!c->att || c->build(c->arg, c->att) != 0 || !c->att->body || !c->att->content_type) {
            call_attempt_failed(c, 0, "upstream request could not be signed (out of memory)");
            return;
        }
    }
    if (k) {
        conn_set_state(k, CONN_BUSY);
        if (call_send(c, k) == 0) return; /* c may already be finished: do not touch it */
        conn_set_state(k, CONN_DEAD);
        call_attempt_failed(c, 0, "upstream request could not be built (out of memory)");
        return;
    }
    c->tried = 0;
    c->tried_gen = u->addrs_gen;
    call_dial(c, NULL);
}

/* c's attempt on a new connection, to the next address (upaddr_pick) it has not dialled;
 * last_error is the failure of the one before, the attempt's result when none is left. */
static void call_dial(struct upstream_call *c, const char *last_error) {
    struct upstream *u = c->u;
    struct conn *k;
    char err[160];
    int i;

    if (c->tried_gen != u->addrs_gen) { /* the addresses changed: the old indexes mean nothing */
        c->tried = 0;
        c->tried_gen = u->addrs_gen;
    }
    i = upaddr_pick(&u->addrs, now_ms(), c->tried);
    if (i < 0) {
        call_attempt_failed(c, 1, last_error ? last_error : "upstream has no address");
        return;
    }
    c->tried |= 1u << i;
    c->timed_out = 0; /* this address decides */
    k = conn_new(u, u->addrs.a[i].text, err, sizeof(err));
    if (!k) {
        call_attempt_failed(c, 0, err);
        return;
    }
    {
        struct timeval tv = ms_tv(u->connect_timeout_ms);
        evtimer_add(c->connect_timer, &tv);
    }
    /* after a successful call_send, c may already be finished: do not touch it */
    if (call_send(c, k) != 0) {
        conn_set_state(k, CONN_DEAD);
        snprintf(err, sizeof(err), "could not connect to upstream %s:%d", u->host, u->port);
        call_attempt_failed(c, 0, err);
    }
}

static void pump_queue(struct upstream *u) {
    struct upstream_call *c;
    unsigned idle;

    for (;;) {
        c = TAILQ_FIRST(&u->queue);
        if (!c) return;
        idle = u->n_idle;
        /* no address yet: the lookup's end pumps the queue */
        if (!idle && (u->n_conns >= u->max_connections || u->addrs.n == 0)) return;
        call_start_attempt(c);
    }
}

/* --- the host's addresses ---------------------------------------------------------------- */

/* A lookup in flight; it outlives u when upstream_free runs first (u is then NULL). */
struct resolve_req {
    struct upstream *u;
};

static void resolve_schedule(struct upstream *u, unsigned ms) {
    struct timeval tv = ms_tv(ms);

    if (evtimer_add(u->resolve_ev, &tv) == 0) u->resolve_at_ms = now_ms() + ms;
}

/* A lookup soon (a connect failed, or a call found no address): at once when the last one ended
 * UPSTREAM_RESOLVE_MIN_MS ago or more, else then; never later than one already planned. */
static void resolve_soon(struct upstream *u) {
    uint64_t now = now_ms(), at;

    if (u->literal || u->resolving || !u->resolve_ev) return;
    at = u->resolve_done_ms + UPSTREAM_RESOLVE_MIN_MS;
    if (at < now) at = now;
    if (at < u->resolve_at_ms) resolve_schedule(u, (unsigned)(at - now));
}

/* The addresses changed: a connection to one no longer listed is closed now when idle, else when
 * its call ends, so a keep-alive pool that is never idle still follows the new answer. */
static void conns_retire(struct upstream *u) {
    struct conn *k, *next;

    for (k = TAILQ_FIRST(&u->conns); k; k = next) {
        next = TAILQ_NEXT(k, link);
        if (upaddr_find(&u->addrs, k->addr) >= 0) continue;
        if (k->state == CONN_IDLE)
            conn_set_state(k, CONN_DEAD);
        else
            k->retire = 1;
    }
}

/* "a, b, c" of u's addresses into buf. */
static void addrs_text(const struct upstream *u, char *buf, size_t len) {
    size_t o = 0;

    buf[0] = '\0';
    for (unsigned i = 0; i < u->addrs.n && o < len; i++) {
        int n = snprintf(buf + o, len - o, "%s%s", i ? ", " : "", u->addrs.a[i].text);
        if (n < 0) break;
        o += (size_t)n;
    }
}

static void resolve_cb(int err, struct evutil_addrinfo *ai, void *arg) {
    struct resolve_req *r = arg;
    struct upstream *u = r->u;
    char texts[UPADDR_MAX][UPADDR_TEXT];
    const char *list[UPADDR_MAX];
    unsigned n = 0, next;

    free(r);
    if (!u) { /* upstream_free ran first */
        if (ai) evutil_freeaddrinfo(ai);
        return;
    }
    u->resolving = NULL;
    u->resolve_done_ms = now_ms();
    for (struct evutil_addrinfo *p = ai; !err && p && n < UPADDR_MAX; p = p->ai_next) {
        const void *a = NULL;
        if (p->ai_family == AF_INET)
            a = &((const struct sockaddr_in *)(const void *)p->ai_addr)->sin_addr;
        else if (p->ai_family == AF_INET6)
            a = &((const struct sockaddr_in6 *)(const void *)p->ai_addr)->sin6_addr;
        if (a && inet_ntop(p->ai_family, a, texts[n], sizeof(texts[n]))) {
            list[n] = texts[n];
            n++;
        }
    }
    if (ai) evutil_freeaddrinfo(ai);
    if (n > 0) {
        char was[512], now[512];
        int first = u->addrs.n == 0;
        addrs_text(u, was, sizeof(was));
        if (upaddr_set(&u->addrs, list, n)) {
            u->addrs_gen++;
            conns_retire(u);
            addrs_text(u, now, sizeof(now));
            if (first)
                log_info("upstream %s:%d: %s resolves to %s", u->host, u->port, u->host, now);
            else
                log_info("upstream %s:%d: %s now resolves to %s (was %s)", u->host, u->port,
                         u->host, now, was);
        } else {
            log_debug("upstream %s:%d: %s still resolves to %s", u->host, u->port, u->host, was);
        }
        if (u->resolve_err[0])
            log_limited_ok(&u->dns_log, LOG_LEVEL_INFO, "upstream %s:%d: %s resolves again",
                           u->host, u->port, u->host);
        u->resolve_err[0] = '\0';
        next = u->resolve_interval_ms;
    } else {
        u->stats.dns_failures++;
        snprintf(u->resolve_err, sizeof(u->resolve_err), "could not resolve upstream host %s: %s",
                 u->host, err ? evutil_gai_strerror(err) : "no IPv4 or IPv6 address");
        if (u->addrs.n)
            log_limited(&u->dns_log, LOG_LEVEL_WARN,
                        "upstream %s:%d: %s; keeping the %u address(es) known", u->host, u->port,
                        u->resolve_err, u->addrs.n);
        else
            log_limited(&u->dns_log, LOG_LEVEL_ERROR, "upstream %s:%d: %s", u->host, u->port,
                        u->resolve_err);
        next = u->resolve_interval_ms < UPSTREAM_RESOLVE_RETRY_MS ? u->resolve_interval_ms
                                                                  : UPSTREAM_RESOLVE_RETRY_MS;
    }
    resolve_schedule(u, next);
    if (u->addrs.n == 0) {
        /* nothing to connect to: the calls that waited for this lookup fail with its error */
        struct upstream_call *c;
        while ((c = TAILQ_FIRST(&u->queue)) != NULL) call_fail(c, 0, "%s", u->resolve_err);
        return;
    }
    pump_queue(u);
}

/* resolve_ev: a lookup of u's host name, A and AAAA (evdns: /etc/hosts, then the nameservers),
 * never blocking the loop. Its answer may come inside evdns_getaddrinfo (a hosts file entry). */
static void resolve_timer_cb(evutil_socket_t fd, short what, void *arg) {
    struct upstream *u = arg;
    struct evutil_addrinfo hints;
    struct resolve_req *r;

    u->resolve_at_ms = UINT64_MAX;
    if (u->resolving) return;
    if (u->stats.requests == u->lookup_requests && u->resolve_done_ms) {
        /* no call since the last lookup: none until the next call (an upstream not in use, as
         * the 3.0 one of a gateway serving 2.0 only, is not looked up every interval) */
        u->resolve_stale = 1;
        return;
    }
    u->resolve_stale = 0;
    u->lookup_requests = u->stats.requests;
    if (!(r = calloc(1, sizeof(*r)))) {
        resolve_schedule(u, UPSTREAM_RESOLVE_MIN_MS);
        return;
    }
    r->u = u;
    u->resolving = r;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    log_debug("upstream %s:%d: looking up %s", u->host, u->port, u->host);
    (void)evdns_getaddrinfo(u->dns, u->host, NULL, &hints, resolve_cb, r);
}

/* The nameservers of upstream.resolver ("ip[:port]" separated by spaces or commas); 0 or -1 and
 * err. */
static int resolver_add(struct upstream *u, const char *resolver, char *err, size_t errlen) {
    const char *p = resolver;
    unsigned added = 0;

    while (*p) {
        char tok[NET_HOST_MAX + 8];
        size_t len = strcspn(p, " ,\t");
        if (len == 0) {
            p++;
            continue;
        }
        if (len >= sizeof(tok)) {
            snprintf(err, errlen, "upstream.resolver: a nameserver address is too long");
            return -1;
        }
        memcpy(tok, p, len);
        tok[len] = '\0';
        if (evdns_base_nameserver_ip_add(u->dns, tok) != 0) {
            snprintf(err, errlen, "upstream.resolver: %s is not a nameserver address", tok);
            return -1;
        }
        added++;
        p += len;
    }
    if (!added) {
        snprintf(err, errlen, "upstream.resolver names no nameserver");
        return -1;
    }
    return 0;
}

/* --- public ------------------------------------------------------------------------------ */

struct upstream *upstream_new(struct event_base *base, const struct upstream_options *o, char *err,
                              size_t errlen) {
    struct upstream *u = NULL;
    char ua[64];

    if (!base || !o || !o->host || !o->host[0] || o->port <= 0 || o->port > 65535 || !o->path ||
        o->path[0] != '/') {
        snprintf(err, errlen,
                 "upstream needs a host, a port in 1..65535 and a path starting with /");
        goto fail;
    }
    if (o->tls && !o->ssl_ctx) {
        snprintf(err, errlen, "upstream over TLS needs an SSL_CTX");
        goto fail;
    }
    u = calloc(1, sizeof(*u));
    if (!u) goto oom;
    u->base = base;
    TAILQ_INIT(&u->conns);
    TAILQ_INIT(&u->dead);
    TAILQ_INIT(&u->calls);
    TAILQ_INIT(&u->queue);
    u->tls = o->tls;
    u->port = o->port;
    u->ssl_ctx = o->ssl_ctx;
    u->verify_tls = o->verify_tls;
    u->connect_timeout_ms =
        o->connect_timeout_ms ? o->connect_timeout_ms : UPSTREAM_DEFAULT_CONNECT_MS;
    u->timeout_ms = o->timeout_ms ? o->timeout_ms : UPSTREAM_DEFAULT_TIMEOUT_MS;
    u->retries = o->retries;
    u->max_connections = o->max_connections ? o->max_connections : UPSTREAM_DEFAULT_MAX_CONNECTIONS;
    u->max_queued = o->max_queued ? o->max_queued : UPSTREAM_DEFAULT_MAX_QUEUED;
    if (o->breaker) {
        u->breaker = o->breaker;
    } else {
        breaker_init(&u->own_breaker,
                     o->breaker_failures ? o->breaker_failures : UPSTREAM_DEFAULT_BREAKER_FAILURES,
                     o->breaker_open_ms ? o->breaker_open_ms : UPSTREAM_DEFAULT_BREAKER_OPEN_MS);
        u->breaker = &u->own_breaker;
    }
    snprintf(ua, sizeof(ua), "capgate/%s", version_string());
    u->host = dup_str(o->host);
    u->path = dup_str(o->path);
    u->sign_host = dup_str(o->sign_host && o->sign_host[0] ? o->sign_host : o->host);
    u->tls_name = dup_str(o->tls_name && o->tls_name[0] ? o->tls_name : o->host);
    u->user_agent = dup_str(ua);
    if (!u->host || !u->path || !u->sign_host || !u->tls_name || !u->user_agent) goto oom;
    u->reap_ev = event_new(base, -1, 0, reap_cb, u);
    if (!u->reap_ev) goto oom;
    u->resolve_interval_ms =
        o->resolve_interval_ms ? o->resolve_interval_ms : UPSTREAM_DEFAULT_RESOLVE_INTERVAL_MS;
    u->resolve_at_ms = UINT64_MAX;
    log_limiter_init(&u->dns_log, 60, 5000);
    log_limiter_init(&u->addr_log, 10, 5000);
    u->limiters = 1;
    u->literal = net_is_ip_literal(u->host);
    if (u->literal) {
        const char *one = u->host;
        upaddr_set(&u->addrs, &one, 1);
    } else {
        /* upstream.resolver: those nameservers only (no /etc/hosts, no search domains); else
         * the system's (/etc/resolv.conf and /etc/hosts) */
        int own = o->resolver && o->resolver[0];
        u->dns = evdns_base_new(base, (own ? 0 : EVDNS_BASE_INITIALIZE_NAMESERVERS) |
                                          EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        if (!u->dns) {
            snprintf(err, errlen, "upstream: could not set up the DNS resolver for %s", u->host);
            goto fail;
        }
        if (own && resolver_add(u, o->resolver, err, errlen) != 0) goto fail;
        u->resolve_ev = evtimer_new(base, resolve_timer_cb, u);
        if (!u->resolve_ev) goto oom;
        u->resolve_stale = 1; /* the first lookup comes with the first call */
    }
    return u;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    upstream_free(u);
    return NULL;
}

void upstream_free(struct upstream *u) {
    struct upstream_call *c;
    struct conn *k;

    if (!u) return;
    u->closing = 1;
    while ((c = TAILQ_FIRST(&u->calls)) != NULL) {
        c->submitting = 0;
        if (c->state == CALL_FAILING_FAST) {
            struct upstream_result r = c->fast;
            call_finish(c, &r, c->fast_success);
        } else {
            c->admitted = 0; /* shutting down says nothing about upstream's health */
            call_fail(c, 0, "upstream client shut down");
        }
    }
    while ((k = TAILQ_FIRST(&u->conns)) != NULL) conn_set_state(k, CONN_DEAD);
    while ((k = TAILQ_FIRST(&u->dead)) != NULL) {
        TAILQ_REMOVE(&u->dead, k, link);
        conn_destroy(k);
    }
    while (u->free_calls) {
        c = u->free_calls;
        u->free_calls = c->next_free;
        call_destroy(c);
    }
    free(u->uri);
    if (u->reap_ev) event_free(u->reap_ev);
    if (u->resolve_ev) event_free(u->resolve_ev);
    /* a lookup in flight reports to nobody: evdns_base_free fails it (DNS_ERR_SHUTDOWN, a
     * deferred callback that frees the request and does not touch the freed evdns base) */
    if (u->resolving) u->resolving->u = NULL;
    if (u->dns) evdns_base_free(u->dns, 1);
    free(u->host);
    free(u->path);
    free(u->sign_host);
    free(u->tls_name);
    free(u->user_agent);
    if (u->limiters) {
        log_limiter_destroy(&u->dns_log);
        log_limiter_destroy(&u->addr_log);
    }
    SSL_SESSION_free(u->tls_session);
    free(u);
}

static int call_submit(struct upstream *u, const char *method, const char *encoded_params,
                       upstream_sign_fn sign, upstream_build_fn build, unsigned flags,
                       upstream_done_fn cb, void *arg) {
    struct upstream_call *c = NULL;
    struct timeval tv;
    uint64_t now;
    int post;

    if (!u || !method || !cb || u->closing) return -1;
    if (strcmp(method, "POST") == 0)
        post = 1;
    else if (strcmp(method, "GET") == 0)
        post = 0;
    else
        return -1;
    if (!(c = call_new(u))) return -1;
    c->state = CALL_DONE;
    c->post = post;
    c->flags = flags;
    c->cb = cb;
    c->arg = arg;
    c->sign = sign;
    c->build = build;
    c->start_us = clock_mono_us();
    /* a signed or built call makes its parameters for each attempt */
    if (!sign && !build && !(c->params = dup_str(encoded_params ? encoded_params : ""))) goto fail;
    TAILQ_INSERT_TAIL(&u->calls, c, link);
    u->stats.requests++;

    if (!u->n_idle && u->n_conns >= u->max_connections && u->n_queued >= u->max_queued) {
        call_fail_soon(c, 0, "upstream queue is full");
        return 0;
    }
    now = now_ms();
    if (!breaker_allow(u->breaker, now)) {
        char msg[128];
        snprintf(msg, sizeof(msg),
                 "circuit breaker open after %u consecutive failures; "
                 "retrying in %llu ms",
                 breaker_opened_after(u->breaker),
                 (unsigned long long)breaker_retry_in_ms(u->breaker, now));
        call_fail_soon(c, 1, msg);
        return 0;
    }
    c->admitted = 1;
    tv = ms_tv(u->timeout_ms);
    evtimer_add(c->deadline, &tv);
    /* c stays alive through this: a synchronous failure is turned into a deferred result */
    c->submitting = 1;
    call_start_attempt(c);
    c->submitting = 0;
    return 0;
fail:
    call_free(c);
    return -1;
}

int upstream_call(struct upstream *u, const char *method, const char *encoded_params,
                  upstream_done_fn cb, void *arg) {
    return call_submit(u, method, encoded_params, NULL, NULL, 0, cb, arg);
}

int upstream_call_flags(struct upstream *u, const char *method, const char *encoded_params,
                        unsigned flags, upstream_done_fn cb, void *arg) {
    return call_submit(u, method, encoded_params, NULL, NULL, flags, cb, arg);
}

int upstream_call_signed(struct upstream *u, const char *method, upstream_sign_fn sign,
                         unsigned flags, upstream_done_fn cb, void *arg) {
    if (!sign) return -1;
    return call_submit(u, method, NULL, sign, NULL, flags, cb, arg);
}

int upstream_call_built(struct upstream *u, upstream_build_fn build, unsigned flags,
                        upstream_done_fn cb, void *arg) {
    if (!build) return -1;
    return call_submit(u, "POST", NULL, NULL, build, flags, cb, arg);
}

unsigned upstream_pooled_calls(const struct upstream *u) {
    return u->n_free_calls;
}

void upstream_get_stats(const struct upstream *u, struct upstream_stats *out) {
    *out = u->stats;
    out->breaker = breaker_state(u->breaker);
    out->open_connections = u->n_conns;
    out->idle_connections = u->n_idle;
    out->addresses = u->addrs.n;
}

/* ---- the request sent upstream ---- */

int upstream_params(const struct params *in, const struct config_upstream *up, uint64_t now_s,
                    uint64_t nonce, struct params *out) {
    params_init(out);
    return upstream_params_into(in, up, now_s, nonce, out);
}

int upstream_params_into(const struct params *in, const struct config_upstream *up, uint64_t now_s,
                         uint64_t nonce, struct params *out) {
    char num[NUM_U64_DIGITS + 1];
    if (params_assign_without(out, in, validate_public_params) != 0) return -1;
    if (params_adds(out, "SecretId", up->secret_id) != 0) return -1;
    *num_put_u64(num, now_s) = '\0';
    if (params_adds(out, "Timestamp", num) != 0) return -1;
    *num_put_u64(num, nonce) = '\0';
    if (params_adds(out, "Nonce", num) != 0) return -1;
    if (up->region && *up->region && params_adds(out, "Region", up->region) != 0) return -1;
    if (params_adds(out, "SignatureMethod", sign_method_name(up->signature_method)) != 0) return -1;
    const char *method = up->post ? "POST" : "GET";
    /* up->sign_key: made at config load; a config built by hand (tests) may only have the key */
    if (up->sign_key) return sign_params_key(out, method, up->sign_host, up->path, up->sign_key);
    return sign_params(out, method, up->sign_host, up->path, up->secret_key);
}
