/*
 * scenario.c - agentbus-scenario: the seed workload measured end to end
 * (issue 20; docs/bench.md, "Seed workload").
 *
 * Starts two ollama-sim (two GPUs), a broker with its cache (L1 + L3) and
 * two Ollama workers, then runs the same seeded workload of 174 agents:
 *   run A  direct: each agent POSTs to its GPU's simulator (a new
 *          connection per call, and a keep-alive variant);
 *   run B  bus: the same agents through agentbus;
 *   run C  the HTTP gateway: not run, it does not exist yet;
 * in a closed loop (think time) and an open loop (Poisson offered rates,
 * stepped), then the scale part (1,000 connected agents). Prints progress
 * lines and a table, writes a CSV and a gnuplot PNG.
 */
#include "scenario.h"
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "bench_util.h"
#include "util.h"

#include <curl/curl.h>
#include <jansson.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    double scale, closed_s, open_s;
    uint64_t seed;
    int pool_pct, agents, scale_agents, quick, skip_open, skip_scale, skip_direct_ka, capacity, deep;
    char rates[128], out[PATH_MAX];
} s_opts_t;

static pid_t s_kids[8];
static int s_nkids;
static char s_dir[64];

static void s_cleanup(void)
{
    sc_scale_cleanup();
    bu_stop_pids(s_kids, s_nkids);
    s_nkids = 0;
    if (s_dir[0] && getenv("AB_SCENARIO_KEEP_LOGS")) {
        fprintf(stderr, "scenario: logs kept in %s\n", s_dir);
        s_dir[0] = '\0';
    }
    if (s_dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "scenario: could not remove %s\n", s_dir);
        s_dir[0] = '\0';
    }
}

static void s_on_signal(int sig)
{
    (void)sig;
    exit(130); /* atexit: stop the children */
}

static pid_t s_spawn(const char *const *argv, const char *log)
{
    fflush(NULL); /* a child must not inherit (and later write) our buffered output */
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    if (pid > 0 && s_nkids < (int)(sizeof s_kids / sizeof *s_kids))
        s_kids[s_nkids++] = pid;
    return pid;
}

static uint64_t s_t0;
static void s_progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void s_progress(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fflush(stdout);
    fprintf(stderr, "[scenario %6.1fs] ", (ab_now_us() - s_t0) / 1e6);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* --- the stack: two simulated GPUs, a broker, two workers ------------------------- */
typedef struct {
    char bin[PATH_MAX];
    char sim_url[SC_GPUS][64];
    char broker[64];
} s_stack_t;

static int s_sim_up(const char *url)
{
    char u[96];
    snprintf(u, sizeof u, "%s/api/version", url);
    char *t = sc_http(u, NULL, NULL);
    free(t);
    return t != NULL;
}

/* Requests the simulator holds (active + queued), or -1. */
static long s_sim_load(const char *url)
{
    char u[96];
    snprintf(u, sizeof u, "%s/sim/stats", url);
    char *t = sc_http(u, NULL, NULL);
    json_t *j = t ? json_loads(t, 0, NULL) : NULL;
    free(t);
    if (!j)
        return -1;
    long n = (long)(json_integer_value(json_object_get(j, "active")) +
                    json_integer_value(json_object_get(j, "queued")));
    json_decref(j);
    return n;
}

/* Waits (bounded) until the simulators hold no request, so a run does not
 * inherit the previous one's queue. */
static void s_wait_idle(const s_stack_t *st)
{
    for (int tries = 0; tries < 600; tries++) {
        long n = 0;
        for (int g = 0; g < SC_GPUS; g++) {
            long l = s_sim_load(st->sim_url[g]);
            n += l < 0 ? 1 : l;
        }
        if (n == 0)
            return;
        usleep(50000);
    }
    s_progress("warning: simulators still busy after 30 s");
}

static int s_workers_ready(const char *broker, int want)
{
    ab_options_t *o = ab_options_new();
    ab_options_set_endpoint(o, broker);
    ab_client_t *c = NULL;
    int ready = 0;
    if (ab_client_new(&c, o) == AB_OK) {
        for (int tries = 0; tries < 300 && !ready; tries++) {
            void *buf = NULL;
            size_t len;
            if (ab_client_control(c, "stats", 1000, &buf, &len) == AB_OK) {
                Agentbus__Stats *st = agentbus__stats__unpack(NULL, len, buf);
                uint32_t have = 0;
                for (size_t i = 0; st && i < st->n_services; i++)
                    if (!strcmp(st->services[i]->name, "ollama"))
                        have = st->services[i]->workers;
                ready = st && have == (uint32_t)want;
                if (st)
                    agentbus__stats__free_unpacked(st, NULL);
                ab_free(buf);
            }
            if (!ready)
                usleep(100000);
        }
        ab_client_destroy(&c);
    }
    ab_options_destroy(&o);
    return ready;
}

/* Two Ollama workers, one per simulated GPU, with CAPACITY requests each
 * (the broker's credit); children 3 and 4. Waits until both registered. */
static int s_start_workers(const s_stack_t *st, int capacity)
{
    char worker[PATH_MAX + 32], log[128];
    snprintf(worker, sizeof worker, "%s/agentbus-worker", st->bin);
    char preload[256] = "";
    for (int m = 0; m < SC_MODELS; m++)
        snprintf(preload + strlen(preload), sizeof preload - strlen(preload), "%s%s",
                 m ? "," : "", sc_models[m].name);
    for (int g = 0; g < SC_GPUS; g++) {
        char name[16], cap[16];
        snprintf(name, sizeof name, "gpu%d", g);
        snprintf(cap, sizeof cap, "%d", capacity);
        /* Capacity: by default every slot of the GPU (3 models x 4). */
        const char *wargv[] = {worker, "--broker", st->broker, "--backend", "ollama",
                               "--ollama-url", st->sim_url[g], "--name", name, "--capacity", cap,
                               "--gpu-vram-mb", "24576", "--preload", preload, NULL};
        snprintf(log, sizeof log, "%s/worker%d-cap%d.log", s_dir, g, capacity);
        s_spawn(wargv, log);
    }
    if (!s_workers_ready(st->broker, SC_GPUS)) {
        fprintf(stderr, "scenario: the workers did not register (logs in %s)\n", s_dir);
        return -1;
    }
    return 0;
}

static int s_start_stack(const s_opts_t *op, s_stack_t *st)
{
    char scale[32], seed[32], log[128], cfgmodels[SC_MODELS][160];
    snprintf(scale, sizeof scale, "%g", op->scale);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)op->seed);
    char sim[PATH_MAX + 16], broker[PATH_MAX + 32];
    snprintf(sim, sizeof sim, "%s/ollama-sim", st->bin);
    snprintf(broker, sizeof broker, "%s/agentbus-broker", st->bin);
    for (int m = 0; m < SC_MODELS; m++)
        snprintf(cfgmodels[m], sizeof cfgmodels[m],
                 "%s,size=%s,load_ms=%g,prefill_tps=%g,token_ms=%g,parameter_size=%s",
                 sc_models[m].name, sc_models[m].size, sc_models[m].load_ms,
                 sc_models[m].prefill_tps, sc_models[m].token_ms, sc_models[m].parameter_size);
    int ports[SC_GPUS];
    for (int g = 0; g < SC_GPUS; g++) {
        char port[16];
        ports[g] = bu_free_port();
        snprintf(port, sizeof port, "%d", ports[g]);
        snprintf(st->sim_url[g], sizeof st->sim_url[g], "http://127.0.0.1:%d", ports[g]);
        /* One RTX 3090 class GPU each: 24 GiB, OLLAMA_NUM_PARALLEL 4,
         * OLLAMA_MAX_QUEUE 512 (Ollama's defaults), models kept loaded. */
        const char *argv[] = {sim, "--port", port, "--time-scale", scale, "--gpu", "24G",
                              "--num-parallel", "4", "--max-queue", "512", "--keep-alive", "-1",
                              "--seed", seed, "--quiet", "--model", cfgmodels[0], "--model",
                              cfgmodels[1], "--model", cfgmodels[2], NULL};
        snprintf(log, sizeof log, "%s/sim%d.log", s_dir, g);
        s_spawn(argv, log);
    }
    int bport = bu_free_port();
    snprintf(st->broker, sizeof st->broker, "tcp://127.0.0.1:%d", bport);
    const char *bargv[] = {broker, "--bind", st->broker, "--data-dir", s_dir, "--log-level",
                           "error", NULL};
    snprintf(log, sizeof log, "%s/broker.log", s_dir);
    s_spawn(bargv, log);
    for (int i = 0; i < 100 && !(s_sim_up(st->sim_url[0]) && s_sim_up(st->sim_url[1])); i++)
        usleep(100000);
    /* Load every model on both GPUs before anything is measured. */
    for (int g = 0; g < SC_GPUS; g++)
        for (int m = 0; m < SC_MODELS; m++) {
            char u[96], body[128];
            snprintf(u, sizeof u, "%s/api/generate", st->sim_url[g]);
            snprintf(body, sizeof body, "{\"model\":\"%s\",\"keep_alive\":-1}", sc_models[m].name);
            free(sc_http(u, body, NULL));
        }
    return s_start_workers(st, op->capacity);
}

/* --- figures of a run ----------------------------------------------------------- */
typedef struct {
    double done_per_s, repeat_pct, err_pct;
    double ip[3], bp[3], tt[2];  /* interactive, batch p50/p95/p99; TTFT p50/p95 (sim s) */
    double add95, floor95;       /* batch: p95 of (latency - unloaded GPU time); p95 of the latter */
    double hit_pct;              /* bus: (cache hits + coalesced) / issued */
    uint64_t ok, errs, lost, err_by[SC_E_N];
} s_sum_t;

static int s_cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Percentile P of V[0..N-1] (sorted), in simulated seconds; NAN if empty. */
static double s_pct(const uint32_t *v, size_t n, double p, double scale)
{
    if (!n)
        return NAN;
    size_t i = (size_t)ceil(p / 100.0 * (double)n);
    i = i ? i - 1 : 0;
    return v[i < n ? i : n - 1] / 1e6 * scale;
}

static void s_summarise(const sc_result_t *r, double scale, double sim_seconds, s_sum_t *s)
{
    memset(s, 0, sizeof *s);
    uint32_t *vi = malloc((r->nrecs + 1) * sizeof *vi), *vb = malloc((r->nrecs + 1) * sizeof *vb),
             *vt = malloc((r->nrecs + 1) * sizeof *vt), *va = malloc((r->nrecs + 1) * sizeof *va),
             *vf = malloc((r->nrecs + 1) * sizeof *vf);
    size_t ni = 0, nb = 0, nt = 0, rep = 0, in_window = 0;
    for (size_t i = 0; vi && vb && vt && va && vf && i < r->nrecs; i++) {
        const sc_rec_t *x = &r->recs[i];
        rep += x->repeat;
        if (!x->ok) {
            s->errs++;
            s->err_by[x->err]++;
            continue;
        }
        s->ok++;
        in_window += !x->late;
        if (sc_classes[x->cls].interactive)
            vi[ni++] = x->lat_us;
        else {
            va[nb] = x->lat_us > x->ideal_us ? x->lat_us - x->ideal_us : 0;
            vf[nb] = x->ideal_us;
            vb[nb++] = x->lat_us;
        }
        if (x->ttft_us)
            vt[nt++] = x->ttft_us;
    }
    qsort(vi, ni, sizeof *vi, s_cmp_u32);
    qsort(vb, nb, sizeof *vb, s_cmp_u32);
    qsort(vt, nt, sizeof *vt, s_cmp_u32);
    qsort(va, nb, sizeof *va, s_cmp_u32);
    qsort(vf, nb, sizeof *vf, s_cmp_u32);
    s->add95 = s_pct(va, nb, 95, scale);
    s->floor95 = s_pct(vf, nb, 95, scale);
    s->hit_pct = r->has_bus && r->issued ? 100.0 * (r->hits[0] + r->hits[1] + r->hits[2] +
                                                    r->coalesced) / r->issued : 0;
    const double ps[3] = {50, 95, 99};
    for (int k = 0; k < 3; k++) {
        s->ip[k] = s_pct(vi, ni, ps[k], scale);
        s->bp[k] = s_pct(vb, nb, ps[k], scale);
    }
    s->tt[0] = s_pct(vt, nt, 50, scale);
    s->tt[1] = s_pct(vt, nt, 95, scale);
    s->done_per_s = in_window / sim_seconds;
    s->repeat_pct = r->nrecs ? 100.0 * rep / r->nrecs : 0;
    s->err_pct = r->issued ? 100.0 * s->errs / r->issued : 0;
    s->lost = r->issued > r->nrecs ? r->issued - r->nrecs : 0;
    free(vi);
    free(vb);
    free(vt);
    free(va);
    free(vf);
}

static const char *s_hdr =
    "run               loop   offered  done/s  rep%  int_p50 int_p95 int_p99  bat_p50 bat_p95 "
    "bat_p99 add_p95  ttft50 ttft95  err%   lost  util%  utilQ%  L1hit  L2hit  L3hit  coalesced  "
    "hit%";

static void s_row(FILE *f, const sc_result_t *r, const s_sum_t *s)
{
    char off[16], hits[3][16], co[16];
    snprintf(off, sizeof off, r->open_loop ? "%.0f" : "-", r->rate);
    for (int t = 0; t < 3; t++)
        snprintf(hits[t], sizeof hits[t], r->has_bus ? "%llu" : "-", (unsigned long long)r->hits[t]);
    snprintf(co, sizeof co, r->has_bus ? "%llu" : "-", (unsigned long long)r->coalesced);
    char hp[16], uq[16];
    snprintf(hp, sizeof hp, r->has_bus ? "%.0f" : "-", s->hit_pct);
    snprintf(uq, sizeof uq, r->util_queued >= 0 ? "%.1f" : "-", r->util_queued);
    fprintf(f, "%-17s %-6s %7s %7.1f %5.0f  %7.2f %7.2f %7.2f  %7.2f %7.2f %7.2f %7.2f  %6.2f %6.2f "
               "%5.1f %6llu %6.1f %7s %6s %6s %6s %10s %5s\n",
            r->label, r->open_loop ? "open" : "closed", off, s->done_per_s, s->repeat_pct, s->ip[0],
            s->ip[1], s->ip[2], s->bp[0], s->bp[1], s->bp[2], s->add95, s->tt[0], s->tt[1],
            s->err_pct, (unsigned long long)s->lost, r->util_all, uq, hits[0], hits[1],
            hits[2], co, hp);
}

static void s_csv_row(FILE *f, const sc_result_t *r, const s_sum_t *s, double scale)
{
    fprintf(f, "%s,%s,%.1f,%.3f,%.1f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%llu,%llu,%llu,"
               "%.1f,%.1f,%.1f,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%g,%.3f,%.3f,%.1f\n",
            r->label, r->open_loop ? "open" : "closed", r->open_loop ? r->rate : 0,
            s->done_per_s, s->repeat_pct, s->ip[0], s->ip[1], s->ip[2], s->bp[0], s->bp[1],
            s->bp[2], s->tt[0], s->tt[1], s->err_pct, (unsigned long long)r->issued,
            (unsigned long long)s->ok, (unsigned long long)s->lost, r->util_all, r->util_queued,
            r->queued_secs, (unsigned long long)r->hits[0], (unsigned long long)r->hits[1],
            (unsigned long long)r->hits[2], (unsigned long long)r->coalesced,
            (unsigned long long)s->err_by[SC_E_HTTP503], (unsigned long long)s->err_by[SC_E_TIMEOUT],
            (unsigned long long)s->err_by[SC_E_CONN] + s->err_by[SC_E_HTTP],
            (unsigned long long)s->err_by[SC_E_BUS], (unsigned long long)s->err_by[SC_E_CUT],
            (unsigned long long)r->sim_503, scale, s->add95, s->floor95, s->hit_pct);
}

static const char *s_csv_hdr =
    "run,loop,offered_rps,done_rps,repeat_pct,int_p50_s,int_p95_s,int_p99_s,batch_p50_s,"
    "batch_p95_s,batch_p99_s,ttft_p50_s,ttft_p95_s,err_pct,issued,ok,lost,util_pct,"
    "util_queued_pct,queued_s,l1_hits,l2_hits,l3_hits,coalesced,err_503,err_timeout,"
    "err_http_conn,err_bus,err_cut,sim_503,time_scale,batch_added_p95_s,batch_floor_p95_s,"
    "hit_or_coalesced_pct";

/* Plot data of a closed-loop run: the latency CDF and completions per
 * simulated 5 s, in OUT/LABEL.cdf and OUT/LABEL.rate. */
static void s_plot_data(const char *out, const sc_result_t *r, double scale)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s.cdf", out, r->label);
    FILE *f = fopen(path, "w");
    uint32_t *v = malloc((r->nrecs + 1) * sizeof *v);
    size_t n = 0;
    for (size_t i = 0; v && i < r->nrecs; i++)
        if (r->recs[i].ok)
            v[n++] = r->recs[i].lat_us;
    qsort(v, n, sizeof *v, s_cmp_u32);
    for (size_t i = 0; f && i < n; i += n > 2000 ? n / 2000 : 1)
        fprintf(f, "%.4f %.5f\n", v[i] / 1e6 * scale, (double)(i + 1) / n);
    if (f)
        fclose(f);
    free(v);
    snprintf(path, sizeof path, "%s/%s.rate", out, r->label);
    f = fopen(path, "w");
    int bins = (int)(r->seconds_wall * scale / 5.0) + 1;
    uint32_t *c = calloc((size_t)bins, sizeof *c);
    for (size_t i = 0; c && i < r->nrecs; i++) {
        int b = (int)(r->recs[i].done_ms / 1000.0 * scale / 5.0);
        if (r->recs[i].ok && b < bins)
            c[b]++;
    }
    for (int b = 0; f && c && b < bins - 1; b++)
        fprintf(f, "%d %.2f\n", (b + 1) * 5, c[b] / 5.0);
    if (f)
        fclose(f);
    free(c);
}

static void s_plot(const char *out, sc_result_t *res, int n)
{
    int open = 0;
    for (int i = 0; i < n; i++)
        open |= res[i].open_loop;
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/scenario.gp", out);
    FILE *f = fopen(path, "w");
    if (!f)
        return;
    fprintf(f, "set terminal pngcairo size 1400,%d font 'sans,10'\n"
               "set output '%s/scenario.png'\nset multiplot layout %d,2 title "
               "'agentbus seed workload: 174 agents, two simulated GPUs (times in simulated s)'\n"
               "set grid\nset key bottom right\nset logscale x\n"
               "set title 'closed loop: latency CDF (completed calls)'\n"
               "set xlabel 'latency (s)'\nset ylabel 'fraction'\nplot ", open ? 1000 : 500, out,
            open ? 2 : 1);
    int first = 1;
    for (int i = 0; i < n; i++)
        if (!res[i].open_loop) {
            fprintf(f, "%s'%s/%s.cdf' using 1:2 with lines lw 2 title '%s'", first ? "" : ", ",
                    out, res[i].label, res[i].label);
            first = 0;
        }
    fprintf(f, "\nunset logscale x\nset key top right\n"
               "set title 'closed loop: completed requests/s over time'\n"
               "set xlabel 'time (s)'\nset ylabel 'req/s (5 s bins)'\nplot ");
    first = 1;
    for (int i = 0; i < n; i++)
        if (!res[i].open_loop) {
            fprintf(f, "%s'%s/%s.rate' using 1:2 with linespoints lw 2 title '%s'",
                    first ? "" : ", ", out, res[i].label, res[i].label);
            first = 0;
        }
    if (!open)
        fprintf(f, "\nunset multiplot\n");
    else
        fprintf(f, "\nset logscale xy\nset key top left\nset datafile separator ','\n"
               "set title 'open loop: completed vs offered'\nset xlabel 'offered req/s'\n"
               "set ylabel 'completed req/s'\n");
    if (open) {
        const char *labels[8];
        int nl = 0;
        for (int i = 0; i < n; i++) {
            int seen = 0;
            for (int j = 0; j < nl; j++)
                seen |= !strcmp(labels[j], res[i].label);
            if (res[i].open_loop && !seen && nl < 8)
                labels[nl++] = res[i].label;
        }
        for (int col = 4; col <= 10; col += 6) {
            if (col != 4)
                fprintf(f, "set title 'open loop: batch p95 vs offered (errors apart)'\n"
                           "set ylabel 'p95 (s)'\n");
            for (int j = 0; j < nl; j++)
                fprintf(f, "%s'%s/scenario.csv' using (strcol(2) eq 'open' && strcol(1) eq '%s' ? "
                           "$3 : 1/0):%d with linespoints lw 2 title '%s'", j ? ", " : "plot ",
                        out, labels[j], col, labels[j]);
            fprintf(f, col == 4 ? ", x with lines dt 2 lc 'gray' title 'offered'\n"
                                : ", 2 with lines dt 2 lc 'red' title '2 s'\n");
        }
        fprintf(f, "unset multiplot\n");
    }
    fclose(f);
    char cmd[3 * PATH_MAX];
    snprintf(cmd, sizeof cmd, "gnuplot '%.4000s' 2>'%.4000s/gnuplot.err'", path, out);
    if (system(cmd) != 0)
        s_progress("gnuplot failed (is gnuplot-nox installed?): see %s/gnuplot.err", out);
    else
        s_progress("plot: %s/scenario.png", out);
}

/* The targets, read off the same run. */
static void s_targets(const s_opts_t *o, sc_result_t *res, int n)
{
    s_sum_t sum[40];
    int dn = -1, bus = -1;
    for (int i = 0; i < n; i++) {
        s_summarise(&res[i], o->scale, res[i].open_loop ? o->open_s : o->closed_s, &sum[i]);
        if (!res[i].open_loop && !strcmp(res[i].label, "direct-new"))
            dn = i;
        if (!res[i].open_loop && !strcmp(res[i].label, "bus"))
            bus = i;
    }
    printf("\nTargets (issue 20), same run:\n");
    if (dn >= 0 && bus >= 0) {
        double f = sum[bus].hit_pct / 100.0, want = 0.95 * sum[dn].done_per_s / (1 - f);
        printf("  closed: bus %.1f req/s vs 0.95 x direct %.1f / (1 - %.2f hit-or-coalesced) = %.1f: "
               "%s (%.2fx direct)\n", sum[bus].done_per_s, sum[dn].done_per_s, f, want,
               sum[bus].done_per_s >= want ? "met" : "NOT met",
               sum[bus].done_per_s / sum[dn].done_per_s);
        double ceiling = 0;
        for (int a = 0; a < o->agents; a++)
            ceiling += 1.0 / sc_classes[sc_agent_class(a)].think_s;
        printf("  closed: the agents' own ceiling (zero latency, think time only): %.1f req/s\n",
               ceiling);
        for (int i = 0; i < n; i++)
            if (!res[i].open_loop && !strncmp(res[i].label, "bus-cap", 7))
                printf("  closed: %s: %.1f req/s (%.2fx direct), slots busy while work waits %.1f%%, "
                       "errors %.2f%%\n", res[i].label, sum[i].done_per_s,
                       sum[i].done_per_s / sum[dn].done_per_s, res[i].util_queued, sum[i].err_pct);
        printf("  closed: GPU slots busy while work waits: bus %.1f%%, direct %.1f%% (target >= 95%%)\n",
               res[bus].util_queued, res[dn].util_queued);
        printf("  closed: errors bus %.2f%%, direct %.2f%% (target < 0.1%%); batch GPU time alone "
               "p95 %.2f s\n", sum[bus].err_pct, sum[dn].err_pct, sum[bus].floor95);
    }
    uint64_t lost = 0;
    for (int i = 0; i < n; i++)
        lost += sum[i].lost;
    printf("  lost requests, all runs: %llu (target 0)\n", (unsigned long long)lost);
    /* Per open-loop system: the highest offered rate it sustained, by three
     * readings: errors < 0.1% alone; and with batch p95 < 2 s (raw, or of
     * the time added to the GPU's own). */
    const char *labels[8];
    double best[8][3] = {{0}};
    int nl = 0;
    for (int i = 0; i < n; i++) {
        if (!res[i].open_loop)
            continue;
        int l = 0;
        while (l < nl && strcmp(labels[l], res[i].label))
            l++;
        if (l == nl && nl < 8)
            labels[nl++] = res[i].label;
        if (l >= 8)
            continue;
        int ok = sum[i].err_pct < 0.1;
        double r = res[i].rate;
        if (ok && r > best[l][0])
            best[l][0] = r;
        if (ok && sum[i].bp[1] < 2.0 && r > best[l][1])
            best[l][1] = r;
        if (ok && sum[i].add95 < 2.0 && r > best[l][2])
            best[l][2] = r;
        if (res[i].has_bus)
            printf("  open %s %.0f req/s: interactive p95 %.2f s (target < 1.5 s), batch p95 %.2f s, "
                   "errors %.2f%%\n", res[i].label, r, sum[i].ip[1], sum[i].bp[1], sum[i].err_pct);
    }
    for (int l = 0; l < nl; l++)
        printf("  open %s: highest offered rate sustained (0 = none): errors < 0.1%%: %.0f req/s; "
               "and batch p95 < 2 s: %.0f; and p95 added to the GPU time < 2 s: %.0f\n",
               labels[l], best[l][0], best[l][1], best[l][2]);
    if (nl)
        printf("  open: target: the bus sustains >= 3x the rate direct use does\n");
    printf("  priority lanes: none in the broker yet (interactive calls share the FIFO)\n");
}

static int s_parse(s_opts_t *o, int argc, char **argv)
{
    memset(o, 0, sizeof *o);
    o->scale = 5;
    o->closed_s = 60;
    o->open_s = 30;
    o->seed = 1;
    o->pool_pct = 85;
    o->agents = SC_AGENTS;
    o->capacity = 12;
    o->deep = 48;
    o->scale_agents = 1000;
    snprintf(o->rates, sizeof o->rates, "3,6,12,24,48,500");
    snprintf(o->out, sizeof o->out, "scenario-out");
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        long l;
        if (!strcmp(f, "--quick")) {
            o->quick = 1;
            o->scale = 10;
            o->closed_s = 20;
            o->skip_open = o->skip_scale = o->skip_direct_ka = 1;
            o->deep = 0;
            continue;
        }
        if (!strcmp(f, "--no-open") || !strcmp(f, "--no-scale") || !strcmp(f, "--no-keepalive")) {
            *(f[5] == 'o' ? &o->skip_open : f[5] == 's' ? &o->skip_scale : &o->skip_direct_ka) = 1;
            continue;
        }
        if (!strcmp(f, "--scale-only")) {
            o->skip_open = 1;
            o->closed_s = 0;
            continue;
        }
        i++;
        if (!strcmp(f, "--time-scale") && atof(v) >= 0.1 && atof(v) <= 100)
            o->scale = atof(v);
        else if (!strcmp(f, "--closed-seconds") && ab_parse_long(v, 0, 3600, &l) == 0)
            o->closed_s = (double)l;
        else if (!strcmp(f, "--open-seconds") && ab_parse_long(v, 1, 3600, &l) == 0)
            o->open_s = (double)l;
        else if (!strcmp(f, "--seed") && ab_parse_long(v, 0, LONG_MAX, &l) == 0)
            o->seed = (uint64_t)l;
        else if (!strcmp(f, "--pool-pct") && ab_parse_long(v, 0, 100, &l) == 0)
            o->pool_pct = (int)l;
        else if (!strcmp(f, "--agents") && ab_parse_long(v, 1, SC_AGENTS, &l) == 0)
            o->agents = (int)l;
        else if (!strcmp(f, "--scale-agents") && ab_parse_long(v, 0, 100000, &l) == 0)
            o->scale_agents = (int)l;
        else if (!strcmp(f, "--worker-capacity") && ab_parse_long(v, 1, 1000, &l) == 0)
            o->capacity = (int)l;
        else if (!strcmp(f, "--deep-capacity") && ab_parse_long(v, 0, 1000, &l) == 0)
            o->deep = (int)l;
        else if (!strcmp(f, "--rates") && *v)
            snprintf(o->rates, sizeof o->rates, "%s", v);
        else if (!strcmp(f, "--out") && *v)
            snprintf(o->out, sizeof o->out, "%s", v);
        else {
            printf("Usage: agentbus-scenario [--quick] [--time-scale X] [--closed-seconds S]\n"
                   "         [--open-seconds S] [--rates R1,R2,..] [--seed N] [--pool-pct P]\n"
                   "         [--agents N] [--scale-agents N] [--no-open] [--no-scale]\n"
                   "         [--no-keepalive] [--scale-only] [--worker-capacity N] [--deep-capacity N]\n"
                   "         [--out DIR]\n\n"
                   "The seed workload (174 agents, two simulated GPUs) direct vs over agentbus;\n"
                   "then 1,000 connected agents. Seconds and rates are simulated (the simulators\n"
                   "run --time-scale X, default 5, times faster). docs/bench.md, \"Seed workload\".\n");
            return strcmp(f, "--help") ? -1 : 1;
        }
    }
    return 0;
}

/* One run with progress lines; appends to RES. */
static void s_one(const s_opts_t *o, const s_stack_t *st, sc_run_cfg_t *cfg, sc_result_t *res,
                  int *n, FILE *csv)
{
    snprintf(cfg->sim_url[0], sizeof cfg->sim_url[0], "%s", st->sim_url[0]);
    snprintf(cfg->sim_url[1], sizeof cfg->sim_url[1], "%s", st->sim_url[1]);
    cfg->scale = o->scale;
    cfg->seed = o->seed;
    cfg->pool_pct = o->pool_pct;
    cfg->agents = o->agents;
    s_wait_idle(st);
    if (cfg->open_loop)
        s_progress("%s open loop at %.0f req/s offered: %.0f s simulated (%.1f s wall)...",
                   cfg->label, cfg->rate, cfg->seconds, cfg->seconds / o->scale);
    else
        s_progress("%s closed loop, %d agents: %.0f s simulated (%.1f s wall)...", cfg->label,
                   cfg->agents, cfg->seconds, cfg->seconds / o->scale);
    sc_result_t *r = &res[*n];
    sc_run(cfg, r);
    s_sum_t s;
    s_summarise(r, o->scale, cfg->seconds, &s);
    fprintf(stderr, "[scenario %6.1fs]   %llu issued, %llu ok (%.1f/s), %llu errors (", (ab_now_us() - s_t0) / 1e6,
            (unsigned long long)r->issued, (unsigned long long)s.ok, s.done_per_s,
            (unsigned long long)s.errs);
    for (int e = 1; e < SC_E_N; e++)
        if (s.err_by[e])
            fprintf(stderr, " %s=%llu", sc_err_names[e], (unsigned long long)s.err_by[e]);
    if (cfg->ops == &sc_bus_ops)
        sc_bus_errors(stderr);
    fprintf(stderr, " ), lost %llu, batch p95 %.2f s, slots busy %.0f%% (%.0f%% while queued)\n",
            (unsigned long long)s.lost, s.bp[1], r->util_all, r->util_queued);
    s_csv_row(csv, r, &s, o->scale);
    fflush(csv);
    if (!r->open_loop)
        s_plot_data(o->out, r, o->scale);
    (*n)++;
}

/* The open-loop ladder of one system: each offered rate in turn. Above
 * the first rate with more than 5% errors (not sustained by any reading)
 * only the last rate (the seed's wanted 500 req/s) is still run. */
static void s_ladder(const s_opts_t *o, const s_stack_t *st, const sc_engine_ops_t *ops,
                     const char *label, sc_result_t *res, int *n, FILE *csv)
{
    char rates[128];
    snprintf(rates, sizeof rates, "%s", o->rates);
    int collapsed = 0;
    for (char *save = NULL, *t = strtok_r(rates, ",", &save); t && *n < 38;
         t = strtok_r(NULL, ",", &save)) {
        int last = !save || !*save;
        if (collapsed && !last) {
            s_progress("%s at %s req/s: not run (over 5%% errors at a lower rate)", label, t);
            continue;
        }
        sc_run_cfg_t c = {.ops = ops, .label = label, .open_loop = 1, .rate = atof(t),
                          .seconds = o->open_s};
        if (ops == &sc_bus_ops)
            snprintf(c.broker, sizeof c.broker, "%s", st->broker);
        if (c.rate <= 0)
            continue;
        s_one(o, st, &c, res, n, csv);
        s_sum_t sm;
        s_summarise(&res[*n - 1], o->scale, c.seconds, &sm);
        collapsed |= sm.err_pct > 5;
    }
}

const char *const sc_err_names[SC_E_N] = {"none", "503", "http", "timeout", "conn", "bus", "cut"};

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--scale-child"))
        return sc_scale_child(argc, argv);
    if (argc > 2 && !strcmp(argv[1], "--bare-router"))
        return sc_bare_router(argv[2]);
    s_opts_t o;
    int prc = s_parse(&o, argc, argv);
    if (prc)
        return prc > 0 ? 0 : 2;
    s_t0 = ab_now_us();
    struct rlimit rl = {200000, 200000};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) { /* root can; others keep their limit */
        getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, s_on_signal);
    signal(SIGTERM, s_on_signal);
    s_stack_t st;
    memset(&st, 0, sizeof st);
    ssize_t len = readlink("/proc/self/exe", st.bin, sizeof st.bin - 1);
    if (len <= 0)
        return 1;
    st.bin[len] = '\0';
    char self[PATH_MAX];
    snprintf(self, sizeof self, "%s", st.bin);
    *strrchr(st.bin, '/') = '\0';
    mkdir(o.out, 0755);
    snprintf(s_dir, sizeof s_dir, "/tmp/ab-scenario-XXXXXX");
    if (!mkdtemp(s_dir))
        return 1;
    atexit(s_cleanup);
    double load1 = 0;
    FILE *la = fopen("/proc/loadavg", "r");
    if (la && fscanf(la, "%lf", &load1) != 1)
        load1 = -1;
    if (la)
        fclose(la);
    s_progress("seed %llu, time scale %g, load average %.2f; logs in %s", (unsigned long long)o.seed,
               o.scale, load1, s_dir);
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/scenario.csv", o.out);
    FILE *csv = fopen(path, "w");
    if (!csv)
        return 1;
    fprintf(csv, "%s\n", s_csv_hdr);
    sc_result_t res[40];
    int n = 0;
    uint64_t lost = 0;
    if (o.closed_s > 0 || !o.skip_open) {
        if (s_start_stack(&o, &st) != 0)
            return 1;
        s_progress("two simulated GPUs, broker and two Ollama workers up; run C (HTTP gateway): "
                   "not run, no gateway exists yet");
    }
    if (o.closed_s > 0) {
        sc_run_cfg_t a = {.ops = &sc_direct_ops, .label = "direct-new", .seconds = o.closed_s};
        s_one(&o, &st, &a, res, &n, csv);
        if (!o.skip_direct_ka) {
            sc_run_cfg_t k = {.ops = &sc_direct_ops, .label = "direct-keepalive", .keepalive = 1,
                              .seconds = o.closed_s};
            s_one(&o, &st, &k, res, &n, csv);
        }
        sc_run_cfg_t b = {.ops = &sc_bus_ops, .label = "bus", .seconds = o.closed_s};
        snprintf(b.broker, sizeof b.broker, "%s", st.broker);
        s_one(&o, &st, &b, res, &n, csv);
    }
    if (!o.skip_open) {
        s_ladder(&o, &st, &sc_direct_ops, "direct-new", res, &n, csv);
        s_ladder(&o, &st, &sc_bus_ops, "bus", res, &n, csv);
    }
    /* The workers again with a deeper credit (more than the GPU's slots, so
     * each model's slots fill as with direct calls): docs/bench.md. */
    if ((o.closed_s > 0 || !o.skip_open) && o.deep > 0 && s_nkids == 5) {
        bu_stop_pids(&s_kids[3], 2);
        s_nkids = 3;
        char label[32];
        snprintf(label, sizeof label, "bus-cap%d", o.deep);
        if (s_workers_ready(st.broker, 0) && s_start_workers(&st, o.deep) == 0) {
            s_progress("workers restarted with capacity %d", o.deep);
            if (o.closed_s > 0) {
                sc_run_cfg_t b = {.ops = &sc_bus_ops, .label = label, .seconds = o.closed_s};
                snprintf(b.broker, sizeof b.broker, "%s", st.broker);
                s_one(&o, &st, &b, res, &n, csv);
            }
            if (!o.skip_open)
                s_ladder(&o, &st, &sc_bus_ops, label, res, &n, csv);
        }
    }
    fclose(csv);
    if (n) {
        printf("\nSeed workload, %d agents, seed %llu, simulated times (wall x %g); latencies of "
               "completed calls in s, errors apart\n%s\n", o.agents, (unsigned long long)o.seed,
               o.scale, s_hdr);
        for (int i = 0; i < n; i++) {
            s_sum_t s;
            double secs = res[i].open_loop ? o.open_s : o.closed_s;
            s_summarise(&res[i], o.scale, secs, &s);
            s_row(stdout, &res[i], &s);
            lost += s.lost;
        }
        printf("run C (agents over the HTTP gateway, unchanged clients): not run, no gateway yet\n");
        s_targets(&o, res, n);
        printf("CSV: %s\n", path);
        s_plot(o.out, res, n);
    }
    for (int i = 0; i < n; i++)
        free(res[i].recs);
    bu_stop_pids(s_kids, s_nkids); /* the stack is not needed for the scale part */
    s_nkids = 0;
    if (!o.skip_scale && o.scale_agents > 0) {
        snprintf(path, sizeof path, "%s/scale.csv", o.out);
        FILE *scsv = fopen(path, "w");
        char broker[PATH_MAX + 32], worker[PATH_MAX + 32];
        snprintf(broker, sizeof broker, "%s/agentbus-broker", st.bin);
        snprintf(worker, sizeof worker, "%s/agentbus-worker", st.bin);
        sc_scale_cfg_t sc = {self, broker, worker, o.scale_agents, 250, 2000, 5.0};
        s_progress("scale: %d connected agents in %d processes", sc.agents,
                   (sc.agents + sc.per_proc - 1) / sc.per_proc);
        if (sc_scale(&sc, scsv) != 0)
            s_progress("scale part did not complete (see above)");
        if (scsv)
            fclose(scsv);
    }
    s_progress("done");
    return lost ? 1 : 0;
}
