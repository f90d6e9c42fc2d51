/*
 * test_hardening.c - issue 11: what one unauthenticated client could do to
 * the broker's state between messages. Real broker processes; raw libzmq
 * DEALERs play the hostile or old peers (and the client, where the library
 * would hide a duplicate answer). One case per ctest entry.
 */
#include "codec.h"
#include "compress.h"
#include "harness.h"
#include "msgtest.h"
#include "rawpeer.h"
#include "test.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define AB_RID_MAX 255

/* --- 1: an lz4 request meets a worker that cannot read lz4 ---------------------- */
static void s_lz4_old_worker(void)
{
    int port = th_free_port();
    pid_t broker = th_broker(port, NULL);
    void *socks[2];
    void *w = socks[0] = rp_raw(port, NULL, 0);
    void *c = socks[1] = rp_raw(port, NULL, 0);
    rp_register(w, "old", 10, 0); /* no features: an old worker */
    /* Thirty bytes flagged LZ4; several at once, so the dispatch loop meets
     * more than one queued request. */
    enum { N = 5 };
    const char payload[31] = "0123456789abcdefghijklmnopqrst";
    for (int i = 0; i < N; i++)
        rp_request(c, 100 + (uint64_t)i, "old", AB_FLAG_LZ4, payload, 30);
    int refused = 0;
    for (int i = 0; i < N; i++) {
        rp_msg_t m;
        if (!rp_wait(c, AB_KIND_ERROR, &m, 5000, socks, 2))
            break;
        refused += m.h.error_code == AB_ERR_UNSUPPORTED && m.h.correlation_id >= 100 &&
                   m.h.correlation_id < 100 + N;
        rp_close(&m);
    }
    CHECK_EQ(refused, N);
    CHECK_TRUE(th_alive(broker));
    /* The broker keeps serving: a plain request reaches the same worker. */
    rp_request(c, 7, "old", 0, "plain", 5);
    rp_msg_t m;
    REQUIRE(rp_wait(w, AB_KIND_REQUEST, &m, 5000, socks, 2));
    CHECK_EQ(m.h.flags & AB_FLAG_LZ4, 0);
    rp_answer(w, AB_KIND_REPLY, m.h.id, "pong");
    rp_close(&m);
    REQUIRE(rp_wait(c, AB_KIND_REPLY, &m, 5000, socks, 2));
    CHECK_U64(m.h.correlation_id, 7);
    CHECK_TRUE(rp_body_is(&m, "pong"));
    rp_close(&m);
    ab_client_t *ctl = th_client(port);
    Agentbus__Stats *st = th_stats(ctl);
    REQUIRE(st != NULL);
    CHECK_U64(st->lz4_refused, N);
    CHECK_TRUE(th_stat_error(st, "UNSUPPORTED") >= N);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&ctl);
    CHECK_TRUE(th_alive(broker));
    rp_end(socks, 2);
}

/* Whether PID's log holds TEXT. */
static int s_log_has(pid_t pid, const char *text)
{
    FILE *f = fopen(th_log_of(pid), "r");
    REQUIRE(f != NULL);
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, text) != NULL;
    fclose(f);
    return found;
}

typedef struct {
    int ok, failed;
    size_t bytes;
} s_got_t;

static void s_count_reply(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    s_got_t *g = arg;
    if (!ev->final)
        return;
    g->ok += ev->status == AB_OK;
    g->failed += ev->status != AB_OK;
    g->bytes += ev->status == AB_OK ? ev->size : 0;
}

/* A worker answering an agent's 64 requests with lz4 bombs (257 KB each,
 * declaring 64 MiB) all at once, the broker asking the agent a heartbeat
 * each 300 ms. The library inflates each answer as it reads it, and its
 * turn read all 64 before its heartbeat was due again: a second and more
 * of silence, and the broker dropped the agent ("heartbeat timeout").
 * Its turn now stops at 8 MiB taken in: every answer arrives whole and
 * the agent stays. */
static void s_lz4_reply_bombs(void)
{
    int port = th_free_port();
    pid_t broker = th_broker(port, "--heartbeat-ms", "300", "--agent-heartbeat-rate", "0", NULL);
    void *socks[1];
    void *w = socks[0] = rp_raw(port, NULL, 0);
    rp_register(w, "bombs", 64, AB_FEATURE_LZ4);
    ab_client_t *c = th_client(port);
    enum { N = 64 };
    s_got_t got = {0};
    for (int i = 0; i < N; i++)
        REQUIRE(ab_client_request_start(c, "bombs", "x", 1, NULL, s_count_reply, &got, NULL) ==
                AB_OK);
    ab_client_poll(c, 0); /* sent */
    const size_t orig = 64u << 20;
    void *zeros = calloc(1, orig), *bomb = NULL;
    size_t blen = 0;
    REQUIRE(zeros && ab_lz4_compress(zeros, orig, 0, &bomb, &blen) == 1);
    free(zeros);
    uint64_t ids[N];
    int n = 0;
    for (int64_t end = ab_now_ms() + 30000; n < N && ab_now_ms() < end;) {
        rp_msg_t m;
        ab_client_poll(c, 10);
        if (!rp_wait(w, AB_KIND_REQUEST, &m, 100, socks, 1))
            continue;
        ids[n++] = m.h.id;
        rp_close(&m);
    }
    REQUIRE(n == N);
    for (int i = 0; i < N; i++) { /* all at once, before the agent reads any */
        ab_header_t h = ab_header_init(AB_KIND_REPLY);
        h.correlation_id = ids[i];
        h.flags = AB_FLAG_LZ4;
        h.original_size = orig;
        mt_raw_send(w, &h, bomb, blen);
    }
    free(bomb);
    for (int64_t end = ab_now_ms() + 60000; got.ok + got.failed < N && ab_now_ms() < end;) {
        ab_client_poll(c, 100);
        rp_beat(w);
    }
    CHECK_EQ(got.ok, N);
    CHECK_EQ(got.failed, 0);
    CHECK_U64(got.bytes, (uint64_t)N * orig);
    ab_client_destroy(&c);
    CHECK_TRUE(th_alive(broker));
    CHECK_TRUE(!s_log_has(broker, "heartbeat timeout"));
    rp_end(socks, 1);
}

/* --- 2: routing ids a peer chooses ------------------------------------------------ */
/* A worker's id (hex) as `brokerctl --json workers` shows it. */
static size_t s_worker_rid(ab_client_t *ctl, const char *service, uint8_t *rid)
{
    Agentbus__WorkerList *wl = th_workers(ctl);
    REQUIRE(wl != NULL);
    size_t n = 0;
    for (size_t i = 0; i < wl->n_workers; i++)
        if (strcmp(wl->workers[i]->service, service) == 0)
            n = rp_unhex(wl->workers[i]->id, rid, AB_RID_MAX);
    agentbus__worker_list__free_unpacked(wl, NULL);
    return n;
}

typedef struct {
    int finals, real, forged;
} s_tally_t;

static void s_tally_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    s_tally_t *t = arg;
    if (!ev->final)
        return;
    t->finals++;
    t->real += ev->status == AB_OK && ev->size == 4 && memcmp(ev->data, "real", 4) == 0;
    t->forged += ev->status == AB_OK && ev->size == 6 && memcmp(ev->data, "forged", 6) == 0;
}

/* A DEALER that sets ZMQ_ROUTING_ID to a live worker's id as brokerctl
 * shows it (a token, not the id) or as an older library chose it neither
 * receives its requests nor has a forged REPLY accepted. */
static void s_forged_worker_round(int port, const void *vrid, size_t vlen)
{
    enum { N = 10 };
    void *socks[2] = {NULL, NULL};
    void *v = socks[0] = rp_raw(port, vrid, vlen);
    rp_register(v, "svc", 100, AB_FEATURE_LZ4);
    ab_client_t *ctl = th_client(port);
    uint8_t rid[AB_RID_MAX];
    size_t len = s_worker_rid(ctl, "svc", rid);
    REQUIRE(len > 0);
    void *a = socks[1] = rp_raw(port, rid, len);
    rp_beat(a); /* posing as the worker: it only has to receive */
    th_sleep_ms(300);
    s_tally_t t = {0, 0, 0};
    for (int i = 0; i < N; i++)
        REQUIRE(ab_client_request_start(ctl, "svc", "q", 1,
                                        &(ab_request_opts_t){.timeout_ms = 20000}, s_tally_cb, &t,
                                        NULL) == AB_OK);
    ab_client_flush(ctl);
    uint64_t bids[N];
    int got = 0;
    int64_t end = ab_now_ms() + 10000;
    while (got < N && ab_now_ms() < end) {
        rp_msg_t m;
        if (rp_wait(v, AB_KIND_REQUEST, &m, 200, socks, 1))
            bids[got++] = m.h.id;
        rp_close(&m);
        ab_client_poll(ctl, 0);
    }
    CHECK_EQ(got, N);
    /* The impostor forges replies for every id near the real ones. */
    for (uint64_t id = 1; id < 64; id++)
        rp_answer(a, AB_KIND_REPLY, id, "forged");
    th_sleep_ms(300);
    CHECK_EQ(rp_count(a, AB_KIND_REQUEST, 300, NULL, 0), 0);
    for (int i = 0; i < got; i++)
        rp_answer(v, AB_KIND_REPLY, bids[i], "real");
    end = ab_now_ms() + 10000;
    while (t.finals < N && ab_now_ms() < end)
        ab_client_poll(ctl, 50);
    CHECK_EQ(t.finals, N);
    CHECK_EQ(t.real, N);
    CHECK_EQ(t.forged, 0);
    ab_client_destroy(&ctl);
    rp_end(socks, 2);
}

static void s_forged_worker_id(void)
{
    int port = th_free_port();
    pid_t broker = th_broker(port, NULL);
    s_forged_worker_round(port, NULL, 0);
    const uint8_t chosen[16] = {'W' | 0x80, 'v', 'i', 'c', 't', 'i', 'm',
                                1, 2, 3, 4, 5, 6, 7, 8, 9};
    s_forged_worker_round(port, chosen, sizeof chosen);
    CHECK_TRUE(th_alive(broker));
}

/* The same for an agent. The broker shows no routing id (brokerctl shows a
 * token), so the impostor copies one an older client chose itself. */
static void s_forged_agent_id(void)
{
    int port = th_free_port();
    pid_t broker = th_broker(port, NULL);
    mt_box_t *bob = calloc(1, sizeof *bob);
    ab_client_t *cb = mt_agent(port, "bob", 0, bob);
    ab_client_t *ctl = th_client(port);
    const uint8_t chosen[12] = {'A' | 0x80, 'a', 'l', 'i', 'c', 'e', 9, 8, 7, 6, 5, 4};
    void *socks[2];
    void *alice = socks[0] = rp_raw(port, chosen, sizeof chosen);
    rp_hello(alice, "alice", 5, 0, 1);
    rp_msg_t m;
    REQUIRE(rp_wait(alice, AB_KIND_HELLO, &m, 5000, NULL, 0));
    rp_close(&m);
    REQUIRE(mt_wait_bound(ctl, "alice", 5000));
    REQUIRE(mt_wait_bound(ctl, "bob", 5000));
    /* The id brokerctl shows for alice is not her routing id. */
    Agentbus__AgentList *al = mt_agents(ctl);
    REQUIRE(al != NULL);
    for (size_t i = 0; i < al->n_agents; i++)
        if (strcmp(al->agents[i]->name, "alice") == 0) {
            uint8_t shown[AB_RID_MAX];
            size_t n = rp_unhex(al->agents[i]->id, shown, sizeof shown);
            CHECK_TRUE(n != sizeof chosen || memcmp(shown, chosen, n) != 0);
        }
    agentbus__agent_list__free_unpacked(al, NULL);
    void *imp = socks[1] = rp_raw(port, chosen, sizeof chosen);
    rp_hello(imp, "alice", 5, 0, 1);
    th_sleep_ms(300);
    /* As alice, to bob. */
    ab_header_t h = ab_header_init(AB_KIND_SEND);
    h.id = 9;
    h.target = ab_view_of("bob");
    mt_raw_send(imp, &h, "forged", 6);
    /* To alice, from bob. */
    for (int i = 0; i < 5; i++)
        CHECK_EQ(ab_client_send(cb, "alice", "secret", 6, 0, NULL), AB_OK);
    ab_client_flush(cb);
    int got = 0;
    int64_t end = ab_now_ms() + 5000;
    while (got < 5 && ab_now_ms() < end) {
        if (rp_wait(alice, AB_KIND_SEND, &m, 100, socks, 1)) {
            got += rp_body_is(&m, "secret");
            rp_close(&m);
        }
        ab_client_poll(cb, 0);
    }
    CHECK_EQ(got, 5);
    mt_pump(&cb, 1, 500);
    CHECK_EQ(bob->count[AB_MSG_DIRECT], 0);
    CHECK_EQ(rp_count(imp, 0, 500, NULL, 0), 0);
    CHECK_TRUE(mt_wait_bound(ctl, "alice", 2000));
    CHECK_TRUE(th_alive(broker));
    ab_client_destroy(&cb);
    ab_client_destroy(&ctl);
    rp_end(socks, 2);
    free(bob);
}

/* The ROUTER assigns ids in sequence; libzmq aborts when it assigns one a
 * peer already chose. A peer that learns its own id (an unnamed sender is
 * "~" + what the broker calls it) claims the next ones; new connections
 * must still be served. */
static void s_next_id_claim(void)
{
    int port = th_free_port();
    pid_t broker = th_broker(port, NULL);
    th_worker(port, "echo", NULL);
    mt_box_t *box = calloc(1, sizeof *box);
    ab_client_t *named = mt_agent(port, "listener", 0, box);
    ab_client_t *ctl = th_client(port);
    REQUIRE(mt_wait_bound(ctl, "listener", 5000));
    void *socks[64];
    int n = 0;
    void *spy = socks[n++] = rp_raw(port, NULL, 0);
    ab_header_t h = ab_header_init(AB_KIND_SEND);
    h.id = 1;
    h.target = ab_view_of("listener");
    mt_raw_send(spy, &h, "who am i", 8);
    REQUIRE(mt_wait(named, box, AB_MSG_DIRECT, 1, 5000) == 1);
    printf("an unnamed sender is shown as %s\n", box->sender[0]);
    uint8_t id[AB_RID_MAX];
    size_t len = rp_unhex(box->sender[0] + 1, id, sizeof id);
    REQUIRE(len > 0);
    /* Claim the ids that would follow it if it were a routing id. */
    for (uint32_t k = 1; k <= 40 && n < 64; k++) {
        uint8_t next[AB_RID_MAX];
        memcpy(next, id, len);
        uint32_t carry = k;
        for (size_t i = len; i-- > 0 && carry;) { /* next = id + k, big-endian */
            uint32_t v = next[i] + (carry & 0xff);
            next[i] = (uint8_t)v;
            carry = (carry >> 8) + (v >> 8);
        }
        socks[n] = rp_raw(port, next, len);
        rp_beat(socks[n++]);
    }
    th_sleep_ms(300);
    /* New connections get the next ids. */
    for (int i = 0; i < 5; i++) {
        ab_client_t *c = th_client(port);
        char *out = NULL;
        size_t olen = 0;
        CHECK_EQ(ab_client_request(c, "echo", "hi", 2, 5000, (void **)&out, &olen), AB_OK);
        free(out);
        ab_client_destroy(&c);
    }
    CHECK_TRUE(th_alive(broker));
    ab_client_destroy(&named);
    ab_client_destroy(&ctl);
    rp_end(socks, n);
    free(box);
}

/* Two connections sharing one id, and two more with the id a live worker
 * chose (an older library's), busy for a few seconds: the broker stays up,
 * keeps the worker, and answers. */
static void s_shared_id(void)
{
    int port = th_free_port();
    pid_t broker = th_broker(port, NULL);
    th_worker(port, "echo", NULL);
    ab_client_t *ctl = th_client(port);
    REQUIRE(th_wait_workers(ctl, "echo", 1, 10000) == 0);
    const char twin[] = "twin-id";
    const uint8_t wid[8] = {'W' | 0x80, 'o', 'l', 'd', 1, 2, 3, 4};
    void *socks[5];
    void *old = socks[4] = rp_raw(port, wid, sizeof wid);
    rp_register(old, "raw", 10, 0);
    socks[0] = rp_raw(port, twin, sizeof twin - 1);
    socks[1] = rp_raw(port, twin, sizeof twin - 1);
    socks[2] = rp_raw(port, wid, sizeof wid);
    socks[3] = rp_raw(port, wid, sizeof wid);
    int64_t end = ab_now_ms() + 3000;
    uint64_t id = 1;
    while (ab_now_ms() < end) {
        for (int i = 0; i < 4; i++) {
            rp_hello(socks[i], i < 2 ? "twin" : "", (uint64_t)i + 1, 0, id++);
            rp_request(socks[i], id++, "echo", 0, "x", 1);
            rp_answer(socks[i], AB_KIND_REPLY, id, "y");
            rp_beat(socks[i]);
            rp_msg_t m;
            while (rp_take(socks[i], &m))
                rp_close(&m);
        }
        rp_beat(old);
        th_sleep_ms(5);
    }
    CHECK_TRUE(th_alive(broker));
    char *out = NULL;
    size_t olen = 0;
    CHECK_EQ(ab_client_request(ctl, "echo", "still here", 10, 5000, (void **)&out, &olen),
             AB_OK);
    CHECK_EQ(olen, 10);
    free(out);
    /* The worker that chose its id still gets its service's requests. */
    CHECK_EQ(th_wait_workers(ctl, "raw", 1, 2000), 0);
    REQUIRE(ab_client_request_start(ctl, "raw", "r", 1, &(ab_request_opts_t){.timeout_ms = 5000},
                                    NULL, NULL, NULL) == AB_OK);
    ab_client_flush(ctl);
    rp_msg_t m;
    CHECK_TRUE(rp_wait(old, AB_KIND_REQUEST, &m, 5000, NULL, 0));
    rp_close(&m);
    ab_client_destroy(&ctl);
    rp_end(socks, 5);
    CHECK_TRUE(th_alive(broker));
}

/* A live name is reclaimed only by its own instance; the takeover flag
 * alone is refused unless the broker allows it (name-takeover). */
static void s_takeover_refused(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    mt_box_t *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    ab_client_t *ca = mt_agent(port, "ivan", 0, a);
    ab_client_t *ctl = th_client(port);
    REQUIRE(mt_wait_bound(ctl, "ivan", 5000));
    ab_client_t *cb = mt_agent(port, "ivan", 1, b);
    CHECK_EQ(mt_wait(cb, b, AB_MSG_ERROR, 1, 5000), 1);
    CHECK_EQ(b->status[0], AB_ENAMETAKEN);
    ab_client_t *sender = mt_agent(port, NULL, 0, NULL);
    int queued = -1;
    CHECK_EQ(ab_client_send_wait(sender, "ivan", "still mine", 10, 0, 5000, &queued), AB_OK);
    CHECK_EQ(mt_wait(ca, a, AB_MSG_DIRECT, 1, 5000), 1);
    CHECK_EQ(a->count[AB_MSG_ERROR], 0);
    /* Raw connections: the same instance reclaims, another is refused. */
    void *socks[3];
    socks[0] = rp_raw(port, NULL, 0);
    socks[1] = rp_raw(port, NULL, 0);
    socks[2] = rp_raw(port, NULL, 0);
    rp_hello(socks[0], "carol", 777, 0, 1);
    rp_msg_t m;
    REQUIRE(rp_wait(socks[0], AB_KIND_HELLO, &m, 5000, NULL, 0));
    rp_close(&m);
    REQUIRE(mt_wait_bound(ctl, "carol", 5000));
    rp_hello(socks[1], "carol", 777, 0, 2); /* a reconnect of the same handle */
    REQUIRE(rp_wait(socks[1], AB_KIND_HELLO, &m, 5000, socks, 2));
    rp_close(&m);
    rp_hello(socks[2], "carol", 778, 1, 3); /* another instance, takeover flag */
    REQUIRE(rp_wait(socks[2], AB_KIND_ERROR, &m, 5000, socks, 3));
    CHECK_EQ(m.h.error_code, AB_ERR_NAME_TAKEN);
    CHECK_U64(m.h.correlation_id, 3);
    rp_close(&m);
    CHECK_EQ(ab_client_send_wait(sender, "carol", "to carol", 8, 0, 5000, &queued), AB_OK);
    REQUIRE(rp_wait(socks[1], AB_KIND_SEND, &m, 5000, socks, 3));
    CHECK_TRUE(rp_body_is(&m, "to carol"));
    rp_close(&m);
    CHECK_EQ(rp_count(socks[0], AB_KIND_SEND, 300, NULL, 0), 0);
    CHECK_EQ(rp_count(socks[2], AB_KIND_SEND, 300, NULL, 0), 0);
    ab_client_destroy(&ca);
    ab_client_destroy(&cb);
    ab_client_destroy(&sender);
    ab_client_destroy(&ctl);
    rp_end(socks, 3);
    free(a);
    free(b);
}

/* --- 3: a name leaves the flush list before its record is freed ------------------ */
/* Agents whose pipes are full (they never read) keep renaming themselves
 * between two names, each holding one short-lived message: a name's record
 * is emptied by the expiry sweep while it is on the flush list, then unbound
 * (renamed away) and freed before the next flush looks at the list (the
 * use-after-free a stateful fuzzer found under ASan). Expiry times are
 * spread so some land in the window on any machine. */
static void s_send_one(void *raw, const char *name, uint64_t id, uint32_t ttl_ms,
                       const void *data, size_t size)
{
    ab_header_t h = ab_header_init(AB_KIND_SEND);
    h.id = id;
    h.target = ab_view_of(name);
    h.timeout_ms = ttl_ms;
    mt_raw_send(raw, &h, data, size);
}

static void s_rename_backlog(void)
{
    enum { AGENTS = 8, BIG = 256 * 1024, CYCLES = 8 };
    int port = th_free_port();
    pid_t broker = th_broker(port, "--sndhwm", "4", NULL);
    void *socks[AGENTS + 1];
    for (int i = 0; i < AGENTS; i++) {
        void *s = zmq_socket(rp_ctx(), ZMQ_DEALER);
        int linger = 0, hwm = 2, rcvbuf = 4096;
        zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
        zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
        zmq_setsockopt(s, ZMQ_RCVBUF, &rcvbuf, sizeof rcvbuf);
        REQUIRE(zmq_connect(s, th_ep(port)) == 0);
        socks[i] = s;
    }
    void *sender = socks[AGENTS] = rp_raw(port, NULL, 0);
    char *big = calloc(1, BIG);
    memset(big, 'm', BIG);
    uint64_t id = 1;
    unsigned seed = 11;
    char name[32];
    /* Fill every agent's pipe: what is not delivered expires soon. */
    for (int i = 0; i < AGENTS; i++) {
        snprintf(name, sizeof name, "r%d-0", i);
        rp_hello(socks[i], name, (uint64_t)i + 1, 0, id++);
        for (int k = 0; k < 24; k++) /* 6 MB: past the socket buffers */
            s_send_one(sender, name, id++, 300, big, BIG);
    }
    th_sleep_ms(500);
    int cur[AGENTS] = {0};
    for (int cycle = 0; cycle < CYCLES && th_alive(broker); cycle++) {
        /* One message for each name, expiring somewhere in the next second. */
        for (int i = 0; i < AGENTS; i++)
            for (int k = 0; k < 2; k++) {
                snprintf(name, sizeof name, "r%d-%d", i, k);
                s_send_one(sender, name, id++, 100 + rand_r(&seed) % 1000, "x", 1);
            }
        /* Then only renames, every few ms, while those expire. */
        int64_t end = ab_now_ms() + 1300;
        while (ab_now_ms() < end) {
            for (int i = 0; i < AGENTS; i++) {
                cur[i] ^= 1;
                snprintf(name, sizeof name, "r%d-%d", i, cur[i]);
                rp_hello(socks[i], name, (uint64_t)i + 1, 0, id++);
                rp_beat(socks[i]);
            }
            rp_beat(sender);
            rp_msg_t m;
            while (rp_take(sender, &m))
                rp_close(&m);
            th_sleep_ms(2 + (int)(rand_r(&seed) % 6));
        }
    }
    free(big);
    CHECK_TRUE(th_alive(broker));
    ab_client_t *ctl = th_client(port);
    Agentbus__Stats *st = th_stats(ctl);
    REQUIRE(st != NULL);
    printf("queued %llu expired %llu delivered %llu refused %llu\n",
           (unsigned long long)st->msgs_queued, (unsigned long long)st->msgs_expired,
           (unsigned long long)st->msgs_delivered, (unsigned long long)st->msgs_refused);
    CHECK_TRUE(st->msgs_queued >= 2 * AGENTS * CYCLES);
    CHECK_TRUE(st->msgs_expired > 0);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&ctl);
    rp_end(socks, AGENTS + 1);
}

/* --- 4: offline names are freed with their last message, and bounded ------------- */
static Agentbus__Stats *s_wait_names(ab_client_t *ctl, uint32_t names, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    for (;;) {
        Agentbus__Stats *st = th_stats(ctl);
        REQUIRE(st != NULL);
        if ((st->offline_names == names && (names || st->mailbox_msgs == 0)) ||
            ab_now_ms() >= end)
            return st;
        agentbus__stats__free_unpacked(st, NULL);
        th_sleep_ms(200);
    }
}

/* Sends to N names PREFIX0..; answers counted: *queued, *busy. */
static void s_send_names(void *raw, void **beat, const char *prefix, int n, int ttl_ms,
                         int *queued, int *busy)
{
    *queued = *busy = 0;
    for (int i = 0; i < n; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s%d", prefix, i);
        ab_header_t h = ab_header_init(AB_KIND_SEND);
        h.id = (uint64_t)i + 1;
        h.target = ab_view_of(name);
        h.timeout_ms = (uint32_t)ttl_ms;
        h.credit = 1; /* answer "queued" */
        mt_raw_send(raw, &h, "hello", 5);
    }
    int64_t end = ab_now_ms() + 20000, next_beat = 0;
    while (*queued + *busy < n && ab_now_ms() < end) {
        if (ab_now_ms() >= next_beat) {
            rp_beat(beat[0]);
            next_beat = ab_now_ms() + 150;
        }
        zmq_pollitem_t it = {raw, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 50) <= 0)
            continue;
        rp_msg_t m;
        while (rp_take(raw, &m)) {
            if (m.h.kind == AB_KIND_REPLY)
                (*queued)++;
            else if (m.h.kind == AB_KIND_ERROR && m.h.error_code == AB_ERR_BUSY)
                (*busy)++;
            rp_close(&m);
        }
    }
}

static void s_offline_names(void)
{
    int port = th_free_port();
    th_broker(port, "--mailbox-max-names", "6000", NULL);
    ab_client_t *ctl = th_client(port);
    void *socks[1];
    void *raw = socks[0] = rp_raw(port, NULL, 0);
    int queued, busy;
    s_send_names(raw, socks, "gone-", 5000, 300, &queued, &busy);
    CHECK_EQ(queued, 5000);
    CHECK_EQ(busy, 0);
    /* Expired: every record goes with its last message. */
    Agentbus__Stats *st = s_wait_names(ctl, 0, 15000);
    CHECK_EQ(st->offline_names, 0);
    CHECK_EQ(st->mailbox_msgs, 0);
    CHECK_U64(st->mailbox_charged_bytes, 0);
    CHECK_TRUE(st->msgs_expired >= 5000);
    agentbus__stats__free_unpacked(st, NULL);
    Agentbus__AgentList *al = mt_agents(ctl);
    REQUIRE(al != NULL);
    size_t offline = 0;
    for (size_t i = 0; i < al->n_agents; i++)
        offline += !al->agents[i]->connected;
    CHECK_EQ(offline, 0);
    agentbus__agent_list__free_unpacked(al, NULL);
    /* A new SEND is accepted, and the count of offline names is bounded. */
    s_send_names(raw, socks, "more-", 6500, 60000, &queued, &busy);
    CHECK_EQ(queued, 6000);
    CHECK_EQ(busy, 500);
    st = th_stats(ctl);
    REQUIRE(st != NULL);
    CHECK_EQ(st->offline_names, 6000);
    agentbus__stats__free_unpacked(st, NULL);
    /* Delivery frees a record too: a name bound, its mailbox drained. */
    mt_box_t *box = calloc(1, sizeof *box);
    ab_client_t *c = mt_agent(port, "more-7", 0, box);
    CHECK_EQ(mt_wait(c, box, AB_MSG_DIRECT, 1, 5000), 1);
    ab_client_destroy(&c);
    st = s_wait_names(ctl, 5999, 5000);
    CHECK_EQ(st->offline_names, 5999);
    agentbus__stats__free_unpacked(st, NULL);
    free(box);
    ab_client_destroy(&ctl);
    rp_end(socks, 1);
}

/* --- 6: a late answer after another worker's answer is not a second final -------- */
/* A broker that finds a silent worker dead within ~0.5 s, a raw client
 * (SOCKS[0]) whose request 42 went to raw worker W1 (SOCKS[1]), silent
 * since, and then again to W2 (SOCKS[2]) as broker id BID. */
typedef struct {
    int port;
    pid_t broker;
    void *socks[3];
    uint64_t bid;
} s_late_t;

static void s_late_setup(s_late_t *t)
{
    t->port = th_free_port();
    t->broker = th_broker(t->port, "--health-floor-ms", "200", "--health-ceiling-ms", "400",
                          NULL);
    void *c = t->socks[0] = rp_raw(t->port, NULL, 0);
    void *w1 = t->socks[1] = rp_raw(t->port, NULL, 0);
    rp_register(w1, "svc", 1, 0);
    rp_request(c, 42, "svc", 0, "q", 1);
    rp_msg_t m;
    REQUIRE(rp_wait(w1, AB_KIND_REQUEST, &m, 5000, t->socks, 2));
    t->bid = m.h.id;
    rp_close(&m);
    void *w2 = t->socks[2] = rp_raw(t->port, NULL, 0);
    rp_register(w2, "svc", 1, 0);
    void *live[2] = {c, w2};
    REQUIRE(rp_wait(w2, AB_KIND_REQUEST, &m, 15000, live, 2));
    CHECK_U64(m.h.id, t->bid);
    rp_close(&m);
}

/* The stats of T's broker say LATE late replies and one reply (W1's or
 * W2's, never both); the broker lives; the raw sockets are closed. */
static void s_late_end(s_late_t *t, unsigned long long late)
{
    ab_client_t *ctl = th_client(t->port);
    Agentbus__Stats *st = th_stats(ctl);
    REQUIRE(st != NULL);
    CHECK_U64(st->late_replies, late);
    CHECK_EQ(st->replies, 1);
    CHECK_TRUE(late || st->replies_dropped >= 1);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&ctl);
    CHECK_TRUE(th_alive(t->broker));
    rp_end(t->socks, 3);
}

/* W2 answers TEXT: the client's one answer; then as s_late_end. */
static void s_w2_ends(s_late_t *t, const char *text)
{
    void *live[2] = {t->socks[0], t->socks[2]};
    rp_msg_t m;
    rp_answer(t->socks[2], AB_KIND_REPLY, t->bid, text);
    REQUIRE(rp_wait(t->socks[0], AB_KIND_REPLY, &m, 5000, live, 2));
    CHECK_TRUE(rp_body_is(&m, text));
    CHECK_U64(m.h.correlation_id, 42);
    rp_close(&m);
    s_late_end(t, 0);
}

/* W1 takes the request and goes silent (presumed dead); it is re-dispatched
 * to W2. LATE_FIRST: W1 answers before W2 (its late answer is forwarded,
 * W2 gets CANCEL and its answer is dropped); else W2 first and W1's late
 * one dropped. The raw client must see exactly one final either way. */
static void s_late_round(int late_first)
{
    s_late_t t;
    s_late_setup(&t);
    void **socks = t.socks, *c = socks[0], *w1 = socks[1], *w2 = socks[2];
    void *live[2] = {c, w2};
    uint64_t bid = t.bid;
    rp_msg_t m;
    if (late_first) {
        rp_answer(w1, AB_KIND_REPLY, bid, "from-w1");
        REQUIRE(rp_wait(c, AB_KIND_REPLY, &m, 5000, live, 2));
        CHECK_TRUE(rp_body_is(&m, "from-w1"));
        rp_close(&m);
        /* W2 is told to stop: nobody waits for its answer (its slot). */
        REQUIRE(rp_wait(w2, AB_KIND_CANCEL, &m, 5000, live, 2));
        CHECK_U64(m.h.correlation_id, bid);
        rp_close(&m);
        rp_answer(w2, AB_KIND_REPLY, bid, "from-w2");
    } else {
        rp_answer(w2, AB_KIND_REPLY, bid, "from-w2");
        REQUIRE(rp_wait(c, AB_KIND_REPLY, &m, 5000, live, 2));
        CHECK_TRUE(rp_body_is(&m, "from-w2"));
        rp_close(&m);
        rp_answer(w1, AB_KIND_REPLY, bid, "from-w1");
    }
    /* No second final (REPLY or ERROR) for request 42. */
    int extra = 0;
    int64_t end = ab_now_ms() + 1500;
    while (ab_now_ms() < end) {
        if (!rp_wait(c, AB_KIND_REPLY, &m, 100, live, 2))
            continue;
        extra += m.h.correlation_id == 42;
        rp_close(&m);
    }
    CHECK_EQ(extra, 0);
    ab_client_t *ctl = th_client(t.port);
    Agentbus__Stats *st = th_stats(ctl);
    REQUIRE(st != NULL);
    printf("late_first %d: late_replies %llu duplicates_dropped %llu replies_dropped %llu\n",
           late_first, (unsigned long long)st->late_replies,
           (unsigned long long)st->duplicates_dropped, (unsigned long long)st->replies_dropped);
    CHECK_EQ(st->duplicates_dropped, 1);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&ctl);
    s_late_end(&t, late_first ? 1 : 0);
}

/* W1, presumed dead, wakes and answers ERROR (BACKEND) while W2 runs the
 * request again: dropped, not the client's answer (it was, as the first
 * final, and W2 was cancelled); W2's REPLY is. */
static void s_late_error_round(void)
{
    s_late_t t;
    s_late_setup(&t);
    void **socks = t.socks, *c = socks[0], *w1 = socks[1], *w2 = socks[2];
    void *live[2] = {c, w2};
    uint64_t bid = t.bid;
    rp_msg_t m;
    ab_header_t h = ab_header_init(AB_KIND_ERROR);
    h.correlation_id = bid;
    h.error_code = AB_ERR_BACKEND;
    mt_raw_send(w1, &h, "backend woke up failing", 23);
    /* Neither the client's answer nor a CANCEL for W2, within a second. */
    int early = rp_wait(c, AB_KIND_ERROR, &m, 1000, live, 2);
    if (early)
        rp_close(&m);
    CHECK_EQ(early, 0);
    int cancelled = rp_wait(w2, AB_KIND_CANCEL, &m, 200, live, 2);
    if (cancelled)
        rp_close(&m);
    CHECK_EQ(cancelled, 0);
    s_w2_ends(&t, "from-w2");
}

static void s_late_answer(void)
{
    s_late_round(1);
    s_late_round(0);
    s_late_error_round();
}

/* --- 7: a late answer does not end a stream another worker began --------------- */
/* W1 takes the request and goes silent (presumed dead); it is re-dispatched
 * to W2, which streams a chunk to the client. Then W1's late REPLY comes:
 * forwarded, it would end the client's answer with W2's chunk followed by
 * W1's final, a whole answer made of two workers' halves (and cached so,
 * for a cacheable request). It is dropped like a late chunk, and W2's
 * stream goes on to its own final. */
static void s_late_after_stream(void)
{
    s_late_t t;
    s_late_setup(&t);
    void **socks = t.socks, *c = socks[0], *w1 = socks[1], *w2 = socks[2];
    void *live[2] = {c, w2};
    uint64_t bid = t.bid;
    rp_msg_t m;
    rp_answer(w2, AB_KIND_PARTIAL, bid, "part-w2 ");
    REQUIRE(rp_wait(c, AB_KIND_PARTIAL, &m, 5000, live, 2));
    CHECK_TRUE(rp_body_is(&m, "part-w2 "));
    rp_close(&m);
    rp_answer(w1, AB_KIND_REPLY, bid, "from-w1");
    int early = rp_wait(c, AB_KIND_REPLY, &m, 1000, live, 2);
    if (early) {
        CHECK_TRUE(!rp_body_is(&m, "from-w1"));
        rp_close(&m);
    }
    CHECK_EQ(early, 0);
    s_w2_ends(&t, "end-w2");
}

/* --- 8: a worker that pushed a request back does not answer it later ---------- */
/* A request for a model goes to one of two workers, which answers ERROR
 * BACKEND: placement hands it to the other (docs/placement.md). The first
 * then sends a REPLY to it as well (a buggy or hostile worker: its answer
 * had ended its attempt). That is a duplicate, dropped: before, it was
 * taken for a late answer from a worker presumed dead, reached the client
 * as its answer and cancelled the other worker's run. */
static void s_answer_after_pushback(void)
{
    int port = th_free_port();
    pid_t broker = th_broker(port, NULL);
    void *socks[3];
    void *c = socks[0] = rp_raw(port, NULL, 0);
    void *wa = socks[1] = rp_raw(port, NULL, 0);
    void *wb = socks[2] = rp_raw(port, NULL, 0);
    rp_register(wa, "svc", 1, 0);
    rp_register(wb, "svc", 1, 0);
    ab_header_t h = ab_header_init(AB_KIND_REQUEST);
    h.id = 42;
    h.target = ab_view_of("svc");
    h.model = ab_view_of("m");
    h.timeout_ms = 20000;
    mt_raw_send(c, &h, "q", 1);
    /* whichever worker got it first pushes it back */
    rp_msg_t m;
    void *first = NULL, *second = NULL;
    for (int i = 0; i < 100 && !first; i++) {
        if (rp_wait(wa, AB_KIND_REQUEST, &m, 50, socks, 3))
            first = wa, second = wb;
        else if (rp_wait(wb, AB_KIND_REQUEST, &m, 50, socks, 3))
            first = wb, second = wa;
    }
    REQUIRE(first != NULL);
    uint64_t bid = m.h.id;
    rp_close(&m);
    ab_header_t e = ab_header_init(AB_KIND_ERROR);
    e.correlation_id = bid;
    e.error_code = AB_ERR_BACKEND;
    e.error_text = ab_view_of("backend down");
    mt_raw_send(first, &e, NULL, 0);
    REQUIRE(rp_wait(second, AB_KIND_REQUEST, &m, 5000, socks, 3));
    CHECK_U64(m.h.id, bid);
    rp_close(&m);
    rp_answer(first, AB_KIND_REPLY, bid, "from-first");
    CHECK_EQ(rp_count(second, AB_KIND_CANCEL, 800, socks, 3), 0);
    rp_answer(second, AB_KIND_REPLY, bid, "from-second");
    REQUIRE(rp_wait(c, AB_KIND_REPLY, &m, 5000, socks, 3));
    CHECK_TRUE(rp_body_is(&m, "from-second"));
    CHECK_U64(m.h.correlation_id, 42);
    rp_close(&m);
    CHECK_EQ(rp_count(c, AB_KIND_REPLY, 500, socks, 3), 0);
    ab_client_t *ctl = th_client(port);
    Agentbus__Stats *st = th_stats(ctl);
    REQUIRE(st != NULL);
    CHECK_EQ(st->late_replies, 0);
    CHECK_EQ(st->replies, 1);
    CHECK_EQ(st->duplicates_dropped, 1);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&ctl);
    CHECK_TRUE(th_alive(broker));
    rp_end(socks, 3);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"lz4_old_worker", s_lz4_old_worker},     {"forged_worker_id", s_forged_worker_id},
        {"forged_agent_id", s_forged_agent_id},   {"shared_id", s_shared_id},
        {"takeover_refused", s_takeover_refused}, {"rename_backlog", s_rename_backlog},
        {"next_id_claim", s_next_id_claim},
        {"offline_names", s_offline_names},       {"late_answer", s_late_answer},
        {"late_after_stream", s_late_after_stream},
        {"answer_after_pushback", s_answer_after_pushback},
        {"lz4_reply_bombs", s_lz4_reply_bombs},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
