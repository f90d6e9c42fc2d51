/*
 * textgen.c - the "model": words from a fixed vocabulary drawn by an RNG
 * whose seed the caller derives from the input (deterministic replies) or
 * from the server's RNG (varied replies); and embeddings that are a pure
 * function of (model, text).
 */
#include "sim.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const s_words[] = {
    "amber", "basin", "cedar", "delta", "ember", "fjord", "glade", "harbor",
    "island", "juniper", "kestrel", "lantern", "meadow", "nectar", "orchard", "pebble",
    "quarry", "river", "summit", "thistle", "upland", "valley", "willow", "yarrow",
    "zephyr", "anchor", "bramble", "canyon", "dune", "estuary", "fern", "granite",
    "heather", "inlet", "jasper", "kelp", "lichen", "marsh", "nimbus", "oak",
    "prairie", "quartz", "reef", "sable", "tundra", "umber", "vapor", "wren",
    "the", "a", "of", "and", "to", "in", "is", "on",
    "with", "under", "over", "beyond", "near", "through", "quiet", "bright",
};
#define S_NWORDS (sizeof s_words / sizeof s_words[0])

int sim_count_words(const char *txt)
{
    int n = 0;
    bool in = false;
    for (const char *p = txt; p && *p; p++) {
        bool sp = isspace((unsigned char)*p);
        if (!sp && !in)
            n++;
        in = !sp;
    }
    return n;
}

int sim_gen_init(sim_gen_t *g, uint64_t seed, int limit, bool json, const json_t *stop)
{
    memset(g, 0, sizeof *g);
    g->rng = seed;
    g->limit = limit;
    g->json = json;
    g->cap = 256;
    g->text = malloc(g->cap);
    if (!g->text)
        return -1;
    g->text[0] = '\0';
    if (json_is_string(stop))
        g->n_stop = 1;
    else if (json_is_array(stop))
        g->n_stop = (int)json_array_size(stop);
    if (g->n_stop > 16)
        g->n_stop = 16;
    if (g->n_stop) {
        g->stop = calloc((size_t)g->n_stop, sizeof *g->stop);
        if (!g->stop) {
            g->n_stop = 0;
            return -1;
        }
        for (int i = 0; i < g->n_stop; i++) {
            const json_t *v = json_is_string(stop) ? stop : json_array_get(stop, (size_t)i);
            g->stop[i] = strdup(json_is_string(v) ? json_string_value(v) : "");
            if (!g->stop[i])
                return -1;
        }
    }
    return 0;
}

void sim_gen_free(sim_gen_t *g)
{
    for (int i = 0; g->stop && i < g->n_stop; i++)
        free(g->stop[i]);
    free(g->stop);
    free(g->text);
    memset(g, 0, sizeof *g);
}

static int s_append(sim_gen_t *g, const char *t)
{
    size_t n = strlen(t);
    if (g->len + n + 1 > g->cap) {
        size_t cap = g->cap * 2 + n;
        char *p = realloc(g->text, cap);
        if (!p)
            return -1;
        g->text = p;
        g->cap = cap;
    }
    memcpy(g->text + g->len, t, n + 1);
    g->len += n;
    return 0;
}

/* Would appending T complete one of the stop strings? */
static bool s_hits_stop(const sim_gen_t *g, const char *t)
{
    for (int i = 0; i < g->n_stop; i++) {
        size_t sl = strlen(g->stop[i]);
        if (sl == 0)
            continue;
        /* Look only at the tail that could contain a new match. */
        size_t tl = strlen(t);
        size_t from = g->len > sl ? g->len - sl + 1 : 0;
        char tail[512];
        int n = snprintf(tail, sizeof tail, "%s%s", g->text + from, t);
        if (n > 0 && (size_t)n < sizeof tail && strstr(tail, g->stop[i]))
            return true;
        (void)tl;
    }
    return false;
}

int sim_gen_next(sim_gen_t *g, char *buf, size_t cap)
{
    if (g->n >= g->limit)
        return 1;
    if (g->sentence_left <= 0)
        g->sentence_left = 8 + (int)(sim_rand(&g->rng) % 5);
    char word[32];
    snprintf(word, sizeof word, "%s", s_words[sim_rand(&g->rng) % S_NWORDS]);
    bool first_of_sentence = g->n == 0 || g->text[g->len ? g->len - 1 : 0] == '.';
    if (first_of_sentence)
        word[0] = (char)toupper((unsigned char)word[0]);
    g->sentence_left--;
    bool last = g->n + 1 == g->limit;
    const char *end = (g->sentence_left == 0 || last) ? "." : "";
    snprintf(buf, cap, "%s%s%s%s%s", g->json && g->n == 0 ? "{\"text\": \"" : "",
             g->n == 0 ? "" : " ", word, end, g->json && last ? "\"}" : "");
    if (!g->json && s_hits_stop(g, buf)) {
        g->stopped_by_stop = true;
        g->limit = g->n;
        buf[0] = '\0';
        return 1;
    }
    if (s_append(g, buf) != 0)
        return 1;
    g->n++;
    return 0;
}

void sim_embed(const char *model, const char *text, int dim, double *out)
{
    uint64_t st = sim_hash(sim_hash(SIM_HASH0, model, strlen(model)), text, strlen(text));
    double sum = 0;
    for (int i = 0; i < dim; i++) {
        out[i] = sim_rand01(&st) * 2.0 - 1.0;
        sum += out[i] * out[i];
    }
    double norm = sqrt(sum);
    for (int i = 0; i < dim && norm > 0; i++)
        out[i] /= norm;
}
