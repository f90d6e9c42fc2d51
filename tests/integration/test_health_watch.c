/*
 * test_health_watch.c - what clients see as workers and brokers come and
 * go: discovery and its change events, watchers that outlive a broker
 * restart or being dropped for silence, the broker and workers draining on
 * SIGTERM. Cases of test_health (test_health.c's table, healthtest.h).
 */
#include "harness.h"
#include "healthtest.h"
#include "test.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

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

void health_discover(void)
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
void health_watch_restart(void)
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
void health_watch_silence(void)
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

void health_broker_drain(void)
{
    int port = th_free_port();
    /* The drain ends when the held requests are answered, which this test
     * decides: no drain-ms to beat. */
    pid_t broker = th_broker(port, "--drain-ms", "600000", NULL);
    ab_client_t *c = th_client(port);
    s_holder_t h1 = {.port = port, .name = "bd1"};
    s_holder_start(&h1, c);
    static ht_slot_t slots[7];
    ht_done = 0;
    for (int i = 0; i < 6; i++)
        CHECK_EQ(ab_client_request_start(c, "job", "x", 1,
                                         &(ab_request_opts_t){.timeout_ms = 60000}, ht_slot_cb,
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
    while (ht_done < 6 && ab_now_ms() < end)
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
    ht_done = 0;
    for (int i = 0; i < 2; i++)
        CHECK_EQ(ab_client_request_start(c, "job", "x", 1,
                                         &(ab_request_opts_t){.timeout_ms = 10000}, ht_slot_cb,
                                         &slots[i], NULL),
                 AB_OK);
    REQUIRE(s_holder_wait(&h2, c, 2) == 0); /* else refused, not cut short */
    REQUIRE(kill(broker, SIGTERM) == 0);
    end = ab_now_ms() + 5000;
    while (ht_done < 2 && ab_now_ms() < end)
        ab_client_poll(c, 50);
    CHECK_EQ(slots[0].status, AB_EINTERNAL);
    CHECK_EQ(slots[1].status, AB_EINTERNAL);
    CHECK_EQ(th_wait_exit(broker, 5000), 0);
    ab_client_destroy(&c);
    s_holder_end(&h2);
}

/* The broker's drain lines count in words that agree: one request held is
 * "1 request held" (it said "1 requests held"), and the line at the end
 * counts what is left the same way. */
void health_broker_drain_one(void)
{
    int port = th_free_port();
    pid_t broker = th_broker(port, "--drain-ms", "300", NULL);
    ab_client_t *c = th_client(port);
    s_holder_t h = {.port = port, .name = "bd1"}; /* answers only once the broker is gone */
    s_holder_start(&h, c);
    static ht_slot_t slot;
    ht_done = 0;
    CHECK_EQ(ab_client_request_start(c, "job", "x", 1, &(ab_request_opts_t){.timeout_ms = 10000},
                                     ht_slot_cb, &slot, NULL),
             AB_OK);
    REQUIRE(s_holder_wait(&h, c, 1) == 0);
    REQUIRE(kill(broker, SIGTERM) == 0);
    for (int64_t end = ab_now_ms() + 5000; ht_done < 1 && ab_now_ms() < end;)
        ab_client_poll(c, 50);
    CHECK_EQ(th_wait_exit(broker, 5000), 0);
    CHECK_TRUE(s_log_has(broker, "draining: 1 request held, up to 300 ms", NULL));
    CHECK_TRUE(s_log_has(broker, "drained: 1 answered with an error", NULL));
    CHECK_TRUE(s_log_has(broker, "stopping: 0 requests pending", NULL));
    CHECK_EQ(s_log_count(broker, "1 requests", NULL), 0);
    ab_client_destroy(&c);
    s_holder_end(&h);
}

/* A worker drains on SIGTERM (finishing what it holds, taking nothing new)
 * and says so in its log: how many requests it still held when it began,
 * and how it ended (all answered, or --drain-ms passed: handed back). */
void health_worker_drain(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    pid_t w1 = th_worker(port, "job", "--name", "wd1", "--capacity", "4", "--delay-ms", "500",
                         "--drain-ms", "3000", "--log-level", "debug", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "job", 1, 10000) == 0);
    static ht_slot_t slots[8];
    ht_done = 0;
    for (int i = 0; i < 4; i++)
        CHECK_EQ(ab_client_request_start(c, "job", "x", 1,
                                         &(ab_request_opts_t){.timeout_ms = 20000}, ht_slot_cb,
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
                                     ht_slot_cb, &slots[4], NULL),
             AB_OK);
    int64_t end = ab_now_ms() + 10000;
    while (ht_done < 4 && ab_now_ms() < end)
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
    while (ht_done < 5 && ab_now_ms() < end)
        ab_client_poll(c, 50);
    CHECK_EQ(slots[4].status, AB_OK);

    /* Too slow to finish within its drain: what it holds is handed back. */
    pid_t w3 = th_worker(port, "slowjob", "--name", "wd3", "--delay-ms", "5000", "--drain-ms",
                         "300", "--log-level", "debug", NULL);
    REQUIRE(th_wait_workers(c, "slowjob", 1, 10000) == 0);
    CHECK_EQ(ab_client_request_start(c, "slowjob", "z", 1,
                                     &(ab_request_opts_t){.timeout_ms = 20000}, ht_slot_cb,
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
    while (ht_done < 6 && ab_now_ms() < end)
        ab_client_poll(c, 50);
    CHECK_EQ(slots[5].finals, 1);
    CHECK_EQ(slots[5].status, AB_OK);
    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    CHECK_EQ(st->redispatched, 1);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&c);
}
