/*
 * nats_rr.h - the NATS request/reply baseline of agentbus-bench (issue 17):
 * nats-server and nats.c from Debian, a responder process that echoes each
 * request to its reply subject, and a client that keeps a window of
 * requests in flight on one inbox subscription (the way to get NATS's best
 * throughput; natsConnection_Request is one at a time).
 *
 * Two modes, each its own responder and client connection:
 *   buffered  nats.c's defaults: publishes are buffered and written by the
 *             library's flusher thread (best throughput);
 *   asap      natsOptions_SetSendAsap on both sides: every publish written
 *             at once (best lone latency).
 * Built only when libnats is found (AB_HAVE_NATS); otherwise bn_nats_start
 * fails and the NATS columns read "not measured".
 */
#ifndef BN_NATS_RR_H
#define BN_NATS_RR_H

#include "tl_hist.h"

#include <stddef.h>
#include <sys/types.h>

typedef struct bn_nats bn_nats_t;

/* Starts nats-server on 127.0.0.1:PORT and one responder per mode; their
 * pids go to PIDS[0..2] (the caller stops them). 0, or -1 if NATS is not
 * available here (message on stderr). */
int bn_nats_start(int port, pid_t pids[3]);
/* A client of mode ASAP (0 buffered, 1 send-asap) once a request went
 * through (up to ~10 s); NULL on failure. */
bn_nats_t *bn_nats_client(int port, int asap);
void bn_nats_destroy(bn_nats_t **self_p);
/* Releases nats.c's own threads and memory once every client is destroyed
 * (or none was made), so a sanitizer build reports no leak at exit. */
void bn_nats_shutdown(void);
/* As bh_rr and bh_lat (bare_hop.h). */
double bn_nats_rr(bn_nats_t *n, const char *buf, size_t size, double seconds, int window);
int bn_nats_lat(bn_nats_t *n, const char *buf, size_t size, int count, tl_hist_t *h);

#endif
