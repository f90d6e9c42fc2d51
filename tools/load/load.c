/*
 * agentbus-load - a demo load: N agents (one thread and one connection
 * each) sending requests to a service for a while, then a summary.
 *
 * Each agent keeps a few requests in flight (async) with payloads of mixed
 * sizes and checks that every reply echoes what it sent.
 */
#include "agentbus.h"
#include "load_run.h"
#include "tl_clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_PRIO_MAX 8
typedef struct {
    const char *broker, *service;
    long agents, seconds, window, max_bytes;
    uint32_t prio[S_PRIO_MAX]; /* --priority: cycled request by request */
    int nprio;
} s_cfg_t;

typedef struct {
    ld_stats_t st; /* first: ld_run's record */
    const s_cfg_t *cfg;
    int index;
    uint64_t mismatched;
} s_agent_t;

typedef struct {
    s_agent_t *agent;
    uint64_t start_us;
    size_t size;
    uint32_t seed;
} s_call_t;

/* Payload bytes are a function of (seed, offset), so a reply can be checked. */
static void s_fill(char *buf, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = (char)('a' + (seed + i * 7) % 26);
}

static void s_on_reply(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    s_call_t *call = arg;
    if (!ev->final)
        return;
    s_agent_t *a = call->agent;
    if (ev->status == AB_OK) {
        char *expect = malloc(call->size + 1);
        if (expect)
            s_fill(expect, call->size, call->seed);
        if (!expect || ev->size != call->size || memcmp(ev->data, expect, call->size) != 0)
            a->mismatched++;
        else
            a->st.ok++;
        free(expect);
        tl_hist_record(&a->st.lat, tl_now_us() - call->start_us);
    } else {
        a->st.failed++;
        if (!a->st.first_error)
            a->st.first_error = ev->status;
    }
    free(call);
}

static int s_send(s_agent_t *a, ab_client_t *c, char *buf)
{
    s_call_t *call = malloc(sizeof *call);
    if (!call)
        return -1;
    call->agent = a;
    call->seed = (uint32_t)(a->st.sent * 2654435761u + (uint32_t)a->index);
    /* Mostly small messages, now and then a large one, like agent traffic. */
    call->size = (call->seed % 10 == 0) ? (size_t)a->cfg->max_bytes : 16 + call->seed % 240;
    call->start_us = tl_now_us();
    s_fill(buf, call->size, call->seed);
    a->st.sent++;
    uint32_t prio = a->cfg->nprio ? a->cfg->prio[a->st.sent % (uint64_t)a->cfg->nprio] : 0;
    if (ab_client_request_start(c, a->cfg->service, buf, call->size,
                                &(ab_request_opts_t){.timeout_ms = 5000, .priority = prio},
                                s_on_reply, call, NULL) != AB_OK) {
        a->st.failed++;
        free(call);
        return -1;
    }
    return 0;
}

static void *s_agent_main(void *arg)
{
    s_agent_t *a = arg;
    ab_client_t *c = NULL;
    int rc = ld_connect(a->cfg->broker, "demo-agent", a->index, &c);
    char *buf = malloc((size_t)a->cfg->max_bytes);
    if (rc != AB_OK || !buf) {
        ab_client_destroy(&c);
        a->st.first_error = rc ? rc : AB_ENOMEM;
        free(buf);
        return NULL;
    }
    int64_t end = tl_now_ms() + a->cfg->seconds * 1000;
    while (!ld_stop && tl_now_ms() < end) {
        while (ab_client_pending(c) < (size_t)a->cfg->window && s_send(a, c, buf) == 0)
            ;
        ab_client_poll(c, 100);
    }
    /* Let what is in flight finish (bounded by the request timeout). */
    for (int i = 0; i < 60 && ab_client_pending(c) > 0; i++)
        ab_client_poll(c, 100);
    ab_client_destroy(&c); /* ends anything left with AB_ESTOPPED */
    free(buf);
    return NULL;
}

enum { O_SERVICE = LD_FIRST_OWN, O_AGENTS, O_SECONDS, O_WINDOW, O_MAXB, O_PRIO };
static const tl_opt_t s_opts[] = {
    {"help", 'h', TL_NOVAL, LD_HELP},    {"version", 0, TL_NOVAL, LD_VERSION},
    {"broker", 0, TL_VAL, LD_BROKER},    {"service", 0, TL_VAL, O_SERVICE},
    {"agents", 0, TL_VAL, O_AGENTS},     {"seconds", 0, TL_VAL, O_SECONDS},
    {"window", 0, TL_VAL, O_WINDOW},     {"max-bytes", 0, TL_VAL, O_MAXB},
    {"priority", 0, TL_VAL, O_PRIO},
    {NULL, 0, 0, 0},
};

/* "batch,interactive,...": 1..S_PRIO_MAX items, each a name or number
 * (ab_priority_parse). An empty item ("normal,", "a,,b") is refused, and so
 * is a ninth: they were skipped without a word. */
static int s_priorities(s_cfg_t *cfg, const char *v)
{
    cfg->nprio = 0;
    for (const char *p = v;; p++) {
        char one[32];
        size_t n = strcspn(p, ",");
        if (n == 0 || n >= sizeof one || cfg->nprio == S_PRIO_MAX)
            return -1;
        memcpy(one, p, n);
        one[n] = '\0';
        if (ab_priority_parse(one, &cfg->prio[cfg->nprio++]) != AB_OK)
            return -1;
        p += n;
        if (!*p)
            return 0;
    }
}

static int s_take(void *arg, int id, const char *v)
{
    s_cfg_t *cfg = arg;
    switch (id) {
    case O_SERVICE: /* as the broker takes: a longer one failed every request */
        cfg->service = v;
        return *v && strlen(v) <= 255 ? 0 : -1;
    case O_AGENTS: return tl_parse_long(v, 1, 1000, &cfg->agents);
    case O_SECONDS: return tl_parse_long(v, 1, 3600, &cfg->seconds);
    case O_WINDOW: return tl_parse_long(v, 1, 10000, &cfg->window);
    case O_MAXB: return tl_parse_long(v, 256, 1 << 24, &cfg->max_bytes);
    case O_PRIO: return s_priorities(cfg, v);
    }
    return -1;
}

static void s_usage(const char *argv0)
{
    (void)argv0;
    printf("Usage: agentbus-load [options]\n\n"
           "Runs demo agents against a service, each with its own connection and a\n"
           "window of requests in flight, checks every reply and prints a summary.\n\n"
           "Options:\n"
           "  --broker EP            the broker (default: $AB_BROKER, else tcp://127.0.0.1:5555)\n"
           "  --service NAME         the service asked, 1..255 bytes (default echo)\n"
           "  --agents N             agents, 1..1000 (default 20)\n"
           "  --seconds N            how long, 1..3600 (default 10)\n"
           "  --window N             requests in flight per agent, 1..10000 (default 4)\n"
           "  --max-bytes N          largest request payload, 256..16777216 (default 4096)\n"
           "  --priority P[,P...]    the lanes its requests take, in turn (at most 8):\n"
           "                         interactive, normal, batch or 0..255 (default normal)\n"
           "  -h, --help             this text\n"
           "  --version              the version\n\n"
           "Exit status: 0 when every reply came back and matched; 1 if a request\n"
           "failed or a reply did not match, or no broker was reachable within 5 s;\n"
           "2 on bad usage.\n");
}

int main(int argc, char **argv)
{
    s_cfg_t cfg = {NULL, "echo", 20, 10, 4, 4096, {0}, 0};
    int prc = ld_parse(argc, argv, "agentbus-load", s_opts, s_usage, &cfg.broker, s_take,
                       &cfg);
    if (prc)
        return prc > 0 ? 0 : 2;
    ld_signals();
    /* With no broker every agent sent its window, waited --seconds and the
     * requests' 5 s, then said only "first error: timed out waiting". */
    int wrc = ld_wait_broker(cfg.broker, "agentbus-load", 5000);
    if (wrc != 0)
        return wrc;
    s_agent_t *agents = calloc((size_t)cfg.agents, sizeof *agents);
    if (!agents)
        return 1;
    printf("agentbus-load: %ld agents, %ld s, window %ld, service '%s'\n", cfg.agents,
           cfg.seconds, cfg.window, cfg.service);
    fflush(stdout);
    for (long i = 0; i < cfg.agents; i++) {
        agents[i].cfg = &cfg;
        agents[i].index = (int)i;
    }
    ld_stats_t t;
    int64_t t0 = tl_now_ms();
    ld_run(agents, sizeof *agents, cfg.agents, s_agent_main, &t);
    /* The run's own length: stopped early (SIGINT), the rate was ok over
     * --seconds (a 2 s run of --seconds 10 said a fifth of its rate). */
    double secs = (double)(tl_now_ms() - t0) / 1000.0;
    uint64_t bad = 0;
    for (long i = 0; i < cfg.agents; i++)
        bad += agents[i].mismatched;
    printf("agentbus-load: sent %llu  ok %llu  failed %llu  mismatched %llu  (%.0f req/s in "
           "%.1f s)\n", (unsigned long long)t.sent, (unsigned long long)t.ok,
           (unsigned long long)t.failed, (unsigned long long)bad,
           secs > 0 ? (double)t.ok / secs : 0.0, secs);
    printf("agentbus-load: latency p50 %llu us  p95 %llu us  p99 %llu us\n",
           (unsigned long long)tl_hist_percentile(&t.lat, 50),
           (unsigned long long)tl_hist_percentile(&t.lat, 95),
           (unsigned long long)tl_hist_percentile(&t.lat, 99));
    if (t.first_error)
        printf("agentbus-load: first error: %s\n", ab_strerror(t.first_error));
    free(agents);
    return (t.failed || bad || t.ok == 0) ? 1 : 0;
}
