/* etable.h: a string-keyed hash table whose entries expire in insertion order, with a cap that
 * evicts the oldest entry. It holds the mock's nonces, captcha URLs and tickets: each kind has
 * one fixed lifetime, so the oldest entry is always the next to expire. */
#ifndef CAPGATE_ETABLE_H
#define CAPGATE_ETABLE_H
#include <stddef.h>
#include <stdint.h>

struct etable;
/* Frees a value the table owns (called on remove, expiry, eviction, clear, free). */
typedef void (*etable_free_fn)(void *value);

/* max_entries > 0; free_value may be NULL (values not owned). NULL on OOM. */
struct etable *etable_new(size_t max_entries, etable_free_fn free_value);
void etable_free(struct etable *t); /* accepts NULL */
/* Inserts key (copied) with value (owned when free_value is set) expiring at expire_us. An
 * existing entry with the same key is replaced and becomes the newest. When the table is full the
 * oldest entry is evicted first. 0, or -1 on OOM (value not taken). */
int etable_put(struct etable *t, const char *key, size_t key_len, void *value, uint64_t expire_us);
/* 1 and *value (borrowed, may be NULL) when key is present, else 0. Expiry is not checked here:
 * call etable_expire first. */
int etable_find(const struct etable *t, const char *key, size_t key_len, void **value);
/* 1 when removed, 0 when absent. */
int etable_remove(struct etable *t, const char *key, size_t key_len);
/* Removes entries with expire_us <= now_us, oldest first, stopping at the first live one.
 * Returns how many went. */
size_t etable_expire(struct etable *t, uint64_t now_us);
void etable_clear(struct etable *t);
size_t etable_count(const struct etable *t);
/* Entries evicted because the table was full, since creation. */
uint64_t etable_evicted(const struct etable *t);

#endif
