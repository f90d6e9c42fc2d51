/*
 * main.c - agentbus-gateway: the Ollama HTTP API and the OpenAI API served
 * over the bus, so an agent written for Ollama (or an OpenAI-compatible
 * server) uses agentbus by changing its base URL. See docs/gateway.md.
 *
 *   agentbus-gateway --listen HOST:PORT --broker ENDPOINT [options]
 */
#include "gw_mhdlog.h"
#include "gw_http.h"
#include "agentbus.h"
#include "tl_args.h"

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: agentbus-gateway [options]\n"
            "  --listen HOST:PORT        HTTP address (default 127.0.0.1:11434; port 0 = any)\n"
            "  --broker ENDPOINT         broker endpoint (default $AB_BROKER or %s)\n"
            "  --key FILE                secret certificate for a broker with --auth curve\n"
            "                            (default $AB_KEY; docs/security.md)\n"
            "  --broker-key KEY          the broker's public key, Z85 or a certificate file\n"
            "                            (default $AB_BROKER_KEY)\n"
            "  --api-keys FILE           require an API key (Authorization: Bearer TOKEN) on\n"
            "                            /api/* and /v1/*; FILE lines: NAME TOKEN [KEYFILE],\n"
            "                            KEYFILE the bus identity of that token's calls\n"
            "                            (docs/gateway.md, \"API keys\"); default: no key needed;\n"
            "                            SIGHUP reads FILE again\n"
            "  --service NAME            inference service on the bus (default ollama)\n"
            "  --name NAME               the gateway's agent name on the bus (default none)\n"
            "  --max-connections N       concurrent HTTP connections (default 1024)\n"
            "  --max-connections-per-ip N\n"
            "                            connections open from one client address; more are\n"
            "                            closed at accept, counted and logged (default 0 =\n"
            "                            no limit: agents behind one proxy or NAT share an\n"
            "                            address)\n"
            "  --max-body-bytes N        largest request body; larger get 413 (default 8388608)\n"
            "  --threads N               HTTP threads (epoll pool); 0 (default): HTTP on the\n"
            "                            bus thread, two thread hand-offs less per call\n"
            "  --timeout-ms N            request deadline without X-Agentbus-Timeout-Ms "
            "(default 300000)\n"
            "  --max-timeout-ms N        cap of X-Agentbus-Timeout-Ms (default 3600000)\n"
            "  --ollama-version S        what /api/version reports (default 0.5.7)\n"
            "  --idle-timeout-s N        close a connection silent this long, not counting\n"
            "                            time waiting for the bus (default 60; 0 = never)\n"
            "  --header-timeout-ms N     close a connection whose request headers are not\n"
            "                            complete N ms after its accept or the end of its\n"
            "                            previous request (slow senders, idle keep-alives);\n"
            "                            at --max-connections the one waiting longest (1 s\n"
            "                            or more) is closed for a new one, else the request\n"
            "                            whose body has come longest (default 10000;\n"
            "                            0 = neither deadline nor eviction for headers)\n"
            "  --body-timeout-ms N       close a connection whose request body is not\n"
            "                            complete N ms after its headers (a body sent a\n"
            "                            byte at a time); its --max-in-flight slot is freed\n"
            "                            (default 30000; 0 = no limit)\n"
            "  --max-in-flight N         model and inference requests held at once; more get\n"
            "                            503 \"server busy\" at once (default 7/8 of\n"
            "                            --max-connections; 0 = no cap)\n"
            "  --max-queue-ms N          503 \"server busy\" for a request that waited longer\n"
            "                            than this before the gateway read it (default 1000;\n"
            "                            0 = only its deadline)\n"
            "  --quiet                   no start-up line\n"
            "  --help, -h                this help\n"
            "  --version                 print \"agentbus-gateway VERSION\"\n",
            AB_DEFAULT_ENDPOINT);
}

static int s_listen(const char *v, gw_config_t *cfg)
{
    static char host[64];
    const char *colon = strrchr(v, ':');
    long port;
    if (!colon || (size_t)(colon - v) >= sizeof host || tl_parse_long(colon + 1, 0, 65535, &port))
        return -1;
    memcpy(host, v, (size_t)(colon - v));
    host[colon - v] = '\0';
    cfg->host = host[0] ? host : "127.0.0.1";
    cfg->port = (int)port;
    return 0;
}

static int s_number(const char *v, long min, long max, long *out)
{
    return tl_parse_long(v, min, max, out);
}

/* 0, 1 (--help), 2 (--version), -1 (bad usage, said on stderr). */
static int s_args(int argc, char **argv, gw_config_t *cfg)
{
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n = 0;
        if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0)
            return 1;
        if (strcmp(f, "--version") == 0)
            return 2;
        if (strcmp(f, "--quiet") == 0) {
            cfg->quiet = 1;
            continue;
        }
        int bad = !v;
        if (!bad && strcmp(f, "--listen") == 0)
            bad = s_listen(v, cfg);
        else if (!bad && strcmp(f, "--broker") == 0)
            cfg->broker = v;
        /* libagentbus reads its CURVE keys from the environment (agentbus.h). */
        else if (!bad && strcmp(f, "--key") == 0 && *v)
            setenv("AB_KEY", v, 1);
        else if (!bad && strcmp(f, "--broker-key") == 0 && *v)
            setenv("AB_BROKER_KEY", v, 1);
        else if (!bad && strcmp(f, "--api-keys") == 0 && *v)
            cfg->api_keys = v;
        else if (!bad && strcmp(f, "--service") == 0 && *v)
            cfg->service = v;
        else if (!bad && strcmp(f, "--name") == 0)
            cfg->name = v;
        else if (!bad && strcmp(f, "--ollama-version") == 0)
            cfg->version = v;
        else if (!bad && strcmp(f, "--max-connections") == 0 && !s_number(v, 1, 100000, &n))
            cfg->max_connections = (unsigned)n;
        else if (!bad && strcmp(f, "--max-connections-per-ip") == 0 &&
                 !s_number(v, 0, 100000, &n))
            cfg->max_conns_per_ip = (unsigned)n;
        else if (!bad && strcmp(f, "--max-body-bytes") == 0 && !s_number(v, 1024, 1L << 30, &n))
            cfg->max_body_bytes = (size_t)n;
        else if (!bad && strcmp(f, "--idle-timeout-s") == 0 && !s_number(v, 0, 86400, &n))
            cfg->idle_timeout_s = (unsigned)n;
        else if (!bad && strcmp(f, "--header-timeout-ms") == 0 && !s_number(v, 0, 86400000, &n))
            cfg->header_timeout_ms = (unsigned)n;
        else if (!bad && strcmp(f, "--body-timeout-ms") == 0 && !s_number(v, 0, 86400000, &n))
            cfg->body_timeout_ms = (unsigned)n;
        else if (!bad && strcmp(f, "--max-in-flight") == 0 && !s_number(v, 0, 1000000, &n))
            cfg->max_in_flight = (unsigned)n;
        else if (!bad && strcmp(f, "--max-queue-ms") == 0 && !s_number(v, 0, 86400000, &n))
            cfg->max_queue_ms = (unsigned)n;
        else if (!bad && strcmp(f, "--threads") == 0 && !s_number(v, 0, 256, &n))
            cfg->threads = (unsigned)n;
        else if (!bad && strcmp(f, "--timeout-ms") == 0 && !s_number(v, 1, 86400000, &n))
            cfg->timeout_ms = (int)n;
        else if (!bad && strcmp(f, "--max-timeout-ms") == 0 && !s_number(v, 1, 86400000, &n))
            cfg->max_timeout_ms = (int)n;
        else
            bad = 1;
        if (bad) {
            fprintf(stderr, "agentbus-gateway: bad option or value: %s%s%s\n", f, v ? " " : "",
                    v ? v : "");
            return -1;
        }
        i++;
    }
    return 0;
}

/* SIGHUP: the --api-keys file again; a file that fails a check leaves the
 * keys in use as they are. Said on stderr either way. */
static void s_reload(gw_t *g)
{
    char err[1024];
    if (!g->cfg.api_keys) {
        fprintf(stderr, "agentbus-gateway: SIGHUP: no --api-keys file to reload\n");
    } else if (gw_keys_reload(&g->keys, g->cfg.api_keys, err, sizeof err) != 0) {
        fprintf(stderr, "agentbus-gateway: SIGHUP: reload refused, the keys in use stay: %s\n",
                err);
    } else {
        pthread_rwlock_rdlock(&g->keys.lock);
        size_t n = g->keys.n;
        pthread_rwlock_unlock(&g->keys.lock);
        fprintf(stderr, "agentbus-gateway: SIGHUP: %zu API key%s loaded from %s\n", n,
                n == 1 ? "" : "s", g->cfg.api_keys);
    }
    fflush(stderr);
}

int main(int argc, char **argv)
{
    static gw_t g; /* counters: zero-initialised, lives for the process */
    g.cfg = (gw_config_t){.host = "127.0.0.1", .port = 11434, .service = "ollama", .name = "",
                          .max_connections = 1024, .max_body_bytes = 8u << 20, .threads = 0,
                          .timeout_ms = 300000, .max_timeout_ms = 3600000, .version = "0.5.7",
                          .idle_timeout_s = 60, .header_timeout_ms = 10000,
                          .body_timeout_ms = 30000,
                          .max_in_flight = UINT_MAX,
                          .max_queue_ms = 1000};
    const char *env = getenv("AB_BROKER");
    g.cfg.broker = env && *env ? env : AB_DEFAULT_ENDPOINT;
    int rc = s_args(argc, argv, &g.cfg);
    if (rc == 2) { /* the library's version, as brokerctl and agentbus-worker say theirs */
        tl_print_version("agentbus-gateway", ab_version());
        return 0;
    }
    if (rc != 0) {
        s_usage(rc > 0 ? stdout : stderr);
        return rc > 0 ? 0 : 2;
    }
    /* Unset: 7/8 of the connections, so that at the cap connections are
     * left to refuse on and to answer /healthz and /metrics. */
    if (g.cfg.max_in_flight == UINT_MAX)
        g.cfg.max_in_flight = g.cfg.max_connections - g.cfg.max_connections / 8;
    /* Signals are taken by sigwait() here; every thread started after this
     * (the bus thread, libmicrohttpd's pool) inherits the blocked mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP); /* reload --api-keys */
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    char err[1024];
    if (tl_check_endpoint(g.cfg.broker, err, sizeof err) != 0) {
        fprintf(stderr, "agentbus-gateway: invalid --broker '%s': %s\n", g.cfg.broker, err);
        return 2;
    }
    if (g.cfg.api_keys && gw_keys_load(&g.keys, g.cfg.api_keys, err, sizeof err) != 0) {
        fprintf(stderr, "agentbus-gateway: --api-keys: %s\n", err);
        return 2;
    }
    g.bus = gw_bus_new(g.cfg.broker, g.cfg.name, g.cfg.timeout_ms, g.cfg.service, g.keys.idents,
                       g.keys.n_idents);
    if (!g.bus) {
        gw_keys_free(&g.keys);
        return 1;
    }
    if (gw_http_start(&g) != 0) {
        gw_bus_destroy(&g.bus);
        gw_keys_free(&g.keys);
        return 1;
    }
    if (!g.cfg.quiet) {
        char keys[64] = "";
        if (g.keys.n)
            snprintf(keys, sizeof keys, ", %zu API key%s", g.keys.n, g.keys.n == 1 ? "" : "s");
        printf("agentbus-gateway listening on %s:%d (broker %s, service %s%s)\n", g.cfg.host,
               g.cfg.port, g.cfg.broker, g.cfg.service, keys);
        fflush(stdout);
    }
    int sig = 0;
    while (sigwait(&set, &sig) == 0 && sig == SIGHUP)
        s_reload(&g);
    /* Bus first: calls in flight end (AB_ESTOPPED) and their suspended
     * connections resume, so libmicrohttpd can close every one. */
    gw_bus_stop(g.bus);
    gw_http_stop(&g);
    gw_mhdlog_flush();
    gw_bus_destroy(&g.bus);
    gw_keys_free(&g.keys);
    return 0;
}
