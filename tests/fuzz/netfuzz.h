/*
 * netfuzz.h - what the network fuzzer's two files share: the moves, the
 * PRNG every choice comes from (one seed replays a run), a raw peer's
 * state and the message a move builds (netfuzz_moves.c).
 */
#ifndef AB_NETFUZZ_H
#define AB_NETFUZZ_H

#include "codec.h"

#include <stddef.h>
#include <stdint.h>

#define NF_IDS 32   /* request ids a peer remembers (held, sent) */
#define NF_SEEN 128 /* ids seen anywhere, for forged answers */
#define NF_GOOD_SVC "nf-good-echo"
#define NF_FAR_SVC "nf-far-echo" /* --linked: served at the far broker only */
#define NF_MID_SVC "nf-mid-echo" /* --line: served at the middle broker only */

#define NF_MOVES(X)                                                                          \
    X(hello) X(register) X(request) X(lz4) X(typed) X(cancel) X(answer) X(reconnect)        \
    X(steal) X(work) X(bye) X(subscribe) X(unsubscribe) X(send) X(publish) X(heartbeat)     \
    X(discover) X(control) X(batch) X(deaf) X(link) X(link_names) X(link_interest)
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
 * a one-message move (batch, reconnect, steal, work, deaf). */
int nf_make(int mv, nf_peer_t *p, nf_out_t *o);

#endif
