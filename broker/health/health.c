/*
 * health.c - see health.h for the layers. This file owns the worker's
 * health record, the socket monitor, and what happens to a lost worker's
 * requests: back to the front of their queue, re-dispatched to another
 * worker (bounded by --max-attempts), or answered WORKER_LOST when they may
 * not be retried (FLAG_NON_IDEMPOTENT, or the client already saw part of a
 * streamed reply).
 *
 * Everything runs on the broker's thread.
 */
#define AB_LOG_SUBSYS "health" /* log.h: the subsystem in log lines */
#include "request.h"
#include "auth.h"
#include "health.h"
#include "service.h"
#include "router.h"
#include "directory.h"
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "util.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define AB_STABLE_BEATS 3 /* on-time heartbeats before the interval doubles */

static const char *s_names[] = {"healthy", "suspect", "dead", "ejected", "probing", "draining"};

const char *ab_health_name(ab_health_kind_t k)
{
    return (unsigned)k < sizeof s_names / sizeof s_names[0] ? s_names[k] : "unknown";
}

uint64_t ab_rid_hash(const ab_rid_t *rid, const struct ab_key *key)
{
    /* Under CURVE a routing id is the peer's to choose: another key's
     * connection may take a lost worker's once it is free. The key it
     * proved is part of the name, so an answer for that worker is taken
     * only from its own key (the public key: a reloaded key is the same). */
    uint64_t h = ab_hash_bytes(rid->bytes, rid->len);
    const char *pub = ab_key_pub(key);
    if (pub)
        h ^= ab_hash_bytes(pub, strlen(pub)) * 0x9e3779b97f4a7c15ull;
    return h ? h : 1; /* 0 means "no worker" in the request's tried list */
}

/* --- socket monitor -------------------------------------------------------- */
/* A peer that is not ZeroMQ (an HTTP request, a TLS client, a port scanner)
 * fails the ZMTP greeting: libzmq reports it and closes the connection. */
#define S_HANDSHAKE_FAILED                                                                        \
    (ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)

int ab_health_init(ab_broker_t *b)
{
    char ep[64];
    /* One endpoint per broker instance: tests run several in one process. */
    snprintf(ep, sizeof ep, "inproc://ab-broker-monitor-%p", (void *)b);
    ab_health_state_t *hs = b->health = calloc(1, sizeof *b->health);
    int events = ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_ACCEPTED | S_HANDSHAKE_FAILED;
    if (!hs || zmq_socket_monitor(b->router, ep, events) != 0)
        return -1;
    hs->monitor = zmq_socket(b->zctx, ZMQ_PAIR);
    int linger = 0;
    if (!hs->monitor || zmq_setsockopt(hs->monitor, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_connect(hs->monitor, ep) != 0)
        return -1;
    return ab_broker_every(b, AB_SWEEP_MS, ab_health_tick) < 0 ? -1 : 0;
}

void ab_health_fini(ab_broker_t *b)
{
    ab_health_state_t *hs = b->health;
    if (!hs)
        return;
    if (b->router && hs->monitor)
        zmq_socket_monitor(b->router, NULL, 0);
    if (hs->monitor)
        zmq_close(hs->monitor);
    free(hs);
    b->health = NULL;
}

void *ab_health_pipe(ab_broker_t *b)
{
    return b->health ? b->health->monitor : NULL;
}

void ab_health_kick_later(ab_broker_t *b)
{
    b->health->kick = 1;
}

/* Sends P a header-only HEARTBEAT repeating the interval it was told. With
 * ROUTER_MANDATORY the send fails (EHOSTUNREACH) once P's connection is
 * gone: that, not the fd number alone, proves it. 1 reachable, 0 not. */
static int s_probe(ab_broker_t *b, ab_peer_t *p)
{
    /* Reading ZMQ_EVENTS makes the socket process its pending commands
     * (unthrottled, unlike a send), among them the removal of dead pipes. */
    int events = 0;
    size_t sz = sizeof events;
    zmq_getsockopt(b->router, ZMQ_EVENTS, &events, &sz);
    ab_header_t h = ab_header_init(AB_KIND_HEARTBEAT);
    h.credit = p->worker ? p->worker->health.interval_ms
               : p->hb_told ? p->hb_told : (uint32_t)b->cfg->heartbeat_ms;
    /* Straight to the socket, never gathered into a BATCH: a gathered send
     * "succeeds" and fails only at the turn's flush, which drops a worker
     * but not an agent, so a killed agent stayed until the liveness sweep
     * (3 x its interval, which now grows with the number of agents). */
    uint8_t stack[64];
    size_t len;
    uint8_t *buf = ab_header_encode_buf(&h, stack, sizeof stack, &len);
    int rc = buf ? ab_send_raw_peer(b, p, &p->rid, buf, len, NULL) : -1;
    if (buf && buf != stack)
        free(buf);
    return rc == 0;
}

/* A connection closed. The peers last heard on its fd are probably gone,
 * but the fd number may already belong to a new connection whose messages
 * were read before this event: each is probed now and, while the probe
 * still gets through (libzmq removes a dead pipe a moment after the
 * event), again every 10 ms for a second (ab_health_recheck). Peers are
 * collected by rid first, since dropping one may drop others. */
static void s_fd_closed_one(void *ctx, ab_defer_node_t *n)
{
    ab_broker_t *b = ctx;
    ab_peer_t *p = ab_defer_data(n, ab_peer_t, later);
    {
        if (s_probe(b, p)) {
            p->fd_closed_ms = ab_now_ms();
            if (!b->health->recheck_timer &&
                (b->health->recheck_timer = ab_broker_every(b, 10, ab_health_recheck)) < 0)
                b->health->recheck_timer = 0; /* no timer: the liveness sweep finds it */
            return;
        }
        b->c.disconnects++;
        ab_peer_drop(b, p, "disconnected");
    }
}

static int s_cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* The peers on any of the N closed FDS (sorted here), in one walk over all
 * peers: a walk per close made a reconnect storm of thousands O(peers x
 * closes) in the loop (issue 20: 22% of the broker's samples). Probing
 * after the drain's other events is safe: a peer is dropped only when its
 * probe fails, whatever a reused fd number did meanwhile. */
static void s_fds_closed(ab_broker_t *b, int *fds, size_t n)
{
    if (!n)
        return;
    qsort(fds, n, sizeof *fds, s_cmp_int);
    ab_defer_t gone;
    ab_defer_init(&gone);
    for (ab_peer_t *p = zhashx_first(b->peers); p; p = zhashx_next(b->peers)) {
        if (p->fd < 0)
            continue;
        /* Its fd names no connection of its now: asked again at its next
         * message; until then it is probed at every close (broker.c, "The
         * connection's fd"). */
        if (bsearch(&p->fd, fds, n, sizeof *fds, s_cmp_int)) {
            p->fd_kept = 0;
            p->fd_stale = 1;
        }
        if (p->fd_stale)
            ab_defer_add(&gone, &p->later, s_fd_closed_one);
    }
    ab_defer_run(&gone, b);
}

/* Logs a failed ZMTP handshake on ADDR, rate-limited: anyone can send
 * garbage to the port, as often as they like. */
static void s_not_zeromq(ab_broker_t *b, const char *addr, int event, uint32_t value)
{
    /* libzmq 4.3 names the listening endpoint, not the remote address; the
     * value is an errno (NO_DETAIL) or a ZMTP protocol error code. */
    static ab_ratelimit_t rl = {.interval_ms = 10000};
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
        return; /* the ZAP handler refused a key, counted and said so (auth.c) */
    b->c.handshakes_failed++;
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
        value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) {
        AB_LOG_RL(&rl, 2, ab_now_ms(), AB_LOG_WARN, "refused a connection to %s: %s", addr,
                  b->cfg->auth_curve ? "it does not use CURVE (no key: --key / AB_KEY)"
                                     : "it uses CURVE, this endpoint does not (--auth)");
        return;
    }
    if (b->cfg->auth_curve && event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
        value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC) {
        /* Its HELLO did not decrypt with this broker's secret key: it was
         * made for another public key. A peer broker whose --peer KEY is
         * wrong meets this too, and the text named only clients' options. */
        AB_LOG_RL(&rl, 4, ab_now_ms(), AB_LOG_WARN,
                  "a connection to %s failed its handshake: it was given another public key "
                  "for this broker (a client's --broker-key / AB_BROKER_KEY, a peer broker's "
                  "--peer KEY); this broker's is in its broker.key (brokerctl keys)", addr);
        return;
    }
    if (b->cfg->auth_curve) { /* the client may give up first: the cause is often unknown */
        AB_LOG_RL(&rl, 3, ab_now_ms(), AB_LOG_WARN,
                  "a connection to %s failed its handshake (value %u): a client without a key "
                  "(--key / AB_KEY), with another broker's key (--broker-key), or not ZeroMQ",
                  addr, (unsigned)value);
        return;
    }
    char why[96];
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL)
        snprintf(why, sizeof why, "ZMTP protocol error 0x%x", (unsigned)value);
    else
        snprintf(why, sizeof why, "%s", strerror((int)value));
    AB_LOG_RL(&rl, 1, ab_now_ms(), AB_LOG_WARN,
              "a connection to %s is not ZeroMQ (handshake failed: %s)", addr, why);
}

void ab_health_monitor_drain(ab_broker_t *b)
{
    int closed[1024];
    size_t nclosed = 0;
    uint16_t event;
    uint32_t value;
    char addr[256];
    for (int i = 0; i < 1024 && ab_monitor_event(b->health->monitor, &event, &value, addr,
                                                 sizeof addr); i++) {
        if (event & S_HANDSHAKE_FAILED) {
            s_not_zeromq(b, addr, event, value);
            continue;
        }
        ab_router_conn_event(b, event, (int)value); /* connection limit (router.c) */
        if (event == ZMQ_EVENT_DISCONNECTED)
            closed[nclosed++] = (int)value;
    }
    s_fds_closed(b, closed, nclosed);
}

/* --- interval and suspicion ------------------------------------------------ */
/* Tells the worker the heartbeat interval the broker wants now. */
static void s_tell_interval(ab_broker_t *b, ab_worker_rec_t *w)
{
    ab_header_t h = ab_header_init(AB_KIND_HEARTBEAT);
    h.credit = w->health.interval_ms;
    ab_send(b, &w->peer->rid, &h, NULL);
}

/* Sets a new interval. A shorter one only becomes the expectation once the
 * worker has heartbeat after hearing of it (its next beat may be scheduled
 * on the old interval); a longer one at once. The sample window restarts:
 * the distribution of arrivals changes with the interval. */
static void s_set_interval(ab_broker_t *b, ab_worker_rec_t *w, uint32_t ms)
{
    ab_health_t *h = &w->health;
    if (ms == h->interval_ms)
        return;
    if (ms > h->expect_ms)
        h->expect_ms = ms;
    h->interval_ms = ms;
    h->nsamples = h->pos = 0;
    h->stable_beats = 0;
    s_tell_interval(b, w);
}

/* phi = -log10 P(the next heartbeat comes later than now), arrivals taken
 * as normal with the window's mean and deviation. The deviation has a floor
 * (a fifth of the mean, and 50 ms: scheduling noise does not shrink with
 * the interval) so a very regular worker is not declared dead for a
 * hiccup; the logistic approximation of the normal CDF is the one Akka's
 * detector uses. */
static double s_phi(const ab_health_t *h, int64_t since_ms)
{
    double mean = h->expect_ms, sd = 0;
    if (h->nsamples >= 2) {
        double sum = 0, sq = 0;
        for (uint32_t i = 0; i < h->nsamples; i++)
            sum += h->samples[i];
        mean = sum / h->nsamples;
        if (mean < h->expect_ms)
            mean = h->expect_ms; /* arrivals were early: expect the asked interval */
        for (uint32_t i = 0; i < h->nsamples; i++)
            sq += (h->samples[i] - mean) * (h->samples[i] - mean);
        sd = sqrt(sq / h->nsamples);
    }
    if (sd < mean / 5)
        sd = mean / 5;
    if (sd < 50)
        sd = 50;
    double y = ((double)since_ms - mean) / sd;
    double e = exp(-y * (1.5976 + 0.070566 * y * y));
    double p = since_ms > mean ? e / (1.0 + e) : 1.0 - 1.0 / (1.0 + e);
    if (p < 1e-300)
        return 300.0;
    return -log10(p);
}

static void s_state(ab_broker_t *b, ab_worker_rec_t *w, ab_health_kind_t k, const char *why)
{
    if (w->health.state == k)
        return;
    AB_INFO("worker %s%s%s: %s -> %s (%s)", w->peer->key, w->peer->name[0] ? " " : "",
            w->peer->name, ab_health_name(w->health.state), ab_health_name(k), why);
    w->health.state = k;
    if ((unsigned)k < AB_HEALTH_KINDS_MAX)
        b->c.health_entered[k]++;
    if (k == AB_HEALTH_HEALTHY)
        w->health.healthy_since_ms = ab_now_ms();
    ab_directory_event(b, w, "health");
}

uint32_t ab_health_free_credit(const ab_worker_rec_t *w)
{
    uint32_t free_credit = w->capacity > w->in_flight ? w->capacity - w->in_flight : 0;
    switch (w->health.state) {
    case AB_HEALTH_HEALTHY:
        return free_credit;
    case AB_HEALTH_PROBING: /* half-open: one request at a time */
        return w->in_flight == 0 && w->capacity > 0 ? 1 : 0;
    default:
        return 0;
    }
}

void ab_health_new_worker(ab_broker_t *b, ab_worker_rec_t *w)
{
    ab_health_t *h = &w->health;
    memset(h, 0, sizeof *h);
    int64_t now = ab_now_ms();
    h->interval_ms = h->expect_ms = (uint32_t)b->cfg->health_floor_ms;
    h->last_hb_ms = now;
    h->healthy_since_ms = now;
    /* A worker lost recently (same routing id: libagentbus keeps it across
     * reconnects) rejoins through a probe, keeping its ejection record. */
    uint64_t hash = w->peer->rid_hash;
    for (unsigned i = 0; i < AB_GRAVE_SLOTS; i++) {
        ab_grave_t *g = &b->health->grave[i];
        if (g->rid_hash == hash) {
            h->state = AB_HEALTH_PROBING;
            h->ejections = h->eject_streak = g->ejections;
            g->rid_hash = 0;
            AB_INFO("worker %s came back: probing it", w->peer->key);
            break;
        }
    }
}

/* Takes back every request W holds. Those the client was already answered
 * for are freed; the rest go to the front of the queue, or are answered
 * WORKER_LOST when they may not run again. The caller dispatches later
 * (ab_health_kick): W may still be on the service's list. */
void ab_health_take_back(ab_broker_t *b, ab_worker_rec_t *w, const char *why)
{
    char text[200];
    ab_list_t *l;
    while ((l = ab_list_first(&w->reqs))) {
        ab_req_t *r = ab_list_data(l, ab_req_t, qlink);
        ab_worker_req_remove(w, r);
        if (r->state == AB_REQ_ORPHANED) {
            ab_req_free(b, r);
        } else if (r->flags & AB_FLAG_NON_IDEMPOTENT) {
            snprintf(text, sizeof text, "worker lost holding a non-idempotent request: %s", why);
            ab_req_fail(b, r, AB_ERR_WORKER_LOST, text);
        } else if (r->streamed) {
            snprintf(text, sizeof text, "worker lost in the middle of a streamed reply: %s", why);
            ab_req_fail(b, r, AB_ERR_WORKER_LOST, text);
        } else if (r->attempts >= b->cfg->max_attempts) {
            b->c.retries_exhausted++;
            snprintf(text, sizeof text, "worker lost holding the request (%u attempts): %s",
                     r->attempts, why);
            ab_req_fail(b, r, AB_ERR_WORKER_LOST, text);
        } else {
            ab_queue_push_front(b, r->service, r);
            b->c.redispatched++;
            w->health.redispatched++;
        }
    }
    w->in_flight = 0;
    b->health->kick = 1;
}

void ab_health_forget(ab_broker_t *b, ab_worker_rec_t *w, int graceful)
{
    if (graceful)
        return;
    ab_grave_t *g = &b->health->grave[b->health->grave_pos++ % AB_GRAVE_SLOTS];
    g->rid_hash = w->peer->rid_hash;
    g->ejections = w->health.ejections;
}

/* Dispatches every service whose queue waits while some worker has credit:
 * run once per loop turn after work was taken back or a worker became
 * dispatchable again (never from inside an iteration over peers). */
void ab_health_kick(ab_broker_t *b)
{
    /* Dispatching may drop peers and detach workers: services are
     * dispatched after the walk. */
    for (int round = 0; b->health->kick && round < 8; round++) {
        b->health->kick = 0;
        ab_service_dispatch_all(b);
    }
}

/* --- events from the receive path ------------------------------------------- */
/* Length of STATE's first word: "down: Ollama unreachable" is "down". */
static size_t s_state_word(const char *state)
{
    return strcspn(state, ": ");
}

void ab_health_backend_state(ab_broker_t *b, ab_worker_rec_t *w, const char *state)
{
    ab_health_t *h = &w->health;
    size_t o = s_state_word(h->backend_state), n = s_state_word(state);
    int changed = o != n || strncmp(h->backend_state, state, n) != 0;
    /* "" -> "ok" is a worker's first report, not news. */
    int news = changed && !(o == 0 && strncmp(state, "ok", n) == 0 && n == 2);
    snprintf(h->backend_state, sizeof h->backend_state, "%s", state);
    if (!news)
        return;
    ab_peer_t *p = w->peer;
    AB_LOG(strncmp(state, "ok", 2) == 0 ? AB_LOG_INFO : AB_LOG_WARN,
           "worker %s%s%s of '%s': backend %s", p->key, p->name[0] ? " " : "", p->name,
           w->service->name, state[0] ? state : "(none)");
    ab_directory_event(b, w, "backend");
}

void ab_health_on_heartbeat(ab_broker_t *b, ab_worker_rec_t *w, const void *pl, size_t len,
                            int64_t now)
{
    ab_health_t *h = &w->health;
    int64_t gap = now - h->last_hb_ms;
    h->last_hb_ms = now;
    if (pl && len) {
        Agentbus__WorkerHeartbeat *m = (Agentbus__WorkerHeartbeat *)ab_pb_unpack(
            &agentbus__worker_heartbeat__descriptor, len, pl); /* a peer's */
        if (m) {
            ab_health_backend_state(b, w, m->backend_state);
            agentbus__worker_heartbeat__free_unpacked(m, NULL);
        } else {
            b->c.malformed++;
        }
    }
    if (h->expect_ms > h->interval_ms && gap <= (int64_t)h->interval_ms * 2) {
        /* The worker beats at the new, shorter interval now. */
        h->expect_ms = h->interval_ms;
        h->nsamples = h->pos = 0;
    } else if (gap > 0) {
        h->samples[h->pos] = gap > UINT32_MAX ? UINT32_MAX : (uint32_t)gap;
        h->pos = (h->pos + 1) % AB_HB_WINDOW;
        if (h->nsamples < AB_HB_WINDOW)
            h->nsamples++;
    }
    switch (h->state) {
    case AB_HEALTH_SUSPECT:
        s_state(b, w, AB_HEALTH_HEALTHY, "heartbeat arrived");
        b->health->kick = 1;
        break;
    case AB_HEALTH_DEAD: /* it was silent, not gone: let one request decide */
        h->nsamples = h->pos = 0; /* the silence is not a sample of its rhythm */
        s_set_interval(b, w, (uint32_t)b->cfg->health_floor_ms);
        s_tell_interval(b, w);
        s_state(b, w, AB_HEALTH_PROBING, "heartbeats resumed");
        b->health->kick = 1;
        break;
    case AB_HEALTH_HEALTHY:
        /* Stable: ask for heartbeats half as often, up to the ceiling. A
         * worker that failed within the last interval stays where it is. */
        if (++h->stable_beats >= AB_STABLE_BEATS && h->failures == 0 &&
            h->interval_ms < b->cfg->health_ceiling_ms) {
            uint32_t next = h->interval_ms * 2;
            if (next > b->cfg->health_ceiling_ms)
                next = (uint32_t)b->cfg->health_ceiling_ms;
            s_set_interval(b, w, next);
        }
        break;
    default:
        break;
    }
}

void ab_health_on_dispatch(ab_broker_t *b, ab_worker_rec_t *w, ab_req_t *r)
{
    if (r->attempts < AB_ATTEMPTS_MAX)
        r->tried[r->attempts] = w->peer->rid_hash;
    r->attempts++;
    r->oks_at_dispatch = w->health.oks;
    if (w->health.state == AB_HEALTH_PROBING)
        b->c.probes++;
}

static void s_eject(ab_broker_t *b, ab_worker_rec_t *w, int64_t now)
{
    ab_health_t *h = &w->health;
    int64_t backoff = b->cfg->eject_base_ms;
    for (uint32_t i = 0; i < h->eject_streak && backoff < b->cfg->eject_max_ms; i++)
        backoff *= 2;
    if (backoff > b->cfg->eject_max_ms)
        backoff = b->cfg->eject_max_ms;
    h->ejections++;
    h->eject_streak++;
    h->ejected_until_ms = now + backoff;
    h->backoff_ms = (uint32_t)backoff;
    b->c.workers_ejected++;
    char why[96];
    snprintf(why, sizeof why, "%u failed requests; out for %lld ms", h->failures,
             (long long)backoff);
    s_state(b, w, AB_HEALTH_EJECTED, why);
    s_set_interval(b, w, (uint32_t)b->cfg->health_floor_ms);
    ab_health_take_back(b, w, "worker ejected (failing requests)");
}

void ab_health_on_result(ab_broker_t *b, ab_worker_rec_t *w, int ok)
{
    ab_health_t *h = &w->health;
    if (ok) { /* every answer passes here: no clock read for it */
        h->failures = 0;
        h->oks++;
        if (h->state == AB_HEALTH_PROBING) {
            s_state(b, w, AB_HEALTH_HEALTHY, "probe request succeeded");
            b->health->kick = 1;
        }
        return;
    }
    int64_t now = ab_now_ms();
    h->failures++;
    h->last_failure_ms = now;
    /* A failure brings the heartbeat interval back to the floor. */
    s_set_interval(b, w, (uint32_t)b->cfg->health_floor_ms);
    if (h->state == AB_HEALTH_PROBING ||
        (h->state == AB_HEALTH_HEALTHY && h->failures >= b->cfg->eject_failures))
        s_eject(b, w, now);
}

void ab_health_on_deadline(ab_broker_t *b, ab_worker_rec_t *w, uint64_t oks_at_dispatch,
                           uint64_t held_us, int begun)
{
    if (begun || w->health.oks != oks_at_dispatch ||
        held_us < (uint64_t)b->cfg->health_floor_ms * 1000) {
        b->c.deadline_busy++;
        return;
    }
    ab_health_on_result(b, w, 0);
}

void ab_health_on_draining(ab_broker_t *b, ab_worker_rec_t *w)
{
    s_state(b, w, AB_HEALTH_DRAINING, "worker is draining");
}

/* --- duplicates -------------------------------------------------------------- */
void ab_health_note_answered(ab_broker_t *b, const ab_req_t *r, uint64_t winner)
{
    unsigned n = r->attempts < AB_ATTEMPTS_MAX ? r->attempts : AB_ATTEMPTS_MAX;
    for (unsigned i = 0; i < n; i++) {
        if (r->tried[i] == winner)
            continue;
        ab_dup_t *d = &b->health->dup[b->health->dup_pos++ % AB_DUP_SLOTS];
        d->bid = r->bid;
        d->rid_hash = r->tried[i];
    }
}

void ab_health_attempt_ended(ab_broker_t *b, ab_req_t *r, uint64_t rid_hash)
{
    unsigned n = r->attempts < AB_ATTEMPTS_MAX ? r->attempts : AB_ATTEMPTS_MAX;
    for (unsigned i = 0; i < n; i++)
        if (r->tried[i] == rid_hash)
            r->tried[i] = 0; /* 0: no worker (ab_rid_hash never gives it) */
    ab_dup_t *d = &b->health->dup[b->health->dup_pos++ % AB_DUP_SLOTS];
    d->bid = r->bid;
    d->rid_hash = rid_hash;
}

int ab_health_is_dup(ab_broker_t *b, uint64_t bid, uint64_t rid_hash)
{
    for (unsigned i = 0; i < AB_DUP_SLOTS; i++)
        if (b->health->dup[i].bid == bid && b->health->dup[i].rid_hash == rid_hash)
            return 1;
    return 0;
}

/* --- agents' heartbeat interval ------------------------------------------ */
static uint32_t s_round_up(uint64_t ms, uint64_t step)
{
    uint64_t r = (ms + step - 1) / step * step;
    return r > AB_AGENT_HB_MAX_MS ? AB_AGENT_HB_MAX_MS : (uint32_t)r;
}

void ab_health_agents_counted(ab_broker_t *b, uint32_t agents)
{
    uint64_t floor = (uint64_t)b->cfg->heartbeat_ms, cur = b->agent_hb_ms ? b->agent_hb_ms : floor;
    b->agents_seen = agents;
    /* The interval that keeps N agents' heartbeats under the rate. */
    uint64_t need = b->cfg->agent_hb_rate
                        ? (uint64_t)agents * 1000 / (uint64_t)b->cfg->agent_hb_rate
                        : 0;
    uint64_t next = cur;
    if (need > cur && cur < AB_AGENT_HB_MAX_MS)
        next = s_round_up(need + need / 4, floor);
    else if (need * 2 < cur && cur > floor)
        next = need + need / 4 > floor ? s_round_up(need + need / 4, floor) : floor;
    if (next < floor)
        next = floor;
    if (next != b->agent_hb_ms) {
        if (b->agent_hb_ms)
            AB_INFO("agents' heartbeat interval %u -> %llu ms (%u agents, agent-heartbeat-rate "
                    "%ld)", b->agent_hb_ms, (unsigned long long)next, agents,
                    b->cfg->agent_hb_rate);
        b->agent_hb_ms = (uint32_t)next;
    }
}

uint32_t ab_health_agent_tell(ab_broker_t *b, ab_peer_t *p)
{
    uint32_t ms = b->agent_hb_ms ? b->agent_hb_ms : (uint32_t)b->cfg->heartbeat_ms;
    /* Shorter than before: its heartbeats may still come at the old pace
     * until it reads this, so liveness keeps the longer one (heartbeat_ms,
     * which its next HELLO sets again). */
    if (p->hb_told > ms && p->hb_told > p->heartbeat_ms)
        p->heartbeat_ms = p->hb_told;
    p->hb_told = ms;
    return ms;
}

void ab_health_agent_beat(ab_broker_t *b, ab_peer_t *p)
{
    if (p->hb_told == b->agent_hb_ms || !b->agent_hb_ms)
        return;
    ab_header_t h = ab_header_init(AB_KIND_HEARTBEAT);
    h.credit = ab_health_agent_tell(b, p);
    ab_send(b, &p->rid, &h, NULL);
}

/* --- timer ------------------------------------------------------------------ */
static void s_recheck_one(void *ctx, ab_defer_node_t *n)
{
    ab_broker_t *b = ctx;
    ab_peer_t *p = ab_defer_data(n, ab_peer_t, later);
    if (!s_probe(b, p)) {
        b->c.disconnects++;
        ab_peer_drop(b, p, "disconnected");
    }
}

void ab_health_recheck(ab_broker_t *b, int64_t now)
{
    ab_defer_t closed;
    ab_defer_init(&closed);
    int again = 0;
    for (ab_peer_t *p = zhashx_first(b->peers); p; p = zhashx_next(b->peers)) {
        if (!p->fd_closed_ms)
            continue;
        if (now - p->fd_closed_ms > 1000)
            p->fd_closed_ms = 0; /* still reachable: the fd was reused */
        else
            again = !ab_defer_add(&closed, &p->later, s_recheck_one) || again;
    }
    ab_defer_run(&closed, b);
    if (!again && b->health->recheck_timer) { /* nothing left to watch */
        ab_broker_cancel(b, b->health->recheck_timer);
        b->health->recheck_timer = 0;
    }
}

/* Moves a worker whose suspicion crossed a threshold (or whose ejection
 * ended) to its next state; phi was computed by the sweep. */
static void s_tick_one(void *ctx, ab_defer_node_t *n)
{
    ab_broker_t *b = ctx;
    ab_worker_rec_t *w = ab_defer_data(n, ab_peer_t, later)->worker;
    double suspect_at = (double)b->cfg->phi_threshold / 2, dead_at = (double)b->cfg->phi_threshold;
    if (!w)
        return;
    ab_health_t *h = &w->health;
    if (h->state == AB_HEALTH_EJECTED) {
        s_state(b, w, AB_HEALTH_PROBING, "ejection backoff ended");
        b->health->kick = 1;
    } else if (h->phi >= dead_at) {
        char why[64];
        snprintf(why, sizeof why, "silent, suspicion %.1f", h->phi);
        b->c.workers_suspected++;
        s_state(b, w, AB_HEALTH_DEAD, why);
        h->interval_ms = h->expect_ms = (uint32_t)b->cfg->health_floor_ms;
        h->nsamples = h->pos = 0;
        ab_health_take_back(b, w, "worker silent (heartbeat suspicion)");
    } else if (h->phi >= suspect_at) {
        s_state(b, w, AB_HEALTH_SUSPECT, "heartbeat late");
        /* Late beats are a flap: watch it closely again. */
        s_set_interval(b, w, (uint32_t)b->cfg->health_floor_ms);
    } else {
        s_state(b, w, AB_HEALTH_HEALTHY, "heartbeat on time again");
        b->health->kick = 1;
    }
}

/* Runs every sweep: suspicion of silent workers, ejections that ended, and
 * the reset of the ejection streak after a long healthy spell. Workers are
 * queued first, acted on after the walk: acting on one may drop peers. */
void ab_health_tick(ab_broker_t *b, int64_t now)
{
    ab_defer_t act;
    ab_defer_init(&act);
    double suspect_at = (double)b->cfg->phi_threshold / 2, dead_at = (double)b->cfg->phi_threshold;
    for (ab_peer_t *p = zhashx_first(b->peers); p; p = zhashx_next(b->peers)) {
        ab_worker_rec_t *w = p->worker;
        if (!w)
            continue;
        ab_health_t *h = &w->health;
        int64_t last = p->last_seen_ms > h->last_hb_ms ? p->last_seen_ms : h->last_hb_ms;
        h->phi = s_phi(h, now - last);
        int due = (h->state == AB_HEALTH_HEALTHY && h->phi >= suspect_at) ||
                  ((h->state == AB_HEALTH_SUSPECT || h->state == AB_HEALTH_PROBING ||
                    h->state == AB_HEALTH_DRAINING) && h->phi >= dead_at) ||
                  (h->state == AB_HEALTH_SUSPECT && h->phi < suspect_at) ||
                  (h->state == AB_HEALTH_EJECTED && now >= h->ejected_until_ms);
        if (h->state == AB_HEALTH_HEALTHY && h->eject_streak &&
            now - h->healthy_since_ms > b->cfg->eject_max_ms)
            h->eject_streak = 0;
        if (due)
            ab_defer_add(&act, &p->later, s_tick_one);
    }
    ab_defer_run(&act, b);
}
