/* test_upstream.c: the upstream client against a fake upstream (the project's httpd) on
 * 127.0.0.1 in the same event_base, over plain HTTP and over TLS with a CA and leaf certificate
 * made here with the OpenSSL API; and upstream_params, the signed request sent upstream. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "capgate/clock.h"
#include "capgate/httpd.h"
#include "capgate/params.h"
#include "capgate/sign.h"
#include "capgate/tls.h"
#include "config.h"
#include "upstream.h"

enum fake_mode { FAKE_JSON, FAKE_500, FAKE_TEXT, FAKE_STALL, FAKE_RESET, FAKE_RESET_ONCE };

/* The fake upstream and what it saw. */
struct fake {
    struct event_base *base;
    struct httpd *httpd;
    int port;
    enum fake_mode mode;
    unsigned requests;
    size_t max_connections_seen;
    char method[8];
    char host[128];
    char content_type[128];
    char user_agent[64];
    char body[512];
    char query[512];
    char bodies[4][512]; /* the first four request bodies */
    struct httpd_req *stalled;
};

/* One call's outcome, copied out of the callback. */
struct outcome {
    int done;
    int ok;
    int http_status;
    int breaker_rejected;
    int json_fields; /* the result had JSON fields (test_raw_ok_passes_a_script) */
    int nothing_sent;
    int timed_out;
    unsigned attempts;
    uint64_t latency_us;
    char error[256];
    char body[256];
    int fired_inside_call;
    struct event_base *base;
};

static int g_inside_call;
static char g_dir[64];
static char g_ca[128], g_cert[128], g_key[128], g_wrong_ca[128];

static void copy_str(char *dst, size_t n, const char *src) {
    snprintf(dst, n, "%s", src ? src : "");
}

static const char *find_header(const struct httpd_req *req, const char *name) {
    for (size_t i = 0; i < req->header_count; i++)
        if (strcasecmp(req->headers[i].name, name) == 0) return req->headers[i].value;
    return NULL;
}

static void fake_cancel(struct httpd_req *req, void *arg) {
    struct fake *f = arg;

    if (f->stalled == req) f->stalled = NULL;
}

static void fake_handler(struct httpd_req *req, void *arg) {
    static const char json[] = "{\"code\":0,\"codeDesc\":\"Success\",\"url\":\"https://x\"}";
    struct fake *f = arg;
    size_t conns = httpd_connections(f->httpd);

    f->requests++;
    if (conns > f->max_connections_seen) f->max_connections_seen = conns;
    copy_str(f->method, sizeof(f->method), req->method);
    copy_str(f->host, sizeof(f->host), req->host);
    copy_str(f->content_type, sizeof(f->content_type), req->content_type);
    copy_str(f->user_agent, sizeof(f->user_agent), find_header(req, "User-Agent"));
    copy_str(f->body, sizeof(f->body), req->body);
    copy_str(f->query, sizeof(f->query), req->query);
    if (f->requests <= 4) copy_str(f->bodies[f->requests - 1], sizeof(f->bodies[0]), req->body);
    switch (f->mode) {
    case FAKE_JSON: httpd_reply(req, 200, "application/json", json, strlen(json)); break;
    case FAKE_500: httpd_reply(req, 500, "text/html", "<h1>oops</h1>", 13); break;
    case FAKE_TEXT: httpd_reply(req, 200, "text/html", "<html>maintenance</html>", 24); break;
    case FAKE_STALL:
        f->stalled = req;
        httpd_set_cancel(req, fake_cancel, f);
        httpd_cancel_on_eof(req); /* like the mock's stall: ends when the client leaves */
        break;
    case FAKE_RESET: httpd_reset(req); break;
    case FAKE_RESET_ONCE: /* as a server closing an idle connection just as a request came */
        f->mode = FAKE_JSON;
        httpd_reset(req);
        break;
    }
}

static void fake_start(struct fake *f, struct tls_server *server_tls) {
    char err[256];

    memset(f, 0, sizeof(*f));
    f->base = event_base_new();
    assert_non_null(f->base);
    f->httpd = httpd_new(f->base, NULL, fake_handler, f);
    assert_non_null(f->httpd);
    f->port = httpd_listen(f->httpd, "127.0.0.1", 0, server_tls, 0, err, sizeof(err));
    if (f->port <= 0) fail_msg("listen: %s", err);
}

static void fake_stop(struct fake *f) {
    httpd_free(f->httpd);
    event_base_free(f->base);
}

static void on_done(const struct upstream_result *r, void *arg) {
    struct outcome *o = arg;

    o->done = 1;
    o->fired_inside_call = g_inside_call;
    o->ok = r->ok;
    o->http_status = r->http_status;
    o->breaker_rejected = r->breaker_rejected;
    o->nothing_sent = r->nothing_sent;
    o->timed_out = r->timed_out;
    o->attempts = r->attempts;
    o->latency_us = r->latency_us;
    copy_str(o->error, sizeof(o->error), r->error);
    if (r->body) {
        size_t n = r->body_len < sizeof(o->body) - 1 ? r->body_len : sizeof(o->body) - 1;
        memcpy(o->body, r->body, n);
        o->body[n] = '\0';
    }
    event_base_loopbreak(o->base);
}

static void guard_cb(evutil_socket_t fd, short what, void *arg) {
    event_base_loopbreak(arg);
}

/* Runs the loop until the call completes, at most 10 s. */
static void wait_for(struct event_base *base, struct outcome *o) {
    struct event *guard = evtimer_new(base, guard_cb, base);
    struct timeval tv = {10, 0};

    evtimer_add(guard, &tv);
    while (!o->done) {
        event_base_dispatch(base);
        if (!o->done && !evtimer_pending(guard, NULL)) break;
    }
    event_free(guard);
    assert_true(o->done);
}

/* Lets the loop run for ms (connections settle, the fake server notices closes). */
static void spin(struct event_base *base, unsigned ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

static void call(struct upstream *u, struct event_base *base, const char *method,
                 const char *params, struct outcome *o) {
    memset(o, 0, sizeof(*o));
    o->base = base;
    g_inside_call = 1;
    assert_int_equal(upstream_call(u, method, params, on_done, o), 0);
    g_inside_call = 0;
    assert_int_equal(o->done, 0);
    wait_for(base, o);
    assert_int_equal(o->fired_inside_call, 0);
}

static void plain_options(struct upstream_options *o, int port) {
    memset(o, 0, sizeof(*o));
    o->host = "127.0.0.1";
    o->port = port;
    o->path = "/v2/index.php";
    o->sign_host = "csec.api.qcloud.com";
    o->connect_timeout_ms = 1000;
    o->timeout_ms = 2000;
    o->retries = 1;
    o->max_connections = 4;
    o->breaker_failures = 5;
    o->breaker_open_ms = 5000;
}

static struct upstream *new_upstream(struct event_base *base, const struct upstream_options *o) {
    char err[256] = "";
    struct upstream *u = upstream_new(base, o, err, sizeof(err));

    if (!u) fail_msg("upstream_new: %s", err);
    return u;
}

/* A port on 127.0.0.1 that nothing listens on. */
static int closed_port(void) {
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int port;

    assert_true(fd >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

/* TCP_NODELAY of this process's socket connected to 127.0.0.1:port (the client's side: a server's
 * accepted sockets have the client's port as peer): 1 or 0, or -1 when there is no such socket. */
static int client_nodelay(int port) {
    for (int fd = 3; fd < 1024; fd++) {
        struct sockaddr_in sa;
        socklen_t len = sizeof(sa);
        int v = 0;
        socklen_t vlen = sizeof(v);

        if (getpeername(fd, (struct sockaddr *)&sa, &len) != 0 || sa.sin_family != AF_INET ||
            ntohs(sa.sin_port) != port)
            continue;
        if (getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &vlen) != 0) return -1;
        return v != 0;
    }
    return -1;
}

/* --- plain HTTP -------------------------------------------------------------------------- */

static void test_post_roundtrip(void **state) {
    struct fake f;
    struct upstream_options o;
    struct upstream *u;
    struct outcome r;
    struct upstream_stats st;
    char ua[64];

    fake_start(&f, NULL);
    plain_options(&o, f.port);
    u = new_upstream(f.base, &o);
    call(u, f.base, "POST", "Action=CaptchaIframeQuery&businessId=1", &r);
    assert_int_equal(r.ok, 1);
    assert_int_equal(r.http_status, 200);
    assert_string_equal(r.error, "");
    assert_string_equal(r.body, "{\"code\":0,\"codeDesc\":\"Success\",\"url\":\"https://x\"}");
    assert_int_equal(r.attempts, 1);
    assert_int_equal(r.nothing_sent, 0);
    assert_true(r.latency_us > 0);
    assert_int_equal(f.requests, 1);
    assert_string_equal(f.method, "POST");
    assert_string_equal(f.host, "csec.api.qcloud.com");
    assert_string_equal(f.content_type, "application/x-www-form-urlencoded");
    assert_string_equal(f.body, "Action=CaptchaIframeQuery&businessId=1");
    snprintf(ua, sizeof(ua), "capgate/%s", CAPGATE_VERSION);
    assert_string_equal(f.user_agent, ua);
    upstream_get_stats(u, &st);
    assert_int_equal(st.requests, 1);
    assert_int_equal(st.failures, 0);
    assert_int_equal(st.latency_count, 1);
    assert_int_equal(st.open_connections, 1);
    assert_int_equal(st.idle_connections, 1);
    assert_int_equal(st.breaker, BREAKER_CLOSED);
    upstream_free(u);
    fake_stop(&f);
}

static void test_get_sends_query(void **state) {
    struct fake f;
    struct upstream_options o;
    struct upstream *u;
    struct outcome r;

    fake_start(&f, NULL);
    plain_options(&o, f.port);
    u = new_upstream(f.base, &o);
    call(u, f.base, "GET", "Action=CaptchaCheck&ticket=t%2B1", &r);
    assert_int_equal(r.ok, 1);
    assert_string_equal(f.method, "GET");
    assert_string_equal(f.query, "Action=CaptchaCheck&ticket=t%2B1");
    assert_string_equal(f.body, "");
    assert_int_equal(upstream_call(u, "PUT", "a=1", on_done, &r), -1);
    upstream_free(u);
    fake_stop(&f);
}

static void test_keepalive_reuses_one_connection(void **state) {
    struct fake f;
    struct upstream_options o;
    struct upstream *u;
    struct outcome r;
    struct upstream_stats st;

    fake_start(&f, NULL);
    plain_options(&o, f.port);
    u = new_upstream(f.base, &o);
    for (int i = 0; i < 5; i++) {
        call(u, f.base, "POST", "Action=CaptchaIframeQuery", &r);
        assert_int_equal(r.ok, 1);
    }
    assert_int_equal(f.requests, 5);
    assert_int_equal(f.max_connections_seen, 1);
    assert_int_equal(httpd_connections(f.httpd), 1);
    assert_int_equal(client_nodelay(f.port), 1);
    upstream_get_stats(u, &st);
    assert_int_equal(st.open_connections, 1);
    assert_int_equal(st.requests, 5);
    upstream_free(u);
    fake_stop(&f);
}

static void test_pool_caps_connections_and_queues(void **state) {
    struct fake f;
    struct upstream_options o;
    struct upstream *u;
    struct outcome r[6];
    struct upstream_stats st;
    unsigned done;

    fake_start(&f, NULL);
    plain_options(&o, f.port);
    o.max_connections = 2;
    o.max_queued = 3;
    u = new_upstream(f.base, &o);
    for (int i = 0; i < 6; i++) {
        memset(&r[i], 0, sizeof(r[i]));
        r[i].base = f.base;
        assert_int_equal(upstream_call(u, "POST", "Action=CaptchaIframeQuery", on_done, &r[i]), 0);
    }
    for (;;) {
        done = 0;
        for (int i = 0; i < 6; i++) done += (unsigned)r[i].done;
        if (done == 6) break;
        wait_for(f.base, &r[0]);
        spin(f.base, 20);
    }
    /* 2 on connections + 3 queued; the sixth found the queue full */
    for (int i = 0; i < 5; i++) assert_int_equal(r[i].ok, 1);
    assert_int_equal(r[5].ok, 0);
    assert_string_equal(r[5].error, "upstream queue is full");
    assert_int_equal(r[5].nothing_sent, 1);
    assert_int_equal(f.requests, 5);
    assert_true(f.max_connections_seen <= 2);
    upstream_get_stats(u, &st);
    assert_int_equal(st.open_connections, 2);
    upstream_free(u);
    fake_stop(&f);
}

/* A raw listening socket on 127.0.0.1; *port gets its port. */
static int raw_listener(int *port) {
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);

    assert_true(fd >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 8), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

/* Reads one request head from the raw server side, turning the client's loop meanwhile. */
static size_t raw_read_request(struct event_base *base, int fd, char *buf, size_t cap) {
    size_t n = 0;
    uint64_t until = clock_mono_us() + 5000000;

    buf[0] = '\0';
    while (!strstr(buf, "\r\n\r\n") && clock_mono_us() < until) {
        ssize_t got = recv(fd, buf + n, cap - 1 - n, MSG_DONTWAIT);
        if (got > 0) {
            n += (size_t)got;
            buf[n] = '\0';
        } else {
            event_base_loop(base, EVLOOP_NONBLOCK);
            usleep(1000);
        }
    }
    return n;
}

static const char raw_reply[] = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{\"code\":0}";

/* One GET call answered by the raw server side: accepts the client's connection first when *sfd
 * is -1, reads the request head into buf, sends reply and waits for a successful outcome. */
static void raw_call(struct upstream *u, struct event_base *base, int lfd, int *sfd,
                     const char *params, const char *reply, char *buf, size_t cap) {
    struct outcome r;
    uint64_t until = clock_mono_us() + 5000000;

    memset(&r, 0, sizeof(r));
    r.base = base;
    assert_int_equal(upstream_call(u, "GET", params, on_done, &r), 0);
    while (*sfd < 0 && clock_mono_us() < until) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        *sfd = accept(lfd, NULL, NULL);
        if (*sfd < 0) usleep(1000);
    }
    assert_true(*sfd >= 0);
    assert_true(raw_read_request(base, *sfd, buf, cap) > 0);
    assert_int_equal(send(*sfd, reply, strlen(reply), 0), (ssize_t)strlen(reply));
    wait_for(base, &r);
    assert_int_equal(r.ok, 1);
}

/* On a warm keep-alive connection the request is on the wire when upstream_call returns: it does
 * not wait for the loop to report the socket writable. */
static void test_warm_connection_writes_before_the_loop_turns(void **state) {
    struct event_base *base = event_base_new();
    struct upstream_options o;
    struct upstream *u;
    struct outcome r;
    char buf[2048];
    int port, lfd = raw_listener(&port), sfd = -1, extra;
    ssize_t got;

    plain_options(&o, port);
    u = new_upstream(base, &o);
    raw_call(u, base, lfd, &sfd, "Action=CaptchaQuery&n=1", raw_reply, buf, sizeof(buf));
    assert_non_null(strstr(buf, "GET /v2/index.php?Action=CaptchaQuery&n=1 HTTP/1.1\r\n"));

    memset(&r, 0, sizeof(r));
    r.base = base;
    assert_int_equal(upstream_call(u, "GET", "Action=CaptchaQuery&n=2", on_done, &r), 0);
    usleep(20000); /* loopback delivery; the client's loop does not run */
    got = recv(sfd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
    assert_true(got > 0);
    buf[got] = '\0';
    assert_non_null(strstr(buf, "GET /v2/index.php?Action=CaptchaQuery&n=2 HTTP/1.1\r\n"));
    assert_non_null(strstr(buf, "\r\n\r\n"));
    assert_int_equal(send(sfd, raw_reply, strlen(raw_reply), 0), (ssize_t)strlen(raw_reply));
    wait_for(base, &r);
    assert_int_equal(r.ok, 1);
    assert_string_equal(r.body, "{\"code\":0}");
    extra = accept(lfd, NULL, NULL);
    assert_int_equal(extra, -1); /* both calls used the one connection */
    upstream_free(u);
    close(sfd);
    close(lfd);
    event_base_free(base);
}

/* The server closes a kept-alive connection. The client notices while the connection is idle,
 * and the next call goes out on a new one; its socket most likely reuses the old descriptor
 * number, which must be watched afresh (a watcher left on the old socket would leave the new one
 * unwatched or call into a freed connection). */
static void test_connection_closed_while_idle_is_replaced(void **state) {
    struct event_base *base = event_base_new();
    struct upstream_options o;
    struct upstream *u;
    struct upstream_stats st;
    char buf[2048];
    int port, lfd = raw_listener(&port), sfd = -1;

    plain_options(&o, port);
    u = new_upstream(base, &o);
    for (int round = 0; round < 3; round++) {
        /* a new connection, then the same one kept alive */
        raw_call(u, base, lfd, &sfd, "Action=CaptchaQuery", raw_reply, buf, sizeof(buf));
        raw_call(u, base, lfd, &sfd, "Action=CaptchaQuery", raw_reply, buf, sizeof(buf));
        close(sfd);
        sfd = -1;
        spin(base, 50);
        upstream_get_stats(u, &st);
        assert_int_equal(st.open_connections, 0);
    }
    upstream_free(u);
    close(lfd);
    event_base_free(base);
}

/* A reply with "Connection: close": evhttp opens a new socket for the next call on the same
 * connection, and that socket gets TCP_NODELAY too (it may reuse the old descriptor number). */
static void test_socket_after_connection_close_gets_nodelay(void **state) {
    static const char closing[] =
        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 10\r\n\r\n{\"code\":0}";
    struct event_base *base = event_base_new();
    struct upstream_options o;
    struct upstream *u;
    char buf[2048];
    int port, lfd = raw_listener(&port), sfd = -1;

    plain_options(&o, port);
    u = new_upstream(base, &o);
    raw_call(u, base, lfd, &sfd, "Action=CaptchaQuery", closing, buf, sizeof(buf));
    close(sfd);
    sfd = -1;
    spin(base, 20);
    assert_int_equal(client_nodelay(port), -1); /* the client closed its side */
    raw_call(u, base, lfd, &sfd, "Action=CaptchaQuery", raw_reply, buf, sizeof(buf));
    assert_int_equal(client_nodelay(port), 1);
    upstream_free(u);
    close(sfd);
    close(lfd);
    event_base_free(base);
}

static uint64_t cpu_us(void) {
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000u +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* A reply that arrives while a request on a warm connection is still being written (the server
 * has not read a large body yet): the socket is readable while evhttp is busy writing, and the
 * client must not spin on it (the second read watcher of upstream.c fires there). When the server
 * drains the body, the reply is read as usual. */
static void test_reply_during_a_long_write_does_not_spin(void **state) {
    struct event_base *base = event_base_new();
    struct upstream_options o;
    struct upstream *u;
    struct outcome r;
    size_t big = 32u << 20;
    char *body = malloc(big + 1), buf[65536];
    int port, lfd = raw_listener(&port), sfd = -1;
    uint64_t until, cpu0, cpu;

    assert_non_null(body);
    memset(body, 'a', big);
    body[big] = '\0';
    plain_options(&o, port);
    o.timeout_ms = 5000;
    u = new_upstream(base, &o);
    raw_call(u, base, lfd, &sfd, "Action=CaptchaQuery", raw_reply, buf, sizeof(buf));

    memset(&r, 0, sizeof(r));
    r.base = base;
    assert_int_equal(upstream_call(u, "POST", body, on_done, &r), 0);
    assert_int_equal(send(sfd, raw_reply, strlen(raw_reply), 0), (ssize_t)strlen(raw_reply));
    cpu0 = cpu_us();
    spin(base, 300);
    cpu = cpu_us() - cpu0;
    assert_int_equal(r.done, 0);
    /* a loop spinning on the socket burns the whole 300 ms */
    if (cpu > 100000)
        fail_msg("the client used %llu us of CPU in 300 ms while waiting", (unsigned long long)cpu);
    until = clock_mono_us() + 5000000;
    while (!r.done && clock_mono_us() < until) {
        if (recv(sfd, buf, sizeof(buf), MSG_DONTWAIT) <= 0) usleep(100);
        event_base_loop(base, EVLOOP_NONBLOCK);
    }
    assert_int_equal(r.done, 1);
    assert_int_equal(r.ok, 1);
    assert_string_equal(r.body, "{\"code\":0}");
    upstream_free(u);
    close(sfd);
    close(lfd);
    event_base_free(base);
    free(body);
}

static void test_stalled_upstream_times_out(void **state) {
    struct fake f;
    struct upstream_options o;
    struct upstream *u;
    struct outcome r;
    struct upstream_stats st;

    fake_start(&f, NULL);
    f.mode = FAKE_STALL;
    plain_options(&o, f.port);
    o.timeout_ms = 300;
    u = new_upstream(f.base, &o);
    call(u, f.base, "POST", "Action=CaptchaIframeQuery", &r);
    assert_int_equal(r.ok, 0);
    assert_string_equal(r.error, "upstream timed out after 300 ms");
    assert_int_equal(r.timed_out, 1); /* a 504 in the pipeline */
    assert_true(r.latency_us >= 280000);
    assert_true(r.latency_us < 1500000);
    assert_int_equal(r.nothing_sent, 0);
    assert_int_equal(r.attempts, 1);
    assert_int_equal(f.requests, 1);
    /* the connection was discarded: the fake server sees it close */
    spin(f.base, 100);
    assert_null(f.stalled);
    upstream_get_stats(u, &st);
    assert_int_equal(st.open_connections, 0);
    assert_int_equal(st.failures, 1);
    upstream_free(u);
    fake_stop(&f);
}

static void test_http_500_is_an_error_with_status(void **state) {
    struct fake f;
    struct upstream_options o;
    struct upstream *u;
    struct outcome r;

    fake_start(&f, NULL);
    f.mode = FAKE_500;
    plain_options(&o, f.port);
    u = new_upstream(f.base, &o);
    call(u, f.base, "POST", "Action=CaptchaIframeQuery", &r);
    assert_int_equal(r.ok, 0);
    assert_int_equal(r.http_status, 500);
    assert_string_equal(r.error, "upstream answered HTTP 500");
    assert_int_equal(r.timed_out, 0); /* a 502 */
    assert_string_equal(r.body, "<h1>oops</h1>");
    /* a status is never retried */
    assert_int_equal(r.attempts, 1);
    assert_int_equal(f.requests, 1);
    upstream_free(u);
    fake_stop(&f);
}

static void test_non_json_body_is_an_error(void **state) {
    struct fake f;
    struct upstream_options o;
    struct upstream *u;
    struct outcome r;

    fake_start(&f, NULL);
    f.mode = FAKE_TEXT;
    plain_options(&o, f.port);
    u = new_upstream(f.base, &o);
    call(u, f.base, "POST", "Action=CaptchaIframeQuery", &r);
    assert_int_equal(r.ok, 0);
    assert_int_equal(r.http_status, 200);
    assert_string_equal(r.error, "upstream reply is not JSON");
    assert_int_equal(r.timed_out, 0);
    assert_string_equal(r.body, "<html>maintenance</html>");
    upstream_free(u);
    fake_stop(&f);
}

/* A status outside 2xx with a JSON body is not a success: "HTTP/1.1 2 OK" was taken for one
 * (found by tests/fuzz/fuzz_upstream; its input is corpus/upstream/regress-status-2), and so
 * would a 1xx sent as the final status. */
static void test_status_below_200_is_an_error(void **state) {
    static const char *const replies[] = {
        "HTTP/1.1 2 OK\r\nContent-Length: 10\r\n\r\n{\"code\":0}",
        "HTTP/1.1 199 Odd\r\nContent-Length: 10\r\n\r\n{\"code\":0}",
    };
    for (size_t i = 0; i < sizeof(replies) / sizeof(replies[0]); i++) {
        struct event_base *base = event_base_new();
        struct upstream_options o;
        struct upstream *u;
        struct outcome r;
        char buf[2048], want[64];
        int port, lfd = raw_listener(&port), sfd = -1;
        uint64_t until = clock_mono_us() + 5000000;

        plain_options(&o, port);
        u = new_upstream(base, &o);
        memset(&r, 0, sizeof(r));
        r.base = base;
        assert_int_equal(upstream_call(u, "GET", "Action=CaptchaQuery", on_done, &r), 0);
        while (sfd < 0 && clock_mono_us() < until) {
            event_base_loop(base, EVLOOP_NONBLOCK);
            sfd = accept(lfd, NULL, NULL);
            if (sfd < 0) usleep(1000);
        }
        assert_true(sfd >= 0);
        assert_true(raw_read_request(base, sfd, buf, sizeof(buf)) > 0);
        assert_int_equal(send(sfd, replies[i], strlen(replies[i]), 0), (ssize_t)strlen(replies[i]));
        wait_for(base, &r);
        assert_int_equal(r.ok, 0);
        snprintf(want, sizeof(want), "upstream answered HTTP %d", r.http_status);
        assert_true(r.http_status < 200);
        assert_string_equal(r.error, want);
        upstream_free(u);
        close(sfd);
        close(lfd);
        event_base_free(base);
    }
}

/* UPSTREAM_RAW_OK (CaptchaQuery script=1): a 2xx body that is not JSON is ok, with upstream's
 * Content-Type, and a breaker success; a 5xx is still an error; without the flag the same body
 * is a failure again. */
static void raw_content_type(const struct upstream_result *r, void *arg) {
    struct outcome *o = arg;

    if (r->content_type) copy_str(o->error, sizeof(o->error), r->content_type);
    o->json_fields = r->fields != NULL;
    o->done = 1;
    o->ok = r->ok;
    o->http_status = r->http_status;
    if (r->body) {
        size_t n = r->body_len < sizeof(o->body) - 1 ? r->body_len : sizeof(o->body) - 1;
        memcpy(o->body, r->body, n);
        o->body[n] = '\0';
    }
    event_base_loopbreak(o->base);
}

static void call_raw(struct upstream *u, struct event_base *base, struct outcome *o) {
    memset(o, 0, sizeof(*o));
    o->base = base;
    assert_int_equal(upstream_call_flags(u, "POST", "Action=CaptchaQuery&script=1", UPSTREAM_RAW_OK,
                                         raw_content_type, o),
                     0);
    wait_for(base, o);
}

static void test_raw_ok_passes_a_script(void **state) {
    struct fake f;
    struct upstream_options o;
    struct upstream *u;
    struct upstream_stats st;
    struct outcome r;

    fake_start(&f, NULL);
    f.mode = FAKE_TEXT;
    plain_options(&o, f.port);
    o.breaker_failures = 2;
    u = new_upstream(f.base, &o);
    for (int i = 0; i < 4; i++) {
        call_raw(u, f.base, &r);
        assert_int_equal(r.ok, 1);
        assert_int_equal(r.http_status, 200);
        assert_string_equal(r.body, "<html>maintenance</html>");
        assert_string_equal(r.error, "text/html"); /* the Content-Type, passed on */
        assert_int_equal(r.json_fields, 0);
    }
    upstream_get_stats(u, &st);
    assert_int_equal(st.breaker, BREAKER_CLOSED);
    assert_int_equal(st.failures, 0);
    /* a 5xx is not a script */
    f.mode = FAKE_500;
    call_raw(u, f.base, &r);
    assert_int_equal(r.ok, 0);
    /* without the flag the same 2xx text is a failure: two failures open the breaker */
    f.mode = FAKE_TEXT;
    call(u, f.base, "POST", "Action=CaptchaIframeQuery", &r);
    assert_int_equal(r.ok, 0);
    assert_string_equal(r.error, "upstream reply is not JSON");
    upstream_get_stats(u, &st);
    assert_int_equal(st.breaker, BREAKER_OPEN);
    upstream_free(u);
    fake_stop(&f);
}

static void test_reset_after_sending_is_not_retried(void **state) {
    struct fake f;
    struct upstream_options o;
    struct upstream *u;
    struct outcome r;

    fake_start(&f, NULL);
    f.mode = FAKE_RESET;
    plain_options(&o, f.port);
    o.retries = 3;
    u = new_upstream(f.base, &o);
    call(u, f.base, "POST", "Action=CaptchaIframeQuery", &r);
    assert_int_equal(r.ok, 0);
    assert_int_equal(r.nothing_sent, 0);
    assert_non_null(strstr(r.error, "before replying"));
    /* a fresh connection: the request may have been processed, so it is not sent again */
    assert_int_equal(r.attempts, 1);
    assert_int_equal(f.requests, 1);
    upstream_free(u);
    fake_stop(&f);
}

struct signer {
    unsigned calls;
};

struct signed_call {
    struct signer sg;
    struct outcome r;
};

static char *sign_attempt(void *arg) {
    struct signer *sg = &((struct signed_call *)arg)->sg;
    char buf[64];

    sg->calls++;
    snprintf(buf, sizeof(buf), "Action=CaptchaIframeQuery&Nonce=%u", sg->calls);
    return strdup(buf);
}

static void on_signed_done(const struct upstream_result *r, void *arg) {
    on_done(r, &((struct signed_call *)arg)->r);
}

/* A reset of a reused keep-alive connection before any reply byte is retried, and the retry is
 * signed again: upstream may have seen the first attempt's Nonce. */
static void test_retry_signs_again(void **state) {
    struct fake f;
    struct upstream_options o;
    struct upstream *u;
    struct signed_call c;

    fake_start(&f, NULL);
    plain_options(&o, f.port);
    o.retries = 1;
    u = new_upstream(f.base, &o);
    call(u, f.base, "POST", "Action=CaptchaIframeQuery&warm=1", &c.r);
    assert_int_equal(c.r.ok, 1);
    f.mode = FAKE_RESET_ONCE;
    memset(&c, 0, sizeof(c));
    c.r.base = f.base;
    assert_int_equal(upstream_call_signed(u, "POST", sign_attempt, 0, on_signed_done, &c), 0);
    assert_int_equal(c.sg.calls, 1); /* the first attempt is signed inside the call */
    wait_for(f.base, &c.r);
    assert_int_equal(c.r.ok, 1);
    assert_int_equal(c.r.attempts, 2);
    assert_int_equal(c.sg.calls, 2);
    assert_int_equal(f.requests, 3);
    assert_string_equal(f.bodies[1], "Action=CaptchaIframeQuery&Nonce=1");
    assert_string_equal(f.bodies[2], "Action=CaptchaIframeQuery&Nonce=2");
    /* a sign failure fails the call without sending */
    assert_int_equal(upstream_call_signed(u, "POST", NULL, 0, on_done, &c.r), -1);
    upstream_free(u);
    fake_stop(&f);
}

static void test_refused_port_is_retried(void **state) {
    struct event_base *base = event_base_new();
    struct upstream_options o;
    struct upstream *u;
    struct outcome r;
    struct upstream_stats st;

    plain_options(&o, closed_port());
    o.retries = 2;
    u = new_upstream(base, &o);
    call(u, base, "POST", "Action=CaptchaIframeQuery", &r);
    assert_int_equal(r.ok, 0);
    assert_non_null(strstr(r.error, "connection refused"));
    assert_int_equal(r.timed_out, 0);
    assert_int_equal(r.attempts, 3);
    assert_int_equal(r.nothing_sent, 1);
    assert_int_equal(r.http_status, 0);
    upstream_get_stats(u, &st);
    assert_int_equal(st.retries, 2);
    assert_int_equal(st.failures, 1);
    assert_int_equal(st.open_connections, 0);
    upstream_free(u);
    event_base_free(base);
}

static void test_breaker_opens_rejects_and_probe_closes(void **state) {
    struct fake f;
    struct upstream_options o;
    struct upstream *u;
    struct outcome r;
    struct upstream_stats st;

    fake_start(&f, NULL);
    f.mode = FAKE_500;
    plain_options(&o, f.port);
    o.breaker_failures = 3;
    o.breaker_open_ms = 300;
    u = new_upstream(f.base, &o);
    for (int i = 0; i < 3; i++) {
        call(u, f.base, "POST", "Action=CaptchaIframeQuery", &r);
        assert_int_equal(r.http_status, 500);
        assert_int_equal(r.breaker_rejected, 0);
    }
    upstream_get_stats(u, &st);
    assert_int_equal(st.breaker, BREAKER_OPEN);
    /* open: rejected at once (asynchronously), nothing reaches upstream */
    f.mode = FAKE_JSON;
    call(u, f.base, "POST", "Action=CaptchaIframeQuery", &r);
    assert_int_equal(r.ok, 0);
    assert_int_equal(r.breaker_rejected, 1);
    assert_int_equal(r.nothing_sent, 1);
    assert_int_equal(r.attempts, 0);
    assert_true(r.latency_us < 100000);
    assert_non_null(strstr(r.error, "circuit breaker open after 3 consecutive failures; "
                                    "retrying in "));
    assert_int_equal(f.requests, 3);
    upstream_get_stats(u, &st);
    assert_int_equal(st.breaker_rejections, 1);
    /* after open_ms one probe goes through; its success closes the breaker */
    spin(f.base, 350);
    call(u, f.base, "POST", "Action=CaptchaIframeQuery", &r);
    assert_int_equal(r.ok, 1);
    assert_int_equal(f.requests, 4);
    upstream_get_stats(u, &st);
    assert_int_equal(st.breaker, BREAKER_CLOSED);
    call(u, f.base, "POST", "Action=CaptchaIframeQuery", &r);
    assert_int_equal(r.ok, 1);
    upstream_free(u);
    fake_stop(&f);
}

static void test_free_completes_pending_calls(void **state) {
    struct fake f;
    struct upstream_options o;
    struct upstream *u;
    struct outcome r;

    fake_start(&f, NULL);
    f.mode = FAKE_STALL;
    plain_options(&o, f.port);
    u = new_upstream(f.base, &o);
    memset(&r, 0, sizeof(r));
    r.base = f.base;
    assert_int_equal(upstream_call(u, "POST", "Action=CaptchaIframeQuery", on_done, &r), 0);
    spin(f.base, 100);
    assert_int_equal(f.requests, 1);
    assert_int_equal(r.done, 0);
    upstream_free(u);
    assert_int_equal(r.done, 1);
    assert_int_equal(r.ok, 0);
    assert_string_equal(r.error, "upstream client shut down");
    spin(f.base, 50);
    fake_stop(&f);
}

/* Finished calls are kept for reuse, never more than the pool's cap of 64, and a reused call
 * carries nothing of the one before: its error, status, attempts and request target. */
static void test_finished_calls_are_pooled_and_reused_clean(void **state) {
    enum { N = 70 };
    struct fake f;
    struct upstream_options o;
    struct upstream *u;
    static struct outcome r[N];
    struct outcome one;
    unsigned done;

    fake_start(&f, NULL);
    plain_options(&o, f.port);
    o.max_queued = N;
    u = new_upstream(f.base, &o);
    assert_int_equal(upstream_pooled_calls(u), 0);
    for (int i = 0; i < N; i++) {
        memset(&r[i], 0, sizeof(r[i]));
        r[i].base = f.base;
        assert_int_equal(upstream_call(u, "GET", "Action=CaptchaIframeQuery&businessId=123456789",
                                       on_done, &r[i]),
                         0);
    }
    for (;;) {
        done = 0;
        for (int i = 0; i < N; i++) done += (unsigned)r[i].done;
        if (done == N) break;
        wait_for(f.base, &r[0]);
        spin(f.base, 20);
    }
    for (int i = 0; i < N; i++) assert_int_equal(r[i].ok, 1);
    assert_int_equal(upstream_pooled_calls(u), 64); /* 70 ended; the pool keeps 64 */
    /* a failed call, then a reused one with a shorter query */
    f.mode = FAKE_500;
    call(u, f.base, "GET", "Action=CaptchaIframeQuery&businessId=123456789", &one);
    assert_int_equal(one.ok, 0);
    assert_string_equal(one.error, "upstream answered HTTP 500");
    assert_int_equal(upstream_pooled_calls(u), 64);
    f.mode = FAKE_JSON;
    call(u, f.base, "GET", "Action=A", &one);
    assert_int_equal(one.ok, 1);
    assert_int_equal(one.http_status, 200);
    assert_string_equal(one.error, "");
    assert_int_equal(one.attempts, 1);
    assert_int_equal(one.timed_out, 0);
    assert_string_equal(f.query, "Action=A");
    assert_int_equal(f.requests, N + 2);
    assert_int_equal(upstream_pooled_calls(u), 64);
    upstream_free(u);
    fake_stop(&f);
}

/* --- TLS --------------------------------------------------------------------------------- */

static EVP_PKEY *new_key(void) {
    EVP_PKEY *k = EVP_EC_gen("P-256");

    assert_non_null(k);
    return k;
}

static void add_ext(X509 *cert, X509 *issuer, int nid, const char *value) {
    X509V3_CTX ctx;
    X509_EXTENSION *ext;

    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    assert_non_null(ext);
    assert_int_equal(X509_add_ext(cert, ext, -1), 1);
    X509_EXTENSION_free(ext);
}

/* A certificate for cn/key, signed by issuer/issuer_key (self-signed when issuer is NULL). */
static X509 *make_cert(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key,
                       long serial, int ca) {
    X509 *c = X509_new();
    X509_NAME *name = X509_NAME_new();

    assert_non_null(c);
    X509_set_version(c, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(c), serial);
    X509_gmtime_adj(X509_getm_notBefore(c), -3600);
    X509_gmtime_adj(X509_getm_notAfter(c), 86400);
    X509_set_pubkey(c, key);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_subject_name(c, name);
    X509_set_issuer_name(c, issuer ? X509_get_subject_name(issuer) : name);
    X509_NAME_free(name);
    if (ca) {
        add_ext(c, issuer ? issuer : c, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(c, issuer ? issuer : c, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        add_ext(c, issuer, NID_basic_constraints, "CA:FALSE");
        add_ext(c, issuer, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
        add_ext(c, issuer, NID_ext_key_usage, "serverAuth");
    }
    assert_true(X509_sign(c, issuer_key ? issuer_key : key, EVP_sha256()) > 0);
    return c;
}

static void write_cert(const char *path, X509 *c) {
    FILE *fp = fopen(path, "w");

    assert_non_null(fp);
    assert_int_equal(PEM_write_X509(fp, c), 1);
    fclose(fp);
}

static int tls_setup(void **state) {
    EVP_PKEY *ca_key = new_key(), *leaf_key = new_key(), *other_key = new_key();
    X509 *ca, *leaf, *other;
    FILE *fp;

    snprintf(g_dir, sizeof(g_dir), "/tmp/capgate-upstream-XXXXXX");
    assert_non_null(mkdtemp(g_dir));
    snprintf(g_ca, sizeof(g_ca), "%s/ca.pem", g_dir);
    snprintf(g_cert, sizeof(g_cert), "%s/leaf.pem", g_dir);
    snprintf(g_key, sizeof(g_key), "%s/leaf.key", g_dir);
    snprintf(g_wrong_ca, sizeof(g_wrong_ca), "%s/other-ca.pem", g_dir);
    ca = make_cert("capgate test CA", ca_key, NULL, NULL, 1, 1);
    leaf = make_cert("localhost", leaf_key, ca, ca_key, 2, 0);
    other = make_cert("unrelated test CA", other_key, NULL, NULL, 3, 1);
    write_cert(g_ca, ca);
    write_cert(g_cert, leaf);
    write_cert(g_wrong_ca, other);
    fp = fopen(g_key, "w");
    assert_non_null(fp);
    assert_int_equal(PEM_write_PrivateKey(fp, leaf_key, NULL, NULL, 0, NULL, NULL), 1);
    fclose(fp);
    X509_free(ca);
    X509_free(leaf);
    X509_free(other);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(leaf_key);
    EVP_PKEY_free(other_key);
    return 0;
}

static int tls_teardown(void **state) {
    unlink(g_ca);
    unlink(g_cert);
    unlink(g_key);
    unlink(g_wrong_ca);
    rmdir(g_dir);
    return 0;
}

struct tls_case {
    const char *ca;
    const char *tls_name;
};

/* TLS records the fake server received, counted by its message callback. */
static unsigned g_records_in;

static void count_records_in(int write_p, int version, int content_type, const void *buf,
                             size_t len, SSL *ssl, void *arg) {
    if (!write_p && content_type == SSL3_RT_HEADER && len >= 1) g_records_in++;
}

static void tls_call(const struct tls_case *tc, struct outcome *r, unsigned *fake_requests) {
    char err[256];
    SSL_CTX *server = tls_server_ctx_new(g_cert, g_key, err, sizeof(err));
    struct tls_server *server_ts;
    SSL_CTX *client;
    struct fake f;
    struct upstream_options o;
    struct upstream *u;

    if (!server) fail_msg("server ctx: %s", err);
    SSL_CTX_set_msg_callback(server, count_records_in);
    client = tls_client_ctx_new(tc->ca, 1, err, sizeof(err));
    if (!client) fail_msg("client ctx: %s", err);
    server_ts = tls_server_wrap(SSL_CTX_up_ref(server) == 1 ? server : NULL);
    assert_non_null(server_ts);
    fake_start(&f, server_ts);
    plain_options(&o, f.port);
    o.tls = 1;
    o.ssl_ctx = client;
    o.verify_tls = 1;
    o.tls_name = tc->tls_name;
    u = new_upstream(f.base, &o);
    call(u, f.base, "POST", "Action=CaptchaIframeQuery", r);
    if (r->ok) {
        /* keep-alive over TLS too */
        struct outcome again;
        g_records_in = 0;
        call(u, f.base, "POST", "Action=CaptchaIframeQuery", &again);
        assert_int_equal(again.ok, 1);
        /* the whole request (line, headers and body) in one record, so one write */
        assert_int_equal(g_records_in, 1);
        assert_int_equal(f.max_connections_seen, 1);
        /* without it Nagle held the second TLS record of each request for the server's
         * delayed ACK: about 40 ms per request on a warm connection */
        assert_int_equal(client_nodelay(f.port), 1);
    }
    spin(f.base, 50);
    *fake_requests = f.requests;
    upstream_free(u);
    fake_stop(&f);
    SSL_CTX_free(client);
    tls_server_free(server_ts);
    SSL_CTX_free(server);
}

static void test_tls_roundtrip(void **state) {
    struct tls_case by_name = {g_ca, "localhost"}, by_ip = {g_ca, NULL};
    struct outcome r;
    unsigned n;

    tls_call(&by_name, &r, &n);
    assert_int_equal(r.ok, 1);
    assert_int_equal(n, 2);
    tls_call(&by_ip, &r, &n);
    assert_int_equal(r.ok, 1);
    assert_int_equal(n, 2);
}

static void test_tls_wrong_ca_fails_verification(void **state) {
    struct tls_case tc = {g_wrong_ca, "localhost"};
    struct outcome r;
    unsigned n;

    tls_call(&tc, &r, &n);
    assert_int_equal(r.ok, 0);
    assert_non_null(strstr(r.error, "upstream TLS certificate verification failed: "));
    assert_non_null(strstr(r.error, "local issuer"));
    assert_int_equal(r.nothing_sent, 1);
    assert_int_equal(r.attempts, 1);
    assert_int_equal(n, 0);
}

static void test_tls_hostname_mismatch_fails(void **state) {
    struct tls_case tc = {g_ca, "wronghost"};
    struct outcome r;
    unsigned n;

    tls_call(&tc, &r, &n);
    assert_int_equal(r.ok, 0);
    assert_non_null(strstr(r.error, "upstream TLS certificate verification failed: "));
    assert_non_null(strstr(r.error, "mismatch"));
    assert_int_equal(r.nothing_sent, 1);
    assert_int_equal(n, 0);
}

/* ---- upstream_params: the request sent upstream ---- */

static void test_upstream_params(void **state) {
    struct config_upstream up = {.secret_id = "AKIDreal",
                                 .secret_key = "real-key",
                                 .region = "gz",
                                 .signature_method = SIGN_HMAC_SHA256,
                                 .post = 1,
                                 .sign_host = "csec.api.qcloud.com",
                                 .path = "/v2/index.php"};
    struct params in, out;
    params_init(&in);
    assert_int_equal(params_adds(&in, "Action", "CaptchaIframeQuery"), 0);
    assert_int_equal(params_adds(&in, "SecretId", "AKIDapp"), 0);
    assert_int_equal(params_adds(&in, "Signature", "appsig"), 0);
    assert_int_equal(params_adds(&in, "Timestamp", "1"), 0);
    assert_int_equal(params_adds(&in, "Nonce", "2"), 0);
    assert_int_equal(params_adds(&in, "Region", "sh"), 0);
    assert_int_equal(params_adds(&in, "SignatureMethod", "HmacSHA1"), 0);
    assert_int_equal(params_adds(&in, "Token", "t"), 0);
    assert_int_equal(params_adds(&in, "captchaType", "1"), 0);
    assert_int_equal(params_adds(&in, "RequestClient", "SDK_NODE_1.0"), 0);

    assert_int_equal(upstream_params(&in, &up, 1700000000, 18446744073709551615ULL, &out), 0);
    assert_string_equal(params_get(&out, "Action"), "CaptchaIframeQuery");
    assert_string_equal(params_get(&out, "SecretId"), "AKIDreal");
    assert_string_equal(params_get(&out, "Timestamp"), "1700000000");
    assert_string_equal(params_get(&out, "Nonce"), "18446744073709551615");
    assert_string_equal(params_get(&out, "Region"), "gz");
    assert_string_equal(params_get(&out, "SignatureMethod"), "HmacSHA256");
    assert_null(params_get(&out, "Token"));
    assert_string_equal(params_get(&out, "captchaType"), "1");
    assert_string_equal(params_get(&out, "RequestClient"), "SDK_NODE_1.0");
    assert_string_not_equal(params_get(&out, "Signature"), "appsig");
    /* signed for upstream's host, path and method with the real key */
    assert_int_equal(sign_verify(&out, "POST", "csec.api.qcloud.com", "/v2/index.php", "real-key"),
                     0);
    assert_int_equal(sign_verify(&out, "GET", "csec.api.qcloud.com", "/v2/index.php", "real-key"),
                     -1);
    assert_int_equal(sign_verify(&out, "POST", "csec.api.qcloud.com", "/v2/index.php", "app-key"),
                     -1);
    /* the input is untouched */
    assert_string_equal(params_get(&in, "SecretId"), "AKIDapp");
    params_cleanup(&out);

    up.post = 0;
    up.signature_method = SIGN_HMAC_SHA1;
    assert_int_equal(upstream_params(&in, &up, 5, 6, &out), 0);
    assert_string_equal(params_get(&out, "SignatureMethod"), "HmacSHA1");
    assert_int_equal(sign_verify(&out, "GET", "csec.api.qcloud.com", "/v2/index.php", "real-key"),
                     0);
    /* each name once */
    size_t n = 0;
    for (size_t i = 0; i < out.count; i++) n += strcmp(out.items[i].name, "Nonce") == 0;
    assert_int_equal(n, 1);
    params_cleanup(&out);
    params_cleanup(&in);
}

/* The gateway's own upstream signing follows the '@' rule: with POST the randstr is forwarded
 * and left out of the signature (so changing it keeps the signature valid); with GET it is
 * signed. */
static void test_upstream_params_at_rule(void **state) {
    struct config_upstream up = {.secret_id = "AKIDreal",
                                 .secret_key = "real-key",
                                 .region = "gz",
                                 .signature_method = SIGN_HMAC_SHA1,
                                 .post = 1,
                                 .sign_host = "csec.api.qcloud.com",
                                 .path = "/v2/index.php"};
    struct params in, out;
    params_init(&in);
    assert_int_equal(params_adds(&in, "Action", "CaptchaCheck"), 0);
    assert_int_equal(params_adds(&in, "ticket", "t03abc"), 0);
    assert_int_equal(params_adds(&in, "randstr", "@xYz"), 0);
    assert_int_equal(upstream_params(&in, &up, 1700000000, 42, &out), 0);
    assert_string_equal(params_get(&out, "randstr"), "@xYz");
    char *text = sign_string_to_sign("POST", up.sign_host, up.path, &out);
    assert_null(strstr(text, "randstr"));
    assert_non_null(strstr(text, "ticket=t03abc"));
    free(text);
    assert_int_equal(params_set(&out, "randstr", "@other"), 0);
    assert_int_equal(sign_verify(&out, "POST", up.sign_host, up.path, "real-key"), 0);
    params_cleanup(&out);

    up.post = 0;
    assert_int_equal(upstream_params(&in, &up, 1700000000, 43, &out), 0);
    assert_int_equal(sign_verify(&out, "GET", up.sign_host, up.path, "real-key"), 0);
    assert_int_equal(params_set(&out, "randstr", "@other"), 0);
    assert_int_equal(sign_verify(&out, "GET", up.sign_host, up.path, "real-key"), -1);
    params_cleanup(&out);
    params_cleanup(&in);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_upstream_params),
        cmocka_unit_test(test_upstream_params_at_rule),
        cmocka_unit_test(test_post_roundtrip),
        cmocka_unit_test(test_get_sends_query),
        cmocka_unit_test(test_keepalive_reuses_one_connection),
        cmocka_unit_test(test_pool_caps_connections_and_queues),
        cmocka_unit_test(test_warm_connection_writes_before_the_loop_turns),
        cmocka_unit_test(test_connection_closed_while_idle_is_replaced),
        cmocka_unit_test(test_reply_during_a_long_write_does_not_spin),
        cmocka_unit_test(test_socket_after_connection_close_gets_nodelay),
        cmocka_unit_test(test_stalled_upstream_times_out),
        cmocka_unit_test(test_http_500_is_an_error_with_status),
        cmocka_unit_test(test_non_json_body_is_an_error),
        cmocka_unit_test(test_status_below_200_is_an_error),
        cmocka_unit_test(test_reset_after_sending_is_not_retried),
        cmocka_unit_test(test_refused_port_is_retried),
        cmocka_unit_test(test_retry_signs_again),
        cmocka_unit_test(test_breaker_opens_rejects_and_probe_closes),
        cmocka_unit_test(test_raw_ok_passes_a_script),
        cmocka_unit_test(test_free_completes_pending_calls),
        cmocka_unit_test(test_finished_calls_are_pooled_and_reused_clean),
        cmocka_unit_test(test_tls_roundtrip),
        cmocka_unit_test(test_tls_wrong_ca_fails_verification),
        cmocka_unit_test(test_tls_hostname_mismatch_fails),
    };

    tls_global_init();
    return cmocka_run_group_tests(tests, tls_setup, tls_teardown);
}
