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
#include "attack_util.h"
#include "tl_args.h"
#include "tl_port.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

static const char s_prog[] = "agentbus-attack-cancel"; /* for at_num's messages */

static void *s_ctx;
static char s_ep[64];
static volatile int s_stop;
static unsigned s_capacity = 1000;

static void *s_dealer(void)
{
    void *s = at_dealer(s_ctx, s_ep); /* unbounded: the attack sends in bursts */
    if (!s)
        exit(1);
    return s;
}

/* The worker: registers, then discards everything and heartbeats. */
static void *s_worker(void *arg)
{
    (void)arg;
    void *w = s_dealer();
    Agentbus__Header h = at_header(AT_KIND(REGISTER));
    h.id = 1;
    h.target = (char *)"attack";
    h.credit = s_capacity;
    at_send(w, &h, NULL, 0);
    double next_hb = 0;
    while (!s_stop) {
        zmq_pollitem_t it = {w, 0, ZMQ_POLLIN, 0};
        zmq_poll(&it, 1, 100);
        zmq_msg_t m;
        zmq_msg_init(&m);
        while (zmq_msg_recv(&m, w, ZMQ_DONTWAIT) >= 0)
            ;
        zmq_msg_close(&m);
        if (at_now_s() >= next_hb) {
            Agentbus__Header hb = at_header(AT_KIND(HEARTBEAT));
            at_send(w, &hb, NULL, 0);
            next_hb = at_now_s() + 0.3;
        }
    }
    zmq_close(w);
    return NULL;
}

/* CONTROL "stats" on SOCK, waits for its answer (other messages are
 * skipped). The broker's pending count, or -1 after 60 s. */
static long s_stats(void *sock, uint64_t id)
{
    Agentbus__Stats *st = at_stats(sock, id, 60000);
    long pending = st ? (long)st->pending : -1;
    if (st)
        agentbus__stats__free_unpacked(st, NULL);
    return pending;
}

static uint64_t s_id = 1u << 30;

/* Sends N requests from SOCK and waits until the broker holds WANT. */
static int s_fill(void *sock, void *ctl, unsigned n, long want)
{
    Agentbus__Header h = at_header(AT_KIND(REQUEST));
    h.target = (char *)"attack";
    h.timeout_ms = 3600000;
    for (unsigned i = 0; i < n; i++) {
        h.id = ++s_id;
        at_send(sock, &h, "x", 1);
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
    Agentbus__Header h = at_header(AT_KIND(BYE));
    double t0 = at_now_s(), worst = 0;
    at_send(sock, &h, NULL, 0);
    long p = -1;
    for (int i = 0; i < 100000; i++) {
        double a = at_now_s();
        p = s_stats(ctl, ++s_id);
        double rtt = at_now_s() - a;
        worst = rtt > worst ? rtt : worst;
        if (p >= 0 && p <= want)
            break;
    }
    printf("%s leaves: longest ping %.1f ms (idle %.3f ms), all freed after %.1f ms "
           "(pending now %ld)\n", who, worst * 1e3, idle * 1e3, (at_now_s() - t0) * 1e3, p);
}

static pid_t s_broker(const char *path, int port)
{
    char bind[64];
    snprintf(bind, sizeof bind, "tcp://127.0.0.1:%d", port);
    const char *argv[] = {path, "--bind", bind, "--queue-max", "10000000", "--max-pending",
                          "10000000", "--max-client-inflight", "10000000", "--max-client-queued",
                          "10000000", "--liveness", "100",
                          "--max-timeout-ms", "3600000", "--drain-ms", "0", "--log-level", "warn",
                          "--cache-l1-bytes", "0", "--sndhwm", "10000000", NULL};
    return at_spawn(path, argv, 1);
}

static void s_usage(FILE *f, const char *argv0)
{
    fprintf(f, "usage: %s [--broker PATH] [--pending N] [--cancels N] "
               "[--leave N] [--capacity N]\n", argv0);
}

int main(int argc, char **argv)
{
    char path[PATH_MAX + 32];
    unsigned pending = 200000, cancels = 2000, leave = 100000;
    at_sibling(path, sizeof path, argv[0], "agentbus-broker");
    if (at_info_asked(argc, argv, "agentbus-attack-cancel", s_usage))
        return 0;
    int i = 1;
    for (; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--broker") == 0)
            snprintf(path, sizeof path, "%s", argv[i + 1]);
        else if (strcmp(argv[i], "--pending") == 0)
            pending = (unsigned)at_num(s_prog, argv[i], argv[i + 1], 1, 10000000);
        else if (strcmp(argv[i], "--cancels") == 0)
            cancels = (unsigned)at_num(s_prog, argv[i], argv[i + 1], 1, 100000000);
        else if (strcmp(argv[i], "--leave") == 0)
            leave = (unsigned)at_num(s_prog, argv[i], argv[i + 1], 0, 10000000);
        else if (strcmp(argv[i], "--capacity") == 0)
            s_capacity = (unsigned)at_num(s_prog, argv[i], argv[i + 1], 1, 1000000);
        else
            break;
    }
    if (i < argc) { /* an unknown option, or one without its value */
        s_usage(stderr, argv[0]);
        return 2;
    }
    if (s_capacity > pending || s_capacity > leave || !cancels) {
        fprintf(stderr, "--capacity must be <= --pending and --leave; --cancels > 0\n");
        return 2;
    }
    int port = tl_free_port();
    snprintf(s_ep, sizeof s_ep, "tcp://127.0.0.1:%d", port);
    pid_t broker = s_broker(path, port);
    s_ctx = zmq_ctx_new();
    void *ctl = s_dealer();
    if (s_stats(ctl, ++s_id) < 0) {
        fprintf(stderr, "no broker at %s (%s)\n", s_ep, path);
        at_kill(broker);
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
        double t = at_now_s();
        s_stats(a, ++s_id);
        rtts[i] = at_now_s() - t;
    }
    for (int i = 0; i < 21; i++) /* insertion sort: tiny */
        for (int j = i; j > 0 && rtts[j] < rtts[j - 1]; j--) {
            double x = rtts[j];
            rtts[j] = rtts[j - 1];
            rtts[j - 1] = x;
        }
    double idle = rtts[10];
    Agentbus__Header h = at_header(AT_KIND(CANCEL));
    double t0 = at_now_s();
    for (unsigned i = 0; i < cancels; i++) {
        h.id = ++s_id;
        h.correlation_id = 1u << 20 | i; /* never used by A */
        at_send(a, &h, NULL, 0);
    }
    s_stats(a, ++s_id);
    double spent = at_now_s() - t0 - idle;
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
    at_stop(broker);
    return rc;
}
