/* store_memory.c: rate-limit buckets held in this process, shared by all its workers. The table is
 * split into stripes, each a chained hash table under its own mutex; a request locks the stripes
 * its buckets fall in, in ascending order (so two requests never wait on each other in a cycle),
 * decides with limit_decide and writes only when the whole request is admitted. Buckets whose TAT
 * is in the past by more than their tolerance are dropped a few chains per request, round-robin
 * over the table, and whole stripes are swept before they grow. */
#include "store.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/rand.h>

#define STORE_MEMORY_STRIPES 64      /* power of two */
#define STORE_MEMORY_MIN_CHAINS 16   /* per stripe, power of two */
#define STORE_MEMORY_SWEEP_STEP 4    /* chains checked for expired buckets per request */

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
    size_t sweep;                    /* next chain to check for expired buckets */
};

struct store_memory {
    struct store_memory_stripe stripes[STORE_MEMORY_STRIPES];
    uint64_t seed;
    atomic_uint sweep_stripe;            /* the stripe the next request sweeps */
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
    for (unsigned i = 0; i < STORE_MEMORY_STRIPES; i++) {
        struct store_memory_stripe *st = &m->stripes[i];
        pthread_mutex_init(&st->lock, NULL);
        if (!(st->chains = calloc(STORE_MEMORY_MIN_CHAINS, sizeof *st->chains))) {
            store_memory_free(m);
            return NULL;
        }
        st->n_chains = STORE_MEMORY_MIN_CHAINS;
    }
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
        if (new_tat[i]) store_memory_put(st, hash[i], b[i].key, new_tat[i], b[i].tolerance_us, now_us);
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
