/*
 * agentbus-bench - request/reply through the agentbus broker versus a bare
 * ZeroMQ forwarding hop and NATS request/reply, measured in the same run,
 * reported as ratios and judged against the targets of issue 17.
 *
 * All systems run side by side for the whole run (broker + echo worker as
 * child processes of the real binaries; forwarder + echo as forked
 * children; nats-server + a responder per NATS mode), and their
 * measurements are interleaved run by run so that machine noise hits all
 * alike. Throughput: medians of --runs runs with --window requests in
 * flight, the same window for every system; latency: one request at a
 * time. Progress goes to stderr; the figures (table, --json or --csv) to
 * stdout. Exit status: 0, 1 when a measurement failed, 2 on bad usage, 3
 * when a target was missed (never with --targets off), 130 when
 * interrupted (SIGINT, SIGTERM: the processes it started are stopped).
 */
#include "agentbus.h"
#include "bare_hop.h"
#include "baseline_report.h"
#include "bench_util.h"
#include "bench_pubsub.h"
#include "batch_report.h"
#include "figures.h"
#include "nats_rr.h"
#include "tl_clock.h"
#include "tl_heap.h"
#include "tl_args.h"
#include "tl_hist.h"
#include "tl_port.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

/* The window that serves the bare hop best on the 2-core test machine
 * (--report baseline, docs/bench.md, issue 17); every system uses it. */
#define BENCH_WINDOW 1000

typedef struct {
    double seconds;
    int runs, window, latency_count;
    bf_format_t format;
    int judge; /* --targets on|off */
    int nats;  /* --nats on|off */
    size_t small, large;
    const char *only, *broker_bin, *worker_bin, *endpoint;
    int nobatch; /* --batching off: batching and lz4 off in the agentbus system */
    int corpus;  /* payload bytes (batch_report.h) */
    const char *report;
    const char *auth_dir; /* --report auth: CURVE files of the agentbus system */
} s_opts_t;

/* A payload of SIZE bytes of the chosen corpus (malloc'd). */
static char *s_payload(int corpus, size_t size)
{
    char *buf = malloc(size ? size : 1);
    if (buf)
        bn_corpus_fill(corpus, buf, size, size);
    return buf;
}

enum { MAX_CHILDREN = 32 };
static pid_t s_children[MAX_CHILDREN];
static int s_nchildren;

static void s_track(pid_t pid)
{
    if (pid > 0 && s_nchildren < MAX_CHILDREN)
        s_children[s_nchildren++] = pid;
}

static void s_stop_children(void)
{
    bu_stop_pids(s_children, s_nchildren);
    s_nchildren = 0;
}

/* SIGINT or SIGTERM, in whichever thread takes it: says so, stops the
 * children and exits 130. Whatever the other threads print meanwhile is
 * about the children going away (lost replies, a failed measurement), not
 * figures, so stdout and stderr go to /dev/null first. */
static void s_on_signal(int sig)
{
    static atomic_int once;
    (void)sig;
    if (atomic_exchange(&once, 1))
        return; /* another thread is stopping the run */
    static const char msg[] = "agentbus-bench: interrupted\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    int null = open("/dev/null", O_WRONLY);
    if (null >= 0) {
        dup2(null, 1);
        dup2(null, 2);
    }
    s_stop_children();
    _exit(130);
}

static int s_free_port(void)
{
    int port = tl_free_port();
    if (port < 0) {
        perror("agentbus-bench: free port");
        exit(1);
    }
    return port;
}

static pid_t s_spawn_env(const char *const *argv, const char *const *env)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        for (int i = 0; env && env[i]; i++)
            putenv((char *)env[i]);
        execv(argv[0], (char *const *)argv);
        fprintf(stderr, "agentbus-bench: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    s_track(pid);
    return pid;
}

/* --- agentbus client ------------------------------------------------------------- */
typedef struct {
    uint64_t done, failed;
    int last_error;
} s_count_t;

static void s_count_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    s_count_t *n = arg;
    if (!ev->final)
        return;
    if (ev->status == AB_OK)
        n->done++;
    else
        n->failed++, n->last_error = ev->status;
}

static double s_ab_rr(ab_client_t *c, const char *buf, size_t size, double seconds, int window)
{
    s_count_t n = {0, 0, 0};
    uint64_t sent = 0;
    uint64_t t0 = tl_now_ns(), end = t0 + (uint64_t)(seconds * 1e9);
    while (tl_now_ns() < end && !n.failed) {
        while (sent - n.done - n.failed < (uint64_t)window &&
               ab_client_request_start(c, "echo", buf, size,
                                       &(ab_request_opts_t){.timeout_ms = 10000}, s_count_cb, &n,
                                       NULL) == AB_OK)
            sent++;
        if (ab_client_poll(c, 1000) <= 0)
            break;
    }
    uint64_t t1 = tl_now_ns();
    double secs = (double)(t1 - t0) / 1e9;
    while (n.done + n.failed < sent && tl_now_ns() - t1 < 10000000000ull) /* drain */
        ab_client_poll(c, 100);
    if (n.failed || n.done < sent) {
        fprintf(stderr, "agentbus-bench: %llu requests failed (%s)\n",
                (unsigned long long)(sent - n.done), ab_strerror(n.last_error));
        return -1;
    }
    return (double)n.done / secs;
}

static int s_ab_lat(ab_client_t *c, const char *buf, size_t size, int count, tl_hist_t *h)
{
    int rc = AB_OK;
    for (int i = 0; i < count && rc == AB_OK; i++) {
        uint64_t t = tl_now_ns();
        rc = ab_client_request(c, "echo", buf, size, 5000, NULL, NULL);
        if (rc == AB_OK && h)
            tl_hist_record(h, tl_now_ns() - t);
    }
    return rc == AB_OK ? 0 : -1;
}
static ab_client_t *s_ab_setup(const s_opts_t *o)
{
    char ep[64];
    if (o->endpoint) {
        snprintf(ep, sizeof ep, "%s", o->endpoint);
    } else {
        int port = s_free_port();
        snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", port);
        const char *env[] = {o->nobatch ? "AB_BATCH=0" : "AB_BATCH=1",
                             o->nobatch ? "AB_COMPRESS_THRESHOLD_BYTES=0" : NULL, NULL};
        char cert[600], keys[600], wkey[600], bpub[600];
        snprintf(cert, sizeof cert, "%s/broker.key", o->auth_dir ? o->auth_dir : "");
        snprintf(keys, sizeof keys, "%s/keys", o->auth_dir ? o->auth_dir : "");
        snprintf(wkey, sizeof wkey, "%s/bench.key_secret", o->auth_dir ? o->auth_dir : "");
        snprintf(bpub, sizeof bpub, "%s/broker.key", o->auth_dir ? o->auth_dir : "");
        const char *b[] = {o->broker_bin, "--bind", ep, "--log-level", "warn",
                           o->auth_dir ? "--auth" : NULL, "curve", "--broker-cert", cert,
                           "--keys-dir", keys, NULL};
        s_spawn_env(b, env);
        const char *w[] = {o->worker_bin, "--broker", ep, "--backend", "echo", "--service", "echo",
                           "--capacity", "100000", "--log-level", "warn",
                           o->auth_dir ? "--key" : NULL, wkey,
                           "--broker-key", bpub, NULL};
        s_spawn_env(w, env);
    }
    ab_options_t *opts = ab_options_new();
    ab_options_set_endpoint(opts, ep);
    if (o->auth_dir) {
        char path[600];
        snprintf(path, sizeof path, "%s/bench.key_secret", o->auth_dir);
        ab_options_set_key_file(opts, path);
        snprintf(path, sizeof path, "%s/broker.key", o->auth_dir);
        ab_options_set_broker_key(opts, path);
    }
    if (o->nobatch) {
        ab_options_set_batching(opts, 0);
        ab_options_set_compression(opts, 0, 10);
    }
    ab_client_t *c = NULL;
    int rc = ab_client_new(&c, opts);
    ab_options_destroy(&opts);
    for (int i = 0; rc == AB_OK && i < 20; i++) { /* up to ~12 s for broker + worker */
        int r = ab_client_request(c, "echo", "x", 1, 500, NULL, NULL);
        if (r == AB_OK)
            break;
        if (i == 19)
            rc = r;
        usleep(100000);
    }
    if (rc != AB_OK) {
        fprintf(stderr, "agentbus-bench: broker at %s not serving 'echo': %s\n", ep,
                c ? ab_client_last_error(c) : ab_strerror(rc));
        ab_client_destroy(&c);
    }
    return c;
}

/* --- the systems ------------------------------------------------------------------ */
enum { SYS_BARE, SYS_AB, SYS_NB, SYS_NA, SYS_N };
static const char *s_sys_name[SYS_N] = {"bare-hop", "agentbus", "nats-buffered", "nats-asap"};

typedef struct {
    void *bare;
    ab_client_t *ab;
    bn_nats_t *nats[2]; /* buffered, asap */
    char *buf[2];       /* payloads: small, large */
    size_t size[2];
} s_sys_t;

static int s_present(const s_sys_t *sys, int which)
{
    return which == SYS_BARE ? sys->bare != NULL
           : which == SYS_AB ? sys->ab != NULL
                             : sys->nats[which - SYS_NB] != NULL;
}

static int s_setup(const s_opts_t *o, void *ctx, s_sys_t *sys)
{
    int only_bare = o->only && !strcmp(o->only, "bare");
    int only_ab = o->only && !strcmp(o->only, "agentbus");
    if (o->nats && !o->only) { /* forked before this process touches nats.c */
        int port = s_free_port();
        pid_t pids[3];
        if (bn_nats_start(port, pids) == 0) {
            for (int i = 0; i < 3; i++)
                s_track(pids[i]);
            sys->nats[0] = bn_nats_client(port, 0);
            sys->nats[1] = bn_nats_client(port, 1);
        }
    }
    if (!only_ab) {
        int front = s_free_port(), back = s_free_port();
        s_track(bh_start_forwarder(front, back));
        s_track(bh_start_echo(back));
        if (!(sys->bare = bh_client(ctx, front))) {
            fprintf(stderr, "agentbus-bench: bare hop did not answer\n");
            return -1;
        }
    }
    if (!only_bare && !(sys->ab = s_ab_setup(o)))
        return -1;
    return 0;
}

static double s_rr_one(const s_opts_t *o, s_sys_t *sys, int which, int sz)
{
    const char *buf = sys->buf[sz];
    size_t size = sys->size[sz];
    if (which == SYS_BARE)
        return bh_rr(sys->bare, buf, size, o->seconds, o->window, 0);
    if (which == SYS_AB)
        return s_ab_rr(sys->ab, buf, size, o->seconds, o->window);
    return bn_nats_rr(sys->nats[which - SYS_NB], buf, size, o->seconds, o->window);
}

static int s_lat_one(s_sys_t *sys, int which, int count, tl_hist_t *h)
{
    const char *buf = sys->buf[0];
    size_t size = sys->size[0];
    if (which == SYS_BARE)
        return bh_lat(sys->bare, buf, size, count, h);
    if (which == SYS_AB)
        return s_ab_lat(sys->ab, buf, size, count, h);
    return bn_nats_lat(sys->nats[which - SYS_NB], buf, size, count, h);
}

/* --- measurement --------------------------------------------------------------------- */
typedef struct {
    double rr[2][SYS_N];        /* msgs/s, medians; [0] small, [1] large */
    double ratio_bare[2];       /* agentbus / bare hop, median of the per-run ratios */
    double ratio_nats[2];       /* agentbus / NATS buffered, likewise */
    double p50[SYS_N], p99[SYS_N]; /* lone round trip, us */
} s_res_t;

/* One progress line per run: what each system did at each size. */
static void s_progress_run(const s_sys_t *sys, int run, int runs, double r[2][SYS_N][16])
{
    char line[400];
    int k = snprintf(line, sizeof line, "run %d/%d msgs/s:", run + 1, runs);
    for (int sz = 0; sz < 2; sz++) {
        k += snprintf(line + k, sizeof line - (size_t)k, " %s%zuB", sz ? "| " : "",
                      sys->size[sz]);
        for (int w = 0; w < SYS_N; w++)
            if (s_present(sys, w))
                k += snprintf(line + k, sizeof line - (size_t)k, " %s %.0f", s_sys_name[w],
                              r[sz][w][run]);
    }
    bf_progress("%s", line);
}

static int s_measure_rr(const s_opts_t *o, s_sys_t *sys, s_res_t *res)
{
    static double r[2][SYS_N][16], rb[2][16], rn[2][16];
    int runs = o->runs > 16 ? 16 : o->runs;
    for (int run = 0; run < runs; run++) {
        for (int sz = 0; sz < 2; sz++)
            for (int w = 0; w < SYS_N; w++) { /* interleaved: noise hits all alike */
                if (!s_present(sys, w))
                    continue;
                if ((r[sz][w][run] = s_rr_one(o, sys, w, sz)) < 0) {
                    fprintf(stderr, "agentbus-bench: %s lost replies\n", s_sys_name[w]);
                    return -1;
                }
            }
        for (int sz = 0; sz < 2; sz++) {
            rb[sz][run] = r[sz][SYS_BARE][run] > 0 ? r[sz][SYS_AB][run] / r[sz][SYS_BARE][run] : 0;
            rn[sz][run] = r[sz][SYS_NB][run] > 0 ? r[sz][SYS_AB][run] / r[sz][SYS_NB][run] : 0;
        }
        s_progress_run(sys, run, runs, r);
    }
    for (int sz = 0; sz < 2; sz++) {
        for (int w = 0; w < SYS_N; w++)
            res->rr[sz][w] = s_present(sys, w) ? bu_median(r[sz][w], runs) : -1;
        res->ratio_bare[sz] = bu_median(rb[sz], runs);
        res->ratio_nats[sz] = bu_median(rn[sz], runs);
    }
    return 0;
}

/* Lone requests in alternating slices so all systems see the same machine. */
static int s_measure_lat(const s_opts_t *o, s_sys_t *sys, s_res_t *res)
{
    tl_hist_t *h = calloc(SYS_N, sizeof *h);
    int n = o->latency_count / 10, rc = h ? 0 : -1;
    bf_progress("lone round trips: %d per system", o->latency_count);
    for (int slice = 0; slice < 10 && rc == 0; slice++)
        for (int w = 0; w < SYS_N && rc == 0; w++)
            if (s_present(sys, w) && ((slice == 0 && s_lat_one(sys, w, n, NULL) != 0) ||
                                      s_lat_one(sys, w, n, &h[w]) != 0)) {
                fprintf(stderr, "agentbus-bench: %s lost a lone request\n", s_sys_name[w]);
                rc = -1;
            }
    for (int w = 0; w < SYS_N && rc == 0; w++) {
        res->p50[w] = s_present(sys, w) ? tl_hist_percentile(&h[w], 50) / 1e3 : -1;
        res->p99[w] = s_present(sys, w) ? tl_hist_percentile(&h[w], 99) / 1e3 : -1;
    }
    free(h);
    return rc;
}

/* The targets of issue 17 for the agentbus system as configured. */
static void s_targets(const s_opts_t *o, const s_res_t *r)
{
    int on = !o->nobatch;
    bf_ratio("rr_small_msgs_s", "agentbus", "bare-hop", r->ratio_bare[0], BF_AT_LEAST,
             on ? 1.2 : 0.8);
    bf_ratio("rr_large_msgs_s", "agentbus", "bare-hop", r->ratio_bare[1], BF_AT_LEAST,
             on ? 1.2 : 0.9);
    bf_ratio("lone_p50_us", "agentbus", "bare-hop", -1, BF_AT_MOST, 1.2);
    bf_ratio("lone_p99_us", "agentbus", "bare-hop", -1, BF_AT_MOST, 1.5);
    bf_ratio("rr_small_msgs_s", "agentbus", "nats-buffered", r->ratio_nats[0],
             on ? BF_AT_LEAST : BF_INFO, 1.2);
    bf_ratio("rr_large_msgs_s", "agentbus", "nats-buffered", r->ratio_nats[1], BF_INFO, 0);
    bf_ratio("rr_small_msgs_s", "agentbus", "nats-asap", -1, BF_INFO, 0);
    bf_ratio("lone_p50_us", "agentbus", "nats-asap", -1, BF_INFO, 0);
    bf_ratio("rr_small_msgs_s", "nats-buffered", "bare-hop", -1, BF_INFO, 0);
    bf_ratio("rr_large_msgs_s", "nats-buffered", "bare-hop", -1, BF_INFO, 0);
}

static int s_report(const s_opts_t *o, const s_sys_t *sys, const s_res_t *r)
{
    char title[300], l1[32], l2[32];
    snprintf(title, sizeof title,
             "agentbus-bench: request/reply, agentbus (batching %s; lz4 only off-machine) vs a "
             "bare ZeroMQ hop and NATS;\nmedians of interleaved runs, tcp loopback, same run; "
             "throughput ratios are medians of the per-run ratios",
             o->nobatch ? "off" : "on");
    bf_begin("rr", title, o->judge);
    bf_param("runs", o->runs);
    bf_param("seconds", o->seconds);
    bf_param("window", o->window);
    bf_param("small_bytes", (double)o->small);
    bf_param("large_bytes", (double)o->large);
    bf_param("batching", !o->nobatch);
    bf_param("latency_count", o->latency_count);
    snprintf(l1, sizeof l1, "rr %zuB msgs/s", o->small);
    snprintf(l2, sizeof l2, "rr %zuB msgs/s", o->large);
    for (int w = 0; w < SYS_N; w++) {
        if (!s_present(sys, w))
            continue;
        bf_add("rr_small_msgs_s", l1, "msgs/s", s_sys_name[w], r->rr[0][w]);
        bf_add("rr_large_msgs_s", l2, "msgs/s", s_sys_name[w], r->rr[1][w]);
        bf_add("lone_p50_us", "lone p50 us", "us", s_sys_name[w], r->p50[w]);
        bf_add("lone_p99_us", "lone p99 us", "us", s_sys_name[w], r->p99[w]);
    }
    if (s_present(sys, SYS_AB) && s_present(sys, SYS_BARE))
        s_targets(o, r);
    return bf_print(o->format);
}

/* The default report: 0, -1 when a measurement failed, else targets missed. */
static int s_rr_report(const s_opts_t *o)
{
    void *ctx = zmq_ctx_new();
    s_sys_t sys = {NULL, NULL, {NULL, NULL}, {s_payload(o->corpus, o->small),
                   s_payload(o->corpus, o->large)}, {o->small, o->large}};
    s_res_t res;
    memset(&res, 0, sizeof res);
    bf_begin("rr", "", o->judge); /* progress times from here */
    bf_progress("starting the systems");
    int rc = s_setup(o, ctx, &sys);
    if (rc == 0 && (rc = s_measure_rr(o, &sys, &res)) == 0)
        rc = s_measure_lat(o, &sys, &res);
    if (rc == 0)
        rc = s_report(o, &sys, &res);
    else
        fprintf(stderr, "agentbus-bench: a measurement failed\n");
    if (sys.bare)
        zmq_close(sys.bare);
    ab_client_destroy(&sys.ab);
    bn_nats_destroy(&sys.nats[0]);
    bn_nats_destroy(&sys.nats[1]);
    if (o->nats && !o->only)
        bn_nats_shutdown();
    zmq_ctx_term(ctx);
    free(sys.buf[0]);
    free(sys.buf[1]);
    return rc;
}

/* --- --report auth: the price of CURVE ------------------------------------------------ */

/* A certificate in czmq's zcert format (what brokerctl keygen writes). */
static int s_cert(const char *path, const char *role, const char *pub, const char *sec)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "metadata\n    name = \"bench\"\n    role = \"%s\"\ncurve\n"
               "    public-key = \"%s\"\n", role, pub);
    if (sec)
        fprintf(f, "    secret-key = \"%s\"\n", sec);
    fclose(f);
    return sec ? chmod(path, 0600) : 0;
}

/* A temporary directory with the broker's keypair and an admin key. */
static int s_auth_files(char *dir, size_t cap)
{
    snprintf(dir, cap, "/tmp/agentbus-bench-auth-XXXXXX");
    char bp[41], bs[41], kp[41], ks[41], path[700];
    if (!mkdtemp(dir) || ab_curve_keypair(bp, bs) != AB_OK || ab_curve_keypair(kp, ks) != AB_OK)
        return -1;
    snprintf(path, sizeof path, "%s/keys", dir);
    int rc = mkdir(path, 0700);
    snprintf(path, sizeof path, "%s/broker.key", dir);
    rc |= s_cert(path, "peer", bp, NULL);
    snprintf(path, sizeof path, "%s/broker.key_secret", dir);
    rc |= s_cert(path, "peer", bp, bs);
    snprintf(path, sizeof path, "%s/keys/bench.key", dir);
    rc |= s_cert(path, "admin", kp, NULL);
    snprintf(path, sizeof path, "%s/bench.key_secret", dir);
    rc |= s_cert(path, "admin", kp, ks);
    return rc;
}
static void s_auth_figures(const s_opts_t *o, const double med[4], const double lat[4])
{
    char l1[32], l2[32];
    snprintf(l1, sizeof l1, "rr %zuB msgs/s", o->small);
    snprintf(l2, sizeof l2, "rr %zuB msgs/s", o->large);
    bf_begin("auth", "agentbus-bench --report auth: agentbus plaintext vs --auth curve, medians;"
                     " same run", o->judge);
    bf_param("runs", o->runs);
    bf_param("seconds", o->seconds);
    bf_param("window", o->window);
    const char *sys[2] = {"plaintext", "curve"};
    for (int i = 0; i < 2; i++) {
        bf_add("rr_small_msgs_s", l1, "msgs/s", sys[i], med[i]);
        bf_add("rr_large_msgs_s", l2, "msgs/s", sys[i], med[2 + i]);
        bf_add("lone_p50_us", "lone p50 us", "us", sys[i], lat[i]);
        bf_add("lone_p99_us", "lone p99 us", "us", sys[i], lat[2 + i]);
    }
    /* What CURVE adds to each message, from the throughput difference. */
    bf_add("curve_cost_small_us", "curve cost/msg small us", "us", "curve",
           med[1] > 0 && med[0] > 0 ? (1 / med[1] - 1 / med[0]) * 1e6 : 0);
    bf_add("curve_cost_large_us", "curve cost/msg large us", "us", "curve",
           med[3] > 0 && med[2] > 0 ? (1 / med[3] - 1 / med[2]) * 1e6 : 0);
    const char *keys[4] = {"rr_small_msgs_s", "rr_large_msgs_s", "lone_p50_us", "lone_p99_us"};
    for (int i = 0; i < 4; i++)
        bf_ratio(keys[i], "curve", "plaintext", -1, BF_INFO, 0);
}

static int s_auth_report(const s_opts_t *o)
{
    char dir[256];
    if (s_auth_files(dir, sizeof dir) != 0) {
        fprintf(stderr, "agentbus-bench: cannot make the CURVE keys\n");
        return -1;
    }
    s_opts_t co = *o;
    co.auth_dir = dir;
    bf_begin("auth", "", o->judge);
    bf_progress("starting the plaintext and the CURVE system");
    ab_client_t *plain = s_ab_setup(o), *curve = plain ? s_ab_setup(&co) : NULL;
    int rc = plain && curve ? 0 : -1;
    char *small = s_payload(o->corpus, o->small), *large = s_payload(o->corpus, o->large);
    double r[4][16];
    int runs = o->runs > 16 ? 16 : o->runs;
    for (int run = 0; run < runs && rc == 0; run++) { /* interleaved: noise hits both alike */
        r[0][run] = s_ab_rr(plain, small, o->small, o->seconds, o->window);
        r[1][run] = s_ab_rr(curve, small, o->small, o->seconds, o->window);
        r[2][run] = s_ab_rr(plain, large, o->large, o->seconds, o->window);
        r[3][run] = s_ab_rr(curve, large, o->large, o->seconds, o->window);
        rc = r[0][run] < 0 || r[1][run] < 0 || r[2][run] < 0 || r[3][run] < 0 ? -1 : 0;
        bf_progress("run %d/%d msgs/s: %zuB plaintext %.0f curve %.0f | %zuB plaintext %.0f "
                    "curve %.0f", run + 1, runs, o->small, r[0][run], r[1][run], o->large,
                    r[2][run], r[3][run]);
    }
    tl_hist_t *hp = calloc(1, sizeof *hp), *hc = calloc(1, sizeof *hc);
    for (int slice = 0; slice < 10 && rc == 0 && hp && hc; slice++) {
        int n = o->latency_count / 10, warm = slice == 0 ? n : 0;
        rc |= s_ab_lat(plain, small, o->small, warm, NULL) |
              s_ab_lat(plain, small, o->small, n, hp);
        rc |= s_ab_lat(curve, small, o->small, warm, NULL) |
              s_ab_lat(curve, small, o->small, n, hc);
    }
    if (rc == 0) {
        double med[4], lat[4] = {tl_hist_percentile(hp, 50) / 1e3, tl_hist_percentile(hc, 50) / 1e3,
                                 tl_hist_percentile(hp, 99) / 1e3,
                                 tl_hist_percentile(hc, 99) / 1e3};
        for (int i = 0; i < 4; i++)
            med[i] = bu_median(r[i], runs);
        s_auth_figures(o, med, lat);
        rc = bf_print(o->format);
    }
    free(hp);
    free(hc);
    free(small);
    free(large);
    ab_client_destroy(&plain);
    ab_client_destroy(&curve);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "agentbus-bench: could not remove %s\n", dir);
    return rc;
}

static void s_usage(void)
{
    printf("Usage: agentbus-bench [options]\n\n"
           "Request/reply through agentbus-broker versus a bare ZeroMQ ROUTER->ROUTER hop and\n"
           "NATS request/reply (buffered and send-asap), all measured in this run\n"
           "(interleaved), with ratios judged against the targets of docs/bench.md.\n"
           "Progress goes to stderr. Exit status: 0; 1 a measurement failed; 2 bad usage;\n"
           "3 a target was missed (marked MISSED in the output); 130 interrupted (SIGINT or\n"
           "SIGTERM; the processes it started are stopped).\n\n"
           "  --seconds S          length of one throughput run (default 2)\n"
           "  --runs N             runs per throughput figure; the median is kept (default 5)\n"
           "  --window N           requests in flight for throughput, every system (default %d)\n"
           "  --latency-count N    sequential requests for the lone-request latency "
           "(default 5000)\n"
           "  --size-small N       small payload bytes (default 64)\n"
           "  --size-large N       large payload bytes (default 4096)\n"
           "  --only bare|agentbus measure one system only (no NATS, no targets)\n"
           "  --nats on|off        the NATS baseline (default on; needs nats-server)\n"
           "  --broker-bin PATH    agentbus-broker to start (default: next to this program)\n"
           "  --worker-bin PATH    agentbus-worker to start (default: next to this program)\n"
           "  --broker EP          use a running broker (with an 'echo' service) instead\n"
           "  --batching on|off    batching in the agentbus system (default on; lz4 as shipped:\n"
           "                       only on hops that leave the machine, none on loopback)\n"
           "  --corpus NAME        payload bytes: text (prose-like, default), json (chat\n"
           "                       messages), random (incompressible) or zeros\n"
           "  --targets on|off     judge the targets (default on, and only with --runs >= 3);\n"
           "                       off: figures and ratios only, exit 0 whatever they are\n"
           "  --json               one JSON object instead of the table\n"
           "  --csv                CSV rows (params, figures, ratios) instead of the table\n"
           "  --report baseline    instead: the bare hop beside the variants tried (windows,\n"
           "                       one message per poll, ROUTER->DEALER, zmq_proxy, the old\n"
           "                       client loop), 64 B and 4 KiB msgs/s and lone round trips\n"
           "  --report batching    instead: the defaults vs batching off vs lz4 on loopback too\n"
           "                       (--compress-local), side by side (64 B\n"
           "                       msgs/s, lone round trip, 4 KiB and 64 KiB msgs/s and\n"
           "                       bytes on the wire)\n"
           "  --report auth        instead: agentbus plaintext vs --auth curve (CURVE on\n"
           "                       every hop), side by side: 64 B and 4 KiB msgs/s, lone\n"
           "                       round trip p50/p99, and the cost per message\n"
           "  --pubsub             instead: pub/sub fan-out (1, 10, 100 subscribers) against\n"
           "                       bare ZeroMQ PUB/SUB and an XSUB/XPUB proxy, and agent\n"
           "                       ask/reply against request/reply (--subscribers LIST,\n"
           "                       --seconds, --runs (default 3), --window (default 256),\n"
           "                       --size-small, --targets, --json, --csv); target: >= 0.8x\n"
           "                       the proxy at 10 and 100 subscribers\n",
           BENCH_WINDOW);
}

static int s_on_off(const char *v, int *out)
{
    if (strcmp(v, "on") && strcmp(v, "off"))
        return -1;
    *out = !strcmp(v, "on");
    return 0;
}

/* One option with a value; 0 if taken, -1 if not known or bad. */
static int s_parse_one(s_opts_t *o, const char *f, const char *v)
{
    long x;
    int b;
    double d; /* atof read "0x10" as 16 and "5s" as 5 */
    if (!strcmp(f, "--seconds") && !ab_parse_double(v, 0, 600, &d) && d > 0)
        o->seconds = d;
    else if (!strcmp(f, "--runs") && !tl_parse_long(v, 1, 16, &x))
        o->runs = (int)x;
    else if (!strcmp(f, "--window") && !tl_parse_long(v, 1, 50000, &x))
        o->window = (int)x;
    else if (!strcmp(f, "--latency-count") && !tl_parse_long(v, 10, 10000000, &x))
        o->latency_count = (int)x;
    else if (!strcmp(f, "--size-small") && !tl_parse_long(v, 1, 1 << 24, &x))
        o->small = (size_t)x;
    else if (!strcmp(f, "--size-large") && !tl_parse_long(v, 1, 1 << 24, &x))
        o->large = (size_t)x;
    else if (!strcmp(f, "--only") && (!strcmp(v, "bare") || !strcmp(v, "agentbus")))
        o->only = v;
    else if (!strcmp(f, "--broker-bin"))
        o->broker_bin = v;
    else if (!strcmp(f, "--worker-bin"))
        o->worker_bin = v;
    else if (!strcmp(f, "--broker"))
        o->endpoint = v;
    else if (!strcmp(f, "--batching") && !s_on_off(v, &b))
        o->nobatch = !b;
    else if (!strcmp(f, "--targets") && !s_on_off(v, &b))
        o->judge = b;
    else if (!strcmp(f, "--nats") && !s_on_off(v, &b))
        o->nats = b;
    else if (!strcmp(f, "--corpus") && bn_corpus_parse(v) >= 0)
        o->corpus = bn_corpus_parse(v);
    else if (!strcmp(f, "--report") &&
             (!strcmp(v, "batching") || !strcmp(v, "auth") || !strcmp(v, "baseline")))
        o->report = v;
    else
        return -1;
    return 0;
}

static int s_parse(s_opts_t *o, int argc, char **argv)
{
    static char broker[PATH_MAX], worker[PATH_MAX], self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    self[n > 0 ? n : 0] = '\0';
    const char *dir = dirname(self);
    snprintf(broker, sizeof broker, "%s/agentbus-broker", dir);
    snprintf(worker, sizeof worker, "%s/agentbus-worker", dir);
    *o = (s_opts_t){.seconds = 2.0, .runs = 5, .window = BENCH_WINDOW, .latency_count = 5000,
                    .format = BF_TABLE, .judge = 1, .nats = 1, .small = 64, .large = 4096,
                    .broker_bin = broker, .worker_bin = worker, .corpus = BN_CORPUS_TEXT};
    const char *f = "";
    for (int i = 1; i < argc; i++) {
        f = argv[i];
        if (!strcmp(f, "--help")) {
            s_usage();
            return 1;
        }
        if (!strcmp(f, "--version")) { /* as every program (README) */
            tl_print_version("agentbus-bench", ab_version());
            return 1;
        }
        int fmt = bf_format_flag(&o->format, f);
        if (fmt < 0)
            return -1;
        if (fmt)
            continue;
        if (i + 1 >= argc || s_parse_one(o, f, argv[i + 1]) != 0)
            goto bad;
        i++;
    }
    return 0;
bad:
    fprintf(stderr, "agentbus-bench: unknown option, missing or bad value: '%s' (see --help)\n", f);
    return -1;
}

static int s_run_report(const s_opts_t *o)
{
    if (!strcmp(o->report, "auth"))
        return s_auth_report(o);
    if (!strcmp(o->report, "baseline")) {
        char *small = s_payload(o->corpus, o->small), *large = s_payload(o->corpus, o->large);
        bn_baseline_opts_t bo = {o->seconds, o->runs,   o->window, o->latency_count,
                                 o->judge,   o->format, small,     large,
                                 o->small,   o->large,  s_free_port, s_track};
        int r = bn_baseline_report(&bo);
        free(small);
        free(large);
        return r;
    }
    bn_batch_report_opts_t ro = {o->seconds,    o->runs,       o->window,   o->latency_count,
                                 o->format,     o->judge,      o->corpus,   o->broker_bin,
                                 o->worker_bin, s_spawn_env, s_free_port};
    return bn_batch_report(&ro);
}

int main(int argc, char **argv)
{
    /* As in the broker and the worker it starts; the bare hop's forwarder
     * and echo, forked from here, run with the same settings. */
    tl_heap_tune();
    s_opts_t o;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--pubsub") == 0) {
            s_parse(&o, 1, argv); /* only for the default program paths */
            return bn_pubsub_main(argc, argv, o.broker_bin, o.worker_bin);
        }
    int prc = s_parse(&o, argc, argv);
    if (prc)
        return prc > 0 ? 0 : 2;
    if (o.judge && o.runs < 3) { /* a target is judged on a median of >= 3 runs */
        fprintf(stderr, "agentbus-bench: --runs %d: targets not judged (that takes >= 3 runs)\n",
                o.runs);
        o.judge = 0;
    }
    signal(SIGINT, s_on_signal);
    signal(SIGTERM, s_on_signal);
    signal(SIGPIPE, SIG_IGN);
    int r = o.report ? s_run_report(&o) : s_rr_report(&o);
    s_stop_children();
    if (r > 0)
        fprintf(stderr, "agentbus-bench: %d target%s missed (see MISSED above; --targets off "
                        "to report figures only)\n", r, r > 1 ? "s" : "");
    return r < 0 ? 1 : r > 0 ? 3 : 0;
}
