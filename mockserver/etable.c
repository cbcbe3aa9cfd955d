/* etable.c: chained hash buckets plus one doubly linked list in insertion order; the list head
 * is the oldest entry, which is what both expiry and eviction remove. */
#include "etable.h"

#include <stdlib.h>
#include <string.h>

struct etable_entry {
    struct etable_entry *hnext;         /* bucket chain */
    struct etable_entry *older, *newer; /* insertion order */
    uint64_t hash;
    uint64_t expire_us;
    void *value;
    size_t key_len;
    char key[];
};

struct etable {
    struct etable_entry **buckets;
    size_t nbuckets; /* power of two */
    size_t count;
    size_t max_entries;
    uint64_t evicted;
    struct etable_entry *oldest, *newest;
    etable_free_fn free_value;
};

static uint64_t hash_key(const char *key, size_t len) {
    /* FNV-1a: the keys are random tokens or numbers; no adversary picks them to collide. */
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

struct etable *etable_new(size_t max_entries, etable_free_fn free_value) {
    struct etable *t = calloc(1, sizeof(*t));
    if (!t) return NULL;
    t->nbuckets = 64;
    t->buckets = calloc(t->nbuckets, sizeof(*t->buckets));
    if (!t->buckets) {
        free(t);
        return NULL;
    }
    t->max_entries = max_entries ? max_entries : 1;
    t->free_value = free_value;
    return t;
}

static struct etable_entry **find_slot(const struct etable *t, const char *key, size_t key_len,
                                       uint64_t h) {
    struct etable_entry **pp = &t->buckets[h & (t->nbuckets - 1)];
    while (*pp) {
        struct etable_entry *e = *pp;
        if (e->hash == h && e->key_len == key_len && memcmp(e->key, key, key_len) == 0) return pp;
        pp = &e->hnext;
    }
    return pp;
}

static void unlink_entry(struct etable *t, struct etable_entry *e) {
    struct etable_entry **pp = find_slot(t, e->key, e->key_len, e->hash);
    if (*pp == e) *pp = e->hnext;
    if (e->older)
        e->older->newer = e->newer;
    else
        t->oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        t->newest = e->older;
    t->count--;
    if (t->free_value && e->value) t->free_value(e->value);
    free(e);
}

static void grow(struct etable *t) {
    size_t n = t->nbuckets * 2;
    struct etable_entry **b = calloc(n, sizeof(*b));
    if (!b) return; /* a fuller table is slower, not wrong */
    for (size_t i = 0; i < t->nbuckets; i++) {
        struct etable_entry *e = t->buckets[i];
        while (e) {
            struct etable_entry *next = e->hnext;
            size_t j = e->hash & (n - 1);
            e->hnext = b[j];
            b[j] = e;
            e = next;
        }
    }
    free(t->buckets);
    t->buckets = b;
    t->nbuckets = n;
}

int etable_put(struct etable *t, const char *key, size_t key_len, void *value, uint64_t expire_us) {
    uint64_t h = hash_key(key, key_len);
    struct etable_entry **pp = find_slot(t, key, key_len, h);
    if (*pp) unlink_entry(t, *pp);
    while (t->count >= t->max_entries && t->oldest) {
        unlink_entry(t, t->oldest);
        t->evicted++;
    }
    struct etable_entry *e = malloc(sizeof(*e) + key_len + 1);
    if (!e) return -1;
    memcpy(e->key, key, key_len);
    e->key[key_len] = '\0';
    e->key_len = key_len;
    e->hash = h;
    e->expire_us = expire_us;
    e->value = value;
    e->newer = NULL;
    e->older = t->newest;
    if (t->newest)
        t->newest->newer = e;
    else
        t->oldest = e;
    t->newest = e;
    if (t->count >= t->nbuckets) grow(t);
    size_t i = h & (t->nbuckets - 1);
    e->hnext = t->buckets[i];
    t->buckets[i] = e;
    t->count++;
    return 0;
}

int etable_find(const struct etable *t, const char *key, size_t key_len, void **value) {
    struct etable_entry **pp = find_slot(t, key, key_len, hash_key(key, key_len));
    if (!*pp) return 0;
    if (value) *value = (*pp)->value;
    return 1;
}

int etable_remove(struct etable *t, const char *key, size_t key_len) {
    struct etable_entry **pp = find_slot(t, key, key_len, hash_key(key, key_len));
    if (!*pp) return 0;
    unlink_entry(t, *pp);
    return 1;
}

size_t etable_expire(struct etable *t, uint64_t now_us) {
    size_t n = 0;
    while (t->oldest && t->oldest->expire_us <= now_us) {
        unlink_entry(t, t->oldest);
        n++;
    }
    return n;
}

void etable_clear(struct etable *t) {
    while (t->oldest) unlink_entry(t, t->oldest);
}

size_t etable_count(const struct etable *t) {
    return t->count;
}
uint64_t etable_evicted(const struct etable *t) {
    return t->evicted;
}

void etable_free(struct etable *t) {
    if (!t) return;
    etable_clear(t);
    free(t->buckets);
    free(t);
}
