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
 * Fan-out sends ZeroMQ references: the header is encoded once, and each
 * subscriber's copy of header and payload is a zmq_msg_copy (reference
 * counted; no payload bytes are copied; payloads up to 33 bytes live inside
 * the message struct itself).
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
#include "agentbus.h"
#include "topic.h"
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
    /* zmq_msg_t must not be copied bytewise: move each into its new slot. */
    for (size_t i = 0; i < s->qlen; i++) {
        ab_pubq_t *from = &s->q[(s->qhead + i) % s->qcap];
        zmq_msg_init(&q[i].hdr);
        zmq_msg_init(&q[i].body);
        zmq_msg_move(&q[i].hdr, &from->hdr);
        zmq_msg_move(&q[i].body, &from->body);
        q[i].has_body = from->has_body;
        zmq_msg_close(&from->hdr);
        zmq_msg_close(&from->body);
    }
    free(s->q);
    s->q = q;
    s->qcap = cap;
    s->qhead = 0;
}

static void s_q_pop(ab_subr_t *s)
{
    ab_pubq_t *e = &s->q[s->qhead];
    size_t sz = zmq_msg_size(&e->hdr) + (e->has_body ? zmq_msg_size(&e->body) : 0);
    s->qbytes -= sz < s->qbytes ? sz : s->qbytes;
    zmq_msg_close(&e->hdr);
    zmq_msg_close(&e->body);
    s->qhead = (s->qhead + 1) % s->qcap;
    s->qlen--;
}

/* Gives subscriber S its copy of HDR (+ BODY). */
static void s_push(ab_broker_t *b, ab_subr_t *s, zmq_msg_t *hdr, zmq_msg_t *body)
{
    ab_msgs_t *m = b->msgs;
    zmq_msg_t hc, bc;
    zmq_msg_init(&hc);
    zmq_msg_init(&bc);
    zmq_msg_copy(&hc, hdr);
    if (body)
        zmq_msg_copy(&bc, body);
    m->c.fanout++;
    if (s->qlen == 0 && s->gap == 0 &&
        ab_send_try(b, &s->peer->rid, &hc, body ? &bc : NULL) == 0) {
        zmq_msg_close(&hc);
        zmq_msg_close(&bc);
        return;
    }
    size_t max = (size_t)b->cfg->sub_queue_max, bound = b->cfg->peer_out_max_bytes;
    size_t sz = zmq_msg_size(hdr) + (body ? zmq_msg_size(body) : 0);
    /* drop-oldest: the newest news is worth more */
    while (s->qlen && (s->qlen >= max || (bound && s->qbytes + sz > bound))) {
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
        zmq_msg_close(&hc);
        zmq_msg_close(&bc);
    } else {
        ab_pubq_t *e = &s->q[(s->qhead + s->qlen) % s->qcap];
        zmq_msg_init(&e->hdr);
        zmq_msg_init(&e->body);
        zmq_msg_move(&e->hdr, &hc);
        zmq_msg_move(&e->body, &bc);
        e->has_body = body != NULL;
        s->qlen++;
        s->qbytes += sz;
        zmq_msg_close(&hc);
        zmq_msg_close(&bc);
    }
    ab_msgs_backlog_sub(b, s);
}

static size_t s_push_all(ab_broker_t *b, ab_subr_t **list, size_t n, uint64_t seq,
                         zmq_msg_t *hdr, zmq_msg_t *body)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        ab_subr_t *s = list[i];
        if (s->mark == seq) /* matched by another of its patterns */
            continue;
        s->mark = seq;
        s_push(b, s, hdr, body);
        k++;
    }
    return k;
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
    zmq_msg_t hdr;
    int have_hdr = 0;
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
        if (n && !have_hdr) { /* encoded once, shared by every subscriber */
            if (ab_header_msg(&out, &hdr) != 0)
                return;
            have_hdr = 1;
        }
        matched += next ? s_push_all(b, node->prefix, node->n_prefix, seq, &hdr, body)
                        : s_push_all(b, node->exact, node->n_exact, seq, &hdr, body);
    }
    if (have_hdr)
        zmq_msg_close(&hdr);
    if (!matched)
        m->c.no_subscribers++;
    ab_link_msg_publish(b, p, h, out.sender, body); /* peers with subscribers for it */
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
    while (s->qlen) {
        ab_pubq_t *e = &s->q[s->qhead];
        if (ab_send_try(b, &s->peer->rid, &e->hdr, e->has_body ? &e->body : NULL) != 0)
            return sent;
        s_q_pop(s);
        sent++;
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
    while (s->qlen)
        s_q_pop(s);
    free(s->q);
    free(s->pats);
    free(s);
    p->subr = NULL;
}

void ab_pubsub_fini(ab_broker_t *b)
{
    if (b->msgs->root)
        s_node_free(b->msgs->root);
    b->msgs->root = NULL;
}
