/*
 * batchtest.h - what the batching cases share (test_batching.c,
 * test_batching_lz4.c, test_batching_wire.c: one program, test_batching):
 * async request tallies, raw ZeroMQ peers that speak the wire by hand, a
 * client that does not batch, and the cases the theme files define for
 * test_batching.c's table.
 */
#ifndef BATCHTEST_H
#define BATCHTEST_H

#include "agentbus.h"
#include "codec.h"

#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

typedef struct {
    int finals, partials, ok;
    char data[16384];
    size_t len;
} bt_tally_t;
/* One received message: header bytes (parsed into h) and payload. */
typedef struct {
    zmq_msg_t hdr, body;
    int has_body;
    ab_header_t h;
} bt_msg_t;

/* Counts the events of async requests into the bt_tally_t at ARG; polls C
 * until WANT finals (or TIMEOUT_MS). */
void bt_tally_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg);
void bt_poll_until(ab_client_t *c, bt_tally_t *t, int want, int timeout_ms);

/* Raw peers: DEALER sockets on one context (bt_ctx, also used directly by
 * the cases that play the broker). */
extern void *bt_ctx;
void *bt_raw(int port);
void bt_raw_close_all(void **socks, int n);
/* Sends H and, when HAS_PAYLOAD, a payload frame. */
void bt_raw_send(void *s, const ab_header_t *h, const void *data, size_t size, int has_payload);
/* One message within TIMEOUT_MS: 1, or 0 on timeout; bt_raw_recv_msg skips
 * HEARTBEATs. Close M with bt_msg_close. */
int bt_raw_recv(void *s, bt_msg_t *m, int timeout_ms);
int bt_raw_recv_msg(void *s, bt_msg_t *m, int timeout_ms);
void bt_msg_close(bt_msg_t *m);
/* Playing the broker to the library: a ROUTER bound on a free loopback
 * port (*PORT), and its answer to a HELLO or REGISTER (KIND, id ID) from
 * the peer RID: credit 1000, FEATURES, TARGET when not NULL. */
void *bt_fake_router(int *port);
void bt_fake_answer(void *router, zmq_msg_t *rid, uint32_t kind, uint64_t id, uint32_t features,
                    const char *target);
/* 1 when the test's broker runs --compress-local: it then announces LZ4
 * to peers on this machine too (bt_raw_hello checks what it announces). */
extern int bt_lz4_local;
/* HELLO with FEATURES (0: none, as an old peer); REGISTER for SERVICE. */
void bt_raw_hello(void *s, uint32_t features);
void bt_raw_register(void *s, const char *service, uint32_t capacity, uint32_t features);
/* N bytes of compressible text (malloc'd). */
char *bt_text(size_t n);
/* A client that does not batch, connected to PORT. */
ab_client_t *bt_client_nobatch(int port);

/* test_batching_lz4.c: compression and malformed batches. */
void batch_lz4(void);
void batch_lz4_local(void);
void batch_lz4_corrupt(void);
void batch_malformed(void);
/* test_batching_wire.c: the library's decoder against a hand-driven broker,
 * a worker's answer to CANCEL. */
void batch_client_decode(void);
void batch_cancel_flushed(void);

#endif
