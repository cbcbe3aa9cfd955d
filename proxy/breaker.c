/* breaker.c: the circuit breaker's state machine (see breaker.h). Pure arithmetic on the times
 * the caller passes, so it is tested with explicit clocks. */
#include "breaker.h"

#include "capgate/log.h"

static const char *const breaker_state_names[] = {
    [BREAKER_CLOSED] = "closed",
    [BREAKER_OPEN] = "open",
    [BREAKER_HALF_OPEN] = "half-open",
};

const char *breaker_state_name(enum breaker_state s) {
    if ((unsigned)s >= sizeof(breaker_state_names) / sizeof(breaker_state_names[0]))
        return "unknown";
    return breaker_state_names[s];
}

static enum breaker_state load_state(const struct breaker *b) {
    return (enum breaker_state)atomic_load(&((struct breaker *)b)->state);
}

/* Moves from `from` to `to` if no other thread moved first; 1 when this call made the move. */
static int move_state(struct breaker *b, enum breaker_state from, enum breaker_state to) {
    int expected = (int)from;

    if (!atomic_compare_exchange_strong(&b->state, &expected, (int)to)) return 0;
    /* Rare and operationally important (upstream calls are refused while it is open). */
    log_warn("upstream breaker: %s -> %s", breaker_state_name(from), breaker_state_name(to));
    return 1;
}

void breaker_init(struct breaker *b, unsigned failures, unsigned open_ms) {
    atomic_init(&b->state, BREAKER_CLOSED);
    b->threshold = failures ? failures : 1;
    b->open_ms = open_ms;
    atomic_init(&b->consecutive, 0);
    atomic_init(&b->opened_after, 0);
    atomic_init(&b->opened_at_ms, 0);
    atomic_init(&b->probe_inflight, 0);
}

int breaker_allow(struct breaker *b, uint64_t now_ms) {
    int idle = 0;

    switch (load_state(b)) {
    case BREAKER_CLOSED: return 1;
    case BREAKER_OPEN:
        if (now_ms < atomic_load(&b->opened_at_ms) + b->open_ms) return 0;
        /* the pause is over: the one caller that moves it to HALF_OPEN is the probe */
        atomic_store(&b->probe_inflight, 1);
        if (move_state(b, BREAKER_OPEN, BREAKER_HALF_OPEN)) return 1;
        return 0;
    case BREAKER_HALF_OPEN: return atomic_compare_exchange_strong(&b->probe_inflight, &idle, 1);
    }
    return 0;
}

/* Opens the breaker from `from` after `failures` consecutive failures. */
static void open_from(struct breaker *b, enum breaker_state from, unsigned failures,
                      uint64_t now_ms) {
    atomic_store(&b->opened_at_ms, now_ms);
    atomic_store(&b->opened_after, failures);
    if (move_state(b, from, BREAKER_OPEN)) atomic_store(&b->probe_inflight, 0);
}

void breaker_record(struct breaker *b, int success, uint64_t now_ms) {
    unsigned n;

    switch (load_state(b)) {
    case BREAKER_CLOSED:
        if (success) {
            atomic_store(&b->consecutive, 0);
            break;
        }
        n = atomic_fetch_add(&b->consecutive, 1) + 1;
        if (n >= b->threshold) open_from(b, BREAKER_CLOSED, n, now_ms);
        break;
    case BREAKER_OPEN: break;
    case BREAKER_HALF_OPEN:
        if (success) {
            atomic_store(&b->consecutive, 0);
            if (move_state(b, BREAKER_HALF_OPEN, BREAKER_CLOSED))
                atomic_store(&b->probe_inflight, 0);
        } else {
            n = atomic_fetch_add(&b->consecutive, 1) + 1;
            open_from(b, BREAKER_HALF_OPEN, n, now_ms);
        }
        break;
    }
}

enum breaker_state breaker_state(const struct breaker *b) {
    return load_state(b);
}

uint64_t breaker_retry_in_ms(const struct breaker *b, uint64_t now_ms) {
    uint64_t due;

    if (load_state(b) != BREAKER_OPEN) return 0;
    due = atomic_load(&((struct breaker *)b)->opened_at_ms) + b->open_ms;
    return now_ms >= due ? 0 : due - now_ms;
}

unsigned breaker_opened_after(const struct breaker *b) {
    return atomic_load(&((struct breaker *)b)->opened_after);
}
