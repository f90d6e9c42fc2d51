/*
 * cli.h - brokerctl's command line: the commands, the options each takes,
 * their usage texts, and the parse of argv into ctl_args_t. No I/O but the
 * usage and error texts; no broker.
 *
 * Options may come anywhere (before or after the command), as `--opt V`
 * or `--opt=V`; `--` ends them (tools/lib/tl_args.h). An option a command
 * does not take is a usage error naming the command.
 */
#ifndef CTL_CLI_H
#define CTL_CLI_H

#include "keycmd.h"

#include <stdint.h>
#include <stdio.h>

#define CTL_MAXPOS 17 /* embed MODEL + up to 16 texts */

typedef struct {
    const char *service, *system; /* inference: --service, --system */
    int no_stream, has_temp, has_seed, has_predict, has_service;
    double temperature;
    long seed, num_predict;
    uint32_t priority; /* --priority */
} ctl_infer_flags_t;

typedef struct {
    const char *cmd;               /* the command word, NULL if none */
    const char *pos[CTL_MAXPOS];   /* its arguments */
    int npos;
    const char *broker;            /* --broker, NULL: $AB_BROKER or default */
    int json;
    long timeout_ms;               /* --timeout-ms, else 5000 */
    int timeout_set;
    long watch, events, count;     /* --watch S, --events N, --count N */
    int takeover;
    uint32_t cache_flags, cache_ttl; /* request: --cache[=TTL_S], --no-cache, --no-store */
    const char *tier;              /* cache clear --tier */
    ctl_infer_flags_t infer;
    uint32_t priority;             /* --priority (ab_priority_parse); 0 default */
    int help, version;             /* --help / -h, --version */
    const char *key, *broker_key;  /* --key FILE, --broker-key KEY (else $AB_KEY...) */
    ctl_keygen_opts_t kg;          /* keygen: --role, --services, --names, ... */
    char usage_error[512];         /* after ctl_cli_parse's -1: the message ("" none) */
} ctl_args_t;

/* Parses ARGV into A. 0: run A; 1: A->help or A->version is set (print and
 * exit 0); -1: a usage error, its message already on ERR and in
 * A->usage_error (the caller exits 2). */
int ctl_cli_parse(ctl_args_t *a, int argc, char **argv, FILE *err);
/* The whole usage (CMD NULL) or that of command CMD (options it takes and
 * the global ones). */
void ctl_cli_usage(FILE *out, const char *cmd);
/* 1 if the command prints a stream (one JSON object per line with --json):
 * watch, listen, sub, generate, chat, and a table repeated by --watch. */
int ctl_cli_is_stream(const ctl_args_t *a);

#endif
