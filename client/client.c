/*
 * client.c - the client (agent) side: requests, replies, streaming.
 *
 * Each request in flight is a call record keyed by its id. The broker
 * answers every request exactly once (REPLY or ERROR, after any number of
 * PARTIALs); the library also keeps a local deadline, a little after the
 * broker's, so a request never waits forever when the broker is gone.
 */
#include "idmap.h"
#include "internal.h"
#include "parse.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define AB_LOCAL_GRACE_MS 250 /* local deadline = broker deadline + this */

typedef struct {
    uint64_t id;
    uint32_t kind; /* what was sent: only a REQUEST's answer streams (PARTIAL) */
    char *peer;    /* an ab_client_ask: the agent whose answer (a SEND) ends it */
    ab_reply_fn *fn;
    void *arg;
    int64_t deadline_ms;
} s_call_t;

/* Ended call records kept for the next calls: a malloc and a free per
 * request, both at the allocator's slow path once a window of calls
 * outlives its small per-thread cache, were ~8% of the library's
 * instructions at 64 B (callgrind). Bounded (48 KiB); none under ASan. */
#define S_CALL_SPARE_MAX (AB_ASAN ? 0 : 1024)

/* A zeroed call record, a spare one when C has it. */
static s_call_t *s_call_new(ab_client_t *c)
{
    s_call_t *call = c->call_spare;
    if (!call)
        return calloc(1, sizeof *call);
    c->call_spare = *(void **)call;
    c->call_nspare--;
    memset(call, 0, sizeof *call);
    return call;
}

/* Ends CALL's record. It is out of C's call table already: nothing in the
 * library points at it (its id, not its address, is what answers find). */
static void s_call_free(ab_client_t *c, s_call_t *call)
{
    if (!call)
        return;
    free(call->peer);
    call->peer = NULL;
    if (c->call_nspare + 1 > S_CALL_SPARE_MAX) { /* (+ 1: no always-true test when 0) */
        free(call);
        return;
    }
    *(void **)call = c->call_spare;
    c->call_spare = call;
    c->call_nspare++;
}


int ab_client_new(ab_client_t **out, const ab_options_t *opts)
{
    if (!out)
        return AB_EINVAL;
    *out = NULL;
    ab_client_t *c = calloc(1, sizeof *c);
    if (!c)
        return AB_ENOMEM;
    if (ab_idmap_init(&c->calls, 64) != 0) {
        free(c);
        return AB_ENOMEM;
    }
    /* A window of calls is often answered whole within one poll: the table
     * keeps the size it needed (up to 2,048 slots, 32 KiB) rather than
     * halving to 64 and doubling back at every refill (idmap.h). */
    c->calls.keep_cap = 2048;
    int rc = ab_conn_open(&c->conn, opts, "agent");
    ab_conn_new_error_set(rc == AB_OK ? "" : c->conn.error);
    if (rc != AB_OK) {
        ab_client_destroy(&c);
        return rc;
    }
    /* Every client says HELLO first, so that whatever it sends before the
     * connection is up already carries its name and its features (the
     * broker shares cached replies only among clients that read lz4). */
    if (ab_conn_hello(&c->conn) == AB_OK)
        c->early_hello = 1;
    *out = c;
    return AB_OK;
}

/* Ends CALL with an event (final) and forgets it. */
static void s_call_end(ab_client_t *c, s_call_t *call, int status, const void *data,
                       size_t size, const char *text)
{
    ab_reply_event_t ev = {call->id, status, 1, data, size, text ? text : ""};
    /* The callback runs after the call is forgotten: it may start new ones. */
    ab_reply_fn *fn = call->fn;
    void *arg = call->arg;
    ab_idmap_del(&c->calls, call->id);
    s_call_free(c, call);
    if (fn)
        fn(c, &ev, arg);
}

/* Fails every call in flight with STATUS. Collects the ids first: the
 * callbacks may start new calls (which are not failed). */
static int s_fail_all(ab_client_t *c, int status, const char *text)
{
    size_t n = ab_idmap_size(&c->calls), k = 0;
    uint64_t *ids = n ? malloc(n * sizeof *ids) : NULL;
    for (size_t i = 0; ids && i < c->calls.cap; i++)
        if (c->calls.keys[i])
            ids[k++] = c->calls.keys[i];
    for (size_t i = 0; i < k; i++) {
        s_call_t *call = ab_idmap_get(&c->calls, ids[i]);
        if (call)
            s_call_end(c, call, status, NULL, 0, text);
    }
    free(ids);
    return (int)k;
}

void ab_client_destroy(ab_client_t **cp)
{
    if (!cp || !*cp)
        return;
    ab_client_t *c = *cp;
    if (c->calls.keys) {
        /* Tell the broker first: a worker may be generating for us. */
        for (size_t i = 0; c->conn.sock && c->conn.connected && i < c->calls.cap; i++) {
            if (!c->calls.keys[i])
                continue;
            ab_header_t h = ab_header_init(AB_KIND_CANCEL);
            h.id = ab_conn_next_id(&c->conn);
            h.correlation_id = c->calls.keys[i];
            ab_conn_send(&c->conn, &h, NULL, 0);
        }
        /* Their callbacks may start new calls: refused from here on
         * (s_start_call), so none is left without its final event. */
        c->destroying = 1;
        s_fail_all(c, AB_ESTOPPED, "client destroyed");
        ab_idmap_fini(&c->calls);
    }
    while (c->call_spare) {
        void *spare = c->call_spare;
        c->call_spare = *(void **)spare;
        free(spare);
    }
    ab_cmsg_fini(c);
    if (c->conn.sock && c->conn.connected) {
        ab_conn_flush(&c->conn);
        ab_conn_send_kind(&c->conn, AB_KIND_BYE);
    }
    ab_conn_close(&c->conn);
    free(c);
    *cp = NULL;
}

const char *ab_client_last_error(const ab_client_t *c)
{
    return c ? c->conn.error : ab_conn_new_error();
}

static int s_timeout_of(ab_client_t *c, int timeout_ms)
{
    return timeout_ms < 0 ? c->conn.opts.timeout_ms : timeout_ms == 0 ? 1 : timeout_ms;
}

/* What a call carries besides its kind, target and payload. */
typedef struct {
    const char *model, *worker; /* may be NULL */
    uint32_t flags;             /* wire flags, or-ed into the header's */
    uint32_t cache_ttl_s;       /* REQUEST: 0 = the handle's */
    uint32_t priority;
    int timeout_ms;             /* < 0: the handle's default */
    const ab_header_t *tmpl;    /* may be NULL: flags, correlation_id, credit, timeout_ms */
    int ask;                    /* a SEND answered by its target agent (ab_client_ask) */
} s_route_t;

/* Sends a REQUEST (or CONTROL, DISCOVER, SEND, SUBSCRIBE) and records its
 * call. R->tmpl (may be NULL) gives flags, correlation_id, credit and
 * timeout_ms of the header; R->flags are or-ed in. */
static int s_start_call(ab_client_t *c, uint32_t kind, const char *target, const s_route_t *r,
                        const void *data, size_t size, ab_reply_fn *fn, void *arg,
                        uint64_t *id_out)
{
    if (!c || !target || !*target || (size && !data))
        return c ? ab_conn_fail(&c->conn, AB_EINVAL, "invalid argument") : AB_EINVAL;
    if (c->destroying)
        return ab_conn_fail(&c->conn, AB_ESTOPPED, "the handle is being destroyed");
    if (size > c->conn.opts.max_payload)
        return ab_conn_fail(&c->conn, AB_EPAYLOADSIZE, "payload of %zu bytes exceeds %zu", size,
                            c->conn.opts.max_payload);
    s_call_t *call = s_call_new(c);
    if (call && r->ask && !(call->peer = strdup(target))) {
        s_call_free(c, call);
        call = NULL;
    }
    if (!call)
        return ab_conn_fail(&c->conn, AB_ENOMEM, "out of memory");
    int t = s_timeout_of(c, r->timeout_ms);
    call->id = ab_conn_next_id(&c->conn);
    call->kind = kind;
    call->fn = fn;
    call->arg = arg;
    /* One clock read for the deadline and the batch's age (conn.c): two
     * reads per request were 10% of the library's time at 64 B (perf). */
    uint64_t now_us = ab_now_us();
    call->deadline_ms = (int64_t)(now_us / 1000u) + t + AB_LOCAL_GRACE_MS;
    ab_header_t h = ab_header_init(kind);
    h.id = call->id;
    h.target = ab_view_of(target);
    h.timeout_ms = (uint32_t)t;
    h.flags = r->flags;
    h.priority = r->priority;
    h.sender = ab_view_of(c->conn.opts.name);
    h.model = ab_view_of(r->model);
    h.worker = ab_view_of(r->worker);
    if (kind == AB_KIND_REQUEST) {
        h.flags |= c->cache_flags;
        h.cache_ttl_s = r->cache_ttl_s ? r->cache_ttl_s : c->cache_ttl_s;
    }
    if (r->tmpl) {
        h.flags = r->tmpl->flags | r->flags;
        h.correlation_id = r->tmpl->correlation_id;
        h.credit = r->tmpl->credit;
        h.timeout_ms = r->tmpl->timeout_ms;
    }
    int with_data = kind == AB_KIND_REQUEST || kind == AB_KIND_SEND;
    /* Only requests are compressed: their final receiver (a worker) reads lz4. */
    c->conn.clock_us = now_us;
    int rc = ab_conn_send_z(&c->conn, &h, with_data ? (data ? data : "") : NULL, size,
                            kind == AB_KIND_REQUEST ? AB_Z_IF_ANNOUNCED : AB_Z_NEVER);
    c->conn.clock_us = 0;
    if (rc != AB_OK) {
        s_call_free(c, call);
        return rc;
    }
    if (ab_idmap_put(&c->calls, call->id, call) != 0) {
        s_call_free(c, call); /* already sent: its answer will be ignored */
        return ab_conn_fail(&c->conn, AB_ENOMEM, "out of memory");
    }
    if (!c->next_expiry_ms || call->deadline_ms < c->next_expiry_ms)
        c->next_expiry_ms = call->deadline_ms;
    if (id_out)
        *id_out = call->id;
    return AB_OK;
}

int ab_priority_parse(const char *text, uint32_t *priority)
{
    static const struct {
        const char *name;
        uint32_t value;
    } names[] = {{"interactive", AB_PRIORITY_INTERACTIVE},
                 {"normal", AB_PRIORITY_NORMAL},
                 {"batch", AB_PRIORITY_BATCH}};
    if (!text || !priority)
        return AB_EINVAL;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(text, names[i].name) == 0) {
            *priority = names[i].value;
            return AB_OK;
        }
    long v; /* strtol also took " 5" and "+5" */
    if (ab_parse_long(text, 0, 255, &v) != 0)
        return AB_EINVAL;
    *priority = (uint32_t)v;
    return AB_OK;
}

const char *ab_priority_lane(uint32_t priority)
{
    /* The broker's mapping (broker/lanes.c ab_lane_of), said once more for clients. */
    return priority >= AB_PRIORITY_INTERACTIVE ? "interactive"
           : priority == AB_PRIORITY_BATCH     ? "batch"
                                               : "normal";
}

void ab_request_opts_init(ab_request_opts_t *o)
{
    if (o)
        *o = (ab_request_opts_t)AB_REQUEST_OPTS_INIT;
}

#define S_CACHE_BITS ((uint32_t)(AB_CACHE_ON | AB_CACHE_NO_READ | AB_CACHE_NO_STORE))

/* Checks OPTS and turns them into the header fields of a REQUEST. */
static int s_route_of(ab_client_t *c, const ab_request_opts_t *o, s_route_t *r)
{
    if (o->model && strlen(o->model) > AB_MODEL_MAX)
        return ab_conn_fail(&c->conn, AB_EINVAL, "model name over %d bytes", AB_MODEL_MAX);
    if (o->flags & ~(unsigned)AB_REQUEST_NON_IDEMPOTENT)
        return ab_conn_fail(&c->conn, AB_EINVAL, "unknown request flags 0x%x", o->flags);
    if (o->cache_flags & ~S_CACHE_BITS)
        return ab_conn_fail(&c->conn, AB_EINVAL, "unknown cache flags 0x%x", o->cache_flags);
    *r = (s_route_t){.model = o->model,
                     .worker = o->worker,
                     .flags = o->cache_flags | ((o->flags & AB_REQUEST_NON_IDEMPOTENT)
                                                    ? (uint32_t)AB_FLAG_NON_IDEMPOTENT
                                                    : 0u),
                     .cache_ttl_s = o->cache_ttl_s,
                     .priority = o->priority,
                     .timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : -1};
    return AB_OK;
}

int ab_client_request_start(ab_client_t *c, const char *service, const void *data, size_t size,
                            const ab_request_opts_t *opts, ab_reply_fn *fn, void *arg,
                            uint64_t *request_id)
{
    if (!c)
        return AB_EINVAL;
    ab_request_opts_t defaults = AB_REQUEST_OPTS_INIT;
    s_route_t r = {0}; /* filled by s_route_of; zeroed so -O3 sees no path reading it unset */
    int rc = s_route_of(c, opts ? opts : &defaults, &r);
    if (rc != AB_OK)
        return rc;
    return s_start_call(c, AB_KIND_REQUEST, service, &r, data, size, fn, arg, request_id);
}

int ab_client_set_cache(ab_client_t *c, uint32_t flags, uint32_t ttl_s)
{
    if (!c || (flags & ~S_CACHE_BITS))
        return c ? ab_conn_fail(&c->conn, AB_EINVAL, "unknown cache flags 0x%x", flags)
                 : AB_EINVAL;
    c->cache_flags = flags;
    c->cache_ttl_s = ttl_s;
    return AB_OK;
}

int ab_client_cancel(ab_client_t *c, uint64_t request_id)
{
    if (!c)
        return AB_EINVAL;
    s_call_t *call = ab_idmap_get(&c->calls, request_id);
    if (!call)
        return ab_conn_fail(&c->conn, AB_EINVAL, "no request %llu in flight",
                            (unsigned long long)request_id);
    ab_header_t h = ab_header_init(AB_KIND_CANCEL);
    h.id = ab_conn_next_id(&c->conn);
    h.correlation_id = request_id;
    int rc = ab_conn_send(&c->conn, &h, NULL, 0);
    s_call_end(c, call, AB_ECANCELLED, NULL, 0, "cancelled by the client");
    return rc;
}

int ab_client_call_start(ab_client_t *c, uint32_t kind, const char *target,
                         const ab_header_t *tmpl, const void *data, size_t size, int timeout_ms,
                         ab_reply_fn *fn, void *arg, uint64_t *id_out)
{
    s_route_t r = {.tmpl = tmpl, .timeout_ms = timeout_ms};
    return s_start_call(c, kind, target, &r, data, size, fn, arg, id_out);
}

int ab_client_ask_start(ab_client_t *c, const char *name, const ab_header_t *tmpl,
                        const void *data, size_t size, int timeout_ms, ab_reply_fn *fn,
                        void *arg, uint64_t *id_out)
{
    s_route_t r = {.tmpl = tmpl, .timeout_ms = timeout_ms, .ask = 1};
    return s_start_call(c, AB_KIND_SEND, name, &r, data, size, fn, arg, id_out);
}

/* Ends the calls whose local deadline passed; returns how many. */
static int s_expire(ab_client_t *c, int64_t now)
{
    if (!c->next_expiry_ms || now < c->next_expiry_ms)
        return 0;
    int64_t next = 0;
    uint64_t dead[64]; /* ids, looked up again: a callback may end others */
    size_t n = 0;
    for (size_t i = 0; i < c->calls.cap; i++) {
        s_call_t *call = c->calls.keys[i] ? c->calls.vals[i] : NULL;
        if (!call)
            continue;
        if (call->deadline_ms <= now && n < 64)
            dead[n++] = call->id;
        else if (!next || call->deadline_ms < next)
            next = call->deadline_ms;
    }
    c->next_expiry_ms = n == 64 ? now : next;
    int ended = 0;
    for (size_t i = 0; i < n; i++) {
        s_call_t *call = ab_idmap_get(&c->calls, dead[i]);
        if (call) {
            s_call_end(c, call, AB_ETIMEOUT, NULL, 0, "no answer from the broker in time");
            ended++;
        }
    }
    return ended;
}

/* Whatever the broker keeps for this connection, topic subscriptions and
 * the directory watch, it has lost when it sees us anew (it restarted, or
 * dropped us for silence): ask for them again after the HELLO. */
static void s_restore(ab_client_t *c)
{
    ab_cmsg_resubscribe(c);
    if (c->watch_fn && c->watch_id) {
        s_route_t r = {.flags = AB_FLAG_WATCH, .timeout_ms = -1};
        s_start_call(c, AB_KIND_DISCOVER, "*", &r, NULL, 0, NULL, NULL, &c->watch_id);
    }
}

/* Ends CALL with STATUS: its answer (or a chunk of it) could not be used
 * (over the max payload, a corrupt lz4 payload). A request's worker may
 * still be streaming: it is told (CANCEL), as for a streamed reply that
 * grows past the max payload (s_sync_cb). */
static void s_unusable(ab_client_t *c, s_call_t *call, const ab_header_t *h, int status)
{
    if (call->kind == AB_KIND_REQUEST) {
        ab_header_t x = ab_header_init(AB_KIND_CANCEL);
        x.id = ab_conn_next_id(&c->conn);
        x.correlation_id = call->id;
        ab_conn_send(&c->conn, &x, NULL, 0);
    }
    char text[AB_ERRTEXT_MAX];
    ab_view_copy(h->error_text, text, sizeof text);
    s_call_end(c, call, status, NULL, 0, text);
}

/* The status an ERROR ends CALL with. A request's TOO_LARGE marked
 * OVER_MAX_PAYLOAD is the broker's: its answer (or a chunk of it) was over
 * our max payload (Hello.max_payload), the AB_EPAYLOADSIZE the library
 * gives when it finds that itself (conn_recv.c, s_fits), or the request was
 * over every worker's (Register.max_payload). Unmarked, the worker said it
 * (an Ollama worker's reply over its own bounds): AB_ETOOLARGE. */
static int s_error_status(const s_call_t *call, const ab_header_t *h)
{
    if (call->kind == AB_KIND_REQUEST && h->error_code == AB_ERR_TOO_LARGE &&
        (h->flags & AB_FLAG_OVER_MAX_PAYLOAD))
        return AB_EPAYLOADSIZE;
    return ab_status_from_wire(h->error_code);
}

static void s_on_message(ab_client_t *c, ab_in_t *in)
{
    ab_header_t *h = &in->h;
    if (h->kind == AB_KIND_HELLO && h->correlation_id == 0) {
        c->conn.restore_pending = 1; /* the broker forgot us: at its answer */
        ab_conn_hello(&c->conn);
        return;
    }
    if (h->kind == AB_KIND_HELLO &&
        (c->conn.restore_pending ||
         ((h->flags & AB_FLAG_NEW_PEER) && c->conn.hello_answers > 1))) {
        /* A HELLO answer saying the broker had no record of us (it dropped
         * us for silence while we said nothing): restored once. */
        c->conn.restore_pending = 0;
        s_restore(c);
    }
    if (h->kind == AB_KIND_ERROR && h->error_code == AB_ERR_BUSY && h->correlation_id &&
        h->correlation_id == c->conn.hello_id) {
        /* The broker refused this connection (max-connections) and will
         * close it: nothing sent on it is answered. Say why now, rather
         * than "connection lost" at the close (or a deadline). */
        ab_view_copy(h->error_text, c->conn.busy_text, sizeof c->conn.busy_text);
        c->conn.refused_busy = 1;
        s_fail_all(c, AB_EBUSY, c->conn.busy_text);
        ab_conn_fail(&c->conn, AB_EBUSY, "%s", c->conn.busy_text);
        return;
    }
    if (h->kind == AB_KIND_HELLO && h->correlation_id)
        c->conn.refused_busy = 0; /* admitted */
    s_call_t *call = h->correlation_id ? ab_idmap_get(&c->calls, h->correlation_id) : NULL;
    if (in->status != AB_OK) { /* an answer made an ERROR here (ab_in_t.status) */
        if (call)
            s_unusable(c, call, h, in->status);
        return;
    }
    if (h->kind == AB_KIND_SEND && call && !(h->flags & AB_FLAG_RECEIPT)) {
        /* An agent's answer to our ab_client_ask: only from the agent
         * asked (the broker names the sender). Any agent may send us a
         * message that says it answers id N, and ids are easy to guess:
         * one that ended another ask, or a request, would forge its
         * answer. Such a message is delivered as a message. */
        if (call->peer && ab_view_eq(h->sender, call->peer)) {
            s_call_end(c, call, AB_OK, in->data, in->size, NULL);
            return;
        }
    }
    if (h->kind == AB_KIND_SEND || h->kind == AB_KIND_PUBLISH) {
        ab_cmsg_on_message(c, in);
        return;
    }
    if (h->kind == AB_KIND_ERROR && !call) {
        ab_cmsg_on_error(c, in);
        return;
    }
    if (h->kind == AB_KIND_HELLO || h->kind == AB_KIND_HEARTBEAT) {
        ab_conn_set_interval(&c->conn, h->credit);
        return;
    }
    if (h->kind == AB_KIND_DISCOVER) {
        if (c->watch_fn && h->correlation_id == c->watch_id && in->has_body)
            ab_dir_event_deliver(c, c->watch_fn, c->watch_arg, in->data, in->size);
        return;
    }
    if (h->kind != AB_KIND_REPLY && h->kind != AB_KIND_PARTIAL && h->kind != AB_KIND_ERROR)
        return;
    if (!call)
        return; /* answer to a call that already ended (timeout, disconnect) */
    const void *data = in->data;
    size_t size = in->size;
    if (h->kind == AB_KIND_PARTIAL) {
        /* A broker streams only a request's reply: a PARTIAL to an ask, a
         * discovery or a control call would be an event its caller was
         * promised it never gets (ab_client_ask: FN runs once). Dropped. */
        if (call->kind != AB_KIND_REQUEST)
            return;
        ab_reply_event_t ev = {call->id, AB_OK, 0, data, size, ""};
        if (call->fn)
            call->fn(c, &ev, call->arg);
        return;
    }
    if (h->kind == AB_KIND_REPLY) {
        s_call_end(c, call, AB_OK, data, size, NULL);
        return;
    }
    char text[AB_ERRTEXT_MAX];
    ab_view_copy(h->error_text, text, sizeof text);
    s_call_end(c, call, s_error_status(call, h), NULL, 0, text);
}

/* Handles monitor events, incoming messages and timers once. */
static int s_process(ab_client_t *c)
{
    int handled = 0;
    ab_conn_flush(&c->conn); /* a poll ends the batching turn */
    int ev = ab_conn_events(&c->conn);
    if (ev & AB_CONN_CONNECTED) {
        if (!c->early_hello)
            ab_conn_hello(&c->conn);
        c->early_hello = 0;
        s_restore(c);
        /* A new connection: restored here, not again at its HELLO answer. */
        c->conn.hello_answers = 0;
        c->conn.restore_pending = 0;
    }
    size_t taken = 0; /* bounded in bytes too (internal.h) */
    for (int i = 0; i < AB_CONN_TURN_MSGS && taken < AB_CONN_TURN_BYTES &&
                    !atomic_load(&c->conn.stop);
         i++) {
        ab_in_t in;
        int rc = ab_conn_recv(&c->conn, &in);
        if (rc < 0)
            return rc;
        if (rc == 0)
            break;
        taken += in.size;
        s_on_message(c, &in);
        ab_in_close(&in);
        handled++;
    }
    /* After the messages already received: a broker's last answers before
     * it closed (a drain) are delivered, not replaced by DISCONNECTED.
     * Calls ended here (disconnect, local deadline) are events too: a
     * caller waiting in ab_client_poll must see them, or a sync request to
     * an unreachable broker would wait forever. */
    if ((ev & AB_CONN_REFUSED) || ((ev & AB_CONN_DISCONNECTED) && c->conn.auth_refused)) {
        /* The broker refused our key (or our lack of one): say so, now,
         * rather than let the calls wait out their deadlines. */
        const char *why = ab_conn_refusal(&c->conn);
        handled += s_fail_all(c, AB_EDENIED, why);
        ab_conn_fail(&c->conn, AB_EDENIED, "%s", why);
    } else if ((ev & AB_CONN_DISCONNECTED) && c->conn.refused_busy) {
        /* The close that follows the refusal: what was sent since then
         * (before the close was seen) fails with the refusal's reason. */
        handled += s_fail_all(c, AB_EBUSY, c->conn.busy_text);
        ab_conn_fail(&c->conn, AB_EBUSY, "%s", c->conn.busy_text);
    } else if (ev & AB_CONN_DISCONNECTED)
        handled += s_fail_all(c, AB_EDISCONNECTED, "connection to the broker was lost");
    int64_t now = ab_now_ms();
    handled += s_expire(c, now);
    ab_conn_heartbeat(&c->conn, now, 0);
    return handled;
}

int ab_client_next_timeout_ms(ab_client_t *c)
{
    if (!c)
        return 0;
    if (c->conn.out.count)
        return 0; /* gathered messages wait for a poll */
    int64_t now = ab_now_ms();
    int64_t wake = c->conn.next_heartbeat_ms;
    if (c->next_expiry_ms && c->next_expiry_ms < wake)
        wake = c->next_expiry_ms;
    return wake > now ? (int)(wake - now) : 0;
}

static int s_poll(ab_client_t *c, int timeout_ms)
{
    if (atomic_load(&c->conn.stop)) /* nothing more is handled, input waiting or not */
        return ab_conn_stopped(&c->conn);
    int handled = s_process(c);
    if (handled != 0 || timeout_ms == 0)
        return handled;
    int64_t end = timeout_ms < 0 ? INT64_MAX : ab_now_ms() + timeout_ms;
    for (;;) {
        int64_t now = ab_now_ms();
        if (now >= end)
            return 0;
        int64_t wait = ab_client_next_timeout_ms(c);
        if (end - now < wait)
            wait = end - now;
        int rc = ab_conn_wait(&c->conn, (int)wait);
        if (rc < 0)
            return rc;
        handled = s_process(c);
        if (handled != 0)
            return handled;
    }
}

int ab_client_poll(ab_client_t *c, int timeout_ms)
{
    if (!c)
        return AB_EINVAL;
    int rc = s_poll(c, timeout_ms);
    /* Back to the application: what its callbacks sent leaves now unless
     * more input waits (then its next poll sends it, batched). */
    if (rc >= 0)
        ab_conn_turn_end_idle(&c->conn, 0);
    return rc;
}

/* --- synchronous requests: an async call whose callback fills a buffer ----- */
/* The chunks of a streamed reply are joined, up to the handle's max
 * payload: a stream past it (a runaway worker, a hostile broker) fails the
 * call with AB_EPAYLOADSIZE and cancels it, instead of growing until the
 * deadline. */
typedef struct {
    int done;
    int status;
    uint8_t *buf;
    size_t len, cap, max;
    int oom, toobig;
} s_sync_t;

static void s_sync_append(s_sync_t *s, const void *data, size_t size)
{
    if (!size || s->oom || s->toobig)
        return;
    if (size > s->max - s->len) {
        s->toobig = 1;
        return;
    }
    if (s->len + size > s->cap) {
        size_t cap = s->cap ? s->cap : 256;
        while (cap < s->len + size)
            cap *= 2;
        uint8_t *nb = realloc(s->buf, cap);
        if (!nb) {
            s->oom = 1;
            return;
        }
        s->buf = nb;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, data, size);
    s->len += size;
}

static void s_sync_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    s_sync_t *s = arg;
    int was = s->toobig;
    if (ev->status == AB_OK)
        s_sync_append(s, ev->data, ev->size);
    if (ev->final) {
        s->done = 1;
        s->status = s->toobig ? AB_EPAYLOADSIZE : s->oom ? AB_ENOMEM : ev->status;
        if (s->toobig)
            ab_conn_fail(&c->conn, AB_EPAYLOADSIZE,
                         "the streamed reply exceeds the max payload (%zu bytes): cancelled",
                         s->max);
        else if (ev->status != AB_OK)
            ab_conn_fail(&c->conn, ev->status, "%s",
                         ev->error_text[0] ? ev->error_text : ab_strerror(ev->status));
    } else if (s->toobig && !was) {
        ab_client_cancel(c, ev->request_id); /* its final event comes back here */
    }
}

static int s_sync(ab_client_t *c, uint32_t kind, const char *target, const ab_header_t *tmpl,
                  const void *data, size_t size, int timeout_ms, uint32_t flags, void **reply,
                  size_t *reply_size, uint64_t *id_out)
{
    if (reply)
        *reply = NULL;
    if (reply_size)
        *reply_size = 0;
    s_sync_t s = {0};
    s.max = c ? c->conn.opts.max_payload : 0;
    uint64_t id;
    s_route_t r = {.tmpl = tmpl, .flags = flags, .timeout_ms = timeout_ms};
    int rc = s_start_call(c, kind, target, &r, data, size, s_sync_cb, &s, &id);
    if (rc != AB_OK)
        return rc;
    if (id_out)
        *id_out = id;
    while (!s.done) {
        rc = ab_client_poll(c, -1);
        if (rc < 0 && !s.done) {
            /* Stopped or socket error: end the call so no callback later
             * points at this stack frame. */
            s_call_free(c, ab_idmap_del(&c->calls, id));
            free(s.buf);
            return rc;
        }
    }
    if (s.status != AB_OK) {
        free(s.buf);
        return s.status;
    }
    if (reply) {
        *reply = s.buf ? s.buf : calloc(1, 1);
        if (!*reply)
            return ab_conn_fail(&c->conn, AB_ENOMEM, "out of memory");
    } else {
        free(s.buf);
    }
    if (reply_size)
        *reply_size = s.len;
    return AB_OK;
}

int ab_client_request(ab_client_t *c, const char *service, const void *data, size_t size,
                      int timeout_ms, void **reply, size_t *reply_size)
{
    return s_sync(c, AB_KIND_REQUEST, service, NULL, data, size, timeout_ms, 0, reply,
                  reply_size, NULL);
}

int ab_client_control(ab_client_t *c, const char *what, int timeout_ms, void **reply,
                      size_t *reply_size)
{
    return s_sync(c, AB_KIND_CONTROL, what, NULL, NULL, 0, timeout_ms, 0, reply, reply_size,
                  NULL);
}

int ab_client_discover_raw(ab_client_t *c, const char *service, int timeout_ms, int watch,
                           void **reply, size_t *reply_size)
{
    if (!c)
        return AB_EINVAL;
    uint64_t id = 0;
    int rc = s_sync(c, AB_KIND_DISCOVER, service && *service ? service : "*", NULL, NULL, 0,
                    timeout_ms, watch ? AB_FLAG_WATCH : 0, reply, reply_size, &id);
    if (watch && rc == AB_OK)
        c->watch_id = id;
    return rc;
}

int ab_client_watch(ab_client_t *c, ab_dir_event_fn *fn, void *arg, int timeout_ms)
{
    if (!c)
        return AB_EINVAL;
    c->watch_fn = fn;
    c->watch_arg = arg;
    c->watch_id = 0; /* set once the broker confirms (no re-subscribe before) */
    if (!fn) /* the broker keeps sending for this connection; they are ignored */
        return AB_OK;
    int rc = ab_client_discover_raw(c, "*", timeout_ms, 1, NULL, NULL);
    if (rc != AB_OK)
        c->watch_fn = NULL;
    return rc;
}

int ab_client_call_wait(ab_client_t *c, uint32_t kind, const char *target,
                        const ab_header_t *tmpl, const void *data, size_t size, int timeout_ms,
                        void **reply, size_t *reply_size)
{
    return s_sync(c, kind, target, tmpl, data, size, timeout_ms, 0, reply, reply_size, NULL);
}

int ab_client_fd(ab_client_t *c, int *fd)
{
    if (!c || !fd)
        return AB_EINVAL;
    size_t len = sizeof *fd;
    if (zmq_getsockopt(c->conn.sock, ZMQ_FD, fd, &len) != 0)
        return ab_conn_fail(&c->conn, AB_EZMQ, "ZMQ_FD: %s", zmq_strerror(zmq_errno()));
    return AB_OK;
}

size_t ab_client_pending(const ab_client_t *c)
{
    return c ? ab_idmap_size(&c->calls) : 0;
}

int ab_client_connected(const ab_client_t *c)
{
    return c ? c->conn.connected : 0;
}

int ab_client_refused(const ab_client_t *c)
{
    return c ? c->conn.auth_refused : 0;
}

void ab_client_stop(ab_client_t *c)
{
    if (c)
        atomic_store(&c->conn.stop, 1);
}

int ab_client_flush(ab_client_t *c)
{
    return c ? ab_conn_flush(&c->conn) : AB_EINVAL;
}
