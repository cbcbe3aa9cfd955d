/* breaker.h: a circuit breaker with no I/O; the caller passes the time in. It stops calls to an
 * upstream that keeps failing and lets one probe through after a pause. One breaker serves all of
 * a process's workers (the upstream is one service): its fields are C11 atomics and every
 * transition is a compare-and-swap, so workers share it without a lock. */
#ifndef CAPGATE_BREAKER_H
#define CAPGATE_BREAKER_H
#include <stdatomic.h>
#include <stdint.h>

/* CLOSED: every call goes ahead; `failures` consecutive failures open the breaker.
 * OPEN: every call is rejected until open_ms have passed since it opened; the next
 *       breaker_allow() after that moves to HALF_OPEN and admits that call as the probe.
 * HALF_OPEN: one probe at a time; other calls are rejected while it runs. Its result decides:
 *       success closes the breaker, failure re-opens it (a new open_ms pause from that moment). */
enum breaker_state { BREAKER_CLOSED, BREAKER_OPEN, BREAKER_HALF_OPEN };

/* Embedded by the caller; fields are private, read them through the functions below. */
struct breaker {
    atomic_int state;                   /* enum breaker_state */
    unsigned threshold;                 /* consecutive failures that open it (>= 1); set at init */
    unsigned open_ms;                   /* pause before a probe; set at init */
    atomic_uint consecutive;            /* failures in a row while closed */
    atomic_uint opened_after;           /* the failure count that last opened it, for messages */
    atomic_uint_least64_t opened_at_ms; /* when it last opened */
    atomic_int probe_inflight;          /* HALF_OPEN: the probe was admitted and has not reported */
};

/* failures 0 is treated as 1. */
void breaker_init(struct breaker *b, unsigned failures, unsigned open_ms);
/* 1: go ahead (the call must later be reported with breaker_record); 0: rejected. In HALF_OPEN
 * the admitted call is the probe. */
int breaker_allow(struct breaker *b, uint64_t now_ms);
/* The outcome of an admitted call. In OPEN a result is ignored (a call admitted before the
 * breaker opened); in HALF_OPEN any result is taken as the probe's. */
void breaker_record(struct breaker *b, int success, uint64_t now_ms);
/* The stored state: an OPEN breaker whose pause is over still says OPEN until the next
 * breaker_allow(). */
enum breaker_state breaker_state(const struct breaker *b);
/* "closed", "open", "half-open". */
const char *breaker_state_name(enum breaker_state s);
/* OPEN: milliseconds until a probe is admitted (0 when due); 0 in the other states. */
uint64_t breaker_retry_in_ms(const struct breaker *b, uint64_t now_ms);
/* Consecutive failures when the breaker last opened (failed probes included), for messages. */
unsigned breaker_opened_after(const struct breaker *b);

#endif
