/*
 * gw_json.c - Ollama-shaped JSON to InferenceRequest, and replies back to
 * Ollama's JSON. The OpenAI routes reuse the request side by first
 * rewriting their body into Ollama's shape (gw_openai.c).
 */
#include "gw_json.h"
#include "gw_raw.h"
#include "tl_base64.h"
#include "agentbus.pb-c.h"
#include "tl_infer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Memory the protobuf structs point into until they are packed: decoded
 * images and pointer arrays, a few per message. It grows with the body
 * (which the gateway bounds, --max-body-bytes): a fixed 4,096 entries
 * answered "out of memory" to a valid chat of 2,048 messages with an
 * image each. */
typedef struct {
    void **p;
    size_t n, cap;
    int oom;
} s_arena_t;

static void *s_keep(s_arena_t *a, void *p)
{
    if (p && a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        void **np = realloc(a->p, cap * sizeof *np);
        if (np)
            a->p = np, a->cap = cap;
    }
    if (!p || a->n == a->cap) {
        free(p);
        a->oom = 1;
        return NULL;
    }
    a->p[a->n++] = p;
    return p;
}

static void s_arena_free(s_arena_t *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->p[i]);
    free(a->p);
    a->p = NULL;
    a->n = a->cap = 0;
}

static int s_fail(char *err, size_t cap, const char *fmt, const char *arg)
{
    snprintf(err, cap, fmt, arg);
    return -1;
}

/* V as JSON text in the arena, compact with sorted keys (the same object
 * with its keys in another order is the same text, and cache key): a
 * format schema, the untyped options, tools and tool calls. */
static int s_text_of(json_t *v, s_arena_t *a, char **out, char *err, size_t cap)
{
    *out = s_keep(a, json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS));
    return *out ? 0 : s_fail(err, cap, "%s", "out of memory");
}

/* --- request fields ---------------------------------------------------------- */
/* A string field: absent or null gives "", anything else but a string is an
 * error (Ollama answers 400 for a wrongly typed field too). */
static int s_str(json_t *o, const char *key, char **out, char *err, size_t cap)
{
    json_t *v = json_object_get(o, key);
    *out = "";
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return s_fail(err, cap, "invalid %s: expected a string", key);
    *out = (char *)json_string_value(v);
    return 0;
}

/* A JSON real as an int64 as Ollama reads one (Go's int64(float64): 1.5 is
 * 1). Outside int64 the C conversion is undefined (1e300 came out as
 * INT64_MIN on x86, a num_ctx Ollama was then given): -1. */
static int s_real_int64(double d, int64_t *out)
{
    if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0))
        return -1;
    *out = (int64_t)d;
    return 0;
}

/* keep_alive: a duration string or a number of seconds, kept as the text
 * the worker hands Ollama back (worker/ollama_json.c). */
static int s_keep_alive(json_t *o, char *buf, size_t cap, char **out, char *err, size_t ecap)
{
    json_t *v = json_object_get(o, "keep_alive");
    int64_t secs = 0;
    *out = "";
    if (!v || json_is_null(v))
        return 0;
    if (json_is_string(v))
        *out = (char *)json_string_value(v);
    else if (json_is_integer(v))
        snprintf(buf, cap, "%lld", (long long)json_integer_value(v)), *out = buf;
    else if (json_is_real(v) && s_real_int64(json_real_value(v), &secs) == 0)
        snprintf(buf, cap, "%lld", (long long)secs), *out = buf;
    else
        return s_fail(err, ecap, "invalid %s: expected a duration", "keep_alive");
    return 0;
}

/* format: "json", or a JSON schema object passed on as its text. */
static int s_format(json_t *o, s_arena_t *a, char **out, char *err, size_t cap)
{
    json_t *v = json_object_get(o, "format");
    *out = "";
    if (!v || json_is_null(v))
        return 0;
    if (json_is_string(v)) {
        *out = (char *)json_string_value(v);
        return 0;
    }
    if (!json_is_object(v))
        return s_fail(err, cap, "invalid %s: expected \"json\" or a schema", "format");
    return s_text_of(v, a, out, err, cap);
}

static int s_num(json_t *o, const char *key, int *has, double *d, char *err, size_t cap)
{
    json_t *v = json_object_get(o, key);
    *has = 0;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_number(v))
        return s_fail(err, cap, "invalid option %s: expected a number", key);
    *has = 1;
    *d = json_number_value(v);
    return 0;
}

static int s_int(json_t *o, const char *key, int *has, int64_t *i, char *err, size_t cap)
{
    double d = 0;
    if (s_num(o, key, has, &d, err, cap) != 0)
        return -1;
    if (!*has)
        return 0;
    if (json_is_integer(json_object_get(o, key)))
        *i = (int64_t)json_integer_value(json_object_get(o, key));
    else if (s_real_int64(d, i) != 0)
        return s_fail(err, cap, "invalid option %s: expected an integer", key);
    return 0;
}

static int s_stop(json_t *j, Agentbus__InferenceOptions *o, s_arena_t *a, char *err, size_t cap)
{
    json_t *v = json_object_get(j, "stop");
    if (!v || json_is_null(v))
        return 0;
    size_t n = json_is_string(v) ? 1 : json_is_array(v) ? json_array_size(v) : (size_t)-1;
    if (n == (size_t)-1)
        return s_fail(err, cap, "invalid option %s: expected strings", "stop");
    o->stop = s_keep(a, calloc(n + 1, sizeof(char *)));
    if (!o->stop)
        return s_fail(err, cap, "%s", "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_is_string(v) ? v : json_array_get(v, i);
        if (!json_is_string(s))
            return s_fail(err, cap, "invalid option %s: expected strings", "stop");
        o->stop[i] = (char *)json_string_value(s);
    }
    o->n_stop = n;
    return 0;
}

/* The options other than the typed ones, as the JSON text of an object
 * with sorted keys (InferenceOptions.extra_json), or "" when none: they
 * cross the bus as given and Ollama checks them. 0, or -1 (out of memory). */
static int s_extra_options(json_t *j, Agentbus__InferenceOptions *o, s_arena_t *a, char *err,
                           size_t cap)
{
    static const char *typed[] = {"temperature", "seed", "num_ctx", "num_predict", "top_k",
                                  "top_p", "repeat_penalty", "min_p", "stop"};
    json_t *extra = json_object();
    const char *k;
    json_t *v;
    json_object_foreach(j, k, v) {
        size_t i = 0;
        while (i < sizeof typed / sizeof typed[0] && strcmp(k, typed[i]) != 0)
            i++;
        if (i == sizeof typed / sizeof typed[0] && !json_is_null(v))
            json_object_set(extra, k, v);
    }
    int rc = extra ? 0 : s_fail(err, cap, "%s", "out of memory");
    if (extra && json_object_size(extra))
        rc = s_text_of(extra, a, &o->extra_json, err, cap);
    json_decref(extra);
    return rc;
}

/* options: the typed ones the proto has fields for, and the others as
 * JSON text (s_extra_options): none is dropped. */
static int s_options(json_t *j, Agentbus__InferenceOptions *o, Agentbus__InferenceOptions **out,
                     s_arena_t *a, char *err, size_t cap)
{
    agentbus__inference_options__init(o);
    *out = NULL;
    if (!j || json_is_null(j))
        return 0;
    if (!json_is_object(j))
        return s_fail(err, cap, "invalid %s: expected an object", "options");
    int h[8] = {0};
    if (s_num(j, "temperature", &h[0], &o->temperature, err, cap) ||
        s_int(j, "seed", &h[1], &o->seed, err, cap) ||
        s_int(j, "num_ctx", &h[2], &o->num_ctx, err, cap) ||
        s_int(j, "num_predict", &h[3], &o->num_predict, err, cap) ||
        s_int(j, "top_k", &h[4], &o->top_k, err, cap) ||
        s_num(j, "top_p", &h[5], &o->top_p, err, cap) ||
        s_num(j, "repeat_penalty", &h[6], &o->repeat_penalty, err, cap) ||
        s_num(j, "min_p", &h[7], &o->min_p, err, cap))
        return -1;
    /* Presence is kept: an absent option and a zero one are different
     * requests (and different cache keys). */
    if (h[0])
        o->has_temperature_case = AGENTBUS__INFERENCE_OPTIONS__HAS_TEMPERATURE_TEMPERATURE;
    if (h[1])
        o->has_seed_case = AGENTBUS__INFERENCE_OPTIONS__HAS_SEED_SEED;
    if (h[2])
        o->has_num_ctx_case = AGENTBUS__INFERENCE_OPTIONS__HAS_NUM_CTX_NUM_CTX;
    if (h[3])
        o->has_num_predict_case = AGENTBUS__INFERENCE_OPTIONS__HAS_NUM_PREDICT_NUM_PREDICT;
    if (h[4])
        o->has_top_k_case = AGENTBUS__INFERENCE_OPTIONS__HAS_TOP_K_TOP_K;
    if (h[5])
        o->has_top_p_case = AGENTBUS__INFERENCE_OPTIONS__HAS_TOP_P_TOP_P;
    if (h[6])
        o->has_repeat_penalty_case =
            AGENTBUS__INFERENCE_OPTIONS__HAS_REPEAT_PENALTY_REPEAT_PENALTY;
    if (h[7])
        o->has_min_p_case = AGENTBUS__INFERENCE_OPTIONS__HAS_MIN_P_MIN_P;
    if (s_stop(j, o, a, err, cap) != 0 || s_extra_options(j, o, a, err, cap) != 0)
        return -1;
    /* brokerctl sends an options message even when it is empty; an empty
     * one and none give the same cache key, so either is fine. */
    *out = o;
    return 0;
}

/* images: base64 strings, carried as raw bytes. */
static int s_images(json_t *v, ProtobufCBinaryData **out, size_t *n, s_arena_t *a, char *err,
                    size_t cap)
{
    *n = 0;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_array(v))
        return s_fail(err, cap, "invalid %s: expected base64 strings", "images");
    size_t k = json_array_size(v);
    *out = s_keep(a, calloc(k + 1, sizeof **out));
    if (!*out)
        return s_fail(err, cap, "%s", "out of memory");
    for (size_t i = 0; i < k; i++) {
        const char *s = json_string_value(json_array_get(v, i));
        size_t len = 0;
        uint8_t *b = s ? tl_base64_decode(s, &len) : NULL;
        if (!b)
            return s_fail(err, cap, "invalid %s: expected base64 strings", "images");
        (*out)[i].data = s_keep(a, b);
        (*out)[i].len = len;
        if (!(*out)[i].data)
            return s_fail(err, cap, "%s", "out of memory");
    }
    *n = k;
    return 0;
}

/* A boolean field: absent or null leaves *VAL as it is and *HAS 0 (HAS
 * may be NULL); anything but true or false is a 400, as Ollama answers
 * ("stream": "true", "raw": 1 were taken before, as false or true). */
static int s_bool(json_t *o, const char *key, int *has, int *val, char *err, size_t cap)
{
    json_t *v = json_object_get(o, key);
    if (has)
        *has = 0;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return s_fail(err, cap, "invalid %s: expected a boolean (true or false)", key);
    if (has)
        *has = 1;
    *val = json_is_true(v);
    return 0;
}

/* think: true / false, or a level ("low", "medium", "high") passed as
 * given for Ollama to check; carried as text (GenerateRequest.think). */
static int s_think(json_t *o, char **out, char *err, size_t cap)
{
    json_t *v = json_object_get(o, "think");
    *out = "";
    if (!v || json_is_null(v))
        return 0;
    if (json_is_boolean(v))
        *out = json_is_true(v) ? "true" : "false";
    else if (json_is_string(v) && json_string_length(v))
        *out = (char *)json_string_value(v);
    else
        return s_fail(err, cap, "invalid %s: expected true, false or \"low\", \"medium\", "
                                "\"high\"", "think");
    return 0;
}

static int s_stream(json_t *o, int *stream, char *err, size_t cap)
{
    *stream = 1; /* Ollama streams unless told not to */
    return s_bool(o, "stream", NULL, stream, err, cap);
}

/* --- request kinds ------------------------------------------------------------- */
typedef struct {
    json_t *body;
    gw_req_t *req;
    s_arena_t *a;
    tl_infer_t *in; /* packed by tl_infer_pack, as brokerctl's requests */
    char ka[32];
    char *err;
    size_t cap;
} s_build_t;

/* Ollama answers a generate without prompt (or a chat without messages) by
 * loading the model, or unloading it when keep_alive is 0: clients use
 * that to preload. Such a call becomes a LOAD or UNLOAD command; its reply
 * is a final GenerateResponse with done_reason "load" / "unload". */
static int s_model_command(s_build_t *b, Agentbus__ModelCommand *mc)
{
    agentbus__model_command__init(mc);
    if (s_keep_alive(b->body, b->ka, sizeof b->ka, &mc->keep_alive, b->err, b->cap) ||
        s_stream(b->body, &b->req->stream, b->err, b->cap))
        return -1;
    const char *ka = mc->keep_alive;
    int unload = strcmp(ka, "0") == 0 || strcmp(ka, "0s") == 0 || strcmp(ka, "0m") == 0;
    b->in->kind = unload ? TL_INFER_UNLOAD : TL_INFER_LOAD;
    b->in->body.command = mc;
    return 0;
}

/* truncate and shift (generate and chat): booleans whose presence is kept. */
static int s_ctx_flags(s_build_t *b, int *ht, protobuf_c_boolean *t, int *hs,
                       protobuf_c_boolean *sh)
{
    int tv = 0, sv = 0;
    if (s_bool(b->body, "truncate", ht, &tv, b->err, b->cap) ||
        s_bool(b->body, "shift", hs, &sv, b->err, b->cap))
        return -1;
    *t = tv;
    *sh = sv;
    return 0;
}

/* logprobs (a boolean) and top_logprobs (0..20, Ollama's bound; its
 * message), generate and chat. */
static int s_logprobs(s_build_t *b, protobuf_c_boolean *lp, int32_t *top)
{
    int v = 0;
    if (s_bool(b->body, "logprobs", NULL, &v, b->err, b->cap))
        return -1;
    *lp = v;
    json_t *t = json_object_get(b->body, "top_logprobs");
    if (!t || json_is_null(t))
        return 0;
    if (!json_is_integer(t))
        return s_fail(b->err, b->cap, "invalid %s: expected an integer", "top_logprobs");
    if (json_integer_value(t) < 0 || json_integer_value(t) > GW_MAX_TOP_LOGPROBS)
        return s_fail(b->err, b->cap, "%s must be between 0 and 20", "top_logprobs");
    *top = (int32_t)json_integer_value(t);
    return 0;
}

/* context (generate): an earlier answer's token ids, as Ollama's []int;
 * carried packed (GenerateRequest.context), at most GW_MAX_CONTEXT. */
static int s_context(s_build_t *b, Agentbus__GenerateRequest *g)
{
    json_t *v = json_object_get(b->body, "context"), *x;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_array(v))
        return s_fail(b->err, b->cap, "invalid %s: expected an array of token ids", "context");
    size_t n = json_array_size(v), i;
    if (n > GW_MAX_CONTEXT)
        return s_fail(b->err, b->cap, "invalid %s: more than 1048576 token ids", "context");
    g->context = n ? s_keep(b->a, malloc(n * sizeof *g->context)) : NULL;
    if (n && !g->context)
        return s_fail(b->err, b->cap, "%s", "out of memory");
    json_array_foreach(v, i, x) {
        if (!json_is_integer(x) || json_integer_value(x) < 0 ||
            json_integer_value(x) > (json_int_t)UINT32_MAX) /* what the bus and worker take */
            return s_fail(b->err, b->cap, "invalid %s: token ids are integers 0..4294967295",
                          "context");
        g->context[i] = (uint32_t)json_integer_value(x);
    }
    g->n_context = n;
    return 0;
}

static int s_generate(s_build_t *b, Agentbus__GenerateRequest *g, Agentbus__InferenceOptions *o)
{
    agentbus__generate_request__init(g);
    int raw = 0;
    if (s_str(b->body, "prompt", &g->prompt, b->err, b->cap) ||
        s_bool(b->body, "raw", NULL, &raw, b->err, b->cap) ||
        s_str(b->body, "system", &g->system, b->err, b->cap) ||
        s_str(b->body, "suffix", &g->suffix, b->err, b->cap) ||
        s_think(b->body, &g->think, b->err, b->cap) ||
        s_logprobs(b, &g->logprobs, &g->top_logprobs) || s_context(b, g) ||
        s_format(b->body, b->a, &g->format, b->err, b->cap) ||
        s_keep_alive(b->body, b->ka, sizeof b->ka, &g->keep_alive, b->err, b->cap) ||
        s_stream(b->body, &b->req->stream, b->err, b->cap) ||
        s_options(json_object_get(b->body, "options"), o, &g->options, b->a, b->err, b->cap) ||
        s_images(json_object_get(b->body, "images"), &g->images, &g->n_images, b->a, b->err,
                 b->cap))
        return -1;
    int ht = 0, hs = 0;
    if (s_ctx_flags(b, &ht, &g->truncate, &hs, &g->shift) != 0)
        return -1;
    if (ht)
        g->has_truncate_case = AGENTBUS__GENERATE_REQUEST__HAS_TRUNCATE_TRUNCATE;
    if (hs)
        g->has_shift_case = AGENTBUS__GENERATE_REQUEST__HAS_SHIFT_SHIFT;
    g->raw = raw;
    b->in->kind = TL_INFER_GENERATE;
    b->in->body.generate = g;
    return 0;
}

/* --- tool calling ------------------------------------------------------------------ */
/* Tools and tool calls travel as JSON text (ChatRequest.tools_json,
 * ChatMessage.tool_calls_json), compact with sorted keys, so the same tools
 * sent with keys in another order are one cache entry. They are checked
 * here, so a malformed one is a 400 naming it, not a silent drop. */
static int s_json_text(json_t *v, s_build_t *b, char **out)
{
    return s_text_of(v, b->a, out, b->err, b->cap);
}

static int s_bad_item(s_build_t *b, const char *what, size_t i, const char *why)
{
    snprintf(b->err, b->cap, "invalid %s[%zu]: %s", what, i, why);
    return -1;
}

/* tools: [{"type": "function", "function": {"name", "description",
 * "parameters": {JSON schema}}}] as Ollama's /api/chat takes them. */
static int s_tools(s_build_t *b, Agentbus__ChatRequest *c)
{
    json_t *v = json_object_get(b->body, "tools"), *t;
    c->tools_json = "";
    if (!v || json_is_null(v) || (json_is_array(v) && !json_array_size(v)))
        return 0;
    if (!json_is_array(v))
        return s_fail(b->err, b->cap, "invalid %s: expected an array of tools", "tools");
    size_t i;
    json_array_foreach(v, i, t) {
        json_t *type = json_object_get(t, "type"), *fn = json_object_get(t, "function");
        json_t *params = json_object_get(fn, "parameters");
        if (!json_is_object(t))
            return s_bad_item(b, "tools", i, "expected an object");
        if (type && !json_is_null(type) && !json_is_string(type))
            return s_bad_item(b, "tools", i, "type must be \"function\"");
        if (type && json_is_string(type) && strcmp(json_string_value(type), "function") != 0)
            return s_bad_item(b, "tools", i, "type must be \"function\"");
        const char *name = json_string_value(json_object_get(fn, "name"));
        if (!json_is_object(fn) || !name || !*name)
            return s_bad_item(b, "tools", i, "a tool needs function.name (a string)");
        if (params && !json_is_null(params) && !json_is_object(params))
            return s_bad_item(b, "tools", i, "function.parameters must be an object");
    }
    return s_json_text(v, b, &c->tools_json);
}

/* An assistant message's tool_calls: [{"function": {"name", "arguments":
 * {...}}}] (arguments an object, as Ollama has them). */
static int s_tool_calls(s_build_t *b, json_t *m, Agentbus__ChatMessage *cm)
{
    json_t *v = json_object_get(m, "tool_calls"), *t;
    cm->tool_calls_json = "";
    if (!v || json_is_null(v) || (json_is_array(v) && !json_array_size(v)))
        return 0;
    if (!json_is_array(v))
        return s_fail(b->err, b->cap, "invalid %s: expected an array", "tool_calls");
    size_t i;
    json_array_foreach(v, i, t) {
        json_t *fn = json_object_get(t, "function"), *args = json_object_get(fn, "arguments");
        const char *name = json_string_value(json_object_get(fn, "name"));
        if (!json_is_object(t) || !json_is_object(fn) || !name || !*name)
            return s_bad_item(b, "tool_calls", i, "a call needs function.name (a string)");
        if (args && !json_is_null(args) && !json_is_object(args))
            return s_bad_item(b, "tool_calls", i, "function.arguments must be an object");
    }
    return s_json_text(v, b, &cm->tool_calls_json);
}

static int s_message(s_build_t *b, json_t *m, Agentbus__ChatMessage *cm)
{
    agentbus__chat_message__init(cm);
    if (!json_is_object(m))
        return s_fail(b->err, b->cap, "invalid %s: expected objects", "messages");
    if (s_str(m, "role", &cm->role, b->err, b->cap) ||
        s_str(m, "content", &cm->content, b->err, b->cap) ||
        s_images(json_object_get(m, "images"), &cm->images, &cm->n_images, b->a, b->err, b->cap) ||
        s_str(m, "tool_name", &cm->tool_name, b->err, b->cap) ||
        s_str(m, "thinking", &cm->thinking, b->err, b->cap) || s_tool_calls(b, m, cm))
        return -1;
    if (!cm->role[0])
        return s_fail(b->err, b->cap, "invalid %s: a message needs a role", "messages");
    return 0;
}

static int s_chat(s_build_t *b, Agentbus__ChatRequest *c, Agentbus__InferenceOptions *o)
{
    agentbus__chat_request__init(c);
    if (s_tools(b, c) != 0)
        return -1;
    json_t *msgs = json_object_get(b->body, "messages");
    if (msgs && !json_is_null(msgs) && !json_is_array(msgs))
        return s_fail(b->err, b->cap, "invalid %s: expected an array", "messages");
    size_t n = json_array_size(msgs);
    Agentbus__ChatMessage *m = s_keep(b->a, calloc(n + 1, sizeof *m));
    c->messages = s_keep(b->a, calloc(n + 1, sizeof *c->messages));
    if (!m || !c->messages)
        return s_fail(b->err, b->cap, "%s", "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (s_message(b, json_array_get(msgs, i), &m[i]) != 0)
            return -1;
        c->messages[i] = &m[i];
    }
    c->n_messages = n;
    if (s_format(b->body, b->a, &c->format, b->err, b->cap) ||
        s_think(b->body, &c->think, b->err, b->cap) ||
        s_logprobs(b, &c->logprobs, &c->top_logprobs) ||
        s_keep_alive(b->body, b->ka, sizeof b->ka, &c->keep_alive, b->err, b->cap) ||
        s_stream(b->body, &b->req->stream, b->err, b->cap) ||
        s_options(json_object_get(b->body, "options"), o, &c->options, b->a, b->err, b->cap))
        return -1;
    int ht = 0, hs = 0;
    if (s_ctx_flags(b, &ht, &c->truncate, &hs, &c->shift) != 0)
        return -1;
    if (ht)
        c->has_truncate_case = AGENTBUS__CHAT_REQUEST__HAS_TRUNCATE_TRUNCATE;
    if (hs)
        c->has_shift_case = AGENTBUS__CHAT_REQUEST__HAS_SHIFT_SHIFT;
    b->in->kind = TL_INFER_CHAT;
    b->in->body.chat = c;
    return 0;
}

static int s_embed(s_build_t *b, Agentbus__EmbedRequest *e, Agentbus__InferenceOptions *o)
{
    agentbus__embed_request__init(e);
    json_t *in = json_object_get(b->body, "input");
    if (!in || json_is_null(in))
        in = json_object_get(b->body, "prompt");
    /* "" is no input, as [] and none are, as Ollama reads them: it then
     * loads the model and answers no embeddings (it was sent as [""], an
     * embedding of the empty text). */
    size_t n = json_is_string(in) ? json_string_length(in) > 0
               : json_is_array(in) ? json_array_size(in)
                                   : 0;
    if (in && !json_is_null(in) && !json_is_string(in) && !json_is_array(in))
        return s_fail(b->err, b->cap, "invalid %s: expected a string or strings", "input");
    e->input = s_keep(b->a, calloc(n + 1, sizeof(char *)));
    if (!e->input)
        return s_fail(b->err, b->cap, "%s", "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_is_string(in) ? in : json_array_get(in, i);
        if (!json_is_string(s))
            return s_fail(b->err, b->cap, "invalid %s: expected a string or strings", "input");
        e->input[i] = (char *)json_string_value(s);
    }
    e->n_input = n;
    int has_trunc = 0, trunc = 0;
    if (s_bool(b->body, "truncate", &has_trunc, &trunc, b->err, b->cap))
        return -1;
    if (has_trunc) {
        e->has_truncate_case = AGENTBUS__EMBED_REQUEST__HAS_TRUNCATE_TRUNCATE;
        e->truncate = trunc;
    }
    json_t *dims = json_object_get(b->body, "dimensions");
    if (dims && !json_is_null(dims)) { /* Ollama's: a positive integer */
        if (!json_is_integer(dims) || json_integer_value(dims) <= 0)
            return s_fail(b->err, b->cap, "invalid %s: expected a positive integer",
                          "dimensions");
        e->has_dimensions_case = AGENTBUS__EMBED_REQUEST__HAS_DIMENSIONS_DIMENSIONS;
        e->dimensions = json_integer_value(dims);
    }
    b->req->stream = 0;
    if (s_keep_alive(b->body, b->ka, sizeof b->ka, &e->keep_alive, b->err, b->cap) ||
        s_options(json_object_get(b->body, "options"), o, &e->options, b->a, b->err, b->cap))
        return -1;
    b->in->kind = TL_INFER_EMBED;
    b->in->body.embed = e;
    return 0;
}

/* Ollama fields the bus does not carry and that change what the model
 * does or what the client gets: a 400 naming them, never a silent drop.
 * template (generate): a prompt template overriding the model's. NULL,
 * or the text. */
static const char *s_uncarried(gw_kind_t kind, json_t *body)
{
    json_t *v = json_object_get(body, "template");
    if (kind == GW_GENERATE && v && !json_is_null(v) &&
        !(json_is_string(v) && !json_string_length(v)))
        return "template is not supported through the bus (set it in the model's Modelfile)";
    return NULL;
}

/* No prompt and no images (generate), or no messages (chat). */
static int s_is_command(gw_kind_t kind, json_t *body)
{
    if (kind == GW_GENERATE) {
        json_t *p = json_object_get(body, "prompt"), *im = json_object_get(body, "images");
        return (!p || json_is_null(p) || (json_is_string(p) && !json_string_length(p))) &&
               json_array_size(im) == 0;
    }
    if (kind == GW_CHAT) {
        json_t *m = json_object_get(body, "messages");
        return !m || json_is_null(m) || (json_is_array(m) && !json_array_size(m));
    }
    return 0;
}

int gw_req_from_json(gw_kind_t kind, json_t *body, gw_req_t *req, char *err, size_t errcap)
{
    memset(req, 0, sizeof *req);
    req->kind = kind;
    if (!json_is_object(body))
        return s_fail(err, errcap, "%s", "invalid request body: expected a JSON object");
    json_t *mv = json_object_get(body, "model");
    if (mv && !json_is_null(mv) && !json_is_string(mv))
        return s_fail(err, errcap, "%s", "invalid model: expected a string");
    const char *model = json_string_value(mv);
    if (!model || !*model)
        return s_fail(err, errcap, "%s", "model is required");
    if (strlen(model) >= sizeof req->model)
        return s_fail(err, errcap, "%s", "model name too long");
    snprintf(req->model, sizeof req->model, "%s", model);
    const char *uncarried = s_uncarried(kind, body);
    if (uncarried)
        return s_fail(err, errcap, "%s", uncarried);
    s_arena_t arena = {NULL, 0, 0, 0}, *a = &arena;
    tl_infer_t in = {0};
    Agentbus__GenerateRequest g;
    Agentbus__ChatRequest c;
    Agentbus__EmbedRequest e;
    Agentbus__InferenceOptions o;
    Agentbus__ModelCommand mc;
    s_build_t b = {body, req, a, &in, {0}, err, errcap};
    int rc;
    if (s_is_command(kind, body))
        rc = s_model_command(&b, &mc);
    else
        rc = kind == GW_GENERATE ? s_generate(&b, &g, &o)
             : kind == GW_CHAT   ? s_chat(&b, &c, &o)
                                 : s_embed(&b, &e, &o);
    if (rc == 0 && a->oom)
        rc = s_fail(err, errcap, "%s", "out of memory");
    if (rc == 0) {
        in.model = req->model;
        in.stream = req->stream;
        req->pb = tl_infer_pack(&in, &req->pb_len);
        if (!req->pb)
            rc = s_fail(err, errcap, "%s", "out of memory");
    }
    s_arena_free(a);
    return rc;
}

void gw_req_free(gw_req_t *req)
{
    free(req->pb);
    req->pb = NULL;
}

/* --- replies -------------------------------------------------------------------- */
static void s_timings(json_t *o, const Agentbus__InferenceTimings *t)
{
    if (!t)
        return;
    json_object_set_new(o, "total_duration", json_integer((json_int_t)t->total_duration));
    json_object_set_new(o, "load_duration", json_integer((json_int_t)t->load_duration));
    json_object_set_new(o, "prompt_eval_count", json_integer((json_int_t)t->prompt_eval_count));
    json_object_set_new(o, "prompt_eval_duration",
                        json_integer((json_int_t)t->prompt_eval_duration));
    json_object_set_new(o, "eval_count", json_integer((json_int_t)t->eval_count));
    json_object_set_new(o, "eval_duration", json_integer((json_int_t)t->eval_duration));
}

/* The worker's JSON TEXT as the array KEY of O when it is one (left out
 * when not, as when json_loads parsed it): checked and minified in place
 * (TEXT is the unpacked reply's), not parsed into a tree (gw_raw.h; a
 * hostile worker's 16 MiB text took ~17x its size in jansson nodes, on
 * the bus thread under --threads 0). */
static void s_put_raw(json_t *o, const char *key, char *text)
{
    size_t n;
    if (o && text && *text && gw_raw_array(text, &n))
        json_object_set_new(o, key, gw_raw_value(text, n));
}

/* The tokens' log probabilities (the JSON text the worker put in the
 * reply) as Ollama's top-level "logprobs"; text that is not an array is
 * left out, as tool calls are. */
static void s_put_logprobs(json_t *o, char *text)
{
    s_put_raw(o, "logprobs", text);
}

/* A generate's final answer: its context (the token ids), when it has one,
 * written as text (gw_raw.h): a jansson integer per id took ~60 bytes for
 * an id the worker packed in one, so a hostile worker's 16 MiB of ids
 * cost about a gigabyte in nodes; as text an id takes at most 11 bytes. */
static void s_put_context(json_t *o, const Agentbus__GenerateResponse *g)
{
    gw_raw_list_t l = {0};
    char id[16];
    for (size_t i = 0; o && i < g->n_context; i++) {
        gw_raw_list_item(&l);
        gw_raw_list_put(&l, id, (size_t)snprintf(id, sizeof id, "%u", (unsigned)g->context[i]));
    }
    json_t *a = gw_raw_list_value(&l);
    if (a)
        json_object_set_new(o, "context", a);
}

static json_t *s_generate_reply(const void *pb, size_t len)
{
    Agentbus__GenerateResponse *g = gw_pb_unpack(&agentbus__generate_response__descriptor, len, pb);
    if (!g)
        return NULL;
    json_t *o = json_pack("{s:s, s:s, s:s, s:b}", "model", g->model, "created_at", g->created_at,
                          "response", g->response, "done", g->done);
    if (o && g->thinking[0])
        json_object_set_new(o, "thinking", json_string(g->thinking));
    if (o && g->done) {
        json_object_set_new(o, "done_reason", json_string(g->done_reason));
        s_put_context(o, g);
        s_timings(o, g->timings);
    }
    s_put_logprobs(o, g->logprobs_json);
    agentbus__generate_response__free_unpacked(g, NULL);
    return o;
}

/* The model's tool calls (the JSON text the worker put in the reply) into
 * Ollama's message object; text that is not an array is left out. */
static void s_put_tool_calls(json_t *msg, char *text)
{
    s_put_raw(msg, "tool_calls", text);
}

static json_t *s_chat_reply(const void *pb, size_t len)
{
    Agentbus__ChatResponse *c = gw_pb_unpack(&agentbus__chat_response__descriptor, len, pb);
    if (!c)
        return NULL;
    const char *role = c->message && c->message->role[0] ? c->message->role : "assistant";
    json_t *o = json_pack("{s:s, s:s, s:{s:s, s:s}, s:b}", "model", c->model, "created_at",
                          c->created_at, "message", "role", role, "content",
                          c->message ? c->message->content : "", "done", c->done);
    if (o && c->message && c->message->thinking[0])
        json_object_set_new(json_object_get(o, "message"), "thinking",
                            json_string(c->message->thinking));
    if (o && c->message)
        s_put_tool_calls(json_object_get(o, "message"), c->message->tool_calls_json);
    if (o && c->done) {
        json_object_set_new(o, "done_reason", json_string(c->done_reason));
        s_timings(o, c->timings);
    }
    s_put_logprobs(o, c->logprobs_json);
    agentbus__chat_response__free_unpacked(c, NULL);
    return o;
}

/* An embedding's values as text (gw_raw.h): a jansson real took ~40
 * bytes for each 4-byte value of the worker's. DIGITS: gw_embed_digits. */
static json_t *s_vector(const Agentbus__Embedding *e, int digits)
{
    return gw_raw_floats(e ? e->values : NULL, e ? e->n_values : 0, digits);
}

int gw_embed_digits(const struct Agentbus__EmbedResponse *e)
{
    int most = 0;
    for (size_t i = 0; i < e->n_embeddings; i++) {
        int d = gw_raw_floats_digits(e->embeddings[i]->values, e->embeddings[i]->n_values);
        most = d > most ? d : most;
    }
    return most;
}

static json_t *s_embed_reply(const void *pb, size_t len, int legacy)
{
    Agentbus__EmbedResponse *e = gw_pb_unpack(&agentbus__embed_response__descriptor, len, pb);
    if (!e)
        return NULL;
    json_t *o;
    if (legacy) { /* only the first */
        const Agentbus__Embedding *v = e->n_embeddings ? e->embeddings[0] : NULL;
        o = json_pack("{s:o}", "embedding",
                      s_vector(v, v ? gw_raw_floats_digits(v->values, v->n_values) : 0));
    } else {
        json_t *embs = json_array();
        int digits = gw_embed_digits(e);
        for (size_t i = 0; embs && i < e->n_embeddings; i++)
            json_array_append_new(embs, s_vector(e->embeddings[i], digits));
        o = json_pack("{s:s, s:o, s:I, s:I, s:I}", "model", e->model, "embeddings", embs,
                      "total_duration", (json_int_t)e->total_duration, "load_duration",
                      (json_int_t)e->load_duration, "prompt_eval_count",
                      (json_int_t)e->prompt_eval_count);
    }
    agentbus__embed_response__free_unpacked(e, NULL);
    return o;
}

/* Appends "S" (quoted, escaped as jansson escapes) at *P; 0 if S has a
 * byte outside ASCII. Room: 6 bytes per input byte + 2. */
static int s_put_ascii(char **p, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    char *o = *p;
    *o++ = '"';
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c >= 0x80)
            return 0;
        if (*c == '"' || *c == '\\') {
            *o++ = '\\';
            *o++ = (char)*c;
        } else if (*c < 0x20) {
            const char *esc = *c == '\n' ? "\\n" : *c == '\r' ? "\\r" : *c == '\t' ? "\\t"
                              : *c == '\b' ? "\\b" : *c == '\f' ? "\\f" : NULL;
            if (esc) {
                memcpy(o, esc, 2);
                o += 2;
            } else {
                memcpy(o, "\\u00", 4);
                o[4] = hex[*c >> 4];
                o[5] = hex[*c & 15];
                o += 6;
            }
        } else {
            *o++ = (char)*c;
        }
    }
    *o++ = '"';
    *p = o;
    return 1;
}

/* {"model":M,"created_at":T,<mid>TEXT<tail>,"done":false}\n: the order
 * json_pack gives the keys in s_generate_reply and s_chat_reply. */
static int s_line(const char *model, const char *at, const char *mid, const char *text,
                  const char *tail, char **line, size_t *line_len)
{
    size_t cap = 6 * (strlen(model) + strlen(at) + strlen(text)) + 128;
    char *buf = malloc(cap), *p = buf;
    if (!buf)
        return 0;
    memcpy(p, "{\"model\":", 9);
    p += 9;
    int ok = s_put_ascii(&p, model);
    if (ok) {
        memcpy(p, ",\"created_at\":", 14);
        p += 14;
        ok = s_put_ascii(&p, at);
    }
    if (ok) {
        memcpy(p, mid, strlen(mid));
        p += strlen(mid);
        ok = s_put_ascii(&p, text);
    }
    if (!ok) {
        free(buf);
        return 0;
    }
    p += sprintf(p, "%s,\"done\":false}\n", tail);
    *line = buf;
    *line_len = (size_t)(p - buf);
    return 1;
}

int gw_ollama_line(gw_kind_t kind, const void *pb, size_t len, char **line, size_t *line_len)
{
    int ok = 0;
    if (kind == GW_GENERATE) {
        Agentbus__GenerateResponse *g = gw_pb_decode(&agentbus__generate_response__descriptor,
                                                     len, pb);
        /* a thinking piece or logprobs: rendered in full */
        if (g && !g->done && !g->thinking[0] && !g->logprobs_json[0])
            ok = s_line(g->model, g->created_at, ",\"response\":", g->response, "", line,
                        line_len);
        if (g)
            agentbus__generate_response__free_unpacked(g, NULL);
    } else if (kind == GW_CHAT) {
        Agentbus__ChatResponse *c = gw_pb_decode(&agentbus__chat_response__descriptor, len, pb);
        const char *role = c && c->message && c->message->role[0] ? c->message->role : NULL;
        /* only the usual role, no tool calls, thinking or logprobs: the line's
         * fixed text below says it (a chunk with them is rendered in full) */
        int calls = c && (c->logprobs_json[0] ||
                          (c->message && (c->message->tool_calls_json[0] ||
                                          c->message->thinking[0])));
        if (c && !c->done && role && strcmp(role, "assistant") == 0 && !calls)
            ok = s_line(c->model, c->created_at,
                        ",\"message\":{\"role\":\"assistant\",\"content\":",
                        c->message->content, "}", line, line_len);
        if (c)
            agentbus__chat_response__free_unpacked(c, NULL);
    }
    return ok;
}

json_t *gw_ollama_reply(gw_kind_t kind, const void *pb, size_t len, int legacy)
{
    if (kind == GW_GENERATE)
        return s_generate_reply(pb, len);
    if (kind == GW_CHAT)
        return s_chat_reply(pb, len);
    return s_embed_reply(pb, len, legacy);
}
