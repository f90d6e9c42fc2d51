/*
 * request.c - a request's life: creation, the pending table, deadlines,
 * answers, failure, cancel and the client index (see request.h).
 *
 * Every held request also sits in a min-heap on its deadline (common/heap.h:
 * the node knows its index, so an answered request leaves the heap at once
 * and the heap never holds more than the broker's pending requests).
 */
#include "request.h"
#include "service.h"
#include "router.h"
#include "health.h"
#include "cache.h"
#include "placement.h"
#include "clients.h"
#include "lanes.h"
#include "link.h"
#include "auth.h"
#include "agentbus.h"
#include "util.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* --- life ------------------------------------------------------------------ */
/* Freed request records kept for the next ones (a calloc and a free per
 * request showed in the profile); bounded, so a burst gives its memory
 * back: at most S_SPARE_MAX x sizeof(ab_req_t) (about 2.5 MB) stay. */
#if defined(__SANITIZE_ADDRESS__)
#define S_SPARE_MAX 0 /* under ASan every record is freed: a use after free shows */
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define S_SPARE_MAX 0
#endif
#endif
#ifndef S_SPARE_MAX
#define S_SPARE_MAX 4096
#endif

static ab_req_t *s_req_alloc(ab_broker_t *b)
{
    ab_req_t *r = b->req_spare;
    if (!r)
        return calloc(1, sizeof *r);
    b->req_spare = *(void **)r;
    b->req_nspare--;
    memset(r, 0, offsetof(ab_req_t, client)); /* the rest is written before it is read */
    return r;
}

static void s_req_release(ab_broker_t *b, ab_req_t *r)
{
    if (b->req_nspare + 1 > S_SPARE_MAX) { /* (+ 1: no always-true test when 0) */
        free(r);
        return;
    }
    *(void **)r = b->req_spare; /* the record is dead: its first bytes hold the link */
    b->req_spare = r;
    b->req_nspare++;
}

/* What R's record costs: AB_REQ_RECORD_BYTES, and the block of its own a
 * crossed list too long for the record's room takes (up to AB_VIA_MAX:
 * a peer broker writes it). */
static uint64_t s_record_bytes(const ab_req_t *r)
{
    const struct ab_fwd *f = r->fwd;
    return AB_REQ_RECORD_BYTES + (f && f != &r->fwd_room.f ? sizeof *f + strlen(f->via) + 1 : 0);
}

ab_req_t *ab_req_new(ab_broker_t *b, ab_service_t *s, ab_peer_t *p, const ab_rid_t *client,
                     const ab_header_t *h, const ab_req_body_t *body,
                     struct ab_cache_req *cache, int64_t now)
{
    /* Every request has a client record: its flow in a lane is its client's. */
    ab_client_rec_t *crec = p ? ab_client_of(b, p) : ab_client_named(b, "~unknown");
    if (!crec) {
        ab_cache_req_free(&cache);
        return NULL;
    }
    ab_req_t *r = s_req_alloc(b);
    if (!r) {
        ab_cache_req_free(&cache);
        return NULL;
    }
    r->bid = ++b->next_bid;
    r->client_id = h->id;
    r->client = *client;
    r->service = s;
    r->flags = h->flags;
    r->client_local = p ? p->local : 0;
    r->original_size = h->original_size;
    r->priority = h->priority;
    r->lane = (uint8_t)ab_lane_of(h->priority);
    r->start_us = ab_broker_clock_us(b);
    r->cache = cache;
    if (ab_route_init(r, h) != 0 || (h->via.len && ab_link_req_new(r, h) != 0)) {
        ab_req_destroy(r);
        return NULL;
    }
    int64_t t = h->timeout_ms ? h->timeout_ms : b->cfg->default_timeout_ms;
    r->deadline_ms = now + (t < b->cfg->max_timeout_ms ? t : b->cfg->max_timeout_ms);
    if (body && body->has) {
        if (body->msg) { /* moved, not copied: the received frame is kept */
            zmq_msg_init(&r->payload);
            zmq_msg_move(&r->payload, body->msg);
        } else if (body->size <= AB_REQ_SMALL_MAX) {
            if (body->size)
                memcpy(r->small, body->data, body->size);
            r->small_len = (uint16_t)body->size;
            r->small_held = 1;
        } else if (ab_msg_of_bytes(&r->payload, body->data, body->size) != 0) {
            ab_req_destroy(r);
            return NULL;
        }
        r->has_payload = 1;
    }
    if (ab_idmap_put(&b->pending, r->bid, r) != 0) {
        ab_req_destroy(r);
        return NULL;
    }
    ab_service_hold(b, r); /* a service is not idle while a request names it */
    r->crec = crec;
    ab_client_hold(crec);
    crec->requests++;
    if (p) {
        crec->held++;
        r->client_counted = 1;
        ab_client_track(p, r); /* CANCEL and departure find it */
    }
    ab_deadline_push(b, r);
    r->held_bytes = s_record_bytes(r) + (body && body->has && !r->small_held ? body->size : 0);
    b->held_bytes += r->held_bytes;
    crec->held_bytes += r->held_bytes;
    return r;
}

/* R's payload no longer held: out of the broker's and its client's bytes. */
static void s_held_release(ab_broker_t *b, ab_req_t *r)
{
    b->held_bytes -= r->held_bytes;
    if (r->crec)
        r->crec->held_bytes -= r->held_bytes;
    r->held_bytes = 0;
}

int ab_req_held_room(const ab_broker_t *b, const ab_req_t *r, uint64_t size)
{
    uint64_t now = r->held_bytes, want = s_record_bytes(r) + size;
    if (want <= now)
        return 1;
    const ab_client_rec_t *c = r->crec;
    if (c && c->held_bytes > now && c->held_bytes - now + want > b->cfg->max_client_held_bytes)
        return 0;
    return !(b->held_bytes > now && b->held_bytes - now + want > b->cfg->max_held_bytes);
}

void ab_req_held_resize(ab_broker_t *b, ab_req_t *r, uint64_t size)
{
    uint64_t want = s_record_bytes(r) + size;
    b->held_bytes = b->held_bytes - r->held_bytes + want;
    if (r->crec)
        r->crec->held_bytes = r->crec->held_bytes - r->held_bytes + want;
    r->held_bytes = want;
}

/* --- arrival ----------------------------------------------------------------- */
/* Refuses a request to S with BUSY (counted in S, by code, and in ALSO). */
static void s_busy(ab_broker_t *b, const ab_rid_t *rid, uint64_t id, ab_service_t *s,
                   uint64_t *also, const char *text)
{
    s->errors++;
    AB_COUNT_ERROR(b, AB_ERR_BUSY);
    if (also)
        (*also)++;
    ab_send_error(b, rid, id, AB_ERR_BUSY, text);
}

/* The service H names, or NULL when it was answered NO_SERVICE. */
static ab_service_t *s_target(ab_broker_t *b, const ab_rid_t *rid, const ab_header_t *h)
{
    char name[AB_NAME_MAX];
    if (h->target.len >= AB_NAME_MAX) {
        ab_send_error(b, rid, h->id, AB_ERR_NO_SERVICE, "service name too long");
        AB_COUNT_ERROR(b, AB_ERR_NO_SERVICE);
        return NULL;
    }
    b->c.requests++;
    /* Requests come in runs to one service: the last one found is tried
     * before the table (a copy of the name, a hash and a look-up). */
    ab_service_t *s = b->service_hint;
    if (s && ab_view_eq(h->target, s->name)) {
        s->requests++;
        return s;
    }
    ab_view_copy(h->target, name, sizeof name);
    s = ab_service_get(b, name, 0);
    if (!s && !b->grace_over) {
        /* Just (re)started: its workers may be reconnecting right now. */
        if ((s = ab_service_get(b, name, 1)))
            s->provisional = 1;
    }
    if (!s) {
        char text[AB_NAME_MAX + 64];
        snprintf(text, sizeof text, "no service '%s' is registered", name);
        AB_COUNT_ERROR(b, AB_ERR_NO_SERVICE);
        ab_send_error(b, rid, h->id, AB_ERR_NO_SERVICE, text);
        return NULL;
    }
    s->requests++;
    b->service_hint = s;
    return s;
}

/* 1 when client P may have one more request held now; else it was
 * answered BUSY (draining, its in-flight quota, or it does not read). */
static int s_admit_client(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *rid, const ab_header_t *h,
                          ab_service_t *s)
{
    uint64_t id = h->id;
    char why[AB_NAME_MAX + 2 * AB_RID_MAX + 128];
    ab_client_rec_t *c = p ? ab_client_of(b, p) : NULL;
    if (b->draining)
        s_busy(b, rid, id, s, NULL, "broker is shutting down");
    else if (c && ab_client_admit(b, c, s, ab_lane_of(h->priority), 0, why, sizeof why))
        s_busy(b, rid, id, s, NULL, why);
    else if (p && ab_peer_over(b, p)) /* router.h */
        s_busy(b, rid, id, s, &b->c.out_busy,
               "this client has not read its earlier answers (peer-out-max-bytes)");
    else
        return 1;
    return 0;
}

/* 1 when holding a request of SIZE payload bytes (and its record,
 * AB_REQ_RECORD_BYTES) would pass client P's max-client-held-bytes or the
 * broker's max-held-bytes: answered BUSY and counted. Whoever holds nothing
 * may always have one request (any payload under max-payload-bytes passes
 * once). Counts in bytes, not requests: a client's 10,000 queued requests
 * (max-client-queued) of 64 MiB each (max-payload-bytes) would be 640 GB,
 * and a million empty ones a gigabyte of records. */
static int s_over_bytes(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *rid, const ab_header_t *h,
                        ab_service_t *s, size_t size)
{
    ab_client_rec_t *c = p ? ab_client_of(b, p) : NULL;
    char text[AB_NAME_MAX + 2 * AB_RID_MAX + 160];
    if (c && c->held_bytes && c->held_bytes + size > b->cfg->max_client_held_bytes) {
        c->refused++;
        snprintf(text, sizeof text,
                 "client %s has %llu bytes of requests held (max-client-held-bytes %zu); "
                 "retry when some are answered", c->ident, (unsigned long long)c->held_bytes,
                 b->cfg->max_client_held_bytes);
    } else if (b->held_bytes && b->held_bytes + size > b->cfg->max_held_bytes) {
        snprintf(text, sizeof text,
                 "broker holds %llu bytes of requests (max-held-bytes %zu); retry later",
                 (unsigned long long)b->held_bytes, b->cfg->max_held_bytes);
    } else {
        return 0;
    }
    b->c.held_bytes_busy++;
    s_busy(b, rid, h->id, s, NULL, text);
    return 1;
}

/* ab_req_on_request once S, the service H names, may take it. */
static void s_on_request_to(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *rid,
                            const ab_header_t *h, ab_service_t *s, const ab_req_body_t *body,
                            int64_t now)
{
    if (!s_admit_client(b, p, rid, h, s))
        return;
    const void *data = body && body->has ? body->data : NULL;
    size_t size = body && body->has ? body->size : 0;
    ab_cache_req_t *cr = NULL;
    if (ab_cache_on_request(b, s, rid, p ? p->features : 0, h, data, size, now, &cr))
        return; /* answered from the cache */
    /* What ab_req_new will charge: a payload kept in the record costs no more. */
    int own = body && body->has && (body->msg || size > AB_REQ_SMALL_MAX);
    size_t via = h->via.len + 1 > AB_FWD_VIA_ROOM ? sizeof(struct ab_fwd) + h->via.len + 1 : 0;
    if (s_over_bytes(b, p, rid, h, s, AB_REQ_RECORD_BYTES + via + (own ? size : 0))) {
        ab_cache_req_free(&cr);
        return;
    }
    if (!ab_service_admit(b, s)) {
        ab_cache_req_free(&cr);
        s_busy(b, rid, h->id, s, NULL,
               s->q_len >= (uint32_t)b->cfg->queue_max ? "service queue is full"
                                                       : "broker holds too many requests");
        return;
    }
    ab_req_t *r = ab_req_new(b, s, p, rid, h, body, cr, now);
    if (!r) {
        ab_send_error(b, rid, h->id, AB_ERR_INTERNAL, "out of memory");
        return;
    }
    if (r->cache && ab_cache_join(b, r))
        return; /* waits for an identical request in flight */
    ab_service_submit(b, s, r, now);
}

void ab_req_on_request(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *rid, const ab_header_t *h,
                       const ab_req_body_t *body, int64_t now)
{
    ab_service_t *s = s_target(b, rid, h);
    if (s && !ab_link_routable(b, s, h)) { /* only beyond the hop limit (link.h) */
        AB_COUNT_ERROR(b, AB_ERR_NO_SERVICE);
        ab_send_error(b, rid, h->id, AB_ERR_NO_SERVICE,
                      "the service is offered only by peer brokers beyond the hop limit "
                      "(link-hop-limit) or already crossed");
        return;
    }
    if (s)
        s_on_request_to(b, p, rid, h, s, body, now);
}

void ab_req_on_forwarded(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *rid,
                         const ab_header_t *h, ab_service_t *s, const ab_req_body_t *body,
                         int64_t now)
{
    b->c.requests++; /* as s_target counts */
    s->requests++;
    s_on_request_to(b, p, rid, h, s, body, now);
}

/* R's payload goes (a message, or bytes in the record). */
static void s_payload_drop(ab_req_t *r)
{
    if (r->has_payload && !r->small_held)
        zmq_msg_close(&r->payload);
    r->has_payload = 0;
    r->small_held = 0;
}

zmq_msg_t *ab_req_payload(ab_req_t *r)
{
    if (!r->has_payload)
        return NULL;
    if (r->small_held) {
        if (ab_msg_of_bytes(&r->payload, r->small, r->small_len) != 0)
            return NULL; /* still held as bytes */
        r->small_held = 0;
    }
    return &r->payload;
}

/* R's client has its answer, a worker may still hold R: R keeps only what
 * that worker's answer needs (no payload, no deadline). */
static void s_orphan(ab_broker_t *b, ab_req_t *r)
{
    r->state = AB_REQ_ORPHANED;
    s_held_release(b, r);
    s_payload_drop(r);
    ab_deadline_remove(b, r);
}

void ab_req_client_done(ab_broker_t *b, ab_req_t *r)
{
    (void)b;
    if (!r->client_counted)
        return;
    r->client_counted = 0;
    if (r->crec && r->crec->held)
        r->crec->held--;
}

/* What R holds besides its lists: its route, link and cache state, payload. */
static void s_req_clean(ab_req_t *r)
{
    ab_defer_cancel(&r->later);
    ab_route_free(r);
    ab_link_req_free(r);
    ab_cache_req_free(&r->cache);
    s_payload_drop(r);
}

void ab_req_free(ab_broker_t *b, ab_req_t *r)
{
    ab_client_untrack(r);
    ab_req_client_done(b, r);
    if (r->cache)
        ab_cache_req_gone(b, r);
    if (r->state == AB_REQ_QUEUED)
        ab_queue_remove(r->service, r);
    else if (r->worker)
        ab_worker_req_remove(r->worker, r);
    ab_deadline_remove(b, r);
    ab_idmap_del(&b->pending, r->bid);
    ab_service_release(b, r); /* it may be idle now (service.c) */
    s_held_release(b, r);
    if (r->crec) /* after it left its flow: a flow never outlives its record */
        ab_client_release(b, r->crec);
    s_req_clean(r);
    s_req_release(b, r);
}

void ab_req_destroy(ab_req_t *r)
{
    s_req_clean(r);
    free(r);
}

void ab_req_fail(ab_broker_t *b, ab_req_t *r, uint32_t code, const char *text)
{
    ab_send_error(b, &r->client, r->client_id, code, text);
    AB_COUNT_ERROR(b, code);
    r->service->errors++;
    ab_req_free(b, r);
}

typedef struct {
    ab_broker_t *b;
    uint32_t code;
    const char *text;
} s_fail_t;

static void s_fail_queued(void *ctx, ab_defer_node_t *n)
{
    s_fail_t *f = ctx;
    ab_req_fail(f->b, ab_defer_data(n, ab_req_t, later), f->code, f->text);
}

size_t ab_req_fail_all(ab_broker_t *b, uint32_t code, const char *text)
{
    /* Queued, then failed: failing changes the table (and may free other
     * requests, which leave the queue as they go). */
    ab_defer_t left;
    ab_defer_init(&left);
    for (size_t i = 0; i < b->pending.cap; i++) {
        ab_req_t *r = b->pending.keys[i] ? b->pending.vals[i] : NULL;
        if (r && r->state != AB_REQ_ORPHANED)
            ab_defer_add(&left, &r->later, s_fail_queued);
    }
    s_fail_t f = {b, code, text};
    return ab_defer_run(&left, &f);
}

void ab_req_fini(ab_broker_t *b)
{
    for (size_t i = 0; i < b->pending.cap; i++)
        if (b->pending.keys[i])
            ab_req_destroy(b->pending.vals[i]);
    ab_idmap_fini(&b->pending);
    ab_heap_fini(&b->deadlines);
    while (b->req_spare) {
        void *next = *(void **)b->req_spare;
        free(b->req_spare);
        b->req_spare = next;
    }
    b->req_nspare = 0;
}

size_t ab_req_live(const ab_broker_t *b)
{
    size_t live = 0;
    for (size_t i = 0; i < b->pending.cap; i++)
        if (b->pending.keys[i] && ((ab_req_t *)b->pending.vals[i])->state != AB_REQ_ORPHANED)
            live++;
    return live;
}

int ab_req_tried(const ab_req_t *r, uint64_t rid_hash)
{
    unsigned n = r->attempts < AB_ATTEMPTS_MAX ? r->attempts : AB_ATTEMPTS_MAX;
    for (unsigned i = 0; i < n; i++)
        if (r->tried[i] == rid_hash)
            return 1;
    return 0;
}

/* --- answers --------------------------------------------------------------- */
/* An answer's payload: a message (MSG), or bytes in a received BATCH (a
 * view, DATA and SIZE) that become a message of their own only when
 * something keeps them or sends them alone (s_msg). A 64 B answer copied
 * into a message and then into the client's batch cost a malloc, a free
 * and two copies (callgrind: ~300 instructions a request). */
typedef struct {
    zmq_msg_t *msg; /* NULL: none yet (HAS 0: no payload at all) */
    zmq_msg_t own;
    const void *data;
    size_t size;
    int has;
} s_body_t;

/* BODY as a message (made from its bytes the first time), or NULL when the
 * answer has no payload, or out of memory (s_lost: BODY->has is set). */
static zmq_msg_t *s_msg(s_body_t *body)
{
    if (!body->has)
        return NULL;
    if (!body->msg) {
        if (ab_msg_of_bytes(&body->own, body->data, body->size) != 0)
            return NULL;
        body->msg = &body->own;
    }
    return body->msg;
}

/* 1 when BODY has a payload that could not be made a message. */
static int s_lost(s_body_t *body)
{
    return body->has && !s_msg(body);
}

/* Forwards the answer H (+ BODY) to R's client. 0, or -1 when its payload
 * could not be made a message (out of memory): nothing was sent. */
static int s_forward(ab_broker_t *b, const ab_header_t *h, s_body_t *body, ab_req_t *r)
{
    ab_header_t out = ab_header_init(h->kind);
    out.correlation_id = r->client_id;
    out.flags = h->flags;
    out.original_size = h->original_size;
    out.error_code = h->error_code;
    out.error_text = h->error_text;
    if (r->owner && body->has && !body->msg) /* bytes: into its batch as they are */
        return ab_send_peer_bytes(b, r->owner, &out, body->data, body->size, 1) == AB_ENOMEM
                   ? -1
                   : 0;
    if (s_lost(body))
        return -1;
    if (r->owner) /* the client's live record (ab_client_track): no look-up */
        ab_send_peer(b, r->owner, &out, s_msg(body));
    else
        ab_send(b, &r->client, &out, s_msg(body));
    return 0;
}

/* Counts a final answer to R in its service's figures. */
static void s_count_final(ab_broker_t *b, const ab_header_t *h, ab_req_t *r)
{
    ab_service_t *s = r->service;
    uint64_t now_us = ab_broker_clock_us(b);
    ab_service_latency(s, now_us - r->start_us);
    if (h->kind == AB_KIND_ERROR) {
        s->errors++;
        AB_COUNT_ERROR(b, h->error_code);
    } else {
        s->replies++;
        b->c.replies++;
        if (r->dispatch_us && now_us > r->dispatch_us)
            ab_service_fast(s, r, now_us - r->dispatch_us, (int64_t)(now_us / 1000));
    }
}

/* The answer H to R (from its worker) has a payload the broker could not
 * keep (out of memory): R's client gets INTERNAL in its place, never an
 * empty or cut answer, and identical requests waiting on R are handed on
 * (cache.h). A final answer frees R; after a chunk the worker still works
 * on R, which it keeps (orphaned, cancelled) until its final answer. */
static void s_answer_lost(ab_broker_t *b, const ab_header_t *h, ab_req_t *r)
{
    ab_header_t e = ab_header_init(AB_KIND_ERROR);
    e.correlation_id = h->correlation_id;
    e.error_code = AB_ERR_INTERNAL;
    e.error_text = ab_view_of("out of memory: the broker could not keep the answer's payload");
    AB_LOG_RL(&b->rl, 0x00e0e0e0, ab_now_ms(), AB_LOG_ERROR, /* one key: a burst logs once */
              "out of memory: the %s to request %llu (service %s) could not be kept; its client "
              "gets INTERNAL", ab_kind_name(h->kind), (unsigned long long)r->bid, r->service->name);
    if (r->cache)
        ab_cache_on_answer(b, r, &e, NULL);
    ab_send_error(b, &r->client, r->client_id, AB_ERR_INTERNAL,
                  "out of memory: the broker could not keep the answer's payload");
    s_count_final(b, &e, r);
    ab_worker_rec_t *w = r->worker;
    ab_service_t *s = r->service;
    if (h->kind == AB_KIND_PARTIAL) {
        s_orphan(b, r);
        ab_cancel_send(b, r, AB_ERR_INTERNAL);
        ab_req_client_done(b, r);
        return;
    }
    w->completed++;
    ab_req_free(b, r);
    ab_health_kick_later(b); /* its credit is back: the queue may move */
    ab_service_dispatch(b, s);
}

/* A final answer from a worker that was presumed dead (or ejected) while
 * holding R: the first answer wins. R may be queued again (it leaves the
 * queue) or held by another worker (it stays there, orphaned, until that
 * worker answers; that answer is then a counted duplicate). That worker is
 * told to stop, as for a deadline: else it ran the request to its end for
 * nobody, its slot (a GPU's) taken for as long. */
static void s_late_answer(ab_broker_t *b, const ab_header_t *h, s_body_t *body, ab_req_t *r,
                          uint64_t from)
{
    if (s_lost(body)) { /* out of memory: as if it never came (R is held elsewhere) */
        b->c.replies_dropped++;
        return;
    }
    if (r->cache)
        ab_cache_on_answer(b, r, h, s_msg(body));
    if (s_forward(b, h, body, r) != 0)
        ab_send_error(b, &r->client, r->client_id, AB_ERR_INTERNAL,
                      "out of memory: the broker could not keep the answer's payload");
    s_count_final(b, h, r);
    b->c.late_replies++;
    ab_health_note_answered(b, r, from);
    ab_req_client_done(b, r);
    if (r->state == AB_REQ_QUEUED) {
        ab_req_free(b, r);
        return;
    }
    s_orphan(b, r);
    r->answered = 1;
    ab_cancel_send(b, r, AB_ERR_CANCELLED);
}

/* An answer to an orphan (the client has its answer: DEADLINE, or another
 * worker's reply), or a chunk from a presumed-dead worker (the request may
 * run elsewhere by now, so a part of it could interleave), or its final
 * once another worker streamed: dropped and counted; a holder's final
 * answer frees the request and its slot. */
static void s_answer_dropped(ab_broker_t *b, const ab_header_t *h, s_body_t *body, ab_req_t *r,
                             int holder)
{
    int final = h->kind != AB_KIND_PARTIAL;
    b->c.replies_dropped++;
    if (final && r->answered)
        b->c.duplicates_dropped++;
    /* The client got DEADLINE, but others may wait for this answer
     * (single-flight), and a whole reply is still worth storing. */
    if (holder && r->cache && !r->answered && r->state == AB_REQ_ORPHANED && !s_lost(body))
        ab_cache_on_answer(b, r, h, s_msg(body));
    if (final && holder) {
        /* A late error (CANCELLED, DEADLINE) for a request whose deadline
         * passed: a failure unless the worker answered others meanwhile;
         * a late reply is no failure. Judged once R is freed: an ejection
         * takes back (and frees) what the worker holds. Not a broker
         * link's: its answer is the far side's verdict on one request, and
         * the link's health its heartbeats (as in s_on_answer). Between
         * machines the first broker's deadline passes first (the far one
         * counts from the request's arrival), so each request that expired
         * there counted against the link, and a slow far service got the
         * link ejected: what it carried was taken back and run again. */
        ab_worker_rec_t *w = r->worker;
        int judge = r->deadline_passed && h->kind == AB_KIND_ERROR &&
                    w->peer->link_role != AB_LINK_WORKER;
        uint64_t oks = r->oks_at_dispatch, held = ab_broker_clock_us(b) - r->dispatch_us;
        ab_req_free(b, r);
        if (judge)
            ab_health_on_deadline(b, w, oks, held, (h->flags & AB_FLAG_NON_IDEMPOTENT) != 0);
        ab_health_kick_later(b); /* its credit is back: the queue may move */
    }
}

/* Whether a worker's ERROR of wire CODE says the request was at fault, not
 * the worker: a malformed or refused request, a model it does not have, a
 * cancel, an answer too large. The worker answered it, so it works: for
 * its health such an answer is a success. Else any client could eject
 * every worker of a service with five requests for a model that does not
 * exist (or five bad payloads), again at each probe, with the backoff
 * doubling each time. */
static int s_request_at_fault(uint32_t code)
{
    switch (code) {
    case AB_ERR_MALFORMED:
    case AB_ERR_UNSUPPORTED:
    case AB_ERR_NOT_FOUND:
    case AB_ERR_MODEL_NOT_FOUND:
    case AB_ERR_BAD_REQUEST:
    case AB_ERR_CANCELLED:
    case AB_ERR_BAD_NAME:
    case AB_ERR_TOO_LARGE:
    case AB_ERR_NO_AGENT:
    case AB_ERR_DENIED:
        return 1;
    default: /* INTERNAL, APPLICATION, BACKEND, BUSY, BACKEND_BUSY, ... */
        return 0;
    }
}

/* 1 when the answer H (+ BODY) to R is over its client's max payload
 * (Hello.max_payload), which it would cut or pass unseen: the client gets
 * ERROR(TOO_LARGE) instead (*E: for the counts). After a chunk R is
 * orphaned and cancelled, as at a deadline: its worker keeps R and the
 * credit until its final answer frees both. The cache's waiters got the
 * answer itself (ab_send holds each to its own client's max payload). */
static int s_too_large(ab_broker_t *b, const ab_header_t *h, s_body_t *body, ab_req_t *r,
                       ab_header_t *e)
{
    ab_peer_t *c = r->owner ? r->owner : ab_peer_lookup(b, &r->client);
    size_t size = body->msg ? zmq_msg_size(body->msg) : body->size;
    if (!c || !body->has || h->kind == AB_KIND_ERROR || !ab_peer_over_max(b, c, h, size))
        return 0;
    char text[200];
    ab_answer_too_large_text(b, c, h, size, text, sizeof text);
    b->c.answers_too_large++;
    ab_send_error_flags(b, &r->client, r->client_id, AB_ERR_TOO_LARGE, AB_FLAG_OVER_MAX_PAYLOAD,
                        text);
    *e = ab_header_init(AB_KIND_ERROR);
    e->error_code = AB_ERR_TOO_LARGE;
    if (h->kind == AB_KIND_PARTIAL) {
        s_count_final(b, e, r);
        s_orphan(b, r);
        ab_cancel_send(b, r, AB_ERR_CANCELLED);
        ab_req_client_done(b, r);
    }
    return 1;
}

/* Request ids are sequential: an agent must not answer for a service, so
 * only a holder, or a worker the request went to before (late), counts. */
static void s_on_answer(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *from_rid,
                        const ab_header_t *h, s_body_t *body)
{
    uint64_t corr = h->correlation_id;
    ab_req_t *r = ab_idmap_get(&b->pending, corr);
    int final = h->kind != AB_KIND_PARTIAL;
    int holder = r && r->state != AB_REQ_QUEUED && p && p->worker && r->worker == p->worker;
    /* The sender's hash (of its routing id and key) names it in R's tried
     * list: needed only for an answer from another than the holder, or
     * after a re-dispatch. Under CURVE a routing id is the peer's to
     * choose: another key's connection that took a closed worker's id is
     * not that worker, nor may an agent's key answer at all. */
    uint64_t from = holder ? p->rid_hash : ab_rid_hash(from_rid, b->in_key);
    int late = r && !holder && ab_req_tried(r, from) && ab_auth_may_answer(b->in_key);
    if (holder)
        p->worker->health.answers++; /* it answers: not hung (s_cancel_overdue) */
    if (!holder && !late) {
        b->c.replies_dropped++;
        if (final && ab_health_is_dup(b, corr, from))
            b->c.duplicates_dropped++;
        AB_DEBUG("dropped %s for unknown request %llu", ab_kind_name(h->kind),
                 (unsigned long long)corr);
        return;
    }
    /* A late final after another worker's chunks reached the client is
     * dropped too: it would end their stream with its own final, a whole
     * answer made of two workers' halves (and cached so). A request never
     * goes to another worker once it streamed (health.c), so R->streamed
     * here is its holder's doing, and the holder finishes it. */
    if (r->state == AB_REQ_ORPHANED || (late && (!final || r->streamed))) {
        s_answer_dropped(b, h, body, r, holder);
        return;
    }
    /* A late ERROR does not win either: the request was taken back from
     * that worker because it was presumed dead, and it is queued again or
     * running on another, which answers for it (or its deadline does). As
     * the first answer, a late BACKEND from a worker that woke up ended a
     * request a healthy worker was running. */
    if (late && h->kind == AB_KIND_ERROR) {
        s_answer_dropped(b, h, body, r, holder); /* counted: replies_dropped */
        return;
    }
    if (late) {
        s_late_answer(b, h, body, r, from);
        return;
    }
    /* An Ollama worker's backend pushed back (503, down) before anything
     * streamed: placement hands the request to another capable worker,
     * unless the worker says the work may have begun (NON_IDEMPOTENT:
     * its backend's answer was cut after its first bytes). */
    if (final && h->kind == AB_KIND_ERROR && !(h->flags & AB_FLAG_NON_IDEMPOTENT) &&
        ab_placement_retry(b, r, h->error_code))
        return;
    if (r->cache && s_lost(body)) {
        s_answer_lost(b, h, r);
        return;
    }
    if (r->cache) /* before the payload is moved on: waiters and the store copy it */
        ab_cache_on_answer(b, r, h, s_msg(body));
    ab_header_t over;
    int too_large = s_too_large(b, h, body, r, &over);
    if (!too_large && s_forward(b, h, body, r) != 0) {
        s_answer_lost(b, h, r);
        return;
    }
    if (!final) {
        if (too_large) /* R is orphaned and cancelled */
            return;
        r->streamed = 1;
        if (r->route)
            r->route->streamed = 1;
        return;
    }
    s_count_final(b, too_large ? &over : h, r);
    ab_service_t *s = r->service;
    ab_worker_rec_t *w = r->worker;
    w->completed++;
    if (r->attempts > 1)
        ab_health_note_answered(b, r, from);
    uint64_t oks_then = r->oks_at_dispatch, held = ab_broker_clock_us(b) - r->dispatch_us;
    ab_req_free(b, r);
    /* A broker link's error is the far side's verdict on one request (its
     * own workers' health is judged there); the link's health is its
     * heartbeats (link.h). A worker's own DEADLINE is judged as the
     * broker's (ab_health_on_deadline). */
    int ok = h->kind != AB_KIND_ERROR || w->peer->link_role == AB_LINK_WORKER ||
             s_request_at_fault(h->error_code);
    if (!ok && h->error_code == AB_ERR_DEADLINE)
        ab_health_on_deadline(b, w, oks_then, held, (h->flags & AB_FLAG_NON_IDEMPOTENT) != 0);
    else
        ab_health_on_result(b, w, ok);
    ab_service_dispatch(b, s);
}

void ab_req_on_answer(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *from, const ab_header_t *h,
                      zmq_msg_t *body)
{
    s_body_t bd = {.msg = body, .has = body != NULL};
    s_on_answer(b, p, from, h, &bd);
}

void ab_req_on_answer_bytes(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *from,
                            const ab_header_t *h, const ab_frame_t *pl)
{
    s_body_t bd = {.data = pl ? pl->data : NULL, .size = pl ? pl->size : 0, .has = pl != NULL};
    s_on_answer(b, p, from, h, &bd);
    if (bd.msg)
        zmq_msg_close(&bd.own);
}

/* --- deadlines ---------------------------------------------------------------- */
static void s_cancel_overdue(ab_broker_t *b, ab_req_t *r);

void ab_deadline_push(ab_broker_t *b, ab_req_t *r)
{
    r->dl.key = r->deadline_ms;
    (void)ab_heap_push(&b->deadlines, &r->dl); /* fails only out of memory */
}

void ab_deadline_remove(ab_broker_t *b, ab_req_t *r)
{
    ab_heap_remove(&b->deadlines, &r->dl);
}

int64_t ab_deadline_next(ab_broker_t *b)
{
    ab_heap_node_t *n = ab_heap_min(&b->deadlines);
    return n ? n->key : 0;
}

void ab_deadline_expire(ab_broker_t *b, int64_t now)
{
    ab_heap_node_t *n;
    while ((n = ab_heap_min(&b->deadlines)) && n->key <= now) {
        ab_req_t *r = ab_list_data(n, ab_req_t, dl);
        if (r->state == AB_REQ_DISPATCHED) {
            /* Answer the client now; the worker keeps the credit until it
             * answers (its late reply is then dropped and counted). */
            ab_send_error(b, &r->client, r->client_id, AB_ERR_DEADLINE,
                          "deadline passed while a worker held the request");
            AB_COUNT_ERROR(b, AB_ERR_DEADLINE);
            b->c.deadline_expired++;
            r->service->errors++;
            s_orphan(b, r);
            ab_cancel_send(b, r, AB_ERR_DEADLINE); /* frees the worker's slot (GPU) soon */
            ab_req_client_done(b, r);
            /* Too slow may count against the worker's failure budget:
             * judged when its answer to this request comes (the answers
             * it sent meanwhile may still wait in the socket behind a
             * busy loop: ab_health_on_deadline). */
            r->deadline_passed = 1;
        } else if (r->state == AB_REQ_ORPHANED) {
            s_cancel_overdue(b, r);
        } else {
            b->c.deadline_expired++;
            ab_req_fail(b, r, AB_ERR_DEADLINE, "deadline passed while queued");
        }
    }
}

/* --- cancel and the client index ------------------------------------------- */
/* A worker that never answers a CANCEL (hung while its heartbeats go on:
 * a stuck handler, a backend call that never returns) kept the slot
 * forever: nothing judged it, since a deadline is judged at the worker's
 * answer. Its capacity went, one request at a time, while it stayed
 * "healthy". So an orphan R waits in the deadline heap for cancel-grace-ms
 * more; if by then its worker answered nothing at all (no reply, chunk or
 * error to any request), that counts one failure, and again each period:
 * a hung worker is ejected after eject-failures periods, and what it holds
 * is taken back (ab_health_take_back). One that answers others is busy,
 * not hung (a handler that cannot stop): it keeps the slot until it
 * answers. Not a broker link's: its health is its heartbeats. */
static void s_cancel_arm(ab_broker_t *b, ab_req_t *r)
{
    ab_deadline_remove(b, r);
    if (!b->cfg->cancel_grace_ms || r->state != AB_REQ_ORPHANED ||
        r->worker->peer->link_role == AB_LINK_WORKER)
        return;
    r->answers_at_cancel = r->worker->health.answers;
    r->dl.key = ab_now_ms() + b->cfg->cancel_grace_ms;
    (void)ab_heap_push(&b->deadlines, &r->dl); /* out of memory: not watched */
}

/* R's CANCEL went cancel-grace-ms ago and its worker still holds it. */
static void s_cancel_overdue(ab_broker_t *b, ab_req_t *r)
{
    ab_worker_rec_t *w = r->worker;
    int hung = w->health.answers == r->answers_at_cancel;
    s_cancel_arm(b, r); /* watched again: judged once per period */
    if (!hung)
        return;
    b->c.cancels_unanswered++;
    r->deadline_passed = 0; /* judged here: its late answer is not judged again */
    AB_LOG_RL(&b->rl, w->peer->rid_hash ^ 0xca0c, ab_now_ms(), AB_LOG_WARN,
              "worker %s%s%s answered nothing in the %ld ms since request %llu (service %s) was "
              "cancelled: counted as a failure", w->peer->key, w->peer->name[0] ? " " : "",
              w->peer->name, b->cfg->cancel_grace_ms, (unsigned long long)r->bid,
              r->service->name);
    ab_health_on_result(b, w, 0); /* may eject W, which frees R */
}

void ab_cancel_send(ab_broker_t *b, ab_req_t *r, uint32_t why)
{
    if (!r->worker || ab_cache_has_waiters(r)) /* identical requests wait for it */
        return;
    /* Until the worker's answer comes back, R would still lead its flight:
     * an identical request would join it, get its start replayed, then its
     * CANCELLED, and never reach a worker. */
    ab_cache_req_cancelled(b, r);
    ab_header_t h = ab_header_init(AB_KIND_CANCEL);
    h.correlation_id = r->bid;
    h.error_code = why;
    h.target = ab_view_of(r->service->name);
    ab_send(b, &r->worker->peer->rid, &h, NULL);
    s_cancel_arm(b, r);
}

/* --- each client's own requests -------------------------------------------
 * A CANCEL names the client's id, and a client that leaves takes all its
 * requests with it: both go through the client's own index instead of a
 * scan of everything the broker holds (0.6 ms per CANCEL with 200k pending
 * before; one lookup now). The map holds the newest request per client id
 * (ids are the client's to choose; the library never reuses one while it is
 * in flight); the list holds them all, so departure misses none. */
void ab_client_track(ab_peer_t *p, ab_req_t *r)
{
    r->owner = p;
    ab_list_insert_head(&p->reqs, &r->clink);
    /* Out of memory: R is still cancelled when its client leaves. */
    (void)ab_idmap_put(&p->reqs_by_id, r->client_id, r);
}

void ab_client_untrack(ab_req_t *r)
{
    ab_peer_t *p = r->owner;
    if (!p)
        return;
    ab_list_remove(&r->clink);
    if (ab_idmap_get(&p->reqs_by_id, r->client_id) == r)
        ab_idmap_del(&p->reqs_by_id, r->client_id);
    r->owner = NULL;
}

/* R, orphaned, belongs to its worker alone now that its client left (or
 * cancelled it): it lets go of the client's record, which then goes with the client's last
 * connection and live request. Else a worker that never answers the CANCEL
 * (hung, or careless) kept one record per departed client for as long as
 * it stayed connected: `clients` grew with every client that left. */
static void s_client_forget(ab_broker_t *b, ab_req_t *r)
{
    ab_req_client_done(b, r);
    if (r->crec) {
        ab_client_release(b, r->crec);
        r->crec = NULL;
    }
}

/* Forgets FOUND for its client: dropped if queued, else orphaned and its
 * worker told to stop. Either way it leaves its client's index. */
static void s_cancel(ab_broker_t *b, ab_req_t *found)
{
    if (found->state == AB_REQ_ORPHANED) {
        ab_client_untrack(found);
        return;
    }
    found->service->errors++;
    if (found->state == AB_REQ_QUEUED || found->state == AB_REQ_WAITING) {
        ab_req_free(b, found);
        return;
    }
    /* Dispatched: the worker keeps the credit until it answers (CANCELLED,
     * dropped as for any orphan), so the slot is not offered twice. The
     * client is done with it: it leaves the client's quota and record now,
     * as at a deadline. Else a worker that never answers the CANCEL (hung,
     * or careless) kept the client refused BUSY by max-client-inflight for
     * requests it had given up, and its record after it left. */
    ab_client_untrack(found);
    s_orphan(b, found);
    ab_cancel_send(b, found, AB_ERR_CANCELLED);
    s_client_forget(b, found);
}

int ab_cancel_from_client(ab_broker_t *b, const ab_rid_t *client, uint64_t client_id)
{
    ab_peer_t *p = ab_peer_lookup(b, client);
    ab_req_t *r = p ? ab_idmap_get(&p->reqs_by_id, client_id) : NULL;
    if (!r || r->state == AB_REQ_ORPHANED) /* an orphan's client has its answer */
        return 0;
    b->c.cancelled++;
    s_cancel(b, r);
    return 1;
}

void ab_cancel_client_gone(ab_broker_t *b, ab_peer_t *p, int cancel)
{
    /* Each turn takes the head off the list (s_cancel frees or orphans it,
     * and either unlinks it), whatever else the cancel changes. */
    ab_list_t *l;
    while ((l = ab_list_first(&p->reqs))) {
        ab_req_t *r = ab_list_data(l, ab_req_t, clink);
        if (cancel) {
            int freed = r->state == AB_REQ_QUEUED || r->state == AB_REQ_WAITING;
            b->c.cancelled_on_leave += r->state != AB_REQ_ORPHANED;
            s_cancel(b, r);
            if (!freed) /* orphaned: still held by its worker */
                s_client_forget(b, r);
        } else
            ab_client_untrack(r);
    }
    ab_idmap_fini(&p->reqs_by_id);
}
