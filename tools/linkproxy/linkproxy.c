/*
 * ab-linkproxy-c: the userspace TCP proxy of the link tests
 * (tests/integration/linkproxy.py) in C, for the link bench
 * (bench/links_bench.sh): the python one costs more per chunk than the
 * brokers do per message, so a throughput measured through it would be the
 * proxy's. Same command line, same signals, same "ready" line:
 *
 *   ab-linkproxy-c LISTEN_PORT [TARGET_HOST:]TARGET_PORT [DELAY_MS]
 *
 * Listens on 127.0.0.1:LISTEN_PORT and joins each connection to
 * TARGET_HOST (default 127.0.0.1):TARGET_PORT, holding every chunk
 * DELAY_MS (default 0) each way.
 *   SIGUSR1  cut: close every connection, and each new one at once
 *   SIGUSR2  stall: keep the connections, deliver nothing either way
 *   SIGHUP   restore: deliver again (held bytes go on, in order), accept again
 *   SIGTERM, SIGINT  close everything and exit 0
 *
 * One thread, epoll, non-blocking sockets. Each direction holds at most
 * S_CAP bytes: past that the proxy stops reading that side (TCP pushes back
 * on the sender), so a stalled link costs bounded memory.
 */
#include "parse.h"
#include "tl_args.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { S_CAP = 4 << 20, S_READ = 64 << 10, S_MAX_PAIRS = 256 };

typedef struct s_chunk {
    struct s_chunk *next;
    uint64_t due_ns; /* arrival + delay */
    size_t len, off;
    char data[];
} s_chunk_t;

typedef struct {
    s_chunk_t *head, *tail;
    size_t bytes;
    int eof;      /* the source said EOF: close the pair once drained */
    int want_out; /* the destination said EAGAIN: wait for EPOLLOUT */
} s_dir_t;

struct s_pair;
typedef struct {
    struct s_pair *pair;
    int fd, side;    /* side 0: the accepted client, 1: the target */
    uint32_t events; /* registered with epoll */
    int gone;        /* hung up: out of epoll, its reads are over */
} s_end_t;

typedef struct s_pair {
    struct s_pair *next;
    s_end_t end[2];
    s_dir_t dir[2]; /* dir[i]: bytes read from end[i], written to end[1 - i] */
    int connected;  /* the target connection is up */
    int dead;
} s_pair_t;

static int s_ep, s_cut, s_stalled, s_npairs;
static uint64_t s_delay_ns;
static s_pair_t *s_pairs;
static struct sockaddr_in s_target;

static uint64_t s_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void s_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Registers what END needs now: reading while its direction has room,
 * writing while the target connects or a write was refused. */
static void s_interest(s_end_t *e)
{
    s_pair_t *p = e->pair;
    s_dir_t *in = &p->dir[e->side], *out = &p->dir[1 - e->side];
    uint32_t ev = 0;
    if (e->gone)
        return;
    if (in->bytes < S_CAP && !in->eof && (e->side == 0 || p->connected))
        ev |= EPOLLIN;
    if ((e->side == 1 && !p->connected) || out->want_out)
        ev |= EPOLLOUT;
    if (ev == e->events)
        return;
    struct epoll_event x = {.events = ev, .data.ptr = e};
    epoll_ctl(s_ep, EPOLL_CTL_MOD, e->fd, &x);
    e->events = ev;
}

static void s_close_pair(s_pair_t *p)
{
    if (p->dead)
        return;
    p->dead = 1;
    for (int i = 0; i < 2; i++) {
        close(p->end[i].fd);
        for (s_chunk_t *c = p->dir[i].head, *n; c; c = n) {
            n = c->next;
            free(c);
        }
        p->dir[i] = (s_dir_t){0};
    }
}

/* Reads what END's socket holds into its direction, up to the bound. */
static void s_read(s_end_t *e)
{
    s_pair_t *p = e->pair;
    s_dir_t *d = &p->dir[e->side];
    static char buf[S_READ];
    while (d->bytes < S_CAP && !d->eof) {
        ssize_t n = read(e->fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0) { /* EOF or reset: deliver what is held, then close */
            d->eof = 1;
            break;
        }
        s_chunk_t *c = malloc(sizeof *c + (size_t)n);
        if (!c) {
            s_close_pair(p);
            return;
        }
        *c = (s_chunk_t){.due_ns = s_now() + s_delay_ns, .len = (size_t)n};
        memcpy(c->data, buf, (size_t)n);
        if (d->tail)
            d->tail->next = c;
        else
            d->head = c;
        d->tail = c;
        d->bytes += (size_t)n;
    }
}

/* Writes direction I's due chunks. Returns the nanoseconds until the next
 * chunk falls due, or UINT64_MAX when none waits on time. */
static uint64_t s_flush(s_pair_t *p, int i, uint64_t now)
{
    s_dir_t *d = &p->dir[i];
    int fd = p->end[1 - i].fd;
    while (d->head && !d->want_out && !s_stalled && p->connected) {
        s_chunk_t *c = d->head;
        if (c->due_ns > now)
            return c->due_ns - now;
        ssize_t n = write(fd, c->data + c->off, c->len - c->off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            d->want_out = 1;
            break;
        }
        if (n < 0) {
            s_close_pair(p);
            return UINT64_MAX;
        }
        c->off += (size_t)n;
        d->bytes -= (size_t)n;
        if (c->off == c->len) {
            d->head = c->next;
            if (!d->head)
                d->tail = NULL;
            free(c);
        }
    }
    if (d->eof && !d->head)
        s_close_pair(p);
    return UINT64_MAX;
}

static void s_accept(int lfd)
{
    for (;;) {
        int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c < 0)
            return;
        if (s_cut || s_npairs >= S_MAX_PAIRS) {
            close(c);
            continue;
        }
        int t = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (t < 0 || (connect(t, (struct sockaddr *)&s_target, sizeof s_target) < 0 &&
                      errno != EINPROGRESS)) {
            close(c);
            if (t >= 0)
                close(t);
            continue;
        }
        s_nodelay(c);
        s_nodelay(t);
        s_pair_t *p = calloc(1, sizeof *p);
        if (!p) {
            close(c);
            close(t);
            continue;
        }
        int fds[2] = {c, t};
        for (int i = 0; i < 2; i++) {
            p->end[i] = (s_end_t){.pair = p, .fd = fds[i], .side = i};
            struct epoll_event x = {.events = 0, .data.ptr = &p->end[i]};
            epoll_ctl(s_ep, EPOLL_CTL_ADD, fds[i], &x);
        }
        p->next = s_pairs;
        s_pairs = p;
        s_npairs++;
        s_interest(&p->end[0]);
        s_interest(&p->end[1]);
    }
}

static void s_event(s_end_t *e, uint32_t ev)
{
    s_pair_t *p = e->pair;
    if (p->dead)
        return;
    if (e->side == 1 && !p->connected && (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(e->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            s_close_pair(p);
            return;
        }
        p->connected = 1;
    }
    if (ev & EPOLLOUT)
        p->dir[1 - e->side].want_out = 0;
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))
        s_read(e);
    if ((ev & (EPOLLHUP | EPOLLERR)) && !p->dead && p->connected) {
        /* Reported whatever the interest: stop listening, or it spins. What
         * was read goes on; a write to this side fails and closes the pair. */
        p->dir[e->side].eof = 1;
        epoll_ctl(s_ep, EPOLL_CTL_DEL, e->fd, NULL);
        e->gone = 1;
    }
}

/* Flushes every pair, frees the closed ones, renews interests; returns the
 * epoll timeout in ms until the next delayed chunk falls due (-1: none). */
static int s_sweep(void)
{
    uint64_t now = s_now(), next = UINT64_MAX;
    for (s_pair_t **pp = &s_pairs; *pp;) {
        s_pair_t *p = *pp;
        for (int i = 0; i < 2 && !p->dead; i++) {
            uint64_t w = s_flush(p, i, now);
            next = w < next ? w : next;
        }
        if (p->dead) {
            *pp = p->next;
            free(p);
            s_npairs--;
            continue;
        }
        s_interest(&p->end[0]);
        s_interest(&p->end[1]);
        pp = &p->next;
    }
    return next == UINT64_MAX ? -1 : (int)((next + 999999) / 1000000);
}

/* 1 to go on, 0 to exit. */
static int s_signal(int sfd)
{
    struct signalfd_siginfo si;
    while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGUSR1) {
            s_cut = 1;
            for (s_pair_t *p = s_pairs; p; p = p->next)
                s_close_pair(p);
        } else if (si.ssi_signo == SIGUSR2) {
            s_stalled = 1;
        } else if (si.ssi_signo == SIGHUP) {
            s_cut = 0;
            s_stalled = 0;
        } else {
            return 0;
        }
    }
    return 1;
}

static void s_usage(FILE *f, const char *argv0)
{
    (void)argv0; /* the name the docs give */
    fputs("usage: ab-linkproxy-c LISTEN_PORT [TARGET_HOST:]TARGET_PORT [DELAY_MS]\n", f);
}

static int s_setup(int argc, char **argv, int *lfd, int *sfd)
{
    if (argc < 3) {
        s_usage(stderr, argv[0]);
        return -1;
    }
    const char *colon = strrchr(argv[2], ':');
    char host[256] = "127.0.0.1";
    long lport, tport;
    double delay_ms = 0;
    /* atoi and atof read "80x" as 80 and "abc" as 0: a typo was a port 0 */
    if (ab_parse_long(argv[1], 1, 65535, &lport) != 0 ||
        ab_parse_long(colon ? colon + 1 : argv[2], 1, 65535, &tport) != 0 ||
        (argc > 3 && ab_parse_double(argv[3], 0, 3600000, &delay_ms) != 0)) {
        fprintf(stderr, "ab-linkproxy-c: ports are 1..65535, DELAY_MS a decimal number "
                        "0..3600000\n");
        return -1;
    }
    if (colon)
        snprintf(host, sizeof host, "%.*s", (int)(colon - argv[2]), argv[2]);
    s_target = (struct sockaddr_in){.sin_family = AF_INET,
                                    .sin_port = htons((uint16_t)tport)};
    if (inet_pton(AF_INET, host, &s_target.sin_addr) != 1) {
        fprintf(stderr, "ab-linkproxy-c: target host must be an IPv4 address: %s\n", host);
        return -1;
    }
    s_delay_ns = (uint64_t)(delay_ms * 1e6);
    sigset_t set;
    sigemptyset(&set);
    int sigs[] = {SIGUSR1, SIGUSR2, SIGHUP, SIGTERM, SIGINT};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
        sigaddset(&set, sigs[i]);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    *sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    *lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(*lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)lport),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (*sfd < 0 || *lfd < 0 || bind(*lfd, (struct sockaddr *)&a, sizeof a) < 0 ||
        listen(*lfd, 64) < 0) {
        fprintf(stderr, "ab-linkproxy-c: cannot listen on 127.0.0.1:%s: %s\n", argv[1],
                strerror(errno));
        return -1;
    }
    s_ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event x = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(s_ep, EPOLL_CTL_ADD, *lfd, &x);
    x.data.ptr = &s_ep; /* marks the signal fd */
    epoll_ctl(s_ep, EPOLL_CTL_ADD, *sfd, &x);
    return 0;
}

int main(int argc, char **argv)
{
    int lfd, sfd;
    /* As every program (README); no libagentbus here: the version CMake gives. */
    if (tl_info_answer(argc, argv, "ab-linkproxy-c", AB_PROGRAM_VERSION, s_usage))
        return 0;
    if (s_setup(argc, argv, &lfd, &sfd) < 0)
        return 2;
    printf("ready\n");
    fflush(stdout);
    int timeout = -1, go = 1;
    while (go) {
        struct epoll_event ev[64];
        int n = epoll_wait(s_ep, ev, 64, timeout);
        for (int i = 0; i < n; i++) {
            if (ev[i].data.ptr == NULL)
                s_accept(lfd);
            else if (ev[i].data.ptr == &s_ep)
                go = s_signal(sfd);
            else
                s_event(ev[i].data.ptr, ev[i].events);
        }
        timeout = s_sweep();
    }
    for (s_pair_t *p = s_pairs; p; p = p->next)
        s_close_pair(p);
    s_sweep();
    return 0;
}
