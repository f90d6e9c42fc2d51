/*
 * scenario_report.c - the figures of the seed workload's runs: summary of
 * one run, the table, the CSV, the gnuplot PNG and the targets read
 * off the same run (docs/bench.md, "Seed workload").
 */
#include "scenario.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* --- figures of a run ----------------------------------------------------------- */

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

void sc_summarise(const sc_result_t *r, double scale, sc_sum_t *s)
{
    memset(s, 0, sizeof *s);
    uint32_t *vi = malloc((r->nrecs + 1) * sizeof *vi), *vb = malloc((r->nrecs + 1) * sizeof *vb),
             *vt = malloc((r->nrecs + 1) * sizeof *vt), *va = malloc((r->nrecs + 1) * sizeof *va),
             *vf = malloc((r->nrecs + 1) * sizeof *vf),
             *vall = malloc((r->nrecs + 1) * sizeof *vall);
    size_t ni = 0, nb = 0, nt = 0, nall = 0, rep = 0, in_window = 0, in_second = 0;
    uint32_t half_ms = (uint32_t)(r->seconds_wall * 500);
    for (size_t i = 0; vi && vb && vt && va && vf && vall && i < r->nrecs; i++) {
        const sc_rec_t *x = &r->recs[i];
        rep += x->repeat;
        if (!x->ok) {
            s->errs++;
            s->err_by[x->err]++;
            continue;
        }
        s->ok++;
        in_window += !x->late;
        in_second += !x->late && x->done_ms >= half_ms;
        vall[nall++] = x->lat_us;
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
    qsort(vall, nall, sizeof *vall, s_cmp_u32);
    s->all95 = s_pct(vall, nall, 95, scale);
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
    s->done_per_s = r->sim_seconds > 0 ? in_window / r->sim_seconds : 0;
    s->done2_per_s = r->sim_seconds > 0 ? in_second / (r->sim_seconds / 2) : 0;
    s->repeat_pct = r->nrecs ? 100.0 * rep / r->nrecs : 0;
    s->err_pct = r->issued ? 100.0 * s->errs / r->issued : 0;
    s->lost = r->issued > r->nrecs ? r->issued - r->nrecs : 0;
    free(vi);
    free(vb);
    free(vt);
    free(va);
    free(vf);
    free(vall);
}

static const char *s_hdr =
    "run               loop   offered  done/s  rep%  all_p95  int_p50 int_p95 int_p99  "
    "bat_p50 bat_p95 bat_p99 add_p95  ttft50 ttft95  err%   lost  util%  utilQ%  L1hit  L2hit  "
    "L3hit  coalesced  hit%";

/* The latency columns: "-" where no call of that kind completed. */
static void s_lat(char out[10][16], const sc_sum_t *s)
{
    const double v[10] = {s->all95, s->ip[0], s->ip[1], s->ip[2], s->bp[0],
                          s->bp[1], s->bp[2], s->add95, s->tt[0], s->tt[1]};
    for (int k = 0; k < 10; k++)
        snprintf(out[k], 16, isnan(v[k]) ? "-" : "%.2f", v[k]);
}

static void s_row(FILE *f, const sc_result_t *r, const sc_sum_t *s)
{
    char off[16], hits[3][16], co[16], lat[10][16];
    snprintf(off, sizeof off, r->open_loop ? "%.0f" : "-", r->rate);
    for (int t = 0; t < 3; t++)
        snprintf(hits[t], sizeof hits[t], r->has_bus ? "%llu" : "-",
                 (unsigned long long)r->hits[t]);
    snprintf(co, sizeof co, r->has_bus ? "%llu" : "-", (unsigned long long)r->coalesced);
    char hp[16], uq[16];
    snprintf(hp, sizeof hp, r->has_bus ? "%.0f" : "-", s->hit_pct);
    snprintf(uq, sizeof uq, r->util_queued >= 0 ? "%.1f" : "-", r->util_queued);
    s_lat(lat, s);
    fprintf(f, "%-17s %-6s %7s %7.1f %5.0f  %7s  %7s %7s %7s  %7s %7s %7s %7s  "
               "%6s %6s %5.1f %6llu %6.1f %7s %6s %6s %6s %10s %5s\n",
            r->label, r->open_loop ? "open" : "closed", off, s->done_per_s, s->repeat_pct, lat[0],
            lat[1], lat[2], lat[3], lat[4], lat[5], lat[6], lat[7], lat[8], lat[9], s->err_pct,
            (unsigned long long)s->lost, r->util_all, uq, hits[0], hits[1], hits[2], co, hp);
}

void sc_csv_row(FILE *f, const sc_result_t *r, const sc_sum_t *s, double scale)
{
    fprintf(f, "%s,%s,%.1f,%.3f,%.1f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%llu,%llu,%llu,"
               "%.1f,%.1f,%.1f,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%g,%.3f,%.3f,"
               "%.1f,%.3f,%.3f\n",
            r->label, r->open_loop ? "open" : "closed", r->open_loop ? r->rate : 0,
            s->done_per_s, s->repeat_pct, s->ip[0], s->ip[1], s->ip[2], s->bp[0], s->bp[1],
            s->bp[2], s->tt[0], s->tt[1], s->err_pct, (unsigned long long)r->issued,
            (unsigned long long)s->ok, (unsigned long long)s->lost, r->util_all, r->util_queued,
            r->queued_secs, (unsigned long long)r->hits[0], (unsigned long long)r->hits[1],
            (unsigned long long)r->hits[2], (unsigned long long)r->coalesced,
            (unsigned long long)s->err_by[SC_E_HTTP503],
            (unsigned long long)s->err_by[SC_E_TIMEOUT],
            (unsigned long long)s->err_by[SC_E_CONN] + s->err_by[SC_E_HTTP],
            (unsigned long long)s->err_by[SC_E_BUS], (unsigned long long)s->err_by[SC_E_CUT],
            (unsigned long long)r->sim_503, scale, s->add95, s->floor95, s->hit_pct, s->all95,
            s->done2_per_s);
}

const char *const sc_csv_hdr =
    "run,loop,offered_rps,done_rps,repeat_pct,int_p50_s,int_p95_s,int_p99_s,batch_p50_s,"
    "batch_p95_s,batch_p99_s,ttft_p50_s,ttft_p95_s,err_pct,issued,ok,lost,util_pct,"
    "util_queued_pct,queued_s,l1_hits,l2_hits,l3_hits,coalesced,err_503,err_timeout,"
    "err_http_conn,err_bus,err_cut,sim_503,time_scale,batch_added_p95_s,batch_floor_p95_s,"
    "hit_or_coalesced_pct,all_p95_s,done_rps_second_half";

/* Plot data of a closed-loop run: the latency CDF and completions per
 * simulated 5 s, in OUT/LABEL.cdf and OUT/LABEL.rate. */
void sc_plot_data(const char *out, const sc_result_t *r, double scale)
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

/* One colour per system in every panel. */
static const char *s_color(const char *label)
{
    if (!strcmp(label, "direct-new"))
        return "#9400d3";
    if (!strcmp(label, "direct-keepalive"))
        return "#009e73";
    if (!strcmp(label, "bus"))
        return "#56b4e9";
    if (!strcmp(label, "gateway"))
        return "#d55e00";
    if (!strcmp(label, "direct-nothink"))
        return "#cc79a7";
    if (!strcmp(label, "bus-nothink"))
        return "#0072b2";
    return "#e69f00";
}

/* Closed-loop panels: latency CDFs, completions over time. */
static void s_plot_closed(FILE *f, const char *out, const sc_result_t *res, int n)
{
    static const char *const what[2][4] = {
        {"closed loop: latency CDF (completed calls)", "latency (s)", "fraction", "cdf"},
        {"closed loop: completed requests/s over time", "time (s)", "req/s (5 s bins)", "rate"}};
    for (int p = 0; p < 2; p++) {
        fprintf(f, "%s\nset key %s\nset title '%s'\nset xlabel '%s'\nset ylabel '%s'\nplot ",
                p ? "unset logscale x" : "set logscale x", p ? "top right" : "bottom right",
                what[p][0], what[p][1], what[p][2]);
        int first = 1;
        for (int i = 0; i < n; i++)
            if (!res[i].open_loop) {
                fprintf(f, "%s'%s/%s.%s' using 1:2 with %s lw 2 lc rgb '%s' title '%s'",
                        first ? "" : ", ", out, res[i].label, what[p][3],
                        p ? "linespoints" : "lines", s_color(res[i].label), res[i].label);
                first = 0;
            }
        fputc('\n', f);
    }
}

/* OUT/LABEL.open: offered, completed, p95 of all, interactive p95, one
 * line per open-loop run of LABEL (the CSV interleaves the systems). */
static void s_open_data(const char *out, const char *label, const sc_result_t *res, int n,
                        double scale)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s.open", out, label);
    FILE *f = fopen(path, "w");
    for (int i = 0; f && i < n; i++)
        if (res[i].open_loop && !strcmp(res[i].label, label)) {
            sc_sum_t s;
            sc_summarise(&res[i], scale, &s);
            fprintf(f, "%g %.3f %.3f %.3f\n", res[i].rate, s.done_per_s, s.all95, s.ip[1]);
        }
    if (f)
        fclose(f);
}

/* Open-loop panels: completed vs offered; p95 of all calls (solid) and of
 * the interactive ones (dashed) vs offered. */
static void s_plot_open(FILE *f, const char *out, const sc_result_t *res, int n, double scale)
{
    const char *labels[8];
    int nl = 0;
    for (int i = 0; i < n; i++) {
        int seen = 0;
        for (int j = 0; j < nl; j++)
            seen |= !strcmp(labels[j], res[i].label);
        if (res[i].open_loop && !seen && nl < 8)
            labels[nl++] = res[i].label;
    }
    for (int j = 0; j < nl; j++)
        s_open_data(out, labels[j], res, n, scale);
    fprintf(f, "unset logscale\nset logscale xy\nset key top left\n"
               "set title 'open loop: completed vs offered'\nset xlabel 'offered req/s'\n"
               "set ylabel 'completed req/s'\n");
    for (int j = 0; j < nl; j++)
        fprintf(f, "%s'%s/%s.open' using 1:2 with linespoints lw 2 lc rgb '%s' title '%s'",
                j ? ", " : "plot ", out, labels[j], s_color(labels[j]), labels[j]);
    fprintf(f, ", x with lines dt 2 lc 'gray' title 'offered'\n"
               "set title 'open loop: p95 of all calls (solid), interactive (dashed); "
               "errors apart'\n"
               "set ylabel 'p95 (s)'\n");
    for (int j = 0; j < nl; j++)
        fprintf(f, "%s'%s/%s.open' using 1:3 with linespoints lw 2 lc rgb '%s' title '%s', "
                   "'%s/%s.open' using 1:4 with linespoints lw 1 dt 2 lc rgb '%s' notitle",
                j ? ", " : "plot ", out, labels[j], s_color(labels[j]), labels[j], out, labels[j],
                s_color(labels[j]));
    fprintf(f, ", 2 with lines dt 2 lc 'red' title '2 s', 1.5 with lines dt 3 lc 'red' "
               "title '1.5 s'\n");
}

int sc_plot(const char *out, const sc_result_t *res, int n, double scale)
{
    int open = 0, closed = 0;
    for (int i = 0; i < n; i++) {
        open |= res[i].open_loop;
        closed |= !res[i].open_loop;
    }
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/scenario.gp", out);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "set terminal pngcairo size 1400,%d font 'sans,10'\n"
               "set output '%s/scenario.png'\nset multiplot layout %d,2 title "
               "'agentbus seed workload: 174 agents, two simulated GPUs (times in simulated s)'\n"
               "set grid\n", open && closed ? 1000 : 500, out, open + closed);
    if (closed)
        s_plot_closed(f, out, res, n);
    if (open)
        s_plot_open(f, out, res, n, scale);
    fprintf(f, "unset multiplot\n");
    fclose(f);
    char cmd[3 * PATH_MAX];
    snprintf(cmd, sizeof cmd, "gnuplot '%.4000s' 2>'%.4000s/gnuplot.err'", path, out);
    return system(cmd) == 0 ? 0 : -1;
}

/* Closed loop: a system on the bus (B or C) against direct (DLABEL). */
static void s_closed_target(const sc_result_t *r, const sc_sum_t *sm, const sc_sum_t *dn,
                            const char *dlabel)
{
    /* Without think time the first seconds are not the steady state (the
     * misses' queues still fill, the workers' adaptive credit is still
     * whole): that pair is compared over the second half of the window. */
    int steady = strstr(r->label, "-nothink") != NULL;
    double mine = steady ? sm->done2_per_s : sm->done_per_s;
    double theirs = steady ? dn->done2_per_s : dn->done_per_s;
    double f = sm->hit_pct / 100.0, want = f < 1 ? 0.95 * theirs / (1 - f) : 0;
    char uq[48];
    snprintf(uq, sizeof uq, r->util_queued >= 0 ? "%.1f%%" : "- (nothing waited)", r->util_queued);
    printf("  closed %s%s: %.1f req/s vs 0.95 x %s %.1f / (1 - %.2f hit-or-coalesced) = %.1f: "
           "%s (%.2fx direct); slots busy while work waits %s (target >= 95%%); errors "
           "%.2f%% (target < 0.1%%)\n", r->label, steady ? " (second half of the window)" : "",
           mine, dlabel, theirs, f, want, mine >= want ? "met" : "NOT met",
           theirs > 0 ? mine / theirs : 0, uq, sm->err_pct);
}

/* The 1 / (1 - hit) cap assumes a miss costs the GPUs what an average
 * direct call does. In a closed loop it need not: the agents whose calls
 * hit come back sooner, and what misses may be the heavier calls. This
 * says how much GPU time one generation took on each side (slot-busy time
 * over the simulators' completed generations), and what the cap is with
 * that difference taken out. A reading, not a target of its own. */
static void s_gpu_per_gen(const sc_result_t *r, const sc_sum_t *sm, const sc_result_t *d,
                          const sc_sum_t *dn, double scale)
{
    if (!r->sim_completed || !d->sim_completed || r->gpu_busy <= 0 || d->gpu_busy <= 0)
        return;
    double mine = r->gpu_busy / (double)r->sim_completed / 1e9 * scale;
    double theirs = d->gpu_busy / (double)d->sim_completed / 1e9 * scale;
    int steady = strstr(r->label, "-nothink") != NULL;
    double rate = steady ? dn->done2_per_s : dn->done_per_s;
    double f = sm->hit_pct / 100.0;
    double want = f < 1 && mine > 0 ? 0.95 * rate * (theirs / mine) / (1 - f) : 0;
    double got = steady ? sm->done2_per_s : sm->done_per_s;
    printf("    %s: GPU time per generation %.2f s against direct's %.2f s (%.2fx: what misses "
           "is %s); the cap with that taken out: 0.95 x %.1f x %.2f / (1 - %.2f) = %.1f req/s, "
           "%s (%.1f)\n", r->label, mine, theirs, mine / theirs,
           mine > theirs * 1.05 ? "heavier" : mine < theirs * 0.95 ? "lighter" : "alike", rate,
           theirs / mine, f, want, got >= want ? "met" : "not met", got);
    /* The same from the calls themselves: each call's own GPU time
     * (unloaded), over its first asks (which must reach a GPU) and over
     * all of its calls, against direct's over all. */
    double first = 0, all = 0, dall = 0;
    size_t nf = 0;
    for (size_t i = 0; i < r->nrecs; i++) {
        all += r->recs[i].ideal_us;
        if (!r->recs[i].repeat) {
            first += r->recs[i].ideal_us;
            nf++;
        }
    }
    for (size_t i = 0; i < d->nrecs; i++)
        dall += d->recs[i].ideal_us;
    if (nf && r->nrecs && d->nrecs)
        printf("    %s: own GPU time of a call, mean: first asks %.2f s, all its calls %.2f s; "
               "direct's calls %.2f s\n", r->label, first / (double)nf / 1e6 * scale,
               all / (double)r->nrecs / 1e6 * scale, dall / (double)d->nrecs / 1e6 * scale);
}

enum { S_READ_ERR, S_READ_P95, S_READ_INT, S_READ_ADD, S_READINGS };

/* The highest offered rate each open-loop system sustained, by four
 * readings: errors < 0.1% alone; and p95 of all calls < 2 s; and
 * interactive p95 < 1.5 s; and batch p95 added to the GPU's own time < 2 s. */
static void s_open_targets(const sc_result_t *res, const sc_sum_t *sum, int n)
{
    const char *labels[8];
    double best[8][S_READINGS] = {{0}};
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
        double r = res[i].rate;
        int ok = sum[i].err_pct < 0.1;
        const int pass[S_READINGS] = {ok, ok && sum[i].all95 < 2.0, ok && sum[i].ip[1] < 1.5,
                                      ok && sum[i].add95 < 2.0};
        for (int k = 0; k < S_READINGS; k++)
            if (pass[k] && r > best[l][k])
                best[l][k] = r;
        printf("  open %s %.0f req/s: p95 %.2f s (target < 2 s), interactive p95 %.2f s "
               "(target < 1.5 s), errors %.2f%% (target < 0.1%%)\n", res[i].label, r,
               sum[i].all95, sum[i].ip[1], sum[i].err_pct);
    }
    int d = -1;
    for (int l = 0; l < nl; l++)
        if (!strcmp(labels[l], "direct-new"))
            d = l;
    for (int l = 0; l < nl; l++) {
        printf("  open %s: highest offered rate sustained (0 = none) with errors < 0.1%%: %.0f "
               "req/s", labels[l], best[l][S_READ_ERR]);
        if (d >= 0 && l != d && best[d][S_READ_ERR] > 0)
            printf(" (%.1fx direct's; target >= 3x)", best[l][S_READ_ERR] / best[d][S_READ_ERR]);
        printf("; and p95 < 2 s: %.0f; and interactive p95 < 1.5 s: %.0f; and batch p95 added "
               "to the GPU time < 2 s: %.0f\n", best[l][S_READ_P95], best[l][S_READ_INT],
               best[l][S_READ_ADD]);
    }
}

/* The targets, read off the same run. */
void sc_targets(const sc_result_t *res, int n, double scale, int agents)
{
    sc_sum_t sum[40];
    int dn = -1, dz = -1;
    for (int i = 0; i < n && i < 40; i++) {
        sc_summarise(&res[i], scale, &sum[i]);
        if (!res[i].open_loop && !strcmp(res[i].label, "direct-new"))
            dn = i;
        if (!res[i].open_loop && !strcmp(res[i].label, "direct-nothink"))
            dz = i;
    }
    printf("\nTargets (issue 20), same run:\n");
    for (int i = 0; i < n && i < 40; i++) {
        int ref = strstr(res[i].label, "-nothink") ? dz : dn;
        if (!res[i].open_loop && res[i].has_bus && ref >= 0)
        {
            s_closed_target(&res[i], &sum[i], &sum[ref], res[ref].label);
            s_gpu_per_gen(&res[i], &sum[i], &res[ref], &sum[ref], scale);
        }
    }
    if (dn >= 0) {
        double ceiling = 0;
        for (int a = 0; a < agents; a++)
            ceiling += 1.0 / sc_classes[sc_agent_class(a)].think_s;
        printf("  closed: the agents' own ceiling (zero latency, think time only): %.1f req/s; "
               "direct: slots busy while work waits %.1f%%, errors %.2f%%; batch GPU time alone "
               "p95 %.2f s\n", ceiling, res[dn].util_queued < 0 ? 0 : res[dn].util_queued,
               sum[dn].err_pct, sum[dn].floor95);
    }
    uint64_t lost = 0;
    for (int i = 0; i < n; i++)
        lost += sum[i].lost;
    printf("  lost requests, all runs: %llu (target 0)\n", (unsigned long long)lost);
    s_open_targets(res, sum, n);
    printf("  priority: voice calls sent with priority %u (AB_PRIORITY_INTERACTIVE; "
           "X-Agentbus-Priority over HTTP), batch calls 0: the broker's interactive lane goes "
           "first\n", sc_prio_interactive);
}

void sc_table(FILE *f, const sc_result_t *res, int n, double scale)
{
    fprintf(f, "%s\n", s_hdr);
    for (int i = 0; i < n; i++) {
        sc_sum_t s;
        sc_summarise(&res[i], scale, &s);
        s_row(f, &res[i], &s);
    }
}
