/* audit.h: the audit trail (docs/design.md "Audit"). One record per request whatever the decision,
 * built on the worker thread from the pipeline's record, handed over a lock-free per-worker queue
 * to one background sink thread that writes it to the Redis stream (or, without Redis, to a bounded
 * in-memory stream), spools it to disk while Redis is unreachable and replays the spool in order
 * when Redis returns, so no record is lost across a Redis outage or a capgate restart. The read
 * side (GET /admin/audit) runs its queries off the main loop and answers on the caller's base. */
#ifndef CAPGATE_AUDIT_H
#define CAPGATE_AUDIT_H
#include <stddef.h>
#include <stdint.h>

#include "config.h" /* CONFIG_NAME_MAX */

struct config;
struct config_audit;
struct event_base;
struct params;
struct pipeline_record;
struct strbuf;

/* Bounds. */
#define AUDIT_RING_SIZE 16384   /* records per worker ring; beyond it: the overflow list */
#define AUDIT_MEMORY_MAX 100000 /* in-memory stream cap (memory store mode) */
#define AUDIT_RECENT_MAX \
    4096                        /* with Redis: this process's newest records kept in memory, what
                                 * /admin/audit answers from while Redis cannot be read */
#define AUDIT_SEEN_TTL_S 604800 /* replay dedup keys <prefix>audit:seen:<request_id> live 7 d */
/* A record marked uncertain (its live batch was sent but EXEC never answered) carries its batch
 * number; the sink replays it only if <prefix>audit:batch:<run> shows that batch did not land
 * (one GET, whatever the stream's length). Batch keys live AUDIT_SEEN_TTL_S too. */
#define AUDIT_QUERY_SCAN_MAX 100000 /* entries one /admin/audit query looks at, at most */
#define AUDIT_QUERY_LIMIT_DEFAULT 100
#define AUDIT_QUERY_LIMIT_MAX 1000

#define AUDIT_PII_MAX 65 /* raw PII: up to 64 bytes (cut at a UTF-8 boundary); hashed: 32 hex */
#define AUDIT_SECRET_ID_MAX 129 /* an unknown SecretId: up to 128 bytes (cut at UTF-8) */

/* One audit record: a self-contained copy (fixed-size buffers, no pointers), so it can cross
 * threads and outlive the request. Strings are valid UTF-8 and NUL-terminated; "" in an optional
 * string (rule, PII fields, url_sha256) means absent. */
struct audit_record {
    uint64_t ts_us; /* arrival, Unix microseconds; rendered ISO-8601 UTC ms */
    char request_id[17];
    char instance[64];
    char app[CONFIG_NAME_MAX + 1];       /* whole: config.h bounds app names */
    char secret_id[AUDIT_SECRET_ID_MAX]; /* a SecretId no app has (cut at 128 bytes), "" else */
    char client_ip[64];
    char action[64];
    int has_business_id, has_scene_id, has_captcha_type, has_client_type, has_account_type;
    uint32_t business_id, scene_id, captcha_type, client_type, account_type;
    char decision[24];              /* pipeline_decision_name() */
    char rule[CONFIG_NAME_MAX + 1]; /* whole, as app */
    int code;
    int has_code; /* 0: the reply had no API code (null / left out) */
    char code_desc[48];
    char api[3]; /* "v2" or "v3": the API generation of the request */
    int upstream_status;
    int http_status; /* answered (0: client gone); the access line's only: not
                                     * in the stream, the JSON or the spool */
    uint64_t latency_us;
    uint64_t upstream_latency_us;
    char uid[AUDIT_PII_MAX]; /* HMAC-SHA256(pii_key, value), first 32 hex, or raw */
    char user_ip[AUDIT_PII_MAX];
    char imei[AUDIT_PII_MAX];
    char mac_address[AUDIT_PII_MAX];
    char associate_account[AUDIT_PII_MAX];
    char url_sha256[17]; /* first 16 hex of SHA-256 of the returned url */
};

/* Fills r from the pipeline's record pr (borrowed, copied), the request's parameters (for uid,
 * userIp, imei, macAddress, associateAccount; NULL when there are none), the url of the reply
 * (only its hash is kept; NULL when the reply had none), cfg (pii_raw, pii_key) and instance.
 * Never copies a secret, the Signature, an Authorization header or the url. 0, or -1 when
 * hashing failed (OpenSSL). */
int audit_record_init(struct audit_record *r, const struct pipeline_record *pr,
                      const struct params *request_params, const char *reply_url,
                      const struct config_audit *cfg, const char *instance);
/* Compact JSON object of r appended to out: every field, in docs/design.md "Audit" order, null for
 * an absent optional value. 0, or -1 on OOM. */
int audit_record_json(const struct audit_record *r, struct strbuf *out);
/* Parses what audit_record_json wrote (unknown keys ignored) back into r. 0, or -1. */
int audit_record_from_json(const char *text, size_t len, struct audit_record *r);

/* A stream entry (XADD) holds one field, AUDIT_STREAM_FIELD, whose value is the record's compact
 * JSON object exactly as audit_record_json writes it (the text of an audit.file line): one
 * argument for Redis to parse and store instead of about 25 field/value pairs (README "Audit").
 */
#define AUDIT_STREAM_FIELD "json"
/* Builds r from a stream entry's fields (names[i] = values[i]): its AUDIT_STREAM_FIELD when it
 * has one, else the flat field/value pairs that earlier versions wrote (audit_record_fields),
 * so a stream holding both reads whole. 0, or -1 when the entry is neither. */
int audit_record_from_entry(struct audit_record *r, size_t n, const char *const *names,
                            const char *const *values, const size_t *value_lens);

/* The flat field/value list of a stream entry as earlier versions wrote it (XADD): the same
 * names as the JSON, absent optional values left out, numbers in decimal. Values point into r or
 * into f. Still read (audit_record_from_entry); written only for a record whose JSON cannot be
 * made (never expected: every string of a record is valid UTF-8). */
#define AUDIT_FIELDS_MAX 27
struct audit_fields {
    size_t count;
    const char *name[AUDIT_FIELDS_MAX];
    const char *value[AUDIT_FIELDS_MAX];
    size_t value_len[AUDIT_FIELDS_MAX];
    char num[AUDIT_FIELDS_MAX][32];
};
/* f is valid while r and f live. */
void audit_record_fields(const struct audit_record *r, struct audit_fields *f);
/* Builds r from a stream entry's fields (names[i] = values[i]); unknown fields ignored. 0/-1. */
int audit_record_from_fields(struct audit_record *r, size_t n, const char *const *names,
                             const char *const *values, const size_t *value_lens);

/* ---- queue and sink ---- */

struct audit;

struct audit_stats {
    uint64_t queue_depth;  /* submitted, not yet taken by the sink */
    uint64_t spool_depth;  /* records in the spool not yet replayed */
    uint64_t written;      /* records written live (Redis stream or memory stream) */
    uint64_t spooled;      /* records appended to the spool */
    uint64_t replayed;     /* spooled records acknowledged by Redis (including skipped dups) */
    uint64_t overflowed;   /* submits that found their ring full (kept in the overflow list) */
    uint64_t redis_errors; /* failed connects, lost connections and error replies */
    uint64_t file_errors;  /* failed writes to audit.file or the spool */
    /* Records the sink holds in memory because the spool refused them (disk full, directory
     * gone). While any are held the sink retries only them: the worker queues wait, and their
     * overflow lists grow. */
    uint64_t held_records;
    uint64_t overflow_records; /* records in the overflow lists now (queue_depth counts them) */
};

/* Starts the sink thread for n_workers producers (worker ids 0..n_workers-1). cfg is borrowed
 * and must outlive the audit (redis, audit and instance are read). With cfg->redis the sink
 * writes to the stream cfg->audit.stream (the key exactly as configured; the replay dedup keys
 * use cfg->redis->key_prefix) and spools to cfg->audit.spool_dir (created if missing); any
 * spool left there by an earlier run, whatever its instance, is replayed once Redis answers.
 * The spool directory is locked (flock on <spool_dir>/.lock): a second process using it fails
 * here. Without redis, records go to a memory stream of min(maxlen, AUDIT_MEMORY_MAX) records.
 * cfg->audit.file, when set, receives every record as a JSON line too. At info the sink also
 * writes each record's access line to stderr, one write per batch (README "Install and
 * operate"), so no worker writes to the log per request. NULL with err. */
struct audit *audit_new(const struct config *cfg, unsigned n_workers, char *err, size_t errlen);
/* Copies r into worker's queue. Called on that worker's thread only (one producer per worker);
 * never blocks; its only I/O is one nonblocking eventfd write when it finds the sink asleep.
 * A full ring sends the record to the overflow list (counted in overflowed): a record is never
 * dropped. 0, or -1 on OOM or a bad worker id. */
int audit_submit(struct audit *a, unsigned worker, const struct audit_record *r);
/* Stops the sink after it has written every queued record to Redis (or to the spool when Redis
 * is down; a replay in progress resumes at the next start), fsyncs, joins the thread and frees.
 * Waits for running queries to finish their scan. Call after the workers stopped submitting.
 * NULL accepted. */
void audit_free(struct audit *a);
/* Any thread; never blocks. For log rotation: the sink, before its next batch, fsyncs the audit
 * file (audit.file, or <spool_dir>/audit.jsonl without redis) and opens its path again (created
 * if missing), so the records of earlier batches are in the file open until then and the later
 * ones in the file now at the path. When the path does not open, the sink logs it, counts a
 * file error and goes on writing to the file it had. Nothing happens without an audit file.
 * NULL accepted. */
void audit_reopen(struct audit *a);

/* audit.commit "durable" (README "Durability"): a worker's records are numbered 1, 2, ... in
 * submit order. After the sink stored some (Redis answered EXEC, and WAIT confirmed
 * audit.min_replicas; or the spool, or without Redis the audit file, fsynced them: one fsync per
 * batch), it moves the worker's durable mark and calls the worker's notify function from the
 * sink thread. The worker parks a reply until the mark reaches its record's number. */
int audit_commit_durable(const struct audit *a); /* 1 when cfg->audit.commit is "durable" */
/* On worker's thread, right after audit_submit: the number of the record just submitted. */
uint64_t audit_last_seq(struct audit *a, unsigned worker);
/* Any thread: every record of worker numbered up to this is stored. */
uint64_t audit_durable_seq(struct audit *a, unsigned worker);
/* Before worker's first submit. fn(arg) runs on the sink thread: it must only wake the worker
 * (e.g. event_active on a base with libevent threading enabled). */
void audit_on_durable(struct audit *a, unsigned worker, void (*fn)(void *arg), void *arg);
/* Any thread. */
void audit_get_stats(struct audit *a, struct audit_stats *out);
/* "memory" "live" "spooling" "replaying" "stopped": the sink's state, for /readyz and tests. */
const char *audit_state_name(struct audit *a);

/* ---- read side ---- */

struct audit_query {
    int has_business_id, has_scene_id;
    uint32_t business_id, scene_id;
    char app[CONFIG_NAME_MAX + 1]; /* "" = any */
    char decision[24];             /* "" = any */
    int has_code;                  /* 0 = any code; else records whose API code is code */
    int code;
    uint64_t since_ms; /* 0 = any; records with ts >= since */
    unsigned limit;    /* 1..AUDIT_QUERY_LIMIT_MAX */
};

/* Parses the query string of GET /admin/audit (NULL or "" = no filter): businessId, sceneId
 * (UInt), app, decision (one of the decision names), code (the reply's API code, an integer),
 * since (Unix seconds, or milliseconds when
 * >= 10^11), limit (1..1000, default 100). Unknown or repeated parameters are errors. 0, or -1
 * with err naming the parameter ("limit must be 1..1000; got 0"). */
int audit_query_parse(const char *query_string, struct audit_query *q, char *err, size_t errlen);
/* Runs q off the calling thread (a short-lived thread: XREVRANGE in chunks on its own Redis
 * connection, newest first, at most AUDIT_QUERY_SCAN_MAX entries; or the memory stream), then
 * calls done exactly once on base's loop with the JSON text {"records": [...newest first...],
 * "scanned": N, "partial": false} and 200. When Redis cannot be read the answer is still 200, from
 * this process's own newest records (at most AUDIT_RECENT_MAX, spooled ones included), with
 * "partial": true and "reason": "..." (what failed).
 * json is valid only during the call. Only when memory or a thread cannot be had may done run
 * before audit_query returns (with a 500/503 error JSON). base must have libevent threading enabled
 * (evthread_use_pthreads) and keep running until done fired. Records still queued or spooled
 * are not visible until written. */
void audit_query(struct audit *a, const struct audit_query *q, struct event_base *base,
                 void (*done)(const char *json, int http_status, void *arg), void *arg);

#endif
