/*
 * test_cache.c - the broker's inference cache and single-flight (issue 6)
 * against a real broker process. The worker runs in a thread of the test
 * (libagentbus's worker API) so the test counts exactly how many requests
 * reached it; every reply carries that count ("DATA#N"), so a reply served
 * from the cache is told apart from a fresh one by its number.
 *
 * One ctest entry per case (tests/integration/CMakeLists.txt). This file
 * has L1, the flags, typed requests and single-flight; the lower tiers are
 * in test_cache_tiers.c, hostile peers in test_cache_hostile.c, the shared
 * helpers in cachetest.c (one program, test_cache).
 */
#include "harness.h"
#include "test.h"
#include "util.h"
#include "cache_key.h"
#include "codec.h"
#include "cachetest.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


/* --- cases --------------------------------------------------------------------------- */

/* A repeated cacheable request is served from L1: same reply (same #N),
 * the worker never sees the second. Unmarked requests are never cached. */
static void s_l1_repeat(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    ab_client_t *c = th_client(port);
    ct_wk_t x = {.port = port, .service = "echo"};
    pthread_t th = ct_worker_start(&x, c);
    char out[512];
    CHECK_EQ(ab_client_set_cache(c, AB_CACHE_ON, 0), AB_OK);
    CHECK_EQ(ct_req(c, "echo", "hello", out, sizeof out), AB_OK);
    CHECK_STR(out, "hello#1");
    CHECK_EQ(ct_req(c, "echo", "hello", out, sizeof out), AB_OK);
    CHECK_STR(out, "hello#1");
    CHECK_EQ(atomic_load(&x.jobs), 1);
    CHECK_U64(ct_l1_hits(c), 1);
    /* Another payload is another key. */
    CHECK_EQ(ct_req(c, "echo", "hellp", out, sizeof out), AB_OK);
    CHECK_STR(out, "hellp#2");
    /* Not marked: never cached (raw requests are cacheable only if marked). */
    CHECK_EQ(ab_client_set_cache(c, 0, 0), AB_OK);
    CHECK_EQ(ct_req(c, "echo", "plain", out, sizeof out), AB_OK);
    CHECK_STR(out, "plain#3");
    CHECK_EQ(ct_req(c, "echo", "plain", out, sizeof out), AB_OK);
    CHECK_STR(out, "plain#4");
    CHECK_EQ(atomic_load(&x.jobs), 4);
    /* A second client gets the first one's cached reply. */
    ab_client_t *c2 = th_client(port);
    ab_client_set_cache(c2, AB_CACHE_ON, 0);
    CHECK_EQ(ct_req(c2, "echo", "hello", out, sizeof out), AB_OK);
    CHECK_STR(out, "hello#1");
    CHECK_EQ(atomic_load(&x.jobs), 4);
    CHECK_EQ(ab_client_set_cache(c2, 0x100, 0), AB_EINVAL);
    ab_client_destroy(&c2);
    ct_worker_end(&x, th);
    ab_client_destroy(&c);
}

/* Agents the broker holds a record for (stats), or -1. */
static int s_agents(ab_client_t *ctl)
{
    Agentbus__Stats *st = th_stats(ctl);
    int n = st ? (int)st->agents : -1;
    if (st)
        agentbus__stats__free_unpacked(st, NULL);
    return n;
}

/* A synchronous client silent past the broker's liveness is dropped; its
 * next request makes a new record. The library says HELLO again first, so
 * that record knows what the client reads and the request keeps its cache
 * key (without the HELLO it was keyed as a plain-only client's: a miss). */
static void s_idle_client(void)
{
    int port = th_free_port();
    th_broker(port, "--heartbeat-ms", "100", NULL);
    ab_client_t *c = th_client(port);
    ab_client_t *ctl = th_client(port);
    ct_wk_t x = {.port = port, .service = "echo"};
    pthread_t th = ct_worker_start(&x, c);
    char out[512];
    CHECK_EQ(ab_client_set_cache(c, AB_CACHE_ON, 0), AB_OK);
    CHECK_EQ(ct_req(c, "echo", "idle", out, sizeof out), AB_OK);
    CHECK_STR(out, "idle#1");
    REQUIRE(s_agents(ctl) == 1);
    /* c says nothing now: wait (bounded) until the broker drops it. */
    int n = 1;
    for (int i = 0; i < 300 && (n = s_agents(ctl)) != 0; i++)
        th_sleep_ms(50);
    REQUIRE(n == 0);
    CHECK_EQ(ct_req(c, "echo", "idle", out, sizeof out), AB_OK);
    CHECK_STR(out, "idle#1");
    CHECK_EQ(atomic_load(&x.jobs), 1);
    ct_worker_end(&x, th);
    ab_client_destroy(&ctl);
    ab_client_destroy(&c);
}

/* L1 counted the entry it found expired (the last request's lookup). */
static void s_expired_seen(ab_client_t *c)
{
    Agentbus__Stats *st;
    Agentbus__CacheStats *cs = ct_cache_stats(c, &st);
    CHECK_TRUE(cs->tiers[0]->expired >= 1);
    agentbus__stats__free_unpacked(st, NULL);
}

/* no-cache: not read (but stored); no-store: not stored (but read); TTL. */
static void s_flags(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    ab_client_t *c = th_client(port);
    ct_wk_t x = {.port = port, .service = "echo"};
    pthread_t th = ct_worker_start(&x, c);
    char out[512];
    ab_client_set_cache(c, AB_CACHE_ON, 0);
    CHECK_EQ(ct_req(c, "echo", "a", out, sizeof out), AB_OK);
    CHECK_STR(out, "a#1");
    ab_client_set_cache(c, AB_CACHE_ON | AB_CACHE_NO_READ, 0);
    CHECK_EQ(ct_req(c, "echo", "a", out, sizeof out), AB_OK);
    CHECK_STR(out, "a#2"); /* not read... */
    ab_client_set_cache(c, AB_CACHE_ON, 0);
    CHECK_EQ(ct_req(c, "echo", "a", out, sizeof out), AB_OK);
    CHECK_STR(out, "a#2"); /* ...but its fresh reply was stored */
    ab_client_set_cache(c, AB_CACHE_ON | AB_CACHE_NO_STORE, 0);
    CHECK_EQ(ct_req(c, "echo", "b", out, sizeof out), AB_OK);
    CHECK_STR(out, "b#3");
    CHECK_EQ(ct_req(c, "echo", "a", out, sizeof out), AB_OK);
    CHECK_STR(out, "a#2"); /* no-store still reads */
    ab_client_set_cache(c, AB_CACHE_ON, 0);
    CHECK_EQ(ct_req(c, "echo", "b", out, sizeof out), AB_OK);
    CHECK_STR(out, "b#4"); /* b was not stored */
    /* Per-request TTL: 1 s, then a fresh reply. */
    ab_client_set_cache(c, AB_CACHE_ON, 1);
    char key[32];
    int n;
    int64_t stored = ct_cached_within(&x, c, "t", 1000, key, sizeof key, &n);
    ct_sleep_past(stored, 1000);
    CHECK_EQ(ct_req(c, "echo", key, out, sizeof out), AB_OK);
    CHECK_EQ(ct_num(out), n + 1); /* the worker's again: expired */
    s_expired_seen(c);
    ct_worker_end(&x, th);
    ab_client_destroy(&c);
}

/* A worker's label cache-ttl-s sets its service's default TTL; a
 * request's own TTL still wins. */
static void s_service_ttl(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    ab_client_t *c = th_client(port);
    ct_wk_t x = {.port = port, .service = "echo", .ttl_label = "1"};
    pthread_t th = ct_worker_start(&x, c);
    char out[512], key[32];
    ab_client_set_cache(c, AB_CACHE_ON, 60);
    int64_t b_asked = ab_now_ms();
    CHECK_EQ(ct_req(c, "echo", "b", out, sizeof out), AB_OK);
    CHECK_STR(out, "b#1");
    ab_client_set_cache(c, AB_CACHE_ON, 0);
    int n;
    int64_t stored = ct_cached_within(&x, c, "a", 1000, key, sizeof key, &n);
    ct_sleep_past(stored, 1000);
    CHECK_EQ(ct_req(c, "echo", key, out, sizeof out), AB_OK);
    CHECK_EQ(ct_num(out), n + 1); /* the service's 1 s passed */
    CHECK_EQ(ct_req(c, "echo", "b", out, sizeof out), AB_OK);
    if (ab_now_ms() - b_asked < 60000)
        CHECK_STR(out, "b#1"); /* the request's own 60 s did not */
    s_expired_seen(c);
    ct_worker_end(&x, th);
    ab_client_destroy(&c);
}

/* A worker's cache-ttl-s label is capped by the broker's
 * cache-label-ttl-max-s (issue 14): a worker cannot keep its answers (or a
 * poisoned one) cached for longer than the operator allows. */
static void s_label_ttl_cap(void)
{
    int port = th_free_port();
    th_broker(port, "--cache-label-ttl-max-s", "1", NULL);
    ab_client_t *c = th_client(port);
    ct_wk_t x = {.port = port, .service = "echo", .ttl_label = "2592000"};
    pthread_t th = ct_worker_start(&x, c);
    char out[512], key[32];
    ab_client_set_cache(c, AB_CACHE_ON, 0);
    int n;
    int64_t stored = ct_cached_within(&x, c, "a", 1000, key, sizeof key, &n);
    ct_sleep_past(stored, 1000);
    CHECK_EQ(ct_req(c, "echo", key, out, sizeof out), AB_OK);
    CHECK_EQ(ct_num(out), n + 1); /* 1 s, not the label's 30 days */
    s_expired_seen(c);
    ct_worker_end(&x, th);
    ab_client_destroy(&c);
}

/* An error reply is never cached: each repeat reaches the worker. */
static void s_error_not_cached(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    ab_client_t *c = th_client(port);
    ct_wk_t x = {.port = port, .service = "echo"};
    pthread_t th = ct_worker_start(&x, c);
    char out[512];
    ab_client_set_cache(c, AB_CACHE_ON, 0);
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(ct_req(c, "echo", "fail", out, sizeof out), AB_EAPPLICATION);
        CHECK_STR(ab_client_last_error(c), "refused on purpose");
    }
    CHECK_EQ(atomic_load(&x.jobs), 3);
    Agentbus__Stats *st;
    Agentbus__CacheStats *cs = ct_cache_stats(c, &st);
    CHECK_U64(cs->tiers[0]->entries, 0);
    CHECK_U64(cs->tiers[0]->hits, 0);
    agentbus__stats__free_unpacked(st, NULL);
    ct_worker_end(&x, th);
    ab_client_destroy(&c);
}

/* Packs a generate request with TEMP (< 0: absent) and SEED (< 0: absent). */
static size_t s_generate(uint8_t *buf, const char *prompt, double temp, long seed)
{
    Agentbus__InferenceOptions o = AGENTBUS__INFERENCE_OPTIONS__INIT;
    if (temp >= 0) {
        o.has_temperature_case = AGENTBUS__INFERENCE_OPTIONS__HAS_TEMPERATURE_TEMPERATURE;
        o.temperature = temp;
    }
    if (seed >= 0) {
        o.has_seed_case = AGENTBUS__INFERENCE_OPTIONS__HAS_SEED_SEED;
        o.seed = seed;
    }
    Agentbus__GenerateRequest g = AGENTBUS__GENERATE_REQUEST__INIT;
    g.model = "tiny:latest";
    g.prompt = (char *)prompt;
    g.options = &o;
    g.has_stream_case = AGENTBUS__GENERATE_REQUEST__HAS_STREAM_STREAM;
    g.stream = 0;
    Agentbus__InferenceRequest r = AGENTBUS__INFERENCE_REQUEST__INIT;
    r.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_GENERATE;
    r.generate = &g;
    return agentbus__inference_request__pack(&r, buf);
}

static int s_typed(ab_client_t *c, const uint8_t *buf, size_t len)
{
    ct_got_t g = {0};
    REQUIRE(
        ab_client_request_start(c, "infer", buf, len,
                                &(ab_request_opts_t){.timeout_ms = 10000, .model = "tiny:latest"},
                                ct_got_cb, &g, NULL) == AB_OK);
    ct_poll_all(&c, 1, &g, 1, 10000);
    return g.status == AB_OK ? atoi(strrchr(g.final, '#') ? strrchr(g.final, '#') + 1 : "0")
                             : -1;
}

/* Typed inference requests: deterministic ones are cached without being
 * marked; a sampling one (temperature > 0, no seed) never is. */
static void s_typed_determinism(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    ab_client_t *c = th_client(port);
    ct_wk_t x = {.port = port, .service = "infer"};
    pthread_t th = ct_worker_start(&x, c);
    uint8_t buf[512];
    size_t len = s_generate(buf, "why?", 0.0, -1);
    CHECK_EQ(s_typed(c, buf, len), 1);
    CHECK_EQ(s_typed(c, buf, len), 1); /* temperature 0: cached */
    len = s_generate(buf, "why?", 0.8, -1);
    CHECK_EQ(s_typed(c, buf, len), 2);
    CHECK_EQ(s_typed(c, buf, len), 3); /* sampling: never cached */
    len = s_generate(buf, "why?", 0.8, 1234);
    CHECK_EQ(s_typed(c, buf, len), 4);
    CHECK_EQ(s_typed(c, buf, len), 4); /* fixed seed: cached */
    len = s_generate(buf, "why?", 0.8, 1235);
    CHECK_EQ(s_typed(c, buf, len), 5); /* another seed, another answer */
    /* The caller may mark a sampling request cacheable on purpose. */
    ab_client_set_cache(c, AB_CACHE_ON, 0);
    len = s_generate(buf, "why?", 0.8, -1);
    CHECK_EQ(s_typed(c, buf, len), 6);
    CHECK_EQ(s_typed(c, buf, len), 6);
    CHECK_EQ(atomic_load(&x.jobs), 6);
    ct_worker_end(&x, th);
    ab_client_destroy(&c);
}

/* A long prompt travels lz4-compressed (the library compresses requests of
 * 1 KiB or more on a hop that compresses: --compress-local makes loopback
 * one); the broker keys it on the plain bytes, so a deterministic
 * long-prompt request is cached like a short one. */
static void s_typed_lz4(void)
{
    int port = th_free_port();
    th_broker(port, "--compress-local", NULL);
    ab_client_t *c = th_client(port);
    ct_wk_t x = {.port = port, .service = "infer"};
    pthread_t th = ct_worker_start(&x, c);
    static char prompt[8192];
    size_t pl = 0;
    while (pl + 64 < sizeof prompt) /* prose-like, so it compresses */
        pl += (size_t)snprintf(prompt + pl, sizeof prompt - pl, "the agent %zu reads the plan. ",
                               pl % 97);
    static uint8_t buf[16384];
    size_t len = s_generate(buf, prompt, 0.0, -1);
    REQUIRE(len > 4096);
    /* (The echoed reply is long: s_typed cannot read its "#N"; the worker's
     * job count and the L1 hits tell what happened.) */
    CHECK_TRUE(s_typed(c, buf, len) >= 0);
    CHECK_TRUE(s_typed(c, buf, len) >= 0); /* served from L1 */
    CHECK_EQ(atomic_load(&x.jobs), 1);
    CHECK_U64(ct_l1_hits(c), 1);
    Agentbus__Stats *st;
    Agentbus__CacheStats *cs = ct_cache_stats(c, &st);
    (void)cs;
    CHECK_TRUE(st->lz4_msgs >= 1); /* the request did travel compressed */
    agentbus__stats__free_unpacked(st, NULL);
    /* Another prompt of the same length is another key. */
    prompt[10] = prompt[10] == 'x' ? 'y' : 'x';
    len = s_generate(buf, prompt, 0.0, -1);
    CHECK_TRUE(s_typed(c, buf, len) >= 0);
    CHECK_EQ(atomic_load(&x.jobs), 2);
    ct_worker_end(&x, th);
    ab_client_destroy(&c);
}

/* 100 identical requests at once: one reaches the worker, all get its
 * reply. */
static void s_coalesce_100(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    ab_client_t *c = th_client(port);
    ct_wk_t x = {.port = port, .service = "echo", .delay_ms = 500};
    pthread_t th = ct_worker_start(&x, c);
    ab_client_set_cache(c, AB_CACHE_ON, 0);
    static ct_got_t g[100];
    memset(g, 0, sizeof g);
    for (int i = 0; i < 100; i++)
        REQUIRE(ab_client_request_start(c, "echo", "same", 4,
                                        &(ab_request_opts_t){.timeout_ms = 20000}, ct_got_cb, &g[i],
                                        NULL) == AB_OK);
    ct_poll_all(&c, 1, g, 100, 20000);
    int ok = 0;
    for (int i = 0; i < 100; i++)
        ok += g[i].finals == 1 && g[i].status == AB_OK && strcmp(g[i].final, "same#1") == 0;
    CHECK_EQ(ok, 100);
    CHECK_EQ(atomic_load(&x.jobs), 1);
    Agentbus__Stats *st;
    Agentbus__CacheStats *cs = ct_cache_stats(c, &st);
    CHECK_U64(cs->coalesced, 99);
    CHECK_U64(cs->in_flight, 0);
    CHECK_U64(st->pending, 0);
    agentbus__stats__free_unpacked(st, NULL);
    ct_worker_end(&x, th);
    ab_client_destroy(&c);
}

/* Identical streamed requests: every waiter gets every chunk in order (one
 * joins mid-stream and is replayed the start); then a hit is replayed as
 * the same stream. */
static void s_stream_fanout(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    ab_client_t *cs[3];
    for (int i = 0; i < 3; i++) {
        cs[i] = th_client(port);
        ab_client_set_cache(cs[i], AB_CACHE_ON, 0);
    }
    ct_wk_t x = {.port = port, .service = "echo", .chunk_ms = 150};
    pthread_t th = ct_worker_start(&x, cs[0]);
    static ct_got_t g[7];
    memset(g, 0, sizeof g);
    for (int i = 0; i < 5; i++)
        REQUIRE(ab_client_request_start(cs[i % 3], "echo", "stream", 6,
                                        &(ab_request_opts_t){.timeout_ms = 20000}, ct_got_cb, &g[i],
                                        NULL) == AB_OK);
    /* A late one, after some chunks went out: once the first came (a
     * state; after 350 ms of polling a broker the machine ran late had
     * sent none). */
    int64_t until = ab_now_ms() + 10000;
    while (g[0].partials < 1 && ab_now_ms() < until)
        for (int i = 0; i < 3; i++)
            ab_client_poll(cs[i], 5);
    CHECK_TRUE(g[0].partials >= 1 && g[0].finals == 0);
    REQUIRE(ab_client_request_start(cs[1], "echo", "stream", 6,
                                    &(ab_request_opts_t){.timeout_ms = 20000}, ct_got_cb, &g[5],
                                    NULL) == AB_OK);
    ct_poll_all(cs, 3, g, 6, 20000);
    const char *want = "part0#1;part1#1;part2#1;part3#1;";
    for (int i = 0; i < 6; i++) {
        CHECK_EQ(g[i].status, AB_OK);
        CHECK_EQ(g[i].partials, 4);
        CHECK_STR(g[i].chunks, want);
        CHECK_STR(g[i].final, "stream#1");
    }
    CHECK_EQ(atomic_load(&x.jobs), 1);
    /* Now from the cache: the same shape, 4 chunks then the reply. */
    REQUIRE(ab_client_request_start(cs[2], "echo", "stream", 6,
                                    &(ab_request_opts_t){.timeout_ms = 20000}, ct_got_cb, &g[6],
                                    NULL) == AB_OK);
    ct_poll_all(&cs[2], 1, &g[6], 1, 10000);
    CHECK_EQ(g[6].partials, 4);
    CHECK_STR(g[6].chunks, want);
    CHECK_STR(g[6].final, "stream#1");
    CHECK_EQ(atomic_load(&x.jobs), 1);
    CHECK_U64(ct_l1_hits(cs[0]), 1);
    ct_worker_end(&x, th);
    for (int i = 0; i < 3; i++)
        ab_client_destroy(&cs[i]);
}

/* The leader fails (transient error): its client gets the error, its
 * waiters are re-dispatched and answered, not failed. */
static void s_leader_fails(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    ab_client_t *c = th_client(port);
    ct_wk_t x = {.port = port, .service = "echo", .delay_ms = 300};
    pthread_t th = ct_worker_start(&x, c);
    ab_client_set_cache(c, AB_CACHE_ON, 0);
    static ct_got_t g[5];
    memset(g, 0, sizeof g);
    for (int i = 0; i < 5; i++)
        REQUIRE(ab_client_request_start(c, "echo", "flaky", 5,
                                        &(ab_request_opts_t){.timeout_ms = 20000}, ct_got_cb, &g[i],
                                        NULL) == AB_OK);
    ct_poll_all(&c, 1, g, 5, 20000);
    CHECK_EQ(g[0].status, AB_EINTERNAL);
    for (int i = 1; i < 5; i++) {
        CHECK_EQ(g[i].status, AB_OK);
        CHECK_STR(g[i].final, "flaky#2");
    }
    CHECK_EQ(atomic_load(&x.jobs), 2);
    Agentbus__Stats *st;
    Agentbus__CacheStats *cs = ct_cache_stats(c, &st);
    CHECK_U64(cs->redispatched, 1);
    CHECK_U64(cs->coalesced, 4);
    agentbus__stats__free_unpacked(st, NULL);
    ct_worker_end(&x, th);
    ab_client_destroy(&c);
}

/* A waiter whose own deadline passes gets DEADLINE alone; the leader and
 * the other waiter are answered. */
static void s_waiter_deadline(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    ab_client_t *c = th_client(port);
    ct_wk_t x = {.port = port, .service = "echo", .delay_ms = 1000};
    pthread_t th = ct_worker_start(&x, c);
    ab_client_set_cache(c, AB_CACHE_ON, 0);
    static ct_got_t g[3];
    memset(g, 0, sizeof g);
    REQUIRE(ab_client_request_start(c, "echo", "slow", 4, &(ab_request_opts_t){.timeout_ms = 10000},
                                    ct_got_cb, &g[0], NULL) == AB_OK);
    REQUIRE(ab_client_request_start(c, "echo", "slow", 4, &(ab_request_opts_t){.timeout_ms = 200},
                                    ct_got_cb, &g[1], NULL) == AB_OK);
    REQUIRE(ab_client_request_start(c, "echo", "slow", 4, &(ab_request_opts_t){.timeout_ms = 10000},
                                    ct_got_cb, &g[2], NULL) == AB_OK);
    ct_poll_all(&c, 1, g, 3, 15000);
    CHECK_EQ(g[0].status, AB_OK);
    CHECK_EQ(g[1].status, AB_EDEADLINE);
    CHECK_EQ(g[2].status, AB_OK);
    CHECK_STR(g[2].final, "slow#1");
    CHECK_EQ(atomic_load(&x.jobs), 1);
    ct_worker_end(&x, th);
    ab_client_destroy(&c);
}

/* The key the broker computes for a cacheable request to "echo" with
 * DATA (SIZE bytes), from the same inputs, in hex. */
static void s_echo_key_hex(const char *data, size_t size, char *hex)
{
    ab_key_input_t in = {"echo", "", NULL, AB_FLAG_CACHEABLE, data, size, 0, 0};
    ab_cache_key_t k;
    REQUIRE(ab_cache_key(&in, &k) == AB_KEY_RAW);
    ab_cache_key_hex(&k, hex);
}

/* `--json cache get KEY` of a text and of a binary entry: one JSON
 * document each, bytes as text or as hex ("data_hex"). Before, the chunk's
 * json_pack format named no keys for flags and original_size: brokerctl
 * crashed (SIGSEGV, exit 139) on every entry. */
static void s_cli_json_get(int port, const char *ctl, const char *hex, const char *text)
{
    char cmd[1024], out[4096], want[64];
    snprintf(cmd, sizeof cmd, "%s --broker %s --json cache get %s", ctl, th_ep(port), hex);
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    snprintf(want, sizeof want, "\"data\": \"%s\"", text);
    CHECK_TRUE(strstr(out, want) && strstr(out, "\"flags\": 0") &&
               strstr(out, "\"kind\": \"REPLY\"") && strstr(out, "\"tier\": \"l1\""));
    snprintf(cmd, sizeof cmd, "%s --broker %s request --cache=60 echo \"$(printf 'b\\377')\"",
             ctl, th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    char bhex[AB_CACHE_KEY_HEX];
    s_echo_key_hex("b\377", 2, bhex);
    snprintf(cmd, sizeof cmd, "%s --broker %s --json cache get %s", ctl, th_ep(port), bhex);
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "\"data_hex\": \"62ff23") != NULL); /* "b\377#N" */
    if (!strstr(out, "62ff23"))
        fprintf(stderr, "brokerctl --json cache get printed: %s\n", out);
}

/* brokerctl request --cache / --no-cache, cache, cache get KEY, cache clear. */
static void s_cli(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    ab_client_t *c = th_client(port);
    ct_wk_t x = {.port = port, .service = "echo"};
    pthread_t th = ct_worker_start(&x, c);
    char cmd[1024], out[4096];
    const char *ctl = th_bin("brokerctl");
    snprintf(cmd, sizeof cmd, "%s --broker %s request --cache=60 echo hi", ctl, th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_STR(out, "hi#1");
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_STR(out, "hi#1");
    snprintf(cmd, sizeof cmd, "%s --broker %s request --cache --no-cache echo hi", ctl,
             th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_STR(out, "hi#2");
    snprintf(cmd, sizeof cmd, "%s --broker %s --json cache", ctl, th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "\"hits\": 1") && strstr(out, "\"entries\": 1"));
    char hex[AB_CACHE_KEY_HEX];
    s_echo_key_hex("hi", 2, hex);
    snprintf(cmd, sizeof cmd, "%s --broker %s cache get %s", ctl, th_ep(port), hex);
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, hex) && strstr(out, "REPLY") && strstr(out, "hi#2"));
    snprintf(cmd, sizeof cmd, "%s --broker %s cache get 00000000000000000000000000000000", ctl,
             th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 1);
    CHECK_TRUE(strstr(out, "NOT_FOUND: no such cache entry") != NULL);
    /* A malformed key is the caller's mistake (brokerctl refuses it itself:
     * usage, exit 2; the broker says BAD_REQUEST); a tier not configured is
     * not supported here (no --data-dir). */
    snprintf(cmd, sizeof cmd, "%s --broker %s cache get 12zz", ctl, th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 2);
    void *rep = NULL;
    size_t rlen = 0;
    CHECK_EQ(ab_client_control(c, "cache get 12zz", 5000, &rep, &rlen), AB_EBADREQUEST);
    CHECK_EQ(ab_client_control(c, "cache get 00000000000000000000000000000000", 5000, &rep,
                               &rlen), AB_ENOTFOUND);
    CHECK_EQ(ab_client_control(c, "cache frobnicate", 5000, &rep, &rlen), AB_EUNSUPPORTED);
    snprintf(cmd, sizeof cmd, "%s --broker %s cache clear --tier l3", ctl, th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 1);
    CHECK_TRUE(strstr(out, "UNSUPPORTED: there is no L3 cache") != NULL);
    snprintf(cmd, sizeof cmd, "%s --broker %s cache clear --tier l1", ctl, th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    snprintf(cmd, sizeof cmd, "%s --broker %s request --cache echo hi", ctl, th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_STR(out, "hi#3");
    s_cli_json_get(port, ctl, hex, "hi#3");
    snprintf(cmd, sizeof cmd, "%s --broker %s request --bogus echo hi", ctl, th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 2);
    snprintf(cmd, sizeof cmd, "%s --broker %s stats", ctl, th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "cache") && strstr(out, "l1"));
    snprintf(cmd, sizeof cmd, "%s --broker %s --json stats", ctl, th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "\"cache\"") && strstr(out, "\"coalesced\""));
    ct_worker_end(&x, th);
    ab_client_destroy(&c);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"l1_repeat", s_l1_repeat}, {"idle_client", s_idle_client}, {"flags", s_flags},
        {"error_not_cached", s_error_not_cached},
        {"typed", s_typed_determinism}, {"typed_lz4", s_typed_lz4},
        {"coalesce_100", s_coalesce_100}, {"stream_fanout", s_stream_fanout},
        {"leader_fails", s_leader_fails}, {"waiter_deadline", s_waiter_deadline}, {"cli", s_cli},
        {"service_ttl", s_service_ttl}, {"label_ttl_cap", s_label_ttl_cap},
        /* test_cache_tiers.c */
        {"l3_restart", cache_l3_restart}, {"l3_epoch", cache_l3_epoch},
        {"l2_shared", cache_l2_shared}, {"l2_big_entry", cache_l2_big_entry},
        {"l2_down", cache_l2_down}, {"l2_absent", cache_l2_absent}, {"l2_clear", cache_l2_clear},
        {"l2_slow", cache_l2_slow},
        {"l3_truncated", cache_l3_truncated}, {"l2_breaker_skips", cache_l2_breaker_skips},
        {"l3_stop_signals", cache_l3_stop_signals},
        {"l2_sigstop", cache_l2_sigstop}, {"l2_sigkill", cache_l2_sigkill},
        /* test_cache_hostile.c */
        {"lz4_bomb", cache_lz4_bomb}, {"lz4_bombs_beat", cache_lz4_bombs_beat},
        {"model_key", cache_model_key},
        {"cancelled_leader", cache_cancelled_leader},
        {"l2_garbage_array", cache_l2_garbage_array}, {"l2_promote_ttl", cache_l2_promote_ttl},
        {"l2_promote_clamp", cache_l2_promote_clamp},
        {"l2_down_clear", cache_l2_down_clear}, {"l2_noauth", cache_l2_noauth},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
