/*
 * compress.h - payload compression for the wire (lz4 block format, liblz4).
 *
 * A sender compresses a payload at or above its threshold when that saves at
 * least its minimum fraction, sets FLAG_LZ4 and original_size in the header.
 * Only the final receiver decompresses; the broker forwards the bytes as
 * they are. Decompression is bounded by the declared original size (checked
 * against the maximum payload and against what the block could possibly
 * expand to before anything is allocated) and must produce exactly that many
 * bytes: a lying size or a corrupt block is AB_ELZ4, never an overrun.
 */
#ifndef AB_COMPRESS_H
#define AB_COMPRESS_H

#include <stddef.h>
#include <stdint.h>

/* Compresses SRC (LEN bytes) into a malloc'd *OUT when the result is at most
 * (100 - MIN_SAVING_PCT)% of LEN. Returns 1 (compressed: *OUT, *OUT_LEN),
 * 0 (not worth it, or LEN too large for lz4; nothing allocated), AB_ENOMEM. */
int ab_lz4_compress(const void *src, size_t len, unsigned min_saving_pct, void **out,
                    size_t *out_len);

/* Whether a block of LEN bytes may declare ORIGINAL bytes with MAX_PAYLOAD
 * as the limit: AB_OK or AB_ELZ4 (0, over the limit, or more than lz4 can
 * expand LEN bytes to). Call before allocating ORIGINAL bytes. */
int ab_lz4_check(size_t len, uint64_t original, size_t max_payload);

/* Decompresses SRC into DST, which holds exactly ORIGINAL bytes (checked
 * with ab_lz4_check first). AB_OK, or AB_ELZ4 when the block is corrupt or
 * does not produce exactly ORIGINAL bytes. */
int ab_lz4_decompress(const void *src, size_t len, void *dst, size_t original);

#endif
