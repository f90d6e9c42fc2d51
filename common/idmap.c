/* idmap.c - see idmap.h. */
#include "idmap.h"

#include <stdlib.h>

static size_t s_home(const ab_idmap_t *m, uint64_t key)
{
    /* Fibonacci hashing: sequential ids spread over the table. */
    return (size_t)((key * 0x9e3779b97f4a7c15ull) >> 32) & (m->cap - 1);
}

int ab_idmap_init(ab_idmap_t *m, size_t initial_cap)
{
    size_t cap = 16;
    while (cap < initial_cap)
        cap *= 2;
    m->keys = calloc(cap, sizeof *m->keys);
    m->vals = calloc(cap, sizeof *m->vals);
    m->cap = cap;
    m->len = 0;
    m->min_cap = cap;
    m->keep_cap = 0;
    m->peak_cap = cap;
    if (!m->keys || !m->vals) {
        ab_idmap_fini(m);
        return -1;
    }
    return 0;
}

void ab_idmap_fini(ab_idmap_t *m)
{
    free(m->keys);
    free(m->vals);
    m->keys = NULL;
    m->vals = NULL;
    m->cap = m->len = 0;
}

/* Moves every entry into a table of CAP slots (CAP holds them at under
 * half load: the puts below never resize). */
static int s_resize(ab_idmap_t *m, size_t cap)
{
    ab_idmap_t next;
    size_t min_cap = m->min_cap, keep_cap = m->keep_cap;
    size_t peak_cap = m->peak_cap > cap ? m->peak_cap : cap;
    if (ab_idmap_init(&next, cap) != 0)
        return -1;
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i])
            ab_idmap_put(&next, m->keys[i], m->vals[i]);
    ab_idmap_fini(m);
    *m = next;
    m->min_cap = min_cap ? min_cap : 16;
    m->keep_cap = keep_cap;
    m->peak_cap = peak_cap;
    return 0;
}

int ab_idmap_put(ab_idmap_t *m, uint64_t key, void *val)
{
    if (key == 0)
        return -1;
    if ((m->len + 1) * 2 > m->cap && s_resize(m, m->cap ? m->cap * 2 : 16) != 0)
        return -1;
    size_t i = s_home(m, key);
    while (m->keys[i] && m->keys[i] != key)
        i = (i + 1) & (m->cap - 1);
    if (!m->keys[i])
        m->len++;
    m->keys[i] = key;
    m->vals[i] = val;
    return 0;
}

void *ab_idmap_get(const ab_idmap_t *m, uint64_t key)
{
    if (key == 0 || m->cap == 0)
        return NULL;
    for (size_t i = s_home(m, key); m->keys[i]; i = (i + 1) & (m->cap - 1))
        if (m->keys[i] == key)
            return m->vals[i];
    return NULL;
}

void *ab_idmap_del(ab_idmap_t *m, uint64_t key)
{
    if (key == 0 || m->cap == 0)
        return NULL;
    size_t mask = m->cap - 1, i = s_home(m, key);
    while (m->keys[i] && m->keys[i] != key)
        i = (i + 1) & mask;
    if (!m->keys[i])
        return NULL;
    void *val = m->vals[i];
    /* Backward shift: pull later entries of the same probe run into the
     * hole, so lookups never need tombstones. */
    for (size_t j = (i + 1) & mask; m->keys[j]; j = (j + 1) & mask) {
        size_t home = s_home(m, m->keys[j]);
        /* Entry j may move to i if its home is not in (i, j] cyclically. */
        int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            m->keys[i] = m->keys[j];
            m->vals[i] = m->vals[j];
            i = j;
        }
    }
    m->keys[i] = 0;
    m->vals[i] = NULL;
    m->len--;
    /* Under 1/32 load the halved table is at 1/16: it grows again only
     * when its entries grow eightfold. At 1/8 (as before) a count moving
     * between 200 and 1,000 (a client's window refilled after each batch of
     * answers) resized twice per cycle: calloc, memset and rehash were ~10%
     * of the library's instructions at 64 B (callgrind). The halvings still
     * cost O(1) amortised and a drained table still gives its memory back. */
    size_t floor = m->min_cap;
    if (m->keep_cap) {
        size_t kept = m->peak_cap < m->keep_cap ? m->peak_cap : m->keep_cap;
        floor = kept > floor ? kept : floor;
    }
    if (m->cap > floor && m->len * 32 < m->cap)
        s_resize(m, m->cap / 2);
    return val;
}
