/* clock.c: wall and monotonic clocks in microseconds. */
#include "capgate/clock.h"

#include <time.h>

static uint64_t clock_read(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t clock_wall_us(void) {
    return clock_read(CLOCK_REALTIME);
}
uint64_t clock_mono_us(void) {
    return clock_read(CLOCK_MONOTONIC);
}
