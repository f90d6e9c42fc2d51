/*
 * nats_rr.c - see nats_rr.h.
 */
#include "nats_rr.h"
#include "tl_clock.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#ifdef AB_HAVE_NATS
#include <nats/nats.h>

struct bn_nats {
    natsConnection *nc;
    natsSubscription *inbox;
    char subject[32], inbox_name[64];
};

static const char *s_subject[2] = {"bench.echo.buffered", "bench.echo.asap"};

static natsConnection *s_connect(int port, int asap)
{
    char url[64];
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", port);
    natsOptions *opts = NULL;
    natsConnection *nc = NULL;
    if (natsOptions_Create(&opts) != NATS_OK)
        return NULL;
    natsOptions_SetURL(opts, url);
    natsOptions_SetSendAsap(opts, asap);
    natsOptions_SetNoEcho(opts, true);
    for (int i = 0; i < 100 && natsConnection_Connect(&nc, opts) != NATS_OK; i++)
        usleep(100000); /* the server is starting */
    natsOptions_Destroy(opts);
    return nc;
}

/* The responder: each request back to its reply subject, as it came. */
static void s_responder(int port, int asap)
{
    natsConnection *nc = s_connect(port, asap);
    natsSubscription *sub = NULL;
    if (!nc || natsConnection_SubscribeSync(&sub, nc, s_subject[asap]) != NATS_OK)
        _exit(1);
    /* A window of requests may wait here: no slow-consumer drops. */
    natsSubscription_SetPendingLimits(sub, -1, -1);
    natsConnection_Flush(nc);
    for (;;) {
        natsMsg *m = NULL;
        if (natsSubscription_NextMsg(&m, sub, 1000) != NATS_OK)
            continue;
        const char *reply = natsMsg_GetReply(m);
        if (reply)
            natsConnection_Publish(nc, reply, natsMsg_GetData(m), natsMsg_GetDataLength(m));
        natsMsg_Destroy(m);
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

int bn_nats_start(int port, pid_t pids[3])
{
    const char *bins[] = {"/usr/sbin/nats-server", "/usr/bin/nats-server"};
    const char *bin = NULL;
    for (int i = 0; i < 2 && !bin; i++)
        if (access(bins[i], X_OK) == 0)
            bin = bins[i];
    if (!bin) {
        fprintf(stderr, "agentbus-bench: no nats-server (apt install nats-server); NATS not "
                        "measured\n");
        return -1;
    }
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    /* Forked before this process calls nats.c: its threads and locks stay
     * out of the children. */
    for (int i = 0; i < 3; i++) {
        pids[i] = s_fork();
        if (pids[i] == 0 && i == 0) {
            int null = open("/dev/null", O_WRONLY); /* its log says nothing we need */
            if (null >= 0)
                dup2(null, 1), dup2(null, 2);
            execl(bin, bin, "-a", "127.0.0.1", "-p", p, (char *)NULL);
            _exit(127);
        }
        if (pids[i] == 0) {
            s_responder(port, i - 1);
            _exit(0);
        }
    }
    return 0;
}

bn_nats_t *bn_nats_client(int port, int asap)
{
    bn_nats_t *n = calloc(1, sizeof *n);
    if (!n || !(n->nc = s_connect(port, asap)))
        goto fail;
    snprintf(n->subject, sizeof n->subject, "%s", s_subject[asap]);
    snprintf(n->inbox_name, sizeof n->inbox_name, "_INBOX.bench.%d.%d", (int)getpid(), asap);
    if (natsConnection_SubscribeSync(&n->inbox, n->nc, n->inbox_name) != NATS_OK)
        goto fail;
    natsSubscription_SetPendingLimits(n->inbox, -1, -1);
    for (int i = 0; i < 100; i++) { /* the responder has subscribed */
        natsMsg *reply = NULL;
        if (natsConnection_Request(&reply, n->nc, n->subject, "x", 1, 200) == NATS_OK) {
            natsMsg_Destroy(reply);
            return n;
        }
        usleep(100000);
    }
fail:
    fprintf(stderr, "agentbus-bench: NATS (%s) did not answer\n", asap ? "asap" : "buffered");
    bn_nats_destroy(&n);
    return NULL;
}

void bn_nats_destroy(bn_nats_t **self_p)
{
    bn_nats_t *n = *self_p;
    if (!n)
        return;
    natsSubscription_Destroy(n->inbox);
    natsConnection_Destroy(n->nc);
    free(n);
    *self_p = NULL;
}

void bn_nats_shutdown(void)
{
    nats_CloseAndWait(2000);
}

/* Takes every reply already delivered to the inbox; returns how many. */
static uint64_t s_drain(bn_nats_t *n, int64_t wait_ms)
{
    uint64_t got = 0;
    natsMsg *m = NULL;
    while (natsSubscription_NextMsg(&m, n->inbox, got ? 0 : wait_ms) == NATS_OK) {
        natsMsg_Destroy(m);
        got++;
    }
    return got;
}

double bn_nats_rr(bn_nats_t *n, const char *buf, size_t size, double seconds, int window)
{
    uint64_t sent = 0, done = 0;
    uint64_t t0 = tl_now_ns(), end = t0 + (uint64_t)(seconds * 1e9);
    while (tl_now_ns() < end) {
        while (sent - done < (uint64_t)window &&
               natsConnection_PublishRequest(n->nc, n->subject, n->inbox_name, buf,
                                             (int)size) == NATS_OK)
            sent++;
        uint64_t got = s_drain(n, 0);
        if (!got && !(got = s_drain(n, 1000)))
            break;
        done += got;
    }
    uint64_t t1 = tl_now_ns();
    double secs = (double)(t1 - t0) / 1e9;
    while (done < sent && tl_now_ns() - t1 < 10000000000ull) /* drain before the next run */
        done += s_drain(n, 100);
    return done < sent ? -1 : (double)done / secs;
}

int bn_nats_lat(bn_nats_t *n, const char *buf, size_t size, int count, tl_hist_t *h)
{
    for (int i = 0; i < count; i++) {
        natsMsg *reply = NULL;
        uint64_t t = tl_now_ns();
        if (natsConnection_Request(&reply, n->nc, n->subject, buf, (int)size, 5000) != NATS_OK)
            return -1;
        if (h)
            tl_hist_record(h, tl_now_ns() - t);
        natsMsg_Destroy(reply);
    }
    return 0;
}

#else /* no libnats */

int bn_nats_start(int port, pid_t pids[3])
{
    (void)port;
    (void)pids;
    fprintf(stderr, "agentbus-bench: built without libnats (apt install libnats-dev); NATS not "
                    "measured\n");
    return -1;
}

bn_nats_t *bn_nats_client(int port, int asap)
{
    (void)port;
    (void)asap;
    return NULL;
}

void bn_nats_destroy(bn_nats_t **self_p)
{
    *self_p = NULL;
}

void bn_nats_shutdown(void)
{
}

double bn_nats_rr(bn_nats_t *n, const char *buf, size_t size, double seconds, int window)
{
    (void)n, (void)buf, (void)size, (void)seconds, (void)window;
    return -1;
}

int bn_nats_lat(bn_nats_t *n, const char *buf, size_t size, int count, tl_hist_t *h)
{
    (void)n, (void)buf, (void)size, (void)count, (void)h;
    return -1;
}

#endif
