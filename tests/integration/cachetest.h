/*
 * cachetest.h - what the cache's integration cases share (test_cache.c,
 * test_cache_tiers.c, test_cache_hostile.c: one program, test_cache): the
 * counting worker, request helpers, the cache's figures, and the cases the
 * theme files define for test_cache.c's table.
 */
#ifndef CACHETEST_H
#define CACHETEST_H

#include "agentbus.h"
#include "agentbus.pb-c.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct {
    int port;
    const char *service;
    int delay_ms;        /* before answering each job */
    int chunk_ms;        /* between streamed chunks */
    atomic_int jobs;     /* requests that reached the worker */
    atomic_int ready;
    ab_worker_t *w;
    const char *ttl_label; /* the service's cache TTL the worker declares */
} ct_wk_t;

/* What an async request received: its chunks in order, then the end. */
typedef struct {
    char chunks[1024];
    int partials, finals, status;
    char final[256];
} ct_got_t;

/* The counting worker on a thread of the test: started once it has
 * registered, ended after ab_worker_stop. */
pthread_t ct_worker_start(ct_wk_t *x, ab_client_t *c);
void ct_worker_end(ct_wk_t *x, pthread_t th);
/* A sync request of DATA; the reply's text in OUT. */
int ct_req(ab_client_t *c, const char *svc, const char *data, char *out, size_t cap);
/* N of the counting worker's answer "DATA#N" (-1: none). */
int ct_num(const char *out);
/* A TTL's two sides without a bound on how fast the machine runs: asks a
 * new key (PREFIX, else PREFIX.1 ...: in KEY) twice, its first answer (*N)
 * the worker's; when both were answered within TTL_MS of the first asking,
 * the second must be the first's answer (checked); a machine that ran them
 * later gives no verdict and the next key is tried (20 at most, then the
 * case fails). Returns the time (ab_now_ms) the first answer had come by:
 * the entry was stored before it, so it must have expired once
 * ct_sleep_past(that, TTL_MS) returns. */
int64_t ct_cached_within(ct_wk_t *x, ab_client_t *c, const char *prefix, int ttl_ms, char *key,
                         size_t cap, int *n);
void ct_sleep_past(int64_t stored, int ttl_ms);
/* The callback filling a ct_got_t, and polling CS until N of G are done. */
void ct_got_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg);
void ct_poll_all(ab_client_t **cs, int nc, ct_got_t *g, int n, int timeout_ms);
/* The broker's cache figures (*KEEP to free) and L1's hits. */
Agentbus__CacheStats *ct_cache_stats(ab_client_t *c, Agentbus__Stats **keep);
unsigned long long ct_l1_hits(ab_client_t *c);

/* A real redis-server on 127.0.0.1:PORT (no persistence), with up to two
 * more arguments (NULL: none), stopped by PID (test_cache_tiers.c). */
pid_t ct_redis_start(int port, const char *arg1, const char *arg2);
void ct_redis_stop(void);

/* test_cache_tiers.c: L3 (LMDB) and L2 (Redis). */
void cache_l3_restart(void);
void cache_l3_epoch(void);
void cache_l2_shared(void);
void cache_l2_big_entry(void);
void cache_l2_down(void);
void cache_l2_absent(void);
void cache_l2_clear(void);
void cache_l2_slow(void);
void cache_l3_truncated(void);
void cache_l3_stop_signals(void);
void cache_l2_breaker_skips(void);
void cache_l2_sigstop(void);
void cache_l2_sigkill(void);
/* test_cache_hostile.c: raw peers (issue 11) and a cancelled leader. */
void cache_lz4_bomb(void);
void cache_lz4_bombs_beat(void);
void cache_model_key(void);
void cache_cancelled_leader(void);
/* test_cache_l2.c: what L2 answers, good or garbage. */
void cache_l2_garbage_array(void);
void cache_l2_promote_ttl(void);
void cache_l2_promote_clamp(void);
void cache_l2_down_clear(void);
void cache_l2_noauth(void);

#endif
