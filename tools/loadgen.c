/* loadgen.c: capgate-loadgen, the benchmark's own load generator for what wrk cannot do
 * (scripts/bench.sh --latency and --idle). Debian has no constant-rate HTTP generator (no wrk2,
 * vegeta or oha), so this is one.
 *
 * Rate mode (open loop): request i is due at t0 + i / rate, whatever the replies do. A due
 * request goes out on an idle keep-alive connection, on a new one while fewer than
 * --connections are open, or else waits in a queue. Its latency runs from the time it was due,
 * not from when it went out, so a stall of the server counts against every request it delayed
 * (no coordinated omission). Each request target of --file is sent once (pre-signed requests
 * carry a Nonce); a reply counts as good when its status is 2xx and its body holds "code":0.
 * --warmup S sends at the same rate for S seconds first, checked but left out of the latencies.
 * Prints the count, the good, failed and bad replies, the latency percentiles, and what says
 * whether the generator itself kept time: how late its timer found each request due ("send
 * lag": the generator's own delay, whatever the server does), how many requests waited for a
 * connection (the server was slow: they are late by that wait too), and the generator's own CPU
 * per request.
 * --trace FILE writes one line per measured request: due, sent and done (us from t0), the
 * connection's number and 1 if it was the connection's first request.
 *
 * The client is a plain socket per connection, not libevent's evhttp: a request is written in
 * the timer callback that finds it due (evhttp queues it and writes a loop turn later), and a
 * reply is timed in the read callback that completes it. At 5,000 req/s evhttp's client took
 * about 55 us of CPU per request, this one about 35, most of it the kernel's loopback TCP in
 * its one send and one recv (the generator shares a core with the mock in the latency runs).
 * Replies need a Content-Length (capgate's and the mock's have one).
 *
 * Idle mode: opens --idle N keep-alive connections, sends one request on each (at most 256 in
 * flight), and when every reply is in prints "capgate-loadgen: N idle connections open" and
 * keeps them open, without traffic, for --hold seconds (or until SIGTERM / SIGINT).
 *
 * Usage: capgate-loadgen --host HOST:PORT (--file FILE | --path PATH) [--header 'Name: value']
 *          (--rate R --duration S [--warmup S] [--connections C] [--trace FILE]
 *           | --idle N [--hold S]) */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "capgate/num.h"

#define HIST_FINE 100000   /* 1 us buckets below 100 ms */
#define HIST_COARSE 100000 /* then 1 ms buckets up to 100 s */
#define IDLE_INFLIGHT 256
#define REPLY_MAX (1u << 20) /* a reply larger than this is an error */
#define LATE_S 30            /* replies still missing this long after the last due time fail */

struct conn {
    struct gen *g;
    int fd;
    struct event *rev, *wev;
    int connecting, busy;
    struct conn *next_idle;
    uint64_t due_ns, sent_ns; /* of the request in flight */
    unsigned id, fresh;
    char *out; /* request bytes the socket did not take yet */
    size_t out_len, out_off, out_cap;
    char *in; /* reply bytes read so far */
    size_t in_len, in_cap;
};

struct hist {
    uint32_t *fine, *coarse;
    size_t n;
    uint64_t max_ns;
};

struct gen {
    struct event_base *base;
    const char *host_port, *path, *header_name, *header_value;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    char **targets;
    size_t n_targets, next_target;
    char *req; /* the request being built */
    size_t req_cap;
    /* rate mode */
    double rate;
    uint64_t t0, measure_from;
    size_t scheduled, total, max_conns, n_conns, opened;
    struct conn *idle;
    uint64_t *queue; /* due times waiting for a connection (ring) */
    size_t q_head, q_len, q_cap;
    struct event *tick, *deadline;
    size_t done, good, failed, bad, ran_out, queued, opened_late;
    struct hist lat, lag;
    FILE *trace;
    const char *first_error;
    /* idle mode */
    int idle_mode;
    size_t idle_n, idle_started, idle_replied;
    unsigned hold_s;
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *msg) {
    fprintf(stderr, "capgate-loadgen: %s\n", msg);
    exit(2);
}

static void hist_init(struct hist *h) {
    h->fine = calloc(HIST_FINE, sizeof *h->fine);
    h->coarse = calloc(HIST_COARSE, sizeof *h->coarse);
    if (!h->fine || !h->coarse) die("out of memory");
}

static void hist_free(struct hist *h) {
    free(h->fine);
    free(h->coarse);
}

static void hist_add(struct hist *h, uint64_t ns) {
    uint64_t us = ns / 1000;
    if (us < HIST_FINE)
        h->fine[us]++;
    else if (us / 1000 < HIST_COARSE)
        h->coarse[us / 1000]++;
    else
        h->coarse[HIST_COARSE - 1]++;
    if (ns > h->max_ns) h->max_ns = ns;
    h->n++;
}

/* The latency (us) below which a share q of the recorded values fall. */
static uint64_t hist_pct(const struct hist *h, double q) {
    size_t want = (size_t)(q * (double)h->n + 0.999999), seen = 0;
    if (!h->n) return 0;
    if (want < 1) want = 1;
    for (size_t i = 0; i < HIST_FINE; i++)
        if ((seen += h->fine[i]) >= want) return i;
    for (size_t i = 0; i < HIST_COARSE; i++)
        if ((seen += h->coarse[i]) >= want) return i * 1000;
    return h->max_ns / 1000;
}

static int body_has_code0(const char *s, size_t len) {
    for (const char *p = s; p && len >= 9;) {
        const char *hit = memmem(p, len - (size_t)(p - s), "\"code\":0", 8);
        if (!hit) return 0;
        size_t at = (size_t)(hit - s) + 8;
        if (at < len && (s[at] == ',' || s[at] == '}')) return 1;
        p = hit + 1;
    }
    return 0;
}

static void grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return;
    size_t c = *cap ? *cap : 1024;
    while (c < need) c *= 2;
    char *b = realloc(*buf, c);
    if (!b) die("out of memory");
    *buf = b;
    *cap = c;
}

static void conn_read_cb(evutil_socket_t fd, short what, void *arg);
static void conn_write_cb(evutil_socket_t fd, short what, void *arg);
static void pump(struct gen *g);
static void idle_open_more(struct gen *g);

static void check_end(struct gen *g) {
    if (g->idle_mode) return;
    if (g->scheduled == g->total && g->done == g->total) event_base_loopbreak(g->base);
}

static void note_error(struct gen *g, const char *what) {
    if (!g->first_error) g->first_error = what;
}

static struct conn *conn_new(struct gen *g) {
    struct conn *c = calloc(1, sizeof *c);
    if (!c) die("out of memory");
    c->g = g;
    c->id = (unsigned)g->opened++;
    c->fresh = 1;
    c->fd = socket(g->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket() failed");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->rev = event_new(g->base, c->fd, EV_READ | EV_PERSIST, conn_read_cb, c);
    c->wev = event_new(g->base, c->fd, EV_WRITE, conn_write_cb, c);
    if (!c->rev || !c->wev) die("out of memory");
    c->connecting = 1;
    if (connect(c->fd, (struct sockaddr *)&g->addr, g->addr_len) != 0 && errno != EINPROGRESS) {
        /* reported by the write callback through SO_ERROR, like an asynchronous failure */
    }
    event_add(c->wev, NULL);
    g->n_conns++;
    return c;
}

/* A connection that failed or that the server closed: its request in flight (if any) fails. */
static void conn_close(struct conn *c, const char *why) {
    struct gen *g = c->g;
    if (c->busy) {
        g->done++;
        g->failed++;
        if (g->idle_mode) g->idle_replied++;
        note_error(g, why);
    }
    event_free(c->rev);
    event_free(c->wev);
    close(c->fd);
    free(c->out);
    free(c->in);
    /* an idle connection is in g->idle: take it out */
    for (struct conn **p = &g->idle; *p; p = &(*p)->next_idle)
        if (*p == c) {
            *p = c->next_idle;
            break;
        }
    int was_busy = c->busy;
    free(c);
    g->n_conns--;
    if (g->idle_mode) {
        if (was_busy) idle_open_more(g);
        return;
    }
    pump(g);
    check_end(g);
}

/* Writes what is left of the request; 0 when all of it is out (or waits for writability). */
static int conn_flush(struct conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            event_add(c->wev, NULL);
            return 0;
        }
        conn_close(c, "send failed");
        return -1;
    }
    if (!c->sent_ns) c->sent_ns = now_ns();
    return 0;
}

static char *put(char *o, const char *s, size_t n) {
    memcpy(o, s, n);
    return o + n;
}

/* Builds the request for target and sends it on c (now, or once c is connected). */
static void send_on(struct gen *g, struct conn *c, uint64_t due) {
    const char *target = g->path;
    if (g->targets) {
        if (g->next_target == g->n_targets) {
            g->ran_out++;
            g->done++;
            g->failed++;
            note_error(g, "the file's targets ran out");
            c->next_idle = g->idle;
            g->idle = c;
            check_end(g);
            return;
        }
        target = g->targets[g->next_target++];
    }
    size_t tl = strlen(target), hl = strlen(g->host_port);
    size_t need = 4 + tl + 17 + hl + 2 + 2;
    if (g->header_name) need += strlen(g->header_name) + 2 + strlen(g->header_value) + 2;
    grow(&c->out, &c->out_cap, need);
    char *o = c->out;
    o = put(o, "GET ", 4);
    o = put(o, target, tl);
    o = put(o, " HTTP/1.1\r\nHost: ", 17);
    o = put(o, g->host_port, hl);
    o = put(o, "\r\n", 2);
    if (g->header_name) {
        o = put(o, g->header_name, strlen(g->header_name));
        o = put(o, ": ", 2);
        o = put(o, g->header_value, strlen(g->header_value));
        o = put(o, "\r\n", 2);
    }
    o = put(o, "\r\n", 2);
    c->out_len = (size_t)(o - c->out);
    c->out_off = 0;
    c->in_len = 0;
    c->busy = 1;
    c->due_ns = due;
    c->sent_ns = 0;
    if (!c->connecting) conn_flush(c);
}

static void dispatch(struct gen *g, uint64_t due) {
    struct conn *c = g->idle;
    if (c) {
        g->idle = c->next_idle;
    } else if (g->n_conns < g->max_conns) {
        c = conn_new(g);
        if (due >= g->measure_from) g->opened_late++;
    } else {
        if (g->q_len == g->q_cap) die("queue full");
        g->queue[(g->q_head + g->q_len) % g->q_cap] = due;
        g->q_len++;
        if (due >= g->measure_from) g->queued++;
        return;
    }
    send_on(g, c, due);
}

/* Queued requests go out on connections that became free (or were closed). */
static void pump(struct gen *g) {
    while (g->q_len && (g->idle || g->n_conns < g->max_conns)) {
        uint64_t due = g->queue[g->q_head];
        g->q_head = (g->q_head + 1) % g->q_cap;
        g->q_len--;
        struct conn *c = g->idle;
        if (c)
            g->idle = c->next_idle;
        else
            c = conn_new(g);
        send_on(g, c, due);
    }
}

static void conn_write_cb(evutil_socket_t fd, short what, void *arg) {
    struct conn *c = arg;
    (void)what;
    if (c->connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            conn_close(c, "connect failed");
            return;
        }
        c->connecting = 0;
        event_add(c->rev, NULL);
    }
    if (c->busy) conn_flush(c);
}

/* The head's status, Content-Length and whether the server closes; -1 while incomplete, -2 for
 * a reply this client cannot read. */
static int parse_head(const char *s, size_t len, size_t *head_len, size_t *body_len, int *status,
                      int *close_after) {
    const char *end = memmem(s, len, "\r\n\r\n", 4);
    if (!end) return len > 65536 ? -2 : -1;
    *head_len = (size_t)(end - s) + 4;
    uint64_t v;
    if (*head_len < 12 || memcmp(s, "HTTP/1.", 7) != 0 || num_parse_u64(s + 9, 3, &v) != 0)
        return -2;
    *status = (int)v;
    int have_length = 0;
    *close_after = s[7] == '0';
    for (const char *p = memchr(s, '\n', *head_len) + 1; p < end;) {
        const char *eol = memchr(p, '\r', (size_t)(end + 2 - p));
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (colon) {
            size_t nl = (size_t)(colon - p);
            const char *val = colon + 1;
            while (val < eol && *val == ' ') val++;
            size_t vl = (size_t)(eol - val);
            if (nl == 14 && strncasecmp(p, "Content-Length", 14) == 0) {
                if (num_parse_range(val, vl, 0, REPLY_MAX, &v) != 0) return -2;
                *body_len = (size_t)v;
                have_length = 1;
            } else if (nl == 17 && strncasecmp(p, "Transfer-Encoding", 17) == 0) {
                return -2;
            } else if (nl == 10 && strncasecmp(p, "Connection", 10) == 0) {
                if (vl == 5 && strncasecmp(val, "close", 5) == 0) *close_after = 1;
                if (vl == 10 && strncasecmp(val, "keep-alive", 10) == 0) *close_after = 0;
            }
        }
        p = eol + 2;
    }
    return have_length ? 0 : -2;
}

static void reply_done(struct conn *c, uint64_t t, int status, const char *body, size_t body_len,
                       int close_after) {
    struct gen *g = c->g;
    c->busy = 0;
    g->done++;
    if (status < 200 || status > 299) {
        g->failed++;
        note_error(g, "a reply was not 2xx");
    } else {
        if (body_has_code0(body, body_len))
            g->good++;
        else
            g->bad++;
        if (!g->idle_mode && c->due_ns >= g->measure_from) {
            hist_add(&g->lat, t - c->due_ns);
            if (g->trace)
                fprintf(g->trace, "%llu %llu %llu %u %u\n",
                        (unsigned long long)(c->due_ns - g->t0) / 1000,
                        (unsigned long long)(c->sent_ns - g->t0) / 1000,
                        (unsigned long long)(t - g->t0) / 1000, c->id, c->fresh);
        }
    }
    c->fresh = 0;
    if (g->idle_mode) {
        g->idle_replied++;
        if (close_after) conn_close(c, NULL); /* not busy: opens no other */
        idle_open_more(g);
        return;
    }
    if (close_after) {
        conn_close(c, NULL);
        return;
    }
    if (g->q_len) {
        uint64_t due = g->queue[g->q_head];
        g->q_head = (g->q_head + 1) % g->q_cap;
        g->q_len--;
        send_on(g, c, due);
    } else {
        c->next_idle = g->idle;
        g->idle = c;
    }
    check_end(g);
}

static void conn_read_cb(evutil_socket_t fd, short what, void *arg) {
    struct conn *c = arg;
    (void)what;
    int eof = 0;
    for (;;) {
        grow(&c->in, &c->in_cap, c->in_len + 4096);
        size_t space = c->in_cap - c->in_len;
        ssize_t n = recv(fd, c->in + c->in_len, space, 0);
        if (n > 0) {
            c->in_len += (size_t)n;
            if (c->in_len > REPLY_MAX + 65536) {
                conn_close(c, "reply too large");
                return;
            }
            if ((size_t)n < space) break; /* the socket is drained */
            continue;
        }
        if (n == 0) {
            eof = 1;
            break;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        conn_close(c, "recv failed");
        return;
    }
    uint64_t t = now_ns();
    if (!c->busy) {
        conn_close(c, c->in_len ? "bytes from the server with no request in flight" : NULL);
        return;
    }
    size_t head_len = 0, body_len = 0;
    int status = 0, close_after = 0;
    int r = parse_head(c->in, c->in_len, &head_len, &body_len, &status, &close_after);
    if (r == -2) {
        conn_close(c, "a reply without Content-Length, or not HTTP/1.x");
        return;
    }
    if (r == 0 && c->in_len >= head_len + body_len) {
        if (c->in_len > head_len + body_len) {
            conn_close(c, "bytes after the reply");
            return;
        }
        reply_done(c, t, status, c->in + head_len, body_len, close_after || eof);
        return;
    }
    if (eof) conn_close(c, "the server closed the connection before the whole reply");
}

static void tick_cb(evutil_socket_t fd, short what, void *arg) {
    struct gen *g = arg;
    (void)fd;
    (void)what;
    uint64_t t = now_ns();
    while (g->scheduled < g->total) {
        uint64_t due = g->t0 + (uint64_t)((double)g->scheduled * 1e9 / g->rate);
        if (due > t) {
            uint64_t wait = due - t;
            struct timeval tv = {(time_t)(wait / 1000000000u),
                                 (suseconds_t)(wait % 1000000000u / 1000)};
            /* libevent adds tv to the time cached at the start of this loop turn: refresh it */
            event_base_update_cache_time(g->base);
            event_add(g->tick, &tv);
            return;
        }
        g->scheduled++;
        if (due >= g->measure_from) hist_add(&g->lag, t - due);
        dispatch(g, due);
        t = now_ns();
    }
    check_end(g);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg) {
    struct gen *g = arg;
    (void)fd;
    (void)what;
    note_error(g, "replies still missing 30 s after the last due time");
    event_base_loopbreak(g->base);
}

static void idle_open_more(struct gen *g) {
    while (g->idle_started < g->idle_n && g->idle_started - g->idle_replied < IDLE_INFLIGHT) {
        if (g->targets && g->next_target == g->n_targets)
            die("--file has fewer targets than --idle");
        struct conn *c = conn_new(g);
        g->idle_started++;
        send_on(g, c, now_ns());
    }
    if (g->idle_replied == g->idle_n) {
        printf("capgate-loadgen: %zu idle connections open (%zu good, %zu failed, %zu bad "
               "replies)\n",
               g->idle_n, g->good, g->failed, g->bad);
        fflush(stdout);
        struct timeval tv = {(time_t)g->hold_s, 0};
        event_base_loopexit(g->base, &tv);
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
    (void)sig;
    (void)what;
    event_base_loopbreak(arg);
}

static void load_file(struct gen *g, const char *file) {
    FILE *f = fopen(file, "r");
    if (!f) die("cannot open --file");
    size_t cap = 0;
    char *line = NULL;
    size_t len = 0;
    ssize_t n;
    while ((n = getline(&line, &len, f)) > 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
        if (!n) continue;
        if (g->n_targets == cap) {
            cap = cap ? cap * 2 : 4096;
            char **t = realloc(g->targets, cap * sizeof *t);
            if (!t) die("out of memory");
            g->targets = t;
        }
        if (!(g->targets[g->n_targets++] = strdup(line))) die("out of memory");
    }
    free(line);
    fclose(f);
    if (!g->n_targets) die("--file holds no request targets");
}

static uint64_t arg_u64(const char *name, const char *v, uint64_t min, uint64_t max) {
    uint64_t x;
    if (!v || num_parse_range(v, strlen(v), min, max, &x) != 0) {
        fprintf(stderr, "capgate-loadgen: %s takes an integer in %llu..%llu\n", name,
                (unsigned long long)min, (unsigned long long)max);
        exit(2);
    }
    return x;
}

static void resolve(struct gen *g) {
    const char *colon = strrchr(g->host_port, ':');
    char host[256];
    if (!colon || colon == g->host_port || (size_t)(colon - g->host_port) >= sizeof host)
        die("--host is HOST:PORT");
    memcpy(host, g->host_port, (size_t)(colon - g->host_port));
    host[colon - g->host_port] = '\0';
    arg_u64("--host's port", colon + 1, 1, 65535);
    struct addrinfo hints = {0}, *res;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, colon + 1, &hints, &res) != 0 || !res) die("cannot resolve --host");
    memcpy(&g->addr, res->ai_addr, res->ai_addrlen);
    g->addr_len = res->ai_addrlen;
    freeaddrinfo(res);
}

static double cpu_us(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec * 1e6 + (double)ru.ru_utime.tv_usec +
           (double)ru.ru_stime.tv_sec * 1e6 + (double)ru.ru_stime.tv_usec;
}

int main(int argc, char **argv) {
    struct gen g = {0};
    const char *file = NULL, *header = NULL, *trace = NULL;
    uint64_t duration_s = 0, warmup_s = 0, rate = 0, conns = 64, idle = 0, hold = 3600;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--host") == 0 && v)
            g.host_port = v;
        else if (strcmp(a, "--file") == 0 && v)
            file = v;
        else if (strcmp(a, "--path") == 0 && v)
            g.path = v;
        else if (strcmp(a, "--header") == 0 && v)
            header = v;
        else if (strcmp(a, "--trace") == 0 && v)
            trace = v;
        else if (strcmp(a, "--rate") == 0)
            rate = arg_u64(a, v, 1, 10000000);
        else if (strcmp(a, "--duration") == 0)
            duration_s = arg_u64(a, v, 1, 3600);
        else if (strcmp(a, "--warmup") == 0)
            warmup_s = arg_u64(a, v, 0, 3600);
        else if (strcmp(a, "--connections") == 0)
            conns = arg_u64(a, v, 1, 100000);
        else if (strcmp(a, "--idle") == 0)
            idle = arg_u64(a, v, 1, 1000000);
        else if (strcmp(a, "--hold") == 0)
            hold = arg_u64(a, v, 0, 86400);
        else {
            fprintf(stderr, "capgate-loadgen: unknown or incomplete argument %s\n", a);
            return 2;
        }
        i++;
    }
    if (!g.host_port || (!file == !g.path) || (!rate == !idle) || (rate && !duration_s))
        die("usage: --host HOST:PORT (--file FILE | --path PATH) [--header 'Name: value'] "
            "(--rate R --duration S [--warmup S] [--connections C] [--trace FILE] "
            "| --idle N [--hold S])");
    resolve(&g);
    static char hname[128];
    if (header) {
        const char *sep = strchr(header, ':');
        if (!sep || sep == header || (size_t)(sep - header) >= sizeof hname)
            die("--header is 'Name: value'");
        memcpy(hname, header, (size_t)(sep - header));
        g.header_name = hname;
        g.header_value = sep + 1 + strspn(sep + 1, " ");
        if (strpbrk(header, "\r\n")) die("--header holds a line break");
    }
    if (strpbrk(g.host_port, "\r\n") || (g.path && strpbrk(g.path, "\r\n")))
        die("--host and --path hold no line break");
    if (file) load_file(&g, file);
    signal(SIGPIPE, SIG_IGN);

    struct event_config *cfg = event_config_new();
    if (!cfg) die("out of memory");
    /* timerfd-backed timers and CLOCK_MONOTONIC rather than the coarse clock */
    event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    g.base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    if (!g.base) die("event_base_new failed");
    struct event *sigterm = evsignal_new(g.base, SIGTERM, on_signal, g.base);
    struct event *sigint = evsignal_new(g.base, SIGINT, on_signal, g.base);
    if (!sigterm || !sigint || event_add(sigterm, NULL) || event_add(sigint, NULL))
        die("signal events failed");

    if (idle) {
        g.idle_mode = 1;
        g.idle_n = idle;
        g.hold_s = (unsigned)hold;
        idle_open_more(&g);
        event_base_dispatch(g.base);
        return g.idle_replied == g.idle_n && !g.failed && !g.bad ? 0 : 1;
    }

    g.rate = (double)rate;
    g.total = rate * (duration_s + warmup_s);
    g.max_conns = conns;
    g.q_cap = g.total;
    g.queue = malloc(g.q_cap * sizeof *g.queue);
    hist_init(&g.lat);
    hist_init(&g.lag);
    g.tick = evtimer_new(g.base, tick_cb, &g);
    g.deadline = evtimer_new(g.base, on_deadline, &g);
    if (!g.queue || !g.tick || !g.deadline) die("out of memory");
    if (trace && !(g.trace = fopen(trace, "w"))) die("cannot open --trace");
    double cpu0 = cpu_us();
    g.t0 = now_ns() + 1000000; /* 1 ms from now */
    g.measure_from = g.t0 + warmup_s * 1000000000u;
    if (g.trace)
        fprintf(g.trace,
                "# t0 %llu ns CLOCK_MONOTONIC; due sent done (us from t0) connection first\n",
                (unsigned long long)g.t0);
    struct timeval first = {0, 1000};
    struct timeval late = {(time_t)(duration_s + warmup_s + LATE_S), 0};
    event_add(g.tick, &first);
    event_add(g.deadline, &late);
    event_base_dispatch(g.base);
    double cpu = cpu_us() - cpu0;
    double took = (double)(now_ns() - g.t0) / 1e9;
    if (g.done < g.total) g.failed += g.total - g.done;
    printf("capgate-loadgen: rate %llu/s for %llu s (after %llu s of warm-up) over at most %llu "
           "connections (%zu opened): %zu scheduled, %zu replied, %zu good, %zu failed, %zu bad, "
           "%zu past the file's end, %.2f s\n",
           (unsigned long long)rate, (unsigned long long)duration_s, (unsigned long long)warmup_s,
           (unsigned long long)conns, g.opened, g.scheduled, g.done, g.good, g.failed, g.bad,
           g.ran_out, took);
    printf("latency_us p50 %llu p90 %llu p99 %llu p99.9 %llu max %llu\n",
           (unsigned long long)hist_pct(&g.lat, 0.50), (unsigned long long)hist_pct(&g.lat, 0.90),
           (unsigned long long)hist_pct(&g.lat, 0.99), (unsigned long long)hist_pct(&g.lat, 0.999),
           (unsigned long long)(g.lat.max_ns / 1000));
    printf("generator send_lag_us p50 %llu p99 %llu p99.9 %llu max %llu waited_for_connection "
           "%zu new_connections %zu cpu_us_per_request %.2f\n",
           (unsigned long long)hist_pct(&g.lag, 0.50), (unsigned long long)hist_pct(&g.lag, 0.99),
           (unsigned long long)hist_pct(&g.lag, 0.999), (unsigned long long)(g.lag.max_ns / 1000),
           g.queued, g.opened_late, g.total ? cpu / (double)g.total : 0.0);
    if (g.first_error) printf("first error: %s\n", g.first_error);
    if (g.trace) fclose(g.trace);
    event_free(g.tick);
    event_free(g.deadline);
    event_free(sigterm);
    event_free(sigint);
    free(g.queue);
    hist_free(&g.lat);
    hist_free(&g.lag);
    for (size_t i = 0; i < g.n_targets; i++) free(g.targets[i]);
    free(g.targets);
    return g.done == g.total && g.good == g.total ? 0 : 1;
}
