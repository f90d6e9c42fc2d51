/*
 * message.c - the agent side of direct messages and topics.
 *
 * Everything arrives through the handle's one socket and is handled inside
 * ab_client_poll, so requests, direct messages and topics share one event
 * loop and one file descriptor. A handle keeps its subscriptions and sends
 * them again after every (re)connect: a restarted broker learns them back
 * without the application doing anything.
 */
#include "internal.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

/* The receive queue's bounds: messages, and bytes (payloads with their
 * records), so that an application that does not read cannot be made to
 * hold 100,000 large messages; the newest message is always kept. */
#define AB_RECV_QUEUE_MAX 100000
#define AB_RECV_QUEUE_BYTES (64u << 20)
#define AB_CLIENT_SUBS_MAX 1024

/* A message kept in the receive queue: one allocation holding the struct,
 * its strings and its payload. `m` comes first: ab_message_destroy frees
 * the block through it. */
struct ab_rxmsg {
    ab_message_t m;
    ab_list_t link; /* in the handle's receive queue */
    size_t bytes;   /* of this record, all of it */
    char buf[];
};

void ab_cmsg_fini(ab_client_t *c)
{
    ab_cmsg_t *ms = &c->msg;
    ab_list_t *l;
    while ((l = ab_list_pop_head(&ms->rxq)))
        free(ab_list_data(l, ab_rxmsg_t, link));
    ms->qlen = ms->qbytes = 0;
    for (size_t i = 0; i < ms->nsubs; i++)
        free(ms->subs[i]);
    free(ms->subs);
    ms->subs = NULL;
    ms->nsubs = ms->cap_subs = 0;
}

void ab_cmsg_resubscribe(ab_client_t *c)
{
    ab_cmsg_t *ms = &c->msg;
    for (size_t i = 0; i < ms->nsubs; i++) {
        ab_header_t h = ab_header_init(AB_KIND_SUBSCRIBE);
        h.target = ab_view_of(ms->subs[i]);
        ab_conn_send(&c->conn, &h, NULL, 0); /* no id: the broker confirms nothing */
    }
}

/* Tells the sender of M that the application has it. */
static void s_receipt(ab_client_t *c, const ab_message_t *m)
{
    if (m->type != AB_MSG_DIRECT || !m->want_receipt)
        return;
    ab_header_t h = ab_header_init(AB_KIND_SEND);
    h.id = ab_conn_next_id(&c->conn);
    h.target = ab_view_of(m->sender);
    h.correlation_id = m->id;
    h.flags = AB_FLAG_RECEIPT;
    ab_conn_send(&c->conn, &h, NULL, 0);
}

static ab_rxmsg_t *s_copy(const ab_message_t *m)
{
    size_t ls = strlen(m->sender) + 1, lt = strlen(m->target) + 1,
           le = strlen(m->error_text) + 1;
    ab_rxmsg_t *r = malloc(sizeof *r + ls + lt + le + m->size);
    if (!r)
        return NULL;
    r->bytes = sizeof *r + ls + lt + le + m->size;
    r->m = *m;
    char *p = r->buf;
    r->m.sender = memcpy(p, m->sender, ls);
    r->m.target = memcpy(p += ls, m->target, lt);
    r->m.error_text = memcpy(p += lt, m->error_text, le);
    p += le;
    r->m.data = m->size ? memcpy(p, m->data, m->size) : NULL;
    return r;
}

/* Hands M to the handler, or queues a copy for ab_client_recv. */
static void s_deliver(ab_client_t *c, const ab_message_t *m)
{
    ab_cmsg_t *ms = &c->msg;
    if (ms->fn) {
        ms->fn(c, m, ms->arg);
        s_receipt(c, m);
        return;
    }
    ab_rxmsg_t *r = s_copy(m);
    if (!r) {
        ms->gap++;
        return;
    }
    /* Full: the oldest go, as the broker drops a slow subscriber's. */
    while (ms->qlen && (ms->qlen >= AB_RECV_QUEUE_MAX ||
                        ms->qbytes + r->bytes > AB_RECV_QUEUE_BYTES)) {
        ab_rxmsg_t *old = ab_list_data(ab_list_pop_head(&ms->rxq), ab_rxmsg_t, link);
        ms->qlen--;
        ms->qbytes -= old->bytes;
        ms->gap++;
        free(old);
    }
    ab_list_insert_tail(&ms->rxq, &r->link);
    ms->qlen++;
    ms->qbytes += r->bytes;
}

void ab_cmsg_on_message(ab_client_t *c, const ab_in_t *in)
{
    const ab_header_t *h = &in->h;
    char sender[2 * 255 + 2], target[256];
    ab_view_copy(h->sender, sender, sizeof sender);
    ab_view_copy(h->target, target, sizeof target);
    ab_message_t m = {0};
    m.sender = sender;
    m.target = target;
    m.error_text = "";
    m.id = h->id;
    if (in->has_body) { /* in->data: also right for an entry of a BATCH */
        m.data = in->data;
        m.size = in->size;
    }
    if (h->kind == AB_KIND_PUBLISH && (h->flags & AB_FLAG_GAP)) {
        m.type = AB_MSG_GAP;
        m.dropped = h->credit;
        m.data = NULL;
        m.size = 0;
    } else if (h->kind == AB_KIND_PUBLISH) {
        m.type = AB_MSG_TOPIC;
    } else if (h->flags & AB_FLAG_RECEIPT) {
        m.type = AB_MSG_RECEIPT;
        m.id = h->correlation_id;
    } else {
        m.type = AB_MSG_DIRECT;
        m.reply_to = h->correlation_id;
        m.want_receipt = (h->flags & AB_FLAG_WANT_RECEIPT) != 0;
    }
    s_deliver(c, &m);
}

void ab_cmsg_on_error(ab_client_t *c, const ab_in_t *in)
{
    const ab_header_t *h = &in->h;
    /* Only refusals of messages, topics and names concern the application
     * here. A late answer to a request that already ended (DEADLINE, ...)
     * is dropped as before, so it cannot pile up in the receive queue of an
     * application that never reads it. */
    uint32_t code = h->error_code;
    if (code != AB_ERR_BUSY && code != AB_ERR_NAME_TAKEN && code != AB_ERR_BAD_NAME &&
        code != AB_ERR_TOO_LARGE && code != AB_ERR_NO_AGENT && code != AB_ERR_DENIED)
        return;
    if (!h->correlation_id && code != AB_ERR_NAME_TAKEN)
        return;
    char text[AB_ERRTEXT_MAX];
    ab_view_copy(h->error_text, text, sizeof text);
    ab_message_t m = {0};
    m.type = AB_MSG_ERROR;
    m.sender = "";
    m.target = "";
    m.status = ab_status_from_wire(h->error_code);
    /* A refusal of our HELLO is one of our name (BAD_NAME, or DENIED with
     * --auth curve), as NAME_TAKEN is: id 0, as agentbus.h says, not the
     * HELLO's id, which the application never saw. */
    int of_name = m.status == AB_ENAMETAKEN || h->correlation_id == c->conn.hello_id;
    m.id = of_name ? 0 : h->correlation_id;
    m.error_text = text;
    ab_conn_fail(&c->conn, m.status, "%s", text);
    s_deliver(c, &m);
}

/* --- receiving -------------------------------------------------------------- */
int ab_client_on_message(ab_client_t *c, ab_message_fn *fn, void *arg)
{
    if (!c)
        return AB_EINVAL;
    c->msg.fn = fn;
    c->msg.arg = arg;
    return AB_OK;
}

static ab_message_t *s_pop(ab_client_t *c)
{
    ab_cmsg_t *ms = &c->msg;
    if (ms->gap) { /* the loss comes first, where it happened */
        ab_message_t g = {0};
        g.type = AB_MSG_GAP;
        g.sender = g.target = g.error_text = "";
        g.dropped = ms->gap;
        ab_rxmsg_t *r = s_copy(&g);
        if (r)
            ms->gap = 0;
        return r ? &r->m : NULL;
    }
    ab_list_t *l = ab_list_pop_head(&ms->rxq);
    if (!l)
        return NULL;
    ab_rxmsg_t *r = ab_list_data(l, ab_rxmsg_t, link);
    ms->qlen--;
    ms->qbytes -= r->bytes;
    s_receipt(c, &r->m);
    return &r->m;
}

/* A message goes to the application, which may answer it at once: with
 * no other message waiting the turn ends (the receipt just sent used its
 * direct send), so that answer does not wait in a batch for a later poll. */
static int s_handed(ab_client_t *c)
{
    ab_conn_turn_end_idle(&c->conn, !ab_list_empty(&c->msg.rxq));
    return AB_OK;
}

int ab_client_recv(ab_client_t *c, ab_message_t **msg, int timeout_ms)
{
    if (!c || !msg)
        return AB_EINVAL;
    *msg = NULL;
    if (c->msg.fn)
        return ab_conn_fail(&c->conn, AB_EINVAL, "a message handler is set");
    if (atomic_load(&c->conn.stop)) /* nothing handed out, waiting or not */
        return ab_conn_stopped(&c->conn);
    int64_t end = timeout_ms < 0 ? INT64_MAX : ab_now_ms() + timeout_ms;
    for (;;) {
        if ((*msg = s_pop(c)) != NULL)
            return s_handed(c);
        int64_t left = end - ab_now_ms();
        if (left <= 0 && timeout_ms >= 0) {
            int rc = ab_client_poll(c, 0); /* one look even with timeout 0 */
            if (rc < 0)
                return rc;
            if ((*msg = s_pop(c)) != NULL)
                return s_handed(c);
            return ab_conn_fail(&c->conn, AB_ETIMEOUT, "no message in time");
        }
        int rc = ab_client_poll(c, timeout_ms < 0 ? 1000 : (int)(left < 1000 ? left : 1000));
        if (rc < 0)
            return rc;
    }
}

void ab_message_destroy(ab_message_t **msg)
{
    if (!msg || !*msg)
        return;
    free(*msg); /* the ab_rxmsg_t block starts with it */
    *msg = NULL;
}

/* --- sending ---------------------------------------------------------------- */
static int s_check_send(ab_client_t *c, const char *name, const void *data, size_t size,
                        int flags)
{
    if (!c || !name || (size && !data))
        return c ? ab_conn_fail(&c->conn, AB_EINVAL, "invalid argument") : AB_EINVAL;
    if (flags & ~AB_SEND_RECEIPT) /* a bit of a later version, or a mistake: not ignored */
        return ab_conn_fail(&c->conn, AB_EINVAL, "unknown send flags 0x%x (AB_SEND_RECEIPT: %d)",
                            (unsigned)(flags & ~AB_SEND_RECEIPT), AB_SEND_RECEIPT);
    if (ab_agent_name_check(name) != AB_OK && !(name[0] == '~' && name[1]))
        return ab_conn_fail(&c->conn, AB_EBADNAME, "malformed agent name '%.64s'", name);
    if (size > c->conn.opts.max_payload)
        return ab_conn_fail(&c->conn, AB_EPAYLOADSIZE, "payload of %zu bytes exceeds %zu", size,
                            c->conn.opts.max_payload);
    return AB_OK;
}

static int s_send(ab_client_t *c, const char *name, const void *data, size_t size, int flags,
                  uint64_t corr, uint64_t *id)
{
    int rc = s_check_send(c, name, data, size, flags);
    if (rc != AB_OK)
        return rc;
    ab_header_t h = ab_header_init(AB_KIND_SEND);
    h.id = ab_conn_next_id(&c->conn);
    h.target = ab_view_of(name);
    h.sender = ab_view_of(c->conn.opts.name);
    h.correlation_id = corr;
    h.flags = (flags & AB_SEND_RECEIPT) ? AB_FLAG_WANT_RECEIPT : 0;
    rc = ab_conn_send(&c->conn, &h, data ? data : "", size);
    if (rc == AB_OK && id)
        *id = h.id;
    return rc;
}

int ab_client_send(ab_client_t *c, const char *name, const void *data, size_t size, int flags,
                   uint64_t *id)
{
    return s_send(c, name, data, size, flags, 0, id);
}

int ab_client_send_wait(ab_client_t *c, const char *name, const void *data, size_t size,
                        int flags, int timeout_ms, int *queued)
{
    int rc = s_check_send(c, name, data, size, flags);
    if (rc != AB_OK)
        return rc;
    ab_header_t t = ab_header_init(AB_KIND_SEND);
    t.credit = 1; /* the broker answers "delivered" or "queued" */
    t.flags = (flags & AB_SEND_RECEIPT) ? AB_FLAG_WANT_RECEIPT : 0;
    void *reply = NULL;
    size_t n = 0;
    rc = ab_client_call_wait(c, AB_KIND_SEND, name, &t, data, size, timeout_ms, &reply, &n);
    if (rc == AB_OK && queued)
        *queued = n == 6 && memcmp(reply, "queued", 6) == 0;
    ab_free(reply);
    return rc;
}

int ab_client_ask(ab_client_t *c, const char *name, const void *data, size_t size,
                  int timeout_ms, ab_reply_fn *fn, void *arg, uint64_t *id)
{
    int rc = s_check_send(c, name, data, size, 0);
    if (rc != AB_OK)
        return rc;
    ab_header_t t = ab_header_init(AB_KIND_SEND);
    /* The question expires from the mailbox when the asker gives up. */
    t.timeout_ms = (uint32_t)(timeout_ms < 0 ? c->conn.opts.timeout_ms
                                             : timeout_ms == 0 ? 1 : timeout_ms);
    return ab_client_ask_start(c, name, &t, data, size, timeout_ms, fn, arg, id);
}

int ab_client_reply(ab_client_t *c, const ab_message_t *m, const void *data, size_t size)
{
    if (!c || !m || m->type != AB_MSG_DIRECT || !m->sender[0])
        return c ? ab_conn_fail(&c->conn, AB_EINVAL, "not a direct message") : AB_EINVAL;
    return s_send(c, m->sender, data, size, 0, m->id, NULL);
}

/* --- topics ------------------------------------------------------------------ */
static int s_sub_find(const ab_cmsg_t *ms, const char *pattern)
{
    for (size_t i = 0; i < ms->nsubs; i++)
        if (strcmp(ms->subs[i], pattern) == 0)
            return (int)i;
    return -1;
}

/* Sends SUBSCRIBE (or its removal) and, with timeout_ms > 0, waits for the
 * broker's confirmation. */
static int s_sub_send(ab_client_t *c, const char *pattern, int unsub, int timeout_ms)
{
    ab_header_t t = ab_header_init(AB_KIND_SUBSCRIBE);
    t.flags = unsub ? AB_FLAG_UNSUBSCRIBE : 0;
    if (timeout_ms > 0)
        return ab_client_call_wait(c, AB_KIND_SUBSCRIBE, pattern, &t, NULL, 0, timeout_ms, NULL,
                                   NULL);
    t.id = ab_conn_next_id(&c->conn);
    t.target = ab_view_of(pattern);
    return ab_conn_send(&c->conn, &t, NULL, 0);
}

int ab_client_subscribe(ab_client_t *c, const char *pattern, int timeout_ms)
{
    if (!c || !pattern)
        return c ? ab_conn_fail(&c->conn, AB_EINVAL, "invalid argument") : AB_EINVAL;
    if (ab_topic_check(pattern, 1) != AB_OK)
        return ab_conn_fail(&c->conn, AB_EBADNAME,
                            "malformed topic pattern '%.64s': labels of [A-Za-z0-9_-:] joined "
                            "by single dots, a trailing dot for a prefix",
                            pattern);
    ab_cmsg_t *ms = &c->msg;
    if (s_sub_find(ms, pattern) < 0) {
        if (ms->nsubs >= AB_CLIENT_SUBS_MAX)
            return ab_conn_fail(&c->conn, AB_EINVAL, "too many subscriptions (max %d)",
                                AB_CLIENT_SUBS_MAX);
        if (ms->nsubs == ms->cap_subs) {
            size_t cap = ms->cap_subs ? ms->cap_subs * 2 : 8;
            char **s = realloc(ms->subs, cap * sizeof *s);
            if (!s)
                return ab_conn_fail(&c->conn, AB_ENOMEM, "out of memory");
            ms->subs = s;
            ms->cap_subs = cap;
        }
        /* Kept before sending: a reconnect restores it even if this send
         * is lost with the old connection. */
        if (!(ms->subs[ms->nsubs] = strdup(pattern)))
            return ab_conn_fail(&c->conn, AB_ENOMEM, "out of memory");
        ms->nsubs++;
    }
    return s_sub_send(c, pattern, 0, timeout_ms);
}

int ab_client_unsubscribe(ab_client_t *c, const char *pattern, int timeout_ms)
{
    if (!c || !pattern)
        return c ? ab_conn_fail(&c->conn, AB_EINVAL, "invalid argument") : AB_EINVAL;
    if (ab_topic_check(pattern, 1) != AB_OK)
        return ab_conn_fail(&c->conn, AB_EBADNAME, "malformed topic pattern '%.64s'", pattern);
    ab_cmsg_t *ms = &c->msg;
    int i = s_sub_find(ms, pattern);
    if (i >= 0) {
        free(ms->subs[i]);
        ms->subs[i] = ms->subs[--ms->nsubs];
    }
    return s_sub_send(c, pattern, 1, timeout_ms);
}

int ab_client_publish(ab_client_t *c, const char *topic, const void *data, size_t size,
                      uint64_t *id)
{
    if (!c || !topic || (size && !data))
        return c ? ab_conn_fail(&c->conn, AB_EINVAL, "invalid argument") : AB_EINVAL;
    if (ab_topic_check(topic, 0) != AB_OK)
        return ab_conn_fail(&c->conn, AB_EBADNAME,
                            "malformed topic '%.64s': labels of [A-Za-z0-9_-:] joined by single "
                            "dots, no trailing dot", topic);
    if (size > c->conn.opts.max_payload)
        return ab_conn_fail(&c->conn, AB_EPAYLOADSIZE, "payload of %zu bytes exceeds %zu", size,
                            c->conn.opts.max_payload);
    ab_header_t h = ab_header_init(AB_KIND_PUBLISH);
    h.id = ab_conn_next_id(&c->conn);
    h.target = ab_view_of(topic);
    int rc = ab_conn_send(&c->conn, &h, data ? data : "", size);
    if (rc == AB_OK && id)
        *id = h.id;
    return rc;
}
