/* limit.c: which buckets a request falls in, the GCRA arithmetic, and the RateLimit header text.
 * No I/O and no clock: callers pass the time, so the same code serves the memory store, the local
 * fallback beside Redis and the unit tests (the Redis script in store_lua.h mirrors limit_gcra). */
#include "limit.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "capgate/num.h"
#include "capgate/strbuf.h"
#include "config.h"

/* period_s / rate in µs and emission * burst, both at least 1 µs. */
static void limit_rule_times(const struct config_limit *r, uint64_t *emission_us,
                             uint64_t *tolerance_us) {
    double e = r->rate > 0 ? r->period_s * 1e6 / r->rate : 1e6;
    double burst = r->burst >= 1 ? r->burst : 1;
    uint64_t em, tol;
    if (!(e >= 1)) e = 1;
    if (e > 1e15) e = 1e15;
    em = (uint64_t)llround(e);
    /* e and burst are both bounded by the config, their product is not: keep it in range of
     * llround (1e18 µs is some 30,000 years of tolerance). */
    tol = (double)em * burst > 1e18 ? (uint64_t)1e18 : (uint64_t)llround((double)em * burst);
    if (tol < em) tol = em;
    *emission_us = em;
    *tolerance_us = tol;
}

/* The longest key a loaded config can make (<prefix>rl:<rule>:app:<app>, the ids being shorter)
 * and the most buckets (one params rule, every app and global rule) fit. */
_Static_assert(CONFIG_KEY_PREFIX_MAX + 3 + CONFIG_NAME_MAX + 5 + CONFIG_NAME_MAX < LIMIT_KEY_MAX,
               "a bucket key fits");
_Static_assert(1 + CONFIG_SCOPED_LIMITS_MAX <= LIMIT_MAX_BUCKETS, "a request's buckets fit");

static int limit_fill(struct limit_bucket *b, const struct config_limit *r, const char *prefix,
                      const char *fmt_tail, const char *a, const char *c) {
    int n;
    b->rule = r;
    b->shadow = r->shadow;
    limit_rule_times(r, &b->emission_us, &b->tolerance_us);
    if (c)
        n = snprintf(b->key, sizeof b->key, "%srl:%s:%s:%s", prefix, r->name, a, c);
    else
        n = snprintf(b->key, sizeof b->key, "%srl:%s:%s%s", prefix, r->name, fmt_tail, a);
    /* a key cut short would alias another */
    return n < 0 || (size_t)n >= sizeof b->key ? -1 : 0;
}

int limit_buckets(const struct config *cfg, const char *key_prefix, const char *app,
                  int has_business_id, uint32_t business_id, int has_scene_id, uint32_t scene_id,
                  struct limit_bucket *out, size_t cap) {
    size_t n = 0;
    char bid[16], sid[16];
    if (!cfg || !out) return 0;
    if (!key_prefix) key_prefix = "";
    if (!app) app = "-";
    if (has_business_id)
        snprintf(bid, sizeof bid, "%u", (unsigned)business_id);
    else
        memcpy(bid, "-", 2);
    if (has_scene_id)
        snprintf(sid, sizeof sid, "%u", (unsigned)scene_id);
    else
        memcpy(sid, "-", 2);

    for (size_t i = 0; i < cfg->n_limits; i++) {
        const struct config_limit *r = &cfg->limits[i];
        if (r->scope != CONFIG_SCOPE_PARAMS) continue;
        if (r->app && strcmp(r->app, app) != 0) continue;
        if (!r->business_any && (!has_business_id || r->business_id != business_id)) continue;
        if (!r->scene_any && (!has_scene_id || r->scene_id != scene_id)) continue;
        if (n >= cap || limit_fill(&out[n], r, key_prefix, NULL, bid, sid) != 0) return -1;
        n++;
        break; /* the first matching params rule only */
    }
    for (size_t i = 0; i < cfg->n_limits; i++) {
        const struct config_limit *r = &cfg->limits[i];
        if (r->scope != CONFIG_SCOPE_APP) continue;
        if (r->app && strcmp(r->app, app) != 0) continue; /* another app's own rule */
        if (n >= cap || limit_fill(&out[n], r, key_prefix, "app:", app, NULL) != 0) return -1;
        n++;
    }
    for (size_t i = 0; i < cfg->n_limits; i++) {
        const struct config_limit *r = &cfg->limits[i];
        if (r->scope != CONFIG_SCOPE_GLOBAL) continue;
        if (n >= cap || limit_fill(&out[n], r, key_prefix, "", "global", NULL) != 0) return -1;
        n++;
    }
    return (int)n;
}

int limit_gcra(uint64_t now_us, uint64_t tat_us, uint64_t emission_us, uint64_t tolerance_us,
               uint64_t *new_tat_us, uint64_t *retry_after_us, uint64_t *remaining) {
    uint64_t base, next, ahead;
    if (emission_us == 0) emission_us = 1;
    base = tat_us > now_us ? tat_us : now_us;
    next = base + emission_us;
    ahead = next - now_us;
    if (ahead <= tolerance_us) {
        *new_tat_us = next;
        *retry_after_us = 0;
        *remaining = (tolerance_us - ahead) / emission_us;
        return 1;
    }
    *new_tat_us = tat_us; /* unchanged: nothing is stored for a refusal */
    *retry_after_us = ahead - tolerance_us;
    *remaining = 0;
    return 0;
}

void limit_decide(uint64_t now_us, const struct limit_bucket *b, size_t n, const uint64_t *tat_us,
                  uint64_t *new_tat_us, struct limit_outcome *o) {
    memset(o, 0, sizeof *o);
    o->denied = o->shadow_denied = -1;
    if (n > LIMIT_MAX_BUCKETS) n = LIMIT_MAX_BUCKETS;
    for (size_t i = 0; i < n; i++) {
        uint64_t nt, ra, rem;
        if (limit_gcra(now_us, tat_us[i], b[i].emission_us, b[i].tolerance_us, &nt, &ra, &rem)) {
            new_tat_us[i] = nt;
            o->remaining[i] = rem;
            o->reset_us[i] = nt - now_us;
            continue;
        }
        new_tat_us[i] = 0;
        o->remaining[i] = 0;
        o->reset_us[i] = tat_us[i] > now_us ? tat_us[i] - now_us : 0;
        if (b[i].shadow) {
            if (o->shadow_denied < 0) o->shadow_denied = (int)i;
        } else if (o->denied < 0) {
            o->denied = (int)i;
            o->retry_after_us = ra;
        }
    }
    o->allowed = o->denied < 0;
    if (o->allowed) return;
    /* refused: nothing is taken, so the admitting buckets report their tokens as they stand */
    for (size_t i = 0; i < n; i++) {
        if (!new_tat_us[i]) continue;
        o->remaining[i] += 1;
        o->reset_us[i] -= b[i].emission_us;
        new_tat_us[i] = 0;
    }
}

/* An sf-string: printable ASCII, '"' and '\' escaped; anything else becomes '?'. Runs of bytes
 * that need nothing are appended whole. */
static int limit_append_name(struct strbuf *sb, const char *name) {
    const unsigned char *p = (const unsigned char *)name, *run = p;
    if (strbuf_appendc(sb, '"')) return -1;
    for (; *p; p++) {
        if (*p != '"' && *p != '\\' && *p >= 0x20 && *p <= 0x7e) continue;
        if (strbuf_append(sb, (const char *)run, (size_t)(p - run))) return -1;
        if (*p == '"' || *p == '\\') {
            if (strbuf_appendc(sb, '\\') || strbuf_appendc(sb, (char)*p)) return -1;
        } else if (strbuf_appendc(sb, '?')) {
            return -1;
        }
        run = p + 1;
    }
    if (strbuf_append(sb, (const char *)run, (size_t)(p - run))) return -1;
    return strbuf_appendc(sb, '"');
}

/* prefix, then v in decimal. */
static int limit_append_u64(struct strbuf *sb, const char *prefix, uint64_t v) {
    char buf[NUM_U64_DIGITS];
    return strbuf_appends(sb, prefix) ||
           strbuf_append(sb, buf, (size_t)(num_put_u64(buf, v) - buf));
}

/* prefix, then the whole number v (>= 1) as "%.0f" writes it; without printf below 2^53, where a
 * double holds every integer exactly. Every request with limits writes two per rule. */
static int limit_append_whole(struct strbuf *sb, const char *prefix, double v) {
    if (v < 9007199254740992.0) return limit_append_u64(sb, prefix, (uint64_t)v);
    return strbuf_appendf(sb, "%s%.0f", prefix, v);
}

static uint64_t limit_ceil_s(uint64_t us) {
    return us / 1000000 + (us % 1000000 != 0);
}

int limit_headers(const struct limit_bucket *b, size_t n, const struct limit_outcome *o,
                  struct strbuf *policy, struct strbuf *ratelimit, struct strbuf *retry_after) {
    int first = 1;
    long pick = -1;
    for (size_t i = 0; i < n; i++) {
        const struct config_limit *r = b[i].rule;
        double q, w;
        if (b[i].shadow || !r) continue;
        /* the draft wants integers: whole tokens of the burst, the period rounded up */
        q = floor(r->burst);
        w = ceil(r->period_s);
        if (q < 1) q = 1;
        if (w < 1) w = 1;
        if (!first && strbuf_appends(policy, ", ")) return -1;
        if (limit_append_name(policy, r->name) || limit_append_whole(policy, ";q=", q) ||
            limit_append_whole(policy, ";w=", w))
            return -1;
        first = 0;
        if (!o) continue;
        if (pick < 0 || o->remaining[i] < o->remaining[pick] ||
            (o->remaining[i] == o->remaining[pick] && o->reset_us[i] > o->reset_us[pick]))
            pick = (long)i;
    }
    if (!o) return 0;
    if (!o->allowed && o->denied >= 0 && (size_t)o->denied < n) pick = o->denied;
    if (pick >= 0) {
        uint64_t r = o->allowed ? o->remaining[pick] : 0;
        if (limit_append_name(ratelimit, b[pick].rule->name) ||
            limit_append_u64(ratelimit, ";r=", r) ||
            limit_append_u64(ratelimit, ";t=", limit_ceil_s(o->reset_us[pick])))
            return -1;
    }
    if (!o->allowed) {
        uint64_t s = limit_ceil_s(o->retry_after_us);
        if (strbuf_appendf(retry_after, "%llu", (unsigned long long)(s ? s : 1))) return -1;
    }
    return 0;
}
