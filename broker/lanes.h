/*
 * lanes.h - a service's queue: priority lanes, and fair queuing across
 * clients within each lane (lanes.c; docs/lanes.md).
 *
 * A queued request sits in its lane (interactive, normal, batch: picked by
 * the header's priority) and there in its client's flow: one FIFO per
 * (service, lane, client), made when the client's first request queues
 * there and freed when its last one leaves. A lane's flows form a ring
 * served by deficit round robin (each flow's turn is its client's weight in
 * requests); flows and ring membership are the same thing, so a freed flow
 * is never left on a ring and nothing of a gone client stays queued.
 *
 * Which lane goes next: the highest with work, except that a lower lane
 * with work that has seen N dispatches go elsewhere is owed the next one
 * (its minimum share, 1 of every N: lane-normal-min-pct, lane-batch-min-pct).
 *
 * A queued request that names a model is also on its model's list (the
 * model index: one list per (service, model), by lane, oldest first), so a
 * dispatch pass that has passed AB_LANES_SCAN requests it could not place
 * (their model's workers full) still finds each other model's oldest
 * request in one step per model, however deep the busy model's backlog.
 *
 * Memory: one flow (~80 bytes) per (service, lane, client) with a request
 * queued, so at most one per queued request; one model queue (~90 bytes
 * and the name) per (service, model) with a request queued; the indexes
 * shrink back; wait histograms are 1.2 KB per lane used.
 * Everything runs on the broker thread.
 */
#ifndef AB_LANES_H
#define AB_LANES_H

#include "idmap.h"
#include "list.h"
#include "peer.h"

#include <czmq.h>

#include <stdint.h>

enum { AB_LANE_INTERACTIVE = 0, AB_LANE_NORMAL = 1, AB_LANE_BATCH = 2, AB_LANES = 3 };

typedef struct ab_lanes_wait ab_lanes_wait_t; /* wait-time histogram (lanes.c) */
typedef struct ab_mqueue ab_mqueue_t;         /* one model's queued requests (lanes.c) */
struct ab_client_rec;                         /* clients.h */

/* A service's model index (see above). */
typedef struct {
    zhashx_t *index; /* model name -> ab_mqueue_t; NULL until a request names one */
    ab_list_t ring;  /* the model queues, in the order the model pass visits them */
} ab_models_t;

typedef struct {
    ab_list_t ring;       /* flows with requests (ab_flow_t.ring), in DRR order */
    ab_idmap_t flows;     /* client record id -> its flow here */
    uint32_t depth;       /* requests queued in the lane */
    uint32_t skipped;     /* dispatches that went to other lanes while this one waited */
    uint64_t dispatched;  /* requests dispatched from the lane */
    uint64_t expired;     /* requests that left it unanswered by a worker: deadline, cancel */
    ab_lanes_wait_t *wait; /* queue wait (enqueue -> dispatch); NULL until the first */
} ab_lane_t;

/* The lane of header priority P: 0 and 2 normal, 1 batch, 3 and above
 * interactive (AB_PRIORITY_* in agentbus.h). */
int ab_lane_of(uint32_t priority);
const char *ab_lane_name(int lane);

/* R (pending, R->crec set, R->lane set) waits in S: at the tail of its
 * client's flow, or with FRONT at its head and the flow first in the ring
 * (a request taken back from a worker goes first); and, when R names a
 * model, likewise in that model's queue. 0, or -1 out of memory (a new
 * flow or model queue): R is then not queued. */
int ab_lanes_put(ab_service_t *s, ab_req_t *r, int front);
/* R leaves its flow without being dispatched (cancel, deadline, answered);
 * its flow is freed when it was the last. */
void ab_lanes_remove(ab_service_t *s, ab_req_t *r);
/* R leaves its flow to be dispatched now: its flow's deficit is charged
 * (the flow goes to the ring's tail when its turn is used up), the other
 * lanes with work count one more skip, and its wait is recorded. */
void ab_lanes_take(ab_service_t *s, ab_req_t *r, uint64_t now_us);
/* Records a wait of 0 in LANE: a request dispatched without queuing. */
void ab_lanes_direct(ab_service_t *s, int lane);
/* The next request S should dispatch that is not passed over in pass MARK
 * (ab_lanes_skip): lanes in the order above, flows in ring order, requests
 * in flow order. Once that walk has passed AB_LANES_SCAN requests, the
 * model pass: the oldest request (by lane) of each model not found full
 * in this pass, models in ring order, at most AB_LANES_SCAN models and
 * AB_LANES_SCAN requests of each looked at. NULL when none. */
ab_req_t *ab_lanes_next(const ab_broker_t *b, ab_service_t *s, uint32_t mark);
#define AB_LANES_SCAN 64
/* R cannot be placed in pass MARK (its model's workers are full): it is
 * passed over, and when nothing but its model decides its placement (no
 * pinned worker, none to avoid, not from a broker link) so is every
 * request of its model, without looking at them. */
void ab_lanes_skip(ab_req_t *r, uint32_t mark);
/* Up to MAX of S's models with requests queued: their names (valid until
 * S's queue changes) and counts. Returns how many. */
size_t ab_lanes_models(const ab_service_t *s, const char **names, uint32_t *queued, size_t max);
/* Any queued request of S, or NULL (draining a service's queue). */
ab_req_t *ab_lanes_any(ab_service_t *s);
/* Wait percentile P (0..100] of LANE in microseconds; 0 when none recorded. */
uint64_t ab_lanes_wait_pct(const ab_lane_t *lane, double p);
uint64_t ab_lanes_wait_count(const ab_lane_t *lane);
/* Frees S's flows, model queues and histograms (the service goes; its
 * requests are gone). */
void ab_lanes_fini(ab_service_t *s);
/* Checks S's queues against the requests in them (audit.h): each flow is
 * in its lane's index and ring, each request in a flow or a model queue is
 * pending and names S, that flow, its lane and its model queue, and every
 * count matches its list. 0, or -1 with the first difference in WHY. */
int ab_lanes_audit(ab_broker_t *b, ab_service_t *s, char *why, size_t cap);

#endif
