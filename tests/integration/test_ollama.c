/*
 * test_ollama.c - Ollama workers against real ollama-sim processes, through
 * a real broker: round trips, errors and faults, CANCEL, adaptive
 * concurrency, placement, model management. One case per ctest entry:
 * test_ollama CASE.
 *
 * The simulator runs with a time scale so loads and tokens take
 * milliseconds; nothing here asserts on speed. What the simulator saw is
 * read from its own /sim/stats.
 *
 * This file has round trips, errors, faults and CANCEL; capacity and
 * placement are in test_ollama_placement.c, an absent Ollama in
 * test_ollama_backend.c, the shared helpers in ollamatest.c.
 */
#include "harness.h"
#include "test.h"
#include "ollamatest.h"

#include <curl/curl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <ctype.h>
#include <string.h>


/* --- cases -------------------------------------------------------------------------- */
/* A simulator, a broker and worker "w1" with sim-small loaded; a client of
 * that broker. *SIM and *PORT get the simulator's and the broker's ports. */
static ab_client_t *s_small_stack(int *sim, int *port)
{
    *sim = ot_sim(NULL);
    *port = th_free_port();
    th_broker(*port, NULL);
    ot_oworker(*port, *sim, "w1", "--preload", "sim-small", NULL);
    ab_client_t *c = th_client(*port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    REQUIRE(ot_wait_loaded(c, "w1", "sim-small:latest", 1, 15000) == 0);
    return c;
}


/* The most significant digits of any number in the JSON text T, from its
 * "embeddings" to the "total_duration" brokerctl prints next (durations
 * are integers of more digits). */
static int s_most_digits(const char *t)
{
    int most = 0;
    const char *p = strstr(t, "\"embeddings\""), *end = p ? strstr(p, "\"total_duration\"") : NULL;
    if (!end)
        return 99;
    while (p < end) {
        if (!(*p >= '0' && *p <= '9') ||
            (p > t && (p[-1] == '"' || isalpha((unsigned char)p[-1])))) {
            p++;
            continue;
        }
        int d = 0, lead = 1;
        for (; (*p >= '0' && *p <= '9') || *p == '.'; p++) {
            if (*p == '.' || (lead && *p == '0'))
                continue;
            lead = 0;
            d++;
        }
        most = d > most ? d : most;
    }
    return most;
}

static void s_round_trip(void)
{
    int sim, port;
    ab_client_t *c = s_small_stack(&sim, &port);

    char direct[8192];
    ot_direct(sim, "/api/generate",
             "{\"model\":\"sim-small\",\"prompt\":\"tell me a story\",\"stream\":false,"
             "\"options\":{\"seed\":7}}",
             direct, sizeof direct);
    REQUIRE(direct[0] != '\0');

    ot_res_t r;
    ot_gen_t g = {"sim-small", "tell me a story", NULL, 1, 7, 0};
    CHECK_EQ(ot_generate(c, &g, &r), AB_OK);
    CHECK_STR(r.text, direct);          /* chunks in order, nothing lost */
    CHECK_TRUE(r.partials >= 2);        /* it was streamed */
    CHECK_U64(r.eval_count, (uint64_t)r.partials); /* one PARTIAL per token */
    CHECK_TRUE(r.total_duration > 0);
    CHECK_TRUE(r.prompt_eval_count > 0);
    CHECK_STR(r.done_reason, "stop");
    CHECK_STR(r.worker, "w1");
    CHECK_TRUE(r.order_ok);

    g.stream = 0;
    CHECK_EQ(ot_generate(c, &g, &r), AB_OK);
    CHECK_STR(r.text, direct);
    CHECK_EQ(r.partials, 0);
    CHECK_TRUE(r.eval_count > 0 && r.total_duration > 0);

    /* chat, streamed and not */
    char dchat[8192];
    ot_direct(sim, "/api/chat",
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
                                    ot_on_event, &r, NULL) == AB_OK);
        ot_wait(c, &r, 1, 20000);
        CHECK_EQ(r.status, AB_OK);
        CHECK_STR(r.text, dchat);
        CHECK_TRUE(stream ? r.partials >= 2 : r.partials == 0);
        CHECK_TRUE(r.eval_count > 0 && r.total_duration > 0);
        CHECK_TRUE(r.order_ok);
    }

    /* embed: the vector the simulator computes for the same input */
    json_t *ej = NULL;
    REQUIRE(ot_http(sim, "/api/embed", "{\"model\":\"sim-embed\",\"input\":\"hello world\"}",
                    &ej) == 200);
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
                                    ot_on_event, &r, NULL) == AB_OK);
    ot_wait(c, &r, 1, 20000);
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
    /* and Ollama's context, the ids to send back with a next prompt (it
     * was left out: the reply carried it, brokerctl did not print it) */
    CHECK_EQ((long long)json_array_size(json_object_get(lj, "context")),
             json_integer_value(json_object_get(lj, "prompt_eval_count")) +
                 json_integer_value(json_object_get(lj, "eval_count")));
    json_decref(lj);
    snprintf(cmd, sizeof cmd, "%s --broker %s embed sim-embed 'hello world' --json",
             th_bin("brokerctl"), th_ep(port));
    static char big[1 << 16]; /* 768 numbers as text */
    CHECK_EQ(th_run(cmd, big, sizeof big), 0);
    lj = json_loads(big, JSON_DISABLE_EOF_CHECK, NULL);
    json_t *vec = json_array_get(json_object_get(lj, "embeddings"), 0);
    CHECK_EQ(json_array_size(vec), dims);
    CHECK_TRUE((float)json_number_value(json_array_get(vec, 0)) == (float)first);
    /* Ollama's embeddings are floats: 9 digits keep each exactly, and
     * brokerctl printed 17 with --json (about twice the bytes) */
    CHECK_TRUE(s_most_digits(big) <= 9);
    /* and without --json one line per text, each value the same float (it
     * printed 7 digits, which loses some) */
    snprintf(cmd, sizeof cmd, "%s --broker %s embed sim-embed 'hello world'", th_bin("brokerctl"),
             th_ep(port));
    static char plain[1 << 16];
    CHECK_EQ(th_run(cmd, plain, sizeof plain), 0);
    json_t *pv = json_loads(plain, JSON_DISABLE_EOF_CHECK | JSON_DECODE_ANY, NULL);
    size_t same = 0;
    for (size_t k = 0; k < json_array_size(vec) && k < json_array_size(pv); k++)
        same += (float)json_number_value(json_array_get(pv, k)) ==
                (float)json_number_value(json_array_get(vec, k));
    CHECK_EQ((long long)same, (long long)dims);
    json_decref(pv);
    json_decref(lj);
    ab_client_destroy(&c);
}

static void s_model_not_found(void)
{
    int sim = ot_sim(NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    ot_oworker(port, sim, "w1", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    REQUIRE(ot_wait_loaded(c, "w1", "none", 0, 15000) == 0); /* models reported */
    ot_res_t r;
    ot_gen_t g = {"no-such-model", "hi", NULL, 1, -1, 0};
    CHECK_EQ(ot_generate(c, &g, &r), AB_EMODEL);
    CHECK_TRUE(strstr(r.error, "no-such-model") != NULL);
    CHECK_EQ(r.partials, 0);
    /* "sim-small" without a tag is "sim-small:latest", as in Ollama */
    ot_gen_t ok = {"sim-small", "hi", NULL, 1, 1, 0};
    CHECK_EQ(ot_generate(c, &ok, &r), AB_OK);
    /* a malformed payload is a clear BAD_REQUEST from the worker */
    memset(&r, 0, sizeof r);
    r.kind = 1;
    REQUIRE(ab_client_request_start(c, "ollama", "\xff\x01", 2,
                                    &(ab_request_opts_t){.timeout_ms = 10000, .model = "sim-small"},
                                    ot_on_event, &r, NULL) == AB_OK);
    ot_wait(c, &r, 1, 10000);
    CHECK_EQ(r.status, AB_EBADREQUEST);
    /* the backend's own 404 and 400 (a model deleted after it was listed,
     * a request Ollama refuses) map to the same codes, with Ollama's text */
    ot_faults(sim, "{\"error_rate\":1,\"error_status\":404,\"count\":1,\"error_message\":"
                  "\"model \\\"sim-small\\\" not found, try pulling it first\"}");
    CHECK_EQ(ot_generate(c, &ok, &r), AB_EMODEL);
    CHECK_TRUE(strstr(r.error, "try pulling it first") != NULL);
    ot_faults(sim, "{\"error_rate\":1,\"error_status\":400,\"count\":1,\"error_message\":"
                  "\"invalid options\"}");
    CHECK_EQ(ot_generate(c, &ok, &r), AB_EBADREQUEST);
    CHECK_STR(r.error, "invalid options");
    CHECK_EQ(ot_generate(c, &ok, &r), AB_OK);
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
    int bad = ot_sim("--fault-error-rate", "1", "--fault-error-status", "503", NULL);
    int good = ot_sim(NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    ot_oworker(port, bad, "wbad", "--preload", "sim-small", "--ollama-retries", "1", NULL);
    ot_oworker(port, good, "wgood", "--preload", "sim-small", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 2, 15000) == 0);
    REQUIRE(ot_wait_loaded(c, "wbad", "sim-small:latest", 1, 15000) == 0);
    REQUIRE(ot_wait_loaded(c, "wgood", "sim-small:latest", 1, 15000) == 0);
    ot_res_t r[6];
    for (int i = 0; i < 6; i++) {
        ot_gen_t g = {"sim-small", "busy test", NULL, 1, i, 0};
        ot_start_gen(c, &g, &r[i]);
    }
    ot_wait(c, r, 6, 30000);
    for (int i = 0; i < 6; i++) {
        CHECK_EQ(r[i].status, AB_OK);
        CHECK_STR(r[i].worker, "wgood");
        CHECK_TRUE(r[i].eval_count > 0);
    }
    /* the bad one really was tried, and more than once per request (retry) */
    long long s503 = ot_sim_stat(bad, "status.503");
    CHECK_TRUE(s503 >= 2);
    ab_client_destroy(&c);
}

static void s_midstream_error(void)
{
    int sim = ot_sim("--fault-midstream-rate", "1", "--fault-midstream-after", "3", NULL);
    int port;
    ab_client_t *c;
    port = th_free_port();
    th_broker(port, NULL);
    ot_oworker(port, sim, "w1", "--preload", "sim-small", NULL);
    c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    ot_res_t r;
    ot_gen_t g = {"sim-small", "fail half way", NULL, 1, 1, 0};
    CHECK_EQ(ot_generate(c, &g, &r), AB_EBACKEND);
    CHECK_EQ(r.partials, 3);  /* what was generated arrived first */
    CHECK_TRUE(r.order_ok);   /* and the error was the last word */
    CHECK_TRUE(strstr(r.error, "simulated error mid-stream") != NULL);
    /* not streamed: the worker asks Ollama to stream all the same (it
     * puts the lines together): the error line ends it, no PARTIAL, still
     * an error, never success */
    g.stream = 0;
    CHECK_EQ(ot_generate(c, &g, &r), AB_EBACKEND);
    CHECK_EQ(r.partials, 0);
    ab_client_destroy(&c);
}

static void s_dropped(void)
{
    /* dropped before any byte, once: the worker retries and succeeds */
    int sim = ot_sim("--fault-drop-rate", "1", "--fault-drop-after", "0", "--fault-count", "1",
                    NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    ot_oworker(port, sim, "w1", "--preload", "sim-small", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    REQUIRE(ot_wait_loaded(c, "w1", "sim-small:latest", 1, 15000) == 0);
    ot_res_t r;
    ot_gen_t g = {"sim-small", "drop me", NULL, 1, 1, 0};
    CHECK_EQ(ot_generate(c, &g, &r), AB_OK);
    CHECK_TRUE(r.eval_count > 0);
    CHECK_EQ(ot_sim_stat(sim, "faults.drop"), 1);
    /* dropped mid-stream: partials, then an error (no fake success) */
    ot_faults(sim, "{\"drop_rate\":1,\"drop_after\":2,\"count\":1}");
    CHECK_EQ(ot_generate(c, &g, &r), AB_EBACKEND);
    CHECK_EQ(r.partials, 2);
    CHECK_TRUE(r.order_ok);
    CHECK_EQ(ot_sim_stat(sim, "faults.drop"), 2);
    /* the worker goes on serving */
    CHECK_EQ(ot_generate(c, &g, &r), AB_OK);
    ab_client_destroy(&c);
}

/* A backend that hangs: the broker's deadline answers the client and sends
 * CANCEL; the worker aborts the transfer; the simulator frees the slot. */
static void s_hang_cancel(void)
{
    int sim = ot_sim("--fault-hang-rate", "1", "--fault-hang-after", "2", NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    ot_oworker(port, sim, "w1", "--preload", "sim-small", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    REQUIRE(ot_wait_loaded(c, "w1", "sim-small:latest", 1, 15000) == 0);
    ot_res_t r;
    /* The deadline is long enough for both tokens to arrive on a loaded
     * machine: the check is on the state (two partials, then DEADLINE),
     * not on how fast the first ones come. */
    ot_gen_t g = {"sim-small", "hang", NULL, 1, 1, 5000};
    ot_start_gen(c, &g, &r);
    for (int i = 0; i < 200 && r.partials < 2 && !r.finals; i++)
        ab_client_poll(c, 25);
    ot_wait(c, &r, 1, 15000);
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
        aborted = ot_sim_stat(sim, "aborted");
        active = ot_sim_stat(sim, "active");
        ab_client_poll(c, 50);
    }
    CHECK_EQ(aborted, 1);
    CHECK_EQ(active, 0); /* the GPU slot is free again */

    /* the client gives up by itself (ab_client_cancel): same path */
    g.timeout_ms = 20000;
    uint64_t id = ot_start_gen(c, &g, &r);
    for (int i = 0; i < 200 && r.partials < 2; i++)
        ab_client_poll(c, 25);
    CHECK_EQ(r.partials, 2);
    CHECK_EQ(ab_client_cancel(c, id), AB_OK);
    CHECK_EQ(r.status, AB_ECANCELLED);
    /* The client is polled while waiting: a poll is what sends what the
     * library gathered (the CANCEL may be held for a batch when the turn
     * already sent something) and keeps the connection alive. */
    for (int i = 0; i < 200 && (aborted < 2 || active != 0); i++) {
        aborted = ot_sim_stat(sim, "aborted");
        active = ot_sim_stat(sim, "active");
        ab_client_poll(c, 50);
    }
    CHECK_EQ(aborted, 2);
    CHECK_EQ(active, 0);
    /* a client that goes away with a request in flight: same again */
    ab_client_t *c2 = th_client(port);
    ot_res_t r2;
    ot_start_gen(c2, &g, &r2);
    for (int i = 0; i < 200 && r2.partials < 2; i++)
        ab_client_poll(c2, 25);
    CHECK_EQ(r2.partials, 2);
    ab_client_destroy(&c2);
    CHECK_EQ(r2.status, AB_ESTOPPED);
    for (int i = 0; i < 200 && (aborted < 3 || active != 0); i++) {
        aborted = ot_sim_stat(sim, "aborted");
        active = ot_sim_stat(sim, "active");
        ab_client_poll(c, 50);
    }
    CHECK_EQ(aborted, 3);
    CHECK_EQ(active, 0);
    /* a client process killed (no CANCEL, no BYE): once the broker drops it
     * for silence, its request is cancelled at the backend too */
    const char *gen[] = {"--broker", th_ep(port), "generate", "sim-small", "hang", "--seed", "1",
                         NULL};
    pid_t ctl = th_spawn("brokerctl", gen, NULL);
    for (int i = 0; i < 300 && ot_sim_stat(sim, "active") != 1; i++)
        ab_client_poll(c, 50);
    CHECK_EQ(ot_sim_stat(sim, "active"), 1);
    th_kill9(ctl);
    for (int i = 0; i < 300 && (aborted < 4 || active != 0); i++) {
        aborted = ot_sim_stat(sim, "aborted");
        active = ot_sim_stat(sim, "active");
        ab_client_poll(c, 50);
    }
    CHECK_EQ(aborted, 4);
    CHECK_EQ(active, 0);
    /* and the worker's credit came back: a healthy request still works */
    ot_faults(sim, "{\"reset\":true}");
    g.timeout_ms = 20000;
    CHECK_EQ(ot_generate(c, &g, &r), AB_OK);
    Agentbus__WorkerList *wl;
    uint32_t cap = 0;
    const Agentbus__InferenceState *st = ot_state(c, "w1", &wl, &cap);
    for (int i = 0; i < 100 && !(st && st->cancelled >= 4); i++) {
        agentbus__worker_list__free_unpacked(wl, NULL);
        ab_client_poll(c, 100);
        st = ot_state(c, "w1", &wl, &cap);
    }
    CHECK_TRUE(st && st->cancelled >= 4);
    /* the deadline one is not pushback (issue 20): Ollama refused nothing */
    CHECK_TRUE(st && st->slot_shrinks == 0);
    CHECK_EQ(cap, 4);
    CHECK_TRUE(wl && wl->n_workers == 1 && wl->workers[0]->in_flight == 0);
    agentbus__worker_list__free_unpacked(wl, NULL);
    ab_client_destroy(&c);
}

static int s_gen_format(ab_client_t *c, const ot_gen_t *g, const char *format, ot_res_t *r)
{
    ot_start_gen_format(c, g, format, r);
    ot_wait(c, r, 1, 30000);
    REQUIRE(r->finals == 1);
    return r->status;
}

/* format: a JSON schema travels on the bus as its text (what the gateway
 * sends for an Ollama client's schema object) and must reach Ollama as an
 * object, which answers JSON; Ollama refuses a schema given as a string. */
static void s_format(void)
{
    int sim, port;
    ab_client_t *c = s_small_stack(&sim, &port);
    static const char *ok[] = {
        "{\"properties\":{\"text\":{\"type\":\"string\"}},\"type\":\"object\"}",
        "  {\"type\": \"object\"}", "json"};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        ot_res_t r;
        ot_gen_t g = {"sim-small", "describe a river", NULL, (int)(i % 2), 5, 0};
        CHECK_EQ(s_gen_format(c, &g, ok[i], &r), AB_OK);
        json_t *j = json_loads(r.text, 0, NULL);
        CHECK_TRUE(j && json_is_object(j)); /* the simulator, like Ollama, answered JSON */
        json_decref(j);
    }
    /* What Ollama refuses is refused, with its own words, not a crash. */
    static const char *bad[] = {"yaml", "{\"type\": "};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ot_res_t r;
        ot_gen_t g = {"sim-small", "describe a river", NULL, 0, 5, 0};
        CHECK_TRUE(s_gen_format(c, &g, bad[i], &r) != AB_OK);
        CHECK_TRUE(strstr(r.error, "format") != NULL);
    }
    /* and the worker still serves */
    ot_res_t r;
    ot_gen_t g = {"sim-small", "describe a river", NULL, 0, 5, 0};
    CHECK_EQ(ot_generate(c, &g, &r), AB_OK);
    ab_client_destroy(&c);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"round_trip", s_round_trip}, {"model_not_found", s_model_not_found},
        {"busy_redispatch", s_busy_redispatch}, {"midstream_error", s_midstream_error},
        {"dropped", s_dropped}, {"hang_cancel", s_hang_cancel}, {"format", s_format},
        /* test_ollama_placement.c */
        {"adaptive", ollama_adaptive}, {"timeout_credit", ollama_timeout_credit},
        {"model_credit", ollama_model_credit}, {"model_slots", ollama_model_slots},
        {"model_scan", ollama_model_scan},
        {"busy_no_eject", ollama_busy_no_eject}, {"placement_loaded", ollama_placement_loaded},
        {"worker_gone", ollama_worker_gone}, {"cache_digest", ollama_cache_digest},
        {"placement_vram", ollama_placement_vram}, {"models_cli", ollama_models_cli},
        /* test_ollama_backend.c */
        {"backend_down", ollama_backend_down}, {"backend_down_up", ollama_backend_down_up},
        {"connect_timeout", ollama_connect_timeout}, {"state_bounds", ollama_state_bounds},
        {"error_bytes", ollama_error_bytes},
        {"cut_answer", ollama_cut_answer}, {"probe_why", ollama_probe_why},
        {"big_line", ollama_big_line},
        {"line_buffer", ollama_line_buffer}, {"too_large_count", ollama_too_large_count},
    };
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
    curl_global_cleanup();
    return rc;
}
