/*
 * broker.h - the broker core: its state and its loop.
 *
 * One thread owns the ROUTER socket. Each loop turn receives every waiting
 * message, decodes its header, hands it to the owner of its kind, runs the
 * timers that are due, and flushes what was gathered (docs/architecture.md).
 * The owners, each with its own header:
 *   peer.h     who is connected (routing ids, roles)
 *   request.h  a request from arrival to its one answer
 *   service.h  services, workers, queues, dispatch
 *   router.h   the one send path; batching.h gathers for it
 *   health/, placement/, cache/, messaging/, directory/: subsystems, each
 *              behind its own header; stats.h answers CONTROL from them all
 * Everything runs on the broker's one thread; nothing here is locked.
 */
#ifndef AB_BROKER_H
#define AB_BROKER_H

#include "batch.h"
#include "clock.h"
#include "config.h"
#include "counters.h"
#include "heap.h"
#include "idmap.h"
#include "list.h"
#include "log.h"
#include "peer.h"

#include <stdatomic.h>

struct ab_broker {
    ab_broker_config_t *cfg;
    ab_limits_t limits;
    void *zctx;
    void *router;
    zhashx_t *peers;    /* &peer->rid -> ab_peer_t (owned) */
    ab_peer_t *peer_hint[2]; /* the last peers ab_peer_lookup found (cleared when dropped) */
    struct ab_service *service_hint; /* the last service a request named (request.c,
                                        s_target; cleared when deleted) */
    zhashx_t *peer_keys; /* peer->key -> ab_peer_t (not owned): "~key" and pins */
    zhashx_t *services; /* service.h: name -> ab_service_t (owned) */
    ab_idmap_t pending; /* request.h: bid -> ab_req_t (owned) */
    ab_heap_t deadlines; /* request.h: every held request, earliest deadline first */
    uint64_t held_bytes; /* request.h: bytes of the requests held, payloads and records
                            (max-held-bytes) */
    uint64_t next_bid;
    uint64_t dispatch_seq;
    int64_t started_ms;
    int grace_over;         /* startup grace has ended and been enforced */
    int grace_timer;        /* the timer that ends it (service.c) */
    ab_counters_t c;
    ab_ratelimit_t rl;
    atomic_int stop;        /* set from the signal handler (main.c) */
    atomic_int term;        /* SIGTERM seen: drain, then stop */
    int draining;
    int64_t drain_end_ms;
    /* Subsystems' own state, each reached through its header. */
    struct ab_health_state *health; /* health.h: monitor, graveyard, duplicates */
    struct ab_watchers *watchers;   /* directory.h: DISCOVER subscribers; NULL until one */
    struct ab_msgs *msgs;   /* direct messages and pub/sub (msgs.h) */
    ab_list_t dirty;        /* batching.h: peers sent to in this turn (LIFO) */
    uint64_t oldest_gathered_us; /* 0: nothing gathered */
    struct ab_cache *cache; /* inference cache (cache.h); NULL when off */
    ab_list_t idle;         /* service.h: services with no worker and nothing held */
    struct ab_conns *conns; /* router.h: connections, slow peers; NULL until used */
    struct ab_metrics *metrics; /* metrics.h: --http endpoint; NULL when off */
    zhashx_t *clients;        /* clients.h: identity -> ab_client_rec_t (freed by refs) */
    zhashx_t *client_weights; /* clients.h: identity -> weight (client-weights); may be NULL */
    uint64_t next_client_id;
    uint32_t dispatch_mark;   /* service.c: one per dispatch pass (ab_req_t.skip_mark) */
    void *timers;           /* zmq_timers: periodic work, each registered by its owner */
    struct ab_tick *ticks;  /* what those timers call (broker.c) */
    struct ab_auth *auth;   /* auth.h: keys, ZAP; NULL with --auth none */
    const struct ab_key *in_key; /* key proved by the connection of the message being routed */
    atomic_int reload;      /* SIGHUP seen: reload the keys (main.c) */
    struct ab_links *links; /* link.h: broker links; NULL when none configured or seen */
    uint64_t clock_us;      /* ab_broker_clock_us; 0 outside the routing of a message */
    void *req_spare;        /* request.c: freed request records kept for reuse (a list) */
    uint32_t req_nspare;
    ab_batch_entries_t in_batch; /* batching.c: the BATCH being routed, decoded once */
    int in_batch_busy;           /* in_batch holds a batch whose entries are being routed */
    uint32_t agent_hb_ms;        /* heartbeat interval asked of agents now (health.c) */
    uint32_t agents_seen;        /* agents counted by the last liveness sweep */
    uint32_t audit_failed;       /* audit.h: bookkeeping found inconsistent (exit status 3) */
};

/* The time (ab_now_us) for work done on behalf of the message being
 * routed: read once per message received (and every few entries of a
 * BATCH) instead of at each step; a request's start, dispatch and answer
 * took up to seven clock reads each, 10% of the broker's cycles (perf).
 * Outside the routing of a message (timers, sockets' events) it is the
 * clock itself. */
static inline uint64_t ab_broker_clock_us(const ab_broker_t *b)
{
    return b->clock_us ? b->clock_us : ab_now_us();
}

/* Periodic work of a subsystem, called from the loop after the turn's
 * messages with the time then. */
typedef void ab_tick_fn(ab_broker_t *b, int64_t now);
#define AB_SWEEP_MS 100 /* period of the sweeps: liveness, idle services, rates */

/* Sets up B from CFG: sockets bound, every subsystem initialised. 0, -1
 * (logged), or -2 when a configured place cannot be used (the L3 cache in
 * --data-dir; said on stderr: exit 2 as for a bad value); ab_broker_fini
 * frees what was made either way. */
int ab_broker_init(ab_broker_t *b, ab_broker_config_t *cfg);
/* The loop, until b->stop (or a drain after b->term ends). 0 or -1. */
int ab_broker_run(ab_broker_t *b);
void ab_broker_fini(ab_broker_t *b);
/* Registers FN to run every MS milliseconds (timers with the same period
 * run in the order registered). Returns a timer id, or -1. A tick may
 * cancel its own timer (ab_broker_cancel) but not change another's period. */
int ab_broker_every(ab_broker_t *b, long ms, ab_tick_fn *fn);
void ab_broker_cancel(ab_broker_t *b, int id);
/* Routes one message given as frames (header, optional payload; the
 * payload is copied), as the receive path does: a BATCH's entries. */
void ab_route_frames(ab_broker_t *b, const ab_rid_t *rid, int fd, int64_t now,
                     const ab_frame_t *f, size_t nframes);
/* The same for an entry ab_batch_decode already checked (no second parse). */
void ab_route_entry(ab_broker_t *b, const ab_rid_t *rid, int fd, int64_t now,
                    const ab_batch_entry_t *e);

#endif
