/* cache_redis.c - see cache_redis.h. */
#define AB_LOG_SUBSYS "cache" /* log.h: the subsystem in log lines */
#include "cache_redis.h"
#include "log.h"
#include "util.h"

#include <czmq.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AB_L2_NS "agentbus:cache:v1:"
#define AB_L2_NS_LEN 18
#define AB_L2_BATCH 256
#define AB_L2_BACKOFF_MIN_MS 1000
#define AB_L2_BACKOFF_MAX_MS 30000
#define AB_L2_QUEUE_MAX (64u << 20)
static const char s_vmagic[5] = {'A', 'B', 'L', '2', 1};

struct ab_l2 {
    char host[256];
    int port, timeout_ms;
    zactor_t *actor;
    ab_l2_counters_t c;
    atomic_size_t queued;
    /* thread only */
    redisContext *rc;
    int64_t retry_at_ms, backoff_ms;
};

/* --- the L2 thread ------------------------------------------------------------------- */
static void s_open_breaker(ab_l2_t *l2, const char *reason)
{
    char why[128]; /* REASON may live in the context freed below */
    snprintf(why, sizeof why, "%s", reason);
    if (l2->rc) {
        redisFree(l2->rc);
        l2->rc = NULL;
    }
    l2->backoff_ms = l2->backoff_ms ? l2->backoff_ms * 2 : AB_L2_BACKOFF_MIN_MS;
    if (l2->backoff_ms > AB_L2_BACKOFF_MAX_MS)
        l2->backoff_ms = AB_L2_BACKOFF_MAX_MS;
    l2->retry_at_ms = ab_now_ms() + l2->backoff_ms;
    if (atomic_exchange(&l2->c.state, AB_L2_OPEN) == AB_L2_CLOSED) {
        atomic_fetch_add(&l2->c.opens, 1);
        AB_WARN("L2 cache (redis %s:%d) skipped for %lld ms: %s", l2->host, l2->port,
                (long long)l2->backoff_ms, why);
    }
}

static int s_connect(ab_l2_t *l2)
{
    struct timeval tv = {l2->timeout_ms / 1000, (l2->timeout_ms % 1000) * 1000};
    l2->rc = redisConnectWithTimeout(l2->host, l2->port, tv);
    if (!l2->rc || l2->rc->err) {
        s_open_breaker(l2, l2->rc ? l2->rc->errstr : "out of memory");
        return -1;
    }
    redisSetTimeout(l2->rc, tv);
    atomic_fetch_add(&l2->c.reconnects, 1);
    atomic_store(&l2->c.state, AB_L2_CLOSED);
    AB_INFO("L2 cache: connected to redis %s:%d", l2->host, l2->port);
    return 0;
}

static void s_key_str(const uint8_t *kb, char *out)
{
    ab_cache_key_t k;
    memcpy(&k.hi, kb, 8);
    memcpy(&k.lo, kb + 8, 8);
    memcpy(out, AB_L2_NS, AB_L2_NS_LEN);
    ab_cache_key_hex(&k, out + AB_L2_NS_LEN);
}

/* Answers lookup TAG to the broker: a miss, or the blob of a hit. */
static void s_answer(ab_l2_t *l2, zsock_t *pipe, const uint8_t *tag, const char *val,
                     size_t len)
{
    (void)l2;
    int hit = val && len >= sizeof s_vmagic && memcmp(val, s_vmagic, sizeof s_vmagic) == 0;
    size_t blen = hit ? len - sizeof s_vmagic : 0;
    zmq_msg_t m;
    if (zmq_msg_init_size(&m, 10 + blen) != 0)
        return;
    uint8_t *d = zmq_msg_data(&m);
    d[0] = 'g';
    memcpy(d + 1, tag, 8);
    d[9] = (uint8_t)hit;
    if (blen)
        memcpy(d + 10, val + sizeof s_vmagic, blen);
    if (zmq_msg_send(&m, zsock_resolve(pipe), 0) < 0)
        zmq_msg_close(&m);
}

/* Sends every command of the batch as one pipeline, then reads the replies
 * in order. On any error the breaker opens and the lookups not yet
 * answered are answered as misses. */
/* Deletes every key of our namespace with SCAN + UNLINK, a bounded batch
 * at a time, never KEYS: on a Redis shared by brokers (and by whatever
 * else the deployment keeps there) one O(keys) command would stall them
 * all. Runs on this thread; the broker's lookups meanwhile time out into
 * the breaker (nothing fails). Returns the keys deleted, or -1. */
static long s_clear_scan(ab_l2_t *l2)
{
    char cursor[32] = "0";
    long deleted = 0;
    do {
        redisReply *r = redisCommand(l2->rc, "SCAN %s MATCH %s* COUNT 1000", cursor, AB_L2_NS);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING) {
            if (r)
                freeReplyObject(r);
            return -1;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        redisReply *keys = r->element[1];
        if (keys->type == REDIS_REPLY_ARRAY && keys->elements) {
            const char **argv = calloc(keys->elements + 1, sizeof *argv);
            size_t *lens = calloc(keys->elements + 1, sizeof *lens);
            if (argv && lens) {
                argv[0] = "UNLINK", lens[0] = 6;
                for (size_t i = 0; i < keys->elements; i++)
                    argv[i + 1] = keys->element[i]->str, lens[i + 1] = keys->element[i]->len;
                redisReply *u = redisCommandArgv(l2->rc, (int)keys->elements + 1, argv, lens);
                if (u && u->type == REDIS_REPLY_INTEGER)
                    deleted += u->integer;
                if (u)
                    freeReplyObject(u);
            }
            free(argv);
            free(lens);
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    return deleted;
}

static void s_run_batch(ab_l2_t *l2, zsock_t *pipe, zmq_msg_t *msgs, size_t n)
{
    int clear = 0;
    size_t sent = 0;
    int ok = l2->rc != NULL;
    char key[AB_L2_NS_LEN + AB_CACHE_KEY_HEX];
    for (size_t i = 0; i < n && ok; i++, sent++) {
        const uint8_t *d = zmq_msg_data(&msgs[i]);
        size_t sz = zmq_msg_size(&msgs[i]);
        if (d[0] == 'G') {
            s_key_str(d + 9, key);
            const char *argv[2] = {"GET", key};
            size_t lens[2] = {3, strlen(key)};
            ok = redisAppendCommandArgv(l2->rc, 2, argv, lens) == REDIS_OK;
            if (ok)
                atomic_fetch_add(&l2->c.sent, 1);
        } else if (d[0] == 'P') {
            s_key_str(d + 1, key);
            int64_t ttl;
            memcpy(&ttl, d + 17, 8);
            char px[24];
            snprintf(px, sizeof px, "%lld", (long long)(ttl > 0 ? ttl : 1));
            /* The value (magic, then the blob) is the rest of the message. */
            const char *argv[5] = {"SET", key, (const char *)d + 25, "PX", px};
            size_t lens[5] = {3, strlen(key), sz - 25, 2, strlen(px)};
            ok = redisAppendCommandArgv(l2->rc, 5, argv, lens) == REDIS_OK;
        } else { /* 'C': a PING keeps the replies in step; the clear runs after */
            const char *av[1] = {"PING"};
            size_t lens[1] = {4};
            ok = redisAppendCommandArgv(l2->rc, 1, av, lens) == REDIS_OK;
            clear = 1;
        }
    }
    for (size_t i = 0; i < n; i++) {
        const uint8_t *d = zmq_msg_data(&msgs[i]);
        redisReply *r = NULL;
        if (ok && i < sent && redisGetReply(l2->rc, (void **)&r) != REDIS_OK)
            ok = 0;
        if (ok && r && r->type == REDIS_REPLY_ERROR) {
            atomic_fetch_add(&l2->c.errors, 1);
            AB_DEBUG("L2 cache: redis error: %s", r->str);
        }
        if (d[0] == 'G')
            s_answer(l2, pipe, d + 1, ok && r && r->type == REDIS_REPLY_STRING ? r->str : NULL,
                     ok && r && r->type == REDIS_REPLY_STRING ? r->len : 0);
        else if (d[0] == 'P') {
            if (ok && r && r->type == REDIS_REPLY_STATUS)
                atomic_fetch_add(&l2->c.stores, 1);
            else
                atomic_fetch_add(&l2->c.dropped, 1);
        }
        if (r)
            freeReplyObject(r);
    }
    if (!ok && l2->rc) {
        atomic_fetch_add(&l2->c.errors, 1);
        s_open_breaker(l2, l2->rc->errstr[0] ? l2->rc->errstr : "no answer in time");
    } else if (ok && sent) {
        l2->backoff_ms = 0; /* answered: a later failure starts a new backoff */
    }
    if (ok && clear && l2->rc) {
        long gone = s_clear_scan(l2);
        if (gone < 0)
            atomic_fetch_add(&l2->c.errors, 1);
        AB_INFO("L2 cache cleared: %ld keys unlinked (SCAN)", gone);
    }
}

static void s_task(zsock_t *pipe, void *arg)
{
    ab_l2_t *l2 = arg;
    zsock_signal(pipe, 0);
    void *sock = zsock_resolve(pipe);
    zmq_msg_t msgs[AB_L2_BATCH];
    int term = 0;
    s_connect(l2);
    while (!term) {
        int64_t now = ab_now_ms();
        long wait = !l2->rc && l2->retry_at_ms > now ? (long)(l2->retry_at_ms - now) : 1000;
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, wait) < 0 && zmq_errno() != EINTR)
            break;
        if (!l2->rc && ab_now_ms() >= l2->retry_at_ms)
            s_connect(l2);
        size_t n = 0, bytes = 0;
        while (n < AB_L2_BATCH) {
            zmq_msg_init(&msgs[n]);
            if (zmq_msg_recv(&msgs[n], sock, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&msgs[n]);
                break;
            }
            size_t sz = zmq_msg_size(&msgs[n]);
            const uint8_t *d = zmq_msg_data(&msgs[n]);
            if (sz == 5 && memcmp(d, "$TERM", 5) == 0) {
                zmq_msg_close(&msgs[n]);
                term = 1;
                break;
            }
            bytes += sz;
            int valid = (d[0] == 'G' && sz == 25) || (d[0] == 'P' && sz >= 25) ||
                        (d[0] == 'C' && sz == 1);
            if (valid)
                n++;
            else
                zmq_msg_close(&msgs[n]);
        }
        s_run_batch(l2, pipe, msgs, n);
        for (size_t i = 0; i < n; i++)
            zmq_msg_close(&msgs[i]);
        atomic_fetch_sub(&l2->queued, bytes);
    }
    if (l2->rc)
        redisFree(l2->rc);
    l2->rc = NULL;
}

/* --- broker side ----------------------------------------------------------------------- */
ab_l2_t *ab_l2_new(const char *addr, int timeout_ms)
{
    const char *colon = strrchr(addr, ':');
    long port;
    if (!colon || colon == addr || (size_t)(colon - addr) >= 256 ||
        ab_parse_long(colon + 1, 1, 65535, &port) != 0) {
        AB_ERROR("L2 cache off: '%s' is not host:port", addr);
        return NULL;
    }
    ab_l2_t *l2 = calloc(1, sizeof *l2);
    if (!l2)
        return NULL;
    snprintf(l2->host, sizeof l2->host, "%.*s", (int)(colon - addr), addr);
    l2->port = (int)port;
    l2->timeout_ms = timeout_ms;
    atomic_store(&l2->c.state, AB_L2_OPEN); /* until the thread connects */
    zsys_handler_set(NULL); /* keep the broker's own SIGTERM handling */
    l2->actor = zactor_new(s_task, l2);
    if (!l2->actor) {
        free(l2);
        return NULL;
    }
    return l2;
}

void ab_l2_destroy(ab_l2_t **p)
{
    ab_l2_t *l2 = p ? *p : NULL;
    if (!l2)
        return;
    zactor_destroy(&l2->actor);
    free(l2);
    *p = NULL;
}

void *ab_l2_pipe(ab_l2_t *l2)
{
    return zsock_resolve(l2->actor);
}

int ab_l2_usable(ab_l2_t *l2)
{
    return atomic_load(&l2->c.state) == AB_L2_CLOSED;
}

static int s_send(ab_l2_t *l2, zmq_msg_t *m)
{
    size_t sz = zmq_msg_size(m);
    atomic_fetch_add(&l2->queued, sz);
    if (zmq_msg_send(m, zsock_resolve(l2->actor), ZMQ_DONTWAIT) < 0) {
        atomic_fetch_sub(&l2->queued, sz);
        zmq_msg_close(m);
        return -1;
    }
    return 0;
}

int ab_l2_get(ab_l2_t *l2, uint64_t tag, const ab_cache_key_t *key)
{
    zmq_msg_t m;
    if (zmq_msg_init_size(&m, 25) != 0)
        return -1;
    uint8_t *d = zmq_msg_data(&m);
    d[0] = 'G';
    memcpy(d + 1, &tag, 8);
    memcpy(d + 9, &key->hi, 8);
    memcpy(d + 17, &key->lo, 8);
    return s_send(l2, &m);
}

int ab_l2_put(ab_l2_t *l2, const ab_cache_key_t *key, int64_t ttl_ms, const void *val,
              size_t len)
{
    if (atomic_load(&l2->queued) + len > AB_L2_QUEUE_MAX) {
        atomic_fetch_add(&l2->c.dropped, 1);
        return -1;
    }
    /* 'P' key(16) ttl(8), then the value as Redis stores it (magic, blob),
     * so the thread passes it to hiredis without another copy. */
    zmq_msg_t m;
    if (zmq_msg_init_size(&m, 25 + sizeof s_vmagic + len) != 0)
        return -1;
    uint8_t *d = zmq_msg_data(&m);
    d[0] = 'P';
    memcpy(d + 1, &key->hi, 8);
    memcpy(d + 9, &key->lo, 8);
    memcpy(d + 17, &ttl_ms, 8);
    memcpy(d + 25, s_vmagic, sizeof s_vmagic);
    memcpy(d + 25 + sizeof s_vmagic, val, len);
    if (s_send(l2, &m) != 0) {
        atomic_fetch_add(&l2->c.dropped, 1);
        return -1;
    }
    return 0;
}

int ab_l2_clear(ab_l2_t *l2)
{
    zmq_msg_t m;
    zmq_msg_init_size(&m, 1);
    *(uint8_t *)zmq_msg_data(&m) = 'C';
    return s_send(l2, &m);
}

int ab_l2_recv(ab_l2_t *l2, uint64_t *tag, int *hit, void *msg, size_t *off)
{
    zmq_msg_t *m = msg;
    zmq_msg_init(m);
    if (zmq_msg_recv(m, zsock_resolve(l2->actor), ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(m);
        return 0;
    }
    const uint8_t *d = zmq_msg_data(m);
    if (zmq_msg_size(m) < 10 || d[0] != 'g') {
        zmq_msg_close(m);
        return 0;
    }
    memcpy(tag, d + 1, 8);
    *hit = d[9];
    *off = 10;
    return 1;
}

ab_l2_counters_t *ab_l2_counters(ab_l2_t *l2)
{
    return &l2->c;
}

const char *ab_l2_state_name(ab_l2_t *l2)
{
    return atomic_load(&l2->c.state) == AB_L2_CLOSED ? "closed" : "open";
}
