/*
 * test_codec.c - the header codec: round trips, agreement with protobuf-c's
 * generated code in both directions, and every rejection with hand-made
 * bad frames, each with its own code.
 */
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "codec.h"
#include "test.h"

#include <stdint.h>
#include <stdlib.h>

static ab_header_t s_full(void)
{
    ab_header_t h = ab_header_init(AB_KIND_REQUEST);
    h.id = UINT64_MAX;
    h.correlation_id = 0x0123456789abcdefull;
    h.sender = ab_view_of("agent-7");
    h.target = ab_view_of("llm.generate");
    h.priority = 3;
    h.timeout_ms = UINT32_MAX;
    h.flags = AB_FLAG_LZ4 | AB_FLAG_NO_STORE;
    h.original_size = 1ull << 40;
    h.error_code = AB_ERR_DEADLINE;
    h.error_text = ab_view_of("took too long");
    h.credit = 128;
    h.model = ab_view_of("llama3:8b");
    h.worker = ab_view_of("gpu0");
    return h;
}

static int s_view_eq(ab_view_t a, ab_view_t b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static void s_check_same(const ab_header_t *a, const ab_header_t *b)
{
    CHECK_U64(a->version, b->version);
    CHECK_U64(a->kind, b->kind);
    CHECK_U64(a->id, b->id);
    CHECK_U64(a->correlation_id, b->correlation_id);
    CHECK_TRUE(s_view_eq(a->sender, b->sender));
    CHECK_TRUE(s_view_eq(a->target, b->target));
    CHECK_U64(a->priority, b->priority);
    CHECK_U64(a->timeout_ms, b->timeout_ms);
    CHECK_U64(a->flags, b->flags);
    CHECK_U64(a->original_size, b->original_size);
    CHECK_U64(a->error_code, b->error_code);
    CHECK_TRUE(s_view_eq(a->error_text, b->error_text));
    CHECK_U64(a->credit, b->credit);
    CHECK_TRUE(s_view_eq(a->model, b->model));
    CHECK_TRUE(s_view_eq(a->worker, b->worker));
}

static void s_test_round_trip(void)
{
    uint8_t buf[70000];
    ab_header_t h = s_full(), back;
    size_t n = ab_header_encode(&h, buf, sizeof buf);
    CHECK_U64(n, ab_header_size(&h));
    CHECK_TRUE(n <= ab_header_bound(&h));
    CHECK_EQ(ab_header_parse(buf, n, &back), AB_OK);
    s_check_same(&h, &back);
    /* All defaults: only version and kind on the wire (2 bytes each). */
    ab_header_t d = ab_header_init(AB_KIND_HEARTBEAT);
    n = ab_header_encode(&d, buf, sizeof buf);
    CHECK_U64(n, 4);
    CHECK_EQ(ab_header_parse(buf, n, &back), AB_OK);
    s_check_same(&d, &back);
    /* A long string needs a multi-byte length. */
    static char big[60000];
    memset(big, 'x', sizeof big - 1);
    h.target = ab_view_of(big);
    n = ab_header_encode(&h, buf, sizeof buf);
    CHECK_TRUE(n > sizeof big);
    CHECK_EQ(ab_header_parse(buf, n, &back), AB_OK);
    CHECK_U64(back.target.len, sizeof big - 1);
    /* Too small a buffer: 0, not an overrun. */
    CHECK_U64(ab_header_encode(&h, buf, 100), 0);
}

/* Bytes from protobuf-c parse with our codec, and ours unpack with it. */
static void s_test_protobuf_c_agrees(void)
{
    Agentbus__Header m;
    agentbus__header__init(&m);
    m.version = 1;
    m.kind = AGENTBUS__KIND__KIND_REPLY;
    m.id = 42;
    m.correlation_id = UINT64_MAX;
    m.sender = "w1";
    m.target = "svc";
    m.priority = 9;
    m.timeout_ms = 1500;
    m.flags = 17;
    m.original_size = 123456789;
    m.error_code = AGENTBUS__ERROR_CODE__ERR_BUSY;
    m.error_text = "busy now";
    m.credit = 7;
    m.model = "qwen2.5:7b";
    m.worker = "gpu1";
    uint8_t buf[512];
    size_t n = agentbus__header__pack(&m, buf);
    ab_header_t h;
    CHECK_EQ(ab_header_parse(buf, n, &h), AB_OK);
    CHECK_U64(h.kind, AB_KIND_REPLY);
    CHECK_U64(h.id, 42);
    CHECK_U64(h.correlation_id, UINT64_MAX);
    CHECK_TRUE(ab_view_eq(h.sender, "w1") && ab_view_eq(h.target, "svc"));
    CHECK_TRUE(ab_view_eq(h.error_text, "busy now"));
    CHECK_U64(h.original_size, 123456789);
    CHECK_U64(h.credit, 7);
    CHECK_U64(h.error_code, AB_ERR_BUSY);
    CHECK_TRUE(ab_view_eq(h.model, "qwen2.5:7b") && ab_view_eq(h.worker, "gpu1"));

    ab_header_t ours = s_full();
    size_t len = ab_header_encode(&ours, buf, sizeof buf);
    CHECK_U64(len, agentbus__header__get_packed_size(&(Agentbus__Header){
                       .base = m.base, .version = 1, .kind = AGENTBUS__KIND__KIND_REQUEST,
                       .id = UINT64_MAX, .correlation_id = ours.correlation_id, .sender = "agent-7",
                       .target = "llm.generate", .priority = 3, .timeout_ms = UINT32_MAX,
                       .flags = ours.flags, .original_size = ours.original_size,
                       .error_code = AGENTBUS__ERROR_CODE__ERR_DEADLINE,
                       .error_text = "took too long",
                       .credit = 128, .model = "llama3:8b", .worker = "gpu0"}));
    Agentbus__Header *u = agentbus__header__unpack(NULL, len, buf);
    REQUIRE(u != NULL);
    CHECK_U64(u->version, 1);
    CHECK_U64(u->kind, AB_KIND_REQUEST);
    CHECK_U64(u->id, UINT64_MAX);
    CHECK_U64(u->timeout_ms, UINT32_MAX);
    CHECK_U64(u->original_size, 1ull << 40);
    CHECK_STR(u->sender, "agent-7");
    CHECK_STR(u->target, "llm.generate");
    CHECK_STR(u->error_text, "took too long");
    CHECK_U64(u->credit, 128);
    CHECK_STR(u->model, "llama3:8b");
    CHECK_STR(u->worker, "gpu0");
    agentbus__header__free_unpacked(u, NULL);
}

static void s_test_constants(void)
{
    CHECK_EQ(AB_KIND_HELLO, AGENTBUS__KIND__KIND_HELLO);
    CHECK_EQ(AB_KIND_REGISTER, AGENTBUS__KIND__KIND_REGISTER);
    CHECK_EQ(AB_KIND_REQUEST, AGENTBUS__KIND__KIND_REQUEST);
    CHECK_EQ(AB_KIND_PARTIAL, AGENTBUS__KIND__KIND_PARTIAL);
    CHECK_EQ(AB_KIND_REPLY, AGENTBUS__KIND__KIND_REPLY);
    CHECK_EQ(AB_KIND_ERROR, AGENTBUS__KIND__KIND_ERROR);
    CHECK_EQ(AB_KIND_HEARTBEAT, AGENTBUS__KIND__KIND_HEARTBEAT);
    CHECK_EQ(AB_KIND_CONTROL, AGENTBUS__KIND__KIND_CONTROL);
    CHECK_EQ(AB_KIND_BATCH, AGENTBUS__KIND__KIND_BATCH);
    CHECK_EQ(AB_KIND_BYE, AGENTBUS__KIND__KIND_BYE);
    CHECK_EQ(AB_ERR_NO_SERVICE, AGENTBUS__ERROR_CODE__ERR_NO_SERVICE);
    CHECK_EQ(AB_ERR_BUSY, AGENTBUS__ERROR_CODE__ERR_BUSY);
    CHECK_EQ(AB_ERR_DEADLINE, AGENTBUS__ERROR_CODE__ERR_DEADLINE);
    CHECK_EQ(AB_ERR_MALFORMED, AGENTBUS__ERROR_CODE__ERR_MALFORMED);
    CHECK_EQ(AB_ERR_WORKER_LOST, AGENTBUS__ERROR_CODE__ERR_WORKER_LOST);
    CHECK_EQ(AB_ERR_INTERNAL, AGENTBUS__ERROR_CODE__ERR_INTERNAL);
    CHECK_EQ(AB_ERR_UNSUPPORTED_VERSION, AGENTBUS__ERROR_CODE__ERR_UNSUPPORTED_VERSION);
    CHECK_EQ(AB_ERR_APPLICATION, AGENTBUS__ERROR_CODE__ERR_APPLICATION);
    CHECK_EQ(AB_FLAG_LZ4, AGENTBUS__FLAG__FLAG_LZ4);
    CHECK_EQ(AB_FLAG_NON_IDEMPOTENT, AGENTBUS__FLAG__FLAG_NON_IDEMPOTENT);
}

/* Decodes one hand-made frame (plus an optional payload of PLEN bytes). */
static int s_decode(const void *hdr, size_t len, size_t plen, const ab_limits_t *lim)
{
    static uint8_t payload[4096];
    ab_frame_t f[2] = {{hdr, len}, {payload, plen}};
    ab_header_t h;
    ab_frame_t pl;
    return ab_msg_decode(f, plen ? 2 : 1, lim, &h, &pl);
}

static int s_decode_h(const ab_header_t *h, size_t plen, const ab_limits_t *lim)
{
    uint8_t buf[512];
    size_t n = ab_header_encode(h, buf, sizeof buf);
    return s_decode(buf, n, plen, lim);
}

static void s_test_rejections(void)
{
    ab_limits_t small = {64, 100};
    ab_header_t ok = ab_header_init(AB_KIND_REQUEST);
    ok.id = 1;
    ok.target = ab_view_of("echo");
    CHECK_EQ(s_decode_h(&ok, 10, NULL), AB_OK);
    CHECK_EQ(s_decode_h(&ok, 100, &small), AB_OK);
    /* frame count */
    ab_frame_t three[3] = {{"", 0}, {"", 0}, {"", 0}};
    ab_header_t h;
    ab_frame_t pl;
    CHECK_EQ(ab_msg_decode(three, 3, NULL, &h, &pl), AB_EFRAMES);
    CHECK_EQ(ab_msg_decode(three, 0, NULL, &h, &pl), AB_EFRAMES);
    CHECK_EQ(ab_msg_decode(three, 10, NULL, &h, &pl), AB_EFRAMES);
    /* header size: small limit, and the 64 KiB default */
    ab_header_t big = ok;
    char name[100];
    memset(name, 'n', sizeof name - 1);
    name[99] = 0;
    big.target = ab_view_of(name);
    CHECK_EQ(s_decode_h(&big, 0, &small), AB_EHDRSIZE);
    static uint8_t huge[AB_DEFAULT_MAX_HEADER + 1];
    CHECK_EQ(s_decode(huge, sizeof huge, 0, NULL), AB_EHDRSIZE);
    /* Far past the limit, the id is still read, so the refusal can answer
     * the sender's call (it used to wait for its deadline). */
    static char longname[100000];
    static uint8_t longframe[sizeof longname + 64];
    memset(longname, 'n', sizeof longname - 1);
    ab_header_t lh = ok;
    lh.id = 77;
    lh.target = ab_view_of(longname);
    ab_frame_t lf = {longframe, ab_header_encode(&lh, longframe, sizeof longframe)};
    REQUIRE(lf.size > sizeof longname);
    ab_header_t got;
    ab_frame_t gpl;
    CHECK_EQ(ab_msg_decode(&lf, 1, NULL, &got, &gpl), AB_EHDRSIZE);
    CHECK_U64(got.id, 77);
    CHECK_EQ(got.kind, AB_KIND_REQUEST);
    CHECK_TRUE(got.target.len == 0 && gpl.data == NULL); /* nothing else is kept */
    /* version */
    ab_header_t v2 = ok;
    v2.version = 2;
    CHECK_EQ(s_decode_h(&v2, 0, NULL), AB_EVERSION);
    /* missing fields */
    ab_header_t m = ok;
    m.version = 0;
    CHECK_EQ(s_decode_h(&m, 0, NULL), AB_EMISSING);
    m = ok, m.kind = 0;
    CHECK_EQ(s_decode_h(&m, 0, NULL), AB_EMISSING);
    m = ok, m.target = ab_view_of("");
    CHECK_EQ(s_decode_h(&m, 0, NULL), AB_EMISSING);
    m = ok, m.id = 0;
    CHECK_EQ(s_decode_h(&m, 0, NULL), AB_EMISSING);
    m = ab_header_init(AB_KIND_REPLY);
    CHECK_EQ(s_decode_h(&m, 0, NULL), AB_EMISSING);
    m = ab_header_init(AB_KIND_ERROR);
    CHECK_EQ(s_decode_h(&m, 0, NULL), AB_EMISSING);
    m = ab_header_init(AB_KIND_REGISTER), m.target = ab_view_of("echo");
    CHECK_EQ(s_decode_h(&m, 0, NULL), AB_EMISSING);
    CHECK_EQ(s_decode(NULL, 0, 0, NULL), AB_EMISSING); /* empty message */
    /* kind out of range */
    m = ok, m.kind = 99;
    CHECK_EQ(s_decode_h(&m, 0, NULL), AB_EDECODE);
    /* payload size */
    CHECK_EQ(s_decode_h(&ok, 101, &small), AB_EPAYLOADSIZE);
    /* wire format */
    const uint8_t trunc_varint[] = {0x08, 0x81};                  /* version: 0x81 then end */
    const uint8_t long_len[] = {0x08, 0x01, 0x32, 0x05, 'a', 'b'}; /* sender claims 5, has 2 */
    const uint8_t overlong[] = {0x08, 0x81, 0x81, 0x81, 0x81, 0x81, 0x81,
                                0x81, 0x81, 0x81, 0x81, 0x01};       /* 11-byte varint */
    const uint8_t group[] = {0x08, 0x01, 0x0b};                     /* field 1, wire type 3 */
    const uint8_t field0[] = {0x00, 0x01};                          /* field number 0 */
    const uint8_t wrong_wt[] = {0x08, 0x01, 0x10, 0x03, 0x1a, 0x01, 'x'}; /* id as LEN */
    const uint8_t str_as_int[] = {0x08, 0x01, 0x10, 0x03, 0x30, 0x05};    /* target as varint */
    const uint8_t trunc_fixed[] = {0x08, 0x01, 0x81, 0x03, 0x01, 0x02};   /* fixed64, 2 bytes */
    CHECK_EQ(s_decode(trunc_varint, sizeof trunc_varint, 0, NULL), AB_EDECODE);
    CHECK_EQ(s_decode(long_len, sizeof long_len, 0, NULL), AB_EDECODE);
    CHECK_EQ(s_decode(overlong, sizeof overlong, 0, NULL), AB_EDECODE);
    CHECK_EQ(s_decode(group, sizeof group, 0, NULL), AB_EDECODE);
    CHECK_EQ(s_decode(field0, sizeof field0, 0, NULL), AB_EDECODE);
    CHECK_EQ(s_decode(wrong_wt, sizeof wrong_wt, 0, NULL), AB_EDECODE);
    CHECK_EQ(s_decode(str_as_int, sizeof str_as_int, 0, NULL), AB_EDECODE);
    CHECK_EQ(s_decode(trunc_fixed, sizeof trunc_fixed, 0, NULL), AB_EDECODE);
}

/* Unknown fields of every wire type are skipped: newer peers may add some. */
static void s_test_unknown_fields(void)
{
    uint8_t buf[600];
    size_t n = ab_header_encode(&(ab_header_t){.version = 1, .kind = AB_KIND_HEARTBEAT}, buf,
                                sizeof buf);
    const uint8_t extra[] = {0x90, 0x03, 0x05,                   /* field 50 varint */
                             0x9a, 0x03, 0x02, 'h', 'i',         /* field 51 LEN */
                             0xa5, 0x03, 1, 2, 3, 4,             /* field 52 fixed32 */
                             0xa9, 0x03, 1, 2, 3, 4, 5, 6, 7, 8}; /* field 53 fixed64 */
    memcpy(buf + n, extra, sizeof extra);
    ab_header_t h;
    CHECK_EQ(ab_header_parse(buf, n + sizeof extra, &h), AB_OK);
    CHECK_U64(h.kind, AB_KIND_HEARTBEAT);
    CHECK_EQ(s_decode(buf, n + sizeof extra, 0, NULL), AB_OK);
}

static void s_test_status(void)
{
    for (int i = 0; i < AB_WIRE_ERROR_COUNT; i++) {
        uint32_t code = ab_wire_error_at(i);
        if (code == AB_ERR_NONE)
            continue;
        int st = ab_status_from_wire(code);
        CHECK_TRUE(st < 0);
        CHECK_U64(ab_status_to_wire(st), code);
        CHECK_TRUE(strcmp(ab_wire_error_name(code), "UNKNOWN") != 0);
    }
    /* the inference codes (issue 7), by their proto names */
    const uint32_t ext[] = {AGENTBUS__ERROR_CODE__ERR_MODEL_NOT_FOUND,
                            AGENTBUS__ERROR_CODE__ERR_BAD_REQUEST,
                            AGENTBUS__ERROR_CODE__ERR_BACKEND_BUSY,
                            AGENTBUS__ERROR_CODE__ERR_BACKEND, AGENTBUS__ERROR_CODE__ERR_CANCELLED};
    const int ext_st[] = {AB_EMODEL, AB_EBADREQUEST, AB_EBACKENDBUSY, AB_EBACKEND, AB_ECANCELLED};
    CHECK_U64(AB_ERR_MODEL_NOT_FOUND, AGENTBUS__ERROR_CODE__ERR_MODEL_NOT_FOUND);
    CHECK_U64(AB_ERR_CANCELLED, AGENTBUS__ERROR_CODE__ERR_CANCELLED);
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++) {
        CHECK_EQ(ab_status_from_wire(ext[i]), ext_st[i]);
        CHECK_U64(ab_status_to_wire(ext_st[i]), ext[i]);
        CHECK_TRUE(strcmp(ab_wire_error_name(ext[i]), "UNKNOWN") != 0);
        CHECK_TRUE(strcmp(ab_strerror(ext_st[i]), "unknown error code") != 0);
        CHECK_STR(ab_status_name(ext_st[i]), ab_wire_error_name(ext[i]));
    }
    CHECK_EQ(ab_status_from_wire(0), AB_OK);
    CHECK_EQ(ab_status_from_wire(1000), AB_EINTERNAL);
    CHECK_U64(ab_status_to_wire(AB_EFRAMES), AB_ERR_MALFORMED);
    CHECK_U64(ab_status_to_wire(AB_EDECODE), AB_ERR_MALFORMED);
    for (int code = 0; code >= AB_EDECODE; code--) {
        if (code < AB_ESTOPPED && code > AB_EFRAMES)
            continue; /* the gap between the groups */
        CHECK_TRUE(strcmp(ab_strerror(code), "unknown error code") != 0);
        CHECK_TRUE(strcmp(ab_status_name(code), "UNKNOWN") != 0);
    }
    CHECK_STR(ab_strerror(12345), "unknown error code");
}

/* ab_pb_unpack: an honest message decodes as protobuf-c decodes it; one
 * whose records would take more than 4x its size plus 1 MiB does not. */
static void s_test_pb_unpack(void)
{
    Agentbus__ChatMessage msg = AGENTBUS__CHAT_MESSAGE__INIT, *msgs[64];
    msg.role = "user";
    msg.content = "hello";
    for (size_t i = 0; i < 64; i++)
        msgs[i] = &msg;
    Agentbus__ChatRequest chat = AGENTBUS__CHAT_REQUEST__INIT;
    chat.model = "m";
    chat.n_messages = 64;
    chat.messages = msgs;
    Agentbus__InferenceRequest ir = AGENTBUS__INFERENCE_REQUEST__INIT;
    ir.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_CHAT;
    ir.chat = &chat;
    uint8_t buf[2048];
    size_t n = agentbus__inference_request__pack(&ir, buf);
    REQUIRE(n < sizeof buf);
    const ProtobufCMessageDescriptor *d = &agentbus__inference_request__descriptor;
    Agentbus__InferenceRequest *u = (Agentbus__InferenceRequest *)ab_pb_unpack(d, n, buf);
    REQUIRE(u && u->chat);
    CHECK_U64(u->chat->n_messages, 64);
    CHECK_STR(u->chat->messages[63]->content, "hello");
    agentbus__inference_request__free_unpacked(u, NULL);
    CHECK_TRUE(ab_pb_unpack(d, n - 1, buf) == NULL); /* cut short */
    CHECK_TRUE(ab_pb_unpack(NULL, n, buf) == NULL);
    CHECK_TRUE(ab_pb_unpack(d, n, NULL) == NULL);
    u = (Agentbus__InferenceRequest *)ab_pb_unpack(d, 0, NULL); /* empty: all defaults */
    REQUIRE(u);
    CHECK_TRUE(u->body_case == AGENTBUS__INFERENCE_REQUEST__BODY__NOT_SET);
    agentbus__inference_request__free_unpacked(u, NULL);
    /* 512 Ki empty messages in 1 MiB: protobuf-c alone takes ~70 MiB */
    size_t k = 512 * 1024, len = 2 * k + 5;
    uint8_t *big = malloc(len);
    REQUIRE(big);
    memcpy(big, "\x12\x80\x80\x40", 4); /* chat, 1 MiB long */
    for (size_t i = 0; i < k; i++)
        memcpy(big + 4 + 2 * i, "\x12\x00", 2);
    len = 4 + 2 * k;
    CHECK_TRUE(ab_pb_unpack(d, len, big) == NULL);
    u = agentbus__inference_request__unpack(NULL, len, big); /* what it would be */
    REQUIRE(u && u->chat);
    CHECK_U64(u->chat->n_messages, k);
    agentbus__inference_request__free_unpacked(u, NULL);
    free(big);
}

/* One frame: HDR's bytes, then the inline field holding PLEN bytes of 'p'. */
static size_t s_inline_frame(const ab_header_t *hdr, size_t plen, uint8_t *out, size_t cap)
{
    uint8_t hb[512], pl[AB_INLINE_LIMIT + 2];
    memset(pl, 'p', sizeof pl);
    size_t hl = ab_header_encode(hdr, hb, sizeof hb);
    size_t n = ab_msg_inline_size(hl, plen);
    REQUIRE(hl > 0 && n <= cap && plen <= sizeof pl);
    ab_msg_inline_put(out, hb, hl, pl, plen);
    return n;
}

/* A payload inside the header frame: read as the payload (a view into the
 * frame), the same bytes protobuf-c reads, never re-encoded with the header
 * it came in, at every size a sender uses and up to the receive limit. */
static void s_test_inline_round_trip(void)
{
    static uint8_t frame[AB_INLINE_LIMIT + 600];
    ab_header_t src = ab_header_init(AB_KIND_REQUEST);
    src.id = 42;
    src.target = ab_view_of("echo");
    const size_t sizes[] = {0, 1, 63, 64, 127, 128, AB_INLINE_MAX - 1, AB_INLINE_MAX,
                            AB_INLINE_MAX + 1, AB_INLINE_LIMIT};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = s_inline_frame(&src, sizes[i], frame, sizeof frame);
        ab_frame_t f = {frame, n}, pl;
        ab_header_t h;
        CHECK_EQ(ab_msg_decode(&f, 1, NULL, &h, &pl), AB_OK);
        CHECK_U64(pl.size, sizes[i]);
        CHECK_TRUE(pl.data != NULL); /* present, even when empty */
        CHECK_TRUE((const uint8_t *)pl.data >= frame && (const uint8_t *)pl.data <= frame + n);
        for (size_t k = 0; k < pl.size; k++)
            if (((const uint8_t *)pl.data)[k] != 'p') {
                CHECK_EQ(((const uint8_t *)pl.data)[k], 'p');
                break;
            }
        CHECK_U64(h.id, 42);
        CHECK_TRUE(ab_view_eq(h.target, "echo"));
        CHECK_TRUE(h.inline_payload.ptr == NULL && h.inline_payload.len == 0);
        /* Passed on, the header is the original bytes again. */
        uint8_t again[512], orig[512];
        CHECK_U64(ab_header_encode(&h, again, sizeof again),
                  ab_header_encode(&src, orig, sizeof orig));
        Agentbus__Header *u = agentbus__header__unpack(NULL, n, frame);
        REQUIRE(u != NULL);
        CHECK_U64(u->inline_payload.len, sizes[i]);
        CHECK_U64(u->id, 42);
        agentbus__header__free_unpacked(u, NULL);
    }
    /* No payload at all: data NULL; an empty payload frame: data not NULL. */
    uint8_t hb[64];
    ab_frame_t f[2] = {{hb, ab_header_encode(&src, hb, sizeof hb)}, {NULL, 0}}, pl;
    ab_header_t h;
    CHECK_EQ(ab_msg_decode(f, 1, NULL, &h, &pl), AB_OK);
    CHECK_TRUE(pl.data == NULL);
    CHECK_EQ(ab_msg_decode(f, 2, NULL, &h, &pl), AB_OK);
    CHECK_TRUE(pl.data != NULL && pl.size == 0);
}

/* Every way an inline payload can be wrong has its code. */
static void s_test_inline_rejections(void)
{
    static uint8_t frame[2 * AB_INLINE_LIMIT];
    ab_header_t src = ab_header_init(AB_KIND_REPLY);
    src.correlation_id = 9;
    size_t n = s_inline_frame(&src, 10, frame, sizeof frame);
    ab_frame_t f[2] = {{frame, n}, {"x", 1}}, pl;
    ab_header_t h;
    /* inline and a payload frame (even an empty one) */
    CHECK_EQ(ab_msg_decode(f, 2, NULL, &h, &pl), AB_EINLINE);
    f[1].size = 0;
    CHECK_EQ(ab_msg_decode(f, 2, NULL, &h, &pl), AB_EINLINE);
    /* given twice, even with the same bytes */
    memcpy(frame + n, frame + n - 12, 12);
    f[0].size = n + 12;
    CHECK_EQ(ab_msg_decode(f, 1, NULL, &h, &pl), AB_EINLINE);
    CHECK_EQ(ab_header_parse(frame, n + 12, &h), AB_EINLINE);
    /* truncated: its length runs past the frame */
    for (size_t cut = n - 11; cut < n; cut++) {
        f[0].size = cut;
        CHECK_EQ(ab_msg_decode(f, 1, NULL, &h, &pl), AB_EDECODE);
    }
    /* over the protocol's limit, and over the receiver's payload limit */
    n = s_inline_frame(&src, AB_INLINE_LIMIT + 1, frame, sizeof frame);
    f[0].size = n;
    CHECK_EQ(ab_msg_decode(f, 1, NULL, &h, &pl), AB_EINLINE);
    ab_limits_t lim = {AB_DEFAULT_MAX_HEADER, 100};
    n = s_inline_frame(&src, 101, frame, sizeof frame);
    f[0].size = n;
    CHECK_EQ(ab_msg_decode(f, 1, &lim, &h, &pl), AB_EPAYLOADSIZE);
    n = s_inline_frame(&src, 100, frame, sizeof frame);
    f[0].size = n;
    CHECK_EQ(ab_msg_decode(f, 1, &lim, &h, &pl), AB_OK);
    /* The header limit is the header's: an inline payload may take the
     * frame past it, a long header may not. */
    ab_limits_t tiny = {64, AB_DEFAULT_MAX_PAYLOAD};
    n = s_inline_frame(&src, 1000, frame, sizeof frame);
    f[0].size = n;
    CHECK_EQ(ab_msg_decode(f, 1, &tiny, &h, &pl), AB_OK);
    char name[100];
    memset(name, 'n', sizeof name - 1);
    name[99] = 0;
    ab_header_t big = src;
    big.error_text = ab_view_of(name);
    n = s_inline_frame(&big, 10, frame, sizeof frame);
    f[0].size = n;
    CHECK_EQ(ab_msg_decode(f, 1, &tiny, &h, &pl), AB_EHDRSIZE);
    /* the inline field with the wrong wire type (a varint) */
    uint8_t hb[64];
    size_t hl = ab_header_encode(&src, hb, sizeof hb);
    hb[hl] = 14 << 3 | 0;
    hb[hl + 1] = 5;
    ab_frame_t g = {hb, hl + 2};
    CHECK_EQ(ab_msg_decode(&g, 1, NULL, &h, &pl), AB_EDECODE);
}

int main(void)
{
    s_test_inline_round_trip();
    s_test_inline_rejections();
    s_test_round_trip();
    s_test_protobuf_c_agrees();
    s_test_constants();
    s_test_rejections();
    s_test_unknown_fields();
    s_test_status();
    s_test_pb_unpack();
    return TEST_DONE("test_codec");
}
