/*
 * attack_util.h - helpers shared by the agentbus-attack-* programs: a free
 * loopback port, a broker child started and stopped by its PID, a process's
 * VmRSS, raw DEALERs and frames, and the broker's stats over CONTROL.
 * Everything stays on 127.0.0.1 and every wait is bounded.
 */
#ifndef AB_ATTACK_UTIL_H
#define AB_ATTACK_UTIL_H

#include "agentbus.pb-c.h"
#include "codec.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

/* Seconds on the monotonic clock (for timing with sub-ms resolution). */
double at_now_s(void);

/* A TCP port free on 127.0.0.1 at the time of the call, or -1. */
int at_free_port(void);

/* The resident memory (VmRSS, KiB) of process PID from /proc, or -1. */
long at_rss_kb(pid_t pid);

/* Forks and execs PATH with ARGV (NULL-terminated; argv[0] included); with
 * QUIET the child's stdout and stderr go to /dev/null. The child's PID, or
 * -1 if fork failed. */
pid_t at_spawn(const char *path, const char *const argv[], int quiet);

/* Stops child PID: SIGTERM, up to 5 s for it to exit, then SIGKILL; reaps
 * it. Does nothing for PID <= 0. */
void at_stop(pid_t pid);

/* Kills child PID at once (SIGKILL) and reaps it. Does nothing for PID <= 0. */
void at_kill(pid_t pid);

/* A DEALER on CTX connected to EP, linger 0 and unbounded send and receive
 * pipes (the attacks send in bursts); NULL (after a message on stderr) if
 * the connect fails. */
void *at_dealer(void *ctx, const char *ep);

/* Sends H as one frame and, when DATA is not NULL, DATA/SIZE as a second.
 * 0, or -1 if the header does not encode or a send fails. */
int at_send(void *s, const ab_header_t *h, const void *data, size_t size);

/* Sends CONTROL "stats" with ID on S and waits up to TIMEOUT_MS for the
 * REPLY to it (other messages are read and skipped). The decoded Stats
 * (free with agentbus__stats__free_unpacked), or NULL. */
Agentbus__Stats *at_stats(void *s, uint64_t id, int timeout_ms);

/* Writes to OUT (SIZE bytes) the path of NAME in the directory of ARGV0. */
void at_sibling(char *out, size_t size, const char *argv0, const char *name);

/* 1 if an argument before a "--" is --help or -h, else 0. */
int at_help_asked(int argc, char **argv);

#endif
