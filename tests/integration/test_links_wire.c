/*
 * test_links_wire.c - broker links on the wire (issue 15, docs/links.md):
 * batching and lz4 on links, a peer key bound to its broker name, a
 * hostile peer's directory, model-aware placement across a link. Real
 * processes on loopback, every link CURVE.
 *
 * Keys: each broker NAME has its own peer key NAME (granted that broker
 * name by default), in every broker's keys directory; one admin key for
 * workers, clients and brokerctl. AB_BROKER_KEY is switched to the broker
 * a client is about to talk to (s_at).
 */
#include "harness.h"
#include "test.h"
#include "util.h"
#include "agentbus.pb-c.h"
#include "codec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zmq.h>

static char s_certdir[520];

/* Keys for the test: DIR/certs/{A,B,C,admin}.key(_secret), and EXTRA, a
 * shell command run in the certs directory (may be NULL). */
static void s_keys(const char *extra)
{
    char cmd[3000], out[4096];
    const char *ctl = th_bin("brokerctl");
    snprintf(s_certdir, sizeof s_certdir, "%s/certs", th_dir());
    REQUIRE(mkdir(s_certdir, 0700) == 0);
    snprintf(cmd, sizeof cmd,
             "cd %s && for k in A B C; do %s keygen $k --role peer --out . || exit 1; done && "
             "%s keygen admin --role admin --out . && %s",
             s_certdir, ctl, ctl, extra ? extra : "true");
    REQUIRE(th_run(cmd, out, sizeof out) == 0);
    char path[700];
    snprintf(path, sizeof path, "%s/admin.key_secret", s_certdir);
    setenv("AB_KEY", path, 1);
    setenv("AB_AUTH", "curve", 1);
    unsetenv("AB_BROKER_CERT");
}

/* Makes the next client, worker or th_broker's own probe talk to broker NAME. */
static void s_at(const char *name)
{
    char path[700];
    snprintf(path, sizeof path, "%s/%s.key", s_certdir, name);
    setenv("AB_BROKER_KEY", path, 1);
}

/* Broker NAME with key CERT on PORT, trusting every public key of the
 * certs directory, dialing PEER (a port, 0: none, with PEER_KEY's public
 * key), with up to two more flags. */
static pid_t s_broker(int port, const char *name, const char *cert, int peer, const char *peer_key,
                      const char *f1, const char *v1)
{
    char keys[700], certp[700], pspec[900], cmd[1600], out[256];
    snprintf(keys, sizeof keys, "%s/keys-%s", th_dir(), name);
    snprintf(cmd, sizeof cmd, "mkdir -p %s && cp %s/*.key %s/", keys, s_certdir, keys);
    REQUIRE(th_run(cmd, out, sizeof out) == 0);
    snprintf(certp, sizeof certp, "%s/%s.key", s_certdir, cert);
    snprintf(pspec, sizeof pspec, "tcp://127.0.0.1:%d#%s/%s.key", peer, s_certdir,
             peer_key ? peer_key : "");
    s_at(cert);
    return th_broker(port, "--name", name, "--keys-dir", keys, "--broker-cert", certp,
                     "--link-heartbeat-ms", "100", "--peer", peer ? pspec : "", "--batch", "1",
                     f1 ? f1 : "--queue-max", v1 ? v1 : "10000", NULL);
}

/* C's link to NAME (copied into *OUT, its state into STATE), or 0. */
static int s_peer_info(ab_client_t *c, const char *name, Agentbus__PeerInfo *out, char *state,
                       size_t cap)
{
    void *buf = NULL;
    size_t len = 0;
    if (ab_client_control(c, "peers", 3000, &buf, &len) != AB_OK)
        return 0;
    Agentbus__PeerList *pl = agentbus__peer_list__unpack(NULL, len, buf);
    ab_free(buf);
    int found = 0;
    for (size_t i = 0; pl && i < pl->n_peers && !found; i++)
        if (!strcmp(pl->peers[i]->name, name)) {
            *out = *pl->peers[i];
            out->name = out->endpoint = out->state = out->transport = NULL;
            snprintf(state, cap, "%s", pl->peers[i]->state);
            found = 1;
        }
    if (pl)
        agentbus__peer_list__free_unpacked(pl, NULL);
    return found;
}

/* Waits until C's link to NAME is up. 0 or -1. */
static int s_wait_up(ab_client_t *c, const char *name, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    do {
        Agentbus__PeerInfo pi;
        char st[32] = "";
        if (s_peer_info(c, name, &pi, st, sizeof st) && !strcmp(st, "up"))
            return 0;
        th_sleep_ms(20);
    } while (ab_now_ms() < end);
    return -1;
}

static int s_req(ab_client_t *c, const char *svc, const char *data, char *out, size_t cap)
{
    void *reply = NULL;
    size_t n = 0;
    int rc = ab_client_request(c, svc, data, strlen(data), 10000, &reply, &n);
    if (out)
        snprintf(out, cap, "%.*s", rc == AB_OK ? (int)n : 0, rc == AB_OK ? (char *)reply : "");
    ab_free(reply);
    return rc;
}

/* Waits until a request to SVC on C succeeds (the directory reached it). */
static int s_wait_ok(ab_client_t *c, const char *svc, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    do {
        if (s_req(c, svc, "probe", NULL, 0) == AB_OK)
            return 0;
        th_sleep_ms(50);
    } while (ab_now_ms() < end);
    return -1;
}

/* Waits until FILE contains TEXT. 1 or 0. */
static int s_wait_log(const char *file, const char *text, int timeout_ms)
{
    char cmd[1500], out[256];
    snprintf(cmd, sizeof cmd, "grep -qF -- \"%s\" %s", text, file);
    int64_t end = ab_now_ms() + timeout_ms;
    do {
        if (th_run(cmd, out, sizeof out) == 0)
            return 1;
        th_sleep_ms(50);
    } while (ab_now_ms() < end);
    return 0;
}

/* --- batching and lz4 ----------------------------------------------------------------- */

#define BURST 200

typedef struct {
    int ok, bad, done;
    const char *want;
    size_t want_len;
} s_burst_t;

static void s_burst_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    s_burst_t *s = arg;
    if (!ev->final)
        return;
    s->done++;
    if (ev->status == AB_OK && ev->size == s->want_len && !memcmp(ev->data, s->want, ev->size))
        s->ok++;
    else
        s->bad++;
}

/* Clients and workers do not batch here (AB_BATCH=0), so the BATCHes the
 * brokers receive are the link's: A's requests gathered onto its dialed
 * connection (B's batches_in) and B's answers gathered onto the accepted
 * one (A's batches_in). Payloads of 600 compressible bytes (under the
 * clients' 1 KiB threshold) are compressed on the link both ways, and
 * every request is answered once, intact. */
static void s_batched(void)
{
    setenv("AB_BATCH", "0", 1);
    s_keys(NULL);
    int pa = th_free_port(), pb = th_free_port();
    s_broker(pb, "B", "B", 0, NULL, NULL, NULL);
    s_broker(pa, "A", "A", pb, "B", NULL, NULL);
    s_at("B");
    th_worker(pb, "echo", "--capacity", "64", NULL);
    ab_client_t *b = th_client(pb);
    s_at("A");
    ab_client_t *a = th_client(pa);
    REQUIRE(s_wait_up(a, "B", 20000) == 0);
    REQUIRE(s_wait_ok(a, "echo", 20000) == 0);
    char payload[601];
    for (int i = 0; i < 600; i++)
        payload[i] = "link batching "[i % 14];
    payload[600] = '\0';
    uint64_t a_in = 0, b_in = 0;
    for (int round = 0; round < 20 && (!a_in || !b_in); round++) {
        s_burst_t s = {.want = payload, .want_len = 600};
        for (int i = 0; i < BURST; i++)
            REQUIRE(ab_client_request_start(a, "echo", payload, 600,
                                            &(ab_request_opts_t){.timeout_ms = 20000}, s_burst_cb,
                                            &s, NULL) == AB_OK);
        for (int i = 0; i < 2000 && s.done < BURST; i++)
            ab_client_poll(a, 20);
        CHECK_EQ(s.done, BURST);
        CHECK_EQ(s.ok, BURST);
        CHECK_EQ(s.bad, 0);
        Agentbus__Stats *sa = th_stats(a), *sb = th_stats(b);
        REQUIRE(sa && sb);
        a_in = sa->batches_in, b_in = sb->batches_in;
        CHECK_EQ(sa->batch_malformed, 0);
        CHECK_EQ(sb->batch_malformed, 0);
        agentbus__stats__free_unpacked(sa, NULL);
        agentbus__stats__free_unpacked(sb, NULL);
    }
    printf("batches received: A %llu (answers), B %llu (requests)\n", (unsigned long long)a_in,
           (unsigned long long)b_in);
    CHECK_TRUE(a_in > 0);
    CHECK_TRUE(b_in > 0);
    Agentbus__PeerInfo pi;
    char st[32];
    REQUIRE(s_peer_info(a, "B", &pi, st, sizeof st));
    printf("A compressed %llu requests onto the link\n", (unsigned long long)pi.compressed);
    CHECK_TRUE(pi.compressed > 0);
    REQUIRE(s_peer_info(b, "A", &pi, st, sizeof st));
    printf("B compressed %llu answers onto the link\n", (unsigned long long)pi.compressed);
    CHECK_TRUE(pi.compressed > 0);
    ab_client_destroy(&a);
    ab_client_destroy(&b);
    unsetenv("AB_BATCH");
}

/* --- a peer key is bound to its broker name -------------------------------------------- */

/* A broker proving key C (granted broker name C) but calling itself Z is
 * refused by A (logged, counted DENIED) and never listed; key M, made with
 * --names 'X,Y', links as broker Y. */
static void s_name_bound(void)
{
    s_keys("AB_AUTH= " AB_BIN_DIR "/brokerctl keygen M --role peer --names 'X,Y' --out .");
    int pa = th_free_port(), pz = th_free_port(), py = th_free_port();
    pid_t apid = s_broker(pa, "A", "A", 0, NULL, NULL, NULL);
    s_broker(pz, "Z", "C", pa, "A", NULL, NULL);
    s_at("A");
    ab_client_t *a = th_client(pa);
    CHECK_EQ(s_wait_log(th_log_of(apid), "broker name 'Z' is not granted to key 'C'", 20000), 1);
    Agentbus__Stats *st = th_stats(a);
    REQUIRE(st != NULL);
    CHECK_TRUE(th_stat_error(st, "DENIED") > 0);
    agentbus__stats__free_unpacked(st, NULL);
    Agentbus__PeerInfo pi;
    char state[32];
    CHECK_EQ(s_peer_info(a, "Z", &pi, state, sizeof state), 0);
    s_broker(py, "Y", "M", pa, "A", NULL, NULL);
    s_at("A");
    CHECK_EQ(s_wait_up(a, "Y", 20000), 0);
    CHECK_EQ(s_peer_info(a, "Z", &pi, state, sizeof state), 0);
    ab_client_destroy(&a);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"batched", s_batched},
        {"name_bound", s_name_bound},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
