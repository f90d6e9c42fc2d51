/*
 * service.h - services, their workers and queues, dispatch (service.c).
 *
 * A service exists from its first REGISTER (or, during the startup grace,
 * its first request) and lives while a worker serves it or a request names
 * it. Requests wait in its queue (lanes.h) while no worker has free credit.
 */
#ifndef AB_SERVICE_H
#define AB_SERVICE_H

#include "broker.h"
#include "health.h"
#include "hist.h"
#include "lanes.h"

struct ab_worker_rec {
    ab_peer_t *peer;
    ab_service_t *service;
    uint32_t capacity;
    uint32_t in_flight;
    uint64_t completed;
    uint64_t last_dispatch; /* dispatch sequence number, spreads ties */
    int64_t registered_ms;
    zhashx_t *labels;       /* string -> string (owned copies) */
    ab_list_t reqs;         /* in-flight requests (ab_req_t.qlink) */
    ab_health_t health;
    struct Agentbus__InferenceState *inference; /* placement.c; NULL: generic worker */
};

/* The fastest answer of this window and the last (0: none) for requests of
 * one model (KEY: a hash of its name; 0 for requests that name none): a
 * fast model's deadline is not judged by a slow model's answers. */
#define AB_FAST_MODELS 8
typedef struct {
    uint64_t key, us[2];
    int64_t since_ms; /* the current window's start; 0: the slot is unused */
} ab_fast_t;

struct ab_service {
    char name[AB_NAME_MAX];
    int provisional;        /* created by a request during the startup grace */
    zlistx_t *workers;      /* ab_worker_rec_t*, not owned */
    ab_lane_t lanes[AB_LANES]; /* queued requests by lane and client (lanes.h) */
    ab_models_t models;     /* queued requests by model (lanes.h) */
    uint32_t q_len;         /* in all lanes */
    uint64_t deadline_early; /* answered DEADLINE early: less time left than a fast answer */
    ab_fast_t fast[AB_FAST_MODELS]; /* fastest recent answers, per model (service.c) */
    uint64_t requests, replies, errors;
    ab_hist_t *latency_us;  /* NULL until its first answer: 9 KB an unused name does not cost */
    uint32_t held;          /* pending requests naming it: while > 0 it is not idle */
    int64_t idle_since_ms;  /* on the idle list since (no worker, nothing held) */
    ab_list_t idle_link;    /* on b->idle (oldest idle first) while idle */
    ab_defer_node_t later;  /* queued for an action after a walk over the services */
};

/* The service NAME; with CREATE, made when absent. NULL when absent (and
 * not CREATE), out of memory, or at max-services with no idle service to
 * make room (counted in services_refused). */
ab_service_t *ab_service_get(ab_broker_t *b, const char *name, int create);
/* Request R (pending now) names its service: the service is not idle while
 * any does. ab_service_release undoes it (from ab_req_free). */
void ab_service_hold(ab_broker_t *b, ab_req_t *r);
void ab_service_release(ab_broker_t *b, ab_req_t *r);
/* Records a latency sample of S (its histogram is allocated on the first). */
void ab_service_latency(ab_service_t *s, uint64_t us);
/* Registers the service timers: idle expiry, the end of the startup grace. */
int ab_service_init(ab_broker_t *b);
/* Removes services idle (no worker, no request) for service-idle-ms, a
 * bounded number per call; nothing during the startup grace. */
void ab_service_expire_idle(ab_broker_t *b, int64_t now);
void ab_service_free(void **item);
/* Frees every worker record and service (the broker is going away). */
void ab_service_fini(ab_broker_t *b);
/* 1 if S may take one more request (its queue and the broker's total are
 * under their bounds), else 0: the caller answers BUSY. */
int ab_service_admit(ab_broker_t *b, const ab_service_t *s);
/* R (pending) waits in S's queue. 0, or -1 when out of memory: R was
 * answered INTERNAL and freed. */
int ab_service_enqueue(ab_broker_t *b, ab_service_t *s, ab_req_t *r);
/* A newly admitted R for S: sent to a worker at once when nothing waits
 * ahead of it and one has credit, else queued (within its client's
 * max-client-queued: over it R is answered BUSY) and S dispatched. R may be
 * answered early (DEADLINE) when less time is left than S's fastest recent
 * answer. R must not be used after the call. */
void ab_service_submit(ab_broker_t *b, ab_service_t *s, ab_req_t *r, int64_t now);
/* Records a worker's answer time US for S (dispatch to final reply): the
 * fastest one per 10 s window decides what is too late (above). */
void ab_service_fast(ab_service_t *s, const ab_req_t *r, uint64_t us, int64_t now_ms);
void ab_service_dispatch(ab_broker_t *b, ab_service_t *s);
/* Dispatches every service with a queue (after the walk over them). */
void ab_service_dispatch_all(ab_broker_t *b);
/* Calls FN(B, &s->later) for each service S that WANT accepts, after the
 * walk over the services. */
void ab_service_each(ab_broker_t *b, int (*want)(const ab_service_t *), ab_defer_fn *fn);
/* Ends the startup grace: services no worker registered for during it are
 * removed and their queued requests answered NO_SERVICE. */
void ab_service_end_grace(ab_broker_t *b);
/* 1 when W reads R's payload: its size (an lz4 one's original size when
 * larger) is within the max payload W's REGISTER said (Register.max_payload;
 * not said: the broker's, which R passed on arrival). A larger one would cut
 * the worker's connection (past its ZMQ_MAXMSGSIZE). */
int ab_worker_fits(const ab_broker_t *b, const ab_worker_rec_t *w, const ab_req_t *r);
/* The worker of S that takes request R next (R may be NULL): local ones
 * first, then broker links that may take R (link.h), among those R fits
 * (ab_worker_fits). NULL when none. */
ab_worker_rec_t *ab_service_pick(ab_broker_t *b, ab_service_t *s, const ab_req_t *r);
/* REGISTER IN (+ payload PL) from P: P becomes (or stays) a worker of the
 * service IN names, and is answered. 0, or AB_EDECODE for a malformed one
 * (the caller rejects it); limits are answered here (TOO_LARGE, BUSY). */
int ab_worker_on_register(ab_broker_t *b, ab_peer_t *p, const ab_header_t *in, const ab_frame_t *pl,
                          int64_t now);
void ab_worker_attach(ab_broker_t *b, ab_peer_t *peer, ab_service_t *s, uint32_t capacity);
void ab_worker_detach(ab_broker_t *b, ab_worker_rec_t *w, const char *why);
void ab_worker_req_remove(ab_worker_rec_t *w, ab_req_t *r);
void ab_queue_remove(ab_service_t *s, ab_req_t *r);
/* R goes back to the front of S's queue (taken back from a worker); out of
 * memory it is answered INTERNAL and freed instead. */
void ab_queue_push_front(ab_broker_t *b, ab_service_t *s, ab_req_t *r);
/* The request at the front of S's queue, or NULL. */
ab_req_t *ab_queue_head(ab_service_t *s);

#endif
