/*
 * attack_slow.c - agentbus-attack-slow: measures what slow or idle peers
 * cost a running broker (issue 11), from outside, with raw ZeroMQ peers
 * that speak the wire protocol and never read what they are sent.
 *
 *   agentbus-attack-slow --broker EP --pid PID replies N SIZE [PAUSE_MS]
 *       one client asks service "echo" (start an echo worker) for N answers
 *       of SIZE bytes without reading them (then, silent, PAUSE_MS more),
 *       then reads and counts what it was answered
 *   agentbus-attack-slow --broker EP --pid PID subscribers K N SIZE
 *       K subscribers of "atk." that never read; N publications of SIZE
 *   agentbus-attack-slow --broker EP --pid PID connections C
 *       C idle connections (each says HELLO), then all closed
 *
 * It prints the broker's VmRSS (from /proc/PID/status) before, at its peak
 * and after, and the cost per slow consumer or per connection. Works
 * against brokers with and without the byte bounds (the figures in the
 * issue 11 note were taken with it). Loopback only; every wait is bounded.
 */
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "attack_util.h"
#include "tl_args.h"


#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <zmq.h>

static const char s_prog[] = "agentbus-attack-slow"; /* for at_num's messages */

static int s_pid;
static long s_peak;

/* The broker's VmRSS (KiB), also kept as the peak. */
static long s_rss_kb(void)
{
    long kb = at_rss_kb((pid_t)s_pid);
    if (kb > s_peak)
        s_peak = kb;
    return kb;
}

/* A DEALER that takes little from the network (4-message pipe, 64 KiB
 * socket buffer): what it is sent piles up in the broker. */
static void *s_raw(void *ctx, const char *ep)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, hwm = 4, buf = 64 * 1024, tmo = 5000;
    if (!s)
        return NULL;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_RCVBUF, &buf, sizeof buf);
    zmq_setsockopt(s, ZMQ_SNDTIMEO, &tmo, sizeof tmo);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    if (zmq_connect(s, ep) != 0) {
        zmq_close(s);
        return NULL;
    }
    return s;
}

static int s_send(void *s, uint32_t kind, const char *target, uint64_t id, const void *data,
                  size_t size)
{
    Agentbus__Header h = at_header((Agentbus__Kind)kind);
    h.id = id;
    h.target = (char *)target;
    return at_send(s, &h, size ? data : NULL, size);
}

/* Waits for the answer to ID on S (other messages skipped); its header
 * kind and, when it has one, its payload in *PL (malloc'd). 0 or -1. */
static int s_answer(void *s, uint64_t id, uint32_t *kind, void **pl, size_t *plen)
{
    for (int i = 0; i < 64; i++) {
        zmq_msg_t h, p;
        zmq_msg_init(&h);
        zmq_msg_init(&p);
        if (zmq_msg_recv(&h, s, 0) < 0) {
            zmq_msg_close(&h);
            return -1;
        }
        int more = zmq_msg_more(&h);
        if (more)
            zmq_msg_recv(&p, s, 0);
        at_reply_t hd;
        int ok = at_parse(zmq_msg_data(&h), zmq_msg_size(&h), &hd) == 0 &&
                 hd.correlation_id == id;
        if (ok) {
            *kind = hd.kind;
            if (pl && (*pl = malloc(zmq_msg_size(&p) + 1)) != NULL) {
                memcpy(*pl, zmq_msg_data(&p), zmq_msg_size(&p));
                *plen = zmq_msg_size(&p);
            }
        }
        zmq_msg_close(&h);
        zmq_msg_close(&p);
        if (ok)
            return 0;
    }
    return -1;
}

/* The broker's Stats through a CONTROL query on CTL; NULL on failure. */
static Agentbus__Stats *s_stats(void *ctl)
{
    static uint64_t id = 1000000;
    return at_stats(ctl, ++id, 5000);
}

static uint64_t s_pending(void *ctl)
{
    Agentbus__Stats *st = s_stats(ctl);
    uint64_t p = st ? st->pending : 0;
    if (st)
        agentbus__stats__free_unpacked(st, NULL);
    return p;
}

static void s_report(const char *what, long before, long after, long n)
{
    printf("%s: broker VmRSS %ld KiB before, peak %ld KiB, now %ld KiB; "
           "peak - before = %ld KiB (%.1f KiB each of %ld)\n",
           what, before, s_peak, after, s_peak - before, (double)(s_peak - before) / (double)n, n);
}

static int s_replies(void *ctx, const char *ep, long n, long size, long pause_ms)
{
    void *atk = s_raw(ctx, ep), *ctl = s_raw(ctx, ep);
    char *data = malloc((size_t)size);
    if (!atk || !ctl || !data)
        return 1;
    memset(data, 'a', (size_t)size);
    long before = s_rss_kb();
    s_peak = before;
    for (long i = 0; i < n;) {
        for (int k = 0; k < 32 && i < n; k++, i++)
            if (s_send(atk, AT_KIND(REQUEST), "echo", (uint64_t)i + 1, data, (size_t)size) != 0)
                return fprintf(stderr, "send failed at %ld\n", i), 1;
        /* Paced by the broker's queue: requests do not pile up, answers do. */
        for (int w = 0; w < 2000 && s_pending(ctl) > 8; w++)
            usleep(2000);
        s_rss_kb();
    }
    for (int w = 0; w < 2000 && s_pending(ctl) > 0; w++)
        usleep(2000);
    usleep(500000);
    s_report("one client not reading its answers", before, s_rss_kb(), 1);
    if (pause_ms > 0) { /* it keeps not reading, silent, this long */
        usleep((useconds_t)pause_ms * 1000);
        printf("paused %ld ms more\n", pause_ms);
    }
    /* What it was answered, now that it reads. */
    long replies = 0, busy = 0, other = 0;
    int tmo = 2000;
    zmq_setsockopt(atk, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    for (long i = 0; i < n + 64; i++) {
        zmq_msg_t h;
        zmq_msg_init(&h);
        if (zmq_msg_recv(&h, atk, 0) < 0) {
            zmq_msg_close(&h);
            break;
        }
        int more = zmq_msg_more(&h);
        at_reply_t hd;
        if (at_parse(zmq_msg_data(&h), zmq_msg_size(&h), &hd) == 0) {
            if (hd.kind == AT_KIND(REPLY))
                replies++;
            else if (hd.kind == AT_KIND(ERROR) && hd.error_code == AT_ERR(BUSY))
                busy++;
            else if (hd.kind != AT_KIND(HEARTBEAT) && hd.kind != AT_KIND(HELLO))
                other++;
        }
        zmq_msg_close(&h);
        while (more) {
            zmq_msg_init(&h);
            zmq_msg_recv(&h, atk, 0);
            more = zmq_msg_more(&h);
            zmq_msg_close(&h);
        }
    }
    printf("then read: %ld replies, %ld BUSY, %ld other, %ld of %ld requests unanswered\n",
           replies, busy, other, n - replies - busy - other, n);
    free(data);
    zmq_close(atk);
    zmq_close(ctl);
    return 0;
}

static int s_subscribers(void *ctx, const char *ep, long k, long n, long size)
{
    void **subs = calloc((size_t)k, sizeof *subs), *pub = s_raw(ctx, ep), *ctl = s_raw(ctx, ep);
    char *data = malloc((size_t)size);
    if (!subs || !pub || !ctl || !data)
        return 1;
    memset(data, 'p', (size_t)size);
    for (long i = 0; i < k; i++) {
        uint32_t kind = 0;
        if (!(subs[i] = s_raw(ctx, ep)) ||
            s_send(subs[i], AT_KIND(SUBSCRIBE), "atk.", 1, NULL, 0) ||
            s_answer(subs[i], 1, &kind, NULL, NULL) != 0)
            return fprintf(stderr, "subscriber %ld not subscribed\n", i), 1;
    }
    long before = s_rss_kb();
    s_peak = before;
    for (long i = 0; i < n; i++) {
        if (s_send(pub, AT_KIND(PUBLISH), "atk.x", 0, data, (size_t)size) != 0)
            return fprintf(stderr, "publish failed at %ld\n", i), 1;
        if (i % 8 == 7) {
            s_pending(ctl); /* a round trip: the broker has fanned these out */
            s_rss_kb();
        }
    }
    s_pending(ctl);
    usleep(500000);
    long after = s_rss_kb();
    Agentbus__Stats *st = s_stats(ctl);
    s_report("subscribers not reading", before, after, k);
    if (st) {
        printf("slow_drops %llu, fanout %llu\n", (unsigned long long)st->slow_drops,
               (unsigned long long)st->fanout);
        agentbus__stats__free_unpacked(st, NULL);
    }
    for (long i = 0; i < k; i++)
        zmq_close(subs[i]);
    free(subs);
    free(data);
    zmq_close(pub);
    zmq_close(ctl);
    return 0;
}

static int s_connections(void *ctx, const char *ep, long c)
{
    void **s = calloc((size_t)c, sizeof *s), *ctl = s_raw(ctx, ep);
    if (!s || !ctl)
        return 1;
    long before = s_rss_kb(), ok = 0, refused = 0;
    s_peak = before;
    for (long i = 0; i < c; i++) {
        if (!(s[i] = s_raw(ctx, ep)) || s_send(s[i], AT_KIND(HELLO), "", 1, NULL, 0) != 0)
            return fprintf(stderr, "connection %ld failed\n", i), 1;
    }
    for (long i = 0; i < c; i++) {
        uint32_t kind = 0;
        if (s_answer(s[i], 1, &kind, NULL, NULL) == 0)
            kind == AT_KIND(HELLO) ? ok++ : refused++;
    }
    usleep(300000);
    long open_rss = s_rss_kb();
    s_report("idle connections", before, open_rss, c);
    printf("answered HELLO %ld, refused %ld\n", ok, refused);
    for (long i = 0; i < c; i++)
        zmq_close(s[i]);
    sleep(3); /* liveness sweep, trim */
    Agentbus__Stats *st = s_stats(ctl);
    printf("after closing all: broker VmRSS %ld KiB (%ld KiB above before)\n", s_rss_kb(),
           s_rss_kb() - before);
    if (st)
        agentbus__stats__free_unpacked(st, NULL);
    free(s);
    zmq_close(ctl);
    return 0;
}

static void s_usage(FILE *f, const char *argv0)
{
    fprintf(f, "usage: %s --broker EP --pid PID replies N SIZE [PAUSE_MS] | subscribers K N SIZE "
               "| connections C\n"
               "  N 1..10000000, SIZE 1..67108864 bytes, PAUSE_MS 0..3600000, K and C 1..100000\n",
            argv0);
}

/* The numbers after a mode: how many it takes, their names and ranges. */
typedef struct {
    const char *mode;
    int need, max; /* positional numbers: at least NEED, at most MAX */
    const char *name[3];
    long lo[3], hi[3];
} s_mode_t;

#define S_N_MAX 10000000L
#define S_SIZE_MAX (64L << 20)
static const s_mode_t s_modes[] = {
    {"replies", 2, 3, {"N", "SIZE", "PAUSE_MS"}, {1, 1, 0}, {S_N_MAX, S_SIZE_MAX, 3600000}},
    {"subscribers", 3, 3, {"K", "N", "SIZE"}, {1, 1, 1}, {100000, S_N_MAX, S_SIZE_MAX}},
    {"connections", 1, 1, {"C"}, {1}, {100000}},
};

/* MODE's numbers from ARGV[FIRST..ARGC-1] into V[3] (0 when not given),
 * or the mode's index; -1 after saying what is wrong (atol took "abc" as 0,
 * "-5" as a count, and "1x" as 1). */
static int s_mode_args(int argc, char **argv, int first, long v[3])
{
    const char *mode = argv[first];
    int nargs = argc - first - 1;
    for (size_t m = 0; m < sizeof s_modes / sizeof s_modes[0]; m++) {
        const s_mode_t *d = &s_modes[m];
        if (strcmp(mode, d->mode) != 0)
            continue;
        if (nargs < d->need || nargs > d->max) {
            fprintf(stderr, "%s: %s takes %d to %d numbers, not %d\n", s_prog, mode, d->need,
                    d->max, nargs);
            return -1;
        }
        for (int k = 0; k < nargs; k++) {
            const char *a = argv[first + 1 + k];
            if (tl_parse_long(a, d->lo[k], d->hi[k], &v[k]) != 0) {
                fprintf(stderr, "%s: bad value '%s' for %s %s (expected %ld..%ld)\n", s_prog, a,
                        mode, d->name[k], d->lo[k], d->hi[k]);
                return -1;
            }
        }
        return (int)m;
    }
    fprintf(stderr, "%s: unknown mode '%s'\n", s_prog, mode);
    return -1;
}

int main(int argc, char **argv)
{
    const char *ep = NULL;
    if (at_info_asked(argc, argv, "agentbus-attack-slow", s_usage))
        return 0;
    int i = 1;
    for (; i + 1 < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
        if (strcmp(argv[i], "--broker") == 0)
            ep = argv[i + 1];
        else if (strcmp(argv[i], "--pid") == 0)
            s_pid = (int)at_num(s_prog, argv[i], argv[i + 1], 1, INT_MAX);
        else
            break; /* unknown: usage below */
    }
    long v[3] = {0, 0, 0};
    int m = -1;
    if (!ep || s_pid <= 0 || i >= argc || strncmp(argv[i], "--", 2) == 0 ||
        (m = s_mode_args(argc, argv, i, v)) < 0) {
        s_usage(stderr, argv[0]);
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { /* room for many connections */
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    void *ctx = zmq_ctx_new();
    zmq_ctx_set(ctx, ZMQ_MAX_SOCKETS, 65536);
    int rc = m == 0   ? s_replies(ctx, ep, v[0], v[1], v[2])
             : m == 1 ? s_subscribers(ctx, ep, v[0], v[1], v[2])
                      : s_connections(ctx, ep, v[0]);
    zmq_ctx_term(ctx);
    return rc;
}
