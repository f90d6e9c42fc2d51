/*
 * fuzz_batch.c - fuzz target for the BATCH decoder (common/batch.c) and the
 * lz4 payload decoder (common/compress.c), the two decoders of issue 4 that
 * read bytes from the network. Three uses of each input:
 *   1. the raw bytes as a batch body and as an lz4 block;
 *   2. a valid batch built from the input (entry sizes taken from its bytes)
 *      must decode to exactly what was put in;
 *   3. that batch, damaged at a place the input picks, must either decode
 *      to entries that all decode as messages, or be refused whole.
 * Each time, ab_batch_decode (the receivers' one-parse path) must agree with
 * ab_batch_open and ab_batch_next.
 */
#include "agentbus.h"
#include "batch.h"
#include "codec.h"
#include "compress.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads a whole body; traps on any inconsistency. Returns entries or -1. */
static long s_drain(const uint8_t *body, size_t len)
{
    ab_limits_t lim = {256, 1024};
    ab_batch_reader_t r;
    uint32_t count;
    int rc = ab_batch_open(&r, body, len, &lim, &count);
    ab_frame_t f[2];
    size_t nf;
    if (rc != AB_OK) {
        if (rc != AB_EBATCH || ab_batch_next(&r, f, &nf) != 0)
            __builtin_trap();
        return -1;
    }
    long n = 0;
    while ((rc = ab_batch_next(&r, f, &nf)) == 1) {
        ab_header_t h;
        ab_frame_t pl;
        if (ab_msg_decode(f, nf, &lim, &h, &pl) != AB_OK || h.kind == AB_KIND_BATCH)
            __builtin_trap(); /* open promised every entry decodes */
        n++;
    }
    if (rc != 0 || n != (long)count)
        __builtin_trap();
    return n;
}

/* ab_batch_decode must agree with ab_batch_open on BODY (OPEN_N: what
 * s_drain returned): refused alike, or the same entries, each as
 * ab_msg_decode reads its frames. */
static void s_decode_agrees(const uint8_t *body, size_t len, long open_n)
{
    ab_limits_t lim = {256, 1024};
    ab_batch_entries_t d = {0};
    int rc = ab_batch_decode(&d, body, len, &lim);
    if ((rc == AB_OK) != (open_n >= 0) || (rc != AB_OK && (rc != AB_EBATCH || d.n)))
        __builtin_trap();
    if (rc == AB_OK) {
        ab_batch_reader_t r;
        ab_frame_t f[2], pl;
        size_t nf;
        if (d.n != (uint32_t)open_n || ab_batch_open(&r, body, len, &lim, NULL) != AB_OK)
            __builtin_trap();
        for (uint32_t i = 0; i < d.n; i++) {
            ab_header_t h;
            if (ab_batch_next(&r, f, &nf) != 1 || ab_msg_decode(f, nf, &lim, &h, &pl) != AB_OK ||
                d.e[i].h.id != h.id || d.e[i].h.kind != h.kind ||
                d.e[i].h.correlation_id != h.correlation_id ||
                d.e[i].has_payload != (nf == 2) || d.e[i].payload.data != pl.data ||
                d.e[i].payload.size != pl.size)
                __builtin_trap();
        }
    }
    ab_batch_entries_fini(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    s_decode_agrees(data, size, s_drain(data, size));
    if (size > 8) {
        uint64_t orig = (uint64_t)data[0] << 8 | data[1];
        if (ab_lz4_check(size - 2, orig, 4096) == AB_OK) {
            uint8_t *dst = malloc((size_t)orig);
            if (dst)
                ab_lz4_decompress(data + 2, size - 2, dst, (size_t)orig);
            free(dst);
        }
    }
    /* A valid batch from the input: each byte is one entry's payload size. */
    ab_batch_t b;
    ab_batch_init(&b);
    size_t n = size < 64 ? size : 64;
    static const uint8_t fill[256];
    for (size_t i = 0; i < n; i++) {
        ab_header_t h = ab_header_init(AB_KIND_REPLY);
        h.correlation_id = i + 1;
        uint8_t hb[64];
        size_t hl = ab_header_encode(&h, hb, sizeof hb);
        if (ab_batch_add(&b, hb, hl, fill, data[i], data[i] != 7) != AB_OK)
            __builtin_trap();
    }
    if (n) {
        size_t len;
        const uint8_t *body = ab_batch_body(&b, &len);
        if (s_drain(body, len) != (long)n)
            __builtin_trap();
        uint8_t *copy = malloc(len);
        memcpy(copy, body, len);
        size_t at = ((size_t)data[0] << 8 | data[n - 1]) % len;
        if (data[n / 2] & 1)
            copy[at] ^= (uint8_t)(data[0] | 1);
        else
            len = at;
        uint8_t *exact = malloc(len ? len : 1); /* exact size: ASan sees overreads */
        memcpy(exact, copy, len);
        s_decode_agrees(exact, len, s_drain(exact, len));
        free(exact);
        free(copy);
    }
    ab_batch_fini(&b);
    return 0;
}
