/*
 * gw_shards.c - --threads 0: libmicrohttpd daemons of at most
 * GW_SHARD_CONNS connections each, run on the bus thread, with the
 * gateway accepting the connections itself and handing each to a shard
 * with room (evicting a connection slow with its headers, its body or
 * taking its answer, when all are full).
 */
#include "gw_http.h"
#include "tl_clock.h"

#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

/* One shard's work. A resumed connection is ready inside libmicrohttpd
 * without making its epoll fd readable, so run while it says work is due
 * now; returns the ms until it wants to run again (-1: only when its fd is
 * readable). */
static int s_run_shard(struct MHD_Daemon *d)
{
    MHD_UNSIGNED_LONG_LONG to = 0;
    for (int i = 0; i < 8; i++) {
        MHD_run(d);
        if (MHD_get_timeout(d, &to) != MHD_YES)
            return -1;
        if (to > 0)
            break;
    }
    return to > 1000 ? 1000 : (int)to;
}

/* Every shard is full: the connection waiting longest for its headers (or
 * else its body, or else one whose client does not take its answer) is
 * shut down and its shard run, so its slot is free for a new one
 * (gw_conns_evict). Returns that shard, or G->n_mhd if none has room. */
static unsigned s_evict(gw_t *g)
{
    struct MHD_Daemon *d = gw_conns_evict(&g->conns, tl_now_us(), GW_EVICT_MIN_MS * 1000ull);
    for (unsigned s = 0; d && s < g->n_mhd; s++) {
        if (g->mhd[s] != d)
            continue;
        s_run_shard(d); /* reads the end of the socket and closes it */
        const union MHD_DaemonInfo *di =
            MHD_get_daemon_info(d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
        return di && di->num_connections < g->per_shard ? s : g->n_mhd;
    }
    return g->n_mhd;
}

/* New connections (--threads 0), each handed to a shard with room, round
 * robin; returns the shards that got one. The gateway accepts them itself
 * because the shards sharing the listening socket were all woken by each
 * new connection, and each then tried accept() in vain: 64 shards (at
 * --max-connections 8192 and more) made that most of a short call's cost
 * under load. At most 256 a turn (the socket is level-triggered: the rest
 * come next turn), so answers to calls in flight are not held behind a
 * flood of new ones. With every shard full the connection is closed, as
 * libmicrohttpd did at its limit. */
static uint64_t s_accept(gw_t *g)
{
    uint64_t got = 0;
    for (int i = 0, shed = 0; i < 256 && shed < 4096; i++) {
        struct sockaddr_in sa;
        socklen_t len = sizeof sa;
        int fd = accept4(g->lfd, (struct sockaddr *)&sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            break;
        if (gw_intake_shed_early(g, fd)) {
            i--, shed++; /* refusals are cheap: they do not take the turn's budget */
            continue;
        }
        if (gw_conns_ip_full(&g->conns, sa.sin_addr.s_addr)) {
            gw_refuse_per_ip(g, &sa); /* closed before its shard sees it, nothing read */
            close(fd);
            i--, shed++;
            continue;
        }
        unsigned s = g->next_shard, k = 0;
        for (; k < g->n_mhd; k++, s = (s + 1) % g->n_mhd) {
            const union MHD_DaemonInfo *di =
                MHD_get_daemon_info(g->mhd[s], MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
            if (di && di->num_connections < g->per_shard)
                break;
        }
        if (k == g->n_mhd && (s = s_evict(g)) == g->n_mhd) {
            close(fd);
            continue;
        }
        g->next_shard = (s + 1) % g->n_mhd;
        if (MHD_add_connection(g->mhd[s], fd, (struct sockaddr *)&sa, len) == MHD_YES)
            got |= 1ULL << s; /* it closed FD otherwise */
    }
    return got;
}

/* libmicrohttpd's work, on the bus thread (--threads 0): the shards whose
 * epoll fd is readable, that had a connection resumed or added, or whose
 * timers are due; the others are not touched. Returns the ms until one
 * wants to run again (-1: none until I/O). */
int gw_shards_run(void *arg)
{
    gw_t *g = arg;
    struct epoll_event ev[GW_MAX_SHARDS + 1];
    int n = epoll_wait(g->ep_fd, ev, GW_MAX_SHARDS + 1, 0);
    uint64_t run = atomic_exchange(&g->resumed, 0);
    for (int i = 0; i < n; i++)
        run |= ev[i].data.u32 == GW_MAX_SHARDS ? s_accept(g) : 1ULL << ev[i].data.u32;
    uint64_t now = tl_now_us();
    int wait = gw_conns_reap(&g->conns, now); /* the sockets it shuts down wake their shard */
    for (unsigned s = 0; s < g->n_mhd; s++) {
        if ((run >> s & 1) || g->due_us[s] <= now) {
            int to = s_run_shard(g->mhd[s]);
            g->due_us[s] = to < 0 ? UINT64_MAX : now + (uint64_t)to * 1000;
        }
        if (g->due_us[s] != UINT64_MAX) {
            uint64_t left = g->due_us[s] > now ? (g->due_us[s] - now + 999) / 1000 : 0;
            if (wait < 0 || left < (uint64_t)wait)
                wait = (int)left;
        }
    }
    return wait;
}

/* --threads 0: the shards, their epoll fds and the listening socket LFD
 * (taken) in G->ep_fd for the bus thread. */
int gw_shards_start(gw_t *g, unsigned flags, int lfd)
{
    unsigned max = g->cfg.max_connections;
    unsigned k = (max + GW_SHARD_CONNS - 1) / GW_SHARD_CONNS;
    if (k > GW_MAX_SHARDS)
        k = GW_MAX_SHARDS;
    g->per_shard = (max + k - 1) / k;
    g->lfd = lfd;
    g->ep_fd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.u32 = GW_MAX_SHARDS};
    if (g->ep_fd < 0 || epoll_ctl(g->ep_fd, EPOLL_CTL_ADD, lfd, &lev) != 0)
        return -1;
    for (unsigned s = 0; s < k; s++) {
        struct MHD_Daemon *d = gw_http_daemon(g, flags, -1, g->per_shard);
        if (!d)
            return -1;
        g->mhd[g->n_mhd++] = d;
        g->due_us[s] = 0; /* run once at the first turn */
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_EPOLL_FD);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = s};
        if (!di || di->epoll_fd < 0 || epoll_ctl(g->ep_fd, EPOLL_CTL_ADD, di->epoll_fd, &ev) != 0)
            return -1;
    }
    return 0;
}
