/* test_list.c - the intrusive list: order of head and tail inserts, removal
 * from anywhere (and of an unlinked node), safe iteration that frees, and
 * a long random run against an array model. */
#include "list.h"
#include "test.h"

typedef struct {
    int v;
    ab_list_t link;
} item_t;

static int s_values(ab_list_t *head, int *out, int max)
{
    int n = 0;
    for (ab_list_t *l = ab_list_first(head); l && n < max; l = ab_list_next(head, l))
        out[n++] = ab_list_data(l, item_t, link)->v;
    return n;
}

static void s_order(void)
{
    ab_list_t h = {0}; /* zeroed: already an empty list */
    ab_list_t *n, *tmp;
    int k = 0;
    AB_LIST_FOREACH_SAFE(n, tmp, &h)
        k++;
    CHECK_EQ(k, 0);
    ab_list_t z = {0};
    CHECK_TRUE(ab_list_empty(&z));
    CHECK_TRUE(ab_list_first(&z) == NULL && ab_list_pop_head(&z) == NULL);
    CHECK_TRUE(ab_list_empty(&h));
    CHECK_TRUE(ab_list_first(&h) == NULL);
    CHECK_TRUE(ab_list_last(&h) == NULL);
    item_t it[4] = {{1, {0}}, {2, {0}}, {3, {0}}, {4, {0}}};
    CHECK_EQ(ab_list_linked(&it[0].link), 0);
    ab_list_insert_tail(&h, &it[1].link); /* 2 */
    ab_list_insert_head(&h, &it[0].link); /* 1 2 */
    ab_list_insert_tail(&h, &it[2].link); /* 1 2 3 */
    ab_list_insert_tail(&h, &it[3].link); /* 1 2 3 4 */
    int v[8];
    REQUIRE(s_values(&h, v, 8) == 4);
    CHECK_EQ(v[0], 1);
    CHECK_EQ(v[3], 4);
    CHECK_EQ(ab_list_data(ab_list_last(&h), item_t, link)->v, 4);
    CHECK_TRUE(ab_list_prev(&h, &it[0].link) == NULL);
    CHECK_TRUE(ab_list_next(&h, &it[3].link) == NULL);
    ab_list_remove(&it[1].link); /* middle: 1 3 4 */
    CHECK_EQ(ab_list_linked(&it[1].link), 0);
    ab_list_remove(&it[1].link); /* again: a no-op */
    REQUIRE(s_values(&h, v, 8) == 3);
    CHECK_EQ(v[1], 3);
    /* Reverse order with the reverse walk. */
    k = 0;
    AB_LIST_FOREACH_REVERSE_SAFE(n, tmp, &h)
        v[k++] = ab_list_data(n, item_t, link)->v;
    CHECK_EQ(k, 3);
    CHECK_EQ(v[0], 4);
    CHECK_EQ(v[2], 1);
    CHECK_EQ(ab_list_data(ab_list_pop_head(&h), item_t, link)->v, 1);
    ab_list_remove(&it[3].link); /* the tail: 3 */
    CHECK_EQ(ab_list_data(ab_list_last(&h), item_t, link)->v, 3);
    ab_list_remove(&it[2].link);
    CHECK_TRUE(ab_list_empty(&h));
    CHECK_TRUE(ab_list_pop_head(&h) == NULL);
}

/* FOREACH_SAFE lets the body unlink and free the node it is on. */
static void s_free_while_walking(void)
{
    ab_list_t h;
    ab_list_init(&h);
    for (int i = 0; i < 100; i++) {
        item_t *it = calloc(1, sizeof *it);
        REQUIRE(it);
        it->v = i;
        ab_list_insert_tail(&h, &it->link);
    }
    ab_list_t *n, *tmp;
    int seen = 0;
    AB_LIST_FOREACH_SAFE(n, tmp, &h) {
        item_t *it = ab_list_data(n, item_t, link);
        CHECK_EQ(it->v, seen);
        seen++;
        if (it->v % 2 == 0) {
            ab_list_remove(n);
            free(it);
        }
    }
    CHECK_EQ(seen, 100);
    int left = 0;
    AB_LIST_FOREACH_SAFE(n, tmp, &h) {
        item_t *it = ab_list_data(n, item_t, link);
        CHECK_EQ(it->v % 2, 1);
        left++;
        ab_list_remove(n);
        free(it);
    }
    CHECK_EQ(left, 50);
    CHECK_TRUE(ab_list_empty(&h));
}

/* Random inserts at either end and removals anywhere, against an array. */
static void s_model(void)
{
    enum { N = 512, STEPS = 200000 };
    static item_t pool[N];
    int model[N], len = 0;
    ab_list_t h;
    ab_list_init(&h);
    for (int i = 0; i < N; i++)
        pool[i].v = i;
    int wrong = 0;
    for (int s = 0; s < STEPS; s++) {
        int i = (int)(t_rand() % N);
        item_t *it = &pool[i];
        if (ab_list_linked(&it->link)) {
            ab_list_remove(&it->link);
            int j = 0;
            while (model[j] != i)
                j++;
            memmove(&model[j], &model[j + 1], (size_t)(len - j - 1) * sizeof *model);
            len--;
        } else if (t_rand() & 1) {
            ab_list_insert_head(&h, &it->link);
            memmove(&model[1], &model[0], (size_t)len * sizeof *model);
            model[0] = i;
            len++;
        } else {
            ab_list_insert_tail(&h, &it->link);
            model[len++] = i;
        }
        if (s % 1000 == 0) {
            int v[N];
            int n = s_values(&h, v, N);
            wrong += n != len || memcmp(v, model, (size_t)len * sizeof *v) != 0;
        }
    }
    CHECK_EQ(wrong, 0);
}

int main(void)
{
    s_order();
    s_free_while_walking();
    s_model();
    return TEST_DONE("test_list");
}
