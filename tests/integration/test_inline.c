/*
 * test_inline.c - payloads inside the header frame (codec.h "Inline",
 * FEATURE_INLINE): library peers get every payload size right around the
 * threshold, for requests, streamed replies, SEND and PUBLISH, with
 * batching on and off; a raw peer sees one frame only when it announced
 * the feature (two otherwise, and for payloads over the threshold); the
 * library sends one frame only to a broker that said it reads it; a library
 * worker's jobs hold exactly their payload wherever the field sits; and every
 * malformed inline message is refused, counted, and costs nothing else.
 */
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "batch.h"
#include "codec.h"
#include "harness.h"
#include "test.h"
#include "util.h"
#include "batchtest.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

/* The sizes around the threshold, and one far over it. */
static const size_t s_sizes[] = {0, 1, AB_INLINE_MAX - 1, AB_INLINE_MAX, AB_INLINE_MAX + 1,
                                 64 * 1024};
#define S_NSIZES (sizeof s_sizes / sizeof s_sizes[0])

/* N bytes that do not compress (the library would lz4 a repetitive 64 KiB
 * payload into a small one); a shorter fill is a prefix of a longer one. */
static void s_fill(uint8_t *buf, size_t n)
{
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        buf[i] = (uint8_t)x;
    }
}

/* 1 if DATA (N bytes) is what s_fill makes for N. */
static int s_good(const void *data, size_t n)
{
    uint8_t *want = malloc(n ? n : 1);
    REQUIRE(want != NULL);
    s_fill(want, n);
    int ok = n == 0 || (data && memcmp(data, want, n) == 0);
    free(want);
    return ok;
}

static ab_options_t *s_opts(int port, const char *name, int batching)
{
    ab_options_t *o = ab_options_new();
    REQUIRE(o != NULL);
    REQUIRE(ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
    if (name)
        REQUIRE(ab_options_set_name(o, name) == AB_OK);
    REQUIRE(ab_options_set_batching(o, batching) == AB_OK);
    return o;
}

/* --- a library worker: streams the request back as two parts ------------------- */
typedef struct {
    int port, batching;
    ab_worker_t *w;
    atomic_int ready; /* w is set: the main thread may stop it */
} s_wctx_t;

static void *s_worker_thread(void *arg)
{
    s_wctx_t *x = arg;
    ab_options_t *o = s_opts(x->port, "inline-worker", x->batching);
    int rc = ab_worker_new(&x->w, o, "inl", 16);
    ab_options_destroy(&o);
    if (rc != AB_OK)
        return NULL;
    atomic_store(&x->ready, 1);
    for (;;) {
        ab_job_t *job;
        rc = ab_worker_recv(x->w, &job, 200);
        if (rc == AB_ESTOPPED)
            break;
        if (rc != AB_OK)
            continue;
        size_t n;
        const uint8_t *d = ab_job_data(job, &n);
        ab_worker_reply_part(x->w, job, d, n / 2); /* a PARTIAL of half, maybe empty */
        ab_worker_reply(x->w, &job, d + n / 2, n - n / 2);
    }
    ab_worker_destroy(&x->w);
    return NULL;
}

/* What the client saw of one request: the parts joined. */
typedef struct {
    uint8_t *buf;
    size_t len, cap;
    int partials, finals, ok;
} s_call_t;

static void s_call_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    s_call_t *t = arg;
    if (ev->status == AB_OK && t->len + ev->size <= t->cap) {
        if (ev->size)
            memcpy(t->buf + t->len, ev->data, ev->size);
        t->len += ev->size;
    }
    if (ev->final) {
        t->finals++;
        t->ok += ev->status == AB_OK;
    } else {
        t->partials++;
    }
}

/* Messages one agent received, checked as they come. */
typedef struct {
    int direct, topic, bad;
    size_t last_size;
} s_inbox_t;

static void s_inbox_cb(ab_client_t *c, const ab_message_t *m, void *arg)
{
    (void)c;
    s_inbox_t *b = arg;
    if (m->type != AB_MSG_DIRECT && m->type != AB_MSG_TOPIC)
        return;
    b->direct += m->type == AB_MSG_DIRECT;
    b->topic += m->type == AB_MSG_TOPIC;
    b->last_size = m->size;
    if (!s_good(m->data, m->size)) {
        fprintf(stderr, "bad %s payload of %zu bytes\n",
                m->type == AB_MSG_DIRECT ? "SEND" : "PUBLISH", m->size);
        b->bad++;
    }
}

static void s_pump(ab_client_t *a, ab_client_t *b, int ms)
{
    ab_client_poll(a, ms / 2);
    ab_client_poll(b, ms / 2);
}

/* Each size as a request (a PARTIAL and a REPLY back), a SEND and a
 * PUBLISH, between library peers that negotiated inline payloads. */
static void s_sizes_with(int batching)
{
    int port = th_free_port();
    th_broker(port, NULL);
    s_wctx_t x = {port, batching, NULL, 0};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, s_worker_thread, &x) == 0);
    ab_options_t *o = s_opts(port, "inl-a", batching);
    ab_client_t *a = NULL, *b = NULL;
    REQUIRE(ab_client_new(&a, o) == AB_OK);
    ab_options_destroy(&o);
    o = s_opts(port, "inl-b", batching);
    REQUIRE(ab_client_new(&b, o) == AB_OK);
    ab_options_destroy(&o);
    s_inbox_t box = {0};
    ab_client_on_message(b, s_inbox_cb, &box);
    REQUIRE(th_wait_workers(a, "inl", 1, 10000) == 0);
    REQUIRE(ab_client_subscribe(b, "inl.t", 5000) == AB_OK);
    uint8_t *data = malloc(64 * 1024);
    REQUIRE(data != NULL);
    for (size_t i = 0; i < S_NSIZES; i++) {
        size_t n = s_sizes[i];
        s_fill(data, n);
        s_call_t t = {malloc(n + 1), 0, n + 1, 0, 0, 0};
        REQUIRE(t.buf != NULL);
        CHECK_EQ(ab_client_request_start(a, "inl", data, n,
                                         &(ab_request_opts_t){.timeout_ms = 10000}, s_call_cb,
                                         &t, NULL),
                 AB_OK);
        int64_t end = ab_now_ms() + 10000;
        while (t.finals < 1 && ab_now_ms() < end)
            ab_client_poll(a, 50);
        printf("size %zu (batching %s): ok %d, %d partial(s), %zu bytes back\n", n,
               batching ? "on" : "off", t.ok, t.partials, t.len);
        CHECK_EQ(t.ok, 1);
        CHECK_EQ(t.partials, 1);
        CHECK_U64(t.len, n);
        CHECK_TRUE(t.len == n && s_good(t.buf, n));
        free(t.buf);
        /* SEND, then PUBLISH, each received once with the same bytes. */
        int d0 = box.direct, t0 = box.topic;
        CHECK_EQ(ab_client_send(a, "inl-b", data, n, 0, NULL), AB_OK);
        for (int k = 0; k < 200 && box.direct == d0; k++)
            s_pump(a, b, 50);
        CHECK_EQ(box.direct, d0 + 1);
        CHECK_U64(box.last_size, n);
        CHECK_EQ(ab_client_publish(a, "inl.t", data, n, NULL), AB_OK);
        for (int k = 0; k < 200 && box.topic == t0; k++)
            s_pump(a, b, 50);
        CHECK_EQ(box.topic, t0 + 1);
        CHECK_U64(box.last_size, n);
    }
    CHECK_EQ(box.bad, 0);
    Agentbus__Stats *st = th_stats(a);
    REQUIRE(st != NULL);
    CHECK_U64(th_stat_error(st, "rejected:INLINE"), 0);
    CHECK_U64(st->malformed, 0);
    agentbus__stats__free_unpacked(st, NULL);
    free(data);
    /* x.w is the thread's to write until it says ready (just after the
     * worker registered, which the test waited for) */
    for (int i = 0; i < 5000 && !atomic_load(&x.ready); i++)
        th_sleep_ms(1);
    REQUIRE(atomic_load(&x.ready));
    ab_worker_stop(x.w);
    pthread_join(th, NULL);
    ab_client_destroy(&a);
    ab_client_destroy(&b);
}

static void s_sizes_nobatch(void)
{
    s_sizes_with(0);
}

static void s_sizes_batch(void)
{
    s_sizes_with(1);
}

/* --- raw peers: what the broker puts on the wire -------------------------------- */

/* Sends H with PL (N bytes) inline; EXTRA: a payload frame as well. */
static void s_raw_inline(void *s, const ab_header_t *h, const void *pl, size_t n, int extra)
{
    uint8_t hb[512];
    size_t hl = ab_header_encode(h, hb, sizeof hb);
    REQUIRE(hl > 0);
    size_t fl = ab_msg_inline_size(hl, n);
    uint8_t *f = malloc(fl);
    REQUIRE(f != NULL);
    ab_msg_inline_put(f, hb, hl, pl, n);
    REQUIRE(zmq_send(s, f, fl, extra ? ZMQ_SNDMORE : 0) >= 0);
    if (extra)
        REQUIRE(zmq_send(s, "x", 1, 0) >= 0);
    free(f);
}

/* The next REQUEST on raw worker W: its frames and payload, checked to be
 * N good bytes, one frame when INLINE else two. Returns its id (0: none). */
static uint64_t s_expect_request(void *w, size_t n, int inl)
{
    bt_msg_t m;
    int64_t end = ab_now_ms() + 5000;
    for (;;) {
        int64_t left = end - ab_now_ms();
        if (left <= 0 || !bt_raw_recv_msg(w, &m, (int)left)) {
            CHECK_TRUE(!"no REQUEST reached the raw worker");
            return 0;
        }
        if (m.h.kind == AB_KIND_REQUEST)
            break;
        bt_msg_close(&m);
    }
    const void *data = m.has_body ? zmq_msg_data(&m.body) : m.h.inline_payload.ptr;
    size_t got = m.has_body ? zmq_msg_size(&m.body) : m.h.inline_payload.len;
    printf("REQUEST of %zu bytes to a raw worker: %d frame(s), %d expected\n", n,
           m.has_body ? 2 : 1, inl ? 1 : 2);
    CHECK_EQ(m.has_body, !inl);
    CHECK_EQ(m.h.inline_payload.ptr != NULL, inl);
    CHECK_U64(got, n);
    CHECK_TRUE(got == n && s_good(data, n));
    uint64_t id = m.h.id;
    bt_msg_close(&m);
    return id;
}

/* Two raw workers, one announcing INLINE and one not (as every raw test
 * peer and older library): the broker sends one frame to the first for
 * payloads up to the threshold and two otherwise; the second always gets
 * two. The inline worker's inline replies reach a library client intact. */
static void s_raw_negotiation(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    void *wi = bt_raw(port), *wo = bt_raw(port);
    bt_raw_register(wi, "inl-raw", 100, AB_FEATURE_LZ4 | AB_FEATURE_INLINE);
    bt_raw_register(wo, "old-raw", 100, AB_FEATURE_LZ4);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "inl-raw", 1, 10000) == 0);
    REQUIRE(th_wait_workers(c, "old-raw", 1, 10000) == 0);
    uint8_t *data = malloc(64 * 1024);
    REQUIRE(data != NULL);
    for (size_t i = 0; i < S_NSIZES; i++) {
        size_t n = s_sizes[i];
        s_fill(data, n);
        for (int which = 0; which < 2; which++) {
            void *w = which ? wo : wi;
            s_call_t t = {malloc(n + 1), 0, n + 1, 0, 0, 0};
            REQUIRE(t.buf != NULL);
            REQUIRE(ab_client_request_start(c, which ? "old-raw" : "inl-raw", data, n,
                                            &(ab_request_opts_t){.timeout_ms = 10000},
                                            s_call_cb, &t, NULL) == AB_OK);
            ab_client_poll(c, 0); /* sent */
            /* Over the threshold, and to a peer that did not announce it:
             * two frames. An empty payload is no payload either way. */
            int inl = !which && n <= AB_INLINE_MAX && n > 0;
            uint64_t id = s_expect_request(w, n, inl || (!which && n == 0));
            ab_header_t r = ab_header_init(AB_KIND_REPLY);
            r.correlation_id = id;
            if (which || n > AB_INLINE_MAX)
                bt_raw_send(w, &r, data, n, 1);
            else
                s_raw_inline(w, &r, data, n, 0);
            int64_t end = ab_now_ms() + 10000;
            while (t.finals < 1 && ab_now_ms() < end)
                ab_client_poll(c, 50);
            CHECK_EQ(t.ok, 1);
            CHECK_U64(t.len, n);
            CHECK_TRUE(t.len == n && s_good(t.buf, n));
            free(t.buf);
        }
    }
    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    CHECK_U64(st->malformed, 0);
    agentbus__stats__free_unpacked(st, NULL);
    free(data);
    ab_client_destroy(&c);
    void *socks[2] = {wi, wo};
    bt_raw_close_all(socks, 2);
}

/* --- the library's side: one frame only to a broker that reads it ----------------- */

/* Plays the broker on a ROUTER: answers the library's HELLO with FEATURES,
 * then reads its REQUESTs of 64 B and 4 KiB and reports their frames. */
static void s_fake_broker(uint32_t features)
{
    int port = 0;
    void *router = bt_fake_router(&port);
    ab_options_t *o = s_opts(port, NULL, 0);
    ab_client_t *c = NULL;
    REQUIRE(ab_client_new(&c, o) == AB_OK);
    ab_options_destroy(&o);
    uint8_t small[64], *big = malloc(4096);
    REQUIRE(big != NULL);
    s_fill(small, sizeof small);
    s_fill(big, 4096);
    int hello = 0, sent = 0, seen = 0;
    s_call_t t = {NULL, 0, 0, 0, 0, 0}; /* the calls end unanswered, at destroy */
    int64_t end = ab_now_ms() + 10000;
    while (seen < 2 && ab_now_ms() < end) {
        ab_client_poll(c, 10);
        if (hello && !sent) {
            /* After the answer: what the library sends now follows it. */
            ab_client_request_start(c, "svc", small, sizeof small,
                                    &(ab_request_opts_t){.timeout_ms = 5000}, s_call_cb, &t,
                                    NULL);
            ab_client_request_start(c, "svc", big, 4096, &(ab_request_opts_t){.timeout_ms = 5000},
                                    s_call_cb, &t, NULL);
            ab_client_poll(c, 0);
            sent = 1;
        }
        zmq_msg_t f[4];
        zmq_pollitem_t it = {router, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 10) <= 0)
            continue;
        int n = 0, more = 1;
        while (more && n < 4) {
            zmq_msg_init(&f[n]);
            REQUIRE(zmq_msg_recv(&f[n], router, 0) >= 0);
            more = zmq_msg_more(&f[n]);
            n++;
        }
        ab_frame_t fr[2] = {{zmq_msg_data(&f[1]), zmq_msg_size(&f[1])},
                            {n > 2 ? zmq_msg_data(&f[2]) : NULL, n > 2 ? zmq_msg_size(&f[2]) : 0}};
        ab_header_t h;
        ab_frame_t pl;
        REQUIRE(ab_msg_decode(fr, (size_t)n - 1, NULL, &h, &pl) == AB_OK);
        if (h.kind == AB_KIND_HELLO && !hello) {
            Agentbus__Hello *hm = agentbus__hello__unpack(NULL, pl.size, pl.data);
            REQUIRE(hm != NULL);
            CHECK_TRUE(hm->features & AB_FEATURE_INLINE); /* it announces it */
            agentbus__hello__free_unpacked(hm, NULL);
            CHECK_EQ(n, 3); /* before the answer: two frames */
            bt_fake_answer(router, &f[0], AB_KIND_HELLO, h.id, features, NULL);
            hello = 1;
        } else if (h.kind == AB_KIND_REQUEST) {
            int inl = (features & AB_FEATURE_INLINE) && pl.size <= AB_INLINE_MAX;
            printf("broker features %u: REQUEST of %zu bytes in %d frame(s)\n", features,
                   pl.size, n - 1);
            CHECK_EQ(n - 1, inl ? 1 : 2);
            CHECK_TRUE(s_good(pl.data, pl.size));
            seen++;
        }
        for (int i = 0; i < n; i++)
            zmq_msg_close(&f[i]);
    }
    CHECK_EQ(seen, 2);
    free(big);
    ab_client_destroy(&c);
    zmq_close(router);
    zmq_ctx_term(bt_ctx);
    bt_ctx = NULL;
}

static void s_client_negotiates(void)
{
    s_fake_broker(AB_FEATURE_BATCH | AB_FEATURE_LZ4 | AB_FEATURE_INLINE);
    s_fake_broker(AB_FEATURE_BATCH | AB_FEATURE_LZ4); /* an older broker */
}

/* --- a library worker's jobs: the payload inside the header frame ------------------ */

/* Sends REQUEST ID to the worker at RID as one frame whose inline payload
 * (N good bytes) comes FIRST, before every other header field: protobuf
 * fields may come in any order, so the payload is not always the frame's
 * tail (the broker's own encoder appends it; another sender need not). */
static void s_job_request(void *router, const zmq_msg_t *rid, uint64_t id, size_t n)
{
    uint8_t pl[AB_INLINE_MAX], hb[256], f[AB_INLINE_MAX + 300];
    s_fill(pl, n);
    ab_header_t h = ab_header_init(AB_KIND_REQUEST);
    h.id = id;
    h.target = ab_view_of("jobs");
    h.timeout_ms = 5000;
    h.model = ab_view_of("a-model-name-after-the-payload");
    size_t hl = ab_header_encode(&h, hb, sizeof hb);
    REQUIRE(hl > 0);
    size_t at = 0;
    f[at++] = 0x72; /* field 14, length-delimited */
    for (size_t v = n; ; v >>= 7) {
        f[at++] = (uint8_t)(v & 0x7f) | (v >= 0x80 ? 0x80 : 0);
        if (v < 0x80)
            break;
    }
    memcpy(f + at, pl, n);
    memcpy(f + at + n, hb, hl);
    REQUIRE(zmq_send(router, zmq_msg_data((zmq_msg_t *)rid), zmq_msg_size((zmq_msg_t *)rid),
                     ZMQ_SNDMORE) >= 0);
    REQUIRE(zmq_send(router, f, at + n + hl, 0) >= 0);
}

/* Plays the broker to a library worker and sends it requests of many
 * sizes with the inline payload first in the frame (tiny ones fit inside
 * ZeroMQ's own message struct): each job's data must be exactly its
 * payload, also when the worker reuses the records of earlier jobs, and the
 * echoed replies say so. */
static void s_worker_jobs(void)
{
    int port = 0;
    void *router = bt_fake_router(&port);
    ab_options_t *o = s_opts(port, "jobs-worker", 0);
    ab_worker_t *w = NULL;
    REQUIRE(ab_worker_new(&w, o, "jobs", 1000) == AB_OK);
    ab_options_destroy(&o);
    static const size_t sizes[] = {0, 1, 7, 20, 64, 200, AB_INLINE_MAX};
    enum { S_ROUNDS = 300, S_TOTAL = S_ROUNDS * 7 };
    zmq_msg_t rid;
    zmq_msg_init(&rid);
    int registered = 0, bad = 0, nf = 0;
    uint64_t sent = 0, answered = 0;
    int64_t end = ab_now_ms() + 20000;
    while (answered < S_TOTAL && ab_now_ms() < end) {
        ab_job_t *job = NULL;
        while (ab_worker_recv(w, &job, 0) == AB_OK) { /* echo: the data as the worker sees it */
            size_t n;
            const void *d = ab_job_data(job, &n);
            ab_worker_reply(w, &job, d, n);
        }
        /* A burst of a round, then answers; never near the ROUTER's
         * high-water mark (beyond it, it drops what it sends). */
        if (registered && sent < S_TOTAL && sent - answered < 300) {
            for (size_t i = 0; i < 7; i++, sent++)
                s_job_request(router, &rid, sent + 1, sizes[sent % 7]);
        }
        zmq_pollitem_t it = {router, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 10) <= 0)
            continue;
        zmq_msg_t f[3];
        int n = 0, more = 1;
        while (more && n < 3) {
            zmq_msg_init(&f[n]);
            REQUIRE(zmq_msg_recv(&f[n], router, 0) >= 0);
            more = zmq_msg_more(&f[n]);
            n++;
        }
        REQUIRE(!more && n >= 2);
        ab_frame_t fr[2] = {{zmq_msg_data(&f[1]), zmq_msg_size(&f[1])},
                            {n > 2 ? zmq_msg_data(&f[2]) : NULL, n > 2 ? zmq_msg_size(&f[2]) : 0}};
        ab_header_t h;
        ab_frame_t pl;
        REQUIRE(ab_msg_decode(fr, (size_t)n - 1, NULL, &h, &pl) == AB_OK);
        if (h.kind == AB_KIND_REGISTER && !registered) {
            zmq_msg_copy(&rid, &f[0]);
            /* a REGISTER answer without the service is refused */
            bt_fake_answer(router, &f[0], AB_KIND_REGISTER, h.id, AB_FEATURE_INLINE, "jobs");
            registered = 1;
        } else if (h.kind == AB_KIND_REPLY) {
            size_t want = h.correlation_id ? sizes[(h.correlation_id - 1) % 7] : 0;
            if (pl.size != want || !s_good(pl.data, pl.size)) {
                if (bad++ < 5)
                    fprintf(stderr, "job %llu: %zu bytes back, %zu sent\n",
                            (unsigned long long)h.correlation_id, pl.size, want);
            }
            nf += n - 1 == 1;
            answered++;
        }
        for (int i = 0; i < n; i++)
            zmq_msg_close(&f[i]);
    }
    printf("%llu jobs answered, %d wrong, %d in one frame\n", (unsigned long long)answered, bad,
           nf);
    CHECK_U64(answered, S_TOTAL);
    CHECK_EQ(bad, 0);
    CHECK_TRUE(nf > 0); /* the worker sent inline too: it heard the features */
    zmq_msg_close(&rid);
    ab_worker_destroy(&w);
    zmq_close(router);
    zmq_ctx_term(bt_ctx);
    bt_ctx = NULL;
}

/* --- hostile peers ------------------------------------------------------------------ */

/* The next ERROR on S answering ID: its code (-1: none within 5 s); the
 * text goes to TEXT. */
static int s_error_for(void *s, uint64_t id, char *text, size_t cap)
{
    int64_t end = ab_now_ms() + 5000;
    while (ab_now_ms() < end) {
        bt_msg_t m;
        if (!bt_raw_recv_msg(s, &m, 500))
            continue;
        int code = m.h.kind == AB_KIND_ERROR && m.h.correlation_id == id ? (int)m.h.error_code
                                                                         : -1;
        if (code >= 0)
            ab_view_copy(m.h.error_text, text, cap);
        bt_msg_close(&m);
        if (code >= 0)
            return code;
    }
    return -1;
}

static ab_header_t s_req(uint64_t id)
{
    ab_header_t h = ab_header_init(AB_KIND_REQUEST);
    h.id = id;
    h.target = ab_view_of("inl-raw");
    h.timeout_ms = 5000;
    return h;
}

/* Every malformed inline message is refused with MALFORMED and counted as
 * rejected (INLINE, PAYLOAD_SIZE, DECODE, or a malformed BATCH), and the
 * same peers' good messages still go through afterwards. */
static void s_hostile(void)
{
    int port = th_free_port();
    th_broker(port, "--max-payload-bytes", "8000", NULL);
    void *w = bt_raw(port), *old = bt_raw(port), *neg = bt_raw(port);
    bt_raw_register(w, "inl-raw", 100, AB_FEATURE_LZ4 | AB_FEATURE_INLINE);
    bt_raw_hello(old, AB_FEATURE_BATCH | AB_FEATURE_LZ4); /* announced, without INLINE */
    bt_raw_hello(neg, AB_FEATURE_LZ4 | AB_FEATURE_INLINE); /* no BATCH: answers come alone */
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "inl-raw", 1, 10000) == 0);
    char text[200];
    uint8_t *pl = malloc(20000);
    REQUIRE(pl != NULL);
    s_fill(pl, 20000);
    /* 1. Inline from a peer whose HELLO did not announce it. */
    ab_header_t h = s_req(11);
    s_raw_inline(old, &h, pl, 64, 0);
    CHECK_EQ(s_error_for(old, 11, text, sizeof text), AB_ERR_MALFORMED);
    CHECK_TRUE(strstr(text, "INLINE") != NULL);
    /* 2. Inline and a payload frame. */
    h = s_req(12);
    s_raw_inline(neg, &h, pl, 64, 1);
    CHECK_EQ(s_error_for(neg, 12, text, sizeof text), AB_ERR_MALFORMED);
    CHECK_TRUE(strstr(text, "INLINE") != NULL);
    /* 3. The field twice. */
    {
        uint8_t hb[128], f[512];
        h = s_req(13);
        size_t hl = ab_header_encode(&h, hb, sizeof hb);
        size_t one = ab_msg_inline_size(hl, 10);
        ab_msg_inline_put(f, hb, hl, pl, 10);
        memcpy(f + one, f + hl, one - hl); /* the field again */
        REQUIRE(zmq_send(neg, f, one + (one - hl), 0) >= 0);
        CHECK_EQ(s_error_for(neg, 13, text, sizeof text), AB_ERR_MALFORMED);
        CHECK_TRUE(strstr(text, "INLINE") != NULL);
        /* 4. Truncated: the field's length runs past the frame. */
        h = s_req(14);
        hl = ab_header_encode(&h, hb, sizeof hb);
        one = ab_msg_inline_size(hl, 100);
        ab_msg_inline_put(f, hb, hl, pl, 100);
        REQUIRE(zmq_send(neg, f, one - 40, 0) >= 0);
        /* The id is read before the bad field: the answer names it. */
        CHECK_EQ(s_error_for(neg, 14, text, sizeof text), AB_ERR_MALFORMED);
        CHECK_TRUE(strstr(text, "DECODE") != NULL);
    }
    /* 5. Over the protocol's inline limit (16 KiB); 6. over max-payload. */
    h = s_req(15);
    s_raw_inline(neg, &h, pl, AB_INLINE_LIMIT + 1, 0);
    CHECK_EQ(s_error_for(neg, 15, text, sizeof text), AB_ERR_MALFORMED);
    CHECK_TRUE(strstr(text, "INLINE") != NULL);
    h = s_req(16);
    s_raw_inline(neg, &h, pl, 8001, 0);
    CHECK_EQ(s_error_for(neg, 16, text, sizeof text), AB_ERR_MALFORMED);
    CHECK_TRUE(strstr(text, "PAYLOAD_SIZE") != NULL);
    /* 7. A BATCH whose entry carries an inline payload: dropped whole. */
    {
        ab_batch_t b;
        ab_batch_init(&b);
        uint8_t hb[128], f[256];
        h = s_req(17);
        size_t hl = ab_header_encode(&h, hb, sizeof hb);
        ab_msg_inline_put(f, hb, hl, pl, 10);
        h = s_req(18);
        uint8_t hb2[128];
        size_t hl2 = ab_header_encode(&h, hb2, sizeof hb2);
        REQUIRE(ab_batch_add(&b, hb2, hl2, pl, 10, 1) == AB_OK);
        REQUIRE(ab_batch_add(&b, f, ab_msg_inline_size(hl, 10), NULL, 0, 0) == AB_OK);
        size_t blen;
        const uint8_t *body = ab_batch_body(&b, &blen);
        ab_header_t bh = ab_header_init(AB_KIND_BATCH);
        bt_raw_send(neg, &bh, body, blen, 1);
        ab_batch_fini(&b);
        CHECK_EQ(s_error_for(neg, 0, text, sizeof text), AB_ERR_MALFORMED);
        CHECK_TRUE(strstr(text, "BATCH") != NULL);
    }
    /* The peers still work: a good inline request from NEG reaches the
     * worker (as one frame) and its answer comes back; OLD's two-frame
     * request too. Nothing of the BATCH was delivered before them. */
    h = s_req(20);
    s_raw_inline(neg, &h, pl, 100, 0);
    uint64_t id = s_expect_request(w, 100, 1);
    ab_header_t r = ab_header_init(AB_KIND_REPLY);
    r.correlation_id = id;
    s_raw_inline(w, &r, pl, 100, 0);
    bt_msg_t m;
    REQUIRE(bt_raw_recv_msg(neg, &m, 5000));
    CHECK_EQ(m.h.kind, AB_KIND_REPLY);
    CHECK_U64(m.h.correlation_id, 20);
    CHECK_TRUE(m.h.inline_payload.ptr && s_good(m.h.inline_payload.ptr, 100) &&
               m.h.inline_payload.len == 100); /* NEG announced it: one frame back */
    bt_msg_close(&m);
    h = s_req(21);
    bt_raw_send(old, &h, pl, 100, 1);
    id = s_expect_request(w, 100, 1);
    r.correlation_id = id;
    s_raw_inline(w, &r, pl, 100, 0);
    REQUIRE(bt_raw_recv_msg(old, &m, 5000));
    CHECK_EQ(m.h.kind, AB_KIND_REPLY);
    CHECK_EQ(m.has_body, 1); /* OLD did not: two frames */
    CHECK_TRUE(m.has_body && zmq_msg_size(&m.body) == 100 && s_good(zmq_msg_data(&m.body), 100));
    bt_msg_close(&m);
    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    printf("rejected:INLINE %llu, PAYLOAD_SIZE %llu, DECODE %llu, malformed batches %llu\n",
           th_stat_error(st, "rejected:INLINE"), th_stat_error(st, "rejected:PAYLOAD_SIZE"),
           th_stat_error(st, "rejected:DECODE"), (unsigned long long)st->batch_malformed);
    CHECK_U64(th_stat_error(st, "rejected:INLINE"), 4);
    CHECK_U64(th_stat_error(st, "rejected:PAYLOAD_SIZE"), 1);
    CHECK_U64(th_stat_error(st, "rejected:DECODE"), 1);
    CHECK_U64(st->batch_malformed, 1);
    agentbus__stats__free_unpacked(st, NULL);
    free(pl);
    ab_client_destroy(&c);
    void *socks[3] = {w, old, neg};
    bt_raw_close_all(socks, 3);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"sizes_nobatch", s_sizes_nobatch}, {"sizes_batch", s_sizes_batch},
        {"raw_negotiation", s_raw_negotiation}, {"client_negotiates", s_client_negotiates},
        {"worker_jobs", s_worker_jobs}, {"hostile", s_hostile},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
