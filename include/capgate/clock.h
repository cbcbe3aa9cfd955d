/* clock.h: wall and monotonic clocks in microseconds. */
#ifndef CAPGATE_CLOCK_H
#define CAPGATE_CLOCK_H
#include <stdint.h>

uint64_t clock_wall_us(void); /* CLOCK_REALTIME, Unix epoch */
uint64_t clock_mono_us(void); /* CLOCK_MONOTONIC */

#endif
