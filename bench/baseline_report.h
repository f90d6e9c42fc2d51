/*
 * baseline_report.h - agentbus-bench --report baseline: the bare hop that
 * agentbus is measured against, beside every variant of it tried (issue
 * 17), in one run, so that docs/bench.md can show the baseline is at least
 * as fast as any of them.
 */
#ifndef BN_BASELINE_REPORT_H
#define BN_BASELINE_REPORT_H

#include "figures.h"

#include <sys/types.h>

typedef struct {
    double seconds;
    int runs, window, latency_count, judge;
    bf_format_t format;
    const char *payload_small, *payload_large; /* the bench's payload bytes */
    size_t small, large;
    /* From bench.c: a free loopback port; a child pid to stop at exit. */
    int (*free_port)(void);
    void (*track)(pid_t pid);
} bn_baseline_opts_t;

/* Measures and prints. -1 on a failed measurement, else the number of
 * missed targets (the baseline slower than a variant by more than 5%). */
int bn_baseline_report(const bn_baseline_opts_t *o);

#endif
