/*
 * test_client_bounds.c - the library against a broker that breaks the
 * protocol (a hostile one, or a runaway worker behind a good one): its
 * memory stays bounded in bytes, and its promises hold. The test plays the
 * broker on a ROUTER:
 *   sync_stream   a synchronous request whose streamed reply never ends
 *                 fails with AB_EPAYLOADSIZE at the max payload and is
 *                 cancelled at the broker; one under it is joined intact;
 *   recv_queue    200 direct messages of 1 MiB to an application that does
 *                 not read: the receive queue keeps the newest up to its
 *                 byte bound and says how many it dropped (AB_MSG_GAP);
 *   worker_queue  a broker that ignores the worker's credit: the worker
 *                 holds twice its capacity plus a slack, and refuses the
 *                 rest with BUSY at once: each answered, none lost;
 *   destroy_start a request started from a callback that ab_client_destroy
 *                 runs is refused (AB_ESTOPPED), not dropped without its
 *                 final event;
 *   stopped       a stopped client and worker hand out nothing more, though
 *                 messages and jobs wait;
 *   oversize      one message over the max payload costs the connection,
 *                 which the library dials again (libzmq does not after
 *                 that protocol error): requests work again;
 *   ask_partial   a PARTIAL answering an ab_client_ask (only requests
 *                 stream) does not reach its callback, which runs once,
 *                 final, with the answer;
 *   send_queue    requests of 1 MiB to a broker that never finishes its
 *                 handshake: the queue to it stops at 256 MiB (AB_EBUSY,
 *                 not 100,000 messages); once a broker reads, every queued
 *                 request arrives and sending works again.
 *   lz4_corrupt   a streamed chunk with a corrupt lz4 payload ends its
 *                 request (AB_EMALFORMED) and the broker is told (CANCEL);
 * (clientfuzz found destroy_start, stopped, oversize and ask_partial.)
 */
#include "agentbus.h"
#include "codec.h"
#include "harness.h"
#include "test.h"
#include "util.h"
#include "batchtest.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

/* One message read by the fake broker: the sender's routing id, the header
 * and the payload (views into the frames, valid until s_in_close). */
typedef struct {
    zmq_msg_t f[3];
    int n;
    ab_header_t h;
    ab_frame_t pl;
} s_in_t;

/* The next message on ROUTER within TIMEOUT_MS: 1, or 0 on timeout. */
static int s_in(void *router, s_in_t *in, int timeout_ms)
{
    zmq_pollitem_t it = {router, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, timeout_ms) <= 0)
        return 0;
    int more = 1;
    in->n = 0;
    while (more && in->n < 3) {
        zmq_msg_init(&in->f[in->n]);
        REQUIRE(zmq_msg_recv(&in->f[in->n], router, 0) >= 0);
        more = zmq_msg_more(&in->f[in->n]);
        in->n++;
    }
    REQUIRE(!more && in->n >= 2);
    ab_frame_t fr[2] = {{zmq_msg_data(&in->f[1]), zmq_msg_size(&in->f[1])},
                        {in->n > 2 ? zmq_msg_data(&in->f[2]) : NULL,
                         in->n > 2 ? zmq_msg_size(&in->f[2]) : 0}};
    REQUIRE(ab_msg_decode(fr, (size_t)in->n - 1, NULL, &in->h, &in->pl) == AB_OK);
    return 1;
}

static void s_in_close(s_in_t *in)
{
    for (int i = 0; i < in->n; i++)
        zmq_msg_close(&in->f[i]);
    in->n = 0;
}

/* Sends H with a payload frame of N bytes (DATA) to the peer RID. */
static void s_out(void *router, const zmq_msg_t *rid, const ab_header_t *h, const void *data,
                  size_t n)
{
    uint8_t hb[256];
    size_t hl = ab_header_encode(h, hb, sizeof hb);
    REQUIRE(hl > 0);
    REQUIRE(zmq_send(router, zmq_msg_data((zmq_msg_t *)rid), zmq_msg_size((zmq_msg_t *)rid),
                     ZMQ_SNDMORE) >= 0);
    REQUIRE(zmq_send(router, hb, hl, ZMQ_SNDMORE) >= 0);
    REQUIRE(zmq_send(router, data, n, 0) >= 0);
}

static ab_options_t *s_opts(int port, size_t max_payload)
{
    ab_options_t *o = ab_options_new();
    REQUIRE(o != NULL);
    REQUIRE(ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
    REQUIRE(ab_options_set_batching(o, 0) == AB_OK);
    if (max_payload)
        REQUIRE(ab_options_set_max_payload(o, max_payload) == AB_OK);
    return o;
}

/* Reads ROUTER until the library's HELLO (or REGISTER, when KIND says so)
 * and answers it; the peer's routing id goes to RID. */
static void s_handshake(void *router, uint32_t kind, const char *target, zmq_msg_t *rid)
{
    int64_t end = ab_now_ms() + 10000;
    while (ab_now_ms() < end) {
        s_in_t in;
        if (!s_in(router, &in, 100))
            continue;
        int hit = in.h.kind == kind;
        if (hit) {
            zmq_msg_copy(rid, &in.f[0]);
            bt_fake_answer(router, &in.f[0], kind, in.h.id, 0, target);
        }
        s_in_close(&in);
        if (hit)
            return;
    }
    REQUIRE(!"the library's handshake did not arrive");
}

/* --- sync_stream ---------------------------------------------------------------- */
enum { S_CHUNK = 64 * 1024, S_MAX = 1024 * 1024 };

typedef struct {
    int port, rc;
    size_t size;
    void *reply;
} s_sync_t;

static void *s_sync_thread(void *arg)
{
    s_sync_t *x = arg;
    ab_options_t *o = s_opts(x->port, S_MAX);
    ab_client_t *c = NULL;
    REQUIRE(ab_client_new(&c, o) == AB_OK);
    ab_options_destroy(&o);
    x->rc = ab_client_request(c, "svc", "go", 2, 20000, &x->reply, &x->size);
    ab_client_destroy(&c);
    return NULL;
}

/* Answers the one REQUEST a synchronous call sends with CHUNKS PARTIALs of
 * S_CHUNK bytes (byte i of the stream is i % 251) then a REPLY, stopping
 * early at a CANCEL of it. Returns the PARTIALs sent; *CANCELLED says
 * whether the CANCEL came. */
static int s_stream(void *router, int chunks, int *cancelled)
{
    zmq_msg_t rid;
    zmq_msg_init(&rid);
    s_handshake(router, AB_KIND_HELLO, NULL, &rid);
    uint64_t id = 0;
    int64_t end = ab_now_ms() + 10000;
    while (!id && ab_now_ms() < end) {
        s_in_t in;
        if (s_in(router, &in, 100) && in.h.kind == AB_KIND_REQUEST)
            id = in.h.id;
        s_in_close(&in);
    }
    REQUIRE(id != 0);
    uint8_t *chunk = malloc(S_CHUNK);
    REQUIRE(chunk != NULL);
    int sent = 0;
    *cancelled = 0;
    for (; sent < chunks && !*cancelled; sent++) {
        for (size_t i = 0; i < S_CHUNK; i++)
            chunk[i] = (uint8_t)(((size_t)sent * S_CHUNK + i) % 251);
        ab_header_t h = ab_header_init(AB_KIND_PARTIAL);
        h.correlation_id = id;
        s_out(router, &rid, &h, chunk, S_CHUNK);
        s_in_t in;
        while (s_in(router, &in, sent % 16 == 15 ? 5 : 0)) { /* a CANCEL may be on its way */
            *cancelled |= in.h.kind == AB_KIND_CANCEL && in.h.correlation_id == id;
            s_in_close(&in);
        }
    }
    ab_header_t r = ab_header_init(AB_KIND_REPLY);
    r.correlation_id = id;
    s_out(router, &rid, &r, "", 0);
    /* the CANCEL, when it was not seen during the stream */
    end = ab_now_ms() + 5000;
    while (!*cancelled && chunks * S_CHUNK > S_MAX && ab_now_ms() < end) {
        s_in_t in;
        if (s_in(router, &in, 100))
            *cancelled |= in.h.kind == AB_KIND_CANCEL && in.h.correlation_id == id;
        s_in_close(&in);
    }
    free(chunk);
    zmq_msg_close(&rid);
    return sent;
}

static void s_sync_case(int chunks, int want_rc)
{
    int port = 0, cancelled = 0;
    void *router = bt_fake_router(&port);
    s_sync_t x = {port, 1, 0, NULL};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, s_sync_thread, &x) == 0);
    int sent = s_stream(router, chunks, &cancelled);
    pthread_join(th, NULL);
    printf("%d chunks of %d bytes offered, %d sent, cancelled %d: %s, %zu bytes\n", chunks,
           S_CHUNK, sent, cancelled, ab_status_name(x.rc), x.size);
    CHECK_EQ(x.rc, want_rc);
    if (want_rc == AB_OK) {
        CHECK_U64(x.size, (uint64_t)chunks * S_CHUNK);
        size_t bad = 0;
        for (size_t i = 0; x.reply && i < x.size; i++)
            bad += ((uint8_t *)x.reply)[i] != (uint8_t)(i % 251);
        CHECK_U64(bad, 0);
        CHECK_EQ(cancelled, 0);
    } else {
        CHECK_TRUE(x.reply == NULL);
        CHECK_EQ(cancelled, 1); /* the worker behind the broker is told to stop */
    }
    ab_free(x.reply);
    zmq_close(router);
    zmq_ctx_term(bt_ctx);
    bt_ctx = NULL;
}

static void s_sync_stream(void)
{
    s_sync_case(S_MAX / S_CHUNK, AB_OK); /* exactly the max payload: joined */
    s_sync_case(400, AB_EPAYLOADSIZE);   /* 25 MiB offered */
}

/* --- lz4_corrupt ---------------------------------------------------------------- */

typedef struct {
    int port;
    atomic_int done;
    th_answer_t a;
} s_lz_t;

static void *s_lz_thread(void *arg)
{
    s_lz_t *x = arg;
    ab_options_t *o = s_opts(x->port, 0);
    ab_client_t *c = NULL;
    REQUIRE(ab_client_new(&c, o) == AB_OK);
    ab_options_destroy(&o);
    REQUIRE(ab_client_request_start(c, "svc", "go", 2, &(ab_request_opts_t){.timeout_ms = 20000},
                                    th_answer_cb, &x->a, NULL) == AB_OK);
    int64_t end = ab_now_ms() + 15000;
    while (!x->a.finals && ab_now_ms() < end)
        ab_client_poll(c, 50);
    ab_client_poll(c, 100); /* the CANCEL goes out */
    ab_client_destroy(&c);
    atomic_store(&x->done, 1);
    return NULL;
}

/* A streamed chunk whose lz4 payload is corrupt ends its request with
 * AB_EMALFORMED, and the broker is told (CANCEL), as for one over the max
 * payload: before 2026-12-08 nothing was sent, and the worker behind the
 * broker went on streaming until the request's deadline. */
static void s_lz4_corrupt(void)
{
    int port = 0;
    void *router = bt_fake_router(&port);
    s_lz_t x = {.port = port};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, s_lz_thread, &x) == 0);
    zmq_msg_t rid;
    zmq_msg_init(&rid);
    s_handshake(router, AB_KIND_HELLO, NULL, &rid);
    uint64_t id = 0;
    int cancelled = 0;
    int64_t end = ab_now_ms() + 20000;
    while (!atomic_load(&x.done) && ab_now_ms() < end) {
        s_in_t in;
        if (!s_in(router, &in, 50))
            continue;
        if (in.h.kind == AB_KIND_REQUEST && !id) {
            id = in.h.id;
            ab_header_t h = ab_header_init(AB_KIND_PARTIAL);
            h.correlation_id = id;
            h.flags = AB_FLAG_LZ4;
            h.original_size = 100;
            s_out(router, &rid, &h, "\xff\xfe\xfd not lz4", 12);
        }
        cancelled |= id && in.h.kind == AB_KIND_CANCEL && in.h.correlation_id == id;
        s_in_close(&in);
    }
    pthread_join(th, NULL);
    printf("lz4_corrupt: %s, CANCEL %s\n", ab_status_name(x.a.status),
           cancelled ? "sent" : "not sent");
    CHECK_EQ(x.a.finals, 1);
    CHECK_EQ(x.a.status, AB_EMALFORMED);
    CHECK_EQ(cancelled, 1);
    zmq_msg_close(&rid);
    zmq_close(router);
    zmq_ctx_term(bt_ctx);
    bt_ctx = NULL;
}

/* --- recv_queue ----------------------------------------------------------------- */
enum { S_MSGS = 200, S_MSG_BYTES = 1024 * 1024 };

typedef struct {
    int port;
    atomic_int done; /* set by the thread as it ends; the main thread polls it */
    int got, gap_first;
    uint64_t dropped, first_id, last_id;
    size_t bytes;
} s_rq_t;

static void *s_rq_thread(void *arg)
{
    s_rq_t *x = arg;
    ab_options_t *o = s_opts(x->port, 0);
    ab_client_t *c = NULL;
    REQUIRE(ab_client_new(&c, o) == AB_OK);
    ab_options_destroy(&o);
    /* Answered after every message: once it returns, all of them sit in
     * the receive queue (one connection keeps its order). */
    void *r = NULL;
    size_t n = 0;
    CHECK_EQ(ab_client_control(c, "stats", 30000, &r, &n), AB_OK);
    ab_free(r);
    ab_message_t *m = NULL;
    for (int k = 0; k < 2 * S_MSGS && ab_client_recv(c, &m, 0) == AB_OK; k++) {
        if (m->type == AB_MSG_GAP) {
            x->gap_first = x->got == 0;
            x->dropped += m->dropped;
        } else if (m->type == AB_MSG_DIRECT) {
            x->first_id = x->first_id ? x->first_id : m->id;
            x->last_id = m->id;
            x->bytes += m->size;
            x->got++;
        }
        ab_message_destroy(&m);
    }
    ab_client_destroy(&c);
    atomic_store(&x->done, 1);
    return NULL;
}

static void s_recv_queue(void)
{
    int port = 0;
    void *router = bt_fake_router(&port);
    s_rq_t x = {0};
    x.port = port;
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, s_rq_thread, &x) == 0);
    zmq_msg_t rid;
    zmq_msg_init(&rid);
    s_handshake(router, AB_KIND_HELLO, NULL, &rid);
    uint64_t control = 0;
    int64_t end = ab_now_ms() + 10000;
    while (!control && ab_now_ms() < end) {
        s_in_t in;
        if (s_in(router, &in, 100) && in.h.kind == AB_KIND_CONTROL)
            control = in.h.id;
        s_in_close(&in);
    }
    REQUIRE(control != 0);
    char *big = malloc(S_MSG_BYTES);
    REQUIRE(big != NULL);
    memset(big, 'm', S_MSG_BYTES);
    for (int i = 1; i <= S_MSGS; i++) {
        ab_header_t h = ab_header_init(AB_KIND_SEND);
        h.id = (uint64_t)i;
        h.sender = ab_view_of("flooder");
        h.target = ab_view_of("~me");
        s_out(router, &rid, &h, big, S_MSG_BYTES);
    }
    ab_header_t a = ab_header_init(AB_KIND_REPLY);
    a.correlation_id = control;
    s_out(router, &rid, &a, "ok", 2);
    for (int i = 0; i < 3000 && !atomic_load(&x.done); i++) {
        s_in_t in;
        if (s_in(router, &in, 10))
            s_in_close(&in);
    }
    pthread_join(th, NULL);
    printf("%d messages of 1 MiB kept (%zu bytes, ids %llu..%llu), %llu dropped, gap first %d\n",
           x.got, x.bytes, (unsigned long long)x.first_id, (unsigned long long)x.last_id,
           (unsigned long long)x.dropped, x.gap_first);
    CHECK_U64(x.got + x.dropped, S_MSGS); /* each message kept or counted */
    CHECK_TRUE(x.bytes <= 64u * 1024 * 1024); /* the byte bound */
    CHECK_TRUE(x.got >= 32);                  /* most of it used */
    CHECK_EQ(x.gap_first, 1);                 /* the loss is said where it happened */
    CHECK_U64(x.last_id, S_MSGS);             /* the newest are kept, in order */
    CHECK_U64(x.last_id - x.first_id + 1, (uint64_t)x.got);
    free(big);
    zmq_msg_close(&rid);
    zmq_close(router);
    zmq_ctx_term(bt_ctx);
    bt_ctx = NULL;
}

/* --- worker_queue --------------------------------------------------------------- */
enum { S_CAPACITY = 2, S_FLOOD = 4000 };

static void s_worker_queue(void)
{
    int port = 0;
    void *router = bt_fake_router(&port);
    ab_options_t *o = s_opts(port, 0);
    ab_worker_t *w = NULL;
    REQUIRE(ab_worker_new(&w, o, "flood", S_CAPACITY) == AB_OK);
    ab_options_destroy(&o);
    static ab_job_t *held[S_FLOOD];
    int nheld = 0, busy = 0, other = 0;
    zmq_msg_t rid;
    zmq_msg_init(&rid);
    int registered = 0;
    int64_t end = ab_now_ms() + 10000;
    while (!registered && ab_now_ms() < end) {
        ab_job_t *j = NULL;
        CHECK_EQ(ab_worker_recv(w, &j, 10), AB_ETIMEOUT); /* it registers when it runs */
        s_in_t in;
        while (!registered && s_in(router, &in, 0)) {
            if (in.h.kind == AB_KIND_REGISTER) {
                zmq_msg_copy(&rid, &in.f[0]);
                bt_fake_answer(router, &in.f[0], AB_KIND_REGISTER, in.h.id, 0, "flood");
                registered = 1;
            }
            s_in_close(&in);
        }
    }
    REQUIRE(registered);
    /* Requests far past the credit. The application takes every job it
     * gets and answers none, so the worker holds all it accepted. */
    for (int i = 0; i < S_FLOOD; i++) {
        ab_header_t h = ab_header_init(AB_KIND_REQUEST);
        h.id = (uint64_t)i + 1;
        h.target = ab_view_of("flood");
        h.timeout_ms = 60000;
        s_out(router, &rid, &h, "0123456789", 10);
    }
    end = ab_now_ms() + 30000;
    while (ab_now_ms() < end && nheld + busy < S_FLOOD) {
        ab_job_t *j = NULL;
        if (ab_worker_recv(w, &j, 10) == AB_OK)
            held[nheld++] = j;
        s_in_t in;
        while (s_in(router, &in, 0)) {
            if (in.h.kind == AB_KIND_ERROR && in.h.error_code == AB_ERR_BUSY)
                busy++;
            else if (in.h.kind == AB_KIND_ERROR || in.h.kind == AB_KIND_REPLY)
                other++;
            s_in_close(&in);
        }
    }
    printf("%d requests to a capacity of %d: %d taken by the application, %d refused BUSY, "
           "%d other answers\n",
           S_FLOOD, S_CAPACITY, nheld, busy, other);
    /* Held: twice the capacity plus the slack of 1,024 (worker.c); each
     * other request refused at once: none lost, none left waiting. */
    CHECK_EQ(nheld, 2 * S_CAPACITY + 1024);
    CHECK_EQ(busy, S_FLOOD - nheld);
    CHECK_EQ(other, 0);
    /* Answering frees room: the next request is taken again. */
    for (int i = 0; i < nheld; i++)
        CHECK_EQ(ab_worker_reply(w, &held[i], "ok", 2), AB_OK);
    ab_header_t h = ab_header_init(AB_KIND_REQUEST);
    h.id = S_FLOOD + 1;
    h.target = ab_view_of("flood");
    s_out(router, &rid, &h, "again", 5);
    ab_job_t *j = NULL;
    CHECK_EQ(ab_worker_recv(w, &j, 5000), AB_OK);
    CHECK_U64(j ? ab_job_id(j) : 0, S_FLOOD + 1);
    ab_job_destroy(&j);
    ab_worker_destroy(&w);
    zmq_msg_close(&rid);
    zmq_close(router);
    zmq_ctx_term(bt_ctx);
    bt_ctx = NULL;
}

/* --- destroy_start ----------------------------------------------------------- */
typedef struct {
    ab_client_t *c;
    int started, finals, refused;
} s_ds_t;

static void s_ds_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    s_ds_t *x = arg;
    if (!ev->final)
        return;
    x->finals++;
    /* a new request from the final callback, as the API allows */
    int rc = ab_client_request_start(c, "svc", "again", 5, NULL, s_ds_cb, x, NULL);
    if (rc == AB_OK)
        x->started++;
    else
        x->refused += rc == AB_ESTOPPED;
}

static void s_destroy_start(void)
{
    ab_options_t *o = s_opts(th_free_port(), 0); /* nothing listens there */
    s_ds_t x = {0};
    REQUIRE(ab_client_new(&x.c, o) == AB_OK);
    ab_options_destroy(&o);
    REQUIRE(ab_client_request_start(x.c, "svc", "first", 5, NULL, s_ds_cb, &x, NULL) == AB_OK);
    x.started++;
    ab_client_destroy(&x.c);
    printf("destroy: %d started, %d final events, %d refused\n", x.started, x.finals,
           x.refused);
    CHECK_EQ(x.finals, x.started); /* each started request had its final event */
    CHECK_EQ(x.refused, 1);
}

/* --- stopped -------------------------------------------------------------------- */
static int s_job_fn_calls;

static void s_count_job(ab_worker_t *w, ab_job_t *job, void *arg)
{
    (void)w, (void)arg;
    s_job_fn_calls++;
    ab_job_destroy(&job);
}

static void s_stopped(void)
{
    int port = 0;
    void *router = bt_fake_router(&port);
    ab_options_t *o = s_opts(port, 0);
    ab_client_t *c = NULL;
    ab_worker_t *w = NULL;
    REQUIRE(ab_client_new(&c, o) == AB_OK);
    REQUIRE(ab_worker_new(&w, o, "stop", 8) == AB_OK);
    ab_options_destroy(&o);
    zmq_msg_t crid, wrid;
    zmq_msg_init(&crid);
    zmq_msg_init(&wrid);
    int hello = 0, reg = 0;
    int64_t end = ab_now_ms() + 10000;
    while ((!hello || !reg) && ab_now_ms() < end) {
        ab_client_poll(c, 0);
        ab_job_t *j = NULL;
        ab_worker_recv(w, &j, 0);
        ab_job_destroy(&j);
        s_in_t in;
        while (s_in(router, &in, 10)) {
            if (in.h.kind == AB_KIND_REGISTER && !reg) {
                zmq_msg_copy(&wrid, &in.f[0]);
                bt_fake_answer(router, &in.f[0], AB_KIND_REGISTER, in.h.id, 0, "stop");
                reg = 1;
            } else if (in.h.kind == AB_KIND_HELLO && !hello && in.h.id &&
                       (!reg || zmq_msg_size(&in.f[0]) != zmq_msg_size(&wrid) ||
                        memcmp(zmq_msg_data(&in.f[0]), zmq_msg_data(&wrid),
                               zmq_msg_size(&wrid)))) {
                zmq_msg_copy(&crid, &in.f[0]);
                bt_fake_answer(router, &in.f[0], AB_KIND_HELLO, in.h.id, 0, NULL);
                hello = 1;
            }
            s_in_close(&in);
        }
    }
    REQUIRE(hello && reg);
    for (int i = 1; i <= 3; i++) { /* three of each, back to back */
        ab_header_t r = ab_header_init(AB_KIND_REQUEST);
        r.id = (uint64_t)i;
        r.target = ab_view_of("stop");
        r.timeout_ms = 60000;
        s_out(router, &wrid, &r, "job", 3);
        ab_header_t m = ab_header_init(AB_KIND_SEND);
        m.id = (uint64_t)i;
        m.sender = ab_view_of("someone");
        m.target = ab_view_of("me");
        s_out(router, &crid, &m, "msg", 3);
    }
    /* the first of each arrived, so the others are there or on their way */
    ab_job_t *j = NULL;
    CHECK_EQ(ab_worker_recv(w, &j, 5000), AB_OK);
    ab_job_destroy(&j);
    ab_message_t *m = NULL;
    CHECK_EQ(ab_client_recv(c, &m, 5000), AB_OK);
    ab_message_destroy(&m);
    ab_worker_stop(w);
    ab_client_stop(c);
    CHECK_EQ(ab_worker_recv(w, &j, 0), AB_ESTOPPED);
    CHECK_TRUE(j == NULL);
    CHECK_EQ(ab_client_recv(c, &m, 0), AB_ESTOPPED);
    CHECK_TRUE(m == NULL);
    CHECK_EQ(ab_client_poll(c, 0), AB_ESTOPPED);
    s_job_fn_calls = 0;
    CHECK_EQ(ab_worker_poll(w, 0, s_count_job, NULL), AB_ESTOPPED);
    CHECK_EQ(s_job_fn_calls, 0);
    ab_job_destroy(&j);
    ab_message_destroy(&m);
    ab_worker_destroy(&w);
    ab_client_destroy(&c);
    zmq_msg_close(&crid);
    zmq_msg_close(&wrid);
    zmq_close(router);
    zmq_ctx_term(bt_ctx);
    bt_ctx = NULL;
}

/* --- oversize ------------------------------------------------------------------- */
typedef struct {
    int port, rc;
    atomic_int done; /* set by the thread as it ends; the main thread polls it */
} s_os_t;

static void *s_os_thread(void *arg)
{
    s_os_t *x = arg;
    ab_options_t *o = s_opts(x->port, 1000);
    ab_client_t *c = NULL;
    REQUIRE(ab_client_new(&c, o) == AB_OK);
    ab_options_destroy(&o);
    /* The first request meets the oversize message; then requests until
     * one is answered (the library connected again) or 20 s pass. */
    int64_t end = ab_now_ms() + 20000;
    x->rc = AB_ETIMEOUT;
    while (x->rc != AB_OK && ab_now_ms() < end) {
        void *r = NULL;
        size_t n = 0;
        x->rc = ab_client_request(c, "svc", "ping", 4, 1000, &r, &n);
        ab_free(r);
        if (x->rc != AB_OK)
            usleep(100 * 1000);
    }
    ab_client_destroy(&c);
    atomic_store(&x->done, 1);
    return NULL;
}

static void s_oversize(void)
{
    int port = 0;
    void *router = bt_fake_router(&port);
    s_os_t x = {port, 0, 0};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, s_os_thread, &x) == 0);
    char *big = calloc(1, 100000);
    REQUIRE(big != NULL);
    int hellos = 0, sent_big = 0, answered = 0;
    int64_t end = ab_now_ms() + 30000;
    while (!atomic_load(&x.done) && ab_now_ms() < end) {
        s_in_t in;
        if (!s_in(router, &in, 50))
            continue;
        if (in.h.kind == AB_KIND_HELLO && in.h.id) {
            hellos++;
            bt_fake_answer(router, &in.f[0], AB_KIND_HELLO, in.h.id, 0, NULL);
        } else if (in.h.kind == AB_KIND_REQUEST && !sent_big) {
            /* 100 KB to a handle that takes 1,000 bytes */
            ab_header_t h = ab_header_init(AB_KIND_PUBLISH);
            h.target = ab_view_of("t.big");
            s_out(router, &in.f[0], &h, big, 100000);
            sent_big = 1;
        } else if (in.h.kind == AB_KIND_REQUEST) {
            ab_header_t h = ab_header_init(AB_KIND_REPLY);
            h.correlation_id = in.h.id;
            s_out(router, &in.f[0], &h, "pong", 4);
            answered++;
        }
        s_in_close(&in);
    }
    pthread_join(th, NULL);
    printf("oversize: %d HELLOs, %d requests answered after it, last request %s\n", hellos,
           answered, ab_status_name(x.rc));
    CHECK_EQ(sent_big, 1);
    CHECK_TRUE(hellos >= 2); /* a new connection */
    CHECK_EQ(x.rc, AB_OK);
    free(big);
    zmq_close(router);
    zmq_ctx_term(bt_ctx);
    bt_ctx = NULL;
}

/* --- ask_partial ---------------------------------------------------------------- */
static void s_ask_partial(void)
{
    int port = 0;
    void *router = bt_fake_router(&port);
    ab_options_t *o = s_opts(port, 0);
    ab_client_t *c = NULL;
    REQUIRE(ab_client_new(&c, o) == AB_OK);
    ab_options_destroy(&o);
    zmq_msg_t rid;
    zmq_msg_init(&rid);
    th_answer_t x = {0};
    uint64_t id = 0;
    REQUIRE(ab_client_ask(c, "bob", "q?", 2, 10000, th_answer_cb, &x, &id) == AB_OK);
    int asked = 0;
    int64_t end = ab_now_ms() + 10000;
    while (!asked && ab_now_ms() < end) { /* the HELLO, then the ask (any order) */
        ab_client_poll(c, 0);
        s_in_t in;
        while (s_in(router, &in, 10)) {
            if (in.h.kind == AB_KIND_HELLO && in.h.id)
                bt_fake_answer(router, &in.f[0], AB_KIND_HELLO, in.h.id, 0, NULL);
            if (in.h.kind == AB_KIND_SEND && in.h.id == id) {
                zmq_msg_copy(&rid, &in.f[0]);
                asked = 1;
            }
            s_in_close(&in);
        }
    }
    REQUIRE(asked);
    ab_header_t p = ab_header_init(AB_KIND_PARTIAL); /* what no broker sends to an ask */
    p.correlation_id = id;
    s_out(router, &rid, &p, "part", 4);
    ab_header_t a = ab_header_init(AB_KIND_SEND); /* bob's answer */
    a.id = 7;
    a.correlation_id = id;
    a.sender = ab_view_of("bob");
    a.target = ab_view_of("me");
    s_out(router, &rid, &a, "answer", 6);
    end = ab_now_ms() + 10000;
    while (!x.finals && ab_now_ms() < end)
        ab_client_poll(c, 100);
    printf("ask: %d events, %d final, %s, \"%s\"\n", x.events, x.finals, ab_status_name(x.status),
           x.data);
    CHECK_EQ(x.finals, 1);
    CHECK_EQ(x.events, 1); /* the PARTIAL made none */
    CHECK_EQ(x.status, AB_OK);
    CHECK_TRUE(strcmp(x.data, "answer") == 0);
    ab_client_destroy(&c);
    zmq_msg_close(&rid);
    zmq_close(router);
    zmq_ctx_term(bt_ctx);
    bt_ctx = NULL;
}

/* --- send_queue ----------------------------------------------------------------- */
static void s_sq_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c, (void)ev, (void)arg;
}

/* A TCP listener that accepts nothing: the kernel completes connections
 * into its backlog, and the ZMTP handshake never ends. */
static int s_deaf_listener(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    REQUIRE(fd >= 0);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    REQUIRE(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    REQUIRE(listen(fd, 8) == 0);
    return fd;
}

static void s_send_queue(void)
{
    enum { MIB = 1 << 20, TRIES = 300 };
    int port = th_free_port();
    int deaf = s_deaf_listener(port);
    ab_options_t *o = s_opts(port, 0);
    ab_client_t *c = NULL;
    REQUIRE(ab_client_new(&c, o) == AB_OK);
    ab_options_destroy(&o);
    char *big = calloc(1, MIB);
    REQUIRE(big != NULL);
    int accepted = 0, rc = AB_OK;
    for (; accepted < TRIES; accepted++) {
        rc = ab_client_request_start(c, "svc", big, MIB, NULL, s_sq_cb, NULL, NULL);
        if (rc != AB_OK)
            break;
    }
    printf("send_queue: %d requests of 1 MiB accepted, then %s: %s\n", accepted,
           ab_status_name(rc), ab_client_last_error(c));
    CHECK_EQ(rc, AB_EBUSY);
    CHECK_TRUE(accepted >= 250 && accepted <= 256); /* 256 MiB, less what HELLO holds */
    CHECK_TRUE(strstr(ab_client_last_error(c), "queue to the broker") != NULL);
    /* A broker on that port now: what waited arrives, whole, and the room
     * comes back as it is written out. */
    close(deaf);
    void *ctx = zmq_ctx_new();
    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger);
    REQUIRE(zmq_bind(router, th_ep(port)) == 0);
    int got = 0;
    int64_t end = ab_now_ms() + 30000;
    while (got < accepted && ab_now_ms() < end) {
        ab_client_poll(c, 0);
        s_in_t in;
        while (s_in(router, &in, 10)) {
            if (in.h.kind == AB_KIND_HELLO && in.h.id)
                bt_fake_answer(router, &in.f[0], AB_KIND_HELLO, in.h.id, 0, NULL);
            got += in.h.kind == AB_KIND_REQUEST && in.pl.size == MIB;
            s_in_close(&in);
        }
    }
    printf("send_queue: the broker got %d of them\n", got);
    CHECK_EQ(got, accepted);
    CHECK_EQ(ab_client_request_start(c, "svc", big, MIB, NULL, s_sq_cb, NULL, NULL), AB_OK);
    ab_client_destroy(&c);
    free(big);
    zmq_close(router);
    zmq_ctx_term(ctx);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"sync_stream", s_sync_stream},
        {"recv_queue", s_recv_queue},
        {"worker_queue", s_worker_queue},
        {"destroy_start", s_destroy_start},
        {"stopped", s_stopped},
        {"oversize", s_oversize},
        {"ask_partial", s_ask_partial},
        {"send_queue", s_send_queue},
        {"lz4_corrupt", s_lz4_corrupt},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
