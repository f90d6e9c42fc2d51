/*
 * routes.c - the endpoints that need no slot: /api/tags, /api/ps,
 * /api/version, "/", and the simulator's own /sim/faults and /sim/stats.
 */
#include "http.h"

#include <string.h>

static json_t *s_details(const sim_model_t *m)
{
    return json_pack("{s:s, s:s, s:s, s:[s], s:s, s:s}", "parent_model", "", "format", "gguf",
                     "family", m->family, "families", m->family, "parameter_size",
                     m->parameter_size, "quantization_level", m->quantization_level);
}

static enum MHD_Result s_tags(sim_req_t *r)
{
    sim_t *s = r->s;
    json_t *arr = json_array();
    pthread_mutex_lock(&s->lock);
    s->st.ep_tags++;
    for (int i = 0; i < s->n_models; i++) {
        const sim_model_t *m = &s->models[i];
        json_t *o = json_pack("{s:s, s:s, s:s}", "name", m->name, "model", m->name, "modified_at",
                              s->started_at);
        json_object_set_new(o, "size", json_integer((json_int_t)m->size));
        json_object_set_new(o, "digest", json_string(m->digest));
        json_object_set_new(o, "details", s_details(m));
        json_array_append_new(arr, o);
    }
    pthread_mutex_unlock(&s->lock);
    return sim_http_json(r, 200, json_pack("{s:o}", "models", arr));
}

static enum MHD_Result s_ps(sim_req_t *r)
{
    sim_t *s = r->s;
    const sim_model_t *list[SIM_MAX_MODELS];
    int n = 0;
    pthread_mutex_lock(&s->lock);
    s->st.ep_ps++;
    int64_t now = sim_now();
    for (int i = 0; i < s->n_models; i++)
        if (s->models[i].state == SIM_LOADED)
            list[n++] = &s->models[i];
    for (int i = 1; i < n; i++)   /* most recently used first */
        for (int j = i; j > 0 && list[j]->last_used > list[j - 1]->last_used; j--) {
            const sim_model_t *t = list[j];
            list[j] = list[j - 1];
            list[j - 1] = t;
        }
    json_t *arr = json_array();
    for (int i = 0; i < n; i++) {
        const sim_model_t *m = list[i];
        int64_t exp = m->expires;
        if (m->active > 0 || m->queued > 0)   /* busy: would expire keep_alive after now */
            exp = sim_sched_expiry(s, m, now);
        char when[64];
        sim_rfc3339(when, sizeof when, exp);
        json_t *o = json_pack("{s:s, s:s}", "name", m->name, "model", m->name);
        json_object_set_new(o, "size", json_integer((json_int_t)m->size));
        json_object_set_new(o, "digest", json_string(m->digest));
        json_object_set_new(o, "details", s_details(m));
        json_object_set_new(o, "expires_at", json_string(when));
        json_object_set_new(o, "size_vram", json_integer((json_int_t)m->size));
        json_array_append_new(arr, o);
    }
    pthread_mutex_unlock(&s->lock);
    return sim_http_json(r, 200, json_pack("{s:o}", "models", arr));
}

static enum MHD_Result s_faults(sim_req_t *r)
{
    sim_t *s = r->s;
    if (r->post) {
        json_error_t jerr;
        json_t *in = json_loadb(r->body ? r->body : "", r->len, 0, &jerr);
        if (!in)
            return sim_http_error(r, 400, "invalid JSON body: %s", jerr.text);
        char err[256];
        pthread_mutex_lock(&s->lock);
        int rc = sim_faults_apply(&s->faults, in, err, sizeof err);
        pthread_mutex_unlock(&s->lock);
        json_decref(in);
        if (rc != 0)
            return sim_http_error(r, 400, "%s", err);
    }
    pthread_mutex_lock(&s->lock);
    json_t *out = sim_faults_json(&s->faults);
    pthread_mutex_unlock(&s->lock);
    return sim_http_json(r, 200, out);
}

enum MHD_Result sim_routes_handle(sim_req_t *r)
{
    sim_t *s = r->s;
    switch (r->route) {
    case R_ROOT:
        return sim_http_text(r, 200, "Ollama is running");
    case R_TAGS:
        return s_tags(r);
    case R_PS:
        return s_ps(r);
    case R_VERSION:
        pthread_mutex_lock(&s->lock);
        s->st.ep_version++;
        pthread_mutex_unlock(&s->lock);
        return sim_http_json(r, 200, json_pack("{s:s}", "version", s->version));
    case R_SIM_FAULTS:
        return s_faults(r);
    case R_SIM_STATS:
        return sim_http_json(r, 200, sim_stats_json(s));
    case R_SIM_STATS_RESET:
        sim_stats_reset(s);
        return sim_http_json(r, 200, sim_stats_json(s));
    default:
        return sim_http_text(r, 404, "404 page not found");
    }
}
