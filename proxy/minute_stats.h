/* minute_stats.h: per-(businessId, sceneId, minute) request counters (docs/design.md "Metrics").
 * Workers add each finished request to their own batch without locks or I/O; one background
 * thread takes every worker's batch each flush_ms and writes them to Redis in one pipeline (or,
 * without Redis, into in-process tables of the same shape); the read side (/admin/stats) sums
 * them per step.
 *
 * Redis layout (every instance writes the same keys, so a query sees all instances together):
 *   hash <prefix>m:<businessId>:<sceneId>:<unix_minute>   absent ids are "-"; unix_minute = ts/60
 *     requests                 every finished request
 *     forwarded pool replayed limited shadow_limited invalid unauthorized denied upstream_error
 *                              requests per decision (pipeline_decision_name)
 *     code:<N>                 requests answered with API code N (code:0 = success)
 *     rule:<name>              requests refused (limited) or that would have been
 *                              (shadow_limited) by limit rule <name>
 *     latency_us_sum           sum of arrival-to-reply latencies, microseconds
 *     le_1ms le_5ms le_10ms le_50ms le_100ms le_500ms le_1s le_5s le_inf
 *                              latency histogram, NON-cumulative: le_5ms counts latencies in
 *                              (1 ms, 5 ms], le_inf those above 5 s; the buckets sum to requests
 *   set  <prefix>m:index       members "<businessId>:<sceneId>" of every pair written
 *   hash <prefix>m:app:<app>:<unix_minute>   the same fields per app ("-": no app known); every
 *                              request is counted once per pair and once per app, so either
 *                              dimension sums to the exact totals
 *   set  <prefix>m:apps        the app names written
 * Each hash and the indexes expire retention_s after their last write. Zero fields are not
 * written. The flush thread also keeps what it wrote in in-process tables (bounded), so
 * /admin/stats can answer from this process's own counts while Redis cannot be read. */
#ifndef CAPGATE_MINUTE_STATS_H
#define CAPGATE_MINUTE_STATS_H
#include <stddef.h>
#include <stdint.h>
#include "record.h"

struct config;
struct event_base;
struct metrics;
struct metrics_batch;

#define METRICS_BUCKETS 9            /* le_1ms .. le_inf */
#define METRICS_BATCH_MAX_KEYS 65536 /* distinct keys one worker batch holds; more are dropped */
#define METRICS_PENDING_MAX_KEYS \
    16384 /* keys kept while Redis is unreachable; the oldest
                                          * minutes beyond this are dropped (and counted) */
#define METRICS_MEMORY_MAX_KEYS \
    262144 /* keys the in-process tables hold without Redis; the
                                          * oldest minutes beyond this are dropped (and counted) */
#define METRICS_LOCAL_MAX_KEYS \
    65536 /* with Redis: keys of this process's own copy (the partial answers during an
           * outage); the oldest minutes beyond this are dropped */
#define METRICS_QUERY_MAX_STEPS 1440

/* ---- lifecycle and the worker side ---- */

/* Copies what it needs from cfg (metrics and redis sections; cfg may be freed afterwards) and
 * starts the flush thread. n_workers is the number of worker slots (worker ids 0..n-1). NULL with
 * err on failure. Redis is not contacted here: an unreachable Redis only delays the flushes. */
struct metrics *metrics_new(const struct config *cfg, unsigned n_workers, char *err, size_t errlen);
/* Adds r to worker's current batch. Called only from that worker's thread; never blocks, never
 * does I/O (it may allocate). r is borrowed for the call. An out-of-range worker, or a batch
 * already holding METRICS_BATCH_MAX_KEYS keys, counts the request as dropped. */
void metrics_record(struct metrics *m, unsigned worker, const struct pipeline_record *r);
/* Asks the flush thread for one flush now and waits until it is done (tests, shutdown). Blocks:
 * never call it from a worker or the main loop. */
void metrics_flush(struct metrics *m);
/* After every worker stopped recording: flushes once more, waits for running queries, joins the
 * thread and frees everything. NULL accepted. */
void metrics_free(struct metrics *m);

/* For /metrics; any thread. */
struct metrics_stats {
    uint64_t flushes;          /* flush cycles that wrote something successfully */
    uint64_t flush_errors;     /* flush cycles that failed (Redis unreachable, error reply) */
    uint64_t pending_keys;     /* keys held in memory waiting for Redis (0 in memory mode) */
    uint64_t dropped_keys;     /* keys dropped because a bound was reached */
    uint64_t dropped_requests; /* requests whose counts were dropped with them */
};
void metrics_get_stats(struct metrics *m, struct metrics_stats *out);

/* ---- the read side: GET /admin/stats ---- */

enum metrics_match { METRICS_MATCH_ANY, METRICS_MATCH_ID, METRICS_MATCH_ABSENT };
/* What the reply's "groups" are: one per businessId, per (businessId, sceneId), per app, or
 * none (only the overall totals and series). */
enum metrics_group {
    METRICS_GROUP_SCENE,
    METRICS_GROUP_BUSINESS,
    METRICS_GROUP_APP,
    METRICS_GROUP_NONE
};

struct metrics_query {
    uint64_t from; /* unix seconds, aligned down to a minute; inclusive */
    uint64_t to;   /* unix seconds; exclusive */
    uint64_t step; /* seconds, a multiple of 60 */
    enum metrics_match business_match, scene_match;
    uint32_t business_id, scene_id; /* with METRICS_MATCH_ID */
    char app[CONFIG_NAME_MAX + 1];  /* "" = every app */
    enum metrics_group group;       /* default METRICS_GROUP_SCENE */
    int fill_none;                  /* fill=none: series leave out steps without requests */
    int by_app;                     /* read the per-app hashes (app= or group=app) */
};

/* Parses the query string of /admin/stats (may be NULL or ""): businessId, sceneId (a number or
 * "-" for absent; no parameter: every value), app (an app name, or "-"), group (business, scene,
 * app, none; default scene), fill (zero, none; default zero), from, to (unix seconds; default the
 * last hour, to = now), step (seconds, a positive multiple of 60, default 60). from < to and at
 * most METRICS_QUERY_MAX_STEPS steps. Counts are kept per pair and per app, not per both: app= or
 * group=app with businessId/sceneId, and app= with group business or scene, are errors. 0, or -1
 * with err naming the parameter ("step must be a positive multiple of 60; got 90"). Unknown and
 * repeated parameters are errors. */
int metrics_query_parse(const char *query_string, struct metrics_query *q, char *err,
                        size_t errlen);

/* Runs q off the calling thread (a short-lived thread with its own Redis connection, or the
 * in-memory tables under their lock) and calls done exactly once on reply_base's loop with the
 * JSON text (borrowed for the call) and an HTTP status: 200 with metrics_query_json's answer;
 * when Redis cannot be read, 200 with this process's own counts (its in-process copy) and
 * "partial": true, "reason", "since"; 500 with {"error": "..."} when out of memory. reply_base must keep running until done was called, and
 * libevent threading must be enabled. q is copied. Only when not even the reply event can be
 * allocated is done called (500) before metrics_query returns. */
void metrics_query(struct metrics *m, const struct metrics_query *q, struct event_base *reply_base,
                   void (*done)(const char *json, int http_status, void *arg), void *arg);

/* ---- pure parts, exported for tests ---- */

/* Identity of one hash: a (businessId, sceneId) pair, or an app, in one minute. */
struct metrics_key {
    uint64_t minute; /* unix seconds / 60 */
    uint32_t business_id, scene_id;
    uint8_t has_business_id, has_scene_id;
    uint8_t is_app;                /* 1: an app's hash (ids 0), 0: a pair's (app "") */
    char app[CONFIG_NAME_MAX + 1]; /* is_app: the app's name, "-" when none is known */
};

struct metrics_code_count {
    int code;
    uint64_t n;
};

struct metrics_rule_count {
    char name[CONFIG_NAME_MAX + 1];
    uint64_t n;
};

/* The counters of one key: the fields of its hash. */
struct metrics_cell {
    struct metrics_key key;
    uint64_t requests;
    uint64_t decisions[PIPELINE_DECISION_COUNT];
    uint64_t latency_us_sum;
    uint64_t buckets[METRICS_BUCKETS];
    struct metrics_code_count *codes; /* sorted by code, owned */
    size_t n_codes, cap_codes;
    struct metrics_rule_count *rules; /* rule:<name>, sorted by name, owned */
    size_t n_rules, cap_rules;
};

/* The bucket of a latency (0 = le_1ms ... METRICS_BUCKETS-1 = le_inf) and its field name. */
unsigned metrics_bucket_index(uint64_t latency_us);
const char *metrics_bucket_name(unsigned bucket);

/* "<prefix>m:<businessId>:<sceneId>:<minute>" and "<businessId>:<sceneId>" into out (an app's:
 * "<prefix>m:app:<app>:<minute>" and "<app>"). The length written, or -1 when out is too
 * small. */
int metrics_key_name(char *out, size_t outlen, const char *prefix, const struct metrics_key *k);
int metrics_pair_name(char *out, size_t outlen, const struct metrics_key *k);
/* Parses "<businessId>:<sceneId>" (an index member) into k (minute 0). 0/-1. */
int metrics_pair_parse(const char *s, struct metrics_key *k);
/* The key a record counts under, and its app's key. */
void metrics_key_of(const struct pipeline_record *r, struct metrics_key *k);
void metrics_app_key_of(const struct pipeline_record *r, struct metrics_key *k);
/* The value of the field called name in c (0 when c has none). */
uint64_t metrics_cell_get(const struct metrics_cell *c, const char *name);

/* Calls fn for each field of c: every field when all is non-zero (codes and rules: those seen),
 * otherwise only the non-zero ones; in the order requests, decisions, code:<N> ascending,
 * rule:<name> by name, latency_us_sum, buckets. name is valid only during the call. */
void metrics_cell_foreach(const struct metrics_cell *c, int all,
                          void (*fn)(const char *name, uint64_t value, void *arg), void *arg);
/* Adds value to the field called name (a hash field read back from Redis). 0; -1 for a name
 * that is not a field (ignored) or on OOM. */
int metrics_cell_add_field(struct metrics_cell *c, const char *name, uint64_t value);
/* dst += src (fields only; keys are not compared). 0, or -1 on OOM. */
int metrics_cell_merge(struct metrics_cell *dst, const struct metrics_cell *src);
void metrics_cell_cleanup(struct metrics_cell *c);

/* A small hash table of cells keyed by struct metrics_key. NULL on OOM. */
struct metrics_batch *metrics_batch_new(void);
void metrics_batch_free(struct metrics_batch *b);  /* NULL accepted */
void metrics_batch_clear(struct metrics_batch *b); /* empty, keeps its table */
size_t metrics_batch_count(const struct metrics_batch *b);
/* The cell of k, created (zeroed) when absent unless the batch holds max_keys keys already.
 * NULL when full or on OOM. */
struct metrics_cell *metrics_batch_cell(struct metrics_batch *b, const struct metrics_key *k,
                                        size_t max_keys);
const struct metrics_cell *metrics_batch_find(const struct metrics_batch *b,
                                              const struct metrics_key *k);
/* Counts r under its pair (metrics_batch_add) or its app (metrics_batch_add_app). 0, or -1 when
 * the batch is full (max_keys) or on OOM. */
int metrics_batch_add(struct metrics_batch *b, const struct pipeline_record *r, size_t max_keys);
int metrics_batch_add_app(struct metrics_batch *b, const struct pipeline_record *r,
                          size_t max_keys);
/* Adds every cell of src into dst. 0, or -1 on OOM (dst then holds part of src). */
int metrics_batch_merge(struct metrics_batch *dst, const struct metrics_batch *src);
/* Calls fn for each cell, in table order. */
void metrics_batch_foreach(const struct metrics_batch *b,
                           void (*fn)(const struct metrics_cell *c, void *arg), void *arg);
/* Drops whole minutes, oldest first, until at most max_keys keys remain; drops every minute
 * before min_minute first. Returns the number of keys dropped; *requests (if not NULL) gets the
 * requests they held (counted in the pair cells only: an app's cell counts the same requests). */
size_t metrics_batch_trim(struct metrics_batch *b, size_t max_keys, uint64_t min_minute,
                          uint64_t *requests);

/* 1 when k is of the dimension q reads (pairs, or apps with by_app), matches q's filters and its
 * minute lies in [from, to). */
int metrics_query_matches(const struct metrics_query *q, const struct metrics_key *k);
/* The JSON reply of q over the cells of b (cells outside q are ignored):
 *   {"from","to","step","group","fill","partial":false,
 *    "groups":[{<the group's ids>,"totals":{every field},"series":[...]}...],
 *    "totals":{every field},"series":[...]}
 * A group's ids: "businessId" (group business), "businessId" and "sceneId" (scene), "app" (app);
 * ids are numbers, or "-" when absent; groups=[] with group none. A series has one entry per
 * step ({"ts": its start, the fields non-zero in the totals beside it, zeros included}), or with
 * fill none only the steps with requests (their non-zero fields). With reason (not NULL) the
 * answer says "partial": true, "reason": reason, "since": since (unix seconds: what it counts
 * began then). Caller frees with free(); NULL on OOM. */
char *metrics_query_json(const struct metrics_query *q, const struct metrics_batch *b,
                         const char *reason, uint64_t since);

#endif
