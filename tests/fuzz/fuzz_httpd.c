/* fuzz_httpd.c: the HTTP server's request parser (common/httpd.c), driven through a socketpair
 * and an event loop, as a peer would: the input is written in pieces (sizes from the first byte,
 * then varied), the loop runs after each piece, then the client side closes. Invariants: each
 * request the handler gets is whole (method, target, path, NUL-terminated body of body_len
 * bytes, header count within the limit; on an error a status 400..505 and a one-line
 * message); the replies the client reads back are well-formed status lines, one per request at
 * most, and nothing stays in flight after the client closed. */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "capgate/httpd.h"
#include "capgate/log.h"
#include "fuzz.h"

static struct event_base *base;
static unsigned handled;

static void on_request(struct httpd_req *req, void *arg) {
    const struct httpd_limits *lim = arg;
    handled++;
    FUZZ_CHECK(req->method && req->target && req->path && req->body);
    FUZZ_CHECK(req->body[req->body_len] == '\0');
    FUZZ_CHECK(req->body_len <= lim->max_body);
    FUZZ_CHECK(req->header_count <= lim->max_headers);
    for (size_t i = 0; i < req->header_count; i++)
        FUZZ_CHECK(req->headers[i].name && req->headers[i].value);
    if (req->error_status) {
        FUZZ_CHECK(req->error_status >= 400 && req->error_status <= 505);
        FUZZ_CHECK(req->error_message && req->error_message[0]);
        /* no control byte: quoted request bytes are written \xHH (corpus
         * regress-chunk-size-cr) */
        for (const char *p = req->error_message; *p; p++)
            FUZZ_CHECK((unsigned char)*p >= 0x20 && *p != 0x7f);
    } else {
        FUZZ_CHECK(req->http_minor == 0 || req->http_minor == 1);
        FUZZ_CHECK(req->method[0] && req->target[0]);
        FUZZ_CHECK(strncmp(req->target, req->path, strlen(req->path)) == 0);
        if (req->query) FUZZ_CHECK(req->query == req->target + strlen(req->path) + 1);
    }
    httpd_reply(req, req->error_status ? req->error_status : 200, "application/json", "{}", 2);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    log_init("fuzz_httpd", LOG_LEVEL_ERROR);
    signal(SIGPIPE, SIG_IGN); /* as the programs do: a write to a closed peer is an error */
    base = event_base_new();
    FUZZ_CHECK(base);
    return 0;
}

/* Reads what the server wrote so far into out (appending); returns bytes now held. */
static size_t drain(int fd, char *out, size_t cap, size_t have) {
    for (;;) {
        if (have + 1 >= cap) return have;
        ssize_t n = recv(fd, out + have, cap - have - 1, MSG_DONTWAIT);
        if (n <= 0) return have;
        have += (size_t)n;
    }
}

static void spin(void) {
    for (int i = 0; i < 4; i++) event_base_loop(base, EVLOOP_NONBLOCK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char out[1 << 20];
    struct httpd_limits lim;
    int sv[2];
    size_t have = 0;
    if (size < 1) return 0;
    httpd_limits_default(&lim);
    lim.max_uri = 256;
    lim.max_header_bytes = 1024;
    lim.max_headers = 16;
    lim.max_body = 2048;
    handled = 0;
    struct httpd *h = httpd_new(base, &lim, on_request, &lim);
    FUZZ_CHECK(h);
    FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    FUZZ_CHECK(httpd_adopt(h, sv[0]) == 0);

    size_t piece = (size_t)(data[0] & 0x3f) + 1, i = 1;
    while (i < size) {
        size_t n = size - i < piece ? size - i : piece;
        ssize_t w = send(sv[1], data + i, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) break; /* server closed */
        if (w > 0) i += (size_t)w;
        spin();
        have = drain(sv[1], out, sizeof out, have);
        /* vary the piece size along the stream: 1 byte now and then */
        piece = (data[i % size] & 0x80) ? 1 : (size_t)(data[0] & 0x3f) + 1;
    }
    if (data[0] & 0x40) shutdown(sv[1], SHUT_WR); /* a half-close, as some clients do */
    spin();
    have = drain(sv[1], out, sizeof out, have);
    close(sv[1]);
    spin();
    FUZZ_CHECK(httpd_inflight(h) == 0);
    httpd_free(h);
    spin();

    /* every reply is a status line; there are no more than requests handled */
    out[have] = '\0';
    unsigned replies = 0;
    for (char *p = out; (p = strstr(p, "HTTP/1.1 ")) != NULL; p += 9) {
        FUZZ_CHECK(p[9] >= '1' && p[9] <= '5' && p[12] == ' ');
        replies++;
    }
    FUZZ_CHECK(have == 0 || strncmp(out, "HTTP/1.1 ", 9) == 0);
    FUZZ_CHECK(replies <= handled);
    return 0;
}
