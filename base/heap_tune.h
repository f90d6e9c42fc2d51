/*
 * heap_tune.h - glibc's heap settings for agentbus's own programs (the
 * broker, the worker, the benches; base/: built into both common/ and
 * tools/lib). Process-wide, so libagentbus never calls it: an application
 * that moves large payloads at high rates can make the same mallopt(3)
 * calls, or set them by GLIBC_TUNABLES. The program decides whether to
 * call it (broker/main.c; tools/lib's tl_heap_tune for the others): a
 * GLIBC_TUNABLES malloc setting of the user's wins.
 *
 * Why the thresholds: at 4 KiB with batching, batches of ~56 KiB are allocated by one thread and
 * freed by libzmq's I/O thread (and received ones the other way round), thousands a second. With
 * glibc's defaults each free that left over 128 KiB at the top of an arena gave it back to the
 * kernel (brk, madvise) and the next batch faulted it in again, page by page: about one page fault
 * per 4 KiB request in the broker and in the worker, and a quarter of the broker's CPU
 * (docs/bench.md, "Issue 17: 4 KiB with batching").
 */
#ifndef AB_HEAP_TUNE_H
#define AB_HEAP_TUNE_H

/* Free heap an arena keeps at its top before giving it back: a window of
 * 1,000 requests of 4 KiB is 4 MiB in flight each way (at 4 MiB a few
 * faults per hundred requests remained, none at 16). The broker gives it
 * back when idle (router.c). */
#define AB_HEAP_TRIM_BYTES (16u << 20)
/* Blocks from this size up are mmap'd. Fixed, because setting the trim
 * threshold stops glibc from raising it by itself: a message up to the
 * default message-max-bytes (1 MiB) stays on the heap. */
#define AB_HEAP_MMAP_BYTES (2u << 20)
/* Freed chunks up to this size go to glibc's fastbins (M_MXFAST; 160 is
 * glibc's largest, its default is 128). Why: a message of up to ~110 bytes
 * that a program sends (the header and a 64 B payload in one frame,
 * codec.h "Inline") is allocated by its thread (zmq_msg_init_size: the
 * bytes and libzmq's 40-byte content record, one chunk of 144 or 160) and
 * freed by libzmq's I/O thread. Over 128 that free took the arena's lock
 * and the unsorted bin, and the next malloc sorted it back out; in a
 * fastbin both are a compare-and-swap. -450 instructions per 64 B request
 * in the broker without batching, 3.6 % (docs/bench.md, "Issue 17: the
 * cross-thread frees"). */
#define AB_HEAP_FAST_BYTES 160


/* Sets the three (mallopt). Call first thing in main, before any
 * thread starts. 1 when set, 0 when glibc refused. */
int ab_heap_tune(void);
/* 1 when TUNABLES (GLIBC_TUNABLES' value, or NULL) names a malloc setting:
 * then the user chose, and ab_heap_tune should not be called. */
int ab_heap_user_set(const char *tunables);

#endif
