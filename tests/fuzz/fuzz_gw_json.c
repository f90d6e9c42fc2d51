/*
 * fuzz_gw_json.c - fuzz target for what agentbus-gateway decodes from HTTP
 * clients and workers (issue 18): request bodies (raw bytes as JSON, and
 * JSON objects built from the bytes with the fields the gateway reads, so
 * most inputs reach the translation, not just the parser), reply payloads
 * rendered as Ollama JSON (and the jansson-free token lines checked against
 * it), base64 images; a worker's JSON text (logprobs, tool calls) checked
 * by gw_raw_array against jansson and rendered into answers that must
 * parse. libFuzzer-compatible; ctest runs
 * it through driver.c under ASan+UBSan.
 */
#include "agentbus.pb-c.h"
#include "gw_json.h"
#include "text.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const s_keys[] = {
    "model", "prompt", "system", "suffix", "format", "keep_alive", "stream", "raw", "images",
    "messages", "input", "truncate", "options", "temperature", "seed", "num_ctx",
    "num_predict", "top_k", "top_p", "stop", "repeat_penalty", "min_p", "role", "content",
    "logprobs", "top_logprobs", "context"};
#define S_NKEYS (sizeof s_keys / sizeof s_keys[0])

typedef struct {
    const uint8_t *p;
    size_t n;
} s_in_t;

static unsigned s_byte(s_in_t *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}

/* A value of a type the next byte picks; objects use the gateway's keys. */
static json_t *s_value(s_in_t *in, int depth)
{
    unsigned t = s_byte(in) % (depth > 3 ? 6 : 8);
    size_t len = s_byte(in) % 12;
    if (len > in->n)
        len = in->n;
    switch (t) {
    case 0: return json_null();
    case 1: return json_boolean(s_byte(in) & 1);
    case 2: return json_integer((json_int_t)(int8_t)s_byte(in) * 1000003);
    case 3: return json_real((double)(int8_t)s_byte(in) / 7.0);
    case 4: {
        json_t *s = json_stringn_nocheck((const char *)in->p, len);
        in->p += len, in->n -= len;
        return s;
    }
    case 5: return json_string(s_byte(in) & 1 ? "m:latest" : "aGk=");
    case 6: {
        json_t *a = json_array();
        for (size_t i = 0; i < len % 4; i++)
            json_array_append_new(a, s_value(in, depth + 1));
        return a;
    }
    default: {
        json_t *o = json_object();
        for (size_t i = 0; i < len % 6; i++)
            json_object_set_new(o, s_keys[s_byte(in) % S_NKEYS], s_value(in, depth + 1));
        return o;
    }
    }
}

static void s_request(json_t *body)
{
    for (int kind = GW_GENERATE; kind <= GW_EMBED; kind++) {
        gw_req_t req;
        char err[256];
        if (gw_req_from_json((gw_kind_t)kind, body, &req, err, sizeof err) != 0)
            continue;
        /* What the gateway sends must decode, and name the model it asked for. */
        Agentbus__InferenceRequest *ir =
            agentbus__inference_request__unpack(NULL, req.pb_len, req.pb);
        if (!ir || ir->body_case == AGENTBUS__INFERENCE_REQUEST__BODY__NOT_SET || !req.model[0])
            __builtin_trap();
        agentbus__inference_request__free_unpacked(ir, NULL);
        gw_req_free(&req);
    }
}

/* How deep V nests (an array or object is a level). */
static int s_depth(const json_t *v)
{
    int d = 0;
    size_t i;
    const char *k;
    json_t *x;
    if (json_is_array(v))
        json_array_foreach(v, i, x) d = d > s_depth(x) ? d : s_depth(x);
    else if (json_is_object(v))
        json_object_foreach((json_t *)v, k, x) d = d > s_depth(x) ? d : s_depth(x);
    else
        return 0;
    return d + 1;
}

/* TEXT as a worker's JSON text: gw_raw_array takes what jansson takes as
 * an array (up to GW_RAW_MAX_DEPTH), with the same value after
 * minifying; a reply carrying it renders to JSON that parses, with
 * logprobs and tool_calls there exactly when the text was taken. */
static void s_raw(const char *text)
{
    json_t *j = json_loads(text, 0, NULL);
    int want = json_is_array(j) && s_depth(j) <= GW_RAW_MAX_DEPTH;
    char *t = strdup(text);
    if (!t) {
        json_decref(j);
        return;
    }
    int got = gw_raw_array(t, NULL);
    json_t *m = got ? json_loads(t, 0, NULL) : NULL;
    if (got != want || (got && !json_equal(j, m)))
        abort();
    json_decref(m);
    json_decref(j);
    free(t);
    /* the gateway takes a reply's text as UTF-8 (gw_pb_unpack): as it sees it */
    size_t n = strlen(text), cap = 3 * n + 1;
    char *u = malloc(cap);
    if (!u)
        return;
    ab_text_utf8(text, n, u, cap);
    j = json_loads(u, 0, NULL);
    want = json_is_array(j) && s_depth(j) <= GW_RAW_MAX_DEPTH;
    json_decref(j);
    free(u);
    Agentbus__ChatResponse c = AGENTBUS__CHAT_RESPONSE__INIT;
    Agentbus__ChatMessage msg = AGENTBUS__CHAT_MESSAGE__INIT;
    c.model = c.created_at = "m";
    c.message = &msg;
    msg.role = "assistant";
    msg.content = "x";
    c.logprobs_json = msg.tool_calls_json = (char *)text;
    size_t len = agentbus__chat_response__get_packed_size(&c);
    uint8_t *pb = malloc(len);
    if (!pb)
        return;
    agentbus__chat_response__pack(&c, pb);
    json_t *r = gw_ollama_reply(GW_CHAT, pb, len, 0);
    char *out = gw_raw_dumps(r);
    json_decref(r);
    json_t *o = out ? json_loads(out, 0, NULL) : NULL;
    if (out && (!o || !json_is_array(json_object_get(o, "logprobs")) != !want ||
                !json_is_array(json_object_get(json_object_get(o, "message"), "tool_calls")) !=
                    !want))
        abort();
    json_decref(o);
    free(out);
    free(pb);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *raw = json_loadb((const char *)data, size, 0, NULL);
    if (raw)
        s_request(raw);
    json_decref(raw);
    s_in_t in = {data, size};
    json_t *o = json_object();
    json_object_set_new(o, "model", json_string("m"));
    while (in.n)
        json_object_set_new(o, s_keys[s_byte(&in) % S_NKEYS], s_value(&in, 0));
    s_request(o);
    json_decref(o);
    for (int kind = GW_GENERATE; kind <= GW_EMBED; kind++)
        for (int legacy = 0; legacy < 2; legacy++) { /* what a client gets must parse */
            json_t *r = gw_ollama_reply((gw_kind_t)kind, data, size, legacy);
            char *txt = gw_raw_dumps(r);
            json_decref(r);
            json_t *back = txt ? json_loads(txt, 0, NULL) : NULL;
            if (txt && !back)
                abort();
            json_decref(back);
            free(txt);
        }
    /* A token line written without jansson must be the bytes jansson
     * writes for the same chunk. */
    for (int kind = GW_GENERATE; kind <= GW_CHAT; kind++) {
        char *line = NULL;
        size_t len = 0;
        if (!gw_ollama_line((gw_kind_t)kind, data, size, &line, &len))
            continue;
        json_t *j = gw_ollama_reply((gw_kind_t)kind, data, size, 0);
        char *want = j ? json_dumps(j, JSON_COMPACT) : NULL;
        if (!want || strlen(want) + 1 != len || memcmp(want, line, len - 1) != 0 ||
            line[len - 1] != '\n')
            abort();
        free(want);
        json_decref(j);
        free(line);
    }
    char *s = malloc(size + 1);
    if (s) {
        memcpy(s, data, size);
        s[size] = '\0';
        s_raw(s);
        size_t n;
        free(tl_base64_decode(s, &n));
        free(s);
    }
    return 0;
}
