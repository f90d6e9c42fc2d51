/*
 * tl_hist.h - latency histogram for the load tools and benches (tools/lib).
 *
 * Log-linear buckets: values below 2^TL_HIST_SUB_BITS are counted exactly;
 * each higher power-of-two range is cut into 2^TL_HIST_SUB_BITS equal
 * parts, so a reported percentile is at most ~3% above the true value.
 * Fixed memory (TL_HIST_BUCKETS counters) whatever is recorded, so a
 * program can keep one per thread and merge them at the end.
 *
 * A tl_hist_t is plain data owned by the caller (zero it with
 * tl_hist_reset); no function allocates or fails. Not thread-safe: one
 * thread records into a histogram at a time.
 */
#ifndef TL_HIST_H
#define TL_HIST_H

#include <stdint.h>

#define TL_HIST_SUB_BITS 5
/* Values of 2^TL_HIST_TOP_BITS and above share the last bucket. */
#define TL_HIST_TOP_BITS 40
#define TL_HIST_BUCKETS ((TL_HIST_TOP_BITS - TL_HIST_SUB_BITS + 1) << TL_HIST_SUB_BITS)

typedef struct {
    uint64_t counts[TL_HIST_BUCKETS];
    uint64_t total;
    uint64_t min, max; /* of the recorded values; 0 when empty */
} tl_hist_t;

void tl_hist_reset(tl_hist_t *h);
void tl_hist_record(tl_hist_t *h, uint64_t value);
/* The value at percentile P (0..100, nearest rank): the top of the bucket
 * holding that sample, never above the largest value recorded. P <= 0
 * gives the minimum; 0 for an empty histogram. */
uint64_t tl_hist_percentile(const tl_hist_t *h, double p);
/* Adds SRC's samples into DST. */
void tl_hist_merge(tl_hist_t *dst, const tl_hist_t *src);

#endif
