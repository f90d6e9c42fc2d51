/*
 * test_cache_key.c - cacheability and key canonicalisation (broker/
 * cache_key.c): field order on the wire does not change the key, fields
 * that do not change the output are left out, every field that does
 * changes it, and so does the model's digest.
 */
#include "agentbus.pb-c.h"
#include "cache_key.h"
#include "codec.h"
#include "test.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    uint8_t buf[4096];
    size_t len;
} s_pb_t;

static Agentbus__InferenceOptions s_opts;
static Agentbus__GenerateRequest s_gen;
static Agentbus__InferenceRequest s_req;

/* A deterministic generate request (temperature 0) to vary from. */
static void s_base(void)
{
    agentbus__inference_options__init(&s_opts);
    s_opts.has_temperature_case = AGENTBUS__INFERENCE_OPTIONS__HAS_TEMPERATURE_TEMPERATURE;
    s_opts.temperature = 0.0;
    s_opts.has_num_ctx_case = AGENTBUS__INFERENCE_OPTIONS__HAS_NUM_CTX_NUM_CTX;
    s_opts.num_ctx = 4096;
    agentbus__generate_request__init(&s_gen);
    s_gen.model = "llama3:8b";
    s_gen.prompt = "why is the sky blue?";
    s_gen.options = &s_opts;
    agentbus__inference_request__init(&s_req);
    s_req.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_GENERATE;
    s_req.generate = &s_gen;
}

static void s_pack(s_pb_t *pb)
{
    pb->len = agentbus__inference_request__pack(&s_req, pb->buf);
}

/* Key of the current s_req (or of PB when given). Returns its kind. */
static ab_key_kind_t s_key_of(const s_pb_t *pb, const char *digest, uint32_t flags,
                              ab_cache_key_t *k)
{
    s_pb_t local;
    if (!pb) {
        s_pack(&local);
        pb = &local;
    }
    ab_key_input_t in = {"ollama", "llama3:8b", digest, flags, pb->buf, pb->len, 0, 0};
    return ab_cache_key(&in, k);
}

static int s_same(const ab_cache_key_t *a, const ab_cache_key_t *b)
{
    return ab_cache_key_eq(a, b);
}

static void t_field_order(void)
{
    s_base();
    ab_cache_key_t k1, k2;
    CHECK_EQ(s_key_of(NULL, NULL, 0, &k1), AB_KEY_TYPED);
    /* The same request with its fields written in reverse order, as another
     * protobuf encoder may: fields 6 (options), 2 (prompt), 1 (model) of
     * GenerateRequest inside field 1 of InferenceRequest. */
    uint8_t opts[64];
    size_t ol = agentbus__inference_options__pack(&s_opts, opts);
    uint8_t gen[256];
    size_t gl = 0;
    gen[gl++] = 6 << 3 | 2;
    gen[gl++] = (uint8_t)ol;
    memcpy(gen + gl, opts, ol);
    gl += ol;
    gen[gl++] = 2 << 3 | 2;
    gen[gl++] = (uint8_t)strlen(s_gen.prompt);
    memcpy(gen + gl, s_gen.prompt, strlen(s_gen.prompt));
    gl += strlen(s_gen.prompt);
    gen[gl++] = 1 << 3 | 2;
    gen[gl++] = (uint8_t)strlen(s_gen.model);
    memcpy(gen + gl, s_gen.model, strlen(s_gen.model));
    gl += strlen(s_gen.model);
    s_pb_t pb;
    pb.len = 0;
    pb.buf[pb.len++] = 1 << 3 | 2;
    pb.buf[pb.len++] = (uint8_t)gl;
    memcpy(pb.buf + pb.len, gen, gl);
    pb.len += gl;
    s_pb_t orig;
    s_pack(&orig);
    CHECK_TRUE(pb.len == orig.len && memcmp(pb.buf, orig.buf, pb.len) != 0); /* really reordered */
    CHECK_EQ(s_key_of(&pb, NULL, 0, &k2), AB_KEY_TYPED);
    CHECK_TRUE(s_same(&k1, &k2));
    /* Options too: temperature after num_ctx on the wire. */
    uint8_t o2[64];
    size_t o2l = 0;
    o2[o2l++] = 3 << 3 | 0;
    o2[o2l++] = 0x80;
    o2[o2l++] = 0x20; /* 4096 */
    o2[o2l++] = 1 << 3 | 1;
    memset(o2 + o2l, 0, 8); /* 0.0 */
    o2l += 8;
    CHECK_TRUE(o2l == ol && memcmp(o2, opts, ol) != 0);
    memcpy(pb.buf + 4, o2, o2l); /* options start after two tag+len pairs */
    CHECK_EQ(s_key_of(&pb, NULL, 0, &k2), AB_KEY_TYPED);
    CHECK_TRUE(s_same(&k1, &k2));
}

static void t_irrelevant_fields(void)
{
    s_base();
    ab_cache_key_t k1, k2;
    s_key_of(NULL, NULL, 0, &k1);
    s_gen.keep_alive = "30m"; /* how long the model stays loaded: same answer */
    CHECK_EQ(s_key_of(NULL, NULL, 0, &k2), AB_KEY_TYPED);
    CHECK_TRUE(s_same(&k1, &k2));
    s_opts.temperature = -0.0; /* the same temperature */
    CHECK_EQ(s_key_of(NULL, NULL, 0, &k2), AB_KEY_TYPED);
    CHECK_TRUE(s_same(&k1, &k2));
    /* Header flags that only say how to read the cache do not change the key. */
    CHECK_EQ(s_key_of(NULL, NULL, AB_FLAG_NO_CACHE, &k2), AB_KEY_TYPED);
    CHECK_TRUE(s_same(&k1, &k2));
    CHECK_EQ(s_key_of(NULL, NULL, AB_FLAG_CACHEABLE | AB_FLAG_NO_STORE, &k2), AB_KEY_TYPED);
    CHECK_TRUE(s_same(&k1, &k2));
}

/* Applies change I to the base request; returns 0 past the last one. */
static int s_change(int i)
{
    static const char *stop[] = {"\n"};
    static ProtobufCBinaryData img = {3, (uint8_t *)"png"};
    static const uint32_t ctx3[] = {1, 2, 3}, ctx3b[] = {1, 2, 256};
    s_base();
    switch (i) {
    case 0: s_gen.model = "llama3:70b"; return 1;
    case 1: s_gen.prompt = "why is the sky blue? "; return 1;
    case 2: s_gen.system = "be brief"; return 1;
    case 3: s_gen.format = "json"; return 1;
    case 4:
        s_gen.has_stream_case = AGENTBUS__GENERATE_REQUEST__HAS_STREAM_STREAM;
        s_gen.stream = 0;
        return 1;
    case 5: s_gen.raw = 1; return 1;
    case 6: s_gen.suffix = "end"; return 1;
    case 7: s_gen.n_images = 1; s_gen.images = &img; return 1;
    case 8: s_opts.num_ctx = 8192; return 1; /* context size */
    case 9: s_opts.has_num_ctx_case = 0; return 1;
    case 10:
        s_opts.has_seed_case = AGENTBUS__INFERENCE_OPTIONS__HAS_SEED_SEED;
        s_opts.seed = 7;
        return 1;
    case 11:
        s_opts.has_num_predict_case = AGENTBUS__INFERENCE_OPTIONS__HAS_NUM_PREDICT_NUM_PREDICT;
        s_opts.num_predict = 10;
        return 1;
    case 12:
        s_opts.has_top_k_case = AGENTBUS__INFERENCE_OPTIONS__HAS_TOP_K_TOP_K;
        s_opts.top_k = 40;
        return 1;
    case 13:
        s_opts.has_top_p_case = AGENTBUS__INFERENCE_OPTIONS__HAS_TOP_P_TOP_P;
        s_opts.top_p = 0.9;
        return 1;
    case 14: s_opts.n_stop = 1; s_opts.stop = (char **)stop; return 1;
    case 15:
        s_opts.has_repeat_penalty_case =
            AGENTBUS__INFERENCE_OPTIONS__HAS_REPEAT_PENALTY_REPEAT_PENALTY;
        s_opts.repeat_penalty = 1.1;
        return 1;
    case 16:
        s_opts.has_min_p_case = AGENTBUS__INFERENCE_OPTIONS__HAS_MIN_P_MIN_P;
        s_opts.min_p = 0.05;
        return 1;
    case 17:
        s_opts.has_num_predict_case = AGENTBUS__INFERENCE_OPTIONS__HAS_NUM_PREDICT_NUM_PREDICT;
        s_opts.num_predict = 0;
        return 1; /* present 0 != absent */
    case 18: s_opts.extra_json = "{\"mirostat\":2}"; return 1; /* an untyped option */
    case 19: s_opts.extra_json = "{\"mirostat\":2,\"num_gpu\":1}"; return 1;
    case 20: s_gen.think = "true"; return 1; /* a reasoning model thinks first */
    case 21: s_gen.think = "high"; return 1; /* a level thinks longer */
    case 22:
        s_gen.has_truncate_case = AGENTBUS__GENERATE_REQUEST__HAS_TRUNCATE_TRUNCATE;
        s_gen.truncate = 0;
        return 1; /* a 400, not a cut prompt */
    case 23:
        s_gen.has_shift_case = AGENTBUS__GENERATE_REQUEST__HAS_SHIFT_SHIFT;
        s_gen.shift = 0;
        return 1;
    case 24: s_gen.logprobs = 1; return 1; /* the answer carries logprobs */
    case 25: s_gen.logprobs = 1; s_gen.top_logprobs = 2; return 1;
    case 26: s_gen.logprobs = 1; s_gen.top_logprobs = 3; return 1;
    case 27: s_gen.top_logprobs = 2; return 1; /* without logprobs: Ollama's to judge */
    case 28:
        s_gen.n_context = 3;
        s_gen.context = (uint32_t *)ctx3;
        return 1; /* an earlier answer */
    case 29: s_gen.n_context = 3; s_gen.context = (uint32_t *)ctx3b; return 1;
    case 30: s_gen.n_context = 2; s_gen.context = (uint32_t *)ctx3; return 1;
    default: return 0;
    }
}

static void t_relevant_fields(void)
{
    ab_cache_key_t keys[40];
    s_base();
    s_key_of(NULL, NULL, 0, &keys[0]);
    int n = 1;
    for (int i = 0; s_change(i); i++, n++) {
        CHECK_EQ(s_key_of(NULL, NULL, 0, &keys[n]), AB_KEY_TYPED);
        for (int j = 0; j < n; j++)
            if (s_same(&keys[j], &keys[n]))
                T_FAIL_("change %d gives the same key as %d", i, j - 1);
    }
    CHECK_EQ(n, 32);
    /* Same request to another service: another key. */
    s_base();
    s_pb_t pb;
    s_pack(&pb);
    ab_key_input_t in = {"ollama-b", "llama3:8b", NULL, 0, pb.buf, pb.len, 0, 0};
    ab_cache_key_t k;
    CHECK_EQ(ab_cache_key(&in, &k), AB_KEY_TYPED);
    CHECK_TRUE(!s_same(&k, &keys[0]));
}

static void t_digest(void)
{
    s_base();
    ab_cache_key_t none, d1, d2, d1b;
    s_key_of(NULL, NULL, 0, &none);
    s_key_of(NULL, "sha256:aaaa", 0, &d1);
    s_key_of(NULL, "sha256:bbbb", 0, &d2); /* the model was re-pulled */
    s_key_of(NULL, "sha256:aaaa", 0, &d1b);
    CHECK_TRUE(!s_same(&none, &d1));
    CHECK_TRUE(!s_same(&d1, &d2));
    CHECK_TRUE(s_same(&d1, &d1b));
}

/* A client that cannot read lz4 never shares entries with those that can:
 * a cached reply keeps the compression it travelled with. */
static void t_plain_only(void)
{
    s_base();
    s_pb_t pb;
    s_pack(&pb);
    ab_cache_key_t a, b2, c;
    ab_key_input_t in = {"ollama", "llama3:8b", NULL, 0, pb.buf, pb.len, 0, 0};
    CHECK_EQ(ab_cache_key(&in, &a), AB_KEY_TYPED);
    in.plain_only = 1;
    CHECK_EQ(ab_cache_key(&in, &b2), AB_KEY_TYPED);
    in.plain_only = 0;
    ab_cache_key(&in, &c);
    CHECK_TRUE(!s_same(&a, &b2));
    CHECK_TRUE(s_same(&a, &c));
}

static void t_cacheability(void)
{
    ab_cache_key_t k;
    s_base();
    s_opts.temperature = 0.7; /* sampling, no seed: a new answer each time */
    CHECK_EQ(s_key_of(NULL, NULL, 0, &k), AB_KEY_NO);
    CHECK_EQ(s_key_of(NULL, NULL, AB_FLAG_CACHEABLE, &k), AB_KEY_TYPED); /* caller's choice */
    s_opts.has_seed_case = AGENTBUS__INFERENCE_OPTIONS__HAS_SEED_SEED; /* fixed seed */
    s_opts.seed = 42;
    CHECK_EQ(s_key_of(NULL, NULL, 0, &k), AB_KEY_TYPED);
    s_base();
    s_opts.has_temperature_case = 0; /* backend default temperature: sampling */
    CHECK_EQ(s_key_of(NULL, NULL, 0, &k), AB_KEY_NO);
    s_base();
    s_gen.options = NULL;
    CHECK_EQ(s_key_of(NULL, NULL, 0, &k), AB_KEY_NO);
    /* Both no-cache and no-store: nothing to do. */
    s_base();
    CHECK_EQ(s_key_of(NULL, NULL, AB_FLAG_NO_CACHE | AB_FLAG_NO_STORE, &k), AB_KEY_NO);
    /* Embeddings sample nothing: always cacheable. */
    Agentbus__EmbedRequest e = AGENTBUS__EMBED_REQUEST__INIT;
    char *inputs[] = {"a", "b"};
    e.model = "nomic";
    e.n_input = 2;
    e.input = inputs;
    agentbus__inference_request__init(&s_req);
    s_req.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_EMBED;
    s_req.embed = &e;
    ab_cache_key_t ke1, ke2;
    CHECK_EQ(s_key_of(NULL, NULL, 0, &ke1), AB_KEY_TYPED);
    inputs[1] = "c";
    CHECK_EQ(s_key_of(NULL, NULL, 0, &ke2), AB_KEY_TYPED);
    CHECK_TRUE(!s_same(&ke1, &ke2));
    /* dimensions cuts the vectors: another answer, another key */
    ab_cache_key_t ke3;
    e.has_dimensions_case = AGENTBUS__EMBED_REQUEST__HAS_DIMENSIONS_DIMENSIONS;
    e.dimensions = 16;
    CHECK_EQ(s_key_of(NULL, NULL, 0, &ke3), AB_KEY_TYPED);
    CHECK_TRUE(!s_same(&ke2, &ke3));
    /* Model commands are never cached, even when marked. */
    Agentbus__ModelCommand mc = AGENTBUS__MODEL_COMMAND__INIT;
    mc.model = "llama3:8b";
    agentbus__inference_request__init(&s_req);
    s_req.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_LOAD;
    s_req.load = &mc;
    CHECK_EQ(s_key_of(NULL, NULL, AB_FLAG_CACHEABLE, &k), AB_KEY_NO);
}

static void t_raw(void)
{
    ab_cache_key_t k1, k2, k3;
    ab_key_input_t in = {"echo", "", NULL, 0, "hello", 5, 0, 0};
    CHECK_EQ(ab_cache_key(&in, &k1), AB_KEY_NO); /* not marked */
    in.flags = AB_FLAG_CACHEABLE;
    CHECK_EQ(ab_cache_key(&in, &k1), AB_KEY_RAW);
    in.payload = "hellp";
    CHECK_EQ(ab_cache_key(&in, &k2), AB_KEY_RAW);
    CHECK_TRUE(!s_same(&k1, &k2));
    in.payload = "hello";
    in.service = "echo2";
    CHECK_EQ(ab_cache_key(&in, &k3), AB_KEY_RAW);
    CHECK_TRUE(!s_same(&k1, &k3));
    /* The same bytes lz4-flagged are other bytes: another key. */
    in.service = "echo";
    in.flags |= AB_FLAG_LZ4;
    CHECK_EQ(ab_cache_key(&in, &k3), AB_KEY_RAW);
    CHECK_TRUE(!s_same(&k1, &k3));
    /* A model header whose payload is not an InferenceRequest: raw, if marked. */
    ab_key_input_t bad = {"ollama", "m", NULL, 0, "\xff\xff\xff", 3, 0, 0};
    CHECK_EQ(ab_cache_key(&bad, &k1), AB_KEY_NO);
    bad.flags = AB_FLAG_CACHEABLE;
    CHECK_EQ(ab_cache_key(&bad, &k1), AB_KEY_RAW);
}

/* Key of a request for model MODEL in the header and payload PB. */
static ab_key_kind_t s_key_model(const char *model, const s_pb_t *pb, uint32_t flags,
                                 ab_cache_key_t *k)
{
    ab_key_input_t in = {"ollama", model, NULL, flags, pb->buf, pb->len, 0, 0};
    return ab_cache_key(&in, k);
}

/* Issue 11: the model is part of the key of every kind of request, not only
 * generate's: two requests that differ only in their model never share an
 * answer. */
static void t_model_in_key(void)
{
    ab_cache_key_t ka, kb;
    s_pb_t pb;
    /* chat: the body's model */
    Agentbus__ChatMessage msg = AGENTBUS__CHAT_MESSAGE__INIT;
    msg.role = "user";
    msg.content = "hello";
    Agentbus__ChatMessage *msgs[1] = {&msg};
    Agentbus__ChatRequest chat = AGENTBUS__CHAT_REQUEST__INIT;
    chat.model = "llama3:8b";
    chat.n_messages = 1;
    chat.messages = msgs;
    chat.options = &s_opts;
    s_base();
    agentbus__inference_request__init(&s_req);
    s_req.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_CHAT;
    s_req.chat = &chat;
    s_pack(&pb);
    CHECK_EQ(s_key_model("llama3:8b", &pb, 0, &ka), AB_KEY_TYPED);
    chat.model = "qwen2:7b";
    s_pack(&pb);
    CHECK_EQ(s_key_model("llama3:8b", &pb, 0, &kb), AB_KEY_TYPED);
    CHECK_TRUE(!s_same(&ka, &kb));
    /* embed: the body's model */
    char *inputs[1] = {"a sentence"};
    Agentbus__EmbedRequest emb = AGENTBUS__EMBED_REQUEST__INIT;
    emb.model = "nomic-embed";
    emb.n_input = 1;
    emb.input = inputs;
    s_req.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_EMBED;
    s_req.embed = &emb;
    s_pack(&pb);
    CHECK_EQ(s_key_model("nomic-embed", &pb, 0, &ka), AB_KEY_TYPED);
    emb.model = "mxbai-embed";
    s_pack(&pb);
    CHECK_EQ(s_key_model("nomic-embed", &pb, 0, &kb), AB_KEY_TYPED);
    CHECK_TRUE(!s_same(&ka, &kb));
    /* marked raw: Header.model */
    memcpy(pb.buf, "not protobuf \xff\xff", 15);
    pb.len = 15;
    CHECK_EQ(s_key_model("model-a", &pb, AB_FLAG_CACHEABLE, &ka), AB_KEY_RAW);
    CHECK_EQ(s_key_model("model-b", &pb, AB_FLAG_CACHEABLE, &kb), AB_KEY_RAW);
    CHECK_TRUE(!s_same(&ka, &kb));
    /* marked and still compressed (over cache-key-decompress-max-bytes):
     * Header.model and the declared size are both in the key */
    ab_key_input_t in = {"ollama", "model-a", NULL, AB_FLAG_CACHEABLE | AB_FLAG_LZ4,
                         pb.buf, pb.len, 0, 1u << 20};
    CHECK_EQ(ab_cache_key(&in, &ka), AB_KEY_RAW);
    in.model = "model-b";
    CHECK_EQ(ab_cache_key(&in, &kb), AB_KEY_RAW);
    CHECK_TRUE(!s_same(&ka, &kb));
    in.model = "model-a";
    in.original_size = 2u << 20;
    CHECK_EQ(ab_cache_key(&in, &kb), AB_KEY_RAW);
    CHECK_TRUE(!s_same(&ka, &kb));
    /* unmarked and still compressed: never decoded, so not cacheable */
    in.flags = AB_FLAG_LZ4;
    CHECK_EQ(ab_cache_key(&in, &kb), AB_KEY_NO);
}

static void t_hex(void)
{
    ab_cache_key_t k = {0x0123456789abcdefull, 0xfedcba9876543210ull}, back;
    char hex[AB_CACHE_KEY_HEX];
    ab_cache_key_hex(&k, hex);
    CHECK_STR(hex, "0123456789abcdeffedcba9876543210");
    CHECK_EQ(ab_cache_key_parse(hex, &back), 0);
    CHECK_TRUE(s_same(&k, &back));
    CHECK_EQ(ab_cache_key_parse("0123", &back), -1);
    CHECK_EQ(ab_cache_key_parse("0123456789abcdeffedcba987654321g", &back), -1);
}

/* Header field 60 (cache_ttl_s) agrees with protobuf-c both ways. */
static void t_header_ttl(void)
{
    ab_header_t h = ab_header_init(AB_KIND_REQUEST);
    h.id = 7;
    h.target = ab_view_of("echo");
    h.flags = AB_FLAG_CACHEABLE;
    h.cache_ttl_s = 600;
    uint8_t buf[256];
    size_t n = ab_header_encode(&h, buf, sizeof buf);
    CHECK_EQ(n, ab_header_size(&h));
    Agentbus__Header *m = agentbus__header__unpack(NULL, n, buf);
    REQUIRE(m);
    CHECK_EQ(m->cache_ttl_s, 600);
    CHECK_EQ(m->flags, AB_FLAG_CACHEABLE);
    m->cache_ttl_s = 86400;
    size_t n2 = agentbus__header__pack(m, buf);
    agentbus__header__free_unpacked(m, NULL);
    ab_header_t back;
    CHECK_EQ(ab_header_parse(buf, n2, &back), 0);
    CHECK_EQ(back.cache_ttl_s, 86400);
    CHECK_EQ(back.id, 7);
}

/* Tool calling: two chat requests differing only in their tools, in an
 * assistant message's tool calls or in a tool message's tool name never
 * share a cached answer; a request without any keeps its old key shape
 * (empty fields add nothing). */
static void t_tools_in_key(void)
{
    ab_cache_key_t k0, k1, k2, k3, k4, k5;
    Agentbus__ChatMessage um = AGENTBUS__CHAT_MESSAGE__INIT, am = AGENTBUS__CHAT_MESSAGE__INIT,
                          tm = AGENTBUS__CHAT_MESSAGE__INIT;
    um.role = "user";
    um.content = "weather in Paris?";
    Agentbus__ChatMessage *msgs[3] = {&um, &am, &tm};
    Agentbus__ChatRequest chat = AGENTBUS__CHAT_REQUEST__INIT;
    chat.model = "llama3:8b";
    chat.n_messages = 1;
    chat.messages = msgs;
    s_base();
    chat.options = &s_opts;
    agentbus__inference_request__init(&s_req);
    s_req.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_CHAT;
    s_req.chat = &chat;
    CHECK_EQ(s_key_of(NULL, NULL, 0, &k0), AB_KEY_TYPED);
    chat.tools_json = "";
    CHECK_EQ(s_key_of(NULL, NULL, 0, &k1), AB_KEY_TYPED);
    CHECK_TRUE(s_same(&k0, &k1));
    chat.tools_json = "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}]";
    CHECK_EQ(s_key_of(NULL, NULL, 0, &k1), AB_KEY_TYPED);
    CHECK_TRUE(!s_same(&k0, &k1));
    chat.tools_json = "[{\"type\":\"function\",\"function\":{\"name\":\"get_time\"}}]";
    CHECK_EQ(s_key_of(NULL, NULL, 0, &k2), AB_KEY_TYPED);
    CHECK_TRUE(!s_same(&k1, &k2));
    /* the second turn: the assistant's call, then the tool's result */
    chat.n_messages = 3;
    am.role = "assistant";
    am.content = "";
    tm.role = "tool";
    tm.content = "18 C";
    CHECK_EQ(s_key_of(NULL, NULL, 0, &k3), AB_KEY_TYPED);
    am.tool_calls_json =
        "[{\"function\":{\"arguments\":{\"city\":\"Paris\"},\"name\":\"get_time\"}}]";
    CHECK_EQ(s_key_of(NULL, NULL, 0, &k4), AB_KEY_TYPED);
    CHECK_TRUE(!s_same(&k3, &k4));
    tm.tool_name = "get_time";
    CHECK_EQ(s_key_of(NULL, NULL, 0, &k5), AB_KEY_TYPED);
    CHECK_TRUE(!s_same(&k4, &k5));
    /* the same text moved between fields is another request */
    tm.tool_name = "";
    tm.content = "get_time";
    am.tool_calls_json = "";
    CHECK_EQ(s_key_of(NULL, NULL, 0, &k4), AB_KEY_TYPED);
    tm.content = "";
    tm.tool_name = "get_time";
    CHECK_EQ(s_key_of(NULL, NULL, 0, &k5), AB_KEY_TYPED);
    CHECK_TRUE(!s_same(&k4, &k5));
}

/* A chat with logprobs (or other top_logprobs) never shares a cached
 * answer with one without: the cached answer holds them or not. Without
 * them the key is what it was before they were carried. */
static void t_chat_logprobs_in_key(void)
{
    ab_cache_key_t k0, k1, k2, k3;
    Agentbus__ChatMessage um = AGENTBUS__CHAT_MESSAGE__INIT, *msgs[1] = {&um};
    um.role = "user";
    um.content = "how sure?";
    Agentbus__ChatRequest chat = AGENTBUS__CHAT_REQUEST__INIT;
    chat.model = "llama3:8b";
    chat.n_messages = 1;
    chat.messages = msgs;
    s_base();
    chat.options = &s_opts;
    agentbus__inference_request__init(&s_req);
    s_req.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_CHAT;
    s_req.chat = &chat;
    CHECK_EQ(s_key_of(NULL, NULL, 0, &k0), AB_KEY_TYPED);
    chat.logprobs = 1;
    CHECK_EQ(s_key_of(NULL, NULL, 0, &k1), AB_KEY_TYPED);
    chat.top_logprobs = 5;
    CHECK_EQ(s_key_of(NULL, NULL, 0, &k2), AB_KEY_TYPED);
    chat.top_logprobs = 6;
    CHECK_EQ(s_key_of(NULL, NULL, 0, &k3), AB_KEY_TYPED);
    CHECK_TRUE(!s_same(&k0, &k1));
    CHECK_TRUE(!s_same(&k1, &k2));
    CHECK_TRUE(!s_same(&k2, &k3));
    CHECK_TRUE(!s_same(&k0, &k3));
}

int main(void)
{
    t_header_ttl();
    t_field_order();
    t_irrelevant_fields();
    t_relevant_fields();
    t_digest();
    t_plain_only();
    t_cacheability();
    t_raw();
    t_model_in_key();
    t_tools_in_key();
    t_chat_logprobs_in_key();
    t_hex();
    return TEST_DONE("test_cache_key");
}
