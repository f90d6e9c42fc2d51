/*
 * gw_openai.c - the OpenAI-compatible routes. A request body is rewritten
 * into Ollama's shape and built by gw_req_from_json, so an OpenAI call and
 * the equivalent Ollama call are the same bus request (and cache entry);
 * answers are rendered from the typed replies: one object, or server-sent
 * events (data: {...} per chunk, data: [DONE] at the end).
 */
#include "gw_http.h"
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "tl_json.h"
#include "grow.h"

#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* --- requests ------------------------------------------------------------------- */
static void s_copy(json_t *to, const char *tkey, json_t *from, const char *fkey)
{
    json_t *v = json_object_get(from, fkey);
    if (v && !json_is_null(v))
        json_object_set(to, tkey, v);
}

static json_t *s_options(json_t *b)
{
    json_t *o = json_object();
    s_copy(o, "temperature", b, "temperature");
    s_copy(o, "top_p", b, "top_p");
    s_copy(o, "seed", b, "seed");
    s_copy(o, "stop", b, "stop");
    s_copy(o, "num_predict", b, "max_tokens");
    s_copy(o, "num_predict", b, "max_completion_tokens");
    s_copy(o, "presence_penalty", b, "presence_penalty"); /* Ollama's options of the same name */
    s_copy(o, "frequency_penalty", b, "frequency_penalty");
    return o;
}

static const char *s_part_text(json_t *part)
{
    const char *t = json_string_value(json_object_get(part, "text"));
    return t ? t : "";
}

/* A content part that is not text: an image_url with a base64 data URL
 * goes on OUT's images (Ollama's OpenAI layer takes the same; the base64
 * is checked when the Ollama body is built); anything else is refused,
 * not dropped. NULL, or the 400 text. */
static const char *s_part_other(json_t *part, json_t *out)
{
    const char *type = json_string_value(json_object_get(part, "type"));
    if (type && strcmp(type, "text") == 0) /* one without a string was dropped */
        return json_is_string(json_object_get(part, "text"))
                   ? NULL
                   : "invalid content: a text part's text must be a string";
    if (!type || strcmp(type, "image_url") != 0)
        return "content parts other than text and image_url are not supported";
    json_t *iu = json_object_get(part, "image_url");
    const char *url = json_is_string(iu) ? json_string_value(iu)
                                         : json_string_value(json_object_get(iu, "url"));
    const char *b64 = url && strncmp(url, "data:", 5) == 0 ? strstr(url, ";base64,") : NULL;
    if (!b64 || !b64[8])
        return "image_url must be a base64 data URL (data:image/png;base64,...): the gateway "
               "fetches no URLs";
    json_t *imgs = json_object_get(out, "images");
    if (!imgs)
        json_object_set_new(out, "images", imgs = json_array());
    json_array_append_new(imgs, json_string(b64 + 8));
    return NULL;
}

/* A message's content: a string, or parts of which the text ones count,
 * joined in one pass (a body of 8 MB can hold 640k parts: appending each
 * with strcat, which walks the text so far, took seconds of the thread
 * that serves every other connection), and the images (s_part_other).
 * *BAD: NULL, or the 400 text. */
static json_t *s_message(json_t *m, const char **bad)
{
    json_t *content = json_object_get(m, "content");
    json_t *out = json_object();
    s_copy(out, "role", m, "role");
    if (json_is_array(content)) {
        size_t k;
        json_t *pt;
        json_array_foreach(content, k, pt) {
            if (!*bad)
                *bad = s_part_other(pt, out);
        }
        size_t n = 0, pos = 0, i;
        json_t *part;
        json_array_foreach(content, i, part)
            n += strlen(s_part_text(part));
        char *text = malloc(n + 1);
        json_array_foreach(content, i, part) {
            const char *t = s_part_text(part);
            size_t len = strlen(t);
            if (!text)
                break;
            memcpy(text + pos, t, len);
            pos += len;
        }
        if (text)
            text[pos] = '\0';
        json_object_set_new(out, "content", json_string(text ? text : ""));
        free(text);
    } else {
        s_copy(out, "content", m, "content");
    }
    return out;
}

/* --- tool calling --------------------------------------------------------------- */
/* The text of a 400 about one item (a thread's own: HTTP runs on several). */
static _Thread_local char s_bad_text[256];

/* FMT takes I and, if it says so, K (an unused argument is allowed). */
static const char *s_bad(const char *fmt, size_t i, size_t k)
{
    snprintf(s_bad_text, sizeof s_bad_text, fmt, i, k);
    return s_bad_text;
}

/* An assistant message's OpenAI tool_calls ([{id, type, function: {name,
 * arguments: "<JSON text>"}}]) into Ollama's ([{function: {name,
 * arguments: {...}}}]); each id -> name goes into MAP, for the tool
 * messages that answer them. NULL, or the 400 text. */
static const char *s_assistant_calls(json_t *calls, json_t *out, json_t *map, size_t i)
{
    if (!json_is_array(calls))
        return s_bad("invalid messages[%zu].tool_calls: expected an array", i, 0);
    json_t *arr = json_array(), *t;
    json_object_set_new(out, "tool_calls", arr);
    size_t k;
    json_array_foreach(calls, k, t) {
        json_t *fn = json_object_get(t, "function"), *args = json_object_get(fn, "arguments");
        const char *name = json_string_value(json_object_get(fn, "name"));
        const char *id = json_string_value(json_object_get(t, "id"));
        if (!name || !*name)
            return s_bad("invalid messages[%zu].tool_calls[%zu]: function.name is required", i, k);
        json_t *obj = json_is_string(args) ? json_loads(json_string_value(args), 0, NULL)
                      : json_is_object(args) ? json_incref(args)
                      : !args || json_is_null(args) ? json_object() : NULL;
        if (!json_is_object(obj)) {
            json_decref(obj);
            return s_bad("invalid messages[%zu].tool_calls[%zu]: function.arguments must be "
                         "a JSON object (as a string)", i, k);
        }
        json_array_append_new(arr, json_pack("{s:{s:s, s:o}}", "function", "name", name,
                                             "arguments", obj));
        if (id)
            json_object_set_new(map, id, json_string(name));
    }
    return NULL;
}

/* The tool fields of OpenAI message M (index I) into Ollama's OUT: an
 * assistant's tool_calls, and for a tool result the function's name
 * (Ollama's tool_name) found from its tool_call_id among the calls of the
 * assistant message before it (MAP). NULL, or the 400 text. */
static const char *s_tool_fields(json_t *m, json_t *out, json_t *map, size_t i)
{
    json_t *calls = json_object_get(m, "tool_calls");
    if (calls && !json_is_null(calls)) {
        json_object_clear(map); /* a tool message answers the latest calls */
        return s_assistant_calls(calls, out, map, i);
    }
    const char *id = json_string_value(json_object_get(m, "tool_call_id"));
    const char *name = id ? json_string_value(json_object_get(map, id)) : NULL;
    if (!name) /* the older function-message shape names it */
        name = json_string_value(json_object_get(m, "name"));
    const char *role = json_string_value(json_object_get(m, "role"));
    if (role && strcmp(role, "tool") == 0 && name)
        json_object_set_new(out, "tool_name", json_string(name));
    return NULL;
}

/* tools and tool_choice: "auto" (or absent) passes the tools, "none" drops
 * them (the model answers in text); forcing a call ("required", or a named
 * function) is refused: Ollama has no way to force one, and a silently
 * unforced call would be a wrong answer. The tools' shape is checked when
 * the Ollama body is built (gw_json.c). NULL, or the 400 text. */
static const char *s_tools(json_t *b, json_t *o)
{
    json_t *tools = json_object_get(b, "tools"), *choice = json_object_get(b, "tool_choice");
    const char *ch = json_string_value(choice);
    json_t *legacy = json_object_get(b, "functions");
    if ((legacy && !json_is_null(legacy)) || json_object_get(b, "function_call"))
        return "functions and function_call (deprecated) are not supported: use tools";
    if (choice && !json_is_null(choice) && !ch)
        return "tool_choice naming a function is not supported (the backend cannot force a "
               "tool call): use \"auto\" or \"none\"";
    if (ch && strcmp(ch, "required") == 0)
        return "tool_choice \"required\" is not supported (the backend cannot force a tool "
               "call): use \"auto\" or \"none\"";
    if (ch && strcmp(ch, "auto") != 0 && strcmp(ch, "none") != 0)
        return "invalid tool_choice: expected \"auto\" or \"none\"";
    if (tools && !json_is_null(tools) && !json_is_array(tools))
        return "invalid tools: expected an array of tools";
    if (tools && !json_is_null(tools) && !(ch && strcmp(ch, "none") == 0))
        json_object_set(o, "tools", tools);
    return NULL;
}

/* OpenAI's messages into Ollama's; NULL, or the 400 text. An empty or
 * missing list is refused here: Ollama's chat takes it for a preload (a
 * model LOAD), which OpenAI does not have. */
static const char *s_messages(json_t *b, json_t *o)
{
    json_t *msgs = json_object_get(b, "messages"), *m;
    if (!msgs || json_is_null(msgs))
        return "messages is required";
    if (!json_is_array(msgs) || !json_array_size(msgs))
        return "invalid messages: expected a non-empty array of messages";
    json_t *arr = json_array(), *map = json_object();
    json_object_set_new(o, "messages", arr);
    const char *bad = NULL;
    size_t i;
    json_array_foreach(msgs, i, m) {
        if (!json_is_object(m)) { /* was "a message needs a role" for [5] */
            bad = "invalid messages: expected an array of message objects";
            break;
        }
        json_t *out = s_message(m, &bad);
        json_array_append_new(arr, out);
        if (bad || (bad = s_tool_fields(m, out, map, i)) != NULL)
            break;
    }
    json_decref(map);
    return bad ? bad : s_tools(b, o);
}

/* OpenAI's prompt (the first of several) into Ollama's; NULL, or the 400
 * text. An empty one is refused: on Ollama's generate it is a preload. */
static const char *s_prompt(json_t *b, json_t *o)
{
    json_t *p = json_object_get(b, "prompt");
    if (!p || json_is_null(p))
        return "prompt is required";
    if (json_is_array(p) && json_array_size(p) > 1) /* the others were dropped */
        return "several prompts in one request are not supported (one choice per request: "
               "send one request per prompt)";
    if (json_is_array(p))
        p = json_array_get(p, 0);
    if (!json_is_string(p) || !json_string_length(p))
        return "invalid prompt: expected a non-empty string or array of strings";
    json_object_set(o, "prompt", p);
    s_copy(o, "suffix", b, "suffix");
    return NULL;
}

/* A count field (n, best_of) other than 1 or absent. */
static int s_not_one(json_t *b, const char *key)
{
    json_t *v = json_object_get(b, key);
    return v && !json_is_null(v) && !(json_is_integer(v) && json_integer_value(v) == 1);
}

/* The reasoning effort asked for (reasoning_effort, or reasoning.effort as
 * Ollama's own OpenAI layer also takes), NULL when none; *BAD when it is
 * not a string. */
static const char *s_effort(json_t *b, int *bad)
{
    json_t *v = json_object_get(b, "reasoning_effort");
    if (!v || json_is_null(v))
        v = json_object_get(json_object_get(b, "reasoning"), "effort");
    *bad = v && !json_is_null(v) && !json_is_string(v);
    return json_string_value(v);
}

/* logprobs / top_logprobs: on /v1/chat/completions a boolean and 0..20
 * (top_logprobs above 0 only with logprobs true, as OpenAI answers), carried as
 * Ollama's; on /v1/completions (logprobs an integer, the legacy answer
 * shape of tokens and offsets) a 400. There logprobs 0 asks for something
 * too (OpenAI then gives each sampled token's logprob), so only null or
 * false pass, and a top_logprobs (not a legacy field) of null or 0, which
 * asks for nothing. NULL, or the 400 text. */
static const char *s_oai_logprobs(const gw_conn_t *c, json_t *b)
{
    json_t *v = json_object_get(b, "logprobs"), *t = json_object_get(b, "top_logprobs");
    int on = v && !json_is_null(v) && !json_is_false(v);
    int top = t && !json_is_null(t) && !(json_is_integer(t) && json_integer_value(t) == 0);
    if (c->route == GW_R_OAI_COMPLETIONS && (on || top))
        return "logprobs is not supported on /v1/completions (the legacy shape is not "
               "rendered; logprobs 0 too asks for each token's logprob): use "
               "/v1/chat/completions with logprobs: true";
    if (on && !json_is_true(v))
        return "invalid logprobs: expected a boolean (true or false)";
    if (!t || json_is_null(t))
        return NULL;
    if (!json_is_integer(t))
        return "invalid top_logprobs: expected an integer";
    if (json_integer_value(t) < 0 || json_integer_value(t) > GW_MAX_TOP_LOGPROBS)
        return "invalid top_logprobs: expected an integer from 0 to 20";
    if (!on && json_integer_value(t) > 0)
        return "top_logprobs needs logprobs: true";
    return NULL;
}

/* OpenAI fields that change what the model does or what the client gets
 * and that the bus cannot honour: a 400 naming them, never a silent drop
 * (user, metadata, store, service_tier, parallel_tool_calls change
 * neither and are ignored: docs/gateway.md). */
static const char *s_oai_refused(const gw_conn_t *c, json_t *b)
{
    json_t *v;
    int bad = 0;
    const char *effort = s_effort(b, &bad);
    /* A wrong type is named as such ("n": "2" was "n other than 1", and
     * "echo": "yes" or "modalities": "audio" passed as if not given); n's
     * and best_of's are checked with the other numbers (s_oai_numbers). */
    if ((v = json_object_get(b, "echo")) && !json_is_null(v) && !json_is_boolean(v))
        return "invalid echo: expected a boolean (true or false)";
    if ((v = json_object_get(b, "modalities")) && !json_is_null(v) && !json_is_array(v))
        return "invalid modalities: expected an array of strings";
    if (s_not_one(b, "n"))
        return "n other than 1 is not supported (one choice per request: send n requests)";
    if (s_not_one(b, "best_of"))
        return "best_of other than 1 is not supported";
    const char *lp = s_oai_logprobs(c, b);
    if (lp)
        return lp;
    v = json_object_get(b, "logit_bias");
    if (v && !json_is_null(v) && !(json_is_object(v) && json_object_size(v) == 0))
        return "logit_bias is not supported (the backend has no token biases)";
    if (json_is_true(json_object_get(b, "echo")))
        return "echo is not supported";
    json_t *mod = json_object_get(b, "modalities"), *x;
    size_t i;
    json_array_foreach(mod, i, x) {
        if (json_is_string(x) && strcmp(json_string_value(x), "text") != 0)
            return "modalities other than \"text\" are not supported (the answer is text)";
    }
    if ((v = json_object_get(b, "audio")) && !json_is_null(v))
        return "audio output is not supported (the answer is text)";
    if (c->route == GW_R_OAI_CHAT && (bad || (effort && strcmp(effort, "none") &&
                                              strcmp(effort, "low") && strcmp(effort, "medium") &&
                                              strcmp(effort, "high"))))
        return "invalid reasoning_effort: expected \"none\", \"low\", \"medium\" or \"high\"";
    if (c->route == GW_R_OAI_COMPLETIONS && (bad || effort))
        return "reasoning_effort is not supported on /v1/completions (use /v1/chat/completions)";
    return NULL;
}

/* An embeddings input OpenAI refuses with a 400: none, "", [] or an
 * empty string in the array (its API reference: the input "cannot be an
 * empty string", an array has at least one entry). Ollama's /api/embed
 * answers those with no embeddings instead; Ollama's own OpenAI layer
 * embeds "" and refuses []. Strings only here: token arrays are not
 * carried. NULL, or the 400 text. */
static const char *s_oai_input(json_t *b)
{
    json_t *in = json_object_get(b, "input"), *x;
    size_t i;
    if (!in || json_is_null(in))
        return "invalid input: an input is required";
    if (json_is_string(in) && !json_string_length(in))
        return "invalid input: expected a non-empty string";
    if (json_is_array(in) && !json_array_size(in))
        return "invalid input: expected at least one string";
    json_array_foreach(in, i, x) {
        if (json_is_string(x) && !json_string_length(x))
            return "invalid input: expected non-empty strings (an empty one is refused)";
    }
    return NULL;
}

/* OpenAI's numeric parameters that the gateway reads or maps: each one's
 * JSON type and the range OpenAI's API reference gives for it
 * (platform.openai.com/docs/api-reference/chat/create and
 * .../completions/create), which its API enforces with a 400
 * invalid_request_error naming the parameter. max_tokens -5 went on as
 * Ollama's num_predict -5, which Ollama reads as no limit at all. */
static const struct {
    const char *key;
    int integer;
    double min, max;
} s_oai_nums[] = {
    {"temperature", 0, 0, 2},
    {"top_p", 0, 0, 1},
    {"seed", 1, -DBL_MAX, DBL_MAX},
    {"max_tokens", 1, 1, DBL_MAX},
    {"max_completion_tokens", 1, 1, DBL_MAX},
    {"presence_penalty", 0, -2, 2},
    {"frequency_penalty", 0, -2, 2},
    {"n", 1, 1, 128},
    {"best_of", 1, 0, 20},
};

/* The first of B's numeric parameters of the wrong type or out of its
 * range: NULL, or the 400 text in MSG. */
static const char *s_oai_numbers(json_t *b, char *msg, size_t cap)
{
    for (size_t i = 0; i < sizeof s_oai_nums / sizeof s_oai_nums[0]; i++) {
        const char *key = s_oai_nums[i].key;
        const char *what = s_oai_nums[i].integer ? "an integer" : "a number";
        double min = s_oai_nums[i].min, max = s_oai_nums[i].max;
        json_t *v = json_object_get(b, key);
        if (!v || json_is_null(v))
            continue;
        if (!(s_oai_nums[i].integer ? json_is_integer(v) : json_is_number(v)))
            snprintf(msg, cap, "invalid %s: expected %s", key, what);
        else if (json_number_value(v) >= min && json_number_value(v) <= max)
            continue;
        else if (max == DBL_MAX)
            snprintf(msg, cap, "invalid %s: expected %s >= %g", key, what, min);
        else
            snprintf(msg, cap, "invalid %s: expected %s from %g to %g", key, what, min, max);
        return msg;
    }
    return NULL;
}

/* The JSON types of B's OpenAI fields that are read here or renamed on
 * the way to Ollama's shape, and the ranges of its numbers: NULL, or the
 * 400 text naming the field as the client sent it (OpenAI refuses a wrong
 * type too; "stream": "true" was taken as false, an unknown
 * response_format type ignored). */
static const char *s_oai_types(const gw_conn_t *c, json_t *b, char *msg, size_t cap)
{
    if (s_oai_numbers(b, msg, cap))
        return msg;
    json_t *v = json_object_get(b, "stream");
    if (v && !json_is_null(v) && !json_is_boolean(v))
        return "invalid stream: expected a boolean (true or false)";
    v = json_object_get(b, "stream_options");
    if (v && !json_is_null(v) && !json_is_object(v))
        return "invalid stream_options: expected an object";
    v = json_object_get(v, "include_usage");
    if (v && !json_is_null(v) && !json_is_boolean(v))
        return "invalid stream_options.include_usage: expected a boolean (true or false)";
    if (c->route == GW_R_OAI_EMBEDDINGS) {
        v = json_object_get(b, "encoding_format");
        const char *f = json_string_value(v);
        if (v && !json_is_null(v) && (!f || (strcmp(f, "float") && strcmp(f, "base64"))))
            return "invalid encoding_format: expected \"float\" or \"base64\"";
        const char *in = s_oai_input(b);
        if (in)
            return in;
    }
    const char *refused = s_oai_refused(c, b);
    if (refused)
        return refused;
    v = json_object_get(b, "response_format");
    const char *rf = json_string_value(json_object_get(v, "type"));
    if (v && !json_is_null(v) &&
        (!rf || (strcmp(rf, "text") && strcmp(rf, "json_object") && strcmp(rf, "json_schema"))))
        return "invalid response_format: expected {\"type\": \"text\", \"json_object\" or "
               "\"json_schema\"}";
    /* Structured outputs without a schema object were answered as free
     * text: the client asked for a shape and silently got none. */
    if (rf && !strcmp(rf, "json_schema") &&
        !json_is_object(json_object_get(json_object_get(v, "json_schema"), "schema")))
        return "invalid response_format.json_schema.schema: expected a JSON schema object";
    return NULL;
}

/* C's OpenAI body B in Ollama's shape (*O, NULL for an embeddings' one)
 * and its kind; NULL, or the 400 text (*O then NULL). */
static const char *s_rewrite(gw_conn_t *c, json_t *b, gw_kind_t *kind, json_t **o_out)
{
    json_t *o = json_object();
    *o_out = o;
    s_copy(o, "model", b, "model");
    if (c->route == GW_R_OAI_EMBEDDINGS) {
        *kind = GW_EMBED;
        s_copy(o, "input", b, "input");
        s_copy(o, "dimensions", b, "dimensions"); /* Ollama's, the same meaning */
        const char *fmt = json_string_value(json_object_get(b, "encoding_format"));
        c->oai_b64 = fmt && strcmp(fmt, "base64") == 0;
        return NULL;
    }
    json_object_set_new(o, "stream", json_boolean(json_is_true(json_object_get(b, "stream"))));
    json_object_set_new(o, "options", s_options(b));
    c->oai_usage = json_is_true(json_object_get(json_object_get(b, "stream_options"),
                                                "include_usage"));
    /* response_format: json_object is Ollama's format "json"; json_schema
     * (structured outputs) its format with the schema object, as Ollama's
     * own OpenAI layer maps them. */
    json_t *rfo = json_object_get(b, "response_format");
    const char *rf = json_string_value(json_object_get(rfo, "type"));
    json_t *schema = json_object_get(json_object_get(rfo, "json_schema"), "schema");
    if (rf && strcmp(rf, "json_object") == 0)
        json_object_set_new(o, "format", json_string("json"));
    else if (rf && strcmp(rf, "json_schema") == 0 && json_is_object(schema))
        json_object_set(o, "format", schema);
    /* reasoning effort: Ollama's think ("none" turns it off), as its own
     * OpenAI layer maps it; the thinking comes back as message.reasoning */
    int ebad = 0;
    const char *effort = s_effort(b, &ebad);
    if (effort)
        json_object_set_new(o, "think", strcmp(effort, "none") == 0 ? json_false()
                                                                     : json_string(effort));
    if (c->route == GW_R_OAI_CHAT) { /* checked by s_oai_logprobs */
        s_copy(o, "logprobs", b, "logprobs");
        s_copy(o, "top_logprobs", b, "top_logprobs");
    }
    *kind = c->route == GW_R_OAI_CHAT ? GW_CHAT : GW_GENERATE;
    const char *bad = *kind == GW_CHAT ? s_messages(b, o) : s_prompt(b, o);
    if (bad) {
        json_decref(o);
        *o_out = NULL;
    }
    return bad;
}

int gw_openai_prepare(gw_conn_t *c, gw_req_t *req, char *err, size_t cap)
{
    memset(req, 0, sizeof *req);
    json_t *b = gw_body_parse(c, err, cap);
    if (!b)
        return -1;
    gw_kind_t kind = GW_CHAT;
    json_t *o = NULL;
    const char *bad = s_oai_types(c, b, err, cap);
    if (!bad)
        bad = s_rewrite(c, b, &kind, &o);
    json_decref(b);
    if (bad) {
        if (bad != err)
            snprintf(err, cap, "%s", bad);
        return -1;
    }
    int rc = gw_req_from_json(kind, o, req, err, cap);
    json_decref(o);
    return rc;
}

void gw_openai_named(gw_conn_t *c, gw_kind_t kind)
{
    unsigned long long n = atomic_fetch_add(&c->g->next_id, 1);
    snprintf(c->oai_id, sizeof c->oai_id, "%s-%llx",
             kind == GW_CHAT ? "chatcmpl" : kind == GW_GENERATE ? "cmpl" : "emb", n + 1);
    c->created = (long)time(NULL);
}

/* --- answers --------------------------------------------------------------------- */
/* The texts point into the unpacked reply; the JSON ones are minified in
 * place as they are rendered. */
typedef struct {
    const char *text;
    char *calls; /* chat: the model's tool calls, Ollama's JSON text (NULL, "" = none) */
    const char *thinking; /* a reasoning model's (OpenAI's reasoning), "" = none */
    char *logprobs; /* Ollama's logprobs entries, JSON text ("" = none) */
    int done;
    const char *done_reason;
    uint64_t prompt, eval;
    void *msg; /* the unpacked message, freed by s_piece_free */
} s_piece_t;

static int s_piece(gw_kind_t kind, const void *pb, size_t len, s_piece_t *p)
{
    memset(p, 0, sizeof *p);
    if (kind == GW_CHAT) {
        Agentbus__ChatResponse *r = gw_pb_unpack(&agentbus__chat_response__descriptor, len, pb);
        if (!r)
            return -1;
        p->text = r->message ? r->message->content : "";
        p->calls = r->message ? r->message->tool_calls_json : NULL;
        p->thinking = r->message ? r->message->thinking : "";
        p->logprobs = r->logprobs_json;
        p->done = r->done;
        p->done_reason = r->done_reason;
        if (r->timings)
            p->prompt = r->timings->prompt_eval_count, p->eval = r->timings->eval_count;
        p->msg = r;
    } else {
        Agentbus__GenerateResponse *r =
            gw_pb_unpack(&agentbus__generate_response__descriptor, len, pb);
        if (!r)
            return -1;
        p->text = r->response;
        p->calls = NULL;
        p->thinking = r->thinking;
        p->logprobs = r->logprobs_json;
        p->done = r->done;
        p->done_reason = r->done_reason;
        if (r->timings)
            p->prompt = r->timings->prompt_eval_count, p->eval = r->timings->eval_count;
        p->msg = r;
    }
    return 0;
}

static void s_piece_free(gw_kind_t kind, s_piece_t *p)
{
    if (p->msg && kind == GW_CHAT)
        agentbus__chat_response__free_unpacked(p->msg, NULL);
    else if (p->msg)
        agentbus__generate_response__free_unpacked(p->msg, NULL);
    p->msg = NULL;
}

static const char *s_finish(const char *done_reason)
{
    return done_reason && strcmp(done_reason, "length") == 0 ? "length" : "stop";
}

static json_t *s_usage(uint64_t prompt, uint64_t eval)
{
    return json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)prompt, "completion_tokens",
                     (json_int_t)eval, "total_tokens", (json_int_t)(prompt + eval));
}

/* TEXT (N bytes) appended to L as a JSON string: the minified JSON text of
 * a tool call's arguments, whose only bytes to escape are '"' and '\\'
 * (a checked text has no control bytes; UTF-8 stays as it is, as in
 * jansson's dump). */
static void s_put_quoted(gw_raw_list_t *l, const char *text, size_t n)
{
    gw_raw_list_put(l, "\"", 1);
    for (size_t k = 0, from = 0; k <= n; k++) {
        if (k < n && text[k] != '"' && text[k] != '\\')
            continue;
        gw_raw_list_put(l, text + from, k - from);
        if (k < n)
            gw_raw_list_put(l, text[k] == '"' ? "\\\"" : "\\\\", 2);
        from = k + 1;
    }
    gw_raw_list_put(l, "\"", 1);
}

/* Ollama's tool calls (JSON text) appended to OUT in OpenAI's shape, as
 * text (gw_raw.h): each with a new id, type "function", its name as the
 * worker wrote it and its arguments (minified) as a JSON string; the
 * stream's deltas (STREAM) number them, *N counting over the whole
 * answer. An item that is not an object with a "function" object is not a
 * call and is left out: before, each became a call named "", a jansson
 * object of ~1 KB, and a hostile worker's 1 MiB of [1,1,...] was
 * 524,288 calls and +765 MiB in the gateway. */
static void s_oai_calls(char *text, gw_raw_list_t *out, int *n, int stream)
{
    char *raw = text && *text && gw_raw_array(text, NULL) ? text : NULL;
    for (const char *t = raw ? gw_raw_first(raw) : NULL; t; t = gw_raw_next(t, 0)) {
        const char *fn = *t == '{' ? gw_raw_member(t, "function") : NULL;
        if (!fn || *fn != '{')
            continue;
        const char *args = gw_raw_member(fn, "arguments");
        const char *nm = gw_raw_member(fn, "name");
        char head[128]; /* the id: unique without state, clients match results to calls by it */
        int k = stream ? snprintf(head, sizeof head, "{\"index\":%d,", *n)
                       : snprintf(head, sizeof head, "{");
        k += snprintf(head + k, sizeof head - (size_t)k,
                      "\"id\":\"call_%08x%08x%08x\",\"type\":\"function\",\"function\":"
                      "{\"name\":",
                      arc4random(), arc4random(), arc4random());
        gw_raw_list_item(out);
        gw_raw_list_put(out, head, (size_t)k);
        if (nm && *nm == '"')
            gw_raw_list_put(out, nm, (size_t)(gw_raw_skip(nm) - nm));
        else
            gw_raw_list_put(out, "\"\"", 2);
        gw_raw_list_put(out, ",\"arguments\":", 13);
        if (args)
            s_put_quoted(out, args, (size_t)(gw_raw_skip(args) - args));
        else
            gw_raw_list_put(out, "\"{}\"", 4);
        gw_raw_list_put(out, "}}", 2);
        (*n)++;
    }
}

/* An entry of Ollama's logprobs (the object at E, checked minified text)
 * appended to L in OpenAI's shape: OpenAI's always has bytes (null when
 * Ollama sent none) and, with TOP, the entry's top_logprobs (an array,
 * maybe empty, of entries so shaped without TOP). Members are copied as
 * they are; what jansson set in place is added after them (a duplicate
 * key keeps JSON's last-one-wins meaning). */
static void s_oai_entry(gw_raw_list_t *l, const char *e, int top)
{
    int bytes = 0, tops = 0, first = 1;
    gw_raw_list_put(l, "{", 1);
    for (const char *m = gw_raw_first(e); m; m = gw_raw_next(m, 1), first = 0) {
        const char *v = gw_raw_skip(m) + 1;
        gw_raw_list_put(l, first ? m : m - 1, (size_t)(v - m) + !first); /* [,]"key": */
        bytes |= gw_raw_key_is(m, "bytes");
        if (!top || !gw_raw_key_is(m, "top_logprobs")) {
            gw_raw_list_put(l, v, (size_t)(gw_raw_skip(v) - v));
            continue;
        }
        tops = 1;
        gw_raw_list_put(l, "[", 1);
        for (const char *x = *v == '[' ? gw_raw_first(v) : NULL; x; x = gw_raw_next(x, 0)) {
            if (x != v + 1)
                gw_raw_list_put(l, ",", 1);
            if (*x == '{')
                s_oai_entry(l, x, 0);
            else
                gw_raw_list_put(l, x, (size_t)(gw_raw_skip(x) - x));
        }
        gw_raw_list_put(l, "]", 1);
    }
    const char *add = !bytes && top && !tops ? ",\"bytes\":null,\"top_logprobs\":[]}"
                      : !bytes                ? ",\"bytes\":null}"
                      : top && !tops          ? ",\"top_logprobs\":[]}"
                                              : "}";
    add += first && add[0] == ','; /* an empty object: no comma before */
    gw_raw_list_put(l, add, strlen(add));
}

/* Ollama's logprobs (JSON text): its objects appended to ALL in OpenAI's
 * shape, the entries of choices[0].logprobs.content. */
static void s_oai_logprob_entries(char *text, gw_raw_list_t *all)
{
    char *raw = text && *text && gw_raw_array(text, NULL) ? text : NULL;
    for (const char *e = raw ? gw_raw_first(raw) : NULL; e; e = gw_raw_next(e, 0)) {
        if (*e != '{')
            continue;
        gw_raw_list_item(all);
        s_oai_entry(all, e, 1);
    }
}

/* A choice; LP (taken) the logprobs entries, NULL for "logprobs": null. */
static json_t *s_choice(const gw_conn_t *c, const char *text, const char *reasoning,
                        const char *finish, int stream, json_t *calls, json_t *lp)
{
    json_t *fin = finish ? json_string(finish) : json_null();
    json_t *lpo = lp ? json_pack("{s:o}", "content", lp) : json_null();
    if (c->kind == GW_GENERATE)
        return json_pack("{s:s, s:i, s:o, s:o}", "text", text, "index", 0, "logprobs", lpo,
                         "finish_reason", fin);
    json_t *msg = json_object();
    if (!stream || !c->oai_role_sent)
        json_object_set_new(msg, "role", json_string("assistant"));
    if (calls && !stream) /* content null beside tool calls, as OpenAI answers */
        json_object_set_new(msg, "content", text[0] ? json_string(text) : json_null());
    else if (!stream || text[0] || !finish)
        json_object_set_new(msg, "content", json_string(text));
    if (reasoning && reasoning[0]) /* as Ollama's OpenAI layer names it */
        json_object_set_new(msg, "reasoning", json_string(reasoning));
    if (calls) /* text (gw_raw.h); in one answer the index is the array's */
        json_object_set_new(msg, "tool_calls", calls);
    return json_pack("{s:i, s:o, s:o, s:o}", "index", 0, stream ? "delta" : "message", msg,
                     "logprobs", lpo, "finish_reason", fin);
}

static json_t *s_object(const gw_conn_t *c, int stream, json_t *choices)
{
    const char *obj = c->kind == GW_CHAT ? (stream ? "chat.completion.chunk" : "chat.completion")
                                         : "text_completion";
    return json_pack("{s:s, s:s, s:I, s:s, s:s, s:o}", "id", c->oai_id, "object", obj, "created",
                     (json_int_t)c->created, "model", c->model, "system_fingerprint",
                     "fp_agentbus", "choices", choices);
}

static json_t *s_embeddings(gw_conn_t *c, const void *pb, size_t len)
{
    Agentbus__EmbedResponse *e = gw_pb_unpack(&agentbus__embed_response__descriptor, len, pb);
    if (!e)
        return NULL;
    json_t *data = json_array();
    int digits = c->oai_b64 ? 0 : gw_embed_digits(e);
    for (size_t i = 0; i < e->n_embeddings; i++) {
        const Agentbus__Embedding *v = e->embeddings[i];
        json_t *emb;
        if (c->oai_b64) { /* little-endian float32, as OpenAI sends it */
            char *b64 = tl_base64_encode(v->values, v->n_values * sizeof(float));
            emb = json_string(b64 ? b64 : "");
            free(b64);
        } else { /* as text (gw_raw.h): a jansson real was ~40 bytes per 4-byte value */
            emb = gw_raw_floats(v->values, v->n_values, digits);
        }
        json_array_append_new(data, json_pack("{s:s, s:o, s:I}", "object", "embedding",
                                              "embedding", emb, "index", (json_int_t)i));
    }
    json_t *o = json_pack("{s:s, s:o, s:s, s:{s:I, s:I}}", "object", "list", "data", data,
                          "model", c->model, "usage", "prompt_tokens",
                          (json_int_t)e->prompt_eval_count, "total_tokens",
                          (json_int_t)e->prompt_eval_count);
    agentbus__embed_response__free_unpacked(e, NULL);
    return o;
}

/* S appended to *BUF (*LEN bytes so far of *CAP), which grows by doubling
 * (base/grow.h says why); on no memory the piece is lost (the reply is then
 * short). */
static void s_append(char **buf, size_t *len, size_t *cap, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (!n || ab_grow(buf, cap, *len + n + 1) != 0)
        return;
    memcpy(*buf + *len, s, n + 1);
    *len += n;
}

/* stream: false (or an error before any chunk): one object. */
static enum MHD_Result s_single(gw_conn_t *c)
{
    gw_call_t *k = c->call;
    char *text = NULL;
    size_t tlen = 0, tcap = 0;
    char *think = NULL;
    size_t klen = 0, kcap = 0;
    json_t *out = NULL;
    const char *finish = "stop";
    uint64_t prompt = 0, eval = 0;
    gw_raw_list_t calls = {0}, lp = {0}; /* of every chunk, as text */
    int ncalls = 0;
    pthread_mutex_lock(&k->lock);
    gw_event_t *e;
    while ((e = gw_call_pop(k))) {
        s_piece_t p;
        if (e->status == AB_OK && c->kind == GW_EMBED) {
            json_decref(out);
            out = s_embeddings(c, e->data, e->size);
        } else if (e->status == AB_OK && s_piece(c->kind, e->data, e->size, &p) == 0) {
            s_append(&text, &tlen, &tcap, p.text);
            s_append(&think, &klen, &kcap, p.thinking);
            if (p.done)
                finish = s_finish(p.done_reason), prompt = p.prompt, eval = p.eval;
            if (c->kind == GW_CHAT)
                s_oai_calls(p.calls, &calls, &ncalls, 0);
            s_oai_logprob_entries(p.logprobs, &lp);
            s_piece_free(c->kind, &p);
        }
        free(e);
    }
    int status = k->final ? k->status : AB_EINTERNAL;
    pthread_mutex_unlock(&k->lock);
    if (status != AB_OK) {
        char msg[600];
        gw_error_text(c, status, k->error, msg, sizeof msg);
        json_decref(out);
        gw_raw_list_free(&calls);
        gw_raw_list_free(&lp);
        free(text);
        free(think);
        atomic_fetch_add(&c->g->m.bus_errors, 1);
        return gw_reply_error(c, gw_http_status(status), msg);
    }
    if (c->kind != GW_EMBED) {
        if (ncalls)
            finish = "tool_calls";
        out = s_object(c, 0, json_pack("[o]", s_choice(c, text ? text : "", think, finish, 0,
                                                       gw_raw_list_value(&calls),
                                                       gw_raw_list_value(&lp))));
        json_object_set_new(out, "usage", s_usage(prompt, eval));
    }
    free(text);
    free(think);
    gw_raw_list_free(&calls);
    gw_raw_list_free(&lp);
    if (!out)
        return gw_reply_error(c, 502, "worker sent a reply that does not decode");
    return gw_reply_json(c, 200, out);
}

static void s_event(gw_conn_t *c, json_t *o)
{
    char *txt = gw_raw_dumps(o); /* a worker's JSON text spliced in (gw_raw.h) */
    json_decref(o);
    if (!txt)
        return;
    gw_out_append(c, "data: ", 6);
    gw_out_append(c, txt, strlen(txt));
    gw_out_append(c, "\n\n", 2);
    free(txt);
}

void gw_openai_render(gw_conn_t *c, const gw_event_t *e)
{
    s_piece_t p;
    if (e->status != AB_OK || s_piece(c->kind, e->data, e->size, &p) != 0) {
        char msg[600];
        gw_error_text(c, e->status ? e->status : AB_EMALFORMED, c->call->error, msg, sizeof msg);
        s_event(c, json_pack("{s:{s:s, s:s, s:n, s:n}}", "error", "message", msg, "type",
                             "api_error", "param", "code"));
        c->eos = 1;
        return;
    }
    gw_raw_list_t list = {0}; /* delta.tool_calls, indexed over the stream */
    s_oai_calls(p.calls, &list, &c->oai_tool_calls, 1);
    json_t *calls = gw_raw_list_value(&list);
    gw_raw_list_t entries = {0};
    s_oai_logprob_entries(p.logprobs, &entries);
    json_t *lp = gw_raw_list_value(&entries);
    if (p.text[0] || p.thinking[0] || !c->oai_role_sent || calls || lp) {
        s_event(c, s_object(c, 1, json_pack("[o]", s_choice(c, p.text, p.thinking, NULL, 1, calls,
                                                            lp))));
        c->oai_role_sent = 1;
    }
    if (p.done || e->final) {
        const char *fin = c->oai_tool_calls ? "tool_calls" : s_finish(p.done_reason);
        s_event(c, s_object(c, 1, json_pack("[o]", s_choice(c, "", NULL, fin, 1, NULL, NULL))));
        if (c->oai_usage) {
            json_t *u = s_object(c, 1, json_array());
            json_object_set_new(u, "usage", s_usage(p.prompt, p.eval));
            s_event(c, u);
        }
        gw_out_append(c, "data: [DONE]\n\n", 14);
        c->eos = 1;
    }
    s_piece_free(c->kind, &p);
}

enum MHD_Result gw_openai_answer(gw_conn_t *c)
{
    gw_call_t *k = c->call;
    pthread_mutex_lock(&k->lock);
    int error_first = k->head && k->head->status != AB_OK;
    pthread_mutex_unlock(&k->lock);
    if (!c->stream || error_first)
        return s_single(c);
    return gw_stream_start(c, "text/event-stream");
}

json_t *gw_openai_models(json_t *tags)
{
    json_t *data = json_array(), *m;
    size_t i;
    json_array_foreach(json_object_get(tags, "models"), i, m)
        json_array_append_new(data, json_pack("{s:s, s:s, s:i, s:s}", "id",
                                              json_string_value(json_object_get(m, "name")),
                                              "object", "model", "created", 0, "owned_by",
                                              "library"));
    json_decref(tags);
    return json_pack("{s:s, s:o}", "object", "list", "data", data);
}
