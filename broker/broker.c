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
#include "cache.h"
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

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
    b->services = zhashx_new();
    zhashx_set_destructor(b->services, ab_service_free);
    if (ab_idmap_init(&b->pending, 1024) != 0)
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
    for (int i = 0; i < cfg->nbinds; i++) {
        if (zmq_bind(b->router, cfg->binds[i]) != 0) {
            AB_ERROR("cannot bind %s: %s", cfg->binds[i], zmq_strerror(errno));
            return -1;
        }
        AB_INFO("listening on %s", cfg->binds[i]);
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
        zhashx_destroy(&b->peers);
    }
    if (b->services)
        zhashx_destroy(&b->services);
    free(b->heap);
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

/* Creates the record of a peer not seen before. */
static ab_peer_t *s_peer_new(ab_broker_t *b, const ab_rid_t *rid, ab_role_t role, int64_t now)
{
    ab_peer_t *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->rid = *rid;
    s_rid_key(rid, p->key);
    p->role = role;
    p->connected_ms = p->last_seen_ms = now;
    p->heartbeat_ms = b->cfg->heartbeat_ms;
    zhashx_insert(b->peers, &p->rid, p);
    AB_DEBUG("peer %s connected", p->key);
    return p;
}

void ab_peer_drop(ab_broker_t *b, ab_peer_t *peer, const char *why)
{
    /* Agents come and go all day; a worker leaving matters to an operator. */
    AB_LOG(peer->worker ? AB_LOG_INFO : AB_LOG_DEBUG, "peer %s (%s%s%s) dropped: %s", peer->key,
           peer->worker ? "worker" : "agent", peer->name[0] ? " " : "", peer->name, why);
    if (peer->worker)
        ab_worker_detach(b, peer->worker, why);
    else if (peer->requests)
        ab_cancel_client_gone(b, &peer->rid); /* frees their workers' slots */
    zhashx_delete(b->peers, &peer->rid);
}

static void s_sweep_peers(ab_broker_t *b, int64_t now)
{
    /* Collect first: deleting while iterating a zhashx is not allowed. */
    ab_peer_t *dead[256];
    size_t n = 0;
    for (ab_peer_t *p = zhashx_first(b->peers); p && n < 256; p = zhashx_next(b->peers)) {
        int64_t ivl = p->heartbeat_ms > b->cfg->heartbeat_ms ? p->heartbeat_ms : b->cfg->heartbeat_ms;
        if (now - p->last_seen_ms > ivl * b->cfg->liveness)
            dead[n++] = p;
    }
    for (size_t i = 0; i < n; i++)
        ab_peer_drop(b, dead[i], "heartbeat timeout");
}

/* --- receive path ----------------------------------------------------------- */
typedef struct {
    ab_rid_t rid;
    ab_header_t h;
    zmq_msg_t hdr, body;
    int has_body;
    int64_t now;
} s_in_t;

static void s_reject(ab_broker_t *b, s_in_t *in, int status, size_t nframes)
{
    char key[2 * AB_RID_MAX + 1];
    b->c.malformed++;
    b->c.rejected[-status < 32 ? -status : 31]++;
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
        agentbus__hello__free_unpacked(m, NULL);
    }
    /* Tell the peer the heartbeat interval the broker wants. */
    ab_header_t h = ab_header_init(AB_KIND_HELLO);
    h.correlation_id = in->h.id;
    h.credit = (uint32_t)b->cfg->heartbeat_ms;
    ab_send(b, &in->rid, &h, NULL);
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
    if (pl->size && !(m = agentbus__register__unpack(NULL, pl->size, pl->data))) {
        s_reject(b, in, AB_EDECODE, 2);
        return;
    }
    ab_service_t *s = ab_service_get(b, name, 1);
    if (!s) {
        if (m)
            agentbus__register__free_unpacked(m, NULL);
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
    ab_worker_attach(b, p, s, in->h.credit);
    if (m) {
        snprintf(p->name, sizeof p->name, "%s", m->name);
        if (m->heartbeat_ms >= 50 && m->heartbeat_ms <= 600000)
            p->heartbeat_ms = m->heartbeat_ms;
        zhashx_purge(p->worker->labels);
        for (size_t i = 0; i < m->n_labels; i++)
            zhashx_update(p->worker->labels, m->labels[i]->key, m->labels[i]->value);
        ab_placement_update(p->worker, m->inference); /* takes it */
        m->inference = NULL;
        agentbus__register__free_unpacked(m, NULL);
    }
    AB_LOG(again ? AB_LOG_DEBUG : AB_LOG_INFO, "worker %s%s%s registered for '%s' with capacity %u",
           p->key, p->name[0] ? " " : "", p->name, name, in->h.credit);
    ab_header_t h = ab_header_init(AB_KIND_REGISTER);
    h.correlation_id = in->h.id;
    h.target = in->h.target;
    h.credit = (uint32_t)b->cfg->heartbeat_ms;
    ab_send(b, &in->rid, &h, NULL);
    ab_service_dispatch(b, s);
}

static void s_on_request(ab_broker_t *b, s_in_t *in)
{
    char name[AB_NAME_MAX];
    if (in->h.target.len >= AB_NAME_MAX) {
        ab_send_error(b, &in->rid, in->h.id, AB_ERR_NO_SERVICE, "service name too long");
        b->c.errors_sent[AB_ERR_NO_SERVICE]++;
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
        b->c.errors_sent[AB_ERR_NO_SERVICE]++;
        ab_send_error(b, &in->rid, in->h.id, AB_ERR_NO_SERVICE, text);
        return;
    }
    s->requests++;
    ab_cache_req_t *cr = NULL;
    if (ab_cache_on_request(b, s, &in->rid, &in->h, in->has_body ? &in->body : NULL, in->now,
                            &cr))
        return; /* answered from the cache */
    if (!ab_service_admit(b, s)) {
        ab_cache_req_free(&cr);
        s->errors++;
        b->c.errors_sent[AB_ERR_BUSY]++;
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
    ab_heap_push(b, r);
    if (r->cache && ab_cache_join(b, r))
        return; /* waits for an identical request in flight */
    ab_service_enqueue(b, s, r);
    ab_service_dispatch(b, s);
}

/* PARTIAL, REPLY or ERROR from a worker, answering the broker id in
 * correlation_id. */
static void s_on_answer(ab_broker_t *b, s_in_t *in, ab_peer_t *p)
{
    ab_req_t *r = ab_idmap_get(&b->pending, in->h.correlation_id);
    int final = in->h.kind != AB_KIND_PARTIAL;
    /* Only the worker holding a request may answer it: request ids are
     * sequential, and an agent must not be able to answer for a service. */
    if (!r || r->state == AB_REQ_QUEUED || !p || !p->worker || r->worker != p->worker) {
        b->c.replies_dropped++;
        AB_DEBUG("dropped %s for unknown request %llu", ab_kind_name(in->h.kind),
                 (unsigned long long)in->h.correlation_id);
        return;
    }
    if (r->state == AB_REQ_ORPHANED) { /* client already got DEADLINE */
        b->c.replies_dropped++;
        if (r->cache) /* others may wait for it; a whole reply is still stored */
            ab_cache_on_answer(b, r, &in->h, in->has_body ? &in->body : NULL);
        if (final) {
            ab_service_t *os = r->service;
            ab_req_free(b, r);
            ab_service_dispatch(b, os); /* the worker's credit is back */
        }
        return;
    }
    if (final && in->h.kind == AB_KIND_ERROR && ab_placement_retry(b, r, in->h.error_code))
        return;
    if (r->cache)
        ab_cache_on_answer(b, r, &in->h, in->has_body ? &in->body : NULL);
    if (!final && r->route)
        r->route->streamed = 1;
    ab_header_t h = ab_header_init(in->h.kind);
    h.correlation_id = r->client_id;
    h.flags = in->h.flags;
    h.original_size = in->h.original_size;
    h.error_code = in->h.error_code;
    h.error_text = in->h.error_text;
    ab_send(b, &r->client, &h, in->has_body ? &in->body : NULL);
    if (!final)
        return;
    ab_service_t *s = r->service;
    uint64_t lat = ab_now_us() - r->start_us;
    ab_hist_record(&s->latency_us, lat);
    if (in->h.kind == AB_KIND_ERROR) {
        s->errors++;
        AB_COUNT_ERROR(b, in->h.error_code);
    } else {
        s->replies++;
        b->c.replies++;
    }
    if (r->worker)
        r->worker->completed++;
    ab_req_free(b, r);
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
                      "unknown control query (try stats, services, workers)");
        return;
    }
    zmq_msg_t m;
    zmq_msg_init_size(&m, len);
    if (len)
        memcpy(zmq_msg_data(&m), buf, len);
    free(buf);
    ab_header_t h = ab_header_init(AB_KIND_REPLY);
    h.correlation_id = in->h.id;
    ab_send(b, &in->rid, &h, &m);
    zmq_msg_close(&m);
}

static void s_route(ab_broker_t *b, s_in_t *in, const ab_frame_t *pl)
{
    ab_peer_t *p = ab_peer_lookup(b, &in->rid);
    if (p)
        p->last_seen_ms = in->now;
    switch (in->h.kind) {
    case AB_KIND_HELLO:
        if (p || (p = s_peer_new(b, &in->rid, AB_ROLE_AGENT, in->now)))
            s_on_hello(b, in, p, pl);
        break;
    case AB_KIND_REGISTER:
        if (p || (p = s_peer_new(b, &in->rid, AB_ROLE_WORKER, in->now)))
            s_on_register(b, in, p, pl);
        break;
    case AB_KIND_REQUEST:
        if (p || (p = s_peer_new(b, &in->rid, AB_ROLE_AGENT, in->now))) {
            p->requests++;
            if (p->role == AB_ROLE_CONTROL)
                p->role = AB_ROLE_AGENT;
        }
        s_on_request(b, in);
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
        if (!p) { /* we forgot this peer (restart, expiry): ask it to say HELLO again */
            ab_header_t h = ab_header_init(AB_KIND_HELLO);
            h.credit = (uint32_t)b->cfg->heartbeat_ms;
            ab_send(b, &in->rid, &h, NULL);
        }
        break;
    case AB_KIND_CONTROL:
        /* A peer that only asks the broker questions is an operator's tool. */
        if (!p)
            s_peer_new(b, &in->rid, AB_ROLE_CONTROL, in->now);
        else if (!p->worker && p->requests == 0)
            p->role = AB_ROLE_CONTROL;
        s_on_control(b, in);
        break;
    case AB_KIND_BYE:
        if (p)
            ab_peer_drop(b, p, "said goodbye");
        break;
    case AB_KIND_CANCEL:
        ab_cancel_from_client(b, &in->rid, in->h.correlation_id);
        break;
    default:
        b->c.errors_sent[AB_ERR_UNSUPPORTED]++;
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
    ab_frame_t pl;
    int rc = ab_msg_decode(frames, n - 1, &b->limits, &in.h, &pl);
    in.has_body = rc == AB_OK && n == 3;
    if (in.has_body) {
        zmq_msg_init(&in.body);
        zmq_msg_move(&in.body, &f[2]);
    }
    if (rc != AB_OK)
        s_reject(b, &in, rc, n - 1);
    else
        s_route(b, &in, &pl);
    if (in.has_body)
        zmq_msg_close(&in.body);
    for (size_t i = 0; i < kept; i++)
        zmq_msg_close(&f[i]);
    return 0;
}

static void s_timers(ab_broker_t *b, int64_t now)
{
    ab_expire_deadlines(b, now);
    ab_cache_tick(b, now);
    if (!b->grace_over && now - b->started_ms >= b->cfg->startup_grace_ms) {
        ab_service_end_grace(b);
        b->grace_over = 1;
    }
    if (now >= b->next_sweep_ms) {
        s_sweep_peers(b, now);
        ab_stats_tick(b, now);
        b->next_sweep_ms = now + AB_SWEEP_MS;
    }
}

int ab_broker_run(ab_broker_t *b)
{
    zmq_pollitem_t items[2] = {{b->router, 0, ZMQ_POLLIN, 0}, {ab_cache_pipe(b), 0, ZMQ_POLLIN, 0}};
    int nitems = items[1].socket ? 2 : 1; /* the L2 cache thread's answers */
    b->next_sweep_ms = ab_now_ms() + AB_SWEEP_MS;
    while (!b->stop) {
        int64_t now = ab_now_ms();
        int64_t wake = b->next_sweep_ms, dl = ab_next_deadline(b);
        if (dl && dl < wake)
            wake = dl;
        long timeout = wake > now ? (long)(wake - now) : 0;
        int rc = zmq_poll(items, nitems, timeout);
        if (rc < 0 && errno != EINTR) {
            AB_ERROR("zmq_poll failed: %s", zmq_strerror(errno));
            return -1;
        }
        now = ab_now_ms();
        for (int i = 0; i < AB_RECV_BURST && !b->stop; i++)
            if (s_recv_one(b, now) != 0)
                break;
        if (nitems == 2)
            ab_cache_on_pipe(b);
        s_timers(b, ab_now_ms());
    }
    AB_INFO("stopping: %zu requests pending", ab_idmap_size(&b->pending));
    return 0;
}
