/*
 * netfuzz_fake.c - the endpoint the near broker dials (move `dialed`): a
 * ROUTER netfuzz binds on 127.0.0.1, given to the near broker with
 * --peer, that answers as a peer broker would and then plays tricks. The
 * raw DEALER peers only ever open links the broker accepts; past bugs sat
 * in the records that hold a dialed and an accepted connection at once
 * (test_links_hostile.c), and only this endpoint makes the near broker's
 * dialed side meet a hostile peer.
 *
 * Its pump (no PRNG: what arrives depends on timing) answers HELLO with
 * the name it claims now (or refuses it: ERROR DENIED, say HELLO again),
 * echoes heartbeats, and echoes the requests forwarded to it (the good
 * client's among them, so an echo must be right: the payload and its lz4
 * flags as they came) or, in its holding mood, keeps their ids. Its moves:
 * claim another name (its own, a raw peer's, so that the broker's record
 * for it holds this dialed connection and a raw peer's accepted one, the
 * real brokers' names) and say WELCOME again unasked; drop its connection
 * (close and bind again: the broker dials anew, maybe with requests on the
 * link); open a connection of its own to the near broker and say HELLO on
 * it under the same name (the link's two connections, as two brokers that
 * dial each other have them), close it, or close it and open it again
 * with the same routing id, and say anything on either; directories;
 * NAMES and INTEREST, so the broker forwards direct messages and
 * publications to it; requests of its own on either connection, whose
 * answers may find it gone; answers to ids it never got and ERRORs
 * to held ones (twice, a chunk after); and stop reading for 0.5-5 s with
 * a small receive buffer (move `stall` for a link), while the broker keeps
 * forwarding.
 */
#include "netfuzz.h"

#include "agentbus.pb-c.h"
#include "batch.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

char nf_fake_ep[64], nf_fake_cert[64];

enum { F_HELLO = 1, F_WELCOME = 2, F_HEARTBEAT = 3, F_DIR = 4, F_NAMES = 5, F_INTEREST = 6 };

static struct {
    void *ctx, *sock;
    void *dealer; /* its own connection to the near broker (an accepted one there) */
    int out;      /* where s_send sends: 0 the dialed connection, 1 the dealer */
    char pub[41], sec[41];
    int curve;
    uint8_t rid[256];  /* the broker's dialed connection (from its HELLO) */
    size_t rid_len;
    const char *name;  /* the name it claims now */
    /* A connection the broker may have bound to a record raw peers can
     * claim (a name of theirs said on it: s_raw_name): the dialed one since
     * its last drop, its own since it said HELLO. The broker binds a
     * connection to a record by the name of the WELCOME it takes (dialed)
     * or the HELLO (its own), and later names said on it change nothing. */
    int dial_raw, own_raw;
    uint64_t session;
    int hold, refuse;  /* moods: keep requests unanswered; refuse the next HELLO */
    int64_t deaf_until_ms, rebind_ms, bound_ms;
    uint64_t held[NF_IDS];
    unsigned nheld;
    uint64_t hellos, welcomes, refused, echoed, held_total, drops, stalls, forged, renames;
    uint64_t dealer_opens, dealer_same_id, asked;
} s_f = {.name = "nf-b1", .session = 1};

/* --- sending ----------------------------------------------------------------------- */
static void s_send(const ab_header_t *h, const void *data, size_t len, int has)
{
    uint8_t stack[512];
    size_t hl;
    void *sock = s_f.out ? s_f.dealer : s_f.sock;
    if (!sock || (!s_f.out && !s_f.rid_len))
        return;
    uint8_t *hb = ab_header_encode_buf(h, stack, sizeof stack, &hl);
    if (!hb)
        return;
    if ((s_f.out || zmq_send(sock, s_f.rid, s_f.rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0) &&
        zmq_send(sock, hb, hl, (has ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) >= 0 && has)
        zmq_send(sock, data ? data : "", len, ZMQ_DONTWAIT);
    if (hb != stack)
        free(hb);
}

static void s_send_link(Agentbus__LinkMsg *m)
{
    m->broker = (char *)s_f.name;
    m->session = s_f.session;
    size_t n = agentbus__link_msg__get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return;
    agentbus__link_msg__pack(m, buf);
    ab_header_t h = ab_header_init(AB_KIND_LINK);
    s_send(&h, buf, n, 1);
    free(buf);
}

/* A name raw peers claim too (nf-b*, ""): a record by that name may get a
 * raw peer's connection, which answers what it is sent with anything. */
static int s_raw_name(const char *name)
{
    return !name[0] || !strncmp(name, "nf-b", 4);
}

static void s_send_type(uint32_t type, uint64_t echo_us)
{
    if (type == F_WELCOME && !s_f.out)
        s_f.dial_raw |= s_raw_name(s_f.name);
    else if (type == F_HELLO && s_f.out)
        s_f.own_raw = s_raw_name(s_f.name);
    Agentbus__LinkMsg m;
    agentbus__link_msg__init(&m);
    m.type = type;
    m.sent_us = type == F_HEARTBEAT ? (uint64_t)ab_now_us() : 0;
    m.echo_us = echo_us;
    s_send_link(&m);
}

/* --- the pump: what a peer broker answers -------------------------------------------- */
static void s_on_link(const ab_frame_t *pl)
{
    Agentbus__LinkMsg *m = agentbus__link_msg__unpack(NULL, pl->size, pl->data);
    if (!m)
        return;
    if (m->type == F_HELLO) {
        s_f.hellos++;
        if (s_f.refuse) { /* "say HELLO again" (correlation 0), as a broker refusing */
            ab_header_t h = ab_header_init(AB_KIND_ERROR);
            h.error_code = AB_ERR_DENIED;
            h.error_text = ab_view_of("netfuzz: not now");
            s_send(&h, NULL, 0, 0);
            s_f.refuse = 0;
            s_f.refused++;
        } else {
            s_send_type(F_WELCOME, 0);
            s_f.welcomes++;
        }
    } else if (m->type == F_HEARTBEAT) {
        s_send_type(F_HEARTBEAT, m->sent_us);
    }
    agentbus__link_msg__free_unpacked(m, NULL);
}

/* A request forwarded here: echoed at once (payload and lz4 flags as they
 * came: the good client checks its echoes), or held. */
static void s_on_request(const ab_header_t *in, const ab_frame_t *pl)
{
    if (s_f.hold) {
        s_f.held[s_f.nheld++ % NF_IDS] = in->id;
        s_f.held_total++;
        return;
    }
    ab_header_t h = ab_header_init(AB_KIND_REPLY);
    h.correlation_id = in->id;
    h.flags = in->flags & (AB_FLAG_LZ4 | AB_FLAG_LZ4_SKIPPED);
    h.original_size = in->original_size;
    s_send(&h, pl->data, pl->size, 1);
    s_f.echoed++;
}

static void s_on_entry(const ab_frame_t *f, size_t nf)
{
    ab_header_t h;
    ab_frame_t pl;
    if (ab_msg_decode(f, nf, NULL, &h, &pl) != AB_OK)
        return;
    if (h.kind == AB_KIND_LINK)
        s_on_link(&pl);
    else if (h.kind == AB_KIND_REQUEST)
        s_on_request(&h, &pl);
}

/* One message (rid, header, payload; no rid on the dealer) on S: 1, or 0
 * when none waits. */
static int s_read_one(void *s)
{
    size_t at = s == s_f.dealer ? 0 : 1;
    zmq_msg_t m[4];
    size_t n = 0;
    int more = 1;
    while (more && n < 4) {
        zmq_msg_init(&m[n]);
        if (zmq_msg_recv(&m[n], s, n ? 0 : ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m[n]);
            break;
        }
        more = zmq_msg_more(&m[n]);
        n++;
    }
    if (n >= at + 1 && zmq_msg_size(&m[0]) <= sizeof s_f.rid) {
        if (at) { /* the connection the broker dials now */
            s_f.rid_len = zmq_msg_size(&m[0]);
            memcpy(s_f.rid, zmq_msg_data(&m[0]), s_f.rid_len);
        }
        ab_frame_t f[2] = {{zmq_msg_data(&m[at]), zmq_msg_size(&m[at])}, {NULL, 0}};
        if (n > at + 1)
            f[1] = (ab_frame_t){zmq_msg_data(&m[at + 1]), zmq_msg_size(&m[at + 1])};
        size_t nf = n > at + 1 ? 2 : 1;
        ab_header_t h;
        ab_frame_t pl;
        ab_batch_reader_t r;
        if (ab_msg_decode(f, nf, NULL, &h, &pl) == AB_OK &&
            h.kind == AB_KIND_BATCH) {
            ab_frame_t ef[2];
            size_t enf;
            if (ab_batch_open(&r, pl.data, pl.size, NULL, NULL) == AB_OK)
                while (ab_batch_next(&r, ef, &enf) == 1)
                    s_on_entry(ef, enf);
        } else {
            s_on_entry(f, nf);
        }
    }
    for (size_t i = 0; i < n; i++)
        zmq_msg_close(&m[i]);
    return n > 0;
}

/* A ROUTER on nf_fake_ep: small receive buffers, so that when it stops
 * reading the broker's side fills (peer-out-max-bytes, sndhwm). */
static void *s_bind(const char *ep)
{
    void *s = zmq_socket(s_f.ctx, ZMQ_ROUTER);
    int linger = 0, rcvhwm = 8, rcvbuf = 8192, sndhwm = 2000, one = 1;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm);
    zmq_setsockopt(s, ZMQ_RCVBUF, &rcvbuf, sizeof rcvbuf);
    zmq_setsockopt(s, ZMQ_SNDHWM, &sndhwm, sizeof sndhwm);
    if (s_f.curve) {
        zmq_setsockopt(s, ZMQ_CURVE_SERVER, &one, sizeof one);
        zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, s_f.sec, 41);
    }
    if (zmq_bind(s, ep) != 0) {
        zmq_close(s);
        return NULL;
    }
    return s;
}

int nf_fake_open(void *ctx, const char *pub, const char *sec)
{
    s_f.ctx = ctx;
    s_f.curve = sec != NULL;
    if (sec) {
        memcpy(s_f.pub, pub, 41);
        memcpy(s_f.sec, sec, 41);
    }
    s_f.sock = s_bind("tcp://127.0.0.1:*");
    size_t len = sizeof nf_fake_ep;
    if (!s_f.sock || zmq_getsockopt(s_f.sock, ZMQ_LAST_ENDPOINT, nf_fake_ep, &len) != 0)
        return -1;
    return 0;
}

void nf_fake_pump(int64_t now)
{
    if (!s_f.ctx)
        return;
    if (!s_f.sock && now >= s_f.rebind_ms) { /* after a drop: the same port again */
        s_f.sock = s_bind(nf_fake_ep);
        s_f.rebind_ms = now + 50;
        s_f.bound_ms = now;
    }
    if (now < s_f.deaf_until_ms)
        return;
    s_f.out = 0;
    for (int k = 0; s_f.sock && k < 256 && s_read_one(s_f.sock); k++)
        ;
    s_f.out = 1;
    for (int k = 0; s_f.dealer && k < 256 && s_read_one(s_f.dealer); k++)
        ;
    s_f.out = 0;
}

/* --- its moves ----------------------------------------------------------------------- */
/* A directory: the services raw peers register, the good ones (so that
 * the good client's requests may come here and must come back right),
 * some withdrawn (capacity 0). Never the good ones to a record the raw
 * peers may claim too (nf-b*, ""): the broker keeps one link record per name,
 * so a raw peer's connection to it would get the good client's request
 * and answer it with anything (seed 40002 did: "echo of 184 bytes
 * answered with 85 other bytes"). Which record a DIRECTORY goes to is the
 * connection's binding, not the name it carries: the name said now was
 * not enough (seed 50001, nf-b* key: bound as nf-b1, renamed nf-far,
 * announced the good services to nf-b1: "echo of 20019 bytes answered
 * with 1888 other bytes"). */
static void s_dir(void)
{
    static const char *const svcs[] = {"svc-a", "svc-b", "infer", NF_GOOD_SVC, NF_FAR_SVC,
                                       NF_MID_SVC};
    int raw = s_raw_name(s_f.name) || (s_f.out ? s_f.own_raw : s_f.dial_raw);
    uint32_t nsvcs = raw ? 3 : 6;
    Agentbus__LinkService es[6], *ps[6];
    Agentbus__LinkMsg m;
    agentbus__link_msg__init(&m);
    m.type = F_DIR;
    m.full = nf_chance(70);
    size_t n = 1 + nf_below(6);
    for (size_t i = 0; i < n; i++) {
        agentbus__link_service__init(&es[i]);
        es[i].name = (char *)svcs[nf_below(nsvcs)];
        es[i].capacity = nf_chance(15) ? 0 : 1 + nf_below(8);
        es[i].free_credit = nf_below(8);
        es[i].workers = 1;
        es[i].lz4 = nf_chance(50);
        ps[i] = &es[i];
    }
    m.n_services = n;
    m.services = ps;
    s_send_link(&m);
}

/* NAMES or INTEREST: agent names netfuzz SENDs to, patterns it publishes on. */
static void s_sets(void)
{
    static char *names[] = {"alice", "bob", "carol", "ghost"};
    static char *pats[] = {"t.", "news.", "t.a"};
    Agentbus__LinkMsg m;
    agentbus__link_msg__init(&m);
    if (nf_chance(50)) {
        m.type = F_NAMES;
        m.n_names = nf_below(5);
        m.names = names;
    } else {
        m.type = F_INTEREST;
        m.n_topics = nf_below(4);
        m.topics = pats;
        m.all_topics = nf_chance(20);
    }
    s_send_link(&m);
}

/* Answers to ids it never got (seen elsewhere, or random), or ERRORs to
 * ones it holds, now and then twice. A chunk or a reply carries a dispatch
 * number (bits 55..62 of a link id, link_fwd.c) no request reaches: the
 * good client's requests may wait unread in its pipe, and text forged
 * into one of them would be a wrong echo that no broker could prevent. */
static void s_forge(void)
{
    static const uint32_t kinds[] = {AB_KIND_PARTIAL, AB_KIND_REPLY, AB_KIND_ERROR};
    uint64_t corr = s_f.nheld && nf_chance(50)
                        ? s_f.held[nf_below(s_f.nheld < NF_IDS ? s_f.nheld : NF_IDS)]
                        : nf_seen_pick();
    for (int twice = nf_chance(20); twice >= 0; twice--) {
        ab_header_t h = ab_header_init(kinds[nf_below(3)]);
        h.correlation_id = corr;
        if (h.kind == AB_KIND_ERROR) {
            h.error_code = nf_chance(50) ? AB_ERR_BACKEND : AB_ERR_APPLICATION;
            h.flags = nf_chance(30) ? AB_FLAG_NON_IDEMPOTENT : 0;
            s_send(&h, NULL, 0, 0);
        } else {
            h.correlation_id = (corr & ((1ull << 55) - 1)) | 0xf0ull << 55;
            s_send(&h, "forged", 6, 1);
        }
        s_f.forged++;
    }
}

static void s_drop(int64_t now)
{
    zmq_close(s_f.sock);
    s_f.sock = NULL;
    s_f.rid_len = 0;
    s_f.dial_raw = 0; /* the broker dials again: a binding of its own */
    s_f.nheld = 0;
    s_f.rebind_ms = now + nf_below(1500); /* the broker may redial before it is back */
    s_f.drops++;
}

/* Its own connection to the near broker, saying HELLO under the name it
 * claims on the dialed one: the broker's record for it then holds both.
 * Opened; or closed; or closed and opened again with the same routing id
 * (the broker may not have seen the old one go: ZeroMQ ignores the new). */
static void s_dealer(void)
{
    int again = s_f.dealer && nf_chance(50), same = nf_chance(70);
    if (s_f.dealer) {
        zmq_close(s_f.dealer);
        s_f.dealer = NULL;
        if (!again)
            return;
    }
    void *d = zmq_socket(s_f.ctx, ZMQ_DEALER);
    int linger = 0, rcvhwm = 8, rcvbuf = 8192;
    zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(d, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm);
    zmq_setsockopt(d, ZMQ_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (same)
        zmq_setsockopt(d, ZMQ_ROUTING_ID, "nf-fake-d", 9);
    if (s_f.curve) {
        zmq_setsockopt(d, ZMQ_CURVE_SERVERKEY, nf_server_pub, 41);
        zmq_setsockopt(d, ZMQ_CURVE_PUBLICKEY, s_f.pub, 41);
        zmq_setsockopt(d, ZMQ_CURVE_SECRETKEY, s_f.sec, 41);
    }
    zmq_connect(d, nf_ep);
    s_f.dealer = d;
    s_f.out = 1;
    s_send_type(F_HELLO, 0);
    s_f.out = 0;
    s_f.dealer_opens++;
    s_f.dealer_same_id += same;
}

/* Requests of its own, as a peer broker forwards them, on either of its
 * connections (the answers come back on one of them, which may be gone
 * before they do: the next move may drop it). */
static void s_ask(void)
{
    static const char *const svcs[] = {NF_GOOD_SVC, NF_FAR_SVC, "svc-a", "infer", "nosuch"};
    static uint64_t next = 1;
    for (uint32_t n = 1 + nf_below(8); n; n--) {
        ab_header_t h = ab_header_init(AB_KIND_REQUEST);
        h.id = next++;
        h.target = ab_view_of(NF_PICK(svcs));
        h.timeout_ms = 300 + nf_below(3000);
        h.hops_left = nf_below(4);
        h.via = ab_view_of(nf_chance(80) ? s_f.name : "nf-b2,nf-b3");
        s_send(&h, "the fake asked", 14, 1);
        s_f.asked++;
    }
}

void nf_fake_move(int64_t now)
{
    static const char *const names[] = {"nf-b1", "nf-b2", "nf-b3", "nf-fake", "nf-far",
                                        "nf-mid", "nf-near", ""};
    if (!s_f.ctx)
        return;
    uint32_t r = nf_below(100);
    s_f.out = s_f.dealer && nf_chance(40); /* said on its own connection */
    if (r < 15) {
        s_send_type(F_HEARTBEAT, 0);
    } else if (r < 28) {
        s_dir();
    } else if (r < 38) {
        s_sets();
    } else if (r < 48) { /* another name, said unasked; sometimes another session too */
        s_f.name = NF_PICK(names);
        if (nf_chance(30))
            s_f.session++;
        s_send_type(F_WELCOME, 0);
        s_f.renames++;
    } else if (r < 55) { /* once it was back for a while: else the link is never up */
        if (s_f.sock && now >= s_f.bound_ms + 3000)
            s_drop(now);
    } else if (r < 63) {
        s_dealer();
    } else if (r < 77) {
        s_forge();
    } else if (r < 82) {
        s_ask();
    } else if (r < 87) { /* moods: hold requests or echo them; refuse the next HELLO */
        s_f.hold = nf_chance(40);
        s_f.refuse = nf_chance(30);
    } else if (r < 94) {
        if (now >= s_f.deaf_until_ms + 3000) {
            s_f.deaf_until_ms = now + 500 + nf_below(4500);
            s_f.stalls++;
        }
    } else if (s_f.nheld) { /* ERRORs to every request it holds (the work failed) */
        for (unsigned i = 0; i < s_f.nheld && i < NF_IDS; i++) {
            ab_header_t h = ab_header_init(AB_KIND_ERROR);
            h.correlation_id = s_f.held[i];
            h.error_code = AB_ERR_BACKEND;
            s_send(&h, NULL, 0, 0);
        }
        s_f.nheld = 0;
    }
    s_f.out = 0;
}

void nf_fake_report(void)
{
    if (!s_f.ctx)
        return;
    printf("netfuzz: dialed endpoint %s: %llu HELLOs (%llu answered, %llu refused), %llu "
           "requests echoed, %llu held, %llu forged answers, %llu renames, %llu drops, %llu "
           "stalls, its own connection opened %llu times (%llu with the same id), %llu "
           "requests of its own\n",
           nf_fake_ep, (unsigned long long)s_f.hellos, (unsigned long long)s_f.welcomes,
           (unsigned long long)s_f.refused, (unsigned long long)s_f.echoed,
           (unsigned long long)s_f.held_total, (unsigned long long)s_f.forged,
           (unsigned long long)s_f.renames, (unsigned long long)s_f.drops,
           (unsigned long long)s_f.stalls, (unsigned long long)s_f.dealer_opens,
           (unsigned long long)s_f.dealer_same_id, (unsigned long long)s_f.asked);
}

void nf_fake_close(void)
{
    if (s_f.sock)
        zmq_close(s_f.sock);
    if (s_f.dealer)
        zmq_close(s_f.dealer);
    s_f.sock = s_f.dealer = NULL;
}
