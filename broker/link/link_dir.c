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

/* What this broker offers for S to link L: 0 when nothing. A remote
 * entry's route is written into VIA (AB_VIA_MAX). */
static int s_entry(ab_broker_t *b, ab_service_t *s, const ab_link_t *l, Agentbus__LinkService *e,
                   char *via)
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
        if (!p->link || p->link == l || !p->link->up)
            continue; /* split horizon */
        ab_remote_t *r = zhashx_lookup(p->link->remote, s->name);
        if (!r || r->peer != p)
            continue;
        if (ab_link_in_list(r->via, strlen(r->via), l->name))
            continue; /* its route goes through L's broker already */
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
    return 1;
}

void ab_link_dir_send(ab_broker_t *b, ab_link_t *l)
{
    size_t n = zhashx_size(b->services), k = 0;
    Agentbus__LinkService *es = calloc(n ? n : 1, sizeof *es);
    Agentbus__LinkService **ps = calloc(n ? n : 1, sizeof *ps);
    char *vias = malloc((n ? n : 1) * (size_t)AB_VIA_MAX);
    if (!es || !ps || !vias) {
        free(es);
        free(ps);
        free(vias);
        b->links->dirty = 1; /* try again next tick */
        return;
    }
    for (ab_service_t *s = zhashx_first(b->services); s && k < n; s = zhashx_next(b->services))
        if (s_entry(b, s, l, &es[k], vias + k * (size_t)AB_VIA_MAX)) {
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
}

/* --- incoming --------------------------------------------------------------------- */

/* (Re-)registers remote worker P for service NAME with entry E: the core's
 * own REGISTER path, so the worker record is like any other. 0 or -1. */
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
    Agentbus__Register m = AGENTBUS__REGISTER__INIT;
    m.service = e->name;
    m.name = p->name;
    m.n_labels = 2;
    m.labels = labels;
    m.features = e->lz4 ? AB_FEATURE_LZ4 : 0;
    uint8_t buf[1024];
    size_t len = agentbus__register__get_packed_size(&m);
    if (len > sizeof buf)
        return -1;
    agentbus__register__pack(&m, buf);
    ab_header_t h = ab_header_init(AB_KIND_REGISTER);
    h.target = ab_view_of(e->name);
    uint32_t cap = e->capacity;
    if (cap > (uint32_t)b->cfg->worker_capacity_max)
        cap = (uint32_t)b->cfg->worker_capacity_max;
    h.credit = cap;
    ab_frame_t pl = {buf, len};
    if (ab_worker_on_register(b, p, &h, &pl, now) != 0 || !p->worker)
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
    snprintf(p->name, sizeof p->name, "link:%s", l->name);
    r->peer = p;
    r->capacity = e->capacity, r->hops = e->hops, r->workers = e->workers, r->lz4 = e->lz4;
    snprintf(r->via, sizeof r->via, "%s", e->via);
    zhashx_insert(l->remote, e->name, r);
    if (s_register(b, l, p, e, now) != 0) {
        zhashx_delete(l->remote, e->name);
        p->link = NULL;
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
    ab_peer_drop(b, p, why);
    b->links->dirty = 1;
}

static int s_valid(const Agentbus__LinkService *e)
{
    size_t n = e->name ? strlen(e->name) : 0;
    return n && n < AB_NAME_MAX && e->capacity && strlen(e->via) < AB_VIA_MAX;
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
        if (r->capacity != e->capacity || r->hops != e->hops || r->workers != e->workers ||
            r->lz4 != (int)e->lz4) {
            r->capacity = e->capacity, r->hops = e->hops, r->workers = e->workers;
            r->lz4 = e->lz4;
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
        ab_peer_drop(b, p, why);
    }
    b->links->dirty = 1;
    return held;
}
