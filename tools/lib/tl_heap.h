/*
 * tl_heap.h - glibc's heap settings for the programs outside the broker
 * (worker, benches): base/heap_tune.h, unless the user set a malloc
 * tunable. Call first thing in main, before any thread starts.
 */
#ifndef TL_HEAP_H
#define TL_HEAP_H

#include "heap_tune.h"

#include <stdlib.h>

/* 1 when the thresholds were set, 0 when left to the user or refused. */
static inline int tl_heap_tune(void)
{
    return ab_heap_user_set(getenv("GLIBC_TUNABLES")) ? 0 : ab_heap_tune();
}

#endif
