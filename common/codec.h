/*
 * codec.h - I/O-free encoding and decoding of agentbus messages.
 *
 * A message is one Header frame plus an optional payload frame. The Header is
 * the protobuf message agentbus.Header of proto/agentbus.proto. This codec
 * reads and writes its wire format directly, without allocating: a decoded
 * header holds views into the caller's buffer (valid while that buffer is).
 * The hot path (broker routing) needs exactly that; tests/unit/test_codec.c
 * checks that the bytes agree with protobuf-c's generated code both ways.
 * The fields, their numbers and wire types, and what each kind requires,
 * are the rows of common/vocab.h: the parser, the encoder and the struct
 * below are expanded from them.
 *
 * Nothing here asserts or aborts on input: every length and count is checked
 * before use and a bad message yields a distinct negative AB_E* code.
 */
#ifndef AB_CODEC_H
#define AB_CODEC_H

#include "vocab.h"

#include <stddef.h>
#include <stdint.h>

#define AB_PROTOCOL_VERSION 1
#define AB_DEFAULT_MAX_HEADER (64u * 1024u)
#define AB_DEFAULT_MAX_PAYLOAD (64u * 1024u * 1024u)

/* Feature bits (Hello.features, Register.features, Header.features). */
enum {
    AB_FEATURE_BATCH = 1u << 0, /* reads KIND_BATCH (common/batch.h) */
    AB_FEATURE_LZ4 = 1u << 1,   /* reads lz4-compressed payloads (common/compress.h) */
    AB_FEATURE_INLINE = 1u << 2 /* reads a payload inside the header frame (below) */
};

/* Inline payloads. A message may carry its payload inside the header frame,
 * as field inline_payload, instead of in a second frame: one ZeroMQ frame
 * per message instead of two, which is most of what a small message costs
 * libzmq. A sender appends the field after the encoded header (protobuf
 * fields may come in any order), so nothing is encoded twice
 * (ab_msg_inline_size / ab_msg_inline_put). It does so only to a peer that
 * announced AB_FEATURE_INLINE, and only for payloads up to AB_INLINE_MAX:
 * larger ones keep their own frame, which the broker forwards by reference.
 * A receiver takes up to AB_INLINE_LIMIT (a limit of the protocol, above
 * what any sender uses, so a sender may raise its threshold later); the
 * header-size limit applies to the frame without the inline field. */
#define AB_INLINE_MAX 1024u         /* payloads a sender puts inline (docs/bench.md) */
#define AB_INLINE_LIMIT (16u * 1024u) /* the largest inline payload a receiver takes */

/* A view of bytes owned by someone else. Not NUL-terminated. */
typedef struct {
    const char *ptr;
    size_t len;
} ab_view_t;

/* agentbus.Header, one member per row of AB_HEADER_FIELD_LIST (vocab.h),
 * typed by its TYPE column. */
#define AB_HF_CTYPE_U32 uint32_t
#define AB_HF_CTYPE_ENUM uint32_t
#define AB_HF_CTYPE_U64 uint64_t
#define AB_HF_CTYPE_STR ab_view_t
#define AB_HF_CTYPE_BYTES ab_view_t
#define AB_HF_MEMBER_(member, number, type) AB_HF_CTYPE_##type member;
typedef struct {
    AB_HEADER_FIELD_LIST(AB_HF_MEMBER_)
} ab_header_t;
#undef AB_HF_MEMBER_

/* One frame of a multipart message, as received. */
typedef struct {
    const void *data;
    size_t size;
} ab_frame_t;

typedef struct {
    size_t max_header;  /* bytes; default AB_DEFAULT_MAX_HEADER */
    size_t max_payload; /* bytes; default AB_DEFAULT_MAX_PAYLOAD */
} ab_limits_t;

/* Fills LIM with the defaults. */
void ab_limits_default(ab_limits_t *lim);

/* Returns a header with version set and every other field zero/empty. */
ab_header_t ab_header_init(uint32_t kind);

/* Parses protobuf bytes into H (views into BUF). Unknown fields are skipped.
 * Returns AB_OK, AB_EDECODE (truncated varint or length, bad wire type,
 * wire type not matching a known field, over-long varint) or AB_EINLINE
 * (inline_payload given twice). */
int ab_header_parse(const void *buf, size_t len, ab_header_t *h);

/* Checks the version and the fields each kind requires.
 * AB_EMISSING (version 0, kind 0, or a kind's required field absent),
 * AB_EVERSION (a version other than AB_PROTOCOL_VERSION),
 * AB_EDECODE (kind out of range). */
int ab_header_validate(const ab_header_t *h);

/* Full check of a received message (without the ROUTER's identity frame):
 * frame count (1 or 2: AB_EFRAMES), header size (AB_EHDRSIZE), parse,
 * validation, payload size (AB_EPAYLOADSIZE), the inline payload
 * (AB_EINLINE: with a second frame too, given twice, over AB_INLINE_LIMIT).
 * On AB_OK *h is filled and *payload is the payload: the second frame, or
 * the inline field (a view into frame 0; h->inline_payload is then cleared,
 * so that a header passed on is never re-encoded with it). payload->data is
 * NULL exactly when the message has no payload (a second frame of size 0
 * with data NULL becomes ""), so "has a payload" is payload->data != NULL
 * and "came inline" is that with NFRAMES 1.
 * LIM may be NULL for the defaults. On error *h holds what could be parsed
 * (useful to route an ERROR back when kind and id were read). */
int ab_msg_decode(const ab_frame_t *frames, size_t nframes, const ab_limits_t *lim,
                  ab_header_t *h, ab_frame_t *payload);

/* Bytes of V as a protobuf varint (1 to 10). */
static inline size_t ab_varint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* Exact number of bytes ab_header_encode writes for H. */
size_t ab_header_size(const ab_header_t *h);

/* Cheap upper bound of ab_header_size(H): a buffer this large always fits. */
size_t ab_header_bound(const ab_header_t *h);

/* Writes H into BUF (CAP bytes). Returns the bytes written, or 0 when CAP is
 * too small (nothing useful is left in BUF then). Fields at their default
 * (0, empty) are omitted, as protobuf does. */
size_t ab_header_encode(const ab_header_t *h, void *buf, size_t cap);

/* Encodes H into STACK (CAP bytes) when it fits, else into a malloc'd
 * buffer. Returns the buffer (free it when it is not STACK) and sets *len,
 * or NULL when out of memory. Senders use it with a small stack buffer: a
 * header only outgrows one with very long strings. */
uint8_t *ab_header_encode_buf(const ab_header_t *h, uint8_t *stack, size_t cap, size_t *len);

/* Bytes of a one-frame message made of a HLEN-byte encoded header and a
 * PLEN-byte inline payload. */
size_t ab_msg_inline_size(size_t hlen, size_t plen);

/* Writes that frame into OUT (ab_msg_inline_size bytes): the header HDR as
 * encoded, then the inline_payload field holding PL. */
void ab_msg_inline_put(uint8_t *out, const void *hdr, size_t hlen, const void *pl, size_t plen);

/* Convenience: a view of a C string (NULL gives an empty view). */
ab_view_t ab_view_of(const char *s);

/* 1 if view V equals C string S. */
int ab_view_eq(ab_view_t v, const char *s);

/* Copies V into BUF (CAP bytes) with a terminating NUL, truncating. */
void ab_view_copy(ab_view_t v, char *buf, size_t cap);

#endif
