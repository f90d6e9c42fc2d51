/*
 * healthtest.h - what the health cases share (test_health.c,
 * test_health_watch.c: one program, test_health): per-request slots that
 * count each request's answers, and the cases test_health_watch.c defines
 * for test_health.c's table.
 */
#ifndef HEALTHTEST_H
#define HEALTHTEST_H

#include "agentbus.h"

/* Per-request bookkeeping: each request has its own slot, so a second
 * answer to one request is seen. ht_slot_cb (the callback of async
 * requests, ARG a ht_slot_t) counts the slot's finals and every final
 * into ht_done (test_health.c). */
typedef struct {
    int finals;
    int status;
} ht_slot_t;

extern int ht_done; /* finals seen by ht_slot_cb, all slots */
void ht_slot_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg);

/* test_health_watch.c: discovery and change events, watchers that outlive
 * a broker restart or a drop for silence, broker and worker drains. */
void health_discover(void);
void health_watch_restart(void);
void health_watch_silence(void);
void health_broker_drain(void);
void health_broker_drain_one(void);
void health_worker_drain(void);

#endif
