/*
 * test_gw_events.c - what a gateway call holds of a worker's answer
 * (gateway/gw_bus.c, gw_call_deliver), in bytes whatever the worker sends:
 * - a stream: false answer's events together, their records counted: a
 *   million empty chunks are cut like 17 chunks of 1 MiB, with AB_EBACKEND
 *   and a text saying why, and nothing is kept after the cut (its final
 *   event, when it comes, neither);
 * - a streamed answer's chunk alone: the chunks before it stay, then the
 *   error event;
 * - a streamed answer's events waiting for a client that does not read
 *   (--max-stream-buffer-bytes), records counted: empty chunks too.
 * Run under ASan it also checks that the dropped events are freed.
 */
#include "gw_bus.h"
#include "gw_http.h"
#include "agentbus.h"
#include "test.h"

#include <stdlib.h>
#include <string.h>

static gw_call_t *s_call(size_t max_whole, int each, size_t max_queued)
{
    gw_call_t *k = gw_call_new(GW_OP_REQUEST);
    REQUIRE(k);
    k->max_whole = max_whole;
    k->whole_each = each;
    k->max_queued = max_queued;
    return k;
}

/* Events held by K now, and their bytes. */
static size_t s_held(gw_call_t *k, size_t *bytes)
{
    size_t n = 0;
    *bytes = 0;
    for (gw_event_t *e = k->head; e; e = e->next, n++)
        *bytes += e->size;
    return n;
}

/* Delivers up to MAX chunks of SIZE bytes; returns how many went before
 * one cut the call (MAX when none did). */
static size_t s_flood(gw_call_t *k, size_t size, size_t max)
{
    static char data[1 << 20];
    for (size_t i = 0; i < max; i++)
        if (gw_call_deliver(k, AB_OK, 0, data, size, "") == 2)
            return i;
    return max;
}

static void s_test_whole(void)
{
    /* 1 MiB chunks: the 16th, with the records, passes 16 MiB */
    gw_call_t *k = s_call(GW_MAX_WHOLE_BYTES, 0, 0);
    CHECK_U64(s_flood(k, 1 << 20, 100), 15);
    size_t bytes, n = s_held(k, &bytes);
    CHECK_U64(n, 1); /* the error event alone */
    CHECK_TRUE(k->final && k->status == AB_EBACKEND && k->head && k->head->final &&
               k->head->status == AB_EBACKEND);
    CHECK_TRUE(strstr(k->error, "stream false") != NULL);
    /* after the cut: chunks and the final event are dropped, the error stays */
    CHECK_EQ(gw_call_deliver(k, AB_OK, 0, "x", 1, ""), 1);
    CHECK_EQ(gw_call_deliver(k, AB_ECANCELLED, 1, NULL, 0, "cancelled"), 1);
    CHECK_TRUE(k->status == AB_EBACKEND && s_held(k, &bytes) == 1);
    gw_call_unref(k);

    /* empty chunks: their records count (a million of them were 32 MB) */
    k = s_call(GW_MAX_WHOLE_BYTES, 0, 0);
    size_t went = s_flood(k, 0, 1000000);
    CHECK_TRUE(went < 1000000);
    CHECK_TRUE(went >= GW_MAX_WHOLE_BYTES / (sizeof(gw_event_t) + 64));
    CHECK_TRUE(k->status == AB_EBACKEND && s_held(k, &bytes) == 1);
    gw_call_unref(k);

    /* within the bound: every chunk and the final reply are kept */
    k = s_call(GW_MAX_WHOLE_BYTES, 0, 0);
    CHECK_U64(s_flood(k, 4096, 1000), 1000);
    CHECK_EQ(gw_call_deliver(k, AB_OK, 1, "end", 3, ""), 0);
    CHECK_TRUE(k->final && k->status == AB_OK);
    CHECK_U64(s_held(k, &bytes), 1001);
    CHECK_U64(bytes, 1000 * 4096 + 3);
    gw_call_unref(k);
}

static void s_test_each(void)
{
    static char big[GW_MAX_WHOLE_BYTES + 1];
    gw_call_t *k = s_call(GW_MAX_WHOLE_BYTES, 1, 0);
    /* many chunks together may pass the bound, one alone may not */
    CHECK_U64(s_flood(k, 1 << 20, 40), 40);
    CHECK_EQ(gw_call_deliver(k, AB_OK, 0, big, sizeof big, ""), 2);
    size_t bytes, n = s_held(k, &bytes);
    CHECK_U64(n, 41); /* the 40 before it, then the error */
    CHECK_TRUE(k->tail->final && k->tail->status == AB_EBACKEND && k->tail->size == 0);
    CHECK_TRUE(strstr(k->error, "chunk") != NULL);
    CHECK_EQ(gw_call_deliver(k, AB_OK, 1, "end", 3, ""), 1);
    CHECK_U64(s_held(k, &bytes), 41);
    gw_call_unref(k);
}

/* A stream whose client does not read: empty chunks fill the bound too. */
static void s_test_queued(void)
{
    gw_call_t *k = s_call(GW_MAX_WHOLE_BYTES, 1, 1 << 20);
    size_t went = s_flood(k, 0, 1000000);
    CHECK_TRUE(went < 1000000);
    CHECK_TRUE(k->overflow && !k->head);
    gw_call_unref(k);
}

int main(void)
{
    s_test_whole();
    s_test_each();
    s_test_queued();
    return TEST_DONE("gw_events");
}
