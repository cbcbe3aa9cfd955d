/* audit.c: the audit trail. Records are built on the worker threads and cross to one sink
 * thread over per-worker single-producer/single-consumer rings (an overflow list behind each, so
 * nothing is dropped and a worker never waits). The sink writes them to Redis with pipelined
 * XADDs, spools them to append-only JSONL segments while Redis is unreachable and replays the
 * spool, oldest first and idempotently, when it comes back; without Redis it keeps a bounded
 * memory stream. Queries run on short-lived threads and answer on the caller's event base.
 * This file holds the lifecycle (audit_new, audit_free, audit_get_stats); the record is in
 * audit_record.c, the queues in audit_queue.c, the spool in audit_spool.c, the sink thread in
 * audit_sink.c and the queries in audit_query.c (shared declarations: audit_internal.h). */
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
        if (!cfg->audit.spool_dir || audit_mkdir_p(cfg->audit.spool_dir) != 0) {
            snprintf(err, errlen, "audit.spool_dir: cannot create %s: %s",
                     cfg->audit.spool_dir ? cfg->audit.spool_dir : "(none)", strerror(errno));
            goto fail;
        }
        char lock[4096];
        if (audit_spool_path(a, ".lock", lock, sizeof(lock)) != 0 ||
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
        audit_hex_encode(rnd, sizeof(rnd), a->run_id);
        snprintf(a->batch_key, sizeof(a->batch_key), "%saudit:batch:%s", cfg->redis->key_prefix,
                 a->run_id);
        atomic_store(&a->spool_depth, audit_spool_count(a));
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
        if (audit_mkdir_p(cfg->audit.spool_dir) != 0 ||
            audit_spool_path(a, "audit.jsonl", a->file_path, sizeof(a->file_path)) != 0) {
            snprintf(err, errlen, "audit.spool_dir: cannot create %s: %s", cfg->audit.spool_dir,
                     strerror(errno));
            goto fail;
        }
    }
    if (a->file_path[0]) {
        a->file.fd = audit_file_open(a->file_path);
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
    if (thread_start(&a->thread, NULL, audit_sink_main, a) != 0) {
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
    audit_sink_nudge(a);
}

void audit_free(struct audit *a) {
    if (!a) return;
    if (a->thread_started) {
        atomic_store(&a->stopping, 1);
        audit_sink_wake(a);
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
        while ((n = audit_queue_pop(q)) != NULL) {
            audit_print_unsaved(n);
            free(n);
            unsaved++;
        }
        if (unsaved)
            log_error("audit: %zu records of worker %u arrived after the sink stopped; each is "
                      "on stderr as a \"" UNSAVED_PREFIX "\" line",
                      unsaved, w);
        audit_queue_free_nodes(q);
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
    audit_sink_disconnect(a);
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
