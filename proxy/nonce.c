/* nonce.c: the striped replay cache. Each stripe keeps its entries in a ring in insertion order,
 * one cache line each, and an open-addressed table of (hash, ring position) pairs. Because every
 * entry of a stripe gets the same ttl from the caller, insertion order is expiry order: pruning
 * and eviction only ever look at the ring's head, and a new entry goes to its tail, which in a
 * full stripe is the line just freed. A first use so touches three lines out of cache (its own
 * table slot, the ring's head and the head's slot), and the check prefetches the last two for
 * the insert that follows. Entries used to be allocated apart from the ring, which cost two more
 * misses per request in a table of a million (the evicted entry, and the ring item pointing to
 * it). The hash is keyed with random bytes so
 * that clients cannot aim many entries at one probe sequence. */
#include "nonce.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/rand.h>

#define NONCE_PRUNE_STEP 4 /* expired entries removed per insert, at most */
#define NONCE_MIN_SLOTS 32 /* table slots of a new stripe; kept at most half full */
#define NONCE_MIN_RING 16
#define NONCE_INLINE_ID 36 /* ids up to this long live in the entry (AKID + 32 is usual) */

/* One cache line. A longer id is allocated apart; its pointer is stored in id[]. */
struct nonce_item {
    uint64_t hash;
    uint64_t nonce;
    uint64_t expires_s; /* 0: removed before reaching the ring's head */
    uint32_t id_len;
    char id[NONCE_INLINE_ID];
};

struct nonce_slot {
    uint64_t hash;
    uint64_t seq; /* the entry's position in the stripe's ring; 0: an empty slot */
};

struct nonce_stripe {
    pthread_mutex_t lock;
    struct nonce_slot *slots;
    size_t n_slots; /* power of two */
    struct nonce_item *ring;
    size_t ring_cap;            /* power of two */
    size_t ring_head, ring_len; /* ring_len counts removed items not yet passed */
    uint64_t head_seq;          /* seq of the item at ring_head; seqs start at 1 */
    size_t count;
    uint64_t evictions;
};

struct nonce_cache {
    struct nonce_stripe *stripes;
    unsigned n_stripes; /* power of two */
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

/* Eight bytes of the SecretId per multiply (a byte at a time took ~150 instructions for a usual
 * 36-byte id, twice a request), the last ones read as the id's final 8 bytes (overlapping) or
 * byte by byte when it is shorter; the length is mixed in so "a" and "a\0" differ. The seeded
 * finaliser spreads every input bit over the stripe and slot bits. */
static uint64_t nonce_hash(const struct nonce_cache *c, const char *id, size_t len,
                           uint64_t nonce) {
    const uint64_t k = 0x9e3779b97f4a7c15ULL;
    uint64_t h = (c->seed ^ len) * k, w;
    size_t i = 0;
    if (len >= 8) {
        for (; i + 8 < len; i += 8) {
            memcpy(&w, id + i, 8);
            h = (h ^ w) * k;
            h ^= h >> 32;
        }
        memcpy(&w, id + len - 8, 8);
    } else {
        w = 0;
        for (; i < len; i++) w |= (uint64_t)(unsigned char)id[i] << (8 * i);
    }
    h = (h ^ w) * k;
    return nonce_mix(h ^ nonce_mix(nonce + c->seed));
}

static struct nonce_item *nonce_ring_alloc(size_t n) {
    /* lines of their own: a 64-byte item then costs one miss, not two */
    return aligned_alloc(64, n * sizeof(struct nonce_item));
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
    if (RAND_bytes((unsigned char *)&c->seed, sizeof(c->seed)) != 1)
        c->seed = 0x9e3779b97f4a7c15ULL;
    c->stripes = calloc(n, sizeof(*c->stripes));
    if (!c->stripes) goto fail;
    for (unsigned i = 0; i < n; i++) {
        struct nonce_stripe *s = &c->stripes[i];
        s->slots = calloc(NONCE_MIN_SLOTS, sizeof(*s->slots));
        s->ring = nonce_ring_alloc(NONCE_MIN_RING);
        if (!s->slots || !s->ring) {
            free(s->slots);
            free(s->ring);
            s->slots = NULL;
            goto fail;
        }
        s->n_slots = NONCE_MIN_SLOTS;
        s->ring_cap = NONCE_MIN_RING;
        s->head_seq = 1;
        pthread_mutex_init(&s->lock, NULL);
    }
    return c;
fail:
    nonce_cache_free(c);
    return NULL;
}

static struct nonce_item *nonce_ring_at(struct nonce_stripe *s, uint64_t seq) {
    return &s->ring[(s->ring_head + (size_t)(seq - s->head_seq)) & (s->ring_cap - 1)];
}

static const char *nonce_item_id(const struct nonce_item *it) {
    if (it->id_len <= NONCE_INLINE_ID) return it->id;
    const char *p;
    memcpy(&p, it->id, sizeof(p));
    return p;
}

/* Forgets the entry's id; the item stays in the ring, marked removed, until the head passes it. */
static void nonce_item_clear(struct nonce_stripe *s, struct nonce_item *it) {
    if (it->id_len > NONCE_INLINE_ID) free((char *)nonce_item_id(it));
    it->expires_s = 0;
    s->count--;
}

void nonce_cache_free(struct nonce_cache *c) {
    if (!c) return;
    for (unsigned i = 0; c->stripes && i < c->n_stripes; i++) {
        struct nonce_stripe *s = &c->stripes[i];
        if (!s->slots) continue;
        for (size_t k = 0; k < s->ring_len; k++) {
            struct nonce_item *it = &s->ring[(s->ring_head + k) & (s->ring_cap - 1)];
            if (it->expires_s) nonce_item_clear(s, it);
        }
        free(s->slots);
        free(s->ring);
        pthread_mutex_destroy(&s->lock);
    }
    free(c->stripes);
    free(c);
}

static struct nonce_stripe *nonce_stripe_of(struct nonce_cache *c, uint64_t hash) {
    /* The low bits pick the slot inside the stripe; the high bits pick the stripe. */
    return &c->stripes[(hash >> 48) & (c->n_stripes - 1)];
}

/* The slot holding (id, nonce), or SIZE_MAX. The entry itself is read only on a matching hash. */
static size_t nonce_lookup(struct nonce_stripe *s, uint64_t hash, const char *id, size_t len,
                           uint64_t nonce) {
    size_t mask = s->n_slots - 1;
    for (size_t i = hash & mask; s->slots[i].seq; i = (i + 1) & mask) {
        if (s->slots[i].hash != hash) continue;
        const struct nonce_item *it = nonce_ring_at(s, s->slots[i].seq);
        if (it->nonce == nonce && it->id_len == len && memcmp(nonce_item_id(it), id, len) == 0)
            return i;
    }
    return SIZE_MAX;
}

/* Empties slot i and moves later members of its probe run back (linear probing needs no
 * tombstones then). */
static void nonce_slot_clear(struct nonce_stripe *s, size_t i) {
    size_t mask = s->n_slots - 1;
    for (size_t j = (i + 1) & mask; s->slots[j].seq; j = (j + 1) & mask) {
        size_t home = s->slots[j].hash & mask;
        /* The member at j may move to i unless its home lies cyclically in (i, j]. */
        int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            s->slots[i] = s->slots[j];
            i = j;
        }
    }
    s->slots[i].seq = 0;
}

/* Removes the entry in slot i from the table and the ring. */
static void nonce_remove(struct nonce_stripe *s, size_t i) {
    nonce_item_clear(s, nonce_ring_at(s, s->slots[i].seq));
    nonce_slot_clear(s, i);
}

/* Passes removed items at the ring's head; then the head is the oldest entry (if any). */
static struct nonce_item *nonce_oldest(struct nonce_stripe *s) {
    while (s->ring_len && !s->ring[s->ring_head].expires_s) {
        s->ring_head = (s->ring_head + 1) & (s->ring_cap - 1);
        s->ring_len--;
        s->head_seq++;
    }
    return s->ring_len ? &s->ring[s->ring_head] : NULL;
}

/* Removes the oldest entry (the one nonce_oldest returned): its slot is found by its hash and
 * its seq, without reading other entries. */
static void nonce_remove_oldest(struct nonce_stripe *s, const struct nonce_item *oldest) {
    size_t mask = s->n_slots - 1, i = oldest->hash & mask;
    while (s->slots[i].seq != s->head_seq) i = (i + 1) & mask;
    nonce_remove(s, i);
    nonce_oldest(s);
}

/* Doubles the table once it is half full; a failed allocation keeps the old table, which a
 * full stripe's eviction keeps from filling up (per_stripe_max < n_slots is not required for
 * correctness, only an empty slot is). -1 when the table is full and could not grow. */
static int nonce_grow_slots(struct nonce_stripe *s) {
    if ((s->count + 1) * 2 <= s->n_slots) return 0;
    size_t n = s->n_slots * 2;
    struct nonce_slot *b = calloc(n, sizeof(*b));
    if (!b) return s->count + 1 < s->n_slots ? 0 : -1;
    for (size_t k = 0; k < s->n_slots; k++) {
        if (!s->slots[k].seq) continue;
        size_t i = s->slots[k].hash & (n - 1);
        while (b[i].seq) i = (i + 1) & (n - 1);
        b[i] = s->slots[k];
    }
    free(s->slots);
    s->slots = b;
    s->n_slots = n;
    return 0;
}

/* Room for one more ring item: doubles the ring (laid out from index 0 again; seqs stay valid,
 * as they count from head_seq). -1 on OOM. */
static int nonce_grow_ring(struct nonce_stripe *s) {
    if (s->ring_len < s->ring_cap) return 0;
    size_t n = s->ring_cap * 2;
    struct nonce_item *r = nonce_ring_alloc(n);
    if (!r) return -1;
    for (size_t k = 0; k < s->ring_len; k++) r[k] = s->ring[(s->ring_head + k) & (s->ring_cap - 1)];
    free(s->ring);
    s->ring = r;
    s->ring_cap = n;
    s->ring_head = 0;
    return 0;
}

/* Fills the ring's tail with (hash, id, nonce). -1 when a long id cannot be copied. */
static int nonce_append(struct nonce_stripe *s, uint64_t hash, const char *id, size_t len,
                        uint64_t nonce, uint64_t expires_s) {
    struct nonce_item *it = &s->ring[(s->ring_head + s->ring_len) & (s->ring_cap - 1)];
    if (len > NONCE_INLINE_ID) {
        char *p = malloc(len);
        if (!p) return -1;
        memcpy(p, id, len);
        memcpy(it->id, &p, sizeof(p));
    } else {
        memcpy(it->id, id, len);
    }
    it->hash = hash;
    it->nonce = nonce;
    it->expires_s = expires_s;
    it->id_len = (uint32_t)len;
    s->ring_len++;
    s->count++;
    return 0;
}

int nonce_cache_seen(struct nonce_cache *c, const char *secret_id, uint64_t nonce, uint64_t now_s) {
    size_t len = strlen(secret_id);
    if (len > NONCE_MAX_SECRET_ID) return 0;
    uint64_t hash = nonce_hash(c, secret_id, len, nonce);
    struct nonce_stripe *s = nonce_stripe_of(c, hash);
    pthread_mutex_lock(&s->lock);
    /* A check is followed by the insert once the signature is verified, a microsecond or more
     * later. The insert reads the ring's head (the entry it prunes or evicts) and that entry's
     * slot: both are fetched now, beside this lookup's own miss, so they are in cache by then. */
    const struct nonce_item *head = s->ring_len ? &s->ring[s->ring_head] : NULL;
    if (head) __builtin_prefetch(head);
    size_t i = nonce_lookup(s, hash, secret_id, len, nonce);
    int seen = i != SIZE_MAX && nonce_ring_at(s, s->slots[i].seq)->expires_s > now_s;
    if (head) __builtin_prefetch(&s->slots[head->hash & (s->n_slots - 1)], 1);
    pthread_mutex_unlock(&s->lock);
    return seen;
}

int nonce_cache_insert(struct nonce_cache *c, const char *secret_id, uint64_t nonce, uint64_t now_s,
                       uint64_t ttl_s) {
    size_t len = strlen(secret_id);
    if (len > NONCE_MAX_SECRET_ID) return -1;
    uint64_t hash = nonce_hash(c, secret_id, len, nonce);
    struct nonce_stripe *s = nonce_stripe_of(c, hash);
    struct nonce_item *oldest;
    int rc = 0;

    pthread_mutex_lock(&s->lock);
    oldest = nonce_oldest(s);
    for (int k = 0; k < NONCE_PRUNE_STEP && oldest && oldest->expires_s <= now_s; k++) {
        nonce_remove_oldest(s, oldest);
        oldest = nonce_oldest(s);
    }
    size_t i = nonce_lookup(s, hash, secret_id, len, nonce);
    if (i != SIZE_MAX) {
        if (nonce_ring_at(s, s->slots[i].seq)->expires_s > now_s) {
            rc = 1;
            goto out;
        }
        nonce_remove(s, i);
    }
    while (s->count >= c->per_stripe_max && (oldest = nonce_oldest(s))) {
        if (oldest->expires_s > now_s) s->evictions++;
        nonce_remove_oldest(s, oldest);
    }
    /* an expires_s of 0 marks a removed item: a real entry expires at 1 at the earliest */
    uint64_t expires_s = now_s + ttl_s ? now_s + ttl_s : 1;
    if (nonce_grow_slots(s) != 0 || nonce_grow_ring(s) != 0 ||
        nonce_append(s, hash, secret_id, len, nonce, expires_s) != 0) {
        rc = -1;
        goto out;
    }
    i = hash & (s->n_slots - 1);
    while (s->slots[i].seq) i = (i + 1) & (s->n_slots - 1);
    s->slots[i] = (struct nonce_slot){hash, s->head_seq + s->ring_len - 1};
out:
    pthread_mutex_unlock(&s->lock);
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
