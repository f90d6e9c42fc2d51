/*
 * link_int.h - what the link module's own files share (link.c: records,
 * connections, HELLO and heartbeats; link_dir.c: directory exchange and
 * remote workers; link_fwd.c: forwarding, answers, CONTROL "peers";
 * link_msg.c: names, SEND, PUBLISH; link_topic.c: topic interest routes).
 */
#ifndef AB_LINK_INT_H
#define AB_LINK_INT_H

#include "link.h"
#include "request.h" /* struct ab_fwd */
#include "agentbus.pb-c.h"

#define AB_LINKS_MAX 16            /* links per broker (dialed + accepted) */
#define AB_LINK_SERVICES_MAX 1024  /* remote services taken from one peer */
#define AB_LINK_NAME_MAX 64        /* broker names */
#define AB_VIA_MAX 1100            /* crossed list: 16 names of 63 + commas */
#define AB_LINK_SILENT_IVL 5       /* heartbeat intervals of silence: connection lost */
#define AB_LINK_KEY_TXT 41
#define AB_LINK_MODELS_MAX 64      /* model names per directory entry, each list */
#define AB_LINK_HOPS_MAX 16        /* names on a route or crossed list */
#define AB_LINK_TOPICS_MAX 4096    /* topic patterns listed to / taken from one peer */
#define AB_LINK_TOPIC_DESTS_MAX 64 /* brokers with subscribers one link tells of; of one
                                      publication */
#define AB_LINK_DESTS_MAX (AB_LINK_TOPIC_DESTS_MAX * AB_LINK_NAME_MAX + 1) /* Header.dests */

enum { S_LM_HELLO = 1, S_LM_WELCOME = 2, S_LM_HEARTBEAT = 3, S_LM_DIRECTORY = 4,
       S_LM_NAMES = 5, S_LM_INTEREST = 6 };

/* A remote service offered over a link: its remote worker here (whose
 * peer record points back at it: ab_peer_t.remote). */
typedef struct ab_remote {
    ab_peer_t *peer; /* link_role AB_LINK_WORKER */
    uint32_t capacity, hops, workers;
    int lz4; /* every worker behind it reads lz4 */
    uint64_t models_hash; /* of its models and loaded lists: a change re-registers it */
    char via[AB_VIA_MAX]; /* brokers beyond the peer on its route (path vector) */
} ab_remote_t;

/* What a link's dialed connection holds for the peer, in bytes (link_out.c):
 * ZMTP bytes handed to libzmq since its handshake, less those the peer's
 * TCP stack acknowledged. The accepted connection is a ROUTER peer, kept by
 * the router's figures (router.h, ab_peer_beyond). */
struct ab_link_out {
    int fd;        /* the connection's socket (the monitor's CONNECTED event) */
    uint64_t ino;  /* its inode; 0: no connection counted */
    uint64_t base; /* its TCP bytes acknowledged at the handshake */
    uint64_t sent, taken;
    int64_t over_ms;    /* over peer-out-max-bytes since; 0: not */
    int64_t checked_ms; /* the kernel last asked */
};

typedef struct ab_link {
    struct ab_links *all;
    int idx;
    char name[AB_LINK_NAME_MAX]; /* the peer broker's name; "" until its HELLO */
    char endpoint[256];          /* dialed; "" when only accepted */
    char key[AB_LINK_KEY_TXT];   /* the peer's public key (dialed, auth on) */
    void *dealer;                /* the dialed connection; NULL when only accepted */
    void *mon;                   /* its socket monitor (PAIR), with the dealer */
    int out_conn;                /* its connection is made, handshake done (HELLO may go) */
    ab_peer_t *outq;             /* its send queue (AB_LINK_DEALER), NULL until used */
    int broken;                  /* a gathered send on it failed: dialed again next turn */
    struct ab_link_out dout;     /* the bytes it holds for the peer (link_out.c) */
    uint64_t slow_bytes;         /* broken because the peer did not take these bytes */
    int out_up;                  /* the peer answered our HELLO on it */
    int64_t out_last_ms, out_since_ms;
    int out_warned;              /* "not linked" said since the last dial (s_check) */
    struct ab_link_lookup *lookup; /* its host name looked up (link_dial.c); NULL for an IP */
    int64_t retry_at_ms;         /* a refused handshake: dial again then (s_watch) */
    int retry_ms;                /* its backoff: 500 ms doubling to 10 s */
    ab_peer_t *in;               /* the connection the peer dialed (ROUTER peer) */
    int in_broken;               /* a send on it failed: dropped, the link down, next turn */
    int64_t in_last_ms;
    int up;
    int64_t up_since_ms;
    ab_peer_t *client;           /* requests the peer forwards here come from it */
    zhashx_t *remote;            /* service name -> ab_remote_t (owned) */
    uint64_t peer_session; /* the peer's HELLO session: another one is a restart */
    uint32_t rtt_us;
    uint64_t forwarded, received, answered, failed, ups, refused;
    struct ab_link_msg *msg;     /* names, counters (link_msg.c); NULL until used */
    struct ab_link_topic *topic; /* the peer's topic routes (link_topic.c); NULL until used */
    uint64_t compressed; /* payloads lz4-compressed onto it */
    uint64_t dir_refused; /* directories refused whole (link-dir-max-bytes) */
    /* The origin key of the last request it forwarded here and its record
     * (link_fwd.c): one agent's requests in a row cost one key lookup. */
    char okey_pub[AB_LINK_KEY_TXT];
    const struct ab_key *okey;
    uint64_t okey_gen; /* ab_auth_keys_gen then; 0: nothing kept */
} ab_link_t;

struct ab_links {
    ab_link_t *l[AB_LINKS_MAX];
    int n;
    char self[AB_LINK_NAME_MAX];
    uint8_t nonce[8]; /* routing ids of remote workers: never on the ROUTER */
    uint64_t session; /* this broker's start, in HELLO (random) */
    uint32_t seq;
    int dirty;        /* the directory changed: send it at the next tick */
    uint64_t models_print; /* local workers' models when the directory was last sent */
    int timer;
    struct ab_link_msgs *msg; /* forwarded SENDs awaiting answers (link_msg.c) */
    uint64_t topic_gen; /* changes with any link's topic routes (link_topic.c) */
    uint64_t topic_unroutable; /* publication destinations given up (stats) */
};

/* struct ab_fwd (request.h): where a request that came over a link has
 * been. */
_Static_assert(AB_FWD_KEY_TXT == AB_LINK_KEY_TXT, "a key's text fits the record");
/* Room F->via needs for forwarded header H's crossed list (with its NUL). */
size_t ab_link_fwd_via_room(const ab_header_t *h);
/* F from a forwarded header H (what ab_link_req_new keeps); F->via points
 * at ab_link_fwd_via_room(H) bytes or more. */
void ab_link_fwd_fill(struct ab_fwd *f, const ab_header_t *h);

/* link.c */
/* Sends an encoded header (+ PAYLOAD moved) over L's connection in use.
 * 0 or -1 (errno EHOSTUNREACH: no connection). */
int ab_link_send(ab_broker_t *b, ab_link_t *l, const uint8_t *buf, size_t len,
                 zmq_msg_t *payload);
/* Sends what batching.c flushes for L's dialed connection (ab_link_emit
 * for an AB_LINK_DEALER record): HDR (BUF,LEN or HMSG) and PAYLOAD, not
 * moved. 0 or -1 (L marked broken). */
int ab_link_dealer_emit(ab_broker_t *b, ab_link_t *l, const uint8_t *buf, size_t len,
                        zmq_msg_t *payload);
/* Sends LinkMsg M as a LINK message over L. 0 or -1. */
int ab_link_send_msg(ab_broker_t *b, ab_link_t *l, const Agentbus__LinkMsg *m);
/* link_dial.c: the dialed connection. Closes L's DEALER and its monitor
 * (what it held is dropped). */
void ab_link_close_dealer(ab_link_t *l);
/* Opens L's DEALER and dials its endpoint. 0 or -1. */
int ab_link_dial(ab_broker_t *b, ab_link_t *l);
/* KEY after '#' in a --peer: a Z85 public key or the path of a public
 * certificate. 0 with OUT (AB_LINK_KEY_TXT bytes), or -1. */
int ab_link_peer_key(const char *key, char *out);
/* Says once per dial that L's dialed peer is still not linked, and what
 * may be why: its host name that does not resolve, when it does not. */
void ab_link_dial_warn(const ab_broker_t *b, ab_link_t *l, int64_t now);
/* Frees L's host name lookup (ab_link_dial starts one). May wait up to 2 s
 * for a lookup that cannot be cancelled; one still running then is left to
 * finish on its own (its memory is not freed). */
void ab_link_lookup_free(ab_link_t *l);

/* A new remote worker's routing id for L. */
void ab_link_rid(ab_link_t *l, ab_rid_t *rid);
/* 1 when NAME is in the comma-separated LIST. */
int ab_link_in_list(const char *list, size_t len, const char *name);

/* link_out.c: the bound on what the dialed connection holds */
/* L's dialed connection FD is made (the monitor's CONNECTED): its figures start at 0.
 * FD -1: the connection is gone (nothing counted until the next). */
void ab_link_out_start(ab_link_t *l, int fd);
/* HLEN + PLEN bytes (the header frame, and a payload frame when HAS) are to
 * go on L's dialed connection. 0; or -1 when it already holds more than
 * twice peer-out-max-bytes that the peer has not taken: nothing more goes,
 * L is marked broken (the link goes down, its requests are taken back, and
 * it is dialed again) and the refusal counted (out_dropped). */
int ab_link_out_admit(ab_broker_t *b, ab_link_t *l, size_t hlen, size_t plen, int has);
/* 1 when L's dialed connection holds more than peer-out-max-bytes its peer
 * has not taken (once over: more than half of it); starts its stall clock.
 * The kernel is asked when the running figure says so, at most every 10 ms. */
int ab_link_out_over(ab_broker_t *b, ab_link_t *l);
/* The same for the connection L's traffic goes on now (either). */
int ab_link_over(ab_broker_t *b, ab_link_t *l);
/* Each tick: a dialed connection over peer-out-max-bytes for peer-stall-ms
 * (back under half of it ends the clock) is marked broken the same way. */
void ab_link_out_tick(ab_broker_t *b, ab_link_t *l, int64_t now);

/* link_dir.c */
/* Sends the whole directory to L. */
void ab_link_dir_send(ab_broker_t *b, ab_link_t *l);
/* L's peer sent its directory M. */
void ab_link_dir_apply(ab_broker_t *b, ab_link_t *l, const Agentbus__LinkMsg *m, int64_t now);
/* Feeds the health records of L's remote workers (a heartbeat came). */
void ab_link_dir_alive(ab_broker_t *b, ab_link_t *l, int64_t now);
/* A fingerprint of the local workers' models (loaded or not): the tick
 * sends the directory again when it changes (workers re-register with a
 * new inference state; no join or leave tells the links). */
uint64_t ab_link_dir_models_print(ab_broker_t *b);
/* Drops every remote worker of L (WHY logged); returns the requests they
 * held (taken back: re-dispatched or answered). */
uint32_t ab_link_dir_withdraw(ab_broker_t *b, ab_link_t *l, const char *why);

/* link_fwd.c */
void ab_link_fwd_request(ab_broker_t *b, ab_link_t *l, const ab_header_t *h, zmq_msg_t *body,
                         const struct ab_key *key, int64_t now);
void ab_link_fwd_answer(ab_broker_t *b, ab_link_t *l, const ab_header_t *h, zmq_msg_t *body);

/* link_msg.c: agent names and topics across links */
int ab_link_msg_init(ab_broker_t *b);
void ab_link_msg_fini(ab_broker_t *b);
/* L is freed. */
void ab_link_msg_free(ab_link_t *l);
/* L came up / went down: names and interest sent again / withdrawn, SENDs
 * forwarded over it answered NO_AGENT. */
void ab_link_msg_up(ab_broker_t *b, ab_link_t *l);
void ab_link_msg_down(ab_broker_t *b, ab_link_t *l);
/* Each link tick: names and interest to the peers when they changed. */
void ab_link_msg_tick(ab_broker_t *b, int64_t now);
/* A NAMES or INTEREST LinkMsg from L's peer. */
void ab_link_msg_on_link(ab_broker_t *b, ab_link_t *l, const Agentbus__LinkMsg *m, int64_t now);
/* A SEND or PUBLISH from L's peer (KEY: the link connection's key). */
void ab_link_msg_on_frame(ab_broker_t *b, ab_link_t *l, const ab_header_t *h, zmq_msg_t *body,
                          const struct ab_key *key, int64_t now);
/* An answer from L's peer: 1 when it answered a forwarded SEND (taken),
 * 0 when it is a request's (link_fwd.c). */
int ab_link_msg_on_answer(ab_broker_t *b, ab_link_t *l, const ab_header_t *h, zmq_msg_t *body);
/* The messaging figures of L for `brokerctl peers`. */
void ab_link_msg_peer_info(const ab_link_t *l, Agentbus__PeerInfo *p);

/* link_topic.c: topic interest as a path vector; docs/links.md "Topics" */
void ab_link_topic_free(ab_link_t *l);
/* L came up (the whole interest at the next tick) / went down (its routes
 * withdrawn; the others hear of it at the next tick). */
void ab_link_topic_up(ab_link_t *l);
void ab_link_topic_down(ab_broker_t *b, ab_link_t *l);
/* Each link tick: interest to each up link when it changed (REFRESH: anyway). */
void ab_link_topic_tick(ab_broker_t *b, int refresh);
/* An INTEREST LinkMsg from L's peer (hostile input: checked). */
void ab_link_topic_on_interest(ab_broker_t *b, ab_link_t *l, const Agentbus__LinkMsg *m,
                               int64_t now);
/* One copy of a publication for next hop L, for the brokers in DESTS. */
typedef void ab_link_topic_fn(ab_broker_t *b, ab_link_t *l, const char *dests, void *arg);
/* The brokers a publication on TOPIC goes to from here: those with a
 * matching pattern (ONLY NULL; else those in the comma-separated ONLY),
 * not this one, reachable within HOPS_LEFT links by a route through none of
 * CROSSED; each assigned to its shortest route's next hop. Calls FN once
 * per next hop; returns how many. */
size_t ab_link_topic_route(ab_broker_t *b, const char *topic, const char *crossed,
                           uint32_t hops_left, const char *only, ab_link_topic_fn *fn, void *arg);
void ab_link_topic_peer_info(const ab_link_t *l, Agentbus__PeerInfo *p);

#endif
