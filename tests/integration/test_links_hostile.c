/*
 * test_links_hostile.c - a peer broker that plays tricks with its link
 * records (issue 15, docs/links.md): raw ZeroMQ sockets speak LINK by
 * hand to a real broker without auth (any connection may open a link
 * then), as the broker it dials and as brokers that dial it.
 */
#include "harness.h"
#include "test.h"
#include "util.h"
#include "agentbus.pb-c.h"
#include "codec.h"
#include "compress.h"
#include "rawpeer.h"
#include "linktest.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

enum { S_HELLO = 1, S_WELCOME = 2, S_HEARTBEAT = 3 };

/* Sends LinkMsg M on S, to routing id RID (RLEN bytes) when S is a ROUTER. */
static void s_link_msg(void *s, const void *rid, size_t rlen, const Agentbus__LinkMsg *m)
{
    uint8_t body[256], hb[64];
    size_t n = agentbus__link_msg__get_packed_size(m);
    REQUIRE(n <= sizeof body);
    agentbus__link_msg__pack(m, body);
    ab_header_t h = ab_header_init(AB_KIND_LINK);
    size_t hl = ab_header_encode(&h, hb, sizeof hb);
    REQUIRE(hl > 0);
    if (rid)
        REQUIRE(zmq_send(s, rid, rlen, ZMQ_SNDMORE) == (int)rlen);
    REQUIRE(zmq_send(s, hb, hl, ZMQ_SNDMORE) == (int)hl);
    REQUIRE(zmq_send(s, body, n, 0) == (int)n);
}

/* Sends LinkMsg TYPE from broker NAME (SESSION) on S, to routing id RID
 * (RLEN bytes) when S is a ROUTER. */
static void s_link_send(void *s, const void *rid, size_t rlen, int type, const char *name,
                        uint64_t session)
{
    Agentbus__LinkMsg m = AGENTBUS__LINK_MSG__INIT;
    m.type = (uint32_t)type;
    m.broker = (char *)name;
    m.session = session;
    m.sent_us = type == S_HEARTBEAT ? (uint64_t)ab_now_us() : 0;
    s_link_msg(s, rid, rlen, &m);
}

/* Waits up to TIMEOUT_MS on S (a ROUTER when RID is not NULL: the sender's
 * id into RID, *RLEN) for a LinkMsg of TYPE; others are skipped. 1 or 0. */
static int s_link_wait(void *s, int type, uint8_t *rid, size_t *rlen, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
    while (ab_now_ms() < end) {
        if (zmq_poll(&it, 1, 20) != 1)
            continue;
        zmq_msg_t f[3];
        int n = 0;
        do
            zmq_msg_init(&f[n]);
        while (zmq_msg_recv(&f[n], s, 0) >= 0 && zmq_msg_more(&f[n]) && ++n < 3);
        int nf = n < 3 ? n + 1 : 3, hi = rid ? 1 : 0, found = 0;
        ab_header_t h;
        if (nf == hi + 2 &&
            ab_header_parse(zmq_msg_data(&f[hi]), zmq_msg_size(&f[hi]), &h) == AB_OK &&
            h.kind == AB_KIND_LINK) {
            Agentbus__LinkMsg *m = agentbus__link_msg__unpack(NULL, zmq_msg_size(&f[hi + 1]),
                                                              zmq_msg_data(&f[hi + 1]));
            found = m && (int)m->type == type;
            if (found && rid) {
                *rlen = zmq_msg_size(&f[0]);
                memcpy(rid, zmq_msg_data(&f[0]), *rlen);
            }
            if (m)
                agentbus__link_msg__free_unpacked(m, NULL);
        }
        for (int i = 0; i < nf; i++)
            zmq_msg_close(&f[i]);
        if (found)
            return 1;
    }
    return 0;
}

static void *s_socket(void *ctx, int type)
{
    void *s = zmq_socket(ctx, type);
    int zero = 0;
    REQUIRE(s != NULL);
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    return s;
}

/* Broker A (port pa) dials broker "B" at px, played by router R, which
 * answers its HELLO as B; D1 dials A as B too (A's record for B holds both
 * connections), D2 says HELLO as C. */
typedef struct {
    int pa, px;
    pid_t apid;
    void *ctx, *r, *d1, *d2;
    uint8_t rid[256];
    size_t rlen;
} s_two_t;

static void s_two_start(s_two_t *t)
{
    memset(t, 0, sizeof *t);
    t->pa = th_free_port();
    t->px = th_free_port();
    char peer[64];
    snprintf(peer, sizeof peer, "tcp://127.0.0.1:%d", t->px);
    t->ctx = zmq_ctx_new();
    t->r = s_socket(t->ctx, ZMQ_ROUTER);
    REQUIRE(zmq_bind(t->r, th_ep(t->px)) == 0);
    t->apid = th_broker(t->pa, "--name", "A", "--peer", peer, "--link-heartbeat-ms", "1000",
                        NULL);
    REQUIRE(s_link_wait(t->r, S_HELLO, t->rid, &t->rlen, 20000));
    s_link_send(t->r, t->rid, t->rlen, S_WELCOME, "B", 1);
    t->d1 = s_socket(t->ctx, ZMQ_DEALER);
    t->d2 = s_socket(t->ctx, ZMQ_DEALER);
    REQUIRE(zmq_connect(t->d1, th_ep(t->pa)) == 0 && zmq_connect(t->d2, th_ep(t->pa)) == 0);
    s_link_send(t->d1, NULL, 0, S_HELLO, "B", 1);
    REQUIRE(s_link_wait(t->d1, S_WELCOME, NULL, NULL, 20000));
    s_link_send(t->d2, NULL, 0, S_HELLO, "C", 7);
    REQUIRE(s_link_wait(t->d2, S_WELCOME, NULL, NULL, 20000));
}

static void s_two_end(s_two_t *t)
{
    zmq_close(t->r);
    zmq_close(t->d1);
    zmq_close(t->d2);
    zmq_ctx_term(t->ctx);
}

/* The broker A dials plays broker B: it answers A's HELLO as B, and also
 * dials A as B (A's record for B holds both connections). A third
 * connection says HELLO as C. Then B closes the connection A dialed (A's
 * link to B goes down: it used that one; B's own stays), and the endpoint
 * answers A's next HELLO as C. A moved its dialed connection into C's
 * record and freed B's, whose accepted connection still named it: the
 * next message on it read the freed record (heap-use-after-free). Now the
 * accepted connection goes with the record, and A lives on. */
static void s_renamed_dialed(void)
{
    s_two_t t;
    s_two_start(&t);
    zmq_close(t.r); /* the connection A dialed is gone: A's link to B goes down */
    t.r = s_socket(t.ctx, ZMQ_ROUTER);
    int64_t end = ab_now_ms() + 10000;
    while (zmq_bind(t.r, th_ep(t.px)) != 0 && ab_now_ms() < end)
        th_sleep_ms(20);
    REQUIRE(s_link_wait(t.r, S_HELLO, t.rid, &t.rlen, 20000)); /* A dials again */
    s_link_send(t.r, t.rid, t.rlen, S_WELCOME, "C", 7);
    th_sleep_ms(300);
    for (int i = 0; i < 5; i++) { /* B's own connection speaks on */
        s_link_send(t.d1, NULL, 0, S_HEARTBEAT, "B", 1);
        s_link_send(t.d2, NULL, 0, S_HEARTBEAT, "C", 7);
        th_sleep_ms(100);
    }
    ab_client_t *c = th_client(t.pa);
    Agentbus__Stats *st = th_stats(c);
    CHECK_TRUE(st != NULL);
    if (st)
        agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&c);
    CHECK_EQ(th_alive(t.apid), 1);
    s_two_end(&t);
}

/* How many links C's broker lists under NAME (brokerctl peers). */
static int s_links_named(ab_client_t *c, const char *name)
{
    void *buf = NULL;
    size_t len = 0;
    if (ab_client_control(c, "peers", 5000, &buf, &len) != AB_OK)
        return -1;
    Agentbus__PeerList *pl = agentbus__peer_list__unpack(NULL, len, buf);
    ab_free(buf);
    int n = 0;
    for (size_t i = 0; pl && i < pl->n_peers; i++)
        n += !strcmp(pl->peers[i]->name, name);
    if (pl)
        agentbus__peer_list__free_unpacked(pl, NULL);
    return n;
}

/* As renamed_dialed, but A's link to B stays up (on B's own connection)
 * while the endpoint A dialed refuses its connection (DENIED, correlation
 * 0: say HELLO again) and answers the next HELLO as C. A renamed B's
 * record C, with B's own connection still in it: two records named C,
 * one of them speaking for B. Now B's connection goes with B's record and
 * the dialed one joins C's. */
static void s_renamed_up(void)
{
    s_two_t t;
    s_two_start(&t);
    ab_header_t h = ab_header_init(AB_KIND_ERROR);
    h.error_code = AB_ERR_DENIED;
    uint8_t hb[64];
    size_t hl = ab_header_encode(&h, hb, sizeof hb);
    REQUIRE(zmq_send(t.r, t.rid, t.rlen, ZMQ_SNDMORE) == (int)t.rlen);
    REQUIRE(zmq_send(t.r, hb, hl, 0) == (int)hl);
    REQUIRE(s_link_wait(t.r, S_HELLO, t.rid, &t.rlen, 20000)); /* A says HELLO again */
    s_link_send(t.r, t.rid, t.rlen, S_WELCOME, "C", 7);
    s_link_send(t.d1, NULL, 0, S_HEARTBEAT, "B", 1);
    ab_client_t *c = th_client(t.pa);
    int64_t end = ab_now_ms() + 10000;
    while (s_links_named(c, "B") != 0 && ab_now_ms() < end) /* the WELCOME as C taken */
        th_sleep_ms(50);
    CHECK_EQ(s_links_named(c, "B"), 0);
    int named = s_links_named(c, "C");
    printf("renamed_up: %d link(s) named C, %d named B\n", named, s_links_named(c, "B"));
    CHECK_EQ(named, 1);
    CHECK_EQ(th_alive(t.apid), 1);
    ab_client_destroy(&c);
    s_two_end(&t);
}

/* A peer broker C sends A requests whose payloads are lz4 blocks of 4 MiB
 * of zeros (16 KiB each on the wire) for service plain, whose only worker
 * cannot read lz4 (an old one): A decompresses each for it (a link's
 * payload, docs/links.md) and holds the 4 MiB while the worker runs it.
 * What A holds is counted in max-held-bytes (8M here): the bytes it counts
 * cover every request its worker got, and a request that would pass the
 * bound once plain is refused BUSY. A counted the compressed size: the
 * worker got every request, 16 MiB held for 70 KB counted. */
static void s_plain_held(void)
{
    enum { N = 4, SIZE = 4 << 20 };
    int pa = th_free_port();
    th_broker(pa, "--name", "A", "--link-heartbeat-ms", "1000", "--max-held-bytes", "8M",
              "--startup-grace-ms", "0", NULL);
    void *w = rp_raw(pa, NULL, 0);
    rp_register(w, "plain", 16, 0); /* no features: no lz4 */
    void *ctx = zmq_ctx_new();
    void *d = s_socket(ctx, ZMQ_DEALER);
    REQUIRE(zmq_connect(d, th_ep(pa)) == 0);
    s_link_send(d, NULL, 0, S_HELLO, "C", 3);
    REQUIRE(s_link_wait(d, S_WELCOME, NULL, NULL, 20000));
    char *zeros = calloc(1, SIZE);
    void *z = NULL;
    size_t zl = 0;
    REQUIRE(zeros && ab_lz4_compress(zeros, SIZE, 0, &z, &zl) == 1);
    for (int i = 0; i < N; i++) {
        ab_header_t h = ab_header_init(AB_KIND_REQUEST);
        h.id = 100 + (uint64_t)i;
        h.target = ab_view_of("plain");
        h.via = ab_view_of("C");
        h.hops_left = 3;
        h.flags = AB_FLAG_LZ4;
        h.original_size = SIZE;
        h.timeout_ms = 20000;
        uint8_t hb[256];
        size_t hl = ab_header_encode(&h, hb, sizeof hb);
        REQUIRE(zmq_send(d, hb, hl, ZMQ_SNDMORE) == (int)hl);
        REQUIRE(zmq_send(d, z, zl, 0) == (int)zl);
    }
    int got = 0;
    ab_client_t *c = th_client(pa);
    Agentbus__Stats *st = NULL;
    int64_t end = ab_now_ms() + 20000;
    do { /* the worker takes what comes, C's link stays up, until each is placed */
        if (st)
            agentbus__stats__free_unpacked(st, NULL);
        rp_msg_t m;
        while (rp_take(w, &m)) {
            got += m.h.kind == AB_KIND_REQUEST && m.has_body && zmq_msg_size(&m.body) == SIZE;
            rp_close(&m);
        }
        rp_beat(w);
        s_link_send(d, NULL, 0, S_HEARTBEAT, "C", 3);
        th_sleep_ms(100);
        st = th_stats(c);
        REQUIRE(st != NULL);
    } while ((uint64_t)got + st->held_bytes_busy < N && ab_now_ms() < end);
    printf("plain_held: the worker got %d of %d, %llu bytes held counted, %llu BUSY\n", got, N,
           (unsigned long long)st->held_bytes, (unsigned long long)st->held_bytes_busy);
    CHECK_TRUE(got >= 1);
    CHECK_TRUE(st->held_bytes >= (uint64_t)got * SIZE);
    CHECK_TRUE(st->held_bytes <= (8u << 20) + (1u << 20));
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&c);
    free(z);
    free(zeros);
    zmq_close(d);
    zmq_ctx_term(ctx);
    rp_end(&w, 1);
}

/* Sends REQUEST ID for SVC over raw link D, with crossed list VIA. */
static void s_link_request(void *d, uint64_t id, const char *svc, const char *via)
{
    ab_header_t h = ab_header_init(AB_KIND_REQUEST);
    h.id = id;
    h.target = ab_view_of(svc);
    h.via = ab_view_of(via);
    h.hops_left = 3;
    h.timeout_ms = 20000;
    uint8_t hb[2048];
    size_t hl = ab_header_encode(&h, hb, sizeof hb);
    REQUIRE(hl > 0);
    REQUIRE(zmq_send(d, hb, hl, ZMQ_SNDMORE) == (int)hl);
    REQUIRE(zmq_send(d, "p", 1, 0) == 1);
}

/* A's held bytes once its worker on W holds N requests (C's link on D
 * kept up meanwhile); 0 when it never did. */
static uint64_t s_held_at(ab_client_t *c, void *w, void *d, int n)
{
    int got = 0;
    int64_t end = ab_now_ms() + 10000;
    while (got < n && ab_now_ms() < end) {
        rp_msg_t m;
        while (rp_take(w, &m)) {
            got += m.h.kind == AB_KIND_REQUEST;
            rp_close(&m);
        }
        rp_beat(w);
        s_link_send(d, NULL, 0, S_HEARTBEAT, "C", 3);
        th_sleep_ms(20);
    }
    Agentbus__Stats *st = got == n ? th_stats(c) : NULL;
    uint64_t held = st ? st->held_bytes : 0;
    if (st)
        agentbus__stats__free_unpacked(st, NULL);
    return held;
}

/* A request that crossed many brokers keeps its crossed list in a block
 * of its own (past 127 characters): what it holds counts it (max-held-bytes
 * bounds records as well as payloads). Two requests from peer C, alike but
 * for a crossed list of 1 and of 1000 characters: the second counts about
 * 1000 bytes more. They counted the same: a peer's 1000-character lists
 * were outside the bound (a million of them, max-pending, a gigabyte). */
static void s_via_charged(void)
{
    int pa = th_free_port();
    th_broker(pa, "--name", "A", "--link-heartbeat-ms", "1000", "--startup-grace-ms", "0",
              NULL);
    void *w = rp_raw(pa, NULL, 0);
    rp_register(w, "hold", 16, 0); /* takes requests, answers none */
    void *ctx = zmq_ctx_new();
    void *d = s_socket(ctx, ZMQ_DEALER);
    REQUIRE(zmq_connect(d, th_ep(pa)) == 0);
    s_link_send(d, NULL, 0, S_HELLO, "C", 3);
    REQUIRE(s_link_wait(d, S_WELCOME, NULL, NULL, 20000));
    ab_client_t *c = th_client(pa);
    char via[1001];
    for (size_t i = 0; i < sizeof via - 1; i++)
        via[i] = i % 50 == 49 ? ',' : 'v';
    via[sizeof via - 1] = '\0';
    via[0] = 'C';
    via[1] = ',';
    s_link_request(d, 1, "hold", "C");
    uint64_t one = s_held_at(c, w, d, 1);
    s_link_request(d, 2, "hold", via);
    uint64_t two = s_held_at(c, w, d, 1);
    printf("via_charged: held %llu with a short crossed list, %llu with a long one too\n",
           (unsigned long long)one, (unsigned long long)two);
    CHECK_TRUE(one > 0 && two > one);
    CHECK_TRUE(two - one >= one + 900);
    ab_client_destroy(&c);
    zmq_close(d);
    zmq_ctx_term(ctx);
    rp_end(&w, 1);
}

typedef struct {
    int ok, bad, done, deadline;
} s_tally_t;

static void s_tally_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    s_tally_t *t = arg;
    if (!ev->final)
        return;
    t->done++;
    if (ev->status == AB_OK)
        t->ok++;
    else
        t->bad++;
    t->deadline += ev->status == AB_EDEADLINE;
    if (ev->status != AB_OK && t->bad == 1)
        printf("in_full: first error %s\n", ab_status_name(ev->status));
}

/* Raw worker W answers "ok" to every request waiting for it, and beats. */
static void s_serve(void *w)
{
    rp_msg_t m;
    while (rp_take(w, &m)) {
        if (m.h.kind == AB_KIND_REQUEST)
            rp_answer(w, AB_KIND_REPLY, m.h.id, "ok");
        rp_close(&m);
    }
    rp_beat(w);
}

/* 1 once a request from A to service big (served by W) is answered OK,
 * asking again until MS have passed; else 0. */
static int s_until_ok(ab_client_t *a, void *w, int ms)
{
    int64_t end = ab_now_ms() + ms;
    while (ab_now_ms() < end) {
        s_tally_t t = {0};
        REQUIRE(ab_client_request_start(a, "big", "p", 1, &(ab_request_opts_t){.timeout_ms = 2000},
                                        s_tally_cb, &t, NULL) == AB_OK);
        while (!t.done && ab_now_ms() < end) {
            ab_client_poll(a, 10);
            s_serve(w);
        }
        if (t.ok)
            return 1;
        th_sleep_ms(100);
    }
    return 0;
}

/* B dials A (A sends to B on the connection B dialed); A's pipes hold 16
 * messages (--sndhwm 16). B stops for a moment while A forwards it 48
 * requests of 1 MiB: A's sends to it fail (its pipe and the sockets are
 * full). What was lost is taken back: the link goes down, B dials again
 * and A has B's service again; every request is answered before its
 * deadline (by B's worker, or WORKER_LOST after its attempts). A dropped
 * B's remote worker as unreachable while the link stayed up: B's service
 * was gone from A for good (B's directory did not change) and all 48
 * waited for their deadlines. */
static void s_in_full(void)
{
    enum { N = 48, SIZE = 1 << 20 };
    int pa = th_free_port(), pb = th_free_port();
    char peer[64];
    snprintf(peer, sizeof peer, "tcp://127.0.0.1:%d", pa);
    th_broker(pa, "--name", "A", "--link-heartbeat-ms", "1000", "--sndhwm", "16",
              "--peer-out-max-bytes", "256M", NULL);
    pid_t bpid = th_broker(pb, "--name", "B", "--link-heartbeat-ms", "1000", "--peer", peer,
                           NULL);
    void *w = rp_raw(pb, NULL, 0);
    rp_register(w, "big", 64, 0); /* answers "ok" to every request (below) */
    ab_client_t *a = th_client(pa);
    char *data = calloc(1, SIZE);
    REQUIRE(data != NULL);
    REQUIRE(s_until_ok(a, w, 30000)); /* B's service reached A */
    kill(bpid, SIGSTOP);
    s_tally_t t = {0};
    for (int i = 0; i < N; i++)
        REQUIRE(ab_client_request_start(a, "big", data, SIZE,
                                        &(ab_request_opts_t){.timeout_ms = 15000}, s_tally_cb, &t,
                                        NULL) == AB_OK);
    int64_t cont = ab_now_ms() + 1500;
    int64_t end = ab_now_ms() + 25000;
    while (t.done < N && ab_now_ms() < end) {
        if (cont && ab_now_ms() >= cont) {
            kill(bpid, SIGCONT);
            cont = 0;
        }
        ab_client_poll(a, 10);
        s_serve(w);
    }
    if (cont)
        kill(bpid, SIGCONT);
    Agentbus__Stats *st = th_stats(a);
    printf("in_full: %d of %d answered: %d ok, %d errors (%d DEADLINE); A's send failures "
           "%llu\n", t.done, N, t.ok, t.bad, t.deadline,
           st ? (unsigned long long)st->send_failures : 0ull);
    if (st)
        agentbus__stats__free_unpacked(st, NULL);
    CHECK_EQ(t.done, N);
    CHECK_EQ(t.deadline, 0);
    CHECK_EQ(s_until_ok(a, w, 20000), 1); /* B's service is A's again */
    free(data);
    ab_client_destroy(&a);
    rp_end(&w, 1);
}

/* --- a peer broker that does not read ------------------------------------------------ */

/* Sends an INTEREST from broker "B" on S (to RID when S is a ROUTER): its
 * subscribers hold "t.". */
static void s_interest(void *s, const void *rid, size_t rlen)
{
    Agentbus__LinkMsg m = AGENTBUS__LINK_MSG__INIT;
    char *topics[] = {"t."};
    m.type = 6;
    m.broker = "B";
    m.session = 1;
    m.n_topics = 1;
    m.topics = topics;
    s_link_msg(s, rid, rlen, &m);
}

/* Sends REQUEST ID for "echo" of SIZE bytes on S (to RID when S is a
 * ROUTER), as a peer broker forwards one. */
static void s_link_echo(void *s, const void *rid, size_t rlen, uint64_t id, const void *data,
                        size_t size)
{
    ab_header_t h = ab_header_init(AB_KIND_REQUEST);
    h.id = id;
    h.target = ab_view_of("echo");
    h.via = ab_view_of("");
    h.hops_left = 3;
    h.timeout_ms = 60000;
    uint8_t hb[256];
    size_t hl = ab_header_encode(&h, hb, sizeof hb);
    REQUIRE(hl > 0);
    if (rid)
        REQUIRE(zmq_send(s, rid, rlen, ZMQ_SNDMORE) == (int)rlen);
    REQUIRE(zmq_send(s, hb, hl, ZMQ_SNDMORE) == (int)hl);
    REQUIRE(zmq_send(s, data, size, 0) == (int)size);
}

/* The hostile peer broker "B" and broker A. */
typedef struct {
    int dialed; /* 1: A dials B, played by the ROUTER S; 0: B dials A: the DEALER S */
    int pa;
    void *ctx, *s;
    uint8_t rid[256]; /* A's routing id at S (dialed) */
    size_t rlen;
    ab_client_t *c; /* on A */
} s_slow_t;

static void s_beat(s_slow_t *t)
{
    s_link_send(t->s, t->dialed ? t->rid : NULL, t->rlen, S_HEARTBEAT, "B", 1);
}

/* Starts A (peer-out-max-bytes 1M, peer-stall-ms STALL_MS, an echo worker)
 * and B, whose receive side is small (64 KiB socket buffer, 4 messages)
 * and which reads nothing once the link is up: what A sends piles up at A. */
static void s_slow_start(s_slow_t *t, int dialed, const char *stall_ms)
{
    memset(t, 0, sizeof *t);
    t->dialed = dialed;
    t->pa = th_free_port();
    int px = th_free_port(), small = 65536, four = 4;
    char peer[64];
    snprintf(peer, sizeof peer, "tcp://127.0.0.1:%d", px);
    t->ctx = zmq_ctx_new();
    t->s = s_socket(t->ctx, dialed ? ZMQ_ROUTER : ZMQ_DEALER);
    zmq_setsockopt(t->s, ZMQ_RCVBUF, &small, sizeof small);
    zmq_setsockopt(t->s, ZMQ_RCVHWM, &four, sizeof four);
    if (dialed)
        REQUIRE(zmq_bind(t->s, th_ep(px)) == 0);
    th_broker(t->pa, "--name", "A", "--link-heartbeat-ms", "200", "--peer-out-max-bytes", "1M",
              "--peer-stall-ms", stall_ms, "--peer", dialed ? peer : "", NULL);
    th_worker(t->pa, "echo", "--capacity", "2", NULL); /* takes under 1M at a time */
    if (dialed) {
        REQUIRE(s_link_wait(t->s, S_HELLO, t->rid, &t->rlen, 20000));
        s_link_send(t->s, t->rid, t->rlen, S_WELCOME, "B", 1);
    } else {
        REQUIRE(zmq_connect(t->s, th_ep(t->pa)) == 0);
        s_link_send(t->s, NULL, 0, S_HELLO, "B", 1);
        REQUIRE(s_link_wait(t->s, S_WELCOME, NULL, NULL, 20000));
    }
    s_interest(t->s, dialed ? t->rid : NULL, t->rlen);
    t->c = th_client(t->pa);
    REQUIRE(th_wait_workers(t->c, "echo", 1, 20000) == 0);
    char state[32] = "";
    Agentbus__PeerInfo pi = {.topics = 0};
    for (int64_t end = ab_now_ms() + 20000; ab_now_ms() < end && !pi.topics;) {
        s_beat(t);
        REQUIRE(lt_peer_info(t->c, "B", &pi, state, sizeof state));
        th_sleep_ms(100);
    }
    REQUIRE(pi.topics == 1 && !strcmp(state, "up"));
}

static void s_slow_end(s_slow_t *t)
{
    ab_client_destroy(&t->c);
    zmq_close(t->s);
    zmq_ctx_term(t->ctx);
}

/* A's slow_disconnects (stats), with B's heartbeats meanwhile. */
static uint64_t s_slow_count(s_slow_t *t)
{
    s_beat(t);
    Agentbus__Stats *st = th_stats(t->c);
    REQUIRE(st != NULL);
    uint64_t n = st->slow_disconnects;
    agentbus__stats__free_unpacked(st, NULL);
    return n;
}

/* B asks A's echo service, over the link, for 48 answers of 256 KiB and
 * never reads them, while it beats every 100 ms. A held everything it
 * sent to a peer broker to sndhwm only, in messages (a stopped peer broker
 * took a broker to 1.5 GB in seconds), on either connection; now past
 * twice peer-out-max-bytes nothing more goes and the link goes down at
 * once (peer-stall-ms is 10 minutes here). On the dialed connection A then
 * dials again; answered, the link is back. */
static void s_slow_answers(int dialed)
{
    enum { N = 48, SIZE = 256 * 1024 };
    s_slow_t t;
    s_slow_start(&t, dialed, "600000");
    char *data = calloc(1, SIZE);
    REQUIRE(data != NULL);
    for (int i = 0; i < N; i++)
        s_link_echo(t.s, dialed ? t.rid : NULL, t.rlen, (uint64_t)i + 1, data, SIZE);
    free(data);
    uint64_t slow = 0;
    for (int64_t end = ab_now_ms() + 15000; ab_now_ms() < end && !slow; th_sleep_ms(100))
        slow = s_slow_count(&t);
    char state[32] = "";
    Agentbus__PeerInfo pi;
    REQUIRE(lt_peer_info(t.c, "B", &pi, state, sizeof state));
    printf("slow_%s: %d answers of %d KiB asked, A's link to B %s, slow disconnects %llu\n",
           dialed ? "dialed" : "accepted", N, SIZE / 1024, state, (unsigned long long)slow);
    CHECK_U64(slow, 1);
    CHECK_TRUE(strcmp(state, "up") != 0); /* the link was cut, not the worker */
    CHECK_EQ((int)th_workers_of(t.c, "echo"), 1);
    if (dialed && slow) { /* A dials again; answered, the link is back */
        REQUIRE(s_link_wait(t.s, S_HELLO, t.rid, &t.rlen, 20000));
        s_link_send(t.s, t.rid, t.rlen, S_WELCOME, "B", 1);
        for (int64_t end = ab_now_ms() + 20000; ab_now_ms() < end && strcmp(state, "up");) {
            s_beat(&t);
            th_sleep_ms(100);
            REQUIRE(lt_peer_info(t.c, "B", &pi, state, sizeof state));
        }
        CHECK_STR(state, "up");
    }
    s_slow_end(&t);
}

static void s_slow_dialed(void)
{
    s_slow_answers(1);
}

static void s_slow_accepted(void)
{
    s_slow_answers(0);
}

/* A's publishers send 8 MiB on "t.x" (B's interest) in messages of 64 KiB.
 * Over peer-out-max-bytes the link carries no more of them, as a slow
 * subscriber's queue takes no more (counted in PUBLISH_DROP); over it for
 * peer-stall-ms (1 s) the link goes down. Before, all 8 MiB went into the
 * pipe, and the link stayed up. */
static void s_slow_stall(void)
{
    enum { SIZE = 64 * 1024, TOTAL = 8 << 20 };
    s_slow_t t;
    s_slow_start(&t, 1, "1000");
    char *data = calloc(1, SIZE);
    REQUIRE(data != NULL);
    size_t sent = 0;
    uint64_t slow = 0;
    int64_t beat = 0;
    for (int64_t end = ab_now_ms() + 15000; ab_now_ms() < end && !slow;) {
        if (sent < TOTAL && ab_client_publish(t.c, "t.x", data, SIZE, NULL) == AB_OK)
            sent += SIZE;
        if (ab_now_ms() - beat >= 100) {
            beat = ab_now_ms();
            slow = s_slow_count(&t);
        }
        ab_client_poll(t.c, sent < TOTAL ? 0 : 10);
    }
    free(data);
    char state[32] = "";
    Agentbus__PeerInfo pi;
    REQUIRE(lt_peer_info(t.c, "B", &pi, state, sizeof state));
    printf("slow_stall: %zu bytes published, %llu not sent to B, A's link to B %s, "
           "slow disconnects %llu\n", sent, (unsigned long long)pi.publishes_dropped, state,
           (unsigned long long)slow);
    CHECK_U64(slow, 1);
    CHECK_TRUE(strcmp(state, "up") != 0);
    CHECK_TRUE(pi.publishes_dropped > 0);
    s_slow_end(&t);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"renamed_dialed", s_renamed_dialed},
        {"renamed_up", s_renamed_up},
        {"plain_held", s_plain_held},
        {"via_charged", s_via_charged},
        {"in_full", s_in_full},
        {"slow_dialed", s_slow_dialed},
        {"slow_accepted", s_slow_accepted},
        {"slow_stall", s_slow_stall},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
