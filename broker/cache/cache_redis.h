/*
 * cache_redis.h - the shared cache tier (L2): Redis via hiredis, in its own
 * thread (issue 6, docs/cache.md).
 *
 * The broker's thread never talks to Redis. It queues lookups and writes to
 * the L2 thread over an inproc pipe (a czmq actor) and reads lookup answers
 * from the same pipe in its poll loop (ab_l2_pipe, ab_l2_recv). The thread
 * sends everything waiting as one pipeline (GETs and SET ... PX) with a
 * timeout. An error or timeout opens a circuit breaker: for a backoff
 * (1 s, doubling to 30 s) lookups are answered "miss" at once and writes
 * dropped, then the thread reconnects and, on success, closes it. The
 * broker also skips L2 while the breaker is open, so no request waits on a
 * Redis that is down. No client ever sees an error because of Redis.
 *
 * Keys: "agentbus:cache:v1:" + 32 hex digits; values: "ABL2", a format
 * byte (1), then the reply blob. Another format is treated as a miss.
 */
#ifndef AB_CACHE_REDIS_H
#define AB_CACHE_REDIS_H

#include "cache_key.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ab_l2 ab_l2_t;

enum { AB_L2_CLOSED = 0, AB_L2_OPEN = 1 };

typedef struct {
    atomic_uint_fast64_t stores, errors, dropped, reconnects, opens;
    atomic_uint_fast64_t sent; /* GETs written to a Redis connection */
    atomic_int state; /* AB_L2_CLOSED or AB_L2_OPEN */
} ab_l2_counters_t;

/* Starts the L2 thread for Redis at ADDR ("host:port"), with TIMEOUT_MS for
 * connects and replies. NULL on a bad address or no memory (the broker runs
 * without L2). Redis need not be up: the breaker starts open and the
 * thread connects when it can. */
ab_l2_t *ab_l2_new(const char *addr, int timeout_ms);
/* Stops the thread (queued writes are attempted first, within the timeout). */
void ab_l2_destroy(ab_l2_t **l2);

/* Broker thread. The socket to poll (ZMQ_POLLIN) for lookup answers. */
void *ab_l2_pipe(ab_l2_t *l2);
/* 1 while the breaker is closed (L2 is worth asking). */
int ab_l2_usable(ab_l2_t *l2);
/* Queues a lookup of KEY tagged TAG. 0, or -1 (not queued: treat as miss). */
int ab_l2_get(ab_l2_t *l2, uint64_t tag, const ab_cache_key_t *key);
/* Queues SET key blob PX ttl. 0, or -1 dropped (counted). */
int ab_l2_put(ab_l2_t *l2, const ab_cache_key_t *key, int64_t ttl_ms, const void *val,
              size_t len);
/* Queues deletion of every key of our namespace (SCAN + UNLINK). */
int ab_l2_clear(ab_l2_t *l2);

/* Broker thread: receives one lookup answer without waiting. 1 with *TAG,
 * *HIT and (on a hit) *MSG initialised to the reply blob (close it with
 * zmq_msg_close; data starts at *OFF); 0 when none waits. */
int ab_l2_recv(ab_l2_t *l2, uint64_t *tag, int *hit, void *msg, size_t *off);

ab_l2_counters_t *ab_l2_counters(ab_l2_t *l2);
const char *ab_l2_state_name(ab_l2_t *l2);

#endif
