/* limit.h: rate-limit decisions (docs/design.md "Rate limits") without I/O: which buckets a request
 * falls in, the GCRA arithmetic both stores share, and the RateLimit/RateLimit-Policy/Retry-After
 * header text. The store (store.h) applies the arithmetic atomically over all of a request's
 * buckets. */
#ifndef CAPGATE_LIMIT_H
#define CAPGATE_LIMIT_H
#include <stddef.h>
#include <stdint.h>

struct config;
struct config_limit;
struct config_app;
struct strbuf;

#define LIMIT_MAX_BUCKETS 16
#define LIMIT_KEY_MAX 256

/* One bucket a request must pass. Keys are named by rule name and ids, never by config version, so
 * counters survive a reload: <prefix>rl:<rule>:<businessId|->:<sceneId|->, <prefix>rl:<rule>:app:<app>,
 * <prefix>rl:<rule>:global. */
struct limit_bucket {
    const struct config_limit *rule; /* borrowed from the config the request holds */
    char key[LIMIT_KEY_MAX];
    uint64_t emission_us;  /* period_s / rate, in microseconds (>= 1) */
    uint64_t tolerance_us; /* emission_us * burst: how far the TAT may run ahead of now */
    int shadow;
};

/* The buckets for one request: the first matching params rule (file order; "*" matches any value, an
 * absent businessId/sceneId is the value "-"; a rule with "app" matches only that app), then every
 * scope:app rule (bucket per app) without "app" or naming this app, then every scope:global rule. Returns the count (0..cap), or -1 when a key would not fit LIMIT_KEY_MAX or the
 * buckets would not fit cap: a rule is never skipped, so the caller refuses the request (fails
 * closed). A loaded config never gets -1 for cap LIMIT_MAX_BUCKETS: config.c bounds names, the key
 * prefix and the number of app and global rules (config.h) so that every key and bucket fits. */
int limit_buckets(const struct config *cfg, const char *key_prefix, const char *app,
                  int has_business_id, uint32_t business_id, int has_scene_id, uint32_t scene_id,
                  struct limit_bucket *out, size_t cap);

/* GCRA for one bucket. tat_us is the stored theoretical arrival time (0 when none). Sets *new_tat_us
 * (the value to store when the whole request is admitted; tat_us unchanged when refused),
 * *retry_after_us (0 when allowed: how long until this request would be admitted) and *remaining
 * (tokens left after this request, 0 when refused). Allowed iff max(tat, now) + emission - now <=
 * tolerance. Returns 1 allowed, 0 refused. */
int limit_gcra(uint64_t now_us, uint64_t tat_us, uint64_t emission_us, uint64_t tolerance_us,
               uint64_t *new_tat_us, uint64_t *retry_after_us, uint64_t *remaining);

/* The outcome of checking all of a request's buckets. */
struct limit_outcome {
    int allowed;       /* every enforcing bucket admitted (tokens taken from all, or from none) */
    int denied;        /* index of the first enforcing bucket that refused, -1 when none */
    int shadow_denied; /* index of the first shadow bucket that would have refused, -1 when none */
    uint64_t retry_after_us; /* of the denied bucket; 0 when allowed */
    int replay;              /* the Nonce key sent with the check (store_limit_nonce) was already
                            * claimed: nothing was checked or taken; allowed 0, denied -1 */
    /* Per bucket: tokens left, and the time until the bucket is full again. When the request is
     * refused nothing was taken, so a bucket that would have admitted reports its tokens as they
     * stand (one more than it would have after taking), and a refusing bucket reports 0. */
    uint64_t remaining[LIMIT_MAX_BUCKETS];
    uint64_t reset_us[LIMIT_MAX_BUCKETS];
};

/* The decision over all of a request's buckets at now_us, given each bucket's stored TAT (0 when
 * none): the request is allowed iff every enforcing bucket admits. Fills *o and new_tat_us[i], the
 * TAT to store for bucket i, or 0 when bucket i must not be written (the whole request refused, or a
 * shadow bucket that would refuse). Both stores apply exactly this; store_lua.h mirrors it. */
void limit_decide(uint64_t now_us, const struct limit_bucket *b, size_t n, const uint64_t *tat_us,
                  uint64_t *new_tat_us, struct limit_outcome *o);

/* Headers for a reply: RateLimit-Policy and RateLimit in the IETF httpapi draft syntax
 * ("name";q=<burst>;w=<period_s>, "name";r=<remaining>;t=<seconds>) for the enforcing buckets, and
 * Retry-After (whole seconds, rounded up) when refused. Appends "Name: value\r\n"-free values to the
 * given buffers (empty when there is nothing to say). 0/-1 (OOM).
 *  - RateLimit-Policy lists every enforcing bucket, comma-separated; q is floor(burst) and w is
 *    period_s rounded up (the draft wants integers), both at least 1.
 *  - RateLimit names one bucket: the denied one when refused (r=0), else the one with the fewest
 *    tokens left (ties: the longest reset); t is its reset in seconds, rounded up.
 *  - Retry-After: retry_after_us in seconds, rounded up, at least 1; only when refused.
 * o may be NULL (no outcome, e.g. the store failed): then only RateLimit-Policy. */
int limit_headers(const struct limit_bucket *b, size_t n, const struct limit_outcome *o,
                  struct strbuf *policy, struct strbuf *ratelimit, struct strbuf *retry_after);

#endif
