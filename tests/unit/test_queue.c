/*
 * test_queue.c - the broker's queue bounds, dispatch choice and deadline
 * heap, driven directly (no sockets: these functions do no I/O).
 */
#include "request.h"
#include "service.h"
#include "link.h"
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static void s_setup(ab_broker_t *b, ab_broker_config_t *cfg)
{
    memset(b, 0, sizeof *b);
    memset(cfg, 0, sizeof *cfg);
    cfg->queue_max = 3;
    cfg->max_pending = 5;
    b->cfg = cfg;
    REQUIRE(ab_idmap_init(&b->pending, 16) == 0);
}

/* queue-max and max-pending both bound what a service admits. */
static void s_test_admit(void)
{
    ab_broker_t b;
    ab_broker_config_t cfg;
    s_setup(&b, &cfg);
    ab_service_t s;
    memset(&s, 0, sizeof s);
    ab_req_t r[4];
    memset(r, 0, sizeof r);
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(ab_service_admit(&b, &s), 1);
        r[i].bid = (uint64_t)i + 1;
        ab_service_enqueue(&b, &s, &r[i]);
    }
    CHECK_EQ(s.q_len, 3);
    CHECK_EQ(ab_service_admit(&b, &s), 0); /* queue full */
    ab_queue_remove(&s, &r[1]);
    CHECK_EQ(ab_service_admit(&b, &s), 1);
    /* FIFO order survives a removal in the middle. */
    CHECK_EQ(ab_queue_head(&s)->bid, 1);
    CHECK_EQ(ab_list_data(ab_list_next(&s.queue, &ab_queue_head(&s)->qlink), ab_req_t, qlink)->bid,
             3);
    CHECK_EQ(ab_list_data(ab_list_last(&s.queue), ab_req_t, qlink)->bid, 3);
    /* The broker-wide bound applies even with room in the queue. */
    for (uint64_t i = 1; i <= 5; i++)
        ab_idmap_put(&b.pending, 100 + i, &r[0]);
    CHECK_EQ(ab_service_admit(&b, &s), 0);
    ab_idmap_fini(&b.pending);
}

static ab_peer_t s_local_peer, s_remote_peer; /* link_role 0 and AB_LINK_WORKER */

static ab_worker_rec_t *s_worker(ab_service_t *s, uint32_t cap, uint32_t in_flight, uint64_t last)
{
    ab_worker_rec_t *w = calloc(1, sizeof *w);
    w->peer = &s_local_peer;
    w->capacity = cap;
    w->in_flight = in_flight;
    w->last_dispatch = last;
    w->service = s;
    zlistx_add_end(s->workers, w);
    return w;
}

/* Most free credit wins; among equals, the one dispatched to longest ago. */
static void s_test_pick(void)
{
    ab_broker_t b;
    ab_broker_config_t cfg;
    s_setup(&b, &cfg);
    ab_service_t s;
    memset(&s, 0, sizeof s);
    s.workers = zlistx_new();
    CHECK_EQ(ab_service_pick(&b, &s, NULL) == NULL, 1);
    ab_worker_rec_t *a = s_worker(&s, 4, 4, 1); /* full */
    CHECK_EQ(ab_service_pick(&b, &s, NULL) == NULL, 1);
    ab_worker_rec_t *w2 = s_worker(&s, 2, 0, 9);
    ab_worker_rec_t *w3 = s_worker(&s, 4, 2, 5);
    /* w2 and w3 both have 2 free: w3 was dispatched to longer ago. */
    CHECK_EQ(ab_service_pick(&b, &s, NULL) == w3, 1);
    w3->last_dispatch = 10;
    CHECK_EQ(ab_service_pick(&b, &s, NULL) == w2, 1);
    a->in_flight = 0; /* 4 free beats 2 free */
    CHECK_EQ(ab_service_pick(&b, &s, NULL) == a, 1);
    /* Local first: a broker link's worker (link.h) with more free credit
     * is picked only once no local worker has any. */
    s_remote_peer.link_role = AB_LINK_WORKER;
    ab_worker_rec_t *r = s_worker(&s, 64, 0, 0);
    r->peer = &s_remote_peer;
    CHECK_EQ(ab_service_pick(&b, &s, NULL) == a, 1);
    a->in_flight = 4, w2->in_flight = 2, w3->in_flight = 4;
    CHECK_EQ(ab_service_pick(&b, &s, NULL) == r, 1);
    for (ab_worker_rec_t *w = zlistx_first(s.workers); w; w = zlistx_next(s.workers))
        free(w);
    zlistx_destroy(&s.workers);
    ab_idmap_fini(&b.pending);
}

/* The deadline heap yields deadlines in order after random removals, and a
 * removed request is really gone. */
static void s_test_heap(void)
{
    enum { N = 2000 };
    ab_broker_t b;
    ab_broker_config_t cfg;
    s_setup(&b, &cfg);
    ab_req_t *r = calloc(N, sizeof *r);
    for (int i = 0; i < N; i++) {
        r[i].deadline_ms = (int64_t)(t_rand() % 100000);
        ab_deadline_push(&b, &r[i]);
    }
    CHECK_EQ(ab_heap_size(&b.deadlines), N);
    int removed = 0;
    for (int i = 0; i < N; i += 3) {
        ab_deadline_remove(&b, &r[i]);
        ab_deadline_remove(&b, &r[i]); /* twice is harmless */
        removed++;
    }
    CHECK_EQ(ab_heap_size(&b.deadlines), N - removed);
    int64_t prev = -1;
    size_t popped = 0;
    int order_ok = 1, removed_seen = 0;
    while (ab_heap_size(&b.deadlines)) {
        ab_req_t *top = ab_list_data(ab_heap_min(&b.deadlines), ab_req_t, dl);
        if (ab_deadline_next(&b) != top->deadline_ms || top->deadline_ms < prev)
            order_ok = 0;
        if ((top - r) % 3 == 0)
            removed_seen = 1;
        prev = top->deadline_ms;
        ab_deadline_remove(&b, top);
        popped++;
    }
    CHECK_EQ(order_ok, 1);
    CHECK_EQ(removed_seen, 0);
    CHECK_EQ(popped, N - removed);
    CHECK_EQ(ab_deadline_next(&b), 0);
    free(r);
    ab_heap_fini(&b.deadlines);
    ab_idmap_fini(&b.pending);
}

int main(void)
{
    s_test_admit();
    s_test_pick();
    s_test_heap();
    return TEST_DONE("test_queue");
}
