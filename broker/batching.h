/*
 * batching.h - BATCH on the send side, and reading a received BATCH.
 *
 * The send side gathers messages for one peer during a loop turn and sends
 * them as one BATCH at the end of it (ab_batching_flush_all), or sooner at
 * the count, bytes or age limit. The first message to a peer in a turn
 * goes at once, unbatched: an idle bus pays no delay.
 */
#ifndef AB_BATCHING_H
#define AB_BATCHING_H

#include "broker.h"

/* Sends the encoded header HDR (+ PAYLOAD, moved, may be NULL) to peer P,
 * directly or gathered. 0 or -1 (counted). */
int ab_batching_send(ab_broker_t *b, ab_peer_t *p, const uint8_t *hdr, size_t hlen,
                     zmq_msg_t *payload);
/* Adds the encoded header HDR and payload bytes (DATA, SIZE; HAS 0: none)
 * to what P gathers when P already has messages gathered in this turn and
 * the entry fits: copied into the batch, no message of its own. 0, -1
 * (counted: a flush at the count limit failed), or 1: not taken (nothing
 * gathered yet, too large, out of memory): send it as a message
 * (ab_batching_send). */
int ab_batching_add_bytes(ab_broker_t *b, ab_peer_t *p, const uint8_t *hdr, size_t hlen,
                          const void *data, size_t size, int has);
/* Sends everything gathered; ends the turn for every peer. */
void ab_batching_flush_all(ab_broker_t *b);
/* Flushes everything when the oldest gathered message is past the age limit. */
void ab_batching_check_age(ab_broker_t *b);
/* Forgets P's batching state (P is being dropped; nothing is sent). */
void ab_batching_peer_free(ab_broker_t *b, ab_peer_t *p);
/* A received BATCH from RID: checked whole, then each entry routed as if it
 * had arrived alone (ab_route_entry: each header parsed once, by the
 * check). A malformed one is counted, answered MALFORMED and dropped whole. */
void ab_batching_recv(ab_broker_t *b, const ab_rid_t *rid, int fd, int64_t now,
                      const ab_frame_t *body);
/* Counts compression figures of a routed message (never decompresses). */
void ab_batching_note(ab_broker_t *b, const ab_header_t *h, size_t payload_size);
/* lz4-compresses a payload the broker itself created (*BUF, malloc'd, *LEN
 * bytes), for peer P (may be NULL: never), when P's hop wants lz4
 * (ab_batching_lz4_hop) and the configured threshold and minimum saving
 * allow: *BUF is replaced and H flagged. */
void ab_batching_compress(ab_broker_t *b, const ab_peer_t *p, ab_header_t *h, uint8_t **buf,
                          size_t *len);
/* Feature bits the broker announces to P in its HELLO/REGISTER answers:
 * LZ4 only when P's hop wants it, so a peer on this machine does not
 * compress what it sends (docs/protocol.md, "Which hops compress"). */
uint32_t ab_batching_features(const ab_broker_t *b, const ab_peer_t *p);
/* Whether payloads on P's hop are worth lz4: P reads it and its connection
 * leaves this machine (or compress-local is set). On ipc and loopback lz4
 * costs more CPU than the copy it saves. */
int ab_batching_lz4_hop(const ab_broker_t *b, const ab_peer_t *p);
/* 1 when socket FD's other end is on this machine: a Unix socket, a
 * loopback address, or the same address at both ends; 1 for -1 (libzmq
 * gives no fd for inproc). 0 when it cannot tell: treated as remote. */
int ab_batching_fd_local(int fd);


#endif
