/*
 * harness.h - integration test support: real processes on free loopback
 * ports, stopped by PID; real ZeroMQ; bounded waits.
 *
 * Every process a test starts is recorded; at exit (pass, fail or REQUIRE)
 * each is stopped by its PID (SIGTERM, then SIGKILL), and on failure the
 * tail of each one's log is printed. Children also die with the test
 * (PR_SET_PDEATHSIG) if ctest kills it on a timeout.
 */
#ifndef AB_HARNESS_H
#define AB_HARNESS_H

#include "agentbus.h"
#include "agentbus.pb-c.h"

#include <stdarg.h>
#include <sys/types.h>

/* Creates the test's temp dir and registers the cleanup. With
 * AB_TEST_AUTH=curve in the environment it also makes a broker keypair and
 * an admin key and sets AB_AUTH, AB_KEYS_DIR, AB_BROKER_CERT, AB_KEY and
 * AB_BROKER_KEY, so every broker, client and program the test starts uses
 * CURVE (the ctest entries auth_*). */
void th_init(const char *test_name);
/* 1 when the test runs with AB_TEST_AUTH=curve. */
int th_auth_on(void);
/* With AB_TEST_AUTH=curve, makes raw ZeroMQ socket SOCK (before its
 * connect) a CURVE client proving the test's admin key; else nothing. */
void th_secure(void *sock);
/* The quoted Z85 value after WHICH ("public-key", "secret-key") in the
 * certificate file PATH into OUT; fails the test when there is none. */
void th_cert_value(const char *path, const char *which, char out[41]);
const char *th_dir(void);

/* A TCP port on 127.0.0.1 that was free a moment ago: tl_free_port's
 * (tools/lib/tl_port.h), never one given before in the last 256; fails
 * the test when there is none. */
int th_free_port(void);
/* "tcp://127.0.0.1:PORT" in a static buffer per call slot (4 rotating, per
 * thread: valid for the calling thread's next three calls, and while it lives). */
const char *th_ep(int port);

/* Stops every process still running (SIGTERM) and checks that each exited
 * with status 0, and that no process the case started has a sanitizer
 * report in its log (one it stopped or killed itself too): a finding (leak,
 * overflow, UB) in a broker or worker fails the test. Call at the end of a
 * case. */
void th_finish(void);

/* Starts BIN (a program of the build, e.g. "agentbus-broker") with the
 * NULL-terminated ARGV (argv[0] excluded), extra environment ENV
 * ("K=V" strings, NULL-terminated, may be NULL). Output goes to a log file. */
pid_t th_spawn(const char *bin, const char *const *argv, const char *const *env);
/* Stops PID: SIGTERM, up to 5 s, then SIGKILL. Returns its exit status
 * (as from waitpid), or -1. */
int th_stop(pid_t pid);
/* SIGKILL and reap. */
void th_kill9(pid_t pid);
/* Waits up to timeout_ms for PID to exit; its exit code, or -1 if still running. */
int th_wait_exit(pid_t pid, int timeout_ms);
int th_alive(pid_t pid);
/* Resident memory of PID in KiB (VmRSS), or -1. */
long th_rss_kb(pid_t pid);
/* A figure of /proc/PID/status in KiB (VmHWM: peak resident memory,
 * VmPeak: peak address space), or -1. */
long th_status_kb(pid_t pid, const char *what);
/* The log file of PID (its stdout and stderr). */
const char *th_log_of(pid_t pid);

/* Starts a broker on PORT with extra flags (NULL-terminated list after
 * port), and waits until it answers a control query. */
pid_t th_broker(int port, ...);
pid_t th_broker_env(int port, const char *const *env, ...);
/* th_broker with its flags in AP, for a test's own variadic helper. */
pid_t th_broker_va(int port, va_list ap);
/* Starts an echo worker for SERVICE with extra flags (NULL-terminated). */
pid_t th_worker(int port, const char *service, ...);

/* A client of the broker on PORT; REQUIREs success. */
ab_client_t *th_client(int port);
/* What a call's reply callback saw (th_answer_cb, ARG a th_answer_t *):
 * events of any kind, final ones, and the final event's status and payload
 * (its first 63 bytes, as text). */
typedef struct {
    int events, finals, status;
    char data[64];
} th_answer_t;
void th_answer_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg);

/* The broker's answers; NULL on failure. Free with the matching
 * agentbus__*__free_unpacked(x, NULL). */
Agentbus__Stats *th_stats(ab_client_t *c);
Agentbus__WorkerList *th_workers(ab_client_t *c);
/* Count of errors with CODE in STATS (e.g. "BUSY", "rejected:FRAMES"). */
unsigned long long th_stat_error(const Agentbus__Stats *st, const char *code);
/* Waits (bounded) until SERVICE has N registered workers. 0 or -1. */
/* The workers of SERVICE the broker lists now. */
unsigned th_workers_of(ab_client_t *c, const char *service);
int th_wait_workers(ab_client_t *c, const char *service, unsigned n, int timeout_ms);

/* Runs a shell command line, capturing stdout+stderr into OUT (CAP bytes);
 * returns the exit status (0..255) or -1. */
int th_run(const char *cmdline, char *out, size_t cap);
/* Full path of a program of the build. */
const char *th_bin(const char *bin);

/* One test case of a program: test_X CASE runs the case named CASE. */
typedef struct {
    const char *name;
    void (*fn)(void);
} th_case_t;
/* The main() of a test program: runs the case named argv[1] between
 * th_init and th_finish and returns the exit status (2 on bad usage).
 * argv[2], if given, is the case's ctest TIMEOUT in seconds: 10 s before
 * it a watchdog prints the case's stack and its processes' logs, kills
 * them and fails (ctest would kill it without a word). */
int th_main(int argc, char **argv, const th_case_t *cases, size_t ncases);

/* Sleeps; ms. */
void th_sleep_ms(int ms);

#endif
