/*
 * tl_list.h - an intrusive doubly linked list for the programs outside the
 * broker (tools/lib), in the manner of libuv's QUEUE: the element embeds a
 * tl_list_t node, the list is a sentinel node of the same type, and
 * tl_list_entry gets back from a node to its element. Nothing allocates and
 * nothing fails; removing an element is O(1) without knowing its list.
 *
 * A list and its elements belong to one thread at a time. An element may be
 * removed while iterating if the loop saved the next node first:
 *     for (tl_list_t *n = l.next, *nx; n != &l; n = nx) { nx = n->next; ... }
 */
#ifndef TL_LIST_H
#define TL_LIST_H

#include <stddef.h>

typedef struct tl_list {
    struct tl_list *prev, *next;
} tl_list_t;

/* The element of type TYPE whose member MEMBER is NODE. */
#define tl_list_entry(node, type, member) ((type *)((char *)(node) - offsetof(type, member)))

/* Makes L an empty list (or N an unlinked node). */
static inline void tl_list_init(tl_list_t *l)
{
    l->prev = l->next = l;
}

static inline int tl_list_empty(const tl_list_t *l)
{
    return l->next == l;
}

/* Appends node N (not in a list) at the end of L. */
static inline void tl_list_push_back(tl_list_t *l, tl_list_t *n)
{
    n->prev = l->prev;
    n->next = l;
    l->prev->next = n;
    l->prev = n;
}

/* Unlinks N from its list and leaves it unlinked (removing it again is a
 * no-op). */
static inline void tl_list_remove(tl_list_t *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    tl_list_init(n);
}

#endif
