/*
 * batch.c - see batch.h. The count sits in a fixed 4-byte slot at the front
 * so the encoder can append without knowing the final count, and the decoder
 * can refuse an absurd count before it reads an entry.
 */
#include "batch.h"
#include "agentbus.h"

#include <stdlib.h>
#include <string.h>

#define AB_BATCH_PREFIX 4

void ab_batch_init(ab_batch_t *b)
{
    memset(b, 0, sizeof *b);
}

void ab_batch_fini(ab_batch_t *b)
{
    free(b->buf);
    memset(b, 0, sizeof *b);
}

void ab_batch_clear(ab_batch_t *b)
{
    b->len = 0;
    b->count = 0;
}

static uint8_t *s_put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* Reads a varint bounded by END; 0, or -1 when truncated or over 10 bytes. */
static int s_get_varint(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (*p >= end)
            return -1;
        uint8_t c = *(*p)++;
        if (shift == 63 && (c & 0x7e))
            return -1;
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

size_t ab_batch_entry_size(size_t hlen, size_t plen)
{
    return ab_varint_size(hlen) + hlen + ab_varint_size((uint64_t)plen + 1) + plen;
}

int ab_batch_add(ab_batch_t *b, const void *hdr, size_t hlen, const void *payload, size_t plen,
                 int has_payload)
{
    if (b->count >= AB_BATCH_MAX_COUNT)
        return AB_EINVAL;
    if (!has_payload)
        plen = 0;
    size_t need = (b->len ? b->len : AB_BATCH_PREFIX) + ab_batch_entry_size(hlen, plen);
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : b->next_cap > 1024 ? b->next_cap : 1024;
        while (cap < need)
            cap *= 2;
        if (need <= AB_BATCH_HEAP_MAX && cap > AB_BATCH_HEAP_MAX)
            cap = AB_BATCH_HEAP_MAX; /* doubling past it would make it an mmap */
        uint8_t *nb = realloc(b->buf, cap);
        if (!nb)
            return AB_ENOMEM;
        b->buf = nb;
        b->cap = cap;
    }
    if (b->len == 0)
        b->len = AB_BATCH_PREFIX;
    uint8_t *p = b->buf + b->len;
    p = s_put_varint(p, hlen);
    if (hlen)
        memcpy(p, hdr, hlen);
    p += hlen;
    p = s_put_varint(p, has_payload ? (uint64_t)plen + 1 : 0);
    if (plen)
        memcpy(p, payload, plen);
    p += plen;
    b->len = (size_t)(p - b->buf);
    b->count++;
    return AB_OK;
}

const uint8_t *ab_batch_body(ab_batch_t *b, size_t *len)
{
    if (!b->buf) {
        *len = 0;
        return NULL;
    }
    uint32_t n = b->count;
    b->buf[0] = (uint8_t)n;
    b->buf[1] = (uint8_t)(n >> 8);
    b->buf[2] = (uint8_t)(n >> 16);
    b->buf[3] = (uint8_t)(n >> 24);
    *len = b->len;
    return b->buf;
}

uint8_t *ab_batch_detach(ab_batch_t *b, size_t *len)
{
    if (!ab_batch_body(b, len) || b->count == 0) {
        *len = 0;
        return NULL;
    }
    uint8_t *buf = b->buf;
    /* The buffer lives on in a send queue: it should hold what is sent,
     * not up to twice that (capacity doubles). Shrinking gives the tail
     * back in place (no copy). */
    if (b->cap - b->len > b->len / 4) {
        uint8_t *fit = realloc(buf, b->len);
        if (fit)
            buf = fit;
    }
    /* The next batch to this peer is likely about as large: start there
     * instead of doubling up from 1 KB. With room to spare (half as much
     * again): under load the next one is often a little larger, and a
     * buffer grown mid-batch is a copy and a large allocation (callgrind:
     * ~12,000 instructions each, 441 in 1,080 batches of the broker's at
     * 64 B, 100 a request); the spare room is given back at the detach. */
    size_t hint = 1024, want = b->len + b->len / 2;
    if (want < b->next_cap / 2) /* and it forgets a large one slowly (turns vary) */
        want = b->next_cap / 2;
    while (hint < want && hint < ((size_t)1 << 30))
        hint *= 2;
    /* Spare room that carries a heap-sized body over glibc's mmap threshold
     * costs an mmap, page faults on every page written and an munmap (in
     * libzmq's I/O thread, a TLB shootdown) per batch: at 4 KiB, bodies of
     * ~56 KiB started at 128 KiB, 10 % of the broker's and the worker's CPU
     * in page faults (perf). Shrunk by mremap, the freed chunk was under the
     * threshold, so glibc never raised it. */
    if (b->len <= AB_BATCH_HEAP_MAX && hint > AB_BATCH_HEAP_MAX)
        hint = AB_BATCH_HEAP_MAX;
    b->buf = NULL;
    b->len = b->cap = 0;
    b->count = 0;
    b->next_cap = hint;
    return buf;
}

uint32_t ab_batch_next_limit(uint32_t limit, uint32_t gathered, uint32_t max)
{
    if (max > AB_BATCH_MAX_COUNT)
        max = AB_BATCH_MAX_COUNT;
    uint32_t floor = max < AB_BATCH_START_COUNT ? max : AB_BATCH_START_COUNT;
    limit = limit < floor ? floor : limit > max ? max : limit;
    if (gathered >= limit)
        return limit > max / 2 ? max : 2 * limit;
    if (gathered < limit / 4)
        return limit / 2 > floor ? limit / 2 : floor;
    return limit;
}

/* One entry's frames, lengths checked against what is left. */
static int s_entry(const uint8_t **p, const uint8_t *end, ab_frame_t frames[2], size_t *nframes)
{
    uint64_t hlen, plen1;
    if (s_get_varint(p, end, &hlen) != 0 || hlen > (uint64_t)(end - *p))
        return AB_EBATCH;
    frames[0].data = *p;
    frames[0].size = (size_t)hlen;
    *p += hlen;
    if (s_get_varint(p, end, &plen1) != 0 || (plen1 && plen1 - 1 > (uint64_t)(end - *p)))
        return AB_EBATCH;
    *nframes = plen1 ? 2 : 1;
    frames[1].data = plen1 ? *p : NULL;
    frames[1].size = plen1 ? (size_t)(plen1 - 1) : 0;
    if (plen1)
        *p += plen1 - 1;
    return AB_OK;
}

int ab_batch_single(const ab_batch_t *b, ab_frame_t frames[2], size_t *nframes)
{
    if (b->count != 1 || !b->buf || b->len < AB_BATCH_PREFIX)
        return AB_EINVAL;
    const uint8_t *p = b->buf + AB_BATCH_PREFIX, *end = b->buf + b->len;
    if (s_entry(&p, end, frames, nframes) != AB_OK || p != end)
        return AB_EINVAL;
    return AB_OK;
}

/* The count at the front of BODY, when it is possible for LEN bytes; else 0. */
static uint32_t s_count(const uint8_t *p, size_t len)
{
    if (!p || len < AB_BATCH_PREFIX)
        return 0;
    uint32_t n = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                 (uint32_t)p[3] << 24;
    /* Each entry takes at least two bytes: a count beyond that is a lie. */
    if (n == 0 || n > AB_BATCH_MAX_COUNT || n > (len - AB_BATCH_PREFIX) / 2)
        return 0;
    return n;
}

/* Checks N entries from P to END exactly (see batch.h); each decoded entry
 * goes to OUT[i] when OUT is given, else to a scratch header. AB_OK or
 * AB_EBATCH. */
static int s_check(const uint8_t *p, const uint8_t *end, uint32_t n, const ab_limits_t *lim,
                   ab_batch_entry_t *out)
{
    for (uint32_t i = 0; i < n; i++) {
        ab_frame_t f[2];
        size_t nf;
        ab_batch_entry_t scratch, *e = out ? &out[i] : &scratch;
        if (s_entry(&p, end, f, &nf) != AB_OK)
            return AB_EBATCH;
        if (ab_msg_decode(f, nf, lim, &e->h, &e->payload) != AB_OK || e->h.kind == AB_KIND_BATCH)
            return AB_EBATCH;
        /* An entry has its own payload slot: an inline one too would be
         * a second layout to get right in every reader, for no gain. */
        if (nf == 1 && e->payload.data)
            return AB_EBATCH;
        e->has_payload = nf == 2;
    }
    return p == end ? AB_OK : AB_EBATCH; /* else fewer entries claimed than it holds */
}

int ab_batch_open(ab_batch_reader_t *r, const void *body, size_t len, const ab_limits_t *lim,
                  uint32_t *count)
{
    memset(r, 0, sizeof *r);
    if (count)
        *count = 0;
    uint32_t n = s_count(body, len);
    if (!n)
        return AB_EBATCH;
    const uint8_t *first = (const uint8_t *)body + AB_BATCH_PREFIX;
    const uint8_t *end = first + (len - AB_BATCH_PREFIX);
    if (s_check(first, end, n, lim, NULL) != AB_OK)
        return AB_EBATCH;
    r->p = first;
    r->end = end;
    r->left = n;
    r->lim = lim;
    if (count)
        *count = n;
    return AB_OK;
}

int ab_batch_decode(ab_batch_entries_t *e, const void *body, size_t len, const ab_limits_t *lim)
{
    e->n = 0;
    uint32_t n = s_count(body, len);
    if (!n)
        return AB_EBATCH;
    if (n > e->cap) {
        ab_batch_entry_t *ne = realloc(e->e, (size_t)n * sizeof *ne);
        if (!ne)
            return AB_ENOMEM;
        e->e = ne;
        e->cap = n;
    }
    const uint8_t *first = (const uint8_t *)body + AB_BATCH_PREFIX;
    if (s_check(first, first + (len - AB_BATCH_PREFIX), n, lim, e->e) != AB_OK)
        return AB_EBATCH;
    e->n = n;
    return AB_OK;
}

void ab_batch_entries_fini(ab_batch_entries_t *e)
{
    free(e->e);
    memset(e, 0, sizeof *e);
}

int ab_batch_next(ab_batch_reader_t *r, ab_frame_t frames[2], size_t *nframes)
{
    if (r->left == 0)
        return 0;
    if (s_entry(&r->p, r->end, frames, nframes) != AB_OK) {
        r->left = 0;
        return AB_EBATCH;
    }
    r->left--;
    return 1;
}
