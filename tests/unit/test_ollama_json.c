/*
 * test_ollama_json.c - the Ollama backend's JSON translation on its own:
 * NDJSON split at every byte boundary, answers into typed messages, errors
 * in the stream, requests built from InferenceRequest, probe answers.
 */
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "ollama_json.h"
#include "test.h"

#include <stdint.h>

typedef struct {
    char lines[8][256];
    int n;
} s_lines_t;

static int s_collect(const char *line, size_t len, void *arg)
{
    s_lines_t *l = arg;
    if (l->n < 8)
        snprintf(l->lines[l->n], sizeof l->lines[0], "%.*s", (int)len, line);
    l->n++;
    return 0;
}

static void s_test_split(void)
{
    const char *in = "{\"a\":1}\n{\"b\":2}\r\n\n{\"c\":3}";
    size_t n = strlen(in);
    for (size_t cut1 = 0; cut1 <= n; cut1++) {
        for (size_t cut2 = cut1; cut2 <= n; cut2++) {
            wk_ndjson_t nd;
            s_lines_t l = {.n = 0};
            wk_ndjson_init(&nd, 1024);
            CHECK_EQ(wk_ndjson_feed(&nd, in, cut1, s_collect, &l), 0);
            CHECK_EQ(wk_ndjson_feed(&nd, in + cut1, cut2 - cut1, s_collect, &l), 0);
            CHECK_EQ(wk_ndjson_feed(&nd, in + cut2, n - cut2, s_collect, &l), 0);
            CHECK_EQ(l.n, 2); /* the last line has no newline yet */
            CHECK_EQ(wk_ndjson_finish(&nd, s_collect, &l), 0);
            CHECK_EQ(l.n, 3);
            CHECK_STR(l.lines[0], "{\"a\":1}");
            CHECK_STR(l.lines[1], "{\"b\":2}");
            CHECK_STR(l.lines[2], "{\"c\":3}");
            wk_ndjson_fini(&nd);
        }
    }
    /* a line over the bound is an error, not unbounded memory */
    wk_ndjson_t nd;
    s_lines_t l = {.n = 0};
    wk_ndjson_init(&nd, 8);
    CHECK_EQ(wk_ndjson_feed(&nd, "0123456789", 10, s_collect, &l), -1);
    wk_ndjson_fini(&nd);
}

static int s_count(const char *line, size_t len, void *arg)
{
    (void)line;
    *(size_t *)arg += len;
    return 0;
}

/* A line that grew the buffer past WK_NDJSON_KEEP_MAX does not keep it:
 * a slot's stream went on holding up to 16 MiB after one big line (32
 * slots: 512 MiB) until its request ended. A small line's buffer stays. */
static void s_test_split_shrinks(void)
{
    size_t big = (2u << 20) + 5, got = 0;
    char *line = malloc(big);
    REQUIRE(line);
    memset(line, 'x', big);
    wk_ndjson_t nd;
    wk_ndjson_init(&nd, 16u << 20);
    for (size_t i = 0; i < big; i += 4096) /* as curl hands it over: in pieces */
        CHECK_EQ(wk_ndjson_feed(&nd, line + i, big - i < 4096 ? big - i : 4096, s_count, &got), 0);
    CHECK_RANGE(nd.cap, big, 4 * big);
    CHECK_EQ(wk_ndjson_feed(&nd, "\n{\"a\"", 5, s_count, &got), 0);
    CHECK_EQ(got, big);
    CHECK_RANGE(nd.cap, 0, WK_NDJSON_KEEP_MAX); /* the rest of the stream holds little */
    CHECK_EQ(wk_ndjson_feed(&nd, ":1}\n", 4, s_count, &got), 0);
    CHECK_EQ(got, big + 7);
    size_t small = nd.cap;
    CHECK_RANGE(small, 1, WK_NDJSON_KEEP_MAX); /* kept for the next line */
    /* the same at the end of the stream, a last line without its newline */
    CHECK_EQ(wk_ndjson_feed(&nd, line, big, s_count, &got), 0);
    CHECK_RANGE(nd.cap, big, 4 * big);
    CHECK_EQ(wk_ndjson_finish(&nd, s_count, &got), 0);
    CHECK_EQ(got, 2 * big + 7);
    CHECK_RANGE(nd.cap, 0, WK_NDJSON_KEEP_MAX);
    wk_ndjson_fini(&nd);
    free(line);
}

static void s_test_generate_chunks(void)
{
    const char *part =
        "{\"model\":\"m\",\"created_at\":\"t\",\"response\":\" ipsum\",\"done\":false}";
    wk_ol_chunk_t c;
    CHECK_EQ(wk_ol_chunk_parse(WK_OL_GENERATE, part, strlen(part), "w1", &c), 0);
    CHECK_EQ(c.done, 0);
    CHECK_STR(c.error, "");
    Agentbus__GenerateResponse *g = agentbus__generate_response__unpack(NULL, c.pb_len, c.pb);
    REQUIRE(g);
    CHECK_STR(g->response, " ipsum");
    CHECK_STR(g->model, "m");
    CHECK_TRUE(g->timings == NULL);
    agentbus__generate_response__free_unpacked(g, NULL);
    free(c.pb);

    const char *fin = "{\"model\":\"m\",\"response\":\"\",\"done\":true,\"done_reason\":\"stop\","
                      "\"total_duration\":123,\"load_duration\":4,\"prompt_eval_count\":5,"
                      "\"prompt_eval_duration\":6,\"eval_count\":7,\"eval_duration\":8}";
    CHECK_EQ(wk_ol_chunk_parse(WK_OL_GENERATE, fin, strlen(fin), "w1", &c), 0);
    CHECK_EQ(c.done, 1);
    g = agentbus__generate_response__unpack(NULL, c.pb_len, c.pb);
    REQUIRE(g && g->timings);
    CHECK_U64(g->timings->total_duration, 123);
    CHECK_U64(g->timings->eval_count, 7);
    CHECK_U64(g->timings->eval_duration, 8);
    CHECK_STR(g->done_reason, "stop");
    CHECK_STR(g->worker, "w1");
    agentbus__generate_response__free_unpacked(g, NULL);
    free(c.pb);

    const char *err = "{\"error\":\"simulated error mid-stream\"}";
    CHECK_EQ(wk_ol_chunk_parse(WK_OL_GENERATE, err, strlen(err), "w1", &c), 0);
    CHECK_STR(c.error, "simulated error mid-stream");
    CHECK_TRUE(c.pb == NULL);

    CHECK_EQ(wk_ol_chunk_parse(WK_OL_GENERATE, "{\"resp", 6, "w1", &c), -1);
    CHECK_TRUE(c.error[0] != '\0');
}

static void s_test_chat_embed(void)
{
    const char *chat = "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"Hi\"},"
                       "\"done\":false}";
    wk_ol_chunk_t c;
    CHECK_EQ(wk_ol_chunk_parse(WK_OL_CHAT, chat, strlen(chat), "w", &c), 0);
    Agentbus__ChatResponse *cr = agentbus__chat_response__unpack(NULL, c.pb_len, c.pb);
    REQUIRE(cr && cr->message);
    CHECK_STR(cr->message->content, "Hi");
    CHECK_STR(cr->message->role, "assistant");
    agentbus__chat_response__free_unpacked(cr, NULL);
    free(c.pb);

    const char *emb =
        "{\"model\":\"e\",\"embeddings\":[[0.5,-0.25],[1,0]],\"prompt_eval_count\":3}";
    CHECK_EQ(wk_ol_chunk_parse(WK_OL_EMBED, emb, strlen(emb), "w", &c), 0);
    CHECK_EQ(c.done, 1);
    Agentbus__EmbedResponse *er = agentbus__embed_response__unpack(NULL, c.pb_len, c.pb);
    REQUIRE(er && er->n_embeddings == 2);
    CHECK_EQ(er->embeddings[0]->n_values, 2);
    CHECK_TRUE(er->embeddings[0]->values[1] == -0.25f);
    CHECK_TRUE(er->embeddings[1]->values[0] == 1.0f);
    CHECK_U64(er->prompt_eval_count, 3);
    agentbus__embed_response__free_unpacked(er, NULL);
    free(c.pb);
}

static void s_test_build(void)
{
    Agentbus__InferenceRequest r = AGENTBUS__INFERENCE_REQUEST__INIT;
    Agentbus__GenerateRequest g = AGENTBUS__GENERATE_REQUEST__INIT;
    Agentbus__InferenceOptions o = AGENTBUS__INFERENCE_OPTIONS__INIT;
    char *stop[] = {"\n\n"};
    o.has_temperature_case = AGENTBUS__INFERENCE_OPTIONS__HAS_TEMPERATURE_TEMPERATURE;
    o.temperature = 0;
    o.has_seed_case = AGENTBUS__INFERENCE_OPTIONS__HAS_SEED_SEED;
    o.seed = 42;
    o.n_stop = 1;
    o.stop = stop;
    g.model = "llama3";
    g.prompt = "why?";
    g.options = &o;
    g.keep_alive = "10m";
    r.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_GENERATE;
    r.generate = &g;
    uint8_t buf[512];
    size_t len = agentbus__inference_request__pack(&r, buf);
    wk_ol_call_t call;
    char err[128];
    REQUIRE(wk_ol_call_build(buf, len, &call, err, sizeof err) == 0);
    CHECK_STR(call.path, "/api/generate");
    CHECK_STR(call.model, "llama3");
    CHECK_EQ(call.stream, 1); /* Ollama's default */
    CHECK_STR(call.body, "{\"prompt\":\"why?\",\"keep_alive\":\"10m\",\"options\":"
                         "{\"temperature\":0.0,\"seed\":42,\"stop\":[\"\\n\\n\"]},"
                         "\"model\":\"llama3\",\"stream\":true}");
    wk_ol_call_free(&call);

    /* the untyped options are added as given; a typed one wins a clash */
    o.extra_json = "{\"mirostat\":2,\"num_gpu\":1,\"seed\":9}";
    len = agentbus__inference_request__pack(&r, buf);
    REQUIRE(wk_ol_call_build(buf, len, &call, err, sizeof err) == 0);
    CHECK_TRUE(strstr(call.body, "\"seed\":42,\"stop\":[\"\\n\\n\"],\"mirostat\":2,"
                                 "\"num_gpu\":1}") != NULL);
    wk_ol_call_free(&call);
    o.extra_json = "";

    /* temperature absent stays absent (the backend's default applies) */
    o.has_temperature_case = 0;
    g.has_stream_case = AGENTBUS__GENERATE_REQUEST__HAS_STREAM_STREAM;
    g.stream = 0;
    len = agentbus__inference_request__pack(&r, buf);
    REQUIRE(wk_ol_call_build(buf, len, &call, err, sizeof err) == 0);
    CHECK_TRUE(strstr(call.body, "temperature") == NULL);
    /* Ollama streams it all the same: the worker puts the lines together
     * (a deadline mid-answer then says the backend had begun) */
    CHECK_TRUE(strstr(call.body, "\"stream\":true") != NULL);
    CHECK_EQ(call.stream, 0);
    wk_ol_call_free(&call);

    /* unload = keep_alive 0 on /api/generate */
    Agentbus__ModelCommand mc = AGENTBUS__MODEL_COMMAND__INIT;
    mc.model = "m";
    r.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_UNLOAD;
    r.unload = &mc;
    len = agentbus__inference_request__pack(&r, buf);
    REQUIRE(wk_ol_call_build(buf, len, &call, err, sizeof err) == 0);
    CHECK_EQ(call.kind, WK_OL_UNLOAD);
    CHECK_TRUE(strstr(call.body, "\"keep_alive\":0") != NULL);
    wk_ol_call_free(&call);

    /* keep_alive: whole decimal seconds are a number, anything else the
     * duration text Ollama reads (strtol made " 5" and "+5" 5, and a
     * number past LONG_MAX LONG_MAX) */
    static const struct {
        const char *ka, *want;
    } kas[] = {{"300", "\"keep_alive\":300"}, {"-1", "\"keep_alive\":-1"},
               {"+5", "\"keep_alive\":\"+5\""}, {" 5", "\"keep_alive\":\" 5\""},
               {"99999999999999999999", "\"keep_alive\":\"99999999999999999999\""}};
    r.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_LOAD;
    r.load = &mc;
    for (size_t i = 0; i < sizeof kas / sizeof kas[0]; i++) {
        mc.keep_alive = (char *)kas[i].ka;
        len = agentbus__inference_request__pack(&r, buf);
        REQUIRE(wk_ol_call_build(buf, len, &call, err, sizeof err) == 0);
        CHECK_TRUE(strstr(call.body, kas[i].want) != NULL);
        wk_ol_call_free(&call);
    }
    mc.keep_alive = "";

    /* an embed of no input goes on as input [] (Ollama then loads the
     * model and answers no embeddings); it was refused here */
    Agentbus__EmbedRequest em = AGENTBUS__EMBED_REQUEST__INIT;
    em.model = "e";
    r.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_EMBED;
    r.embed = &em;
    len = agentbus__inference_request__pack(&r, buf);
    REQUIRE(wk_ol_call_build(buf, len, &call, err, sizeof err) == 0);
    CHECK_STR(call.path, "/api/embed");
    CHECK_TRUE(strstr(call.body, "\"input\":[]") != NULL);
    wk_ol_call_free(&call);

    /* Text that is not UTF-8 is refused, naming its field: json_string
     * gave NULL and the field was left out (a prompt: a load, answered
     * empty with success; an embed's input: no embeddings). */
    g.prompt = "why \xff?";
    r.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_GENERATE;
    r.generate = &g; /* a oneof: r.embed above shares its place */
    len = agentbus__inference_request__pack(&r, buf);
    CHECK_EQ(wk_ol_call_build(buf, len, &call, err, sizeof err), -1);
    CHECK_STR(err, "the request's prompt is not UTF-8 text");
    g.prompt = "why?";
    char *in[] = {"ok", "\xc3("};
    em.n_input = 2;
    em.input = in;
    r.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_EMBED;
    r.embed = &em;
    len = agentbus__inference_request__pack(&r, buf);
    CHECK_EQ(wk_ol_call_build(buf, len, &call, err, sizeof err), -1);
    CHECK_STR(err, "the request's input is not UTF-8 text");
    em.n_input = 0;
    r.generate = &g;

    /* garbage and missing fields are refused with a reason */
    CHECK_EQ(wk_ol_call_build("\xff\xff\xff", 3, &call, err, sizeof err), -1);
    CHECK_TRUE(err[0] != '\0');
    g.prompt = "";
    r.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_GENERATE;
    len = agentbus__inference_request__pack(&r, buf);
    CHECK_EQ(wk_ol_call_build(buf, len, &call, err, sizeof err), -1);
}

static void s_test_probes(void)
{
    Agentbus__InferenceState st = AGENTBUS__INFERENCE_STATE__INIT;
    const char *tags = "{\"models\":[{\"name\":\"a:latest\",\"size\":100,\"digest\":\"d1\","
                       "\"details\":{\"family\":\"llama\"}},{\"name\":\"b:7b\",\"size\":200}]}";
    const char *ps = "{\"models\":[{\"name\":\"a:latest\",\"size\":100,\"size_vram\":90,"
                     "\"expires_at\":\"2026-11-25T12:02:40.311099661Z\"}]}";
    CHECK_EQ(wk_ol_parse_tags(tags, strlen(tags), &st), 0);
    CHECK_EQ(wk_ol_parse_tags(tags, strlen(tags), &st), 0); /* replaces, no leak */
    CHECK_EQ(wk_ol_parse_ps(ps, strlen(ps), &st), 0);
    CHECK_EQ(wk_ol_parse_version("{\"version\":\"0.5.7\"}", 19, &st), 0);
    CHECK_EQ(wk_ol_parse_ps("nope", 4, &st), -1);
    REQUIRE(st.n_models == 2 && st.n_loaded == 1);
    CHECK_STR(st.models[0]->digest, "d1");
    CHECK_STR(st.models[0]->family, "llama");
    CHECK_U64(st.models[1]->size, 200);
    CHECK_U64(st.loaded[0]->size_vram, 90);
    CHECK_STR(st.loaded[0]->expires_at, "2026-11-25T12:02:40Z");
    CHECK_STR(st.backend_version, "0.5.7");
    wk_ol_state_clear(&st);
}

/* A backend's lists as the broker takes them in a REGISTER (at most
 * register-max-models 1024 entries, strings of register-max-string-bytes
 * 1K, register-max-bytes 256K in all): a longer name, a string or a list
 * past them made the broker refuse the worker, which then exited. */
static void s_test_probes_bounded(void)
{
    Agentbus__InferenceState st = AGENTBUS__INFERENCE_STATE__INIT;
    static char big[1 << 20], name[2048], fam[2048];
    memset(name, 'n', 1500);
    memset(fam, 'f', 1500);
    memcpy(fam + WK_OL_STR_MAX - 1, "\xc3\xa9", 2); /* an é across the cut */
    snprintf(big, sizeof big,
             "{\"models\":[{\"name\":\"%s\"},{\"size\":1},3,null,{\"name\":\"ok:latest\","
             "\"digest\":\"%s\",\"details\":{\"family\":\"%s\"}}]}", name, fam, fam);
    CHECK_EQ(wk_ol_parse_tags(big, strlen(big), &st), 4); /* four left out */
    REQUIRE(st.n_models == 1);
    CHECK_STR(st.models[0]->name, "ok:latest");
    CHECK_EQ(strlen(st.models[0]->digest), WK_OL_STR_MAX - 1); /* whole characters */
    CHECK_EQ(strlen(st.models[0]->family), WK_OL_STR_MAX - 1);
    snprintf(big, sizeof big, "{\"version\":\"%s\"}", fam);
    CHECK_EQ(wk_ol_parse_version(big, strlen(big), &st), 0);
    CHECK_EQ(strlen(st.backend_version), WK_OL_STR_MAX - 1);
    /* the most a backend can list: 2000 entries of the longest strings */
    memset(name, 'n', AB_MODEL_MAX);
    name[AB_MODEL_MAX] = '\0';
    memset(fam, 'f', WK_OL_STR_MAX);
    fam[WK_OL_STR_MAX] = '\0';
    for (int list = 0; list < 2; list++) {
        size_t n = snprintf(big, sizeof big, "{\"models\":[");
        for (int i = 0; i < 2000 && n < sizeof big - 1024; i++)
            n += snprintf(big + n, sizeof big - n, "%s{\"name\":\"%.*s%04d\",\"digest\":\"%s\","
                          "\"expires_at\":\"%s\",\"details\":{\"family\":\"%s\","
                          "\"parameter_size\":\"%s\",\"quantization_level\":\"%s\"}}",
                          i ? "," : "", AB_MODEL_MAX - 4, name, i, fam, fam, fam, fam, fam);
        snprintf(big + n, sizeof big - n, "]}");
        CHECK_TRUE((list ? wk_ol_parse_ps(big, strlen(big), &st)
                         : wk_ol_parse_tags(big, strlen(big), &st)) > 0);
    }
    CHECK_TRUE(st.n_models > 0 && st.n_models <= 1024 && st.n_loaded > 0 && st.n_loaded <= 1024);
    CHECK_TRUE(strlen(st.models[0]->name) == AB_MODEL_MAX);
    CHECK_TRUE(agentbus__inference_state__get_packed_size(&st) < (256u << 10) - 4096);
    wk_ol_state_clear(&st);
    /* a plain long list: the first 1024 */
    size_t n = snprintf(big, sizeof big, "{\"models\":[");
    for (int i = 0; i < 2000; i++)
        n += snprintf(big + n, sizeof big - n, "%s{\"name\":\"m%d\"}", i ? "," : "", i);
    snprintf(big + n, sizeof big - n, "]}");
    CHECK_EQ(wk_ol_parse_tags(big, strlen(big), &st), 2000 - 1024);
    CHECK_EQ(st.n_models, 1024);
    CHECK_STR(st.models[1023]->name, "m1023");
    wk_ol_state_clear(&st);
}

/* Tool calling: the worker hands Ollama the tools, an assistant message's
 * tool_calls and a result's tool_name as Ollama's JSON (arrays and objects,
 * not strings), and carries the calls of Ollama's answer back; JSON text
 * that is not an array is refused, not dropped. */
static void s_test_tools(void)
{
    Agentbus__InferenceRequest r = AGENTBUS__INFERENCE_REQUEST__INIT;
    Agentbus__ChatRequest c = AGENTBUS__CHAT_REQUEST__INIT;
    Agentbus__ChatMessage u = AGENTBUS__CHAT_MESSAGE__INIT, a = AGENTBUS__CHAT_MESSAGE__INIT,
                          t = AGENTBUS__CHAT_MESSAGE__INIT;
    Agentbus__ChatMessage *msgs[] = {&u, &a, &t};
    u.role = "user";
    u.content = "time?";
    a.role = "assistant";
    a.content = "";
    a.tool_calls_json = "[{\"function\":{\"arguments\":{\"zone\":\"UTC\"},\"name\":\"get_time\"}}]";
    t.role = "tool";
    t.content = "12:00";
    t.tool_name = "get_time";
    c.model = "m";
    c.messages = msgs;
    c.n_messages = 3;
    c.tools_json = "[{\"function\":{\"name\":\"get_time\"},\"type\":\"function\"}]";
    c.has_stream_case = AGENTBUS__CHAT_REQUEST__HAS_STREAM_STREAM;
    c.stream = 0;
    r.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_CHAT;
    r.chat = &c;
    uint8_t buf[1024];
    size_t len = agentbus__inference_request__pack(&r, buf);
    wk_ol_call_t call;
    char err[128];
    REQUIRE(wk_ol_call_build(buf, len, &call, err, sizeof err) == 0);
    CHECK_STR(call.body,
              "{\"messages\":[{\"role\":\"user\",\"content\":\"time?\"},"
              "{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"function\":"
              "{\"arguments\":{\"zone\":\"UTC\"},\"name\":\"get_time\"}}]},"
              "{\"role\":\"tool\",\"content\":\"12:00\",\"tool_name\":\"get_time\"}],"
              "\"tools\":[{\"function\":{\"name\":\"get_time\"},\"type\":\"function\"}],"
              "\"model\":\"m\",\"stream\":true}");
    wk_ol_call_free(&call);
    c.tools_json = "{\"not\":\"an array\"}";
    len = agentbus__inference_request__pack(&r, buf);
    CHECK_EQ(wk_ol_call_build(buf, len, &call, err, sizeof err), -1);
    CHECK_TRUE(strstr(err, "tools") != NULL);
    c.tools_json = "";
    a.tool_calls_json = "[broken";
    len = agentbus__inference_request__pack(&r, buf);
    CHECK_EQ(wk_ol_call_build(buf, len, &call, err, sizeof err), -1);
    CHECK_TRUE(strstr(err, "tool_calls") != NULL);

    /* Ollama's answer with a call: carried as JSON text, keys sorted */
    const char *line = "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"\","
                       "\"tool_calls\":[{\"function\":{\"name\":\"get_time\",\"arguments\":"
                       "{\"zone\":\"UTC\",\"fmt\":\"24h\"}}}]},\"done\":false}";
    wk_ol_chunk_t ch;
    CHECK_EQ(wk_ol_chunk_parse(WK_OL_CHAT, line, strlen(line), "w", &ch), 0);
    Agentbus__ChatResponse *cr = agentbus__chat_response__unpack(NULL, ch.pb_len, ch.pb);
    REQUIRE(cr && cr->message);
    CHECK_STR(cr->message->tool_calls_json, "[{\"function\":{\"arguments\":{\"fmt\":\"24h\","
                                            "\"zone\":\"UTC\"},\"name\":\"get_time\"}}]");
    agentbus__chat_response__free_unpacked(cr, NULL);
    free(ch.pb);
}

/* Images (bytes on the bus) reach Ollama as base64 strings, on a generate
 * and on a chat message: before, the worker dropped them, and a vision
 * model answered without seeing the picture. */
static void s_test_images(void)
{
    Agentbus__InferenceRequest r = AGENTBUS__INFERENCE_REQUEST__INIT;
    Agentbus__GenerateRequest g = AGENTBUS__GENERATE_REQUEST__INIT;
    ProtobufCBinaryData im[2] = {{5, (uint8_t *)"hello"}, {3, (uint8_t *)"\xff\x00\x01"}};
    g.model = "llava";
    g.prompt = "what is in it?";
    g.n_images = 2;
    g.images = im;
    r.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_GENERATE;
    r.generate = &g;
    uint8_t buf[512];
    size_t len = agentbus__inference_request__pack(&r, buf);
    wk_ol_call_t call;
    char err[128];
    REQUIRE(wk_ol_call_build(buf, len, &call, err, sizeof err) == 0);
    CHECK_TRUE(strstr(call.body, "\"images\":[\"aGVsbG8=\",\"/wAB\"]") != NULL);
    wk_ol_call_free(&call);

    Agentbus__ChatRequest c = AGENTBUS__CHAT_REQUEST__INIT;
    Agentbus__ChatMessage m = AGENTBUS__CHAT_MESSAGE__INIT, *ms[1] = {&m};
    m.role = "user";
    m.content = "and this?";
    m.n_images = 1;
    m.images = im;
    c.model = "llava";
    c.n_messages = 1;
    c.messages = ms;
    r.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_CHAT;
    r.chat = &c;
    len = agentbus__inference_request__pack(&r, buf);
    REQUIRE(wk_ol_call_build(buf, len, &call, err, sizeof err) == 0);
    CHECK_TRUE(strstr(call.body, "\"images\":[\"aGVsbG8=\"]") != NULL);
    wk_ol_call_free(&call);
}

/* think goes to Ollama as it takes it (a boolean, or a level's string),
 * a history message's thinking too; the thinking Ollama answers comes
 * back in the reply (generate's "thinking", chat's message.thinking). */
static void s_test_think(void)
{
    Agentbus__InferenceRequest r = AGENTBUS__INFERENCE_REQUEST__INIT;
    Agentbus__GenerateRequest g = AGENTBUS__GENERATE_REQUEST__INIT;
    g.model = "m";
    g.prompt = "p";
    g.think = "true";
    r.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_GENERATE;
    r.generate = &g;
    uint8_t buf[512];
    size_t len = agentbus__inference_request__pack(&r, buf);
    wk_ol_call_t call;
    char err[128];
    REQUIRE(wk_ol_call_build(buf, len, &call, err, sizeof err) == 0);
    CHECK_TRUE(strstr(call.body, "\"think\":true") != NULL);
    CHECK_TRUE(strstr(call.body, "truncate") == NULL); /* absent: Ollama's default */
    wk_ol_call_free(&call);
    g.has_truncate_case = AGENTBUS__GENERATE_REQUEST__HAS_TRUNCATE_TRUNCATE;
    g.has_shift_case = AGENTBUS__GENERATE_REQUEST__HAS_SHIFT_SHIFT;
    len = agentbus__inference_request__pack(&r, buf);
    REQUIRE(wk_ol_call_build(buf, len, &call, err, sizeof err) == 0);
    CHECK_TRUE(strstr(call.body, "\"truncate\":false,\"shift\":false") != NULL);
    wk_ol_call_free(&call);
    Agentbus__ChatRequest c = AGENTBUS__CHAT_REQUEST__INIT;
    Agentbus__ChatMessage m = AGENTBUS__CHAT_MESSAGE__INIT, *mp = &m;
    m.role = "assistant";
    m.content = "a";
    m.thinking = "hmm";
    c.model = "m";
    c.messages = &mp;
    c.n_messages = 1;
    c.think = "low";
    r.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_CHAT;
    r.chat = &c;
    len = agentbus__inference_request__pack(&r, buf);
    REQUIRE(wk_ol_call_build(buf, len, &call, err, sizeof err) == 0);
    CHECK_TRUE(strstr(call.body, "\"think\":\"low\"") != NULL);
    CHECK_TRUE(strstr(call.body, "\"thinking\":\"hmm\"") != NULL);
    wk_ol_call_free(&call);

    const char *gl = "{\"model\":\"m\",\"response\":\"\",\"thinking\":\"Let\",\"done\":false}";
    wk_ol_chunk_t ch;
    CHECK_EQ(wk_ol_chunk_parse(WK_OL_GENERATE, gl, strlen(gl), "w", &ch), 0);
    Agentbus__GenerateResponse *gr = agentbus__generate_response__unpack(NULL, ch.pb_len, ch.pb);
    REQUIRE(gr);
    CHECK_STR(gr->thinking, "Let");
    agentbus__generate_response__free_unpacked(gr, NULL);
    free(ch.pb);
    const char *cl = "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"\","
                     "\"thinking\":\" me\"},\"done\":false}";
    CHECK_EQ(wk_ol_chunk_parse(WK_OL_CHAT, cl, strlen(cl), "w", &ch), 0);
    Agentbus__ChatResponse *cr = agentbus__chat_response__unpack(NULL, ch.pb_len, ch.pb);
    REQUIRE(cr && cr->message);
    CHECK_STR(cr->message->thinking, " me");
    agentbus__chat_response__free_unpacked(cr, NULL);
    free(ch.pb);
}

/* logprobs, top_logprobs and context go to Ollama only when set; a line's
 * logprobs come back as JSON text (keys sorted), a generate's final
 * context as its ids (an entry that is not an id is left out). */
static void s_test_logprobs(void)
{
    static uint32_t ids[] = {7, 8, 4000000000u};
    Agentbus__InferenceRequest r = AGENTBUS__INFERENCE_REQUEST__INIT;
    Agentbus__GenerateRequest g = AGENTBUS__GENERATE_REQUEST__INIT;
    g.model = "m";
    g.prompt = "p";
    r.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_GENERATE;
    r.generate = &g;
    uint8_t buf[512];
    size_t len = agentbus__inference_request__pack(&r, buf);
    wk_ol_call_t call;
    char err[128];
    REQUIRE(wk_ol_call_build(buf, len, &call, err, sizeof err) == 0);
    CHECK_TRUE(strstr(call.body, "logprobs") == NULL && strstr(call.body, "context") == NULL);
    wk_ol_call_free(&call);
    g.logprobs = 1;
    g.top_logprobs = 3;
    g.n_context = 3;
    g.context = ids;
    len = agentbus__inference_request__pack(&r, buf);
    REQUIRE(wk_ol_call_build(buf, len, &call, err, sizeof err) == 0);
    CHECK_TRUE(strstr(call.body, "\"logprobs\":true,\"top_logprobs\":3") != NULL);
    CHECK_TRUE(strstr(call.body, "\"context\":[7,8,4000000000]") != NULL);
    wk_ol_call_free(&call);

    const char *gl = "{\"model\":\"m\",\"response\":\" hi\",\"done\":false,\"logprobs\":"
                     "[{\"token\":\" hi\",\"logprob\":-0.5,\"bytes\":[32,104,105],"
                     "\"top_logprobs\":[{\"token\":\" hi\",\"logprob\":-0.5}]}]}";
    wk_ol_chunk_t ch;
    CHECK_EQ(wk_ol_chunk_parse(WK_OL_GENERATE, gl, strlen(gl), "w", &ch), 0);
    Agentbus__GenerateResponse *gr = agentbus__generate_response__unpack(NULL, ch.pb_len, ch.pb);
    REQUIRE(gr);
    CHECK_STR(gr->logprobs_json, "[{\"bytes\":[32,104,105],\"logprob\":-0.5,\"token\":\" hi\","
                                 "\"top_logprobs\":[{\"logprob\":-0.5,\"token\":\" hi\"}]}]");
    CHECK_EQ(gr->n_context, 0);
    agentbus__generate_response__free_unpacked(gr, NULL);
    free(ch.pb);
    const char *fl = "{\"model\":\"m\",\"response\":\"\",\"done\":true,\"context\":"
                     "[1,\"x\",-2,3,4294967296,5],\"eval_count\":1}";
    CHECK_EQ(wk_ol_chunk_parse(WK_OL_GENERATE, fl, strlen(fl), "w", &ch), 0);
    gr = agentbus__generate_response__unpack(NULL, ch.pb_len, ch.pb);
    REQUIRE(gr);
    REQUIRE(gr->n_context == 3);
    CHECK_EQ(gr->context[0], 1);
    CHECK_EQ(gr->context[1], 3);
    CHECK_EQ(gr->context[2], 5);
    CHECK_STR(gr->logprobs_json, "");
    agentbus__generate_response__free_unpacked(gr, NULL);
    free(ch.pb);
    const char *cl = "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"a\"},"
                     "\"done\":false,\"logprobs\":[{\"token\":\"a\",\"logprob\":-1}]}";
    CHECK_EQ(wk_ol_chunk_parse(WK_OL_CHAT, cl, strlen(cl), "w", &ch), 0);
    Agentbus__ChatResponse *cr = agentbus__chat_response__unpack(NULL, ch.pb_len, ch.pb);
    REQUIRE(cr);
    CHECK_STR(cr->logprobs_json, "[{\"logprob\":-1,\"token\":\"a\"}]");
    agentbus__chat_response__free_unpacked(cr, NULL);
    free(ch.pb);
}

/* Reals go out as short as their value allows (tl_json.h): Ollama's
 * logprobs are float32 values sent as float64, which the old "%.17g"
 * printed as -0.10536050051450729 where -0.1053605 is the same float; a
 * double that is no float keeps every bit (0.1, not 0.10000000000000001),
 * and so does a temperature sent to Ollama. */
static void s_test_short_reals(void)
{
    const char *cl = "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"a\"},"
                     "\"done\":false,\"logprobs\":[{\"token\":\"a\",\"logprob\":"
                     "-0.1053605005145073,\"top_logprobs\":[{\"token\":\"a\",\"logprob\":"
                     "-0.1053605005145073},{\"token\":\"b\",\"logprob\":-2.299999952316284},"
                     "{\"token\":\"c\",\"logprob\":-9.999999747378752e-06}]}]}";
    wk_ol_chunk_t ch;
    CHECK_EQ(wk_ol_chunk_parse(WK_OL_CHAT, cl, strlen(cl), "w", &ch), 0);
    Agentbus__ChatResponse *cr = agentbus__chat_response__unpack(NULL, ch.pb_len, ch.pb);
    REQUIRE(cr);
    CHECK_STR(cr->logprobs_json, "[{\"logprob\":-0.1053605,\"token\":\"a\",\"top_logprobs\":"
                                 "[{\"logprob\":-0.1053605,\"token\":\"a\"},{\"logprob\":-2.3,"
                                 "\"token\":\"b\"},{\"logprob\":-1e-5,\"token\":\"c\"}]}]");
    agentbus__chat_response__free_unpacked(cr, NULL);
    free(ch.pb);

    /* one entry that is no float: it keeps its digits, the others theirs */
    const char *gl = "{\"model\":\"m\",\"response\":\"a\",\"done\":false,\"logprobs\":"
                     "[{\"token\":\"a\",\"logprob\":0.1},{\"token\":\"b\",\"logprob\":"
                     "-0.123456789012345},{\"token\":\"c\",\"logprob\":-2.299999952316284}]}";
    CHECK_EQ(wk_ol_chunk_parse(WK_OL_GENERATE, gl, strlen(gl), "w", &ch), 0);
    Agentbus__GenerateResponse *gr = agentbus__generate_response__unpack(NULL, ch.pb_len, ch.pb);
    REQUIRE(gr);
    CHECK_STR(gr->logprobs_json, "[{\"logprob\":0.1,\"token\":\"a\"},{\"logprob\":"
                                 "-0.123456789012345,\"token\":\"b\"},{\"logprob\":-2.3,"
                                 "\"token\":\"c\"}]");
    agentbus__generate_response__free_unpacked(gr, NULL);
    free(ch.pb);

    Agentbus__InferenceRequest r = AGENTBUS__INFERENCE_REQUEST__INIT;
    Agentbus__GenerateRequest g = AGENTBUS__GENERATE_REQUEST__INIT;
    Agentbus__InferenceOptions o = AGENTBUS__INFERENCE_OPTIONS__INIT;
    o.has_temperature_case = AGENTBUS__INFERENCE_OPTIONS__HAS_TEMPERATURE_TEMPERATURE;
    o.temperature = 0.7;
    g.model = "m";
    g.prompt = "p";
    g.options = &o;
    r.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_GENERATE;
    r.generate = &g;
    uint8_t buf[256];
    size_t len = agentbus__inference_request__pack(&r, buf);
    wk_ol_call_t call;
    char err[128];
    REQUIRE(wk_ol_call_build(buf, len, &call, err, sizeof err) == 0);
    CHECK_TRUE(strstr(call.body, "\"temperature\":0.7}") != NULL);
    wk_ol_call_free(&call);
}

/* Decoding a line is bounded (WK_OL_DECODE_MAX), not its bytes alone:
 * jansson took ~24x a line of small numbers (a 14 MB "context" of 7M
 * ids: 335 MB). Such a line fails (-2); 16 MiB of embeddings (the line
 * bound, real floats) still decode. */
static void s_test_decode_bound(void)
{
    size_t cap = 17u << 20, n = 0;
    char *line = malloc(cap);
    REQUIRE(line);
    n += (size_t)sprintf(line, "{\"model\":\"m\",\"done\":true,\"context\":[");
    while (n < (14u << 20))
        n += (size_t)sprintf(line + n, "1,");
    n += (size_t)sprintf(line + n, "1]}");
    wk_ol_chunk_t c;
    CHECK_EQ(wk_ol_chunk_parse(WK_OL_GENERATE, line, n, "w", &c), -2);
    CHECK_TRUE(strstr(c.error, "to decode") != NULL);
    free(c.pb);
    n = (size_t)sprintf(line, "{\"model\":\"m\",\"embeddings\":[");
    size_t vecs = 0;
    uint32_t x = 1;
    while (n < (16u << 20) - 20000) {
        line[n++] = '[';
        for (int i = 0; i < 1024; i++) {
            x = x * 1103515245u + 12345u;
            n += (size_t)sprintf(line + n, "%s%.9g", i ? "," : "",
                                 ((double)(x >> 8) / (1 << 24) - 0.5) / 8);
        }
        n += (size_t)sprintf(line + n, "],");
        vecs++;
    }
    n += (size_t)sprintf(line + n - 1, "]}") - 1;
    CHECK_EQ(wk_ol_chunk_parse(WK_OL_EMBED, line, n, "w", &c), 0);
    Agentbus__EmbedResponse *er = agentbus__embed_response__unpack(NULL, c.pb_len, c.pb);
    CHECK_TRUE(er && er->n_embeddings == vecs && er->embeddings[0]->n_values == 1024);
    if (er)
        agentbus__embed_response__free_unpacked(er, NULL);
    free(c.pb);
    free(line);
}

/* The floor that refuses a line before its decode (wk_ol_decode_floor)
 * never passes what the decode takes: commas inside strings are not
 * counted (escaped quotes and backslashes too), true, false and null
 * (shared by jansson) count their slot only. A line of 16 MiB of nulls is
 * decoded (27 MB of slots), not refused. */
static void s_test_decode_floor(void)
{
    static const char j[] = "[1,2,\"a,b,c\",{\"k\":true,\"j\":null},[true, false]]";
    CHECK_EQ(wk_ol_decode_floor(j, sizeof j - 1), 5 * 32 + 8);
    static const char esc[] = "[\"x\\\",y\",\"a\\\\\",1]"; /* ["x\",y","a\\",1] */
    CHECK_EQ(wk_ol_decode_floor(esc, sizeof esc - 1), 2 * 32);
    CHECK_EQ(wk_ol_decode_floor("", 0), 0);
    CHECK_EQ(wk_ol_decode_floor("[1,", 3), 32); /* a comma at the end */
    size_t cap = 17u << 20, n = 0;
    char *line = malloc(cap);
    REQUIRE(line);
    n += (size_t)sprintf(line, "{\"model\":\"m\",\"done\":true,\"x\":[");
    while (n < (16u << 20) - 16)
        n += (size_t)sprintf(line + n, "null,");
    n += (size_t)sprintf(line + n, "null]}");
    CHECK_TRUE(wk_ol_decode_floor(line, n) < WK_OL_DECODE_MAX);
    wk_ol_chunk_t c;
    CHECK_EQ(wk_ol_chunk_parse(WK_OL_GENERATE, line, n, "w", &c), 0);
    free(c.pb);
    free(line);
}

/* A client's request is decoded within AB_DECODE_BUDGET of its size: a
 * chat request of 4 Mi empty messages (8 MiB; a protobuf-c record each,
 * hundreds of MB) is refused, while a generate's context of one-byte ids
 * (4 bytes each decoded, the most an honest request takes) is built. */
static void s_test_request_budget(void)
{
    size_t n = (size_t)4 << 20, len = 0;
    uint8_t *buf = malloc(2 * n + 16);
    REQUIRE(buf);
    buf[len++] = 0x12; /* InferenceRequest.chat */
    size_t inner = 2 * n;
    for (size_t v = inner; ; v >>= 7) { /* its length, a varint */
        buf[len++] = (uint8_t)((v & 0x7f) | (v >> 7 ? 0x80 : 0));
        if (!(v >> 7))
            break;
    }
    for (size_t i = 0; i < n; i++) /* ChatRequest.messages, each empty */
        buf[len++] = 0x12, buf[len++] = 0x00;
    wk_ol_call_t call;
    char err[160];
    CHECK_EQ(wk_ol_call_build(buf, len, &call, err, sizeof err), -1);
    CHECK_TRUE(strstr(err, "more than 4x its size") != NULL);
    Agentbus__InferenceRequest *all = agentbus__inference_request__unpack(NULL, len, buf);
    CHECK_TRUE(all && all->chat && all->chat->n_messages == n); /* the bytes do decode */
    if (all)
        agentbus__inference_request__free_unpacked(all, NULL);
    free(buf);
    Agentbus__InferenceRequest r = AGENTBUS__INFERENCE_REQUEST__INIT;
    Agentbus__GenerateRequest g = AGENTBUS__GENERATE_REQUEST__INIT;
    uint32_t *ids = calloc(n, sizeof *ids);
    REQUIRE(ids);
    g.model = "m";
    g.prompt = "p";
    g.context = ids; /* all 0: one byte each */
    g.n_context = n;
    r.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_GENERATE;
    r.generate = &g;
    buf = malloc(agentbus__inference_request__get_packed_size(&r));
    REQUIRE(buf);
    len = agentbus__inference_request__pack(&r, buf);
    CHECK_EQ(wk_ol_call_build(buf, len, &call, err, sizeof err), 0);
    wk_ol_call_free(&call);
    free(buf);
    free(ids);
}

int main(void)
{
    s_test_decode_floor();
    s_test_decode_bound();
    s_test_logprobs();
    s_test_short_reals();
    s_test_think();
    s_test_split();
    s_test_split_shrinks();
    s_test_generate_chunks();
    s_test_chat_embed();
    s_test_build();
    s_test_probes();
    s_test_probes_bounded();
    s_test_tools();
    s_test_images();
    s_test_request_budget();
    return TEST_DONE("ollama_json");
}
