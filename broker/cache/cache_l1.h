/*
 * cache_l1.h - the broker's in-process cache tier: an LRU bounded in bytes,
 * with a TTL per entry (issue 6).
 *
 * Lookup, insert and removal are O(1): a chained hash table on the 128-bit
 * key plus a doubly linked recency list. Values are opaque bytes (a cache
 * blob, cache.h) copied in on put. Bytes are accounted as value length plus
 * the entry's own bookkeeping, so the bound holds for many tiny entries too.
 * Not thread-safe: the broker's thread owns it.
 */
#ifndef AB_CACHE_L1_H
#define AB_CACHE_L1_H

#include "cache_key.h"

#include <stddef.h>
#include <stdint.h>

typedef struct ab_l1 ab_l1_t;

typedef struct {
    uint64_t hits, misses, stores, evictions, expired;
    uint64_t bytes, entries, max_bytes;
} ab_l1_stats_t;

/* A new, empty LRU holding at most MAX_BYTES. NULL when out of memory. */
ab_l1_t *ab_l1_new(size_t max_bytes);
void ab_l1_destroy(ab_l1_t **l1);

/* Looks KEY up at time NOW_MS. On a hit returns 1, sets *VAL / *LEN to the
 * stored bytes (valid until the next put, del or clear) and *EXPIRES_MS, and
 * marks the entry most recently used. An expired entry is removed and
 * reported as a miss (0). Counts hits and misses. */
int ab_l1_get(ab_l1_t *l1, const ab_cache_key_t *key, int64_t now_ms, const uint8_t **val,
              size_t *len, int64_t *expires_ms);

/* Stores a copy of VAL (LEN bytes) under KEY until EXPIRES_MS, replacing an
 * older entry, and evicts least recently used entries until the total fits.
 * 0; -1 when the entry alone exceeds the bound (not stored) or out of
 * memory. */
int ab_l1_put(ab_l1_t *l1, const ab_cache_key_t *key, const void *val, size_t len,
              int64_t expires_ms);

/* Removes KEY. 1 removed, 0 absent. */
int ab_l1_del(ab_l1_t *l1, const ab_cache_key_t *key);
/* Removes every entry. */
void ab_l1_clear(ab_l1_t *l1);
/* Removes up to MAX expired entries from the cold end (called from the
 * broker's timers so dead entries do not hold memory until evicted). */
size_t ab_l1_expire(ab_l1_t *l1, int64_t now_ms, size_t max);
void ab_l1_stats(const ab_l1_t *l1, ab_l1_stats_t *st);

/* Bookkeeping bytes an entry costs beyond its value. */
size_t ab_l1_overhead(void);

#endif
