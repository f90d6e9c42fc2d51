/*
 * fuzz_ollama_json.c - fuzz target for what agentbus-worker decodes from its
 * Ollama backend and from the bus: NDJSON answer lines (generate, chat,
 * embed), the line splitter fed in random pieces with a small line bound,
 * /api/tags, /api/ps and /api/version answers, and InferenceRequests
 * (raw bytes, and requests built from the bytes so that most reach the
 * JSON builder: a schema given as format, options, messages). A broken or
 * hostile backend is a peer too. JSON inputs are made from the bytes with
 * the keys these parsers read, so most pass the parser and reach the
 * translation. libFuzzer-compatible; ctest runs it through driver.c.
 */
#include "agentbus.pb-c.h"
#include "ollama_json.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const s_keys[] = {
    "model", "response", "done", "done_reason", "error", "message", "role", "content",
    "embeddings", "total_duration", "load_duration", "prompt_eval_count", "eval_count",
    "eval_duration", "prompt_eval_duration", "created_at", "models", "name", "size",
    "size_vram", "details", "family", "parameter_size", "quantization_level", "version",
    "expires_at", "digest", "context", "logprobs", "token", "logprob", "bytes",
    "top_logprobs"};
enum { S_NKEYS = sizeof s_keys / sizeof s_keys[0] };

typedef struct {
    const uint8_t *p;
    size_t n;
} s_in_t;

static unsigned s_next(s_in_t *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}

/* A short string from the input: its length from one byte, then bytes. */
static json_t *s_str(s_in_t *in)
{
    char buf[48];
    size_t n = s_next(in) % sizeof buf, i = 0;
    for (; i < n && in->n; i++)
        buf[i] = (char)(s_next(in) % 95 + 32);
    return json_stringn(buf, i);
}

/* A JSON value whose type the next byte picks; objects use the keys above. */
static json_t *s_val(s_in_t *in, int depth)
{
    switch (s_next(in) % (depth > 3 ? 5 : 7)) {
    case 0: return json_integer((json_int_t)(int8_t)s_next(in) * (json_int_t)s_next(in) * 1000003);
    case 1: return json_real((double)(int8_t)s_next(in) / 7.0);
    case 2: return s_next(in) & 1 ? json_true() : json_false();
    case 3: return json_null();
    case 4: return s_str(in);
    case 5: {
        json_t *a = json_array();
        for (unsigned k = s_next(in) % 5; k-- && in->n;)
            json_array_append_new(a, s_val(in, depth + 1));
        return a;
    }
    default: {
        json_t *o = json_object();
        for (unsigned k = s_next(in) % 8; k-- && in->n;)
            json_object_set_new(o, s_keys[s_next(in) % S_NKEYS], s_val(in, depth + 1));
        return o;
    }
    }
}

static int s_on_line(const char *line, size_t len, void *arg)
{
    wk_ol_chunk_t ch;
    memset(&ch, 0, sizeof ch);
    if (wk_ol_chunk_parse((wk_ol_kind_t)(uintptr_t)arg, line, len, "w", &ch) == 0)
        free(ch.pb);
    return 0;
}

/* TEXT through every answer parser, and fed to the splitter in pieces. */
static void s_answers(const char *text, size_t len, s_in_t *in)
{
    for (int k = WK_OL_GENERATE; k <= WK_OL_EMBED; k++)
        s_on_line(text, len, (void *)(uintptr_t)k);
    Agentbus__InferenceState st = AGENTBUS__INFERENCE_STATE__INIT;
    wk_ol_parse_tags(text, len, &st);
    wk_ol_parse_ps(text, len, &st);
    wk_ol_parse_version(text, len, &st);
    wk_ol_state_clear(&st);
    wk_ndjson_t nd;
    wk_ndjson_init(&nd, 16 + s_next(in) % 256);
    void *kind = (void *)(uintptr_t)(WK_OL_GENERATE + s_next(in) % 3);
    for (size_t off = 0; off < len;) {
        size_t piece = 1 + s_next(in) % 64;
        piece = piece > len - off ? len - off : piece;
        if (wk_ndjson_feed(&nd, text + off, piece, s_on_line, kind) != 0)
            break;
        off += piece;
    }
    wk_ndjson_finish(&nd, s_on_line, kind);
    wk_ndjson_fini(&nd);
}

static void s_build(const uint8_t *pb, size_t len)
{
    wk_ol_call_t call;
    char err[256];
    memset(&call, 0, sizeof call);
    if (wk_ol_call_build(pb, len, &call, err, sizeof err) == 0)
        wk_ol_call_free(&call);
}

/* A generate or chat request whose strings (format above all) come from
 * the input, so the builder's own handling is reached. */
static void s_request(s_in_t *in)
{
    json_t *fv = s_val(in, 0);
    char *format = json_dumps(fv, JSON_ENCODE_ANY | JSON_COMPACT);
    json_decref(fv);
    json_t *pv = s_str(in);
    Agentbus__InferenceRequest q = AGENTBUS__INFERENCE_REQUEST__INIT;
    Agentbus__GenerateRequest g = AGENTBUS__GENERATE_REQUEST__INIT;
    Agentbus__ChatRequest c = AGENTBUS__CHAT_REQUEST__INIT;
    Agentbus__ChatMessage m = AGENTBUS__CHAT_MESSAGE__INIT, *mp = &m;
    Agentbus__InferenceOptions o = AGENTBUS__INFERENCE_OPTIONS__INIT;
    char *stop[] = {(char *)json_string_value(pv)};
    o.n_stop = s_next(in) & 1;
    o.stop = stop;
    o.has_num_predict_case = AGENTBUS__INFERENCE_OPTIONS__HAS_NUM_PREDICT_NUM_PREDICT;
    o.num_predict = (int32_t)(int8_t)s_next(in);
    g.model = c.model = "m";
    g.prompt = (char *)json_string_value(pv);
    g.format = c.format = format ? format : "";
    g.keep_alive = c.keep_alive = s_next(in) & 1 ? "5m" : "-1";
    g.options = c.options = &o;
    m.role = "user";
    m.content = (char *)json_string_value(pv);
    c.n_messages = s_next(in) % 2;
    uint32_t ids[4] = {s_next(in), s_next(in) << 24, 0, 7};
    g.logprobs = c.logprobs = s_next(in) & 1;
    g.top_logprobs = c.top_logprobs = (int32_t)(int8_t)s_next(in);
    g.n_context = s_next(in) % 5;
    g.context = ids;
    c.messages = &mp;
    if (s_next(in) & 1) {
        q.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_GENERATE;
        q.generate = &g;
    } else {
        q.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_CHAT;
        q.chat = &c;
    }
    size_t n = agentbus__inference_request__get_packed_size(&q);
    uint8_t *buf = malloc(n ? n : 1);
    if (buf) {
        agentbus__inference_request__pack(&q, buf);
        s_build(buf, n);
        free(buf);
    }
    free(format);
    json_decref(pv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    s_in_t in = {data, size};
    /* The bytes as they came: a line, an answer, a packed request. */
    s_answers((const char *)data, size, &in);
    s_build(data, size);
    /* JSON made from them: one object (or several lines of them). */
    s_in_t gen = {data, size};
    json_t *v = s_val(&gen, 0);
    char *text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    json_decref(v);
    if (text) {
        s_answers(text, strlen(text), &gen);
        free(text);
    }
    s_in_t req = {data, size};
    s_request(&req);
    return 0;
}
