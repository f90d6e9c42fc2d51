/*
 * tl_clock.h - the monotonic clock for the programs outside the broker
 * (tools, worker, benches). Part of tools/lib, which those programs share
 * instead of the library's private common/ (they build against the public
 * agentbus.h only).
 *
 * Every function is thread-safe and cannot fail (CLOCK_MONOTONIC exists on
 * every Linux this project supports).
 */
#ifndef TL_CLOCK_H
#define TL_CLOCK_H

#include <stdint.h>

/* Nanoseconds, microseconds and milliseconds since an arbitrary fixed
 * point (CLOCK_MONOTONIC): only differences mean anything. */
uint64_t tl_now_ns(void);
uint64_t tl_now_us(void);
int64_t tl_now_ms(void);

#endif
