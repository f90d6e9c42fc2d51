/*
 * tl_clock.h - the monotonic clock for the programs outside the broker
 * (tools, worker, gateway, benches): base/clock.h under tools/lib's names.
 * Thread-safe; cannot fail; only differences mean anything.
 */
#ifndef TL_CLOCK_H
#define TL_CLOCK_H

#include "clock.h"

#include <stdint.h>

static inline uint64_t tl_now_ns(void)
{
    return ab_now_ns();
}

static inline uint64_t tl_now_us(void)
{
    return ab_now_us();
}

static inline int64_t tl_now_ms(void)
{
    return ab_now_ms();
}

#endif
