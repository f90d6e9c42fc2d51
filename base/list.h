/*
 * list.h - an intrusive doubly linked list (libuv QUEUE style; base/: built
 * into both common/ and tools/lib, see docs/architecture.md).
 *
 * The node lives inside the object that is listed, so linking and unlinking
 * allocate nothing and an object can leave its list in O(1) from a pointer
 * to it. A list is a circular ring through a head node: an empty list's head
 * points at itself. ab_list_data() turns a node back into its object.
 *
 *   typedef struct { int v; ab_list_t link; } item_t;
 *   ab_list_t items;
 *   ab_list_init(&items);
 *   ab_list_insert_tail(&items, &it->link);
 *   ab_list_t *n, *tmp;
 *   AB_LIST_FOREACH_SAFE(n, tmp, &items) {
 *       item_t *it = ab_list_data(n, item_t, link);
 *       ab_list_remove(&it->link); free(it);    // safe: tmp was read first
 *   }
 *
 * Contract:
 * - Zeroed is valid for both: a zeroed head (calloc, memset) is an empty
 *   list, made a ring by its first insert (ab_list_init does it at once); a
 *   zeroed node is "not linked", and ab_list_remove leaves a node zeroed
 *   again, so ab_list_linked() tells whether an object is on a list and
 *   removing an unlinked node is a no-op.
 * - A non-empty list's head must not be copied or moved (the ring points
 *   at it).
 * - A node is on at most one list at a time; inserting a linked node first
 *   would corrupt its old list (not checked).
 * - Not thread-safe; nothing here allocates or fails.
 */
#ifndef AB_LIST_H
#define AB_LIST_H

#include <stddef.h>

typedef struct ab_list {
    struct ab_list *next, *prev;
} ab_list_t;

/* The object of type TYPE whose member FIELD is the node PTR. */
#define ab_list_data(ptr, type, field) ((type *)(void *)((char *)(ptr) - offsetof(type, field)))

/* Visits every node N of list HEAD in order; TMP holds the next one, so the
 * body may remove (and free) N. It must not remove TMP: when removing other
 * nodes than N, restart from the head instead. */
#define AB_LIST_FOREACH_SAFE(n, tmp, head)                                                         \
    for ((n) = ab_list__start((head), 0), (tmp) = (n)->next; (n) != (head);                        \
         (n) = (tmp), (tmp) = (n)->next)

/* As AB_LIST_FOREACH_SAFE, from the tail back to the head. */
#define AB_LIST_FOREACH_REVERSE_SAFE(n, tmp, head)                                                 \
    for ((n) = ab_list__start((head), 1), (tmp) = (n)->prev; (n) != (head);                        \
         (n) = (tmp), (tmp) = (n)->prev)

static inline void ab_list_init(ab_list_t *head)
{
    head->next = head->prev = head;
}

/* The walk's first node (REVERSE: the last); a zeroed head is made a ring
 * so the walk ends at once. */
static inline ab_list_t *ab_list__start(ab_list_t *head, int reverse)
{
    if (!head->next)
        ab_list_init(head);
    return reverse ? head->prev : head->next;
}

static inline int ab_list_empty(const ab_list_t *head)
{
    return !head->next || head->next == head;
}

/* 1 when node N is on a list (see the contract about zeroed nodes). */
static inline int ab_list_linked(const ab_list_t *n)
{
    return n->next != NULL;
}

/* The first / last node of HEAD, or NULL when the list is empty. */
static inline ab_list_t *ab_list_first(const ab_list_t *head)
{
    return ab_list_empty(head) ? NULL : head->next;
}

static inline ab_list_t *ab_list_last(const ab_list_t *head)
{
    return ab_list_empty(head) ? NULL : head->prev;
}

/* The node after / before N on list HEAD, or NULL at the end. */
static inline ab_list_t *ab_list_next(const ab_list_t *head, const ab_list_t *n)
{
    return n->next == head ? NULL : n->next;
}

static inline ab_list_t *ab_list_prev(const ab_list_t *head, const ab_list_t *n)
{
    return n->prev == head ? NULL : n->prev;
}

static inline void ab_list_insert_head(ab_list_t *head, ab_list_t *n)
{
    if (!head->next)
        ab_list_init(head);
    n->next = head->next;
    n->prev = head;
    head->next->prev = n;
    head->next = n;
}

static inline void ab_list_insert_tail(ab_list_t *head, ab_list_t *n)
{
    if (!head->next)
        ab_list_init(head);
    n->prev = head->prev;
    n->next = head;
    head->prev->next = n;
    head->prev = n;
}

/* Unlinks N from its list; a no-op when N is not linked. */
static inline void ab_list_remove(ab_list_t *n)
{
    if (!n->next)
        return;
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->next = n->prev = NULL;
}

/* Removes and returns the first node of HEAD, or NULL when empty. */
static inline ab_list_t *ab_list_pop_head(ab_list_t *head)
{
    ab_list_t *n = ab_list_first(head);
    if (n)
        ab_list_remove(n);
    return n;
}

#endif
