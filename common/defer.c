/* defer.c - see defer.h. */
#include "defer.h"

size_t ab_defer_run(ab_defer_t *d, void *ctx)
{
    size_t n = 0;
    ab_list_t *l;
    /* One at a time from the head: a callback may cancel (free) any other
     * queued node or queue new ones, so no next pointer is kept across it. */
    while ((l = ab_list_pop_head(&d->q)) != NULL) {
        ab_defer_node_t *node = ab_list_data(l, ab_defer_node_t, link);
        node->fn(ctx, node);
        n++;
    }
    return n;
}

void ab_defer_clear(ab_defer_t *d)
{
    while (ab_list_pop_head(&d->q))
        ;
}
