/*
 * agentbus-attack-services - what the names and REGISTERs of one peer make
 * the broker keep (issue 11).
 *
 * Starts a broker (next to this program, or --broker PATH; arguments after
 * "--" go to it) on a free loopback port, then:
 *   1. one raw DEALER registers --names distinct service names (each
 *      REGISTER moves its worker to the next name, leaving the last one
 *      without a worker); the broker's RSS growth per name is printed, and
 *      again after --wait-ms (idle services may have been removed by then);
 *   2. --conns raw DEALERs each send one REGISTER carrying an inference
 *      state of --register-mb MiB (one long backend URL); the RSS growth
 *      and the answers (REGISTER accepted / ERROR code) are printed.
 *
 *   agentbus-attack-services [--broker PATH] [--names N] [--wait-ms N]
 *                            [--conns N] [--register-mb N] [-- BROKER ARGS...]
 */
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "attack_util.h"
#include "tl_clock.h"
#include "tl_args.h"
#include "tl_port.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

static const char s_prog[] = "agentbus-attack-services"; /* for at_num's messages */

static void *s_ctx;
static char s_ep[64];

static void *s_dealer(void)
{
    return at_dealer(s_ctx, s_ep);
}

static void s_register(void *s, const char *service, uint64_t id, const void *pl, size_t len)
{
    Agentbus__Header h = at_header(AT_KIND(REGISTER));
    h.id = id;
    h.target = (char *)service;
    h.credit = 1;
    at_send(s, &h, pl, len);
}

static void s_usage(FILE *f, const char *argv0)
{
    fprintf(f, "usage: %s [--broker PATH] [--names N] [--wait-ms N] [--conns N] "
               "[--register-mb N] [-- BROKER ARGS...]\n", argv0);
}

/* The kind (and *code) of the answer to ID on S within 30 s (other
 * messages skipped); 0 if none. */
static uint32_t s_answer(void *s, uint64_t id, uint32_t *code)
{
    for (int64_t end = tl_now_ms() + 30000; tl_now_ms() < end;) {
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 100) <= 0)
            continue;
        uint8_t buf[4096];
        int n = zmq_recv(s, buf, sizeof buf, 0), more = 0;
        size_t sz = sizeof more;
        zmq_getsockopt(s, ZMQ_RCVMORE, &more, &sz);
        while (more) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            zmq_msg_recv(&m, s, 0);
            more = zmq_msg_more(&m);
            zmq_msg_close(&m);
        }
        at_reply_t h;
        if (n > 0 && (size_t)n <= sizeof buf && at_parse(buf, (size_t)n, &h) == 0 &&
            h.correlation_id == id) {
            *code = h.error_code;
            return h.kind;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    char path[PATH_MAX + 32];
    long names = 100000, wait_ms = 0, conns = 20, mb = 22;
    const char *bargs[64];
    int nb = 0;
    at_sibling(path, sizeof path, argv[0], "agentbus-broker");
    if (at_info_asked(argc, argv, "agentbus-attack-services", s_usage))
        return 0;
    int i = 1;
    for (; i < argc && strcmp(argv[i], "--") != 0; i += 2) {
        if (i + 1 >= argc)
            goto usage;
        if (strcmp(argv[i], "--broker") == 0)
            snprintf(path, sizeof path, "%s", argv[i + 1]);
        else if (strcmp(argv[i], "--names") == 0)
            names = at_num(s_prog, argv[i], argv[i + 1], 1, 10000000);
        else if (strcmp(argv[i], "--wait-ms") == 0)
            wait_ms = at_num(s_prog, argv[i], argv[i + 1], 0, 3600000);
        else if (strcmp(argv[i], "--conns") == 0)
            conns = at_num(s_prog, argv[i], argv[i + 1], 0, 100000);
        else if (strcmp(argv[i], "--register-mb") == 0)
            mb = at_num(s_prog, argv[i], argv[i + 1], 1, 1024);
        else
            goto usage;
    }
    int port = tl_free_port();
    char bind[64];
    snprintf(bind, sizeof bind, "tcp://127.0.0.1:%d", port);
    snprintf(s_ep, sizeof s_ep, "%s", bind);
    bargs[nb++] = path;
    bargs[nb++] = "--bind";
    bargs[nb++] = bind;
    bargs[nb++] = "--liveness";
    bargs[nb++] = "100";
    bargs[nb++] = "--log-level";
    bargs[nb++] = "error";
    for (i++; i < argc && nb < 62; i++)
        bargs[nb++] = argv[i];
    bargs[nb] = NULL;
    pid_t broker = at_spawn(path, bargs, 1);
    s_ctx = zmq_ctx_new();
    usleep(500000);
    void *reg = s_dealer();
    uint32_t code = 0;
    s_register(reg, "warmup", 1, NULL, 0);
    if (!reg || s_answer(reg, 1, &code) != AT_KIND(REGISTER)) {
        fprintf(stderr, "no broker at %s (%s)\n", s_ep, path);
        at_kill(broker);
        return 1;
    }
    long rss0 = at_rss_kb(broker);
    char name[64];
    for (long n = 0; n < names; n++) {
        snprintf(name, sizeof name, "attack-name-%ld", n);
        s_register(reg, name, (uint64_t)n + 2, NULL, 0);
    }
    if (s_answer(reg, (uint64_t)names + 1, &code) != AT_KIND(REGISTER))
        printf("(the last REGISTER was not answered in 30 s)\n");
    long rss1 = at_rss_kb(broker);
    printf("%ld service names from one connection: RSS %ld -> %ld KiB, %.0f bytes per name\n",
           names, rss0, rss1, (double)(rss1 - rss0) * 1024.0 / (double)(names ? names : 1));
    if (wait_ms > 0) {
        usleep((useconds_t)wait_ms * 1000);
        printf("after %ld ms: RSS %ld KiB\n", wait_ms, at_rss_kb(broker));
    }
    /* Big inference states, one per connection. */
    Agentbus__InferenceState inf;
    agentbus__inference_state__init(&inf);
    size_t big = (size_t)mb << 20;
    char *url = malloc(big + 1);
    if (!url)
        return 1;
    memset(url, 'u', big);
    url[big] = '\0';
    inf.backend_url = url;
    Agentbus__Register m;
    agentbus__register__init(&m);
    m.service = "big";
    m.capacity = 1;
    m.inference = &inf;
    size_t len = agentbus__register__get_packed_size(&m);
    uint8_t *pl = malloc(len);
    if (!pl)
        return 1;
    agentbus__register__pack(&m, pl);
    free(url);
    long rss2 = at_rss_kb(broker);
    int accepted = 0, refused = 0;
    void *socks[256];
    for (long c = 0; c < conns && c < 256; c++) {
        socks[c] = s_dealer();
        s_register(socks[c], "big", 7, pl, len);
        uint32_t kind = s_answer(socks[c], 7, &code);
        accepted += kind == AT_KIND(REGISTER);
        refused += kind == AT_KIND(ERROR);
    }
    free(pl);
    long rss3 = at_rss_kb(broker);
    printf("%ld connections x REGISTER with a %ld MiB inference state: %d accepted, %d refused "
           "(last code %s); RSS %ld -> %ld KiB (+%.1f MiB)\n", conns, mb, accepted, refused,
           at_err_name(code), rss2, rss3, (double)(rss3 - rss2) / 1024.0);
    for (long c = 0; c < conns && c < 256; c++)
        zmq_close(socks[c]);
    zmq_close(reg);
    zmq_ctx_term(s_ctx);
    at_stop(broker);
    return 0;
usage:
    s_usage(stderr, argv[0]);
    return 2;
}
