/*
 * ollama_json.c - Ollama's JSON <-> agentbus's typed inference messages.
 *
 * Requests: InferenceRequest (protobuf) -> the JSON body Ollama expects,
 * field for field (the proto keeps Ollama's names for exactly this).
 * Answers: each NDJSON line -> one GenerateResponse / ChatResponse, packed,
 * so the worker can send it as a PARTIAL the moment the line is complete.
 */
#include "ollama_json.h"
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "parse.h"
#include "text.h"
#include "tl_base64.h"
#include "tl_json.h"

#include <jansson.h>
#include <limits.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- requests ------------------------------------------------------------- */
static json_t *s_options(const Agentbus__InferenceOptions *o)
{
    json_t *j = json_object();
    if (!o || !j)
        return j;
    if (o->has_temperature_case)
        json_object_set_new(j, "temperature", json_real(o->temperature));
    if (o->has_seed_case)
        json_object_set_new(j, "seed", json_integer(o->seed));
    if (o->has_num_ctx_case)
        json_object_set_new(j, "num_ctx", json_integer(o->num_ctx));
    if (o->has_num_predict_case)
        json_object_set_new(j, "num_predict", json_integer(o->num_predict));
    if (o->has_top_k_case)
        json_object_set_new(j, "top_k", json_integer(o->top_k));
    if (o->has_top_p_case)
        json_object_set_new(j, "top_p", json_real(o->top_p));
    if (o->has_repeat_penalty_case)
        json_object_set_new(j, "repeat_penalty", json_real(o->repeat_penalty));
    if (o->has_min_p_case)
        json_object_set_new(j, "min_p", json_real(o->min_p));
    if (o->n_stop) {
        json_t *a = json_array();
        for (size_t i = 0; i < o->n_stop; i++)
            json_array_append_new(a, json_string(o->stop[i]));
        json_object_set_new(j, "stop", a);
    }
    /* the other options, as given (the typed ones above win a clash) */
    json_t *extra = o->extra_json && *o->extra_json
                        ? json_loads(o->extra_json, JSON_REJECT_DUPLICATES, NULL) : NULL;
    if (json_is_object(extra))
        json_object_update_missing(j, extra);
    json_decref(extra);
    return j;
}

static void s_set_str(json_t *j, const char *key, const char *v)
{
    if (v && *v)
        json_object_set_new(j, key, json_string(v));
}

/* format: "json" stays a string; a JSON schema travels on the bus as its
 * text (InferenceRequest.format) and goes to Ollama as the object it is:
 * Ollama refuses a schema given as a string. Text that does not parse as
 * an object is passed as it came, for Ollama to refuse in its own words. */
static void s_set_format(json_t *j, const char *v)
{
    if (!v || !*v)
        return;
    const char *p = v + strspn(v, " \t\r\n");
    json_t *o = *p == '{' ? json_loads(p, JSON_REJECT_DUPLICATES, NULL) : NULL;
    if (o && json_is_object(o)) {
        json_object_set_new(j, "format", o);
        return;
    }
    json_decref(o);
    json_object_set_new(j, "format", json_string(v));
}

/* keep_alive: Ollama takes a duration string or a number of seconds. */
static void s_set_keep_alive(json_t *j, const char *v)
{
    if (!v || !*v)
        return;
    long n; /* strtol read " 5" or "+5" as 5, and a number past LONG_MAX as LONG_MAX */
    if (ab_parse_long(v, LONG_MIN, LONG_MAX, &n) == 0)
        json_object_set_new(j, "keep_alive", json_integer(n));
    else
        json_object_set_new(j, "keep_alive", json_string(v));
}

/* think: "true" / "false" as JSON booleans, a level ("low", ...) as the
 * string it is (Ollama checks it); "" = not given, nothing sent. */
static void s_set_think(json_t *j, const char *v)
{
    if (!v || !*v)
        return;
    if (strcmp(v, "true") == 0 || strcmp(v, "false") == 0)
        json_object_set_new(j, "think", json_boolean(v[0] == 't'));
    else
        json_object_set_new(j, "think", json_string(v));
}

/* logprobs and top_logprobs, only when asked (Ollama's defaults otherwise). */
static void s_set_logprobs(json_t *j, protobuf_c_boolean lp, int32_t top)
{
    if (lp)
        json_object_set_new(j, "logprobs", json_true());
    if (top)
        json_object_set_new(j, "top_logprobs", json_integer(top));
}

/* context: the token ids of an earlier answer, as Ollama's array. */
static void s_set_context(json_t *j, size_t n, const uint32_t *ids)
{
    json_t *a = n ? json_array() : NULL;
    for (size_t i = 0; a && i < n; i++)
        json_array_append_new(a, json_integer(ids[i]));
    if (a)
        json_object_set_new(j, "context", a);
}

static int s_fail(char *err, size_t cap, const char *what)
{
    snprintf(err, cap, "%s", what);
    return -1;
}

/* images: bytes on the bus, base64 strings in Ollama's JSON ("images" of
 * a generate or of a chat message). -1 when out of memory. */
static int s_set_images(json_t *j, size_t n, const ProtobufCBinaryData *im)
{
    if (!n)
        return 0;
    json_t *a = json_array();
    json_object_set_new(j, "images", a);
    for (size_t i = 0; i < n; i++) {
        char *b64 = tl_base64_encode(im[i].data, im[i].len);
        if (!b64 || json_array_append_new(a, json_string(b64)) != 0) {
            free(b64);
            return -1;
        }
        free(b64);
    }
    return 0;
}

/* Each s_build_* fills J and CALL from one request kind; returns its model
 * or NULL with ERR set. */
static const char *s_build_generate(const Agentbus__GenerateRequest *g, json_t *j,
                                    wk_ol_call_t *call, char *err, size_t cap)
{
    call->kind = WK_OL_GENERATE;
    call->path = "/api/generate";
    call->stream = g->has_stream_case ? g->stream : 1;
    s_set_str(j, "prompt", g->prompt);
    s_set_str(j, "system", g->system);
    s_set_format(j, g->format);
    s_set_str(j, "suffix", g->suffix);
    s_set_think(j, g->think);
    s_set_logprobs(j, g->logprobs, g->top_logprobs);
    s_set_context(j, g->n_context, g->context);
    if (g->has_truncate_case)
        json_object_set_new(j, "truncate", json_boolean(g->truncate));
    if (g->has_shift_case)
        json_object_set_new(j, "shift", json_boolean(g->shift));
    if (g->raw)
        json_object_set_new(j, "raw", json_true());
    s_set_keep_alive(j, g->keep_alive);
    if (g->options)
        json_object_set_new(j, "options", s_options(g->options));
    if (!g->prompt || !*g->prompt)
        return s_fail(err, cap, "generate needs a prompt"), NULL;
    if (s_set_images(j, g->n_images, g->images) != 0)
        return s_fail(err, cap, "out of memory encoding the images"), NULL;
    return g->model;
}

/* JSON text carried on the bus (tools_json, tool_calls_json) back into the
 * array Ollama takes: 0 (nothing set when TEXT is ""), -1 when it is not
 * a JSON array (the request is malformed: BAD_REQUEST, not a silent drop). */
static int s_set_json_array(json_t *j, const char *key, const char *text)
{
    if (!text || !*text)
        return 0;
    json_t *a = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_array(a)) {
        json_decref(a);
        return -1;
    }
    json_object_set_new(j, key, a);
    return 0;
}

/* One chat message as Ollama takes it: role, content, images, and the
 * tool fields (an assistant's tool_calls, a tool result's tool_name).
 * NULL when its tool_calls do not parse (or out of memory). */
static json_t *s_chat_message(const Agentbus__ChatMessage *cm)
{
    json_t *m = json_object();
    json_object_set_new(m, "role", json_string(cm->role));
    json_object_set_new(m, "content", json_string(cm->content));
    s_set_str(m, "tool_name", cm->tool_name);
    s_set_str(m, "thinking", cm->thinking);
    if (s_set_images(m, cm->n_images, cm->images) != 0 ||
        s_set_json_array(m, "tool_calls", cm->tool_calls_json) != 0) {
        json_decref(m);
        return NULL;
    }
    return m;
}

static const char *s_build_chat(const Agentbus__ChatRequest *c, json_t *j, wk_ol_call_t *call,
                                char *err, size_t cap)
{
    call->kind = WK_OL_CHAT;
    call->path = "/api/chat";
    call->stream = c->has_stream_case ? c->stream : 1;
    json_t *msgs = json_array();
    json_object_set_new(j, "messages", msgs);
    for (size_t i = 0; i < c->n_messages; i++) {
        json_t *m = s_chat_message(c->messages[i]);
        if (!m)
            return s_fail(err, cap, "invalid tool_calls (a JSON array) or out of memory"), NULL;
        json_array_append_new(msgs, m);
    }
    if (s_set_json_array(j, "tools", c->tools_json) != 0)
        return s_fail(err, cap, "invalid tools: expected a JSON array"), NULL;
    s_set_format(j, c->format);
    s_set_think(j, c->think);
    s_set_logprobs(j, c->logprobs, c->top_logprobs);
    if (c->has_truncate_case)
        json_object_set_new(j, "truncate", json_boolean(c->truncate));
    if (c->has_shift_case)
        json_object_set_new(j, "shift", json_boolean(c->shift));
    s_set_keep_alive(j, c->keep_alive);
    if (c->options)
        json_object_set_new(j, "options", s_options(c->options));
    if (!c->n_messages)
        return s_fail(err, cap, "chat needs at least one message"), NULL;
    return c->model;
}

static const char *s_build_embed(const Agentbus__EmbedRequest *e, json_t *j, wk_ol_call_t *call)
{
    call->kind = WK_OL_EMBED;
    call->path = "/api/embed";
    call->stream = 0; /* Ollama answers embeddings in one object */
    json_t *in = json_array();
    for (size_t i = 0; i < e->n_input; i++)
        json_array_append_new(in, json_string(e->input[i]));
    json_object_set_new(j, "input", in);
    if (e->has_truncate_case)
        json_object_set_new(j, "truncate", json_boolean(e->truncate));
    if (e->has_dimensions_case)
        json_object_set_new(j, "dimensions", json_integer(e->dimensions));
    s_set_keep_alive(j, e->keep_alive);
    if (e->options)
        json_object_set_new(j, "options", s_options(e->options));
    /* No input goes on as input [] too: Ollama then loads the model and
     * answers no embeddings (a client's way to preload an embedding model,
     * which /api/generate refuses to load: it "does not support generate"). */
    return e->model;
}

/* Load and unload: a request with only a model (and keep_alive 0 to unload). */
static const char *s_build_command(const Agentbus__ModelCommand *m, int load, json_t *j,
                                   wk_ol_call_t *call)
{
    call->kind = load ? WK_OL_LOAD : WK_OL_UNLOAD;
    call->path = "/api/generate";
    call->stream = 1;
    if (load)
        s_set_keep_alive(j, m->keep_alive);
    else
        json_object_set_new(j, "keep_alive", json_integer(0));
    return m->model;
}

static int s_utf8(const char *s)
{
    for (size_t n; *s; s += n)
        if ((n = ab_utf8_seq((const unsigned char *)s)) == 0)
            return 0;
    return 1;
}

/* The name of the first string of M (or of a message in it) that is not
 * UTF-8, or NULL. json_string refuses such text, and the field was left out
 * of Ollama's body without a word: a generate whose prompt was not UTF-8
 * went as a load (no prompt) and was answered empty, with success. */
static const char *s_not_utf8(const ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *d = m ? m->descriptor : NULL;
    for (unsigned i = 0; d && i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *base = (const char *)m;
        if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)(base + f->quantifier_offset) != f->id)
            continue; /* another member of its oneof is set */
        size_t n = 1;
        void *const *items = (void *const *)(base + f->offset);
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            n = *(const size_t *)(base + f->quantifier_offset);
            items = *(void *const *const *)(base + f->offset);
        }
        for (size_t k = 0; items && k < n; k++) {
            const char *bad = !items[k] ? NULL
                              : f->type == PROTOBUF_C_TYPE_MESSAGE ? s_not_utf8(items[k])
                              : s_utf8(items[k]) ? NULL : f->name;
            if (bad)
                return bad;
        }
    }
    return NULL;
}

/* -1 (R freed, ERR saying which field) when a string of R is not UTF-8. */
static int s_refuse_not_utf8(Agentbus__InferenceRequest *r, char *err, size_t errcap)
{
    const char *bad = s_not_utf8(&r->base);
    if (!bad)
        return 0;
    snprintf(err, errcap, "the request's %s is not UTF-8 text", bad);
    agentbus__inference_request__free_unpacked(r, NULL);
    return -1;
}

int wk_ol_call_build(const void *pb, size_t len, wk_ol_call_t *call, char *err, size_t errcap)
{
    memset(call, 0, sizeof *call);
    /* within a budget: a client's 40 MB chat request of empty messages took
     * a record for each, gigabytes (ab_pb_unpack) */
    Agentbus__InferenceRequest *r = (Agentbus__InferenceRequest *)ab_pb_unpack(
        &agentbus__inference_request__descriptor, len, pb);
    if (!r)
        return s_fail(err, errcap, "payload is not an agentbus.InferenceRequest (or it "
                      "decodes to more than 4x its size)");
    if (s_refuse_not_utf8(r, err, errcap) != 0)
        return -1;
    json_t *j = json_object();
    const char *model = NULL;
    switch (r->body_case) {
    case AGENTBUS__INFERENCE_REQUEST__BODY_GENERATE:
        model = s_build_generate(r->generate, j, call, err, errcap);
        break;
    case AGENTBUS__INFERENCE_REQUEST__BODY_CHAT:
        model = s_build_chat(r->chat, j, call, err, errcap);
        break;
    case AGENTBUS__INFERENCE_REQUEST__BODY_EMBED:
        model = s_build_embed(r->embed, j, call);
        break;
    case AGENTBUS__INFERENCE_REQUEST__BODY_LOAD:
        model = s_build_command(r->load, 1, j, call);
        break;
    case AGENTBUS__INFERENCE_REQUEST__BODY_UNLOAD:
        model = s_build_command(r->unload, 0, j, call);
        break;
    default:
        s_fail(err, errcap, "InferenceRequest has no body");
        break;
    }
    int rc = model ? 0 : -1;
    if (rc == 0 && !*model)
        rc = s_fail(err, errcap, "the request names no model");
    if (rc == 0 && strlen(model) >= sizeof call->model)
        rc = s_fail(err, errcap, "model name too long");
    if (rc == 0) {
        snprintf(call->model, sizeof call->model, "%s", model);
        json_object_set_new(j, "model", json_string(model));
        /* Always streamed: bytes say at once that Ollama began (a CANCEL
         * at the deadline is then no failure of the worker's); a client's
         * stream: false answer is put together by the worker
         * (ollama_assemble.h). Embeddings come in one object. */
        if (call->kind != WK_OL_EMBED)
            json_object_set_new(j, "stream", json_true());
        call->body = tl_json_dumps(j, JSON_COMPACT); /* 0.7f as 0.7 */
        if (!call->body)
            rc = s_fail(err, errcap, "out of memory");
        else
            call->body_len = strlen(call->body);
    }
    json_decref(j);
    agentbus__inference_request__free_unpacked(r, NULL);
    return rc;
}

void wk_ol_call_free(wk_ol_call_t *call)
{
    free(call->body);
    call->body = NULL;
}

/* --- answers -------------------------------------------------------------- */
static const char *s_str(json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : "";
}

static uint64_t s_u64(json_t *o, const char *key)
{
    json_int_t v = json_integer_value(json_object_get(o, key));
    return v > 0 ? (uint64_t)v : 0;
}

static void s_timings(json_t *o, Agentbus__InferenceTimings *t)
{
    t->total_duration = s_u64(o, "total_duration");
    t->load_duration = s_u64(o, "load_duration");
    t->prompt_eval_count = s_u64(o, "prompt_eval_count");
    t->prompt_eval_duration = s_u64(o, "prompt_eval_duration");
    t->eval_count = s_u64(o, "eval_count");
    t->eval_duration = s_u64(o, "eval_duration");
}

static int s_pack(const ProtobufCMessage *m, wk_ol_chunk_t *c)
{
    c->pb_len = protobuf_c_message_get_packed_size(m);
    c->pb = malloc(c->pb_len ? c->pb_len : 1);
    if (!c->pb) {
        snprintf(c->error, sizeof c->error, "out of memory");
        return -1;
    }
    protobuf_c_message_pack(m, c->pb);
    return 0;
}

static int s_embed(json_t *o, const char *worker, wk_ol_chunk_t *c)
{
    Agentbus__EmbedResponse er;
    agentbus__embed_response__init(&er);
    er.model = (char *)s_str(o, "model");
    er.total_duration = s_u64(o, "total_duration");
    er.load_duration = s_u64(o, "load_duration");
    er.prompt_eval_count = s_u64(o, "prompt_eval_count");
    er.worker = (char *)worker;
    json_t *embs = json_object_get(o, "embeddings");
    size_t n = json_is_array(embs) ? json_array_size(embs) : 0;
    Agentbus__Embedding *ev = calloc(n + 1, sizeof *ev);
    Agentbus__Embedding **evp = calloc(n + 1, sizeof *evp);
    int rc = ev && evp ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        json_t *vec = json_array_get(embs, i);
        size_t k = json_is_array(vec) ? json_array_size(vec) : 0;
        agentbus__embedding__init(&ev[i]);
        ev[i].values = malloc((k + 1) * sizeof(float));
        if (!ev[i].values) {
            rc = -1;
            break;
        }
        ev[i].n_values = k;
        for (size_t x = 0; x < k; x++)
            ev[i].values[x] = (float)json_number_value(json_array_get(vec, x));
        evp[i] = &ev[i];
    }
    if (rc == 0) {
        er.n_embeddings = n;
        er.embeddings = evp;
        rc = s_pack(&er.base, c);
    } else {
        snprintf(c->error, sizeof c->error, "out of memory");
    }
    for (size_t i = 0; ev && i < n; i++)
        free(ev[i].values);
    free(ev);
    free(evp);
    return rc;
}

/* The line's logprobs (an array of entries) as the JSON text the proto
 * carries, keys sorted (the same entries give the same bytes) and each
 * value as short as the float it is (tl_json.h); NULL when there are none
 * (or no memory: the answer goes on without them). */
static char *s_logprobs_text(json_t *o)
{
    json_t *lp = json_object_get(o, "logprobs");
    return json_array_size(lp) ? tl_json_dumps(lp, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
}

/* A generate's context (token ids) into a malloc'd array of *N; NULL when
 * it has none. An id that is not an integer in 0..2^32-1 is left out
 * (the line is bounded, so is the count). */
static uint32_t *s_context(json_t *o, size_t *n)
{
    json_t *a = json_object_get(o, "context"), *x;
    size_t i, k = 0;
    uint32_t *ids = json_array_size(a) ? malloc(json_array_size(a) * sizeof *ids) : NULL;
    json_array_foreach(a, i, x) {
        if (ids && json_is_integer(x) && json_integer_value(x) >= 0 &&
            json_integer_value(x) <= (json_int_t)UINT32_MAX)
            ids[k++] = (uint32_t)json_integer_value(x);
    }
    *n = k;
    return ids;
}

/* A generate answer's line: its text and thinking, logprobs and, on the
 * final line, the reason, timings and context. */
static int s_generate_chunk(json_t *o, const char *worker, Agentbus__InferenceTimings *t,
                            wk_ol_chunk_t *c)
{
    Agentbus__GenerateResponse gr;
    agentbus__generate_response__init(&gr);
    gr.model = (char *)s_str(o, "model");
    gr.created_at = (char *)s_str(o, "created_at");
    gr.response = (char *)s_str(o, "response");
    gr.thinking = (char *)s_str(o, "thinking");
    char *lp = s_logprobs_text(o);
    gr.logprobs_json = lp ? lp : "";
    gr.done = c->done;
    if (c->done) {
        gr.done_reason = c->done_reason;
        gr.timings = t;
        gr.worker = (char *)worker;
        gr.context = s_context(o, &gr.n_context);
    }
    int rc = s_pack(&gr.base, c);
    free(gr.context);
    free(lp);
    return rc;
}

/* A chat answer's line: its message (with the model's tool calls, if
 * any) and, on the final line, the reason and timings. */
static int s_chat_chunk(json_t *o, const char *worker, Agentbus__InferenceTimings *t,
                        wk_ol_chunk_t *c)
{
    int rc;
    Agentbus__ChatResponse cr;
    Agentbus__ChatMessage m;
    agentbus__chat_response__init(&cr);
    agentbus__chat_message__init(&m);
    json_t *msg = json_object_get(o, "message");
    m.role = (char *)s_str(msg, "role");
    m.content = (char *)s_str(msg, "content");
    m.thinking = (char *)s_str(msg, "thinking");
    /* the model's tool calls, as the JSON text the proto carries
     * (keys sorted: the same calls give the same bytes) */
    json_t *calls = json_object_get(msg, "tool_calls");
    char *calls_txt = json_array_size(calls)
                          ? tl_json_dumps(calls, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    m.tool_calls_json = calls_txt ? calls_txt : "";
    char *lp = s_logprobs_text(o);
    cr.logprobs_json = lp ? lp : "";
    cr.model = (char *)s_str(o, "model");
    cr.created_at = (char *)s_str(o, "created_at");
    cr.message = &m;
    cr.done = c->done;
    if (c->done) {
        cr.done_reason = c->done_reason;
        cr.timings = t;
        cr.worker = (char *)worker;
    }
    rc = s_pack(&cr.base, c);
    free(calls_txt);
    free(lp);
    return rc;
}

/* --- what decoding one line may take -------------------------------------- */
/* jansson takes about 24 times a line's bytes for an array of small
 * numbers (a json_t of 32 bytes and a slot for each "1,": a 14 MB
 * "context" of 7M ids peaked at 335 MB). While a line is decoded its
 * allocations are counted (by malloc_usable_size) and refused past
 * WK_OL_DECODE_MAX, so that decode fails instead of the worker growing.
 * Per thread; the functions are jansson's from the first decode on. */
static _Thread_local size_t s_dec_used, s_dec_cap;
static _Thread_local int s_dec_over;

static void *s_json_malloc(size_t n)
{
    void *p = malloc(n);
    if (!p || !s_dec_cap)
        return p;
    s_dec_used += malloc_usable_size(p);
    if (s_dec_used <= s_dec_cap)
        return p;
    s_dec_used -= malloc_usable_size(p);
    s_dec_over = 1;
    free(p);
    return NULL;
}

static void s_json_free(void *p)
{
    if (p && s_dec_cap) {
        size_t n = malloc_usable_size(p);
        s_dec_used = n < s_dec_used ? s_dec_used - n : 0;
    }
    free(p);
}

/* 32 for a value after a comma at P (LEN bytes on), 8 for true, false or
 * null: jansson's are shared, only their slot is allocated. */
static size_t s_value_floor(const char *p, size_t len)
{
    size_t i = 0;
    while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
        i++;
    return i < len && (p[i] == 't' || p[i] == 'f' || p[i] == 'n') ? 8 : 32;
}

size_t wk_ol_decode_floor(const char *line, size_t len)
{
    size_t floor = 0;
    int in_string = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = line[i];
        if (in_string) {
            if (ch == '\\')
                i++; /* the escaped character, a quote too */
            else if (ch == '"')
                in_string = 0;
        } else if (ch == '"') {
            in_string = 1;
        } else if (ch == ',') {
            floor += s_value_floor(line + i + 1, len - i - 1);
        }
    }
    return floor;
}

/* json_loadb within WK_OL_DECODE_MAX; *OVER says a NULL was the bound. A
 * line whose floor is past it is refused without a decode: decoding up to
 * the bound took 0.5-0.9 s for a 14 MB context of 7M ids (load average 3),
 * the worker's one thread silent meanwhile, and on a busier host long
 * enough for the broker to find it dead and take its requests back. */
static json_t *s_load_bounded(const char *line, size_t len, json_error_t *je, int *over)
{
    /* A comma and a value take 2 bytes or more for the floor's 32: a line
     * under 1/16 of the bound cannot pass it, and is not scanned (a token's
     * line is a few hundred bytes). */
    if (len > WK_OL_DECODE_MAX / 16 && wk_ol_decode_floor(line, len) > WK_OL_DECODE_MAX) {
        *over = 1;
        je->text[0] = 0;
        return NULL;
    }
    static int installed;
    if (!installed) {
        installed = 1;
        json_set_alloc_funcs(s_json_malloc, s_json_free);
    }
    s_dec_used = 0;
    s_dec_over = 0;
    s_dec_cap = WK_OL_DECODE_MAX;
    json_t *o = json_loadb(line, len, 0, je);
    s_dec_cap = 0;
    *over = s_dec_over;
    return o;
}

int wk_ol_chunk_parse(wk_ol_kind_t kind, const char *line, size_t len, const char *worker,
                      wk_ol_chunk_t *c)
{
    memset(c, 0, sizeof *c);
    json_error_t je;
    int over;
    json_t *o = s_load_bounded(line, len, &je, &over);
    if (!o || !json_is_object(o)) {
        if (over)
            snprintf(c->error, sizeof c->error, "Ollama sent a line of %zu bytes that takes "
                     "over the worker's %u MiB to decode", len, WK_OL_DECODE_MAX >> 20);
        else
            snprintf(c->error, sizeof c->error, "backend sent invalid JSON: %s",
                     o ? "not an object" : je.text);
        json_decref(o);
        return over ? -2 : -1;
    }
    json_t *e = json_object_get(o, "error");
    if (e) {
        snprintf(c->error, sizeof c->error, "%s",
                 json_is_string(e) ? json_string_value(e) : "backend error");
        if (!c->error[0])
            snprintf(c->error, sizeof c->error, "backend error");
        json_decref(o);
        return 0;
    }
    c->done = json_is_true(json_object_get(o, "done"));
    snprintf(c->done_reason, sizeof c->done_reason, "%s", s_str(o, "done_reason"));
    Agentbus__InferenceTimings t;
    agentbus__inference_timings__init(&t);
    s_timings(o, &t);
    int rc;
    if (kind == WK_OL_EMBED) {
        c->done = 1;
        rc = s_embed(o, worker, c);
    } else if (kind == WK_OL_CHAT) {
        rc = s_chat_chunk(o, worker, &t, c);
    } else {
        rc = s_generate_chunk(o, worker, &t, c);
    }
    json_decref(o);
    return rc;
}

/* --- line splitting ------------------------------------------------------- */
void wk_ndjson_init(wk_ndjson_t *nd, size_t max_line)
{
    memset(nd, 0, sizeof *nd);
    nd->max = max_line;
}

void wk_ndjson_fini(wk_ndjson_t *nd)
{
    free(nd->buf);
    memset(nd, 0, sizeof *nd);
}

static int s_emit(const char *p, size_t n, wk_ndjson_fn *fn, void *arg)
{
    while (n && (p[n - 1] == '\r' || p[n - 1] == ' '))
        n--;
    return n ? fn(p, n, arg) : 0;
}

/* Hands on the line gathered in the buffer, then frees a buffer one big
 * line grew: kept, it held up to the line bound for the rest of the
 * stream (one slot's for as long as its request ran). */
static int s_emit_buffered(wk_ndjson_t *nd, wk_ndjson_fn *fn, void *arg)
{
    size_t l = nd->len;
    nd->len = 0;
    int rc = l ? s_emit(nd->buf, l, fn, arg) : 0;
    if (nd->cap > WK_NDJSON_KEEP_MAX) {
        free(nd->buf);
        nd->buf = NULL;
        nd->cap = 0;
    }
    return rc;
}

int wk_ndjson_feed(wk_ndjson_t *nd, const char *data, size_t n, wk_ndjson_fn *fn, void *arg)
{
    while (n) {
        const char *nl = memchr(data, '\n', n);
        size_t take = nl ? (size_t)(nl - data) : n;
        if (nd->len + take > nd->max)
            return -1;
        if (nd->len == 0 && nl) { /* whole line in DATA: no copy */
            int rc = s_emit(data, take, fn, arg);
            if (rc)
                return rc;
        } else {
            if (nd->len + take > nd->cap) {
                size_t cap = nd->cap ? nd->cap : 1024;
                while (cap < nd->len + take)
                    cap *= 2;
                char *b = realloc(nd->buf, cap);
                if (!b)
                    return -1;
                nd->buf = b;
                nd->cap = cap;
            }
            memcpy(nd->buf + nd->len, data, take);
            nd->len += take;
            if (nl) {
                int rc = s_emit_buffered(nd, fn, arg);
                if (rc)
                    return rc;
            }
        }
        if (!nl)
            break;
        data = nl + 1;
        n -= take + 1;
    }
    return 0;
}

int wk_ndjson_finish(wk_ndjson_t *nd, wk_ndjson_fn *fn, void *arg)
{
    return s_emit_buffered(nd, fn, arg);
}

/* --- backend state (/api/tags, /api/ps, /api/version) --------------------- */
static char *s_dup(const char *s)
{
    return strdup(s ? s : "");
}

/* A string of the backend's, cut to WK_OL_STR_MAX bytes (whole UTF-8
 * characters): the broker refuses a REGISTER with a longer one. */
static char *s_clip(const char *s)
{
    size_t n = strlen(s ? s : "");
    if (n > WK_OL_STR_MAX)
        for (n = WK_OL_STR_MAX; n && ((unsigned char)s[n] & 0xC0) == 0x80; n--)
            ;
    return strndup(s ? s : "", n);
}

/* Whether entry M of a list goes into the state, charged to *BYTES (what
 * the list may still hold, its strings cut to WK_OL_STR_MAX): a name a
 * request can give (1..AB_MODEL_MAX bytes), fewer than WK_OL_MODELS_MAX
 * taken (K) and room left. */
static int s_keep(json_t *m, json_t *d, size_t k, size_t *bytes)
{
    size_t name = strlen(s_str(m, "name")), cost = name, i;
    static const char *keys[] = {"digest", "expires_at"}, *dkeys[] = {"family", "parameter_size",
                                                                      "quantization_level"};
    for (i = 0; i < 2; i++)
        cost += strnlen(s_str(m, keys[i]), WK_OL_STR_MAX);
    for (i = 0; i < 3; i++)
        cost += strnlen(s_str(d, dkeys[i]), WK_OL_STR_MAX);
    if (name == 0 || name > AB_MODEL_MAX || k >= WK_OL_MODELS_MAX || cost > *bytes)
        return 0;
    *bytes -= cost;
    return 1;
}

static void s_free_models(Agentbus__InferenceState *st)
{
    for (size_t i = 0; i < st->n_models; i++) {
        Agentbus__ModelInfo *m = st->models[i];
        free(m->name);
        free(m->digest);
        free(m->family);
        free(m->parameter_size);
        free(m->quantization_level);
        free(m);
    }
    free(st->models);
    st->models = NULL;
    st->n_models = 0;
}

static void s_free_loaded(Agentbus__InferenceState *st)
{
    for (size_t i = 0; i < st->n_loaded; i++) {
        free(st->loaded[i]->name);
        free(st->loaded[i]->digest);
        free(st->loaded[i]->expires_at);
        free(st->loaded[i]);
    }
    free(st->loaded);
    st->loaded = NULL;
    st->n_loaded = 0;
}

static json_t *s_models_array(const char *json, size_t len)
{
    json_t *o = json_loadb(json, len, 0, NULL);
    json_t *a = json_object_get(o, "models");
    if (!json_is_array(a)) {
        json_decref(o);
        return NULL;
    }
    json_incref(a);
    json_decref(o);
    return a;
}

int wk_ol_parse_tags(const char *json, size_t len, Agentbus__InferenceState *st)
{
    json_t *a = s_models_array(json, len);
    if (!a)
        return -1;
    size_t n = json_array_size(a), k = 0, bytes = WK_OL_TAGS_BYTES;
    Agentbus__ModelInfo **v = calloc(n + 1, sizeof *v);
    for (size_t i = 0; v && i < n; i++) {
        json_t *m = json_array_get(a, i), *d = json_object_get(m, "details");
        if (!s_keep(m, d, k, &bytes))
            continue;
        Agentbus__ModelInfo *x = malloc(sizeof *x);
        if (!x)
            break;
        agentbus__model_info__init(x);
        x->name = s_dup(s_str(m, "name"));
        x->digest = s_clip(s_str(m, "digest"));
        x->size = s_u64(m, "size");
        x->family = s_clip(s_str(d, "family"));
        x->parameter_size = s_clip(s_str(d, "parameter_size"));
        x->quantization_level = s_clip(s_str(d, "quantization_level"));
        v[k++] = x;
    }
    json_decref(a);
    if (!v)
        return -1;
    s_free_models(st);
    st->models = v;
    st->n_models = k;
    return (int)(n - k);
}

int wk_ol_parse_ps(const char *json, size_t len, Agentbus__InferenceState *st)
{
    json_t *a = s_models_array(json, len);
    if (!a)
        return -1;
    size_t n = json_array_size(a), bytes = WK_OL_PS_BYTES;
    Agentbus__LoadedModel **v = calloc(n + 1, sizeof *v);
    size_t k = 0;
    for (size_t i = 0; v && i < n; i++) {
        json_t *m = json_array_get(a, i);
        if (!s_keep(m, NULL, k, &bytes))
            continue;
        Agentbus__LoadedModel *x = malloc(sizeof *x);
        if (!x)
            break;
        agentbus__loaded_model__init(x);
        x->name = s_dup(s_str(m, "name"));
        x->digest = s_clip(s_str(m, "digest"));
        x->size = s_u64(m, "size");
        x->size_vram = s_u64(m, "size_vram");
        /* To the second: sub-second jitter in a backend's expiry must not
         * look like a change worth re-registering for. */
        x->expires_at = s_clip(s_str(m, "expires_at"));
        char *frac = x->expires_at ? strchr(x->expires_at, '.') : NULL;
        if (frac && strlen(x->expires_at) > 19)
            strcpy(frac, "Z");
        v[k++] = x;
    }
    json_decref(a);
    if (!v)
        return -1;
    s_free_loaded(st);
    st->loaded = v;
    st->n_loaded = k;
    return (int)(n - k);
}

int wk_ol_parse_version(const char *json, size_t len, Agentbus__InferenceState *st)
{
    json_t *o = json_loadb(json, len, 0, NULL);
    const char *v = json_string_value(json_object_get(o, "version"));
    int rc = -1;
    if (v) {
        char *d = s_clip(v);
        if (d) {
            if (st->backend_version != protobuf_c_empty_string)
                free(st->backend_version);
            st->backend_version = d;
            rc = 0;
        }
    }
    json_decref(o);
    return rc;
}

void wk_ol_state_clear(Agentbus__InferenceState *st)
{
    s_free_models(st);
    s_free_loaded(st);
    if (st->backend_version && st->backend_version != protobuf_c_empty_string)
        free(st->backend_version);
    st->backend_version = NULL;
    for (size_t i = 0; i < st->n_gpus; i++) {
        free(st->gpus[i]->name);
        free(st->gpus[i]);
    }
    free(st->gpus);
    st->gpus = NULL;
    st->n_gpus = 0;
}
