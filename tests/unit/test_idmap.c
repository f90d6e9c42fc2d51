/* test_idmap.c - the id map against a plain array model, through growth and
 * random deletions that exercise backward shifting. */
#include "idmap.h"
#include "test.h"

enum { N = 20000 };


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
    return TEST_DONE("test_idmap");
}
