/*
 * broker.c - the event loop and the receive path (the peer table: peer.c).
 *
 * One thread owns the ROUTER socket. Each turn drains every message that is
 * waiting (non-blocking receives), then runs the timers (request deadlines,
 * peer liveness, rate figures), then sleeps in zmq_poll until the next
 * message or the next timer. Nothing here blocks outside ZeroMQ.
 */
#include "broker.h"
#include "service.h"
#include "router.h"
#include "batching.h"
#include "health.h"
#include "directory.h"
#include "stats.h"
#include "metrics.h"
#include "placement.h"
#include "messaging.h"
#include "cache.h"
#include "request.h"
#include "clients.h"
#include "auth.h"
#include "link.h"
#include "audit.h"
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define AB_RECV_BURST 4096 /* messages per turn before timers get a look */
#define AB_TICKS_MAX 16    /* periodic timers the subsystems register */

struct ab_tick {
    ab_broker_t *b;
    ab_tick_fn *fn; /* NULL: a free slot */
    int id;
};

/* The peer and service tables. 0 or -1. */
static int s_tables_new(ab_broker_t *b)
{
    b->services = zhashx_new();
    if (b->services)
        zhashx_set_destructor(b->services, ab_service_free);
    return ab_peers_new(b) == 0 && b->services ? 0 : -1;
}

/* The ROUTER socket with its options (not bound yet). 0 or -1. */
static int s_router_new(ab_broker_t *b, ab_broker_config_t *cfg)
{
    b->zctx = zmq_ctx_new();
    b->router = zmq_socket(b->zctx, ZMQ_ROUTER);
    if (!b->zctx || !b->router)
        return -1;
    int one = 1, hwm = (int)cfg->sndhwm, linger = 0;
    int64_t maxmsg = (int64_t)(cfg->max_payload_bytes > cfg->max_header_bytes
                                   ? cfg->max_payload_bytes
                                   : cfg->max_header_bytes) + (1 << 20);
    /* ZMTP heartbeats find dead TCP peers without waiting for the app. */
    /* The broker's own PINGs are sparse (transport-ping-ms): libzmq 4.3
     * cancels a PING's timeout timer with a walk over every timer of its
     * I/O thread, so one PING a second per connection costs O(connections^2)
     * a second; at 1 s it saturated that thread at ~5,000 agents (issue 20,
     * docs/bench.md). A silent connection is still closed within
     * transport-ping-ms + heartbeat-ms x liveness; agents' heartbeats and
     * workers' suspicion usually find it first (docs/health.md). */
    int hb_ivl = (int)cfg->transport_ping_ms, hb_timeout = (int)(cfg->heartbeat_ms * cfg->liveness);
    zmq_setsockopt(b->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    for (int i = 0; i < cfg->nbinds; i++) /* an IPv6 address to bind: tcp://[::1]:5555 */
        if (strncmp(cfg->binds[i], "tcp://[", 7) == 0)
            zmq_setsockopt(b->router, ZMQ_IPV6, &one, sizeof one);
    zmq_setsockopt(b->router, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(b->router, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(b->router, ZMQ_LINGER, &linger, sizeof linger);
    /* A frame far beyond the payload limit costs the peer its connection
     * before the broker buffers it. */
    zmq_setsockopt(b->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    zmq_setsockopt(b->router, ZMQ_HEARTBEAT_IVL, &hb_ivl, sizeof hb_ivl);
    zmq_setsockopt(b->router, ZMQ_HEARTBEAT_TIMEOUT, &hb_timeout, sizeof hb_timeout);
    /* libzmq listens with a backlog of 100. Thousands of agents connecting
     * at once (a fleet started or reconnecting together) overflowed it
     * while the I/O thread accepted: the kernel dropped SYNs and final
     * ACKs and retried them for a minute, and a client whose side had
     * completed took itself as connected; 10,000 agents saw themselves
     * connected while the broker held 6,100 (issue 20, docs/bench.md). */
    int backlog = (int)cfg->listen_backlog;
    zmq_setsockopt(b->router, ZMQ_BACKLOG, &backlog, sizeof backlog);
    /* No ROUTER_HANDOVER: with it, any peer that connects with another
     * peer's routing id (shown by `brokerctl workers`) steals its traffic,
     * and two connections racing for one id trip a libzmq assertion. A
     * connection whose id is already live is ignored by ZeroMQ instead.
     * Reconnection never rests on an id: the library lets the ROUTER
     * assign one per connection; a worker registers again, an agent
     * reclaims its name with its HELLO instance (mailbox.c). */
    int zero = 0;
    zmq_setsockopt(b->router, ZMQ_ROUTER_HANDOVER, &zero, sizeof zero);
    return 0;
}

int ab_broker_init(ab_broker_t *b, ab_broker_config_t *cfg)
{
    memset(b, 0, sizeof *b);
    b->cfg = cfg;
    b->timers = zmq_timers_new();
    b->ticks = calloc(AB_TICKS_MAX, sizeof *b->ticks);
    if (!b->timers || !b->ticks)
        return -1;
    b->limits.max_header = cfg->max_header_bytes;
    b->limits.max_payload = cfg->max_payload_bytes;
    b->rl.interval_ms = 10000;
    b->started_ms = ab_now_ms();
    b->c.prev_ms = b->started_ms;
    b->agent_hb_ms = (uint32_t)cfg->heartbeat_ms;
    if (s_tables_new(b) != 0)
        return -1;
    if (ab_idmap_init(&b->pending, 1024) != 0)
        return -1;
    /* A window of requests answered whole in one turn drained the table
     * below 1/32 and halved it each turn (idmap.h): it keeps its peak. */
    b->pending.keep_cap = (size_t)1 << 16;
    /* Periodic work, in the order it runs each sweep: peers, services,
     * connections, health, rates (each owner registers its own). */
    /* Liveness is judged in whole intervals: a walk over every peer ten
     * times a second was ~1 ms of the loop each time with 10,000 agents. */
    long sweep = cfg->heartbeat_ms < 1000 ? cfg->heartbeat_ms : 1000;
    if (ab_broker_every(b, sweep > AB_SWEEP_MS ? sweep : AB_SWEEP_MS, ab_peers_sweep) < 0 ||
        ab_service_init(b) != 0 ||
        ab_router_init(b) != 0)
        return -1;
    if (ab_msgs_init(b) != 0 || ab_clients_init(b) != 0)
        return -1;
    b->cache = ab_cache_new(cfg); /* NULL: off */
    if (ab_cache_l3_missing(b->cache, cfg)) /* said on stderr */
        return -2;

    if (s_router_new(b, cfg) != 0)
        return -1;
    if (ab_health_init(b) != 0) {
        AB_ERROR("cannot monitor the ROUTER socket: %s", zmq_strerror(errno));
        return -1;
    }
    if (ab_stats_init(b) != 0)
        return -1;
    if (ab_metrics_init(b) != 0)
        return -1;
    if (ab_auth_init(b) != 0) /* before any bind: no handshake without ZAP */
        return -1;
    if (ab_link_init(b) != 0) /* after auth: links prove the broker's key */
        return -1;
    if (ab_audit_init(b) != 0)
        return -1;
    /* ipc endpoints first: they stay plain (auth.c), the ones after are
     * CURVE servers when auth is on. */
    for (int k = 0; k < 2 * cfg->nbinds; k++) {
        int i = k % cfg->nbinds, ipc_pass = k < cfg->nbinds;
        if ((strncmp(cfg->binds[i], "ipc://", 6) == 0) != ipc_pass)
            continue;
        if (ab_auth_bind(b, cfg->binds[i]) != 0) {
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
    /* Each owner frees its own: requests first (the lists of the others
     * point at them), then the worker records and services, then peers. */
    ab_metrics_fini(b); /* first: its HTTP thread serves no more */
    if (b->peers && b->clients && b->services)
        ab_audit_run(b, "at exit"); /* what is still held must add up too */
    ab_req_fini(b);
    ab_link_fini(b); /* before the peers: links point at them, never the reverse */
    ab_msgs_fini(b);
    ab_router_fini(b);
    ab_batch_entries_fini(&b->in_batch);
    ab_cache_destroy(&b->cache);
    ab_service_fini(b);
    b->peer_hint[0] = b->peer_hint[1] = NULL;
    if (b->peers) {
        zhashx_destroy(&b->peer_keys);
        zhashx_destroy(&b->peers);
    }
    ab_clients_fini(b); /* after the requests and peers that held them */
    ab_directory_fini(b);
    ab_health_fini(b);
    ab_auth_fini(b); /* after the peers: they point at its keys */
    if (b->router)
        zmq_close(b->router);
    if (b->zctx)
        zmq_ctx_term(b->zctx);
    for (int i = 0; b->router && i < b->cfg->nbinds; i++)
        ab_auth_ipc_unlink(b->cfg->binds[i]);
    if (b->timers)
        zmq_timers_destroy(&b->timers);
    free(b->ticks);
    b->ticks = NULL;
}

static void s_tick(int id, void *arg)
{
    (void)id;
    struct ab_tick *t = arg;
    t->fn(t->b, ab_now_ms());
}

int ab_broker_every(ab_broker_t *b, long ms, ab_tick_fn *fn)
{
    size_t i = 0;
    while (i < AB_TICKS_MAX && b->ticks[i].fn)
        i++;
    if (i == AB_TICKS_MAX || ms < 1)
        return -1;
    int id = zmq_timers_add(b->timers, (size_t)ms, s_tick, &b->ticks[i]);
    if (id >= 0)
        b->ticks[i] = (struct ab_tick){b, fn, id};
    return id;
}

void ab_broker_cancel(ab_broker_t *b, int id)
{
    /* A cancelled timer is never called again, even when it is the one
     * running now (zmq_timers checks its cancelled set first): the slot is
     * free at once. */
    for (size_t i = 0; i < AB_TICKS_MAX; i++)
        if (b->ticks[i].fn && b->ticks[i].id == id) {
            zmq_timers_cancel(b->timers, id);
            b->ticks[i].fn = NULL;
        }
}

/* --- receive path ----------------------------------------------------------- */
typedef struct {
    ab_rid_t rid;
    ab_header_t h;
    zmq_msg_t hdr, body;
    int has_body;
    const ab_frame_t *lazy; /* a BATCH entry's payload, or one inline in the header frame,
                               not yet copied into BODY (s_body): BODY is set up only
                               once LAZY is NULL */
    int64_t now;
    int fd;    /* the connection it came on (ZMQ_SRCFD, or its peer's kept fd) */
    int asked; /* FD is libzmq's answer for this message, not a kept one */
    ab_peer_t *peer; /* its sender's record when the message was read, or NULL:
                        looked up once per message (s_recv_one, ab_route_*) */
} s_in_t;

/* --- The connection's fd ------------------------------------------------------
 *
 * Each message's connection fd (ZMQ_SRCFD) is what the monitor's events,
 * the connection limit and the byte accounting go by. libzmq answers it as
 * the string property "__fd" of the connection's metadata, looked up and
 * parsed: ~420 instructions a message, the broker's largest own cost per
 * request (docs/bench.md). So a peer's fd is kept from one message to the
 * next, and asked again only when it might have changed.
 *
 * A routing id names a new connection only after its old one closed: the
 * ROUTER has no HANDOVER (s_router_new), so an id in use is refused to a
 * second connection, and libzmq reports DISCONNECTED for the old fd before
 * it ends the old pipe (stream_engine_base_t::error), so before the id is
 * free. The broker reads that event later than the messages (monitor after
 * messages, each turn): the ids whose fd is kept are those the ROUTER
 * generates itself (a zero byte and a 32-bit counter, never given twice
 * below 2^32 connections), which a new connection can hold only by
 * claiming one a closed connection had. The rule:
 *   - kept only when the id has libzmq's generated form, the fd's
 *     connection is open and admitted as the monitor has seen it
 *     (ab_router_fd_open: an fd read before its ACCEPTED, or after its
 *     DISCONNECTED, is asked again), and for the current epoch (1.024 s
 *     of the loop's clock): a live peer's heartbeat re-asks it;
 *   - DISCONNECTED for the fd ends it (health.c, s_fds_closed): a peer on
 *     it whose id still answers (a new connection took the id) is marked
 *     fd_stale, probed at every later close until it speaks again, and
 *     its byte accounting restarts with its next fd (s_fd_learnt);
 *   - any other id (chosen by the peer: ZMQ_ROUTING_ID) is asked per
 *     message, as before.
 * What a claimed id can still do: messages of a new connection read in the
 * turn its id changed hands, before the monitor's events, count as the old
 * connection's (at most a turn's burst); then the fd is asked again. */
static int s_fd_kept(const ab_peer_t *p, int64_t now)
{
    return p && p->fd_kept && p->fd_epoch == (uint32_t)(now >> 10);
}

/* P's connection is FD, as libzmq said of P's message just read. */
static void s_fd_learnt(ab_broker_t *b, ab_peer_t *p, int fd, int64_t now)
{
    if (p->fd_stale) /* another socket, maybe with the same number: bytes anew */
        p->out_fd = -1;
    p->fd = fd;
    p->fd_stale = 0;
    p->fd_kept = p->rid.len == 5 && p->rid.bytes[0] == 0 && ab_router_fd_open(b, fd);
    p->fd_epoch = (uint32_t)(now >> 10);
}

/* IN's payload as a message: a BATCH entry's or an inline one is copied
 * into one of its own here, the first time something asks (an answer, or
 * a small request, needs none: s_route). NULL when it has none, or out of
 * memory (IN->lazy still names the bytes: s_body_lost). */
static zmq_msg_t *s_body(s_in_t *in)
{
    if (!in->has_body)
        return NULL;
    const ab_frame_t *pl = in->lazy;
    if (pl) {
        if (ab_msg_of_bytes(&in->body, pl->data, pl->size) != 0)
            return NULL;
        in->lazy = NULL;
    }
    return &in->body;
}

/* 1 when IN has a payload that could not be made a message (out of
 * memory): logged and counted. Not handed on: an empty payload in its
 * place would be a wrong message. A SEND or PUBLISH is refused BUSY (a
 * refusal its sender's library reports, as for a full mailbox: try again);
 * a broker link's message is dropped (the far side's deadline answers it). */
static int s_body_lost(ab_broker_t *b, s_in_t *in)
{
    if (!in->has_body || s_body(in))
        return 0;
    uint32_t k = in->h.kind, code = k == AB_KIND_LINK ? AB_ERR_INTERNAL : AB_ERR_BUSY;
    AB_COUNT_ERROR(b, code);
    AB_LOG_RL(&b->rl, ab_hash_bytes(in->rid.bytes, in->rid.len) ^ 0x0e0e, in->now, AB_LOG_ERROR,
              "out of memory: a %s with a %zu-byte payload could not be kept",
              ab_kind_name(k), in->lazy->size);
    if (k != AB_KIND_LINK)
        ab_send_error(b, &in->rid, in->h.id, code,
                      "out of memory: the broker could not keep the payload; try again");
    return 1;
}

static void s_reject(ab_broker_t *b, s_in_t *in, int status, size_t nframes)
{
    char key[2 * AB_RID_MAX + 1];
    b->c.malformed++;
    AB_COUNT_REJECTED(b, status);
    ab_rid_key(&in->rid, key);
    /* A first message that is garbage is likelier a stranger than a bug: a
     * TLS or other binary client can pass libzmq's old ZMTP 1.0 greeting. */
    const char *stranger = ab_peer_lookup(b, &in->rid) ? "" : " (a new connection: not an "
                                                              "agentbus client?)";
    AB_LOG_RL(&b->rl, ab_hash_bytes(in->rid.bytes, in->rid.len), in->now, AB_LOG_WARN,
              "malformed message from %s (%zu frames): %s%s", key, nframes, ab_strerror(status),
              stranger);
    char text[160];
    snprintf(text, sizeof text, "%s: %s", ab_status_name(status), ab_strerror(status));
    /* Never answer an ERROR with an ERROR: two confused peers could loop. */
    if (in->h.kind != AB_KIND_ERROR)
        ab_send_error(b, &in->rid, in->h.id, ab_status_to_wire(status), text);
}

static void s_on_hello(ab_broker_t *b, s_in_t *in, ab_peer_t *p, const ab_frame_t *pl,
                       int fresh)
{
    char claim[AB_NAME_MAX] = "";
    int takeover = 0;
    uint64_t instance = 0;
    if (pl->size) {
        Agentbus__Hello *m = (Agentbus__Hello *)ab_pb_unpack(&agentbus__hello__descriptor,
                                                             pl->size, pl->data); /* a peer's */
        if (!m) {
            s_reject(b, in, AB_EDECODE, 2);
            return;
        }
        ab_peer_set_name(p, "", m->name);
        if (strcmp(m->role, "control") == 0 && !p->worker)
            p->role = AB_ROLE_CONTROL;
        if (m->heartbeat_ms >= 50 && m->heartbeat_ms <= 600000)
            p->heartbeat_ms = m->heartbeat_ms;
        if (strcmp(m->role, "agent") == 0 && m->name[0])
            snprintf(claim, sizeof claim, "%s", m->name);
        takeover = m->takeover;
        instance = m->instance;
        p->features = m->features;
        p->announced = 1;
        ab_peer_said_max_payload(b, p, m->max_payload);
        agentbus__hello__free_unpacked(m, NULL);
    }
    const char *why;
    if (claim[0] && !ab_auth_may_name(b->in_key, claim, &why)) {
        ab_header_t shown = in->h; /* the refusal names the name claimed */
        shown.target = (ab_view_t){claim, strlen(claim)};
        ab_auth_deny(b, b->in_key, &in->rid, &shown, why); /* the name stays its holder's */
        claim[0] = '\0';
    }
    /* Tell the peer the heartbeat interval the broker wants: an agent's
     * grows with the number of agents (health.h). */
    ab_header_t h = ab_header_init(AB_KIND_HELLO);
    h.correlation_id = in->h.id;
    h.credit = p->worker ? (uint32_t)b->cfg->heartbeat_ms : ab_health_agent_tell(b, p);
    h.features = ab_batching_features(b, p);
    if (fresh) /* a returning client learns its subscriptions are gone */
        h.flags |= AB_FLAG_NEW_PEER;
    ab_send(b, &in->rid, &h, NULL);
    if (claim[0]) /* after the answer: a mailbox may follow it */
        ab_mailbox_on_hello(b, p, claim, takeover, instance, in->h.id, in->now);
}

/* P, or (when P is NULL) a new peer with ROLE for the sender of IN; NULL
 * out of memory. */
static ab_peer_t *s_peer_of(ab_broker_t *b, s_in_t *in, ab_peer_t *p, ab_role_t role)
{
    if (!p && (p = ab_peer_new(b, &in->rid, role, in->now))) {
        p->fd = in->fd; /* its connection: socket events, bytes in flight */
        p->local = (uint8_t)ab_batching_fd_local(in->fd);
        if (in->asked) /* not a BATCH entry's: its BATCH's may be a kept one */
            s_fd_learnt(b, p, in->fd, in->now);
    }
    return p;
}

static void s_on_request(ab_broker_t *b, s_in_t *in, ab_peer_t *p)
{
    if (p) {
        p->requests++;
        if (p->role == AB_ROLE_CONTROL)
            p->role = AB_ROLE_AGENT;
    }
    /* The worker may compress its reply only if this client reads lz4. */
    in->h.flags &= ~(uint32_t)AB_FLAG_ACCEPT_LZ4;
    if (p && (p->features & AB_FEATURE_LZ4))
        in->h.flags |= AB_FLAG_ACCEPT_LZ4;
    /* Only a broker link sets where a request has been (link.h). */
    in->h.via = ab_view_of(NULL);
    in->h.hops_left = in->h.origin_role = 0;
    in->h.origin_key = ab_view_of(NULL);
    /* The broker vouches for the requester's role to the worker (models
     * load/unload are an admin's); a client's own bit is never passed on. */
    in->h.flags &= ~(uint32_t)AB_FLAG_ADMIN;
    if (ab_auth_is_admin(b->in_key))
        in->h.flags |= AB_FLAG_ADMIN;
    ab_req_body_t rb = {NULL, NULL, 0, in->has_body};
    if (in->has_body && in->lazy) /* bytes: a small payload is copied into the record */
        rb.data = in->lazy->data, rb.size = in->lazy->size;
    else if (in->has_body)
        rb = ab_req_body_of_msg(&in->body);
    ab_req_on_request(b, p, &in->rid, &in->h, &rb, in->now);
}

static void s_on_heartbeat(ab_broker_t *b, s_in_t *in, ab_peer_t *p, const ab_frame_t *pl)
{
    if (p && p->worker)
        ab_health_on_heartbeat(b, p->worker, pl->data, pl->size, in->now);
    else if (p && p->link_role == AB_LINK_NONE)
        ab_health_agent_beat(b, p);
    if (!p) { /* we forgot this peer (restart, expiry): ask it to say HELLO again */
        ab_header_t h = ab_header_init(AB_KIND_HELLO);
        h.credit = (uint32_t)b->cfg->heartbeat_ms;
        ab_send(b, &in->rid, &h, NULL);
    }
}

static void s_on_bye(ab_broker_t *b, s_in_t *in, ab_peer_t *p)
{
    /* A draining worker gets nothing new and finishes what it holds; its
     * final BYE hands back whatever it did not finish. */
    if (p && p->worker && (in->h.flags & AB_FLAG_DRAINING))
        ab_health_on_draining(b, p->worker);
    else if (p)
        ab_peer_drop(b, p, "said goodbye");
}

/* Hands a decoded message to the owner of its kind. */
static void s_route(ab_broker_t *b, s_in_t *in, const ab_frame_t *pl)
{
    ab_peer_t *p = in->peer;
    int rc;
    if (p && p->authkey != b->in_key) /* a routing id reused by another connection */
        ab_peer_drop(b, p, "its routing id now names a connection with another key"), p = NULL;
    if (p && p->link_role >= AB_LINK_WORKER) {
        b->c.malformed++; /* a link's own records have no connection: never from the ROUTER */
        return;
    }
    if (p)
        p->last_seen_ms = in->now; /* its fd: s_recv_one */
    if ((p && p->link_role == AB_LINK_TRANSPORT) || in->h.kind == AB_KIND_LINK) {
        if (!p && !(p = s_peer_of(b, in, NULL, AB_ROLE_AGENT)))
            return;
        if (!s_body_lost(b, in))
            ab_link_on_router(b, p, &in->rid, &in->h, pl, s_body(in), in->now);
        return; /* link.c checks a link's messages itself */
    }
    if (ab_key_role(b->in_key) == AB_KEYROLE_PEER && in->h.kind != AB_KIND_CONTROL) {
        /* A broker's key outside a link (after a restart of either side):
         * it says LINK HELLO first, so that what it forwards is checked. */
        AB_COUNT_ERROR(b, AB_ERR_DENIED);
        AB_LOG_RL(&b->rl, ab_hash_bytes(in->rid.bytes, in->rid.len) ^ 0x11c2, in->now, AB_LOG_WARN,
                  "denied %s from a peer broker's key outside a link", ab_kind_name(in->h.kind));
        if (in->h.kind != AB_KIND_ERROR) /* correlation 0: the link, not one request */
            ab_send_error(b, &in->rid, 0, AB_ERR_DENIED, "a peer broker's key: say LINK HELLO "
                                                         "first");
        return;
    }
    const char *why;
    if (!ab_auth_check(b, b->in_key, &in->h, &why)) {
        ab_auth_deny(b, b->in_key, &in->rid, &in->h, why);
        return;
    }
    switch (in->h.kind) {
    case AB_KIND_HELLO: {
        int fresh = p == NULL;
        if ((p = s_peer_of(b, in, p, AB_ROLE_AGENT)))
            s_on_hello(b, in, p, pl, fresh);
        break;
    }
    case AB_KIND_REGISTER: /* service.h */
        if ((p = s_peer_of(b, in, p, AB_ROLE_WORKER)) &&
            (rc = ab_worker_on_register(b, p, &in->h, pl, in->now)) != 0)
            s_reject(b, in, rc, 2);
        break;
    case AB_KIND_REQUEST: /* request.h */
        s_on_request(b, in, s_peer_of(b, in, p, AB_ROLE_AGENT));
        break;
    case AB_KIND_ERROR:
        if (!in->h.correlation_id)
            break; /* answers nothing */
        /* fall through */
    case AB_KIND_PARTIAL:
    case AB_KIND_REPLY: /* request.h */
        if (in->lazy) /* bytes in a BATCH: copied once, into the client's batch */
            ab_req_on_answer_bytes(b, p, &in->rid, &in->h, in->lazy);
        else
            ab_req_on_answer(b, p, &in->rid, &in->h, s_body(in));
        break;
    case AB_KIND_HEARTBEAT: /* health.h */
        s_on_heartbeat(b, in, p, pl);
        break;
    case AB_KIND_CONTROL: /* stats.h */
        /* A peer that only asks the broker questions is an operator's tool. */
        if (p && !p->worker && p->requests == 0)
            p->role = AB_ROLE_CONTROL;
        s_peer_of(b, in, p, AB_ROLE_CONTROL);
        ab_stats_on_control(b, &in->rid, &in->h);
        break;
    case AB_KIND_BYE:
        s_on_bye(b, in, p);
        break;
    case AB_KIND_DISCOVER: /* directory.h */
        s_peer_of(b, in, p, AB_ROLE_CONTROL);
        ab_directory_on_discover(b, &in->rid, &in->h);
        break;
    case AB_KIND_CANCEL: /* request.h */
        ab_cancel_from_client(b, &in->rid, in->h.correlation_id);
        break;
    case AB_KIND_SEND:
    case AB_KIND_PUBLISH:
    case AB_KIND_SUBSCRIBE: /* messaging: msgs.h */
        if ((p = s_peer_of(b, in, p, AB_ROLE_AGENT)) && !s_body_lost(b, in))
            ab_msgs_route(b, p, &in->h, s_body(in), in->now);
        break;
    default:
        AB_COUNT_ERROR(b, AB_ERR_UNSUPPORTED);
        ab_send_error(b, &in->rid, in->h.id, AB_ERR_UNSUPPORTED,
                      "message kind not supported by this broker");
        break;
    }
}

/* A payload that came inside the header frame (codec.h "Inline"), from
 * IN's sender. A peer that announced its features in a HELLO or REGISTER
 * without AB_FEATURE_INLINE never learnt that the broker reads inline (a
 * raw or older peer): one from it is a mistake or a probe, refused. One
 * the broker has no announcement from is taken at its word: it may have
 * heard the broker's answer before the broker restarted or dropped it for
 * silence, and sent before its library saw the disconnection (refusing
 * would lose its messages, even the HELLO that mends it). Links stay on
 * two frames (router.c). The payload is read in place, as a BATCH entry's
 * is (IN's LAZY is PL, which must outlive the routing): an answer is copied
 * straight on, a small request into its record, and whatever keeps a
 * message (a large request, the cache, a mailbox) has one made (s_body).
 * A BATCH is read in place. AB_OK or AB_EINLINE. */
static int s_inline_body(s_in_t *in, const ab_frame_t *pl)
{
    ab_peer_t *p = in->peer;
    in->has_body = 0;
    if (p && ((p->announced && !(p->features & AB_FEATURE_INLINE)) ||
              p->link_role != AB_LINK_NONE))
        return AB_EINLINE;
    if (in->h.kind == AB_KIND_BATCH)
        return AB_OK;
    in->lazy = pl;
    in->has_body = 1;
    return AB_OK;
}

/* Receives one whole multipart message. Returns 0, or -1 when none waits. */
static int s_recv_one(ab_broker_t *b, int64_t now)
{
    zmq_msg_t f[4];
    size_t kept, bytes;
    size_t n = ab_recv_frames(b->router, f, 4, &kept, &bytes);
    if (n == 0)
        return -1;
    b->c.msgs_in++;
    b->c.bytes_in += bytes;
    b->clock_us = ab_now_us(); /* until this message is routed (broker.h) */
    s_in_t in;
    in.now = now;
    in.lazy = NULL;
    in.rid.len = (uint8_t)(zmq_msg_size(&f[0]) <= AB_RID_MAX ? zmq_msg_size(&f[0]) : AB_RID_MAX);
    memcpy(in.rid.bytes, zmq_msg_data(&f[0]), in.rid.len);
    ab_frame_t frames[2] = {{NULL, 0}, {NULL, 0}};
    for (size_t i = 1; i < kept && i < 3; i++) {
        frames[i - 1].data = zmq_msg_data(&f[i]);
        frames[i - 1].size = zmq_msg_size(&f[i]);
    }
    /* The fd of its connection lets a monitor event name the peer. */
    ab_peer_t *p = in.peer = kept > 1 ? ab_peer_lookup(b, &in.rid) : NULL;
    in.asked = !s_fd_kept(p, now);
    in.fd = !in.asked ? p->fd : kept > 1 ? zmq_msg_get(&f[1], ZMQ_SRCFD) : -1;
    if (kept > 1 && ab_auth_of_msg(b, &f[1], &b->in_key) != 0) {
        /* Its key was removed while the message waited: the connection goes
         * (this message's own, never a kept fd). */
        int fd = zmq_msg_get(&f[1], ZMQ_SRCFD);
        if (fd >= 0)
            shutdown(fd, SHUT_RDWR);
        for (size_t i = 0; i < kept; i++)
            zmq_msg_close(&f[i]);
        b->clock_us = 0;
        return 0;
    }
    ab_frame_t pl;
    int rc = ab_msg_decode(frames, n - 1, &b->limits, &in.h, &pl);
    if (rc == AB_OK && n == 2 && pl.data) /* the payload came inline */
        rc = s_inline_body(&in, &pl);
    else if ((in.has_body = rc == AB_OK && n == 3)) {
        zmq_msg_init(&in.body);
        zmq_msg_move(&in.body, &f[2]);
    }
    /* A kept fd is an admitted connection's (ab_router_fd_open). */
    int refused = in.asked && ab_router_refused(b, &in.rid, in.fd, &in.h);
    if (!refused && in.asked && p)
        s_fd_learnt(b, p, in.fd, now);
    if (refused)
        ; /* a connection over max-connections: answered once, then closed */
    else if (rc != AB_OK)
        s_reject(b, &in, rc, n - 1);
    else if (in.h.kind == AB_KIND_BATCH)
        ab_batching_recv(b, &in.rid, in.fd, now, &pl);
    else {
        ab_batching_note(b, &in.h, pl.size);
        s_route(b, &in, &pl);
    }
    if (in.has_body && !in.lazy)
        zmq_msg_close(&in.body);
    for (size_t i = 0; i < kept; i++)
        zmq_msg_close(&f[i]);
    b->clock_us = 0;
    return 0;
}

/* SIGTERM: refuse new requests, let those held finish until drain-ms has
 * passed, answer the rest, stop. */
static void s_drain(ab_broker_t *b, int64_t now)
{
    if (!b->draining) {
        b->draining = 1;
        b->drain_end_ms = now + b->cfg->drain_ms;
        size_t held = ab_idmap_size(&b->pending);
        AB_INFO("draining: %zu request%s held, up to %ld ms", held, held == 1 ? "" : "s",
                b->cfg->drain_ms);
    }
    size_t live = ab_req_live(b);
    if (live && now < b->drain_end_ms)
        return;
    ab_req_fail_all(b, AB_ERR_INTERNAL,
                    "broker shut down before the request completed (drain-ms passed)");
    AB_INFO("drained: %zu answered with an error", live);
    /* The last answers are still in the ROUTER's pipes: give them a moment
     * to leave before the socket closes (LINGER is 0 otherwise). */
    int linger = 1000;
    zmq_setsockopt(b->router, ZMQ_LINGER, &linger, sizeof linger);
    atomic_store(&b->stop, 1);
}

/* Time-driven work: request deadlines (the heap is the request owner's),
 * the backlog of messages waiting for slow readers, the cache's per-turn
 * upkeep, then every periodic timer that is due. */
static void s_timers(ab_broker_t *b, int64_t now)
{
    ab_deadline_expire(b, now);
    ab_msgs_timers(b, now);
    ab_cache_tick(b, now);
    zmq_timers_execute(b->timers);
}

/* How long the loop may sleep: until the next timer, deadline, backlog
 * retry or cache (L2) timeout. */
static long s_timeout(ab_broker_t *b, int64_t now)
{
    long t = zmq_timers_timeout(b->timers); /* -1: none */
    int64_t dl = ab_deadline_next(b), mw = ab_msgs_next_wake(b), cw = ab_cache_next_wake(b);
    if (dl && (t < 0 || dl - now < t))
        t = dl > now ? (long)(dl - now) : 0;
    if (cw && (t < 0 || cw - now < t))
        t = cw > now ? (long)(cw - now) : 0;
    if (mw && (t < 0 || mw - now < t))
        t = mw > now ? (long)(mw - now) : 0;
    if (atomic_load(&b->term) && (t < 0 || t > 50))
        t = 50; /* check the drain often */
    return t;
}

int ab_broker_run(ab_broker_t *b)
{
    zmq_pollitem_t items[4 + 2 * 16] = {{b->router, 0, ZMQ_POLLIN, 0},
                               {ab_health_pipe(b), 0, ZMQ_POLLIN, 0},
                               {ab_auth_zap_socket(b), 0, ZMQ_POLLIN, 0}};
    /* The ZAP handler, when it exists. */
    int nitems = 2, cache_at = -1;
    if (items[2].socket)
        nitems = 3;
    int fixed = nitems;
    while (!atomic_load(&b->stop)) {
        /* The L2 cache's Redis connection and broker links' dialed sockets
         * (link.h): re-listed each turn, as they close and re-connect. */
        nitems = fixed;
        cache_at = ab_cache_poll_item(b, &items[nitems]) ? nitems++ : -1;
        nitems += ab_link_poll_items(b, items + nitems, 2 * 16);
        int rc = zmq_poll(items, nitems, s_timeout(b, ab_now_ms()));
        if (rc < 0 && errno != EINTR) {
            AB_ERROR("zmq_poll failed: %s", zmq_strerror(errno));
            return -1;
        }
        int64_t now = ab_now_ms();
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
        if (cache_at >= 0)
            ab_cache_on_poll(b, items[cache_at].revents);
        ab_link_on_poll(b, now);
        if (items[2].socket == ab_auth_zap_socket(b) && items[2].socket)
            ab_auth_on_zap(b); /* handshakes of new connections */
        s_timers(b, ab_now_ms());
        ab_health_kick(b);
        if (atomic_load(&b->term))
            s_drain(b, ab_now_ms());
        ab_msgs_turn_end(b); /* publications gathered in this turn */
        ab_batching_flush_all(b); /* end of the turn: what was gathered goes out */
    }
    size_t pending = ab_idmap_size(&b->pending);
    AB_INFO("stopping: %zu request%s pending", pending, pending == 1 ? "" : "s");
    return 0;
}

/* Routes a decoded message IN (its payload PL, copied when IN has one). */
static void s_route_copy(ab_broker_t *b, s_in_t *in, const ab_frame_t *pl)
{
    /* A request keeps its payload as a message of its own: s_body makes it
     * when asked; an answer may not need one. */
    in->lazy = in->has_body ? pl : NULL;
    ab_batching_note(b, &in->h, pl->size);
    s_route(b, in, pl);
    if (in->has_body && !in->lazy)
        zmq_msg_close(&in->body);
}

void ab_route_frames(ab_broker_t *b, const ab_rid_t *rid, int fd, int64_t now,
                     const ab_frame_t *f, size_t nframes)
{
    s_in_t in;
    in.now = now;
    in.lazy = NULL;
    in.rid = *rid;
    in.fd = fd; /* the BATCH's connection: the socket monitor maps closes by it */
    in.asked = 0;
    in.peer = ab_peer_lookup(b, rid); /* an earlier entry may have made it */
    ab_frame_t pl;
    int rc = ab_msg_decode(f, nframes, &b->limits, &in.h, &pl);
    in.has_body = rc == AB_OK && nframes == 2;
    if (rc != AB_OK)
        s_reject(b, &in, rc, nframes);
    else
        s_route_copy(b, &in, &pl);
}

void ab_route_entry(ab_broker_t *b, const ab_rid_t *rid, int fd, int64_t now,
                    const ab_batch_entry_t *e)
{
    s_in_t in;
    in.now = now;
    in.lazy = NULL;
    in.rid = *rid;
    in.fd = fd;
    in.asked = 0;
    in.peer = ab_peer_lookup(b, rid); /* an earlier entry may have made it */
    in.h = e->h; /* a copy: routing may change it (s_on_request) */
    in.has_body = e->has_payload;
    s_route_copy(b, &in, &e->payload);
}
