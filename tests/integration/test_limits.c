/*
 * test_limits.c - state a peer makes the broker keep, and what it costs to
 * let go of it (issue 11): CANCEL of one request among many, a client
 * leaving with many held, service names that go idle, the number of
 * services, and size limits on REGISTER. Raw ZeroMQ DEALERs play the
 * workers and clients, so nothing client-side decides the outcome; every
 * case asserts on the broker's own figures (stats, services, workers).
 */
#include "codec.h"
#include "harness.h"
#include "test.h"
#include "util.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

static void *s_ctx;

/* RSS says nothing under ASan: freed memory waits in its quarantine. */
#if defined(__SANITIZE_ADDRESS__)
#define S_RSS_BOUND(growth_kb, max_kb) ((void)(growth_kb), (void)(max_kb))
#else
#define S_RSS_BOUND(growth_kb, max_kb) CHECK_TRUE((growth_kb) < (max_kb))
#endif

static void *s_dealer(int port)
{
    if (!s_ctx)
        s_ctx = zmq_ctx_new();
    void *s = zmq_socket(s_ctx, ZMQ_DEALER);
    int linger = 0, hwm = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    th_secure(s); /* CURVE under AB_TEST_AUTH=curve */
    REQUIRE(zmq_connect(s, th_ep(port)) == 0);
    return s;
}

static void s_send(void *sock, const ab_header_t *h, const void *pl, size_t len)
{
    uint8_t stack[512];
    size_t n;
    uint8_t *buf = ab_header_encode_buf(h, stack, sizeof stack, &n);
    REQUIRE(buf != NULL);
    zmq_send(sock, buf, n, pl ? ZMQ_SNDMORE : 0);
    if (pl)
        zmq_send(sock, pl, len, 0);
    if (buf != stack)
        free(buf);
}

/* Receives one message within MS into *H (payload dropped). 0 or -1. */
static int s_recv(void *sock, ab_header_t *h, uint8_t *hbuf, size_t cap, int ms)
{
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, ms) <= 0)
        return -1;
    int n = zmq_recv(sock, hbuf, cap, 0), more = 0;
    size_t sz = sizeof more;
    zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz);
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        zmq_msg_recv(&m, sock, 0);
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
    if (n < 0 || (size_t)n > cap)
        return -1;
    return ab_header_parse(hbuf, (size_t)n, h) == AB_OK ? 0 : -1;
}

/* Waits for a message of KIND answering CORR on SOCK (others skipped). */
static int s_expect(void *sock, uint32_t kind, uint64_t corr, ab_header_t *h, int ms)
{
    uint8_t buf[4096];
    int64_t end = ab_now_ms() + ms;
    while (ab_now_ms() < end)
        if (s_recv(sock, h, buf, sizeof buf, 100) == 0 && h->kind == kind &&
            h->correlation_id == corr)
            return 0;
    return -1;
}

/* --- a raw worker on its own thread: records what it is sent, heartbeats --- */
typedef struct {
    int port;
    const char *service;
    uint32_t capacity;
    pthread_mutex_t mu;
    uint64_t reqs[16384]; /* broker ids of the REQUESTs received */
    int nreq;
    uint64_t cancels[16384]; /* correlation ids of the CANCELs received */
    uint32_t cancel_codes[16384];
    int ncancel;
    atomic_int answer_cancels, answer_requests, stop; /* set by the main thread */
    pthread_t th;
} s_worker_t;

static void *s_worker_main(void *arg)
{
    s_worker_t *w = arg;
    void *sock = s_dealer(w->port);
    ab_header_t h = ab_header_init(AB_KIND_REGISTER);
    h.id = 1;
    h.target = ab_view_of(w->service);
    h.credit = w->capacity;
    s_send(sock, &h, NULL, 0);
    int64_t next_hb = 0;
    uint8_t buf[4096];
    while (!atomic_load(&w->stop)) {
        ab_header_t in;
        if (s_recv(sock, &in, buf, sizeof buf, 50) == 0) {
            pthread_mutex_lock(&w->mu);
            if (in.kind == AB_KIND_REQUEST && w->nreq < 16384)
                w->reqs[w->nreq++] = in.id;
            if (in.kind == AB_KIND_CANCEL && w->ncancel < 16384) {
                w->cancel_codes[w->ncancel] = in.error_code;
                w->cancels[w->ncancel++] = in.correlation_id;
            }
            pthread_mutex_unlock(&w->mu);
            ab_header_t out = ab_header_init(AB_KIND_ERROR);
            out.correlation_id = in.kind == AB_KIND_CANCEL ? in.correlation_id : in.id;
            if (in.kind == AB_KIND_CANCEL && atomic_load(&w->answer_cancels)) {
                out.error_code = AB_ERR_CANCELLED;
                out.error_text = ab_view_of("cancelled");
                s_send(sock, &out, NULL, 0);
            } else if (in.kind == AB_KIND_REQUEST && atomic_load(&w->answer_requests)) {
                out.kind = AB_KIND_REPLY;
                s_send(sock, &out, "ok", 2);
            }
        }
        if (ab_now_ms() >= next_hb) { /* or health.c would suspect it */
            ab_header_t hb = ab_header_init(AB_KIND_HEARTBEAT);
            s_send(sock, &hb, NULL, 0);
            next_hb = ab_now_ms() + 200;
        }
    }
    zmq_close(sock);
    return NULL;
}

static void s_worker_start(s_worker_t *w, int port, const char *service, uint32_t capacity)
{
    memset(w, 0, sizeof *w);
    w->port = port;
    w->service = service;
    w->capacity = capacity;
    pthread_mutex_init(&w->mu, NULL);
    REQUIRE(pthread_create(&w->th, NULL, s_worker_main, w) == 0);
}

static void s_worker_stop(s_worker_t *w)
{
    atomic_store(&w->stop, 1);
    pthread_join(w->th, NULL);
    pthread_mutex_destroy(&w->mu);
}

static int s_count(s_worker_t *w, int cancels)
{
    pthread_mutex_lock(&w->mu);
    int n = cancels ? w->ncancel : w->nreq;
    pthread_mutex_unlock(&w->mu);
    return n;
}

/* Waits until the worker got N requests (or N cancels). */
static int s_wait_count(s_worker_t *w, int cancels, int n, int ms)
{
    for (int waited = 0; waited <= ms; waited += 20) {
        if (s_count(w, cancels) >= n)
            return 0;
        th_sleep_ms(20);
    }
    return -1;
}

/* The stats field chosen by FIELD once it equals WANT, or its last value. */
typedef uint64_t (*s_field_fn)(const Agentbus__Stats *st);
static uint64_t s_pending(const Agentbus__Stats *st) { return st->pending; }
static uint64_t s_services(const Agentbus__Stats *st) { return st->service_count; }

static uint64_t s_wait_stat(ab_client_t *c, s_field_fn field, uint64_t want, int ms)
{
    uint64_t v = UINT64_MAX;
    for (int waited = 0; waited <= ms; waited += 50) {
        Agentbus__Stats *st = th_stats(c);
        if (st) {
            v = field(st);
            agentbus__stats__free_unpacked(st, NULL);
            if (v == want)
                return v;
        }
        th_sleep_ms(50);
    }
    return v;
}

static void s_requests(void *sock, const char *service, uint64_t first, unsigned n,
                       uint32_t timeout_ms)
{
    ab_header_t h = ab_header_init(AB_KIND_REQUEST);
    h.target = ab_view_of(service);
    h.timeout_ms = timeout_ms;
    for (unsigned i = 0; i < n; i++) {
        h.id = first + i;
        s_send(sock, &h, "x", 1);
    }
}

static void s_cancel(void *sock, uint64_t id)
{
    ab_header_t h = ab_header_init(AB_KIND_CANCEL);
    h.id = 1000000 + id;
    h.correlation_id = id;
    s_send(sock, &h, NULL, 0);
}

/* --- CANCEL ---------------------------------------------------------------------- */
/* One request among 50 cancelled, queued and dispatched: the broker drops
 * the queued one, tells the worker to stop the dispatched one, answers the
 * client nothing for either, counts both, and ignores ids the client never
 * used or another client's CANCEL of the same id. */
static void s_cancel_one(void)
{
    int port = th_free_port();
    th_broker(port, "--liveness", "100", NULL);
    ab_client_t *ctl = th_client(port);
    s_worker_t w;
    s_worker_start(&w, port, "slow", 2);
    REQUIRE(th_wait_workers(ctl, "slow", 1, 10000) == 0);
    void *cl = s_dealer(port), *other = s_dealer(port);
    s_requests(cl, "slow", 1, 50, 60000);
    CHECK_U64(s_wait_stat(ctl, s_pending, 50, 10000), 50);
    REQUIRE(s_wait_count(&w, 0, 2, 10000) == 0); /* ids 1 and 2 went to the worker */
    s_cancel(cl, 30); /* queued */
    CHECK_U64(s_wait_stat(ctl, s_pending, 49, 10000), 49);
    s_cancel(cl, 999);   /* never used */
    s_cancel(other, 31); /* not its request */
    s_cancel(cl, 1);     /* dispatched: the worker is told */
    CHECK_EQ(s_wait_count(&w, 1, 1, 10000), 0);
    pthread_mutex_lock(&w.mu);
    uint64_t first_bid = w.reqs[0], cancelled_bid = w.cancels[0];
    uint32_t code = w.cancel_codes[0];
    pthread_mutex_unlock(&w.mu);
    CHECK_U64(cancelled_bid, first_bid);
    CHECK_EQ(code, AB_ERR_CANCELLED);
    Agentbus__Stats *st = th_stats(ctl);
    REQUIRE(st != NULL);
    CHECK_U64(st->cancelled, 2);
    CHECK_U64(st->pending, 49); /* the worker holds its slot until it answers */
    agentbus__stats__free_unpacked(st, NULL);
    /* The client heard nothing about ids 1 and 30. */
    ab_header_t h;
    uint8_t buf[4096];
    int heard = 0;
    while (s_recv(cl, &h, buf, sizeof buf, 300) == 0)
        heard += h.correlation_id == 1 || h.correlation_id == 30;
    CHECK_EQ(heard, 0);
    s_worker_stop(&w);
    zmq_close(cl);
    zmq_close(other);
    ab_client_destroy(&ctl);
}

/* The CANCELLED answer of a worker to a cancelled request frees its slot,
 * and nothing reaches the client. */
static void s_cancel_slot(void)
{
    int port = th_free_port();
    th_broker(port, "--liveness", "100", NULL);
    ab_client_t *ctl = th_client(port);
    s_worker_t w;
    s_worker_start(&w, port, "slow", 1);
    atomic_store(&w.answer_cancels, 1);
    REQUIRE(th_wait_workers(ctl, "slow", 1, 10000) == 0);
    void *cl = s_dealer(port);
    s_requests(cl, "slow", 1, 20, 60000);
    CHECK_U64(s_wait_stat(ctl, s_pending, 20, 10000), 20);
    REQUIRE(s_wait_count(&w, 0, 1, 10000) == 0);
    s_cancel(cl, 1); /* the one the worker holds: its answer frees the slot */
    CHECK_EQ(s_wait_count(&w, 0, 2, 10000), 0); /* so id 2 is dispatched */
    CHECK_U64(s_wait_stat(ctl, s_pending, 19, 10000), 19);
    ab_header_t h;
    uint8_t buf[4096];
    int heard = 0;
    while (s_recv(cl, &h, buf, sizeof buf, 300) == 0)
        heard += h.correlation_id == 1;
    CHECK_EQ(heard, 0);
    s_worker_stop(&w);
    zmq_close(cl);
    ab_client_destroy(&ctl);
}

/* A client leaving with 5000 requests held: every one is freed, the
 * worker told to stop those it holds, and its slots serve the next client. */
static void s_leave_many(void)
{
    int port = th_free_port();
    th_broker(port, "--liveness", "100", NULL);
    ab_client_t *ctl = th_client(port);
    s_worker_t w;
    s_worker_start(&w, port, "slow", 10);
    atomic_store(&w.answer_cancels, 1); /* at once: each answer frees its slot */
    REQUIRE(th_wait_workers(ctl, "slow", 1, 10000) == 0);
    void *cl = s_dealer(port);
    s_requests(cl, "slow", 1, 5000, 60000);
    CHECK_U64(s_wait_stat(ctl, s_pending, 5000, 20000), 5000);
    REQUIRE(s_wait_count(&w, 0, 10, 10000) == 0);
    ab_header_t bye = ab_header_init(AB_KIND_BYE);
    s_send(cl, &bye, NULL, 0);
    /* Queued ones go at once; the 10 the worker holds when it answers
     * their CANCEL. */
    CHECK_U64(s_wait_stat(ctl, s_pending, 0, 10000), 0);
    CHECK_EQ(s_wait_count(&w, 1, 10, 10000), 0);
    Agentbus__Stats *st = th_stats(ctl);
    REQUIRE(st != NULL);
    CHECK_U64(st->cancelled_on_leave, 5000);
    CHECK_U64(st->cancelled, 0);
    agentbus__stats__free_unpacked(st, NULL);
    /* Its slots are free: a new client is served at once. */
    atomic_store(&w.answer_requests, 1);
    void *c2 = s_dealer(port);
    s_requests(c2, "slow", 1, 5, 10000);
    ab_header_t h;
    uint8_t buf[4096];
    unsigned got = 0; /* one bit per id: any order */
    for (int64_t end = ab_now_ms() + 10000; got != 0x3e && ab_now_ms() < end;)
        if (s_recv(c2, &h, buf, sizeof buf, 100) == 0 && h.kind == AB_KIND_REPLY &&
            h.correlation_id >= 1 && h.correlation_id <= 5)
            got |= 1u << h.correlation_id;
    CHECK_EQ(got, 0x3e);
    Agentbus__WorkerList *wl = th_workers(ctl);
    REQUIRE(wl != NULL);
    for (size_t i = 0; i < wl->n_workers; i++)
        CHECK_EQ(wl->workers[i]->in_flight, 0);
    agentbus__worker_list__free_unpacked(wl, NULL);
    s_worker_stop(&w);
    zmq_close(cl);
    zmq_close(c2);
    ab_client_destroy(&ctl);
}

/* Clients that leave while a worker holds their requests and never
 * answers the CANCELs: the requests stay the worker's (pending, its slots
 * taken) but nothing of the clients does: `clients` is back where it was
 * at once. Before, each request kept its departed client's record until
 * the worker answered, so a hung worker kept one record per client that
 * ever left. When the worker goes, so do the requests. */
static uint64_t s_clients(const Agentbus__Stats *st) { return st->clients; }

static void s_leave_orphans(void)
{
    enum { N = 20 };
    int port = th_free_port();
    th_broker(port, NULL);
    ab_client_t *ctl = th_client(port);
    s_worker_t w;
    s_worker_start(&w, port, "hung", 64);
    REQUIRE(th_wait_workers(ctl, "hung", 1, 10000) == 0);
    Agentbus__Stats *st = th_stats(ctl);
    REQUIRE(st != NULL);
    uint64_t base = st->clients;
    agentbus__stats__free_unpacked(st, NULL);
    void *cl[N];
    for (int i = 0; i < N; i++) {
        cl[i] = s_dealer(port);
        s_requests(cl[i], "hung", 1, 1, 60000);
    }
    REQUIRE(s_wait_count(&w, 0, N, 10000) == 0);
    CHECK_U64(s_wait_stat(ctl, s_clients, base + N, 10000), base + N);
    ab_header_t bye = ab_header_init(AB_KIND_BYE);
    for (int i = 0; i < N; i++)
        s_send(cl[i], &bye, NULL, 0);
    CHECK_EQ(s_wait_count(&w, 1, N, 10000), 0); /* each told to stop; none answers */
    CHECK_U64(s_wait_stat(ctl, s_clients, base, 10000), base);
    CHECK_U64(s_wait_stat(ctl, s_pending, N, 10000), N);
    st = th_stats(ctl);
    REQUIRE(st != NULL);
    CHECK_U64(st->cancelled_on_leave, N);
    agentbus__stats__free_unpacked(st, NULL);
    s_worker_stop(&w); /* its connection closes: what it held is freed */
    CHECK_U64(s_wait_stat(ctl, s_pending, 0, 20000), 0);
    CHECK_U64(s_wait_stat(ctl, s_clients, base, 10000), base);
    for (int i = 0; i < N; i++)
        zmq_close(cl[i]);
    ab_client_destroy(&ctl);
}

/* --- services ----------------------------------------------------------------------- */
/* Names from `brokerctl --json services`: their count, and whether NAME is
 * one of them. */
static int s_listed(int port, const char *name, int *has)
{
    char cmd[512];
    static char out[1 << 20];
    snprintf(cmd, sizeof cmd, "%s --broker %s --json services", th_bin("brokerctl"), th_ep(port));
    if (th_run(cmd, out, sizeof out) != 0)
        return -1;
    json_error_t err;
    json_t *j = json_loads(out, 0, &err);
    if (!j || !json_is_array(j)) {
        json_decref(j);
        return -1;
    }
    *has = 0;
    for (size_t i = 0; i < json_array_size(j); i++) {
        const char *n = json_string_value(json_object_get(json_array_get(j, i), "name"));
        *has |= n && strcmp(n, name) == 0;
    }
    int n = (int)json_array_size(j);
    json_decref(j);
    return n;
}

static void s_register(void *sock, const char *service, uint64_t id, const void *pl, size_t len)
{
    ab_header_t h = ab_header_init(AB_KIND_REGISTER);
    h.id = id;
    h.target = ab_view_of(service);
    h.credit = 1;
    s_send(sock, &h, pl, len);
}

/* One connection registers 2000 names per round (each REGISTER moves it
 * to the next name): the names it left go after service-idle-ms, and five
 * rounds cost no more memory than one. A request naming an idle service
 * keeps it until the request is answered. */
static void s_services_idle(void)
{
    int port = th_free_port();
    pid_t broker = th_broker(port, "--service-idle-ms", "300", "--startup-grace-ms", "0",
                             "--liveness", "100", NULL);
    ab_client_t *ctl = th_client(port);
    void *reg = s_dealer(port);
    char name[64];
    long rss1 = 0;
    for (int round = 0; round < 5; round++) {
        for (int i = 0; i < 2000; i++) {
            snprintf(name, sizeof name, "name-%d-%d", round, i);
            s_register(reg, name, (uint64_t)(round * 2000 + i + 1), NULL, 0);
        }
        ab_header_t h;
        snprintf(name, sizeof name, "name-%d-1999", round);
        CHECK_EQ(s_expect(reg, AB_KIND_REGISTER, (uint64_t)(round * 2000 + 2000), &h, 10000), 0);
        /* Only the name it serves now is left. */
        CHECK_U64(s_wait_stat(ctl, s_services, 1, 15000), 1);
        if (round == 0)
            rss1 = th_rss_kb(broker);
    }
    long rss5 = th_rss_kb(broker);
    fprintf(stderr, "broker RSS after round 1: %ld KiB, after round 5: %ld KiB\n", rss1, rss5);
    S_RSS_BOUND(rss5 - rss1, 8 * 1024); /* 8000 services kept were ~75 MB before */
    int has = 0;
    CHECK_EQ(s_listed(port, "name-4-1999", &has), 1);
    CHECK_EQ(has, 1);
    Agentbus__Stats *st = th_stats(ctl);
    REQUIRE(st != NULL);
    CHECK_TRUE(st->services_expired >= 9999);
    agentbus__stats__free_unpacked(st, NULL);

    /* A request held for it keeps a service with no worker: sent first
     * (the worker takes it and never answers), then the worker leaves and
     * the request goes back to the queue until its deadline. */
    void *cl = s_dealer(port);
    s_requests(cl, "name-4-1999", 1, 1, 8000);
    CHECK_U64(s_wait_stat(ctl, s_pending, 1, 10000), 1);
    ab_header_t bye = ab_header_init(AB_KIND_BYE);
    s_send(reg, &bye, NULL, 0);
    th_sleep_ms(1000); /* > service-idle-ms */
    CHECK_EQ(s_listed(port, "name-4-1999", &has), 1);
    CHECK_EQ(has, 1);
    ab_header_t h;
    CHECK_EQ(s_expect(cl, AB_KIND_ERROR, 1, &h, 20000), 0);
    CHECK_EQ(h.error_code, AB_ERR_DEADLINE);
    CHECK_U64(s_wait_stat(ctl, s_services, 0, 10000), 0);
    /* Now the name is unknown. */
    s_requests(cl, "name-4-1999", 2, 1, 4000);
    CHECK_EQ(s_expect(cl, AB_KIND_ERROR, 2, &h, 10000), 0);
    CHECK_EQ(h.error_code, AB_ERR_NO_SERVICE);
    zmq_close(cl);
    zmq_close(reg);
    ab_client_destroy(&ctl);
}

/* max-services: idle names make room for new ones; when every service has
 * a worker, a new name is refused BUSY and counted. */
static void s_services_max(void)
{
    int port = th_free_port();
    th_broker(port, "--max-services", "20", "--startup-grace-ms", "0", "--liveness", "100",
              NULL);
    ab_client_t *ctl = th_client(port);
    void *reg = s_dealer(port), *w[20];
    char name[64];
    for (int i = 0; i < 100; i++) { /* one connection: 99 names left idle */
        snprintf(name, sizeof name, "idle-%d", i);
        s_register(reg, name, (uint64_t)i + 1, NULL, 0);
    }
    ab_header_t h;
    CHECK_EQ(s_expect(reg, AB_KIND_REGISTER, 100, &h, 10000), 0);
    Agentbus__Stats *st = th_stats(ctl);
    REQUIRE(st != NULL);
    CHECK_TRUE(st->service_count <= 20);
    CHECK_TRUE(st->services_expired >= 80);
    CHECK_U64(st->services_refused, 0);
    agentbus__stats__free_unpacked(st, NULL);
    /* REG still serves idle-99: 19 more live services fill the 20. */
    for (int i = 0; i < 19; i++) {
        w[i] = s_dealer(port);
        snprintf(name, sizeof name, "busy-%d", i);
        s_register(w[i], name, 1, NULL, 0);
        CHECK_EQ(s_expect(w[i], AB_KIND_REGISTER, 1, &h, 10000), 0);
    }
    void *late = s_dealer(port);
    s_register(late, "one-too-many", 7, NULL, 0);
    CHECK_EQ(s_expect(late, AB_KIND_ERROR, 7, &h, 10000), 0);
    CHECK_EQ(h.error_code, AB_ERR_BUSY);
    st = th_stats(ctl);
    REQUIRE(st != NULL);
    CHECK_U64(st->service_count, 20);
    CHECK_U64(st->services_refused, 1);
    CHECK_U64(st->registers_refused, 1);
    agentbus__stats__free_unpacked(st, NULL);
    int has = 1;
    CHECK_EQ(s_listed(port, "one-too-many", &has), 20);
    CHECK_EQ(has, 0);
    for (int i = 0; i < 19; i++)
        zmq_close(w[i]);
    zmq_close(late);
    zmq_close(reg);
    ab_client_destroy(&ctl);
}

/* --- REGISTER size limits -------------------------------------------------------------- */
static uint8_t *s_pack_register(const Agentbus__Register *m, size_t *len)
{
    *len = agentbus__register__get_packed_size(m);
    uint8_t *buf = malloc(*len ? *len : 1);
    REQUIRE(buf != NULL);
    agentbus__register__pack(m, buf);
    return buf;
}

/* Sends REGISTER with M on a fresh connection; the answer's kind and code. */
static uint32_t s_try_register(int port, const Agentbus__Register *m, uint32_t *code)
{
    size_t len;
    uint8_t *pl = s_pack_register(m, &len);
    void *sock = s_dealer(port);
    s_register(sock, m->service, 5, pl, len);
    free(pl);
    ab_header_t h;
    uint8_t buf[4096];
    uint32_t kind = 0;
    *code = 0;
    int64_t end = ab_now_ms() + 10000;
    while (!kind && ab_now_ms() < end)
        if (s_recv(sock, &h, buf, sizeof buf, 100) == 0 && h.correlation_id == 5) {
            kind = h.kind;
            *code = h.error_code;
        }
    zmq_close(sock);
    return kind;
}

/* Oversized REGISTERs (the whole payload, label count, label bytes, model
 * count, inference strings) are refused TOO_LARGE and counted; nothing is
 * kept: no worker, no service, and RSS does not grow with 20 connections
 * sending 4 MB inference states. A REGISTER within the limits is taken. */
static void s_register_limits(void)
{
    int port = th_free_port();
    pid_t broker = th_broker(port, NULL);
    ab_client_t *ctl = th_client(port);
    uint32_t code;
    Agentbus__Register m;
    agentbus__register__init(&m);
    m.service = "big";
    m.capacity = 1;

    /* 100 labels (limit 64) */
    Agentbus__Register__LabelsEntry lab[100], *labp[100];
    char keys[100][16];
    for (int i = 0; i < 100; i++) {
        agentbus__register__labels_entry__init(&lab[i]);
        snprintf(keys[i], sizeof keys[i], "k%d", i);
        lab[i].key = keys[i];
        lab[i].value = "v";
        labp[i] = &lab[i];
    }
    m.labels = labp;
    m.n_labels = 100;
    CHECK_EQ(s_try_register(port, &m, &code), AB_KIND_ERROR);
    CHECK_EQ(code, AB_ERR_TOO_LARGE);
    /* a 2 KB label value (limit 1 KB) */
    char *longv = malloc(2049);
    REQUIRE(longv != NULL);
    memset(longv, 'v', 2048);
    longv[2048] = '\0';
    lab[0].value = longv;
    m.n_labels = 1;
    CHECK_EQ(s_try_register(port, &m, &code), AB_KIND_ERROR);
    CHECK_EQ(code, AB_ERR_TOO_LARGE);
    lab[0].value = "v";
    /* 5000 empty models (limit 1024), 20 KB on the wire */
    Agentbus__InferenceState inf;
    agentbus__inference_state__init(&inf);
    static Agentbus__ModelInfo mi[5000];
    static Agentbus__ModelInfo *mip[5000];
    for (int i = 0; i < 5000; i++) {
        agentbus__model_info__init(&mi[i]);
        mip[i] = &mi[i];
    }
    inf.models = mip;
    inf.n_models = 5000;
    m.inference = &inf;
    CHECK_EQ(s_try_register(port, &m, &code), AB_KIND_ERROR);
    CHECK_EQ(code, AB_ERR_TOO_LARGE);
    /* a 4 MB inference state (one string), from 20 connections */
    size_t big = 4u << 20;
    char *url = malloc(big + 1);
    REQUIRE(url != NULL);
    memset(url, 'u', big);
    url[big] = '\0';
    inf.n_models = 0;
    inf.backend_url = url;
    long rss0 = th_rss_kb(broker);
    for (int i = 0; i < 20; i++) {
        CHECK_EQ(s_try_register(port, &m, &code), AB_KIND_ERROR);
        CHECK_EQ(code, AB_ERR_TOO_LARGE);
    }
    long rss1 = th_rss_kb(broker);
    fprintf(stderr, "broker RSS before 20 x 4 MB REGISTERs: %ld KiB, after: %ld KiB\n", rss0,
            rss1);
    S_RSS_BOUND(rss1 - rss0, 40 * 1024); /* 80 MB were kept before */
    free(url);
    Agentbus__Stats *st = th_stats(ctl);
    REQUIRE(st != NULL);
    CHECK_U64(st->registers_refused, 23);
    CHECK_EQ(th_stat_error(st, "TOO_LARGE"), 23);
    CHECK_EQ(st->workers, 0);
    agentbus__stats__free_unpacked(st, NULL);
    Agentbus__WorkerList *wl = th_workers(ctl);
    REQUIRE(wl != NULL);
    CHECK_EQ(wl->n_workers, 0);
    agentbus__worker_list__free_unpacked(wl, NULL);
    int has = 1;
    CHECK_EQ(s_listed(port, "big", &has), 0);

    /* Within the limits: 3 labels, 2 models. */
    inf.backend_url = "http://127.0.0.1:11434";
    inf.n_models = 2;
    mi[0].name = "llama3:8b";
    mi[1].name = "qwen2:7b";
    m.n_labels = 3;
    void *sock = s_dealer(port);
    size_t len;
    uint8_t *pl = s_pack_register(&m, &len);
    s_register(sock, "big", 9, pl, len);
    free(pl);
    ab_header_t h;
    CHECK_EQ(s_expect(sock, AB_KIND_REGISTER, 9, &h, 10000), 0);
    wl = th_workers(ctl);
    REQUIRE(wl != NULL);
    REQUIRE(wl->n_workers == 1);
    CHECK_EQ(wl->workers[0]->n_labels, 3);
    REQUIRE(wl->workers[0]->inference != NULL);
    CHECK_EQ(wl->workers[0]->inference->n_models, 2);
    agentbus__worker_list__free_unpacked(wl, NULL);
    free(longv);
    zmq_close(sock);
    ab_client_destroy(&ctl);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"cancel_one", s_cancel_one},         {"cancel_slot", s_cancel_slot},
        {"leave_many", s_leave_many},         {"services_idle", s_services_idle},
        {"services_max", s_services_max},     {"register_limits", s_register_limits},
        {"leave_orphans", s_leave_orphans},
    };
    int rc = th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
    if (s_ctx)
        zmq_ctx_term(s_ctx);
    return rc;
}
