/*
 * router.c - the send path: every message the broker sends goes through
 * ab_send, which encodes the header on the stack and moves the payload.
 *
 * ZMQ_ROUTER_MANDATORY is on, so a send to a peer that is gone fails with
 * EHOSTUNREACH and one to a peer whose pipe is full fails with EAGAIN instead
 * of vanishing silently. Both are counted (send_failures) and logged at a
 * rate limit; the caller decides what a failure means for its request.
 */
#define AB_LOG_SUBSYS "router" /* log.h: the subsystem in log lines */
#include "request.h"
#include "router.h"
#include "batching.h"
#include "service.h"
#include "placement.h"
#include "cache.h"
#include "link.h"
#include "agentbus.h"
#include "util.h"

#include <errno.h>
#include <linux/sockios.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>

static void s_send_failed(ab_broker_t *b, const ab_rid_t *rid)
{
    int err = errno;
    char key[2 * AB_RID_MAX + 1];
    b->c.send_failures++;
    if (err == EAGAIN)
        b->c.send_eagain++;
    else if (err == EHOSTUNREACH)
        b->c.send_unreachable++;
    ab_hex(rid->bytes, rid->len, key, sizeof key);
    AB_LOG_RL(&b->rl, ab_hash_bytes(rid->bytes, rid->len) ^ 0x5e17, ab_now_ms(), AB_LOG_WARN,
              "cannot send to %s: %s", key,
              err == EHOSTUNREACH ? "peer is gone" : err == EAGAIN ? "peer's queue is full"
                                                                  : zmq_strerror(err));
    errno = err; /* the caller may tell a full pipe from a gone peer */
}

/* --- bytes in flight per peer, connection limit (issue 11) -------------------
 *
 * libzmq does not say how much a peer's pipe holds, and a count (SNDHWM)
 * says nothing about bytes: 100k messages of 16 KB are 1.6 GB. So the
 * broker counts the ZMTP bytes it hands to libzmq for each connection and
 * asks the kernel how many the peer has taken: the bytes its TCP stack
 * acknowledged (TCP_INFO tcpi_bytes_acked, from the moment the connection
 * was first seen), or, for ipc, everything but what sits in the socket's
 * send queue at a moment that queue is short (SIOCOUTQ under 1/8 of
 * SO_SNDBUF: the socket then polls writable, so libzmq's I/O thread keeps
 * the pipe empty; a reader that stops leaves it at about 1/4; so for ipc
 * the figure lags: a peer counts as caught up only once its queue was seen
 * short). The difference is what the broker holds for the peer: libzmq's
 * pipe plus the kernel's send buffer. It needs no wire change and nothing
 * the peer claims: a peer cannot opt out (a library ack could be forged).
 * The kernel is asked when the running estimate (sent - last taken) is over
 * the bound, and every sweep for peers with over S_FRESH_BYTES in flight,
 * so a peer that keeps up costs two syscalls (fstat, getsockopt) per sweep
 * at most; one over its bound, at most two per S_RECHECK_MS.
 *
 * Policy. Over peer-out-max-bytes: new REQUESTs BUSY (broker.c), direct
 * messages and publications are held back (ab_send_try reports the
 * pipe full: mailbox, subscriber queue). Over twice the bound, nothing more
 * is sent to it (counted out_dropped) and it is disconnected; over the bound
 * for peer-stall-ms, too. Disconnecting: ROUTER has no per-peer close, so
 * the broker shuts down the connection's socket (shutdown(2) on the fd from
 * ZMQ_SRCFD, after checking by inode that the fd is still that socket);
 * libzmq's I/O thread then sees the connection end, closes the fd and frees
 * the pipe and what it held. */
/* By fd. EARLY: its first message was read before the monitor's ACCEPTED
 * (the loop reads messages first), so it was counted then. */
enum { S_FD_NONE = 0, S_FD_OPEN = 1, S_FD_REFUSED = 2, S_FD_EARLY = 4 };
enum { S_KIND_UNKNOWN = 0, S_KIND_TCP = 1, S_KIND_OTHER = 2 };
#define S_RECHECK_MS 10       /* an over peer's kernel figures are reused this long */
#define S_REFUSE_LINGER_MS 200 /* a refused connection's ERROR gets this long to leave */
#define S_REFUSE_SILENT_MS 1000 /* a refused connection that says nothing: closed */
#define S_TRIM_CLOSED 256     /* connections closed before the heap is trimmed */
#define S_IDLE_MSGS 1000      /* messages in a second under which the broker is idle */
#define S_FRESH_BYTES (64 * 1024) /* peers with more in flight are re-asked every sweep */
/* struct tcp_info's tcpi_bytes_acked (Linux >= 4.1; glibc's header lacks it):
 * its offset is kernel ABI, so it is read from the raw bytes. */
#define S_TCPI_BYTES_ACKED 120

/* The bytes P's TCP stack acknowledged on FD. 0 or -1. */
int ab_router_tcp_acked(int fd, uint64_t *acked)
{
    uint8_t ti[256] = {0};
    socklen_t l = sizeof ti;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &l) != 0 || l < S_TCPI_BYTES_ACKED + 8)
        return -1;
    memcpy(acked, ti + S_TCPI_BYTES_ACKED, 8);
    return 0;
}

typedef struct {
    int fd;
    int answered;
    int64_t since_ms;
} s_refused_t;

/* The outbound figures of a record the broker dropped (BYE, silence, a
 * takeover) while its connection stayed open with bytes the peer had not
 * taken: the connection's next record starts from them (s_rebase). */
typedef struct {
    int fd, kind, sndbuf;
    uint64_t ino, sent, taken, base, counted;
    int64_t over_ms;
} s_carry_t;

struct ab_conns {
    uint8_t *fd_state; /* S_FD_* by fd */
    size_t fd_cap;
    uint32_t open;
    s_refused_t *refused;
    size_t nrefused, cap_refused;
    s_carry_t *carry; /* at most one per open connection */
    size_t ncarry, cap_carry;
    ab_list_t over; /* peers over their bound, stall clock running (over_link) */
    ab_defer_t kill; /* peers to disconnect at the end of the turn (ab_peer_t.kill) */
    uint32_t closed_since_trim;
    int64_t trim_ms;
    uint64_t idle_msgs;   /* b->c.msgs_in at idle_ms */
    int64_t idle_ms;      /* start of the second being judged idle or not */
    int idle_trimmed;     /* trimmed since the last busy second */
    uint64_t accepted; /* ACCEPTED events ever: bounds libzmq's generated ids */
};

static struct ab_conns *s_conns(ab_broker_t *b)
{
    if (!b->conns)
        b->conns = calloc(1, sizeof *b->conns);
    return b->conns;
}

/* Makes room for one more element in *ARR (N used of *CAP, SIZE each). */
static int s_room(void **arr, size_t n, size_t *cap, size_t size)
{
    if (n < *cap)
        return 0;
    size_t c = *cap ? 2 * *cap : 16;
    void *a = realloc(*arr, c * size);
    if (!a)
        return -1;
    *arr = a;
    *cap = c;
    return 0;
}

/* Bytes a frame of SIZE takes on the wire (ZMTP 3: flags, 1 or 8 size bytes). */
uint64_t ab_router_wire(size_t size)
{
    return size + (size > 255 ? 9 : 2);
}

uint64_t ab_router_fd_inode(int fd)
{
    struct stat st;
    return fd >= 0 && fstat(fd, &st) == 0 ? (uint64_t)st.st_ino : 0;
}

/* Removes what a dropped record left on FD (C's carry list) into *OUT
 * (may be NULL): 1 when there was something. */
static int s_carry_remove(struct ab_conns *c, int fd, s_carry_t *out)
{
    for (size_t i = 0; c && i < c->ncarry; i++)
        if (c->carry[i].fd == fd) {
            if (out)
                *out = c->carry[i];
            c->carry[i] = c->carry[--c->ncarry];
            return 1;
        }
    return 0;
}

/* Takes the figures a dropped record left on P's connection: 1 when
 * there were some (of the same socket: the fd may be another one now). */
static int s_take_carry(struct ab_conns *c, ab_peer_t *p)
{
    s_carry_t k;
    if (!s_carry_remove(c, p->fd, &k) || k.ino != p->out_ino)
        return 0;
    p->out_sent = k.sent;
    p->out_taken = k.taken;
    p->out_base = k.base;
    p->out_counted = k.counted;
    p->out_kind = k.kind;
    p->out_sndbuf = k.sndbuf;
    p->out_over_ms = k.over_ms;
    if (k.over_ms && !ab_list_linked(&p->over_link)) /* its stall clock runs on */
        ab_list_insert_tail(&c->over, &p->over_link);
    return 1;
}

/* P's connection is new to P's accounting: start from zero there, or,
 * when an earlier record of the same connection left bytes not taken,
 * from its figures: else a peer that reads nothing would get a fresh
 * bound each time it said BYE and spoke again. */
static void s_rebase(struct ab_conns *c, ab_peer_t *p)
{
    p->out_fd = p->fd;
    p->out_sent = p->out_taken = p->out_base = p->out_counted = 0;
    p->out_kind = S_KIND_UNKNOWN;
    p->out_over_ms = 0;
    if (!(p->out_ino = ab_router_fd_inode(p->fd)) || s_take_carry(c, p))
        return;
    int dom = 0, sb = 0;
    socklen_t l = sizeof dom;
    if (getsockopt(p->fd, SOL_SOCKET, SO_DOMAIN, &dom, &l) != 0)
        return;
    if (dom == AF_INET || dom == AF_INET6) {
        if (ab_router_tcp_acked(p->fd, &p->out_base) == 0)
            p->out_kind = S_KIND_TCP;
    } else {
        l = sizeof sb;
        if (getsockopt(p->fd, SOL_SOCKET, SO_SNDBUF, &sb, &l) == 0) {
            p->out_sndbuf = sb;
            p->out_kind = S_KIND_OTHER;
        }
    }
}

/* Asks the kernel how much of what was sent P has taken. Nothing changes
 * when the fd is no longer P's socket (closed, or reused). */
static void s_refresh(ab_peer_t *p, int64_t now)
{
    p->out_checked_ms = now;
    if (p->out_kind == S_KIND_UNKNOWN || ab_router_fd_inode(p->fd) != p->out_ino)
        return;
    uint64_t taken = p->out_taken;
    if (p->out_kind == S_KIND_TCP) {
        uint64_t acked;
        if (ab_router_tcp_acked(p->fd, &acked) == 0)
            taken = acked - p->out_base; /* + handshake, pings: a few bytes */
    } else {
        int q = 0;
        /* A unix socket polls writable while its queue is under a quarter
         * of SO_SNDBUF; well under that, libzmq has nothing left to write. */
        if (ioctl(p->fd, SIOCOUTQ, &q) == 0 && q >= 0 && q < p->out_sndbuf / 8)
            taken = p->out_sent > (uint64_t)q ? p->out_sent - (uint64_t)q : 0;
    }
    if (taken > p->out_sent)
        taken = p->out_sent;
    if (taken > p->out_taken)
        p->out_taken = taken;
}

static uint64_t s_in_flight(const ab_peer_t *p)
{
    /* A connection the kernel cannot tell about is bounded by SNDHWM only. */
    return p->out_fd == p->fd && p->out_kind != S_KIND_UNKNOWN ? p->out_sent - p->out_taken : 0;
}

/* What P has not taken and no earlier record of its connection counted
 * lost: the bytes sent past both. Bytes are taken in the order sent, so
 * those an earlier record left (below out_counted) go first. */
static uint64_t s_lost(const ab_peer_t *p)
{
    if (!s_in_flight(p))
        return 0;
    return p->out_sent - (p->out_taken > p->out_counted ? p->out_taken : p->out_counted);
}

static void s_disconnect(void *ctx, ab_defer_node_t *n);

/* Marks P for disconnection at the end of the turn. */
static void s_kill(ab_broker_t *b, ab_peer_t *p)
{
    struct ab_conns *c = s_conns(b);
    if (c)
        ab_defer_add(&c->kill, &p->kill, s_disconnect);
}

/* The level under which a peer counts as caught up: over the bound it must
 * take half of it before it is under again (hysteresis). A peer that does not
 * read but whose kernel slowly makes room (the receiver compacts its queue)
 * would otherwise drift just under the bound, leave the stall clock, and
 * hold its bytes for ever without being disconnected. */
static uint64_t s_level(const ab_peer_t *p, uint64_t bound)
{
    return p->out_over_ms ? bound / 2 : bound;
}

int ab_peer_over(ab_broker_t *b, ab_peer_t *p)
{
    uint64_t bound = b->cfg->peer_out_max_bytes;
    if (!bound || s_in_flight(p) <= s_level(p, bound))
        return 0;
    int64_t now = ab_now_ms();
    if (!p->out_over_ms || now - p->out_checked_ms >= S_RECHECK_MS)
        s_refresh(p, now);
    if (s_in_flight(p) <= s_level(p, bound))
        return 0;
    struct ab_conns *c = s_conns(b);
    if (!p->out_over_ms && c) {
        p->out_over_ms = now;
        if (!ab_list_linked(&p->over_link)) /* still listed after a rebase */
            ab_list_insert_tail(&c->over, &p->over_link);
    }
    return 1;
}

/* 1 when P already holds more than twice its bound: nothing more is sent
 * to it (counted) and it is disconnected. One message may pass the bound,
 * so the broker's share for a peer stays under 2 x bound + one message. */
int ab_peer_beyond(ab_broker_t *b, ab_peer_t *p)
{
    uint64_t bound = b->cfg->peer_out_max_bytes;
    if (!bound || s_in_flight(p) <= 2 * bound)
        return 0;
    s_refresh(p, ab_now_ms());
    if (s_in_flight(p) <= 2 * bound)
        return 0;
    b->c.out_dropped++;
    s_kill(b, p);
    return 1;
}

void ab_peer_sent(ab_broker_t *b, ab_peer_t *p, size_t hlen, size_t plen, int has_payload)
{
    if (p->out_fd != p->fd)
        s_rebase(b->conns, p);
    p->out_sent += ab_router_wire(hlen) + (has_payload ? ab_router_wire(plen) : 0);
    if (b->cfg->peer_out_max_bytes && s_in_flight(p) > b->cfg->peer_out_max_bytes)
        ab_peer_over(b, p); /* starts the stall clock */
}

static void s_cut(ab_broker_t *b, ab_peer_t *p);

void ab_router_peer_gone(ab_broker_t *b, ab_peer_t *p)
{
    /* Marked to be cut at the end of the turn (past twice its bound) and
     * dropped before (a BYE after it in the same BATCH, a failed flush):
     * cut now, or its connection would stay open with all it holds. */
    if (ab_defer_queued(&p->kill))
        s_cut(b, p);
    /* What it had not taken is lost: its connection closed (libzmq discarded
     * it; figures at most one sweep old above S_FRESH_BYTES), or the broker
     * forgets it (silence, BYE) and will not answer it again. */
    int open = s_in_flight(p) && ab_router_fd_inode(p->fd) == p->out_ino;
    if (open)
        s_refresh(p, ab_now_ms());
    b->c.out_lost_bytes += s_lost(p);
    struct ab_conns *c = b->conns;
    /* Its connection stays: the next record on it inherits what this one
     * had not seen taken, counted lost already (up to out_sent). A record
     * marked to be cut was cut above, which leaves nothing in flight, so
     * it carries nothing. */
    if (open && s_in_flight(p) && c &&
        s_room((void **)&c->carry, c->ncarry, &c->cap_carry, sizeof *c->carry) == 0) {
        s_carry_remove(c, p->fd, NULL); /* an older record's, now in this one */
        c->carry[c->ncarry++] = (s_carry_t){
            .fd = p->fd, .kind = p->out_kind, .sndbuf = p->out_sndbuf, .ino = p->out_ino,
            .sent = p->out_sent, .taken = p->out_taken, .base = p->out_base,
            .counted = p->out_sent, .over_ms = p->out_over_ms};
    }
    ab_list_remove(&p->over_link);
    ab_defer_cancel(&p->kill);
}

/* Ends P's connection, counted (P goes next). */
static void s_cut(ab_broker_t *b, ab_peer_t *p)
{
    s_refresh(p, ab_now_ms());
    uint64_t held = s_in_flight(p);
    b->c.slow_disconnects++;
    b->c.slow_disconnect_bytes += held;
    if (p->fd >= 0 && p->out_ino && ab_router_fd_inode(p->fd) == p->out_ino)
        shutdown(p->fd, SHUT_RDWR);
    AB_LOG_RL(&b->rl, ab_hash_bytes(p->rid.bytes, p->rid.len) ^ 0x510e, ab_now_ms(), AB_LOG_WARN,
              "peer %s disconnected: %llu bytes sent to it not taken (peer-out-max-bytes %zu, "
              "peer-stall-ms %ld)", p->key, (unsigned long long)held,
              b->cfg->peer_out_max_bytes, b->cfg->peer_stall_ms);
    p->out_taken = p->out_sent; /* counted above, not again as lost */
}

/* Ends P's connection (see above) and drops P. */
static void s_disconnect(void *ctx, ab_defer_node_t *n)
{
    ab_broker_t *b = ctx;
    ab_peer_t *p = ab_defer_data(n, ab_peer_t, kill);
    s_cut(b, p);
    ab_peer_drop(b, p, "not reading what it is sent");
}

void ab_router_reap(ab_broker_t *b)
{
    /* Dropping one peer may mark others (answers go out): they are
     * disconnected in the same run; a dropped peer leaves the queue. */
    if (b->conns)
        ab_defer_run(&b->conns->kill, b);
}

static void s_tick_over(ab_broker_t *b, struct ab_conns *c, int64_t now)
{
    ab_list_t *l, *tmp;
    AB_LIST_FOREACH_SAFE(l, tmp, &c->over) { /* s_kill only queues: the list holds */
        ab_peer_t *p = ab_list_data(l, ab_peer_t, over_link);
        if (p->out_over_ms) {
            s_refresh(p, now);
            if (s_in_flight(p) > s_level(p, (uint64_t)b->cfg->peer_out_max_bytes)) {
                if (now - p->out_over_ms >= b->cfg->peer_stall_ms)
                    s_kill(b, p);
                continue;
            }
            p->out_over_ms = 0; /* it caught up */
        }
        ab_list_remove(l);
    }
}

static void s_tick_refused(struct ab_conns *c, int64_t now)
{
    for (size_t i = 0; i < c->nrefused;) {
        s_refused_t *r = &c->refused[i];
        int64_t age = now - r->since_ms;
        if (age < (r->answered ? S_REFUSE_LINGER_MS : S_REFUSE_SILENT_MS)) {
            i++;
            continue;
        }
        if ((size_t)r->fd < c->fd_cap && (c->fd_state[r->fd] & ~S_FD_EARLY) == S_FD_REFUSED)
            shutdown(r->fd, SHUT_RDWR); /* libzmq closes it; the monitor reports it */
        c->refused[i] = c->refused[--c->nrefused];
    }
}

int ab_router_init(ab_broker_t *b)
{
    return ab_broker_every(b, AB_SWEEP_MS, ab_router_tick) < 0 ? -1 : 0;
}

void ab_router_tick(ab_broker_t *b, int64_t now)
{
    struct ab_conns *c = b->conns;
    if (!c)
        return;
    s_tick_over(b, c, now);
    s_tick_refused(c, now);
    /* Fresh figures for peers with much in flight, so that what a closed
     * connection took with it can be counted (ab_router_peer_gone). */
    for (ab_peer_t *p = zhashx_first(b->peers); p; p = zhashx_next(b->peers))
        if (s_in_flight(p) > S_FRESH_BYTES)
            s_refresh(p, now);
    /* Many connections gone: give their memory back to the system (the
     * allocator keeps freed heap otherwise; ~28 KB per connection). */
    if (c->closed_since_trim >= S_TRIM_CLOSED && now - c->trim_ms >= 1000) {
        malloc_trim(0);
        c->closed_since_trim = 0;
        c->trim_ms = now;
    }
    /* A second nearly without messages after a busy one: give back the
     * free heap that the raised trim threshold kept (heap_tune.h: up to
     * 16 MiB an arena), once until traffic comes back. */
    if (now - c->idle_ms >= 1000) {
        int idle = b->c.msgs_in - c->idle_msgs < S_IDLE_MSGS;
        if (idle && !c->idle_trimmed) {
            malloc_trim(0);
            c->trim_ms = now;
        }
        c->idle_trimmed = idle;
        c->idle_msgs = b->c.msgs_in;
        c->idle_ms = now;
    }
}

/* Grows the fd table to hold FD. 0 or -1. */
static int s_fd_room(struct ab_conns *c, int fd)
{
    if ((size_t)fd < c->fd_cap)
        return 0;
    size_t cap = c->fd_cap ? c->fd_cap : 1024;
    while (cap <= (size_t)fd)
        cap *= 2;
    uint8_t *st = realloc(c->fd_state, cap);
    if (!st)
        return -1;
    memset(st + c->fd_cap, 0, cap - c->fd_cap);
    c->fd_state = st;
    c->fd_cap = cap;
    return 0;
}

/* A new connection on FD: counted, and refused when over the limit. */
static void s_admit(ab_broker_t *b, struct ab_conns *c, int fd)
{
    c->open++;
    c->fd_state[fd] = S_FD_OPEN;
    if (c->open <= (uint32_t)b->cfg->max_connections ||
        s_room((void **)&c->refused, c->nrefused, &c->cap_refused, sizeof *c->refused) != 0)
        return;
    c->fd_state[fd] = S_FD_REFUSED;
    c->refused[c->nrefused++] = (s_refused_t){fd, 0, ab_now_ms()};
    b->c.conn_refused++;
    AB_LOG_RL(&b->rl, 0xc0ee, ab_now_ms(), AB_LOG_WARN,
              "connection refused: %u open (max-connections %ld)", c->open,
              b->cfg->max_connections);
}

void ab_router_conn_event(ab_broker_t *b, int event, int fd)
{
    struct ab_conns *c = s_conns(b);
    if (!c || fd < 0 || s_fd_room(c, fd) != 0)
        return;
    uint8_t st = c->fd_state[fd];
    if (event == ZMQ_EVENT_ACCEPTED) {
        c->accepted++;
        if (st & S_FD_EARLY) { /* its first message came first: counted then */
            c->fd_state[fd] = st & ~S_FD_EARLY;
            return;
        }
        if (st != S_FD_NONE) /* a close we did not see: not counted twice */
            c->open--;
        s_admit(b, c, fd);
    } else if (event == ZMQ_EVENT_DISCONNECTED && st != S_FD_NONE) {
        s_carry_remove(c, fd, NULL); /* what its records left goes with it */
        c->fd_state[fd] = S_FD_NONE;
        c->open--;
        c->closed_since_trim++;
    }
}

int ab_router_refused(ab_broker_t *b, const ab_rid_t *rid, int fd, const ab_header_t *h)
{
    struct ab_conns *c = fd >= 0 ? s_conns(b) : NULL;
    if (!c)
        return 0;
    if (((size_t)fd >= c->fd_cap || c->fd_state[fd] == S_FD_NONE) && s_fd_room(c, fd) == 0) {
        s_admit(b, c, fd); /* before its ACCEPTED event: decided now */
        c->fd_state[fd] |= S_FD_EARLY;
    }
    if ((size_t)fd >= c->fd_cap || (c->fd_state[fd] & ~S_FD_EARLY) != S_FD_REFUSED)
        return 0;
    for (size_t i = 0; i < c->nrefused; i++) {
        s_refused_t *r = &c->refused[i];
        if (r->fd != fd || r->answered)
            continue;
        r->answered = 1;
        r->since_ms = ab_now_ms();
        char text[96];
        snprintf(text, sizeof text, "too many connections (max-connections %ld)",
                 b->cfg->max_connections);
        if (h->kind != AB_KIND_ERROR) {
            ab_header_t e = ab_header_init(AB_KIND_ERROR);
            e.correlation_id = h->id;
            e.error_code = AB_ERR_BUSY;
            e.error_text = ab_view_of(text);
            uint8_t buf[256];
            size_t len = ab_header_encode(&e, buf, sizeof buf);
            if (len)
                ab_send_raw_peer(b, NULL, rid, buf, len, NULL);
            AB_COUNT_ERROR(b, AB_ERR_BUSY);
        }
    }
    return 1;
}

int ab_router_fd_open(const ab_broker_t *b, int fd)
{
    const struct ab_conns *c = b->conns;
    return c && fd >= 0 && (size_t)fd < c->fd_cap && c->fd_state[fd] == S_FD_OPEN &&
           c->accepted < ((uint64_t)1 << 32);
}

uint32_t ab_router_connections(const ab_broker_t *b)
{
    return b->conns ? b->conns->open : 0;
}

void ab_router_fini(ab_broker_t *b)
{
    struct ab_conns *c = b->conns;
    if (!c)
        return;
    free(c->fd_state);
    free(c->refused);
    free(c->carry);
    while (ab_list_pop_head(&c->over)) /* its peers are freed after this */
        ;
    ab_defer_clear(&c->kill); /* its peers are freed after this */
    free(c);
    b->conns = NULL;
}

int ab_send_raw(ab_broker_t *b, const ab_rid_t *rid, const uint8_t *buf, size_t len,
                zmq_msg_t *payload)
{
    return ab_send_raw_peer(b, ab_peer_lookup(b, rid), rid, buf, len, payload);
}

/* Counts a message of BYTES (without the routing id) sent to P. */
static void s_sent(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *rid, size_t hlen, size_t plen,
                   int has_payload)
{
    b->c.msgs_out++;
    b->c.bytes_out += rid->len + hlen + plen;
    if (p)
        ab_peer_sent(b, p, hlen, plen, has_payload);
}

/* 1 when a payload of PLEN bytes goes to P inline, in the header's frame:
 * P reads that and it is small enough. Links stay on two frames (s_emit). */
static int s_goes_inline(const ab_peer_t *p, size_t plen)
{
    return p && plen <= AB_INLINE_MAX && (p->features & AB_FEATURE_INLINE) &&
           p->link_role < AB_LINK_WORKER;
}

/* For a peer that reads inline payloads (codec.h "Inline"): the header
 * HDR (HLEN bytes) and the payload's bytes (DATA, PLEN) in one frame, so
 * libzmq moves one frame instead of two. 0 (counted) or -1 (counted). */
static int s_emit_one(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *rid, const void *hdr,
                      size_t hlen, const void *data, size_t plen)
{
    size_t n = ab_msg_inline_size(hlen, plen);
    zmq_msg_t one;
    if (zmq_msg_init_size(&one, n) != 0) {
        errno = ENOMEM;
        s_send_failed(b, rid);
        return -1;
    }
    ab_msg_inline_put(zmq_msg_data(&one), hdr, hlen, data, plen);
    if (zmq_send(b->router, rid->bytes, rid->len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_msg_send(&one, b->router, 0) < 0) {
        zmq_msg_close(&one);
        s_send_failed(b, rid);
        return -1;
    }
    zmq_msg_close(&one);
    s_sent(b, p, rid, n, 0, 0);
    return 0;
}

/* s_emit_one from messages: HMSG and PAYLOAD are consumed only when sent,
 * as zmq_msg_send would (a held message is retried later). 0 or -1. */
static int s_emit_inline(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *rid, const void *hdr,
                         size_t hlen, zmq_msg_t *hmsg, zmq_msg_t *payload)
{
    if (s_emit_one(b, p, rid, hdr, hlen, zmq_msg_data(payload), zmq_msg_size(payload)) != 0)
        return -1;
    if (hmsg) {
        zmq_msg_close(hmsg);
        zmq_msg_init(hmsg);
    }
    zmq_msg_close(payload);
    zmq_msg_init(payload);
    return 0;
}

/* The one place a message leaves the ROUTER: routing id, then the header
 * as bytes (BUF, LEN) or as a message (HMSG, moved), then PAYLOAD (moved;
 * may be NULL); or both in one frame to a peer that reads that. Links stay
 * on two frames (their far side is an older broker as likely as not).
 * Counts what went out, or the failure. 0 or -1 (errno). */
static int s_emit(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *rid, const uint8_t *buf,
                  size_t len, zmq_msg_t *hmsg, zmq_msg_t *payload)
{
    if (p && p->link_role >= AB_LINK_WORKER) /* a broker link's peer (link.h) */
        return ab_link_emit(b, p, buf, len, hmsg, payload);
    int more = payload ? ZMQ_SNDMORE : 0;
    size_t hlen = hmsg ? zmq_msg_size(hmsg) : len;
    size_t plen = payload ? zmq_msg_size(payload) : 0;
    if (payload && s_goes_inline(p, plen))
        return s_emit_inline(b, p, rid, hmsg ? zmq_msg_data(hmsg) : buf, hlen, hmsg, payload);
    if (zmq_send(b->router, rid->bytes, rid->len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        goto fail;
    /* Once the identity frame is accepted the rest of the message is too. */
    if ((hmsg ? zmq_msg_send(hmsg, b->router, more) : zmq_send(b->router, buf, len, more)) < 0)
        goto fail;
    if (payload && zmq_msg_send(payload, b->router, 0) < 0)
        goto fail;
    s_sent(b, p, rid, hlen, plen, payload != NULL);
    return 0;
fail:
    s_send_failed(b, rid);
    return -1;
}

int ab_send_raw_peer(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *rid, const uint8_t *buf,
                     size_t len, zmq_msg_t *payload)
{
    return s_emit(b, p, rid, buf, len, NULL, payload);
}

int ab_send_try(ab_broker_t *b, const ab_rid_t *rid, zmq_msg_t *hdr, zmq_msg_t *body)
{
    ab_peer_t *p = ab_peer_lookup(b, rid);
    if (p && ab_peer_over(b, p)) { /* held back as if its pipe were full */
        errno = EAGAIN;
        return -1;
    }
    return s_emit(b, p, rid, NULL, 0, hdr, body);
}

int ab_header_msg(const ab_header_t *h, zmq_msg_t *out)
{
    uint8_t stack[512];
    size_t len;
    uint8_t *buf = ab_header_encode_buf(h, stack, sizeof stack, &len);
    if (!buf)
        return -1;
    int rc = zmq_msg_init_size(out, len);
    if (rc == 0)
        memcpy(zmq_msg_data(out), buf, len);
    if (buf != stack)
        free(buf);
    return rc == 0 ? 0 : -1;
}

/* s_send once the header is encoded (BUF, LEN). */
static int s_send_encoded(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *rid, const uint8_t *buf,
                          size_t len, zmq_msg_t *payload)
{
    if (p && ab_peer_beyond(b, p))
        return -1; /* counted; P is disconnected at the end of the turn */
    if (p && b->cfg->batch && (p->features & AB_FEATURE_BATCH))
        return ab_batching_send(b, p, buf, len, payload);
    return ab_send_raw_peer(b, p, rid, buf, len, payload);
}

static int s_send(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *rid, const ab_header_t *h,
                  zmq_msg_t *payload);

void ab_answer_too_large_text(const ab_broker_t *b, const ab_peer_t *p, const ab_header_t *h,
                              size_t size, char *out, size_t cap)
{
    snprintf(out, cap,
             "the %s's payload of %llu bytes exceeds this client's max payload of %zu bytes "
             "(ab_options_set_max_payload; Hello.max_payload)",
             h->kind == AB_KIND_PARTIAL ? "streamed chunk" : "reply",
             (unsigned long long)ab_payload_size(h, size), ab_peer_max_payload(b, p));
}

/* An answer (REPLY, PARTIAL) H with a payload of SIZE bytes over P's max
 * payload would cut P's connection (past ZMQ_MAXMSGSIZE) or be dropped
 * unseen by its library: P gets ERROR(TOO_LARGE) for that call instead,
 * counted. A worker's answer is refused before this (request.c, which
 * also cancels the request at the worker); this catches every other
 * answer: the cache's, a late one, a control answer. 1 when it did. */
static int s_answer_over(ab_broker_t *b, ab_peer_t *p, const ab_header_t *h, size_t size)
{
    if (!p || (h->kind != AB_KIND_REPLY && h->kind != AB_KIND_PARTIAL) ||
        !ab_peer_over_max(b, p, h, size))
        return 0;
    char text[200];
    ab_answer_too_large_text(b, p, h, size, text, sizeof text);
    b->c.answers_too_large++;
    AB_COUNT_ERROR(b, AB_ERR_TOO_LARGE);
    ab_header_t e = ab_header_init(AB_KIND_ERROR);
    e.correlation_id = h->correlation_id;
    e.error_code = AB_ERR_TOO_LARGE;
    e.flags = AB_FLAG_OVER_MAX_PAYLOAD; /* the library: AB_EPAYLOADSIZE */
    e.error_text = ab_view_of(text);
    s_send(b, p, &p->rid, &e, NULL);
    return 1;
}

/* ab_send with the peer already found (P, or NULL: none has RID). */
static int s_send(ab_broker_t *b, ab_peer_t *p, const ab_rid_t *rid, const ab_header_t *h,
                  zmq_msg_t *payload)
{
    if (payload && s_answer_over(b, p, h, zmq_msg_size(payload))) {
        zmq_msg_close(payload); /* consumed, as a send would have */
        zmq_msg_init(payload);
        return 0;
    }
    uint8_t stack[512];
    size_t len;
    uint8_t *buf = ab_header_encode_buf(h, stack, sizeof stack, &len);
    if (!buf)
        return -1;
    int rc = s_send_encoded(b, p, rid, buf, len, payload);
    if (buf != stack)
        free(buf);
    return rc;
}

int ab_send(ab_broker_t *b, const ab_rid_t *rid, const ab_header_t *h, zmq_msg_t *payload)
{
    return s_send(b, ab_peer_lookup(b, rid), rid, h, payload);
}

int ab_send_peer(ab_broker_t *b, ab_peer_t *p, const ab_header_t *h, zmq_msg_t *payload)
{
    return s_send(b, p, &p->rid, h, payload);
}

int ab_msg_of_bytes(zmq_msg_t *m, const void *data, size_t size)
{
    if (zmq_msg_init_size(m, size) != 0) {
        zmq_msg_init(m);
        return -1;
    }
    if (size)
        memcpy(zmq_msg_data(m), data, size);
    return 0;
}

int ab_send_peer_bytes(ab_broker_t *b, ab_peer_t *p, const ab_header_t *h, const void *data,
                       size_t size, int has)
{
    if (has && s_answer_over(b, p, h, size))
        return 0;
    uint8_t stack[512];
    size_t len;
    uint8_t *buf = ab_header_encode_buf(h, stack, sizeof stack, &len);
    if (!buf)
        return AB_ENOMEM;
    /* Into the peer's batch when it has one going (the common case under
     * load): the bytes are copied once, into the batch. */
    int rc = 1, batching = b->cfg->batch && (p->features & AB_FEATURE_BATCH);
    if (ab_peer_beyond(b, p))
        rc = -1; /* counted; P is disconnected at the end of the turn */
    else if (batching)
        rc = ab_batching_add_bytes(b, p, buf, len, data, size, has);
    /* Not gathered: a batching peer's batch decides (it may hold this one);
     * any other gets one frame straight from the bytes when it reads
     * inline (as s_emit would make it, with no message between). */
    if (rc == 1 && !batching && has && s_goes_inline(p, size)) {
        rc = s_emit_one(b, p, &p->rid, buf, len, data, size);
    } else if (rc == 1) { /* not gathered: a message of its own, the usual way */
        zmq_msg_t m;
        if (has && ab_msg_of_bytes(&m, data, size) != 0) {
            rc = AB_ENOMEM;
        } else {
            rc = s_send_encoded(b, p, &p->rid, buf, len, has ? &m : NULL);
            if (has)
                zmq_msg_close(&m); /* sent: empty; refused: its bytes */
        }
    }
    if (buf != stack)
        free(buf);
    return rc;
}

int ab_send_error(ab_broker_t *b, const ab_rid_t *rid, uint64_t corr, uint32_t code,
                  const char *text)
{
    return ab_send_error_flags(b, rid, corr, code, 0, text);
}

int ab_send_error_flags(ab_broker_t *b, const ab_rid_t *rid, uint64_t corr, uint32_t code,
                        uint32_t flags, const char *text)
{
    ab_header_t h = ab_header_init(AB_KIND_ERROR);
    h.flags = flags;
    h.correlation_id = corr;
    h.error_code = code;
    h.error_text = ab_view_of(text);
    return ab_send(b, rid, &h, NULL);
}


size_t ab_recv_frames(void *sock, zmq_msg_t *f, size_t cap, size_t *kept, size_t *bytes)
{
    size_t n = 0, sum = 0;
    int more = 1;
    while (more) {
        zmq_msg_t *m = &f[n < cap ? n : cap - 1];
        if (n >= cap)
            zmq_msg_close(m); /* frames past CAP: counted, discarded */
        zmq_msg_init(m);
        if (zmq_msg_recv(m, sock, n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            zmq_msg_close(m); /* none waits (n == 0); later frames cannot */
            break;            /* fail: ZeroMQ delivers multipart atomically */
        }
        sum += zmq_msg_size(m);
        more = zmq_msg_more(m);
        n++;
    }
    *kept = n < cap ? n : cap;
    if (bytes)
        *bytes = sum;
    return n;
}
