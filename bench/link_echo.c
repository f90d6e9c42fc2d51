/*
 * agentbus-link-echo: the bare ZeroMQ round trip over a broker link's
 * network, the baseline of bench/links_bench.sh (docs/bench.md, "Broker
 * links"). A ROUTER that sends every message back as it came, and a
 * DEALER client (the bench's bare client: bare_hop.c, the options the
 * broker and the library set) that measures through whatever sits between
 * them, here ab-linkproxy-c:
 *
 *   agentbus-link-echo serve PORT
 *       echo on 127.0.0.1:PORT until SIGTERM; prints "ready" once bound
 *   agentbus-link-echo rr PORT SECONDS WINDOW LATENCY_COUNT
 *       against 127.0.0.1:PORT: replies/s with WINDOW requests of 64 B in
 *       flight, then of 4 KiB, for SECONDS each, then LATENCY_COUNT lone
 *       64 B round trips; prints
 *       "bare-link rr64 N rr4096 N lone_p50_us N lone_p99_us N"
 */
#include "bare_hop.h"
#include "tl_hist.h"
#include "parse.h"
#include "tl_args.h"
#include "agentbus.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

static int s_serve(int port)
{
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_ROUTER);
    int hwm = 100000, linger = 0;
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", port);
    if (zmq_bind(s, ep) != 0) {
        fprintf(stderr, "agentbus-link-echo: cannot bind %s: %s\n", ep, zmq_strerror(zmq_errno()));
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    zmq_msg_t m;
    for (;;) { /* [routing id][payload] back as it came, without a copy */
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s, 0) < 0)
            continue;
        int more = zmq_msg_more(&m);
        zmq_msg_send(&m, s, more ? ZMQ_SNDMORE : 0);
        while (more) {
            zmq_msg_init(&m);
            zmq_msg_recv(&m, s, 0);
            more = zmq_msg_more(&m);
            zmq_msg_send(&m, s, more ? ZMQ_SNDMORE : 0);
        }
    }
}

static int s_rr(int port, double secs, int window, int count)
{
    void *ctx = zmq_ctx_new();
    void *s = bh_client(ctx, port);
    if (!s) {
        fprintf(stderr, "agentbus-link-echo: no echo on port %d\n", port);
        return 1;
    }
    static char small[64], large[4096];
    memset(small, 'x', sizeof small);
    memset(large, 'y', sizeof large);
    double r1 = bh_rr(s, small, sizeof small, secs, window, 0);
    double r2 = bh_rr(s, large, sizeof large, secs, window, 0);
    tl_hist_t *h = calloc(1, sizeof *h);
    if (!h || r1 < 0 || r2 < 0 || bh_lat(s, small, sizeof small, count / 10 + 1, NULL) != 0 ||
        bh_lat(s, small, sizeof small, count, h) != 0) {
        fprintf(stderr, "agentbus-link-echo: replies went missing\n");
        return 1;
    }
    printf("bare-link rr64 %.0f rr4096 %.0f lone_p50_us %.0f lone_p99_us %.0f\n", r1, r2,
           tl_hist_percentile(h, 50) / 1e3, tl_hist_percentile(h, 99) / 1e3);
    free(h);
    zmq_close(s);
    zmq_ctx_term(ctx);
    return 0;
}

static void s_usage(FILE *f, const char *argv0)
{
    (void)argv0; /* the name the docs give */
    fprintf(f, "usage: agentbus-link-echo serve PORT\n"
               "       agentbus-link-echo rr PORT SECONDS WINDOW LATENCY_COUNT\n");
}

int main(int argc, char **argv)
{
    long port, window, count;
    double secs;
    if (tl_info_answer(argc, argv, "agentbus-link-echo", ab_version(), s_usage)) /* README */
        return 0;
    /* atoi and atof read "80x" as 80 and "abc" as 0 */
    if (argc == 3 && !strcmp(argv[1], "serve") && !ab_parse_long(argv[2], 1, 65535, &port))
        return s_serve((int)port);
    if (argc == 6 && !strcmp(argv[1], "rr") && !ab_parse_long(argv[2], 1, 65535, &port) &&
        !ab_parse_double(argv[3], 0, 86400, &secs) && secs > 0 &&
        !ab_parse_long(argv[4], 1, 1000000, &window) &&
        !ab_parse_long(argv[5], 1, 100000000, &count))
        return s_rr((int)port, secs, (int)window, (int)count);
    s_usage(stderr, argv[0]);
    return 2;
}
