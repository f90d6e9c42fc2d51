/*
 * router.h - the one send path: every message the broker sends goes
 * through ab_send (or, for held direct messages and publications,
 * ab_send_try), which counts bytes and failures, batches for peers that
 * read BATCH (batching.h) and keeps each peer's bytes in flight bounded.
 */
#ifndef AB_ROUTER_H
#define AB_ROUTER_H

#include "broker.h"

/* Sends HEADER (+ PAYLOAD moved, may be NULL) to RID. 0 or -1 (counted). */
int ab_send(ab_broker_t *b, const ab_rid_t *rid, const ab_header_t *h, zmq_msg_t *payload);
/* As ab_send to peer P (a live record: its rid is where it goes), for
 * callers that hold it: no look-up by routing id. */
int ab_send_peer(ab_broker_t *b, ab_peer_t *p, const ab_header_t *h, zmq_msg_t *payload);
/* M (not initialised) becomes a message holding a copy of DATA (SIZE
 * bytes). 0, or -1 out of memory: M is then an empty message. */
int ab_msg_of_bytes(zmq_msg_t *m, const void *data, size_t size);
/* As ab_send_peer with the payload as bytes (DATA, SIZE; HAS 0: none) the
 * caller keeps: a peer that is gathering a BATCH gets them copied straight
 * into it, with no message of their own; otherwise they are copied into
 * one and sent as ab_send_peer would. 0, -1 (not sent: counted), or
 * AB_ENOMEM when no message could be made of them (nothing sent). */
int ab_send_peer_bytes(ab_broker_t *b, ab_peer_t *p, const ab_header_t *h, const void *data,
                       size_t size, int has);
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
/* Receives one whole multipart message from SOCK if one waits (never
 * blocks for the first frame; ZeroMQ delivers the rest at once): its
 * first CAP frames into F (initialised here; the caller closes the first
 * *KEPT = min(frames, CAP)), later frames counted and discarded. The
 * number of frames, or 0 when none waits. *BYTES (may be NULL): their
 * total size. */
size_t ab_recv_frames(void *sock, zmq_msg_t *f, size_t cap, size_t *kept, size_t *bytes);
/* Encodes H into a new message (fan-out sends copies of it). 0 or -1. */
int ab_header_msg(const ab_header_t *h, zmq_msg_t *out);
/* The text of ERROR(TOO_LARGE) for an answer H (REPLY, PARTIAL) with a
 * payload of SIZE bytes over client P's max payload, into OUT (CAP bytes).
 * ab_send and its kin send that ERROR in place of such an answer (counted
 * answers_too_large): no answer ever passes a client's max payload. */
void ab_answer_too_large_text(const ab_broker_t *b, const ab_peer_t *p, const ab_header_t *h,
                              size_t size, char *out, size_t cap);
/* Sends ERROR(code, text) answering CORR to RID. */
int ab_send_error(ab_broker_t *b, const ab_rid_t *rid, uint64_t corr, uint32_t code,
                  const char *text);
/* As ab_send_error, with Header.flags FLAGS (AB_FLAG_OVER_MAX_PAYLOAD). */
int ab_send_error_flags(ab_broker_t *b, const ab_rid_t *rid, uint64_t corr, uint32_t code,
                        uint32_t flags, const char *text);

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
/* 1 when P already holds more than twice peer-out-max-bytes: nothing more
 * may be sent to it (counted out_dropped) and it is disconnected at the end
 * of the turn (a broker link's accepted connection too: link.c). */
int ab_peer_beyond(ab_broker_t *b, ab_peer_t *p);
/* The kernel's figures the bound is kept by, for a link's dialed
 * connection too (link_out.c): the bytes the TCP connection on FD had
 * acknowledged (0, or -1: not TCP); FD's inode (0: not open); the ZMTP
 * bytes a frame of SIZE bytes takes on the wire. */
int ab_router_tcp_acked(int fd, uint64_t *acked);
uint64_t ab_router_fd_inode(int fd);
uint64_t ab_router_wire(size_t size);
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
/* 1 when FD is a connection the monitor reported ACCEPTED and not yet
 * DISCONNECTED, admitted (not refused), and no libzmq-generated routing id
 * can have been given twice yet (fewer than 2^32 connections accepted):
 * a peer's FD may then be kept (broker.c, s_fd_kept). */
int ab_router_fd_open(const ab_broker_t *b, int fd);
/* 1 when a message from RID on FD came on a refused connection: it was
 * answered ERROR(BUSY) (once) and must be ignored. */
int ab_router_refused(ab_broker_t *b, const ab_rid_t *rid, int fd, const ab_header_t *h);
void ab_router_fini(ab_broker_t *b);
/* Open connections now. */
uint32_t ab_router_connections(const ab_broker_t *b);

#endif
