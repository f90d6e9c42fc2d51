/*
 * bare_hop.h - the baseline: a minimal ZeroMQ forwarding hop with raw
 * zmq_msg_t (no czmq, no protocol), an echo worker behind it, and the
 * client loop that drives it.
 *
 *   client DEALER -> ROUTER [forwarder] ROUTER <- DEALER echo worker
 *
 * The forwarder moves [client-id][payload] to the worker as
 * [worker-id][client-id][payload] and the echo back the other way: the least
 * any broker in this position must do. Its sockets carry the options the
 * broker and the client library set (HWM, linger, ROUTER_MANDATORY, ZMTP
 * heartbeats, MAXMSGSIZE) so the two pay the same per-socket costs.
 *
 * The other forwarder kinds and client modes exist so that `agentbus-bench
 * --report baseline` can show the hop above is the fastest of those tried
 * (issue 17: a ratio is only as honest as its baseline).
 */
#ifndef BN_BARE_HOP_H
#define BN_BARE_HOP_H

#include "tl_hist.h"

#include <stddef.h>
#include <sys/types.h>

typedef enum {
    BH_FWD_BURST,  /* ROUTER->ROUTER, each socket drained in turn, in bursts, after each poll */
    BH_FWD_BURST64, /* the same with bursts of 64 instead of 1000 */
    BH_FWD_ALTERN, /* ROUTER->ROUTER, drained one message from each side in turn */
    BH_FWD_ONE,    /* ROUTER->ROUTER, one message per ready socket per poll */
    BH_FWD_DEALER, /* ROUTER->DEALER backend, drained in bursts */
    BH_FWD_PROXY,  /* zmq_proxy(ROUTER, DEALER): libzmq's own loop */
    BH_FWD_N
} bh_fwd_t;

/* The kind the bench measures agentbus against: the fastest of those
 * tried (--report baseline, docs/bench.md). */
#define BH_FWD_BASELINE BH_FWD_BURST64

/* Client modes (flags for bh_rr). */
enum {
    BH_POLL_FIRST = 1, /* zmq_poll before every drain (the bench's client before issue 17) */
    BH_COPY_SEND = 2   /* zmq_send copies the payload (else zmq_msg_init_data, no copy) */
};

/* Forks the forwarder of KIND, bound to 127.0.0.1 FRONT and BACK ports. */
pid_t bh_start_forwarder_kind(int front_port, int back_port, bh_fwd_t kind);
/* The baseline forwarder (BH_FWD_BASELINE). */
pid_t bh_start_forwarder(int front_port, int back_port);
/* Forks the echo worker, connected to BACK. */
pid_t bh_start_echo(int back_port);

/* A client DEALER in CTX with the client library's socket options,
 * connected to FRONT, once one round trip went through (NULL if none within
 * about 10 s). Close it with zmq_close. */
void *bh_client(void *ctx, int front_port);
/* Keeps WINDOW requests of BUF/SIZE in flight for SECONDS; FLAGS as above.
 * Returns replies per second, or -1 if replies went missing. BUF must stay
 * valid and unchanged until the call returns (sends may not copy it). */
double bh_rr(void *s, const char *buf, size_t size, double seconds, int window, int flags);
/* COUNT lone round trips, each recorded in H (if not NULL). 0, or -1 on a
 * reply lost (5 s). */
int bh_lat(void *s, const char *buf, size_t size, int count, tl_hist_t *h);

#endif
