/*
 * agentbus-attack-names - what distinct offline agent names cost a broker.
 *
 * Starts a broker (from --bin-dir, on a free loopback port, with the flags
 * after "--"), then one raw DEALER sends one small SEND to each of N
 * distinct names nobody holds (each creates a mailbox record), with at most
 * --window unanswered at once (credit = 1: the broker answers "queued" or
 * BUSY). Prints the broker's resident memory (VmRSS) before and after, the
 * difference per queued name, and the broker's own accounting. The broker is
 * stopped by its PID at the end.
 *
 *   agentbus-attack-names [--names N] [--ttl-ms MS] [--window W]
 *                         [--bin-dir DIR] [-- broker flags...]
 *
 * Example (issue 11): agentbus-attack-names --names 300000 -- \
 *     --mailbox-max-names 1000000 --mailbox-total-bytes 4G
 */
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "attack_util.h"
#include "tl_clock.h"
#include "tl_args.h"
#include "tl_port.h"

#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

static const char s_prog[] = "agentbus-attack-names"; /* for at_num's messages */

/* Asks the broker for its stats: the decoded Stats, or NULL after 3 s. */
static Agentbus__Stats *s_stats(void *s)
{
    return at_stats(s, 1u << 30, 3000);
}

static void s_usage(FILE *f, const char *argv0)
{
    fprintf(f, "usage: %s [--names N] [--ttl-ms MS] [--window W] [--bin-dir DIR]"
               " [-- broker flags...]\n", argv0);
}

/* Reads the answers waiting on S: counts REPLY (queued) and ERROR (refused). */
static void s_drain(void *s, long *queued, long *refused, int timeout_ms)
{
    zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, timeout_ms) <= 0)
        return;
    for (;;) {
        zmq_msg_t hdr;
        zmq_msg_init(&hdr);
        if (zmq_msg_recv(&hdr, s, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&hdr);
            return;
        }
        at_reply_t r;
        if (at_parse(zmq_msg_data(&hdr), zmq_msg_size(&hdr), &r) == 0) {
            *queued += r.kind == AT_KIND(REPLY);
            *refused += r.kind == AT_KIND(ERROR);
        }
        while (zmq_msg_more(&hdr)) {
            zmq_msg_t part;
            zmq_msg_init(&part);
            zmq_msg_recv(&part, s, 0);
            int more = zmq_msg_more(&part);
            zmq_msg_close(&part);
            if (!more)
                break;
        }
        zmq_msg_close(&hdr);
    }
}

int main(int argc, char **argv)
{
    long names = 100000, ttl_ms = 0, window = 1000;
    char bin_dir[PATH_MAX];
    char *real = realpath(argv[0], NULL);
    snprintf(bin_dir, sizeof bin_dir, "%s", dirname(real ? real : argv[0]));
    free(real);
    if (at_info_asked(argc, argv, "agentbus-attack-names", s_usage))
        return 0;
    int i = 1;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        } else if (strcmp(argv[i], "--names") == 0 && i + 1 < argc) {
            names = at_num(s_prog, argv[i], argv[i + 1], 1, 100000000), i++;
        } else if (strcmp(argv[i], "--ttl-ms") == 0 && i + 1 < argc) {
            ttl_ms = at_num(s_prog, argv[i], argv[i + 1], 0, 86400000), i++;
        } else if (strcmp(argv[i], "--window") == 0 && i + 1 < argc) {
            window = at_num(s_prog, argv[i], argv[i + 1], 1, 1000000), i++;
        } else if (strcmp(argv[i], "--bin-dir") == 0 && i + 1 < argc) {
            snprintf(bin_dir, sizeof bin_dir, "%s", argv[++i]);
        } else {
            s_usage(stderr, argv[0]);
            return 2;
        }
    }
    int port = tl_free_port();
    char ep[64], bind[80], path[PATH_MAX + 32];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", port);
    snprintf(bind, sizeof bind, "--bind=%s", ep);
    snprintf(path, sizeof path, "%s/agentbus-broker", bin_dir);
    const char *bargv[64] = {path, bind, "--log-level", "warn"};
    int bn = 4;
    for (; i < argc && bn < 63; i++)
        bargv[bn++] = argv[i];
    bargv[bn] = NULL;
    pid_t broker = at_spawn(path, bargv, 0);
    void *ctx = zmq_ctx_new(), *s = at_dealer(ctx, ep);
    Agentbus__Stats *st = NULL;
    for (int k = 0; k < 10 && s && !st; k++)
        st = s_stats(s);
    if (!st) {
        fprintf(stderr, "broker %s did not answer\n", path);
        at_kill(broker);
        return 1;
    }
    agentbus__stats__free_unpacked(st, NULL);
    long before = at_rss_kb(broker), queued = 0, refused = 0;
    int64_t t0 = tl_now_ms(), last_beat = 0;
    for (long n = 0; n < names; n++) {
        char name[64];
        snprintf(name, sizeof name, "offline-%ld", n);
        Agentbus__Header h = at_header(AT_KIND(SEND));
        h.id = (uint64_t)n + 1;
        h.target = (char *)name;
        h.credit = 1; /* answer: queued or refused */
        h.timeout_ms = (uint32_t)ttl_ms;
        at_send(s, &h, "hello", 5);
        while (n + 1 - queued - refused >= window)
            s_drain(s, &queued, &refused, 100);
        if (tl_now_ms() - last_beat > 200) { /* stay a live peer */
            Agentbus__Header hb = at_header(AT_KIND(HEARTBEAT));
            at_send(s, &hb, NULL, 0);
            last_beat = tl_now_ms();
        }
    }
    int64_t end = tl_now_ms() + 10000;
    while (queued + refused < names && tl_now_ms() < end)
        s_drain(s, &queued, &refused, 100);
    long after = at_rss_kb(broker);
    st = s_stats(s);
    printf("names sent %ld in %.1f s: queued %ld, refused %ld\n", names,
           (double)(tl_now_ms() - t0) / 1000.0, queued, refused);
    printf("broker VmRSS %ld KiB before, %ld KiB after: +%.1f MiB, %.0f bytes per queued name\n",
           before, after, (double)(after - before) / 1024.0,
           queued ? (double)(after - before) * 1024.0 / (double)queued : 0.0);
    if (st) {
        printf("broker: offline_names %u, mailbox_msgs %u, mailbox_charged_bytes %llu "
               "(%.0f per name), msgs_refused %llu\n",
               st->offline_names, st->mailbox_msgs,
               (unsigned long long)st->mailbox_charged_bytes,
               st->offline_names ? (double)st->mailbox_charged_bytes / st->offline_names : 0.0,
               (unsigned long long)st->msgs_refused);
        agentbus__stats__free_unpacked(st, NULL);
    }
    zmq_close(s);
    zmq_ctx_term(ctx);
    at_stop(broker);
    return 0;
}
