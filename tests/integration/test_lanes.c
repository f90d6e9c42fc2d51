/*
 * test_lanes.c - priority lanes, fair queuing and client quotas (issue 16)
 * against a real broker process.
 *
 * The worker is in this process, with capacity 1, and holds each job until
 * the test has seen the broker's queue in the state it wants: the order the
 * worker receives jobs in is then exactly the broker's dispatch order, with
 * no timing involved. Every wait pumps every handle (heartbeats) and is
 * bounded.
 */
#include "harness.h"
#include "rawpeer.h"
#include "test.h"
#include "util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define WAIT_MS 20000

typedef struct {
    int finals, status, ok, busy;
    char error[256];
} s_slot_t;

static void s_on_reply(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    s_slot_t *s = arg;
    if (!ev->final)
        return;
    s->finals++;
    s->status = ev->status;
    s->ok += ev->status == AB_OK;
    s->busy += ev->status == AB_EBUSY;
    snprintf(s->error, sizeof s->error, "%s", ev->error_text ? ev->error_text : "");
}

static ab_client_t *s_named(int port, const char *name)
{
    ab_options_t *o = ab_options_new();
    REQUIRE(o && ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
    if (name)
        REQUIRE(ab_options_set_name(o, name) == AB_OK);
    ab_client_t *c = NULL;
    REQUIRE(ab_client_new(&c, o) == AB_OK);
    ab_options_destroy(&o);
    return c;
}

static ab_worker_t *s_worker(int port, const char *service)
{
    ab_options_t *o = ab_options_new();
    REQUIRE(o && ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
    ab_worker_t *w = NULL;
    REQUIRE(ab_worker_new(&w, o, service, 1) == AB_OK);
    ab_options_destroy(&o);
    return w;
}

/* Handles to keep alive (heartbeats, replies) while the test waits. */
static ab_client_t *s_cl[4];
static ab_worker_t *s_wk[2];

static void s_pump(void)
{
    for (int i = 0; i < 4; i++)
        if (s_cl[i])
            ab_client_poll(s_cl[i], 0);
    for (int i = 0; i < 2; i++) {
        ab_job_t *j = NULL;
        /* A worker holding its one job has no credit: nothing may arrive. */
        if (s_wk[i] && ab_worker_recv(s_wk[i], &j, 5) == AB_OK) {
            CHECK_TRUE(!"a job arrived at a worker without credit");
            ab_job_destroy(&j);
        }
    }
    th_sleep_ms(5);
}

static void s_send(ab_client_t *c, const char *svc, const char *data, uint32_t prio, s_slot_t *s)
{
    CHECK_EQ(ab_client_request_start(c, svc, data, strlen(data),
                                     &(ab_request_opts_t){.timeout_ms = 120000,
                                                          .priority = prio},
                                     s_on_reply, s, NULL),
             AB_OK);
    ab_client_flush(c);
}

/* Depth of LANE of SVC as the broker reports it (brokerctl services), or -1. */
static int s_depth(ab_client_t *ctl, const char *svc, const char *lane)
{
    void *buf = NULL;
    size_t len = 0;
    if (ab_client_control(ctl, "services", 5000, &buf, &len) != AB_OK)
        return -1;
    Agentbus__ServiceList *sl = agentbus__service_list__unpack(NULL, len, buf);
    ab_free(buf);
    int depth = -1;
    for (size_t i = 0; sl && i < sl->n_services; i++)
        for (size_t k = 0; strcmp(sl->services[i]->name, svc) == 0 && k < sl->services[i]->n_lanes;
             k++)
            if (strcmp(sl->services[i]->lanes[k]->name, lane) == 0)
                depth = (int)sl->services[i]->lanes[k]->depth;
    agentbus__service_list__free_unpacked(sl, NULL);
    return depth;
}

static int s_wait_depth(ab_client_t *ctl, const char *svc, const char *lane, int want)
{
    for (int64_t end = ab_now_ms() + WAIT_MS; ab_now_ms() < end; s_pump())
        if (s_depth(ctl, svc, lane) == want)
            return 0;
    fprintf(stderr, "lane %s of %s: depth %d, wanted %d\n", lane, svc, s_depth(ctl, svc, lane),
            want);
    return -1;
}

/* The worker's next job (bounded wait, pumping the others); its payload's
 * first byte says whose it is. */
static ab_job_t *s_next_job(ab_worker_t *w, char *who)
{
    ab_job_t *j = NULL;
    for (int64_t end = ab_now_ms() + WAIT_MS; !j && ab_now_ms() < end;) {
        if (ab_worker_recv(w, &j, 20) == AB_OK)
            break;
        for (int i = 0; i < 4; i++)
            if (s_cl[i])
                ab_client_poll(s_cl[i], 0);
    }
    REQUIRE(j != NULL);
    size_t n = 0;
    const char *d = ab_job_data(j, &n);
    *who = n ? d[0] : '?';
    return j;
}

static void s_answer(ab_worker_t *w, ab_job_t **j)
{
    CHECK_EQ(ab_worker_reply(w, j, "ok", 2), AB_OK);
}

static int s_wait_worker(ab_client_t *ctl, const char *svc)
{
    return th_wait_workers(ctl, svc, 1, 100); /* short: the caller pumps the worker */
}

/* --- a batch flood, then one interactive request ---------------------------------- */
static void s_interactive_first(void)
{
    int port = th_free_port();
    th_broker(port, "--startup-grace-ms", "0", NULL);
    ab_client_t *ctl = s_cl[0] = th_client(port);
    ab_client_t *flood = s_cl[1] = s_named(port, "flood");
    ab_client_t *voice = s_cl[2] = s_named(port, "voice");
    ab_client_t *chat = s_cl[3] = s_named(port, "chat");
    ab_worker_t *w = s_worker(port, "gen"); /* in s_wk[0] (pumped) only while it holds a job */
    for (int64_t end = ab_now_ms() + WAIT_MS; s_wait_worker(ctl, "gen") != 0;) {
        ab_job_t *j = NULL;
        ab_worker_recv(w, &j, 50);
        REQUIRE(ab_now_ms() < end);
    }
    enum { NB = 40, NI = 40 };
    static s_slot_t sb[NB], si[NI + 1];
    for (int i = 0; i < NB; i++)
        s_send(flood, "gen", "b", AB_PRIORITY_BATCH, &sb[i]);
    char who;
    ab_job_t *j = s_next_job(w, &who);
    CHECK_EQ(who, 'b');
    s_wk[0] = w;
    REQUIRE(s_wait_depth(ctl, "gen", "batch", NB - 1) == 0);
    /* The interactive request arrives behind 39 queued batch requests... */
    s_send(voice, "gen", "i", AB_PRIORITY_INTERACTIVE, &si[NI]);
    REQUIRE(s_wait_depth(ctl, "gen", "interactive", 1) == 0);
    s_wk[0] = NULL;
    s_answer(w, &j);
    /* ...and is the next one the worker gets. */
    j = s_next_job(w, &who);
    CHECK_EQ(who, 'i');
    /* Now an interactive flood beside the batch one: the batch lane still
     * gets its minimum share, 1 of every 10 dispatches (lane-batch-min-pct). */
    s_wk[0] = w;
    for (int i = 0; i < NI; i++)
        s_send(chat, "gen", "c", AB_PRIORITY_INTERACTIVE, &si[i]);
    REQUIRE(s_wait_depth(ctl, "gen", "interactive", NI) == 0);
    s_wk[0] = NULL;
    s_answer(w, &j);
    int batch = 0, inter = 0;
    for (int k = 0; k < 30; k++) {
        j = s_next_job(w, &who);
        batch += who == 'b';
        inter += who == 'c';
        s_answer(w, &j);
    }
    printf("30 dispatches with both lanes full: %d batch, %d interactive\n", batch, inter);
    CHECK_RANGE(batch, 3, 4);
    CHECK_EQ(batch + inter, 30);
    /* Everything else completes: nothing lost. */
    for (int k = 0; k < NB + NI + 1 - 32; k++) {
        j = s_next_job(w, &who);
        s_answer(w, &j);
    }
    int done = 0;
    for (int64_t end = ab_now_ms() + WAIT_MS; ab_now_ms() < end && done < NB + NI + 1; s_pump()) {
        done = 0;
        for (int i = 0; i < NB; i++)
            done += sb[i].ok;
        for (int i = 0; i <= NI; i++)
            done += si[i].ok;
    }
    CHECK_EQ(done, NB + NI + 1);
    ab_worker_destroy(&w);
    for (int i = 0; i < 4; i++)
        ab_client_destroy(&s_cl[i]);
}

/* --- two agents with 1,000 and 1 queued requests -------------------------------------- */
static void s_fair_single(void)
{
    int port = th_free_port();
    th_broker(port, "--startup-grace-ms", "0", NULL);
    ab_client_t *ctl = s_cl[0] = th_client(port);
    ab_client_t *big = s_cl[1] = s_named(port, "big");
    ab_client_t *one = s_cl[2] = s_named(port, "one");
    ab_worker_t *w = s_worker(port, "gen");
    for (int64_t end = ab_now_ms() + WAIT_MS; s_wait_worker(ctl, "gen") != 0;) {
        ab_job_t *j = NULL;
        ab_worker_recv(w, &j, 50);
        REQUIRE(ab_now_ms() < end);
    }
    enum { N = 1000 };
    static s_slot_t sb[N], s1;
    for (int i = 0; i < N; i++)
        s_send(big, "gen", "B", 0, &sb[i]);
    char who;
    ab_job_t *j = s_next_job(w, &who);
    s_wk[0] = w;
    REQUIRE(s_wait_depth(ctl, "gen", "normal", N - 1) == 0);
    s_send(one, "gen", "1", 0, &s1);
    REQUIRE(s_wait_depth(ctl, "gen", "normal", N) == 0);
    s_wk[0] = NULL;
    s_answer(w, &j);
    /* The single request is served within two service times, not 1,000. */
    int at = 0;
    for (int k = 1; k <= 3 && !at; k++) {
        j = s_next_job(w, &who);
        if (who == '1')
            at = k;
        s_answer(w, &j);
    }
    printf("the single request was dispatch %d after it queued behind %d\n", at, N - 1);
    CHECK_RANGE(at, 1, 2);
    for (int64_t end = ab_now_ms() + WAIT_MS; ab_now_ms() < end && !s1.finals;)
        ab_client_poll(one, 20);
    CHECK_EQ(s1.ok, 1);
    ab_worker_destroy(&w);
    for (int i = 0; i < 4; i++)
        ab_client_destroy(&s_cl[i]);
}

/* The broker's record of client IDENT (brokerctl clients), into *OUT. */
static int s_client_info(ab_client_t *ctl, const char *ident, Agentbus__ClientInfo *out)
{
    void *buf = NULL;
    size_t len = 0;
    if (ab_client_control(ctl, "clients", 5000, &buf, &len) != AB_OK)
        return -1;
    Agentbus__ClientList *cl = agentbus__client_list__unpack(NULL, len, buf);
    ab_free(buf);
    int found = -1;
    for (size_t i = 0; cl && i < cl->n_clients; i++)
        if (strcmp(cl->clients[i]->client, ident) == 0) {
            *out = *cl->clients[i];
            out->client = NULL;
            found = 0;
        }
    agentbus__client_list__free_unpacked(cl, NULL);
    return found;
}

/* --- a client over its queued quota: BUSY, nothing lost --------------------------------- */
static void s_quota_busy(void)
{
    int port = th_free_port();
    th_broker(port, "--startup-grace-ms", "0", "--max-client-queued", "5", NULL);
    ab_client_t *ctl = s_cl[0] = th_client(port);
    ab_client_t *greedy = s_cl[1] = s_named(port, "greedy");
    ab_client_t *other = s_cl[2] = s_named(port, "other");
    ab_worker_t *w = s_worker(port, "gen");
    for (int64_t end = ab_now_ms() + WAIT_MS; s_wait_worker(ctl, "gen") != 0;) {
        ab_job_t *j = NULL;
        ab_worker_recv(w, &j, 50);
        REQUIRE(ab_now_ms() < end);
    }
    enum { N = 20 };
    static s_slot_t sg[N], so[3];
    s_send(greedy, "gen", "g", 0, &sg[0]);
    char who;
    ab_job_t *j = s_next_job(w, &who); /* one at the worker */
    s_wk[0] = w;
    for (int i = 1; i < N; i++)
        s_send(greedy, "gen", "g", (uint32_t)(i % 4), &sg[i]); /* over several lanes */
    int busy = 0;
    for (int64_t end = ab_now_ms() + WAIT_MS; ab_now_ms() < end && busy < N - 6; s_pump()) {
        busy = 0;
        for (int i = 0; i < N; i++)
            busy += sg[i].busy;
    }
    CHECK_EQ(busy, N - 6); /* 1 at the worker, 5 queued */
    for (int i = 0; i < N; i++)
        if (sg[i].busy) {
            CHECK_TRUE(strstr(sg[i].error, "max-client-queued") != NULL);
            CHECK_TRUE(strstr(sg[i].error, "retry after") != NULL);
        }
    /* Another client is not held back by the first one's quota. */
    for (int i = 0; i < 3; i++)
        s_send(other, "gen", "o", 0, &so[i]);
    REQUIRE(s_wait_depth(ctl, "gen", "normal", 2 + 3) == 0); /* greedy's 2 normal + 3 */
    Agentbus__ClientInfo ci;
    REQUIRE(s_client_info(ctl, "greedy", &ci) == 0);
    CHECK_EQ(ci.queued, 5);
    CHECK_EQ(ci.in_flight, 1);
    CHECK_EQ(ci.refused, N - 6);
    Agentbus__Stats *st = th_stats(ctl);
    REQUIRE(st != NULL);
    CHECK_EQ(st->client_queue_busy, N - 6);
    agentbus__stats__free_unpacked(st, NULL);
    /* Everything admitted is answered: each request exactly one final. */
    s_wk[0] = NULL;
    s_answer(w, &j);
    for (int k = 0; k < 5 + 3; k++) {
        j = s_next_job(w, &who);
        s_answer(w, &j);
    }
    int finals = 0, ok = 0;
    for (int64_t end = ab_now_ms() + WAIT_MS; ab_now_ms() < end && ok < 6 + 3; s_pump()) {
        finals = ok = 0;
        for (int i = 0; i < N; i++)
            finals += sg[i].finals, ok += sg[i].ok;
        for (int i = 0; i < 3; i++)
            finals += so[i].finals, ok += so[i].ok;
    }
    CHECK_EQ(ok, 6 + 3);
    CHECK_EQ(finals, N + 3);
    for (int i = 0; i < N; i++)
        CHECK_EQ(sg[i].finals, 1);
    ab_worker_destroy(&w);
    for (int i = 0; i < 4; i++)
        ab_client_destroy(&s_cl[i]);
}

/* A queued quota of one: the refusal counts it in the singular, "has 1
 * request queued" (it said "1 requests"). */
static void s_quota_one(void)
{
    int port = th_free_port();
    th_broker(port, "--startup-grace-ms", "0", "--max-client-queued", "1", NULL);
    ab_client_t *ctl = s_cl[0] = th_client(port);
    ab_client_t *greedy = s_cl[1] = s_named(port, "greedy");
    ab_worker_t *w = s_worker(port, "gen");
    for (int64_t end = ab_now_ms() + WAIT_MS; s_wait_worker(ctl, "gen") != 0;) {
        ab_job_t *j = NULL;
        ab_worker_recv(w, &j, 50);
        REQUIRE(ab_now_ms() < end);
    }
    static s_slot_t sg[3];
    s_send(greedy, "gen", "g", 0, &sg[0]);
    char who;
    ab_job_t *j = s_next_job(w, &who); /* one at the worker */
    s_wk[0] = w;
    s_send(greedy, "gen", "g", 0, &sg[1]); /* queued */
    REQUIRE(s_wait_depth(ctl, "gen", "normal", 1) == 0);
    s_send(greedy, "gen", "g", 0, &sg[2]); /* over the quota */
    for (int64_t end = ab_now_ms() + WAIT_MS; ab_now_ms() < end && !sg[2].busy; s_pump())
        ;
    REQUIRE(sg[2].busy == 1);
    printf("refused: %s\n", sg[2].error);
    CHECK_TRUE(strstr(sg[2].error, "client greedy has 1 request queued (max-client-queued)") !=
               NULL);
    s_wk[0] = NULL;
    s_answer(w, &j);
    j = s_next_job(w, &who);
    s_answer(w, &j);
    for (int64_t end = ab_now_ms() + WAIT_MS; ab_now_ms() < end && sg[1].finals < 1; s_pump())
        ;
    CHECK_EQ(sg[0].ok + sg[1].ok, 2);
    ab_worker_destroy(&w);
    for (int i = 0; i < 4; i++)
        ab_client_destroy(&s_cl[i]);
}

/* --- a client killed with requests queued in several lanes ------------------------------- */
static void s_leave_queued(void)
{
    int port = th_free_port();
    th_broker(port, "--startup-grace-ms", "0", NULL);
    ab_client_t *ctl = s_cl[0] = th_client(port);
    ab_worker_t *w1 = s_worker(port, "one"), *w2 = s_worker(port, "two");
    for (int64_t end = ab_now_ms() + WAIT_MS;
         s_wait_worker(ctl, "one") != 0 || s_wait_worker(ctl, "two") != 0;) {
        ab_job_t *j = NULL;
        ab_worker_recv(w1, &j, 20);
        ab_worker_recv(w2, &j, 20);
        REQUIRE(ab_now_ms() < end);
    }
    ab_client_t *keep = s_cl[1] = s_named(port, "keep");
    static s_slot_t sk[2];
    s_send(keep, "one", "k", 0, &sk[0]);
    s_send(keep, "two", "k", 0, &sk[1]);
    char who;
    ab_job_t *j1 = s_next_job(w1, &who), *j2 = s_next_job(w2, &who);
    s_wk[0] = w1, s_wk[1] = w2;
    /* One client (its own process) with requests waiting in three lanes. */
    const char *args[] = {"--broker", th_ep(port), "--service", "one", "--agents", "1",
                          "--window", "12", "--seconds", "600", "--priority",
                          "batch,interactive,normal", NULL};
    pid_t child = th_spawn("agentbus-load", args, NULL);
    Agentbus__ClientInfo ci = {0};
    for (int64_t end = ab_now_ms() + WAIT_MS;
         ab_now_ms() < end && (s_client_info(ctl, "demo-agent-0", &ci) != 0 || ci.queued != 12);)
        s_pump();
    CHECK_EQ(ci.queued, 12);
    REQUIRE(s_depth(ctl, "one", "batch") == 4 && s_depth(ctl, "one", "interactive") == 4);
    th_kill9(child);
    /* The broker forgets it: its flows in every lane go with its requests. */
    int gone = 0;
    for (int64_t end = ab_now_ms() + WAIT_MS; ab_now_ms() < end && !gone; s_pump())
        gone = s_client_info(ctl, "demo-agent-0", &ci) != 0 && s_depth(ctl, "one", "batch") == 0 &&
               s_depth(ctl, "one", "normal") == 0 && s_depth(ctl, "one", "interactive") == 0 &&
               s_depth(ctl, "two", "normal") == 0 && s_depth(ctl, "two", "interactive") == 0 &&
               s_depth(ctl, "two", "batch") == 0;
    CHECK_TRUE(gone);
    /* And keeps serving: the held jobs answer, new requests queue and run. */
    s_wk[0] = s_wk[1] = NULL;
    s_answer(w1, &j1);
    s_answer(w2, &j2);
    static s_slot_t more[3];
    for (int i = 0; i < 3; i++)
        s_send(keep, "one", "m", (uint32_t)i + 1, &more[i]);
    for (int k = 0; k < 3; k++) {
        ab_job_t *j = s_next_job(w1, &who);
        CHECK_EQ(who, 'm');
        s_answer(w1, &j);
    }
    int ok = 0;
    for (int64_t end = ab_now_ms() + WAIT_MS; ab_now_ms() < end && ok < 5;) {
        ab_client_poll(keep, 20);
        ok = sk[0].ok + sk[1].ok + more[0].ok + more[1].ok + more[2].ok;
    }
    CHECK_EQ(ok, 5);
    ab_worker_destroy(&w1);
    ab_worker_destroy(&w2);
    for (int i = 0; i < 4; i++)
        ab_client_destroy(&s_cl[i]);
}

/* --- a deadline that cannot be met is answered at once, not dispatched ------------------- */
static void s_deadline_early(void)
{
    int port = th_free_port();
    th_broker(port, "--startup-grace-ms", "0", NULL);
    th_worker(port, "slow", "--capacity", "1", "--delay-ms", "400", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "slow", 1, WAIT_MS) == 0);
    void *reply = NULL;
    size_t rlen = 0;
    /* One answer teaches the broker that this service takes >= 400 ms. */
    CHECK_EQ(ab_client_request(c, "slow", "x", 1, 30000, &reply, &rlen), AB_OK);
    ab_free(reply);
    /* 50 ms can never be enough: DEADLINE at once, the worker never sees it. */
    static s_slot_t s;
    CHECK_EQ(ab_client_request_start(c, "slow", "y", 1, &(ab_request_opts_t){.timeout_ms = 50},
                                     s_on_reply, &s, NULL),
             AB_OK);
    for (int64_t end = ab_now_ms() + WAIT_MS; ab_now_ms() < end && !s.finals;)
        ab_client_poll(c, 20);
    CHECK_EQ(s.status, AB_EDEADLINE);
    CHECK_TRUE(strstr(s.error, "cannot be met") != NULL);
    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    CHECK_EQ(st->deadline_early, 1);
    CHECK_EQ(st->replies, 1);
    agentbus__stats__free_unpacked(st, NULL);
    /* Enough time left: served as usual. */
    CHECK_EQ(ab_client_request(c, "slow", "z", 1, 30000, &reply, &rlen), AB_OK);
    ab_free(reply);
    /* Per model: the answers to "big" say nothing of "tiny" (a service
     * serving a slow and a fast model refused the fast one's short
     * deadlines after the slow one's answers). */
    static s_slot_t m[3];
    const char *model[3] = {"big", "big", "tiny"};
    const int ms[3] = {30000, 50, 50};
    for (int i = 0; i < 3; i++) {
        ab_request_opts_t o = {.timeout_ms = ms[i], .model = model[i]};
        CHECK_EQ(ab_client_request_start(c, "slow", "m", 1, &o, s_on_reply, &m[i], NULL), AB_OK);
        for (int64_t end = ab_now_ms() + WAIT_MS; ab_now_ms() < end && !m[i].finals;)
            ab_client_poll(c, 20);
        CHECK_EQ(m[i].finals, 1);
    }
    CHECK_EQ(m[0].status, AB_OK);
    CHECK_EQ(m[1].status, AB_EDEADLINE);
    CHECK_TRUE(strstr(m[1].error, "cannot be met") != NULL);
    CHECK_EQ(m[2].status, AB_EDEADLINE); /* dispatched: its own deadline passed */
    CHECK_TRUE(strstr(m[2].error, "cannot be met") == NULL);
    st = th_stats(c);
    REQUIRE(st != NULL);
    CHECK_EQ(st->deadline_early, 2);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&c);
}

/* --- what a user types: brokerctl --priority, services, clients --------------------------- */
static void s_cli(void)
{
    int port = th_free_port();
    th_broker(port, "--startup-grace-ms", "0", NULL);
    th_worker(port, "echo", NULL);
    ab_client_t *ctl = th_client(port);
    REQUIRE(th_wait_workers(ctl, "echo", 1, WAIT_MS) == 0);
    char cmd[1024], out[8192];
    snprintf(cmd, sizeof cmd, "%s --broker %s request --priority interactive echo hi",
             th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "hi") != NULL);
    snprintf(cmd, sizeof cmd, "%s --broker %s request --priority batch echo hi",
             th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    snprintf(cmd, sizeof cmd, "%s --broker %s request --priority urgent echo hi",
             th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 2); /* a usage error */
    snprintf(cmd, sizeof cmd, "%s --broker %s services", th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "WAIT_P99") != NULL);
    CHECK_TRUE(strstr(out, "interactive") != NULL);
    CHECK_TRUE(strstr(out, "batch") != NULL);
    snprintf(cmd, sizeof cmd, "%s --broker %s --json services", th_bin("brokerctl"),
             th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "\"wait_p50_us\"") != NULL);
    /* A client is listed once it has sent a request, while connected. */
    void *reply = NULL;
    size_t rlen = 0;
    CHECK_EQ(ab_client_request(ctl, "echo", "x", 1, 5000, &reply, &rlen), AB_OK);
    ab_free(reply);
    snprintf(cmd, sizeof cmd, "%s --broker %s clients", th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "REFUSED") != NULL);
    snprintf(cmd, sizeof cmd, "%s --broker %s --json clients", th_bin("brokerctl"),
             th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "\"in_flight\"") != NULL);
    snprintf(cmd, sizeof cmd, "%s --broker %s stats", th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "client queue busy 0") != NULL);
    snprintf(cmd, sizeof cmd, "%s --broker %s --json stats", th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "\"deadline_early\"") != NULL);
    ab_client_destroy(&ctl);
}

/* --- --client-weights reach the clients they name ------------------------------------- */
/* The weights the broker applies are those the start-up check passed: one
 * reader (ab_parse_weight_item) for both. Empty items and spaces are
 * separators; an unnamed client keeps weight 1. */
static void s_weights(void)
{
    int port = th_free_port();
    th_broker(port, "--startup-grace-ms", "0", "--client-weights", " voice=4,,plan=2 x=7", NULL);
    th_worker(port, "echo", NULL);
    ab_client_t *ctl = s_cl[0] = th_client(port);
    REQUIRE(th_wait_workers(ctl, "echo", 1, WAIT_MS) == 0);
    static const char *names[] = {"voice", "plan", "other"};
    static const int want[] = {4, 2, 1};
    for (int i = 0; i < 3; i++) {
        ab_client_t *c = s_cl[1 + i] = s_named(port, names[i]);
        void *reply = NULL;
        size_t rlen = 0;
        CHECK_EQ(ab_client_request(c, "echo", "w", 1, 5000, &reply, &rlen), AB_OK);
        ab_free(reply);
        Agentbus__ClientInfo ci;
        CHECK_EQ(s_client_info(ctl, names[i], &ci), 0);
        CHECK_EQ((int)ci.weight, want[i]);
    }
    for (int i = 0; i < 4; i++)
        ab_client_destroy(&s_cl[i]);
}

/* --- a renamed connection is its new name's client ------------------------------------ */
/* A connection that renames itself (HELLO with another name) is its new
 * name's client from its next request on. The broker tells a rename by its
 * agent record: the old name's record is freed at the rename (its mailbox
 * empty), and the new one may be given the same address; compared by
 * address, the rename went unseen and the requests were the old name's. */
static void s_rename_ident(void)
{
    enum { N = 200 };
    int port = th_free_port();
    th_broker(port, "--startup-grace-ms", "0", NULL);
    ab_client_t *ctl = s_cl[0] = th_client(port);
    void *socks[2];
    void *wk = socks[0] = rp_raw(port, NULL, 0);
    void *ag = socks[1] = rp_raw(port, NULL, 0);
    rp_register(wk, "hold", 100000, 0); /* holds every request, answers none */
    char name[32];
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "rn-%d", i);
        rp_hello(ag, name, 7, 0, 1000000 + (uint64_t)i);
        rp_request(ag, (uint64_t)i + 1, "hold", 0, "x", 1);
        if (i % 20 == 0) {
            rp_beat(wk);
            rp_beat(ag);
        }
    }
    /* Wait (bounded) for the worker to hold all N. */
    int got = 0;
    for (int64_t end = ab_now_ms() + WAIT_MS; got < N && ab_now_ms() < end;) {
        rp_msg_t m;
        if (!rp_wait(wk, AB_KIND_REQUEST, &m, 200, socks, 2))
            continue;
        got++;
        rp_close(&m);
    }
    CHECK_EQ(got, N);
    int wrong = 0;
    for (int i = 0; i < N; i++) {
        Agentbus__ClientInfo ci;
        snprintf(name, sizeof name, "rn-%d", i);
        if (s_client_info(ctl, name, &ci) != 0 || ci.in_flight != 1 || ci.requests != 1) {
            if (wrong++ < 5)
                printf("client %s: %s\n", name, s_client_info(ctl, name, &ci) ? "not listed"
                                                                               : "not 1 held");
        }
    }
    CHECK_EQ(wrong, 0);
    ab_client_destroy(&ctl);
    rp_end(socks, 2);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"interactive_first", s_interactive_first}, {"fair_single", s_fair_single},
        {"quota_busy", s_quota_busy},               {"quota_one", s_quota_one},
        {"leave_queued", s_leave_queued},
        {"deadline_early", s_deadline_early}, {"cli", s_cli},
        {"rename_ident", s_rename_ident}, {"weights", s_weights},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
