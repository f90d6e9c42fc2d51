/* test_log.c - log lines: RFC 3339 UTC time with milliseconds, level,
 * subsystem, message; JSON lines that a JSON parser reads back to the same
 * strings (quotes, backslashes, control bytes, a message cut to fit); the
 * worker's tools/lib logger writes the same lines; nothing is formatted when
 * the level is off; the rate limiter counts what it drops. */
#define AB_LOG_SUBSYS "testsub"
#include "log.h"
#include "test.h"
#include "tl_log.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const struct timespec s_t = {1767323045, 678900000}; /* 2026-01-02T03:04:05.678Z */

static void s_text(void)
{
    char buf[256];
    size_t n = ab_log_format_line(buf, sizeof buf, AB_LOG_TEXT, AB_LOG_WARN, "router", &s_t,
                                  "peer gone");
    CHECK_STR(buf, "2026-01-02T03:04:05.678Z WARN  router    peer gone\n");
    CHECK_U64(n, strlen(buf));
    /* Levels out of range are clamped, not an out-of-bounds read. */
    ab_log_format_line(buf, sizeof buf, AB_LOG_TEXT, 9, "core", &s_t, "x");
    CHECK_TRUE(strstr(buf, " DEBUG core") != NULL);
    /* A message longer than the buffer is cut and the line still ends. */
    char big[600];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    n = ab_log_format_line(buf, sizeof buf, AB_LOG_TEXT, AB_LOG_INFO, "core", &s_t, big);
    CHECK_U64(n, strlen(buf));
    CHECK_TRUE(n < sizeof buf && buf[n - 1] == '\n');
}

/* A message carries names peers chose. A newline, a terminal escape, a C1
 * control or a byte that is not UTF-8 comes out as "\xNN" text, so a peer
 * cannot start a forged line or write to the operator's terminal; UTF-8
 * text and tabs stay as they are. */
static void s_text_hostile(void)
{
    char buf[512];
    const char *name = "x\n2026-12-05T00:00:00.000Z ERROR core      FORGED\x1b[31m \xff\xc2\x9b"
                       " caf\xc3\xa9\tok \xe2\x82 \xed\xa0\x80 \xf4\x90\x80\x80";
    char msg[256];
    snprintf(msg, sizeof msg, "worker '%s' registered", name);
    size_t n = ab_log_format_line(buf, sizeof buf, AB_LOG_TEXT, AB_LOG_INFO, "router", &s_t, msg);
    CHECK_U64(n, strlen(buf));
    CHECK_TRUE(memchr(buf, '\n', n - 1) == NULL); /* one line */
    CHECK_STR(buf, "2026-01-02T03:04:05.678Z INFO  router    worker 'x\\x0A2026-12-05T00:00:"
                   "00.000Z ERROR core      FORGED\\x1B[31m \\xFF\\xC2\\x9B caf\xc3\xa9\tok "
                   "\\xE2\\x82 \\xED\\xA0\\x80 \\xF4\\x90\\x80\\x80' registered\n");
}

/* Parses LINE as one JSON object and checks its four keys. */
static void s_json_check(const char *line, const char *level, const char *subsys, const char *msg)
{
    size_t n = strlen(line);
    REQUIRE(n > 0 && line[n - 1] == '\n');
    CHECK_TRUE(memchr(line, '\n', n - 1) == NULL); /* one line */
    json_error_t err;
    json_t *j = json_loads(line, 0, &err);
    REQUIRE(j != NULL);
    CHECK_STR(json_string_value(json_object_get(j, "ts")), "2026-01-02T03:04:05.678Z");
    CHECK_STR(json_string_value(json_object_get(j, "level")), level);
    CHECK_STR(json_string_value(json_object_get(j, "subsys")), subsys);
    if (msg)
        CHECK_STR(json_string_value(json_object_get(j, "msg")), msg);
    CHECK_U64(json_object_size(j), 4);
    json_decref(j);
}

static void s_json(void)
{
    char buf[512];
    const char *nasty = "say \"hi\" \\ tab\there\nnext \x01 end";
    ab_log_format_line(buf, sizeof buf, AB_LOG_JSON, AB_LOG_ERROR, "cache", &s_t, nasty);
    s_json_check(buf, "error", "cache", nasty);
    /* Bytes that are not UTF-8 would make the line invalid JSON: they come
     * out as the text \xNN; a C1 control as \u00NN; UTF-8 text as it is. */
    ab_log_format_line(buf, sizeof buf, AB_LOG_JSON, AB_LOG_WARN, "router", &s_t,
                       "name \xff\xfe\xc2\x9b caf\xc3\xa9 \xc3");
    s_json_check(buf, "warn", "router", "name \\xFF\\xFE\xc2\x9b caf\xc3\xa9 \\xC3");
    CHECK_TRUE(strstr(buf, "\\u009b") != NULL);
    /* Cut to fit: still one valid object, the message a prefix of the real one. */
    char big[1000];
    for (size_t i = 0; i < sizeof big - 1; i++)
        big[i] = i % 7 == 0 ? '"' : 'b';
    big[sizeof big - 1] = '\0';
    size_t n = ab_log_format_line(buf, 200, AB_LOG_JSON, AB_LOG_INFO, "core", &s_t, big);
    CHECK_TRUE(n < 200);
    s_json_check(buf, "info", "core", NULL);
    json_t *j = json_loads(buf, 0, NULL);
    const char *m = json_string_value(json_object_get(j, "msg"));
    CHECK_TRUE(m && strlen(m) > 50 && strncmp(m, big, strlen(m)) == 0);
    json_decref(j);
}

/* Runs WRITE (which logs one line to stderr) and returns that line in BUF. */
static void s_capture(void (*write)(int), int arg, char *buf, size_t cap)
{
    fflush(stderr);
    FILE *tmp = tmpfile();
    REQUIRE(tmp != NULL);
    int saved = dup(2);
    REQUIRE(saved >= 0 && dup2(fileno(tmp), 2) == 2);
    write(arg);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(tmp);
    if (!fgets(buf, (int)cap, tmp))
        buf[0] = '\0';
    fclose(tmp);
}

static void s_write_ab(int i)
{
    ab_log_write(AB_LOG_WARN, "worker", "line %d \"q\"", i);
}

static void s_write_tl(int i)
{
    TL_WARN("worker", "line %d \"q\"", i);
}

/* The worker's logger (tools/lib) writes exactly what the broker's does, in
 * both formats, each following its own format setting: the lines differ
 * only in their time stamp (24 characters, at the start or after {"ts":"). */
static void s_same_as_tools(void)
{
    for (int f = 0; f < 2; f++) {
        char a[256], b[256];
        ab_log_format = f;
        tl_log_format = f;
        s_capture(s_write_ab, f, a, sizeof a);
        s_capture(s_write_tl, f, b, sizeof b);
        size_t skip = f == AB_LOG_JSON ? 7 + 24 : 24;
        REQUIRE(strlen(a) > skip && strlen(b) > skip);
        CHECK_STR(a + skip, b + skip);
        CHECK_TRUE(strstr(a, f == AB_LOG_JSON ? "\"level\":\"warn\"" : " WARN ") != NULL);
        if (f == AB_LOG_JSON) {
            json_t *j = json_loads(b, 0, NULL);
            REQUIRE(j != NULL);
            CHECK_STR(json_string_value(json_object_get(j, "msg")), "line 1 \"q\"");
            json_decref(j);
        }
    }
    /* Each side follows its own setting, not the other's. */
    char a[256], b[256];
    ab_log_format = AB_LOG_TEXT;
    tl_log_format = TL_LOG_JSON;
    s_capture(s_write_ab, 2, a, sizeof a);
    s_capture(s_write_tl, 2, b, sizeof b);
    CHECK_TRUE(a[0] != '{' && b[0] == '{');
    tl_log_format = TL_LOG_TEXT;
}

static int s_formatted;
static int s_count(void)
{
    return ++s_formatted;
}

static void s_parse_and_levels(void)
{
    CHECK_EQ(ab_log_level_parse("WARN"), AB_LOG_WARN);
    CHECK_EQ(ab_log_level_parse("loud"), -1);
    CHECK_EQ(ab_log_format_parse("json"), AB_LOG_JSON);
    CHECK_EQ(ab_log_format_parse("Text"), AB_LOG_TEXT);
    CHECK_EQ(ab_log_format_parse("xml"), -1);
    CHECK_EQ(tl_log_level_parse("debug"), TL_LOG_DEBUG);
    CHECK_EQ(tl_log_format_parse("yaml"), -1);
    ab_log_level = AB_LOG_ERROR;
    tl_log_level = TL_LOG_ERROR;
    AB_DEBUG("%d", s_count());
    AB_INFO("%d", s_count());
    TL_WARN("worker", "%d", s_count());
    CHECK_EQ(s_formatted, 0); /* the arguments are not even evaluated */
    TL_ERR("worker", "expected test line %d", s_count());
    CHECK_EQ(s_formatted, 1); /* an enabled level is */
    ab_log_level = AB_LOG_INFO;
}

static void s_ratelimit(void)
{
    ab_ratelimit_t rl = {.interval_ms = 1000};
    uint64_t sup = 99;
    CHECK_EQ(ab_ratelimit_allow(&rl, 7, 5000, &sup), 1);
    CHECK_U64(sup, 0);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(ab_ratelimit_allow(&rl, 7, 5100, &sup), 0);
    CHECK_EQ(ab_ratelimit_allow(&rl, 7, 6000, &sup), 1);
    CHECK_U64(sup, 3);
}

int main(void)
{
    s_text();
    s_text_hostile();
    s_json();
    s_same_as_tools();
    s_parse_and_levels();
    s_ratelimit();
    return TEST_DONE("test_log");
}
