/*
 * test_batch.c - the BATCH encoder/decoder and the lz4 payload codec:
 * round trips at the limits, every malformed-batch case (each must deliver
 * no entry), incompressible payloads left alone, lying sizes and corrupt
 * blocks refused without overrun (ASan build).
 */
#include "agentbus.h"
#include "batch.h"
#include "codec.h"
#include "compress.h"
#include "test.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Appends a REQUEST with id ID and a payload of N bytes of ID's low byte. */
static void s_add(ab_batch_t *b, uint64_t id, size_t n, int has_payload)
{
    ab_header_t h = ab_header_init(AB_KIND_REQUEST);
    h.id = id;
    h.target = ab_view_of("echo");
    uint8_t hb[256];
    size_t hl = ab_header_encode(&h, hb, sizeof hb);
    uint8_t *p = malloc(n ? n : 1);
    memset(p, (int)(id & 0xff), n);
    REQUIRE(ab_batch_add(b, hb, hl, p, n, has_payload) == AB_OK);
    free(p);
}

/* ab_batch_decode of BODY must give what the reader gives: the same
 * entries, each header as ab_msg_decode parses its frames, the payload at
 * the same bytes, with or without a payload frame alike. */
static void s_decode_agrees(const uint8_t *body, size_t len, uint32_t count)
{
    ab_batch_entries_t d = {0};
    CHECK_EQ(ab_batch_decode(&d, body, len, NULL), AB_OK);
    CHECK_EQ(d.n, count);
    ab_batch_reader_t r;
    REQUIRE(ab_batch_open(&r, body, len, NULL, NULL) == AB_OK);
    ab_frame_t f[2];
    size_t nf;
    for (uint32_t i = 0; i < d.n && ab_batch_next(&r, f, &nf) == 1; i++) {
        ab_header_t h;
        ab_frame_t pl;
        REQUIRE(ab_msg_decode(f, nf, NULL, &h, &pl) == AB_OK);
        const ab_batch_entry_t *e = &d.e[i];
        CHECK_U64(e->h.id, h.id);
        CHECK_EQ(e->h.kind, h.kind);
        CHECK_EQ((int)e->h.target.len, (int)h.target.len);
        CHECK_TRUE(e->h.target.ptr == h.target.ptr); /* a view into BODY, not a copy */
        CHECK_EQ(e->has_payload, nf == 2);
        CHECK_TRUE(e->payload.data == pl.data);
        CHECK_EQ(e->payload.size, pl.size);
    }
    ab_batch_entries_fini(&d);
    CHECK_TRUE(d.e == NULL && d.n == 0 && d.cap == 0);
}

/* Decodes BODY completely; returns entries seen, -1 if open failed. Checks
 * each entry's id is FIRST_ID + i and its payload bytes. */
static int s_read_all(const uint8_t *body, size_t len, uint64_t first_id)
{
    ab_batch_reader_t r;
    uint32_t count = 0;
    if (ab_batch_open(&r, body, len, NULL, &count) != AB_OK)
        return -1;
    s_decode_agrees(body, len, count);
    int n = 0;
    ab_frame_t f[2];
    size_t nf;
    while (ab_batch_next(&r, f, &nf) == 1) {
        ab_header_t h;
        ab_frame_t pl;
        CHECK_EQ(ab_msg_decode(f, nf, NULL, &h, &pl), AB_OK);
        CHECK_U64(h.id, first_id + (uint64_t)n);
        for (size_t k = 0; k < pl.size; k++)
            if (((const uint8_t *)pl.data)[k] != (uint8_t)(h.id & 0xff)) {
                CHECK_TRUE(!"payload byte differs");
                break;
            }
        n++;
    }
    CHECK_EQ(n, count);
    return n;
}

static void s_test_round_trip(void)
{
    ab_batch_t b;
    ab_batch_init(&b);
    for (uint64_t i = 0; i < 64; i++)
        s_add(&b, 100 + i, (size_t)(i * 13 % 200), 1);
    size_t len;
    const uint8_t *body = ab_batch_body(&b, &len);
    CHECK_EQ(s_read_all(body, len, 100), 64);
    /* An entry without a payload frame stays without one; an empty payload
     * frame stays an empty frame. */
    ab_batch_clear(&b);
    s_add(&b, 7, 0, 0);
    s_add(&b, 8, 0, 1);
    body = ab_batch_body(&b, &len);
    ab_batch_reader_t r;
    ab_frame_t f[2];
    size_t nf;
    REQUIRE(ab_batch_open(&r, body, len, NULL, NULL) == AB_OK);
    CHECK_EQ(ab_batch_next(&r, f, &nf), 1);
    CHECK_EQ(nf, 1);
    CHECK_EQ(ab_batch_next(&r, f, &nf), 1);
    CHECK_EQ(nf, 2);
    CHECK_EQ(f[1].size, 0);
    CHECK_EQ(ab_batch_next(&r, f, &nf), 0);
    s_decode_agrees(body, len, 2);
    ab_batch_fini(&b);
}

/* A sender's one gathered message comes back as its frames, without or
 * with a payload frame; anything but exactly one entry is refused. */
static void s_test_single(void)
{
    ab_batch_t b;
    ab_batch_init(&b);
    ab_frame_t f[2];
    size_t nf = 9;
    CHECK_EQ(ab_batch_single(&b, f, &nf), AB_EINVAL); /* empty */
    s_add(&b, 42, 30, 1);
    CHECK_EQ(ab_batch_single(&b, f, &nf), AB_OK);
    CHECK_EQ(nf, 2);
    ab_header_t h;
    ab_frame_t pl;
    CHECK_EQ(ab_msg_decode(f, nf, NULL, &h, &pl), AB_OK);
    CHECK_U64(h.id, 42);
    CHECK_EQ(pl.size, 30);
    CHECK_EQ(((const uint8_t *)pl.data)[29], 42);
    s_add(&b, 43, 1, 1);
    CHECK_EQ(ab_batch_single(&b, f, &nf), AB_EINVAL); /* two */
    ab_batch_clear(&b);
    s_add(&b, 44, 0, 0);
    CHECK_EQ(ab_batch_single(&b, f, &nf), AB_OK);
    CHECK_EQ(nf, 1);
    CHECK_EQ(ab_msg_decode(f, nf, NULL, &h, &pl), AB_OK);
    CHECK_U64(h.id, 44);
    ab_batch_fini(&b);
}

static void s_test_limits(void)
{
    ab_batch_t b;
    ab_batch_init(&b);
    /* Exactly the decoder's maximum count. */
    for (uint64_t i = 0; i < AB_BATCH_MAX_COUNT; i++)
        s_add(&b, 1 + i, 1, 1);
    uint8_t hb[64];
    CHECK_EQ(ab_batch_add(&b, hb, 2, NULL, 0, 0), AB_EINVAL);
    size_t len;
    const uint8_t *body = ab_batch_body(&b, &len);
    CHECK_EQ(s_read_all(body, len, 1), AB_BATCH_MAX_COUNT);
    /* Entries at the per-entry limits: a payload of exactly max_payload is
     * accepted, one byte more makes the whole batch malformed. */
    ab_limits_t lim = {256, 1000};
    ab_batch_clear(&b);
    s_add(&b, 1, 1000, 1);
    body = ab_batch_body(&b, &len);
    ab_batch_reader_t r;
    CHECK_EQ(ab_batch_open(&r, body, len, &lim, NULL), AB_OK);
    s_add(&b, 2, 1001, 1);
    body = ab_batch_body(&b, &len);
    CHECK_EQ(ab_batch_open(&r, body, len, &lim, NULL), AB_EBATCH);
    CHECK_EQ(ab_batch_next(&r, (ab_frame_t[2]){{0}}, &(size_t){0}), 0);
    ab_batch_entries_t d = {0};
    CHECK_EQ(ab_batch_decode(&d, body, len, &lim), AB_EBATCH); /* the limits apply alike */
    CHECK_EQ(d.n, 0);
    ab_batch_entries_fini(&d);
    /* The default batch limit in bytes fits: 64 entries of 1000 bytes. */
    ab_batch_clear(&b);
    for (uint64_t i = 0; i < 64; i++)
        s_add(&b, 1 + i, 1000, 1);
    body = ab_batch_body(&b, &len);
    CHECK_TRUE(len <= AB_BATCH_DEFAULT_BYTES + 1024);
    CHECK_EQ(s_read_all(body, len, 1), 64);
    ab_batch_fini(&b);
}

/* Every malformed case: open refuses and the reader yields nothing. */
static void s_expect_malformed(const uint8_t *body, size_t len, const char *what)
{
    ab_batch_reader_t r;
    uint32_t count = 99;
    int rc = ab_batch_open(&r, body, len, NULL, &count);
    if (rc != AB_EBATCH)
        fprintf(stderr, "case '%s' not refused\n", what);
    CHECK_EQ(rc, AB_EBATCH);
    CHECK_EQ(count, 0);
    ab_frame_t f[2];
    size_t nf;
    CHECK_EQ(ab_batch_next(&r, f, &nf), 0);
    /* The decoder refuses the same, and hands out nothing of it even when
     * it held a good batch before (the array is reused). */
    ab_batch_t good;
    ab_batch_init(&good);
    s_add(&good, 1, 3, 1);
    s_add(&good, 2, 3, 1);
    size_t glen;
    const uint8_t *gbody = ab_batch_body(&good, &glen);
    ab_batch_entries_t d = {0};
    REQUIRE(ab_batch_decode(&d, gbody, glen, NULL) == AB_OK);
    CHECK_EQ(d.n, 2);
    CHECK_EQ(ab_batch_decode(&d, body, len, NULL), AB_EBATCH);
    CHECK_EQ(d.n, 0);
    ab_batch_entries_fini(&d);
    ab_batch_fini(&good);
}

static void s_test_malformed(void)
{
    ab_batch_t b;
    ab_batch_init(&b);
    for (uint64_t i = 0; i < 3; i++)
        s_add(&b, 10 + i, 20, 1);
    size_t len;
    const uint8_t *good = ab_batch_body(&b, &len);
    uint8_t *m = malloc(len + 16);

    memcpy(m, good, len);
    m[0] = 4; /* count too large: claims 4, holds 3 */
    s_expect_malformed(m, len, "count too large");
    m[0] = 2; /* count too small: trailing entry */
    s_expect_malformed(m, len, "count too small");
    memcpy(m, good, len);
    m[3] = 0x80; /* absurd count */
    s_expect_malformed(m, len, "absurd count");
    m[0] = m[1] = m[2] = m[3] = 0;
    s_expect_malformed(m, len, "zero count");
    s_expect_malformed(good, 3, "shorter than the count");
    s_expect_malformed(NULL, 0, "empty");
    /* Truncated: every shorter length fails, none delivers. */
    for (size_t cut = 4; cut < len; cut++)
        s_expect_malformed(good, cut, "truncated");
    /* Entry header length past the end. */
    memcpy(m, good, len);
    m[4] = 0x7f;
    s_expect_malformed(m, len, "header length past end");
    /* Payload length past the end: the last entry's payload length byte. */
    memcpy(m, good, len);
    m[len - 21] = 50;
    s_expect_malformed(m, len, "payload length past end");
    /* Over-long varint as a length. */
    memcpy(m, good, 4);
    memset(m + 4, 0xff, 12);
    s_expect_malformed(m, 16, "overlong varint");
    /* An entry whose header does not validate (REQUEST without id). */
    ab_batch_clear(&b);
    ab_header_t h = ab_header_init(AB_KIND_REQUEST);
    h.target = ab_view_of("x");
    uint8_t hb[64];
    size_t hl = ab_header_encode(&h, hb, sizeof hb);
    s_add(&b, 1, 5, 1);
    ab_batch_add(&b, hb, hl, "abc", 3, 1);
    const uint8_t *body = ab_batch_body(&b, &len);
    s_expect_malformed(body, len, "invalid entry header");
    /* Nested batch: an entry of kind BATCH carrying a valid inner batch. */
    ab_batch_t inner;
    ab_batch_init(&inner);
    s_add(&inner, 5, 5, 1);
    size_t ilen;
    const uint8_t *ibody = ab_batch_body(&inner, &ilen);
    h = ab_header_init(AB_KIND_BATCH);
    hl = ab_header_encode(&h, hb, sizeof hb);
    ab_batch_clear(&b);
    s_add(&b, 1, 5, 1);
    ab_batch_add(&b, hb, hl, ibody, ilen, 1);
    body = ab_batch_body(&b, &len);
    s_expect_malformed(body, len, "nested batch");
    /* An entry carrying its payload inline (codec.h): entries have their
     * own payload slot, so the whole batch is refused. */
    h = ab_header_init(AB_KIND_REQUEST);
    h.id = 7;
    h.target = ab_view_of("x");
    hl = ab_header_encode(&h, hb, sizeof hb);
    uint8_t one[80];
    size_t ol = ab_msg_inline_size(hl, 3);
    REQUIRE(ol <= sizeof one);
    ab_msg_inline_put(one, hb, hl, "abc", 3);
    ab_batch_clear(&b);
    s_add(&b, 1, 5, 1);
    ab_batch_add(&b, one, ol, NULL, 0, 0);
    body = ab_batch_body(&b, &len);
    s_expect_malformed(body, len, "inline payload in an entry");
    ab_batch_clear(&b);
    ab_batch_add(&b, one, ol, "def", 3, 1);
    body = ab_batch_body(&b, &len);
    s_expect_malformed(body, len, "inline payload and a payload in an entry");
    ab_batch_fini(&inner);
    free(m);
    ab_batch_fini(&b);
}

/* Text that compresses like prompts do: words from a small vocabulary. */
static void s_text(char *buf, size_t n)
{
    static const char *words[] = {"the ", "model ", "agent ", "request ", "reply ",
                                  "context ", "token ", "{\"role\": \"user\", ", "prompt ",
                                  "answer. "};
    size_t k = 0;
    while (k < n) {
        const char *w = words[t_rand() % 10];
        for (size_t i = 0; w[i] && k < n; i++)
            buf[k++] = w[i];
    }
}

static void s_test_lz4(void)
{
    size_t n = 64 * 1024;
    char *text = malloc(n), *back = malloc(n);
    s_text(text, n);
    void *z = NULL;
    size_t zl = 0;
    CHECK_EQ(ab_lz4_compress(text, n, 10, &z, &zl), 1);
    CHECK_TRUE(zl < n / 2);
    CHECK_EQ(ab_lz4_check(zl, n, 64 << 20), AB_OK);
    CHECK_EQ(ab_lz4_decompress(z, zl, back, n), AB_OK);
    CHECK_TRUE(memcmp(text, back, n) == 0);

    /* Lying original size: too large, too small, zero, over the limit,
     * beyond what the block could expand to. Never an overrun (ASan). */
    CHECK_EQ(ab_lz4_decompress(z, zl, back, n - 1), AB_ELZ4);
    char *big = malloc(n + 100);
    CHECK_EQ(ab_lz4_decompress(z, zl, big, n + 100), AB_ELZ4);
    free(big);
    CHECK_EQ(ab_lz4_check(zl, 0, 64 << 20), AB_ELZ4);
    CHECK_EQ(ab_lz4_check(zl, n, n - 1), AB_ELZ4);
    CHECK_EQ(ab_lz4_check(10, 10 * 255 + 17, 64 << 20), AB_ELZ4);
    CHECK_EQ(ab_lz4_check(10, 1ull << 40, SIZE_MAX), AB_ELZ4);

    /* Corrupt blocks: flipped bytes and truncations decode to an error or
     * (rarely) to other bytes, never past the buffer. */
    uint8_t *bad = malloc(zl);
    int refused = 0;
    for (int i = 0; i < 200; i++) {
        memcpy(bad, z, zl);
        size_t len = zl;
        if (i % 2)
            bad[t_rand() % zl] ^= (uint8_t)(1 + t_rand() % 255);
        else
            len = t_rand() % zl;
        if (ab_lz4_decompress(bad, len, back, n) == AB_ELZ4)
            refused++;
    }
    CHECK_TRUE(refused >= 100); /* every truncation at least */
    /* A block of literal garbage. */
    memset(bad, 0xff, zl);
    CHECK_EQ(ab_lz4_decompress(bad, zl, back, n), AB_ELZ4);
    free(bad);
    free(z);

    /* Incompressible: random bytes are left alone, nothing allocated. */
    for (size_t i = 0; i < n; i++)
        text[i] = (char)t_rand();
    z = (void *)1;
    CHECK_EQ(ab_lz4_compress(text, n, 10, &z, &zl), 0);
    CHECK_TRUE(z == NULL);
    CHECK_EQ(zl, 0);
    /* The minimum saving is honoured: text compressible to ~40% is not
     * compressed when 90% saving is demanded. */
    s_text(text, n);
    CHECK_EQ(ab_lz4_compress(text, n, 90, &z, &zl), 0);
    CHECK_EQ(ab_lz4_compress(text, n, 0, &z, &zl), 1);
    free(z);
    free(text);
    free(back);
}

static void s_test_wire(void)
{
    CHECK_EQ(ab_status_to_wire(AB_EBATCH), AB_ERR_MALFORMED);
    CHECK_EQ(ab_status_to_wire(AB_ELZ4), AB_ERR_MALFORMED);
    CHECK_STR(ab_status_name(AB_EBATCH), "BATCH");
    CHECK_STR(ab_status_name(AB_ELZ4), "LZ4");
    /* The header's features field (20, two-byte tag) round-trips. */
    ab_header_t h = ab_header_init(AB_KIND_HELLO), back;
    h.features = AB_FEATURE_BATCH | AB_FEATURE_LZ4;
    uint8_t buf[256];
    size_t n = ab_header_encode(&h, buf, sizeof buf);
    CHECK_U64(n, ab_header_size(&h));
    CHECK_EQ(ab_header_parse(buf, n, &back), AB_OK);
    CHECK_U64(back.features, h.features);
}

/* A detached body is the whole batch, owned by the caller; the encoder is
 * left empty and reusable, and a second detach gives the next batch only. */
static void s_test_detach(void)
{
    ab_batch_t b;
    ab_batch_init(&b);
    size_t len = 1;
    CHECK_TRUE(ab_batch_detach(&b, &len) == NULL);
    CHECK_EQ(len, 0);
    for (uint64_t i = 0; i < 40; i++)
        s_add(&b, 500 + i, (size_t)(i * 97 % 300), 1);
    uint8_t *body = ab_batch_detach(&b, &len);
    REQUIRE(body != NULL);
    CHECK_EQ(s_read_all(body, len, 500), 40);
    CHECK_EQ(b.count, 0);
    CHECK_EQ(b.len, 0);
    CHECK_TRUE(b.buf == NULL);
    CHECK_TRUE(b.next_cap >= len);
    free(body);
    for (uint64_t i = 0; i < 3; i++)
        s_add(&b, 900 + i, 10, 1);
    CHECK_TRUE(b.cap >= b.len);
    body = ab_batch_detach(&b, &len);
    REQUIRE(body != NULL);
    CHECK_EQ(s_read_all(body, len, 900), 3);
    free(body);
    ab_batch_fini(&b);
}

/* A batch of 4 KiB messages at the default 64 KiB limit (~56 KiB) stays
 * under AB_BATCH_HEAP_MAX: its next buffer starts there (1.5x rounded up
 * to a power of two was 128 KiB, an mmap per batch), growing one past it
 * stops there while the body fits, and a larger body still gets its room. */
static void s_test_heap_sized(void)
{
    ab_batch_t b;
    ab_batch_init(&b);
    size_t len = 0;
    for (int round = 0; round < 3; round++) {
        for (uint64_t i = 0; i < 14; i++)
            s_add(&b, 100 + i, 4096, 1);
        CHECK_TRUE(b.cap <= AB_BATCH_HEAP_MAX);
        uint8_t *body = ab_batch_detach(&b, &len);
        REQUIRE(body != NULL);
        CHECK_EQ(s_read_all(body, len, 100), 14);
        free(body);
        CHECK_TRUE(len > 56 * 1024);
        CHECK_U64(b.next_cap, AB_BATCH_HEAP_MAX);
    }
    for (uint64_t i = 0; i < 20; i++) /* grows past the start, stops at the limit */
        s_add(&b, 200 + i, 4096, 1);
    CHECK_U64(b.cap, AB_BATCH_HEAP_MAX);
    for (uint64_t i = 20; i < 40; i++) /* a body over it still fits */
        s_add(&b, 200 + i, 4096, 1);
    CHECK_TRUE(b.cap >= b.len);
    uint8_t *body = ab_batch_detach(&b, &len);
    REQUIRE(body != NULL);
    CHECK_EQ(s_read_all(body, len, 200), 40);
    free(body);
    CHECK_TRUE(b.next_cap > AB_BATCH_HEAP_MAX);
    ab_batch_fini(&b);
}

/* The count limit grows with a backlog that fills batches, falls back as
 * it drains, and never leaves [min(64, max), max]. */
static void s_test_next_limit(void)
{
    uint32_t l = ab_batch_next_limit(0, 0, 4096);
    CHECK_EQ(l, AB_BATCH_START_COUNT);
    for (int i = 0; i < 20; i++)
        l = ab_batch_next_limit(l, 100000, 4096); /* a backlog: turns cut by the limit */
    CHECK_EQ(l, 4096);
    CHECK_EQ(ab_batch_next_limit(4096, 2000, 4096), 4096); /* over a quarter: kept */
    for (int i = 0; i < 20; i++)
        l = ab_batch_next_limit(l, 1, 4096); /* idle turns */
    CHECK_EQ(l, AB_BATCH_START_COUNT);
    CHECK_EQ(ab_batch_next_limit(64, 64, 100), 100); /* doubling stops at the ceiling */
    CHECK_EQ(ab_batch_next_limit(0, 0, 16), 16);     /* a ceiling under 64 is a fixed limit */
    CHECK_EQ(ab_batch_next_limit(16, 5000, 16), 16);
    CHECK_EQ(ab_batch_next_limit(16, 0, 16), 16);
    CHECK_EQ(ab_batch_next_limit(64, 64, 64), 64); /* as before: a fixed 64 */
    CHECK_EQ(ab_batch_next_limit(9999, 0, 1u << 20), 4096 / 2);
}

int main(void)
{
    s_test_round_trip();
    s_test_single();
    s_test_next_limit();
    s_test_detach();
    s_test_heap_sized();
    s_test_limits();
    s_test_malformed();
    s_test_lz4();
    s_test_wire();
    return TEST_DONE("test_batch");
}
