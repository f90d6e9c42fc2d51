/* cache_blob.c - see cache_blob.h. */
#include "cache_blob.h"
#include "codec.h"

#include <stdlib.h>
#include <string.h>

/* Layout per chunk: kind u8, flags u32, original_size u64, size u32, bytes
 * (little endian). Versioning lives in the key (AB_CACHE_KEY_VERSION). */
#define AB_CHUNK_HDR 17

static void s_put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void s_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t s_get(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

int ab_blob_add(ab_blob_t *bl, uint32_t kind, uint32_t flags, uint64_t original_size,
                const void *data, size_t size, size_t max)
{
    size_t need = bl->len + AB_CHUNK_HDR + size;
    if (size > UINT32_MAX || need > max)
        return -1;
    if (need > bl->cap) {
        size_t cap = bl->cap ? bl->cap * 2 : 256;
        while (cap < need)
            cap *= 2;
        uint8_t *nb = realloc(bl->buf, cap);
        if (!nb)
            return -1;
        bl->buf = nb;
        bl->cap = cap;
    }
    uint8_t *p = bl->buf + bl->len;
    p[0] = (uint8_t)kind;
    s_put32(p + 1, flags);
    s_put64(p + 5, original_size);
    s_put32(p + 13, (uint32_t)size);
    if (size)
        memcpy(p + AB_CHUNK_HDR, data, size);
    bl->len = need;
    bl->nchunks++;
    return 0;
}

void ab_blob_free(ab_blob_t *bl)
{
    free(bl->buf);
    memset(bl, 0, sizeof *bl);
}

int ab_blob_next(const uint8_t *buf, size_t len, size_t *off, ab_chunk_t *ch)
{
    if (*off == len)
        return 0;
    if (*off > len || len - *off < AB_CHUNK_HDR)
        return -1;
    const uint8_t *p = buf + *off;
    ch->kind = p[0];
    ch->flags = (uint32_t)s_get(p + 1, 4);
    ch->original_size = s_get(p + 5, 8);
    ch->size = (size_t)s_get(p + 13, 4);
    if (ch->kind != AB_KIND_PARTIAL && ch->kind != AB_KIND_REPLY)
        return -1;
    if (len - *off - AB_CHUNK_HDR < ch->size)
        return -1;
    ch->data = p + AB_CHUNK_HDR;
    *off += AB_CHUNK_HDR + ch->size;
    return 1;
}

/* A stored reply must be whole: chunks that parse, exactly one REPLY, last. */
int ab_blob_valid(const uint8_t *buf, size_t len)
{
    size_t off = 0;
    ab_chunk_t ch;
    int rc, last = 0;
    while ((rc = ab_blob_next(buf, len, &off, &ch)) == 1) {
        if (last)
            return 0;
        last = ch.kind == AB_KIND_REPLY;
    }
    return rc == 0 && last;
}
