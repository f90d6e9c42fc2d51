/*
 * test_queue.c - the broker's queue bounds, dispatch choice and deadline
 * heap, driven directly (no sockets: these functions do no I/O).
 */
#include "request.h"
#include "service.h"
#include "clients.h"
#include "lanes.h"
#include "link.h"
#include "placement.h"
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
    cfg->lane_normal_min_pct = 20;
    cfg->lane_batch_min_pct = 10;
    b->cfg = cfg;
    REQUIRE(ab_idmap_init(&b->pending, 16) == 0);
}

static ab_client_rec_t *s_client(uint64_t id, uint32_t weight)
{
    ab_client_rec_t *c = calloc(1, sizeof *c + 8);
    REQUIRE(c != NULL);
    c->id = id;
    c->weight = weight;
    snprintf(c->ident, 8, "c%llu", (unsigned long long)id);
    return c;
}

/* Dispatches the request the lanes offer next (as ab_service_dispatch
 * does when a worker has credit). */
static ab_req_t *s_take(ab_broker_t *b, ab_service_t *s)
{
    ab_req_t *r = ab_lanes_next(b, s, 1);
    if (r)
        ab_lanes_take(s, r, 0);
    return r;
}

/* Queues N requests of client C in LANE (bids from BID0). */
static ab_req_t *s_queue(ab_service_t *s, ab_client_rec_t *c, int lane, int n, uint64_t bid0)
{
    ab_req_t *r = calloc((size_t)n, sizeof *r);
    REQUIRE(r != NULL);
    for (int i = 0; i < n; i++) {
        r[i].bid = bid0 + (uint64_t)i;
        r[i].crec = c;
        r[i].lane = (uint8_t)lane;
        REQUIRE(ab_lanes_put(s, &r[i], 0) == 0);
    }
    return r;
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
    ab_client_rec_t *c = s_client(1, 1);
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(ab_service_admit(&b, &s), 1);
        r[i].bid = (uint64_t)i + 1;
        r[i].crec = c;
        ab_service_enqueue(&b, &s, &r[i]);
    }
    CHECK_EQ(s.q_len, 3);
    CHECK_EQ(c->queued, 3);
    CHECK_EQ(ab_service_admit(&b, &s), 0); /* queue full */
    ab_queue_remove(&s, &r[1]);
    CHECK_EQ(ab_service_admit(&b, &s), 1);
    /* FIFO order (one client, one lane) survives a removal in the middle. */
    CHECK_EQ(ab_queue_head(&s)->bid, 1);
    CHECK_EQ(s_take(&b, &s)->bid, 1);
    CHECK_EQ(s_take(&b, &s)->bid, 3);
    CHECK_EQ(s.q_len, 0);
    CHECK_EQ(c->queued, 0);
    CHECK_EQ(ab_idmap_size(&s.lanes[AB_LANE_NORMAL].flows), 0); /* the flow went with it */
    ab_lanes_fini(&s);
    free(c);
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

/* Header priorities map onto the three lanes. */
static void s_test_lane_of(void)
{
    CHECK_EQ(ab_lane_of(0), AB_LANE_NORMAL);
    CHECK_EQ(ab_lane_of(1), AB_LANE_BATCH);
    CHECK_EQ(ab_lane_of(2), AB_LANE_NORMAL);
    CHECK_EQ(ab_lane_of(3), AB_LANE_INTERACTIVE);
    CHECK_EQ(ab_lane_of(255), AB_LANE_INTERACTIVE);
    CHECK_EQ(strcmp(ab_lane_name(AB_LANE_BATCH), "batch"), 0);
}

/* Deficit round robin: one client with 1,000 queued and another with one:
 * the single one goes second, not 1,001st. Weights give turns of W. */
static void s_test_drr(void)
{
    ab_broker_t b;
    ab_broker_config_t cfg;
    s_setup(&b, &cfg);
    ab_service_t s;
    memset(&s, 0, sizeof s);
    ab_client_rec_t *big = s_client(1, 1), *one = s_client(2, 1);
    ab_req_t *flood = s_queue(&s, big, AB_LANE_NORMAL, 1000, 1);
    ab_req_t *single = s_queue(&s, one, AB_LANE_NORMAL, 1, 5000);
    CHECK_EQ(s_take(&b, &s)->bid, 1);
    CHECK_EQ(s_take(&b, &s)->bid, 5000);
    CHECK_EQ(ab_idmap_size(&s.lanes[AB_LANE_NORMAL].flows), 1);
    /* Weight 3 against 1: turns of three and one. */
    big->weight = 3;
    ab_client_rec_t *light = s_client(3, 1);
    ab_req_t *l = s_queue(&s, light, AB_LANE_NORMAL, 10, 9000);
    int from_big = 0, from_light = 0;
    for (int i = 0; i < 40; i++) {
        ab_req_t *r = s_take(&b, &s);
        from_big += r->crec == big;
        from_light += r->crec == light;
    }
    CHECK_EQ(from_big, 30);
    CHECK_EQ(from_light, 10);
    CHECK_EQ(light->queued, 0);
    /* Removing every queued request frees every flow: nothing left on a ring. */
    while (s.q_len)
        ab_lanes_remove(&s, ab_lanes_any(&s));
    CHECK_EQ(ab_list_empty(&s.lanes[AB_LANE_NORMAL].ring), 1);
    CHECK_EQ(ab_idmap_size(&s.lanes[AB_LANE_NORMAL].flows), 0);
    CHECK_EQ(big->queued, 0);
    ab_lanes_fini(&s);
    free(flood);
    free(single);
    free(l);
    free(big);
    free(one);
    free(light);
    ab_idmap_fini(&b.pending);
}

/* Interactive first; batch still gets its minimum share (1 in 10) and
 * normal its own (1 in 5) while the interactive lane is never empty. */
static void s_test_lanes(void)
{
    ab_broker_t b;
    ab_broker_config_t cfg;
    s_setup(&b, &cfg);
    ab_service_t s;
    memset(&s, 0, sizeof s);
    ab_client_rec_t *bat = s_client(1, 1), *inter = s_client(2, 1), *norm = s_client(3, 1);
    ab_req_t *rb = s_queue(&s, bat, AB_LANE_BATCH, 300, 1);
    CHECK_EQ(s_take(&b, &s)->bid, 1);
    ab_req_t *ri = s_queue(&s, inter, AB_LANE_INTERACTIVE, 1, 1000);
    CHECK_EQ(s_take(&b, &s)->bid, 1000); /* next, before the flood */
    ab_lanes_fini(&s);
    memset(&s, 0, sizeof s);
    bat->queued = 0;
    ab_req_t *rb2 = s_queue(&s, bat, AB_LANE_BATCH, 300, 1);
    ab_req_t *ri2 = s_queue(&s, inter, AB_LANE_INTERACTIVE, 300, 1000);
    ab_req_t *rn2 = s_queue(&s, norm, AB_LANE_NORMAL, 300, 2000);
    int n[AB_LANES] = {0};
    for (int i = 0; i < 100; i++)
        n[s_take(&b, &s)->lane]++;
    CHECK_RANGE(n[AB_LANE_BATCH], 10, 12);
    CHECK_RANGE(n[AB_LANE_NORMAL], 18, 22);
    CHECK_RANGE(n[AB_LANE_INTERACTIVE], 60, 72);
    ab_lanes_fini(&s);
    free(rb), free(ri), free(rb2), free(ri2), free(rn2);
    free(bat), free(inter), free(norm);
    ab_idmap_fini(&b.pending);
}

/* Gives R a route naming MODEL (and pinned to WORKER when not NULL). */
static void s_route(ab_req_t *r, const char *model, const char *worker)
{
    struct ab_route *rt = calloc(1, sizeof *rt);
    REQUIRE(rt != NULL);
    snprintf(rt->model, sizeof rt->model, "%s", model);
    snprintf(rt->worker, sizeof rt->worker, "%s", worker ? worker : "");
    r->route = rt;
}

/* Issue 20: 100 requests of a model whose workers are full ahead of one of
 * another model. The pass looks at one of the full model's requests, not
 * 64 (and before the model index, gave up there: the other model's request
 * waited while its slots idled). A request pinned to a worker passed over
 * does not pass over its model's others. */
static void s_test_models(void)
{
    ab_broker_t b;
    ab_broker_config_t cfg;
    s_setup(&b, &cfg);
    ab_service_t s;
    memset(&s, 0, sizeof s);
    ab_client_rec_t *c = s_client(1, 1);
    enum { N = 101 };
    ab_req_t *r = calloc(N + 1, sizeof *r);
    REQUIRE(r != NULL);
    s_route(&r[0], "big", "w2"); /* pinned: its being full says nothing of the others */
    for (int i = 1; i < N; i++)
        s_route(&r[i], "big", NULL);
    s_route(&r[N], "small", NULL);
    for (int i = 0; i <= N; i++) {
        r[i].bid = (uint64_t)i + 1;
        r[i].crec = c;
        r[i].lane = AB_LANE_NORMAL;
        REQUIRE(ab_lanes_put(&s, &r[i], 0) == 0);
    }
    uint32_t mark = 7;
    ab_req_t *x = ab_lanes_next(&b, &s, mark);
    CHECK_EQ(x->bid, 1);
    ab_lanes_skip(x, mark); /* w2 full */
    x = ab_lanes_next(&b, &s, mark);
    CHECK_EQ(x->bid, 2);
    ab_lanes_skip(x, mark); /* every "big" worker full: the model is */
    x = ab_lanes_next(&b, &s, mark);
    REQUIRE(x != NULL); /* before the model index: NULL after 64 */
    CHECK_EQ(x->bid, N + 1);
    ab_lanes_take(&s, x, 0);
    CHECK_TRUE(ab_lanes_next(&b, &s, mark) == NULL);
    CHECK_EQ(zhashx_size(s.models.index), 1);
    /* The next pass starts afresh: "big" is offered again, oldest first. */
    x = ab_lanes_next(&b, &s, mark + 1);
    CHECK_EQ(x->bid, 1);
    /* The index empties with the queue. */
    while (s.q_len)
        ab_lanes_remove(&s, ab_lanes_any(&s));
    CHECK_EQ(zhashx_size(s.models.index), 0);
    CHECK_EQ(ab_list_empty(&s.models.ring), 1);
    for (int i = 0; i <= N; i++)
        free(r[i].route);
    ab_lanes_fini(&s);
    free(r);
    free(c);
    ab_idmap_fini(&b.pending);
}

int main(void)
{
    s_test_lane_of();
    s_test_drr();
    s_test_lanes();
    s_test_models();
    s_test_admit();
    s_test_pick();
    s_test_heap();
    return TEST_DONE("test_queue");
}
