/*
 * cache_redis.h - the shared cache tier (L2): Redis, spoken on the broker's
 * own loop (issue 6, issue 17, docs/cache.md).
 *
 * The broker's thread owns one non-blocking TCP connection to Redis. It
 * polls the connection's fd in the same zmq_poll as its sockets
 * (ab_l2_poll_item, ab_l2_on_poll), writes the commands queued during a
 * loop turn as one pipeline at the end of the turn (ab_l2_tick) and parses
 * the replies with hiredis' reader, which does no I/O. No thread and no
 * inproc hop sits between a lookup and Redis: issue 17 measured those two
 * hops and wake-ups at ~40 us per L2 hit on top of the Redis round trip.
 *
 * Nothing here blocks: connect is non-blocking, a host name is resolved by
 * glibc's getaddrinfo_a off the loop, reads and writes stop at EAGAIN.
 * A lookup not answered within TIMEOUT_MS, a connect not done within it,
 * a read error, EOF or a malformed reply opens a circuit breaker: the
 * connection is closed, every lookup in flight is answered "miss" at once
 * (the broker sends the request on to a worker), writes in flight are
 * dropped (counted), and for a backoff (1 s, doubling to 30 s) the broker
 * does not ask L2. Then it reconnects by itself; a completed connect
 * closes the breaker. No client ever sees an error because of Redis.
 *
 * Bounds: at most AB_L2_PENDING_MAX commands in flight (a lookup over it is
 * refused: the request goes to a worker), at most 64 MiB of commands
 * waiting to be written (a write over it is dropped), a reply at most
 * MAX_VALUE plus 64 KiB (a larger one is a protocol error).
 *
 * Keys: "agentbus:cache:v1:" + 32 hex digits; values: "ABL2", a format
 * byte (2), the expiry (ms since the epoch, 8 bytes big-endian), then the
 * reply blob. Another format is treated as a miss.
 *
 * Everything here is called from the broker's thread only.
 */
#ifndef AB_CACHE_REDIS_H
#define AB_CACHE_REDIS_H

#include "cache_key.h"

#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#define AB_L2_PENDING_MAX 65536

typedef struct ab_l2 ab_l2_t;

enum { AB_L2_CLOSED = 0, AB_L2_OPEN = 1 };

typedef struct {
    uint64_t stores, errors, dropped, reconnects, opens;
    uint64_t sent;     /* GETs written to a Redis connection */
    uint64_t timeouts; /* lookups answered "miss": Redis silent past the timeout */
    uint64_t failed;   /* lookups answered "miss": the connection failed or closed */
    int state;         /* AB_L2_CLOSED or AB_L2_OPEN */
} ab_l2_counters_t;

/* L2 for Redis at ADDR ("host:port"), with TIMEOUT_MS for connects and
 * replies, replies of at most MAX_VALUE bytes. NULL on a bad address or no
 * memory (the broker runs without L2). Redis need not be up: the breaker
 * starts open and the first connect starts at the first ab_l2_tick. */
ab_l2_t *ab_l2_new(const char *addr, int timeout_ms, size_t max_value);
/* Closes the connection after trying, for up to the timeout, to write
 * what is queued (stores). Lookups in flight are forgotten. */
void ab_l2_destroy(ab_l2_t **l2);

/* The fd to poll and its events this turn: 1 with *IT filled (socket NULL),
 * 0 when there is no connection to poll. */
int ab_l2_poll_item(ab_l2_t *l2, zmq_pollitem_t *it);
/* The poll reported REVENTS on that fd: completes a connect, reads and
 * parses replies, writes what is queued. Answers go to ab_l2_recv. */
void ab_l2_on_poll(ab_l2_t *l2, short revents);
/* Once per loop turn, at its end: writes the commands queued during the
 * turn, expires a lookup or connect older than the timeout (breaker),
 * reconnects when the backoff has passed. */
void ab_l2_tick(ab_l2_t *l2, int64_t now_ms);
/* When ab_l2_tick has something to do by time (ab_now_ms' clock), or 0. */
int64_t ab_l2_next_wake_ms(ab_l2_t *l2);

/* 1 while the breaker is closed (L2 is worth asking). */
int ab_l2_usable(ab_l2_t *l2);
/* Queues a lookup of KEY tagged TAG. 0, or -1 (not queued: treat as miss). */
int ab_l2_get(ab_l2_t *l2, uint64_t tag, const ab_cache_key_t *key);
/* Queues SET key blob PX ttl. 0, or -1 dropped (counted). */
int ab_l2_put(ab_l2_t *l2, const ab_cache_key_t *key, int64_t ttl_ms, const void *val,
              size_t len);
/* Starts deleting every key of our namespace (SCAN + UNLINK, a batch per
 * round trip). 0, or -1 when there is no connection now. */
int ab_l2_clear(ab_l2_t *l2);

/* One lookup answer without waiting: 1 with *TAG, *HIT and, on a hit,
 * *VAL and *LEN the reply blob (valid until the next ab_l2_recv or
 * ab_l2_destroy) and *TTL_MS the entry's time left (the expiry its writer
 * stored with it, by this machine's clock: one already past is a miss); 0
 * when none waits. */
int ab_l2_recv(ab_l2_t *l2, uint64_t *tag, int *hit, const uint8_t **val, size_t *len,
               int64_t *ttl_ms);

ab_l2_counters_t *ab_l2_counters(ab_l2_t *l2);
const char *ab_l2_state_name(ab_l2_t *l2);

#endif
