/* base/heap_tune.h: a user's GLIBC_TUNABLES malloc setting is seen
 * (ab_heap_user_set); after ab_heap_tune a 1.5 MiB block comes from the heap
 * (not an mmap: the default threshold is 128 KiB) and the heap it leaves
 * free at the top is kept (the default trim threshold, 128 KiB, gave it back
 * to the kernel, to be faulted in again).
 * ASan replaces the allocator: there only the user's choice is checked. */
#include "heap_tune.h"
#include "test.h"
#include "util.h"

#include <malloc.h>
#include <stdlib.h>
#include <string.h>

int main(void)
{
    CHECK_EQ(ab_heap_user_set("glibc.malloc.trim_threshold=1000000"), 1);
    CHECK_EQ(ab_heap_user_set("glibc.rtld.nns=4:glibc.malloc.tcache_count=0"), 1);
    CHECK_EQ(ab_heap_user_set("glibc.rtld.nns=4"), 0); /* not a malloc setting */
    CHECK_EQ(ab_heap_user_set(""), 0);
    CHECK_EQ(ab_heap_user_set(NULL), 0);
#if !AB_ASAN
    CHECK_EQ(ab_heap_tune(), 1);
    size_t n = (size_t)3 << 19;
    uint8_t *p = malloc(n);
    REQUIRE(p != NULL);
    memset(p, 1, n); /* its pages are touched, as a batch's are */
    struct mallinfo2 held = mallinfo2();
    CHECK_U64(held.hblks, 0); /* not an mmap */
    free(p);
    struct mallinfo2 after = mallinfo2();
    CHECK_TRUE(after.keepcost >= n); /* kept at the top of the heap, not trimmed */
    CHECK_TRUE(after.arena >= held.arena);
#endif
    return TEST_DONE("test_heap_tune");
}
