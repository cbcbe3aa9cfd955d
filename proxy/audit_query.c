/* audit_query.c: the read side, GET /admin/audit: query parsing, the Redis stream scan and the
 * memory stream answers, off the caller's loop. Part of the audit module (audit.c). */
#include "audit_internal.h"

/* ======================================================================================== */
/* Read side                                                                                */
/* ======================================================================================== */

int audit_query_parse(const char *query_string, struct audit_query *q, char *err, size_t errlen) {
    struct params p;
    int rc = -1;
    params_init(&p);
    memset(q, 0, sizeof(*q));
    q->limit = AUDIT_QUERY_LIMIT_DEFAULT;
    if (query_string && *query_string &&
        params_parse_urlencoded(&p, query_string, strlen(query_string), err, errlen) != 0)
        goto out;
    for (size_t i = 0; i < p.count; i++) {
        const char *name = p.items[i].name, *v = p.items[i].value;
        size_t len = p.items[i].value_len;
        uint64_t u;
        if (strcmp(name, "businessId") == 0 || strcmp(name, "sceneId") == 0) {
            int biz = name[0] == 'b';
            if (num_parse_u32(v, len, biz ? &q->business_id : &q->scene_id) != 0) {
                snprintf(err, errlen, "%s must be an integer 0..4294967295; got \"%.64s\"", name,
                         v);
                goto out;
            }
            *(biz ? &q->has_business_id : &q->has_scene_id) = 1;
        } else if (strcmp(name, "app") == 0) {
            if (len >= sizeof(q->app)) {
                snprintf(err, errlen, "app must be at most %zu bytes", sizeof(q->app) - 1);
                goto out;
            }
            memcpy(q->app, v, len + 1);
        } else if (strcmp(name, "decision") == 0) {
            int found = 0;
            for (int d = 0; d < PIPELINE_DECISION_COUNT; d++)
                found |= strcmp(v, pipeline_decision_name((enum pipeline_decision)d)) == 0;
            if (!found) {
                snprintf(err, errlen,
                         "decision must be one of forwarded, pool, replayed, "
                         "limited, shadow_limited, invalid, unauthorized, denied, "
                         "upstream_error; got \"%.64s\"",
                         v);
                goto out;
            }
            memcpy(q->decision, v, len + 1);
        } else if (strcmp(name, "code") == 0) {
            /* API codes are integers; 2.0's are 0..99999, 3.0's are mapped to 2.0's, and a
             * negative one is kept as the reply gave it. */
            int neg = len > 0 && v[0] == '-';
            if (num_parse_range(v + neg, len - (size_t)neg, 0, neg ? 2147483648u : INT32_MAX, &u) !=
                0) {
                snprintf(err, errlen,
                         "code must be an integer API code such as 4400; got \"%.64s\"", v);
                goto out;
            }
            q->code = neg ? (int)(-(int64_t)u) : (int)u;
            q->has_code = 1;
        } else if (strcmp(name, "since") == 0) {
            if (num_parse_range(v, len, 0, UINT64_MAX / 1000, &u) != 0) {
                snprintf(err, errlen, "since must be Unix seconds or milliseconds; got \"%.64s\"",
                         v);
                goto out;
            }
            q->since_ms = u >= 100000000000ull ? u : u * 1000;
        } else if (strcmp(name, "limit") == 0) {
            if (num_parse_range(v, len, 1, AUDIT_QUERY_LIMIT_MAX, &u) != 0) {
                snprintf(err, errlen, "limit must be 1..%d; got \"%.64s\"", AUDIT_QUERY_LIMIT_MAX,
                         v);
                goto out;
            }
            q->limit = (unsigned)u;
        } else {
            snprintf(err, errlen,
                     "unknown parameter %.64s (businessId, sceneId, app, decision, "
                     "code, since, limit)",
                     name);
            goto out;
        }
    }
    rc = 0;
out:
    params_cleanup(&p);
    return rc;
}

static int query_match(const struct audit_query *q, const struct audit_record *r) {
    if (q->has_business_id && (!r->has_business_id || r->business_id != q->business_id)) return 0;
    if (q->has_scene_id && (!r->has_scene_id || r->scene_id != q->scene_id)) return 0;
    if (q->app[0] && strcmp(q->app, r->app) != 0) return 0;
    if (q->decision[0] && strcmp(q->decision, r->decision) != 0) return 0;
    if (q->has_code && (!r->has_code || r->code != q->code)) return 0;
    if (q->since_ms && r->ts_us / 1000 < q->since_ms) return 0;
    return 1;
}

struct query_job {
    struct audit *a;
    struct audit_query q;
};

static int query_add(json_t *records, const struct audit_record *r) {
    json_t *o = audit_record_to_object(r);
    return o ? json_array_append_new(records, o) : -1;
}

/* Newest first over the Redis stream, in chunks. 0, or -1 with err. */
static int query_redis(struct query_job *j, json_t *records, uint64_t *scanned, char *err,
                       size_t errlen) {
    const struct config *cfg = j->a->cfg;
    redisContext *c = audit_redis_open(cfg->redis, NULL, NULL, err, errlen);
    char end[64] = "+", start[32] = "-";
    int rc = -1;
    if (!c) return -1;
    if (j->q.since_ms) snprintf(start, sizeof(start), "%llu", (unsigned long long)j->q.since_ms);
    while (*scanned < AUDIT_QUERY_SCAN_MAX && json_array_size(records) < j->q.limit) {
        redisReply *r =
            audit_redis_cmd(c, "XREVRANGE %s %s %s COUNT %d", cfg->audit.stream, end, start, 1000);
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            snprintf(err, errlen, "XREVRANGE: %s", r && r->str ? r->str : c->errstr);
            if (r) freeReplyObject(r);
            goto out;
        }
        size_t n = r->elements;
        for (size_t i = 0; i < n && json_array_size(records) < j->q.limit; i++) {
            redisReply *e = r->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
                e->element[0]->type != REDIS_REPLY_STRING ||
                e->element[1]->type != REDIS_REPLY_ARRAY)
                continue;
            (*scanned)++;
            snprintf(end, sizeof(end), "(%s", e->element[0]->str);
            redisReply *kv = e->element[1];
            const char *names[AUDIT_FIELDS_MAX + 8], *values[AUDIT_FIELDS_MAX + 8];
            size_t lens[AUDIT_FIELDS_MAX + 8], m = 0;
            for (size_t k = 0; k + 1 < kv->elements && m < AUDIT_FIELDS_MAX + 8; k += 2) {
                if (kv->element[k]->type != REDIS_REPLY_STRING ||
                    kv->element[k + 1]->type != REDIS_REPLY_STRING)
                    continue;
                names[m] = kv->element[k]->str;
                values[m] = kv->element[k + 1]->str;
                lens[m] = kv->element[k + 1]->len;
                m++;
            }
            struct audit_record rec;
            if (audit_record_from_entry(&rec, m, names, values, lens) == 0 &&
                query_match(&j->q, &rec) && query_add(records, &rec) != 0) {
                freeReplyObject(r);
                snprintf(err, errlen, "out of memory");
                goto out;
            }
        }
        freeReplyObject(r);
        if (n < 1000) break;
    }
    rc = 0;
out:
    redisFree(c);
    return rc;
}

static void query_memory(struct query_job *j, json_t *records, uint64_t *scanned) {
    struct audit *a = j->a;
    pthread_mutex_lock(&a->mem_lock);
    uint64_t kept = a->mem_total < a->mem_cap ? a->mem_total : a->mem_cap;
    for (uint64_t i = 0; i < kept && json_array_size(records) < j->q.limit; i++) {
        const struct audit_record *r = &a->mem[(a->mem_total - 1 - i) % a->mem_cap];
        (*scanned)++;
        if (query_match(&j->q, r) && query_add(records, r) != 0) break;
    }
    pthread_mutex_unlock(&a->mem_lock);
}

/* On the query's own thread (redis_query_run): the JSON answer and its status. */
static char *query_work(void *arg, int *status) {
    struct query_job *j = arg;
    struct audit *a = j->a;
    json_t *records = json_array(), *o = NULL;
    uint64_t scanned = 0;
    char err[256] = "", *json = NULL;
    if (!records) goto out;
    if (a->cfg->redis && query_redis(j, records, &scanned, err, sizeof(err)) != 0) {
        /* Redis cannot be read: what this process holds, said to be partial */
        char reason[400];
        snprintf(reason, sizeof(reason),
                 "redis cannot be read (%s); records are this process's newest %u at most, "
                 "spooled ones included",
                 err, (unsigned)a->mem_cap);
        json_array_clear(records);
        scanned = 0;
        query_memory(j, records, &scanned);
        o = json_pack("{s:O,s:I,s:b,s:s}", "records", records, "scanned", (json_int_t)scanned,
                      "partial", 1, "reason", reason);
    } else {
        if (!a->cfg->redis) query_memory(j, records, &scanned);
        o = json_pack("{s:O,s:I,s:b}", "records", records, "scanned", (json_int_t)scanned,
                      "partial", 0);
    }
    *status = 200;
    if (o) json = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
out:
    json_decref(records);
    json_decref(o);
    return json;
}

void audit_query(struct audit *a, const struct audit_query *q, struct event_base *base,
                 void (*done)(const char *json, int http_status, void *arg), void *arg) {
    struct query_job *j = calloc(1, sizeof(*j));
    if (!j) {
        done("{\"error\":\"out of memory\"}", 500, arg);
        return;
    }
    j->a = a;
    j->q = *q;
    redis_query_run(&a->queries, base, query_work, j, free, done, arg);
}
