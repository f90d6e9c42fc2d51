/* tl_clock.c - see tl_clock.h. */
#include "tl_clock.h"

#include <time.h>

uint64_t tl_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t tl_now_us(void)
{
    return tl_now_ns() / 1000u;
}

int64_t tl_now_ms(void)
{
    return (int64_t)(tl_now_ns() / 1000000u);
}
