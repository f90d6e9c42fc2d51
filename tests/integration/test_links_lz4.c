/*
 * test_links_lz4.c - lz4 on a broker link when the far side's workers
 * change (issue 15, docs/links.md "The link's wire"). A compresses a
 * request onto the link when every worker behind B's entry reads lz4; by
 * the time B dispatches it, that set may hold a worker that does not. Such
 * a worker must never receive a compressed payload, and the agent, which
 * sent its request plain, must not see it fail for the link's compression.
 *
 * Raw ZeroMQ workers on B, so the test sees exactly the header and bytes
 * each worker receives; brokers run --auth none (a plain link: what is
 * checked here is the payload, not the key).
 */
#include "batchtest.h"
#include "harness.h"
#include "linktest.h"
#include "test.h"
#include "util.h"
#include "agentbus.pb-c.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

enum { N = 4, SIZE = 600 }; /* above the link's 256 B threshold, under the clients' 1 KiB */

/* A HEARTBEAT from each raw worker, so B keeps them while the test waits. */
static void s_beat(void *w1, void *w2)
{
    ab_header_t h = ab_header_init(AB_KIND_HEARTBEAT);
    if (w1)
        bt_raw_send(w1, &h, NULL, 0, 0);
    if (w2)
        bt_raw_send(w2, &h, NULL, 0, 0);
}

/* Receives up to N requests on W into M within TIMEOUT_MS, polling C and
 * beating for W and OTHER meanwhile; how many. */
static int s_take(void *w, void *other, ab_client_t *c, bt_msg_t *m, int timeout_ms)
{
    int got = 0;
    int64_t end = ab_now_ms() + timeout_ms;
    while (got < N && ab_now_ms() < end) {
        ab_client_poll(c, 10);
        s_beat(w, other);
        if (!bt_raw_recv_msg(w, &m[got], 100))
            continue;
        if (m[got].h.kind == AB_KIND_REQUEST)
            got++;
        else
            bt_msg_close(&m[got]);
    }
    return got;
}

/* B's only worker W1 reads lz4, so A compresses the N requests it forwards;
 * W1 holds them; W2, which does not read lz4, joins; W1 says BYE, so B
 * dispatches the compressed requests again, to W2. W2 gets each one plain
 * (the original bytes, no lz4 flag), and the agent on A gets N correct
 * answers, none refused. */
static void s_race(void)
{
    int pa = th_free_port(), pb = th_free_port();
    char peer[64];
    snprintf(peer, sizeof peer, "tcp://127.0.0.1:%d", pb);
    th_broker(pb, "--name", "B", "--link-heartbeat-ms", "100", NULL);
    th_broker(pa, "--name", "A", "--link-heartbeat-ms", "100", "--peer", peer, NULL);
    void *w1 = bt_raw(pb);
    bt_raw_register(w1, "zsvc", N, AB_FEATURE_LZ4);
    ab_client_t *a = th_client(pa), *b = th_client(pb);
    REQUIRE(lt_wait_link(a, "B", 1, 20000) == 0);
    REQUIRE(th_wait_workers(a, "zsvc", 1, 20000) == 0);
    char *text = bt_text(SIZE);
    bt_tally_t t = {0};
    for (int i = 0; i < N; i++)
        REQUIRE(ab_client_request_start(a, "zsvc", text, SIZE,
                                        &(ab_request_opts_t){.timeout_ms = 30000}, bt_tally_cb,
                                        &t, NULL) == AB_OK);
    ab_client_flush(a);
    bt_msg_t m[N];
    REQUIRE(s_take(w1, NULL, a, m, 20000) == N);
    for (int i = 0; i < N; i++) { /* the link compressed them: the race is set */
        REQUIRE(m[i].h.flags & AB_FLAG_LZ4);
        bt_msg_close(&m[i]);
    }
    void *w2 = bt_raw(pb);
    bt_raw_register(w2, "zsvc", N, 0); /* no features: it cannot read lz4 */
    REQUIRE(th_wait_workers(b, "zsvc", 2, 10000) == 0);
    ab_header_t bye = ab_header_init(AB_KIND_BYE);
    bt_raw_send(w1, &bye, NULL, 0, 0);
    int got = s_take(w2, NULL, a, m, 20000);
    CHECK_EQ(got, N);
    for (int i = 0; i < got; i++) {
        size_t n = m[i].has_body ? zmq_msg_size(&m[i].body) : 0;
        CHECK_TRUE(!(m[i].h.flags & AB_FLAG_LZ4));
        CHECK_TRUE(n == SIZE && !memcmp(zmq_msg_data(&m[i].body), text, SIZE));
        ab_header_t r = ab_header_init(AB_KIND_REPLY);
        r.correlation_id = m[i].h.id;
        bt_raw_send(w2, &r, m[i].has_body ? zmq_msg_data(&m[i].body) : "", n, 1);
        bt_msg_close(&m[i]);
    }
    int64_t end = ab_now_ms() + 20000;
    while (t.finals < N && ab_now_ms() < end) {
        ab_client_poll(a, 50);
        s_beat(NULL, w2);
    }
    CHECK_EQ(t.finals, N);
    CHECK_EQ(t.ok, N);
    Agentbus__Stats *st = th_stats(b);
    REQUIRE(st != NULL);
    CHECK_U64(st->lz4_refused, 0);
    CHECK_U64(st->link_lz4_plain, N); /* made plain by B, not sent plain by A */
    agentbus__stats__free_unpacked(st, NULL);
    free(text);
    ab_client_destroy(&a);
    ab_client_destroy(&b);
    void *socks[] = {w1, w2};
    bt_raw_close_all(socks, 2);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"lz4_race", s_race},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
