/*
 * directory.c - service discovery.
 *
 * DISCOVER (target: a service, or "*" / empty for all) is answered with a
 * Directory: the services and every worker with its labels, health, free
 * credit and heartbeat figures. That is one round trip on the broker's
 * thread, built from state it already holds (nothing is looked up
 * elsewhere). With FLAG_WATCH the asker is also subscribed: each later
 * change (a worker joins, leaves, or changes health) is pushed to it as a
 * DISCOVER message carrying a DirectoryEvent, with correlation_id = the id
 * of its subscribing message. Subscribers are kept in a bounded array and
 * forgotten when their peer goes.
 */
#define AB_LOG_SUBSYS "directory" /* log.h: the subsystem in log lines */
#include "broker.h"
#include "directory.h"
#include "link.h"
#include "service.h"
#include "router.h"
#include "stats.h"
#include "agentbus.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

struct ab_watcher {
    ab_rid_t rid;
    uint64_t id; /* the subscribing message's id */
};

int ab_winfo_fill(ab_broker_t *b, ab_worker_rec_t *w, ab_winfo_t *wi, int64_t now)
{
    (void)b;
    ab_peer_t *p = w->peer;
    Agentbus__WorkerInfo *x = &wi->info;
    agentbus__worker_info__init(x);
    wi->lab = NULL;
    wi->labp = NULL;
    snprintf(wi->id, sizeof wi->id, "%s", p->key);
    x->id = wi->id;
    x->name = p->name;
    x->service = w->service->name;
    x->capacity = w->capacity;
    x->in_flight = w->in_flight;
    x->completed = w->completed;
    x->connected_ms = (uint64_t)(now - w->registered_ms);
    x->last_seen_ms = (uint64_t)(now - p->last_seen_ms);
    x->health = (char *)ab_health_name(w->health.state);
    x->interval_ms = w->health.interval_ms;
    x->suspicion = w->health.phi;
    x->ejections = w->health.ejections;
    x->free_credit = ab_health_free_credit(w);
    x->redispatched = w->health.redispatched;
    x->failures = w->health.failures;
    x->backend_state = w->health.backend_state;
    x->backoff_ms = w->health.backoff_ms;
    x->inference = w->inference; /* borrowed: placement.c owns it */
    size_t nl = zhashx_size(w->labels), k = 0;
    wi->lab = calloc(nl + 1, sizeof *wi->lab);
    wi->labp = calloc(nl + 1, sizeof *wi->labp);
    if (!wi->lab || !wi->labp)
        return -1;
    for (char *v = zhashx_first(w->labels); v && k < nl; v = zhashx_next(w->labels), k++) {
        agentbus__worker_info__labels_entry__init(&wi->lab[k]);
        wi->lab[k].key = (char *)zhashx_cursor(w->labels);
        wi->lab[k].value = v;
        wi->labp[k] = &wi->lab[k];
    }
    x->n_labels = k;
    x->labels = wi->labp;
    return 0;
}

void ab_winfo_free(ab_winfo_t *wi)
{
    free(wi->lab);
    free(wi->labp);
    wi->lab = NULL;
    wi->labp = NULL;
}

/* Builds the Directory for FILTER (NULL: everything); *out malloc'd. */
static int s_build(ab_broker_t *b, const char *filter, uint8_t **out, size_t *len)
{
    size_t ns = zhashx_size(b->services) + 1, nw = zhashx_size(b->peers) + 1;
    Agentbus__ServiceInfo *si = calloc(ns, sizeof *si), **sip = calloc(ns, sizeof *sip);
    Agentbus__LatencySummary *lat = calloc(ns, sizeof *lat);
    ab_winfo_t *wi = calloc(nw, sizeof *wi);
    Agentbus__WorkerInfo **wip = calloc(nw, sizeof *wip);
    Agentbus__Directory d;
    agentbus__directory__init(&d);
    int rc = -1;
    int64_t now = ab_now_ms();
    if (!si || !sip || !lat || !wi || !wip)
        goto done;
    for (ab_service_t *s = zhashx_first(b->services); s && d.n_services < ns;
         s = zhashx_next(b->services)) {
        if (filter && strcmp(filter, s->name) != 0)
            continue;
        ab_stats_service_info(b, s, &si[d.n_services], &lat[d.n_services]);
        sip[d.n_services] = &si[d.n_services];
        d.n_services++;
    }
    for (ab_peer_t *p = zhashx_first(b->peers); p && d.n_workers < nw; p = zhashx_next(b->peers)) {
        if (!p->worker || (filter && strcmp(filter, p->worker->service->name) != 0))
            continue;
        if (ab_winfo_fill(b, p->worker, &wi[d.n_workers], now) != 0) {
            ab_winfo_free(&wi[d.n_workers]);
            goto done;
        }
        wip[d.n_workers] = &wi[d.n_workers].info;
        d.n_workers++;
    }
    d.services = sip;
    d.workers = wip;
    *len = agentbus__directory__get_packed_size(&d);
    *out = malloc(*len ? *len : 1);
    if (*out) {
        agentbus__directory__pack(&d, *out);
        rc = 0;
    }
done:
    for (size_t i = 0; wi && i < d.n_workers; i++)
        ab_winfo_free(&wi[i]);
    free(si);
    free(sip);
    free(lat);
    free(wi);
    free(wip);
    return rc;
}

static int s_subscribe(ab_broker_t *b, const ab_rid_t *rid, uint64_t id)
{
    if (!b->watchers && !(b->watchers = calloc(1, sizeof *b->watchers)))
        return -1; /* made by the first subscriber: most brokers have none */
    ab_watchers_t *ws = b->watchers;
    for (size_t i = 0; i < ws->n; i++) {
        if (ws->v[i].rid.len == rid->len && memcmp(ws->v[i].rid.bytes, rid->bytes, rid->len) == 0) {
            ws->v[i].id = id; /* a re-subscription replaces the old one */
            return 0;
        }
    }
    if (ws->n == ws->cap) {
        size_t cap = ws->cap ? ws->cap * 2 : 16;
        if (cap > AB_WATCHERS_MAX)
            return -1;
        ab_watcher_t *v = realloc(ws->v, cap * sizeof *v);
        if (!v)
            return -1;
        ws->v = v;
        ws->cap = cap;
    }
    ws->v[ws->n].rid = *rid;
    ws->v[ws->n].id = id;
    ws->n++;
    return 0;
}

void ab_directory_on_discover(ab_broker_t *b, const ab_rid_t *rid, const ab_header_t *h)
{
    char filter[AB_NAME_MAX];
    if (h->target.len >= AB_NAME_MAX) {
        ab_send_error(b, rid, h->id, AB_ERR_NO_SERVICE, "service name too long");
        return;
    }
    ab_view_copy(h->target, filter, sizeof filter);
    int all = filter[0] == '\0' || strcmp(filter, "*") == 0;
    AB_DEBUG("DISCOVER '%s' flags %u", filter, h->flags);
    if ((h->flags & AB_FLAG_WATCH) && s_subscribe(b, rid, h->id) != 0) {
        ab_send_error(b, rid, h->id, AB_ERR_BUSY, "too many directory subscribers");
        return;
    }
    uint8_t *buf = NULL;
    size_t len = 0;
    if (s_build(b, all ? NULL : filter, &buf, &len) != 0) {
        ab_send_error(b, rid, h->id, AB_ERR_INTERNAL, "out of memory");
        return;
    }
    zmq_msg_t m;
    zmq_msg_init_size(&m, len);
    memcpy(zmq_msg_data(&m), buf, len);
    free(buf);
    ab_header_t r = ab_header_init(AB_KIND_REPLY);
    r.correlation_id = h->id;
    ab_send(b, rid, &r, &m);
    zmq_msg_close(&m);
}

void ab_directory_event(ab_broker_t *b, ab_worker_rec_t *w, const char *change)
{
    ab_link_dir_changed(b); /* peer brokers get the new directory (link.h) */
    ab_watchers_t *ws = b->watchers;
    if (!ws || ws->n == 0)
        return;
    AB_DEBUG("directory change '%s' for %zu watchers", change, ws->n);
    ab_winfo_t wi;
    Agentbus__DirectoryEvent ev;
    agentbus__directory_event__init(&ev);
    if (ab_winfo_fill(b, w, &wi, ab_now_ms()) != 0) {
        ab_winfo_free(&wi);
        return;
    }
    ev.change = (char *)change;
    ev.worker = &wi.info;
    uint8_t stack[1024], *buf = stack;
    size_t len = agentbus__directory_event__get_packed_size(&ev);
    if (len > sizeof stack && !(buf = malloc(len))) {
        ab_winfo_free(&wi);
        return;
    }
    agentbus__directory_event__pack(&ev, buf);
    ab_winfo_free(&wi);
    for (size_t i = 0; i < ws->n; i++) {
        ab_header_t h = ab_header_init(AB_KIND_DISCOVER);
        h.correlation_id = ws->v[i].id;
        zmq_msg_t m;
        zmq_msg_init_size(&m, len);
        memcpy(zmq_msg_data(&m), buf, len);
        ab_send(b, &ws->v[i].rid, &h, &m); /* a failure is counted by ab_send */
        zmq_msg_close(&m);
    }
    if (buf != stack)
        free(buf);
}

void ab_directory_forget(ab_broker_t *b, const ab_rid_t *rid)
{
    ab_watchers_t *ws = b->watchers;
    for (size_t i = 0; ws && i < ws->n; i++) {
        if (ws->v[i].rid.len == rid->len && memcmp(ws->v[i].rid.bytes, rid->bytes, rid->len) == 0) {
            ws->v[i] = ws->v[--ws->n];
            return;
        }
    }
}

void ab_directory_fini(ab_broker_t *b)
{
    if (b->watchers)
        free(b->watchers->v);
    free(b->watchers);
    b->watchers = NULL;
}
