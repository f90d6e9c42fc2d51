/*
 * netfuzz_procs.c - the processes the network fuzzer starts and stops: the
 * broker (or with --linked / --line the brokers, each dialing its
 * neighbours over CURVE, with the keys made for them and the raw peers),
 * an echo worker beside each, their logs; the faults the far side has
 * (SIGSTOP, kill and restart); the clean exit each broker owes at the end.
 * netfuzz.c plays the moves against them and decides what is broken.
 */
#include "netfuzz.h"
#include "nf_lsan.h"
#include "tl_port.h"

#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef AB_BIN_DIR
#define AB_BIN_DIR "."
#endif

pid_t nf_broker_pid, nf_worker_pid;
char nf_ep[64], nf_logpath[256];
nf_broker_t nf_rb[2];
char nf_key_pub[4][41], nf_key_sec[4][41], nf_server_pub[41];
static char s_dir[64]; /* the run's directory: logs, keys */
static char s_server_sec[41]; /* the brokers' secret key: the dialed endpoint may use it */
static char s_fake_pub[41], s_fake_sec[41]; /* or nffake's, whose names are all it claims */
static const char *const s_key_names[] = {"nfagent", "nfworker", "nflink", "nfadmin"};
/* --linked: the far side's faults, from a PRNG of their own (seeded from
 * the run's seed), so that they do not change which moves a seed plays. */
static struct {
    uint64_t rng;
    int64_t next_ms, cont_ms;
    nf_broker_t *stopped; /* the broker stopped now (SIGSTOP) */
} s_fault;

/* Starts ARGV[0] with its output appended to LOG; dies with us. */
static pid_t s_spawn_to(char *const *argv, const char *log)
{
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static pid_t s_spawn(char *const *argv)
{
    return s_spawn_to(argv, nf_logpath);
}

/* Runs ARGV[0] to its end (output to the log): its exit status, or -1. */
static int s_run(char *const *argv)
{
    pid_t pid = s_spawn(argv);
    int st = 0;
    if (pid <= 0 || waitpid(pid, &st, 0) != pid)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

void nf_stop(pid_t *pid)
{
    if (*pid <= 0)
        return;
    kill(*pid, SIGCONT); /* a far broker may be stopped (nf_fault_step) */
    kill(*pid, SIGTERM);
    for (int i = 0; i < 100; i++) {
        if (waitpid(*pid, NULL, WNOHANG) == *pid) {
            *pid = 0;
            return;
        }
        usleep(50 * 1000);
    }
    kill(*pid, SIGKILL);
    waitpid(*pid, NULL, 0);
    *pid = 0;
}

/* Prints the part of a broker's log a developer needs: every sanitizer
 * report line and the stack frames after it, else the last lines. */
void nf_print_log(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    fprintf(stderr, "netfuzz: from %s:\n", path);
    char line[1024];
    int in_report = 0, shown = 0;
    while (fgets(line, sizeof line, f) && shown < 120) {
        if (strstr(line, "ERROR: AddressSanitizer") || strstr(line, "runtime error:") ||
            strstr(line, "SUMMARY:") || strstr(line, "Assertion") || strstr(line, "free(): ") ||
            strstr(line, "corrupted") || strstr(line, "malloc(): "))
            in_report = 1;
        if (in_report || strstr(line, "bookkeeping is inconsistent")) { /* audit.h */
            fputs(line, stderr);
            shown++;
        }
        if (strstr(line, "SUMMARY:")) /* the shadow-byte map after it helps nobody */
            break;
    }
    if (!shown) { /* no report: the tail */
        fseek(f, 0, SEEK_END);
        long end = ftell(f);
        fseek(f, end > 4000 ? end - 4000 : 0, SEEK_SET);
        size_t n;
        char buf[4001];
        n = fread(buf, 1, 4000, f);
        buf[n] = 0;
        fputs(buf, stderr);
    }
    fclose(f);
}

/* "dead" text when the broker *PID (WHO) exited, else NULL. */
static const char *s_dead(pid_t *pid, const char *who, char *buf, size_t cap)
{
    int st;
    if (*pid <= 0 || waitpid(*pid, &st, WNOHANG) != *pid)
        return NULL;
    *pid = 0;
    if (WIFSIGNALED(st))
        snprintf(buf, cap, "%s killed by signal %d", who, WTERMSIG(st));
    else
        snprintf(buf, cap, "%s exited with status %d", who, WEXITSTATUS(st));
    return buf;
}

const char *nf_broker_dead(char *buf, size_t cap)
{
    const char *dead = s_dead(&nf_broker_pid, "broker", buf, cap);
    for (int i = 0; !dead && i < nf_opt.linked; i++)
        dead = s_dead(&nf_rb[i].pid, nf_rb[i].who, buf, cap);
    return dead;
}

/* Reads the Z85 keys of the certificate PATH_secret (brokerctl keygen's
 * ZPL text) into PUB and SEC (41 bytes each; SEC may be NULL). 0 or -1. */
static int s_read_cert(const char *path, char *pub, char *sec)
{
    char file[600], line[256];
    snprintf(file, sizeof file, "%s_secret", path);
    FILE *f = fopen(file, "r");
    int got = 0;
    while (f && fgets(line, sizeof line, f)) {
        char *q = strchr(line, '"');
        char *to = strstr(line, "public-key") ? pub : strstr(line, "secret-key") ? sec : NULL;
        if (to && q && strlen(q + 1) > 40 && q[41] == '"') {
            memcpy(to, q + 1, 40);
            to[40] = 0;
            got++;
        }
    }
    if (f)
        fclose(f);
    return got >= (sec ? 2 : 1) ? 0 : -1;
}

/* --linked: the keys (brokerctl keygen) and each broker's keys directory
 * trusting them. 0 or -1. */
static int s_make_keys(void)
{
    char certs[128], keys[128], cert[256], bctl[512];
    snprintf(certs, sizeof certs, "%s/certs", s_dir);
    snprintf(keys, sizeof keys, "%s/keys", s_dir);
    snprintf(bctl, sizeof bctl, "%s", AB_BIN_DIR "/brokerctl");
    if (mkdir(certs, 0700) != 0 || mkdir(keys, 0700) != 0)
        return -1;
    /* the brokers' own keypair (both share it), then the raw peers' four */
    char *const gen[][12] = {
        {bctl, "keygen", "nfbroker", "--role", "peer", "--names", "nf-near,nf-mid,nf-far", "--out",
         certs, NULL},
        {bctl, "keygen", "nfagent", "--names", "alice,bob,carol,~*", "--topics", "t.*",
         "--services", "svc-a,infer," NF_GOOD_SVC, "--out", certs, NULL},
        {bctl, "keygen", "nfworker", "--role", "worker", "--services", "svc-a,infer",
         "--capacity", "8", "--out", certs, NULL},
        {bctl, "keygen", "nflink", "--role", "peer", "--names", "nf-b*", "--out", certs, NULL},
        {bctl, "keygen", "nfadmin", "--role", "admin", "--out", certs, NULL},
        /* the dialed endpoint's third choice: every name it may claim */
        {bctl, "keygen", "nffake", "--role", "peer", "--names", "nf-b*,nf-fake,nf-near,nf-mid,nf-far",
         "--out", certs, NULL},
    };
    for (size_t i = 0; i < sizeof gen / sizeof gen[0]; i++)
        if (s_run(gen[i]) != 0)
            return -1;
    const char *all[] = {"nfbroker", "nfagent", "nfworker", "nflink", "nfadmin", "nffake"};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) {
        char from[300], to[300], line[512];
        snprintf(from, sizeof from, "%s/%s.key", certs, all[i]);
        snprintf(to, sizeof to, "%s/%s.key", keys, all[i]);
        FILE *in = fopen(from, "r"), *out = fopen(to, "w");
        while (in && out && fgets(line, sizeof line, in))
            fputs(line, out);
        if (in)
            fclose(in);
        if (out)
            fclose(out);
        if (!in || !out)
            return -1;
    }
    for (int i = 0; i < 4; i++) {
        snprintf(cert, sizeof cert, "%s/%s.key", certs, s_key_names[i]);
        if (s_read_cert(cert, nf_key_pub[i], nf_key_sec[i]) != 0)
            return -1;
    }
    snprintf(cert, sizeof cert, "%s/nfbroker.key", certs);
    if (s_read_cert(cert, nf_server_pub, s_server_sec) != 0)
        return -1;
    snprintf(cert, sizeof cert, "%s/nffake.key", certs);
    if (s_read_cert(cert, s_fake_pub, s_fake_sec) != 0)
        return -1;
    /* what the good client and the echo workers use (ab_options' defaults) */
    char admin[300];
    snprintf(admin, sizeof admin, "%s/nfadmin.key_secret", certs);
    setenv("AB_KEY", admin, 1);
    setenv("AB_BROKER_KEY", nf_server_pub, 1);
    return 0;
}

/* Short timers and small limits, so that expiry, eviction, full mailboxes,
 * queues and unanswered CANCELs (cancel-grace-ms) happen within a run; a
 * peer that stops reading (moves deaf, stall, dialed) passes
 * peer-out-max-bytes and fills its pipe (sndhwm) within its spell. */
#define NF_BROKER_ARGS                                                                       \
    "--heartbeat-ms", "500", "--liveness", "3", "--mailbox-ttl-ms", "700",                   \
        "--mailbox-max-msgs", "8", "--mailbox-total-bytes", "64K", "--queue-max", "40",      \
        "--default-timeout-ms", "3000", "--max-timeout-ms", "8000", "--sub-queue-max", "16", \
        "--startup-grace-ms", "0", "--cache-l1-bytes", "1M", "--max-client-held-bytes",     \
        "64K", "--self-check-ms", "100", "--cancel-grace-ms", "300", "--log-level", "warn",  \
        "--peer-out-max-bytes", "256K", "--peer-stall-ms", "1500", "--sndhwm", "2000"

/* --linked: a broker NAME on EP with CURVE, dialing PEER_EP and PEER2_EP
 * (NULL: none; its certificate CERT2's public key), into ARGV (strings
 * kept in STORE, 8 of them). */
static void s_linked_argv(char **argv, char store[][300], const char *bin, const char *name,
                          const char *ep, const char *peer_ep, const char *peer2_ep,
                          const char *cert2)
{
    char *fixed[] = {NF_BROKER_ARGS};
    int n = 0;
    snprintf(store[0], 300, "%s", bin);
    snprintf(store[1], 300, "%s/certs/nfbroker.key", s_dir);
    snprintf(store[2], 300, "%s/keys", s_dir);
    snprintf(store[3], 300, "%s#%s/certs/nfbroker.key", peer_ep, s_dir);
    snprintf(store[4], 300, "%s", name);
    snprintf(store[5], 300, "%s", ep);
    char *head[] = {store[0], "--bind", store[5], "--name", store[4], "--auth", "curve",
                    "--broker-cert", store[1], "--keys-dir", store[2], "--peer", store[3],
                    "--link-heartbeat-ms", "100"};
    for (size_t i = 0; i < sizeof head / sizeof *head; i++)
        argv[n++] = head[i];
    if (peer2_ep) {
        snprintf(store[6], 300, "%s#%s/certs/%s.key", peer2_ep, s_dir, cert2);
        argv[n++] = "--peer";
        argv[n++] = store[6];
    }
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
        argv[n++] = fixed[i];
    argv[n] = NULL;
}

/* --linked: the far broker, or with --line the middle one and the far
 * one (near - mid - far, each dialing its neighbours), each with its own
 * echo worker. 0 or -1. */
static int s_start_linked(void *ctx, const char *bin, const char *wbin)
{
    static const char *const names[2][2] = {{"nf-far"}, {"nf-mid", "nf-far"}};
    static const char *const whos[2][2] = {{"far broker"}, {"middle broker", "far broker"}};
    static const char *const svcs[2][2] = {{NF_FAR_SVC}, {NF_MID_SVC, NF_FAR_SVC}};
    snprintf(nf_ep, sizeof nf_ep, "tcp://127.0.0.1:%d", tl_free_port());
    for (int i = 0; i < nf_opt.linked; i++) {
        nf_broker_t *rb = &nf_rb[i];
        rb->name = names[nf_opt.linked - 1][i];
        rb->who = whos[nf_opt.linked - 1][i];
        rb->svc = svcs[nf_opt.linked - 1][i];
        snprintf(rb->ep, sizeof rb->ep, "tcp://127.0.0.1:%d", tl_free_port());
        snprintf(rb->log, sizeof rb->log, "%s/%s.log", s_dir, rb->name + 3);
        if (!strcmp(rb->ep, nf_ep) || (i && !strcmp(rb->ep, nf_rb[0].ep)))
            return -1;
    }
    if (s_make_keys() != 0)
        return -1;
    /* the endpoint the near broker dials as well (netfuzz_fake.c), by the
     * seed: with the raw peers' link key (nf-b* only), the brokers' key
     * (their names only), or nffake's (every name it says: its renames
     * and forged HELLOs are taken, not refused) */
    static const char *const certs[] = {"nflink", "nfbroker", "nffake"};
    const char *pubs[] = {nf_key_pub[2], nf_server_pub, s_fake_pub},
               *secs[] = {nf_key_sec[2], s_server_sec, s_fake_sec};
    unsigned k = (unsigned)(nf_opt.seed % 3);
    snprintf(nf_fake_cert, sizeof nf_fake_cert, "%s", certs[k]);
    if (!nf_avoid[MV_dialed] && nf_fake_open(ctx, pubs[k], secs[k]))
        return -1;
    char near_store[8][300], *argv[64];
    s_linked_argv(argv, near_store, bin, "nf-near", nf_ep, nf_rb[0].ep,
                  nf_fake_ep[0] ? nf_fake_ep : NULL, nf_fake_cert);
    nf_broker_pid = s_spawn(argv);
    for (int i = 0; i < nf_opt.linked; i++) {
        nf_broker_t *rb = &nf_rb[i];
        s_linked_argv(rb->argv, rb->store, bin, rb->name, rb->ep, i ? nf_rb[i - 1].ep : nf_ep,
                      i + 1 < nf_opt.linked ? nf_rb[i + 1].ep : NULL, "nfbroker");
        rb->pid = s_spawn_to(rb->argv, rb->log);
        char *fw[] = {(char *)wbin, "--broker", rb->ep, "--backend", "echo", "--service",
                      (char *)rb->svc, "--capacity", "64", NULL};
        memcpy(rb->wargv, fw, sizeof fw);
        rb->worker_pid = s_spawn_to(rb->wargv, rb->log);
    }
    return 0;
}

int nf_start_processes(void *ctx)
{
    snprintf(s_dir, sizeof s_dir, "/tmp/netfuzz.XXXXXX");
    if (!mkdtemp(s_dir))
        return -1;
    snprintf(nf_logpath, sizeof nf_logpath, "%s/processes.log", s_dir);
    static char bin[512], wbin[512];
    snprintf(bin, sizeof bin, "%s",
             nf_opt.broker_bin ? nf_opt.broker_bin : AB_BIN_DIR "/agentbus-broker");
    snprintf(wbin, sizeof wbin, "%s", AB_BIN_DIR "/agentbus-worker");
    if (nf_opt.linked) {
        if (s_start_linked(ctx, bin, wbin) != 0)
            return -1;
    } else if (nf_opt.endpoint) {
        snprintf(nf_ep, sizeof nf_ep, "%s", nf_opt.endpoint);
    } else {
        snprintf(nf_ep, sizeof nf_ep, "tcp://127.0.0.1:%d", tl_free_port());
        if (!nf_avoid[MV_dialed] && nf_fake_open(ctx, NULL, NULL) != 0)
            return -1;
        char *argv[] = {bin, "--bind", nf_ep, NF_BROKER_ARGS, "--peer", nf_fake_ep, NULL};
        if (!nf_fake_ep[0]) /* --avoid dialed: no --peer */
            argv[sizeof argv / sizeof *argv - 3] = NULL;
        nf_broker_pid = s_spawn(argv);
    }
    char *wargv[] = {wbin, "--broker", nf_ep, "--backend", "echo", "--service", NF_GOOD_SVC,
                     "--capacity", "64", NULL};
    nf_worker_pid = s_spawn(wargv);
    printf("netfuzz: broker %s (pid %d), log %s\n", nf_ep, (int)nf_broker_pid, nf_logpath);
    for (int i = 0; i < nf_opt.linked; i++)
        printf("netfuzz: %s %s (pid %d), log %s\n", nf_rb[i].who, nf_rb[i].ep, (int)nf_rb[i].pid,
               nf_rb[i].log);
    return 0;
}

static uint32_t s_fault_below(uint32_t n)
{
    s_fault.rng = s_fault.rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)((s_fault.rng >> 33) % n);
}

/* Kills *PID (SIGKILL), reaps it and starts ARGV again into LOG. */
static void s_restart(pid_t *pid, char *const *argv, const char *log)
{
    if (*pid > 0) {
        kill(*pid, SIGKILL);
        waitpid(*pid, NULL, 0);
    }
    *pid = s_spawn_to(argv, log);
}

void nf_fault_start(int64_t now)
{
    s_fault.rng = nf_opt.seed ^ 0x5eed5eed5eed5eedull;
    s_fault.next_ms = now + 3000 + s_fault_below(7000);
}

/* The far side's next fault when its time has come: to the far broker,
 * or with --line to the middle one or the far one. */
void nf_fault_step(int64_t now)
{
    if (!nf_opt.linked)
        return;
    if (s_fault.stopped && now >= s_fault.cont_ms) {
        kill(s_fault.stopped->pid, SIGCONT);
        s_fault.stopped = NULL;
    }
    if (s_fault.stopped || now < s_fault.next_ms)
        return;
    for (int i = 0; i < nf_opt.linked; i++)
        if (nf_rb[i].pid <= 0)
            return; /* it died: netfuzz.c's s_check says so */
    nf_broker_t *rb = &nf_rb[nf_opt.linked > 1 ? s_fault_below((uint32_t)nf_opt.linked) : 0];
    uint32_t r = s_fault_below(10);
    if (r < 5) { /* its links are lost (5 silent heartbeats: 0.5 s) with requests on them */
        kill(rb->pid, SIGSTOP);
        s_fault.stopped = rb;
        s_fault.cont_ms = now + 300 + s_fault_below(2200);
        rb->stops++;
    } else if (r < 7) {
        s_restart(&rb->pid, rb->argv, rb->log);
        rb->kills++;
    } else {
        s_restart(&rb->worker_pid, rb->wargv, rb->log);
        rb->worker_kills++;
    }
    if (nf_opt.verbose)
        printf("netfuzz: %s: %s\n", rb->who, r < 5 ? "stopped" : r < 7 ? "killed"
                                                                      : "its worker killed");
    s_fault.next_ms = now + 3000 + s_fault_below(7000);
}

void nf_fault_end(void)
{
    if (s_fault.stopped) {
        kill(s_fault.stopped->pid, SIGCONT);
        s_fault.stopped = NULL;
    }
}

/* SIGTERM to the broker *PID (WHO, its log LOG): NULL when it exits 0
 * within 10 s, or when its exit failed on a leak report of libzmq's loss
 * at close alone (nf_lsan.h: a linked broker still sending to its link
 * socket), which is said and not counted. */
const char *nf_term_clean(pid_t *pid, const char *who, const char *log, char *buf,
                                size_t cap)
{
    if (*pid <= 0)
        return NULL;
    pid_t p = *pid;
    int st = 0;
    kill(p, SIGCONT);
    kill(p, SIGTERM);
    for (int i = 0; i < 200 && waitpid(p, &st, WNOHANG) != p; i++)
        usleep(50 * 1000);
    if (waitpid(p, &st, WNOHANG) == 0) {
        nf_stop(pid);
        snprintf(buf, cap, "the %s did not stop on SIGTERM within 10 s", who);
        return buf;
    }
    *pid = 0;
    size_t lost = 0;
    if ((!WIFEXITED(st) || WEXITSTATUS(st) != 0) && nf_lsan_only_libzmq(log, &lost) == 1) {
        printf("netfuzz: the %s's exit after SIGTERM (status 0x%x) reported only libzmq's "
               "loss at close, %zu bytes (libzmq 4.3.4, tests/fuzz/nf_lsan.h): not counted\n",
               who, st, lost);
        return NULL;
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        snprintf(buf, cap, "the %s's exit after SIGTERM was not clean (status 0x%x)", who, st);
        return buf;
    }
    return NULL;
}

static int s_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

void nf_remove_dir(void)
{
    nftw(s_dir, s_rm_one, 8, FTW_DEPTH | FTW_PHYS);
}
