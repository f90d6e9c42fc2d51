/*
 * infer.c - POST /api/generate, /api/chat and /api/embed: validate like
 * Ollama, draw faults, take a slot (or 503), wait for the model to load,
 * then pace prefill and tokens in real time (divided by the time scale).
 * Streaming answers are produced token by token from libmicrohttpd's
 * content callback, in the connection's own thread, waiting in poll() on
 * the client socket so an early close frees the slot at once.
 */
#include "http.h"

#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

enum {
    STEP_TOKEN = 0,
    STEP_DONE = 1,
    STEP_THINK = 2,
    STEP_GONE = -1,
    STEP_DROP = -2,
    STEP_MIDSTREAM = -3
};

static int64_t s_sim_ns(const sim_t *s, int64_t real_ns)
{
    return (int64_t)((double)real_ns * s->time_scale);
}

/* Waits, mapping the outcome to a step result (gone or shutdown = -1). */
static int s_pause(sim_req_t *r, int64_t ns)
{
    sim_wait_t w = sim_wait(r->s, r->client_fd, -1, ns);
    if (w == SIM_WAIT_SHUTDOWN)
        r->shutdown = true;
    return w == SIM_WAIT_TIMEOUT ? 0 : STEP_GONE;
}

/* Holds the slot and sends nothing: until the client leaves, the
 * simulator stops, or hang_ms passes (then we close the connection). */
static int s_hang(sim_req_t *r)
{
    r->draw.hang = false;
    int rc = s_pause(r, r->draw.hang_ns > 0 ? r->draw.hang_ns : -1);
    if (rc == 0) {
        r->server_closed = true;
        return STEP_DROP;
    }
    return rc;
}

/* The thinking text (think given to a thinking model): its first 3 words
 * for "low", 6 for true and "medium", 9 for "high". */
static const char *const k_think[] = {"Let", "me", "think", "this", "through",
                                      "step", "by", "step", "carefully."};

/* THINK: JSON think -> words of thinking (0 = none), or -1 when it is not
 * a value Ollama takes. */
static int s_think_words(const json_t *think)
{
    static const char *const lv[] = {"low", "medium", "high"};
    if (!think || json_is_null(think) || json_is_boolean(think))
        return json_is_true(think) ? 6 : 0;
    for (int i = 0; json_is_string(think) && i < 3; i++)
        if (strcmp(json_string_value(think), lv[i]) == 0)
            return 3 * (i + 1);
    return -1;
}

/* The whole thinking text so far (the first think_sent words). */
static json_t *s_think_text(const sim_req_t *r)
{
    char buf[256];
    size_t n = 0;
    buf[0] = '\0';
    for (int i = 0; i < r->think_sent && n < sizeof buf; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%s", i ? " " : "", k_think[i]);
    return json_string(buf);
}

/* A token TOK was made: its logprobs entry (logprobs asked: kept for its
 * chunk, or for the whole answer) and its id in the context. */
static void s_note(sim_req_t *r, const char *tok)
{
    if (r->ctx)
        sim_ctx_add_words(r->ctx, tok);
    if (!r->lp.on)
        return;
    json_t *e = sim_lp_entry(tok, r->lp_pos++, r->lp.top);
    if (r->stream) {
        json_decref(r->lp_last);
        r->lp_last = e;
    } else {
        if (!r->lp_all)
            r->lp_all = json_array();
        json_array_append_new(r->lp_all, e);
    }
}

/* A streamed chunk O gets the entry of the token it carries. */
static void s_put_last(sim_req_t *r, json_t *o)
{
    if (r->lp_last)
        json_object_set_new(o, "logprobs", json_pack("[o]", r->lp_last));
    r->lp_last = NULL;
}

/* Waits until the next token is due. Tokens are due every token_ms from
 * the end of the prefill, as a GPU makes them: a wake-up the machine ran
 * late is caught up by the tokens after it instead of adding to each one.
 * Paused token_ms after each, 5000 tokens of 1 ms took 13 s on an idle
 * machine (0.45 s of it CPU) and 21 s beside two CPU hogs; an ASan build
 * on a busier one ran past gateway_harden_slowread's 120 s. */
static int s_pause_token(sim_req_t *r)
{
    int64_t step = sim_scaled_ns(r->s, r->job.model->token_ms);
    r->t_token_due = (r->t_token_due ? r->t_token_due : r->t_prefill_end) + step;
    int64_t left = r->t_token_due - sim_now();
    return s_pause(r, left > 0 ? left : 0);
}

/* One step of a generation: prefill first, then the thinking words, then
 * one token per call. */
static int s_step(sim_req_t *r, char *tok, size_t cap)
{
    sim_t *s = r->s;
    const sim_model_t *m = r->job.model;
    if (r->phase == 0) {
        if (r->draw.hang && r->draw.hang_after == 0)
            return s_hang(r);
        int64_t prefill = sim_scaled_ns(s, 1000.0 * r->prompt_tokens / m->prefill_tps);
        if (s_pause(r, prefill) != 0)
            return STEP_GONE;
        if (r->draw.slow_start && s_pause(r, r->draw.slow_start_ns) != 0)
            return STEP_GONE;
        r->t_prefill_end = sim_now();
        r->phase = 1;
    }
    if (r->think_sent < r->think_words) { /* thinking first, a word a token */
        if (s_pause_token(r) != 0)
            return STEP_GONE;
        snprintf(tok, cap, "%s%s", r->think_sent ? " " : "", k_think[r->think_sent]);
        r->think_sent++;
        s_note(r, tok);
        return STEP_THINK;
    }
    int n = r->gen.n;
    if (r->draw.hang && n == r->draw.hang_after)
        return s_hang(r);
    if (r->draw.drop && r->draw.drop_after > 0 && n == r->draw.drop_after) {
        r->server_closed = true;
        return STEP_DROP;
    }
    if (r->draw.midstream && n == r->draw.midstream_after)
        return STEP_MIDSTREAM;
    if (r->gen.n >= r->gen.limit)
        return STEP_DONE;
    if (s_pause_token(r) != 0)
        return STEP_GONE;
    if (sim_gen_next(&r->gen, tok, cap) != 0)
        return STEP_DONE;
    s_note(r, tok);
    return STEP_TOKEN;
}

static json_t *s_head(sim_req_t *r)
{
    char now[64];
    sim_rfc3339(now, sizeof now, sim_now());
    return json_pack("{s:s, s:s}", "model", r->model_echo, "created_at", now);
}

static void s_put_text(sim_req_t *r, json_t *o, const char *text)
{
    if (r->chat)
        json_object_set_new(o, "message",
                            json_pack("{s:s, s:s}", "role", "assistant", "content", text));
    else
        json_object_set_new(o, "response", json_string(text));
}

static json_t *s_final(sim_req_t *r, const char *text)
{
    sim_t *s = r->s;
    r->t_end = sim_now();
    json_t *o = s_head(r);
    s_put_text(r, o, text);
    if (r->think_sent && !r->stream) /* streamed: the pieces went before */
        json_object_set_new(r->chat ? json_object_get(o, "message") : o, "thinking",
                            s_think_text(r));
    if (r->tool_calls && !r->tool_calls_sent) /* stream: false: the calls are here */
        json_object_set(json_object_get(o, "message"), "tool_calls", r->tool_calls);
    if (r->lp_all) /* stream: false: every token's; streamed, each went with its chunk */
        json_object_set(o, "logprobs", r->lp_all);
    if (r->ctx) /* a non-raw generate's final answer */
        json_object_set(o, "context", r->ctx);
    const char *reason = r->length_limited && !r->gen.stopped_by_stop && r->gen.n >= r->gen.limit
                             ? "length" : "stop";
    json_object_set_new(o, "done", json_true());
    json_object_set_new(o, "done_reason", json_string(reason));
    json_object_set_new(o, "total_duration", json_integer(s_sim_ns(s, r->t_end - r->t_arrive)));
    json_object_set_new(o, "load_duration", json_integer(s_sim_ns(s, r->t_ready - r->t_arrive)));
    json_object_set_new(o, "prompt_eval_count", json_integer(r->prompt_tokens));
    json_object_set_new(o, "prompt_eval_duration",
                        json_integer(s_sim_ns(s, r->t_prefill_end - r->t_ready)));
    json_object_set_new(o, "eval_count", json_integer(r->gen.n + r->think_sent));
    json_object_set_new(o, "eval_duration",
                        json_integer(s_sim_ns(s, r->t_end - r->t_prefill_end)));
    pthread_mutex_lock(&s->lock);
    r->job.model->eval_tokens += (uint64_t)r->gen.n;
    pthread_mutex_unlock(&s->lock);
    return o;
}

static void s_set_pending(sim_req_t *r, json_t *o)
{
    char *txt = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(o);
    free(r->pending);
    r->pending = NULL;
    r->pend_len = r->pend_off = 0;
    if (!txt)
        return;
    size_t n = strlen(txt);
    char *line = realloc(txt, n + 2);
    if (!line) {
        free(txt);
        return;
    }
    r->pending = line;
    r->pending[n] = '\n';
    r->pending[n + 1] = '\0';
    r->pend_len = n + 1;
}

/* A streamed chunk (done: false) with TOK, after the tool-result text if
 * it is still owed; a tool-call answer's chunk carries the calls, as
 * Ollama streams them: a message with content "" and tool_calls. */
static json_t *s_chunk(sim_req_t *r, const char *tok)
{
    json_t *o = s_head(r);
    if (r->tool_calls && !r->tool_calls_sent) {
        s_put_text(r, o, "");
        json_object_set(json_object_get(o, "message"), "tool_calls", r->tool_calls);
        r->tool_calls_sent = true;
    } else if (r->tool_prefix) {
        size_t n = strlen(r->tool_prefix) + strlen(tok) + 1;
        char *t = malloc(n);
        if (t)
            snprintf(t, n, "%s%s", r->tool_prefix, tok);
        s_put_text(r, o, t ? t : tok);
        free(t);
        free(r->tool_prefix);
        r->tool_prefix = NULL;
    } else {
        s_put_text(r, o, tok);
    }
    s_put_last(r, o);
    json_object_set_new(o, "done", json_false());
    return o;
}

static ssize_t s_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    sim_req_t *r = cls;
    for (;;) {
        if (r->pend_off < r->pend_len) {
            size_t n = r->pend_len - r->pend_off;
            if (n > max)
                n = max;
            memcpy(buf, r->pending + r->pend_off, n);
            r->pend_off += n;
            return (ssize_t)n;
        }
        if (r->phase == 2)
            return MHD_CONTENT_READER_END_OF_STREAM;
        char tok[128];
        int rc = s_step(r, tok, sizeof tok);
        switch (rc) {
        case STEP_TOKEN:
            s_set_pending(r, s_chunk(r, tok));
            break;
        case STEP_THINK: { /* as Ollama streams it: the piece, the text "" */
            json_t *o = s_head(r);
            s_put_text(r, o, "");
            json_object_set_new(r->chat ? json_object_get(o, "message") : o, "thinking",
                                json_string(tok));
            s_put_last(r, o);
            json_object_set_new(o, "done", json_false());
            s_set_pending(r, o);
            break;
        }
        case STEP_DONE:
            if (r->tool_prefix || (r->tool_calls && !r->tool_calls_sent)) {
                s_set_pending(r, s_chunk(r, "")); /* what is owed before the end */
                break;
            }
            s_set_pending(r, s_final(r, ""));
            r->phase = 2;
            break;
        case STEP_MIDSTREAM:
            s_set_pending(r, json_pack("{s:s}", "error", r->draw.midstream_message));
            r->phase = 2;
            break;
        default:   /* client gone, dropped, hang timed out, shutdown */
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
}

/* Runs the whole generation in this thread for "stream": false. */
static enum MHD_Result s_generate_whole(sim_req_t *r)
{
    char tok[128];
    for (;;) {
        int rc = s_step(r, tok, sizeof tok);
        if (rc == STEP_TOKEN || rc == STEP_THINK)
            continue;
        if (rc == STEP_DONE && r->tool_prefix) {
            size_t n = strlen(r->tool_prefix) + strlen(r->gen.text) + 1;
            char *t = malloc(n);
            if (!t)
                return sim_http_error(r, 500, "out of memory");
            snprintf(t, n, "%s%s", r->tool_prefix, r->gen.text);
            enum MHD_Result res = sim_http_json(r, 200, s_final(r, t));
            free(t);
            return res;
        }
        if (rc == STEP_DONE)
            return sim_http_json(r, 200, s_final(r, r->gen.text));
        if (rc == STEP_MIDSTREAM)
            return sim_http_error(r, 500, "%s", r->draw.midstream_message);
        return MHD_NO;
    }
}

/* Text seed: the input alone when the caller asked for reproducible
 * output (temperature 0 or an explicit seed), else the server's RNG. */
static uint64_t s_seed(sim_req_t *r, const json_t *in, const json_t *opts)
{
    const json_t *temp = json_object_get(opts, "temperature");
    const json_t *seed = json_object_get(opts, "seed");
    bool fixed = (json_is_number(temp) && json_number_value(temp) == 0) || json_is_integer(seed);
    if (!fixed) {
        pthread_mutex_lock(&r->s->lock);
        uint64_t v = sim_rand(&r->s->rng);
        pthread_mutex_unlock(&r->s->lock);
        return v;
    }
    const sim_model_t *m = r->job.model;
    uint64_t h = sim_hash(SIM_HASH0, m->name, strlen(m->name));
    long long sv = json_is_integer(seed) ? (long long)json_integer_value(seed) : 0;
    h = sim_hash(h, &sv, sizeof sv);
    /* The serialised input fields are canonical: jansson keeps key order
     * and the caller's JSON was parsed into these objects. */
    const char *keys[] = {"system", "prompt", "messages", "format"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        json_t *v = json_object_get(in, keys[i]);
        char *txt = v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
        h = sim_hash(h, txt ? txt : "", txt ? strlen(txt) : 0);
        free(txt);
    }
    return h;
}

/* Validates what generate/chat share; fills R. Returns 0 or queues 400. */
static int s_check_common(sim_req_t *r, const json_t *in, const json_t **opts, int64_t *ka,
                          enum MHD_Result *res)
{
    json_t *v = json_object_get(in, "stream");
    if (v && !json_is_boolean(v) && !json_is_null(v)) {
        *res = sim_http_error(r, 400, "invalid stream: must be true or false");
        return -1;
    }
    r->stream = !json_is_false(v);
    *opts = json_object_get(in, "options");
    if (*opts && !json_is_object(*opts) && !json_is_null(*opts)) {
        *res = sim_http_error(r, 400, "invalid options: must be an object");
        return -1;
    }
    sim_stats_options(r->s, *opts);
    const json_t *np = json_object_get(*opts, "num_predict");
    const json_t *temp = json_object_get(*opts, "temperature");
    const json_t *seed = json_object_get(*opts, "seed");
    const json_t *stop = json_object_get(*opts, "stop");
    if ((np && !json_is_integer(np)) || (temp && !json_is_number(temp)) ||
        (seed && !json_is_integer(seed)) ||
        (stop && !json_is_string(stop) && !json_is_array(stop))) {
        *res = sim_http_error(r, 400, "invalid options: wrong type of num_predict, temperature, "
                                      "seed or stop");
        return -1;
    }
    *ka = r->s->keep_alive_ns;
    v = json_object_get(in, "keep_alive");
    if (v && !json_is_null(v) && sim_parse_keep_alive(v, ka) != 0) {
        *res = sim_http_error(r, 400, "invalid keep_alive: want a duration like \"5m\" or seconds");
        return -1;
    }
    v = json_object_get(in, "format");
    if (v && !json_is_null(v) && !json_is_object(v) &&
        !(json_is_string(v) &&
          (strcmp(json_string_value(v), "json") == 0 || !json_string_length(v)))) {
        *res = sim_http_error(r, 400, "invalid format: want \"json\" or a JSON schema object");
        return -1;
    }
    return 0;
}

/* Input words -> prompt tokens. For chat, one extra per message (the
 * role marker a template adds); SIM_IMAGE_TOKENS per image. */
static int s_prompt_tokens(const json_t *in, bool chat)
{
    int n = 0;
    if (chat) {
        size_t i;
        json_t *msg;
        json_array_foreach(json_object_get(in, "messages"), i, msg)
            n += 1 + sim_count_words(json_string_value(json_object_get(msg, "content")));
    } else {
        n = sim_count_words(json_string_value(json_object_get(in, "system"))) +
            sim_count_words(json_string_value(json_object_get(in, "prompt")));
    }
    int images = sim_images(in, chat, NULL, 0); /* checked before */
    n += (images > 0 ? images : 0) * SIM_IMAGE_TOKENS;
    return n < 1 ? 1 : n;
}

/* Enqueues and waits for a slot of a loaded model. 0, or -1 with the
 * answer already decided (*res). */
static int s_acquire(sim_req_t *r, sim_model_t *m, int64_t ka, enum MHD_Result *res)
{
    sim_t *s = r->s;
    if (m->size > sim_sched_max_vram(s)) {
        *res = sim_http_error(r, 500,
                              "model requires more system memory (%.1f GiB) than is available "
                              "(%.1f GiB)",
                              (double)m->size / 1073741824.0,
                              (double)sim_sched_max_vram(s) / 1073741824.0);
        return -1;
    }
    r->job.model = m;
    r->job.keep_alive_ns = ka;
    r->job.arrived = r->t_arrive;
    r->job.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (r->job.efd < 0) {
        *res = sim_http_error(r, 500, "out of file descriptors");
        return -1;
    }
    sim_q_t q = sim_sched_enqueue(s, &r->job);
    if (q == SIM_Q_BUSY) {
        *res = sim_http_error(r, 503, "server busy, please try again.  maximum pending requests "
                                      "exceeded");
        return -1;
    }
    r->job_used = true;
    r->inference = true;
    int w = sim_sched_wait(s, &r->job, r->client_fd);
    if (w != 0) {
        r->job_used = false;   /* released by the wait */
        if (w == SIM_WAIT_SHUTDOWN)
            r->shutdown = true;
        *res = MHD_NO;
        return -1;
    }
    r->t_ready = sim_now();
    return 0;
}

/* A request with nothing to do: load the model, or with keep_alive 0 unload it. */
static enum MHD_Result s_load_only(sim_req_t *r, sim_model_t *m, int64_t ka)
{
    if (ka == 0) {
        sim_sched_unload(r->s, m);
    } else {
        enum MHD_Result res;
        if (s_acquire(r, m, ka, &res) != 0)
            return res;
        sim_sched_release(r->s, &r->job);
        r->job_used = false;
    }
    json_t *o = s_head(r);
    if (r->route == R_CHAT)
        s_put_text(r, o, "");
    else if (r->route == R_GENERATE)
        json_object_set_new(o, "response", json_string(""));
    if (r->route == R_EMBED) {
        json_object_set_new(o, "embeddings", json_array());
        json_object_del(o, "created_at");
    } else {
        json_object_set_new(o, "done", json_true());
        json_object_set_new(o, "done_reason", json_string(ka == 0 ? "unload" : "load"));
    }
    return sim_http_json(r, 200, o);
}

/* dimensions: VEC (LEN values, unit length) cut to DIMS and normalised
 * again, as Ollama does; DIMS 0 or not shorter: unchanged. Its length. */
static int s_cut(double *vec, int len, int dims)
{
    if (dims <= 0 || dims >= len)
        return len;
    double sum = 0;
    for (int k = 0; k < dims; k++)
        sum += vec[k] * vec[k];
    for (int k = 0; k < dims && sum > 0; k++)
        vec[k] /= sqrt(sum);
    return dims;
}

static enum MHD_Result s_embed(sim_req_t *r, const json_t *in, sim_model_t *m, int64_t ka)
{
    sim_t *s = r->s;
    const json_t *input = json_object_get(in, "input");
    size_t n = json_is_array(input) ? json_array_size(input) : json_is_string(input) ? 1 : 0;
    /* Bounds the answer's size too (each float is ~12 bytes of JSON). */
    if (n > SIM_MAX_EMBED_INPUTS || n * (size_t)m->embedding_length > SIM_MAX_EMBED_FLOATS)
        return sim_http_error(r, 400, "too many inputs: at most %d, and %d floats in all",
                              SIM_MAX_EMBED_INPUTS, SIM_MAX_EMBED_FLOATS);
    const json_t *dims = json_object_get(in, "dimensions");
    if (dims && !json_is_null(dims) && (!json_is_integer(dims) || json_integer_value(dims) <= 0))
        return sim_http_error(r, 400, "invalid dimensions: want a positive integer");
    r->embed_dims = json_is_integer(dims) && json_integer_value(dims) < m->embedding_length
                        ? (int)json_integer_value(dims) : 0;
    int words = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *t = json_is_array(input) ? json_array_get(input, i) : input;
        words += sim_count_words(json_string_value(t));
    }
    r->prompt_tokens = words < 1 ? 1 : words;
    enum MHD_Result res;
    if (s_acquire(r, m, ka, &res) != 0)
        return res;
    pthread_mutex_lock(&s->lock);
    m->prompt_tokens += (uint64_t)r->prompt_tokens;
    pthread_mutex_unlock(&s->lock);
    if (r->draw.hang && s_hang(r) != 0)
        return MHD_NO;
    if (r->draw.drop && r->draw.drop_after > 0) {   /* nothing streams: drop before the answer */
        r->server_closed = true;
        return MHD_NO;
    }
    if (r->draw.slow_start && s_pause(r, r->draw.slow_start_ns) != 0)
        return MHD_NO;
    if (s_pause(r, sim_scaled_ns(s, 1000.0 * r->prompt_tokens / m->prefill_tps)) != 0)
        return MHD_NO;
    if (r->draw.midstream)
        return sim_http_error(r, 500, "%s", r->draw.midstream_message);
    double *vec = malloc(sizeof *vec * (size_t)m->embedding_length);
    if (!vec)
        return sim_http_error(r, 500, "out of memory");
    json_t *all = json_array();
    for (size_t i = 0; i < n; i++) {
        const json_t *t = json_is_array(input) ? json_array_get(input, i) : input;
        sim_embed(m->name, json_string_value(t), m->embedding_length, vec);
        int dim = s_cut(vec, m->embedding_length, r->embed_dims);
        json_t *row = json_array();
        for (int k = 0; k < dim; k++)
            json_array_append_new(row, json_real(vec[k]));
        json_array_append_new(all, row);
    }
    free(vec);
    int64_t end = sim_now();
    json_t *o = json_pack("{s:s, s:o}", "model", r->model_echo, "embeddings", all);
    json_object_set_new(o, "total_duration", json_integer(s_sim_ns(s, end - r->t_arrive)));
    json_object_set_new(o, "load_duration", json_integer(s_sim_ns(s, r->t_ready - r->t_arrive)));
    json_object_set_new(o, "prompt_eval_count", json_integer(r->prompt_tokens));
    return sim_http_json(r, 200, o);
}

/* Checks the route-specific input; -1 with a 400 queued. */
static int s_check_input(sim_req_t *r, const json_t *in, bool *load_only, enum MHD_Result *res)
{
    if (r->route == R_EMBED) {
        const json_t *input = json_object_get(in, "input");
        bool ok = !input || json_is_null(input) || json_is_string(input) || json_is_array(input);
        size_t i;
        json_t *t;
        if (json_is_array(input))
            json_array_foreach(input, i, t) ok = ok && json_is_string(t);
        if (!ok) {
            *res = sim_http_error(r, 400, "invalid input: want a string or a list of strings");
            return -1;
        }
        /* Ollama's: "" is no input, as [] is; [""] embeds an empty text */
        *load_only = !input || json_is_null(input) ||
                     (json_is_string(input) && !json_string_length(input)) ||
                     (json_is_array(input) && json_array_size(input) == 0);
        return 0;
    }
    if (r->route == R_CHAT) {
        const json_t *msgs = json_object_get(in, "messages");
        if (msgs && !json_is_null(msgs) && !json_is_array(msgs)) {
            *res = sim_http_error(r, 400, "invalid messages: must be a list");
            return -1;
        }
        size_t i;
        json_t *msg;
        json_array_foreach(msgs, i, msg) {
            const json_t *c = json_object_get(msg, "content");
            if (!json_is_object(msg) || !json_is_string(json_object_get(msg, "role")) ||
                (c && !json_is_string(c))) {
                *res = sim_http_error(r, 400, "invalid message %zu: want {\"role\": string, "
                                              "\"content\": string}", i);
                return -1;
            }
        }
        char err[256];
        if (sim_tools_check(in, err, sizeof err) != 0 ||
            sim_images(in, true, err, sizeof err) < 0) {
            *res = sim_http_error(r, 400, "%s", err);
            return -1;
        }
        *load_only = json_array_size(msgs) == 0;
        return 0;
    }
    const json_t *p = json_object_get(in, "prompt"), *sys = json_object_get(in, "system");
    if ((p && !json_is_string(p) && !json_is_null(p)) ||
        (sys && !json_is_string(sys) && !json_is_null(sys))) {
        *res = sim_http_error(r, 400, "invalid prompt or system: must be strings");
        return -1;
    }
    char err[128];
    if (sim_images(in, false, err, sizeof err) < 0) {
        *res = sim_http_error(r, 400, "%s", err);
        return -1;
    }
    *load_only = !json_is_string(p) || json_string_length(p) == 0;
    return 0;
}

/* Generate or chat once validated: slot, then the answer whole or streamed. */
static enum MHD_Result s_generate(sim_req_t *r, const json_t *in, sim_model_t *m,
                                  const json_t *opts, int64_t ka)
{
    sim_t *s = r->s;
    enum MHD_Result res = MHD_NO;
    /* an earlier answer's context is prompt too, as Ollama counts it */
    r->prompt_tokens = s_prompt_tokens(in, r->chat) + r->lp.n_context;
    /* options.num_ctx: a longer prompt is cut to it, or refused with
     * "truncate": false (Ollama's 400) */
    const json_t *nc = json_object_get(opts, "num_ctx");
    int ctx = json_is_integer(nc) && json_integer_value(nc) > 0 &&
                      json_integer_value(nc) < SIM_MAX_TOKENS * 1000
                  ? (int)json_integer_value(nc) : 0;
    if (ctx && r->prompt_tokens > ctx && json_is_false(json_object_get(in, "truncate")))
        return sim_http_error(r, 400, "request (%d tokens) exceeds the available context size "
                                      "(%d tokens), try increasing it", r->prompt_tokens, ctx);
    if (ctx && r->prompt_tokens > ctx)
        r->prompt_tokens = ctx;
    if (s_acquire(r, m, ka, &res) != 0)
        return res;
    pthread_mutex_lock(&s->lock);
    m->prompt_tokens += (uint64_t)r->prompt_tokens;
    pthread_mutex_unlock(&s->lock);
    const json_t *np = json_object_get(opts, "num_predict");
    int limit = m->reply_tokens;
    if (json_is_integer(np) && json_integer_value(np) > 0) {
        r->length_limited = true;
        limit = json_integer_value(np) > SIM_MAX_TOKENS ? SIM_MAX_TOKENS
                                                        : (int)json_integer_value(np);
    }
    if (ctx && json_is_false(json_object_get(in, "shift")) && r->prompt_tokens + limit > ctx) {
        limit = ctx - r->prompt_tokens; /* no shifting: the context full ends it */
        r->length_limited = true;
    }
    if (r->chat) { /* tools.c: a tool call instead of text, or text after a tool's result */
        r->tool_calls = sim_tools_call(in);
        r->tool_prefix = r->tool_calls ? NULL : sim_tools_result_text(in);
        if (r->tool_calls)
            limit = 0, r->length_limited = false;
    }
    const json_t *fmt = json_object_get(in, "format");
    bool json_fmt = json_is_object(fmt) || (json_is_string(fmt) && json_string_length(fmt) > 0);
    r->gen_init = true;   /* sim_gen_free copes with a half-done init */
    if (sim_gen_init(&r->gen, s_seed(r, in, opts), limit, json_fmt,
                     json_object_get(opts, "stop")) != 0)
        return sim_http_error(r, 500, "out of memory");
    if (!r->stream)
        return s_generate_whole(r);
    if (r->draw.hang && r->draw.hang_after == 0 && s_hang(r) != 0)
        return MHD_NO;   /* nothing was sent: a hang before the headers */
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, s_reader, r, NULL);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", "application/x-ndjson");
    res = MHD_queue_response(r->conn, 200, resp);
    MHD_destroy_response(resp);
    r->status = 200;
    pthread_mutex_lock(&s->lock);
    sim_stats_status(s, 200);
    pthread_mutex_unlock(&s->lock);
    return res;
}

static void s_count(sim_req_t *r, sim_model_t *m)
{
    sim_t *s = r->s;
    pthread_mutex_lock(&s->lock);
    if (!m) {
        s->st.requests++;
        if (r->route == R_GENERATE) s->st.ep_generate++;
        else if (r->route == R_CHAT) s->st.ep_chat++;
        else s->st.ep_embed++;
    } else {
        m->requests++;
        if (r->route == R_GENERATE) m->n_generate++;
        else if (r->route == R_CHAT) m->n_chat++;
        else m->n_embed++;
    }
    pthread_mutex_unlock(&s->lock);
}

/* Whether IN is a raw generate with a template, a system prompt or a
 * context: Ollama refuses those (since 0.1.9: nothing is put around a raw
 * prompt, so none of them can apply). */
static int s_raw_conflict(const sim_req_t *r, const json_t *in)
{
    const char *t = json_string_value(json_object_get(in, "template"));
    const char *sys = json_string_value(json_object_get(in, "system"));
    return !r->chat && json_is_true(json_object_get(in, "raw")) &&
           ((t && *t) || (sys && *sys) || json_array_size(json_object_get(in, "context")));
}

/* think, logprobs, top_logprobs and context of a generate or chat; 0, or
 * -1 with the 400 queued (*RES). */
static int s_check_gen(sim_req_t *r, const json_t *in, const sim_model_t *m,
                       enum MHD_Result *res)
{
    if ((r->think_words = s_think_words(json_object_get(in, "think"))) < 0) {
        *res = sim_http_error(r, 400, "invalid think value: must be \"high\", \"medium\", "
                                      "\"low\", true, or false");
        return -1;
    }
    if (r->think_words && !m->thinking) { /* Ollama checks before loading */
        *res = sim_http_error(r, 400, "\"%s\" does not support thinking", r->model_echo);
        return -1;
    }
    char err[160];
    if (sim_lp_check(in, r->chat, &r->lp, err, sizeof err) != 0) {
        *res = sim_http_error(r, 400, "%s", err);
        return -1;
    }
    if (s_raw_conflict(r, in)) { /* Ollama's words */
        *res = sim_http_error(r, 400, "raw mode does not support template, system, or context");
        return -1;
    }
    if (!r->chat && !json_is_true(json_object_get(in, "raw")))
        r->ctx = sim_ctx_start(in); /* Ollama answers a raw prompt without one */
    return 0;
}

enum MHD_Result sim_infer_handle(sim_req_t *r)
{
    sim_t *s = r->s;
    s_count(r, NULL);
    json_error_t jerr;
    json_t *in = json_loadb(r->body ? r->body : "", r->len, 0, &jerr);
    if (!in)
        return sim_http_error(r, 400, "invalid JSON body: %s", jerr.text);
    enum MHD_Result res = MHD_NO;
    const json_t *opts = NULL;
    int64_t ka = 0;
    bool load_only = false;
    const json_t *mv = json_object_get(in, "model");
    if (!json_is_object(in)) {
        res = sim_http_error(r, 400, "invalid JSON body: want an object");
        goto done;
    }
    if (!json_is_string(mv) || json_string_length(mv) == 0 || json_string_length(mv) >= 128) {
        res = sim_http_error(r, 400, "model is required");
        goto done;
    }
    snprintf(r->model_echo, sizeof r->model_echo, "%s", json_string_value(mv));
    sim_model_t *m = sim_model_find(s, r->model_echo);
    if (!m) {
        res = sim_http_error(r, 404, "model \"%s\" not found, try pulling it first", r->model_echo);
        goto done;
    }
    s_count(r, m);
    r->chat = r->route == R_CHAT;
    if (s_check_common(r, in, &opts, &ka, &res) != 0 || s_check_input(r, in, &load_only, &res) != 0)
        goto done;
    if (r->route != R_EMBED && s_check_gen(r, in, m, &res) != 0)
        goto done;
    if (load_only) {
        res = s_load_only(r, m, ka);
        goto done;
    }
    pthread_mutex_lock(&s->lock);
    sim_faults_draw(s, m, &r->draw);
    pthread_mutex_unlock(&s->lock);
    if (r->draw.error) {
        res = sim_http_error(r, r->draw.error_status, "%s", r->draw.error_message);
        goto done;
    }
    if (r->draw.drop && r->draw.drop_after == 0) {
        r->inference = true;
        r->server_closed = true;
        goto done;   /* MHD_NO: the connection closes with no answer */
    }
    if (r->route == R_EMBED) {
        res = s_embed(r, in, m, ka);
        goto done;
    }
    res = s_generate(r, in, m, opts, ka);
done:
    json_decref(in);
    return res;
}

void sim_infer_finish(sim_req_t *r, enum MHD_RequestTerminationCode toe)
{
    sim_t *s = r->s;
    /* Counted before the slot is given back: whoever sees `active` drop in
     * /sim/stats also sees this request as completed or aborted. */
    if (r->route == R_GENERATE || r->route == R_CHAT || r->route == R_EMBED) {
        pthread_mutex_lock(&s->lock);
        if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK && !r->server_closed) {
            s->st.completed++;
        } else if (r->inference && !r->server_closed && !r->shutdown &&
                   toe != MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN) {
            s->st.aborted++;
            if (r->job.gone_queued)
                s->st.aborted_queued++;
        }
        pthread_mutex_unlock(&s->lock);
    }
    if (r->job_used)
        sim_sched_release(s, &r->job);
    if (r->job.efd >= 0)
        close(r->job.efd);
    if (r->gen_init)
        sim_gen_free(&r->gen);
    json_decref(r->tool_calls);
    r->tool_calls = NULL;
    free(r->tool_prefix);
    r->tool_prefix = NULL;
    json_decref(r->lp_last);
    json_decref(r->lp_all);
    json_decref(r->ctx);
    r->lp_last = r->lp_all = r->ctx = NULL;
}
