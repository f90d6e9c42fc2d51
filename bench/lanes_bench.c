/*
 * agentbus-lanes-bench - one interactive agent beside 50 batch agents on a
 * service with 4 slots (issue 16, docs/bench.md "Priority lanes").
 *
 * Phases, all in one run, each against a fresh broker: the interactive agent
 * alone (idle), then with the batch agents keeping every slot busy, first
 * all in one lane (no priorities: fair queuing only), then interactive and
 * batch in their lanes, and, with --old-broker-bin, the same load on a broker
 * without lanes (FIFO). The backend is agentbus-worker's echo with a delay
 * (--backend echo) or ollama-sim behind an Ollama worker (--backend ollama).
 * Reported: the interactive agent's p50/p95/p99, in ms and in service times,
 * and how busy the 4 slots were (sampled from the broker's free credit).
 */
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "bench_util.h"
#include "tl_args.h"
#include "tl_clock.h"
#include "tl_hist.h"
#include "tl_port.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

typedef struct {
    const char *broker_bin, *old_broker_bin, *worker_bin, *sim_bin, *backend;
    int batch_agents, slots, delay_ms, window;
    double seconds;
} s_opts_t;

typedef struct {
    tl_hist_t lat;
    uint64_t ok, failed;
    double busy_pct;
} s_phase_t;

static pid_t s_pids[8];
static int s_npids;

static pid_t s_spawn(const char *const *argv)
{
    pid_t parent = getpid(), pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        if (!freopen("/dev/null", "w", stdout) || !freopen("/dev/null", "w", stderr))
            _exit(1);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    if (pid > 0)
        s_pids[s_npids++] = pid;
    return pid;
}

static void s_stop_all(void)
{
    bu_stop_pids(s_pids, s_npids);
    s_npids = 0;
}

/* A request's payload: empty for echo; an InferenceRequest for ollama. */
static size_t s_payload(const s_opts_t *o, uint64_t n, uint8_t *buf, size_t cap)
{
    if (strcmp(o->backend, "ollama") != 0)
        return (size_t)snprintf((char *)buf, cap, "req %llu", (unsigned long long)n);
    char prompt[64];
    snprintf(prompt, sizeof prompt, "question %llu", (unsigned long long)n);
    Agentbus__GenerateRequest g = AGENTBUS__GENERATE_REQUEST__INIT;
    g.model = "m";
    g.prompt = prompt;
    g.has_stream_case = AGENTBUS__GENERATE_REQUEST__HAS_STREAM_STREAM;
    g.stream = 0;
    Agentbus__InferenceRequest r = AGENTBUS__INFERENCE_REQUEST__INIT;
    r.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_GENERATE;
    r.generate = &g;
    size_t n_ = agentbus__inference_request__get_packed_size(&r);
    if (n_ > cap)
        return 0;
    return agentbus__inference_request__pack(&r, buf);
}

static ab_client_t *s_client(const char *ep, const char *name)
{
    ab_options_t *opt = ab_options_new();
    ab_options_set_endpoint(opt, ep);
    ab_options_set_name(opt, name);
    ab_client_t *c = NULL;
    ab_client_new(&c, opt);
    ab_options_destroy(&opt);
    return c;
}

/* --- the batch agents: one thread, each agent WINDOW requests in flight ------- */
typedef struct {
    const s_opts_t *o;
    const char *ep;
    uint32_t prio;
    volatile int stop;
    uint64_t ok, failed;
} s_batch_t;

static void s_batch_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    s_batch_t *b = arg;
    if (ev->final)
        ev->status == AB_OK ? b->ok++ : b->failed++;
}

static void *s_batch_main(void *arg)
{
    s_batch_t *b = arg;
    int n = b->o->batch_agents;
    ab_client_t **cl = calloc((size_t)n, sizeof *cl);
    uint8_t buf[256];
    uint64_t seq = 0;
    for (int i = 0; i < n && cl; i++) {
        char name[32];
        snprintf(name, sizeof name, "batch-%d", i);
        cl[i] = s_client(b->ep, name);
    }
    const char *model = strcmp(b->o->backend, "ollama") == 0 ? "m" : NULL;
    while (!b->stop && cl) {
        for (int i = 0; i < n; i++) {
            if (!cl[i])
                continue;
            while (ab_client_pending(cl[i]) < (size_t)b->o->window) {
                size_t len = s_payload(b->o, seq++, buf, sizeof buf);
                ab_request_opts_t ro = {.timeout_ms = 600000, .priority = b->prio, .model = model};
                if (ab_client_request_start(cl[i], "lanes", buf, len, &ro, s_batch_cb, b, NULL))
                    break;
            }
            ab_client_poll(cl[i], 0);
        }
        usleep(1000);
    }
    for (int i = 0; i < n && cl; i++)
        ab_client_destroy(&cl[i]);
    free(cl);
    return NULL;
}

/* Fraction of the service's slots held, sampled once. */
static double s_busy(ab_client_t *ctl)
{
    void *buf = NULL;
    size_t len = 0;
    double busy = -1;
    if (ab_client_control(ctl, "services", 2000, &buf, &len) != AB_OK)
        return -1;
    Agentbus__ServiceList *sl = agentbus__service_list__unpack(NULL, len, buf);
    ab_free(buf);
    for (size_t i = 0; sl && i < sl->n_services; i++)
        if (!strcmp(sl->services[i]->name, "lanes") && sl->services[i]->capacity)
            busy = 1.0 - (double)sl->services[i]->free_credit / sl->services[i]->capacity;
    agentbus__service_list__free_unpacked(sl, NULL);
    return busy;
}

static void s_one_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    int *pair = arg;
    if (ev->final)
        pair[0] = 1, pair[1] = ev->status;
}

/* The interactive agent: one request at a time for SECONDS, with a random
 * pause of up to one service time between them (so it lands at any point
 * of the slots' work); the slots' use is sampled after each answer. */
static void s_interactive(const s_opts_t *o, const char *ep, uint32_t prio, s_phase_t *ph)
{
    ab_client_t *c = s_client(ep, "voice"), *ctl = s_client(ep, NULL);
    uint8_t buf[256];
    double busy_sum = 0;
    int busy_n = 0;
    const char *model = strcmp(o->backend, "ollama") == 0 ? "m" : NULL;
    int64_t end = tl_now_ms() + (int64_t)(o->seconds * 1000);
    for (uint64_t n = 0; c && ctl && tl_now_ms() < end; n++) {
        size_t len = s_payload(o, 1000000000ull + n, buf, sizeof buf);
        ab_request_opts_t ro = {.timeout_ms = 600000, .priority = prio, .model = model};
        int pair[2] = {0, 0};
        uint64_t t0 = tl_now_us();
        if (ab_client_request_start(c, "lanes", buf, len, &ro, s_one_cb, pair, NULL) != AB_OK)
            break;
        while (!pair[0])
            ab_client_poll(c, 5);
        if (pair[1] == AB_OK) {
            tl_hist_record(&ph->lat, tl_now_us() - t0);
            ph->ok++;
        } else {
            ph->failed++;
        }
        double b = s_busy(ctl);
        if (b >= 0)
            busy_sum += b, busy_n++;
        usleep((useconds_t)(rand() % (o->delay_ms * 1000 + 1)));
    }
    ph->busy_pct = busy_n ? 100.0 * busy_sum / busy_n : 0;
    ab_client_destroy(&c);
    ab_client_destroy(&ctl);
}

/* Broker BIN and the backend on a free port; waits until the service has
 * its worker. 0 or -1. */
static int s_start(const s_opts_t *o, const char *bin, char *ep, size_t cap)
{
    char port[16], bind[64], url[64], sport[16], model[160], par[16], cap_s[16], delay[16];
    snprintf(port, sizeof port, "%d", tl_free_port());
    snprintf(ep, cap, "tcp://127.0.0.1:%s", port);
    snprintf(bind, sizeof bind, "%s", ep);
    const char *bargv[] = {bin, "--bind", bind, "--log-level", "error", "--cache-l1-bytes", "0",
                           "--startup-grace-ms", "0", NULL};
    if (s_spawn(bargv) < 0)
        return -1;
    snprintf(cap_s, sizeof cap_s, "%d", o->slots);
    snprintf(delay, sizeof delay, "%d", o->delay_ms);
    if (strcmp(o->backend, "ollama") == 0) {
        snprintf(sport, sizeof sport, "%d", tl_free_port());
        snprintf(url, sizeof url, "http://127.0.0.1:%s", sport);
        snprintf(par, sizeof par, "%d", o->slots);
        /* One loaded model whose answer takes about delay-ms: 10 tokens. */
        snprintf(model, sizeof model, "m,size=1G,load_ms=0,prefill_tps=100000,token_ms=%d,"
                 "reply_tokens=10", o->delay_ms / 10 > 0 ? o->delay_ms / 10 : 1);
        const char *sargv[] = {o->sim_bin, "--port", sport, "--num-parallel", par, "--quiet",
                               "--keep-alive", "-1", "--model", model, NULL};
        const char *wargv[] = {o->worker_bin, "--broker", ep, "--backend", "ollama",
                               "--service", "lanes", "--capacity", cap_s, "--ollama-url", url,
                               "--preload", "m", NULL};
        if (s_spawn(sargv) < 0 || (usleep(300000), s_spawn(wargv)) < 0)
            return -1;
    } else {
        const char *wargv[] = {o->worker_bin, "--broker", ep, "--service", "lanes",
                               "--capacity", cap_s, "--delay-ms", delay, NULL};
        if (s_spawn(wargv) < 0)
            return -1;
    }
    ab_client_t *ctl = s_client(ep, NULL);
    for (int i = 0; ctl && i < 300; i++) {
        double b = s_busy(ctl);
        if (b >= 0) { /* registered (capacity known) */
            ab_client_destroy(&ctl);
            return 0;
        }
        usleep(100000);
    }
    ab_client_destroy(&ctl);
    return -1;
}

/* One phase: a fresh broker (BIN), BATCH_PRIO batch agents (none when
 * < 0), the interactive agent at INTER_PRIO. */
static int s_phase(const s_opts_t *o, const char *bin, int batch_prio, uint32_t inter_prio,
                   s_phase_t *ph)
{
    char ep[64];
    memset(ph, 0, sizeof *ph);
    tl_hist_reset(&ph->lat);
    if (s_start(o, bin, ep, sizeof ep) != 0) {
        fprintf(stderr, "agentbus-lanes-bench: %s or its backend did not start\n", bin);
        s_stop_all();
        return -1;
    }
    s_batch_t b = {.o = o, .ep = ep, .prio = batch_prio < 0 ? 0 : (uint32_t)batch_prio};
    pthread_t t;
    int batch = batch_prio >= 0 && pthread_create(&t, NULL, s_batch_main, &b) == 0;
    if (batch)
        usleep(1000000); /* the queue fills */
    s_interactive(o, ep, inter_prio, ph);
    if (batch) {
        b.stop = 1;
        pthread_join(t, NULL);
    }
    s_stop_all();
    return 0;
}

static void s_row(const s_opts_t *o, const char *name, const s_phase_t *ph, const s_phase_t *idle)
{
    /* One service time: the interactive agent's idle median (measured, so
     * the HTTP hop and the worker are in it for ollama-sim too). */
    double st = tl_hist_percentile(&idle->lat, 50) / 1000.0;
    (void)o;
    double p50 = tl_hist_percentile(&ph->lat, 50) / 1000.0;
    double p95 = tl_hist_percentile(&ph->lat, 95) / 1000.0;
    double p99 = tl_hist_percentile(&ph->lat, 99) / 1000.0;
    double i95 = tl_hist_percentile(&idle->lat, 95) / 1000.0;
    printf("| %-34s | %5llu | %8.1f | %8.1f | %8.1f | %+7.2f | %5.1f%% |\n", name,
           (unsigned long long)ph->ok, p50, p95, p99, (p95 - i95) / st, ph->busy_pct);
}

static void s_usage(void)
{
    printf("Usage: agentbus-lanes-bench [--backend echo|ollama] [--seconds S] [--slots N]\n"
           "         [--batch-agents N] [--window N] [--delay-ms MS] [--broker-bin PATH]\n"
           "         [--old-broker-bin PATH]\n\n"
           "One interactive agent beside N batch agents (default 50, each WINDOW = 2\n"
           "requests in flight) on a service with SLOTS (4) slots whose answer takes\n"
           "DELAY-MS (50): the interactive p50/p95/p99 idle, without lanes, with lanes\n"
           "(and on OLD-BROKER-BIN, a broker without lanes), S seconds (20) each.\n");
}

static int s_parse(s_opts_t *o, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n = 0;
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            s_usage();
            return 1;
        }
        if (!strcmp(f, "--version")) { /* as every program (README) */
            tl_print_version("agentbus-lanes-bench", ab_version());
            return 1;
        }
        if (!v)
            return -1;
        i++;
        if (!strcmp(f, "--backend") && (!strcmp(v, "echo") || !strcmp(v, "ollama")))
            o->backend = v;
        else if (!strcmp(f, "--seconds") && !tl_parse_long(v, 1, 3600, &n))
            o->seconds = (double)n;
        else if (!strcmp(f, "--slots") && !tl_parse_long(v, 1, 64, &n))
            o->slots = (int)n;
        else if (!strcmp(f, "--batch-agents") && !tl_parse_long(v, 1, 500, &n))
            o->batch_agents = (int)n;
        else if (!strcmp(f, "--window") && !tl_parse_long(v, 1, 100, &n))
            o->window = (int)n;
        else if (!strcmp(f, "--delay-ms") && !tl_parse_long(v, 10, 10000, &n))
            o->delay_ms = (int)n;
        else if (!strcmp(f, "--broker-bin"))
            o->broker_bin = v;
        else if (!strcmp(f, "--old-broker-bin"))
            o->old_broker_bin = v;
        else
            return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static char dir[PATH_MAX], broker[PATH_MAX + 32], worker[PATH_MAX + 32], sim[PATH_MAX + 32];
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    self[n > 0 ? n : 0] = '\0';
    snprintf(dir, sizeof dir, "%s", dirname(self));
    snprintf(broker, sizeof broker, "%s/agentbus-broker", dir);
    snprintf(worker, sizeof worker, "%s/agentbus-worker", dir);
    snprintf(sim, sizeof sim, "%s/ollama-sim", dir);
    s_opts_t o = {broker, NULL, worker, sim, "echo", 50, 4, 50, 2, 20};
    int prc = s_parse(&o, argc, argv);
    if (prc)
        return prc > 0 ? 0 : (fprintf(stderr, "agentbus-lanes-bench: bad usage (see --help)\n"), 2);
    signal(SIGPIPE, SIG_IGN);
    srand(1);
    s_phase_t idle, flat, lanes, old;
    printf("agentbus-lanes-bench: backend %s, %d slots, %d ms per answer, %d batch agents x %d "
           "in flight, %.0f s per phase\n", o.backend, o.slots, o.delay_ms, o.batch_agents,
           o.window, o.seconds);
    fflush(stdout);
    if (s_phase(&o, o.broker_bin, -1, AB_PRIORITY_INTERACTIVE, &idle) ||
        s_phase(&o, o.broker_bin, AB_PRIORITY_DEFAULT, AB_PRIORITY_DEFAULT, &flat) ||
        s_phase(&o, o.broker_bin, AB_PRIORITY_BATCH, AB_PRIORITY_INTERACTIVE, &lanes))
        return 1;
    int have_old = o.old_broker_bin &&
                   s_phase(&o, o.old_broker_bin, AB_PRIORITY_BATCH, AB_PRIORITY_INTERACTIVE,
                           &old) == 0;
    printf("\n| interactive agent (%s) | calls | p50 ms | p95 ms | p99 ms | p95-idle (service "
           "times) | slots busy |\n|---|---|---|---|---|---|---|\n", o.backend);
    s_row(&o, "idle (alone)", &idle, &idle);
    s_row(&o, "50 batch agents, no lanes (DRR only)", &flat, &idle);
    s_row(&o, "50 batch agents, lanes", &lanes, &idle);
    if (have_old)
        s_row(&o, "50 batch agents, old broker (FIFO)", &old, &idle);
    double i95 = tl_hist_percentile(&idle.lat, 95) / 1000.0;
    double l95 = tl_hist_percentile(&lanes.lat, 95) / 1000.0;
    double st = tl_hist_percentile(&idle.lat, 50) / 1000.0;
    printf("\nservice time (idle p50) %.1f ms. target: lanes p95 within 1.5 service times of "
           "idle p95: %+.2f -> %s; slots >= 95%% busy: %.1f%% -> %s\n", st, (l95 - i95) / st,
           (l95 - i95) <= 1.5 * st ? "met" : "MISSED", lanes.busy_pct,
           lanes.busy_pct >= 95 ? "met" : "MISSED");
    return 0;
}
