/*
 * baseline_report.c - agentbus-bench --report baseline.
 *
 * Four hops run side by side for the whole run (forked forwarder + echo
 * each): ROUTER->ROUTER drained after each poll (the baseline),
 * ROUTER->ROUTER one message per poll, ROUTER->DEALER drained, and
 * zmq_proxy. The baseline hop is also driven with other windows and with
 * the two client habits the bench had before issue 17 (poll before each
 * drain; zmq_send copying the payload). All variants are measured
 * interleaved run by run, 64 B and 4 KiB; a target is missed when a
 * variant beats the baseline by more than 5% (the spread of repeated runs
 * on this machine), which would mean the baseline flatters agentbus.
 */
#include "baseline_report.h"
#include "bare_hop.h"
#include "bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

enum { HOP_N = BH_FWD_N, VAR_MAX = 14 };

typedef struct {
    char name[16];
    const char *what;
    int hop;    /* index into the hops (bh_fwd_t) */
    int window; /* requests in flight */
    int flags;  /* BH_POLL_FIRST, BH_COPY_SEND */
} s_var_t;

static const char *s_hop_text[HOP_N] = {
    "ROUTER->ROUTER, drain each side in bursts of 1000 after each poll",
    "ROUTER->ROUTER, drain each side in bursts of 64 after each poll",
    "ROUTER->ROUTER, drain one message from each side in turn",
    "ROUTER->ROUTER, one message per ready socket per poll",
    "ROUTER->DEALER, drain each side in bursts of 1000", "zmq_proxy(ROUTER, DEALER)"};

/* The variants: the baseline first, then one change each. */
static int s_variants(const bn_baseline_opts_t *o, s_var_t *v)
{
    int n = 0, windows[] = {64, 256, 1000, 2000, 4000};
    v[n++] = (s_var_t){"baseline", s_hop_text[BH_FWD_BASELINE], BH_FWD_BASELINE, o->window, 0};
    for (int i = 0; i < 5; i++)
        if (windows[i] != o->window) {
            v[n] = (s_var_t){"", "the baseline, other window", BH_FWD_BASELINE, windows[i], 0};
            snprintf(v[n].name, sizeof v[n].name, "w%d", windows[i]);
            n++;
        }
    v[n++] = (s_var_t){"burst-1000", s_hop_text[BH_FWD_BURST], BH_FWD_BURST, o->window, 0};
    v[n++] = (s_var_t){"alternate", s_hop_text[BH_FWD_ALTERN], BH_FWD_ALTERN, o->window, 0};
    v[n++] = (s_var_t){"one-per-poll", s_hop_text[BH_FWD_ONE], BH_FWD_ONE, o->window, 0};
    v[n++] = (s_var_t){"dealer-back", s_hop_text[BH_FWD_DEALER], BH_FWD_DEALER, o->window, 0};
    v[n++] = (s_var_t){"zmq_proxy", s_hop_text[BH_FWD_PROXY], BH_FWD_PROXY, o->window, 0};
    v[n++] = (s_var_t){"poll-first", "client polls before each drain (old bench client)",
                       BH_FWD_BASELINE, o->window, BH_POLL_FIRST};
    v[n++] = (s_var_t){"copy-send", "client zmq_send copies the payload", BH_FWD_BASELINE,
                       o->window, BH_COPY_SEND};
    return n;
}

static int s_hops_start(const bn_baseline_opts_t *o, void *ctx, void *sock[HOP_N])
{
    for (int h = 0; h < HOP_N; h++) {
        int front = o->free_port(), back = o->free_port();
        o->track(bh_start_forwarder_kind(front, back, (bh_fwd_t)h));
        o->track(bh_start_echo(back));
        if (!(sock[h] = bh_client(ctx, front))) {
            fprintf(stderr, "agentbus-bench: hop '%s' did not answer\n", s_hop_text[h]);
            return -1;
        }
    }
    return 0;
}

/* MED: each variant's median msgs/s; RATIO: the median over runs of the
 * baseline's msgs/s over the variant's in the same run (the two measured
 * seconds apart, so a burst of outside load hits both). */
static int s_measure(const bn_baseline_opts_t *o, void *sock[HOP_N], const s_var_t *v, int nv,
                     double med[][2], double ratio[][2])
{
    double q[16];
    static double r[VAR_MAX][2][16];
    const char *buf[2] = {o->payload_small, o->payload_large};
    size_t size[2] = {o->small, o->large};
    int runs = o->runs > 16 ? 16 : o->runs;
    for (int run = 0; run < runs; run++) {
        for (int s = 0; s < 2; s++)
            for (int i = 0; i < nv; i++) { /* interleaved: noise hits all alike */
                r[i][s][run] = bh_rr(sock[v[i].hop], buf[s], size[s], o->seconds, v[i].window,
                                     v[i].flags);
                if (r[i][s][run] < 0) {
                    fprintf(stderr, "agentbus-bench: variant '%s' lost replies\n", v[i].name);
                    return -1;
                }
            }
        bf_progress("baseline run %d/%d: %zuB baseline %.0f, best other %.0f msgs/s", run + 1,
                    runs, o->small, r[0][0][run], r[nv > 1][0][run]);
    }
    for (int i = 0; i < nv; i++)
        for (int s = 0; s < 2; s++) {
            for (int run = 0; run < runs; run++)
                q[run] = r[i][s][run] > 0 ? r[0][s][run] / r[i][s][run] : 0;
            ratio[i][s] = bu_median(q, runs);
            med[i][s] = bu_median(r[i][s], runs);
        }
    return 0;
}

/* Lone round trips on each hop kind (the window plays no part). */
static int s_latency(const bn_baseline_opts_t *o, void *sock[HOP_N], double p50[HOP_N],
                     double p99[HOP_N])
{
    tl_hist_t *h = calloc(HOP_N, sizeof *h);
    int n = o->latency_count / 10, rc = h ? 0 : -1;
    for (int slice = 0; slice < 10 && rc == 0; slice++)
        for (int k = 0; k < HOP_N && rc == 0; k++)
            rc = (slice == 0 ? bh_lat(sock[k], o->payload_small, o->small, n, NULL) : 0) |
                 bh_lat(sock[k], o->payload_small, o->small, n, &h[k]);
    for (int k = 0; k < HOP_N && rc == 0; k++) {
        p50[k] = tl_hist_percentile(&h[k], 50) / 1e3;
        p99[k] = tl_hist_percentile(&h[k], 99) / 1e3;
    }
    free(h);
    return rc;
}

static void s_figures(const bn_baseline_opts_t *o, const s_var_t *v, int nv, double med[][2],
                      double ratio[][2], const double *p50, const double *p99)
{
    char l1[32], l2[32];
    snprintf(l1, sizeof l1, "rr %zuB msgs/s", o->small);
    snprintf(l2, sizeof l2, "rr %zuB msgs/s", o->large);
    for (int i = 0; i < nv; i++) {
        bf_add("rr_small_msgs_s", l1, "msgs/s", v[i].name, med[i][0]);
        bf_add("rr_large_msgs_s", l2, "msgs/s", v[i].name, med[i][1]);
        bf_add("window", "window", "n", v[i].name, v[i].window);
        /* Lone latency belongs to the hop, not the window: one column per hop. */
        if (i == 0 || (v[i].hop != BH_FWD_BASELINE && !v[i].flags)) {
            bf_add("lone_p50_us", "lone p50 us", "us", v[i].name, p50[v[i].hop]);
            bf_add("lone_p99_us", "lone p99 us", "us", v[i].name, p99[v[i].hop]);
        }
    }
    for (int i = 1; i < nv; i++) {
        bf_ratio("rr_small_msgs_s", "baseline", v[i].name, ratio[i][0], BF_AT_LEAST, 0.95);
        bf_ratio("rr_large_msgs_s", "baseline", v[i].name, ratio[i][1], BF_AT_LEAST, 0.95);
    }
}

int bn_baseline_report(const bn_baseline_opts_t *o)
{
    s_var_t v[VAR_MAX];
    int nv = s_variants(o, v);
    char title[1024];
    int k = snprintf(title, sizeof title,
                     "agentbus-bench --report baseline: bare ZeroMQ hop variants, medians of "
                     "interleaved runs;\nratios are medians of the per-run ratios; tcp "
                     "loopback, same run\n");
    for (int i = 0; i < nv && k < (int)sizeof title - 100; i++)
        k += snprintf(title + k, sizeof title - (size_t)k, "  %-13s %s, window %d\n", v[i].name,
                      v[i].what, v[i].window);
    bf_begin("baseline", title, o->judge);
    bf_param("runs", o->runs);
    bf_param("seconds", o->seconds);
    bf_param("window", o->window);
    void *ctx = zmq_ctx_new(), *sock[HOP_N] = {0};
    double med[VAR_MAX][2], ratio[VAR_MAX][2], p50[HOP_N] = {0}, p99[HOP_N] = {0};
    int rc = s_hops_start(o, ctx, sock);
    if (rc == 0)
        rc = s_measure(o, sock, v, nv, med, ratio);
    if (rc == 0 && (rc = s_latency(o, sock, p50, p99)) != 0)
        fprintf(stderr, "agentbus-bench: a lone round trip was lost\n");
    if (rc == 0) {
        s_figures(o, v, nv, med, ratio, p50, p99);
        rc = bf_print(o->format);
    }
    for (int h = 0; h < HOP_N; h++)
        if (sock[h])
            zmq_close(sock[h]);
    zmq_ctx_term(ctx);
    return rc;
}
