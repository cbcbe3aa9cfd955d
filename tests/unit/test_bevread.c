/* test_bevread.c: socket bufferevents reading through bevread.h over real loopback TCP: the
 * bytes arrive whole and in order with no ioctl(FIONREAD) (counted by an ioctl of this program's
 * own, which libevent's calls resolve to; a bufferevent left to libevent shows the counter
 * works), the high watermark holds, deferred callbacks still run, an EOF and a reset reach the
 * event callback as libevent's own read reports them, and a read timeout still fires. */
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <cmocka.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "capgate/bevread.h"

static int fionread_calls;

/* libevent's ioctl calls land here (this program defines the symbol it imports). */
int ioctl(int fd, unsigned long request, ...) {
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (request == FIONREAD) fionread_calls++;
    return (int)syscall(SYS_ioctl, fd, request, arg);
}

struct sink {
    char got[1 << 17];
    size_t len, max_seen;
    short events;
    int err;
    int reads;
};

static void read_cb(struct bufferevent *bev, void *arg) {
    struct sink *s = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t n = evbuffer_get_length(in);
    if (n > s->max_seen) s->max_seen = n;
    assert_true(s->len + n <= sizeof s->got);
    evbuffer_remove(in, s->got + s->len, n);
    s->len += n;
    s->reads++;
}

static void event_cb(struct bufferevent *bev, short what, void *arg) {
    struct sink *s = arg;
    (void)bev;
    s->events = what;
    s->err = EVUTIL_SOCKET_ERROR();
}

/* A connected loopback TCP pair: *server (non-blocking, for the bufferevent) and *client. */
static void tcp_pair(int *server, int *client) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(l >= 0);
    assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(l, (struct sockaddr *)&a, &al), 0);
    assert_int_equal(listen(l, 1), 0);
    *client = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(connect(*client, (struct sockaddr *)&a, sizeof a), 0);
    *server = accept(l, NULL, NULL);
    assert_true(*server >= 0);
    close(l);
    assert_int_equal(evutil_make_socket_nonblocking(*server), 0);
}

/* Runs base in turns of up to 5 ms until *len reaches want, for 2 s at most. */
static void run_until_len(struct event_base *base, const size_t *len, size_t want) {
    for (int i = 0; i < 400 && *len < want; i++) {
        struct timeval tv = {0, 5000};
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
    }
}

static void fill(char *buf, size_t n) {
    for (size_t i = 0; i < n; i++) buf[i] = (char)('a' + (i * 7) % 26);
}

/* 100 KB in pieces, through libevent's read and then through bevread's. */
static void reads_without_ioctl(int install, int options) {
    static char data[100000];
    struct event_base *base = event_base_new();
    struct sink *s = calloc(1, sizeof *s);
    int fd, client;
    fill(data, sizeof data);
    tcp_pair(&fd, &client);
    struct bufferevent *bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE | options);
    assert_non_null(bev);
    if (install) {
        assert_int_equal(bevread_install(bev), 0);
        assert_int_equal(bevread_install(bev), 0); /* again: a no-op */
    }
    bufferevent_setcb(bev, read_cb, NULL, event_cb, s);
    bufferevent_enable(bev, EV_READ);
    fionread_calls = 0;
    for (size_t off = 0; off < sizeof data; off += 10000) {
        assert_int_equal(write(client, data + off, 10000), 10000);
        run_until_len(base, &s->len, off + 10000);
    }
    assert_int_equal(s->len, sizeof data);
    assert_memory_equal(s->got, data, sizeof data);
    if (install)
        assert_int_equal(fionread_calls, 0);
    else
        assert_true(fionread_calls >= 10); /* the counter sees libevent's reads */
    bufferevent_free(bev);
    close(client);
    free(s);
    event_base_free(base);
}

static void test_libevent_reads_with_ioctl(void **state) {
    (void)state;
    reads_without_ioctl(0, 0);
}

static void test_reads_without_ioctl(void **state) {
    (void)state;
    reads_without_ioctl(1, 0);
}

static void test_deferred_callbacks(void **state) {
    (void)state;
    reads_without_ioctl(1, BEV_OPT_DEFER_CALLBACKS);
}

/* Reading into a buffer that holds the high watermark stops until the reader drains it. */
static void test_high_watermark(void **state) {
    (void)state;
    struct event_base *base = event_base_new();
    struct sink *s = calloc(1, sizeof *s);
    char data[4096];
    int fd, client;
    fill(data, sizeof data);
    tcp_pair(&fd, &client);
    struct bufferevent *bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    assert_int_equal(bevread_install(bev), 0);
    bufferevent_setwatermark(bev, EV_READ, 0, 100);
    bufferevent_setcb(bev, read_cb, NULL, event_cb, s);
    bufferevent_enable(bev, EV_READ);
    assert_int_equal(write(client, data, sizeof data), (ssize_t)sizeof data);
    run_until_len(base, &s->len, sizeof data);
    assert_int_equal(s->len, sizeof data);
    assert_memory_equal(s->got, data, sizeof data);
    assert_true(s->max_seen <= 100);
    assert_true(s->reads >= (int)(sizeof data / 100));
    bufferevent_free(bev);
    close(client);
    free(s);
    event_base_free(base);
}

/* The peer's FIN after some bytes: the bytes, then READING | EOF; a reset: READING | ERROR with
 * ECONNRESET. Reading is off afterwards in both, as libevent's own read leaves it. */
static void end_of_stream(int reset) {
    struct event_base *base = event_base_new();
    struct sink *s = calloc(1, sizeof *s);
    int fd, client;
    tcp_pair(&fd, &client);
    struct bufferevent *bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    assert_int_equal(bevread_install(bev), 0);
    bufferevent_setcb(bev, read_cb, NULL, event_cb, s);
    bufferevent_enable(bev, EV_READ);
    assert_int_equal(write(client, "hello", 5), 5);
    run_until_len(base, &s->len, 5);
    assert_int_equal(s->len, 5);
    if (reset) {
        struct linger lg = {1, 0};
        assert_int_equal(setsockopt(client, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    }
    close(client);
    int got = 0;
    for (int i = 0; i < 200 && !got; i++) {
        struct timeval tv = {0, 5000};
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
        got = s->events != 0;
    }
    if (reset) {
        assert_int_equal(s->events, BEV_EVENT_READING | BEV_EVENT_ERROR);
        assert_int_equal(s->err, ECONNRESET);
    } else {
        assert_int_equal(s->events, BEV_EVENT_READING | BEV_EVENT_EOF);
    }
    assert_false(bufferevent_get_enabled(bev) & EV_READ);
    bufferevent_free(bev);
    free(s);
    event_base_free(base);
}

static void test_eof(void **state) {
    (void)state;
    end_of_stream(0);
}

static void test_reset(void **state) {
    (void)state;
    end_of_stream(1);
}

/* A read timeout set before or after the install still fires, through libevent's callback. */
static void test_read_timeout(void **state) {
    (void)state;
    struct event_base *base = event_base_new();
    struct sink *s = calloc(1, sizeof *s);
    int fd, client, got = 0;
    tcp_pair(&fd, &client);
    struct bufferevent *bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    struct timeval rtv = {0, 50000};
    bufferevent_set_timeouts(bev, &rtv, NULL);
    bufferevent_setcb(bev, read_cb, NULL, event_cb, s);
    bufferevent_enable(bev, EV_READ);
    assert_int_equal(bevread_install(bev), 0); /* reading already on: taken off and put back */
    for (int i = 0; i < 400 && !got; i++) {
        struct timeval tv = {0, 5000};
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
        got = s->events != 0;
    }
    assert_int_equal(s->events, BEV_EVENT_READING | BEV_EVENT_TIMEOUT);
    bufferevent_free(bev);
    close(client);
    free(s);
    event_base_free(base);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_libevent_reads_with_ioctl),
        cmocka_unit_test(test_reads_without_ioctl),
        cmocka_unit_test(test_deferred_callbacks),
        cmocka_unit_test(test_high_watermark),
        cmocka_unit_test(test_eof),
        cmocka_unit_test(test_reset),
        cmocka_unit_test(test_read_timeout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
