/*
 * test_gw_json.c - the gateway's JSON translation on its own: Ollama
 * bodies into InferenceRequest (presence of options kept, as the cache key
 * needs), the fields brokerctl sets, the same bytes as brokerctl's
 * requests (tl_infer_pack), bad bodies refused with a reason,
 * replies rendered in Ollama's shapes, base64 both ways.
 */
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "gw_json.h"
#include "test.h"
#include "tl_infer.h"

#include <stdlib.h>
#include <string.h>

static Agentbus__InferenceRequest *s_build(gw_kind_t kind, const char *body, gw_req_t *req)
{
    char err[256] = "";
    json_t *j = json_loads(body, 0, NULL);
    int rc = gw_req_from_json(kind, j, req, err, sizeof err);
    json_decref(j);
    CHECK_EQ(rc, 0);
    if (rc != 0) {
        printf("  err: %s\n", err);
        return NULL;
    }
    return agentbus__inference_request__unpack(NULL, req->pb_len, req->pb);
}

static void s_test_generate(void)
{
    gw_req_t req;
    Agentbus__InferenceRequest *ir = s_build(
        GW_GENERATE,
        "{\"model\":\"m1\",\"prompt\":\"hi\",\"system\":\"s\",\"keep_alive\":30,"
        "\"format\":{\"type\":\"object\"},\"images\":[\"aGVsbG8=\"],"
        "\"options\":{\"temperature\":0,\"seed\":7,\"num_ctx\":4096,\"stop\":[\"a\",\"b\"],"
        "\"mirostat\":1}}",
        &req);
    REQUIRE(ir && ir->generate);
    const Agentbus__GenerateRequest *g = ir->generate;
    CHECK_STR(req.model, "m1");
    CHECK_EQ(req.stream, 1); /* Ollama streams unless told not to */
    CHECK_EQ(g->has_stream_case, AGENTBUS__GENERATE_REQUEST__HAS_STREAM_STREAM);
    CHECK_EQ(g->stream, 1);
    CHECK_STR(g->prompt, "hi");
    CHECK_STR(g->system, "s");
    CHECK_STR(g->keep_alive, "30");
    CHECK_STR(g->format, "{\"type\":\"object\"}");
    CHECK_EQ(g->n_images, 1);
    CHECK_EQ(g->images[0].len, 5);
    CHECK_TRUE(memcmp(g->images[0].data, "hello", 5) == 0);
    REQUIRE(g->options);
    /* temperature 0 is present (not the same request as no temperature) */
    CHECK_EQ(g->options->has_temperature_case,
             AGENTBUS__INFERENCE_OPTIONS__HAS_TEMPERATURE_TEMPERATURE);
    CHECK_EQ(g->options->seed, 7);
    CHECK_EQ(g->options->num_ctx, 4096);
    CHECK_EQ(g->options->has_num_predict_case, 0);
    CHECK_EQ(g->options->n_stop, 2);
    CHECK_STR(g->options->stop[1], "b");
    /* an option without a typed field crosses as given (was dropped) */
    CHECK_STR(g->options->extra_json, "{\"mirostat\":1}");
    agentbus__inference_request__free_unpacked(ir, NULL);
    gw_req_free(&req);
}

static void s_test_chat_embed(void)
{
    gw_req_t req;
    Agentbus__InferenceRequest *ir =
        s_build(GW_CHAT,
                "{\"model\":\"m\",\"stream\":false,\"messages\":[{\"role\":\"system\","
                "\"content\":\"be brief\"},{\"role\":\"user\",\"content\":\"hi\"}]}",
                &req);
    REQUIRE(ir && ir->chat);
    CHECK_EQ(req.stream, 0);
    CHECK_EQ(ir->chat->n_messages, 2);
    CHECK_STR(ir->chat->messages[1]->content, "hi");
    CHECK_TRUE(ir->chat->options == NULL);
    agentbus__inference_request__free_unpacked(ir, NULL);
    gw_req_free(&req);

    ir = s_build(GW_EMBED, "{\"model\":\"e\",\"input\":[\"a\",\"b\"],\"truncate\":false}", &req);
    REQUIRE(ir && ir->embed);
    CHECK_EQ(ir->embed->n_input, 2);
    CHECK_EQ(ir->embed->has_truncate_case, AGENTBUS__EMBED_REQUEST__HAS_TRUNCATE_TRUNCATE);
    agentbus__inference_request__free_unpacked(ir, NULL);
    gw_req_free(&req);
    /* the older /api/embeddings sends "prompt" */
    ir = s_build(GW_EMBED, "{\"model\":\"e\",\"prompt\":\"one\"}", &req);
    REQUIRE(ir && ir->embed);
    CHECK_EQ(ir->embed->n_input, 1);
    CHECK_STR(ir->embed->input[0], "one");
    agentbus__inference_request__free_unpacked(ir, NULL);
    gw_req_free(&req);
}

static void s_test_refused(void)
{
    static const char *bad[] = {
        "[]", "{}", "{\"model\":\"\"}", "{\"model\":\"m\",\"prompt\":3}",
        "{\"model\":\"m\",\"stream\":\"yes\"}", "{\"model\":\"m\",\"prompt\":\"x\",\"options\":[]}",
        "{\"model\":\"m\",\"prompt\":\"x\",\"options\":{\"seed\":\"x\"}}",
        "{\"model\":\"m\",\"images\":[\"!!\"]}",
        "{\"model\":\"m\",\"prompt\":\"x\",\"options\":{\"stop\":[1]}}",
        "{\"model\":\"m\",\"keep_alive\":[]}",
        /* wrong JSON types are refused, not read as false or true */
        "{\"model\":\"m\",\"prompt\":\"x\",\"raw\":\"true\"}",
        "{\"model\":\"m\",\"prompt\":\"x\",\"raw\":1}",
        "{\"model\":\"m\",\"prompt\":\"x\",\"stream\":\"true\"}",
        "{\"model\":7,\"prompt\":\"x\"}",
        /* fields the bus does not carry: refused, not dropped */
        "{\"model\":\"m\",\"prompt\":\"x\",\"template\":\"{{ .Prompt }}\"}",
        /* logprobs and context: carried, but wrongly typed or out of range */
        "{\"model\":\"m\",\"prompt\":\"x\",\"logprobs\":1}",
        "{\"model\":\"m\",\"prompt\":\"x\",\"top_logprobs\":21}",
        "{\"model\":\"m\",\"prompt\":\"x\",\"top_logprobs\":-1}",
        "{\"model\":\"m\",\"prompt\":\"x\",\"top_logprobs\":\"3\"}",
        "{\"model\":\"m\",\"prompt\":\"x\",\"context\":\"1 2\"}",
        "{\"model\":\"m\",\"prompt\":\"x\",\"context\":[1,-2]}",
        "{\"model\":\"m\",\"prompt\":\"x\",\"context\":[1,2.5]}",
        "{\"model\":\"m\",\"prompt\":\"x\",\"context\":[4294967296]}",
        /* a real outside int64 where an integer goes: its C conversion was
         * undefined (INT64_MIN on x86), and the request went on with it */
        "{\"model\":\"m\",\"prompt\":\"x\",\"options\":{\"num_ctx\":1e300}}",
        "{\"model\":\"m\",\"prompt\":\"x\",\"options\":{\"seed\":-1e19}}",
        "{\"model\":\"m\",\"prompt\":\"x\",\"options\":{\"top_k\":9.3e18}}",
        "{\"model\":\"m\",\"prompt\":\"x\",\"keep_alive\":1e300}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        gw_req_t req;
        char err[256] = "";
        json_t *j = json_loads(bad[i], 0, NULL);
        CHECK_EQ(gw_req_from_json(GW_GENERATE, j, &req, err, sizeof err), -1);
        CHECK_TRUE(err[0] != '\0');
        json_decref(j);
    }
    gw_req_t req;
    char err[256];
    json_t *j = json_loads("{\"model\":\"m\",\"messages\":[{\"content\":\"no role\"}]}", 0, NULL);
    CHECK_EQ(gw_req_from_json(GW_CHAT, j, &req, err, sizeof err), -1);
    json_decref(j);
    /* dimensions crosses the bus; not a positive integer: a 400 */
    Agentbus__InferenceRequest *ir =
        s_build(GW_EMBED, "{\"model\":\"e\",\"input\":\"a\",\"dimensions\":16}", &req);
    REQUIRE(ir && ir->embed);
    CHECK_EQ(ir->embed->has_dimensions_case, AGENTBUS__EMBED_REQUEST__HAS_DIMENSIONS_DIMENSIONS);
    CHECK_EQ(ir->embed->dimensions, 16);
    agentbus__inference_request__free_unpacked(ir, NULL);
    gw_req_free(&req);
    j = json_loads("{\"model\":\"e\",\"input\":\"a\",\"dimensions\":0}", 0, NULL);
    CHECK_EQ(gw_req_from_json(GW_EMBED, j, &req, err, sizeof err), -1);
    CHECK_TRUE(strstr(err, "dimensions") != NULL);
    json_decref(j);
    static const char *bad_embed[] = {
        "{\"model\":\"e\",\"input\":\"a\",\"truncate\":\"false\"}",
        "{\"model\":\"e\",\"input\":\"a\",\"truncate\":0}",
    };
    for (size_t i = 0; i < sizeof bad_embed / sizeof bad_embed[0]; i++) {
        err[0] = '\0';
        j = json_loads(bad_embed[i], 0, NULL);
        CHECK_EQ(gw_req_from_json(GW_EMBED, j, &req, err, sizeof err), -1);
        CHECK_STR(err, "invalid truncate: expected a boolean (true or false)");
        json_decref(j);
    }
    j = json_loads("{\"model\":\"m\",\"prompt\":\"x\",\"raw\":\"yes\"}", 0, NULL);
    CHECK_EQ(gw_req_from_json(GW_GENERATE, j, &req, err, sizeof err), -1);
    CHECK_STR(err, "invalid raw: expected a boolean (true or false)");
    json_decref(j);
    j = json_loads("{\"model\":\"m\",\"messages\":[{\"role\":\"user\"}],\"top_logprobs\":21}",
                   0, NULL);
    CHECK_EQ(gw_req_from_json(GW_CHAT, j, &req, err, sizeof err), -1);
    CHECK_STR(err, "top_logprobs must be between 0 and 20"); /* Ollama's words */
    json_decref(j);
    /* their "off" values are fine */
    j = json_loads("{\"model\":\"m\",\"prompt\":\"x\",\"context\":[],\"template\":\"\","
                   "\"logprobs\":false,\"top_logprobs\":0}", 0, NULL);
    CHECK_EQ(gw_req_from_json(GW_GENERATE, j, &req, err, sizeof err), 0);
    gw_req_free(&req);
    json_decref(j);
    /* null is "not given", as before */
    j = json_loads("{\"model\":\"m\",\"prompt\":\"x\",\"raw\":null,\"stream\":null}", 0, NULL);
    CHECK_EQ(gw_req_from_json(GW_GENERATE, j, &req, err, sizeof err), 0);
    CHECK_EQ(req.stream, 1);
    gw_req_free(&req);
    json_decref(j);
}

/* A body of many messages (or images) builds whole: each takes a few
 * allocations kept until the request is packed, and a fixed table of 4,096
 * of them answered "out of memory" past ~2,050 messages with an image. */
static void s_test_many(void)
{
    enum { N = 5000 };
    json_t *msgs = json_array(), *imgs = json_array();
    for (int i = 0; i < N; i++) {
        json_array_append_new(msgs, json_pack("{s:s, s:s, s:[s]}", "role", "user", "content",
                                              "hi", "images", "aGVsbG8="));
        json_array_append_new(imgs, json_string("aGVsbG8="));
    }
    json_t *chat = json_pack("{s:s, s:o}", "model", "m", "messages", msgs);
    json_t *gen = json_pack("{s:s, s:s, s:o}", "model", "m", "prompt", "x", "images", imgs);
    gw_req_t req;
    char err[256] = "";
    CHECK_EQ(gw_req_from_json(GW_CHAT, chat, &req, err, sizeof err), 0);
    Agentbus__InferenceRequest *ir = agentbus__inference_request__unpack(NULL, req.pb_len, req.pb);
    REQUIRE(ir && ir->chat);
    CHECK_EQ(ir->chat->n_messages, N);
    CHECK_EQ(ir->chat->messages[N - 1]->n_images, 1);
    agentbus__inference_request__free_unpacked(ir, NULL);
    gw_req_free(&req);
    CHECK_EQ(gw_req_from_json(GW_GENERATE, gen, &req, err, sizeof err), 0);
    ir = agentbus__inference_request__unpack(NULL, req.pb_len, req.pb);
    REQUIRE(ir && ir->generate);
    CHECK_EQ(ir->generate->n_images, N);
    agentbus__inference_request__free_unpacked(ir, NULL);
    gw_req_free(&req);
    json_decref(chat);
    json_decref(gen);
}

/* Ollama's preload: no prompt (generate) or no messages (chat). */
static void s_test_load(void)
{
    gw_req_t req;
    Agentbus__InferenceRequest *ir = s_build(GW_GENERATE, "{\"model\":\"m\"}", &req);
    REQUIRE(ir);
    CHECK_EQ(ir->body_case, AGENTBUS__INFERENCE_REQUEST__BODY_LOAD);
    CHECK_STR(ir->load->model, "m");
    agentbus__inference_request__free_unpacked(ir, NULL);
    gw_req_free(&req);
    ir = s_build(GW_CHAT, "{\"model\":\"m\",\"messages\":[],\"keep_alive\":0}", &req);
    REQUIRE(ir);
    CHECK_EQ(ir->body_case, AGENTBUS__INFERENCE_REQUEST__BODY_UNLOAD);
    agentbus__inference_request__free_unpacked(ir, NULL);
    gw_req_free(&req);
    ir = s_build(GW_GENERATE, "{\"model\":\"m\",\"prompt\":\"\",\"keep_alive\":\"10m\"}", &req);
    REQUIRE(ir);
    CHECK_EQ(ir->body_case, AGENTBUS__INFERENCE_REQUEST__BODY_LOAD);
    CHECK_STR(ir->load->keep_alive, "10m");
    agentbus__inference_request__free_unpacked(ir, NULL);
    gw_req_free(&req);
}

/* O as a client gets it: dumped with the worker's JSON texts spliced in
 * (gw_raw.h; they are placeholders in O), parsed again. Takes O. */
static json_t *s_rendered(json_t *o)
{
    char *txt = gw_raw_dumps(o);
    json_t *r = txt ? json_loads(txt, 0, NULL) : NULL;
    free(txt);
    json_decref(o);
    return r;
}

static void s_test_replies(void)
{
    Agentbus__GenerateResponse g = AGENTBUS__GENERATE_RESPONSE__INIT;
    Agentbus__InferenceTimings t = AGENTBUS__INFERENCE_TIMINGS__INIT;
    g.model = "m";
    g.created_at = "2026-01-01T00:00:00Z";
    g.response = "tok";
    uint8_t buf[256];
    size_t n = agentbus__generate_response__pack(&g, buf);
    json_t *o = gw_ollama_reply(GW_GENERATE, buf, n, 0);
    REQUIRE(o);
    CHECK_TRUE(json_is_false(json_object_get(o, "done")));
    CHECK_TRUE(json_object_get(o, "eval_count") == NULL); /* only on the last chunk */
    json_decref(o);
    g.done = 1;
    g.done_reason = "stop";
    t.eval_count = 9;
    g.timings = &t;
    n = agentbus__generate_response__pack(&g, buf);
    o = gw_ollama_reply(GW_GENERATE, buf, n, 0);
    REQUIRE(o);
    CHECK_EQ(json_integer_value(json_object_get(o, "eval_count")), 9);
    CHECK_STR(json_string_value(json_object_get(o, "done_reason")), "stop");
    json_decref(o);

    Agentbus__EmbedResponse e = AGENTBUS__EMBED_RESPONSE__INIT;
    Agentbus__Embedding v = AGENTBUS__EMBEDDING__INIT, *vp = &v;
    float vals[2] = {0.5f, -1.0f};
    v.values = vals;
    v.n_values = 2;
    e.model = "e";
    e.embeddings = &vp;
    e.n_embeddings = 1;
    n = agentbus__embed_response__pack(&e, buf);
    o = s_rendered(gw_ollama_reply(GW_EMBED, buf, n, 1)); /* the values are text */
    REQUIRE(o);
    CHECK_TRUE(json_real_value(json_array_get(json_object_get(o, "embedding"), 1)) == -1.0);
    json_decref(o);
    CHECK_TRUE(gw_ollama_reply(GW_CHAT, "\xff\xff\xff", 3, 0) == NULL);
}

#define FFFD "\xEF\xBF\xBD"

/* Packs into BUF a GenerateResponse of MODEL with RESPONSE and THINKING,
 * the final one (done) when DONE_REASON is not NULL; returns its length. */
static size_t s_pack_generate(const char *model, const char *response, const char *thinking,
                              const char *done_reason, uint8_t *buf)
{
    Agentbus__GenerateResponse g = AGENTBUS__GENERATE_RESPONSE__INIT;
    g.model = (char *)model;
    g.created_at = "t";
    g.response = (char *)response;
    g.thinking = (char *)thinking;
    g.done = done_reason != NULL;
    if (done_reason)
        g.done_reason = (char *)done_reason;
    return agentbus__generate_response__pack(&g, buf);
}

/* Packs into BUF a ChatResponse (model "m") whose assistant message has
 * CONTENT and THINKING; returns its length. */
static size_t s_pack_chat(const char *content, const char *thinking, uint8_t *buf)
{
    Agentbus__ChatResponse c = AGENTBUS__CHAT_RESPONSE__INIT;
    Agentbus__ChatMessage m = AGENTBUS__CHAT_MESSAGE__INIT;
    m.role = "assistant";
    m.content = (char *)content;
    m.thinking = (char *)thinking;
    c.model = "m";
    c.created_at = "t";
    c.message = &m;
    return agentbus__chat_response__pack(&c, buf);
}

/* A hostile worker's text that is not UTF-8 (jansson refuses it): each bad
 * byte becomes U+FFFD, the rest and control characters stay, and the
 * answer is rendered rather than lost; nested and repeated texts too. */
static void s_test_not_utf8(void)
{
    uint8_t buf[512];
    size_t n = s_pack_generate("m\xff", "a\xC3(b\r\x01 \xE2\x82\xAC", "\xED\xA0\x80",
                               "stop\xFE", buf);
    char *line = NULL;
    size_t line_len = 0;
    CHECK_EQ(gw_ollama_line(GW_GENERATE, buf, n, &line, &line_len), 0);
    json_t *o = gw_ollama_reply(GW_GENERATE, buf, n, 0);
    REQUIRE(o);
    CHECK_STR(json_string_value(json_object_get(o, "model")), "m" FFFD);
    CHECK_STR(json_string_value(json_object_get(o, "response")),
              "a" FFFD "(b\r\x01 \xE2\x82\xAC");
    CHECK_STR(json_string_value(json_object_get(o, "thinking")), FFFD FFFD FFFD);
    CHECK_STR(json_string_value(json_object_get(o, "done_reason")), "stop" FFFD);
    json_decref(o);

    n = s_pack_chat("\x80hi", "", buf);
    o = gw_ollama_reply(GW_CHAT, buf, n, 0);
    REQUIRE(o);
    CHECK_STR(json_string_value(json_object_get(json_object_get(o, "message"), "content")),
              FFFD "hi");
    json_decref(o);

    Agentbus__EmbedResponse e = AGENTBUS__EMBED_RESPONSE__INIT;
    e.model = "e\xC0";
    n = agentbus__embed_response__pack(&e, buf);
    o = gw_ollama_reply(GW_EMBED, buf, n, 0);
    REQUIRE(o);
    CHECK_STR(json_string_value(json_object_get(o, "model")), "e" FFFD);
    json_decref(o);

    /* a repeated message holding a map (a worker list's labels) */
    Agentbus__WorkerInfo w = AGENTBUS__WORKER_INFO__INIT, *wp = &w;
    Agentbus__WorkerInfo__LabelsEntry l = AGENTBUS__WORKER_INFO__LABELS_ENTRY__INIT, *lp = &l;
    Agentbus__WorkerList wl = AGENTBUS__WORKER_LIST__INIT;
    w.service = "ollama\xF8";
    l.key = "model";
    l.value = "\xF5x";
    w.labels = &lp;
    w.n_labels = 1;
    wl.workers = &wp;
    wl.n_workers = 1;
    n = agentbus__worker_list__pack(&wl, buf);
    Agentbus__WorkerList *got = gw_pb_unpack(&agentbus__worker_list__descriptor, n, buf);
    REQUIRE(got && got->n_workers == 1 && got->workers[0]->n_labels == 1);
    CHECK_STR(got->workers[0]->service, "ollama" FFFD);
    CHECK_STR(got->workers[0]->labels[0]->key, "model");
    CHECK_STR(got->workers[0]->labels[0]->value, FFFD "x");
    agentbus__worker_list__free_unpacked(got, NULL);
}

/* think crosses as text (true / false / a level), a history message's
 * thinking too; a wrongly typed think is a 400; a reply's thinking is
 * rendered (and a streamed thinking piece is not taken by the fast line). */
static void s_test_think(void)
{
    gw_req_t req;
    Agentbus__InferenceRequest *ir =
        s_build(GW_GENERATE, "{\"model\":\"m\",\"prompt\":\"p\",\"think\":true}", &req);
    REQUIRE(ir && ir->generate);
    CHECK_STR(ir->generate->think, "true");
    agentbus__inference_request__free_unpacked(ir, NULL);
    gw_req_free(&req);
    /* truncate and shift: presence kept */
    ir = s_build(GW_GENERATE, "{\"model\":\"m\",\"prompt\":\"p\",\"truncate\":false}", &req);
    REQUIRE(ir && ir->generate);
    CHECK_EQ(ir->generate->has_truncate_case, AGENTBUS__GENERATE_REQUEST__HAS_TRUNCATE_TRUNCATE);
    CHECK_EQ(ir->generate->truncate, 0);
    CHECK_EQ(ir->generate->has_shift_case, 0);
    agentbus__inference_request__free_unpacked(ir, NULL);
    gw_req_free(&req);
    ir = s_build(GW_CHAT, "{\"model\":\"m\",\"shift\":false,\"messages\":[{\"role\":\"user\"}]}",
                 &req);
    REQUIRE(ir && ir->chat);
    CHECK_EQ(ir->chat->has_shift_case, AGENTBUS__CHAT_REQUEST__HAS_SHIFT_SHIFT);
    agentbus__inference_request__free_unpacked(ir, NULL);
    gw_req_free(&req);
    ir = s_build(GW_CHAT, "{\"model\":\"m\",\"think\":\"high\",\"messages\":[{\"role\":"
                          "\"assistant\",\"content\":\"a\",\"thinking\":\"t\"}]}", &req);
    REQUIRE(ir && ir->chat);
    CHECK_STR(ir->chat->think, "high");
    CHECK_STR(ir->chat->messages[0]->thinking, "t");
    agentbus__inference_request__free_unpacked(ir, NULL);
    gw_req_free(&req);
    char err[256];
    json_t *j = json_loads("{\"model\":\"m\",\"prompt\":\"p\",\"think\":1}", 0, NULL);
    CHECK_EQ(gw_req_from_json(GW_GENERATE, j, &req, err, sizeof err), -1);
    CHECK_TRUE(strstr(err, "think") != NULL);
    json_decref(j);

    uint8_t buf[256];
    size_t n = s_pack_generate("m", "", "Let", NULL, buf);
    char *line = NULL;
    size_t line_len = 0;
    CHECK_EQ(gw_ollama_line(GW_GENERATE, buf, n, &line, &line_len), 0);
    json_t *o = gw_ollama_reply(GW_GENERATE, buf, n, 0);
    REQUIRE(o);
    CHECK_STR(json_string_value(json_object_get(o, "thinking")), "Let");
    json_decref(o);
    n = s_pack_chat("", " me", buf);
    CHECK_EQ(gw_ollama_line(GW_CHAT, buf, n, &line, &line_len), 0);
    o = gw_ollama_reply(GW_CHAT, buf, n, 0);
    REQUIRE(o);
    CHECK_STR(json_string_value(json_object_get(json_object_get(o, "message"), "thinking")), " me");
    json_decref(o);
}

/* gw_ollama_line writes what jansson would: the same bytes for the
 * common chunks (escapes included), and declines what it does not cover. */
static void s_test_line(void)
{
    static const char *texts[] = {"tok", " with \"quotes\" and \\", "tab\there\nnl\r\b\f",
                                  "ctl \x01\x1f end", "", "a/b <x> {y}"};
    uint8_t buf[512];
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        for (int chat = 0; chat < 2; chat++) {
            size_t n;
            if (chat) {
                Agentbus__ChatResponse c = AGENTBUS__CHAT_RESPONSE__INIT;
                Agentbus__ChatMessage m = AGENTBUS__CHAT_MESSAGE__INIT;
                c.model = "llama3.1:8b";
                c.created_at = "2026-01-01T00:00:00Z";
                m.role = "assistant";
                m.content = (char *)texts[i];
                c.message = &m;
                n = agentbus__chat_response__pack(&c, buf);
            } else {
                Agentbus__GenerateResponse g = AGENTBUS__GENERATE_RESPONSE__INIT;
                g.model = "llama3.1:8b";
                g.created_at = "2026-01-01T00:00:00Z";
                g.response = (char *)texts[i];
                n = agentbus__generate_response__pack(&g, buf);
            }
            gw_kind_t kind = chat ? GW_CHAT : GW_GENERATE;
            json_t *o = gw_ollama_reply(kind, buf, n, 0);
            REQUIRE(o);
            char *want = json_dumps(o, JSON_COMPACT), *got = NULL;
            json_decref(o);
            size_t len = 0;
            REQUIRE(want);
            CHECK_EQ(gw_ollama_line(kind, buf, n, &got, &len), 1);
            REQUIRE(got);
            CHECK_EQ(len, strlen(want) + 1);
            CHECK_TRUE(strncmp(got, want, strlen(want)) == 0 && got[len - 1] == '\n');
            if (strncmp(got, want, strlen(want)) != 0)
                fprintf(stderr, "want %s\ngot  %.*s", want, (int)len, got);
            free(want);
            free(got);
        }
    }
    /* Not covered, left to jansson: a final chunk, non-ASCII, an embed. */
    Agentbus__GenerateResponse g = AGENTBUS__GENERATE_RESPONSE__INIT;
    g.model = "m";
    g.created_at = "t";
    g.response = "caf\xc3\xa9";
    size_t n = agentbus__generate_response__pack(&g, buf);
    char *line = NULL;
    size_t len = 0;
    CHECK_EQ(gw_ollama_line(GW_GENERATE, buf, n, &line, &len), 0);
    g.response = "x";
    g.done = 1;
    n = agentbus__generate_response__pack(&g, buf);
    CHECK_EQ(gw_ollama_line(GW_GENERATE, buf, n, &line, &len), 0);
    CHECK_EQ(gw_ollama_line(GW_EMBED, buf, n, &line, &len), 0);
    CHECK_EQ(gw_ollama_line(GW_CHAT, "\xff\xff\xff", 3, &line, &len), 0);
    CHECK_TRUE(line == NULL);
}

static void s_test_base64(void)
{
    for (size_t len = 0; len < 40; len++) {
        uint8_t in[40];
        for (size_t i = 0; i < len; i++)
            in[i] = (uint8_t)t_rand();
        char *s = tl_base64_encode(in, len);
        REQUIRE(s);
        size_t out_len = 99;
        uint8_t *out = tl_base64_decode(s, &out_len);
        REQUIRE(out);
        CHECK_EQ(out_len, len);
        CHECK_TRUE(memcmp(in, out, len) == 0);
        free(s);
        free(out);
    }
    size_t l;
    CHECK_TRUE(tl_base64_decode("a", &l) == NULL);
    CHECK_TRUE(tl_base64_decode("ab$d", &l) == NULL);
}

/* Packs what brokerctl builds (tools/brokerctl/infer.c) and checks that the
 * gateway sends the same bytes for the same call: one cache entry. */
static void s_same_bytes(const char *what, const tl_infer_t *ctl, gw_kind_t kind,
                         const char *body)
{
    size_t len = 0;
    uint8_t *a = tl_infer_pack(ctl, &len);
    gw_req_t req;
    char err[256] = "";
    json_t *j = json_loads(body, 0, NULL);
    CHECK_EQ(gw_req_from_json(kind, j, &req, err, sizeof err), 0);
    json_decref(j);
    REQUIRE(a != NULL);
    CHECK_U64(req.pb_len, len);
    if (req.pb_len != len || memcmp(req.pb, a, len) != 0)
        printf("  %s: brokerctl and gateway requests differ\n", what);
    CHECK_TRUE(req.pb_len == len && memcmp(req.pb, a, len) == 0);
    free(a);
    gw_req_free(&req);
}

static void s_test_same_as_brokerctl(void)
{
    /* brokerctl generate sim-small PROMPT --seed 7 */
    Agentbus__GenerateRequest g = AGENTBUS__GENERATE_REQUEST__INIT;
    Agentbus__InferenceOptions o = AGENTBUS__INFERENCE_OPTIONS__INIT;
    o.has_seed_case = AGENTBUS__INFERENCE_OPTIONS__HAS_SEED_SEED;
    o.seed = 7;
    g.prompt = "the same prompt";
    g.system = "";
    g.options = &o;
    s_same_bytes("generate", &(tl_infer_t){TL_INFER_GENERATE, "sim-small", 1, {.generate = &g}},
                 GW_GENERATE,
                 "{\"model\":\"sim-small\",\"prompt\":\"the same prompt\","
                 "\"options\":{\"seed\":7}}");
    /* brokerctl embed m a b */
    Agentbus__EmbedRequest e = AGENTBUS__EMBED_REQUEST__INIT;
    char *in[] = {"a", "b"};
    e.input = in;
    e.n_input = 2;
    s_same_bytes("embed", &(tl_infer_t){TL_INFER_EMBED, "m", 0, {.embed = &e}}, GW_EMBED,
                 "{\"model\":\"m\",\"input\":[\"a\",\"b\"]}");
    /* brokerctl models load W m */
    Agentbus__ModelCommand mc = AGENTBUS__MODEL_COMMAND__INIT;
    s_same_bytes("load", &(tl_infer_t){TL_INFER_LOAD, "m", 0, {.command = &mc}}, GW_GENERATE,
                 "{\"model\":\"m\"}");
    /* An unknown kind is refused, not packed. */
    size_t len = 1;
    CHECK_TRUE(tl_infer_pack(&(tl_infer_t){(tl_infer_kind_t)9, "m", 0, {NULL}}, &len) == NULL);
    CHECK_U64(len, 0);
}


/* Tool calling: tools, an assistant's tool_calls and a result's tool_name
 * reach the bus (as JSON text with sorted keys: the same tools in another
 * key order are the same request); malformed ones are refused naming the
 * field; a reply's tool_calls come back in Ollama's message, and a chunk
 * with tool calls is not rendered by the fixed-text fast path. */
static void s_test_tools(void)
{
    gw_req_t req;
    Agentbus__InferenceRequest *ir = s_build(
        GW_CHAT,
        "{\"model\":\"m\",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_time\","
        "\"parameters\":{\"type\":\"object\",\"required\":[\"zone\"]},\"description\":\"d\"}}],"
        "\"messages\":[{\"role\":\"user\",\"content\":\"time?\"},"
        "{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"function\":{\"name\":"
        "\"get_time\",\"arguments\":{\"zone\":\"UTC\"}}}]},"
        "{\"role\":\"tool\",\"content\":\"12:00\",\"tool_name\":\"get_time\"}]}",
        &req);
    REQUIRE(ir && ir->chat && ir->chat->n_messages == 3);
    const Agentbus__ChatRequest *c = ir->chat;
    CHECK_STR(c->tools_json, "[{\"function\":{\"description\":\"d\",\"name\":\"get_time\","
                             "\"parameters\":{\"required\":[\"zone\"],\"type\":\"object\"}},"
                             "\"type\":\"function\"}]");
    CHECK_STR(c->messages[0]->tool_calls_json, "");
    CHECK_STR(c->messages[1]->tool_calls_json,
              "[{\"function\":{\"arguments\":{\"zone\":\"UTC\"},\"name\":\"get_time\"}}]");
    CHECK_STR(c->messages[2]->tool_name, "get_time");
    CHECK_STR(c->messages[2]->content, "12:00");
    agentbus__inference_request__free_unpacked(ir, NULL);
    gw_req_free(&req);
    /* no tools, or an empty list: nothing set (the request stays as before) */
    ir = s_build(GW_CHAT, "{\"model\":\"m\",\"tools\":[],\"messages\":[{\"role\":\"user\"}]}",
                 &req);
    REQUIRE(ir && ir->chat);
    CHECK_STR(ir->chat->tools_json, "");
    agentbus__inference_request__free_unpacked(ir, NULL);
    gw_req_free(&req);

    static const char *bad[][2] = {
        {"\"tools\":{}", "invalid tools"},
        {"\"tools\":[3]", "invalid tools[0]"},
        {"\"tools\":[{\"type\":\"function\",\"function\":{\"description\":\"x\"}}]",
         "function.name"},
        {"\"tools\":[{\"function\":{\"name\":\"\"}}]", "function.name"},
        {"\"tools\":[{\"function\":{\"name\":\"f\",\"parameters\":[]}}]", "parameters"},
        {"\"tools\":[{\"type\":\"retrieval\",\"function\":{\"name\":\"f\"}}]", "type"},
        {"\"messages\":[{\"role\":\"assistant\",\"tool_calls\":{}}]", "tool_calls"},
        {"\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{}}]}]",
         "function.name"},
        {"\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":\"f\","
         "\"arguments\":\"{}\"}}]}]", "arguments"},
        {"\"messages\":[{\"role\":\"tool\",\"tool_name\":7}]", "tool_name"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char body[512], err[256] = "";
        snprintf(body, sizeof body, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\"}],%s}",
                 bad[i][0]);
        json_t *j = json_loads(body, 0, NULL);
        REQUIRE(j);
        CHECK_EQ(gw_req_from_json(GW_CHAT, j, &req, err, sizeof err), -1);
        CHECK_TRUE(strstr(err, bad[i][1]) != NULL);
        if (!strstr(err, bad[i][1]))
            fprintf(stderr, "  %s: '%s' lacks '%s'\n", body, err, bad[i][1]);
        json_decref(j);
    }

    /* A reply chunk carrying the model's calls. */
    Agentbus__ChatResponse r = AGENTBUS__CHAT_RESPONSE__INIT;
    Agentbus__ChatMessage m = AGENTBUS__CHAT_MESSAGE__INIT;
    r.model = "m";
    r.created_at = "t";
    m.role = "assistant";
    m.content = "";
    m.tool_calls_json = "[{\"function\":{\"arguments\":{\"zone\":\"UTC\"},\"name\":\"get_time\"}}]";
    r.message = &m;
    uint8_t buf[512];
    size_t n = agentbus__chat_response__pack(&r, buf);
    char *line = NULL;
    size_t len = 0;
    CHECK_EQ(gw_ollama_line(GW_CHAT, buf, n, &line, &len), 0);
    CHECK_TRUE(line == NULL);
    json_t *o = s_rendered(gw_ollama_reply(GW_CHAT, buf, n, 0));
    REQUIRE(o);
    json_t *calls = json_object_get(json_object_get(o, "message"), "tool_calls");
    CHECK_EQ(json_array_size(calls), 1);
    CHECK_STR(json_string_value(json_object_get(
                  json_object_get(json_object_get(json_array_get(calls, 0), "function"),
                                  "arguments"),
                  "zone")),
              "UTC");
    json_decref(o);
    /* without calls: no tool_calls key (the shape Ollama sends for text) */
    m.tool_calls_json = "";
    n = agentbus__chat_response__pack(&r, buf);
    o = gw_ollama_reply(GW_CHAT, buf, n, 0);
    REQUIRE(o);
    CHECK_TRUE(json_object_get(json_object_get(o, "message"), "tool_calls") == NULL);
    json_decref(o);
}

/* logprobs, top_logprobs and context cross the bus (they were a 400);
 * a context over GW_MAX_CONTEXT ids is a 400 naming it; a reply's
 * logprobs are rendered (whole, not by the fast line) and a final
 * generate's context too. */
static void s_test_logprobs(void)
{
    gw_req_t req;
    Agentbus__InferenceRequest *ir =
        s_build(GW_GENERATE, "{\"model\":\"m\",\"prompt\":\"p\",\"logprobs\":true,"
                             "\"top_logprobs\":20,\"context\":[0,5,4294967295]}", &req);
    REQUIRE(ir && ir->generate);
    CHECK_EQ(ir->generate->logprobs, 1);
    CHECK_EQ(ir->generate->top_logprobs, 20);
    REQUIRE(ir->generate->n_context == 3);
    CHECK_EQ(ir->generate->context[2], 4294967295u);
    agentbus__inference_request__free_unpacked(ir, NULL);
    gw_req_free(&req);
    ir = s_build(GW_CHAT, "{\"model\":\"m\",\"logprobs\":true,\"top_logprobs\":0,"
                          "\"messages\":[{\"role\":\"user\"}]}", &req);
    REQUIRE(ir && ir->chat);
    CHECK_EQ(ir->chat->logprobs, 1);
    CHECK_EQ(ir->chat->top_logprobs, 0);
    agentbus__inference_request__free_unpacked(ir, NULL);
    gw_req_free(&req);
    /* one id over the bound: 1 Mi + 1 zeros */
    size_t n = GW_MAX_CONTEXT + 1;
    json_t *ctx = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(ctx, json_integer(0));
    json_t *j = json_pack("{s:s, s:s, s:o}", "model", "m", "prompt", "p", "context", ctx);
    char err[256] = "";
    CHECK_EQ(gw_req_from_json(GW_GENERATE, j, &req, err, sizeof err), -1);
    CHECK_TRUE(strstr(err, "context") != NULL && strstr(err, "1048576") != NULL);
    json_array_remove(json_object_get(j, "context"), 0); /* at the bound: carried */
    CHECK_EQ(gw_req_from_json(GW_GENERATE, j, &req, err, sizeof err), 0);
    gw_req_free(&req);
    json_decref(j);

    static uint32_t ids[] = {9, 10};
    Agentbus__GenerateResponse g = AGENTBUS__GENERATE_RESPONSE__INIT;
    g.model = "m";
    g.created_at = "t";
    g.response = "a";
    g.logprobs_json = "[{\"logprob\":-0.5,\"token\":\"a\"}]";
    uint8_t buf[256];
    size_t len = agentbus__generate_response__pack(&g, buf);
    char *line = NULL;
    size_t line_len = 0;
    CHECK_EQ(gw_ollama_line(GW_GENERATE, buf, len, &line, &line_len), 0);
    json_t *o = s_rendered(gw_ollama_reply(GW_GENERATE, buf, len, 0));
    REQUIRE(o);
    json_t *e = json_array_get(json_object_get(o, "logprobs"), 0);
    CHECK_STR(json_string_value(json_object_get(e, "token")), "a");
    CHECK_TRUE(json_real_value(json_object_get(e, "logprob")) == -0.5);
    CHECK_TRUE(json_object_get(o, "context") == NULL); /* not final */
    json_decref(o);
    g.done = 1;
    g.done_reason = "stop";
    g.logprobs_json = "not json";
    g.n_context = 2;
    g.context = ids;
    len = agentbus__generate_response__pack(&g, buf);
    o = s_rendered(gw_ollama_reply(GW_GENERATE, buf, len, 0)); /* the context is text */
    REQUIRE(o);
    CHECK_TRUE(json_object_get(o, "logprobs") == NULL); /* not an array: left out */
    CHECK_EQ(json_array_size(json_object_get(o, "context")), 2);
    CHECK_EQ(json_integer_value(json_array_get(json_object_get(o, "context"), 1)), 10);
    json_decref(o);
    Agentbus__ChatResponse c = AGENTBUS__CHAT_RESPONSE__INIT;
    Agentbus__ChatMessage m = AGENTBUS__CHAT_MESSAGE__INIT;
    m.role = "assistant";
    m.content = "b";
    c.model = "m";
    c.created_at = "t";
    c.message = &m;
    c.logprobs_json = "[{\"logprob\":-1,\"token\":\"b\"}]";
    len = agentbus__chat_response__pack(&c, buf);
    CHECK_EQ(gw_ollama_line(GW_CHAT, buf, len, &line, &line_len), 0);
    o = s_rendered(gw_ollama_reply(GW_CHAT, buf, len, 0));
    REQUIRE(o);
    CHECK_EQ(json_array_size(json_object_get(o, "logprobs")), 1);
    json_decref(o);
}

/* A reply is decoded within AB_DECODE_BUDGET of its size: the most an honest
 * one takes (a context of one-byte ids, 4 bytes each decoded) passes;
 * millions of empty embeddings (a record each for 2 bytes) do not. */
static void s_test_decode_budget(void)
{
    size_t n = 1 << 20;
    uint32_t *ids = malloc(n * sizeof *ids);
    REQUIRE(ids);
    for (size_t i = 0; i < n; i++)
        ids[i] = 100;
    Agentbus__GenerateResponse g = AGENTBUS__GENERATE_RESPONSE__INIT;
    g.model = "m";
    g.done = 1;
    g.context = ids;
    g.n_context = n;
    size_t len = agentbus__generate_response__get_packed_size(&g);
    uint8_t *buf = malloc(len + 2 * (4 << 20) + 16);
    REQUIRE(buf);
    agentbus__generate_response__pack(&g, buf);
    Agentbus__GenerateResponse *back =
        gw_pb_decode(&agentbus__generate_response__descriptor, len, buf);
    CHECK_TRUE(back && back->n_context == n && back->context[n - 1] == 100);
    if (back)
        agentbus__generate_response__free_unpacked(back, NULL);
    len = 0;
    for (size_t i = 0; i < (size_t)4 << 20; i++) /* embeddings (field 2), each empty */
        buf[len++] = 0x12, buf[len++] = 0x00;
    /* the bytes decode (without a budget): the budget refuses them */
    Agentbus__EmbedResponse *all = agentbus__embed_response__unpack(NULL, len, buf);
    CHECK_TRUE(all && all->n_embeddings == (size_t)4 << 20);
    if (all)
        agentbus__embed_response__free_unpacked(all, NULL);
    CHECK_TRUE(gw_pb_decode(&agentbus__embed_response__descriptor, len, buf) == NULL);
    CHECK_TRUE(gw_pb_unpack(&agentbus__embed_response__descriptor, len, buf) == NULL);
    free(buf);
    free(ids);
}

int main(void)
{
    s_test_logprobs();
    s_test_think();
    s_test_generate();
    s_test_chat_embed();
    s_test_same_as_brokerctl();
    s_test_refused();
    s_test_many();
    s_test_load();
    s_test_replies();
    s_test_not_utf8();
    s_test_line();
    s_test_base64();
    s_test_tools();
    s_test_decode_budget();
    return TEST_DONE("gw_json");
}
