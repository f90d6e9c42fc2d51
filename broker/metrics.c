/*
 * metrics.c - the Prometheus exposition of the broker's figures (see
 * metrics.h and docs/operations.md for the families).
 *
 * Rendered on the loop's thread from the same sources as `brokerctl stats`
 * (counters.h, the services, the cache's and messaging's own figures), then
 * handed to metrics_http.c. Names carry the agentbus_ prefix; counters end in
 * _total; each family is written once, HELP and TYPE first.
 */
#define AB_LOG_SUBSYS "metrics" /* log.h: the subsystem in log lines */
#include "metrics.h"
#include "cache.h"
#include "health.h"
#include "metrics_http.h"
#include "auth.h"
#include "messaging.h"
#include "router.h"
#include "service.h"
#include "clients.h"
#include "agentbus.pb-c.h"
#include "util.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ab_metrics {
    ab_http_t *http;
};

typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} s_out_t;

static void s_printf(s_out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_printf(s_out_t *o, const char *fmt, ...)
{
    for (int tries = 0; tries < 2 && !o->oom; tries++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->oom = 1;
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = (o->cap + (size_t)n + 1) * 2;
        char *p = realloc(o->p, cap);
        if (!p) {
            o->oom = 1;
            return;
        }
        o->p = p;
        o->cap = cap;
    }
}

static void s_family(s_out_t *o, const char *name, const char *type, const char *help)
{
    s_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* KEY="VAL", with \, " and newline escaped as the format asks. */
static void s_pair(s_out_t *o, const char *key, const char *val)
{
    s_printf(o, "%s=\"", key);
    for (const char *c = val; *c; c++) {
        if (*c == '\\' || *c == '"')
            s_printf(o, "\\%c", *c);
        else if (*c == '\n')
            s_printf(o, "\\n");
        else
            s_printf(o, "%c", *c);
    }
    s_printf(o, "\"");
}

static void s_label(s_out_t *o, const char *key, const char *val)
{
    s_printf(o, "{");
    s_pair(o, key, val);
    s_printf(o, "}");
}

/* A sample value: integers (every counter) exactly, others to 15 digits. */
static void s_num(s_out_t *o, double v)
{
    if (v == floor(v) && fabs(v) < 9e15)
        s_printf(o, " %.0f\n", v);
    else
        s_printf(o, " %.15g\n", v);
}

static void s_one(s_out_t *o, const char *name, const char *type, const char *help, double v)
{
    s_family(o, name, type, help);
    s_printf(o, "%s", name);
    s_num(o, v);
}

/* One sample of family NAME with one label. */
static void s_labelled(s_out_t *o, const char *name, const char *key, const char *val, double v)
{
    s_printf(o, "%s", name);
    s_label(o, key, val);
    s_num(o, v);
}

#define C(f) offsetof(ab_counters_t, f)
static const struct {
    const char *name, *help;
    size_t off;
} s_counters[] = {
    {"agentbus_messages_received_total", "ZeroMQ messages received (a BATCH counts once)",
     C(msgs_in)},
    {"agentbus_messages_sent_total", "ZeroMQ messages sent (a BATCH counts once)", C(msgs_out)},
    {"agentbus_received_bytes_total", "Bytes received in messages", C(bytes_in)},
    {"agentbus_sent_bytes_total", "Bytes sent in messages", C(bytes_out)},
    {"agentbus_requests_total", "Requests received from agents", C(requests)},
    {"agentbus_replies_total", "Final replies forwarded to agents", C(replies)},
    {"agentbus_replies_dropped_total", "Replies whose request was gone", C(replies_dropped)},
    {"agentbus_malformed_total", "Messages rejected as malformed", C(malformed)},
    {"agentbus_send_failures_total", "Sends that failed", C(send_failures)},
    {"agentbus_redispatched_total", "Requests queued again after a worker loss", C(redispatched)},
    {"agentbus_retries_exhausted_total", "Requests answered WORKER_LOST after max-attempts",
     C(retries_exhausted)},
    {"agentbus_duplicates_dropped_total", "Second answers to an answered request",
     C(duplicates_dropped)},
    {"agentbus_late_replies_total", "Answers from a presumed-dead worker that won",
     C(late_replies)},
    {"agentbus_answers_too_large_total",
     "Answers over their client's max payload, sent as ERROR TOO_LARGE instead",
     C(answers_too_large)},
    {"agentbus_deadline_expired_total", "Requests answered DEADLINE by the broker",
     C(deadline_expired)},
    {"agentbus_workers_suspected_total", "Workers declared dead by heartbeat suspicion",
     C(workers_suspected)},
    {"agentbus_workers_ejected_total", "Circuit-breaker ejections of workers", C(workers_ejected)},
    {"agentbus_probes_total", "Half-open probe requests sent", C(probes)},
    {"agentbus_disconnects_total", "Transport disconnects seen", C(disconnects)},
    {"agentbus_send_eagain_total", "Sends refused because the peer's pipe was full",
     C(send_eagain)},
    {"agentbus_send_unreachable_total", "Sends refused because the peer was gone",
     C(send_unreachable)},
    {"agentbus_client_limit_busy_total", "BUSY answers: a client's in-flight limit was reached",
     C(client_limit_busy)},
    {"agentbus_cancelled_total", "Requests cancelled by their client", C(cancelled)},
    {"agentbus_cancelled_on_leave_total", "Requests cancelled because their client left",
     C(cancelled_on_leave)},
    {"agentbus_registers_refused_total", "REGISTERs over a register-max-* limit",
     C(registers_refused)},
    {"agentbus_services_expired_total", "Idle services removed", C(services_expired)},
    {"agentbus_services_refused_total", "Services refused at max-services", C(services_refused)},
    {"agentbus_batches_received_total", "BATCH messages received", C(batches_in)},
    {"agentbus_batched_messages_received_total", "Messages received inside BATCHes",
     C(batched_msgs_in)},
    {"agentbus_batches_sent_total", "BATCH messages sent", C(batches_out)},
    {"agentbus_batched_messages_sent_total", "Messages sent inside BATCHes", C(batched_msgs_out)},
    {"agentbus_batches_malformed_total", "BATCHes rejected as malformed", C(batch_malformed)},
    {"agentbus_lz4_messages_total", "Payloads the broker lz4-compressed", C(lz4_msgs)},
    {"agentbus_lz4_wire_bytes_total", "Compressed bytes of those payloads", C(lz4_wire_bytes)},
    {"agentbus_lz4_original_bytes_total", "Original bytes of those payloads",
     C(lz4_original_bytes)},
    {"agentbus_lz4_skipped_total", "Payloads not compressed (too little saving)", C(lz4_skipped)},
    {"agentbus_lz4_refused_total", "lz4 requests refused by a worker that cannot read lz4",
     C(lz4_refused)},
    {"agentbus_out_busy_total", "Requests BUSY because the client's connection was over bound",
     C(out_busy)},
    {"agentbus_out_dropped_total", "Publications dropped for a connection over bound",
     C(out_dropped)},
    {"agentbus_slow_disconnects_total", "Peers disconnected for not reading", C(slow_disconnects)},
    {"agentbus_connections_refused_total", "Connections refused at max-connections",
     C(conn_refused)},
    {"agentbus_handshakes_failed_total",
     "ZMTP handshakes that failed before the key check (no key, wrong mechanism, not ZeroMQ)",
     C(handshakes_failed)},
    {"agentbus_client_queue_busy_total", "BUSY answers: a client's max-client-queued was reached",
     C(client_queue_busy)},
    {"agentbus_held_bytes_busy_total",
     "BUSY answers: max-client-held-bytes or max-held-bytes would have been passed",
     C(held_bytes_busy)},
    {"agentbus_deadline_early_total",
     "Requests answered DEADLINE before dispatch: less time left than a fast answer",
     C(deadline_early)},
    {"agentbus_deadline_busy_total",
     "Deadlines that passed at a worker that answered other requests meanwhile "
     "(not held against it)",
     C(deadline_busy)},
    {"agentbus_cancels_unanswered_total",
     "Cancelled requests a worker still held cancel-grace-ms later, having answered nothing since "
     "(each a failure of the worker)",
     C(cancels_unanswered)},
};

static void s_core(s_out_t *o, ab_broker_t *b, int64_t now)
{
    s_family(o, "agentbus_build_info", "gauge", "Version of the broker (value 1)");
    s_labelled(o, "agentbus_build_info", "version", AB_PROGRAM_VERSION, 1);
    s_one(o, "agentbus_uptime_seconds", "gauge", "Seconds since the broker started",
          (double)(now - b->started_ms) / 1000.0);
    s_one(o, "agentbus_draining", "gauge", "1 while the broker drains before stopping",
          b->draining || atomic_load(&b->term));
    s_one(o, "agentbus_connections", "gauge", "Open connections",
          ab_router_connections(b));
    double roles[3] = {0, 0, 0}; /* agent, worker, control */
    for (ab_peer_t *p = zhashx_first(b->peers); p; p = zhashx_next(b->peers))
        roles[p->role == AB_ROLE_WORKER ? 1 : p->role == AB_ROLE_CONTROL ? 2 : 0]++;
    s_family(o, "agentbus_peers", "gauge", "Peers known, by role");
    s_labelled(o, "agentbus_peers", "role", "agent", roles[0]);
    s_labelled(o, "agentbus_peers", "role", "worker", roles[1]);
    s_labelled(o, "agentbus_peers", "role", "control", roles[2]);
    s_one(o, "agentbus_pending_requests", "gauge", "Requests held (queued or in flight)",
          (double)ab_idmap_size(&b->pending));
    s_one(o, "agentbus_held_request_bytes", "gauge",
          "Bytes of the requests held, payloads and records (queued, at workers, waiting on "
          "a twin)",
          (double)b->held_bytes);
    s_one(o, "agentbus_services", "gauge", "Services known", (double)zhashx_size(b->services));
    for (size_t i = 0; i < sizeof s_counters / sizeof s_counters[0]; i++)
        s_one(o, s_counters[i].name, "counter", s_counters[i].help,
              (double)*(const uint64_t *)((const char *)&b->c + s_counters[i].off));
    s_one(o, "agentbus_http_slow_closed_total", "counter",
          "HTTP connections (this endpoint) closed for no complete request within 5 s",
          (double)ab_http_cut(b->metrics->http));
    uint64_t hs_ok, hs_refused;
    ab_auth_handshakes(b, &hs_ok, &hs_refused);
    s_family(o, "agentbus_handshakes_total", "counter", "CURVE keys checked, by result");
    s_labelled(o, "agentbus_handshakes_total", "result", "accepted", (double)hs_ok);
    s_labelled(o, "agentbus_handshakes_total", "result", "refused", (double)hs_refused);
}

static void s_errors(s_out_t *o, ab_broker_t *b)
{
    const ab_counters_t *c = &b->c;
    s_family(o, "agentbus_errors_total", "counter", "ERROR replies sent or forwarded, by code");
    for (int i = 0; i < AB_WIRE_ERROR_COUNT; i++)
        if (ab_wire_error_at(i) != AB_ERR_NONE)
            s_labelled(o, "agentbus_errors_total", "code",
                       ab_wire_error_name(ab_wire_error_at(i)), (double)c->errors_sent[i]);
    s_family(o, "agentbus_rejected_total", "counter", "Received messages rejected, by reason");
    for (int i = 0; i < AB_STATUS_COUNT; i++)
        if (ab_status_at(i) != AB_OK)
            s_labelled(o, "agentbus_rejected_total", "reason", ab_status_name(ab_status_at(i)),
                       (double)c->rejected[i]);
}

/* Per-service figures, one family at a time (each family is written once). */
static void s_services(s_out_t *o, ab_broker_t *b)
{
    static const struct {
        const char *name, *type, *help;
    } fam[] = {
        {"agentbus_service_requests_total", "counter", "Requests to the service"},
        {"agentbus_service_replies_total", "counter", "Replies from the service's workers"},
        {"agentbus_service_errors_total", "counter", "ERROR answers to the service's requests"},
        {"agentbus_service_queue_depth", "gauge", "Requests waiting for a worker"},
        {"agentbus_service_workers", "gauge", "Workers registered"},
        {"agentbus_service_capacity", "gauge", "Requests its workers take at once"},
    };
    for (size_t f = 0; f < sizeof fam / sizeof fam[0]; f++) {
        s_family(o, fam[f].name, fam[f].type, fam[f].help);
        for (ab_service_t *s = zhashx_first(b->services); s; s = zhashx_next(b->services)) {
            double cap = 0;
            for (ab_worker_rec_t *w = zlistx_first(s->workers); w; w = zlistx_next(s->workers))
                cap += w->capacity;
            double v[] = {(double)s->requests, (double)s->replies, (double)s->errors,
                          (double)s->q_len, (double)zlistx_size(s->workers), cap};
            s_labelled(o, fam[f].name, "service", s->name, v[f]);
        }
    }
}

/* Upper bounds of the latency buckets, in microseconds. Each is moved up
 * to the top of the histogram bucket (common/hist.h) holding it, so a
 * Prometheus bucket is an exact sum of whole histogram buckets. */
static const uint64_t s_bounds_us[] = {500,     1000,    2500,    5000,     10000,    25000,
                                       50000,   100000,  250000,  500000,   1000000,  2500000,
                                       5000000, 10000000, 30000000, 60000000, 120000000};
#define NBOUNDS (sizeof s_bounds_us / sizeof s_bounds_us[0])

static void s_histogram(s_out_t *o, const char *name, const char *svc, const ab_hist_t *h)
{
    uint64_t cum = 0;
    unsigned i = 0;
    for (size_t k = 0; k < NBOUNDS; k++) {
        unsigned top = ab_hist_bucket(s_bounds_us[k]);
        for (; i <= top; i++)
            cum += h->counts[i];
        s_printf(o, "%s_bucket{", name);
        s_pair(o, "service", svc);
        s_printf(o, ",le=\"%.9g\"} %llu\n", (double)ab_hist_bucket_high(top) / 1e6,
                 (unsigned long long)cum);
    }
    s_printf(o, "%s_bucket{", name);
    s_pair(o, "service", svc);
    s_printf(o, ",le=\"+Inf\"} %llu\n", (unsigned long long)h->total);
    s_printf(o, "%s_sum", name);
    s_label(o, "service", svc);
    s_num(o, (double)h->sum / 1e6);
    s_printf(o, "%s_count", name);
    s_label(o, "service", svc);
    s_printf(o, " %llu\n", (unsigned long long)h->total);
}

static void s_latency(s_out_t *o, ab_broker_t *b)
{
    static const ab_hist_t empty; /* a service with no answer yet */
    const char *name = "agentbus_service_latency_seconds";
    s_family(o, name, "histogram", "Request latency at the broker, arrival to final answer");
    for (ab_service_t *s = zhashx_first(b->services); s; s = zhashx_next(b->services))
        s_histogram(o, name, s->name, s->latency_us ? s->latency_us : &empty);
}

_Static_assert(AB_HEALTH_DRAINING < AB_HEALTH_KINDS_MAX, "counters.h: health_entered too small");

static void s_health(s_out_t *o, ab_broker_t *b)
{
    enum { N = AB_HEALTH_DRAINING + 1 };
    double now_in[N] = {0};
    for (ab_peer_t *p = zhashx_first(b->peers); p; p = zhashx_next(b->peers))
        if (p->worker && (unsigned)p->worker->health.state < N)
            now_in[p->worker->health.state]++;
    s_family(o, "agentbus_workers", "gauge", "Workers by health state");
    for (int k = 0; k < N; k++)
        s_labelled(o, "agentbus_workers", "state", ab_health_name(k), now_in[k]);
    s_family(o, "agentbus_health_transitions_total", "counter",
             "Worker health transitions, by the state entered");
    for (int k = 0; k < N && k < AB_HEALTH_KINDS_MAX; k++)
        s_labelled(o, "agentbus_health_transitions_total", "state", ab_health_name(k),
                   (double)b->c.health_entered[k]);
}

/* Per lane of each service (issue 16): labels service and lane. */
static void s_lanes(s_out_t *o, ab_broker_t *b)
{
    static const struct {
        const char *name, *type, *help;
    } fam[] = {
        {"agentbus_lane_queue_depth", "gauge", "Requests waiting in the lane"},
        {"agentbus_lane_clients", "gauge", "Clients with requests waiting in the lane"},
        {"agentbus_lane_dispatched_total", "counter", "Requests dispatched from the lane"},
        {"agentbus_lane_wait_p50_seconds", "gauge", "Median queue wait in the lane, since start"},
        {"agentbus_lane_wait_p99_seconds", "gauge", "99th percentile queue wait, since start"},
    };
    for (size_t f = 0; f < sizeof fam / sizeof fam[0]; f++) {
        s_family(o, fam[f].name, fam[f].type, fam[f].help);
        for (ab_service_t *s = zhashx_first(b->services); s; s = zhashx_next(b->services))
            for (int i = 0; i < AB_LANES; i++) {
                const ab_lane_t *l = &s->lanes[i];
                double v[] = {l->depth, (double)ab_idmap_size(&l->flows), (double)l->dispatched,
                              (double)ab_lanes_wait_pct(l, 50) / 1e6,
                              (double)ab_lanes_wait_pct(l, 99) / 1e6};
                s_printf(o, "%s{", fam[f].name);
                s_pair(o, "service", s->name);
                s_printf(o, ",");
                s_pair(o, "lane", ab_lane_name(i));
                s_printf(o, "}");
                s_num(o, v[f]);
            }
    }
}

#define AB_METRICS_CLIENTS_MAX 100 /* per-client series: a scrape stays small */

/* Per client (issue 16): the first AB_METRICS_CLIENTS_MAX records, by
 * identity; brokerctl clients lists them all. */
static void s_clients(s_out_t *o, ab_broker_t *b)
{
    static const struct {
        const char *name, *type, *help;
    } fam[] = {
        {"agentbus_client_in_flight", "gauge", "Requests of the client at a worker"},
        {"agentbus_client_queued", "gauge", "Requests of the client waiting in a lane"},
        {"agentbus_client_refused_total", "counter", "Requests refused BUSY by its quotas"},
    };
    s_one(o, "agentbus_clients", "gauge", "Client records (connected or holding requests)",
          (double)zhashx_size(b->clients));
    for (size_t f = 0; f < sizeof fam / sizeof fam[0]; f++) {
        s_family(o, fam[f].name, fam[f].type, fam[f].help);
        int n = 0;
        for (ab_client_rec_t *c = zhashx_first(b->clients); c && n < AB_METRICS_CLIENTS_MAX;
             c = zhashx_next(b->clients), n++) {
            double v[] = {c->held > c->queued ? c->held - c->queued : 0, c->queued,
                          (double)c->refused};
            s_labelled(o, fam[f].name, "client", c->ident, v[f]);
        }
    }
}

static void s_cache(s_out_t *o, ab_broker_t *b)
{
    Agentbus__CacheStats *cs = ab_cache_stats(b);
    s_one(o, "agentbus_cache_enabled", "gauge", "1 when the inference cache is on", cs != NULL);
    if (!cs)
        return;
    static const struct {
        const char *name, *type, *help;
        size_t off;
    } fam[] = {
#define T(f) offsetof(Agentbus__CacheTier, f)
        {"agentbus_cache_hits_total", "counter", "Cache hits, by tier", T(hits)},
        {"agentbus_cache_misses_total", "counter", "Cache misses, by tier", T(misses)},
        {"agentbus_cache_stores_total", "counter", "Replies stored, by tier", T(stores)},
        {"agentbus_cache_evictions_total", "counter", "Entries evicted for room, by tier",
         T(evictions)},
        {"agentbus_cache_expired_total", "counter", "Entries whose TTL passed, by tier",
         T(expired)},
        {"agentbus_cache_bytes", "gauge", "Bytes held, by tier", T(bytes)},
        {"agentbus_cache_max_bytes", "gauge", "Byte bound, by tier", T(max_bytes)},
        {"agentbus_cache_entries", "gauge", "Entries held, by tier", T(entries)},
#undef T
    };
    for (size_t f = 0; f < sizeof fam / sizeof fam[0]; f++) {
        s_family(o, fam[f].name, fam[f].type, fam[f].help);
        for (size_t t = 0; t < cs->n_tiers; t++)
            s_labelled(o, fam[f].name, "tier", cs->tiers[t]->name,
                       (double)*(const uint64_t *)((const char *)cs->tiers[t] + fam[f].off));
    }
    s_one(o, "agentbus_cache_coalesced_total", "counter",
          "Requests that waited for an identical one in flight", (double)cs->coalesced);
    s_one(o, "agentbus_cache_uncacheable_total", "counter", "Requests found not cacheable",
          (double)cs->uncacheable);
    s_one(o, "agentbus_cache_in_flight", "gauge", "Single-flight groups now",
          (double)cs->in_flight);
}

static void s_messaging(s_out_t *o, ab_broker_t *b)
{
    Agentbus__Stats st;
    agentbus__stats__init(&st);
    ab_msgs_stats(b, &st);
    s_one(o, "agentbus_direct_sent_total", "counter", "Direct messages accepted",
          (double)st.msgs_sent);
    s_one(o, "agentbus_direct_delivered_total", "counter", "Direct messages delivered",
          (double)st.msgs_delivered);
    s_one(o, "agentbus_direct_expired_total", "counter", "Mailbox messages expired undelivered",
          (double)st.msgs_expired);
    s_one(o, "agentbus_mailbox_messages", "gauge", "Messages waiting in mailboxes",
          (double)st.mailbox_msgs);
    s_one(o, "agentbus_published_total", "counter", "Publications received",
          (double)st.published);
    s_one(o, "agentbus_subscribers", "gauge", "Subscriptions", (double)st.subscribers);
}

char *ab_metrics_render(ab_broker_t *b, size_t *len)
{
    s_out_t o = {malloc(16384), 0, 16384, 0};
    if (!o.p)
        return NULL;
    o.p[0] = '\0';
    s_core(&o, b, ab_now_ms());
    s_errors(&o, b);
    s_services(&o, b);
    s_latency(&o, b);
    s_lanes(&o, b);
    s_clients(&o, b);
    s_health(&o, b);
    s_cache(&o, b);
    s_messaging(&o, b);
    if (o.oom) {
        free(o.p);
        return NULL;
    }
    *len = o.len;
    return o.p;
}

static void s_tick(ab_broker_t *b, int64_t now)
{
    ab_http_t *h = b->metrics->http;
    int ready = !b->draining && !atomic_load(&b->term);
    size_t len = 0;
    char *text = ab_http_wanted(h) ? ab_metrics_render(b, &len) : NULL;
    if (text)
        ab_http_publish(h, text, len, now, ready);
    else /* nobody asked, or out of memory (the scrape then gets 503) */
        ab_http_beat(h, now, ready);
}

int ab_metrics_init(ab_broker_t *b)
{
    if (!b->cfg->http || !b->cfg->http[0])
        return 0;
    b->metrics = calloc(1, sizeof *b->metrics);
    if (!b->metrics || !(b->metrics->http = ab_http_start(b->cfg->http)))
        return -1;
    AB_INFO("serving /metrics, /healthz, /readyz over HTTP on %s (port %u)", b->cfg->http,
            ab_http_port(b->metrics->http));
    return ab_broker_every(b, AB_METRICS_MS, s_tick) < 0 ? -1 : 0;
}

void ab_metrics_fini(ab_broker_t *b)
{
    if (!b->metrics)
        return;
    ab_http_stop(&b->metrics->http);
    free(b->metrics);
    b->metrics = NULL;
}
