/*
 * service.c - services, their workers and queues, dispatch, deadlines.
 *
 * A service exists from its first REGISTER on; requests to it wait in its
 * queue (lanes.h: priority lanes, fair across clients) while no worker has
 * free credit (bounded by queue-max and each client's quota). A
 * worker's free credit is capacity - in_flight; dispatch picks the worker
 * with the most, and among equals the one dispatched to longest ago, so
 * load spreads. Invariant: a service's queue is non-empty only while none of
 * its workers has free credit.
 *
 * Every held request also sits in a min-heap on its deadline (with its index
 * stored in the request, so an answered request leaves the heap at once and
 * the heap never holds more than the broker's pending requests).
 */
#define AB_LOG_SUBSYS "service" /* log.h: the subsystem in log lines */
#include "request.h"
#include "service.h"
#include "link.h"
#include "router.h"
#include "health.h"
#include "directory.h"
#include "batching.h"
#include "agentbus.pb-c.h"
#include "agentbus.h"
#include "placement.h"
#include "util.h"
#include "clients.h"

#include <stdlib.h>
#include <string.h>

/* --- service lifetime ----------------------------------------------------------
 * A service lives while a worker serves it or a request names it. Once it
 * has neither it goes on the idle list (oldest first) and is removed after
 * service-idle-ms, or at once when max-services is reached and a new name
 * needs the room: names a peer invents cannot pile up. */
static void s_idle_unlink(ab_service_t *s)
{
    ab_list_remove(&s->idle_link);
}

/* Puts S on the idle list, or takes it off, as its state says. */
static void s_idle_update(ab_broker_t *b, ab_service_t *s)
{
    int idle = s->held == 0 && zlistx_size(s->workers) == 0;
    if (!idle) {
        s_idle_unlink(s);
        return;
    }
    if (ab_list_linked(&s->idle_link))
        return;
    s->idle_since_ms = ab_now_ms();
    ab_list_insert_tail(&b->idle, &s->idle_link);
}

static ab_service_t *s_oldest_idle(ab_broker_t *b)
{
    ab_list_t *l = ab_list_first(&b->idle);
    return l ? ab_list_data(l, ab_service_t, idle_link) : NULL;
}

static void s_service_delete(ab_broker_t *b, ab_service_t *s)
{
    s_idle_unlink(s);
    if (b->service_hint == s)
        b->service_hint = NULL;
    zhashx_delete(b->services, s->name); /* ab_service_free */
}

ab_service_t *ab_service_get(ab_broker_t *b, const char *name, int create)
{
    ab_service_t *s = zhashx_lookup(b->services, name);
    if (s || !create)
        return s;
    if (zhashx_size(b->services) >= (size_t)b->cfg->max_services) {
        ab_service_t *oldest = s_oldest_idle(b);
        if (!oldest) {
            b->c.services_refused++;
            AB_LOG_RL(&b->rl, 0x5e4f1ce5, ab_now_ms(), AB_LOG_WARN,
                      "service '%s' refused: max-services (%ld) reached", name,
                      b->cfg->max_services);
            return NULL;
        }
        b->c.services_expired++; /* the oldest idle one makes room */
        s_service_delete(b, oldest);
    }
    s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    snprintf(s->name, sizeof s->name, "%s", name);
    s->workers = zlistx_new();
    if (!s->workers) {
        free(s);
        return NULL;
    }
    zhashx_insert(b->services, s->name, s);
    s_idle_update(b, s); /* until a worker or a request arrives */
    AB_DEBUG("service '%s' created", name);
    return s;
}

void ab_service_free(void **item)
{
    ab_service_t *s = *item;
    if (s) {
        ab_defer_cancel(&s->later); /* a walk's queue never reaches a freed one */
        ab_lanes_fini(s);
        zlistx_destroy(&s->workers);
        free(s->latency_us);
        free(s);
    }
    *item = NULL;
}

void ab_service_hold(ab_broker_t *b, ab_req_t *r)
{
    (void)b;
    if (r->holds_service)
        return;
    r->holds_service = 1;
    r->service->held++;
    s_idle_unlink(r->service);
}

void ab_service_release(ab_broker_t *b, ab_req_t *r)
{
    if (!r->holds_service)
        return;
    r->holds_service = 0;
    if (r->service->held)
        r->service->held--;
    s_idle_update(b, r->service);
}

void ab_service_latency(ab_service_t *s, uint64_t us)
{
    if (!s->latency_us) {
        s->latency_us = malloc(sizeof *s->latency_us);
        if (!s->latency_us)
            return; /* a sample lost, nothing else */
        ab_hist_reset(s->latency_us);
    }
    ab_hist_record(s->latency_us, us);
}

#define AB_EXPIRE_BATCH 1024 /* services removed per sweep: bounded work per turn */

/* The startup grace has passed: services no worker claimed go. Once. */
static void s_grace_end(ab_broker_t *b, int64_t now)
{
    (void)now;
    ab_broker_cancel(b, b->grace_timer);
    if (b->grace_over)
        return;
    ab_service_end_grace(b);
    b->grace_over = 1;
}

int ab_service_init(ab_broker_t *b)
{
    long grace = b->cfg->startup_grace_ms > 0 ? b->cfg->startup_grace_ms : 1;
    if (ab_broker_every(b, AB_SWEEP_MS, ab_service_expire_idle) < 0)
        return -1;
    b->grace_timer = ab_broker_every(b, grace, s_grace_end);
    return b->grace_timer < 0 ? -1 : 0;
}

void ab_service_expire_idle(ab_broker_t *b, int64_t now)
{
    if (!b->grace_over) /* workers may be reconnecting after a restart */
        return;
    ab_service_t *s;
    for (int n = 0; n < AB_EXPIRE_BATCH && (s = s_oldest_idle(b)); n++) {
        if (now - s->idle_since_ms < b->cfg->service_idle_ms)
            return;
        AB_DEBUG("service '%s' removed: idle for %ld ms", s->name, (long)(now - s->idle_since_ms));
        b->c.services_expired++;
        s_service_delete(b, s);
    }
}

int ab_service_admit(ab_broker_t *b, const ab_service_t *s)
{
    return s->q_len < (uint32_t)b->cfg->queue_max &&
           ab_idmap_size(&b->pending) < (size_t)b->cfg->max_pending;
}

/* A provisional service at the end of the grace: its queue is answered
 * NO_SERVICE and it goes (or, while requests still name it, once idle). */
static void s_grace_drop(void *ctx, ab_defer_node_t *n)
{
    ab_broker_t *b = ctx;
    ab_service_t *s = ab_defer_data(n, ab_service_t, later);
    char text[AB_NAME_MAX + 64];
    snprintf(text, sizeof text, "no service '%s' is registered", s->name);
    ab_req_t *r;
    while ((r = ab_queue_head(s)))
        ab_req_fail(b, r, AB_ERR_NO_SERVICE, text);
    s->provisional = 0;
    if (s->held == 0)
        s_service_delete(b, s);
}

static int s_has_queue(const ab_service_t *s)
{
    return s->q_len != 0;
}

static void s_dispatch_one(void *ctx, ab_defer_node_t *n)
{
    ab_service_dispatch(ctx, ab_defer_data(n, ab_service_t, later));
}

void ab_service_dispatch_all(ab_broker_t *b)
{
    ab_service_each(b, s_has_queue, s_dispatch_one);
}

static int s_provisional(const ab_service_t *s)
{
    return s->provisional;
}

void ab_service_end_grace(ab_broker_t *b)
{
    ab_service_each(b, s_provisional, s_grace_drop);
}

void ab_service_each(ab_broker_t *b, int (*want)(const ab_service_t *), ab_defer_fn *fn)
{
    /* Queued, then acted on: a zhashx may not change while iterated, and
     * FN may delete services or drop peers (a deleted one leaves the queue). */
    ab_defer_t todo;
    ab_defer_init(&todo);
    for (ab_service_t *s = zhashx_first(b->services); s; s = zhashx_next(b->services))
        if (want(s))
            ab_defer_add(&todo, &s->later, fn);
    ab_defer_run(&todo, b);
}

/* --- queue (lanes.c holds the structure) ---------------------------------- */
int ab_service_enqueue(ab_broker_t *b, ab_service_t *s, ab_req_t *r)
{
    if (ab_lanes_put(s, r, 0) == 0)
        return 0;
    ab_req_fail(b, r, AB_ERR_INTERNAL, "out of memory queuing the request");
    return -1;
}

void ab_queue_remove(ab_service_t *s, ab_req_t *r)
{
    ab_lanes_remove(s, r);
}

void ab_queue_push_front(ab_broker_t *b, ab_service_t *s, ab_req_t *r)
{
    if (ab_lanes_put(s, r, 1) != 0)
        ab_req_fail(b, r, AB_ERR_INTERNAL, "out of memory queuing the request again");
}

ab_req_t *ab_queue_head(ab_service_t *s)
{
    return ab_lanes_any(s);
}

#define AB_FAST_WINDOW_MS 10000 /* the fastest answer is kept per window of this */

/* The key of R's model for ab_fast_t (0: it names none). */
static uint64_t s_fast_key(const ab_req_t *r)
{
    return r->route ? r->route->model_key : 0;
}

/* S's slot for KEY; with MAKE, a new one in place of the least recently
 * started window when there is none (NULL otherwise). */
static ab_fast_t *s_fast_slot(ab_service_t *s, uint64_t key, int make)
{
    ab_fast_t *old = &s->fast[0];
    for (int i = 0; i < AB_FAST_MODELS; i++) {
        ab_fast_t *f = &s->fast[i];
        if (f->since_ms && f->key == key)
            return f;
        if (!f->since_ms || (old->since_ms && f->since_ms < old->since_ms))
            old = f;
    }
    if (!make)
        return NULL;
    *old = (ab_fast_t){.key = key};
    return old;
}

void ab_service_fast(ab_service_t *s, const ab_req_t *r, uint64_t us, int64_t now)
{
    ab_fast_t *f = s_fast_slot(s, s_fast_key(r), 1);
    if (!f->since_ms || now - f->since_ms >= AB_FAST_WINDOW_MS) {
        f->us[1] = f->since_ms ? f->us[0] : 0;
        f->us[0] = 0;
        f->since_ms = now > 0 ? now : 1;
    }
    if (!f->us[0] || us < f->us[0])
        f->us[0] = us;
}

/* Answers R DEADLINE now, and returns 1, when less time is left than the
 * fastest answer of S's workers to requests of R's model in the last
 * 10-20 s: dispatching it would only keep a slot busy for an answer nobody
 * can use. */
static int s_too_late(ab_broker_t *b, ab_service_t *s, ab_req_t *r, int64_t now)
{
    const ab_fast_t *f = s_fast_slot(s, s_fast_key(r), 0);
    uint64_t f0 = f ? f->us[0] : 0, f1 = f ? f->us[1] : 0;
    uint64_t fast = !f0 ? f1 : !f1 ? f0 : f0 < f1 ? f0 : f1;
    int64_t left_ms = r->deadline_ms - now;
    if (!fast || (uint64_t)(left_ms > 0 ? left_ms : 0) * 1000 >= fast)
        return 0;
    char text[160];
    snprintf(text, sizeof text, "deadline cannot be met: %lld ms left, the fastest recent "
             "answer took %llu ms", (long long)left_ms, (unsigned long long)(fast / 1000));
    s->deadline_early++;
    b->c.deadline_early++;
    ab_req_fail(b, r, AB_ERR_DEADLINE, text);
    return 1;
}

static void s_str_free(void **item)
{
    free(*item);
    *item = NULL;
}

/* --- workers ------------------------------------------------------------------- */
/* A REGISTER over a limit: answered CODE, counted; nothing of it is kept
 * (a first one leaves P a plain agent). */
static void s_register_refuse(ab_broker_t *b, ab_peer_t *p, const ab_header_t *h, uint32_t code,
                              const char *why, int64_t now)
{
    b->c.registers_refused++;
    AB_COUNT_ERROR(b, code);
    if (!p->worker)
        p->role = AB_ROLE_AGENT;
    AB_LOG_RL(&b->rl, ab_hash_bytes(p->rid.bytes, p->rid.len) ^ 0x7e61, now, AB_LOG_WARN,
              "REGISTER from %s refused: %s", p->key, why);
    ab_send_error(b, &p->rid, h->id, code, why);
}

int ab_worker_on_register(ab_broker_t *b, ab_peer_t *p, const ab_header_t *in, const ab_frame_t *pl,
                          int64_t now)
{
    char name[AB_NAME_MAX];
    ab_view_copy(in->target, name, sizeof name);
    if (in->target.len >= AB_NAME_MAX) {
        return AB_EDECODE;
    }
    Agentbus__Register *m = NULL;
    char why[160];
    if (ab_register_check(b->cfg, pl->size, NULL, why, sizeof why) != 0) {
        s_register_refuse(b, p, in, AB_ERR_TOO_LARGE, why, now);
        return 0;
    }
    /* within a budget (ab_pb_unpack): register-max-bytes may be 64 MiB */
    if (pl->size && !(m = (Agentbus__Register *)ab_pb_unpack(&agentbus__register__descriptor,
                                                             pl->size, pl->data))) {
        return AB_EDECODE;
    }
    if (m && ab_register_check(b->cfg, pl->size, m, why, sizeof why) != 0) {
        agentbus__register__free_unpacked(m, NULL);
        s_register_refuse(b, p, in, AB_ERR_TOO_LARGE, why, now);
        return 0;
    }
    ab_service_t *s = ab_service_get(b, name, 1);
    if (!s) {
        if (m)
            agentbus__register__free_unpacked(m, NULL);
        if (zhashx_size(b->services) >= (size_t)b->cfg->max_services)
            s_register_refuse(b, p, in, AB_ERR_BUSY, "too many services (max-services)", now);
        else
            ab_send_error(b, &p->rid, in->id, AB_ERR_INTERNAL, "out of memory");
        return 0;
    }
    /* Inference workers register again whenever their models or slots
     * change: that is routine, not news for the log. */
    int again = p->worker && p->worker->service == s;
    if (p->worker && p->worker->service != s)
        ab_worker_detach(b, p->worker, "re-registered for another service");
    p->role = AB_ROLE_WORKER;
    s->provisional = 0;
    int joined = p->worker == NULL;
    ab_worker_attach(b, p, s, in->credit);
    if (!p->worker) {
        if (m)
            agentbus__register__free_unpacked(m, NULL);
        ab_send_error(b, &p->rid, in->id, AB_ERR_INTERNAL, "out of memory");
        return 0;
    }
    if (m) {
        ab_peer_set_name(p, "", m->name);
        if (m->heartbeat_ms >= 50 && m->heartbeat_ms <= 600000)
            p->heartbeat_ms = m->heartbeat_ms;
        p->features = m->features;
        p->announced = 1;
        ab_peer_said_max_payload(b, p, m->max_payload); /* no request over it goes to it */
        zhashx_purge(p->worker->labels);
        for (size_t i = 0; i < m->n_labels; i++)
            zhashx_update(p->worker->labels, m->labels[i]->key, m->labels[i]->value);
        ab_placement_update(p->worker, m->inference); /* takes it */
        m->inference = NULL;
        /* An inference worker re-registers at once when its backend goes
         * down or up: faster news than its next heartbeat. */
        const Agentbus__InferenceState *st = p->worker->inference;
        if (st && !st->backend_up)
            ab_health_backend_state(b, p->worker, "down");
        else if (st && strncmp(p->worker->health.backend_state, "down", 4) == 0)
            ab_health_backend_state(b, p->worker, "ok");
        agentbus__register__free_unpacked(m, NULL);
    }
    AB_LOG(again ? AB_LOG_DEBUG : AB_LOG_INFO, "worker %s%s%s registered for '%s' with capacity %u",
           p->key, p->name[0] ? " " : "", p->name, name, in->credit);
    if (joined)
        ab_directory_event(b, p->worker, "join");
    ab_header_t h = ab_header_init(AB_KIND_REGISTER);
    h.correlation_id = in->id;
    h.target = in->target;
    h.credit = p->worker->health.interval_ms; /* adaptive: health.c */
    h.features = ab_batching_features(b, p);
    ab_send(b, &p->rid, &h, NULL);
    ab_service_dispatch(b, s);
    return 0;
}

void ab_worker_attach(ab_broker_t *b, ab_peer_t *peer, ab_service_t *s, uint32_t capacity)
{
    ab_worker_rec_t *w = peer->worker;
    if (!w) {
        w = calloc(1, sizeof *w);
        if (!w)
            return;
        w->peer = peer;
        w->service = s;
        w->labels = zhashx_new();
        w->registered_ms = ab_now_ms();
        zhashx_set_duplicator(w->labels, (zhashx_duplicator_fn *)strdup);
        zhashx_set_destructor(w->labels, s_str_free);
        zlistx_add_end(s->workers, w);
        peer->worker = w;
        ab_health_new_worker(b, w);
        s_idle_update(b, s);
    }
    w->capacity = capacity;
}

void ab_worker_req_remove(ab_worker_rec_t *w, ab_req_t *r)
{
    ab_list_remove(&r->qlink);
    r->worker = NULL;
    if (w->in_flight)
        w->in_flight--;
}

static void s_worker_req_add(ab_worker_rec_t *w, ab_req_t *r)
{
    ab_list_insert_head(&w->reqs, &r->qlink);
    r->worker = w;
    w->in_flight++;
}

/* Frees W: off its service's list, its placement data gone, its peer no
 * longer a worker. */
static void s_worker_free(ab_worker_rec_t *w)
{
    void *handle = zlistx_find(w->service->workers, w);
    if (handle)
        zlistx_delete(w->service->workers, handle);
    zhashx_destroy(&w->labels);
    ab_placement_forget(w);
    w->peer->worker = NULL;
    free(w);
}

void ab_worker_detach(ab_broker_t *b, ab_worker_rec_t *w, const char *why)
{
    ab_service_t *s = w->service;
    /* Its requests go back to the front of the queue (health.c), to be
     * re-dispatched at the end of this loop turn. */
    ab_health_take_back(b, w, why);
    ab_directory_event(b, w, "leave");
    ab_health_forget(b, w, strcmp(why, "said goodbye") == 0 ||
                               strcmp(why, "re-registered for another service") == 0);
    s_worker_free(w);
    s_idle_update(b, s);
}

void ab_service_fini(ab_broker_t *b)
{
    /* Worker records first (their services' lists point at them), then
     * the services; requests are gone already (ab_req_fini). */
    if (b->peers)
        for (ab_peer_t *p = zhashx_first(b->peers); p; p = zhashx_next(b->peers))
            if (p->worker)
                s_worker_free(p->worker);
    if (b->services)
        zhashx_destroy(&b->services);
}

int ab_worker_fits(const ab_broker_t *b, const ab_worker_rec_t *w, const ab_req_t *r)
{
    (void)b;
    size_t max = w->peer->max_payload;
    if (!max || !r->has_payload)
        return 1;
    size_t n = r->small_held ? r->small_len : zmq_msg_size((zmq_msg_t *)&r->payload);
    uint64_t size = (r->flags & AB_FLAG_LZ4) && r->original_size > n ? r->original_size : n;
    return size <= max;
}

/* 1 when S has workers and R fits none of them (ab_worker_fits): no worker
 * may ever take it. *MOST: the largest max payload among them. */
static int s_fits_none(const ab_broker_t *b, ab_service_t *s, const ab_req_t *r, size_t *most)
{
    *most = 0;
    if (!zlistx_size(s->workers))
        return 0;
    for (ab_worker_rec_t *w = zlistx_first(s->workers); w; w = zlistx_next(s->workers)) {
        if (ab_worker_fits(b, w, r))
            return 0;
        if (w->peer->max_payload > *most)
            *most = w->peer->max_payload;
    }
    return 1;
}

ab_worker_rec_t *ab_service_pick(ab_broker_t *b, ab_service_t *s, const ab_req_t *r)
{
    /* Local first: a broker link's remote worker (link.h) is picked only
     * when no local worker has free credit, the nearest with the most free
     * credit, and only when the request may cross that link (no loop, hop
     * limit). */
    ab_worker_rec_t *best = NULL, *remote = NULL;
    uint32_t best_free = 0, remote_free = 0, remote_hops = UINT32_MAX;
    for (ab_worker_rec_t *w = zlistx_first(s->workers); w; w = zlistx_next(s->workers)) {
        uint32_t free_credit = ab_health_free_credit(w);
        if (free_credit == 0 || (r && !ab_worker_fits(b, w, r)))
            continue;
        if (w->peer->link_role == AB_LINK_WORKER) {
            uint32_t hops = ab_link_hops(w);
            if (r && !ab_link_may_take(b, w, r))
                continue;
            if (!remote || hops < remote_hops ||
                (hops == remote_hops && (free_credit > remote_free ||
                                         (free_credit == remote_free &&
                                          w->last_dispatch < remote->last_dispatch)))) {
                remote = w;
                remote_free = free_credit;
                remote_hops = hops;
            }
            continue;
        }
        if (!best || free_credit > best_free ||
            (free_credit == best_free && w->last_dispatch < best->last_dispatch)) {
            best = w;
            best_free = free_credit;
        }
    }
    return best ? best : remote;
}

/* Sends R to W. A payload in a message goes as a reference-counted copy
 * (no bytes are copied for payloads over ZeroMQ's 33-byte inline size), so
 * the request keeps its own reference for a later re-dispatch; a small one
 * kept in the record goes as bytes (into W's batch, or one frame). */
static int s_send_to_worker(ab_broker_t *b, ab_worker_rec_t *w, ab_req_t *r, int64_t now)
{
    ab_header_t h = ab_header_init(AB_KIND_REQUEST);
    h.id = r->bid;
    h.target = ab_view_of(r->service->name);
    h.flags = r->flags;
    /* ACCEPT_LZ4 asks the worker to compress its reply: not when the reply
     * stays on this machine (client and worker local), where lz4 costs more
     * than the copy it saves. A link keeps it: the far broker decides. */
    if (w->peer->link_role != AB_LINK_WORKER && r->client_local && w->peer->local &&
        !b->cfg->compress_local)
        h.flags &= ~(uint32_t)AB_FLAG_ACCEPT_LZ4;
    h.priority = r->priority;
    if (r->route)
        h.model = ab_view_of(r->route->model);
    h.original_size = r->original_size;
    int64_t left = r->deadline_ms - now;
    h.timeout_ms = left > 0 ? (uint32_t)left : 1;
    int link = w->peer->link_role == AB_LINK_WORKER; /* over a broker link (link.h) */
    if (r->small_held && !link)
        return ab_send_peer_bytes(b, w->peer, &h, r->small, r->small_len, 1);
    zmq_msg_t *pm = ab_req_payload(r);
    if (r->has_payload && !pm)
        return -1; /* out of memory: as a refused send (s_start puts R back) */
    zmq_msg_t copy;
    zmq_msg_init(&copy);
    if (pm)
        zmq_msg_copy(&copy, pm);
    int rc = link ? ab_link_forward(b, w, r, &h, pm ? &copy : NULL)
                  : ab_send_peer(b, w->peer, &h, pm ? &copy : NULL);
    zmq_msg_close(&copy);
    return rc;
}

/* Starts R (out of every queue) on W: on W's list, counted, sent. 0, or
 * -1 when W could not be sent to: R is back at the front of the queue and
 * W's peer dropped. */
static int s_start(ab_broker_t *b, ab_service_t *s, ab_worker_rec_t *w, ab_req_t *r, int64_t now)
{
    r->state = AB_REQ_DISPATCHED;
    s_worker_req_add(w, r);
    ab_health_on_dispatch(b, w, r);
    w->last_dispatch = ++b->dispatch_seq;
    r->dispatch_us = ab_broker_clock_us(b);
    if (s_send_to_worker(b, w, r, now) == 0)
        return 0;
    /* The worker is gone or choking: take the request back, put it at the
     * front, and stop offering that worker. */
    ab_worker_req_remove(w, r);
    r->attempts--; /* it never reached the worker */
    ab_queue_push_front(b, s, r);
    ab_peer_drop(b, w->peer, "unreachable");
    return -1;
}

/* R, lz4-compressed, is for a worker that cannot read lz4: made plain when
 * it came over a link (link_fwd.c), else (or when its plain size would pass
 * the held-bytes bounds) failed here. 1 when failed. */
static int s_plain_refused(ab_broker_t *b, ab_req_t *r)
{
    int rc = ab_link_req_plain(b, r);
    if (rc == AB_OK)
        return 0;
    if (rc == AB_EBUSY) {
        b->c.held_bytes_busy++;
        ab_req_fail(b, r, AB_ERR_BUSY, "decompressed for its worker the request would pass "
                                       "max-held-bytes or max-client-held-bytes; retry later");
        return 1;
    }
    /* The broker never decompresses an agent's payload (a link's it does:
     * link_fwd.c); an older worker cannot. */
    b->c.lz4_refused++;
    ab_req_fail(b, r, AB_ERR_UNSUPPORTED, "the worker cannot read lz4-compressed "
                                          "payloads: send this one uncompressed");
    return 1;
}

/* What the dispatch pass does with candidate R: a worker for it (0), R
 * failed here (1: it cannot run, or too late), R waits and is passed over
 * (2: its model's workers are busy), or stop (3: no worker has credit). */
static int s_verdict(ab_broker_t *b, ab_service_t *s, ab_req_t *r, int64_t now,
                     ab_worker_rec_t **w)
{
    int impossible = 0;
    *w = r->route ? ab_placement_pick(b, s, r, &impossible) : ab_service_pick(b, s, r);
    if (impossible) {
        char text[AB_NAME_MAX + AB_MODEL_MAX + 64];
        uint32_t code = ab_placement_why(s, r, text, sizeof text);
        ab_req_fail(b, r, code, text);
        return 1;
    }
    size_t most;
    if (!*w && s_fits_none(b, s, r, &most)) {
        char text[200];
        snprintf(text, sizeof text, "the request's payload exceeds the max payload of every "
                 "worker of '%s' (the largest: %zu bytes; ab_options_set_max_payload)", s->name,
                 most);
        ab_send_error_flags(b, &r->client, r->client_id, AB_ERR_TOO_LARGE,
                            AB_FLAG_OVER_MAX_PAYLOAD, text); /* the library: AB_EPAYLOADSIZE */
        AB_COUNT_ERROR(b, AB_ERR_TOO_LARGE);
        r->service->errors++;
        ab_req_free(b, r);
        return 1;
    }
    if (!*w)
        return r->route ? 2 : 3;
    if ((r->flags & AB_FLAG_LZ4) && !((*w)->peer->features & AB_FEATURE_LZ4) &&
        s_plain_refused(b, r))
        return 1;
    return s_too_late(b, s, r, now) ? 1 : 0;
}

/* Lanes decide the order (lanes.h); placement decides where a request with
 * a model goes, and one whose model's workers are busy is passed over
 * without blocking the ones behind it, with the rest of its model's
 * requests (ab_lanes_skip): past AB_LANES_SCAN of them the lanes offer each
 * other model's oldest request. Each call restarts from the lanes' heads:
 * failing a request may change them. */
void ab_service_dispatch(ab_broker_t *b, ab_service_t *s)
{
    int64_t now = (int64_t)(ab_broker_clock_us(b) / 1000);
    uint32_t mark = ++b->dispatch_mark ? b->dispatch_mark : ++b->dispatch_mark;
    ab_req_t *r;
    while (s->q_len && (r = ab_lanes_next(b, s, mark))) {
        ab_worker_rec_t *w;
        int v = s_verdict(b, s, r, now, &w);
        if (v == 3)
            return;
        if (v == 2)
            ab_lanes_skip(r, mark);
        if (v != 0)
            continue;
        ab_lanes_take(s, r, ab_broker_clock_us(b));
        s_start(b, s, w, r, now);
    }
}

void ab_service_submit(ab_broker_t *b, ab_service_t *s, ab_req_t *r, int64_t now)
{
    if (!s->q_len) {
        /* Nothing waits ahead of it: straight to a worker when one has
         * credit (no flow made, no lane walk: the common, idle case). A
         * request for a model whose workers are busy (2) waits. */
        ab_worker_rec_t *w;
        int v = s_verdict(b, s, r, now, &w);
        if (v == 1)
            return;
        if (v == 0) {
            ab_lanes_direct(s, r->lane);
            if (s_start(b, s, w, r, now) != 0)
                ab_service_dispatch(b, s);
            return;
        }
    } else if (s_too_late(b, s, r, now)) {
        return;
    }
    char why[AB_NAME_MAX + 2 * AB_RID_MAX + 128];
    if (r->crec && ab_client_admit(b, r->crec, s, r->lane, 1, why, sizeof why)) {
        ab_req_fail(b, r, AB_ERR_BUSY, why);
        return;
    }
    if (ab_service_enqueue(b, s, r) == 0)
        ab_service_dispatch(b, s);
}
