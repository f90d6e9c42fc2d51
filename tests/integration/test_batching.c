/*
 * test_batching.c - issue 4 end to end: BATCH and lz4 between real broker,
 * worker and client processes (and raw ZeroMQ peers that speak the wire by
 * hand, to see exactly what the broker sends and forwards).
 * One case per ctest entry: test_batching CASE.
 */
#include "batch.h"
#include "codec.h"
#include "compress.h"
#include "harness.h"
#include "test.h"
#include "util.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

/* --- async request bookkeeping ------------------------------------------------------ */
typedef struct {
    int finals, partials, ok;
    char data[16384];
    size_t len;
} s_tally_t;

static void s_tally_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    s_tally_t *t = arg;
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

static void s_poll_until(ab_client_t *c, s_tally_t *t, int want, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    while (t->finals < want && ab_now_ms() < end)
        ab_client_poll(c, 50);
}

/* --- raw peers ------------------------------------------------------------------ */
static void *s_ctx;

static void *s_raw(int port)
{
    if (!s_ctx)
        s_ctx = zmq_ctx_new();
    void *s = zmq_socket(s_ctx, ZMQ_DEALER);
    int linger = 0, hwm = 100000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    th_secure(s); /* CURVE under AB_TEST_AUTH=curve */
    REQUIRE(zmq_connect(s, th_ep(port)) == 0);
    return s;
}

static void s_raw_close_all(void **socks, int n)
{
    for (int i = 0; i < n; i++)
        zmq_close(socks[i]);
    zmq_ctx_term(s_ctx);
    s_ctx = NULL;
}

/* Sends H and, when HAS_PAYLOAD, a payload frame. */
static void s_raw_send(void *s, const ab_header_t *h, const void *data, size_t size,
                       int has_payload)
{
    uint8_t buf[1024];
    size_t n = ab_header_encode(h, buf, sizeof buf);
    REQUIRE(n > 0);
    REQUIRE(zmq_send(s, buf, n, has_payload ? ZMQ_SNDMORE : 0) >= 0);
    if (has_payload)
        REQUIRE(zmq_send(s, data ? data : "", size, 0) >= 0);
}

/* One received message: header bytes (parsed into h) and payload. */
typedef struct {
    zmq_msg_t hdr, body;
    int has_body;
    ab_header_t h;
} s_msg_t;

/* Receives one message within timeout_ms: 1, or 0 on timeout. */
static int s_raw_recv(void *s, s_msg_t *m, int timeout_ms)
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

static void s_msg_close(s_msg_t *m)
{
    zmq_msg_close(&m->hdr);
    zmq_msg_close(&m->body);
}

/* Receives the next message that is not a HEARTBEAT within timeout_ms: 1,
 * or 0 on timeout. The broker may send a HEARTBEAT to any peer at any time
 * (a probe when a connection closes, a worker's new interval), so a raw
 * peer never takes the first message it gets as the answer it waits for. */
static int s_raw_recv_msg(void *s, s_msg_t *m, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = end - ab_now_ms();
        if (!s_raw_recv(s, m, left > 0 ? (int)left : 0))
            return 0;
        if (m->h.kind != AB_KIND_HEARTBEAT)
            return 1;
        s_msg_close(m);
    }
}

/* HELLO with FEATURES in a Hello payload (0: no payload, as an old peer). */
static void s_raw_hello(void *s, uint32_t features)
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
    s_raw_send(s, &h, buf, len, features != 0);
    s_msg_t r;
    REQUIRE(s_raw_recv_msg(s, &r, 5000));
    CHECK_EQ(r.h.kind, AB_KIND_HELLO);
    CHECK_U64(r.h.features, AB_FEATURE_BATCH | AB_FEATURE_LZ4);
    s_msg_close(&r);
}

/* REGISTER for SERVICE; FEATURES != 0 sends a Register payload with them. */
static void s_raw_register(void *s, const char *service, uint32_t capacity, uint32_t features)
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
    s_raw_send(s, &h, buf, len, features != 0);
    /* A worker that reads BATCH may get the answer inside one (with a
     * HEARTBEAT telling its interval, say). */
    int answered = 0;
    int64_t end = ab_now_ms() + 5000;
    while (!answered && ab_now_ms() < end) {
        s_msg_t r;
        if (!s_raw_recv_msg(s, &r, 500))
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
        s_msg_close(&r);
    }
    REQUIRE(answered);
}

/* --- many agents, many small requests ----------------------------------------------- */
enum { AGENTS = 4, PER_AGENT = 2500, WINDOW = 500 };

typedef struct {
    int port, index;
    int answered[PER_AGENT];
    int ok, dup, out_of_order, bad_payload, done;
    int next_expected;
} s_agent_t;

typedef struct {
    s_agent_t *a;
    int seq;
} s_ticket_t;

static void s_agent_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    s_ticket_t *t = arg;
    s_agent_t *a = t->a;
    if (!ev->final)
        return;
    if (a->answered[t->seq]++)
        a->dup++;
    if (t->seq != a->next_expected)
        a->out_of_order++;
    a->next_expected = t->seq + 1;
    char want[64];
    int n = snprintf(want, sizeof want, "agent-%d-msg-%d", a->index, t->seq);
    if (ev->status == AB_OK) {
        a->ok++;
        if (ev->size != (size_t)n || memcmp(ev->data, want, (size_t)n) != 0)
            a->bad_payload++;
    }
    a->done++;
}

static void *s_agent_main(void *arg)
{
    s_agent_t *a = arg;
    ab_client_t *c = th_client(a->port);
    s_ticket_t *tickets = calloc(PER_AGENT, sizeof *tickets);
    int sent = 0;
    int64_t end = ab_now_ms() + 60000;
    while (a->done < PER_AGENT && ab_now_ms() < end) {
        while (sent < PER_AGENT && sent - a->done < WINDOW) {
            char msg[64];
            int n = snprintf(msg, sizeof msg, "agent-%d-msg-%d", a->index, sent);
            tickets[sent].a = a;
            tickets[sent].seq = sent;
            if (ab_client_request_start(c, "echo", msg, (size_t)n,
                                        &(ab_request_opts_t){.timeout_ms = 30000}, s_agent_cb,
                                        &tickets[sent], NULL) != AB_OK)
                break;
            sent++;
        }
        ab_client_poll(c, 50);
    }
    ab_client_destroy(&c);
    free(tickets);
    return NULL;
}

static void s_many(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    th_worker(port, "echo", "--capacity", "1000", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "echo", 1, 10000) == 0);
    static s_agent_t agents[AGENTS];
    pthread_t th[AGENTS];
    for (int i = 0; i < AGENTS; i++) {
        agents[i].port = port;
        agents[i].index = i;
        REQUIRE(pthread_create(&th[i], NULL, s_agent_main, &agents[i]) == 0);
    }
    for (int i = 0; i < AGENTS; i++)
        pthread_join(th[i], NULL);
    int total = 0;
    for (int i = 0; i < AGENTS; i++) {
        s_agent_t *a = &agents[i];
        int once = 0;
        for (int k = 0; k < PER_AGENT; k++)
            once += a->answered[k] == 1;
        printf("agent %d: %d ok, %d answered once, %d dup, %d out of order, %d bad payload\n",
               i, a->ok, once, a->dup, a->out_of_order, a->bad_payload);
        CHECK_EQ(once, PER_AGENT);
        CHECK_EQ(a->ok, PER_AGENT);
        CHECK_EQ(a->dup, 0);
        CHECK_EQ(a->out_of_order, 0);
        CHECK_EQ(a->bad_payload, 0);
        total += a->ok;
    }
    CHECK_EQ(total, AGENTS * PER_AGENT);
    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    printf("batches in %llu (%llu msgs), out %llu (%llu msgs); factor in %.2f out %.2f\n",
           (unsigned long long)st->batches_in, (unsigned long long)st->batched_msgs_in,
           (unsigned long long)st->batches_out, (unsigned long long)st->batched_msgs_out,
           st->batch_factor_in, st->batch_factor_out);
    /* With 500 requests in flight per agent, messages did share ZeroMQ
     * messages in both directions. */
    CHECK_TRUE(st->batches_in > 0);
    CHECK_TRUE(st->batches_out > 0);
    CHECK_TRUE(st->batch_factor_in > 1.0);
    CHECK_TRUE(st->batch_factor_out > 1.0);
    CHECK_EQ(st->batch_malformed, 0);
    CHECK_U64(st->replies, AGENTS * PER_AGENT + 0ull);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&c);
}

/* --- peers that do not announce batching ------------------------------------------ */
static void s_old_peer(void)
{
    enum { N = 300 };
    int port = th_free_port();
    th_broker(port, NULL);
    th_worker(port, "echo", "--capacity", "1000", NULL);
    void *socks[2];
    /* An old worker: REGISTER without a Register payload, as 0.1 could. */
    void *oldw = socks[0] = s_raw(port);
    s_raw_register(oldw, "old", 1000, 0);
    /* An old client: HELLO without features. */
    void *oldc = socks[1] = s_raw(port);
    s_raw_hello(oldc, 0);

    /* A batching client sends N requests to the old worker in one burst:
     * they reach the broker batched and the old worker one by one. */
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "echo", 1, 10000) == 0);
    int done = 0;
    for (int i = 0; i < N; i++)
        REQUIRE(ab_client_request_start(c, "old", "ping", 4,
                                        &(ab_request_opts_t){.timeout_ms = 20000}, NULL, NULL,
                                        NULL) == AB_OK);
    ab_client_flush(c);
    int got = 0, batches = 0;
    for (int i = 0; i < N; i++) {
        s_msg_t m;
        if (!s_raw_recv_msg(oldw, &m, 5000))
            break;
        batches += m.h.kind == AB_KIND_BATCH;
        if (m.h.kind == AB_KIND_REQUEST) {
            got++;
            ab_header_t r = ab_header_init(AB_KIND_REPLY);
            r.correlation_id = m.h.id;
            s_raw_send(oldw, &r, "pong", 4, 1);
        }
        s_msg_close(&m);
    }
    CHECK_EQ(batches, 0);
    CHECK_EQ(got, N);
    int64_t end = ab_now_ms() + 10000;
    while (ab_client_pending(c) && ab_now_ms() < end)
        ab_client_poll(c, 50);
    CHECK_EQ(ab_client_pending(c), 0);
    (void)done;

    /* The old client sends N requests to the batching echo worker: the
     * replies come back one ZeroMQ message each. */
    for (int i = 0; i < N; i++) {
        ab_header_t h = ab_header_init(AB_KIND_REQUEST);
        h.id = (uint64_t)i + 100;
        h.target = ab_view_of("echo");
        s_raw_send(oldc, &h, "hi", 2, 1);
    }
    int replies = 0, in_order = 1;
    batches = 0;
    for (int i = 0; i < N; i++) {
        s_msg_t m;
        if (!s_raw_recv_msg(oldc, &m, 5000))
            break;
        batches += m.h.kind == AB_KIND_BATCH;
        if (m.h.kind == AB_KIND_REPLY) {
            if (m.h.correlation_id != (uint64_t)replies + 100)
                in_order = 0;
            replies++;
        }
        s_msg_close(&m);
    }
    CHECK_EQ(batches, 0);
    CHECK_EQ(replies, N);
    CHECK_TRUE(in_order);
    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    printf("batches in %llu, out %llu\n", (unsigned long long)st->batches_in,
           (unsigned long long)st->batches_out);
    /* Batching was on for the peers that announced it (client and echo
     * worker), so the old peers' lack of BATCH is the broker's doing. */
    CHECK_TRUE(st->batches_in > 0);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&c);
    s_raw_close_all(socks, 2);
}

/* --- compression --------------------------------------------------------------------- */
static char *s_text(size_t n)
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

static void s_lz4(void)
{
    enum { BIG = 256 * 1024 };
    int port = th_free_port();
    th_broker(port, NULL);
    void *socks[1];
    /* A raw worker that reads lz4 itself: it sees exactly what the broker
     * forwards. */
    void *w = socks[0] = s_raw(port);
    s_raw_register(w, "raw", 4, AB_FEATURE_LZ4);
    th_worker(port, "echo", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "echo", 1, 10000) == 0);
    REQUIRE(th_wait_workers(c, "raw", 1, 10000) == 0);
    char *text = s_text(BIG);

    uint64_t id;
    s_msg_t m;
    REQUIRE(ab_client_request_start(c, "raw", text, BIG, &(ab_request_opts_t){.timeout_ms = 20000},
                                    NULL, NULL, &id) == AB_OK);
    ab_client_flush(c);
    REQUIRE(s_raw_recv_msg(w, &m, 5000));
    CHECK_EQ(m.h.kind, AB_KIND_REQUEST);
    CHECK_TRUE(m.h.flags & AB_FLAG_LZ4);
    CHECK_TRUE(m.h.flags & AB_FLAG_ACCEPT_LZ4); /* the library client reads lz4 */
    CHECK_U64(m.h.original_size, BIG);
    size_t zl = zmq_msg_size(&m.body);
    printf("%d bytes of text crossed the broker as %zu bytes\n", BIG, zl);
    CHECK_TRUE(zl < BIG / 2);
    char *back = malloc(BIG);
    CHECK_EQ(ab_lz4_check(zl, m.h.original_size, 64 << 20), AB_OK);
    CHECK_EQ(ab_lz4_decompress(zmq_msg_data(&m.body), zl, back, BIG), AB_OK);
    CHECK_TRUE(memcmp(back, text, BIG) == 0);
    /* The raw worker answers with the same compressed bytes: the client
     * library must hand the application the plain text. */
    ab_header_t r = ab_header_init(AB_KIND_REPLY);
    r.correlation_id = m.h.id;
    r.flags = AB_FLAG_LZ4;
    r.original_size = BIG;
    s_raw_send(w, &r, zmq_msg_data(&m.body), zl, 1);
    s_msg_close(&m);
    void *reply = NULL;
    size_t rlen = 0;
    /* A sync request to the echo worker: compressed both ways by the library. */
    CHECK_EQ(ab_client_request(c, "echo", text, BIG, 20000, &reply, &rlen), AB_OK);
    CHECK_U64(rlen, BIG);
    CHECK_TRUE(reply && memcmp(reply, text, BIG) == 0);
    ab_free(reply);
    int64_t end = ab_now_ms() + 10000; /* and the raw worker's answer arrives */
    while (ab_client_pending(c) && ab_now_ms() < end)
        ab_client_poll(c, 50);
    CHECK_EQ(ab_client_pending(c), 0);

    /* Incompressible bytes go as they are, flagged as skipped. */
    char *rnd = malloc(64 * 1024);
    for (size_t i = 0; i < 64 * 1024; i++)
        rnd[i] = (char)t_rand();
    CHECK_EQ(ab_client_request(c, "echo", rnd, 64 * 1024, 20000, &reply, &rlen), AB_OK);
    CHECK_U64(rlen, 64 * 1024);
    CHECK_TRUE(reply && memcmp(reply, rnd, 64 * 1024) == 0);
    ab_free(reply);

    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    printf("lz4: %llu compressed (%llu -> %llu bytes, ratio %.2f, saved %llu), %llu skipped\n",
           (unsigned long long)st->lz4_msgs, (unsigned long long)st->lz4_original_bytes,
           (unsigned long long)st->lz4_wire_bytes, st->compression_ratio,
           (unsigned long long)st->bytes_saved, (unsigned long long)st->lz4_skipped);
    /* Request + reply of the raw exchange, request + reply of the echo. */
    CHECK_U64(st->lz4_msgs, 4);
    CHECK_U64(st->lz4_original_bytes, 4ull * BIG);
    CHECK_TRUE(st->compression_ratio > 2.0);
    CHECK_TRUE(st->bytes_saved > 2ull * BIG);
    CHECK_U64(st->lz4_skipped, 2); /* the random request and its echo */
    /* Everything the broker received is less than the text it carried:
     * it routed the compressed bytes. */
    CHECK_TRUE(st->bytes_in < 4ull * BIG);
    agentbus__stats__free_unpacked(st, NULL);

    char cmd[512], out[16384];
    snprintf(cmd, sizeof cmd, "%s --broker %s --json stats", th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    json_error_t err;
    json_t *j = json_loads(out, 0, &err);
    CHECK_TRUE(j != NULL);
    json_t *comp = j ? json_object_get(j, "compression") : NULL;
    CHECK_EQ(json_integer_value(json_object_get(comp, "compressed")), 4);
    CHECK_EQ(json_integer_value(json_object_get(comp, "skipped")), 2);
    CHECK_TRUE(json_object_get(j, "batching") != NULL);
    json_decref(j);
    snprintf(cmd, sizeof cmd, "%s --broker %s stats", th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "compression  ratio") != NULL);
    CHECK_TRUE(strstr(out, "batching     in") != NULL);
    free(rnd);
    free(back);
    free(text);
    ab_client_destroy(&c);
    s_raw_close_all(socks, 1);
}

/* A compressed request that lies about its size reaches the worker library
 * (the broker does not look inside), which answers MALFORMED and survives. */
static void s_lz4_corrupt(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    th_worker(port, "echo", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "echo", 1, 10000) == 0);
    void *socks[1];
    void *raw = socks[0] = s_raw(port);
    s_raw_hello(raw, AB_FEATURE_LZ4);
    char *text = s_text(8192);
    void *z;
    size_t zl;
    REQUIRE(ab_lz4_compress(text, 8192, 10, &z, &zl) == 1);
    uint64_t sizes[3] = {8191, 8193, 1ull << 40}; /* short, long, absurd */
    for (int i = 0; i < 4; i++) {
        ab_header_t h = ab_header_init(AB_KIND_REQUEST);
        h.id = (uint64_t)i + 1;
        h.target = ab_view_of("echo");
        h.flags = AB_FLAG_LZ4;
        h.original_size = i < 3 ? sizes[i] : 8192;
        if (i == 3) /* right size, corrupt block */
            memset(z, 0xee, zl / 2);
        s_raw_send(raw, &h, z, zl, 1);
        s_msg_t m;
        REQUIRE(s_raw_recv_msg(raw, &m, 5000));
        CHECK_EQ(m.h.kind, AB_KIND_ERROR);
        CHECK_EQ(m.h.error_code, AB_ERR_MALFORMED);
        CHECK_U64(m.h.correlation_id, (uint64_t)i + 1);
        s_msg_close(&m);
    }
    char out[64];
    void *reply = NULL;
    size_t n = 0;
    CHECK_EQ(ab_client_request(c, "echo", "still here", 10, 5000, &reply, &n), AB_OK);
    snprintf(out, sizeof out, "%.*s", (int)n, (char *)reply);
    CHECK_STR(out, "still here");
    ab_free(reply);
    free(z);
    free(text);
    ab_client_destroy(&c);
    s_raw_close_all(socks, 1);
}

/* A client that does not batch: the broker's batch counters then count
 * only what the test sends by hand. */
static ab_client_t *s_client_nobatch(int port)
{
    ab_options_t *o = ab_options_new();
    REQUIRE(ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
    REQUIRE(ab_options_set_batching(o, 0) == AB_OK);
    ab_client_t *c = NULL;
    REQUIRE(ab_client_new(&c, o) == AB_OK);
    ab_options_destroy(&o);
    return c;
}

/* --- malformed batches ------------------------------------------------------------- */
static void s_send_batch(void *raw, const uint8_t *body, size_t len)
{
    ab_header_t h = ab_header_init(AB_KIND_BATCH);
    s_raw_send(raw, &h, body, len, 1);
}

static void s_malformed(void)
{
    int port = th_free_port();
    pid_t broker = th_broker(port, NULL);
    const char *env[] = {"AB_BATCH=0", NULL};
    const char *args[] = {"--broker", th_ep(port), "--backend", "echo", "--service", "echo",
                          NULL};
    th_spawn("agentbus-worker", args, env);
    ab_client_t *c = s_client_nobatch(port);
    REQUIRE(th_wait_workers(c, "echo", 1, 10000) == 0);
    void *socks[1];
    void *raw = socks[0] = s_raw(port);
    s_raw_hello(raw, 0);

    ab_batch_t b;
    ab_batch_init(&b);
    for (uint64_t i = 0; i < 3; i++) {
        ab_header_t h = ab_header_init(AB_KIND_REQUEST);
        h.id = 10 + i;
        h.target = ab_view_of("echo");
        uint8_t hb[64];
        size_t hl = ab_header_encode(&h, hb, sizeof hb);
        ab_batch_add(&b, hb, hl, "abc", 3, 1);
    }
    size_t len;
    const uint8_t *good = ab_batch_body(&b, &len);
    uint8_t *m = malloc(len + 64);
    int bad = 0;
    memcpy(m, good, len);
    m[0] = 4; /* count too large */
    s_send_batch(raw, m, len), bad++;
    s_send_batch(raw, good, len - 2), bad++; /* truncated entry */
    memcpy(m, good, len);
    m[4] = 0x7f; /* header length past the end */
    s_send_batch(raw, m, len), bad++;
    { /* nested: a batch entry that is itself a BATCH */
        ab_batch_t outer;
        ab_batch_init(&outer);
        ab_header_t h = ab_header_init(AB_KIND_BATCH);
        uint8_t hb[64];
        size_t hl = ab_header_encode(&h, hb, sizeof hb);
        ab_batch_add(&outer, hb, hl, good, len, 1);
        size_t olen;
        const uint8_t *ob = ab_batch_body(&outer, &olen);
        s_send_batch(raw, ob, olen), bad++;
        ab_batch_fini(&outer);
    }
    { /* no body at all */
        ab_header_t h = ab_header_init(AB_KIND_BATCH);
        s_raw_send(raw, &h, NULL, 0, 0), bad++;
    }
    int errors = 0, replies = 0;
    for (int i = 0; i < bad; i++) {
        s_msg_t r;
        if (!s_raw_recv_msg(raw, &r, 3000))
            break;
        errors += r.h.kind == AB_KIND_ERROR && r.h.error_code == AB_ERR_MALFORMED;
        replies += r.h.kind == AB_KIND_REPLY;
        s_msg_close(&r);
    }
    CHECK_EQ(errors, bad);
    CHECK_EQ(replies, 0); /* no entry of a malformed batch was delivered */
    /* A good batch from the same peer: each entry answered, in order,
     * unbatched (this peer did not announce batching). */
    s_send_batch(raw, good, len);
    for (uint64_t i = 0; i < 3; i++) {
        s_msg_t r;
        REQUIRE(s_raw_recv_msg(raw, &r, 5000));
        CHECK_EQ(r.h.kind, AB_KIND_REPLY);
        CHECK_U64(r.h.correlation_id, 10 + i);
        CHECK_EQ(zmq_msg_size(&r.body), 3);
        s_msg_close(&r);
    }
    CHECK_TRUE(th_alive(broker));
    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    CHECK_U64(st->batch_malformed, (unsigned long long)bad);
    CHECK_U64(st->malformed, (unsigned long long)bad);
    CHECK_U64(st->requests, 3); /* only the good batch's */
    CHECK_U64(st->batches_in, 1);
    CHECK_U64(st->batched_msgs_in, 3);
    agentbus__stats__free_unpacked(st, NULL);
    free(m);
    ab_batch_fini(&b);
    ab_client_destroy(&c);
    s_raw_close_all(socks, 1);
}

/* --- an idle lone request is not held back --------------------------------------------- */
static void s_lone(void)
{
    int port = th_free_port();
    /* An age limit of a full second: a lone request held for it would show
     * as a batch and as a second of delay each. */
    th_broker(port, "--batch-max-age-us", "1000000", NULL);
    const char *env[] = {"AB_BATCH_MAX_AGE_US=1000000", NULL};
    const char *args[] = {"--broker", th_ep(port), "--backend", "echo", "--service", "echo",
                          NULL};
    th_spawn("agentbus-worker", args, env);
    ab_options_t *o = ab_options_new();
    REQUIRE(ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
    REQUIRE(ab_options_set_batch_limits(o, 64, 65536, 1000000) == AB_OK);
    ab_client_t *c = NULL;
    REQUIRE(ab_client_new(&c, o) == AB_OK);
    ab_options_destroy(&o);
    REQUIRE(th_wait_workers(c, "echo", 1, 10000) == 0);
    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    uint64_t bin = st->batches_in, bout = st->batches_out;
    agentbus__stats__free_unpacked(st, NULL);
    int64_t t0 = ab_now_ms();
    for (int i = 0; i < 20; i++) {
        void *reply = NULL;
        size_t n = 0;
        CHECK_EQ(ab_client_request(c, "echo", "lone", 4, 10000, &reply, &n), AB_OK);
        CHECK_EQ(n, 4);
        ab_free(reply);
        th_sleep_ms(20); /* idle between requests */
    }
    printf("20 lone requests (with 20 ms pauses) took %lld ms\n", (long long)(ab_now_ms() - t0));
    st = th_stats(c);
    REQUIRE(st != NULL);
    /* Every lone request and its reply went out as a message of its own. */
    CHECK_U64(st->batches_in, bin);
    CHECK_U64(st->batches_out, bout);
    CHECK_TRUE(st->replies >= 20);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&c);
}

/* --- options ---------------------------------------------------------------------------- */
static void s_options(void)
{
    /* --batch 0: the broker sends no BATCH even to peers that read them. */
    int port = th_free_port();
    th_broker(port, "--batch", "0", NULL);
    th_worker(port, "echo", "--capacity", "1000", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "echo", 1, 10000) == 0);
    int n = 0;
    for (int i = 0; i < 500; i++)
        n += ab_client_request_start(c, "echo", "x", 1, &(ab_request_opts_t){.timeout_ms = 20000},
                                     NULL, NULL, NULL) == AB_OK;
    CHECK_EQ(n, 500);
    int64_t end = ab_now_ms() + 20000;
    while (ab_client_pending(c) && ab_now_ms() < end)
        ab_client_poll(c, 50);
    CHECK_EQ(ab_client_pending(c), 0);
    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    CHECK_U64(st->batches_out, 0);
    CHECK_TRUE(st->batches_in > 0); /* the client still batches towards it */
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&c);

    /* Bad values stop the broker with status 2, from flags and env alike. */
    char cmd[512], out[2048];
    snprintf(cmd, sizeof cmd, "%s --bind %s --batch-max-count 1", th_bin("agentbus-broker"),
             th_ep(th_free_port()));
    CHECK_EQ(th_run(cmd, out, sizeof out), 2);
    CHECK_TRUE(strstr(out, "batch-max-count") != NULL);
    snprintf(cmd, sizeof cmd, "AB_COMPRESS_MIN_SAVING_PCT=100 %s --bind %s",
             th_bin("agentbus-broker"), th_ep(th_free_port()));
    CHECK_EQ(th_run(cmd, out, sizeof out), 2);
    CHECK_TRUE(strstr(out, "compress-min-saving-pct") != NULL);

    /* Library setters check their ranges. */
    ab_options_t *o = ab_options_new();
    CHECK_EQ(ab_options_set_batching(o, 2), AB_EINVAL);
    CHECK_EQ(ab_options_set_batching(o, 0), AB_OK);
    CHECK_EQ(ab_options_set_batch_limits(o, 1, 65536, 200), AB_EINVAL);
    CHECK_EQ(ab_options_set_batch_limits(o, 64, 100, 200), AB_EINVAL);
    CHECK_EQ(ab_options_set_batch_limits(o, 64, 65536, 2000000), AB_EINVAL);
    CHECK_EQ(ab_options_set_batch_limits(o, 4096, 1 << 20, 0), AB_OK);
    CHECK_EQ(ab_options_set_compression(o, 0, 10), AB_OK);
    CHECK_EQ(ab_options_set_compression(o, 1024, 100), AB_EINVAL);
    ab_options_destroy(&o);
}

/* --- order across every send path --------------------------------------------------- */
/* One burst mixing tiny, mid-sized (compressed) and over-the-batch-limit
 * payloads: each takes another path in client, broker and worker (held,
 * batched, sent alone after a flush), yet the replies come back intact and
 * in the order sent (one echo worker answers in order). */
typedef struct {
    int next, out_of_order, bad, done;
    char *bufs[64];
    size_t sizes[64];
} s_mixed_t;

typedef struct {
    s_mixed_t *m;
    int seq;
} s_mixed_ticket_t;

static void s_mixed_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    s_mixed_ticket_t *t = arg;
    s_mixed_t *m = t->m;
    if (!ev->final)
        return;
    m->done++;
    if (t->seq != m->next)
        m->out_of_order++;
    m->next = t->seq + 1;
    int k = t->seq % 64;
    if (ev->status != AB_OK || ev->size != m->sizes[k] || memcmp(ev->data, m->bufs[k], ev->size))
        m->bad++;
}

static void s_mixed(void)
{
    enum { N = 640 };
    int port = th_free_port();
    th_broker(port, NULL);
    th_worker(port, "echo", "--capacity", "1000", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "echo", 1, 10000) == 0);
    static s_mixed_t m;
    static s_mixed_ticket_t tickets[N];
    for (int k = 0; k < 64; k++) {
        size_t sz = k % 4 == 0 ? 10 : k % 4 == 1 ? 2000 : k % 4 == 2 ? 100 * 1024 : 50;
        m.sizes[k] = sz;
        m.bufs[k] = k % 8 == 2 ? malloc(sz) : s_text(sz);
        if (k % 8 == 2) /* some large ones incompressible */
            for (size_t i = 0; i < sz; i++)
                m.bufs[k][i] = (char)t_rand();
    }
    int sent = 0;
    int64_t end = ab_now_ms() + 30000;
    while (m.done < N && ab_now_ms() < end) {
        while (sent < N && sent - m.done < 200) {
            tickets[sent].m = &m;
            tickets[sent].seq = sent;
            int k = sent % 64;
            REQUIRE(ab_client_request_start(c, "echo", m.bufs[k], m.sizes[k],
                                            &(ab_request_opts_t){.timeout_ms = 20000}, s_mixed_cb,
                                            &tickets[sent], NULL) == AB_OK);
            sent++;
        }
        ab_client_poll(c, 50);
    }
    printf("%d replies, %d out of order, %d bad\n", m.done, m.out_of_order, m.bad);
    CHECK_EQ(m.done, N);
    CHECK_EQ(m.out_of_order, 0);
    CHECK_EQ(m.bad, 0);
    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    CHECK_TRUE(st->batches_in > 0 && st->batches_out > 0);
    CHECK_TRUE(st->lz4_msgs > 0 && st->lz4_skipped > 0);
    agentbus__stats__free_unpacked(st, NULL);
    for (int k = 0; k < 64; k++)
        free(m.bufs[k]);
    ab_client_destroy(&c);
}

/* --- the broker's answer to REGISTER arriving inside a BATCH -------------------------- */
/* Requests that waited for a worker are dispatched in the same turn as the
 * answer to its REGISTER, so that answer travels in a BATCH. The worker
 * must still learn what the broker reads from it: afterwards its replies
 * are batched and compressed. */
static void s_register_batched(void)
{
    int port = th_free_port();
    th_broker(port, "--startup-grace-ms", "20000", NULL);
    ab_client_t *c = th_client(port);
    s_tally_t t = {0};
    for (int i = 0; i < 20; i++) /* wait in the startup grace for a worker */
        REQUIRE(ab_client_request_start(c, "echo", "early", 5,
                                        &(ab_request_opts_t){.timeout_ms = 20000}, s_tally_cb, &t,
                                        NULL) == AB_OK);
    ab_client_poll(c, 200);
    th_worker(port, "echo", "--capacity", "1000", NULL);
    s_poll_until(c, &t, 20, 10000);
    CHECK_EQ(t.ok, 20);
    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    uint64_t bout0 = st->batches_out, bin0 = st->batches_in;
    printf("after registration: %llu batches out, %llu in\n", (unsigned long long)bout0,
           (unsigned long long)bin0);
    CHECK_TRUE(bout0 > 0); /* the REGISTER answer and the waiting requests */
    agentbus__stats__free_unpacked(st, NULL);
    char *text = s_text(32 * 1024);
    void *reply = NULL;
    size_t n = 0;
    CHECK_EQ(ab_client_request(c, "echo", text, 32 * 1024, 10000, &reply, &n), AB_OK);
    CHECK_TRUE(n == 32 * 1024 && reply && memcmp(reply, text, n) == 0);
    ab_free(reply);
    s_tally_t t2 = {0};
    for (int i = 0; i < 300; i++)
        REQUIRE(ab_client_request_start(c, "echo", "x", 1,
                                        &(ab_request_opts_t){.timeout_ms = 20000}, s_tally_cb, &t2,
                                        NULL) == AB_OK);
    s_poll_until(c, &t2, 300, 10000);
    CHECK_EQ(t2.ok, 300);
    st = th_stats(c);
    REQUIRE(st != NULL);
    CHECK_U64(st->lz4_msgs, 2); /* the text request and the worker's reply */
    /* The burst came in batched again (client and worker both batch once
     * they know the broker reads BATCH). */
    CHECK_TRUE(st->batches_in > bin0);
    agentbus__stats__free_unpacked(st, NULL);
    free(text);
    ab_client_destroy(&c);
}

/* --- the batch counters, exactly ------------------------------------------------------ */
/* batches_out and batched_msgs_out must count exactly what went out: a raw
 * worker that reads BATCH is the only peer the broker may batch to here (the
 * raw client and the stats client announce no BATCH), so every BATCH the
 * broker sent is one it receives, and the entries it unpacks are the
 * batched messages. */
static void s_batch_counts(void)
{
    enum { N = 400 };
    int port = th_free_port();
    th_broker(port, NULL);
    void *socks[2];
    void *w = socks[0] = s_raw(port);
    s_raw_register(w, "counted", N, AB_FEATURE_BATCH);
    void *rc = socks[1] = s_raw(port);
    s_raw_hello(rc, AB_FEATURE_LZ4); /* reads lz4, not BATCH */
    ab_client_t *c = s_client_nobatch(port);
    REQUIRE(th_wait_workers(c, "counted", 1, 10000) == 0);
    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    uint64_t b0 = st->batches_out, m0 = st->batched_msgs_out;
    agentbus__stats__free_unpacked(st, NULL);
    /* The requests arrive in bursts, so the broker dispatches many in one
     * turn and gathers them for the worker. */
    for (int i = 0; i < N; i++) {
        ab_header_t h = ab_header_init(AB_KIND_REQUEST);
        h.id = (uint64_t)i + 1;
        h.target = ab_view_of("counted");
        h.timeout_ms = 30000;
        s_raw_send(rc, &h, "abc", 3, 1);
    }
    int requests = 0, batches = 0, entries = 0, singles = 0;
    int64_t end = ab_now_ms() + 20000;
    while (requests < N && ab_now_ms() < end) {
        s_msg_t m;
        if (!s_raw_recv(w, &m, 500))
            continue;
        if (m.h.kind == AB_KIND_BATCH) {
            ab_batch_reader_t r;
            uint32_t count = 0;
            CHECK_EQ(ab_batch_open(&r, zmq_msg_data(&m.body), zmq_msg_size(&m.body), NULL, &count),
                     AB_OK);
            batches++;
            entries += (int)count;
            ab_frame_t f[2];
            size_t nf;
            while (ab_batch_next(&r, f, &nf) == 1) {
                ab_header_t eh;
                if (ab_header_parse(f[0].data, f[0].size, &eh) == AB_OK)
                    requests += eh.kind == AB_KIND_REQUEST;
            }
        } else {
            singles++;
            requests += m.h.kind == AB_KIND_REQUEST;
        }
        s_msg_close(&m);
    }
    /* Anything still on its way (a late HEARTBEAT, say) is counted too. */
    s_msg_t m;
    while (s_raw_recv(w, &m, 300)) {
        if (m.h.kind == AB_KIND_BATCH) {
            ab_batch_reader_t r;
            uint32_t count = 0;
            if (ab_batch_open(&r, zmq_msg_data(&m.body), zmq_msg_size(&m.body), NULL, &count) ==
                AB_OK)
                batches++, entries += (int)count;
        }
        s_msg_close(&m);
    }
    printf("worker got %d requests: %d BATCHes holding %d entries, %d single messages\n",
           requests, batches, entries, singles);
    CHECK_EQ(requests, N);
    CHECK_TRUE(batches > 0); /* else the relation below would prove nothing */
    st = th_stats(c);
    REQUIRE(st != NULL);
    printf("broker: batches_out +%llu, batched_msgs_out +%llu\n",
           (unsigned long long)(st->batches_out - b0),
           (unsigned long long)(st->batched_msgs_out - m0));
    CHECK_U64(st->batches_out - b0, (unsigned long long)batches);
    CHECK_U64(st->batched_msgs_out - m0, (unsigned long long)entries);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&c);
    s_raw_close_all(socks, 2);
}

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

static void s_client_decode(void)
{
    int port = th_free_port();
    s_ctx = zmq_ctx_new();
    void *router = zmq_socket(s_ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger);
    REQUIRE(zmq_bind(router, th_ep(port)) == 0);
    ab_client_t *c = th_client(port);
    s_tally_t t = {0};
    uint64_t id = 0;
    REQUIRE(ab_client_request_start(c, "svc", "q", 1, &(ab_request_opts_t){.timeout_ms = 20000},
                                    s_tally_cb, &t, &id) == AB_OK);
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
            CHECK_U64(hm->features, AB_FEATURE_BATCH | AB_FEATURE_LZ4);
            agentbus__hello__free_unpacked(hm, NULL);
            ab_header_t a = ab_header_init(AB_KIND_HELLO);
            a.correlation_id = m.h.id;
            a.credit = 1000;
            a.features = AB_FEATURE_BATCH | AB_FEATURE_LZ4;
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
    char *text = s_text(8192);
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
    s_poll_until(c, &t, 1, 5000);
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
    zmq_ctx_term(s_ctx);
    s_ctx = NULL;
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
static void s_cancel_flushed(void)
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
    s_tally_t t;
    memset(&t, 0, sizeof t);
    REQUIRE(ab_client_request_start(c, "echo", "x", 1, &(ab_request_opts_t){.timeout_ms = 20000},
                                    s_tally_cb, &t, &id) == AB_OK);
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

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"many", s_many}, {"old_peer", s_old_peer}, {"lz4", s_lz4}, {"lz4_corrupt", s_lz4_corrupt},
        {"malformed", s_malformed}, {"lone", s_lone}, {"options", s_options},
        {"client_decode", s_client_decode}, {"mixed", s_mixed},
        {"register_batched", s_register_batched}, {"batch_counts", s_batch_counts},
        {"cancel_flushed", s_cancel_flushed},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
