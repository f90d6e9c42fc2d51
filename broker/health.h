/*
 * health.h - worker health: failure detection, adaptive heartbeat intervals,
 * the circuit breaker, and taking a lost worker's requests back.
 *
 * Layers, fastest first:
 *   - the ROUTER's socket monitor reports a closed connection (kill -9, a
 *     crashed host's RST, a ZMTP heartbeat timeout) within milliseconds;
 *   - a phi-accrual suspicion level per worker, from the inter-arrival
 *     times of its application heartbeats, catches a worker whose
 *     connection is alive but who is silent (SIGSTOP, a hung event loop);
 *   - a failure budget per worker (ERROR replies, deadlines passed while it
 *     held the request) ejects it for a backoff that doubles with each
 *     ejection (capped); after it, one probe request decides.
 * Each worker's heartbeat interval adapts between a floor and a ceiling:
 * the floor while new, after a failure or while flapping, doubling after a
 * few on-time heartbeats. The broker tells the worker (HEARTBEAT, credit =
 * interval) whenever it changes.
 */
#ifndef AB_HEALTH_H
#define AB_HEALTH_H

#include <stdint.h>

#define AB_ATTEMPTS_MAX 8   /* upper bound of --max-attempts */
#define AB_HB_WINDOW 16     /* heartbeat inter-arrival samples kept */
#define AB_GRAVE_SLOTS 64   /* workers lost recently, remembered by rid */
#define AB_DUP_SLOTS 1024   /* answered re-dispatched requests, for duplicates */

typedef enum {
    AB_HEALTH_HEALTHY = 0, /* dispatchable */
    AB_HEALTH_SUSPECT,     /* heartbeat late: not offered new work */
    AB_HEALTH_DEAD,        /* suspicion crossed the threshold: work taken back */
    AB_HEALTH_EJECTED,     /* failure budget spent: out until the backoff ends */
    AB_HEALTH_PROBING,     /* half-open: one request at a time decides */
    AB_HEALTH_DRAINING     /* said it is leaving: finishes what it holds */
} ab_health_kind_t;

typedef struct {
    ab_health_kind_t state;
    int64_t last_hb_ms;          /* last HEARTBEAT */
    uint32_t samples[AB_HB_WINDOW]; /* inter-arrival times, ms */
    uint32_t nsamples, pos;
    uint32_t interval_ms;        /* interval asked of the worker */
    uint32_t expect_ms;          /* interval the suspicion uses (old one until acked) */
    uint32_t stable_beats;       /* on-time heartbeats at this interval */
    uint32_t failures;           /* consecutive failed requests */
    uint32_t ejections, eject_streak;
    int64_t ejected_until_ms;
    uint32_t backoff_ms;         /* of the last ejection */
    int64_t healthy_since_ms;
    int64_t last_failure_ms;
    double phi;
    uint64_t redispatched;
    char backend_state[64];
} ab_health_t;

typedef struct {
    uint64_t rid_hash;
    uint32_t ejections;
} ab_grave_t;

typedef struct {
    uint64_t bid, rid_hash;
} ab_dup_t;

/* The broker-wide part: workers lost recently (a worker that comes back
 * rejoins through a probe) and the lost holders of answered requests (so a
 * late answer is recognised as a duplicate). Both are fixed-size rings. */
typedef struct {
    ab_grave_t grave[AB_GRAVE_SLOTS];
    unsigned grave_pos;
    ab_dup_t dup[AB_DUP_SLOTS];
    unsigned dup_pos;
    int kick; /* some queue may now be dispatchable: see ab_health_kick */
    int recheck_timer;  /* 10 ms re-probe of peers whose fd closed (0: none) */
} ab_health_state_t;

#endif
