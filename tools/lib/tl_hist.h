/*
 * tl_hist.h - the latency histogram for the load tools and benches:
 * base/hist.h under tools/lib's names (its contract holds: log-linear
 * buckets within ~3%, fixed memory, plain data owned by the caller, no
 * allocation, one thread at a time).
 */
#ifndef TL_HIST_H
#define TL_HIST_H

#include "hist.h"

#include <stdint.h>

#define TL_HIST_SUB_BITS AB_HIST_SUB_BITS
#define TL_HIST_BUCKETS AB_HIST_BUCKETS

typedef ab_hist_t tl_hist_t;

static inline void tl_hist_reset(tl_hist_t *h)
{
    ab_hist_reset(h);
}

static inline void tl_hist_record(tl_hist_t *h, uint64_t value)
{
    ab_hist_record(h, value);
}

/* The value at percentile P (0..100, nearest rank): the top of the bucket
 * holding that sample, never above the largest value recorded. P <= 0
 * gives the minimum; 0 for an empty histogram. */
static inline uint64_t tl_hist_percentile(const tl_hist_t *h, double p)
{
    return ab_hist_percentile(h, p);
}

/* Adds SRC's samples into DST. */
static inline void tl_hist_merge(tl_hist_t *dst, const tl_hist_t *src)
{
    ab_hist_merge(dst, src);
}

#endif
