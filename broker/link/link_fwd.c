/*
 * link_fwd.c - requests across links: what the core sends to a link's
 * peers, the forwarded header (crossed brokers, hops left, origin), the
 * checks at the far side, answers coming back; CONTROL "peers".
 *
 * Exactly once across a link rests on the core's own rule: an answer is
 * taken only from the worker that holds the request. A request forwarded
 * over link L is held by L's remote worker for its service; when L is lost
 * that worker is dropped and the request goes back to the queue (or gets
 * its error), so an answer arriving later over L finds another holder (or
 * none) and is dropped and counted.
 */
#define AB_LOG_SUBSYS "link"
#include "link_int.h"
#include "auth.h"
#include "compress.h"
#include "request.h"
#include "router.h"
#include "service.h"
#include "agentbus.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* --- compression on links ------------------------------------------------------------ */

static void s_free_block(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* A link is the slow hop, so a payload crossing it is lz4-compressed from
 * link-compress-threshold-bytes (256 B; clients do it from 1 KiB) when it
 * is not already compressed (nor tried: LZ4_SKIPPED) and lz4 saves enough.
 * PAYLOAD is replaced and H flagged. The caller knows the far reader
 * reads lz4. */
static void s_squeeze(ab_broker_t *b, ab_link_t *l, ab_header_t *h, zmq_msg_t *payload)
{
    size_t t = b->cfg->link_compress_threshold_bytes, n = payload ? zmq_msg_size(payload) : 0;
    if (!t || n < t || (h->flags & (AB_FLAG_LZ4 | AB_FLAG_LZ4_SKIPPED)))
        return;
    void *z;
    size_t zl;
    int rc = ab_lz4_compress(zmq_msg_data(payload), n, (unsigned)b->cfg->compress_min_saving_pct,
                             &z, &zl);
    zmq_msg_t m;
    if (rc != 1 || zmq_msg_init_data(&m, z, zl, s_free_block, NULL) != 0) {
        if (rc == 1)
            free(z);
        h->flags |= AB_FLAG_LZ4_SKIPPED; /* not tried again further on */
        b->c.lz4_skipped++;
        return;
    }
    zmq_msg_move(payload, &m); /* closes the plain one */
    h->flags |= AB_FLAG_LZ4;
    h->original_size = n;
    l->compressed++;
    b->c.lz4_msgs++;
    b->c.lz4_wire_bytes += zl;
    b->c.lz4_original_bytes += n;
}

/* The first broker compressed R for the link because every worker behind
 * this broker's entry read lz4 then; by dispatch the set may hold one that
 * does not (a worker joined or left while R crossed). The agent sent R
 * plain or to a broker that reads lz4, so R is made plain here rather than
 * refused. Requests from local clients keep the core's rule (UNSUPPORTED:
 * the broker never decompresses what its own client chose to compress). */
int ab_link_req_plain(ab_broker_t *b, ab_req_t *r)
{
    if (!r->fwd || !(r->flags & AB_FLAG_LZ4) || !r->has_payload)
        return AB_EUNSUPPORTED;
    if (!ab_req_payload(r))
        return AB_ENOMEM;
    size_t zl = zmq_msg_size(&r->payload);
    zmq_msg_t m;
    int rc = ab_lz4_check(zl, r->original_size, b->limits.max_payload);
    if (rc == AB_OK && !ab_req_held_room(b, r, r->original_size))
        return AB_EBUSY; /* plain, it would pass max-held-bytes: held bytes count what is held */
    if (rc == AB_OK && zmq_msg_init_size(&m, (size_t)r->original_size) != 0)
        return AB_ENOMEM;
    if (rc == AB_OK && (rc = ab_lz4_decompress(zmq_msg_data(&r->payload), zl, zmq_msg_data(&m),
                                               (size_t)r->original_size)) != AB_OK)
        zmq_msg_close(&m);
    if (rc != AB_OK)
        return rc;
    zmq_msg_move(&r->payload, &m); /* releases the compressed block */
    ab_req_held_resize(b, r, r->original_size);
    r->flags &= ~(uint32_t)AB_FLAG_LZ4;
    r->original_size = 0;
    b->c.link_lz4_plain++;
    return AB_OK;
}

/* H, changed by this broker, encoded again and sent on L with PAYLOAD. 0 or -1. */
static int s_send_header(ab_broker_t *b, ab_link_t *l, const ab_header_t *h, zmq_msg_t *payload)
{
    uint8_t stack[1024];
    size_t n;
    uint8_t *hb = ab_header_encode_buf(h, stack, sizeof stack, &n);
    int rc = hb ? ab_link_send(b, l, hb, n, payload) : -1;
    if (hb != stack)
        free(hb);
    return rc;
}

/* An answer (BUF,LEN parsed as H) to link client P crossing the link: its
 * payload compressed when the agent that asked reads lz4 (the request,
 * still held while it is answered, carries ACCEPT_LZ4 from the first
 * broker). 0 sent or -1. */
static int s_send_answer(ab_broker_t *b, ab_link_t *l, ab_peer_t *p, ab_header_t *h,
                         const uint8_t *buf, size_t len, zmq_msg_t *payload)
{
    ab_req_t *r = payload && h->kind != AB_KIND_ERROR
                      ? ab_idmap_get(&p->reqs_by_id, h->correlation_id) : NULL;
    uint32_t before = h->flags;
    if (r && (r->flags & AB_FLAG_ACCEPT_LZ4))
        s_squeeze(b, l, h, payload);
    if (h->flags == before)
        return ab_link_send(b, l, buf, len, payload);
    return s_send_header(b, l, h, payload);
}

/* --- what the core sends to link peers -------------------------------------------- */

/* A request's id on a link: its broker id with the dispatch it belongs to
 * (its attempts then) in bits 55..62 (bit 63 is link_msg.c's forwarded
 * SENDs). A link lost and back takes a request back and sends it to the
 * same peer again, while the peer may still run the first copy (its own
 * side of the link stayed up): the first copy's answers must not pass for
 * the second's, or the client's stream interleaves two runs. */
#define S_ATTEMPT_SHIFT 55
#define S_BID_MASK ((1ull << S_ATTEMPT_SHIFT) - 1)

static uint64_t s_link_id(const ab_req_t *r)
{
    return r->bid | (uint64_t)r->attempts << S_ATTEMPT_SHIFT;
}

/* CANCEL H (BUF,LEN) for a request held by remote worker P: it names the
 * request as the link knows it (s_link_id). 0 or -1. */
static int s_send_cancel(ab_broker_t *b, ab_link_t *l, ab_header_t *h, const uint8_t *buf,
                         size_t len, zmq_msg_t *payload)
{
    ab_req_t *r = ab_idmap_get(&b->pending, h->correlation_id);
    if (!r)
        return ab_link_send(b, l, buf, len, payload);
    h->correlation_id = s_link_id(r);
    return s_send_header(b, l, h, payload);
}

int ab_link_emit(ab_broker_t *b, ab_peer_t *p, const uint8_t *buf, size_t len, zmq_msg_t *hmsg,
                 zmq_msg_t *payload)
{
    ab_link_t *l = p->link;
    if (hmsg)
        buf = zmq_msg_data(hmsg), len = zmq_msg_size(hmsg);
    ab_header_t h;
    int rc = 0;
    if (p->link_role == AB_LINK_DEALER) {
        rc = l ? ab_link_dealer_emit(b, l, buf, len, payload) : -1; /* batching.c's flush */
    } else if (!l || !l->up) {
        errno = EHOSTUNREACH;
        rc = -1;
    } else if (ab_header_parse(buf, len, &h) != AB_OK) {
        rc = 0; /* the core's own encoding: cannot happen */
    } else if (p->link_role == AB_LINK_WORKER && h.kind == AB_KIND_CANCEL) {
        rc = s_send_cancel(b, l, &h, buf, len, payload);
    } else if (p->link_role == AB_LINK_CLIENT &&
               (h.kind == AB_KIND_PARTIAL || h.kind == AB_KIND_REPLY || h.kind == AB_KIND_ERROR)) {
        rc = s_send_answer(b, l, p, &h, buf, len, payload);
    } /* else: REGISTER answers, HELLO, probes: a link's peers need none */
    if (hmsg)
        zmq_msg_close(hmsg);
    if (payload)
        zmq_msg_close(payload);
    return rc;
}

int ab_link_forward(ab_broker_t *b, ab_worker_rec_t *w, ab_req_t *r, ab_header_t *h,
                    zmq_msg_t *payload)
{
    ab_link_t *l = w->peer->link;
    if (!l || !l->up) {
        errno = EHOSTUNREACH;
        return -1;
    }
    char via[AB_VIA_MAX];
    const struct ab_fwd *f = r->fwd;
    if (f && f->via[0]) { /* the brokers it crossed, then this one */
        int n = snprintf(via, sizeof via, "%s,%s", f->via, l->all->self);
        if (n < 0 || (size_t)n >= sizeof via)
            return -1;
        h->via = ab_view_of(via);
    } else {
        h->via = ab_view_of(l->all->self);
    }
    h->id = s_link_id(r);
    h->hops_left = (f ? f->hops_left : (uint32_t)b->cfg->link_hop_limit) - 1;
    if (f) {
        h->origin_key = ab_view_of(f->origin_key);
        h->origin_role = f->origin_role;
    } else {
        ab_peer_t *o = r->owner ? r->owner : ab_peer_lookup(b, &r->client);
        const char *pub = ab_peer_identity(o); /* "local": ipc, no key to name */
        const struct ab_key *k = o ? o->authkey : NULL;
        h->origin_key = ab_view_of(pub && strcmp(pub, "local") ? pub : NULL);
        h->origin_role = k ? (uint32_t)ab_key_role(k) + 1 : 0;
    }
    const ab_remote_t *rm = w->peer->remote;
    if (payload && rm && rm->lz4)
        s_squeeze(b, l, h, payload);
    uint8_t stack[2048];
    size_t len;
    uint8_t *buf = ab_header_encode_buf(h, stack, sizeof stack, &len);
    if (!buf)
        return -1;
    int rc = ab_link_send(b, l, buf, len, payload);
    if (buf != stack)
        free(buf);
    if (rc == 0)
        l->forwarded++;
    return rc;
}

/* ab_link_may_take for a request that crossed the brokers in VIA (NULL:
 * it comes from this broker's own client) with LEFT links still to cross. */
static int s_may_take(const ab_worker_rec_t *w, const char *via, uint32_t left)
{
    ab_link_t *l = w->peer->link;
    if (w->peer->link_role != AB_LINK_WORKER)
        return 1;
    if (!l || !l->up)
        return 0;
    if (left == 0)
        return 0; /* hop limit */
    size_t vlen = via ? strlen(via) : 0;
    if (via && (ab_link_in_list(via, vlen, l->name) || !strcmp(l->name, l->all->self)))
        return 0; /* it came from there: no loops */
    /* Its crossed list must take this broker's name (ab_link_forward):
     * else the send failed and the core dropped the remote worker as
     * unreachable, a peer's service gone while its link stayed up. */
    if (vlen && vlen + 1 + strlen(l->all->self) >= AB_VIA_MAX)
        return 0;
    const ab_remote_t *rm = w->peer->remote;
    return !rm || rm->hops <= left - 1; /* the peer can reach it in the hops left */
}

int ab_link_may_take(const ab_broker_t *b, const ab_worker_rec_t *w, const ab_req_t *r)
{
    if (w->peer->link_role != AB_LINK_WORKER)
        return 1; /* before B is read: placement's callers may have none */
    const struct ab_fwd *f = r->fwd;
    return s_may_take(w, f ? f->via : NULL, f ? f->hops_left : (uint32_t)b->cfg->link_hop_limit);
}

size_t ab_link_fwd_via_room(const ab_header_t *h)
{
    return (h->via.len < AB_VIA_MAX - 1 ? h->via.len : AB_VIA_MAX - 1) + 1;
}

void ab_link_fwd_fill(struct ab_fwd *f, const ab_header_t *h)
{
    ab_view_copy(h->via, f->via, ab_link_fwd_via_room(h));
    ab_view_copy(h->origin_key, f->origin_key, sizeof f->origin_key);
    f->hops_left = h->hops_left;
    f->origin_role = h->origin_role;
}

int ab_link_req_new(ab_req_t *r, const ab_header_t *h)
{
    size_t room = ab_link_fwd_via_room(h);
    struct ab_fwd *f = &r->fwd_room.f;
    if (room <= sizeof r->fwd_room.via) {
        f->via = r->fwd_room.via;
    } else { /* one block, freed whole */
        if (!(f = malloc(sizeof *f + room)))
            return -1;
        f->via = (char *)(f + 1);
    }
    ab_link_fwd_fill(f, h);
    r->fwd = f;
    return 0;
}

void ab_link_req_free(ab_req_t *r)
{
    if (r->fwd != &r->fwd_room.f)
        free(r->fwd);
    r->fwd = NULL;
}

/* --- requests a peer forwards here ------------------------------------------------ */

int ab_link_routable(ab_broker_t *b, ab_service_t *s, const ab_header_t *h)
{
    if (!b->links || zlistx_size(s->workers) == 0)
        return 1; /* no workers at all: the core's rules (queue, startup grace) */
    for (ab_worker_rec_t *w = zlistx_first(s->workers); w; w = zlistx_next(s->workers))
        if (w->peer->link_role != AB_LINK_WORKER)
            return 1;
    /* What the request record will hold (ab_link_req_new), read here
     * without a record: this runs for every request to a remote service. */
    char via[AB_VIA_MAX];
    const char *vp = NULL;
    uint32_t left = (uint32_t)b->cfg->link_hop_limit;
    if (h->via.len) {
        ab_view_copy(h->via, via, sizeof via);
        vp = via, left = h->hops_left;
    }
    for (ab_worker_rec_t *w = zlistx_first(s->workers); w; w = zlistx_next(s->workers))
        if (s_may_take(w, vp, left))
            return 1;
    return 0;
}

/* 1 when S has a worker that may take a request that crossed F: a local
 * one, or a link that may take it on. */
static int s_routable(ab_service_t *s, const struct ab_fwd *f)
{
    for (ab_worker_rec_t *w = zlistx_first(s->workers); w; w = zlistx_next(s->workers))
        if (s_may_take(w, f->via, f->hops_left))
            return 1;
    return 0;
}

/* The trusted key PUB names (ab_auth_key_lookup), kept in L while the
 * keys are not read again: a lookup hashes the whole key text. */
static const struct ab_key *s_origin_key(ab_broker_t *b, ab_link_t *l, const char *pub)
{
    uint64_t gen = ab_auth_keys_gen(b);
    if (gen && l->okey_gen == gen && !strcmp(l->okey_pub, pub))
        return l->okey;
    const struct ab_key *k = ab_auth_key_lookup(b, pub);
    snprintf(l->okey_pub, sizeof l->okey_pub, "%s", pub);
    l->okey = k, l->okey_gen = gen;
    return k;
}

/* The role the first broker vouches for, and the checks that hold here:
 * only an agent's or an admin's request crosses a link, and a key this
 * broker trusts keeps its own grants. 1 allowed, else 0 with *WHY. */
static int s_origin_ok(ab_broker_t *b, ab_link_t *l, const ab_header_t *h,
                       const struct ab_fwd *f, const struct ab_key *linkkey, const char **why)
{
    int role = (int)f->origin_role - 1;
    if (b->cfg->auth_curve && f->origin_role == 0) {
        *why = "the request's origin is unknown (the first broker runs without auth)";
        return 0;
    }
    if (f->origin_role && role != AB_KEYROLE_AGENT && role != AB_KEYROLE_ADMIN) {
        *why = "only an agent's or an admin's request crosses a link";
        return 0;
    }
    /* ab_auth_check sets its text whether or not it refuses. */
    const struct ab_key *k = s_origin_key(b, l, f->origin_key);
    const char *w = NULL;
    if ((k && !ab_auth_check(b, k, h, &w)) || (linkkey && !ab_auth_check(b, linkkey, h, &w))) {
        *why = w;
        return 0;
    }
    return 1;
}

void ab_link_fwd_request(ab_broker_t *b, ab_link_t *l, const ab_header_t *in, zmq_msg_t *body,
                         const struct ab_key *key, int64_t now)
{
    ab_peer_t *c = l->client;
    if (!c)
        return;
    ab_header_t h = *in;
    /* The checks read the forwarded fields as the request record will
     * hold them (ab_link_req_new), here on the stack: no allocation for a
     * request that may be refused, nor a second one for one taken. */
    struct ab_fwd fwd;
    char via[AB_VIA_MAX];
    fwd.via = via;
    ab_link_fwd_fill(&fwd, &h);
    const char *why = NULL;
    uint32_t code = AB_ERR_DENIED;
    char name[AB_NAME_MAX], text[AB_NAME_MAX + 96];
    ab_view_copy(h.target, name, sizeof name);
    ab_service_t *s = ab_service_get(b, name, 0);
    l->received++;
    if (ab_link_in_list(fwd.via, strlen(fwd.via), l->all->self)) {
        why = "loop: the request already crossed this broker", code = AB_ERR_NO_SERVICE;
    } else if (!s_origin_ok(b, l, &h, &fwd, key, &why)) {
        ;
    } else if (!s || !s_routable(s, &fwd)) {
        snprintf(text, sizeof text, "no route to service '%s' from broker '%s'", name,
                 l->all->self);
        why = text, code = AB_ERR_NO_SERVICE;
    }
    if (why) {
        AB_COUNT_ERROR(b, code);
        ab_send_error(b, &c->rid, h.id, code, why);
        return;
    }
    ab_req_body_t rb = ab_req_body_of_msg(body);
    /* The admin bit is vouched for by the first broker's check of its agent. */
    h.flags &= ~(uint32_t)AB_FLAG_ADMIN;
    if (h.origin_role == AB_KEYROLE_ADMIN + 1)
        h.flags |= AB_FLAG_ADMIN;
    if (h.via.len && h.target.len < AB_NAME_MAX) {
        /* S is the service H names, and s_routable checked it as
         * ab_req_on_request's ab_link_routable would (same crossed list and
         * hops left; it refuses more: a service with no worker at all):
         * neither is done twice per forwarded request. */
        ab_req_on_forwarded(b, c, &c->rid, &h, s, &rb, now);
        return;
    }
    if (!h.via.len)
        h.via = ab_view_of(l->name); /* marks it as forwarded (ab_req_new) */
    ab_req_on_request(b, c, &c->rid, &h, &rb, now);
}

void ab_link_fwd_answer(ab_broker_t *b, ab_link_t *l, const ab_header_t *h, zmq_msg_t *body)
{
    uint64_t corr = h->correlation_id;
    ab_req_t *r = ab_idmap_get(&b->pending, corr & S_BID_MASK);
    ab_worker_rec_t *w = r && r->state != AB_REQ_QUEUED ? r->worker : NULL;
    if (!w || w->peer->link != l || w->peer->link_role != AB_LINK_WORKER ||
        ((corr >> S_ATTEMPT_SHIFT) & 0xff) != r->attempts) {
        /* the link was lost and the request moved on: to another worker,
         * or to this peer again (an earlier copy's answer) */
        b->c.replies_dropped++;
        if (h->kind != AB_KIND_PARTIAL)
            b->c.duplicates_dropped++;
        return;
    }
    if (h->kind != AB_KIND_PARTIAL)
        l->answered++;
    ab_header_t a = *h;
    a.correlation_id = r->bid;
    ab_req_on_answer(b, w->peer, &w->peer->rid, &a, body);
}

/* --- CONTROL "peers", services ----------------------------------------------------- */

int ab_link_control_peers(ab_broker_t *b, uint8_t **out, size_t *len)
{
    Agentbus__PeerInfo infos[AB_LINKS_MAX], *ps[AB_LINKS_MAX];
    Agentbus__PeerList pl = AGENTBUS__PEER_LIST__INIT;
    int64_t now = ab_now_ms();
    size_t n = 0;
    for (int i = 0; b->links && i < AB_LINKS_MAX; i++) {
        ab_link_t *l = b->links->l[i];
        if (!l)
            continue;
        Agentbus__PeerInfo *p = &infos[n];
        *p = (Agentbus__PeerInfo)AGENTBUS__PEER_INFO__INIT;
        p->name = l->name;
        p->endpoint = l->endpoint;
        p->state = l->up ? "up" : l->dealer ? "connecting" : "down";
        p->rtt_us = l->rtt_us;
        p->forwarded = l->forwarded, p->received = l->received, p->answered = l->answered;
        p->failed = l->failed, p->ups = l->ups, p->compressed = l->compressed;
        p->dir_refused = l->dir_refused;
        p->services = (uint32_t)zhashx_size(l->remote);
        ab_link_msg_peer_info(l, p);
        p->up_ms = l->up ? (uint64_t)(now - l->up_since_ms) : 0;
        p->transport = !l->up ? "" : (l->dealer && l->out_up && (!l->in ||
                                      strcmp(l->all->self, l->name) < 0)) ? "dialed" : "accepted";
        ps[n] = p;
        n++;
    }
    pl.n_peers = n;
    pl.peers = ps;
    *len = agentbus__peer_list__get_packed_size(&pl);
    *out = malloc(*len ? *len : 1);
    if (!*out)
        return -1;
    agentbus__peer_list__pack(&pl, *out);
    return 0;
}

uint32_t ab_link_service_remote(ab_broker_t *b, const ab_service_t *s, char *buf, size_t cap)
{
    (void)b;
    uint32_t n = 0;
    size_t used = 0;
    buf[0] = '\0';
    for (ab_worker_rec_t *w = zlistx_first(s->workers); w; w = zlistx_next(s->workers)) {
        if (w->peer->link_role != AB_LINK_WORKER || !w->peer->link)
            continue;
        n++;
        int k = snprintf(buf + used, cap - used, "%s%s", used ? "," : "", w->peer->link->name);
        if (k > 0 && (size_t)k < cap - used)
            used += (size_t)k;
    }
    return n;
}

uint32_t ab_link_hops(const ab_worker_rec_t *w)
{
    const ab_remote_t *r = w->peer->link ? w->peer->remote : NULL;
    return r ? r->hops + 1 : UINT32_MAX;
}
