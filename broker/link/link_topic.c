/*
 * link_topic.c - which peer brokers want which publications: topic
 * interest across any number of links (issue 15; docs/links.md "Topics").
 *
 * Interest is a path vector, like the service directory. Each broker tells
 * each up link (LinkMsg INTEREST, the whole set each time) the patterns its
 * own subscribers hold, and, for every broker it learned patterns of from
 * its OTHER links, that broker's patterns with the route to it (split
 * horizon: nothing learned from a link goes back on it, nor a route through
 * the receiver, nor one longer than link-hop-limit from the receiver). A
 * broker named in a route ignores it, so no route runs in a circle.
 *
 * Delivery: the publishing broker finds the brokers ("destinations") whose
 * patterns match, assigns each to exactly one next hop (its shortest
 * route) and sends one copy per next hop carrying the destinations that
 * copy is for (Header.dests), with the crossed list and hops left. Each hop
 * delivers to its own subscribers when it is one of them and splits the
 * rest the same way. The destination sets of the copies are disjoint at
 * every split, so a broker gets a publication at most once without a table
 * of what it has seen, in a line, a triangle or any mesh; a link toward
 * brokers with no matching subscriber carries nothing.
 */
#define AB_LOG_SUBSYS "link"
#include "link_int.h"
#include "msgs.h"
#include "topic.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

/* One destination: a broker whose subscribers hold PATS, and the route to
 * it from here (VIA: the link's peer first, DEST last; HOPS its length). */
typedef struct {
    char dest[AB_LINK_NAME_MAX];
    char via[AB_VIA_MAX];
    uint32_t hops;
    int all;        /* it wants every publication */
    zhashx_t *pats; /* a set */
} s_route_t;

/* A link's topic state: what its peer told this broker. */
struct ab_link_topic {
    zhashx_t *routes; /* dest -> s_route_t (owned); the peer itself is one */
    size_t npats;     /* patterns held over all routes (AB_LINK_TOPICS_MAX) */
    int all;          /* one of its routes wants everything */
    uint64_t rx_sig;  /* of the last INTEREST taken: an equal one changes nothing */
    uint64_t tx_sig;  /* of what was last sent to it */
    int sent;         /* 0: send at the next tick */
};

static const char s_one = 1;

static void s_route_free(void **item)
{
    s_route_t *r = *item;
    if (r) {
        zhashx_destroy(&r->pats);
        free(r);
    }
    *item = NULL;
}

static struct ab_link_topic *s_lt(ab_link_t *l)
{
    if (!l->topic && (l->topic = calloc(1, sizeof *l->topic))) {
        if (!(l->topic->routes = zhashx_new())) {
            free(l->topic);
            l->topic = NULL;
            return NULL;
        }
        zhashx_set_destructor(l->topic->routes, s_route_free);
    }
    return l->topic;
}

void ab_link_topic_free(ab_link_t *l)
{
    if (!l->topic)
        return;
    zhashx_destroy(&l->topic->routes);
    free(l->topic);
    l->topic = NULL;
}

void ab_link_topic_up(ab_link_t *l)
{
    struct ab_link_topic *lt = s_lt(l);
    if (lt)
        lt->sent = 0; /* the whole set at the next tick */
}

void ab_link_topic_down(ab_broker_t *b, ab_link_t *l)
{
    struct ab_link_topic *lt = l->topic;
    if (!lt)
        return;
    if (zhashx_size(lt->routes))
        b->links->topic_gen++; /* what the others learned through it goes */
    zhashx_purge(lt->routes);
    lt->npats = 0;
    lt->all = 0;
    lt->rx_sig = 0;
    lt->sent = 0;
}

/* --- matching ---------------------------------------------------------------------- */

/* 1 when R holds a pattern matching TOPIC: the topic itself or a prefix
 * ending in a dot ("a." and "a.b." for "a.b.c"). */
static int s_matches(const s_route_t *r, const char *topic)
{
    if (r->all)
        return 1;
    if (!zhashx_size(r->pats))
        return 0;
    if (zhashx_lookup(r->pats, topic))
        return 1;
    char buf[AB_NAME_MAX];
    for (size_t i = 0; topic[i] && i + 1 < sizeof buf; i++) {
        buf[i] = topic[i];
        if (topic[i] == '.') {
            buf[i + 1] = '\0';
            if (zhashx_lookup(r->pats, buf))
                return 1;
        }
    }
    return 0;
}

/* 1 when a name of comma-separated list A is in list B. */
static int s_lists_meet(const char *a, const char *b, size_t blen)
{
    char name[AB_LINK_NAME_MAX];
    while (*a) {
        size_t n = strcspn(a, ",");
        if (n < sizeof name) {
            memcpy(name, a, n);
            name[n] = '\0';
            if (ab_link_in_list(b, blen, name))
                return 1;
        }
        a += n + (a[n] == ',');
    }
    return 0;
}

/* Names in comma-separated LIST. */
static size_t s_count(const char *list)
{
    size_t n = *list != '\0';
    for (; *list; list++)
        n += *list == ',';
    return n;
}

typedef struct {
    const char *dest;
    ab_link_t *l;
    uint32_t hops;
} s_choice_t;

/* Keeps R (over L) in CH as DEST's next hop when it is shorter (then the
 * smaller link name) than the one held. Returns the new count. */
static size_t s_choose(s_choice_t *ch, size_t n, ab_link_t *l, const s_route_t *r)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(ch[i].dest, r->dest))
            continue;
        if (r->hops < ch[i].hops ||
            (r->hops == ch[i].hops && strcmp(l->name, ch[i].l->name) < 0))
            ch[i] = (s_choice_t){r->dest, l, r->hops};
        return n;
    }
    if (n == AB_LINK_TOPIC_DESTS_MAX)
        return n; /* bounded: brokers past it get nothing (counted by the caller) */
    ch[n] = (s_choice_t){r->dest, l, r->hops};
    return n + 1;
}

/* Adds DEST to the NW names of W (once; bounded). Returns the new count. */
static size_t s_want(const char **w, size_t nw, const char *dest)
{
    for (size_t i = 0; i < nw; i++)
        if (!strcmp(w[i], dest))
            return nw;
    if (nw == AB_LINK_TOPIC_DESTS_MAX)
        return nw;
    w[nw] = dest;
    return nw + 1;
}

size_t ab_link_topic_route(ab_broker_t *b, const char *topic, const char *crossed,
                           uint32_t hops_left, const char *only, ab_link_topic_fn *fn, void *arg)
{
    struct ab_links *ls = b->links;
    s_choice_t ch[AB_LINK_TOPIC_DESTS_MAX];
    const char *want[AB_LINK_TOPIC_DESTS_MAX];
    size_t n = 0, nw = 0, clen = strlen(crossed), copies = 0;
    for (int i = 0; i < AB_LINKS_MAX; i++) {
        ab_link_t *l = ls->l[i];
        if (!l || !l->up || !l->topic || ab_link_in_list(crossed, clen, l->name))
            continue;
        for (s_route_t *r = zhashx_first(l->topic->routes); r;
             r = zhashx_next(l->topic->routes)) {
            if (!strcmp(r->dest, ls->self) ||
                (only ? !ab_link_in_list(only, strlen(only), r->dest) : !s_matches(r, topic)))
                continue;
            if (!only)
                nw = s_want(want, nw, r->dest);
            /* never past the hop limit, never back through the crossed */
            if (r->hops <= hops_left && !s_lists_meet(r->via, crossed, clen))
                n = s_choose(ch, n, l, r);
        }
    }
    if (only)
        nw = s_count(only) - (size_t)ab_link_in_list(only, strlen(only), ls->self);
    if (nw > n)
        ls->topic_unroutable += nw - n; /* hop limit, loop, withdrawn, past 64 */
    /* One copy per next hop, with the destinations it is responsible for. */
    char dests[AB_LINK_DESTS_MAX];
    for (int i = 0; i < AB_LINKS_MAX; i++) {
        ab_link_t *l = ls->l[i];
        size_t len = 0;
        dests[0] = '\0';
        for (size_t k = 0; l && k < n; k++)
            if (ch[k].l == l && len + strlen(ch[k].dest) + 2 < sizeof dests)
                len += (size_t)snprintf(dests + len, sizeof dests - len, "%s%s",
                                        len ? "," : "", ch[k].dest);
        if (len) {
            fn(b, l, dests, arg);
            copies++;
        }
    }
    return copies;
}

/* --- what this broker tells its peers -------------------------------------------- */

/* An order-free signature of the patterns of this broker's own subscribers
 * (a pattern held twice counts twice: a false "changed" only costs a resend). */
static uint64_t s_own_sig(ab_broker_t *b)
{
    uint64_t sig = 0, n = 0;
    for (ab_peer_t *p = zhashx_first(b->peers); p; p = zhashx_next(b->peers)) {
        if (!p->subr || p->link)
            continue;
        for (size_t i = 0; i < p->subr->npats; i++, n++) {
            const char *pat = p->subr->pats[i].pattern;
            sig += ab_hash_bytes(pat, strlen(pat)) | 1;
        }
    }
    return sig ^ n << 48;
}

/* The own patterns into M (up to AB_LINK_TOPICS_MAX in PATS; more: all). */
static size_t s_own_fill(ab_broker_t *b, Agentbus__LinkMsg *m, char **pats, zhashx_t *set)
{
    size_t k = 0;
    for (ab_peer_t *p = zhashx_first(b->peers); p; p = zhashx_next(b->peers)) {
        if (!p->subr || p->link)
            continue;
        for (size_t i = 0; i < p->subr->npats && !m->all_topics; i++) {
            char *pat = p->subr->pats[i].pattern;
            if (zhashx_lookup(set, pat))
                continue;
            if (k == AB_LINK_TOPICS_MAX)
                m->all_topics = 1; /* too many to list: the peer sends everything */
            else if (zhashx_insert(set, pat, (void *)&s_one) == 0)
                pats[k++] = pat;
        }
    }
    m->n_topics = m->all_topics ? 0 : k;
    m->topics = pats;
    return m->n_topics;
}

/* The best route (fewest hops, then smaller link name) to each broker
 * learned from links other than TO, that TO may hear: TO not on it and
 * within link-hop-limit of TO. BEST: dest -> s_route_t (not owned). */
static void s_best_for(ab_broker_t *b, ab_link_t *to, zhashx_t *best, zhashx_t *owner)
{
    struct ab_links *ls = b->links;
    uint32_t limit = (uint32_t)b->cfg->link_hop_limit;
    for (int i = 0; i < AB_LINKS_MAX; i++) {
        ab_link_t *l = ls->l[i];
        if (!l || l == to || !l->up || !l->topic)
            continue;
        for (s_route_t *r = zhashx_first(l->topic->routes); r;
             r = zhashx_next(l->topic->routes)) {
            if (r->hops + 1 > limit || !strcmp(r->dest, to->name) ||
                ab_link_in_list(r->via, strlen(r->via), to->name))
                continue;
            s_route_t *o = zhashx_lookup(best, r->dest);
            ab_link_t *ol = o ? zhashx_lookup(owner, r->dest) : NULL;
            if (o && (o->hops < r->hops || (o->hops == r->hops && strcmp(ol->name, l->name) < 0)))
                continue;
            zhashx_update(best, r->dest, r);
            zhashx_update(owner, r->dest, l);
        }
    }
}

/* Fills E (ROUTES) from BEST, at most AB_LINK_TOPICS_MAX patterns in all
 * with the USED own ones (a route past it goes as "all"). Returns how many. */
static size_t s_routes_fill(zhashx_t *best, Agentbus__LinkTopicRoute *e,
                            Agentbus__LinkTopicRoute **pe, char **pats, size_t used)
{
    size_t n = 0;
    /* The receiver takes AB_LINK_TOPIC_DESTS_MAX brokers, this one among them. */
    for (s_route_t *r = zhashx_first(best); r && n + 1 < AB_LINK_TOPIC_DESTS_MAX;
         r = zhashx_next(best), n++) {
        agentbus__link_topic_route__init(&e[n]);
        pe[n] = &e[n];
        e[n].via = r->via;
        e[n].all_topics = r->all || used + zhashx_size(r->pats) > AB_LINK_TOPICS_MAX;
        if (e[n].all_topics)
            continue;
        e[n].topics = pats + used;
        for (const char *p = zhashx_first(r->pats); p; p = zhashx_next(r->pats))
            pats[used + e[n].n_topics++] = (char *)zhashx_cursor(r->pats);
        used += e[n].n_topics;
    }
    return n;
}

static void s_send(ab_broker_t *b, ab_link_t *l)
{
    zhashx_t *set = zhashx_new(), *best = zhashx_new(), *owner = zhashx_new();
    char **pats = calloc(AB_LINK_TOPICS_MAX, sizeof *pats);
    Agentbus__LinkTopicRoute *e = calloc(AB_LINK_TOPIC_DESTS_MAX, sizeof *e);
    Agentbus__LinkTopicRoute **pe = calloc(AB_LINK_TOPIC_DESTS_MAX, sizeof *pe);
    if (set && best && owner && pats && e && pe) {
        Agentbus__LinkMsg m = AGENTBUS__LINK_MSG__INIT;
        m.type = S_LM_INTEREST;
        m.broker = l->all->self;
        size_t used = s_own_fill(b, &m, pats, set);
        s_best_for(b, l, best, owner);
        m.n_routes = s_routes_fill(best, e, pe, pats, used);
        m.routes = pe;
        if (ab_link_send_msg(b, l, &m) == 0)
            l->topic->sent = 1;
    }
    zhashx_destroy(&set);
    zhashx_destroy(&best);
    zhashx_destroy(&owner);
    free(pats);
    free(e);
    free(pe);
}

void ab_link_topic_tick(ab_broker_t *b, int refresh)
{
    struct ab_links *ls = b->links;
    /* What each link hears: the own patterns and every route learned (the
     * generation changes with any of them). */
    uint64_t sig = s_own_sig(b) ^ ls->topic_gen * 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < AB_LINKS_MAX; i++) {
        ab_link_t *l = ls->l[i];
        struct ab_link_topic *lt = l && l->up ? s_lt(l) : NULL;
        if (!lt)
            continue;
        if (refresh || !lt->sent || lt->tx_sig != sig) {
            lt->tx_sig = sig;
            s_send(b, l);
        }
    }
}

/* --- what the peers tell this broker --------------------------------------------- */

/* An order-free signature of INTEREST M. */
static uint64_t s_msg_sig(const Agentbus__LinkMsg *m)
{
    uint64_t sig = (uint64_t)m->all_topics << 62 ^ (uint64_t)m->n_routes << 40;
    for (size_t i = 0; i < m->n_topics; i++)
        sig += ab_hash_bytes(m->topics[i], strlen(m->topics[i])) | 1;
    for (size_t i = 0; i < m->n_routes; i++) {
        const Agentbus__LinkTopicRoute *r = m->routes[i];
        uint64_t s = ab_hash_bytes(r->via, strlen(r->via)) + r->all_topics;
        for (size_t k = 0; k < r->n_topics; k++)
            s += (ab_hash_bytes(r->topics[k], strlen(r->topics[k])) | 1) * 0x100000001b3ull;
        sig += s * 0xff51afd7ed558ccdull;
    }
    return sig;
}

/* A new route of L to DEST over VIA (from here), or NULL (refused). */
static s_route_t *s_route_add(ab_link_t *l, const char *dest, const char *via, uint32_t hops)
{
    struct ab_link_topic *lt = l->topic;
    if (zhashx_size(lt->routes) >= AB_LINK_TOPIC_DESTS_MAX || zhashx_lookup(lt->routes, dest))
        return NULL;
    s_route_t *r = calloc(1, sizeof *r);
    if (!r || !(r->pats = zhashx_new())) {
        free(r);
        return NULL;
    }
    snprintf(r->dest, sizeof r->dest, "%s", dest);
    snprintf(r->via, sizeof r->via, "%s", via);
    r->hops = hops;
    zhashx_insert(lt->routes, r->dest, r);
    return r;
}

/* Takes the patterns of R (ALL: it wants everything); a malformed one is
 * counted, one past AB_LINK_TOPICS_MAX makes R "all". */
static void s_take_pats(ab_broker_t *b, struct ab_link_topic *lt, s_route_t *r, char **pats,
                        size_t n, int all)
{
    r->all = all || n > AB_LINK_TOPICS_MAX - lt->npats;
    for (size_t i = 0; i < n && !r->all; i++) {
        if (ab_topic_check_n(pats[i], strlen(pats[i]), 1) != AB_OK) {
            b->c.malformed++;
            continue;
        }
        if (zhashx_insert(r->pats, pats[i], (void *)&s_one) == 0)
            lt->npats++;
    }
    if (r->all) {
        zhashx_purge(r->pats);
        lt->all = 1;
    }
}

/* 1 when VIA (a route of L's peer, to the broker it names last) is one
 * this broker may take: well formed, neither this broker nor the peer on
 * it, no name twice, and within the crossed list's bounds. DEST: its last. */
static int s_via_ok(const ab_link_t *l, const char *via, char *dest)
{
    size_t len = strlen(via), count = 0;
    if (!len || len + AB_LINK_NAME_MAX + 1 >= AB_VIA_MAX)
        return 0;
    for (const char *p = via; *p;) {
        size_t n = strcspn(p, ",");
        if (!n || n >= AB_LINK_NAME_MAX || ++count >= AB_LINK_HOPS_MAX)
            return 0;
        memcpy(dest, p, n);
        dest[n] = '\0';
        if (!strcmp(dest, l->all->self) || !strcmp(dest, l->name) ||
            ab_link_in_list(via, (size_t)(p - via), dest))
            return 0;
        p += n + (p[n] == ',');
        if (!*p && p[-1] == ',')
            return 0;
    }
    return 1;
}

void ab_link_topic_on_interest(ab_broker_t *b, ab_link_t *l, const Agentbus__LinkMsg *m,
                               int64_t now)
{
    struct ab_link_topic *lt = s_lt(l);
    uint64_t sig = s_msg_sig(m);
    if (!lt || (sig == lt->rx_sig && zhashx_size(lt->routes)))
        return; /* nothing changed */
    lt->rx_sig = sig;
    b->links->topic_gen++;
    zhashx_purge(lt->routes);
    lt->npats = 0;
    lt->all = 0;
    s_route_t *own = s_route_add(l, l->name, l->name, 1);
    if (own)
        s_take_pats(b, lt, own, m->topics, m->n_topics, m->all_topics);
    size_t bad = 0;
    for (size_t i = 0; i < m->n_routes; i++) {
        const Agentbus__LinkTopicRoute *e = m->routes[i];
        char dest[AB_LINK_NAME_MAX], via[AB_VIA_MAX];
        s_route_t *r = NULL;
        if (s_via_ok(l, e->via, dest)) {
            snprintf(via, sizeof via, "%s,%s", l->name, e->via);
            r = s_route_add(l, dest, via, 1 + (uint32_t)s_count(e->via));
        }
        if (!r) {
            bad++;
            continue;
        }
        s_take_pats(b, lt, r, e->topics, e->n_topics, e->all_topics);
    }
    if (bad) {
        b->c.malformed += bad;
        AB_LOG_RL(&b->rl, 0x11f8 + (uint64_t)l->idx, now, AB_LOG_WARN,
                  "link '%s': %zu topic route(s) refused (malformed, through this broker, "
                  "repeated, or past %d)", l->name, bad, AB_LINK_TOPIC_DESTS_MAX);
    }
}

uint64_t ab_link_topic_unroutable(const ab_broker_t *b)
{
    return b->links ? b->links->topic_unroutable : 0;
}

void ab_link_topic_peer_info(const ab_link_t *l, Agentbus__PeerInfo *p)
{
    const struct ab_link_topic *lt = l->topic;
    p->topics = !lt ? 0 : lt->all ? UINT32_MAX : (uint32_t)lt->npats;
}
