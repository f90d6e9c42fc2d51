/* test_idmap.c - the id map against a plain array model, through growth and
 * random deletions that exercise backward shifting; then shrinking: a table
 * that held a burst gives its memory back, never below its initial size,
 * without resizing at every put/delete at the boundary. */
#include "idmap.h"
#include "test.h"

enum { N = 20000 };

/* A burst of 200k ids, then all but a few deleted: the table shrinks with
 * the entries still found; a swinging count does not resize each swing; a
 * zeroed map is usable and shrinks to 16. */
static void s_shrink(void)
{
    ab_idmap_t m;
    REQUIRE(ab_idmap_init(&m, 1024) == 0);
    CHECK_EQ(m.cap, 1024);
    for (uint64_t k = 1; k <= 200000; k++)
        REQUIRE(ab_idmap_put(&m, k, (void *)(uintptr_t)(k * 3)) == 0);
    size_t peak = m.cap;
    CHECK_TRUE(peak >= 400000);
    int wrong = 0;
    for (uint64_t k = 1; k <= 200000; k++)
        if (k % 1000 != 0)
            wrong += (uintptr_t)ab_idmap_del(&m, k) != k * 3;
    CHECK_EQ(wrong, 0);
    CHECK_EQ(ab_idmap_size(&m), 200);
    CHECK_TRUE(m.cap <= 200 * 32); /* at most 1/32 full: memory given back */
    for (uint64_t k = 1000; k <= 200000; k += 1000)
        wrong += (uintptr_t)ab_idmap_get(&m, k) != k * 3;
    CHECK_EQ(wrong, 0);
    /* Hysteresis: alternating put/delete around the shrink point resizes
     * at most once, not at every step. */
    size_t changes = 0, cap = m.cap;
    for (int i = 0; i < 10000; i++) {
        ab_idmap_put(&m, 900000, (void *)1);
        ab_idmap_del(&m, 900000);
        changes += m.cap != cap;
        cap = m.cap;
    }
    CHECK_TRUE(changes <= 1);
    /* Never under the initial capacity, even empty. */
    for (uint64_t k = 1000; k <= 200000; k += 1000)
        ab_idmap_del(&m, k);
    CHECK_EQ(ab_idmap_size(&m), 0);
    CHECK_EQ(m.cap, 1024);
    ab_idmap_fini(&m);

    /* A window refilled after each batch of answers: the count swings
     * between 200 and 1,000 (ids always new). After the first cycle the
     * table keeps its size (it resized twice per cycle at 1/8). */
    REQUIRE(ab_idmap_init(&m, 64) == 0);
    uint64_t next = 1, oldest = 1;
    changes = 0;
    while (next - oldest < 1000)
        REQUIRE(ab_idmap_put(&m, next++, (void *)1) == 0);
    cap = m.cap;
    for (int cycle = 0; cycle < 100; cycle++) {
        while (next - oldest > 200) {
            wrong += ab_idmap_del(&m, oldest++) != (void *)1;
            changes += m.cap != cap;
            cap = m.cap;
        }
        while (next - oldest < 1000) {
            REQUIRE(ab_idmap_put(&m, next++, (void *)1) == 0);
            changes += m.cap != cap;
            cap = m.cap;
        }
    }
    CHECK_EQ(wrong, 0);
    CHECK_EQ(changes, 0);
    ab_idmap_fini(&m);

    /* keep_cap: a window drained to nothing and refilled each turn (a
     * client's calls answered whole in one poll) keeps its size up to
     * keep_cap; without it the table halved down to 64 and doubled back
     * (10 resizes a turn). Above keep_cap it still gives memory back. */
    REQUIRE(ab_idmap_init(&m, 64) == 0);
    m.keep_cap = 2048;
    next = 1;
    changes = 0;
    size_t grown = 0;
    for (int cycle = 0; cycle < 50; cycle++) {
        uint64_t first = next;
        while (next - first < 1000) {
            REQUIRE(ab_idmap_put(&m, next++, (void *)1) == 0);
            changes += m.cap != cap && cycle > 0;
            cap = m.cap;
        }
        grown = m.cap;
        for (uint64_t k = first; k < next; k++) {
            wrong += ab_idmap_del(&m, k) != (void *)1;
            changes += m.cap != cap;
            cap = m.cap;
        }
    }
    CHECK_EQ(wrong, 0);
    CHECK_EQ(grown, 2048);
    CHECK_EQ(changes, 0);
    CHECK_EQ(m.cap, 2048);
    for (uint64_t k = 1; k <= 100000; k++) /* a burst above keep_cap */
        REQUIRE(ab_idmap_put(&m, next + k, (void *)1) == 0);
    for (uint64_t k = 1; k <= 100000; k++)
        wrong += ab_idmap_del(&m, next + k) != (void *)1;
    CHECK_EQ(wrong, 0);
    CHECK_EQ(m.cap, 2048); /* back to keep_cap, not to 64, not the burst's size */
    ab_idmap_fini(&m);

    ab_idmap_t z = {0}; /* zeroed: the first put allocates */
    CHECK_TRUE(ab_idmap_get(&z, 7) == NULL);
    CHECK_TRUE(ab_idmap_del(&z, 7) == NULL);
    for (uint64_t k = 1; k <= 5000; k++)
        REQUIRE(ab_idmap_put(&z, k, (void *)(uintptr_t)k) == 0);
    for (uint64_t k = 1; k <= 5000; k++)
        wrong += (uintptr_t)ab_idmap_del(&z, k) != k;
    CHECK_EQ(wrong, 0);
    CHECK_EQ(ab_idmap_size(&z), 0);
    CHECK_EQ(z.cap, 16);
    ab_idmap_fini(&z);
}


int main(void)
{
    static uintptr_t model[N + 1]; /* key i -> value, 0 = absent */
    ab_idmap_t m;
    REQUIRE(ab_idmap_init(&m, 4) == 0);
    CHECK_TRUE(ab_idmap_get(&m, 5) == NULL);
    CHECK_EQ(ab_idmap_put(&m, 0, (void *)1), -1); /* 0 is not an id */
    size_t live = 0;
    int mismatches = 0;
    for (int step = 0; step < 200000; step++) {
        uint64_t k = 1 + t_rand() % N;
        switch (t_rand() % 3) {
        case 0:
        case 1: /* put, sequential-ish keys like real ids */
            if (!model[k])
                live++;
            model[k] = (uintptr_t)step + 1;
            CHECK_EQ(ab_idmap_put(&m, k, (void *)model[k]), 0);
            break;
        default: {
            void *v = ab_idmap_del(&m, k);
            mismatches += (uintptr_t)v != model[k];
            if (model[k])
                live--;
            model[k] = 0;
        }
        }
        if (step % 1000 == 0)
            for (uint64_t q = 1; q <= N; q += 7)
                mismatches += (uintptr_t)ab_idmap_get(&m, q) != model[q];
    }
    CHECK_EQ(mismatches, 0);
    CHECK_EQ(ab_idmap_size(&m), live);
    size_t seen = 0;
    for (size_t i = 0; i < m.cap; i++)
        seen += m.keys[i] != 0;
    CHECK_EQ(seen, live);
    CHECK_TRUE(m.cap >= 2 * live);
    for (uint64_t q = 1; q <= N; q++) /* empty it: every get agrees on the way */
        mismatches += (uintptr_t)ab_idmap_del(&m, q) != model[q];
    CHECK_EQ(mismatches, 0);
    CHECK_EQ(ab_idmap_size(&m), 0);
    ab_idmap_fini(&m);
    s_shrink();
    return TEST_DONE("test_idmap");
}
