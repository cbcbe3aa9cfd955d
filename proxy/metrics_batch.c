/* metrics_batch.c: the per-minute counters: names and keys, cells, the batches the workers add
 * to, and the workers' slots the flush thread takes them from. Part of the metrics module
 * (minute_stats.c). */
#include "metrics_internal.h"

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

int metrics_id_parse(const char *s, size_t len, uint8_t *has, uint32_t *id) {
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
    if (metrics_id_parse(s, (size_t)(colon - s), &k->has_business_id, &k->business_id) != 0)
        return -1;
    return metrics_id_parse(colon + 1, strlen(colon + 1), &k->has_scene_id, &k->scene_id);
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
    const char *app = r->app[0] ? r->app : "-";
    memcpy(k->app, app, strnlen(app, sizeof(k->app) - 1)); /* k is zeroed: NUL-terminated */
}

/* An app name as /admin/stats and the index take it: "-", or 1..CONFIG_NAME_MAX bytes of
 * [A-Za-z0-9._-] (what config.c allows). */
int metrics_app_name_ok(const char *s, size_t len) {
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
        if (!metrics_app_name_ok(name + 5, strlen(name + 5)) ||
            !(slot = cell_rule_slot(c, name + 5)))
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

int metrics_key_equal(const struct metrics_key *a, const struct metrics_key *b) {
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
    while (slots[i].used && !metrics_key_equal(&slots[i].cell.key, k)) i = (i + 1) & (cap - 1);
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

char metrics_slot_busy_marker;

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
struct metrics_batch *metrics_slot_take(struct metrics_slot *s) {
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

void metrics_slot_give_back(struct metrics_slot *s, struct metrics_batch *b) {
    struct metrics_batch *expect = NULL;
    metrics_batch_clear(b);
    if (!atomic_compare_exchange_strong_explicit(&s->spare, &expect, b, memory_order_acq_rel,
                                                 memory_order_relaxed))
        metrics_batch_free(b);
}
