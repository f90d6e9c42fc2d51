/*
 * codec.h - I/O-free encoding and decoding of agentbus messages.
 *
 * A message is one Header frame plus an optional payload frame. The Header is
 * the protobuf message agentbus.Header of proto/agentbus.proto. This codec
 * reads and writes its wire format directly, without allocating: a decoded
 * header holds views into the caller's buffer (valid while that buffer is).
 * The hot path (broker routing) needs exactly that; tests/unit/test_codec.c
 * checks that the bytes agree with protobuf-c's generated code both ways.
 *
 * Nothing here asserts or aborts on input: every length and count is checked
 * before use and a bad message yields a distinct negative AB_E* code.
 */
#ifndef AB_CODEC_H
#define AB_CODEC_H

#include <stddef.h>
#include <stdint.h>

#define AB_PROTOCOL_VERSION 1
#define AB_DEFAULT_MAX_HEADER (64u * 1024u)
#define AB_DEFAULT_MAX_PAYLOAD (64u * 1024u * 1024u)

/* Mirrors agentbus.Kind (checked against the generated enum in a test). */
enum {
    AB_KIND_HELLO = 1,
    AB_KIND_REGISTER = 2,
    AB_KIND_REQUEST = 3,
    AB_KIND_PARTIAL = 4,
    AB_KIND_REPLY = 5,
    AB_KIND_ERROR = 6,
    AB_KIND_SEND = 7,
    AB_KIND_PUBLISH = 8,
    AB_KIND_SUBSCRIBE = 9,
    AB_KIND_HEARTBEAT = 10,
    AB_KIND_DISCOVER = 11,
    AB_KIND_CONTROL = 12,
    AB_KIND_BATCH = 13,
    AB_KIND_CANCEL = 14,
    AB_KIND_BYE = 15,
    AB_KIND_MAX_ = 15
};

/* Mirrors agentbus.ErrorCode. */
enum {
    AB_ERR_NONE = 0,
    AB_ERR_NO_SERVICE = 1,
    AB_ERR_BUSY = 2,
    AB_ERR_DEADLINE = 3,
    AB_ERR_MALFORMED = 4,
    AB_ERR_WORKER_LOST = 5,
    AB_ERR_INTERNAL = 6,
    AB_ERR_UNSUPPORTED_VERSION = 7,
    AB_ERR_UNSUPPORTED = 8,
    AB_ERR_APPLICATION = 9,
    AB_ERR_COUNT_ = 10,
    /* issue 7: inference (outside the dense 0..COUNT_-1 table) */
    AB_ERR_MODEL_NOT_FOUND = 20,
    AB_ERR_BAD_REQUEST = 21,
    AB_ERR_BACKEND_BUSY = 22,
    AB_ERR_BACKEND = 23,
    AB_ERR_CANCELLED = 24,
    /* Direct messages and pub/sub (outside the dense table above). */
    AB_ERR_NAME_TAKEN = 30,
    AB_ERR_BAD_NAME = 31,
    AB_ERR_TOO_LARGE = 32,
    AB_ERR_NO_AGENT = 33
};

/* Mirrors agentbus.Flag. */
enum {
    AB_FLAG_LZ4 = 1,
    AB_FLAG_NO_CACHE = 2,
    AB_FLAG_NO_STORE = 4,
    AB_FLAG_CACHEABLE = 8,
    AB_FLAG_NON_IDEMPOTENT = 16,
    AB_FLAG_WATCH = 256,   /* issue 5: DISCOVER subscribes to changes */
    AB_FLAG_DRAINING = 512, /* issue 5: BYE announces a drain */
    AB_FLAG_WANT_RECEIPT = 1 << 16,
    AB_FLAG_RECEIPT = 1 << 17,
    AB_FLAG_GAP = 1 << 18,
    AB_FLAG_UNSUBSCRIBE = 1 << 19,
    AB_FLAG_LZ4_SKIPPED = 1u << 20, /* sender tried lz4; the saving was too small */
    AB_FLAG_ACCEPT_LZ4 = 1u << 21   /* broker -> worker: the client reads lz4 replies */
};

/* Feature bits (Hello.features, Register.features, Header.features). */
enum {
    AB_FEATURE_BATCH = 1u << 0, /* reads KIND_BATCH (common/batch.h) */
    AB_FEATURE_LZ4 = 1u << 1    /* reads lz4-compressed payloads (common/compress.h) */
};

/* A view of bytes owned by someone else. Not NUL-terminated. */
typedef struct {
    const char *ptr;
    size_t len;
} ab_view_t;

typedef struct {
    uint32_t version;
    uint32_t kind;
    uint64_t id;
    uint64_t correlation_id;
    ab_view_t sender;
    ab_view_t target;
    uint32_t priority;
    uint32_t timeout_ms;
    uint32_t flags;
    uint64_t original_size;
    uint32_t error_code;
    ab_view_t error_text;
    uint32_t credit;
    ab_view_t model;  /* field 40: REQUEST's model, for placement */
    ab_view_t worker; /* field 41: REQUEST pinned to this worker */
    uint32_t features; /* field 20: broker -> peer, feature bits it reads */
    uint32_t cache_ttl_s; /* field 60: REQUEST: cache TTL (s) for its reply; 0 = default */
} ab_header_t;

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
 * Returns AB_OK or AB_EDECODE (truncated varint or length, bad wire type,
 * wire type not matching a known field, over-long varint). */
int ab_header_parse(const void *buf, size_t len, ab_header_t *h);

/* Checks the version and the fields each kind requires.
 * AB_EMISSING (version 0, kind 0, or a kind's required field absent),
 * AB_EVERSION (a version other than AB_PROTOCOL_VERSION),
 * AB_EDECODE (kind out of range). */
int ab_header_validate(const ab_header_t *h);

/* Full check of a received message (without the ROUTER's identity frame):
 * frame count (1 or 2: AB_EFRAMES), header size (AB_EHDRSIZE), parse,
 * validation, payload size (AB_EPAYLOADSIZE). On AB_OK *h is filled and
 * *payload is the payload frame (size 0, data NULL when there is none).
 * LIM may be NULL for the defaults. On error *h holds what could be parsed
 * (useful to route an ERROR back when kind and id were read). */
int ab_msg_decode(const ab_frame_t *frames, size_t nframes, const ab_limits_t *lim,
                  ab_header_t *h, ab_frame_t *payload);

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

/* Convenience: a view of a C string (NULL gives an empty view). */
ab_view_t ab_view_of(const char *s);

/* 1 if view V equals C string S. */
int ab_view_eq(ab_view_t v, const char *s);

/* Copies V into BUF (CAP bytes) with a terminating NUL, truncating. */
void ab_view_copy(ab_view_t v, char *buf, size_t cap);

/* Wire ErrorCode <-> ab_status_t (AB_ERR_NONE <-> AB_OK; unknown codes map
 * to AB_EINTERNAL / AB_ERR_INTERNAL). */
int ab_status_from_wire(uint32_t code);
uint32_t ab_status_to_wire(int status);
/* Name of a wire error code ("NO_SERVICE", ...), "UNKNOWN" if out of range. */
const char *ab_wire_error_name(uint32_t code);
/* Name of a kind ("REQUEST", ...), "UNKNOWN" if out of range. */
const char *ab_kind_name(uint32_t kind);

#endif
