/*
 * broker.h - the broker's state, shared by its subsystems.
 *
 *   broker.c   event loop, receive path, peers, timers
 *   router.c   sending: headers, payload moves, errors to peers
 *   service.c  services, workers, queues, dispatch, deadline heap
 *   stats.c    counters, CONTROL answers (Stats, ServiceList, WorkerList)
 *
 * Everything runs on the broker's one thread; nothing here is locked.
 */
#ifndef AB_BROKER_H
#define AB_BROKER_H

#include "codec.h"
#include "config.h"
#include "hist.h"
#include "idmap.h"
#include "log.h"

#include <czmq.h>
#include <stdint.h>
#include <zmq.h>

#define AB_RID_MAX 255
#define AB_NAME_MAX 256

typedef struct ab_service ab_service_t;
typedef struct ab_worker_rec ab_worker_rec_t;

/* A ZeroMQ routing id: who a message came from / goes to. */
typedef struct {
    uint8_t len;
    uint8_t bytes[AB_RID_MAX];
} ab_rid_t;

typedef enum { AB_ROLE_AGENT = 0, AB_ROLE_WORKER = 1, AB_ROLE_CONTROL = 2, AB_ROLE_COUNT } ab_role_t;

/* A connected peer, known by its routing id. Dropped after `liveness`
 * heartbeat intervals of silence, or on BYE. */
typedef struct {
    ab_rid_t rid;
    char key[2 * AB_RID_MAX + 1]; /* hex of rid: for logs and brokerctl */
    ab_role_t role;
    char name[AB_NAME_MAX];
    int64_t connected_ms;
    int64_t last_seen_ms;
    int64_t heartbeat_ms; /* interval the peer said it keeps */
    uint64_t requests;    /* REQUESTs sent: an operator's tool sends none */
    ab_worker_rec_t *worker; /* when role == WORKER */
} ab_peer_t;

typedef enum {
    AB_REQ_QUEUED,
    AB_REQ_DISPATCHED,
    AB_REQ_ORPHANED,
    AB_REQ_WAITING /* attached to an identical request in flight (cache.h) */
} ab_req_state_t;

/* A request held by the broker from arrival until its one answer. */
typedef struct ab_req {
    uint64_t bid;       /* broker-assigned id: correlation with workers */
    uint64_t client_id; /* the client's own request id */
    ab_rid_t client;
    ab_service_t *service;
    ab_worker_rec_t *worker; /* while dispatched */
    ab_req_state_t state;
    zmq_msg_t payload;       /* kept for re-dispatch; sent as refcounted copies */
    int has_payload;
    uint32_t flags, priority;
    int64_t deadline_ms;
    uint64_t start_us;
    size_t heap_index; /* position in the deadline heap */
    struct ab_req *prev, *next; /* in the service queue or the worker's list */
    struct ab_route *route;     /* model / pinned worker (placement.h); NULL if none */
    struct ab_cache_req *cache; /* cacheable requests only (cache.h) */
} ab_req_t;

struct ab_worker_rec {
    ab_peer_t *peer;
    ab_service_t *service;
    uint32_t capacity;
    uint32_t in_flight;
    uint64_t completed;
    uint64_t last_dispatch; /* dispatch sequence number, spreads ties */
    int64_t registered_ms;
    zhashx_t *labels;       /* string -> string (owned copies) */
    ab_req_t *reqs;         /* in-flight requests (doubly linked) */
    struct Agentbus__InferenceState *inference; /* placement.c; NULL: generic worker */
};

struct ab_service {
    char name[AB_NAME_MAX];
    int provisional;        /* created by a request during the startup grace */
    zlistx_t *workers;      /* ab_worker_rec_t*, not owned */
    ab_req_t *q_head, *q_tail;
    uint32_t q_len;
    uint64_t requests, replies, errors;
    ab_hist_t latency_us;
};

typedef struct {
    uint64_t msgs_in, msgs_out, bytes_in, bytes_out;
    uint64_t requests, replies, replies_dropped, malformed, send_failures;
    uint64_t errors_sent[AB_ERR_COUNT_];      /* ERROR replies by wire code */
    uint64_t errors_ext[16];                  /* the same for wire codes 20..35 */
    uint64_t rejected[32];                    /* codec rejections by -status */
    /* Snapshot one rate interval ago, for per-second figures. */
    uint64_t prev_msgs_in, prev_msgs_out, prev_bytes_in, prev_bytes_out;
    int64_t prev_ms;
    double rate_msgs_in, rate_msgs_out, rate_bytes_in, rate_bytes_out;
} ab_counters_t;

typedef struct {
    ab_broker_config_t *cfg;
    ab_limits_t limits;
    void *zctx;
    void *router;
    zhashx_t *peers;    /* &peer->rid -> ab_peer_t (owned) */
    zhashx_t *services; /* name -> ab_service_t (owned) */
    ab_idmap_t pending; /* bid -> ab_req_t (owned) */
    ab_req_t **heap;    /* min-heap on deadline_ms */
    size_t heap_len, heap_cap;
    uint64_t next_bid;
    uint64_t dispatch_seq;
    int64_t started_ms;
    int64_t next_sweep_ms;
    int grace_over;         /* startup grace has ended and been enforced */
    ab_counters_t c;
    ab_ratelimit_t rl;
    volatile int stop;
    struct ab_cache *cache; /* inference cache (cache.h); NULL when off */
} ab_broker_t;

/* Counts an ERROR sent or forwarded with wire CODE (any value). */
#define AB_COUNT_ERROR(b, code)                                                                  \
    do {                                                                                         \
        uint32_t c_ = (code);                                                                    \
        if (c_ < AB_ERR_COUNT_)                                                                  \
            (b)->c.errors_sent[c_]++;                                                            \
        else if (c_ >= 20 && c_ < 36)                                                            \
            (b)->c.errors_ext[c_ - 20]++;                                                        \
        else                                                                                     \
            (b)->c.errors_sent[AB_ERR_INTERNAL]++;                                               \
    } while (0)

/* broker.c */
int ab_broker_init(ab_broker_t *b, ab_broker_config_t *cfg);
int ab_broker_run(ab_broker_t *b);
void ab_broker_fini(ab_broker_t *b);
ab_peer_t *ab_peer_lookup(ab_broker_t *b, const ab_rid_t *rid);
void ab_peer_drop(ab_broker_t *b, ab_peer_t *peer, const char *why);

/* router.c: every send goes through here (counts bytes, handles errors). */
/* Sends HEADER (+ PAYLOAD moved, may be NULL) to RID. 0 or -1 (counted). */
int ab_send(ab_broker_t *b, const ab_rid_t *rid, const ab_header_t *h, zmq_msg_t *payload);
/* Sends ERROR(code, text) answering CORR to RID. */
int ab_send_error(ab_broker_t *b, const ab_rid_t *rid, uint64_t corr, uint32_t code,
                  const char *text);
/* Answers request R to its client with an error and frees it. */
void ab_req_fail(ab_broker_t *b, ab_req_t *r, uint32_t code, const char *text);
void ab_req_free(ab_broker_t *b, ab_req_t *r);
/* Closes R's payload and frees it (R must be out of every list). */
void ab_req_destroy(ab_req_t *r);

/* service.c */
ab_service_t *ab_service_get(ab_broker_t *b, const char *name, int create);
void ab_service_free(void **item);
/* 1 if S may take one more request (its queue and the broker's total are
 * under their bounds), else 0: the caller answers BUSY. */
int ab_service_admit(ab_broker_t *b, const ab_service_t *s);
int ab_service_enqueue(ab_broker_t *b, ab_service_t *s, ab_req_t *r);
void ab_service_dispatch(ab_broker_t *b, ab_service_t *s);
/* Ends the startup grace: services no worker registered for during it are
 * removed and their queued requests answered NO_SERVICE. */
void ab_service_end_grace(ab_broker_t *b);
ab_worker_rec_t *ab_service_pick(ab_broker_t *b, ab_service_t *s);
void ab_worker_attach(ab_broker_t *b, ab_peer_t *peer, ab_service_t *s, uint32_t capacity);
void ab_worker_detach(ab_broker_t *b, ab_worker_rec_t *w, const char *why);
void ab_worker_req_remove(ab_worker_rec_t *w, ab_req_t *r);
void ab_queue_remove(ab_service_t *s, ab_req_t *r);
void ab_queue_push_front(ab_service_t *s, ab_req_t *r);
void ab_heap_push(ab_broker_t *b, ab_req_t *r);
void ab_heap_remove(ab_broker_t *b, ab_req_t *r);
void ab_expire_deadlines(ab_broker_t *b, int64_t now);
int64_t ab_next_deadline(ab_broker_t *b);

/* stats.c */
void ab_stats_tick(ab_broker_t *b, int64_t now);
/* Builds the answer to CONTROL target WHAT; *out malloc'd. 0, or -1 for an
 * unknown WHAT. */
int ab_stats_answer(ab_broker_t *b, const char *what, uint8_t **out, size_t *len);

#endif
