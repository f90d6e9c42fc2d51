/*
 * codec.c - hand-written protobuf wire format for agentbus.Header.
 *
 * Why not protobuf_c_message_unpack? It allocates the message and a copy of
 * every string, and the broker decodes a header for every message it routes.
 * Parsing into views costs a few dozen nanoseconds and no allocation. The
 * typed payloads (Register, Stats, ...) are rare and use protobuf-c.
 */
#include "codec.h"
#include "agentbus.h"

#include <stdlib.h>
#include <string.h>

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

void ab_limits_default(ab_limits_t *lim)
{
    lim->max_header = AB_DEFAULT_MAX_HEADER;
    lim->max_payload = AB_DEFAULT_MAX_PAYLOAD;
}

ab_header_t ab_header_init(uint32_t kind)
{
    ab_header_t h;
    memset(&h, 0, sizeof h);
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
static int s_varint(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
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

int ab_header_parse(const void *buf, size_t len, ab_header_t *h)
{
    memset(h, 0, sizeof *h);
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
        if (field == 0)
            return AB_EDECODE;
        switch (wt) {
        case WT_VARINT:
            if (s_varint(&p, end, &v) != 0)
                return AB_EDECODE;
            break;
        case WT_I64:
            if ((size_t)(end - p) < 8)
                return AB_EDECODE;
            p += 8;
            break;
        case WT_I32:
            if ((size_t)(end - p) < 4)
                return AB_EDECODE;
            p += 4;
            break;
        case WT_LEN:
            if (s_varint(&p, end, &v) != 0 || v > (uint64_t)(end - p))
                return AB_EDECODE;
            view.ptr = (const char *)p;
            view.len = (size_t)v;
            p += v;
            break;
        default: /* groups (3, 4) and reserved types */
            return AB_EDECODE;
        }
        int is_len = (field == 5 || field == 6 || field == 12 || field == 40 || field == 41);
        int known = field <= 13 || field == 40 || field == 41 || field == 60;
        if (known && (wt == WT_LEN) != is_len)
            return AB_EDECODE;
        if (known && !is_len && wt != WT_VARINT)
            return AB_EDECODE;
        switch (field) {
        case 1: h->version = (uint32_t)v; break;
        case 2: h->kind = (uint32_t)v; break;
        case 3: h->id = v; break;
        case 4: h->correlation_id = v; break;
        case 5: h->sender = view; break;
        case 6: h->target = view; break;
        case 7: h->priority = (uint32_t)v; break;
        case 8: h->timeout_ms = (uint32_t)v; break;
        case 9: h->flags = (uint32_t)v; break;
        case 10: h->original_size = v; break;
        case 11: h->error_code = (uint32_t)v; break;
        case 12: h->error_text = view; break;
        case 13: h->credit = (uint32_t)v; break;
        case 40: h->model = view; break;
        case 41: h->worker = view; break;
        case 20:
            if (wt != WT_VARINT)
                return AB_EDECODE;
            h->features = (uint32_t)v;
            break;
        case 60: h->cache_ttl_s = (uint32_t)v; break;
        default: break; /* unknown field: skipped (newer peer) */
        }
    }
    if (!h->sender.ptr)
        h->sender.ptr = "";
    if (!h->target.ptr)
        h->target.ptr = "";
    if (!h->error_text.ptr)
        h->error_text.ptr = "";
    if (!h->model.ptr)
        h->model.ptr = "";
    if (!h->worker.ptr)
        h->worker.ptr = "";
    return AB_OK;
}

int ab_header_validate(const ab_header_t *h)
{
    if (h->version == 0 || h->kind == 0)
        return AB_EMISSING;
    if (h->version != AB_PROTOCOL_VERSION)
        return AB_EVERSION;
    if (h->kind > AB_KIND_MAX_)
        return AB_EDECODE;
    switch (h->kind) {
    case AB_KIND_REQUEST:
        if (h->id == 0 || h->target.len == 0)
            return AB_EMISSING;
        break;
    case AB_KIND_PARTIAL:
    case AB_KIND_REPLY:
        if (h->correlation_id == 0)
            return AB_EMISSING;
        break;
    case AB_KIND_ERROR:
        if (h->error_code == 0)
            return AB_EMISSING;
        break;
    case AB_KIND_REGISTER:
        if (h->target.len == 0 || h->credit == 0)
            return AB_EMISSING;
        break;
    case AB_KIND_CONTROL:
        if (h->id == 0 || h->target.len == 0)
            return AB_EMISSING;
        break;
    default:
        break;
    }
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
    memset(h, 0, sizeof *h);
    payload->data = NULL;
    payload->size = 0;
    if (nframes < 1 || nframes > 2 || !frames)
        return AB_EFRAMES;
    if (frames[0].size > lim->max_header)
        return AB_EHDRSIZE;
    int rc = ab_header_parse(frames[0].data, frames[0].size, h);
    if (rc != AB_OK)
        return rc;
    rc = ab_header_validate(h);
    if (rc != AB_OK)
        return rc;
    if (nframes == 2) {
        if (frames[1].size > lim->max_payload)
            return AB_EPAYLOADSIZE;
        *payload = frames[1];
    }
    return AB_OK;
}

static size_t s_varint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
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

/* Field tags of agentbus.Header are all < 16: one byte each. */
static size_t s_vfield_size(uint64_t v)
{
    return v ? 1 + s_varint_size(v) : 0;
}

static size_t s_sfield_size(ab_view_t s)
{
    return s.len ? 1 + s_varint_size(s.len) + s.len : 0;
}

size_t ab_header_size(const ab_header_t *h)
{
    return s_vfield_size(h->version) + s_vfield_size(h->kind) + s_vfield_size(h->id) +
           s_vfield_size(h->correlation_id) + s_sfield_size(h->sender) +
           s_sfield_size(h->target) + s_vfield_size(h->priority) +
           s_vfield_size(h->timeout_ms) + s_vfield_size(h->flags) +
           s_vfield_size(h->original_size) + s_vfield_size(h->error_code) +
           s_sfield_size(h->error_text) + s_vfield_size(h->credit) +
           (h->model.len ? 1 + s_sfield_size(h->model) : 0) +
           (h->worker.len ? 1 + s_sfield_size(h->worker) : 0) +
           (h->features ? 1 + s_vfield_size(h->features) : 0) + /* tag 20: two bytes */
           (h->cache_ttl_s ? 1 + s_vfield_size(h->cache_ttl_s) : 0);
}

static uint8_t *s_put_v(uint8_t *p, unsigned field, uint64_t v)
{
    if (!v)
        return p;
    *p++ = (uint8_t)(field << 3 | WT_VARINT);
    return s_put_varint(p, v);
}

static uint8_t *s_put_s(uint8_t *p, unsigned field, ab_view_t s)
{
    if (!s.len)
        return p;
    *p++ = (uint8_t)(field << 3 | WT_LEN);
    p = s_put_varint(p, s.len);
    memcpy(p, s.ptr, s.len);
    return p + s.len;
}

/* A varint field with a tag >= 16 (two-byte key). */
static uint8_t *s_put_v2(uint8_t *p, unsigned field, uint64_t v)
{
    if (!v)
        return p;
    p = s_put_varint(p, (uint64_t)field << 3 | WT_VARINT);
    return s_put_varint(p, v);
}

/* A string field with a tag >= 16 (two-byte key). */
static uint8_t *s_put_s2(uint8_t *p, unsigned field, ab_view_t s)
{
    if (!s.len)
        return p;
    p = s_put_varint(p, (uint64_t)field << 3 | WT_LEN);
    p = s_put_varint(p, s.len);
    memcpy(p, s.ptr, s.len);
    return p + s.len;
}

/* 13 fields of at most 11 bytes of tag + varint, plus the strings. Lets the
 * common case skip the exact sizing pass. */
size_t ab_header_bound(const ab_header_t *h)
{
    return 18 * 12 + h->sender.len + h->target.len + h->error_text.len + h->model.len +
           h->worker.len;
}

size_t ab_header_encode(const ab_header_t *h, void *buf, size_t cap)
{
    if (ab_header_bound(h) > cap && ab_header_size(h) > cap)
        return 0;
    uint8_t *p = buf;
    p = s_put_v(p, 1, h->version);
    p = s_put_v(p, 2, h->kind);
    p = s_put_v(p, 3, h->id);
    p = s_put_v(p, 4, h->correlation_id);
    p = s_put_s(p, 5, h->sender);
    p = s_put_s(p, 6, h->target);
    p = s_put_v(p, 7, h->priority);
    p = s_put_v(p, 8, h->timeout_ms);
    p = s_put_v(p, 9, h->flags);
    p = s_put_v(p, 10, h->original_size);
    p = s_put_v(p, 11, h->error_code);
    p = s_put_s(p, 12, h->error_text);
    p = s_put_v(p, 13, h->credit);
    p = s_put_s2(p, 40, h->model);
    p = s_put_s2(p, 41, h->worker);
    if (h->features) {
        p = s_put_varint(p, 20u << 3 | WT_VARINT);
        p = s_put_varint(p, h->features);
    }
    p = s_put_v2(p, 60, h->cache_ttl_s);
    return (size_t)(p - (uint8_t *)buf);
}

uint8_t *ab_header_encode_buf(const ab_header_t *h, uint8_t *stack, size_t cap, size_t *len)
{
    uint8_t *buf = stack;
    if (ab_header_bound(h) > cap) {
        cap = ab_header_size(h);
        if (!(buf = malloc(cap)))
            return NULL;
    }
    *len = ab_header_encode(h, buf, cap);
    return buf;
}

static const struct {
    uint32_t wire;
    int status;
    const char *name;
} s_errmap[AB_ERR_COUNT_] = {
    {AB_ERR_NONE, AB_OK, "NONE"},
    {AB_ERR_NO_SERVICE, AB_ENOSERVICE, "NO_SERVICE"},
    {AB_ERR_BUSY, AB_EBUSY, "BUSY"},
    {AB_ERR_DEADLINE, AB_EDEADLINE, "DEADLINE"},
    {AB_ERR_MALFORMED, AB_EMALFORMED, "MALFORMED"},
    {AB_ERR_WORKER_LOST, AB_EWORKERLOST, "WORKER_LOST"},
    {AB_ERR_INTERNAL, AB_EINTERNAL, "INTERNAL"},
    {AB_ERR_UNSUPPORTED_VERSION, AB_EVERSION, "UNSUPPORTED_VERSION"},
    {AB_ERR_UNSUPPORTED, AB_EUNSUPPORTED, "UNSUPPORTED"},
    {AB_ERR_APPLICATION, AB_EAPPLICATION, "APPLICATION"},
};

/* Codes outside the dense table (inference, direct messages, pub/sub). */
static const struct {
    uint32_t wire;
    int status;
    const char *name;
} s_errmap_ext[] = {
    {AB_ERR_MODEL_NOT_FOUND, AB_EMODEL, "MODEL_NOT_FOUND"},
    {AB_ERR_BAD_REQUEST, AB_EBADREQUEST, "BAD_REQUEST"},
    {AB_ERR_BACKEND_BUSY, AB_EBACKENDBUSY, "BACKEND_BUSY"},
    {AB_ERR_BACKEND, AB_EBACKEND, "BACKEND"},
    {AB_ERR_CANCELLED, AB_ECANCELLED, "CANCELLED"},
    {AB_ERR_NAME_TAKEN, AB_ENAMETAKEN, "NAME_TAKEN"},
    {AB_ERR_BAD_NAME, AB_EBADNAME, "BAD_NAME"},
    {AB_ERR_TOO_LARGE, AB_ETOOLARGE, "TOO_LARGE"},
    {AB_ERR_NO_AGENT, AB_ENOAGENT, "NO_AGENT"},
};
#define AB_ERRMAP_EXT_N (sizeof s_errmap_ext / sizeof s_errmap_ext[0])

int ab_status_from_wire(uint32_t code)
{
    if (code < AB_ERR_COUNT_)
        return s_errmap[code].status;
    for (size_t i = 0; i < AB_ERRMAP_EXT_N; i++)
        if (s_errmap_ext[i].wire == code)
            return s_errmap_ext[i].status;
    return AB_EINTERNAL;
}

uint32_t ab_status_to_wire(int status)
{
    for (size_t i = 0; i < AB_ERR_COUNT_; i++)
        if (s_errmap[i].status == status)
            return s_errmap[i].wire;
    for (size_t i = 0; i < AB_ERRMAP_EXT_N; i++)
        if (s_errmap_ext[i].status == status)
            return s_errmap_ext[i].wire;
    /* Codec rejections all reach the peer as MALFORMED. */
    if (status <= AB_EFRAMES && status >= AB_EDECODE)
        return status == AB_EVERSION ? AB_ERR_UNSUPPORTED_VERSION : AB_ERR_MALFORMED;
    if (status == AB_EBATCH || status == AB_ELZ4)
        return AB_ERR_MALFORMED;
    return AB_ERR_INTERNAL;
}


const char *ab_wire_error_name(uint32_t code)
{
    if (code < AB_ERR_COUNT_)
        return s_errmap[code].name;
    for (size_t i = 0; i < AB_ERRMAP_EXT_N; i++)
        if (s_errmap_ext[i].wire == code)
            return s_errmap_ext[i].name;
    return "UNKNOWN";
}

const char *ab_kind_name(uint32_t kind)
{
    static const char *names[] = {"UNSPECIFIED", "HELLO",     "REGISTER", "REQUEST",
                                  "PARTIAL",     "REPLY",     "ERROR",    "SEND",
                                  "PUBLISH",     "SUBSCRIBE", "HEARTBEAT", "DISCOVER",
                                  "CONTROL",     "BATCH",     "CANCEL",   "BYE"};
    return kind <= AB_KIND_MAX_ ? names[kind] : "UNKNOWN";
}
