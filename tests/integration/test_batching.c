/*
 * test_batching.c - issue 4 end to end: BATCH and lz4 between real broker,
 * worker and client processes (and raw ZeroMQ peers that speak the wire by
 * hand, to see exactly what the broker sends and forwards).
 * One case per ctest entry: test_batching CASE. This file has batching
 * itself (many agents, old peers, a lone request, options, order, counts);
 * lz4 and malformed batches are in test_batching_lz4.c, the library's side
 * of the wire in test_batching_wire.c, the shared helpers in batchtest.c.
 */
#include "batch.h"
#include "harness.h"
#include "test.h"
#include "util.h"
#include "batchtest.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    void *oldw = socks[0] = bt_raw(port);
    bt_raw_register(oldw, "old", 1000, 0);
    /* An old client: HELLO without features. */
    void *oldc = socks[1] = bt_raw(port);
    bt_raw_hello(oldc, 0);

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
        bt_msg_t m;
        if (!bt_raw_recv_msg(oldw, &m, 5000))
            break;
        batches += m.h.kind == AB_KIND_BATCH;
        if (m.h.kind == AB_KIND_REQUEST) {
            got++;
            ab_header_t r = ab_header_init(AB_KIND_REPLY);
            r.correlation_id = m.h.id;
            bt_raw_send(oldw, &r, "pong", 4, 1);
        }
        bt_msg_close(&m);
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
        bt_raw_send(oldc, &h, "hi", 2, 1);
    }
    int replies = 0, in_order = 1;
    batches = 0;
    for (int i = 0; i < N; i++) {
        bt_msg_t m;
        if (!bt_raw_recv_msg(oldc, &m, 5000))
            break;
        batches += m.h.kind == AB_KIND_BATCH;
        if (m.h.kind == AB_KIND_REPLY) {
            if (m.h.correlation_id != (uint64_t)replies + 100)
                in_order = 0;
            replies++;
        }
        bt_msg_close(&m);
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
    bt_raw_close_all(socks, 2);
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
    th_broker(port, "--compress-local", NULL); /* lz4 on loopback too: every path */
    th_worker(port, "echo", "--capacity", "1000", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "echo", 1, 10000) == 0);
    static s_mixed_t m;
    static s_mixed_ticket_t tickets[N];
    for (int k = 0; k < 64; k++) {
        size_t sz = k % 4 == 0 ? 10 : k % 4 == 1 ? 2000 : k % 4 == 2 ? 100 * 1024 : 50;
        m.sizes[k] = sz;
        m.bufs[k] = k % 8 == 2 ? malloc(sz) : bt_text(sz);
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
    th_broker(port, "--startup-grace-ms", "20000", "--compress-local", NULL);
    ab_client_t *c = th_client(port);
    bt_tally_t t = {0};
    for (int i = 0; i < 20; i++) /* wait in the startup grace for a worker */
        REQUIRE(ab_client_request_start(c, "echo", "early", 5,
                                        &(ab_request_opts_t){.timeout_ms = 20000}, bt_tally_cb, &t,
                                        NULL) == AB_OK);
    ab_client_poll(c, 200);
    th_worker(port, "echo", "--capacity", "1000", NULL);
    bt_poll_until(c, &t, 20, 10000);
    CHECK_EQ(t.ok, 20);
    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    uint64_t bout0 = st->batches_out, bin0 = st->batches_in;
    printf("after registration: %llu batches out, %llu in\n", (unsigned long long)bout0,
           (unsigned long long)bin0);
    CHECK_TRUE(bout0 > 0); /* the REGISTER answer and the waiting requests */
    agentbus__stats__free_unpacked(st, NULL);
    char *text = bt_text(32 * 1024);
    void *reply = NULL;
    size_t n = 0;
    CHECK_EQ(ab_client_request(c, "echo", text, 32 * 1024, 10000, &reply, &n), AB_OK);
    CHECK_TRUE(n == 32 * 1024 && reply && memcmp(reply, text, n) == 0);
    ab_free(reply);
    bt_tally_t t2 = {0};
    for (int i = 0; i < 300; i++)
        REQUIRE(ab_client_request_start(c, "echo", "x", 1,
                                        &(ab_request_opts_t){.timeout_ms = 20000}, bt_tally_cb, &t2,
                                        NULL) == AB_OK);
    bt_poll_until(c, &t2, 300, 10000);
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
    void *w = socks[0] = bt_raw(port);
    bt_raw_register(w, "counted", N, AB_FEATURE_BATCH);
    void *rc = socks[1] = bt_raw(port);
    bt_raw_hello(rc, AB_FEATURE_LZ4); /* reads lz4, not BATCH */
    ab_client_t *c = bt_client_nobatch(port);
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
        bt_raw_send(rc, &h, "abc", 3, 1);
    }
    int requests = 0, batches = 0, entries = 0, singles = 0;
    int64_t end = ab_now_ms() + 20000;
    while (requests < N && ab_now_ms() < end) {
        bt_msg_t m;
        if (!bt_raw_recv(w, &m, 500))
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
        bt_msg_close(&m);
    }
    /* Anything still on its way (a late HEARTBEAT, say) is counted too. */
    bt_msg_t m;
    while (bt_raw_recv(w, &m, 300)) {
        if (m.h.kind == AB_KIND_BATCH) {
            ab_batch_reader_t r;
            uint32_t count = 0;
            if (ab_batch_open(&r, zmq_msg_data(&m.body), zmq_msg_size(&m.body), NULL, &count) ==
                AB_OK)
                batches++, entries += (int)count;
        }
        bt_msg_close(&m);
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
    bt_raw_close_all(socks, 2);
}

/* The library's count limit follows its backlog (ab_batch_next_limit): a
 * turn that gathered many doubles it, and turns that gathered nothing (a
 * poll with nothing to send: most of them) leave it, so a burst after a
 * quiet spell goes in batches as large as the last burst earned, not cut
 * back to 64 by every empty poll. Requests to a service nobody serves: the
 * broker answers each NO_SERVICE at once, and the only BATCHes it receives
 * are this client's. */
static void s_limit_grows(void)
{
    enum { N = 1000 };
    int port = th_free_port();
    th_broker(port, "--startup-grace-ms", "0", NULL);
    ab_options_t *o = ab_options_new();
    REQUIRE(o && ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
    /* No age limit in the way on a slow machine: only the count cuts. */
    REQUIRE(ab_options_set_batch_limits(o, AB_BATCH_DEFAULT_COUNT, 1 << 20, 1000000) == AB_OK);
    ab_client_t *c = NULL, *ctl = th_client(port);
    REQUIRE(ab_client_new(&c, o) == AB_OK);
    ab_options_destroy(&o);
    void *reply = NULL;
    size_t rlen = 0;
    /* Answered: the broker's HELLO answer (BATCH) is known to the handle. */
    CHECK_EQ(ab_client_request(c, "nobody", "x", 1, 10000, &reply, &rlen), AB_ENOSERVICE);
    uint64_t db = 0, dm = 0;
    for (int round = 0; round < 3; round++) {
        Agentbus__Stats *st = th_stats(ctl);
        REQUIRE(st != NULL);
        uint64_t b0 = st->batches_in, m0 = st->batched_msgs_in;
        agentbus__stats__free_unpacked(st, NULL);
        for (int i = 0; i < N; i++) /* one turn gathers N */
            REQUIRE(ab_client_request_start(c, "nobody", "0123456789", 10,
                                            &(ab_request_opts_t){.timeout_ms = 20000}, NULL,
                                            NULL, NULL) == AB_OK);
        ab_client_flush(c);
        int64_t end = ab_now_ms() + 20000;
        while (ab_client_pending(c) && ab_now_ms() < end)
            ab_client_poll(c, 5); /* many turns that gather nothing */
        CHECK_EQ(ab_client_pending(c), 0);
        st = th_stats(ctl);
        REQUIRE(st != NULL);
        db = st->batches_in - b0;
        dm = st->batched_msgs_in - m0;
        agentbus__stats__free_unpacked(st, NULL);
        printf("round %d: %llu batches holding %llu requests\n", round,
               (unsigned long long)db, (unsigned long long)dm);
    }
    /* Round 0 starts at 64, round 1 at 128, round 2 at 256 (999 gathered:
     * 4 batches); cut back to 64 by the empty polls, it would be 16. */
    CHECK_TRUE(db > 0);
    CHECK_TRUE(dm >= (uint64_t)N - 1);
    CHECK_TRUE(db > 0 && dm / db > 128);
    ab_client_destroy(&c);
    ab_client_destroy(&ctl);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"many", s_many}, {"old_peer", s_old_peer}, {"lone", s_lone}, {"options", s_options},
        {"mixed", s_mixed}, {"register_batched", s_register_batched},
        {"batch_counts", s_batch_counts}, {"limit_grows", s_limit_grows},
        /* test_batching_lz4.c */
        {"lz4", batch_lz4}, {"lz4_local", batch_lz4_local},
        {"lz4_corrupt", batch_lz4_corrupt}, {"malformed", batch_malformed},
        /* test_batching_wire.c */
        {"client_decode", batch_client_decode}, {"cancel_flushed", batch_cancel_flushed},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
