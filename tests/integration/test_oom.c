/*
 * test_oom.c - the broker out of memory for one message: a payload it
 * cannot copy into a message of its own must never travel on as an empty
 * one. The broker runs with failalloc.so preloaded, which fails its
 * zmq_msg_init_size for messages of exactly 777 bytes (as ENOMEM would);
 * 777-byte payloads then arrive inline (under 1 KiB), where the broker
 * reads them in place and must copy them to keep them. One case per ctest
 * entry; real broker and worker processes.
 */
#include "harness.h"
#include "msgtest.h"
#include "test.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_FAIL 777

#ifndef AB_FAILALLOC
#error "AB_FAILALLOC must name failalloc.so"
#endif

/* The preload for the broker: failalloc.so, after the sanitizer's runtime
 * when this program runs with one (it must come first). */
static const char *s_preload(void)
{
    static char env[1200];
    char asan[1024] = "";
    FILE *f = fopen("/proc/self/maps", "r");
    char line[1400];
    while (f && fgets(line, sizeof line, f)) {
        char *p = strstr(line, "/");
        if (p && strstr(p, "/libasan.so")) {
            p[strcspn(p, "\n")] = 0;
            snprintf(asan, sizeof asan, "%s:", p);
            break;
        }
    }
    if (f)
        fclose(f);
    snprintf(env, sizeof env, "LD_PRELOAD=%s%s", asan, AB_FAILALLOC);
    return env;
}

static pid_t s_broker(int port)
{
    static char size[32];
    snprintf(size, sizeof size, "AB_FAILALLOC_SIZE=%d", S_FAIL);
    const char *env[] = {s_preload(), size, NULL};
    return th_broker_env(port, env, NULL);
}

/* The broker's L1 cache hits so far, or -1. */
static long long s_l1_hits(ab_client_t *c)
{
    Agentbus__Stats *st = th_stats(c);
    long long h = st && st->cache && st->cache->n_tiers ? (long long)st->cache->tiers[0]->hits : -1;
    if (st)
        agentbus__stats__free_unpacked(st, NULL);
    return h;
}

static void s_fill(char *buf, size_t n, char seed)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = (char)('a' + (seed + i) % 26);
}

/* A request whose own payload cannot be kept: INTERNAL, and the broker
 * goes on (the next request is answered). */
static void s_request_payload(void)
{
    int port = th_free_port();
    s_broker(port);
    th_worker(port, "echo", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "echo", 1, 10000) == 0);
    char in[2000];
    s_fill(in, sizeof in, 1);
    void *out = NULL;
    size_t n = 0;
    CHECK_EQ(ab_client_request(c, "echo", in, S_FAIL, 10000, &out, &n), AB_EINTERNAL);
    CHECK_TRUE(out == NULL);
    CHECK_EQ(ab_client_request(c, "echo", in, S_FAIL + 1, 10000, &out, &n), AB_OK);
    CHECK_EQ(n, S_FAIL + 1);
    CHECK_TRUE(out && memcmp(out, in, n) == 0);
    ab_free(out);
    ab_client_destroy(&c);
}

/* Answers the broker must copy but cannot (a cacheable request's: the
 * cache keeps them; an idle client's: a message of their own goes to it):
 * the client gets INTERNAL, never an empty chunk or reply in their place,
 * and nothing is stored in the cache. */
static void s_answer_payload(void)
{
    int port = th_free_port();
    s_broker(port);
    th_worker(port, "echo", "--chunks", "2", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "echo", 1, 10000) == 0);
    char in[2 * S_FAIL];
    s_fill(in, sizeof in, 2);
    void *out = NULL;
    size_t n = 0;
    /* The request (1,554 bytes, a frame of its own) is kept; its first
     * 777-byte chunk (inline) is not, whether cacheable or not. */
    for (int cache = 0; cache < 2; cache++) {
        CHECK_EQ(ab_client_set_cache(c, cache ? AB_CACHE_ON : 0, 0), AB_OK);
        int rc = ab_client_request(c, "echo", in, sizeof in, 10000, &out, &n);
        if (rc == AB_OK)
            fprintf(stderr, "an answer came back as %zu bytes, not INTERNAL\n", n);
        CHECK_EQ(rc, AB_EINTERNAL);
        CHECK_TRUE(strstr(ab_client_last_error(c), "out of memory") != NULL);
        CHECK_TRUE(out == NULL);
    }
    /* Nothing wrong was stored: the same request again goes to the worker
     * and fails the same way, where a stored empty answer would be a hit. */
    CHECK_EQ(ab_client_request(c, "echo", in, sizeof in, 10000, &out, &n), AB_EINTERNAL);
    CHECK_EQ(s_l1_hits(c), 0);
    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    CHECK_TRUE(th_stat_error(st, "INTERNAL") >= 3);
    agentbus__stats__free_unpacked(st, NULL);
    /* Other sizes are cached and answered as usual. */
    char small[1000];
    s_fill(small, sizeof small, 3);
    for (int i = 0; i < 2; i++) {
        CHECK_EQ(ab_client_request(c, "echo", small, sizeof small, 10000, &out, &n), AB_OK);
        CHECK_EQ(n, sizeof small);
        CHECK_TRUE(out && memcmp(out, small, n) == 0);
        ab_free(out);
        out = NULL;
    }
    CHECK_EQ(s_l1_hits(c), 1);
    ab_client_destroy(&c);
}

/* A direct message and a publication the broker cannot keep: the sender
 * gets BUSY (try again), the recipient nothing (not an empty message in its
 * place); the next ones arrive whole. */
static void s_messages(void)
{
    int port = th_free_port();
    s_broker(port);
    ab_client_t *alice = mt_agent(port, "alice", 0, NULL), *bob = mt_agent(port, "bob", 0, NULL);
    ab_client_t *ctl = th_client(port);
    REQUIRE(mt_wait_bound(ctl, "bob", 5000) == 1);
    REQUIRE(ab_client_subscribe(bob, "t.x", 5000) == AB_OK);
    /* One answer first: a client sends inline once it knows the broker
     * reads it. */
    REQUIRE(ab_client_subscribe(alice, "other", 5000) == AB_OK);
    char in[S_FAIL + 1];
    s_fill(in, sizeof in, 4);
    CHECK_EQ(ab_client_send_wait(alice, "bob", in, S_FAIL, 0, 5000, NULL), AB_EBUSY);
    CHECK_TRUE(strstr(ab_client_last_error(alice), "out of memory") != NULL);
    CHECK_EQ(ab_client_send_wait(alice, "bob", in, S_FAIL + 1, 0, 5000, NULL), AB_OK);
    uint64_t id1 = 0, id2 = 0;
    CHECK_EQ(ab_client_publish(alice, "t.x", in, S_FAIL, &id1), AB_OK);
    CHECK_EQ(ab_client_publish(alice, "t.x", in, S_FAIL + 1, &id2), AB_OK);
    /* Both polled in turn (neither may fall silent) until all came. */
    int errors = 0, direct = 0, topic = 0, wrong = 0;
    for (int k = 0; k < 250 && (errors < 1 || direct < 1 || topic < 1); k++) {
        ab_message_t *m = NULL;
        if (ab_client_recv(alice, &m, 10) == AB_OK) {
            if (m->type == AB_MSG_ERROR && m->id == id1 && m->status == AB_EBUSY)
                errors++;
            else
                wrong++;
            ab_message_destroy(&m);
        }
        if (ab_client_recv(bob, &m, 10) == AB_OK) {
            int whole = m->size == S_FAIL + 1 && memcmp(m->data, in, m->size) == 0;
            if (m->type == AB_MSG_DIRECT && whole)
                direct++;
            else if (m->type == AB_MSG_TOPIC && m->id == id2 && whole)
                topic++;
            else
                wrong++;
            ab_message_destroy(&m);
        }
    }
    CHECK_EQ(errors, 1);
    CHECK_EQ(direct, 1);
    CHECK_EQ(topic, 1);
    CHECK_EQ(wrong, 0);
    mt_pump(&bob, 1, 300); /* nothing more comes */
    ab_message_t *m = NULL;
    CHECK_EQ(ab_client_recv(bob, &m, 0), AB_ETIMEOUT);
    ab_client_destroy(&alice);
    ab_client_destroy(&bob);
    ab_client_destroy(&ctl);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"request_payload", s_request_payload},
        {"answer_payload", s_answer_payload},
        {"messages", s_messages},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
