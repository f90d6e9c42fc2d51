/*
 * peer.h - who is connected: routing ids, peers and their roles.
 *
 * A peer is created by its first message (broker.c) and dropped after
 * `liveness` heartbeat intervals of silence, on BYE, when its connection
 * closes (health.h) or when it does not read (router.h). Dropping tells
 * each subsystem (ab_peer_drop), which forgets what it kept for the peer.
 */
#ifndef AB_PEER_H
#define AB_PEER_H

#include "codec.h"
#include "defer.h"
#include "idmap.h"
#include "list.h"

#include <czmq.h>
#include <stdint.h>
#include <zmq.h>

#define AB_RID_MAX 255
#define AB_NAME_MAX 256
/* A peer's key: 16 hex digits and a NUL (peer.c). Not 2 * AB_RID_MAX + 1
 * as a hex routing id would need: 494 bytes a connection (issue 20). */
#define AB_PEER_KEY_MAX 17

typedef struct ab_broker ab_broker_t;
typedef struct ab_service ab_service_t;       /* service.h */
typedef struct ab_worker_rec ab_worker_rec_t; /* service.h */
typedef struct ab_req ab_req_t;               /* request.h */

/* A ZeroMQ routing id: who a message came from / goes to. */
typedef struct {
    uint8_t len;
    uint8_t bytes[AB_RID_MAX];
} ab_rid_t;

typedef enum {
    AB_ROLE_AGENT = 0,
    AB_ROLE_WORKER = 1,
    AB_ROLE_CONTROL = 2,
    AB_ROLE_COUNT
} ab_role_t;

/* A connected peer, known by its routing id. */
typedef struct {
    ab_rid_t rid;
    char key[AB_PEER_KEY_MAX]; /* random token naming it to peers, brokerctl and
                                  logs; never its routing id (peer.c) */
    ab_role_t role;
    char *name;           /* its HELLO/REGISTER name, never NULL ("" none; ab_peer_set_name):
                             allocated to its length, not AB_NAME_MAX a connection (issue 20) */
    int64_t connected_ms;
    int64_t last_seen_ms;
    int64_t heartbeat_ms; /* interval the peer said it keeps */
    uint64_t requests;    /* REQUESTs sent: an operator's tool sends none */
    ab_worker_rec_t *worker; /* when role == WORKER */
    int fd;               /* socket of its connection (ZMQ_SRCFD): monitor events */
    uint32_t fd_epoch;    /* when FD was last asked of libzmq (broker.c, s_fd_kept) */
    uint8_t fd_kept;      /* FD may stand for libzmq's answer until the epoch ends */
    uint8_t local;        /* its connection stays on this machine: no lz4 on its hop
                             (ab_batching_features) */
    uint8_t fd_stale;     /* the monitor saw FD close while the id stayed reachable:
                             the id may name another connection, FD unknown */
    uint32_t hb_told;     /* not a worker: the heartbeat interval it was told (ms; 0:
                             none yet). Liveness counts the longer of it and heartbeat_ms */
    struct ab_client_rec *client; /* who it is for fair queuing and quotas (clients.h) */
    uint64_t client_agent;        /* its agent record's serial when CLIENT was bound:
                                     unchanged means the identity is too (no string work
                                     per request) */
    int64_t fd_closed_ms; /* the monitor saw its fd close; being verified */
    struct ab_agent *agent;  /* its agent name, when it claimed one (msgs.h) */
    struct ab_subr *subr;    /* its subscriptions, when it has any (msgs.h) */
    uint32_t features;       /* AB_FEATURE_* from its HELLO or REGISTER */
    size_t max_payload;      /* the largest payload it reads (Hello.max_payload), bounded
                                by max-payload-bytes; 0: not said (ab_peer_max_payload) */
    int announced;           /* FEATURES came from a HELLO or REGISTER (not just 0) */
    struct ab_outq *out;     /* batching state (batching.c), NULL until used */
    ab_list_t reqs;          /* its requests as a client (ab_req_t.clink, placement.c):
                                for departure */
    ab_idmap_t reqs_by_id;   /* client id -> its newest request with that id: CANCEL */
    /* Outbound bytes (router.c): ZMTP bytes handed to libzmq for its current
     * connection (out_fd) and how many of them the peer has taken. */
    uint64_t out_sent, out_taken, out_base;
    uint64_t out_counted;    /* of out_sent, what had been sent to an earlier record of
                                this connection when it was dropped: what of it is not
                                taken was counted lost then (router.c, s_lost) */
    uint64_t out_ino;        /* inode of that socket: the fd is still it */
    int out_fd, out_kind, out_sndbuf;
    ab_list_t over_link;     /* on the router's list of peers over their bound */
    ab_defer_node_t kill;    /* queued to be disconnected at the end of the turn (router.c) */
    ab_defer_node_t later;   /* queued for an action after a walk over the peers */
    int64_t out_over_ms;     /* over peer-out-max-bytes since; 0: not over */
    int64_t out_checked_ms;  /* the kernel was last asked */
    const struct ab_key *authkey; /* key its connection proved (auth.h); NULL: auth off */
    struct ab_link *link;    /* link.h: the broker link it belongs to, or NULL */
    uint8_t link_role;       /* AB_LINK_* (link.h): connection, remote worker or client */
    struct ab_remote *remote; /* a remote worker's directory entry (link_int.h), owned by
                                 its link: placement reads it per request without a lookup */
    uint64_t rid_hash;       /* ab_rid_hash(&rid, authkey), made once: each dispatch
                                records it */
} ab_peer_t;

/* Sets P's name to PREFIX NAME (cut at AB_NAME_MAX - 1 bytes); P's name
 * may be NULL before (a record just calloc'd). ab_peer_set_name(P, "", "")
 * frees it. 0, or -1 out of memory (the name is then ""). */
int ab_peer_set_name(ab_peer_t *p, const char *prefix, const char *name);

/* Keeps SAID, the max payload P's HELLO or REGISTER says, bounded: 0 or
 * anything from max-payload-bytes up stands for max-payload-bytes. */
void ab_peer_said_max_payload(const ab_broker_t *b, ab_peer_t *p, uint64_t said);
/* The largest payload P reads: what its HELLO or REGISTER said (Hello.max_payload),
 * else the broker's max-payload-bytes (an older peer, a worker, a link). */
size_t ab_peer_max_payload(const ab_broker_t *b, const ab_peer_t *p);
/* The payload size H (+ a payload of SIZE bytes) stands for at its
 * receiver: SIZE, or the original size of an lz4 payload when larger. */
uint64_t ab_payload_size(const ab_header_t *h, size_t size);
/* 1 when a payload of SIZE bytes with header H is over P's max payload
 * (ab_peer_max_payload). */
int ab_peer_over_max(const ab_broker_t *b, const ab_peer_t *p, const ab_header_t *h,
                     size_t size);
/* The largest BATCH body P may be sent: batch-max-bytes, held to P's
 * max payload + AB_PEER_RX_SLACK (docs/protocol.md "Max payload"). */
#define AB_PEER_RX_SLACK 4096
size_t ab_peer_batch_max(const ab_broker_t *b, const ab_peer_t *p);

/* The peer with routing id RID, or NULL. */
ab_peer_t *ab_peer_lookup(ab_broker_t *b, const ab_rid_t *rid);
/* The live peer whose key (as brokerctl and "~key" senders show it) is KEY,
 * or NULL. */
ab_peer_t *ab_peer_by_key(ab_broker_t *b, const char *key);
/* A peer with no connection of its own (broker links, link.h) with routing
 * id RID and ROLE, created now; NULL out of memory. */
ab_peer_t *ab_peer_add(ab_broker_t *b, const ab_rid_t *rid, ab_role_t role, int64_t now);
/* Forgets PEER everywhere and frees it (WHY is logged). */
void ab_peer_drop(ab_broker_t *b, ab_peer_t *peer, const char *why);
/* The record of a peer not seen before, with routing id RID and ROLE, its
 * key the connection's (b->in_key); NULL out of memory. */
ab_peer_t *ab_peer_new(ab_broker_t *b, const ab_rid_t *rid, ab_role_t role, int64_t now);
/* The broker's peer tables (b->peers by routing id, b->peer_keys by key).
 * 0, or -1 out of memory. */
int ab_peers_new(ab_broker_t *b);
/* Drops the peers silent for `liveness` heartbeat intervals (a timer). */
void ab_peers_sweep(ab_broker_t *b, int64_t now);
/* RID in hex into KEY (2 * AB_RID_MAX + 1 bytes), for logs. */
void ab_rid_key(const ab_rid_t *rid, char *key);
/* A 64-bit hash of RID and the public key KEY (NULL: auth off) its
 * connection proved: names a worker in the health records, never 0. */
uint64_t ab_rid_hash(const ab_rid_t *rid, const struct ab_key *key);

#endif
