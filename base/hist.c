/* hist.c - see hist.h. */
#include "hist.h"

#include <string.h>

void ab_hist_reset(ab_hist_t *h)
{
    memset(h, 0, sizeof *h);
}

unsigned ab_hist_bucket(uint64_t v)
{
    if (v < AB_HIST_SUB)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v); /* >= SUB_BITS */
    if (msb >= AB_HIST_MAX_BITS)
        return AB_HIST_BUCKETS - 1;
    unsigned shift = msb - AB_HIST_SUB_BITS;
    /* Sub-bucket: the SUB_BITS bits below the top bit. */
    unsigned sub = (unsigned)((v >> shift) & (AB_HIST_SUB - 1));
    return (shift + 1) * AB_HIST_SUB + sub;
}

uint64_t ab_hist_bucket_high(unsigned i)
{
    if (i < AB_HIST_SUB)
        return i;
    unsigned shift = i / AB_HIST_SUB - 1;
    uint64_t sub = i % AB_HIST_SUB;
    uint64_t low = ((uint64_t)AB_HIST_SUB + sub) << shift;
    return low + ((uint64_t)1 << shift) - 1;
}

void ab_hist_record(ab_hist_t *h, uint64_t v)
{
    h->counts[ab_hist_bucket(v)]++;
    if (h->total == 0 || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->total++;
    h->sum = h->sum + v < h->sum ? UINT64_MAX : h->sum + v;
}

uint64_t ab_hist_percentile(const ab_hist_t *h, double p)
{
    if (h->total == 0)
        return 0;
    if (p <= 0)
        return h->min;
    if (p > 100)
        p = 100;
    /* Rank of the sample at percentile p (1-based, nearest-rank method). */
    uint64_t rank = (uint64_t)((p / 100.0) * (double)h->total + 0.999999999);
    if (rank < 1)
        rank = 1;
    if (rank > h->total)
        rank = h->total;
    uint64_t seen = 0;
    for (unsigned i = 0; i < AB_HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            if (i == AB_HIST_BUCKETS - 1)
                return h->max; /* overflow bucket: no upper edge of its own */
            uint64_t hi = ab_hist_bucket_high(i);
            return hi > h->max ? h->max : hi;
        }
    }
    return h->max;
}

void ab_hist_merge(ab_hist_t *dst, const ab_hist_t *src)
{
    if (src->total == 0)
        return;
    for (unsigned i = 0; i < AB_HIST_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
    if (dst->total == 0 || src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    dst->total += src->total;
    dst->sum = dst->sum + src->sum < dst->sum ? UINT64_MAX : dst->sum + src->sum;
}
