/* test_ollama_sim_util.c - ollama-sim's parsers (durations, sizes,
 * keep_alive), its text generator (determinism, limits, stop strings) and
 * its embeddings (unit length, per input), without a server. */
#include "sim.h"
#include "test.h"

#include <math.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

static void test_durations(void)
{
    int64_t ns = 0;
    CHECK_EQ(sim_parse_duration("5m", &ns), 0);
    CHECK_EQ(ns, 300000000000LL);
    CHECK_EQ(sim_parse_duration("1h30m", &ns), 0);
    CHECK_EQ(ns, 5400000000000LL);
    CHECK_EQ(sim_parse_duration("300ms", &ns), 0);
    CHECK_EQ(ns, 300000000LL);
    CHECK_EQ(sim_parse_duration("1.5s", &ns), 0);
    CHECK_EQ(ns, 1500000000LL);
    CHECK_EQ(sim_parse_duration("10", &ns), 0);   /* bare number: seconds */
    CHECK_EQ(ns, 10000000000LL);
    CHECK_EQ(sim_parse_duration("-1", &ns), 0);   /* negative: forever */
    CHECK_EQ(ns, -1);
    CHECK_EQ(sim_parse_duration("-5m", &ns), 0);
    CHECK_EQ(ns, -1);
    CHECK_EQ(sim_parse_duration("0", &ns), 0);
    CHECK_EQ(ns, 0);
    CHECK_EQ(sim_parse_duration("soon", &ns), -1);
    CHECK_EQ(sim_parse_duration("5x", &ns), -1);
    CHECK_EQ(sim_parse_duration("", &ns), -1);
    CHECK_EQ(sim_parse_duration("m", &ns), -1);
    /* Decimal only: strtod read "0x10" as 16 s, " 5" as 5 s, "inf" as for ever. */
    CHECK_EQ(sim_parse_duration("0x10", &ns), -1);
    CHECK_EQ(sim_parse_duration("0x10s", &ns), -1);
    CHECK_EQ(sim_parse_duration(" 5", &ns), -1);
    CHECK_EQ(sim_parse_duration("inf", &ns), -1);
    json_t *v = json_integer(0);
    CHECK_EQ(sim_parse_keep_alive(v, &ns), 0);
    CHECK_EQ(ns, 0);
    json_decref(v);
    v = json_real(-1);
    CHECK_EQ(sim_parse_keep_alive(v, &ns), 0);
    CHECK_EQ(ns, -1);
    json_decref(v);
    v = json_string("2s");
    CHECK_EQ(sim_parse_keep_alive(v, &ns), 0);
    CHECK_EQ(ns, 2000000000LL);
    json_decref(v);
    v = json_true();
    CHECK_EQ(sim_parse_keep_alive(v, &ns), -1);
    json_decref(v);
}

static void test_sizes(void)
{
    uint64_t b = 0;
    CHECK_EQ(sim_parse_size("0x10", &b), -1); /* strtod: 16 bytes */
    CHECK_EQ(sim_parse_size("0x1p4G", &b), -1);
    CHECK_EQ(sim_parse_size("8G", &b), 0);
    CHECK_U64(b, 8ULL << 30);
    CHECK_EQ(sim_parse_size("256M", &b), 0);
    CHECK_U64(b, 256ULL << 20);
    CHECK_EQ(sim_parse_size("1.5GiB", &b), 0);
    CHECK_U64(b, 3ULL << 29);
    CHECK_EQ(sim_parse_size("4096", &b), 0);
    CHECK_U64(b, 4096);
    CHECK_EQ(sim_parse_size("12Q", &b), -1);
    /* Sizes that would wrap (a negative VRAM in /sim/stats) are refused. */
    CHECK_EQ(sim_parse_size("99999999999G", &b), -1);
    CHECK_EQ(sim_parse_size("inf", &b), -1);
    CHECK_EQ(sim_parse_size("nan", &b), -1);
    CHECK_EQ(sim_parse_size("1e30", &b), -1);
    CHECK_EQ(sim_parse_size("1024T", &b), 0);
    CHECK_U64(b, 1024ull << 40);
    CHECK_EQ(sim_parse_size("-1G", &b), -1);
    CHECK_EQ(sim_parse_size("", &b), -1);
}

/* Generates everything of G into BUF; returns the token count. */
static int s_all(sim_gen_t *g, char *buf, size_t cap)
{
    char tok[128];
    int n = 0;
    buf[0] = '\0';
    while (sim_gen_next(g, tok, sizeof tok) == 0 && n < 100000) {
        strncat(buf, tok, cap - strlen(buf) - 1);
        n++;
    }
    return n;
}

static void test_textgen(void)
{
    char a[8192], b[8192];
    sim_gen_t g;
    REQUIRE(sim_gen_init(&g, 42, 30, false, NULL) == 0);
    CHECK_EQ(s_all(&g, a, sizeof a), 30);
    CHECK_EQ(g.n, 30);
    CHECK_TRUE(a[0] >= 'A' && a[0] <= 'Z');   /* a sentence starts capitalised */
    CHECK_TRUE(a[strlen(a) - 1] == '.');
    CHECK_EQ(sim_count_words(a), 30);
    sim_gen_free(&g);
    REQUIRE(sim_gen_init(&g, 42, 30, false, NULL) == 0);
    s_all(&g, b, sizeof b);
    CHECK_STR(a, b);   /* same seed, same text */
    sim_gen_free(&g);
    REQUIRE(sim_gen_init(&g, 43, 30, false, NULL) == 0);
    s_all(&g, b, sizeof b);
    CHECK_TRUE(strcmp(a, b) != 0);
    sim_gen_free(&g);
    /* A stop string ends the text before it; the text never contains it. */
    json_t *stop = json_pack("[s]", ".");
    REQUIRE(sim_gen_init(&g, 42, 30, false, stop) == 0);
    int n = s_all(&g, b, sizeof b);
    CHECK_TRUE(n > 0 && n < 30);
    CHECK_TRUE(g.stopped_by_stop);
    CHECK_TRUE(strchr(b, '.') == NULL);
    CHECK_TRUE(strncmp(a, b, strlen(b)) == 0);   /* a prefix of the unstopped text */
    sim_gen_free(&g);
    json_decref(stop);
    /* JSON format: the whole reply is one JSON object. */
    REQUIRE(sim_gen_init(&g, 7, 5, true, NULL) == 0);
    s_all(&g, b, sizeof b);
    json_t *j = json_loads(b, 0, NULL);
    CHECK_TRUE(json_is_string(json_object_get(j, "text")));
    json_decref(j);
    sim_gen_free(&g);
    REQUIRE(sim_gen_init(&g, 7, 0, false, NULL) == 0);
    CHECK_EQ(s_all(&g, b, sizeof b), 0);
    sim_gen_free(&g);
}

static void test_embed(void)
{
    double x[384], y[384], z[384];
    sim_embed("m:latest", "hello", 384, x);
    sim_embed("m:latest", "hello", 384, y);
    sim_embed("m:latest", "hullo", 384, z);
    double norm = 0, same = 0, diff = 0;
    for (int i = 0; i < 384; i++) {
        norm += x[i] * x[i];
        same += fabs(x[i] - y[i]);
        diff += fabs(x[i] - z[i]);
    }
    CHECK_RANGE(norm, 0.999999, 1.000001);
    CHECK_TRUE(same == 0);
    CHECK_TRUE(diff > 0.1);
    sim_embed("other:latest", "hello", 384, z);
    diff = 0;
    for (int i = 0; i < 384; i++)
        diff += fabs(x[i] - z[i]);
    CHECK_TRUE(diff > 0.1);   /* the model is part of the input */
}

/* sim_wait sleeps for the nanoseconds asked, not whole milliseconds: poll()
 * rounded every token pause up to 1 ms, so a reply had a floor real Ollama
 * has not. Never early; and at least one of up to 200 waits of 100 us ends
 * within 1 ms (the old code took >= 1 ms every time; a loaded machine still
 * gets one through). A hang-up of the client is still seen at once. */
static void test_wait(void)
{
    sim_t *s = calloc(1, sizeof *s);
    s->shutdown_fd = eventfd(0, EFD_CLOEXEC);
    int64_t best = INT64_MAX;
    for (int i = 0; i < 200 && best >= 1000000; i++) {
        int64_t t0 = sim_now();
        CHECK_EQ(sim_wait(s, -1, -1, 100000), SIM_WAIT_TIMEOUT);
        int64_t took = sim_now() - t0;
        CHECK_TRUE(took >= 100000);
        if (took < best)
            best = took;
    }
    CHECK_TRUE(best < 1000000);
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    close(sv[1]);
    CHECK_EQ(sim_wait(s, sv[0], -1, 10000000000LL), SIM_WAIT_GONE);
    close(sv[0]);
    uint64_t one = 1;
    CHECK_EQ(write(s->shutdown_fd, &one, sizeof one), (ssize_t)sizeof one);
    CHECK_EQ(sim_wait(s, -1, -1, -1), SIM_WAIT_SHUTDOWN);
    close(s->shutdown_fd);
    free(s);
}

/* tools.c: the simulated model's tool-call rule (docs/ollama-sim.md). */
static void test_tools(void)
{
    const char *tools = "[{\"type\":\"function\",\"function\":{\"name\":\"get_time\","
                        "\"parameters\":{\"properties\":{\"zone\":{\"type\":\"string\"}},"
                        "\"required\":[\"zone\"]}}},{\"type\":\"function\",\"function\":{\"name\":"
                        "\"get_weather\",\"parameters\":{\"properties\":{\"unit\":{\"enum\":[\"c\","
                        "\"f\"]},\"days\":{\"type\":\"integer\"},\"x\":{\"type\":\"number\"},"
                        "\"ok\":{\"type\":\"boolean\"},\"city\":{\"type\":\"string\"}},"
                        "\"required\":[\"unit\",\"days\",\"x\",\"ok\",\"city\"]}}}]";
    char body[2048], err[256];
    /* the first tool, unless the prompt names another */
    const char *prompts[][2] = {{"what time?", "[{\"function\":{\"name\":\"get_time\","
                                 "\"arguments\":{\"zone\":\"sim-zone\"}}}]"},
                                {"ask get_weather", "[{\"function\":{\"name\":\"get_weather\","
                                 "\"arguments\":{\"city\":\"sim-city\",\"days\":1,\"ok\":true,"
                                 "\"unit\":\"c\",\"x\":1.5}}}]"}};
    for (int i = 0; i < 2; i++) {
        snprintf(body, sizeof body,
                 "{\"tools\":%s,\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}",
                 tools, prompts[i][0]);
        json_t *in = json_loads(body, 0, NULL);
        REQUIRE(in);
        CHECK_EQ(sim_tools_check(in, err, sizeof err), 0);
        json_t *calls = sim_tools_call(in);
        char *txt = calls ? json_dumps(calls, JSON_COMPACT) : NULL;
        CHECK_STR(txt, prompts[i][1]);
        CHECK_TRUE(sim_tools_result_text(in) == NULL);
        free(txt);
        json_decref(calls);
        json_decref(in);
    }
    /* a tool result last: text quoting it, no call */
    snprintf(body, sizeof body, "{\"tools\":%s,\"messages\":[{\"role\":\"user\",\"content\":\"x\"},"
             "{\"role\":\"tool\",\"content\":\"12:00\",\"tool_name\":\"get_time\"}]}", tools);
    json_t *in = json_loads(body, 0, NULL);
    REQUIRE(in);
    CHECK_TRUE(sim_tools_call(in) == NULL);
    char *txt = sim_tools_result_text(in);
    CHECK_STR(txt, "The get_time tool said: 12:00. ");
    free(txt);
    json_decref(in);
    /* no tools: text */
    in = json_loads("{\"messages\":[{\"role\":\"user\",\"content\":\"get_time\"}]}", 0, NULL);
    CHECK_TRUE(sim_tools_call(in) == NULL);
    json_decref(in);
    /* wrongly typed: refused */
    const char *bad[] = {"{\"tools\":{}}", "{\"tools\":[{\"function\":{}}]}",
                         "{\"tools\":[{\"function\":{\"name\":\"f\",\"parameters\":1}}]}",
                         "{\"messages\":[{\"role\":\"tool\",\"tool_name\":1}]}",
                         "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":"
                         "{\"name\":\"f\",\"arguments\":\"{}\"}}]}]}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        in = json_loads(bad[i], 0, NULL);
        REQUIRE(in);
        CHECK_EQ(sim_tools_check(in, err, sizeof err), -1);
        json_decref(in);
    }
}

/* Images: counted when every one is strict base64, else refused with the
 * byte Go's decoder stops at. */
static void test_images(void)
{
    char err[128] = "";
    json_t *g = json_loads("{\"images\":[\"aGVsbG8=\",\"/wAB\"]}", 0, NULL);
    CHECK_EQ(sim_images(g, false, err, sizeof err), 2);
    json_decref(g);
    g = json_loads("{\"messages\":[{\"role\":\"user\",\"images\":[\"aGk=\"]},"
                   "{\"role\":\"user\",\"content\":\"x\"}]}", 0, NULL);
    CHECK_EQ(sim_images(g, true, err, sizeof err), 1);
    json_decref(g);
    const char *bad[] = {"{\"images\":[\"aGVsbG8\"]}", "{\"images\":[\"aG$sbG8=\"]}",
                         "{\"images\":[7]}", "{\"images\":\"aGk=\"}", "{\"images\":[\"a=Gk\"]}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        g = json_loads(bad[i], 0, NULL);
        err[0] = '\0';
        CHECK_EQ(sim_images(g, false, err, sizeof err), -1);
        CHECK_TRUE(err[0] != '\0');
        json_decref(g);
    }
    g = json_loads("{\"images\":[\"aG$sbG8=\"]}", 0, NULL);
    sim_images(g, false, err, sizeof err);
    CHECK_STR(err, "illegal base64 data at input byte 2");
    json_decref(g);
}

int main(void)
{
    test_durations();
    test_sizes();
    test_textgen();
    test_embed();
    test_wait();
    test_tools();
    test_images();
    return TEST_DONE("ollama_sim_util");
}
