/* metrics_flush.c: the flush thread: it collects the workers' batches and writes them to Redis
 * (MULTI/EXEC, fenced when unanswered) or to the memory tables. Part of the metrics module
 * (minute_stats.c). */
#include "metrics_internal.h"

#include "capgate/thread.h"

/* ---- Redis ---- */

/* A connection to the master as redis_conn.h finds it, with the settings published last (else
 * the config's; cfg->target itself never changes: the flush thread and the query threads share
 * it). *epoch (when not NULL): the redis_conn_epoch() it was made at. */
redisContext *metrics_redis_connect(const struct metrics_redis *cfg, uint64_t *epoch, char *err,
                                    size_t errlen) {
    struct redis_target *t = redis_target_ref(cfg->target);
    uint64_t e = redis_conn_refresh(&t);
    redisContext *c = redis_conn_open(t, err, errlen);
    redis_target_unref(t);
    if (c && epoch) *epoch = e;
    return c;
}

/* A connection, made if needed: the connection of an unanswered batch is killed first (so the
 * GET of the batch key that follows is final), then this one's client id is learnt. */
static int conn_ensure(struct metrics *m, char *err, size_t errlen) {
    /* new settings or a new master (the epoch moved): a new connection */
    if (m->conn && !m->conn->err && m->conn_epoch == redis_conn_epoch()) return 0;
    if (m->conn) redisFree(m->conn);
    if (!(m->conn = metrics_redis_connect(m->redis, &m->conn_epoch, err, errlen))) return -1;
    if (redis_fence_kill(m->conn, &m->lost, "metrics") != 0) {
        snprintf(err, errlen, "redis %s: CLIENT KILL of the lost connection: no answer",
                 redis_target_name(m->redis->target));
        redisFree(m->conn);
        m->conn = NULL;
        return -1;
    }
    redis_fence_learn(m->conn, &m->client);
    return 0;
}

/* Settles m->unsure: one GET of the batch key says whether its EXEC ran (the key holds at least
 * its number): then it is dropped, else merged back into pending to be sent again. 0, or -1 with
 * err (unsure is kept). */
static int settle_unsure(struct metrics *m, char *err, size_t errlen) {
    if (!m->unsure) return 0;
    if (conn_ensure(m, err, errlen) != 0) return -1;
    redisReply *r = redisCommand(m->conn, "GET %s", m->batch_key);
    uint64_t landed = 0;
    if (!r || (r->type != REDIS_REPLY_NIL &&
               (r->type != REDIS_REPLY_STRING || num_parse_u64(r->str, r->len, &landed) != 0))) {
        snprintf(err, errlen, "redis: GET %s: %s", m->batch_key,
                 !r                             ? m->conn->errstr
                 : r->type == REDIS_REPLY_ERROR ? r->str
                                                : "not a number");
        if (r)
            freeReplyObject(r);
        else {
            redisFree(m->conn);
            m->conn = NULL;
        }
        return -1;
    }
    freeReplyObject(r);
    if (landed >= m->unsure_seq) {
        log_info("metrics: the unanswered flush %s:%" PRIu64 " was written; not sending it again",
                 m->run_id, m->unsure_seq);
    } else {
        log_info("metrics: the unanswered flush %s:%" PRIu64 " was not written; sending it again",
                 m->run_id, m->unsure_seq);
        if (metrics_batch_merge(m->pending, m->unsure) != 0) {
            atomic_fetch_add_explicit(&m->dropped_keys, metrics_batch_count(m->unsure),
                                      memory_order_relaxed);
            log_warn("metrics: out of memory while merging a batch; its counts are lost");
        }
    }
    metrics_batch_free(m->unsure);
    m->unsure = NULL;
    return 0;
}

struct redis_write {
    redisContext *c;
    const struct metrics *m;
    const char *key;
    char *keybuf, *index, *apps;
    size_t keylen;
    size_t appended;
    int failed;
};

static void redis_write_field(const char *name, uint64_t value, void *arg) {
    struct redis_write *w = arg;
    if (redisAppendCommand(w->c, "HINCRBY %s %s %lld", w->key, name, (long long)value) != REDIS_OK)
        w->failed = 1;
    else
        w->appended++;
}

static void redis_write_cell(const struct metrics_cell *cell, void *arg) {
    struct redis_write *w = arg;
    char pair[CONFIG_NAME_MAX + 8];
    if (w->failed || !cell->requests) return;
    metrics_key_name(w->keybuf, w->keylen, w->m->redis->prefix, &cell->key);
    metrics_pair_name(pair, sizeof(pair), &cell->key);
    w->key = w->keybuf;
    metrics_cell_foreach(cell, 0, redis_write_field, w);
    if (redisAppendCommand(w->c, "EXPIRE %s %llu", w->key, (unsigned long long)w->m->retention_s) !=
            REDIS_OK ||
        redisAppendCommand(w->c, "SADD %s %s", cell->key.is_app ? w->apps : w->index, pair) !=
            REDIS_OK)
        w->failed = 1;
    else
        w->appended += 2;
}

/* Writes every cell of b in one MULTI/EXEC pipeline with the batch key set to seq, so a
 * connection lost halfway applies nothing and the retry does not count twice. 0; -1 with err when
 * nothing was applied (b is then kept); 1 with err when the EXEC may have run unanswered. */
static int redis_write(struct metrics *m, struct metrics_batch *b, uint64_t seq, char *err,
                       size_t errlen) {
    struct redis_write w = {.m = m};
    redisReply *reply = NULL;
    int rc = -1, sent = 0;
    size_t plen = strlen(m->redis->prefix);
    if (conn_ensure(m, err, errlen) != 0) return -1;
    w.c = m->conn;
    w.keylen = plen + 128;
    w.keybuf = malloc(w.keylen);
    w.index = malloc(plen + 8);
    w.apps = malloc(plen + 8);
    if (!w.keybuf || !w.index || !w.apps) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    snprintf(w.index, plen + 8, "%sm:index", m->redis->prefix);
    snprintf(w.apps, plen + 8, "%sm:apps", m->redis->prefix);
    if (redisAppendCommand(w.c, "MULTI") != REDIS_OK ||
        redisAppendCommand(w.c, "SET %s %llu EX %llu", m->batch_key, (unsigned long long)seq,
                           (unsigned long long)m->retention_s) != REDIS_OK)
        goto conn_err;
    w.appended = 2;
    metrics_batch_foreach(b, redis_write_cell, &w);
    if (w.failed ||
        redisAppendCommand(w.c, "EXPIRE %s %llu", w.index, (unsigned long long)m->retention_s) !=
            REDIS_OK ||
        redisAppendCommand(w.c, "EXPIRE %s %llu", w.apps, (unsigned long long)m->retention_s) !=
            REDIS_OK ||
        redisAppendCommand(w.c, "EXEC") != REDIS_OK)
        goto conn_err;
    w.appended += 3;
    for (size_t i = 0; i < w.appended; i++) {
        sent = 1; /* from the first read on, Redis may have the whole batch */
        if (redisGetReply(w.c, (void **)&reply) != REDIS_OK || !reply) goto conn_err;
        if (i + 1 < w.appended) {
            if (reply->type == REDIS_REPLY_ERROR) {
                snprintf(err, errlen, "redis: %s", reply->str);
                /* the transaction is discarded by EXEC; drain the rest of the replies */
                rc = -2;
            }
        } else if (rc != -2) {
            if (reply->type != REDIS_REPLY_ARRAY) {
                snprintf(err, errlen, "redis: EXEC failed: %s",
                         reply->type == REDIS_REPLY_ERROR ? reply->str : "aborted");
            } else {
                rc = 0;
                for (size_t j = 0; j < reply->elements; j++) {
                    if (reply->element[j]->type == REDIS_REPLY_ERROR) {
                        /* applied except this command (a key of another type): retrying would
                         * count the rest twice, so report and move on */
                        log_warn("metrics: redis refused a write: %s", reply->element[j]->str);
                        atomic_fetch_add_explicit(&m->flush_errors, 1, memory_order_relaxed);
                        break;
                    }
                }
            }
        }
        freeReplyObject(reply);
        reply = NULL;
    }
    if (rc == -2) rc = -1;
    goto out;
conn_err:
    snprintf(err, errlen, "redis %s: %s", redis_target_name(m->redis->target),
             w.c->err ? w.c->errstr : "out of memory");
    /* the connection is in an unknown state: start over next time, after fencing it when the
     * EXEC may still run (conn_ensure) */
    if (sent) {
        rc = 1;
        m->lost = m->client;
    }
    redisFree(m->conn);
    m->conn = NULL;
out:
    free(w.keybuf);
    free(w.index);
    free(w.apps);
    return rc;
}

/* ---- the flush thread ---- */

/* The oldest minute in b (UINT64_MAX when empty). */
static void oldest_cell(const struct metrics_cell *c, void *arg) {
    uint64_t *oldest = arg;
    if (c->key.minute < *oldest) *oldest = c->key.minute;
}

/* Redis mode: b's counts also into this process's own copy, bounded by the retention and by
 * METRICS_LOCAL_MAX_KEYS (the oldest minutes go first; memory_since moves past them). */
static void local_add(struct metrics *m, const struct metrics_batch *b, uint64_t keep_from) {
    pthread_mutex_lock(&m->lock);
    if (metrics_batch_merge(m->memory, b) != 0) {
        log_warn("metrics: out of memory while copying counts for the partial answers");
        m->memory_since = clock_wall_us() / 1000000u; /* the copy is short from here back */
    }
    if (keep_from > m->memory_pruned_minute) {
        metrics_batch_trim(m->memory, SIZE_MAX, keep_from, NULL);
        m->memory_pruned_minute = keep_from;
        if (keep_from * 60 > m->memory_since) m->memory_since = keep_from * 60;
    }
    if (metrics_batch_count(m->memory) > METRICS_LOCAL_MAX_KEYS) {
        uint64_t oldest = UINT64_MAX;
        metrics_batch_trim(m->memory, METRICS_LOCAL_MAX_KEYS, 0, NULL);
        metrics_batch_foreach(m->memory, oldest_cell, &oldest);
        if (oldest != UINT64_MAX && oldest * 60 > m->memory_since) m->memory_since = oldest * 60;
    }
    pthread_mutex_unlock(&m->lock);
}

static void flush_cycle(struct metrics *m) {
    char err[256];
    int have = 0;
    uint64_t dropped_reqs = 0;
    size_t dropped;
    uint64_t now_minute = clock_wall_us() / 60000000u;
    uint64_t keep_from = now_minute > m->retention_s / 60 ? now_minute - m->retention_s / 60 : 0;

    if (!m->pending && !(m->pending = metrics_batch_new())) return;
    for (unsigned i = 0; i < m->n_slots; i++) {
        struct metrics_batch *b = metrics_slot_take(&m->slots[i]);
        if (!b) continue;
        if (metrics_batch_count(b)) have = 1;
        if (metrics_batch_merge(m->pending, b) != 0) {
            atomic_fetch_add_explicit(&m->dropped_keys, metrics_batch_count(b),
                                      memory_order_relaxed);
            log_warn("metrics: out of memory while merging a batch; its counts are lost");
        }
        if (m->redis && metrics_batch_count(b)) local_add(m, b, keep_from);
        metrics_slot_give_back(&m->slots[i], b);
    }
    if (!m->redis) {
        pthread_mutex_lock(&m->lock);
        if (metrics_batch_merge(m->memory, m->pending) != 0)
            log_warn("metrics: out of memory while merging into the memory tables");
        if (keep_from > m->memory_pruned_minute) {
            metrics_batch_trim(m->memory, SIZE_MAX, keep_from, NULL);
            m->memory_pruned_minute = keep_from;
        }
        /* clients choose the ids: bound the tables like the pending batch in Redis mode */
        dropped = metrics_batch_count(m->memory) > METRICS_MEMORY_MAX_KEYS
                      ? metrics_batch_trim(m->memory, METRICS_MEMORY_MAX_KEYS, 0, &dropped_reqs)
                      : 0;
        pthread_mutex_unlock(&m->lock);
        if (dropped) {
            atomic_fetch_add_explicit(&m->dropped_keys, dropped, memory_order_relaxed);
            atomic_fetch_add_explicit(&m->dropped_requests, dropped_reqs, memory_order_relaxed);
            log_warn("metrics: dropped the %zu oldest keys (%" PRIu64 " requests) beyond the "
                     "in-process bound of %d keys",
                     dropped, dropped_reqs, METRICS_MEMORY_MAX_KEYS);
        }
        metrics_batch_clear(m->pending);
        if (have) atomic_fetch_add_explicit(&m->flushes, 1, memory_order_relaxed);
        return;
    }
    if (metrics_batch_count(m->pending) || m->unsure) {
        /* A flush a second fails for as long as Redis is down: one line when it starts (and
         * when the error changes), a summary a minute, one line when a flush works again. */
        static struct log_limiter flush_warning = LOG_LIMITER_INIT(60, 0);
        static struct log_limiter drop_warning = LOG_LIMITER_INIT(60, 0);
        int rc = settle_unsure(m, err, sizeof(err));
        if (rc == 0 && metrics_batch_count(m->pending)) {
            rc = redis_write(m, m->pending, ++m->batch_seq, err, sizeof(err));
            if (rc == 1) {
                /* the EXEC may have run: keep this batch apart, settled before the next one */
                m->unsure = m->pending;
                m->unsure_seq = m->batch_seq;
                if (!(m->pending = metrics_batch_new())) {
                    atomic_fetch_add_explicit(&m->flush_errors, 1, memory_order_relaxed);
                    return; /* taken again at the next cycle */
                }
            }
        }
        if (rc == 0) {
            metrics_batch_clear(m->pending);
            atomic_fetch_add_explicit(&m->flushes, 1, memory_order_relaxed);
            log_limited_ok(&flush_warning, LOG_LEVEL_INFO, "metrics: flushing to redis again");
            log_limited_ok(&drop_warning, LOG_LEVEL_INFO, "metrics: no more keys dropped");
        } else {
            atomic_fetch_add_explicit(&m->flush_errors, 1, memory_order_relaxed);
            log_limited(&flush_warning, LOG_LEVEL_WARN,
                        "metrics: flush failed, %zu keys kept for the next one: %s",
                        metrics_batch_count(m->pending) +
                            (m->unsure ? metrics_batch_count(m->unsure) : 0),
                        err);
            dropped =
                metrics_batch_trim(m->pending, METRICS_PENDING_MAX_KEYS, keep_from, &dropped_reqs);
            if (dropped) {
                atomic_fetch_add_explicit(&m->dropped_keys, dropped, memory_order_relaxed);
                atomic_fetch_add_explicit(&m->dropped_requests, dropped_reqs, memory_order_relaxed);
                log_limited(&drop_warning, LOG_LEVEL_WARN,
                            "metrics: dropped the %zu oldest keys (%" PRIu64 " requests) held "
                            "while redis is unreachable",
                            dropped, dropped_reqs);
            }
        }
    }
    atomic_store_explicit(&m->pending_keys,
                          metrics_batch_count(m->pending) +
                              (m->unsure ? metrics_batch_count(m->unsure) : 0),
                          memory_order_relaxed);
}

static void deadline_after(struct timespec *ts, unsigned ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

void *metrics_flush_main(void *arg) {
    struct metrics *m = arg;
    struct timespec deadline;
    thread_name("capgate-metrics");
    (void)thread_background(); /* its flush each flush_ms preempts no worker (thread.h) */
    pthread_mutex_lock(&m->lock);
    for (;;) {
        int stopping = m->stop;
        if (!stopping) {
            deadline_after(&deadline, m->flush_ms);
            while (!m->stop && m->flush_requested == m->flush_done &&
                   pthread_cond_timedwait(&m->wake, &m->lock, &deadline) != ETIMEDOUT) {
            }
            stopping = m->stop;
        }
        uint64_t gen = m->flush_requested;
        pthread_mutex_unlock(&m->lock);
        flush_cycle(m);
        pthread_mutex_lock(&m->lock);
        m->flush_done = gen;
        pthread_cond_broadcast(&m->flushed);
        if (stopping) break;
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

void metrics_flush(struct metrics *m) {
    pthread_mutex_lock(&m->lock);
    uint64_t want = ++m->flush_requested;
    pthread_cond_signal(&m->wake);
    while (m->flush_done < want) pthread_cond_wait(&m->flushed, &m->lock);
    pthread_mutex_unlock(&m->lock);
}
