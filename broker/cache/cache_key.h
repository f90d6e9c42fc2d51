/*
 * cache_key.h - is a request cacheable, and under which key (issue 6).
 *
 * Pure functions of the request (no broker state), so the unit test drives
 * them directly. docs/cache.md lists exactly what goes into a key; the
 * broker never takes a key from a client (one agent must not be able to
 * poison another's answers).
 */
#ifndef AB_CACHE_KEY_H
#define AB_CACHE_KEY_H

#include <stddef.h>
#include <stdint.h>

/* A 128-bit xxh3 hash. */
typedef struct {
    uint64_t hi, lo;
} ab_cache_key_t;

#define AB_CACHE_KEY_HEX 33 /* 32 hex digits + NUL */

/* Bump when the canonical encoding changes: old entries (L3 files, other
 * brokers' Redis keys) then simply miss instead of being misread. */
#define AB_CACHE_KEY_VERSION 1

typedef struct {
    const char *service;   /* required */
    const char *model;     /* Header.model ("" or NULL: none) */
    const char *digest;    /* the model's digest a worker reported, or NULL */
    uint32_t flags;        /* Header.flags */
    const void *payload;   /* the request payload as it travels */
    size_t size;
    int plain_only;        /* the client does not read lz4: its replies are
                            * never shared with clients that do (a cached
                            * reply keeps the compression it travelled with) */
    uint64_t original_size; /* with FLAG_LZ4 in FLAGS: the size the payload
                             * declares (Header.original_size); hashed with
                             * the compressed bytes (the caller did not
                             * decompress them: docs/cache.md) */
} ab_key_input_t;

/* Why a request is or is not cacheable (stats, logs, tests). */
typedef enum {
    AB_KEY_TYPED = 1,      /* typed inference request, deterministic or marked */
    AB_KEY_RAW = 2,        /* caller-marked, keyed on the payload bytes */
    AB_KEY_NO = 0,         /* not cacheable */
} ab_key_kind_t;

/* Decides whether IN is cacheable and computes its key into *KEY.
 * Typed requests (a model in the header and a payload that decodes as an
 * agentbus.InferenceRequest generate/chat/embed) are cacheable when they are
 * deterministic (options.temperature == 0, or options.seed set; embeddings
 * always) or caller-marked (FLAG_CACHEABLE); other requests only when
 * caller-marked. A request with both NO_CACHE and NO_STORE is never
 * cacheable (there is nothing to do). A payload still flagged LZ4 is never
 * decoded (the caller decompresses the ones it can afford to, see
 * s_key_plain in cache.c): it is cacheable only when marked, keyed on its
 * compressed bytes and declared size. The work is one pass over SIZE bytes
 * (plus a protobuf decode of them for a plain typed request). Never fails
 * otherwise. */
ab_key_kind_t ab_cache_key(const ab_key_input_t *in, ab_cache_key_t *key);

/* Writes KEY as 32 lower-case hex digits into BUF (AB_CACHE_KEY_HEX). */
void ab_cache_key_hex(const ab_cache_key_t *key, char *buf);
/* Parses 32 hex digits. 0, or -1 for anything else. */
int ab_cache_key_parse(const char *hex, ab_cache_key_t *key);

static inline int ab_cache_key_eq(const ab_cache_key_t *a, const ab_cache_key_t *b)
{
    return a->hi == b->hi && a->lo == b->lo;
}

#endif
