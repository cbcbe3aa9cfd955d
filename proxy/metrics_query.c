/* metrics_query.c: the read side, GET /admin/stats: query parsing, the JSON answer, and the
 * query thread (Redis, or this process's copy). Part of the metrics module (minute_stats.c). */
#include "metrics_internal.h"

/* ---- the read side: parsing and JSON (pure) ---- */

static int match_parse(const char *name, const char *v, enum metrics_match *m, uint32_t *id,
                       char *err, size_t errlen) {
    uint8_t has;
    if (metrics_id_parse(v, strlen(v), &has, id) != 0) {
        snprintf(err, errlen, "%s must be an unsigned 32-bit integer or \"-\"; got \"%.40s\"", name,
                 v);
        return -1;
    }
    *m = has ? METRICS_MATCH_ID : METRICS_MATCH_ABSENT;
    return 0;
}

static int seconds_parse(const char *name, const char *v, uint64_t *out, char *err, size_t errlen) {
    if (num_parse_range(v, strlen(v), 0, 253402300799ull, out) != 0) {
        snprintf(err, errlen, "%s must be unix seconds (an unsigned integer); got \"%.40s\"", name,
                 v);
        return -1;
    }
    return 0;
}

static const char *const group_names[] = {"scene", "business", "app", "none"};

int metrics_query_parse(const char *query_string, struct metrics_query *q, char *err,
                        size_t errlen) {
    struct params p;
    const char *v;
    int has_from = 0, has_to = 0, rc = -1, has_group = 0;
    uint64_t from = 0, to = 0;
    params_init(&p);
    memset(q, 0, sizeof(*q));
    q->step = 60;
    if (query_string &&
        params_parse_urlencoded(&p, query_string, strlen(query_string), err, errlen) != 0)
        goto out;
    for (size_t i = 0; i < p.count; i++) {
        const char *n = p.items[i].name;
        if (strcmp(n, "businessId") && strcmp(n, "sceneId") && strcmp(n, "from") &&
            strcmp(n, "to") && strcmp(n, "step") && strcmp(n, "app") && strcmp(n, "group") &&
            strcmp(n, "fill")) {
            snprintf(err, errlen,
                     "unknown parameter %.40s; use businessId, sceneId, app, group, fill, from, "
                     "to, step",
                     n);
            goto out;
        }
    }
    if ((v = params_get(&p, "businessId")) &&
        match_parse("businessId", v, &q->business_match, &q->business_id, err, errlen) != 0)
        goto out;
    if ((v = params_get(&p, "sceneId")) &&
        match_parse("sceneId", v, &q->scene_match, &q->scene_id, err, errlen) != 0)
        goto out;
    if ((v = params_get(&p, "app"))) {
        if (!metrics_app_name_ok(v, strlen(v))) {
            snprintf(err, errlen,
                     "app must be an app name (1 to %d bytes of A-Z, a-z, 0-9, '.', '_', '-'); "
                     "got \"%.40s\"",
                     CONFIG_NAME_MAX, v);
            goto out;
        }
        snprintf(q->app, sizeof(q->app), "%s", v);
    }
    if ((v = params_get(&p, "group"))) {
        unsigned g;
        for (g = 0; g < sizeof(group_names) / sizeof(group_names[0]); g++)
            if (strcmp(v, group_names[g]) == 0) break;
        if (g == sizeof(group_names) / sizeof(group_names[0])) {
            snprintf(err, errlen, "group must be business, scene, app or none; got \"%.40s\"", v);
            goto out;
        }
        q->group = (enum metrics_group)g;
        has_group = 1;
    }
    if ((v = params_get(&p, "fill"))) {
        if (strcmp(v, "zero") != 0 && strcmp(v, "none") != 0) {
            snprintf(err, errlen, "fill must be zero or none; got \"%.40s\"", v);
            goto out;
        }
        q->fill_none = strcmp(v, "none") == 0;
    }
    /* Counts are kept per (businessId, sceneId) and per app, not per both (Redis cost): a
     * question that needs both is refused rather than answered wrong. */
    if ((q->app[0] || q->group == METRICS_GROUP_APP) &&
        (q->business_match != METRICS_MATCH_ANY || q->scene_match != METRICS_MATCH_ANY)) {
        snprintf(err, errlen,
                 "%s cannot be combined with businessId or sceneId: counts are kept per "
                 "(businessId, sceneId) and per app, not per both",
                 q->app[0] ? "app" : "group=app");
        goto out;
    }
    if (q->app[0] && (q->group == METRICS_GROUP_SCENE || q->group == METRICS_GROUP_BUSINESS)) {
        if (has_group) {
            snprintf(err, errlen,
                     "app cannot be combined with group=%s: counts are kept per (businessId, "
                     "sceneId) and per app, not per both; use group=app or group=none",
                     group_names[q->group]);
            goto out;
        }
        q->group = METRICS_GROUP_APP; /* app= alone: that app's group */
    }
    q->by_app = q->app[0] || q->group == METRICS_GROUP_APP;
    if ((v = params_get(&p, "from"))) {
        if (seconds_parse("from", v, &from, err, errlen) != 0) goto out;
        has_from = 1;
    }
    if ((v = params_get(&p, "to"))) {
        if (seconds_parse("to", v, &to, err, errlen) != 0) goto out;
        has_to = 1;
    }
    if ((v = params_get(&p, "step")) &&
        (num_parse_u64(v, strlen(v), &q->step) != 0 || q->step == 0 || q->step % 60 != 0)) {
        snprintf(err, errlen, "step must be a positive multiple of 60 seconds; got \"%.40s\"", v);
        goto out;
    }
    if (!has_to) to = has_from ? from + 3600 : clock_wall_us() / 1000000u;
    if (!has_from) from = to >= 3600 ? to - 3600 : 0;
    /* compare what the caller asked for; alignment to whole minutes comes after */
    if (to <= from) {
        snprintf(err, errlen, "to must be later than from (from %" PRIu64 ", to %" PRIu64 ")", from,
                 to);
        goto out;
    }
    from -= from % 60;
    if ((to - from + q->step - 1) / q->step > METRICS_QUERY_MAX_STEPS) {
        snprintf(err, errlen,
                 "from..to spans %" PRIu64 " steps of %" PRIu64 " s; the limit is %d (raise step)",
                 (to - from + q->step - 1) / q->step, q->step, METRICS_QUERY_MAX_STEPS);
        goto out;
    }
    q->from = from;
    q->to = to;
    rc = 0;
out:
    params_cleanup(&p);
    return rc;
}

static int match_one(enum metrics_match m, uint32_t want, uint8_t has, uint32_t id) {
    if (m == METRICS_MATCH_ANY) return 1;
    if (m == METRICS_MATCH_ABSENT) return !has;
    return has && id == want;
}

int metrics_query_matches(const struct metrics_query *q, const struct metrics_key *k) {
    if (!k->is_app != !q->by_app) return 0;
    if (k->is_app && q->app[0] && strcmp(q->app, k->app) != 0) return 0;
    return match_one(q->business_match, q->business_id, k->has_business_id, k->business_id) &&
           match_one(q->scene_match, q->scene_id, k->has_scene_id, k->scene_id) &&
           k->minute * 60 >= q->from && k->minute * 60 < q->to;
}

/* One group of the reply: its totals and one cell per step. */
struct json_pair {
    struct metrics_key key; /* minute 0; the group's ids only */
    struct metrics_cell totals;
    struct metrics_cell *series;
};

struct json_build {
    const struct metrics_query *q;
    size_t n_steps;
    struct json_pair *pairs;
    size_t n_pairs, cap_pairs;
    struct json_pair all; /* every matching cell */
    int failed;
};

static int pair_cmp(const void *a, const void *b) {
    const struct metrics_key *x = &((const struct json_pair *)a)->key;
    const struct metrics_key *y = &((const struct json_pair *)b)->key;
    if (x->is_app) return strcmp(x->app, y->app);
    /* numbers ascending, absent ("-") last */
    if (x->has_business_id != y->has_business_id) return x->has_business_id ? -1 : 1;
    if (x->business_id != y->business_id) return x->business_id < y->business_id ? -1 : 1;
    if (x->has_scene_id != y->has_scene_id) return x->has_scene_id ? -1 : 1;
    if (x->scene_id != y->scene_id) return x->scene_id < y->scene_id ? -1 : 1;
    return 0;
}

/* The key of the group c falls in (minute 0). */
static void group_key(const struct metrics_query *q, const struct metrics_key *c,
                      struct metrics_key *g) {
    *g = *c;
    g->minute = 0;
    if (q->group == METRICS_GROUP_BUSINESS) {
        g->has_scene_id = 0;
        g->scene_id = 0;
    }
}

static int json_pair_add(struct json_pair *p, size_t n_steps, size_t step,
                         const struct metrics_cell *c) {
    if (!p->series && !(p->series = calloc(n_steps, sizeof(*p->series)))) return -1;
    return metrics_cell_merge(&p->totals, c) != 0 || metrics_cell_merge(&p->series[step], c) != 0
               ? -1
               : 0;
}

static void json_build_cell(const struct metrics_cell *c, void *arg) {
    struct json_build *jb = arg;
    struct json_pair *p = NULL;
    struct metrics_key pk;
    if (jb->failed || !metrics_query_matches(jb->q, &c->key)) return;
    size_t step = (size_t)((c->key.minute * 60 - jb->q->from) / jb->q->step);
    if (json_pair_add(&jb->all, jb->n_steps, step, c) != 0) goto fail;
    if (jb->q->group == METRICS_GROUP_NONE) return;
    group_key(jb->q, &c->key, &pk);
    for (size_t i = 0; i < jb->n_pairs && !p; i++)
        if (metrics_key_equal(&jb->pairs[i].key, &pk)) p = &jb->pairs[i];
    if (!p) {
        if (jb->n_pairs == jb->cap_pairs) {
            size_t cap = jb->cap_pairs ? jb->cap_pairs * 2 : 8;
            struct json_pair *pairs = realloc(jb->pairs, cap * sizeof(*pairs));
            if (!pairs) goto fail;
            jb->pairs = pairs;
            jb->cap_pairs = cap;
        }
        p = &jb->pairs[jb->n_pairs];
        memset(p, 0, sizeof(*p));
        p->key = pk;
        jb->n_pairs++;
    }
    if (json_pair_add(p, jb->n_steps, step, c) != 0) goto fail;
    return;
fail:
    jb->failed = 1;
}

static void json_set_field(const char *name, uint64_t value, void *arg) {
    json_object_set_new((json_t *)arg, name, json_integer((json_int_t)value));
}

static json_t *json_id(uint8_t has, uint32_t id) {
    return has ? json_integer(id) : json_string("-");
}

/* The fields of c as an object; ts first when has_ts. NULL on OOM. */
static json_t *json_cell(const struct metrics_cell *c, int all, int has_ts, uint64_t ts) {
    json_t *o = json_object();
    if (!o) return NULL;
    if (has_ts && json_object_set_new(o, "ts", json_integer((json_int_t)ts))) {
        json_decref(o);
        return NULL;
    }
    metrics_cell_foreach(c, all, json_set_field, o);
    return o;
}

struct json_fill {
    json_t *o;
    const struct metrics_cell *step;
};

static void json_fill_field(const char *name, uint64_t value, void *arg) {
    struct json_fill *f = arg;
    json_object_set_new(f->o, name, json_integer((json_int_t)metrics_cell_get(f->step, name)));
}

/* The series of p: with fill zero an entry per step holding the fields non-zero in p's totals
 * (zeros included, so every entry has the same keys); with fill none only the steps with
 * requests, their non-zero fields. NULL on OOM. */
static json_t *json_series(const struct metrics_query *q, const struct json_pair *p,
                           size_t n_steps) {
    json_t *series = json_array();
    static const struct metrics_cell empty;
    for (size_t s = 0; series && s < n_steps; s++) {
        const struct metrics_cell *c = p->series ? &p->series[s] : &empty;
        json_t *o;
        uint64_t ts = q->from + s * q->step;
        if (q->fill_none) {
            if (!c->requests) continue;
            o = json_cell(c, 0, 1, ts);
        } else if ((o = json_object()) &&
                   !json_object_set_new(o, "ts", json_integer((json_int_t)ts))) {
            struct json_fill f = {.o = o, .step = c};
            metrics_cell_foreach(&p->totals, 0, json_fill_field, &f);
        }
        if (json_array_append_new(series, o)) {
            json_decref(series);
            return NULL;
        }
    }
    return series;
}

/* The ids of a group, by q's grouping, into po. 0/-1. */
static int json_group_ids(const struct metrics_query *q, const struct metrics_key *k, json_t *po) {
    if (q->group == METRICS_GROUP_APP) return json_object_set_new(po, "app", json_string(k->app));
    if (json_object_set_new(po, "businessId", json_id(k->has_business_id, k->business_id)))
        return -1;
    if (q->group == METRICS_GROUP_BUSINESS) return 0;
    return json_object_set_new(po, "sceneId", json_id(k->has_scene_id, k->scene_id));
}

static void json_pair_cleanup(struct json_pair *p, size_t n_steps) {
    metrics_cell_cleanup(&p->totals);
    for (size_t s = 0; s < n_steps && p->series; s++) metrics_cell_cleanup(&p->series[s]);
    free(p->series);
}

char *metrics_query_json(const struct metrics_query *q, const struct metrics_batch *b,
                         const char *reason, uint64_t since) {
    struct json_build jb = {.q = q};
    json_t *root = NULL, *groups;
    char *text = NULL;
    jb.n_steps = (size_t)((q->to - q->from + q->step - 1) / q->step);
    metrics_batch_foreach(b, json_build_cell, &jb);
    if (jb.failed) goto out;
    if (jb.n_pairs) qsort(jb.pairs, jb.n_pairs, sizeof(*jb.pairs), pair_cmp);
    if (!(root = json_object())) goto out;
    groups = json_array();
    if (json_object_set_new(root, "from", json_integer((json_int_t)q->from)) ||
        json_object_set_new(root, "to", json_integer((json_int_t)q->to)) ||
        json_object_set_new(root, "step", json_integer((json_int_t)q->step)) ||
        json_object_set_new(root, "group", json_string(group_names[q->group])) ||
        json_object_set_new(root, "fill", json_string(q->fill_none ? "none" : "zero")) ||
        json_object_set_new(root, "partial", json_boolean(reason != NULL)))
        goto out;
    if (reason && (json_object_set_new(root, "reason", json_string(reason)) ||
                   json_object_set_new(root, "since", json_integer((json_int_t)since))))
        goto out;
    if (json_object_set_new(root, "groups", groups) || !groups) goto out;
    for (size_t i = 0; i < jb.n_pairs; i++) {
        struct json_pair *p = &jb.pairs[i];
        json_t *po = json_object();
        if (!po || json_array_append_new(groups, po) || json_group_ids(q, &p->key, po) ||
            json_object_set_new(po, "totals", json_cell(&p->totals, 1, 0, 0)) ||
            json_object_set_new(po, "series", json_series(q, p, jb.n_steps)))
            goto out;
    }
    if (json_object_set_new(root, "totals", json_cell(&jb.all.totals, 1, 0, 0)) ||
        json_object_set_new(root, "series", json_series(q, &jb.all, jb.n_steps)))
        goto out;
    text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
out:
    for (size_t i = 0; i < jb.n_pairs; i++) json_pair_cleanup(&jb.pairs[i], jb.n_steps);
    json_pair_cleanup(&jb.all, jb.n_steps);
    free(jb.pairs);
    json_decref(root);
    return text;
}

/* ---- the read side: the query thread ---- */

struct query_job {
    struct metrics *m;
    struct metrics_query q;
    char *json;
    int status;
};

static void query_error(struct query_job *j, int status, const char *msg) {
    json_t *o = json_pack("{ss}", "error", msg);
    free(j->json);
    j->json = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    j->status = status;
}

struct query_copy {
    const struct metrics_query *q;
    struct metrics_batch *out;
    int failed;
};

static void query_copy_cell(const struct metrics_cell *c, void *arg) {
    struct query_copy *qc = arg;
    struct metrics_cell *dst;
    if (qc->failed || !metrics_query_matches(qc->q, &c->key)) return;
    if (!(dst = metrics_batch_cell(qc->out, &c->key, SIZE_MAX)) || metrics_cell_merge(dst, c))
        qc->failed = 1;
}

/* Reads every hash of the pairs in the index that q selects into out. 0, or -1 with err. */
static int query_redis(struct metrics *m, const struct metrics_query *q, struct metrics_batch *out,
                       char *err, size_t errlen) {
    redisContext *c = metrics_redis_connect(m->redis, NULL, err, errlen);
    redisReply *members = NULL, *reply = NULL;
    struct metrics_key *keys = NULL;
    size_t n_keys = 0, plen = strlen(m->redis->prefix), keylen = plen + 128;
    char *keybuf = malloc(keylen);
    int rc = -1;
    uint64_t first = q->from / 60, last = (q->to + 59) / 60; /* minutes [first, last) */
    if (!c) goto out;
    if (!keybuf) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    snprintf(keybuf, keylen, "%sm:%s", m->redis->prefix, q->by_app ? "apps" : "index");
    members = redisCommand(c, "SMEMBERS %s", keybuf);
    if (!members || members->type != REDIS_REPLY_ARRAY) {
        snprintf(err, errlen, "redis: SMEMBERS %s failed: %s", keybuf,
                 members && members->type == REDIS_REPLY_ERROR ? members->str : c->errstr);
        goto out;
    }
    if (members->elements && !(keys = calloc(members->elements, sizeof(*keys)))) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < members->elements; i++) {
        struct metrics_key k;
        redisReply *e = members->element[i];
        if (e->type != REDIS_REPLY_STRING) continue;
        if (q->by_app) {
            memset(&k, 0, sizeof(k));
            if (!metrics_app_name_ok(e->str, e->len)) continue;
            k.is_app = 1;
            memcpy(k.app, e->str, e->len + 1);
        } else if (metrics_pair_parse(e->str, &k) != 0) {
            continue;
        }
        k.minute = first;
        if (metrics_query_matches(q, &k)) keys[n_keys++] = k;
    }
    /* one pipeline per pair: HGETALL of each minute in range */
    for (size_t i = 0; i < n_keys; i++) {
        for (uint64_t minute = first; minute < last; minute++) {
            keys[i].minute = minute;
            metrics_key_name(keybuf, keylen, m->redis->prefix, &keys[i]);
            if (redisAppendCommand(c, "HGETALL %s", keybuf) != REDIS_OK) goto conn_err;
        }
        for (uint64_t minute = first; minute < last; minute++) {
            if (redisGetReply(c, (void **)&reply) != REDIS_OK || !reply) goto conn_err;
            if (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 2) {
                struct metrics_cell *cell;
                keys[i].minute = minute;
                if (!(cell = metrics_batch_cell(out, &keys[i], SIZE_MAX))) {
                    snprintf(err, errlen, "out of memory");
                    goto out;
                }
                for (size_t f = 0; f + 1 < reply->elements; f += 2) {
                    uint64_t v;
                    redisReply *name = reply->element[f], *val = reply->element[f + 1];
                    if (name->type != REDIS_REPLY_STRING || val->type != REDIS_REPLY_STRING ||
                        num_parse_u64(val->str, val->len, &v) != 0)
                        continue;
                    metrics_cell_add_field(cell, name->str, v);
                }
            }
            freeReplyObject(reply);
            reply = NULL;
        }
    }
    rc = 0;
    goto out;
conn_err:
    snprintf(err, errlen, "redis %s: %s", redis_target_name(m->redis->target),
             c->err ? c->errstr : "out of memory");
out:
    if (reply) freeReplyObject(reply);
    if (members) freeReplyObject(members);
    if (c) redisFree(c);
    free(keys);
    free(keybuf);
    return rc;
}

/* On the query's own thread (redis_query_run): the JSON answer and its status. */
static char *query_work(void *arg, int *status) {
    struct query_job *j = arg;
    struct metrics *m = j->m;
    char err[256], reason[400];
    int partial = 0;
    uint64_t since = 0;
    struct metrics_batch *cells = metrics_batch_new();
    if (!cells) {
        query_error(j, 500, "out of memory");
    } else if (m->redis && query_redis(m, &j->q, cells, err, sizeof(err)) == 0) {
        /* the whole answer, every instance */
    } else {
        /* memory mode, or Redis cannot be read: this process's own counts */
        struct query_copy qc = {.q = &j->q, .out = cells};
        if (m->redis) {
            partial = 1;
            snprintf(reason, sizeof(reason),
                     "redis cannot be read (%s); counts are this process's own, other "
                     "instances are missing",
                     err);
            metrics_batch_clear(cells);
        }
        pthread_mutex_lock(&m->lock);
        metrics_batch_foreach(m->memory, query_copy_cell, &qc);
        since = m->memory_since;
        pthread_mutex_unlock(&m->lock);
        if (qc.failed) query_error(j, 500, "out of memory");
    }
    if (cells && !j->status) {
        j->json = metrics_query_json(&j->q, cells, partial ? reason : NULL, since);
        j->status = 200;
        if (!j->json) query_error(j, 500, "out of memory");
    }
    metrics_batch_free(cells);
    *status = j->status;
    char *json = j->json;
    j->json = NULL;
    return json;
}

void metrics_query(struct metrics *m, const struct metrics_query *q, struct event_base *reply_base,
                   void (*done)(const char *json, int http_status, void *arg), void *arg) {
    struct query_job *j = calloc(1, sizeof(*j));
    if (!j) {
        done("{\"error\":\"out of memory\"}", 500, arg);
        return;
    }
    j->m = m;
    j->q = *q;
    redis_query_run(&m->queries, reply_base, query_work, j, free, done, arg);
}
