/* minute_stats.c: per-(businessId, sceneId, minute) counters, behind /admin/stats. Workers fill
 * private batches; one flush thread collects them through lock-free slots and writes Redis (or
 * the in-memory tables); the read side runs on short-lived threads and hands its JSON back to
 * the caller's event loop.
 * Layout and contracts are in minute_stats.h. */
#include "minute_stats.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <openssl/rand.h>

#include "capgate/clock.h"
#include "capgate/log.h"
#include "capgate/num.h"
#include "capgate/params.h"
#include "capgate/secmem.h"
#include "capgate/thread.h"
#include "config.h"
#include "redis_fence.h"

/* ---- fields ---- */

static const uint64_t bucket_bounds_us[METRICS_BUCKETS - 1] = {1000,   5000,   10000,   50000,
                                                               100000, 500000, 1000000, 5000000};
static const char *const bucket_names[METRICS_BUCKETS] = {
    "le_1ms", "le_5ms", "le_10ms", "le_50ms", "le_100ms", "le_500ms", "le_1s", "le_5s", "le_inf"};

unsigned metrics_bucket_index(uint64_t latency_us) {
    unsigned i;
    for (i = 0; i < METRICS_BUCKETS - 1; i++)
        if (latency_us <= bucket_bounds_us[i]) return i;
    return METRICS_BUCKETS - 1;
}

const char *metrics_bucket_name(unsigned bucket) {
    return bucket < METRICS_BUCKETS ? bucket_names[bucket] : NULL;
}

static int id_name(char *out, size_t outlen, int has, uint32_t id) {
    return has ? snprintf(out, outlen, "%" PRIu32, id) : snprintf(out, outlen, "-");
}

int metrics_pair_name(char *out, size_t outlen, const struct metrics_key *k) {
    char b[16], s[16];
    if (k->is_app) {
        int n = snprintf(out, outlen, "%s", k->app);
        return n < 0 || (size_t)n >= outlen ? -1 : n;
    }
    id_name(b, sizeof(b), k->has_business_id, k->business_id);
    id_name(s, sizeof(s), k->has_scene_id, k->scene_id);
    int n = snprintf(out, outlen, "%s:%s", b, s);
    return n < 0 || (size_t)n >= outlen ? -1 : n;
}

int metrics_key_name(char *out, size_t outlen, const char *prefix, const struct metrics_key *k) {
    char pair[CONFIG_NAME_MAX + 8];
    metrics_pair_name(pair, sizeof(pair), k);
    int n = snprintf(out, outlen, "%sm:%s%s:%" PRIu64, prefix, k->is_app ? "app:" : "", pair,
                     k->minute);
    return n < 0 || (size_t)n >= outlen ? -1 : n;
}

static int id_parse(const char *s, size_t len, uint8_t *has, uint32_t *id) {
    if (len == 1 && s[0] == '-') {
        *has = 0;
        *id = 0;
        return 0;
    }
    if (num_parse_u32(s, len, id) != 0) return -1;
    *has = 1;
    return 0;
}

int metrics_pair_parse(const char *s, struct metrics_key *k) {
    const char *colon = strchr(s, ':');
    memset(k, 0, sizeof(*k));
    if (!colon) return -1;
    if (id_parse(s, (size_t)(colon - s), &k->has_business_id, &k->business_id) != 0) return -1;
    return id_parse(colon + 1, strlen(colon + 1), &k->has_scene_id, &k->scene_id);
}

void metrics_key_of(const struct pipeline_record *r, struct metrics_key *k) {
    memset(k, 0, sizeof(*k));
    k->minute = r->ts_us / 60000000u;
    k->has_business_id = r->has_business_id ? 1 : 0;
    k->business_id = r->has_business_id ? r->business_id : 0;
    k->has_scene_id = r->has_scene_id ? 1 : 0;
    k->scene_id = r->has_scene_id ? r->scene_id : 0;
}

void metrics_app_key_of(const struct pipeline_record *r, struct metrics_key *k) {
    memset(k, 0, sizeof(*k));
    k->minute = r->ts_us / 60000000u;
    k->is_app = 1;
    /* r->app is whole and bounded (config.h); "" before authentication */
    snprintf(k->app, sizeof(k->app), "%s", r->app[0] ? r->app : "-");
}

/* An app name as /admin/stats and the index take it: "-", or 1..CONFIG_NAME_MAX bytes of
 * [A-Za-z0-9._-] (what config.c allows). */
static int app_name_ok(const char *s, size_t len) {
    if (len == 0 || len > CONFIG_NAME_MAX) return 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

/* ---- cells ---- */

static uint64_t *cell_code_slot(struct metrics_cell *c, int code) {
    size_t lo = 0, hi = c->n_codes;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c->codes[mid].code < code)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < c->n_codes && c->codes[lo].code == code) return &c->codes[lo].n;
    if (c->n_codes == c->cap_codes) {
        size_t cap = c->cap_codes ? c->cap_codes * 2 : 4;
        struct metrics_code_count *codes = realloc(c->codes, cap * sizeof(*codes));
        if (!codes) return NULL;
        c->codes = codes;
        c->cap_codes = cap;
    }
    memmove(&c->codes[lo + 1], &c->codes[lo], (c->n_codes - lo) * sizeof(*c->codes));
    c->codes[lo].code = code;
    c->codes[lo].n = 0;
    c->n_codes++;
    return &c->codes[lo].n;
}

/* The slot of rule name in c, made (0) when absent; NULL on OOM. */
static uint64_t *cell_rule_slot(struct metrics_cell *c, const char *name) {
    size_t lo = 0, hi = c->n_rules;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (strcmp(c->rules[mid].name, name) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < c->n_rules && strcmp(c->rules[lo].name, name) == 0) return &c->rules[lo].n;
    if (c->n_rules == c->cap_rules) {
        size_t cap = c->cap_rules ? c->cap_rules * 2 : 2;
        struct metrics_rule_count *rules = realloc(c->rules, cap * sizeof(*rules));
        if (!rules) return NULL;
        c->rules = rules;
        c->cap_rules = cap;
    }
    memmove(&c->rules[lo + 1], &c->rules[lo], (c->n_rules - lo) * sizeof(*c->rules));
    snprintf(c->rules[lo].name, sizeof(c->rules[lo].name), "%s", name);
    c->rules[lo].n = 0;
    c->n_rules++;
    return &c->rules[lo].n;
}

void metrics_cell_foreach(const struct metrics_cell *c, int all,
                          void (*fn)(const char *name, uint64_t value, void *arg), void *arg) {
    char name[CONFIG_NAME_MAX + 8];
    if (all || c->requests) fn("requests", c->requests, arg);
    for (unsigned d = 0; d < PIPELINE_DECISION_COUNT; d++)
        if (all || c->decisions[d])
            fn(pipeline_decision_name((enum pipeline_decision)d), c->decisions[d], arg);
    for (size_t i = 0; i < c->n_codes; i++) {
        if (!all && !c->codes[i].n) continue;
        snprintf(name, sizeof(name), "code:%d", c->codes[i].code);
        fn(name, c->codes[i].n, arg);
    }
    for (size_t i = 0; i < c->n_rules; i++) {
        if (!all && !c->rules[i].n) continue;
        snprintf(name, sizeof(name), "rule:%s", c->rules[i].name);
        fn(name, c->rules[i].n, arg);
    }
    if (all || c->latency_us_sum) fn("latency_us_sum", c->latency_us_sum, arg);
    for (unsigned b = 0; b < METRICS_BUCKETS; b++)
        if (all || c->buckets[b]) fn(bucket_names[b], c->buckets[b], arg);
}

static int code_parse(const char *s, int *code) {
    int neg = s[0] == '-';
    uint32_t v;
    if (num_parse_u32(s + neg, strlen(s + neg), &v) != 0 || v > 2147483647u) return -1;
    *code = neg ? -(int)v : (int)v;
    return 0;
}

int metrics_cell_add_field(struct metrics_cell *c, const char *name, uint64_t value) {
    if (strcmp(name, "requests") == 0) {
        c->requests += value;
        return 0;
    }
    if (strcmp(name, "latency_us_sum") == 0) {
        c->latency_us_sum += value;
        return 0;
    }
    if (strncmp(name, "rule:", 5) == 0) {
        uint64_t *slot;
        if (!app_name_ok(name + 5, strlen(name + 5)) || !(slot = cell_rule_slot(c, name + 5)))
            return -1; /* rule names are app-name shaped (config.c FK_NAME) */
        *slot += value;
        return 0;
    }
    if (strncmp(name, "code:", 5) == 0) {
        int code;
        uint64_t *slot;
        if (code_parse(name + 5, &code) != 0 || !(slot = cell_code_slot(c, code))) return -1;
        *slot += value;
        return 0;
    }
    for (unsigned d = 0; d < PIPELINE_DECISION_COUNT; d++) {
        if (strcmp(name, pipeline_decision_name((enum pipeline_decision)d)) == 0) {
            c->decisions[d] += value;
            return 0;
        }
    }
    for (unsigned b = 0; b < METRICS_BUCKETS; b++) {
        if (strcmp(name, bucket_names[b]) == 0) {
            c->buckets[b] += value;
            return 0;
        }
    }
    return -1;
}

uint64_t metrics_cell_get(const struct metrics_cell *c, const char *name) {
    if (strcmp(name, "requests") == 0) return c->requests;
    if (strcmp(name, "latency_us_sum") == 0) return c->latency_us_sum;
    if (strncmp(name, "code:", 5) == 0) {
        int code;
        if (code_parse(name + 5, &code) != 0) return 0;
        for (size_t i = 0; i < c->n_codes; i++)
            if (c->codes[i].code == code) return c->codes[i].n;
        return 0;
    }
    if (strncmp(name, "rule:", 5) == 0) {
        for (size_t i = 0; i < c->n_rules; i++)
            if (strcmp(c->rules[i].name, name + 5) == 0) return c->rules[i].n;
        return 0;
    }
    for (unsigned d = 0; d < PIPELINE_DECISION_COUNT; d++)
        if (strcmp(name, pipeline_decision_name((enum pipeline_decision)d)) == 0)
            return c->decisions[d];
    for (unsigned b = 0; b < METRICS_BUCKETS; b++)
        if (strcmp(name, bucket_names[b]) == 0) return c->buckets[b];
    return 0;
}

int metrics_cell_merge(struct metrics_cell *dst, const struct metrics_cell *src) {
    dst->requests += src->requests;
    for (unsigned d = 0; d < PIPELINE_DECISION_COUNT; d++) dst->decisions[d] += src->decisions[d];
    dst->latency_us_sum += src->latency_us_sum;
    for (unsigned b = 0; b < METRICS_BUCKETS; b++) dst->buckets[b] += src->buckets[b];
    for (size_t i = 0; i < src->n_codes; i++) {
        uint64_t *slot = cell_code_slot(dst, src->codes[i].code);
        if (!slot) return -1;
        *slot += src->codes[i].n;
    }
    for (size_t i = 0; i < src->n_rules; i++) {
        uint64_t *slot = cell_rule_slot(dst, src->rules[i].name);
        if (!slot) return -1;
        *slot += src->rules[i].n;
    }
    return 0;
}

void metrics_cell_cleanup(struct metrics_cell *c) {
    free(c->codes);
    free(c->rules);
    memset(c, 0, sizeof(*c));
}

static int cell_add_record(struct metrics_cell *c, const struct pipeline_record *r) {
    if (!r->no_code) { /* a reply without an API code is in no code:<N> field */
        uint64_t *slot = cell_code_slot(c, r->code);
        if (!slot) return -1;
        (*slot)++;
    }
    if (r->rule[0] && (r->decision == PIPELINE_LIMITED || r->decision == PIPELINE_SHADOW_LIMITED)) {
        uint64_t *slot = cell_rule_slot(c, r->rule);
        if (!slot) return -1;
        (*slot)++;
    }
    c->requests++;
    if ((unsigned)r->decision < PIPELINE_DECISION_COUNT) c->decisions[r->decision]++;
    c->latency_us_sum += r->latency_us;
    c->buckets[metrics_bucket_index(r->latency_us)]++;
    return 0;
}

/* ---- batches: open addressing, linear probing, power-of-two tables ---- */

struct batch_slot {
    int used;
    struct metrics_cell cell;
};

struct metrics_batch {
    struct batch_slot *slots;
    size_t cap; /* power of two, or 0 */
    size_t count;
};

static uint64_t key_hash(const struct metrics_key *k) {
    uint64_t h = k->minute * 0x9E3779B97F4A7C15ull;
    h ^= ((uint64_t)k->business_id << 32 | k->scene_id) + 0x632BE59BD9B4E019ull + (h << 6) +
         (h >> 2);
    h ^= (uint64_t)(k->has_business_id | k->has_scene_id << 1 | k->is_app << 2) *
         0xBF58476D1CE4E5B9ull;
    if (k->is_app) /* FNV-1a of the name */
        for (const unsigned char *p = (const unsigned char *)k->app; *p; p++)
            h = (h ^ *p) * 0x100000001B3ull;
    h ^= h >> 31;
    h *= 0x94D049BB133111EBull;
    return h ^ (h >> 29);
}

static int key_equal(const struct metrics_key *a, const struct metrics_key *b) {
    return a->minute == b->minute && a->business_id == b->business_id &&
           a->scene_id == b->scene_id && a->has_business_id == b->has_business_id &&
           a->has_scene_id == b->has_scene_id && a->is_app == b->is_app &&
           (!a->is_app || strcmp(a->app, b->app) == 0);
}

struct metrics_batch *metrics_batch_new(void) {
    return calloc(1, sizeof(struct metrics_batch));
}

void metrics_batch_clear(struct metrics_batch *b) {
    for (size_t i = 0; i < b->cap; i++) {
        if (b->slots[i].used) metrics_cell_cleanup(&b->slots[i].cell);
        b->slots[i].used = 0;
    }
    b->count = 0;
}

void metrics_batch_free(struct metrics_batch *b) {
    if (!b) return;
    metrics_batch_clear(b);
    free(b->slots);
    free(b);
}

size_t metrics_batch_count(const struct metrics_batch *b) {
    return b->count;
}

static struct batch_slot *batch_probe(struct batch_slot *slots, size_t cap,
                                      const struct metrics_key *k) {
    size_t i = (size_t)key_hash(k) & (cap - 1);
    while (slots[i].used && !key_equal(&slots[i].cell.key, k)) i = (i + 1) & (cap - 1);
    return &slots[i];
}

static int batch_grow(struct metrics_batch *b) {
    size_t cap = b->cap ? b->cap * 2 : 16;
    struct batch_slot *slots = calloc(cap, sizeof(*slots));
    if (!slots) return -1;
    for (size_t i = 0; i < b->cap; i++)
        if (b->slots[i].used) *batch_probe(slots, cap, &b->slots[i].cell.key) = b->slots[i];
    free(b->slots);
    b->slots = slots;
    b->cap = cap;
    return 0;
}

const struct metrics_cell *metrics_batch_find(const struct metrics_batch *b,
                                              const struct metrics_key *k) {
    if (!b->cap) return NULL;
    struct batch_slot *s = batch_probe(b->slots, b->cap, k);
    return s->used ? &s->cell : NULL;
}

struct metrics_cell *metrics_batch_cell(struct metrics_batch *b, const struct metrics_key *k,
                                        size_t max_keys) {
    struct batch_slot *s;
    if (b->cap) {
        s = batch_probe(b->slots, b->cap, k);
        if (s->used) return &s->cell;
    }
    if (b->count >= max_keys) return NULL;
    if ((b->count + 1) * 4 > b->cap * 3 && batch_grow(b) != 0) return NULL;
    s = batch_probe(b->slots, b->cap, k);
    memset(s, 0, sizeof(*s));
    s->used = 1;
    s->cell.key = *k;
    b->count++;
    return &s->cell;
}

int metrics_batch_add(struct metrics_batch *b, const struct pipeline_record *r, size_t max_keys) {
    struct metrics_key k;
    metrics_key_of(r, &k);
    struct metrics_cell *c = metrics_batch_cell(b, &k, max_keys);
    return c ? cell_add_record(c, r) : -1;
}

int metrics_batch_add_app(struct metrics_batch *b, const struct pipeline_record *r,
                          size_t max_keys) {
    struct metrics_key k;
    metrics_app_key_of(r, &k);
    struct metrics_cell *c = metrics_batch_cell(b, &k, max_keys);
    return c ? cell_add_record(c, r) : -1;
}

int metrics_batch_merge(struct metrics_batch *dst, const struct metrics_batch *src) {
    for (size_t i = 0; i < src->cap; i++) {
        if (!src->slots[i].used) continue;
        struct metrics_cell *c = metrics_batch_cell(dst, &src->slots[i].cell.key, SIZE_MAX);
        if (!c || metrics_cell_merge(c, &src->slots[i].cell) != 0) return -1;
    }
    return 0;
}

void metrics_batch_foreach(const struct metrics_batch *b,
                           void (*fn)(const struct metrics_cell *c, void *arg), void *arg) {
    for (size_t i = 0; i < b->cap; i++)
        if (b->slots[i].used) fn(&b->slots[i].cell, arg);
}

/* Removes every cell whose minute is below cut; the table is rebuilt in place so probing
 * chains stay intact. Returns the keys removed and adds their requests to *requests. */
static size_t batch_drop_before(struct metrics_batch *b, uint64_t cut, uint64_t *requests) {
    size_t dropped = 0;
    struct batch_slot *old = b->slots;
    size_t cap = b->cap;
    if (!cap) return 0;
    struct batch_slot *slots = calloc(cap, sizeof(*slots));
    if (!slots) {
        /* no memory for a new table: drop everything rather than exceed the bound */
        for (size_t i = 0; i < cap; i++) {
            if (!old[i].used) continue;
            if (!old[i].cell.key.is_app) *requests += old[i].cell.requests; /* once per request */
            dropped++;
        }
        metrics_batch_clear(b);
        return dropped;
    }
    for (size_t i = 0; i < cap; i++) {
        if (!old[i].used) continue;
        if (old[i].cell.key.minute < cut) {
            if (!old[i].cell.key.is_app) *requests += old[i].cell.requests;
            metrics_cell_cleanup(&old[i].cell);
            dropped++;
        } else {
            *batch_probe(slots, cap, &old[i].cell.key) = old[i];
        }
    }
    free(old);
    b->slots = slots;
    b->count -= dropped;
    return dropped;
}

size_t metrics_batch_trim(struct metrics_batch *b, size_t max_keys, uint64_t min_minute,
                          uint64_t *requests) {
    uint64_t reqs = 0;
    size_t dropped = 0;
    if (min_minute > 0) dropped += batch_drop_before(b, min_minute, &reqs);
    while (b->count > max_keys) {
        uint64_t oldest = UINT64_MAX;
        for (size_t i = 0; i < b->cap; i++)
            if (b->slots[i].used && b->slots[i].cell.key.minute < oldest)
                oldest = b->slots[i].cell.key.minute;
        dropped += batch_drop_before(b, oldest + 1, &reqs);
    }
    if (requests) *requests = reqs;
    return dropped;
}

/* ---- the read side: parsing and JSON (pure) ---- */

static int match_parse(const char *name, const char *v, enum metrics_match *m, uint32_t *id,
                       char *err, size_t errlen) {
    uint8_t has;
    if (id_parse(v, strlen(v), &has, id) != 0) {
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
        if (!app_name_ok(v, strlen(v))) {
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
        if (key_equal(&jb->pairs[i].key, &pk)) p = &jb->pairs[i];
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

/* ---- the worker slots ----
 * Each worker owns one slot. `active` holds the worker's current batch, NULL once the flush
 * thread took it, or SLOT_BUSY while the worker is adding to it. The worker swaps SLOT_BUSY in,
 * adds, and stores the batch back; the flush thread takes a batch only with a compare-exchange
 * from a real batch pointer to NULL, so exactly one side owns a batch at any time. Emptied
 * batches come back through `spare` so a worker rarely allocates. */

static char slot_busy_marker;
#define SLOT_BUSY ((struct metrics_batch *)(void *)&slot_busy_marker)

struct metrics_slot {
    _Atomic(struct metrics_batch *) active;
    _Atomic(struct metrics_batch *) spare;
    atomic_uint_fast64_t dropped_keys, dropped_requests;
    char pad[64];
};

/* The settings copied from the config. */
struct metrics_redis {
    char *host;
    int port;
    unsigned db;
    char *password;
    unsigned timeout_ms;
    char *prefix;
};

struct metrics {
    unsigned flush_ms;
    uint64_t retention_s;
    struct metrics_redis *redis; /* NULL: memory mode */
    struct metrics_slot *slots;
    unsigned n_slots;

    pthread_t thread;
    int thread_started;
    pthread_mutex_t lock;   /* guards the fields below and the memory tables */
    pthread_cond_t wake;    /* flush thread: stop or a flush request */
    pthread_cond_t flushed; /* metrics_flush waiters; also query completions */
    int stop;
    uint64_t flush_requested, flush_done;
    unsigned queries_running;

    /* flush thread only */
    struct metrics_batch *pending; /* Redis mode: merged sums not yet written */
    redisContext *conn;
    /* Flush batches are numbered per process (run_id, batch_seq); each one's MULTI/EXEC also sets
     * batch_key to its number, so whether a batch whose EXEC reply never came landed is one GET
     * (after fencing the connection it went on), whatever the history. */
    char run_id[17];
    char *batch_key;              /* <prefix>m:batch:<run_id> */
    uint64_t batch_seq;           /* the last batch sent */
    struct metrics_batch *unsure; /* batch unsure_seq: sent, EXEC unanswered; NULL none */
    uint64_t unsure_seq;
    struct redis_fence client; /* m->conn's CLIENT ID and address */
    struct redis_fence lost;   /* the connection unsure went on, to kill; id -1 none */
    /* memory mode: the tables; Redis mode: this process's own copy of what it counted (the
     * partial answers while Redis cannot be read). Under lock. */
    struct metrics_batch *memory;
    uint64_t memory_pruned_minute;
    uint64_t memory_since; /* unix seconds: memory holds every count from then on */

    atomic_uint_fast64_t flushes, flush_errors, pending_keys, dropped_keys, dropped_requests;
};

void metrics_record(struct metrics *m, unsigned worker, const struct pipeline_record *r) {
    if (worker >= m->n_slots) {
        atomic_fetch_add_explicit(&m->dropped_requests, 1, memory_order_relaxed);
        return;
    }
    struct metrics_slot *s = &m->slots[worker];
    struct metrics_batch *b = atomic_exchange_explicit(&s->active, SLOT_BUSY, memory_order_acquire);
    if (!b) b = atomic_exchange_explicit(&s->spare, NULL, memory_order_acquire);
    if (!b) b = metrics_batch_new();
    /* the pair's cell and the app's: either one alone would leave its dimension short */
    if (!b || metrics_batch_add(b, r, METRICS_BATCH_MAX_KEYS) != 0 ||
        metrics_batch_add_app(b, r, METRICS_BATCH_MAX_KEYS) != 0) {
        if (!b || metrics_batch_count(b) >= METRICS_BATCH_MAX_KEYS)
            atomic_fetch_add_explicit(&s->dropped_keys, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->dropped_requests, 1, memory_order_relaxed);
    }
    atomic_store_explicit(&s->active, b, memory_order_release);
}

/* Takes a worker's batch, or NULL when it has none (or stays busy for a while: it is then
 * taken at the next flush). */
static struct metrics_batch *slot_take(struct metrics_slot *s) {
    for (int tries = 0; tries < 1000; tries++) {
        struct metrics_batch *b = atomic_load_explicit(&s->active, memory_order_acquire);
        if (!b) return NULL;
        if (b == SLOT_BUSY) {
            sched_yield();
            continue;
        }
        if (atomic_compare_exchange_weak_explicit(&s->active, &b, NULL, memory_order_acq_rel,
                                                  memory_order_acquire))
            return b;
    }
    return NULL;
}

static void slot_give_back(struct metrics_slot *s, struct metrics_batch *b) {
    struct metrics_batch *expect = NULL;
    metrics_batch_clear(b);
    if (!atomic_compare_exchange_strong_explicit(&s->spare, &expect, b, memory_order_acq_rel,
                                                 memory_order_relaxed))
        metrics_batch_free(b);
}

/* ---- Redis ---- */

static redisContext *redis_connect(const struct metrics_redis *cfg, char *err, size_t errlen) {
    struct timeval tv = {cfg->timeout_ms / 1000, (long)(cfg->timeout_ms % 1000) * 1000};
    redisReply *reply = NULL;
    redisContext *c = redisConnectWithTimeout(cfg->host, cfg->port, tv);
    if (!c || c->err) {
        snprintf(err, errlen, "redis %s:%d: %s", cfg->host, cfg->port,
                 c ? c->errstr : "out of memory");
        goto fail;
    }
    if (redisSetTimeout(c, tv) != REDIS_OK) {
        snprintf(err, errlen, "redis %s:%d: cannot set the timeout", cfg->host, cfg->port);
        goto fail;
    }
    if (cfg->password) {
        reply = redisCommand(c, "AUTH %s", cfg->password);
        if (!reply || reply->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "redis %s:%d: AUTH failed: %s", cfg->host, cfg->port,
                     reply ? reply->str : c->errstr);
            goto fail;
        }
        freeReplyObject(reply);
        reply = NULL;
    }
    if (cfg->db) {
        reply = redisCommand(c, "SELECT %u", cfg->db);
        if (!reply || reply->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "redis %s:%d: SELECT %u failed: %s", cfg->host, cfg->port,
                     cfg->db, reply ? reply->str : c->errstr);
            goto fail;
        }
        freeReplyObject(reply);
    }
    return c;
fail:
    if (reply) freeReplyObject(reply);
    if (c) redisFree(c);
    return NULL;
}

/* A connection, made if needed: the connection of an unanswered batch is killed first (so the
 * GET of the batch key that follows is final), then this one's client id is learnt. */
static int conn_ensure(struct metrics *m, char *err, size_t errlen) {
    if (m->conn && !m->conn->err) return 0;
    if (m->conn) redisFree(m->conn);
    if (!(m->conn = redis_connect(m->redis, err, errlen))) return -1;
    if (redis_fence_kill(m->conn, &m->lost, "metrics") != 0) {
        snprintf(err, errlen, "redis %s:%d: CLIENT KILL of the lost connection: no answer",
                 m->redis->host, m->redis->port);
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
    snprintf(err, errlen, "redis %s:%d: %s", m->redis->host, m->redis->port,
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
        struct metrics_batch *b = slot_take(&m->slots[i]);
        if (!b) continue;
        if (metrics_batch_count(b)) have = 1;
        if (metrics_batch_merge(m->pending, b) != 0) {
            atomic_fetch_add_explicit(&m->dropped_keys, metrics_batch_count(b),
                                      memory_order_relaxed);
            log_warn("metrics: out of memory while merging a batch; its counts are lost");
        }
        if (m->redis && metrics_batch_count(b)) local_add(m, b, keep_from);
        slot_give_back(&m->slots[i], b);
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

static void *flush_main(void *arg) {
    struct metrics *m = arg;
    struct timespec deadline;
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

/* ---- lifecycle ---- */

static void redis_cfg_free(struct metrics_redis *r) {
    if (!r) return;
    free(r->host);
    secmem_free(r->password); /* wiped */
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
        m->redis->port = cr->port;
        m->redis->db = cr->db;
        m->redis->timeout_ms = cr->timeout_ms ? cr->timeout_ms : 100;
        if (!(m->redis->host = strdup(cr->host ? cr->host : "127.0.0.1")) ||
            !(m->redis->prefix = strdup(cr->key_prefix ? cr->key_prefix : "capgate:")) ||
            (cr->password && !(m->redis->password = secmem_strdup(cr->password))))
            goto oom;
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
    if (thread_start(&m->thread, NULL, flush_main, m) != 0) {
        snprintf(err, errlen, "metrics: cannot start the flush thread");
        goto fail;
    }
    m->thread_started = 1;
    return m;
oom:
    snprintf(err, errlen, "metrics: out of memory");
fail:
    if (m) {
        if (flushed_init) pthread_cond_destroy(&m->flushed);
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
    pthread_mutex_lock(&m->lock);
    while (m->queries_running) pthread_cond_wait(&m->flushed, &m->lock);
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

/* ---- the read side: the query thread ---- */

struct query_job {
    struct metrics *m;
    struct metrics_query q;
    struct event *ev; /* on reply_base; activated once the reply is ready */
    void (*done)(const char *json, int http_status, void *arg);
    void *arg;
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
    redisContext *c = redis_connect(m->redis, err, errlen);
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
            if (!app_name_ok(e->str, e->len)) continue;
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
    snprintf(err, errlen, "redis %s:%d: %s", m->redis->host, m->redis->port,
             c->err ? c->errstr : "out of memory");
out:
    if (reply) freeReplyObject(reply);
    if (members) freeReplyObject(members);
    if (c) redisFree(c);
    free(keys);
    free(keybuf);
    return rc;
}

static void *query_main(void *arg) {
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
    /* after this the job belongs to reply_base's loop; m must not be touched by the job */
    pthread_mutex_lock(&m->lock);
    m->queries_running--;
    pthread_cond_broadcast(&m->flushed);
    event_active(j->ev, EV_TIMEOUT, 0);
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

static void query_deliver(evutil_socket_t fd, short what, void *arg) {
    struct query_job *j = arg;
    const char *fallback = "{\"error\":\"out of memory\"}";
    j->done(j->json ? j->json : fallback, j->json ? j->status : 500, j->arg);
    event_free(j->ev);
    free(j->json);
    free(j);
}

void metrics_query(struct metrics *m, const struct metrics_query *q, struct event_base *reply_base,
                   void (*done)(const char *json, int http_status, void *arg), void *arg) {
    pthread_t t;
    pthread_attr_t attr;
    int started = 0;
    struct query_job *j = calloc(1, sizeof(*j));
    if (!j || !(j->ev = event_new(reply_base, -1, 0, query_deliver, j))) {
        /* nothing can carry the reply to the loop later: answer now */
        free(j);
        done("{\"error\":\"out of memory\"}", 500, arg);
        return;
    }
    j->m = m;
    j->q = *q;
    j->done = done;
    j->arg = arg;
    pthread_mutex_lock(&m->lock);
    m->queries_running++;
    pthread_mutex_unlock(&m->lock);
    if (pthread_attr_init(&attr) == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        started = thread_start(&t, &attr, query_main, j) == 0;
        pthread_attr_destroy(&attr);
    }
    if (!started) {
        pthread_mutex_lock(&m->lock);
        m->queries_running--;
        pthread_cond_broadcast(&m->flushed);
        pthread_mutex_unlock(&m->lock);
        query_error(j, 503, "cannot start a query thread");
        event_active(j->ev, EV_TIMEOUT, 0);
    }
}
