/*
 * tl_list.h - the intrusive doubly linked list for the programs outside the
 * broker: base/list.h under tools/lib's names (its contract holds: the
 * element embeds a tl_list_t node, the list is a head node of the same
 * type, nothing allocates or fails, one thread at a time). An unlinked
 * node may be removed again (a no-op). An element may be removed while
 * iterating if the loop saved the next node first:
 *     for (tl_list_t *n = l.next, *nx; n != &l; n = nx) { nx = n->next; ... }
 */
#ifndef TL_LIST_H
#define TL_LIST_H

#include "list.h"

typedef ab_list_t tl_list_t;

/* The element of type TYPE whose member MEMBER is NODE. */
#define tl_list_entry(node, type, member) ab_list_data(node, type, member)

/* Makes L an empty list. */
static inline void tl_list_init(tl_list_t *l)
{
    ab_list_init(l);
}

static inline int tl_list_empty(const tl_list_t *l)
{
    return ab_list_empty(l);
}

/* Appends node N (not in a list) at the end of L. */
static inline void tl_list_push_back(tl_list_t *l, tl_list_t *n)
{
    ab_list_insert_tail(l, n);
}

/* Unlinks N from its list (a no-op when it is not linked). */
static inline void tl_list_remove(tl_list_t *n)
{
    ab_list_remove(n);
}

#endif
