/*
 * infer.c - brokerctl's inference commands (issue 7):
 *
 *   generate MODEL PROMPT [--temperature T] [--seed N] [--num-predict N]
 *            [--system S] [--no-stream]
 *   chat MODEL MESSAGE [--system S] [--temperature T] [--seed N] [--no-stream]
 *   embed MODEL TEXT...
 *   models                     per worker: backend, slots, VRAM, loaded models
 *   models load|unload WORKER MODEL
 *
 * Tokens are written to stdout the moment their PARTIAL arrives. With
 * --json each PARTIAL and the final reply are printed as one JSON object a
 * line, in Ollama's own shape (so scripts written for Ollama read them).
 */
#include "infer.h"
#include "render.h"
#include "agentbus.pb-c.h"
#include "tl_infer.h"

#include "tl_json.h"
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int json;
    int kind; /* 1 generate, 2 chat, 3 embed, 4 load/unload */
    int done;
    int status;
    char error[512];
    int any_text, saw_done; /* generate, chat: text printed; an answer with done */
    const char *service;    /* --service, for an error's text */
    const char *worker; /* models load|unload: for the message */
    const char *model;
    uint32_t priority; /* --priority: the lane at the broker */
} s_run_t;

static json_t *s_timings(const Agentbus__InferenceTimings *t)
{
    json_t *o = json_object();
    if (!t)
        return o;
    json_object_set_new(o, "total_duration", json_integer((json_int_t)t->total_duration));
    json_object_set_new(o, "load_duration", json_integer((json_int_t)t->load_duration));
    json_object_set_new(o, "prompt_eval_count", json_integer((json_int_t)t->prompt_eval_count));
    json_object_set_new(o, "prompt_eval_duration",
                        json_integer((json_int_t)t->prompt_eval_duration));
    json_object_set_new(o, "eval_count", json_integer((json_int_t)t->eval_count));
    json_object_set_new(o, "eval_duration", json_integer((json_int_t)t->eval_duration));
    return o;
}

static void s_print_json(json_t *o)
{
    ctl_json_print(stdout, o); /* compact lines for generate/chat (a stream) */
}

/* A final generate's context (Ollama's token ids, for a next prompt), as
 * Ollama's /api/generate answers it; none for a raw one. */
static void s_context(json_t *o, const Agentbus__GenerateResponse *g)
{
    json_t *a = g->n_context ? json_array() : NULL;
    for (size_t i = 0; a && i < g->n_context; i++)
        json_array_append_new(a, json_integer((json_int_t)g->context[i]));
    if (a)
        json_object_set_new(o, "context", a);
}

static void s_on_generate(s_run_t *r, const void *data, size_t size)
{
    Agentbus__GenerateResponse *g = (Agentbus__GenerateResponse *)ab_pb_unpack(
        &agentbus__generate_response__descriptor, size, data);
    if (!g) {
        r->status = AB_EMALFORMED;
        snprintf(r->error, sizeof r->error, "reply is not a GenerateResponse");
        return;
    }
    r->any_text |= g->response[0] != '\0' || g->thinking[0] != '\0';
    r->saw_done |= g->done;
    if (r->json) {
        json_t *o = g->done && g->timings ? s_timings(g->timings) : json_object();
        json_object_set_new(o, "model", json_string(g->model));
        json_object_set_new(o, "created_at", json_string(g->created_at));
        json_object_set_new(o, "response", json_string(g->response));
        if (g->thinking[0])
            json_object_set_new(o, "thinking", json_string(g->thinking));
        json_object_set_new(o, "done", json_boolean(g->done));
        if (g->done) {
            json_object_set_new(o, "done_reason", json_string(g->done_reason));
            json_object_set_new(o, "worker", json_string(g->worker));
            s_context(o, g);
        }
        s_print_json(o);
    } else {
        fputs(g->response, stdout);
        if (g->done && r->any_text)
            fputc('\n', stdout);
    }
    fflush(stdout);
    agentbus__generate_response__free_unpacked(g, NULL);
}

static void s_on_chat(s_run_t *r, const void *data, size_t size)
{
    Agentbus__ChatResponse *c =
        (Agentbus__ChatResponse *)ab_pb_unpack(&agentbus__chat_response__descriptor, size, data);
    if (!c) {
        r->status = AB_EMALFORMED;
        snprintf(r->error, sizeof r->error, "reply is not a ChatResponse");
        return;
    }
    const char *content = c->message ? c->message->content : "";
    r->any_text |= content[0] != '\0' || (c->message && c->message->tool_calls_json[0]);
    r->saw_done |= c->done;
    if (r->json) {
        json_t *o = c->done && c->timings ? s_timings(c->timings) : json_object();
        json_object_set_new(o, "model", json_string(c->model));
        json_object_set_new(o, "created_at", json_string(c->created_at));
        json_t *m = json_pack("{s:s, s:s}", "role", c->message ? c->message->role : "assistant",
                              "content", content);
        if (m && c->message && c->message->thinking[0])
            json_object_set_new(m, "thinking", json_string(c->message->thinking));
        json_object_set_new(o, "message", m);
        json_object_set_new(o, "done", json_boolean(c->done));
        if (c->done) {
            json_object_set_new(o, "done_reason", json_string(c->done_reason));
            json_object_set_new(o, "worker", json_string(c->worker));
        }
        s_print_json(o);
    } else {
        fputs(content, stdout);
        if (c->done && r->any_text)
            fputc('\n', stdout);
    }
    fflush(stdout);
    agentbus__chat_response__free_unpacked(c, NULL);
}

static void s_on_embed(s_run_t *r, const void *data, size_t size)
{
    Agentbus__EmbedResponse *e =
        (Agentbus__EmbedResponse *)ab_pb_unpack(&agentbus__embed_response__descriptor, size, data);
    if (!e) {
        r->status = AB_EMALFORMED;
        snprintf(r->error, sizeof r->error, "reply is not an EmbedResponse");
        return;
    }
    json_t *embs = json_array();
    for (size_t i = 0; i < e->n_embeddings; i++) {
        json_t *v = json_array();
        for (size_t k = 0; k < e->embeddings[i]->n_values; k++)
            json_array_append_new(v, json_real(e->embeddings[i]->values[k]));
        json_array_append_new(embs, v);
    }
    if (r->json) {
        json_t *o = json_object();
        json_object_set_new(o, "model", json_string(e->model));
        json_object_set_new(o, "embeddings", embs);
        json_object_set_new(o, "total_duration", json_integer((json_int_t)e->total_duration));
        json_object_set_new(o, "prompt_eval_count",
                            json_integer((json_int_t)e->prompt_eval_count));
        json_object_set_new(o, "worker", json_string(e->worker));
        s_print_json(o);
    } else {
        for (size_t i = 0; i < json_array_size(embs); i++) {
            char *s = tl_json_dumps(json_array_get(embs, i), JSON_COMPACT);
            printf("%s\n", s ? s : "[]");
            free(s);
        }
        json_decref(embs);
    }
    agentbus__embed_response__free_unpacked(e, NULL);
}

static void s_on_event(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    s_run_t *r = arg;
    if (ev->status != AB_OK) {
        r->status = ev->status;
        snprintf(r->error, sizeof r->error, "%s", ev->error_text);
    } else if (r->status == AB_OK) {
        if (r->kind == 1)
            s_on_generate(r, ev->data, ev->size);
        else if (r->kind == 2)
            s_on_chat(r, ev->data, ev->size);
        else if (r->kind == 3)
            s_on_embed(r, ev->data, ev->size);
        else if (ev->final && !r->json)
            printf("%s %s on %s\n", r->kind == 4 ? "loaded" : "unloaded", r->model, r->worker);
        else if (ev->final)
            s_print_json(json_pack("{s:b, s:s, s:s, s:s}", "ok", 1, "action",
                                   r->kind == 4 ? "load" : "unload", "model", r->model,
                                   "worker", r->worker));
    }
    /* A service that is not an inference one (--service echo) answers
     * bytes that decode as an empty, unfinished answer: that printed
     * nothing and exited 0. */
    if (ev->final && r->status == AB_OK && (r->kind == 1 || r->kind == 2) && !r->saw_done &&
        !r->any_text) {
        r->status = AB_EMALFORMED;
        snprintf(r->error, sizeof r->error, "the answer of '%s' is no %s answer (no \"done\", "
                 "no text): is it an inference service?", r->service,
                 r->kind == 1 ? "generate" : "chat");
    }
    if (ev->final)
        r->done = 1;
}

static int s_send(ab_client_t *c, const char *service, const char *worker,
                  const tl_infer_t *req, int timeout_ms, s_run_t *run,
                  volatile sig_atomic_t *stop)
{
    size_t len;
    uint8_t *buf = tl_infer_pack(req, &len);
    if (!buf)
        return AB_ENOMEM;
    const char *model = req->model;
    uint64_t id;
    int rc = ab_client_request_start(
        c, service, buf, len,
        &(ab_request_opts_t){.timeout_ms = timeout_ms, .model = model, .worker = worker,
                             .priority = run->priority},
        s_on_event, run, &id);
    free(buf);
    if (rc != AB_OK)
        return rc;
    while (!run->done) {
        if (*stop) { /* Ctrl-C: free the GPU slot, don't just walk away */
            ab_client_cancel(c, id);
            break;
        }
        rc = ab_client_poll(c, 200);
        if (rc < 0 && !run->done)
            return rc;
    }
    return run->status;
}

static Agentbus__InferenceOptions *s_options(const ctl_infer_flags_t *f,
                                             Agentbus__InferenceOptions *o)
{
    agentbus__inference_options__init(o);
    if (f->has_temp) {
        o->has_temperature_case = AGENTBUS__INFERENCE_OPTIONS__HAS_TEMPERATURE_TEMPERATURE;
        o->temperature = f->temperature;
    }
    if (f->has_seed) {
        o->has_seed_case = AGENTBUS__INFERENCE_OPTIONS__HAS_SEED_SEED;
        o->seed = f->seed;
    }
    if (f->has_predict) {
        o->has_num_predict_case = AGENTBUS__INFERENCE_OPTIONS__HAS_NUM_PREDICT_NUM_PREDICT;
        o->num_predict = f->num_predict;
    }
    return o;
}

typedef struct {
    ab_client_t *c;
    const ctl_infer_flags_t *f;
    int timeout_ms;
    volatile sig_atomic_t *stop;
    s_run_t *run;
} s_ctx_t;

static int s_cmd_generate(const s_ctx_t *x, const char *model, const char *prompt)
{
    Agentbus__GenerateRequest g = AGENTBUS__GENERATE_REQUEST__INIT;
    Agentbus__InferenceOptions opt;
    g.prompt = (char *)prompt;
    g.system = (char *)(x->f->system ? x->f->system : "");
    g.options = s_options(x->f, &opt);
    tl_infer_t req = {TL_INFER_GENERATE, model, !x->f->no_stream, {.generate = &g}};
    x->run->kind = 1;
    return s_send(x->c, x->f->service, NULL, &req, x->timeout_ms, x->run, x->stop);
}

static int s_cmd_chat(const s_ctx_t *x, const char *model, const char *message)
{
    Agentbus__ChatRequest ch = AGENTBUS__CHAT_REQUEST__INIT;
    Agentbus__InferenceOptions opt;
    Agentbus__ChatMessage m[2], *mp[2];
    size_t n = 0;
    if (x->f->system) {
        agentbus__chat_message__init(&m[n]);
        m[n].role = "system";
        m[n].content = (char *)x->f->system;
        mp[n] = &m[n];
        n++;
    }
    agentbus__chat_message__init(&m[n]);
    m[n].role = "user";
    m[n].content = (char *)message;
    mp[n] = &m[n];
    n++;
    ch.n_messages = n;
    ch.messages = mp;
    ch.options = s_options(x->f, &opt);
    tl_infer_t req = {TL_INFER_CHAT, model, !x->f->no_stream, {.chat = &ch}};
    x->run->kind = 2;
    return s_send(x->c, x->f->service, NULL, &req, x->timeout_ms, x->run, x->stop);
}

static int s_cmd_embed(const s_ctx_t *x, const char *model, const char *const *inputs,
                       size_t n)
{
    Agentbus__EmbedRequest e = AGENTBUS__EMBED_REQUEST__INIT;
    e.n_input = n;
    e.input = (char **)inputs;
    tl_infer_t req = {TL_INFER_EMBED, model, 0, {.embed = &e}};
    x->run->kind = 3;
    return s_send(x->c, x->f->service, NULL, &req, x->timeout_ms, x->run, x->stop);
}

/* models load|unload WORKER MODEL: pinned to WORKER (Header.worker). */
static int s_cmd_model(const s_ctx_t *x, int load, const char *worker, const char *model)
{
    Agentbus__ModelCommand mc = AGENTBUS__MODEL_COMMAND__INIT;
    tl_infer_t req = {load ? TL_INFER_LOAD : TL_INFER_UNLOAD, model, 0, {.command = &mc}};
    x->run->kind = load ? 4 : 5;
    x->run->worker = worker;
    x->run->model = model;
    return s_send(x->c, x->f->service, worker, &req, x->timeout_ms, x->run, x->stop);
}

int ctl_infer(ab_client_t *c, const char *cmd, int npos, const char *const *pos,
              const ctl_infer_flags_t *f, int json, int timeout_ms, volatile sig_atomic_t *stop,
              char *err, size_t errcap)
{
    err[0] = '\0';
    s_run_t run = {0};
    run.json = json;
    run.priority = f->priority;
    run.service = f->service;
    s_ctx_t x = {c, f, timeout_ms, stop, &run};
    int rc;
    if (strcmp(cmd, "generate") == 0 && npos == 2)
        rc = s_cmd_generate(&x, pos[0], pos[1]);
    else if (strcmp(cmd, "chat") == 0 && npos == 2)
        rc = s_cmd_chat(&x, pos[0], pos[1]);
    else if (strcmp(cmd, "embed") == 0 && npos >= 2)
        rc = s_cmd_embed(&x, pos[0], &pos[1], (size_t)npos - 1);
    else if (strcmp(cmd, "models") == 0 && npos == 3 &&
             (strcmp(pos[0], "load") == 0 || strcmp(pos[0], "unload") == 0))
        rc = s_cmd_model(&x, strcmp(pos[0], "load") == 0, pos[1], pos[2]);
    else
        return AB_EINVAL; /* cli.c checked the arguments: not reached */
    if (rc != AB_OK)
        snprintf(err, errcap, "%s", run.error[0] ? run.error : ab_client_last_error(c));
    return rc;
}

static void s_models_text(const Agentbus__WorkerList *wl, const char *service)
{
    int any = 0;
    for (size_t i = 0; i < wl->n_workers; i++) {
        const Agentbus__WorkerInfo *w = wl->workers[i];
        const Agentbus__InferenceState *st = w->inference;
        if (!st || (service && strcmp(w->service, service) != 0))
            continue;
        any = 1;
        printf("%s (%s) service %s  backend %s %s%s\n", w->name[0] ? w->name : w->id, w->id,
               w->service, st->backend_url[0] ? st->backend_url : "-", st->backend_version,
               st->backend_up ? "" : " (DOWN)");
        printf("  slots %u/%u  in flight %u  shrinks %llu  retries %llu  cancelled %llu\n",
               st->slots, st->slots_max, w->in_flight, (unsigned long long)st->slot_shrinks,
               (unsigned long long)st->backend_retries, (unsigned long long)st->cancelled);
        for (size_t k = 0; k < st->n_model_slots; k++)
            printf("  %s: slots %u/%u (pushed back)\n", st->model_slots[k]->name,
                   st->model_slots[k]->slots, st->slots_max);
        if (st->vram_total)
            printf("  VRAM %.1f GiB free of %.1f GiB\n", st->vram_free / 1073741824.0,
                   st->vram_total / 1073741824.0);
        for (size_t g = 0; g < st->n_gpus; g++)
            printf("  GPU %u %s: %u C, %u%% busy, %.1f/%.1f GiB\n", st->gpus[g]->index,
                   st->gpus[g]->name, st->gpus[g]->temperature_c, st->gpus[g]->utilization_pct,
                   st->gpus[g]->memory_used / 1073741824.0,
                   st->gpus[g]->memory_total / 1073741824.0);
        printf("  loaded:");
        if (!st->n_loaded)
            printf(" (none)");
        for (size_t k = 0; k < st->n_loaded; k++) {
            const Agentbus__LoadedModel *m = st->loaded[k];
            if (!m->size_vram && !m->expires_at[0]) /* a peer broker's (link:NAME): names only */
                printf(" %s", m->name);
            else
                printf(" %s (%.2f GiB VRAM, until %s)", m->name, m->size_vram / 1073741824.0,
                       m->expires_at);
        }
        printf("\n  available:");
        for (size_t k = 0; k < st->n_models; k++)
            printf(" %s", st->models[k]->name);
        printf("\n");
    }
    if (!any && service)
        printf("no inference workers of '%s'\n", service);
    else if (!any)
        printf("no inference workers\n");
}

static void s_models_json(const Agentbus__WorkerList *wl, const char *service)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < wl->n_workers; i++) {
        const Agentbus__WorkerInfo *w = wl->workers[i];
        const Agentbus__InferenceState *st = w->inference;
        if (!st || (service && strcmp(w->service, service) != 0))
            continue;
        json_t *loaded = json_array(), *models = json_array();
        for (size_t k = 0; k < st->n_loaded; k++)
            json_array_append_new(
                loaded, json_pack("{s:s, s:s, s:I, s:I, s:s}", "name", st->loaded[k]->name,
                                  "digest", st->loaded[k]->digest, "size",
                                  (json_int_t)st->loaded[k]->size, "size_vram",
                                  (json_int_t)st->loaded[k]->size_vram, "expires_at",
                                  st->loaded[k]->expires_at));
        for (size_t k = 0; k < st->n_models; k++)
            json_array_append_new(models,
                                  json_pack("{s:s, s:s, s:I}", "name", st->models[k]->name,
                                            "digest", st->models[k]->digest, "size",
                                            (json_int_t)st->models[k]->size));
        json_t *ms = json_object(); /* models limited below slots_max */
        for (size_t k = 0; k < st->n_model_slots; k++)
            json_object_set_new(ms, st->model_slots[k]->name,
                                json_integer(st->model_slots[k]->slots));
        json_array_append_new(
            arr, json_pack("{s:s, s:s, s:s, s:s, s:b, s:i, s:i, s:i, s:I, s:I, s:I, s:I, s:o, s:o, "
                           "s:o}",
                           "worker", w->name, "id", w->id, "service", w->service, "backend_url",
                           st->backend_url, "backend_up", st->backend_up, "slots", st->slots,
                           "slots_max", st->slots_max, "in_flight", w->in_flight, "vram_total",
                           (json_int_t)st->vram_total, "vram_free", (json_int_t)st->vram_free,
                           "slot_shrinks", (json_int_t)st->slot_shrinks, "backend_retries",
                           (json_int_t)st->backend_retries, "loaded", loaded, "models", models,
                           "model_slots", ms));
    }
    s_print_json(json_pack("{s:o}", "workers", arr));
}

int ctl_models(ab_client_t *c, const char *service, int json, int timeout_ms)
{
    void *buf = NULL;
    size_t len = 0;
    int rc = ab_client_control(c, "workers", timeout_ms, &buf, &len);
    if (rc != AB_OK)
        return rc;
    Agentbus__WorkerList *wl = agentbus__worker_list__unpack(NULL, len, buf);
    ab_free(buf);
    if (!wl)
        return AB_EMALFORMED;
    ctl_clean_pb(&wl->base, !json); /* names workers and their backends chose */
    if (json)
        s_models_json(wl, service);
    else
        s_models_text(wl, service);
    fflush(stdout);
    agentbus__worker_list__free_unpacked(wl, NULL);
    return AB_OK;
}
