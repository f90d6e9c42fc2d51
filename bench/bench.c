/*
 * agentbus-bench - request/reply through the agentbus broker versus a bare
 * ZeroMQ forwarding hop, measured in the same run, reported as ratios.
 *
 * Both systems run side by side for the whole run (broker + echo worker as
 * child processes of the real binaries; forwarder + echo as forked
 * children), and their measurements are interleaved run by run so that
 * machine noise hits both alike. Throughput: medians of --runs runs with
 * --window requests in flight; latency: one request at a time.
 */
#include "agentbus.h"
#include "bare_hop.h"
#include "bench_util.h"
#include "bench_pubsub.h"
#include "batch_report.h"
#include "tl_clock.h"
#include "tl_args.h"
#include "tl_hist.h"

#include <arpa/inet.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

typedef struct {
    double seconds;
    int runs, window, latency_count, json;
    size_t small, large;
    const char *only, *broker_bin, *worker_bin, *endpoint;
    int nobatch; /* --batching off: batching and lz4 off in the agentbus system */
    int corpus;  /* payload bytes (batch_report.h) */
    const char *report;
    const char *auth_dir; /* --report auth: CURVE files of the agentbus system */
} s_opts_t;

static int s_corpus = BN_CORPUS_TEXT;

/* A payload of SIZE bytes of the chosen corpus (malloc'd). */
static char *s_payload(size_t size)
{
    char *buf = malloc(size ? size : 1);
    if (buf)
        bn_corpus_fill(s_corpus, buf, size, size);
    return buf;
}

typedef struct {
    double rr_small, rr_large; /* msgs/s, medians */
    uint64_t p50_ns, p99_ns;
} s_result_t;

static pid_t s_children[16];
static int s_nchildren;

static void s_stop_children(void)
{
    bu_stop_pids(s_children, s_nchildren);
    s_nchildren = 0;
}

static void s_on_signal(int sig)
{
    (void)sig;
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
    if (pid > 0 && s_nchildren < 16)
        s_children[s_nchildren++] = pid;
    return pid;
}

/* --- bare hop client ------------------------------------------------------------ */
static double s_bare_rr(void *s, size_t size, double seconds, int window)
{
    char *buf = s_payload(size), rbuf[8];
    uint64_t sent = 0, done = 0;
    uint64_t t0 = tl_now_ns(), end = t0 + (uint64_t)(seconds * 1e9);
    zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
    while (tl_now_ns() < end) {
        while (sent - done < (uint64_t)window && zmq_send(s, buf, size, ZMQ_DONTWAIT) >= 0)
            sent++;
        if (zmq_poll(&it, 1, 1000) <= 0)
            break;
        while (zmq_recv(s, rbuf, sizeof rbuf, ZMQ_DONTWAIT) >= 0)
            done++;
    }
    double secs = (double)(tl_now_ns() - t0) / 1e9;
    for (int i = 0; i < 1000 && done < sent; i++) /* drain before the next run */
        if (zmq_poll(&it, 1, 10) > 0)
            while (zmq_recv(s, rbuf, sizeof rbuf, ZMQ_DONTWAIT) >= 0)
                done++;
    free(buf);
    return done < sent ? -1 : (double)done / secs;
}

static int s_bare_lat(void *s, size_t size, int count, tl_hist_t *h)
{
    char *buf = s_payload(size), rbuf[8];
    zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
    int rc = 0;
    for (int i = 0; i < count && rc == 0; i++) {
        uint64_t t = tl_now_ns();
        zmq_send(s, buf, size, 0);
        if (zmq_poll(&it, 1, 5000) <= 0 || zmq_recv(s, rbuf, sizeof rbuf, 0) < 0)
            rc = -1;
        else if (h)
            tl_hist_record(h, tl_now_ns() - t);
    }
    free(buf);
    return rc;
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

static double s_ab_rr(ab_client_t *c, size_t size, double seconds, int window)
{
    char *buf = s_payload(size);
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
    double secs = (double)(tl_now_ns() - t0) / 1e9;
    for (int i = 0; i < 1000 && n.done + n.failed < sent; i++)
        ab_client_poll(c, 10);
    free(buf);
    if (n.failed || n.done < sent) {
        fprintf(stderr, "agentbus-bench: %llu requests failed (%s)\n",
                (unsigned long long)(sent - n.done), ab_strerror(n.last_error));
        return -1;
    }
    return (double)n.done / secs;
}

static int s_ab_lat(ab_client_t *c, size_t size, int count, tl_hist_t *h)
{
    char *buf = s_payload(size);
    int rc = AB_OK;
    for (int i = 0; i < count && rc == AB_OK; i++) {
        uint64_t t = tl_now_ns();
        rc = ab_client_request(c, "echo", buf, size, 5000, NULL, NULL);
        if (rc == AB_OK && h)
            tl_hist_record(h, tl_now_ns() - t);
    }
    free(buf);
    return rc == AB_OK ? 0 : -1;
}

/* --- setup ------------------------------------------------------------------------- */
static void *s_bare_setup(void *ctx)
{
    int front = s_free_port(), back = s_free_port();
    s_children[s_nchildren++] = bh_start_forwarder(front, back);
    s_children[s_nchildren++] = bh_start_echo(back);
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int hwm = 100000, linger = 0;
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", front);
    zmq_connect(s, ep);
    if (s_bare_lat(s, 8, 1, NULL) != 0) { /* first reply: the hop is up */
        fprintf(stderr, "agentbus-bench: bare hop did not answer\n");
        return NULL;
    }
    return s;
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
                           "--capacity", "100000", o->auth_dir ? "--key" : NULL, wkey,
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

/* --- measurement --------------------------------------------------------------------- */
typedef struct {
    void *bare;
    ab_client_t *ab;
} s_sys_t;

/* One throughput run of SIZE for each system; stores msgs/s. */
static int s_rr_run(const s_opts_t *o, s_sys_t *sys, size_t size, double *bare, double *ab)
{
    if (sys->bare && (*bare = s_bare_rr(sys->bare, size, o->seconds, o->window)) < 0)
        return -1;
    if (sys->ab && (*ab = s_ab_rr(sys->ab, size, o->seconds, o->window)) < 0)
        return -1;
    return 0;
}

static int s_measure(const s_opts_t *o, s_sys_t *sys, s_result_t *bare, s_result_t *ab)
{
    double bs[16], as[16], bl[16], al[16];
    int runs = o->runs > 16 ? 16 : o->runs;
    for (int r = 0; r < runs; r++) { /* interleaved: noise hits both alike */
        if (s_rr_run(o, sys, o->small, &bs[r], &as[r]) != 0 ||
            s_rr_run(o, sys, o->large, &bl[r], &al[r]) != 0)
            return -1;
    }
    if (sys->bare)
        bare->rr_small = bu_median(bs, runs), bare->rr_large = bu_median(bl, runs);
    if (sys->ab)
        ab->rr_small = bu_median(as, runs), ab->rr_large = bu_median(al, runs);
    tl_hist_t *hb = calloc(1, sizeof *hb), *ha = calloc(1, sizeof *ha);
    int warm = o->latency_count / 10, rc = 0;
    /* Latency in alternating slices so both see the same machine. */
    for (int slice = 0; slice < 10 && rc == 0; slice++) {
        int n = o->latency_count / 10;
        if (sys->bare)
            rc |= s_bare_lat(sys->bare, o->small, slice == 0 ? warm : 0, NULL) |
                  s_bare_lat(sys->bare, o->small, n, hb);
        if (sys->ab)
            rc |= s_ab_lat(sys->ab, o->small, slice == 0 ? warm : 0, NULL) |
                  s_ab_lat(sys->ab, o->small, n, ha);
    }
    bare->p50_ns = tl_hist_percentile(hb, 50), bare->p99_ns = tl_hist_percentile(hb, 99);
    ab->p50_ns = tl_hist_percentile(ha, 50), ab->p99_ns = tl_hist_percentile(ha, 99);
    free(hb);
    free(ha);
    return rc;
}

static double s_ratio(double a, double b)
{
    return b > 0 ? a / b : 0;
}

static void s_report(const s_opts_t *o, const s_result_t *b, const s_result_t *a)
{
    if (o->json) {
        printf("{\"runs\": %d, \"seconds\": %.2f, \"window\": %d, \"small_bytes\": %zu, "
               "\"large_bytes\": %zu,\n \"bare_hop\": {\"rr_small_msgs_s\": %.0f, "
               "\"rr_large_msgs_s\": %.0f, \"lone_p50_us\": %.1f, \"lone_p99_us\": %.1f},\n"
               " \"agentbus\": {\"rr_small_msgs_s\": %.0f, \"rr_large_msgs_s\": %.0f, "
               "\"lone_p50_us\": %.1f, \"lone_p99_us\": %.1f},\n \"ratio\": {\"rr_small\": %.3f, "
               "\"rr_large\": %.3f, \"lone_p50\": %.3f, \"lone_p99\": %.3f}}\n",
               o->runs, o->seconds, o->window, o->small, o->large, b->rr_small, b->rr_large,
               b->p50_ns / 1e3, b->p99_ns / 1e3, a->rr_small, a->rr_large, a->p50_ns / 1e3,
               a->p99_ns / 1e3, s_ratio(a->rr_small, b->rr_small),
               s_ratio(a->rr_large, b->rr_large), s_ratio((double)a->p50_ns, (double)b->p50_ns),
               s_ratio((double)a->p99_ns, (double)b->p99_ns));
        return;
    }
    printf("agentbus-bench: %d runs x %.1f s, window %d, medians; tcp loopback, same run\n\n",
           o->runs, o->seconds, o->window);
    printf("%-22s %12s %12s %8s %9s\n", "workload", "bare-hop", "agentbus", "ratio", "target");
    char l1[32], l2[32];
    snprintf(l1, sizeof l1, "rr %zuB msgs/s", o->small);
    snprintf(l2, sizeof l2, "rr %zuB msgs/s", o->large);
    printf("%-22s %12.0f %12.0f %7.2fx %9s\n", l1, b->rr_small, a->rr_small,
           s_ratio(a->rr_small, b->rr_small), ">=0.80x");
    printf("%-22s %12.0f %12.0f %7.2fx %9s\n", l2, b->rr_large, a->rr_large,
           s_ratio(a->rr_large, b->rr_large), ">=0.90x");
    printf("%-22s %12.1f %12.1f %7.2fx %9s\n", "lone p50 us", b->p50_ns / 1e3, a->p50_ns / 1e3,
           s_ratio((double)a->p50_ns, (double)b->p50_ns), "<=1.20x");
    printf("%-22s %12.1f %12.1f %7.2fx %9s\n", "lone p99 us", b->p99_ns / 1e3, a->p99_ns / 1e3,
           s_ratio((double)a->p99_ns, (double)b->p99_ns), "<=1.50x");
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

static int s_auth_report(const s_opts_t *o)
{
    char dir[256];
    if (s_auth_files(dir, sizeof dir) != 0) {
        fprintf(stderr, "agentbus-bench: cannot make the CURVE keys\n");
        return -1;
    }
    s_opts_t co = *o;
    co.auth_dir = dir;
    ab_client_t *plain = s_ab_setup(o), *curve = plain ? s_ab_setup(&co) : NULL;
    int rc = plain && curve ? 0 : -1;
    double ps[16], cs[16], pl[16], cl[16];
    int runs = o->runs > 16 ? 16 : o->runs;
    for (int r = 0; r < runs && rc == 0; r++) { /* interleaved: noise hits both alike */
        ps[r] = s_ab_rr(plain, o->small, o->seconds, o->window);
        cs[r] = s_ab_rr(curve, o->small, o->seconds, o->window);
        pl[r] = s_ab_rr(plain, o->large, o->seconds, o->window);
        cl[r] = s_ab_rr(curve, o->large, o->seconds, o->window);
        rc = ps[r] < 0 || cs[r] < 0 || pl[r] < 0 || cl[r] < 0 ? -1 : 0;
    }
    tl_hist_t *hp = calloc(1, sizeof *hp), *hc = calloc(1, sizeof *hc);
    for (int slice = 0; slice < 10 && rc == 0 && hp && hc; slice++) {
        int n = o->latency_count / 10, warm = slice == 0 ? n : 0;
        rc |= s_ab_lat(plain, o->small, warm, NULL) | s_ab_lat(plain, o->small, n, hp);
        rc |= s_ab_lat(curve, o->small, warm, NULL) | s_ab_lat(curve, o->small, n, hc);
    }
    if (rc == 0) {
        double a = bu_median(ps, runs), b = bu_median(cs, runs), c = bu_median(pl, runs),
               d = bu_median(cl, runs);
        double p50p = tl_hist_percentile(hp, 50) / 1e3, p50c = tl_hist_percentile(hc, 50) / 1e3;
        double p99p = tl_hist_percentile(hp, 99) / 1e3, p99c = tl_hist_percentile(hc, 99) / 1e3;
        printf("agentbus-bench --report auth: %d runs x %.1f s, window %d, medians; same run\n\n",
               runs, o->seconds, o->window);
        printf("%-22s %12s %12s %8s %14s\n", "workload", "plaintext", "curve", "ratio",
               "cost/msg us");
        printf("%-22s %12.0f %12.0f %7.2fx %14.2f\n", "rr 64B msgs/s", a, b, s_ratio(b, a),
               (1 / b - 1 / a) * 1e6);
        printf("%-22s %12.0f %12.0f %7.2fx %14.2f\n", "rr 4KiB msgs/s", c, d, s_ratio(d, c),
               (1 / d - 1 / c) * 1e6);
        printf("%-22s %12.1f %12.1f %7.2fx %14.1f\n", "lone p50 us", p50p, p50c,
               s_ratio(p50c, p50p), p50c - p50p);
        printf("%-22s %12.1f %12.1f %7.2fx %14.1f\n", "lone p99 us", p99p, p99c,
               s_ratio(p99c, p99p), p99c - p99p);
    }
    free(hp);
    free(hc);
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
           "Request/reply through agentbus-broker versus a bare ZeroMQ ROUTER->ROUTER hop,\n"
           "both measured in this run (interleaved), with ratios.\n\n"
           "  --seconds S          length of one throughput run (default 2)\n"
           "  --runs N             runs per throughput figure; the median is kept (default 5)\n"
           "  --window N           requests in flight for throughput (default 256)\n"
           "  --latency-count N    sequential requests for the lone-request latency (default 5000)\n"
           "  --size-small N       small payload bytes (default 64)\n"
           "  --size-large N       large payload bytes (default 4096)\n"
           "  --only bare|agentbus measure one system only\n"
           "  --broker-bin PATH    agentbus-broker to start (default: next to this program)\n"
           "  --worker-bin PATH    agentbus-worker to start (default: next to this program)\n"
           "  --broker EP          use a running broker (with an 'echo' service) instead\n"
           "  --batching on|off    batching and lz4 in the agentbus system (default on)\n"
           "  --corpus NAME        payload bytes: text (prose-like, default), json (chat\n"
           "                       messages), random (incompressible) or zeros\n"
           "  --report batching    instead of the table above: batching and lz4 on vs off,\n"
           "                       side by side (64 B msgs/s, lone round trip, 4 KiB and\n"
           "                       64 KiB msgs/s and bytes on the wire)\n"
           "  --report auth        instead: agentbus plaintext vs --auth curve (CURVE on\n"
           "                       every hop), side by side: 64 B and 4 KiB msgs/s, lone\n"
           "                       round trip p50/p99, and the cost per message\n"

           "  --json               one JSON object instead of the table\n"
           "  --pubsub             instead: pub/sub fan-out (1, 10, 100 subscribers) against\n"
           "                       bare ZeroMQ PUB/SUB and an XSUB/XPUB proxy, and agent\n"
           "                       ask/reply against request/reply (--subscribers LIST,\n"
           "                       --seconds, --runs (default 3), --window, --size-small)\n");
}

static int s_parse(s_opts_t *o, int argc, char **argv)
{
    static char broker[PATH_MAX], worker[PATH_MAX], self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    self[n > 0 ? n : 0] = '\0';
    const char *dir = dirname(self);
    snprintf(broker, sizeof broker, "%s/agentbus-broker", dir);
    snprintf(worker, sizeof worker, "%s/agentbus-worker", dir);
    *o = (s_opts_t){2.0, 5, 256, 5000, 0, 64, 4096, NULL, broker, worker, NULL, 0,
                    BN_CORPUS_TEXT, NULL, NULL};
    const char *f = "";
    for (int i = 1; i < argc; i++) {
        f = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long x;
        if (!strcmp(f, "--help")) {
            s_usage();
            return 1;
        } else if (!strcmp(f, "--json")) {
            o->json = 1;
            continue;
        }
        if (!v)
            goto bad;
        i++;
        if (!strcmp(f, "--seconds") && atof(v) > 0 && atof(v) <= 600)
            o->seconds = atof(v);
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
        else if (!strcmp(f, "--batching") && (!strcmp(v, "on") || !strcmp(v, "off")))
            o->nobatch = !strcmp(v, "off");
        else if (!strcmp(f, "--corpus") && bn_corpus_parse(v) >= 0)
            o->corpus = bn_corpus_parse(v);
        else if (!strcmp(f, "--report") && (!strcmp(v, "batching") || !strcmp(v, "auth")))
            o->report = v;
        else
            goto bad;
    }
    return 0;
bad:
    fprintf(stderr, "agentbus-bench: unknown option, missing or bad value: '%s' (see --help)\n", f);
    return -1;
}

int main(int argc, char **argv)
{
    s_opts_t o;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--pubsub") == 0) {
            s_parse(&o, 1, argv); /* only for the default program paths */
            return bn_pubsub_main(argc, argv, o.broker_bin, o.worker_bin);
        }
    int prc = s_parse(&o, argc, argv);
    if (prc)
        return prc > 0 ? 0 : 2;
    signal(SIGINT, s_on_signal);
    signal(SIGTERM, s_on_signal);
    signal(SIGPIPE, SIG_IGN);
    s_corpus = o.corpus;
    if (o.report && !strcmp(o.report, "auth")) {
        int r = s_auth_report(&o);
        s_stop_children();
        return r == 0 ? 0 : 1;
    }
    if (o.report) {
        bn_batch_report_opts_t ro = {o.seconds,    o.runs,      o.window,     o.latency_count,
                                     o.json,       o.corpus,    o.broker_bin, o.worker_bin,
                                     s_spawn_env, s_free_port};
        int r = bn_batch_report(&ro);
        s_stop_children();
        return r == 0 ? 0 : 1;
    }
    void *ctx = zmq_ctx_new();
    s_sys_t sys = {NULL, NULL};
    s_result_t bare = {0}, ab = {0};
    int rc = 1;
    if (o.only && !strcmp(o.only, "agentbus"))
        ;
    else if (!(sys.bare = s_bare_setup(ctx)))
        goto done;
    if (!(o.only && !strcmp(o.only, "bare")) && !(sys.ab = s_ab_setup(&o)))
        goto done;
    if (s_measure(&o, &sys, &bare, &ab) != 0) {
        fprintf(stderr, "agentbus-bench: a measurement failed\n");
        goto done;
    }
    s_report(&o, &bare, &ab);
    rc = 0;
done:
    if (sys.bare)
        zmq_close(sys.bare);
    ab_client_destroy(&sys.ab);
    zmq_ctx_term(ctx);
    s_stop_children();
    return rc;
}
