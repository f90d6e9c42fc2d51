/*
 * fuzz_cache.c - fuzz target for what the inference cache decodes from
 * outside the process (issue 6): request payloads it unpacks to compute a
 * key (agentbus.InferenceRequest from the network) and reply blobs read
 * back from Redis (L2) or an LMDB file (L3). libFuzzer-compatible; ctest
 * runs it through driver.c under ASan+UBSan.
 */
#include "cache_blob.h"
#include "cache_key.h"
#include "codec.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    /* The first byte picks the flags; the rest is a payload. */
    uint32_t flags = data[0] & (AB_FLAG_CACHEABLE | AB_FLAG_NO_CACHE | AB_FLAG_LZ4);
    ab_key_input_t in = {"svc", "model:tag", (data[0] & 0x80) ? "sha256:d" : NULL, flags,
                         data + 1, size - 1, (data[0] & 0x40) != 0, size};
    ab_cache_key_t k1, k2;
    ab_key_kind_t a = ab_cache_key(&in, &k1), b = ab_cache_key(&in, &k2);
    /* Deterministic: the same input gives the same answer and key. */
    if (a != b || (a != AB_KEY_NO && !ab_cache_key_eq(&k1, &k2)))
        __builtin_trap();
    /* A blob walk never reads past the end and always ends. */
    size_t off = 0, n = 0;
    ab_chunk_t ch;
    int rc;
    while ((rc = ab_blob_next(data, size, &off, &ch)) == 1) {
        if (ch.data < data || ch.data + ch.size > data + size || off > size)
            __builtin_trap();
        if (++n > size)
            __builtin_trap();
    }
    return 0;
}
