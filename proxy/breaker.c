/* breaker.c: the circuit breaker's state machine (see breaker.h). Pure arithmetic on the times
 * the caller passes, so it is tested with explicit clocks. */
#include "breaker.h"

#include "capgate/log.h"

static const char *const breaker_state_names[] = {
    [BREAKER_CLOSED] = "closed",
    [BREAKER_OPEN] = "open",
    [BREAKER_HALF_OPEN] = "half-open",
};

const char *breaker_state_name(enum breaker_state s)
{
    if ((unsigned)s >= sizeof(breaker_state_names) / sizeof(breaker_state_names[0]))
        return "unknown";
    return breaker_state_names[s];
}

static void set_state(struct breaker *b, enum breaker_state to, uint64_t now_ms)
{
    if (b->state != to)
        log_debug("breaker: %s -> %s", breaker_state_name(b->state), breaker_state_name(to));
    b->state = to;
    b->probe_inflight = 0;
    if (to == BREAKER_OPEN)
        b->opened_at_ms = now_ms;
    if (to == BREAKER_CLOSED)
        b->consecutive = 0;
}

void breaker_init(struct breaker *b, unsigned failures, unsigned open_ms)
{
    b->state = BREAKER_CLOSED;
    b->threshold = failures ? failures : 1;
    b->open_ms = open_ms;
    b->consecutive = 0;
    b->opened_after = 0;
    b->opened_at_ms = 0;
    b->probe_inflight = 0;
}

int breaker_allow(struct breaker *b, uint64_t now_ms)
{
    switch (b->state) {
    case BREAKER_CLOSED:
        return 1;
    case BREAKER_OPEN:
        if (now_ms < b->opened_at_ms + b->open_ms)
            return 0;
        set_state(b, BREAKER_HALF_OPEN, now_ms);
        b->probe_inflight = 1;
        return 1;
    case BREAKER_HALF_OPEN:
        if (b->probe_inflight)
            return 0;
        b->probe_inflight = 1;
        return 1;
    }
    return 0;
}

void breaker_record(struct breaker *b, int success, uint64_t now_ms)
{
    switch (b->state) {
    case BREAKER_CLOSED:
        if (success) {
            b->consecutive = 0;
            break;
        }
        b->consecutive++;
        if (b->consecutive >= b->threshold) {
            b->opened_after = b->consecutive;
            set_state(b, BREAKER_OPEN, now_ms);
        }
        break;
    case BREAKER_OPEN:
        break;
    case BREAKER_HALF_OPEN:
        if (success) {
            set_state(b, BREAKER_CLOSED, now_ms);
        } else {
            b->consecutive++;
            b->opened_after = b->consecutive;
            set_state(b, BREAKER_OPEN, now_ms);
        }
        break;
    }
}

enum breaker_state breaker_state(const struct breaker *b)
{
    return b->state;
}

uint64_t breaker_retry_in_ms(const struct breaker *b, uint64_t now_ms)
{
    uint64_t due;

    if (b->state != BREAKER_OPEN)
        return 0;
    due = b->opened_at_ms + b->open_ms;
    return now_ms >= due ? 0 : due - now_ms;
}

unsigned breaker_opened_after(const struct breaker *b)
{
    return b->opened_after;
}
