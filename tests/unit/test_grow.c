/*
 * test_grow.c - base/grow.c: a buffer filled a piece at a time grows by
 * doubling, so N appends cost O(log N) reallocs (a realloc to the exact
 * size for each piece cost one per piece, and under ASan, whose realloc
 * always moves, a copy of everything so far each time); what it holds
 * survives each growth; an impossible size fails and leaves the buffer.
 */
#include "grow.h"
#include "test.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* N appends of a PIECE-byte piece (plus a NUL after each, as the text
 * buffers keep): the number of times the capacity changed. */
static int s_growths(size_t n, size_t piece)
{
    char *buf = NULL, bytes[64];
    size_t cap = 0, len = 0;
    int growths = 0;
    memset(bytes, 'x', sizeof bytes);
    for (size_t i = 0; i < n; i++) {
        size_t before = cap;
        REQUIRE(ab_grow(&buf, &cap, len + piece + 1) == 0);
        growths += cap != before;
        CHECK_TRUE(cap >= len + piece + 1);
        memcpy(buf + len, bytes, piece);
        len += piece;
        buf[len] = '\0';
    }
    size_t x = 0;
    while (x < len && buf[x] == 'x')
        x++;
    CHECK_U64(x, n * piece); /* nothing lost in a move */
    free(buf);
    return growths;
}

int main(void)
{
    /* 1,000,000 one-byte pieces: from 256 bytes to 1 MiB is 13 doublings. */
    CHECK_RANGE(s_growths(1000000, 1), 1, 14);
    /* 100,000 pieces of 37 bytes (3.7 MB): 15 doublings from 256. */
    CHECK_RANGE(s_growths(100000, 37), 1, 16);
    /* A piece larger than twice the buffer: one realloc, not several. */
    char *buf = NULL;
    size_t cap = 0;
    REQUIRE(ab_grow(&buf, &cap, 10) == 0);
    CHECK_U64(cap, 256);
    REQUIRE(ab_grow(&buf, &cap, 100000) == 0);
    CHECK_U64(cap, 131072);
    CHECK_EQ(ab_grow(&buf, &cap, 5000), 0); /* fits: untouched */
    CHECK_U64(cap, 131072);
    /* A size no object can have: -1 at once, and the buffer is as it was. */
    char *was = buf;
    buf[0] = 'k';
    CHECK_EQ(ab_grow(&buf, &cap, SIZE_MAX), -1);
    CHECK_TRUE(buf == was);
    CHECK_U64(cap, 131072);
    CHECK_EQ(buf[0], 'k');
    free(buf);
    return TEST_DONE("grow");
}
