/*
 * gateway_bench.c - what the gateway adds to a call (issue 18): the same
 * closed-loop agents POST /api/generate to the simulator directly and to
 * agentbus-gateway (broker, Ollama worker, the same simulator), in one
 * run, with the cache off (X-Agentbus-Cache: off) and on. Prompts are the
 * seed workload's (bench/scenario_workload.c: Zipf-popular repeats per
 * role), every request deterministic (a seed), so the cache can answer
 * repeats. Prints per-call latency (p50/p95/p99) and completed req/s per
 * run, and the added p50 over direct. bench/gateway_bench.sh starts the
 * processes; figures in docs/bench.md.
 *
 *   agentbus-gateway-bench --direct URL --gateway URL [--agents N]
 *       [--seconds S] [--repeat-pct P] [--num-predict N] [--model M]
 */
#include "scenario.h"
#include "tl_args.h"
#include "tl_clock.h"
#include "tl_hist.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *direct, *gateway, *model;
    long agents, seconds, repeat_pct, num_predict;
} s_cfg_t;

typedef struct {
    const s_cfg_t *cfg;
    const char *url;
    const char *cache; /* X-Agentbus-Cache value, or NULL */
    int agent;
    uint64_t deadline_us;
    tl_hist_t hist;    /* microseconds per call */
    uint64_t ok, failed;
    uint64_t sum_us;
} s_agent_t;

static size_t s_sink(char *p, size_t size, size_t n, void *arg)
{
    (void)p;
    (void)arg;
    return size * n;
}

static void *s_agent(void *arg)
{
    s_agent_t *a = arg;
    CURL *e = curl_easy_init(); /* one keep-alive connection per agent */
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    char hdr[64];
    if (a->cache) {
        snprintf(hdr, sizeof hdr, "X-Agentbus-Cache: %s", a->cache);
        h = curl_slist_append(h, hdr);
    }
    char url[256];
    snprintf(url, sizeof url, "%s/api/generate", a->url);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, s_sink);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 30000L);
    for (uint64_t seq = 0; tl_now_us() < a->deadline_us; seq++) {
        sc_req_t r;
        sc_req_make(&r, 20261202, a->agent, seq, (int)a->cfg->repeat_pct);
        size_t cap = r.prompt_len + 256;
        char *body = malloc(cap);
        if (!body) {
            sc_req_free(&r);
            break;
        }
        snprintf(body, cap,
                 "{\"model\":\"%s\",\"prompt\":\"%s\",\"stream\":false,"
                 "\"options\":{\"seed\":7,\"num_predict\":%ld}}",
                 a->cfg->model, r.prompt, a->cfg->num_predict);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        uint64_t t0 = tl_now_us();
        CURLcode rc = curl_easy_perform(e);
        long status = 0;
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        if (rc == CURLE_OK && status == 200) {
            uint64_t us = tl_now_us() - t0;
            tl_hist_record(&a->hist, us);
            a->sum_us += us;
            a->ok++;
        } else {
            a->failed++;
        }
        free(body);
        sc_req_free(&r);
    }
    curl_slist_free_all(h);
    curl_easy_cleanup(e);
    return NULL;
}

typedef struct {
    const char *name;
    tl_hist_t hist;
    uint64_t ok, failed;
    uint64_t sum_us;
    double secs;
} s_result_t;

static void s_run(const s_cfg_t *cfg, const char *url, const char *cache, s_result_t *res)
{
    long n = cfg->agents;
    s_agent_t *a = calloc((size_t)n, sizeof *a);
    pthread_t *t = calloc((size_t)n, sizeof *t);
    if (!a || !t) {
        free(a);
        free(t);
        return;
    }
    uint64_t t0 = tl_now_us(), end = t0 + (uint64_t)cfg->seconds * 1000000u;
    for (long i = 0; i < n; i++) {
        a[i] = (s_agent_t){cfg, url, cache, (int)i, end, {{0}, 0, 0, 0, 0}, 0, 0, 0};
        tl_hist_reset(&a[i].hist);
        pthread_create(&t[i], NULL, s_agent, &a[i]);
    }
    tl_hist_reset(&res->hist);
    for (long i = 0; i < n; i++) {
        pthread_join(t[i], NULL);
        tl_hist_merge(&res->hist, &a[i].hist);
        res->ok += a[i].ok;
        res->failed += a[i].failed;
        res->sum_us += a[i].sum_us;
    }
    res->secs = (double)(tl_now_us() - t0) / 1e6;
    free(a);
    free(t);
}

static int s_args(int argc, char **argv, s_cfg_t *c)
{
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *f = argv[i], *v = argv[i + 1];
        if (strcmp(f, "--direct") == 0)
            c->direct = v;
        else if (strcmp(f, "--gateway") == 0)
            c->gateway = v;
        else if (strcmp(f, "--model") == 0)
            c->model = v;
        else if (strcmp(f, "--agents") == 0 && !tl_parse_long(v, 1, 10000, &c->agents))
            ;
        else if (strcmp(f, "--seconds") == 0 && !tl_parse_long(v, 1, 3600, &c->seconds))
            ;
        else if (strcmp(f, "--repeat-pct") == 0 && !tl_parse_long(v, 0, 100, &c->repeat_pct))
            ;
        else if (strcmp(f, "--num-predict") == 0 && !tl_parse_long(v, 1, 100000, &c->num_predict))
            ;
        else
            return -1;
    }
    return c->direct && c->gateway ? 0 : -1;
}

int main(int argc, char **argv)
{
    s_cfg_t cfg = {NULL, NULL, "sim-small", 32, 5, 85, 8}; /* 85%: the seed workload's pool share */
    if (s_args(argc, argv, &cfg) != 0) {
        fprintf(stderr, "usage: agentbus-gateway-bench --direct URL --gateway URL [--agents N] "
                        "[--seconds S] [--repeat-pct P] [--num-predict N] [--model M]\n");
        return 2;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    s_result_t r[4] = {{.name = "direct (simulator)"},
                       {.name = "gateway, cache off"},
                       {.name = "direct again"},
                       {.name = "gateway, cache on"}};
    /* Direct and gateway alternate so a drift of the machine hits both. */
    s_run(&cfg, cfg.direct, NULL, &r[0]);
    s_run(&cfg, cfg.gateway, "off", &r[1]);
    s_run(&cfg, cfg.direct, NULL, &r[2]);
    s_run(&cfg, cfg.gateway, "on", &r[3]);
    printf("%ld agents, closed loop, %ld s per run, %ld%% of prompts from the popular pool, "
           "num_predict %ld, model %s\n\n",
           cfg.agents, cfg.seconds, cfg.repeat_pct, cfg.num_predict, cfg.model);
    printf("| run                    | p50 ms   | p95 ms   | p99 ms   | mean ms  | req/s     | "
           "failed | p50 added | mean added |\n|---|---|---|---|---|---|---|---|---|\n");
    double direct_p50 = (tl_hist_percentile(&r[0].hist, 50) + tl_hist_percentile(&r[2].hist, 50)) /
                        2000.0;
    double direct_mean = (double)(r[0].sum_us + r[2].sum_us) /
                         (double)(r[0].ok + r[2].ok ? r[0].ok + r[2].ok : 1) / 1000.0;
    int failed = 0;
    for (int i = 0; i < 4; i++) {
        double p50 = tl_hist_percentile(&r[i].hist, 50) / 1000.0;
        double mean = r[i].ok ? (double)r[i].sum_us / (double)r[i].ok / 1000.0 : 0;
        char added[32] = "-", madded[32] = "-";
        if (i == 1 || i == 3) {
            snprintf(added, sizeof added, "%+.3f ms", p50 - direct_p50);
            snprintf(madded, sizeof madded, "%+.3f ms", mean - direct_mean);
        }
        printf("| %-22s | %8.3f | %8.3f | %8.3f | %8.3f | %9.1f | %6llu | %s | %s |\n", r[i].name,
               p50, tl_hist_percentile(&r[i].hist, 95) / 1000.0,
               tl_hist_percentile(&r[i].hist, 99) / 1000.0, mean, (double)r[i].ok / r[i].secs,
               (unsigned long long)r[i].failed, added, madded);
        failed |= r[i].failed != 0 || r[i].ok == 0;
    }
    curl_global_cleanup();
    return failed ? 1 : 0;
}
