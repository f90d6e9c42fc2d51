/*
 * grow.h - a buffer that grows by doubling (base/: built into both common/
 * and tools/lib, see docs/architecture.md). Thread-safe (no state of its
 * own); the buffer is the caller's.
 *
 * Text gathered a piece at a time (an answer's chunks, what curl hands
 * over) must not be realloc'ed to the exact size for each piece: realloc
 * may copy all of it again each time (ASan's realloc always moves), so N
 * bytes in pieces of K cost N*N/(2K) bytes copied. Doubling makes the
 * copies O(N) in all and the reallocs O(log N).
 */
#ifndef AB_GROW_H
#define AB_GROW_H

#include <stddef.h>

/* Makes *BUF (*CAP bytes, NULL and 0 at first) hold at least NEED bytes:
 * when it is smaller, it is realloc'ed to twice its size (256 at least)
 * until NEED fits, and *CAP set to the new size. 0 on success; -1 when
 * memory runs out or NEED is above PTRDIFF_MAX (then no realloc is tried),
 * and then *BUF and *CAP are as they were (the caller still owns and frees
 * *BUF). */
int ab_grow(char **buf, size_t *cap, size_t need);

#endif
