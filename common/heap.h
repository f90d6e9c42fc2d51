/*
 * heap.h - an intrusive binary min-heap on a 64-bit key.
 *
 * Each object carries an ab_heap_node_t (its key and its position in the
 * heap); the heap is an array of pointers to those nodes. Because the node
 * knows where it sits, an object leaves the heap in O(log n) from a pointer
 * to it (an answered request leaves the deadline heap at once), and the
 * heap never holds more than the objects still in it. Equal keys come out
 * in no particular order.
 *
 * Contract:
 * - A zeroed ab_heap_t is an empty heap; ab_heap_fini frees its array (not
 *   the objects). A node's key must not change while it is in the heap.
 * - ab_heap_push fails only for lack of memory (-1): the node is then not in
 *   the heap and its index says so (AB_HEAP_NONE).
 * - ab_heap_remove of a node that is not in this heap is a no-op.
 * - Not thread-safe.
 */
#ifndef AB_HEAP_H
#define AB_HEAP_H

#include <stddef.h>
#include <stdint.h>

#define AB_HEAP_NONE SIZE_MAX /* index of a node in no heap */

typedef struct {
    int64_t key;
    size_t index; /* position in the heap, or AB_HEAP_NONE */
} ab_heap_node_t;

typedef struct {
    ab_heap_node_t **a;
    size_t len, cap;
} ab_heap_t;

/* Adds N with its key already set. 0, or -1 when out of memory. */
int ab_heap_push(ab_heap_t *h, ab_heap_node_t *n);
/* Takes N out of H (no-op when N is not in H). */
void ab_heap_remove(ab_heap_t *h, ab_heap_node_t *n);
void ab_heap_fini(ab_heap_t *h);

/* The node with the smallest key, or NULL when H is empty. */
static inline ab_heap_node_t *ab_heap_min(const ab_heap_t *h)
{
    return h->len ? h->a[0] : NULL;
}

static inline size_t ab_heap_size(const ab_heap_t *h)
{
    return h->len;
}

#endif
