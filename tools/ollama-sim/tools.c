/*
 * tools.c - tool calling on /api/chat, deterministic (docs/ollama-sim.md,
 * "Tool calls"). A real model decides from the prompt whether to call a
 * tool; the simulated one follows a fixed rule, so a test knows what to
 * expect without a model:
 *   - the request has tools and its last message is the user's: the answer
 *     is one call of the first tool whose name appears in that message
 *     (else of the first tool), its arguments built from the tool's
 *     JSON-schema parameters (each required property a placeholder of its
 *     type), content "";
 *   - its last message is a tool result (role "tool"): a text answer that
 *     starts by quoting that result and the tool's name.
 * The shapes are Ollama's: tools [{"type":"function","function":{"name",
 * "description","parameters"}}], calls [{"function":{"name","arguments":
 * {...}}}] (argument keys sorted, as Ollama writes a Go map), a result
 * {"role":"tool","content","tool_name"}.
 */
#include "sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int s_bad(char *err, size_t cap, const char *what, size_t i, const char *why)
{
    snprintf(err, cap, "invalid %s %zu: %s", what, i, why);
    return -1;
}

int sim_tools_check(const json_t *in, char *err, size_t cap)
{
    const json_t *tools = json_object_get(in, "tools"), *t, *m;
    size_t i;
    if (tools && !json_is_null(tools) && !json_is_array(tools)) {
        snprintf(err, cap, "invalid tools: must be a list");
        return -1;
    }
    json_array_foreach(tools, i, t) {
        const json_t *fn = json_object_get(t, "function");
        const json_t *params = json_object_get(fn, "parameters");
        if (!json_is_object(fn) || !json_is_string(json_object_get(fn, "name")))
            return s_bad(err, cap, "tool", i,
                         "want {\"type\":\"function\",\"function\":{\"name\":string,...}}");
        if (params && !json_is_null(params) && !json_is_object(params))
            return s_bad(err, cap, "tool", i, "parameters must be an object");
    }
    json_array_foreach(json_object_get(in, "messages"), i, m) {
        const json_t *calls = json_object_get(m, "tool_calls"), *c;
        const json_t *name = json_object_get(m, "tool_name");
        size_t k;
        if (name && !json_is_null(name) && !json_is_string(name))
            return s_bad(err, cap, "message", i, "tool_name must be a string");
        if (calls && !json_is_null(calls) && !json_is_array(calls))
            return s_bad(err, cap, "message", i, "tool_calls must be a list");
        json_array_foreach(calls, k, c) {
            const json_t *args = json_object_get(json_object_get(c, "function"), "arguments");
            if (!json_is_string(json_object_get(json_object_get(c, "function"), "name")) ||
                (args && !json_is_null(args) && !json_is_object(args)))
                return s_bad(err, cap, "message", i,
                             "want tool_calls [{\"function\":{\"name\":string,"
                             "\"arguments\":{...}}}]");
        }
    }
    return 0;
}

static const json_t *s_last_message(const json_t *in)
{
    const json_t *msgs = json_object_get(in, "messages");
    size_t n = json_array_size(msgs);
    return n ? json_array_get(msgs, n - 1) : NULL;
}

static bool s_role_is(const json_t *m, const char *role)
{
    const char *r = json_string_value(json_object_get(m, "role"));
    return r && strcmp(r, role) == 0;
}

/* A placeholder value for a property of schema P named NAME. */
static json_t *s_placeholder(const char *name, const json_t *p)
{
    const json_t *en = json_object_get(p, "enum");
    if (json_array_size(en))
        return json_deep_copy(json_array_get(en, 0));
    const char *type = json_string_value(json_object_get(p, "type"));
    if (!type)
        type = json_string_value(json_array_get(json_object_get(p, "type"), 0));
    if (type && strcmp(type, "integer") == 0)
        return json_integer(1);
    if (type && strcmp(type, "number") == 0)
        return json_real(1.5);
    if (type && strcmp(type, "boolean") == 0)
        return json_true();
    if (type && strcmp(type, "array") == 0)
        return json_array();
    if (type && strcmp(type, "object") == 0)
        return json_object();
    char buf[160];
    snprintf(buf, sizeof buf, "sim-%s", name);
    return json_string(buf);
}

static int s_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Keys in sorted order, as Ollama (Go's encoding/json of a map) writes them. */
static json_t *s_arguments(const json_t *params)
{
    json_t *args = json_object();
    const json_t *props = json_object_get(params, "properties");
    const json_t *req = json_object_get(params, "required");
    size_t n = 0, k = json_array_size(req);
    const char **names = calloc(k + 1, sizeof *names);
    for (size_t i = 0; names && i < k; i++)
        if (json_string_value(json_array_get(req, i)))
            names[n++] = json_string_value(json_array_get(req, i));
    if (names)
        qsort(names, n, sizeof *names, s_cmp);
    for (size_t i = 0; names && i < n; i++)
        json_object_set_new(args, names[i],
                            s_placeholder(names[i], json_object_get(props, names[i])));
    free(names);
    return args;
}

json_t *sim_tools_call(const json_t *in)
{
    const json_t *tools = json_object_get(in, "tools"), *t, *last = s_last_message(in);
    if (!json_array_size(tools) || !s_role_is(last, "user"))
        return NULL;
    const char *prompt = json_string_value(json_object_get(last, "content"));
    const json_t *pick = json_object_get(json_array_get(tools, 0), "function");
    size_t i;
    json_array_foreach(tools, i, t) {
        const json_t *fn = json_object_get(t, "function");
        const char *name = json_string_value(json_object_get(fn, "name"));
        if (prompt && name && *name && strstr(prompt, name)) {
            pick = fn;
            break;
        }
    }
    return json_pack("[{s:{s:s, s:o}}]", "function", "name",
                     json_string_value(json_object_get(pick, "name")), "arguments",
                     s_arguments(json_object_get(pick, "parameters")));
}

char *sim_tools_result_text(const json_t *in)
{
    const json_t *last = s_last_message(in);
    if (!s_role_is(last, "tool"))
        return NULL;
    const char *name = json_string_value(json_object_get(last, "tool_name"));
    const char *content = json_string_value(json_object_get(last, "content"));
    if (!name || !*name)
        name = "tool";
    if (!content)
        content = "";
    size_t n = strlen(name) + strlen(content) + 32;
    char *txt = malloc(n);
    if (txt)
        snprintf(txt, n, "The %s tool said: %s. ", name, content);
    return txt;
}
