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
#include "linktest.h"
#include "ollamatest.h"
#include "test.h"
#include "util.h"
#include "agentbus.pb-c.h"
#include "batch.h"
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
    REQUIRE(lt_wait_link(a, "B", 1, 20000) == 0);
    REQUIRE(lt_wait_rc(a, "echo", AB_OK, 20000) == 0);
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
    /* Link records are peer brokers in stats, not agents or workers: A has
     * no worker of its own, one remote service; B its one echo worker. */
    Agentbus__Stats *sa = th_stats(a), *sb = th_stats(b);
    REQUIRE(sa && sb);
    CHECK_EQ(sa->workers, 0);
    CHECK_EQ(sa->remote_workers, 1);
    CHECK_EQ(sa->peer_brokers, 1);
    CHECK_EQ(sb->workers, 1);
    CHECK_EQ(sb->remote_workers, 0);
    CHECK_EQ(sb->peer_brokers, 1);
    CHECK_TRUE(sa->agents <= 1 && sb->agents <= 1); /* the test's clients at most */
    agentbus__stats__free_unpacked(sa, NULL);
    agentbus__stats__free_unpacked(sb, NULL);
    printf("batches received: A %llu (answers), B %llu (requests)\n", (unsigned long long)a_in,
           (unsigned long long)b_in);
    CHECK_TRUE(a_in > 0);
    CHECK_TRUE(b_in > 0);
    Agentbus__PeerInfo pi;
    char st[32];
    REQUIRE(lt_peer_info(a, "B", &pi, st, sizeof st));
    printf("A compressed %llu requests onto the link\n", (unsigned long long)pi.compressed);
    CHECK_TRUE(pi.compressed > 0);
    REQUIRE(lt_peer_info(b, "A", &pi, st, sizeof st));
    printf("B compressed %llu answers onto the link\n", (unsigned long long)pi.compressed);
    CHECK_TRUE(pi.compressed > 0);
    /* brokerctl peers --json shows both figures (docs/links.md); it left
     * them out, so an operator could not see what the link compressed. */
    char cmd[1200], json[8192], want[64];
    s_at("B");
    snprintf(cmd, sizeof cmd, "%s --broker %s peers --json", th_bin("brokerctl"), th_ep(pb));
    CHECK_EQ(th_run(cmd, json, sizeof json), 0);
    snprintf(want, sizeof want, "\"compressed\": %llu", (unsigned long long)pi.compressed);
    printf("brokerctl peers --json: %s\n", json);
    CHECK_TRUE(strstr(json, want) != NULL);
    CHECK_TRUE(strstr(json, "\"dir_refused\": 0") != NULL);
    ab_client_destroy(&a);
    ab_client_destroy(&b);
    unsetenv("AB_BATCH");
}

/* --- the link's pipeline ---------------------------------------------------------------- */

/* Queue depth of SVC on the broker C talks to, -1 when it lists none. */
static int s_queue_of(ab_client_t *c, const char *svc)
{
    Agentbus__Stats *st = th_stats(c);
    int q = -1;
    for (size_t i = 0; st && i < st->n_services; i++)
        if (!strcmp(st->services[i]->name, svc))
            q = (int)st->services[i]->queue_depth;
    if (st)
        agentbus__stats__free_unpacked(st, NULL);
    return q;
}

/* Capacity of the remote worker link:PEER on the broker C talks to, 0 if none. */
static uint32_t s_link_capacity(ab_client_t *c, const char *peer)
{
    char name[80];
    snprintf(name, sizeof name, "link:%s", peer);
    Agentbus__WorkerList *wl = th_workers(c);
    uint32_t cap = 0;
    for (size_t i = 0; wl && i < wl->n_workers; i++)
        if (!strcmp(wl->workers[i]->name, name))
            cap = wl->workers[i]->capacity;
    if (wl)
        agentbus__worker_list__free_unpacked(wl, NULL);
    return cap;
}

/* A (default link-credit-pct 200) may hold twice B's announced capacity
 * at B: B queues what its worker cannot take yet, A the rest. C
 * (link-credit-pct 100) never has more at B than B's workers take, so B
 * queues nothing of C's. Every request is answered once, in both. */
static void s_pipeline(void)
{
    s_keys(NULL);
    int pa = th_free_port(), pb = th_free_port(), pc = th_free_port();
    s_broker(pb, "B", "B", 0, NULL, NULL, NULL);
    s_broker(pa, "A", "A", pb, "B", NULL, NULL);
    s_broker(pc, "C", "C", pb, "B", "--link-credit-pct", "100");
    s_at("B");
    th_worker(pb, "slow", "--capacity", "2", "--delay-ms", "1500", NULL);
    ab_client_t *b = th_client(pb);
    s_at("A");
    ab_client_t *a = th_client(pa);
    s_at("C");
    ab_client_t *c = th_client(pc);
    REQUIRE(lt_wait_rc(a, "slow", AB_OK, 20000) == 0);
    REQUIRE(lt_wait_rc(c, "slow", AB_OK, 20000) == 0);
    CHECK_EQ(s_link_capacity(a, "B"), 4);
    CHECK_EQ(s_link_capacity(c, "B"), 2);
    for (int round = 0; round < 2; round++) {
        ab_client_t *from = round ? c : a;
        const int n = 8, at_b = round ? 2 : 4;
        s_burst_t s = {.want = "p", .want_len = 1};
        for (int i = 0; i < n; i++)
            REQUIRE(ab_client_request_start(from, "slow", "p", 1,
                                            &(ab_request_opts_t){.timeout_ms = 30000},
                                            s_burst_cb, &s, NULL) == AB_OK);
        /* The state to reach: the first broker queues N - AT_B, the far
         * one AT_B - 2 (its worker holds 2). */
        int qa = -2, qb = -2, max_qb = 0;
        for (int i = 0; i < 400 && !(qa == n - at_b && qb == at_b - 2); i++) {
            ab_client_poll(from, 10);
            qa = s_queue_of(from, "slow");
            qb = s_queue_of(b, "slow");
            max_qb = qb > max_qb ? qb : max_qb;
        }
        printf("%s: queued %d there, %d at B\n", round ? "C" : "A", qa, qb);
        CHECK_EQ(qa, n - at_b);
        CHECK_EQ(qb, at_b - 2);
        for (int i = 0; i < 1000 && s.done < n; i++) {
            ab_client_poll(from, 20);
            if (round) { /* C's requests never wait in B's queue */
                int q = s_queue_of(b, "slow");
                max_qb = q > max_qb ? q : max_qb;
            }
        }
        CHECK_EQ(s.done, n);
        CHECK_EQ(s.ok, n);
        if (round)
            CHECK_EQ(max_qb, 0);
    }
    ab_client_destroy(&a);
    ab_client_destroy(&b);
    ab_client_destroy(&c);
}

/* Requests A forwarded and its client then cancelled: B answers each
 * CANCEL (ERROR CANCELLED), as a worker does, so A frees them and gets the
 * link's credit back. Before, B cancelled and answered nothing: A kept
 * them pending for the life of the link, and once they filled the link's
 * credit (twice B's capacity) nothing more crossed it (DEADLINE). */
static uint64_t s_pending_of(ab_client_t *c)
{
    Agentbus__Stats *st = th_stats(c);
    uint64_t n = st ? st->pending : UINT64_MAX;
    if (st)
        agentbus__stats__free_unpacked(st, NULL);
    return n;
}

static void s_cancel_credit(void)
{
    s_keys(NULL);
    int pa = th_free_port(), pb = th_free_port();
    s_broker(pb, "B", "B", 0, NULL, NULL, NULL);
    s_broker(pa, "A", "A", pb, "B", NULL, NULL);
    s_at("B");
    th_worker(pb, "slow", "--capacity", "2", "--delay-ms", "1500", NULL);
    s_at("A");
    ab_client_t *a = th_client(pa);
    REQUIRE(lt_wait_rc(a, "slow", AB_OK, 20000) == 0);
    CHECK_EQ(s_link_capacity(a, "B"), 4);
    for (int round = 0; round < 2; round++) { /* 8 cancelled: twice the credit */
        s_burst_t s = {.want = "p", .want_len = 1};
        uint64_t ids[4];
        for (int i = 0; i < 4; i++)
            REQUIRE(ab_client_request_start(a, "slow", "p", 1,
                                            &(ab_request_opts_t){.timeout_ms = 30000},
                                            s_burst_cb, &s, &ids[i]) == AB_OK);
        Agentbus__PeerInfo pi;
        char st[32];
        for (int i = 0; i < 400; i++) { /* all four at B */
            ab_client_poll(a, 10);
            if (lt_peer_info(a, "B", &pi, st, sizeof st) && pi.forwarded >= 4u * (round + 1))
                break;
        }
        CHECK_TRUE(pi.forwarded >= 4u * (round + 1));
        for (int i = 0; i < 4; i++)
            CHECK_EQ(ab_client_cancel(a, ids[i]), AB_OK);
        uint64_t pending = UINT64_MAX;
        for (int i = 0; i < 400 && pending; i++) {
            ab_client_poll(a, 50);
            pending = s_pending_of(a);
        }
        CHECK_U64(pending, 0);
    }
    /* The link's credit is whole: a new request crosses it. */
    s_burst_t s = {.want = "q", .want_len = 1};
    REQUIRE(ab_client_request_start(a, "slow", "q", 1, &(ab_request_opts_t){.timeout_ms = 20000},
                                    s_burst_cb, &s, NULL) == AB_OK);
    for (int i = 0; i < 1000 && !s.done; i++)
        ab_client_poll(a, 25);
    CHECK_EQ(s.ok, 1);
    ab_client_destroy(&a);
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
    CHECK_EQ(lt_peer_info(a, "Z", &pi, state, sizeof state), 0);
    s_broker(py, "Y", "M", pa, "A", NULL, NULL);
    s_at("A");
    CHECK_EQ(lt_wait_link(a, "Y", 1, 20000), 0);
    CHECK_EQ(lt_peer_info(a, "Z", &pi, state, sizeof state), 0);
    ab_client_destroy(&a);
}

/* The dialing side checks too: A dials the broker on PZ with key C, which
 * A trusts and which is granted broker name C only; that broker answers
 * HELLO as Z. A refuses the link (logged, counted DENIED): it never lists
 * Z, and its echo worker there is not offered here. */
static void s_name_dialed(void)
{
    s_keys(NULL);
    int pa = th_free_port(), pz = th_free_port();
    pid_t zpid = s_broker(pz, "Z", "C", 0, NULL, NULL, NULL);
    s_at("C");
    th_worker(pz, "echo", NULL);
    pid_t apid = s_broker(pa, "A", "A", pz, "C", NULL, NULL);
    s_at("A");
    ab_client_t *a = th_client(pa);
    /* Z accepted A's HELLO (A's key is granted A) and answered as Z */
    CHECK_EQ(s_wait_log(th_log_of(zpid), "link to 'A' up", 20000), 1);
    CHECK_EQ(s_wait_log(th_log_of(apid),
                        "answered as broker 'Z', a name not granted to its key 'C': refused",
                        20000),
             1);
    Agentbus__Stats *st = th_stats(a);
    REQUIRE(st != NULL);
    CHECK_TRUE(th_stat_error(st, "DENIED") > 0);
    CHECK_EQ(st->remote_workers, 0);
    agentbus__stats__free_unpacked(st, NULL);
    Agentbus__PeerInfo pi;
    char state[32];
    CHECK_EQ(lt_peer_info(a, "Z", &pi, state, sizeof state), 0);
    CHECK_EQ(lt_req(a, "echo", "x", NULL, 0), AB_ENOSERVICE);
    ab_client_destroy(&a);
}

/* --- a hostile peer's directory ---------------------------------------------------------- */

/* FIELD ("public-key" or "secret-key") of certificate file PATH (zcert's
 * text format, as brokerctl keygen writes it) into OUT (41 bytes). */
static void s_key_field(const char *path, const char *field, char *out)
{
    FILE *f = fopen(path, "r");
    char line[256];
    out[0] = '\0';
    while (f && fgets(line, sizeof line, f)) {
        const char *k = strstr(line, field), *q = k ? strchr(k, '"') : NULL;
        if (q && strlen(q) > 41 && q[41] == '"') {
            memcpy(out, q + 1, 40);
            out[40] = '\0';
        }
    }
    if (f)
        fclose(f);
    REQUIRE(strlen(out) == 40);
}

/* A raw CURVE DEALER proving key NAME, dialing broker SERVER on PORT. */
static void *s_fake_peer(void *ctx, int port, const char *name, const char *server)
{
    char path[700], pub[41], sec[41], srv[41];
    snprintf(path, sizeof path, "%s/%s.key_secret", s_certdir, name);
    s_key_field(path, "public-key", pub);
    s_key_field(path, "secret-key", sec);
    snprintf(path, sizeof path, "%s/%s.key", s_certdir, server);
    s_key_field(path, "public-key", srv);
    void *d = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(d, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(d, ZMQ_CURVE_SERVERKEY, srv, 41);
    zmq_setsockopt(d, ZMQ_CURVE_PUBLICKEY, pub, 41);
    zmq_setsockopt(d, ZMQ_CURVE_SECRETKEY, sec, 41);
    REQUIRE(zmq_connect(d, th_ep(port)) == 0);
    return d;
}

/* Sends LinkMsg M on D as a LINK message. */
static void s_fake_send(void *d, const Agentbus__LinkMsg *m)
{
    size_t n = agentbus__link_msg__get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1), hb[128];
    REQUIRE(buf != NULL);
    agentbus__link_msg__pack(m, buf);
    ab_header_t h = ab_header_init(AB_KIND_LINK);
    size_t hl = ab_header_encode(&h, hb, sizeof hb);
    REQUIRE(zmq_send(d, hb, hl, ZMQ_SNDMORE) == (int)hl);
    REQUIRE(zmq_send(d, buf, n, 0) == (int)n);
    free(buf);
}

/* Says HELLO as broker NAME on D until the broker answers WELCOME; the
 * session (42 + AGAIN) is the fake broker's start. 0 or -1. */
static int s_fake_hello_n(void *d, const char *name, uint64_t again)
{
    Agentbus__LinkMsg m = AGENTBUS__LINK_MSG__INIT;
    m.type = 1;
    m.broker = (char *)name;
    m.session = 42 + again;
    for (int tries = 0; tries < 100; tries++) {
        s_fake_send(d, &m);
        zmq_pollitem_t it = {d, 0, ZMQ_POLLIN, 0};
        while (zmq_poll(&it, 1, 200) == 1) {
            zmq_msg_t f[2];
            zmq_msg_init(&f[0]);
            zmq_msg_init(&f[1]);
            int n = zmq_msg_recv(&f[0], d, 0) >= 0 && zmq_msg_more(&f[0]) &&
                    zmq_msg_recv(&f[1], d, 0) >= 0;
            Agentbus__LinkMsg *w =
                n ? agentbus__link_msg__unpack(NULL, zmq_msg_size(&f[1]), zmq_msg_data(&f[1]))
                  : NULL;
            int welcome = w && w->type == 2;
            if (w)
                agentbus__link_msg__free_unpacked(w, NULL);
            zmq_msg_close(&f[0]);
            zmq_msg_close(&f[1]);
            if (welcome)
                return 0;
        }
    }
    return -1;
}

static int s_fake_hello(void *d, const char *name)
{
    return s_fake_hello_n(d, name, 0);
}

/* A directory of N entries named PREFIX<i> padded to NAMELEN characters. */
static void s_fake_dir(void *d, size_t n, const char *prefix, size_t namelen)
{
    Agentbus__LinkService *es = calloc(n ? n : 1, sizeof *es);
    Agentbus__LinkService **ps = calloc(n ? n : 1, sizeof *ps);
    char *names = calloc(n ? n : 1, namelen + 32);
    REQUIRE(es && ps && names);
    for (size_t i = 0; i < n; i++) {
        char *nm = names + i * (namelen + 32);
        int k = snprintf(nm, namelen + 32, "%s%zu", prefix, i);
        while ((size_t)k < namelen)
            nm[k++] = 'x';
        nm[k] = '\0';
        agentbus__link_service__init(&es[i]);
        es[i].name = nm;
        es[i].capacity = 4;
        es[i].workers = 1;
        ps[i] = &es[i];
    }
    Agentbus__LinkMsg m = AGENTBUS__LINK_MSG__INIT;
    m.type = 4;
    m.broker = (char *)"C";
    m.full = 1;
    m.n_services = n;
    m.services = ps;
    s_fake_send(d, &m);
    free(es);
    free(ps);
    free(names);
}

/* Waits until A's link to C shows SERVICES services and at least REFUSED
 * refused directories. 0 or -1. */
static int s_wait_dir(ab_client_t *a, uint32_t services, uint64_t refused, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    do {
        Agentbus__PeerInfo pi;
        char st[32];
        if (lt_peer_info(a, "C", &pi, st, sizeof st) && pi.services == services &&
            pi.dir_refused >= refused)
            return 0;
        th_sleep_ms(50);
    } while (ab_now_ms() < end);
    return -1;
}

/* A raw peer proving key C opens a link to A and announces directories:
 * one over link-dir-max-bytes (refused whole and counted, nothing taken),
 * one of 3000 services (1024 taken), names too long (malformed, skipped),
 * then a small one that replaces them all. A stays up and serves. */
static void s_hostile_dir(void)
{
    s_keys(NULL);
    int pa = th_free_port();
    setenv("AB_LINK_DIR_MAX_BYTES", "65536", 1);
    pid_t apid = s_broker(pa, "A", "A", 0, NULL, "--link-heartbeat-ms", "5000");
    unsetenv("AB_LINK_DIR_MAX_BYTES");
    th_worker(pa, "echo", NULL);
    ab_client_t *a = th_client(pa);
    void *ctx = zmq_ctx_new();
    void *d = s_fake_peer(ctx, pa, "C", "A");
    REQUIRE(s_fake_hello(d, "C") == 0);
    REQUIRE(lt_wait_link(a, "C", 1, 20000) == 0);
    s_fake_dir(d, 2000, "big-", 200); /* ~420 KB */
    CHECK_EQ(s_wait_dir(a, 0, 1, 20000), 0);
    s_fake_dir(d, 3000, "h", 8); /* ~45 KB: within bytes, over the entry bound */
    CHECK_EQ(s_wait_dir(a, 1024, 1, 20000), 0);
    Agentbus__Stats *st = th_stats(a);
    REQUIRE(st != NULL);
    uint64_t malformed = st->malformed;
    agentbus__stats__free_unpacked(st, NULL);
    s_fake_dir(d, 3, "long-", 300); /* names over AB_NAME_MAX: each refused */
    CHECK_EQ(s_wait_dir(a, 0, 1, 20000), 0);
    st = th_stats(a);
    REQUIRE(st != NULL);
    CHECK_TRUE(st->malformed >= malformed + 3);
    agentbus__stats__free_unpacked(st, NULL);
    s_fake_dir(d, 2, "ok-", 4);
    CHECK_EQ(s_wait_dir(a, 2, 1, 20000), 0);
    CHECK_EQ(lt_req(a, "echo", "still here", NULL, 0), AB_OK);
    CHECK_EQ(th_alive(apid), 1);
    zmq_close(d);
    zmq_ctx_term(ctx);
    ab_client_destroy(&a);
}

/* --- a peer broker's senders ------------------------------------------------------------ */

/* Sends a SEND from SENDER to TARGET (id ID, answering CORR) on the raw
 * link D, as a peer broker passes one on: a forwarded id (its top bit) and
 * an agent as its origin (origin_role is the key role + 1; agent is 0). */
#define S_FWD_ID(n) ((1ull << 63) | (n))
static void s_fake_kind(void *d, uint32_t kind, uint64_t id, const char *sender,
                        const char *target, uint64_t corr, const char *text)
{
    ab_header_t h = ab_header_init(kind);
    h.id = S_FWD_ID(id);
    h.origin_role = 1;
    h.sender = ab_view_of(sender);
    h.target = ab_view_of(target);
    h.correlation_id = corr;
    uint8_t hb[256];
    size_t hl = ab_header_encode(&h, hb, sizeof hb);
    REQUIRE(hl > 0);
    REQUIRE(zmq_send(d, hb, hl, ZMQ_SNDMORE) == (int)hl);
    REQUIRE(zmq_send(d, text, strlen(text), 0) == (int)strlen(text));
}

static void s_fake_msg(void *d, uint64_t id, const char *sender, const char *target,
                       uint64_t corr, const char *text)
{
    s_fake_kind(d, AB_KIND_SEND, id, sender, target, corr, text);
}

/* The error code of H when it is the ERROR answering ID, else -1. */
static int s_error_for(const ab_header_t *h, uint64_t id)
{
    return h->kind == AB_KIND_ERROR && h->correlation_id == id ? (int)h->error_code : -1;
}

/* The error code of the ERROR answering ID on D (alone or in a BATCH)
 * within TIMEOUT_MS, or -1. Clients CS (N) are polled meanwhile. */
static int s_fake_error(void *d, uint64_t id, int timeout_ms, ab_client_t **cs, int n)
{
    int64_t end = ab_now_ms() + timeout_ms;
    zmq_pollitem_t it = {d, 0, ZMQ_POLLIN, 0};
    int code = -1;
    while (code < 0 && ab_now_ms() < end && zmq_poll(&it, 1, 20) >= 0) {
        for (int i = 0; i < n; i++)
            ab_client_poll(cs[i], 0);
        zmq_msg_t f[2];
        zmq_msg_init(&f[0]);
        zmq_msg_init(&f[1]);
        if (zmq_msg_recv(&f[0], d, ZMQ_DONTWAIT) >= 0) {
            int nf = 1;
            while (zmq_msg_more(&f[nf - 1]) && nf < 2 && zmq_msg_recv(&f[nf], d, 0) >= 0)
                nf++;
            ab_frame_t fr[2] = {{zmq_msg_data(&f[0]), zmq_msg_size(&f[0])},
                                {zmq_msg_data(&f[1]), zmq_msg_size(&f[1])}}, pl;
            ab_header_t h;
            ab_batch_entries_t es = {0};
            if (ab_msg_decode(fr, (size_t)nf, NULL, &h, &pl) == AB_OK) {
                code = s_error_for(&h, id);
                if (h.kind == AB_KIND_BATCH && pl.data &&
                    ab_batch_decode(&es, pl.data, pl.size, NULL) == AB_OK)
                    for (uint32_t i = 0; i < es.n && code < 0; i++)
                        code = s_error_for(&es.e[i].h, id);
            }
            ab_batch_entries_fini(&es);
        }
        zmq_msg_close(&f[0]);
        zmq_msg_close(&f[1]);
    }
    return code;
}

static ab_client_t *s_named(int port, const char *name)
{
    ab_options_t *o = ab_options_new();
    REQUIRE(o != NULL);
    REQUIRE(ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
    REQUIRE(ab_options_set_name(o, name) == AB_OK);
    ab_client_t *c = NULL;
    REQUIRE(ab_client_new(&c, o) == AB_OK);
    ab_options_destroy(&o);
    return c;
}

/* A peer broker (a raw peer proving key C) vouches for its own agents'
 * names, not for A's: a SEND over the link "from" alice, bound at A, that
 * says it answers bob's ask to alice is refused (DENIED, counted) and does
 * not end the ask; one from carol, bound nowhere here, is delivered; and
 * alice's own answer ends the ask. */
static void s_link_sender(void)
{
    s_keys(NULL);
    int pa = th_free_port();
    s_broker(pa, "A", "A", 0, NULL, "--link-heartbeat-ms", "5000");
    ab_client_t *a = th_client(pa);
    ab_client_t *alice = s_named(pa, "alice"), *bob = s_named(pa, "bob");
    void *ctx = zmq_ctx_new();
    void *d = s_fake_peer(ctx, pa, "C", "A");
    REQUIRE(s_fake_hello(d, "C") == 0);
    REQUIRE(lt_wait_link(a, "C", 1, 20000) == 0);
    th_answer_t ask = {0};
    uint64_t ask_id = 0;
    REQUIRE(ab_client_ask(bob, "alice", "q?", 2, 30000, th_answer_cb, &ask, &ask_id) == AB_OK);
    ab_message_t *q = NULL;
    int64_t end = ab_now_ms() + 10000;
    while (!q && ab_now_ms() < end) { /* the ask reaches alice (bob sends as he polls) */
        ab_client_poll(bob, 10);
        ab_client_recv(alice, &q, 10);
    }
    REQUIRE(q != NULL && q->type == AB_MSG_DIRECT && q->id == ask_id);
    s_fake_msg(d, 77, "alice", "bob", ask_id, "forged");
    s_fake_msg(d, 78, "carol", "bob", 0, "hello from C");
    ab_client_t *both[2] = {alice, bob};
    CHECK_EQ(s_fake_error(d, S_FWD_ID(77), 5000, both, 2), (int)AB_ERR_DENIED);
    ab_message_t *m = NULL;
    end = ab_now_ms() + 10000;
    while (!m && ab_now_ms() < end)
        ab_client_recv(bob, &m, 50);
    CHECK_TRUE(m != NULL);
    CHECK_STR(m ? m->sender : "(none)", "carol");
    printf("link_sender: after the forgery: ask %d final, \"%s\"\n", ask.finals, ask.data);
    CHECK_EQ(ask.finals, 0); /* the forgery came first, on the same link */
    CHECK_EQ(ab_client_reply(alice, q, "real", 4), AB_OK);
    end = ab_now_ms() + 10000;
    while (!ask.finals && ab_now_ms() < end)
        ab_client_poll(bob, 50);
    printf("link_sender: ask %d final, %s, \"%s\"\n", ask.finals, ab_status_name(ask.status),
           ask.data);
    CHECK_EQ(ask.finals, 1);
    CHECK_STR(ask.data, "real");
    /* The same for a publication (one hop: no dests): "from" alice it is
     * dropped and counted, from carol it reaches bob's subscription. */
    REQUIRE(ab_client_subscribe(bob, "news.", 5000) == AB_OK);
    s_fake_kind(d, AB_KIND_PUBLISH, 0, "alice", "news.a", 0, "forged news");
    s_fake_kind(d, AB_KIND_PUBLISH, 0, "carol", "news.c", 0, "real news");
    ab_message_t *t = NULL;
    end = ab_now_ms() + 10000;
    while (!t && ab_now_ms() < end)
        ab_client_recv(bob, &t, 50);
    REQUIRE(t != NULL);
    CHECK_EQ(t->type, AB_MSG_TOPIC);
    CHECK_STR(t->sender, "carol"); /* alice's came first on the same link */
    ab_message_destroy(&t);
    Agentbus__Stats *st = th_stats(a);
    REQUIRE(st != NULL);
    CHECK_TRUE(st->msgs_refused >= 2);
    agentbus__stats__free_unpacked(st, NULL);
    ab_message_destroy(&q);
    ab_message_destroy(&m);
    zmq_close(d);
    zmq_ctx_term(ctx);
    ab_client_destroy(&alice);
    ab_client_destroy(&bob);
    ab_client_destroy(&a);
}

/* A raw peer proving key C sends A a request for echo (served at B, over
 * A's other link) whose crossed list is full: 1099 characters of made-up
 * broker names, so A's own name does not fit after them. It may not cross
 * another link: answered NO_SERVICE. A took it, its forward to B failed and
 * A dropped B's remote worker as unreachable while the link stayed up: echo
 * was gone from A until B's directory changed (requests to it waited for
 * their deadlines). */
static void s_full_via(void)
{
    s_keys(NULL);
    int pa = th_free_port(), pb = th_free_port();
    /* 1 s link heartbeats: the raw peer's link lives 5 s on one message */
    s_broker(pb, "B", "B", 0, NULL, "--link-heartbeat-ms", "1000");
    s_broker(pa, "A", "A", pb, "B", "--link-heartbeat-ms", "1000");
    s_at("B");
    th_worker(pb, "echo", NULL);
    s_at("A");
    ab_client_t *a = th_client(pa);
    REQUIRE(lt_wait_rc(a, "echo", AB_OK, 20000) == 0);
    void *ctx = zmq_ctx_new();
    void *d = s_fake_peer(ctx, pa, "C", "A");
    REQUIRE(s_fake_hello(d, "C") == 0);
    REQUIRE(lt_wait_link(a, "C", 1, 20000) == 0);
    char via[1100];
    for (size_t i = 0; i < sizeof via - 1; i++)
        via[i] = i % 64 == 63 ? ',' : 'v';
    via[sizeof via - 1] = '\0';
    Agentbus__LinkMsg beat = AGENTBUS__LINK_MSG__INIT;
    beat.type = 3; /* the link stays up until the request comes */
    beat.broker = (char *)"C";
    s_fake_send(d, &beat);
    ab_header_t h = ab_header_init(AB_KIND_REQUEST);
    h.id = 5;
    h.target = ab_view_of("echo");
    h.via = ab_view_of(via);
    h.hops_left = 10;
    h.origin_role = 1; /* an agent */
    h.timeout_ms = 3000;
    uint8_t hb[2048];
    size_t hl = ab_header_encode(&h, hb, sizeof hb);
    REQUIRE(hl > 0);
    REQUIRE(zmq_send(d, hb, hl, ZMQ_SNDMORE) == (int)hl);
    REQUIRE(zmq_send(d, "p", 1, 0) == 1);
    CHECK_EQ(s_fake_error(d, 5, 10000, &a, 1), (int)AB_ERR_NO_SERVICE);
    Agentbus__PeerInfo pi;
    char st[32] = "";
    CHECK_TRUE(lt_peer_info(a, "B", &pi, st, sizeof st) && pi.services == 1);
    CHECK_STR(st, "up");
    CHECK_EQ(lt_req(a, "echo", "still served", NULL, 0), AB_OK);
    zmq_close(d);
    zmq_ctx_term(ctx);
    ab_client_destroy(&a);
}

/* The figures of A's mailboxes: messages waiting and bytes charged. */
static void s_mailbox_figures(ab_client_t *a, uint64_t *msgs, uint64_t *bytes)
{
    /* A broker the machine ran late answers after th_stats's 3 s. */
    Agentbus__Stats *st = th_stats(a);
    for (int64_t end = ab_now_ms() + 60000; !st && ab_now_ms() < end;)
        st = th_stats(a);
    REQUIRE(st != NULL);
    *msgs = st->mailbox_msgs;
    *bytes = st->mailbox_charged_bytes;
    agentbus__stats__free_unpacked(st, NULL);
}

/* A raw peer proving key C (which never answers) claims name x, bound
 * nowhere, for a moment, three times; each time A hands over x's full
 * mailbox and a local agent fills it again. Then C restarts (a HELLO with
 * another session): what A handed over comes back into the mailbox. The
 * handed-over messages still count against mailbox-total-bytes until C
 * answers, so each refill is refused BUSY and the mailboxes never hold
 * more than their bound. They counted for nothing: A kept three mailboxes'
 * worth for C, and put all of it back past mailbox-total-bytes.
 * C sends nothing between its NAMES: A keeps its connection for heartbeat-ms
 * x liveness (60 s here) and the link for 5 link heartbeats (100 s), so a
 * test the machine runs late does not lose C (a real peer would dial and
 * say HELLO again; this one does not). Waits are bounded at 60 s. */
static void s_handover_bound(void)
{
    s_keys(NULL);
    int pa = th_free_port();
    setenv("AB_MAILBOX_TOTAL_BYTES", "100000", 1);
    setenv("AB_HEARTBEAT_MS", "20000", 1);
    s_broker(pa, "A", "A", 0, NULL, "--link-heartbeat-ms", "20000");
    unsetenv("AB_MAILBOX_TOTAL_BYTES");
    unsetenv("AB_HEARTBEAT_MS");
    /* Its heartbeat 20 s: it takes the broker for gone after 60 s of
     * silence, not 3 (its sends to x would end DISCONNECTED). */
    ab_options_t *o = ab_options_new();
    REQUIRE(o && ab_options_set_endpoint(o, th_ep(pa)) == AB_OK &&
            ab_options_set_heartbeat_ms(o, 20000) == AB_OK);
    ab_client_t *a = NULL;
    REQUIRE(ab_client_new(&a, o) == AB_OK);
    ab_options_destroy(&o);
    void *ctx = zmq_ctx_new();
    void *d = s_fake_peer(ctx, pa, "C", "A");
    REQUIRE(s_fake_hello(d, "C") == 0);
    REQUIRE(lt_wait_link(a, "C", 1, 20000) == 0);
    static char data[8000];
    memset(data, 'm', sizeof data);
    uint64_t msgs = 0, bytes = 0;
    for (int round = 0; round < 3; round++) {
        int queued = 0, rc = AB_OK;
        for (int i = 0; i < 40 && rc == AB_OK; i++) {
            int q = 0;
            rc = ab_client_send_wait(a, "x", data, sizeof data, 0, 60000, &q);
            queued += rc == AB_OK && q;
        }
        CHECK_EQ(rc, AB_EBUSY); /* the mailboxes are full */
        printf("handover_bound: round %d: %d queued\n", round, queued);
        char *names[1] = {(char *)"x"};
        Agentbus__LinkMsg m = AGENTBUS__LINK_MSG__INIT;
        m.type = 5; /* NAMES: x is bound at C now; A hands its mailbox over */
        m.broker = (char *)"C";
        m.n_names = 1;
        m.names = names;
        s_fake_send(d, &m);
        int64_t end = ab_now_ms() + 60000;
        do
            s_mailbox_figures(a, &msgs, &bytes);
        while (msgs && ab_now_ms() < end && (th_sleep_ms(20), 1));
        CHECK_U64(msgs, 0);
        m.n_names = 0; /* x gone from C: new messages wait at A again */
        s_fake_send(d, &m);
        Agentbus__PeerInfo pi;
        char st[32];
        end = ab_now_ms() + 60000;
        while (!(lt_peer_info(a, "C", &pi, st, sizeof st) && pi.names == 0) &&
               ab_now_ms() < end)
            th_sleep_ms(20);
        CHECK_EQ(pi.names, 0);
    }
    void *d2 = s_fake_peer(ctx, pa, "C", "A");
    REQUIRE(s_fake_hello_n(d2, "C", 1) == 0); /* C restarted: A's link to it goes down */
    int64_t end = ab_now_ms() + 60000;
    do
        s_mailbox_figures(a, &msgs, &bytes);
    while (!msgs && ab_now_ms() < end && (th_sleep_ms(20), 1));
    printf("handover_bound: put back: %llu messages, %llu bytes charged\n",
           (unsigned long long)msgs, (unsigned long long)bytes);
    CHECK_TRUE(msgs > 0);
    CHECK_TRUE(bytes <= 100000);
    zmq_close(d);
    zmq_close(d2);
    zmq_ctx_term(ctx);
    ab_client_destroy(&a);
}

/* --- models across links -------------------------------------------------------------- */

/* B and C dial A; each has one Ollama worker: A's has sim-large loaded,
 * B's sim-small, C's sim-large. A request at A for sim-small (not loaded on
 * A's worker) goes to B, whose directory says it is loaded there, not to C
 * (free capacity only); sim-large stays on A's own worker. Before links
 * carried models, B and C were alike to A and took turns. */
static void s_models(void)
{
    s_keys(NULL);
    int sa = ot_sim(NULL), sb = ot_sim(NULL), sc = ot_sim(NULL);
    int pa = th_free_port(), pb = th_free_port(), pc = th_free_port();
    s_broker(pa, "A", "A", 0, NULL, NULL, NULL);
    s_broker(pb, "B", "B", pa, "A", NULL, NULL);
    s_broker(pc, "C", "C", pa, "A", NULL, NULL);
    s_at("A");
    ot_oworker(pa, sa, "wa", "--preload", "sim-large", "--gpu-vram-mb", "8192", NULL);
    s_at("B");
    ot_oworker(pb, sb, "wb", "--preload", "sim-small", "--gpu-vram-mb", "8192", NULL);
    s_at("C");
    ot_oworker(pc, sc, "wc", "--preload", "sim-large", "--gpu-vram-mb", "8192", NULL);
    s_at("A");
    ab_client_t *a = th_client(pa);
    REQUIRE(lt_wait_link(a, "B", 1, 20000) == 0);
    REQUIRE(lt_wait_link(a, "C", 1, 20000) == 0);
    REQUIRE(th_wait_workers(a, "ollama", 3, 20000) == 0);
    REQUIRE(ot_wait_loaded(a, "wa", "sim-large:latest", 1, 20000) == 0);
    /* A's remote workers carry the peers' models: loaded on B, not on C. */
    REQUIRE(ot_wait_loaded(a, "link:B", "sim-small:latest", 1, 20000) == 0);
    REQUIRE(ot_wait_loaded(a, "link:C", "sim-large:latest", 1, 20000) == 0);
    CHECK_EQ(ot_wait_loaded(a, "link:C", "sim-small:latest", 0, 1000), 0);
    /* brokerctl models names a peer's loaded models, with no VRAM or
     * expiry, which the directory does not carry (before: "sim-small:latest
     * (0.00 GiB VRAM, until )", and "backend  " with no URL). */
    char cmd[1200], text[8192];
    snprintf(cmd, sizeof cmd, "%s --broker %s models", th_bin("brokerctl"), th_ep(pa));
    CHECK_EQ(th_run(cmd, text, sizeof text), 0);
    const char *lb = strstr(text, "link:B");
    REQUIRE(lb != NULL);
    printf("%s", lb);
    CHECK_TRUE(strstr(lb, "loaded: sim-small:latest\n") != NULL);
    CHECK_TRUE(strstr(text, "until )") == NULL && strstr(text, "backend  ") == NULL);
    for (int i = 0; i < 6; i++) {
        ot_res_t r;
        ot_gen_t g = {i % 2 ? "sim-large" : "sim-small", "where do I run", NULL, 1, i, 0};
        CHECK_EQ(ot_generate(a, &g, &r), AB_OK);
        CHECK_STR(r.worker, i % 2 ? "wa" : "wb");
    }
    ab_client_destroy(&a);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"batched", s_batched},
        {"name_bound", s_name_bound},
        {"name_dialed", s_name_dialed},
        {"hostile_dir", s_hostile_dir},
        {"models", s_models},
        {"pipeline", s_pipeline},
        {"link_sender", s_link_sender},
        {"cancel_credit", s_cancel_credit},
        {"full_via", s_full_via},
        {"handover_bound", s_handover_bound},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
