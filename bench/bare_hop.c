/* bare_hop.c - see bare_hop.h. The forwarder and the echo run in forked
 * children until SIGTERM (default action) from the bench. */
#include "bare_hop.h"
#include "tl_clock.h"

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <zmq.h>

/* The options agentbus-broker (broker.c) and libagentbus (conn.c) set:
 * HWM 100000, linger 0, ZMTP heartbeats every second with a 3 s timeout,
 * a 65 MiB frame limit, and ROUTER_MANDATORY on a ROUTER. */
static void *s_socket(void *ctx, int type)
{
    void *s = zmq_socket(ctx, type);
    int hwm = 100000, linger = 0, ivl = 1000, tmo = 3000, one = 1;
    int64_t maxmsg = 65 << 20;
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_HEARTBEAT_IVL, &ivl, sizeof ivl);
    zmq_setsockopt(s, ZMQ_HEARTBEAT_TIMEOUT, &tmo, sizeof tmo);
    zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    if (type == ZMQ_ROUTER)
        zmq_setsockopt(s, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    return s;
}

/* --- forwarder ------------------------------------------------------------------ */
typedef struct {
    void *front, *back;
    int dealer;      /* backend is a DEALER: no worker-id frame */
    int have_worker; /* the worker said hello; until then only its side is read */
    zmq_msg_t wid;   /* the worker's routing id (ROUTER backend) */
} s_fwd_t;

/* Moves the rest of a multipart message from IN to OUT; MORE is what the
 * last frame received said (read before sending it: a sent zmq_msg_t is
 * emptied, and its content moves without a copy). */
static void s_pass_rest(void *in, void *out, zmq_msg_t *m, int more)
{
    while (more) {
        zmq_msg_init(m);
        zmq_msg_recv(m, in, 0);
        more = zmq_msg_more(m);
        zmq_msg_send(m, out, more ? ZMQ_SNDMORE : 0);
    }
}

/* One message from the worker side: its hello, or [(worker-id)][client-id]
 * [payload] going back to the client. 1 if one was waiting, else 0. */
static int s_back_one(s_fwd_t *f)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, f->back, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return 0;
    }
    if (!f->dealer) { /* the worker's routing id comes first */
        if (!f->have_worker)
            zmq_msg_copy(&f->wid, &m);
        zmq_msg_close(&m);
        zmq_msg_init(&m);
        zmq_msg_recv(&m, f->back, 0);
    }
    f->have_worker = 1;
    int more = zmq_msg_more(&m);
    if (!more) { /* the hello */
        zmq_msg_close(&m);
        return 1;
    }
    zmq_msg_send(&m, f->front, ZMQ_SNDMORE);
    s_pass_rest(f->back, f->front, &m, more);
    return 1;
}

/* One request from a client: [client-id][payload] to the worker. */
static int s_front_one(s_fwd_t *f)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, f->front, ZMQ_DONTWAIT) < 0) { /* client id */
        zmq_msg_close(&m);
        return 0;
    }
    if (!f->dealer) {
        zmq_msg_t wid;
        zmq_msg_init(&wid);
        zmq_msg_copy(&wid, &f->wid);
        zmq_msg_send(&wid, f->back, ZMQ_SNDMORE);
    }
    int more = zmq_msg_more(&m);
    zmq_msg_send(&m, f->back, ZMQ_SNDMORE);
    s_pass_rest(f->front, f->back, &m, more);
    return 1;
}

/* After each poll, both sockets are read until neither has a message
 * waiting, as a real forwarder and the broker do. BURST messages from one
 * side before turning to the other (1: one from each in turn): a burst
 * hands libzmq's I/O thread many messages per wake-up, fewer and larger
 * TCP writes, and the cap keeps either direction from starving the other.
 * BURST 0: one message per ready socket per poll, the naive loop. */
static void s_fwd_loop(s_fwd_t *f, int burst)
{
    zmq_pollitem_t items[2] = {{f->back, 0, ZMQ_POLLIN, 0}, {f->front, 0, ZMQ_POLLIN, 0}};
    for (;;) {
        if (zmq_poll(items, f->have_worker ? 2 : 1, -1) < 0)
            continue;
        if (!burst) {
            if (items[0].revents & ZMQ_POLLIN)
                s_back_one(f);
            if (f->have_worker && (items[1].revents & ZMQ_POLLIN))
                s_front_one(f);
            continue;
        }
        int moved;
        do {
            moved = 0;
            while (moved < burst && s_back_one(f))
                moved++;
            for (int n = 0; f->have_worker && n < burst && s_front_one(f); n++)
                moved++;
        } while (moved);
    }
}

static void s_forward(int front_port, int back_port, bh_fwd_t kind)
{
    void *ctx = zmq_ctx_new();
    int dealer = kind == BH_FWD_DEALER || kind == BH_FWD_PROXY;
    s_fwd_t f = {s_socket(ctx, ZMQ_ROUTER), s_socket(ctx, dealer ? ZMQ_DEALER : ZMQ_ROUTER),
                 dealer, 0, {{0}}};
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", front_port);
    if (zmq_bind(f.front, ep) != 0)
        _exit(1);
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", back_port);
    if (zmq_bind(f.back, ep) != 0)
        _exit(1);
    zmq_msg_init(&f.wid);
    if (kind == BH_FWD_PROXY) {
        /* The worker's hello goes to the front ROUTER, which drops it (no
         * peer has "READY" as its id). */
        zmq_proxy(f.front, f.back, NULL);
        _exit(0);
    }
    s_fwd_loop(&f, kind == BH_FWD_ONE      ? 0
                   : kind == BH_FWD_ALTERN  ? 1
                   : kind == BH_FWD_BURST64 ? 64
                                            : 1000);
}

static void s_echo(int back_port)
{
    void *ctx = zmq_ctx_new();
    void *s = s_socket(ctx, ZMQ_DEALER);
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", back_port);
    if (zmq_connect(s, ep) != 0)
        _exit(1);
    zmq_send(s, "READY", 5, 0);
    zmq_msg_t m;
    for (;;) { /* [client-id][payload] back as it came, without a copy */
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s, 0) < 0)
            continue;
        int more = zmq_msg_more(&m);
        zmq_msg_send(&m, s, more ? ZMQ_SNDMORE : 0);
        s_pass_rest(s, s, &m, more);
    }
}

static pid_t s_fork(void)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(0);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
    }
    return pid;
}

pid_t bh_start_forwarder_kind(int front_port, int back_port, bh_fwd_t kind)
{
    pid_t pid = s_fork();
    if (pid == 0) {
        s_forward(front_port, back_port, kind);
        _exit(0);
    }
    return pid;
}

pid_t bh_start_forwarder(int front_port, int back_port)
{
    return bh_start_forwarder_kind(front_port, back_port, BH_FWD_BASELINE);
}

pid_t bh_start_echo(int back_port)
{
    pid_t pid = s_fork();
    if (pid == 0) {
        s_echo(back_port);
        _exit(0);
    }
    return pid;
}

/* --- client ----------------------------------------------------------------------- */
void *bh_client(void *ctx, int front_port)
{
    void *s = s_socket(ctx, ZMQ_DEALER);
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", front_port);
    zmq_connect(s, ep);
    /* The first reply says the hop is up: the worker's hello may still be
     * on its way, and the forwarder reads no request before it. */
    for (int i = 0; i < 2; i++)
        if (bh_lat(s, "x", 1, 1, NULL) == 0)
            return s;
    zmq_close(s);
    return NULL;
}

static int s_send(void *s, const char *buf, size_t size, int flags)
{
    if (flags & BH_COPY_SEND)
        return zmq_send(s, buf, size, ZMQ_DONTWAIT) < 0 ? -1 : 0;
    zmq_msg_t m; /* constant data: libzmq reads BUF in place, no free */
    zmq_msg_init_data(&m, (void *)buf, size, NULL, NULL);
    if (zmq_msg_send(&m, s, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return -1;
    }
    return 0;
}

/* Receives every reply waiting; returns how many. */
static uint64_t s_drain(void *s)
{
    char rbuf[8];
    uint64_t n = 0;
    while (zmq_recv(s, rbuf, sizeof rbuf, ZMQ_DONTWAIT) >= 0)
        n++;
    return n;
}

double bh_rr(void *s, const char *buf, size_t size, double seconds, int window, int flags)
{
    uint64_t sent = 0, done = 0;
    uint64_t t0 = tl_now_ns(), end = t0 + (uint64_t)(seconds * 1e9);
    zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
    while (tl_now_ns() < end) {
        while (sent - done < (uint64_t)window && s_send(s, buf, size, flags) == 0)
            sent++;
        /* Replies already waiting are read without a poll: zmq_poll costs
         * a system call even when the answer is known. */
        uint64_t got = (flags & BH_POLL_FIRST) ? 0 : s_drain(s);
        if (!got) {
            if (zmq_poll(&it, 1, 1000) <= 0)
                break;
            got = s_drain(s);
        }
        done += got;
    }
    uint64_t t1 = tl_now_ns();
    double secs = (double)(t1 - t0) / 1e9;
    while (done < sent && tl_now_ns() - t1 < 10000000000ull) /* drain before the next run */
        if (zmq_poll(&it, 1, 100) > 0)
            done += s_drain(s);
    return done < sent ? -1 : (double)done / secs;
}

int bh_lat(void *s, const char *buf, size_t size, int count, tl_hist_t *h)
{
    char rbuf[8];
    zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
    for (int i = 0; i < count; i++) {
        uint64_t t = tl_now_ns();
        zmq_send(s, buf, size, 0);
        if (zmq_poll(&it, 1, 5000) <= 0 || zmq_recv(s, rbuf, sizeof rbuf, 0) < 0)
            return -1;
        if (h)
            tl_hist_record(h, tl_now_ns() - t);
    }
    return 0;
}
