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
 * them all, each through bu_reaped. Returns how many of them crashed. */
int bu_stop_pids(const pid_t *pids, int n);
/* Says on stderr ("child PID crashed: ...") when STATUS, PID's from
 * waitpid, is a crash: ended by a signal a fault or abort() raises (a
 * sanitizer report aborts the program under abort_on_error=1, as
 * scripts/test runs the ASan build), or LeakSanitizer's exit status 23.
 * The children's output goes to /dev/null, so without this a broker that
 * crashed under a bench went unseen; the smoke tests fail on that line
 * (tests/CMakeLists.txt). Returns 1 for a crash, else 0. */
int bu_reaped(pid_t pid, int status);

#endif
