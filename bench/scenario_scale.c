/*
 * scenario_scale.c - the scale part of the seed workload: N connected
 * agents (each a real libagentbus client, spread over child processes of
 * PER_PROC clients: the library's shared ZeroMQ context allows 1023
 * sockets and each client takes three), idle and then active.
 *
 * Measured against a bare ROUTER holding the same number of connections
 * from raw DEALERs (a child process of this program, --bare-router):
 *   - broker RSS per connection above the bare ROUTER's, from the RSS with
 *     10 connections to the RSS with N (so start-up memory cancels out);
 *   - a lone request's round trip (sync, to an echo worker) with 10
 *     connected, with N idle, and with N active (each agent one request a
 *     second); with N idle also interleaved with a reference broker (same
 *     flags, own worker) that keeps 10 agents, which judges the p99 ratio;
 *   - the directory (ab_discover) and stats/agents answering with N.
 * Children are driven over pipes: they print "ready" when their clients
 * are connected and obey "active S" and "quit" on stdin.
 */
#include "scenario.h"
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "bench_util.h"
#include "tl_clock.h"
#include "tl_args.h"
#include "tl_hist.h"
#include "tl_port.h"

#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

/* --- children ------------------------------------------------------------------- */
static volatile sig_atomic_t s_stop;
static void s_on_term(int sig)
{
    (void)sig;
    s_stop = 1;
}

int sc_bare_router(const char *ep)
{
    signal(SIGTERM, s_on_term);
    void *ctx = zmq_ctx_new(), *r = zmq_socket(ctx, ZMQ_ROUTER);
    if (zmq_bind(r, ep) != 0)
        return 1;
    zmq_pollitem_t it = {r, 0, ZMQ_POLLIN, 0};
    while (!s_stop)
        if (zmq_poll(&it, 1, 200) > 0) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            while (zmq_msg_recv(&m, r, ZMQ_DONTWAIT) >= 0)
                ;
            zmq_msg_close(&m);
        }
    zmq_close(r);
    zmq_ctx_term(ctx);
    return 0;
}

/* Raw DEALERs: connect, say one frame so the ROUTER knows the peer. */
static int s_child_raw(const char *ep, int n)
{
    void *ctx = zmq_ctx_new();
    zmq_ctx_set(ctx, ZMQ_MAX_SOCKETS, n + 16);
    void **s = calloc((size_t)n, sizeof *s);
    int linger = 0;
    for (int i = 0; s && i < n; i++) {
        s[i] = zmq_socket(ctx, ZMQ_DEALER);
        if (!s[i])
            return 1;
        zmq_setsockopt(s[i], ZMQ_LINGER, &linger, sizeof linger);
        zmq_connect(s[i], ep);
        zmq_send(s[i], "hi", 2, ZMQ_DONTWAIT);
    }
    printf("ready %d\n", n);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin) && strncmp(line, "quit", 4) != 0)
        ;
    for (int i = 0; s && i < n; i++)
        zmq_close(s[i]);
    zmq_ctx_term(ctx);
    free(s);
    return 0;
}

typedef struct {
    int pending, ok, fail;
} s_load_t;

static void s_on_echo(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    s_load_t *l = arg;
    if (!ev->final)
        return;
    l->pending--;
    if (ev->status == AB_OK)
        l->ok++;
    else if (l->fail++ == 0)
        fprintf(stderr, "[scale child] first failure: %s: %s\n", ab_status_name(ev->status),
                ev->error_text);
}

/* Runs handle I while it has work (ZMQ_FD is edge-triggered: its signal is
 * spent until a poll returns 0), then notes when its timers want it. */
static void s_run_one(ab_client_t *c, int64_t now, int64_t *due)
{
    for (int k = 0; k < 64 && ab_client_poll(c, 0) > 0; k++)
        ;
    int left = ab_client_next_timeout_ms(c);
    *due = now + (left > 0 ? left : 1);
}

/* Each client one echo request a second for SECS, spread over the second.
 * A handle is run when its fd says input may wait, when it just sent, or
 * when its timers are due, as N agents each on its own event loop would
 * be: a turn over all N every few ms (as before issue 20's active run)
 * took these 40 processes most of the two cores at 10,000 agents and
 * starved the broker and the worker they measure. */
static void s_active(ab_client_t **c, int n, double secs, s_load_t *l)
{
    struct pollfd *pf = calloc((size_t)n, sizeof *pf);
    int64_t *due = calloc((size_t)n, sizeof *due);
    for (int i = 0; pf && due && i < n; i++) {
        int fd = -1;
        ab_client_fd(c[i], &fd);
        pf[i] = (struct pollfd){fd, POLLIN, 0};
    }
    uint64_t t0 = tl_now_us(), end = t0 + (uint64_t)(secs * 1e6), sent = 0;
    for (int64_t stop = tl_now_ms() + (int64_t)(secs * 1000) + 6000; pf && due;) {
        uint64_t now_us = tl_now_us();
        int sending = now_us < end;
        if (!sending && l->pending <= 0)
            break;
        if (tl_now_ms() >= stop)
            break; /* each request's own 5 s deadline has passed by now */
        uint64_t due_n = sending ? (uint64_t)((now_us - t0) / 1e6 * n) : sent;
        for (; sent < due_n; sent++) {
            int i = (int)(sent % (uint64_t)n);
            l->pending++;
            if (ab_client_request_start(c[i], "echo", "ping", 4,
                                        &(ab_request_opts_t){.timeout_ms = 5000}, s_on_echo, l,
                                        NULL) != AB_OK) {
                l->pending--;
                if (l->fail++ == 0)
                    fprintf(stderr, "[scale child] first failure: %s\n",
                            ab_client_last_error(c[i]));
            }
            due[i] = 0; /* sent: run it (ends its batching turn, rechecks its fd) */
        }
        int64_t now = tl_now_ms(), next = now + 100;
        for (int i = 0; i < n; i++) {
            if ((pf[i].revents & POLLIN) || due[i] <= now)
                s_run_one(c[i], now, &due[i]);
            pf[i].revents = 0;
            if (due[i] < next)
                next = due[i];
        }
        /* Wake for the next send (n a second) or the next timer. */
        int64_t wait = next - now;
        if (sending && wait > 1000 / n + 1)
            wait = 1000 / n + 1;
        poll(pf, (nfds_t)n, wait > 0 ? (int)wait : 0);
    }
    free(pf);
    free(due);
}

/* --scale-child ab|raw EP N PREFIX */
int sc_scale_child(int argc, char **argv)
{
    if (argc < 6)
        return 2;
    int n = atoi(argv[4]);
    if (!strcmp(argv[2], "raw"))
        return s_child_raw(argv[3], n);
    ab_client_t **c = calloc((size_t)n, sizeof *c);
    for (int i = 0; c && i < n; i++) {
        ab_options_t *o = ab_options_new();
        char name[64];
        snprintf(name, sizeof name, "%s-%d", argv[5], i);
        ab_options_set_name(o, name);
        ab_options_set_endpoint(o, argv[3]);
        int rc = ab_client_new(&c[i], o);
        ab_options_destroy(&o);
        if (rc != AB_OK) {
            printf("fail %d %s\n", i, ab_status_name(rc));
            fflush(stdout);
            return 1;
        }
    }
    /* Up to 120 s: with thousands connecting at once, the broker (and
     * these polls, 250 handles per process) share two cores. */
    int up = 0;
    for (int64_t end = tl_now_ms() + 120000; up < n && tl_now_ms() < end;) {
        up = 0;
        for (int i = 0; i < n; i++) {
            ab_client_poll(c[i], 0);
            up += ab_client_connected(c[i]);
        }
        if (up < n)
            usleep(200000);
    }
    printf("%s %d\n", up == n ? "ready" : "fail connected", up);
    fflush(stdout);
    /* Idle: each handle is run when its own timer says (its heartbeat,
     * 1 s by default), as N agents each on its own event loop would be; a
     * turn over all of them at once would send their heartbeats as one
     * burst, which is this loop's doing, not the agents'. */
    struct pollfd pf = {0, POLLIN, 0};
    int64_t *due = calloc((size_t)n, sizeof *due);
    for (;;) {
        int64_t now = tl_now_ms(), next = now + 500;
        for (int i = 0; i < n; i++) {
            if (!due || due[i] <= now) {
                ab_client_poll(c[i], 0);
                int left = ab_client_next_timeout_ms(c[i]);
                if (due)
                    due[i] = now + (left > 0 ? left : 1);
            }
            if (due && due[i] < next)
                next = due[i];
        }
        int wait = next > now ? (int)(next - now) : 1;
        if (poll(&pf, 1, wait > 500 ? 500 : wait) <= 0)
            continue;
        char line[64];
        if (!fgets(line, sizeof line, stdin) || !strncmp(line, "quit", 4))
            break;
        if (!strncmp(line, "active ", 7)) {
            s_load_t l = {0, 0, 0};
            s_active(c, n, atof(line + 7), &l);
            printf("active %d %d\n", l.ok, l.fail);
            fflush(stdout);
            if (due)
                memset(due, 0, (size_t)n * sizeof *due); /* each runs again at once */
        }
    }
    for (int i = 0; i < n; i++)
        ab_client_destroy(&c[i]);
    free(due);
    free(c);
    return 0;
}

/* --- the parent ----------------------------------------------------------------- */
/* Every process the scale part started, so an interrupted run stops them. */
static pid_t s_pids[512];
static int s_npids;

static void s_track(pid_t pid)
{
    if (pid > 0 && s_npids < (int)(sizeof s_pids / sizeof *s_pids))
        s_pids[s_npids++] = pid;
}

static void s_untrack(pid_t pid)
{
    for (int i = 0; i < s_npids; i++)
        if (s_pids[i] == pid) {
            s_pids[i] = s_pids[--s_npids];
            return;
        }
}

/* Processes of the scale part that crashed (bu_reaped): the run's exit
 * status says so (sc_scale_cleanup). */
static int s_crashed;

/* bu_stop_pids, and forgets them (a reaped pid may be reused). */
static void s_stop_pids(pid_t *pids, int n)
{
    s_crashed += bu_stop_pids(pids, n);
    for (int i = 0; i < n; i++)
        s_untrack(pids[i]);
}

int sc_scale_cleanup(void)
{
    s_crashed += bu_stop_pids(s_pids, s_npids);
    s_npids = 0;
    int n = s_crashed;
    s_crashed = 0;
    return n;
}
typedef struct {
    pid_t pid;
    FILE *in, *out;  /* its stdin (we write), its stdout (we read) */
} s_child_t;

static int s_child_start(s_child_t *k, const char *self, const char *mode, const char *ep, int n,
                         const char *prefix)
{
    int to[2], from[2];
    if (pipe(to) != 0 || pipe(from) != 0)
        return -1;
    char count[16];
    snprintf(count, sizeof count, "%d", n);
    fflush(NULL);
    k->pid = fork();
    if (k->pid == 0) {
        dup2(to[0], 0);
        dup2(from[1], 1);
        close(to[1]);
        close(from[0]);
        /* The agents' processes yield to the broker and the worker: on two
         * shared cores, 40 of them at their default share left the echo
         * worker one 43rd of the CPU at 10,000 active agents, and the
         * run measured this machine's load generator, not the bus. */
        int pri = nice(10); /* failing is not fatal: the figures then include that contention */
        (void)pri;
        execl(self, self, "--scale-child", mode, ep, count, prefix, (char *)NULL);
        _exit(127);
    }
    s_track(k->pid);
    close(to[0]);
    close(from[1]);
    k->in = fdopen(to[1], "w");
    k->out = fdopen(from[0], "r");
    return k->pid > 0 && k->in && k->out ? 0 : -1;
}

/* Reads one line from the child, waiting up to TIMEOUT_MS. */
static int s_child_line(s_child_t *k, char *line, size_t cap, int timeout_ms)
{
    struct pollfd pf = {fileno(k->out), POLLIN, 0};
    if (poll(&pf, 1, timeout_ms) <= 0 || !fgets(line, (int)cap, k->out))
        return -1;
    return 0;
}

static void s_children_stop(s_child_t *k, int n)
{
    for (int i = 0; i < n; i++)
        if (k[i].in) {
            fprintf(k[i].in, "quit\n");
            fflush(k[i].in);
        }
    for (int i = 0; i < n; i++) {
        if (k[i].pid > 0) {
            int waited = 0, st = 0;
            pid_t r;
            while ((r = waitpid(k[i].pid, &st, WNOHANG)) == 0 && waited++ < 500)
                usleep(10000);
            if (r == 0) { /* did not quit within 5 s */
                kill(k[i].pid, SIGKILL);
                waitpid(k[i].pid, NULL, 0);
            } else if (r == k[i].pid) {
                s_crashed += bu_reaped(k[i].pid, st);
            }
            s_untrack(k[i].pid);
        }
        if (k[i].in)
            fclose(k[i].in);
        if (k[i].out)
            fclose(k[i].out);
        memset(&k[i], 0, sizeof k[i]);
    }
}

static long s_rss_kib(pid_t pid)
{
    char path[64], line[128];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6))
            kib = atol(line + 6);
    if (f)
        fclose(f);
    return kib;
}

/* Starts children FROM..TO-1 with PER clients each (the last gets the
 * rest of TOTAL); waits for their "ready". Returns how many clients are up. */
static int s_connect(const sc_scale_cfg_t *cfg, s_child_t *k, int from, int total,
                     const char *mode, const char *ep, int *nk)
{
    int up = 0, started = *nk;
    for (int left = total; left > 0; (*nk)++) {
        int n = left < cfg->per_proc ? left : cfg->per_proc;
        char prefix[32];
        snprintf(prefix, sizeof prefix, "scale%d", from + *nk);
        if (s_child_start(&k[*nk], cfg->self, mode, ep, n, prefix) != 0)
            break;
        left -= n;
    }
    /* One deadline for all: the children connect at the same time. */
    int64_t deadline = tl_now_ms() + 180000;
    for (int i = started; i < *nk; i++) {
        char line[96];
        int64_t left = deadline - tl_now_ms();
        if (s_child_line(&k[i], line, sizeof line, left > 100 ? (int)left : 100) != 0)
            fprintf(stderr, "[scenario] scale: child %d did not answer\n", i);
        else if (!strncmp(line, "ready ", 6))
            up += atoi(line + 6);
        else if (!strncmp(line, "fail connected ", 15)) {
            up += atoi(line + 15);
            fprintf(stderr, "[scenario] scale: child %d: %d of its clients connected in 120 s\n", i,
                    atoi(line + 15));
        }
    }
    return up;
}

static pid_t s_spawn_quiet(const char *const *argv)
{
    fflush(NULL); /* else the child's freopen writes our buffered output again */
    pid_t pid = fork();
    if (pid == 0) {
        FILE *f = freopen("/dev/null", "w", stdout);
        (void)f;
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    s_track(pid);
    return pid;
}

/* COUNT sync echo round trips; p50/p99 in µs. */
static int s_lone(ab_client_t *c, int count, double *p50, double *p99)
{
    tl_hist_t h;
    tl_hist_reset(&h);
    char buf[64];
    memset(buf, 'x', sizeof buf);
    int fails = 0, in_row = 0;
    for (int i = 0; i < count + 200 && in_row < 10; i++) { /* 10 failures in a row: give up */
        uint64_t t = tl_now_ns();
        int rc = ab_client_request(c, "echo", buf, sizeof buf, 5000, NULL, NULL);
        in_row = rc != AB_OK ? in_row + 1 : 0;
        if (rc != AB_OK)
            fails++;
        else if (i >= 200)
            tl_hist_record(&h, tl_now_ns() - t);
    }
    *p50 = tl_hist_percentile(&h, 50) / 1e3;
    *p99 = tl_hist_percentile(&h, 99) / 1e3;
    return fails;
}

/* One lone echo request, its round trip recorded in H when RECORD; 1 on
 * failure. */
static int s_lone_one(ab_client_t *c, tl_hist_t *h, int record)
{
    char buf[64];
    memset(buf, 'x', sizeof buf);
    uint64_t t = tl_now_ns();
    if (ab_client_request(c, "echo", buf, sizeof buf, 5000, NULL, NULL) != AB_OK)
        return 1;
    if (record)
        tl_hist_record(h, tl_now_ns() - t);
    return 0;
}

/* The same lone round trip to two brokers at once, interleaved: C's broker
 * holds N connections, REF's (same flags, same worker) holds 10. COUNT
 * requests each, in rounds of 100 that alternate which broker goes first,
 * so a burst of the host's noise lands on both sides alike: the p99 ratio
 * of two sequential measurements swung 0.10-6.19x between back-to-back
 * runs on this host (issue 20). P[0..1] = p50/p99 of C, P[2..3] of REF. */
static int s_lone_pair(ab_client_t *c, ab_client_t *ref, int count, double p[4])
{
    tl_hist_t h[2];
    tl_hist_reset(&h[0]);
    tl_hist_reset(&h[1]);
    ab_client_t *cl[2] = {c, ref};
    int fails = 0;
    for (int i = 0; i < 100; i++) /* warm both */
        fails += s_lone_one(c, &h[0], 0) + s_lone_one(ref, &h[1], 0);
    for (int r = 0; r * 100 < count && fails < 50; r++)
        for (int side = 0; side < 2; side++) {
            int w = (r + side) % 2; /* round r: C first when r is even */
            for (int i = 0; i < 100; i++)
                fails += s_lone_one(cl[w], &h[w], 1);
        }
    for (int w = 0; w < 2; w++) {
        p[2 * w] = tl_hist_percentile(&h[w], 50) / 1e3;
        p[2 * w + 1] = tl_hist_percentile(&h[w], 99) / 1e3;
    }
    return fails;
}

/* Milliseconds a control query (or the directory) takes; -1 on error.
 * *COUNT gets the agents listed (for "agents"). */
static double s_query_ms(ab_client_t *c, const char *what, size_t *count)
{
    uint64_t t = tl_now_us();
    if (!strcmp(what, "discover")) {
        ab_directory_t *d = NULL;
        if (ab_discover(c, "*", 10000, &d) != AB_OK)
            return -1;
        ab_directory_destroy(&d);
        return (tl_now_us() - t) / 1e3;
    }
    void *buf = NULL;
    size_t len = 0;
    if (ab_client_control(c, what, 10000, &buf, &len) != AB_OK)
        return -1;
    double ms = (tl_now_us() - t) / 1e3;
    if (count && !strcmp(what, "agents")) {
        Agentbus__AgentList *l = agentbus__agent_list__unpack(NULL, len, buf);
        *count = l ? l->n_agents : 0;
        if (l)
            agentbus__agent_list__free_unpacked(l, NULL);
    }
    ab_free(buf);
    return ms;
}

/* The bare ROUTER's RSS with 10 and with N raw connections. */
static int s_bare_part(const sc_scale_cfg_t *cfg, s_child_t *k, long *rss10, long *rssn)
{
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", tl_free_port());
    const char *argv[] = {cfg->self, "--bare-router", ep, NULL};
    pid_t bare = s_spawn_quiet(argv);
    usleep(300000);
    int nk = 0, up = s_connect(cfg, k, 0, 10, "raw", ep, &nk);
    usleep(1000000);
    *rss10 = s_rss_kib(bare);
    up += s_connect(cfg, k, 1000, cfg->agents - 10, "raw", ep, &nk);
    usleep(2000000);
    *rssn = s_rss_kib(bare);
    s_children_stop(k, nk);
    s_stop_pids(&bare, 1);
    return up;
}

/* Everything the scale part measures. */
typedef struct {
    int bare_up, up, nk, fails[3];
    long b10, bn, r10, rn, aok, afail;
    double l10[2], ln[2], la[2], q_dir, q_stats, q_agents, connect_s;
    double pair[4]; /* interleaved with the 10-agent reference broker: N p50/p99, 10 p50/p99 */
    int pair_fails;
    size_t listed;
} s_fig_t;

/* N agents active (one request a second each) while C measures; the
 * children report what their agents got. Child 1 holds the reference
 * broker's agents (s_bus_part): they stay idle. */
static void s_active_phase(const sc_scale_cfg_t *cfg, s_child_t *k, ab_client_t *c, s_fig_t *f)
{
    for (int i = 0; i < f->nk; i++) {
        if (i == 1)
            continue;
        fprintf(k[i].in, "active %g\n", cfg->active_s);
        fflush(k[i].in);
    }
    f->fails[2] = s_lone(c, cfg->lone, &f->la[0], &f->la[1]);
    int64_t deadline = tl_now_ms() + (int64_t)(cfg->active_s * 1000) + 60000;
    for (int i = 0; i < f->nk; i++) {
        if (i == 1)
            continue;
        char line[96];
        long a = 0, b = 0;
        int64_t left = deadline - tl_now_ms();
        if (s_child_line(&k[i], line, sizeof line, left > 100 ? (int)left : 100) == 0 &&
            sscanf(line, "active %ld %ld", &a, &b) == 2) {
            f->aok += a;
            f->afail += b;
        }
    }
}

/* The broker with 10 agents, then N idle (also measured interleaved with
 * the reference broker REF, which keeps 10), then N active, then 10 again. */
static void s_bus_part(const sc_scale_cfg_t *cfg, s_child_t *k, ab_client_t *c, pid_t broker,
                       const char *ep, ab_client_t *ref, const char *ref_ep, s_fig_t *f)
{
    f->up = s_connect(cfg, k, 0, 10, "ab", ep, &f->nk);
    int ref_up = s_connect(cfg, k, 0, 10, "ab", ref_ep, &f->nk); /* child 1: the reference's 10 */
    usleep(1000000);
    f->r10 = s_rss_kib(broker);
    f->fails[0] = s_lone(c, cfg->lone, &f->l10[0], &f->l10[1]);
    fprintf(stderr,
            "[scenario] scale: 10 agents: broker RSS %ld KiB, lone p50 %.0f us p99 %.0f us\n",
            f->r10, f->l10[0], f->l10[1]);
    uint64_t t = tl_now_us();
    f->up += s_connect(cfg, k, 1000, cfg->agents - 10, "ab", ep, &f->nk);
    f->connect_s = (tl_now_us() - t) / 1e6;
    usleep(2000000);
    f->rn = s_rss_kib(broker);
    f->fails[1] = s_lone(c, cfg->lone, &f->ln[0], &f->ln[1]);
    f->q_dir = s_query_ms(c, "discover", NULL);
    f->q_stats = s_query_ms(c, "stats", NULL);
    f->q_agents = s_query_ms(c, "agents", &f->listed);
    fprintf(stderr, "[scenario] scale: %d clients connected (their view) in %.1f s: broker RSS "
                    "%ld KiB, lone p50 %.0f us p99 %.0f us; discover %.1f ms, stats %.1f ms, "
                    "agents %.1f ms (%zu listed)\n",
            f->up, f->connect_s, f->rn, f->ln[0], f->ln[1], f->q_dir, f->q_stats, f->q_agents,
            f->listed);
    f->pair_fails = s_lone_pair(c, ref, 5000, f->pair); /* a p99 of 50 samples per side */
    fprintf(stderr, "[scenario] scale: interleaved with a broker of %d agents: lone p99 %.0f us "
                    "(%d connected) vs %.0f us (10), %d failed\n", ref_up, f->pair[1], f->up,
            f->pair[3], f->pair_fails);
    s_active_phase(cfg, k, c, f);
    /* Back to 10 connected (child 0), measured again: the machine's noise
     * moves p99 by more than the target's margin, so the ratio is taken
     * against the lower of the two 10-connection figures. */
    s_children_stop(k + 2, f->nk - 2);
    usleep(1000000);
    double again[2];
    f->fails[0] += s_lone(c, cfg->lone, &again[0], &again[1]);
    fprintf(stderr, "[scenario] scale: back to 10 agents: lone p50 %.0f us p99 %.0f us\n", again[0],
            again[1]);
    if (again[1] > 0 && (again[1] < f->l10[1] || f->l10[1] <= 0)) { /* 0: all failed */
        f->l10[0] = again[0];
        f->l10[1] = again[1];
    }
    s_children_stop(k, 2);
}

static void s_print(const sc_scale_cfg_t *cfg, const s_fig_t *f, FILE *csv)
{
    /* Per connection, over the connections each side really held. */
    double bare_per = f->bare_up > 10 ? (f->bn - f->b10) / (double)(f->bare_up - 10) : 0,
           broker_per = f->up > 10 ? (f->rn - f->r10) / (double)(f->up - 10) : 0;
    printf("\nScale: %d connected libagentbus agents of %d asked (%d processes of <= %d; the "
           "broker listed %zu) vs 10; bare ROUTER held %d\n", f->up, cfg->agents, f->nk,
           cfg->per_proc, f->listed, f->bare_up);
    printf("  RSS per connection: bare ROUTER %.2f KiB, broker %.2f KiB, broker above bare "
           "%.2f KiB (target <= 2 KiB)\n", bare_per, broker_per, broker_per - bare_per);
    printf("  lone request round trip, one after the other: 10 connected (better of before/after) "
           "p50 %.0f / p99 %.0f us; %d idle p50 %.0f / p99 %.0f us (p99 ratio %.2fx); "
           "%d active p50 %.0f / p99 %.0f us\n",
           f->l10[0], f->l10[1], f->up, f->ln[0], f->ln[1],
           f->ln[1] / f->l10[1], f->up, f->la[0], f->la[1]);
    printf("  interleaved, same time: %d connected p50 %.0f / p99 %.0f us vs a broker with 10 "
           "p50 %.0f / p99 %.0f us: p99 ratio %.2fx (target <= 1.5x; %d failed)\n", f->up,
           f->pair[0], f->pair[1], f->pair[2], f->pair[3],
           f->pair[3] > 0 ? f->pair[1] / f->pair[3] : 0, f->pair_fails);
    printf("  active phase: %ld echo requests ok, %ld failed (%.1f req/s offered)\n", f->aok,
           f->afail, (double)f->up);
    printf("  with %d connected: discover %.1f ms, stats %.1f ms, agents %.1f ms (%zu listed); "
           "lone failures %d/%d/%d\n", f->up, f->q_dir, f->q_stats, f->q_agents, f->listed,
           f->fails[0], f->fails[1], f->fails[2]);
    if (!csv)
        return;
    fprintf(csv, "agents,processes,bare_kib_10,bare_kib_n,broker_kib_10,broker_kib_n,"
                 "bare_per_conn_kib,broker_per_conn_kib,above_bare_kib,lone_p50_10_us,"
                 "lone_p99_10_us,lone_p50_n_us,lone_p99_n_us,lone_p50_active_us,"
                 "lone_p99_active_us,active_ok,active_fail,discover_ms,stats_ms,agents_ms,"
                 "connect_s,pair_p50_n_us,pair_p99_n_us,pair_p50_10_us,pair_p99_10_us\n");
    fprintf(csv, "%d,%d,%ld,%ld,%ld,%ld,%.3f,%.3f,%.3f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%ld,%ld,"
                 "%.2f,%.2f,%.2f,%.2f,%.1f,%.1f,%.1f,%.1f\n",
            f->up, f->nk, f->b10, f->bn, f->r10, f->rn, bare_per,
            broker_per, broker_per - bare_per, f->l10[0], f->l10[1], f->ln[0], f->ln[1], f->la[0],
            f->la[1], f->aok, f->afail, f->q_dir, f->q_stats, f->q_agents, f->connect_s,
            f->pair[0], f->pair[1], f->pair[2], f->pair[3]);
}

/* A broker on EP with CFG's flags and an echo worker beside it: PIDS[0..1]. */
static void s_spawn_pair(const sc_scale_cfg_t *cfg, const char *ep, pid_t *pids)
{
    /* max-connections: its default (10,000) has no room for 10,000 agents
     * and the worker, the lone client and brokerctl beside them. */
    char maxc[24];
    snprintf(maxc, sizeof maxc, "%d", cfg->agents + 100);
    const char *bargv[7 + 8 + 1] = {cfg->broker_bin, "--bind", ep, "--log-level", "error",
                                    "--max-connections", maxc};
    for (int k = 0; k < 8 && cfg->bopt[k]; k++) /* --broker-opt, after: they win */
        bargv[7 + k] = cfg->bopt[k];
    /* Capacity 512: at 10,000 requests a second and a round trip of
     * milliseconds between the two processes on busy cores, the default 16
     * of credit capped the echo worker near 1,600 a second while it idled
     * (issue 20), and the queue filled (BUSY). */
    const char *wargv[] = {cfg->worker_bin, "--broker", ep, "--service", "echo", "--capacity",
                           "512", NULL};
    pids[0] = s_spawn_quiet(bargv);
    pids[1] = s_spawn_quiet(wargv);
}

/* A client of EP, once the echo service answers (10 s at most): 0, or -1. */
static int s_client(const char *ep, ab_client_t **c)
{
    ab_options_t *o = ab_options_new();
    ab_options_set_endpoint(o, ep);
    int ok = ab_client_new(c, o) == AB_OK;
    ab_options_destroy(&o);
    for (int i = 0;
         ok && i < 100 && ab_client_request(*c, "echo", "x", 1, 1000, NULL, NULL) != AB_OK; i++)
        usleep(100000);
    return ok ? 0 : -1;
}

int sc_scale(const sc_scale_cfg_t *cfg, FILE *csv)
{
    s_child_t *k = calloc((size_t)(cfg->agents / cfg->per_proc + 4), sizeof *k);
    if (!k || cfg->agents <= 10) {
        free(k);
        return -1;
    }
    s_fig_t f;
    memset(&f, 0, sizeof f);
    f.bare_up = s_bare_part(cfg, k, &f.b10, &f.bn);
    fprintf(stderr, "[scenario] scale: bare ROUTER: %d raw connections, RSS %ld KiB at 10, %ld KiB "
                    "at %d\n", f.bare_up, f.b10, f.bn, cfg->agents);
    /* Two brokers with the same flags and an echo worker each: the one
     * measured, which gets N agents, and a reference that keeps 10, for
     * the interleaved lone-request comparison (s_lone_pair). */
    char ep[2][64];
    pid_t pids[4];
    ab_client_t *c[2] = {NULL, NULL};
    int ok = 1;
    int port[2] = {tl_free_port(), tl_free_port()};
    for (int i = 0; i < 20 && port[1] == port[0]; i++)
        port[1] = tl_free_port();
    for (int b = 0; b < 2; b++) {
        snprintf(ep[b], sizeof ep[b], "tcp://127.0.0.1:%d", port[b]);
        s_spawn_pair(cfg, ep[b], &pids[2 * b]);
    }
    for (int b = 0; b < 2; b++)
        ok = ok && s_client(ep[b], &c[b]) == 0;
    if (ok)
        s_bus_part(cfg, k, c[0], pids[0], ep[0], c[1], ep[1], &f);
    ab_client_destroy(&c[0]);
    ab_client_destroy(&c[1]);
    s_stop_pids(pids, 4);
    s_print(cfg, &f, csv);
    free(k);
    /* Every agent connected and held (the broker lists it: a client counts
     * itself connected before the broker may refuse it), and every request
     * answered, lone or the agents' own (a failure is a refused or lost
     * request, not a slow one: each waits 5 s). */
    long failed = f.fails[0] + f.fails[1] + f.fails[2] + f.pair_fails + f.afail;
    return f.up == cfg->agents && (int)f.listed >= f.up && ok && failed == 0 ? 0 : -1;
}
