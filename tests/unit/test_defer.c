/* test_defer.c - the deferred queue: nodes run in the order queued, once
 * each; a callback may free another queued object (it cancels itself and
 * is never run), may queue new work (run in the same call) and may queue
 * its own node again. */
#include "defer.h"
#include "test.h"

typedef struct obj {
    int id;
    ab_defer_node_t later;
    struct obj *victim; /* freed by this one's callback, when set */
    int requeue;        /* times the callback queues its own node again */
} obj_t;

static int g_ran[64], g_nran;
static ab_defer_t *g_q;

static void s_act(void *ctx, ab_defer_node_t *n)
{
    obj_t *o = ab_defer_data(n, obj_t, later);
    CHECK_TRUE(ctx == (void *)&g_nran);
    CHECK_EQ(ab_defer_queued(n), 0); /* off the queue while it runs */
    if (g_nran < 64)
        g_ran[g_nran++] = o->id;
    if (o->victim) {
        ab_defer_cancel(&o->victim->later); /* what its owner does on free */
        free(o->victim);
        o->victim = NULL;
    }
    if (o->requeue > 0) {
        o->requeue--;
        ab_defer_add(g_q, n, s_act);
    }
}

int main(void)
{
    ab_defer_t q;
    ab_defer_init(&q);
    g_q = &q;
    CHECK_EQ(ab_defer_pending(&q), 0);
    CHECK_EQ(ab_defer_run(&q, &g_nran), 0);
    obj_t a = {.id = 1}, c = {.id = 3};
    obj_t *b = calloc(1, sizeof *b);
    REQUIRE(b);
    b->id = 2;
    a.victim = b; /* a's callback frees b before b's turn */
    c.requeue = 2;
    CHECK_EQ(ab_defer_add(&q, &a.later, s_act), 0);
    CHECK_EQ(ab_defer_add(&q, &b->later, s_act), 0);
    CHECK_EQ(ab_defer_add(&q, &c.later, s_act), 0);
    CHECK_EQ(ab_defer_add(&q, &a.later, s_act), 1); /* already queued */
    CHECK_EQ(ab_defer_pending(&q), 1);
    CHECK_EQ(ab_defer_run(&q, &g_nran), 4); /* a, c, c, c: b was freed */
    CHECK_EQ(g_nran, 4);
    CHECK_EQ(g_ran[0], 1);
    CHECK_EQ(g_ran[1], 3);
    CHECK_EQ(g_ran[3], 3);
    CHECK_EQ(ab_defer_pending(&q), 0);
    /* Cancel before the run, and clear. */
    obj_t d = {.id = 4}, e = {.id = 5};
    ab_defer_add(&q, &d.later, s_act);
    ab_defer_add(&q, &e.later, s_act);
    ab_defer_cancel(&d.later);
    ab_defer_cancel(&d.later); /* twice: a no-op */
    CHECK_EQ(ab_defer_run(&q, &g_nran), 1);
    CHECK_EQ(g_ran[4], 5);
    ab_defer_add(&q, &d.later, s_act);
    ab_defer_clear(&q);
    CHECK_EQ(ab_defer_queued(&d.later), 0);
    CHECK_EQ(ab_defer_run(&q, &g_nran), 0);
    return TEST_DONE("test_defer");
}
