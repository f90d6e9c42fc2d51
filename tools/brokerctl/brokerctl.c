/*
 * brokerctl - what an operator looks at first.
 *
 *   brokerctl [--broker EP] [--json] [--timeout-ms N] [--watch S] stats|services|workers
 *   brokerctl [--broker EP] [--timeout-ms N] request [--cache[=TTL_S]|--no-cache|--no-store]
 *             SERVICE DATA|-
 *   brokerctl [...] cache [clear [--tier l1] | get KEY]  (cache.c)
 *   brokerctl [--broker EP] [--json] [--events N] watch
 *   brokerctl [...] generate|chat|embed|models ... (infer.c)
 *   brokerctl [--broker EP] [--json] send AGENT DATA | pub TOPIC DATA | agents
 *   brokerctl [--broker EP] [--json] [--count N] [--takeover] listen NAME | sub TOPIC
 *
 * Exit codes: 0 success; 1 the broker answered with an error or could not
 * be reached (code name and text on stderr); 2 bad usage.
 */
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "cachecmd.h"
#include "infer.h"
#include "render.h"
#include "msgcmd.h"

#include <jansson.h>
#include "tl_args.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t s_stop;
static ab_client_t *s_client; /* for the signal handler: a wait ends at once */
static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
    if (s_client)
        ab_client_stop(s_client); /* documented as async-signal-safe */
}

static void s_usage(FILE *out)
{
    fprintf(out,
            "Usage: brokerctl [options] COMMAND [ARGS]\n\n"
            "Commands:\n"
            "  stats                   broker figures: connections, traffic, services, errors\n"
            "  services                services with queue depth, workers, credit, latency\n"
            "  workers                 registered workers with capacity, load and labels\n"
            "  request SERVICE DATA    send DATA ('-' reads stdin) and print the reply\n"
            "  watch                   print directory changes as they happen: a worker\n"
            "                          joins, leaves or changes health (one line each;\n"
            "                          with --json one JSON object per line)\n\n"
            "  generate MODEL PROMPT [--temperature T] [--seed N] [--num-predict N]\n"
            "           [--system S] [--no-stream] [--service S] [--json]\n"
            "                          stream the model's answer to stdout as it is generated\n"
            "  chat MODEL MESSAGE [same options]   one user message, answer streamed\n"
            "  embed MODEL TEXT...     print one embedding vector per TEXT (up to 16)\n"
            "  models                  inference workers: slots, VRAM, loaded and available models\n"
            "  models load|unload WORKER MODEL     (un)load MODEL on that worker's GPU\n"
            "  request --cache[=TTL_S] | --no-cache | --no-store SERVICE DATA\n"
            "                          mark the request cacheable (TTL in seconds), or bypass\n"
            "                          reading / storing the broker's cache\n"
            "  cache                   cache tiers: hits, misses, bytes, entries, lookup p50/p99\n"
            "  cache clear [--tier l1|l2|l3]  drop cached replies\n"
            "  cache get KEY           show one cached reply (KEY: 32 hex digits)\n"
            "  (inference commands use service 'ollama' unless --service is given, and a\n"
            "   120000 ms timeout unless --timeout-ms is)\n"
            "  send AGENT DATA         direct message to agent AGENT (prints delivered/queued)\n"
            "  listen NAME             connect as agent NAME, print its messages (mailbox first)\n"
            "  pub TOPIC DATA          publish DATA on TOPIC (dot-separated)\n"
            "  sub PATTERN             print messages on PATTERN (a topic, or a prefix ending\n"
            "                          in '.'), one a line, as they arrive\n"
            "  agents                  agents: connection age, mailbox depth, subscriptions\n\n"
            "Options:\n"
            "  --broker ENDPOINT       broker (default: $AB_BROKER, else %s)\n"
            "  --json                  machine-readable output (for request: {\"ok\", \"reply\"}\n"
            "                          or {\"ok\": false, \"code\", \"error\"})\n"
            "  --timeout-ms N          how long to wait for the broker (default 5000)\n"
            "  --watch SECONDS         repeat stats/services/workers every SECONDS\n"
            "  --events N              watch: exit after N changes\n"
            "  --count N               listen/sub: exit after N messages\n"
            "  --takeover              listen: take the name from a live connection\n"
            "  --help                  show this help\n"
            "  --version               show the version\n\n"
            "A failed command exits 1 and prints the error code and text on stderr.\n",
            AB_DEFAULT_ENDPOINT);
}

static int s_json;

/* Reports a failed command: always on stderr; with --json also as an
 * object on stdout, so scripts parsing stdout see the failure too. */
static const char *s_endpoint = AB_DEFAULT_ENDPOINT; /* for error texts */

static int s_fail(ab_client_t *c, int rc)
{
    const char *text = c && ab_client_last_error(c)[0] ? ab_client_last_error(c) : ab_strerror(rc);
    char hint[512];
    if (rc == AB_ETIMEOUT && c && !ab_client_connected(c)) {
        /* The likeliest cause by far: say it. */
        snprintf(hint, sizeof hint, "no broker reachable at %s (is agentbus-broker running?)",
                 s_endpoint);
        text = hint;
    }
    fprintf(stderr, "brokerctl: %s: %s\n", ab_status_name(rc), text);
    if (s_json)
        ctl_render_error(stdout, ab_status_name(rc), text);
    return 1;
}

static int s_show(ab_client_t *c, const char *what, int json, int timeout_ms)
{
    void *buf = NULL;
    size_t len = 0;
    int rc = ab_client_control(c, what, timeout_ms, &buf, &len);
    if (rc != AB_OK)
        return s_fail(c, rc);
    int bad = 0;
    if (strcmp(what, "stats") == 0) {
        Agentbus__Stats *st = agentbus__stats__unpack(NULL, len, buf);
        if ((bad = !st) == 0) {
            ctl_render_stats(stdout, st, json);
            if (st->cache && !json) { /* JSON: in the object, "cache" */
                fprintf(stdout, "\ncache\n");
                ctl_render_cache(stdout, st->cache, 0);
            }
            agentbus__stats__free_unpacked(st, NULL);
        }
    } else if (strcmp(what, "services") == 0) {
        Agentbus__ServiceList *sl = agentbus__service_list__unpack(NULL, len, buf);
        if ((bad = !sl) == 0) {
            ctl_render_services(stdout, sl->services, sl->n_services, json);
            agentbus__service_list__free_unpacked(sl, NULL);
        }
    } else {
        Agentbus__WorkerList *wl = agentbus__worker_list__unpack(NULL, len, buf);
        if ((bad = !wl) == 0) {
            ctl_render_workers(stdout, wl, json);
            agentbus__worker_list__free_unpacked(wl, NULL);
        }
    }
    ab_free(buf);
    fflush(stdout);
    if (bad)
        fprintf(stderr, "brokerctl: MALFORMED: the broker's answer could not be decoded\n");
    return bad;
}

static char *s_read_stdin(size_t *len)
{
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, stdin);
        n += r;
        if (r == 0)
            break;
        if (n == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb)
                free(buf);
            buf = nb;
        }
    }
    *len = n;
    return buf;
}

/* Parses request's cache flags at ARGV[*I...]: --cache[=TTL_S], --no-cache,
 * --no-store. 0, or -1 for a bad one. */
static int s_cache_flags(int argc, char **argv, int *i, uint32_t *flags, uint32_t *ttl)
{
    for (; *i < argc && strncmp(argv[*i], "--", 2) == 0; (*i)++) {
        const char *f = argv[*i];
        long t;
        if (strcmp(f, "--cache") == 0)
            *flags |= AB_CACHE_ON;
        else if (strncmp(f, "--cache=", 8) == 0 && tl_parse_long(f + 8, 1, 30L * 86400, &t) == 0)
            *flags |= AB_CACHE_ON, *ttl = (uint32_t)t;
        else if (strcmp(f, "--no-cache") == 0)
            *flags |= AB_CACHE_NO_READ;
        else if (strcmp(f, "--no-store") == 0)
            *flags |= AB_CACHE_NO_STORE;
        else
            return -1;
    }
    return 0;
}

static int s_request(ab_client_t *c, const char *service, const char *data, int timeout_ms)
{
    size_t len = 0;
    char *in = NULL;
    if (strcmp(data, "-") == 0) {
        if (!(in = s_read_stdin(&len))) {
            fprintf(stderr, "brokerctl: cannot read stdin\n");
            return 1;
        }
        data = in;
    } else {
        len = strlen(data);
    }
    void *reply = NULL;
    size_t rlen = 0;
    int rc = ab_client_request(c, service, data, len, timeout_ms, &reply, &rlen);
    free(in);
    if (rc != AB_OK)
        return s_fail(c, rc);
    if (s_json) {
        ctl_render_reply(stdout, reply, rlen);
    } else {
        fwrite(reply, 1, rlen, stdout);
        if (isatty(STDOUT_FILENO) && (rlen == 0 || ((char *)reply)[rlen - 1] != '\n'))
            fputc('\n', stdout);
    }
    ab_free(reply);
    return 0;
}

/* --- watch: directory changes pushed by the broker ----------------------- */
static long s_events_left = -1;

static void s_on_dir_event(ab_client_t *c, const ab_dir_event_t *ev, void *arg)
{
    (void)c;
    (void)arg;
    const ab_worker_info_t *w = ev->worker;
    if (s_json) {
        json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:f, s:I, s:s}",
                              "change", ev->change, "id", w->id, "name", w->name, "service",
                              w->service, "health", w->health, "capacity",
                              (json_int_t)w->capacity, "in_flight", (json_int_t)w->in_flight,
                              "free_credit", (json_int_t)w->free_credit, "interval_ms",
                              (json_int_t)w->interval_ms, "suspicion", w->suspicion,
                              "ejections", (json_int_t)w->ejections, "backend_state",
                              w->backend_state);
        char *s = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        if (s)
            printf("%s\n", s);
        free(s);
        json_decref(j);
    } else {
        printf("%-6s %-16s %-16s %-9s free %u/%u  interval %u ms  phi %.1f  ejections %u\n",
               ev->change, w->name[0] ? w->name : w->id, w->service, w->health, w->free_credit,
               w->capacity, w->interval_ms, w->suspicion, w->ejections);
    }
    fflush(stdout);
    if (s_events_left > 0)
        s_events_left--;
}

static int s_watch(ab_client_t *c, int timeout_ms)
{
    int rc = ab_client_watch(c, s_on_dir_event, NULL, timeout_ms);
    if (rc != AB_OK)
        return s_fail(c, rc);
    while (!s_stop && s_events_left != 0) {
        rc = ab_client_poll(c, 200);
        if (rc < 0 && rc != AB_ESTOPPED)
            return s_fail(c, rc);
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *broker = NULL;
    int json = 0, i = 1, takeover = 0, msg_nargs = 0;
    long timeout_ms = 5000, watch = 0, count = 0;
    int timeout_set = 0;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(f, "--help") == 0) {
            s_usage(stdout);
            return 0;
        } else if (strcmp(f, "--version") == 0) {
            printf("brokerctl %s\n", AB_VERSION_STRING);
            return 0;
        } else if (strcmp(f, "--json") == 0) {
            json = s_json = 1;
        } else if (strcmp(f, "--broker") == 0 && v) {
            broker = v, i++;
        } else if (strcmp(f, "--timeout-ms") == 0 && v &&
                   tl_parse_long(v, 1, 86400000, &timeout_ms) == 0) {
            i++;
            timeout_set = 1;
        } else if (strcmp(f, "--watch") == 0 && v && tl_parse_long(v, 1, 86400, &watch) == 0) {
            i++;
        } else if (strcmp(f, "--events") == 0 && v &&
                   tl_parse_long(v, 1, 1000000000, &s_events_left) == 0) {
            i++;
        } else if (strcmp(f, "--count") == 0 && v &&
                   tl_parse_long(v, 1, 1000000000, &count) == 0) {
            i++;
        } else if (strcmp(f, "--takeover") == 0) {
            takeover = 1;
        } else {
            fprintf(stderr, "brokerctl: bad option '%s'\n\n", f);
            s_usage(stderr);
            return 2;
        }
    }
    if (i >= argc) {
        s_usage(stderr);
        return 2;
    }
    const char *cmd = argv[i++];
    int is_show = !strcmp(cmd, "stats") || !strcmp(cmd, "services") || !strcmp(cmd, "workers");
    int is_req = !strcmp(cmd, "request");
    int is_watch = !strcmp(cmd, "watch");
    int is_cache = !strcmp(cmd, "cache");
    uint32_t cflags = 0, cttl = 0;
    if (is_req && s_cache_flags(argc, argv, &i, &cflags, &cttl) != 0) {
        fprintf(stderr, "brokerctl: bad request option '%s'\n\n", argv[i]);
        s_usage(stderr);
        return 2;
    }
    int is_infer = !strcmp(cmd, "generate") || !strcmp(cmd, "chat") || !strcmp(cmd, "embed") ||
                   (!strcmp(cmd, "models") && i < argc &&
                    (!strcmp(argv[i], "load") || !strcmp(argv[i], "unload")));
    int is_models = !strcmp(cmd, "models") && !is_infer;
    if (is_infer || is_models) {
        for (int k = i; k < argc; k++) /* --json may follow the command */
            if (strcmp(argv[k], "--json") == 0)
                json = s_json = 1;
    }
    int models_args_ok = 1;
    for (int k = i; is_models && k < argc; k++)
        models_args_ok &= strcmp(argv[k], "--json") == 0;
    int is_msg = ctl_msgcmd_known(cmd, &msg_nargs);
    if ((!is_show && !is_req && !is_watch && !is_infer && !is_models && !is_msg &&
         !is_cache) ||
        ((is_show || is_watch) && i != argc) || !models_args_ok ||
        (is_req && i + 2 != argc) || (is_msg && i + msg_nargs != argc)) {
        fprintf(stderr, "brokerctl: unknown command or wrong arguments: %s\n\n", cmd);
        s_usage(stderr);
        return 2;
    }
    ab_options_t *o = ab_options_new();
    ab_client_t *c = NULL;
    if (!o || (broker && ab_options_set_endpoint(o, broker) != AB_OK)) {
        fprintf(stderr, "brokerctl: invalid broker endpoint\n");
        ab_options_destroy(&o);
        return 2;
    }
    /* Only `listen` is an agent with a name: other commands stay unnamed,
     * so that any number of them can run at once. */
    if (strcmp(cmd, "listen") == 0 && ab_options_set_name(o, argv[i]) != AB_OK) {
        fprintf(stderr, "brokerctl: invalid agent name\n");
        ab_options_destroy(&o);
        return 2;
    }
    ab_options_set_takeover(o, takeover);
    if (broker)
        s_endpoint = broker;
    else if (getenv("AB_BROKER") && *getenv("AB_BROKER"))
        s_endpoint = getenv("AB_BROKER");
    int rc = ab_client_new(&c, o);
    ab_options_destroy(&o);
    if (rc != AB_OK) {
        rc = s_fail(c, rc);
        ab_client_destroy(&c);
        return rc;
    }
    s_client = c;
    signal(SIGINT, s_on_signal);
    signal(SIGTERM, s_on_signal);
    if (is_watch) {
        rc = s_watch(c, (int)timeout_ms);
    } else if (is_infer) {
        char err[512];
        int irc = ctl_infer(c, cmd, argc - i, argv + i, &json, timeout_set ? (int)timeout_ms
                                                                              : 120000,
                               &s_stop, err, sizeof err);
        if (irc == AB_EINVAL && !err[0]) {
            s_usage(stderr);
            rc = 2;
        } else if (irc != AB_OK) {
            fprintf(stderr, "brokerctl: %s: %s\n", ab_status_name(irc), err[0] ? err : ab_strerror(irc));
            if (s_json)
                ctl_render_error(stdout, ab_status_name(irc), err[0] ? err : ab_strerror(irc));
            rc = 1;
        } else {
            rc = 0;
        }
    } else if (is_models) {
        int mrc = ctl_models(c, json, (int)timeout_ms);
        rc = mrc == AB_OK ? 0 : s_fail(c, mrc);
    } else if (is_msg) {
        ctl_msgcmd_opts_t mo = {json, (int)timeout_ms, count, &s_stop};
        rc = ctl_msgcmd_run(c, cmd, argv + i, &mo);
    } else if (is_cache) {
        int crc = ctl_cache(c, argc - i, argv + i, json, (int)timeout_ms);
        if (crc == AB_EINVAL) {
            fprintf(stderr, "brokerctl: wrong arguments to cache\n\n");
            s_usage(stderr);
            rc = 2;
        } else {
            rc = crc == AB_OK ? 0 : s_fail(c, crc);
        }
    } else if (is_req) {
        if (cflags)
            ab_client_set_cache(c, cflags, cttl);
        rc = s_request(c, argv[i], argv[i + 1], (int)timeout_ms);
    } else {
        do {
            if (watch && !json)
                printf("\033[H\033[2J");
            rc = s_show(c, cmd, json, (int)timeout_ms);
            for (long t = 0; watch && !s_stop && t < watch * 10; t++)
                usleep(100000);
        } while (watch && !s_stop && rc == 0);
    }
    s_client = NULL;
    ab_client_destroy(&c);
    return rc;
}
