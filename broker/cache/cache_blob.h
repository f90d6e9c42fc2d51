/*
 * cache_blob.h - a stored reply: its chunks (PARTIALs, then the REPLY or
 * ERROR) back to back, as every tier (L1, Redis, LMDB) keeps it. Pure
 * byte handling, no broker state: the unit test links it alone.
 */
#ifndef AB_CACHE_BLOB_H
#define AB_CACHE_BLOB_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint8_t *buf;
    size_t len, cap;
    uint32_t nchunks;
} ab_blob_t;

/* Appends one chunk. 0, or -1 when it would pass MAX bytes or out of
 * memory. */
int ab_blob_add(ab_blob_t *bl, uint32_t kind, uint32_t flags, uint64_t original_size,
                const void *data, size_t size, size_t max);
void ab_blob_free(ab_blob_t *bl);

typedef struct {
    uint32_t kind, flags;
    uint64_t original_size;
    const uint8_t *data;
    size_t size;
} ab_chunk_t;

/* Walks a blob: *OFF starts at 0. 1 with *CH filled, 0 at the end, -1 for
 * a malformed blob (every length is checked: blobs may come from disk). */
int ab_blob_next(const uint8_t *buf, size_t len, size_t *off, ab_chunk_t *ch);
/* 1 when BUF holds a whole, well-formed blob (a lower tier's value). */
int ab_blob_valid(const uint8_t *buf, size_t len);

#endif
