/*
 * test_turns.c - what the library sends when it hands control back to the
 * application: a batching turn ends when nothing more waits, so an answer
 * never depends on a later poll (issue 18's latency work); and what a
 * worker knows of a job (priority, model) and reports of its queue.
 * The broker is faked with a raw ROUTER where the exact order of what the
 * library receives matters; a real broker carries the job's fields.
 * One case per ctest entry: test_turns CASE.
 */
#include "batch.h"
#include "codec.h"
#include "harness.h"
#include "test.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

/* --- a hand-driven broker --------------------------------------------------------------- */
typedef struct {
    void *ctx, *router;
    zmq_msg_t rid; /* the peer under test, once it spoke */
    int port;
} s_fake_t;

typedef struct {
    zmq_msg_t hdr, body;
    int has_body;
    ab_header_t h;
} s_rx_t;

static void s_fake_open(s_fake_t *f)
{
    f->port = th_free_port();
    f->ctx = zmq_ctx_new();
    f->router = zmq_socket(f->ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(f->router, ZMQ_LINGER, &linger, sizeof linger);
    REQUIRE(zmq_bind(f->router, th_ep(f->port)) == 0);
    zmq_msg_init(&f->rid);
}

static void s_fake_close(s_fake_t *f)
{
    zmq_msg_close(&f->rid);
    zmq_close(f->router);
    zmq_ctx_term(f->ctx);
}

static void s_rx_close(s_rx_t *m)
{
    zmq_msg_close(&m->hdr);
    zmq_msg_close(&m->body);
}

/* One message from the peer within TIMEOUT_MS: 1, else 0 (M closed). */
static int s_fake_recv(s_fake_t *f, s_rx_t *m, int timeout_ms)
{
    zmq_pollitem_t it = {f->router, 0, ZMQ_POLLIN, 0};
    zmq_msg_t rid;
    zmq_msg_init(&rid);
    zmq_msg_init(&m->hdr);
    zmq_msg_init(&m->body);
    m->has_body = 0;
    if (zmq_poll(&it, 1, timeout_ms) <= 0 || zmq_msg_recv(&rid, f->router, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&rid);
        s_rx_close(m);
        return 0;
    }
    zmq_msg_close(&f->rid);
    zmq_msg_init(&f->rid);
    zmq_msg_move(&f->rid, &rid);
    zmq_msg_close(&rid);
    zmq_msg_recv(&m->hdr, f->router, 0);
    if (zmq_msg_more(&m->hdr)) {
        zmq_msg_recv(&m->body, f->router, 0);
        m->has_body = 1;
    }
    REQUIRE(ab_header_parse(zmq_msg_data(&m->hdr), zmq_msg_size(&m->hdr), &m->h) == AB_OK);
    return 1;
}

static void s_fake_send(s_fake_t *f, const ab_header_t *h, const void *data, size_t size)
{
    uint8_t buf[512];
    size_t n = ab_header_encode(h, buf, sizeof buf);
    zmq_send(f->router, zmq_msg_data(&f->rid), zmq_msg_size(&f->rid), ZMQ_SNDMORE);
    zmq_send(f->router, buf, n, data ? ZMQ_SNDMORE : 0);
    if (data)
        zmq_send(f->router, data, size, 0);
}

/* Sends the N headers (and their payloads, when given) as one BATCH, so
 * the library reads them in one turn, in this order. */
static void s_fake_batch(s_fake_t *f, const ab_header_t *hs, const char *const *data, int n)
{
    ab_batch_t b;
    ab_batch_init(&b);
    for (int i = 0; i < n; i++) {
        uint8_t hb[256];
        size_t hl = ab_header_encode(&hs[i], hb, sizeof hb);
        const char *d = data ? data[i] : NULL;
        REQUIRE(ab_batch_add(&b, hb, hl, d, d ? strlen(d) : 0, d != NULL) == AB_OK);
    }
    size_t len;
    const uint8_t *body = ab_batch_body(&b, &len);
    ab_header_t bh = ab_header_init(AB_KIND_BATCH);
    s_fake_send(f, &bh, body, len);
    ab_batch_fini(&b);
}

static ab_options_t *s_opts(int port)
{
    ab_options_t *o = ab_options_new();
    REQUIRE(o != NULL);
    REQUIRE(ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
    REQUIRE(ab_options_set_batching(o, 1) == AB_OK);
    return o;
}

/* A worker of "svc" connected to the fake broker, its REGISTER answered
 * with batching on and a 100 ms heartbeat. Runs the worker's side in this
 * thread (ab_worker_recv with short waits) until the answer is in. */
static ab_worker_t *s_worker_registered(s_fake_t *f, unsigned capacity)
{
    ab_options_t *o = s_opts(f->port);
    ab_worker_t *w = NULL;
    REQUIRE(ab_worker_new(&w, o, "svc", capacity) == AB_OK);
    ab_options_destroy(&o);
    int registered = 0;
    for (int i = 0; i < 200 && !registered; i++) {
        ab_job_t *job = NULL;
        int rc = ab_worker_recv(w, &job, 10);
        REQUIRE(rc == AB_ETIMEOUT);
        s_rx_t m;
        while (!registered && s_fake_recv(f, &m, 10)) {
            if (m.h.kind == AB_KIND_REGISTER) {
                ab_header_t a = ab_header_init(AB_KIND_REGISTER);
                a.correlation_id = m.h.id;
                a.target = ab_view_of("svc");
                a.credit = 100; /* the heartbeat interval the broker wants */
                a.features = AB_FEATURE_BATCH | AB_FEATURE_LZ4;
                s_fake_send(f, &a, NULL, 0);
                registered = 1;
            }
            s_rx_close(&m);
        }
    }
    REQUIRE(registered);
    /* Let the worker read the answer (it turns batching on). */
    for (int i = 0; i < 200 && !ab_worker_connected(w); i++) {
        ab_job_t *job = NULL;
        REQUIRE(ab_worker_recv(w, &job, 10) == AB_ETIMEOUT);
    }
    REQUIRE(ab_worker_connected(w));
    return w;
}

static ab_header_t s_request(uint64_t id)
{
    ab_header_t h = ab_header_init(AB_KIND_REQUEST);
    h.id = id;
    h.target = ab_view_of("svc");
    h.timeout_ms = 60000;
    return h;
}

static ab_header_t s_cancel(uint64_t id)
{
    ab_header_t h = ab_header_init(AB_KIND_CANCEL);
    h.correlation_id = id;
    h.error_code = AB_ERR_CANCELLED;
    return h;
}

/* Waits for the message of KIND answering ID; 1 if it came. */
static int s_fake_wait_answer(s_fake_t *f, uint32_t kind, uint64_t id, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    while (ab_now_ms() < end) {
        s_rx_t m;
        if (!s_fake_recv(f, &m, 50))
            continue;
        if (m.h.kind == AB_KIND_BATCH && m.has_body) {
            ab_batch_reader_t r;
            int found = 0;
            if (ab_batch_open(&r, zmq_msg_data(&m.body), zmq_msg_size(&m.body), NULL, NULL) ==
                AB_OK) {
                ab_frame_t fr[2], pl;
                size_t nf;
                ab_header_t eh;
                while (ab_batch_next(&r, fr, &nf) == 1)
                    if (ab_msg_decode(fr, nf, NULL, &eh, &pl) == AB_OK && eh.kind == kind &&
                        eh.correlation_id == id)
                        found = 1;
            }
            s_rx_close(&m);
            if (found)
                return 1;
            continue;
        }
        int hit = m.h.kind == kind && m.h.correlation_id == id;
        s_rx_close(&m);
        if (hit)
            return 1;
    }
    return 0;
}

/* --- cases ---------------------------------------------------------------------------- */

/* A job handed out by ab_worker_recv after the library itself sent in the
 * same turn (here the answer to a CANCEL for a job still queued): the
 * application's reply must leave at once, though the worker then calls
 * nothing more. Before the fix it waited in the batch for the next poll. */
static void s_worker_reply_alone(void)
{
    s_fake_t f;
    s_fake_open(&f);
    ab_worker_t *w = s_worker_registered(&f, 4);
    ab_header_t hs[3] = {s_request(1), s_cancel(1), s_request(2)};
    const char *data[3] = {"one", NULL, "two"};
    s_fake_batch(&f, hs, data, 3);
    ab_job_t *job = NULL;
    REQUIRE(ab_worker_recv(w, &job, 10000) == AB_OK);
    CHECK_U64(ab_job_id(job), 2);
    REQUIRE(ab_worker_reply(w, &job, "done", 4) == AB_OK);
    /* No library call on the worker from here until the answer is in. */
    CHECK_TRUE(s_fake_wait_answer(&f, AB_KIND_ERROR, 1, 10000));
    CHECK_TRUE(s_fake_wait_answer(&f, AB_KIND_REPLY, 2, 10000));
    ab_worker_destroy(&w);
    s_fake_close(&f);
}

/* The same through ab_worker_poll's callback: the reply it sends leaves
 * before the poll returns, whatever the application does next. */
static void s_reply_in_callback(ab_worker_t *w, ab_job_t *job, void *arg)
{
    (*(int *)arg)++;
    ab_worker_reply(w, &job, "done", 4);
}

static void s_worker_poll_reply(void)
{
    s_fake_t f;
    s_fake_open(&f);
    ab_worker_t *w = s_worker_registered(&f, 4);
    ab_header_t hs[3] = {s_request(1), s_cancel(1), s_request(2)};
    const char *data[3] = {"one", NULL, "two"};
    s_fake_batch(&f, hs, data, 3);
    int jobs = 0;
    for (int i = 0; i < 100 && jobs == 0; i++)
        REQUIRE(ab_worker_poll(w, 100, s_reply_in_callback, &jobs) >= 0);
    CHECK_EQ(jobs, 1);
    CHECK_TRUE(s_fake_wait_answer(&f, AB_KIND_REPLY, 2, 10000));
    ab_worker_destroy(&w);
    s_fake_close(&f);
}

/* A client hands out a direct message that asked for a receipt (the
 * library sends the receipt, using the turn's direct send); the
 * application's answer must reach the broker with no later poll. */
static void s_client_answer_alone(void)
{
    s_fake_t f;
    s_fake_open(&f);
    ab_options_t *o = s_opts(f.port);
    ab_client_t *c = NULL;
    REQUIRE(ab_client_new(&c, o) == AB_OK);
    ab_options_destroy(&o);
    int hello = 0;
    for (int i = 0; i < 200 && !hello; i++) {
        ab_client_poll(c, 10);
        s_rx_t m;
        if (!s_fake_recv(&f, &m, 10))
            continue;
        if (m.h.kind == AB_KIND_HELLO) {
            ab_header_t a = ab_header_init(AB_KIND_HELLO);
            a.correlation_id = m.h.id;
            a.credit = 1000;
            a.features = AB_FEATURE_BATCH | AB_FEATURE_LZ4;
            s_fake_send(&f, &a, NULL, 0);
            hello = 1;
        }
        s_rx_close(&m);
    }
    REQUIRE(hello);
    ab_header_t d = ab_header_init(AB_KIND_SEND);
    d.id = 77;
    d.sender = ab_view_of("asker");
    d.target = ab_view_of("~me");
    d.flags = AB_FLAG_WANT_RECEIPT;
    const char *data[1] = {"question"};
    s_fake_batch(&f, &d, data, 1);
    ab_message_t *msg = NULL;
    REQUIRE(ab_client_recv(c, &msg, 10000) == AB_OK);
    CHECK_STR(msg->sender, "asker");
    REQUIRE(ab_client_reply(c, msg, "answer", 6) == AB_OK);
    ab_message_destroy(&msg);
    /* The answer is a SEND to "asker"; no library call on C until it is in. */
    int got = 0;
    int64_t end = ab_now_ms() + 10000;
    while (!got && ab_now_ms() < end) {
        s_rx_t m;
        if (!s_fake_recv(&f, &m, 50))
            continue;
        got = m.h.kind == AB_KIND_SEND && !(m.h.flags & AB_FLAG_RECEIPT) && m.has_body &&
              zmq_msg_size(&m.body) == 6 && memcmp(zmq_msg_data(&m.body), "answer", 6) == 0;
        s_rx_close(&m);
    }
    CHECK_TRUE(got);
    ab_client_destroy(&c);
    s_fake_close(&f);
}

/* A job cancelled while still queued in the library: the next heartbeat
 * reports it neither queued nor holding credit. */
static void s_cancel_queued_counts(void)
{
    s_fake_t f;
    s_fake_open(&f);
    ab_worker_t *w = s_worker_registered(&f, 4);
    ab_header_t hs[2] = {s_request(1), s_cancel(1)};
    const char *data[2] = {"one", NULL};
    s_fake_batch(&f, hs, data, 2);
    int cancelled = 0, checked = 0;
    int64_t end = ab_now_ms() + 20000;
    while (!checked && ab_now_ms() < end) {
        ab_job_t *job = NULL;
        CHECK_EQ(ab_worker_recv(w, &job, 20), AB_ETIMEOUT); /* the job never comes out */
        s_rx_t m;
        while (!checked && s_fake_recv(&f, &m, 0)) {
            if (m.h.kind == AB_KIND_ERROR && m.h.correlation_id == 1) {
                CHECK_EQ((int)m.h.error_code, AB_ERR_CANCELLED);
                cancelled = 1;
            } else if (m.h.kind == AB_KIND_HEARTBEAT && cancelled && m.has_body) {
                /* Sent after the cancel's answer: the state after it. */
                Agentbus__WorkerHeartbeat *hb = agentbus__worker_heartbeat__unpack(
                    NULL, zmq_msg_size(&m.body), zmq_msg_data(&m.body));
                REQUIRE(hb != NULL);
                CHECK_U64(hb->queued, 0);
                CHECK_U64(hb->in_flight, 0);
                CHECK_U64(hb->free_credit, 4);
                agentbus__worker_heartbeat__free_unpacked(hb, NULL);
                checked = 1;
            }
            s_rx_close(&m);
        }
    }
    CHECK_TRUE(cancelled);
    CHECK_TRUE(checked);
    ab_worker_destroy(&w);
    s_fake_close(&f);
}

/* Priority and model travel from the client's options through a real
 * broker to the worker's job; a request without them reads 0 and "". */
static void s_job_fields(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    ab_options_t *o = s_opts(port);
    ab_worker_t *w = NULL;
    REQUIRE(ab_worker_new(&w, o, "svc", 2) == AB_OK);
    ab_options_destroy(&o);
    ab_client_t *c = th_client(port);
    for (int i = 0; i < 500 && !ab_worker_connected(w); i++) {
        ab_job_t *job = NULL;
        ab_worker_recv(w, &job, 10);
    }
    REQUIRE(ab_worker_connected(w));
    REQUIRE(th_wait_workers(c, "svc", 1, 10000) == 0);
    ab_request_opts_t ro = AB_REQUEST_OPTS_INIT;
    ro.timeout_ms = 20000;
    ro.priority = 7;
    ro.model = "llama3:8b";
    uint64_t id1 = 0, id2 = 0;
    REQUIRE(ab_client_request_start(c, "svc", "a", 1, &ro, NULL, NULL, &id1) == AB_OK);
    ro.priority = 0;
    ro.model = NULL;
    REQUIRE(ab_client_request_start(c, "svc", "b", 1, &ro, NULL, NULL, &id2) == AB_OK);
    ab_client_flush(c);
    int seen = 0;
    for (int i = 0; i < 1000 && seen < 2; i++) {
        ab_client_poll(c, 0);
        ab_job_t *job = NULL;
        if (ab_worker_recv(w, &job, 10) != AB_OK)
            continue;
        size_t n = 0;
        const char *d = ab_job_data(job, &n);
        REQUIRE(n == 1);
        if (d[0] == 'a') {
            CHECK_U64(ab_job_priority(job), 7);
            CHECK_STR(ab_job_model(job), "llama3:8b");
        } else {
            CHECK_U64(ab_job_priority(job), 0);
            CHECK_STR(ab_job_model(job), "");
        }
        ab_worker_reply(w, &job, "ok", 2);
        seen++;
    }
    CHECK_EQ(seen, 2);
    CHECK_U64(ab_job_priority(NULL), 0);
    CHECK_STR(ab_job_model(NULL), "");
    ab_client_destroy(&c);
    ab_worker_destroy(&w);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"worker_reply_alone", s_worker_reply_alone},
        {"worker_poll_reply", s_worker_poll_reply},
        {"client_answer_alone", s_client_answer_alone},
        {"cancel_queued_counts", s_cancel_queued_counts},
        {"job_fields", s_job_fields},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
