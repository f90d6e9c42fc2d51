/* heap_tune.c - see heap_tune.h. */
#include "heap_tune.h"

#include <malloc.h>
#include <string.h>

int ab_heap_tune(void)
{
    return mallopt(M_MMAP_THRESHOLD, (int)AB_HEAP_MMAP_BYTES) == 1 &&
           mallopt(M_TRIM_THRESHOLD, (int)AB_HEAP_TRIM_BYTES) == 1 &&
           mallopt(M_MXFAST, AB_HEAP_FAST_BYTES) == 1;
}

int ab_heap_user_set(const char *tunables)
{
    return tunables && strstr(tunables, "glibc.malloc.") != NULL;
}
