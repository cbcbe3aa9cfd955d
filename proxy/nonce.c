/* nonce.c: the striped replay cache. Each stripe is a chained hash table plus an insertion-order
 * list; because every entry of a stripe gets the same ttl from the caller, insertion order is
 * expiry order and pruning only ever looks at the list's head. The hash is keyed with random
 * bytes so that clients cannot aim many entries at one chain. */
#include "nonce.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/rand.h>

#define NONCE_PRUNE_STEP 4      /* expired entries removed per insert, at most */
#define NONCE_MIN_BUCKETS 16

struct nonce_entry {
    struct nonce_entry *chain;           /* next in the bucket */
    struct nonce_entry *older, *newer;   /* insertion order */
    uint64_t hash;
    uint64_t nonce;
    uint64_t expires_s;
    size_t id_len;
    char secret_id[];
};

struct nonce_stripe {
    pthread_mutex_t lock;
    struct nonce_entry **buckets;
    size_t n_buckets;                    /* power of two */
    size_t count;
    struct nonce_entry *oldest, *newest;
    uint64_t evictions;
};

struct nonce_cache {
    struct nonce_stripe *stripes;
    unsigned n_stripes;                  /* power of two */
    size_t per_stripe_max;
    uint64_t seed;
};

static uint64_t nonce_mix(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static uint64_t nonce_hash(const struct nonce_cache *c, const char *id, size_t len,
                           uint64_t nonce) {
    uint64_t h = 0xcbf29ce484222325ULL ^ c->seed;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)id[i];
        h *= 0x100000001b3ULL;
    }
    return nonce_mix(h ^ nonce_mix(nonce + c->seed));
}

struct nonce_cache *nonce_cache_new(size_t max_entries, unsigned stripes) {
    struct nonce_cache *c = NULL;
    unsigned n = 1;
    while (n < stripes && n < (1u << 16)) n <<= 1;
    if (max_entries < n) max_entries = n;

    c = calloc(1, sizeof(*c));
    if (!c) goto fail;
    c->n_stripes = n;
    c->per_stripe_max = max_entries / n;
    if (RAND_bytes((unsigned char *)&c->seed, sizeof(c->seed)) != 1) c->seed = 0x9e3779b97f4a7c15ULL;
    c->stripes = calloc(n, sizeof(*c->stripes));
    if (!c->stripes) goto fail;
    for (unsigned i = 0; i < n; i++) {
        struct nonce_stripe *s = &c->stripes[i];
        s->buckets = calloc(NONCE_MIN_BUCKETS, sizeof(*s->buckets));
        if (!s->buckets) goto fail;
        s->n_buckets = NONCE_MIN_BUCKETS;
        pthread_mutex_init(&s->lock, NULL);
    }
    return c;
fail:
    nonce_cache_free(c);
    return NULL;
}

void nonce_cache_free(struct nonce_cache *c) {
    if (!c) return;
    for (unsigned i = 0; c->stripes && i < c->n_stripes; i++) {
        struct nonce_stripe *s = &c->stripes[i];
        if (!s->buckets) continue;
        struct nonce_entry *e = s->oldest;
        while (e) {
            struct nonce_entry *next = e->newer;
            free(e);
            e = next;
        }
        free(s->buckets);
        pthread_mutex_destroy(&s->lock);
    }
    free(c->stripes);
    free(c);
}

static struct nonce_stripe *nonce_stripe_of(struct nonce_cache *c, uint64_t hash) {
    /* The low bits pick the bucket inside the stripe; the high bits pick the stripe. */
    return &c->stripes[(hash >> 48) & (c->n_stripes - 1)];
}

static struct nonce_entry **nonce_slot(struct nonce_stripe *s, uint64_t hash) {
    return &s->buckets[hash & (s->n_buckets - 1)];
}

static struct nonce_entry *nonce_lookup(struct nonce_stripe *s, uint64_t hash, const char *id,
                                        size_t len, uint64_t nonce) {
    for (struct nonce_entry *e = *nonce_slot(s, hash); e; e = e->chain) {
        if (e->hash == hash && e->nonce == nonce && e->id_len == len &&
            memcmp(e->secret_id, id, len) == 0)
            return e;
    }
    return NULL;
}

static void nonce_unlink(struct nonce_stripe *s, struct nonce_entry *e) {
    struct nonce_entry **pp = nonce_slot(s, e->hash);
    while (*pp && *pp != e) pp = &(*pp)->chain;
    if (*pp) *pp = e->chain;
    if (e->older) e->older->newer = e->newer;
    else s->oldest = e->newer;
    if (e->newer) e->newer->older = e->older;
    else s->newest = e->older;
    s->count--;
    free(e);
}

/* Doubles the bucket array once the chains average more than one entry; a failed allocation
 * keeps the old array (longer chains, still correct). */
static void nonce_grow(struct nonce_stripe *s) {
    size_t n = s->n_buckets * 2;
    struct nonce_entry **b = calloc(n, sizeof(*b));
    if (!b) return;
    for (struct nonce_entry *e = s->oldest; e; e = e->newer) {
        struct nonce_entry **slot = &b[e->hash & (n - 1)];
        e->chain = *slot;
        *slot = e;
    }
    free(s->buckets);
    s->buckets = b;
    s->n_buckets = n;
}

int nonce_cache_seen(struct nonce_cache *c, const char *secret_id, uint64_t nonce,
                     uint64_t now_s) {
    size_t len = strlen(secret_id);
    if (len > NONCE_MAX_SECRET_ID) return 0;
    uint64_t hash = nonce_hash(c, secret_id, len, nonce);
    struct nonce_stripe *s = nonce_stripe_of(c, hash);
    pthread_mutex_lock(&s->lock);
    struct nonce_entry *e = nonce_lookup(s, hash, secret_id, len, nonce);
    int seen = e && e->expires_s > now_s;
    pthread_mutex_unlock(&s->lock);
    return seen;
}

int nonce_cache_insert(struct nonce_cache *c, const char *secret_id, uint64_t nonce,
                       uint64_t now_s, uint64_t ttl_s) {
    size_t len = strlen(secret_id);
    if (len > NONCE_MAX_SECRET_ID) return -1;
    uint64_t hash = nonce_hash(c, secret_id, len, nonce);
    struct nonce_stripe *s = nonce_stripe_of(c, hash);
    /* Allocated before taking the lock, to keep the critical section short. */
    struct nonce_entry *fresh = malloc(sizeof(*fresh) + len + 1);
    int rc = 0;
    if (!fresh) return -1;
    fresh->hash = hash;
    fresh->nonce = nonce;
    fresh->expires_s = now_s + ttl_s;
    fresh->id_len = len;
    memcpy(fresh->secret_id, secret_id, len + 1);

    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < NONCE_PRUNE_STEP && s->oldest && s->oldest->expires_s <= now_s; i++)
        nonce_unlink(s, s->oldest);
    struct nonce_entry *e = nonce_lookup(s, hash, secret_id, len, nonce);
    if (e && e->expires_s > now_s) {
        rc = 1;
        goto out;
    }
    if (e) nonce_unlink(s, e);
    while (s->count >= c->per_stripe_max && s->oldest) {
        if (s->oldest->expires_s > now_s) s->evictions++;
        nonce_unlink(s, s->oldest);
    }
    struct nonce_entry **slot = nonce_slot(s, hash);
    fresh->chain = *slot;
    *slot = fresh;
    fresh->older = s->newest;
    fresh->newer = NULL;
    if (s->newest) s->newest->newer = fresh;
    else s->oldest = fresh;
    s->newest = fresh;
    s->count++;
    fresh = NULL;
    if (s->count > s->n_buckets) nonce_grow(s);
out:
    pthread_mutex_unlock(&s->lock);
    free(fresh);
    return rc;
}

size_t nonce_cache_count(struct nonce_cache *c) {
    size_t n = 0;
    for (unsigned i = 0; i < c->n_stripes; i++) {
        pthread_mutex_lock(&c->stripes[i].lock);
        n += c->stripes[i].count;
        pthread_mutex_unlock(&c->stripes[i].lock);
    }
    return n;
}

uint64_t nonce_cache_evictions(struct nonce_cache *c) {
    uint64_t n = 0;
    for (unsigned i = 0; i < c->n_stripes; i++) {
        pthread_mutex_lock(&c->stripes[i].lock);
        n += c->stripes[i].evictions;
        pthread_mutex_unlock(&c->stripes[i].lock);
    }
    return n;
}
