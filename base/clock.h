/*
 * clock.h - the monotonic clock (base/: built into both common/ and
 * tools/lib, see docs/architecture.md).
 *
 * Every function is thread-safe and cannot fail (CLOCK_MONOTONIC exists on
 * every Linux this project supports). Only differences mean anything: the
 * origin is an arbitrary fixed point.
 */
#ifndef AB_CLOCK_H
#define AB_CLOCK_H

#include <stdint.h>

uint64_t ab_now_ns(void);
uint64_t ab_now_us(void);
int64_t ab_now_ms(void);
/* Milliseconds since the epoch (CLOCK_REALTIME): for times kept past this
 * process or shared with other machines (the cache's L3 file and Redis);
 * the monotonic clock's origin changes at every boot. */
int64_t ab_wall_ms(void);

#endif
