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

#include "broker.h"

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
    uint64_t oks;                /* successful answers so far (ab_health_on_deadline) */
    uint64_t answers;            /* frames answering requests it held (cancel-grace-ms) */
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

/* The broker-wide part, owned by health.c (b->health): the socket monitor,
 * workers lost recently (a worker that comes back rejoins through a probe)
 * and the lost holders of answered requests (so a late answer is
 * recognised as a duplicate). Both are fixed-size rings. */
typedef struct ab_health_state {
    void *monitor; /* PAIR receiving the ROUTER's socket events */
    ab_grave_t grave[AB_GRAVE_SLOTS];
    unsigned grave_pos;
    ab_dup_t dup[AB_DUP_SLOTS];
    unsigned dup_pos;
    int kick; /* some queue may now be dispatchable: see ab_health_kick */
    int recheck_timer;  /* 10 ms re-probe of peers whose fd closed (0: none) */
} ab_health_state_t;

/* Allocates b->health, monitors the ROUTER and registers the sweeps. 0 or -1. */
int ab_health_init(ab_broker_t *b);
/* The socket the loop polls for socket events (ab_health_monitor_drain). */
void *ab_health_pipe(ab_broker_t *b);void ab_health_fini(ab_broker_t *b);
/* Reads the ROUTER's socket events; drops peers whose connection closed. */
void ab_health_monitor_drain(ab_broker_t *b);
const char *ab_health_name(ab_health_kind_t k);
void ab_health_new_worker(ab_broker_t *b, ab_worker_rec_t *w);
/* Credit W may be offered: 0 unless healthy (or 1 while probing). */
uint32_t ab_health_free_credit(const ab_worker_rec_t *w);
void ab_health_take_back(ab_broker_t *b, ab_worker_rec_t *w, const char *why);
/* W is going away; GRACEFUL (BYE) ones are not remembered for a probe. */
void ab_health_forget(ab_broker_t *b, ab_worker_rec_t *w, int graceful);
/* Dispatches every service with a queue if some worker may have become
 * dispatchable this turn (ab_health_kick_later); once per loop turn. */
void ab_health_kick(ab_broker_t *b);
/* A worker's credit came back or it became dispatchable: kick this turn. */
void ab_health_kick_later(ab_broker_t *b);
void ab_health_on_heartbeat(ab_broker_t *b, ab_worker_rec_t *w, const void *pl, size_t len,
                            int64_t now);
/* W's backend state is STATE now (its heartbeat, or its inference state's
 * backend_up). When its first word ("ok", "down", "failing", ...) changes,
 * logs it and pushes a "backend" directory change to watchers. */
void ab_health_backend_state(ab_broker_t *b, ab_worker_rec_t *w, const char *state);
void ab_health_on_dispatch(ab_broker_t *b, ab_worker_rec_t *w, ab_req_t *r);
/* A final answer from W to a request it held: OK 1 for REPLY, 0 for ERROR. */
void ab_health_on_result(ab_broker_t *b, ab_worker_rec_t *w, int ok);
/* A request's deadline passed while W held it (the broker's clock, or W
 * answered DEADLINE itself; OKS_AT_DISPATCH: the request's
 * oks_at_dispatch): a failure of W only when W answered nothing
 * successfully since the request was sent to it and held it for at least
 * health-floor-ms (HELD_US: a request sent with little time left, as at
 * overload after a long wait in the broker's queue, expires before any
 * answer could come, whatever the worker does). A worker that keeps
 * answering is busy (R waited in its backend's queue: the client's
 * deadline, not the worker, decided), and ejecting it would take back
 * what it is running, fail its streams WORKER_LOST and idle its GPU
 * (issue 20); a hung worker answers nothing and is still ejected.
 * BEGUN (the answer's NON_IDEMPOTENT: its backend had produced output for
 * it) is no failure either: the request was long, not the worker broken,
 * and one client asking a slow model for long answers with a short
 * deadline ejected the only worker after five. */
void ab_health_on_deadline(ab_broker_t *b, ab_worker_rec_t *w, uint64_t oks_at_dispatch,
                           uint64_t held_us, int begun);
void ab_health_on_draining(ab_broker_t *b, ab_worker_rec_t *w);
/* Remembers R's holders other than WINNER, so their answers count as
 * duplicates; ab_health_is_dup asks. */
void ab_health_note_answered(ab_broker_t *b, const ab_req_t *r, uint64_t winner);
int ab_health_is_dup(ab_broker_t *b, uint64_t bid, uint64_t rid_hash);
/* The worker whose routing id hashes to RID_HASH answered R, and R goes on
 * without it (placement hands it to another): it leaves R's tried list, so
 * that another answer from it is a counted duplicate (ab_health_is_dup),
 * not a late answer from a worker presumed dead, which would end R while
 * another worker runs it. */
void ab_health_attempt_ended(ab_broker_t *b, ab_req_t *r, uint64_t rid_hash);
void ab_health_tick(ab_broker_t *b, int64_t now);

/* --- agents' heartbeat interval (issue 20) ---------------------------------
 * Every connected agent's heartbeat costs the broker a wake-up and a lookup,
 * so with agent-heartbeat-rate R the broker asks N agents for an interval of
 * at least N / R seconds (never under heartbeat-ms, at most
 * AB_AGENT_HB_MAX_MS): their heartbeats together stay under R a second.
 * Workers keep theirs: the suspicion above times them. */
#define AB_AGENT_HB_MAX_MS 60000
/* Recomputes b->agent_hb_ms for AGENTS connected (the liveness sweep
 * counts them). It grows at once (with a quarter of headroom, so a growing
 * crowd is not told again at every step) and shrinks only when the count
 * would allow less than half of it. */
void ab_health_agents_counted(ab_broker_t *b, uint32_t agents);
/* The interval to tell agent P now (HELLO's answer), noted as told. */
uint32_t ab_health_agent_tell(ab_broker_t *b, ab_peer_t *p);
/* Agent P heartbeat: when the interval changed since it was told, tells it
 * the new one (HEARTBEAT, credit = interval; the library adopts it). An
 * agent is thus told once, on its own next heartbeat: no walk over the
 * crowd, and at most one answer per heartbeat. */
void ab_health_agent_beat(ab_broker_t *b, ab_peer_t *p);
/* Probes again the peers whose connection the monitor saw close (a 10 ms
 * timer while there are any). */
void ab_health_recheck(ab_broker_t *b, int64_t now);

#endif
