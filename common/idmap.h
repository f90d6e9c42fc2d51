/*
 * idmap.h - a hash map from non-zero 64-bit ids to pointers.
 *
 * Open addressing with linear probing and backward-shift deletion: no
 * allocation per entry, no tombstones, one multiply per lookup. The broker
 * keys its pending requests by id, the library its calls in flight, and
 * both do a put, a get and a delete for every request. Capacity doubles at
 * half load and halves below 1/32 load, never under the initial capacity,
 * so a table that once held a burst gives its memory back (the hysteresis,
 * a factor of 8 in entries between a halving and the next doubling, keeps
 * a count that swings with each batch of answers from resizing each time).
 * A count that falls to nothing and rises again at each turn (a client's
 * window of calls, drained whole in one poll) is what keep_cap is for: the
 * table then keeps the size it needed, up to keep_cap, instead of halving
 * down to its initial size and doubling back every turn.
 * A zeroed ab_idmap_t is a valid empty map (its first put allocates).
 * Not thread-safe.
 */
#ifndef AB_IDMAP_H
#define AB_IDMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t *keys; /* 0 = empty slot */
    void **vals;
    size_t cap;     /* power of two */
    size_t len;
    size_t min_cap; /* shrinking stops here (the initial capacity) */
    size_t keep_cap; /* 0, or: shrinking also stops at the largest capacity
                      * reached, up to this (set by the owner after init) */
    size_t peak_cap; /* largest capacity reached */
} ab_idmap_t;

/* 0, or -1 when out of memory. */
int ab_idmap_init(ab_idmap_t *m, size_t initial_cap);
void ab_idmap_fini(ab_idmap_t *m);
/* Inserts or replaces KEY (must not be 0). 0, or -1 when out of memory. */
int ab_idmap_put(ab_idmap_t *m, uint64_t key, void *val);
/* The value for KEY, or NULL. */
void *ab_idmap_get(const ab_idmap_t *m, uint64_t key);
/* Removes KEY; returns its value, or NULL if absent. May shrink the table
 * (when that fails for lack of memory the map simply stays larger). */
void *ab_idmap_del(ab_idmap_t *m, uint64_t key);
static inline size_t ab_idmap_size(const ab_idmap_t *m)
{
    return m->len;
}
/* Iteration: slots 0..cap-1 with keys[i] != 0. Do not change the map while
 * iterating; collect first. */

#endif
