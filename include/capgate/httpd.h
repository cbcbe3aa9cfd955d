/* httpd.h: a small HTTP/1.1 server on libevent bufferevents (plain or OpenSSL), written for the
 * API's needs: every error it finds itself (bad request line, oversized URI, header flood, large
 * body, slow client) reaches the program's handler as a request with error_status set, so the
 * program answers it in its own JSON shape. Keep-alive, Content-Length and chunked bodies,
 * pipelined requests handled one at a time in order. One httpd per event_base (per worker);
 * nothing in it takes a lock. */
#ifndef CAPGATE_HTTPD_H
#define CAPGATE_HTTPD_H
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>

struct event_base;
struct httpd;
struct tls_server;

struct httpd_limits {
    size_t max_uri;             /* request-target bytes (default 8192) */
    size_t max_header_bytes;    /* all header lines together (default 16384) */
    unsigned max_headers;       /* header count (default 100) */
    size_t max_body;            /* body bytes after de-chunking (default 65536) */
    unsigned header_timeout_ms; /* from first byte to end of headers (default 10000) */
    unsigned body_timeout_ms;   /* from end of headers to end of body (default 10000) */
    unsigned idle_timeout_ms;   /* keep-alive idle before close (default 60000) */
    unsigned write_timeout_ms;  /* a reply not taken by the peer (default 10000) */
    /* Open connections at once (0: no limit, the default). A connection past it is accepted
     * and closed at once, as nginx does past worker_connections: the client learns now, not
     * after its own timeout in the listen queue. httpd_set_budget shares one count. */
    size_t max_connections;
};
void httpd_limits_default(struct httpd_limits *lim);

/* One max_connections for several servers (the workers of a process share its descriptor
 * table): servers given the same budget count their connections together, from any thread. */
struct httpd_budget {
    atomic_size_t open;
    size_t max; /* 0: no limit */
};
void httpd_budget_init(struct httpd_budget *b, size_t max);
/* The default max_connections: the soft RLIMIT_NOFILE minus reserve (the descriptors the
 * program needs besides client connections), or half the limit when that would leave less than
 * half; at least 1. *limit gets the RLIMIT_NOFILE it used (NULL: not wanted). */
size_t httpd_default_max_connections(size_t reserve, size_t *limit);

/* When accept() fails for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) the
 * server stops accepting for this long, then tries again, as nginx does: existing connections
 * are served meanwhile, one warning says the episode began and one line says it ended. */
#define HTTPD_ACCEPT_PAUSE_MS 500

struct httpd_header {
    const char *name;  /* as sent */
    const char *value; /* leading/trailing spaces trimmed */
};

/* One request. Everything here is borrowed and valid until the request ends (httpd_reply*, or
 * the cancel callback returns). Handlers treat it as read-only. */
struct httpd_req {
    const char *method;       /* "GET", "POST", ... ("" when the request line was unreadable) */
    const char *target;       /* request-target as sent ("/v2/index.php?a=1") */
    const char *path;         /* target up to '?', not decoded */
    const char *query;        /* after '?', not decoded; NULL when there is none */
    const char *host;         /* Host header, or NULL */
    const char *content_type; /* Content-Type header, or NULL */
    const char *body;         /* NUL-terminated copy of the body ("" when none) */
    size_t body_len;
    const struct httpd_header *headers;
    size_t header_count;
    int http_minor;      /* 0 for HTTP/1.0, 1 for HTTP/1.1 */
    int is_tls;          /* arrived on a TLS listener */
    const char *peer_ip; /* "127.0.0.1" / "::1" */
    uint64_t start_us;   /* clock_mono_us() when the first byte arrived */
    /* 0 for a well-formed request. Otherwise the HTTP status that fits the error the server found
     * (400 bad framing or request line, 408 header/body timeout, 413 body too large, 414 URI too
     * long, 431 headers too large or too many, 501 unsupported Transfer-Encoding, 505 version),
     * with error_message saying what was wrong in one sentence ("request body is 102400 bytes;
     * the limit is 65536"). The fields above hold what could be read. The program must still
     * reply; the connection is closed after that reply. */
    int error_status;
    const char *error_message;
    void *user; /* free for the handler */
};

/* Called once per request, on the worker's thread. The handler must end the request exactly
 * once, now or later, with httpd_reply() (or httpd_reset()/httpd_drop()/a stall until cancel). */
typedef void (*httpd_handler_fn)(struct httpd_req *req, void *arg);
/* Called at most once if the connection dies (reset, write failed, server freed) before the
 * request ended; the request is freed when it returns, and must not be replied to. The peer's
 * EOF alone does not end a request: a client that sent its request and then shut down its
 * sending side (shutdown(SHUT_WR)) still gets the reply, and TCP cannot tell that from a full
 * close until the reply is written. */
typedef void (*httpd_cancel_fn)(struct httpd_req *req, void *arg);

/* New server on base; handler and arg are borrowed. NULL on OOM. */
struct httpd *httpd_new(struct event_base *base, const struct httpd_limits *lim,
                        httpd_handler_fn handler, void *arg);
/* Listens on host:port (port 0 picks one); tls borrowed (NULL for plain HTTP; the caller keeps
 * it alive; tls_server_reload on it changes the certificate of later handshakes); reuseport
 * sets SO_REUSEPORT so several workers share the port. Returns the bound port, or -1 with err
 * set. May be called more than once (HTTP and HTTPS listeners). */
int httpd_listen(struct httpd *h, const char *host, int port, struct tls_server *tls, int reuseport,
                 char *err, size_t errlen);
/* Counts this server's connections in b (borrowed, it outlives the server) instead of its own
 * max_connections; before the first connection. */
void httpd_set_budget(struct httpd *h, struct httpd_budget *b);
/* Stops accepting and closes idle keep-alive connections; in-flight requests finish and their
 * connections close after the reply. */
void httpd_stop_accepting(struct httpd *h);
size_t httpd_inflight(const struct httpd *h);    /* requests not yet ended */
size_t httpd_connections(const struct httpd *h); /* open connections */
/* Connections closed at accept because max_connections were open, and accept() failures. */
uint64_t httpd_refused(const struct httpd *h);
uint64_t httpd_accept_errors(const struct httpd *h);
/* Frees everything, closing every connection (pending requests get their cancel callback). */
void httpd_free(struct httpd *h);

/* Response headers, before the reply. Date, Content-Length, Content-Type and Connection are
 * written by the server. 0/-1. */
int httpd_add_header(struct httpd_req *req, const char *name, const char *value);
void httpd_set_cancel(struct httpd_req *req, httpd_cancel_fn cb, void *arg);
/* The peer's EOF ends this request too (cancel callback, connection closed): for a request
 * that would never be answered anyway (the mock's stall), so it does not outlive its client. */
void httpd_cancel_on_eof(struct httpd_req *req);
/* Ends the request: status line, headers, body (copied). After it req is gone. */
void httpd_reply(struct httpd_req *req, int status, const char *content_type, const char *body,
                 size_t body_len);
/* Fault injection (the mock): end the request by closing the connection with a TCP RST
 * (SO_LINGER 0), or by closing it cleanly without any answer. After either, req is gone. */
void httpd_reset(struct httpd_req *req);
void httpd_drop(struct httpd_req *req);
/* The standard reason phrase ("OK", "Bad Request", ...). */
const char *httpd_reason(int status);

/* Serves a connected stream socket (a socketpair end, as the fuzz target tests/fuzz/fuzz_httpd
 * uses) as if it had been accepted on a plain listener; fd is owned by h from now on, closed
 * also on failure. 0, or -1 (OOM). peer_ip is "" for a non-IP socket. */
int httpd_adopt(struct httpd *h, int fd);

#endif
