/* msgcmd.h - brokerctl's messaging commands: send, listen, pub, sub, agents. */
#ifndef CTL_MSGCMD_H
#define CTL_MSGCMD_H

#include "agentbus.h"
#include "agentbus.pb-c.h"

#include <signal.h>
#include <stdio.h>

typedef struct {
    int json;
    int timeout_ms;
    long count;                  /* listen/sub: exit after this many (0: run on) */
    volatile sig_atomic_t *stop; /* set by SIGINT/SIGTERM */
} ctl_msgcmd_opts_t;

/* Runs CMD with ARGS on client C. Exit status: 0, or 1 after an error
 * (reported on stderr, and as JSON on stdout with --json). */
int ctl_msgcmd_run(ab_client_t *c, const char *cmd, char **args, const ctl_msgcmd_opts_t *o);

/* Text and JSON views used by `stats` and `agents`. */
void ctl_render_msg_stats(FILE *out, const Agentbus__Stats *st);
void ctl_render_agents(FILE *out, const Agentbus__AgentList *al, int json);
/* A json_t* object {"direct": {...}, "pubsub": {...}} (void*: no jansson here). */
void *ctl_render_msg_stats_json(const Agentbus__Stats *st);

#endif
