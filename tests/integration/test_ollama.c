/*
 * test_ollama.c - Ollama workers against real ollama-sim processes, through
 * a real broker: round trips, errors and faults, CANCEL, adaptive
 * concurrency, placement, model management. One case per ctest entry:
 * test_ollama CASE.
 *
 * The simulator runs with a time scale so loads and tokens take
 * milliseconds; nothing here asserts on speed. What the simulator saw is
 * read from its own /sim/stats.
 */
#include "harness.h"
#include "test.h"
#include "util.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_SCALE "20"

/* --- the simulator ---------------------------------------------------------- */
typedef struct {
    char *buf;
    size_t len;
} s_body_t;

static size_t s_body_write(char *d, size_t sz, size_t n, void *arg)
{
    s_body_t *b = arg;
    char *nb = realloc(b->buf, b->len + sz * n + 1);
    if (!nb)
        return 0;
    b->buf = nb;
    memcpy(b->buf + b->len, d, sz * n);
    b->len += sz * n;
    b->buf[b->len] = '\0';
    return sz * n;
}

/* HTTP to the simulator: BODY NULL = GET. Returns the status (0 when the
 * connection failed); *out (may be NULL) gets the parsed JSON answer. */
static long s_http(int port, const char *path, const char *body, json_t **out)
{
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    CURL *e = curl_easy_init();
    s_body_t b = {NULL, 0};
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, s_body_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    if (body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    }
    long status = 0;
    if (curl_easy_perform(e) == CURLE_OK)
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    if (out)
        *out = b.buf ? json_loads(b.buf, 0, NULL) : NULL;
    free(b.buf);
    curl_slist_free_all(h);
    curl_easy_cleanup(e);
    return status;
}

/* Starts ollama-sim on a free port with extra flags (NULL-terminated) and
 * waits until it answers. */
static int s_sim(const char *first, ...)
{
    int port = th_free_port();
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    const char *argv[40] = {"--port", p, "--time-scale", S_SCALE, "--quiet"};
    int n = 5;
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && n < 39; a = va_arg(ap, const char *))
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    th_spawn("ollama-sim", argv, NULL);
    for (int i = 0; i < 200; i++) {
        if (s_http(port, "/api/version", NULL, NULL) == 200)
            return port;
        th_sleep_ms(25);
    }
    REQUIRE(!"ollama-sim did not come up");
    return -1;
}

/* A number from /sim/stats: "a" or "a.b" (one level of nesting). */
static long long s_sim_stat(int port, const char *key)
{
    json_t *j = NULL;
    if (s_http(port, "/sim/stats", NULL, &j) != 200 || !j) {
        json_decref(j);
        return -1;
    }
    char k1[64];
    snprintf(k1, sizeof k1, "%s", key);
    char *dot = strchr(k1, '.');
    if (dot)
        *dot = '\0';
    json_t *v = json_object_get(j, k1);
    if (dot)
        v = json_object_get(v, dot + 1);
    long long r = json_is_integer(v) ? json_integer_value(v) : -1;
    json_decref(j);
    return r;
}

static void s_faults(int port, const char *json)
{
    REQUIRE(s_http(port, "/sim/faults", json, NULL) == 200);
}

/* An Ollama worker for the simulator on SIM_PORT, extra flags after name. */
static pid_t s_oworker(int port, int sim_port, const char *name, ...)
{
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", sim_port);
    const char *argv[40] = {"--broker", th_ep(port), "--backend", "ollama", "--ollama-url", url,
                            "--name", name, "--heartbeat-ms", "200"};
    int n = 10;
    va_list ap;
    va_start(ap, name);
    for (const char *a = va_arg(ap, const char *); a && n < 39; a = va_arg(ap, const char *))
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    return th_spawn("agentbus-worker", argv, NULL);
}

/* The inference state the broker holds for worker NAME (NULL if none
 * yet); free with agentbus__worker_list__free_unpacked(*wl). */
static const Agentbus__InferenceState *s_state(ab_client_t *c, const char *name,
                                                Agentbus__WorkerList **wl, uint32_t *capacity)
{
    *wl = th_workers(c);
    for (size_t i = 0; *wl && i < (*wl)->n_workers; i++)
        if (strcmp((*wl)->workers[i]->name, name) == 0) {
            if (capacity)
                *capacity = (*wl)->workers[i]->capacity;
            return (*wl)->workers[i]->inference;
        }
    return NULL;
}

static int s_has_loaded(const Agentbus__InferenceState *st, const char *model)
{
    for (size_t i = 0; st && i < st->n_loaded; i++)
        if (strcmp(st->loaded[i]->name, model) == 0)
            return 1;
    return 0;
}

/* Waits (bounded) until worker NAME reports MODEL loaded (want 1) or not. */
static int s_wait_loaded(ab_client_t *c, const char *name, const char *model, int want,
                         int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    while (ab_now_ms() < end) {
        Agentbus__WorkerList *wl;
        const Agentbus__InferenceState *st = s_state(c, name, &wl, NULL);
        int ok = st && st->n_models > 0 && s_has_loaded(st, model) == want;
        if (wl)
            agentbus__worker_list__free_unpacked(wl, NULL);
        if (ok)
            return 0;
        th_sleep_ms(50);
    }
    return -1;
}

/* --- requests ------------------------------------------------------------------ */
typedef struct {
    int kind; /* 1 generate, 2 chat, 3 embed */
    int partials, finals, status, order_ok;
    char text[8192];
    size_t len;
    char worker[64], error[256], done_reason[32];
    uint64_t eval_count, total_duration, prompt_eval_count;
    size_t dims, n_embeddings;
    float first;
} s_res_t;

static void s_append(s_res_t *r, const char *s)
{
    size_t n = strlen(s);
    if (r->len + n < sizeof r->text) {
        memcpy(r->text + r->len, s, n + 1);
        r->len += n;
    }
}

static void s_on_event(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    s_res_t *r = arg;
    if (r->finals)
        r->order_ok = 0; /* nothing may follow the final event */
    if (ev->final) {
        r->finals++;
        r->status = ev->status;
        snprintf(r->error, sizeof r->error, "%s", ev->error_text);
    } else {
        r->partials++;
    }
    if (ev->status != AB_OK)
        return;
    if (r->kind == 1) {
        Agentbus__GenerateResponse *g = agentbus__generate_response__unpack(NULL, ev->size, ev->data);
        REQUIRE(g);
        CHECK_EQ(g->done, ev->final);
        s_append(r, g->response);
        if (g->done) {
            snprintf(r->worker, sizeof r->worker, "%s", g->worker);
            snprintf(r->done_reason, sizeof r->done_reason, "%s", g->done_reason);
            if (g->timings) {
                r->eval_count = g->timings->eval_count;
                r->total_duration = g->timings->total_duration;
                r->prompt_eval_count = g->timings->prompt_eval_count;
            }
        }
        agentbus__generate_response__free_unpacked(g, NULL);
    } else if (r->kind == 2) {
        Agentbus__ChatResponse *m = agentbus__chat_response__unpack(NULL, ev->size, ev->data);
        REQUIRE(m && m->message);
        CHECK_EQ(m->done, ev->final);
        s_append(r, m->message->content);
        if (m->done) {
            snprintf(r->worker, sizeof r->worker, "%s", m->worker);
            if (m->timings) {
                r->eval_count = m->timings->eval_count;
                r->total_duration = m->timings->total_duration;
            }
        }
        agentbus__chat_response__free_unpacked(m, NULL);
    } else {
        Agentbus__EmbedResponse *e = agentbus__embed_response__unpack(NULL, ev->size, ev->data);
        REQUIRE(e);
        r->n_embeddings = e->n_embeddings;
        r->dims = e->n_embeddings ? e->embeddings[0]->n_values : 0;
        r->first = r->dims ? e->embeddings[0]->values[0] : 0;
        snprintf(r->worker, sizeof r->worker, "%s", e->worker);
        agentbus__embed_response__free_unpacked(e, NULL);
    }
}

typedef struct {
    const char *model, *prompt, *worker;
    int stream; /* 1 stream, 0 not */
    long seed;  /* < 0: none */
    int timeout_ms;
} s_gen_t;

static uint64_t s_start_gen(ab_client_t *c, const s_gen_t *g, s_res_t *r)
{
    memset(r, 0, sizeof *r);
    r->kind = 1;
    r->order_ok = 1;
    Agentbus__InferenceRequest q = AGENTBUS__INFERENCE_REQUEST__INIT;
    Agentbus__GenerateRequest gr = AGENTBUS__GENERATE_REQUEST__INIT;
    Agentbus__InferenceOptions o = AGENTBUS__INFERENCE_OPTIONS__INIT;
    gr.model = (char *)g->model;
    gr.prompt = (char *)g->prompt;
    gr.has_stream_case = AGENTBUS__GENERATE_REQUEST__HAS_STREAM_STREAM;
    gr.stream = g->stream;
    if (g->seed >= 0) {
        o.has_seed_case = AGENTBUS__INFERENCE_OPTIONS__HAS_SEED_SEED;
        o.seed = g->seed;
        gr.options = &o;
    }
    q.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_GENERATE;
    q.generate = &gr;
    uint8_t buf[4096];
    size_t len = agentbus__inference_request__pack(&q, buf);
    uint64_t id = 0;
    REQUIRE(ab_client_request_start(
                c, "ollama", buf, len,
                &(ab_request_opts_t){.timeout_ms = g->timeout_ms ? g->timeout_ms : 20000,
                                     .model = g->model,
                                     .worker = g->worker},
                s_on_event, r, &id) == AB_OK);
    return id;
}

static void s_wait(ab_client_t *c, s_res_t *r, int n, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    for (;;) {
        int done = 0;
        for (int i = 0; i < n; i++)
            done += r[i].finals > 0;
        if (done == n || ab_now_ms() >= end)
            return;
        ab_client_poll(c, 50);
    }
}

static int s_generate(ab_client_t *c, const s_gen_t *g, s_res_t *r)
{
    s_start_gen(c, g, r);
    s_wait(c, r, 1, 30000);
    REQUIRE(r->finals == 1);
    return r->status;
}

/* The text the simulator itself answers (no broker, no worker). */
static void s_direct(int sim_port, const char *path, const char *body, char *out, size_t cap)
{
    json_t *j = NULL;
    REQUIRE(s_http(sim_port, path, body, &j) == 200 && j);
    json_t *msg = json_object_get(j, "message");
    const char *t = json_string_value(json_object_get(msg ? msg : j, msg ? "content" : "response"));
    snprintf(out, cap, "%s", t ? t : "");
    json_decref(j);
}

/* --- cases -------------------------------------------------------------------------- */
static void s_round_trip(void)
{
    int sim = s_sim(NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    s_oworker(port, sim, "w1", "--preload", "sim-small", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    REQUIRE(s_wait_loaded(c, "w1", "sim-small:latest", 1, 15000) == 0);

    char direct[8192];
    s_direct(sim, "/api/generate",
             "{\"model\":\"sim-small\",\"prompt\":\"tell me a story\",\"stream\":false,"
             "\"options\":{\"seed\":7}}",
             direct, sizeof direct);
    REQUIRE(direct[0] != '\0');

    s_res_t r;
    s_gen_t g = {"sim-small", "tell me a story", NULL, 1, 7, 0};
    CHECK_EQ(s_generate(c, &g, &r), AB_OK);
    CHECK_STR(r.text, direct);          /* chunks in order, nothing lost */
    CHECK_TRUE(r.partials >= 2);        /* it was streamed */
    CHECK_U64(r.eval_count, (uint64_t)r.partials); /* one PARTIAL per token */
    CHECK_TRUE(r.total_duration > 0);
    CHECK_TRUE(r.prompt_eval_count > 0);
    CHECK_STR(r.done_reason, "stop");
    CHECK_STR(r.worker, "w1");
    CHECK_TRUE(r.order_ok);

    g.stream = 0;
    CHECK_EQ(s_generate(c, &g, &r), AB_OK);
    CHECK_STR(r.text, direct);
    CHECK_EQ(r.partials, 0);
    CHECK_TRUE(r.eval_count > 0 && r.total_duration > 0);

    /* chat, streamed and not */
    char dchat[8192];
    s_direct(sim, "/api/chat",
             "{\"model\":\"sim-small\",\"messages\":[{\"role\":\"user\",\"content\":\"hi there\"}],"
             "\"stream\":false,\"options\":{\"seed\":3}}",
             dchat, sizeof dchat);
    for (int stream = 1; stream >= 0; stream--) {
        Agentbus__InferenceRequest q = AGENTBUS__INFERENCE_REQUEST__INIT;
        Agentbus__ChatRequest cr = AGENTBUS__CHAT_REQUEST__INIT;
        Agentbus__ChatMessage m = AGENTBUS__CHAT_MESSAGE__INIT, *mp = &m;
        Agentbus__InferenceOptions o = AGENTBUS__INFERENCE_OPTIONS__INIT;
        m.role = "user";
        m.content = "hi there";
        o.has_seed_case = AGENTBUS__INFERENCE_OPTIONS__HAS_SEED_SEED;
        o.seed = 3;
        cr.model = "sim-small";
        cr.n_messages = 1;
        cr.messages = &mp;
        cr.options = &o;
        cr.has_stream_case = AGENTBUS__CHAT_REQUEST__HAS_STREAM_STREAM;
        cr.stream = stream;
        q.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_CHAT;
        q.chat = &cr;
        uint8_t buf[512];
        size_t len = agentbus__inference_request__pack(&q, buf);
        memset(&r, 0, sizeof r);
        r.kind = 2;
        r.order_ok = 1;
        REQUIRE(
            ab_client_request_start(c, "ollama", buf, len,
                                    &(ab_request_opts_t){.timeout_ms = 20000, .model = "sim-small"},
                                    s_on_event, &r, NULL) == AB_OK);
        s_wait(c, &r, 1, 20000);
        CHECK_EQ(r.status, AB_OK);
        CHECK_STR(r.text, dchat);
        CHECK_TRUE(stream ? r.partials >= 2 : r.partials == 0);
        CHECK_TRUE(r.eval_count > 0 && r.total_duration > 0);
        CHECK_TRUE(r.order_ok);
    }

    /* embed: the vector the simulator computes for the same input */
    json_t *ej = NULL;
    REQUIRE(s_http(sim, "/api/embed", "{\"model\":\"sim-embed\",\"input\":\"hello world\"}", &ej) ==
            200);
    json_t *v0 = json_array_get(json_array_get(json_object_get(ej, "embeddings"), 0), 0);
    size_t dims = json_array_size(json_array_get(json_object_get(ej, "embeddings"), 0));
    double first = json_number_value(v0);
    json_decref(ej);
    Agentbus__InferenceRequest q = AGENTBUS__INFERENCE_REQUEST__INIT;
    Agentbus__EmbedRequest er = AGENTBUS__EMBED_REQUEST__INIT;
    char *inputs[] = {"hello world", "second"};
    er.model = "sim-embed";
    er.n_input = 2;
    er.input = inputs;
    q.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_EMBED;
    q.embed = &er;
    uint8_t buf[512];
    size_t len = agentbus__inference_request__pack(&q, buf);
    memset(&r, 0, sizeof r);
    r.kind = 3;
    REQUIRE(ab_client_request_start(c, "ollama", buf, len,
                                    &(ab_request_opts_t){.timeout_ms = 20000, .model = "sim-embed"},
                                    s_on_event, &r, NULL) == AB_OK);
    s_wait(c, &r, 1, 20000);
    CHECK_EQ(r.status, AB_OK);
    CHECK_EQ(r.n_embeddings, 2);
    CHECK_EQ(r.dims, dims);
    CHECK_TRUE(dims > 0 && (double)r.first == (double)(float)first);

    /* brokerctl prints the same text, streamed */
    char cmd[512], out[8192];
    snprintf(cmd, sizeof cmd, "%s --broker %s generate sim-small 'tell me a story' --seed 7",
             th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    size_t ol = strlen(out);
    if (ol && out[ol - 1] == '\n')
        out[--ol] = '\0';
    CHECK_STR(out, direct);
    snprintf(cmd, sizeof cmd, "%s --broker %s chat sim-small 'hi there' --seed 3 --no-stream",
             th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    ol = strlen(out);
    if (ol && out[ol - 1] == '\n')
        out[--ol] = '\0';
    CHECK_STR(out, dchat);
    /* --json: one Ollama-shaped object per line; the last has the timings */
    snprintf(cmd, sizeof cmd, "%s --broker %s generate sim-small 'tell me a story' --seed 7 --json",
             th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    char *last = out, *nl;
    int lines = 0;
    while ((nl = strchr(last, '\n')) && nl[1]) {
        last = nl + 1;
        lines++;
    }
    json_t *lj = json_loads(last, JSON_DISABLE_EOF_CHECK, NULL);
    CHECK_TRUE(lj && json_is_true(json_object_get(lj, "done")));
    CHECK_EQ(json_integer_value(json_object_get(lj, "eval_count")), lines);
    json_decref(lj);
    snprintf(cmd, sizeof cmd, "%s --broker %s embed sim-embed 'hello world' --json",
             th_bin("brokerctl"), th_ep(port));
    static char big[1 << 16]; /* 768 numbers as text */
    CHECK_EQ(th_run(cmd, big, sizeof big), 0);
    lj = json_loads(big, JSON_DISABLE_EOF_CHECK, NULL);
    json_t *vec = json_array_get(json_object_get(lj, "embeddings"), 0);
    CHECK_EQ(json_array_size(vec), dims);
    CHECK_TRUE((float)json_number_value(json_array_get(vec, 0)) == (float)first);
    json_decref(lj);
    ab_client_destroy(&c);
}

static void s_model_not_found(void)
{
    int sim = s_sim(NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    s_oworker(port, sim, "w1", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    REQUIRE(s_wait_loaded(c, "w1", "none", 0, 15000) == 0); /* models reported */
    s_res_t r;
    s_gen_t g = {"no-such-model", "hi", NULL, 1, -1, 0};
    CHECK_EQ(s_generate(c, &g, &r), AB_EMODEL);
    CHECK_TRUE(strstr(r.error, "no-such-model") != NULL);
    CHECK_EQ(r.partials, 0);
    /* "sim-small" without a tag is "sim-small:latest", as in Ollama */
    s_gen_t ok = {"sim-small", "hi", NULL, 1, 1, 0};
    CHECK_EQ(s_generate(c, &ok, &r), AB_OK);
    /* a malformed payload is a clear BAD_REQUEST from the worker */
    memset(&r, 0, sizeof r);
    r.kind = 1;
    REQUIRE(ab_client_request_start(c, "ollama", "\xff\x01", 2,
                                    &(ab_request_opts_t){.timeout_ms = 10000, .model = "sim-small"},
                                    s_on_event, &r, NULL) == AB_OK);
    s_wait(c, &r, 1, 10000);
    CHECK_EQ(r.status, AB_EBADREQUEST);
    /* the backend's own 404 and 400 (a model deleted after it was listed,
     * a request Ollama refuses) map to the same codes, with Ollama's text */
    s_faults(sim, "{\"error_rate\":1,\"error_status\":404,\"count\":1,\"error_message\":"
                  "\"model \\\"sim-small\\\" not found, try pulling it first\"}");
    CHECK_EQ(s_generate(c, &ok, &r), AB_EMODEL);
    CHECK_TRUE(strstr(r.error, "try pulling it first") != NULL);
    s_faults(sim, "{\"error_rate\":1,\"error_status\":400,\"count\":1,\"error_message\":"
                  "\"invalid options\"}");
    CHECK_EQ(s_generate(c, &ok, &r), AB_EBADREQUEST);
    CHECK_STR(r.error, "invalid options");
    CHECK_EQ(s_generate(c, &ok, &r), AB_OK);
    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st);
    CHECK_TRUE(th_stat_error(st, "MODEL_NOT_FOUND") >= 1);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&c);
}

/* One simulator answers 503 to everything: its worker retries, gives the
 * request back, and the broker sends it to the other worker. */
static void s_busy_redispatch(void)
{
    int bad = s_sim("--fault-error-rate", "1", "--fault-error-status", "503", NULL);
    int good = s_sim(NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    s_oworker(port, bad, "wbad", "--preload", "sim-small", "--ollama-retries", "1", NULL);
    s_oworker(port, good, "wgood", "--preload", "sim-small", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 2, 15000) == 0);
    REQUIRE(s_wait_loaded(c, "wbad", "sim-small:latest", 1, 15000) == 0);
    REQUIRE(s_wait_loaded(c, "wgood", "sim-small:latest", 1, 15000) == 0);
    s_res_t r[6];
    for (int i = 0; i < 6; i++) {
        s_gen_t g = {"sim-small", "busy test", NULL, 1, i, 0};
        s_start_gen(c, &g, &r[i]);
    }
    s_wait(c, r, 6, 30000);
    for (int i = 0; i < 6; i++) {
        CHECK_EQ(r[i].status, AB_OK);
        CHECK_STR(r[i].worker, "wgood");
        CHECK_TRUE(r[i].eval_count > 0);
    }
    /* the bad one really was tried, and more than once per request (retry) */
    long long s503 = s_sim_stat(bad, "status.503");
    CHECK_TRUE(s503 >= 2);
    ab_client_destroy(&c);
}

static void s_midstream_error(void)
{
    int sim = s_sim("--fault-midstream-rate", "1", "--fault-midstream-after", "3", NULL);
    int port;
    ab_client_t *c;
    port = th_free_port();
    th_broker(port, NULL);
    s_oworker(port, sim, "w1", "--preload", "sim-small", NULL);
    c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    s_res_t r;
    s_gen_t g = {"sim-small", "fail half way", NULL, 1, 1, 0};
    CHECK_EQ(s_generate(c, &g, &r), AB_EBACKEND);
    CHECK_EQ(r.partials, 3);  /* what was generated arrived first */
    CHECK_TRUE(r.order_ok);   /* and the error was the last word */
    CHECK_TRUE(strstr(r.error, "simulated error mid-stream") != NULL);
    /* not streamed: the simulator answers 500; still an error, never success */
    g.stream = 0;
    CHECK_EQ(s_generate(c, &g, &r), AB_EBACKEND);
    CHECK_EQ(r.partials, 0);
    ab_client_destroy(&c);
}

static void s_dropped(void)
{
    /* dropped before any byte, once: the worker retries and succeeds */
    int sim = s_sim("--fault-drop-rate", "1", "--fault-drop-after", "0", "--fault-count", "1",
                    NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    s_oworker(port, sim, "w1", "--preload", "sim-small", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    REQUIRE(s_wait_loaded(c, "w1", "sim-small:latest", 1, 15000) == 0);
    s_res_t r;
    s_gen_t g = {"sim-small", "drop me", NULL, 1, 1, 0};
    CHECK_EQ(s_generate(c, &g, &r), AB_OK);
    CHECK_TRUE(r.eval_count > 0);
    CHECK_EQ(s_sim_stat(sim, "faults.drop"), 1);
    /* dropped mid-stream: partials, then an error (no fake success) */
    s_faults(sim, "{\"drop_rate\":1,\"drop_after\":2,\"count\":1}");
    CHECK_EQ(s_generate(c, &g, &r), AB_EBACKEND);
    CHECK_EQ(r.partials, 2);
    CHECK_TRUE(r.order_ok);
    CHECK_EQ(s_sim_stat(sim, "faults.drop"), 2);
    /* the worker goes on serving */
    CHECK_EQ(s_generate(c, &g, &r), AB_OK);
    ab_client_destroy(&c);
}

/* A backend that hangs: the broker's deadline answers the client and sends
 * CANCEL; the worker aborts the transfer; the simulator frees the slot. */
static void s_hang_cancel(void)
{
    int sim = s_sim("--fault-hang-rate", "1", "--fault-hang-after", "2", NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    s_oworker(port, sim, "w1", "--preload", "sim-small", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    REQUIRE(s_wait_loaded(c, "w1", "sim-small:latest", 1, 15000) == 0);
    s_res_t r;
    /* The deadline is long enough for both tokens to arrive on a loaded
     * machine: the check is on the state (two partials, then DEADLINE),
     * not on how fast the first ones come. */
    s_gen_t g = {"sim-small", "hang", NULL, 1, 1, 5000};
    s_start_gen(c, &g, &r);
    for (int i = 0; i < 200 && r.partials < 2 && !r.finals; i++)
        ab_client_poll(c, 25);
    s_wait(c, &r, 1, 15000);
    /* The library's own timer (the deadline + 250 ms) may beat the broker's
     * DEADLINE error to the application on a loaded machine; it sends no
     * CANCEL, so either way the abort below is the broker's deadline at
     * work, which its counter confirms. */
    CHECK_TRUE(r.status == AB_EDEADLINE || r.status == AB_ETIMEOUT);
    CHECK_EQ(r.partials, 2);
    unsigned long long expired = 0;
    for (int i = 0; i < 100 && expired < 1; i++) {
        Agentbus__Stats *bs = th_stats(c);
        expired = bs ? bs->deadline_expired : 0;
        if (bs)
            agentbus__stats__free_unpacked(bs, NULL);
        if (expired < 1)
            ab_client_poll(c, 50);
    }
    CHECK_U64(expired, 1);
    long long aborted = 0, active = -1;
    for (int i = 0; i < 200 && (aborted < 1 || active != 0); i++) {
        aborted = s_sim_stat(sim, "aborted");
        active = s_sim_stat(sim, "active");
        ab_client_poll(c, 50);
    }
    CHECK_EQ(aborted, 1);
    CHECK_EQ(active, 0); /* the GPU slot is free again */

    /* the client gives up by itself (ab_client_cancel): same path */
    g.timeout_ms = 20000;
    uint64_t id = s_start_gen(c, &g, &r);
    for (int i = 0; i < 200 && r.partials < 2; i++)
        ab_client_poll(c, 25);
    CHECK_EQ(r.partials, 2);
    CHECK_EQ(ab_client_cancel(c, id), AB_OK);
    CHECK_EQ(r.status, AB_ECANCELLED);
    /* The client is polled while waiting: a poll is what sends what the
     * library gathered (the CANCEL may be held for a batch when the turn
     * already sent something) and keeps the connection alive. */
    for (int i = 0; i < 200 && (aborted < 2 || active != 0); i++) {
        aborted = s_sim_stat(sim, "aborted");
        active = s_sim_stat(sim, "active");
        ab_client_poll(c, 50);
    }
    CHECK_EQ(aborted, 2);
    CHECK_EQ(active, 0);
    /* a client that goes away with a request in flight: same again */
    ab_client_t *c2 = th_client(port);
    s_res_t r2;
    s_start_gen(c2, &g, &r2);
    for (int i = 0; i < 200 && r2.partials < 2; i++)
        ab_client_poll(c2, 25);
    CHECK_EQ(r2.partials, 2);
    ab_client_destroy(&c2);
    CHECK_EQ(r2.status, AB_ESTOPPED);
    for (int i = 0; i < 200 && (aborted < 3 || active != 0); i++) {
        aborted = s_sim_stat(sim, "aborted");
        active = s_sim_stat(sim, "active");
        ab_client_poll(c, 50);
    }
    CHECK_EQ(aborted, 3);
    CHECK_EQ(active, 0);
    /* a client process killed (no CANCEL, no BYE): once the broker drops it
     * for silence, its request is cancelled at the backend too */
    const char *gen[] = {"--broker", th_ep(port), "generate", "sim-small", "hang", "--seed", "1",
                         NULL};
    pid_t ctl = th_spawn("brokerctl", gen, NULL);
    for (int i = 0; i < 300 && s_sim_stat(sim, "active") != 1; i++)
        ab_client_poll(c, 50);
    CHECK_EQ(s_sim_stat(sim, "active"), 1);
    th_kill9(ctl);
    for (int i = 0; i < 300 && (aborted < 4 || active != 0); i++) {
        aborted = s_sim_stat(sim, "aborted");
        active = s_sim_stat(sim, "active");
        ab_client_poll(c, 50);
    }
    CHECK_EQ(aborted, 4);
    CHECK_EQ(active, 0);
    /* and the worker's credit came back: a healthy request still works */
    s_faults(sim, "{\"reset\":true}");
    g.timeout_ms = 20000;
    CHECK_EQ(s_generate(c, &g, &r), AB_OK);
    Agentbus__WorkerList *wl;
    uint32_t cap = 0;
    const Agentbus__InferenceState *st = s_state(c, "w1", &wl, &cap);
    for (int i = 0; i < 100 && !(st && st->cancelled >= 4); i++) {
        agentbus__worker_list__free_unpacked(wl, NULL);
        ab_client_poll(c, 100);
        st = s_state(c, "w1", &wl, &cap);
    }
    CHECK_TRUE(st && st->cancelled >= 4);
    CHECK_TRUE(st && st->slot_shrinks >= 1); /* the deadline one counts as a timeout */
    CHECK_TRUE(wl && wl->n_workers == 1 && wl->workers[0]->in_flight == 0);
    agentbus__worker_list__free_unpacked(wl, NULL);
    ab_client_destroy(&c);
}

static uint32_t s_capacity(ab_client_t *c, const char *name)
{
    Agentbus__WorkerList *wl;
    uint32_t cap = 0;
    s_state(c, name, &wl, &cap);
    if (wl)
        agentbus__worker_list__free_unpacked(wl, NULL);
    return cap;
}

static void s_adaptive(void)
{
    int sim = s_sim("--num-parallel", "8", NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    s_oworker(port, sim, "w1", "--capacity", "8", "--preload", "sim-small", "--ollama-retries",
              "0", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    REQUIRE(s_wait_loaded(c, "w1", "sim-small:latest", 1, 15000) == 0);
    CHECK_EQ(s_capacity(c, "w1"), 8);
    s_faults(sim, "{\"error_rate\":1,\"error_status\":503}");
    /* waves of requests while the backend pushes back: the slots halve */
    uint32_t cap = 8;
    for (int wave = 0; wave < 40 && cap > 1; wave++) {
        s_res_t r[8];
        for (int i = 0; i < 8; i++) {
            s_gen_t g = {"sim-small", "x", NULL, 1, 1, 5000};
            s_start_gen(c, &g, &r[i]);
        }
        s_wait(c, r, 8, 10000);
        for (int i = 0; i < 8; i++)
            CHECK_EQ(r[i].status, AB_EBACKENDBUSY); /* no other worker to go to */
        th_sleep_ms(300);
        cap = s_capacity(c, "w1");
    }
    CHECK_EQ(cap, 1);
    /* healthy again: it grows back, slowly, to the maximum */
    s_faults(sim, "{\"reset\":true}");
    int n = 0;
    for (; n < 200 && cap < 8; n++) {
        s_res_t r;
        s_gen_t g = {"sim-small", "y", NULL, 1, 1, 10000};
        CHECK_EQ(s_generate(c, &g, &r), AB_OK);
        cap = s_capacity(c, "w1");
    }
    CHECK_EQ(cap, 8);
    CHECK_TRUE(n >= 7); /* additive increase: not back in one step */
    ab_client_destroy(&c);
}

/* Model A loaded on worker 1, B on worker 2: requests follow the models. */
static void s_placement_loaded(void)
{
    int s1 = s_sim(NULL), s2 = s_sim(NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    s_oworker(port, s1, "w1", "--preload", "sim-small", "--gpu-vram-mb", "8192", NULL);
    s_oworker(port, s2, "w2", "--preload", "sim-large", "--gpu-vram-mb", "8192", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 2, 15000) == 0);
    REQUIRE(s_wait_loaded(c, "w1", "sim-small:latest", 1, 15000) == 0);
    REQUIRE(s_wait_loaded(c, "w2", "sim-large:latest", 1, 15000) == 0);
    for (int i = 0; i < 6; i++) {
        s_res_t r;
        s_gen_t g = {i % 2 ? "sim-large" : "sim-small", "where do I run", NULL, 1, i, 0};
        CHECK_EQ(s_generate(c, &g, &r), AB_OK);
        CHECK_STR(r.worker, i % 2 ? "w2" : "w1");
    }
    /* the simulators agree: each saw only its own model */
    json_t *j = NULL;
    REQUIRE(s_http(s1, "/sim/stats", NULL, &j) == 200);
    json_t *m;
    size_t k;
    json_array_foreach(json_object_get(j, "models"), k, m)
    {
        const char *name = json_string_value(json_object_get(m, "name"));
        long long gen = json_integer_value(json_object_get(m, "generate"));
        if (strcmp(name, "sim-small:latest") == 0)
            CHECK_EQ(gen, 1 + 3); /* the preload is a generate request too */
        else
            CHECK_EQ(gen, 0);
    }
    json_decref(j);
    ab_client_destroy(&c);
}

/* A model loaded nowhere goes to the GPU whose free VRAM holds it. */
static void s_placement_vram(void)
{
    const char *models[] = {"--model", "m-small,size=1G", "--model", "m-mid,size=3G", "--model",
                            "m-big,size=5G", "--gpu", "6G"};
    int s1 = s_sim(models[0], models[1], models[2], models[3], models[4], models[5], models[6],
                   models[7], NULL);
    int s2 = s_sim(models[0], models[1], models[2], models[3], models[4], models[5], models[6],
                   models[7], NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    /* w1: 5 of 6 GiB used; w2: 1 of 6 GiB used */
    s_oworker(port, s1, "w1", "--preload", "m-big", "--gpu-vram-mb", "6144", NULL);
    s_oworker(port, s2, "w2", "--preload", "m-small", "--gpu-vram-mb", "6144", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 2, 15000) == 0);
    REQUIRE(s_wait_loaded(c, "w1", "m-big:latest", 1, 15000) == 0);
    REQUIRE(s_wait_loaded(c, "w2", "m-small:latest", 1, 15000) == 0);
    s_res_t r;
    s_gen_t g = {"m-mid", "fits where", NULL, 1, 1, 0};
    CHECK_EQ(s_generate(c, &g, &r), AB_OK);
    CHECK_STR(r.worker, "w2");
    CHECK_EQ(s_sim_stat(s1, "evictions"), 0); /* nothing was pushed out on w1 */
    ab_client_destroy(&c);
}

/* brokerctl models: preload, load, eviction when VRAM is full, unload. */
static int s_ctl_loaded(int port, const char *worker, const char *model)
{
    char cmd[512], out[16384];
    snprintf(cmd, sizeof cmd, "%s --broker %s models --json", th_bin("brokerctl"), th_ep(port));
    if (th_run(cmd, out, sizeof out) != 0)
        return -1;
    json_t *j = json_loads(out, 0, NULL), *w, *m;
    size_t i, k;
    int found = 0;
    json_array_foreach(json_object_get(j, "workers"), i, w)
    {
        if (strcmp(json_string_value(json_object_get(w, "worker")), worker) != 0)
            continue;
        json_array_foreach(json_object_get(w, "loaded"), k, m)
            found |= strcmp(json_string_value(json_object_get(m, "name")), model) == 0;
    }
    json_decref(j);
    return found;
}

static int s_ctl_wait(int port, const char *worker, const char *model, int want)
{
    for (int i = 0; i < 100; i++) {
        if (s_ctl_loaded(port, worker, model) == want)
            return 0;
        th_sleep_ms(100);
    }
    return -1;
}

static void s_models_cli(void)
{
    int sim = s_sim("--model", "m-small,size=1G", "--model", "m-mid,size=2G", "--model",
                    "m-big,size=4G", "--gpu", "6G", NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    s_oworker(port, sim, "w1", "--preload", "m-small,m-big", "--gpu-vram-mb", "6144", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    /* preloaded, one after the other */
    CHECK_EQ(s_ctl_wait(port, "w1", "m-small:latest", 1), 0);
    CHECK_EQ(s_ctl_wait(port, "w1", "m-big:latest", 1), 0);
    char cmd[512], out[4096];
    /* 2 GiB more does not fit in 6: the least recently used idle model goes */
    snprintf(cmd, sizeof cmd, "%s --broker %s models load w1 m-mid", th_bin("brokerctl"),
             th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "loaded m-mid on w1") != NULL);
    CHECK_EQ(s_ctl_wait(port, "w1", "m-mid:latest", 1), 0);
    CHECK_EQ(s_ctl_wait(port, "w1", "m-small:latest", 0), 0);
    CHECK_EQ(s_ctl_loaded(port, "w1", "m-big:latest"), 1);
    CHECK_EQ(s_sim_stat(sim, "evictions"), 1);
    snprintf(cmd, sizeof cmd, "%s --broker %s models unload w1 m-big", th_bin("brokerctl"),
             th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_EQ(s_ctl_wait(port, "w1", "m-big:latest", 0), 0);
    CHECK_EQ(s_ctl_loaded(port, "w1", "m-mid:latest"), 1);
    /* the text view shows the same */
    snprintf(cmd, sizeof cmd, "%s --broker %s models", th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "loaded: m-mid:latest") != NULL);
    /* an unknown worker is a clear error */
    snprintf(cmd, sizeof cmd, "%s --broker %s models load nobody m-mid", th_bin("brokerctl"),
             th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 1);
    CHECK_TRUE(strstr(out, "NOT_FOUND: no worker 'nobody'") != NULL);
    ab_client_destroy(&c);
}

/* Ollama not running yet: a clear error (not "model not found"); once it
 * comes up the worker sees it at its next probe and serves. */
static void s_backend_down(void)
{
    int sim_port = th_free_port();
    int port = th_free_port();
    th_broker(port, NULL);
    s_oworker(port, sim_port, "w1", "--refresh-ms", "500", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    const Agentbus__InferenceState *st = NULL;
    Agentbus__WorkerList *wl = NULL;
    for (int i = 0; i < 100 && !st; i++) {
        if (wl)
            agentbus__worker_list__free_unpacked(wl, NULL);
        th_sleep_ms(50);
        st = s_state(c, "w1", &wl, NULL);
    }
    REQUIRE(st);
    CHECK_EQ(st->backend_up, 0);
    agentbus__worker_list__free_unpacked(wl, NULL);
    s_res_t r;
    s_gen_t g = {"sim-small", "anyone there", NULL, 1, 1, 0};
    CHECK_EQ(s_generate(c, &g, &r), AB_EBACKEND);
    CHECK_TRUE(strstr(r.error, "unreachable") != NULL);
    /* the simulator starts on the port the worker points at */
    char p[16];
    snprintf(p, sizeof p, "%d", sim_port);
    const char *argv[] = {"--port", p, "--time-scale", S_SCALE, "--quiet", NULL};
    th_spawn("ollama-sim", argv, NULL);
    CHECK_EQ(s_wait_loaded(c, "w1", "none", 0, 15000), 0); /* models reported */
    CHECK_EQ(s_generate(c, &g, &r), AB_OK);
    CHECK_TRUE(r.eval_count > 0);
    ab_client_destroy(&c);
}

/* Waits MS; polls the watching client meanwhile, if any (so it keeps its
 * connection and takes its directory changes). */
static ab_client_t *s_watching;
static void s_pause(int ms)
{
    if (s_watching)
        ab_client_poll(s_watching, ms);
    else
        th_sleep_ms(ms);
}

/* 1 once PID's log has a line with NEEDLE, within TIMEOUT_MS. */
static int s_log_wait(pid_t pid, const char *needle, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 50) {
        FILE *f = fopen(th_log_of(pid), "r");
        char line[1024];
        int found = 0;
        while (f && !found && fgets(line, sizeof line, f))
            found = strstr(line, needle) != NULL;
        if (f)
            fclose(f);
        if (found)
            return 1;
        s_pause(50);
    }
    return 0;
}

/* 1 once the BACKEND column of `brokerctl workers` says WORD for w1. */
static int s_ctl_backend_wait(int port, const char *word, int timeout_ms)
{
    char cmd[512], out[4096], want[32];
    snprintf(cmd, sizeof cmd, "%s workers --broker %s", th_bin("brokerctl"), th_ep(port));
    snprintf(want, sizeof want, " healthy   %-8s", word);
    for (int waited = 0; waited <= timeout_ms; waited += 100) {
        if (th_run(cmd, out, sizeof out) == 0 && strstr(out, " w1 ") && strstr(out, want))
            return 1;
        s_pause(100);
    }
    return 0;
}

static int s_backend_events;
static void s_on_backend_event(ab_client_t *c, const ab_dir_event_t *ev, void *arg)
{
    (void)c;
    (void)arg;
    if (strcmp(ev->change, "backend") == 0 && strncmp(ev->worker->backend_state, "down", 4) == 0)
        s_backend_events |= 1;
    if (strcmp(ev->change, "backend") == 0 && strcmp(ev->worker->backend_state, "ok") == 0)
        s_backend_events |= 2;
}

/* Ollama killed under a serving worker: the worker logs it, the broker
 * logs it, `brokerctl workers` and watchers see the backend down; Ollama
 * back on the same port: logged and shown up again. */
static void s_backend_down_up(void)
{
    int sim_port = th_free_port(), port = th_free_port();
    char p[16];
    snprintf(p, sizeof p, "%d", sim_port);
    const char *sim_argv[] = {"--port", p, "--time-scale", S_SCALE, "--quiet", NULL};
    pid_t sim = th_spawn("ollama-sim", sim_argv, NULL);
    pid_t broker = th_broker(port, NULL);
    pid_t w = s_oworker(port, sim_port, "w1", "--refresh-ms", "300", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    CHECK_TRUE(s_log_wait(w, "is up (version", 15000));
    CHECK_TRUE(s_ctl_backend_wait(port, "ok", 15000));
    REQUIRE(ab_client_watch(c, s_on_backend_event, NULL, 5000) == AB_OK);
    s_watching = c;

    th_kill9(sim);
    CHECK_TRUE(s_log_wait(w, "is unreachable: backend down", 15000));
    CHECK_TRUE(s_log_wait(broker, "of 'ollama': backend down", 15000));
    CHECK_TRUE(s_ctl_backend_wait(port, "down", 15000));

    pid_t sim2 = th_spawn("ollama-sim", sim_argv, NULL);
    CHECK_TRUE(sim2 > 0);
    CHECK_TRUE(s_log_wait(w, "is reachable again: backend up", 15000));
    CHECK_TRUE(s_log_wait(broker, "of 'ollama': backend ok", 15000));
    CHECK_TRUE(s_ctl_backend_wait(port, "ok", 15000));
    for (int i = 0; i < 100 && s_backend_events != 3; i++)
        ab_client_poll(c, 50);
    CHECK_EQ(s_backend_events, 3); /* watchers got both changes */
    s_watching = NULL;
    ab_client_destroy(&c);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"round_trip", s_round_trip}, {"model_not_found", s_model_not_found},
        {"busy_redispatch", s_busy_redispatch}, {"midstream_error", s_midstream_error},
        {"dropped", s_dropped}, {"hang_cancel", s_hang_cancel}, {"adaptive", s_adaptive},
        {"placement_loaded", s_placement_loaded}, {"placement_vram", s_placement_vram},
        {"models_cli", s_models_cli}, {"backend_down", s_backend_down},
        {"backend_down_up", s_backend_down_up},
    };
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
    curl_global_cleanup();
    return rc;
}
