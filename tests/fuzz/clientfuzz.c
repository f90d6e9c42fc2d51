/*
 * clientfuzz.c - a hostile broker against libagentbus: a stateful fuzzer of
 * the client library.
 *
 * netfuzz plays hostile peers against a real broker; this program turns it
 * around. Its main thread is a fake broker on a ZeroMQ ROUTER bound to a
 * free loopback port, and two threads of the same process use the real
 * library against it: one ab_client_t making random API calls (async and
 * sync requests, cancels, direct messages, asks, topics, discovery, watches,
 * control queries, polls and receives, calls made from inside callbacks,
 * and now and then a destroy and a new handle), and one ab_worker_t serving
 * "svc" whose job handler replies, streams, fails, drops or holds its jobs
 * to answer later (and now and then a destroy and a new worker).
 *
 * The fake broker reads everything they send (it remembers routing ids,
 * the ids of the client's calls and the job ids it gave the worker),
 * answers HELLO and REGISTER most of the time and plays random moves from
 * a PRNG of its own: answers (REPLY, PARTIALs, ERROR with valid and
 * out-of-range codes) to the calls it saw, to old and to random ids, twice;
 * payloads empty, inline, in a second frame, with a third frame, up to
 * 200 KiB, lz4-compressed with a right or a lying original size or a
 * garbage block; HELLO "I forgot you" and NEW_PEER answers, HEARTBEATs with
 * any credit, SEND and PUBLISH with receipts, gaps and odd strings, ERRORs
 * that end no call, DISCOVER events and directories (valid protobuf or
 * random bytes); to the worker REQUESTs with new and repeated ids, any
 * timeout and flags, CANCELs, unsolicited REGISTER answers; BATCHes of all
 * of it, whole or corrupted; raw garbage; restarts (the ROUTER closed and
 * bound again on the same port) and deaf spells.
 *
 * Oracle: the process survives (in the sanitizer build ASan and UBSan abort
 * it at the first fault, and LeakSanitizer checks the exit); the async
 * request contract holds: every callback names a request the client
 * started and has not seen end, the final event comes exactly once per
 * started request (also when the handle is destroyed with calls in flight:
 * nothing may be left outstanding), ab_client_cancel of a request in flight
 * ends it at once, and the library never has fewer calls in flight than the
 * requests the fuzzer is waiting for; a poll of a stopped client or
 * worker returns AB_ESTOPPED ("now and from then on"); everything the
 * library sends decodes (headers, BATCH bodies, lz4 payloads) and the
 * worker answers only ids it was sent; no thread stops making progress
 * for 30 s (a watchdog); and at the end a recovery phase: the fake broker
 * turns well-behaved and within 15 s the client's synchronous request gets
 * its payload echoed and the worker echoes a request of the broker's: the
 * library is not wedged.
 * Exit status 0 when all held, 1 otherwise (with the seed and the command
 * that replays it), 2 on bad usage. A replay makes the same choices from
 * the same seed in each thread; how the three threads interleave is the
 * scheduler's, so a replay is likely, not certain, to meet the same fault.
 *
 * --avoid leaves out the named broker moves, client calls (c_*) or worker
 * actions (w_*), e.g. to go on past a known bug or to narrow one down
 * (clientfuzz --help lists the names).
 *
 *   clientfuzz [--seed N] [--seconds S] [--avoid name,...] [--verbose]
 */
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "batch.h"
#include "codec.h"
#include "compress.h"
#include "idmap.h"
#include "util.h"

#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

#define CF_HANG_MS 30000      /* a thread without progress this long hangs */
#define CF_RECOVER_MS 15000   /* the recovery phase's budget */
#define CF_PEERS 16           /* routing ids the fake broker remembers */
#define CF_IDS 64             /* ids remembered per ring */
#define CF_MAX_CALLS 4096     /* async calls the client keeps in flight at most */
#define CF_HELD 16            /* jobs the worker holds at most */
#define CF_BIG (200u * 1024u) /* the largest payload anyone sends */
#define CF_SVC "svc"

/* --- moves and actions: the broker's moves, then the client's and the worker's ------- */
#define CF_ALL(X)                                                                           \
    X(reply) X(partials) X(error) X(dup_reply) X(hello) X(heartbeat) X(send) X(publish)     \
    X(error_nocall) X(discover) X(control) X(job) X(cancel) X(register) X(worker_hello)     \
    X(batch) X(bad_batch) X(garbage) X(restart) X(deaf)                                     \
    X(c_async) X(c_sync) X(c_cancel) X(c_send) X(c_send_wait) X(c_ask) X(c_publish)         \
    X(c_subscribe) X(c_unsubscribe) X(c_discover) X(c_watch) X(c_control) X(c_recv)         \
    X(c_poll) X(c_cache) X(c_handler) X(c_misc) X(c_burst) X(c_destroy) X(c_stop)           \
    X(c_small_max) X(c_nested) X(c_destroy_start)                                           \
    X(w_reply) X(w_stream) X(w_fail) X(w_drop) X(w_hold) X(w_late) X(w_destroy) X(w_stop)   \
    X(w_capacity)
#define CF_ENUM(n) MV_##n,
enum { CF_ALL(CF_ENUM) MV_COUNT_ };
#define CF_NAME(n) #n,
static const char *const s_names[] = {CF_ALL(CF_NAME)};
#define CF_BROKER_MOVES (MV_deaf + 1)
/* Relative weights of the broker's moves: answers to what was asked come
 * most often, the faults that cost time (restart, deaf) rarely. */
static const int s_weight[CF_BROKER_MOVES] = {
    [MV_reply] = 14, [MV_partials] = 6, [MV_error] = 6, [MV_dup_reply] = 3, [MV_hello] = 3,
    [MV_heartbeat] = 3, [MV_send] = 6, [MV_publish] = 5, [MV_error_nocall] = 3,
    [MV_discover] = 3, [MV_control] = 4, [MV_job] = 14, [MV_cancel] = 6, [MV_register] = 2,
    [MV_worker_hello] = 1, [MV_batch] = 6, [MV_bad_batch] = 3, [MV_garbage] = 4,
};
/* Counted by the thread that plays each (one writer per slot), read after
 * the threads are joined. */
static uint64_t s_count[MV_COUNT_];
static int s_avoid[MV_COUNT_];

/* --- options, failure, progress --------------------------------------------------- */
static struct {
    uint64_t seed;
    double seconds;
    int verbose;
    char avoid[256];
} s_opt = {0, 60, 0, ""};
static char s_replay[512];

static pthread_mutex_t s_fail_lock = PTHREAD_MUTEX_INITIALIZER;
static char s_fail_text[1024];
static atomic_int s_failed;

/* Records the first broken promise; the run then ends. */
static void s_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void s_fail(const char *fmt, ...)
{
    pthread_mutex_lock(&s_fail_lock);
    if (!atomic_load(&s_failed)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(s_fail_text, sizeof s_fail_text, fmt, ap);
        va_end(ap);
        atomic_store(&s_failed, 1);
    }
    pthread_mutex_unlock(&s_fail_lock);
}

enum { T_BROKER, T_CLIENT, T_WORKER, T_COUNT };
static const char *const s_thread_names[T_COUNT] = {"fake broker", "client", "worker"};
static atomic_ulong s_progress[T_COUNT];
static _Atomic(const char *) s_doing[T_COUNT]; /* the call a thread is in, for a hang */
#define CF_DOING(t, what) atomic_store(&s_doing[t], what)
/* 0: chaos; 1: recovery (the broker behaves, the threads check echoes);
 * 2: stop (the threads destroy their handles and end). */
static atomic_int s_phase;
static atomic_int s_client_ok, s_worker_ok, s_client_done, s_worker_done;
/* The worker's state in the recovery phase, for a report. */
static atomic_int s_worker_connected, s_worker_rec_jobs;

/* --- the PRNG: xorshift64*, one state per thread ----------------------------------- */
typedef struct {
    uint64_t s;
} cf_rng_t;

static uint64_t s_rand(cf_rng_t *r)
{
    uint64_t x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static uint32_t s_below(cf_rng_t *r, uint32_t n)
{
    return n ? (uint32_t)(s_rand(r) % n) : 0;
}

static int s_chance(cf_rng_t *r, int pct)
{
    return (int)s_below(r, 100) < pct;
}

/* A thread's seed from the run's (splitmix64), so the threads' streams differ. */
static void s_seed(cf_rng_t *r, uint64_t seed, uint64_t salt)
{
    uint64_t z = seed + salt * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    r->s = (z ^ (z >> 31)) | 1;
}

/* Fills P with N bytes: text that compresses, or random bytes. */
static void s_fill(cf_rng_t *r, uint8_t *p, size_t n, int text)
{
    if (text) {
        uint32_t k = s_below(r, 9);
        for (size_t i = 0; i < n; i++)
            p[i] = (uint8_t)"abcd efgh"[(i / 7 + k + (i & 3)) % 9];
        return;
    }
    for (size_t i = 0; i < n; i += 8) {
        uint64_t v = s_rand(r);
        memcpy(p + i, &v, n - i < 8 ? n - i : 8);
    }
}

/* A payload size: mostly small, sometimes around the inline limits, now and
 * then large (up to MAX). */
static size_t s_size(cf_rng_t *r, size_t max)
{
    uint32_t k = s_below(r, 100);
    size_t n = k < 10   ? 0
               : k < 55 ? 1 + s_below(r, 200)
               : k < 75 ? 200 + s_below(r, 1800)
               : k < 90 ? 900 + s_below(r, 20000)
                        : 20000 + s_below(r, CF_BIG - 20000);
    return n < max ? n : max;
}

static int s_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t len = sizeof a;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* LeakSanitizer checks this process's exit: what the library allocates and
 * every message buffer (malloc) must be freed. libzmq's own C++ objects
 * (operator new) are not: now and then a few hundred bytes of them are
 * left behind by connections that a restart or a destroy ended during
 * their handshake, in a cycle no handle points to (no frame of the library
 * or of this program; cf. libzmq issue 954). They are the one exception. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:operator new\n";
}

/* ==================================================================================== */
/* The fake broker (main thread)                                                        */
/* ==================================================================================== */
typedef struct {
    uint8_t rid[256];
    size_t len;
    int worker; /* sent REGISTER: the worker's connection (HELLO: a client's) */
    int64_t seen_ms;
} cf_peer_t;

/* A ring of recent ids. */
typedef struct {
    uint64_t v[CF_IDS];
    int n, at;
} cf_ring_t;

/* One message the broker sends: header, payload and how it travels. */
enum { F_TWO, F_INLINE, F_THREE };
typedef struct {
    ab_header_t h;
    const uint8_t *pl;
    size_t plen;
    int has; /* a payload (possibly empty) */
    int form;
} cf_msg_t;

#define CF_ARENA (3u * 1024u * 1024u)
static struct {
    void *ctx, *router;
    char ep[64];
    cf_rng_t rng;
    cf_peer_t peers[CF_PEERS];
    int npeers;
    cf_ring_t calls, watches, jobs, probes;
    uint64_t next_job;
    ab_idmap_t sent_requests; /* every REQUEST id ever sent: answers must be to those */
    uint64_t kinds_in[AB_KIND_MAX_ + 1], batches_in, msgs_out, restarts;
    uint64_t rec_in[AB_KIND_MAX_ + 1], probes_sent; /* the recovery phase's, for a report */
    int64_t deaf_until;
    ab_batch_entries_t entries; /* the decoder's array for BATCHes the library sends */
    uint8_t arena[CF_ARENA]; /* payloads of the move being played */
    size_t used;
    char strs[8][700];       /* strings of the move being played */
    int nstrs;
} B;

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
    uint32_t k = s_below(&B.rng, 100);
    if (k < 45 && r->n)
        return r->v[(r->at - 1 - (int)s_below(&B.rng, r->n < 6 ? (uint32_t)r->n : 6) + CF_IDS) %
                    CF_IDS];
    if (k < 75 && r->n)
        return r->v[s_below(&B.rng, (uint32_t)r->n)];
    if (k < 90)
        return 1 + s_below(&B.rng, 3000);
    return k < 98 ? s_rand(&B.rng) : 0;
}

static uint8_t *s_alloc(size_t n)
{
    if (B.used + n > CF_ARENA)
        return NULL;
    uint8_t *p = B.arena + B.used;
    B.used += n;
    return p;
}

/* A string of the move: a real-looking name or odd bytes (long, empty,
 * with NULs and high bytes), as a view. */
static ab_view_t s_str(void)
{
    static const char *const plain[] = {"alice", "bob", "cf-agent", "~0123456789abcdef", "~",
                                        "t.a", "t.b.c", "svc", "", "news."};
    if (s_chance(&B.rng, 70) || B.nstrs >= 8)
        return ab_view_of(plain[s_below(&B.rng, sizeof plain / sizeof plain[0])]);
    char *s = B.strs[B.nstrs++];
    size_t n = s_chance(&B.rng, 20) ? 256 + s_below(&B.rng, 400) : s_below(&B.rng, 40);
    s_fill(&B.rng, (uint8_t *)s, n, s_chance(&B.rng, 50));
    return (ab_view_t){s, n};
}

/* Gives M a payload of up to MAX bytes (or none). */
static void s_payload(cf_msg_t *m, size_t max)
{
    m->has = !s_chance(&B.rng, 8);
    if (!m->has)
        return;
    size_t n = s_size(&B.rng, max);
    uint8_t *p = s_alloc(n ? n : 1);
    if (!p)
        n = 0, p = (uint8_t *)"";
    s_fill(&B.rng, p, n, s_chance(&B.rng, 60));
    m->pl = p;
    m->plen = n;
    uint32_t k = s_below(&B.rng, 100);
    m->form = k < 25 ? F_INLINE : k < 30 ? F_THREE : F_TWO;
}

/* With PCT percent, compresses M's payload: right, with a lying original
 * size, with a corrupt block, or a garbage block flagged LZ4. */
static void s_maybe_lz4(cf_msg_t *m, int pct)
{
    if (!m->has || !s_chance(&B.rng, pct))
        return;
    uint32_t how = s_below(&B.rng, 4);
    void *z = NULL;
    size_t zl = 0;
    m->h.flags |= AB_FLAG_LZ4;
    if (how < 3 && m->plen >= 16 && ab_lz4_compress(m->pl, m->plen, 0, &z, &zl) == 1) {
        uint8_t *q = s_alloc(zl);
        if (q) {
            memcpy(q, z, zl);
            m->h.original_size = m->plen;
            uint32_t lie = s_below(&B.rng, 3);
            if (how == 1) /* a lying size, by a little or a lot */
                m->h.original_size = lie == 0   ? m->plen + 1 + s_below(&B.rng, 64)
                                     : lie == 1 ? s_below(&B.rng, (uint32_t)m->plen)
                                                : (uint64_t)1 << (20 + s_below(&B.rng, 40));
            if (how == 2) /* a corrupt block */
                for (int i = 0; i < 3; i++)
                    q[s_below(&B.rng, (uint32_t)zl)] ^= (uint8_t)(1 + s_below(&B.rng, 255));
            m->pl = q;
            m->plen = zl;
        }
        free(z);
        return;
    }
    free(z);
    static const uint64_t sizes[] = {0, 1, 100, 70000, 64u * 1024u * 1024u, UINT64_MAX};
    m->h.original_size = sizes[s_below(&B.rng, 6)];
}

static uint32_t s_credit(void)
{
    static const uint32_t v[] = {0, 1, 99, 100, 250, 1000, 5000, 600001, UINT32_MAX};
    return v[s_below(&B.rng, sizeof v / sizeof v[0])];
}

static uint32_t s_features(void)
{
    return s_below(&B.rng, 8) | (s_chance(&B.rng, 5) ? 0xfff0u : 0);
}

static uint32_t s_error_code(void)
{
    static const uint32_t v[] = {AB_ERR_NO_SERVICE, AB_ERR_BUSY,      AB_ERR_DEADLINE,
                                 AB_ERR_MALFORMED,  AB_ERR_WORKER_LOST, AB_ERR_INTERNAL,
                                 AB_ERR_APPLICATION, AB_ERR_CANCELLED, AB_ERR_NAME_TAKEN,
                                 AB_ERR_TOO_LARGE,  AB_ERR_NO_AGENT,  AB_ERR_DENIED,
                                 0,                 11,               99,
                                 1000,              UINT32_MAX};
    return v[s_below(&B.rng, sizeof v / sizeof v[0])];
}

/* --- peers -------------------------------------------------------------------------- */
static cf_peer_t *s_peer_seen(const void *rid, size_t len, int worker)
{
    if (len > sizeof B.peers[0].rid)
        return NULL;
    cf_peer_t *p = NULL;
    for (int i = 0; i < B.npeers && !p; i++)
        if (B.peers[i].len == len && memcmp(B.peers[i].rid, rid, len) == 0)
            p = &B.peers[i];
    if (!p && B.npeers < CF_PEERS)
        p = &B.peers[B.npeers++];
    else if (!p) { /* the one seen longest ago goes */
        p = &B.peers[0];
        for (int i = 1; i < CF_PEERS; i++)
            if (B.peers[i].seen_ms < p->seen_ms)
                p = &B.peers[i];
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
    uint32_t k = s_below(&B.rng, 100);
    if (k < 4) {
        madeup.len = 5;
        madeup.rid[0] = 0;
        uint32_t v = (uint32_t)s_rand(&B.rng);
        memcpy(madeup.rid + 1, &v, 4);
        return &madeup;
    }
    if (k < 12 && B.npeers)
        return &B.peers[s_below(&B.rng, (uint32_t)B.npeers)];
    const cf_peer_t *best = NULL;
    for (int i = 0; i < B.npeers; i++)
        if (B.peers[i].worker == worker && (!best || B.peers[i].seen_ms > best->seen_ms))
            best = &B.peers[i];
    return best;
}

/* --- sending ------------------------------------------------------------------------ */
/* Every REQUEST id that leaves, so that an answer to any other is caught. */
static void s_note_out(const ab_header_t *h)
{
    if (h->kind == AB_KIND_REQUEST && h->id)
        ab_idmap_put(&B.sent_requests, h->id, (void *)1);
}

static void s_send_frames(const cf_peer_t *to, const void *const *data, const size_t *len,
                          int n)
{
    if (zmq_send(B.router, to->rid, to->len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return;
    for (int i = 0; i < n; i++)
        zmq_send(B.router, data[i], len[i], (i + 1 < n ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT);
    B.msgs_out++;
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
        n = 3 + (int)s_below(&B.rng, 2);
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
        if (s_chance(&B.rng, 70))
            m->h.error_text = s_str();
        if (s_chance(&B.rng, 10)) /* an ERROR never has one: the library must not care */
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
    size_t nw = whole ? s_below(&B.rng, 4) : 1, nl = 0;
    for (size_t i = 0; i < nw; i++) {
        agentbus__worker_info__init(&wi[i]);
        wi[i].id = (char *)"00ab";
        wi[i].name = s_chance(&B.rng, 50) ? (char *)"w1" : (char *)"";
        wi[i].service = (char *)CF_SVC;
        wi[i].health = (char *)health[s_below(&B.rng, 5)];
        wi[i].capacity = s_below(&B.rng, 100);
        wi[i].in_flight = (uint32_t)s_rand(&B.rng);
        wi[i].suspicion = (double)s_below(&B.rng, 1000) / 7.0;
        /* more labels than a callback's stack array (64 pairs) now and then */
        size_t want = s_chance(&B.rng, 20) ? 33 + s_below(&B.rng, 30) : s_below(&B.rng, 3);
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
        size_t ns = s_below(&B.rng, 3);
        for (size_t i = 0; i < ns; i++) {
            agentbus__service_info__init(&si[i]);
            si[i].name = (char *)(i ? "other" : CF_SVC);
            si[i].workers = s_below(&B.rng, 5);
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
        e.change = s_chance(&B.rng, 50) ? (char *)"join" : (char *)"health";
        e.worker = s_chance(&B.rng, 90) ? wp[0] : NULL;
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
        s_mk_answer(m, AB_KIND_REPLY, s_some_id(&B.calls), max);
        return 1;
    case MV_partials:
        s_mk_answer(m, AB_KIND_PARTIAL, s_some_id(&B.calls), max);
        return 1;
    case MV_error:
        s_mk_answer(m, AB_KIND_ERROR, s_some_id(&B.calls), max);
        return 1;
    case MV_hello:
        s_msg(m, AB_KIND_HELLO);
        m->h.correlation_id = s_chance(&B.rng, 50) ? 0 : s_some_id(&B.calls);
        m->h.credit = s_credit();
        m->h.features = s_features();
        if (s_chance(&B.rng, 50))
            m->h.flags |= AB_FLAG_NEW_PEER;
        return 1;
    case MV_heartbeat:
        s_msg(m, AB_KIND_HEARTBEAT);
        m->h.credit = s_credit();
        *worker = s_chance(&B.rng, 40);
        return 1;
    case MV_send:
        s_msg(m, AB_KIND_SEND);
        m->h.id = s_rand(&B.rng) % 100000;
        m->h.sender = s_str();
        m->h.target = s_str();
        if (s_chance(&B.rng, 40)) /* the answer to an ask, or a receipt */
            m->h.correlation_id = s_some_id(&B.calls);
        if (s_chance(&B.rng, 20))
            m->h.flags |= AB_FLAG_RECEIPT;
        if (s_chance(&B.rng, 30))
            m->h.flags |= AB_FLAG_WANT_RECEIPT;
        s_payload(m, max < 20000 ? max : 20000);
        s_maybe_lz4(m, 5);
        return 1;
    case MV_publish:
        s_msg(m, AB_KIND_PUBLISH);
        m->h.id = s_rand(&B.rng) % 100000;
        m->h.sender = s_str();
        m->h.target = s_str();
        if (s_chance(&B.rng, 20)) {
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
        uint32_t k = s_below(&B.rng, 3);
        m->h.correlation_id = k == 0 ? 0 : k == 1 ? s_rand(&B.rng) : s_some_id(&B.calls);
        m->h.error_code = codes[s_below(&B.rng, sizeof codes / sizeof codes[0])];
        m->h.error_text = s_str();
        return 1;
    }
    case MV_discover:
        s_msg(m, AB_KIND_DISCOVER);
        m->h.correlation_id = s_chance(&B.rng, 60) ? s_some_id(&B.watches) : s_some_id(&B.calls);
        if (s_chance(&B.rng, 50))
            s_mk_directory(m, 0);
        else
            s_payload(m, 2000);
        return 1;
    case MV_control: /* a REPLY to a call: a directory, or garbage for it */
        s_msg(m, AB_KIND_REPLY);
        m->h.correlation_id = s_some_id(&B.calls);
        if (s_chance(&B.rng, 50))
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
        m->h.id = s_chance(&B.rng, 15) && B.jobs.n ? s_some_id(&B.jobs) : B.next_job++;
        m->h.target = s_chance(&B.rng, 80) ? ab_view_of(CF_SVC) : s_str();
        if (s_chance(&B.rng, 30))
            m->h.model = s_str();
        m->h.timeout_ms = tmo[s_below(&B.rng, 6)];
        m->h.flags = flags[s_below(&B.rng, 6)] & ~(uint32_t)AB_FLAG_LZ4;
        m->h.priority = s_below(&B.rng, 300);
        s_payload(m, max);
        s_maybe_lz4(m, 15);
        if (m->h.id)
            s_ring_add(&B.jobs, m->h.id);
        return 1;
    }
    case MV_cancel: {
        static const uint32_t why[] = {AB_ERR_DEADLINE, AB_ERR_CANCELLED, 0, AB_ERR_BUSY, 999};
        s_msg(m, AB_KIND_CANCEL);
        *worker = 1;
        m->h.id = s_rand(&B.rng) % 1000;
        m->h.correlation_id = s_some_id(&B.jobs);
        m->h.error_code = why[s_below(&B.rng, 5)];
        return 1;
    }
    case MV_register:
        s_msg(m, AB_KIND_REGISTER);
        *worker = 1;
        m->h.correlation_id = s_chance(&B.rng, 30) ? 0 : s_rand(&B.rng) % 50;
        m->h.target = s_chance(&B.rng, 90) ? ab_view_of(CF_SVC) : s_str();
        m->h.credit = s_credit();
        m->h.features = s_features();
        return 1;
    case MV_worker_hello:
        s_msg(m, AB_KIND_HELLO);
        *worker = 1;
        m->h.correlation_id = s_chance(&B.rng, 70) ? 0 : s_rand(&B.rng) % 50;
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
    uint64_t id = s_some_id(&B.calls);
    int n = 1 + (int)s_below(&B.rng, 5);
    cf_msg_t m;
    for (int i = 0; i < n; i++) {
        B.used = 0;
        s_mk_answer(&m, AB_KIND_PARTIAL, id, i ? 4000 : CF_BIG);
        s_tx(to, &m);
    }
    uint32_t k = s_below(&B.rng, 3);
    if (k < 2) {
        B.used = 0;
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
    int for_worker = s_chance(&B.rng, 45);
    const cf_peer_t *to = s_peer_pick(for_worker);
    ab_batch_t b;
    ab_batch_init(&b);
    int n = 2 + (int)s_below(&B.rng, 8);
    for (int i = 0; i < n; i++) {
        cf_msg_t m;
        int w = 0;
        int mv = for_worker ? worker_mv[s_below(&B.rng, 7)] : client_mv[s_below(&B.rng, 10)];
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
            uint32_t how = s_below(&B.rng, 4);
            if (how == 0)
                for (int i = 0; i < 1 + (int)s_below(&B.rng, 4); i++)
                    copy[s_below(&B.rng, (uint32_t)len)] ^= (uint8_t)(1 + s_below(&B.rng, 255));
            else if (how == 1)
                len = s_below(&B.rng, (uint32_t)len);
            else if (how == 2)
                copy[0] = (uint8_t)(copy[0] + 1 + s_below(&B.rng, 3));
            else
                s_fill(&B.rng, copy + len, 16, 0), len += 1 + s_below(&B.rng, 16);
        }
        if (bad && ab_batch_decode(&B.entries, copy, len, NULL) == AB_OK)
            for (uint32_t i = 0; i < B.entries.n; i++) /* still whole: ids may have changed */
                s_note_out(&B.entries.e[i].h);
        cf_msg_t m;
        s_msg(&m, AB_KIND_BATCH);
        m.pl = copy;
        m.plen = len;
        m.has = 1;
        m.form = s_chance(&B.rng, 20) ? F_INLINE : F_TWO;
        s_tx(to, &m);
    }
    ab_batch_fini(&b);
}

/* Bytes that are no message: random header bytes, an empty frame, a valid
 * header of a random kind with random fields, a message to nobody. */
static void s_move_garbage(void)
{
    const cf_peer_t *to = s_peer_pick(s_chance(&B.rng, 50));
    if (!to)
        return;
    uint8_t junk[64];
    size_t n = s_below(&B.rng, sizeof junk);
    s_fill(&B.rng, junk, n, 0);
    uint32_t how = s_below(&B.rng, 4);
    if (how == 0) {
        const void *d[2] = {junk, junk};
        size_t l[2] = {n, s_below(&B.rng, (uint32_t)n + 1)};
        s_send_frames(to, d, l, 1 + (int)s_below(&B.rng, 2));
    } else if (how == 1) {
        const void *d[1] = {""};
        size_t l[1] = {0};
        s_send_frames(to, d, l, 1);
    } else {
        cf_msg_t m;
        s_msg(&m, s_below(&B.rng, AB_KIND_MAX_ + 3));
        m.h.id = s_rand(&B.rng) % 100;
        m.h.correlation_id = s_chance(&B.rng, 50) ? s_some_id(&B.calls) : 0;
        m.h.flags = (uint32_t)s_rand(&B.rng);
        m.h.credit = s_credit();
        m.h.error_code = s_error_code();
        m.h.target = s_str();
        m.h.original_size = s_chance(&B.rng, 50) ? s_rand(&B.rng) : 0;
        if (s_chance(&B.rng, 10))
            m.h.version = 2 + s_below(&B.rng, 5);
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
static int s_bind(void)
{
    B.router = zmq_socket(B.ctx, ZMQ_ROUTER);
    int linger = 0, hwm = 100000;
    zmq_setsockopt(B.router, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(B.router, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(B.router, ZMQ_RCVHWM, &hwm, sizeof hwm);
    for (int i = 0; i < 200; i++) { /* the old listener may take a moment to go */
        if (zmq_bind(B.router, B.ep) == 0)
            return 0;
        usleep(10 * 1000);
        atomic_fetch_add(&s_progress[T_BROKER], 1);
    }
    return -1;
}

static void s_move_restart(void)
{
    zmq_close(B.router);
    B.router = NULL;
    uint32_t ms = s_below(&B.rng, 501);
    for (uint32_t t = 0; t < ms; t += 10) {
        usleep(10 * 1000);
        atomic_fetch_add(&s_progress[T_BROKER], 1);
    }
    if (s_bind() != 0)
        s_fail("could not bind %s again after a restart: %s", B.ep, zmq_strerror(zmq_errno()));
    B.restarts++;
}

static void s_move(void)
{
    int total = 0;
    for (int i = 0; i < CF_BROKER_MOVES; i++)
        total += s_avoid[i] ? 0 : s_weight[i];
    /* the rare faults, outside the weights: about one restart and one
     * deaf spell in 4,000 moves (a few a minute) */
    int mv = -1;
    if (!s_avoid[MV_restart] && s_below(&B.rng, 4000) == 0)
        mv = MV_restart;
    else if (!s_avoid[MV_deaf] && s_below(&B.rng, 4000) == 0)
        mv = MV_deaf;
    else if (total > 0) {
        int r = (int)s_below(&B.rng, (uint32_t)total);
        for (mv = 0; mv < CF_BROKER_MOVES; mv++) {
            r -= s_avoid[mv] ? 0 : s_weight[mv];
            if (r < 0)
                break;
        }
    }
    if (mv < 0 || mv >= CF_BROKER_MOVES)
        return;
    s_count[mv]++;
    B.used = 0;
    B.nstrs = 0;
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
        B.deaf_until = ab_now_ms() + s_below(&B.rng, 1001);
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
    int calm = atomic_load(&s_phase) != 0;
    m.h.credit = calm ? 1000 : s_credit();
    m.h.features = calm ? s_below(&B.rng, 8) : s_features();
    if (s_chance(&B.rng, 20))
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
    m.form = size <= AB_INLINE_MAX && s_chance(&B.rng, 50) ? F_INLINE : F_TWO;
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
        s_fail("the %s sent a %s whose lz4 payload (%zu bytes, original size %llu) does not "
               "inflate: %s", worker ? "worker" : "client", ab_kind_name(h->kind), size,
               (unsigned long long)h->original_size, ab_strerror(rc));
}

/* One message the library sent (alone or in a BATCH) from the routing id
 * RID (LEN bytes). */
static void s_on_msg(const void *rid, size_t len, const ab_header_t *h, const void *data,
                     size_t size, int has)
{
    uint32_t k = h->kind;
    B.kinds_in[k <= AB_KIND_MAX_ ? k : 0]++;
    if (atomic_load(&s_phase) == 1)
        B.rec_in[k <= AB_KIND_MAX_ ? k : 0]++;
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
    int calm = atomic_load(&s_phase) != 0;
    cf_msg_t m;
    switch (k) {
    case AB_KIND_HELLO:
    case AB_KIND_REGISTER:
        if (calm || s_chance(&B.rng, 90))
            s_answer_hello(from, k, h->id, h->target);
        break;
    case AB_KIND_REQUEST:
    case AB_KIND_CONTROL:
    case AB_KIND_DISCOVER:
    case AB_KIND_SUBSCRIBE:
    case AB_KIND_SEND:
        if (h->id)
            s_ring_add(&B.calls, h->id);
        if (k == AB_KIND_DISCOVER && (h->flags & AB_FLAG_WATCH))
            s_ring_add(&B.watches, h->id);
        if (k == AB_KIND_REQUEST && (calm || s_chance(&B.rng, 30))) {
            s_echo(from, h, data, size, has);
        } else if (!calm && h->id && s_chance(&B.rng, 35)) {
            /* the happy path too: a real-looking answer at once */
            B.used = 0;
            s_msg(&m, k == AB_KIND_SEND && !h->credit ? AB_KIND_SEND : AB_KIND_REPLY);
            m.h.correlation_id = h->id;
            if (k == AB_KIND_DISCOVER)
                s_mk_directory(&m, 1);
            else if (k == AB_KIND_SEND && h->credit) {
                m.pl = (const uint8_t *)(s_chance(&B.rng, 50) ? "queued" : "delivered");
                m.plen = strlen((const char *)m.pl);
                m.has = 1;
            } else if (k != AB_KIND_SUBSCRIBE)
                s_payload(&m, 3000);
            s_tx(from, &m);
        }
        break;
    case AB_KIND_REPLY:
    case AB_KIND_PARTIAL:
    case AB_KIND_ERROR:
        if (!ab_idmap_get(&B.sent_requests, h->correlation_id))
            s_fail("the worker answered (%s) request %llu, which it was never sent",
                   ab_kind_name(k), (unsigned long long)h->correlation_id);
        if (k == AB_KIND_REPLY && s_ring_has(&B.probes, h->correlation_id)) {
            if (has && size == sizeof s_probe_text && !(h->flags & AB_FLAG_LZ4) &&
                memcmp(data, s_probe_text, size) == 0)
                atomic_store(&s_worker_ok, 1);
            else
                s_fail("the worker's echo of the recovery probe %llu has %zu other bytes",
                       (unsigned long long)h->correlation_id, size);
        }
        break;
    case AB_KIND_PUBLISH:
    case AB_KIND_HEARTBEAT:
    case AB_KIND_CANCEL:
    case AB_KIND_BYE:
        break;
    default:
        s_fail("the library sent a message of kind %s (%u)", ab_kind_name(k), k);
    }
}

/* One ZeroMQ message from the ROUTER: FRAMES[0] is the routing id. */
static void s_on_input(zmq_msg_t *frames, int n)
{
    ab_batch_entries_t *entries = &B.entries;
    if (n < 2 || n > 3) {
        s_fail("the library sent a message of %d frames", n - 1);
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
        s_fail("the library sent a message that does not decode (%s; kind %s, %zu header bytes)",
               ab_status_name(rc), ab_kind_name(h.kind), f[0].size);
        return;
    }
    if (h.kind != AB_KIND_BATCH) {
        s_on_msg(rid, rlen, &h, pl.data, pl.size, pl.data != NULL);
        return;
    }
    B.batches_in++;
    rc = pl.data ? ab_batch_decode(entries, pl.data, pl.size, NULL) : AB_EBATCH;
    if (rc != AB_OK) {
        s_fail("the library sent a BATCH that does not decode (%s, %zu bytes)",
               ab_status_name(rc), pl.size);
        return;
    }
    for (uint32_t i = 0; i < entries->n; i++) {
        const ab_batch_entry_t *e = &entries->e[i];
        s_on_msg(rid, rlen, &e->h, e->payload.data, e->payload.size, e->has_payload);
    }
}

/* Reads what has arrived (bounded). */
static void s_drain(void)
{
    for (int k = 0; k < 2000 && B.router; k++) {
        zmq_msg_t f[4];
        int n = 0, more = 1, extra = 0;
        while (more) { /* frames beyond four are counted, not kept */
            zmq_msg_t spare, *x = n < 4 ? &f[n] : &spare;
            zmq_msg_init(x);
            if (zmq_msg_recv(x, B.router, n ? 0 : ZMQ_DONTWAIT) < 0) {
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
static void s_wait_drain(int ms)
{
    zmq_pollitem_t it = {B.router, 0, ZMQ_POLLIN, 0};
    if (B.router && zmq_poll(&it, 1, ms) > 0)
        s_drain();
}

/* The recovery phase's probe to the worker: a request it must echo. */
static void s_probe(void)
{
    const cf_peer_t *to = NULL;
    for (int i = 0; i < B.npeers; i++)
        if (B.peers[i].worker && (!to || B.peers[i].seen_ms > to->seen_ms))
            to = &B.peers[i];
    if (!to)
        return;
    cf_msg_t m;
    s_msg(&m, AB_KIND_REQUEST);
    m.h.id = B.next_job++;
    m.h.target = ab_view_of(CF_SVC);
    m.h.timeout_ms = 5000;
    m.pl = s_probe_text;
    m.plen = sizeof s_probe_text;
    m.has = 1;
    s_ring_add(&B.probes, m.h.id);
    s_tx(to, &m);
    B.probes_sent++;
}

/* ==================================================================================== */
/* The client thread                                                                    */
/* ==================================================================================== */
typedef struct {
    uint64_t id;
    int ask;
} cf_call_t;

static struct {
    cf_rng_t rng;
    ab_client_t *c;
    cf_call_t calls[CF_MAX_CALLS]; /* async requests and asks started, not ended */
    int ncalls;
    int depth;      /* callbacks nested in this thread now */
    int destroying; /* inside ab_client_destroy */
    uint64_t started, finals, partials, ask_partials, msgs[8], dir_events, handles;
    uint64_t codes[64]; /* statuses of calls and finals, by -code */
    uint8_t buf[CF_BIG];
} C;

static void s_code(uint64_t *codes, int rc)
{
    codes[(rc < 0 ? -rc : 0) & 63]++;
}

static int s_call_find(uint64_t id)
{
    for (int i = 0; i < C.ncalls; i++)
        if (C.calls[i].id == id)
            return i;
    return -1;
}

static void s_call_add(uint64_t id, int ask)
{
    if (s_call_find(id) >= 0)
        s_fail("ab_client_%s gave id %llu, which is still in flight", ask ? "ask" : "request_start",
               (unsigned long long)id);
    if (C.ncalls < CF_MAX_CALLS)
        C.calls[C.ncalls++] = (cf_call_t){id, ask};
    C.started++;
}

static void s_client_step_nested(ab_client_t *c);
static void s_async(ab_client_t *c);
static void s_sync(ab_client_t *c, int max_ms);

/* Every event of an async request or ask: the contract's checks. */
static void s_reply_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    atomic_fetch_add(&s_progress[T_CLIENT], 1);
    if (arg != &C || c != C.c || !ev) {
        s_fail("a reply callback got the wrong client, event or argument");
        return;
    }
    int i = s_call_find(ev->request_id);
    if (i < 0) {
        s_fail("a callback (final %d, %s) for request %llu, which was never started or has "
               "ended already", ev->final, ab_status_name(ev->status),
               (unsigned long long)ev->request_id);
        return;
    }
    if ((ev->final != 0 && ev->final != 1) || (!ev->final && ev->status != AB_OK) ||
        (ev->size && !ev->data) || !ev->error_text || ev->status > 0)
        s_fail("a malformed event for request %llu: final %d, status %d, %zu bytes at %p",
               (unsigned long long)ev->request_id, ev->final, ev->status, ev->size, ev->data);
    if (ev->size) { /* every byte is readable (ASan checks) */
        const uint8_t *d = ev->data;
        volatile uint8_t x = d[0] ^ d[ev->size - 1];
        (void)x;
    }
    if (C.destroying && (!ev->final || ev->status != AB_ESTOPPED))
        s_fail("inside ab_client_destroy request %llu ended with final %d, %s (not STOPPED)",
               (unsigned long long)ev->request_id, ev->final, ab_status_name(ev->status));
    if (!ev->final) {
        C.partials++;
        if (C.calls[i].ask)
            C.ask_partials++;
    } else {
        C.finals++;
        s_code(C.codes, ev->status);
        C.calls[i] = C.calls[--C.ncalls];
    }
    s_client_step_nested(c);
}

static void s_check_message(const ab_message_t *m)
{
    if (!m || m->type < AB_MSG_DIRECT || m->type > AB_MSG_ERROR || !m->sender || !m->target ||
        !m->error_text || (m->size && !m->data)) {
        s_fail("a malformed message: type %d", m ? m->type : -1);
        return;
    }
    volatile size_t n = strlen(m->sender) + strlen(m->target) + strlen(m->error_text);
    if (m->size)
        n += ((const uint8_t *)m->data)[m->size - 1];
    (void)n;
    C.msgs[m->type]++;
}

static void s_message_cb(ab_client_t *c, const ab_message_t *m, void *arg)
{
    atomic_fetch_add(&s_progress[T_CLIENT], 1);
    if (arg != &C || c != C.c)
        s_fail("a message callback got the wrong client or argument");
    s_check_message(m);
    if (m && m->type == AB_MSG_DIRECT && m->sender[0] && s_chance(&C.rng, 20))
        ab_client_reply(c, m, "re", 2);
    s_client_step_nested(c);
}

static void s_check_worker_info(const ab_worker_info_t *w)
{
    volatile size_t n = strlen(w->id) + strlen(w->name) + strlen(w->service) +
                        strlen(w->health) + strlen(w->backend_state);
    for (size_t k = 0; k < w->n_labels; k++)
        n += strlen(w->label_keys[k]) + strlen(w->label_values[k]);
    (void)n;
}

static void s_dir_cb(ab_client_t *c, const ab_dir_event_t *ev, void *arg)
{
    atomic_fetch_add(&s_progress[T_CLIENT], 1);
    if (arg != &C || c != C.c || !ev || !ev->change || !ev->worker) {
        s_fail("a malformed directory event");
        return;
    }
    volatile size_t n = strlen(ev->change);
    (void)n;
    s_check_worker_info(ev->worker);
    C.dir_events++;
    s_client_step_nested(c);
}

static void s_client_new(void)
{
    ab_options_t *o = ab_options_new();
    if (!o) {
        s_fail("ab_options_new failed");
        return;
    }
    ab_options_set_endpoint(o, B.ep);
    ab_options_set_timeout_ms(o, 500 + (int)s_below(&C.rng, 4000));
    if (s_chance(&C.rng, 60))
        ab_options_set_heartbeat_ms(o, 100 + (int)s_below(&C.rng, 2000));
    if (s_chance(&C.rng, 30))
        ab_options_set_name(o, s_chance(&C.rng, 80) ? "cf-agent" : "cf-other");
    if (s_chance(&C.rng, 10))
        ab_options_set_takeover(o, 1);
    if (s_chance(&C.rng, 20))
        ab_options_set_batching(o, 0);
    else if (s_chance(&C.rng, 30))
        ab_options_set_batch_limits(o, 2 + s_below(&C.rng, 100), 256 + s_below(&C.rng, 70000),
                                    s_below(&C.rng, 5000));
    if (s_chance(&C.rng, 40))
        ab_options_set_compression(o, s_below(&C.rng, 4096), s_below(&C.rng, 50));
    if (!s_avoid[MV_c_small_max] && s_chance(&C.rng, 10)) { /* below what the broker sends */
        s_count[MV_c_small_max]++;
        ab_options_set_max_payload(o, 1000 + s_below(&C.rng, 300000));
    }
    CF_DOING(T_CLIENT, "ab_client_new");
    int rc = ab_client_new(&C.c, o);
    ab_options_destroy(&o);
    if (rc != AB_OK) {
        s_fail("ab_client_new: %s", ab_status_name(rc));
        return;
    }
    C.handles++;
    if (s_chance(&C.rng, 30))
        ab_client_on_message(C.c, s_message_cb, &C);
}

static void s_client_destroy(void)
{
    if (!C.c)
        return;
    if (!s_avoid[MV_c_stop] && s_chance(&C.rng, 10)) {
        /* A stopped handle is good only for destroy, but other calls must
         * still keep their promises (they end with STOPPED). */
        s_count[MV_c_stop]++;
        CF_DOING(T_CLIENT, "calls on a stopped handle");
        ab_client_stop(C.c);
        for (int i = 0; i < 3 && s_chance(&C.rng, 60); i++) {
            s_async(C.c);
            s_sync(C.c, 200);
            int rc = ab_client_poll(C.c, 5);
            if (rc != AB_ESTOPPED)
                s_fail("ab_client_poll on a stopped handle returned %d (%s), not STOPPED: it "
                       "handled what was waiting", rc, ab_status_name(rc));
        }
    }
    CF_DOING(T_CLIENT, "ab_client_destroy");
    C.destroying = 1;
    ab_client_destroy(&C.c);
    C.destroying = 0;
    if (C.c)
        s_fail("ab_client_destroy did not set the handle to NULL");
    if (C.ncalls)
        s_fail("after ab_client_destroy %d started request(s) never had their final callback "
               "(the first: %s %llu)", C.ncalls, C.calls[0].ask ? "ask" : "request",
               (unsigned long long)C.calls[0].id);
    C.ncalls = 0;
}

static size_t s_client_payload(const void **data)
{
    size_t n = s_chance(&C.rng, 95) ? s_size(&C.rng, 4000) : s_size(&C.rng, CF_BIG);
    size_t at = s_below(&C.rng, (uint32_t)(CF_BIG - n + 1));
    *data = C.buf + at;
    return n;
}

static void s_async(ab_client_t *c)
{
    if (C.ncalls >= CF_MAX_CALLS)
        return;
    const void *data;
    size_t n = s_client_payload(&data);
    ab_request_opts_t o = AB_REQUEST_OPTS_INIT;
    o.timeout_ms = s_chance(&C.rng, 20) ? 0 : 50 + (int)s_below(&C.rng, 3000);
    if (s_chance(&C.rng, 20))
        o.model = "m1";
    if (s_chance(&C.rng, 10))
        o.flags = AB_REQUEST_NON_IDEMPOTENT;
    if (s_chance(&C.rng, 10))
        o.cache_flags = AB_CACHE_ON;
    o.priority = s_below(&C.rng, 5);
    uint64_t id = 0;
    int nofn = s_chance(&C.rng, 5); /* no callback: allowed, and then no events */
    CF_DOING(T_CLIENT, "ab_client_request_start");
    int rc = ab_client_request_start(c, s_chance(&C.rng, 90) ? CF_SVC : "other", data, n, &o,
                                     nofn ? NULL : s_reply_cb, &C, &id);
    s_code(C.codes, rc);
    if (rc == AB_OK && !nofn)
        s_call_add(id, 0);
}

static void s_sync(ab_client_t *c, int max_ms)
{
    const void *data;
    size_t n = s_client_payload(&data);
    void *reply = NULL;
    size_t rn = 0;
    CF_DOING(T_CLIENT, "ab_client_request");
    int rc = ab_client_request(c, CF_SVC, data, n, 100 + (int)s_below(&C.rng, (uint32_t)max_ms),
                               s_chance(&C.rng, 80) ? &reply : NULL, &rn);
    s_code(C.codes, rc);
    if (rc != AB_OK && reply)
        s_fail("ab_client_request failed (%s) but left a reply", ab_status_name(rc));
    if (reply && rn)
        ((volatile uint8_t *)reply)[rn - 1] ^= 0;
    ab_free(reply);
}

static void s_cancel_one(ab_client_t *c)
{
    if (!C.ncalls || s_chance(&C.rng, 10)) { /* an id not in flight, or some other call */
        CF_DOING(T_CLIENT, "ab_client_cancel");
        s_code(C.codes, ab_client_cancel(c, 1 + s_below(&C.rng, 5000)));
        return;
    }
    uint64_t id = C.calls[s_below(&C.rng, (uint32_t)C.ncalls)].id;
    CF_DOING(T_CLIENT, "ab_client_cancel");
    int rc = ab_client_cancel(c, id);
    s_code(C.codes, rc);
    if (s_call_find(id) >= 0)
        s_fail("ab_client_cancel(%llu) of a request in flight returned %s without its final "
               "callback", (unsigned long long)id, ab_status_name(rc));
}

/* Calls made from inside a callback (the API allows any but destroy). */
static void s_client_step_nested(ab_client_t *c)
{
    if (C.depth >= 2 || s_avoid[MV_c_nested])
        return;
    C.depth++;
    if (C.destroying) {
        if (!s_avoid[MV_c_destroy_start] && s_chance(&C.rng, 10)) {
            s_count[MV_c_destroy_start]++;
            s_async(c);
        }
    } else {
        uint32_t k = s_below(&C.rng, 100);
        if (k < 12)
            s_count[MV_c_nested]++;
        if (k < 6)
            s_async(c);
        else if (k < 9)
            s_cancel_one(c);
        else if (k < 11)
            ab_client_poll(c, 0);
        else if (k < 12)
            s_sync(c, 200);
    }
    C.depth--;
}

static const char *s_pick(cf_rng_t *r, const char *const *v, size_t n)
{
    return v[s_below(r, (uint32_t)n)];
}
#define CF_PICK(r, arr) s_pick(r, arr, sizeof arr / sizeof arr[0])

/* One random API call of the client thread. */
static void s_client_step(void)
{
    static const int weights[] = {
        [MV_c_async] = 25, [MV_c_sync] = 6,    [MV_c_cancel] = 8,  [MV_c_send] = 5,
        [MV_c_send_wait] = 2, [MV_c_ask] = 5,  [MV_c_publish] = 4, [MV_c_subscribe] = 3,
        [MV_c_unsubscribe] = 2, [MV_c_discover] = 2, [MV_c_watch] = 2, [MV_c_control] = 2,
        [MV_c_recv] = 10,  [MV_c_poll] = 20,   [MV_c_cache] = 1,   [MV_c_handler] = 1,
        [MV_c_misc] = 2,   [MV_c_burst] = 1,   [MV_c_destroy] = 1,
    };
    static const char *const names[] = {"alice", "cf-agent", "~00000000000000ff", "bad name",
                                        "", "~", "~x"};
    static const char *const topics[] = {"t.a", "t.b.c", "news.eu", "bad..topic", "", "t."};
    static const char *const patterns[] = {"t.", "t.a", "news.", "bad..", "x", ""};
    static const char *const whats[] = {"stats", "workers", "agents", "bogus"};
    if (!C.c) {
        s_client_new();
        return;
    }
    ab_client_t *c = C.c;
    /* The library keeps at least the requests the fuzzer waits for. */
    if (ab_client_pending(c) < (size_t)C.ncalls)
        s_fail("ab_client_pending is %zu, but %d started requests have not ended",
               ab_client_pending(c), C.ncalls);
    int total = 0;
    for (int i = MV_c_async; i <= MV_c_destroy; i++)
        total += s_avoid[i] ? 0 : weights[i];
    int r = (int)s_below(&C.rng, (uint32_t)(total ? total : 1)), mv;
    for (mv = MV_c_async; mv < MV_c_destroy; mv++) {
        r -= s_avoid[mv] ? 0 : weights[mv];
        if (r < 0)
            break;
    }
    if (s_avoid[mv])
        return;
    if ((mv == MV_c_destroy && s_below(&C.rng, 8) != 0) ||
        (mv == MV_c_burst && s_below(&C.rng, 10) != 0))
        mv = MV_c_poll; /* a destroy in about 800 calls, a burst in 1,000 */
    s_count[mv]++;
    const void *data;
    size_t n;
    uint64_t id = 0;
    int rc = AB_OK;
    switch (mv) {
    case MV_c_async:
        s_async(c);
        return;
    case MV_c_sync:
        s_sync(c, 1400);
        return;
    case MV_c_cancel:
        s_cancel_one(c);
        return;
    case MV_c_send:
        n = s_client_payload(&data);
        CF_DOING(T_CLIENT, "ab_client_send");
        rc = ab_client_send(c, CF_PICK(&C.rng, names), data, n, (int)s_below(&C.rng, 3), &id);
        break;
    case MV_c_send_wait: {
        int queued = 0;
        n = s_client_payload(&data);
        CF_DOING(T_CLIENT, "ab_client_send_wait");
        rc = ab_client_send_wait(c, CF_PICK(&C.rng, names), data, n, (int)s_below(&C.rng, 2),
                                 50 + (int)s_below(&C.rng, 250), &queued);
        break;
    }
    case MV_c_ask:
        if (C.ncalls >= CF_MAX_CALLS)
            return;
        n = s_client_payload(&data);
        CF_DOING(T_CLIENT, "ab_client_ask");
        rc = ab_client_ask(c, CF_PICK(&C.rng, names), data, n, 50 + (int)s_below(&C.rng, 2000),
                           s_reply_cb, &C, &id);
        if (rc == AB_OK)
            s_call_add(id, 1);
        break;
    case MV_c_publish:
        n = s_client_payload(&data);
        CF_DOING(T_CLIENT, "ab_client_publish");
        rc = ab_client_publish(c, CF_PICK(&C.rng, topics), data, n, &id);
        break;
    case MV_c_subscribe:
    case MV_c_unsubscribe: {
        int t = s_chance(&C.rng, 50) ? 0 : 50 + (int)s_below(&C.rng, 250);
        CF_DOING(T_CLIENT, "ab_client_(un)subscribe");
        rc = mv == MV_c_subscribe ? ab_client_subscribe(c, CF_PICK(&C.rng, patterns), t)
                                  : ab_client_unsubscribe(c, CF_PICK(&C.rng, patterns), t);
        break;
    }
    case MV_c_discover: {
        static const char *const svcs[] = {CF_SVC, "*", "nosuch"};
        ab_directory_t *d = NULL;
        CF_DOING(T_CLIENT, "ab_discover");
        rc = ab_discover(c, s_chance(&C.rng, 20) ? NULL : CF_PICK(&C.rng, svcs),
                         50 + (int)s_below(&C.rng, 250), &d);
        if (rc == AB_OK && !d)
            s_fail("ab_discover returned OK without a directory");
        if (d) {
            volatile size_t k = 0;
            for (size_t i = 0; i < d->n_services; i++)
                k += strlen(d->services[i].name);
            for (size_t i = 0; i < d->n_workers; i++)
                s_check_worker_info(&d->workers[i]);
            (void)k;
        }
        ab_directory_destroy(&d);
        break;
    }
    case MV_c_watch:
        CF_DOING(T_CLIENT, "ab_client_watch");
        rc = ab_client_watch(c, s_chance(&C.rng, 80) ? s_dir_cb : NULL, &C,
                             50 + (int)s_below(&C.rng, 250));
        break;
    case MV_c_control: {
        void *reply = NULL;
        size_t rn = 0;
        CF_DOING(T_CLIENT, "ab_client_control");
        rc = ab_client_control(c, CF_PICK(&C.rng, whats), 50 + (int)s_below(&C.rng, 250), &reply,
                               &rn);
        ab_free(reply);
        break;
    }
    case MV_c_recv:
        for (int i = 0; i < 64; i++) {
            ab_message_t *m = NULL;
            CF_DOING(T_CLIENT, "ab_client_recv");
            rc = ab_client_recv(c, &m, 0);
            if (rc != AB_OK)
                break;
            s_check_message(m);
            if (m->type == AB_MSG_DIRECT && m->sender[0] && s_chance(&C.rng, 20))
                ab_client_reply(c, m, "re", 2);
            ab_message_destroy(&m);
        }
        break;
    case MV_c_poll:
        CF_DOING(T_CLIENT, "ab_client_poll");
        rc = ab_client_poll(c, (int)s_below(&C.rng, 21));
        break;
    case MV_c_cache:
        rc = ab_client_set_cache(c, s_below(&C.rng, 20), s_below(&C.rng, 100));
        break;
    case MV_c_handler:
        rc = ab_client_on_message(c, s_chance(&C.rng, 50) ? s_message_cb : NULL, &C);
        break;
    case MV_c_misc: {
        int fd = -1;
        CF_DOING(T_CLIENT, "ab_client_flush");
        rc = ab_client_flush(c);
        ab_client_fd(c, &fd);
        if (ab_client_next_timeout_ms(c) < 0)
            s_fail("ab_client_next_timeout_ms < 0");
        volatile size_t k = strlen(ab_client_last_error(c)) + (size_t)ab_client_connected(c) +
                            (size_t)ab_client_refused(c);
        (void)k;
        break;
    }
    case MV_c_burst: /* a window of requests: the call table grows, many expire at once */
        for (int i = 0, k = 100 + (int)s_below(&C.rng, 1900); i < k; i++) {
            ab_request_opts_t o = AB_REQUEST_OPTS_INIT;
            o.timeout_ms = 50 + (int)s_below(&C.rng, 400);
            if (C.ncalls >= CF_MAX_CALLS)
                break;
            CF_DOING(T_CLIENT, "ab_client_request_start (burst)");
            rc = ab_client_request_start(c, CF_SVC, C.buf, s_below(&C.rng, 64), &o, s_reply_cb,
                                         &C, &id);
            if (rc == AB_OK)
                s_call_add(id, 0);
        }
        break;
    case MV_c_destroy:
        s_client_destroy();
        return;
    default:
        return;
    }
    s_code(C.codes, rc > 0 ? 0 : rc);
}

/* The recovery phase: a synchronous echo must come back right. */
static void s_client_recover(void)
{
    static uint8_t probe[900]; /* under any max payload the client may have */
    for (size_t i = 0; i < sizeof probe; i++)
        probe[i] = (uint8_t)(i * 31 + 7);
    while (atomic_load(&s_phase) == 1 && !atomic_load(&s_failed)) {
        atomic_fetch_add(&s_progress[T_CLIENT], 1);
        if (!C.c) {
            s_client_new();
            continue;
        }
        if (atomic_load(&s_client_ok)) {
            ab_client_poll(C.c, 10);
            continue;
        }
        size_t n = 1 + s_below(&C.rng, sizeof probe);
        void *reply = NULL;
        size_t rn = 0;
        CF_DOING(T_CLIENT, "ab_client_request (recovery)");
        int rc = ab_client_request(C.c, CF_SVC, probe, n, 2000, &reply, &rn);
        if (rc == AB_OK && rn == n && memcmp(reply, probe, n) == 0)
            atomic_store(&s_client_ok, 1);
        else if (rc == AB_OK)
            s_fail("recovery: the echo of %zu bytes came back as %zu other bytes", n, rn);
        ab_free(reply);
    }
}

static void *s_client_main(void *arg)
{
    (void)arg;
    s_fill(&C.rng, C.buf, CF_BIG / 2, 1);
    s_fill(&C.rng, C.buf + CF_BIG / 2, CF_BIG / 2, 0);
    while (atomic_load(&s_phase) == 0 && !atomic_load(&s_failed)) {
        atomic_fetch_add(&s_progress[T_CLIENT], 1);
        s_client_step();
    }
    s_client_recover();
    s_client_destroy();
    CF_DOING(T_CLIENT, "done");
    atomic_store(&s_client_done, 1);
    return NULL;
}

/* ==================================================================================== */
/* The worker thread                                                                    */
/* ==================================================================================== */
static struct {
    cf_rng_t rng;
    ab_worker_t *w;
    ab_job_t *held[CF_HELD];
    int nheld;
    uint64_t jobs, cancels, handles, codes[64];
    uint8_t buf[70000];
} W;

static void s_job_check(ab_job_t *job)
{
    size_t n = 0;
    const uint8_t *d = ab_job_data(job, &n);
    if (n && !d)
        s_fail("ab_job_data gave %zu bytes at NULL", n);
    volatile size_t k = strlen(ab_job_service(job)) + strlen(ab_job_model(job));
    if (n)
        k += d[0] + d[n - 1];
    (void)k;
}

/* Answers JOB (held or just received) in one of the ways a worker may. */
static void s_job_answer(ab_worker_t *w, ab_job_t **job, uint32_t how)
{
    size_t n = 0;
    const void *d = ab_job_data(*job, &n);
    int rc;
    if (how < 30) {
        s_count[MV_w_reply]++;
        if (s_chance(&W.rng, 50)) {
            n = s_size(&W.rng, sizeof W.buf);
            d = W.buf;
        }
        rc = ab_worker_reply(w, job, d, n);
    } else if (how < 45) {
        s_count[MV_w_stream]++;
        for (int i = 0; i < 1 + (int)s_below(&W.rng, 3); i++)
            s_code(W.codes, ab_worker_reply_part(w, *job, W.buf, s_size(&W.rng, sizeof W.buf)));
        rc = ab_worker_reply(w, job, d, n);
    } else if (how < 60) {
        static const int st[] = {AB_EBUSY, AB_EAPPLICATION, 7, -999, AB_OK, AB_ECANCELLED,
                                 AB_EDENIED};
        s_count[MV_w_fail]++;
        rc = ab_worker_fail(w, job, st[s_below(&W.rng, 7)], s_chance(&W.rng, 50) ? "no" : NULL);
    } else {
        s_count[MV_w_drop]++;
        ab_job_destroy(job);
        rc = AB_OK;
    }
    s_code(W.codes, rc);
    if (*job)
        s_fail("a job was left set after its answer");
}

static void s_job_fn(ab_worker_t *w, ab_job_t *job, void *arg)
{
    atomic_fetch_add(&s_progress[T_WORKER], 1);
    if (arg != &W || w != W.w || !job) {
        s_fail("a job callback got the wrong worker, job or argument");
        return;
    }
    W.jobs++;
    s_job_check(job);
    if (atomic_load(&s_phase) != 0) { /* recovery: echo */
        size_t n = 0;
        const void *d = ab_job_data(job, &n);
        s_code(W.codes, ab_worker_reply(w, &job, d, n));
        return;
    }
    uint32_t how = s_below(&W.rng, 100);
    if (how < 70 || W.nheld >= CF_HELD || s_avoid[MV_w_hold]) {
        s_job_answer(w, &job, how % 70);
        return;
    }
    s_count[MV_w_hold]++;
    W.held[W.nheld++] = job;
}

static void s_cancel_fn(ab_worker_t *w, uint64_t id, int why, void *arg)
{
    atomic_fetch_add(&s_progress[T_WORKER], 1);
    if (arg != &W || w != W.w || (why != AB_EDEADLINE && why != AB_ECANCELLED))
        s_fail("a cancel callback got the wrong worker or argument, or why %d", why);
    W.cancels++;
    for (int i = 0; i < W.nheld; i++)
        if (ab_job_id(W.held[i]) == id) {
            if (s_chance(&W.rng, 80)) {
                s_code(W.codes, ab_worker_fail(w, &W.held[i], AB_ECANCELLED, "cancelled"));
                W.held[i] = W.held[--W.nheld];
            }
            return;
        }
    s_fail("the cancel callback named job %llu, which the application does not hold",
           (unsigned long long)id);
}

static void s_worker_new(void)
{
    ab_options_t *o = ab_options_new();
    if (!o) {
        s_fail("ab_options_new failed");
        return;
    }
    ab_options_set_endpoint(o, B.ep);
    if (s_chance(&W.rng, 70))
        ab_options_set_heartbeat_ms(o, 100 + (int)s_below(&W.rng, 2000));
    if (s_chance(&W.rng, 20))
        ab_options_set_batching(o, 0);
    if (s_chance(&W.rng, 50))
        ab_options_set_compression(o, s_below(&W.rng, 2048), s_below(&W.rng, 30));
    CF_DOING(T_WORKER, "ab_worker_new");
    int rc = ab_worker_new(&W.w, o, CF_SVC, 1 + s_below(&W.rng, 16));
    ab_options_destroy(&o);
    if (rc != AB_OK) {
        s_fail("ab_worker_new: %s", ab_status_name(rc));
        return;
    }
    W.handles++;
    if (s_chance(&W.rng, 50))
        ab_worker_set_label(W.w, "model", "m1");
    if (s_chance(&W.rng, 70))
        ab_worker_set_cancel_handler(W.w, s_cancel_fn, &W);
}

/* The jobs the application holds go (after the worker, now and then:
 * ab_job_destroy is safe then too). */
static void s_held_free(void)
{
    for (int i = 0; i < W.nheld; i++) {
        uint32_t k = s_below(&W.rng, 10);
        if (k == 0 && !W.w) /* no handle: AB_EINVAL, and the job is freed all the same */
            ab_worker_reply(NULL, &W.held[i], "x", 1);
        else if (k == 1 && !W.w)
            ab_worker_fail(NULL, &W.held[i], AB_EBUSY, NULL);
        else
            ab_job_destroy(&W.held[i]);
        if (W.held[i])
            s_fail("a held job was left set after its end");
    }
    W.nheld = 0;
}

static void s_worker_destroy(void)
{
    if (!W.w)
        return;
    int before = s_chance(&W.rng, 40);
    if (before)
        s_held_free();
    if (!s_avoid[MV_w_stop] && s_chance(&W.rng, 10)) { /* stopped first: polls end at once */
        s_count[MV_w_stop]++;
        ab_worker_stop(W.w);
        int rc = ab_worker_poll(W.w, 10, s_job_fn, &W);
        if (rc != AB_ESTOPPED)
            s_fail("ab_worker_poll on a stopped worker returned %d (%s), not STOPPED: it "
                   "handed out the jobs that were waiting", rc, ab_status_name(rc));
    } else if (s_chance(&W.rng, 20)) { /* a graceful stop first */
        CF_DOING(T_WORKER, "ab_worker_shutdown");
        ab_worker_shutdown(W.w, (int)s_below(&W.rng, 300));
        int64_t end = ab_now_ms() + 3000;
        int rc = 0;
        while (rc != AB_ESTOPPED && ab_now_ms() < end)
            rc = ab_worker_poll(W.w, 10, s_job_fn, &W);
        if (rc != AB_ESTOPPED)
            s_fail("ab_worker_shutdown: the worker did not stop within 3 s (last poll %s)",
                   ab_status_name(rc));
        if (W.nheld && !before)
            s_held_free();
    }
    CF_DOING(T_WORKER, "ab_worker_destroy");
    ab_worker_destroy(&W.w);
    if (W.w)
        s_fail("ab_worker_destroy did not set the handle to NULL");
    s_held_free();
}

static void s_worker_step(void)
{
    if (!W.w) {
        s_worker_new();
        return;
    }
    int rc;
    if (s_chance(&W.rng, 20)) {
        ab_job_t *job = NULL;
        CF_DOING(T_WORKER, "ab_worker_recv");
        rc = ab_worker_recv(W.w, &job, (int)s_below(&W.rng, 11));
        if ((rc == AB_OK) != (job != NULL))
            s_fail("ab_worker_recv returned %s with a job %p", ab_status_name(rc), (void *)job);
        if (job)
            s_job_fn(W.w, job, &W);
        rc = rc == AB_ETIMEOUT ? 0 : rc;
    } else {
        CF_DOING(T_WORKER, "ab_worker_poll");
        rc = ab_worker_poll(W.w, 10, s_job_fn, &W);
    }
    if (rc < 0)
        s_code(W.codes, rc);
    if (rc == AB_ESTOPPED)
        s_fail("ab_worker_poll returned STOPPED on a worker nobody stopped");
    if (W.nheld && !s_avoid[MV_w_late] && s_chance(&W.rng, 5)) {
        int i = (int)s_below(&W.rng, (uint32_t)W.nheld);
        s_count[MV_w_late]++;
        CF_DOING(T_WORKER, "late answer");
        if (s_chance(&W.rng, 20)) {
            s_code(W.codes, ab_worker_reply_part(W.w, W.held[i], W.buf, 100));
        } else {
            s_job_answer(W.w, &W.held[i], s_below(&W.rng, 70));
            W.held[i] = W.held[--W.nheld];
        }
    }
    if (!s_avoid[MV_w_capacity] && s_below(&W.rng, 300) == 0) {
        s_count[MV_w_capacity]++;
        s_code(W.codes, ab_worker_set_capacity(W.w, 1 + s_below(&W.rng, 16)));
        uint8_t st[600];
        size_t sn = s_below(&W.rng, sizeof st);
        s_fill(&W.rng, st, sn, 0); /* not an InferenceState: the library only passes it on */
        s_code(W.codes, ab_worker_set_inference_state(W.w, sn ? st : NULL, sn));
        ab_worker_set_label(W.w, s_chance(&W.rng, 50) ? "gpu" : "model", "1");
        ab_worker_set_backend_state(W.w, s_chance(&W.rng, 50) ? "ok" : "degraded: fuzz");
        volatile int k = ab_worker_has_input(W.w) + ab_worker_connected(W.w);
        (void)k;
        ab_worker_flush(W.w);
    }
    if (!s_avoid[MV_w_destroy] && s_below(&W.rng, 500) == 0) {
        s_count[MV_w_destroy]++;
        s_worker_destroy();
    }
}

static void *s_worker_main(void *arg)
{
    (void)arg;
    s_fill(&W.rng, W.buf, sizeof W.buf, 1);
    while (atomic_load(&s_phase) == 0 && !atomic_load(&s_failed)) {
        atomic_fetch_add(&s_progress[T_WORKER], 1);
        s_worker_step();
    }
    s_held_free(); /* recovery: what it held is dropped, the rest echoed */
    while (atomic_load(&s_phase) == 1 && !atomic_load(&s_failed)) {
        atomic_fetch_add(&s_progress[T_WORKER], 1);
        if (!W.w) {
            s_worker_new();
            continue;
        }
        CF_DOING(T_WORKER, "ab_worker_poll (recovery)");
        int rc = ab_worker_poll(W.w, 10, s_job_fn, &W);
        if (rc > 0)
            atomic_fetch_add(&s_worker_rec_jobs, rc);
        atomic_store(&s_worker_connected, ab_worker_connected(W.w));
    }
    CF_DOING(T_WORKER, "ab_worker_destroy");
    ab_worker_destroy(&W.w);
    CF_DOING(T_WORKER, "done");
    atomic_store(&s_worker_done, 1);
    return NULL;
}

/* ==================================================================================== */
/* Watchdog, options, main                                                              */
/* ==================================================================================== */
static atomic_int s_watch_stop;

static void s_die(const char *why)
{
    fprintf(stderr, "clientfuzz: FAILED: %s\nclientfuzz: replay: %s\n", why, s_replay);
    fflush(stderr);
    _exit(1);
}

/* Fails the run (and exits: a hung thread cannot be joined) when a thread
 * makes no progress for CF_HANG_MS, or the whole run overstays. */
static void *s_watchdog(void *arg)
{
    (void)arg;
    unsigned long last[T_COUNT] = {0};
    int64_t since[T_COUNT], start = ab_now_ms();
    int64_t limit = start + (int64_t)(s_opt.seconds * 1000) + CF_RECOVER_MS + 90000;
    for (int t = 0; t < T_COUNT; t++)
        since[t] = start;
    while (!atomic_load(&s_watch_stop)) {
        usleep(200 * 1000);
        int64_t now = ab_now_ms();
        for (int t = 0; t < T_COUNT; t++) {
            unsigned long p = atomic_load(&s_progress[t]);
            if (p != last[t]) {
                last[t] = p;
                since[t] = now;
            } else if (now - since[t] > CF_HANG_MS &&
                       !(t == T_CLIENT && atomic_load(&s_client_done)) &&
                       !(t == T_WORKER && atomic_load(&s_worker_done))) {
                char why[256];
                const char *doing = atomic_load(&s_doing[t]);
                snprintf(why, sizeof why, "the %s thread made no progress for %d s (in %s)",
                         s_thread_names[t], CF_HANG_MS / 1000, doing ? doing : "?");
                s_die(why);
            }
        }
        if (now > limit)
            s_die("the run did not end in time");
    }
    return NULL;
}

static int s_usage(void)
{
    fprintf(stderr, "usage: clientfuzz [--seed N] [--seconds S] [--avoid move,...] [--verbose]\n"
                    "moves:");
    for (int i = 0; i < MV_COUNT_; i++)
        fprintf(stderr, " %s", s_names[i]);
    fprintf(stderr, "\n");
    return 2;
}

static int s_parse_avoid(const char *list)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    snprintf(s_opt.avoid, sizeof s_opt.avoid, "%s", list);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int found = 0;
        for (int i = 0; i < MV_COUNT_; i++)
            if (!strcmp(t, s_names[i]))
                s_avoid[i] = found = 1;
        if (!found)
            return -1;
    }
    return 0;
}

static int s_parse(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (!strcmp(a, "--verbose")) {
            s_opt.verbose = 1;
        } else if (!strcmp(a, "--seed") && v) {
            s_opt.seed = strtoull(v, &end, 10);
            i++;
        } else if (!strcmp(a, "--seconds") && v) {
            s_opt.seconds = strtod(v, &end);
            if (s_opt.seconds <= 0)
                return -1;
            i++;
        } else if (!strcmp(a, "--avoid") && v) {
            if (s_parse_avoid(v) != 0)
                return -1;
            i++;
            continue;
        } else {
            return -1;
        }
        if (end && *end)
            return -1;
    }
    return 0;
}

static void s_print_codes(const char *what, const uint64_t *codes)
{
    printf("clientfuzz: %s:", what);
    for (int i = 0; i < 64; i++)
        if (codes[i])
            printf(" %s %llu", ab_status_name(-i), (unsigned long long)codes[i]);
    printf("\n");
}

static void s_summary(double secs)
{
    uint64_t total = 0;
    for (int i = 0; i < CF_BROKER_MOVES; i++)
        total += s_count[i];
    printf("clientfuzz: %.1f s, %llu broker moves (%llu messages sent, %llu restarts):\n ",
           secs, (unsigned long long)total, (unsigned long long)B.msgs_out,
           (unsigned long long)B.restarts);
    for (int i = 0; i < MV_COUNT_; i++) {
        if (i == MV_c_async)
            printf("\n client calls:");
        if (i == MV_w_reply)
            printf("\n worker:");
        if (s_count[i])
            printf(" %s %llu", s_names[i], (unsigned long long)s_count[i]);
    }
    printf("\nclientfuzz: received from the library (%llu batches):",
           (unsigned long long)B.batches_in);
    for (int k = 0; k <= AB_KIND_MAX_; k++)
        if (B.kinds_in[k])
            printf(" %s %llu", ab_kind_name((uint32_t)k), (unsigned long long)B.kinds_in[k]);
    printf("\nclientfuzz: client: %llu handles, %llu async started, %llu finals, %llu partials "
           "(%llu to asks), %llu directory events; messages: direct %llu topic %llu receipt "
           "%llu gap %llu error %llu\n",
           (unsigned long long)C.handles, (unsigned long long)C.started,
           (unsigned long long)C.finals, (unsigned long long)C.partials,
           (unsigned long long)C.ask_partials, (unsigned long long)C.dir_events,
           (unsigned long long)C.msgs[1], (unsigned long long)C.msgs[2],
           (unsigned long long)C.msgs[3], (unsigned long long)C.msgs[4],
           (unsigned long long)C.msgs[5]);
    s_print_codes("client statuses (calls and finals)", C.codes);
    printf("clientfuzz: worker: %llu handles, %llu jobs, %llu cancels\n",
           (unsigned long long)W.handles, (unsigned long long)W.jobs,
           (unsigned long long)W.cancels);
    s_print_codes("worker statuses", W.codes);
}

/* Chaos for the run's length, then the recovery phase. NULL or why not. */
static const char *s_play(void)
{
    int64_t start = ab_now_ms(), end = start + (int64_t)(s_opt.seconds * 1000);
    int64_t next_report = start + 10000;
    while (!atomic_load(&s_failed) && ab_now_ms() < end) {
        atomic_fetch_add(&s_progress[T_BROKER], 1);
        CF_DOING(T_BROKER, "moves");
        int64_t now = ab_now_ms();
        if (now < B.deaf_until) {
            usleep(10 * 1000);
            continue;
        }
        int k = 1 + (int)s_below(&B.rng, 3);
        for (int i = 0; i < k; i++)
            s_move();
        s_drain();
        s_wait_drain(1); /* a few thousand moves a second at most: state, not a flood */
        if (s_opt.verbose && now >= next_report) {
            uint64_t total = 0;
            for (int i = 0; i < CF_BROKER_MOVES; i++)
                total += s_count[i];
            printf("clientfuzz: %.0f s: %llu moves, %llu messages received\n",
                   (double)(now - start) / 1000.0, (unsigned long long)total,
                   (unsigned long long)(B.kinds_in[0] + B.kinds_in[AB_KIND_REQUEST] +
                                        B.kinds_in[AB_KIND_REPLY]));
            next_report = now + 10000;
        }
    }
    if (atomic_load(&s_failed))
        return s_fail_text;
    /* Recovery: the broker behaves; the client and the worker must echo. */
    atomic_store(&s_phase, 1);
    B.deaf_until = 0;
    int64_t rend = ab_now_ms() + CF_RECOVER_MS, next_probe = 0;
    while (!atomic_load(&s_failed) && ab_now_ms() < rend &&
           !(atomic_load(&s_client_ok) && atomic_load(&s_worker_ok))) {
        atomic_fetch_add(&s_progress[T_BROKER], 1);
        CF_DOING(T_BROKER, "recovery");
        if (!atomic_load(&s_worker_ok) && ab_now_ms() >= next_probe) {
            s_probe();
            next_probe = ab_now_ms() + 300;
        }
        s_wait_drain(5);
    }
    if (atomic_load(&s_failed))
        return s_fail_text;
    if (!atomic_load(&s_client_ok) || !atomic_load(&s_worker_ok)) {
        snprintf(s_fail_text, sizeof s_fail_text,
                 "recovery: within %d s of a well-behaved broker, %s%s%s", CF_RECOVER_MS / 1000,
                 atomic_load(&s_client_ok) ? "" : "the client got no correct echo",
                 !atomic_load(&s_client_ok) && !atomic_load(&s_worker_ok) ? " and " : "",
                 atomic_load(&s_worker_ok) ? "" : "the worker echoed no probe");
        size_t n = strlen(s_fail_text);
        n += (size_t)snprintf(s_fail_text + n, sizeof s_fail_text - n,
                              " (%llu probes sent; worker connected %d, %d jobs; received:",
                              (unsigned long long)B.probes_sent,
                              atomic_load(&s_worker_connected), atomic_load(&s_worker_rec_jobs));
        for (int k = 0; k <= AB_KIND_MAX_ && n < sizeof s_fail_text - 40; k++)
            if (B.rec_in[k])
                n += (size_t)snprintf(s_fail_text + n, sizeof s_fail_text - n, " %s %llu",
                                      ab_kind_name((uint32_t)k), (unsigned long long)B.rec_in[k]);
        if (n < sizeof s_fail_text - 2)
            snprintf(s_fail_text + n, sizeof s_fail_text - n, ")");
        return s_fail_text;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (s_parse(argc, argv) != 0)
        return s_usage();
    if (!s_opt.seed)
        s_opt.seed = (ab_now_us() ^ ((uint64_t)getpid() << 32)) | 1;
    int n = snprintf(s_replay, sizeof s_replay, "clientfuzz --seed %llu --seconds %g",
                     (unsigned long long)s_opt.seed, s_opt.seconds);
    if (s_opt.avoid[0] && n > 0 && (size_t)n < sizeof s_replay)
        snprintf(s_replay + n, sizeof s_replay - (size_t)n, " --avoid %s", s_opt.avoid);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("clientfuzz: seed %llu (replay: %s)\n", (unsigned long long)s_opt.seed, s_replay);
    signal(SIGPIPE, SIG_IGN);
    s_seed(&B.rng, s_opt.seed, 1);
    s_seed(&C.rng, s_opt.seed, 2);
    s_seed(&W.rng, s_opt.seed, 3);
    B.next_job = 1 + s_below(&B.rng, 1000);
    if (ab_idmap_init(&B.sent_requests, 1024) != 0)
        return 1;
    B.ctx = zmq_ctx_new();
    snprintf(B.ep, sizeof B.ep, "tcp://127.0.0.1:%d", s_free_port());
    if (!B.ctx || s_bind() != 0) {
        fprintf(stderr, "clientfuzz: cannot bind %s\n", B.ep);
        return 1;
    }
    int64_t t0 = ab_now_ms();
    pthread_t watch, client, worker;
    pthread_create(&watch, NULL, s_watchdog, NULL);
    pthread_create(&client, NULL, s_client_main, NULL);
    pthread_create(&worker, NULL, s_worker_main, NULL);
    const char *fail = s_play();
    /* Stop: the threads destroy their handles while the broker still reads. */
    atomic_store(&s_phase, 2);
    while (!atomic_load(&s_client_done) || !atomic_load(&s_worker_done)) {
        atomic_fetch_add(&s_progress[T_BROKER], 1);
        CF_DOING(T_BROKER, "waiting for the threads to end");
        s_wait_drain(5);
    }
    pthread_join(client, NULL);
    pthread_join(worker, NULL);
    atomic_store(&s_watch_stop, 1);
    pthread_join(watch, NULL);
    if (!fail && atomic_load(&s_failed))
        fail = s_fail_text; /* found while the handles were destroyed */
    zmq_close(B.router);
    zmq_ctx_term(B.ctx);
    ab_idmap_fini(&B.sent_requests);
    ab_batch_entries_fini(&B.entries);
    s_summary((double)(ab_now_ms() - t0) / 1000.0);
    if (fail) {
        fprintf(stderr, "clientfuzz: FAILED: %s\nclientfuzz: replay: %s\n", fail, s_replay);
        return 1;
    }
    printf("clientfuzz: passed (seed %llu)\n", (unsigned long long)s_opt.seed);
    return 0;
}
