/*
 * broker.c - the event loop and the receive path.
 *
 * One thread owns the ROUTER socket. Each turn drains every message that is
 * waiting (non-blocking receives), then runs the timers (request deadlines,
 * peer liveness, rate figures), then sleeps in zmq_poll until the next
 * message or the next timer. Nothing here blocks outside ZeroMQ.
 */
#include "broker.h"
#include "placement.h"
#include "msgs.h"
#include "cache.h"
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define AB_RECV_BURST 4096 /* messages per turn before timers get a look */
#define AB_SWEEP_MS 100    /* peer liveness and rate sampling period */

/* Peers are keyed by their binary routing id (the ab_rid_t inside the peer),
 * so the per-message lookup hashes a few bytes and formats nothing. */
static size_t s_rid_hash(const void *key)
{
    const ab_rid_t *r = key;
    return (size_t)ab_hash_bytes(r->bytes, r->len);
}

static int s_rid_cmp(const void *a, const void *b)
{
    const ab_rid_t *x = a, *y = b;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return memcmp(x->bytes, y->bytes, x->len);
}

static void s_peer_free(void **item)
{
    ab_batching_peer_free(NULL, *item);
    ab_idmap_fini(&((ab_peer_t *)*item)->reqs_by_id);
    free(*item);
    *item = NULL;
}

int ab_broker_init(ab_broker_t *b, ab_broker_config_t *cfg)
{
    memset(b, 0, sizeof *b);
    b->cfg = cfg;
    b->limits.max_header = cfg->max_header_bytes;
    b->limits.max_payload = cfg->max_payload_bytes;
    b->rl.interval_ms = 10000;
    b->started_ms = ab_now_ms();
    b->c.prev_ms = b->started_ms;
    b->peers = zhashx_new();
    zhashx_set_key_hasher(b->peers, s_rid_hash);
    zhashx_set_key_comparator(b->peers, s_rid_cmp);
    zhashx_set_key_duplicator(b->peers, NULL);
    zhashx_set_key_destructor(b->peers, NULL);
    zhashx_set_destructor(b->peers, s_peer_free);
    b->peer_keys = zhashx_new();
    zhashx_set_key_duplicator(b->peer_keys, NULL);
    zhashx_set_key_destructor(b->peer_keys, NULL);
    b->services = zhashx_new();
    zhashx_set_destructor(b->services, ab_service_free);
    if (ab_idmap_init(&b->pending, 1024) != 0)
        return -1;
    if (ab_msgs_init(b) != 0)
        return -1;
    b->cache = ab_cache_new(cfg); /* NULL: off */

    b->zctx = zmq_ctx_new();
    b->router = zmq_socket(b->zctx, ZMQ_ROUTER);
    if (!b->zctx || !b->router)
        return -1;
    int one = 1, hwm = (int)cfg->sndhwm, linger = 0;
    int64_t maxmsg = (int64_t)(cfg->max_payload_bytes > cfg->max_header_bytes
                                   ? cfg->max_payload_bytes
                                   : cfg->max_header_bytes) + (1 << 20);
    /* ZMTP heartbeats find dead TCP peers without waiting for the app. */
    int hb_ivl = (int)cfg->heartbeat_ms, hb_timeout = (int)(cfg->heartbeat_ms * cfg->liveness);
    zmq_setsockopt(b->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(b->router, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(b->router, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(b->router, ZMQ_LINGER, &linger, sizeof linger);
    /* A frame far beyond the payload limit costs the peer its connection
     * before the broker buffers it. */
    zmq_setsockopt(b->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    zmq_setsockopt(b->router, ZMQ_HEARTBEAT_IVL, &hb_ivl, sizeof hb_ivl);
    zmq_setsockopt(b->router, ZMQ_HEARTBEAT_TIMEOUT, &hb_timeout, sizeof hb_timeout);
    /* No ROUTER_HANDOVER: with it, any peer that connects with another
     * peer's routing id (shown by `brokerctl workers`) steals its traffic,
     * and two connections racing for one id trip a libzmq assertion. A
     * connection whose id is already live is ignored by ZeroMQ instead.
     * Reconnection never rests on an id: the library lets the ROUTER
     * assign one per connection; a worker registers again, an agent
     * reclaims its name with its HELLO instance (mailbox.c). */
    int zero = 0;
    zmq_setsockopt(b->router, ZMQ_ROUTER_HANDOVER, &zero, sizeof zero);
    if (ab_health_init(b) != 0) {
        AB_ERROR("cannot monitor the ROUTER socket: %s", zmq_strerror(errno));
        return -1;
    }
    for (int i = 0; i < cfg->nbinds; i++) {
        if (zmq_bind(b->router, cfg->binds[i]) != 0) {
            AB_ERROR("cannot bind %s: %s", cfg->binds[i], zmq_strerror(errno));
            return -1;
        }
        /* What was bound, not what was asked: port '*' or 0 becomes a real one. */
        char bound[256] = "";
        size_t blen = sizeof bound;
        if (zmq_getsockopt(b->router, ZMQ_LAST_ENDPOINT, bound, &blen) != 0 || !bound[0])
            snprintf(bound, sizeof bound, "%s", cfg->binds[i]);
        AB_INFO("listening on %s", bound);
    }
    return 0;
}

void ab_broker_fini(ab_broker_t *b)
{
    /* Requests first (they are owned by the pending table), then the worker
     * records that listed them, then peers and services. */
    for (size_t i = 0; i < b->pending.cap; i++)
        if (b->pending.keys[i])
            ab_req_destroy(b->pending.vals[i]);
    ab_idmap_fini(&b->pending);
    ab_msgs_fini(b);
    ab_router_fini(b);
    ab_cache_destroy(&b->cache);
    if (b->peers) {
        for (ab_peer_t *p = zhashx_first(b->peers); p; p = zhashx_next(b->peers)) {
            ab_worker_rec_t *w = p->worker;
            if (!w)
                continue;
            void *handle = zlistx_find(w->service->workers, w);
            if (handle)
                zlistx_delete(w->service->workers, handle);
            zhashx_destroy(&w->labels);
            ab_placement_forget(w);
            free(w);
            p->worker = NULL;
        }
        zhashx_destroy(&b->peer_keys);
        zhashx_destroy(&b->peers);
    }
    if (b->services)
        zhashx_destroy(&b->services);
    free(b->heap);
    ab_directory_fini(b);
    ab_health_fini(b);
    free(b->dirty);
    if (b->router)
        zmq_close(b->router);
    if (b->zctx)
        zmq_ctx_term(b->zctx);
}

/* --- peers ---------------------------------------------------------------- */
static void s_rid_key(const ab_rid_t *rid, char *key)
{
    ab_hex(rid->bytes, rid->len, key, 2 * AB_RID_MAX + 1);
}

ab_peer_t *ab_peer_lookup(ab_broker_t *b, const ab_rid_t *rid)
{
    return zhashx_lookup(b->peers, rid);
}

ab_peer_t *ab_peer_by_key(ab_broker_t *b, const char *key)
{
    return zhashx_lookup(b->peer_keys, key);
}

/* Names P with a random 64-bit token, unique among live peers. Never the
 * routing id: the ROUTER assigns ids in sequence from a random start, and a
 * peer that saw one could connect with the next ones (ZMQ_ROUTING_ID); when
 * libzmq (4.3) then assigns such an id to a new connection it aborts the
 * broker (an assertion in socket_base.cpp). So ids are never shown. */
static void s_peer_key(ab_broker_t *b, ab_peer_t *p)
{
    static uint64_t seq;
    for (int i = 0; i < 8; i++) {
        uint64_t v = 0;
        if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v)
            v = ab_hash_bytes(p->rid.bytes, p->rid.len) ^ ab_now_ns() ^ ++seq;
        snprintf(p->key, sizeof p->key, "%016llx", (unsigned long long)v);
        if (!zhashx_lookup(b->peer_keys, p->key))
            break;
    }
    zhashx_update(b->peer_keys, p->key, p);
}

/* Creates the record of a peer not seen before. */
static ab_peer_t *s_peer_new(ab_broker_t *b, const ab_rid_t *rid, ab_role_t role, int64_t now)
{
    ab_peer_t *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->rid = *rid;
    s_peer_key(b, p);
    p->role = role;
    p->connected_ms = p->last_seen_ms = now;
    p->heartbeat_ms = b->cfg->heartbeat_ms;
    p->fd = -1;
    zhashx_insert(b->peers, &p->rid, p);
    AB_DEBUG("peer %s connected", p->key);
    return p;
}

void ab_peer_drop(ab_broker_t *b, ab_peer_t *peer, const char *why)
{
    /* Agents come and go all day; a worker leaving matters to an operator. */
    AB_LOG(peer->worker ? AB_LOG_INFO : AB_LOG_DEBUG, "peer %s (%s%s%s) dropped: %s", peer->key,
           peer->worker ? "worker" : "agent", peer->name[0] ? " " : "", peer->name, why);
    ab_directory_forget(b, &peer->rid);
    int agent = !peer->worker;
    if (peer->worker)
        ab_worker_detach(b, peer->worker, why);
    ab_cancel_client_gone(b, peer, agent); /* frees their workers' slots */
    ab_msgs_peer_gone(b, peer);
    ab_batching_peer_free(b, peer);
    ab_router_peer_gone(b, peer);
    if (zhashx_lookup(b->peer_keys, peer->key) == peer)
        zhashx_delete(b->peer_keys, peer->key);
    zhashx_delete(b->peers, &peer->rid);
}

static void s_sweep_peers(ab_broker_t *b, int64_t now)
{
    /* Collect first: deleting while iterating a zhashx is not allowed; by
     * rid, since dropping one peer may drop another (re-dispatch). */
    ab_rid_t dead[256];
    size_t n = 0;
    for (ab_peer_t *p = zhashx_first(b->peers); p && n < 256; p = zhashx_next(b->peers)) {
        int64_t ivl = p->heartbeat_ms > b->cfg->heartbeat_ms ? p->heartbeat_ms : b->cfg->heartbeat_ms;
        if (p->worker && p->worker->health.expect_ms > ivl)
            ivl = p->worker->health.expect_ms; /* adaptive interval (health.c) */
        if (now - p->last_seen_ms > ivl * b->cfg->liveness)
            dead[n++] = p->rid;
    }
    for (size_t i = 0; i < n; i++) {
        ab_peer_t *p = ab_peer_lookup(b, &dead[i]);
        if (p)
            ab_peer_drop(b, p, "heartbeat timeout");
    }
}

/* --- receive path ----------------------------------------------------------- */
typedef struct {
    ab_rid_t rid;
    ab_header_t h;
    zmq_msg_t hdr, body;
    int has_body;
    int64_t now;
    int fd; /* the connection it came on (ZMQ_SRCFD) */
} s_in_t;

static void s_reject(ab_broker_t *b, s_in_t *in, int status, size_t nframes)
{
    char key[2 * AB_RID_MAX + 1];
    b->c.malformed++;
    AB_COUNT_REJECTED(b, status);
    s_rid_key(&in->rid, key);
    AB_LOG_RL(&b->rl, ab_hash_bytes(in->rid.bytes, in->rid.len), in->now, AB_LOG_WARN,
              "malformed message from %s (%zu frames): %s", key, nframes, ab_strerror(status));
    char text[160];
    snprintf(text, sizeof text, "%s: %s", ab_status_name(status), ab_strerror(status));
    /* Never answer an ERROR with an ERROR: two confused peers could loop. */
    if (in->h.kind != AB_KIND_ERROR)
        ab_send_error(b, &in->rid, in->h.id, ab_status_to_wire(status), text);
}

static void s_on_hello(ab_broker_t *b, s_in_t *in, ab_peer_t *p, const ab_frame_t *pl)
{
    char claim[AB_NAME_MAX] = "";
    int takeover = 0;
    uint64_t instance = 0;
    if (pl->size) {
        Agentbus__Hello *m = agentbus__hello__unpack(NULL, pl->size, pl->data);
        if (!m) {
            s_reject(b, in, AB_EDECODE, 2);
            return;
        }
        snprintf(p->name, sizeof p->name, "%s", m->name);
        if (strcmp(m->role, "control") == 0 && !p->worker)
            p->role = AB_ROLE_CONTROL;
        if (m->heartbeat_ms >= 50 && m->heartbeat_ms <= 600000)
            p->heartbeat_ms = m->heartbeat_ms;
        if (strcmp(m->role, "agent") == 0 && m->name[0])
            snprintf(claim, sizeof claim, "%s", m->name);
        takeover = m->takeover;
        instance = m->instance;
        p->features = m->features;
        agentbus__hello__free_unpacked(m, NULL);
    }
    /* Tell the peer the heartbeat interval the broker wants. */
    ab_header_t h = ab_header_init(AB_KIND_HELLO);
    h.correlation_id = in->h.id;
    h.credit = (uint32_t)b->cfg->heartbeat_ms;
    h.features = ab_batching_features(b);
    ab_send(b, &in->rid, &h, NULL);
    if (claim[0]) /* after the answer: a mailbox may follow it */
        ab_mailbox_on_hello(b, p, claim, takeover, instance, in->h.id, in->now);
}

/* A REGISTER over a limit: answered CODE, counted; nothing of it is kept
 * (a first one leaves P a plain agent). */
static void s_register_refuse(ab_broker_t *b, s_in_t *in, ab_peer_t *p, uint32_t code,
                              const char *why)
{
    b->c.registers_refused++;
    AB_COUNT_ERROR(b, code);
    if (!p->worker)
        p->role = AB_ROLE_AGENT;
    AB_LOG_RL(&b->rl, ab_hash_bytes(in->rid.bytes, in->rid.len) ^ 0x7e61, in->now, AB_LOG_WARN,
              "REGISTER from %s refused: %s", p->key, why);
    ab_send_error(b, &in->rid, in->h.id, code, why);
}

static void s_on_register(ab_broker_t *b, s_in_t *in, ab_peer_t *p, const ab_frame_t *pl)
{
    char name[AB_NAME_MAX];
    ab_view_copy(in->h.target, name, sizeof name);
    if (in->h.target.len >= AB_NAME_MAX) {
        s_reject(b, in, AB_EDECODE, 2);
        return;
    }
    Agentbus__Register *m = NULL;
    char why[160];
    if (ab_register_check(b->cfg, pl->size, NULL, why, sizeof why) != 0) {
        s_register_refuse(b, in, p, AB_ERR_TOO_LARGE, why);
        return;
    }
    if (pl->size && !(m = agentbus__register__unpack(NULL, pl->size, pl->data))) {
        s_reject(b, in, AB_EDECODE, 2);
        return;
    }
    if (m && ab_register_check(b->cfg, pl->size, m, why, sizeof why) != 0) {
        agentbus__register__free_unpacked(m, NULL);
        s_register_refuse(b, in, p, AB_ERR_TOO_LARGE, why);
        return;
    }
    ab_service_t *s = ab_service_get(b, name, 1);
    if (!s) {
        if (m)
            agentbus__register__free_unpacked(m, NULL);
        if (zhashx_size(b->services) >= (size_t)b->cfg->max_services)
            s_register_refuse(b, in, p, AB_ERR_BUSY, "too many services (max-services)");
        else
            ab_send_error(b, &in->rid, in->h.id, AB_ERR_INTERNAL, "out of memory");
        return;
    }
    /* Inference workers register again whenever their models or slots
     * change: that is routine, not news for the log. */
    int again = p->worker && p->worker->service == s;
    if (p->worker && p->worker->service != s)
        ab_worker_detach(b, p->worker, "re-registered for another service");
    p->role = AB_ROLE_WORKER;
    s->provisional = 0;
    int joined = p->worker == NULL;
    ab_worker_attach(b, p, s, in->h.credit);
    if (!p->worker) {
        if (m)
            agentbus__register__free_unpacked(m, NULL);
        ab_send_error(b, &in->rid, in->h.id, AB_ERR_INTERNAL, "out of memory");
        return;
    }
    if (m) {
        snprintf(p->name, sizeof p->name, "%s", m->name);
        if (m->heartbeat_ms >= 50 && m->heartbeat_ms <= 600000)
            p->heartbeat_ms = m->heartbeat_ms;
        p->features = m->features;
        zhashx_purge(p->worker->labels);
        for (size_t i = 0; i < m->n_labels; i++)
            zhashx_update(p->worker->labels, m->labels[i]->key, m->labels[i]->value);
        ab_placement_update(p->worker, m->inference); /* takes it */
        m->inference = NULL;
        agentbus__register__free_unpacked(m, NULL);
    }
    AB_LOG(again ? AB_LOG_DEBUG : AB_LOG_INFO, "worker %s%s%s registered for '%s' with capacity %u",
           p->key, p->name[0] ? " " : "", p->name, name, in->h.credit);
    if (joined)
        ab_directory_event(b, p->worker, "join");
    ab_header_t h = ab_header_init(AB_KIND_REGISTER);
    h.correlation_id = in->h.id;
    h.target = in->h.target;
    h.credit = p->worker->health.interval_ms; /* adaptive: health.c */
    h.features = ab_batching_features(b);
    ab_send(b, &in->rid, &h, NULL);
    ab_service_dispatch(b, s);
}

static void s_on_request(ab_broker_t *b, s_in_t *in, ab_peer_t *p)
{
    char name[AB_NAME_MAX];
    if (in->h.target.len >= AB_NAME_MAX) {
        ab_send_error(b, &in->rid, in->h.id, AB_ERR_NO_SERVICE, "service name too long");
        AB_COUNT_ERROR(b, AB_ERR_NO_SERVICE);
        return;
    }
    ab_view_copy(in->h.target, name, sizeof name);
    b->c.requests++;
    ab_service_t *s = ab_service_get(b, name, 0);
    if (!s && !b->grace_over) {
        /* Just (re)started: its workers may be reconnecting right now. */
        if ((s = ab_service_get(b, name, 1)))
            s->provisional = 1;
    }
    if (!s) {
        char text[AB_NAME_MAX + 64];
        snprintf(text, sizeof text, "no service '%s' is registered", name);
        AB_COUNT_ERROR(b, AB_ERR_NO_SERVICE);
        ab_send_error(b, &in->rid, in->h.id, AB_ERR_NO_SERVICE, text);
        return;
    }
    s->requests++;
    if (b->draining) {
        s->errors++;
        AB_COUNT_ERROR(b, AB_ERR_BUSY);
        ab_send_error(b, &in->rid, in->h.id, AB_ERR_BUSY, "broker is shutting down");
        return;
    }
    if (p && p->in_flight >= (uint32_t)b->cfg->max_client_inflight) {
        s->errors++;
        AB_COUNT_ERROR(b, AB_ERR_BUSY);
        b->c.client_limit_busy++;
        ab_send_error(b, &in->rid, in->h.id, AB_ERR_BUSY,
                      "this client has too many requests in flight (max-client-inflight)");
        return;
    }
    if (p && ab_peer_over(b, p)) { /* it does not read its answers (router.c) */
        s->errors++;
        AB_COUNT_ERROR(b, AB_ERR_BUSY);
        b->c.out_busy++;
        ab_send_error(b, &in->rid, in->h.id, AB_ERR_BUSY,
                      "this client has not read its earlier answers (peer-out-max-bytes)");
        return;
    }
    ab_cache_req_t *cr = NULL;
    if (ab_cache_on_request(b, s, &in->rid, p ? p->features : 0, &in->h,
                            in->has_body ? &in->body : NULL, in->now, &cr))
        return; /* answered from the cache */
    if (!ab_service_admit(b, s)) {
        ab_cache_req_free(&cr);
        s->errors++;
        AB_COUNT_ERROR(b, AB_ERR_BUSY);
        ab_send_error(b, &in->rid, in->h.id, AB_ERR_BUSY,
                      s->q_len >= (uint32_t)b->cfg->queue_max ? "service queue is full"
                                                              : "broker holds too many requests");
        return;
    }
    ab_req_t *r = calloc(1, sizeof *r);
    if (!r) {
        ab_cache_req_free(&cr);
        ab_send_error(b, &in->rid, in->h.id, AB_ERR_INTERNAL, "out of memory");
        return;
    }
    r->bid = ++b->next_bid;
    r->client_id = in->h.id;
    r->client = in->rid;
    r->service = s;
    r->flags = in->h.flags;
    r->original_size = in->h.original_size;
    r->priority = in->h.priority;
    r->start_us = ab_now_us();
    r->cache = cr;
    if (ab_route_init(r, &in->h) != 0) {
        ab_cache_req_free(&r->cache);
        free(r);
        ab_send_error(b, &in->rid, in->h.id, AB_ERR_INTERNAL, "out of memory");
        return;
    }
    int64_t t = in->h.timeout_ms ? in->h.timeout_ms : b->cfg->default_timeout_ms;
    r->deadline_ms = in->now + (t < b->cfg->max_timeout_ms ? t : b->cfg->max_timeout_ms);
    if (in->has_body) {
        zmq_msg_init(&r->payload);
        zmq_msg_move(&r->payload, &in->body);
        r->has_payload = 1;
    }
    if (ab_idmap_put(&b->pending, r->bid, r) != 0) {
        ab_req_destroy(r);
        ab_send_error(b, &in->rid, in->h.id, AB_ERR_INTERNAL, "out of memory");
        return;
    }
    ab_service_hold(b, r); /* a service is not idle while a request names it */
    if (p) {
        p->in_flight++;
        r->client_counted = 1;
        ab_client_track(p, r); /* CANCEL and departure find it (placement.c) */
    }
    ab_heap_push(b, r);
    if (r->cache && ab_cache_join(b, r))
        return; /* waits for an identical request in flight */
    ab_service_enqueue(b, s, r);
    ab_service_dispatch(b, s);
}

/* Forwards the answer IN to R's client. */
static void s_forward(ab_broker_t *b, s_in_t *in, ab_req_t *r)
{
    ab_header_t h = ab_header_init(in->h.kind);
    h.correlation_id = r->client_id;
    h.flags = in->h.flags;
    h.original_size = in->h.original_size;
    h.error_code = in->h.error_code;
    h.error_text = in->h.error_text;
    ab_send(b, &r->client, &h, in->has_body ? &in->body : NULL);
}

/* Counts a final answer to R in its service's figures. */
static void s_count_final(ab_broker_t *b, s_in_t *in, ab_req_t *r)
{
    ab_service_t *s = r->service;
    ab_service_latency(s, ab_now_us() - r->start_us);
    if (in->h.kind == AB_KIND_ERROR) {
        s->errors++;
        AB_COUNT_ERROR(b, in->h.error_code);
    } else {
        s->replies++;
        b->c.replies++;
    }
}

/* A final answer from a worker that was presumed dead (or ejected) while
 * holding R: the first answer wins. R may be queued again (it leaves the
 * queue) or held by another worker (it stays there, orphaned, until that
 * worker answers; that answer is then a counted duplicate). */
static void s_late_answer(ab_broker_t *b, s_in_t *in, ab_req_t *r, uint64_t from)
{
    if (r->cache)
        ab_cache_on_answer(b, r, &in->h, in->has_body ? &in->body : NULL);
    s_forward(b, in, r);
    s_count_final(b, in, r);
    b->c.late_replies++;
    ab_health_note_answered(b, r, from);
    ab_req_client_done(b, r);
    if (r->state == AB_REQ_QUEUED) {
        ab_req_free(b, r);
        return;
    }
    r->state = AB_REQ_ORPHANED;
    r->answered = 1;
    if (r->has_payload) {
        zmq_msg_close(&r->payload);
        r->has_payload = 0;
    }
    ab_heap_remove(b, r);
}

/* PARTIAL, REPLY or ERROR from a worker, answering the broker id in
 * correlation_id. Only a worker that was given the request may answer it
 * (request ids are sequential: an agent must not answer for a service). */
static void s_on_answer(ab_broker_t *b, s_in_t *in, ab_peer_t *p)
{
    uint64_t corr = in->h.correlation_id, from = ab_rid_hash(&in->rid);
    ab_req_t *r = ab_idmap_get(&b->pending, corr);
    int final = in->h.kind != AB_KIND_PARTIAL;
    int holder = r && r->state != AB_REQ_QUEUED && p && p->worker && r->worker == p->worker;
    int late = r && !holder && ab_req_tried(r, from);
    if (!holder && !late) {
        b->c.replies_dropped++;
        if (final && ab_health_is_dup(b, corr, from))
            b->c.duplicates_dropped++;
        AB_DEBUG("dropped %s for unknown request %llu", ab_kind_name(in->h.kind),
                 (unsigned long long)corr);
        return;
    }
    if (r->state == AB_REQ_ORPHANED || (late && !final)) {
        /* The client has its answer (DEADLINE, or another worker's reply);
         * or a presumed-dead worker streams a chunk: the request may run
         * elsewhere by now, so a part of it could interleave. */
        b->c.replies_dropped++;
        if (final && r->answered)
            b->c.duplicates_dropped++;
        /* The client got DEADLINE, but others may wait for this answer
         * (single-flight), and a whole reply is still worth storing. */
        if (holder && r->cache && !r->answered && r->state == AB_REQ_ORPHANED)
            ab_cache_on_answer(b, r, &in->h, in->has_body ? &in->body : NULL);
        if (final && holder) {
            ab_req_free(b, r);
            b->hs.kick = 1; /* its credit is back: the queue may move */
        }
        return;
    }
    if (late) {
        s_late_answer(b, in, r, from);
        return;
    }
    /* An Ollama worker's backend pushed back (503, down) before anything
     * streamed: placement hands the request to another capable worker. */
    if (final && in->h.kind == AB_KIND_ERROR && ab_placement_retry(b, r, in->h.error_code))
        return;
    if (r->cache) /* before the payload is moved on: waiters and the store copy it */
        ab_cache_on_answer(b, r, &in->h, in->has_body ? &in->body : NULL);
    s_forward(b, in, r);
    if (!final) {
        r->streamed = 1;
        if (r->route)
            r->route->streamed = 1;
        return;
    }
    s_count_final(b, in, r);
    ab_service_t *s = r->service;
    ab_worker_rec_t *w = r->worker;
    w->completed++;
    if (r->attempts > 1)
        ab_health_note_answered(b, r, from);
    ab_req_free(b, r);
    ab_health_on_result(b, w, in->h.kind != AB_KIND_ERROR);
    ab_service_dispatch(b, s);
}

static void s_on_control(ab_broker_t *b, s_in_t *in)
{
    char what[64];
    ab_view_copy(in->h.target, what, sizeof what);
    uint8_t *buf = NULL;
    size_t len = 0;
    const char *err = NULL;
    if (strncmp(what, "cache", 5) == 0 && (!what[5] || what[5] == ' ')) {
        if (ab_cache_control(b, what, &buf, &len, &err) != 0) {
            ab_send_error(b, &in->rid, in->h.id, AB_ERR_UNSUPPORTED, err);
            return;
        }
    } else if (ab_stats_answer(b, what, &buf, &len) != 0) {
        ab_send_error(b, &in->rid, in->h.id, AB_ERR_UNSUPPORTED,
                      "unknown control query (try stats, services, workers, agents)");
        return;
    }
    ab_header_t h = ab_header_init(AB_KIND_REPLY);
    h.correlation_id = in->h.id;
    ab_peer_t *p = ab_peer_lookup(b, &in->rid);
    ab_batching_compress(b, p ? p->features : 0, &h, &buf, &len);
    zmq_msg_t m;
    zmq_msg_init_size(&m, len);
    if (len)
        memcpy(zmq_msg_data(&m), buf, len);
    free(buf);
    ab_send(b, &in->rid, &h, &m);
    zmq_msg_close(&m);
}

static void s_route(ab_broker_t *b, s_in_t *in, const ab_frame_t *pl)
{
    ab_peer_t *p = ab_peer_lookup(b, &in->rid);
    if (p) {
        p->last_seen_ms = in->now;
        p->fd = in->fd;
    }
    switch (in->h.kind) {
    case AB_KIND_HELLO:
        if (p || (p = s_peer_new(b, &in->rid, AB_ROLE_AGENT, in->now))) {
            p->fd = in->fd;
            s_on_hello(b, in, p, pl);
        }
        break;
    case AB_KIND_REGISTER:
        if (p || (p = s_peer_new(b, &in->rid, AB_ROLE_WORKER, in->now))) {
            p->fd = in->fd;
            s_on_register(b, in, p, pl);
        }
        break;
    case AB_KIND_REQUEST:
        if (p || (p = s_peer_new(b, &in->rid, AB_ROLE_AGENT, in->now))) {
            p->fd = in->fd;
            p->requests++;
            if (p->role == AB_ROLE_CONTROL)
                p->role = AB_ROLE_AGENT;
        }
        /* The worker may compress its reply only if this client reads lz4. */
        in->h.flags &= ~(uint32_t)AB_FLAG_ACCEPT_LZ4;
        if (p && (p->features & AB_FEATURE_LZ4))
            in->h.flags |= AB_FLAG_ACCEPT_LZ4;
        s_on_request(b, in, p);
        break;
    case AB_KIND_PARTIAL:
    case AB_KIND_REPLY:
        s_on_answer(b, in, p);
        break;
    case AB_KIND_ERROR:
        if (in->h.correlation_id)
            s_on_answer(b, in, p);
        break;
    case AB_KIND_HEARTBEAT:
        if (p && p->worker)
            ab_health_on_heartbeat(b, p->worker, pl->data, pl->size, in->now);
        if (!p) { /* we forgot this peer (restart, expiry): ask it to say HELLO again */
            ab_header_t h = ab_header_init(AB_KIND_HELLO);
            h.credit = (uint32_t)b->cfg->heartbeat_ms;
            ab_send(b, &in->rid, &h, NULL);
        }
        break;
    case AB_KIND_CONTROL:
        /* A peer that only asks the broker questions is an operator's tool. */
        if (!p) {
            if ((p = s_peer_new(b, &in->rid, AB_ROLE_CONTROL, in->now)))
                p->fd = in->fd;
        } else if (!p->worker && p->requests == 0)
            p->role = AB_ROLE_CONTROL;
        s_on_control(b, in);
        break;
    case AB_KIND_BYE:
        /* A draining worker gets nothing new and finishes what it holds;
         * its final BYE hands back whatever it did not finish. */
        if (p && p->worker && (in->h.flags & AB_FLAG_DRAINING))
            ab_health_on_draining(b, p->worker);
        else if (p)
            ab_peer_drop(b, p, "said goodbye");
        break;
    case AB_KIND_DISCOVER:
        if (!p && (p = s_peer_new(b, &in->rid, AB_ROLE_CONTROL, in->now)))
            p->fd = in->fd;
        ab_directory_on_discover(b, &in->rid, &in->h);
        break;
    case AB_KIND_CANCEL:
        ab_cancel_from_client(b, &in->rid, in->h.correlation_id);
        break;
    case AB_KIND_SEND:
    case AB_KIND_PUBLISH:
    case AB_KIND_SUBSCRIBE:
        if (p || (p = s_peer_new(b, &in->rid, AB_ROLE_AGENT, in->now))) {
            p->fd = in->fd; /* its connection: bytes in flight (router.c) */
            ab_msgs_route(b, p, &in->h, in->has_body ? &in->body : NULL, in->now);
        }
        break;
    default:
        AB_COUNT_ERROR(b, AB_ERR_UNSUPPORTED);
        ab_send_error(b, &in->rid, in->h.id, AB_ERR_UNSUPPORTED,
                      "message kind not supported by this broker");
        break;
    }
}

/* Receives one whole multipart message. Returns 0, or -1 when none waits. */
static int s_recv_one(ab_broker_t *b, int64_t now)
{
    zmq_msg_t f[4];
    size_t n = 0, bytes = 0;
    int more = 1;
    while (more) {
        zmq_msg_t *m = &f[n < 4 ? n : 3];
        if (n >= 4)
            zmq_msg_close(m); /* frames past the 4th: counted, discarded */
        zmq_msg_init(m);
        if (zmq_msg_recv(m, b->router, n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            zmq_msg_close(m);
            if (n == 0)
                return -1;
            break; /* cannot happen: ZeroMQ delivers multipart atomically */
        }
        bytes += zmq_msg_size(m);
        more = zmq_msg_more(m);
        n++;
    }
    b->c.msgs_in++;
    b->c.bytes_in += bytes;
    s_in_t in;
    in.now = now;
    size_t kept = n < 4 ? n : 4;
    in.rid.len = (uint8_t)(zmq_msg_size(&f[0]) <= AB_RID_MAX ? zmq_msg_size(&f[0]) : AB_RID_MAX);
    memcpy(in.rid.bytes, zmq_msg_data(&f[0]), in.rid.len);
    ab_frame_t frames[2] = {{NULL, 0}, {NULL, 0}};
    for (size_t i = 1; i < kept && i < 3; i++) {
        frames[i - 1].data = zmq_msg_data(&f[i]);
        frames[i - 1].size = zmq_msg_size(&f[i]);
    }
    /* The fd of its connection lets a monitor event name the peer. */
    in.fd = kept > 1 ? zmq_msg_get(&f[1], ZMQ_SRCFD) : -1;
    ab_frame_t pl;
    int rc = ab_msg_decode(frames, n - 1, &b->limits, &in.h, &pl);
    in.has_body = rc == AB_OK && n == 3;
    if (in.has_body) {
        zmq_msg_init(&in.body);
        zmq_msg_move(&in.body, &f[2]);
    }
    if (ab_router_refused(b, &in.rid, in.fd, &in.h))
        ; /* a connection over max-connections: answered once, then closed */
    else if (rc != AB_OK)
        s_reject(b, &in, rc, n - 1);
    else if (in.h.kind == AB_KIND_BATCH)
        ab_batching_recv(b, &in.rid, in.fd, now, &pl);
    else {
        ab_batching_note(b, &in.h, pl.size);
        s_route(b, &in, &pl);
    }
    if (in.has_body)
        zmq_msg_close(&in.body);
    for (size_t i = 0; i < kept; i++)
        zmq_msg_close(&f[i]);
    return 0;
}

/* SIGTERM: refuse new requests, let those held finish until drain-ms has
 * passed, answer the rest, stop. */
static void s_drain(ab_broker_t *b, int64_t now)
{
    if (!b->draining) {
        b->draining = 1;
        b->drain_end_ms = now + b->cfg->drain_ms;
        AB_INFO("draining: %zu requests held, up to %ld ms", ab_idmap_size(&b->pending),
                b->cfg->drain_ms);
    }
    size_t live = 0;
    for (size_t i = 0; i < b->pending.cap; i++)
        if (b->pending.keys[i] && ((ab_req_t *)b->pending.vals[i])->state != AB_REQ_ORPHANED)
            live++;
    if (live && now < b->drain_end_ms)
        return;
    uint64_t left[256];
    size_t n;
    do { /* collect, then fail: failing changes the table */
        n = 0;
        for (size_t i = 0; i < b->pending.cap && n < 256; i++) {
            ab_req_t *r = b->pending.keys[i] ? b->pending.vals[i] : NULL;
            if (r && r->state != AB_REQ_ORPHANED)
                left[n++] = r->bid;
        }
        for (size_t i = 0; i < n; i++) {
            ab_req_t *r = ab_idmap_get(&b->pending, left[i]);
            if (r)
                ab_req_fail(b, r, AB_ERR_INTERNAL,
                            "broker shut down before the request completed (drain-ms passed)");
        }
    } while (n == 256);
    AB_INFO("drained: %zu answered with an error", live);
    /* The last answers are still in the ROUTER's pipes: give them a moment
     * to leave before the socket closes (LINGER is 0 otherwise). */
    int linger = 1000;
    zmq_setsockopt(b->router, ZMQ_LINGER, &linger, sizeof linger);
    atomic_store(&b->stop, 1);
}

static void s_timers(ab_broker_t *b, int64_t now)
{
    ab_expire_deadlines(b, now);
    if (b->hs.recheck_ms && now >= b->hs.recheck_ms)
        ab_health_recheck(b, now);
    ab_msgs_timers(b, now);
    ab_cache_tick(b, now);
    if (!b->grace_over && now - b->started_ms >= b->cfg->startup_grace_ms) {
        ab_service_end_grace(b);
        b->grace_over = 1;
    }
    if (now >= b->next_sweep_ms) {
        s_sweep_peers(b, now);
        ab_service_expire_idle(b, now);
        ab_router_tick(b, now);
        ab_health_tick(b, now);
        ab_stats_tick(b, now);
        b->next_sweep_ms = now + AB_SWEEP_MS;
    }
}

int ab_broker_run(ab_broker_t *b)
{
    zmq_pollitem_t items[3] = {{b->router, 0, ZMQ_POLLIN, 0},
                               {b->monitor, 0, ZMQ_POLLIN, 0},
                               {ab_cache_pipe(b), 0, ZMQ_POLLIN, 0}};
    int nitems = items[2].socket ? 3 : 2; /* the L2 cache thread's answers */
    b->next_sweep_ms = ab_now_ms() + AB_SWEEP_MS;
    while (!atomic_load(&b->stop)) {
        int64_t now = ab_now_ms();
        int64_t wake = b->next_sweep_ms, dl = ab_next_deadline(b);
        if (dl && dl < wake)
            wake = dl;
        if (b->hs.recheck_ms && b->hs.recheck_ms < wake)
            wake = b->hs.recheck_ms;
        int64_t mw = ab_msgs_next_wake(b);
        if (mw && mw < wake)
            wake = mw;
        long timeout = wake > now ? (long)(wake - now) : 0;
        if (atomic_load(&b->term))
            timeout = timeout > 50 ? 50 : timeout; /* check the drain often */
        int rc = zmq_poll(items, nitems, timeout);
        if (rc < 0 && errno != EINTR) {
            AB_ERROR("zmq_poll failed: %s", zmq_strerror(errno));
            return -1;
        }
        now = ab_now_ms();
        for (int i = 0; i < AB_RECV_BURST && !atomic_load(&b->stop); i++) {
            if (s_recv_one(b, now) != 0)
                break;
            if ((i & 31) == 31)
                ab_batching_check_age(b);
        }
        /* Socket events after the messages: what a peer sent before its
         * connection closed (last replies, BYE) is handled first. */
        if (items[1].revents & ZMQ_POLLIN)
            ab_health_monitor_drain(b);
        if (nitems == 3)
            ab_cache_on_pipe(b);
        s_timers(b, ab_now_ms());
        ab_health_kick(b);
        if (atomic_load(&b->term))
            s_drain(b, ab_now_ms());
        ab_batching_flush_all(b); /* end of the turn: what was gathered goes out */
    }
    AB_INFO("stopping: %zu requests pending", ab_idmap_size(&b->pending));
    return 0;
}

void ab_route_frames(ab_broker_t *b, const ab_rid_t *rid, int fd, int64_t now,
                     const ab_frame_t *f, size_t nframes)
{
    s_in_t in;
    in.now = now;
    in.rid = *rid;
    in.fd = fd; /* the BATCH's connection: the socket monitor maps closes by it */
    ab_frame_t pl;
    int rc = ab_msg_decode(f, nframes, &b->limits, &in.h, &pl);
    in.has_body = rc == AB_OK && nframes == 2;
    if (in.has_body) { /* a request keeps its payload as a message of its own */
        zmq_msg_init_size(&in.body, pl.size);
        if (pl.size)
            memcpy(zmq_msg_data(&in.body), pl.data, pl.size);
    }
    if (rc != AB_OK) {
        s_reject(b, &in, rc, nframes);
    } else {
        ab_batching_note(b, &in.h, pl.size);
        s_route(b, &in, &pl);
    }
    if (in.has_body)
        zmq_msg_close(&in.body);
}
