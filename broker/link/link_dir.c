/*
 * link_dir.c - directory exchange over links, and the remote workers that
 * stand for a peer's services here.
 *
 * A broker sends each up link its whole directory: every service it can
 * serve with its capacity and its distance (hops 0: its own workers; n:
 * through n more links). It sends it when the link comes up and again,
 * whole, within one link heartbeat of any change (a worker joining or
 * leaving, here or in a peer's directory). Whole directories make a lost
 * or reordered update harmless: the last one received is the truth.
 *
 * Path vector: a remote entry carries the brokers its route goes through,
 * and a broker named in it ignores it, so no route runs in a circle and a
 * withdrawn service disappears everywhere at once instead of counting up
 * (a ring of three would otherwise pass it round until the hop limit).
 * Split horizon: what a broker learned from link L is never advertised back
 * to L; an entry is advertised only while its hops stay under
 * link-hop-limit. The forwarded header's crossed list (link_fwd.c) is what
 * prevents request loops; this keeps directories true.
 */
#define AB_LOG_SUBSYS "link"
#include "link_int.h"
#include "service.h"
#include "health.h"
#include "agentbus.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

/* --- outgoing -------------------------------------------------------------------- */

/* The entry of W's peer link when remote worker W may be advertised to
 * link L (split horizon, its route not through L's broker), else NULL. */
static const ab_remote_t *s_usable(const ab_link_t *l, const ab_service_t *s,
                                   const ab_worker_rec_t *w)
{
    ab_peer_t *p = w->peer;
    if (!p->link || p->link == l || !p->link->up)
        return NULL; /* split horizon */
    const ab_remote_t *r = zhashx_lookup(p->link->remote, s->name);
    if (!r || r->peer != p || ab_link_in_list(r->via, strlen(r->via), l->name))
        return NULL; /* its route goes through L's broker already */
    return r;
}

/* Adds model NAME to list V (*N used) unless it is there or V is full. */
static void s_model_add(char **v, size_t *n, const char *name)
{
    if (!name || !name[0] || strlen(name) > AB_MODEL_MAX)
        return;
    for (size_t i = 0; i < *n; i++)
        if (!strcmp(v[i], name))
            return;
    if (*n < AB_LINK_MODELS_MAX)
        v[(*n)++] = (char *)name;
}

/* W's models into E's lists; 0 when W reports none: a worker that takes
 * any request, which makes the whole entry such (no lists sent). */
static int s_models_of(const ab_worker_rec_t *w, Agentbus__LinkService *e)
{
    const Agentbus__InferenceState *st = w->inference;
    if (!st || !st->n_models)
        return 0;
    for (size_t i = 0; i < st->n_models; i++)
        s_model_add(e->models, &e->n_models, st->models[i]->name);
    for (size_t i = 0; i < st->n_loaded; i++)
        s_model_add(e->loaded, &e->n_loaded, st->loaded[i]->name);
    return 1;
}

/* E's model lists (MODELS: 2 * AB_LINK_MODELS_MAX slots) from the workers
 * its figures came from: local ones (HOPS 0) or the nearest remote ones. */
static void s_entry_models(const ab_link_t *l, ab_service_t *s, uint32_t hops,
                           Agentbus__LinkService *e, char **models)
{
    e->models = models, e->loaded = models + AB_LINK_MODELS_MAX;
    int all = 1;
    for (ab_worker_rec_t *w = zlistx_first(s->workers); w && all; w = zlistx_next(s->workers)) {
        const ab_remote_t *r = NULL;
        if (w->peer->link_role == AB_LINK_WORKER) {
            if (!hops || !(r = s_usable(l, s, w)) || r->hops + 1 != hops)
                continue;
        } else if (hops) {
            continue;
        }
        all = s_models_of(w, e);
    }
    if (!all)
        e->n_models = e->n_loaded = 0;
}

/* What this broker offers for S to link L: 0 when nothing. A remote
 * entry's route is written into VIA (AB_VIA_MAX), its models' names point
 * into MODELS (2 * AB_LINK_MODELS_MAX). */
static int s_entry(ab_broker_t *b, ab_service_t *s, const ab_link_t *l, Agentbus__LinkService *e,
                   char *via, char **models)
{
    uint32_t cap = 0, free_credit = 0, workers = 0, hops = UINT32_MAX, rcap = 0, rworkers = 0;
    int lz4 = 1, rlz4 = 1;
    const ab_remote_t *best = NULL;
    for (ab_worker_rec_t *w = zlistx_first(s->workers); w; w = zlistx_next(s->workers)) {
        ab_peer_t *p = w->peer;
        if (p->link_role != AB_LINK_WORKER) {
            lz4 &= (p->features & AB_FEATURE_LZ4) != 0;
            cap += w->capacity;
            free_credit += ab_health_free_credit(w);
            workers++;
            continue;
        }
        const ab_remote_t *r = s_usable(l, s, w);
        if (!r)
            continue;
        if (r->hops + 1 < hops)
            hops = r->hops + 1, rcap = 0, rworkers = 0, rlz4 = 1, best = r;
        if (r->hops + 1 == hops)
            rcap += r->capacity, rworkers += r->workers, rlz4 &= r->lz4;
    }
    if (workers) {
        *e = (Agentbus__LinkService)AGENTBUS__LINK_SERVICE__INIT;
        e->hops = 0, e->capacity = cap, e->free_credit = free_credit, e->workers = workers;
        e->lz4 = lz4;
    } else if (hops != UINT32_MAX && hops < (uint32_t)b->cfg->link_hop_limit && rcap) {
        *e = (Agentbus__LinkService)AGENTBUS__LINK_SERVICE__INIT;
        e->hops = hops, e->capacity = rcap, e->free_credit = rcap, e->workers = rworkers;
        e->lz4 = rlz4;
        int n = snprintf(via, AB_VIA_MAX, "%s%s%s", best->peer->link->name,
                         best->via[0] ? "," : "", best->via);
        if (n < 0 || n >= AB_VIA_MAX)
            return 0;
        e->via = via;
    } else {
        return 0;
    }
    e->name = s->name;
    s_entry_models(l, s, e->hops, e, models);
    return 1;
}

void ab_link_dir_send(ab_broker_t *b, ab_link_t *l)
{
    size_t n = zhashx_size(b->services), k = 0;
    Agentbus__LinkService *es = calloc(n ? n : 1, sizeof *es);
    Agentbus__LinkService **ps = calloc(n ? n : 1, sizeof *ps);
    char *vias = malloc((n ? n : 1) * (size_t)AB_VIA_MAX);
    char **models = malloc((n ? n : 1) * 2 * AB_LINK_MODELS_MAX * sizeof *models);
    if (!es || !ps || !vias || !models) {
        free(es);
        free(ps);
        free(vias);
        free(models);
        b->links->dirty = 1; /* try again next tick */
        return;
    }
    for (ab_service_t *s = zhashx_first(b->services); s && k < n; s = zhashx_next(b->services))
        if (s_entry(b, s, l, &es[k], vias + k * (size_t)AB_VIA_MAX,
                    models + k * 2 * AB_LINK_MODELS_MAX)) {
            ps[k] = &es[k];
            k++;
        }
    Agentbus__LinkMsg m = AGENTBUS__LINK_MSG__INIT;
    m.type = 4; /* S_LM_DIRECTORY */
    m.broker = b->links->self;
    m.full = 1;
    m.n_services = k;
    m.services = ps;
    if (ab_link_send_msg(b, l, &m) != 0)
        b->links->dirty = 1;
    free(es);
    free(ps);
    free(vias);
    free(models);
}

/* Mixes string S into hash H. */
static uint64_t s_mix(uint64_t h, const char *s)
{
    return (h ^ ab_hash_bytes(s, strlen(s))) * 0x100000001b3ull + 1;
}

uint64_t ab_link_dir_models_print(ab_broker_t *b)
{
    uint64_t h = 0;
    for (ab_service_t *s = zhashx_first(b->services); s; s = zhashx_next(b->services))
        for (ab_worker_rec_t *w = zlistx_first(s->workers); w; w = zlistx_next(s->workers)) {
            const Agentbus__InferenceState *st = w->inference;
            if (!st)
                continue;
            h = s_mix(h, s->name);
            for (size_t i = 0; i < st->n_models; i++)
                h = s_mix(h, st->models[i]->name);
            h = s_mix(h, "/"); /* loaded */
            for (size_t i = 0; i < st->n_loaded; i++)
                h = s_mix(h, st->loaded[i]->name);
        }
    return h;
}

/* The fingerprint of E's model lists. */
static uint64_t s_models_hash(const Agentbus__LinkService *e)
{
    uint64_t h = e->n_models;
    for (size_t i = 0; i < e->n_models; i++)
        h = s_mix(h, e->models[i]);
    h = s_mix(h, "/");
    for (size_t i = 0; i < e->n_loaded; i++)
        h = s_mix(h, e->loaded[i]);
    return h;
}

/* --- incoming --------------------------------------------------------------------- */

/* E's models as an inference state for the remote worker (placement.c
 * then places model requests by it: loaded there first). ST and the
 * arrays are the caller's (AB_LINK_MODELS_MAX each). NULL when E lists no
 * models: the peer's workers take any request. */
static Agentbus__InferenceState *s_inference(const Agentbus__LinkService *e,
                                             Agentbus__InferenceState *st,
                                             Agentbus__ModelInfo *mi, Agentbus__ModelInfo **mip,
                                             Agentbus__LoadedModel *lm,
                                             Agentbus__LoadedModel **lmp)
{
    if (!e->n_models)
        return NULL;
    *st = (Agentbus__InferenceState)AGENTBUS__INFERENCE_STATE__INIT;
    st->backend_up = 1;
    for (size_t i = 0; i < e->n_models; i++) {
        mi[i] = (Agentbus__ModelInfo)AGENTBUS__MODEL_INFO__INIT;
        mi[i].name = e->models[i];
        mip[i] = &mi[i];
    }
    for (size_t i = 0; i < e->n_loaded; i++) {
        lm[i] = (Agentbus__LoadedModel)AGENTBUS__LOADED_MODEL__INIT;
        lm[i].name = e->loaded[i];
        lmp[i] = &lm[i];
    }
    st->n_models = e->n_models, st->models = mip;
    st->n_loaded = e->n_loaded, st->loaded = lmp;
    return st;
}

/* (Re-)registers remote worker P for service NAME with entry E: the core's
 * own REGISTER path (and its register-max-* bounds), so the worker record
 * is like any other. 0; -1 refused (P is still there); -2 P is gone: the
 * core dispatched a queued request to the new worker at once, the send
 * failed and it dropped P (and with it its remote entry, link.c). */
static int s_register(ab_broker_t *b, ab_link_t *l, ab_peer_t *p, const Agentbus__LinkService *e,
                      int64_t now)
{
    char hops[16];
    snprintf(hops, sizeof hops, "%u", e->hops + 1);
    Agentbus__Register__LabelsEntry l1 = AGENTBUS__REGISTER__LABELS_ENTRY__INIT,
                                    l2 = AGENTBUS__REGISTER__LABELS_ENTRY__INIT;
    l1.key = "remote", l1.value = l->name;
    l2.key = "hops", l2.value = hops;
    Agentbus__Register__LabelsEntry *labels[2] = {&l1, &l2};
    Agentbus__InferenceState st;
    Agentbus__ModelInfo mi[AB_LINK_MODELS_MAX], *mip[AB_LINK_MODELS_MAX];
    Agentbus__LoadedModel lm[AB_LINK_MODELS_MAX], *lmp[AB_LINK_MODELS_MAX];
    Agentbus__Register m = AGENTBUS__REGISTER__INIT;
    m.service = e->name;
    m.name = p->name;
    m.n_labels = 2;
    m.labels = labels;
    m.features = e->lz4 ? AB_FEATURE_LZ4 : 0;
    m.inference = s_inference(e, &st, mi, mip, lm, lmp);
    size_t len = agentbus__register__get_packed_size(&m);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return -1;
    agentbus__register__pack(&m, buf);
    ab_header_t h = ab_header_init(AB_KIND_REGISTER);
    h.target = ab_view_of(e->name);
    /* Credit above the announced capacity keeps the far workers busy
     * across the link's round trip: while an answer travels back here and
     * the next request travels there, the far broker already holds that
     * request in its queue (docs/links.md, "The link's pipeline").
     * link-credit-pct is 100 or more (config.c): never under the capacity. */
    uint64_t cap = (uint64_t)e->capacity * (uint64_t)b->cfg->link_credit_pct / 100;
    if (cap > (uint64_t)b->cfg->worker_capacity_max)
        cap = (uint32_t)b->cfg->worker_capacity_max;
    h.credit = (uint32_t)cap;
    ab_frame_t pl = {buf, len};
    ab_rid_t rid = p->rid;
    int rc = ab_worker_on_register(b, p, &h, &pl, now);
    free(buf);
    if (ab_peer_lookup(b, &rid) != p)
        return -2;
    if (rc != 0 || !p->worker)
        return -1;
    ab_health_on_heartbeat(b, p->worker, NULL, 0, now);
    return 0;
}

/* A new remote worker of L for entry E. */
static void s_add(ab_broker_t *b, ab_link_t *l, const Agentbus__LinkService *e, int64_t now)
{
    ab_remote_t *r = calloc(1, sizeof *r);
    ab_rid_t rid;
    ab_link_rid(l, &rid);
    ab_peer_t *p = r ? ab_peer_add(b, &rid, AB_ROLE_WORKER, now) : NULL;
    if (!p) {
        free(r);
        return;
    }
    p->link = l;
    p->link_role = AB_LINK_WORKER;
    p->features = e->lz4 ? AB_FEATURE_LZ4 : 0;
    ab_peer_set_name(p, "link:", l->name);
    r->peer = p;
    r->capacity = e->capacity, r->hops = e->hops, r->workers = e->workers, r->lz4 = e->lz4;
    r->models_hash = s_models_hash(e);
    snprintf(r->via, sizeof r->via, "%s", e->via);
    zhashx_insert(l->remote, e->name, r);
    p->remote = zhashx_lookup(l->remote, e->name); /* before REGISTER: it may dispatch */
    if (s_register(b, l, p, e, now) == -1) {
        zhashx_delete(l->remote, e->name);
        p->link = NULL;
        p->remote = NULL;
        ab_peer_drop(b, p, "remote service refused here");
    }
}

/* Drops the remote worker of L for NAME. */
static void s_remove(ab_broker_t *b, ab_link_t *l, const char *name, const char *why)
{
    ab_remote_t *r = zhashx_lookup(l->remote, name);
    if (!r)
        return;
    ab_peer_t *p = r->peer;
    zhashx_delete(l->remote, name); /* frees R */
    p->link = NULL;
    p->remote = NULL;
    ab_peer_drop(b, p, why);
    b->links->dirty = 1;
}

static int s_valid(const Agentbus__LinkService *e)
{
    size_t n = e->name ? strlen(e->name) : 0;
    if (!n || n >= AB_NAME_MAX || !e->capacity || strlen(e->via) >= AB_VIA_MAX ||
        e->n_models > AB_LINK_MODELS_MAX || e->n_loaded > AB_LINK_MODELS_MAX)
        return 0;
    for (size_t i = 0; i < e->n_models; i++)
        if (strlen(e->models[i]) > AB_MODEL_MAX)
            return 0;
    for (size_t i = 0; i < e->n_loaded; i++)
        if (strlen(e->loaded[i]) > AB_MODEL_MAX)
            return 0;
    return 1;
}

/* 1 when E's route goes through this broker: ignored (no circles). */
static int s_through_self(const ab_link_t *l, const Agentbus__LinkService *e)
{
    return ab_link_in_list(e->via, strlen(e->via), l->all->self) ||
           ab_link_in_list(e->via, strlen(e->via), l->name);
}

void ab_link_dir_apply(ab_broker_t *b, ab_link_t *l, const Agentbus__LinkMsg *m, int64_t now)
{
    zhashx_t *seen = zhashx_new();
    if (!seen)
        return;
    size_t n = m->n_services < AB_LINK_SERVICES_MAX ? m->n_services : AB_LINK_SERVICES_MAX;
    if (m->n_services > n)
        AB_LOG_RL(&b->rl, 0x11d0, now, AB_LOG_WARN, "link '%s': %zu services offered, %d taken",
                  l->name, m->n_services, AB_LINK_SERVICES_MAX);
    for (size_t i = 0; i < n; i++) {
        const Agentbus__LinkService *e = m->services[i];
        if (!s_valid(e) || zhashx_lookup(seen, e->name)) {
            b->c.malformed++;
            continue;
        }
        if (s_through_self(l, e))
            continue; /* not in SEEN: an entry we held for it is withdrawn */
        zhashx_insert(seen, e->name, (void *)e);
        ab_remote_t *r = zhashx_lookup(l->remote, e->name);
        if (!r) {
            s_add(b, l, e, now);
            continue;
        }
        if (strcmp(r->via, e->via)) {
            snprintf(r->via, sizeof r->via, "%s", e->via);
            b->links->dirty = 1;
        }
        uint64_t mh = s_models_hash(e);
        if (r->capacity != e->capacity || r->hops != e->hops || r->workers != e->workers ||
            r->lz4 != (int)e->lz4 || r->models_hash != mh) {
            r->capacity = e->capacity, r->hops = e->hops, r->workers = e->workers;
            r->lz4 = e->lz4, r->models_hash = mh;
            r->peer->features = e->lz4 ? AB_FEATURE_LZ4 : 0;
            if (s_register(b, l, r->peer, e, now) != 0)
                s_remove(b, l, e->name, "remote service refused here");
            b->links->dirty = 1;
        }
    }
    /* What the peer no longer offers: collected, then dropped (dropping
     * changes the table). */
    zlistx_t *gone = zlistx_new();
    if (gone) { /* copies: a drop may free other entries' keys */
        zlistx_set_duplicator(gone, (zlistx_duplicator_fn *)strdup);
        zlistx_set_destructor(gone, (zlistx_destructor_fn *)zstr_free);
    }
    for (ab_remote_t *r = zhashx_first(l->remote); r && gone; r = zhashx_next(l->remote))
        if (!zhashx_lookup(seen, zhashx_cursor(l->remote)))
            zlistx_add_end(gone, (void *)zhashx_cursor(l->remote));
    zhashx_destroy(&seen);
    if (!gone)
        return;
    for (const char *k = zlistx_first(gone); k; k = zlistx_next(gone))
        s_remove(b, l, k, "withdrawn by the peer broker");
    zlistx_destroy(&gone);
}

void ab_link_dir_alive(ab_broker_t *b, ab_link_t *l, int64_t now)
{
    for (ab_remote_t *r = zhashx_first(l->remote); r; r = zhashx_next(l->remote))
        if (r->peer->worker)
            ab_health_on_heartbeat(b, r->peer->worker, NULL, 0, now);
}

uint32_t ab_link_dir_withdraw(ab_broker_t *b, ab_link_t *l, const char *why)
{
    uint32_t held = 0;
    ab_remote_t *r;
    while ((r = zhashx_first(l->remote))) {
        ab_peer_t *p = r->peer;
        if (p->worker)
            held += p->worker->in_flight;
        zhashx_delete(l->remote, zhashx_cursor(l->remote));
        p->link = NULL;
        p->remote = NULL;
        ab_peer_drop(b, p, why);
    }
    b->links->dirty = 1;
    return held;
}
