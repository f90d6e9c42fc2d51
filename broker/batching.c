/*
 * batching.c - BATCH on the broker's wire, both directions, and the
 * compression figures (the broker never decompresses what it routes).
 *
 * Send side, Redis beforeSleep style: during a loop turn, messages for a
 * peer that reads BATCH are held; at the end of the turn
 * (ab_batching_flush_all, called by the loop before it sleeps) each peer's
 * messages leave together as one BATCH. A peer that got only one message in
 * the turn gets it as a plain message, zero-copy (the first message is held
 * as it came and only copied into a batch when a second one follows): an
 * idle bus sees exactly the old wire, a turn later by microseconds only,
 * since a turn ends as soon as nothing more is waiting. Count, bytes and
 * age limits flush earlier; the count limit is each peer's own and follows
 * its backlog (ab_batch_next_limit: from 64 up to batch-max-count). All
 * messages to a peer pass through its queue, so per-peer order is kept: a
 * message too large to gather first flushes what was gathered before it.
 *
 * A batch body is at most batch-max-bytes, and for a peer that said its
 * max payload (Hello.max_payload) at most that + AB_PEER_RX_SLACK: a
 * larger frame would pass its ZMQ_MAXMSGSIZE and cut its connection.
 *
 * Only peers that announced AB_FEATURE_BATCH get BATCHes; ab_send never
 * calls in here for the others, so an older peer sees exactly the old wire.
 */
#define AB_LOG_SUBSYS "batching" /* log.h: the subsystem in log lines */
#include "agentbus.h"
#include "batching.h"
#include "link.h"
#include "router.h"
#include "batch.h"
#include "broker.h"
#include "compress.h"
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define AB_BATCH_KEEP_BYTES (16 * 1024)
#define AB_BATCH_KEEP_ENTRIES 1024 /* decoded entries kept between batches (~200 KB) */

struct ab_outq {
    ab_batch_t batch;
    ab_peer_t *peer;
    ab_list_t dirty_link;    /* on b->dirty: sent to in this turn */
    int held, held_has_body; /* the turn's first message, not yet copied */
    uint32_t limit;          /* count limit now (adaptive: ab_batch_next_limit) */
    uint32_t gathered;       /* messages for the peer since the last flush_all */
    uint8_t *held_hdr;
    size_t held_hlen, held_cap;
    zmq_msg_t held_body;
};

uint32_t ab_batching_features(const ab_broker_t *b, const ab_peer_t *p)
{
    /* The broker reads all three whatever its own send-side settings; LZ4
     * is withheld from a local peer so that it sends payloads plain. */
    uint32_t f = AB_FEATURE_BATCH | AB_FEATURE_INLINE;
    if (!p || !p->local || b->cfg->compress_local)
        f |= AB_FEATURE_LZ4;
    return f;
}

int ab_batching_lz4_hop(const ab_broker_t *b, const ab_peer_t *p)
{
    return p && (p->features & AB_FEATURE_LZ4) && (!p->local || b->cfg->compress_local);
}

int ab_batching_fd_local(int fd)
{
    if (fd < 0)
        return 1; /* inproc: the same process */
    struct sockaddr_storage me, it;
    socklen_t ml = sizeof me, il = sizeof it;
    if (getsockname(fd, (struct sockaddr *)&me, &ml) != 0 ||
        getpeername(fd, (struct sockaddr *)&it, &il) != 0)
        return 0;
    if (it.ss_family == AF_UNIX)
        return 1;
    if (it.ss_family == AF_INET && me.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const void *)&me, *c = (const void *)&it;
        /* 127/8, or this host's own address at both ends */
        return (ntohl(c->sin_addr.s_addr) >> 24) == 127 ||
               a->sin_addr.s_addr == c->sin_addr.s_addr;
    }
    if (it.ss_family == AF_INET6 && me.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const void *)&me, *c = (const void *)&it;
        const struct in6_addr *x = &c->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(x) || memcmp(x, &a->sin6_addr, sizeof *x) == 0)
            return 1;
        return IN6_IS_ADDR_V4MAPPED(x) && x->s6_addr[12] == 127;
    }
    return 0;
}

static void s_mark_dirty(ab_broker_t *b, ab_peer_t *p)
{
    if (!ab_list_linked(&p->out->dirty_link))
        ab_list_insert_head(&b->dirty, &p->out->dirty_link);
}

static size_t s_held_size(const struct ab_outq *q)
{
    size_t plen = q->held_has_body ? zmq_msg_size((zmq_msg_t *)&q->held_body) : 0;
    return ab_batch_entry_size(q->held_hlen, plen);
}

static void s_free_body(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* Sends P's gathered entries as one BATCH. The body's buffer
 * goes to ZeroMQ as it is (freed by its I/O thread once written): a batch
 * is up to batch-max-bytes, and copying it into a message of its own was
 * the broker's largest single cost at 4 KiB (callgrind: 16% of its
 * instructions, in memcpy). 0 or -1 (counted). */
static int s_send_batch(ab_broker_t *b, ab_peer_t *p)
{
    ab_header_t h = ab_header_init(AB_KIND_BATCH);
    uint8_t hb[64];
    size_t hl = ab_header_encode(&h, hb, sizeof hb), len;
    uint8_t *body = ab_batch_detach(&p->out->batch, &len);
    zmq_msg_t m;
    if (!body || zmq_msg_init_data(&m, body, len, s_free_body, NULL) != 0) {
        free(body);
        errno = ENOMEM;
        return -1;
    }
    int rc = ab_send_raw_peer(b, p, &p->rid, hb, hl, &m);
    zmq_msg_close(&m); /* after a send: empty; after a failure: frees the body */
    return rc;
}

/* Sends what P has gathered: the held message alone (zero-copy), or one
 * BATCH (a one-entry batch goes as a plain message). 0 or -1 (counted);
 * the caller decides what a failure means. */
static int s_flush(ab_broker_t *b, ab_peer_t *p)
{
    struct ab_outq *q = p->out;
    if (!q)
        return 0;
    if (q->held) {
        q->held = 0;
        int rc = ab_send_raw_peer(b, p, &p->rid, q->held_hdr, q->held_hlen,
                             q->held_has_body ? &q->held_body : NULL);
        zmq_msg_close(&q->held_body);
        zmq_msg_init(&q->held_body);
        return rc;
    }
    if (q->batch.count == 0)
        return 0;
    uint32_t n = q->batch.count;
    int rc;
    if (n == 1) {
        ab_frame_t f[2];
        size_t nf = 0;
        rc = -1;
        if (ab_batch_single(&q->batch, f, &nf) == AB_OK) {
            zmq_msg_t m;
            zmq_msg_init_size(&m, nf == 2 ? f[1].size : 0);
            if (nf == 2 && f[1].size)
                memcpy(zmq_msg_data(&m), f[1].data, f[1].size);
            rc = ab_send_raw_peer(b, p, &p->rid, f[0].data, f[0].size, nf == 2 ? &m : NULL);
            zmq_msg_close(&m);
        }
    } else {
        rc = s_send_batch(b, p);
        if (rc == 0) {
            b->c.batches_out++;
            b->c.batched_msgs_out += n;
        }
    }
    ab_batch_clear(&q->batch);
    return rc;
}

/* Holds one message as it came: header bytes copied, payload moved. */
static int s_hold(ab_broker_t *b, struct ab_outq *q, const uint8_t *hdr, size_t hlen,
                  zmq_msg_t *payload)
{
    if (hlen > q->held_cap) {
        uint8_t *nh = realloc(q->held_hdr, hlen);
        if (!nh)
            return -1;
        q->held_hdr = nh;
        q->held_cap = hlen;
    }
    memcpy(q->held_hdr, hdr, hlen);
    q->held_hlen = hlen;
    q->held_has_body = payload != NULL;
    if (payload)
        zmq_msg_move(&q->held_body, payload);
    q->held = 1;
    if (!b->oldest_gathered_us)
        b->oldest_gathered_us = ab_now_us();
    return 0;
}

/* Moves the held message into the batch (a second message follows it). */
static int s_unhold(struct ab_outq *q)
{
    zmq_msg_t *m = &q->held_body;
    int rc = ab_batch_add(&q->batch, q->held_hdr, q->held_hlen,
                          q->held_has_body ? zmq_msg_data(m) : NULL,
                          q->held_has_body ? zmq_msg_size(m) : 0, q->held_has_body);
    if (rc == AB_OK) {
        q->held = 0;
        zmq_msg_close(m);
        zmq_msg_init(m);
    }
    return rc;
}

int ab_batching_send(ab_broker_t *b, ab_peer_t *p, const uint8_t *hdr, size_t hlen,
                     zmq_msg_t *payload)
{
    if (!p->out) {
        if (!(p->out = calloc(1, sizeof *p->out)))
            return ab_send_raw_peer(b, p, &p->rid, hdr, hlen, payload);
        zmq_msg_init(&p->out->held_body);
        p->out->peer = p;
        p->out->limit = ab_batch_next_limit(0, 0, (uint32_t)b->cfg->batch_max_count);
    }
    struct ab_outq *q = p->out;
    s_mark_dirty(b, p);
    q->gathered++;
    size_t esz = ab_batch_entry_size(hlen, payload ? zmq_msg_size(payload) : 0);
    size_t max = ab_peer_batch_max(b, p); /* what P reads (its max payload) */
    if (esz + 8 > max) /* too big to gather: out now, after what was before it */
        return s_flush(b, p) != 0 ? -1 : ab_send_raw_peer(b, p, &p->rid, hdr, hlen, payload);
    if (q->held) {
        if (s_held_size(q) + esz + 8 > max || s_unhold(q) != AB_OK) {
            if (s_flush(b, p) != 0) /* sends the held one */
                return -1;
        }
    }
    if (!q->held && q->batch.count == 0)
        return s_hold(b, q, hdr, hlen, payload) == 0
                   ? 0
                   : ab_send_raw_peer(b, p, &p->rid, hdr, hlen, payload);
    if (q->batch.len + esz > max && s_flush(b, p) != 0)
        return -1;
    if (q->batch.count == 0)
        return s_hold(b, q, hdr, hlen, payload) == 0
                   ? 0
                   : ab_send_raw_peer(b, p, &p->rid, hdr, hlen, payload);
    if (ab_batch_add(&q->batch, hdr, hlen, payload ? zmq_msg_data(payload) : NULL,
                     payload ? zmq_msg_size(payload) : 0, payload != NULL) != AB_OK)
        return s_flush(b, p) != 0 ? -1 : ab_send_raw_peer(b, p, &p->rid, hdr, hlen, payload);
    if (payload) { /* consumed, as a send would have */
        zmq_msg_close(payload);
        zmq_msg_init(payload);
    }
    if (q->batch.count >= q->limit)
        return s_flush(b, p);
    return 0;
}

int ab_batching_add_bytes(ab_broker_t *b, ab_peer_t *p, const uint8_t *hdr, size_t hlen,
                          const void *data, size_t size, int has)
{
    struct ab_outq *q = p->out;
    if (!q || (!q->held && q->batch.count == 0))
        return 1; /* the turn's first message to P: held as a message (s_hold) */
    size_t esz = ab_batch_entry_size(hlen, has ? size : 0), max = ab_peer_batch_max(b, p);
    size_t have = q->held ? s_held_size(q) + 8 : q->batch.len;
    if (esz + 8 > max || have + esz > max)
        return 1; /* ab_batching_send flushes first, or sends it alone */
    if (q->held && s_unhold(q) != AB_OK)
        return 1;
    if (ab_batch_add(&q->batch, hdr, hlen, data, has ? size : 0, has) != AB_OK)
        return 1;
    s_mark_dirty(b, p);
    q->gathered++;
    if (q->batch.count >= q->limit)
        return s_flush(b, p) != 0 ? -1 : 0;
    return 0;
}

void ab_batching_flush_all(ab_broker_t *b)
{
    /* Popped one by one: a failed flush to a worker drops it, as a failed
     * dispatch does (its requests go back to their clients as WORKER_LOST
     * instead of waiting for deadlines); those answers may list peers
     * again, and they are handled in this same loop. No caller holds a
     * pointer to the peer here, so dropping it is safe. */
    ab_list_t *l;
    while ((l = ab_list_pop_head(&b->dirty))) {
        struct ab_outq *q = ab_list_data(l, struct ab_outq, dirty_link);
        ab_peer_t *p = q->peer;
        q->limit = ab_batch_next_limit(q->limit, q->gathered, (uint32_t)b->cfg->batch_max_count);
        q->gathered = 0;
        int rc = s_flush(b, p);
        /* An idle connection must stay cheap: a buffer that grew for a
         * large batch is given back (one malloc per large batch). */
        if (p->out->batch.cap > AB_BATCH_KEEP_BYTES)
            ab_batch_fini(&p->out->batch);
        if (rc != 0 && p->worker)
            ab_peer_drop(b, p, "unreachable");
        else if (rc != 0)
            ab_link_send_failed(p); /* a link's connection: it goes down next turn */
    }
    b->oldest_gathered_us = 0;
    ab_router_reap(b); /* slow peers marked in this turn (router.c) */
}

void ab_batching_check_age(ab_broker_t *b)
{
    if (b->oldest_gathered_us &&
        ab_now_us() - b->oldest_gathered_us >= (uint64_t)b->cfg->batch_max_age_us)
        ab_batching_flush_all(b);
}

void ab_batching_peer_free(ab_broker_t *b, ab_peer_t *p)
{
    if (!p->out)
        return;
    (void)b;
    ab_list_remove(&p->out->dirty_link);
    ab_batch_fini(&p->out->batch);
    zmq_msg_close(&p->out->held_body);
    free(p->out->held_hdr);
    free(p->out);
    p->out = NULL;
}

/* A malformed BATCH from RID: counted, answered MALFORMED, dropped whole. */
static void s_recv_malformed(ab_broker_t *b, const ab_rid_t *rid, int64_t now, size_t size)
{
    char key[2 * AB_RID_MAX + 1];
    b->c.malformed++;
    b->c.batch_malformed++;
    ab_hex(rid->bytes, rid->len, key, sizeof key);
    AB_LOG_RL(&b->rl, ab_hash_bytes(rid->bytes, rid->len) ^ 0xba7c, now, AB_LOG_WARN,
              "malformed batch from %s (%zu bytes): dropped whole", key, size);
    ab_send_error(b, rid, 0, AB_ERR_MALFORMED, "BATCH: malformed batch, no entry delivered");
}

/* A long batch: the clock moves on every 32 entries. */
static void s_recv_tick(ab_broker_t *b, uint32_t i)
{
    if ((i & 31) == 0 && b->clock_us)
        b->clock_us = ab_now_us();
}

/* The old way, two parses per entry (check, then route): when the decoded
 * entries cannot be kept (out of memory, or a batch routed while another
 * is, which nothing does today). */
static void s_recv_twice(ab_broker_t *b, const ab_rid_t *rid, int fd, int64_t now,
                         const ab_frame_t *body)
{
    ab_batch_reader_t r;
    uint32_t count = 0;
    if (ab_batch_open(&r, body->data, body->size, &b->limits, &count) != AB_OK) {
        s_recv_malformed(b, rid, now, body->size);
        return;
    }
    b->c.batches_in++;
    b->c.batched_msgs_in += count;
    ab_frame_t f[2];
    size_t nf;
    for (uint32_t i = 1; ab_batch_next(&r, f, &nf) == 1; i++) {
        ab_route_frames(b, rid, fd, now, f, nf);
        s_recv_tick(b, i);
    }
}

void ab_batching_recv(ab_broker_t *b, const ab_rid_t *rid, int fd, int64_t now,
                      const ab_frame_t *body)
{
    ab_batch_entries_t *d = &b->in_batch;
    int rc = b->in_batch_busy ? AB_ENOMEM : ab_batch_decode(d, body->data, body->size, &b->limits);
    if (rc == AB_ENOMEM) {
        s_recv_twice(b, rid, fd, now, body);
        return;
    }
    if (rc != AB_OK) {
        s_recv_malformed(b, rid, now, body->size);
        return;
    }
    b->c.batches_in++;
    b->c.batched_msgs_in += d->n;
    b->in_batch_busy = 1;
    for (uint32_t i = 0; i < d->n; i++) {
        ab_route_entry(b, rid, fd, now, &d->e[i]);
        s_recv_tick(b, i + 1);
    }
    b->in_batch_busy = 0;
    /* An idle broker keeps no large array (one malloc per large batch). */
    if (d->cap > AB_BATCH_KEEP_ENTRIES)
        ab_batch_entries_fini(d);
}

void ab_batching_note(ab_broker_t *b, const ab_header_t *h, size_t payload_size)
{
    if (h->flags & AB_FLAG_LZ4) {
        b->c.lz4_msgs++;
        b->c.lz4_wire_bytes += payload_size;
        b->c.lz4_original_bytes += h->original_size;
    } else if (h->flags & AB_FLAG_LZ4_SKIPPED) {
        b->c.lz4_skipped++;
    }
}

void ab_batching_compress(ab_broker_t *b, const ab_peer_t *p, ab_header_t *h, uint8_t **buf,
                          size_t *len)
{
    size_t t = b->cfg->compress_threshold_bytes;
    if (!ab_batching_lz4_hop(b, p) || t == 0 || *len < t)
        return;
    void *z;
    size_t zl;
    if (ab_lz4_compress(*buf, *len, (unsigned)b->cfg->compress_min_saving_pct, &z, &zl) != 1) {
        h->flags |= AB_FLAG_LZ4_SKIPPED;
        return;
    }
    h->flags |= AB_FLAG_LZ4;
    h->original_size = *len;
    free(*buf);
    *buf = z;
    *len = zl;
}
