/* upaddr.c: see upaddr.h. */
#include "upaddr.h"

#include <string.h>

int upaddr_find(const struct upaddr_list *l, const char *text) {
    for (unsigned i = 0; i < l->n; i++)
        if (strcmp(l->a[i].text, text) == 0) return (int)i;
    return -1;
}

int upaddr_set(struct upaddr_list *l, const char *const *texts, unsigned n) {
    struct upaddr_list old = *l;
    unsigned kept = 0;

    l->n = 0;
    for (unsigned i = 0; i < n && l->n < UPADDR_MAX; i++) {
        size_t len = strlen(texts[i]);
        if (len == 0 || len >= UPADDR_TEXT || upaddr_find(l, texts[i]) >= 0) continue;
        struct upaddr *a = &l->a[l->n++];
        int was = upaddr_find(&old, texts[i]);
        if (was >= 0) {
            *a = old.a[was];
            kept++;
        } else {
            memset(a, 0, sizeof(*a));
            memcpy(a->text, texts[i], len + 1);
        }
    }
    if (l->next >= l->n) l->next = 0;
    return kept != old.n || kept != l->n;
}

uint64_t upaddr_hold_ms(unsigned fails) {
    uint64_t hold = UPADDR_HOLD_MIN_MS;

    for (unsigned i = 1; i < fails && hold < UPADDR_HOLD_MAX_MS; i++) hold *= 2;
    return hold < UPADDR_HOLD_MAX_MS ? hold : UPADDR_HOLD_MAX_MS;
}

int upaddr_pick(struct upaddr_list *l, uint64_t now_ms, uint32_t tried) {
    int soonest = -1;

    for (unsigned k = 0; k < l->n; k++) {
        unsigned i = (l->next + k) % l->n;
        if (tried & (1u << i)) continue;
        if (l->a[i].held_until_ms <= now_ms) {
            l->next = (i + 1) % l->n;
            return (int)i;
        }
        if (soonest < 0 || l->a[i].held_until_ms < l->a[soonest].held_until_ms) soonest = (int)i;
    }
    /* every address left is held: the one that recovers first, rather than none */
    if (soonest >= 0) l->next = ((unsigned)soonest + 1) % l->n;
    return soonest;
}

uint64_t upaddr_failed(struct upaddr_list *l, const char *text, uint64_t now_ms) {
    int i = upaddr_find(l, text);
    uint64_t hold;

    if (i < 0) return 0;
    struct upaddr *a = &l->a[i];
    a->connect_failures++;
    /* connections that were dialling it together fail together: one failure */
    if (a->held_until_ms > now_ms) return a->held_until_ms - now_ms;
    if (a->fails < 32) a->fails++;
    hold = upaddr_hold_ms(a->fails);
    a->held_until_ms = now_ms + hold;
    return hold;
}

int upaddr_ok(struct upaddr_list *l, const char *text) {
    int i = upaddr_find(l, text);

    if (i < 0 || l->a[i].fails == 0) return 0;
    l->a[i].fails = 0;
    l->a[i].held_until_ms = 0;
    return 1;
}
