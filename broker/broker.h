/*
 * broker.h - the broker's state, shared by its subsystems.
 *
 *   broker.c   event loop, receive path, peers, timers
 *   router.c   sending: headers, payload moves, errors to peers
 *   service.c  services, workers, queues, dispatch, deadline heap
 *   stats.c    counters, CONTROL answers (Stats, ServiceList, WorkerList)
 *   health.c   failure detection (monitor, phi suspicion), adaptive heartbeat
 *              intervals, circuit breaker, re-dispatch of a lost worker's work
 *   directory.c DISCOVER answers and directory-change pushes to watchers
 *   msgs.c, mailbox.c, pubsub.c  agent names, direct messages, topics (msgs.h)
 *
 * Everything runs on the broker's one thread; nothing here is locked.
 */
#ifndef AB_BROKER_H
#define AB_BROKER_H

#include "codec.h"
#include "config.h"
#include "defer.h"
#include "heap.h"
#include "directory.h"
#include "health.h"
#include "hist.h"
#include "idmap.h"
#include "list.h"
#include "log.h"

#include <czmq.h>
#include <stdint.h>
#include <zmq.h>

#define AB_RID_MAX 255
#define AB_NAME_MAX 256

typedef struct ab_service ab_service_t;
typedef struct ab_worker_rec ab_worker_rec_t;
typedef struct ab_req ab_req_t; /* request.h */

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
    char key[2 * AB_RID_MAX + 1]; /* random token naming it to peers, brokerctl and
                                     logs; never its routing id (broker.c) */
    ab_role_t role;
    char name[AB_NAME_MAX];
    int64_t connected_ms;
    int64_t last_seen_ms;
    int64_t heartbeat_ms; /* interval the peer said it keeps */
    uint64_t requests;    /* REQUESTs sent: an operator's tool sends none */
    ab_worker_rec_t *worker; /* when role == WORKER */
    int fd;               /* socket of its connection (ZMQ_SRCFD): monitor events */
    uint32_t in_flight;   /* its requests the broker holds (client in-flight limit) */
    int64_t fd_closed_ms; /* the monitor saw its fd close; being verified */
    struct ab_agent *agent;  /* its agent name, when it claimed one (msgs.h) */
    struct ab_subr *subr;    /* its subscriptions, when it has any (msgs.h) */
    uint32_t features;       /* AB_FEATURE_* from its HELLO or REGISTER */
    struct ab_outq *out;     /* batching state (batching.c), NULL until used */
    ab_list_t reqs;          /* its requests as a client (ab_req_t.clink, placement.c):
                                for departure */
    ab_idmap_t reqs_by_id;   /* client id -> its newest request with that id: CANCEL */
    /* Outbound bytes (router.c): ZMTP bytes handed to libzmq for its current
     * connection (out_fd) and how many of them the peer has taken. */
    uint64_t out_sent, out_taken, out_base;
    uint64_t out_ino;        /* inode of that socket: the fd is still it */
    int out_fd, out_kind, out_sndbuf;
    ab_defer_node_t kill;    /* queued to be disconnected at the end of the turn (router.c) */
    ab_defer_node_t later;   /* queued for an action after a walk over the peers */
    int64_t out_over_ms;     /* over peer-out-max-bytes since; 0: not over */
    int64_t out_checked_ms;  /* the kernel was last asked */
} ab_peer_t;

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

struct ab_service {
    char name[AB_NAME_MAX];
    int provisional;        /* created by a request during the startup grace */
    zlistx_t *workers;      /* ab_worker_rec_t*, not owned */
    ab_list_t queue;        /* queued requests (ab_req_t.qlink), FIFO */
    uint32_t q_len;
    uint64_t requests, replies, errors;
    ab_hist_t *latency_us;  /* NULL until its first answer: 9 KB an unused name does not cost */
    uint32_t held;          /* pending requests naming it: while > 0 it is not idle */
    int64_t idle_since_ms;  /* on the idle list since (no worker, nothing held) */
    ab_list_t idle_link;    /* on b->idle (oldest idle first) while idle */
    ab_defer_node_t later;  /* queued for an action after a walk over the services */
};

typedef struct {
    uint64_t msgs_in, msgs_out, bytes_in, bytes_out;
    uint64_t requests, replies, replies_dropped, malformed, send_failures;
    uint64_t errors_sent[AB_ERR_COUNT_];      /* ERROR replies by wire code */
    uint64_t errors_ext[16];                  /* the same for wire codes 20..35 */
    uint64_t rejected[32];                    /* codec rejections by -status */
    uint64_t redispatched, retries_exhausted, duplicates_dropped, late_replies;
    uint64_t deadline_expired, workers_suspected, workers_ejected, disconnects;
    uint64_t send_eagain, send_unreachable, client_limit_busy, probes;
    /* Snapshot one rate interval ago, for per-second figures. */
    uint64_t prev_msgs_in, prev_msgs_out, prev_bytes_in, prev_bytes_out;
    int64_t prev_ms;
    double rate_msgs_in, rate_msgs_out, rate_bytes_in, rate_bytes_out;
    /* batching.c */
    uint64_t batches_in, batched_msgs_in, batches_out, batched_msgs_out, batch_malformed;
    uint64_t lz4_msgs, lz4_wire_bytes, lz4_original_bytes, lz4_skipped;
    /* issue 11: state a peer makes the broker keep */
    uint64_t cancelled, cancelled_on_leave; /* by CANCEL; because the client left */
    uint64_t registers_refused;             /* REGISTER over a register-max-* limit */
    uint64_t services_expired, services_refused; /* idle ones removed; max-services */
    /* router.c: outbound bytes and connections (issue 11) */
    uint64_t out_busy, out_dropped, slow_disconnects, slow_disconnect_bytes, conn_refused;
    uint64_t out_lost_bytes;
    uint64_t lz4_refused; /* issue 11: lz4 request vs. a worker that cannot read it */
} ab_counters_t;

typedef struct {
    ab_broker_config_t *cfg;
    ab_limits_t limits;
    void *zctx;
    void *router;
    zhashx_t *peers;    /* &peer->rid -> ab_peer_t (owned) */
    zhashx_t *peer_keys; /* peer->key -> ab_peer_t (not owned): "~key" and pins */
    zhashx_t *services; /* name -> ab_service_t (owned) */
    ab_idmap_t pending; /* bid -> ab_req_t (owned) */
    ab_heap_t deadlines; /* every held request (ab_req_t.dl), earliest first */
    uint64_t next_bid;
    uint64_t dispatch_seq;
    int64_t started_ms;
    int grace_over;         /* startup grace has ended and been enforced */
    int grace_timer;        /* the timer that ends it (service.c) */
    ab_counters_t c;
    ab_ratelimit_t rl;
    volatile int stop;
    volatile int term;      /* SIGTERM seen: drain, then stop */
    int draining;
    int64_t drain_end_ms;
    void *monitor;          /* PAIR receiving the ROUTER's socket events */
    ab_health_state_t hs;   /* health.c's own state: graveyard, duplicate ring */
    ab_watchers_t watchers; /* directory.c: DISCOVER subscribers */
    struct ab_msgs *msgs;   /* direct messages and pub/sub (msgs.h) */
    ab_peer_t **dirty;      /* batching.c: peers sent to in this turn */
    size_t ndirty, dirty_cap;
    uint64_t oldest_gathered_us; /* 0: nothing gathered */
    struct ab_cache *cache; /* inference cache (cache.h); NULL when off */
    ab_list_t idle;         /* services with no worker and nothing held (service.c) */
    struct ab_conns *conns; /* router.c: connections, slow peers; NULL until used */
    void *timers;           /* zmq_timers: periodic work, each registered by its owner */
    struct ab_tick *ticks;  /* what those timers call (broker.c) */
} ab_broker_t;

/* Periodic work of a subsystem, called from the loop after the turn's
 * messages with the time then. */
typedef void ab_tick_fn(ab_broker_t *b, int64_t now);
#define AB_SWEEP_MS 100 /* period of the sweeps: liveness, idle services, rates */

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
/* The live peer whose key (as brokerctl and "~key" senders show it) is KEY,
 * or NULL. */
ab_peer_t *ab_peer_by_key(ab_broker_t *b, const char *key);
void ab_peer_drop(ab_broker_t *b, ab_peer_t *peer, const char *why);
/* Registers FN to run every MS milliseconds (timers with the same period
 * run in the order registered). Returns a timer id, or -1. A tick may
 * cancel its own timer (ab_broker_cancel) but not change another's period. */
int ab_broker_every(ab_broker_t *b, long ms, ab_tick_fn *fn);
void ab_broker_cancel(ab_broker_t *b, int id);

/* router.c: every send goes through here (counts bytes, handles errors). */
/* Sends HEADER (+ PAYLOAD moved, may be NULL) to RID. 0 or -1 (counted). */
int ab_send(ab_broker_t *b, const ab_rid_t *rid, const ab_header_t *h, zmq_msg_t *payload);
/* Sends an encoded header BUF (+ PAYLOAD moved) to RID now, unbatched. */
int ab_send_raw(ab_broker_t *b, const ab_rid_t *rid, const uint8_t *buf, size_t len,
                zmq_msg_t *payload);
/* As ab_send_raw to peer P (accounted to it; P may be NULL). */
int ab_send_raw_peer(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *rid, const uint8_t *buf,
                     size_t len, zmq_msg_t *payload);
/* Sends HDR (an encoded header message, see ab_header_msg) + BODY (may be
 * NULL) to RID now, unbatched, if its pipe takes it: direct messages and
 * publications, which wait in their mailbox or subscriber queue otherwise.
 * 0: sent, HDR and BODY consumed. -1: errno EAGAIN (pipe full, or the peer
 * is over peer-out-max-bytes) or EHOSTUNREACH (gone); nothing consumed.
 * A refused send is counted as any other (send_failures). */
int ab_send_try(ab_broker_t *b, const ab_rid_t *rid, zmq_msg_t *hdr, zmq_msg_t *body);
/* Encodes H into a new message (fan-out sends copies of it). 0 or -1. */
int ab_header_msg(const ab_header_t *h, zmq_msg_t *out);
/* Sends ERROR(code, text) answering CORR to RID. */
int ab_send_error(ab_broker_t *b, const ab_rid_t *rid, uint64_t corr, uint32_t code,
                  const char *text);

/* router.c: bytes in flight per peer and the connection limit.
 *
 * A peer's bytes in flight are the ZMTP bytes the broker handed to libzmq
 * for its connection minus those the peer has taken, as its kernel proves:
 * over TCP the bytes its TCP stack acknowledged (TCP_INFO), over ipc the
 * bytes sent up to a moment the socket's send queue had room (SIOCOUTQ);
 * nothing the peer says counts, so no peer can opt out. */
/* 1 when P has more than peer-out-max-bytes in flight (asks the kernel
 * only when the running estimate says so). Starts P's stall clock. */
int ab_peer_over(ab_broker_t *b, ab_peer_t *p);
/* P took HLEN + PLEN bytes (header and payload frames) just sent to it. */
void ab_peer_sent(ab_broker_t *b, ab_peer_t *p, size_t hlen, size_t plen, int has_payload);
/* Registers the router's sweep. */
int ab_router_init(ab_broker_t *b);
/* Sweep: slow peers (stall timeout), refused connections, memory trim. */
void ab_router_tick(ab_broker_t *b, int64_t now);
/* End of a turn: disconnects the peers marked for it (safe point). */
void ab_router_reap(ab_broker_t *b);
/* P is being dropped. */
void ab_router_peer_gone(ab_broker_t *b, ab_peer_t *p);
/* A socket-monitor EVENT (ZMQ_EVENT_ACCEPTED / DISCONNECTED) about FD. */
void ab_router_conn_event(ab_broker_t *b, int event, int fd);
/* 1 when a message from RID on FD came on a refused connection: it was
 * answered ERROR(BUSY) (once) and must be ignored. */
int ab_router_refused(ab_broker_t *b, const ab_rid_t *rid, int fd, const ab_header_t *h);
void ab_router_fini(ab_broker_t *b);
/* Open connections now. */
uint32_t ab_router_connections(const ab_broker_t *b);

/* service.c */
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
/* The request at the front of S's queue, or NULL. */
ab_req_t *ab_queue_head(ab_service_t *s);

/* health.c (see health.h) */
int ab_health_init(ab_broker_t *b);
void ab_health_fini(ab_broker_t *b);
/* Reads the ROUTER's socket events; drops peers whose connection closed. */
void ab_health_monitor_drain(ab_broker_t *b);
const char *ab_health_name(ab_health_kind_t k);
uint64_t ab_rid_hash(const ab_rid_t *rid);
void ab_health_new_worker(ab_broker_t *b, ab_worker_rec_t *w);
/* Credit W may be offered: 0 unless healthy (or 1 while probing). */
uint32_t ab_health_free_credit(const ab_worker_rec_t *w);
void ab_health_take_back(ab_broker_t *b, ab_worker_rec_t *w, const char *why);
/* W is going away; GRACEFUL (BYE) ones are not remembered for a probe. */
void ab_health_forget(ab_broker_t *b, ab_worker_rec_t *w, int graceful);
void ab_health_kick(ab_broker_t *b);
void ab_health_on_heartbeat(ab_broker_t *b, ab_worker_rec_t *w, const void *pl, size_t len,
                            int64_t now);
void ab_health_on_dispatch(ab_broker_t *b, ab_worker_rec_t *w, ab_req_t *r);
/* A final answer from W to a request it held: OK 1 for REPLY, 0 for ERROR
 * or a deadline that passed while it held the request. */
void ab_health_on_result(ab_broker_t *b, ab_worker_rec_t *w, int ok);
void ab_health_on_draining(ab_broker_t *b, ab_worker_rec_t *w);
/* Remembers R's holders other than WINNER, so their answers count as
 * duplicates; ab_health_is_dup asks. */
void ab_health_note_answered(ab_broker_t *b, const ab_req_t *r, uint64_t winner);
int ab_health_is_dup(ab_broker_t *b, uint64_t bid, uint64_t rid_hash);
void ab_health_tick(ab_broker_t *b, int64_t now);
/* Probes again the peers whose connection the monitor saw close (a 10 ms
 * timer while there are any). */
void ab_health_recheck(ab_broker_t *b, int64_t now);

/* directory.c (see directory.h) */
/* Answers DISCOVER H from RID: the directory (target "*" or empty: all
 * services; else that one); FLAG_WATCH also subscribes RID to changes. */
void ab_directory_on_discover(ab_broker_t *b, const ab_rid_t *rid, const ab_header_t *h);
/* Pushes CHANGE ("join", "leave", "health") about W to every subscriber. */
void ab_directory_event(ab_broker_t *b, ab_worker_rec_t *w, const char *change);
void ab_directory_forget(ab_broker_t *b, const ab_rid_t *rid);
void ab_directory_fini(ab_broker_t *b);
/* Fills X for W (strings point into W, X and the broker: valid until the
 * broker's state changes). 0 or -1 (out of memory). */
int ab_winfo_fill(ab_broker_t *b, ab_worker_rec_t *w, ab_winfo_t *x, int64_t now);
void ab_winfo_free(ab_winfo_t *x);

/* batching.c: the send side gathers messages for one peer during a loop
 * turn and sends them as one BATCH at the end of it (ab_batching_flush_all),
 * or sooner at the count, bytes or age limit. The first message to a peer
 * in a turn goes at once, unbatched: an idle bus pays no delay. */
/* Sends the encoded header HDR (+ PAYLOAD, moved, may be NULL) to peer P,
 * directly or gathered. 0 or -1 (counted). */
int ab_batching_send(ab_broker_t *b, ab_peer_t *p, const uint8_t *hdr, size_t hlen,
                     zmq_msg_t *payload);
/* Sends everything gathered; ends the turn for every peer. */
void ab_batching_flush_all(ab_broker_t *b);
/* Flushes everything when the oldest gathered message is past the age limit. */
void ab_batching_check_age(ab_broker_t *b);
/* Forgets P's batching state (P is being dropped; nothing is sent). */
void ab_batching_peer_free(ab_broker_t *b, ab_peer_t *p);
/* A received BATCH from RID: checked whole, then each entry routed as if it
 * had arrived alone (ab_route_frames). A malformed one is counted, answered
 * MALFORMED and dropped whole. */
void ab_batching_recv(ab_broker_t *b, const ab_rid_t *rid, int fd, int64_t now,
                      const ab_frame_t *body);
/* Counts compression figures of a routed message (never decompresses). */
void ab_batching_note(ab_broker_t *b, const ab_header_t *h, size_t payload_size);
/* lz4-compresses a payload the broker itself created (*BUF, malloc'd, *LEN
 * bytes), for a peer with FEATURES, when the configured threshold and
 * minimum saving allow: *BUF is replaced and H flagged. */
void ab_batching_compress(ab_broker_t *b, uint32_t features, ab_header_t *h, uint8_t **buf,
                          size_t *len);
/* Feature bits the broker announces in its HELLO/REGISTER answers. */
uint32_t ab_batching_features(const ab_broker_t *b);

/* broker.c: routes one message given as frames (header, optional payload;
 * the payload is copied), as the receive path does for a message. */
void ab_route_frames(ab_broker_t *b, const ab_rid_t *rid, int fd, int64_t now,
                     const ab_frame_t *f, size_t nframes);

/* stats.c */
/* Registers the rate sampling. */
int ab_stats_init(ab_broker_t *b);
void ab_stats_tick(ab_broker_t *b, int64_t now);
/* Builds the answer to CONTROL target WHAT; *out malloc'd. 0, or -1 for an
 * unknown WHAT. */
int ab_stats_answer(ab_broker_t *b, const char *what, uint8_t **out, size_t *len);
/* Fills SI (and LAT, which SI then points to) for service S. */
void ab_stats_service_info(ab_broker_t *b, ab_service_t *s, Agentbus__ServiceInfo *si,
                           Agentbus__LatencySummary *lat);

#endif
