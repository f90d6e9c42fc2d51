/*
 * service.c - services, their workers and queues, dispatch, deadlines.
 *
 * A service exists from its first REGISTER on; requests to it wait in its
 * FIFO queue while no worker has free credit (bounded by queue-max). A
 * worker's free credit is capacity - in_flight; dispatch picks the worker
 * with the most, and among equals the one dispatched to longest ago, so
 * load spreads. Invariant: a service's queue is non-empty only while none of
 * its workers has free credit.
 *
 * Every held request also sits in a min-heap on its deadline (with its index
 * stored in the request, so an answered request leaves the heap at once and
 * the heap never holds more than the broker's pending requests).
 */
#include "broker.h"
#include "agentbus.h"
#include "placement.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

/* --- service lifetime ----------------------------------------------------------
 * A service lives while a worker serves it or a request names it. Once it
 * has neither it goes on the idle list (oldest first) and is removed after
 * service-idle-ms, or at once when max-services is reached and a new name
 * needs the room: names a peer invents cannot pile up. */
static void s_idle_unlink(ab_broker_t *b, ab_service_t *s)
{
    if (!s->idle)
        return;
    if (s->idle_prev)
        s->idle_prev->idle_next = s->idle_next;
    else
        b->idle_head = s->idle_next;
    if (s->idle_next)
        s->idle_next->idle_prev = s->idle_prev;
    else
        b->idle_tail = s->idle_prev;
    s->idle_prev = s->idle_next = NULL;
    s->idle = 0;
}

/* Puts S on the idle list, or takes it off, as its state says. */
static void s_idle_update(ab_broker_t *b, ab_service_t *s)
{
    int idle = s->held == 0 && zlistx_size(s->workers) == 0;
    if (!idle) {
        s_idle_unlink(b, s);
        return;
    }
    if (s->idle)
        return;
    s->idle = 1;
    s->idle_since_ms = ab_now_ms();
    s->idle_prev = b->idle_tail;
    s->idle_next = NULL;
    if (b->idle_tail)
        b->idle_tail->idle_next = s;
    else
        b->idle_head = s;
    b->idle_tail = s;
}

static void s_service_delete(ab_broker_t *b, ab_service_t *s)
{
    s_idle_unlink(b, s);
    zhashx_delete(b->services, s->name); /* ab_service_free */
}

ab_service_t *ab_service_get(ab_broker_t *b, const char *name, int create)
{
    ab_service_t *s = zhashx_lookup(b->services, name);
    if (s || !create)
        return s;
    if (zhashx_size(b->services) >= (size_t)b->cfg->max_services) {
        if (!b->idle_head) {
            b->c.services_refused++;
            AB_LOG_RL(&b->rl, 0x5e4f1ce5, ab_now_ms(), AB_LOG_WARN,
                      "service '%s' refused: max-services (%ld) reached", name,
                      b->cfg->max_services);
            return NULL;
        }
        b->c.services_expired++; /* the oldest idle one makes room */
        s_service_delete(b, b->idle_head);
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
        zlistx_destroy(&s->workers);
        free(s->latency_us);
        free(s);
    }
    *item = NULL;
}

void ab_service_hold(ab_broker_t *b, ab_req_t *r)
{
    if (r->holds_service)
        return;
    r->holds_service = 1;
    r->service->held++;
    s_idle_unlink(b, r->service);
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

void ab_service_expire_idle(ab_broker_t *b, int64_t now)
{
    if (!b->grace_over) /* workers may be reconnecting after a restart */
        return;
    for (int n = 0; n < AB_EXPIRE_BATCH && b->idle_head; n++) {
        ab_service_t *s = b->idle_head;
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

void ab_service_end_grace(ab_broker_t *b)
{
    ab_service_t *gone[64];
    size_t n;
    do { /* collect, then delete: a zhashx may not change while iterated */
        n = 0;
        for (ab_service_t *s = zhashx_first(b->services); s && n < 64;
             s = zhashx_next(b->services))
            if (s->provisional)
                gone[n++] = s;
        for (size_t i = 0; i < n; i++) {
            char text[AB_NAME_MAX + 64];
            snprintf(text, sizeof text, "no service '%s' is registered", gone[i]->name);
            while (gone[i]->q_head)
                ab_req_fail(b, gone[i]->q_head, AB_ERR_NO_SERVICE, text);
            gone[i]->provisional = 0;
            if (gone[i]->held == 0) /* else removed once idle: requests name it */
                s_service_delete(b, gone[i]);
        }
    } while (n == 64);
}

/* --- queue -------------------------------------------------------------------- */
int ab_service_enqueue(ab_broker_t *b, ab_service_t *s, ab_req_t *r)
{
    (void)b;
    r->state = AB_REQ_QUEUED;
    r->next = NULL;
    r->prev = s->q_tail;
    if (s->q_tail)
        s->q_tail->next = r;
    else
        s->q_head = r;
    s->q_tail = r;
    s->q_len++;
    return 0;
}

void ab_queue_remove(ab_service_t *s, ab_req_t *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        s->q_head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        s->q_tail = r->prev;
    r->prev = r->next = NULL;
    s->q_len--;
}

void ab_queue_push_front(ab_service_t *s, ab_req_t *r)
{
    r->state = AB_REQ_QUEUED;
    r->prev = NULL;
    r->next = s->q_head;
    if (s->q_head)
        s->q_head->prev = r;
    else
        s->q_tail = r;
    s->q_head = r;
    s->q_len++;
}

static void s_str_free(void **item)
{
    free(*item);
    *item = NULL;
}

/* --- workers ------------------------------------------------------------------- */
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
    if (r->prev)
        r->prev->next = r->next;
    else
        w->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
    r->worker = NULL;
    if (w->in_flight)
        w->in_flight--;
}

static void s_worker_req_add(ab_worker_rec_t *w, ab_req_t *r)
{
    r->prev = NULL;
    r->next = w->reqs;
    if (w->reqs)
        w->reqs->prev = r;
    w->reqs = r;
    r->worker = w;
    w->in_flight++;
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
    void *handle = zlistx_find(s->workers, w);
    if (handle)
        zlistx_delete(s->workers, handle);
    zhashx_destroy(&w->labels);
    ab_placement_forget(w);
    w->peer->worker = NULL;
    free(w);
    s_idle_update(b, s);
}

ab_worker_rec_t *ab_service_pick(ab_broker_t *b, ab_service_t *s)
{
    (void)b;
    ab_worker_rec_t *best = NULL;
    uint32_t best_free = 0;
    for (ab_worker_rec_t *w = zlistx_first(s->workers); w; w = zlistx_next(s->workers)) {
        uint32_t free_credit = ab_health_free_credit(w);
        if (free_credit == 0)
            continue;
        if (!best || free_credit > best_free ||
            (free_credit == best_free && w->last_dispatch < best->last_dispatch)) {
            best = w;
            best_free = free_credit;
        }
    }
    return best;
}

/* Sends R to W. The payload goes as a reference-counted copy (no bytes are
 * copied for payloads over ZeroMQ's 33-byte inline size), so the request
 * keeps its own reference for a later re-dispatch. */
static int s_send_to_worker(ab_broker_t *b, ab_worker_rec_t *w, ab_req_t *r, int64_t now)
{
    ab_header_t h = ab_header_init(AB_KIND_REQUEST);
    h.id = r->bid;
    h.target = ab_view_of(r->service->name);
    h.flags = r->flags;
    h.priority = r->priority;
    if (r->route)
        h.model = ab_view_of(r->route->model);
    h.original_size = r->original_size;
    int64_t left = r->deadline_ms - now;
    h.timeout_ms = left > 0 ? (uint32_t)left : 1;
    zmq_msg_t copy;
    zmq_msg_init(&copy);
    if (r->has_payload)
        zmq_msg_copy(&copy, &r->payload);
    int rc = ab_send(b, &w->peer->rid, &h, r->has_payload ? &copy : NULL);
    zmq_msg_close(&copy);
    return rc;
}

#define AB_DISPATCH_SCAN 64 /* queued requests looked past one that must wait */

/* Requests with a model go where placement says (placement.c); a request
 * whose model no free worker should take waits without blocking the ones
 * behind it (up to AB_DISPATCH_SCAN of them). */
void ab_service_dispatch(ab_broker_t *b, ab_service_t *s)
{
    int64_t now = ab_now_ms();
    ab_req_t *r = s->q_head;
    int waited = 0;
    while (r && waited < AB_DISPATCH_SCAN) {
        int impossible = 0;
        ab_req_t *next = r->next;
        ab_worker_rec_t *w = r->route ? ab_placement_pick(b, s, r, &impossible)
                                      : ab_service_pick(b, s);
        if (impossible) {
            char text[AB_NAME_MAX + AB_MODEL_MAX + 64];
            uint32_t code = ab_placement_why(s, r, text, sizeof text);
            ab_req_fail(b, r, code, text);
            r = next;
            continue;
        }
        if (!w) {
            if (!r->route)
                return; /* no worker has credit */
            waited++;
            r = next;
            continue;
        }
        if ((r->flags & AB_FLAG_LZ4) && !(w->peer->features & AB_FEATURE_LZ4)) {
            /* The broker never decompresses; an older worker cannot. Every
             * branch that frees R moves on to NEXT, read before the free
             * (failing R may push a coalesced twin to the queue's front,
             * never free a queued request). */
            b->c.lz4_refused++;
            ab_req_fail(b, r, AB_ERR_UNSUPPORTED, "the worker cannot read lz4-compressed "
                                                  "payloads: send this one uncompressed");
            r = next;
            continue;
        }
        ab_queue_remove(s, r);
        r->state = AB_REQ_DISPATCHED;
        s_worker_req_add(w, r);
        ab_health_on_dispatch(b, w, r);
        w->last_dispatch = ++b->dispatch_seq;
        if (s_send_to_worker(b, w, r, now) != 0) {
            /* The worker is gone or choking: take the request back, put it
             * at the front, and stop offering that worker. */
            ab_worker_req_remove(w, r);
            r->attempts--; /* it never reached the worker */
            ab_queue_push_front(s, r);
            ab_peer_drop(b, w->peer, "unreachable");
            next = s->q_head;
        }
        r = next;
    }
}

/* --- deadline heap ---------------------------------------------------------------- */
static void s_heap_swap(ab_broker_t *b, size_t i, size_t j)
{
    ab_req_t *t = b->heap[i];
    b->heap[i] = b->heap[j];
    b->heap[j] = t;
    b->heap[i]->heap_index = i;
    b->heap[j]->heap_index = j;
}

static void s_heap_up(ab_broker_t *b, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (b->heap[p]->deadline_ms <= b->heap[i]->deadline_ms)
            break;
        s_heap_swap(b, i, p);
        i = p;
    }
}

static void s_heap_down(ab_broker_t *b, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < b->heap_len && b->heap[l]->deadline_ms < b->heap[m]->deadline_ms)
            m = l;
        if (r < b->heap_len && b->heap[r]->deadline_ms < b->heap[m]->deadline_ms)
            m = r;
        if (m == i)
            return;
        s_heap_swap(b, i, m);
        i = m;
    }
}

void ab_heap_push(ab_broker_t *b, ab_req_t *r)
{
    if (b->heap_len == b->heap_cap) {
        size_t cap = b->heap_cap ? b->heap_cap * 2 : 1024;
        ab_req_t **h = realloc(b->heap, cap * sizeof *h);
        if (!h) {
            r->heap_index = SIZE_MAX; /* no deadline tracking; still answered */
            return;
        }
        b->heap = h;
        b->heap_cap = cap;
    }
    r->heap_index = b->heap_len;
    b->heap[b->heap_len++] = r;
    s_heap_up(b, r->heap_index);
}

void ab_heap_remove(ab_broker_t *b, ab_req_t *r)
{
    size_t i = r->heap_index;
    if (i >= b->heap_len || b->heap[i] != r)
        return;
    b->heap_len--;
    if (i != b->heap_len) {
        b->heap[i] = b->heap[b->heap_len];
        b->heap[i]->heap_index = i;
        s_heap_down(b, i);
        s_heap_up(b, i);
    }
    r->heap_index = SIZE_MAX;
}

int64_t ab_next_deadline(ab_broker_t *b)
{
    return b->heap_len ? b->heap[0]->deadline_ms : 0;
}

void ab_expire_deadlines(ab_broker_t *b, int64_t now)
{
    while (b->heap_len && b->heap[0]->deadline_ms <= now) {
        ab_req_t *r = b->heap[0];
        if (r->state == AB_REQ_DISPATCHED) {
            /* Answer the client now; the worker keeps the credit until it
             * answers (its late reply is then dropped and counted). */
            ab_send_error(b, &r->client, r->client_id, AB_ERR_DEADLINE,
                          "deadline passed while a worker held the request");
            AB_COUNT_ERROR(b, AB_ERR_DEADLINE);
            b->c.deadline_expired++;
            r->service->errors++;
            r->state = AB_REQ_ORPHANED;
            ab_cancel_send(b, r, AB_ERR_DEADLINE); /* frees the worker's slot (GPU) soon */
            if (r->has_payload) {
                zmq_msg_close(&r->payload);
                r->has_payload = 0;
            }
            ab_heap_remove(b, r);
            ab_req_client_done(b, r);
            /* Too slow counts against the worker's failure budget. */
            ab_health_on_result(b, r->worker, 0);
        } else {
            b->c.deadline_expired++;
            ab_req_fail(b, r, AB_ERR_DEADLINE, "deadline passed while queued");
        }
    }
}
