/*
 * gw_conns.c - the header and body deadlines: connections waiting for a
 * request's headers, and requests whose body is coming, oldest first, shut
 * down when they wait past --header-timeout-ms or --body-timeout-ms
 * (gw_conns.h says why and how it stays safe across threads); answers
 * whose client does not take them, cut at --send-timeout-ms; the
 * eviction of one of these at --max-connections for a new connection;
 * and, with --threads 0, the connections open per client address
 * (--max-connections-per-ip).
 */
#include "gw_conns.h"
#include "gw_mhdlog.h"
#include "tl_clock.h"

#include <netinet/in.h> /* IPPROTO_TCP */
#include <linux/tcp.h> /* tcp_info with tcpi_bytes_received (glibc's lacks it) */
#include <stdlib.h>
#include <linux/sockios.h> /* SIOCOUTQ */
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>

/* One connection (libmicrohttpd's socket context). */
typedef struct {
    ab_list_t link;      /* on gw_conns_t.waiting while waiting for headers, on
                          * gw_conns_t.body while its request's body comes, on
                          * gw_conns_t.sending while its answer goes out */
    int fd;
    struct MHD_Daemon *daemon; /* the shard it is on */
    uint64_t since_us;   /* when it started waiting (for headers or the body), or its
                          * answer's last check */
    uint64_t target;     /* sending: bytes the client must have acknowledged by the
                          * next check (what was sent or queued at the last) */
    uint64_t rx_bytes;   /* bytes received by then (idle vs partial) */
    uint64_t probe_us;   /* sending: when it was last sampled for gw_conns_evict (0:
                          * never, since its answer was queued) */
    uint64_t probe_target; /* bytes it must have acknowledged for that sample to pass */
    int reaped;          /* shut down: counted, waits for libmicrohttpd to close it */
    int ip_counted;      /* counted in gw_conns_t's per-address table under ADDR */
    uint32_t addr;       /* the client's IPv4 address (network order) */
} s_sock_t;

void gw_conns_init(gw_conns_t *t, unsigned ms, unsigned body_ms, unsigned send_ms)
{
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->wake, NULL);
    ab_list_init(&t->waiting);
    ab_list_init(&t->body);
    ab_list_init(&t->sending);
    t->deadline_us = (uint64_t)ms * 1000;
    t->body_deadline_us = (uint64_t)body_ms * 1000;
    t->send_deadline_us = (uint64_t)send_ms * 1000;
}

/* Whether any deadline is on. */
static int s_deadlines(const gw_conns_t *t)
{
    return t->deadline_us || t->body_deadline_us || t->send_deadline_us;
}

/* Whether connections are tracked: a deadline or the per-address limit. */
static int s_on(const gw_conns_t *t)
{
    return s_deadlines(t) || t->per_ip;
}

/* --- connections per client address ------------------------------------------- */
static unsigned s_ip_home(const gw_conns_t *t, uint32_t a)
{
    return (a * 2654435761u) & (t->ip_cap - 1);
}

/* The slot of A, or the free slot where it would go (caller holds the
 * lock; the table is never more than half full). */
static unsigned s_ip_slot(const gw_conns_t *t, uint32_t a)
{
    unsigned i = s_ip_home(t, a);
    while (t->ip_n[i] && t->ip_addr[i] != a)
        i = (i + 1) & (t->ip_cap - 1);
    return i;
}

/* One connection less from A (caller holds the lock). A slot freed is
 * filled by the next entries of its run that may move back (backward
 * shift), so every lookup still finds its entry before a free slot. */
static void s_ip_drop(gw_conns_t *t, uint32_t a)
{
    unsigned m = t->ip_cap - 1, i = s_ip_slot(t, a);
    if (!t->ip_n[i] || --t->ip_n[i])
        return;
    for (unsigned j = (i + 1) & m; t->ip_n[j]; j = (j + 1) & m) {
        /* the entry at J may move to I if I is on its way from home to J */
        if (((j - s_ip_home(t, t->ip_addr[j])) & m) >= ((j - i) & m)) {
            t->ip_addr[i] = t->ip_addr[j];
            t->ip_n[i] = t->ip_n[j];
            t->ip_n[j] = 0;
            i = j;
        }
    }
}

int gw_conns_limit_per_ip(gw_conns_t *t, unsigned per_ip, unsigned max_conns)
{
    unsigned cap = 16;
    while (cap < 2u * max_conns + 2u * 64) /* the shards may take a few more than the max */
        cap *= 2;
    t->ip_addr = calloc(cap, sizeof *t->ip_addr);
    t->ip_n = calloc(cap, sizeof *t->ip_n);
    if (!t->ip_addr || !t->ip_n) {
        free(t->ip_addr);
        free(t->ip_n);
        t->ip_addr = NULL;
        t->ip_n = NULL;
        return -1;
    }
    t->ip_cap = cap;
    t->per_ip = per_ip;
    return 0;
}

/* One connection more from A (caller holds the lock). */
static void s_ip_add(gw_conns_t *t, uint32_t a)
{
    unsigned i = s_ip_slot(t, a);
    t->ip_addr[i] = a;
    t->ip_n[i]++;
}

unsigned gw_conns_ip_count(gw_conns_t *t, uint32_t addr)
{
    if (!t->per_ip)
        return 0;
    pthread_mutex_lock(&t->lock);
    unsigned n = t->ip_n[s_ip_slot(t, addr)];
    pthread_mutex_unlock(&t->lock);
    return n;
}

int gw_conns_ip_full(gw_conns_t *t, uint32_t addr)
{
    return t->per_ip && gw_conns_ip_count(t, addr) >= t->per_ip;
}

void gw_conns_ip_add(gw_conns_t *t, uint32_t addr)
{
    pthread_mutex_lock(&t->lock);
    s_ip_add(t, addr);
    pthread_mutex_unlock(&t->lock);
}

void gw_conns_ip_drop(gw_conns_t *t, uint32_t addr)
{
    pthread_mutex_lock(&t->lock);
    s_ip_drop(t, addr);
    pthread_mutex_unlock(&t->lock);
}

void gw_conns_stop_thread(gw_conns_t *t)
{
    if (!t->running)
        return;
    pthread_mutex_lock(&t->lock);
    t->stop = 1;
    pthread_cond_signal(&t->wake);
    pthread_mutex_unlock(&t->lock);
    pthread_join(t->thread, NULL);
    t->running = 0;
}

void gw_conns_destroy(gw_conns_t *t)
{
    gw_conns_stop_thread(t);
    free(t->ip_addr);
    free(t->ip_n);
    pthread_cond_destroy(&t->wake);
    pthread_mutex_destroy(&t->lock);
}

/* Bytes the kernel has received on FD (0 if it cannot say). */
static uint64_t s_rx_bytes(int fd)
{
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    memset(&ti, 0, sizeof ti);
    if (fd < 0 || getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 ||
        len < offsetof(struct tcp_info, tcpi_bytes_received) + sizeof ti.tcpi_bytes_received)
        return 0;
    return ti.tcpi_bytes_received;
}

/* Bytes FD's peer has acknowledged, and bytes in FD's send queue (not
 * sent, or sent and not acknowledged): what the kernel still holds for
 * it. 0, or -1 if the kernel cannot say. */
static int s_tx_bytes(int fd, uint64_t *acked, uint64_t *queued)
{
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    int outq = 0;
    memset(&ti, 0, sizeof ti);
    if (fd < 0 || getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 ||
        len < offsetof(struct tcp_info, tcpi_bytes_acked) + sizeof ti.tcpi_bytes_acked ||
        ioctl(fd, SIOCOUTQ, &outq) != 0 || outq < 0)
        return -1;
    *acked = ti.tcpi_bytes_acked;
    *queued = (uint64_t)outq;
    return 0;
}

static s_sock_t *s_sock(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* S starts waiting for headers now (caller holds the lock); off every
 * list when there is no header deadline. */
static void s_wait(gw_conns_t *t, s_sock_t *s, uint64_t rx)
{
    ab_list_remove(&s->link);
    s->since_us = tl_now_us();
    s->rx_bytes = rx;
    if (t->deadline_us)
        ab_list_insert_tail(&t->waiting, &s->link);
}

void gw_conns_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                     enum MHD_ConnectionNotificationCode toe)
{
    gw_conns_t *t = cls;
    if (!s_on(t))
        return;
    s_sock_t *s = *socket_context;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        s = calloc(1, sizeof *s);
        if (!s)
            return; /* not watched: libmicrohttpd's idle timeout still applies */
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        s->fd = ci ? ci->connect_fd : -1;
        ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_DAEMON);
        s->daemon = ci ? ci->daemon : NULL;
        ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        if (t->per_ip && ci && ci->client_addr && ci->client_addr->sa_family == AF_INET) {
            s->addr = ((const struct sockaddr_in *)(const void *)ci->client_addr)->sin_addr.s_addr;
            s->ip_counted = 1;
        }
        *socket_context = s;
        pthread_mutex_lock(&t->lock);
        s_wait(t, s, 0); /* a new connection: any byte received is a request's */
        t->n_conns++;
        if (s->ip_counted)
            s_ip_add(t, s->addr);
        pthread_mutex_unlock(&t->lock);
    } else if (s) {
        pthread_mutex_lock(&t->lock);
        ab_list_remove(&s->link);
        t->n_conns--;
        if (s->ip_counted)
            s_ip_drop(t, s->addr);
        pthread_mutex_unlock(&t->lock);
        *socket_context = NULL;
        free(s);
    }
}

void gw_conns_headers_done(gw_conns_t *t, struct MHD_Connection *conn)
{
    s_sock_t *s = s_on(t) ? s_sock(conn) : NULL;
    if (!s)
        return;
    pthread_mutex_lock(&t->lock);
    ab_list_remove(&s->link);
    if (t->body_deadline_us && !s->reaped) { /* a reaped one is closing */
        s->since_us = tl_now_us();
        ab_list_insert_tail(&t->body, &s->link);
    }
    pthread_mutex_unlock(&t->lock);
}

void gw_conns_body_done(gw_conns_t *t, struct MHD_Connection *conn)
{
    s_sock_t *s = t->body_deadline_us ? s_sock(conn) : NULL;
    if (!s)
        return;
    pthread_mutex_lock(&t->lock);
    ab_list_remove(&s->link);
    pthread_mutex_unlock(&t->lock);
}

void gw_conns_reply_started(gw_conns_t *t, struct MHD_Connection *conn)
{
    s_sock_t *s = t->send_deadline_us ? s_sock(conn) : NULL;
    if (!s)
        return;
    pthread_mutex_lock(&t->lock);
    ab_list_remove(&s->link);
    if (!s->reaped) { /* a reaped one is closing */
        s->since_us = tl_now_us();
        s->target = 0; /* nothing sent yet: the first check passes and starts the count */
        s->probe_us = 0;
        ab_list_insert_tail(&t->sending, &s->link);
    }
    pthread_mutex_unlock(&t->lock);
}

void gw_conns_request_done(gw_conns_t *t, struct MHD_Connection *conn)
{
    s_sock_t *s = s_on(t) ? s_sock(conn) : NULL;
    if (!s)
        return;
    uint64_t rx = t->deadline_us ? s_rx_bytes(s->fd) : 0; /* outside the lock: a system call */
    pthread_mutex_lock(&t->lock);
    if (!s->reaped) /* a reaped one is closing: it waits for nothing */
        s_wait(t, s, rx);
    pthread_mutex_unlock(&t->lock);
}

/* Takes S off its list and shuts it down, counted in COUNTER (caller
 * holds the lock). libmicrohttpd reads the end of the socket and closes it
 * on its own thread (for a request past its headers, after its completion
 * hook, which releases its --max-in-flight slot); the fd is still open
 * here: its CLOSED notification, which comes before the close, waits for
 * this lock. */
static void s_shut(s_sock_t *s, atomic_ullong *counter)
{
    ab_list_remove(&s->link);
    s->reaped = 1;
    atomic_fetch_add(counter, 1);
    shutdown(s->fd, SHUT_RDWR);
}

/* Shuts down the connections on LIST (T's waiting or body list) that have
 * waited DEADLINE_US by NOW_US, oldest first (caller holds the lock);
 * *CUT counts them. Returns the ms until the next is due (-1: none). */
static int s_reap_list(gw_conns_t *t, ab_list_t *list, uint64_t deadline_us, uint64_t now_us,
                       unsigned *cut)
{
    ab_list_t *n;
    while ((n = ab_list_first(list))) {
        s_sock_t *s = ab_list_data(n, s_sock_t, link);
        uint64_t due = s->since_us + deadline_us;
        if (due > now_us) /* the oldest is not due: none is */
            return (int)((due - now_us + 999) / 1000);
        if (list == &t->body)
            s_shut(s, &t->body_timeouts);
        else
            s_shut(s, &t->timeouts[s_rx_bytes(s->fd) > s->rx_bytes ? GW_HT_PARTIAL : GW_HT_IDLE]);
        (*cut)++;
    }
    return -1;
}

/* Checks the answers on T's sending list whose check is due by NOW_US,
 * oldest first (caller holds the lock): one whose client acknowledged
 * every byte the last check saw sent or queued for it is checked again a
 * deadline later, against what is sent or queued now; one that did not
 * is shut down, its send queue dropped (SO_LINGER 0: the close resets the
 * connection instead of keeping the bytes for a client that does not take
 * them); *CUT counts them. A socket the kernel says nothing of is never
 * cut. Returns the ms until the next check (-1: none). */
static int s_reap_sending(gw_conns_t *t, uint64_t now_us, unsigned *cut)
{
    ab_list_t *n;
    while ((n = ab_list_first(&t->sending))) {
        s_sock_t *s = ab_list_data(n, s_sock_t, link);
        uint64_t due = s->since_us + t->send_deadline_us;
        if (due > now_us)
            return (int)((due - now_us + 999) / 1000);
        uint64_t acked = 0, queued = 0;
        int known = s_tx_bytes(s->fd, &acked, &queued) == 0;
        if (!known || acked >= s->target) {
            ab_list_remove(&s->link);
            s->since_us = now_us;
            s->target = known ? acked + queued : 0;
            ab_list_insert_tail(&t->sending, &s->link);
            continue;
        }
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        s_shut(s, &t->send_timeouts);
        (*cut)++;
    }
    return -1;
}

/* The smaller of two waits in ms, -1 being none. */
static int s_sooner(int a, int b)
{
    return a < 0 || (b >= 0 && b < a) ? b : a;
}

/* Samples S's socket for gw_conns_evict at NOW_US, unless a sample of it
 * stands that its client has not passed (caller holds the lock): the bytes
 * sent or queued for it now must be acknowledged for the next sample to be
 * taken. Returns 1 if such a sample stands (taken at S->probe_us), 0 if one
 * was taken now, -1 if the kernel says nothing of S (never cut). */
static int s_probe(s_sock_t *s, uint64_t now_us)
{
    uint64_t acked, queued;
    if (s_tx_bytes(s->fd, &acked, &queued) != 0)
        return -1;
    if (s->probe_us && acked < s->probe_target)
        return 1;
    s->probe_us = now_us;
    s->probe_target = acked + queued;
    return 0;
}

/* Samples the answers going out every GW_PROBE_MS (caller holds the lock),
 * the first GW_EVICT_SCAN of T's sending list, those gw_conns_evict looks
 * at: a reader that stopped reading is sampled within GW_PROBE_MS, so a
 * new connection that comes at the cap GW_EVICT_MIN_MS later can evict it
 * at once. Sampled only at the cap, the first connection to come there
 * was refused (or, --threads N, kept waiting) for a GW_EVICT_MIN_MS while
 * the sample aged. Nothing to do, and no wake-up, with no answer going
 * out. Returns the ms until the next sampling (-1: none). */
static int s_probe_sending(gw_conns_t *t, uint64_t now_us)
{
    if (ab_list_empty(&t->sending))
        return -1;
    if (now_us < t->probe_due_us)
        return (int)((t->probe_due_us - now_us + 999) / 1000);
    t->probe_due_us = now_us + GW_PROBE_MS * 1000ull;
    unsigned n = 0;
    for (ab_list_t *l = ab_list_first(&t->sending); l && n < GW_EVICT_SCAN;
         l = ab_list_next(&t->sending, l), n++)
        s_probe(ab_list_data(l, s_sock_t, link), now_us);
    return GW_PROBE_MS;
}

int gw_conns_reap(gw_conns_t *t, uint64_t now_us)
{
    if (!s_deadlines(t))
        return -1;
    unsigned heads = 0, bodies = 0, sends = 0;
    pthread_mutex_lock(&t->lock);
    int next = s_reap_list(t, &t->waiting, t->deadline_us, now_us, &heads);
    next = s_sooner(next, s_reap_list(t, &t->body, t->body_deadline_us, now_us, &bodies));
    next = s_sooner(next, s_reap_sending(t, now_us, &sends));
    next = s_sooner(next, s_probe_sending(t, now_us));
    pthread_mutex_unlock(&t->lock);
    /* Any client can make these: rate limited (outside the lock: a write). */
    if (bodies)
        gw_log_limited("%u connection%s closed: request body not complete %llu ms after its "
                       "headers (--body-timeout-ms)", bodies, bodies == 1 ? "" : "s",
                       (unsigned long long)(t->body_deadline_us / 1000));
    if (sends)
        gw_log_limited("%u connection%s closed: the client did not take its answer, bytes "
                       "sent to it were not acknowledged within %llu ms (--send-timeout-ms)",
                       sends, sends == 1 ? "" : "s",
                       (unsigned long long)(t->send_deadline_us / 1000));
    return next;
}

/* The first connection on LIST if it has waited MIN_WAIT_US by NOW_US
 * (caller holds the lock), else NULL. */
static s_sock_t *s_oldest(ab_list_t *list, uint64_t now_us, uint64_t min_wait_us)
{
    ab_list_t *n = ab_list_first(list);
    s_sock_t *s = n ? ab_list_data(n, s_sock_t, link) : NULL;
    return s && s->since_us + min_wait_us <= now_us ? s : NULL;
}

/* An answer on T's sending list whose client has not taken, MIN_WAIT_US
 * or more after a sample, the bytes that sample saw sent or queued for it
 * (the send deadline's test, with MIN_WAIT_US for the deadline), or NULL
 * (caller holds the lock). The samples are taken ahead, by gw_conns_reap
 * (s_probe_sending); one passed since is taken again here. At most
 * GW_EVICT_SCAN answers are looked at (two system calls each), those
 * checked by the send deadline longest ago: this runs for every
 * connection that arrives at the cap. */
static s_sock_t *s_stuck_reader(gw_conns_t *t, uint64_t now_us, uint64_t min_wait_us)
{
    unsigned n = 0;
    for (ab_list_t *l = ab_list_first(&t->sending); l && n < GW_EVICT_SCAN;
         l = ab_list_next(&t->sending, l), n++) {
        s_sock_t *s = ab_list_data(l, s_sock_t, link);
        if (s_probe(s, now_us) == 1 && s->probe_us + min_wait_us <= now_us)
            return s;
    }
    return NULL;
}

/* Why gw_conns_evict shut a connection down (what it says on stderr). */
static const char *const s_evict_why[] = {
    NULL, /* headers: not said (a client that sends none may be a mere idle socket) */
    "its request body was still coming",
    "its client did not take its answer, bytes sent to it were not acknowledged",
};

struct MHD_Daemon *gw_conns_evict(gw_conns_t *t, uint64_t now_us, uint64_t min_wait_us)
{
    if (!s_deadlines(t))
        return NULL;
    struct MHD_Daemon *d = NULL;
    int why = 0;
    pthread_mutex_lock(&t->lock);
    /* Headers first: a request whose body comes has at least sent those;
     * then bodies, which hold no answer yet; then answers not taken. */
    s_sock_t *s = s_oldest(&t->waiting, now_us, min_wait_us);
    if (s) {
        d = s->daemon;
        s_shut(s, &t->timeouts[GW_HT_EVICTED]);
    } else if ((s = s_oldest(&t->body, now_us, min_wait_us))) {
        d = s->daemon;
        s_shut(s, &t->body_evictions);
        why = 1;
    } else if ((s = s_stuck_reader(t, now_us, min_wait_us))) {
        d = s->daemon;
        /* its queue dropped, as at the send deadline */
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        s_shut(s, &t->reader_evictions);
        why = 2;
    }
    pthread_mutex_unlock(&t->lock);
    if (why) /* any client can make these: rate limited (outside the lock: a write) */
        gw_log_limited("a connection closed at --max-connections for a new one: %s %llu ms "
                       "or more after %s", s_evict_why[why],
                       (unsigned long long)(min_wait_us / 1000),
                       why == 1 ? "its headers" : "they were seen queued");
    return d;
}

/* Whether every connection is taken and more wait to be accepted (for a
 * listening socket TCP_INFO's tcpi_unacked is its accept queue). */
static int s_at_cap(gw_conns_t *t)
{
    pthread_mutex_lock(&t->lock);
    int full = t->n_conns >= t->limit;
    pthread_mutex_unlock(&t->lock);
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    return full && getsockopt(t->lfd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 &&
           ti.tcpi_unacked > 0;
}

static void *s_thread(void *arg)
{
    gw_conns_t *t = arg;
    pthread_mutex_lock(&t->lock);
    while (!t->stop) {
        pthread_mutex_unlock(&t->lock);
        uint64_t now = tl_now_us();
        int next = gw_conns_reap(t, now);
        if (s_at_cap(t) && gw_conns_evict(t, now, GW_EVICT_MIN_MS * 1000ull))
            next = 10; /* libmicrohttpd takes the next one once that one is closed */
        pthread_mutex_lock(&t->lock);
        long ms = next < 0 || next > 100 ? 100 : next < 5 ? 5 : next;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += ms * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        if (!t->stop)
            pthread_cond_timedwait(&t->wake, &t->lock, &ts);
    }
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

int gw_conns_start_thread(gw_conns_t *t, int lfd, unsigned limit)
{
    if (!s_deadlines(t))
        return 0;
    t->lfd = lfd;
    t->limit = limit;
    if (pthread_create(&t->thread, NULL, s_thread, t) != 0)
        return -1;
    t->running = 1;
    return 0;
}
