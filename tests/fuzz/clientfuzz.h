/*
 * clientfuzz.h - what the library fuzzer's files share (clientfuzz.c: the
 * options, the watchdog and main; clientfuzz_broker.c: the fake broker;
 * clientfuzz_peers.c: the client and worker threads): the moves, the
 * per-thread PRNG, the run's state and the failure record.
 */
#ifndef AB_CLIENTFUZZ_H
#define AB_CLIENTFUZZ_H

#include "agentbus.h"
#include "batch.h"
#include "codec.h"
#include "idmap.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define CF_HANG_MS 30000      /* a thread without progress this long hangs */
#define CF_RECOVER_MS 15000   /* the recovery phase's budget */
#define CF_PEERS 16           /* routing ids the fake broker remembers */
#define CF_IDS 64             /* ids remembered per ring */
#define CF_MAX_CALLS 4096     /* async calls the client keeps in flight at most */
#define CF_HELD 16            /* jobs the worker holds at most */
#define CF_BIG (200u * 1024u) /* the largest payload anyone sends */
#define CF_SVC "svc"
/* A SEND that says it answers a call, from an agent no call asked: its
 * payload must never end a call (client.c: only the agent asked ends an
 * ask, and no SEND ends anything else). */
#define CF_FORGER "cf-forger"
#define CF_FORGED "cf-forged-answer"

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
    X(w_capacity) X(w_fail_begun)
#define CF_ENUM(n) MV_##n,
enum { CF_ALL(CF_ENUM) MV_COUNT_ };
#define CF_NAME(n) #n,
extern const char *const cf_names[MV_COUNT_];
#define CF_BROKER_MOVES (MV_deaf + 1)

/* Counted by the thread that plays each (one writer per slot), read after
 * the threads are joined; the moves left out (--avoid). */
extern uint64_t cf_count[MV_COUNT_];
extern int cf_avoid[MV_COUNT_];

/* --- options, failure, progress --------------------------------------------------- */
typedef struct {
    uint64_t seed;
    double seconds;
    int verbose;
    char avoid[256];
} cf_opt_t;
extern cf_opt_t cf_opt;

/* Records the first broken promise; the run then ends. */
void cf_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern char cf_fail_text[1024];
extern atomic_int cf_failed;

enum { T_BROKER, T_CLIENT, T_WORKER, T_COUNT };
extern atomic_ulong cf_progress[T_COUNT];
extern _Atomic(const char *) cf_doing[T_COUNT]; /* the call a thread is in, for a hang */
#define CF_DOING(t, what) atomic_store(&cf_doing[t], what)
/* 0: chaos; 1: recovery (the broker behaves, the threads check echoes);
 * 2: stop (the threads destroy their handles and end). */
extern atomic_int cf_phase;
extern atomic_int cf_client_ok, cf_worker_ok, cf_client_done, cf_worker_done;
/* The worker's state in the recovery phase, for a report. */
extern atomic_int cf_worker_connected, cf_worker_rec_jobs;

/* --- the PRNG: xorshift64*, one state per thread ----------------------------------- */
typedef struct {
    uint64_t s;
} cf_rng_t;

static inline uint64_t cf_rand(cf_rng_t *r)
{
    uint64_t x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static inline uint32_t cf_below(cf_rng_t *r, uint32_t n)
{
    return n ? (uint32_t)(cf_rand(r) % n) : 0;
}

static inline int cf_chance(cf_rng_t *r, int pct)
{
    return (int)cf_below(r, 100) < pct;
}

/* A thread's seed from the run's (splitmix64), so the threads' streams differ. */
static inline void cf_seed(cf_rng_t *r, uint64_t seed, uint64_t salt)
{
    uint64_t z = seed + salt * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    r->s = (z ^ (z >> 31)) | 1;
}

/* Fills P with N bytes: text that compresses, or random bytes. */
void cf_fill(cf_rng_t *r, uint8_t *p, size_t n, int text);
/* A payload size: mostly small, sometimes around the inline limits, now and
 * then large (up to MAX). */
size_t cf_size(cf_rng_t *r, size_t max);

/* --- the fake broker (clientfuzz_broker.c) ----------------------------------------- */
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
/* The fake broker's state (clientfuzz_broker.c; main reads its counts). */
typedef struct {
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
    uint64_t begun_in; /* worker ERRORs saying the work had begun (FLAG_NON_IDEMPOTENT) */
    int64_t deaf_until;
    ab_batch_entries_t entries; /* the decoder's array for BATCHes the library sends */
    uint8_t arena[CF_ARENA]; /* payloads of the move being played */
    size_t used;
    char strs[8][700];       /* strings of the move being played */
    int nstrs;
} cf_broker_t;
extern cf_broker_t cf_b;

int cf_broker_bind(void);           /* binds cf_b.router on cf_b.ep: 0 or -1 */
void cf_broker_move(void);          /* one random move */
void cf_broker_drain(void);         /* reads what has arrived (bounded) */
void cf_broker_wait(int ms);        /* waits up to MS for input, then reads it */
void cf_broker_probe(void);         /* the recovery phase's request to the worker */

/* --- the library's threads (clientfuzz_peers.c) ------------------------------------ */
void *cf_client_main(void *arg);
void *cf_worker_main(void *arg);
void cf_peers_seed(uint64_t seed); /* the two threads' PRNGs from the run's seed */
void cf_peers_report(void);        /* what the two threads did, for the summary */

#endif
