/*
 * scenario_workload.c - the seed workload: 69 roles, 174 agents, prompts
 * with Zipf popularity, mixed lengths, three models. Everything is a pure
 * function of (seed, agent, sequence number), so the same run asks the
 * same questions of every system. Where the figures come from:
 * docs/bench.md, "Seed workload".
 */
#include "scenario.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Model timings (ollama-sim --model specs), per model on one GPU slot.
 * Sizes as the Ollama library lists the Q4_K_M tags; decode and prefill
 * speeds of llama.cpp on an RTX 3090 class GPU (docs/bench.md). */
const sc_model_t sc_models[SC_MODELS] = {
    /* name          size     load_ms prefill_tps token_ms */
    {"llama3.2:1b", "1331M", 1000, 10000, 5, "1.2B"},
    {"llama3.1:8b", "5018M", 3000, 2500, 11, "8.0B"},
    {"qwen2.5:14b", "9216M", 5000, 1400, 20, "14.8B"},
};

/* 4 + 12 + 22 + 19 + 12 = 69 roles, in role order. */
const sc_class_t sc_classes[SC_CLASSES] = {
    /* name      roles model inter stream prompt    reply     think timeout */
    {"voice",     4,   0,    1,    1,     6, 20,    20, 40,   3.0,  2.0},
    {"router",    12,  0,    0,    0,     40, 160,  4, 16,    5.0,  30.0},
    {"summary",   22,  1,    0,    0,     200, 900, 80, 200,  5.0,  30.0},
    {"assistant", 19,  1,    0,    1,     30, 200,  100, 300, 5.0,  30.0},
    {"analysis",  12,  2,    0,    1,     300, 1500, 150, 350, 8.0, 30.0},
};

/* Roles 0..35 have 3 agents, roles 36..68 have 2: 108 + 66 = 174. */
int sc_agent_role(int agent)
{
    agent %= SC_AGENTS;
    return agent < 108 ? agent / 3 : 36 + (agent - 108) / 2;
}

int sc_agent_class(int agent)
{
    int role = sc_agent_role(agent);
    for (int c = 0; c < SC_CLASSES; c++) {
        if (role < sc_classes[c].roles)
            return c;
        role -= sc_classes[c].roles;
    }
    return SC_CLASSES - 1;
}

static uint64_t s_mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

double sc_rand01(uint64_t *state)
{
    *state += 0x9e3779b97f4a7c15ull;
    return (double)(s_mix(*state) >> 11) / 9007199254740992.0;
}

double sc_exp(uint64_t *state, double mean)
{
    return -mean * log(1.0 - sc_rand01(state));
}

/* Popular prompts per class and their Zipf exponent: a small pool, as the
 * seed systems' repeats came from agents of a role asking the same things. */
#define SC_POOL 40
#define SC_ZIPF_S 1.0

static double s_cdf[SC_POOL];
static pthread_once_t s_cdf_once = PTHREAD_ONCE_INIT;

static void s_zipf_init(void)
{
    double sum = 0, acc = 0;
    for (int i = 0; i < SC_POOL; i++)
        sum += 1.0 / pow(i + 1, SC_ZIPF_S);
    for (int i = 0; i < SC_POOL; i++) {
        acc += 1.0 / pow(i + 1, SC_ZIPF_S) / sum;
        s_cdf[i] = acc;
    }
}

/* Index of a popular prompt: rank i drawn with weight 1 / (i+1)^s. */
static int s_zipf(uint64_t *rng)
{
    pthread_once(&s_cdf_once, s_zipf_init);
    double u = sc_rand01(rng);
    for (int i = 0; i < SC_POOL; i++)
        if (u <= s_cdf[i])
            return i;
    return SC_POOL - 1;
}

static const char *const s_words[] = {
    "the", "agent", "report", "summary", "customer", "order", "invoice", "status", "please",
    "explain", "why", "latency", "service", "deploy", "error", "budget", "meeting", "schedule",
    "translate", "draft", "email", "policy", "risk", "market", "data", "table", "query", "result",
    "ticket", "priority", "contract", "review", "answer", "question", "voice", "call", "route",
    "classify", "extract", "fields", "from", "this", "document", "and", "list", "steps", "to",
    "fix", "it", "with", "code", "function", "test", "plan", "weekly", "sales", "forecast",
    "support", "refund", "shipping", "delay", "account", "password", "reset"};
#define SC_NWORDS (sizeof s_words / sizeof *s_words)

/* Text of N words drawn from KEY's own generator. */
static size_t s_text(char *out, size_t cap, uint64_t key, int words, const char *prefix)
{
    size_t n = (size_t)snprintf(out, cap, "%s", prefix);
    uint64_t st = key;
    for (int i = 0; i < words && n + 16 < cap; i++) {
        const char *w = s_words[(size_t)(sc_rand01(&st) * SC_NWORDS) % SC_NWORDS];
        size_t wl = strlen(w);
        out[n++] = ' ';
        memcpy(out + n, w, wl);
        n += wl;
    }
    out[n] = '\0';
    return n;
}

void sc_req_make(sc_req_t *r, uint64_t seed, int agent, uint64_t seq, int pool_pct)
{
    memset(r, 0, sizeof *r);
    int c = sc_agent_class(agent);
    const sc_class_t *k = &sc_classes[c];
    uint64_t rng = s_mix(seed ^ s_mix((uint64_t)agent << 32 ^ seq));
    char prefix[48];
    if (sc_rand01(&rng) * 100.0 < pool_pct) {
        int idx = s_zipf(&rng);
        r->key = s_mix(seed * 1000003u + (uint64_t)c * 7919u + (uint64_t)idx + 1);
        snprintf(prefix, sizeof prefix, "[%s faq %d]", k->name, idx);
    } else {
        r->key = s_mix(rng ^ 0x5bd1e995u) | 1ull << 63;
        snprintf(prefix, sizeof prefix, "[%s agent %d q %llu]", k->name, agent,
                 (unsigned long long)seq);
    }
    uint64_t lk = r->key;
    int words = k->prompt_min + (int)(sc_rand01(&lk) * (k->prompt_max - k->prompt_min + 1));
    r->num_predict = k->reply_min + (int)(sc_rand01(&lk) * (k->reply_max - k->reply_min + 1));
    r->agent = agent;
    r->cls = c;
    r->model = k->model;
    r->stream = k->stream;
    r->prompt = malloc(SC_PROMPT_MAX);
    r->prompt_len = r->prompt ? s_text(r->prompt, SC_PROMPT_MAX, lk, words, prefix) : 0;
}

double sc_req_ideal_s(const sc_req_t *r)
{
    size_t words = 1;
    for (size_t i = 0; i < r->prompt_len; i++)
        words += r->prompt[i] == ' ';
    const sc_model_t *m = &sc_models[r->model];
    return (double)(words + 1) / m->prefill_tps + r->num_predict * m->token_ms / 1000.0;
}

void sc_req_free(sc_req_t *r)
{
    free(r->prompt);
    r->prompt = NULL;
}

/* --- the set of prompts seen in this run ------------------------------------ */
#define SC_SEEN_CAP (1u << 20)
static uint64_t *s_seen;
static pthread_mutex_t s_seen_lock = PTHREAD_MUTEX_INITIALIZER;

int sc_seen(uint64_t key)
{
    key |= 1; /* 0 marks an empty slot */
    pthread_mutex_lock(&s_seen_lock);
    if (!s_seen)
        s_seen = calloc(SC_SEEN_CAP, sizeof *s_seen);
    int seen = 0;
    if (s_seen) {
        size_t i = (size_t)(s_mix(key) & (SC_SEEN_CAP - 1));
        for (size_t probes = 0; probes < SC_SEEN_CAP; probes++, i = (i + 1) & (SC_SEEN_CAP - 1)) {
            if (s_seen[i] == key) {
                seen = 1;
                break;
            }
            if (!s_seen[i]) {
                s_seen[i] = key;
                break;
            }
        }
    }
    pthread_mutex_unlock(&s_seen_lock);
    return seen;
}

void sc_seen_clear(void)
{
    pthread_mutex_lock(&s_seen_lock);
    if (s_seen)
        memset(s_seen, 0, SC_SEEN_CAP * sizeof *s_seen);
    pthread_mutex_unlock(&s_seen_lock);
}
