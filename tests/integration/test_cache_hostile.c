/*
 * test_cache_hostile.c - the cache against hostile or unusual peers (part of
 * test_cache, cachetest.h): an lz4 bomb, the model in the key, and a
 * leader cancelled while others wait on it (raw ZeroMQ peers).
 */
#include "harness.h"
#include "test.h"
#include "util.h"
#include "codec.h"
#include "compress.h"
#include "cachetest.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

/* --- issue 11 --------------------------------------------------------------------------- */
/* Raw peers: a hostile client is not a library client. */
static void *s_zctx;

static void *s_raw(int port)
{
    if (!s_zctx)
        s_zctx = zmq_ctx_new();
    void *s = zmq_socket(s_zctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    REQUIRE(zmq_connect(s, th_ep(port)) == 0);
    return s;
}

static void s_raw_send(void *s, const ab_header_t *h, const void *data, size_t size)
{
    uint8_t buf[1024];
    size_t n = ab_header_encode(h, buf, sizeof buf);
    REQUIRE(n > 0);
    REQUIRE(zmq_send(s, buf, n, size || data ? ZMQ_SNDMORE : 0) >= 0);
    if (size || data)
        REQUIRE(zmq_send(s, data, size, 0) >= 0);
}

/* Receives one message's header within TIMEOUT_MS (its payload is
 * dropped): 1, or 0 on timeout. */
static int s_raw_recv(void *s, ab_header_t *h, int timeout_ms)
{
    zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, timeout_ms) <= 0)
        return 0;
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, s, 0) < 0) {
        zmq_msg_close(&m);
        return 0;
    }
    int more = zmq_msg_more(&m);
    int ok = ab_header_parse(zmq_msg_data(&m), zmq_msg_size(&m), h) == AB_OK;
    zmq_msg_close(&m);
    while (more) {
        zmq_msg_init(&m);
        zmq_msg_recv(&m, s, 0);
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
    return ok;
}

static Agentbus__CacheStats *s_cstats(ab_client_t *c, Agentbus__Stats **keep)
{
    return ct_cache_stats(c, keep);
}

/* Counts the REPLYs and ERRORs raw client S gets until N came (within
 * 60 s), heartbeating: a silent peer is dropped, its requests with it. */
static void s_answers(void *s, int n, int *replies, int *errors)
{
    int64_t hb_at = 0;
    for (int64_t end = ab_now_ms() + 60000; *replies + *errors < n && ab_now_ms() < end;) {
        if (ab_now_ms() >= hb_at) {
            ab_header_t hb = ab_header_init(AB_KIND_HEARTBEAT);
            s_raw_send(s, &hb, NULL, 0);
            hb_at = ab_now_ms() + 500;
        }
        ab_header_t h;
        if (!s_raw_recv(s, &h, 200))
            continue;
        *replies += h.kind == AB_KIND_REPLY;
        *errors += h.kind == AB_KIND_ERROR;
    }
}

/* The lz4 bomb: a 257 KB block declaring 64 MiB, marked cacheable
 * (and the same unmarked), from a raw client. The broker used to
 * decompress and hash 64 MiB per bomb on its one thread (44 ms each). It
 * now keys them without decompressing (key_not_decompressed counts each):
 * every bomb is answered, the identical marked ones from the cache, and a
 * well-behaved client is served alongside. */
void cache_lz4_bomb(void)
{
    int port = th_free_port();
    /* The worker's library inflates each unmarked bomb (64 MiB) on the
     * thread that sends its heartbeats: on a machine starved enough (load
     * 18 on 2 cores) that took seconds, the worker was declared dead and
     * its request dispatched again (7 jobs, 2 errors). Silence is not what
     * this case tests: heartbeats every 3 s, a worker's every 5 s. */
    th_broker(port, "--heartbeat-ms", "3000", "--health-floor-ms", "5000", NULL);
    ab_client_t *c = th_client(port);
    ct_wk_t x = {.port = port, .service = "infer"};
    pthread_t th = ct_worker_start(&x, c);
    const size_t orig = 64u << 20;
    void *zeros = calloc(1, orig), *bomb = NULL;
    size_t blen = 0;
    REQUIRE(zeros && ab_lz4_compress(zeros, orig, 0, &bomb, &blen) == 1);
    free(zeros);
    REQUIRE(blen > 200000 && blen < 300000); /* ~257 KB declaring 64 MiB */
    void *s = s_raw(port);
    enum { MARKED = 8, UNMARKED = 4 };
    for (int i = 0; i < MARKED + UNMARKED; i++) {
        ab_header_t h = ab_header_init(AB_KIND_REQUEST);
        h.id = (uint64_t)i + 1;
        h.target = ab_view_of("infer");
        h.model = ab_view_of("tiny:latest");
        h.flags = AB_FLAG_LZ4 | (i < MARKED ? AB_FLAG_CACHEABLE : 0);
        h.original_size = orig;
        h.timeout_ms = 60000;
        s_raw_send(s, &h, bomb, blen);
    }
    free(bomb);
    int replies = 0, errors = 0;
    s_answers(s, MARKED + UNMARKED, &replies, &errors);
    CHECK_EQ(replies, MARKED + UNMARKED);
    CHECK_EQ(errors, 0);
    char out[512];
    CHECK_EQ(ct_req(c, "infer", "still here", out, sizeof out), AB_OK);
    Agentbus__Stats *st;
    Agentbus__CacheStats *cs = s_cstats(c, &st);
    /* Each bomb keyed without being decompressed: before the fix, 0. */
    CHECK_U64(cs->key_not_decompressed, MARKED + UNMARKED);
    /* The identical marked ones share one key: one reached the worker. */
    CHECK_U64(cs->tiers[0]->hits + cs->coalesced, MARKED - 1);
    agentbus__stats__free_unpacked(st, NULL);
    CHECK_EQ(atomic_load(&x.jobs), 1 + UNMARKED + 1);
    zmq_close(s);
    zmq_ctx_term(s_zctx);
    s_zctx = NULL;
    ct_worker_end(&x, th);
    ab_client_destroy(&c);
}

/* A worker of capacity 64 answering "ok" to each job (ab_worker_poll). */
typedef struct {
    int port;
    atomic_int jobs, ready, done;
} s_wide_t;

static void s_wide_job(ab_worker_t *w, ab_job_t *job, void *arg)
{
    atomic_fetch_add(&((s_wide_t *)arg)->jobs, 1);
    ab_worker_reply(w, &job, "ok", 2);
}

static void *s_wide_main(void *arg)
{
    s_wide_t *x = arg;
    ab_options_t *o = ab_options_new();
    ab_options_set_endpoint(o, th_ep(x->port));
    ab_worker_t *w = NULL;
    int rc = ab_worker_new(&w, o, "wide", 64);
    ab_options_destroy(&o);
    atomic_store(&x->ready, rc == AB_OK ? 1 : -1);
    while (rc == AB_OK && !atomic_load(&x->done))
        ab_worker_poll(w, 100, s_wide_job, x);
    ab_worker_destroy(&w);
    return NULL;
}

/* A whole credit of lz4 bombs at once (64 requests of 257 KB, each
 * declaring 64 MiB) to a worker of capacity 64, whose heartbeats the
 * broker wants every 400 ms (found dead after ~0.8 s of silence). The
 * worker's library inflates each request as it reads it; its turn read all
 * of them before it let a job run or a heartbeat go: 4 GiB inflated and
 * seconds of silence, and the broker took it for dead and dispatched its
 * requests again. Its turn now stops at 8 MiB taken in: every bomb is
 * answered once, nothing is taken back. */
void cache_lz4_bombs_beat(void)
{
    s_wide_t x = {.port = th_free_port()};
    th_broker(x.port, "--health-floor-ms", "400", "--health-ceiling-ms", "400", NULL);
    ab_client_t *c = th_client(x.port);
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, s_wide_main, &x) == 0);
    REQUIRE(th_wait_workers(c, "wide", 1, 10000) == 0);
    const size_t orig = 64u << 20;
    void *zeros = calloc(1, orig), *bomb = NULL;
    size_t blen = 0;
    REQUIRE(zeros && ab_lz4_compress(zeros, orig, 0, &bomb, &blen) == 1);
    free(zeros);
    void *s = s_raw(x.port);
    enum { N = 64 };
    for (int i = 0; i < N; i++) {
        ab_header_t h = ab_header_init(AB_KIND_REQUEST);
        h.id = (uint64_t)i + 1;
        h.target = ab_view_of("wide");
        h.flags = AB_FLAG_LZ4;
        h.original_size = orig;
        h.timeout_ms = 60000;
        s_raw_send(s, &h, bomb, blen);
    }
    free(bomb);
    int replies = 0, errors = 0;
    s_answers(s, N, &replies, &errors);
    CHECK_EQ(replies, N);
    CHECK_EQ(errors, 0);
    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    CHECK_U64(st->redispatched, 0); /* the worker was heard from all along */
    agentbus__stats__free_unpacked(st, NULL);
    CHECK_EQ(atomic_load(&x.jobs), N); /* each computed once */
    zmq_close(s);
    zmq_ctx_term(s_zctx);
    s_zctx = NULL;
    atomic_store(&x.done, 1);
    pthread_join(th, NULL);
    ab_client_destroy(&c);
}

/* Packs a chat (KIND 'c'), embed ('e') request for MODEL. */
static size_t s_typed_for(uint8_t *buf, int kind, const char *model)
{
    Agentbus__InferenceOptions o = AGENTBUS__INFERENCE_OPTIONS__INIT;
    o.has_temperature_case = AGENTBUS__INFERENCE_OPTIONS__HAS_TEMPERATURE_TEMPERATURE;
    o.temperature = 0.0;
    Agentbus__InferenceRequest r = AGENTBUS__INFERENCE_REQUEST__INIT;
    Agentbus__ChatMessage m = AGENTBUS__CHAT_MESSAGE__INIT;
    Agentbus__ChatMessage *ms[1] = {&m};
    Agentbus__ChatRequest chat = AGENTBUS__CHAT_REQUEST__INIT;
    char *in[1] = {"one sentence"};
    Agentbus__EmbedRequest emb = AGENTBUS__EMBED_REQUEST__INIT;
    if (kind == 'c') {
        m.role = "user";
        m.content = "hello";
        chat.model = (char *)model;
        chat.n_messages = 1;
        chat.messages = ms;
        chat.options = &o;
        chat.has_stream_case = AGENTBUS__CHAT_REQUEST__HAS_STREAM_STREAM;
        chat.stream = 0;
        r.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_CHAT;
        r.chat = &chat;
    } else {
        emb.model = (char *)model;
        emb.n_input = 1;
        emb.input = in;
        r.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_EMBED;
        r.embed = &emb;
    }
    return agentbus__inference_request__pack(&r, buf);
}

/* Answer number ("#N") of a request for MODEL with payload BUF. */
static int s_model_req(ab_client_t *c, const char *model, const void *buf, size_t len)
{
    ct_got_t g = {0};
    REQUIRE(ab_client_request_start(c, "infer", buf, len,
                                    &(ab_request_opts_t){.timeout_ms = 10000, .model = model},
                                    ct_got_cb, &g, NULL) == AB_OK);
    ct_poll_all(&c, 1, &g, 1, 10000);
    const char *hash = strrchr(g.final, '#');
    return g.status == AB_OK && hash ? atoi(hash + 1) : -1;
}

/* Issue 11: a cached chat, embed or marked raw reply for model A is never
 * served for the same request to model B (only generate was tested). */
void cache_model_key(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    ab_client_t *c = th_client(port);
    ct_wk_t x = {.port = port, .service = "infer"};
    pthread_t th = ct_worker_start(&x, c);
    uint8_t buf[512];
    int n = 0;
    for (int k = 0; k < 2; k++) { /* chat, then embed */
        int kind = k ? 'e' : 'c';
        size_t la = s_typed_for(buf, kind, "model-a:latest");
        CHECK_EQ(s_model_req(c, "model-a:latest", buf, la), ++n);
        CHECK_EQ(s_model_req(c, "model-a:latest", buf, la), n); /* cached */
        size_t lb = s_typed_for(buf, kind, "model-b:latest");
        CHECK_EQ(s_model_req(c, "model-b:latest", buf, lb), ++n); /* not A's answer */
        CHECK_EQ(s_model_req(c, "model-b:latest", buf, lb), n);
    }
    /* Marked raw payloads: the header's model is the only difference. */
    ab_client_set_cache(c, AB_CACHE_ON, 0);
    CHECK_EQ(s_model_req(c, "model-a:latest", "raw bytes", 9), ++n);
    CHECK_EQ(s_model_req(c, "model-a:latest", "raw bytes", 9), n);
    CHECK_EQ(s_model_req(c, "model-b:latest", "raw bytes", 9), ++n);
    CHECK_EQ(atomic_load(&x.jobs), n);
    ct_worker_end(&x, th);
    ab_client_destroy(&c);
}
/* --- a cancelled leader ----------------------------------------------------------------- */
/* Waits on the raw worker WK for a message of KIND (CORR when nonzero),
 * heartbeating so the broker keeps it: 1 with *H, 0 after TIMEOUT_MS. */
static int s_wk_expect(void *wk, uint32_t kind, uint64_t corr, ab_header_t *h, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    while (ab_now_ms() < end) {
        ab_header_t hb = ab_header_init(AB_KIND_HEARTBEAT);
        hb.credit = 2;
        s_raw_send(wk, &hb, NULL, 0);
        if (s_raw_recv(wk, h, 200) && h->kind == kind && (!corr || h->correlation_id == corr))
            return 1;
    }
    return 0;
}

/* A request cancelled at its worker must not lead its flight until that
 * worker answers: an identical request arriving in between used to join
 * it, got its start replayed, then its CANCELLED (a cancel it never
 * asked for), and never reached a worker. The worker here is a raw peer
 * that answers the CANCEL only after the identical request had its chance
 * to arrive, so the window is held open on purpose. */
void cache_cancelled_leader(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    ab_client_t *c = th_client(port);
    void *wk = s_raw(port);
    ab_header_t h = ab_header_init(AB_KIND_REGISTER);
    h.id = 1;
    h.target = ab_view_of("echo");
    h.credit = 2;
    s_raw_send(wk, &h, NULL, 0);
    REQUIRE(s_wk_expect(wk, AB_KIND_REGISTER, 0, &h, 5000));
    REQUIRE(th_wait_workers(c, "echo", 1, 10000) == 0);
    ab_client_set_cache(c, AB_CACHE_ON, 0);
    static ct_got_t g[2];
    memset(g, 0, sizeof g);
    uint64_t ida = 0;
    REQUIRE(ab_client_request_start(c, "echo", "same", 4, &(ab_request_opts_t){.timeout_ms = 10000},
                                    ct_got_cb, &g[0], &ida) == AB_OK);
    ab_client_poll(c, 0);
    REQUIRE(s_wk_expect(wk, AB_KIND_REQUEST, 0, &h, 5000));
    uint64_t bida = h.id;
    ab_header_t p = ab_header_init(AB_KIND_PARTIAL);
    p.correlation_id = bida;
    s_raw_send(wk, &p, "start", 5);
    for (int i = 0; i < 200 && g[0].partials < 1; i++)
        ab_client_poll(c, 25);
    REQUIRE(g[0].partials == 1);
    CHECK_EQ(ab_client_cancel(c, ida), AB_OK);
    ab_client_poll(c, 0);
    CHECK_TRUE(s_wk_expect(wk, AB_KIND_CANCEL, bida, &h, 5000));
    /* the identical request, while the worker still holds the cancelled one */
    REQUIRE(ab_client_request_start(c, "echo", "same", 4, &(ab_request_opts_t){.timeout_ms = 10000},
                                    ct_got_cb, &g[1], NULL) == AB_OK);
    ab_client_poll(c, 0);
    int reached = 0;
    for (int i = 0; i < 15 && !reached; i++) {
        ab_client_poll(c, 0);
        reached = s_wk_expect(wk, AB_KIND_REQUEST, 0, &h, 200);
    }
    CHECK_TRUE(reached); /* it went to a worker itself */
    uint64_t bidb = h.id;
    ab_header_t e = ab_header_init(AB_KIND_ERROR);
    e.correlation_id = bida;
    e.error_code = AB_ERR_CANCELLED;
    e.error_text = ab_view_of("cancelled");
    s_raw_send(wk, &e, NULL, 0);
    if (reached) {
        ab_header_t r = ab_header_init(AB_KIND_REPLY);
        r.correlation_id = bidb;
        s_raw_send(wk, &r, "fresh", 5);
    }
    for (int i = 0; i < 200 && !g[1].finals; i++)
        ab_client_poll(c, 25);
    CHECK_EQ(g[1].status, AB_OK); /* not the cancelled one's CANCELLED */
    CHECK_STR(g[1].final, "fresh");
    zmq_close(wk);
    ab_client_destroy(&c);
}
