/*
 * cache.h - the broker's inference cache and single-flight (issue 6,
 * docs/cache.md).
 *
 * Hooks into the request path, kept narrow so the rest of the broker does
 * not change shape:
 *   REQUEST arrives   ab_cache_on_request: key, lookup (a hit is answered
 *                     here), then ab_cache_join: attach to an identical
 *                     request in flight (single-flight) or lead one;
 *   leader answers    ab_cache_on_answer: each PARTIAL/REPLY/ERROR of a
 *                     leader is copied to its waiters; a complete REPLY is
 *                     stored; a failed leader's waiters are re-dispatched;
 *   request freed     ab_cache_req_gone (from ab_req_free).
 *
 * A stored reply is a "blob": the reply's chunks (PARTIALs then the REPLY)
 * with each chunk's kind, flags and original size, payloads as they
 * travelled (lz4 stays lz4), so a hit replays the same shape of reply.
 * Everything runs on the broker's thread.
 */
#ifndef AB_CACHE_H
#define AB_CACHE_H

#include "broker.h"
#include "cache_blob.h"
#include "cache_key.h"

typedef struct ab_cache ab_cache_t;
typedef struct ab_cache_req ab_cache_req_t;

/* The broker's cache per its config (NULL when --cache-l1-bytes is 0 or out
 * of memory: the broker then runs without a cache). */
ab_cache_t *ab_cache_new(const ab_broker_config_t *cfg);
void ab_cache_destroy(ab_cache_t **c);
/* 1, said on stderr, when CFG names a data-dir but C (not NULL: the cache
 * is on) could not open its L3 tier there (ab_cache_new logged why); else
 * 0. The broker then exits 2, as for a bad value. */
int ab_cache_l3_missing(const ab_cache_t *c, const ab_broker_config_t *cfg);

/* A REQUEST for service S arrived from CLIENT (which announced
 * CLIENT_FEATURES, AB_FEATURE_*, in its HELLO; 0 if none), header H,
 * payload BODY (BODY_LEN bytes) or NULL. Returns 1 when it was answered
 * from the cache (the caller is done); else 0 with *CR the request's cache
 * state (NULL: not cacheable), to be given to the ab_req_t (r->cache) the
 * caller builds. */
int ab_cache_on_request(ab_broker_t *b, ab_service_t *s, const ab_rid_t *client,
                        uint32_t client_features, const ab_header_t *h,
                        const void *body, size_t body_len, int64_t now, ab_cache_req_t **cr);
/* R (with r->cache, already pending and in the deadline heap) attaches to
 * an identical request in flight: returns 1 and R waits (state
 * AB_REQ_WAITING, the caller does not enqueue it). Else R leads (or goes
 * alone) and 0 is returned: the caller enqueues it as usual. */
int ab_cache_join(ab_broker_t *b, ab_req_t *r);
/* A worker's PARTIAL/REPLY/ERROR for R (which has r->cache) before it is
 * forwarded to R's client: fans it out to R's waiters, stores a complete
 * reply, re-dispatches waiters of a failed leader. BODY is not consumed. */
void ab_cache_on_answer(ab_broker_t *b, ab_req_t *r, const ab_header_t *h,
                        const zmq_msg_t *body);
/* R is being freed (answered, failed, cancelled): leaves its flight; a
 * leader that never completed hands its waiters on. */
void ab_cache_req_gone(ab_broker_t *b, ab_req_t *r);
/* Frees R's cache state (from ab_req_destroy). */
void ab_cache_req_free(ab_cache_req_t **cr);
/* 1 when others wait for R's answer (a deadline or cancel of R must then
 * not stop the worker). */
int ab_cache_has_waiters(const ab_req_t *r);
/* Recounts the single-flight groups against the requests (audit.h): each
 * group's leader and waiters are pending and point back at it, and every
 * request that points at a group is in it. 0, or -1 with WHY. */
int ab_cache_audit(ab_broker_t *b, char *why, size_t cap);
/* R's worker is told to stop (no one waits for R): R leads no flight any
 * more, so an identical request goes to a worker itself instead of
 * joining one that ends in CANCELLED. */
void ab_cache_req_cancelled(ab_broker_t *b, ab_req_t *r);
/* End of each loop turn: writes the turn's L2 commands, ends L2 lookups
 * past their timeout (as misses), dispatches services that got
 * re-dispatched waiters, expires cold entries. */
void ab_cache_tick(ab_broker_t *b, int64_t now);

/* L2's connection to Redis, polled by the broker's loop: 1 with *IT (an fd
 * and its events for this turn), 0 when there is nothing to poll (no L2,
 * or no connection now). Ask each turn: the fd and events change. */
int ab_cache_poll_item(ab_broker_t *b, zmq_pollitem_t *it);
/* The poll reported REVENTS on that item: reads Redis' answers; a hit
 * answers the request (and its waiters), a miss sends it on to a worker. */
void ab_cache_on_poll(ab_broker_t *b, short revents);
/* When the cache needs a turn by time (an L2 lookup's or connect's
 * timeout, a reconnect), on ab_now_ms' clock; 0 for never. */
int64_t ab_cache_next_wake(ab_broker_t *b);

/* CONTROL "cache", "cache clear [l1|l2|l3]", "cache get KEY": *out malloc'd
 * protobuf (CacheStats, CacheStats, CacheEntry). 0, or the AB_ERR_* code
 * for the peer with *ERR set (static text): NOT_FOUND for a key not cached,
 * BAD_REQUEST for a malformed key, BUSY for a tier that cannot clear now,
 * UNSUPPORTED for an unknown query, a tier not configured or no cache. */
int ab_cache_control(ab_broker_t *b, const char *what, uint8_t **out, size_t *len,
                     const char **err);
/* The cache's figures for Stats.cache: valid until the next call; NULL
 * without a cache. */
struct Agentbus__CacheStats *ab_cache_stats(ab_broker_t *b);

#endif
