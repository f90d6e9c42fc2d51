/*
 * clientfuzz_broker.c - clientfuzz's fake broker (the main thread's side):
 * a ROUTER that answers the library's handshakes most of the time and
 * plays random moves from a PRNG of its own (clientfuzz.c says which).
 */
#include "clientfuzz.h"

#include "agentbus.pb-c.h"
#include "compress.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

/* Relative weights of the broker's moves: answers to what was asked come
 * most often, the faults that cost time (restart, deaf) rarely. */
static const int s_weight[CF_BROKER_MOVES] = {
    [MV_reply] = 14, [MV_partials] = 6, [MV_error] = 6, [MV_dup_reply] = 3, [MV_hello] = 3,
    [MV_heartbeat] = 3, [MV_send] = 6, [MV_publish] = 5, [MV_error_nocall] = 3,
    [MV_discover] = 3, [MV_control] = 4, [MV_job] = 14, [MV_cancel] = 6, [MV_register] = 2,
    [MV_worker_hello] = 1, [MV_batch] = 6, [MV_bad_batch] = 3, [MV_garbage] = 4,
};

/* ==================================================================================== */
/* The fake broker (main thread)                                                        */
/* ==================================================================================== */
cf_broker_t cf_b;

static const uint8_t s_probe_text[] = "clientfuzz recovery probe: echo these bytes exactly";

static void s_ring_add(cf_ring_t *r, uint64_t id)
{
    r->v[r->at] = id;
    r->at = (r->at + 1) % CF_IDS;
    if (r->n < CF_IDS)
        r->n++;
}

static int s_ring_has(const cf_ring_t *r, uint64_t id)
{
    for (int i = 0; i < r->n; i++)
        if (r->v[i] == id)
            return 1;
    return 0;
}

/* An id to answer: mostly one in R (often a recent one), else a random one. */
static uint64_t s_some_id(const cf_ring_t *r)
{
    uint32_t k = cf_below(&cf_b.rng, 100);
    if (k < 45 && r->n)
        return r->v[(r->at - 1 - (int)cf_below(&cf_b.rng, r->n < 6 ? (uint32_t)r->n : 6) + CF_IDS) %
                    CF_IDS];
    if (k < 75 && r->n)
        return r->v[cf_below(&cf_b.rng, (uint32_t)r->n)];
    if (k < 90)
        return 1 + cf_below(&cf_b.rng, 3000);
    return k < 98 ? cf_rand(&cf_b.rng) : 0;
}

static uint8_t *s_alloc(size_t n)
{
    if (cf_b.used + n > CF_ARENA)
        return NULL;
    uint8_t *p = cf_b.arena + cf_b.used;
    cf_b.used += n;
    return p;
}

/* A string of the move: a real-looking name or odd bytes (long, empty,
 * with NULs and high bytes), as a view. */
static ab_view_t s_str(void)
{
    static const char *const plain[] = {"alice", "bob", "cf-agent", "~0123456789abcdef", "~",
                                        "t.a", "t.b.c", "svc", "", "news."};
    if (cf_chance(&cf_b.rng, 70) || cf_b.nstrs >= 8)
        return ab_view_of(plain[cf_below(&cf_b.rng, sizeof plain / sizeof plain[0])]);
    char *s = cf_b.strs[cf_b.nstrs++];
    size_t n = cf_chance(&cf_b.rng, 20) ? 256 + cf_below(&cf_b.rng, 400) : cf_below(&cf_b.rng, 40);
    cf_fill(&cf_b.rng, (uint8_t *)s, n, cf_chance(&cf_b.rng, 50));
    return (ab_view_t){s, n};
}

/* Gives M a payload of up to MAX bytes (or none). */
static void s_payload(cf_msg_t *m, size_t max)
{
    m->has = !cf_chance(&cf_b.rng, 8);
    if (!m->has)
        return;
    size_t n = cf_size(&cf_b.rng, max);
    uint8_t *p = s_alloc(n ? n : 1);
    if (!p)
        n = 0, p = (uint8_t *)"";
    cf_fill(&cf_b.rng, p, n, cf_chance(&cf_b.rng, 60));
    m->pl = p;
    m->plen = n;
    uint32_t k = cf_below(&cf_b.rng, 100);
    m->form = k < 25 ? F_INLINE : k < 30 ? F_THREE : F_TWO;
}

/* With PCT percent, compresses M's payload: right, with a lying original
 * size, with a corrupt block, or a garbage block flagged LZ4. */
static void s_maybe_lz4(cf_msg_t *m, int pct)
{
    if (!m->has || !cf_chance(&cf_b.rng, pct))
        return;
    uint32_t how = cf_below(&cf_b.rng, 4);
    void *z = NULL;
    size_t zl = 0;
    m->h.flags |= AB_FLAG_LZ4;
    if (how < 3 && m->plen >= 16 && ab_lz4_compress(m->pl, m->plen, 0, &z, &zl) == 1) {
        uint8_t *q = s_alloc(zl);
        if (q) {
            memcpy(q, z, zl);
            m->h.original_size = m->plen;
            uint32_t lie = cf_below(&cf_b.rng, 3);
            if (how == 1) /* a lying size, by a little or a lot */
                m->h.original_size = lie == 0   ? m->plen + 1 + cf_below(&cf_b.rng, 64)
                                     : lie == 1 ? cf_below(&cf_b.rng, (uint32_t)m->plen)
                                                : (uint64_t)1 << (20 + cf_below(&cf_b.rng, 40));
            if (how == 2) /* a corrupt block */
                for (int i = 0; i < 3; i++)
                    q[cf_below(&cf_b.rng, (uint32_t)zl)] ^= (uint8_t)(1 + cf_below(&cf_b.rng, 255));
            m->pl = q;
            m->plen = zl;
        }
        free(z);
        return;
    }
    free(z);
    static const uint64_t sizes[] = {0, 1, 100, 70000, 64u * 1024u * 1024u, UINT64_MAX};
    m->h.original_size = sizes[cf_below(&cf_b.rng, 6)];
}

static uint32_t s_credit(void)
{
    static const uint32_t v[] = {0, 1, 99, 100, 250, 1000, 5000, 600001, UINT32_MAX};
    return v[cf_below(&cf_b.rng, sizeof v / sizeof v[0])];
}

static uint32_t s_features(void)
{
    return cf_below(&cf_b.rng, 8) | (cf_chance(&cf_b.rng, 5) ? 0xfff0u : 0);
}

static uint32_t s_error_code(void)
{
    static const uint32_t v[] = {AB_ERR_NO_SERVICE, AB_ERR_BUSY,      AB_ERR_DEADLINE,
                                 AB_ERR_MALFORMED,  AB_ERR_WORKER_LOST, AB_ERR_INTERNAL,
                                 AB_ERR_APPLICATION, AB_ERR_CANCELLED, AB_ERR_NAME_TAKEN,
                                 AB_ERR_TOO_LARGE,  AB_ERR_NO_AGENT,  AB_ERR_DENIED,
                                 0,                 11,               99,
                                 1000,              UINT32_MAX};
    return v[cf_below(&cf_b.rng, sizeof v / sizeof v[0])];
}

/* --- peers -------------------------------------------------------------------------- */
static cf_peer_t *s_peer_seen(const void *rid, size_t len, int worker)
{
    if (len > sizeof cf_b.peers[0].rid)
        return NULL;
    cf_peer_t *p = NULL;
    for (int i = 0; i < cf_b.npeers && !p; i++)
        if (cf_b.peers[i].len == len && memcmp(cf_b.peers[i].rid, rid, len) == 0)
            p = &cf_b.peers[i];
    if (!p && cf_b.npeers < CF_PEERS)
        p = &cf_b.peers[cf_b.npeers++];
    else if (!p) { /* the one seen longest ago goes */
        p = &cf_b.peers[0];
        for (int i = 1; i < CF_PEERS; i++)
            if (cf_b.peers[i].seen_ms < p->seen_ms)
                p = &cf_b.peers[i];
    }
    if (p->len != len || memcmp(p->rid, rid, len) != 0) {
        memcpy(p->rid, rid, len);
        p->len = len;
        p->worker = 0;
    }
    p->seen_ms = ab_now_ms();
    if (worker >= 0)
        p->worker = worker;
    return p;
}

/* The routing id of the worker's (WORKER) or the client's connection heard
 * from last; now and then an older one, or one nobody has. NULL if none is known. */
static const cf_peer_t *s_peer_pick(int worker)
{
    static cf_peer_t madeup;
    uint32_t k = cf_below(&cf_b.rng, 100);
    if (k < 4) {
        madeup.len = 5;
        madeup.rid[0] = 0;
        uint32_t v = (uint32_t)cf_rand(&cf_b.rng);
        memcpy(madeup.rid + 1, &v, 4);
        return &madeup;
    }
    if (k < 12 && cf_b.npeers)
        return &cf_b.peers[cf_below(&cf_b.rng, (uint32_t)cf_b.npeers)];
    const cf_peer_t *best = NULL;
    for (int i = 0; i < cf_b.npeers; i++)
        if (cf_b.peers[i].worker == worker && (!best || cf_b.peers[i].seen_ms > best->seen_ms))
            best = &cf_b.peers[i];
    return best;
}

/* --- sending ------------------------------------------------------------------------ */
/* Every REQUEST id that leaves, so that an answer to any other is caught. */
static void s_note_out(const ab_header_t *h)
{
    if (h->kind == AB_KIND_REQUEST && h->id)
        ab_idmap_put(&cf_b.sent_requests, h->id, (void *)1);
}

static void s_send_frames(const cf_peer_t *to, const void *const *data, const size_t *len,
                          int n)
{
    if (zmq_send(cf_b.router, to->rid, to->len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return;
    for (int i = 0; i < n; i++)
        zmq_send(cf_b.router, data[i], len[i], (i + 1 < n ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT);
    cf_b.msgs_out++;
}

static void s_tx(const cf_peer_t *to, cf_msg_t *m)
{
    static uint8_t hb[16384];
    if (!to)
        return;
    s_note_out(&m->h);
    size_t hl = ab_header_encode(&m->h, hb, sizeof hb);
    if (!hl)
        return;
    if (m->has && m->form == F_INLINE) {
        size_t n = ab_msg_inline_size(hl, m->plen);
        uint8_t *one = malloc(n);
        if (!one)
            return;
        ab_msg_inline_put(one, hb, hl, m->pl, m->plen);
        const void *d[1] = {one};
        size_t l[1] = {n};
        s_send_frames(to, d, l, 1);
        free(one);
        return;
    }
    const void *d[4] = {hb, m->has ? (const void *)m->pl : "", "extra", ""};
    size_t l[4] = {hl, m->has ? m->plen : 0, 5, 0};
    int n = m->has ? 2 : 1;
    if (m->form == F_THREE)
        n = 3 + (int)cf_below(&cf_b.rng, 2);
    s_send_frames(to, d, l, n);
}

/* --- the messages of the moves ------------------------------------------------------- */
static void s_msg(cf_msg_t *m, uint32_t kind)
{
    memset(m, 0, sizeof *m);
    m->h = ab_header_init(kind);
    m->form = F_TWO;
}

/* An answer (REPLY, PARTIAL or ERROR) to call ID of the client. */
static void s_mk_answer(cf_msg_t *m, uint32_t kind, uint64_t id, size_t max)
{
    s_msg(m, kind);
    m->h.correlation_id = id;
    if (kind == AB_KIND_ERROR) {
        m->h.error_code = s_error_code();
        if (cf_chance(&cf_b.rng, 70))
            m->h.error_text = s_str();
        if (cf_chance(&cf_b.rng, 10)) /* an ERROR never has one: the library must not care */
            s_payload(m, 100);
        return;
    }
    s_payload(m, max);
    s_maybe_lz4(m, 15);
}

/* A valid agentbus.Directory (WHOLE) or DirectoryEvent as a payload of M. */
static void s_mk_directory(cf_msg_t *m, int whole)
{
    Agentbus__WorkerInfo wi[3], *wp[3];
    Agentbus__WorkerInfo__LabelsEntry le[70], *lp[70];
    Agentbus__ServiceInfo si[2], *sp[2];
    static const char *const health[] = {"healthy", "suspect", "dead", "", "ejected"};
    size_t nw = whole ? cf_below(&cf_b.rng, 4) : 1, nl = 0;
    for (size_t i = 0; i < nw; i++) {
        agentbus__worker_info__init(&wi[i]);
        wi[i].id = (char *)"00ab";
        wi[i].name = cf_chance(&cf_b.rng, 50) ? (char *)"w1" : (char *)"";
        wi[i].service = (char *)CF_SVC;
        wi[i].health = (char *)health[cf_below(&cf_b.rng, 5)];
        wi[i].capacity = cf_below(&cf_b.rng, 100);
        wi[i].in_flight = (uint32_t)cf_rand(&cf_b.rng);
        wi[i].suspicion = (double)cf_below(&cf_b.rng, 1000) / 7.0;
        /* more labels than a callback's stack array (64 pairs) now and then */
        size_t want =
            cf_chance(&cf_b.rng, 20) ? 33 + cf_below(&cf_b.rng, 30) : cf_below(&cf_b.rng, 3);
        if (want > 70 - nl)
            want = 70 - nl;
        wi[i].n_labels = want;
        wi[i].labels = &lp[nl];
        for (size_t k = 0; k < want; k++, nl++) {
            agentbus__worker_info__labels_entry__init(&le[nl]);
            le[nl].key = (char *)(k % 2 ? "gpu" : "model");
            le[nl].value = (char *)"x";
            lp[nl] = &le[nl];
        }
        wp[i] = &wi[i];
    }
    size_t len;
    uint8_t *p;
    if (whole) {
        Agentbus__Directory d;
        agentbus__directory__init(&d);
        size_t ns = cf_below(&cf_b.rng, 3);
        for (size_t i = 0; i < ns; i++) {
            agentbus__service_info__init(&si[i]);
            si[i].name = (char *)(i ? "other" : CF_SVC);
            si[i].workers = cf_below(&cf_b.rng, 5);
            sp[i] = &si[i];
        }
        d.n_services = ns;
        d.services = sp;
        d.n_workers = nw;
        d.workers = wp;
        len = agentbus__directory__get_packed_size(&d);
        if (!(p = s_alloc(len ? len : 1)))
            return;
        agentbus__directory__pack(&d, p);
    } else {
        Agentbus__DirectoryEvent e;
        agentbus__directory_event__init(&e);
        e.change = cf_chance(&cf_b.rng, 50) ? (char *)"join" : (char *)"health";
        e.worker = cf_chance(&cf_b.rng, 90) ? wp[0] : NULL;
        len = agentbus__directory_event__get_packed_size(&e);
        if (!(p = s_alloc(len ? len : 1)))
            return;
        agentbus__directory_event__pack(&e, p);
    }
    m->pl = p;
    m->plen = len;
    m->has = 1;
}

/* Builds the message of move MV (one that is a single message) into M: 1 and
 * *WORKER (whom it is for), or 0 when it cannot be made now. MAX bounds
 * the payload. */
static int s_mk(int mv, cf_msg_t *m, int *worker, size_t max)
{
    *worker = 0;
    switch (mv) {
    case MV_reply:
    case MV_dup_reply:
        s_mk_answer(m, AB_KIND_REPLY, s_some_id(&cf_b.calls), max);
        return 1;
    case MV_partials:
        s_mk_answer(m, AB_KIND_PARTIAL, s_some_id(&cf_b.calls), max);
        return 1;
    case MV_error:
        s_mk_answer(m, AB_KIND_ERROR, s_some_id(&cf_b.calls), max);
        return 1;
    case MV_hello:
        s_msg(m, AB_KIND_HELLO);
        m->h.correlation_id = cf_chance(&cf_b.rng, 50) ? 0 : s_some_id(&cf_b.calls);
        m->h.credit = s_credit();
        m->h.features = s_features();
        if (cf_chance(&cf_b.rng, 50))
            m->h.flags |= AB_FLAG_NEW_PEER;
        return 1;
    case MV_heartbeat:
        s_msg(m, AB_KIND_HEARTBEAT);
        m->h.credit = s_credit();
        *worker = cf_chance(&cf_b.rng, 40);
        return 1;
    case MV_send:
        s_msg(m, AB_KIND_SEND);
        m->h.id = cf_rand(&cf_b.rng) % 100000;
        m->h.sender = s_str();
        m->h.target = s_str();
        if (cf_chance(&cf_b.rng, 40)) /* the answer to an ask, or a receipt */
            m->h.correlation_id = s_some_id(&cf_b.calls);
        if (cf_chance(&cf_b.rng, 20))
            m->h.flags |= AB_FLAG_RECEIPT;
        if (cf_chance(&cf_b.rng, 30))
            m->h.flags |= AB_FLAG_WANT_RECEIPT;
        if (m->h.correlation_id && cf_chance(&cf_b.rng, 50)) { /* a forgery of any call */
            m->h.sender = ab_view_of(CF_FORGER);
            m->pl = (const uint8_t *)CF_FORGED;
            m->plen = strlen(CF_FORGED);
            m->has = 1;
            return 1;
        }
        s_payload(m, max < 20000 ? max : 20000);
        s_maybe_lz4(m, 5);
        return 1;
    case MV_publish:
        s_msg(m, AB_KIND_PUBLISH);
        m->h.id = cf_rand(&cf_b.rng) % 100000;
        m->h.sender = s_str();
        m->h.target = s_str();
        if (cf_chance(&cf_b.rng, 20)) {
            m->h.flags |= AB_FLAG_GAP;
            m->h.credit = s_credit();
        }
        s_payload(m, max < 20000 ? max : 20000);
        return 1;
    case MV_error_nocall: {
        static const uint32_t codes[] = {AB_ERR_BUSY,    AB_ERR_NAME_TAKEN, AB_ERR_BAD_NAME,
                                         AB_ERR_TOO_LARGE, AB_ERR_NO_AGENT, AB_ERR_DENIED,
                                         AB_ERR_INTERNAL, 77};
        s_msg(m, AB_KIND_ERROR);
        uint32_t k = cf_below(&cf_b.rng, 3);
        m->h.correlation_id = k == 0 ? 0 : k == 1 ? cf_rand(&cf_b.rng) : s_some_id(&cf_b.calls);
        m->h.error_code = codes[cf_below(&cf_b.rng, sizeof codes / sizeof codes[0])];
        m->h.error_text = s_str();
        return 1;
    }
    case MV_discover:
        s_msg(m, AB_KIND_DISCOVER);
        m->h.correlation_id =
            cf_chance(&cf_b.rng, 60) ? s_some_id(&cf_b.watches) : s_some_id(&cf_b.calls);
        if (cf_chance(&cf_b.rng, 50))
            s_mk_directory(m, 0);
        else
            s_payload(m, 2000);
        return 1;
    case MV_control: /* a REPLY to a call: a directory, or garbage for it */
        s_msg(m, AB_KIND_REPLY);
        m->h.correlation_id = s_some_id(&cf_b.calls);
        if (cf_chance(&cf_b.rng, 50))
            s_mk_directory(m, 1);
        else
            s_payload(m, 5000);
        return 1;
    case MV_job: {
        static const uint32_t tmo[] = {0, 1, 50, 1000, 60000, UINT32_MAX};
        static const uint32_t flags[] = {0, AB_FLAG_ACCEPT_LZ4, AB_FLAG_ADMIN,
                                         AB_FLAG_NON_IDEMPOTENT, AB_FLAG_LZ4_SKIPPED, 0xffffffffu};
        s_msg(m, AB_KIND_REQUEST);
        *worker = 1;
        m->h.id = cf_chance(&cf_b.rng, 15) && cf_b.jobs.n ? s_some_id(&cf_b.jobs) : cf_b.next_job++;
        m->h.target = cf_chance(&cf_b.rng, 80) ? ab_view_of(CF_SVC) : s_str();
        if (cf_chance(&cf_b.rng, 30))
            m->h.model = s_str();
        m->h.timeout_ms = tmo[cf_below(&cf_b.rng, 6)];
        m->h.flags = flags[cf_below(&cf_b.rng, 6)] & ~(uint32_t)AB_FLAG_LZ4;
        m->h.priority = cf_below(&cf_b.rng, 300);
        s_payload(m, max);
        s_maybe_lz4(m, 15);
        if (m->h.id)
            s_ring_add(&cf_b.jobs, m->h.id);
        return 1;
    }
    case MV_cancel: {
        static const uint32_t why[] = {AB_ERR_DEADLINE, AB_ERR_CANCELLED, 0, AB_ERR_BUSY, 999};
        s_msg(m, AB_KIND_CANCEL);
        *worker = 1;
        m->h.id = cf_rand(&cf_b.rng) % 1000;
        m->h.correlation_id = s_some_id(&cf_b.jobs);
        m->h.error_code = why[cf_below(&cf_b.rng, 5)];
        return 1;
    }
    case MV_register:
        s_msg(m, AB_KIND_REGISTER);
        *worker = 1;
        m->h.correlation_id = cf_chance(&cf_b.rng, 30) ? 0 : cf_rand(&cf_b.rng) % 50;
        m->h.target = cf_chance(&cf_b.rng, 90) ? ab_view_of(CF_SVC) : s_str();
        m->h.credit = s_credit();
        m->h.features = s_features();
        return 1;
    case MV_worker_hello:
        s_msg(m, AB_KIND_HELLO);
        *worker = 1;
        m->h.correlation_id = cf_chance(&cf_b.rng, 70) ? 0 : cf_rand(&cf_b.rng) % 50;
        m->h.credit = s_credit();
        return 1;
    default:
        return 0;
    }
}

/* PARTIALs for one call, then maybe its end. */
static void s_move_partials(void)
{
    const cf_peer_t *to = s_peer_pick(0);
    uint64_t id = s_some_id(&cf_b.calls);
    int n = 1 + (int)cf_below(&cf_b.rng, 5);
    cf_msg_t m;
    for (int i = 0; i < n; i++) {
        cf_b.used = 0;
        s_mk_answer(&m, AB_KIND_PARTIAL, id, i ? 4000 : CF_BIG);
        s_tx(to, &m);
    }
    uint32_t k = cf_below(&cf_b.rng, 3);
    if (k < 2) {
        cf_b.used = 0;
        s_mk_answer(&m, k ? AB_KIND_ERROR : AB_KIND_REPLY, id, 4000);
        s_tx(to, &m);
    }
}

/* A BATCH of several messages for the client or the worker; BAD: its body
 * corrupted (bytes flipped, cut short, a wrong count, junk after it). */
static void s_move_batch(int bad)
{
    static const int client_mv[] = {MV_reply, MV_partials, MV_error, MV_hello, MV_heartbeat,
                                    MV_send, MV_publish, MV_error_nocall, MV_discover,
                                    MV_control};
    static const int worker_mv[] = {MV_job, MV_job, MV_job, MV_cancel, MV_register,
                                    MV_heartbeat, MV_worker_hello};
    int for_worker = cf_chance(&cf_b.rng, 45);
    const cf_peer_t *to = s_peer_pick(for_worker);
    ab_batch_t b;
    ab_batch_init(&b);
    int n = 2 + (int)cf_below(&cf_b.rng, 8);
    for (int i = 0; i < n; i++) {
        cf_msg_t m;
        int w = 0;
        int mv = for_worker ? worker_mv[cf_below(&cf_b.rng, 7)]
                            : client_mv[cf_below(&cf_b.rng, 10)];
        if (!s_mk(mv, &m, &w, 8000))
            continue;
        if (m.h.kind == AB_KIND_REQUEST)
            s_note_out(&m.h);
        uint8_t hb[4096];
        size_t hl = ab_header_encode(&m.h, hb, sizeof hb);
        if (hl)
            ab_batch_add(&b, hb, hl, m.pl, m.plen, m.has);
    }
    size_t len = 0;
    const uint8_t *body = ab_batch_body(&b, &len);
    uint8_t *copy = body ? s_alloc(len + 16) : NULL;
    if (copy) {
        memcpy(copy, body, len);
        if (bad) {
            uint32_t how = cf_below(&cf_b.rng, 4);
            if (how == 0)
                for (int i = 0; i < 1 + (int)cf_below(&cf_b.rng, 4); i++)
                    copy[cf_below(&cf_b.rng, (uint32_t)len)] ^=
                        (uint8_t)(1 + cf_below(&cf_b.rng, 255));
            else if (how == 1)
                len = cf_below(&cf_b.rng, (uint32_t)len);
            else if (how == 2)
                copy[0] = (uint8_t)(copy[0] + 1 + cf_below(&cf_b.rng, 3));
            else
                cf_fill(&cf_b.rng, copy + len, 16, 0), len += 1 + cf_below(&cf_b.rng, 16);
        }
        if (bad && ab_batch_decode(&cf_b.entries, copy, len, NULL) == AB_OK)
            for (uint32_t i = 0; i < cf_b.entries.n; i++) /* still whole: ids may have changed */
                s_note_out(&cf_b.entries.e[i].h);
        cf_msg_t m;
        s_msg(&m, AB_KIND_BATCH);
        m.pl = copy;
        m.plen = len;
        m.has = 1;
        m.form = cf_chance(&cf_b.rng, 20) ? F_INLINE : F_TWO;
        s_tx(to, &m);
    }
    ab_batch_fini(&b);
}

/* Bytes that are no message: random header bytes, an empty frame, a valid
 * header of a random kind with random fields, a message to nobody. */
static void s_move_garbage(void)
{
    const cf_peer_t *to = s_peer_pick(cf_chance(&cf_b.rng, 50));
    if (!to)
        return;
    uint8_t junk[64];
    size_t n = cf_below(&cf_b.rng, sizeof junk);
    cf_fill(&cf_b.rng, junk, n, 0);
    uint32_t how = cf_below(&cf_b.rng, 4);
    if (how == 0) {
        const void *d[2] = {junk, junk};
        size_t l[2] = {n, cf_below(&cf_b.rng, (uint32_t)n + 1)};
        s_send_frames(to, d, l, 1 + (int)cf_below(&cf_b.rng, 2));
    } else if (how == 1) {
        const void *d[1] = {""};
        size_t l[1] = {0};
        s_send_frames(to, d, l, 1);
    } else {
        cf_msg_t m;
        s_msg(&m, cf_below(&cf_b.rng, AB_KIND_MAX_ + 3));
        m.h.id = cf_rand(&cf_b.rng) % 100;
        m.h.correlation_id = cf_chance(&cf_b.rng, 50) ? s_some_id(&cf_b.calls) : 0;
        m.h.flags = (uint32_t)cf_rand(&cf_b.rng);
        m.h.credit = s_credit();
        m.h.error_code = s_error_code();
        m.h.target = s_str();
        m.h.original_size = cf_chance(&cf_b.rng, 50) ? cf_rand(&cf_b.rng) : 0;
        if (cf_chance(&cf_b.rng, 10))
            m.h.version = 2 + cf_below(&cf_b.rng, 5);
        s_payload(&m, 3000);
        if (how == 3) { /* to a routing id nobody has */
            static cf_peer_t nobody = {.rid = {0, 'n', 'o', 'n', 'e'}, .len = 5};
            to = &nobody;
        }
        s_tx(to, &m);
    }
}

/* Closes the ROUTER and binds a new one on the same port after a while:
 * the library sees its broker restart. */
int cf_broker_bind(void)
{
    cf_b.router = zmq_socket(cf_b.ctx, ZMQ_ROUTER);
    int linger = 0, hwm = 100000;
    zmq_setsockopt(cf_b.router, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(cf_b.router, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(cf_b.router, ZMQ_RCVHWM, &hwm, sizeof hwm);
    for (int i = 0; i < 200; i++) { /* the old listener may take a moment to go */
        if (zmq_bind(cf_b.router, cf_b.ep) == 0)
            return 0;
        usleep(10 * 1000);
        atomic_fetch_add(&cf_progress[T_BROKER], 1);
    }
    return -1;
}

static void s_move_restart(void)
{
    zmq_close(cf_b.router);
    cf_b.router = NULL;
    uint32_t ms = cf_below(&cf_b.rng, 501);
    for (uint32_t t = 0; t < ms; t += 10) {
        usleep(10 * 1000);
        atomic_fetch_add(&cf_progress[T_BROKER], 1);
    }
    if (cf_broker_bind() != 0)
        cf_fail("could not bind %s again after a restart: %s", cf_b.ep, zmq_strerror(zmq_errno()));
    cf_b.restarts++;
}

void cf_broker_move(void)
{
    int total = 0;
    for (int i = 0; i < CF_BROKER_MOVES; i++)
        total += cf_avoid[i] ? 0 : s_weight[i];
    /* the rare faults, outside the weights: about one restart and one
     * deaf spell in 4,000 moves (a few a minute) */
    int mv = -1;
    if (!cf_avoid[MV_restart] && cf_below(&cf_b.rng, 4000) == 0)
        mv = MV_restart;
    else if (!cf_avoid[MV_deaf] && cf_below(&cf_b.rng, 4000) == 0)
        mv = MV_deaf;
    else if (total > 0) {
        int r = (int)cf_below(&cf_b.rng, (uint32_t)total);
        for (mv = 0; mv < CF_BROKER_MOVES; mv++) {
            r -= cf_avoid[mv] ? 0 : s_weight[mv];
            if (r < 0)
                break;
        }
    }
    if (mv < 0 || mv >= CF_BROKER_MOVES)
        return;
    cf_count[mv]++;
    cf_b.used = 0;
    cf_b.nstrs = 0;
    cf_msg_t m;
    int worker = 0;
    switch (mv) {
    case MV_partials:
        s_move_partials();
        break;
    case MV_batch:
    case MV_bad_batch:
        s_move_batch(mv == MV_bad_batch);
        break;
    case MV_garbage:
        s_move_garbage();
        break;
    case MV_restart:
        s_move_restart();
        break;
    case MV_deaf:
        cf_b.deaf_until = ab_now_ms() + cf_below(&cf_b.rng, 1001);
        break;
    default:
        if (s_mk(mv, &m, &worker, CF_BIG)) {
            const cf_peer_t *to = s_peer_pick(worker);
            s_tx(to, &m);
            if (mv == MV_dup_reply)
                s_tx(to, &m);
        }
    }
}

/* --- what the library sends ------------------------------------------------------------ */
/* The answer to a HELLO or REGISTER (KIND) of id ID from TO. */
static void s_answer_hello(const cf_peer_t *to, uint32_t kind, uint64_t id, ab_view_t target)
{
    cf_msg_t m;
    s_msg(&m, kind);
    m.h.correlation_id = id;
    m.h.target = target;
    int calm = atomic_load(&cf_phase) != 0;
    m.h.credit = calm ? 1000 : s_credit();
    m.h.features = calm ? cf_below(&cf_b.rng, 8) : s_features();
    if (cf_chance(&cf_b.rng, 20))
        m.h.flags |= AB_FLAG_NEW_PEER;
    s_tx(to, &m);
}

/* An echo of the client's request H (payload DATA, SIZE as received: an
 * lz4 one goes back compressed, with its flag and size). */
static void s_echo(const cf_peer_t *to, const ab_header_t *h, const void *data, size_t size,
                   int has)
{
    cf_msg_t m;
    s_msg(&m, AB_KIND_REPLY);
    m.h.correlation_id = h->id;
    m.h.flags = h->flags & AB_FLAG_LZ4;
    m.h.original_size = h->original_size;
    m.has = has;
    m.pl = data;
    m.plen = size;
    m.form = size <= AB_INLINE_MAX && cf_chance(&cf_b.rng, 50) ? F_INLINE : F_TWO;
    s_tx(to, &m);
}

/* Checks an lz4 payload the library sent: it must inflate to its size. */
static void s_check_lz4(const ab_header_t *h, const void *data, size_t size, int worker)
{
    int rc = ab_lz4_check(size, h->original_size, AB_DEFAULT_MAX_PAYLOAD);
    void *out = rc == AB_OK ? malloc(h->original_size ? (size_t)h->original_size : 1) : NULL;
    if (out)
        rc = ab_lz4_decompress(data, size, out, (size_t)h->original_size);
    free(out);
    if (rc != AB_OK)
        cf_fail("the %s sent a %s whose lz4 payload (%zu bytes, original size %llu) does not "
               "inflate: %s", worker ? "worker" : "client", ab_kind_name(h->kind), size,
               (unsigned long long)h->original_size, ab_strerror(rc));
}

/* One message the library sent (alone or in a BATCH) from the routing id
 * RID (LEN bytes). */
static void s_on_msg(const void *rid, size_t len, const ab_header_t *h, const void *data,
                     size_t size, int has)
{
    uint32_t k = h->kind;
    cf_b.kinds_in[k <= AB_KIND_MAX_ ? k : 0]++;
    if (atomic_load(&cf_phase) == 1)
        cf_b.rec_in[k <= AB_KIND_MAX_ ? k : 0]++;
    /* A worker's connection says REGISTER first, a client's HELLO; answers
     * do not tell (a client answers a corrupt REQUEST it was sent, too). */
    int role = k == AB_KIND_REGISTER ? 1 : k == AB_KIND_HELLO ? 0 : -1;
    int worker = k == AB_KIND_REGISTER || k == AB_KIND_REPLY || k == AB_KIND_PARTIAL ||
                 k == AB_KIND_ERROR;
    cf_peer_t *from = s_peer_seen(rid, len, role);
    if (!from)
        return;
    if ((h->flags & AB_FLAG_LZ4) && has)
        s_check_lz4(h, data, size, worker);
    int calm = atomic_load(&cf_phase) != 0;
    cf_msg_t m;
    switch (k) {
    case AB_KIND_HELLO:
    case AB_KIND_REGISTER:
        if (calm || cf_chance(&cf_b.rng, 90))
            s_answer_hello(from, k, h->id, h->target);
        break;
    case AB_KIND_REQUEST:
    case AB_KIND_CONTROL:
    case AB_KIND_DISCOVER:
    case AB_KIND_SUBSCRIBE:
    case AB_KIND_SEND:
        if (h->id)
            s_ring_add(&cf_b.calls, h->id);
        if (k == AB_KIND_DISCOVER && (h->flags & AB_FLAG_WATCH))
            s_ring_add(&cf_b.watches, h->id);
        if (k == AB_KIND_REQUEST && (calm || cf_chance(&cf_b.rng, 30))) {
            s_echo(from, h, data, size, has);
        } else if (!calm && h->id && cf_chance(&cf_b.rng, 35)) {
            /* the happy path too: a real-looking answer at once */
            cf_b.used = 0;
            s_msg(&m, k == AB_KIND_SEND && !h->credit ? AB_KIND_SEND : AB_KIND_REPLY);
            m.h.correlation_id = h->id;
            int forged = k == AB_KIND_SEND && !h->credit && cf_chance(&cf_b.rng, 20);
            if (k == AB_KIND_SEND && !h->credit) /* an ask's answer: from the agent asked */
                m.h.sender = forged ? ab_view_of(CF_FORGER) : h->target;
            if (k == AB_KIND_DISCOVER)
                s_mk_directory(&m, 1);
            else if (k == AB_KIND_SEND && h->credit) {
                m.pl = (const uint8_t *)(cf_chance(&cf_b.rng, 50) ? "queued" : "delivered");
                m.plen = strlen((const char *)m.pl);
                m.has = 1;
            } else if (forged) {
                m.pl = (const uint8_t *)CF_FORGED;
                m.plen = strlen(CF_FORGED);
                m.has = 1;
            } else if (k != AB_KIND_SUBSCRIBE) {
                s_payload(&m, 3000);
            }
            s_tx(from, &m);
        }
        break;
    case AB_KIND_REPLY:
    case AB_KIND_PARTIAL:
    case AB_KIND_ERROR:
        if (!ab_idmap_get(&cf_b.sent_requests, h->correlation_id))
            cf_fail("the worker answered (%s) request %llu, which it was never sent",
                   ab_kind_name(k), (unsigned long long)h->correlation_id);
        /* Only ab_worker_fail_begun's ERROR says the work had begun. */
        if (k != AB_KIND_ERROR && (h->flags & AB_FLAG_NON_IDEMPOTENT))
            cf_fail("the worker's %s to request %llu carries FLAG_NON_IDEMPOTENT",
                   ab_kind_name(k), (unsigned long long)h->correlation_id);
        if (k == AB_KIND_ERROR && (h->flags & AB_FLAG_NON_IDEMPOTENT))
            cf_b.begun_in++;
        if (k == AB_KIND_REPLY && s_ring_has(&cf_b.probes, h->correlation_id)) {
            if (has && size == sizeof s_probe_text && !(h->flags & AB_FLAG_LZ4) &&
                memcmp(data, s_probe_text, size) == 0)
                atomic_store(&cf_worker_ok, 1);
            else
                cf_fail("the worker's echo of the recovery probe %llu has %zu other bytes",
                       (unsigned long long)h->correlation_id, size);
        }
        break;
    case AB_KIND_PUBLISH:
    case AB_KIND_HEARTBEAT:
    case AB_KIND_CANCEL:
    case AB_KIND_BYE:
        break;
    default:
        cf_fail("the library sent a message of kind %s (%u)", ab_kind_name(k), k);
    }
}

/* One ZeroMQ message from the ROUTER: FRAMES[0] is the routing id. */
static void s_on_input(zmq_msg_t *frames, int n)
{
    ab_batch_entries_t *entries = &cf_b.entries;
    if (n < 2 || n > 3) {
        cf_fail("the library sent a message of %d frames", n - 1);
        return;
    }
    const void *rid = zmq_msg_data(&frames[0]);
    size_t rlen = zmq_msg_size(&frames[0]);
    ab_frame_t f[2] = {{zmq_msg_data(&frames[1]), zmq_msg_size(&frames[1])}, {NULL, 0}};
    if (n > 2)
        f[1] = (ab_frame_t){zmq_msg_data(&frames[2]), zmq_msg_size(&frames[2])};
    ab_header_t h;
    ab_frame_t pl;
    int rc = ab_msg_decode(f, (size_t)n - 1, NULL, &h, &pl);
    if (rc != AB_OK) {
        cf_fail("the library sent a message that does not decode (%s; kind %s, %zu header bytes)",
               ab_status_name(rc), ab_kind_name(h.kind), f[0].size);
        return;
    }
    if (h.kind != AB_KIND_BATCH) {
        s_on_msg(rid, rlen, &h, pl.data, pl.size, pl.data != NULL);
        return;
    }
    cf_b.batches_in++;
    rc = pl.data ? ab_batch_decode(entries, pl.data, pl.size, NULL) : AB_EBATCH;
    if (rc != AB_OK) {
        cf_fail("the library sent a BATCH that does not decode (%s, %zu bytes)",
               ab_status_name(rc), pl.size);
        return;
    }
    for (uint32_t i = 0; i < entries->n; i++) {
        const ab_batch_entry_t *e = &entries->e[i];
        s_on_msg(rid, rlen, &e->h, e->payload.data, e->payload.size, e->has_payload);
    }
}

/* Reads what has arrived (bounded). */
void cf_broker_drain(void)
{
    for (int k = 0; k < 2000 && cf_b.router; k++) {
        zmq_msg_t f[4];
        int n = 0, more = 1, extra = 0;
        while (more) { /* frames beyond four are counted, not kept */
            zmq_msg_t spare, *x = n < 4 ? &f[n] : &spare;
            zmq_msg_init(x);
            if (zmq_msg_recv(x, cf_b.router, n ? 0 : ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(x);
                break;
            }
            more = zmq_msg_more(x);
            if (n < 4)
                n++;
            else
                zmq_msg_close(x), extra++;
        }
        if (n == 0)
            return;
        s_on_input(f, n + extra);
        for (int i = 0; i < n; i++)
            zmq_msg_close(&f[i]);
    }
}

/* Waits up to MS for input, then reads it. */
void cf_broker_wait(int ms)
{
    zmq_pollitem_t it = {cf_b.router, 0, ZMQ_POLLIN, 0};
    if (cf_b.router && zmq_poll(&it, 1, ms) > 0)
        cf_broker_drain();
}

/* The recovery phase's probe to the worker: a request it must echo. */
void cf_broker_probe(void)
{
    const cf_peer_t *to = NULL;
    for (int i = 0; i < cf_b.npeers; i++)
        if (cf_b.peers[i].worker && (!to || cf_b.peers[i].seen_ms > to->seen_ms))
            to = &cf_b.peers[i];
    if (!to)
        return;
    cf_msg_t m;
    s_msg(&m, AB_KIND_REQUEST);
    m.h.id = cf_b.next_job++;
    m.h.target = ab_view_of(CF_SVC);
    m.h.timeout_ms = 5000;
    m.pl = s_probe_text;
    m.plen = sizeof s_probe_text;
    m.has = 1;
    s_ring_add(&cf_b.probes, m.h.id);
    s_tx(to, &m);
    cf_b.probes_sent++;
}
