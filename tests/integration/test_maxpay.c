/*
 * test_maxpay.c - the broker holds what it sends a client to the max
 * payload the client said in its HELLO (Hello.max_payload), against a real
 * broker and real clients. A client's library sets ZMQ_MAXMSGSIZE to its
 * max payload + 68 KiB: anything larger cut its connection (its calls in
 * flight failed, it dialed again), anything between was dropped unseen by
 * the library. "Not cut" is told by the broker's own token for the
 * connection (brokerctl agents' ID): the same before and after.
 *   send_over      direct messages of 100,000 B and 2,000 B to an agent
 *                  taking 1,000 B (named, and "~key") are refused
 *                  TOO_LARGE (send_wait, and AB_MSG_ERROR for ab_client_send)
 *                  and the agent still gets the next one on the same
 *                  connection (before: "delivered"; the first cut it, the
 *                  second vanished);
 *   mailbox_over   messages that waited in an offline agent's mailbox over
 *                  the max payload it comes back with are dropped and
 *                  their sender told TOO_LARGE; the small one after them
 *                  arrives (before: delivered into a dropped connection);
 *   publish_over   a subscriber taking 1,000 B does not get publications
 *                  of 100,000 and 2,000 B (a GAP of 2 says so; counted per
 *                  subscriber and in stats), another subscriber does, and
 *                  the next publication reaches both (before: the first
 *                  cut the small subscriber's connection);
 *   reply_over     a reply and a streamed chunk of 100,000 B to a client
 *                  taking 1,000 B end its calls AB_EPAYLOADSIZE, the chunk's
 *                  request is cancelled at the worker (capacity 1) whose
 *                  credit comes back (before: AB_EDISCONNECTED);
 *   batch_over     with batch-max-bytes 4 MiB, a burst of 2,000 answers of
 *                  1,000 B to a client taking 1,000 B: no BATCH passes what
 *                  it reads (before: BATCHes of up to 4 MiB cut it);
 *   worker_over    requests of 100,000 and 2,000 B to a worker taking
 *                  1,000 B (Register.max_payload) end AB_EPAYLOADSIZE at
 *                  once and never reach it; it keeps its connection and
 *                  answers the next small one; with a second worker of the
 *                  default max payload the large ones go to that one
 *                  (before: the first cut the worker's connection, the
 *                  second was answered MALFORMED by its library);
 *   hello_bounds   raw peers say max payloads 1, 0, 2^64-1 and a lz4 SEND
 *                  declaring 100,000 B: the broker bounds each (0 and
 *                  2^64-1 are its own max-payload-bytes) and judges the
 *                  lz4 one by its original size (before: no bound kept).
 * No clock in the assertions: each waits for a state, bounded by 20-30 s.
 */
#include "agentbus.h"
#include "codec.h"
#include "harness.h"
#include "msgtest.h"
#include "test.h"
#include "util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define S_SMALL 1000
#define S_BIG 100000 /* past 1,000 + 68 KiB: libzmq's limit for a 1,000 B client */
#define S_MID 2000   /* past 1,000, under that limit: the library drops it unseen */

static char s_big[S_BIG];

/* An agent named NAME (NULL: none) whose max payload is MAX (0: default),
 * its messages into BOX. */
static ab_client_t *s_agent(int port, const char *name, size_t max, mt_box_t *box)
{
    ab_options_t *o = ab_options_new();
    REQUIRE(o != NULL);
    REQUIRE(ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
    if (name)
        REQUIRE(ab_options_set_name(o, name) == AB_OK);
    if (max)
        REQUIRE(ab_options_set_max_payload(o, max) == AB_OK);
    ab_client_t *c = NULL;
    REQUIRE(ab_client_new(&c, o) == AB_OK);
    ab_options_destroy(&o);
    if (box)
        mt_box_attach(c, box);
    return c;
}

/* The AgentInfo of NAME ("" and ID: an unnamed one), copied into OUT; 1
 * when listed connected. */
static int s_agent_info(ab_client_t *ctl, const char *name, Agentbus__AgentInfo *out,
                        char id[64])
{
    Agentbus__AgentList *al = mt_agents(ctl);
    int found = 0;
    for (size_t i = 0; al && i < al->n_agents && !found; i++) {
        Agentbus__AgentInfo *a = al->agents[i];
        if (strcmp(a->name, name) == 0 && a->connected) {
            *out = *a;
            snprintf(id, 64, "%s", a->id);
            found = 1;
        }
    }
    if (al)
        agentbus__agent_list__free_unpacked(al, NULL);
    return found;
}

/* The broker's token for NAME's connection now ("" if not connected). */
static void s_conn_id(ab_client_t *ctl, const char *name, char id[64])
{
    Agentbus__AgentInfo a;
    if (!s_agent_info(ctl, name, &a, id))
        id[0] = '\0';
}

/* Polls C until its box holds an ERROR for ID, at most 20 s; its status. */
static int s_wait_error(ab_client_t *c, mt_box_t *box, uint64_t id)
{
    int64_t end = ab_now_ms() + 20000;
    while (ab_now_ms() < end) {
        for (int i = 0; i < box->n; i++)
            if (box->type[i] == AB_MSG_ERROR && box->id[i] == id)
                return box->status[i];
        ab_client_poll(c, 20);
    }
    return 0;
}

static uint64_t s_stat(ab_client_t *ctl, size_t off)
{
    Agentbus__Stats *st = th_stats(ctl);
    REQUIRE(st != NULL);
    uint64_t v = *(uint64_t *)((char *)st + off);
    agentbus__stats__free_unpacked(st, NULL);
    return v;
}
#define S_STAT(ctl, field) s_stat(ctl, offsetof(Agentbus__Stats, field))

/* --- send_over ----------------------------------------------------------- */

static void s_send_over(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    mt_box_t *rbox = calloc(2, sizeof *rbox), *tbox = calloc(1, sizeof *tbox);
    REQUIRE(rbox && tbox);
    ab_client_t *rx = s_agent(port, "rx", S_SMALL, &rbox[0]);
    ab_client_t *un = s_agent(port, NULL, S_SMALL, &rbox[1]);
    ab_client_t *tx = s_agent(port, "tx", 0, tbox);
    ab_client_t *ctl = th_client(port);
    REQUIRE(mt_wait_bound(ctl, "rx", 10000));
    char id0[64], uid[64], id1[64], to_un[70];
    s_conn_id(ctl, "rx", id0);
    ab_client_subscribe(un, "un.seen", 10000); /* listed by the broker from now on */
    s_conn_id(ctl, "", uid);
    REQUIRE(uid[0]);
    snprintf(to_un, sizeof to_un, "~%s", uid);
    int q = -1;
    int rc_big = ab_client_send_wait(tx, "rx", s_big, S_BIG, 0, 20000, &q);
    printf("send_over: 100000 B to rx (max 1000) -> %s (%s)\n", ab_status_name(rc_big),
           ab_client_last_error(tx));
    int rc_mid = ab_client_send_wait(tx, "rx", s_big, S_MID, 0, 20000, &q);
    printf("send_over: 2000 B to rx -> %s\n", ab_status_name(rc_mid));
    int rc_un = ab_client_send_wait(tx, to_un, s_big, S_MID, 0, 20000, &q);
    printf("send_over: 2000 B to %s (unnamed, max 1000) -> %s\n", to_un, ab_status_name(rc_un));
    uint64_t mid = 0;
    REQUIRE(ab_client_send(tx, "rx", s_big, S_BIG, 0, &mid) == AB_OK);
    int rc_async = s_wait_error(tx, tbox, mid);
    printf("send_over: ab_client_send of 100000 B -> AB_MSG_ERROR %s\n",
           rc_async ? ab_status_name(rc_async) : "none");
    CHECK_EQ(rc_big, AB_ETOOLARGE);
    CHECK_EQ(rc_mid, AB_ETOOLARGE);
    CHECK_EQ(rc_un, AB_ETOOLARGE);
    CHECK_EQ(rc_async, AB_ETOOLARGE);
    /* The next ones arrive, on the same connections. */
    CHECK_EQ(ab_client_send_wait(tx, "rx", "after", 5, 0, 20000, NULL), AB_OK);
    CHECK_EQ(ab_client_send_wait(tx, to_un, "after", 5, 0, 20000, NULL), AB_OK);
    CHECK_EQ(mt_wait(rx, &rbox[0], AB_MSG_DIRECT, 1, 20000), 1);
    CHECK_EQ(mt_wait(un, &rbox[1], AB_MSG_DIRECT, 1, 20000), 1);
    CHECK_STR(rbox[0].data[rbox[0].n - 1], "after");
    CHECK_STR(rbox[1].data[rbox[1].n - 1], "after");
    s_conn_id(ctl, "rx", id1);
    printf("send_over: rx's connection %s -> %s\n", id0, id1);
    CHECK_STR(id1, id0);
    CHECK_U64(S_STAT(ctl, msgs_too_large), 4);
    ab_client_destroy(&ctl);
    ab_client_destroy(&tx);
    ab_client_destroy(&un);
    ab_client_destroy(&rx);
    free(rbox);
    free(tbox);
}

/* --- mailbox_over -------------------------------------------------------- */

static void s_mailbox_over(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    mt_box_t *rbox = calloc(1, sizeof *rbox), *tbox = calloc(1, sizeof *tbox);
    REQUIRE(rbox && tbox);
    ab_client_t *tx = s_agent(port, "tx", 0, tbox);
    int q[3] = {0, 0, 0};
    REQUIRE(ab_client_send_wait(tx, "rx", s_big, S_MID, 0, 20000, &q[0]) == AB_OK);
    REQUIRE(ab_client_send_wait(tx, "rx", s_big, S_BIG, 0, 20000, &q[1]) == AB_OK);
    REQUIRE(ab_client_send_wait(tx, "rx", "small", 5, 0, 20000, &q[2]) == AB_OK);
    CHECK_EQ(q[0] + q[1] + q[2], 3); /* all three wait for rx */
    ab_client_t *rx = s_agent(port, "rx", S_SMALL, rbox);
    CHECK_EQ(mt_wait(rx, rbox, AB_MSG_DIRECT, 1, 20000), 1);
    CHECK_STR(rbox->data[0], "small");
    /* Both big ones are refused to tx, after their "queued". */
    int64_t end = ab_now_ms() + 20000;
    while (tbox->count[AB_MSG_ERROR] < 2 && ab_now_ms() < end)
        ab_client_poll(tx, 20);
    printf("mailbox_over: rx got %d direct message(s); tx got %d error(s)\n",
           rbox->count[AB_MSG_DIRECT], tbox->count[AB_MSG_ERROR]);
    CHECK_EQ(tbox->count[AB_MSG_ERROR], 2);
    for (int i = 0; i < tbox->n; i++)
        if (tbox->type[i] == AB_MSG_ERROR)
            CHECK_EQ(tbox->status[i], AB_ETOOLARGE);
    char id0[64], id1[64];
    s_conn_id(tx, "rx", id0);
    CHECK_EQ(ab_client_send_wait(tx, "rx", "after", 5, 0, 20000, NULL), AB_OK);
    CHECK_EQ(mt_wait(rx, rbox, AB_MSG_DIRECT, 2, 20000), 2);
    s_conn_id(tx, "rx", id1);
    CHECK_STR(id1, id0);
    CHECK_U64(S_STAT(tx, msgs_too_large), 2);
    ab_client_destroy(&rx);
    ab_client_destroy(&tx);
    free(rbox);
    free(tbox);
}

/* --- publish_over -------------------------------------------------------- */

static void s_publish_over(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    mt_box_t *box = calloc(2, sizeof *box);
    REQUIRE(box);
    ab_client_t *sa = s_agent(port, "sa", S_SMALL, &box[0]);
    ab_client_t *sb = s_agent(port, "sb", 0, &box[1]);
    ab_client_t *pub = s_agent(port, "pub", 0, NULL);
    REQUIRE(ab_client_subscribe(sa, "t.x", 10000) == AB_OK);
    REQUIRE(ab_client_subscribe(sb, "t.", 10000) == AB_OK);
    char id0[64], id1[64];
    s_conn_id(pub, "sa", id0);
    REQUIRE(ab_client_publish(pub, "t.x", s_big, S_BIG, NULL) == AB_OK);
    REQUIRE(ab_client_publish(pub, "t.x", s_big, S_MID, NULL) == AB_OK);
    REQUIRE(ab_client_publish(pub, "t.x", "after", 5, NULL) == AB_OK);
    ab_client_t *all[3] = {sa, sb, pub}; /* each polled: pub's sends, everyone's beats */
    int64_t end = ab_now_ms() + 20000;
    while ((box[1].count[AB_MSG_TOPIC] < 3 || box[0].count[AB_MSG_TOPIC] < 1 ||
            box[0].dropped < 2) && ab_now_ms() < end)
        mt_pump(all, 3, 20);
    CHECK_EQ(box[1].count[AB_MSG_TOPIC], 3);
    printf("publish_over: sa got %d topic message(s), gaps of %llu; sb got %d\n",
           box[0].count[AB_MSG_TOPIC], (unsigned long long)box[0].dropped,
           box[1].count[AB_MSG_TOPIC]);
    CHECK_EQ(box[0].count[AB_MSG_TOPIC], 1);
    CHECK_STR(box[0].data[box[0].n - 1], "after");
    CHECK_U64(box[0].dropped, 2);
    CHECK_EQ(box[1].count[AB_MSG_GAP], 0);
    Agentbus__AgentInfo a;
    REQUIRE(s_agent_info(pub, "sa", &a, id1));
    printf("publish_over: sa's connection %s -> %s, sub_too_large %llu, max_payload %llu\n",
           id0, id1, (unsigned long long)a.sub_too_large, (unsigned long long)a.max_payload);
    CHECK_STR(id1, id0);
    CHECK_U64(a.sub_too_large, 2);
    CHECK_U64(a.sub_dropped, 0);
    CHECK_U64(a.max_payload, S_SMALL);
    CHECK_U64(S_STAT(pub, pub_too_large), 2);
    ab_client_destroy(&pub);
    ab_client_destroy(&sb);
    ab_client_destroy(&sa);
    free(box);
}

/* --- reply_over: a worker in a thread, capacity 1 ------------------------ */

typedef struct {
    int port;
    size_t max; /* its max payload (0: the default) */
    atomic_int stop, cancels, jobs;
    ab_job_t *held; /* the job streaming, until cancelled */
} s_wk_t;

static void s_cancel(ab_worker_t *w, uint64_t id, int why, void *arg)
{
    s_wk_t *k = arg;
    (void)why;
    if (k->held && ab_job_id(k->held) == id) {
        ab_worker_fail(w, &k->held, AB_ECANCELLED, "cancelled");
        atomic_fetch_add(&k->cancels, 1);
    }
}

static void s_job(ab_worker_t *w, ab_job_t *job, void *arg)
{
    s_wk_t *k = arg;
    size_t n = 0;
    const char *d = ab_job_data(job, &n);
    atomic_fetch_add(&k->jobs, 1);
    if (n && d[0] == 'B') { /* a reply over the client's max payload */
        ab_worker_reply(w, &job, s_big, S_BIG);
    } else if (n && d[0] == 'S') { /* a chunk over it, then nothing until cancelled */
        ab_worker_reply_part(w, job, s_big, S_BIG);
        k->held = job;
    } else {
        ab_worker_reply(w, &job, d, n);
    }
}

static void *s_wk_main(void *arg)
{
    s_wk_t *k = arg;
    ab_options_t *o = ab_options_new();
    REQUIRE(o != NULL && ab_options_set_endpoint(o, th_ep(k->port)) == AB_OK);
    if (k->max)
        REQUIRE(ab_options_set_max_payload(o, k->max) == AB_OK);
    ab_worker_t *w = NULL;
    REQUIRE(ab_worker_new(&w, o, "mp", 1) == AB_OK);
    ab_options_destroy(&o);
    ab_worker_set_cancel_handler(w, s_cancel, k);
    int64_t end = ab_now_ms() + 80000;
    while (!atomic_load(&k->stop) && ab_now_ms() < end)
        if (ab_worker_poll(w, 20, s_job, k) < 0)
            break;
    if (k->held)
        ab_job_destroy(&k->held);
    ab_worker_destroy(&w);
    return NULL;
}

static void s_reply_over(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    ab_client_t *c = s_agent(port, "rq", S_SMALL, NULL);
    s_wk_t k = {.port = port};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, s_wk_main, &k) == 0);
    REQUIRE(th_wait_workers(c, "mp", 1, 10000) == 0);
    REQUIRE(mt_wait_bound(c, "rq", 10000));
    char id0[64], id1[64];
    s_conn_id(c, "rq", id0);
    int rc = ab_client_request(c, "mp", "B", 1, 30000, NULL, NULL);
    printf("reply_over: reply of 100000 B to a client taking 1000 -> %s (%s)\n",
           ab_status_name(rc), ab_client_last_error(c));
    CHECK_EQ(rc, AB_EPAYLOADSIZE);
    th_answer_t a = {0};
    REQUIRE(ab_client_request_start(c, "mp", "S", 1, &(ab_request_opts_t){.timeout_ms = 30000},
                                    th_answer_cb, &a, NULL) == AB_OK);
    int64_t end = ab_now_ms() + 30000;
    while ((!a.finals || !atomic_load(&k.cancels)) && ab_now_ms() < end)
        ab_client_poll(c, 20);
    printf("reply_over: chunk of 100000 B -> %s after %d event(s), worker cancels %d\n",
           ab_status_name(a.status), a.events, atomic_load(&k.cancels));
    CHECK_EQ(a.status, AB_EPAYLOADSIZE);
    CHECK_EQ(a.finals, 1);
    CHECK_EQ(atomic_load(&k.cancels), 1);
    /* Capacity 1: answered only once the cancelled request gave its credit back. */
    CHECK_EQ(ab_client_request(c, "mp", "hi", 2, 30000, NULL, NULL), AB_OK);
    s_conn_id(c, "rq", id1);
    printf("reply_over: rq's connection %s -> %s\n", id0, id1);
    CHECK_STR(id1, id0);
    CHECK_U64(S_STAT(c, answers_too_large), 2);
    CHECK_U64(S_STAT(c, pending), 0);
    atomic_store(&k.stop, 1);
    pthread_join(th, NULL);
    ab_client_destroy(&c);
}

/* --- worker_over --------------------------------------------------------- */

/* The broker's token for the connection of SERVICE's only worker now. */
static void s_worker_id(ab_client_t *c, const char *service, char id[64])
{
    Agentbus__WorkerList *wl = th_workers(c);
    int n = 0;
    id[0] = '\0';
    for (size_t i = 0; wl && i < wl->n_workers; i++)
        if (strcmp(wl->workers[i]->service, service) == 0 && n++ == 0)
            snprintf(id, 64, "%s", wl->workers[i]->id);
    if (wl)
        agentbus__worker_list__free_unpacked(wl, NULL);
    CHECK_EQ(n, 1);
}

/* A request of SIZE bytes of s_big for a model (placement picks its
 * worker, not the service's plain pick): its final status. */
static int s_model_request(ab_client_t *c, size_t size)
{
    th_answer_t a = {0};
    ab_request_opts_t o = {.timeout_ms = 30000, .model = "any"};
    REQUIRE(ab_client_request_start(c, "mp", s_big, size, &o, th_answer_cb, &a, NULL) == AB_OK);
    int64_t end = ab_now_ms() + 30000;
    while (!a.finals && ab_now_ms() < end)
        ab_client_poll(c, 20);
    CHECK_EQ(a.finals, 1);
    return a.status;
}

static void s_worker_over(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    ab_client_t *c = s_agent(port, "rq", 0, NULL);
    /* Bytes lz4 cannot shrink: the request's frame is as large as it says. */
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < S_BIG; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        s_big[i] = (char)(x >> 32);
    }
    s_big[0] = 'x'; /* echoed (s_job) */
    s_wk_t small = {.port = port, .max = S_SMALL}, big = {.port = port};
    pthread_t ts, tb;
    REQUIRE(pthread_create(&ts, NULL, s_wk_main, &small) == 0);
    REQUIRE(th_wait_workers(c, "mp", 1, 10000) == 0);
    char id0[64], id1[64];
    s_worker_id(c, "mp", id0);
    static const size_t sizes[] = {S_BIG, S_MID};
    for (int i = 0; i < 2; i++) {
        int rc = ab_client_request(c, "mp", s_big, sizes[i], 30000, NULL, NULL);
        printf("worker_over: %zu B to a worker taking 1000 -> %s (%s)\n", sizes[i],
               ab_status_name(rc), ab_client_last_error(c));
        CHECK_EQ(rc, AB_EPAYLOADSIZE);
    }
    CHECK_EQ(s_model_request(c, S_BIG), AB_EPAYLOADSIZE);
    CHECK_EQ(ab_client_request(c, "mp", "hi", 2, 30000, NULL, NULL), AB_OK);
    CHECK_EQ(atomic_load(&small.jobs), 1); /* "hi" alone */
    s_worker_id(c, "mp", id1);
    printf("worker_over: the worker's connection %s -> %s\n", id0, id1);
    CHECK_STR(id1, id0);
    /* A worker that reads them: the large ones go to it, never to the other. */
    REQUIRE(pthread_create(&tb, NULL, s_wk_main, &big) == 0);
    REQUIRE(th_wait_workers(c, "mp", 2, 10000) == 0);
    for (int i = 0; i < 4; i++)
        CHECK_EQ(ab_client_request(c, "mp", s_big, S_BIG, 30000, NULL, NULL), AB_OK);
    CHECK_EQ(s_model_request(c, S_BIG), AB_OK);
    CHECK_EQ(atomic_load(&big.jobs), 5);
    CHECK_EQ(atomic_load(&small.jobs), 1);
    atomic_store(&small.stop, 1);
    atomic_store(&big.stop, 1);
    pthread_join(ts, NULL);
    pthread_join(tb, NULL);
    ab_client_destroy(&c);
}

/* --- batch_over ---------------------------------------------------------- */

static void s_count_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    int *n = arg;
    if (ev->final)
        n[ev->status == AB_OK ? 0 : 1]++;
}

static void s_batch_over(void)
{
    enum { N = 2000 };
    int port = th_free_port();
    th_broker(port, "--batch-max-bytes", "4M", NULL);
    th_worker(port, "bo", "--capacity", "2000", NULL); /* answers many at a time */
    ab_client_t *c = s_agent(port, "bq", S_SMALL, NULL);
    REQUIRE(th_wait_workers(c, "bo", 1, 10000) == 0);
    REQUIRE(mt_wait_bound(c, "bq", 10000));
    char id0[64], id1[64];
    s_conn_id(c, "bq", id0);
    int n[2] = {0, 0};
    for (int i = 0; i < N; i++)
        REQUIRE(ab_client_request_start(c, "bo", s_big, S_SMALL,
                                        &(ab_request_opts_t){.timeout_ms = 30000}, s_count_cb, n,
                                        NULL) == AB_OK);
    int64_t end = ab_now_ms() + 35000;
    while (n[0] + n[1] < N && ab_now_ms() < end)
        ab_client_poll(c, 20);
    printf("batch_over: %d answered, %d failed (%s)\n", n[0], n[1], ab_client_last_error(c));
    CHECK_EQ(n[0], N);
    CHECK_EQ(n[1], 0);
    s_conn_id(c, "bq", id1);
    printf("batch_over: bq's connection %s -> %s\n", id0, id1);
    CHECK_STR(id1, id0);
    ab_client_destroy(&c);
}

/* --- hello_bounds -------------------------------------------------------- */

/* A raw peer saying HELLO as NAME with MAX_PAYLOAD; waits for the answer. */
static void *s_raw_hello(int port, void **ctx, const char *name, uint64_t max_payload)
{
    void *raw = mt_raw(port, ctx);
    Agentbus__Hello m;
    agentbus__hello__init(&m);
    m.name = (char *)name;
    m.role = (char *)"agent";
    m.max_payload = max_payload;
    uint8_t buf[256];
    size_t len = agentbus__hello__pack(&m, buf);
    ab_header_t h = ab_header_init(AB_KIND_HELLO);
    h.id = 1;
    mt_raw_send(raw, &h, buf, len);
    zmq_msg_t r;
    zmq_msg_init(&r);
    REQUIRE(zmq_msg_recv(&r, raw, 0) >= 0); /* the HELLO answer */
    zmq_msg_close(&r);
    return raw;
}

/* The max payload the broker lists for NAME. */
static uint64_t s_listed_max(ab_client_t *ctl, const char *name)
{
    Agentbus__AgentInfo a;
    char id[64];
    REQUIRE(mt_wait_bound(ctl, name, 10000));
    return s_agent_info(ctl, name, &a, id) ? a.max_payload : 0;
}

static void s_hello_bounds(void)
{
    int port = th_free_port();
    th_broker(port, "--max-payload-bytes", "1M", NULL);
    void *ctx[4], *raw[4];
    raw[0] = s_raw_hello(port, &ctx[0], "one", 1);
    raw[1] = s_raw_hello(port, &ctx[1], "zero", 0);
    raw[2] = s_raw_hello(port, &ctx[2], "huge", UINT64_MAX);
    raw[3] = s_raw_hello(port, &ctx[3], "small", S_SMALL);
    ab_client_t *tx = s_agent(port, "tx", 0, NULL);
    CHECK_U64(s_listed_max(tx, "one"), 1);
    CHECK_U64(s_listed_max(tx, "zero"), 1 << 20);
    CHECK_U64(s_listed_max(tx, "huge"), 1 << 20);
    CHECK_U64(s_listed_max(tx, "small"), S_SMALL);
    CHECK_EQ(ab_client_send_wait(tx, "one", "x", 1, 0, 20000, NULL), AB_OK);
    CHECK_EQ(ab_client_send_wait(tx, "one", "xy", 2, 0, 20000, NULL), AB_ETOOLARGE);
    CHECK_EQ(ab_client_send_wait(tx, "zero", s_big, S_BIG, 0, 20000, NULL), AB_OK);
    CHECK_EQ(ab_client_send_wait(tx, "huge", s_big, S_BIG, 0, 20000, NULL), AB_OK);
    /* A SEND flagged lz4, small on the wire, declaring 100,000 B: judged by
     * that, as its receiver would inflate it. */
    void *sctx, *snd = mt_raw(port, &sctx);
    ab_header_t h = ab_header_init(AB_KIND_SEND);
    h.id = 77;
    h.target = ab_view_of("small");
    h.flags = AB_FLAG_LZ4;
    h.original_size = S_BIG;
    h.credit = 1;
    mt_raw_send(snd, &h, s_big, 100);
    int code = -1;
    int64_t end = ab_now_ms() + 20000;
    while (code < 0 && ab_now_ms() < end) {
        zmq_msg_t r;
        zmq_msg_init(&r);
        if (zmq_msg_recv(&r, snd, 0) >= 0) {
            ab_header_t a;
            if (ab_header_parse(zmq_msg_data(&r), zmq_msg_size(&r), &a) == AB_OK &&
                a.correlation_id == 77)
                code = a.kind == AB_KIND_ERROR ? (int)a.error_code : 0;
        }
        zmq_msg_close(&r);
    }
    printf("hello_bounds: lz4 SEND declaring 100000 B to a 1000 B agent -> %d\n", code);
    CHECK_EQ(code, AB_ERR_TOO_LARGE);
    zmq_close(snd);
    zmq_ctx_term(sctx);
    for (int i = 0; i < 4; i++) {
        zmq_close(raw[i]);
        zmq_ctx_term(ctx[i]);
    }
    ab_client_destroy(&tx);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"send_over", s_send_over},       {"mailbox_over", s_mailbox_over},
        {"publish_over", s_publish_over}, {"reply_over", s_reply_over},
        {"worker_over", s_worker_over},
        {"batch_over", s_batch_over},     {"hello_bounds", s_hello_bounds},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
