/*
 * mailbox.c - agent names and direct messages (SEND).
 *
 * A name is bound to at most one live connection. A SEND to a bound name
 * whose mailbox is empty goes out at once; otherwise (offline, or its pipe
 * full) it joins the name's mailbox, which keeps order and is bounded by
 * count, bytes and a TTL, and by a total over all mailboxes. A full mailbox
 * answers ERROR(BUSY) to the sender: nothing is dropped silently. The
 * mailbox is delivered, oldest first, as soon as the name is bound again.
 *
 * Receipts (FLAG_RECEIPT) and answers (correlation_id set) are SENDs like
 * any other, addressed to the original sender's name: they wait for it too.
 * An unnamed peer is addressed "~" + hex routing id and has no mailbox.
 */
#define AB_LOG_SUBSYS "messaging" /* log.h: the subsystem in log lines */
#include "msgs.h"
#include "link.h"
#include "router.h"
#include "agentbus.h"
#include "topic.h"
#include "audit.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct ab_mail {
    ab_list_t link; /* in its agent's mailbox */
    uint64_t id, corr;
    uint32_t flags;
    int64_t expires_ms;
    zmq_msg_t body;
    int has_body;
    size_t size;   /* payload bytes */
    uint64_t psize; /* the payload as its receiver's max payload judges it (ab_payload_size) */
    size_t charge; /* bytes counted against mailbox-total-bytes */
    char sender[]; /* NUL-terminated */
};

#define AB_SEND_FLAGS (AB_FLAG_WANT_RECEIPT | AB_FLAG_RECEIPT)

static void s_mail_free(ab_mail_t *e)
{
    zmq_msg_close(&e->body);
    free(e);
}

void ab_agent_free(void **item)
{
    ab_agent_t *a = *item;
    if (!a)
        return;
    ab_defer_cancel(&a->later);
    ab_list_t *l, *tmp;
    AB_LIST_FOREACH_SAFE(l, tmp, &a->mail)
        s_mail_free(ab_list_data(l, ab_mail_t, link));
    free(a);
    *item = NULL;
}

/* Bytes a name's record counts against mailbox-total-bytes: the record,
 * its name and about what the hash table spends on an item. */
#define AB_AGENT_OVERHEAD 64
static size_t s_agent_charge(const char *name)
{
    return sizeof(ab_agent_t) + strlen(name) + 1 + AB_AGENT_OVERHEAD;
}

/* Forgets offline agent A with an empty mailbox. It leaves every list
 * first: nothing may point at a freed record. */
static void s_agent_drop(ab_broker_t *b, ab_agent_t *a)
{
    ab_msgs_unbacklog_agent(b, a);
    b->msgs->total_bytes -= s_agent_charge(a->name);
    zhashx_delete(b->msgs->agents, a->name);
}

/* Sends a SEND to RID. BODY (may be NULL) is consumed only on success. */
static int s_deliver(ab_broker_t *b, const ab_rid_t *rid, const char *target, const char *sender,
                     uint64_t id, uint64_t corr, uint32_t flags, zmq_msg_t *body)
{
    ab_header_t h = ab_header_init(AB_KIND_SEND);
    h.id = id;
    h.correlation_id = corr;
    h.sender = ab_view_of(sender);
    h.target = ab_view_of(target);
    h.flags = flags & AB_SEND_FLAGS;
    zmq_msg_t hdr;
    if (ab_header_msg(&h, &hdr) != 0)
        return -1;
    int rc = ab_send_try(b, rid, &hdr, body);
    zmq_msg_close(&hdr);
    return rc;
}

/* Answers a SEND that asked for confirmation (credit = 1). */
static void s_accepted(ab_broker_t *b, ab_peer_t *p, const ab_header_t *h, const char *what)
{
    if (h->credit != 1 || !h->id)
        return;
    ab_header_t r = ab_header_init(AB_KIND_REPLY);
    r.correlation_id = h->id;
    zmq_msg_t m;
    if (zmq_msg_init_size(&m, strlen(what)) != 0)
        return;
    memcpy(zmq_msg_data(&m), what, strlen(what));
    ab_send(b, &p->rid, &r, &m);
    zmq_msg_close(&m);
}

/* 1 when the SEND H (+ BODY) from P is over the max payload of TO, the
 * connection NAME is bound to (Hello.max_payload): delivered, it would cut
 * TO's connection (past its ZMQ_MAXMSGSIZE) or be dropped unseen by its
 * library while its sender was told "delivered". Refused TOO_LARGE
 * instead (counted: msgs_too_large, msgs_refused). */
static int s_over_receiver(ab_broker_t *b, ab_peer_t *p, const ab_header_t *h,
                           const zmq_msg_t *body, const char *name, const ab_peer_t *to)
{
    uint64_t size = ab_payload_size(h, body ? zmq_msg_size((zmq_msg_t *)body) : 0);
    size_t max = ab_peer_max_payload(b, to);
    if (size <= max)
        return 0;
    b->msgs->c.too_large++;
    ab_msgs_refuse(b, &p->rid, h->id, AB_ERR_TOO_LARGE,
                   "message of %llu bytes exceeds the max payload of agent '%s' (%zu bytes, "
                   "its ab_options_set_max_payload)", (unsigned long long)size, name, max);
    return 1;
}

/* A SEND to "~key": straight to that connection, no mailbox. */
static void s_send_unnamed(ab_broker_t *b, ab_peer_t *p, const ab_header_t *h, zmq_msg_t *body,
                           const char *name, const char *sender)
{
    ab_peer_t *to = ab_peer_by_key(b, name + 1);
    if (!to) {
        ab_msgs_refuse(b, &p->rid, h->id, AB_ERR_NO_AGENT,
                       "agent '%s' is not connected (unnamed agents have no mailbox)", name);
        return;
    }
    if (s_over_receiver(b, p, h, body, name, to))
        return;
    if (s_deliver(b, &to->rid, name, sender, h->id, h->correlation_id, h->flags, body) != 0) {
        ab_msgs_refuse(b, &p->rid, h->id, AB_ERR_BUSY,
                       "agent '%s' is not taking messages (its pipe is full; unnamed agents "
                       "have no mailbox)", name);
        return;
    }
    b->msgs->c.delivered++;
    if (h->flags & AB_FLAG_RECEIPT)
        b->msgs->c.receipts++;
    else
        b->msgs->c.sent++;
    s_accepted(b, p, h, "delivered");
}

static ab_agent_t *s_agent_new(ab_broker_t *b, const char *name)
{
    size_t len = strlen(name);
    ab_agent_t *a = calloc(1, sizeof *a + len + 1);
    if (!a)
        return NULL;
    memcpy(a->name, name, len + 1);
    a->serial = ++b->msgs->serials;
    if (zhashx_insert(b->msgs->agents, a->name, a) != 0) {
        free(a);
        return NULL;
    }
    b->msgs->total_bytes += s_agent_charge(name);
    return a;
}

/* Appends a SEND to the mailbox of NAME (record A, NULL if none yet), or
 * refuses it (BUSY) when a bound is reached. BODY is moved, not copied. */
static void s_mailbox_put(ab_broker_t *b, ab_peer_t *p, ab_agent_t *a, const char *name,
                          const char *sender, const ab_header_t *h, zmq_msg_t *body, int64_t now)
{
    ab_msgs_t *m = b->msgs;
    ab_broker_config_t *cfg = b->cfg;
    size_t size = body ? zmq_msg_size(body) : 0;
    int receipt = (h->flags & AB_FLAG_RECEIPT) != 0;
    size_t slen = strlen(sender) + 1;
    size_t charge = sizeof(ab_mail_t) + slen + size + (a ? 0 : s_agent_charge(name));
    size_t offline = zhashx_size(m->agents) - m->bound;
    if (!a && offline >= (size_t)cfg->mailbox_max_names) {
        ab_msgs_refuse(b, &p->rid, h->id, AB_ERR_BUSY,
                       "too many offline names hold a mailbox (%zu, mailbox-max-names)", offline);
        return;
    }
    if (a && a->depth >= (uint32_t)cfg->mailbox_max_msgs) {
        ab_msgs_refuse(b, &p->rid, h->id, AB_ERR_BUSY,
                       "mailbox of '%s' is full (%u messages, mailbox-max-msgs)", name, a->depth);
        return;
    }
    if ((a ? a->bytes : 0) + size > cfg->mailbox_max_bytes) {
        ab_msgs_refuse(b, &p->rid, h->id, AB_ERR_BUSY,
                       "mailbox of '%s' is full (%zu + %zu bytes > mailbox-max-bytes %zu)", name,
                       a ? a->bytes : 0, size, cfg->mailbox_max_bytes);
        return;
    }
    if (m->total_bytes + m->handed_bytes + charge > cfg->mailbox_total_bytes) {
        ab_msgs_refuse(b, &p->rid, h->id, AB_ERR_BUSY,
                       "broker mailboxes are full (mailbox-total-bytes %zu)",
                       cfg->mailbox_total_bytes);
        return;
    }
    ab_mail_t *e = calloc(1, sizeof *e + slen);
    if (!e || (!a && !(a = s_agent_new(b, name)))) {
        free(e);
        ab_msgs_refuse(b, &p->rid, h->id, AB_ERR_INTERNAL, "out of memory");
        return;
    }
    e->id = h->id;
    e->corr = h->correlation_id;
    e->flags = h->flags & AB_SEND_FLAGS;
    int64_t ttl = cfg->mailbox_ttl_ms;
    if (h->timeout_ms && h->timeout_ms < ttl)
        ttl = h->timeout_ms; /* the sender's own limit, when shorter */
    e->expires_ms = now + ttl;
    zmq_msg_init(&e->body);
    if (body) {
        zmq_msg_move(&e->body, body); /* no copy: the received frame is kept */
        e->has_body = 1;
    }
    e->size = size;
    e->psize = ab_payload_size(h, size);
    e->charge = sizeof(ab_mail_t) + slen + size;
    memcpy(e->sender, sender, slen);
    ab_list_insert_tail(&a->mail, &e->link);
    a->depth++;
    a->bytes += size;
    m->total_bytes += e->charge;
    m->mailbox_msgs++;
    m->c.queued++;
    if (receipt)
        m->c.receipts++;
    else
        m->c.sent++;
    if (a->peer)
        ab_msgs_backlog_agent(b, a);
    s_accepted(b, p, h, "queued");
}

void ab_mailbox_on_send(ab_broker_t *b, ab_peer_t *p, const ab_header_t *h, zmq_msg_t *body,
                        int64_t now)
{
    ab_msgs_t *m = b->msgs;
    ab_broker_config_t *cfg = b->cfg;
    char sbuf[2 * AB_RID_MAX + 2], name[AB_NAME_MAX];
    const char *sender = ab_link_msg_sender(p, h, sbuf, sizeof sbuf); /* from a peer broker */
    if (!sender)
        sender = ab_msgs_sender_name(p, sbuf, sizeof sbuf);
    size_t size = body ? zmq_msg_size(body) : 0;
    if (size > cfg->message_max_bytes) {
        ab_msgs_refuse(b, &p->rid, h->id, AB_ERR_TOO_LARGE,
                       "message of %zu bytes exceeds message-max-bytes (%zu)", size,
                       cfg->message_max_bytes);
        return;
    }
    ab_view_copy(h->target, name, sizeof name);
    /* Not bound here but on a peer broker: over the link (link_msg.c). */
    ab_agent_t *here = name[0] != '~' ? zhashx_lookup(m->agents, name) : NULL;
    if (h->target.len < AB_NAME_MAX &&
        ab_link_msg_send(b, p, h, body, name, sender, here && here->peer))
        return;
    if (h->target.len > 1 && h->target.len < AB_NAME_MAX && name[0] == '~' &&
        strlen(name) == h->target.len) {
        s_send_unnamed(b, p, h, body, name, sender);
        return;
    }
    if (ab_agent_name_check_n(h->target.ptr, h->target.len) != AB_OK) {
        ab_msgs_refuse(b, &p->rid, h->id, AB_ERR_BAD_NAME,
                       "malformed agent name '%.64s': 1..255 printable ASCII characters, no "
                       "spaces, not starting with '~'", name);
        return;
    }
    ab_agent_t *a = zhashx_lookup(m->agents, name);
    int receipt = (h->flags & AB_FLAG_RECEIPT) != 0;
    if (a && a->peer && s_over_receiver(b, p, h, body, name, a->peer))
        return; /* (an offline name's limit is judged when it is delivered) */
    if (a && a->peer && a->depth == 0 &&
        s_deliver(b, &a->peer->rid, name, sender, h->id, h->correlation_id, h->flags, body) ==
            0) {
        m->c.delivered++;
        if (receipt)
            m->c.receipts++;
        else
            m->c.sent++;
        s_accepted(b, p, h, "delivered");
        return;
    }
    /* Offline, or its pipe is full, or older messages wait: the mailbox. */
    s_mailbox_put(b, p, a, name, sender, h, body, now);
}

/* Removes E from A's mailbox and frees it. */
static void s_mail_remove(ab_broker_t *b, ab_agent_t *a, ab_mail_t *e)
{
    ab_list_remove(&e->link);
    a->depth--;
    a->bytes -= e->size;
    b->msgs->total_bytes -= e->charge;
    b->msgs->mailbox_msgs--;
    s_mail_free(e);
}

/* The live connection SENDER (a bound name, or "~key") is, or NULL. */
static ab_peer_t *s_sender_peer(ab_broker_t *b, const char *sender)
{
    if (sender[0] == '~')
        return ab_peer_by_key(b, sender + 1);
    ab_agent_t *a = zhashx_lookup(b->msgs->agents, sender);
    return a ? a->peer : NULL;
}

/* E waited in A's mailbox while A was offline, and A came back with a max
 * payload under it: dropped, counted as a refusal (msgs_too_large), and
 * its sender, when connected here, told (ERROR TOO_LARGE for its id: an
 * AB_MSG_ERROR after the "queued" it had). */
static void s_mail_over(ab_broker_t *b, ab_agent_t *a, ab_mail_t *e)
{
    ab_msgs_t *m = b->msgs;
    ab_peer_t *from = s_sender_peer(b, e->sender);
    size_t max = ab_peer_max_payload(b, a->peer);
    m->c.too_large++;
    if (from && !(e->flags & AB_FLAG_RECEIPT))
        ab_msgs_refuse(b, &from->rid, e->id, AB_ERR_TOO_LARGE,
                       "message of %llu bytes to agent '%s' dropped from its mailbox: it "
                       "reconnected with a max payload of %zu bytes",
                       (unsigned long long)e->psize, a->name, max);
    else {
        m->c.refused++;
        AB_COUNT_ERROR(b, AB_ERR_TOO_LARGE);
    }
    s_mail_remove(b, a, e);
}

size_t ab_mailbox_flush(ab_broker_t *b, ab_agent_t *a, int64_t now, int *done)
{
    size_t sent = 0;
    *done = 0;
    ab_list_t *l;
    while (a->peer && (l = ab_list_first(&a->mail))) {
        ab_mail_t *e = ab_list_data(l, ab_mail_t, link);
        if (e->expires_ms <= now) {
            b->msgs->c.expired++;
            s_mail_remove(b, a, e);
            continue;
        }
        if (e->psize > ab_peer_max_payload(b, a->peer)) {
            s_mail_over(b, a, e);
            continue;
        }
        if (s_deliver(b, &a->peer->rid, a->name, e->sender, e->id, e->corr, e->flags,
                      e->has_body ? &e->body : NULL) != 0)
            return sent; /* pipe full: the backlog retries */
        b->msgs->c.delivered++;
        s_mail_remove(b, a, e);
        sent++;
    }
    *done = 1;
    return sent;
}

/* Removes A's expired messages; 1 if A is now an offline empty record. */
static int s_expire_one(ab_broker_t *b, ab_agent_t *a, int64_t now)
{
    ab_list_t *l, *tmp;
    AB_LIST_FOREACH_SAFE(l, tmp, &a->mail) {
        ab_mail_t *e = ab_list_data(l, ab_mail_t, link);
        if (e->expires_ms <= now) {
            b->msgs->c.expired++;
            s_mail_remove(b, a, e);
        }
    }
    return !a->peer && ab_list_empty(&a->mail);
}

static void s_drop_empty(void *ctx, ab_defer_node_t *n)
{
    s_agent_drop(ctx, ab_defer_data(n, ab_agent_t, later));
}

void ab_mailbox_expire(ab_broker_t *b, int64_t now)
{
    ab_msgs_t *m = b->msgs;
    if (!m->mailbox_msgs)
        return; /* offline records always hold a message: none can be empty */
    /* Every emptied offline record is freed in this pass: queued during the
     * walk (a zhashx may not change while iterated), dropped after it. */
    ab_defer_t empty;
    ab_defer_init(&empty);
    for (ab_agent_t *a = zhashx_first(m->agents); a; a = zhashx_next(m->agents))
        if (s_expire_one(b, a, now))
            ab_defer_add(&empty, &a->later, s_drop_empty);
    ab_defer_run(&empty, b);
}

size_t ab_mailbox_hand_over(ab_broker_t *b, const char *name, ab_mail_fn *fn, void *arg,
                            int64_t now)
{
    ab_agent_t *a = zhashx_lookup(b->msgs->agents, name);
    if (!a || a->peer)
        return 0;
    size_t n = 0;
    ab_list_t *l;
    while ((l = ab_list_first(&a->mail))) {
        ab_mail_t *e = ab_list_data(l, ab_mail_t, link);
        if (e->expires_ms <= now) {
            b->msgs->c.expired++;
        } else if (fn(b, arg, e->sender, e->id, e->corr, e->flags, e->expires_ms - now,
                      e->has_body ? &e->body : NULL, e->charge) == 0) {
            b->msgs->handed_bytes += e->charge; /* until ab_mailbox_handed_done */
            n++;
        } else {
            break;
        }
        s_mail_remove(b, a, e);
    }
    if (ab_list_empty(&a->mail))
        s_agent_drop(b, a);
    return n;
}

void ab_mailbox_handed_done(ab_broker_t *b, size_t charge)
{
    ab_msgs_t *m = b->msgs;
    if (m)
        m->handed_bytes -= charge < m->handed_bytes ? charge : m->handed_bytes;
}

int ab_mailbox_put_back(ab_broker_t *b, const char *name, const char *sender, uint64_t id,
                        uint64_t corr, uint32_t flags, int64_t expires_ms, zmq_msg_t *body,
                        int64_t now)
{
    ab_msgs_t *m = b->msgs;
    if (expires_ms <= now) {
        m->c.expired++;
        return 0;
    }
    ab_agent_t *a = zhashx_lookup(m->agents, name);
    size_t slen = strlen(sender) + 1, size = body ? zmq_msg_size(body) : 0;
    ab_mail_t *e = calloc(1, sizeof *e + slen);
    if (!e || (!a && !(a = s_agent_new(b, name)))) {
        free(e);
        return -1;
    }
    /* No bound is checked: the message was in this mailbox a moment ago,
     * and its charge still counts (handed_bytes) until the caller gives it
     * back (ab_mailbox_handed_done). */
    e->id = id;
    e->corr = corr;
    e->flags = flags & AB_SEND_FLAGS;
    e->expires_ms = expires_ms;
    zmq_msg_init(&e->body);
    if (body) {
        zmq_msg_move(&e->body, body);
        e->has_body = 1;
    }
    e->size = size;
    e->psize = size;
    e->charge = sizeof(ab_mail_t) + slen + size;
    memcpy(e->sender, sender, slen);
    ab_list_insert_head(&a->mail, &e->link);
    a->depth++;
    a->bytes += size;
    m->total_bytes += e->charge;
    m->mailbox_msgs++;
    if (a->peer)
        ab_msgs_backlog_agent(b, a); /* bound here meanwhile: delivered from the mailbox */
    return 0;
}

void ab_mailbox_unbind(ab_broker_t *b, ab_peer_t *p)
{
    ab_agent_t *a = p->agent;
    if (!a)
        return;
    ab_msgs_unbacklog_agent(b, a); /* the flush list holds bound names only */
    p->agent = NULL;
    a->peer = NULL;
    a->instance = 0;
    b->msgs->bound--;
    if (ab_list_empty(&a->mail))
        s_agent_drop(b, a);
}

void ab_mailbox_on_hello(ab_broker_t *b, ab_peer_t *p, const char *name, int takeover,
                         uint64_t instance, uint64_t hello_id, int64_t now)
{
    ab_msgs_t *m = b->msgs;
    if (ab_agent_name_check(name) != AB_OK) {
        ab_msgs_refuse(b, &p->rid, hello_id, AB_ERR_BAD_NAME,
                       "malformed agent name '%.64s': 1..255 printable ASCII characters, no "
                       "spaces, not starting with '~'", name);
        return;
    }
    ab_agent_t *a = zhashx_lookup(m->agents, name);
    if (a && a->peer == p)
        return; /* the same connection saying HELLO again */
    if (a && a->peer) {
        /* The same library handle reconnecting (the broker has not noticed
         * its old connection die yet) gets its name back without asking:
         * its Hello.instance is a random 64-bit value only it knows (the
         * routing id proves nothing: a peer may choose it). Another instance
         * takes a live name only where the operator allows takeover. */
        int same = instance && instance == a->instance;
        if (!same && !(takeover && b->cfg->name_takeover)) {
            ab_msgs_refuse(b, &p->rid, hello_id, AB_ERR_NAME_TAKEN,
                           "agent name '%s' is held by a live connection (connected %lld ms "
                           "ago)%s", name, (long long)(now - a->peer->connected_ms),
                           takeover ? "; this broker does not allow takeover (name-takeover)"
                                    : "");
            return;
        }
        ab_peer_t *old = a->peer;
        if (!same)
            ab_send_error(b, &old->rid, 0, AB_ERR_NAME_TAKEN,
                          "this connection's agent name was taken over by a newer one");
        AB_INFO("agent '%s' %s by %s (was %s)", name, same ? "reclaimed" : "taken over", p->key,
                old->key);
        ab_msgs_unbacklog_agent(b, a); /* the flush list holds bound names only */
        old->agent = NULL;
        a->peer = NULL;
        m->bound--;
    }
    if (p->agent) /* renamed: the old name goes offline */
        ab_mailbox_unbind(b, p);
    if (!a && !(a = s_agent_new(b, name))) {
        ab_send_error(b, &p->rid, hello_id, AB_ERR_INTERNAL, "out of memory");
        return;
    }
    a->peer = p;
    a->instance = instance;
    p->agent = a;
    m->bound++;
    AB_DEBUG("agent '%s' bound to %s (%u messages waiting)", name, p->key, a->depth);
    int done = 0;
    if (!ab_list_empty(&a->mail)) {
        ab_mailbox_flush(b, a, now, &done);
        if (!done)
            ab_msgs_backlog_agent(b, a);
    }
}

/* --- audit (audit.h) ---------------------------------------------------------- */
int ab_mailbox_audit(ab_broker_t *b, char *why, size_t cap)
{
    ab_msgs_t *m = b->msgs;
    if (!m->agents)
        return 0;
    size_t total = 0, msgs = 0, limit = (size_t)m->mailbox_msgs + 1, backlog = 0;
    uint32_t bound = 0;
    for (ab_agent_t *a = zhashx_first(m->agents); a; a = zhashx_next(m->agents)) {
        size_t n = 0, bytes = 0;
        ab_list_t *l, *tmp;
        AB_LIST_FOREACH_SAFE(l, tmp, &a->mail) {
            const ab_mail_t *e = ab_list_data(l, ab_mail_t, link);
            if (++n > limit)
                return ab_audit_bad(why, cap, "agent '%s': its mailbox does not end", a->name);
            bytes += e->size;
            total += e->charge;
        }
        if (n != a->depth || bytes != a->bytes)
            return ab_audit_bad(why, cap,
                                "agent '%s' counts %u messages of %zu bytes; its mailbox holds "
                                "%zu of %zu",
                                a->name, a->depth, a->bytes, n, bytes);
        msgs += n;
        total += s_agent_charge(a->name);
        if (a->peer && a->peer->agent != a)
            return ab_audit_bad(why, cap, "agent '%s' is bound to a connection that names another",
                                a->name);
        if (!a->peer && !n)
            return ab_audit_bad(why, cap, "agent '%s' is offline with an empty mailbox, and kept",
                                a->name);
        bound += a->peer != NULL;
        if (a->backlog && !a->peer)
            return ab_audit_bad(why, cap, "agent '%s' is offline and on the flush list", a->name);
        backlog += a->backlog != 0;
    }
    if (msgs != m->mailbox_msgs || total != m->total_bytes || bound != m->bound)
        return ab_audit_bad(why, cap,
                            "the mailboxes count %u messages, %zu bytes charged, %u names bound; "
                            "they hold %zu, %zu, %u",
                            m->mailbox_msgs, m->total_bytes, m->bound, msgs, total, bound);
    if (backlog != m->n_blog_agents)
        return ab_audit_bad(why, cap, "%zu agents are on the flush list, %zu marked so",
                            m->n_blog_agents, backlog);
    for (size_t i = 0; i < m->n_blog_agents; i++)
        if (zhashx_lookup(m->agents, m->blog_agents[i]->name) != m->blog_agents[i])
            return ab_audit_bad(why, cap, "the flush list names an agent the broker does not list");
    for (ab_peer_t *p = zhashx_first(b->peers); p; p = zhashx_next(b->peers))
        if (p->agent &&
            (p->agent->peer != p || zhashx_lookup(m->agents, p->agent->name) != p->agent))
            return ab_audit_bad(why, cap, "a connection names agent '%s', which is not bound to it",
                                p->agent->name);
    return 0;
}

uint64_t ab_msgs_agent_serial(const ab_peer_t *p)
{
    return p->agent ? p->agent->serial : 0;
}
