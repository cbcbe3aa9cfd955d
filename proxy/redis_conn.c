/* redis_conn.c: see redis_conn.h. */
#include "redis_conn.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#include "capgate/log.h"
#include "capgate/num.h"
#include "capgate/secmem.h"
#include "capgate/thread.h"
#include "config.h"

/* A sentinel that does not answer within this is skipped (the guidelines ask for "a few
 * hundred milliseconds"); at least the target's timeout_ms. */
#define REDIS_CONN_SENTINEL_MS_MIN 300
#define REDIS_WATCH_RETRY_MS 1000

struct redis_endpoint {
    char *host;
    int port;
};

struct redis_target {
    atomic_uint refs;
    char *host; /* direct */
    int port;
    unsigned db;
    char *password; /* secmem */
    unsigned timeout_ms;
    struct redis_endpoint *sentinels;
    size_t n_sentinels;
    char *master_name;
    char *sentinel_username;
    char *sentinel_password; /* secmem */
    atomic_uint first;       /* the sentinel to ask first: the last one that answered */
    char name[REDIS_CONN_HOST_MAX + 64];
};

struct redis_target *redis_target_new(const struct config_redis *rc, char *err, size_t errlen) {
    struct redis_target *t = calloc(1, sizeof *t);
    if (!t) goto oom;
    atomic_init(&t->refs, 1);
    atomic_init(&t->first, 0);
    t->port = rc->port ? rc->port : 6379;
    t->db = rc->db;
    t->timeout_ms = rc->timeout_ms ? rc->timeout_ms : 100;
    if (rc->host && !(t->host = strdup(rc->host))) goto oom;
    if (rc->password && !(t->password = secmem_strdup(rc->password))) goto oom;
    if (rc->n_sentinels) {
        if (!rc->master_name) {
            snprintf(err, errlen, "redis: sentinels without master_name");
            goto fail;
        }
        if (!(t->sentinels = calloc(rc->n_sentinels, sizeof *t->sentinels))) goto oom;
        for (size_t i = 0; i < rc->n_sentinels; i++) {
            if (!(t->sentinels[i].host = strdup(rc->sentinels[i].host))) goto oom;
            t->sentinels[i].port = rc->sentinels[i].port;
            t->n_sentinels = i + 1;
        }
        if (!(t->master_name = strdup(rc->master_name))) goto oom;
        if (rc->sentinel_username && !(t->sentinel_username = strdup(rc->sentinel_username)))
            goto oom;
        if (rc->sentinel_password && !(t->sentinel_password = secmem_strdup(rc->sentinel_password)))
            goto oom;
        snprintf(t->name, sizeof t->name, "master %s via %zu sentinel%s", t->master_name,
                 t->n_sentinels, t->n_sentinels == 1 ? "" : "s");
    } else {
        if (!t->host) {
            snprintf(err, errlen, "redis: no host");
            goto fail;
        }
        snprintf(t->name, sizeof t->name, strchr(t->host, ':') ? "[%s]:%d" : "%s:%d", t->host,
                 t->port);
    }
    return t;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    redis_target_unref(t);
    return NULL;
}

struct redis_target *redis_target_ref(struct redis_target *t) {
    if (t) atomic_fetch_add(&t->refs, 1);
    return t;
}

void redis_target_unref(struct redis_target *t) {
    if (!t || atomic_fetch_sub(&t->refs, 1) != 1) return;
    free(t->host);
    secmem_free(t->password);
    for (size_t i = 0; i < t->n_sentinels; i++) free(t->sentinels[i].host);
    free(t->sentinels);
    free(t->master_name);
    free(t->sentinel_username);
    secmem_free(t->sentinel_password);
    free(t);
}

unsigned redis_target_timeout_ms(const struct redis_target *t) {
    return t->timeout_ms;
}

int redis_target_uses_sentinels(const struct redis_target *t) {
    return t->n_sentinels > 0;
}

const char *redis_target_password(const struct redis_target *t) {
    return t->password;
}

unsigned redis_target_db(const struct redis_target *t) {
    return t->db;
}

const char *redis_target_name(const struct redis_target *t) {
    return t->name;
}

static unsigned sentinel_ms(const struct redis_target *t) {
    return t->timeout_ms < REDIS_CONN_SENTINEL_MS_MIN ? REDIS_CONN_SENTINEL_MS_MIN : t->timeout_ms;
}

/* ---- the process-wide current target ---- */

static pthread_mutex_t current_lock = PTHREAD_MUTEX_INITIALIZER;
static struct redis_target *current;
static atomic_uint_fast64_t epoch = 1;

static int same_str(const char *a, const char *b) {
    if (!a || !b) return a == b;
    return strcmp(a, b) == 0;
}

static int target_same(const struct redis_target *a, const struct redis_target *b) {
    if (!same_str(a->host, b->host) || a->port != b->port || a->db != b->db ||
        !same_str(a->password, b->password) || a->timeout_ms != b->timeout_ms ||
        a->n_sentinels != b->n_sentinels || !same_str(a->master_name, b->master_name) ||
        !same_str(a->sentinel_username, b->sentinel_username) ||
        !same_str(a->sentinel_password, b->sentinel_password))
        return 0;
    for (size_t i = 0; i < a->n_sentinels; i++)
        if (!same_str(a->sentinels[i].host, b->sentinels[i].host) ||
            a->sentinels[i].port != b->sentinels[i].port)
            return 0;
    return 1;
}

int redis_conn_publish(const struct config_redis *rc, char *err, size_t errlen) {
    struct redis_target *t = redis_target_new(rc, err, errlen), *old;
    if (!t) return -1;
    pthread_mutex_lock(&current_lock);
    if (current && target_same(current, t)) {
        /* a SIGHUP for a log rotation: the connections stay */
        pthread_mutex_unlock(&current_lock);
        redis_target_unref(t);
        return 0;
    }
    if (current) log_info("redis: new connection settings (%s); reconnecting", t->name);
    old = current;
    current = t;
    atomic_fetch_add(&epoch, 1);
    pthread_mutex_unlock(&current_lock);
    redis_target_unref(old);
    return 0;
}

void redis_conn_unpublish(void) {
    pthread_mutex_lock(&current_lock);
    redis_target_unref(current);
    current = NULL;
    pthread_mutex_unlock(&current_lock);
}

uint64_t redis_conn_epoch(void) {
    return atomic_load(&epoch);
}

/* Every watch (one per worker) hears the same switch: one line per new address. */
void redis_conn_master_switched(const char *master_name, const char *host, int port) {
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static char last[REDIS_CONN_HOST_MAX + 16];
    char now[sizeof last];
    snprintf(now, sizeof now, "%s:%d", host, port);
    pthread_mutex_lock(&lock);
    if (strcmp(now, last) != 0) {
        log_info("redis: sentinels switched master %s to %s; reconnecting", master_name, now);
        memcpy(last, now, sizeof last);
    }
    pthread_mutex_unlock(&lock);
    atomic_fetch_add(&epoch, 1);
}

uint64_t redis_conn_refresh(struct redis_target **t) {
    uint64_t e;
    pthread_mutex_lock(&current_lock);
    e = atomic_load(&epoch);
    if (current && current != *t) {
        redis_target_unref(*t);
        *t = redis_target_ref(current);
    }
    pthread_mutex_unlock(&current_lock);
    return e;
}

/* ---- parsing ---- */

int redis_conn_parse_master_addr(const redisReply *r, char *host, size_t hostlen, int *port,
                                 const char **why) {
    uint64_t p;
    if (!r) {
        *why = "no reply";
        return -1;
    }
    if (r->type == REDIS_REPLY_NIL) {
        *why = "the sentinel does not know this master";
        return -1;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        *why = r->str;
        return -1;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING ||
        r->element[0]->len == 0 || r->element[0]->len >= hostlen ||
        strlen(r->element[0]->str) != r->element[0]->len ||
        num_parse_range(r->element[1]->str, r->element[1]->len, 1, 65535, &p) != 0) {
        *why = "the reply is not [host, port]";
        return -1;
    }
    memcpy(host, r->element[0]->str, r->element[0]->len + 1);
    *port = (int)p;
    return 0;
}

int redis_conn_parse_role(const redisReply *r, char *role, size_t rolelen) {
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        (r->element[0]->type != REDIS_REPLY_STRING && r->element[0]->type != REDIS_REPLY_STATUS))
        return -1;
    snprintf(role, rolelen, "%s", r->element[0]->str);
    return strcmp(r->element[0]->str, "master") == 0;
}

int redis_conn_parse_switch(const char *msg, size_t len, const char *master_name, char *host,
                            size_t hostlen, int *port) {
    /* five fields split by single spaces; the name has none (Sentinel refuses such names) */
    const char *f[5], *end = msg + len;
    size_t fl[5], n = 0;
    const char *p = msg;
    uint64_t v;
    while (p < end && n < 5) {
        const char *sp = memchr(p, ' ', (size_t)(end - p));
        f[n] = p;
        fl[n] = sp ? (size_t)(sp - p) : (size_t)(end - p);
        if (fl[n] == 0) return -1;
        n++;
        p = sp ? sp + 1 : end;
        if (sp && p == end) return -1;
    }
    if (n != 5 || p != end) return -1;
    if (fl[3] >= hostlen || memchr(f[3], '\0', fl[3]) ||
        num_parse_range(f[4], fl[4], 1, 65535, &v) != 0 ||
        num_parse_range(f[2], fl[2], 0, 65535, &(uint64_t){0}) != 0)
        return -1;
    if (strlen(master_name) != fl[0] || memcmp(master_name, f[0], fl[0]) != 0) return 0;
    memcpy(host, f[3], fl[3]);
    host[fl[3]] = '\0';
    *port = (int)v;
    return 1;
}

int redis_conn_is_readonly(const redisReply *r) {
    return r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "READONLY", 8) == 0;
}

/* ---- synchronous ---- */

static struct timeval ms_tv(unsigned ms) {
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

static redisContext *connect_timed(const char *host, int port, unsigned ms, char *err,
                                   size_t errlen) {
    struct timeval tv = ms_tv(ms);
    redisContext *c = redisConnectWithTimeout(host, port, tv);
    if (!c || c->err) {
        snprintf(err, errlen, "connect %s:%d: %s", host, port, c ? c->errstr : "out of memory");
        if (c) redisFree(c);
        return NULL;
    }
    if (redisSetTimeout(c, tv) != REDIS_OK) {
        snprintf(err, errlen, "%s:%d: cannot set the timeout", host, port);
        redisFree(c);
        return NULL;
    }
    return c;
}

/* AUTH [user] password on c: 0, or -1 + err. */
static int auth_sync(redisContext *c, const char *who, const char *user, const char *password,
                     char *err, size_t errlen) {
    redisReply *r;
    if (!password) return 0;
    r = user ? redisCommand(c, "AUTH %s %s", user, password) : redisCommand(c, "AUTH %s", password);
    if (!r || r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "%s: AUTH: %s", who, r ? r->str : c->errstr);
        if (r) freeReplyObject(r);
        return -1;
    }
    freeReplyObject(r);
    return 0;
}

/* Step 1 and 2: the master's address from the first sentinel that knows it. */
static int discover_sync(struct redis_target *t, char *host, size_t hostlen, int *port, char *err,
                         size_t errlen) {
    unsigned first = atomic_load(&t->first) % (unsigned)t->n_sentinels;
    char last[512] = "";
    for (size_t k = 0; k < t->n_sentinels; k++) {
        unsigned i = (unsigned)((first + k) % t->n_sentinels);
        const struct redis_endpoint *s = &t->sentinels[i];
        char who[REDIS_CONN_HOST_MAX + 32];
        const char *why = NULL;
        redisReply *r;
        redisContext *c = connect_timed(s->host, s->port, sentinel_ms(t), last, sizeof last);
        snprintf(who, sizeof who, "sentinel %s:%d", s->host, s->port);
        if (!c) continue;
        if (auth_sync(c, who, t->sentinel_username, t->sentinel_password, last, sizeof last)) {
            redisFree(c);
            continue;
        }
        r = redisCommand(c, "SENTINEL get-master-addr-by-name %s", t->master_name);
        if (redis_conn_parse_master_addr(r, host, hostlen, port, &why) == 0) {
            freeReplyObject(r);
            redisFree(c);
            atomic_store(&t->first, i);
            return 0;
        }
        snprintf(last, sizeof last, "%s: %s", who, r ? why : c->errstr);
        if (r) freeReplyObject(r);
        redisFree(c);
    }
    snprintf(err, errlen, "no sentinel gave the address of master %s (last: %s)", t->master_name,
             last[0] ? last : "none tried");
    return -1;
}

redisContext *redis_conn_open(struct redis_target *t, char *err, size_t errlen) {
    char host[REDIS_CONN_HOST_MAX], who[REDIS_CONN_HOST_MAX + 16], role[32];
    int port = t->port;
    redisContext *c;
    redisReply *r = NULL;
    if (t->n_sentinels) {
        if (discover_sync(t, host, sizeof host, &port, err, errlen) != 0) return NULL;
    } else {
        snprintf(host, sizeof host, "%s", t->host);
    }
    snprintf(who, sizeof who, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
    if (!(c = connect_timed(host, port, t->timeout_ms, err, errlen))) return NULL;
    if (auth_sync(c, who, NULL, t->password, err, errlen)) goto fail;
    if (t->db) {
        r = redisCommand(c, "SELECT %u", t->db);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "%s: SELECT %u: %s", who, t->db, r ? r->str : c->errstr);
            goto fail;
        }
        freeReplyObject(r);
        r = NULL;
    }
    if (t->n_sentinels) {
        /* step 3: the address may be stale (a failover under way) */
        int m;
        r = redisCommand(c, "ROLE");
        if ((m = redis_conn_parse_role(r, role, sizeof role)) != 1) {
            snprintf(err, errlen, "%s: %s", who,
                     !r       ? c->errstr
                     : m == 0 ? "not a master (ROLE says so): the sentinels' answer is stale"
                              : "ROLE: unexpected reply");
            goto fail;
        }
        freeReplyObject(r);
        r = NULL;
    }
    return c;
fail:
    if (r) freeReplyObject(r);
    redisFree(c);
    return NULL;
}

/* ---- asynchronous connections ---- */

struct evdns_base *redis_dns_new(struct event_base *base) {
    return evdns_base_new(base,
                          EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
}

struct redis_dial {
    struct event_base *base;
    struct event *done;
    struct evdns_getaddrinfo_request *req; /* a lookup under way */
    int cancelled;                         /* while req: on_dns frees */
    redisAsyncContext *ac;
    int port;
    redis_dial_fn cb;
    void *arg;
    char err[256];
};

static void dial_free(struct redis_dial *d) {
    if (d->ac) redisAsyncFree(d->ac);
    if (d->done) event_free(d->done);
    free(d);
}

/* Connects to the numeric address ip (no lookup in hiredis) and delivers. */
static void dial_connect(struct redis_dial *d, const char *ip) {
    redisAsyncContext *ac = redisAsyncConnect(ip, d->port);
    if (!ac || ac->err) {
        snprintf(d->err, sizeof d->err, "connect %s:%d: %s", ip, d->port,
                 ac ? ac->errstr : "out of memory");
        if (ac) redisAsyncFree(ac);
    } else if (redisLibeventAttach(ac, d->base) != REDIS_OK) {
        snprintf(d->err, sizeof d->err, "cannot attach to the event loop");
        redisAsyncFree(ac);
    } else {
        d->ac = ac;
    }
    event_active(d->done, EV_TIMEOUT, 0);
}

static void dial_on_dns(int result, struct evutil_addrinfo *res, void *arg) {
    struct redis_dial *d = arg;
    char ip[INET6_ADDRSTRLEN] = "";
    d->req = NULL;
    if (d->cancelled) {
        if (res) evutil_freeaddrinfo(res);
        dial_free(d);
        return;
    }
    if (result == 0 && res) {
        /* one address is tried: an IPv4 one when there is one ("localhost" is often ::1 first,
         * and Redis is often bound to 127.0.0.1 only) */
        const struct evutil_addrinfo *pick = res;
        for (const struct evutil_addrinfo *p = res; p; p = p->ai_next)
            if (p->ai_family == AF_INET) {
                pick = p;
                break;
            }
        const void *a = pick->ai_family == AF_INET6
                            ? (const void *)&((struct sockaddr_in6 *)pick->ai_addr)->sin6_addr
                            : (const void *)&((struct sockaddr_in *)pick->ai_addr)->sin_addr;
        if (!evutil_inet_ntop(pick->ai_family, a, ip, sizeof ip)) ip[0] = '\0';
    }
    if (res) evutil_freeaddrinfo(res);
    if (!ip[0]) {
        snprintf(d->err, sizeof d->err, "cannot resolve: %s",
                 result ? evutil_gai_strerror(result) : "no address");
        event_active(d->done, EV_TIMEOUT, 0);
        return;
    }
    dial_connect(d, ip);
}

static void dial_on_done(evutil_socket_t fd, short what, void *arg) {
    struct redis_dial *d = arg;
    redisAsyncContext *ac = d->ac;
    redis_dial_fn cb = d->cb;
    void *cbarg = d->arg;
    char err[sizeof d->err];
    (void)fd;
    (void)what;
    memcpy(err, d->err, sizeof err);
    d->ac = NULL;
    dial_free(d);
    cb(ac ? NULL : err, ac, cbarg);
}

struct redis_dial *redis_dial_start(struct event_base *base, struct evdns_base *dns,
                                    const char *host, int port, redis_dial_fn cb, void *arg) {
    struct redis_dial *d = calloc(1, sizeof *d);
    struct in6_addr a6;
    struct in_addr a4;
    struct evutil_addrinfo hints;
    if (!d) return NULL;
    d->base = base;
    d->port = port;
    d->cb = cb;
    d->arg = arg;
    if (!(d->done = event_new(base, -1, 0, dial_on_done, d))) {
        free(d);
        return NULL;
    }
    if (evutil_inet_pton(AF_INET, host, &a4) == 1 || evutil_inet_pton(AF_INET6, host, &a6) == 1) {
        dial_connect(d, host);
        return d;
    }
    if (!dns) {
        snprintf(d->err, sizeof d->err, "cannot resolve %s: no resolver", host);
        event_active(d->done, EV_TIMEOUT, 0);
        return d;
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    /* the callback may run inside this call (an /etc/hosts answer): it only activates done */
    d->req = evdns_getaddrinfo(dns, host, NULL, &hints, dial_on_dns, d);
    return d;
}

void redis_dial_cancel(struct redis_dial *d) {
    if (!d) return;
    if (d->req) {
        /* the lookup calls back (EVUTIL_EAI_CANCEL), now or later; it frees d then */
        d->cancelled = 1;
        evdns_getaddrinfo_cancel(d->req);
        return;
    }
    dial_free(d);
}

/* ---- asynchronous discovery ---- */

struct redis_resolve {
    struct redis_target *t;
    struct event_base *base;
    struct evdns_base *dns;
    struct redis_dial *dial; /* the sentinel's address being looked up and connected to */
    redis_resolve_fn cb;
    void *arg;
    redisAsyncContext *ac;
    struct event *timer; /* the current sentinel's deadline */
    struct event *done;  /* delivers the answer on a later loop turn */
    size_t tried;
    unsigned at; /* the sentinel being asked */
    int finished;
    char last[400]; /* the last sentinel's error */
    char err[640];
    char host[REDIS_CONN_HOST_MAX];
    int port;
};

static void resolve_next(struct redis_resolve *r);

/* Lets go of the current sentinel connection (safe inside its callbacks: hiredis frees later). */
static void resolve_close(struct redis_resolve *r) {
    redisAsyncContext *ac = r->ac;
    if (r->timer) event_del(r->timer);
    redis_dial_cancel(r->dial);
    r->dial = NULL;
    if (!ac) return;
    r->ac = NULL;
    ac->data = NULL;
    ac->onConnect = NULL;
    ac->onDisconnect = NULL;
    redisAsyncFree(ac);
}

static void resolve_finish(struct redis_resolve *r) {
    r->finished = 1;
    resolve_close(r);
    event_active(r->done, EV_TIMEOUT, 0);
}

static void resolve_failed(struct redis_resolve *r, const char *why) {
    const struct redis_endpoint *s = &r->t->sentinels[r->at];
    snprintf(r->last, sizeof r->last, "sentinel %s:%d: %s", s->host, s->port, why);
    resolve_close(r);
    resolve_next(r);
}

static void resolve_on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    struct redis_resolve *r = ac->data;
    const char *why = NULL;
    (void)privdata;
    if (!r || r->ac != ac) return;
    if (redis_conn_parse_master_addr(reply, r->host, sizeof r->host, &r->port, &why) != 0) {
        resolve_failed(r, reply ? why : (ac->errstr[0] ? ac->errstr : "connection lost"));
        return;
    }
    atomic_store(&r->t->first, r->at);
    resolve_finish(r);
}

static void resolve_on_auth(redisAsyncContext *ac, void *reply, void *privdata) {
    struct redis_resolve *r = ac->data;
    redisReply *rep = reply;
    char why[200];
    (void)privdata;
    if (!r || r->ac != ac || !rep || rep->type != REDIS_REPLY_ERROR) return;
    snprintf(why, sizeof why, "AUTH: %s", rep->str);
    resolve_failed(r, why);
}

static void resolve_on_connect(const redisAsyncContext *ac, int status) {
    struct redis_resolve *r = ac->data;
    char why[200];
    if (!r || r->ac != ac || status == REDIS_OK) return;
    /* hiredis frees ac after this returns */
    snprintf(why, sizeof why, "connect: %s", ac->errstr[0] ? ac->errstr : "error");
    r->ac = NULL;
    ((redisAsyncContext *)ac)->data = NULL;
    resolve_failed(r, why);
}

static void resolve_on_disconnect(const redisAsyncContext *ac, int status) {
    struct redis_resolve *r = ac->data;
    if (!r || r->ac != ac) return;
    r->ac = NULL;
    ((redisAsyncContext *)ac)->data = NULL;
    resolve_failed(r, "disconnected");
}

static void resolve_on_timeout(evutil_socket_t fd, short what, void *arg) {
    struct redis_resolve *r = arg;
    (void)fd;
    (void)what;
    resolve_failed(r, "no answer in time");
}

static void resolve_on_done(evutil_socket_t fd, short what, void *arg) {
    struct redis_resolve *r = arg;
    redis_resolve_fn cb = r->cb;
    void *cbarg = r->arg;
    char err[sizeof r->err], host[sizeof r->host];
    int port = r->port, ok = r->host[0] != '\0';
    (void)fd;
    (void)what;
    memcpy(err, r->err, sizeof err);
    memcpy(host, r->host, sizeof host);
    redis_resolve_cancel(r);
    cb(ok ? NULL : err, ok ? host : NULL, ok ? port : 0, cbarg);
}

static void resolve_on_dial(const char *err, redisAsyncContext *ac, void *arg);

static void resolve_next(struct redis_resolve *r) {
    const struct redis_endpoint *s;
    unsigned ms = sentinel_ms(r->t);
    struct timeval tv = ms_tv(ms);
    if (r->tried >= r->t->n_sentinels) {
        snprintf(r->err, sizeof r->err, "no sentinel gave the address of master %.180s (last: %s)",
                 r->t->master_name, r->last[0] ? r->last : "none");
        resolve_finish(r);
        return;
    }
    r->at = (unsigned)((atomic_load(&r->t->first) + r->tried) % r->t->n_sentinels);
    r->tried++;
    s = &r->t->sentinels[r->at];
    if (!(r->dial = redis_dial_start(r->base, r->dns, s->host, s->port, resolve_on_dial, r))) {
        snprintf(r->last, sizeof r->last, "sentinel %s:%d: out of memory", s->host, s->port);
        resolve_next(r);
        return;
    }
    event_add(r->timer, &tv); /* the lookup, the connect and the answer */
}

static void resolve_on_dial(const char *err, redisAsyncContext *ac, void *arg) {
    struct redis_resolve *r = arg;
    r->dial = NULL;
    if (err) {
        resolve_failed(r, err);
        return;
    }
    ac->data = r;
    r->ac = ac;
    redisAsyncSetConnectCallback(ac, resolve_on_connect);
    redisAsyncSetDisconnectCallback(ac, resolve_on_disconnect);
    /* queued now, written once connected */
    if (r->t->sentinel_password) {
        if (r->t->sentinel_username)
            redisAsyncCommand(ac, resolve_on_auth, NULL, "AUTH %s %s", r->t->sentinel_username,
                              r->t->sentinel_password);
        else
            redisAsyncCommand(ac, resolve_on_auth, NULL, "AUTH %s", r->t->sentinel_password);
    }
    if (redisAsyncCommand(ac, resolve_on_reply, NULL, "SENTINEL get-master-addr-by-name %s",
                          r->t->master_name) != REDIS_OK)
        resolve_failed(r, "cannot send the command");
}

struct redis_resolve *redis_resolve_start(struct redis_target *t, struct event_base *base,
                                          struct evdns_base *dns, redis_resolve_fn cb, void *arg) {
    struct redis_resolve *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->t = redis_target_ref(t);
    r->base = base;
    r->dns = dns;
    r->cb = cb;
    r->arg = arg;
    if (!(r->timer = event_new(base, -1, 0, resolve_on_timeout, r)) ||
        !(r->done = event_new(base, -1, 0, resolve_on_done, r))) {
        redis_resolve_cancel(r);
        return NULL;
    }
    if (!t->n_sentinels) {
        snprintf(r->host, sizeof r->host, "%s", t->host);
        r->port = t->port;
        resolve_finish(r);
        return r;
    }
    resolve_next(r);
    return r;
}

void redis_resolve_cancel(struct redis_resolve *r) {
    if (!r) return;
    resolve_close(r);
    if (r->timer) event_free(r->timer);
    if (r->done) event_free(r->done);
    redis_target_unref(r->t);
    free(r);
}

/* ---- +switch-master ---- */

struct redis_watch {
    struct redis_target *t;
    struct event_base *base;
    struct evdns_base *dns;
    struct redis_dial *dial;
    void (*cb)(void *arg);
    void *arg;
    redisAsyncContext *ac;
    struct event *retry;
    struct event *deadline; /* until the subscription is confirmed (a connect may hang) */
    unsigned at;            /* the sentinel subscribed to (or tried next) */
};

static void watch_connect(struct redis_watch *w);

static void watch_close(struct redis_watch *w) {
    redisAsyncContext *ac = w->ac;
    redis_dial_cancel(w->dial);
    w->dial = NULL;
    if (!ac) return;
    w->ac = NULL;
    ac->data = NULL;
    ac->onConnect = NULL;
    ac->onDisconnect = NULL;
    redisAsyncFree(ac);
}

/* The next sentinel, a little later. */
static void watch_retry(struct redis_watch *w, const char *why) {
    struct timeval tv = ms_tv(REDIS_WATCH_RETRY_MS);
    const struct redis_endpoint *s = &w->t->sentinels[w->at];
    log_debug("redis: +switch-master watch on sentinel %s:%d: %s; trying the next", s->host,
              s->port, why);
    watch_close(w);
    event_del(w->deadline);
    w->at = (w->at + 1) % (unsigned)w->t->n_sentinels;
    event_add(w->retry, &tv);
}

static void watch_on_message(redisAsyncContext *ac, void *reply, void *privdata) {
    struct redis_watch *w = ac->data;
    redisReply *r = reply;
    char host[REDIS_CONN_HOST_MAX];
    int port;
    (void)privdata;
    if (!w || w->ac != ac) return;
    if (!r) return; /* the connection is going: the disconnect callback follows */
    if (r->type == REDIS_REPLY_ERROR) {
        char why[200];
        snprintf(why, sizeof why, "%s", r->str);
        watch_retry(w, why);
        return;
    }
    /* ["subscribe", "+switch-master", 1] first, then ["message", "+switch-master", payload] */
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
        r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "subscribe") == 0)
        event_del(w->deadline);
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
        r->element[0]->type != REDIS_REPLY_STRING || strcmp(r->element[0]->str, "message") != 0 ||
        r->element[2]->type != REDIS_REPLY_STRING)
        return;
    if (redis_conn_parse_switch(r->element[2]->str, r->element[2]->len, w->t->master_name, host,
                                sizeof host, &port) != 1)
        return;
    redis_conn_master_switched(w->t->master_name, host, port);
    if (w->cb) w->cb(w->arg);
}

static void watch_on_auth(redisAsyncContext *ac, void *reply, void *privdata) {
    struct redis_watch *w = ac->data;
    redisReply *r = reply;
    char why[200];
    (void)privdata;
    if (!w || w->ac != ac || !r || r->type != REDIS_REPLY_ERROR) return;
    snprintf(why, sizeof why, "AUTH: %s", r->str);
    watch_retry(w, why);
}

static void watch_on_connect(const redisAsyncContext *ac, int status) {
    struct redis_watch *w = ac->data;
    if (!w || w->ac != ac || status == REDIS_OK) return;
    w->ac = NULL; /* hiredis frees it */
    ((redisAsyncContext *)ac)->data = NULL;
    watch_retry(w, ac->errstr[0] ? ac->errstr : "connect failed");
}

static void watch_on_disconnect(const redisAsyncContext *ac, int status) {
    struct redis_watch *w = ac->data;
    if (!w || w->ac != ac) return;
    w->ac = NULL;
    ((redisAsyncContext *)ac)->data = NULL;
    watch_retry(w, "disconnected");
}

static void watch_on_retry(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    watch_connect(arg);
}

static void watch_on_dial(const char *err, redisAsyncContext *ac, void *arg) {
    struct redis_watch *w = arg;
    w->dial = NULL;
    if (err) {
        watch_retry(w, err);
        return;
    }
    ac->data = w;
    w->ac = ac;
    redisAsyncSetConnectCallback(ac, watch_on_connect);
    redisAsyncSetDisconnectCallback(ac, watch_on_disconnect);
    if (w->t->sentinel_password) {
        if (w->t->sentinel_username)
            redisAsyncCommand(ac, watch_on_auth, NULL, "AUTH %s %s", w->t->sentinel_username,
                              w->t->sentinel_password);
        else
            redisAsyncCommand(ac, watch_on_auth, NULL, "AUTH %s", w->t->sentinel_password);
    }
    redisAsyncCommand(ac, watch_on_message, NULL, "SUBSCRIBE +switch-master");
}

static void watch_on_deadline(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    watch_retry(arg, "not subscribed in time");
}

static void watch_connect(struct redis_watch *w) {
    const struct redis_endpoint *s = &w->t->sentinels[w->at];
    struct timeval tv = ms_tv(sentinel_ms(w->t) * 2);
    event_add(w->deadline, &tv);
    if (!(w->dial = redis_dial_start(w->base, w->dns, s->host, s->port, watch_on_dial, w)))
        watch_retry(w, "out of memory");
}

struct redis_watch *redis_watch_start(struct redis_target *t, struct event_base *base,
                                      struct evdns_base *dns, void (*cb)(void *arg), void *arg) {
    struct redis_watch *w;
    if (!t->n_sentinels || !(w = calloc(1, sizeof *w))) return NULL;
    w->t = redis_target_ref(t);
    w->base = base;
    w->dns = dns;
    w->cb = cb;
    w->arg = arg;
    w->at = atomic_load(&t->first) % (unsigned)t->n_sentinels;
    if (!(w->retry = event_new(base, -1, 0, watch_on_retry, w)) ||
        !(w->deadline = event_new(base, -1, 0, watch_on_deadline, w))) {
        redis_watch_free(w);
        return NULL;
    }
    watch_connect(w);
    return w;
}

void redis_watch_free(struct redis_watch *w) {
    if (!w) return;
    watch_close(w);
    if (w->retry) event_free(w->retry);
    if (w->deadline) event_free(w->deadline);
    redis_target_unref(w->t);
    free(w);
}

/* ---- admin queries ---- */

void redis_query_set_init(struct redis_query_set *s) {
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->idle, NULL);
    s->running = 0;
}

void redis_query_set_wait(struct redis_query_set *s) {
    pthread_mutex_lock(&s->lock);
    while (s->running > 0) pthread_cond_wait(&s->idle, &s->lock);
    pthread_mutex_unlock(&s->lock);
}

void redis_query_set_destroy(struct redis_query_set *s) {
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->idle);
}

struct redis_query {
    struct redis_query_set *set;
    struct event
        *ev; /* on the reply base: made before the thread starts, so it cannot fail after */
    char *(*work)(void *job, int *status);
    void (*free_job)(void *job);
    void *job;
    void (*done)(const char *json, int http_status, void *arg);
    void *arg;
    char *json;
    int status;
};

static void query_deliver(evutil_socket_t fd, short what, void *arg) {
    struct redis_query *q = arg;
    (void)fd;
    (void)what;
    q->done(q->json ? q->json : "{\"error\":\"out of memory\"}", q->json ? q->status : 500, q->arg);
    event_free(q->ev);
    free(q->json);
    if (q->free_job) q->free_job(q->job);
    free(q);
}

static void *query_thread(void *arg) {
    struct redis_query *q = arg;
    struct redis_query_set *s = q->set;
    thread_name("capgate-query");
    q->status = 500;
    q->json = q->work(q->job, &q->status);
    /* from here the query belongs to the reply base's loop; the set may go once it is idle */
    pthread_mutex_lock(&s->lock);
    s->running--;
    pthread_cond_broadcast(&s->idle);
    event_active(q->ev, EV_TIMEOUT, 0);
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

void redis_query_run(struct redis_query_set *s, struct event_base *reply_base,
                     char *(*work)(void *job, int *status), void *job, void (*free_job)(void *job),
                     void (*done)(const char *json, int http_status, void *arg), void *arg) {
    struct redis_query *q = calloc(1, sizeof *q);
    pthread_t t;
    pthread_attr_t attr;
    int started = 0;
    if (!q || !(q->ev = event_new(reply_base, -1, 0, query_deliver, q))) {
        /* nothing can carry the reply to the loop later: answer now */
        free(q);
        if (free_job) free_job(job);
        done("{\"error\":\"out of memory\"}", 500, arg);
        return;
    }
    q->set = s;
    q->work = work;
    q->free_job = free_job;
    q->job = job;
    q->done = done;
    q->arg = arg;
    pthread_mutex_lock(&s->lock);
    s->running++;
    pthread_mutex_unlock(&s->lock);
    if (pthread_attr_init(&attr) == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        started = thread_start(&t, &attr, query_thread, q) == 0;
        pthread_attr_destroy(&attr);
    }
    if (!started) {
        pthread_mutex_lock(&s->lock);
        s->running--;
        pthread_cond_broadcast(&s->idle);
        pthread_mutex_unlock(&s->lock);
        q->json = strdup("{\"error\":\"cannot start a query thread\"}");
        q->status = 503;
        event_active(q->ev, EV_TIMEOUT, 0);
    }
}
