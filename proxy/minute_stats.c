/* minute_stats.c: per-(businessId, sceneId, minute) counters, behind /admin/stats. Workers fill
 * private batches; one flush thread collects them through lock-free slots and writes Redis (or
 * the in-memory tables); the read side runs on short-lived threads and hands its JSON back to
 * the caller's event loop.
 * Layout and contracts are in minute_stats.h. This file holds the lifecycle (metrics_new,
 * metrics_free, metrics_get_stats); the counters and batches are in metrics_batch.c, the flush
 * thread in metrics_flush.c and the read side in metrics_query.c (shared declarations:
 * metrics_internal.h). */
#include "metrics_internal.h"

/* ---- lifecycle ---- */

static void redis_cfg_free(struct metrics_redis *r) {
    if (!r) return;
    redis_target_unref(r->target);
    free(r->prefix);
    free(r);
}

struct metrics *metrics_new(const struct config *cfg, unsigned n_workers, char *err,
                            size_t errlen) {
    pthread_condattr_t ca;
    int lock_init = 0, wake_init = 0, flushed_init = 0;
    struct metrics *m = calloc(1, sizeof(*m));
    if (!m) goto oom;
    m->flush_ms = cfg->metrics.flush_ms ? cfg->metrics.flush_ms : 1000;
    m->retention_s = cfg->metrics.retention_s ? cfg->metrics.retention_s : 691200;
    m->n_slots = n_workers;
    if (n_workers && !(m->slots = calloc(n_workers, sizeof(*m->slots)))) goto oom;
    if (cfg->redis) {
        const struct config_redis *cr = cfg->redis;
        if (!(m->redis = calloc(1, sizeof(*m->redis)))) goto oom;
        if (!(m->redis->target = redis_target_new(cr, err, errlen))) goto fail;
        if (!(m->redis->prefix = strdup(cr->key_prefix ? cr->key_prefix : "capgate:"))) goto oom;
        unsigned char rnd[8];
        static const char digits[] = "0123456789abcdef";
        if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
            snprintf(err, errlen, "metrics: RAND_bytes failed");
            goto fail;
        }
        for (size_t i = 0; i < sizeof(rnd); i++) {
            m->run_id[2 * i] = digits[rnd[i] >> 4];
            m->run_id[2 * i + 1] = digits[rnd[i] & 15];
        }
        m->run_id[2 * sizeof(rnd)] = '\0';
        size_t klen = strlen(m->redis->prefix) + sizeof("m:batch:") + sizeof(m->run_id);
        if (!(m->batch_key = malloc(klen))) goto oom;
        snprintf(m->batch_key, klen, "%sm:batch:%s", m->redis->prefix, m->run_id);
        m->client.id = m->lost.id = -1;
    }
    if (!(m->memory = metrics_batch_new())) goto oom;
    m->memory_since = clock_wall_us() / 1000000u;
    if (pthread_mutex_init(&m->lock, NULL) != 0) goto oom;
    lock_init = 1;
    if (pthread_condattr_init(&ca) != 0) goto oom;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    wake_init = pthread_cond_init(&m->wake, &ca) == 0;
    pthread_condattr_destroy(&ca);
    if (!wake_init) goto oom;
    if (pthread_cond_init(&m->flushed, NULL) != 0) goto oom;
    flushed_init = 1;
    redis_query_set_init(&m->queries);
    if (thread_start(&m->thread, NULL, metrics_flush_main, m) != 0) {
        snprintf(err, errlen, "metrics: cannot start the flush thread");
        goto fail;
    }
    m->thread_started = 1;
    return m;
oom:
    snprintf(err, errlen, "metrics: out of memory");
fail:
    if (m) {
        if (flushed_init) {
            pthread_cond_destroy(&m->flushed);
            redis_query_set_destroy(&m->queries);
        }
        if (wake_init) pthread_cond_destroy(&m->wake);
        if (lock_init) pthread_mutex_destroy(&m->lock);
        redis_cfg_free(m->redis);
        free(m->batch_key);
        metrics_batch_free(m->memory);
        free(m->slots);
        free(m);
    }
    return NULL;
}

void metrics_free(struct metrics *m) {
    if (!m) return;
    redis_query_set_wait(&m->queries);
    pthread_mutex_lock(&m->lock);
    m->stop = 1;
    pthread_cond_signal(&m->wake);
    pthread_mutex_unlock(&m->lock);
    if (m->thread_started) pthread_join(m->thread, NULL);
    if (m->pending && metrics_batch_count(m->pending))
        log_warn("metrics: %zu keys could not be written to redis before exit",
                 metrics_batch_count(m->pending));
    for (unsigned i = 0; i < m->n_slots; i++) {
        struct metrics_batch *b = atomic_load(&m->slots[i].active);
        if (b != SLOT_BUSY) metrics_batch_free(b);
        metrics_batch_free(atomic_load(&m->slots[i].spare));
    }
    if (m->unsure)
        log_warn("metrics: the flush %s:%" PRIu64 " (%zu keys) got no answer before exit; it may "
                 "or may not have been written",
                 m->run_id, m->unsure_seq, metrics_batch_count(m->unsure));
    if (m->conn) redisFree(m->conn);
    metrics_batch_free(m->unsure);
    free(m->batch_key);
    metrics_batch_free(m->pending);
    metrics_batch_free(m->memory);
    redis_cfg_free(m->redis);
    pthread_cond_destroy(&m->flushed);
    redis_query_set_destroy(&m->queries);
    pthread_cond_destroy(&m->wake);
    pthread_mutex_destroy(&m->lock);
    free(m->slots);
    free(m);
}

void metrics_get_stats(struct metrics *m, struct metrics_stats *out) {
    memset(out, 0, sizeof(*out));
    out->flushes = atomic_load_explicit(&m->flushes, memory_order_relaxed);
    out->flush_errors = atomic_load_explicit(&m->flush_errors, memory_order_relaxed);
    out->pending_keys = atomic_load_explicit(&m->pending_keys, memory_order_relaxed);
    out->dropped_keys = atomic_load_explicit(&m->dropped_keys, memory_order_relaxed);
    out->dropped_requests = atomic_load_explicit(&m->dropped_requests, memory_order_relaxed);
    for (unsigned i = 0; i < m->n_slots; i++) {
        out->dropped_keys += atomic_load_explicit(&m->slots[i].dropped_keys, memory_order_relaxed);
        out->dropped_requests +=
            atomic_load_explicit(&m->slots[i].dropped_requests, memory_order_relaxed);
    }
}
