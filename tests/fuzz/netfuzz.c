/*
 * netfuzz.c - a stateful network fuzzer for the broker.
 *
 * The decoders are fuzzed on their own (fuzz_*.c); what breaks a broker is
 * the state it keeps between messages. This program starts a real broker
 * (or is given one), a real echo worker and a well-behaved libagentbus
 * client, then lets a handful of raw ZeroMQ DEALER peers play random but
 * valid-looking sequences at it: HELLO with names, instances and takeover,
 * REGISTER with labels, capacity and features, requests (small, lz4,
 * cacheable, typed inference), CANCEL, answers to their own, to other
 * peers' and to random ids (twice, a chunk after the final, ERRORs saying
 * the work had begun: FLAG_NON_IDEMPOTENT, as ab_worker_fail_begun sends
 * them), a worker's whole answer (chunks, one or two finals) to a request
 * it holds or held before a reconnect, reconnects with the same routing id, a second
 * connection with another peer's id, BYE, SUBSCRIBE, SEND, PUBLISH,
 * HEARTBEAT, DISCOVER, CONTROL, broker LINK messages (HELLO, heartbeats,
 * directories, whole sets of agent names and of topic patterns, hostile
 * ones among them and some past their bounds, then forwarded requests and
 * answers: the broker runs with --auth none, so any peer may open a link)
 * and BATCHes of all of it.
 *
 * With --linked the same moves meet two brokers joined by a real link, and
 * authentication: a near broker (the good client's) and a far one, both
 * with --auth curve, each dialing the other; a second echo worker serves
 * NF_FAR_SVC at the far broker only, so the good client's requests to it
 * cross the link (the good client alternates between the two services).
 * The raw peers connect over CURVE to either broker, each with one of four
 * keys: an agent granted a few names and topics, a worker granted two of
 * the services, a peer broker granted the names nf-b* (so its LINK moves
 * open links; the real brokers' names are not granted to it) and an admin.
 * Every 3-10 s the far side has a fault: the far broker stopped (SIGSTOP)
 * for 0.3-2.5 s, so that the link is lost and found again with requests
 * on it, killed and restarted, or its echo worker killed and restarted.
 *
 * With --line, three brokers in a line, near - middle - far (each dials
 * its neighbours; near and far are not linked), so that the good client's
 * requests to NF_FAR_SVC cross two links and the middle broker forwards
 * what it did not receive from a client. The middle broker's own worker
 * serves NF_MID_SVC; the good client takes turns among the three
 * services; the raw peers are split among the three brokers, and each
 * fault strikes the middle side or the far one.
 *
 * The broker it starts runs with short timers and small limits (heartbeat,
 * mailbox TTL and sizes, queue, timeouts), so that expiry, eviction and
 * full queues happen within a run.
 *
 * Oracle: the broker process stays alive (a sanitizer report aborts it),
 * the good client's echoes stay correct and it gets at least one correct
 * answer every 30 s, the broker answers a `stats` CONTROL at the end and
 * exits with status 0 on SIGTERM (a leak report fails; so does a difference
 * its own recount of its bookkeeping found: --self-check-ms, audit.h). With
 * --linked (--line) the same holds of the far (and middle) broker: it
 * never dies but by the faults netfuzz gives it, and exits 0 at the end;
 * and each link toward the far broker answered a request. Exit
 * status 0 when all held, 1 otherwise (with the seed to replay and the
 * broker's report), 2 on bad usage. A replay plays the same moves from the same seed; what the
 * broker answers, and so some later choices, depends on timing.
 *
 *   netfuzz [--seed N] [--seconds S] [--peers K] [--avoid move,...]
 *           [--broker-bin PATH | --endpoint EP | --linked | --line] [--verbose]
 */
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "batch.h"
#include "codec.h"
#include "compress.h"
#include "netfuzz.h"
#include "nf_lsan.h"
#include "tl_args.h"
#include "tl_port.h"
#include "util.h"

#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#ifndef AB_BIN_DIR
#define AB_BIN_DIR "."
#endif

#define NF_MAX_PEERS 16
#define NF_RIDS 10     /* routing ids remembered from `workers` / `agents` answers */

/* --- moves ------------------------------------------------------------------ */
#define NF_NAME(n) #n,
static const char *s_move_names[] = {NF_MOVES(NF_NAME)};
/* Relative weights: the moves that build state come often. */
static const int s_weight[MV_COUNT_] = {
    [MV_hello] = 6, [MV_register] = 6, [MV_request] = 14, [MV_lz4] = 5, [MV_typed] = 5,
    [MV_cancel] = 6, [MV_answer] = 14, [MV_reconnect] = 3, [MV_steal] = 1, [MV_work] = 6,
    [MV_bye] = 3,
    [MV_subscribe] = 4, [MV_unsubscribe] = 2, [MV_send] = 8, [MV_publish] = 5,
    [MV_heartbeat] = 5, [MV_discover] = 2, [MV_control] = 2, [MV_batch] = 6, [MV_deaf] = 1,
    [MV_link] = 5, [MV_link_names] = 3, [MV_link_interest] = 3,
};

/* --- options -------------------------------------------------------------- */
static struct {
    uint64_t seed;
    double seconds;
    int peers, verbose;
    int linked; /* the brokers beside the near one: 0, 1 (--linked), 2 (--line) */
    const char *broker_bin, *endpoint;
} s_opt = {0, 60, 0, 0, 0, NULL, NULL};

static char s_replay[512]; /* the command line that plays this run again */

/* --- processes ---------------------------------------------------------------------- */
static pid_t s_broker_pid, s_worker_pid;
static char s_ep[64], s_dir[64], s_logpath[256];
/* --linked: the brokers beside the near one (s_broker_pid, s_ep), in line
 * order: the far one, or with --line the middle one (s_rb[0]) and then the
 * far one. Each has an echo worker serving its own service and a log of
 * its own; their command lines are kept for restarts. */
typedef struct {
    const char *name, *who, *svc;
    pid_t pid, worker_pid;
    char ep[64], log[256];
    char *argv[64], *wargv[16];
    char store[8][300];
    unsigned stops, kills, worker_kills; /* the faults it had */
} nf_broker_t;
static nf_broker_t s_rb[2];
static const char *const s_key_names[] = {"nfagent", "nfworker", "nflink", "nfadmin"};
static char s_key_pub[4][41], s_key_sec[4][41], s_server_pub[41];
/* --linked: the far side's faults, from a PRNG of their own (seeded from
 * the run's seed), so that they do not change which moves a seed plays. */
static struct {
    uint64_t rng;
    int64_t next_ms, cont_ms;
    nf_broker_t *stopped; /* the broker stopped now (SIGSTOP) */
} s_fault;

/* What netfuzz tests is the broker, which runs under its own leak checker
 * and must exit clean. netfuzz's raw sockets (closed mid-handshake, sharing
 * stolen routing ids, deaf until the broker cuts them off) leave libzmq's own
 * allocations behind in this process at exit; they are not the broker's, so
 * LeakSanitizer is off for this process only (exec'd children keep it). */
int __lsan_is_turned_off(void);
int __lsan_is_turned_off(void)
{
    return 1;
}

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
    return s_spawn_to(argv, s_logpath);
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

static void s_stop(pid_t *pid)
{
    if (*pid <= 0)
        return;
    kill(*pid, SIGCONT); /* a far broker may be stopped (s_fault_step) */
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
static void s_print_log(const char *path)
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

static const char *s_broker_dead(char *buf, size_t cap)
{
    const char *dead = s_dead(&s_broker_pid, "broker", buf, cap);
    for (int i = 0; !dead && i < s_opt.linked; i++)
        dead = s_dead(&s_rb[i].pid, s_rb[i].who, buf, cap);
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
    };
    for (size_t i = 0; i < sizeof gen / sizeof gen[0]; i++)
        if (s_run(gen[i]) != 0)
            return -1;
    const char *all[] = {"nfbroker", "nfagent", "nfworker", "nflink", "nfadmin"};
    for (size_t i = 0; i < 5; i++) {
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
        if (s_read_cert(cert, s_key_pub[i], s_key_sec[i]) != 0)
            return -1;
    }
    snprintf(cert, sizeof cert, "%s/nfbroker.key", certs);
    if (s_read_cert(cert, s_server_pub, NULL) != 0)
        return -1;
    /* what the good client and the echo workers use (ab_options' defaults) */
    char admin[300];
    snprintf(admin, sizeof admin, "%s/nfadmin.key_secret", certs);
    setenv("AB_KEY", admin, 1);
    setenv("AB_BROKER_KEY", s_server_pub, 1);
    return 0;
}

/* Short timers and small limits, so that expiry, eviction, full mailboxes
 * and queues happen within a run. */
#define NF_BROKER_ARGS                                                                       \
    "--heartbeat-ms", "500", "--liveness", "3", "--mailbox-ttl-ms", "700",                   \
        "--mailbox-max-msgs", "8", "--mailbox-total-bytes", "64K", "--queue-max", "40",      \
        "--default-timeout-ms", "3000", "--max-timeout-ms", "8000", "--sub-queue-max", "16", \
        "--startup-grace-ms", "0", "--cache-l1-bytes", "1M", "--max-client-held-bytes",     \
        "64K", "--self-check-ms", "100", "--log-level", "warn"

/* --linked: a broker NAME on EP with CURVE, dialing PEER_EP and PEER2_EP
 * (NULL: none), into ARGV (strings kept in STORE, 8 of them). */
static void s_linked_argv(char **argv, char store[][300], const char *bin, const char *name,
                          const char *ep, const char *peer_ep, const char *peer2_ep)
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
        snprintf(store[6], 300, "%s#%s/certs/nfbroker.key", peer2_ep, s_dir);
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
static int s_start_linked(const char *bin, const char *wbin)
{
    static const char *const names[2][2] = {{"nf-far"}, {"nf-mid", "nf-far"}};
    static const char *const whos[2][2] = {{"far broker"}, {"middle broker", "far broker"}};
    static const char *const svcs[2][2] = {{NF_FAR_SVC}, {NF_MID_SVC, NF_FAR_SVC}};
    snprintf(s_ep, sizeof s_ep, "tcp://127.0.0.1:%d", tl_free_port());
    for (int i = 0; i < s_opt.linked; i++) {
        nf_broker_t *rb = &s_rb[i];
        rb->name = names[s_opt.linked - 1][i];
        rb->who = whos[s_opt.linked - 1][i];
        rb->svc = svcs[s_opt.linked - 1][i];
        snprintf(rb->ep, sizeof rb->ep, "tcp://127.0.0.1:%d", tl_free_port());
        snprintf(rb->log, sizeof rb->log, "%s/%s.log", s_dir, rb->name + 3);
        if (!strcmp(rb->ep, s_ep) || (i && !strcmp(rb->ep, s_rb[0].ep)))
            return -1;
    }
    if (s_make_keys() != 0)
        return -1;
    char near_store[8][300], *argv[64];
    s_linked_argv(argv, near_store, bin, "nf-near", s_ep, s_rb[0].ep, NULL);
    s_broker_pid = s_spawn(argv);
    for (int i = 0; i < s_opt.linked; i++) {
        nf_broker_t *rb = &s_rb[i];
        s_linked_argv(rb->argv, rb->store, bin, rb->name, rb->ep, i ? s_rb[i - 1].ep : s_ep,
                      i + 1 < s_opt.linked ? s_rb[i + 1].ep : NULL);
        rb->pid = s_spawn_to(rb->argv, rb->log);
        char *fw[] = {(char *)wbin, "--broker", rb->ep, "--backend", "echo", "--service",
                      (char *)rb->svc, "--capacity", "64", NULL};
        memcpy(rb->wargv, fw, sizeof fw);
        rb->worker_pid = s_spawn_to(rb->wargv, rb->log);
    }
    return 0;
}

static int s_start_processes(void)
{
    snprintf(s_dir, sizeof s_dir, "/tmp/netfuzz.XXXXXX");
    if (!mkdtemp(s_dir))
        return -1;
    snprintf(s_logpath, sizeof s_logpath, "%s/processes.log", s_dir);
    static char bin[512], wbin[512];
    snprintf(bin, sizeof bin, "%s", s_opt.broker_bin ? s_opt.broker_bin : AB_BIN_DIR "/agentbus-broker");
    snprintf(wbin, sizeof wbin, "%s", AB_BIN_DIR "/agentbus-worker");
    if (s_opt.linked) {
        if (s_start_linked(bin, wbin) != 0)
            return -1;
    } else if (s_opt.endpoint) {
        snprintf(s_ep, sizeof s_ep, "%s", s_opt.endpoint);
    } else {
        snprintf(s_ep, sizeof s_ep, "tcp://127.0.0.1:%d", tl_free_port());
        char *argv[] = {bin, "--bind", s_ep, NF_BROKER_ARGS, NULL};
        s_broker_pid = s_spawn(argv);
    }
    char *wargv[] = {wbin, "--broker", s_ep, "--backend", "echo", "--service", NF_GOOD_SVC,
                     "--capacity", "64", NULL};
    s_worker_pid = s_spawn(wargv);
    printf("netfuzz: broker %s (pid %d), log %s\n", s_ep, (int)s_broker_pid, s_logpath);
    for (int i = 0; i < s_opt.linked; i++)
        printf("netfuzz: %s %s (pid %d), log %s\n", s_rb[i].who, s_rb[i].ep, (int)s_rb[i].pid,
               s_rb[i].log);
    return 0;
}

/* --- the well-behaved client (its own thread) --------------------------------------- */
static struct {
    pthread_t th;
    volatile int stop;
    volatile int64_t last_ok_ms;
    volatile long ok, errors, wrong;
    char first_wrong[256];
    int codes[64];
} s_good;

static ab_client_t *s_client_at(const char *ep)
{
    ab_options_t *o = ab_options_new();
    ab_client_t *c = NULL;
    if (o && ab_options_set_endpoint(o, ep) == AB_OK)
        ab_client_new(&c, o);
    ab_options_destroy(&o);
    return c;
}

static ab_client_t *s_client_new(void)
{
    return s_client_at(s_ep);
}

/* One echo of a payload of a random size (large ones travel compressed),
 * with --linked (--line) taking turns between the near broker's worker and
 * the far (and middle) one's: a wrong answer is a finding; an error is
 * counted. */
static void s_good_one(ab_client_t *c, uint64_t *rng, uint32_t n)
{
    uint32_t turn = n % (uint32_t)(s_opt.linked + 1);
    const char *svc = turn ? s_rb[turn - 1].svc : NF_GOOD_SVC;
    static char buf[70000];
    size_t size = (*rng % 7 == 0) ? 20000 + *rng % 40000 : 1 + *rng % 300;
    for (size_t i = 0; i < size; i++)
        buf[i] = (char)('a' + (i * 7 + n) % 26); /* compressible */
    void *reply = NULL;
    size_t rlen = 0;
    int rc = ab_client_request(c, svc, buf, size, 20000, &reply, &rlen);
    if (rc == AB_OK && rlen == size && memcmp(reply, buf, size) == 0) {
        s_good.ok++;
        s_good.last_ok_ms = ab_now_ms();
    } else if (rc == AB_OK) {
        if (!s_good.wrong++)
            snprintf(s_good.first_wrong, sizeof s_good.first_wrong,
                     "echo of %zu bytes by %s answered with %zu other bytes", size, svc, rlen);
    } else {
        s_good.errors++;
        s_good.codes[(-rc) & 63]++;
    }
    ab_free(reply);
}

static void *s_good_main(void *arg)
{
    (void)arg;
    ab_client_t *c = s_client_new();
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    for (uint32_t n = 0; !s_good.stop && c; n++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        s_good_one(c, &rng, n);
        ab_client_poll(c, 20);
    }
    ab_client_destroy(&c);
    return NULL;
}

/* Waits until SVC answers at the broker: it and its worker are up (and
 * for the other brokers' services, the links). */
static int s_wait_service(const char *svc)
{
    ab_client_t *c = s_client_new();
    int64_t end = ab_now_ms() + 30000;
    int ready = 0;
    while (c && !ready && ab_now_ms() < end) {
        void *r = NULL;
        size_t n = 0;
        ready = ab_client_request(c, svc, "up?", 3, 2000, &r, &n) == AB_OK;
        ab_free(r);
        if (!ready)
            usleep(100 * 1000);
    }
    ab_client_destroy(&c);
    return ready ? 0 : -1;
}

static int s_wait_ready(void)
{
    if (s_wait_service(NF_GOOD_SVC) != 0)
        return -1;
    for (int i = 0; i < s_opt.linked; i++)
        if (s_wait_service(s_rb[i].svc) != 0)
            return -1;
    return 0;
}

/* --- raw peers ----------------------------------------------------------------------- */
static void *s_ctx;
static nf_peer_t s_peers[NF_MAX_PEERS];
static uint64_t s_moves[MV_COUNT_], s_kinds_in[AB_KIND_MAX_ + 1];
static char s_stolen[NF_RIDS][64]; /* routing ids read from `workers` / `agents` */
static size_t s_stolen_len[NF_RIDS];
static int s_nstolen;

/* With --linked, peer I holds key I % 4 (s_key_names) and connects to
 * broker I / 4 (modulo their number; 0 the near one, then s_rb): with 8
 * peers (12 with --line), each broker meets each key. */
static const char *s_peer_ep(const nf_peer_t *p)
{
    int k = (int)(p - s_peers) / 4 % (s_opt.linked + 1);
    return k ? s_rb[k - 1].ep : s_ep;
}

static void *s_socket_with_rid(const nf_peer_t *p, const char *rid, size_t len)
{
    void *s = zmq_socket(s_ctx, ZMQ_DEALER);
    int linger = 0, hwm = 20000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (len)
        zmq_setsockopt(s, ZMQ_ROUTING_ID, rid, len);
    if (s_opt.linked) {
        int k = (int)(p - s_peers) % 4;
        zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, s_server_pub, 41);
        zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, s_key_pub[k], 41);
        zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, s_key_sec[k], 41);
    }
    zmq_connect(s, s_peer_ep(p));
    return s;
}

/* A routing id: one of a small shared pool, so peers collide on purpose. */
/* A routing id of this peer's own: peer I's are "nf-I-G". Two connections
 * share one only through the steal move (so --avoid steal keeps them
 * apart) or a reconnect that keeps its id. */
static void s_pick_rid(nf_peer_t *p)
{
    static unsigned gen;
    p->rid_len = (size_t)snprintf(p->rid, sizeof p->rid, "nf-%d-%u", (int)(p - s_peers), gen++);
}

static void s_peer_open(nf_peer_t *p)
{
    s_pick_rid(p);
    p->sock = s_socket_with_rid(p, p->rid, p->rid_len);
    p->instance = nf_rand();
    p->next_id = 1 + nf_below(1000);
}

static void s_peer_close(nf_peer_t *p)
{
    if (p->sock)
        zmq_close(p->sock);
    if (p->twin)
        zmq_close(p->twin);
    p->sock = p->twin = NULL;
    p->nheld = p->nsent = 0;
    p->registered = 0;
}

/* The payload inside the header frame (codec.h "Inline"), as a peer that
 * announced FEATURE_INLINE sends it, or not (peers announce it at random):
 * HOW (0..99) picks a wrong shape now and then: the field twice, cut
 * short, or with a payload frame as well. */
static void s_send_inline(void *s, const uint8_t *hdr, size_t hlen, const void *data,
                          size_t size, uint32_t how)
{
    size_t n = ab_msg_inline_size(hlen, size), field = n - hlen;
    size_t twice = how < 5 ? field : 0, len = n + twice;
    uint8_t *f = malloc(len);
    if (!f)
        return;
    ab_msg_inline_put(f, hdr, hlen, data, size);
    if (twice)
        memcpy(f + n, f + hlen, field);
    if (how >= 5 && how < 10)
        len -= 1 + nf_below((uint32_t)field); /* inside the field */
    int more = how >= 10 && how < 15;
    if (zmq_send(s, f, len, (more ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) >= 0 && more)
        zmq_send(s, data ? data : "", size, 0);
    free(f);
}

/* Sends a header (and payload when HAS) on S, without blocking: the
 * payload in a frame of its own, or (a third of the time) inline. */
static void s_send(void *s, const ab_header_t *h, const void *data, size_t size, int has)
{
    uint8_t stack[512];
    size_t len;
    uint8_t *buf = ab_header_encode_buf(h, stack, sizeof stack, &len);
    if (!buf)
        return;
    if (has && nf_chance(33))
        s_send_inline(s, buf, len, data, size, nf_below(100));
    else if (zmq_send(s, buf, len, (has ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) >= 0 && has)
        zmq_send(s, data ? data : "", size, 0);
    if (buf != stack)
        free(buf);
}

/* --- what a peer receives ------------------------------------------------------------- */
/* CONTROL queries for `workers` and `agents` in flight: their answers name
 * routing ids worth stealing (ring buffers, no PRNG: receiving must not
 * change which moves a seed plays). */
static struct {
    uint64_t id;
    int agents;
} s_listing[16];
static unsigned s_nlisting, s_stolen_next;

static void s_note_out(const nf_out_t *o)
{
    if (o->h.kind != AB_KIND_CONTROL)
        return;
    int agents = ab_view_eq(o->h.target, "agents");
    if (agents || ab_view_eq(o->h.target, "workers")) {
        s_listing[s_nlisting % 16].id = o->h.id;
        s_listing[s_nlisting++ % 16].agents = agents;
    }
}

static void s_steal_hex(const char *hex)
{
    size_t n = 0;
    char *to = s_stolen[s_stolen_next % NF_RIDS];
    for (; hex && hex[2 * n] && hex[2 * n + 1] && n < 63; n++) {
        unsigned v = 0;
        if (sscanf(hex + 2 * n, "%2x", &v) != 1)
            break;
        to[n] = (char)v;
    }
    if (n) {
        s_stolen_len[s_stolen_next++ % NF_RIDS] = n;
        if (s_nstolen < NF_RIDS)
            s_nstolen++;
    }
}

static void s_on_listing(uint64_t corr, ab_frame_t pl)
{
    int k = 0;
    while (k < 16 && !(s_listing[k].id == corr && corr))
        k++;
    if (k == 16)
        return;
    if (s_listing[k].agents) {
        Agentbus__AgentList *al = agentbus__agent_list__unpack(NULL, pl.size, pl.data);
        for (size_t i = 0; al && i < al->n_agents; i++)
            s_steal_hex(al->agents[i]->id);
        if (al)
            agentbus__agent_list__free_unpacked(al, NULL);
    } else {
        Agentbus__WorkerList *wl = agentbus__worker_list__unpack(NULL, pl.size, pl.data);
        for (size_t i = 0; wl && i < wl->n_workers; i++)
            s_steal_hex(wl->workers[i]->id);
        if (wl)
            agentbus__worker_list__free_unpacked(wl, NULL);
    }
}

static void s_on_entry(nf_peer_t *p, const ab_frame_t *f, size_t nf)
{
    ab_header_t h;
    ab_frame_t pl;
    if (ab_msg_decode(f, nf, NULL, &h, &pl) != AB_OK)
        return;
    s_kinds_in[h.kind <= AB_KIND_MAX_ ? h.kind : 0]++;
    if (h.kind == AB_KIND_REQUEST) {
        nf_remember(p->held, &p->nheld, h.id);
        nf_seen_add(h.id);
    } else if (h.kind == AB_KIND_REPLY && pl.size) {
        s_on_listing(h.correlation_id, pl);
    }
}

/* Reads one message from S into the peer's state. 1 read, 0 nothing. */
static int s_read_one(nf_peer_t *p, void *s)
{
    zmq_msg_t m[3];
    size_t n = 0;
    int more = 1;
    while (more && n < 3) {
        zmq_msg_init(&m[n]);
        if (zmq_msg_recv(&m[n], s, n ? 0 : ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m[n]);
            break;
        }
        more = zmq_msg_more(&m[n]);
        n++;
    }
    if (n == 0)
        return 0;
    ab_frame_t f[2] = {{zmq_msg_data(&m[0]), zmq_msg_size(&m[0])}, {NULL, 0}};
    if (n > 1)
        f[1] = (ab_frame_t){zmq_msg_data(&m[1]), zmq_msg_size(&m[1])};
    ab_header_t h;
    ab_frame_t pl;
    if (ab_msg_decode(f, n > 2 ? 2 : n, NULL, &h, &pl) == AB_OK && h.kind == AB_KIND_BATCH) {
        ab_batch_reader_t r;
        ab_frame_t ef[2];
        size_t enf;
        s_kinds_in[AB_KIND_BATCH]++;
        if (ab_batch_open(&r, pl.data, pl.size, NULL, NULL) == AB_OK)
            while (ab_batch_next(&r, ef, &enf) == 1)
                s_on_entry(p, ef, enf);
    } else {
        s_on_entry(p, f, n > 2 ? 2 : n);
    }
    for (size_t i = 0; i < n; i++)
        zmq_msg_close(&m[i]);
    return 1;
}

/* Reads what every peer has waiting (bounded), except deaf ones. */
static void s_drain_all(void)
{
    int64_t now = ab_now_ms();
    for (int i = 0; i < s_opt.peers; i++) {
        nf_peer_t *p = &s_peers[i];
        if (now < p->deaf_until_ms)
            continue;
        for (int k = 0; k < 256 && p->sock && s_read_one(p, p->sock); k++)
            ;
        for (int k = 0; k < 256 && p->twin && s_read_one(p, p->twin); k++)
            ;
    }
}

/* --- moves that are not one message ------------------------------------------------- */
static int s_pick_move(int allow_compound)
{
    int total = 0;
    for (int i = 0; i < MV_COUNT_; i++)
        total += nf_avoid[i] ? 0 : s_weight[i];
    for (int tries = 0; tries < 64; tries++) {
        int r = (int)nf_below((uint32_t)total), i = 0;
        for (; i < MV_COUNT_; i++) {
            if (nf_avoid[i])
                continue;
            if ((r -= s_weight[i]) < 0)
                break;
        }
        if (i < MV_COUNT_ && (allow_compound || s_weight[i] > 0)) {
            int compound = i == MV_batch || i == MV_reconnect || i == MV_steal ||
                           i == MV_work || i == MV_deaf;
            if (allow_compound || !compound)
                return i;
        }
    }
    return MV_request;
}

static void s_emit(void *sock, nf_out_t *o)
{
    s_note_out(o);
    s_send(sock, &o->h, o->data, o->len, o->has);
    free(o->heap);
}

/* A valid BATCH of 2..24 messages of the other kinds. */
static void s_do_batch(nf_peer_t *p)
{
    ab_batch_t b;
    ab_batch_init(&b);
    int n = 2 + (int)nf_below(23);
    static nf_out_t o;
    for (int i = 0; i < n; i++) {
        if (!nf_make(s_pick_move(0), p, &o))
            continue;
        uint8_t hb[512];
        static uint8_t ib[512 + 8200];
        size_t hl = ab_header_encode(&o.h, hb, sizeof hb);
        if (hl && o.has && o.len <= 8192 && nf_chance(2)) {
            /* An entry with its payload inline: the whole batch is refused. */
            ab_msg_inline_put(ib, hb, hl, o.data, o.len);
            ab_batch_add(&b, ib, ab_msg_inline_size(hl, o.len), NULL, 0, 0);
        } else if (hl) {
            ab_batch_add(&b, hb, hl, o.data, o.len, o.has);
        }
        s_note_out(&o);
        free(o.heap);
    }
    size_t len;
    const uint8_t *body = ab_batch_body(&b, &len);
    ab_header_t h = ab_header_init(AB_KIND_BATCH);
    if (b.count)
        s_send(p->sock, &h, body, len, 1);
    ab_batch_fini(&b);
}

/* Closes the connection and opens another, mostly with the same routing
 * id, sometimes before the broker noticed the old one was gone. */
static void s_do_reconnect(nf_peer_t *p)
{
    char rid[32];
    size_t len = p->rid_len;
    memcpy(rid, p->rid, len);
    uint64_t inst = p->instance;
    /* What the old connection held: answered later from the new one (a
     * worker back after a reconnect, mostly with the same id, registered
     * again or not), after the broker took it back and maybe re-dispatched. */
    memcpy(p->old, p->held, sizeof p->old);
    p->nold = p->nheld;
    s_peer_close(p);
    s_peer_open(p);
    if (nf_chance(80)) {
        memcpy(p->rid, rid, len);
        p->rid_len = len;
        p->instance = inst;
        zmq_close(p->sock);
        p->sock = s_socket_with_rid(p, rid, len);
    }
}

/* A second connection with a routing id some live connection holds: another
 * raw peer's, or one the broker listed for a worker or an agent. */
static void s_do_steal(nf_peer_t *p)
{
    if (p->twin)
        zmq_close(p->twin);
    if (s_nstolen && nf_chance(50)) {
        int k = (int)nf_below((uint32_t)s_nstolen);
        p->twin = s_socket_with_rid(p, s_stolen[k], s_stolen_len[k]);
    } else {
        nf_peer_t *o = &s_peers[nf_below((uint32_t)s_opt.peers)];
        p->twin = s_socket_with_rid(p, o->rid, o->rid_len);
    }
    /* Say something on it, so the broker acts on the id. */
    static nf_out_t o;
    if (nf_make(nf_chance(50) ? MV_heartbeat : MV_answer, p, &o))
        s_emit(p->twin, &o);
}

/* A worker's whole answer to one request, as a buggy or hostile worker
 * plays it: to one it holds now, one its connection held before a
 * reconnect (taken back, maybe re-dispatched), or one it never held;
 * a few chunks, a final (an ERROR saying the work had begun or not, or a
 * REPLY), sometimes a second final and a chunk after them. */
static void s_do_work(nf_peer_t *p)
{
    /* Mostly REPLY: ERRORs in a row eject the worker (eject-failures), and
     * an ejected one holds nothing. */
    static const uint32_t finals[] = {AB_KIND_ERROR, AB_KIND_REPLY, AB_KIND_REPLY};
    uint32_t r = nf_below(10);
    uint64_t corr = r < 7 && p->nheld ? p->held[nf_below((uint32_t)p->nheld)]
                    : r < 9 && p->nold ? p->old[nf_below((uint32_t)p->nold)]
                                       : (p->answered ? p->answered : nf_below(1000));
    nf_answers.work++;
    static nf_out_t o;
    void *sock = p->twin && nf_chance(10) ? p->twin : p->sock;
    for (uint32_t n = nf_chance(50) ? nf_below(4) : 0; n; n--) {
        nf_answer_to(p, &o, AB_KIND_PARTIAL, corr, 0);
        s_emit(sock, &o);
    }
    nf_answer_to(p, &o, finals[nf_below(3)], corr, nf_chance(50));
    s_emit(sock, &o);
    if (nf_chance(40)) {
        nf_answer_to(p, &o, finals[nf_below(3)], corr, nf_chance(50));
        s_emit(sock, &o);
    }
    if (nf_chance(15)) {
        nf_answer_to(p, &o, AB_KIND_PARTIAL, corr, 0);
        s_emit(sock, &o);
    }
}

static void s_move(void)
{
    nf_peer_t *p = &s_peers[nf_below((uint32_t)s_opt.peers)];
    int mv = s_pick_move(1);
    s_moves[mv]++;
    static nf_out_t o;
    switch (mv) {
    case MV_batch: s_do_batch(p); return;
    case MV_reconnect: s_do_reconnect(p); return;
    case MV_steal: s_do_steal(p); return;
    case MV_work: s_do_work(p); return;
    case MV_deaf: {
        /* A peer hears for 5 s between two deaf spells: at thousands of
         * moves a second, the spells followed each other, and the peers
         * were deaf nearly all the time (workers learnt of few requests). */
        int64_t now = ab_now_ms(), until = now + 200 + nf_below(3000);
        if (now >= p->deaf_until_ms + 5000)
            p->deaf_until_ms = until;
        return;
    }
    default:
        if (nf_make(mv, p, &o))
            s_emit(p->twin && nf_chance(30) ? p->twin : p->sock, &o);
    }
}

/* --- the run ------------------------------------------------------------------------- */
static int s_usage(void)
{
    fprintf(stderr, "usage: netfuzz [--seed N] [--seconds S] [--peers K] [--avoid move,...]\n"
                    "               [--broker-bin PATH | --endpoint EP | --linked | --line]\n"
                    "               [--verbose]\n"
                    "moves:");
    for (int i = 0; i < MV_COUNT_; i++)
        fprintf(stderr, " %s", s_move_names[i]);
    fprintf(stderr, "\n");
    return 2;
}

static int s_avoid(char *list)
{
    for (char *t = strtok(list, ","); t; t = strtok(NULL, ",")) {
        int i = 0;
        while (i < MV_COUNT_ && strcmp(t, s_move_names[i]) != 0)
            i++;
        if (i == MV_COUNT_)
            return -1;
        nf_avoid[i] = 1;
    }
    return 0;
}

static int s_parse(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--verbose")) {
            s_opt.verbose = 1;
            continue;
        }
        if (!strcmp(a, "--linked") || !strcmp(a, "--line")) {
            s_opt.linked = !strcmp(a, "--line") ? 2 : s_opt.linked > 1 ? 2 : 1;
            continue;
        }
        if (!v)
            return -1;
        i++;
        if (!strcmp(a, "--seed"))
            s_opt.seed = strtoull(v, NULL, 0);
        else if (!strcmp(a, "--seconds"))
            s_opt.seconds = atof(v);
        else if (!strcmp(a, "--peers"))
            s_opt.peers = atoi(v);
        else if (!strcmp(a, "--avoid")) {
            if (s_avoid(argv[i]) != 0)
                return -1;
        } else if (!strcmp(a, "--broker-bin"))
            s_opt.broker_bin = v;
        else if (!strcmp(a, "--endpoint"))
            s_opt.endpoint = v;
        else
            return -1;
    }
    if (!s_opt.peers) /* linked: each of the four keys at each broker */
        s_opt.peers = s_opt.linked ? 4 * (s_opt.linked + 1) : 6;
    if (s_opt.linked && s_opt.endpoint)
        return -1;
    return s_opt.peers >= 1 && s_opt.peers <= NF_MAX_PEERS && s_opt.seconds > 0 ? 0 : -1;
}

/* NULL while every promise holds, else what broke (in BUF). */
static const char *s_check(char *buf, size_t cap, int64_t now)
{
    const char *dead = s_broker_dead(buf, cap);
    if (dead)
        return dead;
    if (s_good.wrong) {
        snprintf(buf, cap, "the good client got a wrong answer: %s", s_good.first_wrong);
        return buf;
    }
    if (now - s_good.last_ok_ms > 30000) {
        snprintf(buf, cap, "the good client got no correct answer for 30 s (%ld errors)",
                 (long)s_good.errors);
        return buf;
    }
    return NULL;
}

/* The broker at EP's answer to the CONTROL query WHAT, unpacked by
 * UNPACK (NULL when it failed; *RC says why). */
static void *s_query(const char *ep, const char *what, int *rc,
                     void *(*unpack)(size_t, const uint8_t *))
{
    ab_client_t *c = s_client_at(ep);
    void *data = NULL;
    size_t len = 0;
    *rc = c ? ab_client_control(c, what, 10000, &data, &len) : AB_EINVAL;
    void *out = *rc == AB_OK ? unpack(len, data) : NULL;
    ab_free(data);
    ab_client_destroy(&c);
    return out;
}

static void *s_unpack_peers(size_t len, const uint8_t *data)
{
    return agentbus__peer_list__unpack(NULL, len, data);
}

static void *s_unpack_stats(size_t len, const uint8_t *data)
{
    return agentbus__stats__unpack(NULL, len, data);
}

/* --linked: prints the links of the broker at EP (WHO); what failed when
 * its link to FAR (NULL: not checked) answered no request. */
static const char *s_final_links(const char *ep, const char *who, const char *far, char *buf,
                                 size_t cap)
{
    int rc;
    Agentbus__PeerList *pl = s_query(ep, "peers", &rc, s_unpack_peers);
    if (!pl) {
        snprintf(buf, cap, "the %s did not answer a peers CONTROL (%s)", who, ab_strerror(rc));
        return buf;
    }
    uint64_t far_answered = 0;
    for (size_t i = 0; i < pl->n_peers; i++) {
        const Agentbus__PeerInfo *pi = pl->peers[i];
        printf("netfuzz: %s link %s: %s, forwarded %llu, received %llu, answered %llu, taken "
               "back %llu, up %llu times\n",
               who, pi->name[0] ? pi->name : "(no name)", pi->state,
               (unsigned long long)pi->forwarded, (unsigned long long)pi->received,
               (unsigned long long)pi->answered, (unsigned long long)pi->failed,
               (unsigned long long)pi->ups);
        if (far && !strcmp(pi->name, far))
            far_answered = pi->answered;
    }
    agentbus__peer_list__free_unpacked(pl, NULL);
    if (far && !far_answered) {
        snprintf(buf, cap, "the %s's link to %s answered no request: the run tested no link", who,
                 far);
        return buf;
    }
    return NULL;
}

/* The broker at EP (WHO) still answers `stats`: prints some of it. NULL
 * or what failed. */
static const char *s_final_stats(const char *ep, const char *who, char *buf, size_t cap)
{
    int rc;
    Agentbus__Stats *st = s_query(ep, "stats", &rc, s_unpack_stats);
    if (!st) {
        snprintf(buf, cap, "the %s did not answer a stats CONTROL (%s)", who, ab_strerror(rc));
        return buf;
    }
    printf("netfuzz: %s stats: msgs_in %llu, requests %llu, replies %llu, dropped %llu "
           "(duplicates %llu), late %llu, redispatched %llu, malformed %llu, batches_in %llu, "
           "msgs_sent %llu, published %llu, pending %llu\n",
           who, (unsigned long long)st->msgs_in, (unsigned long long)st->requests,
           (unsigned long long)st->replies, (unsigned long long)st->replies_dropped,
           (unsigned long long)st->duplicates_dropped, (unsigned long long)st->late_replies,
           (unsigned long long)st->redispatched,
           (unsigned long long)st->malformed, (unsigned long long)st->batches_in,
           (unsigned long long)st->msgs_sent, (unsigned long long)st->published,
           (unsigned long long)st->pending);
    agentbus__stats__free_unpacked(st, NULL);
    return NULL;
}

static void s_print_summary(uint64_t moves, double secs)
{
    printf("netfuzz: %llu moves in %.1f s:", (unsigned long long)moves, secs);
    for (int i = 0; i < MV_COUNT_; i++)
        printf(" %s=%llu", s_move_names[i], (unsigned long long)s_moves[i]);
    printf("\nnetfuzz: received:");
    for (int k = 1; k <= AB_KIND_MAX_; k++)
        printf(" %s=%llu", ab_kind_name((uint32_t)k), (unsigned long long)s_kinds_in[k]);
    printf("\nnetfuzz: answers: %llu to a request held, %llu ERROR NON_IDEMPOTENT, %llu again to "
           "the id answered last, %llu to one held before a reconnect, %llu whole answers (work)",
           (unsigned long long)nf_answers.to_held, (unsigned long long)nf_answers.begun,
           (unsigned long long)nf_answers.again, (unsigned long long)nf_answers.stale,
           (unsigned long long)nf_answers.work);
    printf("\nnetfuzz: good client: %ld correct, %ld errors, %ld wrong\n", (long)s_good.ok,
           (long)s_good.errors, (long)s_good.wrong);
    for (int i = 0; i < s_opt.linked; i++)
        printf("netfuzz: %s: stopped %u times, killed %u, its worker killed %u\n", s_rb[i].who,
               s_rb[i].stops, s_rb[i].kills, s_rb[i].worker_kills);
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

/* The far side's next fault when its time has come: to the far broker,
 * or with --line to the middle one or the far one. */
static void s_fault_step(int64_t now)
{
    if (!s_opt.linked)
        return;
    if (s_fault.stopped && now >= s_fault.cont_ms) {
        kill(s_fault.stopped->pid, SIGCONT);
        s_fault.stopped = NULL;
    }
    if (s_fault.stopped || now < s_fault.next_ms)
        return;
    for (int i = 0; i < s_opt.linked; i++)
        if (s_rb[i].pid <= 0)
            return; /* it died: s_check says so */
    nf_broker_t *rb = &s_rb[s_opt.linked > 1 ? s_fault_below((uint32_t)s_opt.linked) : 0];
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
    if (s_opt.verbose)
        printf("netfuzz: %s: %s\n", rb->who, r < 5 ? "stopped" : r < 7 ? "killed"
                                                                      : "its worker killed");
    s_fault.next_ms = now + 3000 + s_fault_below(7000);
}

/* Plays moves until the time is up or a promise breaks. */
static const char *s_play(char *buf, size_t cap, uint64_t *moves)
{
    int64_t start = ab_now_ms(), end = start + (int64_t)(s_opt.seconds * 1000);
    int64_t next_check = 0, next_report = start + 10000;
    const char *fail = NULL;
    s_fault.rng = s_opt.seed ^ 0x5eed5eed5eed5eedull;
    s_fault.next_ms = start + 3000 + s_fault_below(7000);
    while (!fail && ab_now_ms() < end) {
        for (int k = 0; k < 16; k++, (*moves)++)
            s_move();
        s_drain_all();
        usleep(1000); /* let the broker breathe: state, not a flood, is the point */
        int64_t now = ab_now_ms();
        if (now >= next_check) {
            fail = s_check(buf, cap, now);
            next_check = now + 100;
        }
        s_fault_step(now);
        if (s_opt.verbose && now >= next_report) {
            printf("netfuzz: %.0f s: %llu moves; good client %ld correct, %ld errors\n",
                   (double)(now - start) / 1000.0, (unsigned long long)*moves, (long)s_good.ok,
                   (long)s_good.errors);
            next_report = now + 10000;
        }
    }
    if (s_fault.stopped) {
        kill(s_fault.stopped->pid, SIGCONT);
        s_fault.stopped = NULL;
    }
    return fail;
}

/* SIGTERM to the broker *PID (WHO, its log LOG): NULL when it exits 0
 * within 10 s, or when its exit failed on a leak report of libzmq's loss
 * at close alone (nf_lsan.h: a linked broker still sending to its link
 * socket), which is said and not counted. */
static const char *s_term_clean(pid_t *pid, const char *who, const char *log, char *buf,
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
        s_stop(pid);
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

static const char *s_finish(char *buf, size_t cap)
{
    for (int i = 0; i < s_opt.peers; i++)
        s_peer_close(&s_peers[i]);
    const char *fail = s_check(buf, cap, ab_now_ms());
    if (!fail)
        fail = s_final_stats(s_ep, "broker", buf, cap);
    for (int i = 0; !fail && i < s_opt.linked; i++)
        fail = s_final_stats(s_rb[i].ep, s_rb[i].who, buf, cap);
    /* each link toward the far broker answered: with --line, the middle
     * broker's link to the far one carried the near one's requests too */
    if (!fail && s_opt.linked)
        fail = s_final_links(s_ep, "broker", s_rb[0].name, buf, cap);
    for (int i = 0; !fail && i < s_opt.linked; i++)
        fail = s_final_links(s_rb[i].ep, s_rb[i].who,
                             i + 1 < s_opt.linked ? s_rb[i + 1].name : NULL, buf, cap);
    s_stop(&s_worker_pid);
    for (int i = 0; i < s_opt.linked; i++)
        s_stop(&s_rb[i].worker_pid);
    /* clean exits: a leak report or a recount's difference fails them too */
    for (int i = s_opt.linked - 1; !fail && i >= 0; i--)
        fail = s_term_clean(&s_rb[i].pid, s_rb[i].who, s_rb[i].log, buf, cap);
    if (!fail)
        fail = s_term_clean(&s_broker_pid, "broker", s_logpath, buf, cap);
    return fail;
}

static int s_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void s_replay_line(void)
{
    size_t n = (size_t)snprintf(s_replay, sizeof s_replay, "netfuzz --seed %llu --seconds %g",
                                (unsigned long long)s_opt.seed, s_opt.seconds);
    if (s_opt.linked)
        n += (size_t)snprintf(s_replay + n, sizeof s_replay - n,
                              s_opt.linked > 1 ? " --line" : " --linked");
    if (s_opt.peers != (s_opt.linked ? 4 * (s_opt.linked + 1) : 6))
        n += (size_t)snprintf(s_replay + n, sizeof s_replay - n, " --peers %d", s_opt.peers);
    const char *sep = " --avoid ";
    for (int i = 0; i < MV_COUNT_ && n < sizeof s_replay - 32; i++)
        if (nf_avoid[i]) {
            n += (size_t)snprintf(s_replay + n, sizeof s_replay - n, "%s%s", sep, s_move_names[i]);
            sep = ",";
        }
}

int main(int argc, char **argv)
{
    if (s_parse(argc, argv) != 0)
        return s_usage();
    if (!s_opt.seed)
        s_opt.seed = (ab_now_us() ^ ((uint64_t)getpid() << 32)) | 1;
    nf_rng = s_opt.seed;
    s_replay_line();
    printf("netfuzz: seed %llu (replay: %s)\n", (unsigned long long)s_opt.seed, s_replay);
    fflush(stdout);
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    char buf[512];
    const char *fail = NULL;
    uint64_t moves = 0;
    int64_t t0 = ab_now_ms();
    s_ctx = zmq_ctx_new();
    if (s_start_processes() != 0 || s_wait_ready() != 0) {
        fail = s_broker_dead(buf, sizeof buf);
        fail = fail ? fail : "broker or echo worker did not come up";
    } else {
        s_good.last_ok_ms = ab_now_ms();
        pthread_create(&s_good.th, NULL, s_good_main, NULL);
        for (int i = 0; i < s_opt.peers; i++)
            s_peer_open(&s_peers[i]);
        fail = s_play(buf, sizeof buf, &moves);
        s_good.stop = 1;
        if (!fail) { /* after a failure it may wait long on a dead broker */
            pthread_join(s_good.th, NULL);
            fail = s_finish(buf, sizeof buf);
        }
    }
    s_print_summary(moves, (double)(ab_now_ms() - t0) / 1000.0);
    s_stop(&s_worker_pid);
    for (int i = 0; i < s_opt.linked; i++)
        s_stop(&s_rb[i].worker_pid);
    if (fail) {
        fprintf(stderr, "netfuzz: FAILED: %s\nnetfuzz: replay: %s\n", fail, s_replay);
        s_print_log(s_logpath);
        for (int i = 0; i < s_opt.linked; i++)
            s_print_log(s_rb[i].log);
    }
    s_stop(&s_broker_pid);
    for (int i = 0; i < s_opt.linked; i++)
        s_stop(&s_rb[i].pid);
    for (int i = 0; i < s_opt.peers; i++)
        s_peer_close(&s_peers[i]);
    zmq_ctx_term(s_ctx);
    if (!fail) { /* a failed run keeps its logs for the developer */
        nftw(s_dir, s_rm_one, 8, FTW_DEPTH | FTW_PHYS);
        printf("netfuzz: passed (seed %llu)\n", (unsigned long long)s_opt.seed);
    }
    return fail ? 1 : 0;
}
