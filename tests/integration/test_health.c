/*
 * test_health.c - failure handling with real processes: workers killed
 * (-9), stopped (SIGSTOP/SIGCONT), failing every request, draining on
 * SIGTERM; the broker draining on SIGTERM; discovery and its change events;
 * bounded queues and per-client limits. One case per ctest entry:
 * test_health CASE.
 *
 * No case asserts wall-clock speed: times only bound the waits.
 */
#include "harness.h"
#include "test.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

/* --- per-request bookkeeping: each request has its own slot, so a second
 * answer to one request is seen ------------------------------------------ */
typedef struct {
    int finals;
    int status;
} s_slot_t;

static int s_done; /* finals seen by s_slot_cb, all slots */

static void s_slot_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    s_slot_t *s = arg;
    if (!ev->final)
        return;
    s->finals++;
    s->status = ev->status;
    s_done++;
}

/* Polls C until s_done reaches WANT, at most timeout_ms. */
static void s_poll_done(ab_client_t *c, int want, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    while (s_done < want && ab_now_ms() < end)
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
    static s_slot_t slots[CLIENTS][PER];
    memset(slots, 0, sizeof slots);
    int sent[CLIENTS] = {0}, finals[CLIENTS] = {0}, killed = 0;
    s_done = 0;
    int64_t end = ab_now_ms() + 60000;
    while (s_done < CLIENTS * PER && ab_now_ms() < end) {
        for (int i = 0; i < CLIENTS; i++) {
            finals[i] = 0;
            for (int k = 0; k < sent[i]; k++)
                finals[i] += slots[i][k].finals ? 1 : 0;
            while (sent[i] < PER && sent[i] - finals[i] < WINDOW) {
                char msg[32];
                int n = snprintf(msg, sizeof msg, "c%d-%d", i, sent[i]);
                CHECK_EQ(ab_client_request_start(cs[i], "work", msg, (size_t)n,
                                                 &(ab_request_opts_t){.timeout_ms = 20000},
                                                 s_slot_cb, &slots[i][sent[i]], NULL),
                         AB_OK);
                sent[i]++;
            }
        }
        if (killed == 0 && s_done >= 200) {
            th_kill9(k1); /* holding a full window of requests */
            killed = 1;
        } else if (killed == 1 && s_done >= 500) {
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
    static s_slot_t slots[20];
    memset(slots, 0, sizeof slots);
    s_done = 0;
    for (int i = 0; i < 8; i++)
        CHECK_EQ(ab_client_request_start(c, "svc", "x", 1,
                                         &(ab_request_opts_t){.timeout_ms = 20000}, s_slot_cb,
                                         &slots[i], NULL),
                 AB_OK);
    /* Both hold 4 when s1 stops: a state waited for, not 150 ms of polling
     * (a busy host may dispatch later; 2 s of work keeps them held). */
    CHECK_EQ(s_wait_held(c, "s1", 4, 10000), 0);
    CHECK_EQ(s_wait_held(c, "s2", 4, 10000), 0);
    kill(s1, SIGSTOP);
    int64_t end = ab_now_ms() + 15000;
    while (s_done < 8 && ab_now_ms() < end)
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
                                         &(ab_request_opts_t){.timeout_ms = 20000}, s_slot_cb,
                                         &slots[i], NULL),
                 AB_OK);
    end = ab_now_ms() + 20000;
    while (s_done < 20 && ab_now_ms() < end)
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
        static s_slot_t more[6];
        memset(more, 0, sizeof more);
        s_done = 0;
        for (int i = 0; i < 6; i++)
            ab_client_request_start(c, "svc", "z", 1, &(ab_request_opts_t){.timeout_ms = 20000},
                                    s_slot_cb, &more[i], NULL);
        for (int64_t e = ab_now_ms() + 20000; s_done < 6 && ab_now_ms() < e;)
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

/* --- discovery and change events -------------------------------------------------------------- */
typedef struct {
    int n;
    char change[32][8];
    char name[32][32];
    char health[32][16];
} s_events_t;

static void s_on_event(ab_client_t *c, const ab_dir_event_t *ev, void *arg)
{
    (void)c;
    s_events_t *e = arg;
    if (e->n >= 32)
        return;
    snprintf(e->change[e->n], sizeof e->change[0], "%s", ev->change);
    snprintf(e->name[e->n], sizeof e->name[0], "%s", ev->worker->name);
    snprintf(e->health[e->n], sizeof e->health[0], "%s", ev->worker->health);
    e->n++;
}

static int s_find_event(const s_events_t *e, const char *change, const char *name)
{
    for (int i = 0; i < e->n; i++)
        if (strcmp(e->change[i], change) == 0 && strcmp(e->name[i], name) == 0)
            return i;
    return -1;
}

static int s_wait_event(ab_client_t *c, s_events_t *e, const char *change, const char *name)
{
    int64_t end = ab_now_ms() + 10000;
    while (s_find_event(e, change, name) < 0 && ab_now_ms() < end)
        ab_client_poll(c, 50);
    return s_find_event(e, change, name);
}

/* How many lines of the log of PID have both A and B (B may be NULL). */
static int s_log_count(pid_t pid, const char *a, const char *b)
{
    FILE *f = fopen(th_log_of(pid), "r");
    char line[1024];
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        n += strstr(line, a) && (!b || strstr(line, b));
    if (f)
        fclose(f);
    return n;
}

/* 1 if the log of PID has a line with both A and B (B may be NULL). */
static int s_log_has(pid_t pid, const char *a, const char *b)
{
    return s_log_count(pid, a, b) > 0;
}

/* The number right after A on the first line of the log of PID with A, or
 * -1 when there is none. */
static long s_log_number(pid_t pid, const char *a)
{
    FILE *f = fopen(th_log_of(pid), "r");
    char line[1024];
    long v = -1;
    while (f && v < 0 && fgets(line, sizeof line, f)) {
        const char *at = strstr(line, a);
        if (at)
            v = strtol(at + strlen(a), NULL, 10);
    }
    if (f)
        fclose(f);
    return v;
}

/* Polls C until the log of PID has N lines with A (bounded): 0 or -1. */
static int s_wait_log(ab_client_t *c, pid_t pid, const char *a, int n, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    while (s_log_count(pid, a, NULL) < n) {
        if (ab_now_ms() > end)
            return -1;
        ab_client_poll(c, 20);
    }
    return 0;
}

/* Reads what P prints into OUT while polling C, until P's output ends, a
 * whole line is read when LINE is set, or WAIT_MS pass: a watcher left
 * unpolled while a command runs may be dropped by the broker for silence.
 * Returns 1 when it stopped for the end or the line, else 0. */
static int s_read_polling(ab_client_t *c, FILE *p, char *out, size_t cap, size_t *n, int line,
                          int wait_ms)
{
    int fd = fileno(p);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    for (int64_t end = ab_now_ms() + wait_ms; ab_now_ms() < end;) {
        ssize_t r = read(fd, out + *n, cap - 1 - *n);
        if (r > 0)
            *n += (size_t)r;
        out[*n] = '\0';
        if (r == 0 || *n == cap - 1 || (line && strchr(out, '\n')))
            return 1;
        if (r < 0 && errno != EAGAIN && errno != EINTR)
            return 1;
        if (r < 0)
            ab_client_poll(c, 20);
    }
    return 0;
}

/* th_run, polling C while CMDLINE runs (at most 60 s). */
static int s_run_polling(ab_client_t *c, const char *cmdline, char *out, size_t cap)
{
    char full[4096];
    snprintf(full, sizeof full, "( %s ) 2>&1", cmdline);
    FILE *p = popen(full, "r");
    if (!p)
        return -1;
    size_t n = 0;
    s_read_polling(c, p, out, cap, &n, 0, 60000);
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void s_discover(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    ab_client_t *c = th_client(port), *watcher = th_client(port);
    s_events_t ev = {0};
    CHECK_EQ(ab_client_watch(watcher, s_on_event, &ev, 5000), AB_OK);
    pid_t w1 = th_worker(port, "llm", "--name", "d1", "--capacity", "3", "--label",
                         "model=llama3.2:1b", "--label", "gpu=0", NULL);
    th_worker(port, "embed", "--name", "d2", NULL);
    CHECK_TRUE(s_wait_event(watcher, &ev, "join", "d1") >= 0);
    CHECK_TRUE(s_wait_event(watcher, &ev, "join", "d2") >= 0);

    ab_directory_t *d = NULL;
    /* The first heartbeat follows the registration: it brings the state. */
    for (int i = 0; i < 100; i++) {
        REQUIRE(ab_discover(c, "llm", 5000, &d) == AB_OK);
        int got = d->n_workers == 1 && d->workers[0].backend_state[0];
        ab_directory_destroy(&d);
        if (got)
            break;
        ab_client_poll(c, 50);
    }
    REQUIRE(ab_discover(c, NULL, 5000, &d) == AB_OK);
    CHECK_EQ(d->n_services, 2);
    CHECK_EQ(d->n_workers, 2);
    ab_directory_destroy(&d);
    REQUIRE(ab_discover(c, "llm", 5000, &d) == AB_OK);
    REQUIRE(d->n_workers == 1 && d->n_services == 1);
    const ab_worker_info_t *w = &d->workers[0];
    CHECK_STR(d->services[0].name, "llm");
    CHECK_EQ(d->services[0].free_credit, 3);
    CHECK_STR(w->name, "d1");
    CHECK_STR(w->service, "llm");
    CHECK_STR(w->health, "healthy");
    CHECK_STR(w->backend_state, "ok");
    CHECK_EQ(w->capacity, 3);
    CHECK_EQ(w->free_credit, 3);
    CHECK_TRUE(w->interval_ms >= 1000); /* the floor, or doubled since */
    CHECK_EQ(w->n_labels, 2);
    int labels = 0;
    for (size_t i = 0; i < w->n_labels; i++)
        labels += (!strcmp(w->label_keys[i], "model") &&
                   !strcmp(w->label_values[i], "llama3.2:1b")) +
                  (!strcmp(w->label_keys[i], "gpu") && !strcmp(w->label_values[i], "0"));
    CHECK_EQ(labels, 2);
    ab_directory_destroy(&d);
    REQUIRE(ab_discover(c, "nosuch", 5000, &d) == AB_OK);
    CHECK_EQ(d->n_workers + d->n_services, 0);
    ab_directory_destroy(&d);

    /* brokerctl shows the same, with health. The watcher is polled meanwhile:
     * under load the four runs may outlast the broker's patience with it. */
    char cmd[512], out[8192];
    snprintf(cmd, sizeof cmd, "%s --broker %s --json workers", th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(s_run_polling(watcher, cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "\"health\": \"healthy\"") != NULL);
    CHECK_TRUE(strstr(out, "\"interval_ms\"") != NULL);
    CHECK_TRUE(strstr(out, "\"suspicion\"") != NULL);
    snprintf(cmd, sizeof cmd, "%s --broker %s workers", th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(s_run_polling(watcher, cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "HEALTH") != NULL && strstr(out, "healthy") != NULL);
    snprintf(cmd, sizeof cmd, "%s --broker %s --json stats", th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(s_run_polling(watcher, cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "\"duplicates_dropped\": 0") != NULL);
    CHECK_TRUE(strstr(out, "\"redispatched\": 0") != NULL);
    snprintf(cmd, sizeof cmd, "%s --broker %s stats", th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(s_run_polling(watcher, cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "redispatched 0") != NULL && strstr(out, "ejected 0") != NULL);

    th_kill9(w1); /* leaves without a word */
    CHECK_TRUE(s_wait_event(watcher, &ev, "leave", "d1") >= 0);
    CHECK_TRUE(s_find_event(&ev, "leave", "d2") < 0);
    /* brokerctl watch sees a join too. */
    snprintf(cmd, sizeof cmd, "timeout 15 %s --broker %s --json --events 1 --timeout-ms 5000 watch",
             th_bin("brokerctl"), th_ep(port));
    FILE *p = popen(cmd, "r");
    REQUIRE(p != NULL);
    /* Nothing says when it has subscribed: a worker joins each second until
     * it prints one (at most 10). */
    char line[1024] = "", name[16] = "", quoted[24];
    size_t n = 0;
    int started = 0;
    while (started < 10) {
        snprintf(name, sizeof name, "d%d", 3 + started++);
        th_worker(port, "llm", "--name", name, NULL);
        if (s_read_polling(watcher, p, line, sizeof line, &n, 1, 1000))
            break;
    }
    CHECK_EQ(pclose(p), 0);
    CHECK_TRUE(strstr(line, "\"change\":\"join\"") != NULL);
    int seen = 0; /* which of the workers started it saw join */
    for (int i = 0; i < started && !seen; i++) {
        snprintf(name, sizeof name, "d%d", 3 + i);
        snprintf(quoted, sizeof quoted, "\"%s\"", name);
        seen = strstr(line, quoted) != NULL;
    }
    CHECK_TRUE(seen);
    CHECK_TRUE(s_wait_event(watcher, &ev, "join", name) >= 0);
    ab_client_destroy(&watcher);
    ab_client_destroy(&c);
}

/* The subscription survives a broker restart: the library subscribes again. */
static void s_watch_restart(void)
{
    int port = th_free_port();
    pid_t broker = th_broker(port, NULL);
    ab_client_t *watcher = th_client(port);
    s_events_t ev = {0};
    CHECK_EQ(ab_client_watch(watcher, s_on_event, &ev, 5000), AB_OK);
    th_worker(port, "svc", "--name", "r1", NULL);
    CHECK_TRUE(s_wait_event(watcher, &ev, "join", "r1") >= 0);
    CHECK_EQ(th_stop(broker), 0);
    /* It sees the disconnect (a state, not 300 ms of polling) */
    for (int64_t end = ab_now_ms() + 10000; ab_client_connected(watcher) && ab_now_ms() < end;)
        ab_client_poll(watcher, 50);
    CHECK_EQ(ab_client_connected(watcher), 0);
    th_broker(port, NULL);
    for (int64_t end = ab_now_ms() + 10000; !ab_client_connected(watcher) && ab_now_ms() < end;)
        ab_client_poll(watcher, 50);
    /* Two round trips on the same connection: the broker has handled the
     * library's new subscription, sent when it saw the reconnect. */
    for (int i = 0; i < 2; i++) {
        ab_directory_t *d = NULL;
        CHECK_EQ(ab_discover(watcher, NULL, 5000, &d), AB_OK);
        ab_directory_destroy(&d);
    }
    int before = ev.n;
    th_worker(port, "svc", "--name", "r2", NULL);
    CHECK_TRUE(s_wait_event(watcher, &ev, "join", "r2") >= 0);
    CHECK_TRUE(ev.n > before);
    ab_client_destroy(&watcher);
}

static unsigned s_named_agents(ab_client_t *c)
{
    Agentbus__Stats *st = th_stats(c);
    unsigned n = st ? st->named_agents : 0;
    if (st)
        agentbus__stats__free_unpacked(st, NULL);
    return n;
}

/* The subscription survives the broker dropping the watcher for silence (a
 * watcher not polled for a while): the broker asks it to say HELLO again,
 * and the library subscribes again with it. The watcher has a name, so the
 * broker's named_agents shows when it forgot it and when it knows it again. */
static void s_watch_silence(void)
{
    int port = th_free_port();
    pid_t broker = th_broker(port, "--heartbeat-ms", "100", "--liveness", "3", NULL);
    ab_client_t *c = th_client(port);
    ab_options_t *o = ab_options_new();
    REQUIRE(o && ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
    REQUIRE(ab_options_set_name(o, "watcher") == AB_OK);
    ab_client_t *watcher = NULL;
    REQUIRE(ab_client_new(&watcher, o) == AB_OK);
    ab_options_destroy(&o);
    s_events_t ev = {0};
    CHECK_EQ(ab_client_watch(watcher, s_on_event, &ev, 5000), AB_OK);
    th_worker(port, "svc", "--name", "s1", NULL);
    CHECK_TRUE(s_wait_event(watcher, &ev, "join", "s1") >= 0);
    CHECK_EQ(s_named_agents(c), 1);
    /* Silence: the watcher is not polled until the broker has dropped it. */
    int64_t end = ab_now_ms() + 20000;
    while (s_named_agents(c) != 0 && ab_now_ms() < end)
        th_sleep_ms(100);
    REQUIRE(s_named_agents(c) == 0);
    /* Polled again: its heartbeat gets a HELLO back, it says HELLO again. */
    for (end = ab_now_ms() + 20000; s_named_agents(c) != 1 && ab_now_ms() < end;)
        ab_client_poll(watcher, 50);
    REQUIRE(s_named_agents(c) == 1);
    /* One round trip on the same connection: the broker has handled the
     * subscription the library sent right after its HELLO. */
    ab_directory_t *d = NULL;
    CHECK_EQ(ab_discover(watcher, NULL, 5000, &d), AB_OK);
    ab_directory_destroy(&d);
    /* A join it sees: s2's, else the next one's. The watcher is not polled
     * while a worker starts, and 300 ms unpolled (a busy machine) drop it
     * for silence again: a join while it was away is none of its events.
     * It comes back (bound again) and watches on, so a later one counts;
     * a join missed while it stayed bound fails. */
    int seen = -1;
    for (int k = 2; k < 6 && seen < 0; k++) {
        int bound = s_log_count(broker, "agent 'watcher' bound", NULL);
        char name[8];
        snprintf(name, sizeof name, "s%d", k);
        th_worker(port, "svc", "--name", name, NULL);
        seen = s_wait_event(watcher, &ev, "join", name);
        if (seen < 0 && s_log_count(broker, "agent 'watcher' bound", NULL) == bound)
            break;
        if (seen < 0)
            printf("the watcher was dropped for silence again: %s's join was not its\n", name);
    }
    CHECK_TRUE(seen >= 0);
    ab_client_destroy(&watcher);
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
    static s_slot_t sa[100], sb[100];
    s_done = 0;
    for (int i = 0; i < 100; i++)
        CHECK_EQ(ab_client_request_start(a, "slow", "x", 1,
                                         &(ab_request_opts_t){.timeout_ms = 60000}, s_slot_cb,
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
                                         &(ab_request_opts_t){.timeout_ms = 60000}, s_slot_cb,
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
        static s_slot_t sf[25];
        memset(sf, 0, sizeof sf);
        int before = s_done;
        for (int i = 0; i < 25; i++)
            ab_client_request_start(fl, "slow", payload, sizeof payload,
                                    &(ab_request_opts_t){.timeout_ms = 60000}, s_slot_cb, &sf[i],
                                    NULL);
        int64_t end = ab_now_ms() + 10000;
        while (s_done - before < 25 && ab_now_ms() < end)
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

/* --- graceful shutdown ------------------------------------------------------------------------ */
/* A worker on a thread of this test, named NAME, that holds every job it
 * gets until RELEASE is set, then answers them "done": the broker's drain
 * then lasts until the test lets it end, not for a delay the test's next
 * step must beat. */
typedef struct {
    int port;
    const char *name;
    atomic_int held, release, stop;
    pthread_t th;
} s_holder_t;

static void *s_holder_main(void *arg)
{
    s_holder_t *x = arg;
    ab_options_t *o = ab_options_new();
    ab_worker_t *w = NULL;
    int rc = o && ab_options_set_endpoint(o, th_ep(x->port)) == AB_OK &&
                     ab_options_set_name(o, x->name) == AB_OK
                 ? ab_worker_new(&w, o, "job", 8)
                 : AB_ENOMEM;
    ab_options_destroy(&o);
    if (rc != AB_OK)
        return NULL;
    ab_job_t *jobs[8];
    int n = 0;
    while (!atomic_load(&x->stop)) {
        ab_job_t *j = NULL;
        if (ab_worker_recv(w, &j, 20) == AB_OK && j) {
            if (n < 8)
                jobs[n++] = j;
            else
                ab_worker_fail(w, &j, AB_EINTERNAL, "more than the capacity");
            atomic_store(&x->held, n);
        }
        if (atomic_load(&x->release))
            while (n > 0)
                ab_worker_reply(w, &jobs[--n], "done", 4);
    }
    while (n > 0)
        ab_worker_reply(w, &jobs[--n], "done", 4);
    ab_worker_destroy(&w);
    return NULL;
}

static void s_holder_start(s_holder_t *x, ab_client_t *c)
{
    REQUIRE(pthread_create(&x->th, NULL, s_holder_main, x) == 0);
    REQUIRE(th_wait_workers(c, "job", 1, 10000) == 0);
}

/* Polls C until the holder has N jobs (bounded): 0 or -1. */
static int s_holder_wait(s_holder_t *x, ab_client_t *c, int n)
{
    for (int64_t end = ab_now_ms() + 10000; atomic_load(&x->held) < n;) {
        if (ab_now_ms() > end)
            return -1;
        ab_client_poll(c, 20);
    }
    return 0;
}

static void s_holder_end(s_holder_t *x)
{
    atomic_store(&x->stop, 1);
    pthread_join(x->th, NULL);
}

static void s_broker_drain(void)
{
    int port = th_free_port();
    /* The drain ends when the held requests are answered, which this test
     * decides: no drain-ms to beat. */
    pid_t broker = th_broker(port, "--drain-ms", "600000", NULL);
    ab_client_t *c = th_client(port);
    s_holder_t h1 = {.port = port, .name = "bd1"};
    s_holder_start(&h1, c);
    static s_slot_t slots[7];
    s_done = 0;
    for (int i = 0; i < 6; i++)
        CHECK_EQ(ab_client_request_start(c, "job", "x", 1,
                                         &(ab_request_opts_t){.timeout_ms = 60000}, s_slot_cb,
                                         &slots[i], NULL),
                 AB_OK);
    /* States, not 200 and 100 ms of polling: the six at the worker before
     * the signal (the broker refuses one it gets after), the broker
     * draining before the late one (it serves one it gets before), and
     * the six held until the late one was answered (a broker whose six
     * were done by then had gone: DISCONNECTED). */
    REQUIRE(s_holder_wait(&h1, c, 6) == 0);
    REQUIRE(kill(broker, SIGTERM) == 0);
    REQUIRE(s_wait_log(c, broker, "draining: ", 1, 10000) == 0);
    CHECK_EQ(ab_client_request(c, "job", "late", 4, 5000, NULL, NULL), AB_EBUSY);
    CHECK_TRUE(strstr(ab_client_last_error(c), "shutting down") != NULL);
    atomic_store(&h1.release, 1);
    int64_t end = ab_now_ms() + 10000;
    while (s_done < 6 && ab_now_ms() < end)
        ab_client_poll(c, 50);
    for (int i = 0; i < 6; i++)
        CHECK_EQ(slots[i].status, AB_OK); /* drained: finished, not failed */
    CHECK_EQ(th_wait_exit(broker, 8000), 0);
    ab_client_destroy(&c);
    s_holder_end(&h1);

    /* Drain time too short for the work held: answered with an error, exit 0. */
    port = th_free_port();
    broker = th_broker(port, "--drain-ms", "300", NULL);
    c = th_client(port);
    s_holder_t h2 = {.port = port, .name = "bd2"}; /* answers only once the broker is gone */
    s_holder_start(&h2, c);
    memset(slots, 0, sizeof slots);
    s_done = 0;
    for (int i = 0; i < 2; i++)
        CHECK_EQ(ab_client_request_start(c, "job", "x", 1,
                                         &(ab_request_opts_t){.timeout_ms = 10000}, s_slot_cb,
                                         &slots[i], NULL),
                 AB_OK);
    REQUIRE(s_holder_wait(&h2, c, 2) == 0); /* else refused, not cut short */
    REQUIRE(kill(broker, SIGTERM) == 0);
    end = ab_now_ms() + 5000;
    while (s_done < 2 && ab_now_ms() < end)
        ab_client_poll(c, 50);
    CHECK_EQ(slots[0].status, AB_EINTERNAL);
    CHECK_EQ(slots[1].status, AB_EINTERNAL);
    CHECK_EQ(th_wait_exit(broker, 5000), 0);
    ab_client_destroy(&c);
    s_holder_end(&h2);
}

/* A worker drains on SIGTERM (finishing what it holds, taking nothing new)
 * and says so in its log: how many requests it still held when it began,
 * and how it ended (all answered, or --drain-ms passed: handed back). */
static void s_worker_drain(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    pid_t w1 = th_worker(port, "job", "--name", "wd1", "--capacity", "4", "--delay-ms", "500",
                         "--drain-ms", "3000", "--log-level", "debug", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "job", 1, 10000) == 0);
    static s_slot_t slots[8];
    s_done = 0;
    for (int i = 0; i < 4; i++)
        CHECK_EQ(ab_client_request_start(c, "job", "x", 1,
                                         &(ab_request_opts_t){.timeout_ms = 20000}, s_slot_cb,
                                         &slots[i], NULL),
                 AB_OK);
    /* Its backend holds all four (a state, not 100 ms of polling): a job
     * still in the library's ready queue when the drain begins is never
     * started but handed back, and the broker queues it again. */
    REQUIRE(s_wait_log(c, w1, "holding request", 4, 10000) == 0);
    REQUIRE(kill(w1, SIGTERM) == 0);
    ab_client_poll(c, 100);
    /* Sent after the SIGTERM: the draining worker gets nothing new. */
    CHECK_EQ(ab_client_request_start(c, "job", "y", 1, &(ab_request_opts_t){.timeout_ms = 20000},
                                     s_slot_cb, &slots[4], NULL),
             AB_OK);
    int64_t end = ab_now_ms() + 10000;
    while (s_done < 4 && ab_now_ms() < end)
        ab_client_poll(c, 50);
    for (int i = 0; i < 4; i++)
        CHECK_EQ(slots[i].status, AB_OK); /* finished by the draining worker */
    CHECK_EQ(th_wait_exit(w1, 5000), 0);
    CHECK_TRUE(s_log_has(w1, "draining: taking nothing new, finishing 4 requests in flight",
                         "--drain-ms"));
    CHECK_TRUE(s_log_has(w1, "drained in ", "every request answered"));
    CHECK_EQ(slots[4].finals, 0); /* waits for a worker */
    th_worker(port, "job", "--name", "wd2", "--capacity", "4", NULL);
    end = ab_now_ms() + 10000;
    while (s_done < 5 && ab_now_ms() < end)
        ab_client_poll(c, 50);
    CHECK_EQ(slots[4].status, AB_OK);

    /* Too slow to finish within its drain: what it holds is handed back. */
    pid_t w3 = th_worker(port, "slowjob", "--name", "wd3", "--delay-ms", "5000", "--drain-ms",
                         "300", "--log-level", "debug", NULL);
    REQUIRE(th_wait_workers(c, "slowjob", 1, 10000) == 0);
    CHECK_EQ(ab_client_request_start(c, "slowjob", "z", 1,
                                     &(ab_request_opts_t){.timeout_ms = 20000}, s_slot_cb,
                                     &slots[5], NULL),
             AB_OK);
    REQUIRE(s_wait_log(c, w3, "holding request", 1, 10000) == 0); /* in its backend */
    REQUIRE(kill(w3, SIGTERM) == 0);
    CHECK_EQ(th_wait_exit(w3, 5000), 0);
    CHECK_TRUE(s_log_has(w3, "finishing 1 request in flight", NULL));
    CHECK_TRUE(s_log_has(w3, "drain ended after ", "(--drain-ms 300) with 1 request in flight: "
                         "handed back to the broker"));
    /* Timed from the signal: the loop, waiting up to a second, logged the
     * drain's start late and timed it from there ("after 0 ms"). */
    long drained = s_log_number(w3, "drain ended after ");
    printf("wd3: drain ended after %ld ms\n", drained);
    CHECK_RANGE(drained, 300, 5000);
    th_worker(port, "slowjob", "--name", "wd4", "--delay-ms", "100", NULL);
    end = ab_now_ms() + 10000;
    while (s_done < 6 && ab_now_ms() < end)
        ab_client_poll(c, 50);
    CHECK_EQ(slots[5].finals, 1);
    CHECK_EQ(slots[5].status, AB_OK);
    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    CHECK_EQ(st->redispatched, 1);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&c);
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
static int s_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void s_agent_spread(void)
{
    enum { N = 40, FROM_MS = 1500, TO_MS = 6500, WINDOW_MS = 60, MAX_AT = 600 };
    int port = th_free_port();
    void *ctx = zmq_ctx_new(), *router = zmq_socket(ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger);
    REQUIRE(zmq_bind(router, th_ep(port)) == 0);
    ab_client_t *c[N];
    for (int i = 0; i < N; i++) { /* plain, whatever the run's AB_KEY: the ROUTER has no CURVE */
        ab_options_t *o = ab_options_new();
        REQUIRE(o && ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
        REQUIRE(ab_options_set_key_file(o, "") == AB_OK &&
                ab_options_set_broker_key(o, "") == AB_OK);
        REQUIRE(ab_client_new(&c[i], o) == AB_OK);
        ab_options_destroy(&o);
    }
    static int64_t at[MAX_AT];
    int n = 0;
    int64_t t0 = ab_now_ms();
    for (int64_t t = 0; t < TO_MS; t = ab_now_ms() - t0) {
        for (int i = 0; i < N; i++)
            ab_client_poll(c[i], 0);
        zmq_pollitem_t it = {router, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 1) <= 0)
            continue;
        zmq_msg_t m;
        zmq_msg_init(&m);
        while (zmq_msg_recv(&m, router, ZMQ_DONTWAIT) >= 0) {
            int more = zmq_msg_more(&m);
            while (more) { /* the rest of this message: header and body */
                zmq_msg_recv(&m, router, 0);
                more = zmq_msg_more(&m);
            }
            int64_t when = ab_now_ms() - t0;
            if (when >= FROM_MS && when < TO_MS && n < MAX_AT)
                at[n++] = when;
        }
        zmq_msg_close(&m);
    }
    /* About 5 s x 40 beats: they keep coming at (at most) the interval. */
    REQUIRE(n >= 3 * N);
    qsort(at, (size_t)n, sizeof at[0], s_cmp_i64);
    int most = 0, waves = 0;
    int64_t wave_at = -1000000;
    for (int lo = 0, hi = 0; hi < n; hi++) {
        while (at[hi] - at[lo] >= WINDOW_MS)
            lo++;
        if (hi - lo + 1 > most)
            most = hi - lo + 1;
        if (hi - lo + 1 > N * 3 / 4 && at[hi] - wave_at >= 500) { /* a new wave */
            waves++;
            wave_at = at[hi];
        }
    }
    printf("%d heartbeats from %d agents in %d ms; at most %d in any %d ms; %d waves of more "
           "than %d\n", n, N, TO_MS - FROM_MS, most, WINDOW_MS, waves, N * 3 / 4);
    REQUIRE(waves <= 2);
    for (int i = 0; i < N; i++)
        ab_client_destroy(&c[i]);
    zmq_close(router);
    zmq_ctx_term(ctx);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"kill9_load", s_kill9_load}, {"sigstop", s_sigstop}, {"eject", s_eject},
        {"interval", s_interval}, {"discover", s_discover}, {"flood", s_flood},
        {"broker_drain", s_broker_drain}, {"worker_drain", s_worker_drain},
        {"watch_restart", s_watch_restart}, {"watch_silence", s_watch_silence},
        {"agent_spread", s_agent_spread},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
