/* tl_hist.c - see tl_hist.h. */
#include "tl_hist.h"

#include <string.h>

#define S_SUB (1u << TL_HIST_SUB_BITS)

void tl_hist_reset(tl_hist_t *h)
{
    memset(h, 0, sizeof *h);
}

/* Bucket of V: exact below S_SUB; above, the power-of-two range picks a
 * block of S_SUB buckets and the bits under the top bit pick one in it. */
static unsigned s_bucket(uint64_t v)
{
    if (v < S_SUB)
        return (unsigned)v;
    unsigned top = 63u - (unsigned)__builtin_clzll(v);
    if (top >= TL_HIST_TOP_BITS)
        return TL_HIST_BUCKETS - 1;
    unsigned shift = top - TL_HIST_SUB_BITS;
    return ((shift + 1) << TL_HIST_SUB_BITS) + (unsigned)((v >> shift) & (S_SUB - 1));
}

/* Largest value that falls into bucket I (inverse of s_bucket). */
static uint64_t s_bucket_top(unsigned i)
{
    if (i < S_SUB)
        return i;
    unsigned shift = (i >> TL_HIST_SUB_BITS) - 1;
    uint64_t first = (uint64_t)(S_SUB + (i & (S_SUB - 1))) << shift;
    return first + ((uint64_t)1 << shift) - 1;
}

void tl_hist_record(tl_hist_t *h, uint64_t v)
{
    h->counts[s_bucket(v)]++;
    if (h->total == 0 || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->total++;
}

uint64_t tl_hist_percentile(const tl_hist_t *h, double p)
{
    if (h->total == 0)
        return 0;
    if (p <= 0)
        return h->min;
    if (p > 100)
        p = 100;
    /* Nearest rank, 1-based; the small bias keeps 99.9% of 1000 at 999
     * despite float error. */
    uint64_t rank = (uint64_t)(p / 100.0 * (double)h->total + 0.999999999);
    if (rank < 1)
        rank = 1;
    if (rank > h->total)
        rank = h->total;
    uint64_t seen = 0;
    for (unsigned i = 0; i < TL_HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen < rank)
            continue;
        if (i == TL_HIST_BUCKETS - 1)
            return h->max; /* the overflow bucket has no top of its own */
        uint64_t top = s_bucket_top(i);
        return top < h->max ? top : h->max;
    }
    return h->max;
}

void tl_hist_merge(tl_hist_t *dst, const tl_hist_t *src)
{
    if (src->total == 0)
        return;
    for (unsigned i = 0; i < TL_HIST_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
    if (dst->total == 0 || src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    dst->total += src->total;
}
