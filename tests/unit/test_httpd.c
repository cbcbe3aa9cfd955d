/* test_httpd.c: the HTTP server and the TLS helpers over real loopback sockets on port 0, with
 * the clients driven from the server's own event_base: request fields, keep-alive, pipelining,
 * chunked bodies, every limit and framing error, reset/drop/cancel, and a TLS listener. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <cmocka.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "capgate/clock.h"
#include "capgate/httpd.h"
#include "capgate/num.h"
#include "capgate/tls.h"

enum handler_mode { MODE_REPLY, MODE_STALL, MODE_STALL_EOF, MODE_LATER, MODE_RESET, MODE_DROP };

/* What the handler saw of the last request (copied: the request is gone after the reply). */
struct seen {
    int count;
    char method[16];
    char target[512];
    char path[512];
    char query[256];
    int has_query;
    char host[128];
    char content_type[128];
    char body[4096];
    size_t body_len;
    size_t header_count;
    int http_minor;
    int is_tls;
    char peer_ip[64];
    int error_status;
    char error_message[256];
};

struct fixture {
    struct event_base *base;
    struct httpd *h;
    int port;
    enum handler_mode mode;
    struct seen seen;
    struct httpd_req *stalled;
    int cancels;
    struct event *later; /* MODE_LATER: replies to the stalled request after later_ms */
    int later_ms;
};

static void copy_str(char *dst, size_t n, const char *src) {
    snprintf(dst, n, "%s", src ? src : "");
}

static void on_cancel(struct httpd_req *req, void *arg) {
    struct fixture *f = arg;
    assert_ptr_equal(req, f->stalled);
    f->cancels++;
    f->stalled = NULL;
}

static void on_request(struct httpd_req *req, void *arg) {
    struct fixture *f = arg;
    struct seen *s = &f->seen;
    s->count++;
    copy_str(s->method, sizeof s->method, req->method);
    copy_str(s->target, sizeof s->target, req->target);
    copy_str(s->path, sizeof s->path, req->path);
    copy_str(s->query, sizeof s->query, req->query);
    s->has_query = req->query != NULL;
    copy_str(s->host, sizeof s->host, req->host);
    copy_str(s->content_type, sizeof s->content_type, req->content_type);
    copy_str(s->body, sizeof s->body, req->body);
    s->body_len = req->body_len;
    s->header_count = req->header_count;
    s->http_minor = req->http_minor;
    s->is_tls = req->is_tls;
    copy_str(s->peer_ip, sizeof s->peer_ip, req->peer_ip);
    s->error_status = req->error_status;
    copy_str(s->error_message, sizeof s->error_message, req->error_message);
    if (req->error_status) assert_non_null(req->error_message);

    switch (f->mode) {
    case MODE_STALL:
    case MODE_STALL_EOF:
        f->stalled = req;
        httpd_set_cancel(req, on_cancel, f);
        if (f->mode == MODE_STALL_EOF) httpd_cancel_on_eof(req);
        return;
    case MODE_LATER: {
        f->stalled = req;
        httpd_set_cancel(req, on_cancel, f);
        struct timeval tv = {0, f->later_ms * 1000};
        evtimer_add(f->later, &tv);
        return;
    }
    case MODE_RESET: httpd_reset(req); return;
    case MODE_DROP: httpd_drop(req); return;
    case MODE_REPLY: break;
    }
    char body[600];
    int status = req->error_status ? req->error_status : 200;
    int n = snprintf(body, sizeof body, "{\"path\":\"%.500s\",\"status\":%d}", req->path, status);
    assert_int_equal(httpd_add_header(req, "X-Test", "yes"), 0);
    assert_int_equal(httpd_add_header(req, "Bad\r\nName", "x"), -1);
    httpd_reply(req, status, "application/json", body, (size_t)n);
}

static void later_cb(evutil_socket_t fd, short what, void *arg) {
    struct fixture *f = arg;
    struct httpd_req *req = f->stalled;
    if (!req) return;
    f->stalled = NULL;
    httpd_set_cancel(req, NULL, NULL);
    httpd_reply(req, 200, "application/json", "{\"later\":1}", 11);
}

static struct fixture *fixture_new(const struct httpd_limits *lim, struct tls_server *tls) {
    struct fixture *f = calloc(1, sizeof *f);
    char err[256] = "";
    assert_non_null(f);
    f->base = event_base_new();
    assert_non_null(f->base);
    f->h = httpd_new(f->base, lim, on_request, f);
    assert_non_null(f->h);
    f->later = evtimer_new(f->base, later_cb, f);
    assert_non_null(f->later);
    f->port = httpd_listen(f->h, "127.0.0.1", 0, tls, 0, err, sizeof err);
    if (f->port <= 0) fail_msg("httpd_listen: %s", err);
    return f;
}

static void fixture_free(struct fixture *f) {
    httpd_free(f->h);
    event_free(f->later);
    event_base_free(f->base);
    free(f);
}

/* Short limits so the error and timeout cases run in milliseconds. */
static void small_limits(struct httpd_limits *lim) {
    httpd_limits_default(lim);
    lim->max_uri = 256;
    lim->max_header_bytes = 1024;
    lim->max_headers = 10;
    lim->max_body = 1024;
    lim->header_timeout_ms = 300;
    lim->body_timeout_ms = 300;
    lim->idle_timeout_ms = 2000;
    lim->write_timeout_ms = 2000;
}

/* ---- a raw non-blocking client on the same event_base ---- */

struct client {
    int fd;
    struct event *ev;
    char buf[262144];
    size_t len;
    int eof;
    int err;
};

static void client_read_cb(evutil_socket_t fd, short what, void *arg) {
    struct client *c = arg;
    for (;;) {
        if (c->len == sizeof c->buf) return;
        ssize_t n = recv(fd, c->buf + c->len, sizeof c->buf - c->len, 0);
        if (n > 0) {
            c->len += (size_t)n;
            continue;
        }
        if (n == 0)
            c->eof = 1;
        else if (errno != EAGAIN && errno != EWOULDBLOCK)
            c->err = errno;
        else
            return;
        event_del(c->ev);
        return;
    }
}

static struct client *client_new(struct fixture *f, int port) {
    struct client *c = calloc(1, sizeof *c);
    assert_non_null(c);
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(c->fd >= 0);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sin, sizeof sin), 0);
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    c->ev = event_new(f->base, c->fd, EV_READ | EV_PERSIST, client_read_cb, c);
    event_add(c->ev, NULL);
    return c;
}

static void client_send(struct client *c, const char *data, size_t len) {
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(c->fd, data + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        assert_true(n > 0);
        off += (size_t)n;
    }
}

static void client_sends(struct client *c, const char *s) {
    client_send(c, s, strlen(s));
}

static void client_free(struct client *c) {
    if (!c) return;
    event_free(c->ev);
    if (c->fd >= 0) close(c->fd);
    free(c);
}

static void wake_cb(evutil_socket_t fd, short what, void *arg) {}

typedef int (*cond_fn)(void *arg);

/* Runs the loop until cond holds or ms pass; returns cond's final value. */
static int run_until(struct event_base *base, cond_fn cond, void *arg, int ms) {
    struct event *wake = evtimer_new(base, wake_cb, NULL);
    struct timeval tick = {0, 5000};
    /* the time that really passed: a loaded machine makes a turn longer than its 5 ms tick */
    uint64_t end = clock_mono_us() + (uint64_t)ms * 1000;
    while (!cond(arg) && clock_mono_us() < end) {
        evtimer_add(wake, &tick);
        event_base_loop(base, EVLOOP_ONCE);
    }
    event_free(wake);
    return cond(arg);
}

/* Complete replies: every "HTTP/1.1 " head has its Content-Length body. */
static int complete_replies(const struct client *c) {
    int n = 0;
    size_t i = 0;
    while (i < c->len) {
        const char *start = c->buf + i;
        const char *end = memmem(start, c->len - i, "\r\n\r\n", 4);
        if (!end) break;
        const char *cl = memmem(start, (size_t)(end - start), "Content-Length: ", 16);
        size_t body = cl ? strtoul(cl + 16, NULL, 10) : 0;
        size_t total = (size_t)(end - start) + 4 + body;
        if (i + total > c->len) break;
        if (memcmp(start, "HTTP/1.1 1", 10) != 0) n++;
        i += total;
    }
    return n;
}

struct want {
    struct client *c;
    int replies;
};
static int has_replies(void *arg) {
    struct want *w = arg;
    return complete_replies(w->c) >= w->replies;
}
static int closed(void *arg) {
    struct client *c = arg;
    return c->eof || c->err;
}
static int got_request(void *arg) {
    struct fixture *f = arg;
    return f->seen.count > 0;
}
static int no_connections(void *arg) {
    return httpd_connections(arg) == 0;
}
static int no_more_than_one(void *arg) {
    return httpd_connections(arg) <= 1;
}
static int got_cancel(void *arg) {
    struct fixture *f = arg;
    return f->cancels > 0;
}

static int status_of(const struct client *c, int nth) {
    int n = 0;
    for (size_t i = 0; i + 12 <= c->len; i++) {
        if (memcmp(c->buf + i, "HTTP/1.1 ", 9) == 0 && (i == 0 || c->buf[i - 1] == '\n')) {
            if (n++ == nth) return (int)strtol(c->buf + i + 9, NULL, 10);
        }
    }
    return -1;
}

static void wait_replies(struct fixture *f, struct client *c, int n) {
    struct want w = {c, n};
    if (!run_until(f->base, has_replies, &w, 3000))
        fail_msg("expected %d replies, got %d: %.*s", n, complete_replies(c), (int)c->len, c->buf);
}

/* ---- tests ---- */

static void test_get_and_post(void **state) {
    struct fixture *f = fixture_new(NULL, NULL);
    struct client *c = client_new(f, f->port);
    client_sends(c, "GET /v2/index.php?Action=CaptchaIframeQuery&a=1 HTTP/1.1\r\n"
                    "Host: example.test:9000\r\nUser-Agent: t\r\n\r\n");
    wait_replies(f, c, 1);
    assert_int_equal(status_of(c, 0), 200);
    assert_string_equal(f->seen.method, "GET");
    assert_string_equal(f->seen.target, "/v2/index.php?Action=CaptchaIframeQuery&a=1");
    assert_string_equal(f->seen.path, "/v2/index.php");
    assert_true(f->seen.has_query);
    assert_string_equal(f->seen.query, "Action=CaptchaIframeQuery&a=1");
    assert_string_equal(f->seen.host, "example.test:9000");
    assert_int_equal(f->seen.header_count, 2);
    assert_int_equal(f->seen.http_minor, 1);
    assert_int_equal(f->seen.is_tls, 0);
    assert_int_equal(f->seen.error_status, 0);
    assert_string_equal(f->seen.peer_ip, "127.0.0.1");
    assert_int_equal(f->seen.body_len, 0);
    assert_non_null(memmem(c->buf, c->len, "X-Test: yes\r\n", 13));
    assert_non_null(memmem(c->buf, c->len, "Date: ", 6));
    assert_non_null(memmem(c->buf, c->len, "Content-Type: application/json\r\n", 32));
    assert_non_null(memmem(c->buf, c->len, "{\"path\":\"/v2/index.php\",\"status\":200}", 37));

    client_sends(c, "POST /v2/index.php HTTP/1.1\r\nHost: h\r\n"
                    "Content-Type: application/x-www-form-urlencoded\r\n"
                    "Content-Length: 17\r\n\r\nAction=X&Nonce=12");
    wait_replies(f, c, 2);
    assert_string_equal(f->seen.method, "POST");
    assert_string_equal(f->seen.path, "/v2/index.php");
    assert_false(f->seen.has_query);
    assert_string_equal(f->seen.content_type, "application/x-www-form-urlencoded");
    assert_int_equal(f->seen.body_len, 17);
    assert_string_equal(f->seen.body, "Action=X&Nonce=12");
    assert_int_equal(httpd_connections(f->h), 1);
    assert_int_equal(httpd_inflight(f->h), 0);
    client_free(c);
    fixture_free(f);
}

static void test_keepalive_three(void **state) {
    struct fixture *f = fixture_new(NULL, NULL);
    struct client *c = client_new(f, f->port);
    for (int i = 1; i <= 3; i++) {
        char req[128];
        snprintf(req, sizeof req, "GET /r%d HTTP/1.1\r\nHost: h\r\n\r\n", i);
        client_sends(c, req);
        wait_replies(f, c, i);
        assert_int_equal(httpd_connections(f->h), 1);
    }
    assert_int_equal(f->seen.count, 3);
    assert_string_equal(f->seen.path, "/r3");
    assert_false(c->eof);
    /* HTTP/1.0 without keep-alive closes after its reply. */
    client_sends(c, "GET /old HTTP/1.0\r\n\r\n");
    assert_true(run_until(f->base, closed, c, 3000));
    assert_int_equal(complete_replies(c), 4);
    assert_int_equal(f->seen.http_minor, 0);
    assert_non_null(memmem(c->buf, c->len, "Connection: close\r\n", 19));
    client_free(c);
    fixture_free(f);
}

static size_t count_of(const struct client *c, const char *s) {
    size_t n = 0, len = strlen(s);
    for (const char *p = c->buf; (p = memmem(p, c->len - (size_t)(p - c->buf), s, len)); p += len)
        n++;
    return n;
}

/* A keep-alive connection reuses its request block: a head larger than the block, then smaller
 * ones, then one too large to keep; each request sees only its own head and reply headers. */
static void test_keepalive_block_reuse(void **state) {
    struct fixture *f = fixture_new(NULL, NULL);
    struct client *c = client_new(f, f->port);
    static const size_t big[] = {0, 6000, 0, 9000, 0};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        char *req = malloc(big[i] + 128);
        assert_non_null(req);
        int n = snprintf(req, 128, "GET /r%zu HTTP/1.1\r\nHost: h%zu\r\n", i, i);
        if (big[i]) {
            memcpy(req + n, "X-Big: ", 7);
            memset(req + n + 7, 'a' + (int)i, big[i]);
            n += 7 + (int)big[i];
            memcpy(req + n, "\r\n", 2);
            n += 2;
        }
        memcpy(req + n, "\r\n", 3);
        client_sends(c, req);
        free(req);
        wait_replies(f, c, (int)i + 1);
        char path[16], host[16];
        snprintf(path, sizeof path, "/r%zu", i);
        snprintf(host, sizeof host, "h%zu", i);
        assert_string_equal(f->seen.path, path);
        assert_string_equal(f->seen.host, host);
        assert_false(f->seen.has_query);
        assert_int_equal(f->seen.header_count, big[i] ? 2 : 1);
        assert_int_equal(count_of(c, "HTTP/1.1 200 "), i + 1);
        assert_int_equal(count_of(c, "X-Test: yes\r\n"), i + 1);
        assert_int_equal(httpd_connections(f->h), 1);
        assert_int_equal(httpd_inflight(f->h), 0);
    }
    assert_false(c->eof);
    client_free(c);
    fixture_free(f);
}

static void test_pipelining_in_order(void **state) {
    struct fixture *f = fixture_new(NULL, NULL);
    struct client *c = client_new(f, f->port);
    client_sends(c, "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
                    "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz"
                    "GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    assert_true(run_until(f->base, closed, c, 3000));
    assert_int_equal(complete_replies(c), 3);
    const char *a = memmem(c->buf, c->len, "\"/a\"", 4);
    const char *b = memmem(c->buf, c->len, "\"/b\"", 4);
    const char *cc = memmem(c->buf, c->len, "\"/c\"", 4);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(cc);
    assert_true(a < b && b < cc);
    assert_int_equal(f->seen.count, 3);
    client_free(c);
    fixture_free(f);
}

static int seen_two(void *arg) {
    struct fixture *f = arg;
    return f->seen.count >= 2;
}

/* A reply from outside the server's callbacks (as after an upstream call) lets the next
 * pipelined request through, in order. */
static void test_pipelining_async_reply(void **state) {
    struct fixture *f = fixture_new(NULL, NULL);
    f->mode = MODE_STALL;
    struct client *c = client_new(f, f->port);
    client_sends(c, "GET /one HTTP/1.1\r\nHost: h\r\n\r\nGET /two HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_true(run_until(f->base, got_request, f, 3000));
    run_until(f->base, seen_two, f, 50);
    assert_int_equal(f->seen.count, 1);
    assert_string_equal(f->seen.path, "/one");
    httpd_reply(f->stalled, 200, "text/plain", "1\n", 2);
    assert_int_equal(f->seen.count, 1);
    assert_true(run_until(f->base, seen_two, f, 3000));
    assert_string_equal(f->seen.path, "/two");
    httpd_reply(f->stalled, 201, "text/plain", "2\n", 2);
    f->stalled = NULL;
    wait_replies(f, c, 2);
    assert_int_equal(status_of(c, 0), 200);
    assert_int_equal(status_of(c, 1), 201);
    assert_int_equal(f->cancels, 0);
    client_free(c);
    fixture_free(f);
}

static void test_chunked_body(void **state) {
    struct fixture *f = fixture_new(NULL, NULL);
    struct client *c = client_new(f, f->port);
    client_sends(c, "POST /v2/index.php HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "4\r\nWiki\r\n5;ext=1\r\npedia\r\n");
    struct want w = {c, 1};
    run_until(f->base, has_replies, &w, 50);
    assert_int_equal(f->seen.count, 0);
    client_sends(c, "E\r\n in\r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\n");
    wait_replies(f, c, 1);
    assert_int_equal(status_of(c, 0), 200);
    assert_string_equal(f->seen.body, "Wikipedia in\r\n\r\nchunks.");
    assert_int_equal(f->seen.body_len, 23);
    client_free(c);
    fixture_free(f);
}

static void test_expect_continue(void **state) {
    struct fixture *f = fixture_new(NULL, NULL);
    struct client *c = client_new(f, f->port);
    client_sends(
        c, "POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    struct want w = {c, 1};
    run_until(f->base, has_replies, &w, 100);
    assert_true(c->len >= 25);
    assert_memory_equal(c->buf, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    client_sends(c, "abcd");
    wait_replies(f, c, 1);
    assert_int_equal(status_of(c, 1), 200);
    assert_string_equal(f->seen.body, "abcd");
    client_free(c);
    fixture_free(f);
}

/* Sends raw bytes, then expects the handler to get error status with a message and the client
 * to receive that reply followed by the close. */
static void expect_error(struct fixture *f, const char *data, size_t len, int status,
                         const char *msg_part) {
    struct client *c = client_new(f, f->port);
    memset(&f->seen, 0, sizeof f->seen);
    client_send(c, data, len);
    if (!run_until(f->base, closed, c, 3000)) fail_msg("no close after the %d reply", status);
    assert_int_equal(f->seen.count, 1);
    if (f->seen.error_status != status)
        fail_msg("want %d, got %d (%s)", status, f->seen.error_status, f->seen.error_message);
    assert_true(strlen(f->seen.error_message) > 10);
    for (const char *p = f->seen.error_message; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            fail_msg("control byte 0x%02x in \"%s\"", (unsigned char)*p, f->seen.error_message);
    if (msg_part && !strstr(f->seen.error_message, msg_part))
        fail_msg("message \"%s\" lacks \"%s\"", f->seen.error_message, msg_part);
    assert_int_equal(c->err, 0);
    assert_int_equal(complete_replies(c), 1);
    assert_int_equal(status_of(c, 0), status);
    assert_non_null(memmem(c->buf, c->len, "Connection: close\r\n", 19));
    assert_int_equal(httpd_inflight(f->h), 0);
    client_free(c);
}

static void expect_errors(struct fixture *f, const char *data, int status, const char *part) {
    expect_error(f, data, strlen(data), status, part);
}

static void test_errors(void **state) {
    struct httpd_limits lim;
    small_limits(&lim);
    struct fixture *f = fixture_new(&lim, NULL);
    char big[8192];

    /* 414: a complete request line, and one that never ends. */
    int n = snprintf(big, sizeof big, "GET /%0300d HTTP/1.1\r\nHost: h\r\n\r\n", 7);
    expect_error(f, big, (size_t)n, 414, "the limit is 256");
    assert_string_equal(f->seen.method, "GET");
    memset(big, 'a', 1000);
    memcpy(big, "GET /", 5);
    expect_error(f, big, 1000, 414, "the limit is 256");
    assert_string_equal(f->seen.method, "GET");

    /* 431 by size (one huge header, cut before its end) and by count. */
    n = snprintf(big, sizeof big, "GET / HTTP/1.1\r\nHost: h\r\nX-Big: ");
    memset(big + n, 'b', 2000);
    expect_error(f, big, (size_t)n + 2000, 431, "the limit is 1024");
    assert_string_equal(f->seen.path, "/");
    assert_string_equal(f->seen.host, "h");
    n = snprintf(big, sizeof big, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < 12; i++) n += snprintf(big + n, sizeof big - (size_t)n, "X-%d: v\r\n", i);
    n += snprintf(big + n, sizeof big - (size_t)n, "\r\n");
    expect_error(f, big, (size_t)n, 431, "the limit is 10");

    /* 413 by Content-Length, while the client keeps sending the body. */
    n = snprintf(big, sizeof big, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n");
    memset(big + n, 'x', sizeof big - (size_t)n);
    expect_error(f, big, sizeof big, 413, "100000 bytes; the limit is 1024");
    assert_int_equal(f->seen.body_len, 0);

    /* 413 while de-chunking. */
    n = snprintf(big, sizeof big,
                 "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "300\r\n");
    memset(big + n, 'y', 0x300);
    n += 0x300;
    n += snprintf(big + n, sizeof big - (size_t)n, "\r\n300\r\n");
    memset(big + n, 'y', 0x300);
    n += 0x300;
    expect_error(f, big, (size_t)n, 413, "the limit is 1024");

    expect_errors(f, "GARBAGE\r\n\r\n", 400, "request line");
    expect_errors(f, "GET / HTTP/1.1\r\nHost h\r\n\r\n", 400, "header line 1");
    expect_errors(f, "GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", 400, "folding");
    expect_errors(f, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 12x\r\n\r\n", 400,
                  "Content-Length");
    expect_errors(f,
                  "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                  400, "both");
    expect_errors(f, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400,
                  "hexadecimal");
    expect_errors(f, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 501,
                  "Transfer-Encoding");
    expect_errors(f, "GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505, "HTTP/2.0");
    expect_errors(f, "GET / HTTP/1.1\r\nHost: h\r\n", 408, "headers");

    /* 408 on a body that stops halfway: the handler sees what arrived. */
    expect_errors(f, "POST /slow HTTP/1.1\r\nHost: h\r\nContent-Length: 20\r\n\r\n0123456789", 408,
                  "10 of 20 bytes");
    assert_string_equal(f->seen.path, "/slow");
    assert_int_equal(f->seen.body_len, 10);
    assert_string_equal(f->seen.body, "0123456789");

    /* The server kept serving through all of it. */
    struct client *c = client_new(f, f->port);
    client_sends(c, "GET /ok HTTP/1.1\r\nHost: h\r\n\r\n");
    wait_replies(f, c, 1);
    assert_int_equal(status_of(c, 0), 200);
    client_free(c);
    fixture_free(f);
}

/* Sends one request and expects a 200 whose body echo came through. */
static void expect_ok(struct fixture *f, const char *data, size_t len, const char *body) {
    struct client *c = client_new(f, f->port);
    memset(&f->seen, 0, sizeof f->seen);
    client_send(c, data, len);
    wait_replies(f, c, 1);
    if (f->seen.error_status)
        fail_msg("unexpected %d (%s) for %.60s", f->seen.error_status, f->seen.error_message, data);
    assert_int_equal(status_of(c, 0), 200);
    if (body) assert_string_equal(f->seen.body, body);
    client_free(c);
}
#define EXPECT_OK(f, lit, body) expect_ok(f, lit, sizeof(lit) - 1, body)
#define EXPECT_400(f, lit, part) expect_error(f, lit, sizeof(lit) - 1, 400, part)

/* RFC 9112: Host (3.2), Transfer-Encoding on HTTP/1.0 (6.1), Content-Length (6.3), chunk
 * extensions (7.1.1). */
static void test_framing_rfc9112(void **state) {
    struct fixture *f = fixture_new(NULL, NULL);

    EXPECT_400(f, "GET / HTTP/1.1\r\n\r\n", "must have a Host");
    EXPECT_400(f, "GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", "must have a Host");
    EXPECT_400(f, "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", "more than one Host");
    EXPECT_400(f, "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", "more than one Host");
    EXPECT_400(f, "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host");
    EXPECT_400(f, "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "Host header is not");
    EXPECT_400(f, "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", "Host header is not");
    EXPECT_400(f, "GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", "Host header is not");
    EXPECT_400(f, "GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", "Host header is not");
    EXPECT_400(f, "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", "Host header is not");
    EXPECT_400(f, "GET / HTTP/1.1\r\nHost: a:123456\r\n\r\n", "Host header is not");
    EXPECT_OK(f, "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", NULL);
    assert_string_equal(f->seen.host, "example.com");
    EXPECT_OK(f, "GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n", NULL);
    EXPECT_OK(f, "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", NULL);
    EXPECT_OK(f, "GET / HTTP/1.1\r\nHost:\r\n\r\n", NULL);
    EXPECT_OK(f, "GET / HTTP/1.0\r\n\r\n", NULL);

    EXPECT_400(f, "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
               "HTTP/1.0");
    EXPECT_400(f, "POST / HTTP/1.0\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
               "HTTP/1.0");
    EXPECT_400(f,
               "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"
               "abc",
               "more than one Content-Length");
    EXPECT_400(f,
               "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"
               "abcd",
               "more than one Content-Length");
    EXPECT_400(f, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc",
               "Content-Length");

    /* Chunk-size lines: a NUL, a bare CR, broken extensions. */
    EXPECT_400(f,
               "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
               "5\0garbage\r\nhello\r\n0\r\n\r\n",
               "chunk-size");
    EXPECT_400(f,
               "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
               "3;\rGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\nabc\r\n0\r\n\r\n",
               "chunk-size");
    assert_int_equal(f->seen.count, 1);
    EXPECT_400(f,
               "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
               "3\rx\r\nabc\r\n0\r\n\r\n",
               "\"3\\x0Dx\""); /* the quoted line's CR written \x0D */
    static const char *const bad_ext[] = {
        "3;",  "3;=x",       "3;a=",         "3;a=\"open", "3;a=b c", "3;a b",
        "3 x", "3;a=\"x\"y", "3;a=\"\x01\"", "3;a;",       "3;a@b",
    };
    for (size_t i = 0; i < sizeof bad_ext / sizeof *bad_ext; i++) {
        char req[256];
        int n = snprintf(req, sizeof req,
                         "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: "
                         "chunked\r\n\r\n%s\r\nabc\r\n0\r\n\r\n",
                         bad_ext[i]);
        expect_error(f, req, (size_t)n, 400, "chunk-size");
    }
    EXPECT_OK(f,
              "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
              "3;name=val;q=\"a \\\" b\";flag \r\nabc\r\n2 ; x = y\r\nde\r\n0\r\n\r\n",
              "abcde");
    /* Trailer lines are header fields. */
    EXPECT_OK(f,
              "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
              "3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n",
              "abc");
    EXPECT_400(f,
               "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
               "3\r\nabc\r\n0\r\nX-Sum\0: 1\r\n\r\n",
               "trailer");
    EXPECT_400(f,
               "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
               "3\r\nabc\r\n0\r\nnot a field\r\n\r\n",
               "trailer");
    fixture_free(f);
}

static void test_half_close_gets_reply(void **state) {
    struct fixture *f = fixture_new(NULL, NULL);
    struct client *c = client_new(f, f->port);
    client_sends(c, "GET /half HTTP/1.1\r\nHost: h\r\n\r\n");
    shutdown(c->fd, SHUT_WR);
    assert_true(run_until(f->base, closed, c, 3000));
    assert_int_equal(c->err, 0);
    assert_int_equal(complete_replies(c), 1);
    assert_int_equal(status_of(c, 0), 200);
    /* A head cut short by the client's EOF still gets an answer. */
    struct client *d = client_new(f, f->port);
    client_sends(d, "POST /cut HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nabc");
    shutdown(d->fd, SHUT_WR);
    assert_true(run_until(f->base, closed, d, 3000));
    assert_int_equal(status_of(d, 0), 400);
    assert_int_equal(f->seen.error_status, 400);
    assert_non_null(strstr(f->seen.error_message, "3 of 9 bytes"));
    client_free(c);
    client_free(d);
    fixture_free(f);
}

/* Runs the loop for ms whatever happens. */
static int never(void *arg) {
    return 0;
}
static void spin(struct fixture *f, int ms) {
    run_until(f->base, never, NULL, ms);
}

/* Past max_connections a connection is accepted and closed at once; a freed slot serves the
 * next one. Two servers given one budget count together. */
static void test_max_connections(void **state) {
    struct httpd_limits lim;
    httpd_limits_default(&lim);
    lim.max_connections = 2;
    struct fixture *f = fixture_new(&lim, NULL);
    struct client *a = client_new(f, f->port);
    struct client *b = client_new(f, f->port);
    client_sends(a, "GET /a HTTP/1.1\r\nHost: h\r\n\r\n");
    wait_replies(f, a, 1);
    struct client *over = client_new(f, f->port);
    assert_true(run_until(f->base, closed, over, 3000));
    assert_int_equal(over->len, 0);
    assert_int_equal(httpd_refused(f->h), 1);
    assert_int_equal(httpd_connections(f->h), 2);
    /* The open ones are still served. */
    client_sends(b, "GET /b HTTP/1.1\r\nHost: h\r\n\r\n");
    wait_replies(f, b, 1);
    client_free(over);
    client_free(a);
    assert_true(run_until(f->base, no_more_than_one, f->h, 3000));
    struct client *next = client_new(f, f->port);
    client_sends(next, "GET /next HTTP/1.1\r\nHost: h\r\n\r\n");
    wait_replies(f, next, 1);
    assert_int_equal(status_of(next, 0), 200);
    assert_int_equal(httpd_refused(f->h), 1);
    client_free(next);
    client_free(b);

    /* One budget of 2 for this server and a second one on the same loop. */
    struct httpd_budget budget;
    httpd_budget_init(&budget, 2);
    char err[256];
    struct httpd *h2 = httpd_new(f->base, NULL, on_request, f);
    assert_non_null(h2);
    int port2 = httpd_listen(h2, "127.0.0.1", 0, NULL, 0, err, sizeof err);
    assert_true(port2 > 0);
    assert_true(run_until(f->base, no_connections, f->h, 3000));
    httpd_set_budget(f->h, &budget);
    httpd_set_budget(h2, &budget);
    struct client *c1 = client_new(f, f->port);
    struct client *c2 = client_new(f, port2);
    client_sends(c1, "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n");
    client_sends(c2, "GET /2 HTTP/1.1\r\nHost: h\r\n\r\n");
    wait_replies(f, c1, 1);
    wait_replies(f, c2, 1);
    struct client *c3 = client_new(f, port2);
    assert_true(run_until(f->base, closed, c3, 3000));
    assert_int_equal(c3->len, 0);
    assert_int_equal(httpd_refused(h2), 1);
    assert_int_equal(atomic_load(&budget.open), 2);
    client_free(c1);
    client_free(c2);
    client_free(c3);
    assert_true(run_until(f->base, no_connections, h2, 3000));
    assert_true(run_until(f->base, no_connections, f->h, 3000));
    assert_int_equal(atomic_load(&budget.open), 0);
    httpd_free(h2);
    fixture_free(f);
}

static int highest_fd(void) {
    int max = -1;
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        uint64_t fd;
        if (num_parse_u64z(e->d_name, &fd) == 0 && (int)fd > max) max = (int)fd; /* not . or .. */
    }
    closedir(d);
    return max;
}

/* Out of descriptors: the server pauses accepting instead of spinning, logs the episode once,
 * keeps serving the connection it has, and serves new ones by itself once descriptors free. */
static void test_emfile_pauses_accepting(void **state) {
    struct fixture *f = fixture_new(NULL, NULL);
    struct client *old = client_new(f, f->port);
    client_sends(old, "GET /old HTTP/1.1\r\nHost: h\r\n\r\n");
    wait_replies(f, old, 1);
    /* Idle clients, connected by the kernel and waiting in the listen queue. */
    enum { IDLE = 12 };
    struct client *idle[IDLE];
    for (int i = 0; i < IDLE; i++) idle[i] = client_new(f, f->port);
    struct rlimit saved, low;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &saved), 0);
    low = saved;
    low.rlim_cur = (rlim_t)highest_fd() + 1 + 8;
    fflush(stderr);
    FILE *log = tmpfile();
    assert_non_null(log);
    int saved_err = dup(STDERR_FILENO);
    assert_true(saved_err >= 0);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    /* Every free descriptor below the limit taken, then three given back: room for three
     * accepted connections. */
    static int filler[1024];
    int nfill = 0;
    while (nfill < 1024 && (filler[nfill] = dup(0)) >= 0) nfill++;
    assert_true(nfill >= 3 && nfill < 1024);
    for (int i = 0; i < 3; i++) close(filler[--nfill]);
    dup2(fileno(log), STDERR_FILENO);

    uint64_t spun = clock_mono_us();
    spin(f, 1200);
    uint64_t errors = httpd_accept_errors(f->h);
    spun = clock_mono_us() - spun;
    size_t open = httpd_connections(f->h);
    /* The old connection is served meanwhile. */
    client_sends(old, "GET /again HTTP/1.1\r\nHost: h\r\n\r\n");
    wait_replies(f, old, 2);
    assert_string_equal(f->seen.path, "/again");
    static const char again[] = "{\"path\":\"/again\",\"status\":200}";
    assert_non_null(memmem(old->buf, old->len, again, sizeof again - 1));

    /* The idle clients go; their descriptors come back and the waiting ones are served. */
    for (int i = 0; i < IDLE; i++) client_free(idle[i]);
    assert_true(run_until(f->base, no_more_than_one, f->h, 3000));
    struct client *fresh = client_new(f, f->port);
    client_sends(fresh, "GET /fresh HTTP/1.1\r\nHost: h\r\n\r\n");
    wait_replies(f, fresh, 1);
    assert_int_equal(status_of(fresh, 0), 200);
    spin(f, 1100); /* a second without failures ends the episode at the next accept */
    client_free(fresh);
    struct client *last = client_new(f, f->port);
    client_sends(last, "GET /last HTTP/1.1\r\nHost: h\r\n\r\n");
    wait_replies(f, last, 1);
    client_free(last);

    for (int i = 0; i < nfill; i++) close(filler[i]);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &saved), 0);
    dup2(saved_err, STDERR_FILENO);
    close(saved_err);
    char text[4096] = "";
    size_t n = (size_t)pread(fileno(log), text, sizeof text - 1, 0);
    text[n] = '\0';
    fclose(log);

    /* Failures stopped accepting: three descriptors taken, then one failure per pause, as many
     * pauses as fit in the time the loop really ran (a listener left enabled fails on every loop
     * turn, thousands in 1.2 s). */
    uint64_t most = 2 + spun / (HTTPD_ACCEPT_PAUSE_MS * 1000ULL);
    if (errors < 1 || errors > most)
        fail_msg("%llu accept failures in %llu ms (at most %llu)", (unsigned long long)errors,
                 (unsigned long long)(spun / 1000), (unsigned long long)most);
    assert_true(open >= 2 && open <= 5);
    const char *warn = strstr(text, "accept failed: Too many open files");
    if (!warn) fail_msg("no accept warning in: %s", text);
    assert_null(strstr(warn + 1, "accept failed"));
    assert_non_null(strstr(text, "accepting connections again (the warning occurred"));
    client_free(old);
    fixture_free(f);
}

static void test_reset_gives_econnreset(void **state) {
    struct fixture *f = fixture_new(NULL, NULL);
    f->mode = MODE_RESET;
    struct client *c = client_new(f, f->port);
    client_sends(c, "GET /rst HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_true(run_until(f->base, closed, c, 3000));
    assert_int_equal(c->err, ECONNRESET);
    assert_int_equal(c->len, 0);
    assert_int_equal(httpd_inflight(f->h), 0);
    client_free(c);
    fixture_free(f);
}

static void test_drop_gives_eof(void **state) {
    struct fixture *f = fixture_new(NULL, NULL);
    f->mode = MODE_DROP;
    struct client *c = client_new(f, f->port);
    client_sends(c, "GET /drop HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_true(run_until(f->base, closed, c, 3000));
    assert_int_equal(c->err, 0);
    assert_true(c->eof);
    assert_int_equal(c->len, 0);
    assert_int_equal(httpd_inflight(f->h), 0);
    client_free(c);
    fixture_free(f);
}

/* The 1-in-3 race of issue 12: the client sends its request and shuts down its sending side;
 * the reply comes from a later loop turn (as an upstream answer does), after the server saw the
 * EOF. Every try must get the reply, then the close. */
static void test_half_close_async_reply(void **state) {
    struct fixture *f = fixture_new(NULL, NULL);
    f->mode = MODE_LATER;
    for (int i = 0; i < 90; i++) {
        f->later_ms = i % 3 == 0 ? 0 : i % 3 == 1 ? 2 : 20;
        struct client *c = client_new(f, f->port);
        if (i % 2) {
            client_sends(c, "GET /half HTTP/1.1\r\nHost: h\r\n\r\n");
        } else {
            client_sends(c, "POST /half HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc");
        }
        shutdown(c->fd, SHUT_WR);
        if (!run_until(f->base, closed, c, 3000)) fail_msg("try %d: no close", i);
        if (c->err != 0 || complete_replies(c) != 1 || status_of(c, 0) != 200)
            fail_msg("try %d (reply after %d ms): err %d, %d replies: %.*s", i, f->later_ms, c->err,
                     complete_replies(c), (int)c->len, c->buf);
        assert_non_null(memmem(c->buf, c->len, "{\"later\":1}", 11));
        assert_non_null(memmem(c->buf, c->len, "Connection: close\r\n", 19));
        client_free(c);
    }
    assert_int_equal(f->cancels, 0);
    assert_int_equal(httpd_inflight(f->h), 0);
    assert_true(run_until(f->base, no_connections, f->h, 3000));
    fixture_free(f);
}

/* A stalled request asked to end on EOF (the mock's stall) is cancelled by a half-close. */
static void test_cancel_on_eof(void **state) {
    struct fixture *f = fixture_new(NULL, NULL);
    f->mode = MODE_STALL_EOF;
    for (int i = 0; i < 2; i++) {
        f->cancels = 0;
        f->seen.count = 0;
        struct client *c = client_new(f, f->port);
        client_sends(c, "GET /stall HTTP/1.1\r\nHost: h\r\n\r\n");
        /* First with the EOF after the handler asked, then with it already there. */
        if (i == 0) assert_true(run_until(f->base, got_request, f, 3000));
        shutdown(c->fd, SHUT_WR);
        assert_true(run_until(f->base, got_cancel, f, 3000));
        assert_true(run_until(f->base, closed, c, 3000));
        assert_int_equal(c->len, 0);
        assert_int_equal(httpd_inflight(f->h), 0);
        client_free(c);
    }
    assert_true(run_until(f->base, no_connections, f->h, 3000));
    fixture_free(f);
}

/* Without it, a client's EOF leaves the request to its handler; a reset ends it. */
static void test_cancel_on_client_close(void **state) {
    struct fixture *f = fixture_new(NULL, NULL);
    f->mode = MODE_STALL;
    struct client *e = client_new(f, f->port);
    client_sends(e, "GET /stall HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_true(run_until(f->base, got_request, f, 3000));
    client_free(e);
    run_until(f->base, got_cancel, f, 200);
    assert_int_equal(f->cancels, 0);
    assert_int_equal(httpd_inflight(f->h), 1);
    /* The handler answers at last; the write meets a closed peer and the connection goes. */
    struct httpd_req *req = f->stalled;
    f->stalled = NULL;
    httpd_set_cancel(req, NULL, NULL);
    httpd_reply(req, 200, "text/plain", "late", 4);
    assert_int_equal(httpd_inflight(f->h), 0);
    assert_true(run_until(f->base, no_connections, f->h, 3000));

    f->seen.count = 0;
    struct client *c = client_new(f, f->port);
    client_sends(c, "GET /stall HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_true(run_until(f->base, got_request, f, 3000));
    assert_int_equal(httpd_inflight(f->h), 1);
    /* The stalled request stays while the client waits. */
    run_until(f->base, got_cancel, f, 100);
    assert_int_equal(f->cancels, 0);
    struct linger lg = {1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    client_free(c);
    assert_true(run_until(f->base, got_cancel, f, 3000));
    run_until(f->base, got_cancel, f, 50);
    assert_int_equal(f->cancels, 1);
    assert_int_equal(httpd_inflight(f->h), 0);
    assert_int_equal(httpd_connections(f->h), 0);
    fixture_free(f);
}

static void test_free_cancels_pending(void **state) {
    struct fixture *f = fixture_new(NULL, NULL);
    f->mode = MODE_STALL;
    struct client *c = client_new(f, f->port);
    client_sends(c, "GET /stall HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_true(run_until(f->base, got_request, f, 3000));
    httpd_free(f->h);
    assert_int_equal(f->cancels, 1);
    f->h = httpd_new(f->base, NULL, on_request, f);
    assert_true(run_until(f->base, closed, c, 3000));
    assert_int_equal(f->cancels, 1);
    client_free(c);
    fixture_free(f);
}

static void test_stop_accepting_drains(void **state) {
    struct fixture *f = fixture_new(NULL, NULL);
    f->mode = MODE_STALL;
    struct client *idle = client_new(f, f->port);
    struct client *busy = client_new(f, f->port);
    client_sends(busy, "GET /busy HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_true(run_until(f->base, got_request, f, 3000));
    assert_int_equal(httpd_connections(f->h), 2);
    httpd_stop_accepting(f->h);
    assert_true(run_until(f->base, closed, idle, 3000));
    assert_int_equal(httpd_inflight(f->h), 1);
    httpd_reply(f->stalled, 200, "text/plain", "done", 4);
    f->stalled = NULL;
    assert_true(run_until(f->base, closed, busy, 3000));
    assert_int_equal(complete_replies(busy), 1);
    assert_int_equal(httpd_inflight(f->h), 0);
    assert_int_equal(f->cancels, 0);
    client_free(idle);
    client_free(busy);
    fixture_free(f);
}

/* ---- TLS ---- */

struct tls_files {
    char cert[64];
    char key[64];
};

static void write_self_signed(struct tls_files *tf) {
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    assert_non_null(pkey);
    X509 *x = X509_new();
    assert_non_null(x);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, pkey);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1,
                               0);
    X509_set_issuer_name(x, name);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext =
        X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
    assert_non_null(ext);
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    ext = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, "critical,CA:TRUE");
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    assert_true(X509_sign(x, pkey, EVP_sha256()) > 0);

    snprintf(tf->cert, sizeof tf->cert, "/tmp/test_httpd_cert_XXXXXX");
    snprintf(tf->key, sizeof tf->key, "/tmp/test_httpd_key_XXXXXX");
    int cfd = mkstemp(tf->cert), kfd = mkstemp(tf->key);
    assert_true(cfd >= 0 && kfd >= 0);
    FILE *cf = fdopen(cfd, "w"), *kf = fdopen(kfd, "w");
    assert_true(PEM_write_X509(cf, x) == 1);
    assert_true(PEM_write_PrivateKey(kf, pkey, NULL, NULL, 0, NULL, NULL) == 1);
    fclose(cf);
    fclose(kf);
    X509_free(x);
    EVP_PKEY_free(pkey);
}

struct tls_client {
    struct evbuffer *got;
    int done;
    int error;
};

static void tls_read_cb(struct bufferevent *bev, void *arg) {
    struct tls_client *tc = arg;
    evbuffer_add_buffer(tc->got, bufferevent_get_input(bev));
    size_t len = evbuffer_get_length(tc->got);
    const char *s = (const char *)evbuffer_pullup(tc->got, -1);
    if (len && memmem(s, len, "\"status\":200}", 13)) tc->done = 1;
}

static void tls_event_cb(struct bufferevent *bev, short what, void *arg) {
    struct tls_client *tc = arg;
    if (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF)) tc->error = 1;
}

static int tls_finished(void *arg) {
    struct tls_client *tc = arg;
    return tc->done || tc->error;
}

static void tls_roundtrip(struct fixture *f, SSL_CTX *cctx, const char *host, int verify,
                          int expect_ok) {
    struct tls_client tc = {evbuffer_new(), 0, 0};
    SSL *ssl = tls_client_ssl_new(cctx, host, verify);
    assert_non_null(ssl);
    struct bufferevent *bev = bufferevent_openssl_socket_new(
        f->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
    assert_non_null(bev);
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    bufferevent_setcb(bev, tls_read_cb, NULL, tls_event_cb, &tc);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)f->port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bufferevent_socket_connect(bev, (struct sockaddr *)&sin, sizeof sin), 0);
    bufferevent_write(bev, "GET /tls HTTP/1.1\r\nHost: localhost\r\n\r\n", 38);
    assert_true(run_until(f->base, tls_finished, &tc, 3000));
    assert_int_equal(tc.done, expect_ok);
    bufferevent_free(bev);
    evbuffer_free(tc.got);
}

static void test_tls_listener(void **state) {
    struct tls_files tf;
    char err[256] = "";
    tls_global_init();
    write_self_signed(&tf);
    SSL_CTX *sctx = tls_server_ctx_new(tf.cert, tf.key, err, sizeof err);
    if (!sctx) fail_msg("tls_server_ctx_new: %s", err);
    /* A key that does not match the certificate is refused with a reason. */
    assert_null(tls_server_ctx_new(tf.cert, "/nonexistent/key.pem", err, sizeof err));
    assert_true(strstr(err, "/nonexistent/key.pem") != NULL);

    struct tls_server *sts = tls_server_wrap(sctx);
    assert_non_null(sts);
    struct fixture *f = fixture_new(NULL, sts);
    SSL_CTX *noverify = tls_client_ctx_new(NULL, 0, err, sizeof err);
    assert_non_null(noverify);
    tls_roundtrip(f, noverify, "localhost", 0, 1);
    assert_int_equal(f->seen.is_tls, 1);
    assert_string_equal(f->seen.path, "/tls");

    /* Verification against the certificate as CA: by name, by IP literal, and a wrong name. */
    SSL_CTX *verify = tls_client_ctx_new(tf.cert, 1, err, sizeof err);
    if (!verify) fail_msg("tls_client_ctx_new: %s", err);
    tls_roundtrip(f, verify, "localhost", 1, 1);
    tls_roundtrip(f, verify, "127.0.0.1", 1, 1);
    tls_roundtrip(f, verify, "wrong.example", 1, 0);

    SSL_CTX_free(noverify);
    SSL_CTX_free(verify);
    fixture_free(f);
    tls_server_free(sts);
    unlink(tf.cert);
    unlink(tf.key);
}

/* A listener's certificate is replaced for new handshakes; files that do not load leave the one
 * in use. Each self-signed certificate is its own CA, so a client trusting only the first one
 * tells the two apart. */
static void test_tls_reload(void **state) {
    struct tls_files a, b;
    char err[256] = "";
    tls_global_init();
    write_self_signed(&a);
    write_self_signed(&b);
    struct tls_server *ts = tls_server_new(a.cert, a.key, err, sizeof err);
    if (!ts) fail_msg("tls_server_new: %s", err);
    struct fixture *f = fixture_new(NULL, ts);
    SSL_CTX *trust_a = tls_client_ctx_new(a.cert, 1, err, sizeof err);
    SSL_CTX *trust_b = tls_client_ctx_new(b.cert, 1, err, sizeof err);
    assert_non_null(trust_a);
    assert_non_null(trust_b);
    tls_roundtrip(f, trust_a, "localhost", 1, 1);
    tls_roundtrip(f, trust_b, "localhost", 1, 0);

    /* a key that is not the certificate's, and a missing file: refused, a stays */
    assert_int_equal(tls_server_reload(ts, b.cert, a.key, err, sizeof err), -1);
    assert_true(strlen(err) > 0);
    assert_int_equal(tls_server_reload(ts, "/nonexistent/c.pem", b.key, err, sizeof err), -1);
    assert_non_null(strstr(err, "/nonexistent/c.pem"));
    tls_roundtrip(f, trust_a, "localhost", 1, 1);

    assert_int_equal(tls_server_reload(ts, b.cert, b.key, err, sizeof err), 0);
    tls_roundtrip(f, trust_b, "localhost", 1, 1);
    tls_roundtrip(f, trust_a, "localhost", 1, 0);

    SSL_CTX_free(trust_a);
    SSL_CTX_free(trust_b);
    fixture_free(f);
    tls_server_free(ts);
    unlink(a.cert);
    unlink(a.key);
    unlink(b.cert);
    unlink(b.key);
}

static void test_reason_and_ipv6(void **state) {
    assert_string_equal(httpd_reason(200), "OK");
    assert_string_equal(httpd_reason(413), "Content Too Large");
    assert_string_equal(httpd_reason(431), "Request Header Fields Too Large");
    struct event_base *base = event_base_new();
    struct httpd *h = httpd_new(base, NULL, on_request, NULL);
    char err[256] = "";
    int p6 = httpd_listen(h, "::1", 0, NULL, 1, err, sizeof err);
    /* A machine without IPv6 loopback is told so in err; with it, the port is real. */
    if (p6 < 0)
        assert_true(strlen(err) > 0);
    else
        assert_true(p6 > 0);
    assert_true(httpd_listen(h, "localhost", 0, NULL, 0, err, sizeof err) > 0);
    assert_int_equal(httpd_listen(h, "256.1.1.1", 0, NULL, 0, err, sizeof err), -1);
    assert_true(strlen(err) > 0);
    httpd_free(h);
    httpd_free(NULL);
    event_base_free(base);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_and_post),
        cmocka_unit_test(test_keepalive_three),
        cmocka_unit_test(test_keepalive_block_reuse),
        cmocka_unit_test(test_pipelining_in_order),
        cmocka_unit_test(test_pipelining_async_reply),
        cmocka_unit_test(test_chunked_body),
        cmocka_unit_test(test_expect_continue),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_framing_rfc9112),
        cmocka_unit_test(test_half_close_gets_reply),
        cmocka_unit_test(test_max_connections),
        cmocka_unit_test(test_emfile_pauses_accepting),
        cmocka_unit_test(test_reset_gives_econnreset),
        cmocka_unit_test(test_drop_gives_eof),
        cmocka_unit_test(test_half_close_async_reply),
        cmocka_unit_test(test_cancel_on_eof),
        cmocka_unit_test(test_cancel_on_client_close),
        cmocka_unit_test(test_free_cancels_pending),
        cmocka_unit_test(test_stop_accepting_drains),
        cmocka_unit_test(test_tls_listener),
        cmocka_unit_test(test_tls_reload),
        cmocka_unit_test(test_reason_and_ipv6),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
