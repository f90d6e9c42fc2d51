/* cache_l1.c - see cache_l1.h. */
#define AB_LOG_SUBSYS "cache" /* log.h: the subsystem in log lines */
#include "cache_l1.h"
#include "list.h"

#include <stdlib.h>
#include <string.h>

typedef struct s_entry {
    ab_cache_key_t key;
    int64_t expires_ms;
    size_t len;
    struct s_entry *hnext;        /* hash chain */
    ab_list_t lru;                /* recency: head = most recent */
    uint8_t val[];
} s_entry_t;

struct ab_l1 {
    s_entry_t **buckets;
    size_t nbuckets; /* power of two */
    ab_list_t lru;      /* s_entry_t.lru, most recent first */
    ab_l1_stats_t st;
};

size_t ab_l1_overhead(void)
{
    /* The entry header plus its share of the bucket array (load <= 1). */
    return sizeof(s_entry_t) + 2 * sizeof(s_entry_t *);
}

ab_l1_t *ab_l1_new(size_t max_bytes)
{
    ab_l1_t *l1 = calloc(1, sizeof *l1);
    if (!l1)
        return NULL;
    l1->nbuckets = 1024;
    l1->buckets = calloc(l1->nbuckets, sizeof *l1->buckets);
    if (!l1->buckets) {
        free(l1);
        return NULL;
    }
    l1->st.max_bytes = max_bytes;
    return l1;
}

void ab_l1_destroy(ab_l1_t **p)
{
    if (!p || !*p)
        return;
    ab_l1_clear(*p);
    free((*p)->buckets);
    free(*p);
    *p = NULL;
}

static s_entry_t **s_slot(ab_l1_t *l1, const ab_cache_key_t *key)
{
    /* The key is a good hash already: its low bits pick the bucket. */
    s_entry_t **pp = &l1->buckets[key->lo & (l1->nbuckets - 1)];
    while (*pp && !ab_cache_key_eq(&(*pp)->key, key))
        pp = &(*pp)->hnext;
    return pp;
}

/* The least recently used entry, or NULL. */
static s_entry_t *s_lru_tail(ab_l1_t *l1)
{
    ab_list_t *l = ab_list_last(&l1->lru);
    return l ? ab_list_data(l, s_entry_t, lru) : NULL;
}

static size_t s_cost(size_t len)
{
    return len + ab_l1_overhead();
}

/* Unlinks E (found at *PP in its chain) and frees it. */
static void s_remove(ab_l1_t *l1, s_entry_t **pp, s_entry_t *e)
{
    *pp = e->hnext;
    ab_list_remove(&e->lru);
    l1->st.bytes -= s_cost(e->len);
    l1->st.entries--;
    free(e);
}

static void s_remove_entry(ab_l1_t *l1, s_entry_t *e)
{
    s_remove(l1, s_slot(l1, &e->key), e);
}

/* Doubles the bucket array when the table is as full as it is wide; a
 * failed grow only makes chains longer. */
static void s_grow(ab_l1_t *l1)
{
    if (l1->st.entries < l1->nbuckets)
        return;
    size_t n = l1->nbuckets * 2;
    s_entry_t **nb = calloc(n, sizeof *nb);
    if (!nb)
        return;
    for (size_t i = 0; i < l1->nbuckets; i++) {
        s_entry_t *e = l1->buckets[i];
        while (e) {
            s_entry_t *next = e->hnext;
            size_t j = e->key.lo & (n - 1);
            e->hnext = nb[j];
            nb[j] = e;
            e = next;
        }
    }
    free(l1->buckets);
    l1->buckets = nb;
    l1->nbuckets = n;
}

int ab_l1_get(ab_l1_t *l1, const ab_cache_key_t *key, int64_t now_ms, const uint8_t **val,
              size_t *len, int64_t *expires_ms)
{
    s_entry_t **pp = s_slot(l1, key), *e = *pp;
    if (e && e->expires_ms <= now_ms) {
        s_remove(l1, pp, e);
        l1->st.expired++;
        e = NULL;
    }
    if (!e) {
        l1->st.misses++;
        return 0;
    }
    if (ab_list_first(&l1->lru) != &e->lru) {
        ab_list_remove(&e->lru);
        ab_list_insert_head(&l1->lru, &e->lru);
    }
    l1->st.hits++;
    *val = e->val;
    *len = e->len;
    if (expires_ms)
        *expires_ms = e->expires_ms;
    return 1;
}

int ab_l1_put(ab_l1_t *l1, const ab_cache_key_t *key, const void *val, size_t len,
              int64_t expires_ms)
{
    if (s_cost(len) > l1->st.max_bytes)
        return -1;
    ab_l1_del(l1, key);
    s_entry_t *old;
    while ((old = s_lru_tail(l1)) && l1->st.bytes + s_cost(len) > l1->st.max_bytes) {
        s_remove_entry(l1, old);
        l1->st.evictions++;
    }
    s_entry_t *e = malloc(sizeof *e + len);
    if (!e)
        return -1;
    e->key = *key;
    e->expires_ms = expires_ms;
    e->len = len;
    if (len)
        memcpy(e->val, val, len);
    s_grow(l1);
    s_entry_t **pp = &l1->buckets[key->lo & (l1->nbuckets - 1)];
    e->hnext = *pp;
    *pp = e;
    ab_list_insert_head(&l1->lru, &e->lru);
    l1->st.bytes += s_cost(len);
    l1->st.entries++;
    l1->st.stores++;
    return 0;
}

int ab_l1_del(ab_l1_t *l1, const ab_cache_key_t *key)
{
    s_entry_t **pp = s_slot(l1, key);
    if (!*pp)
        return 0;
    s_remove(l1, pp, *pp);
    return 1;
}

void ab_l1_clear(ab_l1_t *l1)
{
    s_entry_t *e;
    while ((e = s_lru_tail(l1)))
        s_remove_entry(l1, e);
}

size_t ab_l1_expire(ab_l1_t *l1, int64_t now_ms, size_t max)
{
    /* Entries are not ordered by expiry; scan the cold end only, where
     * entries nobody asks for (and so nobody expires on lookup) sit. */
    size_t n = 0, seen = 0;
    ab_list_t *l, *tmp;
    AB_LIST_FOREACH_REVERSE_SAFE(l, tmp, &l1->lru) {
        if (seen++ >= max)
            break;
        s_entry_t *e = ab_list_data(l, s_entry_t, lru);
        if (e->expires_ms <= now_ms) {
            s_remove_entry(l1, e);
            l1->st.expired++;
            n++;
        }
    }
    return n;
}

void ab_l1_stats(const ab_l1_t *l1, ab_l1_stats_t *st)
{
    *st = l1->st;
}
