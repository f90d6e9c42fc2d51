/*
 * test_vocab.c - the wire vocabulary (common/vocab.h, AB_STATUS_LIST in
 * include/agentbus.h) is one source and agrees with proto/agentbus.proto.
 *
 * Every row is checked against protobuf-c's descriptors of the .proto (name,
 * number, type, and no row missing on either side), every look-up against
 * the rows, and the header codec field by field against protobuf-c's own
 * packing. The public status values are pinned here on purpose: they are
 * ABI, and a change to one must fail a test.
 */
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "codec.h"
#include "test.h"
#include "vocab.h"

#include <stddef.h>
#include <stdint.h>

/* protobuf-c's enum value names carry the enum's prefix ("ERR_BUSY"). */
static void s_check_prefixed(const char *full, const char *prefix, const char *name)
{
    char want[64];
    snprintf(want, sizeof want, "%s%s", prefix, name);
    CHECK_STR(full, want);
}

/* ---- Public statuses --------------------------------------------------- */

typedef struct {
    int value;
    const char *constant, *name, *text;
} s_row_t;

#define S_ROW(constant, value, name, text) {constant, #constant, name, text},
static const s_row_t s_statuses[] = {AB_STATUS_LIST(S_ROW)};
#define S_NSTATUS ((int)(sizeof s_statuses / sizeof s_statuses[0]))

/* The values applications compiled against: they must never change. */
static void s_test_status_abi(void)
{
    static const struct {
        int value;
        const char *name;
    } abi[] = {{0, "OK"},           {-1, "INVALID"},       {-2, "NOMEM"},
               {-3, "TIMEOUT"},     {-4, "NO_SERVICE"},    {-5, "BUSY"},
               {-6, "DEADLINE"},    {-7, "MALFORMED"},     {-8, "WORKER_LOST"},
               {-9, "INTERNAL"},    {-10, "UNSUPPORTED_VERSION"}, {-11, "UNSUPPORTED"},
               {-12, "APPLICATION"}, {-13, "DISCONNECTED"}, {-14, "ZMQ"},
               {-15, "STOPPED"},    {-16, "NOT_FOUND"},    {-20, "FRAMES"},
               {-21, "HEADER_SIZE"},
               {-22, "MISSING_FIELD"}, {-23, "PAYLOAD_SIZE"}, {-24, "DECODE"},
               {-40, "MODEL_NOT_FOUND"}, {-41, "BAD_REQUEST"}, {-42, "BACKEND_BUSY"},
               {-43, "BACKEND"},    {-44, "CANCELLED"},    {-50, "NAME_TAKEN"},
               {-51, "BAD_NAME"},   {-52, "TOO_LARGE"},    {-53, "NO_AGENT"},     {-54, "DENIED"},
               {-60, "BATCH"},      {-61, "LZ4"},          {-62, "INLINE"}};
    const int n = (int)(sizeof abi / sizeof abi[0]);
    CHECK_EQ(S_NSTATUS, n); /* a new code needs its line here too */
    for (int i = 0; i < n; i++)
        CHECK_STR(ab_status_name(abi[i].value), abi[i].name);
    CHECK_EQ(AB_EBUSY, -5);
    CHECK_EQ(AB_EDECODE, -24);
    CHECK_EQ(AB_ENOAGENT, -53);
    CHECK_EQ(AB_ELZ4, -61);
}

/* Each row gives its constant, name and text, and no two rows share any. */
static void s_test_status_rows(void)
{
    CHECK_EQ(S_NSTATUS, AB_STATUS_COUNT);
    for (int i = 0; i < S_NSTATUS; i++) {
        const s_row_t *r = &s_statuses[i];
        CHECK_TRUE(r->value <= 0);
        CHECK_STR(ab_status_name(r->value), r->name);
        CHECK_STR(ab_strerror(r->value), r->text);
        CHECK_EQ(ab_status_index(r->value), i);
        CHECK_EQ(ab_status_at(i), r->value);
        CHECK_TRUE(r->name[0] != '\0' && r->text[0] != '\0');
        CHECK_TRUE(strcmp(r->name, "UNKNOWN") != 0);
        for (int j = 0; j < i; j++) {
            CHECK_TRUE(s_statuses[j].value != r->value);
            CHECK_TRUE(strcmp(s_statuses[j].name, r->name) != 0);
            CHECK_TRUE(strcmp(s_statuses[j].text, r->text) != 0);
        }
        /* The constant is AB_ plus something naming the value. */
        CHECK_TRUE(strncmp(r->constant, "AB_", 3) == 0);
    }
    /* Any other int is unknown, not a neighbour's text. */
    for (int v = 1; v >= -70; v--) {
        if (ab_status_index(v) >= 0)
            continue;
        CHECK_STR(ab_status_name(v), "UNKNOWN");
        CHECK_STR(ab_strerror(v), "unknown error code");
    }
    CHECK_EQ(ab_status_index(12345), -1);
    CHECK_EQ(ab_status_at(-1), AB_EINTERNAL);
    CHECK_EQ(ab_status_at(AB_STATUS_COUNT), AB_EINTERNAL);
}

/* ---- Wire error codes ---------------------------------------------------- */

/* Every ErrorCode of the .proto is a row, and every row an ErrorCode. */
static void s_test_wire_errors_match_proto(void)
{
    const ProtobufCEnumDescriptor *d = &agentbus__error_code__descriptor;
    CHECK_EQ(d->n_values, AB_WIRE_ERROR_COUNT);
    for (unsigned i = 0; i < d->n_values; i++) {
        uint32_t code = (uint32_t)d->values[i].value;
        CHECK_TRUE(ab_wire_error_index(code) >= 0);
        s_check_prefixed(d->values[i].name, "ERR_", ab_wire_error_name(code));
        int st = ab_status_from_wire(code);
        CHECK_U64(ab_status_to_wire(st), code); /* and back */
        if (code != AB_ERR_INTERNAL)
            CHECK_TRUE(st != AB_EINTERNAL); /* not the unknown-code fallback */
        if (code != AB_ERR_NONE)
            CHECK_STR(ab_status_name(st), ab_wire_error_name(code));
    }
#define S_WIRE_ROW(constant, value, nm, status)                                                \
    do {                                                                                         \
        const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(d, value);            \
        REQUIRE(v != NULL);                                                                      \
        s_check_prefixed(v->name, "ERR_", nm);                                                 \
        CHECK_U64(constant, value);                                                              \
        CHECK_EQ(ab_status_from_wire(value), status);                                            \
        CHECK_U64(ab_status_to_wire(status), value);                                             \
        CHECK_U64(ab_wire_error_at(ab_wire_error_index(value)), value);                          \
    } while (0);
    AB_WIRE_ERROR_LIST(S_WIRE_ROW)
#undef S_WIRE_ROW
    CHECK_EQ(ab_status_from_wire(0), AB_OK);
    CHECK_U64(ab_status_to_wire(AB_OK), AB_ERR_NONE);
}

/* Codes the .proto lacks are unknown everywhere, and read as INTERNAL. */
static void s_test_wire_unknown(void)
{
    const ProtobufCEnumDescriptor *d = &agentbus__error_code__descriptor;
    for (uint32_t code = 0; code < 200; code++) {
        if (protobuf_c_enum_descriptor_get_value(d, (int)code))
            continue;
        CHECK_EQ(ab_wire_error_index(code), -1);
        CHECK_STR(ab_wire_error_name(code), "UNKNOWN");
        CHECK_EQ(ab_status_from_wire(code), AB_EINTERNAL);
    }
    CHECK_EQ(ab_status_from_wire(UINT32_MAX), AB_EINTERNAL);
}

/* Every status travels as some ErrorCode: its own when it has one, else
 * MALFORMED for a rejection and INTERNAL for the rest. */
static void s_test_status_to_wire(void)
{
    const ProtobufCEnumDescriptor *d = &agentbus__error_code__descriptor;
    int owners = 0;
    for (int i = 0; i < S_NSTATUS; i++) {
        int st = s_statuses[i].value;
        uint32_t w = ab_status_to_wire(st);
        CHECK_TRUE(protobuf_c_enum_descriptor_get_value(d, (int)w) != NULL);
        if (ab_status_from_wire(w) == st) {
            owners++;
            CHECK_STR(ab_wire_error_name(w), st == AB_OK ? "NONE" : ab_status_name(st));
        } else {
            CHECK_TRUE(w == AB_ERR_MALFORMED || w == AB_ERR_INTERNAL);
        }
    }
    CHECK_EQ(owners, AB_WIRE_ERROR_COUNT); /* each code has exactly one status */
#define S_AS_MALFORMED(status)                                                                   \
    CHECK_U64(ab_status_to_wire(status), AB_ERR_MALFORMED);                                      \
    CHECK_TRUE(ab_status_from_wire(AB_ERR_MALFORMED) != status);
    AB_STATUS_AS_MALFORMED_LIST(S_AS_MALFORMED)
#undef S_AS_MALFORMED
    /* The rejections docs/protocol.md promises to answer MALFORMED, pinned. */
    static const int rejections[] = {AB_EFRAMES, AB_EHDRSIZE, AB_EMISSING, AB_EPAYLOADSIZE,
                                     AB_EDECODE, AB_EBATCH,   AB_ELZ4};
    for (size_t i = 0; i < sizeof rejections / sizeof rejections[0]; i++)
        CHECK_U64(ab_status_to_wire(rejections[i]), AB_ERR_MALFORMED);
    CHECK_U64(ab_status_to_wire(AB_EVERSION), AB_ERR_UNSUPPORTED_VERSION);
    /* Local failures the peer cannot act on. */
    CHECK_U64(ab_status_to_wire(AB_ENOMEM), AB_ERR_INTERNAL);
    CHECK_U64(ab_status_to_wire(AB_EZMQ), AB_ERR_INTERNAL);
    CHECK_U64(ab_status_to_wire(12345), AB_ERR_INTERNAL);
}

/* ---- Kinds and flags ---------------------------------------------------- */

static void s_test_kinds(void)
{
    const ProtobufCEnumDescriptor *d = &agentbus__kind__descriptor;
    CHECK_EQ(d->n_values, AB_KIND_MAX_ + 1); /* + KIND_UNSPECIFIED */
    for (unsigned i = 0; i < d->n_values; i++)
        s_check_prefixed(d->values[i].name, "KIND_", ab_kind_name((uint32_t)d->values[i].value));
#define S_KIND_ROW(constant, value, nm, required)                                              \
    do {                                                                                         \
        const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(d, value);            \
        REQUIRE(v != NULL);                                                                      \
        s_check_prefixed(v->name, "KIND_", nm);                                                \
        CHECK_EQ(constant, value);                                                               \
        CHECK_U64(ab_kind_required(value), required);                                            \
    } while (0);
    AB_KIND_LIST(S_KIND_ROW)
#undef S_KIND_ROW
    CHECK_STR(ab_kind_name(0), "UNSPECIFIED");
    CHECK_STR(ab_kind_name(AB_KIND_MAX_ + 1), "UNKNOWN");
    CHECK_U64(ab_kind_required(AB_KIND_MAX_ + 1), 0);
}

/* The required fields docs/protocol.md promises peers, pinned. */
static void s_test_kind_required(void)
{
    CHECK_U64(ab_kind_required(AB_KIND_REQUEST), AB_HF_BIT(id) | AB_HF_BIT(target));
    CHECK_U64(ab_kind_required(AB_KIND_CONTROL), AB_HF_BIT(id) | AB_HF_BIT(target));
    CHECK_U64(ab_kind_required(AB_KIND_REGISTER), AB_HF_BIT(target) | AB_HF_BIT(credit));
    CHECK_U64(ab_kind_required(AB_KIND_PARTIAL), AB_HF_BIT(correlation_id));
    CHECK_U64(ab_kind_required(AB_KIND_REPLY), AB_HF_BIT(correlation_id));
    CHECK_U64(ab_kind_required(AB_KIND_ERROR), AB_HF_BIT(error_code));
    CHECK_U64(ab_kind_required(AB_KIND_HELLO), 0);
    CHECK_U64(ab_kind_required(AB_KIND_HEARTBEAT), 0);
}

static void s_test_flags(void)
{
    const ProtobufCEnumDescriptor *d = &agentbus__flag__descriptor;
    int rows = 0;
#define S_FLAG_ROW(constant, value, nm)                                                        \
    do {                                                                                         \
        const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(d, (int)(value));     \
        REQUIRE(v != NULL);                                                                      \
        s_check_prefixed(v->name, "FLAG_", nm);                                                \
        CHECK_U64(constant, value);                                                              \
        CHECK_TRUE(((value) & ((value)-1)) == 0); /* one bit each */                             \
        rows++;                                                                                  \
    } while (0);
    AB_FLAG_LIST(S_FLAG_ROW)
#undef S_FLAG_ROW
    CHECK_EQ(d->n_values, rows + 1); /* + FLAG_NONE */
}

/* ---- Header fields ---------------------------------------------------- */

/* Row I of AB_HEADER_FIELD_LIST is field I of protobuf-c's descriptor
 * (which is in number order): same name, number and type, none missing. */
static void s_test_header_fields(void)
{
    const ProtobufCMessageDescriptor *d = &agentbus__header__descriptor;
    CHECK_EQ(d->n_fields, AB_HEADER_FIELD_COUNT);
    int i = 0;
#define S_FIELD_ROW(member, number, ty)                                                          \
    do {                                                                                         \
        REQUIRE((unsigned)i < d->n_fields);                                                      \
        const ProtobufCFieldDescriptor *f = &d->fields[i];                                       \
        CHECK_STR(f->name, #member);                                                             \
        CHECK_U64(f->id, number);                                                                \
        CHECK_EQ(f->type, PROTOBUF_C_TYPE_##ty);                                                 \
        CHECK_TRUE(f->label != PROTOBUF_C_LABEL_REPEATED);                                       \
        CHECK_EQ(AB_HF_##member, i);                                                             \
        i++;                                                                                     \
    } while (0);
/* The codec's TYPE names as protobuf-c spells them. */
#define PROTOBUF_C_TYPE_U32 PROTOBUF_C_TYPE_UINT32
#define PROTOBUF_C_TYPE_U64 PROTOBUF_C_TYPE_UINT64
#define PROTOBUF_C_TYPE_STR PROTOBUF_C_TYPE_STRING
    AB_HEADER_FIELD_LIST(S_FIELD_ROW)
#undef S_FIELD_ROW
    CHECK_EQ(i, AB_HEADER_FIELD_COUNT);
}

/* A test value for one field, and how it looks in either struct. */
static const char *const s_str = "value-of-a-field";
#define S_VAL_U32 0xfedcba98u
#define S_VAL_ENUM 7u
#define S_VAL_U64 0x0123456789abcdefull

#define S_SET_U32(dst) (dst) = S_VAL_U32
#define S_SET_ENUM(dst) (dst) = S_VAL_ENUM
#define S_SET_U64(dst) (dst) = S_VAL_U64
#define S_SET_STR(dst) (dst) = ab_view_of(s_str)
#define S_SET_BYTES(dst) (dst) = ab_view_of(s_str)
#define S_PBSET_U32(m, f) *(uint32_t *)((char *)(m) + (f)->offset) = S_VAL_U32
#define S_PBSET_ENUM(m, f) *(int *)((char *)(m) + (f)->offset) = (int)S_VAL_ENUM
#define S_PBSET_U64(m, f) *(uint64_t *)((char *)(m) + (f)->offset) = S_VAL_U64
#define S_PBSET_STR(m, f) *(const char **)((char *)(m) + (f)->offset) = s_str
#define S_PBSET_BYTES(m, f)                                                                      \
    *(ProtobufCBinaryData *)((char *)(m) + (f)->offset) =                                        \
        (ProtobufCBinaryData){strlen(s_str), (uint8_t *)s_str}
#define S_OURS_IS_U32(x) CHECK_U64(x, S_VAL_U32)
#define S_OURS_IS_ENUM(x) CHECK_U64(x, S_VAL_ENUM)
#define S_OURS_IS_U64(x) CHECK_U64(x, S_VAL_U64)
#define S_OURS_IS_STR(x) CHECK_TRUE(ab_view_eq(x, s_str))
#define S_OURS_IS_BYTES(x) CHECK_TRUE(ab_view_eq(x, s_str))
#define S_PB_IS_U32(m, f) CHECK_U64(*(uint32_t *)((char *)(m) + (f)->offset), S_VAL_U32)
#define S_PB_IS_ENUM(m, f) CHECK_EQ(*(int *)((char *)(m) + (f)->offset), (int)S_VAL_ENUM)
#define S_PB_IS_U64(m, f) CHECK_U64(*(uint64_t *)((char *)(m) + (f)->offset), S_VAL_U64)
#define S_PB_IS_STR(m, f) CHECK_STR(*(char **)((char *)(m) + (f)->offset), s_str)
#define S_PB_IS_BYTES(m, f)                                                                      \
    do {                                                                                         \
        const ProtobufCBinaryData *bd = (const void *)((char *)(m) + (f)->offset);               \
        CHECK_TRUE(bd->len == strlen(s_str) && memcmp(bd->data, s_str, bd->len) == 0);           \
    } while (0)

/* How many fields of H differ from their default. */
static int s_fields_set(const ab_header_t *h)
{
    int n = 0;
#define S_ISSET_U32(x) ((x) != 0)
#define S_ISSET_ENUM(x) ((x) != 0)
#define S_ISSET_U64(x) ((x) != 0)
#define S_ISSET_STR(x) ((x).len != 0)
#define S_ISSET_BYTES(x) ((x).ptr != NULL)
#define S_COUNT(member, number, type) n += S_ISSET_##type(h->member);
    AB_HEADER_FIELD_LIST(S_COUNT)
#undef S_COUNT
    return n;
}

/* Each field alone, both ways: protobuf-c's bytes parse into that member
 * and only it; our bytes are protobuf-c's bytes and unpack into it. */
static void s_test_each_field_both_ways(void)
{
    const ProtobufCMessageDescriptor *d = &agentbus__header__descriptor;
#define S_ONE_FIELD(member, number, type)                                                        \
    do {                                                                                         \
        const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(d, number);  \
        REQUIRE(f != NULL);                                                                      \
        Agentbus__Header m;                                                                      \
        agentbus__header__init(&m);                                                              \
        S_PBSET_##type(&m, f);                                                                   \
        uint8_t theirs[128], mine[128];                                                          \
        size_t n = agentbus__header__pack(&m, theirs);                                           \
        ab_header_t h;                                                                           \
        CHECK_EQ(ab_header_parse(theirs, n, &h), AB_OK);                                         \
        S_OURS_IS_##type(h.member);                                                              \
        CHECK_EQ(s_fields_set(&h), 1); /* every other one stayed at its default */               \
        ab_header_t ours;                                                                        \
        memset(&ours, 0, sizeof ours);                                                           \
        S_SET_##type(ours.member);                                                               \
        CHECK_U64(ab_header_size(&ours), n);                                                     \
        CHECK_TRUE(ab_header_bound(&ours) >= n);                                                 \
        size_t k = ab_header_encode(&ours, mine, sizeof mine);                                   \
        CHECK_U64(k, n);                                                                         \
        CHECK_TRUE(k == n && memcmp(mine, theirs, n) == 0);                                      \
        Agentbus__Header *u = agentbus__header__unpack(NULL, k, mine);                           \
        REQUIRE(u != NULL);                                                                      \
        S_PB_IS_##type(u, f);                                                                    \
        agentbus__header__free_unpacked(u, NULL);                                                \
    } while (0);
    AB_HEADER_FIELD_LIST(S_ONE_FIELD)
#undef S_ONE_FIELD
}

/* Every field at once: the same bytes as protobuf-c, in the same order. */
static void s_test_all_fields_same_bytes(void)
{
    const ProtobufCMessageDescriptor *d = &agentbus__header__descriptor;
    Agentbus__Header m;
    agentbus__header__init(&m);
    ab_header_t ours;
    memset(&ours, 0, sizeof ours);
#define S_ALL_FIELDS(member, number, type)                                                       \
    S_PBSET_##type(&m, protobuf_c_message_descriptor_get_field(d, number));                      \
    S_SET_##type(ours.member);
    AB_HEADER_FIELD_LIST(S_ALL_FIELDS)
#undef S_ALL_FIELDS
    uint8_t theirs[1024], mine[1024];
    size_t n = agentbus__header__pack(&m, theirs);
    size_t k = ab_header_encode(&ours, mine, sizeof mine);
    CHECK_U64(k, n);
    CHECK_TRUE(k == n && memcmp(mine, theirs, n) == 0);
    CHECK_U64(ab_header_size(&ours), n);
}

/* A kind's required fields are exactly the ones whose absence fails it. */
static void s_test_validate_by_rows(void)
{
    for (uint32_t kind = 1; kind <= AB_KIND_MAX_; kind++) {
        ab_header_t full;
        memset(&full, 0, sizeof full);
#define S_FILL(member, number, type) S_SET_##type(full.member);
        AB_HEADER_FIELD_LIST(S_FILL)
#undef S_FILL
        full.version = AB_PROTOCOL_VERSION;
        full.kind = kind;
        CHECK_EQ(ab_header_validate(&full), AB_OK);
        uint32_t need = ab_kind_required(kind);
#define S_DROP(member, number, type)                                                             \
    if (AB_HF_##member != AB_HF_version && AB_HF_##member != AB_HF_kind) {                       \
        ab_header_t h = full;                                                                    \
        memset(&h.member, 0, sizeof h.member);                                                   \
        CHECK_EQ(ab_header_validate(&h), (need & AB_HF_BIT(member)) ? AB_EMISSING : AB_OK);      \
    }
        AB_HEADER_FIELD_LIST(S_DROP)
#undef S_DROP
    }
}

int main(void)
{
    s_test_status_abi();
    s_test_status_rows();
    s_test_wire_errors_match_proto();
    s_test_wire_unknown();
    s_test_status_to_wire();
    s_test_kinds();
    s_test_kind_required();
    s_test_flags();
    s_test_header_fields();
    s_test_each_field_both_ways();
    s_test_all_fields_same_bytes();
    s_test_validate_by_rows();
    return TEST_DONE("test_vocab");
}
