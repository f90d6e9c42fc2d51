/* cache.c - see cache.h and docs/cache.md. */
#define AB_LOG_SUBSYS "cache" /* log.h: the subsystem in log lines */
#include "cache.h"
#include "audit.h"
#include "cache_blob.h"
#include "service.h"
#include "router.h"
#include "batching.h"
#include "request.h"
#include "compress.h"
#include "cache_l1.h"
#include "cache_lmdb.h"
#include "cache_redis.h"
#include "placement.h"
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AB_CACHE_MAX_TTL_S (30u * 86400u)
#define AB_EXPIRE_SCAN 64 /* cold entries looked at per timer turn */
#define AB_L3_QUEUE_MAX (64u << 20) /* bytes of writes waiting for the L3 thread */

typedef struct s_flight {
    ab_cache_key_t key;
    ab_req_t *leader;
    ab_req_t **waiters; /* in arrival order */
    size_t n, cap;
    int streamed; /* some waiter got a chunk: it cannot be re-dispatched */
} s_flight_t;

struct ab_cache_req {
    ab_cache_key_t key;
    int64_t ttl_ms;
    uint8_t read, store, leader, overflow;
    uint8_t l2_wait; /* a lookup is with Redis */
    uint64_t l2_sent_ns;
    ab_blob_t acc; /* the reply so far (a leader or a request alone) */
    s_flight_t *flight;
};

struct ab_cache {
    ab_l1_t *l1;
    ab_idmap_t flights; /* key.lo (0 -> 1) -> s_flight_t (owned) */
    int64_t default_ttl_ms;
    size_t max_entry, waiters_max;
    uint64_t coalesced, uncacheable, redispatched, stores_skipped;
    size_t key_plain_max;           /* cache-key-decompress-max-bytes */
    uint64_t key_not_decompressed;  /* lz4 requests keyed over that bound */
    uint64_t l2_skipped;            /* L2 lookups not made: breaker open */
    uint64_t l2_lookups;            /* L2 lookups queued to Redis */
    ab_hist_t l1_ns;
    int dispatch_pending;
    ab_l3_t *l3;            /* NULL without --data-dir */
    ab_l3_writer_t *l3w;
    ab_hist_t l3_ns;
    uint64_t l3_hits, l3_misses;
    ab_hist_t l1_serve_ns, l3_serve_ns; /* request handled -> last chunk sent */
    ab_l2_t *l2;            /* NULL without --cache-redis */
    ab_hist_t l2_ns;        /* lookup queued -> answer handled (a Redis round trip + a loop turn) */
    uint64_t l2_hits, l2_misses;
    Agentbus__CacheStats st;
    Agentbus__CacheTier tier[3];
    Agentbus__CacheTier *tierp[3];
};

/* --- life cycle ------------------------------------------------------------------- */
ab_cache_t *ab_cache_new(const ab_broker_config_t *cfg)
{
    if (!cfg->cache_l1_bytes)
        return NULL;
    ab_cache_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->l1 = ab_l1_new(cfg->cache_l1_bytes);
    if (!c->l1 || ab_idmap_init(&c->flights, 256) != 0) {
        ab_l1_destroy(&c->l1);
        free(c);
        return NULL;
    }
    c->default_ttl_ms = cfg->cache_ttl_s * 1000;
    c->max_entry = cfg->cache_max_entry_bytes;
    c->waiters_max = (size_t)cfg->cache_waiters_max;
    c->key_plain_max = cfg->cache_key_decompress_max_bytes;
    ab_hist_reset(&c->l1_ns);
    ab_hist_reset(&c->l3_ns);
    ab_hist_reset(&c->l1_serve_ns);
    ab_hist_reset(&c->l3_serve_ns);
    ab_hist_reset(&c->l2_ns);
    if (cfg->cache_redis && *cfg->cache_redis)
        c->l2 = ab_l2_new(cfg->cache_redis, (int)cfg->cache_l2_timeout_ms,
                          cfg->cache_max_entry_bytes);
    if (cfg->data_dir && *cfg->data_dir &&
        (c->l3 = ab_l3_open(cfg->data_dir, cfg->cache_l3_bytes)) &&
        !(c->l3w = ab_l3_writer_new(c->l3, AB_L3_QUEUE_MAX))) {
        AB_ERROR("L3 cache off: cannot start its writer thread");
        ab_l3_close(&c->l3);
    }
    return c;
}

int ab_cache_l3_missing(const ab_cache_t *c, const ab_broker_config_t *cfg)
{
    if (!c || !cfg->data_dir || !cfg->data_dir[0] || c->l3)
        return 0;
    /* Asked for by name, so not dropped with only an ERROR line: the
     * broker ran on without its L3 cache. */
    fprintf(stderr, "agentbus-broker: invalid data-dir '%s': cannot open the L3 cache in it "
            "(the error above says why; an empty data-dir runs without the L3 cache)\n",
            cfg->data_dir);
    return 1;
}

void ab_cache_destroy(ab_cache_t **cp)
{
    ab_cache_t *c = cp ? *cp : NULL;
    if (!c)
        return;
    /* The requests were freed by the broker; only the groups are left. */
    for (size_t i = 0; i < c->flights.cap; i++)
        if (c->flights.keys[i]) {
            s_flight_t *f = c->flights.vals[i];
            free(f->waiters);
            free(f);
        }
    ab_idmap_fini(&c->flights);
    ab_l1_destroy(&c->l1);
    ab_l2_destroy(&c->l2);
    ab_l3_writer_destroy(&c->l3w); /* writes what is queued first */
    ab_l3_close(&c->l3);
    free(c);
    *cp = NULL;
}

void ab_cache_req_free(ab_cache_req_t **crp)
{
    if (!crp || !*crp)
        return;
    ab_blob_free(&(*crp)->acc);
    free(*crp);
    *crp = NULL;
}

/* --- helpers ----------------------------------------------------------------------- */
static uint64_t s_slot(const ab_cache_key_t *k)
{
    return k->lo ? k->lo : 1;
}

static s_flight_t *s_flight_get(ab_cache_t *c, const ab_cache_key_t *k)
{
    s_flight_t *f = ab_idmap_get(&c->flights, s_slot(k));
    return f && ab_cache_key_eq(&f->key, k) ? f : NULL;
}

static void s_flight_drop(ab_cache_t *c, s_flight_t *f)
{
    if (ab_idmap_get(&c->flights, s_slot(&f->key)) == f)
        ab_idmap_del(&c->flights, s_slot(&f->key));
    free(f->waiters);
    free(f);
}

/* The digest of MODEL as the workers of S report it ("" when none did), or
 * NULL when two of them report different ones. Names are compared as
 * placement compares them ("llama3" is "llama3:latest"): Ollama lists a
 * model with its tag, clients often name it without, and an exact match
 * left the digest out of every such key, so a re-pulled model's old
 * answers were served. Workers that disagree (a re-pull reached one
 * server and not yet another) make the request uncacheable: the key is
 * made before placement, so whichever digest it named, the answer might
 * come from the other model and be stored, or served, under it. */
static int s_digest_take(const char **d, const char *name, const char *digest, const char *model)
{
    if (!*digest || !ab_model_same(name, model))
        return 0;
    if (**d && strcmp(*d, digest) != 0)
        return -1;
    *d = digest;
    return 0;
}

static const char *s_digest(const ab_service_t *s, const char *model)
{
    const char *d = "";
    if (!*model)
        return d;
    for (ab_worker_rec_t *w = zlistx_first(s->workers); w; w = zlistx_next(s->workers)) {
        const Agentbus__InferenceState *st = w->inference;
        for (size_t i = 0; st && i < st->n_models; i++)
            if (s_digest_take(&d, st->models[i]->name, st->models[i]->digest, model) < 0)
                return NULL;
        for (size_t i = 0; st && i < st->n_loaded; i++)
            if (s_digest_take(&d, st->loaded[i]->name, st->loaded[i]->digest, model) < 0)
                return NULL;
    }
    return d;
}

/* The service's default TTL, when one of its workers declares it with the
 * label cache-ttl-s=SECONDS (the worker knows how long its answers stay
 * good), capped by cache-label-ttl-max-s (a worker's word is not an
 * operator's); -1 when none does. */
static int64_t s_service_ttl_ms(const ab_service_t *s, long max_s)
{
    for (ab_worker_rec_t *w = zlistx_first(s->workers); w; w = zlistx_next(s->workers)) {
        const char *v = w->labels ? zhashx_lookup(w->labels, "cache-ttl-s") : NULL;
        long t;
        if (v && ab_parse_long(v, 0, AB_CACHE_MAX_TTL_S, &t) == 0)
            return (int64_t)(t < max_s ? t : max_s) * 1000;
    }
    return -1;
}

/* Sends one chunk to a client as KIND answering CORR. */
static int s_send_chunk(ab_broker_t *b, const ab_rid_t *to, uint64_t corr, uint32_t kind,
                        uint32_t flags, uint64_t orig, const void *data, size_t size)
{
    ab_header_t h = ab_header_init(kind);
    h.correlation_id = corr;
    h.flags = flags;
    h.original_size = orig;
    zmq_msg_t m;
    if (zmq_msg_init_size(&m, size) != 0)
        return -1;
    if (size)
        memcpy(zmq_msg_data(&m), data, size);
    int rc = ab_send(b, to, &h, &m);
    zmq_msg_close(&m);
    return rc;
}

/* Replays a stored reply (or the chunks of one so far) to a client. */
static void s_replay(ab_broker_t *b, const ab_rid_t *to, uint64_t corr, const uint8_t *buf,
                     size_t len)
{
    size_t off = 0;
    ab_chunk_t ch;
    while (ab_blob_next(buf, len, &off, &ch) == 1)
        s_send_chunk(b, to, corr, ch.kind, ch.flags, ch.original_size, ch.data, ch.size);
}

/* --- request path ------------------------------------------------------------------ */
/* L3 lookup, straight from LMDB's map: a hit is replayed to the client and
 * promoted to L1. 1 when answered. */
static int s_l3_lookup(ab_broker_t *b, ab_service_t *s, const ab_rid_t *client, uint64_t id,
                       const ab_cache_key_t *key, int64_t now, uint64_t t_in)
{
    ab_cache_t *c = b->cache;
    uint64_t t0 = ab_now_ns();
    const uint8_t *val;
    size_t len;
    int64_t exp;
    int64_t wall = ab_wall_ms(); /* L3 keeps its expiries so (cache_lmdb.h) */
    int hit = ab_l3_get(c->l3, key, wall, &val, &len, &exp) == 1 && ab_blob_valid(val, len);
    ab_hist_record(&c->l3_ns, ab_now_ns() - t0);
    if (hit) {
        s_replay(b, client, id, val, len);
        ab_hist_record(&c->l3_serve_ns, ab_now_ns() - t_in);
        ab_l1_put(c->l1, key, val, len, now + (exp - wall));
        c->l3_hits++;
        s->replies++;
        b->c.replies++;
        ab_service_latency(s, 0);
    } else {
        c->l3_misses++;
    }
    ab_l3_release(c->l3);
    return hit;
}

/* The library lz4-compresses requests of 1 KiB or more, and long prompts
 * are the ones worth caching. A payload that declares at most
 * cache-key-decompress-max-bytes is decompressed (into *PLAIN, the caller
 * frees it) and keyed on its plain bytes, so its key does not depend on how
 * it travelled. A larger one is not decompressed: decompressing and hashing
 * what a 257 KB block may declare (64 MiB) cost 44 ms of the broker's one
 * thread per message. It keeps its compressed bytes and is keyed on them
 * and its declared size (ab_cache_key: cacheable only when marked), so the
 * broker's work per message stays proportional to the bytes it received.
 * 0, or -1 for a block that does not decompress. */
static int s_key_plain(ab_cache_t *c, size_t max_payload, const ab_header_t *h,
                       ab_key_input_t *in, void **plain)
{
    if (h->original_size > c->key_plain_max) {
        c->key_not_decompressed++;
        in->original_size = h->original_size;
        return 0;
    }
    if (ab_lz4_check(in->size, h->original_size, max_payload) != AB_OK ||
        !(*plain = malloc(h->original_size)) ||
        ab_lz4_decompress(in->payload, in->size, *plain, h->original_size) != AB_OK) {
        free(*plain);
        *plain = NULL;
        return -1;
    }
    in->payload = *plain;
    in->size = h->original_size;
    in->flags &= ~(uint32_t)AB_FLAG_LZ4;
    return 0;
}

int ab_cache_on_request(ab_broker_t *b, ab_service_t *s, const ab_rid_t *client,
                        uint32_t client_features, const ab_header_t *h,
                        const void *body, size_t body_len, int64_t now, ab_cache_req_t **cr)
{
    ab_cache_t *c = b->cache;
    *cr = NULL;
    if (!c || h->worker.len) /* pinned requests are operator commands */
        return 0;
    if (!h->model.len && !(h->flags & AB_FLAG_CACHEABLE)) {
        c->uncacheable++; /* no key (ab_cache_key's first test): nothing to copy or look up */
        return 0;
    }
    char model[AB_MODEL_MAX + 1];
    ab_view_copy(h->model, model, sizeof model);
    /* Without a model or the CACHEABLE mark there is no key (cache_key.c's
     * first test) and no clock read either: most requests stop here. */
    uint64_t t_in = model[0] || (h->flags & AB_FLAG_CACHEABLE) ? ab_now_ns() : 0;
    const char *digest = s_digest(s, model);
    if (!digest) {
        c->uncacheable++; /* workers disagree on the model: s_digest */
        return 0;
    }
    ab_key_input_t in = {s->name, model, digest, h->flags, body, body ? body_len : 0, 0, 0};
    in.plain_only = !(client_features & AB_FEATURE_LZ4);
    void *plain = NULL;
    if ((h->flags & AB_FLAG_LZ4) && in.size && (model[0] || (h->flags & AB_FLAG_CACHEABLE))) {
        int rc = s_key_plain(c, b->limits.max_payload, h, &in, &plain);
        if (rc < 0) {
            c->uncacheable++;
            return 0; /* a corrupt block: the worker answers MALFORMED */
        }
    }
    ab_cache_key_t key;
    ab_key_kind_t kk = ab_cache_key(&in, &key);
    free(plain);
    if (kk == AB_KEY_NO) {
        c->uncacheable++;
        return 0;
    }
    int read = !(h->flags & AB_FLAG_NO_CACHE);
    if (read) {
        uint64_t t0 = ab_now_ns();
        const uint8_t *val;
        size_t len;
        int hit = ab_l1_get(c->l1, &key, now, &val, &len, NULL);
        ab_hist_record(&c->l1_ns, ab_now_ns() - t0);
        if (hit && ab_blob_valid(val, len)) {
            s_replay(b, client, h->id, val, len);
            ab_hist_record(&c->l1_serve_ns, ab_now_ns() - t_in);
            s->replies++;
            b->c.replies++;
            ab_service_latency(s, 0);
            return 1;
        }
        if (hit)
            ab_l1_del(c->l1, &key); /* cannot happen: only whole replies are put */
        if (c->l3 && s_l3_lookup(b, s, client, h->id, &key, now, t_in))
            return 1;
    }
    ab_cache_req_t *x = calloc(1, sizeof *x);
    if (!x)
        return 0; /* served without the cache */
    x->key = key;
    uint32_t ttl = h->cache_ttl_s < AB_CACHE_MAX_TTL_S ? h->cache_ttl_s : AB_CACHE_MAX_TTL_S;
    int64_t svc_ttl = ttl ? -1 : s_service_ttl_ms(s, b->cfg->cache_label_ttl_max_s);
    x->ttl_ms = ttl ? (int64_t)ttl * 1000 : svc_ttl >= 0 ? svc_ttl : c->default_ttl_ms;
    x->read = (uint8_t)read;
    x->store = !(h->flags & AB_FLAG_NO_STORE);
    *cr = x;
    return 0;
}

/* Asks L2 for R's reply when Redis is usable: R then waits (other traffic
 * flows) until ab_cache_on_poll has the answer. 1 when asked. */
static int s_l2_ask(ab_cache_t *c, ab_req_t *r)
{
    ab_cache_req_t *cr = r->cache;
    /* A provisional service (startup grace) may be removed while R waits
     * outside its queue: such requests skip L2. */
    if (!c->l2 || !cr->read || r->service->provisional)
        return 0;
    if (!ab_l2_usable(c->l2)) {
        c->l2_skipped++; /* what the breaker is for: no request waits on a Redis that is down */
        return 0;
    }
    if (ab_l2_get(c->l2, r->bid, &cr->key) != 0) {
        c->l2_skipped++; /* AB_L2_PENDING_MAX lookups in flight: the worker answers */
        return 0;
    }
    c->l2_lookups++;
    r->state = AB_REQ_WAITING;
    cr->l2_wait = 1;
    cr->l2_sent_ns = ab_now_ns();
    return 1;
}

int ab_cache_join(ab_broker_t *b, ab_req_t *r)
{
    ab_cache_t *c = b->cache;
    ab_cache_req_t *cr = r->cache;
    if (!c || !cr)
        return 0;
    s_flight_t *f = s_flight_get(c, &cr->key);
    if (f) {
        ab_cache_req_t *lc = f->leader->cache;
        /* A leader whose reply outgrew the entry bound cannot replay its
         * start to a late joiner: that one goes to a worker itself. */
        if (!cr->read || lc->overflow || f->n >= c->waiters_max)
            return 0;
        if (f->n == f->cap) {
            size_t cap = f->cap ? f->cap * 2 : 8;
            ab_req_t **nw = realloc(f->waiters, cap * sizeof *nw);
            if (!nw)
                return 0;
            f->waiters = nw;
            f->cap = cap;
        }
        f->waiters[f->n++] = r;
        r->state = AB_REQ_WAITING;
        cr->flight = f;
        c->coalesced++;
        if (lc->acc.len) { /* the stream so far, then the rest as it comes */
            s_replay(b, &r->client, r->client_id, lc->acc.buf, lc->acc.len);
            f->streamed = 1;
        }
        return 1;
    }
    if (ab_idmap_get(&c->flights, s_slot(&cr->key)))
        return s_l2_ask(c, r); /* another key in the same slot (2^-64): go alone */
    f = calloc(1, sizeof *f);
    if (!f)
        return s_l2_ask(c, r);
    f->key = cr->key;
    f->leader = r;
    if (ab_idmap_put(&c->flights, s_slot(&cr->key), f) != 0) {
        free(f);
        return s_l2_ask(c, r);
    }
    cr->flight = f;
    cr->leader = 1;
    return s_l2_ask(c, r);
}

/* Takes F's waiters out of it (so freeing one does not touch F). */
static ab_req_t **s_take_waiters(s_flight_t *f, size_t *n)
{
    ab_req_t **w = f->waiters;
    *n = f->n;
    f->waiters = NULL;
    f->n = f->cap = 0;
    for (size_t i = 0; i < *n; i++)
        w[i]->cache->flight = NULL;
    return w;
}

/* Ends F with its leader's final answer H for every waiter. */
static void s_flight_end(ab_broker_t *b, s_flight_t *f, const ab_header_t *h,
                         const zmq_msg_t *body)
{
    size_t n;
    ab_req_t **w = s_take_waiters(f, &n);
    f->leader->cache->flight = NULL;
    f->leader->cache->leader = 0;
    s_flight_drop(b->cache, f);
    const void *data = body ? zmq_msg_data((zmq_msg_t *)body) : NULL;
    size_t size = body ? zmq_msg_size((zmq_msg_t *)body) : 0;
    char text[256];
    ab_view_copy(h->error_text, text, sizeof text);
    uint64_t now = ab_now_us();
    for (size_t i = 0; i < n; i++) {
        ab_req_t *r = w[i];
        ab_service_t *s = r->service;
        if (r->state != AB_REQ_ORPHANED) {
            if (h->kind == AB_KIND_REPLY) {
                s_send_chunk(b, &r->client, r->client_id, AB_KIND_REPLY, h->flags,
                             h->original_size, data, size);
                s->replies++;
                b->c.replies++;
            } else {
                ab_send_error(b, &r->client, r->client_id, h->error_code, text);
                s->errors++;
                AB_COUNT_ERROR(b, h->error_code);
            }
            ab_service_latency(s, now - r->start_us);
        }
        ab_req_free(b, r);
    }
    free(w);
}

/* The leader of F failed before any waiter saw a chunk: the first waiter
 * still waiting becomes the leader and goes to a worker (dispatched at the
 * end of this loop turn: callers may be walking a worker's list); the
 * others stay attached to it. */
static void s_flight_handoff(ab_broker_t *b, s_flight_t *f)
{
    ab_cache_t *c = b->cache;
    ab_cache_req_t *old = f->leader->cache;
    old->flight = NULL;
    old->leader = 0;
    while (f->n) {
        ab_req_t *w = f->waiters[0];
        memmove(f->waiters, f->waiters + 1, (f->n - 1) * sizeof *f->waiters);
        f->n--;
        if (w->state == AB_REQ_ORPHANED) { /* its client gave up */
            w->cache->flight = NULL;
            ab_req_free(b, w);
            continue;
        }
        f->leader = w;
        w->cache->leader = 1;
        ab_queue_push_front(b, w->service, w);
        c->redispatched++;
        c->dispatch_pending = 1;
        return;
    }
    s_flight_drop(c, f);
}

static int s_error_is_final(uint32_t code)
{
    /* The same request would fail the same way on any worker. */
    return code == AB_ERR_BAD_REQUEST || code == AB_ERR_MODEL_NOT_FOUND ||
           code == AB_ERR_MALFORMED;
}

void ab_cache_on_answer(ab_broker_t *b, ab_req_t *r, const ab_header_t *h,
                        const zmq_msg_t *body)
{
    ab_cache_t *c = b->cache;
    ab_cache_req_t *cr = r->cache;
    if (!c || !cr)
        return;
    const void *data = body ? zmq_msg_data((zmq_msg_t *)body) : NULL;
    size_t size = body ? zmq_msg_size((zmq_msg_t *)body) : 0;
    if (h->kind != AB_KIND_ERROR && !cr->overflow &&
        ab_blob_add(&cr->acc, h->kind, h->flags, h->original_size, data, size,
                    c->max_entry) != 0) {
        cr->overflow = 1;
        ab_blob_free(&cr->acc);
    }
    s_flight_t *f = cr->leader ? cr->flight : NULL;
    if (h->kind == AB_KIND_PARTIAL) {
        for (size_t i = 0; f && i < f->n; i++) {
            if (f->waiters[i]->state == AB_REQ_ORPHANED)
                continue;
            s_send_chunk(b, &f->waiters[i]->client, f->waiters[i]->client_id,
                         AB_KIND_PARTIAL, h->flags, h->original_size, data, size);
            f->streamed = 1;
        }
        return;
    }
    if (h->kind == AB_KIND_REPLY) {
        if (cr->store && !cr->overflow && cr->ttl_ms > 0) {
            int64_t exp = ab_now_ms() + cr->ttl_ms;
            ab_l1_put(c->l1, &cr->key, cr->acc.buf, cr->acc.len, exp);
            if (c->l3w)
                ab_l3_writer_put(c->l3w, &cr->key, cr->ttl_ms, cr->acc.buf, cr->acc.len);
            if (c->l2 && ab_l2_usable(c->l2))
                ab_l2_put(c->l2, &cr->key, cr->ttl_ms, cr->acc.buf, cr->acc.len);
        } else
            c->stores_skipped++;
        ab_blob_free(&cr->acc);
        if (f)
            s_flight_end(b, f, h, body);
        return;
    }
    ab_blob_free(&cr->acc); /* an error or a cut stream is never stored */
    cr->overflow = 0;
    if (f && (f->streamed || s_error_is_final(h->error_code)))
        s_flight_end(b, f, h, NULL);
    else if (f)
        s_flight_handoff(b, f);
}

void ab_cache_req_gone(ab_broker_t *b, ab_req_t *r)
{
    ab_cache_req_t *cr = r->cache;
    if (!cr || !cr->flight || !b->cache)
        return;
    s_flight_t *f = cr->flight;
    if (f->leader != r) {
        for (size_t i = 0; i < f->n; i++)
            if (f->waiters[i] == r) {
                memmove(f->waiters + i, f->waiters + i + 1, (f->n - i - 1) * sizeof *f->waiters);
                f->n--;
                break;
            }
        cr->flight = NULL;
        return;
    }
    if (!f->streamed) {
        s_flight_handoff(b, f);
        return;
    }
    ab_header_t h = ab_header_init(AB_KIND_ERROR);
    h.error_code = AB_ERR_WORKER_LOST;
    h.error_text = ab_view_of("the identical request this one was coalesced with failed "
                              "mid-stream");
    s_flight_end(b, f, &h, NULL);
}

int ab_cache_has_waiters(const ab_req_t *r)
{
    return r->cache && r->cache->leader && r->cache->flight && r->cache->flight->n > 0;
}

void ab_cache_req_cancelled(ab_broker_t *b, ab_req_t *r)
{
    ab_cache_req_t *cr = r->cache;
    if (!b->cache || !cr || !cr->leader || !cr->flight || cr->flight->n > 0)
        return;
    s_flight_drop(b->cache, cr->flight);
    cr->flight = NULL;
    cr->leader = 0;
}

/* --- L2 answers ----------------------------------------------------------------------- */
int ab_cache_poll_item(ab_broker_t *b, zmq_pollitem_t *it)
{
    return b->cache && b->cache->l2 ? ab_l2_poll_item(b->cache->l2, it) : 0;
}

int64_t ab_cache_next_wake(ab_broker_t *b)
{
    return b->cache && b->cache->l2 ? ab_l2_next_wake_ms(b->cache->l2) : 0;
}

/* An L2 hit for R (a leader that waited): R and its waiters get the whole
 * reply, which is promoted to L1 (and L3) for the time it had left in
 * Redis (TTL_MS, stored with it). With R's TTL, an entry stored for 2 s
 * was served by the promoting broker for an hour. But for no longer than
 * R's TTL: the time left comes from the writer's clock, and a clock behind
 * it by a day would keep a 60 s entry here for a day (past R's TTL, L2 is
 * asked again). */
static void s_l2_hit(ab_broker_t *b, ab_req_t *r, const uint8_t *val, size_t len,
                     int64_t ttl_ms)
{
    ab_cache_t *c = b->cache;
    ab_cache_req_t *cr = r->cache;
    if (cr->ttl_ms > 0 && ttl_ms > cr->ttl_ms)
        ttl_ms = cr->ttl_ms;
    ab_l1_put(c->l1, &cr->key, val, len, ab_now_ms() + ttl_ms);
    if (c->l3w)
        ab_l3_writer_put(c->l3w, &cr->key, ttl_ms, val, len);
    size_t n = 0;
    ab_req_t **w = NULL;
    if (cr->flight) {
        s_flight_t *f = cr->flight;
        w = s_take_waiters(f, &n);
        cr->flight = NULL;
        cr->leader = 0;
        s_flight_drop(c, f);
    }
    uint64_t now = ab_now_us();
    for (size_t i = 0; i <= n; i++) {
        ab_req_t *x = i < n ? w[i] : r;
        if (x->state != AB_REQ_ORPHANED) {
            s_replay(b, &x->client, x->client_id, val, len);
            x->service->replies++;
            b->c.replies++;
            ab_service_latency(x->service, now - x->start_us);
        }
        ab_req_free(b, x);
    }
    free(w);
}

/* Handles the L2 lookup answers that are ready: a hit answers the request
 * (and its waiters), a miss sends it on to a worker. */
static void s_l2_answers(ab_broker_t *b)
{
    ab_cache_t *c = b->cache;
    uint64_t tag;
    int hit;
    const uint8_t *val;
    size_t len;
    int64_t ttl_ms;
    while (ab_l2_recv(c->l2, &tag, &hit, &val, &len, &ttl_ms)) {
        ab_req_t *r = ab_idmap_get(&b->pending, tag);
        ab_cache_req_t *cr = r ? r->cache : NULL;
        if (!cr || !cr->l2_wait)
            continue; /* answered or gone meanwhile */
        cr->l2_wait = 0;
        ab_hist_record(&c->l2_ns, ab_now_ns() - cr->l2_sent_ns);
        if (hit && ab_blob_valid(val, len)) {
            c->l2_hits++;
            s_l2_hit(b, r, val, len, ttl_ms);
        } else {
            c->l2_misses++;
            ab_service_t *s = r->service;
            if (ab_service_enqueue(b, s, r) == 0)
                ab_service_dispatch(b, s);
        }
    }
}

void ab_cache_on_poll(ab_broker_t *b, short revents)
{
    ab_cache_t *c = b->cache;
    if (!c || !c->l2)
        return;
    ab_l2_on_poll(c->l2, revents);
    s_l2_answers(b);
}

void ab_cache_tick(ab_broker_t *b, int64_t now)
{
    ab_cache_t *c = b->cache;
    if (!c)
        return;
    if (c->l2) {
        ab_l2_tick(c->l2, now); /* the turn's lookups and stores go out as one write */
        s_l2_answers(b);        /* lookups it ended (timeout, connection lost) */
    }
    if (c->dispatch_pending) {
        c->dispatch_pending = 0;
        ab_service_dispatch_all(b);
    }
    ab_l1_expire(c->l1, now, AB_EXPIRE_SCAN);
}

/* --- control and stats ------------------------------------------------------------- */
Agentbus__CacheStats *ab_cache_stats(ab_broker_t *b)
{
    ab_cache_t *c = b->cache;
    if (!c)
        return NULL;
    ab_l1_stats_t l;
    ab_l1_stats(c->l1, &l);
    agentbus__cache_tier__init(&c->tier[0]);
    c->tier[0].name = "l1";
    c->tier[0].hits = l.hits;
    c->tier[0].misses = l.misses;
    c->tier[0].bytes = l.bytes;
    c->tier[0].entries = l.entries;
    c->tier[0].evictions = l.evictions;
    c->tier[0].expired = l.expired;
    c->tier[0].lookup_p50_ns = ab_hist_percentile(&c->l1_ns, 50);
    c->tier[0].lookup_p99_ns = ab_hist_percentile(&c->l1_ns, 99);
    c->tier[0].max_bytes = l.max_bytes;
    c->tier[0].stores = l.stores;
    c->tier[0].state = "on";
    c->tier[0].serve_p50_ns = ab_hist_percentile(&c->l1_serve_ns, 50);
    c->tier[0].serve_p99_ns = ab_hist_percentile(&c->l1_serve_ns, 99);
    c->tierp[0] = &c->tier[0];
    size_t nt = 1;
    if (c->l3) {
        Agentbus__CacheTier *t = &c->tier[1];
        ab_l3_counters_t *k = ab_l3_counters(c->l3);
        agentbus__cache_tier__init(t);
        t->name = "l3";
        t->state = "on";
        t->hits = c->l3_hits;
        t->misses = c->l3_misses;
        ab_l3_usage(c->l3, &t->entries, &t->bytes, &t->max_bytes);
        t->stores = atomic_load(&k->stores);
        t->evictions = atomic_load(&k->evictions);
        t->expired = atomic_load(&k->expired);
        t->dropped = atomic_load(&k->dropped);
        t->lookup_p50_ns = ab_hist_percentile(&c->l3_ns, 50);
        t->lookup_p99_ns = ab_hist_percentile(&c->l3_ns, 99);
        t->serve_p50_ns = ab_hist_percentile(&c->l3_serve_ns, 50);
        t->serve_p99_ns = ab_hist_percentile(&c->l3_serve_ns, 99);
        c->tierp[nt++] = t;
    }
    if (c->l2) {
        Agentbus__CacheTier *t = &c->tier[2];
        ab_l2_counters_t *k = ab_l2_counters(c->l2);
        agentbus__cache_tier__init(t);
        t->name = "l2";
        t->state = (char *)ab_l2_state_name(c->l2);
        t->hits = c->l2_hits;
        t->misses = c->l2_misses;
        t->stores = k->stores;
        t->evictions = k->opens; /* breaker openings (Redis evicts itself) */
        t->expired = k->dropped;
        t->skipped = c->l2_skipped;
        t->lookups = c->l2_lookups;
        t->sent = k->sent;
        t->dropped = k->dropped;
        t->timeouts = k->timeouts;
        t->failed = k->failed;
        t->lookup_p50_ns = ab_hist_percentile(&c->l2_ns, 50);
        t->lookup_p99_ns = ab_hist_percentile(&c->l2_ns, 99);
        c->tierp[nt++] = t;
    }
    agentbus__cache_stats__init(&c->st);
    c->st.n_tiers = nt;
    c->st.tiers = c->tierp;
    c->st.coalesced = c->coalesced;
    c->st.uncacheable = c->uncacheable;
    c->st.redispatched = c->redispatched;
    c->st.in_flight = ab_idmap_size(&c->flights);
    c->st.stores_skipped = c->stores_skipped;
    c->st.key_not_decompressed = c->key_not_decompressed;
    return &c->st;
}

static int s_pack(const ProtobufCMessage *m, uint8_t **out, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    *out = malloc(*len ? *len : 1);
    if (!*out)
        return -1;
    protobuf_c_message_pack(m, *out);
    return 0;
}

/* s_pack for a CONTROL answer: 0, or INTERNAL with *ERR set. */
static int s_pack_rc(const ProtobufCMessage *m, uint8_t **out, size_t *len, const char **err)
{
    if (s_pack(m, out, len) == 0)
        return 0;
    *err = "out of memory";
    return AB_ERR_INTERNAL;
}

static int s_get_entry(ab_cache_t *c, const char *hex, uint8_t **out, size_t *len,
                       const char **err)
{
    ab_cache_key_t key;
    if (ab_cache_key_parse(hex, &key) != 0) {
        *err = "cache get needs a key of 32 hex digits";
        return AB_ERR_BAD_REQUEST;
    }
    const uint8_t *val;
    size_t vlen;
    int64_t exp, now = ab_now_ms();
    const char *tier = "l1";
    int in_l3 = 0;
    if (!ab_l1_get(c->l1, &key, now, &val, &vlen, &exp)) {
        now = ab_wall_ms(); /* L3's clock (cache_lmdb.h) */
        in_l3 = c->l3 && ab_l3_get(c->l3, &key, now, &val, &vlen, &exp) == 1;
        if (!in_l3) {
            if (c->l3)
                ab_l3_release(c->l3);
            *err = "no such cache entry";
            return AB_ERR_NOT_FOUND;
        }
        tier = "l3";
    }
    Agentbus__CacheEntry e;
    agentbus__cache_entry__init(&e);
    char kh[AB_CACHE_KEY_HEX];
    ab_cache_key_hex(&key, kh);
    e.key = kh;
    e.tier = (char *)tier;
    e.ttl_left_ms = (uint64_t)(exp - now);
    Agentbus__CacheChunk ch[64], *chp[64];
    size_t off = 0, n = 0;
    ab_chunk_t x;
    while (n < 64 && ab_blob_next(val, vlen, &off, &x) == 1) {
        agentbus__cache_chunk__init(&ch[n]);
        ch[n].kind = (Agentbus__Kind)x.kind;
        ch[n].flags = x.flags;
        ch[n].original_size = x.original_size;
        ch[n].data.data = (uint8_t *)x.data;
        ch[n].data.len = x.size;
        chp[n] = &ch[n];
        n++;
    }
    e.n_chunks = n;
    e.chunks = chp;
    int rc = s_pack_rc(&e.base, out, len, err);
    if (in_l3)
        ab_l3_release(c->l3); /* the chunks pointed into the map */
    return rc;
}

int ab_cache_control(ab_broker_t *b, const char *what, uint8_t **out, size_t *len,
                     const char **err)
{
    ab_cache_t *c = b->cache;
    *out = NULL;
    *len = 0;
    *err = "unknown cache query (try: cache, cache clear [l1|l2|l3], cache get KEY)";
    if (!c) {
        *err = "the cache is off (--cache-l1-bytes 0)";
        return AB_ERR_UNSUPPORTED;
    }
    if (strcmp(what, "cache") == 0)
        return s_pack_rc(&ab_cache_stats(b)->base, out, len, err);
    int all = strcmp(what, "cache clear") == 0;
    /* Every tier: L1 and L3 first, so that Redis being down (the breaker
     * open) does not keep an operator from purging this broker's own
     * tiers; it used to answer BUSY having cleared none. */
    if (all || strcmp(what, "cache clear l1") == 0 || strcmp(what, "cache clear l3") == 0) {
        if (!all && what[13] == '3' && !c->l3w) {
            *err = "there is no L3 cache (no --data-dir)";
            return AB_ERR_UNSUPPORTED;
        }
        if (all || what[13] == '1')
            ab_l1_clear(c->l1);
        if ((all || what[13] == '3') && c->l3w && ab_l3_writer_clear(c->l3w) != 0) {
            *err = "the L3 writer is busy: try again";
            return AB_ERR_BUSY;
        }
        AB_INFO("cache %s cleared by an operator", all ? "(every tier)" : what + 12);
        if (!all || !c->l2)
            return s_pack_rc(&ab_cache_stats(b)->base, out, len, err);
    }
    if (all || strcmp(what, "cache clear l2") == 0) {
        if (!c->l2 || ab_l2_clear(c->l2) != 0) {
            *err = !c->l2 ? "there is no L2 cache (no --cache-redis)"
                   : all && c->l3w ? "L1 and L3 cleared, but Redis is not connected now "
                                     "(L2 breaker open): clear L2 again later (--tier l2)"
                   : all ? "L1 cleared, but Redis is not connected now (L2 breaker open): "
                           "clear L2 again later (--tier l2)"
                          : "Redis is not connected now (L2 breaker open): try again";
            return c->l2 ? AB_ERR_BUSY : AB_ERR_UNSUPPORTED;
        }
        return s_pack_rc(&ab_cache_stats(b)->base, out, len, err);
    }
    if (strncmp(what, "cache get ", 10) == 0)
        return s_get_entry(c, what + 10, out, len, err);
    return AB_ERR_UNSUPPORTED;
}

/* --- audit (audit.h) ---------------------------------------------------------- */
/* R, named by group F, is pending and says it is in F. */
static int s_audit_member(ab_broker_t *b, const s_flight_t *f, const ab_req_t *r, int leader,
                          char *why, size_t cap)
{
    if (ab_idmap_get(&b->pending, r->bid) != r)
        return ab_audit_bad(why, cap, "a single-flight group's %s (request %llu) is not pending",
                            leader ? "leader" : "waiter", (unsigned long long)r->bid);
    if (!r->cache || r->cache->flight != f || r->cache->leader != leader)
        return ab_audit_bad(why, cap,
                            "request %llu is a single-flight group's %s but does not "
                            "say so",
                            (unsigned long long)r->bid, leader ? "leader" : "waiter");
    return 0;
}

int ab_cache_audit(ab_broker_t *b, char *why, size_t cap)
{
    ab_cache_t *c = b->cache;
    if (!c)
        return 0;
    size_t members = 0;
    for (size_t i = 0; i < c->flights.cap; i++) {
        if (!c->flights.keys[i])
            continue;
        const s_flight_t *f = c->flights.vals[i];
        if (f->n > f->cap || !f->leader)
            return ab_audit_bad(why, cap, "a single-flight group has %zu waiters in room for %zu%s",
                                f->n, f->cap, f->leader ? "" : " and no leader");
        if (s_audit_member(b, f, f->leader, 1, why, cap) != 0)
            return -1;
        for (size_t k = 0; k < f->n; k++)
            if (s_audit_member(b, f, f->waiters[k], 0, why, cap) != 0)
                return -1;
        members += 1 + f->n;
    }
    /* The other way: a request pointing at a group is one of those counted
     * (a group freed while a request still named it is found here). */
    size_t pointing = 0;
    for (size_t i = 0; i < b->pending.cap; i++) {
        if (!b->pending.keys[i])
            continue;
        const ab_req_t *r = b->pending.vals[i];
        if (!r->cache || !r->cache->flight)
            continue;
        pointing++;
        if (ab_idmap_get(&c->flights, s_slot(&r->cache->key)) != r->cache->flight)
            return ab_audit_bad(why, cap,
                                "request %llu names a single-flight group the cache "
                                "does not list",
                                (unsigned long long)r->bid);
    }
    if (pointing != members)
        return ab_audit_bad(why, cap,
                            "%zu requests name a single-flight group; the groups hold %zu",
                            pointing, members);
    return 0;
}
