/*
 * bare_hop.h - the baseline: a minimal ZeroMQ forwarding hop with raw
 * zmq_msg_t (no czmq, no protocol), and an echo worker behind it.
 *
 *   client DEALER -> ROUTER [forwarder] ROUTER <- DEALER echo worker
 *
 * The forwarder moves [client-id][payload] to the worker as
 * [worker-id][client-id][payload] and the echo back the other way: the least
 * any broker in this position must do.
 */
#ifndef BN_BARE_HOP_H
#define BN_BARE_HOP_H

#include <sys/types.h>

/* Forks the forwarder, bound to 127.0.0.1 FRONT and BACK ports. */
pid_t bh_start_forwarder(int front_port, int back_port);
/* Forks the echo worker, connected to BACK. */
pid_t bh_start_echo(int back_port);

#endif
