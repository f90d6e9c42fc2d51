/*
 * counters.h - the broker's counters: what brokerctl stats and /metrics
 * show. Each subsystem increments its own; stats.c reads them all.
 */
#ifndef AB_COUNTERS_H
#define AB_COUNTERS_H

#include "codec.h"

#include <stdint.h>

#define AB_HEALTH_KINDS_MAX 8 /* >= the states of health.h's ab_health_kind_t */

typedef struct {
    uint64_t msgs_in, msgs_out, bytes_in, bytes_out;
    uint64_t requests, replies, replies_dropped, malformed, send_failures;
    uint64_t errors_sent[AB_WIRE_ERROR_COUNT]; /* ERROR replies by ab_wire_error_index */
    uint64_t rejected[AB_STATUS_COUNT];        /* codec rejections by ab_status_index */
    uint64_t redispatched, retries_exhausted, duplicates_dropped, late_replies;
    uint64_t answers_too_large; /* answers over their client's max payload (router.c) */
    uint64_t deadline_expired, workers_suspected, workers_ejected, disconnects;
    uint64_t send_eagain, send_unreachable, client_limit_busy, probes;
    /* Snapshot one rate interval ago, for per-second figures. */
    uint64_t prev_msgs_in, prev_msgs_out, prev_bytes_in, prev_bytes_out;
    int64_t prev_ms;
    double rate_msgs_in, rate_msgs_out, rate_bytes_in, rate_bytes_out;
    /* batching.c */
    uint64_t batches_in, batched_msgs_in, batches_out, batched_msgs_out, batch_malformed;
    uint64_t lz4_msgs, lz4_wire_bytes, lz4_original_bytes, lz4_skipped;
    /* issue 11: state a peer makes the broker keep */
    uint64_t cancelled, cancelled_on_leave; /* by CANCEL; because the client left */
    uint64_t registers_refused;             /* REGISTER over a register-max-* limit */
    uint64_t services_expired, services_refused; /* idle ones removed; max-services */
    /* router.c: outbound bytes and connections (issue 11) */
    uint64_t out_busy, out_dropped, slow_disconnects, slow_disconnect_bytes, conn_refused;
    uint64_t handshakes_failed; /* ZMTP handshakes that failed before ZAP (health.c) */
    uint64_t out_lost_bytes;
    uint64_t lz4_refused; /* issue 11: lz4 request vs. a worker that cannot read it */
    uint64_t link_lz4_plain; /* issue 15: a link's lz4 request made plain for such a worker */
    /* health.c: worker health transitions, by the state entered (ab_health_kind_t) */
    uint64_t health_entered[AB_HEALTH_KINDS_MAX];
    /* issue 16: lanes and client quotas (clients.c, service.c) */
    uint64_t client_queue_busy; /* BUSY: a client's max-client-queued was reached */
    uint64_t held_bytes_busy;   /* BUSY: max-client-held-bytes or max-held-bytes (request.c) */
    uint64_t deadline_early;    /* DEADLINE before dispatch: too little time left */
    uint64_t deadline_busy;     /* issue 20: expired at a worker that kept answering (health.c) */
    uint64_t cancels_unanswered; /* cancel-grace-ms passed, the worker answered nothing */
} ab_counters_t;

/* Counts an ERROR sent or forwarded with wire CODE (any value; one the
 * vocabulary lacks counts as INTERNAL, as ab_status_from_wire reads it). */
#define AB_COUNT_ERROR(b, code)                                                                  \
    do {                                                                                         \
        int i_ = ab_wire_error_index(code);                                                      \
        (b)->c.errors_sent[i_ >= 0 ? i_ : ab_wire_error_index(AB_ERR_INTERNAL)]++;               \
    } while (0)

/* Counts a received message rejected with STATUS (the codec's AB_E*). */
#define AB_COUNT_REJECTED(b, status)                                                             \
    do {                                                                                         \
        int i_ = ab_status_index(status);                                                        \
        (b)->c.rejected[i_ >= 0 ? i_ : ab_status_index(AB_EINTERNAL)]++;                         \
    } while (0)

#endif
