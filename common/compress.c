/* compress.c - see compress.h. The block API (not the frame format): the header
 * already carries the original size, so the frame's own would be waste. */
#include "compress.h"
#include "agentbus.h"

#include <lz4.h>
#include <stdlib.h>

/* lz4's worst case is a literal run: at most 255 output bytes per input
 * byte, plus a little for the end of block. */
#define AB_LZ4_MAX_RATIO 255u

int ab_lz4_compress(const void *src, size_t len, unsigned min_saving_pct, void **out,
                    size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (len == 0 || len > (size_t)LZ4_MAX_INPUT_SIZE || min_saving_pct > 99)
        return 0;
    /* Largest result worth sending; lz4 gives up (0) when it would not fit,
     * so an incompressible payload costs one bounded pass and no copy out. */
    size_t cap = len - (len * min_saving_pct + 99) / 100;
    if (cap == len)
        cap = len - 1; /* a "compressed" payload must at least be smaller */
    if (cap == 0)
        return 0;
    char *buf = malloc(cap);
    if (!buf)
        return AB_ENOMEM;
    int n = LZ4_compress_default(src, buf, (int)len, (int)cap);
    if (n <= 0) {
        free(buf);
        return 0;
    }
    *out = buf;
    *out_len = (size_t)n;
    return 1;
}

int ab_lz4_check(size_t len, uint64_t original, size_t max_payload)
{
    if (original == 0 || len == 0 || original > max_payload || original > (uint64_t)INT32_MAX ||
        original > (uint64_t)len * AB_LZ4_MAX_RATIO + 16)
        return AB_ELZ4;
    return AB_OK;
}

int ab_lz4_decompress(const void *src, size_t len, void *dst, size_t original)
{
    if (len > (size_t)INT32_MAX || original > (size_t)INT32_MAX)
        return AB_ELZ4;
    int n = LZ4_decompress_safe(src, dst, (int)len, (int)original);
    return n >= 0 && (size_t)n == original ? AB_OK : AB_ELZ4;
}
