/*
 * agentbus-infer-load - N agents calling an inference service the way LLM
 * agents do: one generate request at a time each (streamed), a think time
 * between them, a share of the prompts repeated. Prints completed requests
 * per second, latency (time to first token and to the end), errors and the
 * calls cut off at the end (still running 2 s after --seconds: cancelled).
 * Used by `scripts/demo --ollama-sim` and to saturate simulated GPUs.
 */
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "load_run.h"
#include "tl_clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *broker, *service, *models;
    long agents, seconds, think_ms, repeat_pct, num_predict;
} s_cfg_t;

typedef struct {
    ld_stats_t st; /* first: ld_run's record */
    const s_cfg_t *cfg;
    int index;
    uint64_t tokens;
    uint64_t cut; /* calls still running at the end, cancelled: neither ok nor failed */
    tl_hist_t ttft;
} s_agent_t;

/* How long a call still running when --seconds is up may take to finish
 * before it is cancelled and counted as cut off. */
#define IL_GRACE_MS 2000

typedef struct {
    s_agent_t *a;
    uint64_t start_us;
    int got_first, done, status;
    char error[200];
} s_call_t;

static void s_on_event(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    s_call_t *call = arg;
    if (ev->status == AB_OK && !call->got_first) {
        call->got_first = 1;
        tl_hist_record(&call->a->ttft, tl_now_us() - call->start_us);
    }
    if (ev->status == AB_OK)
        call->a->tokens += !ev->final;
    if (ev->final) {
        call->done = 1;
        call->status = ev->status;
        snprintf(call->error, sizeof call->error, "%s", ev->error_text);
    }
}

/* The Nth model of the comma-separated list (wrapping). */
static void s_model(const char *list, long n, char *out, size_t cap)
{
    long count = 1;
    for (const char *p = list; *p; p++)
        count += *p == ',';
    n %= count;
    const char *p = list;
    while (n-- > 0)
        p = strchr(p, ',') + 1;
    snprintf(out, cap, "%.*s", (int)strcspn(p, ","), p);
}

/* The next request of agent A into BUF (CAP bytes): its length; MODEL
 * (128 bytes) is set to the model asked for. */
static size_t s_pack_request(s_agent_t *a, uint32_t *rng, char *model, uint8_t *buf, size_t cap)
{
    const s_cfg_t *cfg = a->cfg;
    char prompt[160];
    *rng = *rng * 1103515245u + 12345u;
    int repeat = (long)(*rng >> 8) % 100 < cfg->repeat_pct;
    s_model(cfg->models, (long)(a->index + a->st.sent), model, 128);
    if (repeat)
        snprintf(prompt, sizeof prompt, "frequently asked question number %u", (*rng >> 4) % 8);
    else
        snprintf(prompt, sizeof prompt, "agent %d asks question %llu", a->index,
                 (unsigned long long)a->st.sent);
    Agentbus__InferenceRequest q = AGENTBUS__INFERENCE_REQUEST__INIT;
    Agentbus__GenerateRequest g = AGENTBUS__GENERATE_REQUEST__INIT;
    Agentbus__InferenceOptions op = AGENTBUS__INFERENCE_OPTIONS__INIT;
    op.has_seed_case = AGENTBUS__INFERENCE_OPTIONS__HAS_SEED_SEED;
    op.seed = 1;
    if (cfg->num_predict > 0) {
        op.has_num_predict_case = AGENTBUS__INFERENCE_OPTIONS__HAS_NUM_PREDICT_NUM_PREDICT;
        op.num_predict = cfg->num_predict;
    }
    g.model = model;
    g.prompt = prompt;
    g.options = &op;
    q.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_GENERATE;
    q.generate = &g;
    (void)cap; /* a prompt of < 160 bytes and a model of < 128: well within */
    return agentbus__inference_request__pack(&q, buf);
}

/* One call of agent A on C, waited for until it ends or CUT_MS (then it
 * is cancelled and counted as cut off: the run is over, the call neither
 * failed nor succeeded; with a live broker a run used to wait up to 60 s
 * past --seconds for the calls in flight). */
static void s_call(s_agent_t *a, ab_client_t *c, uint32_t *rng, int64_t cut_ms)
{
    char model[128];
    uint8_t buf[512];
    size_t len = s_pack_request(a, rng, model, buf, sizeof buf);
    s_call_t call = {a, tl_now_us(), 0, 0, 0, ""};
    a->st.sent++;
    uint64_t id = 0;
    int rc = ab_client_request_start(c, a->cfg->service, buf, len,
                                     &(ab_request_opts_t){.timeout_ms = 60000, .model = model},
                                     s_on_event, &call, &id);
    while (rc == AB_OK && !call.done && !ld_stop && tl_now_ms() < cut_ms)
        if (ab_client_poll(c, 100) < 0)
            break;
    if (rc == AB_OK && !call.done) { /* CALL lives on this stack: end it now */
        ab_client_cancel(c, id);
        if (ld_stop || tl_now_ms() >= cut_ms) {
            a->cut++;
            return;
        }
    }
    if (rc == AB_OK && call.done && call.status == AB_OK) {
        a->st.ok++;
        tl_hist_record(&a->st.lat, tl_now_us() - call.start_us);
        return;
    }
    a->st.failed++;
    if (!a->st.first_error) {
        a->st.first_error = rc != AB_OK ? rc : call.done ? call.status : AB_ESTOPPED;
        snprintf(a->st.first_error_text, sizeof a->st.first_error_text, "%s", call.error);
    }
}

static void *s_agent_main(void *arg)
{
    s_agent_t *a = arg;
    const s_cfg_t *cfg = a->cfg;
    ab_client_t *c = NULL;
    int rc = ld_connect(cfg->broker, "infer-agent", a->index, &c);
    if (rc != AB_OK) {
        a->st.first_error = rc;
        return NULL;
    }
    uint32_t rng = 0x9e3779b9u * (uint32_t)(a->index + 1);
    int64_t end = tl_now_ms() + cfg->seconds * 1000;
    while (!ld_stop && tl_now_ms() < end) {
        s_call(a, c, &rng, end + IL_GRACE_MS);
        int64_t think_end = tl_now_ms() + cfg->think_ms;
        think_end = think_end < end ? think_end : end;
        for (int64_t now; !ld_stop && (now = tl_now_ms()) < think_end;)
            ab_client_poll(c, think_end - now < 50 ? (int)(think_end - now) : 50);
    }
    ab_client_destroy(&c);
    return NULL;
}

enum { O_SERVICE = LD_FIRST_OWN, O_MODELS, O_AGENTS, O_SECONDS, O_THINK, O_REPEAT, O_PREDICT };
static const tl_opt_t s_opts[] = {
    {"help", 'h', TL_NOVAL, LD_HELP},      {"version", 0, TL_NOVAL, LD_VERSION},
    {"broker", 0, TL_VAL, LD_BROKER},      {"service", 0, TL_VAL, O_SERVICE},
    {"models", 0, TL_VAL, O_MODELS},       {"agents", 0, TL_VAL, O_AGENTS},
    {"seconds", 0, TL_VAL, O_SECONDS},     {"think-ms", 0, TL_VAL, O_THINK},
    {"repeat-pct", 0, TL_VAL, O_REPEAT},   {"num-predict", 0, TL_VAL, O_PREDICT},
    {NULL, 0, 0, 0},
};

static int s_take(void *arg, int id, const char *v)
{
    s_cfg_t *cfg = arg;
    switch (id) {
    case O_SERVICE: /* as the broker takes: a longer one failed every request */
        cfg->service = v;
        return *v && strlen(v) <= 255 ? 0 : -1;
    case O_MODELS: /* "a,,b" or "a," sent requests naming no model, one of 128 bytes
                    * or more asked for its first 127 */
        cfg->models = v;
        for (const char *p = v;; p++) {
            size_t n = strcspn(p, ",");
            if (n == 0 || n >= 128)
                return -1;
            p += n;
            if (!*p)
                return 0;
        }
    case O_AGENTS: return tl_parse_long(v, 1, 2000, &cfg->agents);
    case O_SECONDS: return tl_parse_long(v, 1, 86400, &cfg->seconds);
    case O_THINK: return tl_parse_long(v, 0, 600000, &cfg->think_ms);
    case O_REPEAT: return tl_parse_long(v, 0, 100, &cfg->repeat_pct);
    case O_PREDICT: return tl_parse_long(v, 0, 100000, &cfg->num_predict);
    }
    return -1;
}

static void s_usage(const char *argv0)
{
    (void)argv0;
    printf("Usage: agentbus-infer-load [options]\n\n"
           "Agents calling an inference service the way LLM agents do: one streamed\n"
           "generate at a time each, a think time between calls, a share of the\n"
           "prompts repeated. Prints completed requests per second, latency (first\n"
           "token and whole answer) and errors.\n\n"
           "Options:\n"
           "  --broker EP        the broker (default: $AB_BROKER, else tcp://127.0.0.1:5555)\n"
           "  --service S        the inference service, 1..255 bytes (default ollama)\n"
           "  --models M1,M2     models, taken in turn (default sim-small), each of\n"
           "                     1..127 bytes\n"
           "  --agents N         agents, 1..2000 (default 20)\n"
           "  --seconds N        how long calls are started, 1..86400 (default 10);\n"
           "                     see below for the calls still running then\n"
           "  --think-ms N       pause after each answer, 0..600000 (default 0)\n"
           "  --repeat-pct P     share of prompts that repeat an earlier one, 0..100\n"
           "                     (default 70)\n"
           "  --num-predict N    tokens asked per answer, 0..100000 (default 0: the\n"
           "                     model's own)\n"
           "  -h, --help         this text\n"
           "  --version          the version\n\n"
           "After --seconds no call starts; a call still running 2 s later (or at\n"
           "SIGINT/SIGTERM) is cancelled and counted as \"cut off\": neither ok nor\n"
           "failed. So a run ends within --seconds + 2 s (+ up to 5 s to reach the\n"
           "broker).\n\n"
           "Exit status: 0 when no request failed (cut-off ones do not count as\n"
           "failed); 1 if one failed or no broker was reachable within 5 s; 2 on bad\n"
           "usage.\n");
}

int main(int argc, char **argv)
{
    s_cfg_t cfg = {.service = "ollama", .models = "sim-small", .agents = 20, .seconds = 10,
                   .think_ms = 0, .repeat_pct = 70};
    int prc = ld_parse(argc, argv, "agentbus-infer-load", s_opts, s_usage, &cfg.broker,
                       s_take, &cfg);
    if (prc != 0)
        return prc > 0 ? 0 : 2;
    ld_signals();
    /* Each call waits for its answer (up to 60 s): with no broker a run of
     * --seconds 1 took a minute, then said "CANCELLED". */
    int wrc = ld_wait_broker(cfg.broker, "agentbus-infer-load", 5000);
    if (wrc != 0)
        return wrc;
    s_agent_t *agents = calloc((size_t)cfg.agents, sizeof *agents);
    if (!agents)
        return 1;
    int64_t t0 = tl_now_ms();
    for (long i = 0; i < cfg.agents; i++) {
        agents[i].cfg = &cfg;
        agents[i].index = (int)i;
        tl_hist_reset(&agents[i].ttft);
    }
    ld_stats_t t;
    ld_run(agents, sizeof *agents, cfg.agents, s_agent_main, &t);
    tl_hist_t ttft;
    tl_hist_reset(&ttft);
    uint64_t tokens = 0, cut = 0;
    for (long i = 0; i < cfg.agents; i++) {
        tl_hist_merge(&ttft, &agents[i].ttft);
        tokens += agents[i].tokens;
        cut += agents[i].cut;
    }
    double secs = (tl_now_ms() - t0) / 1000.0;
    printf("infer-load: %ld agents, %.1f s: %llu requests, %llu ok (%.1f/s), %llu failed, "
           "%llu cut off, %.0f tokens/s\n",
           cfg.agents, secs, (unsigned long long)t.sent, (unsigned long long)t.ok, t.ok / secs,
           (unsigned long long)t.failed, (unsigned long long)cut, tokens / secs);
    if (cut)
        printf("infer-load: %llu cut off: still running %d s after the end (--seconds %ld%s), "
               "cancelled; counted neither ok nor failed\n", (unsigned long long)cut,
               IL_GRACE_MS / 1000, cfg.seconds, ld_stop ? ", or interrupted" : "");
    printf("infer-load: latency p50 %.1f ms, p95 %.1f ms, p99 %.1f ms; first token p50 %.1f ms, "
           "p95 %.1f ms\n",
           tl_hist_percentile(&t.lat, 50) / 1000.0, tl_hist_percentile(&t.lat, 95) / 1000.0,
           tl_hist_percentile(&t.lat, 99) / 1000.0, tl_hist_percentile(&ttft, 50) / 1000.0,
           tl_hist_percentile(&ttft, 95) / 1000.0);
    if (t.first_error)
        printf("infer-load: first error: %s: %s\n", ab_status_name(t.first_error),
               t.first_error_text);
    free(agents);
    return t.failed ? 1 : 0;
}
