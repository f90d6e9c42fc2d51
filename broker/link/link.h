/*
 * link.h - broker-to-broker links (issue 15; docs/links.md): the hooks the
 * core calls.
 *
 * A link joins this broker to a peer broker over one TCP connection: the
 * one this broker dialed (--peer, a DEALER with the peer's CURVE key) or
 * the one the peer dialed (a peer on the ROUTER whose key has role peer and
 * that said LINK HELLO). When both dialed, both connections stay open and
 * the one dialed by the broker with the smaller name carries the traffic;
 * the other is a standby. Either may deliver anything: a link is one record
 * per peer broker name.
 *
 * The core sees a link through ordinary peers, so that its promises hold
 * unchanged across a link:
 *  - each service the peer offers is a worker here (a "remote worker": a
 *    peer record with no connection, link_role AB_LINK_WORKER); dispatch,
 *    re-dispatch when it is lost, deadlines and CANCEL are the core's;
 *  - requests the peer forwards here come from one client (link_role
 *    AB_LINK_CLIENT), whose answers go back over the link;
 *  - what the core sends to either goes through ab_link_emit (router.c).
 * When a link is lost its remote workers are dropped (their requests go
 * back to the queue: another worker, another link, or an error) and its
 * client is dropped (what the peer asked is cancelled here).
 *
 * Broker thread only.
 */
#ifndef AB_LINK_H
#define AB_LINK_H

#include "broker.h"

/* AB_LINK_DEALER: the send queue of a link's dialed connection, a peer
 * record never in the peer table, so that batching.c gathers for it like
 * for any peer; what it flushes comes back through ab_link_emit. */
enum {
    AB_LINK_NONE = 0,
    AB_LINK_TRANSPORT = 1,
    AB_LINK_WORKER = 2,
    AB_LINK_CLIENT = 3,
    AB_LINK_DEALER = 4
};

/* Dials the configured peers. 0, or -1 (logged) on a bad --peer. */
int ab_link_init(ab_broker_t *b);
void ab_link_fini(ab_broker_t *b);
/* The loop's poll set: fills up to MAX items with the link sockets;
 * returns how many. ab_link_on_poll reads what they hold. */
int ab_link_poll_items(ab_broker_t *b, zmq_pollitem_t *items, int max);
void ab_link_on_poll(ab_broker_t *b, int64_t now);
/* A message from peer P on the ROUTER while P is a link's connection (or
 * a LINK message from anyone): handled here. IN_KEY: its connection's key. */
void ab_link_on_router(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *rid, const ab_header_t *h,
                       const ab_frame_t *pl, zmq_msg_t *body, int64_t now);
/* The core sends to link peer P (a remote worker or a link's client): the
 * encoded header BUF,LEN (or HMSG, moved) and PAYLOAD (moved; may be NULL).
 * 0 sent or deliberately dropped (what a link does not carry), -1 the link
 * is down (errno EHOSTUNREACH). */
int ab_link_emit(ab_broker_t *b, ab_peer_t *p, const uint8_t *buf, size_t len, zmq_msg_t *hmsg,
                 zmq_msg_t *payload);
/* Request R goes to remote worker W with header H (PAYLOAD moved): the
 * forwarded header gets the crossed brokers, hops left and the origin's
 * key and role. 0 or -1. */
int ab_link_forward(ab_broker_t *b, ab_worker_rec_t *w, ab_req_t *r, ab_header_t *h,
                    zmq_msg_t *payload);
/* 1 when remote worker W may take R (W's broker is not in R's crossed
 * list and R may cross one more link). Local workers: 1. */
int ab_link_may_take(const ab_broker_t *b, const ab_worker_rec_t *w, const ab_req_t *r);
/* Links remote worker W's request would cross to reach a worker (1: the
 * peer's own); UINT32_MAX when W is not a remote worker. */
uint32_t ab_link_hops(const ab_worker_rec_t *w);
/* 0 when service S is served only through links that a request with
 * header H may not cross (hop limit, loop): the caller answers NO_SERVICE
 * at once rather than let it wait for its deadline. Else 1. */
int ab_link_routable(ab_broker_t *b, ab_service_t *s, const ab_header_t *h);
/* R arrived over a link with header H: R keeps its crossed list, hops left
 * and origin. 0, or -1 out of memory. */
int ab_link_req_new(ab_req_t *r, const ab_header_t *h);
void ab_link_req_free(ab_req_t *r);
/* R, lz4-compressed, is about to go to a worker that cannot read lz4: when
 * R came over a link its payload is decompressed here and R goes plain
 * (AB_OK); else, or when the block is corrupt, an AB_E code and R is
 * unchanged. */
int ab_link_req_plain(ab_broker_t *b, ab_req_t *r);
/* A send gathered for peer P (batching.c) failed: when P is a link's
 * accepted connection what it carried is lost, so the link goes down at
 * the next turn and the connection is dropped (its broker dials again),
 * as when a send on the dialed one fails: the requests it carried are
 * taken back, the directory repaired on the way back up. */
void ab_link_send_failed(ab_peer_t *p);
/* Peer P is being dropped: a link forgets it. */
void ab_link_peer_gone(ab_broker_t *b, ab_peer_t *p);
/* A worker joined or left: the directory is sent to the peers soon. */
void ab_link_dir_changed(ab_broker_t *b);
/* CONTROL "peers" (PeerList): 0 with *OUT (malloc, caller frees). */
int ab_link_control_peers(ab_broker_t *b, uint8_t **out, size_t *len);
/* For ServiceInfo: remote workers of S and the peers offering it
 * (comma-separated into BUF). */
uint32_t ab_link_service_remote(ab_broker_t *b, const ab_service_t *s, char *buf, size_t cap);
/* Messaging across links (link_msg.c; docs/links.md "Messages and
 * topics"). A SEND from P (local or a link's client) to NAME, not bound to
 * a live connection here (BOUND_HERE 0), that a peer has bound: forwarded
 * to it (or refused). 1 when taken (BODY may be moved), 0 when the local
 * mailbox code handles it. SENDER: the name it is from. */
int ab_link_msg_send(ab_broker_t *b, ab_peer_t *p, const ab_header_t *h, zmq_msg_t *body,
                     const char *name, const char *sender, int bound_here);
/* After the local fan-out of P's publication H (SENDER: its sender name):
 * forwarded to each up link whose peer has interest in its topic; never
 * for what came over a link (one hop). BODY is not consumed. */
void ab_link_msg_publish(ab_broker_t *b, ab_peer_t *p, const ab_header_t *h, ab_view_t sender,
                         zmq_msg_t *body);
/* The sender name of H when P is a link's client (the name the first broker
 * vouched for, copied into BUF), else NULL. */
const char *ab_link_msg_sender(const ab_peer_t *p, const ab_header_t *h, char *buf, size_t cap);
/* Links up now. */
uint32_t ab_link_up_count(const ab_broker_t *b);
/* Publication destinations this broker gave up (link_topic.c): a broker
 * with subscribers for it that no route within the hop limit reaches
 * without a loop (or whose route was withdrawn while it was on its way). */
uint64_t ab_link_topic_unroutable(const ab_broker_t *b);

#endif
