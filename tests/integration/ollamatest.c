/* ollamatest.c - the Ollama worker cases' shared helpers (ollamatest.h). */
#include "harness.h"
#include "test.h"
#include "util.h"
#include "grow.h"
#include "ollamatest.h"

#include <curl/curl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- the simulator ---------------------------------------------------------- */
typedef struct {
    char *buf;
    size_t len, cap;
} s_body_t;

/* By doubling (base/grow.h): a large answer under ASan copied itself again
 * for each piece curl handed over. */
static size_t s_body_write(char *d, size_t sz, size_t n, void *arg)
{
    s_body_t *b = arg;
    if (ab_grow(&b->buf, &b->cap, b->len + sz * n + 1) != 0)
        return 0;
    memcpy(b->buf + b->len, d, sz * n);
    b->len += sz * n;
    b->buf[b->len] = '\0';
    return sz * n;
}

/* HTTP to the simulator: BODY NULL = GET. Returns the status (0 when the
 * connection failed); *out (may be NULL) gets the parsed JSON answer. */
long ot_http(int port, const char *path, const char *body, json_t **out)
{
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    CURL *e = curl_easy_init();
    s_body_t b = {NULL, 0, 0};
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

/* Spawns PROG with ARGV (N set, room for 40) and the NULL-terminated
 * flags from FIRST on, and waits until PORT answers /api/version. */
static int s_start_http(const char *prog, int port, const char **argv, int n,
                        const char *first, va_list ap)
{
    for (const char *a = first; a && n < 39; a = va_arg(ap, const char *))
        argv[n++] = a;
    argv[n] = NULL;
    th_spawn(prog, argv, NULL);
    for (int i = 0; i < 400; i++) {
        if (ot_http(port, "/api/version", NULL, NULL) == 200)
            return port;
        th_sleep_ms(25);
    }
    fprintf(stderr, "%s did not come up\n", prog);
    REQUIRE(!"an Ollama server came up");
    return -1;
}

/* Starts ollama-sim on a free port with extra flags (NULL-terminated) and
 * waits until it answers. */
int ot_sim(const char *first, ...)
{
    int port = th_free_port();
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    const char *argv[40] = {"--port", p, "--time-scale", OT_SCALE, "--quiet"};
    va_list ap;
    va_start(ap, first);
    s_start_http("ollama-sim", port, argv, 5, first, ap);
    va_end(ap);
    return port;
}

int ot_fake_ollama(const char *first, ...)
{
    int port = th_free_port();
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    const char *argv[40] = {p};
    va_list ap;
    va_start(ap, first);
    s_start_http("ab-fake-ollama", port, argv, 1, first, ap);
    va_end(ap);
    return port;
}

/* A number from /sim/stats: "a" or "a.b" (one level of nesting). */
long long ot_sim_stat(int port, const char *key)
{
    json_t *j = NULL;
    if (ot_http(port, "/sim/stats", NULL, &j) != 200 || !j) {
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

void ot_faults(int port, const char *json)
{
    REQUIRE(ot_http(port, "/sim/faults", json, NULL) == 200);
}

/* An Ollama worker for the simulator on SIM_PORT, extra flags after name. */
pid_t ot_oworker(int port, int sim_port, const char *name, ...)
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
const Agentbus__InferenceState *ot_state(ab_client_t *c, const char *name,
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
int ot_wait_loaded(ab_client_t *c, const char *name, const char *model, int want,
                         int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    while (ab_now_ms() < end) {
        Agentbus__WorkerList *wl;
        const Agentbus__InferenceState *st = ot_state(c, name, &wl, NULL);
        int ok = st && st->n_models > 0 && s_has_loaded(st, model) == want;
        if (wl)
            agentbus__worker_list__free_unpacked(wl, NULL);
        if (ok)
            return 0;
        th_sleep_ms(50);
    }
    return -1;
}


static void s_append(ot_res_t *r, const char *s)
{
    size_t n = strlen(s);
    if (r->len + n < sizeof r->text) {
        memcpy(r->text + r->len, s, n + 1);
        r->len += n;
    }
}

void ot_on_event(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    ot_res_t *r = arg;
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
        Agentbus__GenerateResponse *g =
            agentbus__generate_response__unpack(NULL, ev->size, ev->data);
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


uint64_t ot_start_gen(ab_client_t *c, const ot_gen_t *g, ot_res_t *r)
{
    return ot_start_gen_format(c, g, NULL, r);
}

uint64_t ot_start_gen_format(ab_client_t *c, const ot_gen_t *g, const char *format, ot_res_t *r)
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
    if (format)
        gr.format = (char *)format;
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
                ot_on_event, r, &id) == AB_OK);
    return id;
}

void ot_wait(ab_client_t *c, ot_res_t *r, int n, int timeout_ms)
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

int ot_generate(ab_client_t *c, const ot_gen_t *g, ot_res_t *r)
{
    ot_start_gen(c, g, r);
    ot_wait(c, r, 1, 30000);
    REQUIRE(r->finals == 1);
    return r->status;
}

/* The text the simulator itself answers (no broker, no worker). */
void ot_direct(int sim_port, const char *path, const char *body, char *out, size_t cap)
{
    json_t *j = NULL;
    REQUIRE(ot_http(sim_port, path, body, &j) == 200 && j);
    json_t *msg = json_object_get(j, "message");
    const char *t = json_string_value(json_object_get(msg ? msg : j, msg ? "content" : "response"));
    snprintf(out, cap, "%s", t ? t : "");
    json_decref(j);
}
