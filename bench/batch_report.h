/*
 * batch_report.h - agentbus-bench --report batching: batching and lz4 on
 * versus off, measured side by side in one run (issue 4).
 */
#ifndef BN_BATCH_REPORT_H
#define BN_BATCH_REPORT_H

#include "figures.h"

#include <stddef.h>
#include <sys/types.h>

typedef enum { BN_CORPUS_ZEROS, BN_CORPUS_TEXT, BN_CORPUS_JSON, BN_CORPUS_RANDOM } bn_corpus_t;

/* Parses "zeros", "text", "json", "random"; -1 if none. */
int bn_corpus_parse(const char *name);
const char *bn_corpus_name(int corpus);
/* Fills BUF with SIZE bytes of CORPUS: text is prose-like LLM prompt/reply
 * text, json a stream of chat-message objects, random incompressible
 * bytes. Deterministic for a given SEED. */
void bn_corpus_fill(int corpus, char *buf, size_t size, unsigned long long seed);

typedef struct {
    double seconds;
    int runs, window, latency_count;
    bf_format_t format;
    int judge; /* --targets on|off */
    int corpus;
    const char *broker_bin, *worker_bin;
    /* From bench.c: start a child process with extra environment (tracked
     * and stopped with the others), and a free loopback port. */
    pid_t (*spawn)(const char *const *argv, const char *const *env);
    int (*free_port)(void);
} bn_batch_report_opts_t;

/* Runs the report and prints it (table, JSON or CSV). -1 on a failed
 * measurement, else the number of missed targets (64 B msgs/s on vs off
 * >= 3x; lone round trip p50 and p99 on vs off within +-10%). */
int bn_batch_report(const bn_batch_report_opts_t *o);

#endif
