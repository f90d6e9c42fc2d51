/*
 * test_ollama_assemble.c - a stream: false answer put together from
 * Ollama's streamed lines is, byte for byte, the message the worker made
 * of Ollama's own stream: false answer (same created_at here), for
 * generate and chat with thinking, logprobs, tool calls and context; and
 * what it keeps is bounded.
 */
#include "agentbus.pb-c.h"
#include "ollama_assemble.h"
#include "ollama_json.h"
#include "test.h"

#include <stdlib.h>
#include <string.h>

/* Feeds LINES (the last the done line) to an assembler of KIND and checks
 * its answer is what WHOLE (Ollama's stream: false object) parses to. */
static void s_check_same(wk_ol_kind_t kind, const char *const *lines, int n, const char *whole)
{
    wk_ol_asm_t *a = wk_ol_asm_new(kind, 1u << 20);
    REQUIRE(a != NULL);
    uint8_t *out = NULL;
    size_t out_len = 0;
    for (int i = 0; i < n; i++) {
        wk_ol_chunk_t c;
        REQUIRE(wk_ol_chunk_parse(kind, lines[i], strlen(lines[i]), "w1", &c) == 0);
        CHECK_EQ(c.done, i == n - 1);
        CHECK_EQ(wk_ol_asm_add(a, c.pb, c.pb_len, &out, &out_len), 0);
        CHECK_TRUE((out != NULL) == (i == n - 1));
        free(c.pb);
    }
    wk_ol_chunk_t w;
    REQUIRE(wk_ol_chunk_parse(kind, whole, strlen(whole), "w1", &w) == 0);
    REQUIRE(out != NULL);
    CHECK_EQ(out_len, w.pb_len);
    CHECK_TRUE(out_len == w.pb_len && memcmp(out, w.pb, out_len) == 0);
    free(w.pb);
    free(out);
    wk_ol_asm_destroy(&a);
    CHECK_TRUE(a == NULL);
}

#define S_HEAD "{\"model\":\"m\",\"created_at\":\"2026-12-07T04:00:00Z\","
#define S_LP(t) "\"logprobs\":[{\"token\":\"" t "\",\"logprob\":-0.25,\"bytes\":[1]}]"
#define S_TIMINGS "\"total_duration\":9,\"load_duration\":1,\"prompt_eval_count\":3," \
                  "\"prompt_eval_duration\":2,\"eval_count\":4,\"eval_duration\":5"

static void s_test_generate(void)
{
    const char *lines[] = {
        S_HEAD "\"response\":\"\",\"thinking\":\"Let\"," S_LP("Let") ",\"done\":false}",
        S_HEAD "\"response\":\"\",\"thinking\":\" me\"," S_LP(" me") ",\"done\":false}",
        S_HEAD "\"response\":\"Hello\"," S_LP("Hello") ",\"done\":false}",
        S_HEAD "\"response\":\" world\\n\\u00e9\"," S_LP(" world") ",\"done\":false}",
        S_HEAD "\"response\":\"\",\"done\":true,\"done_reason\":\"stop\",\"context\":[1,2,3],"
        S_TIMINGS "}",
    };
    const char *whole =
        S_HEAD "\"response\":\"Hello world\\n\\u00e9\",\"thinking\":\"Let me\","
        "\"logprobs\":[{\"token\":\"Let\",\"logprob\":-0.25,\"bytes\":[1]},"
        "{\"token\":\" me\",\"logprob\":-0.25,\"bytes\":[1]},"
        "{\"token\":\"Hello\",\"logprob\":-0.25,\"bytes\":[1]},"
        "{\"token\":\" world\",\"logprob\":-0.25,\"bytes\":[1]}],"
        "\"done\":true,\"done_reason\":\"stop\",\"context\":[1,2,3]," S_TIMINGS "}";
    s_check_same(WK_OL_GENERATE, lines, 5, whole);
    /* only the done line: the answer is that line */
    s_check_same(WK_OL_GENERATE, lines + 4, 1, lines[4]);
}

#define S_MSG(c) "\"message\":{\"role\":\"assistant\",\"content\":\"" c "\""
#define S_CALL(f) "{\"function\":{\"name\":\"" f "\",\"arguments\":{\"zone\":\"x\"}}}"

static void s_test_chat(void)
{
    const char *lines[] = {
        S_HEAD S_MSG("") ",\"thinking\":\"hmm\"}," S_LP("hmm") ",\"done\":false}",
        S_HEAD S_MSG("") ",\"tool_calls\":[" S_CALL("f") "]},\"done\":false}",
        S_HEAD S_MSG("") ",\"tool_calls\":[" S_CALL("g") "," S_CALL("h") "]},\"done\":false}",
        S_HEAD S_MSG("It is") "}," S_LP("It is") ",\"done\":false}",
        S_HEAD S_MSG(" noon.") "},\"done\":false}",
        S_HEAD S_MSG("") "},\"done\":true,\"done_reason\":\"stop\"," S_TIMINGS "}",
    };
    const char *whole =
        S_HEAD S_MSG("It is noon.") ",\"thinking\":\"hmm\",\"tool_calls\":["
        S_CALL("f") "," S_CALL("g") "," S_CALL("h") "]},"
        "\"logprobs\":[{\"token\":\"hmm\",\"logprob\":-0.25,\"bytes\":[1]},"
        "{\"token\":\"It is\",\"logprob\":-0.25,\"bytes\":[1]}],"
        "\"done\":true,\"done_reason\":\"stop\"," S_TIMINGS "}";
    s_check_same(WK_OL_CHAT, lines, 6, whole);
    /* a done line that names no role: the lines' */
    const char *noroles[] = {
        S_HEAD S_MSG("hi") "},\"done\":false}",
        S_HEAD "\"message\":{\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\"}",
    };
    s_check_same(WK_OL_CHAT, noroles, 2,
                 S_HEAD S_MSG("hi") "},\"done\":true,\"done_reason\":\"stop\"}");
}

/* What it keeps stops at its bound (-1: TOO_LARGE for the caller), and so
 * does the packed answer; a message that does not decode is -2. */
static void s_test_bounds(void)
{
    const char *piece = S_HEAD "\"response\":\"0123456789\",\"done\":false}";
    const char *done = S_HEAD "\"response\":\"\",\"done\":true,\"context\":[1,2,3,4,5,6]}";
    wk_ol_chunk_t c, d;
    REQUIRE(wk_ol_chunk_parse(WK_OL_GENERATE, piece, strlen(piece), "w", &c) == 0);
    REQUIRE(wk_ol_chunk_parse(WK_OL_GENERATE, done, strlen(done), "w", &d) == 0);
    wk_ol_asm_t *a = wk_ol_asm_new(WK_OL_GENERATE, 25);
    uint8_t *out;
    size_t out_len;
    CHECK_EQ(wk_ol_asm_add(a, c.pb, c.pb_len, &out, &out_len), 0);
    CHECK_EQ(wk_ol_asm_add(a, c.pb, c.pb_len, &out, &out_len), 0);
    CHECK_EQ(wk_ol_asm_add(a, c.pb, c.pb_len, &out, &out_len), -1); /* 30 > 25 */
    CHECK_TRUE(out == NULL);
    wk_ol_asm_destroy(&a);
    /* 20 bytes of text fit, the packed answer (model, created_at, ...) not */
    a = wk_ol_asm_new(WK_OL_GENERATE, 40);
    CHECK_EQ(wk_ol_asm_add(a, c.pb, c.pb_len, &out, &out_len), 0);
    CHECK_EQ(wk_ol_asm_add(a, c.pb, c.pb_len, &out, &out_len), 0);
    CHECK_EQ(wk_ol_asm_add(a, d.pb, d.pb_len, &out, &out_len), -1);
    CHECK_TRUE(out == NULL);
    wk_ol_asm_destroy(&a);
    a = wk_ol_asm_new(WK_OL_CHAT, 1000);
    const uint8_t junk[] = {0x0a, 0x7f, 0x01};
    CHECK_EQ(wk_ol_asm_add(a, junk, sizeof junk, &out, &out_len), -2);
    wk_ol_asm_destroy(&a);
    wk_ol_asm_destroy(&a); /* twice: a no-op */
    free(c.pb);
    free(d.pb);
}

int main(void)
{
    s_test_generate();
    s_test_chat();
    s_test_bounds();
    return TEST_DONE("ollama_assemble");
}
