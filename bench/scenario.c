/*
 * scenario.c - agentbus-scenario: the seed workload measured end to end
 * (issue 20; docs/bench.md, "Seed workload").
 *
 * Starts two ollama-sim (two GPUs), a broker with its cache (L1 + L3),
 * agentbus-gateway and two Ollama workers, then runs the same seeded
 * workload of 174 agents:
 *   run A  direct: each agent POSTs to its GPU's simulator (a new
 *          connection per call, and a keep-alive variant);
 *   run B  bus: the same agents through agentbus (libagentbus);
 *   run C  gateway: run A's HTTP agents, unchanged, pointed at the gateway;
 * in a closed loop (think time) and an open loop (Poisson offered rates,
 * stepped), then the scale part (1,000 connected agents). Prints progress
 * lines and a table, writes a CSV and a gnuplot PNG.
 */
#include "scenario.h"
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "bench_util.h"
#include "tl_clock.h"
#include "tl_args.h"
#include "tl_port.h"

#include <curl/curl.h>
#include <jansson.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

enum { S_BROKER_OPTS = 4 };

typedef struct {
    double scale, closed_s, open_s;
    uint64_t seed;
    int pool_pct, agents, scale_agents, quick, skip_open, skip_scale, skip_direct_ka, skip_gateway;
    int capacity, deep, skip_nothink;
    char rates[128], out[PATH_MAX];
    char systems[128];       /* --systems: labels to run, comma-separated; "" = all */
    char bopt[S_BROKER_OPTS][2][64]; /* --broker-opt FLAG=VALUE, passed to the broker */
    int nbopts;
} s_opts_t;

/* Whether --systems lets LABEL run. */
static int s_wanted(const s_opts_t *o, const char *label)
{
    if (!o->systems[0])
        return 1;
    size_t len = strlen(label);
    for (const char *p = o->systems; (p = strstr(p, label)) != NULL; p += len)
        if ((p == o->systems || p[-1] == ',') && (p[len] == ',' || p[len] == '\0'))
            return 1;
    return 0;
}

#define S_MAX_RUNS 40

/* A number that is all of S, in [LO, HI]. */
static int s_parse_real(const char *s, double lo, double hi, double *out)
{
    return ab_parse_double(s, lo, hi, out); /* strtod took "0x10", " 1" and "+1" */
}

/* Whether every comma-separated item of V passes OK (and there is one). */
static int s_list_ok(const char *v, int (*ok)(const char *item))
{
    char buf[128], *save = NULL;
    if (!*v || strlen(v) >= sizeof buf)
        return 0;
    snprintf(buf, sizeof buf, "%s", v);
    int n = 0;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save), n++)
        if (!ok(t))
            return 0;
    return n > 0;
}

static int s_rate_ok(const char *t)
{
    double d;
    return s_parse_real(t, 0.001, 100000, &d) == 0;
}

static int s_label_ok(const char *t)
{
    static const char *const known[] = {"direct-new", "direct-keepalive", "bus", "gateway",
                                        "direct-nothink", "bus-nothink", "gateway-keepalive"};
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        if (!strcmp(t, known[i]))
            return 1;
    return 0;
}

static pid_t s_kids[8];
static int s_nkids;
static char s_dir[64];
static int s_crashed; /* children of the stack that crashed (bu_reaped) */

/* atexit. A child that crashed (a sanitizer report aborts it in the ASan
 * build) was said on stderr, and the run still ended 0 with its logs gone:
 * the logs are kept and the exit status is 1. */
static void s_cleanup(void)
{
    s_crashed += sc_scale_cleanup();
    s_crashed += bu_stop_pids(s_kids, s_nkids);
    s_nkids = 0;
    if (s_dir[0] && (s_crashed || getenv("AB_SCENARIO_KEEP_LOGS"))) {
        fprintf(stderr, "scenario: logs kept in %s\n", s_dir);
        s_dir[0] = '\0';
    }
    if (s_dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "scenario: could not remove %s\n", s_dir);
        s_dir[0] = '\0';
    }
    if (s_crashed) {
        fprintf(stderr, "scenario: %d of its programs crashed (above): exit 1\n", s_crashed);
        fflush(NULL);
        _exit(1); /* exit() again from an atexit handler is undefined */
    }
}

static void s_on_signal(int sig)
{
    (void)sig;
    exit(130); /* atexit: stop the children */
}

static pid_t s_spawn(const char *const *argv, const char *log)
{
    fflush(NULL); /* a child must not inherit (and later write) our buffered output */
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    if (pid > 0 && s_nkids < (int)(sizeof s_kids / sizeof *s_kids))
        s_kids[s_nkids++] = pid;
    return pid;
}

static uint64_t s_t0;
static void s_progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void s_progress(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fflush(stdout);
    fprintf(stderr, "[scenario %6.1fs] ", (tl_now_us() - s_t0) / 1e6);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* --- the stack: two simulated GPUs, a broker, two workers ------------------------- */
typedef struct {
    char bin[PATH_MAX];
    char sim_url[SC_GPUS][64];
    char broker[64];
    char gateway[64];        /* http://127.0.0.1:PORT, or "" if it did not start */
} s_stack_t;

/* Children: 0, 1 the simulators, 2 the broker, 3 the gateway, 4 and 5
 * the workers (restarted with another capacity: s_workload). */
enum { S_KID_WORKERS = 4 };

static int s_sim_up(const char *url)
{
    char u[96];
    snprintf(u, sizeof u, "%s/api/version", url);
    char *t = sc_http(u, NULL, NULL);
    free(t);
    return t != NULL;
}

/* Requests the simulator holds (active + queued), or -1. */
static long s_sim_load(const char *url)
{
    char u[96];
    snprintf(u, sizeof u, "%s/sim/stats", url);
    char *t = sc_http(u, NULL, NULL);
    json_t *j = t ? json_loads(t, 0, NULL) : NULL;
    free(t);
    if (!j)
        return -1;
    long n = (long)(json_integer_value(json_object_get(j, "active")) +
                    json_integer_value(json_object_get(j, "queued")));
    json_decref(j);
    return n;
}

/* Waits (bounded) until the simulators hold no request, so a run does not
 * inherit the previous one's queue. */
static void s_wait_idle(const s_stack_t *st)
{
    for (int tries = 0; tries < 600; tries++) {
        long n = 0;
        for (int g = 0; g < SC_GPUS; g++) {
            long l = s_sim_load(st->sim_url[g]);
            n += l < 0 ? 1 : l;
        }
        if (n == 0)
            return;
        usleep(50000);
    }
    s_progress("warning: simulators still busy after 30 s");
}

static int s_workers_ready(const char *broker, int want)
{
    ab_options_t *o = ab_options_new();
    ab_options_set_endpoint(o, broker);
    ab_client_t *c = NULL;
    int ready = 0;
    if (ab_client_new(&c, o) == AB_OK) {
        for (int tries = 0; tries < 300 && !ready; tries++) {
            void *buf = NULL;
            size_t len;
            if (ab_client_control(c, "stats", 1000, &buf, &len) == AB_OK) {
                Agentbus__Stats *st = agentbus__stats__unpack(NULL, len, buf);
                uint32_t have = 0;
                for (size_t i = 0; st && i < st->n_services; i++)
                    if (!strcmp(st->services[i]->name, "ollama"))
                        have = st->services[i]->workers;
                ready = st && have == (uint32_t)want;
                if (st)
                    agentbus__stats__free_unpacked(st, NULL);
                ab_free(buf);
            }
            if (!ready)
                usleep(100000);
        }
        ab_client_destroy(&c);
    }
    ab_options_destroy(&o);
    return ready;
}

/* Each worker's --model-slots (--model-slots N; 0 = off): 5, one more than
 * the simulator's 4 parallel slots per model, is the default since the
 * dispatch finds each model's oldest request (issue 20): in alternating
 * runs it kept the no-think closed loop 20-40% higher and the slots of a
 * model with work waiting busier, with no loss with think time
 * (docs/bench.md "Seed workload", --model-slots). */
static long s_model_slots = 5;

/* Two Ollama workers, one per simulated GPU, with CAPACITY requests each
 * (the broker's credit); children 4 and 5. Waits until both registered. */
static int s_start_workers(const s_stack_t *st, int capacity)
{
    char worker[PATH_MAX + 32], log[128];
    snprintf(worker, sizeof worker, "%s/agentbus-worker", st->bin);
    char preload[256] = "";
    for (int m = 0; m < SC_MODELS; m++)
        snprintf(preload + strlen(preload), sizeof preload - strlen(preload), "%s%s",
                 m ? "," : "", sc_models[m].name);
    for (int g = 0; g < SC_GPUS; g++) {
        char name[16], cap[16], ms[16];
        snprintf(name, sizeof name, "gpu%d", g);
        snprintf(cap, sizeof cap, "%d", capacity);
        snprintf(ms, sizeof ms, "%ld", s_model_slots);
        /* Capacity: by default 48, four times the GPU's 12 slots (3 models
         * x 4): the credit is per worker, the slots per model (docs); the
         * model slots keep one model's backlog from taking all of it. */
        const char *wargv[] = {worker, "--broker", st->broker, "--backend", "ollama",
                               "--ollama-url", st->sim_url[g], "--name", name, "--capacity", cap,
                               "--model-slots", ms, "--gpu-vram-mb", "24576", "--preload",
                               preload, NULL};
        snprintf(log, sizeof log, "%s/worker%d-cap%d.log", s_dir, g, capacity);
        s_spawn(wargv, log);
    }
    if (!s_workers_ready(st->broker, SC_GPUS)) {
        fprintf(stderr, "scenario: the workers did not register (logs in %s)\n", s_dir);
        return -1;
    }
    return 0;
}

/* agentbus-gateway in front of the broker (run C); child 3. Connections:
 * every open-loop call may hold one (new connection per call), so the cap
 * is far above the 1,024 default; the descriptor limit was raised. */
static void s_start_gateway(s_stack_t *st, double scale)
{
    char gw[PATH_MAX + 32], listen[32], log[128], queue[32];
    snprintf(gw, sizeof gw, "%s/agentbus-gateway", st->bin);
    int port = tl_free_port();
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    /* The gateway's own clock scaled as the agents' deadlines are: its
     * default 1 s of waiting before a request is read is 1 s simulated. */
    snprintf(queue, sizeof queue, "%.0f", 1000.0 / scale);
    const char *argv[] = {gw, "--listen", listen, "--broker", st->broker, "--name",
                          "scenario-gateway", "--max-connections", "30000", "--max-queue-ms",
                          queue, "--quiet", NULL};
    snprintf(log, sizeof log, "%s/gateway.log", s_dir);
    s_spawn(argv, log);
    char url[96];
    snprintf(url, sizeof url, "http://%s/healthz", listen);
    for (int i = 0; i < 100; i++) {
        long status = 0;
        char *t = sc_http(url, NULL, &status);
        free(t);
        if (t && status == 200) {
            snprintf(st->gateway, sizeof st->gateway, "http://%s", listen);
            return;
        }
        usleep(100000);
    }
    s_progress("the gateway did not answer /healthz (log %s): run C skipped", log);
}

/* 1 when the broker PID has exited already, said with the first line of
 * its LOG (the log directory goes at exit): a --broker-opt it refuses
 * (exit 2) left every run waiting for a broker that was not there. */
static int s_broker_gone(pid_t pid, const char *log, int *status)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (pid <= 0 || waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0 ||
        si.si_pid != pid)
        return 0;
    char line[512] = "";
    FILE *f = fopen(log, "r");
    if (f && !fgets(line, sizeof line, f))
        line[0] = '\0';
    if (f)
        fclose(f);
    line[strcspn(line, "\n")] = '\0';
    *status = si.si_code == CLD_EXITED ? si.si_status : 128 + si.si_status;
    s_progress("the broker exited at start (status %d): %s", *status, line);
    return 1;
}

/* 0, -1 on a failure, -2 when the broker refused its options (exit 2). */
static int s_start_stack(const s_opts_t *op, s_stack_t *st)
{
    char scale[32], seed[32], log[128], cfgmodels[SC_MODELS][160];
    snprintf(scale, sizeof scale, "%g", op->scale);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)op->seed);
    char sim[PATH_MAX + 16], broker[PATH_MAX + 32];
    snprintf(sim, sizeof sim, "%s/ollama-sim", st->bin);
    snprintf(broker, sizeof broker, "%s/agentbus-broker", st->bin);
    for (int m = 0; m < SC_MODELS; m++)
        snprintf(cfgmodels[m], sizeof cfgmodels[m],
                 "%s,size=%s,load_ms=%g,prefill_tps=%g,token_ms=%g,parameter_size=%s",
                 sc_models[m].name, sc_models[m].size, sc_models[m].load_ms,
                 sc_models[m].prefill_tps, sc_models[m].token_ms, sc_models[m].parameter_size);
    int ports[SC_GPUS];
    for (int g = 0; g < SC_GPUS; g++) {
        char port[16];
        ports[g] = tl_free_port();
        snprintf(port, sizeof port, "%d", ports[g]);
        snprintf(st->sim_url[g], sizeof st->sim_url[g], "http://127.0.0.1:%d", ports[g]);
        /* One RTX 3090 class GPU each: 24 GiB, OLLAMA_NUM_PARALLEL 4,
         * OLLAMA_MAX_QUEUE 512 (Ollama's defaults), models kept loaded. */
        const char *argv[] = {sim, "--port", port, "--time-scale", scale, "--gpu", "24G",
                              "--num-parallel", "4", "--max-queue", "512", "--keep-alive", "-1",
                              "--seed", seed, "--quiet", "--model", cfgmodels[0], "--model",
                              cfgmodels[1], "--model", cfgmodels[2], NULL};
        snprintf(log, sizeof log, "%s/sim%d.log", s_dir, g);
        s_spawn(argv, log);
    }
    int bport = tl_free_port();
    snprintf(st->broker, sizeof st->broker, "tcp://127.0.0.1:%d", bport);
    /* --broker-opt "FLAG VALUE" pairs go after the fixed arguments. */
    const char *bargv[8 + 2 * S_BROKER_OPTS] = {broker, "--bind", st->broker, "--data-dir",
                                                s_dir, "--log-level", "error"};
    for (int k = 0; k < op->nbopts; k++) {
        bargv[7 + 2 * k] = op->bopt[k][0];
        bargv[8 + 2 * k] = op->bopt[k][1];
    }
    snprintf(log, sizeof log, "%s/broker.log", s_dir);
    pid_t bpid = s_spawn(bargv, log);
    s_start_gateway(st, op->scale);
    for (int i = 0; i < 100 && !(s_sim_up(st->sim_url[0]) && s_sim_up(st->sim_url[1])); i++)
        usleep(100000);
    int status = 0;
    if (s_broker_gone(bpid, log, &status))
        return status == 2 ? -2 : -1;
    /* Load every model on both GPUs before anything is measured. */
    for (int g = 0; g < SC_GPUS; g++)
        for (int m = 0; m < SC_MODELS; m++) {
            char u[96], body[128];
            snprintf(u, sizeof u, "%s/api/generate", st->sim_url[g]);
            snprintf(body, sizeof body, "{\"model\":\"%s\",\"keep_alive\":-1}", sc_models[m].name);
            free(sc_http(u, body, NULL));
        }
    return s_start_workers(st, op->capacity);
}

/* The usage text (--help and a bad option). */
static void s_usage(FILE *out)
{
    fprintf(out, "Usage: agentbus-scenario [--quick] [--time-scale X] [--closed-seconds S]\n"
           "         [--open-seconds S] [--rates R1,R2,..] [--seed N] [--pool-pct P]\n"
           "         [--agents N] [--scale-agents N] [--no-open] [--no-scale]\n"
           "         [--no-keepalive] [--no-gateway] [--no-nothink] [--scale-only]\n"
           "         [--worker-capacity N] [--model-slots N] [--deep-capacity N]\n"
           "         [--systems LABEL,..]\n"
           "         [--broker-opt --FLAG=VALUE (up to 4)] [--out DIR] [--version]\n\n"
           "--systems: direct-new, direct-keepalive, bus, gateway, direct-nothink,\n"
           "bus-nothink (default: all of these), gateway-keepalive (only when named).\n\n"
           "The seed workload (174 agents, two simulated GPUs) direct over HTTP (run A),\n"
           "over agentbus (run B) and the same HTTP agents over agentbus-gateway (run C);\n"
           "then 1,000 connected agents. Seconds and rates are simulated (the simulators\n"
           "run --time-scale X, default 5, times faster). Workers' capacity default 48,\n"
           "--model-slots N caps each model per worker (default 5; 0: off);\n"
           "--deep-capacity N > 0 adds runs with the workers restarted at capacity N.\n"
           "--broker-opt flags go to the scale part's broker too.\n"
           "Exit 1 when a request was lost, or when in the scale part an agent was\n"
           "not connected and listed or a request failed; 2 on bad usage.\n"
           "docs/bench.md, \"Seed workload\".\n");
}

/* The options without a value; 1 if F was one. */
static int s_flag(s_opts_t *o, const char *f)
{
    if (!strcmp(f, "--quick")) {
        o->quick = 1;
        o->scale = 10;
        o->closed_s = 20;
        o->skip_open = o->skip_scale = o->skip_direct_ka = o->skip_nothink = 1;
        return 1;
    }
    if (!strcmp(f, "--no-open") || !strcmp(f, "--no-scale") || !strcmp(f, "--no-keepalive")) {
        *(f[5] == 'o' ? &o->skip_open : f[5] == 's' ? &o->skip_scale : &o->skip_direct_ka) = 1;
        return 1;
    }
    if (!strcmp(f, "--no-gateway") || !strcmp(f, "--no-nothink")) {
        *(f[5] == 'g' ? &o->skip_gateway : &o->skip_nothink) = 1;
        return 1;
    }
    if (!strcmp(f, "--scale-only")) {
        o->skip_open = 1;
        o->closed_s = 0;
        return 1;
    }
    return 0;
}

static int s_parse(s_opts_t *o, int argc, char **argv)
{
    memset(o, 0, sizeof *o);
    o->scale = 5;
    o->closed_s = 60;
    o->open_s = 30;
    o->seed = 1;
    o->pool_pct = 85;
    o->agents = SC_AGENTS;
    o->capacity = 48;
    o->deep = 0;
    o->scale_agents = 1000;
    snprintf(o->rates, sizeof o->rates, "3,6,12,24,48,500");
    snprintf(o->out, sizeof o->out, "scenario-out");
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        long l;
        if (s_flag(o, f))
            continue;
        i++;
        double d;
        if (!strcmp(f, "--time-scale") && s_parse_real(v, 0.1, 100, &d) == 0)
            o->scale = d;
        else if (!strcmp(f, "--closed-seconds") && tl_parse_long(v, 0, 3600, &l) == 0)
            o->closed_s = (double)l;
        else if (!strcmp(f, "--open-seconds") && tl_parse_long(v, 1, 3600, &l) == 0)
            o->open_s = (double)l;
        else if (!strcmp(f, "--seed") && tl_parse_long(v, 0, LONG_MAX, &l) == 0)
            o->seed = (uint64_t)l;
        else if (!strcmp(f, "--pool-pct") && tl_parse_long(v, 0, 100, &l) == 0)
            o->pool_pct = (int)l;
        else if (!strcmp(f, "--agents") && tl_parse_long(v, 1, SC_AGENTS, &l) == 0)
            o->agents = (int)l;
        else if (!strcmp(f, "--scale-agents") && tl_parse_long(v, 0, 100000, &l) == 0)
            o->scale_agents = (int)l;
        else if (!strcmp(f, "--worker-capacity") && tl_parse_long(v, 1, 1000, &l) == 0)
            o->capacity = (int)l;
        else if (!strcmp(f, "--deep-capacity") && tl_parse_long(v, 0, 1000, &l) == 0)
            o->deep = (int)l;
        else if (!strcmp(f, "--model-slots") && tl_parse_long(v, 0, 1000, &l) == 0)
            s_model_slots = l;
        else if (!strcmp(f, "--rates") && s_list_ok(v, s_rate_ok))
            snprintf(o->rates, sizeof o->rates, "%s", v);
        else if (!strcmp(f, "--broker-opt") && strchr(v, '=') && o->nbopts < S_BROKER_OPTS &&
                 strlen(v) < 64) {
            snprintf(o->bopt[o->nbopts][0], 64, "%.*s", (int)(strchr(v, '=') - v), v);
            snprintf(o->bopt[o->nbopts++][1], 64, "%s", strchr(v, '=') + 1);
        } else if (!strcmp(f, "--systems") && s_list_ok(v, s_label_ok))
            snprintf(o->systems, sizeof o->systems, "%s", v);
        else if (!strcmp(f, "--out") && *v)
            snprintf(o->out, sizeof o->out, "%s", v);
        else if (!strcmp(f, "--help")) {
            s_usage(stdout);
            return 1;
        } else if (!strcmp(f, "--version")) { /* as every program (README) */
            tl_print_version("agentbus-scenario", ab_version());
            return 1;
        } else {
            if (i < argc)
                fprintf(stderr, "agentbus-scenario: %s '%s': unknown option or bad value\n", f, v);
            else
                fprintf(stderr, "agentbus-scenario: unknown option or missing value: %s\n", f);
            s_usage(stderr);
            return -1;
        }
    }
    return 0;
}

/* One run with progress lines; appends to RES. */
static void s_one(const s_opts_t *o, const s_stack_t *st, sc_run_cfg_t *cfg, sc_result_t *res,
                  int *n, FILE *csv)
{
    snprintf(cfg->sim_url[0], sizeof cfg->sim_url[0], "%s", st->sim_url[0]);
    snprintf(cfg->sim_url[1], sizeof cfg->sim_url[1], "%s", st->sim_url[1]);
    cfg->scale = o->scale;
    cfg->seed = o->seed;
    cfg->pool_pct = o->pool_pct;
    cfg->agents = o->agents;
    s_wait_idle(st);
    if (cfg->open_loop)
        s_progress("%s open loop at %.0f req/s offered: %.0f s simulated (%.1f s wall)...",
                   cfg->label, cfg->rate, cfg->seconds, cfg->seconds / o->scale);
    else
        s_progress("%s closed loop, %d agents: %.0f s simulated (%.1f s wall)...", cfg->label,
                   cfg->agents, cfg->seconds, cfg->seconds / o->scale);
    sc_result_t *r = &res[*n];
    sc_run(cfg, r);
    sc_sum_t s;
    sc_summarise(r, o->scale, &s);
    fprintf(stderr, "[scenario %6.1fs]   %llu issued, %llu ok (%.1f/s; %.1f/s in the second half), "
            "%llu errors (", (tl_now_us() - s_t0) / 1e6, (unsigned long long)r->issued,
            (unsigned long long)s.ok, s.done_per_s, s.done2_per_s, (unsigned long long)s.errs);
    for (int e = 1; e < SC_E_N; e++)
        if (s.err_by[e])
            fprintf(stderr, " %s=%llu", sc_err_names[e], (unsigned long long)s.err_by[e]);
    if (cfg->ops == &sc_bus_ops)
        sc_bus_errors(stderr);
    fprintf(stderr, " ), lost %llu, batch p95 %.2f s, slots busy %.0f%% (%.0f%% while queued)\n",
            (unsigned long long)s.lost, s.bp[1], r->util_all, r->util_queued);
    sc_csv_row(csv, r, &s, o->scale);
    fflush(csv);
    if (!r->open_loop)
        sc_plot_data(o->out, r, o->scale);
    (*n)++;
}

/* The open-loop ladders: each offered rate in turn, every system at that
 * rate one after the other (so a change in the machine's load, shared
 * with other work, falls on all systems alike). Above the first rate at
 * which a system had more than 5% errors (not sustained by any reading)
 * it runs only the last rate (the seed's wanted 500 req/s). */
static void s_ladders(const s_opts_t *o, const s_stack_t *st, const sc_run_cfg_t *sys, int k,
                      sc_result_t *res, int *n, FILE *csv)
{
    char rates[128];
    int collapsed[4] = {0};
    snprintf(rates, sizeof rates, "%s", o->rates);
    for (char *save = NULL, *t = strtok_r(rates, ",", &save); t && !o->skip_open;
         t = strtok_r(NULL, ",", &save)) {
        int last = !save || !*save;
        for (int i = 0; i < k && i < 4 && *n < S_MAX_RUNS; i++) {
            if (sys[i].keepalive == 1) /* closed loop showed it the same as direct-new */
                continue;
            if (collapsed[i] && !last) {
                s_progress("%s at %s req/s: not run (over 5%% errors at a lower rate)",
                           sys[i].label, t);
                continue;
            }
            sc_run_cfg_t c = sys[i];
            c.open_loop = 1;
            c.rate = atof(t);
            c.seconds = o->open_s;
            if (c.rate <= 0)
                continue;
            s_one(o, st, &c, res, n, csv);
            sc_sum_t sm;
            sc_summarise(&res[*n - 1], o->scale, &sm);
            collapsed[i] |= sm.err_pct > 5;
        }
    }
}

/* The table groups the open-loop runs by system (in the order the systems
 * first ran), each in the order of its rates; closed-loop runs first. */
static void s_group(sc_result_t *res, int n)
{
    static sc_result_t tmp[S_MAX_RUNS];
    int m = 0;
    for (int i = 0; i < n; i++)
        if (!res[i].open_loop)
            tmp[m++] = res[i];
    for (int i = 0; i < n; i++) {
        int first = res[i].open_loop;
        for (int j = 0; j < i && first; j++)
            first = !(res[j].open_loop && !strcmp(res[j].label, res[i].label));
        for (int j = i; first && j < n; j++)
            if (res[j].open_loop && !strcmp(res[j].label, res[i].label))
                tmp[m++] = res[j];
    }
    memcpy(res, tmp, (size_t)n * sizeof *res);
}

const char *const sc_err_names[SC_E_N] = {"none", "503", "http", "timeout", "conn", "bus", "cut"};

/* Raises the descriptor limit (10,000 agents need more than 20,000 fds in
 * the broker; root may raise the hard limit too), prepares OUT and a
 * temporary directory for logs and the broker's data. 0; -2 when OUT
 * cannot be made (bad usage), -1 otherwise, said on stderr. */
static int s_setup(const s_opts_t *o, s_stack_t *st, char *self, size_t cap)
{
    struct rlimit rl = {200000, 200000};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, s_on_signal);
    signal(SIGTERM, s_on_signal);
    memset(st, 0, sizeof *st);
    ssize_t len = readlink("/proc/self/exe", st->bin, sizeof st->bin - 1);
    if (len <= 0)
        return -1;
    st->bin[len] = '\0';
    snprintf(self, cap, "%s", st->bin);
    *strrchr(st->bin, '/') = '\0';
    /* It ended with exit 1 and not a word (--out /proc/x, a file's path) */
    if (mkdir(o->out, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "agentbus-scenario: cannot make --out %s: %s\n", o->out,
                strerror(errno));
        return -2;
    }
    snprintf(s_dir, sizeof s_dir, "/tmp/ab-scenario-XXXXXX");
    if (!mkdtemp(s_dir)) {
        fprintf(stderr, "agentbus-scenario: cannot make %s: %s\n", s_dir, strerror(errno));
        return -1;
    }
    atexit(s_cleanup);
    double load1 = -1;
    FILE *la = fopen("/proc/loadavg", "r");
    if (la && fscanf(la, "%lf", &load1) != 1)
        load1 = -1;
    if (la)
        fclose(la);
    s_progress("seed %llu, time scale %g, load average %.2f; logs in %s",
               (unsigned long long)o->seed, o->scale, load1, s_dir);
    return 0;
}

/* OUT/scenario.csv (its path in PATH), or NULL said on stderr (it was
 * exit 1 without a word). */
static FILE *s_open_csv(const s_opts_t *o, char *path, size_t cap)
{
    snprintf(path, cap, "%s/scenario.csv", o->out);
    FILE *csv = fopen(path, "w");
    if (!csv)
        fprintf(stderr, "agentbus-scenario: cannot write %s (--out): %s\n", path,
                strerror(errno));
    return csv;
}

/* The systems of the same run: A (direct, new connections; keep-alive),
 * B (bus), C (gateway), as closed-loop templates. Returns how many. */
static int s_systems(const s_opts_t *o, const s_stack_t *st, const char *bus_label,
                     sc_run_cfg_t sys[4], int with_direct)
{
    int k = 0;
    if (with_direct && s_wanted(o, "direct-new"))
        sys[k++] = (sc_run_cfg_t){.ops = &sc_direct_ops, .label = "direct-new"};
    if (with_direct && !o->skip_direct_ka && s_wanted(o, "direct-keepalive"))
        sys[k++] = (sc_run_cfg_t){.ops = &sc_direct_ops, .label = "direct-keepalive",
                                  .keepalive = 1};
    if (s_wanted(o, "bus") || !with_direct) {
        sys[k] = (sc_run_cfg_t){.ops = &sc_bus_ops, .label = bus_label};
        snprintf(sys[k++].broker, sizeof sys->broker, "%s", st->broker);
    }
    if (with_direct && !o->skip_gateway && st->gateway[0] && s_wanted(o, "gateway")) {
        /* Run A's client code and connection mode (a new connection per
         * call); only the URL differs. */
        sys[k] = (sc_run_cfg_t){.ops = &sc_direct_ops, .label = "gateway"};
        snprintf(sys[k].broker, sizeof sys->broker, "%s", st->broker);
        snprintf(sys[k++].gateway, sizeof sys->gateway, "%s", st->gateway);
    }
    if (with_direct && st->gateway[0] && o->systems[0] && s_wanted(o, "gateway-keepalive") &&
        k < 4) { /* only when asked for by name */
        sys[k] = (sc_run_cfg_t){.ops = &sc_direct_ops, .label = "gateway-keepalive",
                                .keepalive = 2};
        snprintf(sys[k].broker, sizeof sys->broker, "%s", st->broker);
        snprintf(sys[k++].gateway, sizeof sys->gateway, "%s", st->gateway);
    }
    return k;
}

/* Direct and bus in a closed loop without think time: the GPU-bound case
 * in which the bus's gain is capped by 1 / (1 - hit-or-coalesced
 * fraction) (docs/bench.md). The whole closed window: its first ~25
 * simulated s are not the steady state; the targets read the second half. */
static void s_nothink(const s_opts_t *o, const s_stack_t *st, sc_result_t *res, int *n,
                      FILE *csv)
{
    if (o->skip_nothink || o->closed_s <= 0)
        return;
    sc_run_cfg_t d = {.ops = &sc_direct_ops, .label = "direct-nothink", .no_think = 1,
                      .seconds = o->closed_s};
    sc_run_cfg_t b = {.ops = &sc_bus_ops, .label = "bus-nothink", .no_think = 1,
                      .seconds = o->closed_s};
    snprintf(b.broker, sizeof b.broker, "%s", st->broker);
    if (s_wanted(o, d.label))
        s_one(o, st, &d, res, n, csv);
    if (s_wanted(o, b.label))
        s_one(o, st, &b, res, n, csv);
}

/* Runs A, B and C, closed then open loop; then, with --deep-capacity, B
 * and C again on workers of another capacity. Appends to RES. */
static void s_workload(const s_opts_t *o, s_stack_t *st, sc_result_t *res, int *n, FILE *csv)
{
    sc_run_cfg_t sys[4];
    int k = s_systems(o, st, "bus", sys, 1);
    for (int i = 0; i < k && o->closed_s > 0; i++) {
        sc_run_cfg_t c = sys[i];
        c.seconds = o->closed_s;
        s_one(o, st, &c, res, n, csv);
    }
    s_nothink(o, st, res, n, csv);
    s_ladders(o, st, sys, k, res, n, csv);
    if (o->deep <= 0 || s_nkids != S_KID_WORKERS + SC_GPUS)
        return;
    s_crashed += bu_stop_pids(&s_kids[S_KID_WORKERS], SC_GPUS);
    s_nkids = S_KID_WORKERS;
    static char label[32];
    snprintf(label, sizeof label, "bus-cap%d", o->deep);
    if (!s_workers_ready(st->broker, 0) || s_start_workers(st, o->deep) != 0)
        return;
    s_progress("workers restarted with capacity %d", o->deep);
    k = s_systems(o, st, label, sys, 0); /* the bus alone: the question is the credit */
    if (o->closed_s > 0) {
        sc_run_cfg_t c = sys[0];
        c.seconds = o->closed_s;
        s_one(o, st, &c, res, n, csv);
    }
    s_ladders(o, st, sys, k, res, n, csv);
}

/* The table, the targets and the plot; returns the requests lost. */
static uint64_t s_report(const s_opts_t *o, const sc_result_t *res, int n, const char *csv)
{
    uint64_t lost = 0;
    printf("\nSeed workload, %d agents, seed %llu, simulated times (wall x %g); latencies of "
           "completed calls in s, errors apart\n", o->agents, (unsigned long long)o->seed,
           o->scale);
    sc_table(stdout, res, n, o->scale);
    for (int i = 0; i < n; i++) {
        sc_sum_t s;
        sc_summarise(&res[i], o->scale, &s);
        lost += s.lost;
    }
    sc_targets(res, n, o->scale, o->agents);
    printf("CSV: %s\n", csv);
    if (sc_plot(o->out, res, n, o->scale) != 0)
        s_progress("gnuplot failed (is gnuplot-nox installed?): see %s/gnuplot.err", o->out);
    else
        s_progress("plot: %s/scenario.png", o->out);
    return lost;
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--scale-child"))
        return sc_scale_child(argc, argv);
    if (argc > 2 && !strcmp(argv[1], "--bare-router"))
        return sc_bare_router(argv[2]);
    s_opts_t o;
    int prc = s_parse(&o, argc, argv);
    if (prc)
        return prc > 0 ? 0 : 2;
    s_t0 = tl_now_us();
    s_stack_t st;
    char self[PATH_MAX], path[PATH_MAX + 32];
    int setup = s_setup(&o, &st, self, sizeof self);
    if (setup != 0)
        return setup == -2 ? 2 : 1;
    FILE *csv = s_open_csv(&o, path, sizeof path);
    if (!csv)
        return 2;
    fprintf(csv, "%s\n", sc_csv_hdr);
    static sc_result_t res[S_MAX_RUNS];
    int n = 0;
    uint64_t lost = 0;
    if (o.closed_s > 0 || !o.skip_open) {
        int src = s_start_stack(&o, &st);
        if (src != 0)
            return src == -2 ? 2 : 1;
        s_progress("two simulated GPUs, broker, gateway (%s) and two Ollama workers (capacity %d, "
                   "model slots %ld) up", st.gateway[0] ? st.gateway : "not running", o.capacity,
                   s_model_slots);
        s_workload(&o, &st, res, &n, csv);
    }
    fclose(csv);
    s_group(res, n);
    if (n)
        lost = s_report(&o, res, n, path);
    for (int i = 0; i < n; i++)
        free(res[i].recs);
    s_crashed += bu_stop_pids(s_kids, s_nkids); /* not needed for the scale part */
    s_nkids = 0;
    if (!o.skip_scale && o.scale_agents > 0) {
        snprintf(path, sizeof path, "%s/scale.csv", o.out);
        FILE *scsv = fopen(path, "w");
        char broker[PATH_MAX + 32], worker[PATH_MAX + 32];
        snprintf(broker, sizeof broker, "%s/agentbus-broker", st.bin);
        snprintf(worker, sizeof worker, "%s/agentbus-worker", st.bin);
        sc_scale_cfg_t sc = {self, broker, worker, o.scale_agents, 250, 2000, 5.0, {NULL}};
        for (int k = 0; k < o.nbopts && k < 4; k++) { /* the scale broker gets them too */
            sc.bopt[2 * k] = o.bopt[k][0];
            sc.bopt[2 * k + 1] = o.bopt[k][1];
        }
        s_progress("scale: %d connected agents in %d processes", sc.agents,
                   (sc.agents + sc.per_proc - 1) / sc.per_proc);
        if (sc_scale(&sc, scsv) != 0) { /* an agent not connected, a lone request failed */
            s_progress("scale part did not complete (see above)");
            lost = 1;
        }
        if (scsv)
            fclose(scsv);
    }
    s_progress("done");
    return lost ? 1 : 0;
}
