/* fuzz_upstream.c: the gateway's handling of an upstream reply (proxy/upstream.c: evhttp's
 * reading of the response, then the classification into ok / error and the scan of the body).
 * A listener on 127.0.0.1 answers the call with the input as the raw HTTP response, then ends
 * its side. Invariants: the callback fires exactly once; ok means a 2xx status and a body that
 * jansson reads as one JSON object, with the scanned code being jansson's; a 2xx JSON object is
 * ok; a status of 300 or more is not ok; not ok always has an error sentence. */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>
#include <jansson.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include "capgate/log.h"
#include "fuzz.h"
#include "upstream.h"

static struct event_base *base;
static struct evconnlistener *lev;
static int port;
static const uint8_t *reply;
static size_t reply_len;
static int calls_done;

struct peer {
    struct event *ev;
    int fd;
};

static void peer_read_cb(evutil_socket_t fd, short what, void *arg) {
    struct peer *p = arg;
    char buf[4096];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR))) return;
    event_free(p->ev);
    close(p->fd);
    free(p);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg) {
    struct peer *p = calloc(1, sizeof *p);
    size_t off = 0;
    FUZZ_CHECK(p);
    /* the reply fits the loopback socket's buffer: written at once, then the write side ends */
    while (off < reply_len) {
        ssize_t n = send(fd, reply + off, reply_len - off, MSG_NOSIGNAL);
        if (n <= 0) break;
        off += (size_t)n;
    }
    shutdown(fd, SHUT_WR);
    p->fd = fd;
    p->ev = event_new(base, fd, EV_READ | EV_PERSIST, peer_read_cb, p);
    FUZZ_CHECK(p->ev && event_add(p->ev, NULL) == 0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    log_init("fuzz_upstream", LOG_LEVEL_ERROR);
    signal(SIGPIPE, SIG_IGN); /* as the programs do: a write to a closed peer is an error */
    base = event_base_new();
    FUZZ_CHECK(base);
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    lev = evconnlistener_new_bind(base, accept_cb, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                  128, (struct sockaddr *)&sin, sizeof sin);
    FUZZ_CHECK(lev);
    FUZZ_CHECK(getsockname(evconnlistener_get_fd(lev), (struct sockaddr *)&sin, &len) == 0);
    port = ntohs(sin.sin_port);
    return 0;
}

static void done_cb(const struct upstream_result *r, void *arg) {
    calls_done++;
    if (r->ok) {
        FUZZ_CHECK(r->http_status >= 200 && r->http_status < 300);
        FUZZ_CHECK(r->body && r->fields && !r->error);
        json_t *root = json_loadb(r->body, r->body_len, 0, NULL);
        FUZZ_CHECK(root && json_is_object(root));
        json_t *code = json_object_get(root, "code");
        FUZZ_CHECK(r->fields->has_code == json_is_integer(code));
        if (r->fields->has_code) FUZZ_CHECK(r->fields->code == json_integer_value(code));
        json_decref(root);
    } else {
        FUZZ_CHECK(r->error && r->error[0]);
        if (r->http_status >= 200 && r->http_status < 300 && r->body) {
            json_t *root = json_loadb(r->body, r->body_len, 0, NULL);
            FUZZ_CHECK(!(root && json_is_object(root)));
            json_decref(root);
        }
    }
    if (r->http_status >= 300) FUZZ_CHECK(!r->ok);
    if (r->body) FUZZ_CHECK(r->body_len > 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct upstream_options o;
    char err[256];
    memset(&o, 0, sizeof o);
    o.host = "127.0.0.1";
    o.port = port;
    o.path = "/v2/index.php";
    o.sign_host = "csec.api.qcloud.com";
    o.connect_timeout_ms = 1000;
    o.timeout_ms = 2000;
    o.breaker_failures = 1000000;
    reply = data;
    reply_len = size;
    calls_done = 0;
    struct upstream *u = upstream_new(base, &o, err, sizeof err);
    FUZZ_CHECK(u);
    FUZZ_CHECK(upstream_call(u, (size & 1) ? "GET" : "POST", "Action=CaptchaCheck&a=1", done_cb,
                             NULL) == 0);
    while (!calls_done) event_base_loop(base, EVLOOP_ONCE);
    upstream_free(u);
    /* let the peer see the close */
    for (int i = 0; i < 4; i++) event_base_loop(base, EVLOOP_NONBLOCK);
    FUZZ_CHECK(calls_done == 1);
    return 0;
}
