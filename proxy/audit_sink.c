/* audit_sink.c: the sink thread: live Redis batches (MULTI/EXEC, WAIT), the spool replay and
 * its fences, the connection, the memory stream, audit.file and the access log batches. Part of
 * the audit module (audit.c). */
#include "audit_internal.h"

#include "capgate/alloc.h"
#include "capgate/thread.h"

static const char *const audit_state_names[] = {"connecting", "live",   "spooling",
                                                "replaying",  "memory", "stopped"};
/* Replays one spooled record: adds it to the stream only the first time its request_id is
 * seen. KEYS: stream, seen key. ARGV: ttl, maxlen, field, value, ... */
static const char replay_script[] =
    "if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then "
    "redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3)) "
    "return 1 end return 0";
static void set_state(struct audit *a, enum audit_state s) {
    enum audit_state old = (enum audit_state)atomic_load(&a->state);
    if (old == s) return;
    atomic_store(&a->state, (int)s);
    log_info("audit: sink %s -> %s", audit_state_names[old], audit_state_names[s]);
}

const char *audit_state_name(struct audit *a) {
    return audit_state_names[atomic_load(&a->state)];
}

/* ---- Redis ---- */

redisReply *audit_redis_cmd(redisContext *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    return r;
}

/* A synchronous connection to the master (redis_conn.h: the settings SIGHUP published last,
 * else rc's; sentinels asked when configured), AUTH and SELECT done. NULL with err. *epoch: the
 * redis_conn_epoch() the connection was made at; *timeout_ms: the redis.timeout_ms of the
 * settings it was made with (either NULL: not wanted). */
redisContext *audit_redis_open(const struct config_redis *rc, uint64_t *epoch, unsigned *timeout_ms,
                               char *err, size_t errlen) {
    struct redis_target *t = redis_target_new(rc, err, errlen);
    redisContext *c;
    uint64_t e;
    if (!t) return NULL;
    e = redis_conn_refresh(&t);
    c = redis_conn_open(t, err, errlen);
    if (c && epoch) *epoch = e;
    if (c && timeout_ms) *timeout_ms = redis_target_timeout_ms(t);
    redis_target_unref(t);
    return c;
}

void audit_sink_disconnect(struct audit *a) {
    if (a->redis) {
        redisFree(a->redis);
        a->redis = NULL;
    }
    a->script_sha[0] = '\0';
    a->client.id = -1;
    a->client.addr[0] = '\0';
}

/* The connection's CLIENT ID and address, so a batch left unanswered on it can be fenced after
 * a reconnect (redis_fence.h). */
static void learn_client(struct audit *a) {
    redis_fence_learn(a->redis, &a->client);
}

/* Settles a live batch whose EXEC went unanswered (redis_fence.h): after it the GET of the batch
 * key at replay is final. */
static int fence_lost_batch(struct audit *a) {
    return redis_fence_kill(a->redis, &a->fence, "audit");
}

static int load_script(struct audit *a) {
    redisReply *r = audit_redis_cmd(a->redis, "SCRIPT LOAD %s", replay_script);
    int rc = -1;
    if (r && r->type == REDIS_REPLY_STRING && r->len == 40) {
        memcpy(a->script_sha, r->str, 41);
        rc = 0;
    } else {
        log_warn("audit: SCRIPT LOAD: %s", r ? r->str : a->redis->errstr);
    }
    if (r) freeReplyObject(r);
    return rc;
}

/* One warning when reconnect attempts start failing (and when the error changes), a summary a
 * minute while Redis stays down, one line when it is back. */
static struct log_limiter sink_warning = LOG_LIMITER_INIT(60, 0);

/* Spooling (or connecting): an error moves to spooling and schedules the next attempt. */
static void sink_failed(struct audit *a, const char *what) {
    atomic_fetch_add(&a->redis_errors, 1);
    log_limited(&sink_warning, LOG_LEVEL_WARN, "audit: redis: %s; spooling, next attempt in %u ms",
                what, a->backoff_ms);
    audit_sink_disconnect(a);
    if (a->replay_fp) {
        fclose(a->replay_fp);
        a->replay_fp = NULL;
    }
    a->next_connect_us = clock_mono_us() + (uint64_t)a->backoff_ms * 1000;
    a->backoff_ms = a->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : a->backoff_ms * 2;
    set_state(a, AUDIT_SPOOLING);
}

/* ---- live writes ---- */

struct argv_buf {
    int argc;
    const char *argv[8 + 2 * AUDIT_FIELDS_MAX];
    size_t len[8 + 2 * AUDIT_FIELDS_MAX];
};

static void argv_add(struct argv_buf *b, const char *s, size_t len) {
    b->argv[b->argc] = s;
    b->len[b->argc] = len;
    b->argc++;
}

static void argv_adds(struct argv_buf *b, const char *s) {
    argv_add(b, s, strlen(s));
}

static void argv_fields(struct argv_buf *b, const struct audit_fields *f) {
    for (size_t i = 0; i < f->count; i++) {
        argv_adds(b, f->name[i]);
        argv_add(b, f->value[i], f->value_len[i]);
    }
}

/* A stream entry's field and value (audit.h AUDIT_STREAM_FIELD): "json" and the record's JSON,
 * written into text (reset first), which must live until b is sent. Should the JSON not be made
 * (it cannot: every string of a record is valid UTF-8) the flat fields of earlier versions go
 * instead, written into f, so the record is never lost; the reader takes both. */
static void argv_entry(struct argv_buf *b, const struct audit_record *r, struct strbuf *text,
                       struct audit_fields *f) {
    strbuf_reset(text);
    if (audit_record_strbuf(r, 0, text) == 0) {
        argv_add(b, AUDIT_STREAM_FIELD, sizeof(AUDIT_STREAM_FIELD) - 1);
        argv_add(b, text->s, text->len);
        return;
    }
    audit_record_fields(r, f);
    argv_fields(b, f);
}

/* Queues b's command on the sink's connection, formatted here (resp.h) rather than by hiredis.
 * 0, or -1 (out of memory, or hiredis refused it). */
static int argv_send(struct audit *a, const struct argv_buf *b) {
    strbuf_reset(&a->resp);
    if (resp_append_command(&a->resp, b->argc, b->argv, b->len) != 0) return -1;
    return redisAppendFormattedCommand(a->redis, a->resp.s, a->resp.len) == REDIS_OK ? 0 : -1;
}

/* Keeps nodes (in order) ahead of the held records, to be retried first. */
static void hold(struct audit *a, struct audit_node **nodes, size_t n) {
    a->held_n += n;
    for (size_t i = n; i-- > 0;) {
        nodes[i]->next = a->held;
        a->held = nodes[i];
    }
}

/* Spools nodes and frees them, or holds them when the spool refuses them. */
static void spool_or_hold(struct audit *a, struct audit_node **nodes, size_t n) {
    if (audit_spool_append(a, nodes, n) == 0) {
        for (size_t i = 0; i < n; i++) audit_node_release(a, nodes[i]);
    } else {
        hold(a, nodes, n);
    }
}

/* One live batch: MULTI, an XADD per record, SET <batch_key> <seq> (unless unfenced), EXEC, all
 * pipelined. The transaction makes the batch land whole or not at all, and its number in the
 * batch key tells a later replay which of the two happened without reading the stream. Records
 * whose XADD ran are freed; an error reply or a lost connection moves the sink to spooling and
 * leaves the rest, in order, at the front of nodes (marked uncertain with the batch number when
 * no EXEC answer came): their count is returned. The retries are gathered in place, without
 * allocating, because this is the path that runs when things already go wrong. unfenced: the
 * last resort at stop, which writes ahead of an unreplayed spool and so must not move the batch
 * key past the batches in it. */
static size_t live_write(struct audit *a, struct audit_node **nodes, size_t n, int unfenced) {
    struct audit_fields f;
    struct argv_buf b;
    size_t sent = 0, i, n_retry = 0; /* nodes[0 .. n_retry) are kept; n_retry <= i throughout */
    char why[160] = "", seq[24], ttl[24], batch[48];
    redisReply *r = NULL, *exec = NULL;
    int queued = 0, waiting = !unfenced && a->cfg->audit.min_replicas > 0;
    unsigned char ran[SINK_BATCH]; /* waiting: the XADD ran, the record waits for WAIT */
    /* n <= SINK_BATCH: every caller's batch is at most that */
    a->batch_seq++;
    snprintf(seq, sizeof(seq), "%llu", (unsigned long long)a->batch_seq);
    snprintf(ttl, sizeof(ttl), "%d", AUDIT_SEEN_TTL_S);
    snprintf(batch, sizeof(batch), "%s:%s", a->run_id, seq);
    b.argc = 0;
    argv_adds(&b, "MULTI");
    if (argv_send(a, &b) != 0) goto unsent;
    for (i = 0; i < n; i++) {
        b.argc = 0;
        argv_adds(&b, "XADD");
        argv_adds(&b, a->cfg->audit.stream);
        argv_adds(&b, "MAXLEN");
        argv_adds(&b, "~");
        argv_adds(&b, a->maxlen);
        argv_adds(&b, "*");
        argv_entry(&b, &nodes[i]->rec, &a->entry, &f);
        if (argv_send(a, &b) != 0) break;
        sent++;
    }
    b.argc = 0;
    if (unfenced) {
        argv_adds(&b, "EXEC");
    } else {
        argv_adds(&b, "SET");
        argv_adds(&b, a->batch_key);
        argv_adds(&b, seq);
        argv_adds(&b, "EX");
        argv_adds(&b, ttl);
    }
    if (sent < n || argv_send(a, &b) != 0) {
        /* nothing went out yet (hiredis only buffers): end the transaction unsent */
        snprintf(why, sizeof(why), "XADD: cannot queue the command");
        goto unsent;
    }
    b.argc = 0;
    argv_adds(&b, "EXEC");
    if (!unfenced && argv_send(a, &b) != 0) {
        snprintf(why, sizeof(why), "XADD: cannot queue the command");
        goto unsent;
    }
    /* audit.min_replicas: WAIT, pipelined behind EXEC (no extra round trip), covers the batch */
    if (waiting) {
        b.argc = 0;
        argv_adds(&b, "WAIT");
        argv_adds(&b, a->wait_replicas);
        argv_adds(&b, a->wait_ms);
        if (argv_send(a, &b) != 0) {
            snprintf(why, sizeof(why), "WAIT: cannot queue the command");
            goto unsent;
        }
    }
    /* MULTI, n XADDs, SET (fenced): each answered +OK/+QUEUED or an error that aborts EXEC */
    for (i = 0; i < n + (unfenced ? 1 : 2); i++) {
        if (redisGetReply(a->redis, (void **)&r) != REDIS_OK || !r) goto lost;
        if (r->type == REDIS_REPLY_ERROR && !why[0])
            snprintf(why, sizeof(why), "XADD (queued): %s", r->str);
        freeReplyObject(r);
        r = NULL;
        queued++;
    }
    if (redisGetReply(a->redis, (void **)&exec) != REDIS_OK || !exec) goto lost;
    if (exec->type != REDIS_REPLY_ARRAY || exec->elements < n) {
        /* EXECABORT (a command refused while queued: OOM, a wrong argument): nothing ran */
        if (!why[0])
            snprintf(why, sizeof(why), "EXEC: %s",
                     exec->type == REDIS_REPLY_ERROR ? exec->str : "unexpected reply");
        atomic_fetch_add(&a->redis_errors, 1);
        freeReplyObject(exec);
        sink_failed(a, why);
        return n;
    }
    for (i = 0; i < n; i++) {
        if (exec->element[i]->type == REDIS_REPLY_ERROR) { /* ran and failed: not written */
            if (!why[0]) snprintf(why, sizeof(why), "XADD: %s", exec->element[i]->str);
            atomic_fetch_add(&a->redis_errors, 1);
            ran[n_retry] = 0;
            nodes[n_retry++] = nodes[i];
        } else if (waiting) { /* kept until WAIT confirms it */
            ran[n_retry] = 1;
            nodes[n_retry++] = nodes[i];
        } else {
            atomic_fetch_add(&a->written, 1);
            audit_node_release(a, nodes[i]);
        }
    }
    freeReplyObject(exec);
    if (waiting) {
        long long acked = -1;
        if (redisGetReply(a->redis, (void **)&r) != REDIS_OK || !r) {
            snprintf(why, sizeof(why), "WAIT: %s", a->redis->errstr);
        } else {
            if (r->type == REDIS_REPLY_INTEGER) acked = r->integer;
            if (acked < (long long)a->cfg->audit.min_replicas)
                snprintf(why, sizeof(why),
                         "WAIT: %s%lld of %u replicas confirmed the batch in %s ms",
                         r->type == REDIS_REPLY_ERROR ? r->str : "", acked < 0 ? 0 : acked,
                         a->cfg->audit.min_replicas, a->wait_ms);
            freeReplyObject(r);
            r = NULL;
        }
        if (acked < (long long)a->cfg->audit.min_replicas) {
            /* in the master's stream, maybe not on the replica a failover would promote: the
             * records stay spooled, tagged with their batch, so replay writes them again only
             * when the batch key is missing (and replay WAITs again before it lets them go) */
            for (i = 0; i < n_retry; i++) {
                if (!ran[i]) continue;
                nodes[i]->uncertain = 1;
                snprintf(nodes[i]->batch, sizeof(nodes[i]->batch), "%s", batch);
            }
            sink_failed(a, why);
            return n_retry;
        }
        size_t kept = 0;
        for (i = 0; i < n_retry; i++) {
            if (ran[i]) {
                atomic_fetch_add(&a->written, 1);
                audit_node_release(a, nodes[i]);
            } else {
                nodes[kept++] = nodes[i];
            }
        }
        n_retry = kept;
    }
    if (n_retry > 0) sink_failed(a, why);
    return n_retry;
lost:
    /* no EXEC answer: the batch ran whole or not at all, and only Redis knows which */
    snprintf(why, sizeof(why), "XADD: %s%s", a->redis->errstr, queued ? " (waiting for EXEC)" : "");
    for (i = 0; i < n; i++) {
        nodes[i]->uncertain = 1;
        if (!unfenced) snprintf(nodes[i]->batch, sizeof(nodes[i]->batch), "%s", batch);
    }
    if (!unfenced && a->client.id >= 0) a->fence = a->client;
    sink_failed(a, why);
    return n;
unsent:
    if (!why[0]) snprintf(why, sizeof(why), "MULTI: cannot queue the command");
    /* the output buffer may hold part of the batch: dropping the connection discards it */
    sink_failed(a, why);
    return n;
}

/* ---- replay ---- */

/* What the batch keys said during one replay chunk: run id → the last batch of that run that
 * landed (0: none, or its key expired). */
#define BATCH_RUNS_MAX 8
struct batch_runs {
    size_t n;
    char run[BATCH_RUNS_MAX][17];
    uint64_t landed[BATCH_RUNS_MAX];
};

/* Whether the live batch tag ("<run>:<seq>") ran: its run's batch key holds its number or a
 * later one (a run's batches are sent in order, and the next one only after an unanswered one
 * was settled). One GET per run and chunk; the cost never depends on the stream. 1 landed,
 * 0 not, -1 when Redis did not answer, -2 for a malformed tag (then the record is replayed: a
 * possible duplicate, never a loss). */
static int batch_landed(struct audit *a, struct batch_runs *runs, const char *tag) {
    const char *colon = strchr(tag, ':');
    uint64_t seq, landed = 0;
    size_t k, rl = colon ? (size_t)(colon - tag) : 0;
    if (!colon || rl == 0 || rl > 16 || num_parse_u64(colon + 1, strlen(colon + 1), &seq) != 0)
        return -2;
    for (k = 0; k < runs->n; k++)
        if (strlen(runs->run[k]) == rl && memcmp(runs->run[k], tag, rl) == 0)
            return runs->landed[k] >= seq;
    redisReply *r =
        audit_redis_cmd(a->redis, "GET %saudit:batch:%b", a->cfg->redis->key_prefix, tag, rl);
    if (!r) return -1;
    if (r->type == REDIS_REPLY_STRING && num_parse_u64(r->str, r->len, &landed) != 0) landed = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        log_warn("audit: GET of a batch key: %s", r->str);
        freeReplyObject(r);
        return -1;
    }
    freeReplyObject(r);
    if (runs->n < BATCH_RUNS_MAX) {
        memcpy(runs->run[runs->n], tag, rl);
        runs->run[runs->n][rl] = '\0';
        runs->landed[runs->n++] = landed;
    }
    return landed >= seq;
}

/* Finishes the replay: the spool is empty, records go live again. */
static void replay_done(struct audit *a) {
    char path[4096];
    if (audit_spool_path(a, CURSOR_NAME, path, sizeof(path)) == 0) unlink(path);
    set_state(a, AUDIT_LIVE);
}

/* Opens the oldest segment not being appended to. 1 opened, 0 the spool is replayed, -1 on
 * error (already handled). */
static int replay_open(struct audit *a) {
    struct dirent **names;
    int n = audit_list_segments(a->cfg->audit.spool_dir, &names);
    int rc = 0;
    if (n < 0) {
        atomic_fetch_add(&a->file_errors, 1);
        log_error("audit: cannot list %s: %s", a->cfg->audit.spool_dir, strerror(errno));
        return -1;
    }
    for (int i = 0; i < n && rc == 0; i++) {
        char path[4096];
        if (strcmp(names[i]->d_name, a->segment_name) == 0) continue;
        if (audit_spool_path(a, names[i]->d_name, path, sizeof(path)) != 0) continue;
        a->replay_fp = fopen(path, "re");
        if (!a->replay_fp) {
            log_error("audit: cannot open %s: %s", path, strerror(errno));
            continue;
        }
        audit_copy_str(a->replay_name, sizeof(a->replay_name), names[i]->d_name);
        a->replay_off = audit_cursor_read(a, a->replay_name);
        if (a->replay_off && fseeko(a->replay_fp, (off_t)a->replay_off, SEEK_SET) != 0)
            a->replay_off = 0;
        log_info("audit: replaying %s from byte %llu", a->replay_name,
                 (unsigned long long)a->replay_off);
        rc = 1;
    }
    audit_free_names(names, n);
    if (rc == 0 && a->segment.fd >= 0) {
        if (a->segment_records == 0) { /* nothing new arrived: drop the empty segment */
            char path[4096];
            if (audit_spool_path(a, a->segment_name, path, sizeof(path)) == 0) unlink(path);
            close(a->segment.fd);
            a->segment.fd = -1;
            a->segment_name[0] = '\0';
        } else { /* replay it next; new records start another one */
            audit_spool_close_segment(a);
            return replay_open(a);
        }
    }
    return rc;
}

/* The sink connection's read timeout: redis.timeout_ms of the settings it was made with (a
 * SIGHUP may have changed them since start), or the replay's own. */
static void sink_timeout(struct audit *a, int replay) {
    unsigned ms = a->redis_timeout_ms;
    if (replay && ms < REPLAY_TIMEOUT_MIN_MS) ms = REPLAY_TIMEOUT_MIN_MS;
    /* WAIT answers after up to redis.timeout_ms of its own (audit.min_replicas) */
    if (a->cfg->audit.min_replicas > 0) ms += a->redis_timeout_ms + 50;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    if (a->redis) (void)redisSetTimeout(a->redis, tv);
}

static void replay_chunk(struct audit *a);

/* Replays up to REPLAY_CHUNK records of the current segment, then persists the cursor; its
 * replies are waited for with the replay's own timeout. */
static void replay_step(struct audit *a) {
    sink_timeout(a, 1);
    replay_chunk(a);
    sink_timeout(a, 0);
}

/* audit.min_replicas: before the replay cursor moves past a chunk, WAIT confirms it reached the
 * replicas. WAIT covers this connection's writes only, and a chunk may write nothing (every
 * record was in an earlier, unconfirmed attempt, or in a batch that landed): the SET of
 * <prefix>audit:sync:<run> is a write after all of them, so WAIT covers everything before it.
 * NULL when confirmed, else why not (in err). */
static const char *replay_wait(struct audit *a, char *err, size_t errlen) {
    redisReply *r = NULL;
    long long acked = -1;
    const char *why = NULL;
    if (redisAppendCommand(a->redis, "SET %saudit:sync:%s %llu EX %d", a->cfg->redis->key_prefix,
                           a->run_id, (unsigned long long)a->batch_seq,
                           AUDIT_SEEN_TTL_S) != REDIS_OK ||
        redisAppendCommand(a->redis, "WAIT %s %s", a->wait_replicas, a->wait_ms) != REDIS_OK)
        return "WAIT: cannot queue the command";
    for (int i = 0; i < 2; i++) {
        if (redisGetReply(a->redis, (void **)&r) != REDIS_OK || !r) {
            snprintf(err, errlen, "WAIT: %s", a->redis->errstr);
            return err;
        }
        if (r->type == REDIS_REPLY_ERROR && !why) {
            snprintf(err, errlen, "%s: %s", i ? "WAIT" : "SET", r->str);
            why = err;
        }
        if (i == 1 && r->type == REDIS_REPLY_INTEGER) acked = r->integer;
        freeReplyObject(r);
    }
    if (why) return why;
    if (acked < (long long)a->cfg->audit.min_replicas) {
        snprintf(err, errlen, "WAIT: %lld of %u replicas confirmed the replayed records in %s ms",
                 acked < 0 ? 0 : acked, a->cfg->audit.min_replicas, a->wait_ms);
        return err;
    }
    return NULL;
}

static void replay_chunk(struct audit *a) {
    if (!a->replay_fp) {
        int rc = replay_open(a);
        if (rc == 0) replay_done(a);
        if (rc != 1) return;
    }
    struct audit_node *chunk[REPLAY_CHUNK];
    int skip[REPLAY_CHUNK];
    size_t n = 0, lines = 0, bad = 0;
    uint64_t off = a->replay_off;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while (n < REPLAY_CHUNK && (len = getline(&line, &cap, a->replay_fp)) > 0) {
        if (line[len - 1] != '\n') /* a torn last line, from a crash mid-write */
            break;
        off += (uint64_t)len;
        lines++;
        struct audit_node *node = calloc(1, sizeof(*node));
        json_t *o = json_loadb(line, (size_t)len - 1, 0, NULL);
        if (!node || !o || audit_record_from_object(o, &node->rec) != 0 ||
            !node->rec.request_id[0]) {
            log_warn("audit: skipping a malformed spool line in %s at byte %llu", a->replay_name,
                     (unsigned long long)(off - (uint64_t)len));
            free(node);
            json_decref(o);
            bad++;
            continue;
        }
        node->uncertain = json_is_true(json_object_get(o, "uncertain"));
        if (node->uncertain && json_is_string(json_object_get(o, "batch")))
            audit_copy_str(node->batch, sizeof(node->batch),
                           json_string_value(json_object_get(o, "batch")));
        json_decref(o);
        chunk[n++] = node;
    }
    free(line);
    if (lines == 0) { /* the segment is done */
        char path[4096];
        fclose(a->replay_fp);
        a->replay_fp = NULL;
        if (audit_spool_path(a, a->replay_name, path, sizeof(path)) == 0 && unlink(path) != 0)
            log_error("audit: cannot remove %s: %s", path, strerror(errno));
        audit_fsync_dir(a->cfg->audit.spool_dir);
        log_info("audit: replayed %s", a->replay_name);
        a->replay_name[0] = '\0';
        return;
    }
    char seen_prefix[256], maxlen_ttl[24];
    snprintf(seen_prefix, sizeof(seen_prefix), "%saudit:seen:", a->cfg->redis->key_prefix);
    snprintf(maxlen_ttl, sizeof(maxlen_ttl), "%d", AUDIT_SEEN_TTL_S);
    char(*seen_keys)[300] = calloc(n ? n : 1, sizeof(*seen_keys));
    const char *why = NULL;
    char errbuf[160] = "";
    size_t sent = 0, i, n_landed = 0;
    struct batch_runs runs = {0};
    if (!seen_keys) {
        why = "out of memory";
        goto out;
    }
    /* first the batch checks (synchronous GETs), before any EVALSHA is queued behind them */
    for (i = 0; i < n; i++) {
        skip[i] = 0;
        if (chunk[i]->uncertain && chunk[i]->batch[0]) {
            int landed = batch_landed(a, &runs, chunk[i]->batch);
            if (landed == -1) {
                why = "GET of a batch key failed";
                goto out;
            }
            skip[i] = landed == 1;
            n_landed += skip[i];
        }
    }
    if (n_landed)
        log_info("audit: %zu uncertain records are in the stream already (their batch landed); "
                 "not replayed",
                 n_landed);
    for (i = 0; i < n; i++) {
        if (skip[i]) continue;
        struct audit_fields f;
        struct argv_buf b = {0};
        snprintf(seen_keys[i], sizeof(seen_keys[i]), "%s%s", seen_prefix, chunk[i]->rec.request_id);
        argv_adds(&b, "EVALSHA");
        argv_adds(&b, a->script_sha);
        argv_adds(&b, "2");
        argv_adds(&b, a->cfg->audit.stream);
        argv_adds(&b, seen_keys[i]);
        argv_adds(&b, maxlen_ttl);
        argv_adds(&b, a->maxlen);
        argv_entry(&b, &chunk[i]->rec, &a->entry, &f);
        if (argv_send(a, &b) != 0) {
            why = "cannot queue EVALSHA";
            goto out;
        }
        sent++;
    }
    int noscript = 0;
    for (i = 0; i < sent; i++) {
        redisReply *r = NULL;
        if (redisGetReply(a->redis, (void **)&r) != REDIS_OK || !r) {
            snprintf(errbuf, sizeof(errbuf), "EVALSHA: %s", a->redis->errstr);
            why = errbuf;
            goto out;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            if (strncmp(r->str, "NOSCRIPT", 8) == 0)
                noscript = 1;
            else if (!why) {
                snprintf(errbuf, sizeof(errbuf), "EVALSHA: %s", r->str);
                why = errbuf;
            }
        }
        freeReplyObject(r);
    }
    if (why) goto out;
    if (noscript) { /* Redis lost its scripts (restart, SCRIPT FLUSH): load and redo */
        if (load_script(a) != 0) why = "SCRIPT LOAD failed";
        goto rewind;
    }
    if (a->cfg->audit.min_replicas > 0 && (why = replay_wait(a, errbuf, sizeof(errbuf)))) goto out;
    a->replay_off = off;
    audit_cursor_write(a, a->replay_name, off);
    atomic_fetch_add(&a->replayed, n);
    {
        uint64_t depth = atomic_load(&a->spool_depth), done = n + bad;
        atomic_store(&a->spool_depth, depth > done ? depth - done : 0);
    }
    goto out_free;
rewind:
    if (fseeko(a->replay_fp, (off_t)a->replay_off, SEEK_SET) != 0) {
        fclose(a->replay_fp);
        a->replay_fp = NULL;
    }
out:
    if (why) sink_failed(a, why); /* the chunk is replayed again from the cursor */
out_free:
    free(seen_keys);
    for (i = 0; i < n; i++) free(chunk[i]);
}

/* ---- connection ---- */

/* Connects the sink (audit_redis_open) and takes the settings' timeout_ms for its waits and
 * WAIT's argument. 0, or -1 with err. */
static int sink_open(struct audit *a, uint64_t *epoch, char *err, size_t errlen) {
    a->redis = audit_redis_open(a->cfg->redis, epoch, &a->redis_timeout_ms, err, errlen);
    if (!a->redis) return -1;
    snprintf(a->wait_ms, sizeof(a->wait_ms), "%u", a->redis_timeout_ms);
    return 0;
}

static void try_connect(struct audit *a) {
    char err[256];
    if (sink_open(a, &a->redis_epoch, err, sizeof(err)) != 0) {
        sink_failed(a, err);
        return;
    }
    if (load_script(a) != 0) {
        sink_failed(a, "SCRIPT LOAD failed");
        return;
    }
    if (fence_lost_batch(a) != 0) {
        sink_failed(a, "CLIENT KILL of the lost connection: no answer");
        return;
    }
    learn_client(a);
    sink_timeout(a, 0);
    a->backoff_ms = BACKOFF_MIN_MS;
    struct dirent **names;
    int n = audit_list_segments(a->cfg->audit.spool_dir, &names);
    if (n > 0) audit_free_names(names, n);
    log_limited_ok(&sink_warning, LOG_LEVEL_INFO, "audit: redis is back");
    log_info("audit: connected to redis %s:%d", a->redis->tcp.host, a->redis->tcp.port);
    set_state(a, n > 0 || a->segment.fd >= 0 ? AUDIT_REPLAYING : AUDIT_LIVE);
}

/* New settings (SIGHUP) or a new master (+switch-master): between two batches, the connection
 * is closed and a new one made at once, through the spool's usual reconnect path; a sink waiting
 * out its backoff tries at once. */
static void sink_check_epoch(struct audit *a) {
    uint64_t e = redis_conn_epoch();
    if (a->redis_epoch == e || !a->cfg->redis) return;
    a->redis_epoch = e;
    a->next_connect_us = clock_mono_us();
    a->backoff_ms = BACKOFF_MIN_MS;
    if (!a->redis) return;
    log_info("audit: redis settings or master changed; reconnecting");
    audit_sink_disconnect(a);
    if (a->replay_fp) {
        fclose(a->replay_fp);
        a->replay_fp = NULL;
    }
    set_state(a, AUDIT_SPOOLING);
}

/* ---- the memory stream ---- */

static void memory_push(struct audit *a, const struct audit_record *r) {
    pthread_mutex_lock(&a->mem_lock);
    if (a->mem_total < a->mem_cap && a->mem_total == a->mem_alloc) {
        size_t grow = a->mem_alloc ? a->mem_alloc * 2 : 1024;
        if (grow > a->mem_cap) grow = a->mem_cap;
        struct audit_record *m = realloc(a->mem, grow * sizeof(*m));
        if (!m) { /* keep what we have as a smaller ring */
            a->mem_cap = a->mem_alloc ? a->mem_alloc : 0;
        } else {
            a->mem = m;
            a->mem_alloc = grow;
        }
    }
    if (a->mem_cap > 0) {
        a->mem[a->mem_total % a->mem_cap] = *r;
        a->mem_total++;
    }
    pthread_mutex_unlock(&a->mem_lock);
}

/* ---- the loop ---- */

/* A value as sent, fit for a key=value text line: anything but printable ASCII other than
 * space, '"' and '\\' becomes '_', so a client can neither split the line nor fake a field. */
static const char *access_text(const char *v, char *buf, size_t len) {
    size_t i = 0;
    if (!v[0]) return "-";
    for (; v[i] && i + 1 < len; i++)
        buf[i] = v[i] > ' ' && v[i] < 0x7f && v[i] != '"' && v[i] != '\\' ? v[i] : '_';
    buf[i] = '\0';
    return buf;
}

/* r's access line (README "Install and operate") into line, as log.c frames it; its length, 0
 * when none. Text: key=value with "-" for what does not apply; JSON (log_format): the same as
 * members, null for what does not apply, latencies in milliseconds. */
static size_t access_line(const struct audit_record *r, char line[LOG_LINE_MAX]) {
    double ms = (double)r->latency_us / 1000.0, up_ms = (double)r->upstream_latency_us / 1000.0;
    if (log_is_json()) {
        json_t *o = json_pack("{s:s, s:s?, s:s?, s:s?, s:s, s:s?, s:i, s:f, s:s?}", "request_id",
                              r->request_id, "app", r->app[0] ? r->app : NULL, "action",
                              r->action[0] ? r->action : NULL, "client_ip",
                              r->client_ip[0] ? r->client_ip : NULL, "decision", r->decision,
                              "rule", r->rule[0] ? r->rule : NULL, "http", r->http_status,
                              "latency_ms", ms, "type", "access");
        if (!o) return 0;
        json_object_set_new(o, "businessId",
                            r->has_business_id ? json_integer(r->business_id) : json_null());
        json_object_set_new(o, "sceneId",
                            r->has_scene_id ? json_integer(r->scene_id) : json_null());
        json_object_set_new(o, "code", r->has_code ? json_integer(r->code) : json_null());
        json_object_set_new(o, "upstream_ms",
                            r->upstream_latency_us ? json_real(up_ms) : json_null());
        json_object_set_new(o, "upstream_status",
                            r->upstream_status ? json_integer(r->upstream_status) : json_null());
        char *fields = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(o);
        if (!fields) return 0;
        size_t n = log_line(LOG_LEVEL_INFO, "access", fields, line);
        free(fields);
        return n;
    }
    char text[2048], action[64], ip[64];
    char biz[16] = "-", scene[16] = "-", code[16] = "-", up[32] = "-";
    if (r->has_business_id) snprintf(biz, sizeof biz, "%u", (unsigned)r->business_id);
    if (r->has_scene_id) snprintf(scene, sizeof scene, "%u", (unsigned)r->scene_id);
    if (r->has_code) snprintf(code, sizeof code, "%d", r->code);
    if (r->upstream_latency_us) snprintf(up, sizeof up, "%.3f", up_ms);
    if (snprintf(text, sizeof text,
                 "access request_id=%s app=%s action=%s businessId=%s "
                 "sceneId=%s decision=%s rule=%s code=%s http=%d latency_ms=%.3f upstream_ms=%s "
                 "client_ip=%s",
                 r->request_id, r->app[0] ? r->app : "-",
                 access_text(r->action, action, sizeof action), biz, scene, r->decision,
                 r->rule[0] ? r->rule : "-", code, r->http_status, ms, up,
                 access_text(r->client_ip, ip, sizeof ip)) < 0)
        return 0;
    return log_line(LOG_LEVEL_INFO, text, NULL, line);
}

/* Writes what b holds to stderr and empties it. Failing, stderr is nowhere to say so. */
static void access_flush(struct strbuf *b) {
    if (b->len > 0) (void)audit_write_all(STDERR_FILENO, b->s, b->len);
    strbuf_reset(b);
}

/* The access lines of records just taken from the worker queues (each record once: held ones
 * being retried had theirs) go to stderr from here, so the workers never write the log per
 * request and a slow stderr (a journal falling behind) delays only this thread. One write per
 * batch, or per PIPE_BUF bytes of whole lines when a batch is longer: a pipe keeps a write of
 * at most PIPE_BUF bytes whole, so another thread's log line never lands inside one of these
 * (pipe(7)); a longer one may be split while the reader lags. */
static void access_log(struct audit *a, struct audit_node **batch, size_t n) {
    _Static_assert(LOG_LINE_MAX <= PIPE_BUF, "an access line fits one atomic write");
    if (n == 0 || log_get_level() > LOG_LEVEL_INFO) return;
    struct strbuf *b = &a->access;
    char line[LOG_LINE_MAX];
    strbuf_reset(b);
    for (size_t i = 0; i < n; i++) {
        size_t len = access_line(&batch[i]->rec, line);
        if (b->len + len > PIPE_BUF) access_flush(b);
        if (len > 0 && strbuf_append(b, line, len) != 0) break; /* no memory: what fits goes out */
    }
    access_flush(b);
}

/* Held records first (alone, so they are not written twice to audit.file, nor their access
 * lines twice), else up to max from the workers, round-robin, each worker's in order. */
static size_t collect(struct audit *a, struct audit_node **batch, size_t max, int *retried) {
    size_t n = 0;
    *retried = a->held != NULL;
    while (n < max && a->held) {
        batch[n] = a->held;
        a->held = a->held->next;
        batch[n++]->next = NULL;
    }
    a->held_n -= n;
    if (*retried) return n;
    int progress = 1;
    while (n < max && progress) {
        progress = 0;
        for (unsigned w = 0; w < a->n_workers && n < max; w++) {
            struct audit_node *node = audit_queue_pop(a->queues[w]);
            if (node) {
                batch[n++] = node;
                progress = 1;
            }
        }
    }
    access_log(a, batch, n);
    return n;
}

/* One write() per batch; the buffer is kept for the next batch (at most SINK_BATCH lines). */
static void file_append(struct audit *a, struct audit_node **batch, size_t n) {
    struct strbuf *b = &a->file_text;
    strbuf_reset(b);
    for (size_t i = 0; i < n; i++) {
        if (audit_record_json(&batch[i]->rec, b) != 0 || strbuf_appendc(b, '\n') != 0) {
            atomic_fetch_add(&a->file_errors, 1);
            return;
        }
    }
    if (audit_write_all(a->file.fd, b->s, b->len) != 0) {
        atomic_fetch_add(&a->file_errors, 1);
        log_error("audit: write %s: %s", a->file_path, strerror(errno));
        return;
    }
    a->file.unsynced += (unsigned)n;
    audit_sync_file_sync(a, &a->file, 0);
}

/* Between two batches, so each batch goes whole to one file: what the old file got is fsynced
 * there and the next batch goes to the file now at file_path. When that does not open, the old
 * file keeps receiving records: better the rotated file than none. */
static void file_reopen(struct audit *a) {
    if (!atomic_exchange(&a->reopen, 0) || a->file.fd < 0) return;
    if (a->file.unsynced == 0)
        a->file.unsynced = 1; /* a write that failed midway may have left bytes behind */
    audit_sync_file_sync(a, &a->file, 1);
    int fd = audit_file_open(a->file_path);
    if (fd < 0) {
        atomic_fetch_add(&a->file_errors, 1);
        log_error("audit: reopen %s: %s; still writing to the file open before", a->file_path,
                  strerror(errno));
        return;
    }
    close(a->file.fd);
    a->file.fd = fd;
    a->file.unsynced = 0;
    a->file.synced_us = clock_mono_us();
    log_info("audit: reopened %s", a->file_path);
}

/* Held records going live again (the spool refused them, so they were never replayed) may be
 * uncertain ones whose batch landed meanwhile: those are freed, as replay would skip them. The
 * rest stay in order at the front of nodes; their count. Without an answer from Redis, all stay
 * (and the next attempt fails the same way). */
static size_t drop_landed(struct audit *a, struct audit_node **nodes, size_t n) {
    struct batch_runs runs = {0};
    size_t i, kept = 0, dropped = 0;
    for (i = 0; i < n; i++) {
        if (nodes[i]->uncertain && nodes[i]->batch[0] &&
            batch_landed(a, &runs, nodes[i]->batch) == 1) {
            free(nodes[i]);
            dropped++;
            continue;
        }
        nodes[kept++] = nodes[i];
    }
    if (dropped) {
        atomic_fetch_add(&a->written, dropped);
        log_info("audit: %zu held uncertain records are in the stream already (their batch "
                 "landed); not written again",
                 dropped);
    }
    return kept;
}

static void handle_batch(struct audit *a, struct audit_node **batch, size_t n, int retried) {
    size_t i;
    if (a->file.fd >= 0 && !retried) file_append(a, batch, n);
    if (!retried && a->cfg->redis) /* the ring of recent records; a record enters it once */
        for (i = 0; i < n; i++) memory_push(a, &batch[i]->rec);
    switch ((enum audit_state)atomic_load(&a->state)) {
    case AUDIT_MEMORY:
        for (i = 0; i < n; i++) {
            memory_push(a, &batch[i]->rec);
            audit_node_release(a, batch[i]);
        }
        atomic_fetch_add(&a->written, n);
        return;
    case AUDIT_LIVE:
        if (retried && a->cfg->audit.min_replicas > 0) {
            /* held records (the spool refused them) go through the spool and replay: there a
             * batch that landed is skipped only after a WAIT that covers it */
            spool_or_hold(a, batch, n);
            if (!a->held) set_state(a, AUDIT_REPLAYING);
            return;
        }
        if (retried && (n = drop_landed(a, batch, n)) == 0) return;
        n = live_write(a, batch, n, 0);
        if (n > 0) spool_or_hold(a, batch, n);
        return;
    default: spool_or_hold(a, batch, n); return;
    }
}

#define REPLAY_STEPS 4  /* replay chunks per loop turn, so replay outpaces arrivals */
#define STOP_RETRIES 50 /* turns a stopping sink retries records the spool refused */

/* Writes n's record to stderr as one JSON line after UNSAVED_PREFIX: the log is the last durable
 * place for a record neither Redis nor the spool took. */
void audit_print_unsaved(const struct audit_node *n) {
    struct strbuf b;
    strbuf_init(&b);
    if (audit_record_json(&n->rec, &b) == 0)
        fprintf(stderr, UNSAVED_PREFIX "%s\n", b.s);
    else /* no memory for the JSON: what identifies the record, by hand */
        fprintf(stderr,
                UNSAVED_PREFIX "{\"ts_us\":%llu,\"request_id\":\"%s\",\"app\":\"%s\","
                               "\"decision\":\"%s\",\"code\":%d}\n",
                (unsigned long long)n->rec.ts_us, n->rec.request_id, n->rec.app, n->rec.decision,
                n->rec.code);
    strbuf_cleanup(&b);
}

/* A stopping sink whose spool keeps refusing records (Redis down and the disk full or the
 * directory gone). The held records and everything still in the worker queues (which a sink
 * holding records does not drain) get one more attempt at Redis, then at the spool, and what
 * neither takes is printed to stderr, one line each, and counted: no record is freed unseen.
 * Written to Redis here, records may land ahead of older ones still in the spool. */
void audit_sink_last_resort(struct audit *a) {
    struct audit_node *batch[SINK_BATCH], *rest = a->held, **tail = &rest;
    size_t n, total = 0, unsaved = 0;
    int retried;
    a->held = NULL;
    a->held_n = 0;
    atomic_store(&a->held_records, 0);
    while (*tail) tail = &(*tail)->next;
    while ((n = collect(a, batch, SINK_BATCH, &retried)) > 0) { /* the queues, in order */
        if (a->file.fd >= 0) file_append(a, batch, n);
        for (size_t i = 0; i < n; i++) {
            *tail = batch[i];
            tail = &batch[i]->next;
        }
    }
    if (!a->redis && a->cfg->redis) {
        char err[256];
        if (sink_open(a, NULL, err, sizeof(err)) != 0)
            log_warn("audit: last attempt at redis: %s", err);
    }
    while (rest) {
        for (n = 0; n < SINK_BATCH && rest; n++) {
            batch[n] = rest;
            rest = rest->next;
            batch[n]->next = NULL;
        }
        total += n;
        if (a->redis)
            n = live_write(a, batch, n, 1); /* on failure it disconnects: later batches skip it */
        if (n > 0 && audit_spool_append(a, batch, n) == 0) {
            for (size_t i = 0; i < n; i++) free(batch[i]);
            n = 0;
        }
        for (size_t i = 0; i < n; i++) {
            audit_print_unsaved(batch[i]);
            free(batch[i]);
        }
        unsaved += n;
    }
    if (unsaved)
        log_error("audit: stopping: %zu of %zu remaining records could be written neither to "
                  "redis nor to the spool; each is on stderr as a \"" UNSAVED_PREFIX "\" line",
                  unsaved, total);
    else
        log_warn("audit: stopping: the last %zu records were written at the last attempt", total);
}

/* Whether every worker queue looks empty to the sink (consumer side). */
static int queues_empty(struct audit *a) {
    for (unsigned w = 0; w < a->n_workers; w++) {
        struct audit_queue *q = a->queues[w];
        if (q->pending || atomic_load(&q->head) != atomic_load(&q->tail) ||
            atomic_load(&q->overflow) != NULL)
            return 0;
    }
    return 1;
}

void audit_sink_wake(struct audit *a) {
    uint64_t one = 1;
    /* nonblocking; EAGAIN only when the counter is full, and then the sink is awake anyway */
    (void)!write(a->wake_fd, &one, sizeof(one));
}

/* After publishing work for the sink (a record, a reopen): wakes it if it sleeps. The fence pairs
 * with sink_wait's: either the sink sees the work before it sleeps, or this sees sleeping set. */
void audit_sink_nudge(struct audit *a) {
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&a->sleeping, memory_order_relaxed) &&
        atomic_exchange(&a->sleeping, 0))
        audit_sink_wake(a);
}

static uint64_t sync_deadline(const struct sync_file *f, uint64_t deadline) {
    if (f->fd >= 0 && f->unsynced > 0 && f->synced_us + SYNC_EVERY_US < deadline)
        return f->synced_us + SYNC_EVERY_US;
    return deadline;
}

/* Not with audit.commit "durable": there every request waits for its batch, and the batch
 * forms by itself (what arrives while the last one is written). */
static void sink_gather(struct audit *a) {
    if (!atomic_load(&a->stopping) && !a->cfg->audit.commit_durable) {
        struct timespec ts = {0, SINK_GATHER_US * 1000L};
        nanosleep(&ts, NULL);
    }
}

/* The last batch was not full. With records waiting, sleeps SINK_GATHER_US so those arriving
 * meanwhile go out in one batch; with none, until a submit or audit_free wakes the sink (then
 * it gathers too) or until its next deadline (a batched fsync, a reconnect), at most
 * SINK_IDLE_MAX_US. A loaded sink so wakes about 1 / SINK_GATHER_US times a second instead of
 * once a record, an idle one only for its deadlines, and a record waits about SINK_GATHER_US. */
static void sink_wait(struct audit *a) {
    uint64_t now = clock_mono_us(), deadline = now + SINK_IDLE_MAX_US;
    deadline = sync_deadline(&a->file, sync_deadline(&a->segment, deadline));
    if (atomic_load(&a->state) == AUDIT_SPOOLING && a->next_connect_us < deadline)
        deadline = a->next_connect_us > now ? a->next_connect_us : now;
    atomic_store(&a->sleeping, 1);
    atomic_thread_fence(memory_order_seq_cst); /* pairs with audit_sink_nudge's fence */
    if (!queues_empty(a) || atomic_load(&a->stopping) || atomic_load(&a->reopen) ||
        deadline <= now) {
        /* a submit that cleared sleeping first also wrote wake_fd: the next poll takes it */
        atomic_store(&a->sleeping, 0);
        if (deadline > now) sink_gather(a);
        return;
    }
    struct pollfd p = {.fd = a->wake_fd, .events = POLLIN};
    int woken = poll(&p, 1, (int)((deadline - now + 999) / 1000)) > 0;
    atomic_store(&a->sleeping, 0);
    if (!woken) return;
    uint64_t count;
    (void)!read(a->wake_fd, &count, sizeof(count));
    sink_gather(a);
}

/* Once a backlog has drained, gives its memory back to the system. The records of a backlog
 * (worker queues that grew while the sink could not write, held records, a replay's parsed
 * lines) are freed when written, but glibc returns free memory only from the top of a heap: the
 * free chunks among those still in use stay in the process, in the workers' arenas (where
 * audit_submit allocated) and the sink's. RSS then keeps the backlog's peak for good (issue 12:
 * 40 -> 125 MB after a stuck replay; the replay of that time parsed XREVRANGE replies of 20,000
 * entries, a few hundred thousand small allocations per step). alloc_release_free (malloc_trim,
 * or jemalloc's purge, which would otherwise wait for its decay time) releases the free pages of
 * every arena. It walks them under their locks, so it runs only after a backlog, when the sink is
 * idle again, and at most once per TRIM_MIN_US. */
static void sink_trim(struct audit *a, size_t n) {
    if (n >= SINK_BATCH || a->held || atomic_load(&a->state) == AUDIT_REPLAYING) {
        a->backlog = 1;
        return;
    }
    uint64_t now = clock_mono_us();
    if (!a->backlog || now - a->trimmed_us < TRIM_MIN_US) return;
    a->backlog = 0;
    a->trimmed_us = now;
    alloc_release_free();
}

void *audit_sink_main(void *arg) {
    struct audit *a = arg;
    struct audit_node *batch[SINK_BATCH];
    unsigned stop_retries = 0;
    /* the sink wakes every SINK_GATHER_US under load: it must not take a worker's core from it
     * in the middle of a request (a constant-rate run saw it do so ~90 times a second at 6,000
     * req/s); it runs when the worker waits, and gets its fair share when the core is full */
    thread_name("capgate-audit");
    (void)thread_background();
    if (a->cfg->redis) try_connect(a);
    for (;;) {
        int stopping = atomic_load(&a->stopping), retried;
        file_reopen(a);
        size_t n = collect(a, batch, SINK_BATCH, &retried);
        if (n > 0 && a->cfg->audit.commit_durable) audit_commit_note(a, batch, n);
        if (n > 0) handle_batch(a, batch, n, retried);
        if (n > 0 && a->cfg->audit.commit_durable) audit_commit_ack(a);
        atomic_store(&a->held_records, a->held_n);
        if (!a->holding != !a->held) {
            a->holding = a->held != NULL;
            if (a->holding)
                log_error("audit: the spool refuses records: %llu held in memory and retried; "
                          "the worker queues wait meanwhile and grow (capgate_audit_held_records, "
                          "capgate_audit_overflow_records)",
                          (unsigned long long)atomic_load(&a->held_records));
            else
                log_info("audit: the held records are written; the worker queues drain again");
        }
        sink_check_epoch(a);
        enum audit_state s = (enum audit_state)atomic_load(&a->state);
        if (s == AUDIT_SPOOLING && !stopping && clock_mono_us() >= a->next_connect_us)
            try_connect(a);
        for (int i = 0; i < REPLAY_STEPS && !stopping && atomic_load(&a->state) == AUDIT_REPLAYING;
             i++)
            replay_step(a);
        audit_sync_file_sync(a, &a->segment, 0);
        audit_sync_file_sync(a, &a->file, 0);
        sink_trim(a, n);
        if (stopping && n == 0 && !a->held)
            break; /* the workers stopped submitting before audit_free: all is written */
        if (stopping && a->held && ++stop_retries > STOP_RETRIES) break;
        if (a->held && atomic_load(&a->state) != AUDIT_REPLAYING) {
            struct timespec ts = {0, SINK_HELD_RETRY_US * 1000L};
            nanosleep(&ts, NULL);
        } else if (n < SINK_BATCH && atomic_load(&a->state) != AUDIT_REPLAYING) {
            sink_wait(a);
        }
    }
    if (a->held) audit_sink_last_resort(a);
    audit_spool_close_segment(a);
    if (a->file.fd >= 0 && a->cfg->audit.commit_durable) audit_sync_file_sync(a, &a->file, 1);
    audit_commit_release_all(a);
    if (a->replay_fp) {
        fclose(a->replay_fp);
        a->replay_fp = NULL;
    }
    if (a->file.fd >= 0 && a->file.unsynced == 0) a->file.unsynced = 1;
    audit_sync_file_sync(a, &a->file, 1);
    audit_sink_disconnect(a);
    set_state(a, AUDIT_STOPPED);
    return NULL;
}
