/*
 * placement.c - where an inference request goes, and what happens when a
 * client gives up on one or a backend pushes one back (issue 7).
 *
 * The policy (docs/placement.md), for a request naming model M:
 *   1. never a worker that cannot serve M: one that reports its models
 *      (Register.inference) and does not list M, or one that is not the
 *      worker the request is pinned to;
 *   2. among the rest with a free slot: first those with M loaded, then
 *      those with enough free VRAM to load M, then the others (loading M
 *      there evicts something) - but only while no worker has M loaded: a
 *      request for a loaded model waits for a slot rather than evict;
 *   3. ties: the coolest GPU, then the least loaded worker (in flight /
 *      slots), then the one dispatched to longest ago.
 * Workers that report no inference state are generic: they may take any
 * request of their service and rank with "M loaded".
 */
#define AB_LOG_SUBSYS "placement" /* log.h: the subsystem in log lines */
#include "placement.h"
#include "service.h"
#include "router.h"
#include "cache.h"
#include "health.h"
#include "link.h"
#include "agentbus.pb-c.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

int ab_route_init(ab_req_t *r, const ab_header_t *h)
{
    r->route = NULL;
    if (!h->model.len && !h->worker.len)
        return 0;
    struct ab_route *rt = calloc(1, sizeof *rt);
    if (!rt)
        return -1;
    ab_view_copy(h->model, rt->model, sizeof rt->model);
    ab_view_copy(h->worker, rt->worker, sizeof rt->worker);
    if (rt->model[0]) /* hashed once here, not at each dispatch pass and answer */
        rt->model_key = ab_hash_bytes(rt->model, strlen(rt->model)) | 1;
    r->route = rt;
    return 0;
}

void ab_route_free(ab_req_t *r)
{
    free(r->route);
    r->route = NULL;
}

void ab_placement_update(ab_worker_rec_t *w, Agentbus__InferenceState *st)
{
    ab_placement_forget(w);
    w->inference = st;
}

void ab_placement_forget(ab_worker_rec_t *w)
{
    if (w->inference)
        agentbus__inference_state__free_unpacked(w->inference, NULL);
    w->inference = NULL;
}

/* --- what a REGISTER may make the broker keep ---------------------------------
 * A worker's labels and inference state live as long as it does (and come
 * again with each re-registration), so each has a bound in bytes and in
 * count: a count matters apart from bytes, since an empty entry costs two
 * bytes on the wire and a hundred unpacked. */
static int s_str_bad(const char *s, size_t max)
{
    return s && strlen(s) > max;
}

static int s_inference_bad(const ab_broker_config_t *cfg, const Agentbus__InferenceState *st)
{
    size_t max = cfg->register_max_string_bytes;
    if (st->n_models > (size_t)cfg->register_max_models ||
        st->n_loaded > (size_t)cfg->register_max_models ||
        st->n_gpus > (size_t)cfg->register_max_models)
        return 1;
    if (st->n_model_slots > (size_t)cfg->register_max_models)
        return 1;
    if (s_str_bad(st->backend_url, max) || s_str_bad(st->backend_version, max))
        return 1;
    for (size_t i = 0; i < st->n_model_slots; i++)
        if (s_str_bad(st->model_slots[i]->name, max))
            return 1;
    for (size_t i = 0; i < st->n_models; i++) {
        const Agentbus__ModelInfo *x = st->models[i];
        if (s_str_bad(x->name, max) || s_str_bad(x->digest, max) || s_str_bad(x->family, max) ||
            s_str_bad(x->parameter_size, max) || s_str_bad(x->quantization_level, max))
            return 1;
    }
    for (size_t i = 0; i < st->n_loaded; i++) {
        const Agentbus__LoadedModel *x = st->loaded[i];
        if (s_str_bad(x->name, max) || s_str_bad(x->digest, max) || s_str_bad(x->expires_at, max))
            return 1;
    }
    for (size_t i = 0; i < st->n_gpus; i++)
        if (s_str_bad(st->gpus[i]->name, max))
            return 1;
    return 0;
}

int ab_register_check(const ab_broker_config_t *cfg, size_t size, const Agentbus__Register *m,
                      char *why, size_t cap)
{
    if (size > cfg->register_max_bytes) {
        snprintf(why, cap, "REGISTER of %zu bytes: over register-max-bytes (%zu)", size,
                 cfg->register_max_bytes);
        return -1;
    }
    if (!m)
        return 0;
    size_t max = cfg->register_max_string_bytes;
    if (m->n_labels > (size_t)cfg->register_max_labels) {
        snprintf(why, cap, "REGISTER with %zu labels: over register-max-labels (%ld)",
                 m->n_labels, cfg->register_max_labels);
        return -1;
    }
    for (size_t i = 0; i < m->n_labels; i++)
        if (s_str_bad(m->labels[i]->key, max) || s_str_bad(m->labels[i]->value, max)) {
            snprintf(why, cap, "REGISTER label %zu: key or value over "
                     "register-max-string-bytes (%zu)", i, max);
            return -1;
        }
    if (s_str_bad(m->name, max)) {
        snprintf(why, cap, "REGISTER name over register-max-string-bytes (%zu)", max);
        return -1;
    }
    if (m->inference && s_inference_bad(cfg, m->inference)) {
        snprintf(why, cap, "REGISTER inference state over register-max-models (%ld) or "
                 "register-max-string-bytes (%zu)", cfg->register_max_models, max);
        return -1;
    }
    return 0;
}

/* Ollama names "llama3" and "llama3:latest" are the same model. */
int ab_model_same(const char *a, const char *b)
{
    size_t la = strcspn(a, ":"), lb = strcspn(b, ":");
    if (la != lb || strncmp(a, b, la) != 0)
        return 0;
    const char *ta = a[la] ? a + la + 1 : "latest", *tb = b[lb] ? b + lb + 1 : "latest";
    return strcmp(ta, tb) == 0;
}

static const Agentbus__ModelInfo *s_model_info(const ab_worker_rec_t *w, const char *model)
{
    for (size_t i = 0; w->inference && i < w->inference->n_models; i++)
        if (ab_model_same(w->inference->models[i]->name, model))
            return w->inference->models[i];
    return NULL;
}

static int s_loaded(const ab_worker_rec_t *w, const char *model)
{
    if (!w->inference)
        return 1; /* generic: as good as loaded */
    for (size_t i = 0; i < w->inference->n_loaded; i++)
        if (ab_model_same(w->inference->loaded[i]->name, model))
            return 1;
    return 0;
}

static int s_pinned_ok(const ab_worker_rec_t *w, const struct ab_route *rt)
{
    return !rt->worker[0] || strcmp(w->peer->name, rt->worker) == 0 ||
           strcmp(w->peer->key, rt->worker) == 0;
}

/* 1 if W may ever serve R (rule 1). */
static int s_capable(const ab_worker_rec_t *w, const struct ab_route *rt)
{
    if (!s_pinned_ok(w, rt))
        return 0;
    /* A broker link's remote worker (link.h) stands for a peer's workers:
     * its inference state lists the models they serve and have loaded. */
    if (!rt->model[0] || !w->inference)
        return 1;
    return s_model_info(w, rt->model) != NULL;
}

/* 0: model loaded, 1: fits in free VRAM, 2: would evict. */
static int s_tier(const ab_worker_rec_t *w, const struct ab_route *rt)
{
    if (!rt->model[0] || s_loaded(w, rt->model))
        return 0;
    const Agentbus__ModelInfo *mi = s_model_info(w, rt->model);
    uint64_t need = mi ? mi->size : 0;
    return w->inference->vram_total && need <= w->inference->vram_free ? 1 : 2;
}

static uint32_t s_temperature(const ab_worker_rec_t *w)
{
    uint32_t t = 0;
    for (size_t i = 0; w->inference && i < w->inference->n_gpus; i++)
        if (w->inference->gpus[i]->temperature_c > t)
            t = w->inference->gpus[i]->temperature_c;
    return t;
}

/* 1 when W holds as many of model M's requests as its backend takes now.
 * Ollama's slots and queue are per model, so a worker may cap each model
 * (model_slots_max, --model-slots) and lists a model in model_slots when
 * that model was pushed back (503, out of memory): one model's backlog
 * then cannot take the credit the other models' slots need (issue 20).
 * Counted over W's in-flight list (at most its capacity), and only for a
 * worker that limits models at all. */
static int s_model_full(const ab_worker_rec_t *w, const struct ab_route *rt)
{
    const Agentbus__InferenceState *st = w->inference;
    if (!rt->model[0] || !st || (!st->n_model_slots && !st->model_slots_max))
        return 0;
    uint32_t limit = st->model_slots_max < w->capacity ? st->model_slots_max : 0;
    for (size_t i = 0; i < st->n_model_slots; i++)
        if (ab_model_same(st->model_slots[i]->name, rt->model)) {
            limit = st->model_slots[i]->slots ? st->model_slots[i]->slots : 1;
            break;
        }
    if (!limit)
        return 0;
    uint32_t n = 0;
    for (const ab_list_t *q = ab_list_first(&w->reqs); q; q = ab_list_next(&w->reqs, q)) {
        const ab_req_t *x = ab_list_data(q, ab_req_t, qlink);
        if (x->route && ab_model_same(x->route->model, rt->model) && ++n >= limit)
            return 1;
    }
    return 0;
}

/* 1 if A should be preferred to B (same tier). */
static int s_better(const ab_worker_rec_t *a, const ab_worker_rec_t *b)
{
    uint32_t ta = s_temperature(a), tb = s_temperature(b);
    if (ta != tb)
        return ta < tb;
    /* in_flight/capacity compared without division */
    uint64_t la = (uint64_t)a->in_flight * (b->capacity ? b->capacity : 1);
    uint64_t lb = (uint64_t)b->in_flight * (a->capacity ? a->capacity : 1);
    if (la != lb)
        return la < lb;
    return a->last_dispatch < b->last_dispatch;
}

/* 1 when W is a broker link's remote worker (link.h). */
static int s_remote(const ab_worker_rec_t *w)
{
    return w->peer->link_role == AB_LINK_WORKER;
}

ab_worker_rec_t *ab_placement_pick(ab_broker_t *b, ab_service_t *s, ab_req_t *r,
                                   int *impossible)
{
    const struct ab_route *rt = r->route;
    ab_worker_rec_t *best = NULL;
    int best_tier = 3, capable = 0, loaded_somewhere = 0;
    *impossible = 0;
    for (ab_worker_rec_t *w = zlistx_first(s->workers); w; w = zlistx_next(s->workers)) {
        if (!s_capable(w, rt) || !ab_link_may_take(b, w, r))
            continue; /* a link it may not cross (loop, hop limit) cannot serve it */
        capable++;
        int tier = s_tier(w, rt);
        if (tier == 0)
            loaded_somewhere = 1;
        int avoided = rt->avoid && w->peer->rid_hash == rt->avoid;
        if (avoided || w->in_flight >= w->capacity || s_model_full(w, rt) ||
            !ab_worker_fits(b, w, r))
            continue; /* busy, or R is over its max payload (ab_worker_fits) */
        /* Same tier: local first, then a peer (links: docs/links.md). */
        if (!best || tier < best_tier ||
            (tier == best_tier && (s_remote(w) != s_remote(best) ? !s_remote(w)
                                                                  : s_better(w, best)))) {
            best = w;
            best_tier = tier;
        }
    }
    /* No worker at all (the only one crashed, restarting) is not "no
     * worker can serve it": the request waits for one, as any request to a
     * service whose workers are away does (its deadline, the service's TTL). */
    if (!capable && zlistx_size(s->workers) > 0) {
        *impossible = 1;
        return NULL;
    }
    if (best && best_tier == 2 && loaded_somewhere)
        return NULL; /* wait for a slot next to the loaded model */
    return best;
}

uint32_t ab_placement_why(ab_service_t *s, const ab_req_t *r, char *text, size_t cap)
{
    const struct ab_route *rt = r->route;
    if (rt->worker[0]) {
        int found = 0;
        for (ab_worker_rec_t *w = zlistx_first(s->workers); w; w = zlistx_next(s->workers))
            found |= s_pinned_ok(w, rt);
        if (!found) {
            snprintf(text, cap, "no worker '%s' serves '%s'", rt->worker, s->name);
            return AB_ERR_NOT_FOUND; /* the service exists; the worker named does not */
        }
    }
    unsigned down = 0;
    for (ab_worker_rec_t *w = zlistx_first(s->workers); w; w = zlistx_next(s->workers))
        down += w->inference && !w->inference->backend_up;
    if (down) { /* say so: "not found" would send the operator the wrong way */
        snprintf(text, cap, "model \"%s\" not found on any worker of '%s' (%u worker%s backend "
                 "unreachable)", rt->model, s->name, down, down == 1 ? "'s" : "s'");
        return AB_ERR_BACKEND;
    }
    snprintf(text, cap, "model \"%s\" not found on any worker of '%s'", rt->model, s->name);
    return AB_ERR_MODEL_NOT_FOUND;
}

int ab_placement_retry(ab_broker_t *b, ab_req_t *r, uint32_t code)
{
    struct ab_route *rt = r->route;
    if (!rt || rt->streamed || rt->retries >= 2 || (r->flags & AB_FLAG_NON_IDEMPOTENT) ||
        !r->has_payload || !r->worker)
        return 0;
    if (code != AB_ERR_BACKEND_BUSY && code != AB_ERR_BACKEND)
        return 0;
    ab_worker_rec_t *from = r->worker;
    ab_service_t *s = r->service;
    int other = 0;
    for (ab_worker_rec_t *w = zlistx_first(s->workers); w; w = zlistx_next(s->workers))
        other |= w != from && s_capable(w, rt);
    if (!other)
        return 0;
    AB_DEBUG("request %llu pushed back by %s (%s): re-dispatching",
             (unsigned long long)r->bid, from->peer->name, ab_wire_error_name(code));
    ab_worker_req_remove(from, r);
    ab_health_attempt_ended(b, r, from->peer->rid_hash);
    rt->avoid = from->peer->rid_hash;
    rt->retries++;
    ab_queue_push_front(b, s, r);
    ab_service_dispatch(b, s);
    return 1;
}

