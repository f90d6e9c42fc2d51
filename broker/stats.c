/*
 * stats.c - the broker's figures, as answers to CONTROL queries.
 *
 * Counters are plain integers bumped on the hot path; everything derived
 * (rates, percentiles, per-service views) is computed here, only when an
 * operator asks or once per sweep for the rates.
 */
#include "broker.h"
#include "stats.h"
#include "link.h"
#include "auth.h"
#include "batching.h"
#include "directory.h"
#include "router.h"
#include "health.h"
#include "request.h"
#include "messaging.h"
#include "cache.h"
#include "clients.h"
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

#define AB_RATE_WINDOW_MS 1000

/* Bounds per connection (issue 11, router.c). */
static void s_bounds_stats(ab_broker_t *b, Agentbus__Stats *st)
{
    const ab_counters_t *c = &b->c;
    st->connections = ab_router_connections(b);
    st->conn_refused = c->conn_refused;
    st->handshakes_failed = c->handshakes_failed;
    ab_auth_handshakes(b, &st->handshakes_accepted, &st->handshakes_refused);
    st->out_busy = c->out_busy;
    st->out_dropped = c->out_dropped;
    st->slow_disconnects = c->slow_disconnects;
    st->slow_disconnect_bytes = c->slow_disconnect_bytes;
    st->out_lost_bytes = c->out_lost_bytes;
    for (ab_peer_t *p = zhashx_first(b->peers); p; p = zhashx_next(b->peers)) {
        if (p->out_over_ms)
            st->slow_peers++;
        if (p->out_fd == p->fd && p->out_kind)
            st->out_in_flight_bytes += p->out_sent - p->out_taken;
    }
}

int ab_stats_init(ab_broker_t *b)
{
    return ab_broker_every(b, AB_SWEEP_MS, ab_stats_tick) < 0 ? -1 : 0;
}

void ab_stats_tick(ab_broker_t *b, int64_t now)
{
    ab_counters_t *c = &b->c;
    int64_t dt = now - c->prev_ms;
    if (dt < AB_RATE_WINDOW_MS)
        return;
    double s = (double)dt / 1000.0;
    c->rate_msgs_in = (double)(c->msgs_in - c->prev_msgs_in) / s;
    c->rate_msgs_out = (double)(c->msgs_out - c->prev_msgs_out) / s;
    c->rate_bytes_in = (double)(c->bytes_in - c->prev_bytes_in) / s;
    c->rate_bytes_out = (double)(c->bytes_out - c->prev_bytes_out) / s;
    c->prev_msgs_in = c->msgs_in;
    c->prev_msgs_out = c->msgs_out;
    c->prev_bytes_in = c->bytes_in;
    c->prev_bytes_out = c->bytes_out;
    c->prev_ms = now;
}

/* Fills SI (and its latency, allocated by the caller) for service S. */
void ab_stats_service_info(ab_broker_t *b, ab_service_t *s, Agentbus__ServiceInfo *si,
                           Agentbus__LatencySummary *lat)
{
    agentbus__service_info__init(si);
    agentbus__latency_summary__init(lat);
    si->name = s->name;
    si->queue_depth = s->q_len;
    si->queue_max = (uint32_t)b->cfg->queue_max;
    si->workers = (uint32_t)zlistx_size(s->workers);
    for (ab_worker_rec_t *w = zlistx_first(s->workers); w; w = zlistx_next(s->workers)) {
        si->capacity += w->capacity;
        si->free_credit += ab_health_free_credit(w);
    }
    si->requests = s->requests;
    si->replies = s->replies;
    si->errors = s->errors;
    if (s->latency_us) { /* none until its first answer */
        lat->count = s->latency_us->total;
        lat->p50_us = ab_hist_percentile(s->latency_us, 50);
        lat->p95_us = ab_hist_percentile(s->latency_us, 95);
        lat->p99_us = ab_hist_percentile(s->latency_us, 99);
        lat->max_us = s->latency_us->max;
    }
    si->latency = lat;
    si->deadline_early = s->deadline_early;
}

/* Fills LI[AB_LANES] (and P, the pointers SI gets) with S's lanes. */
static void s_lanes_info(const ab_service_t *s, Agentbus__ServiceInfo *si, Agentbus__LaneInfo *li,
                         Agentbus__LaneInfo **p)
{
    for (int i = 0; i < AB_LANES; i++) {
        const ab_lane_t *l = &s->lanes[i];
        agentbus__lane_info__init(&li[i]);
        li[i].name = (char *)ab_lane_name(i);
        li[i].depth = l->depth;
        li[i].clients = (uint32_t)ab_idmap_size(&l->flows);
        li[i].dispatched = l->dispatched;
        li[i].waits = ab_lanes_wait_count(l);
        li[i].wait_p50_us = ab_lanes_wait_pct(l, 50);
        li[i].wait_p99_us = ab_lanes_wait_pct(l, 99);
        p[i] = &li[i];
    }
    si->n_lanes = AB_LANES;
    si->lanes = p;
}

typedef struct {
    Agentbus__ServiceInfo *infos;
    Agentbus__LatencySummary *lats;
    Agentbus__ServiceInfo **ptrs;
    Agentbus__LaneInfo *lanes; /* AB_LANES per service */
    Agentbus__LaneInfo **lane_ptrs;
    char (*remote)[256]; /* peers offering each (link.h) */
    size_t n;
} s_services_t;

static int s_services_build(ab_broker_t *b, s_services_t *out)
{
    size_t n = zhashx_size(b->services);
    out->n = 0;
    out->infos = calloc(n + 1, sizeof *out->infos);
    out->lats = calloc(n + 1, sizeof *out->lats);
    out->ptrs = calloc(n + 1, sizeof *out->ptrs);
    out->lanes = calloc((n + 1) * AB_LANES, sizeof *out->lanes);
    out->lane_ptrs = calloc((n + 1) * AB_LANES, sizeof *out->lane_ptrs);
    out->remote = calloc(n + 1, sizeof *out->remote);
    if (!out->infos || !out->lats || !out->ptrs || !out->lanes || !out->lane_ptrs ||
        !out->remote)
        return -1;
    for (ab_service_t *s = zhashx_first(b->services); s && out->n < n;
         s = zhashx_next(b->services)) {
        ab_stats_service_info(b, s, &out->infos[out->n], &out->lats[out->n]);
        s_lanes_info(s, &out->infos[out->n], &out->lanes[out->n * AB_LANES],
                     &out->lane_ptrs[out->n * AB_LANES]);
        out->infos[out->n].remote_workers =
            ab_link_service_remote(b, s, out->remote[out->n], sizeof out->remote[out->n]);
        out->infos[out->n].remote = out->remote[out->n];
        out->ptrs[out->n] = &out->infos[out->n];
        out->n++;
    }
    return 0;
}

static void s_services_free(s_services_t *sv)
{
    free(sv->infos);
    free(sv->lats);
    free(sv->ptrs);
    free(sv->lanes);
    free(sv->lane_ptrs);
    free(sv->remote);
}

static int s_pack(const ProtobufCMessage *m, uint8_t **out, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    *out = malloc(*len ? *len : 1);
    if (!*out)
        return -1;
    protobuf_c_message_pack(m, *out);
    return 0;
}

/* Who is connected, the traffic and its rates, requests and what became of
 * them, and the state peers make the broker keep (issue 11). */
static void s_traffic_stats(ab_broker_t *b, Agentbus__Stats *st)
{
    const ab_counters_t *c = &b->c;
    st->version = (char *)AB_VERSION_STRING;
    st->uptime_ms = (uint64_t)(ab_now_ms() - b->started_ms);
    for (ab_peer_t *p = zhashx_first(b->peers); p; p = zhashx_next(b->peers)) {
        if (p->link_role == AB_LINK_WORKER)
            st->remote_workers++;
        else if (p->link_role != AB_LINK_NONE)
            ; /* a link's connection or its client: counted as a peer broker */
        else if (p->role == AB_ROLE_WORKER)
            st->workers++;
        else if (p->role == AB_ROLE_CONTROL)
            st->controls++;
        else
            st->agents++;
    }
    st->peer_brokers = ab_link_up_count(b);
    st->agent_heartbeat_ms = b->agent_hb_ms;
    st->link_pub_unroutable = ab_link_topic_unroutable(b);
    st->msgs_in = c->msgs_in;
    st->msgs_out = c->msgs_out;
    st->bytes_in = c->bytes_in;
    st->bytes_out = c->bytes_out;
    st->msgs_in_per_s = c->rate_msgs_in;
    st->msgs_out_per_s = c->rate_msgs_out;
    st->bytes_in_per_s = c->rate_bytes_in;
    st->bytes_out_per_s = c->rate_bytes_out;
    st->requests = c->requests;
    st->replies = c->replies;
    st->replies_dropped = c->replies_dropped;
    st->malformed = c->malformed;
    st->send_failures = c->send_failures;
    st->pending = ab_idmap_size(&b->pending);
    st->cancelled = c->cancelled;
    st->cancelled_on_leave = c->cancelled_on_leave;
    st->registers_refused = c->registers_refused;
    st->service_count = (uint32_t)zhashx_size(b->services);
    st->services_expired = c->services_expired;
    st->services_refused = c->services_refused;
}

/* Failure handling (issue 5). */
static void s_failure_stats(ab_broker_t *b, Agentbus__Stats *st)
{
    const ab_counters_t *c = &b->c;
    st->redispatched = c->redispatched;
    st->retries_exhausted = c->retries_exhausted;
    st->duplicates_dropped = c->duplicates_dropped;
    st->late_replies = c->late_replies;
    st->answers_too_large = c->answers_too_large;
    st->deadline_expired = c->deadline_expired;
    st->workers_suspected = c->workers_suspected;
    st->workers_ejected = c->workers_ejected;
    st->disconnects = c->disconnects;
    st->send_eagain = c->send_eagain;
    st->send_unreachable = c->send_unreachable;
    st->client_limit_busy = c->client_limit_busy;
    st->client_queue_busy = c->client_queue_busy;
    st->held_bytes = b->held_bytes;
    st->held_bytes_busy = c->held_bytes_busy;
    st->deadline_early = c->deadline_early;
    st->deadline_busy = c->deadline_busy;
    st->cancels_unanswered = c->cancels_unanswered;
    st->clients = (uint32_t)zhashx_size(b->clients);
    st->draining = b->draining;
    st->probes = c->probes;
}

/* Batching and compression (issue 4). */
static void s_wire_stats(const ab_counters_t *c, Agentbus__Stats *st)
{
    st->batches_in = c->batches_in;
    st->batched_msgs_in = c->batched_msgs_in;
    st->batches_out = c->batches_out;
    st->batched_msgs_out = c->batched_msgs_out;
    /* Messages per ZeroMQ message: a BATCH counts once in msgs_in/out. */
    if (c->msgs_in)
        st->batch_factor_in = (double)(c->msgs_in - c->batches_in + c->batched_msgs_in) /
                              (double)c->msgs_in;
    if (c->msgs_out)
        st->batch_factor_out = (double)(c->msgs_out - c->batches_out + c->batched_msgs_out) /
                               (double)c->msgs_out;
    st->lz4_msgs = c->lz4_msgs;
    st->lz4_wire_bytes = c->lz4_wire_bytes;
    st->lz4_original_bytes = c->lz4_original_bytes;
    if (c->lz4_wire_bytes)
        st->compression_ratio = (double)c->lz4_original_bytes / (double)c->lz4_wire_bytes;
    st->bytes_saved = c->lz4_original_bytes > c->lz4_wire_bytes
                          ? c->lz4_original_bytes - c->lz4_wire_bytes
                          : 0;
    st->lz4_skipped = c->lz4_skipped;
    st->lz4_refused = c->lz4_refused;
    st->link_lz4_plain = c->link_lz4_plain;
    st->batch_malformed = c->batch_malformed;
}

/* Storage the Stats message points into until it is packed. */
enum { S_NE_MAX = AB_WIRE_ERROR_COUNT + AB_STATUS_COUNT, S_NH = AB_HEALTH_DRAINING + 1 };
_Static_assert(S_NH <= AB_HEALTH_KINDS_MAX, "counters.h: health_entered too small");
typedef struct {
    Agentbus__ErrorCount ec[S_NE_MAX], *ecp[S_NE_MAX];
    char names[AB_STATUS_COUNT][32];
    Agentbus__StateCount hc[S_NH], *hcp[S_NH];
} s_stats_mem_t;

/* Errors by code: those the broker answered or forwarded, then the reasons
 * malformed messages were rejected for. */
static void s_error_stats(const ab_counters_t *c, Agentbus__Stats *st, s_stats_mem_t *m)
{
    size_t ne = 0;
    for (int i = 0; i < AB_WIRE_ERROR_COUNT; i++) {
        if (!c->errors_sent[i] || ab_wire_error_at(i) == AB_ERR_NONE)
            continue;
        agentbus__error_count__init(&m->ec[ne]);
        m->ec[ne].code = (char *)ab_wire_error_name(ab_wire_error_at(i));
        m->ec[ne].count = c->errors_sent[i];
        m->ecp[ne] = &m->ec[ne];
        ne++;
    }
    for (int i = 0; i < AB_STATUS_COUNT; i++) {
        if (!c->rejected[i] || ab_status_at(i) == AB_OK)
            continue;
        agentbus__error_count__init(&m->ec[ne]);
        snprintf(m->names[i], sizeof m->names[i], "rejected:%s", ab_status_name(ab_status_at(i)));
        m->ec[ne].code = m->names[i];
        m->ec[ne].count = c->rejected[i];
        m->ecp[ne] = &m->ec[ne];
        ne++;
    }
    st->n_errors = ne;
    st->errors = m->ecp;
}

/* Worker health transitions by the state entered, every state listed (the
 * figures of /metrics' agentbus_health_transitions_total). */
static void s_health_stats(const ab_counters_t *c, Agentbus__Stats *st, s_stats_mem_t *m)
{
    for (int k = 0; k < S_NH; k++) {
        agentbus__state_count__init(&m->hc[k]);
        m->hc[k].state = (char *)ab_health_name((ab_health_kind_t)k);
        m->hc[k].count = c->health_entered[k];
        m->hcp[k] = &m->hc[k];
    }
    st->n_health_transitions = S_NH;
    st->health_transitions = m->hcp;
}

/* Queued requests by (service, model): what the model index holds, at most
 * AB_LANES_SCAN models per service. Arrays in MQ/MQP (freed by the caller);
 * -1 out of memory. */
static int s_model_queues(ab_broker_t *b, Agentbus__Stats *st, Agentbus__ModelQueue **mq,
                          Agentbus__ModelQueue ***mqp)
{
    size_t cap = 0, n = 0;
    for (ab_service_t *s = zhashx_first(b->services); s; s = zhashx_next(b->services))
        cap += s->q_len ? AB_LANES_SCAN : 0;
    *mq = calloc(cap + 1, sizeof **mq);
    *mqp = calloc(cap + 1, sizeof **mqp);
    if (!*mq || !*mqp)
        return -1;
    const char *names[AB_LANES_SCAN];
    uint32_t counts[AB_LANES_SCAN];
    for (ab_service_t *s = zhashx_first(b->services); s; s = zhashx_next(b->services)) {
        if (!s->q_len)
            continue;
        size_t k = ab_lanes_models(s, names, counts, AB_LANES_SCAN);
        for (size_t i = 0; i < k && n < cap; i++, n++) {
            agentbus__model_queue__init(&(*mq)[n]);
            (*mq)[n].service = s->name;
            (*mq)[n].model = (char *)names[i];
            (*mq)[n].queued = counts[i];
            (*mqp)[n] = &(*mq)[n];
        }
    }
    st->n_model_queues = n;
    st->model_queues = *mqp;
    return 0;
}

static int s_answer_stats(ab_broker_t *b, uint8_t **out, size_t *len)
{
    Agentbus__Stats st;
    agentbus__stats__init(&st);
    s_stats_mem_t m;
    s_traffic_stats(b, &st);
    s_failure_stats(b, &st);
    s_wire_stats(&b->c, &st);
    s_bounds_stats(b, &st);
    s_error_stats(&b->c, &st, &m);
    s_health_stats(&b->c, &st, &m);
    ab_msgs_stats(b, &st);
    st.cache = ab_cache_stats(b);

    s_services_t sv;
    Agentbus__ModelQueue *mq = NULL, **mqp = NULL;
    int rc = s_services_build(b, &sv);
    if (rc == 0)
        rc = s_model_queues(b, &st, &mq, &mqp);
    if (rc == 0) {
        st.n_services = sv.n;
        st.services = sv.ptrs;
        rc = s_pack(&st.base, out, len);
    }
    free(mq);
    free(mqp);
    s_services_free(&sv);
    return rc;
}

static int s_answer_services(ab_broker_t *b, uint8_t **out, size_t *len)
{
    Agentbus__ServiceList sl;
    agentbus__service_list__init(&sl);
    s_services_t sv;
    int rc = s_services_build(b, &sv);
    if (rc == 0) {
        sl.n_services = sv.n;
        sl.services = sv.ptrs;
        rc = s_pack(&sl.base, out, len);
    }
    s_services_free(&sv);
    return rc;
}

static int s_answer_workers(ab_broker_t *b, uint8_t **out, size_t *len)
{
    size_t n = 0, cap = zhashx_size(b->peers) + 1;
    ab_winfo_t *wi = calloc(cap, sizeof *wi);
    Agentbus__WorkerInfo **wp = calloc(cap, sizeof *wp);
    int rc = -1;
    int64_t now = ab_now_ms();
    if (!wi || !wp)
        goto done;
    for (ab_peer_t *p = zhashx_first(b->peers); p && n < cap; p = zhashx_next(b->peers)) {
        if (!p->worker)
            continue;
        int frc = ab_winfo_fill(b, p->worker, &wi[n], now);
        wp[n] = &wi[n].info;
        n++;
        if (frc != 0)
            goto done;
    }
    Agentbus__WorkerList wl;
    agentbus__worker_list__init(&wl);
    wl.n_workers = n;
    wl.workers = wp;
    rc = s_pack(&wl.base, out, len);
done:
    for (size_t i = 0; wi && i < n; i++)
        ab_winfo_free(&wi[i]);
    free(wi);
    free(wp);
    return rc;
}

int ab_stats_answer(ab_broker_t *b, const char *what, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (strcmp(what, "stats") == 0)
        return s_answer_stats(b, out, len);
    if (strcmp(what, "services") == 0)
        return s_answer_services(b, out, len);
    if (strcmp(what, "workers") == 0)
        return s_answer_workers(b, out, len);
    if (strcmp(what, "agents") == 0)
        return ab_msgs_agents_answer(b, out, len);
    if (strcmp(what, "clients") == 0)
        return ab_clients_answer(b, out, len);
    if (strcmp(what, "peers") == 0)
        return ab_link_control_peers(b, out, len);
    return -1;
}

void ab_stats_on_control(ab_broker_t *b, const ab_rid_t *rid, const ab_header_t *in)
{
    char what[64];
    ab_view_copy(in->target, what, sizeof what);
    uint8_t *buf = NULL;
    size_t len = 0;
    const char *err = NULL;
    if (strncmp(what, "keys", 4) == 0 && (!what[4] || what[4] == ' ')) {
        int code = ab_auth_control(b, what, &buf, &len, &err);
        if (code != 0) {
            ab_send_error(b, rid, in->id, code, err);
            return;
        }
    } else if (strncmp(what, "cache", 5) == 0 && (!what[5] || what[5] == ' ')) {
        int code = ab_cache_control(b, what, &buf, &len, &err);
        if (code != 0) {
            ab_send_error(b, rid, in->id, code, err);
            return;
        }
    } else if (ab_stats_answer(b, what, &buf, &len) != 0) {
        ab_send_error(b, rid, in->id, AB_ERR_UNSUPPORTED,
                      "unknown control query (try stats, services, workers, agents, clients)");
        return;
    }
    ab_header_t h = ab_header_init(AB_KIND_REPLY);
    h.correlation_id = in->id;
    ab_peer_t *p = ab_peer_lookup(b, rid);
    ab_batching_compress(b, p, &h, &buf, &len);
    zmq_msg_t m;
    zmq_msg_init_size(&m, len);
    if (len)
        memcpy(zmq_msg_data(&m), buf, len);
    free(buf);
    ab_send(b, rid, &h, &m);
    zmq_msg_close(&m);
}
