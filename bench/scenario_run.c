/*
 * scenario_run.c - one run of the seed workload: 174 agent threads, each
 * with its engine (direct HTTP or agentbus), in a closed loop (one call at
 * a time, think time between) or an open loop (Poisson arrivals at a fixed
 * offered rate, calls overlapping as they will). A sampler thread reads the
 * simulators' /sim/stats (and the broker's queue) every 500 ms for the GPU
 * slot utilisation while work waits.
 */
#include "scenario.h"
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "tl_clock.h"
#include "grow.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* --- HTTP helper --------------------------------------------------------------- */
typedef struct {
    char *p;
    size_t n, cap;
} s_buf_t;

/* The answer grows by doubling (base/grow.h says why). */
static size_t s_collect(char *ptr, size_t size, size_t n, void *arg)
{
    s_buf_t *b = arg;
    size_t len = size * n;
    if (ab_grow(&b->p, &b->cap, b->n + len + 1) != 0)
        return 0;
    memcpy(b->p + b->n, ptr, len);
    b->n += len;
    b->p[b->n] = '\0';
    return len;
}

char *sc_http(const char *url, const char *body, long *status)
{
    CURL *e = curl_easy_init();
    s_buf_t b = {NULL, 0, 0};
    if (!e)
        return NULL;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, s_collect);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
    if (body)
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    CURLcode rc = curl_easy_perform(e);
    if (status)
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, status);
    curl_easy_cleanup(e);
    if (rc != CURLE_OK) {
        free(b.p);
        return NULL;
    }
    return b.p ? b.p : strdup("");
}

/* --- agents ----------------------------------------------------------------------- */
static double s_wall_us(const sc_run_cfg_t *cfg, double sim_s)
{
    return sim_s / cfg->scale * 1e6;
}

void sc_call_end(sc_call_t *call, int ok, int err)
{
    sc_agent_t *a = call->a;
    uint64_t now = tl_now_us();
    if (a->closing) {
        ok = 0;
        err = SC_E_CUT;
    }
    if (a->nrecs == a->caprecs) {
        size_t cap = a->caprecs ? 2 * a->caprecs : 64;
        sc_rec_t *r = realloc(a->recs, cap * sizeof *r);
        if (r) {
            a->recs = r;
            a->caprecs = cap;
        }
    }
    if (a->nrecs < a->caprecs) {
        sc_rec_t *r = &a->recs[a->nrecs++];
        r->done_ms = (uint32_t)((now - a->t_start_us) / 1000);
        r->lat_us = (uint32_t)(now - call->t0_us);
        r->ttft_us =
            call->req.stream && call->first_us ? (uint32_t)(call->first_us - call->t0_us) : 0;
        r->ideal_us = (uint32_t)(sc_req_ideal_s(&call->req) / a->cfg->scale * 1e6);
        r->cls = (uint8_t)call->req.cls;
        r->ok = (uint8_t)ok;
        r->repeat = (uint8_t)call->repeat;
        r->late = now > a->t_end_us;
        r->err = (int16_t)(ok ? SC_E_NONE : err);
    }
    a->inflight--;
    if (!a->cfg->open_loop)
        a->next_us = now + (a->cfg->no_think ? 0 : (uint64_t)s_wall_us(
                                 a->cfg, sc_exp(&a->rng, sc_classes[call->req.cls].think_s)));
    sc_req_free(&call->req);
    free(call);
}

static void s_issue(sc_agent_t *a, void *eng)
{
    const sc_run_cfg_t *cfg = a->cfg;
    sc_call_t *call = calloc(1, sizeof *call);
    if (!call)
        return;
    call->a = a;
    sc_req_make(&call->req, cfg->seed, a->index, a->seq++, cfg->pool_pct);
    call->repeat = sc_seen(call->req.key);
    call->timeout_ms = (int)(s_wall_us(cfg, sc_classes[call->req.cls].timeout_s) / 1000);
    call->t0_us = tl_now_us();
    a->inflight++;
    a->issued++;
    if (!eng || cfg->ops->start(eng, call) != 0)
        sc_call_end(call, 0, cfg->ops == &sc_bus_ops ? SC_E_BUS : SC_E_CONN);
}

static void *s_agent_main(void *arg)
{
    sc_agent_t *a = arg;
    const sc_run_cfg_t *cfg = a->cfg;
    void *eng = cfg->ops->open(a);
    double gap_s = cfg->open_loop ? cfg->agents / cfg->rate : 0; /* sim s between arrivals */
    a->next_us = a->t_start_us +
                 (uint64_t)s_wall_us(cfg, cfg->open_loop
                                              ? sc_exp(&a->rng, gap_s)
                                              : sc_rand01(&a->rng) *
                                                sc_classes[sc_agent_class(a->index)].think_s *
                                                (cfg->no_think ? 0.1 : 1));
    while (tl_now_us() < a->t_start_us)
        usleep(1000);
    for (;;) {
        uint64_t now = tl_now_us();
        if (now >= a->t_end_us)
            break;
        while (now >= a->next_us && (cfg->open_loop || a->inflight == 0)) {
            s_issue(a, eng);
            if (cfg->open_loop)
                a->next_us += (uint64_t)s_wall_us(cfg, sc_exp(&a->rng, gap_s));
            else if (a->inflight > 0)
                a->next_us = UINT64_MAX;
        }
        uint64_t until = a->next_us < a->t_end_us ? a->next_us : a->t_end_us;
        int wait_ms = until > now ? (int)((until - now + 999) / 1000) : 0;
        if (eng)
            cfg->ops->poll(eng, wait_ms > 50 ? 50 : wait_ms);
        else
            usleep(1000);
    }
    /* Let the calls out finish: each has its own deadline (the class's
     * timeout); 2 s of wall time more, then they are cut. */
    uint64_t drain_end = a->t_end_us + (uint64_t)s_wall_us(cfg, 30.0) + 2000000;
    while (eng && a->inflight > 0 && tl_now_us() < drain_end)
        cfg->ops->poll(eng, 50);
    a->closing = 1;
    if (eng)
        cfg->ops->close(eng);
    return NULL;
}

/* --- sampler: GPU slots ------------------------------------------------------------ */
typedef struct {
    int ok, loaded[SC_MODELS], slots[SC_MODELS], queued[SC_MODELS];
    double up_ns, busy_ns[SC_MODELS];
    long s503, aborted, completed;
} s_snap_t;

static int s_model_index(const char *name)
{
    for (int i = 0; i < SC_MODELS; i++)
        if (!strcmp(name, sc_models[i].name))
            return i;
    return -1;
}

static void s_snap(const char *url, s_snap_t *s)
{
    char u[96];
    memset(s, 0, sizeof *s);
    snprintf(u, sizeof u, "%s/sim/stats", url);
    char *txt = sc_http(u, NULL, NULL);
    json_t *j = txt ? json_loads(txt, 0, NULL) : NULL;
    free(txt);
    if (!j)
        return;
    s->ok = 1;
    s->up_ns = (double)json_integer_value(json_object_get(j, "uptime_ns"));
    s->s503 = (long)json_integer_value(json_object_get(json_object_get(j, "status"), "503"));
    s->aborted = (long)json_integer_value(json_object_get(j, "aborted"));
    s->completed = (long)json_integer_value(json_object_get(j, "completed"));
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(j, "models"), i, m) {
        int k = s_model_index(json_string_value(json_object_get(m, "name")));
        if (k < 0)
            continue;
        s->loaded[k] = !strcmp(json_string_value(json_object_get(m, "state")) ?: "", "loaded");
        s->queued[k] = (int)json_integer_value(json_object_get(m, "queued"));
        size_t x;
        json_t *sl;
        json_array_foreach(json_object_get(m, "slots"), x, sl) {
            s->busy_ns[k] += (double)json_integer_value(json_object_get(sl, "busy_ns"));
            s->slots[k]++;
        }
    }
    json_decref(j);
}

static Agentbus__Stats *s_bus_stats(ab_client_t *c)
{
    void *buf = NULL;
    size_t len = 0;
    if (!c || ab_client_control(c, "stats", 3000, &buf, &len) != AB_OK)
        return NULL;
    Agentbus__Stats *st = agentbus__stats__unpack(NULL, len, buf);
    ab_free(buf);
    return st;
}

/* Requests of each model waiting in the broker's "ollama" queue (Stats
 * model_queues): a model's slots count as "busy while work waited" only
 * while that model's own requests waited, at the broker or in Ollama. */
static void s_bus_queue(ab_client_t *c, uint32_t q[SC_MODELS])
{
    Agentbus__Stats *st = s_bus_stats(c);
    memset(q, 0, SC_MODELS * sizeof *q);
    for (size_t i = 0; st && i < st->n_model_queues; i++) {
        const Agentbus__ModelQueue *mq = st->model_queues[i];
        int k = strcmp(mq->service, "ollama") ? -1 : s_model_index(mq->model);
        if (k >= 0)
            q[k] += mq->queued;
    }
    if (st)
        agentbus__stats__free_unpacked(st, NULL);
}

typedef struct {
    const sc_run_cfg_t *cfg;
    ab_client_t *ctl;
    volatile int stop;
    double all_busy, all_cap, q_busy, q_cap, q_secs;
    s_snap_t last[SC_GPUS];
    pthread_t thread;
} s_sampler_t;

static void s_sample(s_sampler_t *sp)
{
    uint32_t bq[SC_MODELS] = {0};
    if (sp->ctl)
        s_bus_queue(sp->ctl, bq);
    double waited = 0;
    for (int g = 0; g < SC_GPUS; g++) {
        s_snap_t cur, *prev = &sp->last[g];
        s_snap(sp->cfg->sim_url[g], &cur);
        if (!cur.ok)
            continue;
        double dt = cur.up_ns - prev->up_ns;
        for (int m = 0; prev->ok && dt > 0 && m < SC_MODELS; m++) {
            if (!cur.loaded[m] || !prev->loaded[m] || cur.slots[m] != prev->slots[m])
                continue;
            double busy = cur.busy_ns[m] - prev->busy_ns[m], cap = dt * cur.slots[m];
            sp->all_busy += busy;
            sp->all_cap += cap;
            if (cur.queued[m] > 0 || bq[m] > 0) {
                sp->q_busy += busy;
                sp->q_cap += cap;
                waited = dt > waited ? dt : waited;
            }
        }
        *prev = cur;
    }
    sp->q_secs += waited / 1e9;
}

static void *s_sampler_main(void *arg)
{
    s_sampler_t *sp = arg;
    while (!sp->stop) {
        for (int i = 0; i < 10 && !sp->stop; i++)
            usleep(50000);
        s_sample(sp);
    }
    return NULL;
}

/* --- one run ---------------------------------------------------------------------- */
static void s_bus_counts(ab_client_t *c, uint64_t hits[3], uint64_t *coalesced, uint64_t *reqs)
{
    Agentbus__Stats *st = s_bus_stats(c);
    memset(hits, 0, 3 * sizeof *hits);
    *coalesced = *reqs = 0;
    if (!st)
        return;
    *reqs = st->requests;
    if (st->cache) {
        *coalesced = st->cache->coalesced;
        for (size_t i = 0; i < st->cache->n_tiers; i++) {
            const char *n = st->cache->tiers[i]->name;
            if (n[0] == 'l' && n[1] >= '1' && n[1] <= '3')
                hits[n[1] - '1'] = st->cache->tiers[i]->hits;
        }
    }
    agentbus__stats__free_unpacked(st, NULL);
}

static ab_client_t *s_control_client(const sc_run_cfg_t *cfg)
{
    if (!cfg->broker[0])
        return NULL;
    ab_options_t *o = ab_options_new();
    ab_options_set_endpoint(o, cfg->broker);
    ab_client_t *c = NULL;
    if (ab_client_new(&c, o) != AB_OK)
        c = NULL;
    ab_options_destroy(&o);
    return c;
}

static void s_merge(sc_agent_t *agents, int n, sc_result_t *res)
{
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += agents[i].nrecs;
    res->recs = malloc((total ? total : 1) * sizeof *res->recs);
    for (int i = 0; i < n; i++) {
        if (res->recs && agents[i].nrecs)
            memcpy(res->recs + res->nrecs, agents[i].recs, agents[i].nrecs * sizeof *res->recs);
        res->nrecs += res->recs ? agents[i].nrecs : 0;
        res->issued += agents[i].issued;
        free(agents[i].recs);
    }
}

int sc_run(const sc_run_cfg_t *cfg, sc_result_t *res)
{
    memset(res, 0, sizeof *res);
    snprintf(res->label, sizeof res->label, "%s", cfg->label);
    res->open_loop = cfg->open_loop;
    res->rate = cfg->rate;
    res->sim_seconds = cfg->seconds;
    sc_seen_clear();
    s_sampler_t sp = {.cfg = cfg};
    sp.ctl = s_control_client(cfg);
    uint64_t h0[3] = {0}, c0 = 0, r0 = 0, h1[3], c1, r1;
    if (sp.ctl) {
        void *b = NULL;
        size_t bl;
        if (ab_client_control(sp.ctl, "cache clear", 3000, &b, &bl) == AB_OK) /* start cold */
            ab_free(b);
        s_bus_counts(sp.ctl, h0, &c0, &r0);
        res->has_bus = 1;
    }
    for (int g = 0; g < SC_GPUS; g++) {
        char u[96];
        snprintf(u, sizeof u, "%s/sim/stats/reset", cfg->sim_url[g]);
        free(sc_http(u, "", NULL));
        s_snap(cfg->sim_url[g], &sp.last[g]);
    }
    sc_agent_t *agents = calloc((size_t)cfg->agents, sizeof *agents);
    if (!agents)
        return -1;
    uint64_t start = tl_now_us() + 300000;
    uint64_t end = start + (uint64_t)s_wall_us(cfg, cfg->seconds);
    pthread_create(&sp.thread, NULL, s_sampler_main, &sp);
    for (int i = 0; i < cfg->agents; i++) {
        sc_agent_t *a = &agents[i];
        a->cfg = cfg;
        a->index = i;
        a->rng = cfg->seed * 0x2545f4914f6cdd1dull + (uint64_t)i * 0x9e3779b97f4a7c15ull;
        a->t_start_us = start;
        a->t_end_us = end;
        pthread_create(&a->thread, NULL, s_agent_main, a);
    }
    for (int i = 0; i < cfg->agents; i++)
        pthread_join(agents[i].thread, NULL);
    sp.stop = 1;
    pthread_join(sp.thread, NULL);
    s_sample(&sp);
    res->seconds_wall = (end - start) / 1e6;
    res->util_all = sp.all_cap > 0 ? 100.0 * sp.all_busy / sp.all_cap : 0;
    res->util_queued = sp.q_cap > 0 ? 100.0 * sp.q_busy / sp.q_cap : -1;
    res->queued_secs = sp.q_secs * cfg->scale;
    res->gpu_busy = sp.all_busy;
    for (int g = 0; g < SC_GPUS; g++) {
        res->sim_503 += (uint64_t)sp.last[g].s503;
        res->sim_aborted += (uint64_t)sp.last[g].aborted;
        res->sim_completed += (uint64_t)sp.last[g].completed;
    }
    if (sp.ctl) {
        s_bus_counts(sp.ctl, h1, &c1, &r1);
        for (int t = 0; t < 3; t++)
            res->hits[t] = h1[t] - h0[t];
        res->coalesced = c1 - c0;
        res->bus_requests = r1 - r0;
        ab_client_destroy(&sp.ctl);
    }
    s_merge(agents, cfg->agents, res);
    free(agents);
    return 0;
}
