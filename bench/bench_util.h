/*
 * bench_util.h - small helpers the benchmark programs share: free ports,
 * medians, stopping the processes a run started.
 */
#ifndef BN_BENCH_UTIL_H
#define BN_BENCH_UTIL_H

#include <sys/types.h>

/* Median of V[0..N-1] (N > 0); sorts V in place. */
double bu_median(double *v, int n);
/* SIGTERM to each of PIDS, up to 3 s for each to exit, then SIGKILL; reaps
 * them all. */
void bu_stop_pids(const pid_t *pids, int n);

#endif
