/*
 * link_out.c - the bound on what a link's dialed connection holds for its
 * peer (see link_int.h). A peer broker that stops reading while it still
 * sends its heartbeats (a hostile one with a broker key, or one whose
 * loop only answers) kept the link up while everything sent to it piled
 * up in libzmq's pipe: bounded by sndhwm in messages only, so a gigabyte
 * of publications in seconds. The connection is held to the bound every
 * other connection is held to (peer-out-max-bytes, peer-stall-ms;
 * docs/limits.md), measured the same way: by what the peer's TCP stack
 * acknowledged, never by anything the peer says. The connection's fd comes
 * from the dealer's monitor (CONNECTED); its inode is kept with it, so a
 * number the kernel gives to another socket later is not asked
 * (ab_router_fd_inode). (One given away before the event was read would
 * be, until the DISCONNECTED event that follows resets the figures.) Over
 * ipc, or whatever is not TCP, the dialed connection is bounded by sndhwm
 * only, as a ROUTER peer the kernel cannot tell of.
 */
#define AB_LOG_SUBSYS "link" /* log.h: the subsystem in log lines */
#include "link_int.h"
#include "router.h"
#include "util.h"

void ab_link_out_start(ab_link_t *l, int fd)
{
    struct ab_link_out *o = &l->dout;
    *o = (struct ab_link_out){.fd = fd};
    if (fd < 0 || ab_router_tcp_acked(fd, &o->base) != 0)
        return; /* not TCP: bounded by sndhwm only (above) */
    o->ino = ab_router_fd_inode(fd);
}

/* Asks the kernel what the peer took; nothing changes when the fd is no
 * longer the connection's (closed, or another socket with its number). */
static void s_refresh(struct ab_link_out *o)
{
    uint64_t acked;
    o->checked_ms = ab_now_ms();
    if (!o->ino || ab_router_fd_inode(o->fd) != o->ino || ab_router_tcp_acked(o->fd, &acked))
        return;
    uint64_t taken = acked - o->base; /* + pings: a few bytes */
    if (taken > o->sent)
        taken = o->sent;
    if (taken > o->taken)
        o->taken = taken;
}

/* L's peer does not take what it is sent: the link goes down next turn. */
static void s_slow(ab_link_t *l)
{
    if (!l->broken)
        l->slow_bytes = l->dout.sent - l->dout.taken;
    l->broken = 1;
}

int ab_link_out_admit(ab_broker_t *b, ab_link_t *l, size_t hlen, size_t plen, int has)
{
    struct ab_link_out *o = &l->dout;
    uint64_t bound = (uint64_t)b->cfg->peer_out_max_bytes;
    if (bound && o->ino && o->sent - o->taken > 2 * bound) {
        s_refresh(o);
        if (o->sent - o->taken > 2 * bound) {
            b->c.out_dropped++;
            s_slow(l);
            return -1;
        }
    }
    o->sent += ab_router_wire(hlen) + (has ? ab_router_wire(plen) : 0);
    return 0;
}

/* Once over, it must take half the bound to be under again: one that does
 * not read cannot hover just under it (as router.c's s_level). */
static uint64_t s_level(const struct ab_link_out *o, uint64_t bound)
{
    return o->over_ms ? bound / 2 : bound;
}

int ab_link_out_over(ab_broker_t *b, ab_link_t *l)
{
    struct ab_link_out *o = &l->dout;
    uint64_t bound = (uint64_t)b->cfg->peer_out_max_bytes;
    if (!bound || !o->ino || o->sent - o->taken <= s_level(o, bound))
        return 0;
    int64_t now = ab_now_ms();
    if (!o->over_ms || now - o->checked_ms >= 10)
        s_refresh(o);
    if (o->sent - o->taken <= s_level(o, bound))
        return 0;
    if (!o->over_ms)
        o->over_ms = now;
    return 1;
}

void ab_link_out_tick(ab_broker_t *b, ab_link_t *l, int64_t now)
{
    struct ab_link_out *o = &l->dout;
    uint64_t bound = (uint64_t)b->cfg->peer_out_max_bytes;
    if (!bound || !o->ino || l->broken)
        return;
    s_refresh(o);
    if (o->sent - o->taken <= s_level(o, bound)) {
        o->over_ms = 0;
    } else if (!o->over_ms) {
        o->over_ms = now;
    } else if (now - o->over_ms >= b->cfg->peer_stall_ms) {
        s_slow(l);
    }
}
