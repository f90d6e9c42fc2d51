/*
 * gw_routes.c - the Ollama routes (/api/...), "/", /healthz and /metrics:
 * what each one sends over the bus and how the answer is rendered in
 * Ollama's shapes. The model list comes from the broker's directory of
 * inference workers (CONTROL "workers"), merged across workers.
 */
#include "gw_http.h"
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "tl_json.h"
#include "grow.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

json_t *gw_body_parse(const gw_conn_t *c, char *err, size_t cap)
{
    json_error_t je;
    json_t *j = c->body ? json_loadb(c->body, c->len, 0, &je) : NULL;
    if (!json_is_object(j)) {
        snprintf(err, cap, "%s", !c->body ? "missing request body"
                                 : j      ? "invalid request body: expected an object"
                                          : je.text);
        json_decref(j);
        return NULL;
    }
    return j;
}

json_t *gw_body_json(gw_conn_t *c, enum MHD_Result *res)
{
    char msg[256];
    json_t *j = gw_body_parse(c, msg, sizeof msg);
    if (!j)
        *res = gw_reply_error(c, 400, msg);
    return j;
}

/* --- models -------------------------------------------------------------------- */
/* Ollama's names: "llama3" is "llama3:latest". */
static int s_same_model(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la == lb)
        return strcmp(a, b) == 0;
    const char *s = la < lb ? a : b, *l = la < lb ? b : a;
    size_t ls = la < lb ? la : lb;
    return strchr(s, ':') == NULL && strncmp(s, l, ls) == 0 && strcmp(l + ls, ":latest") == 0;
}

static json_t *s_details(const Agentbus__ModelInfo *m)
{
    const char *fam = m && m->family[0] ? m->family : "";
    return json_pack("{s:s, s:s, s:s, s:[s], s:s, s:s}", "parent_model", "", "format", "gguf",
                     "family", fam, "families", fam, "parameter_size",
                     m ? m->parameter_size : "", "quantization_level",
                     m ? m->quantization_level : "");
}

static void s_now_iso(char *buf, size_t cap)
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Every worker's model named NAME (or the first of all when NAME is NULL
 * and I-th distinct model wanted): walks the list once per call. */
static const Agentbus__ModelInfo *s_find(const Agentbus__WorkerList *wl, const char *name)
{
    for (size_t i = 0; i < wl->n_workers; i++) {
        const Agentbus__InferenceState *st = wl->workers[i]->inference;
        for (size_t k = 0; st && k < st->n_models; k++)
            if (s_same_model(st->models[k]->name, name))
                return st->models[k];
    }
    return NULL;
}

static json_t *s_tags(const Agentbus__WorkerList *wl)
{
    json_t *arr = json_array(), *seen = json_object();
    char now[32];
    s_now_iso(now, sizeof now);
    for (size_t i = 0; i < wl->n_workers; i++) {
        const Agentbus__InferenceState *st = wl->workers[i]->inference;
        for (size_t k = 0; st && k < st->n_models; k++) {
            const Agentbus__ModelInfo *m = st->models[k];
            if (json_object_get(seen, m->name))
                continue; /* the same model on several workers is listed once */
            json_object_set_new(seen, m->name, json_true());
            json_array_append_new(
                arr, json_pack("{s:s, s:s, s:s, s:I, s:s, s:o}", "name", m->name, "model",
                               m->name, "modified_at", now, "size", (json_int_t)m->size,
                               "digest", m->digest, "details", s_details(m)));
        }
    }
    json_decref(seen);
    return json_pack("{s:o}", "models", arr);
}

static json_t *s_ps(const Agentbus__WorkerList *wl)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < wl->n_workers; i++) {
        const Agentbus__InferenceState *st = wl->workers[i]->inference;
        for (size_t k = 0; st && k < st->n_loaded; k++) {
            const Agentbus__LoadedModel *l = st->loaded[k];
            json_array_append_new(
                arr, json_pack("{s:s, s:s, s:I, s:s, s:o, s:s, s:I}", "name", l->name, "model",
                               l->name, "size", (json_int_t)l->size, "digest", l->digest,
                               "details", s_details(s_find(wl, l->name)), "expires_at",
                               l->expires_at, "size_vram", (json_int_t)l->size_vram));
        }
    }
    return json_pack("{s:o}", "models", arr);
}

static enum MHD_Result s_show(gw_conn_t *c, const Agentbus__WorkerList *wl)
{
    const Agentbus__ModelInfo *m = s_find(wl, c->model);
    if (!m) {
        char msg[400];
        snprintf(msg, sizeof msg, "model '%s' not found", c->model);
        return gw_reply_error(c, 404, msg);
    }
    char mf[512], now[32];
    snprintf(mf, sizeof mf, "# served through agentbus\nFROM %s\n", m->name);
    s_now_iso(now, sizeof now);
    json_t *info = json_pack("{s:s}", "general.architecture", m->family);
    return gw_reply_json(c, 200,
                         json_pack("{s:s, s:s, s:s, s:o, s:o, s:[s], s:s}", "modelfile", mf,
                                   "parameters", "", "template", "{{ .Prompt }}", "details",
                                   s_details(m), "model_info", info, "capabilities",
                                   "completion", "modified_at", now));
}

/* GET /v1/models/{model}: the model object of LIST (/v1/models' answer,
 * taken) whose id is C's model, or that with ":latest"; else a 404 in
 * OpenAI's shape, as for an inference on an unknown model. */
static enum MHD_Result s_oai_model(gw_conn_t *c, json_t *list)
{
    json_t *m, *found = NULL;
    size_t i;
    char latest[sizeof c->model + 8];
    snprintf(latest, sizeof latest, "%s:latest", c->model);
    json_array_foreach(json_object_get(list, "data"), i, m) {
        const char *id = json_string_value(json_object_get(m, "id"));
        if (id && (!strcmp(id, c->model) || !strcmp(id, latest))) {
            found = json_incref(m);
            break;
        }
    }
    json_decref(list);
    if (found)
        return gw_reply_json(c, 200, found);
    char msg[sizeof c->model + 64];
    snprintf(msg, sizeof msg, "model \"%s\" not found, try pulling it first", c->model);
    return gw_reply_error(c, 404, msg);
}

/* The answer of a CONTROL "workers" call. */
static enum MHD_Result s_models_answer(gw_conn_t *c)
{
    gw_call_t *k = c->call;
    pthread_mutex_lock(&k->lock);
    gw_event_t *e = gw_call_pop(k);
    pthread_mutex_unlock(&k->lock);
    enum MHD_Result res;
    Agentbus__WorkerList *wl =
        e && e->status == AB_OK
            ? gw_pb_unpack(&agentbus__worker_list__descriptor, e->size, e->data)
            : NULL;
    if (!wl && k->status == AB_EDENIED) { /* this key may not ask: 403, as for a request */
        res = gw_reply_error(c, 403, k->error[0] ? k->error : ab_strerror(AB_EDENIED));
    } else if (!wl) {
        char msg[600];
        snprintf(msg, sizeof msg, "broker did not answer: %s",
                 k->error[0] ? k->error : "no worker list");
        res = gw_reply_error(c, 503, msg);
    } else if (c->route == GW_R_TAGS) {
        res = gw_reply_json(c, 200, s_tags(wl));
    } else if (c->route == GW_R_PS) {
        res = gw_reply_json(c, 200, s_ps(wl));
    } else if (c->route == GW_R_SHOW) {
        res = s_show(c, wl);
    } else if (c->route == GW_R_OAI_MODEL) {
        res = s_oai_model(c, gw_openai_models(s_tags(wl)));
    } else {
        res = gw_reply_json(c, 200, gw_openai_models(s_tags(wl)));
    }
    if (wl)
        agentbus__worker_list__free_unpacked(wl, NULL);
    free(e);
    return res;
}

/* --- inference ------------------------------------------------------------------- */
int gw_routes_prepare(gw_conn_t *c, gw_req_t *req, char *err, size_t cap)
{
    if (c->openai)
        return gw_openai_prepare(c, req, err, cap);
    memset(req, 0, sizeof *req);
    json_t *body = gw_body_parse(c, err, cap);
    if (!body)
        return -1;
    gw_kind_t kind = c->route == GW_R_GENERATE ? GW_GENERATE
                     : c->route == GW_R_CHAT   ? GW_CHAT
                                               : GW_EMBED;
    c->legacy = c->route == GW_R_EMBEDDINGS;
    int rc = gw_req_from_json(kind, body, req, err, cap);
    json_decref(body);
    return rc;
}

/* An inference route (Ollama's or OpenAI's): the body becomes a bus
 * request. A large body is parsed on the offload thread (gw_http_offload)
 * and this runs again, with its outcome, when that is done. */
static enum MHD_Result s_infer_request(gw_conn_t *c)
{
    gw_req_t req;
    char err[512];
    int rc;
    if (c->prep) { /* parsed on the offload thread */
        rc = c->prep->rc;
        req = c->prep->req;
        snprintf(err, sizeof err, "%s", c->prep->err);
        free(c->prep);
        c->prep = NULL;
    } else if (gw_http_offload(c)) {
        return MHD_YES; /* suspended until parsed */
    } else {
        rc = gw_routes_prepare(c, &req, err, sizeof err);
    }
    if (rc != 0)
        return gw_reply_error(c, 400, err);
    if (c->openai)
        gw_openai_named(c, req.kind);
    return gw_call_infer(c, &req);
}

void gw_routes_render(gw_conn_t *c, const gw_event_t *e)
{
    if (c->openai) {
        gw_openai_render(c, e);
        return;
    }
    json_t *o;
    char *line;
    size_t n;
    if (e->status == AB_OK && !e->final && gw_ollama_line(c->kind, e->data, e->size, &line, &n)) {
        gw_out_append(c, line, n); /* a token: no jansson object built and dumped */
        free(line);
        return;
    }
    if (e->status != AB_OK) {
        char msg[600];
        gw_error_text(c, e->status, c->call->error, msg, sizeof msg);
        o = json_pack("{s:s}", "error", msg);
        c->eos = 1;
    } else {
        o = gw_ollama_reply(c->kind, e->data, e->size, c->legacy);
        if (!o)
            o = json_pack("{s:s}", "error", "worker sent a reply that does not decode");
        if (e->final || !o)
            c->eos = 1;
    }
    char *txt = gw_raw_dumps(o);
    json_decref(o);
    if (txt) {
        gw_out_append(c, txt, strlen(txt));
        gw_out_append(c, "\n", 1);
    }
    free(txt);
}

/* stream: false, or an error before the first chunk: one object. Text of
 * chunks that came before the final one (a worker may stream anyway) is
 * put in front of the final one's, and their tool calls and logprobs kept
 * with its. */
static enum MHD_Result s_single(gw_conn_t *c)
{
    gw_call_t *k = c->call;
    json_t *last = NULL;
    gw_raw_list_t calls = {0}, lps = {0}; /* of every chunk: their items, as text */
    char *text = NULL;
    size_t tlen = 0, tcap = 0;
    int status = AB_OK, undecoded = 0;
    pthread_mutex_lock(&k->lock);
    gw_event_t *e;
    while ((e = gw_call_pop(k))) {
        if (e->status != AB_OK)
            status = e->status;
        json_t *o = e->status == AB_OK ? gw_ollama_reply(c->kind, e->data, e->size, c->legacy)
                                       : NULL;
        undecoded = e->status == AB_OK && !o;
        const char *piece = json_string_value(json_object_get(o, "response"));
        if (!piece)
            piece = json_string_value(json_object_get(json_object_get(o, "message"), "content"));
        size_t plen = piece ? strlen(piece) : 0; /* by doubling: base/grow.h says why */
        if (plen && ab_grow(&text, &tcap, tlen + plen + 1) == 0) {
            memcpy(text + tlen, piece, plen + 1);
            tlen += plen;
        }
        gw_raw_list_add(&calls, json_object_get(json_object_get(o, "message"), "tool_calls"));
        gw_raw_list_add(&lps, json_object_get(o, "logprobs"));
        json_decref(last);
        last = o;
        free(e);
    }
    if (k->final && k->status != AB_OK)
        status = k->status;
    pthread_mutex_unlock(&k->lock);
    enum MHD_Result res;
    if (status == AB_OK && !last && undecoded) { /* as the OpenAI routes answer it */
        res = gw_reply_error(c, 502, "worker sent a reply that does not decode");
    } else if (status != AB_OK || !last) {
        char msg[600];
        gw_error_text(c, status ? status : AB_EINTERNAL, k->error, msg, sizeof msg);
        if (status != AB_OK)
            atomic_fetch_add(&c->g->m.bus_errors, 1);
        json_decref(last);
        res = gw_reply_error(c, gw_http_status(status ? status : AB_EINTERNAL), msg);
    } else {
        if (text && json_object_get(last, "response"))
            json_object_set_new(last, "response", json_string(text));
        else if (text && json_object_get(last, "message"))
            json_object_set_new(json_object_get(last, "message"), "content", json_string(text));
        json_t *all = gw_raw_list_value(&calls);
        if (all && json_object_get(last, "message"))
            json_object_set(json_object_get(last, "message"), "tool_calls", all);
        json_decref(all);
        if ((all = gw_raw_list_value(&lps)))
            json_object_set_new(last, "logprobs", all);
        res = gw_reply_json(c, 200, last);
    }
    free(text);
    gw_raw_list_free(&calls);
    gw_raw_list_free(&lps);
    return res;
}

/* Phase WAIT ended: the first event (streaming) or the final one. */
static enum MHD_Result s_answer(gw_conn_t *c)
{
    gw_call_t *k = c->call;
    if (k->op == GW_OP_WORKERS)
        return s_models_answer(c);
    pthread_mutex_lock(&k->lock);
    int error_first = k->head && k->head->status != AB_OK;
    pthread_mutex_unlock(&k->lock);
    if (!c->stream || error_first)
        return s_single(c);
    return gw_stream_start(c, "application/x-ndjson");
}

/* --- the gateway's own routes ------------------------------------------------------ */
static void s_metric(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void s_metric(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(*buf + *len, *cap - *len, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if ((size_t)n < *cap - *len) {
            *len += (size_t)n;
            return;
        }
        char *p = realloc(*buf, *cap * 2 + (size_t)n);
        if (!p)
            return;
        *buf = p;
        *cap = *cap * 2 + (size_t)n;
    }
}

/* The connections closed waiting for headers or a body (gw_conns.h). */
static void s_metric_conns(char **b, size_t *len, size_t *cap, gw_conns_t *t)
{
    s_metric(b, len, cap,
             "# HELP agentbus_gateway_header_timeouts_total Connections closed because their "
             "request headers were not complete within --header-timeout-ms: idle (nothing of a "
             "request came: an idle keep-alive), partial (headers sent too slowly); evicted: "
             "closed earlier, at the connection cap, to make room for a new connection.\n"
             "# TYPE agentbus_gateway_header_timeouts_total counter\n"
             "agentbus_gateway_header_timeouts_total{reason=\"idle\"} %llu\n"
             "agentbus_gateway_header_timeouts_total{reason=\"partial\"} %llu\n"
             "agentbus_gateway_header_timeouts_total{reason=\"evicted\"} %llu\n",
             (unsigned long long)atomic_load(&t->timeouts[GW_HT_IDLE]),
             (unsigned long long)atomic_load(&t->timeouts[GW_HT_PARTIAL]),
             (unsigned long long)atomic_load(&t->timeouts[GW_HT_EVICTED]));
    s_metric(b, len, cap,
             "# HELP agentbus_gateway_body_timeouts_total Connections closed because their "
             "request body was not complete within --body-timeout-ms of its headers (a body "
             "sent too slowly); its --max-in-flight slot is freed.\n"
             "# TYPE agentbus_gateway_body_timeouts_total counter\n"
             "agentbus_gateway_body_timeouts_total %llu\n",
             (unsigned long long)atomic_load(&t->body_timeouts));
    s_metric(b, len, cap,
             "# HELP agentbus_gateway_body_evictions_total Connections closed at the connection "
             "cap to make room for a new connection while their request body was still coming "
             "(a second or more after its headers, and no connection waited for headers).\n"
             "# TYPE agentbus_gateway_body_evictions_total counter\n"
             "agentbus_gateway_body_evictions_total %llu\n",
             (unsigned long long)atomic_load(&t->body_evictions));
    s_metric(b, len, cap,
             "# HELP agentbus_gateway_send_timeouts_total Connections closed because their "
             "client did not take its answer: bytes sent or queued for it were not acknowledged "
             "within --send-timeout-ms (a client reading slowly); its --max-in-flight slot and "
             "what was left of its answer are freed.\n"
             "# TYPE agentbus_gateway_send_timeouts_total counter\n"
             "agentbus_gateway_send_timeouts_total %llu\n",
             (unsigned long long)atomic_load(&t->send_timeouts));
    s_metric(b, len, cap,
             "# HELP agentbus_gateway_reader_evictions_total Connections closed at the "
             "connection cap to make room for a new connection while their client did not take "
             "its answer (bytes sent or queued for it not acknowledged a second later, and no "
             "connection waited for headers or a body).\n"
             "# TYPE agentbus_gateway_reader_evictions_total counter\n"
             "agentbus_gateway_reader_evictions_total %llu\n",
             (unsigned long long)atomic_load(&t->reader_evictions));
}

static void s_metric_streams(char **b, size_t *len, size_t *cap, gw_metrics_t *m)
{
    s_metric(b, len, cap,
             "# HELP agentbus_gateway_stream_overflows_total Streamed answers cut because more "
             "than --max-stream-buffer-bytes of them waited for a client that did not take "
             "them (its chunks dropped, the stream ended with an error).\n"
             "# TYPE agentbus_gateway_stream_overflows_total counter\n"
             "agentbus_gateway_stream_overflows_total %llu\n",
             (unsigned long long)atomic_load(&m->stream_overflows));
}

static enum MHD_Result s_metrics(gw_conn_t *c)
{
    gw_metrics_t *m = &c->g->m;
    size_t len = 0, cap = 4096;
    char *b = malloc(cap);
    if (!b)
        return MHD_NO;
    b[0] = '\0';
    s_metric(&b, &len, &cap, "# HELP agentbus_gateway_requests_total HTTP requests by route.\n"
                             "# TYPE agentbus_gateway_requests_total counter\n");
    for (int r = 0; r < GW_R_COUNT; r++)
        s_metric(&b, &len, &cap, "agentbus_gateway_requests_total{route=\"%s\"} %llu\n",
                 gw_route_path((gw_route_t)r), (unsigned long long)atomic_load(&m->requests[r]));
    s_metric(&b, &len, &cap, "# HELP agentbus_gateway_responses_total Responses by status class.\n"
                             "# TYPE agentbus_gateway_responses_total counter\n");
    for (int s = 1; s <= 5; s++)
        s_metric(&b, &len, &cap, "agentbus_gateway_responses_total{class=\"%dxx\"} %llu\n", s,
                 (unsigned long long)atomic_load(&m->status[s]));
    s_metric(&b, &len, &cap,
             "# HELP agentbus_gateway_in_flight Bus requests in flight.\n"
             "# TYPE agentbus_gateway_in_flight gauge\nagentbus_gateway_in_flight %llu\n"
             "# HELP agentbus_gateway_cancelled_total Clients that left mid-request (CANCEL sent, "
             "no answer counted).\n"
             "# TYPE agentbus_gateway_cancelled_total counter\n"
             "agentbus_gateway_cancelled_total %llu\n"
             "# HELP agentbus_gateway_stream_chunks_total Streamed chunks written.\n"
             "# TYPE agentbus_gateway_stream_chunks_total counter\n"
             "agentbus_gateway_stream_chunks_total %llu\n"
             "# HELP agentbus_gateway_bus_errors_total Requests the bus ended with an error.\n"
             "# TYPE agentbus_gateway_bus_errors_total counter\n"
             "agentbus_gateway_bus_errors_total %llu\n"
             "# HELP agentbus_gateway_client_hangups_total Clients that hung up while their call "
             "waited (request cancelled).\n# TYPE agentbus_gateway_client_hangups_total counter\n"
             "agentbus_gateway_client_hangups_total %llu\n"
             "# HELP agentbus_gateway_bus_connected 1 while the broker connection is up.\n"
             "# TYPE agentbus_gateway_bus_connected gauge\nagentbus_gateway_bus_connected %d\n"
             "# HELP agentbus_gateway_broker_responsive 1 while the broker is connected and "
             "answered within 3 s (/healthz).\n# TYPE agentbus_gateway_broker_responsive gauge\n"
             "agentbus_gateway_broker_responsive %d\n",
             (unsigned long long)atomic_load(&m->in_flight),
             gw_bus_cancelled(c->g->bus),
             (unsigned long long)atomic_load(&m->chunks),
             (unsigned long long)atomic_load(&m->bus_errors), gw_bus_hangups(c->g->bus),
             gw_bus_connected(c->g->bus), gw_bus_responsive(c->g->bus));
    s_metric(&b, &len, &cap,
             "# HELP agentbus_gateway_admitted Model and inference requests held (read, waiting "
             "for the bus or streaming); at --max-in-flight more are refused.\n"
             "# TYPE agentbus_gateway_admitted gauge\nagentbus_gateway_admitted %llu\n"
             "# HELP agentbus_gateway_shed_total Requests refused at intake, before their body "
             "was read: busy (--max-in-flight, 503), queue (--max-queue-ms, 503), deadline "
             "(504), gone (the client had closed).\n"
             "# TYPE agentbus_gateway_shed_total counter\n",
             (unsigned long long)atomic_load(&m->admitted));
    for (int r = GW_SHED_BUSY; r <= GW_SHED_GONE; r++)
        s_metric(&b, &len, &cap, "agentbus_gateway_shed_total{reason=\"%s\"} %llu\n",
                 gw_shed_name((gw_shed_t)r), (unsigned long long)atomic_load(&m->shed[r]));
    s_metric_conns(&b, &len, &cap, &c->g->conns);
    s_metric_streams(&b, &len, &cap, m);
    s_metric(&b, &len, &cap,
             "# HELP agentbus_gateway_connections_refused_total Connections closed at accept, "
             "before a request was read: per_ip (--max-connections-per-ip).\n"
             "# TYPE agentbus_gateway_connections_refused_total counter\n"
             "agentbus_gateway_connections_refused_total{reason=\"per_ip\"} %llu\n",
             (unsigned long long)atomic_load(&m->refused_per_ip));
    gw_keys_t *k = &c->g->keys;
    if (k->on) {
        pthread_rwlock_rdlock(&k->lock); /* a reload swaps the keys */
        s_metric(&b, &len, &cap,
                 "# HELP agentbus_gateway_unauthorized_total Requests refused without a valid "
                 "API key (401).\n# TYPE agentbus_gateway_unauthorized_total counter\n"
                 "agentbus_gateway_unauthorized_total %llu\n"
                 "# HELP agentbus_gateway_key_requests_total Requests accepted, by API key.\n"
                 "# TYPE agentbus_gateway_key_requests_total counter\n",
                 (unsigned long long)atomic_load(&k->unauthorized));
        for (size_t i = 0; i < k->n; i++)
            s_metric(&b, &len, &cap, "agentbus_gateway_key_requests_total{key=\"%s\"} %llu\n",
                     k->keys[i].name, (unsigned long long)atomic_load(&k->keys[i].requests));
        pthread_rwlock_unlock(&k->lock);
    }
    static const char *edge[GW_LAT_BUCKETS] = {"0.001", "0.002", "0.005", "0.01", "0.05",
                                               "0.1",   "0.5",   "1",     "5",    "30"};
    s_metric(&b, &len, &cap,
             "# HELP agentbus_gateway_request_duration_seconds HTTP request time, first byte "
             "in to last byte out.\n# TYPE agentbus_gateway_request_duration_seconds histogram\n");
    unsigned long long cum = 0;
    for (int i = 0; i <= GW_LAT_BUCKETS; i++) {
        cum += atomic_load(&m->lat_bucket[i]);
        s_metric(&b, &len, &cap,
                 "agentbus_gateway_request_duration_seconds_bucket{le=\"%s\"} %llu\n",
                 i < GW_LAT_BUCKETS ? edge[i] : "+Inf", cum);
    }
    s_metric(&b, &len, &cap,
             "agentbus_gateway_request_duration_seconds_sum %.6f\n"
             "agentbus_gateway_request_duration_seconds_count %llu\n",
             (double)atomic_load(&m->lat_sum_us) / 1e6,
             (unsigned long long)atomic_load(&m->lat_count));
    enum MHD_Result res = gw_reply_text(c, 200, "text/plain; version=0.0.4; charset=utf-8", b);
    free(b);
    return res;
}

/* The methods route R takes, as a 405's Allow header lists them. */
static const char *s_allowed(gw_route_t r)
{
    switch (r) {
    case GW_R_ROOT: case GW_R_TAGS: case GW_R_PS: case GW_R_VERSION: case GW_R_OAI_MODELS:
    case GW_R_OAI_MODEL: case GW_R_METRICS: case GW_R_HEALTHZ:
        return "GET, HEAD";
    default:
        return "POST";
    }
}

static int s_method_ok(gw_route_t r, const char *method)
{
    if (strcmp(s_allowed(r), "POST") == 0)
        return strcmp(method, "POST") == 0;
    return strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
}

static enum MHD_Result s_workers(gw_conn_t *c)
{
    if (c->route == GW_R_SHOW) {
        enum MHD_Result res;
        json_t *body = gw_body_json(c, &res);
        if (!body)
            return res;
        /* model, else name (Ollama's: an empty model too); a wrong type is
         * named, as on the other routes ("model is required" before) */
        json_t *mv = json_object_get(body, "model"), *nv = json_object_get(body, "name");
        const char *bad = mv && !json_is_null(mv) && !json_is_string(mv) ? "model"
                          : nv && !json_is_null(nv) && !json_is_string(nv) ? "name" : NULL;
        const char *m = json_string_value(mv);
        if (!m || !m[0])
            m = json_string_value(nv);
        snprintf(c->model, sizeof c->model, "%s", m ? m : "");
        json_decref(body);
        if (bad)
            return gw_reply_error(c, 400, bad[0] == 'm' ? "invalid model: expected a string"
                                                        : "invalid name: expected a string");
        if (!c->model[0])
            return gw_reply_error(c, 400, "model is required");
    }
    gw_call_t *k = gw_call_new(GW_OP_WORKERS);
    if (!k)
        return MHD_NO;
    c->wait_final = 1;
    return gw_call_bus(c, k);
}

/* 200 only while the broker is connected and answers: a stopped broker
 * keeps its TCP connection up (and requests end with 504) for seconds
 * before libzmq's heartbeat gives up on it. */
static enum MHD_Result s_healthz(gw_conn_t *c)
{
    int up = gw_bus_connected(c->g->bus);
    long long heard = gw_bus_heard_ms(c->g->bus);
    int answers = gw_bus_responsive(c->g->bus);
    const char *status = answers ? "ok" : !up ? "broker unreachable" : "broker unresponsive";
    return gw_reply_json(c, answers ? 200 : 503,
                         json_pack("{s:s, s:b, s:b, s:I}", "status", status, "broker_connected",
                                   up, "broker_responsive", answers, "broker_heard_ms",
                                   (json_int_t)heard));
}

enum MHD_Result gw_routes_handle(gw_conn_t *c, const char *method)
{
    if (c->phase == GW_P_WAIT)
        return c->openai && c->call->op == GW_OP_REQUEST ? gw_openai_answer(c) : s_answer(c);
    if (c->route == GW_R_NOTFOUND)
        return gw_reply_text(c, 404, "text/plain; charset=utf-8", "404 page not found");
    if (!s_method_ok(c->route, method))
        return gw_reply_not_allowed(c, s_allowed(c->route));
    switch (c->route) {
    case GW_R_ROOT:
        return gw_reply_text(c, 200, "text/plain; charset=utf-8", "Ollama is running");
    case GW_R_VERSION:
        return gw_reply_json(c, 200, json_pack("{s:s}", "version", c->g->cfg.version));
    case GW_R_HEALTHZ:
        return s_healthz(c);
    case GW_R_METRICS:
        return s_metrics(c);
    case GW_R_TAGS: case GW_R_PS: case GW_R_SHOW: case GW_R_OAI_MODELS: case GW_R_OAI_MODEL:
        return s_workers(c);
    default: /* GW_R_GENERATE, CHAT, EMBED, EMBEDDINGS, OAI_CHAT, OAI_COMPLETIONS, OAI_EMBEDDINGS */
        return s_infer_request(c);
    }
}
