/*
 * main.c - agentbus-worker: connects to a broker, registers a service and
 * serves it with a backend.
 */
#include "backend.h"
#include "tl_args.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static ab_worker_t *s_worker;
static volatile sig_atomic_t s_signals;
static long s_drain_ms = 2000;
static volatile sig_atomic_t s_stopping; /* hard stop: the loop checks it */

/* First SIGTERM/SIGINT: drain (finish what is held, up to --drain-ms);
 * a second one, or --drain-ms 0: stop at once. */
static void s_on_signal(int sig)
{
    (void)sig;
    if (s_signals++ || s_drain_ms == 0) {
        s_stopping = 1;
        ab_worker_stop(s_worker);
    } else {
        ab_worker_shutdown(s_worker, (int)s_drain_ms);
    }
}

static void s_usage(const char *prog)
{
    printf("Usage: %s [options]\n\n"
           "Serves one agentbus service with a backend.\n\n"
           "  --broker ENDPOINT   broker to connect to (default: $AB_BROKER, else %s)\n"
           "  --backend NAME      backend: echo or ollama (default echo)\n"
           "  --service NAME      service to register (default echo; ollama backend: ollama)\n"
           "  --capacity N        concurrent requests, 1..100000 (default 16; ollama backend:\n"
           "                      $OLLAMA_NUM_PARALLEL, else 4; the adaptive limit's maximum)\n"
           "  --delay-ms N        echo: wait N ms before replying (default 0)\n"
           "  --chunks N          echo: stream the reply in N parts (default 1)\n"
           "  --ollama-url URL    ollama: the Ollama server's base URL (http://127.0.0.1:11434)\n"
           "  --preload M1,M2     ollama: load these models at start, one after another\n"
           "  --gpu-vram-mb N     ollama: GPU memory when NVML cannot tell (default 0: unknown)\n"
           "  --ollama-retries N  ollama: retries of a 503 / connection error here (default 2)\n"
           "  --refresh-ms N      ollama: longest interval between model probes (default 5000)\n"
           "  --name NAME         worker name shown by brokerctl workers\n"
           "  --label KEY=VALUE   label sent with the registration (repeatable)\n"
           "  --heartbeat-ms N    heartbeat interval, 100..60000 (default 1000); the\n"
           "                      broker then adapts it (health-floor/ceiling-ms)\n"
           "  --drain-ms N        on SIGTERM/SIGINT: take nothing new and finish the\n"
           "                      requests held for up to N ms, then hand the rest\n"
           "                      back (default 2000; 0: stop at once). A second\n"
           "                      signal stops at once\n"
           "  --fail-file PATH    while PATH exists, answer every request with an\n"
           "                      error (APPLICATION) and report backend state\n"
           "                      \"failing\": fault injection for tests\n"
           "  --help              show this help\n"
           "  --version           show the version\n",
           prog, AB_DEFAULT_ENDPOINT);
}

typedef struct {
    const char *broker, *backend, *name;
    const char *labels[64];
    const char *fail_file;
    int nlabels;
    long heartbeat_ms;
    wk_backend_args_t args;
} s_args_t;

static int s_parse(s_args_t *a, int argc, char **argv)
{
    memset(a, 0, sizeof *a);
    a->backend = "echo";
    a->args.service = "echo";
    a->args.capacity = 16;
    a->args.chunks = 1;
    a->heartbeat_ms = 1000;
    a->args.retries = 2;
    a->args.refresh_ms = 5000;
    int service_set = 0, capacity_set = 0;
    long n0;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n;
        if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0) {
            s_usage(argv[0]);
            return 1;
        }
        if (strcmp(f, "--version") == 0) {
            printf("agentbus-worker %s\n", AB_VERSION_STRING);
            return 1;
        }
        static const char *known[] = {"--broker", "--backend", "--service", "--name",
                                      "--label", "--capacity", "--delay-ms", "--chunks",
                                      "--heartbeat-ms", "--drain-ms", "--fail-file",
                                      "--ollama-url", "--preload", "--gpu-vram-mb",
                                      "--ollama-retries", "--refresh-ms"};
        int is_known = 0;
        for (size_t k = 0; k < sizeof known / sizeof known[0]; k++)
            is_known |= strcmp(f, known[k]) == 0;
        if (!is_known || !v) {
            fprintf(stderr, "agentbus-worker: %s '%s' (see --help)\n",
                    !is_known ? "unknown option" : "missing value for", f);
            return -1;
        }
        i++;
        if (strcmp(f, "--broker") == 0)
            a->broker = v;
        else if (strcmp(f, "--backend") == 0)
            a->backend = v;
        else if (strcmp(f, "--service") == 0 && *v)
            a->args.service = v, service_set = 1;
        else if (strcmp(f, "--name") == 0)
            a->name = v;
        else if (strcmp(f, "--label") == 0 && strchr(v, '=') && a->nlabels < 64)
            a->labels[a->nlabels++] = v;
        else if (strcmp(f, "--capacity") == 0 && tl_parse_long(v, 1, 100000, &n) == 0)
            a->args.capacity = (unsigned)n, capacity_set = 1;
        else if (strcmp(f, "--ollama-url") == 0 && *v)
            a->args.ollama_url = v;
        else if (strcmp(f, "--preload") == 0)
            a->args.preload = v;
        else if (strcmp(f, "--gpu-vram-mb") == 0 && tl_parse_long(v, 0, 1L << 30, &n) == 0)
            a->args.gpu_vram_mb = n;
        else if (strcmp(f, "--ollama-retries") == 0 && tl_parse_long(v, 0, 10, &n) == 0)
            a->args.retries = n;
        else if (strcmp(f, "--refresh-ms") == 0 && tl_parse_long(v, 250, 600000, &n) == 0)
            a->args.refresh_ms = n;
        else if (strcmp(f, "--delay-ms") == 0 && tl_parse_long(v, 0, 3600000, &n) == 0)
            a->args.delay_ms = n;
        else if (strcmp(f, "--chunks") == 0 && tl_parse_long(v, 1, 1000000, &n) == 0)
            a->args.chunks = n;
        else if (strcmp(f, "--heartbeat-ms") == 0 && tl_parse_long(v, 100, 60000, &n) == 0)
            a->heartbeat_ms = n;
        else if (strcmp(f, "--drain-ms") == 0 && tl_parse_long(v, 0, 3600000, &n) == 0)
            s_drain_ms = n;
        else if (strcmp(f, "--fail-file") == 0 && *v)
            a->fail_file = v;
        else {
            fprintf(stderr, "agentbus-worker: bad option or value: %s %s (see --help)\n", f, v);
            return -1;
        }
    }
    if (strcmp(a->backend, "echo") != 0 && strcmp(a->backend, "ollama") != 0) {
        fprintf(stderr, "agentbus-worker: unknown backend '%s' (available: echo, ollama)\n",
                a->backend);
        return -1;
    }
    if (strcmp(a->backend, "ollama") == 0) {
        if (!a->args.ollama_url) {
            fprintf(stderr, "agentbus-worker: --backend ollama needs --ollama-url URL\n");
            return -1;
        }
        if (!service_set)
            a->args.service = "ollama";
        /* The backend's parallelism: what its operator gave Ollama. */
        const char *np = getenv("OLLAMA_NUM_PARALLEL");
        if (!capacity_set)
            a->args.capacity = np && tl_parse_long(np, 1, 100000, &n0) == 0 ? (unsigned)n0 : 4;
    }
    a->args.name = a->name;
    return 0;
}

static int s_setup(const s_args_t *a)
{
    ab_options_t *o = ab_options_new();
    if (!o)
        return AB_ENOMEM;
    int rc = AB_OK;
    if (a->broker)
        rc = ab_options_set_endpoint(o, a->broker);
    if (rc == AB_OK && a->name)
        rc = ab_options_set_name(o, a->name);
    if (rc == AB_OK)
        rc = ab_options_set_heartbeat_ms(o, (int)a->heartbeat_ms);
    if (rc == AB_OK)
        rc = ab_worker_new(&s_worker, o, a->args.service, a->args.capacity);
    ab_options_destroy(&o);
    for (int i = 0; rc == AB_OK && i < a->nlabels; i++) {
        char key[256];
        const char *eq = strchr(a->labels[i], '=');
        snprintf(key, sizeof key, "%.*s", (int)(eq - a->labels[i]), a->labels[i]);
        rc = ab_worker_set_label(s_worker, key, eq + 1);
    }
    return rc;
}

typedef struct {
    const wk_backend_ops_t *ops;
    void *ctx;
    const char *fail_file;
    int failing;
} s_loop_t;

static void s_on_job(ab_worker_t *w, ab_job_t *job, void *arg)
{
    s_loop_t *l = arg;
    if (l->fail_file) {
        int failing = access(l->fail_file, F_OK) == 0;
        if (failing != l->failing) {
            l->failing = failing;
            ab_worker_set_backend_state(w, failing ? "failing" : "ok");
        }
        if (failing) {
            ab_worker_fail(w, &job, AB_EAPPLICATION, "fail mode (--fail-file exists)");
            return;
        }
    }
    l->ops->on_job(l->ctx, w, job);
}

int main(int argc, char **argv)
{
    s_args_t a;
    int prc = s_parse(&a, argc, argv);
    if (prc != 0)
        return prc > 0 ? 0 : 2;
    signal(SIGPIPE, SIG_IGN);
    int rc = s_setup(&a);
    if (rc != AB_OK) {
        fprintf(stderr, "agentbus-worker: %s: %s\n", ab_strerror(rc),
                s_worker ? ab_worker_last_error(s_worker) : "cannot create the worker");
        ab_worker_destroy(&s_worker);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    s_loop_t loop = {strcmp(a.backend, "ollama") == 0 ? &wk_backend_ollama : &wk_backend_echo,
                     NULL, a.fail_file, 0};
    ab_worker_set_backend_state(s_worker, "ok");
    if (loop.ops->create(&loop.ctx, &a.args) != AB_OK) {
        ab_worker_destroy(&s_worker);
        return 1;
    }
    if (loop.ops->attach)
        loop.ops->attach(loop.ctx, s_worker);
    fprintf(stderr, "agentbus-worker: serving '%s' (backend %s, capacity %u)\n", a.args.service,
            loop.ops->name, a.args.capacity);
    for (;;) {
        int t = loop.ops->next_timeout_ms(loop.ctx);
        t = t < 0 || t > 1000 ? 1000 : t;
        /* A backend with its own sockets waits on them and the worker's fd. */
        rc = ab_worker_poll(s_worker, loop.ops->wait ? 0 : t, s_on_job, &loop);
        if (rc < 0)
            break;
        if (s_stopping) { /* a zero-timeout poll does not report the stop */
            rc = AB_ESTOPPED;
            break;
        }
        if (loop.ops->wait)
            loop.ops->wait(loop.ctx, s_worker, t);
        loop.ops->tick(loop.ctx, s_worker);
    }
    if (rc != AB_ESTOPPED)
        fprintf(stderr, "agentbus-worker: %s: %s\n", ab_strerror(rc),
                ab_worker_last_error(s_worker));
    /* The worker first: its BYE hands what the backend still holds back to
     * the broker (re-dispatched elsewhere), and jobs freed after it are not
     * answered one by one. */
    ab_worker_destroy(&s_worker);
    loop.ops->destroy(&loop.ctx);
    return rc == AB_ESTOPPED ? 0 : 1;
}
