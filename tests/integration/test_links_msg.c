/*
 * test_links_msg.c - direct messages and topics across broker links (issue
 * 15, docs/links.md "Messages and topics") with real processes: brokers on
 * loopback joined by CURVE links (ab-linkproxy where the link is cut).
 *
 * Every wait is for a state (a count in a box, a counter in `peers`), never
 * for an order the protocol does not promise.
 */
#include "harness.h"
#include "linktest.h"
#include "msgtest.h"
#include "test.h"
#include "util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The keys of a case (linktest.h): the shared peer key, admin, and more. */
static void s_keys(void)
{
    static const char *const more[] = {"agent --role agent --names 'agent*'", NULL};
    lt_keys("A,B,C,D,L", more);
}

/* The clients of the running case: every wait polls them all, so none
 * misses its heartbeats (and is dropped) while another is being watched. */
static ab_client_t *s_live[8];
static int s_nlive;

static void s_keep(ab_client_t **cs, int n)
{
    s_nlive = n < 8 ? n : 8;
    memcpy(s_live, cs, (size_t)s_nlive * sizeof *cs);
}

static void s_idle(int ms)
{
    if (s_nlive)
        mt_pump(s_live, s_nlive, ms);
    else
        th_sleep_ms(ms);
}

/* C's link to broker NAME (copied into OUT), or 0 when it has none. */
static int s_peer_info(ab_client_t *c, const char *name, Agentbus__PeerInfo *out)
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
            out->up_ms = !strcmp(pl->peers[i]->state, "up"); /* strings die with PL */
            found = 1;
        }
    if (pl)
        agentbus__peer_list__free_unpacked(pl, NULL);
    return found;
}

/* Waits until C's link to NAME is up (UP 1) or not (0) with at least
 * NAMES names and TOPICS patterns from the peer (exactly 0 when asked 0 and
 * down). 0 or -1. */
static int s_wait_peer(ab_client_t *c, const char *name, int up, uint32_t names, uint32_t topics)
{
    int64_t end = ab_now_ms() + 30000;
    do {
        Agentbus__PeerInfo pi;
        if (s_peer_info(c, name, &pi) && (int)pi.up_ms == up &&
            (up ? pi.names >= names && pi.topics >= topics
                : pi.names == 0 && pi.topics == 0))
            return 0;
        s_idle(20);
    } while (ab_now_ms() < end);
    return -1;
}

/* Sums a counter of C's links to NAME. */
static uint64_t s_count(ab_client_t *c, const char *name, int which)
{
    Agentbus__PeerInfo pi;
    if (!s_peer_info(c, name, &pi))
        return UINT64_MAX;
    switch (which) {
    case 0: return pi.sends_forwarded;
    case 1: return pi.sends_received;
    case 2: return pi.publishes_forwarded;
    default: return pi.publishes_received;
    }
}
enum { SEND_FWD, SEND_RECV, PUB_FWD, PUB_RECV };

/* A client whose handler records into BOX and answers every direct message
 * that is not itself an answer with "re:" + its text. */
static void s_echo_cb(ab_client_t *c, const ab_message_t *m, void *arg)
{
    mt_box_t *b = arg;
    if (b->n < MT_MAX) {
        int i = b->n++;
        b->type[i] = m->type, b->status[i] = m->status, b->id[i] = m->id;
        b->reply_to[i] = m->reply_to;
        snprintf(b->sender[i], sizeof b->sender[i], "%s", m->sender);
        snprintf(b->data[i], sizeof b->data[i], "%.*s", (int)(m->size < 63 ? m->size : 63),
                 m->data ? (const char *)m->data : "");
    }
    if (m->type > 0 && m->type < 8)
        b->count[m->type]++;
    if (m->type == AB_MSG_DIRECT && !m->reply_to) {
        char re[80];
        snprintf(re, sizeof re, "re:%.*s", (int)(m->size < 60 ? m->size : 60),
                 m->data ? (const char *)m->data : "");
        ab_client_reply(c, m, re, strlen(re));
    }
}

static ab_client_t *s_echo_agent(int port, const char *name, mt_box_t *box)
{
    ab_client_t *c = mt_agent(port, name, 0, NULL);
    memset(box, 0, sizeof *box);
    ab_client_on_message(c, s_echo_cb, box);
    return c;
}

/* Index of the first message of TYPE in BOX with DATA, or -1. */
static int s_find(const mt_box_t *box, int type, const char *data)
{
    for (int i = 0; i < box->n; i++)
        if (box->type[i] == type && !strcmp(box->data[i], data))
            return i;
    return -1;
}

/* Polls every client until BOX counted WANT of TYPE. */
static int s_pump_until(ab_client_t **cs, int n, mt_box_t *box, int type, int want)
{
    int64_t end = ab_now_ms() + 20000;
    while (box->count[type] < want && ab_now_ms() < end)
        mt_pump(cs, n, 20);
    return box->count[type];
}

/* --- SEND ------------------------------------------------------------------------- */

static mt_box_t s_box_a, s_box_b, s_box_c, s_box_u;

/* alice on A and bob on B: a SEND crosses both ways and is answered; an
 * unnamed sender on A gets bob's answer back over the link; each broker
 * shows the other's names and the SENDs it forwarded. */
static void s_send(void)
{
    s_keys();
    int pa = th_free_port(), pb = th_free_port();
    lt_broker(pb, "B", lt_keysdir("B", NULL), NULL, NULL, NULL, NULL);
    lt_broker(pa, "A", lt_keysdir("A", NULL), lt_peer(pb), NULL, NULL, NULL);
    ab_client_t *alice = s_echo_agent(pa, "alice", &s_box_a);
    ab_client_t *bob = s_echo_agent(pb, "bob", &s_box_b);
    ab_client_t *anon = s_echo_agent(pa, NULL, &s_box_u);
    ab_client_t *all[] = {alice, bob, anon};
    s_keep(all, 3);
    REQUIRE(mt_wait_bound(alice, "alice", 10000) && mt_wait_bound(bob, "bob", 10000));
    REQUIRE(s_wait_peer(alice, "B", 1, 1, 0) == 0);
    REQUIRE(s_wait_peer(bob, "A", 1, 1, 0) == 0);
    int queued = -1;
    CHECK_EQ(ab_client_send_wait(alice, "bob", "hi bob", 6, 0, 10000, &queued), AB_OK);
    CHECK_EQ(queued, 0); /* delivered to bob's connection on B */
    CHECK_EQ(s_pump_until(all, 3, &s_box_b, AB_MSG_DIRECT, 1), 1);
    int i = s_find(&s_box_b, AB_MSG_DIRECT, "hi bob");
    REQUIRE(i >= 0);
    CHECK_STR(s_box_b.sender[i], "alice");
    /* bob's automatic answer crossed back. */
    CHECK_EQ(s_pump_until(all, 3, &s_box_a, AB_MSG_DIRECT, 1), 1);
    i = s_find(&s_box_a, AB_MSG_DIRECT, "re:hi bob");
    REQUIRE(i >= 0);
    CHECK_STR(s_box_a.sender[i], "bob");
    CHECK_TRUE(s_box_a.reply_to[i] != 0);
    /* B to A, without waiting for the broker. */
    CHECK_EQ(ab_client_send(bob, "alice", "hi alice", 8, 0, NULL), AB_OK);
    CHECK_EQ(s_pump_until(all, 3, &s_box_a, AB_MSG_DIRECT, 2), 2);
    CHECK_TRUE(s_find(&s_box_a, AB_MSG_DIRECT, "hi alice") >= 0);
    CHECK_EQ(s_pump_until(all, 3, &s_box_b, AB_MSG_DIRECT, 2), 2); /* alice's "re:" */
    CHECK_TRUE(s_find(&s_box_b, AB_MSG_DIRECT, "re:hi alice") >= 0);
    /* An unnamed sender on A: bob answers "~TOKEN@A", which finds it. */
    CHECK_EQ(ab_client_send(anon, "bob", "from nobody", 11, 0, NULL), AB_OK);
    CHECK_EQ(s_pump_until(all, 3, &s_box_u, AB_MSG_DIRECT, 1), 1);
    i = s_find(&s_box_u, AB_MSG_DIRECT, "re:from nobody");
    CHECK_TRUE(i >= 0);
    i = s_find(&s_box_b, AB_MSG_DIRECT, "from nobody");
    REQUIRE(i >= 0);
    CHECK_TRUE(s_box_b.sender[i][0] == '~' && strstr(s_box_b.sender[i], "@A") != NULL);
    /* A request/answer pair across the link (ab_client_ask's callback). */
    CHECK_U64(s_count(alice, "B", SEND_FWD), 3);  /* hi bob, re:hi alice, from nobody */
    CHECK_U64(s_count(alice, "B", SEND_RECV), 3); /* re:hi bob, hi alice, re:from nobody */
    CHECK_U64(s_count(bob, "A", SEND_FWD), 3);
    char cmd[1200], text[8192];
    snprintf(cmd, sizeof cmd, "%s --broker %s peers", th_bin("brokerctl"), th_ep(pa));
    CHECK_EQ(th_run(cmd, text, sizeof text), 0);
    CHECK_TRUE(strstr(text, "SEND_FWD") && strstr(text, "PUBLISH_FWD"));
    ab_client_destroy(&anon);
    ab_client_destroy(&alice);
    ab_client_destroy(&bob);
}

/* A name bound nowhere gets what it gets on a broker alone: the message
 * waits in the first broker's mailbox. A refusal at the far broker (too
 * large there) comes back to the sender as it would locally. A name bound
 * both here and on the peer stays here (local wins). */
static void s_unknown(void)
{
    s_keys();
    int pa = th_free_port(), pb = th_free_port(), pl = th_free_port();
    lt_broker(pl, "L", lt_keysdir("L", NULL), NULL, NULL, NULL, NULL);
    lt_broker(pb, "B", lt_keysdir("B", NULL), NULL, NULL, "--message-max-bytes", "100");
    lt_broker(pa, "A", lt_keysdir("A", NULL), lt_peer(pb), NULL, NULL, NULL);
    ab_client_t *alone = mt_agent(pl, "alice", 0, NULL);
    ab_client_t *alice = s_echo_agent(pa, "alice", &s_box_a);
    ab_client_t *bob = s_echo_agent(pb, "bob", &s_box_b);
    ab_client_t *bob_here = NULL;
    ab_client_t *live[] = {alone, alice, bob};
    s_keep(live, 3);
    REQUIRE(s_wait_peer(alice, "B", 1, 1, 0) == 0);
    int q_alone = -1, q_linked = -1;
    int rc_alone = ab_client_send_wait(alone, "nobody", "x", 1, 0, 10000, &q_alone);
    int rc_linked = ab_client_send_wait(alice, "nobody", "x", 1, 0, 10000, &q_linked);
    CHECK_EQ(rc_linked, rc_alone);
    CHECK_EQ(q_linked, q_alone);
    CHECK_EQ(q_linked, 1); /* waits in A's mailbox */
    CHECK_U64(s_count(alice, "B", SEND_FWD), 0);
    /* 200 bytes: fine at A, too large at B, the same answer as B's own. */
    char big[200];
    memset(big, 'x', sizeof big);
    int rc_far = ab_client_send_wait(alice, "bob", big, sizeof big, 0, 10000, NULL);
    int rc_b = ab_client_send_wait(bob, "bob", big, sizeof big, 0, 10000, NULL);
    CHECK_EQ(rc_far, AB_ETOOLARGE);
    CHECK_EQ(rc_far, rc_b);
    CHECK_U64(s_count(alice, "B", SEND_FWD), 1);
    /* "bob" bound on A too: A's own bob gets A's messages. */
    mt_box_t *hb = &s_box_c;
    bob_here = s_echo_agent(pa, "bob", hb);
    ab_client_t *live2[] = {alone, alice, bob, bob_here};
    s_keep(live2, 4);
    REQUIRE(mt_wait_bound(alice, "bob", 10000));
    int queued = -1;
    CHECK_EQ(ab_client_send_wait(alice, "bob", "local", 5, 0, 10000, &queued), AB_OK);
    CHECK_EQ(queued, 0);
    ab_client_t *cs[] = {alice, bob_here};
    CHECK_EQ(s_pump_until(cs, 2, hb, AB_MSG_DIRECT, 1), 1);
    CHECK_U64(s_count(alice, "B", SEND_FWD), 1);
    ab_client_destroy(&bob_here);
    ab_client_destroy(&alone);
    ab_client_destroy(&alice);
    ab_client_destroy(&bob);
}

/* --- PUBLISH ---------------------------------------------------------------------- */

/* Publisher and a subscriber on A, B with no subscriber: nothing crosses.
 * A subscriber on B: every publication on its topics reaches it once, and
 * only those cross. */
static void s_pubsub(void)
{
    s_keys();
    int pa = th_free_port(), pb = th_free_port();
    lt_broker(pb, "B", lt_keysdir("B", NULL), NULL, NULL, NULL, NULL);
    lt_broker(pa, "A", lt_keysdir("A", NULL), lt_peer(pb), NULL, NULL, NULL);
    ab_client_t *pub = mt_agent(pa, "pub", 0, NULL);
    ab_client_t *sa = mt_agent(pa, NULL, 0, &s_box_a);
    ab_client_t *sb = mt_agent(pb, NULL, 0, &s_box_b);
    ab_client_t *all[] = {pub, sa, sb};
    s_keep(all, 3);
    CHECK_EQ(ab_client_subscribe(sa, "news.", 5000), AB_OK);
    CHECK_EQ(ab_client_subscribe(sa, "other.", 5000), AB_OK);
    REQUIRE(s_wait_peer(pub, "B", 1, 0, 0) == 0);
    REQUIRE(s_wait_peer(sb, "A", 1, 1, 2) == 0); /* B knows A's interest */
    enum { N = 20 };
    char msg[32];
    for (int k = 0; k < N; k++) {
        snprintf(msg, sizeof msg, "n%d", k);
        CHECK_EQ(ab_client_publish(pub, "news.x", msg, strlen(msg), NULL), AB_OK);
    }
    CHECK_EQ(s_pump_until(all, 3, &s_box_a, AB_MSG_TOPIC, N), N);
    CHECK_U64(s_count(pub, "B", PUB_FWD), 0);
    CHECK_U64(s_count(sb, "A", PUB_RECV), 0);
    /* B's subscriber: A learns its interest, then every publication crosses once. */
    CHECK_EQ(ab_client_subscribe(sb, "news.", 5000), AB_OK);
    REQUIRE(s_wait_peer(pub, "B", 1, 0, 1) == 0);
    for (int k = 0; k < N; k++) {
        snprintf(msg, sizeof msg, "m%d", k);
        CHECK_EQ(ab_client_publish(pub, "news.y", msg, strlen(msg), NULL), AB_OK);
    }
    for (int k = 0; k < 5; k++)
        CHECK_EQ(ab_client_publish(pub, "other.z", "o", 1, NULL), AB_OK);
    CHECK_EQ(s_pump_until(all, 3, &s_box_b, AB_MSG_TOPIC, N), N);
    CHECK_EQ(s_pump_until(all, 3, &s_box_a, AB_MSG_TOPIC, 2 * N + 5), 2 * N + 5);
    CHECK_U64(s_count(pub, "B", PUB_FWD), N); /* "other." has no subscriber on B */
    CHECK_U64(s_count(sb, "A", PUB_RECV), N);
    mt_pump(all, 3, 200);
    CHECK_EQ(s_box_b.count[AB_MSG_TOPIC], N);
    for (int k = 0; k < N; k++) {
        snprintf(msg, sizeof msg, "m%d", k);
        int i = s_find(&s_box_b, AB_MSG_TOPIC, msg);
        CHECK_TRUE(i >= 0);
        if (i >= 0)
            CHECK_STR(s_box_b.sender[i], "pub");
    }
    /* B's subscriber leaves: A forgets B's interest. */
    CHECK_EQ(ab_client_unsubscribe(sb, "news.", 5000), AB_OK);
    int64_t end = ab_now_ms() + 20000;
    Agentbus__PeerInfo pi = {0};
    while (ab_now_ms() < end && s_peer_info(pub, "B", &pi) && pi.topics != 0)
        s_idle(20);
    CHECK_EQ(pi.topics, 0);
    ab_client_destroy(&pub);
    ab_client_destroy(&sa);
    ab_client_destroy(&sb);
}

/* A, B, C all peered: a publication on A reaches the subscribers on each
 * broker once; no broker passes on what it got over a link. A SEND to an
 * agent on C arrives once. */
static void s_triangle(void)
{
    s_keys();
    int pa = th_free_port(), pb = th_free_port(), pc = th_free_port();
    lt_broker(pa, "A", lt_keysdir("A", NULL), lt_peer(pb), NULL, NULL, NULL);
    lt_broker(pb, "B", lt_keysdir("B", NULL), lt_peer(pc), NULL, NULL, NULL);
    lt_broker(pc, "C", lt_keysdir("C", NULL), lt_peer(pa), NULL, NULL, NULL);
    ab_client_t *pub = mt_agent(pa, "pub", 0, NULL);
    ab_client_t *sa = mt_agent(pa, NULL, 0, &s_box_a);
    ab_client_t *sb = mt_agent(pb, NULL, 0, &s_box_b);
    ab_client_t *sc = mt_agent(pc, "carol", 0, &s_box_c);
    ab_client_t *all[] = {pub, sa, sb, sc};
    s_keep(all, 4);
    CHECK_EQ(ab_client_subscribe(sa, "t.", 5000), AB_OK);
    CHECK_EQ(ab_client_subscribe(sb, "t.", 5000), AB_OK);
    CHECK_EQ(ab_client_subscribe(sc, "t.", 5000), AB_OK);
    REQUIRE(s_wait_peer(pub, "B", 1, 0, 1) == 0);
    REQUIRE(s_wait_peer(pub, "C", 1, 1, 1) == 0);
    REQUIRE(s_wait_peer(sb, "C", 1, 1, 1) == 0); /* B would have a path to C's subscriber */
    REQUIRE(s_wait_peer(sc, "B", 1, 0, 1) == 0);
    enum { N = 30 };
    char msg[32];
    for (int k = 0; k < N; k++) {
        snprintf(msg, sizeof msg, "t%d", k);
        CHECK_EQ(ab_client_publish(pub, "t.x", msg, strlen(msg), NULL), AB_OK);
    }
    mt_box_t *boxes[] = {&s_box_a, &s_box_b, &s_box_c};
    for (int j = 0; j < 3; j++)
        CHECK_EQ(s_pump_until(all, 4, boxes[j], AB_MSG_TOPIC, N), N);
    /* Every publication reached B and C from A directly, and neither passed
     * one on: what B and C received they had handled when they counted. */
    CHECK_U64(s_count(sb, "A", PUB_RECV), N);
    CHECK_U64(s_count(sc, "A", PUB_RECV), N);
    CHECK_U64(s_count(sb, "C", PUB_FWD) + s_count(sb, "A", PUB_FWD), 0);
    CHECK_U64(s_count(sc, "B", PUB_FWD) + s_count(sc, "A", PUB_FWD), 0);
    CHECK_U64(s_count(sb, "C", PUB_RECV) + s_count(sc, "B", PUB_RECV), 0);
    mt_pump(all, 4, 200);
    for (int j = 0; j < 3; j++) {
        CHECK_EQ(boxes[j]->count[AB_MSG_TOPIC], N);
        for (int k = 0; k < N; k++) {
            snprintf(msg, sizeof msg, "t%d", k);
            CHECK_TRUE(s_find(boxes[j], AB_MSG_TOPIC, msg) >= 0);
        }
    }
    int queued = -1;
    CHECK_EQ(ab_client_send_wait(pub, "carol", "hello", 5, 0, 10000, &queued), AB_OK);
    CHECK_EQ(queued, 0);
    CHECK_EQ(s_pump_until(all, 4, &s_box_c, AB_MSG_DIRECT, 1), 1);
    CHECK_U64(s_count(pub, "C", SEND_FWD), 1);
    CHECK_U64(s_count(pub, "B", SEND_FWD), 0);
    for (int j = 0; j < 4; j++)
        ab_client_destroy(&all[j]);
}

/* --- link loss -------------------------------------------------------------------- */

static pid_t s_proxy(int listen, int target)
{
    char l[16], t[16];
    snprintf(l, sizeof l, "%d", listen);
    snprintf(t, sizeof t, "%d", target);
    const char *args[] = {l, t, "0", NULL};
    pid_t p = th_spawn("ab-linkproxy", args, NULL);
    th_sleep_ms(300); /* python starting; the broker's dialing retries anyway */
    return p;
}

/* The link is cut: A withdraws B's names and interest (a SEND to bob then
 * waits in A's mailbox; nothing is published to B); restored, both come
 * back, A hands bob's waiting message over, and messages cross again. */
static void s_cut(void)
{
    s_keys();
    int pa = th_free_port(), pb = th_free_port(), px = th_free_port();
    lt_broker(pb, "B", lt_keysdir("B", NULL), NULL, NULL, "--link-heartbeat-ms", "400");
    pid_t proxy = s_proxy(px, pb);
    /* 400 ms heartbeats (lost after 2 s): the python proxy, starved on a
     * busy machine, must not make the link flap between the steps. */
    lt_broker(pa, "A", lt_keysdir("A", NULL), lt_peer(px), NULL, "--link-heartbeat-ms", "400");
    ab_client_t *alice = s_echo_agent(pa, "alice", &s_box_a);
    ab_client_t *bob = s_echo_agent(pb, "bob", &s_box_b);
    ab_client_t *all[] = {alice, bob};
    s_keep(all, 2);
    CHECK_EQ(ab_client_subscribe(bob, "cut.", 5000), AB_OK);
    REQUIRE(s_wait_peer(alice, "B", 1, 1, 1) == 0);
    int queued = -1;
    CHECK_EQ(ab_client_send_wait(alice, "bob", "before", 6, 0, 10000, &queued), AB_OK);
    CHECK_EQ(queued, 0);
    kill(proxy, SIGUSR1); /* cut */
    REQUIRE(s_wait_peer(alice, "B", 0, 0, 0) == 0);
    CHECK_EQ(ab_client_send_wait(alice, "bob", "during", 6, 0, 10000, &queued), AB_OK);
    CHECK_EQ(queued, 1); /* nobody named bob is reachable: A's mailbox */
    uint64_t pubs = s_count(alice, "B", PUB_FWD);
    CHECK_EQ(ab_client_publish(alice, "cut.x", "lost", 4, NULL), AB_OK);
    kill(proxy, SIGHUP); /* restore */
    REQUIRE(s_wait_peer(alice, "B", 1, 1, 1) == 0);
    CHECK_U64(s_count(alice, "B", PUB_FWD), pubs);
    CHECK_EQ(ab_client_send_wait(alice, "bob", "after", 5, 0, 10000, &queued), AB_OK);
    CHECK_EQ(queued, 0);
    CHECK_EQ(ab_client_publish(alice, "cut.x", "again", 5, NULL), AB_OK);
    CHECK_EQ(s_pump_until(all, 2, &s_box_b, AB_MSG_TOPIC, 1), 1);
    CHECK_TRUE(s_find(&s_box_b, AB_MSG_TOPIC, "again") >= 0);
    /* "during" waited in A's mailbox; A handed it over once B named bob again. */
    CHECK_EQ(s_pump_until(all, 2, &s_box_b, AB_MSG_DIRECT, 3), 3);
    CHECK_TRUE(s_find(&s_box_b, AB_MSG_DIRECT, "during") >= 0);
    CHECK_TRUE(s_find(&s_box_b, AB_MSG_DIRECT, "after") >= 0);
    Agentbus__Stats *st = th_stats(alice);
    REQUIRE(st != NULL);
    CHECK_EQ(st->mailbox_msgs, 0);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&alice);
    ab_client_destroy(&bob);
}

/* A handed-over message lost with the link goes back into the mailbox: A
 * holds five messages for bob (bound nowhere); bob appears on B while the
 * proxy passes nothing from A to B, so A hands them over and they stay in
 * the proxy; the link is cut before B answers: A puts them back, in order,
 * and hands them over again when the link is back. bob gets each once. */
static void s_putback(void)
{
    s_keys();
    int pa = th_free_port(), pb = th_free_port(), px = th_free_port();
    /* B hears nothing from A while the proxy stalls one way: its 1 s
     * heartbeats (silent after 5 s) leave A time to hand the mailbox over
     * first on a busy machine. */
    lt_broker(pb, "B", lt_keysdir("B", NULL), NULL, NULL, "--link-heartbeat-ms", "1000");
    pid_t proxy = s_proxy(px, pb);
    lt_broker(pa, "A", lt_keysdir("A", NULL), lt_peer(px), NULL, "--link-heartbeat-ms", "400");
    ab_client_t *alice = s_echo_agent(pa, "alice", &s_box_a);
    ab_client_t *all[] = {alice, NULL};
    s_keep(all, 1);
    REQUIRE(s_wait_peer(alice, "B", 1, 0, 0) == 0);
    enum { N = 5 };
    char msg[32];
    for (int k = 0; k < N; k++) {
        int queued = -1;
        snprintf(msg, sizeof msg, "p%d", k);
        CHECK_EQ(ab_client_send_wait(alice, "bob", msg, strlen(msg), 0, 10000, &queued), AB_OK);
        CHECK_EQ(queued, 1); /* bob is bound nowhere: A's mailbox */
    }
    kill(proxy, SIGWINCH); /* nothing from A reaches B; B's words still reach A */
    ab_client_t *bob = s_echo_agent(pb, "bob", &s_box_b);
    all[1] = bob;
    s_keep(all, 2);
    /* A learns bob is on B and hands the mailbox over (it waits in the proxy). */
    int64_t end = ab_now_ms() + 20000;
    uint64_t held = N;
    while (ab_now_ms() < end && held != 0) {
        Agentbus__Stats *st = th_stats(alice);
        held = st ? st->mailbox_msgs : N;
        if (st)
            agentbus__stats__free_unpacked(st, NULL);
        s_idle(20);
    }
    REQUIRE(held == 0);
    CHECK_U64(s_count(alice, "B", SEND_FWD), N);
    kill(proxy, SIGUSR1); /* cut: what the proxy held is lost */
    REQUIRE(s_wait_peer(alice, "B", 0, 0, 0) == 0);
    Agentbus__Stats *st = th_stats(alice);
    REQUIRE(st != NULL);
    CHECK_EQ(st->mailbox_msgs, N); /* put back, not lost */
    agentbus__stats__free_unpacked(st, NULL);
    CHECK_EQ(s_box_b.count[AB_MSG_DIRECT], 0);
    kill(proxy, SIGHUP); /* restore: handed over again */
    CHECK_EQ(s_pump_until(all, 2, &s_box_b, AB_MSG_DIRECT, N), N);
    mt_pump(all, 2, 300);
    CHECK_EQ(s_box_b.count[AB_MSG_DIRECT], N); /* each once */
    for (int k = 0, prev = -1; k < N; k++) { /* oldest first, as the hand-over promises */
        snprintf(msg, sizeof msg, "p%d", k);
        int i = s_find(&s_box_b, AB_MSG_DIRECT, msg);
        CHECK_TRUE(i > prev);
        prev = i;
    }
    st = th_stats(alice);
    REQUIRE(st != NULL);
    CHECK_EQ(st->mailbox_msgs, 0);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&alice);
    ab_client_destroy(&bob);
}

/* --- topics across more than one link ----------------------------------------------- */

static mt_box_t s_box_d;

/* Publishes N messages "PREFIX<k>" on TOPIC from C. */
static void s_publish_n(ab_client_t *c, const char *topic, const char *prefix, int n)
{
    char msg[32];
    for (int k = 0; k < n; k++) {
        snprintf(msg, sizeof msg, "%s%d", prefix, k);
        CHECK_EQ(ab_client_publish(c, topic, msg, strlen(msg), NULL), AB_OK);
    }
}

/* BOX holds each of "PREFIX0".."PREFIX<N-1>" exactly once from SENDER, and
 * WANT topic messages in all. */
static void s_check_each_once(const mt_box_t *box, const char *prefix, int n, int want,
                              const char *sender)
{
    char msg[32];
    CHECK_EQ(box->count[AB_MSG_TOPIC], want);
    for (int k = 0; k < n; k++) {
        snprintf(msg, sizeof msg, "%s%d", prefix, k);
        int found = 0, first = -1;
        for (int i = 0; i < box->n; i++)
            if (box->type[i] == AB_MSG_TOPIC && !strcmp(box->data[i], msg) && !found++)
                first = i;
        CHECK_EQ(found, 1);
        if (first >= 0)
            CHECK_STR(box->sender[first], sender);
    }
}

/* Brokers in a line, each dialing the one before: A - B - C (- D when
 * FOUR). Ports into P. */
static void s_line(int *p, int four, const char *extra1, const char *extra2)
{
    for (int i = 0; i < 4; i++)
        p[i] = th_free_port();
    lt_broker(p[0], "A", lt_keysdir("A", NULL), NULL, NULL, extra1, extra2);
    lt_broker(p[1], "B", lt_keysdir("B", NULL), lt_peer(p[0]), NULL, NULL, NULL);
    lt_broker(p[2], "C", lt_keysdir("C", NULL), lt_peer(p[1]), NULL, NULL, NULL);
    if (four)
        lt_broker(p[3], "D", lt_keysdir("D", NULL), lt_peer(p[2]), NULL, NULL, NULL);
}

/* A - B - C: a publication on A reaches C's subscriber exactly once,
 * through B, which has no subscriber for it and delivers nothing; a topic
 * only B's subscriber holds goes no further than B. */
static void s_topic_line(void)
{
    s_keys();
    int p[4];
    s_line(p, 0, NULL, NULL);
    ab_client_t *pub = mt_agent(p[0], "pub", 0, NULL);
    ab_client_t *sb = mt_agent(p[1], NULL, 0, &s_box_b);
    ab_client_t *sc = mt_agent(p[2], NULL, 0, &s_box_c);
    ab_client_t *all[] = {pub, sb, sc};
    s_keep(all, 3);
    CHECK_EQ(ab_client_subscribe(sb, "u.", 5000), AB_OK);
    CHECK_EQ(ab_client_subscribe(sc, "t.", 5000), AB_OK);
    REQUIRE(s_wait_peer(pub, "B", 1, 0, 2) == 0); /* B's "u." and C's "t." through B */
    enum { N = 20 };
    s_publish_n(pub, "t.x", "t", N);
    CHECK_EQ(s_pump_until(all, 3, &s_box_c, AB_MSG_TOPIC, N), N);
    CHECK_U64(s_count(pub, "B", PUB_FWD), N); /* one copy each, for C */
    CHECK_U64(s_count(sb, "A", PUB_RECV), N);
    CHECK_U64(s_count(sb, "C", PUB_FWD), N);
    CHECK_U64(s_count(sc, "B", PUB_RECV), N);
    s_publish_n(pub, "u.y", "u", 5); /* for B only */
    CHECK_EQ(s_pump_until(all, 3, &s_box_b, AB_MSG_TOPIC, 5), 5);
    mt_pump(all, 3, 300);
    CHECK_U64(s_count(sb, "C", PUB_FWD), N); /* nothing toward C for "u." */
    CHECK_U64(s_count(sc, "B", PUB_RECV), N);
    s_check_each_once(&s_box_c, "t", N, N, "pub");
    s_check_each_once(&s_box_b, "u", 5, 5, "pub"); /* and none of the "t." ones */
    for (int j = 0; j < 3; j++)
        ab_client_destroy(&all[j]);
}

/* A - B - C - D: subscribers on C and D get each publication from A once;
 * one copy crosses each link (B sends C one copy for both). */
static void s_topic_line4(void)
{
    s_keys();
    int p[4];
    s_line(p, 1, NULL, NULL);
    ab_client_t *pub = mt_agent(p[0], "pub", 0, NULL);
    ab_client_t *sb = mt_agent(p[1], NULL, 0, NULL);
    ab_client_t *sc = mt_agent(p[2], NULL, 0, &s_box_c);
    ab_client_t *sd = mt_agent(p[3], NULL, 0, &s_box_d);
    ab_client_t *all[] = {pub, sb, sc, sd};
    s_keep(all, 4);
    CHECK_EQ(ab_client_subscribe(sc, "t.", 5000), AB_OK);
    CHECK_EQ(ab_client_subscribe(sd, "t.x", 5000), AB_OK);
    REQUIRE(s_wait_peer(pub, "B", 1, 0, 2) == 0);
    enum { N = 20 };
    s_publish_n(pub, "t.x", "t", N);
    CHECK_EQ(s_pump_until(all, 4, &s_box_c, AB_MSG_TOPIC, N), N);
    CHECK_EQ(s_pump_until(all, 4, &s_box_d, AB_MSG_TOPIC, N), N);
    mt_pump(all, 4, 300);
    s_check_each_once(&s_box_c, "t", N, N, "pub");
    s_check_each_once(&s_box_d, "t", N, N, "pub");
    CHECK_U64(s_count(pub, "B", PUB_FWD), N);
    CHECK_U64(s_count(sb, "C", PUB_FWD), N);
    CHECK_U64(s_count(sc, "D", PUB_FWD), N);
    for (int j = 0; j < 4; j++)
        ab_client_destroy(&all[j]);
}

/* A, B, C in a triangle and D hanging off C: D is two links from A by C
 * and three by B. Subscribers on B, C and D get each publication from A
 * exactly once; nothing reaches D twice, nothing goes around. */
static void s_topic_triangle(void)
{
    s_keys();
    int pa = th_free_port(), pb = th_free_port(), pc = th_free_port(), pd = th_free_port();
    lt_broker(pa, "A", lt_keysdir("A", NULL), lt_peer(pb), NULL, NULL, NULL);
    lt_broker(pb, "B", lt_keysdir("B", NULL), lt_peer(pc), NULL, NULL, NULL);
    lt_broker(pc, "C", lt_keysdir("C", NULL), lt_peer(pa), NULL, NULL, NULL);
    lt_broker(pd, "D", lt_keysdir("D", NULL), lt_peer(pc), NULL, NULL, NULL);
    ab_client_t *pub = mt_agent(pa, "pub", 0, NULL);
    ab_client_t *sb = mt_agent(pb, NULL, 0, &s_box_b);
    ab_client_t *sc = mt_agent(pc, NULL, 0, &s_box_c);
    ab_client_t *sd = mt_agent(pd, NULL, 0, &s_box_d);
    ab_client_t *all[] = {pub, sb, sc, sd};
    s_keep(all, 4);
    CHECK_EQ(ab_client_subscribe(sb, "t.", 5000), AB_OK);
    CHECK_EQ(ab_client_subscribe(sc, "t.", 5000), AB_OK);
    CHECK_EQ(ab_client_subscribe(sd, "t.", 5000), AB_OK);
    REQUIRE(s_wait_peer(pub, "C", 1, 0, 2) == 0); /* C's and D's through C */
    REQUIRE(s_wait_peer(pub, "B", 1, 0, 3) == 0); /* B's, C's and D's through B */
    enum { N = 30 };
    s_publish_n(pub, "t.x", "t", N);
    mt_box_t *boxes[] = {&s_box_b, &s_box_c, &s_box_d};
    for (int j = 0; j < 3; j++)
        CHECK_EQ(s_pump_until(all, 4, boxes[j], AB_MSG_TOPIC, N), N);
    mt_pump(all, 4, 300);
    for (int j = 0; j < 3; j++)
        s_check_each_once(boxes[j], "t", N, N, "pub");
    /* A sent B its copy and C one for C and D; C passed D's on. */
    CHECK_U64(s_count(pub, "B", PUB_FWD), N);
    CHECK_U64(s_count(pub, "C", PUB_FWD), N);
    CHECK_U64(s_count(sc, "D", PUB_FWD), N);
    CHECK_U64(s_count(sb, "C", PUB_FWD) + s_count(sc, "B", PUB_FWD), 0);
    CHECK_U64(s_count(sd, "C", PUB_FWD), 0);
    for (int j = 0; j < 4; j++)
        ab_client_destroy(&all[j]);
}

/* A - B - C: C's subscriber leaves; A learns it within a few heartbeats
 * and nothing more crosses either link. */
static void s_topic_withdraw(void)
{
    s_keys();
    int p[4];
    s_line(p, 0, NULL, NULL);
    ab_client_t *pub = mt_agent(p[0], "pub", 0, NULL);
    ab_client_t *sa = mt_agent(p[0], NULL, 0, &s_box_a);
    ab_client_t *sb = mt_agent(p[1], NULL, 0, NULL);
    ab_client_t *sc = mt_agent(p[2], NULL, 0, &s_box_c);
    ab_client_t *all[] = {pub, sa, sb, sc};
    s_keep(all, 4);
    CHECK_EQ(ab_client_subscribe(sa, "t.", 5000), AB_OK);
    CHECK_EQ(ab_client_subscribe(sc, "t.", 5000), AB_OK);
    REQUIRE(s_wait_peer(pub, "B", 1, 0, 1) == 0);
    enum { N = 10 };
    s_publish_n(pub, "t.x", "t", N);
    CHECK_EQ(s_pump_until(all, 4, &s_box_c, AB_MSG_TOPIC, N), N);
    CHECK_U64(s_count(sb, "C", PUB_FWD), N);
    ab_client_destroy(&sc); /* the far subscriber leaves */
    s_keep(all, 3);
    int64_t end = ab_now_ms() + 20000;
    Agentbus__PeerInfo pi = {0};
    while (ab_now_ms() < end && s_peer_info(pub, "B", &pi) && pi.topics != 0)
        s_idle(20);
    REQUIRE(pi.topics == 0);
    s_publish_n(pub, "t.x", "v", N);
    /* A's own subscriber has them: A has decided where they go. */
    CHECK_EQ(s_pump_until(all, 3, &s_box_a, AB_MSG_TOPIC, 2 * N), 2 * N);
    CHECK_U64(s_count(pub, "B", PUB_FWD), N);
    mt_pump(all, 3, 300);
    CHECK_U64(s_count(sb, "A", PUB_RECV), N);
    CHECK_U64(s_count(sb, "C", PUB_FWD), N);
    for (int j = 0; j < 3; j++)
        ab_client_destroy(&all[j]);
}

/* A - B - C with link-hop-limit 1 on A: B's subscriber gets A's
 * publications, C's (two links away) none, though A knows of it. */
static void s_topic_hops(void)
{
    s_keys();
    int p[4];
    s_line(p, 0, "--link-hop-limit", "1");
    ab_client_t *pub = mt_agent(p[0], "pub", 0, NULL);
    ab_client_t *sb = mt_agent(p[1], NULL, 0, &s_box_b);
    ab_client_t *sc = mt_agent(p[2], NULL, 0, &s_box_c);
    ab_client_t *all[] = {pub, sb, sc};
    s_keep(all, 3);
    CHECK_EQ(ab_client_subscribe(sb, "t.", 5000), AB_OK);
    CHECK_EQ(ab_client_subscribe(sc, "t.", 5000), AB_OK);
    REQUIRE(s_wait_peer(pub, "B", 1, 0, 2) == 0); /* C's route is known at A */
    enum { N = 10 };
    s_publish_n(pub, "t.x", "t", N);
    CHECK_EQ(s_pump_until(all, 3, &s_box_b, AB_MSG_TOPIC, N), N);
    /* B sends on before it delivers: it has decided by now. */
    mt_pump(all, 3, 300);
    CHECK_U64(s_count(sb, "C", PUB_FWD), 0);
    CHECK_U64(s_count(sc, "B", PUB_RECV), 0);
    CHECK_EQ(s_box_c.count[AB_MSG_TOPIC], 0);
    Agentbus__Stats *st = th_stats(pub); /* A gave C up for each, and said so */
    REQUIRE(st != NULL);
    CHECK_U64(st->link_pub_unroutable, N);
    agentbus__stats__free_unpacked(st, NULL);
    /* From B (limit 4) C is one link away: B's own publications reach it. */
    ab_client_t *pubb = mt_agent(p[1], "pubb", 0, NULL);
    ab_client_t *all2[] = {pub, sb, sc, pubb};
    s_keep(all2, 4);
    s_publish_n(pubb, "t.y", "b", 3);
    CHECK_EQ(s_pump_until(all2, 4, &s_box_c, AB_MSG_TOPIC, 3), 3);
    for (int j = 0; j < 4; j++)
        ab_client_destroy(&all2[j]);
}

/* --- the origin's grants ---------------------------------------------------------- */

/* The agent key may use every topic on A but only "news.*" on B, and is a
 * worker key on C: B drops its publication on "sports.x" (counted DENIED)
 * and delivers "news.x"; C refuses its SEND, which comes back DENIED. */
static void s_roles(void)
{
    s_keys();
    int pa = th_free_port(), pb = th_free_port(), pc = th_free_port();
    char eb[600], ec[600], ea[600];
    snprintf(eb, sizeof eb,
             "sed 's/^\\( *names = .*\\)$/\\1\\n    topics = \"news.*\"/' %s/agent.key "
             "> agent.key && grep -q 'topics = \"news' agent.key", lt_certdir());
    snprintf(ec, sizeof ec,
             "sed 's/role = \"agent\"/role = \"worker\"/' %s/agent.key > agent.key && "
             "grep -q 'role = \"worker\"' agent.key", lt_certdir());
    snprintf(ea, sizeof ea, "cp %s/agent.key .", lt_certdir());
    lt_broker(pb, "B", lt_keysdir("B", eb), NULL, NULL, NULL, NULL);
    lt_broker(pc, "C", lt_keysdir("C", ec), NULL, NULL, NULL, NULL);
    lt_broker(pa, "A", lt_keysdir("A", ea), lt_peer(pb), lt_peer(pc), NULL, NULL);
    ab_options_t *o = ab_options_new();
    char path[700];
    snprintf(path, sizeof path, "%s/agent.key_secret", lt_certdir());
    REQUIRE(ab_options_set_endpoint(o, th_ep(pa)) == AB_OK);
    REQUIRE(ab_options_set_key_file(o, path) == AB_OK);
    REQUIRE(ab_options_set_broker_key(o, lt_cert()) == AB_OK);
    REQUIRE(ab_options_set_name(o, "agent-1") == AB_OK);
    ab_client_t *ag = NULL;
    REQUIRE(ab_client_new(&ag, o) == AB_OK);
    ab_options_destroy(&o);
    ab_client_t *sb = mt_agent(pb, NULL, 0, &s_box_b);
    ab_client_t *carol = mt_agent(pc, "carol", 0, &s_box_c);
    ab_client_t *all[] = {ag, sb, carol};
    s_keep(all, 3);
    CHECK_EQ(ab_client_subscribe(sb, "sports.", 5000), AB_OK);
    CHECK_EQ(ab_client_subscribe(sb, "news.", 5000), AB_OK);
    REQUIRE(mt_wait_bound(ag, "agent-1", 10000));
    REQUIRE(s_wait_peer(ag, "B", 1, 0, 2) == 0);
    REQUIRE(s_wait_peer(ag, "C", 1, 1, 0) == 0);
    CHECK_EQ(ab_client_publish(ag, "sports.x", "no", 2, NULL), AB_OK);
    CHECK_EQ(ab_client_publish(ag, "news.x", "yes", 3, NULL), AB_OK);
    int64_t end = ab_now_ms() + 20000;
    while (ab_now_ms() < end && s_count(sb, "A", PUB_RECV) < 2)
        mt_pump(all, 3, 20);
    CHECK_U64(s_count(sb, "A", PUB_RECV), 2);
    CHECK_EQ(s_pump_until(all, 3, &s_box_b, AB_MSG_TOPIC, 1), 1);
    mt_pump(all, 3, 200);
    CHECK_EQ(s_box_b.count[AB_MSG_TOPIC], 1);
    CHECK_TRUE(s_find(&s_box_b, AB_MSG_TOPIC, "yes") >= 0);
    Agentbus__Stats *st = th_stats(sb);
    REQUIRE(st != NULL);
    CHECK_TRUE(th_stat_error(st, "DENIED") >= 1);
    agentbus__stats__free_unpacked(st, NULL);
    /* C knows this key as a worker's: no direct messages from it. */
    CHECK_EQ(ab_client_send_wait(ag, "carol", "hi", 2, 0, 10000, NULL), AB_EDENIED);
    CHECK_EQ(s_box_c.count[AB_MSG_DIRECT], 0);
    ab_client_destroy(&ag);
    ab_client_destroy(&sb);
    ab_client_destroy(&carol);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"send", s_send},         {"unknown", s_unknown}, {"pubsub", s_pubsub},
        {"triangle", s_triangle}, {"cut", s_cut},         {"roles", s_roles},
        {"putback", s_putback},   {"topic_line", s_topic_line},
        {"topic_line4", s_topic_line4}, {"topic_triangle", s_topic_triangle},
        {"topic_withdraw", s_topic_withdraw}, {"topic_hops", s_topic_hops},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
