/*
 * vocab.h - the wire vocabulary of agentbus, as lists.
 *
 * Every message kind, wire error code, header flag and header field is one
 * row here; the enums, names, the ErrorCode <-> ab_status_t maps, the
 * ab_header_t struct and the header encoder and decoder (common/codec.c)
 * are all expanded from these rows, so adding a word to the protocol is one
 * row here plus its line in proto/agentbus.proto. The public status codes
 * are the list AB_STATUS_LIST in include/agentbus.h, which this file refers
 * to by constant. tests/unit/test_vocab.c checks every row against
 * protobuf-c's descriptors of proto/agentbus.proto (names, numbers, types)
 * and fails when the two disagree or when either has a row the other lacks.
 *
 * X-macro lists: a user defines X with the row's parameters, expands the
 * list, then undefines X.
 */
#ifndef AB_VOCAB_H
#define AB_VOCAB_H

#include "agentbus.h"

#include <stdint.h>

/* agentbus.Kind: X(CONSTANT, VALUE, NAME, REQUIRED).
 * NAME is the .proto's name without "KIND_". REQUIRED is the set of header
 * fields (AB_HF_BIT) that must be non-zero / non-empty for a message of the
 * kind to be valid (ab_header_validate); version and kind always are.
 * Values are dense from 1 (0 is KIND_UNSPECIFIED, never valid). */
#define AB_KIND_LIST(X)                                                                          \
    X(AB_KIND_HELLO, 1, "HELLO", 0)         /* peer -> broker: I am here */                      \
    X(AB_KIND_REGISTER, 2, "REGISTER", AB_HF_BIT(target) | AB_HF_BIT(credit))                    \
    X(AB_KIND_REQUEST, 3, "REQUEST", AB_HF_BIT(id) | AB_HF_BIT(target))                          \
    X(AB_KIND_PARTIAL, 4, "PARTIAL", AB_HF_BIT(correlation_id))                                  \
    X(AB_KIND_REPLY, 5, "REPLY", AB_HF_BIT(correlation_id))                                      \
    X(AB_KIND_ERROR, 6, "ERROR", AB_HF_BIT(error_code))                                          \
    X(AB_KIND_SEND, 7, "SEND", 0)           /* direct message to a named agent */                \
    X(AB_KIND_PUBLISH, 8, "PUBLISH", 0)     /* message to a topic */                             \
    X(AB_KIND_SUBSCRIBE, 9, "SUBSCRIBE", 0) /* (un)subscribe a topic pattern */                  \
    X(AB_KIND_HEARTBEAT, 10, "HEARTBEAT", 0)                                                     \
    X(AB_KIND_DISCOVER, 11, "DISCOVER", 0)  /* directory query or watch */                       \
    X(AB_KIND_CONTROL, 12, "CONTROL", AB_HF_BIT(id) | AB_HF_BIT(target))                         \
    X(AB_KIND_BATCH, 13, "BATCH", 0)        /* many messages in one (common/batch.h) */          \
    X(AB_KIND_CANCEL, 14, "CANCEL", 0)                                                           \
    X(AB_KIND_BYE, 15, "BYE", 0)                                                                 \
    X(AB_KIND_LINK, 16, "LINK", 0)          /* broker <-> broker link control (link.h) */

/* agentbus.ErrorCode: X(CONSTANT, VALUE, NAME, STATUS).
 * NAME is the .proto's name without "ERR_" and equals ab_status_name(STATUS)
 * (except NONE, whose status is AB_OK). Each row is a pair both ways:
 * ab_status_from_wire(VALUE) == STATUS and ab_status_to_wire(STATUS) ==
 * VALUE. A status in no row travels as INTERNAL, or as MALFORMED when it is
 * in AB_STATUS_AS_MALFORMED_LIST. */
#define AB_WIRE_ERROR_LIST(X)                                                                    \
    X(AB_ERR_NONE, 0, "NONE", AB_OK)                                                             \
    X(AB_ERR_NO_SERVICE, 1, "NO_SERVICE", AB_ENOSERVICE)                                         \
    X(AB_ERR_BUSY, 2, "BUSY", AB_EBUSY)                                                          \
    X(AB_ERR_DEADLINE, 3, "DEADLINE", AB_EDEADLINE)                                              \
    X(AB_ERR_MALFORMED, 4, "MALFORMED", AB_EMALFORMED)                                           \
    X(AB_ERR_WORKER_LOST, 5, "WORKER_LOST", AB_EWORKERLOST)                                      \
    X(AB_ERR_INTERNAL, 6, "INTERNAL", AB_EINTERNAL)                                              \
    X(AB_ERR_UNSUPPORTED_VERSION, 7, "UNSUPPORTED_VERSION", AB_EVERSION)                         \
    X(AB_ERR_UNSUPPORTED, 8, "UNSUPPORTED", AB_EUNSUPPORTED)                                     \
    X(AB_ERR_APPLICATION, 9, "APPLICATION", AB_EAPPLICATION)                                     \
    X(AB_ERR_NOT_FOUND, 10, "NOT_FOUND", AB_ENOTFOUND)                                           \
    X(AB_ERR_MODEL_NOT_FOUND, 20, "MODEL_NOT_FOUND", AB_EMODEL)                                  \
    X(AB_ERR_BAD_REQUEST, 21, "BAD_REQUEST", AB_EBADREQUEST)                                     \
    X(AB_ERR_BACKEND_BUSY, 22, "BACKEND_BUSY", AB_EBACKENDBUSY)                                  \
    X(AB_ERR_BACKEND, 23, "BACKEND", AB_EBACKEND)                                                \
    X(AB_ERR_CANCELLED, 24, "CANCELLED", AB_ECANCELLED)                                          \
    X(AB_ERR_NAME_TAKEN, 30, "NAME_TAKEN", AB_ENAMETAKEN)                                        \
    X(AB_ERR_BAD_NAME, 31, "BAD_NAME", AB_EBADNAME)                                              \
    X(AB_ERR_TOO_LARGE, 32, "TOO_LARGE", AB_ETOOLARGE)                                           \
    X(AB_ERR_NO_AGENT, 33, "NO_AGENT", AB_ENOAGENT)                                          \
    X(AB_ERR_DENIED, 34, "DENIED", AB_EDENIED)

/* Statuses with no ErrorCode of their own that a peer is told as
 * MALFORMED: the reasons a receiver rejects a message it could not use.
 * X(STATUS). */
#define AB_STATUS_AS_MALFORMED_LIST(X)                                                           \
    X(AB_EFRAMES) X(AB_EHDRSIZE) X(AB_EMISSING) X(AB_EPAYLOADSIZE) X(AB_EDECODE) X(AB_EBATCH)    \
    X(AB_ELZ4) X(AB_EINLINE)

/* agentbus.Flag (bits of Header.flags): X(CONSTANT, VALUE, NAME).
 * NAME is the .proto's name without "FLAG_". */
#define AB_FLAG_LIST(X)                                                                          \
    X(AB_FLAG_LZ4, 1u << 0, "LZ4")               /* payload is lz4 (original_size set) */        \
    X(AB_FLAG_NO_CACHE, 1u << 1, "NO_CACHE")     /* don't read a cached reply */                 \
    X(AB_FLAG_NO_STORE, 1u << 2, "NO_STORE")     /* don't store the reply */                     \
    X(AB_FLAG_CACHEABLE, 1u << 3, "CACHEABLE")   /* caller marks the request cacheable */        \
    X(AB_FLAG_NON_IDEMPOTENT, 1u << 4, "NON_IDEMPOTENT") /* never retry elsewhere */             \
    X(AB_FLAG_WATCH, 1u << 8, "WATCH")           /* DISCOVER subscribes to changes */            \
    X(AB_FLAG_DRAINING, 1u << 9, "DRAINING")     /* BYE announces a drain */                     \
    X(AB_FLAG_WANT_RECEIPT, 1u << 16, "WANT_RECEIPT")                                            \
    X(AB_FLAG_RECEIPT, 1u << 17, "RECEIPT")                                                      \
    X(AB_FLAG_GAP, 1u << 18, "GAP")                                                              \
    X(AB_FLAG_UNSUBSCRIBE, 1u << 19, "UNSUBSCRIBE")                                              \
    X(AB_FLAG_LZ4_SKIPPED, 1u << 20, "LZ4_SKIPPED") /* sender tried lz4; saving too small */     \
    X(AB_FLAG_ACCEPT_LZ4, 1u << 21, "ACCEPT_LZ4") /* broker -> worker: client reads lz4 */      \
    X(AB_FLAG_ADMIN, 1u << 22, "ADMIN") /* broker -> worker: requester holds the admin role */  \
    X(AB_FLAG_NEW_PEER, 1u << 23, "NEW_PEER") /* HELLO answer: this HELLO began a new record */ \
    X(AB_FLAG_OVER_MAX_PAYLOAD, 1u << 24, "OVER_MAX_PAYLOAD") /* ERROR(TOO_LARGE): a peer's   \
                                                                  max payload, not a worker's */

/* agentbus.Header: X(MEMBER, NUMBER, TYPE), in field-number order (the
 * order protobuf-c writes fields in; the codec writes them in the list's
 * order, so both produce the same bytes). MEMBER is the field's name in the
 * .proto and in ab_header_t. TYPE is how it travels and is held:
 *   U32, U64  varint, uint32_t / uint64_t (a U32 keeps the low 32 bits)
 *   ENUM      varint of a .proto enum, held as uint32_t
 *   STR       length-delimited, held as an ab_view_t into the frame
 *   BYTES     as STR, but absent is {NULL, 0} and present once at most
 * A field at its default (0, empty) is not written, as protobuf does. */
#define AB_HEADER_FIELD_LIST(X)                                                                  \
    X(version, 1, U32)         /* required: AB_PROTOCOL_VERSION */                               \
    X(kind, 2, ENUM)           /* required: AB_KIND_* */                                         \
    X(id, 3, U64)              /* message id chosen by the sender */                             \
    X(correlation_id, 4, U64)  /* id of the message this one answers */                          \
    X(sender, 5, STR)          /* informational */                                               \
    X(target, 6, STR)          /* service, agent or topic */                                     \
    X(priority, 7, U32)                                                                          \
    X(timeout_ms, 8, U32)      /* remaining budget; 0 = broker default */                        \
    X(flags, 9, U32)           /* AB_FLAG_* bits */                                              \
    X(original_size, 10, U64)  /* payload size before compression */                            \
    X(error_code, 11, ENUM)    /* AB_ERR_* */                                                    \
    X(error_text, 12, STR)                                                                       \
    X(credit, 13, U32)         /* capacity; broker -> peer: heartbeat interval */                \
    X(inline_payload, 14, BYTES) /* the payload in the header frame (codec.h "Inline") */        \
    X(features, 20, U32)       /* broker -> peer: AB_FEATURE_* bits it reads */                  \
    X(model, 40, STR)          /* REQUEST: model it needs, for placement */                      \
    X(worker, 41, STR)         /* REQUEST: pinned to this worker */                              \
    X(cache_ttl_s, 60, U32)    /* REQUEST: cache TTL (s) of its reply; 0 = default */         \
    X(via, 70, STR)            /* REQUEST over a link: brokers crossed, comma-separated */       \
    X(hops_left, 71, U32)      /* REQUEST over a link: links it may still cross */               \
    X(origin_key, 72, STR)     /* REQUEST over a link: the sending agent's public key */          \
    X(origin_role, 73, U32)    /* REQUEST over a link: 1 + that key's role; 0 unknown */      \
    X(dests, 74, STR)          /* PUBLISH over a link: brokers this copy is for */

/* ---- Expansions every user needs --------------------------------------- */

#define AB_VOCAB_ENUM_(constant, value, ...) constant = value,
enum { AB_KIND_LIST(AB_VOCAB_ENUM_) };
enum { AB_WIRE_ERROR_LIST(AB_VOCAB_ENUM_) };
enum { AB_FLAG_LIST(AB_VOCAB_ENUM_) };
#undef AB_VOCAB_ENUM_

/* Counts of rows. Kinds are dense, so AB_KIND_MAX_ is also the largest. */
#define AB_VOCAB_ONE_(...) +1
enum {
    AB_KIND_MAX_ = 0 AB_KIND_LIST(AB_VOCAB_ONE_),
    AB_WIRE_ERROR_COUNT = 0 AB_WIRE_ERROR_LIST(AB_VOCAB_ONE_),
    AB_STATUS_COUNT = 0 AB_STATUS_LIST(AB_VOCAB_ONE_),
    AB_HEADER_FIELD_COUNT = 0 AB_HEADER_FIELD_LIST(AB_VOCAB_ONE_)
};
#undef AB_VOCAB_ONE_

/* AB_HF_<member>: a header field's position in AB_HEADER_FIELD_LIST;
 * AB_HF_BIT(member): its bit in a set of fields (AB_KIND_LIST's REQUIRED). */
#define AB_VOCAB_HF_(member, number, type) AB_HF_##member,
enum { AB_HEADER_FIELD_LIST(AB_VOCAB_HF_) };
#undef AB_VOCAB_HF_
#define AB_HF_BIT(member) (1u << AB_HF_##member)
/* AB_HF_NUMBER_<member>: a header field's number on the wire. */
#define AB_VOCAB_HFN_(member, number, type) AB_HF_NUMBER_##member = number,
enum { AB_HEADER_FIELD_LIST(AB_VOCAB_HFN_) };
#undef AB_VOCAB_HFN_

/* ---- Look-ups (common/codec.c), each expanded from the lists ---------- */

/* Wire ErrorCode <-> ab_status_t, as AB_WIRE_ERROR_LIST pairs them. An
 * unknown code maps to AB_EINTERNAL; a status in no row to AB_ERR_MALFORMED
 * (AB_STATUS_AS_MALFORMED_LIST) or AB_ERR_INTERNAL (any other). */
int ab_status_from_wire(uint32_t code);
uint32_t ab_status_to_wire(int status);

/* Name of a wire error code ("NO_SERVICE", ...), "UNKNOWN" if not in the list. */
const char *ab_wire_error_name(uint32_t code);

/* Position of wire CODE in AB_WIRE_ERROR_LIST (0 .. AB_WIRE_ERROR_COUNT-1),
 * or -1 when the list has no such code. Counters by code index by it. */
int ab_wire_error_index(uint32_t code);
/* The code at position I of AB_WIRE_ERROR_LIST (I in range). */
uint32_t ab_wire_error_at(int i);

/* Position of STATUS in AB_STATUS_LIST (0 .. AB_STATUS_COUNT-1), or -1. */
int ab_status_index(int status);
/* The status at position I of AB_STATUS_LIST (I in range). */
int ab_status_at(int i);

/* Name of a kind ("REQUEST", ...), "UNKNOWN" if out of range (0 is
 * "UNSPECIFIED"). */
const char *ab_kind_name(uint32_t kind);

/* Fields that must be set in a message of KIND (AB_HF_BIT set; 0 for a
 * kind out of range). */
uint32_t ab_kind_required(uint32_t kind);

#endif
