/*
 * main.c - agentbus-worker: connects to a broker, registers a service and
 * serves it with a backend.
 */
#include "backend.h"
#include "tl_args.h"
#include "tl_clock.h"
#include "tl_heap.h"
#include "tl_log.h"

#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static ab_worker_t *s_worker;
static volatile sig_atomic_t s_signals;
static long s_drain_ms = 2000;
static volatile sig_atomic_t s_stopping; /* hard stop: the loop checks it */
/* When the first signal came (ab_now_ms: clock_gettime, async-signal-safe).
 * The drain starts then; the loop may log it up to a second later. */
static volatile int64_t s_signal_ms;

/* First SIGTERM/SIGINT/SIGHUP: drain (finish what is held, up to --drain-ms);
 * a second one, or --drain-ms 0: stop at once. */
static void s_on_signal(int sig)
{
    (void)sig;
    if (!s_signals)
        s_signal_ms = ab_now_ms();
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
           "  --key FILE          this worker's secret certificate for a broker with\n"
           "                      --auth curve (brokerctl keygen; default: $AB_KEY)\n"
           "  --broker-key KEY    the broker's public key, Z85 or a certificate file\n"
           "                      (default: $AB_BROKER_KEY)\n"
           "  --backend NAME      backend: echo or ollama (default echo)\n"
           "  --service NAME      service to register, 1..255 bytes (default echo; ollama\n"
           "                      backend: ollama)\n"
           "  --capacity N        concurrent requests, 1..100000 (default 16; ollama backend:\n"
           "                      $OLLAMA_NUM_PARALLEL, else 4, a bad value exit 2; the\n"
           "                      adaptive limit's maximum)\n"
           "  --delay-ms N        echo: wait N ms before replying (default 0)\n"
           "  --chunks N          echo: stream the reply in N parts (default 1)\n"
           "  --ollama-url URL    ollama (required): the Ollama server's base URL, e.g.\n"
           "                      http://127.0.0.1:11434 (no default; at most 511 bytes)\n"
           "  --preload M1,M2     ollama: load these models at start, one after another\n"
           "                      (names of at most 200 bytes)\n"
           "  --gpu-vram-mb N     ollama: GPU memory when NVML cannot tell (default 0: unknown)\n"
           "  --ollama-retries N  ollama: retries of a 503 / connection error here (default 2)\n"
           "  --min-slots N       ollama: floor of the adaptive slot limit, which 503s and\n"
           "                      out-of-memory errors halve (default 1; above --capacity\n"
           "                      or --model-slots: exit 2)\n"
           "  --model-slots N     ollama: most requests of one model at once (default 0:\n"
           "                      --capacity); e.g. OLLAMA_NUM_PARALLEL + 1\n"
           "  --refresh-ms N      ollama: longest interval between model probes (default 5000)\n"
           "  --name NAME         worker name shown by brokerctl workers (under 256 bytes)\n"
           "  --label KEY=VALUE   label sent with the registration (repeatable, 64 at most)\n"
           "  --heartbeat-ms N    heartbeat interval, 100..60000 (default 1000); the\n"
           "                      broker then adapts it (health-floor/ceiling-ms)\n"
           "  --drain-ms N        on SIGTERM/SIGINT/SIGHUP: take nothing new and\n"
           "                      finish the requests held for up to N ms, then hand\n"
           "                      the rest back (default 2000; 0: stop at once). A\n"
           "                      second signal stops at once\n"
           "  --fail-file PATH    while PATH exists, answer every request with an\n"
           "                      error (APPLICATION) and report backend state\n"
           "                      \"failing\": fault injection for tests\n"
           "  --log-level LEVEL   error, warn, info (default) or debug\n"
           "  --log-format FMT    text (default: time level subsystem message) or json\n"
           "                      (one object per line: ts, level, subsys, msg)\n"
           "  --help, -h          show this help\n"
           "  --version           print \"agentbus-worker VERSION\"\n"
           "Options may be given as --opt VALUE or --opt=VALUE (needed for a value that\n"
           "starts with '-'). An option of the other backend (echo: or ollama:) is\n"
           "refused, exit 2.\n\n"
           "The worker waits for its broker and reconnects when it is lost. A broker\n"
           "that refuses its key (DENIED: none, not trusted, service or capacity not\n"
           "granted) is logged as such and retried, so the operator may trust or grant\n"
           "the key. Any other refusal of its registration exits 1, as waiting would\n"
           "not change it: TOO_LARGE (a --label or --name over the broker's\n"
           "register-max-*), BUSY (the broker's max-services reached).\n",
           prog, AB_DEFAULT_ENDPOINT);
}

typedef struct {
    const char *broker, *backend, *name;
    const char *endpoint; /* --broker, else $AB_BROKER, else the default */
    const char *labels[64];
    const char *fail_file;
    const char *key, *broker_key; /* --key, --broker-key (else $AB_KEY ...) */
    int nlabels;
    long heartbeat_ms;
    const char *echo_opt, *ollama_opt; /* the last option given of each backend's */
    wk_backend_args_t args;
} s_args_t;

enum {
    O_HELP = 1, O_VERSION, O_BROKER, O_BACKEND, O_SERVICE, O_NAME, O_LABEL, O_CAPACITY,
    O_DELAY, O_CHUNKS, O_HEARTBEAT, O_DRAIN, O_FAILFILE, O_OLLAMA_URL, O_PRELOAD, O_VRAM,
    O_RETRIES, O_REFRESH, O_LOGLEVEL, O_LOGFORMAT, O_KEY, O_BROKERKEY, O_MINSLOTS, O_MODELSLOTS,
};
static const tl_opt_t s_opts[] = {
    {"help", 'h', TL_NOVAL, O_HELP},           {"version", 0, TL_NOVAL, O_VERSION},
    {"broker", 0, TL_VAL, O_BROKER},           {"backend", 0, TL_VAL, O_BACKEND},
    {"service", 0, TL_VAL, O_SERVICE},         {"name", 0, TL_VAL, O_NAME},
    {"label", 0, TL_VAL, O_LABEL},             {"capacity", 0, TL_VAL, O_CAPACITY},
    {"delay-ms", 0, TL_VAL, O_DELAY},          {"chunks", 0, TL_VAL, O_CHUNKS},
    {"heartbeat-ms", 0, TL_VAL, O_HEARTBEAT},  {"drain-ms", 0, TL_VAL, O_DRAIN},
    {"fail-file", 0, TL_VAL, O_FAILFILE},      {"ollama-url", 0, TL_VAL, O_OLLAMA_URL},
    {"preload", 0, TL_VAL, O_PRELOAD},         {"gpu-vram-mb", 0, TL_VAL, O_VRAM},
    {"ollama-retries", 0, TL_VAL, O_RETRIES},  {"refresh-ms", 0, TL_VAL, O_REFRESH},
    {"log-level", 0, TL_VAL, O_LOGLEVEL},      {"log-format", 0, TL_VAL, O_LOGFORMAT},
    {"key", 0, TL_VAL, O_KEY},                 {"broker-key", 0, TL_VAL, O_BROKERKEY},
    {"min-slots", 0, TL_VAL, O_MINSLOTS},      {"model-slots", 0, TL_VAL, O_MODELSLOTS},
    {NULL, 0, 0, 0},
};

/* --preload's names: each at most AB_MODEL_MAX bytes, as a request's model
 * (the backend skipped a longer one without a word). Empty ones are ignored. */
static int s_preload_ok(const char *v)
{
    for (const char *p = v; *p; p += *p == ',') {
        size_t n = strcspn(p, ",");
        if (n > AB_MODEL_MAX) {
            fprintf(stderr, "agentbus-worker: --preload model name '%.40s...' is %zu bytes "
                    "(at most %d)\n", p, n, AB_MODEL_MAX);
            return -1;
        }
        p += n;
    }
    return 0;
}

/* One option's value V into A; 0, or -1 for a bad value. */
static int s_take(s_args_t *a, int id, const char *v, int *service_set, int *capacity_set)
{
    long n;
    switch (id) {
    case O_BROKER: a->broker = v; return 0;
    case O_KEY: a->key = v; return *v ? 0 : -1;
    case O_BROKERKEY: a->broker_key = v; return *v ? 0 : -1;
    case O_BACKEND: a->backend = v; return 0;
    case O_SERVICE: /* 1..255 bytes: ab_worker_new's bound */
        a->args.service = v, *service_set = 1;
        return *v && strlen(v) < 256 ? 0 : -1;
    case O_NAME: a->name = v; return strlen(v) < 256 ? 0 : -1; /* the library's bound */
    case O_LABEL:
        if (a->nlabels >= 64) {
            fprintf(stderr, "agentbus-worker: at most 64 --label options\n");
            return -1;
        }
        if (!strchr(v, '=') || v[0] == '=') /* KEY=VALUE, KEY not empty */
            return -1;
        a->labels[a->nlabels++] = v;
        return 0;
    case O_CAPACITY:
        if (tl_parse_long(v, 1, 100000, &n) != 0)
            return -1;
        a->args.capacity = (unsigned)n, *capacity_set = 1;
        return 0;
    case O_OLLAMA_URL: a->args.ollama_url = v; return *v ? 0 : -1;
    case O_PRELOAD: a->args.preload = v; return s_preload_ok(v);
    case O_VRAM: return tl_parse_long(v, 0, 1L << 30, &a->args.gpu_vram_mb);
    case O_RETRIES: return tl_parse_long(v, 0, 10, &a->args.retries);
    case O_MINSLOTS: return tl_parse_long(v, 1, 100000, &a->args.min_slots);
    case O_MODELSLOTS: return tl_parse_long(v, 0, 100000, &a->args.model_slots);
    case O_REFRESH: return tl_parse_long(v, 250, 600000, &a->args.refresh_ms);
    case O_DELAY: return tl_parse_long(v, 0, 3600000, &a->args.delay_ms);
    case O_CHUNKS: return tl_parse_long(v, 1, 1000000, &a->args.chunks);
    case O_HEARTBEAT: return tl_parse_long(v, 100, 60000, &a->heartbeat_ms);
    case O_DRAIN: return tl_parse_long(v, 0, 3600000, &s_drain_ms);
    case O_FAILFILE: a->fail_file = v; return *v ? 0 : -1;
    case O_LOGLEVEL: return (tl_log_level = tl_log_level_parse(v)) < 0 ? -1 : 0;
    case O_LOGFORMAT: return (tl_log_format = tl_log_format_parse(v)) < 0 ? -1 : 0;
    }
    return -1;
}

/* The Ollama URL as libcurl will take it: "http://a b" passed the shape
 * check and then every request failed ("URL using bad/illegal format");
 * one over WK_OLLAMA_URL_MAX bytes was cut without a word. */
static int s_check_ollama_url(const char *url, char *why, size_t cap)
{
    if (tl_check_http_url(url, why, cap) != 0)
        return -1;
    if (strlen(url) > WK_OLLAMA_URL_MAX) {
        snprintf(why, cap, "%zu bytes (at most %d)", strlen(url), WK_OLLAMA_URL_MAX);
        return -1;
    }
    CURLU *u = curl_url();
    CURLUcode rc = u ? curl_url_set(u, CURLUPART_URL, url, 0) : CURLUE_OUT_OF_MEMORY;
    curl_url_cleanup(u);
    if (rc != CURLUE_OK)
        snprintf(why, cap, "libcurl refuses it: %s", curl_url_strerror(rc));
    return rc == CURLUE_OK ? 0 : -1;
}

/* The keys (flag, else environment) as the library will take them: one it
 * cannot use is a bad value, exit 2 naming where it came from, as brokerctl
 * and the gateway say it (it was exit 1 after the worker was made). */
static int s_check_keys(const s_args_t *a)
{
    const char *ek = getenv("AB_KEY"), *ebk = getenv("AB_BROKER_KEY");
    const char *key = a->key ? a->key : ek && *ek ? ek : NULL;
    const char *bkey = a->broker_key ? a->broker_key : ebk && *ebk ? ebk : NULL;
    ab_options_t *o = ab_options_new();
    int bad_key = o && key && ab_options_set_key_file(o, key) != AB_OK;
    int bad_bkey = o && !bad_key && bkey && ab_options_set_broker_key(o, bkey) != AB_OK;
    ab_options_destroy(&o);
    if (bad_key)
        fprintf(stderr, "agentbus-worker: %s '%s': not a readable secret certificate "
                "(brokerctl keygen's NAME.key_secret)\n", a->key ? "--key" : "$AB_KEY", key);
    if (bad_bkey)
        fprintf(stderr, "agentbus-worker: %s '%s': neither a Z85 public key nor a certificate "
                "file\n", a->broker_key ? "--broker-key" : "$AB_BROKER_KEY", bkey);
    return bad_key || bad_bkey ? -1 : 0;
}

/* The broker's endpoint, the Ollama URL and the keys, checked before
 * anything starts: a typo is exit 2 naming the value, not a worker that
 * waits. */
static int s_check(s_args_t *a)
{
    const char *env = getenv("AB_BROKER");
    a->endpoint = a->broker ? a->broker : env && *env ? env : AB_DEFAULT_ENDPOINT;
    char why[256];
    if (tl_check_endpoint(a->endpoint, why, sizeof why) != 0) {
        fprintf(stderr, "agentbus-worker: invalid %s '%s': %s\n",
                a->broker ? "--broker" : "$AB_BROKER", a->endpoint, why);
        return -1;
    }
    if (a->args.ollama_url && s_check_ollama_url(a->args.ollama_url, why, sizeof why) != 0) {
        fprintf(stderr, "agentbus-worker: invalid --ollama-url '%s': %s\n", a->args.ollama_url,
                why);
        return -1;
    }
    return s_check_keys(a);
}

/* The adaptive limit's floor under its maximum: the backend took the
 * smaller without a word (--min-slots 8 with 4 slots ran with 4). */
static int s_check_slots(const wk_backend_args_t *b)
{
    long cap = (long)b->capacity, over = b->min_slots > cap ? cap
                                       : b->model_slots > 0 && b->min_slots > b->model_slots
                                           ? b->model_slots
                                           : 0;
    if (!over)
        return 0;
    fprintf(stderr, "agentbus-worker: --min-slots %ld is above %s %ld (the floor of the adaptive "
            "limit cannot exceed its maximum)\n", b->min_slots,
            over == cap && b->min_slots > cap ? "--capacity" : "--model-slots", over);
    return -1;
}

static void s_note_backend_opt(s_args_t *a, int id, const char *name)
{
    switch (id) {
    case O_DELAY: case O_CHUNKS: a->echo_opt = name; break;
    case O_OLLAMA_URL: case O_PRELOAD: case O_VRAM: case O_RETRIES: case O_REFRESH:
    case O_MINSLOTS: case O_MODELSLOTS: a->ollama_opt = name; break;
    }
}

/* An option of the other backend is a mistake, not a no-op: "--ollama-url
 * URL" without "--backend ollama" ran an echo worker on service "echo"
 * that answered every prompt with itself, without a word. */
static int s_backend_opts(const s_args_t *a)
{
    int ollama = strcmp(a->backend, "ollama") == 0;
    const char *wrong = ollama ? a->echo_opt : a->ollama_opt;
    if (!wrong)
        return 0;
    fprintf(stderr, "agentbus-worker: --%s is for --backend %s (this worker's backend is %s)\n",
            wrong, ollama ? "echo" : "ollama", a->backend);
    return -1;
}

static int s_parse(s_args_t *a, int argc, char **argv)
{
    memset(a, 0, sizeof *a);
    a->backend = "echo";
    a->args.service = "echo";
    a->args.capacity = 16;
    a->args.chunks = 1;
    a->heartbeat_ms = 1000;
    a->args.retries = 2;
    a->args.min_slots = 1;
    a->args.refresh_ms = 5000;
    int service_set = 0, capacity_set = 0, id;
    long n0 = 4; /* the Ollama backend's capacity without --capacity */
    tl_parser_t p;
    tl_parser_init(&p, argc, argv, 1);
    while ((id = tl_next(&p, s_opts)) != TL_END) {
        if (id == O_HELP) {
            s_usage(argv[0]);
            return 1;
        }
        if (id == O_VERSION) {
            tl_print_version("agentbus-worker", ab_version());
            return 1;
        }
        if (id == TL_ERROR || id == TL_ARG) {
            fprintf(stderr, "agentbus-worker: %s%s%s (see --help)\n", id == TL_ARG ?
                    "unexpected argument '" : p.err, id == TL_ARG ? p.arg : "",
                    id == TL_ARG ? "'" : "");
            return -1;
        }
        if (s_take(a, id, p.value, &service_set, &capacity_set) != 0) {
            fprintf(stderr, "agentbus-worker: bad value '%s' for --%s (see --help)\n", p.value,
                    p.opt->name);
            return -1;
        }
        s_note_backend_opt(a, id, p.opt->name);
    }
    if (strcmp(a->backend, "echo") != 0 && strcmp(a->backend, "ollama") != 0) {
        fprintf(stderr, "agentbus-worker: unknown backend '%s' (available: echo, ollama)\n",
                a->backend);
        return -1;
    }
    if (s_backend_opts(a) != 0)
        return -1;
    if (strcmp(a->backend, "ollama") == 0) {
        if (!a->args.ollama_url) {
            fprintf(stderr, "agentbus-worker: --backend ollama needs --ollama-url URL\n");
            return -1;
        }
        if (!service_set)
            a->args.service = "ollama";
        /* The backend's parallelism: what its operator gave Ollama. A
         * value that is not a capacity is refused (it fell back to 4 without
         * a word). */
        const char *np = getenv("OLLAMA_NUM_PARALLEL");
        if (!capacity_set && np && tl_parse_long(np, 1, 100000, &n0) != 0) {
            fprintf(stderr, "agentbus-worker: bad value '%s' for $OLLAMA_NUM_PARALLEL (the "
                    "default --capacity: 1..100000)\n", np);
            return -1;
        }
        if (!capacity_set)
            a->args.capacity = (unsigned)n0;
    }
    a->args.name = a->name;
    if (strcmp(a->backend, "ollama") == 0 && s_check_slots(&a->args) != 0)
        return -1;
    return s_check(a);
}

static int s_setup(const s_args_t *a)
{
    ab_options_t *o = ab_options_new();
    if (!o)
        return AB_ENOMEM;
    int rc = AB_OK;
    rc = ab_options_set_endpoint(o, a->endpoint);
    if (rc == AB_OK && a->name)
        rc = ab_options_set_name(o, a->name);
    if (rc == AB_OK)
        rc = ab_options_set_heartbeat_ms(o, (int)a->heartbeat_ms);
    if (rc == AB_OK && a->key && (rc = ab_options_set_key_file(o, a->key)) != AB_OK)
        fprintf(stderr, "agentbus-worker: --key '%s': not a readable secret certificate "
                "(brokerctl keygen's NAME.key_secret)\n", a->key);
    if (rc == AB_OK && a->broker_key && (rc = ab_options_set_broker_key(o, a->broker_key)))
        fprintf(stderr, "agentbus-worker: --broker-key '%s': neither a Z85 public key nor a "
                "certificate file\n", a->broker_key);
    if (rc == AB_OK)
        rc = ab_worker_new(&s_worker, o, a->args.service, a->args.capacity);
    ab_options_destroy(&o);
    /* The key whole: the broker judges its length (register-max-string-
     * bytes); a 256-byte copy here cut longer ones without a word. */
    for (int i = 0; rc == AB_OK && i < a->nlabels; i++) {
        const char *eq = strchr(a->labels[i], '=');
        char *key = strndup(a->labels[i], (size_t)(eq - a->labels[i]));
        rc = key ? ab_worker_set_label(s_worker, key, eq + 1) : AB_ENOMEM;
        free(key);
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
            if (failing)
                TL_WARN("worker", "%s exists: failing every request", l->fail_file);
            else
                TL_INFO("worker", "%s is gone: serving again", l->fail_file);
        }
        if (failing) {
            ab_worker_fail(w, &job, AB_EAPPLICATION, "fail mode (--fail-file exists)");
            return;
        }
    }
    l->ops->on_job(l->ctx, w, job);
}

/* Says when the broker is reached, lost and reached again, and once when
 * it has not been reached for a while: a worker started before its broker
 * (or with a wrong --broker) is not silent. A broker that answers but
 * refuses the worker is not "not reachable": its reason is said instead. */
typedef struct {
    int up, warned, refused;
    int64_t since;
} s_link_t;

/* Says a refusal once, when it starts or changes. A refusal by key
 * (DENIED: key not trusted, none given, service or capacity not granted)
 * is the broker operator's to mend, by trusting or granting the key, and
 * the library keeps trying, so the worker waits for that. Any other (a
 * label or name over register-max-*: this worker's own settings; the
 * broker's max-services reached) the library does not retry on this
 * connection: waiting would serve nothing for ever, so the worker exits
 * and a supervisor sees it.
 * Returns the refusal to exit with, or 0. */
static int s_refusal_log(s_link_t *l, const char *ep, const char *service)
{
    int refused = ab_worker_refused(s_worker);
    /* Between two refused attempts (a keyless connection is "connected" at
     * TCP until the broker hangs up on its greeting) the library says 0:
     * the refusal ends only when the worker is registered. Under load that
     * gap let "no broker reachable" through and the refusal be said again. */
    if (!refused && !ab_worker_connected(s_worker))
        refused = l->refused;
    if (refused == l->refused)
        return 0;
    l->refused = refused;
    if (refused == AB_EDENIED)
        TL_WARN("worker", "the broker at %s refused this worker: DENIED: %s; still trying (its "
                "operator may trust or grant this worker's key for '%s': docs/security.md)", ep,
                ab_worker_last_error(s_worker), service);
    else if (refused)
        TL_ERR("worker", "the broker at %s refused this worker: %s: %s; exiting, as waiting "
               "would not change it", ep, ab_status_name(refused), ab_worker_last_error(s_worker));
    return refused == AB_EDENIED ? 0 : refused;
}

/* 0, or the refusal to exit with (s_refusal_log). */
static int s_link_log(s_link_t *l, const char *ep, const char *service)
{
    int fatal = s_refusal_log(l, ep, service);
    int up = ab_worker_connected(s_worker);
    int64_t now = tl_now_ms();
    if (up && !l->up)
        TL_INFO("worker", "connected to the broker at %s, '%s' registered", ep, service);
    else if (!up && l->up)
        TL_WARN("worker", "lost the broker at %s, reconnecting", ep);
    if (up != l->up) {
        l->up = up;
        l->since = now;
        l->warned = 0;
    }
    if (!up && !l->refused && !l->warned && now - l->since >= 5000) {
        TL_WARN("worker",
                "no broker reachable at %s yet (is agentbus-broker running?), still trying", ep);
        l->warned = 1;
    }
    return fatal;
}

/* A stop by signal, as the log tells it: a line when the drain starts
 * (how many requests are still held) and one when it ends (all answered,
 * or --drain-ms passed and the rest goes back to the broker). The handler
 * only sets flags (logging is not async-signal-safe): the loop logs, at
 * the latest a second after the signal. */
typedef struct {
    int started;
    int64_t since;
} s_drain_t;

static void s_drain_begin_log(s_drain_t *d)
{
    if (!s_signals || d->started || s_stopping)
        return;
    d->started = 1;
    /* From the signal, not from this line: a drain shorter than the loop's
     * wait was logged as "drain ended after 0 ms (--drain-ms 300)". */
    d->since = s_signal_ms ? s_signal_ms : tl_now_ms();
    unsigned n = ab_worker_in_flight(s_worker);
    TL_INFO("worker", "draining: taking nothing new, finishing %u request%s in flight "
            "(up to %ld ms, --drain-ms)", n, n == 1 ? "" : "s", s_drain_ms);
}

static void s_drain_end_log(const s_drain_t *d)
{
    unsigned n = ab_worker_in_flight(s_worker);
    const char *s = n == 1 ? "" : "s";
    if (!s_signals)
        return;
    if (s_stopping)
        TL_INFO("worker", "stopping at once (%s): %u request%s in flight handed back to the "
                "broker", d->started ? "a second signal" : "--drain-ms 0", n, s);
    else if (n == 0)
        TL_INFO("worker", "drained in %lld ms: every request answered",
                (long long)(tl_now_ms() - d->since));
    else
        TL_WARN("worker", "drain ended after %lld ms (--drain-ms %ld) with %u request%s in "
                "flight: handed back to the broker", (long long)(tl_now_ms() - d->since),
                s_drain_ms, n, s);
}

/* Serves until stopped: AB_ESTOPPED, or the error (logged) that ended it. */
static int s_serve(s_loop_t *loop, const s_args_t *a)
{
    s_link_t link = {0, 0, 0, tl_now_ms()};
    s_drain_t drain = {0, 0};
    for (;;) {
        int rc = s_link_log(&link, a->endpoint, a->args.service);
        if (rc != 0)
            return rc; /* a refusal, said already */
        int t = loop->ops->next_timeout_ms(loop->ctx);
        t = t < 0 || t > 1000 ? 1000 : t;
        /* A backend with its own sockets waits on them and the worker's fd. */
        rc = ab_worker_poll(s_worker, loop->ops->wait ? 0 : t, s_on_job, loop);
        if (rc >= 0 && s_stopping) /* a zero-timeout poll does not report the stop */
            rc = AB_ESTOPPED;
        s_drain_begin_log(&drain);
        if (rc < 0) {
            if (rc != AB_ESTOPPED)
                TL_ERR("worker", "%s: %s", ab_strerror(rc), ab_worker_last_error(s_worker));
            else
                s_drain_end_log(&drain);
            return rc;
        }
        if (loop->ops->wait)
            loop->ops->wait(loop->ctx, s_worker, t);
        loop->ops->tick(loop->ctx, s_worker);
    }
}

int main(int argc, char **argv)
{
    tl_heap_tune(); /* before any thread: base/heap_tune.h says why */
    s_args_t a;
    int prc = s_parse(&a, argc, argv);
    if (prc != 0)
        return prc > 0 ? 0 : 2;
    signal(SIGPIPE, SIG_IGN);
    int rc = s_setup(&a);
    if (rc != AB_OK) {
        fprintf(stderr, "agentbus-worker: %s: %s\n", ab_strerror(rc),
                ab_worker_last_error(s_worker)[0] ? ab_worker_last_error(s_worker)
                                                  : "cannot create the worker");
        ab_worker_destroy(&s_worker);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL); /* its terminal closed: drain too, not die mid-job */

    s_loop_t loop = {strcmp(a.backend, "ollama") == 0 ? &wk_backend_ollama : &wk_backend_echo,
                     NULL, a.fail_file, 0};
    ab_worker_set_backend_state(s_worker, "ok");
    if (loop.ops->create(&loop.ctx, &a.args) != AB_OK) {
        ab_worker_destroy(&s_worker);
        return 1;
    }
    if (loop.ops->attach)
        loop.ops->attach(loop.ctx, s_worker);
    TL_INFO("worker", "agentbus-worker %s serving '%s' (backend %s, capacity %u), waiting for the "
            "broker at %s", ab_version(), a.args.service, loop.ops->name, a.args.capacity,
            a.endpoint);
    rc = s_serve(&loop, &a);
    /* The worker first: its BYE hands what the backend still holds back to
     * the broker (re-dispatched elsewhere), and jobs freed after it are not
     * answered one by one. */
    ab_worker_destroy(&s_worker);
    loop.ops->destroy(&loop.ctx);
    return rc == AB_ESTOPPED ? 0 : 1;
}
