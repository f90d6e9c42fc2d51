/*
 * brokerctl - what an operator looks at first.
 *
 *   brokerctl [--broker EP] [--json] [--timeout-ms N] [--watch S] stats|services|workers
 *   brokerctl [--broker EP] [--timeout-ms N] request [--cache[=TTL_S]|--no-cache|--no-store]
 *             SERVICE DATA|-
 *   brokerctl [...] cache [clear [--tier l1] | get KEY]  (cache.c)
 *   brokerctl [...] generate|chat|embed|models ... (infer.c)
 *
 * Exit codes: 0 success; 1 the broker answered with an error or could not
 * be reached (code name and text on stderr); 2 bad usage.
 */
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "cache.h"
#include "infer.h"
#include "render.h"
#include "util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t s_stop;
static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
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
            "   120000 ms timeout unless --timeout-ms is)\n\n"
            "Options:\n"
            "  --broker ENDPOINT       broker (default: $AB_BROKER, else %s)\n"
            "  --json                  machine-readable output (for request: {\"ok\", \"reply\"}\n"
            "                          or {\"ok\": false, \"code\", \"error\"})\n"
            "  --timeout-ms N          how long to wait for the broker (default 5000)\n"
            "  --watch SECONDS         repeat stats/services/workers every SECONDS\n"
            "  --help                  show this help\n\n"
            "A failed command exits 1 and prints the error code and text on stderr.\n",
            AB_DEFAULT_ENDPOINT);
}

static int s_json;

/* Reports a failed command: always on stderr; with --json also as an
 * object on stdout, so scripts parsing stdout see the failure too. */
static int s_fail(ab_client_t *c, int rc)
{
    const char *text = c && ab_client_last_error(c)[0] ? ab_client_last_error(c) : ab_strerror(rc);
    fprintf(stderr, "brokerctl: %s: %s\n", ab_status_name(rc), text);
    if (s_json)
        ab_render_error(stdout, ab_status_name(rc), text);
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
            ab_render_stats(stdout, st, json);
            if (st->cache && !json) { /* JSON: in the object, "cache" */
                fprintf(stdout, "\ncache\n");
                ab_render_cache(stdout, st->cache, 0);
            }
            agentbus__stats__free_unpacked(st, NULL);
        }
    } else if (strcmp(what, "services") == 0) {
        Agentbus__ServiceList *sl = agentbus__service_list__unpack(NULL, len, buf);
        if ((bad = !sl) == 0) {
            ab_render_services(stdout, sl->services, sl->n_services, json);
            agentbus__service_list__free_unpacked(sl, NULL);
        }
    } else {
        Agentbus__WorkerList *wl = agentbus__worker_list__unpack(NULL, len, buf);
        if ((bad = !wl) == 0) {
            ab_render_workers(stdout, wl, json);
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
        else if (strncmp(f, "--cache=", 8) == 0 && ab_parse_long(f + 8, 1, 30L * 86400, &t) == 0)
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
        ab_render_reply(stdout, reply, rlen);
    } else {
        fwrite(reply, 1, rlen, stdout);
        if (isatty(STDOUT_FILENO) && (rlen == 0 || ((char *)reply)[rlen - 1] != '\n'))
            fputc('\n', stdout);
    }
    ab_free(reply);
    return 0;
}

int main(int argc, char **argv)
{
    const char *broker = NULL;
    int json = 0, i = 1;
    long timeout_ms = 5000, watch = 0;
    int timeout_set = 0;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(f, "--help") == 0) {
            s_usage(stdout);
            return 0;
        } else if (strcmp(f, "--json") == 0) {
            json = s_json = 1;
        } else if (strcmp(f, "--broker") == 0 && v) {
            broker = v, i++;
        } else if (strcmp(f, "--timeout-ms") == 0 && v &&
                   ab_parse_long(v, 1, 86400000, &timeout_ms) == 0) {
            i++;
            timeout_set = 1;
        } else if (strcmp(f, "--watch") == 0 && v && ab_parse_long(v, 1, 86400, &watch) == 0) {
            i++;
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
    if ((!is_show && !is_req && !is_infer && !is_models && !is_cache) || (is_show && i != argc) ||
        !models_args_ok ||
        (is_req && i + 2 != argc)) {
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
    ab_options_set_name(o, "brokerctl");
    int rc = ab_client_new(&c, o);
    ab_options_destroy(&o);
    if (rc != AB_OK) {
        rc = s_fail(c, rc);
        ab_client_destroy(&c);
        return rc;
    }
    signal(SIGINT, s_on_signal);
    signal(SIGTERM, s_on_signal);
    if (is_infer) {
        char err[512];
        int irc = ab_ctl_infer(c, cmd, argc - i, argv + i, &json, timeout_set ? (int)timeout_ms
                                                                              : 120000,
                               &s_stop, err, sizeof err);
        if (irc == AB_EINVAL && !err[0]) {
            s_usage(stderr);
            rc = 2;
        } else if (irc != AB_OK) {
            fprintf(stderr, "brokerctl: %s: %s\n", ab_status_name(irc), err[0] ? err : ab_strerror(irc));
            if (s_json)
                ab_render_error(stdout, ab_status_name(irc), err[0] ? err : ab_strerror(irc));
            rc = 1;
        } else {
            rc = 0;
        }
    } else if (is_models) {
        int mrc = ab_ctl_models(c, json, (int)timeout_ms);
        rc = mrc == AB_OK ? 0 : s_fail(c, mrc);
    } else if (is_cache) {
        int crc = ab_ctl_cache(c, argc - i, argv + i, json, (int)timeout_ms);
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
    ab_client_destroy(&c);
    return rc;
}
