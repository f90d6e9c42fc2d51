/*
 * test_health.c - broker/health/health.c driven directly: the adaptive interval,
 * the phi suspicion (and how it adapts to jitter), the circuit breaker's
 * growing backoff, and what happens to a lost worker's requests. A real
 * broker core on an inproc endpoint, with a DEALER standing in for the
 * worker so that dispatch has somewhere to send.
 */
#include "request.h"
#include "service.h"
#include "clients.h"
#include "test.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static ab_broker_t s_b;
static ab_broker_config_t s_cfg;
static void *s_dealers[2];

static ab_worker_rec_t *s_worker(const char *id, int n, ab_service_t *s)
{
    ab_peer_t *p = calloc(1, sizeof *p);
    REQUIRE(p != NULL);
    p->rid.len = (uint8_t)strlen(id);
    memcpy(p->rid.bytes, id, p->rid.len);
    p->rid_hash = ab_rid_hash(&p->rid, NULL); /* as the broker's peers have it */
    snprintf(p->key, sizeof p->key, "%s", id);
    REQUIRE(ab_peer_set_name(p, "", id) == 0);
    p->role = AB_ROLE_WORKER;
    p->fd = -1;
    p->last_seen_ms = p->connected_ms = ab_now_ms();
    zhashx_insert(s_b.peers, &p->rid, p);
    ab_worker_attach(&s_b, p, s, 4);
    /* A DEALER with this routing id, so sends to it succeed. */
    s_dealers[n] = zmq_socket(s_b.zctx, ZMQ_DEALER);
    zmq_setsockopt(s_dealers[n], ZMQ_ROUTING_ID, id, strlen(id));
    REQUIRE(zmq_connect(s_dealers[n], "inproc://unit-health") == 0);
    return p->worker;
}

/* Heartbeats every GAP ms (or alternating GAP and GAP2) ending at NOW. */
static void s_beats(ab_worker_rec_t *w, int n, int64_t gap, int64_t gap2, int64_t now)
{
    int64_t t = now;
    for (int i = 0; i < n; i++)
        t -= i % 2 ? gap2 : gap;
    w->health.last_hb_ms = t;
    for (int i = n - 1; i >= 0; i--) {
        t += i % 2 ? gap2 : gap;
        ab_health_on_heartbeat(&s_b, w, NULL, 0, t);
    }
    w->peer->last_seen_ms = w->health.last_hb_ms;
}

static void s_test_interval(ab_worker_rec_t *w)
{
    CHECK_EQ(w->health.interval_ms, 100); /* new: the floor */
    int64_t now = ab_now_ms() - 100000;
    for (uint32_t want = 200; want <= 800; want *= 2) {
        now += 4 * w->health.interval_ms;
        s_beats(w, 3, w->health.interval_ms, w->health.interval_ms, now);
        CHECK_EQ(w->health.interval_ms, want); /* doubled after 3 on time */
    }
    now += 3200;
    s_beats(w, 3, 800, 800, now);
    CHECK_EQ(w->health.interval_ms, 800); /* the ceiling holds */
    ab_health_on_result(&s_b, w, 0);
    CHECK_EQ(w->health.interval_ms, 100); /* a failure: back to the floor */
    CHECK_EQ(w->health.expect_ms, 800);   /* until the worker has heard of it */
    ab_health_on_result(&s_b, w, 1);
    CHECK_EQ(w->health.failures, 0);
}

/* Sets W's window to N beats of GAP/GAP2, the last SILENT ms ago, and runs
 * the timer. */
static void s_silence(ab_worker_rec_t *w, int64_t gap, int64_t gap2, int64_t silent)
{
    int64_t now = ab_now_ms();
    w->health.interval_ms = w->health.expect_ms = 800;
    w->health.nsamples = w->health.pos = 0;
    w->health.state = AB_HEALTH_HEALTHY;
    s_beats(w, 16, gap, gap2, now - silent);
    ab_health_tick(&s_b, now);
}

static void s_test_suspicion(ab_worker_rec_t *regular, ab_worker_rec_t *jittery)
{
    s_silence(regular, 800, 800, 1200);
    printf("regular, 1200 ms silent: phi %.2f %s\n", regular->health.phi,
           ab_health_name(regular->health.state));
    CHECK_STR(ab_health_name(regular->health.state), "healthy");
    s_silence(regular, 800, 800, 1500);
    printf("regular, 1500 ms silent: phi %.2f %s\n", regular->health.phi,
           ab_health_name(regular->health.state));
    CHECK_STR(ab_health_name(regular->health.state), "suspect");
    CHECK_EQ(regular->health.interval_ms, 100); /* a flap: back to the floor */
    CHECK_EQ(ab_health_free_credit(regular), 0);
    uint64_t suspected = s_b.c.workers_suspected;
    s_silence(regular, 800, 800, 1800);
    printf("regular, 1800 ms silent: phi %.2f %s\n", regular->health.phi,
           ab_health_name(regular->health.state));
    CHECK_STR(ab_health_name(regular->health.state), "dead");
    CHECK_EQ(s_b.c.workers_suspected, suspected + 1);
    /* The same silence from a worker whose beats come irregularly (same
     * mean) is not yet suspicious: the detector adapts to jitter. */
    s_silence(jittery, 500, 1100, 1800);
    printf("jittery, 1800 ms silent: phi %.2f %s\n", jittery->health.phi,
           ab_health_name(jittery->health.state));
    CHECK_STR(ab_health_name(jittery->health.state), "healthy");
    CHECK_RANGE(jittery->health.phi, 0, 4);
    /* A dead worker's heartbeat brings it back through a probe. */
    ab_health_on_heartbeat(&s_b, regular, NULL, 0, ab_now_ms());
    CHECK_STR(ab_health_name(regular->health.state), "probing");
    CHECK_EQ(ab_health_free_credit(regular), 1);
    ab_health_on_result(&s_b, regular, 1);
    CHECK_STR(ab_health_name(regular->health.state), "healthy");
    CHECK_EQ(ab_health_free_credit(regular), 4);
}

static void s_test_eject(ab_worker_rec_t *w)
{
    w->health.failures = 0;
    for (int i = 0; i < 3; i++)
        ab_health_on_result(&s_b, w, 0);
    CHECK_STR(ab_health_name(w->health.state), "ejected");
    CHECK_EQ(w->health.backoff_ms, 100);
    CHECK_EQ(ab_health_free_credit(w), 0);
    uint32_t want = 200;
    for (int i = 0; i < 5; i++) { /* the backoff doubles, capped at 1000 */
        ab_health_tick(&s_b, w->health.ejected_until_ms);
        CHECK_STR(ab_health_name(w->health.state), "probing");
        ab_health_on_result(&s_b, w, 0); /* the probe fails */
        CHECK_STR(ab_health_name(w->health.state), "ejected");
        CHECK_EQ(w->health.backoff_ms, want);
        want = want * 2 > 1000 ? 1000 : want * 2;
    }
    CHECK_EQ(w->health.ejections, 6);
    ab_health_tick(&s_b, w->health.ejected_until_ms);
    ab_health_on_result(&s_b, w, 1); /* the probe succeeds */
    CHECK_STR(ab_health_name(w->health.state), "healthy");
    CHECK_EQ(s_b.c.workers_ejected, 6);
}

static ab_req_t *s_req(ab_service_t *s, uint32_t flags)
{
    ab_req_t *r = calloc(1, sizeof *r);
    REQUIRE(r != NULL);
    r->bid = ++s_b.next_bid;
    r->client_id = r->bid;
    r->client.len = 1;
    r->client.bytes[0] = 'c';
    r->service = s;
    r->flags = flags;
    r->deadline_ms = ab_now_ms() + 60000;
    REQUIRE(ab_idmap_put(&s_b.pending, r->bid, r) == 0);
    ab_deadline_push(&s_b, r);
    r->crec = ab_client_named(&s_b, "~unit"); /* as ab_req_new: every request has one */
    ab_client_hold(r->crec);
    ab_service_enqueue(&s_b, s, r);
    return r;
}

static void s_test_take_back(ab_worker_rec_t *w, ab_service_t *s)
{
    ab_req_t *plain = s_req(s, 0);
    ab_req_t *once = s_req(s, AB_FLAG_NON_IDEMPOTENT);
    ab_req_t *tired = s_req(s, 0);
    /* The other worker must not take them: only W is dispatchable. */
    ab_service_dispatch(&s_b, s);
    CHECK_EQ(w->in_flight, 3);
    CHECK_EQ(plain->attempts, 1);
    CHECK_TRUE(ab_req_tried(plain, ab_rid_hash(&w->peer->rid, NULL)));
    tired->attempts = (uint8_t)s_cfg.max_attempts;
    uint64_t bid = plain->bid;
    ab_health_take_back(&s_b, w, "unit test");
    CHECK_EQ(w->in_flight, 0);
    CHECK_EQ(s->q_len, 1); /* only the plain one is queued again */
    CHECK_TRUE(ab_queue_head(s) == plain);
    CHECK_EQ(ab_idmap_size(&s_b.pending), 1);
    CHECK_TRUE(ab_idmap_get(&s_b.pending, bid) == plain);
    CHECK_EQ(s_b.c.redispatched, 1);
    CHECK_EQ(s_b.c.retries_exhausted, 1);
    CHECK_EQ(s_b.c.errors_sent[AB_ERR_WORKER_LOST], 2);
    (void)once;
    /* Answered elsewhere later: W's answer is then a duplicate. */
    ab_health_note_answered(&s_b, plain, 12345);
    CHECK_EQ(ab_health_is_dup(&s_b, bid, ab_rid_hash(&w->peer->rid, NULL)), 1);
    CHECK_EQ(ab_health_is_dup(&s_b, bid, 12345), 0);
    ab_req_free(&s_b, plain);
}

int main(void)
{
    char *argv[] = {"test_health", "--bind", "inproc://unit-health", "--health-floor-ms", "100",
                    "--health-ceiling-ms", "800", "--eject-failures", "3", "--eject-base-ms",
                    "100", "--eject-max-ms", "1000", "--max-attempts", "2", "--log-level",
                    "error", NULL};
    REQUIRE(ab_config_load(&s_cfg, 17, argv) == 0);
    ab_log_level = (int)s_cfg.log_level;
    REQUIRE(ab_broker_init(&s_b, &s_cfg) == 0);
    ab_service_t *s = ab_service_get(&s_b, "svc", 1);
    ab_worker_rec_t *a = s_worker("wa", 0, s), *j = s_worker("wj", 1, s);
    s_test_interval(a);
    s_test_suspicion(a, j);
    s_test_eject(a);
    j->health.state = AB_HEALTH_EJECTED; /* keep the take-back test to one worker */
    j->health.ejected_until_ms = INT64_MAX;
    s_test_take_back(a, s);
    for (int i = 0; i < 2; i++)
        zmq_close(s_dealers[i]);
    ab_broker_fini(&s_b);
    ab_config_free(&s_cfg);
    return TEST_DONE("unit_health");
}
