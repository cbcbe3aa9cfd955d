/* nonce.h: the replay cache of signed requests, shared by every worker (a replay may land on any
 * of them). A hash table split into stripes, each behind its own mutex held for a few
 * instructions, keyed by (SecretId, Nonce) with an expiry. Memory is bounded: each stripe holds
 * at most its share of max_entries; expired entries are pruned a few at a time on every insert,
 * and when a stripe is full of live entries the oldest one is evicted (and counted). */
#ifndef CAPGATE_NONCE_H
#define CAPGATE_NONCE_H
#include <stddef.h>
#include <stdint.h>

struct nonce_cache;

#define NONCE_MAX_SECRET_ID 128 /* longer SecretIds are never stored (and never match) */

/* max_entries: the bound for the whole cache (>= stripes). stripes: rounded up to a power of
 * two, at least 1. NULL on OOM. */
struct nonce_cache *nonce_cache_new(size_t max_entries, unsigned stripes);
/* Frees everything; NULL accepted. No other thread may use the cache any more. */
void nonce_cache_free(struct nonce_cache *c);

/* 1 when (secret_id, nonce) is recorded and not expired at now_s, else 0. */
int nonce_cache_seen(struct nonce_cache *c, const char *secret_id, uint64_t nonce, uint64_t now_s);
/* Records (secret_id, nonce) until now_s + ttl_s, atomically with the check: returns 0 when it
 * was recorded, 1 when a live entry already existed (a replay that raced the first use), -1 on
 * OOM or a SecretId over NONCE_MAX_SECRET_ID bytes. */
int nonce_cache_insert(struct nonce_cache *c, const char *secret_id, uint64_t nonce, uint64_t now_s,
                       uint64_t ttl_s);

/* Live plus not-yet-pruned entries, and the evictions of live entries since creation. Each
 * stripe is read under its lock; the totals are a snapshot, not atomic as a whole. */
size_t nonce_cache_count(struct nonce_cache *c);
uint64_t nonce_cache_evictions(struct nonce_cache *c);

#endif
