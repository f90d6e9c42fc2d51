/*
 * rawpeer.h - raw libzmq DEALERs speaking the broker's protocol by hand, for
 * the tests that play hostile or old peers (test_hardening, test_connreuse):
 * a chosen routing id, messages the library would never send, answers the
 * library would hide. Every wait is bounded; a HEARTBEAT may come first.
 */
#ifndef AB_RAWPEER_H
#define AB_RAWPEER_H

#include "agentbus.h"
#include "codec.h"

#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

/* The context of every raw peer, made at the first call (make it before
 * other threads make sockets), ended by rp_end. */
void *rp_ctx(void);
/* A DEALER to the broker on PORT in rp_ctx() (high-water marks of 100000,
 * no linger); RID (LEN bytes) as its routing id when not NULL, as a peer
 * that chooses one. */
void *rp_raw(int port, const void *rid, size_t len);
/* Closes the N sockets of SOCKS (NULL ones skipped) and ends the context. */
void rp_end(void **socks, int n);

/* One message received: its header frame (parsed into H; kind 0 when it
 * does not parse) and its payload frame when it has one. */
typedef struct {
    zmq_msg_t hdr, body;
    int has_body;
    ab_header_t h;
} rp_msg_t;

void rp_close(rp_msg_t *m);
/* Receives one message waiting on S now: 1, or 0 if none. */
int rp_take(void *s, rp_msg_t *m);
/* Waits up to timeout_ms for a message of KIND on S (others are skipped),
 * sending a HEARTBEAT every 150 ms on each of the N sockets BEAT so their
 * peers stay alive. 1 with *M filled (rp_close it), or 0. */
int rp_wait(void *s, uint32_t kind, rp_msg_t *m, int timeout_ms, void **beat, int n);
/* Counts messages of KIND (0: any) arriving on S within MS, beating on BEAT. */
int rp_count(void *s, uint32_t kind, int ms, void **beat, int n);
/* 1 when M's payload is TEXT exactly. */
int rp_body_is(const rp_msg_t *m, const char *text);

/* A HEARTBEAT on S. */
void rp_beat(void *s);
/* REGISTER for SERVICE with CAPACITY; FEATURES as announced (0: no
 * Register payload, as an old worker). Waits up to 5 s for the answer. */
void rp_register(void *s, const char *service, uint32_t capacity, uint32_t features);
/* HELLO as agent NAME with INSTANCE (and TAKEOVER), id ID. */
void rp_hello(void *s, const char *name, uint64_t instance, int takeover, uint64_t id);
/* REQUEST ID to SERVICE with FLAGS and SIZE bytes of DATA (an LZ4 flag
 * claims 4x SIZE as the original size), 20 s deadline. */
void rp_request(void *s, uint64_t id, const char *service, uint32_t flags, const void *data,
                size_t size);
/* A worker's answer of KIND (REPLY, PARTIAL, ERROR...) to CORR holding TEXT. */
void rp_answer(void *s, uint32_t kind, uint64_t corr, const char *text);
/* HEX's bytes into OUT (at most CAP); their count. */
size_t rp_unhex(const char *hex, uint8_t *out, size_t cap);

#endif
