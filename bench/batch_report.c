/*
 * batch_report.c - agentbus-bench --report batching.
 *
 * Three complete systems run side by side for the whole run, each a broker
 * and an echo worker as child processes, with one client each:
 *   on    the defaults: batching on, lz4 only on hops that leave the
 *         machine (so none here, on loopback)
 *   off   batching off, lz4 off (one ZeroMQ message per message, as 0.1)
 *   lz4   batching on, lz4 on loopback too (--compress-local: what the
 *         per-hop rule saves, for the large rows)
 * Measurements are interleaved run by run so machine noise hits all alike;
 * throughput figures are medians of --runs runs. The table gives:
 *   - 64 B request/reply msgs/s, on vs off (target >= 3x), and the CPU
 *     (broker + worker + client, user + system) each request cost;
 *   - lone request round trip p50/p99, on vs off (target within +-10%);
 *   - 4 KiB and 64 KiB payloads of the corpus: msgs/s and bytes on the wire
 *     per request (broker bytes in + out, from its stats), on vs lz4.
 */
#include "batch_report.h"
#include "bench_util.h"
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "tl_clock.h"
#include "tl_hist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

enum { SYS_ON, SYS_OFF, SYS_LZ4, SYS_N };
#define MID 4096
#define BIG 65536
static const char *s_sys_name[SYS_N] = {"on", "off", "lz4"};

int bn_corpus_parse(const char *name)
{
    static const char *names[] = {"zeros", "text", "json", "random"};
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

const char *bn_corpus_name(int corpus)
{
    static const char *names[] = {"zeros", "text", "json", "random"};
    return corpus >= 0 && corpus < 4 ? names[corpus] : "?";
}

static unsigned long long s_next(unsigned long long *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

void bn_corpus_fill(int corpus, char *buf, size_t size, unsigned long long seed)
{
    static const char *words[] = {
        "the",     "model",  "agent",   "context", "request", "answer", "token",   "prompt",
        "summary", "of",     "a",       "and",     "to",      "in",     "is",      "with",
        "system",  "user",   "tool",    "result",  "search",  "memory", "plan",    "step",
        "next",    "GPU",    "latency", "should",  "we",      "will",   "because", "data"};
    unsigned long long s = seed ? seed : 0x9e3779b97f4a7c15ull;
    size_t k = 0;
    if (corpus == BN_CORPUS_ZEROS) {
        memset(buf, 0, size);
        return;
    }
    if (corpus == BN_CORPUS_RANDOM) {
        while (k < size)
            buf[k++] = (char)s_next(&s);
        return;
    }
    while (k < size) {
        char piece[160];
        int n;
        if (corpus == BN_CORPUS_JSON) {
            n = snprintf(piece, sizeof piece,
                         "{\"role\": \"%s\", \"content\": \"%s %s %s %s.\", \"id\": %llu}, ",
                         s_next(&s) % 2 ? "user" : "assistant", words[s_next(&s) % 32],
                         words[s_next(&s) % 32], words[s_next(&s) % 32], words[s_next(&s) % 32],
                         s_next(&s) % 100000);
        } else {
            n = snprintf(piece, sizeof piece, "%s%s", words[s_next(&s) % 32],
                         s_next(&s) % 12 ? " " : ". ");
        }
        for (int i = 0; i < n && k < size; i++)
            buf[k++] = piece[i];
    }
}

/* --- one system -------------------------------------------------------------------- */
typedef struct {
    ab_client_t *c;
    const char *ep;
    char epbuf[64];
    pid_t broker, worker;
} s_sys_t;

/* CPU time (user + system) of PID so far, in microseconds; 0 if unknown.
 * Machine load from elsewhere changes how fast a system runs much more
 * than how much CPU it burns per request, so CPU per request is the
 * steadier measure of what batching saves. */
static uint64_t s_cpu_us(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the name may hold spaces */
    unsigned long long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return 0;
    return (ut + st) * 1000000ull / (uint64_t)sysconf(_SC_CLK_TCK);
}

/* CPU of the whole system: broker, worker and this process (its client and
 * libzmq I/O thread; the other systems' clients are idle meanwhile). */
static uint64_t s_sys_cpu_us(const s_sys_t *sys)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    uint64_t self = (uint64_t)ru.ru_utime.tv_sec * 1000000 + (uint64_t)ru.ru_utime.tv_usec +
                    (uint64_t)ru.ru_stime.tv_sec * 1000000 + (uint64_t)ru.ru_stime.tv_usec;
    return self + s_cpu_us(sys->broker) + s_cpu_us(sys->worker);
}

static int s_sys_start(const bn_batch_report_opts_t *o, int which, s_sys_t *sys)
{
    snprintf(sys->epbuf, sizeof sys->epbuf, "tcp://127.0.0.1:%d", o->free_port());
    sys->ep = sys->epbuf;
    int batch = which != SYS_OFF;
    const char *benv[] = {batch ? "AB_BATCH=1" : "AB_BATCH=0",
                          which == SYS_OFF   ? "AB_COMPRESS_THRESHOLD_BYTES=0"
                          : which == SYS_LZ4 ? "AB_COMPRESS_LOCAL=1" /* the broker's */
                                             : NULL,
                          NULL};
    const char *b[] = {o->broker_bin, "--bind", sys->ep, "--log-level", "warn", NULL};
    const char *w[] = {o->worker_bin, "--broker",   sys->ep, "--backend", "echo",
                       "--service",   "echo",       "--capacity", "100000",
                       "--log-level", "warn",  NULL};
    sys->broker = o->spawn(b, benv);
    sys->worker = o->spawn(w, benv);
    ab_options_t *opts = ab_options_new();
    ab_options_set_endpoint(opts, sys->ep);
    ab_options_set_batching(opts, batch);
    ab_options_set_compression(opts, batch ? 1024 : 0, 10);
    int rc = ab_client_new(&sys->c, opts);
    ab_options_destroy(&opts);
    for (int i = 0; rc == AB_OK && i < 40; i++) { /* broker and worker up */
        int r = ab_client_request(sys->c, "echo", "x", 1, 500, NULL, NULL);
        if (r == AB_OK)
            return 0;
        usleep(100000);
    }
    fprintf(stderr, "agentbus-bench: system '%s' at %s not serving 'echo'\n", s_sys_name[which],
            sys->ep);
    return -1;
}

/* --- measurements ------------------------------------------------------------------ */
typedef struct {
    uint64_t done, failed;
} s_count_t;

static void s_count_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    s_count_t *n = arg;
    if (ev->final) {
        if (ev->status == AB_OK)
            n->done++;
        else
            n->failed++;
    }
}

/* Broker bytes in + out and replies so far, from its stats. */
static int s_wire(ab_client_t *c, uint64_t *bytes, uint64_t *replies)
{
    void *buf = NULL;
    size_t len = 0;
    if (ab_client_control(c, "stats", 5000, &buf, &len) != AB_OK)
        return -1;
    Agentbus__Stats *st = agentbus__stats__unpack(NULL, len, buf);
    ab_free(buf);
    if (!st)
        return -1;
    *bytes = st->bytes_in + st->bytes_out;
    *replies = st->replies;
    agentbus__stats__free_unpacked(st, NULL);
    return 0;
}

/* One throughput run: msgs/s, wire bytes per request into *WIRE and CPU
 * microseconds per request into *CPU (either may be NULL). */
static double s_rr(const bn_batch_report_opts_t *o, s_sys_t *sys, const char *buf, size_t size,
                   double *wire, double *cpu)
{
    /* Large payloads keep fewer in flight: 4096 x 64 KiB would be 256 MiB
     * queued, enough for ZMTP heartbeats to time out on a busy machine. */
    int window = size >= BIG ? (o->window < 64 ? o->window : 64)
                 : size >= MID ? (o->window < 256 ? o->window : 256)
                               : o->window;
    uint64_t b0 = 0, r0 = 0, b1 = 0, r1 = 0;
    if (wire && s_wire(sys->c, &b0, &r0) != 0)
        return -1;
    s_count_t n = {0, 0};
    uint64_t cpu0 = cpu ? s_sys_cpu_us(sys) : 0;
    uint64_t sent = 0, t0 = tl_now_ns(), end = t0 + (uint64_t)(o->seconds * 1e9);
    while (tl_now_ns() < end && !n.failed) {
        while (sent - n.done - n.failed < (uint64_t)window &&
               ab_client_request_start(sys->c, "echo", buf, size,
                                       &(ab_request_opts_t){.timeout_ms = 20000}, s_count_cb, &n,
                                       NULL) == AB_OK)
            sent++;
        if (ab_client_poll(sys->c, 1000) <= 0)
            break;
    }
    double secs = (double)(tl_now_ns() - t0) / 1e9;
    for (int i = 0; i < 2000 && n.done + n.failed < sent; i++)
        ab_client_poll(sys->c, 10);
    if (n.failed || n.done < sent) {
        fprintf(stderr, "agentbus-bench: %llu requests failed on '%s'\n",
                (unsigned long long)(sent - n.done), sys->ep);
        return -1;
    }
    if (cpu)
        *cpu = n.done ? (double)(s_sys_cpu_us(sys) - cpu0) / (double)n.done : 0;
    if (wire) {
        if (s_wire(sys->c, &b1, &r1) != 0 || r1 <= r0)
            return -1;
        *wire = (double)(b1 - b0) / (double)(r1 - r0);
    }
    return (double)n.done / secs;
}

static int s_lat(s_sys_t *sys, const char *buf, size_t size, int count, tl_hist_t *h)
{
    for (int i = 0; i < count; i++) {
        uint64_t t = tl_now_ns();
        if (ab_client_request(sys->c, "echo", buf, size, 5000, NULL, NULL) != AB_OK)
            return -1;
        if (h)
            tl_hist_record(h, tl_now_ns() - t);
    }
    return 0;
}

typedef struct {
    double small[SYS_N];               /* 64 B msgs/s */
    double small_cpu[SYS_N];           /* 64 B CPU us per request */
    double mid[SYS_N], mid_wire[SYS_N]; /* 4 KiB msgs/s, bytes per request */
    double big[SYS_N], big_wire[SYS_N]; /* 64 KiB */
    uint64_t p50[SYS_N], p99[SYS_N];   /* lone round trip, ns */
    /* Medians of the per-run ratios: each pair measured back to back, so
     * a burst of load from elsewhere hits both sides of a ratio alike. */
    double r_small, r_mid, r_mid_wire, r_big, r_big_wire, r_small_cpu;
} s_res_t;

/* Lone requests, alternating slices between on and off. */
static int s_measure_lat(const bn_batch_report_opts_t *o, s_sys_t *sys, const char *small,
                         size_t size, s_res_t *res)
{
    tl_hist_t *h[2] = {calloc(1, sizeof(tl_hist_t)), calloc(1, sizeof(tl_hist_t))};
    int n = o->latency_count / 10, rc = h[0] && h[1] ? 0 : -1;
    bf_progress("lone round trips: %d per system", o->latency_count);
    for (int slice = 0; slice < 10 && rc == 0; slice++)
        for (int s = 0; s < 2 && rc == 0; s++)
            if ((slice == 0 && s_lat(&sys[s], small, size, n, NULL) != 0) ||
                s_lat(&sys[s], small, size, n, h[s]) != 0)
                rc = -1;
    for (int s = 0; s < 2; s++) {
        res->p50[s] = rc == 0 ? tl_hist_percentile(h[s], 50) : 0;
        res->p99[s] = rc == 0 ? tl_hist_percentile(h[s], 99) : 0;
        free(h[s]);
    }
    return rc;
}

static int s_measure(const bn_batch_report_opts_t *o, s_sys_t *sys, s_res_t *res)
{
    double sm[SYS_N][16], md[SYS_N][16], mw[SYS_N][16], bg[SYS_N][16], bw[SYS_N][16];
    double sc[SYS_N][16];
    double rs[16], rm[16], rmw[16], rb[16], rbw[16], rsc[16];
    int runs = o->runs > 16 ? 16 : o->runs;
    char small[64], *mid = malloc(MID), *big = malloc(BIG);
    bn_corpus_fill(o->corpus, small, sizeof small, 1);
    bn_corpus_fill(o->corpus, mid, MID, 2);
    bn_corpus_fill(o->corpus, big, BIG, 3);
    int rc = 0;
    for (int r = 0; r < runs && rc == 0; r++) {
        /* Row by row, the systems of a row back to back. */
        for (int s = 0; s < SYS_N && rc == 0; s++)
            if ((sm[s][r] = s_rr(o, &sys[s], small, sizeof small, NULL, &sc[s][r])) < 0)
                rc = -1;
        for (int s = 0; s < SYS_N && rc == 0; s++)
            if (s != SYS_OFF && (md[s][r] = s_rr(o, &sys[s], mid, MID, &mw[s][r], NULL)) < 0)
                rc = -1;
        for (int s = 0; s < SYS_N && rc == 0; s++)
            if (s != SYS_OFF && (bg[s][r] = s_rr(o, &sys[s], big, BIG, &bw[s][r], NULL)) < 0)
                rc = -1;
        if (rc == 0) {
            bf_progress("run %d/%d msgs/s: 64B on %.0f off %.0f lz4 %.0f | 4KiB on %.0f lz4 "
                        "%.0f | 64KiB on %.0f lz4 %.0f", r + 1, runs, sm[SYS_ON][r],
                        sm[SYS_OFF][r], sm[SYS_LZ4][r], md[SYS_ON][r], md[SYS_LZ4][r],
                        bg[SYS_ON][r], bg[SYS_LZ4][r]);
            rs[r] = sm[SYS_ON][r] / sm[SYS_OFF][r];
            rsc[r] = sc[SYS_OFF][r] > 0 ? sc[SYS_ON][r] / sc[SYS_OFF][r] : 0;
            rm[r] = md[SYS_ON][r] / md[SYS_LZ4][r];
            rmw[r] = mw[SYS_ON][r] / mw[SYS_LZ4][r];
            rb[r] = bg[SYS_ON][r] / bg[SYS_LZ4][r];
            rbw[r] = bw[SYS_ON][r] / bw[SYS_LZ4][r];
        }
    }
    for (int s = 0; s < SYS_N && rc == 0; s++) {
        res->small[s] = bu_median(sm[s], runs);
        res->small_cpu[s] = bu_median(sc[s], runs);
        if (s != SYS_OFF) {
            res->mid[s] = bu_median(md[s], runs);
            res->mid_wire[s] = bu_median(mw[s], runs);
            res->big[s] = bu_median(bg[s], runs);
            res->big_wire[s] = bu_median(bw[s], runs);
        }
    }
    if (rc == 0) {
        res->r_small = bu_median(rs, runs);
        res->r_small_cpu = bu_median(rsc, runs);
        res->r_mid = bu_median(rm, runs);
        res->r_mid_wire = bu_median(rmw, runs);
        res->r_big = bu_median(rb, runs);
        res->r_big_wire = bu_median(rbw, runs);
    }
    if (rc == 0)
        rc = s_measure_lat(o, sys, small, sizeof small, res);
    free(mid);
    free(big);
    return rc;
}

static void s_print_sys(const char *key, const char *label, const char *unit, const double *v,
                        int with_off)
{
    for (int s = 0; s < SYS_N; s++)
        if (with_off || s != SYS_OFF)
            bf_add(key, label, unit, s_sys_name[s], v[s]);
}

static int s_print(const bn_batch_report_opts_t *o, const s_res_t *r)
{
    char title[400];
    snprintf(title, sizeof title,
             "agentbus-bench --report batching: window %d (4 KiB: %d, 64 KiB: %d), corpus %s;\n"
             "three systems side by side (on: the defaults, lz4 only off-machine; off: neither;\n"
             "lz4: batching and lz4 on loopback too);"
             "\nfigures are medians over runs, throughput ratios medians of the per-run ratios",
             o->window, o->window < 256 ? o->window : 256, o->window < 64 ? o->window : 64,
             bn_corpus_name(o->corpus));
    bf_begin("batching", title, o->judge);
    bf_param("runs", o->runs);
    bf_param("seconds", o->seconds);
    bf_param("window", o->window);
    bf_param("latency_count", o->latency_count);
    double p50[SYS_N], p99[SYS_N];
    for (int s = 0; s < SYS_N; s++)
        p50[s] = r->p50[s] / 1e3, p99[s] = r->p99[s] / 1e3;
    s_print_sys("rr_64_msgs_s", "rr 64B msgs/s", "msgs/s", r->small, 1);
    s_print_sys("cpu_64_us_per_req", "64B CPU us/request", "us", r->small_cpu, 1);
    for (int s = 0; s < 2; s++) { /* lone round trips: on and off only */
        bf_add("lone_p50_us", "lone p50 us", "us", s_sys_name[s], p50[s]);
        bf_add("lone_p99_us", "lone p99 us", "us", s_sys_name[s], p99[s]);
    }
    s_print_sys("rr_4k_msgs_s", "rr 4KiB msgs/s", "msgs/s", r->mid, 0);
    s_print_sys("wire_4k_bytes_per_req", "4KiB wire bytes/req", "bytes", r->mid_wire, 0);
    s_print_sys("rr_64k_msgs_s", "rr 64KiB msgs/s", "msgs/s", r->big, 0);
    s_print_sys("wire_64k_bytes_per_req", "64KiB wire bytes/req", "bytes", r->big_wire, 0);
    bf_ratio("rr_64_msgs_s", "on", "off", r->r_small, BF_AT_LEAST, 3.0);
    bf_ratio("cpu_64_us_per_req", "on", "off", r->r_small_cpu, BF_INFO, 0);
    bf_ratio("lone_p50_us", "on", "off", -1, BF_WITHIN, 1.1);
    bf_ratio("lone_p99_us", "on", "off", -1, BF_WITHIN, 1.1);
    bf_ratio("rr_4k_msgs_s", "on", "lz4", r->r_mid, BF_INFO, 0);
    bf_ratio("wire_4k_bytes_per_req", "on", "lz4", r->r_mid_wire, BF_INFO, 0);
    bf_ratio("rr_64k_msgs_s", "on", "lz4", r->r_big, BF_INFO, 0);
    bf_ratio("wire_64k_bytes_per_req", "on", "lz4", r->r_big_wire, BF_INFO, 0);
    return bf_print(o->format);
}

int bn_batch_report(const bn_batch_report_opts_t *o)
{
    s_sys_t sys[SYS_N];
    memset(sys, 0, sizeof sys);
    int rc = 0;
    bf_begin("batching", "", o->judge); /* progress times from here */
    bf_progress("starting the three systems");
    for (int s = 0; s < SYS_N && rc == 0; s++)
        rc = s_sys_start(o, s, &sys[s]);
    s_res_t res;
    memset(&res, 0, sizeof res);
    if (rc == 0 && (rc = s_measure(o, sys, &res)) != 0)
        fprintf(stderr, "agentbus-bench: a measurement failed\n");
    if (rc == 0)
        rc = s_print(o, &res);
    for (int s = 0; s < SYS_N; s++)
        ab_client_destroy(&sys[s].c);
    return rc;
}
