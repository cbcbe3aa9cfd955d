/* store_memory.c: rate-limit buckets held in this process, shared by all its workers. The table is
 * split into stripes, each a chained hash table under its own mutex; a request locks the stripes
 * its buckets fall in, in ascending order (so two requests never wait on each other in a cycle),
 * decides with limit_decide and writes only when the whole request is admitted. Buckets whose TAT
 * is in the past by more than their tolerance are dropped a few chains per request, round-robin
 * over the table, and whole stripes are swept before they grow.
 * The prefetch pool is a ring of URLs per profile key under one mutex (a handful of profiles,
 * critical sections of a pointer move); idempotency records live in a chained table under one
 * mutex, expired records dropped a few chains per call. */
#include "store_backend.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/rand.h>

#include "capgate/clock.h"

#define STORE_MEMORY_STRIPES 64    /* power of two */
#define STORE_MEMORY_MIN_CHAINS 16 /* per stripe, power of two */
#define STORE_MEMORY_SWEEP_STEP 4  /* chains checked for expired buckets per request */

struct store_memory_entry {
    struct store_memory_entry *next;
    uint64_t hash;
    uint64_t tat_us;
    uint64_t tolerance_us;
    char key[];
};

struct store_memory_stripe {
    pthread_mutex_t lock;
    struct store_memory_entry **chains;
    size_t n_chains;
    size_t count;
    size_t sweep; /* next chain to check for expired buckets */
};

#define STORE_MEMORY_IDEM_CHAINS 1024 /* initial chains, power of two; doubles as records pile up */
#define STORE_MEMORY_IDEM_SWEEP 4

struct store_memory_url {
    uint64_t created_ms;
    char *url;
};

struct store_memory_pool {
    struct store_memory_pool *next;
    struct store_memory_url *ring;
    size_t cap, head, count; /* entries ring[head], ring[head+1], ... (mod cap) */
    char key[];
};

struct store_memory_idem {
    struct store_memory_idem *next;
    uint64_t hash;
    uint64_t expires_ms;
    int done;
    char fp[STORE_IDEM_FP_LEN + 1];
    char *body;
    size_t body_len;
    char key[];
};

struct store_memory {
    struct store_memory_stripe stripes[STORE_MEMORY_STRIPES];
    uint64_t seed;
    atomic_uint sweep_stripe; /* the stripe the next request sweeps */
    pthread_mutex_t pool_lock;
    struct store_memory_pool *pools;
    pthread_mutex_t idem_lock;
    struct store_memory_idem **idem; /* idem_chains chains (power of two) */
    size_t idem_chains;
    size_t idem_count, idem_sweep;
};

static uint64_t store_memory_hash(const struct store_memory *m, const char *key) {
    uint64_t h = 0xcbf29ce484222325ULL ^ m->seed;
    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        h ^= *p;
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 31;
    h *= 0x94d049bb133111ebULL;
    h ^= h >> 29;
    return h;
}

static unsigned store_memory_stripe_of(uint64_t hash) {
    return (unsigned)(hash >> 58) & (STORE_MEMORY_STRIPES - 1);
}

struct store_memory *store_memory_new(void) {
    struct store_memory *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    if (RAND_bytes((unsigned char *)&m->seed, sizeof m->seed) != 1) m->seed = 0x9e3779b97f4a7c15ULL;
    pthread_mutex_init(&m->pool_lock, NULL);
    pthread_mutex_init(&m->idem_lock, NULL);
    for (unsigned i = 0; i < STORE_MEMORY_STRIPES; i++) {
        struct store_memory_stripe *st = &m->stripes[i];
        pthread_mutex_init(&st->lock, NULL);
        if (!(st->chains = calloc(STORE_MEMORY_MIN_CHAINS, sizeof *st->chains))) {
            store_memory_free(m);
            return NULL;
        }
        st->n_chains = STORE_MEMORY_MIN_CHAINS;
    }
    if (!(m->idem = calloc(STORE_MEMORY_IDEM_CHAINS, sizeof *m->idem))) {
        store_memory_free(m);
        return NULL;
    }
    m->idem_chains = STORE_MEMORY_IDEM_CHAINS;
    return m;
}

void store_memory_free(struct store_memory *m) {
    if (!m) return;
    for (unsigned i = 0; i < STORE_MEMORY_STRIPES; i++) {
        struct store_memory_stripe *st = &m->stripes[i];
        for (size_t c = 0; st->chains && c < st->n_chains; c++) {
            struct store_memory_entry *e = st->chains[c];
            while (e) {
                struct store_memory_entry *next = e->next;
                free(e);
                e = next;
            }
        }
        free(st->chains);
        pthread_mutex_destroy(&st->lock);
    }
    while (m->pools) {
        struct store_memory_pool *p = m->pools;
        m->pools = p->next;
        for (size_t i = 0; i < p->count; i++) free(p->ring[(p->head + i) % p->cap].url);
        free(p->ring);
        free(p);
    }
    for (size_t c = 0; m->idem && c < m->idem_chains; c++) {
        while (m->idem[c]) {
            struct store_memory_idem *e = m->idem[c];
            m->idem[c] = e->next;
            free(e->body);
            free(e);
        }
    }
    free(m->idem);
    pthread_mutex_destroy(&m->pool_lock);
    pthread_mutex_destroy(&m->idem_lock);
    free(m);
}

static int store_memory_expired(const struct store_memory_entry *e, uint64_t now_us) {
    return e->tat_us + e->tolerance_us < now_us;
}

static void store_memory_sweep_chain(struct store_memory_stripe *st, size_t c, uint64_t now_us) {
    struct store_memory_entry **pp = &st->chains[c];
    while (*pp) {
        struct store_memory_entry *e = *pp;
        if (store_memory_expired(e, now_us)) {
            *pp = e->next;
            free(e);
            st->count--;
        } else {
            pp = &e->next;
        }
    }
}

/* Sweeps the whole stripe, then doubles its chains if it is still crowded (on OOM it stays). */
static void store_memory_grow(struct store_memory_stripe *st, uint64_t now_us) {
    struct store_memory_entry **chains;
    size_t n;
    for (size_t c = 0; c < st->n_chains; c++) store_memory_sweep_chain(st, c, now_us);
    if (st->count <= st->n_chains * 2) return;
    n = st->n_chains * 2;
    if (!(chains = calloc(n, sizeof *chains))) return;
    for (size_t c = 0; c < st->n_chains; c++) {
        struct store_memory_entry *e = st->chains[c];
        while (e) {
            struct store_memory_entry *next = e->next;
            size_t at = (size_t)e->hash & (n - 1);
            e->next = chains[at];
            chains[at] = e;
            e = next;
        }
    }
    free(st->chains);
    st->chains = chains;
    st->n_chains = n;
    st->sweep = 0;
}

static struct store_memory_entry *store_memory_find(struct store_memory_stripe *st, uint64_t hash,
                                                    const char *key) {
    for (struct store_memory_entry *e = st->chains[(size_t)hash & (st->n_chains - 1)]; e;
         e = e->next)
        if (e->hash == hash && strcmp(e->key, key) == 0) return e;
    return NULL;
}

static void store_memory_put(struct store_memory_stripe *st, uint64_t hash, const char *key,
                             uint64_t tat_us, uint64_t tolerance_us, uint64_t now_us) {
    struct store_memory_entry *e = store_memory_find(st, hash, key);
    size_t len;
    if (!e) {
        if (st->count >= st->n_chains * 2) store_memory_grow(st, now_us);
        len = strlen(key);
        /* without memory the bucket goes unrecorded: the request was admitted either way */
        if (!(e = malloc(sizeof *e + len + 1))) return;
        memcpy(e->key, key, len + 1);
        e->hash = hash;
        e->next = st->chains[(size_t)hash & (st->n_chains - 1)];
        st->chains[(size_t)hash & (st->n_chains - 1)] = e;
        st->count++;
    }
    e->tat_us = tat_us;
    e->tolerance_us = tolerance_us;
}

void store_memory_check(struct store_memory *m, const struct limit_bucket *b, size_t n,
                        uint64_t now_us, struct limit_outcome *o) {
    uint64_t hash[LIMIT_MAX_BUCKETS], tat[LIMIT_MAX_BUCKETS] = {0};
    uint64_t new_tat[LIMIT_MAX_BUCKETS] = {0};
    unsigned order[LIMIT_MAX_BUCKETS];
    size_t n_stripes = 0;
    if (n > LIMIT_MAX_BUCKETS) n = LIMIT_MAX_BUCKETS;

    /* the distinct stripes, sorted ascending: the lock order */
    for (size_t i = 0; i < n; i++) {
        unsigned sidx;
        size_t j;
        hash[i] = store_memory_hash(m, b[i].key);
        sidx = store_memory_stripe_of(hash[i]);
        for (j = 0; j < n_stripes && order[j] < sidx; j++) continue;
        if (j < n_stripes && order[j] == sidx) continue;
        memmove(&order[j + 1], &order[j], (n_stripes - j) * sizeof order[0]);
        order[j] = sidx;
        n_stripes++;
    }
    for (size_t j = 0; j < n_stripes; j++) pthread_mutex_lock(&m->stripes[order[j]].lock);

    for (size_t i = 0; i < n; i++) {
        struct store_memory_stripe *st = &m->stripes[store_memory_stripe_of(hash[i])];
        struct store_memory_entry *e = store_memory_find(st, hash[i], b[i].key);
        tat[i] = e ? e->tat_us : 0;
    }
    limit_decide(now_us, b, n, tat, new_tat, o);
    for (size_t i = 0; i < n; i++) {
        struct store_memory_stripe *st = &m->stripes[store_memory_stripe_of(hash[i])];
        if (new_tat[i])
            store_memory_put(st, hash[i], b[i].key, new_tat[i], b[i].tolerance_us, now_us);
    }
    for (size_t j = n_stripes; j-- > 0;) pthread_mutex_unlock(&m->stripes[order[j]].lock);

    /* expiry: a few chains of one stripe per request, round-robin over the whole table, under
     * that stripe's lock alone (nothing else is held, so the lock order cannot be broken) */
    {
        unsigned k = atomic_fetch_add_explicit(&m->sweep_stripe, 1, memory_order_relaxed);
        struct store_memory_stripe *st = &m->stripes[k & (STORE_MEMORY_STRIPES - 1)];
        pthread_mutex_lock(&st->lock);
        for (unsigned step = 0; step < STORE_MEMORY_SWEEP_STEP; step++) {
            store_memory_sweep_chain(st, st->sweep, now_us);
            st->sweep = (st->sweep + 1) & (st->n_chains - 1);
        }
        pthread_mutex_unlock(&st->lock);
    }
}

size_t store_memory_count(struct store_memory *m) {
    size_t n = 0;
    for (unsigned i = 0; i < STORE_MEMORY_STRIPES; i++) {
        pthread_mutex_lock(&m->stripes[i].lock);
        n += m->stripes[i].count;
        pthread_mutex_unlock(&m->stripes[i].lock);
    }
    return n;
}

/* ---- prefetch pool ---- */

static struct store_memory_pool *store_memory_pool_find(struct store_memory *m, const char *key) {
    for (struct store_memory_pool *p = m->pools; p; p = p->next)
        if (strcmp(p->key, key) == 0) return p;
    return NULL;
}

static int store_memory_url_fresh(const struct store_memory_url *u, unsigned ttl_ms,
                                  uint64_t now_ms) {
    return now_ms < u->created_ms + ttl_ms;
}

/* Drops expired entries from the front; returns how many. */
static unsigned store_memory_pool_trim(struct store_memory_pool *p, unsigned ttl_ms,
                                       uint64_t now_ms) {
    unsigned dropped = 0;
    while (p->count && !store_memory_url_fresh(&p->ring[p->head], ttl_ms, now_ms)) {
        free(p->ring[p->head].url);
        p->ring[p->head].url = NULL;
        p->head = (p->head + 1) % p->cap;
        p->count--;
        dropped++;
    }
    return dropped;
}

/* Resizes p's ring to cap, keeping the newest entries. 0/-1 (OOM: unchanged). */
static int store_memory_pool_resize(struct store_memory_pool *p, size_t cap) {
    struct store_memory_url *ring = calloc(cap, sizeof *ring);
    size_t keep = p->count < cap ? p->count : cap, skip = p->count - keep;
    if (!ring) return -1;
    for (size_t i = 0; i < skip; i++) free(p->ring[(p->head + i) % p->cap].url);
    for (size_t i = 0; i < keep; i++) ring[i] = p->ring[(p->head + skip + i) % p->cap];
    free(p->ring);
    p->ring = ring;
    p->cap = cap;
    p->head = 0;
    p->count = keep;
    return 0;
}

int store_memory_pool_push(struct store_memory *m, const char *key, const char *url, size_t cap,
                           unsigned ttl_ms, uint64_t now_ms, size_t *depth) {
    struct store_memory_pool *p;
    char *copy = NULL;
    int rc = -1;
    if (cap == 0) cap = 1;
    if (!(copy = strdup(url))) return -1;
    pthread_mutex_lock(&m->pool_lock);
    if (!(p = store_memory_pool_find(m, key))) {
        size_t len = strlen(key);
        if (!(p = calloc(1, sizeof *p + len + 1))) goto out;
        memcpy(p->key, key, len + 1);
        if (!(p->ring = calloc(cap, sizeof *p->ring))) {
            free(p);
            goto out;
        }
        p->cap = cap;
        p->next = m->pools;
        m->pools = p;
    } else if (p->cap != cap && store_memory_pool_resize(p, cap) != 0) {
        goto out;
    }
    if (p->count == p->cap) {
        /* full: the oldest entry makes room */
        free(p->ring[p->head].url);
        p->head = (p->head + 1) % p->cap;
        p->count--;
    }
    p->ring[(p->head + p->count) % p->cap] = (struct store_memory_url){now_ms, copy};
    p->count++;
    copy = NULL;
    *depth = p->count;
    rc = 0;
out:
    pthread_mutex_unlock(&m->pool_lock);
    free(copy);
    return rc;
}

int store_memory_pool_pop(struct store_memory *m, const char *key, unsigned ttl_ms, uint64_t now_ms,
                          char **url, unsigned *discarded) {
    struct store_memory_pool *p;
    *url = NULL;
    *discarded = 0;
    pthread_mutex_lock(&m->pool_lock);
    if ((p = store_memory_pool_find(m, key))) {
        *discarded = store_memory_pool_trim(p, ttl_ms, now_ms);
        if (p->count) {
            *url = p->ring[p->head].url;
            p->ring[p->head].url = NULL;
            p->head = (p->head + 1) % p->cap;
            p->count--;
        }
    }
    pthread_mutex_unlock(&m->pool_lock);
    return 0;
}

int store_memory_pool_depth(struct store_memory *m, const char *key, unsigned ttl_ms,
                            uint64_t now_ms, size_t *depth, unsigned *discarded) {
    struct store_memory_pool *p;
    *depth = 0;
    *discarded = 0;
    pthread_mutex_lock(&m->pool_lock);
    if ((p = store_memory_pool_find(m, key))) {
        *discarded = store_memory_pool_trim(p, ttl_ms, now_ms);
        *depth = p->count;
    }
    pthread_mutex_unlock(&m->pool_lock);
    return 0;
}

/* ---- idempotency records ---- */

static void store_memory_idem_unlink(struct store_memory *m, struct store_memory_idem **pp) {
    struct store_memory_idem *e = *pp;
    *pp = e->next;
    free(e->body);
    free(e);
    m->idem_count--;
}

/* The record count is driven by clients (rate x idempotency.ttl_s), so the table grows: sweep
 * every chain, then double the chains if it is still crowded (on OOM it stays as it is). Under
 * idem_lock. */
static void store_memory_idem_grow(struct store_memory *m, uint64_t now_ms) {
    struct store_memory_idem **chains;
    size_t n;
    for (size_t c = 0; c < m->idem_chains; c++) {
        struct store_memory_idem **pp = &m->idem[c];
        while (*pp) {
            if ((*pp)->expires_ms <= now_ms)
                store_memory_idem_unlink(m, pp);
            else
                pp = &(*pp)->next;
        }
    }
    if (m->idem_count < m->idem_chains * 2) return;
    n = m->idem_chains * 2;
    if (!(chains = calloc(n, sizeof *chains))) return;
    for (size_t c = 0; c < m->idem_chains; c++) {
        struct store_memory_idem *e = m->idem[c];
        while (e) {
            struct store_memory_idem *next = e->next;
            size_t at = (size_t)e->hash & (n - 1);
            e->next = chains[at];
            chains[at] = e;
            e = next;
        }
    }
    free(m->idem);
    m->idem = chains;
    m->idem_chains = n;
    m->idem_sweep = 0;
}

/* The live record of key (expired ones on its chain are dropped), and its chain link. Also sweeps
 * a few other chains round-robin. Under idem_lock. */
static struct store_memory_idem **store_memory_idem_find(struct store_memory *m, const char *key,
                                                         uint64_t now_ms, uint64_t *hash) {
    struct store_memory_idem **pp, **found = NULL;
    *hash = store_memory_hash(m, key);
    for (unsigned step = 0; step < STORE_MEMORY_IDEM_SWEEP; step++) {
        pp = &m->idem[m->idem_sweep];
        while (*pp) {
            if ((*pp)->expires_ms <= now_ms)
                store_memory_idem_unlink(m, pp);
            else
                pp = &(*pp)->next;
        }
        m->idem_sweep = (m->idem_sweep + 1) & (m->idem_chains - 1);
    }
    pp = &m->idem[*hash & (m->idem_chains - 1)];
    while (*pp) {
        struct store_memory_idem *e = *pp;
        if (e->expires_ms <= now_ms) {
            store_memory_idem_unlink(m, pp);
            continue;
        }
        if (e->hash == *hash && strcmp(e->key, key) == 0) found = pp;
        pp = &e->next;
    }
    return found;
}

int store_memory_idem_begin(struct store_memory *m, const char *key, const char *fp,
                            unsigned pending_ms, uint64_t now_ms, enum store_idem_state *state,
                            char **body, size_t *len) {
    struct store_memory_idem **pp, *e;
    uint64_t hash;
    int rc = 0;
    *body = NULL;
    *len = 0;
    pthread_mutex_lock(&m->idem_lock);
    if ((pp = store_memory_idem_find(m, key, now_ms, &hash))) {
        e = *pp;
        if (strcmp(e->fp, fp) != 0) {
            *state = STORE_IDEM_MISMATCH;
        } else if (!e->done) {
            *state = STORE_IDEM_PENDING;
        } else if (!(*body = malloc(e->body_len + 1))) {
            rc = -1;
        } else {
            memcpy(*body, e->body, e->body_len);
            (*body)[e->body_len] = 0;
            *len = e->body_len;
            *state = STORE_IDEM_DONE;
        }
        goto out;
    }
    size_t klen = strlen(key);
    if (!(e = calloc(1, sizeof *e + klen + 1))) {
        rc = -1;
        goto out;
    }
    memcpy(e->key, key, klen + 1);
    snprintf(e->fp, sizeof e->fp, "%s", fp);
    e->hash = hash;
    e->expires_ms = now_ms + (pending_ms ? pending_ms : 1);
    if (m->idem_count >= m->idem_chains * 2) store_memory_idem_grow(m, now_ms);
    e->next = m->idem[hash & (m->idem_chains - 1)];
    m->idem[hash & (m->idem_chains - 1)] = e;
    m->idem_count++;
    *state = STORE_IDEM_NEW;
out:
    pthread_mutex_unlock(&m->idem_lock);
    return rc;
}

int store_memory_idem_complete(struct store_memory *m, const char *key, const char *fp,
                               const char *body, size_t len, unsigned ttl_ms, uint64_t now_ms,
                               enum store_idem_state *state) {
    struct store_memory_idem **pp, *e;
    uint64_t hash;
    char *copy = malloc(len + 1);
    if (!copy) return -1;
    memcpy(copy, body, len);
    copy[len] = 0;
    pthread_mutex_lock(&m->idem_lock);
    pp = store_memory_idem_find(m, key, now_ms, &hash);
    if (pp && !(*pp)->done && strcmp((*pp)->fp, fp) == 0) {
        e = *pp;
        e->done = 1;
        e->body = copy;
        e->body_len = len;
        e->expires_ms = now_ms + (ttl_ms ? ttl_ms : 1);
        copy = NULL;
        *state = STORE_IDEM_DONE;
    } else {
        *state = STORE_IDEM_MISMATCH;
    }
    pthread_mutex_unlock(&m->idem_lock);
    free(copy);
    return 0;
}

int store_memory_idem_abandon(struct store_memory *m, const char *key, const char *fp,
                              uint64_t now_ms, enum store_idem_state *state) {
    struct store_memory_idem **pp;
    uint64_t hash;
    pthread_mutex_lock(&m->idem_lock);
    pp = store_memory_idem_find(m, key, now_ms, &hash);
    if (pp && !(*pp)->done && strcmp((*pp)->fp, fp) == 0) {
        store_memory_idem_unlink(m, pp);
        *state = STORE_IDEM_DONE;
    } else {
        *state = STORE_IDEM_MISMATCH;
    }
    pthread_mutex_unlock(&m->idem_lock);
    return 0;
}

size_t store_memory_idem_count(struct store_memory *m) {
    size_t n;
    pthread_mutex_lock(&m->idem_lock);
    n = m->idem_count;
    pthread_mutex_unlock(&m->idem_lock);
    return n;
}

size_t store_memory_idem_chains(struct store_memory *m) {
    pthread_mutex_lock(&m->idem_lock);
    size_t n = m->idem_chains;
    pthread_mutex_unlock(&m->idem_lock);
    return n;
}

/* ---- the memory backend's table (store_backend.h): every operation answers at once, through
 * the deferred queue, and counts as one command ---- */

static int store_memory_op_open(struct store *s, struct event_base *base, void **state, char *err,
                                size_t errlen) {
    *state = NULL; /* the tables are the process's (store_memory_of) */
    return 0;
}

static void store_memory_op_close(void *state) {}

static int store_memory_op_connected(const void *state) {
    return 1;
}

static void store_memory_op_limit(struct store *s, void *state, const struct limit_bucket *b,
                                  size_t n, const struct store_nonce *nonce, store_limit_fn cb,
                                  void *arg) {
    store_limit_local(s, b, n, cb, arg);
}

static uint64_t store_memory_now_ms(void) {
    return clock_wall_us() / 1000;
}

static void store_memory_op_pool(struct store *s, void *state, const struct store_pool_req *req,
                                 store_pool_fn cb, void *arg) {
    struct store_memory *m = store_memory_of(s);
    struct store_pool_result r = {0};
    char *url = NULL;
    int rc;
    store_count(s, STORE_COMMANDS);
    switch (req->op) {
    case STORE_OP_POOL_PUSH:
        rc = store_memory_pool_push(m, req->key, req->url, req->cap, req->ttl_ms,
                                    store_memory_now_ms(), &r.depth);
        break;
    case STORE_OP_POOL_POP:
        rc = store_memory_pool_pop(m, req->key, req->ttl_ms, store_memory_now_ms(), &url,
                                   &r.discarded);
        break;
    case STORE_OP_POOL_DEPTH:
        rc = store_memory_pool_depth(m, req->key, req->ttl_ms, store_memory_now_ms(), &r.depth,
                                     &r.discarded);
        break;
    default: store_defer_pool(s, cb, arg, "not a pool operation", NULL); return;
    }
    r.url = url;
    if (rc)
        store_defer_pool(s, cb, arg, "out of memory", NULL);
    else
        store_defer_pool(s, cb, arg, NULL, &r);
    free(url);
}

static void store_memory_op_idem(struct store *s, void *state, const struct store_idem_req *req,
                                 store_idem_fn cb, void *arg) {
    struct store_memory *m = store_memory_of(s);
    struct store_idem_result r = {0};
    char *body = NULL;
    int rc;
    store_count(s, STORE_COMMANDS);
    switch (req->op) {
    case STORE_OP_IDEM_BEGIN:
        rc = store_memory_idem_begin(m, req->key, req->fp, req->ttl_ms, store_memory_now_ms(),
                                     &r.state, &body, &r.body_len);
        break;
    case STORE_OP_IDEM_COMPLETE:
        rc = store_memory_idem_complete(m, req->key, req->fp, req->body, req->body_len, req->ttl_ms,
                                        store_memory_now_ms(), &r.state);
        break;
    case STORE_OP_IDEM_ABANDON:
        rc = store_memory_idem_abandon(m, req->key, req->fp, store_memory_now_ms(), &r.state);
        break;
    default: store_defer_idem(s, cb, arg, "not an idempotency operation", NULL); return;
    }
    r.body = body;
    if (rc)
        store_defer_idem(s, cb, arg, "out of memory", NULL);
    else
        store_defer_idem(s, cb, arg, NULL, &r);
    free(body);
}

const struct store_ops store_memory_ops = {
    .kind = "memory",
    .open = store_memory_op_open,
    .close = store_memory_op_close,
    .connected = store_memory_op_connected,
    .limit = store_memory_op_limit,
    .pool = store_memory_op_pool,
    .idem = store_memory_op_idem,
};
