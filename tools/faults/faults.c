/*
 * agentbus-faults - measures failure detection and counts lost requests
 * under fault injection, with real processes.
 *
 * It starts a broker on a free loopback port and a backup worker, then for
 * each run starts a victim worker, lets it take part in a steady request
 * load, and kills it (SIGKILL) or stops it (SIGSTOP, later SIGCONT and
 * SIGKILL). The detection time is from the signal to the broker's directory
 * event that takes the victim out of dispatch ("leave", or a health change
 * to dead), received through a directory subscription. Every request of the
 * load is tracked by its own slot: at the end, requests never answered
 * (lost) and answered more than once are counted. Both must be 0. First
 * it times 1000 lookups (ab_discover: one broker round trip).
 *
 *   agentbus-faults [--runs N] [--mode kill9|sigstop|both] [--floor-ms N]
 *                   [--bin-dir DIR]
 */
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "tl_clock.h"
#include "tl_args.h"
#include "tl_port.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_REQ 200000
#define WINDOW 32

static char s_bin_dir[PATH_MAX];
static char s_ep[64];

static pid_t s_spawn(const char *prog, const char *const *args)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", s_bin_dir, prog);
    const char *argv[32];
    int n = 0;
    argv[n++] = path;
    for (; args[n - 1] && n < 31; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(path, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

static void s_reap(pid_t pid)
{
    for (int i = 0; i < 500; i++) { /* 5 s, then SIGKILL */
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return;
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/* --- load: every request has a slot -------------------------------------------- */
typedef struct {
    unsigned char finals;
    signed char status;
} s_slot_t;

static s_slot_t *s_slots;
static int s_sent, s_answered, s_ok, s_errors, s_twice;

static void s_on_reply(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    if (!ev->final)
        return;
    s_slot_t *s = arg;
    if (s->finals++) {
        s_twice++;
        return;
    }
    s->status = (signed char)ev->status;
    s_answered++;
    if (ev->status == AB_OK)
        s_ok++;
    else
        s_errors++;
}

static void s_pump(ab_client_t *c, int ms)
{
    int64_t end = tl_now_ms() + ms;
    do {
        while (s_sent < MAX_REQ && s_sent - s_answered < WINDOW &&
               ab_client_request_start(c, "faults", "ping", 4,
                                       &(ab_request_opts_t){.timeout_ms = 30000}, s_on_reply,
                                       &s_slots[s_sent], NULL) == AB_OK)
            s_sent++;
        ab_client_poll(c, 5);
    } while (tl_now_ms() < end);
}

/* --- detection: directory events -------------------------------------------------- */
static char s_victim[32];
static int64_t s_out_ms; /* when the victim left dispatch (0: not yet) */
static char s_how[16];

static void s_on_dir(ab_client_t *c, const ab_dir_event_t *ev, void *arg)
{
    (void)c;
    (void)arg;
    if (s_out_ms || strcmp(ev->worker->name, s_victim) != 0)
        return;
    if (strcmp(ev->change, "leave") == 0 || strcmp(ev->worker->health, "dead") == 0) {
        s_out_ms = tl_now_ms();
        snprintf(s_how, sizeof s_how, "%s", strcmp(ev->change, "leave") == 0 ? "disconnect"
                                                                              : "suspicion");
    }
}

static int s_healthy(ab_client_t *c, const char *name)
{
    ab_directory_t *d = NULL;
    int yes = 0;
    if (ab_discover(c, "faults", 2000, &d) != AB_OK)
        return 0;
    for (size_t i = 0; i < d->n_workers; i++)
        yes |= !strcmp(d->workers[i].name, name) && !strcmp(d->workers[i].health, "healthy");
    ab_directory_destroy(&d);
    return yes;
}

static int s_cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void s_summary(const char *what, int64_t *v, int n, const char (*how)[16])
{
    if (n == 0)
        return;
    int64_t s[64];
    memcpy(s, v, (size_t)n * sizeof *v);
    qsort(s, (size_t)n, sizeof *s, s_cmp);
    int susp = 0;
    for (int i = 0; i < n; i++)
        susp += !strcmp(how[i], "suspicion");
    printf("%-8s detection over %d runs: median %lld ms, min %lld ms, max %lld ms "
           "(by suspicion %d, by disconnect %d)\n",
           what, n, (long long)s[n / 2], (long long)s[0], (long long)s[n - 1], susp, n - susp);
}

/* The command line into *RUNS, *FLOOR_MS, *MODE and s_bin_dir. 0, 1 after
 * --help/--version, -1 after a message on a bad one. */
static int s_parse(int argc, char **argv, long *runs, long *floor_ms, const char **mode)
{
    enum { O_HELP = 1, O_VERSION, O_RUNS, O_FLOOR, O_MODE, O_BINDIR };
    static const tl_opt_t opts[] = {
        {"help", 'h', TL_NOVAL, O_HELP}, {"version", 0, TL_NOVAL, O_VERSION},
        {"runs", 0, TL_VAL, O_RUNS},     {"floor-ms", 0, TL_VAL, O_FLOOR},
        {"mode", 0, TL_VAL, O_MODE},     {"bin-dir", 0, TL_VAL, O_BINDIR},
        {NULL, 0, 0, 0},
    };
    tl_parser_t p;
    tl_parser_init(&p, argc, argv, 1);
    int id;
    while ((id = tl_next(&p, opts)) != TL_END) {
        const char *v = p.value;
        int ok = 1;
        if (id == O_HELP) {
            printf("Usage: %s [--runs N] [--mode kill9|sigstop|both] [--floor-ms N] "
                   "[--bin-dir DIR]\n\n"
                   "Starts a broker and workers on a free loopback port, kills (-9) or stops\n"
                   "(SIGSTOP) a worker under steady load N times, and prints the median time\n"
                   "until the broker takes it out of dispatch, and the requests lost or\n"
                   "answered twice (both must be 0). --floor-ms: the broker's\n"
                   "--health-floor-ms (default 1000, also the workers' first interval).\n"
                   "Exit status 1 if a request was lost, answered twice or failed, or a\n"
                   "fault went undetected.\n",
                   argv[0]);
            return 1;
        } else if (id == O_VERSION) {
            tl_print_version("agentbus-faults", ab_version());
            return 1;
        } else if (id == O_RUNS) {
            ok = tl_parse_long(v, 1, 50, runs) == 0;
        } else if (id == O_FLOOR) {
            ok = tl_parse_long(v, 100, 60000, floor_ms) == 0;
        } else if (id == O_MODE) {
            ok = !strcmp(v, "kill9") || !strcmp(v, "sigstop") || !strcmp(v, "both");
            *mode = v;
        } else if (id == O_BINDIR) {
            snprintf(s_bin_dir, sizeof s_bin_dir, "%s", v);
        } else {
            fprintf(stderr, "agentbus-faults: %s%s (see --help)\n",
                    id == TL_ARG ? "unexpected argument " : p.err, id == TL_ARG ? p.arg : "");
            return -1;
        }
        if (!ok) {
            fprintf(stderr, "agentbus-faults: bad value '%s' for --%s (see --help)\n", v,
                    p.opt->name);
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    long runs = 7, floor_ms = 1000;
    const char *mode = "both";
    char self[PATH_MAX];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    self[sl > 0 ? sl : 0] = '\0';
    snprintf(s_bin_dir, sizeof s_bin_dir, "%s", dirname(self));
    int prc = s_parse(argc, argv, &runs, &floor_ms, &mode);
    if (prc != 0)
        return prc > 0 ? 0 : 2;
    /* A --bin-dir without the programs: their exec failed in the child and
     * this waited minutes, silent, for a broker that never came. */
    const char *progs[] = {"agentbus-broker", "agentbus-worker"};
    for (int i = 0; i < 2; i++) {
        char path[PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/%s", s_bin_dir, progs[i]);
        if (access(path, X_OK) != 0) {
            fprintf(stderr, "agentbus-faults: cannot run %s: %s (see --bin-dir)\n", path,
                    strerror(errno));
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    s_slots = calloc(MAX_REQ, sizeof *s_slots);
    int port = tl_free_port();
    if (!s_slots || port < 0)
        return 1;
    char bind_arg[64], floor_arg[32], hb_arg[32];
    snprintf(s_ep, sizeof s_ep, "tcp://127.0.0.1:%d", port);
    snprintf(bind_arg, sizeof bind_arg, "%s", s_ep);
    snprintf(floor_arg, sizeof floor_arg, "%ld", floor_ms);
    snprintf(hb_arg, sizeof hb_arg, "%ld", floor_ms < 60000 ? floor_ms : 60000);
    pid_t broker = s_spawn("agentbus-broker", (const char *[]){"--bind", bind_arg,
                                                                "--health-floor-ms", floor_arg,
                                                                "--startup-grace-ms", "0",
                                                                NULL});
    pid_t backup = s_spawn("agentbus-worker", (const char *[]){"--broker", s_ep, "--service",
                                                                "faults", "--name", "backup",
                                                                "--capacity", "16", "--delay-ms",
                                                                "5", "--heartbeat-ms", hb_arg,
                                                                NULL});
    ab_options_t *o = ab_options_new();
    ab_client_t *c = NULL;
    ab_options_set_endpoint(o, s_ep);
    int rc = ab_client_new(&c, o);
    ab_options_destroy(&o);
    for (int i = 0; rc == AB_OK && i < 100 && !s_healthy(c, "backup"); i++)
        usleep(50000);
    if (rc != AB_OK || ab_client_watch(c, s_on_dir, NULL, 5000) != AB_OK) {
        fprintf(stderr, "agentbus-faults: broker not reachable at %s\n", s_ep);
        kill(broker, SIGKILL);
        kill(backup, SIGKILL);
        return 1;
    }
    /* Discovery: one round trip each, timed while nothing else runs. */
    static int64_t lk[1000];
    for (int i = 0; i < 1000; i++) {
        ab_directory_t *d = NULL;
        uint64_t t = tl_now_us();
        ab_discover(c, NULL, 2000, &d);
        lk[i] = (int64_t)(tl_now_us() - t);
        ab_directory_destroy(&d);
    }
    qsort(lk, 1000, sizeof lk[0], s_cmp);
    printf("ab_discover round trip over 1000 lookups: p50 %lld us, p99 %lld us\n",
           (long long)lk[500], (long long)lk[990]);
    int64_t kill9[64], stop[64];
    char how9[64][16], hows[64][16];
    int n9 = 0, ns = 0, undetected = 0;
    srand((unsigned)getpid());
    for (long r = 0; r < 2 * runs; r++) {
        int is_stop = r % 2 == 1;
        if ((is_stop && !strcmp(mode, "kill9")) || (!is_stop && !strcmp(mode, "sigstop")))
            continue;
        snprintf(s_victim, sizeof s_victim, "victim%ld", r);
        pid_t v = s_spawn("agentbus-worker", (const char *[]){"--broker", s_ep, "--service",
                                                               "faults", "--name", s_victim,
                                                               "--capacity", "8", "--delay-ms",
                                                               "20", "--heartbeat-ms", hb_arg,
                                                               NULL});
        for (int i = 0; i < 200 && !s_healthy(c, s_victim); i++)
            s_pump(c, 20);
        /* Under load for a while, then the signal at a random point of its
         * heartbeat cycle. */
        s_pump(c, 500 + rand() % (int)floor_ms);
        s_out_ms = 0;
        int64_t t0 = tl_now_ms();
        kill(v, is_stop ? SIGSTOP : SIGKILL);
        while (!s_out_ms && tl_now_ms() - t0 < 30000)
            s_pump(c, 1);
        int64_t dt = s_out_ms ? s_out_ms - t0 : -1;
        undetected += !s_out_ms;
        printf("run %2ld %-7s detected in %5lld ms (%s)\n", r / 2 + 1,
               is_stop ? "SIGSTOP" : "kill -9", (long long)dt, s_out_ms ? s_how : "not detected");
        fflush(stdout);
        if (s_out_ms && is_stop) {
            snprintf(hows[ns], sizeof hows[ns], "%s", s_how);
            stop[ns++] = dt;
        } else if (s_out_ms) {
            snprintf(how9[n9], sizeof how9[n9], "%s", s_how);
            kill9[n9++] = dt;
        }
        s_pump(c, 300);
        if (is_stop) { /* back with late replies (dropped as duplicates), then gone */
            kill(v, SIGCONT);
            s_pump(c, 500);
            kill(v, SIGKILL);
        }
        waitpid(v, NULL, 0);
        s_pump(c, 200);
    }
    /* Let every request still in flight finish (or reach its deadline). */
    int64_t end = tl_now_ms() + 35000;
    while (s_answered < s_sent && tl_now_ms() < end)
        ab_client_poll(c, 50);
    int lost = s_sent - s_answered;
    printf("\n");
    s_summary("kill -9", kill9, n9, how9);
    s_summary("SIGSTOP", stop, ns, hows);
    void *buf = NULL;
    size_t len = 0;
    unsigned long long redis = 0, dups = 0, exhausted = 0;
    if (ab_client_control(c, "stats", 2000, &buf, &len) == AB_OK) {
        Agentbus__Stats *st = agentbus__stats__unpack(NULL, len, buf);
        if (st) {
            redis = st->redispatched;
            dups = st->duplicates_dropped;
            exhausted = st->retries_exhausted;
            agentbus__stats__free_unpacked(st, NULL);
        }
        ab_free(buf);
    }
    printf("requests %d: answered %d (OK %d, errors %d), lost %d, answered twice %d\n", s_sent,
           s_answered, s_ok, s_errors, lost, s_twice);
    printf("broker: redispatched %llu, duplicates dropped %llu, retries exhausted %llu\n", redis,
           dups, exhausted);
    ab_client_destroy(&c);
    kill(backup, SIGTERM);
    s_reap(backup);
    kill(broker, SIGTERM);
    s_reap(broker);
    free(s_slots);
    /* Exit status for scripts and the smoke test: every fault detected,
     * nothing lost, nothing answered twice, no errors. */
    return lost == 0 && s_twice == 0 && s_errors == 0 && undetected == 0 ? 0 : 1;
}
