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

#endif
