/* batchtest.c - the batching cases' shared helpers (batchtest.h). */
#include "batch.h"
#include "harness.h"
#include "test.h"
#include "util.h"
#include "batchtest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- async request bookkeeping ------------------------------------------------------ */

void bt_tally_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    bt_tally_t *t = arg;
    if (ev->final) {
        t->finals++;
        t->ok += ev->status == AB_OK;
    } else {
        t->partials++;
    }
    if (ev->status == AB_OK && t->len + ev->size <= sizeof t->data) {
        memcpy(t->data + t->len, ev->data, ev->size);
        t->len += ev->size;
    }
}

void bt_poll_until(ab_client_t *c, bt_tally_t *t, int want, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    while (t->finals < want && ab_now_ms() < end)
        ab_client_poll(c, 50);
}

/* --- raw peers ------------------------------------------------------------------ */
void *bt_ctx;

void *bt_raw(int port)
{
    if (!bt_ctx)
        bt_ctx = zmq_ctx_new();
    void *s = zmq_socket(bt_ctx, ZMQ_DEALER);
    int linger = 0, hwm = 100000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    th_secure(s); /* CURVE under AB_TEST_AUTH=curve */
    REQUIRE(zmq_connect(s, th_ep(port)) == 0);
    return s;
}

void bt_raw_close_all(void **socks, int n)
{
    for (int i = 0; i < n; i++)
        zmq_close(socks[i]);
    zmq_ctx_term(bt_ctx);
    bt_ctx = NULL;
}

/* Sends H and, when HAS_PAYLOAD, a payload frame. */
void bt_raw_send(void *s, const ab_header_t *h, const void *data, size_t size,
                       int has_payload)
{
    uint8_t buf[1024];
    size_t n = ab_header_encode(h, buf, sizeof buf);
    REQUIRE(n > 0);
    REQUIRE(zmq_send(s, buf, n, has_payload ? ZMQ_SNDMORE : 0) >= 0);
    if (has_payload)
        REQUIRE(zmq_send(s, data ? data : "", size, 0) >= 0);
}


/* Receives one message within timeout_ms: 1, or 0 on timeout. */
int bt_raw_recv(void *s, bt_msg_t *m, int timeout_ms)
{
    zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
    zmq_msg_init(&m->hdr);
    zmq_msg_init(&m->body);
    m->has_body = 0;
    if (zmq_poll(&it, 1, timeout_ms) <= 0 || zmq_msg_recv(&m->hdr, s, ZMQ_DONTWAIT) < 0)
        return 0;
    if (zmq_msg_more(&m->hdr)) {
        zmq_msg_recv(&m->body, s, 0);
        m->has_body = 1;
    }
    CHECK_EQ(ab_header_parse(zmq_msg_data(&m->hdr), zmq_msg_size(&m->hdr), &m->h), AB_OK);
    return 1;
}

void bt_msg_close(bt_msg_t *m)
{
    zmq_msg_close(&m->hdr);
    zmq_msg_close(&m->body);
}

/* Receives the next message that is not a HEARTBEAT within timeout_ms: 1,
 * or 0 on timeout. The broker may send a HEARTBEAT to any peer at any time
 * (a probe when a connection closes, a worker's new interval), so a raw
 * peer never takes the first message it gets as the answer it waits for. */
int bt_raw_recv_msg(void *s, bt_msg_t *m, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = end - ab_now_ms();
        if (!bt_raw_recv(s, m, left > 0 ? (int)left : 0))
            return 0;
        if (m->h.kind != AB_KIND_HEARTBEAT)
            return 1;
        bt_msg_close(m);
    }
}

int bt_lz4_local;

/* HELLO with FEATURES in a Hello payload (0: no payload, as an old peer). */
void bt_raw_hello(void *s, uint32_t features)
{
    Agentbus__Hello m;
    agentbus__hello__init(&m);
    m.name = (char *)"raw";
    m.role = (char *)"agent";
    m.features = features;
    uint8_t buf[128];
    size_t len = agentbus__hello__pack(&m, buf);
    ab_header_t h = ab_header_init(AB_KIND_HELLO);
    h.id = 1;
    bt_raw_send(s, &h, buf, len, features != 0);
    bt_msg_t r;
    REQUIRE(bt_raw_recv_msg(s, &r, 5000));
    CHECK_EQ(r.h.kind, AB_KIND_HELLO);
    /* LZ4 only where the hop compresses: not on loopback by default. */
    CHECK_U64(r.h.features,
              AB_FEATURE_BATCH | AB_FEATURE_INLINE | (bt_lz4_local ? AB_FEATURE_LZ4 : 0));
    bt_msg_close(&r);
}

/* REGISTER for SERVICE; FEATURES != 0 sends a Register payload with them. */
void bt_raw_register(void *s, const char *service, uint32_t capacity, uint32_t features)
{
    Agentbus__Register m;
    agentbus__register__init(&m);
    m.service = (char *)service;
    m.capacity = capacity;
    m.name = (char *)"rawworker";
    m.features = features;
    uint8_t buf[256];
    size_t len = agentbus__register__pack(&m, buf);
    ab_header_t h = ab_header_init(AB_KIND_REGISTER);
    h.id = 1;
    h.target = ab_view_of(service);
    h.credit = capacity;
    bt_raw_send(s, &h, buf, len, features != 0);
    /* A worker that reads BATCH may get the answer inside one (with a
     * HEARTBEAT telling its interval, say). */
    int answered = 0;
    int64_t end = ab_now_ms() + 5000;
    while (!answered && ab_now_ms() < end) {
        bt_msg_t r;
        if (!bt_raw_recv_msg(s, &r, 500))
            continue;
        answered = r.h.kind == AB_KIND_REGISTER;
        ab_batch_reader_t br;
        ab_frame_t f[2];
        size_t nf;
        if (r.h.kind == AB_KIND_BATCH &&
            ab_batch_open(&br, zmq_msg_data(&r.body), zmq_msg_size(&r.body), NULL, NULL) == AB_OK)
            while (ab_batch_next(&br, f, &nf) == 1) {
                ab_header_t eh;
                answered |= ab_header_parse(f[0].data, f[0].size, &eh) == AB_OK &&
                            eh.kind == AB_KIND_REGISTER;
            }
        bt_msg_close(&r);
    }
    REQUIRE(answered);
}


char *bt_text(size_t n)
{
    static const char *words[] = {"The ", "agent ", "asked ", "the ", "model ", "about ",
                                  "context ", "windows, ", "tokens ", "and ", "\"role\": ",
                                  "\"assistant\", ", "reply. ", "\n"};
    char *t = malloc(n);
    size_t k = 0;
    while (k < n) {
        const char *w = words[t_rand() % 14];
        for (size_t i = 0; w[i] && k < n; i++)
            t[k++] = w[i];
    }
    return t;
}


/* A client that does not batch: the broker's batch counters then count
 * only what the test sends by hand. */
ab_client_t *bt_client_nobatch(int port)
{
    ab_options_t *o = ab_options_new();
    REQUIRE(ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
    REQUIRE(ab_options_set_batching(o, 0) == AB_OK);
    ab_client_t *c = NULL;
    REQUIRE(ab_client_new(&c, o) == AB_OK);
    ab_options_destroy(&o);
    return c;
}

/* A ROUTER bound on a free loopback port (*PORT) for a test to play the
 * broker on. It never drops what it sends (no high-water mark: set before
 * the bind, as the connections it accepts take the options then). */
void *bt_fake_router(int *port)
{
    *port = th_free_port();
    if (!bt_ctx)
        bt_ctx = zmq_ctx_new();
    void *router = zmq_socket(bt_ctx, ZMQ_ROUTER);
    REQUIRE(router != NULL);
    int linger = 0, hwm = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(router, ZMQ_SNDHWM, &hwm, sizeof hwm);
    REQUIRE(zmq_bind(router, th_ep(*port)) == 0);
    return router;
}

/* The fake broker's answer to a HELLO or REGISTER (KIND, id ID) from the
 * peer RID: credit 1000, FEATURES, TARGET when not NULL. */
void bt_fake_answer(void *router, zmq_msg_t *rid, uint32_t kind, uint64_t id,
                    uint32_t features, const char *target)
{
    ab_header_t a = ab_header_init(kind);
    a.correlation_id = id;
    a.credit = 1000;
    a.features = features;
    if (target)
        a.target = ab_view_of(target);
    uint8_t hb[64];
    size_t hl = ab_header_encode(&a, hb, sizeof hb);
    REQUIRE(hl > 0);
    zmq_send(router, zmq_msg_data(rid), zmq_msg_size(rid), ZMQ_SNDMORE);
    zmq_send(router, hb, hl, 0);
}
