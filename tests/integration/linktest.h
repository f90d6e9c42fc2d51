/*
 * linktest.h - what the broker-link tests share (test_links.c,
 * test_links_msg.c): a CURVE key set for peered brokers, one keys
 * directory per broker, and the broker command line.
 *
 * Keys: one peer keypair shared by the brokers of a test (each broker's
 * keys directory trusts it with role peer) and one admin key the workers,
 * clients and brokerctl use (AB_KEY / AB_BROKER_KEY are set to them).
 */
#ifndef AB_LINKTEST_H
#define AB_LINKTEST_H

#include "agentbus.h"
#include "agentbus.pb-c.h"

#include <stddef.h>
#include <sys/types.h>

/* Makes DIR/certs/{broker,admin}.key(_secret): the peer key granted the
 * broker names NAMES (comma-separated), then one more key per entry of
 * MORE ("NAME ARGS" for `brokerctl keygen`; NULL-terminated, may be NULL). */
void lt_keys(const char *names, const char *const *more);
/* The certificate directory and the shared peer certificate. */
const char *lt_certdir(void);
const char *lt_cert(void);
/* A keys directory for broker NAME trusting the peer and admin keys, then
 * EXTRA (a shell command run in it; may be NULL). Static slots (4). */
const char *lt_keysdir(const char *name, const char *extra);
/* "tcp://127.0.0.1:PORT#<peer cert>" (static slots, 4). */
const char *lt_peer(int port);
/* A broker NAME on PORT with KEYS, 100 ms link heartbeats, up to two
 * --peer (NULL: none) and one extra option pair (NULL: none). */
pid_t lt_broker(int port, const char *name, const char *keys, const char *peer1,
                const char *peer2, const char *extra1, const char *extra2);
/* C's `brokerctl peers` answer (free with agentbus__peer_list__free_unpacked), or NULL. */
Agentbus__PeerList *lt_peers(ab_client_t *c);
/* The figures of C's link to NAME (copied; its strings NULL), its state
 * into STATE; 0 when it has none. */
int lt_peer_info(ab_client_t *c, const char *name, Agentbus__PeerInfo *out, char *state,
                 size_t cap);
/* Waits until C's link to NAME is (UP 1) or is not (UP 0) up. 0 or -1. */
int lt_wait_link(ab_client_t *c, const char *name, int up, int timeout_ms);
/* A request to SVC with DATA; the reply into OUT (may be NULL). Its status. */
int lt_req(ab_client_t *c, const char *svc, const char *data, char *out, size_t cap);
/* Waits until a request to SVC on C gives RC (the directory reached it). */
int lt_wait_rc(ab_client_t *c, const char *svc, int rc, int timeout_ms);

#endif
