/*
 * msgs.c - what direct messages and pub/sub share: their state, the
 * non-blocking send, the backlog flush, timers and the operator's views.
 * See msgs.h for the delivery policy.
 */
#define AB_LOG_SUBSYS "messaging" /* log.h: the subsystem in log lines */
#include "msgs.h"
#include "router.h"
#include "agentbus.h"
#include "util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define AB_FLUSH_MIN_MS 1  /* retry soon after a flush that made progress */
#define AB_FLUSH_MAX_MS 50 /* back off while a stalled peer takes nothing */
#define AB_FANOUT_WINDOW_MS 1000

/* Once a window: the fan-out rate, and mailbox messages past their TTL. */
static void s_window(ab_broker_t *b, int64_t now)
{
    ab_msgs_t *m = b->msgs;
    if (now <= m->c.prev_ms)
        return;
    m->c.fanout_per_s =
        (double)(m->c.fanout - m->c.prev_fanout) * 1000.0 / (double)(now - m->c.prev_ms);
    m->c.prev_fanout = m->c.fanout;
    m->c.prev_ms = now;
    ab_mailbox_expire(b, now);
}

int ab_msgs_init(ab_broker_t *b)
{
    ab_msgs_t *m = calloc(1, sizeof *m);
    if (!m)
        return -1;
    m->agents = zhashx_new();
    if (!m->agents) {
        free(m);
        return -1;
    }
    /* The key is the record's own name: no copy per name. */
    zhashx_set_key_duplicator(m->agents, NULL);
    zhashx_set_key_destructor(m->agents, NULL);
    zhashx_set_destructor(m->agents, ab_agent_free);
    m->root = NULL;
    m->flush_ivl_ms = AB_FLUSH_MIN_MS;
    m->c.prev_ms = ab_now_ms();
    b->msgs = m;
    if (ab_broker_every(b, AB_FANOUT_WINDOW_MS, s_window) < 0)
        return -1;
    return m->agents ? 0 : -1;
}

void ab_msgs_fini(ab_broker_t *b)
{
    ab_msgs_t *m = b->msgs;
    if (!m)
        return;
    /* Subscriptions first: they point at peers, which outlive this call. */
    if (b->peers)
        for (ab_peer_t *p = zhashx_first(b->peers); p; p = zhashx_next(b->peers))
            ab_pubsub_peer_gone(b, p);
    ab_pubsub_fini(b);
    if (b->peers)
        for (ab_peer_t *p = zhashx_first(b->peers); p; p = zhashx_next(b->peers))
            p->agent = NULL;
    zhashx_destroy(&m->agents);
    free(m->blog_agents);
    free(m->blog_subs);
    free(m);
    b->msgs = NULL;
}

const char *ab_msgs_sender_name(const ab_peer_t *p, char *buf, size_t cap)
{
    if (p->agent)
        return p->agent->name;
    snprintf(buf, cap, "~%s", p->key);
    return buf;
}

void ab_msgs_refuse(ab_broker_t *b, const ab_rid_t *rid, uint64_t id, uint32_t code,
                    const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    b->msgs->c.refused++;
    AB_COUNT_ERROR(b, code); /* errors by code in brokerctl stats */
    ab_send_error(b, rid, id, code, text);
}

void ab_msgs_route(ab_broker_t *b, ab_peer_t *p, const ab_header_t *h, zmq_msg_t *body,
                   int64_t now)
{
    if (p->role == AB_ROLE_CONTROL)
        p->role = AB_ROLE_AGENT;
    switch (h->kind) {
    case AB_KIND_SEND:
        ab_mailbox_on_send(b, p, h, body, now);
        break;
    case AB_KIND_PUBLISH:
        ab_pubsub_on_publish(b, p, h, body);
        break;
    case AB_KIND_SUBSCRIBE:
        ab_pubsub_on_subscribe(b, p, h);
        break;
    default:
        break;
    }
}

/* --- backlog: peers whose pipe was full ------------------------------------ */
static int s_grow(void ***arr, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap * 2 : 16;
    void **a = realloc(*arr, n * sizeof *a);
    if (!a)
        return -1;
    *arr = a;
    *cap = n;
    return 0;
}

void ab_msgs_backlog_agent(ab_broker_t *b, ab_agent_t *a)
{
    ab_msgs_t *m = b->msgs;
    if (a->backlog || s_grow((void ***)&m->blog_agents, &m->cap_blog_agents,
                             m->n_blog_agents + 1) != 0)
        return; /* out of memory: the expiry sweep still bounds the mailbox */
    m->blog_agents[m->n_blog_agents++] = a;
    a->backlog = 1;
    m->flush_ivl_ms = AB_FLUSH_MIN_MS;
}

void ab_msgs_backlog_sub(ab_broker_t *b, ab_subr_t *s)
{
    ab_msgs_t *m = b->msgs;
    if (s->backlog ||
        s_grow((void ***)&m->blog_subs, &m->cap_blog_subs, m->n_blog_subs + 1) != 0)
        return;
    m->blog_subs[m->n_blog_subs++] = s;
    s->backlog = 1;
    m->flush_ivl_ms = AB_FLUSH_MIN_MS;
}

static void s_unlist(void **arr, size_t *n, void *x)
{
    for (size_t i = 0; i < *n; i++)
        if (arr[i] == x) {
            arr[i] = arr[--*n];
            return;
        }
}

void ab_msgs_unbacklog_agent(ab_broker_t *b, ab_agent_t *a)
{
    ab_msgs_t *m = b->msgs;
    if (!a->backlog)
        return;
    s_unlist((void **)m->blog_agents, &m->n_blog_agents, a);
    a->backlog = 0;
}

void ab_msgs_peer_gone(ab_broker_t *b, ab_peer_t *p)
{
    ab_msgs_t *m = b->msgs;
    if (p->subr && p->subr->backlog)
        s_unlist((void **)m->blog_subs, &m->n_blog_subs, p->subr);
    ab_pubsub_peer_gone(b, p);
    ab_mailbox_unbind(b, p); /* takes its name off the flush list */
}

/* Retries every backlogged peer once. Backs off while nothing moves, so a
 * stopped subscriber costs a few wake-ups a second, not a busy loop. */
static void s_flush(ab_broker_t *b, int64_t now)
{
    ab_msgs_t *m = b->msgs;
    size_t moved = 0;
    for (size_t i = 0; i < m->n_blog_agents;) {
        int done = 0;
        ab_agent_t *a = m->blog_agents[i];
        moved += ab_mailbox_flush(b, a, now, &done);
        if (done) {
            a->backlog = 0;
            m->blog_agents[i] = m->blog_agents[--m->n_blog_agents];
        } else {
            i++;
        }
    }
    for (size_t i = 0; i < m->n_blog_subs;) {
        int done = 0;
        ab_subr_t *s = m->blog_subs[i];
        moved += ab_pubsub_flush(b, s, &done);
        if (done) {
            s->backlog = 0;
            m->blog_subs[i] = m->blog_subs[--m->n_blog_subs];
        } else {
            i++;
        }
    }
    if (moved)
        m->flush_ivl_ms = AB_FLUSH_MIN_MS;
    else if ((m->flush_ivl_ms *= 2) > AB_FLUSH_MAX_MS)
        m->flush_ivl_ms = AB_FLUSH_MAX_MS;
    m->next_flush_ms = now + m->flush_ivl_ms;
}

void ab_msgs_turn_end(ab_broker_t *b)
{
    ab_pubsub_turn_end(b);
}

int64_t ab_msgs_next_wake(ab_broker_t *b)
{
    ab_msgs_t *m = b->msgs;
    return (m->n_blog_agents || m->n_blog_subs) ? m->next_flush_ms : 0;
}

void ab_msgs_timers(ab_broker_t *b, int64_t now)
{
    ab_msgs_t *m = b->msgs;
    if ((m->n_blog_agents || m->n_blog_subs) && now >= m->next_flush_ms)
        s_flush(b, now);
}

/* --- operator views --------------------------------------------------------- */
void ab_msgs_stats(ab_broker_t *b, Agentbus__Stats *st)
{
    ab_msgs_t *m = b->msgs;
    st->msgs_sent = m->c.sent;
    st->msgs_delivered = m->c.delivered;
    st->msgs_queued = m->c.queued;
    st->msgs_expired = m->c.expired;
    st->msgs_refused = m->c.refused;
    st->mailbox_msgs = m->mailbox_msgs;
    st->mailbox_bytes = 0;
    for (ab_agent_t *a = zhashx_first(m->agents); a; a = zhashx_next(m->agents)) {
        st->mailbox_bytes += a->bytes;
        if (a->peer)
            st->named_agents++;
    }
    st->topics = m->topics;
    st->subscribers = m->subscribers;
    st->published = m->c.published;
    st->fanout = m->c.fanout;
    st->fanout_per_s = m->c.fanout_per_s;
    st->slow_drops = m->c.slow_drops;
    st->no_subscribers = m->c.no_subscribers;
    st->receipts = m->c.receipts;
    st->msgs_too_large = m->c.too_large;
    st->pub_too_large = m->c.pub_too_large;
    st->offline_names = (uint32_t)(zhashx_size(m->agents) - m->bound);
    st->mailbox_charged_bytes = m->total_bytes + m->handed_bytes;
}

static void s_agent_info(const ab_broker_t *b, Agentbus__AgentInfo *x, ab_peer_t *p,
                         ab_agent_t *a, int64_t now)
{
    agentbus__agent_info__init(x);
    x->name = a ? a->name : (char *)"";
    x->id = p ? p->key : (char *)"";
    x->connected = p != NULL;
    x->connected_ms = p ? (uint64_t)(now - p->connected_ms) : 0;
    x->max_payload = p ? ab_peer_max_payload(b, p) : 0;
    x->mailbox_depth = a ? a->depth : 0;
    x->mailbox_bytes = a ? a->bytes : 0;
    ab_subr_t *s = p ? p->subr : NULL;
    if (s) {
        x->sub_queue = (uint32_t)s->qlen;
        x->sub_dropped = s->dropped;
        x->sub_too_large = s->too_large;
    }
}

int ab_msgs_agents_answer(ab_broker_t *b, uint8_t **out, size_t *len)
{
    ab_msgs_t *m = b->msgs;
    size_t cap = zhashx_size(b->peers) + zhashx_size(m->agents) + 1, n = 0;
    Agentbus__AgentInfo *ai = calloc(cap, sizeof *ai);
    Agentbus__AgentInfo **ap = calloc(cap, sizeof *ap);
    char ***subs = calloc(cap, sizeof *subs);
    int rc = -1;
    int64_t now = ab_now_ms();
    if (!ai || !ap || !subs)
        goto done;
    /* Connected agents (workers and operator tools are listed elsewhere). */
    for (ab_peer_t *p = zhashx_first(b->peers); p && n < cap; p = zhashx_next(b->peers)) {
        if (p->role != AB_ROLE_AGENT && !p->agent && !p->subr)
            continue;
        s_agent_info(b, &ai[n], p, p->agent, now);
        ab_subr_t *s = p->subr;
        if (s && s->npats) {
            if (!(subs[n] = calloc(s->npats, sizeof **subs)))
                goto done;
            for (size_t i = 0; i < s->npats; i++)
                subs[n][i] = s->pats[i].pattern;
            ai[n].n_subscriptions = s->npats;
            ai[n].subscriptions = subs[n];
        }
        ap[n] = &ai[n];
        n++;
    }
    /* Names that only have a mailbox now. */
    for (ab_agent_t *a = zhashx_first(m->agents); a && n < cap; a = zhashx_next(m->agents)) {
        if (a->peer)
            continue;
        s_agent_info(b, &ai[n], NULL, a, now);
        ap[n] = &ai[n];
        n++;
    }
    Agentbus__AgentList al;
    agentbus__agent_list__init(&al);
    al.n_agents = n;
    al.agents = ap;
    *len = agentbus__agent_list__get_packed_size(&al);
    if ((*out = malloc(*len ? *len : 1)) != NULL) {
        agentbus__agent_list__pack(&al, *out);
        rc = 0;
    }
done:
    for (size_t i = 0; subs && i < cap; i++)
        free(subs[i]);
    free(subs);
    free(ai);
    free(ap);
    return rc;
}

int ab_msgs_audit(ab_broker_t *b, char *why, size_t cap)
{
    if (!b->msgs)
        return 0;
    int rc = ab_mailbox_audit(b, why, cap);
    return rc == 0 ? ab_pubsub_audit(b, why, cap) : rc;
}
