/*
 * agentbus-attack-cancel - what CANCEL and a client's departure cost the
 * broker's one thread while it holds many requests (issue 11).
 *
 * It starts a broker (the one next to this program, or --broker PATH) on a
 * free loopback port and a raw worker that registers with --capacity slots
 * and never answers (it reads and discards, and heartbeats). Then:
 *   1. client A sends --pending requests (all held: the first --capacity
 *      dispatched, the rest queued), and then --cancels CANCELs of ids it
 *      never used, followed on the same connection by a CONTROL "stats":
 *      the broker handles one connection's messages in order, so the time
 *      to that answer, less an idle round trip, is what the CANCELs cost;
 *   2. A says BYE: another connection pings the broker (CONTROL "stats",
 *      one at a time) until the broker holds only the orphans the worker
 *      keeps; the longest ping is the stall every other client saw;
 *   3. the same for client B with --leave requests.
 * Raw ZeroMQ DEALERs throughout, so nothing client-side hides a cost.
 *
 *   agentbus-attack-cancel [--broker PATH] [--pending N] [--cancels N]
 *                          [--leave N] [--capacity N]
 */
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "codec.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

static void *s_ctx;
static char s_ep[64];
static volatile int s_stop;
static unsigned s_capacity = 1000;

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int s_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static void *s_dealer(void)
{
    void *s = zmq_socket(s_ctx, ZMQ_DEALER);
    int linger = 0, hwm = 0; /* unbounded: the attack sends in bursts */
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (zmq_connect(s, s_ep) != 0) {
        fprintf(stderr, "connect %s: %s\n", s_ep, zmq_strerror(zmq_errno()));
        exit(1);
    }
    return s;
}

static void s_send(void *sock, const ab_header_t *h, const void *pl, size_t len)
{
    uint8_t buf[512];
    size_t n = ab_header_encode(h, buf, sizeof buf);
    zmq_send(sock, buf, n, pl ? ZMQ_SNDMORE : 0);
    if (pl)
        zmq_send(sock, pl, len, 0);
}

/* The worker: registers, then discards everything and heartbeats. */
static void *s_worker(void *arg)
{
    (void)arg;
    void *w = s_dealer();
    ab_header_t h = ab_header_init(AB_KIND_REGISTER);
    h.id = 1;
    h.target = ab_view_of("attack");
    h.credit = s_capacity;
    s_send(w, &h, NULL, 0);
    double next_hb = 0;
    while (!s_stop) {
        zmq_pollitem_t it = {w, 0, ZMQ_POLLIN, 0};
        zmq_poll(&it, 1, 100);
        zmq_msg_t m;
        zmq_msg_init(&m);
        while (zmq_msg_recv(&m, w, ZMQ_DONTWAIT) >= 0)
            ;
        zmq_msg_close(&m);
        if (s_now() >= next_hb) {
            ab_header_t hb = ab_header_init(AB_KIND_HEARTBEAT);
            s_send(w, &hb, NULL, 0);
            next_hb = s_now() + 0.3;
        }
    }
    zmq_close(w);
    return NULL;
}

/* CONTROL "stats" on SOCK, waits for its answer (other messages are
 * skipped). The broker's pending count, or -1 after 60 s. */
static long s_stats(void *sock, uint64_t id)
{
    ab_header_t h = ab_header_init(AB_KIND_CONTROL);
    h.id = id;
    h.target = ab_view_of("stats");
    s_send(sock, &h, NULL, 0);
    double end = s_now() + 60;
    while (s_now() < end) {
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 1000) <= 0)
            continue;
        zmq_msg_t f[2];
        int n = 0, more = 1;
        while (more) {
            zmq_msg_t *m = &f[n < 2 ? n : 1];
            if (n >= 2)
                zmq_msg_close(m);
            zmq_msg_init(m);
            zmq_msg_recv(m, sock, 0);
            more = zmq_msg_more(m);
            n++;
        }
        ab_header_t r;
        long pending = -2;
        if (ab_header_parse(zmq_msg_data(&f[0]), zmq_msg_size(&f[0]), &r) == AB_OK &&
            r.kind == AB_KIND_REPLY && r.correlation_id == id && n >= 2) {
            Agentbus__Stats *st =
                agentbus__stats__unpack(NULL, zmq_msg_size(&f[1]), zmq_msg_data(&f[1]));
            pending = st ? (long)st->pending : -1;
            if (st)
                agentbus__stats__free_unpacked(st, NULL);
        }
        for (int i = 0; i < (n < 2 ? n : 2); i++)
            zmq_msg_close(&f[i]);
        if (pending != -2)
            return pending;
    }
    return -1;
}

static uint64_t s_id = 1u << 30;

/* Sends N requests from SOCK and waits until the broker holds WANT. */
static int s_fill(void *sock, void *ctl, unsigned n, long want)
{
    ab_header_t h = ab_header_init(AB_KIND_REQUEST);
    h.target = ab_view_of("attack");
    h.timeout_ms = 3600000;
    for (unsigned i = 0; i < n; i++) {
        h.id = ++s_id;
        s_send(sock, &h, "x", 1);
    }
    for (int i = 0; i < 600; i++) { /* 60 s */
        long p = s_stats(ctl, ++s_id);
        if (p >= want)
            return 0;
        usleep(100000);
    }
    fprintf(stderr, "the broker never held %ld requests\n", want);
    return -1;
}

/* Sends BYE on SOCK; pings on CTL until the broker holds at most WANT.
 * Prints the longest ping and the time to that point. */
static void s_leave(const char *who, void *sock, void *ctl, long want, double idle)
{
    ab_header_t h = ab_header_init(AB_KIND_BYE);
    double t0 = s_now(), worst = 0;
    s_send(sock, &h, NULL, 0);
    long p = -1;
    for (int i = 0; i < 100000; i++) {
        double a = s_now();
        p = s_stats(ctl, ++s_id);
        double rtt = s_now() - a;
        worst = rtt > worst ? rtt : worst;
        if (p >= 0 && p <= want)
            break;
    }
    printf("%s leaves: longest ping %.1f ms (idle %.3f ms), all freed after %.1f ms "
           "(pending now %ld)\n", who, worst * 1e3, idle * 1e3, (s_now() - t0) * 1e3, p);
}

static pid_t s_broker(const char *path, int port)
{
    char bind[64];
    snprintf(bind, sizeof bind, "tcp://127.0.0.1:%d", port);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(path, path, "--bind", bind, "--queue-max", "10000000", "--max-pending",
              "10000000", "--max-client-inflight", "10000000", "--liveness", "100",
              "--max-timeout-ms", "3600000", "--drain-ms", "0", "--log-level", "warn",
              "--cache-l1-bytes", "0", "--sndhwm", "10000000", (char *)NULL);
        _exit(127);
    }
    return pid;
}

int main(int argc, char **argv)
{
    char path[PATH_MAX + 32], self[PATH_MAX];
    unsigned pending = 200000, cancels = 2000, leave = 100000;
    snprintf(self, sizeof self, "%s", argv[0]);
    snprintf(path, sizeof path, "%s/agentbus-broker", dirname(self));
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--broker") == 0)
            snprintf(path, sizeof path, "%s", argv[i + 1]);
        else if (strcmp(argv[i], "--pending") == 0)
            pending = (unsigned)atol(argv[i + 1]);
        else if (strcmp(argv[i], "--cancels") == 0)
            cancels = (unsigned)atol(argv[i + 1]);
        else if (strcmp(argv[i], "--leave") == 0)
            leave = (unsigned)atol(argv[i + 1]);
        else if (strcmp(argv[i], "--capacity") == 0)
            s_capacity = (unsigned)atol(argv[i + 1]);
        else {
            fprintf(stderr, "usage: %s [--broker PATH] [--pending N] [--cancels N] "
                            "[--leave N] [--capacity N]\n", argv[0]);
            return 2;
        }
    }
    if (s_capacity > pending || s_capacity > leave || !cancels) {
        fprintf(stderr, "--capacity must be <= --pending and --leave; --cancels > 0\n");
        return 2;
    }
    int port = s_free_port();
    snprintf(s_ep, sizeof s_ep, "tcp://127.0.0.1:%d", port);
    pid_t broker = s_broker(path, port);
    s_ctx = zmq_ctx_new();
    void *ctl = s_dealer();
    if (s_stats(ctl, ++s_id) < 0) {
        fprintf(stderr, "no broker at %s (%s)\n", s_ep, path);
        kill(broker, SIGKILL);
        return 1;
    }
    pthread_t wt;
    pthread_create(&wt, NULL, s_worker, NULL);
    usleep(300000);
    int rc = 1;
    void *a = s_dealer(), *b = s_dealer();
    if (s_fill(a, ctl, pending, pending) != 0)
        goto done;
    /* An idle round trip, on A's own connection (median of 21). */
    double rtts[21];
    for (int i = 0; i < 21; i++) {
        double t = s_now();
        s_stats(a, ++s_id);
        rtts[i] = s_now() - t;
    }
    for (int i = 0; i < 21; i++) /* insertion sort: tiny */
        for (int j = i; j > 0 && rtts[j] < rtts[j - 1]; j--) {
            double x = rtts[j];
            rtts[j] = rtts[j - 1];
            rtts[j - 1] = x;
        }
    double idle = rtts[10];
    ab_header_t h = ab_header_init(AB_KIND_CANCEL);
    double t0 = s_now();
    for (unsigned i = 0; i < cancels; i++) {
        h.id = ++s_id;
        h.correlation_id = 1u << 20 | i; /* never used by A */
        s_send(a, &h, NULL, 0);
    }
    s_stats(a, ++s_id);
    double spent = s_now() - t0 - idle;
    printf("%u pending: %u CANCELs of unknown ids took %.1f ms: %.2f us per CANCEL "
           "(%.0f CANCEL/s; idle round trip %.3f ms)\n", pending, cancels, spent * 1e3,
           spent / cancels * 1e6, cancels / (spent > 0 ? spent : 1e-9), idle * 1e3);
    /* A's dispatched requests stay with the worker as orphans (it never
     * answers): the broker then holds exactly those. */
    s_leave("client with all pending", a, ctl, s_capacity, idle);
    if (s_fill(b, ctl, leave, leave + s_capacity) != 0)
        goto done;
    s_leave("second client", b, ctl, s_capacity, idle);
    rc = 0;
done:
    s_stop = 1;
    pthread_join(wt, NULL);
    zmq_close(a);
    zmq_close(b);
    zmq_close(ctl);
    zmq_ctx_term(s_ctx);
    kill(broker, SIGTERM);
    for (int i = 0; i < 100 && waitpid(broker, NULL, WNOHANG) != broker; i++)
        usleep(50000);
    kill(broker, SIGKILL);
    waitpid(broker, NULL, 0);
    return rc;
}
