/*
 * agentbus-attack-bomb - an lz4 "bomb" sender beside a well-behaved client,
 * to measure what the bombs cost everyone else (issue 11).
 *
 * A bomb is the shape the issue found: a REQUEST marked cacheable
 * (FLAG_CACHEABLE), naming a model, whose payload is an lz4 block of about
 * 257 KB that declares 64 MiB (zeros). Every bomb is the same request, so
 * after the first one the broker answers them from its cache: what is
 * measured is the broker's own work per bomb (computing the cache key),
 * not a worker's.
 *
 * It runs, for SECONDS:
 *   - BOMBERS raw ZeroMQ DEALER connections, each keeping WINDOW bombs in
 *     flight to BOMB-SERVICE (served by a worker thread of this program
 *     that answers "ok" without looking at the payload);
 *   - one libagentbus client sending one request at a time to SERVICE
 *     ("echo": start `agentbus-worker --service echo` yourself) and
 *     counting the answers.
 * It prints the echo rate and the bombs answered; with --bombers 0 it
 * measures the echo rate alone. The broker must be running.
 *
 * With --plain the bombers send the same ~257 KB as a plain payload (not
 * flagged lz4): the control, what any client sending messages that large
 * as fast as it can costs the others.
 *
 *   agentbus-attack-bomb [--broker EP] [--seconds N] [--bombers N]
 *                        [--window N] [--service NAME] [--bomb-service NAME]
 *                        [--plain]
 */
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "attack_util.h"
#include "tl_clock.h"

#include <lz4.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

static const char s_prog[] = "agentbus-attack-bomb"; /* for at_num's messages */

#define BOMB_ORIGINAL (64u << 20) /* what each bomb declares */
#define MAX_BOMBERS 16

static const char *s_ep = "tcp://127.0.0.1:5555";
static const char *s_service = "echo", *s_bomb_service = "bomb";
static int s_seconds = 5, s_bombers = 0, s_window = 4;
static int s_plain; /* --plain: the same bytes sent as a plain payload (the control) */
static void *s_bomb;
static size_t s_bomb_len;
static atomic_int s_stop;
static atomic_ullong s_bombs_sent, s_bombs_ok, s_bombs_err;

/* --- the bomb service's worker: answers "ok" ---------------------------------------- */
static void *s_bomb_worker(void *arg)
{
    ab_worker_t *w = arg;
    while (!atomic_load(&s_stop)) {
        ab_job_t *job;
        int rc = ab_worker_recv(w, &job, 100);
        if (rc == AB_ESTOPPED)
            break;
        if (rc == AB_OK)
            ab_worker_reply(w, &job, "ok", 2);
    }
    return NULL;
}

/* --- a bomber: a raw DEALER --------------------------------------------------------- */
/* Reads what arrived: each REPLY/ERROR ends one bomb. Returns how many. */
static int s_drain(void *s, int timeout_ms)
{
    int done = 0;
    zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, timeout_ms) <= 0)
        return 0;
    for (int i = 0; i < 256; i++) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            break;
        }
        at_reply_t h;
        int more = zmq_msg_more(&m);
        int ok = at_parse(zmq_msg_data(&m), zmq_msg_size(&m), &h) == 0;
        zmq_msg_close(&m);
        while (more) { /* the payload */
            zmq_msg_init(&m);
            zmq_msg_recv(&m, s, 0);
            more = zmq_msg_more(&m);
            zmq_msg_close(&m);
        }
        if (ok && h.kind == AT_KIND(REPLY)) {
            atomic_fetch_add(&s_bombs_ok, 1);
            done++;
        } else if (ok && h.kind == AT_KIND(ERROR)) {
            atomic_fetch_add(&s_bombs_err, 1);
            done++;
        }
    }
    return done;
}

static void *s_bomber(void *ctx)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(s, s_ep) != 0)
        return NULL;
    Agentbus__Hello hello = AGENTBUS__HELLO__INIT;
    hello.name = "bomber";
    hello.role = "agent";
    hello.features = AT_FEATURE_LZ4; /* reads lz4: the broker's usual client */
    uint8_t hb[64];
    size_t hl = agentbus__hello__pack(&hello, hb);
    Agentbus__Header h = at_header(AT_KIND(HELLO));
    h.id = 1;
    at_send(s, &h, hb, hl);
    uint64_t id = 1;
    int inflight = 0;
    while (!atomic_load(&s_stop)) {
        while (inflight < s_window) {
            Agentbus__Header r = at_header(AT_KIND(REQUEST));
            r.id = ++id;
            r.target = (char *)s_bomb_service;
            r.model = (char *)"bomb:latest";
            r.flags = AT_FLAG(CACHEABLE) | (s_plain ? 0 : AT_FLAG(LZ4));
            r.original_size = s_plain ? 0 : BOMB_ORIGINAL;
            r.timeout_ms = 30000;
            if (at_send(s, &r, s_bomb, s_bomb_len) != 0)
                break;
            atomic_fetch_add(&s_bombs_sent, 1);
            inflight++;
        }
        inflight -= s_drain(s, 50);
        if (inflight < 0)
            inflight = 0;
    }
    zmq_close(s);
    return NULL;
}

/* --- the well-behaved client ----------------------------------------------------------- */
static int s_echo_loop(unsigned long long *ok, unsigned long long *failed)
{
    ab_options_t *o = ab_options_new();
    ab_options_set_endpoint(o, s_ep);
    ab_options_set_name(o, "well-behaved");
    ab_client_t *c = NULL;
    int rc = ab_client_new(&c, o);
    ab_options_destroy(&o);
    if (rc != AB_OK) {
        fprintf(stderr, "cannot connect to %s: %s\n", s_ep, ab_strerror(rc));
        return -1;
    }
    int64_t end = tl_now_ms() + (int64_t)s_seconds * 1000;
    while (tl_now_ms() < end) {
        void *reply = NULL;
        size_t n = 0;
        if (ab_client_request(c, s_service, "ping", 4, 5000, &reply, &n) == AB_OK)
            (*ok)++;
        else
            (*failed)++;
        ab_free(reply);
    }
    ab_client_destroy(&c);
    return 0;
}

static int s_args(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--broker") && v)
            s_ep = v;
        else if (!strcmp(a, "--seconds") && v)
            s_seconds = (int)at_num(s_prog, a, v, 1, 3600);
        else if (!strcmp(a, "--bombers") && v)
            s_bombers = (int)at_num(s_prog, a, v, 0, MAX_BOMBERS);
        else if (!strcmp(a, "--window") && v)
            s_window = (int)at_num(s_prog, a, v, 1, 1024);
        else if (!strcmp(a, "--service") && v)
            s_service = v;
        else if (!strcmp(a, "--bomb-service") && v)
            s_bomb_service = v;
        else if (!strcmp(a, "--plain")) {
            s_plain = 1;
            continue;
        } else
            return -1;
        i++;
    }
    return s_seconds > 0 && s_seconds <= 3600 && s_bombers >= 0 && s_bombers <= MAX_BOMBERS &&
                   s_window > 0 && s_window <= 1024
               ? 0
               : -1;
}

static void s_usage(FILE *f, const char *argv0)
{
    fprintf(f, "usage: %s [--broker EP] [--seconds 1..3600] [--bombers 0..%d] "
               "[--window N] [--service NAME] [--bomb-service NAME] [--plain]\n",
            argv0, MAX_BOMBERS);
}

int main(int argc, char **argv)
{
    if (at_info_asked(argc, argv, "agentbus-attack-bomb", s_usage))
        return 0;
    if (s_args(argc, argv) != 0) {
        s_usage(stderr, argv[0]);
        return 2;
    }
    /* A raw lz4 block, as FLAG_LZ4 payloads are on the wire (docs/protocol.md). */
    void *plain = calloc(1, BOMB_ORIGINAL);
    int bound = LZ4_compressBound((int)BOMB_ORIGINAL);
    s_bomb = plain && bound > 0 ? malloc((size_t)bound) : NULL;
    int packed = s_bomb ? LZ4_compress_default(plain, s_bomb, (int)BOMB_ORIGINAL, bound) : 0;
    s_bomb_len = packed > 0 ? (size_t)packed : 0;
    if (packed <= 0) {
        fprintf(stderr, "cannot build the bomb\n");
        return 1;
    }
    free(plain);
    void *ctx = zmq_ctx_new();
    pthread_t bt[MAX_BOMBERS], wt;
    ab_worker_t *w = NULL;
    if (s_bombers) {
        ab_options_t *o = ab_options_new();
        ab_options_set_endpoint(o, s_ep);
        ab_options_set_name(o, "bomb-worker");
        int rc = ab_worker_new(&w, o, s_bomb_service, 16);
        ab_options_destroy(&o);
        if (rc != AB_OK) {
            fprintf(stderr, "cannot register %s: %s\n", s_bomb_service, ab_strerror(rc));
            return 1;
        }
        pthread_create(&wt, NULL, s_bomb_worker, w);
        usleep(300 * 1000); /* registered before the first bomb */
        for (int i = 0; i < s_bombers; i++)
            pthread_create(&bt[i], NULL, s_bomber, ctx);
        usleep(300 * 1000); /* the bombs are flowing */
    }
    unsigned long long ok = 0, failed = 0;
    int rc = s_echo_loop(&ok, &failed);
    atomic_store(&s_stop, 1);
    for (int i = 0; i < s_bombers; i++)
        pthread_join(bt[i], NULL);
    if (w) {
        ab_worker_stop(w);
        pthread_join(wt, NULL);
        ab_worker_destroy(&w);
    }
    zmq_ctx_term(ctx);
    free(s_bomb);
    if (rc != 0)
        return 1;
    printf("bomb: %zu bytes %s %u; bombers %d x window %d\n", s_bomb_len,
           s_plain ? "sent plain (control), not declaring" : "declaring", BOMB_ORIGINAL,
           s_bombers, s_window);
    printf("echo: %llu answered, %llu failed in %d s = %.0f req/s\n", ok, failed, s_seconds,
           (double)ok / s_seconds);
    printf("bombs: %llu sent, %llu answered (%llu errors) = %.0f/s\n",
           (unsigned long long)atomic_load(&s_bombs_sent),
           (unsigned long long)atomic_load(&s_bombs_ok) + atomic_load(&s_bombs_err),
           (unsigned long long)atomic_load(&s_bombs_err),
           (double)(atomic_load(&s_bombs_ok) + atomic_load(&s_bombs_err)) / s_seconds);
    return 0;
}
