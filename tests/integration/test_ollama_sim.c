/*
 * test_ollama_sim.c - the Ollama-API simulator as a real process on a free
 * loopback port, driven over HTTP (libcurl, and raw sockets where a test
 * must hold connections open). One case per ctest entry.
 */
#include "harness.h"
#include "test.h"
#include "grow.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int s_port;

#define BUSY_TEXT "server busy, please try again.  maximum pending requests exceeded"

/* --- HTTP helpers ---------------------------------------------------------- */
typedef struct {
    char *data;
    size_t len, cap;
    int lines;
    int abort_after_lines;   /* 0 = read everything */
} s_buf_t;

static size_t s_write(char *p, size_t sz, size_t n, void *arg)
{
    s_buf_t *b = arg;
    size_t k = sz * n;
    REQUIRE(ab_grow(&b->data, &b->cap, b->len + k + 1) == 0); /* base/grow.h: by doubling */
    memcpy(b->data + b->len, p, k);
    b->len += k;
    b->data[b->len] = '\0';
    for (size_t i = 0; i < k; i++)
        b->lines += p[i] == '\n';
    if (b->abort_after_lines && b->lines >= b->abort_after_lines)
        return 0;   /* curl aborts the transfer and closes the connection */
    return k;
}

typedef struct {
    long status;
    CURLcode rc;
    s_buf_t body;
    char ctype[128];
} s_resp_t;

/* METHOD PATH with BODY (may be NULL); timeout_ms bounds the transfer. */
static s_resp_t s_http(const char *method, const char *path, const char *body, int abort_after,
                       long timeout_ms)
{
    s_resp_t r = {0};
    r.body.abort_after_lines = abort_after;
    CURL *c = curl_easy_init();
    REQUIRE(c);
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", s_port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, s_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r.body);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    r.rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    char *ct = NULL;
    curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
    snprintf(r.ctype, sizeof r.ctype, "%s", ct ? ct : "");
    curl_easy_cleanup(c);
    if (!r.body.data)
        r.body.data = calloc(1, 1);
    return r;
}

static void s_resp_free(s_resp_t *r)
{
    free(r->body.data);
    r->body.data = NULL;
}

/* A JSON answer (REQUIREs it parses); *status gets the HTTP status. */
static json_t *s_json(const char *method, const char *path, const char *body, long *status)
{
    s_resp_t r = s_http(method, path, body, 0, 30000);
    json_error_t e;
    json_t *j = json_loads(r.body.data, 0, &e);
    if (!j)
        fprintf(stderr, "not JSON (%ld, curl %d): %s\n", r.status, r.rc, r.body.data);
    REQUIRE(j);
    if (status)
        *status = r.status;
    s_resp_free(&r);
    return j;
}

static json_t *s_stats(void)
{
    return s_json("GET", "/sim/stats", NULL, NULL);
}

static long long s_stat(const char *key)
{
    json_t *st = s_stats();
    long long v = json_integer_value(json_object_get(st, key));
    json_decref(st);
    return v;
}

/* The NDJSON lines of a streamed body, parsed; REQUIREs each parses. */
static json_t *s_lines(const char *data)
{
    json_t *arr = json_array();
    const char *p = data;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        if (n) {
            json_error_t e;
            json_t *j = json_loadb(p, n, 0, &e);
            if (!j)
                fprintf(stderr, "bad line: %.*s\n", (int)n, p);
            REQUIRE(j);
            json_array_append_new(arr, j);
        }
        p += n + (nl ? 1 : 0);
    }
    return arr;
}

/* A raw HTTP/1.1 POST whose answer the caller reads (or not) later. */
static int s_raw_post(const char *path, const char *body)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
    char req[4096];
    int n = snprintf(req, sizeof req,
                     "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s", path, strlen(body), body);
    REQUIRE(write(fd, req, (size_t)n) == n);
    return fd;
}

/* Reads from FD until WANT appears or timeout_ms passes; 1 if it did. */
static int s_raw_wait_for(int fd, const char *want, char *buf, size_t cap, int timeout_ms)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int waited = 0; waited < timeout_ms && len + 1 < cap;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0) {
            waited += 50;
            continue;
        }
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = '\0';
        if (strstr(buf, want))
            return 1;
    }
    return strstr(buf, want) != NULL;
}

/* Waits (bounded) until stats KEY equals WANT. */
static int s_wait_stat(const char *key, long long want, int timeout_ms)
{
    for (int i = 0; i < timeout_ms / 20; i++) {
        if (s_stat(key) == want)
            return 0;
        th_sleep_ms(20);
    }
    return s_stat(key) == want ? 0 : -1;
}

static const char *const *s_env;   /* environment for the next s_sim */

/* Starts the simulator with extra flags (NULL-terminated) and waits until
 * it answers. */
static pid_t s_sim(const char *first, ...)
{
    s_port = th_free_port();
    char port[16];
    snprintf(port, sizeof port, "%d", s_port);
    const char *argv[48] = {"--port", port};
    int n = 2;
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && n < 47; a = va_arg(ap, const char *))
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    pid_t pid = th_spawn("ollama-sim", argv, s_env);
    for (int i = 0; i < 200; i++) {
        s_resp_t r = s_http("GET", "/api/version", NULL, 0, 1000);
        long st = r.status;
        s_resp_free(&r);
        if (st == 200)
            return pid;
        REQUIRE(th_alive(pid));
        th_sleep_ms(50);
    }
    REQUIRE(!"ollama-sim did not answer");
    return -1;
}

static const char *s_str(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static long long s_int(const json_t *o, const char *k)
{
    return json_integer_value(json_object_get(o, k));
}

/* Is MODEL listed by /api/ps? */
static int s_in_ps(const char *model)
{
    json_t *ps = s_json("GET", "/api/ps", NULL, NULL);
    size_t i;
    json_t *m;
    int found = 0;
    json_array_foreach(json_object_get(ps, "models"), i, m)
        found |= strcmp(s_str(m, "name"), model) == 0;
    json_decref(ps);
    return found;
}

/* Text of a non-streamed generate. */
static char *s_generate_text(const char *body)
{
    long st;
    json_t *j = s_json("POST", "/api/generate", body, &st);
    CHECK_EQ(st, 200);
    char *t = strdup(s_str(j, "response") ? s_str(j, "response") : "");
    json_decref(j);
    return t;
}

/* --- cases ------------------------------------------------------------------ */

/* Streaming generate: NDJSON lines, one per token, in order; the final line
 * carries done_reason and durations; the streamed text equals the
 * non-streamed text for the same (model, prompt, seed) at temperature 0. */
static void test_generate(void)
{
    s_sim("--time-scale", "20", NULL);
    const char *body = "{\"model\":\"sim-small\",\"prompt\":\"why is the sky blue\","
                       "\"options\":{\"temperature\":0,\"seed\":7,\"num_predict\":6}}";
    s_resp_t r = s_http("POST", "/api/generate", body, 0, 30000);
    CHECK_EQ(r.rc, CURLE_OK);
    CHECK_EQ(r.status, 200);
    CHECK_STR(r.ctype, "application/x-ndjson");
    json_t *lines = s_lines(r.body.data);
    REQUIRE(json_array_size(lines) == 7);
    char text[1024] = "";
    for (size_t i = 0; i < 6; i++) {
        json_t *l = json_array_get(lines, i);
        CHECK_TRUE(json_is_false(json_object_get(l, "done")));
        CHECK_STR(s_str(l, "model"), "sim-small");
        CHECK_TRUE(s_str(l, "created_at") && strlen(s_str(l, "created_at")) > 20);
        REQUIRE(s_str(l, "response"));
        CHECK_TRUE(strlen(s_str(l, "response")) > 0);
        strncat(text, s_str(l, "response"), sizeof text - strlen(text) - 1);
    }
    json_t *fin = json_array_get(lines, 6);
    CHECK_TRUE(json_is_true(json_object_get(fin, "done")));
    CHECK_STR(s_str(fin, "done_reason"), "length");
    CHECK_STR(s_str(fin, "response"), "");
    CHECK_EQ(s_int(fin, "eval_count"), 6);
    CHECK_EQ(s_int(fin, "prompt_eval_count"), 5);
    CHECK_TRUE(s_int(fin, "total_duration") > 0);
    CHECK_TRUE(s_int(fin, "load_duration") >= 500000000LL); /* simulated: sim-small loads 500 ms */
    CHECK_TRUE(s_int(fin, "prompt_eval_duration") > 0);
    CHECK_TRUE(s_int(fin, "eval_duration") >= 6 * 10000000LL);   /* 6 tokens of 10 ms */
    CHECK_TRUE(s_int(fin, "total_duration") >= s_int(fin, "eval_duration"));
    json_decref(lines);
    s_resp_free(&r);

    /* Same input, not streamed: same text; a second time: same again. */
    char whole[1024];
    snprintf(whole, sizeof whole, "%s", body);
    char *p = strrchr(whole, '}');
    snprintf(p, sizeof whole - (size_t)(p - whole), ",\"stream\":false}");
    char *t1 = s_generate_text(whole);
    char *t2 = s_generate_text(whole);
    CHECK_STR(t1, text);
    CHECK_STR(t2, text);
    /* Another seed or prompt: another text. Default temperature: varied. */
    char *t3 = s_generate_text("{\"model\":\"sim-small\",\"prompt\":\"why is the sky blue\","
                               "\"stream\":false,\"options\":{\"temperature\":0,\"seed\":8,"
                               "\"num_predict\":6}}");
    CHECK_TRUE(strcmp(t3, text) != 0);
    char *v1 = s_generate_text("{\"model\":\"sim-small\",\"prompt\":\"hi\",\"stream\":false}");
    char *v2 = s_generate_text("{\"model\":\"sim-small\",\"prompt\":\"hi\",\"stream\":false}");
    CHECK_TRUE(strcmp(v1, v2) != 0);
    free(t1), free(t2), free(t3), free(v1), free(v2);

    /* stop strings end the reply before the stop text. */
    long st;
    json_t *j = s_json("POST", "/api/generate",
                       "{\"model\":\"sim-small\",\"prompt\":\"x\",\"stream\":false,"
                       "\"options\":{\"temperature\":0,\"num_predict\":50,\"stop\":[\".\"]}}", &st);
    CHECK_EQ(st, 200);
    CHECK_STR(s_str(j, "done_reason"), "stop");
    CHECK_TRUE(strchr(s_str(j, "response"), '.') == NULL);
    CHECK_TRUE(s_int(j, "eval_count") > 0 && s_int(j, "eval_count") < 50);
    json_decref(j);
    json_t *stats = s_stats();
    CHECK_EQ(s_int(stats, "requests"), 7);
    CHECK_EQ(s_int(json_object_get(stats, "endpoints"), "generate"), 7);
    CHECK_EQ(s_int(json_array_get(json_object_get(stats, "models"), 0), "generate"), 7);
    json_decref(stats);
}

/* Streaming really streams: the first token line reaches the client while
 * the simulator still reports the request active. */
static void test_stream_live(void)
{
    s_sim("--model", "slow,load_ms=0,token_ms=300,reply_tokens=20", NULL);
    int fd = s_raw_post("/api/generate", "{\"model\":\"slow\",\"prompt\":\"a b c\"}");
    char buf[8192];
    CHECK_TRUE(s_raw_wait_for(fd, "\"done\":false", buf, sizeof buf, 10000));
    CHECK_TRUE(strstr(buf, "Transfer-Encoding: chunked") != NULL);
    CHECK_TRUE(strstr(buf, "\"done\":true") == NULL);
    CHECK_EQ(s_stat("active"), 1);
    close(fd);
    CHECK_EQ(s_wait_stat("active", 0, 5000), 0);
    CHECK_EQ(s_stat("aborted"), 1);
}

/* Chat, streamed and not: assistant messages; deterministic per messages. */
static void test_chat(void)
{
    s_sim("--time-scale", "20", NULL);
    const char *b1 = "{\"model\":\"sim-small\",\"messages\":[{\"role\":\"system\","
                     "\"content\":\"be brief\"},{\"role\":\"user\",\"content\":\"hello there\"}],"
                     "\"options\":{\"temperature\":0}}";
    s_resp_t r = s_http("POST", "/api/chat", b1, 0, 30000);
    CHECK_EQ(r.status, 200);
    json_t *lines = s_lines(r.body.data);
    size_t n = json_array_size(lines);
    REQUIRE(n == 25);   /* sim-small's 24 tokens + the final line */
    char text[4096] = "";
    for (size_t i = 0; i + 1 < n; i++) {
        json_t *msg = json_object_get(json_array_get(lines, i), "message");
        CHECK_STR(s_str(msg, "role"), "assistant");
        strncat(text, s_str(msg, "content"), sizeof text - strlen(text) - 1);
    }
    json_t *fin = json_array_get(lines, n - 1);
    CHECK_TRUE(json_is_true(json_object_get(fin, "done")));
    CHECK_STR(s_str(fin, "done_reason"), "stop");
    CHECK_STR(s_str(json_object_get(fin, "message"), "content"), "");
    CHECK_EQ(s_int(fin, "prompt_eval_count"), 2 + 2 + 2);
    CHECK_EQ(s_int(fin, "eval_count"), 24);
    json_decref(lines);
    s_resp_free(&r);

    char b2[1024];
    snprintf(b2, sizeof b2, "%.*s,\"stream\":false}", (int)strlen(b1) - 1, b1);
    long st;
    json_t *j = s_json("POST", "/api/chat", b2, &st);
    CHECK_EQ(st, 200);
    CHECK_STR(s_str(json_object_get(j, "message"), "content"), text);
    CHECK_TRUE(json_is_true(json_object_get(j, "done")));
    json_decref(j);
    j = s_json("POST", "/api/chat",
               "{\"model\":\"sim-small\",\"stream\":false,\"options\":{\"temperature\":0},"
               "\"messages\":[{\"role\":\"user\",\"content\":\"something else\"}]}", &st);
    CHECK_TRUE(strcmp(s_str(json_object_get(j, "message"), "content"), text) != 0);
    json_decref(j);
    /* Bad message shape: 400. Empty messages: a load. */
    j = s_json("POST", "/api/chat", "{\"model\":\"sim-small\",\"messages\":[{\"role\":1}]}", &st);
    CHECK_EQ(st, 400);
    json_decref(j);
    j = s_json("POST", "/api/chat", "{\"model\":\"sim-small\",\"messages\":[]}", &st);
    CHECK_EQ(st, 200);
    CHECK_STR(s_str(j, "done_reason"), "load");
    json_decref(j);
}

/* Embeddings: one per input, unit length, deterministic per input. */
static void test_embed(void)
{
    s_sim("--time-scale", "20", NULL);
    long st;
    json_t *a = s_json("POST", "/api/embed",
                       "{\"model\":\"sim-embed\",\"input\":[\"alpha\",\"beta\"]}", &st);
    CHECK_EQ(st, 200);
    CHECK_STR(s_str(a, "model"), "sim-embed");
    json_t *e = json_object_get(a, "embeddings");
    REQUIRE(json_array_size(e) == 2);
    REQUIRE(json_array_size(json_array_get(e, 0)) == 768);
    double norm = 0;
    size_t i;
    json_t *x;
    json_array_foreach(json_array_get(e, 0), i, x)
        norm += json_number_value(x) * json_number_value(x);
    CHECK_RANGE(norm, 0.999, 1.001);
    CHECK_TRUE(s_int(a, "prompt_eval_count") == 2);
    CHECK_TRUE(s_int(a, "total_duration") > 0);
    json_t *b = s_json("POST", "/api/embed", "{\"model\":\"sim-embed\",\"input\":\"beta\"}", &st);
    CHECK_EQ(st, 200);
    json_t *eb = json_array_get(json_object_get(b, "embeddings"), 0);
    CHECK_TRUE(json_equal(eb, json_array_get(e, 1)));
    CHECK_TRUE(!json_equal(eb, json_array_get(e, 0)));
    json_decref(a);
    json_decref(b);
    b = s_json("POST", "/api/embed", "{\"model\":\"sim-embed\"}", &st);
    CHECK_EQ(st, 200);
    CHECK_EQ(json_array_size(json_object_get(b, "embeddings")), 0);
    json_decref(b);
    b = s_json("POST", "/api/embed", "{\"model\":\"sim-embed\",\"input\":[1]}", &st);
    CHECK_EQ(st, 400);
    json_decref(b);
    json_t *stats = s_stats();
    json_t *em = json_array_get(json_object_get(stats, "models"), 2);
    CHECK_STR(s_str(em, "name"), "sim-embed:latest");
    CHECK_EQ(s_int(em, "embed"), 4);
    CHECK_EQ(s_int(em, "prompt_tokens"), 3);
    CHECK_EQ(s_int(em, "eval_tokens"), 0);
    json_decref(stats);
}

/* Ollama's error answers: 404 model, 400 bad input, 404/405 paths, 413. */
static void test_errors(void)
{
    s_sim("--max-body-bytes", "2048", NULL);
    long st;
    json_t *j = s_json("POST", "/api/generate", "{\"model\":\"nope\",\"prompt\":\"x\"}", &st);
    CHECK_EQ(st, 404);
    CHECK_STR(s_str(j, "error"), "model \"nope\" not found, try pulling it first");
    json_decref(j);
    j = s_json("POST", "/api/chat", "{\"model\":\"llama9\",\"messages\":[]}", &st);
    CHECK_EQ(st, 404);
    json_decref(j);
    j = s_json("POST", "/api/generate", "{\"prompt\":\"x\"}", &st);
    CHECK_EQ(st, 400);
    CHECK_STR(s_str(j, "error"), "model is required");
    json_decref(j);
    j = s_json("POST", "/api/generate", "{not json", &st);
    CHECK_EQ(st, 400);
    CHECK_TRUE(strncmp(s_str(j, "error"), "invalid JSON body", 17) == 0);
    json_decref(j);
    j = s_json("POST", "/api/generate",
               "{\"model\":\"sim-small\",\"prompt\":\"x\",\"stream\":\"yes\"}", &st);
    CHECK_EQ(st, 400);
    json_decref(j);
    j = s_json("POST", "/api/generate",
               "{\"model\":\"sim-small\",\"prompt\":\"x\",\"keep_alive\":\"soon\"}", &st);
    CHECK_EQ(st, 400);
    json_decref(j);
    s_resp_t r = s_http("GET", "/api/nothing", NULL, 0, 5000);
    CHECK_EQ(r.status, 404);
    CHECK_STR(r.body.data, "404 page not found");
    s_resp_free(&r);
    r = s_http("GET", "/api/generate", NULL, 0, 5000);
    CHECK_EQ(r.status, 405);
    s_resp_free(&r);
    char *big = malloc(4096);
    memset(big, ' ', 4095);
    big[4095] = '\0';
    big[0] = '{';
    big[4094] = '}';
    r = s_http("POST", "/api/generate", big, 0, 5000);
    CHECK_EQ(r.status, 413);
    s_resp_free(&r);
    free(big);
    json_t *stats = s_stats();
    json_t *sc = json_object_get(stats, "status");
    CHECK_EQ(s_int(sc, "404"), 3);
    CHECK_EQ(s_int(sc, "400"), 4);
    CHECK_EQ(s_int(sc, "405"), 1);
    CHECK_EQ(s_int(sc, "413"), 1);
    CHECK_EQ(s_int(stats, "active"), 0);
    json_decref(stats);
    /* The server still serves after all that. */
    j = s_json("GET", "/api/version", NULL, &st);
    CHECK_EQ(st, 200);
    CHECK_STR(s_str(j, "version"), "0.5.7");
    json_decref(j);
}

/* NUM_PARALLEL slots and MAX_QUEUE: with 2 slots and a queue of 1, the
 * fourth concurrent request gets Ollama's 503. */
static void test_queue_full(void)
{
    s_sim("--num-parallel", "2", "--max-queue", "1", "--model",
          "m,load_ms=0,token_ms=200,reply_tokens=50", NULL);
    const char *body = "{\"model\":\"m\",\"prompt\":\"p\"}";
    int fds[3];
    for (int i = 0; i < 3; i++) {
        fds[i] = s_raw_post("/api/generate", body);
        /* One at a time, so who waits is certain. */
        CHECK_EQ(s_wait_stat(i < 2 ? "active" : "queued", i < 2 ? i + 1 : 1, 5000), 0);
    }
    long st;
    json_t *j = s_json("POST", "/api/generate", body, &st);
    CHECK_EQ(st, 503);
    CHECK_STR(s_str(j, "error"), BUSY_TEXT);
    json_decref(j);
    json_t *stats = s_stats();
    CHECK_EQ(s_int(stats, "active"), 2);
    CHECK_EQ(s_int(stats, "queued"), 1);
    CHECK_EQ(s_int(stats, "max_queued"), 1);
    CHECK_EQ(s_int(json_object_get(stats, "status"), "503"), 1);
    json_decref(stats);
    /* A client that gives up while queued leaves the queue at once. */
    close(fds[2]);
    CHECK_EQ(s_wait_stat("queued", 0, 5000), 0);
    /* Counted when the server ends the request, a moment after the queue
     * let it go (flaky under load, 2026-12-07: read between the two). */
    CHECK_EQ(s_wait_stat("aborted_queued", 1, 5000), 0);
    CHECK_EQ(s_stat("active"), 2);
    /* Closing a running one hands its slot to the next queued one. */
    fds[2] = s_raw_post("/api/generate", body);
    CHECK_EQ(s_wait_stat("queued", 1, 5000), 0);
    close(fds[0]);
    CHECK_EQ(s_wait_stat("queued", 0, 5000), 0);
    CHECK_EQ(s_stat("active"), 2);
    close(fds[1]);
    close(fds[2]);
    CHECK_EQ(s_wait_stat("active", 0, 5000), 0);
    CHECK_EQ(s_stat("aborted"), 4);
    CHECK_EQ(s_stat("aborted_queued"), 1);
}

/* VRAM: a model that does not fit evicts the least recently used idle one. */
static void test_eviction(void)
{
    s_sim("--gpu", "3G", "--time-scale", "50", "--model", "a,size=1G", "--model", "b,size=1G",
          "--model", "c,size=2G", "--model", "huge,size=4G", NULL);
    long st;
    const char *names[] = {"a", "b", "a"};   /* b ends up least recently used */
    for (int i = 0; i < 3; i++) {
        char body[128];
        snprintf(body, sizeof body, "{\"model\":\"%s\",\"prompt\":\"x\",\"stream\":false}",
                 names[i]);
        json_t *j = s_json("POST", "/api/generate", body, &st);
        CHECK_EQ(st, 200);
        json_decref(j);
    }
    CHECK_TRUE(s_in_ps("a:latest") && s_in_ps("b:latest"));
    json_t *j = s_json("POST", "/api/generate", "{\"model\":\"c\"}", &st);   /* load only */
    CHECK_EQ(st, 200);
    CHECK_STR(s_str(j, "done_reason"), "load");
    json_decref(j);
    CHECK_TRUE(s_in_ps("a:latest"));
    CHECK_TRUE(!s_in_ps("b:latest"));
    CHECK_TRUE(s_in_ps("c:latest"));
    json_t *stats = s_stats();
    CHECK_EQ(s_int(stats, "evictions"), 1);
    CHECK_EQ(s_int(stats, "loads"), 3);
    CHECK_EQ(s_int(json_array_get(json_object_get(stats, "models"), 1), "evictions"), 1);
    CHECK_EQ(s_int(json_array_get(json_object_get(stats, "gpus"), 0), "vram_used"), 3LL << 30);
    json_decref(stats);
    /* /api/ps fields as Ollama has them. */
    json_t *ps = s_json("GET", "/api/ps", NULL, NULL);
    json_t *m0 = json_array_get(json_object_get(ps, "models"), 0);
    CHECK_STR(s_str(m0, "name"), "c:latest");   /* most recent first */
    CHECK_EQ(s_int(m0, "size"), 2LL << 30);
    CHECK_EQ(s_int(m0, "size_vram"), 2LL << 30);
    CHECK_TRUE(s_str(m0, "expires_at") != NULL);
    CHECK_TRUE(strlen(s_str(m0, "digest")) == 64);
    CHECK_STR(s_str(json_object_get(m0, "details"), "format"), "gguf");
    json_decref(ps);
    /* Bigger than the GPU: a clear 500, nothing evicted. */
    j = s_json("POST", "/api/generate", "{\"model\":\"huge\",\"prompt\":\"x\"}", &st);
    CHECK_EQ(st, 500);
    CHECK_TRUE(strstr(s_str(j, "error"), "requires more system memory") != NULL);
    json_decref(j);
    CHECK_TRUE(s_in_ps("a:latest") && s_in_ps("c:latest"));
}

/* OLLAMA_MAX_LOADED_MODELS: with room for both in VRAM, a limit of one
 * model still evicts the idle one; a busy model is never evicted: the
 * request for the other waits until it is idle. */
static void test_max_loaded(void)
{
    s_sim("--max-loaded-models", "1", "--model", "a,load_ms=0,token_ms=100,reply_tokens=100",
          "--model", "b,load_ms=0", "--quiet", NULL);
    long st;
    json_t *j = s_json("POST", "/api/generate", "{\"model\":\"a\"}", &st);
    CHECK_EQ(st, 200);
    json_decref(j);
    j = s_json("POST", "/api/generate", "{\"model\":\"b\"}", &st);
    CHECK_EQ(st, 200);
    json_decref(j);
    CHECK_TRUE(!s_in_ps("a:latest") && s_in_ps("b:latest"));
    CHECK_EQ(s_stat("evictions"), 1);
    /* b busy: a request for a waits in the queue, b stays loaded */
    int fd = s_raw_post("/api/generate",
                        "{\"model\":\"b\",\"prompt\":\"x\",\"options\":{\"num_predict\":1000}}");
    CHECK_EQ(s_wait_stat("active", 1, 5000), 0);
    int fa = s_raw_post("/api/generate", "{\"model\":\"a\",\"prompt\":\"x\"}");
    CHECK_EQ(s_wait_stat("queued", 1, 5000), 0);
    CHECK_TRUE(s_in_ps("b:latest") && !s_in_ps("a:latest"));
    close(fd);   /* b idle now: evicted for a, which then runs */
    char buf[4096];
    CHECK_TRUE(s_raw_wait_for(fa, "\"done\":false", buf, sizeof buf, 10000));
    CHECK_TRUE(s_in_ps("a:latest") && !s_in_ps("b:latest"));
    CHECK_EQ(s_stat("evictions"), 2);
    close(fa);
    CHECK_EQ(s_wait_stat("active", 0, 5000), 0);
}

/* keep_alive: 0 unloads at once (load-only and after a generation); a short
 * keep_alive expires; /api/ps shows it. */
static void test_keep_alive(void)
{
    s_sim("--time-scale", "20", NULL);
    long st;
    json_t *j = s_json("POST", "/api/generate", "{\"model\":\"sim-small\"}", &st);
    CHECK_EQ(st, 200);
    CHECK_STR(s_str(j, "done_reason"), "load");
    json_decref(j);
    CHECK_TRUE(s_in_ps("sim-small:latest"));
    j = s_json("POST", "/api/generate", "{\"model\":\"sim-small\",\"keep_alive\":0}", &st);
    CHECK_EQ(st, 200);
    CHECK_STR(s_str(j, "done_reason"), "unload");
    json_decref(j);
    CHECK_EQ(s_wait_stat("unloads", 1, 5000), 0); /* after the slot's release */
    CHECK_TRUE(!s_in_ps("sim-small:latest"));
    j = s_json("POST", "/api/generate",
               "{\"model\":\"sim-small\",\"prompt\":\"x\",\"stream\":false,\"keep_alive\":0}", &st);
    CHECK_EQ(st, 200);
    json_decref(j);
    /* The unload follows the slot's release, which the simulator's HTTP
     * library may do just after the client has read the whole answer:
     * wait for the state, bounded. */
    int unloaded = 0;
    for (int i = 0; i < 100 && !unloaded; i++) {
        unloaded = !s_in_ps("sim-small:latest");
        if (!unloaded)
            th_sleep_ms(50);
    }
    CHECK_TRUE(unloaded);
    /* 1 min at time scale 20 = 3 s of real time (the wait below is bounded
     * well under the minute an unscaled keep-alive would take). */
    j = s_json("POST", "/api/chat",
               "{\"model\":\"sim-small\",\"messages\":[],\"keep_alive\":\"1m\"}", &st);
    CHECK_EQ(st, 200);
    json_decref(j);
    int gone = 0;
    for (int i = 0; i < 150 && !gone; i++) {
        gone = !s_in_ps("sim-small:latest");
        if (!gone)
            th_sleep_ms(100);
    }
    CHECK_TRUE(gone);
    CHECK_EQ(s_wait_stat("expirations", 3, 5000), 0);
    json_t *stats = s_stats();
    CHECK_EQ(s_int(stats, "expirations"), 3);
    CHECK_EQ(s_int(stats, "loads"), 3);
    CHECK_EQ(s_int(stats, "unloads"), 3);
    json_decref(stats);
    /* Unload while busy: it stays until its request ends, then goes. */
    int fd = s_raw_post("/api/generate",
                        "{\"model\":\"sim-small\",\"prompt\":\"x\","
                        "\"options\":{\"num_predict\":16384}}");
    char buf[4096];
    CHECK_TRUE(s_raw_wait_for(fd, "\"done\":false", buf, sizeof buf, 10000));
    j = s_json("POST", "/api/generate", "{\"model\":\"sim-small\",\"keep_alive\":0}", &st);
    CHECK_STR(s_str(j, "done_reason"), "unload");
    json_decref(j);
    CHECK_TRUE(s_in_ps("sim-small:latest"));
    close(fd);
    CHECK_EQ(s_wait_stat("unloads", 4, 5000), 0);
    CHECK_TRUE(!s_in_ps("sim-small:latest"));
}

/* A client that closes mid-stream: counted as aborted (Ollama's 499), the
 * slot is free at once for the next request. */
static void test_abort(void)
{
    s_sim("--model", "m,load_ms=0,token_ms=100,reply_tokens=200", NULL);
    s_resp_t r = s_http("POST", "/api/generate", "{\"model\":\"m\",\"prompt\":\"x\"}", 3, 30000);
    CHECK_EQ(r.rc, CURLE_WRITE_ERROR);
    CHECK_TRUE(r.body.lines >= 3);
    s_resp_free(&r);
    CHECK_EQ(s_wait_stat("active", 0, 5000), 0);
    json_t *stats = s_stats();
    CHECK_EQ(s_int(stats, "aborted"), 1);
    CHECK_EQ(s_int(stats, "aborted_queued"), 0);
    json_t *slot = json_array_get(
        json_object_get(json_array_get(json_object_get(stats, "models"), 0), "slots"), 0);
    CHECK_TRUE(json_is_false(json_object_get(slot, "busy")));
    CHECK_TRUE(s_int(slot, "busy_ns") > 0);
    CHECK_EQ(s_int(slot, "requests"), 1);
    json_decref(stats);
    long st;
    json_t *j = s_json("POST", "/api/generate",
                       "{\"model\":\"m\",\"prompt\":\"x\",\"stream\":false,"
                       "\"options\":{\"num_predict\":2}}", &st);
    CHECK_EQ(st, 200);
    CHECK_EQ(s_int(j, "eval_count"), 2);
    json_decref(j);
    /* The answer can reach us a moment before the simulator counts it. */
    CHECK_EQ(s_wait_stat("completed", 1, 5000), 0);
}

static void s_set_faults(const char *json)
{
    long st;
    json_t *j = s_json("POST", "/sim/faults", json, &st);
    CHECK_EQ(st, 200);
    json_decref(j);
}

/* Every fault mode, switched at run time through /sim/faults. */
static void test_faults(void)
{
    s_sim("--model", "m,load_ms=0,token_ms=20,reply_tokens=6,prefill_tps=1000000", NULL);
    const char *body = "{\"model\":\"m\",\"prompt\":\"x\"}";
    long st;
    /* error, once (count), as a 503 with Ollama's text */
    s_set_faults("{\"error_rate\":1,\"error_status\":503,\"count\":1}");
    json_t *j = s_json("POST", "/api/generate", body, &st);
    CHECK_EQ(st, 503);
    CHECK_STR(s_str(j, "error"), BUSY_TEXT);
    json_decref(j);
    s_resp_t r = s_http("POST", "/api/generate", body, 0, 30000);
    CHECK_EQ(r.status, 200);
    CHECK_TRUE(strstr(r.body.data, "\"done\":true") != NULL);
    s_resp_free(&r);
    /* mid-stream error: 2 tokens then an error line, no done line */
    s_set_faults("{\"reset\":true,\"midstream_rate\":1,\"midstream_after\":2}");
    r = s_http("POST", "/api/generate", body, 0, 30000);
    CHECK_EQ(r.status, 200);
    json_t *lines = s_lines(r.body.data);
    CHECK_EQ(json_array_size(lines), 3);
    CHECK_STR(s_str(json_array_get(lines, 2), "error"), "simulated error mid-stream");
    CHECK_TRUE(strstr(r.body.data, "\"done\":true") == NULL);
    json_decref(lines);
    s_resp_free(&r);
    j = s_json("POST", "/api/generate", "{\"model\":\"m\",\"prompt\":\"x\",\"stream\":false}", &st);
    CHECK_EQ(st, 500);
    json_decref(j);
    /* drop before any byte, and after 2 tokens */
    s_set_faults("{\"reset\":true,\"drop_rate\":1}");
    r = s_http("POST", "/api/generate", body, 0, 30000);
    CHECK_EQ(r.rc, CURLE_GOT_NOTHING);
    s_resp_free(&r);
    s_set_faults("{\"drop_after\":2}");
    r = s_http("POST", "/api/generate", body, 0, 30000);
    CHECK_EQ(r.rc, CURLE_PARTIAL_FILE);
    CHECK_EQ(r.body.lines, 2);
    s_resp_free(&r);
    /* slow start: the first token comes late; prompt_eval_duration shows it */
    s_set_faults("{\"reset\":true,\"slow_start_rate\":1,\"slow_start_ms\":300}");
    j = s_json("POST", "/api/generate", "{\"model\":\"m\",\"prompt\":\"x\",\"stream\":false}", &st);
    CHECK_EQ(st, 200);
    CHECK_TRUE(s_int(j, "prompt_eval_duration") >= 300000000LL);
    json_decref(j);
    /* hang after 1 token: the client gives up; the slot is freed */
    s_set_faults("{\"reset\":true,\"hang_rate\":1,\"hang_after\":1}");
    r = s_http("POST", "/api/generate", body, 0, 4000);   /* roomy: ASan on a busy machine */
    CHECK_EQ(r.rc, CURLE_OPERATION_TIMEDOUT);
    CHECK_EQ(r.body.lines, 1);
    s_resp_free(&r);
    CHECK_EQ(s_wait_stat("active", 0, 5000), 0);
    /* hang with hang_ms: the simulator closes the connection itself */
    s_set_faults("{\"hang_ms\":200,\"hang_after\":0}");
    r = s_http("POST", "/api/generate", body, 0, 30000);
    CHECK_EQ(r.rc, CURLE_GOT_NOTHING);
    s_resp_free(&r);
    /* faults only for another model: this one is not touched */
    s_set_faults("{\"reset\":true,\"error_rate\":1,\"model\":\"other\"}");
    r = s_http("POST", "/api/generate", body, 0, 30000);
    CHECK_EQ(r.status, 200);
    s_resp_free(&r);
    /* bad keys change nothing */
    j = s_json("POST", "/sim/faults", "{\"error_rate\":2}", &st);
    CHECK_EQ(st, 400);
    json_decref(j);
    j = s_json("POST", "/sim/faults", "{\"bogus\":1}", &st);
    CHECK_EQ(st, 400);
    json_decref(j);
    j = s_json("GET", "/sim/faults", NULL, &st);
    CHECK_EQ(st, 200);
    CHECK_STR(s_str(j, "model"), "other");
    CHECK_RANGE(json_number_value(json_object_get(j, "error_rate")), 1, 1);
    json_decref(j);
    /* The simulator frees a request's slot when the HTTP library ends the
     * request, which may be after the client has read its last byte. */
    CHECK_EQ(s_wait_stat("active", 0, 5000), 0);
    json_t *stats = s_stats();
    json_t *f = json_object_get(stats, "faults");
    CHECK_EQ(s_int(f, "error"), 1);
    CHECK_EQ(s_int(f, "midstream"), 2);
    CHECK_EQ(s_int(f, "drop"), 2);
    CHECK_EQ(s_int(f, "slow_start"), 1);
    CHECK_EQ(s_int(f, "hang"), 2);
    CHECK_EQ(s_int(stats, "aborted"), 1);   /* only the client that gave up on the hang */
    CHECK_EQ(s_int(stats, "active"), 0);
    json_decref(stats);
}

/* Faults from flags (the same keys) and the time scale: a generation
 * modelled at 200 s completes in a fraction of it, with durations reported
 * in simulated time. */
static void test_time_scale(void)
{
    s_sim("--time-scale", "1000", "--model", "m,load_ms=10000,token_ms=19000,reply_tokens=10",
          "--fault-error-rate", "1", "--fault-count", "1", NULL);
    long st;
    json_t *j = s_json("POST", "/api/generate",
                       "{\"model\":\"m\",\"prompt\":\"x\",\"stream\":false}", &st);
    CHECK_EQ(st, 500);
    CHECK_STR(s_str(j, "error"), "simulated failure");
    json_decref(j);
    /* The client's bound (60 s) is well under the modelled 200 s. */
    s_resp_t r = s_http("POST", "/api/generate",
                        "{\"model\":\"m\",\"prompt\":\"x\",\"stream\":false}", 0, 60000);
    CHECK_EQ(r.rc, CURLE_OK);
    CHECK_EQ(r.status, 200);
    j = json_loads(r.body.data, 0, NULL);
    REQUIRE(j);
    CHECK_TRUE(s_int(j, "load_duration") >= 10000000000LL);
    CHECK_TRUE(s_int(j, "eval_duration") >= 190000000000LL);
    CHECK_EQ(s_int(j, "eval_count"), 10);
    json_decref(j);
    s_resp_free(&r);
    json_t *stats = s_stats();
    json_t *slot = json_array_get(
        json_object_get(json_array_get(json_object_get(stats, "models"), 0), "slots"), 0);
    /* stats are real time: the slot was busy at least the scaled 200 ms */
    CHECK_TRUE(s_int(slot, "busy_ns") >= 200000000LL);
    json_decref(stats);
}

/* Bad usage and bad config files: exit 2 with the option named. */
static void test_usage(void)
{
    char out[2048];
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s --port 1 --time-scale 0", th_bin("ollama-sim"));
    CHECK_EQ(th_run(cmd, out, sizeof out), 2);
    CHECK_TRUE(strstr(out, "--time-scale") != NULL);
    snprintf(cmd, sizeof cmd, "%s --model 'x,colour=red'", th_bin("ollama-sim"));
    CHECK_EQ(th_run(cmd, out, sizeof out), 2);
    CHECK_TRUE(strstr(out, "colour") != NULL);
    char path[512];
    snprintf(path, sizeof path, "%s/sim.json", th_dir());
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fputs("{\"num_parallel\": 2, \"gpus\": [{\"vram\": \"2G\"}], \"models\": "
          "[{\"name\": \"cfg-model\", \"size\": \"1G\", \"digest\": \"abc\", \"load_ms\": 0}], "
          "\"faults\": {\"drop_after\": 3}}",
          f);
    fclose(f);
    s_sim("--config", path, NULL);
    json_t *tags = s_json("GET", "/api/tags", NULL, NULL);
    json_t *m0 = json_array_get(json_object_get(tags, "models"), 0);
    CHECK_EQ(json_array_size(json_object_get(tags, "models")), 1);
    CHECK_STR(s_str(m0, "name"), "cfg-model:latest");
    CHECK_STR(s_str(m0, "digest"), "abc");
    CHECK_EQ(s_int(m0, "size"), 1LL << 30);
    json_decref(tags);
    /* The port is taken: a second simulator must not share it. */
    snprintf(cmd, sizeof cmd, "timeout 20 %s --port %d", th_bin("ollama-sim"), s_port);
    CHECK_EQ(th_run(cmd, out, sizeof out), 1);
    CHECK_TRUE(strstr(out, "cannot listen") != NULL);
    json_t *fa = s_json("GET", "/sim/faults", NULL, NULL);
    CHECK_EQ(s_int(fa, "drop_after"), 3);
    json_decref(fa);
    json_t *stats = s_stats();
    json_t *mm = json_array_get(json_object_get(stats, "models"), 0);
    CHECK_EQ(json_array_size(json_object_get(mm, "slots")), 2);
    json_decref(stats);
    /* Ollama's environment variables sit between the file and the flags. */
    static const char *const env[] = {"OLLAMA_NUM_PARALLEL=3", "OLLAMA_MAX_QUEUE=0", NULL};
    s_env = env;
    s_sim("--config", path, "--max-queue", "5", NULL);
    s_env = NULL;
    stats = s_stats();
    mm = json_array_get(json_object_get(stats, "models"), 0);
    CHECK_EQ(json_array_size(json_object_get(mm, "slots")), 3);   /* env beats the file's 2 */
    json_decref(stats);
    s_sim("--model", "e,load_ms=0", NULL);
    stats = s_stats();
    CHECK_EQ(json_array_size(json_object_get(json_array_get(json_object_get(stats, "models"), 0),
                                             "slots")),
             1);
    json_decref(stats);
    s_env = env;
    s_sim("--model", "e,load_ms=0,token_ms=100,reply_tokens=100", NULL);
    s_env = NULL;
    stats = s_stats();
    CHECK_EQ(json_array_size(json_object_get(json_array_get(json_object_get(stats, "models"), 0),
                                             "slots")),
             3);
    json_decref(stats);
    int fds[3];
    for (int i = 0; i < 3; i++)
        fds[i] = s_raw_post("/api/generate", "{\"model\":\"e\",\"prompt\":\"x\"}");
    CHECK_EQ(s_wait_stat("active", 3, 5000), 0);
    long st;
    json_t *j = s_json("POST", "/api/generate", "{\"model\":\"e\",\"prompt\":\"x\"}", &st);
    CHECK_EQ(st, 503);   /* OLLAMA_MAX_QUEUE=0: no waiting at all */
    json_decref(j);
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    CHECK_EQ(s_wait_stat("active", 0, 5000), 0);
    f = fopen(path, "w");
    REQUIRE(f);
    fputs("{\"models\": [{\"name\": \"x\", \"sise\": 1}]}", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s --config %s", th_bin("ollama-sim"), path);
    CHECK_EQ(th_run(cmd, out, sizeof out), 2);
    CHECK_TRUE(strstr(out, "sise") != NULL);
    /* a file it cannot open: named, without jansson's "line -1" */
    snprintf(cmd, sizeof cmd, "%s --config %s.none", th_bin("ollama-sim"), path);
    CHECK_EQ(th_run(cmd, out, sizeof out), 2);
    CHECK_TRUE(strstr(out, ".none: unable to open") && strstr(out, "No such file"));
    CHECK_TRUE(strstr(out, "line -1") == NULL);
    /* JSON that is not an object: said "(line -1)" too */
    f = fopen(path, "w");
    REQUIRE(f);
    fputs("[1]", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s --config %s", th_bin("ollama-sim"), path);
    CHECK_EQ(th_run(cmd, out, sizeof out), 2);
    CHECK_TRUE(strstr(out, "not a JSON object") && !strstr(out, "line -1"));
    /* an empty --version-string was "too long" */
    snprintf(cmd, sizeof cmd, "%s --port 0 --version-string ''", th_bin("ollama-sim"));
    CHECK_EQ(th_run(cmd, out, sizeof out), 2);
    CHECK_TRUE(strstr(out, "--version-string wants 1..31 printable ASCII characters, got \"\"")
               != NULL);
    CHECK_TRUE(strstr(out, "too long") == NULL);
    /* Text that is not UTF-8: a --version-string started and failed every
     * GET /api/version; --fault-error-message and a --model key were left
     * out without a word; a --model name was "missing". */
    static const char *const not_utf8[][2] = {
        {"--version-string x\377", "--version-string wants"},
        {"--fault-error-message e\377", "--fault-error-message: \"e\377\" is not UTF-8"},
        {"--model m,family=f\377", "--model: family is not UTF-8"},
        {"--model m\377", "--model: the name is not UTF-8"},
    };
    for (size_t i = 0; i < sizeof not_utf8 / sizeof not_utf8[0]; i++) {
        snprintf(cmd, sizeof cmd, "timeout 10 %s --port 0 --quiet %s", th_bin("ollama-sim"),
                 not_utf8[i][0]);
        CHECK_EQ(th_run(cmd, out, sizeof out), 2);
        CHECK_TRUE(strstr(out, not_utf8[i][1]) != NULL);
    }
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"generate", test_generate}, {"stream_live", test_stream_live}, {"chat", test_chat},
        {"embed", test_embed}, {"errors", test_errors}, {"queue_full", test_queue_full},
        {"eviction", test_eviction}, {"keep_alive", test_keep_alive},
        {"max_loaded", test_max_loaded}, {"abort", test_abort}, {"faults", test_faults},
        {"time_scale", test_time_scale}, {"usage", test_usage},
    };
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
    curl_global_cleanup();
    return rc;
}
