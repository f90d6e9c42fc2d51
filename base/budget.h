/*
 * budget.h - an allocator with a byte budget, for decoding what a peer
 * sent (base/: built into both common/ and tools/lib, see
 * docs/architecture.md). protobuf-c takes it as a ProtobufCAllocator:
 *
 *     size_t left = AB_DECODE_BUDGET(len);
 *     ProtobufCAllocator a = {AB_BUDGET_ALLOCATOR(&left)};
 *     m = agentbus__x__unpack(&a, len, data);   (NULL past the budget)
 *     agentbus__x__free_unpacked(m, NULL);      (malloc's memory: free())
 *
 * A repeated message field takes a record for each entry: millions of
 * empty entries, 2 bytes each on the wire, took ~25-60x the message's
 * size (a 40 MB chat request of empty messages: 2.7 GB in the broker).
 * Thread-safe: the budget is the caller's. Code that links libagentbus
 * calls ab_pb_unpack (agentbus.h), which does the above.
 */
#ifndef AB_BUDGET_H
#define AB_BUDGET_H

#include <stddef.h>

/* What decoding LEN bytes may take: 4x (what an honest message takes at
 * most: token ids of one byte each, 4 decoded) plus 1 MiB for records. */
#define AB_DECODE_BUDGET(len) (4 * (size_t)(len) + ((size_t)1 << 20))

/* malloc(SIZE) charged to *(size_t *)BUDGET with 16 bytes more (malloc's
 * own), or NULL when it does not fit. What is freed is not given back: a
 * failed decode frees all, a good one little. */
void *ab_budget_alloc(void *budget, size_t size);
/* free(P). */
void ab_budget_free(void *budget, void *p);

/* The members of a ProtobufCAllocator charging *LEFT (a size_t). */
#define AB_BUDGET_ALLOCATOR(left)                                                                 \
    .alloc = ab_budget_alloc, .free = ab_budget_free, .allocator_data = (left)

#endif
