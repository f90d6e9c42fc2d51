/* base/heap_tune.h: a user's GLIBC_TUNABLES malloc setting is seen
 * (ab_heap_user_set); after ab_heap_tune a 1.5 MiB block comes from the heap
 * (not an mmap: the default threshold is 128 KiB) and the heap it leaves
 * free at the top is kept (the default trim threshold, 128 KiB, gave it back
 * to the kernel, to be faulted in again). A 144-byte chunk (a 64 B inline
 * message: libzmq's record and the frame) freed by another thread, as
 * libzmq's I/O thread frees what a program sent, lands in a fastbin (with
 * glibc's default of 128 it went to the locked unsorted bin).
 * ASan replaces the allocator: there only the user's choice is checked. */
#include "heap_tune.h"
#include "test.h"
#include "util.h"

#include <malloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if !AB_ASAN
enum { S_BLOCKS = 64, S_BLOCK_BYTES = 130 }; /* malloc(130): a chunk of 144 */

static void *s_free_all(void *arg)
{
    void **blocks = arg;
    for (int i = 0; i < S_BLOCKS; i++)
        free(blocks[i]);
    return NULL;
}

/* Bytes of the main arena's fastbins after another thread freed S_BLOCKS
 * chunks of 144 that this one allocated. */
static size_t s_fast_after_remote_free(void)
{
    void *blocks[S_BLOCKS];
    for (int i = 0; i < S_BLOCKS; i++)
        blocks[i] = malloc(S_BLOCK_BYTES);
    size_t before = mallinfo2().fsmblks;
    pthread_t t;
    if (pthread_create(&t, NULL, s_free_all, blocks) != 0)
        return 0;
    pthread_join(t, NULL);
    size_t after = mallinfo2().fsmblks;
    return after > before ? after - before : 0;
}
#endif

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
    /* The freeing thread's cache holds 7 (glibc's tcache_count); the rest
     * go to the fastbin, lock-free. */
    size_t fast = s_fast_after_remote_free();
    CHECK_TRUE(fast >= (size_t)(S_BLOCKS - 7) * 144);
#endif
    return TEST_DONE("test_heap_tune");
}
