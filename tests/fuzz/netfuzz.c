/*
 * netfuzz.c - a stateful network fuzzer for the broker.
 *
 * The decoders are fuzzed on their own (fuzz_*.c); what breaks a broker is
 * the state it keeps between messages. This program starts a real broker
 * (or is given one), a real echo worker and a well-behaved libagentbus
 * client, then lets a handful of raw ZeroMQ DEALER peers play random but
 * valid-looking sequences at it: HELLO with names, instances and takeover,
 * REGISTER with labels, capacity and features, requests (small, lz4,
 * cacheable, typed inference), CANCEL, answers to their own, to other
 * peers' and to random ids (twice, a chunk after the final, ERRORs saying
 * the work had begun: FLAG_NON_IDEMPOTENT, as ab_worker_fail_begun sends
 * them), a worker's whole answer (chunks, one or two finals) to a request
 * it holds or held before a reconnect, reconnects with the same routing id, a second
 * connection with another peer's id, BYE, SUBSCRIBE, SEND, PUBLISH,
 * HEARTBEAT, DISCOVER, CONTROL, broker LINK messages (HELLO, heartbeats,
 * directories, whole sets of agent names and of topic patterns, hostile
 * ones among them and some past their bounds, then forwarded requests and
 * answers: the broker runs with --auth none, so any peer may open a link)
 * and BATCHes of all of it. Peers fall silent: deaf (reads nothing for a
 * while), mute (sends heartbeats only), stall (subscribes, then reads
 * nothing for 0.5-5 s while answers to its requests and publications come,
 * then reads again or disconnects; odd peers take 8 messages and 8 KiB at
 * a time, so the broker's side fills past peer-out-max-bytes, small here).
 *
 * The near broker also dials an endpoint netfuzz binds (netfuzz_fake.c,
 * move dialed): it answers HELLO as a peer broker under a name that
 * changes (its own, nf-b1..3 which the raw peers' LINK moves use too, so
 * that one link record holds a dialed and an accepted connection, or a
 * real broker's name), refuses a HELLO now and then, sends directories,
 * NAMES and INTEREST, echoes the requests forwarded to it or holds them
 * and fails them later, answers ids it never got, drops its connection
 * (closes, binds again: the broker dials anew with requests on the link),
 * opens one of its own to the near broker under the same name (a link's
 * two connections) and closes it or opens it again with the same routing
 * id, sends requests of its own on either, and stops reading for 0.5-5 s.
 *
 * With --linked the same moves meet two brokers joined by a real link, and
 * authentication: a near broker (the good client's) and a far one, both
 * with --auth curve, each dialing the other; a second echo worker serves
 * NF_FAR_SVC at the far broker only, so the good client's requests to it
 * cross the link (the good client alternates between the two services).
 * The raw peers connect over CURVE to either broker, each with one of four
 * keys: an agent granted a few names and topics, a worker granted two of
 * the services, a peer broker granted the names nf-b* (so its LINK moves
 * open links; the real brokers' names are not granted to it) and an admin.
 * The dialed endpoint holds, by the seed modulo 3, the nf-b* key (0), the
 * brokers' key (1: the near broker takes it for nf-far or nf-mid, and
 * refuses other names) or a key granted every name it says (2: nffake, so
 * its renames and forged HELLOs are taken, the near broker's own name too).
 * Every 3-10 s the far side has a fault: the far broker stopped (SIGSTOP)
 * for 0.3-2.5 s, so that the link is lost and found again with requests
 * on it, killed and restarted, or its echo worker killed and restarted.
 *
 * With --line, three brokers in a line, near - middle - far (each dials
 * its neighbours; near and far are not linked), so that the good client's
 * requests to NF_FAR_SVC cross two links and the middle broker forwards
 * what it did not receive from a client. The middle broker's own worker
 * serves NF_MID_SVC; the good client takes turns among the three
 * services; the raw peers are split among the three brokers, and each
 * fault strikes the middle side or the far one.
 *
 * The broker it starts runs with short timers and small limits (heartbeat,
 * mailbox TTL and sizes, queue, timeouts), so that expiry, eviction and
 * full queues happen within a run.
 *
 * Oracle: the broker process stays alive (a sanitizer report aborts it),
 * the good client's echoes stay correct and it gets at least one correct
 * answer every 30 s, the broker answers a `stats` CONTROL at the end and
 * exits with status 0 on SIGTERM (a leak report fails; so does a difference
 * its own recount of its bookkeeping found: --self-check-ms, audit.h). With
 * --linked (--line) the same holds of the far (and middle) broker: it
 * never dies but by the faults netfuzz gives it, and exits 0 at the end;
 * and each link toward the far broker answered a request. Exit
 * status 0 when all held, 1 otherwise (with the seed to replay and the
 * broker's report), 2 on bad usage. A replay plays the same moves from the same seed; what the
 * broker answers, and so some later choices, depends on timing.
 *
 * netfuzz_moves.c builds each move's message; netfuzz_procs.c starts the
 * processes, gives the far side its faults and stops them; netfuzz_fake.c
 * is the endpoint the near broker dials; netfuzz_final.c asks each broker
 * for its stats and links at the end.
 *
 *   netfuzz [--seed N] [--seconds S] [--peers K] [--avoid move,...]
 *           [--broker-bin PATH | --endpoint EP | --linked | --line] [--verbose]
 */
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "batch.h"
#include "codec.h"
#include "compress.h"
#include "netfuzz.h"
#include "tl_args.h"
#include "util.h"

#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

#define NF_MAX_PEERS 16
#define NF_RIDS 10     /* routing ids remembered from `workers` / `agents` answers */

/* --- moves ------------------------------------------------------------------ */
#define NF_NAME(n) #n,
static const char *s_move_names[] = {NF_MOVES(NF_NAME)};
/* Relative weights: the moves that build state come often. */
static const int s_weight[MV_COUNT_] = {
    [MV_hello] = 6, [MV_register] = 6, [MV_request] = 14, [MV_lz4] = 5, [MV_typed] = 5,
    [MV_cancel] = 6, [MV_answer] = 14, [MV_reconnect] = 3, [MV_steal] = 1, [MV_work] = 6,
    [MV_bye] = 3,
    [MV_subscribe] = 4, [MV_unsubscribe] = 2, [MV_send] = 8, [MV_publish] = 5,
    [MV_heartbeat] = 5, [MV_discover] = 2, [MV_control] = 2, [MV_batch] = 6, [MV_deaf] = 1,
    [MV_link] = 5, [MV_link_names] = 3, [MV_link_interest] = 3, [MV_mute] = 1,
    [MV_stall] = 1, [MV_dialed] = 4,
};

/* --- options -------------------------------------------------------------- */
nf_opt_t nf_opt = {0, 60, 0, 0, 0, NULL, NULL};

static char s_replay[512]; /* the command line that plays this run again */

/* What netfuzz tests is the broker, which runs under its own leak checker
 * and must exit clean. netfuzz's raw sockets (closed mid-handshake, sharing
 * stolen routing ids, deaf until the broker cuts them off) leave libzmq's own
 * allocations behind in this process at exit; they are not the broker's, so
 * LeakSanitizer is off for this process only (exec'd children keep it). */
int __lsan_is_turned_off(void);
int __lsan_is_turned_off(void)
{
    return 1;
}

/* --- the well-behaved client (its own thread) --------------------------------------- */
static struct {
    pthread_t th;
    atomic_int stop;
    _Atomic int64_t last_ok_ms;
    atomic_long ok, errors, wrong;
    char first_wrong[256]; /* the thread's until wrong is counted: written before */
    int codes[64];
} s_good;

ab_client_t *nf_client_at(const char *ep)
{
    ab_options_t *o = ab_options_new();
    ab_client_t *c = NULL;
    if (o && ab_options_set_endpoint(o, ep) == AB_OK)
        ab_client_new(&c, o);
    ab_options_destroy(&o);
    return c;
}

static ab_client_t *s_client_new(void)
{
    return nf_client_at(nf_ep);
}

/* One echo of a payload of a random size (large ones travel compressed),
 * with --linked (--line) taking turns between the near broker's worker and
 * the far (and middle) one's: a wrong answer is a finding; an error is
 * counted. */
static void s_good_one(ab_client_t *c, uint64_t *rng, uint32_t n)
{
    uint32_t turn = n % (uint32_t)(nf_opt.linked + 1);
    const char *svc = turn ? nf_rb[turn - 1].svc : NF_GOOD_SVC;
    static char buf[70000];
    size_t size = (*rng % 7 == 0) ? 20000 + *rng % 40000 : 1 + *rng % 300;
    for (size_t i = 0; i < size; i++)
        buf[i] = (char)('a' + (i * 7 + n) % 26); /* compressible */
    void *reply = NULL;
    size_t rlen = 0;
    int rc = ab_client_request(c, svc, buf, size, 20000, &reply, &rlen);
    if (rc == AB_OK && rlen == size && memcmp(reply, buf, size) == 0) {
        atomic_fetch_add(&s_good.ok, 1);
        atomic_store(&s_good.last_ok_ms, ab_now_ms());
    } else if (rc == AB_OK) {
        if (!atomic_load(&s_good.wrong))
            snprintf(s_good.first_wrong, sizeof s_good.first_wrong,
                     "echo of %zu bytes by %s answered with %zu other bytes", size, svc, rlen);
        atomic_fetch_add(&s_good.wrong, 1);
    } else {
        atomic_fetch_add(&s_good.errors, 1);
        s_good.codes[(-rc) & 63]++;
    }
    ab_free(reply);
}

static void *s_good_main(void *arg)
{
    (void)arg;
    ab_client_t *c = s_client_new();
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    for (uint32_t n = 0; !atomic_load(&s_good.stop) && c; n++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        s_good_one(c, &rng, n);
        ab_client_poll(c, 20);
    }
    ab_client_destroy(&c);
    return NULL;
}

/* Waits until SVC answers at the broker: it and its worker are up (and
 * for the other brokers' services, the links). */
static int s_wait_service(const char *svc)
{
    ab_client_t *c = s_client_new();
    int64_t end = ab_now_ms() + 30000;
    int ready = 0;
    while (c && !ready && ab_now_ms() < end) {
        void *r = NULL;
        size_t n = 0;
        ready = ab_client_request(c, svc, "up?", 3, 2000, &r, &n) == AB_OK;
        ab_free(r);
        if (!ready)
            usleep(100 * 1000);
    }
    ab_client_destroy(&c);
    return ready ? 0 : -1;
}

static int s_wait_ready(void)
{
    if (s_wait_service(NF_GOOD_SVC) != 0)
        return -1;
    for (int i = 0; i < nf_opt.linked; i++)
        if (s_wait_service(nf_rb[i].svc) != 0)
            return -1;
    return 0;
}

/* --- raw peers ----------------------------------------------------------------------- */
static void *s_ctx;
static nf_peer_t s_peers[NF_MAX_PEERS];
static uint64_t s_moves[MV_COUNT_], s_kinds_in[AB_KIND_MAX_ + 1];
static char s_stolen[NF_RIDS][64]; /* routing ids read from `workers` / `agents` */
static size_t s_stolen_len[NF_RIDS];
static int s_nstolen;

/* With --linked, peer I holds key I % 4 (s_key_names) and connects to
 * broker I / 4 (modulo their number; 0 the near one, then nf_rb): with 8
 * peers (12 with --line), each broker meets each key. */
static const char *s_peer_ep(const nf_peer_t *p)
{
    int k = (int)(p - s_peers) / 4 % (nf_opt.linked + 1);
    return k ? nf_rb[k - 1].ep : nf_ep;
}

/* Odd peers take little at a time (8 messages, an 8 KiB kernel buffer):
 * when they stop reading (deaf, stall) the broker's side of their pipe
 * fills, not netfuzz's. */
static void *s_socket_with_rid(const nf_peer_t *p, const char *rid, size_t len)
{
    void *s = zmq_socket(s_ctx, ZMQ_DEALER);
    int linger = 0, hwm = 20000, narrow = (int)(p - s_peers) % 2, rcvhwm = narrow ? 8 : hwm;
    int rcvbuf = 8192;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm);
    if (narrow)
        zmq_setsockopt(s, ZMQ_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (len)
        zmq_setsockopt(s, ZMQ_ROUTING_ID, rid, len);
    if (nf_opt.linked) {
        int k = (int)(p - s_peers) % 4;
        zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, nf_server_pub, 41);
        zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, nf_key_pub[k], 41);
        zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, nf_key_sec[k], 41);
    }
    zmq_connect(s, s_peer_ep(p));
    return s;
}

/* A routing id: one of a small shared pool, so peers collide on purpose. */
/* A routing id of this peer's own: peer I's are "nf-I-G". Two connections
 * share one only through the steal move (so --avoid steal keeps them
 * apart) or a reconnect that keeps its id. */
static void s_pick_rid(nf_peer_t *p)
{
    static unsigned gen;
    p->rid_len = (size_t)snprintf(p->rid, sizeof p->rid, "nf-%d-%u", (int)(p - s_peers), gen++);
}

static void s_peer_open(nf_peer_t *p)
{
    s_pick_rid(p);
    p->sock = s_socket_with_rid(p, p->rid, p->rid_len);
    p->instance = nf_rand();
    p->next_id = 1 + nf_below(1000);
}

static void s_peer_close(nf_peer_t *p)
{
    if (p->sock)
        zmq_close(p->sock);
    if (p->twin)
        zmq_close(p->twin);
    p->sock = p->twin = NULL;
    p->nheld = p->nsent = 0;
    p->registered = 0;
}

/* The payload inside the header frame (codec.h "Inline"), as a peer that
 * announced FEATURE_INLINE sends it, or not (peers announce it at random):
 * HOW (0..99) picks a wrong shape now and then: the field twice, cut
 * short, or with a payload frame as well. */
static void s_send_inline(void *s, const uint8_t *hdr, size_t hlen, const void *data,
                          size_t size, uint32_t how)
{
    size_t n = ab_msg_inline_size(hlen, size), field = n - hlen;
    size_t twice = how < 5 ? field : 0, len = n + twice;
    uint8_t *f = malloc(len);
    if (!f)
        return;
    ab_msg_inline_put(f, hdr, hlen, data, size);
    if (twice)
        memcpy(f + n, f + hlen, field);
    if (how >= 5 && how < 10)
        len -= 1 + nf_below((uint32_t)field); /* inside the field */
    int more = how >= 10 && how < 15;
    if (zmq_send(s, f, len, (more ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) >= 0 && more)
        zmq_send(s, data ? data : "", size, 0);
    free(f);
}

/* Sends a header (and payload when HAS) on S, without blocking: the
 * payload in a frame of its own, or (a third of the time) inline. */
static void s_send(void *s, const ab_header_t *h, const void *data, size_t size, int has)
{
    uint8_t stack[512];
    size_t len;
    uint8_t *buf = ab_header_encode_buf(h, stack, sizeof stack, &len);
    if (!buf)
        return;
    if (has && nf_chance(33))
        s_send_inline(s, buf, len, data, size, nf_below(100));
    else if (zmq_send(s, buf, len, (has ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) >= 0 && has)
        zmq_send(s, data ? data : "", size, 0);
    if (buf != stack)
        free(buf);
}

/* --- what a peer receives ------------------------------------------------------------- */
/* CONTROL queries for `workers` and `agents` in flight: their answers name
 * routing ids worth stealing (ring buffers, no PRNG: receiving must not
 * change which moves a seed plays). */
static struct {
    uint64_t id;
    int agents;
} s_listing[16];
static unsigned s_nlisting, s_stolen_next;

static void s_note_out(const nf_out_t *o)
{
    if (o->h.kind != AB_KIND_CONTROL)
        return;
    int agents = ab_view_eq(o->h.target, "agents");
    if (agents || ab_view_eq(o->h.target, "workers")) {
        s_listing[s_nlisting % 16].id = o->h.id;
        s_listing[s_nlisting++ % 16].agents = agents;
    }
}

static void s_steal_hex(const char *hex)
{
    size_t n = 0;
    char *to = s_stolen[s_stolen_next % NF_RIDS];
    for (; hex && hex[2 * n] && hex[2 * n + 1] && n < 63; n++) {
        unsigned v = 0;
        if (sscanf(hex + 2 * n, "%2x", &v) != 1)
            break;
        to[n] = (char)v;
    }
    if (n) {
        s_stolen_len[s_stolen_next++ % NF_RIDS] = n;
        if (s_nstolen < NF_RIDS)
            s_nstolen++;
    }
}

static void s_on_listing(uint64_t corr, ab_frame_t pl)
{
    int k = 0;
    while (k < 16 && !(s_listing[k].id == corr && corr))
        k++;
    if (k == 16)
        return;
    if (s_listing[k].agents) {
        Agentbus__AgentList *al = agentbus__agent_list__unpack(NULL, pl.size, pl.data);
        for (size_t i = 0; al && i < al->n_agents; i++)
            s_steal_hex(al->agents[i]->id);
        if (al)
            agentbus__agent_list__free_unpacked(al, NULL);
    } else {
        Agentbus__WorkerList *wl = agentbus__worker_list__unpack(NULL, pl.size, pl.data);
        for (size_t i = 0; wl && i < wl->n_workers; i++)
            s_steal_hex(wl->workers[i]->id);
        if (wl)
            agentbus__worker_list__free_unpacked(wl, NULL);
    }
}

static void s_on_entry(nf_peer_t *p, const ab_frame_t *f, size_t nf)
{
    ab_header_t h;
    ab_frame_t pl;
    if (ab_msg_decode(f, nf, NULL, &h, &pl) != AB_OK)
        return;
    s_kinds_in[h.kind <= AB_KIND_MAX_ ? h.kind : 0]++;
    if (h.kind == AB_KIND_REQUEST) {
        nf_remember(p->held, &p->nheld, h.id);
        nf_seen_add(h.id);
    } else if (h.kind == AB_KIND_REPLY && pl.size) {
        s_on_listing(h.correlation_id, pl);
    }
}

/* Reads one message from S into the peer's state. 1 read, 0 nothing. */
static int s_read_one(nf_peer_t *p, void *s)
{
    zmq_msg_t m[3];
    size_t n = 0;
    int more = 1;
    while (more && n < 3) {
        zmq_msg_init(&m[n]);
        if (zmq_msg_recv(&m[n], s, n ? 0 : ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m[n]);
            break;
        }
        more = zmq_msg_more(&m[n]);
        n++;
    }
    if (n == 0)
        return 0;
    ab_frame_t f[2] = {{zmq_msg_data(&m[0]), zmq_msg_size(&m[0])}, {NULL, 0}};
    if (n > 1)
        f[1] = (ab_frame_t){zmq_msg_data(&m[1]), zmq_msg_size(&m[1])};
    ab_header_t h;
    ab_frame_t pl;
    if (ab_msg_decode(f, n > 2 ? 2 : n, NULL, &h, &pl) == AB_OK && h.kind == AB_KIND_BATCH) {
        ab_batch_reader_t r;
        ab_frame_t ef[2];
        size_t enf;
        s_kinds_in[AB_KIND_BATCH]++;
        if (ab_batch_open(&r, pl.data, pl.size, NULL, NULL) == AB_OK)
            while (ab_batch_next(&r, ef, &enf) == 1)
                s_on_entry(p, ef, enf);
    } else {
        s_on_entry(p, f, n > 2 ? 2 : n);
    }
    for (size_t i = 0; i < n; i++)
        zmq_msg_close(&m[i]);
    return 1;
}

/* Reads what every peer has waiting (bounded), except deaf ones; a peer
 * whose stall ends in a disconnect goes (and comes back under a new
 * routing id, drawing nothing from the PRNG); the dialed endpoint too. */
static void s_drain_all(void)
{
    int64_t now = ab_now_ms();
    nf_fake_pump(now);
    for (int i = 0; i < nf_opt.peers; i++) {
        nf_peer_t *p = &s_peers[i];
        if (now < p->deaf_until_ms)
            continue;
        p->stalling = 0;
        if (p->stall_drop) {
            p->stall_drop = 0;
            s_peer_close(p);
            s_pick_rid(p);
            p->sock = s_socket_with_rid(p, p->rid, p->rid_len);
        }
        for (int k = 0; k < 256 && p->sock && s_read_one(p, p->sock); k++)
            ;
        for (int k = 0; k < 256 && p->twin && s_read_one(p, p->twin); k++)
            ;
    }
}

/* --- moves that are not one message ------------------------------------------------- */
static int s_pick_move(int allow_compound)
{
    int total = 0;
    for (int i = 0; i < MV_COUNT_; i++)
        total += nf_avoid[i] ? 0 : s_weight[i];
    for (int tries = 0; tries < 64; tries++) {
        int r = (int)nf_below((uint32_t)total), i = 0;
        for (; i < MV_COUNT_; i++) {
            if (nf_avoid[i])
                continue;
            if ((r -= s_weight[i]) < 0)
                break;
        }
        if (i < MV_COUNT_ && (allow_compound || s_weight[i] > 0)) {
            int compound = i == MV_batch || i == MV_reconnect || i == MV_steal ||
                           i == MV_work || i == MV_deaf || i == MV_mute || i == MV_stall ||
                           i == MV_dialed;
            if (allow_compound || !compound)
                return i;
        }
    }
    return MV_request;
}

static void s_emit(void *sock, nf_out_t *o)
{
    s_note_out(o);
    s_send(sock, &o->h, o->data, o->len, o->has);
    free(o->heap);
}

/* A valid BATCH of 2..24 messages of the other kinds. */
static void s_do_batch(nf_peer_t *p)
{
    ab_batch_t b;
    ab_batch_init(&b);
    int n = 2 + (int)nf_below(23);
    static nf_out_t o;
    for (int i = 0; i < n; i++) {
        if (!nf_make(s_pick_move(0), p, &o))
            continue;
        uint8_t hb[512];
        static uint8_t ib[512 + 8200];
        size_t hl = ab_header_encode(&o.h, hb, sizeof hb);
        if (hl && o.has && o.len <= 8192 && nf_chance(2)) {
            /* An entry with its payload inline: the whole batch is refused. */
            ab_msg_inline_put(ib, hb, hl, o.data, o.len);
            ab_batch_add(&b, ib, ab_msg_inline_size(hl, o.len), NULL, 0, 0);
        } else if (hl) {
            ab_batch_add(&b, hb, hl, o.data, o.len, o.has);
        }
        s_note_out(&o);
        free(o.heap);
    }
    size_t len;
    const uint8_t *body = ab_batch_body(&b, &len);
    ab_header_t h = ab_header_init(AB_KIND_BATCH);
    if (b.count)
        s_send(p->sock, &h, body, len, 1);
    ab_batch_fini(&b);
}

/* Closes the connection and opens another, mostly with the same routing
 * id, sometimes before the broker noticed the old one was gone. */
static void s_do_reconnect(nf_peer_t *p)
{
    char rid[32];
    size_t len = p->rid_len;
    memcpy(rid, p->rid, len);
    uint64_t inst = p->instance;
    /* What the old connection held: answered later from the new one (a
     * worker back after a reconnect, mostly with the same id, registered
     * again or not), after the broker took it back and maybe re-dispatched. */
    memcpy(p->old, p->held, sizeof p->old);
    p->nold = p->nheld;
    s_peer_close(p);
    s_peer_open(p);
    if (nf_chance(80)) {
        memcpy(p->rid, rid, len);
        p->rid_len = len;
        p->instance = inst;
        zmq_close(p->sock);
        p->sock = s_socket_with_rid(p, rid, len);
    }
}

/* A second connection with a routing id some live connection holds: another
 * raw peer's, or one the broker listed for a worker or an agent. */
static void s_do_steal(nf_peer_t *p)
{
    if (p->twin)
        zmq_close(p->twin);
    if (s_nstolen && nf_chance(50)) {
        int k = (int)nf_below((uint32_t)s_nstolen);
        p->twin = s_socket_with_rid(p, s_stolen[k], s_stolen_len[k]);
    } else {
        nf_peer_t *o = &s_peers[nf_below((uint32_t)nf_opt.peers)];
        p->twin = s_socket_with_rid(p, o->rid, o->rid_len);
    }
    /* Say something on it, so the broker acts on the id. */
    static nf_out_t o;
    if (nf_make(nf_chance(50) ? MV_heartbeat : MV_answer, p, &o))
        s_emit(p->twin, &o);
}

/* A worker's whole answer to one request, as a buggy or hostile worker
 * plays it: to one it holds now, one its connection held before a
 * reconnect (taken back, maybe re-dispatched), or one it never held;
 * a few chunks, a final (an ERROR saying the work had begun or not, or a
 * REPLY), sometimes a second final and a chunk after them. */
static void s_do_work(nf_peer_t *p)
{
    /* Mostly REPLY: ERRORs in a row eject the worker (eject-failures), and
     * an ejected one holds nothing. */
    static const uint32_t finals[] = {AB_KIND_ERROR, AB_KIND_REPLY, AB_KIND_REPLY};
    uint32_t r = nf_below(10);
    uint64_t corr = r < 7 && p->nheld ? p->held[nf_below((uint32_t)p->nheld)]
                    : r < 9 && p->nold ? p->old[nf_below((uint32_t)p->nold)]
                                       : (p->answered ? p->answered : nf_below(1000));
    nf_answers.work++;
    static nf_out_t o;
    void *sock = p->twin && nf_chance(10) ? p->twin : p->sock;
    for (uint32_t n = nf_chance(50) ? nf_below(4) : 0; n; n--) {
        nf_answer_to(p, &o, AB_KIND_PARTIAL, corr, 0);
        s_emit(sock, &o);
    }
    nf_answer_to(p, &o, finals[nf_below(3)], corr, nf_chance(50));
    s_emit(sock, &o);
    if (nf_chance(40)) {
        nf_answer_to(p, &o, finals[nf_below(3)], corr, nf_chance(50));
        s_emit(sock, &o);
    }
    if (nf_chance(15)) {
        nf_answer_to(p, &o, AB_KIND_PARTIAL, corr, 0);
        s_emit(sock, &o);
    }
}

/* A peer stops reading for 0.5..5 s while the broker keeps sending to it:
 * it subscribes to t. and asks the good echo service for 16 answers of
 * 6000 bytes, and a peer beside it publishes 48 of 6000 bytes on t.a
 * (384K in all, past peer-out-max-bytes: BUSY, a subscriber's gaps, a
 * disconnect after peer-stall-ms); then it reads again, or disconnects.
 * The staller is narrow (odd: its own side takes little); with --linked
 * the admin of its broker's four (may subscribe and ask), and the agent
 * publishes (granted t.*). */
static void s_do_stall(nf_peer_t *p)
{
    int i = (int)(p - s_peers), qi = (nf_opt.linked ? i | 3 : i | 1) % nf_opt.peers;
    nf_peer_t *q = &s_peers[qi], *pub = &s_peers[nf_opt.linked ? qi & ~3 : qi & ~1];
    int64_t now = ab_now_ms();
    if (now < q->deaf_until_ms + 5000 || !q->sock || !pub->sock)
        return;
    q->deaf_until_ms = now + 500 + nf_below(4500);
    q->stall_drop = nf_chance(30);
    q->stalling = 1;
    static nf_out_t o;
    memset(&o, 0, sizeof o);
    o.h = ab_header_init(AB_KIND_SUBSCRIBE);
    o.h.target = ab_view_of("t.");
    s_emit(q->sock, &o);
    memset(o.buf, 'x', 6000);
    for (int k = 0; k < 64; k++) {
        nf_peer_t *from = k < 16 ? q : pub;
        o.h = ab_header_init(k < 16 ? AB_KIND_REQUEST : AB_KIND_PUBLISH);
        o.h.id = from->next_id++;
        o.h.target = ab_view_of(k < 16 ? NF_GOOD_SVC : "t.a");
        o.data = o.buf;
        o.len = 6000;
        o.has = 1;
        s_send(from->sock, &o.h, o.data, o.len, 1);
    }
}

static void s_move(void)
{
    nf_peer_t *p = &s_peers[nf_below((uint32_t)nf_opt.peers)];
    int mv = s_pick_move(1);
    if (mv != MV_heartbeat && ab_now_ms() < p->mute_until_ms)
        return; /* muted: heartbeats only */
    if (p->stalling && (mv == MV_reconnect || mv == MV_steal))
        return; /* its connection stays while the broker's side of it fills (a BYE
                 * leaves it: the next record on it starts where the last one was) */
    s_moves[mv]++;
    static nf_out_t o;
    switch (mv) {
    case MV_batch: s_do_batch(p); return;
    case MV_reconnect: s_do_reconnect(p); return;
    case MV_steal: s_do_steal(p); return;
    case MV_work: s_do_work(p); return;
    case MV_deaf: {
        /* A peer hears for 5 s between two deaf spells: at thousands of
         * moves a second, the spells followed each other, and the peers
         * were deaf nearly all the time (workers learnt of few requests). */
        int64_t now = ab_now_ms(), until = now + 200 + nf_below(3000);
        if (now >= p->deaf_until_ms + 5000)
            p->deaf_until_ms = until;
        return;
    }
    case MV_dialed: nf_fake_move(ab_now_ms()); return;
    case MV_stall: s_do_stall(p); return;
    case MV_mute: {
        /* Heartbeats only for 0.5..3 s, as a worker whose handler hangs:
         * alive, answering nothing. cancel-grace-ms (300 ms here) judges
         * what it holds cancelled; eject-failures periods eject it. */
        int64_t now = ab_now_ms();
        if (now >= p->mute_until_ms + 5000)
            p->mute_until_ms = now + 500 + nf_below(2500);
        return;
    }
    default:
        if (nf_make(mv, p, &o))
            s_emit(p->twin && nf_chance(30) ? p->twin : p->sock, &o);
    }
}

/* --- the run ------------------------------------------------------------------------- */
static int s_usage(void)
{
    fprintf(stderr, "usage: netfuzz [--seed N] [--seconds S] [--peers K] [--avoid move,...]\n"
                    "               [--broker-bin PATH | --endpoint EP | --linked | --line]\n"
                    "               [--verbose]\n"
                    "moves:");
    for (int i = 0; i < MV_COUNT_; i++)
        fprintf(stderr, " %s", s_move_names[i]);
    fprintf(stderr, "\n");
    return 2;
}

static int s_avoid(char *list)
{
    for (char *t = strtok(list, ","); t; t = strtok(NULL, ",")) {
        int i = 0;
        while (i < MV_COUNT_ && strcmp(t, s_move_names[i]) != 0)
            i++;
        if (i == MV_COUNT_)
            return -1;
        nf_avoid[i] = 1;
    }
    return 0;
}

static int s_parse(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--verbose")) {
            nf_opt.verbose = 1;
            continue;
        }
        if (!strcmp(a, "--linked") || !strcmp(a, "--line")) {
            nf_opt.linked = !strcmp(a, "--line") ? 2 : nf_opt.linked > 1 ? 2 : 1;
            continue;
        }
        if (!v)
            return -1;
        i++;
        if (!strcmp(a, "--seed"))
            nf_opt.seed = strtoull(v, NULL, 0);
        else if (!strcmp(a, "--seconds"))
            nf_opt.seconds = atof(v);
        else if (!strcmp(a, "--peers"))
            nf_opt.peers = atoi(v);
        else if (!strcmp(a, "--avoid")) {
            if (s_avoid(argv[i]) != 0)
                return -1;
        } else if (!strcmp(a, "--broker-bin"))
            nf_opt.broker_bin = v;
        else if (!strcmp(a, "--endpoint"))
            nf_opt.endpoint = v;
        else
            return -1;
    }
    if (!nf_opt.peers) /* linked: each of the four keys at each broker */
        nf_opt.peers = nf_opt.linked ? 4 * (nf_opt.linked + 1) : 6;
    if (nf_opt.linked && nf_opt.endpoint)
        return -1;
    return nf_opt.peers >= 1 && nf_opt.peers <= NF_MAX_PEERS && nf_opt.seconds > 0 ? 0 : -1;
}

/* NULL while every promise holds, else what broke (in BUF). */
static const char *s_check(char *buf, size_t cap, int64_t now)
{
    const char *dead = nf_broker_dead(buf, cap);
    if (dead)
        return dead;
    if (atomic_load(&s_good.wrong)) {
        snprintf(buf, cap, "the good client got a wrong answer: %s", s_good.first_wrong);
        return buf;
    }
    if (now - atomic_load(&s_good.last_ok_ms) > 30000) {
        snprintf(buf, cap, "the good client got no correct answer for 30 s (%ld errors)",
                 atomic_load(&s_good.errors));
        return buf;
    }
    return NULL;
}

static void s_print_summary(uint64_t moves, double secs)
{
    printf("netfuzz: %llu moves in %.1f s:", (unsigned long long)moves, secs);
    for (int i = 0; i < MV_COUNT_; i++)
        printf(" %s=%llu", s_move_names[i], (unsigned long long)s_moves[i]);
    printf("\nnetfuzz: received:");
    for (int k = 1; k <= AB_KIND_MAX_; k++)
        printf(" %s=%llu", ab_kind_name((uint32_t)k), (unsigned long long)s_kinds_in[k]);
    printf("\nnetfuzz: answers: %llu to a request held, %llu ERROR NON_IDEMPOTENT, %llu again to "
           "the id answered last, %llu to one held before a reconnect, %llu whole answers (work)",
           (unsigned long long)nf_answers.to_held, (unsigned long long)nf_answers.begun,
           (unsigned long long)nf_answers.again, (unsigned long long)nf_answers.stale,
           (unsigned long long)nf_answers.work);
    printf("\nnetfuzz: good client: %ld correct, %ld errors, %ld wrong\n", atomic_load(&s_good.ok),
           atomic_load(&s_good.errors), atomic_load(&s_good.wrong));
    for (int i = 0; i < nf_opt.linked; i++)
        printf("netfuzz: %s: stopped %u times, killed %u, its worker killed %u\n", nf_rb[i].who,
               nf_rb[i].stops, nf_rb[i].kills, nf_rb[i].worker_kills);
    nf_fake_report();
}

/* Plays moves until the time is up or a promise breaks. */
static const char *s_play(char *buf, size_t cap, uint64_t *moves)
{
    int64_t start = ab_now_ms(), end = start + (int64_t)(nf_opt.seconds * 1000);
    int64_t next_check = 0, next_report = start + 10000;
    const char *fail = NULL;
    nf_fault_start(start);
    while (!fail && ab_now_ms() < end) {
        for (int k = 0; k < 16; k++, (*moves)++)
            s_move();
        s_drain_all();
        usleep(1000); /* let the broker breathe: state, not a flood, is the point */
        int64_t now = ab_now_ms();
        if (now >= next_check) {
            fail = s_check(buf, cap, now);
            next_check = now + 100;
        }
        nf_fault_step(now);
        if (nf_opt.verbose && now >= next_report) {
            printf("netfuzz: %.0f s: %llu moves; good client %ld correct, %ld errors\n",
                   (double)(now - start) / 1000.0, (unsigned long long)*moves,
                   atomic_load(&s_good.ok), atomic_load(&s_good.errors));
            next_report = now + 10000;
        }
    }
    nf_fault_end();
    return fail;
}

static const char *s_finish(char *buf, size_t cap)
{
    for (int i = 0; i < nf_opt.peers; i++)
        s_peer_close(&s_peers[i]);
    const char *fail = s_check(buf, cap, ab_now_ms());
    if (!fail)
        fail = nf_final_stats(nf_ep, "broker", buf, cap);
    for (int i = 0; !fail && i < nf_opt.linked; i++)
        fail = nf_final_stats(nf_rb[i].ep, nf_rb[i].who, buf, cap);
    /* each link toward the far broker answered: with --line, the middle
     * broker's link to the far one carried the near one's requests too */
    if (!fail && nf_opt.linked)
        fail = nf_final_links(nf_ep, "broker", nf_rb[0].name, buf, cap);
    for (int i = 0; !fail && i < nf_opt.linked; i++)
        fail = nf_final_links(nf_rb[i].ep, nf_rb[i].who,
                             i + 1 < nf_opt.linked ? nf_rb[i + 1].name : NULL, buf, cap);
    nf_stop(&nf_worker_pid);
    for (int i = 0; i < nf_opt.linked; i++)
        nf_stop(&nf_rb[i].worker_pid);
    /* clean exits: a leak report or a recount's difference fails them too */
    for (int i = nf_opt.linked - 1; !fail && i >= 0; i--)
        fail = nf_term_clean(&nf_rb[i].pid, nf_rb[i].who, nf_rb[i].log, buf, cap);
    if (!fail)
        fail = nf_term_clean(&nf_broker_pid, "broker", nf_logpath, buf, cap);
    return fail;
}

static void s_replay_line(void)
{
    size_t n = (size_t)snprintf(s_replay, sizeof s_replay, "netfuzz --seed %llu --seconds %g",
                                (unsigned long long)nf_opt.seed, nf_opt.seconds);
    if (nf_opt.linked)
        n += (size_t)snprintf(s_replay + n, sizeof s_replay - n,
                              nf_opt.linked > 1 ? " --line" : " --linked");
    if (nf_opt.peers != (nf_opt.linked ? 4 * (nf_opt.linked + 1) : 6))
        n += (size_t)snprintf(s_replay + n, sizeof s_replay - n, " --peers %d", nf_opt.peers);
    const char *sep = " --avoid ";
    for (int i = 0; i < MV_COUNT_ && n < sizeof s_replay - 32; i++)
        if (nf_avoid[i]) {
            n += (size_t)snprintf(s_replay + n, sizeof s_replay - n, "%s%s", sep, s_move_names[i]);
            sep = ",";
        }
}

int main(int argc, char **argv)
{
    if (s_parse(argc, argv) != 0)
        return s_usage();
    if (!nf_opt.seed)
        nf_opt.seed = (ab_now_us() ^ ((uint64_t)getpid() << 32)) | 1;
    nf_rng = nf_opt.seed;
    s_replay_line();
    printf("netfuzz: seed %llu (replay: %s)\n", (unsigned long long)nf_opt.seed, s_replay);
    fflush(stdout);
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    char buf[512];
    const char *fail = NULL;
    uint64_t moves = 0;
    int64_t t0 = ab_now_ms();
    s_ctx = zmq_ctx_new();
    if (nf_start_processes(s_ctx) != 0 || s_wait_ready() != 0) {
        fail = nf_broker_dead(buf, sizeof buf);
        fail = fail ? fail : "broker or echo worker did not come up";
    } else {
        atomic_store(&s_good.last_ok_ms, ab_now_ms());
        pthread_create(&s_good.th, NULL, s_good_main, NULL);
        for (int i = 0; i < nf_opt.peers; i++)
            s_peer_open(&s_peers[i]);
        fail = s_play(buf, sizeof buf, &moves);
        atomic_store(&s_good.stop, 1);
        if (!fail) { /* after a failure it may wait long on a dead broker */
            pthread_join(s_good.th, NULL);
            fail = s_finish(buf, sizeof buf);
        }
    }
    s_print_summary(moves, (double)(ab_now_ms() - t0) / 1000.0);
    nf_stop(&nf_worker_pid);
    for (int i = 0; i < nf_opt.linked; i++)
        nf_stop(&nf_rb[i].worker_pid);
    if (fail) {
        fprintf(stderr, "netfuzz: FAILED: %s\nnetfuzz: replay: %s\n", fail, s_replay);
        nf_print_log(nf_logpath);
        for (int i = 0; i < nf_opt.linked; i++)
            nf_print_log(nf_rb[i].log);
    }
    nf_stop(&nf_broker_pid);
    for (int i = 0; i < nf_opt.linked; i++)
        nf_stop(&nf_rb[i].pid);
    for (int i = 0; i < nf_opt.peers; i++)
        s_peer_close(&s_peers[i]);
    nf_fake_close();
    zmq_ctx_term(s_ctx);
    if (!fail) { /* a failed run keeps its logs for the developer */
        nf_remove_dir();
        printf("netfuzz: passed (seed %llu)\n", (unsigned long long)nf_opt.seed);
    }
    return fail ? 1 : 0;
}
