/*
 * defer.h - deferred work: act on objects after an iteration, not inside it.
 *
 * The broker often finds, while walking a table, objects it must drop, fail
 * or free; doing that inside the walk would change the table under the
 * iterator, and dropping one object may drop others. Instead each object
 * found is queued (its node is embedded, nothing is allocated), and the
 * queue is run at a safe point: after the walk, or at the end of the loop
 * turn (Redis' freeClientAsync / beforeSleep idea). An object that goes
 * away while queued takes itself off the queue (ab_defer_cancel), so the
 * run never touches freed memory; work queued while the queue runs is run
 * in the same call.
 *
 *   ab_defer_t q;
 *   ab_defer_init(&q);
 *   for (peer in table) if (dead) ab_defer_add(&q, &peer->later, s_drop);
 *   ab_defer_run(&q, broker);          // s_drop(broker, &peer->later) each
 *
 * Contract:
 * - A zeroed queue is empty (ab_defer_init makes one too); it should be empty when it
 *   goes out of scope (run it, or ab_defer_clear).
 * - A node needs no initialisation (zeroed is "not queued"); it is on at
 *   most one queue at a time.
 * - The callback gets the node back; ab_list_data-style ab_defer_data()
 *   turns it into its object. The node is off the queue when the callback
 *   runs, so the callback may free the object or queue it again.
 * - Not thread-safe; nothing allocates or fails.
 */
#ifndef AB_DEFER_H
#define AB_DEFER_H

#include "list.h"

struct ab_defer_node;
typedef void ab_defer_fn(void *ctx, struct ab_defer_node *n);

typedef struct ab_defer_node {
    ab_list_t link;
    ab_defer_fn *fn;
} ab_defer_node_t;

typedef struct {
    ab_list_t q;
} ab_defer_t;

#define ab_defer_data(ptr, type, field) ab_list_data(ptr, type, field)

static inline void ab_defer_init(ab_defer_t *d)
{
    ab_list_init(&d->q);
}

static inline int ab_defer_queued(const ab_defer_node_t *n)
{
    return ab_list_linked(&n->link);
}

/* Queues N to have FN called on it at the next ab_defer_run of D. Returns 0,
 * or 1 when N was queued already (it stays where it is, with its first FN). */
static inline int ab_defer_add(ab_defer_t *d, ab_defer_node_t *n, ab_defer_fn *fn)
{
    if (ab_list_linked(&n->link))
        return 1;
    n->fn = fn;
    ab_list_insert_tail(&d->q, &n->link);
    return 0;
}

/* Takes N off its queue (its object is going away); no-op when not queued. */
static inline void ab_defer_cancel(ab_defer_node_t *n)
{
    ab_list_remove(&n->link);
}

static inline int ab_defer_pending(const ab_defer_t *d)
{
    return !ab_list_empty(&d->q);
}

/* Calls each queued node's FN(CTX, node) in the order queued, each taken off
 * the queue first, until the queue is empty. Returns how many ran. */
size_t ab_defer_run(ab_defer_t *d, void *ctx);
/* Empties D without running anything. */
void ab_defer_clear(ab_defer_t *d);

#endif
