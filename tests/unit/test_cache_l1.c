/*
 * test_cache_l1.c - the in-process LRU (broker/cache/cache_l1.c): the byte bound
 * holds (least recently used go first), TTLs expire, replace and delete
 * keep the accounting right; and the reply blobs every tier stores
 * (broker/cache/cache_blob.c) round-trip and reject truncation.
 */
#include "cache_blob.h"
#include "cache_l1.h"
#include "test.h"

#include <string.h>

static ab_cache_key_t s_k(uint64_t i)
{
    ab_cache_key_t k = {i * 0x9e3779b97f4a7c15ull, i};
    return k;
}

static void t_byte_bound(void)
{
    size_t per = 1000 + ab_l1_overhead();
    ab_l1_t *l1 = ab_l1_new(10 * per); /* room for exactly ten 1000-byte values */
    REQUIRE(l1);
    char val[1000];
    for (int i = 0; i < 10; i++) {
        memset(val, 'a' + i, sizeof val);
        ab_cache_key_t k = s_k((uint64_t)i + 1);
        CHECK_EQ(ab_l1_put(l1, &k, val, sizeof val, 1000), 0);
    }
    ab_l1_stats_t st;
    ab_l1_stats(l1, &st);
    CHECK_U64(st.entries, 10);
    CHECK_U64(st.bytes, 10 * per);
    CHECK_U64(st.evictions, 0);
    /* Touch key 1: key 2 is now the least recently used. */
    const uint8_t *v;
    size_t len;
    ab_cache_key_t k1 = s_k(1), k2 = s_k(2), k3 = s_k(3), k11 = s_k(11);
    CHECK_EQ(ab_l1_get(l1, &k1, 0, &v, &len, NULL), 1);
    CHECK_TRUE(len == 1000 && v[0] == 'a' && v[999] == 'a');
    CHECK_EQ(ab_l1_put(l1, &k11, val, sizeof val, 1000), 0);
    ab_l1_stats(l1, &st);
    CHECK_U64(st.entries, 10);
    CHECK_U64(st.evictions, 1);
    CHECK_TRUE(st.bytes <= st.max_bytes);
    CHECK_EQ(ab_l1_get(l1, &k2, 0, &v, &len, NULL), 0); /* evicted */
    CHECK_EQ(ab_l1_get(l1, &k1, 0, &v, &len, NULL), 1); /* kept: recently used */
    /* A value twice the size evicts two more (3 and 4, the coldest). */
    char big[2000 + sizeof(size_t)];
    memset(big, 'z', sizeof big);
    ab_cache_key_t kb = s_k(100);
    CHECK_EQ(ab_l1_put(l1, &kb, big, 2000, 1000), 0);
    ab_l1_stats(l1, &st);
    CHECK_TRUE(st.bytes <= st.max_bytes);
    CHECK_U64(st.evictions, 3);
    CHECK_EQ(ab_l1_get(l1, &k3, 0, &v, &len, NULL), 0);
    /* An entry larger than the whole bound is refused, nothing evicted. */
    static char huge[20000];
    ab_cache_key_t kh = s_k(200);
    CHECK_EQ(ab_l1_put(l1, &kh, huge, sizeof huge, 1000), -1);
    ab_l1_stats(l1, &st);
    CHECK_U64(st.evictions, 3);
    /* Many small entries: the bound counts bookkeeping too. */
    for (uint64_t i = 1000; i < 5000; i++) {
        ab_cache_key_t k = s_k(i);
        ab_l1_put(l1, &k, "x", 1, 1000);
        ab_l1_stats(l1, &st);
        if (st.bytes > st.max_bytes)
            T_FAIL_("bound passed at %llu: %llu", (unsigned long long)i,
                    (unsigned long long)st.bytes);
    }
    CHECK_TRUE(st.entries > 0 && st.entries * (1 + ab_l1_overhead()) <= st.max_bytes);
    ab_l1_clear(l1);
    ab_l1_stats(l1, &st);
    CHECK_U64(st.entries, 0);
    CHECK_U64(st.bytes, 0);
    ab_l1_destroy(&l1);
    CHECK_TRUE(l1 == NULL);
}

static void t_ttl(void)
{
    ab_l1_t *l1 = ab_l1_new(1 << 20);
    ab_cache_key_t a = s_k(1), b = s_k(2), c = s_k(3);
    ab_l1_put(l1, &a, "aa", 2, 100);
    ab_l1_put(l1, &b, "bb", 2, 200);
    ab_l1_put(l1, &c, "cc", 2, 300);
    const uint8_t *v;
    size_t len;
    int64_t exp;
    CHECK_EQ(ab_l1_get(l1, &a, 99, &v, &len, &exp), 1);
    CHECK_EQ(exp, 100);
    CHECK_EQ(ab_l1_get(l1, &a, 100, &v, &len, NULL), 0); /* expires at 100 */
    ab_l1_stats_t st;
    ab_l1_stats(l1, &st);
    CHECK_U64(st.expired, 1);
    CHECK_U64(st.entries, 2);
    /* The background sweep removes expired entries nobody asks for. */
    CHECK_EQ(ab_l1_expire(l1, 250, 64), 1);
    CHECK_EQ(ab_l1_get(l1, &c, 250, &v, &len, NULL), 1);
    ab_l1_stats(l1, &st);
    CHECK_U64(st.entries, 1);
    CHECK_U64(st.hits, 2);
    CHECK_U64(st.misses, 1);
    /* Replacing keeps one entry and the newer value and TTL. */
    ab_l1_put(l1, &c, "ccc", 3, 1000);
    CHECK_EQ(ab_l1_get(l1, &c, 500, &v, &len, NULL), 1);
    CHECK_TRUE(len == 3 && memcmp(v, "ccc", 3) == 0);
    ab_l1_stats(l1, &st);
    CHECK_U64(st.entries, 1);
    CHECK_U64(st.bytes, 3 + ab_l1_overhead());
    CHECK_EQ(ab_l1_del(l1, &c), 1);
    CHECK_EQ(ab_l1_del(l1, &c), 0);
    ab_l1_destroy(&l1);
}

static void t_many(void)
{
    /* Past the initial bucket count: the table grows, lookups still hit. */
    ab_l1_t *l1 = ab_l1_new(64 << 20);
    for (uint64_t i = 1; i <= 20000; i++) {
        ab_cache_key_t k = s_k(i);
        ab_l1_put(l1, &k, &i, sizeof i, 1000);
    }
    int ok = 1;
    for (uint64_t i = 1; i <= 20000; i++) {
        ab_cache_key_t k = s_k(i);
        const uint8_t *v;
        size_t len;
        uint64_t got;
        if (ab_l1_get(l1, &k, 0, &v, &len, NULL) != 1 || len != sizeof got) {
            ok = 0;
            break;
        }
        memcpy(&got, v, sizeof got);
        ok &= got == i;
    }
    CHECK_TRUE(ok);
    ab_l1_destroy(&l1);
}

static void t_blob(void)
{
    ab_blob_t bl = {0};
    CHECK_EQ(ab_blob_add(&bl, 4, 1, 100, "part1", 5, 1 << 20), 0);
    CHECK_EQ(ab_blob_add(&bl, 4, 0, 0, "", 0, 1 << 20), 0);
    CHECK_EQ(ab_blob_add(&bl, 5, 0, 0, "end", 3, 1 << 20), 0);
    CHECK_EQ(bl.nchunks, 3);
    size_t off = 0;
    ab_chunk_t ch;
    CHECK_EQ(ab_blob_next(bl.buf, bl.len, &off, &ch), 1);
    CHECK_TRUE(ch.kind == 4 && ch.flags == 1 && ch.original_size == 100 && ch.size == 5 &&
               memcmp(ch.data, "part1", 5) == 0);
    CHECK_EQ(ab_blob_next(bl.buf, bl.len, &off, &ch), 1);
    CHECK_TRUE(ch.kind == 4 && ch.size == 0);
    CHECK_EQ(ab_blob_next(bl.buf, bl.len, &off, &ch), 1);
    CHECK_TRUE(ch.kind == 5 && ch.size == 3 && memcmp(ch.data, "end", 3) == 0);
    CHECK_EQ(ab_blob_next(bl.buf, bl.len, &off, &ch), 0);
    /* Every truncation is caught, never read past. */
    int bad = 0;
    for (size_t cut = 1; cut < bl.len; cut++) {
        off = 0;
        int rc;
        while ((rc = ab_blob_next(bl.buf, cut, &off, &ch)) == 1)
            ;
        bad += rc == -1;
    }
    CHECK_EQ(bad, (int)bl.len - 1 - 2); /* only the two chunk boundaries parse cleanly */
    /* The bound: a chunk that would pass MAX is refused. */
    CHECK_EQ(ab_blob_add(&bl, 5, 0, 0, "x", 1, bl.len), -1);
    ab_blob_free(&bl);
    CHECK_TRUE(bl.buf == NULL && bl.len == 0);
}

int main(void)
{
    t_byte_bound();
    t_ttl();
    t_many();
    t_blob();
    return TEST_DONE("test_cache_l1");
}
