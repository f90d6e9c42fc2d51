/*
 * test_audit.c - broker/audit.c: the broker's recount of its bookkeeping.
 * A real broker core on an inproc endpoint, one service with one worker
 * (a DEALER stands in for it) and requests queued, dispatched and taken
 * back. The recount must agree with every consistent state, and find each
 * kind of drift put in by hand: a client's, a service's and a worker's
 * counts, the held bytes, messaging's totals, a list naming a request no
 * longer pending.
 */
#include "audit.h"
#include "clients.h"
#include "msgs.h"
#include "request.h"
#include "service.h"
#include "test.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static ab_broker_t s_b;
static ab_broker_config_t s_cfg;
static void *s_dealer;

static ab_worker_rec_t *s_worker(ab_service_t *s)
{
    ab_peer_t *p = calloc(1, sizeof *p);
    REQUIRE(p != NULL);
    p->rid.len = 2;
    memcpy(p->rid.bytes, "wa", 2);
    p->rid_hash = ab_rid_hash(&p->rid, NULL);
    snprintf(p->key, sizeof p->key, "wa");
    REQUIRE(ab_peer_set_name(p, "", "wa") == 0);
    p->role = AB_ROLE_WORKER;
    p->fd = -1;
    p->last_seen_ms = p->connected_ms = ab_now_ms();
    zhashx_insert(s_b.peers, &p->rid, p);
    ab_worker_attach(&s_b, p, s, 2);
    s_dealer = zmq_socket(s_b.zctx, ZMQ_DEALER);
    zmq_setsockopt(s_dealer, ZMQ_ROUTING_ID, "wa", 2);
    REQUIRE(zmq_connect(s_dealer, "inproc://unit-audit") == 0);
    return p->worker;
}

/* A request of client "~unit" with SIZE payload bytes held, queued in S
 * (as ab_req_new and ab_service_enqueue leave it). */
static ab_req_t *s_req(ab_service_t *s, uint64_t size)
{
    ab_req_t *r = calloc(1, sizeof *r);
    REQUIRE(r != NULL);
    r->bid = ++s_b.next_bid;
    r->client_id = r->bid;
    r->client.len = 1;
    r->client.bytes[0] = 'c';
    r->service = s;
    r->deadline_ms = ab_now_ms() + 60000;
    r->dl.index = AB_HEAP_NONE;
    REQUIRE(ab_idmap_put(&s_b.pending, r->bid, r) == 0);
    ab_service_hold(&s_b, r);
    ab_deadline_push(&s_b, r);
    r->crec = ab_client_named(&s_b, "~unit");
    REQUIRE(r->crec != NULL);
    ab_client_hold(r->crec);
    r->crec->held++;
    r->client_counted = 1;
    r->held_bytes = size;
    s_b.held_bytes += size;
    r->crec->held_bytes += size;
    REQUIRE(ab_service_enqueue(&s_b, s, r) == 0);
    return r;
}

/* The recount agrees (WANT NULL), or finds a difference whose text holds WANT. */
static void s_expect(const char *want, int line)
{
    char why[512] = "";
    int rc = ab_broker_audit(&s_b, why, sizeof why);
    if (!want) {
        if (rc != 0)
            fprintf(stderr, "line %d: the recount disagrees: %s\n", line, why);
        CHECK_EQ(rc, 0);
        return;
    }
    CHECK_EQ(rc, -1);
    if (!strstr(why, want))
        fprintf(stderr, "line %d: expected \"%s\" in \"%s\"\n", line, want, why);
    CHECK_TRUE(strstr(why, want) != NULL);
}

int main(void)
{
    char *argv[] = {"test_audit", "--bind", "inproc://unit-audit", "--log-level", "error", NULL};
    REQUIRE(ab_config_load(&s_cfg, 5, argv) == 0);
    ab_log_level = (int)s_cfg.log_level;
    REQUIRE(ab_broker_init(&s_b, &s_cfg) == 0);
    ab_service_t *s = ab_service_get(&s_b, "svc", 1);
    REQUIRE(s != NULL);
    s_expect(NULL, __LINE__); /* nothing held */

    /* Three queued: the worker takes two (capacity 2), one waits. */
    ab_req_t *r1 = s_req(s, 100), *r2 = s_req(s, 0), *r3 = s_req(s, 7);
    ab_client_rec_t *c = r1->crec;
    s_expect(NULL, __LINE__);
    ab_worker_rec_t *w = s_worker(s);
    ab_service_dispatch(&s_b, s);
    CHECK_EQ(w->in_flight, 2);
    CHECK_EQ(s->q_len, 1);
    s_expect(NULL, __LINE__);

    /* Each count drifted by one, then put back. */
    c->queued++;
    s_expect("client ~unit counts 3 held, 2 queued", __LINE__);
    c->queued--;
    c->held_bytes += 1;
    s_expect("108 bytes", __LINE__);
    c->held_bytes -= 1;
    c->refs++;
    s_expect("references", __LINE__);
    c->refs--;
    s->q_len++;
    s_expect("service svc: q_len 2, 1 requests in its lanes", __LINE__);
    s->q_len--;
    s->held--;
    s_expect("service svc counts 2 requests naming it, 3 do", __LINE__);
    s->held++;
    w->in_flight--;
    s_expect("a worker counts 1 in flight and lists 2", __LINE__);
    w->in_flight++;
    s_b.held_bytes += 4;
    s_expect("the broker counts 111 held payload bytes, its requests 107", __LINE__);
    s_b.held_bytes -= 4;
    s_expect(NULL, __LINE__);
    /* Messaging's totals are recounted too (mailboxes, subscribers). */
    s_b.msgs->mailbox_msgs++;
    s_expect("the mailboxes count 1 messages", __LINE__);
    s_b.msgs->mailbox_msgs--;
    s_b.msgs->subscribers++;
    s_expect("1 subscribers counted, 0 have a subscription", __LINE__);
    s_b.msgs->subscribers--;
    s_expect(NULL, __LINE__);

    /* A record freed while still listed, as the bugs found so far were:
     * out of the pending table but still in its queue or at its worker. */
    ab_req_t *queued = ab_queue_head(s);
    REQUIRE(queued != NULL);
    ab_idmap_del(&s_b.pending, queued->bid);
    s_expect("not pending", __LINE__);
    REQUIRE(ab_idmap_put(&s_b.pending, queued->bid, queued) == 0);
    ab_req_t *at_worker = queued == r3 ? r1 : r3;
    ab_idmap_del(&s_b.pending, at_worker->bid);
    s_expect("a worker lists request", __LINE__);
    REQUIRE(ab_idmap_put(&s_b.pending, at_worker->bid, at_worker) == 0);
    s_expect(NULL, __LINE__);

    /* The worker is lost: both go back to the queue, all still adds up. */
    ab_health_take_back(&s_b, w, "unit test");
    CHECK_EQ(s->q_len, 3);
    s_expect(NULL, __LINE__);
    /* Freed the proper way: nothing is left to count. */
    ab_req_free(&s_b, r1);
    ab_req_free(&s_b, r2);
    s_expect(NULL, __LINE__);
    CHECK_U64(s_b.held_bytes, 7);

    /* ab_audit_run logs and counts a difference (the exit status then 3). */
    CHECK_EQ(s_b.audit_failed, 0);
    ab_audit_run(&s_b, "unit test");
    CHECK_EQ(s_b.audit_failed, 0);
    c = r3->crec;
    c->held++;
    ab_audit_run(&s_b, "unit test");
    CHECK_EQ(s_b.audit_failed, 1);
    c->held--;
    ab_req_free(&s_b, r3);
    CHECK_U64(s_b.held_bytes, 0);
    s_expect(NULL, __LINE__);

    zmq_close(s_dealer);
    ab_broker_fini(&s_b);
    CHECK_EQ(s_b.audit_failed, 1); /* the recount at exit found nothing more */
    ab_config_free(&s_cfg);
    return TEST_DONE("unit_audit");
}
