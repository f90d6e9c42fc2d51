/*
 * codec.c - hand-written protobuf wire format for agentbus.Header.
 *
 * Why not protobuf_c_message_unpack? It allocates the message and a copy of
 * every string, and the broker decodes a header for every message it routes.
 * Parsing into views costs a few dozen nanoseconds and no allocation. The
 * typed payloads (Register, Stats, ...) are rare and use protobuf-c.
 *
 * Nothing here names a header field, kind or error code: each step that
 * touches fields (parse, validate, size, encode) is expanded from the rows of
 * common/vocab.h, and so are the look-ups at the end. A new field is a row
 * there, not an edit here.
 */
#include "codec.h"
#include "agentbus.h"

#include <stdlib.h>
#include <string.h>

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

/* What each TYPE of AB_HEADER_FIELD_LIST (vocab.h) means to the codec:
 * S_WT_ its wire type, S_GET_ its value from a parsed varint V or view W,
 * S_ISSET_ whether it differs from the default (and so is written). */
#define S_WT_U32 WT_VARINT
#define S_WT_U64 WT_VARINT
#define S_WT_ENUM WT_VARINT
#define S_WT_STR WT_LEN
#define S_WT_BYTES WT_LEN
#define S_GET_U32(v, w) ((uint32_t)(v))
#define S_GET_ENUM(v, w) ((uint32_t)(v))
#define S_GET_U64(v, w) (v)
#define S_GET_STR(v, w) (w)
#define S_GET_BYTES(v, w) (w)
#define S_ISSET_U32(x) ((x) != 0)
#define S_ISSET_ENUM(x) ((x) != 0)
#define S_ISSET_U64(x) ((x) != 0)
#define S_ISSET_STR(x) ((x).len != 0)
#define S_ISSET_BYTES(x) ((x).len != 0)

/* Bytes of the key (number << 3 | wire type) of field NUMBER. */
#define S_KEYLEN(n) ((n) < 16 ? 1u : (n) < 2048 ? 2u : (n) < 262144 ? 3u : (n) < 33554432 ? 4u : 5u)

void ab_limits_default(ab_limits_t *lim)
{
    lim->max_header = AB_DEFAULT_MAX_HEADER;
    lim->max_payload = AB_DEFAULT_MAX_PAYLOAD;
}

/* Field by field, not a memset: see S_CLEAR below (rep stos). */
#define S_INIT_U32(x) (x) = 0;
#define S_INIT_ENUM(x) (x) = 0;
#define S_INIT_U64(x) (x) = 0;
#define S_INIT_STR(x) (x) = (ab_view_t){NULL, 0};
#define S_INIT_BYTES(x) (x) = (ab_view_t){NULL, 0};
#define S_INIT(member, number, type) S_INIT_##type(h.member)

ab_header_t ab_header_init(uint32_t kind)
{
    ab_header_t h;
    AB_HEADER_FIELD_LIST(S_INIT)
    h.version = AB_PROTOCOL_VERSION;
    h.kind = kind;
    return h;
}

ab_view_t ab_view_of(const char *s)
{
    ab_view_t v = {s ? s : "", s ? strlen(s) : 0};
    return v;
}

int ab_view_eq(ab_view_t v, const char *s)
{
    size_t n = strlen(s);
    return v.len == n && (n == 0 || memcmp(v.ptr, s, n) == 0);
}

void ab_view_copy(ab_view_t v, char *buf, size_t cap)
{
    if (cap == 0)
        return;
    size_t n = v.len < cap - 1 ? v.len : cap - 1;
    if (n)
        memcpy(buf, v.ptr, n);
    buf[n] = '\0';
}

/* Reads a varint at *p (bounded by end). 0 on success, -1 if truncated or
 * longer than 10 bytes. */
static inline int s_varint(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
    /* One byte: every key of fields 1..15 and most values of a header. */
    if (*p < end && !(**p & 0x80)) {
        *out = *(*p)++;
        return 0;
    }
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (*p >= end)
            return -1;
        uint8_t b = *(*p)++;
        if (shift == 63 && (b & 0x7e))
            return -1; /* bits beyond 64 */
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* Reads the value of one field whose key said wire type WT: a varint into
 * *V, a length-delimited field into *W; fixed-size ones are skipped. 0, or
 * -1 when it runs past END or the wire type is a group or reserved. */
static int s_value(const uint8_t **p, const uint8_t *end, int wt, uint64_t *v, ab_view_t *w)
{
    switch (wt) {
    case WT_VARINT:
        return s_varint(p, end, v);
    case WT_I64:
    case WT_I32: {
        size_t n = wt == WT_I64 ? 8 : 4;
        if ((size_t)(end - *p) < n)
            return -1;
        *p += n;
        return 0;
    }
    case WT_LEN:
        if (s_varint(p, end, v) != 0 || *v > (uint64_t)(end - *p))
            return -1;
        w->ptr = (const char *)*p;
        w->len = (size_t)*v;
        *p += *v;
        return 0;
    default: /* groups (3, 4) and reserved types */
        return -1;
    }
}

/* A known field travels with its own wire type only. Protobuf lets a
 * field repeat (the last one wins); a BYTES field may not (S_TWICE_): a
 * payload given twice is a peer's bug or a trick, not something to pick
 * one of. */
#define S_TWICE_U32(x) 0
#define S_TWICE_ENUM(x) 0
#define S_TWICE_U64(x) 0
#define S_TWICE_STR(x) 0
#define S_TWICE_BYTES(x) ((x).ptr != NULL)
#define S_PARSE(member, number, type)                                                            \
    case number:                                                                                 \
        if (wt != S_WT_##type)                                                                   \
            return AB_EDECODE;                                                                   \
        if (S_TWICE_##type(h->member))                                                           \
            return AB_EINLINE;                                                                   \
        h->member = S_GET_##type(v, view);                                                       \
        break;
/* Every field at its default before parsing; absent strings are empty,
 * never NULL, as protobuf-c's are. Field by field rather than a memset:
 * the memset of the whole struct (rep stos) was 40 % of the parser's time
 * (perf annotate), as much as parsing the fields. */
#define S_CLEAR_U32(x) (x) = 0;
#define S_CLEAR_ENUM(x) (x) = 0;
#define S_CLEAR_U64(x) (x) = 0;
#define S_CLEAR_STR(x) (x) = (ab_view_t){"", 0};
#define S_CLEAR_BYTES(x) (x) = (ab_view_t){NULL, 0}; /* NULL: absent (a present one may be empty) */
#define S_CLEAR(member, number, type) S_CLEAR_##type(h->member)

int ab_header_parse(const void *buf, size_t len, ab_header_t *h)
{
    AB_HEADER_FIELD_LIST(S_CLEAR)
    const uint8_t *p = buf, *end = p + len;
    if (!buf && len)
        return AB_EDECODE;
    while (p < end) {
        uint64_t key, v = 0;
        if (s_varint(&p, end, &key) != 0)
            return AB_EDECODE;
        uint64_t field = key >> 3;
        int wt = (int)(key & 7);
        ab_view_t view = {NULL, 0};
        if (field == 0 || s_value(&p, end, wt, &v, &view) != 0)
            return AB_EDECODE;
        switch (field) {
            AB_HEADER_FIELD_LIST(S_PARSE)
        default:
            break; /* unknown field: skipped (newer peer) */
        }
    }
    return AB_OK;
}

/* A field the kind requires (AB_KIND_LIST's REQUIRED) is at its default. */
#define S_REQUIRED(member, number, type)                                                         \
    if ((need & AB_HF_BIT(member)) && !S_ISSET_##type(h->member))                                \
        return AB_EMISSING;

int ab_header_validate(const ab_header_t *h)
{
    if (h->version == 0 || h->kind == 0)
        return AB_EMISSING;
    if (h->version != AB_PROTOCOL_VERSION)
        return AB_EVERSION;
    if (h->kind > AB_KIND_MAX_)
        return AB_EDECODE;
    uint32_t need = ab_kind_required(h->kind);
    AB_HEADER_FIELD_LIST(S_REQUIRED)
    return AB_OK;
}

/* The inline payload of a parsed H (see codec.h): checked against the
 * frame count and the limits, moved into *PAYLOAD. AB_OK when it is fine
 * (or absent). */
static int s_take_inline(ab_header_t *h, size_t nframes, size_t frame0, const ab_limits_t *lim,
                         ab_frame_t *payload)
{
    ab_view_t v = h->inline_payload;
    if (!v.ptr)
        return AB_OK;
    h->inline_payload = (ab_view_t){NULL, 0};
    if (nframes != 1 || v.len > AB_INLINE_LIMIT)
        return AB_EINLINE;
    /* The header is the frame without the field: key (1 byte), length. */
    size_t field = S_KEYLEN(AB_HF_NUMBER_inline_payload) + ab_varint_size(v.len) + v.len;
    if (frame0 - field > lim->max_header)
        return AB_EHDRSIZE;
    if (v.len > lim->max_payload)
        return AB_EPAYLOADSIZE;
    payload->data = v.ptr;
    payload->size = v.len;
    return AB_OK;
}

int ab_msg_decode(const ab_frame_t *frames, size_t nframes, const ab_limits_t *lim,
                  ab_header_t *h, ab_frame_t *payload)
{
    ab_limits_t def;
    if (!lim) {
        ab_limits_default(&def);
        lim = &def;
    }
    payload->data = NULL;
    payload->size = 0;
    /* The frame may hold an inline payload on top of the header: the
     * header part is checked once parsed (s_take_inline). */
    if (nframes < 1 || nframes > 2 || !frames ||
        frames[0].size > lim->max_header + AB_INLINE_LIMIT + 8) {
        memset(h, 0, sizeof *h); /* else ab_header_parse clears it */
        if (nframes < 1 || nframes > 2 || !frames)
            return AB_EFRAMES;
        /* Only its id and kind are read (views into the frame, work
         * bounded by its size like its receiving): the refusal answers the
         * sender's call instead of leaving it to its deadline. */
        ab_header_t tmp;
        if (ab_header_parse(frames[0].data, frames[0].size, &tmp) == AB_OK)
            h->id = tmp.id, h->kind = tmp.kind;
        return AB_EHDRSIZE;
    }
    int rc = ab_header_parse(frames[0].data, frames[0].size, h);
    if (frames[0].size > lim->max_header && (rc != AB_OK || !h->inline_payload.ptr))
        return AB_EHDRSIZE; /* no inline field to account for the excess */
    if (rc == AB_OK)
        rc = s_take_inline(h, nframes, frames[0].size, lim, payload);
    if (rc != AB_OK)
        return rc;
    rc = ab_header_validate(h);
    if (rc != AB_OK)
        return rc;
    if (nframes == 2) {
        if (frames[1].size > lim->max_payload)
            return AB_EPAYLOADSIZE;
        *payload = frames[1];
        if (!payload->data)
            payload->data = "";
    }
    return AB_OK;
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

/* Bytes field NUMBER of TYPE takes when X is set (S_SIZE_), at most (S_BOUND_),
 * and the writer of each (S_PUT_: returns the byte after it). */
#define S_SIZE_U32(n, x) ((x) ? S_KEYLEN(n) + ab_varint_size(x) : 0)
#define S_SIZE_ENUM S_SIZE_U32
#define S_SIZE_U64 S_SIZE_U32
#define S_SIZE_STR(n, x) ((x).len ? S_KEYLEN(n) + ab_varint_size((x).len) + (x).len : 0)
#define S_SIZE_BYTES S_SIZE_STR
#define S_BOUND_U32(n, x) (S_KEYLEN(n) + 10)
#define S_BOUND_ENUM S_BOUND_U32
#define S_BOUND_U64 S_BOUND_U32
#define S_BOUND_STR(n, x) (S_KEYLEN(n) + 10 + (x).len)
#define S_BOUND_BYTES S_BOUND_STR
#define S_PUT_U32(p, n, x) s_put_v(p, (uint32_t)(n) << 3 | WT_VARINT, x)
#define S_PUT_ENUM S_PUT_U32
#define S_PUT_U64 S_PUT_U32
#define S_PUT_STR(p, n, x) s_put_s(p, (uint32_t)(n) << 3 | WT_LEN, x)
#define S_PUT_BYTES S_PUT_STR
#define S_SIZE(member, number, type) +S_SIZE_##type(number, h->member)
#define S_BOUND(member, number, type) +S_BOUND_##type(number, h->member)
#define S_PUT(member, number, type) p = S_PUT_##type(p, number, h->member);

size_t ab_header_size(const ab_header_t *h)
{
    return 0 AB_HEADER_FIELD_LIST(S_SIZE);
}

/* A field's key: one byte for fields 1..15, the ones on every message. */
static inline uint8_t *s_put_key(uint8_t *p, uint32_t key)
{
    if (key < 0x80) {
        *p++ = (uint8_t)key;
        return p;
    }
    return s_put_varint(p, key);
}

static inline uint8_t *s_put_v(uint8_t *p, uint32_t key, uint64_t v)
{
    if (!v)
        return p;
    p = s_put_key(p, key);
    return s_put_varint(p, v);
}

static inline uint8_t *s_put_s(uint8_t *p, uint32_t key, ab_view_t s)
{
    if (!s.len)
        return p;
    p = s_put_key(p, key);
    p = s_put_varint(p, s.len);
    memcpy(p, s.ptr, s.len);
    return p + s.len;
}

/* Every field at its longest, plus the strings. Lets the common case skip
 * the exact sizing pass. */
size_t ab_header_bound(const ab_header_t *h)
{
    return 0 AB_HEADER_FIELD_LIST(S_BOUND);
}

/* The fields of H into BUF, which the caller knows is large enough. */
static size_t s_encode(const ab_header_t *h, uint8_t *buf)
{
    uint8_t *p = buf;
    AB_HEADER_FIELD_LIST(S_PUT)
    return (size_t)(p - buf);
}

size_t ab_header_encode(const ab_header_t *h, void *buf, size_t cap)
{
    if (ab_header_bound(h) > cap && ab_header_size(h) > cap)
        return 0;
    return s_encode(h, buf);
}

uint8_t *ab_header_encode_buf(const ab_header_t *h, uint8_t *stack, size_t cap, size_t *len)
{
    uint8_t *buf = stack;
    if (ab_header_bound(h) > cap) { /* sized once here, not again by ab_header_encode */
        cap = ab_header_size(h);
        if (!(buf = malloc(cap)))
            return NULL;
    }
    *len = s_encode(h, buf);
    return buf;
}

size_t ab_msg_inline_size(size_t hlen, size_t plen)
{
    return hlen + S_KEYLEN(AB_HF_NUMBER_inline_payload) + ab_varint_size(plen) + plen;
}

void ab_msg_inline_put(uint8_t *out, const void *hdr, size_t hlen, const void *pl, size_t plen)
{
    if (hlen)
        memcpy(out, hdr, hlen);
    uint8_t *p = s_put_key(out + hlen, (uint32_t)AB_HF_NUMBER_inline_payload << 3 | WT_LEN);
    p = s_put_varint(p, plen);
    if (plen)
        memcpy(p, pl, plen);
}

/* ---- Kinds and error codes: switches expanded from vocab.h. A value or a
 * status listed twice is a duplicate case label: it does not compile. ---- */

/* Kinds are dense from 1 (AB_KIND_MAX_ is their count): with the switches
 * below rejecting duplicates, these make a gap impossible. */
#define S_KIND_DENSE(constant, value, name, required)                                            \
    _Static_assert((value) >= 1 && (value) <= AB_KIND_MAX_, "kind " name " out of 1..count");
AB_KIND_LIST(S_KIND_DENSE)

const char *ab_kind_name(uint32_t kind)
{
    switch (kind) {
    case 0:
        return "UNSPECIFIED";
#define S_KIND_NAME(constant, value, name, required)                                             \
    case value:                                                                                  \
        return name;
        AB_KIND_LIST(S_KIND_NAME)
    default:
        return "UNKNOWN";
    }
}

uint32_t ab_kind_required(uint32_t kind)
{
    switch (kind) {
#define S_KIND_REQUIRED(constant, value, name, required)                                         \
    case value:                                                                                  \
        return required;
        AB_KIND_LIST(S_KIND_REQUIRED)
    default:
        return 0;
    }
}

int ab_status_from_wire(uint32_t code)
{
    switch (code) {
#define S_FROM_WIRE(constant, value, name, status)                                               \
    case value:                                                                                  \
        return status;
        AB_WIRE_ERROR_LIST(S_FROM_WIRE)
    default:
        return AB_EINTERNAL;
    }
}

uint32_t ab_status_to_wire(int status)
{
    switch (status) {
#define S_TO_WIRE(constant, value, name, status)                                                 \
    case status:                                                                                 \
        return constant;
        AB_WIRE_ERROR_LIST(S_TO_WIRE)
#define S_AS_MALFORMED(status) case status:
        AB_STATUS_AS_MALFORMED_LIST(S_AS_MALFORMED)
        return AB_ERR_MALFORMED;
    default:
        return AB_ERR_INTERNAL;
    }
}

/* Positions of the rows of AB_WIRE_ERROR_LIST. */
#define S_WIRE_POS(constant, value, name, status) S_POS_##constant,
enum { AB_WIRE_ERROR_LIST(S_WIRE_POS) };

int ab_wire_error_index(uint32_t code)
{
    switch (code) {
#define S_WIRE_INDEX(constant, value, name, status)                                              \
    case value:                                                                                  \
        return S_POS_##constant;
        AB_WIRE_ERROR_LIST(S_WIRE_INDEX)
    default:
        return -1;
    }
}

uint32_t ab_wire_error_at(int i)
{
#define S_WIRE_VALUE(constant, value, name, status) value,
    static const uint32_t codes[AB_WIRE_ERROR_COUNT] = {AB_WIRE_ERROR_LIST(S_WIRE_VALUE)};
    return i >= 0 && i < AB_WIRE_ERROR_COUNT ? codes[i] : AB_ERR_INTERNAL;
}

const char *ab_wire_error_name(uint32_t code)
{
    switch (code) {
#define S_WIRE_NAME(constant, value, name, status)                                               \
    case value:                                                                                  \
        return name;
        AB_WIRE_ERROR_LIST(S_WIRE_NAME)
    default:
        return "UNKNOWN";
    }
}
