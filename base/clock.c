/* clock.c - see clock.h. */
#include "clock.h"

#include <time.h>

uint64_t ab_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

uint64_t ab_now_us(void)
{
    return ab_now_ns() / 1000u;
}

int64_t ab_now_ms(void)
{
    return (int64_t)(ab_now_ns() / 1000000u);
}

int64_t ab_wall_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}
