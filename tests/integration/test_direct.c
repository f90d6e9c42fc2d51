/*
 * test_direct.c - agent names, direct messages and mailboxes, against a
 * real broker (and brokerctl) process. One case per ctest entry.
 */
#include "codec.h"
#include "harness.h"
#include "msgtest.h"
#include "test.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

/* Sent while the recipient is connected: each arrives once, in order, with
 * the sender's name; receipts come back for those that asked. */
static void s_direct_once(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    mt_box_t *bob = calloc(1, sizeof *bob), *alice = calloc(1, sizeof *alice);
    ab_client_t *cb = mt_agent(port, "bob", 0, bob);
    ab_client_t *ca = mt_agent(port, "alice", 0, alice);
    ab_client_t *ctl = th_client(port);
    REQUIRE(mt_wait_bound(ctl, "bob", 5000));
    REQUIRE(mt_wait_bound(ctl, "alice", 5000));
    uint64_t ids[10];
    for (int i = 0; i < 10; i++) {
        char msg[32];
        snprintf(msg, sizeof msg, "m%d", i);
        CHECK_EQ(ab_client_send(ca, "bob", msg, strlen(msg), i % 2 ? AB_SEND_RECEIPT : 0,
                                &ids[i]), AB_OK);
    }
    ab_client_t *both[2] = {ca, cb};
    for (int k = 0; k < 200 && (bob->n < 10 || alice->count[AB_MSG_RECEIPT] < 5); k++)
        mt_pump(both, 2, 20);
    mt_pump(both, 2, 300); /* nothing more may come */
    CHECK_EQ(bob->n, 10);
    for (int i = 0; i < bob->n && i < 10; i++) {
        char msg[32];
        snprintf(msg, sizeof msg, "m%d", i);
        CHECK_EQ(bob->type[i], AB_MSG_DIRECT);
        CHECK_STR(bob->data[i], msg);
        CHECK_STR(bob->sender[i], "alice");
        CHECK_STR(bob->target[i], "bob");
        CHECK_U64(bob->id[i], ids[i]);
    }
    CHECK_EQ(alice->count[AB_MSG_RECEIPT], 5);
    for (int i = 0, r = 0; i < alice->n; i++)
        if (alice->type[i] == AB_MSG_RECEIPT)
            CHECK_U64(alice->id[i], ids[2 * r++ + 1]);
    Agentbus__Stats *st = th_stats(ctl);
    REQUIRE(st != NULL);
    CHECK_U64(st->msgs_sent, 10);
    CHECK_U64(st->msgs_delivered, 15); /* 10 messages + 5 receipts */
    CHECK_U64(st->receipts, 5);
    CHECK_U64(st->msgs_queued, 0);
    CHECK_EQ(st->named_agents, 2);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&ca);
    ab_client_destroy(&cb);
    ab_client_destroy(&ctl);
    free(bob);
    free(alice);
}

/* To an offline agent: kept, then delivered in order when it connects,
 * mailbox first and live messages after. Also through brokerctl. */
static void s_mailbox_order(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    ab_client_t *ca = mt_agent(port, "alice", 0, NULL);
    for (int i = 0; i < 50; i++) {
        char msg[32];
        int queued = -1;
        snprintf(msg, sizeof msg, "offline-%d", i);
        CHECK_EQ(ab_client_send_wait(ca, "carol", msg, strlen(msg), 0, 5000, &queued), AB_OK);
        CHECK_EQ(queued, 1);
    }
    ab_client_t *ctl = th_client(port);
    Agentbus__AgentList *al = mt_agents(ctl);
    REQUIRE(al != NULL);
    int found = 0;
    for (size_t i = 0; i < al->n_agents; i++)
        if (strcmp(al->agents[i]->name, "carol") == 0) {
            found = 1;
            CHECK_EQ(al->agents[i]->connected, 0);
            CHECK_EQ(al->agents[i]->mailbox_depth, 50);
        }
    CHECK_TRUE(found);
    agentbus__agent_list__free_unpacked(al, NULL);

    mt_box_t *carol = calloc(1, sizeof *carol);
    ab_client_t *cc = mt_agent(port, "carol", 0, carol);
    CHECK_EQ(mt_wait(cc, carol, AB_MSG_DIRECT, 50, 10000), 50);
    int queued = -1;
    CHECK_EQ(ab_client_send_wait(ca, "carol", "live", 4, 0, 5000, &queued), AB_OK);
    CHECK_EQ(queued, 0);
    CHECK_EQ(mt_wait(cc, carol, AB_MSG_DIRECT, 51, 5000), 51);
    for (int i = 0; i < 50 && i < carol->n; i++) {
        char msg[32];
        snprintf(msg, sizeof msg, "offline-%d", i);
        CHECK_STR(carol->data[i], msg);
        CHECK_STR(carol->sender[i], "alice");
    }
    CHECK_STR(carol->data[50], "live");
    mt_pump(&cc, 1, 200);
    CHECK_EQ(carol->n, 51); /* each exactly once */

    /* The operator's tools: brokerctl send queues, brokerctl listen prints
     * the mailbox in order. */
    char cmd[1024], out[4096];
    for (int i = 0; i < 3; i++) {
        snprintf(cmd, sizeof cmd, "%s --broker %s send dave 'note %d'", th_bin("brokerctl"),
                 th_ep(port), i);
        CHECK_EQ(th_run(cmd, out, sizeof out), 0);
        CHECK_TRUE(strstr(out, "queued") != NULL);
    }
    snprintf(cmd, sizeof cmd, "%s --broker %s --count 3 listen dave", th_bin("brokerctl"),
             th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    char *a = strstr(out, "note 0"), *b = strstr(out, "note 1"), *c = strstr(out, "note 2");
    CHECK_TRUE(a && b && c && a < b && b < c);
    printf("brokerctl listen printed:\n%s", out);
    Agentbus__Stats *st = th_stats(ctl);
    REQUIRE(st != NULL);
    CHECK_U64(st->msgs_queued, 53);
    CHECK_U64(st->mailbox_msgs, 0);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&ca);
    ab_client_destroy(&cc);
    ab_client_destroy(&ctl);
    free(carol);
}

/* A full mailbox answers BUSY to the sender (sync and async); nothing is
 * dropped silently; the ones accepted are all delivered. */
static void s_mailbox_full(void)
{
    int port = th_free_port();
    th_broker(port, "--mailbox-max-msgs", "5", "--mailbox-max-bytes", "1K", NULL);
    mt_box_t *abox = calloc(1, sizeof *abox);
    ab_client_t *ca = mt_agent(port, "alice", 0, abox);
    for (int i = 0; i < 5; i++)
        CHECK_EQ(ab_client_send_wait(ca, "erin", "x", 1, 0, 5000, NULL), AB_OK);
    CHECK_EQ(ab_client_send_wait(ca, "erin", "one too many", 12, 0, 5000, NULL), AB_EBUSY);
    printf("BUSY text: %s\n", ab_client_last_error(ca));
    CHECK_TRUE(strstr(ab_client_last_error(ca), "mailbox of 'erin' is full") != NULL);
    uint64_t id = 0;
    CHECK_EQ(ab_client_send(ca, "erin", "async", 5, 0, &id), AB_OK);
    CHECK_EQ(mt_wait(ca, abox, AB_MSG_ERROR, 1, 5000), 1);
    CHECK_EQ(abox->status[0], AB_EBUSY);
    CHECK_U64(abox->id[0], id);
    /* The byte bound: another name, 600 + 600 bytes > 1 KiB. */
    char big[600];
    memset(big, 'b', sizeof big);
    CHECK_EQ(ab_client_send_wait(ca, "frank", big, sizeof big, 0, 5000, NULL), AB_OK);
    CHECK_EQ(ab_client_send_wait(ca, "frank", big, sizeof big, 0, 5000, NULL), AB_EBUSY);
    CHECK_TRUE(strstr(ab_client_last_error(ca), "bytes") != NULL);

    mt_box_t *erin = calloc(1, sizeof *erin);
    ab_client_t *ce = mt_agent(port, "erin", 0, erin);
    CHECK_EQ(mt_wait(ce, erin, AB_MSG_DIRECT, 5, 5000), 5);
    mt_pump(&ce, 1, 200);
    CHECK_EQ(erin->n, 5);
    ab_client_t *ctl = th_client(port);
    Agentbus__Stats *st = th_stats(ctl);
    REQUIRE(st != NULL);
    CHECK_U64(st->msgs_refused, 3);
    CHECK_U64(st->msgs_queued, 6);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&ca);
    ab_client_destroy(&ce);
    ab_client_destroy(&ctl);
    free(abox);
    free(erin);
}

/* Past its TTL a message is never delivered, and it is counted. */
static void s_ttl_expiry(void)
{
    int port = th_free_port();
    th_broker(port, "--mailbox-ttl-ms", "300", NULL);
    ab_client_t *ca = mt_agent(port, "alice", 0, NULL);
    for (int i = 0; i < 4; i++)
        CHECK_EQ(ab_client_send_wait(ca, "gina", "stale", 5, 0, 5000, NULL), AB_OK);
    /* TTL 300 ms; the broker sweeps every second. Its count is waited for
     * (bounded), not 2.2 s: a broker the machine ran late had not swept. */
    ab_client_t *ctl = th_client(port);
    Agentbus__Stats *st = NULL;
    for (int64_t end = ab_now_ms() + 10000;; th_sleep_ms(50)) {
        if (st)
            agentbus__stats__free_unpacked(st, NULL);
        st = th_stats(ctl);
        REQUIRE(st != NULL);
        if (st->msgs_expired >= 4 || ab_now_ms() > end)
            break;
    }
    CHECK_U64(st->msgs_expired, 4);
    CHECK_U64(st->mailbox_msgs, 0);
    agentbus__stats__free_unpacked(st, NULL);
    /* Expiry also holds between sweeps: checked again at delivery. */
    CHECK_EQ(ab_client_send_wait(ca, "gina", "stale too", 9, 0, 5000, NULL), AB_OK);
    th_sleep_ms(400);
    mt_box_t *gina = calloc(1, sizeof *gina);
    ab_client_t *cg = mt_agent(port, "gina", 0, gina);
    REQUIRE(mt_wait_bound(ctl, "gina", 5000));
    CHECK_EQ(ab_client_send_wait(ca, "gina", "fresh", 5, 0, 5000, NULL), AB_OK);
    CHECK_EQ(mt_wait(cg, gina, AB_MSG_DIRECT, 1, 5000), 1);
    mt_pump(&cg, 1, 300);
    CHECK_EQ(gina->n, 1);
    CHECK_STR(gina->data[0], "fresh");
    st = th_stats(ctl);
    REQUIRE(st != NULL);
    CHECK_U64(st->msgs_expired, 5);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&ca);
    ab_client_destroy(&cg);
    ab_client_destroy(&ctl);
    free(gina);
}

/* A second live claim of a name is refused; the holder keeps it. */
static void s_name_taken(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    mt_box_t *first = calloc(1, sizeof *first), *second = calloc(1, sizeof *second);
    ab_client_t *c1 = mt_agent(port, "hank", 0, first);
    ab_client_t *ctl = th_client(port);
    REQUIRE(mt_wait_bound(ctl, "hank", 5000));
    ab_client_t *c2 = mt_agent(port, "hank", 0, second);
    CHECK_EQ(mt_wait(c2, second, AB_MSG_ERROR, 1, 5000), 1);
    CHECK_EQ(second->status[0], AB_ENAMETAKEN);
    printf("refusal: %s\n", second->data[0][0] ? second->data[0] : ab_client_last_error(c2));
    CHECK_TRUE(strstr(ab_client_last_error(c2), "held by a live connection") != NULL);
    ab_client_t *ca = mt_agent(port, NULL, 0, NULL);
    CHECK_EQ(ab_client_send_wait(ca, "hank", "to the holder", 13, 0, 5000, NULL), AB_OK);
    CHECK_EQ(mt_wait(c1, first, AB_MSG_DIRECT, 1, 5000), 1);
    mt_pump(&c2, 1, 200);
    CHECK_EQ(second->count[AB_MSG_DIRECT], 0);
    char cmd[1024], out[2048];
    snprintf(cmd, sizeof cmd, "%s --broker %s --count 1 listen hank", th_bin("brokerctl"),
             th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 1);
    CHECK_TRUE(strstr(out, "NAME_TAKEN") != NULL);
    ab_client_destroy(&c1);
    ab_client_destroy(&c2);
    ab_client_destroy(&ca);
    ab_client_destroy(&ctl);
    free(first);
    free(second);
}

/* A name that breaks the rules (ab_options_set_name checks only its
 * length) is refused like a taken one: an AB_MSG_ERROR with id 0 (before
 * 2026-12-08 it carried the id of the handle's HELLO, 1, which reads as a
 * refusal of a message the application never sent), and the handle goes on
 * unnamed. */
static void s_name_bad(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    mt_box_t *box = calloc(1, sizeof *box);
    ab_client_t *c = mt_agent(port, "~not-a-name", 0, box);
    CHECK_EQ(mt_wait(c, box, AB_MSG_ERROR, 1, 5000), 1);
    CHECK_EQ(box->status[0], AB_EBADNAME);
    CHECK_U64(box->id[0], 0);
    printf("refusal: id %llu, %s\n", (unsigned long long)box->id[0], ab_client_last_error(c));
    CHECK_EQ(ab_client_send_wait(c, "someone", "x", 1, 0, 5000, NULL), AB_OK);
    ab_client_destroy(&c);
    free(box);
}

/* With the takeover option the newcomer gets the name (and its messages);
 * the old connection is told. */
static void s_takeover(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    mt_box_t *old = calloc(1, sizeof *old), *neu = calloc(1, sizeof *neu);
    ab_client_t *c1 = mt_agent(port, "ivan", 0, old);
    ab_client_t *ctl = th_client(port);
    REQUIRE(mt_wait_bound(ctl, "ivan", 5000));
    ab_client_t *c2 = mt_agent(port, "ivan", 1, neu);
    CHECK_EQ(mt_wait(c1, old, AB_MSG_ERROR, 1, 5000), 1);
    CHECK_EQ(old->status[0], AB_ENAMETAKEN);
    CHECK_TRUE(strstr(ab_client_last_error(c1), "taken over") != NULL);
    ab_client_t *ca = mt_agent(port, NULL, 0, NULL);
    int queued = -1;
    CHECK_EQ(ab_client_send_wait(ca, "ivan", "after takeover", 14, 0, 5000, &queued), AB_OK);
    CHECK_EQ(queued, 0);
    CHECK_EQ(mt_wait(c2, neu, AB_MSG_DIRECT, 1, 5000), 1);
    CHECK_STR(neu->data[0], "after takeover");
    CHECK_EQ(neu->count[AB_MSG_ERROR], 0);
    mt_pump(&c1, 1, 200);
    CHECK_EQ(old->count[AB_MSG_DIRECT], 0);
    /* The old connection, now unnamed, may leave without touching the name. */
    ab_client_destroy(&c1);
    th_sleep_ms(200);
    CHECK_TRUE(mt_wait_bound(ctl, "ivan", 2000));
    ab_client_destroy(&c2);
    ab_client_destroy(&ca);
    ab_client_destroy(&ctl);
    free(old);
    free(neu);
}

/* Request/reply between agents: an answer to a SEND that carries the
 * question's id, named and unnamed askers. */
static void s_upper_cb(ab_client_t *c, const ab_message_t *m, void *arg)
{
    (void)arg;
    if (m->type != AB_MSG_DIRECT)
        return;
    char buf[64];
    size_t n = m->size < sizeof buf ? m->size : sizeof buf;
    for (size_t i = 0; i < n; i++)
        buf[i] = (char)((((const char *)m->data)[i] >= 'a' && ((const char *)m->data)[i] <= 'z')
                            ? ((const char *)m->data)[i] - 32
                            : ((const char *)m->data)[i]);
    ab_client_reply(c, m, buf, n);
}

static void s_ask_reply(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    ab_client_t *srv = mt_agent(port, "upper", 0, NULL);
    ab_client_on_message(srv, s_upper_cb, NULL);
    ab_client_t *ctl = th_client(port);
    REQUIRE(mt_wait_bound(ctl, "upper", 5000));
    ab_client_t *named = mt_agent(port, "asker", 0, NULL), *anon = mt_agent(port, NULL, 0, NULL);
    th_answer_t a1 = {0}, a2 = {0}, a3 = {0};
    CHECK_EQ(ab_client_ask(named, "upper", "hello", 5, 5000, th_answer_cb, &a1, NULL), AB_OK);
    CHECK_EQ(ab_client_ask(anon, "upper", "world", 5, 5000, th_answer_cb, &a2, NULL), AB_OK);
    ab_client_t *all[3] = {srv, named, anon};
    for (int k = 0; k < 250 && (a1.finals < 1 || a2.finals < 1); k++)
        mt_pump(all, 3, 20);
    CHECK_EQ(a1.finals, 1);
    CHECK_EQ(a1.status, AB_OK);
    CHECK_STR(a1.data, "HELLO");
    CHECK_EQ(a2.finals, 1);
    CHECK_EQ(a2.status, AB_OK);
    CHECK_STR(a2.data, "WORLD");
    /* Nobody answers for "silent": the asker's timeout ends the call. */
    CHECK_EQ(ab_client_ask(named, "silent", "?", 1, 300, th_answer_cb, &a3, NULL), AB_OK);
    for (int k = 0; k < 100 && a3.finals < 1; k++)
        ab_client_poll(named, 20);
    CHECK_EQ(a3.finals, 1);
    CHECK_EQ(a3.status, AB_ETIMEOUT);
    ab_client_destroy(&srv);
    ab_client_destroy(&named);
    ab_client_destroy(&anon);
    ab_client_destroy(&ctl);
}

/* Replies "to" someone else's ask or request: any agent may send a message
 * that says it answers id N (ids are easy to guess), but only the agent
 * asked ends an ask, and no message ends a request. The forgeries reach
 * the application as what they are: messages from their sender. */
static void s_forged_answer(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    mt_box_t *abox = calloc(1, sizeof *abox), *bbox = calloc(1, sizeof *bbox);
    ab_client_t *alice = mt_agent(port, "alice", 0, abox);
    ab_client_t *bob = mt_agent(port, "bob", 0, bbox);
    ab_client_t *mallory = mt_agent(port, "mallory", 0, NULL);
    ab_options_t *o = ab_options_new();
    REQUIRE(o && ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
    ab_worker_t *w = NULL;
    REQUIRE(ab_worker_new(&w, o, "slow", 1) == AB_OK);
    ab_options_destroy(&o);
    ab_client_t *ctl = th_client(port);
    REQUIRE(mt_wait_bound(ctl, "alice", 5000) && mt_wait_bound(ctl, "bob", 5000));
    th_answer_t ask = {0}, req = {0};
    uint64_t ask_id = 0, req_id = 0;
    CHECK_EQ(ab_client_ask(alice, "bob", "q", 1, 20000, th_answer_cb, &ask, &ask_id), AB_OK);
    CHECK_EQ(ab_client_request_start(alice, "slow", "r", 1, NULL, th_answer_cb, &req, &req_id),
             AB_OK);
    ab_client_t *all[3] = {alice, bob, mallory};
    ab_job_t *job = NULL; /* the worker holds the request until the end */
    for (int k = 0; k < 250 && (!job || bbox->n < 1); k++) {
        mt_pump(all, 3, 20);
        if (!job)
            ab_worker_recv(w, &job, 0);
    }
    REQUIRE(job != NULL && bbox->n >= 1);
    /* mallory answers both ids, as if it were bob and the service */
    ab_message_t fake = {.type = AB_MSG_DIRECT, .sender = "alice", .target = "mallory"};
    fake.id = ask_id;
    CHECK_EQ(ab_client_reply(mallory, &fake, "forged-ask", 10), AB_OK);
    fake.id = req_id;
    CHECK_EQ(ab_client_reply(mallory, &fake, "forged-req", 10), AB_OK);
    for (int k = 0; k < 250 && abox->count[AB_MSG_DIRECT] < 2; k++)
        mt_pump(all, 3, 20);
    printf("forged: ask %d finals, request %d finals; alice got %d messages\n", ask.finals,
           req.finals, abox->count[AB_MSG_DIRECT]);
    CHECK_EQ(ask.finals, 0);
    CHECK_EQ(req.finals, 0);
    CHECK_EQ(abox->count[AB_MSG_DIRECT], 2);
    for (int i = 0; i < abox->n; i++) {
        CHECK_STR(abox->sender[i], "mallory");
        CHECK_TRUE(abox->reply_to[i] == ask_id || abox->reply_to[i] == req_id);
    }
    /* the real answers still end them */
    ab_message_t q = {.type = AB_MSG_DIRECT, .sender = "alice", .target = "bob"};
    q.id = bbox->id[0];
    CHECK_EQ(ab_client_reply(bob, &q, "real-ask", 8), AB_OK);
    CHECK_EQ(ab_worker_reply(w, &job, "real-req", 8), AB_OK);
    for (int k = 0; k < 250 && (ask.finals < 1 || req.finals < 1); k++) {
        mt_pump(all, 3, 20);
        ab_worker_poll(w, 0, NULL, NULL);
    }
    CHECK_EQ(ask.finals, 1);
    CHECK_STR(ask.data, "real-ask");
    CHECK_EQ(req.finals, 1);
    CHECK_STR(req.data, "real-req");
    ab_job_destroy(&job);
    ab_worker_destroy(&w);
    ab_client_destroy(&alice);
    ab_client_destroy(&bob);
    ab_client_destroy(&mallory);
    ab_client_destroy(&ctl);
    free(abox);
    free(bbox);
}

/* Bad names and oversized messages: clear errors, counted, the broker
 * unharmed; the library refuses what it can tell is bad before sending. */
static void s_direct_bad(void)
{
    int port = th_free_port();
    pid_t broker = th_broker(port, "--message-max-bytes", "1000", NULL);
    ab_client_t *ca = mt_agent(port, "alice", 0, NULL);
    CHECK_EQ(ab_client_send(ca, "has space", "x", 1, 0, NULL), AB_EBADNAME);
    CHECK_EQ(ab_client_send(ca, "", "x", 1, 0, NULL), AB_EBADNAME);
    /* A NULL name is a NULL argument (the header's rule), not a bad name. */
    CHECK_EQ(ab_client_send(ca, NULL, "x", 1, 0, NULL), AB_EINVAL);
    CHECK_EQ(ab_client_send_wait(ca, NULL, "x", 1, 0, 1000, NULL), AB_EINVAL);
    /* A flag bit it does not know is refused, not ignored (it was sent). */
    CHECK_EQ(ab_client_send(ca, "bob", "x", 1, 0x100, NULL), AB_EINVAL);
    CHECK_TRUE(strstr(ab_client_last_error(ca), "unknown send flags 0x100") != NULL);
    CHECK_EQ(ab_client_send_wait(ca, "bob", "x", 1, AB_SEND_RECEIPT | 4, 1000, NULL), AB_EINVAL);
    char big[2000];
    memset(big, 'x', sizeof big);
    CHECK_EQ(ab_client_send_wait(ca, "bob", big, sizeof big, 0, 5000, NULL), AB_ETOOLARGE);
    printf("TOO_LARGE text: %s\n", ab_client_last_error(ca));
    CHECK_TRUE(strstr(ab_client_last_error(ca), "message-max-bytes") != NULL);
    void *ctx = NULL, *raw = mt_raw(port, &ctx);
    char text[256] = "";
    CHECK_EQ(mt_raw_expect_error(raw, AB_KIND_SEND, "bad name", 7, 1, text, sizeof text),
             AB_ERR_BAD_NAME);
    CHECK_TRUE(strstr(text, "malformed agent name") != NULL);
    CHECK_EQ(mt_raw_expect_error(raw, AB_KIND_SEND, "", 8, 1, NULL, 0), AB_ERR_BAD_NAME);
    CHECK_EQ(mt_raw_expect_error(raw, AB_KIND_SEND, "~ffff", 9, 1, text, sizeof text),
             AB_ERR_NO_AGENT);
    CHECK_EQ(mt_raw_expect_error(raw, AB_KIND_SEND, "bob", 10, 5000, NULL, 0), AB_ERR_TOO_LARGE);
    zmq_close(raw);
    zmq_ctx_term(ctx);
    CHECK_EQ(ab_client_send_wait(ca, "bob", "still fine", 10, 0, 5000, NULL), AB_OK);
    CHECK_TRUE(th_alive(broker));
    ab_client_t *ctl = th_client(port);
    Agentbus__Stats *st = th_stats(ctl);
    REQUIRE(st != NULL);
    CHECK_U64(st->msgs_refused, 5);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&ca);
    ab_client_destroy(&ctl);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"direct_once", s_direct_once}, {"mailbox_order", s_mailbox_order},
        {"mailbox_full", s_mailbox_full}, {"ttl_expiry", s_ttl_expiry},
        {"name_taken", s_name_taken}, {"name_bad", s_name_bad}, {"takeover", s_takeover},
        {"ask_reply", s_ask_reply},
        {"direct_bad", s_direct_bad}, {"forged_answer", s_forged_answer},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
