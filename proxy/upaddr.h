/* upaddr.h: the addresses of an upstream host and the choice of one for a new connection, with
 * no I/O (the caller passes the time in; proxy/upstream.c resolves and connects). New
 * connections rotate over the addresses; one whose connect failed is skipped for a hold that
 * doubles with each failure in a row (UPADDR_HOLD_MIN_MS .. UPADDR_HOLD_MAX_MS) and ends at its
 * next successful connect. When every address not yet tried by an attempt is held, the one whose
 * hold ends first is dialled anyway: a host is never left with nothing to try. */
#ifndef CAPGATE_UPADDR_H
#define CAPGATE_UPADDR_H
#include <stdint.h>

#define UPADDR_MAX 16  /* addresses kept of one resolution (the first ones) */
#define UPADDR_TEXT 48 /* a numeric IPv4 or IPv6 address, NUL included */
#define UPADDR_HOLD_MIN_MS 2000u
#define UPADDR_HOLD_MAX_MS 60000u

struct upaddr {
    char text[UPADDR_TEXT];    /* numeric, as given to upaddr_set */
    uint64_t held_until_ms;    /* skipped by upaddr_pick before then; 0: not held */
    unsigned fails;            /* connect failures in a row */
    uint64_t connect_failures; /* ever, for the operator */
};

struct upaddr_list {
    struct upaddr a[UPADDR_MAX];
    unsigned n;
    unsigned next; /* where the next pick starts */
};

/* Replaces the list with texts[0..n) (duplicates and those past UPADDR_MAX dropped, longer than
 * UPADDR_TEXT - 1 skipped); an address that stays keeps its failures and hold. Returns 1 when the
 * set of addresses changed, 0 when not. */
int upaddr_set(struct upaddr_list *l, const char *const *texts, unsigned n);
/* The index of the address for a new connection, skipping the indexes in tried (bit i: a[i]
 * already dialled by this attempt); -1 when all have been tried. */
int upaddr_pick(struct upaddr_list *l, uint64_t now_ms, uint32_t tried);
/* The hold after `fails` failures in a row (fails >= 1). */
uint64_t upaddr_hold_ms(unsigned fails);
/* A connect to text failed / succeeded; an address no longer in the list is ignored. failed
 * returns the hold given (0 when text is unknown); ok returns 1 when the address was held or had
 * failed before (it recovered). */
uint64_t upaddr_failed(struct upaddr_list *l, const char *text, uint64_t now_ms);
int upaddr_ok(struct upaddr_list *l, const char *text);
/* The index of text, or -1. */
int upaddr_find(const struct upaddr_list *l, const char *text);

#endif
