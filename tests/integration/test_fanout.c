/*
 * test_fanout.c - fan-out batching against a real broker: subscribers that
 * read BATCH get the publications of a loop turn gathered, and still each
 * one exactly once, in each publisher's order, with overlapping patterns,
 * next to a subscriber that does not read BATCH. One case per ctest entry.
 */
#include "harness.h"
#include "msgtest.h"
#include "test.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { NPUB = 2, NSUB = 4, ROUNDS = 12, BURST = 100, PER_PUB = ROUNDS * BURST };

/* A subscriber client recording into BOX; BATCHING 0 announces that it
 * does not read BATCH. */
static ab_client_t *s_sub(int port, int batching, mt_box_t *box)
{
    ab_options_t *o = ab_options_new();
    REQUIRE(o != NULL);
    REQUIRE(ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
    REQUIRE(ab_options_set_batching(o, batching) == AB_OK);
    ab_client_t *c = NULL;
    REQUIRE(ab_client_new(&c, o) == AB_OK);
    ab_options_destroy(&o);
    mt_box_attach(c, box);
    return c;
}

/* Publisher K's message number I: P0 alternates fan.a and fan.b, P1 is on
 * fan.a only. */
static const char *s_topic(int k, int i)
{
    return k == 0 && i % 2 ? "fan.b" : "fan.a";
}

/* Checks that what BOX holds from each publisher comes in publishing order
 * with nothing skipped that the subscriber matches (ONLY_B: it matches
 * fan.b alone) and nothing twice; the caller checks the counts. */
static void s_check_order(const mt_box_t *box, int sub, int only_b)
{
    int next[NPUB] = {0, 0};
    for (int j = 0; j < box->n; j++) {
        CHECK_EQ(box->type[j], AB_MSG_TOPIC);
        int k = -1, i = -1;
        if (sscanf(box->data[j], "p%d:%d", &k, &i) != 2 || k < 0 || k >= NPUB) {
            CHECK_TRUE(!"a payload this test did not send");
            continue;
        }
        /* The next number this subscriber must get from publisher K. */
        while (next[k] < PER_PUB && only_b && strcmp(s_topic(k, next[k]), "fan.b") != 0)
            next[k]++;
        if (i != next[k])
            printf("subscriber %d: from p%d got %d, expected %d\n", sub, k, i, next[k]);
        CHECK_EQ(i, next[k]);
        CHECK_STR(box->target[j], s_topic(k, i));
        next[k] = i + 1;
    }
}

static int s_total(const mt_box_t *box)
{
    int n = 0;
    for (int s = 0; s < NSUB; s++)
        n += box[s].n;
    return n;
}

static void s_batched_order(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    mt_box_t *box = calloc(NSUB, sizeof *box);
    REQUIRE(box != NULL);
    /* 0 "fan."; 1 "fan." and "fan.a" (each message once); 2 "fan.b" only;
     * 3 "fan." without BATCH: its queue never shares a body with others. */
    ab_client_t *c[NSUB + NPUB];
    for (int s = 0; s < NSUB; s++)
        c[s] = s_sub(port, s != 3, &box[s]);
    CHECK_EQ(ab_client_subscribe(c[0], "fan.", 5000), AB_OK);
    CHECK_EQ(ab_client_subscribe(c[1], "fan.", 5000), AB_OK);
    CHECK_EQ(ab_client_subscribe(c[1], "fan.a", 5000), AB_OK);
    CHECK_EQ(ab_client_subscribe(c[2], "fan.b", 5000), AB_OK);
    CHECK_EQ(ab_client_subscribe(c[3], "fan.", 5000), AB_OK);
    c[NSUB] = mt_agent(port, "p0", 0, NULL);
    c[NSUB + 1] = mt_agent(port, "p1", 0, NULL);
    /* Bursts without polling in between: each publisher's library gathers
     * them into BATCHes, so the broker routes many publications in one
     * turn and batches them towards the subscribers. */
    char data[32];
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = r * BURST; i < (r + 1) * BURST; i++)
            for (int k = 0; k < NPUB; k++) {
                snprintf(data, sizeof data, "p%d:%05d", k, i);
                REQUIRE(ab_client_publish(c[NSUB + k], s_topic(k, i), data, strlen(data),
                                          NULL) == AB_OK);
            }
        mt_pump(c, NSUB + NPUB, 5);
    }
    int want = 3 * NPUB * PER_PUB + PER_PUB / 2;
    int64_t end = ab_now_ms() + 20000;
    while (s_total(box) < want && ab_now_ms() < end)
        mt_pump(c, NSUB + NPUB, 20);
    mt_pump(c, NSUB + NPUB, 300); /* and nothing more */
    CHECK_EQ(box[0].n, NPUB * PER_PUB);
    CHECK_EQ(box[1].n, NPUB * PER_PUB);
    CHECK_EQ(box[2].n, PER_PUB / 2);
    CHECK_EQ(box[3].n, NPUB * PER_PUB);
    for (int s = 0; s < NSUB; s++)
        s_check_order(&box[s], s, s == 2);
    Agentbus__Stats *st = th_stats(c[NSUB]);
    REQUIRE(st != NULL);
    printf("published %llu, fan-out %llu, batches out %llu carrying %llu messages\n",
           (unsigned long long)st->published, (unsigned long long)st->fanout,
           (unsigned long long)st->batches_out, (unsigned long long)st->batched_msgs_out);
    CHECK_U64(st->published, NPUB * PER_PUB);
    CHECK_U64(st->fanout, (unsigned long long)want);
    CHECK_U64(st->slow_drops, 0);
    /* The bursts were batched towards the subscribers that read BATCH. */
    CHECK_TRUE(st->batches_out > 0);
    CHECK_TRUE(st->batched_msgs_out > 2 * st->batches_out);
    agentbus__stats__free_unpacked(st, NULL);
    for (int s = 0; s < NSUB + NPUB; s++)
        ab_client_destroy(&c[s]);
    free(box);
}

static const th_case_t s_cases[] = {{"batched_order", s_batched_order}};

int main(int argc, char **argv)
{
    return th_main(argc, argv, s_cases, sizeof s_cases / sizeof s_cases[0]);
}
