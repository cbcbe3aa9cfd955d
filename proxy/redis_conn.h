/* redis_conn.h: the one way every Redis client of capgate reaches its server: the workers'
 * async store (store_redis.c), the audit sink and its queries (audit.c), the metrics flush and
 * its queries (minute_stats.c).
 *
 * A target is the connection settings of the redis section, immutable and reference counted:
 * either a direct host:port, or a list of Sentinels and a master name. With Sentinels, every
 * connect follows the Sentinel client guidelines (https://redis.io/docs/reference/sentinel-clients/):
 *  1. ask the sentinels in turn (short timeouts; the one that answered last is asked first)
 *     SENTINEL get-master-addr-by-name <master_name>;
 *  2. connect to that address (host names resolved again at every connect: hiredis calls
 *     getaddrinfo on each connect), AUTH and SELECT as configured;
 *  3. ROLE must say "master", else the connect fails and the caller retries from 1.
 * A disconnect, a timeout or a -READONLY reply makes the caller drop the connection and connect
 * again (so discover again). A watch (redis_watch_*) subscribes to +switch-master on a sentinel
 * and moves the process-wide epoch, which every client compares with the one it connected at.
 *
 * The process-wide current target is what SIGHUP changes (redis_conn_publish): each client
 * picks it up at its next connect, and one whose epoch is behind reconnects. */
#ifndef CAPGATE_REDIS_CONN_H
#define CAPGATE_REDIS_CONN_H
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>

struct config_redis;
struct event_base;

#define REDIS_CONN_HOST_MAX 256

struct redis_target;

/* A target from the config's redis section (strings copied, passwords into secmem). NULL + err. */
struct redis_target *redis_target_new(const struct config_redis *rc, char *err, size_t errlen);
struct redis_target *redis_target_ref(struct redis_target *t);
void redis_target_unref(struct redis_target *t);
unsigned redis_target_timeout_ms(const struct redis_target *t);
/* 1 when the master comes from sentinels. */
int redis_target_uses_sentinels(const struct redis_target *t);
const char *redis_target_password(const struct redis_target *t); /* NULL: no AUTH */
unsigned redis_target_db(const struct redis_target *t);
/* "host:port", or "master <name> via N sentinels", for logs. */
const char *redis_target_name(const struct redis_target *t);

/* ---- the process-wide current target and epoch ---- */

/* Makes a target of rc the current one (at start, and at each SIGHUP) and moves the epoch,
 * unless the settings are those already current. 0, or -1 + err (the current one is kept). */
int redis_conn_publish(const struct config_redis *rc, char *err, size_t errlen);
/* Forgets the current target (at exit). */
void redis_conn_unpublish(void);
/* Moves whenever a client must reconnect: a publish, or a +switch-master seen by a watch. */
uint64_t redis_conn_epoch(void);
/* Called by a watch: the master named moved to host:port. Moves the epoch. */
void redis_conn_master_switched(const char *master_name, const char *host, int port);
/* When a target has been published: *t is replaced by (a reference to) the current one. Returns
 * the epoch read before, to remember as the one the next connection was made at. */
uint64_t redis_conn_refresh(struct redis_target **t);

/* ---- synchronous connections (threads that may block: audit sink, metrics flush, queries) ---- */

/* Connects to t's master (discovery, AUTH, SELECT, ROLE as above), with t's timeout on every
 * read and write. NULL + err. */
redisContext *redis_conn_open(struct redis_target *t, char *err, size_t errlen);

/* 1 when a reply is the -READONLY error of a replica (the master moved: reconnect). */
int redis_conn_is_readonly(const redisReply *r);

/* ---- asynchronous connections (the workers' event loops) ---- */

/* hiredis's connect resolves a host name with a blocking getaddrinfo: on an event loop, names
 * are resolved first with evdns (libevent; /etc/hosts, then the resolv.conf servers, again at
 * every connect), and hiredis gets the address. dns: the loop's evdns base (the caller makes it
 * with redis_dns_new and frees it after every dial, resolve and watch on it). cb gets, from the
 * loop and never from inside this call, an async context connecting to host:port and attached to
 * base (the caller's from then on), or err. NULL on OOM (cb is then never called). */
struct evdns_base;
struct evdns_base *redis_dns_new(struct event_base *base);
typedef void (*redis_dial_fn)(const char *err, redisAsyncContext *ac, void *arg);
struct redis_dial;
struct redis_dial *redis_dial_start(struct event_base *base, struct evdns_base *dns,
                                    const char *host, int port, redis_dial_fn cb, void *arg);
/* Stops a dial whose callback has not run (it never runs then). */
void redis_dial_cancel(struct redis_dial *d);

/* Asks t's sentinels for the master's address without blocking base, then calls cb once (from
 * base's loop, never from inside this call) with err NULL and host/port, or err. Direct targets
 * answer their host:port. NULL on OOM (cb is then never called). */
typedef void (*redis_resolve_fn)(const char *err, const char *host, int port, void *arg);
struct redis_resolve;
struct redis_resolve *redis_resolve_start(struct redis_target *t, struct event_base *base,
                                          struct evdns_base *dns, redis_resolve_fn cb, void *arg);
/* Stops a resolve whose callback has not run yet (it never runs then). */
void redis_resolve_cancel(struct redis_resolve *r);

/* A subscription to +switch-master on one sentinel at a time (the next after a failure), on
 * base; on a switch of t's master it calls redis_conn_master_switched, then cb. NULL for a
 * direct target or on OOM. */
struct redis_watch;
struct redis_watch *redis_watch_start(struct redis_target *t, struct event_base *base,
                                      struct evdns_base *dns, void (*cb)(void *arg), void *arg);
void redis_watch_free(struct redis_watch *w);

/* ---- admin queries: blocking reads on a thread of their own, answered on a loop ----
 * (/admin/audit and /admin/metrics: each query opens its own redis_conn_open connection there.) */
struct redis_query_set {
    pthread_mutex_t lock;
    pthread_cond_t idle;
    unsigned running;
};
void redis_query_set_init(struct redis_query_set *s);
/* Waits until no query of s runs any more (their owner is about to go). */
void redis_query_set_wait(struct redis_query_set *s);
void redis_query_set_destroy(struct redis_query_set *s);
/* Runs work(job) on a detached thread (it returns a malloc'ed JSON body, NULL on OOM, and sets
 * *status), then, on reply_base's loop, done(json, status, arg) once and free_job(job). When no
 * thread can start, done gets a 503 naming that; on OOM a 500, possibly at once. */
void redis_query_run(struct redis_query_set *s, struct event_base *reply_base,
                     char *(*work)(void *job, int *status), void *job, void (*free_job)(void *job),
                     void (*done)(const char *json, int http_status, void *arg), void *arg);

/* ---- the pure parts, for tests ---- */

/* The reply of SENTINEL get-master-addr-by-name: 0 and host/port, or -1 + why. */
int redis_conn_parse_master_addr(const redisReply *r, char *host, size_t hostlen, int *port,
                                 const char **why);
/* The reply of ROLE: 1 when it says master, 0 when another role (role names it), -1 when the
 * reply has the wrong shape. */
int redis_conn_parse_role(const redisReply *r, char *role, size_t rolelen);
/* A +switch-master message "<name> <old-ip> <old-port> <new-ip> <new-port>": 1 and the new
 * address when name is master_name, 0 for another master, -1 when malformed. */
int redis_conn_parse_switch(const char *msg, size_t len, const char *master_name, char *host,
                            size_t hostlen, int *port);

#endif
