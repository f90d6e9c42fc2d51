/*
 * test_hist.c - histogram percentiles against a sorted reference.
 */
#include "hist.h"
#include "test.h"

#include <math.h>
#include <stdint.h>


static int s_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array. */
static uint64_t s_exact(const uint64_t *v, size_t n, double p)
{
    /* The epsilon keeps float error (99.9/100*1e5 = 99900.00000000001) from
     * pushing an exact rank up by one. */
    size_t rank = (size_t)ceil(p / 100.0 * (double)n - 1e-6);
    if (rank < 1)
        rank = 1;
    return v[rank - 1];
}

typedef uint64_t(s_gen_fn)(void);
static uint64_t s_uniform(void) { return t_rand() % 100000; }
static uint64_t s_expo(void)
{
    return (uint64_t)(-log((double)(t_rand() % 1000000 + 1) / 1e6) * 500.0);
}
static uint64_t s_const(void) { return 777; }
static uint64_t s_bimodal(void)
{
    return t_rand() % 2 ? 50 + t_rand() % 10 : 90000 + t_rand() % 5000;
}
static uint64_t s_wide(void) { return 1 + t_rand() % 1000000000ull; }
static uint64_t s_small(void) { return t_rand() % 32; }

static void s_compare(const char *name, s_gen_fn *gen, size_t n)
{
    uint64_t *v = malloc(n * sizeof *v);
    ab_hist_t *h = malloc(sizeof *h);
    REQUIRE(v && h);
    ab_hist_reset(h);
    for (size_t i = 0; i < n; i++) {
        v[i] = gen();
        ab_hist_record(h, v[i]);
    }
    qsort(v, n, sizeof *v, s_cmp);
    const double ps[] = {50, 90, 95, 99, 99.9, 100};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) {
        uint64_t want = s_exact(v, n, ps[i]), got = ab_hist_percentile(h, ps[i]);
        /* Never below the truth; above it by at most one sub-bucket. */
        double tol = (double)want / AB_HIST_SUB + 1;
        if (got < want || (double)(got - want) > tol)
            fprintf(stderr, "%s p%g: got %llu want %llu\n", name, ps[i],
                    (unsigned long long)got, (unsigned long long)want);
        CHECK_RANGE(got, want, (double)want + tol);
    }
    CHECK_U64(h->total, n);
    CHECK_U64(h->max, v[n - 1]);
    free(v);
    free(h);
}

static void s_test_edges(void)
{
    ab_hist_t h, a, b;
    ab_hist_reset(&h);
    CHECK_U64(ab_hist_percentile(&h, 50), 0);
    for (uint64_t x = 0; x < AB_HIST_SUB; x++) /* small values are exact */
        CHECK_U64(ab_hist_bucket_high(ab_hist_bucket(x)), x);
    unsigned prev = 0;
    int mono = 1, covers = 1;
    for (uint64_t x = 1; x < (1ull << 45); x = x * 3 / 2 + 1) {
        unsigned bk = ab_hist_bucket(x);
        mono &= bk >= prev;
        covers &= x >= (1ull << AB_HIST_MAX_BITS) || ab_hist_bucket_high(bk) >= x;
        prev = bk;
    }
    CHECK_TRUE(mono);
    CHECK_TRUE(covers);
    CHECK_TRUE(ab_hist_bucket(UINT64_MAX) == AB_HIST_BUCKETS - 1);
    /* Values past 2^40 land in the top bucket; the percentile is capped at max. */
    ab_hist_record(&h, 1ull << 50);
    CHECK_U64(ab_hist_percentile(&h, 100), 1ull << 50);
    /* merge == recording into one */
    ab_hist_reset(&a);
    ab_hist_reset(&b);
    ab_hist_reset(&h);
    uint64_t want_sum = 0;
    for (int i = 0; i < 5000; i++) {
        uint64_t x = t_rand() % 50000;
        ab_hist_record(i % 2 ? &a : &b, x);
        ab_hist_record(&h, x);
        want_sum += x;
    }
    ab_hist_merge(&a, &b);
    CHECK_TRUE(memcmp(&a, &h, sizeof a) == 0);
    CHECK_U64(h.sum, want_sum); /* exact: /metrics exposes it as the _sum */
    ab_hist_record(&h, UINT64_MAX); /* saturates instead of wrapping */
    CHECK_U64(h.sum, UINT64_MAX);
    CHECK_TRUE(sizeof(ab_hist_t) < 16 * 1024); /* fixed, whatever is recorded */
}

int main(void)
{
    s_compare("uniform", s_uniform, 100000);
    s_compare("exponential", s_expo, 100000);
    s_compare("constant", s_const, 1000);
    s_compare("bimodal", s_bimodal, 50001);
    s_compare("wide", s_wide, 100000);
    s_compare("small", s_small, 1000);
    s_compare("single", s_const, 1);
    s_test_edges();
    return TEST_DONE("test_hist");
}
