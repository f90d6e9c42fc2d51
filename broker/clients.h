/*
 * clients.h - who a request is from, for fair queuing and quotas
 * (clients.c; docs/lanes.md).
 *
 * A client is identified by ab_client_identity alone: its agent name when
 * it claimed one, else "~" + its connection's key (one connection); with
 * --auth curve, a connection proving an agent-role key is "~key:" + the
 * key's name, whatever its agent name. Requests from one identity share one record:
 * its weight in the lanes' round robin, its counts and its quotas.
 *
 * Life: a record exists while a connection is bound to it or a request
 * holds it (refs); the last release frees it. A flow (lanes.h) only exists
 * while a queued request of the client is in it, and every queued request
 * holds the record, so no flow outlives its record. Memory: one record
 * (~100 bytes + the identity) per connected client or held request's
 * client: bounded by connections and max-pending.
 * Everything runs on the broker thread.
 */
#ifndef AB_CLIENTS_H
#define AB_CLIENTS_H

#include "broker.h"

typedef struct ab_client_rec {
    uint64_t id;        /* never reused: the key of its flows */
    uint32_t refs;      /* connections bound + requests held */
    uint32_t weight;    /* DRR quantum in requests (client-weights; default 1) */
    uint32_t held;      /* requests held for it (queued, at a worker, waiting on a twin) */
    uint32_t queued;    /* of those, waiting in a lane */
    uint32_t conns;     /* connections bound to it now */
    uint64_t held_bytes; /* bytes (payloads, records) of the requests held for it
                            (max-client-held-bytes) */
    uint64_t requests;  /* admitted */
    uint64_t refused;   /* answered BUSY by its quotas */
    char ident[];       /* "name" or "~key" */
} ab_client_rec_t;

/* Writes P's identity to OUT (CAP bytes; at least AB_NAME_MAX + 2). */
const char *ab_client_identity(const ab_peer_t *p, char *out, size_t cap);
/* P's record (made or re-bound when P's identity changed, e.g. a name
 * claimed after connecting). NULL out of memory. */
ab_client_rec_t *ab_client_of(ab_broker_t *b, ab_peer_t *p);
/* The record of identity IDENT, made when absent (no reference taken):
 * requests from a routing id the broker does not know share "~unknown".
 * NULL out of memory. */
ab_client_rec_t *ab_client_named(ab_broker_t *b, const char *ident);
/* Request bookkeeping: a held request takes a reference, its end drops it
 * (the record goes with its last reference). */
void ab_client_hold(ab_client_rec_t *c);
void ab_client_release(ab_broker_t *b, ab_client_rec_t *c);
/* P is gone: its binding is dropped (after its requests were cancelled). */
void ab_clients_peer_gone(ab_broker_t *b, ab_peer_t *p);
/* 0 when C may have one more request held (QUEUING = 0: on arrival,
 * max-client-inflight) or queued (QUEUING = 1: it is held already and would
 * wait in a lane, max-client-queued); else the quota it hit, its text in
 * WHY (with a retry hint, in ms, from LANE of S's recent waits), and C's
 * refusal counted. */
int ab_client_admit(ab_broker_t *b, ab_client_rec_t *c, const ab_service_t *s, int lane,
                    int queuing, char *why, size_t cap);
/* Parses client-weights ("name=W,~key=W"); 0, or -1 with a message. */
int ab_clients_init(ab_broker_t *b);
void ab_clients_fini(ab_broker_t *b);
/* CONTROL "clients": agentbus.ClientList. 0 or -1 (out of memory). */
int ab_clients_answer(ab_broker_t *b, uint8_t **out, size_t *len);

#endif
