/* harness.c - see harness.h. */
#include "harness.h"
#include "test.h"
#include "tl_port.h"

#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#ifndef AB_BIN_DIR
#error "AB_BIN_DIR must name the directory of the built programs"
#endif

#define TH_MAX_PROCS 32

typedef struct {
    pid_t pid;
    char log[600];
    int reaped;
} s_proc_t;

/* LeakSanitizer (the ASan build) checks each test program's exit, but not
 * libzmq's own C++ objects (operator new). libzmq 4.3.4 loses a frame that
 * is half way into a socket when the socket closes (pipe_t::process_pipe_term
 * drops the pipe without its rollback; tests/fuzz/clientfuzz.c says more),
 * and with it the connection metadata the frame points to: two map nodes
 * and a metadata_t, 440 bytes, in about one run in fifteen of a test that
 * closes its client while a stream still arrives (client_bounds_sync_stream).
 * This project's code is C: nothing of it comes from operator new, and
 * every malloc, message buffers included, is still checked. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:operator new\n";
}

static s_proc_t s_procs[TH_MAX_PROCS];
static int s_nprocs;
static char s_dir[256];
static const char *s_test = "test";

void th_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static s_proc_t *s_find(pid_t pid)
{
    for (int i = 0; i < s_nprocs; i++)
        if (s_procs[i].pid == pid)
            return &s_procs[i];
    return NULL;
}

static void s_tail(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char line[512];
    static char ring[40][512];
    int n = 0;
    while (fgets(line, sizeof line, f))
        snprintf(ring[n++ % 40], sizeof ring[0], "%s", line);
    fclose(f);
    int start = n > 40 ? n - 40 : 0;
    for (int i = start; i < n; i++)
        fprintf(stderr, "    | %s", ring[i % 40]);
}

/* Whether the log at PATH has a sanitizer report: ASan's and LSan's
 * "==PID==ERROR: ...Sanitizer", UBSan's "FILE:LINE:COL: runtime error:"
 * (tools/lib/sanitizer.py reads the same for the other harnesses). */
static int s_sanitizer_report(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[1024];
    int found = 0;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, "ERROR: AddressSanitizer") || strstr(line, "ERROR: LeakSanitizer") ||
                strstr(line, ": runtime error: ");
    fclose(f);
    return found;
}

void th_finish(void)
{
    for (int i = 0; i < s_nprocs; i++) {
        if (s_procs[i].reaped)
            continue;
        int st = th_stop(s_procs[i].pid);
        if (st != 0)
            fprintf(stderr, "process %d (%s) exited with status %d\n", (int)s_procs[i].pid,
                    s_procs[i].log, st);
        CHECK_EQ(st, 0);
    }
    /* Those the case stopped or killed itself, or that ended on their own,
     * too: a case rarely checks how each one ended. */
    for (int i = 0; i < s_nprocs; i++) {
        int report = s_sanitizer_report(s_procs[i].log);
        if (report)
            fprintf(stderr, "process %d (%s): a sanitizer report in its log\n",
                    (int)s_procs[i].pid, s_procs[i].log);
        CHECK_EQ(report, 0);
    }
}

static int s_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* At exit: every process the case started is stopped; a failed case
 * prints their logs' tails and keeps its directory (logs, keys, LMDB
 * files) for the developer, a passed one removes it: a suite run left
 * some 350 of them in /tmp. */
static void s_cleanup(void)
{
    for (int i = 0; i < s_nprocs; i++)
        if (!s_procs[i].reaped)
            th_stop(s_procs[i].pid);
    if (t_failed) {
        for (int i = 0; i < s_nprocs; i++) {
            fprintf(stderr, "--- log of pid %d (%s):\n", (int)s_procs[i].pid, s_procs[i].log);
            s_tail(s_procs[i].log);
        }
        fprintf(stderr, "kept %s\n", s_dir);
    } else if (s_dir[0]) {
        nftw(s_dir, s_rm_one, 16, FTW_DEPTH | FTW_PHYS);
    }
}

/* Writes a certificate in czmq's zcert format (what brokerctl keygen
 * writes; the broker reads it with zcert_load). SEC NULL: the public one. */
static void s_write_cert(const char *path, const char *role, const char *pub, const char *sec)
{
    FILE *f = fopen(path, "w");
    REQUIRE(f != NULL);
    fprintf(f, "metadata\n    name = \"test\"\n    role = \"%s\"\ncurve\n"
               "    public-key = \"%s\"\n", role, pub);
    if (sec)
        fprintf(f, "    secret-key = \"%s\"\n", sec);
    fclose(f);
    if (sec)
        chmod(path, 0600);
}

/* AB_TEST_AUTH=curve: every broker this test starts runs --auth curve (by
 * its AB_* environment) and every client and program it starts proves an
 * admin key (AB_KEY, AB_BROKER_KEY): the suite run again with auth on. */
static void s_auth_setup(void)
{
    const char *mode = getenv("AB_TEST_AUTH");
    if (!mode || strcmp(mode, "curve") != 0)
        return;
    char dir[512], keys[600], path[700], bpub[41], bsec[41], pub[41], sec[41];
    snprintf(dir, sizeof dir, "%s/auth", s_dir);
    snprintf(keys, sizeof keys, "%s/keys", dir);
    REQUIRE(mkdir(dir, 0700) == 0 && mkdir(keys, 0700) == 0);
    REQUIRE(ab_curve_keypair(bpub, bsec) == AB_OK && ab_curve_keypair(pub, sec) == AB_OK);
    snprintf(path, sizeof path, "%s/broker.key_secret", dir);
    s_write_cert(path, "peer", bpub, bsec);
    snprintf(path, sizeof path, "%s/broker.key", dir);
    s_write_cert(path, "peer", bpub, NULL);
    setenv("AB_BROKER_CERT", path, 1);
    snprintf(path, sizeof path, "%s/test.key", keys);
    s_write_cert(path, "admin", pub, NULL);
    snprintf(path, sizeof path, "%s/test.key_secret", dir);
    s_write_cert(path, "admin", pub, sec);
    setenv("AB_KEY", path, 1);
    setenv("AB_BROKER_KEY", bpub, 1);
    setenv("AB_KEYS_DIR", keys, 1);
    setenv("AB_AUTH", "curve", 1);
}

/* The watchdog (th_main's TIMEOUT_S): a case still running 10 s before
 * ctest's TIMEOUT would be killed without a word of where it hung. This
 * prints its stack (the main thread's, where the case runs), kills what it
 * started, prints their logs and fails. Past async-signal safety, knowingly:
 * the process is stuck and about to end. */
static void s_on_watchdog(int sig)
{
    (void)sig;
    static const char msg[] = "\nwatchdog: the case is still running 10 s before its ctest "
                              "TIMEOUT; where it is:\n";
    (void)!write(2, msg, sizeof msg - 1);
    void *frames[64];
    backtrace_symbols_fd(frames, backtrace(frames, 64), 2);
    for (int i = 0; i < s_nprocs; i++)
        if (!s_procs[i].reaped)
            kill(s_procs[i].pid, SIGKILL);
    fflush(stdout);
    for (int i = 0; i < s_nprocs; i++) {
        fprintf(stderr, "--- log of pid %d (%s):\n", (int)s_procs[i].pid, s_procs[i].log);
        s_tail(s_procs[i].log);
    }
    _exit(1);
}

void th_init(const char *test_name)
{
    s_test = test_name;
    snprintf(s_dir, sizeof s_dir, "/tmp/agentbus-test-%s-XXXXXX", test_name);
    REQUIRE(mkdtemp(s_dir) != NULL);
    signal(SIGPIPE, SIG_IGN);
    atexit(s_cleanup);
    s_auth_setup();
}

/* The quoted Z85 value after WHICH in certificate file PATH into OUT. */
void th_cert_value(const char *path, const char *which, char out[41])
{
    FILE *f = fopen(path, "r");
    REQUIRE(f != NULL);
    char line[256];
    out[0] = '\0';
    while (fgets(line, sizeof line, f)) {
        char *p = strstr(line, which);
        if (p && (p = strchr(p, '"')) && strlen(p) > 41) {
            memcpy(out, p + 1, 40);
            out[40] = '\0';
        }
    }
    fclose(f);
    REQUIRE(strlen(out) == 40);
}

void th_secure(void *sock)
{
    if (!th_auth_on())
        return;
    char pub[41], sec[41];
    th_cert_value(getenv("AB_KEY"), "public-key", pub);
    th_cert_value(getenv("AB_KEY"), "secret-key", sec);
    zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, getenv("AB_BROKER_KEY"), 41);
    zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, pub, 41);
    zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, sec, 41);
}

int th_auth_on(void)
{
    const char *mode = getenv("AB_TEST_AUTH");
    return mode && strcmp(mode, "curve") == 0;
}

const char *th_dir(void)
{
    return s_dir;
}

/* tl_free_port's pick (tools/lib/tl_port.h: below the kernel's ephemeral
 * range, never one of the last 256 given), or the test fails. */
int th_free_port(void)
{
    int port = tl_free_port();
    REQUIRE(port > 0);
    return port;
}

const char *th_ep(int port)
{
    /* per thread: worker and client threads of a test call it too */
    static _Thread_local char buf[4][64];
    static _Thread_local int slot;
    char *b = buf[slot++ % 4];
    snprintf(b, sizeof buf[0], "tcp://127.0.0.1:%d", port);
    return b;
}

const char *th_bin(const char *bin)
{
    static char path[4][512];
    static int slot;
    char *p = path[slot++ % 4];
    snprintf(p, sizeof path[0], "%s/%s", AB_BIN_DIR, bin);
    return p;
}

pid_t th_spawn(const char *bin, const char *const *argv, const char *const *env)
{
    REQUIRE(s_nprocs < TH_MAX_PROCS);
    s_proc_t *p = &s_procs[s_nprocs];
    snprintf(p->log, sizeof p->log, "%s/%s-%d.log", s_dir, bin, s_nprocs);
    const char *args[64];
    int n = 0;
    args[n++] = th_bin(bin);
    for (int i = 0; argv && argv[i] && n < 63; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    pid_t parent = getpid();
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int fd = open(p->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        for (int i = 0; env && env[i]; i++)
            putenv((char *)env[i]);
        execv(args[0], (char *const *)args);
        fprintf(stderr, "exec %s: %s\n", args[0], strerror(errno));
        _exit(127);
    }
    p->pid = pid;
    s_nprocs++;
    return pid;
}

int th_wait_exit(pid_t pid, int timeout_ms)
{
    s_proc_t *p = s_find(pid);
    for (int waited = 0; waited <= timeout_ms; waited += 10) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            if (p)
                p->reaped = 1;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        if (r < 0)
            return -1;
        th_sleep_ms(10);
    }
    return -1;
}

int th_stop(pid_t pid)
{
    s_proc_t *p = s_find(pid);
    if (p && p->reaped)
        return -1;
    kill(pid, SIGTERM);
    int st = th_wait_exit(pid, 5000);
    if (st < 0) {
        kill(pid, SIGKILL);
        st = th_wait_exit(pid, 5000);
    }
    return st;
}

void th_kill9(pid_t pid)
{
    kill(pid, SIGKILL);
    th_wait_exit(pid, 5000);
}

int th_alive(pid_t pid)
{
    s_proc_t *p = s_find(pid);
    if (p && p->reaped)
        return 0;
    return waitpid(pid, NULL, WNOHANG) == 0;
}

long th_status_kb(pid_t pid, const char *what)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, what, strlen(what)) == 0 && line[strlen(what)] == ':')
            kb = atol(line + strlen(what) + 1);
    if (f)
        fclose(f);
    return kb;
}

long th_rss_kb(pid_t pid)
{
    return th_status_kb(pid, "VmRSS");
}

const char *th_log_of(pid_t pid)
{
    s_proc_t *p = s_find(pid);
    return p ? p->log : "";
}

ab_client_t *th_client(int port)
{
    ab_options_t *o = ab_options_new();
    REQUIRE(o && ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
    ab_client_t *c = NULL;
    int rc = ab_client_new(&c, o);
    ab_options_destroy(&o);
    REQUIRE(rc == AB_OK);
    return c;
}

void th_answer_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    th_answer_t *a = arg;
    a->events++;
    if (!ev->final)
        return;
    a->finals++;
    a->status = ev->status;
    snprintf(a->data, sizeof a->data, "%.*s", (int)(ev->size < 63 ? ev->size : 63),
             ev->data ? (const char *)ev->data : "");
}

static pid_t s_broker_v(int port, const char *const *env, va_list ap)
{
    const char *args[48];
    int n = 0;
    args[n++] = "--bind";
    args[n++] = th_ep(port);
    args[n++] = "--log-level";
    args[n++] = "debug";
    /* The broker recounts its bookkeeping every 100 ms (audit.h): a
     * difference exits it with status 3, which th_finish fails. */
    args[n++] = "--self-check-ms";
    args[n++] = "100";
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < 47)
        args[n++] = a;
    args[n] = NULL;
    pid_t pid = th_spawn("agentbus-broker", args, env);
    ab_client_t *c = th_client(port);
    int up = 0;
    for (int i = 0; i < 100 && !up && th_alive(pid); i++) {
        void *buf = NULL;
        size_t len;
        up = ab_client_control(c, "stats", 100, &buf, &len) == AB_OK;
        ab_free(buf);
    }
    ab_client_destroy(&c);
    if (!up)
        fprintf(stderr, "broker on port %d did not come up\n", port);
    REQUIRE(up);
    return pid;
}

pid_t th_broker(int port, ...)
{
    va_list ap;
    va_start(ap, port);
    pid_t pid = s_broker_v(port, NULL, ap);
    va_end(ap);
    return pid;
}

pid_t th_broker_va(int port, va_list ap)
{
    return s_broker_v(port, NULL, ap);
}

pid_t th_broker_env(int port, const char *const *env, ...)
{
    va_list ap;
    va_start(ap, env);
    pid_t pid = s_broker_v(port, env, ap);
    va_end(ap);
    return pid;
}

pid_t th_worker(int port, const char *service, ...)
{
    const char *args[48];
    int n = 0;
    args[n++] = "--broker";
    args[n++] = th_ep(port);
    args[n++] = "--backend";
    args[n++] = "echo";
    args[n++] = "--service";
    args[n++] = service;
    va_list ap;
    va_start(ap, service);
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < 47)
        args[n++] = a;
    va_end(ap);
    args[n] = NULL;
    return th_spawn("agentbus-worker", args, NULL);
}

Agentbus__Stats *th_stats(ab_client_t *c)
{
    void *buf = NULL;
    size_t len = 0;
    if (ab_client_control(c, "stats", 3000, &buf, &len) != AB_OK)
        return NULL;
    Agentbus__Stats *st = agentbus__stats__unpack(NULL, len, buf);
    ab_free(buf);
    return st;
}

Agentbus__WorkerList *th_workers(ab_client_t *c)
{
    void *buf = NULL;
    size_t len = 0;
    if (ab_client_control(c, "workers", 3000, &buf, &len) != AB_OK)
        return NULL;
    Agentbus__WorkerList *wl = agentbus__worker_list__unpack(NULL, len, buf);
    ab_free(buf);
    return wl;
}

unsigned long long th_stat_error(const Agentbus__Stats *st, const char *code)
{
    for (size_t i = 0; st && i < st->n_errors; i++)
        if (strcmp(st->errors[i]->code, code) == 0)
            return st->errors[i]->count;
    return 0;
}

unsigned th_workers_of(ab_client_t *c, const char *service)
{
    Agentbus__WorkerList *wl = th_workers(c);
    unsigned have = 0;
    for (size_t i = 0; wl && i < wl->n_workers; i++)
        have += strcmp(wl->workers[i]->service, service) == 0;
    if (wl)
        agentbus__worker_list__free_unpacked(wl, NULL);
    return have;
}

int th_wait_workers(ab_client_t *c, const char *service, unsigned n, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 50) {
        if (th_workers_of(c, service) >= n)
            return 0;
        th_sleep_ms(50);
    }
    fprintf(stderr, "timed out waiting for %u workers of '%s'\n", n, service);
    return -1;
}

int th_run(const char *cmdline, char *out, size_t cap)
{
    char full[4096];
    snprintf(full, sizeof full, "( %s ) 2>&1", cmdline);
    FILE *p = popen(full, "r");
    if (!p)
        return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int th_main(int argc, char **argv, const th_case_t *cases, size_t ncases)
{
    const char *prog = argc > 0 ? strrchr(argv[0], '/') : NULL;
    prog = prog ? prog + 1 : argc > 0 ? argv[0] : "test";
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: %s CASE [TIMEOUT_S]\n", prog);
        return 2;
    }
    long limit = argc == 3 ? atol(argv[2]) : 0;
    for (size_t i = 0; i < ncases; i++) {
        if (strcmp(argv[1], cases[i].name) == 0) {
            th_init(cases[i].name);
            if (limit > 20) { /* the watchdog, 10 s before ctest's TIMEOUT */
                signal(SIGALRM, s_on_watchdog);
                alarm((unsigned)(limit - 10));
            }
            cases[i].fn();
            th_finish();
            return TEST_DONE(argv[1]);
        }
    }
    fprintf(stderr, "%s: unknown case '%s'\n", prog, argv[1]);
    return 2;
}
