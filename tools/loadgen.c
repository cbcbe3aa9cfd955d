/* loadgen.c: capgate-loadgen, the benchmark's own load generator for what wrk cannot do
 * (scripts/bench.sh --latency and --idle). Debian has no constant-rate HTTP generator (no wrk2,
 * vegeta or oha), so this is one, on libevent's HTTP client.
 *
 * Rate mode (open loop): request i is due at t0 + i / rate, whatever the replies do. A due
 * request goes out on an idle keep-alive connection, on a new one while fewer than
 * --connections are open, or else waits in a queue. Its latency runs from the time it was due,
 * not from when it went out, so a stall of the server counts against every request it delayed
 * (no coordinated omission). Each request target of --file is sent once (pre-signed requests
 * carry a Nonce); a reply counts as good when its status is 2xx and its body holds "code":0.
 * Prints the count, the good, failed and bad replies, and the latency percentiles.
 *
 * Idle mode: opens --idle N keep-alive connections, sends one request on each (at most 256 in
 * flight), and when every reply is in prints "capgate-loadgen: N idle connections open" and
 * keeps them open, without traffic, for --hold seconds (or until SIGTERM / SIGINT).
 *
 * Usage: capgate-loadgen --host HOST:PORT (--file FILE | --path PATH) [--header 'Name: value']
 *          (--rate R --duration S [--connections C] | --idle N [--hold S]) */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "capgate/num.h"

#define HIST_FINE 100000   /* 1 us buckets below 100 ms */
#define HIST_COARSE 100000 /* then 1 ms buckets up to 100 s */
#define IDLE_INFLIGHT 256

struct conn {
    struct evhttp_connection *evcon;
    struct conn *next_idle;
    struct gen *g;
    uint64_t due_ns; /* of the request in flight */
};

struct gen {
    struct event_base *base;
    const char *host_port, *path, *header_name, *header_value;
    char host[256];
    unsigned port;
    char **targets;
    size_t n_targets, next_target;
    /* rate mode */
    double rate;
    uint64_t duration_ns, t0, interval_ns;
    size_t scheduled, total, max_conns, n_conns;
    struct conn *idle;
    uint64_t *queue; /* due times waiting for a connection (ring) */
    size_t q_head, q_len, q_cap;
    struct event *tick;
    size_t done, good, failed, bad, ran_out;
    uint32_t *fine, *coarse;
    uint64_t max_ns;
    /* idle mode */
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

static void record(struct gen *g, uint64_t ns) {
    uint64_t us = ns / 1000;
    if (us < HIST_FINE)
        g->fine[us]++;
    else if (us / 1000 < HIST_COARSE)
        g->coarse[us / 1000]++;
    else
        g->coarse[HIST_COARSE - 1]++;
    if (ns > g->max_ns) g->max_ns = ns;
}

/* The latency (us) below which a share q of the recorded requests fall. */
static uint64_t percentile(const struct gen *g, double q) {
    size_t n = g->good + g->bad, want = (size_t)(q * (double)n + 0.999999), seen = 0;
    if (!n) return 0;
    if (want < 1) want = 1;
    for (size_t i = 0; i < HIST_FINE; i++)
        if ((seen += g->fine[i]) >= want) return i;
    for (size_t i = 0; i < HIST_COARSE; i++)
        if ((seen += g->coarse[i]) >= want) return i * 1000;
    return g->max_ns / 1000;
}

static int body_has_code0(struct evbuffer *b) {
    size_t len = evbuffer_get_length(b);
    const char *s = (const char *)evbuffer_pullup(b, -1);
    for (const char *p = s; p && len >= 9;) {
        const char *hit = memmem(p, len - (size_t)(p - s), "\"code\":0", 8);
        if (!hit) return 0;
        size_t at = (size_t)(hit - s) + 8;
        if (at < len && (s[at] == ',' || s[at] == '}')) return 1;
        p = hit + 1;
    }
    return 0;
}

static void send_on(struct gen *g, struct conn *c, uint64_t due);

static struct conn *conn_new(struct gen *g) {
    struct conn *c = calloc(1, sizeof *c);
    if (!c) die("out of memory");
    c->g = g;
    c->evcon = evhttp_connection_base_new(g->base, NULL, g->host, (unsigned short)g->port);
    if (!c->evcon) die("evhttp_connection_base_new failed");
    evhttp_connection_set_timeout(c->evcon, 30);
    g->n_conns++;
    return c;
}

static void rate_done(struct evhttp_request *req, void *arg) {
    struct conn *c = arg;
    struct gen *g = c->g;
    uint64_t t = now_ns();
    g->done++;
    int status = req ? evhttp_request_get_response_code(req) : 0;
    if (status < 200 || status > 299) {
        g->failed++;
    } else {
        record(g, t - c->due_ns);
        if (body_has_code0(evhttp_request_get_input_buffer(req)))
            g->good++;
        else
            g->bad++;
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
    if (g->scheduled == g->total && g->done == g->total) event_base_loopbreak(g->base);
}

static void send_on(struct gen *g, struct conn *c, uint64_t due) {
    const char *target = g->path;
    if (g->targets) {
        if (g->next_target == g->n_targets) {
            g->ran_out++;
            g->done++;
            g->failed++;
            c->next_idle = g->idle;
            g->idle = c;
            return;
        }
        target = g->targets[g->next_target++];
    }
    struct evhttp_request *req = evhttp_request_new(rate_done, c);
    if (!req) die("out of memory");
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", g->host_port);
    if (g->header_name) evhttp_add_header(h, g->header_name, g->header_value);
    c->due_ns = due;
    if (evhttp_make_request(c->evcon, req, EVHTTP_REQ_GET, target) != 0) {
        g->done++;
        g->failed++;
    }
}

static void dispatch(struct gen *g, uint64_t due) {
    struct conn *c = g->idle;
    if (c) {
        g->idle = c->next_idle;
    } else if (g->n_conns < g->max_conns) {
        c = conn_new(g);
    } else {
        if (g->q_len == g->q_cap) die("queue full");
        g->queue[(g->q_head + g->q_len) % g->q_cap] = due;
        g->q_len++;
        return;
    }
    send_on(g, c, due);
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
            event_add(g->tick, &tv);
            return;
        }
        g->scheduled++;
        dispatch(g, due);
    }
    if (g->done == g->total) event_base_loopbreak(g->base);
}

static void idle_reply(struct evhttp_request *req, void *arg);

static void idle_open_more(struct gen *g) {
    while (g->idle_started < g->idle_n && g->idle_started - g->idle_replied < IDLE_INFLIGHT) {
        struct conn *c = conn_new(g);
        struct evhttp_request *req = evhttp_request_new(idle_reply, c);
        if (!req) die("out of memory");
        struct evkeyvalq *h = evhttp_request_get_output_headers(req);
        evhttp_add_header(h, "Host", g->host_port);
        if (g->header_name) evhttp_add_header(h, g->header_name, g->header_value);
        const char *target = g->path;
        if (g->targets) {
            if (g->next_target == g->n_targets) die("--file has fewer targets than --idle");
            target = g->targets[g->next_target++];
        }
        g->idle_started++;
        if (evhttp_make_request(c->evcon, req, EVHTTP_REQ_GET, target) != 0)
            die("evhttp_make_request failed");
    }
}

static void idle_reply(struct evhttp_request *req, void *arg) {
    struct conn *c = arg;
    struct gen *g = c->g;
    g->idle_replied++;
    int status = req ? evhttp_request_get_response_code(req) : 0;
    if (status < 200 || status > 299)
        g->failed++;
    else if (body_has_code0(evhttp_request_get_input_buffer(req)))
        g->good++;
    else
        g->bad++;
    if (g->idle_replied == g->idle_n) {
        printf("capgate-loadgen: %zu idle connections open (%zu good, %zu failed, %zu bad "
               "replies)\n",
               g->idle_n, g->good, g->failed, g->bad);
        fflush(stdout);
        struct timeval tv = {(time_t)g->hold_s, 0};
        event_base_loopexit(g->base, &tv);
        return;
    }
    idle_open_more(g);
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

int main(int argc, char **argv) {
    struct gen g = {0};
    const char *file = NULL, *header = NULL;
    uint64_t duration_s = 0, rate = 0, conns = 64, idle = 0, hold = 3600;
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
        else if (strcmp(a, "--rate") == 0)
            rate = arg_u64(a, v, 1, 10000000);
        else if (strcmp(a, "--duration") == 0)
            duration_s = arg_u64(a, v, 1, 3600);
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
            "(--rate R --duration S [--connections C] | --idle N [--hold S])");
    const char *colon = strrchr(g.host_port, ':');
    if (!colon || (size_t)(colon - g.host_port) >= sizeof g.host) die("--host is HOST:PORT");
    memcpy(g.host, g.host_port, (size_t)(colon - g.host_port));
    g.port = (unsigned)arg_u64("--host's port", colon + 1, 1, 65535);
    static char hname[128];
    if (header) {
        const char *sep = strchr(header, ':');
        if (!sep || (size_t)(sep - header) >= sizeof hname) die("--header is 'Name: value'");
        memcpy(hname, header, (size_t)(sep - header));
        g.header_name = hname;
        g.header_value = sep + 1 + strspn(sep + 1, " ");
    }
    if (file) load_file(&g, file);
    signal(SIGPIPE, SIG_IGN);

    struct event_config *cfg = event_config_new();
    if (!cfg) die("out of memory");
    event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    g.base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    if (!g.base) die("event_base_new failed");
    struct event *sigterm = evsignal_new(g.base, SIGTERM, on_signal, g.base);
    struct event *sigint = evsignal_new(g.base, SIGINT, on_signal, g.base);
    if (!sigterm || !sigint || event_add(sigterm, NULL) || event_add(sigint, NULL))
        die("signal events failed");

    if (idle) {
        g.idle_n = idle;
        g.hold_s = (unsigned)hold;
        idle_open_more(&g);
        event_base_dispatch(g.base);
        return g.idle_replied == g.idle_n && !g.failed && !g.bad ? 0 : 1;
    }

    g.rate = (double)rate;
    g.total = rate * duration_s;
    g.max_conns = conns;
    g.q_cap = g.total;
    g.queue = malloc(g.q_cap * sizeof *g.queue);
    g.fine = calloc(HIST_FINE, sizeof *g.fine);
    g.coarse = calloc(HIST_COARSE, sizeof *g.coarse);
    g.tick = evtimer_new(g.base, tick_cb, &g);
    if (!g.queue || !g.fine || !g.coarse || !g.tick) die("out of memory");
    g.t0 = now_ns() + 1000000; /* 1 ms from now */
    struct timeval first = {0, 1000};
    event_add(g.tick, &first);
    event_base_dispatch(g.base);
    double took = (double)(now_ns() - g.t0) / 1e9;
    printf("capgate-loadgen: rate %llu/s for %llu s over at most %llu connections (%zu opened): "
           "%zu scheduled, %zu replied, %zu good, %zu failed, %zu bad, %zu past the file's "
           "end, %.2f s\n",
           (unsigned long long)rate, (unsigned long long)duration_s, (unsigned long long)conns,
           g.n_conns, g.scheduled, g.done, g.good, g.failed, g.bad, g.ran_out, took);
    printf("latency_us p50 %llu p90 %llu p99 %llu p99.9 %llu max %llu\n",
           (unsigned long long)percentile(&g, 0.50), (unsigned long long)percentile(&g, 0.90),
           (unsigned long long)percentile(&g, 0.99), (unsigned long long)percentile(&g, 0.999),
           (unsigned long long)(g.max_ns / 1000));
    return g.done == g.total && g.good == g.total ? 0 : 1;
}
