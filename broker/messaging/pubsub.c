/*
 * pubsub.c - topics: SUBSCRIBE, PUBLISH, fan-out, slow subscribers.
 *
 * Subscriptions live in a trie with one node per topic label. A node holds
 * the subscribers of its exact topic and those of its prefix ("alerts."
 * sits on node "alerts" as a prefix subscription). Publishing "a.b.c" walks
 * at most three nodes: the prefix subscribers of "a" and "a.b", then the
 * exact subscribers of "a.b.c". Cost per publication: the labels' hash
 * lookups plus one send per matching subscriber, independent of how many
 * other topics exist.
 *
 * A publication is held once (ab_pub_t: header encoded once, payload
 * moved in) and each matching subscriber's queue takes a reference counted
 * by the broker thread alone. Subscribers that read BATCH get the
 * publications of a loop turn as one BATCH, whose body is encoded once and
 * shared by every subscriber with the same publications (see "Fan-out
 * batching" below); others get each one as a plain message whose frames
 * are zmq_msg_copy references (no payload bytes copied).
 *
 * Slow subscribers. A subscriber is slow when the broker may not hand its
 * connection more: its bytes in flight are over peer-out-max-bytes (as its
 * kernel proves, router.c), or its libzmq pipe is at SNDHWM (the send fails
 * with EAGAIN under ROUTER_MANDATORY). The broker then keeps the
 * subscriber's publications in its own queue of at most sub-queue-max
 * publications and peer-out-max-bytes bytes, and when that is full drops
 * the oldest, counts it (slow_drops) and tells the subscriber how many it
 * lost (a PUBLISH with FLAG_GAP, credit = count) before the next one it
 * gets. So one subscriber costs at most about twice peer-out-max-bytes
 * (in flight + queued). Other subscribers and the publisher are never
 * slowed.
 */
#define AB_LOG_SUBSYS "messaging" /* log.h: the subsystem in log lines */
#include "msgs.h"
#include "link.h"
#include "router.h"
#include "batch.h"
#include "agentbus.h"
#include "topic.h"
#include "audit.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

struct ab_tnode {
    ab_tnode_t *parent;
    char *label;
    zhashx_t *children; /* label -> ab_tnode_t (freed by pruning, not the hash) */
    ab_subr_t **exact, **prefix;
    size_t n_exact, cap_exact, n_prefix, cap_prefix;
};

#define AB_TOPIC_BUF 256

static ab_tnode_t *s_node_new(ab_tnode_t *parent, const char *label)
{
    ab_tnode_t *n = calloc(1, sizeof *n);
    if (!n || !(n->label = strdup(label))) {
        free(n);
        return NULL;
    }
    n->parent = parent;
    return n;
}

static void s_node_free(ab_tnode_t *n)
{
    if (n->children) {
        for (ab_tnode_t *c = zhashx_first(n->children); c; c = zhashx_next(n->children))
            s_node_free(c);
        zhashx_destroy(&n->children);
    }
    free(n->exact);
    free(n->prefix);
    free(n->label);
    free(n);
}

/* The node of PATTERN (a trailing '.' already removed), created if CREATE. */
static ab_tnode_t *s_node_get(ab_msgs_t *m, const char *pattern, int create)
{
    char buf[AB_TOPIC_BUF];
    snprintf(buf, sizeof buf, "%s", pattern);
    if (!m->root && (!create || !(m->root = s_node_new(NULL, ""))))
        return NULL;
    ab_tnode_t *node = m->root;
    char *save = NULL;
    for (char *l = strtok_r(buf, ".", &save); l; l = strtok_r(NULL, ".", &save)) {
        ab_tnode_t *c = node->children ? zhashx_lookup(node->children, l) : NULL;
        if (!c) {
            if (!create)
                return NULL;
            if (!node->children && !(node->children = zhashx_new()))
                return NULL;
            if (!(c = s_node_new(node, l)))
                return NULL;
            zhashx_insert(node->children, l, c);
        }
        node = c;
    }
    return node;
}

/* Frees empty nodes from N up towards the root. */
static void s_node_prune(ab_msgs_t *m, ab_tnode_t *n)
{
    while (n && n->parent && !n->n_exact && !n->n_prefix &&
           (!n->children || zhashx_size(n->children) == 0)) {
        ab_tnode_t *parent = n->parent;
        zhashx_delete(parent->children, n->label);
        s_node_free(n);
        n = parent;
    }
    if (m->root && !m->root->n_exact && !m->root->n_prefix &&
        (!m->root->children || zhashx_size(m->root->children) == 0)) {
        s_node_free(m->root);
        m->root = NULL;
    }
}

static int s_list_add(ab_subr_t ***list, size_t *n, size_t *cap, ab_subr_t *s)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 4;
        ab_subr_t **l = realloc(*list, c * sizeof *l);
        if (!l)
            return -1;
        *list = l;
        *cap = c;
    }
    (*list)[(*n)++] = s;
    return 0;
}

static void s_list_del(ab_subr_t **list, size_t *n, ab_subr_t *s)
{
    for (size_t i = 0; i < *n; i++)
        if (list[i] == s) {
            list[i] = list[--*n];
            return;
        }
}

static int s_pat_find(const ab_subr_t *s, const char *pattern)
{
    for (size_t i = 0; i < s->npats; i++)
        if (strcmp(s->pats[i].pattern, pattern) == 0)
            return (int)i;
    return -1;
}

static int s_subscribe(ab_broker_t *b, ab_subr_t *s, const char *pattern)
{
    ab_msgs_t *m = b->msgs;
    if (s_pat_find(s, pattern) >= 0)
        return 0;
    size_t len = strlen(pattern);
    int prefix = pattern[len - 1] == '.';
    char base[AB_TOPIC_BUF];
    snprintf(base, sizeof base, "%.*s", (int)(prefix ? len - 1 : len), pattern);
    if (s->npats == s->cap_pats) {
        size_t c = s->cap_pats ? s->cap_pats * 2 : 4;
        ab_subpat_t *p = realloc(s->pats, c * sizeof *p);
        if (!p)
            return -1;
        s->pats = p;
        s->cap_pats = c;
    }
    ab_tnode_t *node = s_node_get(m, base, 1);
    char *copy = strdup(pattern);
    int rc = node && copy ? 0 : -1;
    if (rc == 0)
        rc = prefix ? s_list_add(&node->prefix, &node->n_prefix, &node->cap_prefix, s)
                    : s_list_add(&node->exact, &node->n_exact, &node->cap_exact, s);
    if (rc != 0) {
        free(copy);
        if (node)
            s_node_prune(m, node);
        return -1;
    }
    if ((prefix ? node->n_prefix : node->n_exact) == 1)
        m->topics++;
    if (s->npats == 0)
        m->subscribers++;
    s->pats[s->npats++] = (ab_subpat_t){copy, node, prefix};
    return 0;
}

static void s_unsubscribe_at(ab_broker_t *b, ab_subr_t *s, size_t i)
{
    ab_msgs_t *m = b->msgs;
    ab_subpat_t *pt = &s->pats[i];
    ab_tnode_t *node = pt->node;
    if (pt->prefix)
        s_list_del(node->prefix, &node->n_prefix, s);
    else
        s_list_del(node->exact, &node->n_exact, s);
    if ((pt->prefix ? node->n_prefix : node->n_exact) == 0)
        m->topics--;
    free(pt->pattern);
    s->pats[i] = s->pats[--s->npats];
    if (s->npats == 0)
        m->subscribers--;
    s_node_prune(m, node);
}

void ab_pubsub_on_subscribe(ab_broker_t *b, ab_peer_t *p, const ab_header_t *h)
{
    char pattern[AB_TOPIC_BUF];
    if (ab_topic_check_n(h->target.ptr, h->target.len, 1) != AB_OK) {
        ab_view_copy(h->target, pattern, 65);
        ab_msgs_refuse(b, &p->rid, h->id, AB_ERR_BAD_NAME,
                       "malformed topic pattern '%s': labels of [A-Za-z0-9_-:] (1..64 bytes) "
                       "joined by single dots, at most 16 labels and 255 bytes; a trailing dot "
                       "makes it a prefix", pattern);
        return;
    }
    ab_view_copy(h->target, pattern, sizeof pattern);
    ab_subr_t *s = p->subr;
    if (h->flags & AB_FLAG_UNSUBSCRIBE) {
        int i = s ? s_pat_find(s, pattern) : -1;
        if (i >= 0)
            s_unsubscribe_at(b, s, (size_t)i);
    } else {
        if (!s && (s = p->subr = calloc(1, sizeof *s)) != NULL)
            s->peer = p;
        if (s && s->npats >= AB_SUBS_PER_PEER_MAX && s_pat_find(s, pattern) < 0) {
            ab_msgs_refuse(b, &p->rid, h->id, AB_ERR_BUSY,
                           "too many subscriptions on one connection (max %d)",
                           AB_SUBS_PER_PEER_MAX);
            return;
        }
        if (!s || s_subscribe(b, s, pattern) != 0) {
            ab_msgs_refuse(b, &p->rid, h->id, AB_ERR_INTERNAL, "out of memory");
            return;
        }
    }
    if (h->id) {
        ab_header_t r = ab_header_init(AB_KIND_REPLY);
        r.correlation_id = h->id;
        ab_send(b, &p->rid, &r, NULL);
    }
}

/* --- fan-out ------------------------------------------------------------------ */
static void s_q_grow(ab_subr_t *s, size_t max)
{
    size_t cap = s->qcap ? s->qcap * 2 : 16;
    if (cap > max)
        cap = max;
    ab_pubq_t *q = malloc(cap * sizeof *q);
    if (!q)
        return;
    for (size_t i = 0; i < s->qlen; i++)
        q[i] = s->q[(s->qhead + i) % s->qcap];
    free(s->q);
    s->q = q;
    s->qcap = cap;
    s->qhead = 0;
}

static void s_pub_release(ab_pub_t *pub)
{
    if (--pub->refs)
        return;
    zmq_msg_close(&pub->hdr);
    zmq_msg_close(&pub->body);
    free(pub);
}

static void s_q_pop(ab_subr_t *s)
{
    ab_pub_t *pub = s->q[s->qhead].pub;
    s->qbytes -= pub->size < s->qbytes ? pub->size : s->qbytes;
    s_pub_release(pub);
    s->qhead = (s->qhead + 1) % s->qcap;
    s->qlen--;
}

/* Sends publication PUB alone to S (references: zero-copy). 0 or -1 as
 * ab_send_try. */
static int s_send_one(ab_broker_t *b, ab_subr_t *s, ab_pub_t *pub)
{
    zmq_msg_t hc, bc;
    zmq_msg_init(&hc);
    zmq_msg_init(&bc);
    zmq_msg_copy(&hc, &pub->hdr);
    if (pub->has_body)
        zmq_msg_copy(&bc, &pub->body);
    int rc = ab_send_try(b, &s->peer->rid, &hc, pub->has_body ? &bc : NULL);
    zmq_msg_close(&hc);
    zmq_msg_close(&bc);
    return rc;
}

/* Fan-out batching. A subscriber that reads BATCH (and is not a broker
 * link) does not get each publication as it is routed: its references are
 * queued, and at the end of the loop turn, or sooner at the limits below,
 * what it got goes as one BATCH: three frames for the lot instead of three
 * per publication, at the broker, in both libzmq I/O threads and in the
 * subscriber's library. The body is encoded once and shared (zmq_msg_copy)
 * by every subscriber whose queue holds the same publications, as those on
 * one topic do. A lone publication in a turn still goes as a plain message.
 * The queue is the one slow subscribers use, so accounting and policy stay
 * one: a queued publication is sent, or dropped oldest-first and counted. */
#define AB_FAN_MAX_BYTES (16 * 1024) /* a body: libzmq's pipe holds SNDHWM of them */

static int s_batches(const ab_broker_t *b, const ab_subr_t *s)
{
    const ab_peer_t *p = s->peer;
    return b->cfg->batch && (p->features & AB_FEATURE_BATCH) && p->link_role == AB_LINK_NONE;
}

static size_t s_fan_max_count(const ab_broker_t *b)
{
    size_t n = (size_t)b->cfg->batch_max_count, q = (size_t)b->cfg->sub_queue_max;
    return n < q ? n : q;
}

/* The largest BATCH body for S: batch-max-bytes held to S's max payload
 * (ab_peer_batch_max), AB_FAN_MAX_BYTES and peer-out-max-bytes. */
static size_t s_fan_max_bytes(const ab_broker_t *b, const ab_subr_t *s)
{
    size_t n = ab_peer_batch_max(b, s->peer);
    if (n > AB_FAN_MAX_BYTES)
        n = AB_FAN_MAX_BYTES;
    size_t bound = b->cfg->peer_out_max_bytes;
    return bound && bound < n ? bound : n;
}

/* Queues a reference to PUB for S; the oldest goes when the queue is
 * full (counted, reported as a gap). */
static void s_enqueue(ab_broker_t *b, ab_subr_t *s, ab_pub_t *pub)
{
    ab_msgs_t *m = b->msgs;
    size_t max = (size_t)b->cfg->sub_queue_max, bound = b->cfg->peer_out_max_bytes;
    /* drop-oldest: the newest news is worth more */
    while (s->qlen && (s->qlen >= max || (bound && s->qbytes + pub->size > bound))) {
        s_q_pop(s);
        s->gap++;
        s->dropped++;
        m->c.slow_drops++;
    }
    if (s->qlen == s->qcap)
        s_q_grow(s, max);
    if (s->qlen == s->qcap) { /* out of memory: this one is the loss */
        s->gap++;
        s->dropped++;
        m->c.slow_drops++;
        return;
    }
    s->q[(s->qhead + s->qlen) % s->qcap].pub = pub;
    pub->refs++;
    s->qlen++;
    s->qbytes += pub->size;
}

/* Sends what S holds now; what its pipe refuses waits in the backlog. */
static void s_flush_now(ab_broker_t *b, ab_subr_t *s)
{
    int done = 0;
    ab_list_remove(&s->turn_link);
    ab_pubsub_flush(b, s, &done);
    if (!done)
        ab_msgs_backlog_sub(b, s);
}

/* S got publications in this loop turn: they go at its end. */
static void s_turn_join(ab_broker_t *b, ab_subr_t *s)
{
    ab_msgs_t *m = b->msgs;
    if (!ab_list_linked(&s->turn_link)) {
        if (ab_list_empty(&m->fan.turn))
            m->fan.turn_us = ab_now_us();
        ab_list_insert_tail(&m->fan.turn, &s->turn_link);
    }
}

/* PUB is over S's max payload (Hello.max_payload): sent, it would cut S's
 * connection (past its ZMQ_MAXMSGSIZE) or be dropped unseen by its
 * library. S does not get it: counted as a slow subscriber's drops are,
 * and reported to it as a gap before whatever it gets next (now, with no
 * next: S is flushed at the turn's end, or by the backlog). */
static void s_too_large(ab_broker_t *b, ab_subr_t *s)
{
    s->too_large++;
    s->gap++;
    b->msgs->c.pub_too_large++;
    if (s_batches(b, s) && !s->backlog)
        s_turn_join(b, s);
    else
        ab_msgs_backlog_sub(b, s);
}

/* Gives subscriber S publication PUB. */
static void s_push(ab_broker_t *b, ab_subr_t *s, ab_pub_t *pub)
{
    ab_msgs_t *m = b->msgs;
    m->c.fanout++;
    if (!s_batches(b, s)) {
        if (s->qlen == 0 && s->gap == 0 && s_send_one(b, s, pub) == 0)
            return;
        s_enqueue(b, s, pub);
        ab_msgs_backlog_sub(b, s);
        return;
    }
    if (s->backlog) { /* its pipe is full: the backlog retries it */
        s_enqueue(b, s, pub);
        return;
    }
    /* Gathered this turn: a full batch leaves before the next is begun,
     * so waiting for the turn's end never drops anything. */
    if (s->qlen &&
        (s->qlen >= s_fan_max_count(b) || s->qbytes + pub->size > s_fan_max_bytes(b, s))) {
        s_flush_now(b, s);
        if (s->backlog) {
            s_enqueue(b, s, pub);
            return;
        }
    }
    s_enqueue(b, s, pub);
    s_turn_join(b, s);
}

void ab_pubsub_turn_end(ab_broker_t *b)
{
    ab_list_t *l;
    while ((l = ab_list_pop_head(&b->msgs->fan.turn)))
        s_flush_now(b, ab_list_data(l, ab_subr_t, turn_link));
}

static size_t s_push_all(ab_broker_t *b, ab_subr_t **list, size_t n, ab_pub_t *pub)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        ab_subr_t *s = list[i];
        if (s->mark == pub->seq) /* matched by another of its patterns */
            continue;
        s->mark = pub->seq;
        if (pub->psize > ab_peer_max_payload(b, s->peer))
            s_too_large(b, s);
        else
            s_push(b, s, pub);
        k++;
    }
    return k;
}

/* The publication's record, its header encoded once and BODY moved in,
 * PSIZE its payload's size as subscribers' max payloads judge it (NULL on
 * failure: out of memory). The caller holds one reference. */
static ab_pub_t *s_pub_new(const ab_header_t *out, zmq_msg_t *body, uint64_t seq,
                           uint64_t psize)
{
    ab_pub_t *pub = malloc(sizeof *pub);
    if (!pub)
        return NULL;
    if (ab_header_msg(out, &pub->hdr) != 0) {
        free(pub);
        return NULL;
    }
    zmq_msg_init(&pub->body);
    pub->has_body = body != NULL;
    if (body)
        zmq_msg_move(&pub->body, body);
    pub->refs = 1;
    pub->seq = seq;
    pub->psize = psize;
    pub->size = zmq_msg_size(&pub->hdr) + zmq_msg_size(&pub->body);
    return pub;
}

void ab_pubsub_on_publish(ab_broker_t *b, ab_peer_t *p, const ab_header_t *h, zmq_msg_t *body)
{
    ab_msgs_t *m = b->msgs;
    char topic[AB_TOPIC_BUF], sbuf[2 * AB_RID_MAX + 2];
    if (ab_topic_check_n(h->target.ptr, h->target.len, 0) != AB_OK) {
        ab_view_copy(h->target, topic, 65);
        ab_msgs_refuse(b, &p->rid, h->id, AB_ERR_BAD_NAME,
                       "malformed topic '%s': labels of [A-Za-z0-9_-:] (1..64 bytes) joined by "
                       "single dots, at most 16 labels and 255 bytes, no trailing dot", topic);
        return;
    }
    size_t size = body ? zmq_msg_size(body) : 0;
    if (size > b->cfg->message_max_bytes) {
        ab_msgs_refuse(b, &p->rid, h->id, AB_ERR_TOO_LARGE,
                       "message of %zu bytes exceeds message-max-bytes (%zu)", size,
                       b->cfg->message_max_bytes);
        return;
    }
    m->c.published++;
    ab_view_copy(h->target, topic, sizeof topic);
    ab_header_t out = ab_header_init(AB_KIND_PUBLISH);
    out.id = h->id;
    const char *sender = ab_link_msg_sender(p, h, sbuf, sizeof sbuf); /* from a peer broker */
    out.sender = ab_view_of(sender ? sender : ab_msgs_sender_name(p, sbuf, sizeof sbuf));
    out.target = h->target;
    /* Peers with subscribers for it first: the local fan-out below moves
     * BODY into the shared publication. */
    ab_link_msg_publish(b, p, h, out.sender, body); /* peers with subscribers for it */
    ab_pub_t *pub = NULL;
    uint64_t seq = ++m->pub_seq;
    size_t matched = 0;
    ab_tnode_t *node = m->root;
    char *save = NULL, *next = NULL;
    for (char *l = strtok_r(topic, ".", &save); l && node; l = next) {
        next = strtok_r(NULL, ".", &save);
        node = node->children ? zhashx_lookup(node->children, l) : NULL;
        if (!node)
            break;
        size_t n = next ? node->n_prefix : node->n_exact;
        if (n && !pub && !(pub = s_pub_new(&out, body, seq, ab_payload_size(h, size))))
            return; /* (shared by every subscriber) */
        matched += next ? s_push_all(b, node->prefix, node->n_prefix, pub)
                        : s_push_all(b, node->exact, node->n_exact, pub);
    }
    if (pub)
        s_pub_release(pub);
    if (!matched)
        m->c.no_subscribers++;
    /* A long turn (many messages waiting) must not hold publications past
     * the batching age limit: checked every 16 publications. */
    if (!ab_list_empty(&m->fan.turn) && (++m->fan.pubs & 15) == 0 &&
        ab_now_us() - m->fan.turn_us >= (uint64_t)b->cfg->batch_max_age_us)
        ab_pubsub_turn_end(b);
}

/* How many of S's oldest publications go in one BATCH (1: send it alone). */
static size_t s_batch_span(const ab_broker_t *b, const ab_subr_t *s)
{
    size_t max = s_fan_max_count(b), bytes = s_fan_max_bytes(b, s), n = 0, sum = 4;
    if (max > AB_BATCH_MAX_COUNT)
        max = AB_BATCH_MAX_COUNT;
    while (n < s->qlen && n < max) {
        const ab_pub_t *e = s->q[(s->qhead + n) % s->qcap].pub;
        size_t hl = zmq_msg_size((zmq_msg_t *)&e->hdr);
        sum += ab_batch_entry_size(hl, e->size - hl);
        if (n && sum > bytes)
            break;
        n++;
    }
    return n ? n : 1;
}

/* 1 when the last body built carries exactly S's N oldest publications. */
static int s_fan_match(const ab_fanout_t *f, const ab_subr_t *s, size_t n)
{
    if (!f->ready || f->n != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (f->seqs[i] != s->q[(s->qhead + i) % s->qcap].pub->seq)
            return 0;
    return 1;
}

/* Encodes S's N oldest publications into F's body. 0 or -1 (memory). */
static int s_fan_build(ab_fanout_t *f, const ab_subr_t *s, size_t n)
{
    if (!f->ready) {
        ab_header_t h = ab_header_init(AB_KIND_BATCH);
        if (ab_header_msg(&h, &f->hdr) != 0)
            return -1;
        zmq_msg_init(&f->body);
        f->ready = 1;
    }
    if (n > f->cap) {
        uint64_t *q = realloc(f->seqs, n * sizeof *q);
        if (!q)
            return -1;
        f->seqs = q;
        f->cap = n;
    }
    f->n = 0; /* no match until rebuilt */
    ab_batch_clear(&f->scratch);
    for (size_t i = 0; i < n; i++) {
        ab_pub_t *e = s->q[(s->qhead + i) % s->qcap].pub;
        if (ab_batch_add(&f->scratch, zmq_msg_data(&e->hdr), zmq_msg_size(&e->hdr),
                         zmq_msg_data(&e->body), zmq_msg_size(&e->body), e->has_body) != AB_OK)
            return -1;
        f->seqs[i] = e->seq;
    }
    size_t len;
    const uint8_t *body = ab_batch_body(&f->scratch, &len);
    zmq_msg_close(&f->body);
    if (zmq_msg_init_size(&f->body, len) != 0) {
        zmq_msg_init(&f->body);
        return -1;
    }
    memcpy(zmq_msg_data(&f->body), body, len);
    f->n = n;
    return 0;
}

/* Sends S's N oldest publications as one BATCH. 0: sent (popped); -1:
 * refused (errno EAGAIN/EHOSTUNREACH, nothing popped); -2: not encoded. */
static int s_send_batch(ab_broker_t *b, ab_subr_t *s, size_t n)
{
    ab_fanout_t *f = &b->msgs->fan;
    if (!s_fan_match(f, s, n) && s_fan_build(f, s, n) != 0)
        return -2;
    zmq_msg_t hc, bc;
    zmq_msg_init(&hc);
    zmq_msg_init(&bc);
    zmq_msg_copy(&hc, &f->hdr);
    zmq_msg_copy(&bc, &f->body);
    int rc = ab_send_try(b, &s->peer->rid, &hc, &bc);
    zmq_msg_close(&hc);
    zmq_msg_close(&bc);
    if (rc != 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        s_q_pop(s);
    b->c.batches_out++;
    b->c.batched_msgs_out += n;
    return 0;
}

size_t ab_pubsub_flush(ab_broker_t *b, ab_subr_t *s, int *done)
{
    size_t sent = 0;
    *done = 0;
    if (s->gap) {
        ab_header_t h = ab_header_init(AB_KIND_PUBLISH);
        h.flags = AB_FLAG_GAP;
        h.credit = s->gap > UINT32_MAX ? UINT32_MAX : (uint32_t)s->gap;
        zmq_msg_t hdr;
        if (ab_header_msg(&h, &hdr) != 0)
            return 0;
        int rc = ab_send_try(b, &s->peer->rid, &hdr, NULL);
        zmq_msg_close(&hdr);
        if (rc != 0)
            return 0;
        s->gap -= h.credit;
        sent++;
        if (s->gap)
            return sent;
    }
    int batches = s_batches(b, s);
    while (s->qlen) {
        size_t n = batches && s->qlen > 1 ? s_batch_span(b, s) : 1;
        int rc = n > 1 ? s_send_batch(b, s, n) : -2;
        if (rc == -2) { /* alone, or the batch could not be encoded */
            n = 1;
            rc = s_send_one(b, s, s->q[s->qhead].pub);
            if (rc == 0)
                s_q_pop(s);
        }
        if (rc != 0)
            return sent;
        sent += n;
    }
    *done = 1;
    return sent;
}

void ab_pubsub_peer_gone(ab_broker_t *b, ab_peer_t *p)
{
    ab_subr_t *s = p->subr;
    if (!s)
        return;
    while (s->npats)
        s_unsubscribe_at(b, s, s->npats - 1);
    ab_list_remove(&s->turn_link);
    while (s->qlen)
        s_q_pop(s);
    free(s->q);
    free(s->pats);
    free(s);
    p->subr = NULL;
}

void ab_pubsub_fini(ab_broker_t *b)
{
    ab_fanout_t *f = &b->msgs->fan;
    if (f->ready) {
        zmq_msg_close(&f->hdr);
        zmq_msg_close(&f->body);
        f->ready = 0;
    }
    free(f->seqs);
    f->seqs = NULL;
    f->n = f->cap = 0;
    ab_batch_fini(&f->scratch);
    if (b->msgs->root)
        s_node_free(b->msgs->root);
    b->msgs->root = NULL;
}

/* --- audit (audit.h) ---------------------------------------------------------- */
/* 1 when S is in LIST (N entries). */
static int s_listed(ab_subr_t *const *list, size_t n, const ab_subr_t *s)
{
    for (size_t i = 0; i < n; i++)
        if (list[i] == s)
            return 1;
    return 0;
}

int ab_pubsub_audit(ab_broker_t *b, char *why, size_t cap)
{
    ab_msgs_t *m = b->msgs;
    ab_idmap_t queued; /* (uintptr_t)publication -> times queued */
    if (ab_idmap_init(&queued, 64) != 0)
        return 0;
    uint32_t subs = 0;
    size_t backlog = 0;
    int rc = 0;
    for (ab_peer_t *p = zhashx_first(b->peers); p && rc == 0; p = zhashx_next(b->peers)) {
        ab_subr_t *s = p->subr;
        if (!s)
            continue;
        if (s->peer != p || s->qlen > s->qcap || (s->qcap && s->qhead >= s->qcap)) {
            rc = ab_audit_bad(why, cap,
                              "subscriber %s: its record is not its own (%zu queued "
                              "in %zu, head %zu)",
                              p->key, s->qlen, s->qcap, s->qhead);
            break;
        }
        subs += s->npats > 0;
        backlog += s->backlog != 0;
        for (size_t i = 0; i < s->npats && rc == 0; i++) {
            const ab_subpat_t *pt = &s->pats[i];
            if (!(pt->prefix ? s_listed(pt->node->prefix, pt->node->n_prefix, s)
                             : s_listed(pt->node->exact, pt->node->n_exact, s)))
                rc = ab_audit_bad(why, cap, "subscriber %s: pattern '%s' is not in the topic tree",
                                  p->key, pt->pattern);
        }
        size_t bytes = 0;
        for (size_t i = 0; i < s->qlen && rc == 0; i++) {
            const ab_pub_t *pub = s->q[(s->qhead + i) % s->qcap].pub;
            uint64_t key = (uint64_t)(uintptr_t)pub;
            bytes += pub->size;
            uintptr_t k = (uintptr_t)ab_idmap_get(&queued, key);
            if (ab_idmap_put(&queued, key, (void *)(k + 1)) != 0) {
                ab_idmap_fini(&queued);
                return 0; /* out of memory: nothing judged */
            }
        }
        if (rc == 0 && bytes != s->qbytes)
            rc = ab_audit_bad(why, cap,
                              "subscriber %s counts %zu bytes queued; its %zu "
                              "publications are %zu",
                              p->key, s->qbytes, s->qlen, bytes);
    }
    if (rc == 0 && subs != m->subscribers)
        rc = ab_audit_bad(why, cap, "%u subscribers counted, %u have a subscription",
                          m->subscribers, subs);
    if (rc == 0 && backlog != m->n_blog_subs)
        rc = ab_audit_bad(why, cap, "%zu subscribers are on the flush list, %zu marked so",
                          m->n_blog_subs, backlog);
    for (size_t i = 0; rc == 0 && i < m->n_blog_subs; i++)
        if (!m->blog_subs[i]->peer || m->blog_subs[i]->peer->subr != m->blog_subs[i])
            rc = ab_audit_bad(why, cap, "the flush list names a subscriber no connection has");
    /* Each publication holds at least a reference per queue slot naming it
     * (fewer: a queue would read a freed one). */
    for (size_t i = 0; rc == 0 && i < queued.cap; i++) {
        if (!queued.keys[i])
            continue;
        const ab_pub_t *pub = (const ab_pub_t *)(uintptr_t)queued.keys[i];
        uintptr_t n = (uintptr_t)queued.vals[i];
        if (pub->refs < n)
            rc = ab_audit_bad(why, cap,
                              "a publication is queued %zu times and holds %u "
                              "references",
                              (size_t)n, pub->refs);
    }
    ab_idmap_fini(&queued);
    return rc;
}
