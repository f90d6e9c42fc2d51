/*
 * test_health.c - failure handling with real processes: workers killed
 * (-9), stopped (SIGSTOP/SIGCONT), failing every request (ejection, the
 * heartbeat interval); bounded queues and per-client limits; agents'
 * heartbeats spread in time. Discovery, watchers and drains are in
 * test_health_watch.c (one program, healthtest.h). One case per ctest
 * entry: test_health CASE.
 *
 * No case asserts wall-clock speed: times only bound the waits.
 */
#include "harness.h"
#include "healthtest.h"
#include "test.h"
#include "util.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

int ht_done;

void ht_slot_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    ht_slot_t *s = arg;
    if (!ev->final)
        return;
    s->finals++;
    s->status = ev->status;
    ht_done++;
}

/* Polls C until ht_done reaches WANT, at most timeout_ms. */
static void s_poll_done(ab_client_t *c, int want, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    while (ht_done < want && ab_now_ms() < end)
        ab_client_poll(c, 20);
}

static void s_poll_all(ab_client_t **cs, int n, int ms)
{
    for (int i = 0; i < n; i++)
        ab_client_poll(cs[i], i == 0 ? ms : 0);
}

/* Copies the figures the tests look at from the directory entry of the
 * worker named NAME; 0, or -1 when it is not registered. */
typedef struct {
    char health[16];
    unsigned interval_ms, ejections, backoff_ms, free_credit, capacity, in_flight;
    double suspicion;
    unsigned long long completed;
} s_winfo_t;

static int s_winfo(ab_client_t *c, const char *name, s_winfo_t *out)
{
    ab_directory_t *d = NULL;
    if (ab_discover(c, NULL, 5000, &d) != AB_OK)
        return -1;
    int rc = -1;
    for (size_t i = 0; i < d->n_workers; i++) {
        const ab_worker_info_t *w = &d->workers[i];
        if (strcmp(w->name, name) != 0)
            continue;
        snprintf(out->health, sizeof out->health, "%s", w->health);
        out->interval_ms = w->interval_ms;
        out->ejections = w->ejections;
        out->backoff_ms = w->backoff_ms;
        out->free_credit = w->free_credit;
        out->capacity = w->capacity;
        out->in_flight = w->in_flight;
        out->suspicion = w->suspicion;
        out->completed = (unsigned long long)w->completed;
        rc = 0;
    }
    ab_directory_destroy(&d);
    return rc;
}

/* Waits (bounded) until worker NAME holds N requests. 0 or -1. */
static int s_wait_held(ab_client_t *c, const char *name, unsigned n, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    s_winfo_t w;
    while (ab_now_ms() < end) {
        if (s_winfo(c, name, &w) == 0 && w.in_flight == n)
            return 0;
        ab_client_poll(c, 20);
    }
    return -1;
}

/* Waits (bounded) until worker NAME is in STATE. 0 or -1. */
static int s_wait_health(ab_client_t *c, const char *name, const char *state, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    s_winfo_t w;
    while (ab_now_ms() < end) {
        if (s_winfo(c, name, &w) == 0 && strcmp(w.health, state) == 0)
            return 0;
        ab_client_poll(c, 50);
    }
    return -1;
}

/* Stats after waiting (bounded) until FIELD(st) >= MIN. */
#define S_STATS_WHEN(c, field, min, timeout_ms)                                                   \
    ({                                                                                             \
        Agentbus__Stats *st_ = NULL;                                                               \
        int64_t end_ = ab_now_ms() + (timeout_ms);                                                 \
        for (;;) {                                                                                 \
            st_ = th_stats(c);                                                                     \
            if (!st_ || st_->field >= (min) || ab_now_ms() >= end_)                                \
                break;                                                                             \
            agentbus__stats__free_unpacked(st_, NULL);                                             \
            st_ = NULL;                                                                            \
            ab_client_poll(c, 50);                                                                 \
        }                                                                                          \
        st_;                                                                                       \
    })

/* --- kill -9 under steady load ------------------------------------------------ */
static void s_kill9_load(void)
{
    enum { CLIENTS = 4, PER = 250, WINDOW = 16 };
    int port = th_free_port();
    th_broker(port, NULL);
    pid_t k1 = th_worker(port, "work", "--name", "k1", "--capacity", "8", "--delay-ms", "30", NULL);
    pid_t k2 = th_worker(port, "work", "--name", "k2", "--capacity", "8", "--delay-ms", "30", NULL);
    th_worker(port, "work", "--name", "k3", "--capacity", "8", "--delay-ms", "30", NULL);
    ab_client_t *cs[CLIENTS];
    for (int i = 0; i < CLIENTS; i++)
        cs[i] = th_client(port);
    REQUIRE(th_wait_workers(cs[0], "work", 3, 10000) == 0);
    static ht_slot_t slots[CLIENTS][PER];
    memset(slots, 0, sizeof slots);
    int sent[CLIENTS] = {0}, finals[CLIENTS] = {0}, killed = 0;
    ht_done = 0;
    int64_t end = ab_now_ms() + 60000;
    while (ht_done < CLIENTS * PER && ab_now_ms() < end) {
        for (int i = 0; i < CLIENTS; i++) {
            finals[i] = 0;
            for (int k = 0; k < sent[i]; k++)
                finals[i] += slots[i][k].finals ? 1 : 0;
            while (sent[i] < PER && sent[i] - finals[i] < WINDOW) {
                char msg[32];
                int n = snprintf(msg, sizeof msg, "c%d-%d", i, sent[i]);
                CHECK_EQ(ab_client_request_start(cs[i], "work", msg, (size_t)n,
                                                 &(ab_request_opts_t){.timeout_ms = 20000},
                                                 ht_slot_cb, &slots[i][sent[i]], NULL),
                         AB_OK);
                sent[i]++;
            }
        }
        if (killed == 0 && ht_done >= 200) {
            th_kill9(k1); /* holding a full window of requests */
            killed = 1;
        } else if (killed == 1 && ht_done >= 500) {
            th_kill9(k2);
            th_worker(port, "work", "--name", "k4", "--capacity", "8", "--delay-ms", "30", NULL);
            killed = 2;
        }
        s_poll_all(cs, CLIENTS, 20);
    }
    s_poll_all(cs, CLIENTS, 300); /* a second answer would arrive now */
    int ok = 0, once = 0, answers = 0;
    for (int i = 0; i < CLIENTS; i++)
        for (int k = 0; k < PER; k++) {
            ok += slots[i][k].finals && slots[i][k].status == AB_OK;
            once += slots[i][k].finals == 1;
            answers += slots[i][k].finals;
        }
    printf("requests %d, answered %d (OK %d), exactly once %d\n", CLIENTS * PER, answers, ok,
           once);
    CHECK_EQ(killed, 2);
    CHECK_EQ(answers, CLIENTS * PER); /* none lost, none answered twice */
    CHECK_EQ(once, CLIENTS * PER);
    CHECK_EQ(ok, CLIENTS * PER);
    Agentbus__Stats *st = th_stats(cs[0]);
    REQUIRE(st != NULL);
    printf("redispatched %llu, disconnects %llu, retries exhausted %llu\n",
           (unsigned long long)st->redispatched, (unsigned long long)st->disconnects,
           (unsigned long long)st->retries_exhausted);
    CHECK_TRUE(st->redispatched >= 8); /* k1 alone held 8 */
    CHECK_EQ(st->retries_exhausted, 0);
    CHECK_EQ(th_stat_error(st, "WORKER_LOST"), 0);
    CHECK_EQ(st->pending, 0);
    CHECK_EQ(st->workers, 2);
    agentbus__stats__free_unpacked(st, NULL);
    for (int i = 0; i < CLIENTS; i++)
        ab_client_destroy(&cs[i]);
}

/* --- SIGSTOP: silent with its connection alive ---------------------------------------- */
static void s_sigstop(void)
{
    int port = th_free_port();
    /* A short floor and ceiling so suspicion, not the transport's 3 s ZMTP
     * timeout, finds the stopped worker. */
    th_broker(port, "--health-floor-ms", "200", "--health-ceiling-ms", "400", NULL);
    pid_t s1 = th_worker(port, "svc", "--name", "s1", "--capacity", "4", "--delay-ms", "2000",
                         "--heartbeat-ms", "200", NULL);
    th_worker(port, "svc", "--name", "s2", "--capacity", "4", "--delay-ms", "2000",
              "--heartbeat-ms", "200", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "svc", 2, 10000) == 0);
    static ht_slot_t slots[20];
    memset(slots, 0, sizeof slots);
    ht_done = 0;
    for (int i = 0; i < 8; i++)
        CHECK_EQ(ab_client_request_start(c, "svc", "x", 1,
                                         &(ab_request_opts_t){.timeout_ms = 20000}, ht_slot_cb,
                                         &slots[i], NULL),
                 AB_OK);
    /* Both hold 4 when s1 stops: a state waited for, not 150 ms of polling
     * (a busy host may dispatch later; 2 s of work keeps them held). */
    CHECK_EQ(s_wait_held(c, "s1", 4, 10000), 0);
    CHECK_EQ(s_wait_held(c, "s2", 4, 10000), 0);
    kill(s1, SIGSTOP);
    int64_t end = ab_now_ms() + 15000;
    while (ht_done < 8 && ab_now_ms() < end)
        ab_client_poll(c, 50);
    for (int i = 0; i < 8; i++) {
        CHECK_EQ(slots[i].finals, 1);
        CHECK_EQ(slots[i].status, AB_OK);
    }
    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    CHECK_TRUE(st->workers_suspected >= 1);
    CHECK_TRUE(st->redispatched >= 4); /* s1's four (more if s2 was suspected too) */
    agentbus__stats__free_unpacked(st, NULL);

    kill(s1, SIGCONT); /* its four replies come late: duplicates */
    st = S_STATS_WHEN(c, duplicates_dropped, 4, 10000);
    REQUIRE(st != NULL);
    printf("suspected %llu, disconnects %llu, duplicates dropped %llu, late replies %llu\n",
           (unsigned long long)st->workers_suspected, (unsigned long long)st->disconnects,
           (unsigned long long)st->duplicates_dropped, (unsigned long long)st->late_replies);
    CHECK_TRUE(st->duplicates_dropped >= 4);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_poll(c, 200);
    for (int i = 0; i < 8; i++)
        CHECK_EQ(slots[i].finals, 1); /* still exactly once */

    /* It rejoins through one probe request, then takes its share. */
    REQUIRE(th_wait_workers(c, "svc", 2, 10000) == 0);
    for (int i = 8; i < 20; i++)
        CHECK_EQ(ab_client_request_start(c, "svc", "y", 1,
                                         &(ab_request_opts_t){.timeout_ms = 20000}, ht_slot_cb,
                                         &slots[i], NULL),
                 AB_OK);
    end = ab_now_ms() + 20000;
    while (ht_done < 20 && ab_now_ms() < end)
        ab_client_poll(c, 50);
    for (int i = 8; i < 20; i++)
        CHECK_EQ(slots[i].status, AB_OK);
    /* Healthy at the end. With heartbeats due every 200 to 400 ms a busy
     * machine may have s1 judged silent again, and a dead worker waits for
     * a request to probe it, one that s2 (4 slots) has no room for: while
     * s1 is not healthy, 6 more are sent. */
    int healthy = -1;
    for (int64_t until = ab_now_ms() + 30000; healthy != 0 && ab_now_ms() < until;) {
        healthy = s_wait_health(c, "s1", "healthy", 1000);
        if (healthy == 0)
            break;
        static ht_slot_t more[6];
        memset(more, 0, sizeof more);
        ht_done = 0;
        for (int i = 0; i < 6; i++)
            ab_client_request_start(c, "svc", "z", 1, &(ab_request_opts_t){.timeout_ms = 20000},
                                    ht_slot_cb, &more[i], NULL);
        for (int64_t e = ab_now_ms() + 20000; ht_done < 6 && ab_now_ms() < e;)
            ab_client_poll(c, 50);
    }
    CHECK_EQ(healthy, 0);
    s_winfo_t w;
    REQUIRE(s_winfo(c, "s1", &w) == 0);
    CHECK_TRUE(w.completed >= 1);
    st = th_stats(c);
    REQUIRE(st != NULL);
    CHECK_TRUE(st->probes >= 1);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&c);
}

/* --- circuit breaker -------------------------------------------------------------------------- */
static void s_eject(void)
{
    int port = th_free_port();
    char flag[512];
    snprintf(flag, sizeof flag, "%s/fail", th_dir());
    FILE *f = fopen(flag, "w");
    REQUIRE(f != NULL);
    fclose(f);
    th_broker(port, "--eject-failures", "3", "--eject-base-ms", "300", "--eject-max-ms", "5000",
              NULL);
    th_worker(port, "flaky", "--name", "e1", "--fail-file", flag, NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "flaky", 1, 10000) == 0);
    unsigned backoffs[3] = {0};
    /* 3 failures eject it; each probe after a backoff fails again. */
    for (int i = 0; i < 5; i++) {
        int64_t sent = ab_now_ms();
        CHECK_EQ(ab_client_request(c, "flaky", "x", 1, 10000, NULL, NULL), AB_EAPPLICATION);
        s_winfo_t w;
        REQUIRE(s_winfo(c, "e1", &w) == 0);
        int64_t took = ab_now_ms() - sent;
        printf("request %d: %s, ejections %u, backoff %u ms (seen %lld ms after it was sent)\n",
               i + 1, w.health, w.ejections, w.backoff_ms, (long long)took);
        if (i >= 2) {
            CHECK_EQ(w.ejections, (unsigned)(i - 1));
            backoffs[i - 2] = w.backoff_ms;
            /* Ejected until its backoff (300 ms, doubling) ends, probing
             * after: a state seen later than that, by a test the machine
             * ran late, is the next one. The ejection began after the
             * request was sent. */
            if (took < (int64_t)w.backoff_ms) {
                CHECK_STR(w.health, "ejected");
                CHECK_EQ(w.free_credit, 0);
            } else {
                CHECK_TRUE(strcmp(w.health, "ejected") == 0 ||
                           strcmp(w.health, "probing") == 0);
            }
        } else {
            CHECK_STR(w.health, "healthy");
        }
    }
    CHECK_EQ(backoffs[0], 300); /* growing: doubled each time */
    CHECK_EQ(backoffs[1], 600);
    CHECK_EQ(backoffs[2], 1200);
    /* It recovers: the next probe succeeds and it is back. */
    REQUIRE(unlink(flag) == 0);
    void *reply = NULL;
    size_t n = 0;
    CHECK_EQ(ab_client_request(c, "flaky", "back", 4, 10000, &reply, &n), AB_OK);
    CHECK_TRUE(n == 4 && memcmp(reply, "back", 4) == 0);
    ab_free(reply);
    s_winfo_t w;
    REQUIRE(s_winfo(c, "e1", &w) == 0);
    CHECK_STR(w.health, "healthy");
    CHECK_EQ(w.free_credit, w.capacity);
    for (int i = 0; i < 5; i++)
        CHECK_EQ(ab_client_request(c, "flaky", "x", 1, 10000, NULL, NULL), AB_OK);
    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    CHECK_EQ(st->workers_ejected, 3);
    CHECK_EQ(st->probes, 3);
    /* The health transitions of /metrics, in stats: every state listed,
     * ejected entered three times, healthy again once recovered. */
    CHECK_EQ(st->n_health_transitions, 6);
    unsigned long long entered_ejected = 0, entered_healthy = 0;
    for (size_t i = 0; i < st->n_health_transitions; i++) {
        if (strcmp(st->health_transitions[i]->state, "ejected") == 0)
            entered_ejected = st->health_transitions[i]->count;
        if (strcmp(st->health_transitions[i]->state, "healthy") == 0)
            entered_healthy = st->health_transitions[i]->count;
    }
    CHECK_U64(entered_ejected, 3);
    CHECK_TRUE(entered_healthy >= 1);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&c);
    /* brokerctl stats shows them, as text and as JSON. */
    char cmd[512], out[16384];
    snprintf(cmd, sizeof cmd, "%s --broker %s stats", th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    const char *line = strstr(out, "entered");
    CHECK_TRUE(line != NULL && strstr(line, "ejected 3") != NULL &&
               strstr(line, "draining 0") != NULL);
    snprintf(cmd, sizeof cmd, "%s --broker %s --json stats", th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    json_t *j = json_loads(out, 0, NULL);
    json_t *tr = json_object_get(json_object_get(j, "health"), "transitions");
    CHECK_EQ(json_object_size(tr), 6);
    CHECK_EQ(json_integer_value(json_object_get(tr, "ejected")), 3);
    CHECK_TRUE(json_integer_value(json_object_get(tr, "healthy")) >= 1);
    json_decref(j);
}

/* --- adaptive heartbeat interval -------------------------------------------------------------- */
/* Waits (bounded) until worker NAME of SVC is healthy at heartbeat
 * interval IVL_MS, its figures in *W: one judged silent (dead, probing)
 * waits for a request to probe it, so one is sent. 0 or -1. */
static int s_until_healthy(ab_client_t *c, const char *name, const char *svc, unsigned ivl_ms,
                           s_winfo_t *w, int timeout_ms)
{
    for (int64_t end = ab_now_ms() + timeout_ms; ab_now_ms() < end;) {
        if (s_winfo(c, name, w) == 0 && strcmp(w->health, "healthy") == 0 &&
            w->interval_ms == ivl_ms)
            return 0;
        if (strcmp(w->health, "dead") == 0 || strcmp(w->health, "probing") == 0)
            ab_client_request(c, svc, "probe", 5, 5000, NULL, NULL);
        ab_client_poll(c, 50);
    }
    return -1;
}

static void s_interval(void)
{
    int port = th_free_port();
    char flag[512];
    snprintf(flag, sizeof flag, "%s/fail", th_dir());
    th_broker(port, "--health-floor-ms", "100", "--health-ceiling-ms", "800", NULL);
    th_worker(port, "steady", "--name", "i1", "--heartbeat-ms", "100", "--fail-file", flag, NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "steady", 1, 10000) == 0);
    s_winfo_t w = {0};
    unsigned seen_max = 0, steps = 0, last = 0;
    int64_t end = ab_now_ms() + 60000;
    while (ab_now_ms() < end) {
        REQUIRE(s_winfo(c, "i1", &w) == 0);
        if (w.interval_ms != last) {
            printf("interval %u ms (%s)\n", w.interval_ms, w.health);
            steps++;
            last = w.interval_ms;
        }
        if (w.interval_ms > seen_max)
            seen_max = w.interval_ms;
        if (w.interval_ms == 800)
            break;
        /* Judged silent (a busy machine did not run it for a while), it
         * waits for a request to probe it, and only a healthy worker's
         * interval grows: one is sent. */
        if (strcmp(w.health, "dead") == 0 || strcmp(w.health, "probing") == 0)
            ab_client_request(c, "steady", "probe", 5, 5000, NULL, NULL);
        ab_client_poll(c, 50);
    }
    CHECK_EQ(w.interval_ms, 800); /* grew to the ceiling */
    CHECK_TRUE(steps >= 3);       /* through 200 and 400 */
    CHECK_STR(w.health, "healthy");
    /* The worker keeps the pace it was told: over a span of S ms at most
     * S / 800 + 1 heartbeats (S / 720: a margin), where the 100 ms it
     * started with would be S / 100. Also counted: the client's own (1 s,
     * at least 900 ms apart) and our 2nd query. S is measured around both
     * queries: a test the machine ran late counts more, and a worker it
     * ran late fewer (so there is no lower bound). */
    int64_t t0 = ab_now_ms();
    Agentbus__Stats *a = th_stats(c);
    REQUIRE(a != NULL);
    ab_client_poll(c, 3200);
    Agentbus__Stats *b = th_stats(c);
    REQUIRE(b != NULL);
    int64_t span = ab_now_ms() - t0;
    unsigned long long beats = b->msgs_in - a->msgs_in;
    unsigned long long most = (unsigned long long)(span / 720 + 1 + span / 900 + 1 + 1);
    printf("messages in over %lld ms at 800 ms: %llu (at most %llu; %lld at 100 ms)\n",
           (long long)span, beats, most, (long long)(span / 100));
    CHECK_TRUE(beats <= most);
    agentbus__stats__free_unpacked(a, NULL);
    agentbus__stats__free_unpacked(b, NULL);
    /* Healthy at the slow pace (again, if the machine ran it late). */
    REQUIRE(s_until_healthy(c, "i1", "steady", 800, &w, 60000) == 0);
    /* A failure brings it back to the floor. */
    FILE *f = fopen(flag, "w");
    REQUIRE(f != NULL);
    fclose(f);
    CHECK_EQ(ab_client_request(c, "steady", "x", 1, 30000, NULL, NULL), AB_EAPPLICATION);
    REQUIRE(s_winfo(c, "i1", &w) == 0);
    CHECK_EQ(w.interval_ms, 100);
    REQUIRE(unlink(flag) == 0);
    CHECK_EQ(ab_client_request(c, "steady", "x", 1, 30000, NULL, NULL), AB_OK);
    ab_client_destroy(&c);
}

/* --- bounded queues and per-client limits ----------------------------------------------------- */
static void s_flood(void)
{
    int port = th_free_port();
    pid_t broker = th_broker(port, "--queue-max", "100", "--max-client-inflight", "30",
                             "--startup-grace-ms", "0", NULL);
    th_worker(port, "slow", "--capacity", "2", "--delay-ms", "60000", NULL);
    ab_client_t *a = th_client(port), *b = th_client(port);
    REQUIRE(th_wait_workers(a, "slow", 1, 10000) == 0);
    static ht_slot_t sa[100], sb[100];
    ht_done = 0;
    for (int i = 0; i < 100; i++)
        CHECK_EQ(ab_client_request_start(a, "slow", "x", 1,
                                         &(ab_request_opts_t){.timeout_ms = 60000}, ht_slot_cb,
                                         &sa[i], NULL),
                 AB_OK);
    s_poll_done(a, 70, 10000);
    int busy = 0;
    for (int i = 0; i < 100; i++)
        busy += sa[i].finals == 1 && sa[i].status == AB_EBUSY;
    CHECK_EQ(busy, 70); /* the client's limit, not the service's queue */
    /* Another client is not held back by the first one's limit... */
    for (int i = 0; i < 80; i++)
        CHECK_EQ(ab_client_request_start(b, "slow", "x", 1,
                                         &(ab_request_opts_t){.timeout_ms = 60000}, ht_slot_cb,
                                         &sb[i], NULL),
                 AB_OK);
    s_poll_done(b, 120, 10000);
    int busy_b = 0;
    for (int i = 0; i < 80; i++)
        busy_b += sb[i].finals == 1 && sb[i].status == AB_EBUSY;
    CHECK_EQ(busy_b, 50);
    Agentbus__Stats *st = th_stats(a);
    REQUIRE(st != NULL);
    CHECK_EQ(st->client_limit_busy, 120);
    CHECK_EQ(st->pending, 60);
    agentbus__stats__free_unpacked(st, NULL);
    /* ...but the service's queue is: fill it from many clients, then flood
     * with 4 KiB requests: every one is answered BUSY and the broker's
     * memory stays flat. */
    ab_client_t *more[3];
    for (int k = 0; k < 3; k++) {
        more[k] = th_client(port);
        for (int i = 0; i < 30; i++)
            ab_client_request_start(more[k], "slow", "x", 1,
                                    &(ab_request_opts_t){.timeout_ms = 60000}, NULL, NULL, NULL);
        ab_client_poll(more[k], 100);
    }
    /* The queue full (100) and the worker's 2 held before the flood: a
     * state, not 100 ms of polling per client. Each connection is its own
     * pipe: a broker the machine ran late could read the flood before the
     * last of these and queue some of it. */
    st = S_STATS_WHEN(a, pending, 102, 10000);
    REQUIRE(st != NULL);
    CHECK_EQ(st->pending, 102);
    agentbus__stats__free_unpacked(st, NULL);
    char payload[4096];
    memset(payload, 'p', sizeof payload);
    long rss_first = 0;
    for (int round = 0; round < 6; round++) {
        ab_client_t *fl = th_client(port);
        static ht_slot_t sf[25];
        memset(sf, 0, sizeof sf);
        int before = ht_done;
        for (int i = 0; i < 25; i++)
            ab_client_request_start(fl, "slow", payload, sizeof payload,
                                    &(ab_request_opts_t){.timeout_ms = 60000}, ht_slot_cb, &sf[i],
                                    NULL);
        int64_t end = ab_now_ms() + 10000;
        while (ht_done - before < 25 && ab_now_ms() < end)
            ab_client_poll(fl, 50);
        int fb = 0;
        for (int i = 0; i < 25; i++)
            fb += sf[i].finals == 1 && sf[i].status == AB_EBUSY;
        CHECK_EQ(fb, 25);
        ab_client_destroy(&fl);
        if (round == 1)
            rss_first = th_rss_kb(broker);
    }
    long rss_last = th_rss_kb(broker);
    printf("broker RSS after round 2: %ld KiB, after round 6: %ld KiB\n", rss_first, rss_last);
#ifndef __SANITIZE_ADDRESS__
    CHECK_RANGE(rss_last - rss_first, -1e9, 16 * 1024);
#endif
    st = th_stats(a);
    REQUIRE(st != NULL);
    CHECK_TRUE(st->pending <= 102); /* queue-max + what the worker holds */
    CHECK_EQ(st->send_eagain, 0);
    agentbus__stats__free_unpacked(st, NULL);
    for (int k = 0; k < 3; k++)
        ab_client_destroy(&more[k]);
    ab_client_destroy(&a);
    ab_client_destroy(&b);
}

/* Agents opened together do not heartbeat together (docs/health.md): 40
 * handles made at once and polled in one loop, against a bare ROUTER that
 * only notes when each message arrives. After their first beat, 60 ms
 * windows holding most of them (a "wave") must be rare; with a fixed
 * interval all 40 land in one window every second, for as long as they
 * live: 5 waves in 5 s. Arrival is this process's clock: on a busy machine
 * libzmq's I/O threads may not run for most of a second, and what was sent
 * meanwhile arrives as one wave (seen once in three rounds of `flaky`), so
 * up to 2 such waves in 5 s pass. */
enum { SPREAD_N = 40, SPREAD_MAX_AT = 600 };

static int s_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Drains whatever the bare ROUTER holds, noting arrivals in [from, to). */
static void s_note_beats(void *router, int64_t t0, int64_t from, int64_t to, int64_t *at, int *n)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    while (zmq_msg_recv(&m, router, ZMQ_DONTWAIT) >= 0) {
        int more = zmq_msg_more(&m);
        while (more) { /* the rest of this message: header and body */
            zmq_msg_recv(&m, router, 0);
            more = zmq_msg_more(&m);
        }
        int64_t when = ab_now_ms() - t0;
        if (when >= from && when < to && *n < SPREAD_MAX_AT)
            at[(*n)++] = when;
    }
    zmq_msg_close(&m);
}

/* Runs SPREAD_N agents against a bare ROUTER until to_ms, not polling them
 * at all for stall_ms from stall_at_ms (as a stalled loop would), and
 * returns the heartbeats that arrived in [from_ms, to_ms), sorted. */
static int s_beats(int64_t stall_at_ms, int stall_ms, int64_t from_ms, int64_t to_ms,
                   int64_t *at)
{
    int port = th_free_port();
    void *ctx = zmq_ctx_new(), *router = zmq_socket(ctx, ZMQ_ROUTER);
    int linger = 0, n = 0, stalled = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger);
    REQUIRE(zmq_bind(router, th_ep(port)) == 0);
    ab_client_t *c[SPREAD_N];
    for (int i = 0; i < SPREAD_N; i++) { /* plain, whatever AB_KEY: the ROUTER has no CURVE */
        ab_options_t *o = ab_options_new();
        REQUIRE(o && ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
        REQUIRE(ab_options_set_key_file(o, "") == AB_OK &&
                ab_options_set_broker_key(o, "") == AB_OK);
        REQUIRE(ab_client_new(&c[i], o) == AB_OK);
        ab_options_destroy(&o);
    }
    int64_t t0 = ab_now_ms();
    for (int64_t t = 0; t < to_ms; t = ab_now_ms() - t0) {
        if (stall_ms > 0 && !stalled && t >= stall_at_ms) {
            stalled = 1;
            th_sleep_ms(stall_ms);
        }
        for (int i = 0; i < SPREAD_N; i++)
            ab_client_poll(c[i], 0);
        zmq_pollitem_t it = {router, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 1) > 0)
            s_note_beats(router, t0, from_ms, to_ms, at, &n);
    }
    for (int i = 0; i < SPREAD_N; i++)
        ab_client_destroy(&c[i]);
    zmq_close(router);
    zmq_ctx_term(ctx);
    qsort(at, (size_t)n, sizeof at[0], s_cmp_i64);
    return n;
}

/* Windows of window_ms holding more than 3/4 of the agents, counted once
 * per 500 ms; *most is the largest number in any window. */
static int s_waves(const int64_t *at, int n, int window_ms, int *most)
{
    int waves = 0;
    int64_t wave_at = -1000000;
    *most = 0;
    for (int lo = 0, hi = 0; hi < n; hi++) {
        while (at[hi] - at[lo] >= window_ms)
            lo++;
        if (hi - lo + 1 > *most)
            *most = hi - lo + 1;
        if (hi - lo + 1 > SPREAD_N * 3 / 4 && at[hi] - wave_at >= 500) { /* a new wave */
            waves++;
            wave_at = at[hi];
        }
    }
    return waves;
}

static void s_agent_spread(void)
{
    enum { FROM_MS = 1500, TO_MS = 6500, WINDOW_MS = 60 };
    static int64_t at[SPREAD_MAX_AT];
    int n = s_beats(0, 0, FROM_MS, TO_MS, at), most;
    /* About 5 s x 40 beats: they keep coming at (at most) the interval. */
    REQUIRE(n >= 3 * SPREAD_N);
    int waves = s_waves(at, n, WINDOW_MS, &most);
    printf("%d heartbeats from %d agents in %d ms; at most %d in any %d ms; %d waves of more "
           "than %d\n", n, SPREAD_N, TO_MS - FROM_MS, most, WINDOW_MS, waves, SPREAD_N * 3 / 4);
    REQUIRE(waves <= 2);
}

/* A loop that stalls (here: 1.5 s without polling its 40 agents) sends
 * every overdue beat in one sweep when it wakes; that wave cannot be
 * helped. After it, each agent keeps its own phase (docs/health.md), so
 * the next two seconds hold no wave of 150 ms. Timed from the sweep
 * instead, all 40 would beat within ~100 ms of each other a second later
 * and again a second after that (2 waves). A machine stall of its own
 * may make one, so up to 1 passes. */
static void s_agent_phase_kept(void)
{
    enum { STALL_AT_MS = 2500, STALL_MS = 1500, WINDOW_MS = 150 };
    enum { FROM_MS = STALL_AT_MS + STALL_MS + 300, TO_MS = FROM_MS + 2000 };
    static int64_t at[SPREAD_MAX_AT];
    int n = s_beats(STALL_AT_MS, STALL_MS, FROM_MS, TO_MS, at), most;
    REQUIRE(n >= SPREAD_N);
    int waves = s_waves(at, n, WINDOW_MS, &most);
    printf("after a %d ms stall: %d heartbeats in %d ms; at most %d in any %d ms; %d waves "
           "of more than %d\n", STALL_MS, n, TO_MS - FROM_MS, most, WINDOW_MS, waves,
           SPREAD_N * 3 / 4);
    REQUIRE(waves <= 1);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"kill9_load", s_kill9_load}, {"sigstop", s_sigstop}, {"eject", s_eject},
        {"interval", s_interval}, {"discover", health_discover}, {"flood", s_flood},
        {"broker_drain", health_broker_drain}, {"worker_drain", health_worker_drain},
        {"broker_drain_one", health_broker_drain_one},
        {"watch_restart", health_watch_restart}, {"watch_silence", health_watch_silence},
        {"agent_spread", s_agent_spread}, {"agent_phase_kept", s_agent_phase_kept},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
