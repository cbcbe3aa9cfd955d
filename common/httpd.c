/* httpd.c: the HTTP/1.1 server both programs listen with. Each connection is a small state
 * machine over a bufferevent (plain or OpenSSL); every framing error, size limit and slow client
 * becomes a request with error_status set, so the program answers it in its own JSON shape and
 * the connection closes after that answer. Heads are parsed from one pulled-up copy per request;
 * replies are formatted straight into the output evbuffer. */
#include "capgate/httpd.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "capgate/bevread.h"
#include "capgate/clock.h"
#include "capgate/log.h"
#include "capgate/num.h"
#include "capgate/poison.h"
#include "capgate/strbuf.h"
#include "capgate/tls.h"

/* Room for "METHOD " and " HTTP/1.1" around the target when a request line has no end yet. */
#define HTTPD_LINE_SLACK 64
/* A chunk-size line longer than this is not a chunk size. */
#define HTTPD_CHUNK_LINE_MAX 1024
/* After an error reply, how long unread input is drained before the socket closes, so the
 * peer reads the reply instead of losing it to an RST. */
#define HTTPD_LINGER_MS 2000
/* Pipelined requests stop being parsed while this much reply data waits for the peer. */
#define HTTPD_OUTPUT_HIGH (256 * 1024)

enum conn_state {
    CONN_READ_HEAD, /* waiting for (the rest of) a request head; idle between requests */
    CONN_READ_BODY, /* head parsed, reading a Content-Length or chunked body */
    CONN_HANDLING,  /* the program has the request and has not ended it */
    CONN_WRITING,   /* the reply is queued; the connection closes once the peer took it */
    CONN_LINGER,    /* reply sent, draining what the peer still sends before closing */
    CONN_CLOSED,    /* closed; freed as soon as no callback of it is on the stack */
};

static const char *const conn_state_names[] = {
    "reading head", "reading body", "handling", "writing", "lingering", "closed",
};

enum chunk_state { CHUNK_SIZE, CHUNK_DATA, CHUNK_DATA_END, CHUNK_TRAILER };

struct httpd_listener {
    struct httpd_listener *next;
    struct httpd *h;
    struct evconnlistener *lev;
    struct tls_server *tls; /* borrowed */
};

struct httpd_conn;

/* Request blocks kept between requests, by the server rather than by each connection: an idle
 * keep-alive connection then holds no block (at 10,000 idle clients, 4 KB each was 40 MB), and
 * the blocks of the requests in flight are reused whatever connection comes next. A block is
 * allocated at least this large and kept only up to the larger size (a flood of headers is not
 * held), and at most HTTPD_SPARES_MAX of them (past the requests one worker has in flight). */
#define REQUEST_BLOCK_MIN 4096
#define REQUEST_SPARE_MAX 16384
#define HTTPD_SPARES_MAX 128

struct httpd_request {
    struct httpd_req pub;        /* first: handlers hold &pub */
    struct httpd_conn *conn;     /* NULL once detached from a dead connection */
    struct strbuf reply_headers; /* "Name: value\r\n" lines from httpd_add_header */
    httpd_cancel_fn cancel;
    void *cancel_arg;
    char *body_buf; /* heap body (NULL: pub.body is "") */
    size_t body_cap;
    size_t block_size;                /* bytes allocated for this block (request_alloc) */
    struct httpd_request *next_spare; /* in the server's list of spare blocks */
    uint64_t content_length;
    int has_content_length;
    int chunked;
    int keepalive;
    int is_head;
    int expect_continue;
    int cancel_on_eof;
    char errmsg[224];
};

struct httpd_conn {
    struct httpd *h;
    struct httpd_conn *prev, *next;
    struct bufferevent *bev;
    evutil_socket_t fd;
    int is_tls;
    enum conn_state state;
    struct event *timer;  /* the deadline of the current state */
    struct event *resume; /* parses buffered pipelined input after an asynchronous reply */
    struct httpd_request *req;
    char peer_ip[INET6_ADDRSTRLEN];
    /* head scanning: complete lines seen so far, by offset into the input */
    size_t scan_off;
    unsigned lines;
    size_t header_bytes;
    int started; /* the current request's first byte arrived */
    uint64_t start_us;
    /* body */
    uint64_t body_left; /* Content-Length or current chunk bytes still to read */
    enum chunk_state cstate;
    size_t trailer_bytes;
    int linger;        /* drain input after the reply before closing */
    int eof;           /* the peer closed its side */
    int output_paused; /* parsing waits for the output to drain */
    int in_callback;   /* callbacks of this connection on the stack */
};

struct httpd {
    struct event_base *base;
    struct httpd_limits lim;
    httpd_handler_fn handler;
    void *arg;
    struct httpd_listener *listeners;
    struct httpd_conn *conns;
    size_t nconns;
    struct httpd_request *spares; /* blocks of ended requests, for the next ones */
    size_t n_spares;
    size_t inflight;
    struct httpd_budget own_budget;
    struct httpd_budget *budget; /* own_budget, or one shared with other servers */
    struct event *accept_timer;  /* re-enables the listeners after an accept failure */
    int accept_paused;
    uint64_t refused, accept_errors;
    int draining;
    time_t date_sec;
    char date[40];
};

static void conn_process(struct httpd_conn *c);
static void conn_close(struct httpd_conn *c);

/* Accept failures and refusals at max_connections, whichever server and thread: one warning
 * when they start, a summary a minute while they go on, one line when accepting works again
 * (a second after the last failure, so one lucky accept between failures ends nothing). */
static struct log_limiter accept_warning = LOG_LIMITER_INIT(60, 1000);
static struct log_limiter refuse_warning = LOG_LIMITER_INIT(60, 1000);

void httpd_limits_default(struct httpd_limits *lim) {
    lim->max_uri = 8192;
    lim->max_header_bytes = 16384;
    lim->max_headers = 100;
    lim->max_body = 65536;
    lim->header_timeout_ms = 10000;
    lim->body_timeout_ms = 10000;
    lim->idle_timeout_ms = 60000;
    lim->write_timeout_ms = 10000;
    lim->max_connections = 0;
}

void httpd_budget_init(struct httpd_budget *b, size_t max) {
    atomic_init(&b->open, 0);
    b->max = max;
}

size_t httpd_default_max_connections(size_t reserve, size_t *limit) {
    struct rlimit rl;
    size_t n = 1024; /* the usual soft limit, should getrlimit fail */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        n = (size_t)rl.rlim_cur;
    else if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        n = (size_t)1 << 20;
    if (limit) *limit = n;
    size_t max = n >= 2 * reserve ? n - reserve : n / 2;
    return max ? max : 1;
}

const char *httpd_reason(int status) {
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: break;
    }
    if (status >= 200 && status < 300) return "OK";
    if (status >= 400 && status < 500) return "Client Error";
    if (status >= 500 && status < 600) return "Server Error";
    return "Unknown";
}

/* ---- connection bookkeeping ---------------------------------------------------------------- */

static void conn_set_state(struct httpd_conn *c, enum conn_state st) {
    if (c->state == st) return;
    log_debug("httpd: %s fd %d: %s -> %s", c->peer_ip, (int)c->fd, conn_state_names[c->state],
              conn_state_names[st]);
    c->state = st;
}

static void conn_arm_timer(struct httpd_conn *c, unsigned ms) {
    if (ms == 0) {
        evtimer_del(c->timer);
        return;
    }
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(c->timer, &tv);
}

/* Callbacks bracket their work with conn_enter/conn_leave: a connection closed underneath (by the
 * handler calling httpd_reset, say) is freed only once nothing of it is on the stack. conn_leave
 * returns -1 when c is gone. */
static void conn_enter(struct httpd_conn *c) {
    c->in_callback++;
}

static void conn_free(struct httpd_conn *c);

static int conn_leave(struct httpd_conn *c) {
    if (--c->in_callback == 0 && c->state == CONN_CLOSED) {
        conn_free(c);
        return -1;
    }
    return 0;
}

static void request_free(struct httpd_request *r) {
    if (!r) return;
    strbuf_cleanup(&r->reply_headers);
    free(r->body_buf);
    free(r);
}

/* The request ends: no longer counted, no longer reachable from its connection. Its block
 * goes to the server's spares for the next request (a block this size is past malloc's fast
 * bins); a large one, or one past HTTPD_SPARES_MAX, is freed. */
static void request_end(struct httpd_request *r) {
    struct httpd_conn *c = r->conn;
    if (c) {
        struct httpd *h = c->h;
        if (c->req == r) c->req = NULL;
        h->inflight--;
        r->conn = NULL;
        if (r->block_size <= REQUEST_SPARE_MAX && h->n_spares < HTTPD_SPARES_MAX) {
            free(r->body_buf);
            r->body_buf = NULL;
            strbuf_reset(&r->reply_headers);
            r->next_spare = h->spares;
            h->spares = r;
            h->n_spares++;
            poison_mark(r + 1, r->block_size - sizeof(*r));
            return;
        }
    }
    request_free(r);
}

/* A spare block, off the server's list (NULL when none). */
static struct httpd_request *spare_take(struct httpd *h) {
    struct httpd_request *r = h->spares;
    if (r) {
        h->spares = r->next_spare;
        h->n_spares--;
        r->next_spare = NULL;
    }
    return r;
}

static void conn_free(struct httpd_conn *c) {
    struct httpd *h = c->h;
    if (c->prev)
        c->prev->next = c->next;
    else
        h->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    h->nconns--;
    atomic_fetch_sub_explicit(&h->budget->open, 1, memory_order_relaxed);
    if (c->timer) event_free(c->timer);
    if (c->resume) event_free(c->resume);
    if (c->bev) bufferevent_free(c->bev);
    free(c);
}

/* Closes the connection. A request the program holds gets its cancel callback now; without one
 * it is detached and freed when the program ends it. */
static void conn_close(struct httpd_conn *c) {
    if (c->state == CONN_CLOSED) return;
    struct httpd_request *r = c->req;
    int dispatched = c->state == CONN_HANDLING;
    conn_set_state(c, CONN_CLOSED);
    evtimer_del(c->timer);
    event_del(c->resume);
    bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    c->req = NULL;
    if (r && dispatched) {
        c->h->inflight--;
        r->conn = NULL;
        if (r->cancel) {
            r->cancel(&r->pub, r->cancel_arg);
            request_free(r);
        }
    } else {
        request_free(r);
    }
    if (c->in_callback == 0) conn_free(c);
}

/* ---- request construction ------------------------------------------------------------------ */

static int is_tchar(unsigned char ch) {
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')) return 1;
    return ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static void request_fail(struct httpd_request *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The first error found wins: it is what the program reports. A message may quote request bytes
 * (a chunk-size line, a header name); their control bytes are written \xHH, so the message is
 * safe in a log line as it is in the JSON reply. */
static void request_fail(struct httpd_request *r, int status, const char *fmt, ...) {
    if (r->pub.error_status) return;
    char raw[sizeof r->errmsg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)raw; *p; p++) {
        int ctl = *p < 0x20 || *p == 0x7f;
        if (o + (ctl ? 4 : 1) >= sizeof r->errmsg) break;
        if (ctl) {
            static const char hex[] = "0123456789ABCDEF";
            r->errmsg[o++] = '\\';
            r->errmsg[o++] = 'x';
            r->errmsg[o++] = hex[*p >> 4];
            r->errmsg[o++] = hex[*p & 15];
        } else {
            r->errmsg[o++] = (char)*p;
        }
    }
    r->errmsg[o] = '\0';
    r->pub.error_status = status;
    r->pub.error_message = r->errmsg;
}

/* One block holds the request, its header table, the head text and a copy of the path. A
 * spare block is used when it is large enough: only the struct is cleared, the
 * rest is written before it is read. A new block has room for a usual head (REQUEST_BLOCK_MIN),
 * so the next request fits it too. */
static struct httpd_request *request_alloc(struct httpd_conn *c, size_t head_len,
                                           unsigned nheaders) {
    size_t hdr_size = (size_t)nheaders * sizeof(struct httpd_header);
    size_t size = sizeof(struct httpd_request) + hdr_size + 2 * (head_len + 1);
    struct httpd_request *r = spare_take(c->h);
    if (r && r->block_size >= size) {
        struct strbuf headers = r->reply_headers; /* keeps its memory, emptied */
        size_t block_size = r->block_size;
        poison_clear(r + 1, block_size - sizeof(*r));
        memset(r, 0, sizeof(*r));
        r->reply_headers = headers;
        r->block_size = block_size;
    } else {
        if (r) poison_clear(r + 1, r->block_size - sizeof(*r));
        request_free(r);
        size_t block_size = size < REQUEST_BLOCK_MIN ? REQUEST_BLOCK_MIN : size;
        if (!(r = malloc(block_size))) return NULL;
        memset(r, 0, sizeof(*r));
        r->block_size = block_size;
    }
    r->conn = c;
    r->pub.method = "";
    r->pub.target = "";
    r->pub.path = "";
    r->pub.body = "";
    r->pub.headers = (struct httpd_header *)(void *)(r + 1);
    r->pub.http_minor = 1;
    r->pub.is_tls = c->is_tls;
    r->pub.peer_ip = c->peer_ip;
    r->pub.start_us = c->start_us ? c->start_us : clock_mono_us();
    return r;
}

static char *request_text(struct httpd_request *r, unsigned nheaders) {
    return (char *)(void *)(r + 1) + (size_t)nheaders * sizeof(struct httpd_header);
}

/* Splits off the next line of a NUL-terminated head copy, dropping its CR LF. */
static char *next_line(char **p) {
    char *line = *p;
    char *nl = strchr(line, '\n');
    if (nl) {
        *p = nl + 1;
        *nl = '\0';
        if (nl > line && nl[-1] == '\r') nl[-1] = '\0';
    } else {
        *p = line + strlen(line);
        size_t n = strlen(line);
        if (n && line[n - 1] == '\r') line[n - 1] = '\0';
    }
    return line;
}

static int has_ctl(const char *s) {
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) return 1;
    }
    return 0;
}

static void parse_request_line(struct httpd_request *r, char *line, size_t max_uri,
                               char *path_room) {
    char *sp1 = strchr(line, ' ');
    if (!sp1 || sp1 == line) {
        request_fail(r, 400, "the request line is not \"METHOD TARGET HTTP/VERSION\"");
        return;
    }
    *sp1 = '\0';
    for (const char *m = line; *m; m++) {
        if (!is_tchar((unsigned char)*m)) {
            request_fail(r, 400, "the request method contains an invalid character");
            return;
        }
    }
    r->pub.method = line;
    char *target = sp1 + 1;
    char *sp2 = strchr(target, ' ');
    size_t tlen = sp2 ? (size_t)(sp2 - target) : strlen(target);
    if (tlen > max_uri) {
        request_fail(r, 414, "the request URI is %zu bytes; the limit is %zu", tlen, max_uri);
        return;
    }
    if (!sp2 || tlen == 0) {
        request_fail(r, 400, "the request line is not \"METHOD TARGET HTTP/VERSION\"");
        return;
    }
    *sp2 = '\0';
    const char *ver = sp2 + 1;
    for (const char *t = target; *t; t++) {
        unsigned char ch = (unsigned char)*t;
        if (ch <= 0x20 || ch == 0x7f) {
            request_fail(r, 400, "the request URI contains a control character or space");
            return;
        }
    }
    r->pub.target = target;
    const char *q = strchr(target, '?');
    size_t plen = q ? (size_t)(q - target) : tlen;
    memcpy(path_room, target, plen);
    path_room[plen] = '\0';
    r->pub.path = path_room;
    r->pub.query = q ? q + 1 : NULL;
    if (strncmp(ver, "HTTP/", 5) != 0 || strlen(ver) != 8 || ver[5] < '0' || ver[5] > '9' ||
        ver[6] != '.' || ver[7] < '0' || ver[7] > '9') {
        request_fail(r, 400, "the request line has no valid HTTP version");
        return;
    }
    if (ver[5] != '1' || ver[7] > '1') {
        request_fail(r, 505, "HTTP version %s is not supported; use HTTP/1.1 or HTTP/1.0", ver);
        return;
    }
    r->pub.http_minor = ver[7] - '0';
}

/* Does the comma-separated list in value contain token (case-insensitive)? */
static int list_has_token(const char *value, const char *token) {
    size_t tl = strlen(token);
    const char *p = value;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        const char *start = p;
        while (*p && *p != ',') p++;
        const char *end = p;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t')) end--;
        if ((size_t)(end - start) == tl && strncasecmp(start, token, tl) == 0) return 1;
    }
    return 0;
}

/* RFC 3986 host [":" port]: an IP-literal in brackets, or reg-name / IPv4address characters
 * (unreserved, pct-encoded, sub-delims), then an optional decimal port. Empty is allowed
 * (RFC 9112 3.2: a target without an authority). */
static int host_value_ok(const char *v) {
    const char *p = v;
    if (*p == '[') {
        for (p++; *p && *p != ']'; p++) {
            if (!isxdigit((unsigned char)*p) && !strchr(":.vV", *p)) return 0;
        }
        if (*p++ != ']') return 0;
    } else {
        for (; *p && *p != ':'; p++) {
            unsigned char ch = (unsigned char)*p;
            if (isalnum(ch) || strchr("-._~!$&'()*+,;=", ch)) continue;
            if (ch == '%' && isxdigit((unsigned char)p[1]) && isxdigit((unsigned char)p[2])) {
                p += 2;
                continue;
            }
            return 0;
        }
    }
    if (*p == ':') {
        int digits = 0;
        for (p++; *p >= '0' && *p <= '9'; p++) digits++;
        if (digits > 5) return 0;
    }
    return *p == '\0';
}

static void parse_header_semantics(struct httpd_request *r, size_t max_body) {
    int conn_close_tok = 0, conn_keep = 0, te_other = 0, te_seen = 0, hosts = 0;
    for (size_t i = 0; i < r->pub.header_count; i++) {
        const char *name = r->pub.headers[i].name;
        const char *value = r->pub.headers[i].value;
        if (strcasecmp(name, "Host") == 0) {
            /* RFC 9112 3.2: more than one Host, or an invalid one, is a 400. Host is part of
             * the string to sign, so an ambiguous Host would also be an ambiguous signature. */
            if (hosts++) {
                request_fail(r, 400, "the request has more than one Host header");
                return;
            }
            if (!host_value_ok(value)) {
                request_fail(r, 400, "the Host header is not a valid host[:port]: \"%.40s\"",
                             value);
                return;
            }
            r->pub.host = value;
        } else if (!r->pub.content_type && strcasecmp(name, "Content-Type") == 0) {
            r->pub.content_type = value;
        } else if (strcasecmp(name, "Content-Length") == 0) {
            uint64_t n;
            if (num_parse_u64(value, strlen(value), &n) != 0) {
                request_fail(r, 400, "Content-Length is not a decimal number: \"%.40s\"", value);
                return;
            }
            /* RFC 9112 6.3 lets a server merge equal values; two framing headers are a
             * smuggling vector between a proxy and a server that disagree, so none is kept. */
            if (r->has_content_length) {
                request_fail(r, 400, "the request has more than one Content-Length header");
                return;
            }
            r->has_content_length = 1;
            r->content_length = n;
        } else if (strcasecmp(name, "Transfer-Encoding") == 0) {
            te_seen = 1;
            if (strcasecmp(value, "chunked") == 0 && !r->chunked)
                r->chunked = 1;
            else
                te_other = 1;
        } else if (strcasecmp(name, "Connection") == 0) {
            if (list_has_token(value, "close")) conn_close_tok = 1;
            if (list_has_token(value, "keep-alive")) conn_keep = 1;
        } else if (strcasecmp(name, "Expect") == 0) {
            if (strcasecmp(value, "100-continue") == 0) r->expect_continue = 1;
        }
    }
    if (te_seen && r->pub.http_minor == 0) {
        /* RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing. */
        request_fail(r, 400, "Transfer-Encoding is not allowed in an HTTP/1.0 request");
        return;
    }
    if (te_other) {
        request_fail(r, 501, "Transfer-Encoding other than a single \"chunked\" is not supported");
        return;
    }
    if (r->chunked && r->has_content_length) {
        request_fail(r, 400, "the request has both Content-Length and Transfer-Encoding");
        return;
    }
    if (!hosts && r->pub.http_minor >= 1) {
        request_fail(r, 400, "an HTTP/1.1 request must have a Host header");
        return;
    }
    if (r->has_content_length && r->content_length > max_body) {
        request_fail(r, 413, "the request body is %llu bytes; the limit is %zu",
                     (unsigned long long)r->content_length, max_body);
        return;
    }
    r->keepalive = r->pub.http_minor >= 1 ? !conn_close_tok : (conn_keep && !conn_close_tok);
    r->is_head = strcmp(r->pub.method, "HEAD") == 0;
}

/* Builds the request from the complete head lines held in the first head_len input bytes
 * (lines counts them; complete says whether the empty line ending the head was among them). */
static struct httpd_request *request_from_head(struct httpd_conn *c, size_t head_len,
                                               unsigned lines, int complete) {
    struct evbuffer *in = bufferevent_get_input(c->bev);
    const struct httpd_limits *lim = &c->h->lim;
    unsigned nheaders = lines > 0 ? lines - 1 : 0;
    struct httpd_request *r = request_alloc(c, head_len, nheaders);
    if (!r) return NULL;
    char *text = request_text(r, nheaders);
    char *path_room = text + head_len + 1;
    if (head_len) evbuffer_copyout(in, text, head_len);
    text[head_len] = '\0';
    if (memchr(text, '\0', head_len)) {
        request_fail(r, 400, "the request head contains a NUL byte");
        return r;
    }
    char *p = text;
    if (lines == 0) return r;
    parse_request_line(r, next_line(&p), lim->max_uri, path_room);
    if (r->pub.error_status) return r;
    struct httpd_header *hdrs = (struct httpd_header *)(void *)(r + 1);
    size_t n = 0;
    for (unsigned i = 1; i < lines && *p; i++) {
        char *line = next_line(&p);
        if (*line == '\0') break;
        if (*line == ' ' || *line == '\t') {
            request_fail(r, 400, "header line %u starts with whitespace (obsolete folding)", i);
            break;
        }
        char *colon = strchr(line, ':');
        if (!colon || colon == line) {
            request_fail(r, 400, "header line %u is not \"Name: value\"", i);
            break;
        }
        *colon = '\0';
        int bad_name = 0;
        for (const char *t = line; *t; t++) bad_name |= !is_tchar((unsigned char)*t);
        if (bad_name) {
            request_fail(r, 400, "header line %u has an invalid field name", i);
            break;
        }
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t') v++;
        char *e = v + strlen(v);
        while (e > v && (e[-1] == ' ' || e[-1] == '\t')) e--;
        *e = '\0';
        if (has_ctl(v)) {
            request_fail(r, 400, "header %s has a control character in its value", line);
            break;
        }
        hdrs[n].name = line;
        hdrs[n].value = v;
        n++;
    }
    r->pub.header_count = n;
    /* Headers of an incomplete head still help the program (Host, say); only a complete head's
     * framing headers are acted upon. */
    if (complete && !r->pub.error_status)
        parse_header_semantics(r, lim->max_body);
    else {
        for (size_t i = 0; i < n; i++) {
            if (!r->pub.host && strcasecmp(hdrs[i].name, "Host") == 0) r->pub.host = hdrs[i].value;
            if (!r->pub.content_type && strcasecmp(hdrs[i].name, "Content-Type") == 0)
                r->pub.content_type = hdrs[i].value;
        }
    }
    return r;
}

/* A request line with no end in sight past the URI limit: keep only its method. */
static struct httpd_request *request_from_long_line(struct httpd_conn *c, size_t avail) {
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t look = avail < 32 ? avail : 32;
    struct httpd_request *r = request_alloc(c, look, 0);
    if (!r) return NULL;
    char *text = request_text(r, 0);
    evbuffer_copyout(in, text, look);
    text[look] = '\0';
    char *sp = memchr(text, ' ', look);
    size_t mlen = sp ? (size_t)(sp - text) : 0;
    int token = mlen > 0;
    for (size_t i = 0; i < mlen; i++) token &= is_tchar((unsigned char)text[i]);
    text[token ? mlen : 0] = '\0';
    r->pub.method = text;
    if (token) {
        request_fail(r, 414, "the request URI is more than %zu bytes; the limit is %zu",
                     c->h->lim.max_uri, c->h->lim.max_uri);
    } else {
        request_fail(r, 400, "the request line is not \"METHOD TARGET HTTP/VERSION\"");
    }
    return r;
}

/* ---- reading --------------------------------------------------------------------------------- */

enum read_result { READ_WAIT, READ_READY, READ_FATAL };

static void conn_start_request(struct httpd_conn *c) {
    c->scan_off = 0;
    c->lines = 0;
    c->header_bytes = 0;
    c->started = 0;
    c->start_us = 0;
    c->body_left = 0;
    c->trailer_bytes = 0;
    c->cstate = CHUNK_SIZE;
}

static enum read_result conn_begin_body(struct httpd_conn *c);

static enum read_result conn_read_head(struct httpd_conn *c) {
    struct evbuffer *in = bufferevent_get_input(c->bev);
    const struct httpd_limits *lim = &c->h->lim;
    size_t avail = evbuffer_get_length(in);
    if (avail == 0) return READ_WAIT;
    if (!c->started) {
        c->started = 1;
        c->start_us = clock_mono_us();
        conn_arm_timer(c, lim->header_timeout_ms);
    }
    for (;;) {
        struct evbuffer_ptr ptr;
        size_t eol_len = 0;
        if (evbuffer_ptr_set(in, &ptr, c->scan_off, EVBUFFER_PTR_SET) != 0) return READ_WAIT;
        ptr = evbuffer_search_eol(in, &ptr, &eol_len, EVBUFFER_EOL_CRLF);
        if (ptr.pos < 0) {
            size_t partial = avail - c->scan_off;
            if (c->lines == 0 && partial > lim->max_uri + HTTPD_LINE_SLACK) {
                c->req = request_from_long_line(c, avail);
                return c->req ? READ_READY : READ_FATAL;
            }
            if (c->lines > 0 && c->header_bytes + partial > lim->max_header_bytes) {
                c->req = request_from_head(c, c->scan_off, c->lines, 0);
                if (!c->req) return READ_FATAL;
                request_fail(c->req, 431,
                             "the request header fields are at least %zu bytes; the limit is %zu",
                             c->header_bytes + partial, lim->max_header_bytes);
                return READ_READY;
            }
            return READ_WAIT;
        }
        size_t line_len = (size_t)ptr.pos - c->scan_off;
        if (c->lines == 0 && line_len == 0) {
            /* Empty lines before a request line are tolerated (RFC 9112 2.2). */
            evbuffer_drain(in, eol_len);
            avail -= eol_len;
            if (avail == 0) return READ_WAIT;
            continue;
        }
        c->scan_off = (size_t)ptr.pos + eol_len;
        if (line_len == 0) {
            c->req = request_from_head(c, c->scan_off, c->lines + 1, 1);
            if (!c->req) return READ_FATAL;
            evbuffer_drain(in, c->scan_off);
            if (c->req->pub.error_status) return READ_READY;
            return conn_begin_body(c);
        }
        c->lines++;
        if (c->lines == 1) {
            if (line_len > lim->max_uri + HTTPD_LINE_SLACK) {
                /* request_from_head measures the URI exactly and says 414 or 400. */
                c->req = request_from_head(c, c->scan_off, 1, 0);
                if (c->req && !c->req->pub.error_status)
                    request_fail(c->req, 400, "the request line is %zu bytes long", line_len);
                return c->req ? READ_READY : READ_FATAL;
            }
            continue;
        }
        c->header_bytes += line_len + eol_len;
        if (c->header_bytes > lim->max_header_bytes) {
            c->req = request_from_head(c, c->scan_off, c->lines - 1, 0);
            if (!c->req) return READ_FATAL;
            request_fail(c->req, 431,
                         "the request header fields are at least %zu bytes; the limit is %zu",
                         c->header_bytes, lim->max_header_bytes);
            return READ_READY;
        }
        if (c->lines - 1 > lim->max_headers) {
            c->req = request_from_head(c, c->scan_off, c->lines - 1, 0);
            if (!c->req) return READ_FATAL;
            request_fail(c->req, 431, "the request has more than %u header fields; the limit is %u",
                         lim->max_headers, lim->max_headers);
            return READ_READY;
        }
    }
}

static enum read_result conn_read_body(struct httpd_conn *c);

static enum read_result conn_begin_body(struct httpd_conn *c) {
    struct httpd_request *r = c->req;
    const struct httpd_limits *lim = &c->h->lim;
    if (!r->chunked && (!r->has_content_length || r->content_length == 0)) return READ_READY;
    if (r->chunked) {
        r->body_cap = 1024;
        c->cstate = CHUNK_SIZE;
    } else {
        r->body_cap = (size_t)r->content_length + 1;
        c->body_left = r->content_length;
    }
    r->body_buf = malloc(r->body_cap);
    if (!r->body_buf) return READ_FATAL;
    r->body_buf[0] = '\0';
    r->pub.body = r->body_buf;
    conn_set_state(c, CONN_READ_BODY);
    conn_arm_timer(c, lim->body_timeout_ms);
    if (r->expect_continue && r->pub.http_minor >= 1 &&
        evbuffer_get_length(bufferevent_get_input(c->bev)) == 0) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        bufferevent_write(c->bev, cont, sizeof cont - 1);
    }
    return conn_read_body(c);
}

static int body_append(struct httpd_request *r, struct evbuffer *in, size_t n) {
    if (r->pub.body_len + n + 1 > r->body_cap) {
        size_t cap = r->body_cap * 2;
        while (cap < r->pub.body_len + n + 1) cap *= 2;
        char *nb = realloc(r->body_buf, cap);
        if (!nb) return -1;
        r->body_buf = nb;
        r->body_cap = cap;
        r->pub.body = nb;
    }
    evbuffer_remove(in, r->body_buf + r->pub.body_len, n);
    r->pub.body_len += n;
    r->body_buf[r->pub.body_len] = '\0';
    return 0;
}

/* Reads one line (chunk size, chunk end, trailer) off the front of the input: its length, or
 * -1 when it is not complete yet. */
static ssize_t take_line(struct evbuffer *in, char *buf, size_t buflen, size_t *eol_len) {
    struct evbuffer_ptr ptr = evbuffer_search_eol(in, NULL, eol_len, EVBUFFER_EOL_CRLF);
    if (ptr.pos < 0) return -1;
    size_t n = (size_t)ptr.pos;
    size_t copy = n < buflen - 1 ? n : buflen - 1;
    evbuffer_copyout(in, buf, copy);
    buf[copy] = '\0';
    evbuffer_drain(in, n + *eol_len);
    return (ssize_t)n;
}

static const char *skip_bws(const char *p) {
    while (*p == ' ' || *p == '\t') p++;
    return p;
}

/* What follows the size on a chunk-size line, per RFC 9112 7.1.1: BWS, then any number of
 * ";" name ["=" token / quoted-string] with BWS around the separators. A CR, a NUL or any
 * other byte outside that grammar makes the line invalid ("3;\rGET / ..." smuggles). */
static int chunk_ext_ok(const char *p) {
    p = skip_bws(p);
    while (*p == ';') {
        p = skip_bws(p + 1);
        if (!is_tchar((unsigned char)*p)) return 0;
        while (is_tchar((unsigned char)*p)) p++;
        p = skip_bws(p);
        if (*p == '=') {
            p = skip_bws(p + 1);
            if (*p == '"') {
                for (p++; *p != '"'; p++) {
                    unsigned char ch = (unsigned char)*p;
                    if (ch == '\\') ch = (unsigned char)*++p;
                    if (ch == '\0' || (ch < 0x20 && ch != '\t') || ch == 0x7f) return 0;
                }
                p++;
            } else {
                if (!is_tchar((unsigned char)*p)) return 0;
                while (is_tchar((unsigned char)*p)) p++;
            }
            p = skip_bws(p);
        }
    }
    return *p == '\0';
}

/* A trailer field line: a token name, a colon, a value without control characters. */
static int trailer_line_ok(const char *line) {
    const char *p = line;
    while (is_tchar((unsigned char)*p)) p++;
    return p > line && *p == ':' && !has_ctl(p + 1);
}

static enum read_result conn_read_chunked(struct httpd_conn *c) {
    struct httpd_request *r = c->req;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    const struct httpd_limits *lim = &c->h->lim;
    char line[HTTPD_CHUNK_LINE_MAX + 1];
    size_t eol_len;
    for (;;) {
        size_t avail = evbuffer_get_length(in);
        switch (c->cstate) {
        case CHUNK_SIZE: {
            ssize_t n = take_line(in, line, sizeof line, &eol_len);
            if (n < 0) {
                if (avail > HTTPD_CHUNK_LINE_MAX) {
                    request_fail(r, 400, "a chunk-size line is longer than %d bytes",
                                 HTTPD_CHUNK_LINE_MAX);
                    return READ_READY;
                }
                return READ_WAIT;
            }
            if (n > HTTPD_CHUNK_LINE_MAX) {
                request_fail(r, 400, "a chunk-size line is longer than %d bytes",
                             HTTPD_CHUNK_LINE_MAX);
                return READ_READY;
            }
            uint64_t size = 0;
            const char *p = line;
            int digits = 0;
            for (; *p; p++, digits++) {
                int d;
                if (*p >= '0' && *p <= '9')
                    d = *p - '0';
                else if (*p >= 'a' && *p <= 'f')
                    d = *p - 'a' + 10;
                else if (*p >= 'A' && *p <= 'F')
                    d = *p - 'A' + 10;
                else
                    break;
                if (size > ((uint64_t)1 << 56)) {
                    request_fail(r, 413,
                                 "a request body chunk is larger than the limit of %zu "
                                 "bytes",
                                 lim->max_body);
                    return READ_READY;
                }
                size = size * 16 + (uint64_t)d;
            }
            if (digits == 0 || memchr(line, '\0', (size_t)n) || !chunk_ext_ok(p)) {
                request_fail(r, 400,
                             "a chunk-size line is not a hexadecimal size with valid "
                             "extensions: \"%.32s\"",
                             line);
                return READ_READY;
            }
            if (size == 0) {
                c->cstate = CHUNK_TRAILER;
                break;
            }
            if (r->pub.body_len + size > lim->max_body) {
                request_fail(r, 413,
                             "the chunked request body is at least %llu bytes; the limit is %zu",
                             (unsigned long long)(r->pub.body_len + size), lim->max_body);
                return READ_READY;
            }
            c->body_left = size;
            c->cstate = CHUNK_DATA;
            break;
        }
        case CHUNK_DATA: {
            if (avail == 0) return READ_WAIT;
            size_t n = avail < c->body_left ? avail : (size_t)c->body_left;
            if (body_append(r, in, n) != 0) return READ_FATAL;
            c->body_left -= n;
            if (c->body_left == 0) c->cstate = CHUNK_DATA_END;
            break;
        }
        case CHUNK_DATA_END: {
            ssize_t n = take_line(in, line, sizeof line, &eol_len);
            if (n < 0) {
                if (avail >= 2) {
                    request_fail(r, 400, "chunk data is not followed by CRLF");
                    return READ_READY;
                }
                return READ_WAIT;
            }
            if (n != 0) {
                request_fail(r, 400, "chunk data is longer than its chunk size");
                return READ_READY;
            }
            c->cstate = CHUNK_SIZE;
            break;
        }
        case CHUNK_TRAILER: {
            ssize_t n = take_line(in, line, sizeof line, &eol_len);
            if (n < 0) {
                if (c->trailer_bytes + avail > lim->max_header_bytes) {
                    request_fail(r, 431, "the trailer fields are more than %zu bytes",
                                 lim->max_header_bytes);
                    return READ_READY;
                }
                return READ_WAIT;
            }
            if (n == 0) return READ_READY;
            if (memchr(line, '\0', (size_t)n) || !trailer_line_ok(line)) {
                request_fail(r, 400, "a trailer line is not \"Name: value\"");
                return READ_READY;
            }
            c->trailer_bytes += (size_t)n + eol_len;
            if (c->trailer_bytes > lim->max_header_bytes) {
                request_fail(r, 431, "the trailer fields are more than %zu bytes",
                             lim->max_header_bytes);
                return READ_READY;
            }
            break;
        }
        }
    }
}

static enum read_result conn_read_body(struct httpd_conn *c) {
    struct httpd_request *r = c->req;
    if (r->chunked) return conn_read_chunked(c);
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t avail = evbuffer_get_length(in);
    size_t n = avail < c->body_left ? avail : (size_t)c->body_left;
    if (n) {
        evbuffer_remove(in, r->body_buf + r->pub.body_len, n);
        r->pub.body_len += n;
        r->body_buf[r->pub.body_len] = '\0';
        c->body_left -= n;
    }
    return c->body_left == 0 ? READ_READY : READ_WAIT;
}

/* ---- dispatch and replies -------------------------------------------------------------------- */

static void conn_dispatch(struct httpd_conn *c) {
    struct httpd_request *r = c->req;
    evtimer_del(c->timer);
    conn_set_state(c, CONN_HANDLING);
    c->h->inflight++;
    if (r->pub.error_status)
        log_debug("httpd: %s: %d %s", c->peer_ip, r->pub.error_status, r->pub.error_message);
    c->h->handler(&r->pub, c->h->arg);
}

/* Parses and dispatches buffered requests while the connection is between requests. */
static void conn_process(struct httpd_conn *c) {
    struct evbuffer *out = bufferevent_get_output(c->bev);
    conn_enter(c);
    while (c->state == CONN_READ_HEAD || c->state == CONN_READ_BODY) {
        enum read_result res;
        if (c->state == CONN_READ_HEAD) {
            if (evbuffer_get_length(out) > HTTPD_OUTPUT_HIGH) {
                c->output_paused = 1;
                break;
            }
            res = conn_read_head(c);
        } else {
            res = conn_read_body(c);
        }
        if (res == READ_WAIT) break;
        if (res == READ_FATAL) {
            log_warn("httpd: out of memory reading a request from %s", c->peer_ip);
            conn_close(c);
            break;
        }
        conn_dispatch(c);
    }
    conn_leave(c);
}

static void conn_resume_cb(evutil_socket_t fd, short what, void *arg) {
    conn_process(arg);
}

static const char *httpd_date(struct httpd *h) {
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct timeval tv;
    if (event_base_gettimeofday_cached(h->base, &tv) != 0) gettimeofday(&tv, NULL);
    if (tv.tv_sec != h->date_sec || !h->date[0]) {
        struct tm tm;
        gmtime_r(&tv.tv_sec, &tm);
        snprintf(h->date, sizeof h->date, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday],
                 tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                 tm.tm_sec);
        h->date_sec = tv.tv_sec;
    }
    return h->date;
}

int httpd_add_header(struct httpd_req *req, const char *name, const char *value) {
    struct httpd_request *r = (struct httpd_request *)req;
    if (!name || !value || !*name) return -1;
    for (const char *p = name; *p; p++)
        if (!is_tchar((unsigned char)*p)) return -1;
    if (strpbrk(value, "\r\n")) return -1;
    struct strbuf *b = &r->reply_headers;
    size_t was = b->len;
    if (strbuf_appends(b, name) != 0 || strbuf_append(b, ": ", 2) != 0 ||
        strbuf_appends(b, value) != 0 || strbuf_append(b, "\r\n", 2) != 0) {
        if (b->s) b->s[b->len = was] = '\0'; /* no half header line */
        return -1;
    }
    return 0;
}

void httpd_set_cancel(struct httpd_req *req, httpd_cancel_fn cb, void *arg) {
    struct httpd_request *r = (struct httpd_request *)req;
    r->cancel = cb;
    r->cancel_arg = arg;
}

void httpd_cancel_on_eof(struct httpd_req *req) {
    struct httpd_request *r = (struct httpd_request *)req;
    r->cancel_on_eof = 1;
    /* The EOF may have come already: the connection closes on the next loop turn (its
     * timer), not inside the program's code. */
    if (r->conn && r->conn->eof && r->conn->state == CONN_HANDLING) {
        struct timeval now = {0, 0};
        evtimer_add(r->conn->timer, &now);
    }
}

/* After a reply: the next request on a keep-alive connection, or the closing sequence. */
static void conn_after_reply(struct httpd_conn *c, int keep) {
    struct evbuffer *in = bufferevent_get_input(c->bev);
    conn_set_state(c, CONN_WRITING);
    if (!keep) {
        evtimer_del(c->timer);
        /* Reading continues so the drain in conn_read_cb keeps the peer's sends flowing (after
         * an EOF there is nothing more to read, and the socket would stay readable). */
        if (!c->eof) bufferevent_enable(c->bev, EV_READ);
        return;
    }
    conn_start_request(c);
    conn_set_state(c, CONN_READ_HEAD);
    if (evbuffer_get_length(in) == 0) {
        conn_arm_timer(c, c->h->lim.idle_timeout_ms);
    } else if (!c->in_callback) {
        /* A reply from outside this connection's callbacks (an upstream answer, a timer):
         * parse the pipelined request on the next loop turn, not inside the program's code. */
        event_active(c->resume, EV_TIMEOUT, 1);
    }
}

/* A reply is assembled here and handed to the output buffer in one piece (one evbuffer_add, one
 * iovec for the write); a part that does not fit goes to the buffer on its own. */
struct reply_writer {
    struct evbuffer *out;
    size_t len;
    char buf[2048];
};

static void reply_put(struct reply_writer *w, const char *s, size_t n) {
    if (n == 0) return;
    if (n > sizeof w->buf - w->len) {
        if (w->len) evbuffer_add(w->out, w->buf, w->len);
        w->len = 0;
        if (n > sizeof w->buf) {
            evbuffer_add(w->out, s, n);
            return;
        }
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
}

static void reply_puts(struct reply_writer *w, const char *s) {
    reply_put(w, s, strlen(s));
}

static void reply_putu(struct reply_writer *w, uint64_t v) {
    char digits[20];
    size_t i = sizeof digits;
    do {
        digits[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    reply_put(w, digits + i, sizeof digits - i);
}

/* Hands the assembled reply over. On a plain keep-alive connection with nothing queued it is
 * sent at once: going through the bufferevent would enable EV_WRITE (an epoll_ctl), wait a loop
 * turn for writability and disable it again (another epoll_ctl) for every reply. What the socket
 * does not take, and every error, is left to the bufferevent as before. */
static void reply_send(struct httpd_conn *c, struct reply_writer *w, int keep) {
    size_t sent = 0;
    if (keep && !c->is_tls && evbuffer_get_length(w->out) == 0) {
        ssize_t n = send(c->fd, w->buf, w->len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) sent = (size_t)n;
    }
    if (sent < w->len) evbuffer_add(w->out, w->buf + sent, w->len - sent);
}

void httpd_reply(struct httpd_req *req, int status, const char *content_type, const char *body,
                 size_t body_len) {
    struct httpd_request *r = (struct httpd_request *)req;
    struct httpd_conn *c = r->conn;
    if (!c) {
        request_free(r);
        return;
    }
    struct httpd *h = c->h;
    struct reply_writer w;
    w.out = bufferevent_get_output(c->bev);
    w.len = 0;
    int keep = r->keepalive && !req->error_status && !h->draining && !c->eof;
    int no_body = (status >= 100 && status < 200) || status == 204 || status == 304;
    if (status < 100 || status > 999) status = 500;
    reply_put(&w, "HTTP/1.1 ", 9);
    reply_putu(&w, (uint64_t)status);
    reply_put(&w, " ", 1);
    reply_puts(&w, httpd_reason(status));
    reply_put(&w, "\r\nDate: ", 8);
    reply_puts(&w, httpd_date(h));
    reply_put(&w, "\r\n", 2);
    if (!no_body) {
        reply_put(&w, "Content-Length: ", 16);
        reply_putu(&w, body_len);
        reply_put(&w, "\r\n", 2);
    }
    if (content_type && !no_body) {
        reply_put(&w, "Content-Type: ", 14);
        reply_puts(&w, content_type);
        reply_put(&w, "\r\n", 2);
    }
    if (!keep)
        reply_put(&w, "Connection: close\r\n", 19);
    else if (req->http_minor == 0)
        reply_put(&w, "Connection: keep-alive\r\n", 24);
    reply_put(&w, r->reply_headers.s, r->reply_headers.len);
    reply_put(&w, "\r\n", 2);
    if (body_len && !no_body && !r->is_head) reply_put(&w, body, body_len);
    if (w.len) reply_send(c, &w, keep);
    c->linger = req->error_status != 0;
    request_end(r);
    conn_after_reply(c, keep);
}

/* Ends the request by closing its connection; with rst, SO_LINGER {1, 0} turns the close into
 * a TCP RST. */
static void request_abort(struct httpd_req *req, int rst) {
    struct httpd_request *r = (struct httpd_request *)req;
    struct httpd_conn *c = r->conn;
    if (!c) {
        request_free(r);
        return;
    }
    request_end(r);
    if (rst) {
        struct linger lg = {1, 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    } else if (!c->is_tls) {
        shutdown(c->fd, SHUT_WR);
    }
    conn_close(c);
}

void httpd_reset(struct httpd_req *req) {
    request_abort(req, 1);
}
void httpd_drop(struct httpd_req *req) {
    request_abort(req, 0);
}

/* ---- connection callbacks -------------------------------------------------------------------- */

/* Closes a connection that is between requests, after the replies already queued reached the
 * peer (a client that half-closes right after its request still gets the answer). */
static void conn_close_idle(struct httpd_conn *c) {
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
        conn_close(c);
        return;
    }
    evtimer_del(c->timer);
    c->linger = 0;
    conn_set_state(c, CONN_WRITING);
}

/* A head or body cut short by a timeout or by the peer's EOF still reaches the program. */
static void conn_fail_partial(struct httpd_conn *c, int status, const char *why) {
    struct httpd_request *r = c->req;
    if (c->state == CONN_READ_HEAD) {
        if (!c->started || r) {
            conn_close_idle(c);
            return;
        }
        r = c->req = request_from_head(c, c->scan_off, c->lines, 0);
        if (!r) {
            conn_close(c);
            return;
        }
        request_fail(r, status, "the request headers were not complete %s", why);
    } else if (r->chunked) {
        request_fail(r, status, "the chunked request body was not complete %s (%zu bytes read)",
                     why, r->pub.body_len);
    } else {
        request_fail(r, status, "the request body was not complete %s (%zu of %llu bytes read)",
                     why, r->pub.body_len, (unsigned long long)r->content_length);
    }
    conn_dispatch(c);
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg) {
    struct httpd_conn *c = arg;
    char why[64];
    conn_enter(c);
    switch (c->state) {
    case CONN_READ_HEAD:
        snprintf(why, sizeof why, "after %u ms", c->h->lim.header_timeout_ms);
        conn_fail_partial(c, 408, why);
        break;
    case CONN_READ_BODY:
        snprintf(why, sizeof why, "after %u ms", c->h->lim.body_timeout_ms);
        conn_fail_partial(c, 408, why);
        break;
    default: conn_close(c); break;
    }
    conn_leave(c);
}

static void conn_read_cb(struct bufferevent *bev, void *arg) {
    struct httpd_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    switch (c->state) {
    case CONN_READ_HEAD:
    case CONN_READ_BODY: conn_process(c); break;
    case CONN_WRITING:
    case CONN_LINGER:
    case CONN_CLOSED:
        /* The connection closes after this reply: what the peer still sends is discarded. */
        evbuffer_drain(in, evbuffer_get_length(in));
        break;
    case CONN_HANDLING:
        /* Pipelined input waits; the read high-water mark bounds it. */
        break;
    }
}

static void conn_finish(struct httpd_conn *c) {
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (c->eof || (!c->linger && evbuffer_get_length(in) == 0)) {
        conn_close(c);
        return;
    }
    /* The FIN goes out after the reply; reading on until the peer's EOF (or a short deadline)
     * keeps unread bytes from turning the close into an RST that could destroy the reply. */
    if (!c->is_tls) shutdown(c->fd, SHUT_WR);
    evbuffer_drain(in, evbuffer_get_length(in));
    conn_set_state(c, CONN_LINGER);
    conn_arm_timer(c, HTTPD_LINGER_MS);
}

static void conn_write_cb(struct bufferevent *bev, void *arg) {
    struct httpd_conn *c = arg;
    conn_enter(c);
    if (c->state == CONN_WRITING) {
        conn_finish(c);
    } else if (c->state == CONN_READ_HEAD && c->output_paused) {
        c->output_paused = 0;
        conn_process(c);
    }
    conn_leave(c);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg) {
    struct httpd_conn *c = arg;
    conn_enter(c);
    if (what & BEV_EVENT_EOF) {
        c->eof = 1;
        switch (c->state) {
        case CONN_READ_HEAD:
        case CONN_READ_BODY:
            /* The peer may have only half-closed: what it sent still gets an answer. */
            conn_process(c);
            if (c->state == CONN_READ_HEAD || c->state == CONN_READ_BODY)
                conn_fail_partial(c, 400, "when the client closed the connection");
            break;
        case CONN_WRITING:
            if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) conn_close(c);
            break;
        case CONN_HANDLING:
            /* A client that sent its whole request and shut down its sending side waits for
             * the answer: the request goes on, and its reply closes the connection (a peer
             * that closed entirely makes that write fail, which ends it). Only a request
             * that asked for it (httpd_cancel_on_eof) ends here. */
            bufferevent_disable(bev, EV_READ);
            if (c->req && c->req->cancel_on_eof) conn_close(c);
            break;
        default: conn_close(c); break;
        }
    } else if (what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
        if (what & BEV_EVENT_ERROR) {
            log_debug("httpd: %s: connection error: %s", c->peer_ip,
                      evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        }
        conn_close(c);
    }
    conn_leave(c);
}

static void conn_new(struct httpd *h, evutil_socket_t fd, struct sockaddr *sa,
                     struct tls_server *tls) {
    const struct httpd_limits *lim = &h->lim;
    struct httpd_conn *c = calloc(1, sizeof *c);
    if (!c) {
        evutil_closesocket(fd);
        atomic_fetch_sub_explicit(&h->budget->open, 1, memory_order_relaxed);
        goto fail;
    }
    /* Linked first, so conn_free is the one cleanup path; it closes fd once bev owns it. */
    c->h = h;
    c->fd = fd;
    c->next = h->conns;
    if (h->conns) h->conns->prev = c;
    h->conns = c;
    h->nconns++;
    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((struct sockaddr_in *)(void *)sa)->sin_addr, c->peer_ip,
                  sizeof c->peer_ip);
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((struct sockaddr_in6 *)(void *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a))
            inet_ntop(AF_INET, &a->s6_addr[12], c->peer_ip, sizeof c->peer_ip);
        else
            inet_ntop(AF_INET6, a, c->peer_ip, sizeof c->peer_ip);
    }
    if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (tls) {
        SSL *ssl = tls_server_ssl_new(tls);
        if (ssl) {
            c->bev = bufferevent_openssl_socket_new(h->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                    BEV_OPT_CLOSE_ON_FREE);
            if (!c->bev) SSL_free(ssl);
        }
        if (c->bev) bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
        c->is_tls = 1;
    } else {
        c->bev = bufferevent_socket_new(h->base, fd, BEV_OPT_CLOSE_ON_FREE);
        if (c->bev) (void)bevread_install(c->bev); /* else it reads through libevent's */
    }
    if (!c->bev) evutil_closesocket(fd);
    c->timer = evtimer_new(h->base, conn_timer_cb, c);
    c->resume = event_new(h->base, -1, 0, conn_resume_cb, c);
    if (!c->bev || !c->timer || !c->resume) {
        conn_free(c);
        goto fail;
    }
    /* Input beyond one maximal head waits in the kernel: a pipelining or flooding peer cannot
     * make the server buffer without bound. */
    size_t high = lim->max_uri + lim->max_header_bytes + 2 * HTTPD_LINE_SLACK;
    if (high < 65536) high = 65536;
    bufferevent_setwatermark(c->bev, EV_READ, 0, high);
    if (lim->write_timeout_ms) {
        struct timeval wtv = {(time_t)(lim->write_timeout_ms / 1000),
                              (suseconds_t)((lim->write_timeout_ms % 1000) * 1000)};
        bufferevent_set_timeouts(c->bev, NULL, &wtv);
    }
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    conn_start_request(c);
    c->state = CONN_READ_HEAD;
    /* A new connection has header_timeout_ms to send its first request. */
    conn_arm_timer(c, lim->header_timeout_ms);
    return;
fail:
    log_warn("httpd: cannot accept a connection: out of memory");
}

/* ---- server ---------------------------------------------------------------------------------- */

static void listener_accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
                               int salen, void *arg) {
    struct httpd_listener *l = arg;
    struct httpd *h = l->h;
    struct httpd_budget *b = h->budget;
    size_t open = atomic_fetch_add_explicit(&b->open, 1, memory_order_relaxed);
    if (b->max && open >= b->max) {
        /* Past max_connections the connection is accepted and closed, as nginx does past
         * worker_connections: left in the listen queue it would wait in silence for the
         * client's own timeout (and, with SO_REUSEPORT, behind a full worker while another
         * has room); closed, the client or its balancer can try again at once. */
        atomic_fetch_sub_explicit(&b->open, 1, memory_order_relaxed);
        evutil_closesocket(fd);
        h->refused++;
        log_limited(&refuse_warning, LOG_LEVEL_WARN,
                    "httpd: %zu connections are open, the limit (max_connections); new ones "
                    "are closed at once",
                    b->max);
        return;
    }
    log_limited_ok(&refuse_warning, LOG_LEVEL_INFO,
                   "httpd: below max_connections again; new connections are served");
    log_limited_ok(&accept_warning, LOG_LEVEL_INFO, "httpd: accepting connections again");
    conn_new(h, fd, sa, l->tls);
}

static void httpd_enable_listeners(struct httpd *h, int on) {
    for (struct httpd_listener *l = h->listeners; l; l = l->next) {
        if (on)
            evconnlistener_enable(l->lev);
        else
            evconnlistener_disable(l->lev);
    }
}

static void accept_timer_cb(evutil_socket_t fd, short what, void *arg) {
    struct httpd *h = arg;
    h->accept_paused = 0;
    if (!h->draining) httpd_enable_listeners(h, 1);
}

/* accept() failed with an error libevent does not retry by itself: EMFILE or ENFILE (out of
 * descriptors), ENOBUFS or ENOMEM (or anything else). The listening socket stays readable, so
 * accepting on would spin a core and log each failure; instead this server stops accepting for
 * HTTPD_ACCEPT_PAUSE_MS and tries again, as nginx does (ngx_event_accept.c: the accept events
 * disabled, a timer of accept_mutex_delay). Connections already open are served meanwhile, and
 * as they close the descriptors come back. */
static void listener_error_cb(struct evconnlistener *lev, void *arg) {
    struct httpd_listener *l = arg;
    struct httpd *h = l->h;
    int err = EVUTIL_SOCKET_ERROR();
    h->accept_errors++;
    log_limited(&accept_warning, LOG_LEVEL_WARN,
                "httpd: accept failed: %s; pausing new connections for %d ms at a time until "
                "it works again (open connections are still served)",
                evutil_socket_error_to_string(err), HTTPD_ACCEPT_PAUSE_MS);
    if (h->accept_paused || !h->accept_timer) return;
    h->accept_paused = 1;
    httpd_enable_listeners(h, 0);
    struct timeval tv = {HTTPD_ACCEPT_PAUSE_MS / 1000, (HTTPD_ACCEPT_PAUSE_MS % 1000) * 1000};
    evtimer_add(h->accept_timer, &tv);
}

struct httpd *httpd_new(struct event_base *base, const struct httpd_limits *lim,
                        httpd_handler_fn handler, void *arg) {
    struct httpd *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->base = base;
    if (lim)
        h->lim = *lim;
    else
        httpd_limits_default(&h->lim);
    h->handler = handler;
    h->arg = arg;
    httpd_budget_init(&h->own_budget, h->lim.max_connections);
    h->budget = &h->own_budget;
    h->accept_timer = evtimer_new(base, accept_timer_cb, h);
    if (!h->accept_timer) {
        free(h);
        return NULL;
    }
    return h;
}

void httpd_set_budget(struct httpd *h, struct httpd_budget *b) {
    h->budget = b ? b : &h->own_budget;
}

int httpd_listen(struct httpd *h, const char *host, int port, struct tls_server *tls, int reuseport,
                 char *err, size_t errlen) {
    struct addrinfo hints, *res = NULL;
    struct httpd_listener *l = NULL;
    char portstr[16];
    int bound = -1;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    if (port < 0 || port > 65535) {
        snprintf(err, errlen, "port %d is out of range", port);
        goto out;
    }
    snprintf(portstr, sizeof portstr, "%d", port);
    int gai = getaddrinfo(host && *host ? host : NULL, portstr, &hints, &res);
    if (gai != 0) {
        snprintf(err, errlen, "cannot resolve listen address %s: %s", host ? host : "*",
                 gai_strerror(gai));
        goto out;
    }
    l = calloc(1, sizeof *l);
    if (!l) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    l->h = h;
    l->tls = tls;
    unsigned flags = LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC;
    if (reuseport) flags |= LEV_OPT_REUSEABLE_PORT;
    int saved_errno = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        l->lev = evconnlistener_new_bind(h->base, listener_accept_cb, l, flags, 1024, ai->ai_addr,
                                         (int)ai->ai_addrlen);
        if (l->lev) break;
        saved_errno = errno;
    }
    if (!l->lev) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", host ? host : "*", port,
                 strerror(saved_errno));
        goto out;
    }
    evconnlistener_set_error_cb(l->lev, listener_error_cb);
    if (h->accept_paused) evconnlistener_disable(l->lev);
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof ss;
    if (getsockname(evconnlistener_get_fd(l->lev), (struct sockaddr *)&ss, &sslen) != 0) {
        snprintf(err, errlen, "cannot read the bound address: %s", strerror(errno));
        goto out;
    }
    if (ss.ss_family == AF_INET6)
        bound = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    else
        bound = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    l->next = h->listeners;
    h->listeners = l;
    l = NULL;
out:
    if (l) {
        if (l->lev) evconnlistener_free(l->lev);
        free(l);
        bound = -1;
    }
    if (res) freeaddrinfo(res);
    return bound;
}

static void httpd_close_listeners(struct httpd *h) {
    while (h->listeners) {
        struct httpd_listener *l = h->listeners;
        h->listeners = l->next;
        evconnlistener_free(l->lev);
        free(l);
    }
}

void httpd_stop_accepting(struct httpd *h) {
    httpd_close_listeners(h);
    evtimer_del(h->accept_timer);
    h->draining = 1;
    struct httpd_conn *c = h->conns;
    while (c) {
        struct httpd_conn *next = c->next;
        if (c->state == CONN_READ_HEAD && !c->started) conn_close_idle(c);
        c = next;
    }
}

size_t httpd_inflight(const struct httpd *h) {
    return h->inflight;
}
size_t httpd_connections(const struct httpd *h) {
    return h->nconns;
}
uint64_t httpd_refused(const struct httpd *h) {
    return h->refused;
}
uint64_t httpd_accept_errors(const struct httpd *h) {
    return h->accept_errors;
}

void httpd_free(struct httpd *h) {
    if (!h) return;
    httpd_close_listeners(h);
    while (h->conns) {
        struct httpd_conn *c = h->conns;
        /* httpd_free is not called from inside a connection's callbacks, so every connection
         * can go now. */
        c->in_callback = 1;
        conn_close(c);
        conn_free(c);
    }
    event_free(h->accept_timer);
    for (struct httpd_request *r; (r = spare_take(h));) {
        poison_clear(r + 1, r->block_size - sizeof(*r));
        request_free(r);
    }
    free(h);
}

int httpd_adopt(struct httpd *h, int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (evutil_make_socket_nonblocking(fd) != 0) {
        evutil_closesocket(fd);
        return -1;
    }
    memset(&ss, 0, sizeof ss);
    if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0) ss.ss_family = AF_UNSPEC;
    size_t before = h->nconns;
    conn_new(h, fd, (struct sockaddr *)&ss, NULL);
    return h->nconns > before ? 0 : -1;
}
