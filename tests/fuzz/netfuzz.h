/*
 * netfuzz.h - what the network fuzzer's files share: the moves, the
 * PRNG every choice comes from (one seed replays a run), a raw peer's
 * state and the message a move builds (netfuzz_moves.c); the run's
 * options, and the processes it starts and stops (netfuzz_procs.c).
 */
#ifndef AB_NETFUZZ_H
#define AB_NETFUZZ_H

#include "agentbus.h"
#include "codec.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define NF_IDS 32   /* request ids a peer remembers (held, sent) */
#define NF_SEEN 128 /* ids seen anywhere, for forged answers */
#define NF_GOOD_SVC "nf-good-echo"
#define NF_FAR_SVC "nf-far-echo" /* --linked: served at the far broker only */
#define NF_MID_SVC "nf-mid-echo" /* --line: served at the middle broker only */

#define NF_MOVES(X)                                                                          \
    X(hello) X(register) X(request) X(lz4) X(typed) X(cancel) X(answer) X(reconnect)        \
    X(steal) X(work) X(bye) X(subscribe) X(unsubscribe) X(send) X(publish) X(heartbeat)     \
    X(discover) X(control) X(batch) X(deaf) X(link) X(link_names) X(link_interest) X(mute)  \
    X(stall) X(dialed)
#define NF_ENUM(n) MV_##n,
enum { NF_MOVES(NF_ENUM) MV_COUNT_ };

/* Moves the run leaves out (--avoid); the lz4 one also keeps lz4 out of
 * typed requests and answers. */
extern int nf_avoid[MV_COUNT_];

/* The PRNG (xorshift64*): seed nf_rng before the first call. */
extern uint64_t nf_rng;
uint64_t nf_rand(void);
uint32_t nf_below(uint32_t n);
int nf_chance(int pct);
const char *nf_pick(const char *const *v, size_t n);
#define NF_PICK(arr) nf_pick(arr, sizeof arr / sizeof arr[0])

/* One raw DEALER peer. */
typedef struct {
    void *sock, *twin; /* twin: a second connection with the same routing id */
    char rid[32];
    size_t rid_len;
    int registered;
    uint64_t instance;
    int64_t deaf_until_ms;
    int stalling, stall_drop; /* MV_stall: in a stall; disconnects when it ends */
    int64_t mute_until_ms; /* sends nothing but HEARTBEATs until then (MV_mute) */
    uint64_t next_id;
    uint64_t held[NF_IDS]; /* requests it received as a worker */
    int nheld;
    uint64_t sent[NF_IDS]; /* requests it sent as a client */
    int nsent;
    uint64_t answered; /* the correlation id of its last answer (0: none yet) */
    uint64_t old[NF_IDS]; /* what it held before its last reconnect */
    int nold;
} nf_peer_t;

/* What the answer moves played (netfuzz prints them): answers to an id the
 * peer received as a worker, ERRORs with FLAG_NON_IDEMPOTENT (as
 * ab_worker_fail_begun sends them), answers repeated to the id the peer
 * answered last (twice, a chunk after the final), and answers to ids a
 * worker held on its connection before a reconnect with the same id. */
extern struct nf_answers {
    uint64_t to_held, begun, again, stale, work;
} nf_answers;

/* One message a move builds; the header's views point at static strings or
 * at buf; data is buf or heap (free heap after sending). */
typedef struct {
    ab_header_t h;
    uint8_t buf[8192];
    const void *data;
    size_t len;
    int has;
    void *heap;
} nf_out_t;

/* Remembers ID in V (N of NF_IDS used), replacing a random one when full. */
void nf_remember(uint64_t *v, int *n, uint64_t id);
/* Adds ID to the pool of ids seen anywhere (sent or received). */
void nf_seen_add(uint64_t id);
/* Builds into O peer P's answer of KIND to CORR: an ERROR (a code
 * placement may re-dispatch, or not) saying the work had begun
 * (FLAG_NON_IDEMPOTENT) when BEGUN, a chunk or a reply with some text. */
void nf_answer_to(nf_peer_t *p, nf_out_t *o, uint32_t kind, uint64_t corr, int begun);
/* Builds the message of move MV from peer P into O: 1, or 0 when MV is not
 * a one-message move (batch, reconnect, steal, work, deaf, mute, stall,
 * dialed). */
int nf_make(int mv, nf_peer_t *p, nf_out_t *o);
/* An id to answer: mostly one seen anywhere, else a random one. */
uint64_t nf_seen_pick(void);

/* --- the endpoint the near broker dials (netfuzz_fake.c) ------------------------------ */
/* Its endpoint ("" when the run avoids the dialed move: then the near
 * broker dials no such thing) and, with --linked, the certificate the
 * near broker expects of it: nfbroker's (it may then claim the real
 * brokers' names) or nflink's (nf-b*, the raw peers' names) by the seed. */
extern char nf_fake_ep[64], nf_fake_cert[64];
/* Binds it on 127.0.0.1 (a CURVE server with the key pair PUB, SEC when
 * not NULL, which its own connection to the near broker uses too). 0 or
 * -1. */
int nf_fake_open(void *ctx, const char *pub, const char *sec);
/* Reads what the broker sent it and answers as a peer broker would (HELLO,
 * heartbeats, requests echoed or held): draws nothing from the PRNG. */
void nf_fake_pump(int64_t now);
/* One seeded hostile act of it (MV_dialed). */
void nf_fake_move(int64_t now);
/* Prints what it did; closes it. */
void nf_fake_report(void);
void nf_fake_close(void);

/* The run's options (netfuzz.c parses them). */
typedef struct {
    uint64_t seed;
    double seconds;
    int peers, verbose;
    int linked; /* the brokers beside the near one: 0, 1 (--linked), 2 (--line) */
    const char *broker_bin, *endpoint;
} nf_opt_t;
extern nf_opt_t nf_opt;

/* --- the processes (netfuzz_procs.c) ---------------------------------------------------- */
/* --linked: the brokers beside the near one (nf_broker_pid, nf_ep), in line
 * order: the far one, or with --line the middle one (nf_rb[0]) and then the
 * far one. Each has an echo worker serving its own service and a log of
 * its own; their command lines are kept for restarts. */
typedef struct {
    const char *name, *who, *svc;
    pid_t pid, worker_pid;
    char ep[64], log[256];
    char *argv[64], *wargv[16];
    char store[8][300];
    unsigned stops, kills, worker_kills; /* the faults it had */
} nf_broker_t;

/* The near broker (0 when given --endpoint, or once stopped), its echo
 * worker, its endpoint and the log both write to. */
extern pid_t nf_broker_pid, nf_worker_pid;
extern char nf_ep[64], nf_logpath[256];
extern nf_broker_t nf_rb[2]; /* nf_opt.linked of them */
/* --linked: raw peer I's CURVE keys are [I % 4] (agent, worker, peer broker,
 * admin); every broker has the server key nf_server_pub. */
extern char nf_key_pub[4][41], nf_key_sec[4][41], nf_server_pub[41];

/* Makes the run's directory and starts what nf_opt asks for: the near
 * broker (unless --endpoint) and its echo worker, with --linked the other
 * brokers and theirs (the keys made first, AB_KEY and AB_BROKER_KEY set
 * for this process's clients), and binds in CTX the endpoint the near
 * broker dials (nf_fake_open; not with --endpoint or --avoid dialed).
 * Does not wait for them. 0 or -1. */
int nf_start_processes(void *ctx);
/* SIGTERM to *PID (SIGKILL after 5 s), reaped; *PID is 0 after. */
void nf_stop(pid_t *pid);
/* NULL while every broker lives, else which one died and how (in BUF). */
const char *nf_broker_dead(char *buf, size_t cap);
/* Prints to stderr the sanitizer reports in the log PATH, or its tail. */
void nf_print_log(const char *path);
/* SIGTERM to the broker *PID (WHO, log LOG): NULL when it exits clean
 * within 10 s (a leak report of libzmq's loss at close alone is said and
 * not counted: nf_lsan.h), else what failed (in BUF). */
const char *nf_term_clean(pid_t *pid, const char *who, const char *log, char *buf, size_t cap);
/* A client of the broker at EP (NULL when it cannot be made). */
ab_client_t *nf_client_at(const char *ep);
/* netfuzz_final.c: the broker at EP (WHO) still answers `stats` (printed
 * in part): NULL, or what failed (in BUF). */
const char *nf_final_stats(const char *ep, const char *who, char *buf, size_t cap);
/* --linked: prints the links of the broker at EP (WHO); what failed when
 * its link to FAR (NULL: not checked) answered no request. */
const char *nf_final_links(const char *ep, const char *who, const char *far, char *buf,
                           size_t cap);
/* --linked: the far side's faults, from a PRNG of their own seeded from
 * nf_opt.seed: nf_fault_start at the start of play (NOW), nf_fault_step
 * as play goes on, nf_fault_end to let a stopped broker go on. */
void nf_fault_start(int64_t now);
void nf_fault_step(int64_t now);
void nf_fault_end(void);
/* Removes the run's directory (a failed run keeps it). */
void nf_remove_dir(void);

#endif
