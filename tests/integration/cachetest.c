/* cachetest.c - the cache cases' shared helpers (cachetest.h). */
#include "harness.h"
#include "test.h"
#include "util.h"
#include "cachetest.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


/* --- the counting worker ------------------------------------------------------ */

/* Payload prefixes: "fail" -> ERROR(APPLICATION); "flaky" -> the first one
 * fails with INTERNAL, later ones are answered; "stream" -> 4 PARTIALs and
 * a REPLY; "big" -> "DATA#N" and 200000 dots. Anything else: one REPLY
 * "DATA#N". */
static void s_answer(ct_wk_t *x, ab_job_t *job, int n)
{
    size_t len;
    const char *d = ab_job_data(job, &len);
    char out[512];
    int ol = snprintf(out, sizeof out, "%.*s#%d", (int)(len < 400 ? len : 400), d, n);
    if (len >= 4 && memcmp(d, "fail", 4) == 0) {
        ab_worker_fail(x->w, &job, AB_EAPPLICATION, "refused on purpose");
    } else if (len >= 5 && memcmp(d, "flaky", 5) == 0 && n == 1) {
        ab_worker_fail(x->w, &job, AB_EINTERNAL, "transient failure");
    } else if (len >= 3 && memcmp(d, "big", 3) == 0) {
        size_t bl = (size_t)ol + 200000;
        char *big = malloc(bl);
        REQUIRE(big);
        memcpy(big, out, (size_t)ol);
        memset(big + ol, '.', bl - (size_t)ol);
        ab_worker_reply(x->w, &job, big, bl);
        free(big);
    } else if (len >= 6 && memcmp(d, "stream", 6) == 0) {
        for (int i = 0; i < 4; i++) {
            char part[64];
            int pl = snprintf(part, sizeof part, "part%d#%d;", i, n);
            ab_worker_reply_part(x->w, job, part, (size_t)pl);
            th_sleep_ms(x->chunk_ms);
        }
        ab_worker_reply(x->w, &job, out, (size_t)ol);
    } else {
        ab_worker_reply(x->w, &job, out, (size_t)ol);
    }
}

static void *s_worker_main(void *arg)
{
    ct_wk_t *x = arg;
    ab_options_t *o = ab_options_new();
    ab_options_set_endpoint(o, th_ep(x->port));
    ab_options_set_name(o, "counting-worker");
    int rc = ab_worker_new(&x->w, o, x->service, 1);
    ab_options_destroy(&o);
    if (rc != AB_OK)
        return NULL;
    if (x->ttl_label)
        ab_worker_set_label(x->w, "cache-ttl-s", x->ttl_label);
    atomic_store(&x->ready, 1);
    for (;;) {
        ab_job_t *job;
        rc = ab_worker_recv(x->w, &job, 100);
        if (rc == AB_ESTOPPED)
            break;
        if (rc != AB_OK)
            continue;
        int n = atomic_fetch_add(&x->jobs, 1) + 1;
        if (x->delay_ms)
            th_sleep_ms(x->delay_ms);
        s_answer(x, job, n);
    }
    ab_worker_destroy(&x->w);
    return NULL;
}

pthread_t ct_worker_start(ct_wk_t *x, ab_client_t *c)
{
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, s_worker_main, x) == 0);
    REQUIRE(th_wait_workers(c, x->service, 1, 10000) == 0);
    return th;
}

void ct_worker_end(ct_wk_t *x, pthread_t th)
{
    for (int i = 0; i < 100 && !x->w; i++)
        th_sleep_ms(10);
    if (x->w)
        ab_worker_stop(x->w);
    pthread_join(th, NULL);
}

/* --- client helpers ---------------------------------------------------------------- */
int ct_req(ab_client_t *c, const char *svc, const char *data, char *out, size_t cap)
{
    void *reply = NULL;
    size_t n = 0;
    int rc = ab_client_request(c, svc, data, strlen(data), 10000, &reply, &n);
    out[0] = '\0';
    if (rc == AB_OK)
        snprintf(out, cap, "%.*s", (int)n, (char *)reply);
    ab_free(reply);
    return rc;
}


int ct_num(const char *out)
{
    const char *h = strrchr(out, '#');
    return h ? atoi(h + 1) : -1;
}

/* Why SPAN < TTL_MS proves the second asking had to be a hit: the broker
 * stored the first answer at or after ASKED and looked the second up at or
 * before the second answer came, both on the machine's one monotonic clock
 * (ab_now_ms), so the entry was younger than SPAN at that lookup. */
int64_t ct_cached_within(ct_wk_t *x, ab_client_t *c, const char *prefix, int ttl_ms, char *key,
                         size_t cap, int *n)
{
    char out[512];
    for (int i = 0; i < 20; i++) {
        snprintf(key, cap, i ? "%s.%d" : "%s", prefix, i);
        int64_t asked = ab_now_ms();
        REQUIRE(ct_req(c, x->service, key, out, sizeof out) == AB_OK);
        int64_t stored = ab_now_ms();
        *n = ct_num(out);
        CHECK_EQ(*n, atomic_load(&x->jobs)); /* a new key: the worker's answer */
        REQUIRE(ct_req(c, x->service, key, out, sizeof out) == AB_OK);
        int64_t span = ab_now_ms() - asked;
        if (span < ttl_ms) {
            CHECK_EQ(ct_num(out), *n); /* the first one's, from the cache */
            return stored;
        }
        printf("%s asked twice in %lld ms, not within its %d ms TTL: no verdict, again\n", key,
               (long long)span, ttl_ms);
    }
    REQUIRE(!"a key asked twice within its TTL in 20 tries");
    return 0;
}

void ct_sleep_past(int64_t stored, int ttl_ms)
{
    while (ab_now_ms() < stored + ttl_ms + 10)
        th_sleep_ms((int)(stored + ttl_ms + 10 - ab_now_ms()));
}

void ct_got_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    ct_got_t *g = arg;
    if (!ev->final) {
        g->partials++;
        size_t l = strlen(g->chunks);
        snprintf(g->chunks + l, sizeof g->chunks - l, "%.*s", (int)ev->size,
                 (const char *)ev->data);
        return;
    }
    g->finals++;
    g->status = ev->status;
    if (ev->status == AB_OK)
        snprintf(g->final, sizeof g->final, "%.*s", (int)ev->size, (const char *)ev->data);
}

static int s_done(ct_got_t *g, int n)
{
    int d = 0;
    for (int i = 0; i < n; i++)
        d += g[i].finals;
    return d;
}

void ct_poll_all(ab_client_t **cs, int nc, ct_got_t *g, int n, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    while (s_done(g, n) < n && ab_now_ms() < end)
        for (int i = 0; i < nc; i++)
            ab_client_poll(cs[i], nc > 1 ? 5 : 20);
}

Agentbus__CacheStats *ct_cache_stats(ab_client_t *c, Agentbus__Stats **keep)
{
    *keep = th_stats(c);
    REQUIRE(*keep && (*keep)->cache && (*keep)->cache->n_tiers >= 1);
    return (*keep)->cache;
}

unsigned long long ct_l1_hits(ab_client_t *c)
{
    Agentbus__Stats *st;
    unsigned long long h = ct_cache_stats(c, &st)->tiers[0]->hits;
    agentbus__stats__free_unpacked(st, NULL);
    return h;
}
