/*
 * batch.h - I/O-free encoding and decoding of BATCH messages.
 *
 * A BATCH is one ZeroMQ message carrying many agentbus messages bound for the
 * same next hop: a Header frame of kind BATCH, then one payload frame, the
 * batch body:
 *
 *   u32 little-endian   count of entries (1 .. AB_BATCH_MAX_COUNT)
 *   count entries, each:
 *     varint hlen, hlen bytes      the entry's Header (protobuf, as a frame)
 *     varint plen1, plen1-1 bytes  its payload; plen1 = 0: no payload frame
 *
 * The body holds nothing else: a count larger or smaller than the entries,
 * a length past the end, trailing bytes, an entry that is itself a BATCH,
 * carries an inline payload (codec.h) or whose header does not decode make
 * the whole batch malformed (AB_EBATCH), and no entry of it is delivered.
 * ab_batch_open checks all of that before the first ab_batch_next, so a
 * receiver never acts on half a batch.
 *
 * Like codec.h: no I/O, nothing asserted on input, every length and count
 * checked before use. tests/unit/test_batch.c and tests/fuzz/fuzz_batch.c.
 */
#ifndef AB_BATCH_H
#define AB_BATCH_H

#include "codec.h"

#include <stddef.h>
#include <stdint.h>

#define AB_BATCH_MAX_COUNT 4096 /* entries a decoder accepts in one batch */
#define AB_BATCH_START_COUNT 64 /* adaptive count limit: where it starts and its floor */
#define AB_BATCH_DEFAULT_COUNT AB_BATCH_MAX_COUNT /* the ceiling it may grow to */
#define AB_BATCH_DEFAULT_BYTES (64u * 1024u)
#define AB_BATCH_DEFAULT_AGE_US 200
/* The largest buffer an encoder gives itself for spare room: below glibc's
 * default mmap threshold (128 KiB), so that a batch of the default 64 KiB
 * limit is a heap block, not an mmap, page faults and an munmap with a TLB
 * shootdown per batch (docs/bench.md, "Issue 17: 4 KiB with batching"). A
 * batch that needs more still gets it. */
#define AB_BATCH_HEAP_MAX (120u * 1024u)

/* An encoder: entries appended to one growing buffer (reused after clear). */
typedef struct {
    uint8_t *buf;
    size_t len, cap;
    uint32_t count;
    size_t next_cap; /* after a detach: what the next buffer starts at (the last body's size) */
} ab_batch_t;

void ab_batch_init(ab_batch_t *b);
/* Frees the buffer; B may be initialised again. */
void ab_batch_fini(ab_batch_t *b);
/* Drops every entry, keeps the buffer. */
void ab_batch_clear(ab_batch_t *b);
/* Bytes one entry with a header of HLEN and a payload of PLEN adds. */
size_t ab_batch_entry_size(size_t hlen, size_t plen);
/* Appends one message (HAS_PAYLOAD 0: no payload frame; PAYLOAD ignored).
 * AB_ENOMEM, or AB_EINVAL when the batch already holds AB_BATCH_MAX_COUNT. */
int ab_batch_add(ab_batch_t *b, const void *hdr, size_t hlen, const void *payload, size_t plen,
                 int has_payload);
/* The body to send (count written in); valid until the next add/clear/fini. */
const uint8_t *ab_batch_body(ab_batch_t *b, size_t *len);
/* The body (count written in) as a malloc'd buffer the caller now owns and
 * frees (a sender hands it to ZeroMQ instead of copying it); B is left
 * empty, without a buffer, and its next one starts at about 1.5x this
 * body's size (or half the last start, if larger; no more than
 * AB_BATCH_HEAP_MAX for a body that fits in it). NULL (*len 0) when B
 * holds nothing. */
uint8_t *ab_batch_detach(ab_batch_t *b, size_t *len);

/* The frames of B's one entry (B->count is 1), as views into B: a sender
 * that gathered a single message sends it plain. These are the sender's own
 * bytes, so the header is not parsed again (ab_batch_open would). AB_OK, or
 * AB_EINVAL when B does not hold exactly one entry. */
int ab_batch_single(const ab_batch_t *b, ab_frame_t frames[2], size_t *nframes);

/* The count limit of a sender's next turn, from LIMIT (this turn's) and
 * GATHERED (the messages it gathered for that peer this turn), within
 * [min(AB_BATCH_START_COUNT, MAX), MAX]. A backlog makes turns that gather
 * more than the limit: it doubles, so a busy peer gets fewer, larger
 * batches (each ZeroMQ message has a fixed cost in every process it
 * crosses); turns that gather under a quarter of it halve it. An idle peer
 * never reaches it (one message a turn goes alone), so idle latency does
 * not depend on it. */
uint32_t ab_batch_next_limit(uint32_t limit, uint32_t gathered, uint32_t max);

/* A decoder over a received body (views into it, valid while it is). */
typedef struct {
    const uint8_t *p, *end;
    uint32_t left;
    const ab_limits_t *lim;
} ab_batch_reader_t;

/* Checks the whole body (see above) with LIM (NULL: defaults) applied to
 * each entry as ab_msg_decode applies it to a message. AB_OK and *count, or
 * AB_EBATCH. R then yields the entries in order. */
int ab_batch_open(ab_batch_reader_t *r, const void *body, size_t len, const ab_limits_t *lim,
                  uint32_t *count);
/* Next entry as frames (FRAMES[0] header, FRAMES[1] payload when *NFRAMES
 * is 2) for ab_msg_decode. 1: an entry; 0: no more; AB_EBATCH: malformed
 * (never after a successful ab_batch_open on the same bytes). */
int ab_batch_next(ab_batch_reader_t *r, ab_frame_t frames[2], size_t *nframes);

/* One entry of a batch as ab_batch_decode leaves it: its header parsed and
 * validated (views into the body), and its payload. */
typedef struct {
    ab_header_t h;
    ab_frame_t payload; /* data NULL, size 0 when there is no payload frame */
    int has_payload;    /* the entry has a payload frame (it may be empty) */
} ab_batch_entry_t;

/* The entries of the last batch decoded, in order: e[0 .. n). The array is
 * the caller's to keep between batches (it grows to the largest batch seen;
 * ab_batch_entries_fini frees it). Views stay valid while the body is. */
typedef struct {
    ab_batch_entry_t *e;
    uint32_t n, cap;
} ab_batch_entries_t;

/* The checks of ab_batch_open, keeping what they decoded: a receiver that
 * then acts on each entry parses each header once instead of twice (the
 * check and the delivery; 10% of the broker's instructions at 64 B went to
 * header parsing, half of it the second pass). AB_OK (E->n entries),
 * AB_EBATCH (malformed, E->n is 0), or AB_ENOMEM (the array could not grow;
 * nothing was checked: ab_batch_open still can). */
int ab_batch_decode(ab_batch_entries_t *e, const void *body, size_t len, const ab_limits_t *lim);
/* Frees E's array; E may be used again. */
void ab_batch_entries_fini(ab_batch_entries_t *e);

#endif
