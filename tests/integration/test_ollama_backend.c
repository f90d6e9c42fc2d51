/*
 * test_ollama_backend.c - an Ollama that is not there (part of test_ollama,
 * ollamatest.h): down when the worker starts, down and up again while it
 * runs, as clients, brokerctl and directory watchers see it; a host that
 * never answers the connection; one that lists what the broker would not
 * take in a REGISTER (ab-fake-ollama, tests/integration/fake_ollama.py).
 */
#include "harness.h"
#include "test.h"
#include "util.h"
#include "ollamatest.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* Ollama not running yet: a clear error (not "model not found"); once it
 * comes up the worker sees it at its next probe and serves. */
void ollama_backend_down(void)
{
    int sim_port = th_free_port();
    int port = th_free_port();
    th_broker(port, NULL);
    ot_oworker(port, sim_port, "w1", "--refresh-ms", "500", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    const Agentbus__InferenceState *st = NULL;
    Agentbus__WorkerList *wl = NULL;
    for (int i = 0; i < 100 && !st; i++) {
        if (wl)
            agentbus__worker_list__free_unpacked(wl, NULL);
        th_sleep_ms(50);
        st = ot_state(c, "w1", &wl, NULL);
    }
    REQUIRE(st);
    CHECK_EQ(st->backend_up, 0);
    agentbus__worker_list__free_unpacked(wl, NULL);
    ot_res_t r;
    ot_gen_t g = {"sim-small", "anyone there", NULL, 1, 1, 0};
    CHECK_EQ(ot_generate(c, &g, &r), AB_EBACKEND);
    CHECK_TRUE(strstr(r.error, "unreachable") != NULL);
    /* the simulator starts on the port the worker points at */
    char p[16];
    snprintf(p, sizeof p, "%d", sim_port);
    const char *argv[] = {"--port", p, "--time-scale", OT_SCALE, "--quiet", NULL};
    th_spawn("ollama-sim", argv, NULL);
    CHECK_EQ(ot_wait_loaded(c, "w1", "none", 0, 15000), 0); /* models reported */
    CHECK_EQ(ot_generate(c, &g, &r), AB_OK);
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
void ollama_backend_down_up(void)
{
    int sim_port = th_free_port(), port = th_free_port();
    char p[16];
    snprintf(p, sizeof p, "%d", sim_port);
    const char *sim_argv[] = {"--port", p, "--time-scale", OT_SCALE, "--quiet", NULL};
    pid_t sim = th_spawn("ollama-sim", sim_argv, NULL);
    pid_t broker = th_broker(port, NULL);
    pid_t w = ot_oworker(port, sim_port, "w1", "--refresh-ms", "300", NULL);
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

/* A port whose connections are neither accepted nor refused: a listener
 * with its accept queue full drops the SYN, as a host that went off the
 * network (or a firewall) does. The sockets live until the test ends. */
static int s_blackhole(void)
{
    int port = th_free_port(), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    REQUIRE(bind(l, (struct sockaddr *)&a, sizeof a) == 0 && listen(l, 0) == 0);
    int fill = socket(AF_INET, SOCK_STREAM, 0); /* queued, never accepted: the queue is full */
    REQUIRE(connect(fill, (struct sockaddr *)&a, sizeof a) == 0);
    return port;
}

/* Ollama's host does not answer the connection: curl's connect timeout
 * (3 s) is a connection failure, retried and then BACKEND, which the
 * broker hands to another worker. It was answered DEADLINE ("the backend
 * did not finish before the deadline") 3 s into a request of 60, which no
 * other worker is given. */
void ollama_connect_timeout(void)
{
    int hole = s_blackhole(), port = th_free_port();
    th_broker(port, NULL);
    ot_oworker(port, hole, "w1", "--ollama-retries", "1", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    Agentbus__InferenceRequest q = AGENTBUS__INFERENCE_REQUEST__INIT;
    Agentbus__GenerateRequest gr = AGENTBUS__GENERATE_REQUEST__INIT;
    gr.model = "sim-small";
    gr.prompt = "anyone there";
    q.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_GENERATE;
    q.generate = &gr;
    uint8_t buf[256];
    size_t len = agentbus__inference_request__pack(&q, buf);
    ot_res_t r;
    memset(&r, 0, sizeof r);
    r.kind = 1;
    /* no model to route by: the worker's state lists none (its Ollama never
     * answered), so the broker sends it to the worker as it is */
    REQUIRE(ab_client_request_start(c, "ollama", buf, len,
                                    &(ab_request_opts_t){.timeout_ms = 60000}, ot_on_event, &r,
                                    NULL) == AB_OK);
    ot_wait(c, &r, 1, 70000);
    CHECK_EQ(r.finals, 1);
    CHECK_EQ(r.status, AB_EBACKEND);
    CHECK_TRUE(strstr(r.error, "connection to the backend failed") != NULL);
    ab_client_destroy(&c);
}

/* A broker, worker w1 (*W; --capacity CAPACITY unless NULL) on
 * ab-fake-ollama's port FAKE, and a client, returned once w1 lists
 * fake:latest. */
static ab_client_t *s_fake_w1(int fake, const char *capacity, pid_t *w)
{
    int port = th_free_port();
    th_broker(port, NULL);
    *w = ot_oworker(port, fake, "w1", capacity ? "--capacity" : NULL, capacity, NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    CHECK_EQ(ot_wait_loaded(c, "w1", "fake:latest", 1, 15000), 0);
    return c;
}

/* An Ollama listing a model whose name is over the broker's
 * register-max-string-bytes (1K) and more models than its
 * register-max-models (1024): the worker leaves those out of its state,
 * says so once, and serves the others. The broker refused the REGISTER
 * (TOO_LARGE) and the worker exited at its first probe. */
void ollama_state_bounds(void)
{
    pid_t w;
    ab_client_t *c = s_fake_w1(ot_fake_ollama("--long-name", "2000", "--extra-models", "1500",
                                              NULL), NULL, &w);
    Agentbus__WorkerList *wl = NULL;
    const Agentbus__InferenceState *st = ot_state(c, "w1", &wl, NULL);
    CHECK_TRUE(st && st->n_models == 1024);
    if (wl)
        agentbus__worker_list__free_unpacked(wl, NULL);
    CHECK_TRUE(s_log_wait(w, "left out of what the worker reports", 15000));
    ot_res_t r;
    ot_gen_t g = {"fake", "hi", NULL, 1, -1, 0};
    CHECK_EQ(ot_generate(c, &g, &r), AB_OK);
    CHECK_STR(r.text, "hello world");
    CHECK_TRUE(th_alive(w));
    ab_client_destroy(&c);
}

/* An error body of the backend's own bytes (not UTF-8, control characters,
 * a NUL, a terminal escape): the client gets clean text, each such byte as
 * U+FFFD. Before, the bytes went through as they were: a JSON encoder
 * refused the text (the gateway closed the connection without an answer),
 * a terminal ran the escape, and a NUL cut the text short. */
void ollama_error_bytes(void)
{
    /* "\xff\xfe bad \x01\x1b[2J" "quote" \x00 after \xc3 */
    int fake = ot_fake_ollama("--error-hex",
                             "fffe2062616420011b5b324a202271756f746522200020616674657220c3", NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    ot_oworker(port, fake, "w1", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    ot_res_t r;
    ot_gen_t g = {"fake", "hi", NULL, 1, -1, 0};
    CHECK_EQ(ot_generate(c, &g, &r), AB_EBACKEND);
    CHECK_STR(r.error, "HTTP 500: \xEF\xBF\xBD\xEF\xBF\xBD bad \xEF\xBF\xBD\xEF\xBF\xBD[2J "
                       "\"quote\" \xEF\xBF\xBD after \xEF\xBF\xBD");
    ab_client_destroy(&c);
}

/* The generate calls ab-fake-ollama on PORT took. */
static long s_fake_calls(int port)
{
    json_t *j = NULL;
    long n = ot_http(port, "/fake/stats", NULL, &j) == 200
                 ? (long)json_integer_value(json_object_get(j, "calls")) : -1;
    json_decref(j);
    return n;
}

/* A generate against an Ollama (ab-fake-ollama --cut-after) whose
 * connection drops after CUT bytes of the answer, with two workers on it:
 * the client's status and error, and how many times Ollama was asked. */
static long s_cut_calls(const char *cut, ot_res_t *r)
{
    int fake = ot_fake_ollama("--cut-after", cut, NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    ot_oworker(port, fake, "w1", "--ollama-retries", "1", NULL);
    ot_oworker(port, fake, "w2", "--ollama-retries", "1", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 2, 15000) == 0);
    CHECK_EQ(ot_wait_loaded(c, "w1", "fake:latest", 1, 15000), 0);
    CHECK_EQ(ot_wait_loaded(c, "w2", "fake:latest", 1, 15000), 0);
    ot_gen_t g = {"fake", "hi", NULL, 1, -1, 0};
    CHECK_EQ(ot_generate(c, &g, r), AB_EBACKEND);
    ab_client_destroy(&c);
    return s_fake_calls(fake);
}

/* An answer cut before its first complete line: once a byte of it came,
 * Ollama had begun to generate, so the request is neither retried here
 * nor handed to another worker (it was both: Ollama generated it up to 6
 * times). Cut before any byte of the body, it is still retried. */
void ollama_cut_answer(void)
{
    ot_res_t r;
    CHECK_EQ(s_cut_calls("40", &r), 1); /* within the first line */
    CHECK_TRUE(strstr(r.error, "mid-answer (not retried") != NULL);
    CHECK_TRUE(s_cut_calls("0", &r) > 1); /* headers only: no byte of the answer */
    CHECK_TRUE(strstr(r.error, "connection to the backend failed: ") != NULL);
}

/* An Ollama that answers its probes with HTTP 500, or with a model list
 * over the worker's 8 MiB bound: the worker logs what happened (it logged
 * "is unreachable" for both, sending the operator to the network). */
void ollama_probe_why(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    pid_t w1 = ot_oworker(port, ot_fake_ollama("--list-status", "500", NULL), "w1", NULL);
    pid_t w2 = ot_oworker(port, ot_fake_ollama("--list-mib", "9", NULL), "w2", NULL);
    CHECK_TRUE(s_log_wait(w1, "answered HTTP 500 to /api/tags: backend down", 15000));
    CHECK_TRUE(s_log_wait(w2, "sent a model list (/api/tags) over 8 MiB: backend down", 15000));
    CHECK_TRUE(!s_log_wait(w1, "unreachable", 0) && !s_log_wait(w2, "unreachable", 0));
}

/* An Ollama whose final line holds a "context" of 7M ids (14 MB, under
 * the 16 MiB line bound): decoding it is bounded (WK_OL_DECODE_MAX, 96
 * MiB), so the request fails TOO_LARGE and the worker's peak stays near
 * it. jansson took ~24x the line: the worker peaked at 335 MB. */
void ollama_big_line(void)
{
    pid_t w;
    ab_client_t *c = s_fake_w1(ot_fake_ollama("--context-ints", "7000000", NULL), NULL, &w);
    ot_res_t r;
    ot_gen_t g = {"fake", "hi", NULL, 1, -1, 60000};
    CHECK_EQ(ot_generate(c, &g, &r), AB_ETOOLARGE);
    CHECK_TRUE(strstr(r.error, "over the worker's 96 MiB to decode") != NULL);
    CHECK_TRUE(s_log_wait(w, "refused: Ollama sent a line of", 5000));
    CHECK_TRUE(th_alive(w));
#ifndef __SANITIZE_ADDRESS__ /* ASan's shadow and quarantine are its own */
    long peak = th_status_kb(w, "VmHWM");
    CHECK_TRUE(peak > 0 && peak < 200 * 1024);
    if (peak >= 200 * 1024)
        fprintf(stderr, "worker peak %ld KiB\n", peak);
#endif
    ab_client_destroy(&c);
}

/* Eight streams, each past one 12 MiB line, wait for their final line:
 * the worker holds about its idle size, not a line's buffer per stream.
 * Each stream kept its buffer (16 MiB, 12 touched) until its request
 * ended: about 100 MB here, 512 MiB at --capacity 32. */
void ollama_line_buffer(void)
{
    pid_t w;
    ab_client_t *c = s_fake_w1(ot_fake_ollama("--response-mib", "12", "--pause-ms", "60000",
                                              NULL), "8", &w);
    long idle = th_rss_kb(w);
    ot_res_t r[8];
    ot_gen_t g = {"fake", "hi", NULL, 1, -1, 90000};
    for (int i = 0; i < 8; i++)
        ot_start_gen(c, &g, &r[i]);
    int64_t end = ab_now_ms() + 60000;
    int past = 0; /* streams past their big line and "hello world", paused before the end */
    while (past < 8 && ab_now_ms() < end) {
        ab_client_poll(c, 50);
        past = 0;
        for (int i = 0; i < 8; i++)
            past += r[i].partials == 3;
    }
    CHECK_EQ(past, 8);
    CHECK_TRUE(th_alive(w));
#ifndef __SANITIZE_ADDRESS__ /* ASan's quarantine keeps what was freed */
    CHECK_RANGE(th_rss_kb(w) - idle, -8 * 1024, 40 * 1024); /* KiB */
#else
    (void)idle;
#endif
    ab_client_destroy(&c); /* cancels the streams; the fake's pauses end with the test */
}

/* Answers refused as too large (a line over the 16 MiB bound) are counted
 * in the worker's log: at the first, and in all at exit. Each was logged
 * on its own, but no figure said how many (InferenceState has no field
 * for it, and the broker's TOO_LARGE count is every worker's and its own). */
void ollama_too_large_count(void)
{
    pid_t w;
    ab_client_t *c = s_fake_w1(ot_fake_ollama("--response-mib", "17", NULL), NULL, &w);
    for (int i = 0; i < 3; i++) {
        ot_res_t r;
        CHECK_EQ(ot_generate(c, &(ot_gen_t){"fake", "hi", NULL, 1, -1, 30000}, &r),
                 AB_ETOOLARGE);
    }
    /* the first said at once; the next two within the minute wait for exit */
    CHECK_TRUE(s_log_wait(w, "1 answer refused as too large (TOO_LARGE) in the last", 5000));
    CHECK_EQ(th_stop(w), 0);
    CHECK_TRUE(s_log_wait(w, "3 answers refused as too large (TOO_LARGE) since the worker "
                             "started", 0));
    ab_client_destroy(&c);
}
