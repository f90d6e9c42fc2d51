/*
 * request.h - a request's life in the broker, from arrival to its one answer.
 *
 * The request module owns every ab_req_t: it creates it (ab_req_new), keeps
 * it in the pending table (bid -> request) and in the deadline heap, answers
 * it (a worker's reply, an error, DEADLINE, a client's CANCEL) and frees it.
 * Other owners hold a request in their own lists while it is theirs: the
 * service queue and a worker's list (service.c), the client index (here),
 * a single-flight group (cache.c). ab_req_free takes it out of all of them.
 *
 * Everything runs on the broker thread.
 */
#ifndef AB_REQUEST_H
#define AB_REQUEST_H

#include "broker.h"
#include "health.h" /* AB_ATTEMPTS_MAX */

typedef enum {
    AB_REQ_QUEUED,
    AB_REQ_DISPATCHED,
    AB_REQ_ORPHANED, /* its client has its answer; a worker still holds it */
    AB_REQ_WAITING   /* attached to an identical request in flight (cache.h) */
} ab_req_state_t;

/* Where a request that came over a broker link has been (link_fwd.c fills
 * it from the forwarded header). VIA points at room its maker gives: the
 * request's own fwd_room when the list fits there, else a block of its own
 * (a whole AB_VIA_MAX buffer allocated with each forwarded request cost the
 * far broker 6% of its thread in malloc and free, and a small block still
 * 5%: freed in bursts of a window, they fall out of malloc's caches). */
#define AB_FWD_KEY_TXT 41 /* a Z85 public key and its NUL */
#define AB_FWD_VIA_ROOM 128 /* crossed lists of this size (NUL included) need no block */
#define AB_REQ_SMALL_MAX 256 /* request payloads kept in the record (ab_req_t: small) */
/* What one held request costs the broker beyond a payload of its own:
 * its record plus its entries in the pending table, the deadline heap and
 * the client's index (about 64 bytes together); a crossed list past
 * AB_FWD_VIA_ROOM adds its own block (request.c, s_record_bytes). Charged to the held bytes,
 * so max-held-bytes bounds memory and not only payloads: 1,000,000 empty
 * requests (max-pending) were a gigabyte of records that counted as 0. */
#define AB_REQ_RECORD_BYTES (sizeof(struct ab_req) + 64)
struct ab_fwd {
    char *via; /* NUL-terminated, at most AB_VIA_MAX - 1 characters (link_int.h) */
    uint32_t hops_left;
    uint32_t origin_role; /* 1 + ab_keyrole_t; 0 unknown */
    char origin_key[AB_FWD_KEY_TXT];
};

/* A request held by the broker from arrival until its one answer. */
struct ab_req {
    uint64_t bid;       /* broker-assigned id: correlation with workers */
    uint64_t client_id; /* the client's own request id */
    ab_service_t *service;
    ab_worker_rec_t *worker; /* while dispatched */
    ab_req_state_t state;
    zmq_msg_t payload;       /* kept for re-dispatch; sent as refcounted copies */
    int has_payload;
    uint32_t flags, priority;
    int64_t deadline_ms;
    uint64_t start_us;
    ab_heap_node_t dl; /* in the deadline heap (key: deadline_ms) */
    uint8_t attempts;  /* dispatches so far (bounded by max-attempts) */
    uint8_t streamed;  /* a PARTIAL reached the client: never re-dispatched */
    uint8_t answered;  /* a presumed-dead worker's late reply answered it */
    uint8_t client_counted; /* counted in its client's held requests */
    uint8_t client_local;   /* its client's hop stays on this machine (peer.h: local) */
    uint64_t tried[AB_ATTEMPTS_MAX]; /* rid hash of each worker it went to */
    ab_list_t qlink;            /* in the service queue or the worker's list */
    struct ab_route *route;     /* model / pinned worker (placement.h); NULL if none */
    uint64_t original_size;     /* of an lz4 payload, forwarded with it */
    struct ab_cache_req *cache; /* cacheable requests only (cache.h) */
    ab_peer_t *owner;           /* its client's peer while it may cancel it */
    uint8_t holds_service;      /* counted in service->held (ab_service_hold) */
    ab_list_t clink;              /* in owner->reqs */
    /* issue 16: lanes and fair queuing (lanes.h, clients.h) */
    struct ab_client_rec *crec;   /* its client's record (a reference), NULL if none */
    struct ab_flow *flow;         /* its flow while queued (qlink is in flow's list) */
    uint8_t lane;                 /* AB_LANE_* from its priority */
    uint32_t skip_mark;           /* passed over in dispatch pass N (service.c) */
    struct ab_mqueue *mq;         /* its model's queue while queued (lanes.h) */
    ab_list_t mlink;              /* in mq's list of its lane */
    uint64_t enq_us;              /* queued since (0: not queued) */
    uint64_t dispatch_us;         /* last sent to a worker */
    uint64_t oks_at_dispatch;     /* its worker's successful answers then (health.h) */
    uint8_t deadline_passed;      /* orphaned by its deadline: judged at the worker's answer */
    uint64_t answers_at_cancel;   /* its worker's answers when CANCEL went (cancel-grace-ms) */
    ab_defer_node_t later;        /* queued for an action after a walk (drain) */
    struct ab_fwd *fwd;           /* came over a broker link (link.h); NULL otherwise */
    uint64_t held_bytes; /* AB_REQ_RECORD_BYTES plus its payload's size when the
                            payload is not in SMALL: counted in the broker's and its
                            client's held bytes (max-held-bytes, max-client-held-bytes) */
    uint8_t small_held; /* the payload is SMALL's first SMALL_LEN bytes */
    uint16_t small_len;
    /* From here on a reused record is not cleared (ab_req_new): each member
     * below is written whole before it is read. Clearing them (~460 bytes
     * of the ~600 cleared) was 2 % of the broker's instructions per 64 B
     * request with batching (callgrind). */
    ab_rid_t client;
    struct {
        struct ab_fwd f;
        char via[AB_FWD_VIA_ROOM];
    } fwd_room; /* FWD when its crossed list fits (link_fwd.c: filled whole) */
    /* A payload of up to AB_REQ_SMALL_MAX bytes that arrived as bytes (in a
     * BATCH or inline) is kept here, not in PAYLOAD: no message of its own
     * (a malloc, a copy and a free per request) unless something needs one
     * (ab_req_payload). Only its first SMALL_LEN bytes are read. */
    uint8_t small[AB_REQ_SMALL_MAX];
};

/* A request's payload as it arrives: a received message the request takes
 * (MSG), or bytes the caller keeps (DATA, SIZE: a BATCH entry's, or inline
 * in the header frame) that the request copies; HAS 0: none. */
typedef struct {
    zmq_msg_t *msg;
    const void *data;
    size_t size;
    int has;
} ab_req_body_t;

/* BODY as an ab_req_body_t (MSG NULL: no payload). */
static inline ab_req_body_t ab_req_body_of_msg(zmq_msg_t *msg)
{
    ab_req_body_t rb = {msg, msg ? zmq_msg_data(msg) : NULL, msg ? zmq_msg_size(msg) : 0,
                        msg != NULL};
    return rb;
}

/* --- life ------------------------------------------------------------------ */
/* A new pending request for service S from CLIENT (its peer P, may be NULL),
 * from header H; BODY's payload (BODY may be NULL) is moved or copied into it; CACHE (may be NULL)
 * is taken. It is in the pending table, the deadline heap and its client's
 * index, and holds S; the caller queues it (or joins a flight). NULL out of
 * memory: CACHE is freed, nothing else kept, the caller answers INTERNAL. */
ab_req_t *ab_req_new(ab_broker_t *b, ab_service_t *s, ab_peer_t *p, const ab_rid_t *client,
                     const ab_header_t *h, const ab_req_body_t *body,
                     struct ab_cache_req *cache, int64_t now);
/* R's payload as a message (made from SMALL the first time), or NULL when
 * R has none or out of memory. */
zmq_msg_t *ab_req_payload(ab_req_t *r);
/* Answers R to its client with ERROR(CODE, TEXT) and frees it. */
void ab_req_fail(ab_broker_t *b, ab_req_t *r, uint32_t code, const char *text);
/* Takes R out of every list, table and heap, and frees it. */
void ab_req_free(ab_broker_t *b, ab_req_t *r);
/* Closes R's payload and frees it (R must be out of every list). */
void ab_req_destroy(ab_req_t *r);
/* 1 when R may hold a payload of SIZE bytes in place of its own (made
 * plain, link_fwd.c) under max-held-bytes and its client's
 * max-client-held-bytes (as at arrival: one that holds nothing else may). */
int ab_req_held_room(const ab_broker_t *b, const ab_req_t *r, uint64_t size);
/* R's payload is SIZE bytes now: its held bytes, the broker's and its
 * client's follow. */
void ab_req_held_resize(ab_broker_t *b, ab_req_t *r, uint64_t size);
/* R's client has its answer: R no longer counts toward its in-flight limit. */
void ab_req_client_done(ab_broker_t *b, ab_req_t *r);
/* Fails every request whose client still waits (drain); returns how many. */
size_t ab_req_fail_all(ab_broker_t *b, uint32_t code, const char *text);
/* Frees every request (the broker is going away: no answers, no lists). */
void ab_req_fini(ab_broker_t *b);
/* Requests whose client still waits for an answer. */
size_t ab_req_live(const ab_broker_t *b);
/* 1 if R was dispatched to the worker whose routing id hashes to RID_HASH. */
int ab_req_tried(const ab_req_t *r, uint64_t rid_hash);

/* --- arrival ---------------------------------------------------------------- */
/* REQUEST H (+ BODY's payload, moved or copied when kept; BODY may be NULL) from RID, its peer P
 * (NULL when unknown): admitted (service known, client under its limits,
 * queue and broker under theirs), answered from the cache, joined to an
 * identical request in flight, or queued and dispatched. Every refusal is
 * answered (NO_SERVICE, BUSY) and counted. */
void ab_req_on_request(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *rid, const ab_header_t *h,
                       const ab_req_body_t *body, int64_t now);
/* ab_req_on_request for a request a broker link forwards (link_fwd.c):
 * S is the service H names (H's target under AB_NAME_MAX), already found,
 * and the link checked that one of S's workers may take it (crossed list,
 * hops left: ab_link_routable's rule). Counted and handled the same. */
void ab_req_on_forwarded(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *rid,
                         const ab_header_t *h, ab_service_t *s, const ab_req_body_t *body,
                         int64_t now);

/* --- answers --------------------------------------------------------------- */
/* PARTIAL, REPLY or ERROR H (+ BODY, moved on; may be NULL) from peer P
 * (NULL: unknown) at routing id FROM, answering the broker id in
 * H->correlation_id. Only a worker that was given the request may answer
 * it; anything else is dropped and counted. */
void ab_req_on_answer(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *from, const ab_header_t *h,
                      zmq_msg_t *body);
/* The same with the payload as bytes PL (NULL: none) that stay valid for
 * the call (an entry of a received BATCH): copied straight into the
 * client's batch, or into a message only where one is kept or sent alone. */
void ab_req_on_answer_bytes(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *from,
                            const ab_header_t *h, const ab_frame_t *pl);

/* --- deadlines ------------------------------------------------------------- */
/* Answers DEADLINE every request whose deadline is NOW or earlier. */
void ab_deadline_expire(ab_broker_t *b, int64_t now);
/* The earliest deadline held, or 0 when none. */
int64_t ab_deadline_next(ab_broker_t *b);
/* R (its deadline_ms set) is tracked until removed; out of memory it is
 * simply not (still answered, by its worker). */
void ab_deadline_push(ab_broker_t *b, ab_req_t *r);
void ab_deadline_remove(ab_broker_t *b, ab_req_t *r);

/* --- cancel and the client index ------------------------------------------- */
/* Sends CANCEL for R to the worker holding it, with WHY in error_code:
 * AB_ERR_DEADLINE (its deadline passed) or AB_ERR_CANCELLED (the client). */
void ab_cancel_send(ab_broker_t *b, ab_req_t *r, uint32_t why);
/* A client's CANCEL of its request CLIENT_ID: a queued request is dropped,
 * a dispatched one orphaned (its client has its answer already) and the
 * worker told to stop. Unknown ids are ignored (the answer crossed). O(1):
 * one peer lookup and one lookup in the client's index. When a client has
 * several requests with one id, the newest is the one cancelled. 1 when a
 * request was cancelled, 0 when none was. */
int ab_cancel_from_client(ab_broker_t *b, const ab_rid_t *client, uint64_t client_id);
/* Peer P is gone (BYE, heartbeat timeout, disconnect): with CANCEL (an
 * agent) nobody waits for its requests any more, so each is cancelled as
 * above; without (a worker's own requests) they only leave its index.
 * Either way P's index is emptied and freed: O(P's requests). */
void ab_cancel_client_gone(ab_broker_t *b, ab_peer_t *p, int cancel);
/* The client index (ab_peer_t.reqs, .reqs_by_id). R, now pending, is P's:
 * call once, after R is in the pending table. */
void ab_client_track(ab_peer_t *p, ab_req_t *r);
/* R leaves its client's index (no-op when it is in none): from
 * ab_req_free, and when R is orphaned by a cancel. */
void ab_client_untrack(ab_req_t *r);

#endif
