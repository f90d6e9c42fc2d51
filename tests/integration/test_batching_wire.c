/*
 * test_batching_wire.c - the library's side of the wire (part of
 * test_batching, batchtest.h): its BATCH decoder against a hand-driven
 * broker, and a worker's answer to a CANCEL that was flushed in a batch.
 */
#include "batch.h"
#include "compress.h"
#include "harness.h"
#include "test.h"
#include "util.h"
#include "batchtest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- the library's decoder, against a hand-driven broker ---------------------------- */
typedef struct {
    zmq_msg_t rid, hdr, body;
    int has_body;
    ab_header_t h;
} s_rmsg_t;

static int s_router_recv(void *r, s_rmsg_t *m, int timeout_ms)
{
    zmq_pollitem_t it = {r, 0, ZMQ_POLLIN, 0};
    zmq_msg_init(&m->rid);
    zmq_msg_init(&m->hdr);
    zmq_msg_init(&m->body);
    m->has_body = 0;
    if (zmq_poll(&it, 1, timeout_ms) <= 0 || zmq_msg_recv(&m->rid, r, ZMQ_DONTWAIT) < 0)
        return 0;
    zmq_msg_recv(&m->hdr, r, 0);
    if (zmq_msg_more(&m->hdr)) {
        zmq_msg_recv(&m->body, r, 0);
        m->has_body = 1;
    }
    return ab_header_parse(zmq_msg_data(&m->hdr), zmq_msg_size(&m->hdr), &m->h) == AB_OK;
}

static void s_router_send(void *r, zmq_msg_t *rid, const ab_header_t *h, const void *data,
                          size_t size)
{
    uint8_t buf[512];
    size_t n = ab_header_encode(h, buf, sizeof buf);
    zmq_send(r, zmq_msg_data(rid), zmq_msg_size(rid), ZMQ_SNDMORE);
    zmq_send(r, buf, n, data ? ZMQ_SNDMORE : 0);
    if (data)
        zmq_send(r, data, size, 0);
}

static void s_rmsg_close(s_rmsg_t *m)
{
    zmq_msg_close(&m->rid);
    zmq_msg_close(&m->hdr);
    zmq_msg_close(&m->body);
}

void batch_client_decode(void)
{
    int port = th_free_port();
    bt_ctx = zmq_ctx_new();
    void *router = zmq_socket(bt_ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger);
    REQUIRE(zmq_bind(router, th_ep(port)) == 0);
    ab_client_t *c = th_client(port);
    bt_tally_t t = {0};
    uint64_t id = 0;
    REQUIRE(ab_client_request_start(c, "svc", "q", 1, &(ab_request_opts_t){.timeout_ms = 20000},
                                    bt_tally_cb, &t, &id) == AB_OK);
    /* Act as the broker: answer HELLO with our features, take the REQUEST. */
    int hello = 0, request = 0;
    zmq_msg_t rid;
    zmq_msg_init(&rid);
    for (int i = 0; i < 50 && !(hello && request); i++) {
        ab_client_poll(c, 10);
        s_rmsg_t m;
        if (!s_router_recv(router, &m, 100)) {
            s_rmsg_close(&m);
            continue;
        }
        if (m.h.kind == AB_KIND_HELLO) {
            Agentbus__Hello *hm = agentbus__hello__unpack(NULL, zmq_msg_size(&m.body),
                                                          zmq_msg_data(&m.body));
            REQUIRE(hm != NULL);
            CHECK_U64(hm->features, AB_FEATURE_BATCH | AB_FEATURE_LZ4 | AB_FEATURE_INLINE);
            agentbus__hello__free_unpacked(hm, NULL);
            ab_header_t a = ab_header_init(AB_KIND_HELLO);
            a.correlation_id = m.h.id;
            a.credit = 1000;
            a.features = AB_FEATURE_BATCH | AB_FEATURE_LZ4; /* not INLINE: two frames */
            s_router_send(router, &m.rid, &a, NULL, 0);
            hello = 1;
        } else if (m.h.kind == AB_KIND_REQUEST) {
            CHECK_U64(m.h.id, id);
            zmq_msg_copy(&rid, &m.rid);
            request = 1;
        }
        s_rmsg_close(&m);
    }
    REQUIRE(hello && request);
    /* A malformed batch (count says 3, holds 2) with a REPLY in it: the
     * library must deliver nothing from it. */
    char *text = bt_text(8192);
    void *z;
    size_t zl;
    REQUIRE(ab_lz4_compress(text, 8192, 10, &z, &zl) == 1);
    ab_batch_t b;
    ab_batch_init(&b);
    ab_header_t part = ab_header_init(AB_KIND_PARTIAL), fin = ab_header_init(AB_KIND_REPLY);
    part.correlation_id = fin.correlation_id = id;
    fin.flags = AB_FLAG_LZ4;
    fin.original_size = 8192;
    uint8_t hb[2][64];
    size_t hl0 = ab_header_encode(&part, hb[0], 64), hl1 = ab_header_encode(&fin, hb[1], 64);
    ab_batch_add(&b, hb[0], hl0, "part-", 5, 1);
    ab_batch_add(&b, hb[1], hl1, z, zl, 1);
    size_t len;
    const uint8_t *body = ab_batch_body(&b, &len);
    uint8_t *bad = malloc(len);
    memcpy(bad, body, len);
    bad[0] = 3;
    ab_header_t bh = ab_header_init(AB_KIND_BATCH);
    s_router_send(router, &rid, &bh, bad, len);
    int64_t end = ab_now_ms() + 300;
    while (ab_now_ms() < end)
        ab_client_poll(c, 20);
    CHECK_EQ(t.partials, 0);
    CHECK_EQ(t.finals, 0);
    /* The good batch: a plain PARTIAL, then the compressed REPLY. */
    s_router_send(router, &rid, &bh, body, len);
    bt_poll_until(c, &t, 1, 5000);
    CHECK_EQ(t.partials, 1);
    CHECK_EQ(t.finals, 1);
    CHECK_EQ(t.ok, 1);
    CHECK_U64(t.len, 5 + 8192);
    CHECK_TRUE(memcmp(t.data, "part-", 5) == 0 && memcmp(t.data + 5, text, 8192) == 0);
    free(bad);
    free(z);
    free(text);
    ab_batch_fini(&b);
    zmq_msg_close(&rid);
    ab_client_destroy(&c);
    zmq_close(router);
    zmq_ctx_term(bt_ctx);
    bt_ctx = NULL;
}

/* --- a worker's answer to a CANCEL ------------------------------------------------------ */
typedef struct {
    ab_job_t *job;
    int cancelled;
} s_held_t;

/* As the Ollama backend does: a cancel shrinks the slots (a REGISTER, the
 * turn's first message, goes at once), then answers the job (gathered). */
static void s_on_cancel(ab_worker_t *w, uint64_t id, int why, void *arg)
{
    (void)id;
    (void)why;
    s_held_t *x = arg;
    ab_worker_set_capacity(w, 1);
    ab_worker_fail(w, &x->job, AB_ECANCELLED, "cancelled");
    x->cancelled = 1;
}

static int s_worker_in_flight(ab_client_t *c)
{
    Agentbus__WorkerList *wl = th_workers(c);
    int n = wl && wl->n_workers == 1 ? (int)wl->workers[0]->in_flight : 99;
    if (wl)
        agentbus__worker_list__free_unpacked(wl, NULL);
    return n;
}

/* A worker polled with a zero timeout (a backend that then sleeps in its
 * own poll) handles a CANCEL: its answer must leave before the call
 * returns. It used to stay gathered until the next call, so the broker
 * still counted the request at the worker (and single-flight still led
 * identical requests to it). Here the worker is not called again until
 * the broker has seen the answer, so a held one fails the check. */
void batch_cancel_flushed(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    ab_client_t *c = th_client(port);
    ab_options_t *o = ab_options_new();
    ab_options_set_endpoint(o, th_ep(port));
    ab_worker_t *w = NULL;
    REQUIRE(ab_worker_new(&w, o, "echo", 2) == AB_OK);
    ab_options_destroy(&o);
    s_held_t x = {NULL, 0};
    ab_worker_set_cancel_handler(w, s_on_cancel, &x);
    for (int i = 0; i < 500 && !ab_worker_connected(w); i++) {
        ab_job_t *j;
        ab_worker_recv(w, &j, 10);
    }
    REQUIRE(th_wait_workers(c, "echo", 1, 10000) == 0);
    uint64_t id = 0;
    bt_tally_t t;
    memset(&t, 0, sizeof t);
    REQUIRE(ab_client_request_start(c, "echo", "x", 1, &(ab_request_opts_t){.timeout_ms = 20000},
                                    bt_tally_cb, &t, &id) == AB_OK);
    for (int i = 0; i < 500 && !x.job; i++) {
        ab_client_poll(c, 5);
        ab_worker_recv(w, &x.job, 5);
    }
    REQUIRE(x.job != NULL);
    CHECK_EQ(ab_client_cancel(c, id), AB_OK);
    for (int i = 0; i < 500 && !x.cancelled; i++) {
        ab_client_poll(c, 5);
        ab_job_t *j = NULL;
        ab_worker_recv(w, &j, 0);
        if (j)
            ab_worker_fail(w, &j, AB_EINTERNAL, "unexpected");
        th_sleep_ms(5);
    }
    REQUIRE(x.cancelled);
    /* The worker is left alone now: only what it already sent counts. Its
     * answer to the orphaned request is dropped and counted; nothing else
     * (the broker presuming a silent worker dead, say) counts there. */
    unsigned long long dropped = 0;
    for (int i = 0; i < 100 && dropped < 1; i++) {
        Agentbus__Stats *st = th_stats(c);
        dropped = st ? st->replies_dropped : 0;
        if (st)
            agentbus__stats__free_unpacked(st, NULL);
        if (dropped < 1)
            ab_client_poll(c, 50);
    }
    CHECK_U64(dropped, 1);
    CHECK_EQ(s_worker_in_flight(c), 0); /* its credit is back */
    ab_worker_destroy(&w);
    ab_client_destroy(&c);
}
