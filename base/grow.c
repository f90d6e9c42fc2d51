/*
 * grow.c - a buffer that grows by doubling (grow.h).
 */
#include "grow.h"

#include <stdint.h>
#include <stdlib.h>

int ab_grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    if (need > PTRDIFF_MAX) /* no object is that large: refused without asking */
        return -1;
    size_t c = *cap ? *cap : 256;
    while (c < need)
        c = c > PTRDIFF_MAX / 2 ? need : c * 2; /* past half the most: what is needed */
    char *p = realloc(*buf, c);
    if (!p)
        return -1;
    *buf = p;
    *cap = c;
    return 0;
}
