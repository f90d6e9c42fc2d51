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

#include <arpa/inet.h>
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
            "  --ollama-version S        what /api/version reports, 1..64 printable ASCII\n"
            "                            characters (default 0.5.7)\n"
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
            "  --send-timeout-ms N       close a connection whose client has not taken,\n"
            "                            within N ms, the bytes of its answer the gateway\n"
            "                            had sent or queued for it (a client that reads a\n"
            "                            byte at a time); not the time the answer takes\n"
            "                            to come (default 60000; 0 = no limit)\n"
            "  --max-stream-buffer-bytes N  a streamed answer's bytes waiting for a client\n"
            "                            that does not take them: past this, the stream is\n"
            "                            cut (default 8388608; 0 = no bound)\n"
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
    struct in_addr a;
    if (!colon || (size_t)(colon - v) >= sizeof host || tl_parse_long(colon + 1, 0, 65535, &port))
        return -1;
    memcpy(host, v, (size_t)(colon - v));
    host[colon - v] = '\0';
    if (host[0] && inet_pton(AF_INET, host, &a) != 1)
        return -1; /* bad usage (exit 2), not a failure to bind */
    cfg->host = host[0] ? host : "127.0.0.1";
    cfg->port = (int)port;
    return 0;
}

enum {
    O_HELP = 1, O_VERSION, O_QUIET, O_LISTEN, O_BROKER, O_KEY, O_BROKERKEY, O_APIKEYS,
    O_SERVICE, O_NAME, O_VERSTR, O_MAXCONN, O_PERIP, O_MAXBODY, O_IDLE, O_HEADER, O_BODY,
    O_INFLIGHT, O_QUEUE, O_THREADS, O_TIMEOUT, O_MAXTIMEOUT, O_SEND,
    O_STREAMBUF,
};

/* Parsed as every program parses its arguments (tools/lib/tl_args.h):
 * `--opt VALUE` or `--opt=VALUE`, `--` ends the options. */
static const tl_opt_t s_opts[] = {
    {"help", 'h', TL_NOVAL, O_HELP},
    {"version", 0, TL_NOVAL, O_VERSION},
    {"quiet", 0, TL_NOVAL, O_QUIET},
    {"listen", 0, TL_VAL, O_LISTEN},
    {"broker", 0, TL_VAL, O_BROKER},
    {"key", 0, TL_VAL, O_KEY},
    {"broker-key", 0, TL_VAL, O_BROKERKEY},
    {"api-keys", 0, TL_VAL, O_APIKEYS},
    {"service", 0, TL_VAL, O_SERVICE},
    {"name", 0, TL_VAL, O_NAME},
    {"ollama-version", 0, TL_VAL, O_VERSTR},
    {"max-connections", 0, TL_VAL, O_MAXCONN},
    {"max-connections-per-ip", 0, TL_VAL, O_PERIP},
    {"max-body-bytes", 0, TL_VAL, O_MAXBODY},
    {"idle-timeout-s", 0, TL_VAL, O_IDLE},
    {"header-timeout-ms", 0, TL_VAL, O_HEADER},
    {"body-timeout-ms", 0, TL_VAL, O_BODY},
    {"send-timeout-ms", 0, TL_VAL, O_SEND},
    {"max-stream-buffer-bytes", 0, TL_VAL, O_STREAMBUF},
    {"max-in-flight", 0, TL_VAL, O_INFLIGHT},
    {"max-queue-ms", 0, TL_VAL, O_QUEUE},
    {"threads", 0, TL_VAL, O_THREADS},
    {"timeout-ms", 0, TL_VAL, O_TIMEOUT},
    {"max-timeout-ms", 0, TL_VAL, O_MAXTIMEOUT},
    {NULL, 0, 0, 0},
};

/* The bounds of each numeric option. */
static const struct {
    int id;
    long min, max;
} s_nums[] = {
    {O_MAXCONN, 1, 100000},     {O_PERIP, 0, 100000},     {O_MAXBODY, 1024, 1L << 30},
    {O_IDLE, 0, 86400},         {O_HEADER, 0, 86400000},  {O_BODY, 0, 86400000},
    {O_INFLIGHT, 0, 1000000},   {O_QUEUE, 0, 86400000},   {O_THREADS, 0, 256},
    {O_TIMEOUT, 1, 86400000},   {O_MAXTIMEOUT, 1, 86400000}, {O_SEND, 0, 86400000},
    {O_STREAMBUF, 0, 1L << 30},
};

/* " (expected an integer MIN..MAX)" for numeric option ID, else "": a bad
 * value was refused without its bounds ("--max-body-bytes 100" said only
 * "bad value"). */
static const char *s_bounds(int id, char *buf, size_t cap)
{
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof s_nums / sizeof s_nums[0]; i++)
        if (s_nums[i].id == id)
            snprintf(buf, cap, " (expected an integer %ld..%ld)", s_nums[i].min, s_nums[i].max);
    return buf;
}

/* Option ID's value V into CFG: 0, or -1 for a bad value. */
static int s_take(gw_config_t *cfg, int id, const char *v)
{
    long n = 0;
    for (size_t i = 0; i < sizeof s_nums / sizeof s_nums[0]; i++)
        if (s_nums[i].id == id && tl_parse_long(v, s_nums[i].min, s_nums[i].max, &n))
            return -1;
    if (!*v && (id == O_KEY || id == O_BROKERKEY || id == O_APIKEYS || id == O_SERVICE))
        return -1; /* a file, key or service must be named */
    switch (id) {
    case O_LISTEN: return s_listen(v, cfg);
    case O_BROKER: cfg->broker = v; break;
    /* libagentbus reads its CURVE keys from the environment (agentbus.h). */
    case O_KEY: setenv("AB_KEY", v, 1); break;
    case O_BROKERKEY: setenv("AB_BROKER_KEY", v, 1); break;
    case O_APIKEYS: cfg->api_keys = v; break;
    case O_SERVICE: /* 1..255 bytes, as the broker takes (every call failed) */
        if (strlen(v) > 255)
            return -1;
        cfg->service = v;
        break;
    case O_NAME: /* the broker refuses a bad one and the gateway ran unnamed, without a word */
        if (*v && ab_agent_name_check(v) != AB_OK)
            return -1;
        cfg->name = v;
        break;
    case O_VERSTR: /* JSON text: one not UTF-8 failed every GET /api/version */
        if (!*v || strlen(v) > 64 || strspn(v, " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJ"
                                               "KLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuv"
                                               "wxyz{|}~") != strlen(v))
            return -1;
        cfg->version = v;
        break;
    case O_MAXCONN: cfg->max_connections = (unsigned)n; break;
    case O_PERIP: cfg->max_conns_per_ip = (unsigned)n; break;
    case O_MAXBODY: cfg->max_body_bytes = (size_t)n; break;
    case O_IDLE: cfg->idle_timeout_s = (unsigned)n; break;
    case O_HEADER: cfg->header_timeout_ms = (unsigned)n; break;
    case O_BODY: cfg->body_timeout_ms = (unsigned)n; break;
    case O_SEND: cfg->send_timeout_ms = (unsigned)n; break;
    case O_STREAMBUF: cfg->max_stream_buffer_bytes = (size_t)n; break;
    case O_INFLIGHT: cfg->max_in_flight = (unsigned)n; break;
    case O_QUEUE: cfg->max_queue_ms = (unsigned)n; break;
    case O_THREADS: cfg->threads = (unsigned)n; break;
    case O_TIMEOUT: cfg->timeout_ms = (int)n; break;
    case O_MAXTIMEOUT: cfg->max_timeout_ms = (int)n; break;
    default: return -1;
    }
    return 0;
}

/* 0, 1 (--help), 2 (--version), -1 (bad usage, said on stderr). */
static int s_args(int argc, char **argv, gw_config_t *cfg)
{
    tl_parser_t p;
    int id;
    tl_parser_init(&p, argc, argv, 1);
    while ((id = tl_next(&p, s_opts)) != TL_END) {
        if (id == O_HELP || id == O_VERSION)
            return id == O_HELP ? 1 : 2;
        if (id == O_QUIET) {
            cfg->quiet = 1;
            continue;
        }
        if (id == TL_ERROR || id == TL_ARG) {
            fprintf(stderr, "agentbus-gateway: %s%s%s\n", id == TL_ARG ?
                    "unexpected argument '" : p.err, id == TL_ARG ? p.arg : "",
                    id == TL_ARG ? "'" : "");
            return -1;
        }
        if (s_take(cfg, id, p.value) != 0) {
            char bounds[64];
            fprintf(stderr, "agentbus-gateway: bad value for --%s: '%s'%s\n", p.opt->name,
                    p.value, id == O_LISTEN ? " (expected an IPv4 address and a port "
                                              "0..65535, e.g. 127.0.0.1:11434)"
                             : id == O_NAME ? " (expected an agent name: 1..255 printable "
                                              "ASCII characters, no spaces, not starting "
                                              "with '~')"
                             : id == O_SERVICE ? " (expected 1..255 bytes)"
                             : id == O_VERSTR ? " (expected 1..64 printable ASCII "
                                                "characters, e.g. 0.5.7)"
                                              : s_bounds(id, bounds, sizeof bounds));
            return -1;
        }
    }
    if (cfg->timeout_ms > cfg->max_timeout_ms) { /* a call without the header got more */
        fprintf(stderr, "agentbus-gateway: --timeout-ms %d is above --max-timeout-ms %d\n",
                cfg->timeout_ms, cfg->max_timeout_ms);
        return -1;
    }
    return 0;
}

/* --key and --broker-key (or $AB_KEY, $AB_BROKER_KEY: the library reads
 * them when it connects) checked before connecting: a bad one failed as
 * "cannot connect to ENDPOINT: invalid argument", naming neither. */
static int s_check_keys(void)
{
    const char *k = getenv("AB_KEY"), *bk = getenv("AB_BROKER_KEY"), *bad = NULL;
    ab_options_t *o = ab_options_new();
    if (o && k && *k && ab_options_set_key_file(o, k) != AB_OK)
        bad = "--key";
    else if (o && bk && *bk && ab_options_set_broker_key(o, bk) != AB_OK)
        bad = "--broker-key";
    ab_options_destroy(&o);
    if (bad)
        fprintf(stderr, "agentbus-gateway: %s (or $%s) '%s' cannot be used: expected %s\n", bad,
                bad[2] == 'k' ? "AB_KEY" : "AB_BROKER_KEY", bad[2] == 'k' ? k : bk,
                bad[2] == 'k' ? "a readable secret certificate (brokerctl keygen's "
                                "NAME.key_secret)"
                              : "a Z85 public key (40 characters) or a certificate file");
    return bad ? -1 : 0;
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
                          .body_timeout_ms = 30000, .send_timeout_ms = 60000,
                          .max_stream_buffer_bytes = 8u << 20,
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
    if (s_check_keys() != 0)
        return 2; /* a bad value, as brokerctl's and the worker's (docs/gateway.md) */
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
