/*
 * link.c - broker links: the records, their connections, HELLO, heartbeats
 * and loss (see link.h; dialing in link_dial.c, directory in link_dir.c,
 * forwarding in link_fwd.c).
 *
 * A link is up while one of its connections has heard from the peer within
 * AB_LINK_SILENT_IVL heartbeat intervals. A dialed connection that goes
 * silent is closed and dialed again from scratch (a fresh DEALER: nothing
 * queued for the old connection is delivered late); an accepted one that
 * goes silent is shut down and its peer dropped. When no connection is
 * left the link is down: its remote workers and its client are dropped.
 */
#define AB_LOG_SUBSYS "link"
#include "link_int.h"
#include "auth.h"
#include "batching.h"
#include "batch.h"
#include "router.h"
#include "request.h"
#include "service.h"
#include "agentbus.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

static void s_tick(ab_broker_t *b, int64_t now);

/* HELLO and its answer carry a name and a few numbers: a larger one is not
 * decoded. */
#define S_HELLO_MAX 1024
/* Slots of the link client's request index (ab_peer_t.reqs_by_id): it
 * never shrinks below them, and holds half as many requests without
 * growing (16 KiB per link). */
#define S_CLIENT_IDS 1024

/* --- records ---------------------------------------------------------------- */

static void s_remote_free(void **item)
{
    free(*item);
    *item = NULL;
}

static ab_link_t *s_link_new(struct ab_links *ls)
{
    if (ls->n >= AB_LINKS_MAX)
        return NULL;
    ab_link_t *l = calloc(1, sizeof *l);
    if (!l || !(l->remote = zhashx_new())) {
        free(l);
        return NULL;
    }
    zhashx_set_destructor(l->remote, s_remote_free);
    l->all = ls;
    for (l->idx = 0; ls->l[l->idx]; l->idx++)
        ;
    ls->l[l->idx] = l;
    ls->n++;
    return l;
}

/* Forgets what L's dialed connection has gathered (it is closed). */
static void s_outq_free(ab_broker_t *b, ab_link_t *l)
{
    if (l->outq) {
        ab_batching_peer_free(b, l->outq);
        ab_peer_set_name(l->outq, "", "");
        free(l->outq);
        l->outq = NULL;
    }
    l->broken = 0;
}

static void s_link_free(ab_broker_t *b, ab_link_t *l)
{
    struct ab_links *ls = l->all;
    if (l->in) /* at exit */
        l->in->link = NULL;
    ls->l[l->idx] = NULL;
    ls->n--;
    s_outq_free(b, l);
    ab_link_close_dealer(l);
    ab_link_lookup_free(l);
    zhashx_destroy(&l->remote);
    ab_link_msg_free(l);
    ab_link_topic_free(l);
    free(l);
}

void ab_link_rid(ab_link_t *l, ab_rid_t *rid)
{
    /* 0xff and 14 bytes: libzmq's own ids are 5 bytes from 0x00, and the
     * random nonce is never shown, so no connection can take one. */
    uint32_t seq = ++l->all->seq;
    rid->len = 14;
    rid->bytes[0] = 0xff;
    memcpy(rid->bytes + 1, l->all->nonce, 8);
    rid->bytes[9] = (uint8_t)l->idx;
    memcpy(rid->bytes + 10, &seq, 4);
}

int ab_link_in_list(const char *list, size_t len, const char *name)
{
    size_t n = strlen(name), i = 0;
    while (i < len) {
        size_t j = i;
        while (j < len && list[j] != ',')
            j++;
        if (j - i == n && memcmp(list + i, name, n) == 0)
            return 1;
        i = j + 1;
    }
    return 0;
}

/* --- dialing ---------------------------------------------------------------- */

/* L's dealer with a monitor telling when its connection is made and lost
 * (s_watch), in place of ZMQ_IMMEDIATE: with IMMEDIATE, libzmq ends the
 * dealer's pipe as soon as it finds the connection gone, even between two
 * frames of a message the broker is reading, and then aborts the process
 * (fq.cpp: "!_more"). Without it, what arrived before the loss stays
 * readable, and the broker itself drops the connection once it has read it.
 * 0, or -1 with D closed. */
/* The config refuses more --peer entries than there are links. */
_Static_assert(AB_MAX_PEERS <= AB_LINKS_MAX, "AB_MAX_PEERS (config.h) over AB_LINKS_MAX");

/* One --peer entry: tcp://HOST:PORT[#KEY]. 0 or -1 (logged). */
static int s_peer_add(ab_broker_t *b, const char *spec)
{
    char ep[256];
    const char *hash = strchr(spec, '#');
    size_t n = hash ? (size_t)(hash - spec) : strlen(spec);
    if (strncmp(spec, "tcp://", 6) != 0 || n >= sizeof ep || n <= 6) {
        AB_ERROR("invalid peer '%s': expected tcp://HOST:PORT#KEY", spec);
        return -1;
    }
    snprintf(ep, sizeof ep, "%.*s", (int)n, spec);
    ab_link_t *l = s_link_new(b->links);
    if (!l) {
        AB_ERROR("too many peers (at most %d)", AB_LINKS_MAX);
        return -1;
    }
    snprintf(l->endpoint, sizeof l->endpoint, "%s", ep);
    if (b->cfg->auth_curve && (!hash || ab_link_peer_key(hash + 1, l->key) != 0)) {
        AB_ERROR("peer %s: with --auth curve its public key is needed: %s#KEY (Z85 key or the "
                 "path of its public certificate)", ep, ep);
        return -1;
    }
    if (!b->cfg->auth_curve && hash)
        AB_WARN("peer %s: key ignored: --auth none, so the link is not encrypted", ep);
    return ab_link_dial(b, l);
}

int ab_link_init(ab_broker_t *b)
{
    struct ab_links *ls = calloc(1, sizeof *ls);
    if (!ls)
        return -1;
    b->links = ls;
    if (ab_link_msg_init(b) != 0)
        return -1;
    if (getrandom(ls->nonce, sizeof ls->nonce, 0) != (ssize_t)sizeof ls->nonce) {
        uint64_t v = ab_now_ns();
        memcpy(ls->nonce, &v, 8);
    }
    if (getrandom(&ls->session, sizeof ls->session, 0) != (ssize_t)sizeof ls->session)
        ls->session = ab_now_ns() ^ (uint64_t)getpid() << 32;
    const char *name = b->cfg->name ? b->cfg->name : "";
    if (!name[0]) {
        char host[AB_LINK_NAME_MAX] = "";
        gethostname(host, sizeof host - 1);
        snprintf(ls->self, sizeof ls->self, "%s", host[0] ? host : "broker");
    } else if (strlen(name) >= AB_LINK_NAME_MAX || strchr(name, ',')) {
        AB_ERROR("invalid name '%s': at most %d characters, no comma", name, AB_LINK_NAME_MAX - 1);
        return -1;
    } else {
        snprintf(ls->self, sizeof ls->self, "%s", name);
    }
    char *peers = strdup(b->cfg->peers ? b->cfg->peers : "");
    int rc = peers ? 0 : -1;
    for (char *save = NULL, *tok = peers ? strtok_r(peers, ",", &save) : NULL; tok && rc == 0;
         tok = strtok_r(NULL, ",", &save))
        rc = s_peer_add(b, tok);
    free(peers);
    if (rc == 0 && (ls->timer = ab_broker_every(b, b->cfg->link_heartbeat_ms, s_tick)) < 0)
        rc = -1;
    if (rc == 0 && ls->n)
        AB_INFO("broker '%s': %d peer(s) to dial", ls->self, ls->n);
    return rc;
}

void ab_link_fini(ab_broker_t *b)
{
    struct ab_links *ls = b->links;
    if (!ls)
        return;
    for (int i = 0; i < AB_LINKS_MAX; i++)
        if (ls->l[i])
            s_link_free(b, ls->l[i]);
    ab_link_msg_fini(b);
    free(ls);
    b->links = NULL;
}

/* --- sending ---------------------------------------------------------------- */

/* 1 when L's traffic goes on the connection it dialed: when both are up,
 * the one dialed by the broker with the smaller name (both sides agree). */
static int s_use_dealer(const ab_link_t *l)
{
    int out = l->dealer && l->out_up, in = l->in != NULL;
    if (out && in)
        return strcmp(l->all->self, l->name) < 0;
    return out;
}

int ab_link_dealer_emit(ab_broker_t *b, ab_link_t *l, const uint8_t *buf, size_t len,
                        zmq_msg_t *payload)
{
    int more = payload ? ZMQ_SNDMORE : 0;
    size_t plen = payload ? zmq_msg_size(payload) : 0;
    if (l->dealer && ab_link_out_admit(b, l, len, plen, payload != NULL) != 0)
        return -1; /* its peer does not read: broken, counted (link_out.c) */
    if (!l->dealer || zmq_send(l->dealer, buf, len, more | ZMQ_DONTWAIT) < 0 ||
        (payload && zmq_msg_send(payload, l->dealer, 0) < 0)) {
        /* What was gathered is lost with this connection: it is dialed
         * again and the link taken down when it has no other, so that the
         * requests it carried are re-dispatched (s_broken), never left to
         * wait for their deadlines. */
        l->broken = 1;
        b->c.send_failures++;
        return -1;
    }
    b->c.msgs_out++;
    b->c.bytes_out += len + plen;
    return 0;
}

/* The send queue of L's dialed connection: a peer record of its own, never
 * in the peer table (link.h, AB_LINK_DEALER). NULL out of memory. */
static ab_peer_t *s_outq(ab_link_t *l)
{
    if (!l->outq && (l->outq = calloc(1, sizeof *l->outq))) {
        l->outq->link = l;
        l->outq->link_role = AB_LINK_DEALER;
        l->outq->fd = -1;
        ab_peer_set_name(l->outq, "link:", l->name);
    }
    return l->outq;
}

/* Batching (batching.c) on both connections when the broker batches: the
 * first message of a loop turn goes as it is at the end of the turn, more
 * in the same turn leave together as one BATCH. The far broker reads BATCH
 * on the ROUTER as from any peer and on its dealer in s_on_batch. */
int ab_link_send(ab_broker_t *b, ab_link_t *l, const uint8_t *buf, size_t len,
                 zmq_msg_t *payload)
{
    if (s_use_dealer(l)) {
        ab_peer_t *q = b->cfg->batch && !l->broken ? s_outq(l) : NULL;
        return q ? ab_batching_send(b, q, buf, len, payload)
                 : ab_link_dealer_emit(b, l, buf, len, payload);
    }
    if (l->in) {
        if (ab_peer_beyond(b, l->in))
            return -1; /* counted; shut down at the end of the turn, the link with it */
        int rc = b->cfg->batch ? ab_batching_send(b, l->in, buf, len, payload)
                               : ab_send_raw_peer(b, l->in, &l->in->rid, buf, len, payload);
        if (rc != 0)
            l->in_broken = 1; /* as a dialed connection's (ab_link_dealer_emit) */
        return rc;
    }
    errno = EHOSTUNREACH;
    return -1;
}

int ab_link_over(ab_broker_t *b, ab_link_t *l)
{
    if (s_use_dealer(l))
        return ab_link_out_over(b, l);
    return l->in ? ab_peer_over(b, l->in) : 0;
}

/* Sends M on the dealer (DEALER 1) or to the accepted peer (0). */
static int s_send_msg_on(ab_broker_t *b, ab_link_t *l, int dealer, const Agentbus__LinkMsg *m)
{
    size_t n = agentbus__link_msg__get_packed_size(m);
    zmq_msg_t body;
    if (zmq_msg_init_size(&body, n) != 0)
        return -1;
    agentbus__link_msg__pack(m, zmq_msg_data(&body));
    ab_header_t h = ab_header_init(AB_KIND_LINK);
    uint8_t buf[128];
    size_t len = ab_header_encode(&h, buf, sizeof buf);
    int rc = -1;
    if (dealer && l->dealer) {
        if (ab_link_out_admit(b, l, len, n, 1) == 0 &&
            zmq_send(l->dealer, buf, len, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
            zmq_msg_send(&body, l->dealer, 0) >= 0)
            rc = 0;
    } else if (!dealer && l->in && !ab_peer_beyond(b, l->in)) {
        rc = ab_send_raw_peer(b, l->in, &l->in->rid, buf, len, &body);
    }
    zmq_msg_close(&body);
    return rc;
}

int ab_link_send_msg(ab_broker_t *b, ab_link_t *l, const Agentbus__LinkMsg *m)
{
    return s_send_msg_on(b, l, s_use_dealer(l), m);
}

/* --- up and down -------------------------------------------------------------- */

static void s_up(ab_broker_t *b, ab_link_t *l, int64_t now)
{
    if (!l->client) {
        ab_rid_t rid;
        ab_link_rid(l, &rid);
        if ((l->client = ab_peer_add(b, &rid, AB_ROLE_AGENT, now))) {
            l->client->link = l;
            l->client->link_role = AB_LINK_CLIENT;
            l->client->features = AB_FEATURE_LZ4;
            ab_peer_set_name(l->client, "link:", l->name);
            /* The peer's requests come as whole windows (up to its credit
             * here) that drain between its batches: an index that started
             * at 16 slots halved down to them and doubled back up with each
             * window (2% of this thread). Out of memory it stays as any
             * client's. */
            (void)ab_idmap_init(&l->client->reqs_by_id, S_CLIENT_IDS);
        }
    }
    if (!l->up) {
        l->up = 1;
        l->ups++;
        l->up_since_ms = now;
        AB_INFO("link to '%s' up (%s)", l->name, s_use_dealer(l) ? "dialed" : "accepted");
    }
    ab_link_dir_send(b, l); /* the whole directory on every (re)connection */
    ab_link_msg_up(b, l);   /* and the names and topics at the next tick */
}

static void s_down(ab_broker_t *b, ab_link_t *l, const char *why)
{
    if (!l->up)
        return;
    l->up = 0;
    l->up_since_ms = 0;
    uint32_t held = ab_link_dir_withdraw(b, l, why);
    l->failed += held;
    ab_link_msg_down(b, l);
    ab_peer_t *c = l->client;
    l->client = NULL;
    if (c) {
        c->link = NULL; /* ab_link_peer_gone: nothing more to forget */
        ab_peer_drop(b, c, why);
    }
    AB_WARN("link to '%s' down: %s (%u forwarded request(s) taken back)", l->name, why, held);
}

/* Forgets L's accepted connection (and drops its peer). */
static void s_in_lost(ab_broker_t *b, ab_link_t *l, const char *why)
{
    ab_peer_t *p = l->in;
    l->in = NULL;
    if (!p)
        return;
    p->link = NULL;
    p->link_role = AB_LINK_NONE;
    if (p->fd >= 0 && !p->fd_closed_ms)
        shutdown(p->fd, SHUT_RDWR); /* a stalled connection delivers nothing later */
    ab_peer_drop(b, p, why);
}

/* L went down (what its dialed connection carried is lost) while its peer
 * may hold it up still, on the connection the peer dialed: L's accepted one,
 * standing by. That one is closed too, so that the peer takes the link down
 * at once as well and dials again: the requests it forwarded here went with
 * L's client, its directory, names and topics here were withdrawn, and it
 * knew of none of it. Kept open, it went on forwarding over it, and this
 * broker, its link down, dropped every message but heartbeats (s_on_msg):
 * the peer's requests waited for their deadlines for as long as this
 * broker's own dial failed (a one-way cut; the peer's key removed from the
 * keys directory on the far side). Its HELLO on the new connection brings
 * the link up here, both directories sent whole. */
static void s_down_both(ab_broker_t *b, ab_link_t *l, const char *why)
{
    s_down(b, l, why);
    s_in_lost(b, l, "the link went down on its other connection");
}

/* Closes L's dialed connection and dials again. */
static void s_redial(ab_broker_t *b, ab_link_t *l)
{
    s_outq_free(b, l);
    ab_link_out_start(l, -1);
    ab_link_close_dealer(l);
    l->out_up = 0;
    if (ab_link_dial(b, l) != 0)
        AB_WARN("cannot dial '%s' again (%s): retried next tick", l->name, l->endpoint);
}

static void s_check(ab_broker_t *b, ab_link_t *l, int64_t now)
{
    int64_t silent = b->cfg->link_heartbeat_ms * AB_LINK_SILENT_IVL;
    if (l->endpoint[0] && !l->dealer)
        ab_link_dial(b, l);
    if (l->dealer && l->retry_at_ms && now >= l->retry_at_ms) { /* the same socket, monitor */
        l->retry_at_ms = 0;
        zmq_disconnect(l->dealer, l->endpoint); /* ENOENT when libzmq dropped it */
        zmq_connect(l->dealer, l->endpoint);
    }
    ab_link_dial_warn(b, l, now);
    if (l->dealer && l->out_up)
        ab_link_out_tick(b, l, now); /* marks it broken: s_broken at the next poll */
    if (l->dealer && l->out_up && now - l->out_last_ms > silent) {
        AB_WARN("link to '%s': dialed connection silent for %lld ms", l->name,
                (long long)(now - l->out_last_ms));
        s_redial(b, l);
    }
    if (l->in && now - l->in_last_ms > silent)
        s_in_lost(b, l, "link connection silent");
    if (l->up && !(l->dealer && l->out_up) && !l->in)
        s_down(b, l, "no heartbeat from the peer broker");
}

/* HELLO on L's dialed connection, or a heartbeat once it was answered.
 * HELLO only once connected (s_watch): without IMMEDIATE (s_monitor)
 * libzmq would queue one per tick for a peer that is down. */
static void s_hello_or_beat(ab_broker_t *b, ab_link_t *l)
{
    Agentbus__LinkMsg m = AGENTBUS__LINK_MSG__INIT;
    m.broker = l->all->self;
    m.session = l->all->session;
    m.type = l->out_up ? S_LM_HEARTBEAT : S_LM_HELLO;
    m.sent_us = ab_now_us();
    s_send_msg_on(b, l, 1, &m);
}

/* Every link-heartbeat-ms: liveness, HELLO on dialed connections not yet
 * answered, heartbeats on the others, the directory when it changed. */
static void s_tick(ab_broker_t *b, int64_t now)
{
    struct ab_links *ls = b->links;
    uint64_t print = ab_link_dir_models_print(b);
    int dirty = ls->dirty || print != ls->models_print;
    ls->dirty = 0;
    ls->models_print = print;
    for (int i = 0; i < AB_LINKS_MAX; i++) {
        ab_link_t *l = ls->l[i];
        if (!l)
            continue;
        s_check(b, l, now);
        Agentbus__LinkMsg m = AGENTBUS__LINK_MSG__INIT;
        m.broker = ls->self;
        m.session = ls->session;
        if (l->dealer && (l->out_up || l->out_conn))
            s_hello_or_beat(b, l);
        if (l->in) {
            m.type = S_LM_HEARTBEAT;
            m.sent_us = ab_now_us();
            s_send_msg_on(b, l, 0, &m);
        }
        if (dirty && l->up)
            ab_link_dir_send(b, l);
    }
    ab_link_msg_tick(b, now);
}

/* --- receiving ------------------------------------------------------------------ */

/* The record of broker NAME, or NULL. */
static ab_link_t *s_by_name(struct ab_links *ls, const char *name, const ab_link_t *but)
{
    for (int i = 0; i < AB_LINKS_MAX; i++)
        if (ls->l[i] && ls->l[i] != but && strcmp(ls->l[i]->name, name) == 0)
            return ls->l[i];
    return NULL;
}

/* L's dialed connection was answered by broker NAME: when a record for
 * NAME exists already (it dialed us first), the dialed connection joins it
 * and L's empty shell goes. Returns the record that holds it. What was
 * another broker's in L goes first: its link, and the connection it dialed
 * (it dials again), which would speak for NAME or name a freed record. */
static ab_link_t *s_named(ab_broker_t *b, ab_link_t *l, const char *name)
{
    if (!strcmp(l->name, name))
        return l;
    if (l->up)
        s_down(b, l, "the peer broker changed its name");
    if (l->in)
        s_in_lost(b, l, "its endpoint answers as another broker now");
    ab_link_t *o = s_by_name(b->links, name, l);
    if (!o) {
        snprintf(l->name, sizeof l->name, "%s", name);
        return l;
    }
    if (o->dealer) { /* two --peer entries name one broker: keep the first */
        /* Or two brokers given one name (cloned hosts keep the default):
         * the second was dropped without a word, its services gone. */
        AB_WARN("peer %s answers as '%s', which this broker dials at %s already: %s is not "
                "dialed any more (two --peer entries for one broker, or two brokers with one "
                "--name: it defaults to the host name)", l->endpoint, name, o->endpoint,
                l->endpoint);
        ab_link_close_dealer(l);
        l->endpoint[0] = '\0';
        return NULL;
    }
    o->dealer = l->dealer; /* the connection and its monitor go to O */
    o->mon = l->mon;
    o->out_conn = l->out_conn;
    memcpy(o->endpoint, l->endpoint, sizeof o->endpoint);
    memcpy(o->key, l->key, sizeof o->key);
    o->out_since_ms = l->out_since_ms;
    l->dealer = l->mon = NULL;
    if (!o->lookup) { /* its host name's lookup too: freeing one still running may wait */
        o->lookup = l->lookup;
        l->lookup = NULL;
    }
    if (l->outq) { /* what was gathered for the connection goes with it */
        s_outq_free(b, o);
        o->outq = l->outq;
        o->outq->link = o;
        l->outq = NULL;
    }
    s_link_free(b, l);
    return o;
}

/* The peer of L said HELLO (or answered it) with SESSION: when L is up
 * with another session the peer restarted, and what either side held for
 * the other belongs to the old one (request ids start again): down first. */
static void s_session(ab_broker_t *b, ab_link_t *l, uint64_t session)
{
    if (l->up && l->peer_session && session != l->peer_session)
        s_down(b, l, "the peer broker restarted");
    l->peer_session = session;
}

static void s_on_link_msg(ab_broker_t *b, ab_link_t *l, int dealer, const Agentbus__LinkMsg *m,
                          int64_t now)
{
    if (m->type == S_LM_HEARTBEAT) {
        if (m->sent_us) { /* echo it: the peer measures the round trip */
            Agentbus__LinkMsg e = AGENTBUS__LINK_MSG__INIT;
            e.type = S_LM_HEARTBEAT;
            e.broker = l->all->self;
            e.echo_us = m->sent_us;
            s_send_msg_on(b, l, dealer, &e);
        }
        uint64_t t = ab_now_us();
        if (m->echo_us && m->echo_us <= t && t - m->echo_us < 60000000u)
            l->rtt_us = (uint32_t)(t - m->echo_us);
        if (l->up)
            ab_link_dir_alive(b, l, now);
    } else if (m->type == S_LM_DIRECTORY && l->up) {
        ab_link_dir_apply(b, l, m, now);
    } else if ((m->type == S_LM_NAMES || m->type == S_LM_INTEREST) && l->up) {
        ab_link_msg_on_link(b, l, m, now);
    }
}

/* Common to both connections: a message from L's peer. */
static void s_on_msg(ab_broker_t *b, ab_link_t *l, int dealer, const ab_header_t *h,
                     const ab_frame_t *pl, zmq_msg_t *body, const struct ab_key *key, int64_t now)
{
    if (h->kind == AB_KIND_LINK) {
        if (pl->size > b->cfg->link_dir_max_bytes) { /* refused before it is decoded */
            l->dir_refused++;
            b->c.malformed++;
            AB_LOG_RL(&b->rl, 0x11d8 + (uint64_t)l->idx, now, AB_LOG_WARN,
                      "link '%s': a %zu-byte message refused (link-dir-max-bytes %zu)", l->name,
                      pl->size, b->cfg->link_dir_max_bytes);
            return;
        }
        Agentbus__LinkMsg *m = (Agentbus__LinkMsg *)ab_pb_unpack(&agentbus__link_msg__descriptor,
                                                                 pl->size, pl->data);
        if (!m) {
            b->c.malformed++;
            return;
        }
        s_on_link_msg(b, l, dealer, m, now);
        agentbus__link_msg__free_unpacked(m, NULL);
        return;
    }
    if (!l->up)
        return; /* nothing is forwarded before HELLO */
    switch (h->kind) {
    case AB_KIND_REQUEST:
        ab_link_fwd_request(b, l, h, body, key, now);
        break;
    case AB_KIND_PARTIAL:
    case AB_KIND_REPLY:
    case AB_KIND_ERROR:
        if (!ab_link_msg_on_answer(b, l, h, body)) /* a forwarded SEND's, else a request's */
            ab_link_fwd_answer(b, l, h, body);
        break;
    case AB_KIND_SEND:
    case AB_KIND_PUBLISH: /* link_msg.c */
        ab_link_msg_on_frame(b, l, h, body, key, now);
        break;
    case AB_KIND_CANCEL:
        /* The far broker holds its request (and a slot of this link's
         * credit) until an answer comes, as from any worker: a worker
         * answers a CANCEL with ERROR(CANCELLED). Without it, each request
         * whose client left or whose deadline passed there stayed pending
         * there for the life of the link, and once they filled the link's
         * credit nothing more was forwarded over it. */
        if (l->client && ab_cancel_from_client(b, &l->client->rid, h->correlation_id))
            ab_send_error(b, &l->client->rid, h->correlation_id, AB_ERR_CANCELLED,
                          "cancelled");
        break;
    default:
        b->c.malformed++; /* a link carries nothing else */
        break;
    }
}

/* A LINK HELLO from a new connection on the ROUTER (peer P). */
static void s_on_hello(ab_broker_t *b, ab_peer_t *p, const Agentbus__LinkMsg *m, int64_t now)
{
    struct ab_links *ls = b->links;
    const char *why = NULL, *ign;
    char text[AB_LINK_NAME_MAX + 128];
    if (!ab_auth_is_peer(p->authkey))
        why = "this key's role is not peer";
    else if (!m->broker[0] || strlen(m->broker) >= AB_LINK_NAME_MAX || strchr(m->broker, ','))
        why = "invalid broker name";
    else if (!strcmp(m->broker, ls->self))
        why = "the peer has this broker's own name";
    else if (!ab_auth_may_name(p->authkey, m->broker, &ign)) /* one key cannot pose as any broker */
        why = text, snprintf(text, sizeof text, "broker name '%s' is not granted to key '%s'",
                             m->broker, ab_key_name(p->authkey));
    ab_link_t *l = why ? NULL : s_by_name(ls, m->broker, NULL);
    if (!why && !l && !(l = s_link_new(ls)))
        why = "too many links";
    if (why) {
        AB_LOG_RL(&b->rl, 0x11c0, now, AB_LOG_WARN, "link HELLO from %s refused: %s", p->key, why);
        AB_COUNT_ERROR(b, AB_ERR_DENIED);
        ab_send_error(b, &p->rid, 0, AB_ERR_DENIED, why);
        return;
    }
    if (!l->name[0])
        snprintf(l->name, sizeof l->name, "%s", m->broker);
    if (l->in && l->in != p)
        s_in_lost(b, l, "replaced by a new link connection");
    l->in = p;
    l->in_last_ms = now;
    p->link = l;
    p->link_role = AB_LINK_TRANSPORT;
    ab_peer_set_name(p, "link:", l->name);
    s_session(b, l, m->session);
    Agentbus__LinkMsg w = AGENTBUS__LINK_MSG__INIT;
    w.type = S_LM_WELCOME;
    w.broker = ls->self;
    w.session = ls->session;
    s_send_msg_on(b, l, 0, &w);
    s_up(b, l, now);
}

void ab_link_on_router(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *rid, const ab_header_t *h,
                       const ab_frame_t *pl, zmq_msg_t *body, int64_t now)
{
    (void)rid;
    if (p && p->link && p->link_role == AB_LINK_TRANSPORT) {
        p->link->in_last_ms = now;
        s_on_msg(b, p->link, 0, h, pl, body, p->authkey, now);
        return;
    }
    /* Not a link yet: only a HELLO, which is small. */
    Agentbus__LinkMsg *m = pl->size <= S_HELLO_MAX
                               ? agentbus__link_msg__unpack(NULL, pl->size, pl->data) : NULL;
    if (!m) {
        b->c.malformed++;
        return;
    }
    if (m->type == S_LM_HELLO && p && b->links)
        s_on_hello(b, p, m, now);
    agentbus__link_msg__free_unpacked(m, NULL);
}

/* A BATCH on L's dialed connection (PL its body): checked whole, then each
 * entry handled as if it had come alone; its payload gets a message of its
 * own, as a request keeps it. */
static void s_on_batch(ab_broker_t *b, ab_link_t *l, const ab_frame_t *pl, int64_t now)
{
    ab_batch_reader_t r;
    uint32_t count = 0;
    if (ab_batch_open(&r, pl->data, pl->size, &b->limits, &count) != AB_OK) {
        b->c.malformed++;
        b->c.batch_malformed++;
        AB_LOG_RL(&b->rl, 0x11c8 + (uint64_t)l->idx, now, AB_LOG_WARN,
                  "link '%s': malformed batch (%zu bytes) dropped whole", l->name, pl->size);
        return;
    }
    b->c.batches_in++;
    b->c.batched_msgs_in += count;
    ab_frame_t f[2];
    size_t nf;
    for (uint32_t i = 1; ab_batch_next(&r, f, &nf) == 1; i++) {
        if ((i & 31) == 0)
            b->clock_us = ab_now_us(); /* a long batch: the clock moves on (broker.h) */
        ab_header_t h;
        ab_frame_t epl;
        if (ab_msg_decode(f, nf, &b->limits, &h, &epl) != AB_OK || h.kind == AB_KIND_LINK) {
            b->c.malformed++; /* link control is never batched */
            continue;
        }
        zmq_msg_t body;
        int has = nf == 2 && zmq_msg_init_size(&body, epl.size) == 0;
        if (has && epl.size)
            memcpy(zmq_msg_data(&body), epl.data, epl.size);
        s_on_msg(b, l, 1, &h, &epl, has ? &body : NULL, NULL, now);
        if (has)
            zmq_msg_close(&body);
    }
}

/* The dialed peer answered as broker NAME: when this broker trusts the
 * key it dialed, that key must be granted NAME (as on the accepting side).
 * 1 or 0 (logged, counted). */
static int s_name_granted(ab_broker_t *b, ab_link_t *l, const char *name, int64_t now)
{
    const struct ab_key *k = l->key[0] ? ab_auth_key_lookup(b, l->key) : NULL;
    const char *ign;
    if (!k || ab_auth_may_name(k, name, &ign))
        return 1;
    AB_LOG_RL(&b->rl, 0x11c4 + (uint64_t)l->idx, now, AB_LOG_WARN,
              "peer %s answered as broker '%s', a name not granted to its key '%s': refused",
              l->endpoint, name, ab_key_name(k));
    AB_COUNT_ERROR(b, AB_ERR_DENIED);
    l->refused++;
    return 0;
}

/* A message on L's dialed connection. */
static void s_on_dealer(ab_broker_t *b, ab_link_t *l, ab_frame_t *f, size_t n, zmq_msg_t *body,
                        int64_t now)
{
    ab_header_t h;
    ab_frame_t pl;
    /* Links stay on two frames (s_emit): an inline payload here is a
     * peer's bug, and its body would be missing below. */
    if (ab_msg_decode(f, n, &b->limits, &h, &pl) != AB_OK || (n == 1 && pl.data)) {
        b->c.malformed++;
        return;
    }
    if (h.kind == AB_KIND_ERROR && h.error_code == AB_ERR_DENIED && !h.correlation_id) {
        AB_LOG_RL(&b->rl, 0x11c1 + (uint64_t)l->idx, now, AB_LOG_WARN,
                  "peer %s refused the link: %.*s", l->endpoint, (int)h.error_text.len,
                  h.error_text.ptr);
        l->refused++;
        l->out_up = 0; /* the peer does not know this connection (it restarted): HELLO again */
        return;
    }
    if (h.kind == AB_KIND_LINK && !l->out_up) {
        Agentbus__LinkMsg *m = pl.size <= S_HELLO_MAX
                                   ? agentbus__link_msg__unpack(NULL, pl.size, pl.data) : NULL;
        int ok = m && m->type == S_LM_WELCOME && m->broker[0] &&
                 strlen(m->broker) < AB_LINK_NAME_MAX && strcmp(m->broker, l->all->self) != 0 &&
                 s_name_granted(b, l, m->broker, now);
        if (ok && (l = s_named(b, l, m->broker))) {
            s_session(b, l, m->session);
            l->out_up = 1;
            l->out_last_ms = now;
            s_up(b, l, now);
        }
        if (m)
            agentbus__link_msg__free_unpacked(m, NULL);
        return;
    }
    if (!l->out_up)
        return;
    l->out_last_ms = now;
    if (h.kind == AB_KIND_BATCH)
        s_on_batch(b, l, &pl, now);
    else
        s_on_msg(b, l, 1, &h, &pl, body, NULL, now);
}

int ab_link_poll_items(ab_broker_t *b, zmq_pollitem_t *items, int max)
{
    int n = 0;
    for (int i = 0; b->links && i < AB_LINKS_MAX && n + 2 <= max; i++) {
        ab_link_t *l = b->links->l[i];
        if (l && l->dealer)
            items[n++] = (zmq_pollitem_t){l->dealer, 0, ZMQ_POLLIN, 0};
        if (l && l->mon)
            items[n++] = (zmq_pollitem_t){l->mon, 0, ZMQ_POLLIN, 0};
    }
    return n;
}

/* Receives what L's dealer holds (at most 1024 messages): how many it
 * read, or -1 when L was merged into another record and freed. */
static int s_drain(ab_broker_t *b, ab_link_t *l, int64_t now)
{
    int k = 0;
    for (; k < 1024 && l->dealer; k++) {
        zmq_msg_t f[3];
        size_t kept;
        size_t n = ab_recv_frames(l->dealer, f, 3, &kept, NULL);
        if (n == 0)
            return k;
        b->c.msgs_in++;
        ab_frame_t fr[2] = {{zmq_msg_data(&f[0]), zmq_msg_size(&f[0])}, {NULL, 0}};
        if (kept > 1)
            fr[1] = (ab_frame_t){zmq_msg_data(&f[1]), zmq_msg_size(&f[1])};
        int idx = l->idx;
        b->clock_us = ab_now_us(); /* until this message is handled (broker.h) */
        s_on_dealer(b, l, fr, n, kept == 2 ? &f[1] : NULL, now);
        b->clock_us = 0;
        for (size_t i = 0; i < kept; i++)
            zmq_msg_close(&f[i]);
        if (b->links->l[idx] != l)
            return -1; /* merged into another record and freed */
    }
    return k;
}

/* Reads L's dealer monitor (s_monitor). The connection made (its CURVE or
 * plain ZMTP handshake done) lets HELLO go. The connection lost while the
 * link used it is handled as a failed send (s_broken), once what arrived
 * before the loss has been read: answers already here are delivered, and
 * what was still on the wire is taken back with the link. Lost before the
 * HELLO was answered: libzmq dials again by itself. */
static void s_watch(ab_broker_t *b, ab_link_t *l, int64_t now)
{
    int lost = 0;
    uint16_t event;
    uint32_t value;
    for (int k = 0; k < 64 && l->mon && ab_monitor_event(l->mon, &event, &value, NULL, 0); k++) {
        if (event == ZMQ_EVENT_CONNECTED) {
            ab_link_out_start(l, (int)value); /* the value is the connection's fd */
        } else if (event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            l->out_conn = 1;
            l->retry_ms = 0;
            if (!l->out_up)
                s_hello_or_beat(b, l); /* now, not at the next tick */
        } else if (event != ZMQ_EVENT_DISCONNECTED) {
            /* A refused handshake (a key the peer does not trust yet, an
             * --auth mismatch): libzmq ends the session and never dials
             * again, so a key trusted later linked nothing until a restart. */
            l->retry_ms = l->retry_ms ? (l->retry_ms < 5000 ? l->retry_ms * 2 : 10000) : 500;
            l->retry_at_ms = now + l->retry_ms;
        } else {
            ab_link_out_start(l, -1);
            l->out_conn = 0;
            lost = 1;
        }
    }
    if (!lost || !l->out_up)
        return;
    for (int k = 0; k < 128; k++) { /* at most the pipe's high-water mark */
        int n = s_drain(b, l, now);
        if (n < 0)
            return;
        if (n == 0)
            break;
    }
    if (!l->out_up)
        return; /* the peer refused the connection on it meanwhile */
    AB_LOG_RL(&b->rl, 0x11a0 + (uint64_t)l->idx, now, AB_LOG_WARN,
              "link to '%s': its dialed connection closed", l->name);
    if (s_use_dealer(l))
        s_down_both(b, l, "its dialed connection closed");
    s_redial(b, l);
}

/* A gathered send on L's dialed connection failed (batching.c flushed it
 * at the end of the last turn): what it carried is lost, so the link goes
 * down, which takes back the requests forwarded over it (re-dispatched or
 * answered), and the connection is dialed again from scratch. */
static void s_broken(ab_broker_t *b, ab_link_t *l, int64_t now)
{
    if (l->slow_bytes) { /* link_out.c: as router.c's s_cut for a peer */
        b->c.slow_disconnects++;
        b->c.slow_disconnect_bytes += l->slow_bytes;
        AB_LOG_RL(&b->rl, 0x11cc + (uint64_t)l->idx, now, AB_LOG_WARN,
                  "link to '%s': %llu bytes sent on its dialed connection not taken "
                  "(peer-out-max-bytes %zu, peer-stall-ms %ld): dialed again", l->name,
                  (unsigned long long)l->slow_bytes, b->cfg->peer_out_max_bytes,
                  b->cfg->peer_stall_ms);
        s_down_both(b, l, "the peer broker does not read what it is sent");
    } else {
        AB_LOG_RL(&b->rl, 0x11cc + (uint64_t)l->idx, now, AB_LOG_WARN,
                  "link to '%s': a send on its dialed connection failed", l->name);
        s_down_both(b, l, "a send on its connection failed");
    }
    l->slow_bytes = 0;
    s_redial(b, l);
}

/* A send on L's accepted connection failed: as s_broken for it. */
static void s_in_broken(ab_broker_t *b, ab_link_t *l, int64_t now)
{
    l->in_broken = 0;
    AB_LOG_RL(&b->rl, 0x11d4 + (uint64_t)l->idx, now, AB_LOG_WARN,
              "link to '%s': a send on its accepted connection failed", l->name);
    s_down_both(b, l, "a send on its link connection failed");
    if (l->dealer && l->out_up) /* the peer may hold the link up on it: as s_down_both */
        s_redial(b, l);
}

void ab_link_send_failed(ab_peer_t *p)
{
    if (p->link && p->link_role == AB_LINK_TRANSPORT && p->link->in == p)
        p->link->in_broken = 1;
}

void ab_link_on_poll(ab_broker_t *b, int64_t now)
{
    for (int i = 0; b->links && i < AB_LINKS_MAX; i++) {
        ab_link_t *l = b->links->l[i];
        if (l && l->in_broken)
            s_in_broken(b, l, now);
        if (l && l->broken)
            s_broken(b, l, now);
        if (l && l->dealer && s_drain(b, l, now) >= 0)
            s_watch(b, l, now);
    }
}

/* --- the core's hooks ------------------------------------------------------------ */

void ab_link_peer_gone(ab_broker_t *b, ab_peer_t *p)
{
    ab_link_t *l = p->link;
    if (!l)
        return;
    p->link = NULL;
    p->remote = NULL; /* its entry, if any, is deleted below */
    if (p->link_role == AB_LINK_TRANSPORT && l->in == p) {
        l->in = NULL; /* its connection closed: the link may live on the other */
        if (l->up && !(l->dealer && l->out_up))
            s_down(b, l, "its connection closed");
    } else if (p->link_role == AB_LINK_CLIENT && l->client == p) {
        l->client = NULL;
    } else if (p->link_role == AB_LINK_WORKER) {
        ab_remote_t *r = p->worker ? zhashx_lookup(l->remote, p->worker->service->name) : NULL;
        if (r && r->peer == p)
            zhashx_delete(l->remote, p->worker->service->name);
    }
}

void ab_link_dir_changed(ab_broker_t *b)
{
    if (b->links)
        b->links->dirty = 1;
}

uint32_t ab_link_up_count(const ab_broker_t *b)
{
    uint32_t n = 0;
    for (int i = 0; b->links && i < AB_LINKS_MAX; i++)
        if (b->links->l[i] && b->links->l[i]->up)
            n++;
    return n;
}
