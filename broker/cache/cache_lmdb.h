/*
 * cache_lmdb.h - the broker's persistent cache tier (L3): LMDB in the data
 * directory (issue 6, docs/cache.md).
 *
 * One file, DIR/cache.mdb (and its lock file), bounded by the map size.
 * Two named databases: "entries" (16-byte key -> record: magic, expiry,
 * age sequence, reply blob) and "age" (sequence, big endian -> key) so the
 * oldest entries are found without a scan. Writes happen in batches, in
 * one transaction each, on a writer thread (ab_l3_writer_*); reads run on
 * the broker's thread straight from the memory map (a reused read-only
 * transaction: no copy, no lock). Before the tree pages reach 75% of the
 * map, expired and then oldest entries are removed down to 60%, so a write
 * never meets MDB_MAP_FULL in normal operation (and if it does, the batch
 * is retried once after a larger eviction, else dropped and counted: a
 * cache write is never a client's error).
 */
#ifndef AB_CACHE_LMDB_H
#define AB_CACHE_LMDB_H

#include "cache_key.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ab_l3 ab_l3_t;

typedef struct {
    atomic_uint_fast64_t stores, evictions, expired, dropped, batches;
} ab_l3_counters_t;

/* Opens (creating DIR/cache.mdb if needed) with MAP_BYTES of map. A file
 * that is corrupt, of another LMDB version or of another format version
 * is renamed to cache.mdb.bad-<unix time> with one ERROR log line, and a
 * fresh one is created. NULL when even that fails (logged): the broker
 * then runs without L3. */
ab_l3_t *ab_l3_open(const char *dir, size_t map_bytes);
void ab_l3_close(ab_l3_t **l3);

/* Times in this file are milliseconds since the epoch (ab_wall_ms), not
 * the monotonic clock: the file outlives a reboot.
 *
 * Broker thread only. Looks KEY up: 1 with *VAL and *LEN the stored reply blob
 * (pointing into the map: valid until ab_l3_release) and *EXPIRES_MS; 0
 * when absent or expired at NOW_MS; -1 on an LMDB error. Call
 * ab_l3_release after every lookup. */
int ab_l3_get(ab_l3_t *l3, const ab_cache_key_t *key, int64_t now_ms, const uint8_t **val,
              size_t *len, int64_t *expires_ms);
void ab_l3_release(ab_l3_t *l3);

/* One write of a batch. */
typedef struct {
    ab_cache_key_t key;
    int64_t expires_ms;
    const uint8_t *val;
    size_t len;
} ab_l3_item_t;

/* Writer thread (or a test): stores N items in one transaction, evicting
 * first when the map nears full. 0, or -1 when the batch was dropped. */
int ab_l3_put_batch(ab_l3_t *l3, const ab_l3_item_t *items, size_t n, int64_t now_ms);
/* Writer thread: removes up to MAX expired entries (a rolling scan) and,
 * above the high-water mark, the oldest ones. Returns entries removed. */
size_t ab_l3_maintain(ab_l3_t *l3, int64_t now_ms, size_t max);
/* Writer thread: removes every entry. */
int ab_l3_clear(ab_l3_t *l3);

/* Any thread: entries, bytes in tree pages, map size. */
void ab_l3_usage(ab_l3_t *l3, uint64_t *entries, uint64_t *bytes, uint64_t *map_bytes);
ab_l3_counters_t *ab_l3_counters(ab_l3_t *l3);

/* --- the writer thread ------------------------------------------------------ */
typedef struct ab_l3_writer ab_l3_writer_t;

/* Starts the writer thread for L3 (not owned). QUEUE_MAX bytes may wait
 * for it; a put beyond that is dropped and counted. NULL on failure. */
ab_l3_writer_t *ab_l3_writer_new(ab_l3_t *l3, size_t queue_max);
/* Writes what is queued, stops the thread. */
void ab_l3_writer_destroy(ab_l3_writer_t **w);
/* Broker thread: queues a copy of VAL for KEY, to expire TTL_MS from now.
 * 0, or -1 dropped (queue full: counted). Never blocks. */
int ab_l3_writer_put(ab_l3_writer_t *w, const ab_cache_key_t *key, int64_t ttl_ms,
                     const void *val, size_t len);
/* Broker thread: queues "remove every entry". */
int ab_l3_writer_clear(ab_l3_writer_t *w);

#endif
