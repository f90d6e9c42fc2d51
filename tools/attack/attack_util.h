/*
 * attack_util.h - helpers shared by the agentbus-attack-* programs: a free
 * broker child started and stopped by its PID, a process's VmRSS, raw
 * DEALERs and frames, and the broker's stats over CONTROL.
 *
 * The attacks speak the wire protocol themselves (malformed, flooding or
 * half-finished peers that libagentbus would never be): they build headers
 * with the generated agentbus.pb-c.h, the public companion of agentbus.h,
 * and send them with libzmq; nothing here uses the library's internals.
 * Everything stays on 127.0.0.1 and every wait is bounded.
 */
#ifndef AT_ATTACK_UTIL_H
#define AT_ATTACK_UTIL_H

#include "agentbus.pb-c.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

/* V as a whole number MIN..MAX for option OPT of PROG; else says so on
 * stderr and exits 2 (atol took "abc" and "" as 0, and "-1" as a count
 * that wrapped or never ended). */
long at_num(const char *prog, const char *opt, const char *v, long min, long max);

/* Seconds on the monotonic clock (for timing with sub-ms resolution). */
double at_now_s(void);

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

/* The wire names, shortened: AT_KIND(REQUEST), AT_FLAG(LZ4), AT_ERR(BUSY). */
#define AT_KIND(k) AGENTBUS__KIND__KIND_##k
#define AT_FLAG(f) AGENTBUS__FLAG__FLAG_##f
#define AT_ERR(e) AGENTBUS__ERROR_CODE__ERR_##e
/* Feature bit "reads lz4 payloads" (Hello.features; proto/agentbus.proto). */
#define AT_FEATURE_LZ4 2u

/* A header to send: KIND, protocol version 1, every other field empty.
 * String fields point at the caller's strings (cast away const); nothing
 * is allocated. */
Agentbus__Header at_header(Agentbus__Kind kind);

/* The fields of a received header the attacks look at. */
typedef struct {
    uint32_t kind;
    uint64_t id, correlation_id;
    uint32_t flags;
    uint32_t error_code;
} at_reply_t;

/* Decodes the header frame BUF/LEN into *OUT: 0, or -1 if it does not
 * decode as an agentbus.Header. */
int at_parse(const void *buf, size_t len, at_reply_t *out);

/* Short name of wire error CODE ("BUSY"), or "?" for an unknown one. */
const char *at_err_name(uint32_t code);

/* Sends H as one frame and, when DATA is not NULL, DATA/SIZE as a second.
 * 0, or -1 if the header does not encode or a send fails. */
int at_send(void *s, const Agentbus__Header *h, const void *data, size_t size);

/* Sends CONTROL "stats" with ID on S and waits up to TIMEOUT_MS for the
 * REPLY to it (other messages are read and skipped). The decoded Stats
 * (free with agentbus__stats__free_unpacked), or NULL. */
Agentbus__Stats *at_stats(void *s, uint64_t id, int timeout_ms);

/* Writes to OUT (SIZE bytes) the path of NAME in the directory of ARGV0. */
void at_sibling(char *out, size_t size, const char *argv0, const char *name);

/* --help or -h before a "--": USAGE(stdout, argv[0]); --version: "PROG
 * VERSION" on stdout (tl_info_answer). 1 when either was done (exit 0), else
 * 0. */
int at_info_asked(int argc, char **argv, const char *prog,
                  void (*usage)(FILE *f, const char *argv0));

#endif
