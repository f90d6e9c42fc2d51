/* heap.c - see heap.h. */
#include "heap.h"

#include <stdlib.h>

static void s_swap(ab_heap_t *h, size_t i, size_t j)
{
    ab_heap_node_t *t = h->a[i];
    h->a[i] = h->a[j];
    h->a[j] = t;
    h->a[i]->index = i;
    h->a[j]->index = j;
}

static void s_up(ab_heap_t *h, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h->a[p]->key <= h->a[i]->key)
            break;
        s_swap(h, i, p);
        i = p;
    }
}

static void s_down(ab_heap_t *h, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->len && h->a[l]->key < h->a[m]->key)
            m = l;
        if (r < h->len && h->a[r]->key < h->a[m]->key)
            m = r;
        if (m == i)
            return;
        s_swap(h, i, m);
        i = m;
    }
}

int ab_heap_push(ab_heap_t *h, ab_heap_node_t *n)
{
    if (h->len == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 1024;
        ab_heap_node_t **a = realloc(h->a, cap * sizeof *a);
        if (!a) {
            n->index = AB_HEAP_NONE;
            return -1;
        }
        h->a = a;
        h->cap = cap;
    }
    n->index = h->len;
    h->a[h->len++] = n;
    s_up(h, n->index);
    return 0;
}

void ab_heap_remove(ab_heap_t *h, ab_heap_node_t *n)
{
    size_t i = n->index;
    if (i >= h->len || h->a[i] != n)
        return;
    h->len--;
    if (i != h->len) {
        /* The last node fills the hole; it may belong above or below. */
        ab_heap_node_t *m = h->a[h->len];
        h->a[i] = m;
        m->index = i;
        if (i > 0 && m->key < h->a[(i - 1) / 2]->key)
            s_up(h, i);
        else
            s_down(h, i);
    }
    n->index = AB_HEAP_NONE;
}

void ab_heap_fini(ab_heap_t *h)
{
    free(h->a);
    h->a = NULL;
    h->len = h->cap = 0;
}
