/* audit.c: the audit trail. Records are built on the worker threads and cross to one sink
 * thread over per-worker single-producer/single-consumer rings (an overflow list behind each, so
 * nothing is dropped and a worker never waits). The sink writes them to Redis with pipelined
 * XADDs, spools them to append-only JSONL segments while Redis is unreachable and replays the
 * spool, oldest first and idempotently, when it comes back; without Redis it keeps a bounded
 * memory stream. Queries run on short-lived threads and answer on the caller's event base. */
#include "audit_internal.h"

/* ---- lifecycle ---- */

struct audit *audit_new(const struct config *cfg, unsigned n_workers, char *err, size_t errlen) {
    struct audit *a = calloc(1, sizeof(*a));
    if (!a) {
        snprintf(err, errlen, "audit: out of memory");
        return NULL;
    }
    a->cfg = cfg;
    a->n_workers = n_workers;
    a->segment.fd = -1;
    a->file.fd = -1;
    a->lock_fd = -1;
    a->wake_fd = -1;
    strbuf_init(&a->file_text);
    strbuf_init(&a->access);
    strbuf_init(&a->resp);
    strbuf_init(&a->entry);
    a->backoff_ms = BACKOFF_MIN_MS;
    a->client.id = -1;
    a->fence.id = -1;
    pthread_mutex_init(&a->mem_lock, NULL);
    pthread_mutex_init(&a->notify_lock, NULL);
    redis_query_set_init(&a->queries);
    snprintf(a->maxlen, sizeof(a->maxlen), "%lu", cfg->audit.maxlen);
    snprintf(a->wait_replicas, sizeof(a->wait_replicas), "%u", cfg->audit.min_replicas);
    snprintf(a->wait_ms, sizeof(a->wait_ms), "%u", cfg->redis ? cfg->redis->timeout_ms : 0);
    {
        const char *inst = cfg->instance ? cfg->instance : "capgate";
        size_t i;
        for (i = 0; inst[i] && i < sizeof(a->safe_instance) - 1; i++) {
            char c = inst[i];
            int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '_';
            a->safe_instance[i] = ok ? c : '_';
        }
        a->safe_instance[i] = '\0';
    }
    a->queues = calloc(n_workers ? n_workers : 1, sizeof(*a->queues));
    if (!a->queues) {
        snprintf(err, errlen, "audit: out of memory");
        goto fail;
    }
    for (unsigned w = 0; w < n_workers; w++) {
        a->queues[w] = aligned_alloc(64, (sizeof(struct audit_queue) + 63) / 64 * 64);
        if (!a->queues[w]) {
            snprintf(err, errlen, "audit: out of memory");
            goto fail;
        }
        memset(a->queues[w], 0, sizeof(struct audit_queue));
        atomic_init(&a->queues[w]->overflow, NULL);
    }
    if (cfg->redis) {
        if (!cfg->audit.spool_dir || mkdir_p(cfg->audit.spool_dir) != 0) {
            snprintf(err, errlen, "audit.spool_dir: cannot create %s: %s",
                     cfg->audit.spool_dir ? cfg->audit.spool_dir : "(none)", strerror(errno));
            goto fail;
        }
        char lock[4096];
        if (spool_path(a, ".lock", lock, sizeof(lock)) != 0 ||
            (a->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0) {
            snprintf(err, errlen, "audit.spool_dir: cannot open %s/.lock: %s", cfg->audit.spool_dir,
                     strerror(errno));
            goto fail;
        }
        if (flock(a->lock_fd, LOCK_EX | LOCK_NB) != 0) {
            /* two processes replaying and appending to one spool would delete each other's
             * segments */
            snprintf(err, errlen, "audit.spool_dir: %s is in use by another capgate process",
                     cfg->audit.spool_dir);
            goto fail;
        }
        unsigned char rnd[8];
        if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
            snprintf(err, errlen, "audit: RAND_bytes failed");
            goto fail;
        }
        hex_encode(rnd, sizeof(rnd), a->run_id);
        snprintf(a->batch_key, sizeof(a->batch_key), "%saudit:batch:%s", cfg->redis->key_prefix,
                 a->run_id);
        atomic_store(&a->spool_depth, spool_count(a));
        if (atomic_load(&a->spool_depth) > 0)
            log_info("audit: %llu spooled records from an earlier run wait for redis",
                     (unsigned long long)atomic_load(&a->spool_depth));
        atomic_store(&a->state, AUDIT_CONNECTING);
        /* the ring of this process's newest records, for /admin/audit while Redis is down */
        a->mem_cap = cfg->audit.maxlen < AUDIT_RECENT_MAX ? cfg->audit.maxlen : AUDIT_RECENT_MAX;
    } else {
        a->mem_cap = cfg->audit.maxlen < AUDIT_MEMORY_MAX ? cfg->audit.maxlen : AUDIT_MEMORY_MAX;
        atomic_store(&a->state, AUDIT_MEMORY);
    }
    if (cfg->audit.file) {
        snprintf(a->file_path, sizeof(a->file_path), "%s", cfg->audit.file);
    } else if (!cfg->redis && cfg->audit.spool_dir) {
        /* Without Redis the memory stream ends with the process: records must still survive a
         * restart, so they also go to a JSONL file in the spool directory (the config always
         * names one; only a struct built by hand can leave it out). */
        if (mkdir_p(cfg->audit.spool_dir) != 0 ||
            spool_path(a, "audit.jsonl", a->file_path, sizeof(a->file_path)) != 0) {
            snprintf(err, errlen, "audit.spool_dir: cannot create %s: %s", cfg->audit.spool_dir,
                     strerror(errno));
            goto fail;
        }
    }
    if (a->file_path[0]) {
        a->file.fd = file_open(a->file_path);
        if (a->file.fd < 0) {
            snprintf(err, errlen, "%s: cannot open %s: %s",
                     cfg->audit.file ? "audit.file" : "audit.spool_dir", a->file_path,
                     strerror(errno));
            goto fail;
        }
        a->file.synced_us = clock_mono_us();
    }
    a->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (a->wake_fd < 0) {
        snprintf(err, errlen, "audit: eventfd: %s", strerror(errno));
        goto fail;
    }
    if (thread_start(&a->thread, NULL, sink_main, a) != 0) {
        snprintf(err, errlen, "audit: cannot start the sink thread");
        goto fail;
    }
    a->thread_started = 1;
    return a;
fail:
    audit_free(a);
    return NULL;
}

void audit_reopen(struct audit *a) {
    if (!a) return;
    atomic_store(&a->reopen, 1);
    sink_nudge(a);
}

void audit_free(struct audit *a) {
    if (!a) return;
    if (a->thread_started) {
        atomic_store(&a->stopping, 1);
        sink_wake(a);
        pthread_join(a->thread, NULL);
    }
    redis_query_set_wait(&a->queries);
    for (unsigned w = 0; a->queues && w < a->n_workers; w++) {
        struct audit_queue *q = a->queues[w];
        if (!q) continue;
        struct audit_node *n;
        size_t unsaved = 0;
        /* The sink drains every queue before it ends (its last resort included), so records
         * are left here only when they were submitted after audit_free began, against the
         * contract; they still go to stderr rather than nowhere. */
        while ((n = queue_pop(q)) != NULL) {
            print_unsaved(n);
            free(n);
            unsaved++;
        }
        if (unsaved)
            log_error("audit: %zu records of worker %u arrived after the sink stopped; each is "
                      "on stderr as a \"" UNSAVED_PREFIX "\" line",
                      unsaved, w);
        free(q);
    }
    free(a->queues);
    if (a->file.fd >= 0) close(a->file.fd);
    if (a->segment.fd >= 0) close(a->segment.fd);
    if (a->lock_fd >= 0) close(a->lock_fd);
    if (a->wake_fd >= 0) close(a->wake_fd);
    strbuf_cleanup(&a->file_text);
    strbuf_cleanup(&a->access);
    strbuf_cleanup(&a->resp);
    strbuf_cleanup(&a->entry);
    if (a->replay_fp) fclose(a->replay_fp);
    sink_disconnect(a);
    free(a->mem);
    pthread_mutex_destroy(&a->mem_lock);
    pthread_mutex_destroy(&a->notify_lock);
    redis_query_set_destroy(&a->queries);
    free(a);
}

void audit_get_stats(struct audit *a, struct audit_stats *out) {
    memset(out, 0, sizeof(*out));
    for (unsigned w = 0; w < a->n_workers; w++) {
        struct audit_queue *q = a->queues[w];
        uint64_t s = atomic_load_explicit(&q->submitted, memory_order_relaxed);
        uint64_t t = atomic_load_explicit(&q->taken, memory_order_relaxed);
        out->queue_depth += s > t ? s - t : 0;
        uint64_t o = atomic_load_explicit(&q->overflowed, memory_order_relaxed);
        uint64_t ot = atomic_load_explicit(&q->overflow_taken, memory_order_relaxed);
        out->overflowed += o;
        out->overflow_records += o > ot ? o - ot : 0;
    }
    out->spool_depth = atomic_load(&a->spool_depth);
    out->written = atomic_load(&a->written);
    out->spooled = atomic_load(&a->spooled);
    out->replayed = atomic_load(&a->replayed);
    out->redis_errors = atomic_load(&a->redis_errors);
    out->file_errors = atomic_load(&a->file_errors);
    out->held_records = atomic_load(&a->held_records);
}

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
                     "since, limit)",
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
    if (q->since_ms && r->ts_us / 1000 < q->since_ms) return 0;
    return 1;
}

struct query_job {
    struct audit *a;
    struct audit_query q;
};

static int query_add(json_t *records, const struct audit_record *r) {
    json_t *o = record_to_object(r);
    return o ? json_array_append_new(records, o) : -1;
}

/* Newest first over the Redis stream, in chunks. 0, or -1 with err. */
static int query_redis(struct query_job *j, json_t *records, uint64_t *scanned, char *err,
                       size_t errlen) {
    const struct config *cfg = j->a->cfg;
    redisContext *c = redis_open(cfg->redis, NULL, err, errlen);
    char end[64] = "+", start[32] = "-";
    int rc = -1;
    if (!c) return -1;
    if (j->q.since_ms) snprintf(start, sizeof(start), "%llu", (unsigned long long)j->q.since_ms);
    while (*scanned < AUDIT_QUERY_SCAN_MAX && json_array_size(records) < j->q.limit) {
        redisReply *r =
            redis_cmd(c, "XREVRANGE %s %s %s COUNT %d", cfg->audit.stream, end, start, 1000);
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
