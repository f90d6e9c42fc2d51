/*
 * stats.c - what the simulator served, for tests and for benches that
 * compute GPU-slot utilisation (GET /sim/stats).
 */
#include "sim.h"

#include <string.h>

void sim_stats_status(sim_t *s, int status)
{
    switch (status) {
    case 200: s->st.st200++; break;
    case 400: s->st.st400++; break;
    case 404: s->st.st404++; break;
    case 405: s->st.st405++; break;
    case 413: s->st.st413++; break;
    case 500: s->st.st500++; break;
    case 503: s->st.st503++; break;
    default: s->st.st_other++; break;
    }
}

static const char *s_state(sim_state_t st)
{
    return st == SIM_LOADED ? "loaded" : st == SIM_LOADING ? "loading" : "unloaded";
}

#define U(x) json_integer((json_int_t)(x))

static json_t *s_model_json(const sim_model_t *m, int64_t now)
{
    json_t *slots = json_array();
    for (int i = 0; i < m->num_parallel; i++) {
        const sim_slot_t *sl = &m->slots[i];
        int64_t busy = sl->busy_ns + (sl->busy ? now - sl->busy_since : 0);
        json_array_append_new(slots, json_pack("{s:i, s:b, s:o, s:o}", "slot", i, "busy", sl->busy,
                                               "busy_ns", U(busy), "requests", U(sl->requests)));
    }
    int64_t loaded = m->loaded_ns + (m->state == SIM_LOADED ? now - m->loaded_since : 0);
    json_t *o = json_pack("{s:s, s:s, s:i}", "name", m->name, "state", s_state(m->state), "gpu",
                          m->gpu);
    json_object_set_new(o, "requests", U(m->requests));
    json_object_set_new(o, "generate", U(m->n_generate));
    json_object_set_new(o, "chat", U(m->n_chat));
    json_object_set_new(o, "embed", U(m->n_embed));
    json_object_set_new(o, "prompt_tokens", U(m->prompt_tokens));
    json_object_set_new(o, "eval_tokens", U(m->eval_tokens));
    json_object_set_new(o, "loads", U(m->loads));
    json_object_set_new(o, "evictions", U(m->evictions));
    json_object_set_new(o, "active", U(m->active));
    json_object_set_new(o, "queued", U(m->queued));
    json_object_set_new(o, "loaded_ns", U(loaded));
    json_object_set_new(o, "load_ns", U(m->load_ns));
    json_object_set_new(o, "slots", slots);
    return o;
}

json_t *sim_stats_json(sim_t *s)
{
    pthread_mutex_lock(&s->lock);
    int64_t now = sim_now();
    const sim_stats_t *st = &s->st;
    json_t *o = json_object();
    json_object_set_new(o, "uptime_ns", U(now - st->since));
    json_object_set_new(o, "time_scale", json_real(s->time_scale));
    json_object_set_new(o, "requests", U(st->requests));
    json_object_set_new(o, "completed", U(st->completed));
    json_object_set_new(o, "active", U(s->n_active));
    json_object_set_new(o, "queued", U(s->n_queued));
    json_object_set_new(o, "max_queued", U(st->max_queued));
    json_object_set_new(o, "aborted", U(st->aborted));
    json_object_set_new(o, "aborted_queued", U(st->aborted_queued));
    json_t *status = json_object();
    json_object_set_new(status, "200", U(st->st200));
    json_object_set_new(status, "400", U(st->st400));
    json_object_set_new(status, "404", U(st->st404));
    json_object_set_new(status, "405", U(st->st405));
    json_object_set_new(status, "413", U(st->st413));
    json_object_set_new(status, "500", U(st->st500));
    json_object_set_new(status, "503", U(st->st503));
    json_object_set_new(status, "other", U(st->st_other));
    json_object_set_new(o, "status", status);
    json_t *f = json_object();
    json_object_set_new(f, "error", U(st->f_error));
    json_object_set_new(f, "midstream", U(st->f_midstream));
    json_object_set_new(f, "hang", U(st->f_hang));
    json_object_set_new(f, "slow_start", U(st->f_slow_start));
    json_object_set_new(f, "drop", U(st->f_drop));
    json_object_set_new(o, "faults", f);
    json_object_set_new(o, "loads", U(st->loads));
    json_object_set_new(o, "unloads", U(st->unloads));
    json_object_set_new(o, "evictions", U(st->evictions));
    json_object_set_new(o, "expirations", U(st->expirations));
    json_t *ep = json_object();
    json_object_set_new(ep, "generate", U(st->ep_generate));
    json_object_set_new(ep, "chat", U(st->ep_chat));
    json_object_set_new(ep, "embed", U(st->ep_embed));
    json_object_set_new(ep, "tags", U(st->ep_tags));
    json_object_set_new(ep, "ps", U(st->ep_ps));
    json_object_set_new(ep, "version", U(st->ep_version));
    json_object_set_new(o, "endpoints", ep);
    json_t *seen = json_object();
    for (int i = 0; i < st->n_opts; i++)
        json_object_set_new(seen, st->opts[i].name, U(st->opts[i].n));
    json_object_set_new(o, "options_seen", seen);
    json_t *models = json_array();
    for (int i = 0; i < s->n_models; i++)
        json_array_append_new(models, s_model_json(&s->models[i], now));
    json_object_set_new(o, "models", models);
    json_t *gpus = json_array();
    for (int g = 0; g < s->n_gpus; g++)
        json_array_append_new(gpus, json_pack("{s:i, s:o, s:o}", "index", g, "vram",
                                              U(s->gpus[g].vram), "vram_used", U(s->gpus[g].used)));
    json_object_set_new(o, "gpus", gpus);
    pthread_mutex_unlock(&s->lock);
    return o;
}

void sim_stats_reset(sim_t *s)
{
    pthread_mutex_lock(&s->lock);
    int64_t now = sim_now();
    memset(&s->st, 0, sizeof s->st);
    s->st.since = now;
    for (int i = 0; i < s->n_models; i++) {
        sim_model_t *m = &s->models[i];
        m->requests = m->n_generate = m->n_chat = m->n_embed = 0;
        m->prompt_tokens = m->eval_tokens = m->loads = m->evictions = 0;
        m->loaded_ns = m->load_ns = 0;
        if (m->state == SIM_LOADED)
            m->loaded_since = now;
        for (int k = 0; k < SIM_MAX_PARALLEL; k++) {
            m->slots[k].busy_ns = 0;
            m->slots[k].requests = 0;
            if (m->slots[k].busy)
                m->slots[k].busy_since = now;
        }
    }
    pthread_mutex_unlock(&s->lock);
}

void sim_stats_options(sim_t *s, const json_t *opts)
{
    const char *k;
    json_t *v;
    pthread_mutex_lock(&s->lock);
    sim_stats_t *st = &s->st;
    json_object_foreach((json_t *)opts, k, v) {
        if (strlen(k) >= sizeof st->opts[0].name)
            k = "(other)";
        int i = 0;
        while (i < st->n_opts && strcmp(st->opts[i].name, k) != 0)
            i++;
        if (i == st->n_opts && i >= SIM_OPTS_SEEN) { /* full: the last one is "(other)" */
            k = "(other)";
            for (i = 0; i < st->n_opts && strcmp(st->opts[i].name, k) != 0;)
                i++;
        }
        if (i == st->n_opts) {
            snprintf(st->opts[i].name, sizeof st->opts[i].name, "%s", k);
            st->n_opts++;
        }
        st->opts[i].n++;
    }
    pthread_mutex_unlock(&s->lock);
}
