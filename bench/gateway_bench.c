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
 * Percentiles are exact (every call's time is kept and sorted): the added
 * latency is a difference of two ~10 ms figures, and a histogram bucket
 * there is 0.26 ms wide, as wide as the effect being measured. --rounds N
 * repeats the four runs N times and prints each round's added p50 and their
 * median (the machine is shared: one round can land on a busy moment).
 *
 *   agentbus-gateway-bench --direct URL --gateway URL [--agents N]
 *       [--seconds S] [--repeat-pct P] [--num-predict N] [--model M]
 *       [--rounds N]
 */
#include "scenario.h"
#include "tl_args.h"
#include "tl_clock.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *direct, *gateway, *model;
    long agents, seconds, repeat_pct, num_predict, rounds;
} s_cfg_t;

/* Every call's time in microseconds, growing as needed. */
typedef struct {
    uint32_t *v;
    size_t n, cap;
} s_samples_t;

static void s_add(s_samples_t *s, uint64_t us)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 1024;
        uint32_t *v = realloc(s->v, cap * sizeof *v);
        if (!v)
            return; /* out of memory: the sample is lost, the count stays right */
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

static void s_append(s_samples_t *dst, const s_samples_t *src)
{
    for (size_t i = 0; i < src->n; i++)
        s_add(dst, src->v[i]);
}

static int s_cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile P of S (sorted here), in ms; 0 when empty. */
static double s_pct(s_samples_t *s, double p)
{
    if (!s->n)
        return 0;
    qsort(s->v, s->n, sizeof *s->v, s_cmp_u32);
    size_t rank = (size_t)(p / 100.0 * (double)s->n + 0.999999);
    rank = rank < 1 ? 1 : rank > s->n ? s->n : rank;
    return s->v[rank - 1] / 1000.0;
}

typedef struct {
    const s_cfg_t *cfg;
    const char *url;
    const char *cache; /* X-Agentbus-Cache value, or NULL */
    int agent;
    uint64_t deadline_us;
    s_samples_t lat;   /* microseconds per call */
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
            s_add(&a->lat, us);
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
    s_samples_t lat;
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
        a[i] = (s_agent_t){cfg, url, cache, (int)i, end, {NULL, 0, 0}, 0, 0, 0};
        pthread_create(&t[i], NULL, s_agent, &a[i]);
    }
    for (long i = 0; i < n; i++) {
        pthread_join(t[i], NULL);
        s_append(&res->lat, &a[i].lat);
        free(a[i].lat.v);
        res->ok += a[i].ok;
        res->failed += a[i].failed;
        res->sum_us += a[i].sum_us;
    }
    res->secs += (double)(tl_now_us() - t0) / 1e6;
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
        else if (strcmp(f, "--rounds") == 0 && !tl_parse_long(v, 1, 100, &c->rounds))
            ;
        else
            return -1;
    }
    return c->direct && c->gateway ? 0 : -1;
}

static double s_median(double *v, int n)
{
    for (int i = 1; i < n; i++) /* insertion sort: a handful of rounds */
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* One round: direct and gateway alternate so a drift of the machine hits
 * both. Returns the gateway's (cache off) p50 minus the mean of the two
 * direct p50s of this round. */
static double s_round(const s_cfg_t *cfg, s_result_t *r)
{
    s_result_t one[4] = {{0}};
    s_run(cfg, cfg->direct, NULL, &one[0]);
    s_run(cfg, cfg->gateway, "off", &one[1]);
    s_run(cfg, cfg->direct, NULL, &one[2]);
    s_run(cfg, cfg->gateway, "on", &one[3]);
    double added = s_pct(&one[1].lat, 50) - (s_pct(&one[0].lat, 50) + s_pct(&one[2].lat, 50)) / 2;
    for (int i = 0; i < 4; i++) {
        s_append(&r[i].lat, &one[i].lat);
        r[i].ok += one[i].ok;
        r[i].failed += one[i].failed;
        r[i].sum_us += one[i].sum_us;
        r[i].secs += one[i].secs;
        free(one[i].lat.v);
    }
    return added;
}

static void s_usage(FILE *f, const char *argv0)
{
    (void)argv0; /* the name the docs give */
    fputs("usage: agentbus-gateway-bench --direct URL --gateway URL [--agents N] [--seconds S] "
          "[--repeat-pct P] [--num-predict N] [--model M] [--rounds N]\n",
          f);
}

int main(int argc, char **argv)
{
    /* 85%: the seed workload's pool share */
    s_cfg_t cfg = {NULL, NULL, "sim-small", 32, 5, 85, 8, 1};
    /* As every program (README); no libagentbus here: the version CMake gives. */
    if (tl_info_answer(argc, argv, "agentbus-gateway-bench", AB_PROGRAM_VERSION, s_usage))
        return 0;
    if (s_args(argc, argv, &cfg) != 0) {
        s_usage(stderr, argv[0]);
        return 2;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    s_result_t r[4] = {{.name = "direct (simulator)"},
                       {.name = "gateway, cache off"},
                       {.name = "direct again"},
                       {.name = "gateway, cache on"}};
    double added[100];
    for (long k = 0; k < cfg.rounds; k++)
        added[k] = s_round(&cfg, r);
    printf("%ld agents, closed loop, %ld s per run, %ld round(s), %ld%% of prompts from the "
           "popular pool, num_predict %ld, model %s\n\n",
           cfg.agents, cfg.seconds, cfg.rounds, cfg.repeat_pct, cfg.num_predict, cfg.model);
    printf("| run                    | p50 ms   | p95 ms   | p99 ms   | mean ms  | req/s     | "
           "failed | p50 added | mean added |\n|---|---|---|---|---|---|---|---|---|\n");
    double direct_p50 = (s_pct(&r[0].lat, 50) + s_pct(&r[2].lat, 50)) / 2;
    double direct_mean = (double)(r[0].sum_us + r[2].sum_us) /
                         (double)(r[0].ok + r[2].ok ? r[0].ok + r[2].ok : 1) / 1000.0;
    int failed = 0;
    for (int i = 0; i < 4; i++) {
        double p50 = s_pct(&r[i].lat, 50);
        double mean = r[i].ok ? (double)r[i].sum_us / (double)r[i].ok / 1000.0 : 0;
        char add[32] = "-", madd[32] = "-";
        if (i == 1 || i == 3) {
            snprintf(add, sizeof add, "%+.3f ms", p50 - direct_p50);
            snprintf(madd, sizeof madd, "%+.3f ms", mean - direct_mean);
        }
        printf("| %-22s | %8.3f | %8.3f | %8.3f | %8.3f | %9.1f | %6llu | %s | %s |\n", r[i].name,
               p50, s_pct(&r[i].lat, 95), s_pct(&r[i].lat, 99), mean,
               r[i].secs > 0 ? (double)r[i].ok / r[i].secs : 0, (unsigned long long)r[i].failed,
               add, madd);
        failed |= r[i].failed != 0 || r[i].ok == 0;
        free(r[i].lat.v);
    }
    if (cfg.rounds > 1) {
        printf("\np50 added with the cache off, per round (ms):");
        for (long k = 0; k < cfg.rounds; k++)
            printf(" %+.3f", added[k]);
        printf("\nmedian over %ld rounds: %+.3f ms\n", cfg.rounds,
               s_median(added, (int)cfg.rounds));
    }
    curl_global_cleanup();
    return failed ? 1 : 0;
}
