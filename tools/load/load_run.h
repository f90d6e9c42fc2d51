/*
 * load_run.h - what agentbus-load and agentbus-infer-load share: their
 * command line loop, one connection per agent, the agent threads and the
 * summing of what each agent counted.
 *
 * Each program keeps an array of its own agent records, each starting with
 * an ld_stats_t (the counters every load counts); ld_run starts one thread
 * per record and joins them all. Counters are written by their agent's
 * thread only and read after ld_run returns.
 */
#ifndef LOAD_RUN_H
#define LOAD_RUN_H

#include "agentbus.h"
#include "tl_args.h"
#include "tl_hist.h"

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

/* Set by SIGINT or SIGTERM once ld_signals ran: agents stop sending. */
extern volatile sig_atomic_t ld_stop;
void ld_signals(void);

/* The counters every agent keeps (the first member of its record). */
typedef struct {
    uint64_t sent, ok, failed;
    int first_error;           /* status of the first failure, 0: none */
    char first_error_text[200]; /* its text, when the program keeps one */
    tl_hist_t lat;             /* microseconds, per completed request */
} ld_stats_t;

/* Adds SRC into DST: sums, histogram merge, DST's first error kept. */
void ld_stats_add(ld_stats_t *dst, const ld_stats_t *src);

/* Starts FN on each of the N records of SIZE bytes at AGENTS (each begins
 * with an ld_stats_t, reset here), one thread each, waits for all, and
 * returns their sum in *TOTAL. A thread that cannot start counts as that
 * agent's first error (AB_ENOMEM). */
void ld_run(void *agents, size_t size, long n, void *(*fn)(void *), ld_stats_t *total);

/* A client named PREFIX-INDEX connected to BROKER (NULL: the default
 * endpoint). AB_OK, or the error of ab_client_new. */
int ld_connect(const char *broker, const char *prefix, int index, ab_client_t **c);

/* 0 once a client reaches BROKER (NULL: the default endpoint) within MS;
 * else says "PROG: no broker reachable at EP" on stderr and returns 1
 * (also when SIGINT/SIGTERM stop the wait). When no client can be made it
 * says why (the library's text: a $AB_KEY that cannot be used, say) and
 * returns 2 for a bad value (AB_EINVAL), else 1. The return is the exit
 * status. */
int ld_wait_broker(const char *broker, const char *prog, int ms);

/* The ids of the options both programs have, in their option tables. */
enum { LD_HELP = 1, LD_VERSION = 2, LD_BROKER = 3, LD_FIRST_OWN = 4 };

/* The command-line loop of both programs (tl_next): LD_HELP calls USAGE and
 * LD_VERSION prints PROG's version (both: return 1, exit 0); LD_BROKER
 * checks the endpoint into *BROKER; an unknown or bad argument is reported
 * as "PROG: ..." (return -1, exit 2). Every other option goes to TAKE(CFG,
 * id, value): 0 taken, -1 bad value (reported here). Returns 0 when every
 * argument was taken. */
int ld_parse(int argc, char **argv, const char *prog, const tl_opt_t *opts,
             void (*usage)(const char *argv0), const char **broker,
             int (*take)(void *cfg, int id, const char *v), void *cfg);

#endif
