/* test_heap.c - the intrusive min-heap: pops come out in key order, removal
 * from the middle keeps the heap property and every index right, a node
 * not in the heap is left alone, and equal keys all come out. */
#include "heap.h"
#include "test.h"

enum { N = 5000 };

/* 1 when every node's index is its position and no child beats its parent. */
static int s_valid(const ab_heap_t *h)
{
    for (size_t i = 0; i < h->len; i++) {
        if (h->a[i]->index != i)
            return 0;
        if (i && h->a[(i - 1) / 2]->key > h->a[i]->key)
            return 0;
    }
    return 1;
}

static void s_sorted(void)
{
    static ab_heap_node_t n[N];
    ab_heap_t h = {0};
    CHECK_TRUE(ab_heap_min(&h) == NULL);
    for (int i = 0; i < N; i++) {
        n[i].key = (int64_t)(t_rand() % 1000) - 500; /* many equal keys */
        REQUIRE(ab_heap_push(&h, &n[i]) == 0);
    }
    CHECK_TRUE(s_valid(&h));
    CHECK_EQ(ab_heap_size(&h), N);
    int64_t last = INT64_MIN;
    int wrong = 0, popped = 0;
    while (ab_heap_min(&h)) {
        ab_heap_node_t *m = ab_heap_min(&h);
        wrong += m->key < last;
        last = m->key;
        ab_heap_remove(&h, m);
        wrong += m->index != AB_HEAP_NONE;
        popped++;
    }
    CHECK_EQ(wrong, 0);
    CHECK_EQ(popped, N);
    ab_heap_fini(&h);
}

/* Removes random nodes (in or out of the heap) and pushes them back. */
static void s_remove_anywhere(void)
{
    static ab_heap_node_t n[N];
    ab_heap_t h = {0};
    for (int i = 0; i < N; i++) {
        n[i].key = (int64_t)(t_rand() % 100000);
        REQUIRE(ab_heap_push(&h, &n[i]) == 0);
    }
    int bad = 0;
    for (int s = 0; s < 50000; s++) {
        ab_heap_node_t *x = &n[t_rand() % N];
        if (x->index == AB_HEAP_NONE) {
            x->key = (int64_t)(t_rand() % 100000); /* a new key while out */
            REQUIRE(ab_heap_push(&h, x) == 0);
        } else {
            size_t before = h.len;
            ab_heap_remove(&h, x);
            bad += h.len != before - 1 || x->index != AB_HEAP_NONE;
            ab_heap_remove(&h, x); /* again: not in the heap, a no-op */
            bad += h.len != before - 1;
        }
        if (s % 997 == 0)
            bad += !s_valid(&h);
    }
    CHECK_EQ(bad, 0);
    CHECK_TRUE(s_valid(&h));
    /* A node of another heap (index in range, not at that slot) is ignored. */
    ab_heap_node_t stray = {.key = 1, .index = 0};
    size_t len = h.len;
    ab_heap_remove(&h, &stray);
    CHECK_EQ(h.len, len);
    CHECK_TRUE(s_valid(&h));
    ab_heap_fini(&h);
    CHECK_TRUE(h.a == NULL);
}

int main(void)
{
    s_sorted();
    s_remove_anywhere();
    return TEST_DONE("test_heap");
}
