/*
 * logprobs.c - Ollama's logprobs / top_logprobs and a generate's context,
 * simulated: deterministic values of the shape Ollama answers with, so
 * tests can check what the gateway and worker carry (docs/ollama-sim.md).
 */
#include "sim.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Tokens the simulated model "almost" chose: distinct, more than the 20
 * top_logprobs Ollama lets a request ask for. */
static const char *const k_alt[] = {
    "the", "a", "it", "and", "of", "to", "in", "is", "that", "for", "on", "with",
    "as", "was", "at", "by", "this", "from", "or", "an", "but", "not", "be", "are"};
#define S_NALT (sizeof k_alt / sizeof k_alt[0])

int sim_lp_check(const json_t *in, bool chat, sim_lp_t *lp, char *err, size_t cap)
{
    memset(lp, 0, sizeof *lp);
    const json_t *v = json_object_get(in, "logprobs");
    if (v && !json_is_null(v) && !json_is_boolean(v)) {
        snprintf(err, cap, "invalid logprobs: must be true or false");
        return -1;
    }
    lp->on = json_is_true(v);
    v = json_object_get(in, "top_logprobs");
    if (v && !json_is_null(v) && !json_is_integer(v)) {
        snprintf(err, cap, "invalid top_logprobs: must be an integer");
        return -1;
    }
    if (json_integer_value(v) < 0 || json_integer_value(v) > SIM_MAX_TOP_LOGPROBS) {
        snprintf(err, cap, "top_logprobs must be between 0 and %d", SIM_MAX_TOP_LOGPROBS);
        return -1;
    }
    lp->top = (int)json_integer_value(v);
    v = chat ? NULL : json_object_get(in, "context"); /* a chat has none in Ollama */
    size_t i;
    json_t *x;
    if (v && !json_is_null(v) && !json_is_array(v)) {
        snprintf(err, cap, "invalid context: must be a list of token ids");
        return -1;
    }
    json_array_foreach(v, i, x) {
        if (!json_is_integer(x) || json_integer_value(x) < 0) {
            snprintf(err, cap, "invalid context: token %zu is not a token id", i);
            return -1;
        }
    }
    lp->n_context = (int)json_array_size(v);
    return 0;
}

/* A token's entry: token, logprob, bytes (its UTF-8), as Ollama has them. */
static json_t *s_token(const char *tok, double logprob)
{
    json_t *bytes = json_array();
    for (const unsigned char *p = (const unsigned char *)tok; *p; p++)
        json_array_append_new(bytes, json_integer(*p));
    return json_pack("{s:s, s:f, s:o}", "token", tok, "logprob", logprob, "bytes", bytes);
}

/* The sampled token is the most likely (p >= e^-1); the others share what
 * is left, halving each time: probabilities sum below 1, logprobs < 0 and
 * strictly descending. */
json_t *sim_lp_entry(const char *tok, int pos, int top)
{
    uint64_t h = sim_hash(sim_hash(SIM_HASH0, tok, strlen(tok)), &pos, sizeof pos);
    double lp = -(0.001 + 0.999 * (double)(h % 10000) / 10000.0);
    json_t *e = s_token(tok, lp);
    if (!e || top <= 0)
        return e;
    json_t *alts = json_array();
    json_array_append_new(alts, s_token(tok, lp));
    const char *lead = tok[0] == ' ' ? " " : "";
    double rest = 1.0 - exp(lp);
    for (size_t k = 0, i = (size_t)(h >> 32) % S_NALT; (int)json_array_size(alts) < top;
         i = (i + 1) % S_NALT) {
        char alt[40];
        snprintf(alt, sizeof alt, "%s%s", lead, k_alt[i]);
        if (strcmp(alt, tok) == 0)
            continue;
        rest /= 2;
        json_array_append_new(alts, s_token(alt, log(rest)));
        k++;
    }
    json_object_set_new(e, "top_logprobs", alts);
    return e;
}

/* A word's token id: a stable number in the range a real vocabulary has. */
static json_int_t s_token_id(const char *w, size_t n)
{
    return 1000 + (json_int_t)(sim_hash(SIM_HASH0, w, n) % 31000);
}

void sim_ctx_add_words(json_t *ctx, const char *text)
{
    for (const char *p = text; p && *p;) {
        size_t sp = strspn(p, " \t\r\n\v\f");
        p += sp;
        size_t n = strcspn(p, " \t\r\n\v\f");
        if (n)
            json_array_append_new(ctx, json_integer(s_token_id(p, n)));
        p += n;
    }
}

json_t *sim_ctx_start(const json_t *in)
{
    json_t *ctx = json_array(), *x;
    size_t i;
    json_array_foreach(json_object_get(in, "context"), i, x)
        json_array_append_new(ctx, json_integer(json_integer_value(x)));
    sim_ctx_add_words(ctx, json_string_value(json_object_get(in, "system")));
    sim_ctx_add_words(ctx, json_string_value(json_object_get(in, "prompt")));
    return ctx;
}
