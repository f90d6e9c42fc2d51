/*
 * hist.h - log-linear latency histogram (HDR-style), bounded memory
 * (base/: built into both common/ and tools/lib, see docs/architecture.md).
 *
 * Values (microseconds, or any unit) fall into buckets: values below 2^SUB
 * are counted exactly; above, each power-of-two range is split into 2^SUB
 * equal sub-buckets, so a reported percentile is within 1/2^SUB (about 3%
 * with SUB = 5) of the true value. Memory is fixed: AB_HIST_BUCKETS
 * counters, whatever is recorded, so a program can keep one per thread and
 * merge them at the end. An ab_hist_t is plain data owned by the caller
 * (zero it with ab_hist_reset); no function allocates or fails. Not
 * thread-safe: one thread records into a histogram at a time.
 */
#ifndef AB_HIST_H
#define AB_HIST_H

#include <stdint.h>

#define AB_HIST_SUB_BITS 5
#define AB_HIST_SUB (1u << AB_HIST_SUB_BITS)
/* Values up to 2^40 - 1 are resolved; larger ones go to the top bucket. */
#define AB_HIST_MAX_BITS 40
#define AB_HIST_BUCKETS ((AB_HIST_MAX_BITS - AB_HIST_SUB_BITS + 1) * AB_HIST_SUB)

typedef struct {
    uint64_t counts[AB_HIST_BUCKETS];
    uint64_t total;
    uint64_t max;
    uint64_t min;
    uint64_t sum; /* of every value recorded (saturates): a Prometheus _sum */
} ab_hist_t;

void ab_hist_reset(ab_hist_t *h);
void ab_hist_record(ab_hist_t *h, uint64_t value);
/* Value at percentile P (0..100]: the highest value of the bucket holding
 * the P-th percentile sample, capped at the maximum seen. 0 when empty. */
uint64_t ab_hist_percentile(const ab_hist_t *h, double p);
/* Adds SRC's counts into DST. */
void ab_hist_merge(ab_hist_t *dst, const ab_hist_t *src);

/* Bucket index of VALUE and the largest value in bucket I (exposed for tests). */
unsigned ab_hist_bucket(uint64_t value);
uint64_t ab_hist_bucket_high(unsigned i);

#endif
