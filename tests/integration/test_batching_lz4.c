/*
 * test_batching_lz4.c - lz4 payloads end to end and malformed BATCH bodies
 * (part of test_batching, batchtest.h): what the broker forwards untouched,
 * what a receiver refuses, and what a bad batch costs its sender.
 */
#include "batch.h"
#include "compress.h"
#include "harness.h"
#include "test.h"
#include "util.h"
#include "batchtest.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- compression --------------------------------------------------------------------- */
/* The stack of both lz4 cases on PORT's broker: raw worker W (registered
 * for "raw", reads lz4: it sees exactly what the broker forwards), an echo
 * worker, and a library client that sends TEXT (N bytes) to "raw", whose
 * REQUEST W receives into *M. Returns the client. */
static ab_client_t *s_lz4_stack(int port, void *w, const char *text, size_t n, bt_msg_t *m)
{
    bt_raw_register(w, "raw", 4, AB_FEATURE_LZ4);
    th_worker(port, "echo", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "echo", 1, 10000) == 0);
    REQUIRE(th_wait_workers(c, "raw", 1, 10000) == 0);
    uint64_t id;
    REQUIRE(ab_client_request_start(c, "raw", text, n, &(ab_request_opts_t){.timeout_ms = 20000},
                                    NULL, NULL, &id) == AB_OK);
    ab_client_flush(c);
    REQUIRE(bt_raw_recv_msg(w, m, 5000));
    CHECK_EQ(m->h.kind, AB_KIND_REQUEST);
    return c;
}

/* TEXT (N bytes) to the echo worker and back, equal; then C's calls in
 * flight (the raw worker's answer) end within 10 s. */
static void s_echo_then_drain(ab_client_t *c, const char *text, size_t n)
{
    void *reply = NULL;
    size_t rlen = 0;
    CHECK_EQ(ab_client_request(c, "echo", text, n, 20000, &reply, &rlen), AB_OK);
    CHECK_U64(rlen, n);
    CHECK_TRUE(reply && rlen == n && memcmp(reply, text, n) == 0);
    ab_free(reply);
    int64_t end = ab_now_ms() + 10000;
    while (ab_client_pending(c) && ab_now_ms() < end)
        ab_client_poll(c, 50);
    CHECK_EQ(ab_client_pending(c), 0);
}

void batch_lz4(void)
{
    enum { BIG = 256 * 1024 };
    int port = th_free_port();
    /* The mechanism: lz4 on the loopback hop too (by default only hops that
     * leave the machine compress: batch_lz4_local). */
    th_broker(port, "--compress-local", NULL);
    bt_lz4_local = 1;
    void *socks[1];
    void *w = socks[0] = bt_raw(port);
    char *text = bt_text(BIG);
    bt_msg_t m;
    ab_client_t *c = s_lz4_stack(port, w, text, BIG, &m);
    CHECK_TRUE(m.h.flags & AB_FLAG_LZ4);
    CHECK_TRUE(m.h.flags & AB_FLAG_ACCEPT_LZ4); /* the library client reads lz4 */
    CHECK_U64(m.h.original_size, BIG);
    size_t zl = zmq_msg_size(&m.body);
    printf("%d bytes of text crossed the broker as %zu bytes\n", BIG, zl);
    CHECK_TRUE(zl < BIG / 2);
    char *back = malloc(BIG);
    CHECK_EQ(ab_lz4_check(zl, m.h.original_size, 64 << 20), AB_OK);
    CHECK_EQ(ab_lz4_decompress(zmq_msg_data(&m.body), zl, back, BIG), AB_OK);
    CHECK_TRUE(memcmp(back, text, BIG) == 0);
    /* The raw worker answers with the same compressed bytes: the client
     * library must hand the application the plain text. */
    ab_header_t r = ab_header_init(AB_KIND_REPLY);
    r.correlation_id = m.h.id;
    r.flags = AB_FLAG_LZ4;
    r.original_size = BIG;
    bt_raw_send(w, &r, zmq_msg_data(&m.body), zl, 1);
    bt_msg_close(&m);
    /* A sync request to the echo worker: compressed both ways by the library. */
    s_echo_then_drain(c, text, BIG);

    /* Incompressible bytes go as they are, flagged as skipped. */
    char *rnd = malloc(64 * 1024);
    for (size_t i = 0; i < 64 * 1024; i++)
        rnd[i] = (char)t_rand();
    s_echo_then_drain(c, rnd, 64 * 1024);

    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    printf("lz4: %llu compressed (%llu -> %llu bytes, ratio %.2f, saved %llu), %llu skipped\n",
           (unsigned long long)st->lz4_msgs, (unsigned long long)st->lz4_original_bytes,
           (unsigned long long)st->lz4_wire_bytes, st->compression_ratio,
           (unsigned long long)st->bytes_saved, (unsigned long long)st->lz4_skipped);
    /* Request + reply of the raw exchange, request + reply of the echo. */
    CHECK_U64(st->lz4_msgs, 4);
    CHECK_U64(st->lz4_original_bytes, 4ull * BIG);
    CHECK_TRUE(st->compression_ratio > 2.0);
    CHECK_TRUE(st->bytes_saved > 2ull * BIG);
    CHECK_U64(st->lz4_skipped, 2); /* the random request and its echo */
    /* Everything the broker received is less than the text it carried:
     * it routed the compressed bytes. */
    CHECK_TRUE(st->bytes_in < 4ull * BIG);
    agentbus__stats__free_unpacked(st, NULL);

    char cmd[512], out[16384];
    snprintf(cmd, sizeof cmd, "%s --broker %s --json stats", th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    json_error_t err;
    json_t *j = json_loads(out, 0, &err);
    CHECK_TRUE(j != NULL);
    json_t *comp = j ? json_object_get(j, "compression") : NULL;
    CHECK_EQ(json_integer_value(json_object_get(comp, "compressed")), 4);
    CHECK_EQ(json_integer_value(json_object_get(comp, "skipped")), 2);
    CHECK_TRUE(json_object_get(j, "batching") != NULL);
    json_decref(j);
    snprintf(cmd, sizeof cmd, "%s --broker %s stats", th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "compression  ratio") != NULL);
    CHECK_TRUE(strstr(out, "batching     in") != NULL);
    free(rnd);
    free(back);
    free(text);
    ab_client_destroy(&c);
    bt_raw_close_all(socks, 1);
}

/* The default: every hop here is on loopback, where lz4 costs more CPU than
 * the copy it saves, so nothing is compressed: the broker announces no LZ4
 * to a local peer (bt_raw_hello checks it), the library then sends a long
 * request plain, and the broker does not ask a local worker to compress
 * its reply (no ACCEPT_LZ4). A peer that compresses anyway is still read.
 * (Hops that leave the machine: hop_lz4_netns.) */
void batch_lz4_local(void)
{
    enum { BIG = 256 * 1024 };
    int port = th_free_port();
    th_broker(port, NULL);
    bt_lz4_local = 0;
    void *socks[2];
    void *hello = socks[1] = bt_raw(port);
    bt_raw_hello(hello, AB_FEATURE_LZ4 | AB_FEATURE_BATCH | AB_FEATURE_INLINE);
    void *w = socks[0] = bt_raw(port);
    char *text = bt_text(BIG);
    bt_msg_t m;
    ab_client_t *c = s_lz4_stack(port, w, text, BIG, &m);
    CHECK_TRUE(!(m.h.flags & (AB_FLAG_LZ4 | AB_FLAG_LZ4_SKIPPED))); /* not even tried */
    CHECK_TRUE(!(m.h.flags & AB_FLAG_ACCEPT_LZ4));
    CHECK_U64(zmq_msg_size(&m.body), BIG);
    CHECK_TRUE(zmq_msg_size(&m.body) == BIG && memcmp(zmq_msg_data(&m.body), text, BIG) == 0);
    /* This worker compresses anyway: the client still reads it. */
    void *z = NULL;
    size_t zl = 0;
    REQUIRE(ab_lz4_compress(text, BIG, 10, &z, &zl) == 1);
    ab_header_t r = ab_header_init(AB_KIND_REPLY);
    r.correlation_id = m.h.id;
    r.flags = AB_FLAG_LZ4;
    r.original_size = BIG;
    bt_raw_send(w, &r, z, zl, 1);
    free(z);
    bt_msg_close(&m);
    /* Through the echo worker (a library worker): plain both ways. */
    s_echo_then_drain(c, text, BIG);
    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    printf("lz4 on loopback: %llu compressed, %llu skipped, %llu bytes in\n",
           (unsigned long long)st->lz4_msgs, (unsigned long long)st->lz4_skipped,
           (unsigned long long)st->bytes_in);
    CHECK_U64(st->lz4_msgs, 1); /* the raw worker's own reply, only */
    CHECK_U64(st->lz4_skipped, 0);
    CHECK_TRUE(st->bytes_in > 2ull * BIG); /* the echo's request and reply, plain */
    agentbus__stats__free_unpacked(st, NULL);
    free(text);
    ab_client_destroy(&c);
    bt_raw_close_all(socks, 2);
}

/* A compressed request that lies about its size reaches the worker library
 * (the broker does not look inside), which answers MALFORMED and survives. */
void batch_lz4_corrupt(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    th_worker(port, "echo", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "echo", 1, 10000) == 0);
    void *socks[1];
    void *raw = socks[0] = bt_raw(port);
    bt_raw_hello(raw, AB_FEATURE_LZ4);
    char *text = bt_text(8192);
    void *z;
    size_t zl;
    REQUIRE(ab_lz4_compress(text, 8192, 10, &z, &zl) == 1);
    uint64_t sizes[3] = {8191, 8193, 1ull << 40}; /* short, long, absurd */
    for (int i = 0; i < 4; i++) {
        ab_header_t h = ab_header_init(AB_KIND_REQUEST);
        h.id = (uint64_t)i + 1;
        h.target = ab_view_of("echo");
        h.flags = AB_FLAG_LZ4;
        h.original_size = i < 3 ? sizes[i] : 8192;
        if (i == 3) /* right size, corrupt block */
            memset(z, 0xee, zl / 2);
        bt_raw_send(raw, &h, z, zl, 1);
        bt_msg_t m;
        REQUIRE(bt_raw_recv_msg(raw, &m, 5000));
        CHECK_EQ(m.h.kind, AB_KIND_ERROR);
        CHECK_EQ(m.h.error_code, AB_ERR_MALFORMED);
        CHECK_U64(m.h.correlation_id, (uint64_t)i + 1);
        bt_msg_close(&m);
    }
    char out[64];
    void *reply = NULL;
    size_t n = 0;
    CHECK_EQ(ab_client_request(c, "echo", "still here", 10, 5000, &reply, &n), AB_OK);
    snprintf(out, sizeof out, "%.*s", (int)n, (char *)reply);
    CHECK_STR(out, "still here");
    ab_free(reply);
    free(z);
    free(text);
    ab_client_destroy(&c);
    bt_raw_close_all(socks, 1);
}


/* --- malformed batches ------------------------------------------------------------- */
static void s_send_batch(void *raw, const uint8_t *body, size_t len)
{
    ab_header_t h = ab_header_init(AB_KIND_BATCH);
    bt_raw_send(raw, &h, body, len, 1);
}

void batch_malformed(void)
{
    int port = th_free_port();
    pid_t broker = th_broker(port, NULL);
    const char *env[] = {"AB_BATCH=0", NULL};
    const char *args[] = {"--broker", th_ep(port), "--backend", "echo", "--service", "echo",
                          NULL};
    th_spawn("agentbus-worker", args, env);
    ab_client_t *c = bt_client_nobatch(port);
    REQUIRE(th_wait_workers(c, "echo", 1, 10000) == 0);
    void *socks[1];
    void *raw = socks[0] = bt_raw(port);
    bt_raw_hello(raw, 0);

    ab_batch_t b;
    ab_batch_init(&b);
    for (uint64_t i = 0; i < 3; i++) {
        ab_header_t h = ab_header_init(AB_KIND_REQUEST);
        h.id = 10 + i;
        h.target = ab_view_of("echo");
        uint8_t hb[64];
        size_t hl = ab_header_encode(&h, hb, sizeof hb);
        ab_batch_add(&b, hb, hl, "abc", 3, 1);
    }
    size_t len;
    const uint8_t *good = ab_batch_body(&b, &len);
    uint8_t *m = malloc(len + 64);
    int bad = 0;
    memcpy(m, good, len);
    m[0] = 4; /* count too large */
    s_send_batch(raw, m, len), bad++;
    s_send_batch(raw, good, len - 2), bad++; /* truncated entry */
    memcpy(m, good, len);
    m[4] = 0x7f; /* header length past the end */
    s_send_batch(raw, m, len), bad++;
    { /* nested: a batch entry that is itself a BATCH */
        ab_batch_t outer;
        ab_batch_init(&outer);
        ab_header_t h = ab_header_init(AB_KIND_BATCH);
        uint8_t hb[64];
        size_t hl = ab_header_encode(&h, hb, sizeof hb);
        ab_batch_add(&outer, hb, hl, good, len, 1);
        size_t olen;
        const uint8_t *ob = ab_batch_body(&outer, &olen);
        s_send_batch(raw, ob, olen), bad++;
        ab_batch_fini(&outer);
    }
    { /* no body at all */
        ab_header_t h = ab_header_init(AB_KIND_BATCH);
        bt_raw_send(raw, &h, NULL, 0, 0), bad++;
    }
    int errors = 0, replies = 0;
    for (int i = 0; i < bad; i++) {
        bt_msg_t r;
        if (!bt_raw_recv_msg(raw, &r, 3000))
            break;
        errors += r.h.kind == AB_KIND_ERROR && r.h.error_code == AB_ERR_MALFORMED;
        replies += r.h.kind == AB_KIND_REPLY;
        bt_msg_close(&r);
    }
    CHECK_EQ(errors, bad);
    CHECK_EQ(replies, 0); /* no entry of a malformed batch was delivered */
    /* A good batch from the same peer: each entry answered, in order,
     * unbatched (this peer did not announce batching). */
    s_send_batch(raw, good, len);
    for (uint64_t i = 0; i < 3; i++) {
        bt_msg_t r;
        REQUIRE(bt_raw_recv_msg(raw, &r, 5000));
        CHECK_EQ(r.h.kind, AB_KIND_REPLY);
        CHECK_U64(r.h.correlation_id, 10 + i);
        CHECK_EQ(zmq_msg_size(&r.body), 3);
        bt_msg_close(&r);
    }
    CHECK_TRUE(th_alive(broker));
    Agentbus__Stats *st = th_stats(c);
    REQUIRE(st != NULL);
    CHECK_U64(st->batch_malformed, (unsigned long long)bad);
    CHECK_U64(st->malformed, (unsigned long long)bad);
    CHECK_U64(st->requests, 3); /* only the good batch's */
    CHECK_U64(st->batches_in, 1);
    CHECK_U64(st->batched_msgs_in, 3);
    agentbus__stats__free_unpacked(st, NULL);
    free(m);
    ab_batch_fini(&b);
    ab_client_destroy(&c);
    bt_raw_close_all(socks, 1);
}
