/*
 * link_msg.c - direct messages (SEND) and topics (PUBLISH) across broker
 * links (issue 15; docs/links.md "Messages and topics").
 *
 * Names. Each broker tells each up link the whole set of agent names bound
 * to a live connection on it (LinkMsg NAMES), again within one link
 * heartbeat of any change; a link that goes down takes its peer's set with
 * it, and the whole set comes again when it is back. A SEND to a name not
 * bound here but in a peer's set goes to that peer (the peer whose name
 * sorts first when several claim it); a name bound here always stays here
 * (local wins); a name bound nowhere waits in this broker's mailbox, as on
 * a broker alone. The far broker hands the SEND to its own mailbox code.
 * Every forwarded SEND asks the far broker for its answer ("delivered",
 * "queued", or an ERROR): the first broker keeps a record of it until then
 * and passes the answer on to the sender as it would its own (the "queued"
 * confirmation only when the sender asked for it). A link lost first
 * answers its records NO_AGENT.
 *
 * Topics. Which peer wants which publication is link_topic.c's (interest
 * as a path vector). A publication goes, besides the local fan-out, in one
 * copy per next hop, each carrying the brokers it is for (Header.dests);
 * a broker that receives one sends the rest on the same way, then fans it
 * out to its own subscribers when it is one of them. A SEND that came over
 * a link is forwarded again only when its crossed list and hop limit allow
 * it.
 *
 * Mailbox hand-over. A message handed over from this broker's mailbox is
 * kept (a reference to its payload) until the far broker answers; a link
 * lost first puts it back at the front of its mailbox, in order.
 *
 * Unnamed senders. A sender without a name is "~TOKEN" on its broker; across
 * a link it reads "~TOKEN@BROKER", and a SEND to that address goes back over
 * the link to BROKER, so answers and receipts reach it.
 */
#define AB_LOG_SUBSYS "link"
#include "link_int.h"
#include "auth.h"
#include "msgs.h"
#include "router.h"
#include "agentbus.h"
#include "topic.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define AB_LINK_NAMES_MAX 65536  /* names taken from one peer */
#define AB_LINK_SENDS_MAX 65536  /* forwarded SENDs waiting for their answer */
#define AB_LINK_SEND_WAIT_MS 60000
#define S_FWD_BIT (1ull << 63)   /* request ids (b->next_bid) never reach it */
#define S_SENDER_MAX 512
/* Link ticks between unconditional resends of the whole sets: a set lost on
 * the way (a connection replaced while it was in flight) is repaired. */
#define AB_LINK_MSG_REFRESH_TICKS 50

/* One link's messaging state. */
struct ab_link_msg {
    zhashx_t *names;    /* the peer's bound names (a set) */
    uint64_t names_sig; /* of the set last sent to it */
    int names_sent;     /* 0: send at the next tick */
    uint64_t sends_fwd, sends_recv, pubs_fwd, pubs_recv;
    uint64_t pubs_dropped; /* not sent: the link over its bound (ab_link_over) */
};

/* A message handed over from this broker's mailbox, kept until the far
 * broker answers: put back into the mailbox if the link is lost first. */
typedef struct {
    uint64_t id, corr;
    uint32_t flags;
    int64_t expires_ms;
    zmq_msg_t body; /* a reference to the bytes sent */
    int has_body;
    size_t charge;  /* counted against mailbox-total-bytes until it ends (ab_mail_fn) */
    char *name;     /* the agent it is for (AB_NAME_MAX) */
    char sender[];
} s_mail_t;

/* A SEND forwarded over a link, waiting for the far broker's answer. */
typedef struct {
    ab_list_t node; /* oldest first */
    uint64_t fid;   /* its id on the link */
    ab_rid_t rid;   /* who sent it here */
    uint64_t id;    /* and its id for it */
    int want;       /* it asked for the "delivered"/"queued" answer */
    ab_link_t *l;
    int64_t expires_ms;
    s_mail_t *mail; /* handed over from the mailbox (then RID is empty) */
    char target[64];
} s_pend_t;

struct ab_link_msgs {
    ab_idmap_t pending; /* fid -> s_pend_t */
    ab_list_t order;
    uint64_t seq;
    uint32_t ticks;
};

static const char s_one = 1; /* the value of set members */

static void s_mail_free(s_mail_t *m)
{
    if (!m)
        return;
    zmq_msg_close(&m->body);
    free(m->name);
    free(m);
}

/* --- records ------------------------------------------------------------------- */

int ab_link_msg_init(ab_broker_t *b)
{
    struct ab_link_msgs *ms = calloc(1, sizeof *ms);
    if (!ms)
        return -1;
    ab_list_init(&ms->order);
    b->links->msg = ms;
    return 0;
}

void ab_link_msg_fini(ab_broker_t *b)
{
    struct ab_link_msgs *ms = b->links ? b->links->msg : NULL;
    if (!ms)
        return;
    ab_list_t *n, *tmp;
    AB_LIST_FOREACH_SAFE(n, tmp, &ms->order) {
        s_pend_t *e = ab_list_data(n, s_pend_t, node);
        s_mail_free(e->mail);
        free(e);
    }
    ab_idmap_fini(&ms->pending);
    free(ms);
    b->links->msg = NULL;
}

static struct ab_link_msg *s_lm(ab_link_t *l)
{
    if (!l->msg && (l->msg = calloc(1, sizeof *l->msg)) != NULL) {
        l->msg->names = zhashx_new();
        if (!l->msg->names) {
            ab_link_msg_free(l);
            return NULL;
        }
    }
    return l->msg;
}

void ab_link_msg_free(ab_link_t *l)
{
    if (!l->msg)
        return;
    zhashx_destroy(&l->msg->names);
    free(l->msg);
    l->msg = NULL;
}

static void s_pend_remove(ab_broker_t *b, s_pend_t *e)
{
    struct ab_link_msgs *ms = b->links->msg;
    if (e->mail && e->mail->charge)
        ab_mailbox_handed_done(b, e->mail->charge);
    ab_idmap_del(&ms->pending, e->fid);
    ab_list_remove(&e->node);
    s_mail_free(e->mail);
    free(e);
}

/* L was lost before its peer confirmed the messages this broker handed
 * over from its mailbox: each goes back to the front of its mailbox, in
 * its order (newest first to the front), to be handed over again or
 * delivered here. At least once: one the peer delivered just before the
 * loss comes again. */
static void s_put_back(ab_broker_t *b, ab_link_t *l, int64_t now)
{
    struct ab_link_msgs *ms = b->links->msg;
    size_t n = 0, lost = 0;
    ab_list_t *it, *tmp;
    AB_LIST_FOREACH_REVERSE_SAFE(it, tmp, &ms->order) {
        s_pend_t *e = ab_list_data(it, s_pend_t, node);
        if (e->l != l || !e->mail)
            continue;
        s_mail_t *m = e->mail;
        if (ab_mailbox_put_back(b, m->name, m->sender, m->id, m->corr, m->flags, m->expires_ms,
                                m->has_body ? &m->body : NULL, now) == 0)
            n++;
        else
            lost++;
        s_pend_remove(b, e);
    }
    if (n || lost)
        AB_WARN("link to '%s' lost: %zu handed-over message(s) put back into the mailbox "
                "(%zu lost: out of memory)", l->name, n, lost);
}

void ab_link_msg_up(ab_broker_t *b, ab_link_t *l)
{
    (void)b;
    struct ab_link_msg *lm = s_lm(l);
    if (lm)
        lm->names_sent = 0; /* the whole set at the next tick */
    ab_link_topic_up(l);
}

void ab_link_msg_down(ab_broker_t *b, ab_link_t *l)
{
    struct ab_link_msg *lm = l->msg;
    if (lm) {
        zhashx_purge(lm->names);
        lm->names_sent = 0;
    }
    ab_link_topic_down(b, l);
    struct ab_link_msgs *ms = b->links->msg;
    if (b->msgs)
        s_put_back(b, l, ab_now_ms());
    ab_list_t *n, *tmp;
    AB_LIST_FOREACH_SAFE(n, tmp, &ms->order) {
        s_pend_t *e = ab_list_data(n, s_pend_t, node);
        if (e->l != l)
            continue;
        if (!e->rid.len) { /* nobody waits for it */
            s_pend_remove(b, e);
            continue;
        }
        char text[192];
        snprintf(text, sizeof text, "the link to broker '%s' was lost before it confirmed the "
                 "message to '%s' (it may have been delivered)", l->name, e->target);
        b->msgs->c.refused++;
        AB_COUNT_ERROR(b, AB_ERR_NO_AGENT);
        ab_send_error(b, &e->rid, e->id, AB_ERR_NO_AGENT, text);
        s_pend_remove(b, e);
    }
}

/* --- what this broker tells its peers ------------------------------------------ */

/* An order-free signature of the names bound here (count and sum of hashes). */
static uint64_t s_names_sig(ab_broker_t *b, size_t *n)
{
    uint64_t sig = 0;
    *n = 0;
    zhashx_t *agents = b->msgs->agents;
    for (ab_agent_t *a = zhashx_first(agents); a; a = zhashx_next(agents))
        if (a->peer) {
            sig += ab_hash_bytes(a->name, strlen(a->name)) | 1;
            (*n)++;
        }
    return sig ^ (uint64_t)*n << 48;
}

static void s_send_names(ab_broker_t *b, ab_link_t *l, size_t n)
{
    char **names = calloc(n ? n : 1, sizeof *names);
    if (!names)
        return;
    size_t k = 0;
    zhashx_t *agents = b->msgs->agents;
    for (ab_agent_t *a = zhashx_first(agents); a && k < n; a = zhashx_next(agents))
        if (a->peer)
            names[k++] = a->name;
    Agentbus__LinkMsg m = AGENTBUS__LINK_MSG__INIT;
    m.type = S_LM_NAMES;
    m.broker = l->all->self;
    m.n_names = k;
    m.names = names;
    if (ab_link_send_msg(b, l, &m) == 0)
        l->msg->names_sent = 1;
    free(names);
}

/* Forwarded SENDs with no answer for AB_LINK_SEND_WAIT_MS: the far broker
 * always answers, so this only bounds the table if a peer misbehaves. */
static void s_expire(ab_broker_t *b, int64_t now)
{
    struct ab_link_msgs *ms = b->links->msg;
    ab_list_t *n;
    while ((n = ab_list_first(&ms->order))) {
        s_pend_t *e = ab_list_data(n, s_pend_t, node);
        if (e->expires_ms > now)
            break;
        if (!e->rid.len) {
            s_pend_remove(b, e);
            continue;
        }
        char text[160];
        snprintf(text, sizeof text, "broker '%s' did not confirm the message to '%s'",
                 e->l->name, e->target);
        AB_COUNT_ERROR(b, AB_ERR_NO_AGENT);
        ab_send_error(b, &e->rid, e->id, AB_ERR_NO_AGENT, text);
        s_pend_remove(b, e);
    }
}

void ab_link_msg_tick(ab_broker_t *b, int64_t now)
{
    struct ab_links *ls = b->links;
    if (!ls->msg || !b->msgs)
        return;
    s_expire(b, now);
    if (!ab_link_up_count(b))
        return;
    int refresh = ++ls->msg->ticks % AB_LINK_MSG_REFRESH_TICKS == 0;
    size_t nn;
    uint64_t nsig = s_names_sig(b, &nn);
    for (int i = 0; i < AB_LINKS_MAX; i++) {
        ab_link_t *l = ls->l[i];
        struct ab_link_msg *lm = l && l->up ? s_lm(l) : NULL;
        if (!lm)
            continue;
        if (refresh)
            lm->names_sent = 0;
        if (!lm->names_sent || lm->names_sig != nsig) {
            lm->names_sig = nsig;
            s_send_names(b, l, nn);
        }
    }
    ab_link_topic_tick(b, refresh);
}

/* --- what the peers tell this broker --------------------------------------------- */

/* Replaces SET with the COUNT names in ITEMS that are well formed (up to
 * MAX; the rest are counted malformed). */
static void s_set_replace(ab_broker_t *b, zhashx_t *set, char **items, size_t count, size_t max)
{
    zhashx_purge(set);
    for (size_t i = 0; i < count; i++) {
        const char *s = items[i];
        if (ab_agent_name_check_n(s, strlen(s)) != AB_OK || zhashx_size(set) >= max) {
            b->c.malformed++;
            continue;
        }
        zhashx_insert(set, s, (void *)&s_one);
    }
}

static void s_hand_over_all(ab_broker_t *b, ab_link_t *l, int64_t now);

void ab_link_msg_on_link(ab_broker_t *b, ab_link_t *l, const Agentbus__LinkMsg *m, int64_t now)
{
    struct ab_link_msg *lm = s_lm(l);
    if (!lm)
        return;
    if (m->type == S_LM_NAMES) {
        s_set_replace(b, lm->names, m->names, m->n_names, AB_LINK_NAMES_MAX);
        if (m->n_names > AB_LINK_NAMES_MAX)
            AB_LOG_RL(&b->rl, 0x11e0 + (uint64_t)l->idx, now, AB_LOG_WARN,
                      "link '%s': %zu agent names offered, %d taken", l->name, m->n_names,
                      AB_LINK_NAMES_MAX);
        s_hand_over_all(b, l, now);
    } else if (m->type == S_LM_INTEREST) {
        ab_link_topic_on_interest(b, l, m, now);
    }
}

/* --- SEND ------------------------------------------------------------------------ */

/* The up link whose peer has NAME bound, not crossed yet by a message with
 * crossed list VIA (of LEN bytes): the one whose name sorts first. */
static ab_link_t *s_owner(ab_broker_t *b, const char *name, const char *via, size_t len)
{
    ab_link_t *best = NULL;
    for (int i = 0; i < AB_LINKS_MAX; i++) {
        ab_link_t *l = b->links->l[i];
        if (!l || !l->up || !l->msg || !zhashx_lookup(l->msg->names, name))
            continue;
        if (ab_link_in_list(via, len, l->name))
            continue;
        if (!best || strcmp(l->name, best->name) < 0)
            best = l;
    }
    return best;
}

static ab_link_t *s_up_link(ab_broker_t *b, const char *name)
{
    for (int i = 0; i < AB_LINKS_MAX; i++) {
        ab_link_t *l = b->links->l[i];
        if (l && l->up && !strcmp(l->name, name))
            return l;
    }
    return NULL;
}

/* Fills the crossed list, hops left and origin of H, a message from P (a
 * link's client: IN is what it carried) going over L. 0, or -1 when it may
 * not cross L (hop limit, loop, crossed list full). */
static int s_route_fields(ab_broker_t *b, ab_peer_t *p, const ab_header_t *in, ab_link_t *l,
                          ab_header_t *h, char *via, char *okey)
{
    int from_link = p->link_role == AB_LINK_CLIENT;
    uint32_t left = from_link ? in->hops_left : (uint32_t)b->cfg->link_hop_limit;
    char prev[AB_VIA_MAX] = "";
    if (from_link)
        ab_view_copy(in->via, prev, sizeof prev);
    if (left == 0 || ab_link_in_list(prev, strlen(prev), l->name))
        return -1;
    int n = snprintf(via, AB_VIA_MAX, "%s%s%s", prev, prev[0] ? "," : "", l->all->self);
    if (n < 0 || n >= AB_VIA_MAX)
        return -1;
    h->via = ab_view_of(via);
    h->hops_left = left - 1;
    if (from_link) {
        ab_view_copy(in->origin_key, okey, AB_LINK_KEY_TXT);
        h->origin_role = in->origin_role;
    } else {
        const char *pub = ab_peer_identity(p); /* "local": ipc, no key to name */
        snprintf(okey, AB_LINK_KEY_TXT, "%s", pub && strcmp(pub, "local") ? pub : "");
        h->origin_role = p->authkey ? (uint32_t)ab_key_role(p->authkey) + 1 : 0;
    }
    h->origin_key = ab_view_of(okey[0] ? okey : NULL);
    return 0;
}

/* SENDER as the far side reads it: an unnamed local sender gets "@" + this
 * broker's name, so that an answer finds its way back. */
static const char *s_sender_out(ab_broker_t *b, ab_peer_t *p, const char *sender, char *buf)
{
    if (sender[0] != '~' || strchr(sender, '@') || p->link_role == AB_LINK_CLIENT)
        return sender;
    snprintf(buf, S_SENDER_MAX, "%s@%s", sender, b->links->self);
    return buf;
}

/* Sends SEND H (its id and credit set here; BODY moved when sent) over L
 * and records who waits for the answer: RID with its ID (WANT: it asked
 * for "delivered"/"queued"), or nobody (RID NULL). 0 or -1. */
static int s_send_recorded(ab_broker_t *b, ab_link_t *l, ab_header_t *h, zmq_msg_t *body,
                           const ab_rid_t *rid, uint64_t id, int want, const char *target,
                           s_mail_t *mail)
{
    struct ab_link_msgs *ms = b->links->msg;
    s_pend_t *e = calloc(1, sizeof *e);
    if (!e || ab_idmap_put(&ms->pending, S_FWD_BIT | (ms->seq + 1), e) != 0) {
        free(e);
        s_mail_free(mail);
        return -1;
    }
    e->mail = mail;
    e->fid = S_FWD_BIT | ++ms->seq;
    if (rid)
        e->rid = *rid;
    e->id = id;
    e->want = want;
    e->l = l;
    e->expires_ms = ab_now_ms() + AB_LINK_SEND_WAIT_MS;
    snprintf(e->target, sizeof e->target, "%s", target);
    ab_list_insert_tail(&ms->order, &e->node);
    h->id = e->fid;
    h->credit = 1; /* the far broker always answers: the record ends */
    uint8_t stack[2048];
    size_t len;
    uint8_t *buf = ab_header_encode_buf(h, stack, sizeof stack, &len);
    int rc = buf ? ab_link_send(b, l, buf, len, body) : -1;
    if (buf && buf != stack)
        free(buf);
    if (rc != 0) {
        s_pend_remove(b, e);
        return -1;
    }
    if (l->msg)
        l->msg->sends_fwd++;
    return 0;
}

/* Sends SEND IN (for TARGET, from SENDER) from P over L. 0 sent, 1 it may
 * not cross L (it stays here), -1 L does not take it now. */
static int s_forward_send(ab_broker_t *b, ab_peer_t *p, const ab_header_t *in, zmq_msg_t *body,
                          ab_link_t *l, const char *target, const char *sender)
{
    char via[AB_VIA_MAX], okey[AB_LINK_KEY_TXT], sbuf[S_SENDER_MAX];
    ab_header_t h = ab_header_init(AB_KIND_SEND);
    if (s_route_fields(b, p, in, l, &h, via, okey) != 0)
        return 1; /* not over L: the local mailbox */
    h.correlation_id = in->correlation_id;
    h.flags = in->flags & (AB_FLAG_WANT_RECEIPT | AB_FLAG_RECEIPT);
    h.timeout_ms = in->timeout_ms;
    h.sender = ab_view_of(s_sender_out(b, p, sender, sbuf));
    h.target = ab_view_of(target);
    return s_send_recorded(b, l, &h, body, &p->rid, in->id, in->credit == 1, target, NULL);
}

int ab_link_msg_send(ab_broker_t *b, ab_peer_t *p, const ab_header_t *h, zmq_msg_t *body,
                     const char *name, const char *sender, int bound_here)
{
    if (!b->links || !b->links->msg || bound_here)
        return 0;
    char target[AB_NAME_MAX], via[AB_VIA_MAX] = "";
    ab_link_t *l;
    if (name[0] == '~') { /* "~TOKEN@BROKER": an unnamed agent on BROKER */
        const char *at = strchr(name, '@');
        if (!at || !(l = s_up_link(b, at + 1)))
            return 0;
        snprintf(target, sizeof target, "%.*s", (int)(at - name), name);
    } else {
        if (p->link_role == AB_LINK_CLIENT)
            ab_view_copy(h->via, via, sizeof via);
        if (!(l = s_owner(b, name, via, strlen(via))))
            return 0;
        snprintf(target, sizeof target, "%s", name);
    }
    if (ab_idmap_size(&b->links->msg->pending) >= AB_LINK_SENDS_MAX) {
        ab_msgs_refuse(b, &p->rid, h->id, AB_ERR_BUSY,
                       "too many messages wait for a peer broker's answer (%d)",
                       AB_LINK_SENDS_MAX);
        return 1;
    }
    int rc = s_forward_send(b, p, h, body, l, target, sender);
    if (rc > 0)
        return 0; /* hop limit or loop: it stays here */
    if (rc < 0)
        ab_msgs_refuse(b, &p->rid, h->id, AB_ERR_BUSY,
                       "agent '%s' is on broker '%s', whose link is not taking messages now",
                       name, l->name);
    return 1;
}

/* Mailbox hand-over: a message that waited here for a name now bound on
 * L's peer goes there. This broker accepted it under its own checks, so it
 * vouches for an agent's message (the sender's key was not kept). */
static int s_hand_one(ab_broker_t *b, void *arg, const char *sender, uint64_t id, uint64_t corr,
                      uint32_t flags, int64_t ttl_left_ms, zmq_msg_t *body, size_t charge)
{
    const char *target = ((void **)arg)[1];
    ab_link_t *l = ((void **)arg)[0];
    char via[AB_LINK_NAME_MAX], sbuf[S_SENDER_MAX];
    if (ab_idmap_size(&b->links->msg->pending) >= AB_LINK_SENDS_MAX)
        return -1; /* the rest waits here: handed over at the peer's next NAMES */
    /* A copy to put back if the link is lost before the answer. */
    size_t slen = strlen(sender) + 1;
    s_mail_t *m = calloc(1, sizeof *m + slen);
    if (!m || !(m->name = strdup(target))) {
        free(m);
        return -1;
    }
    m->id = id;
    m->corr = corr;
    m->flags = flags;
    m->expires_ms = ab_now_ms() + ttl_left_ms;
    memcpy(m->sender, sender, slen);
    zmq_msg_init(&m->body);
    if (body && zmq_msg_copy(&m->body, body) == 0)
        m->has_body = 1;
    ab_header_t h = ab_header_init(AB_KIND_SEND);
    snprintf(via, sizeof via, "%s", l->all->self);
    h.via = ab_view_of(via);
    h.hops_left = (uint32_t)b->cfg->link_hop_limit - 1;
    h.origin_role = AB_KEYROLE_AGENT + 1;
    h.correlation_id = corr;
    h.flags = flags & (AB_FLAG_WANT_RECEIPT | AB_FLAG_RECEIPT);
    h.timeout_ms = ttl_left_ms > UINT32_MAX ? UINT32_MAX : (uint32_t)ttl_left_ms;
    if (sender[0] == '~' && !strchr(sender, '@')) {
        snprintf(sbuf, sizeof sbuf, "%s@%s", sender, l->all->self);
        sender = sbuf;
    }
    h.sender = ab_view_of(sender);
    h.target = ab_view_of(target);
    if (s_send_recorded(b, l, &h, body, NULL, 0, 0, target, m) != 0)
        return -1;
    m->charge = charge; /* recorded: the mailbox counts it in handed_bytes from now */
    return 0;
}

static void s_hand_over_all(ab_broker_t *b, ab_link_t *l, int64_t now)
{
    if (!b->msgs->mailbox_msgs)
        return;
    /* A copy of the names: a lookup in a zhashx moves its iteration cursor. */
    zlistx_t *names = zhashx_keys(l->msg->names);
    for (const char *name = names ? zlistx_first(names) : NULL; name;
         name = zlistx_next(names)) {
        if (s_owner(b, name, "", 0) != l)
            continue;
        void *arg[2] = {l, (void *)name};
        size_t n = ab_mailbox_hand_over(b, name, s_hand_one, arg, now);
        if (n)
            AB_INFO("%zu message(s) waiting here for '%s' handed over to broker '%s'", n, name,
                    l->name);
    }
    zlistx_destroy(&names);
}

const char *ab_link_msg_sender(const ab_peer_t *p, const ab_header_t *h, char *buf, size_t cap)
{
    if (p->link_role != AB_LINK_CLIENT)
        return NULL;
    ab_view_copy(h->sender, buf, cap);
    return buf;
}

int ab_link_msg_on_answer(ab_broker_t *b, ab_link_t *l, const ab_header_t *h, zmq_msg_t *body)
{
    if (!(h->correlation_id & S_FWD_BIT))
        return 0;
    struct ab_link_msgs *ms = b->links->msg;
    s_pend_t *e = ms ? ab_idmap_get(&ms->pending, h->correlation_id) : NULL;
    if (!e || e->l != l || h->kind == AB_KIND_PARTIAL) {
        b->c.replies_dropped++; /* answered already (link lost), or not ours */
        return 1;
    }
    if (h->kind == AB_KIND_ERROR && !e->rid.len) { /* a handed-over message */
        AB_LOG_RL(&b->rl, 0x11f0 + (uint64_t)l->idx, ab_now_ms(), AB_LOG_WARN,
                  "broker '%s' refused a message handed over for '%s': %.*s", l->name,
                  e->target, (int)h->error_text.len, h->error_text.ptr);
    } else if (h->kind == AB_KIND_ERROR) {
        char text[512];
        ab_view_copy(h->error_text, text, sizeof text);
        b->msgs->c.refused++;
        AB_COUNT_ERROR(b, h->error_code);
        ab_send_error(b, &e->rid, e->id, h->error_code, text);
    } else if (e->want && e->rid.len) {
        ab_header_t r = ab_header_init(AB_KIND_REPLY);
        r.correlation_id = e->id;
        ab_send(b, &e->rid, &r, body); /* "delivered" or "queued" */
    }
    s_pend_remove(b, e);
    return 1;
}

/* --- PUBLISH --------------------------------------------------------------------- */

/* A publication on its way: what every copy is made of. */
typedef struct {
    ab_peer_t *p;         /* who sent it here: a local client or a link's client */
    const ab_header_t *h; /* as it came */
    const char *sender;
    zmq_msg_t *body;      /* not consumed: each copy takes a reference */
} s_pub_t;

/* One copy of publication ARG for next hop L, for the brokers in DESTS. */
static void s_pub_copy(ab_broker_t *b, ab_link_t *l, const char *dests, void *arg)
{
    const s_pub_t *pub = arg;
    if (ab_link_over(b, l)) { /* as a slow subscriber's: the newest ones wait no more */
        if (s_lm(l))
            l->msg->pubs_dropped++;
        return;
    }
    char via[AB_VIA_MAX], okey[AB_LINK_KEY_TXT], sbuf[S_SENDER_MAX];
    ab_header_t f = ab_header_init(AB_KIND_PUBLISH);
    if (s_route_fields(b, pub->p, pub->h, l, &f, via, okey) != 0)
        return;
    f.id = pub->h->id;
    f.sender = ab_view_of(s_sender_out(b, pub->p, pub->sender, sbuf));
    f.target = pub->h->target;
    f.dests = ab_view_of(dests);
    uint8_t stack[2048];
    size_t len;
    uint8_t *buf = ab_header_encode_buf(&f, stack, sizeof stack, &len);
    zmq_msg_t copy;
    zmq_msg_init(&copy);
    if (pub->body)
        zmq_msg_copy(&copy, pub->body); /* a reference: no payload bytes copied */
    if (buf && ab_link_send(b, l, buf, len, pub->body ? &copy : NULL) == 0 && s_lm(l))
        l->msg->pubs_fwd++;
    zmq_msg_close(&copy);
    if (buf && buf != stack)
        free(buf);
}

/* Sends publication PUB on toward the brokers with subscribers for it
 * (ONLY: the ones it is for; NULL: every one with a matching pattern). */
static void s_pub_route(ab_broker_t *b, const s_pub_t *pub, const char *only)
{
    char topic[AB_NAME_MAX], crossed[AB_VIA_MAX] = "";
    uint32_t left = (uint32_t)b->cfg->link_hop_limit;
    ab_view_copy(pub->h->target, topic, sizeof topic);
    if (pub->p->link_role == AB_LINK_CLIENT) {
        /* never back to the link it came from, whatever its crossed list says */
        size_t n = pub->h->via.len;
        snprintf(crossed, sizeof crossed, "%.*s%s%s", (int)n, pub->h->via.ptr, n ? "," : "",
                 pub->p->link ? pub->p->link->name : "");
        left = pub->h->hops_left;
    }
    ab_link_topic_route(b, topic, crossed, left, only, s_pub_copy, (void *)pub);
}

void ab_link_msg_publish(ab_broker_t *b, ab_peer_t *p, const ab_header_t *h, ab_view_t sender,
                         zmq_msg_t *body)
{
    if (!b->links || p->link_role == AB_LINK_CLIENT)
        return; /* what came over a link was sent on by s_on_publish */
    char sname[S_SENDER_MAX];
    ab_view_copy(sender, sname, sizeof sname);
    s_pub_t pub = {p, h, sname, body};
    s_pub_route(b, &pub, NULL);
}

/* --- what a peer forwards here --------------------------------------------------- */

/* The checks at this side (as link_fwd.c's for requests): the first broker
 * vouches for the origin's role; a key trusted here keeps its own grants
 * here. 1 allowed, else 0 with *WHY. */
static int s_origin_ok(ab_broker_t *b, const ab_header_t *h, const char **why)
{
    int role = (int)h->origin_role - 1;
    if (b->cfg->auth_curve && h->origin_role == 0) {
        *why = "the message's origin is unknown (the first broker runs without auth)";
        return 0;
    }
    if (h->origin_role && role != AB_KEYROLE_AGENT && role != AB_KEYROLE_ADMIN) {
        *why = "only an agent's or an admin's messages cross a link";
        return 0;
    }
    char key[AB_LINK_KEY_TXT];
    ab_view_copy(h->origin_key, key, sizeof key);
    const struct ab_key *k = key[0] ? ab_auth_key_lookup(b, key) : NULL;
    return !k || ab_auth_check(b, k, h, why);
}

/* 1 when SENDER (from the far broker) can name a sender here. */
static int s_sender_ok(ab_view_t s)
{
    if (s.len == 0 || s.len >= S_SENDER_MAX)
        return 0;
    for (size_t i = 0; i < s.len; i++)
        if (s.ptr[i] <= ' ' || s.ptr[i] > '~')
            return 0;
    return 1;
}

/* 1 when SENDER is bound to a live agent here. A peer broker vouches for
 * its own agents, not ours: a SEND "from" an agent bound here would pass
 * for it, e.g. as its answer to an ask (under local wins, an answer to that
 * name would reach the agent here anyway, not a namesake over there). */
static int s_sender_here(ab_broker_t *b, ab_view_t sender)
{
    char name[S_SENDER_MAX];
    ab_view_copy(sender, name, sizeof name);
    const ab_agent_t *a = zhashx_lookup(b->msgs->agents, name);
    return a && a->peer;
}

static void s_on_send(ab_broker_t *b, ab_link_t *l, ab_header_t *h, zmq_msg_t *body, int64_t now)
{
    ab_peer_t *c = l->client;
    const char *why = NULL;
    uint32_t code = AB_ERR_DENIED;
    if (s_lm(l))
        l->msg->sends_recv++;
    if (!(h->id & S_FWD_BIT) || !s_sender_ok(h->sender)) {
        b->c.malformed++; /* answers would not find their record */
        return;
    }
    if (ab_link_in_list(h->via.ptr, h->via.len, l->all->self))
        why = "loop: the message already crossed this broker", code = AB_ERR_NO_AGENT;
    else if (s_sender_here(b, h->sender))
        why = "the sender is an agent of this broker: a peer broker cannot send as it";
    else
        s_origin_ok(b, h, &why);
    if (why) {
        b->msgs->c.refused++;
        AB_COUNT_ERROR(b, code);
        ab_send_error(b, &c->rid, h->id, code, why);
        return;
    }
    h->credit = 1;
    ab_msgs_route(b, c, h, body, now); /* the mailbox code, as for a local SEND */
}

/* A publication from L's peer: sent on toward the other brokers it is for
 * (Header.dests), then fanned out here when this broker is one of them. A
 * copy with no dests comes from a broker that sends topics one hop only:
 * it is for this broker's subscribers alone. */
static void s_on_publish(ab_broker_t *b, ab_link_t *l, ab_header_t *h, zmq_msg_t *body,
                         int64_t now)
{
    const char *why = NULL;
    size_t size = body ? zmq_msg_size(body) : 0;
    if (s_lm(l))
        l->msg->pubs_recv++;
    /* The first broker checked these: a failure here is a hostile peer,
     * counted and dropped (a publication has no answer to carry an error). */
    if (!s_sender_ok(h->sender) || ab_topic_check_n(h->target.ptr, h->target.len, 0) != AB_OK ||
        size > b->cfg->message_max_bytes || h->via.len >= AB_VIA_MAX ||
        h->dests.len >= AB_LINK_DESTS_MAX ||
        ab_link_in_list(h->via.ptr, h->via.len, l->all->self)) {
        b->c.malformed++;
        return;
    }
    int here = !h->dests.len || ab_link_in_list(h->dests.ptr, h->dests.len, l->all->self);
    if (h->dests.len) { /* the others it is for, whatever this broker's grants say */
        char only[AB_LINK_DESTS_MAX], sname[S_SENDER_MAX];
        ab_view_copy(h->dests, only, sizeof only);
        ab_view_copy(h->sender, sname, sizeof sname);
        s_pub_t pub = {l->client, h, sname, body};
        s_pub_route(b, &pub, only);
    }
    if (!here)
        return;
    if (s_sender_here(b, h->sender)) /* as for a SEND: not one of its agents */
        why = "the sender is an agent of this broker: a peer broker cannot publish as it";
    if (why || !s_origin_ok(b, h, &why)) {
        if (b->msgs)
            b->msgs->c.refused++;
        AB_COUNT_ERROR(b, AB_ERR_DENIED);
        AB_LOG_RL(&b->rl, 0x11e8 + (uint64_t)l->idx, now, AB_LOG_WARN,
                  "publication on '%.*s' from broker '%s' dropped: %s", (int)h->target.len,
                  h->target.ptr, l->name, why);
        return;
    }
    ab_msgs_route(b, l->client, h, body, now);
}

void ab_link_msg_on_frame(ab_broker_t *b, ab_link_t *l, const ab_header_t *in, zmq_msg_t *body,
                          const struct ab_key *key, int64_t now)
{
    (void)key; /* a peer key carries any agent's messages; the origin's are checked */
    if (!l->client || !b->msgs)
        return;
    ab_header_t h = *in;
    if (h.kind == AB_KIND_SEND)
        s_on_send(b, l, &h, body, now);
    else
        s_on_publish(b, l, &h, body, now);
}

/* --- brokerctl peers ------------------------------------------------------------- */

void ab_link_msg_peer_info(const ab_link_t *l, Agentbus__PeerInfo *p)
{
    ab_link_topic_peer_info(l, p);
    const struct ab_link_msg *lm = l->msg;
    if (!lm)
        return;
    p->names = (uint32_t)zhashx_size(lm->names);
    p->sends_forwarded = lm->sends_fwd;
    p->sends_received = lm->sends_recv;
    p->publishes_forwarded = lm->pubs_fwd;
    p->publishes_received = lm->pubs_recv;
    p->publishes_dropped = lm->pubs_dropped;
}
