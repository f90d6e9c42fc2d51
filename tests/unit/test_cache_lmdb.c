/*
 * test_cache_lmdb.c - the L3 tier (broker/cache/cache_lmdb.c) on real LMDB files
 * in a temp directory: writes near a full map evict the oldest and never
 * fail; expiry; entries survive close/reopen; the writer thread writes
 * what it was given before it stops, its pipe full too; a corrupt or foreign-format file is
 * moved aside and a fresh one used; two processes writing one file give
 * every entry an age record of its own.
 */
#include "cache_lmdb.h"
#include "log.h"
#include "test.h"

#include <czmq.h>
#include <dirent.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char s_dir[256];

static void s_rm_dir(void)
{
    DIR *d = opendir(s_dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[600];
        snprintf(p, sizeof p, "%s/%s", s_dir, e->d_name);
        unlink(p);
    }
    if (d)
        closedir(d);
    rmdir(s_dir);
}

static int s_count_prefix(const char *prefix)
{
    DIR *d = opendir(s_dir);
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d)))
        n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    if (d)
        closedir(d);
    return n;
}

static ab_cache_key_t s_k(uint64_t i)
{
    ab_cache_key_t k = {i * 0x9e3779b97f4a7c15ull, i};
    return k;
}

static int s_has(ab_l3_t *l3, uint64_t i, int64_t now)
{
    const uint8_t *v;
    size_t len;
    ab_cache_key_t k = s_k(i);
    int rc = ab_l3_get(l3, &k, now, &v, &len, NULL);
    uint64_t got = 0;
    if (rc == 1 && len >= 8)
        memcpy(&got, v, 8);
    ab_l3_release(l3);
    return rc == 1 && got == i;
}

static void t_evict_near_full(void)
{
    ab_l3_t *l3 = ab_l3_open(s_dir, 1 << 20); /* 1 MiB map */
    REQUIRE(l3);
    static uint8_t val[8][3000];
    int failed = 0;
    uint64_t next = 1;
    for (int batch = 0; batch < 200; batch++) { /* ~4.8 MB through a 1 MiB map */
        ab_l3_item_t it[8];
        for (int j = 0; j < 8; j++, next++) {
            memset(val[j], (int)next, sizeof val[j]);
            memcpy(val[j], &next, 8);
            it[j].key = s_k(next);
            it[j].expires_ms = 1000000;
            it[j].val = val[j];
            it[j].len = sizeof val[j];
        }
        failed += ab_l3_put_batch(l3, it, 8, 0) != 0;
    }
    CHECK_EQ(failed, 0);
    ab_l3_counters_t *c = ab_l3_counters(l3);
    CHECK_TRUE(atomic_load(&c->evictions) > 0);
    CHECK_EQ(atomic_load(&c->dropped), 0);
    CHECK_U64(atomic_load(&c->stores), 1600);
    uint64_t entries, bytes, map;
    ab_l3_usage(l3, &entries, &bytes, &map);
    CHECK_TRUE(bytes <= map * 3 / 4 + 64 * 1024);
    CHECK_TRUE(entries > 10 && entries < 1600);
    CHECK_TRUE(s_has(l3, next - 1, 0)); /* the newest is kept */
    CHECK_TRUE(!s_has(l3, 1, 0));       /* the oldest went first */
    printf("1 MiB map after 1600 x 3000 B: %llu entries, %llu bytes in trees, %llu evicted\n",
           (unsigned long long)entries, (unsigned long long)bytes,
           (unsigned long long)atomic_load(&c->evictions));
    ab_l3_clear(l3);
    ab_l3_usage(l3, &entries, &bytes, &map);
    CHECK_U64(entries, 0);
    ab_l3_close(&l3);
}

static void t_expiry_and_reopen(void)
{
    ab_l3_t *l3 = ab_l3_open(s_dir, 4 << 20);
    REQUIRE(l3);
    uint64_t v[4] = {1, 2, 3, 4};
    ab_l3_item_t it[4];
    for (int i = 0; i < 4; i++) {
        it[i].key = s_k(v[i]);
        it[i].expires_ms = i < 2 ? 100 : 1000000;
        it[i].val = (const uint8_t *)&v[i];
        it[i].len = 8;
    }
    CHECK_EQ(ab_l3_put_batch(l3, it, 4, 0), 0);
    CHECK_TRUE(s_has(l3, 1, 50));
    CHECK_TRUE(!s_has(l3, 1, 100)); /* expired: a miss even before the sweep */
    CHECK_EQ(ab_l3_maintain(l3, 200, 1024), 2);
    uint64_t entries, bytes, map;
    ab_l3_usage(l3, &entries, &bytes, &map);
    CHECK_U64(entries, 2);
    /* Replacing an entry keeps one entry and one age record. */
    uint64_t nv = 3;
    ab_l3_item_t r = {s_k(3), 2000000, (const uint8_t *)&nv, 8};
    CHECK_EQ(ab_l3_put_batch(l3, &r, 1, 0), 0);
    ab_l3_usage(l3, &entries, &bytes, &map);
    CHECK_U64(entries, 2);
    ab_l3_close(&l3);
    /* Survives a restart. */
    l3 = ab_l3_open(s_dir, 4 << 20);
    REQUIRE(l3);
    CHECK_TRUE(s_has(l3, 3, 300) && s_has(l3, 4, 300));
    ab_l3_close(&l3);
}

static void t_writer_thread(void)
{
    ab_l3_t *l3 = ab_l3_open(s_dir, 4 << 20);
    REQUIRE(l3);
    ab_l3_clear(l3);
    ab_l3_writer_t *w = ab_l3_writer_new(l3, 1 << 20);
    REQUIRE(w);
    int ok = 0;
    for (uint64_t i = 100; i < 150; i++) {
        ab_cache_key_t k = s_k(i);
        ok += ab_l3_writer_put(w, &k, 1000000, &i, sizeof i) == 0;
    }
    CHECK_EQ(ok, 50);
    /* A put beyond the queue bound is dropped and counted, never blocks. */
    static uint8_t big[2 << 20];
    ab_cache_key_t kb = s_k(999);
    CHECK_EQ(ab_l3_writer_put(w, &kb, 1000000, big, sizeof big), -1);
    ab_l3_writer_destroy(&w); /* writes everything queued before it returns */
    uint64_t entries, bytes, map;
    ab_l3_usage(l3, &entries, &bytes, &map);
    CHECK_U64(entries, 50);
    CHECK_TRUE(s_has(l3, 100, 0) && s_has(l3, 149, 0));
    CHECK_EQ(atomic_load(&ab_l3_counters(l3)->dropped), 1);
    ab_l3_close(&l3);
}

/* Stopping the writer with its pipe full. czmq's zactor_destroy sends its
 * $TERM with a zero timeout: with the pipe full the send failed, it did not
 * wait, and the record and the L3 were freed under the thread, with writes
 * it had accepted not yet written (0 of 1,004 written, and ASan's
 * heap-use-after-free in s_apply, each of 3 runs of the old code). The puts
 * only copy, each batch the thread writes ends with an fsync, and a lower
 * pipe bound (~1,000 messages, not ~2,000) makes the full pipe certain. */
static void t_writer_stop_full_pipe(void)
{
    ab_l3_t *l3 = ab_l3_open(s_dir, 4 << 20);
    REQUIRE(l3);
    ab_l3_clear(l3);
    size_t hwm = zsys_pipehwm();
    zsys_set_pipehwm(4);
    ab_l3_writer_t *w = ab_l3_writer_new(l3, 1 << 20);
    zsys_set_pipehwm(hwm);
    REQUIRE(w);
    uint64_t accepted = 0;
    int full = 0;
    for (uint64_t i = 1000; i < 101000 && !full; i++) {
        ab_cache_key_t k = s_k(i);
        if (ab_l3_writer_put(w, &k, 1000000, &i, sizeof i) == 0)
            accepted++;
        else
            full = 1;
    }
    REQUIRE(full); /* the pipe filled: the case this is about */
    ab_l3_writer_destroy(&w); /* returns once every accepted put is written */
    uint64_t entries, bytes, map;
    ab_l3_usage(l3, &entries, &bytes, &map);
    CHECK_U64(entries, accepted);
    CHECK_TRUE(s_has(l3, 1000, 0) && s_has(l3, 1000 + accepted - 1, 0));
    ab_l3_close(&l3);
}

static void t_corrupt_and_foreign(void)
{
    char path[400];
    snprintf(path, sizeof path, "%s/cache.mdb", s_dir);
    unlink(path);
    strcat(path, "-lock");
    unlink(path);
    snprintf(path, sizeof path, "%s/cache.mdb", s_dir);
    FILE *f = fopen(path, "wb");
    REQUIRE(f);
    for (int i = 0; i < 20000; i++)
        fputc((int)(t_rand() & 0xff), f);
    fclose(f);
    ab_l3_t *l3 = ab_l3_open(s_dir, 4 << 20);
    REQUIRE(l3); /* a fresh file, the bad one moved aside */
    CHECK_EQ(s_count_prefix("cache.mdb.bad-"), 1);
    uint64_t one = 1;
    ab_l3_item_t it = {s_k(1), 1000000, (const uint8_t *)&one, 8};
    CHECK_EQ(ab_l3_put_batch(l3, &it, 1, 0), 0);
    ab_l3_close(&l3);
    /* Another format version in the file's meta: incompatible, moved aside. */
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi meta;
    REQUIRE(mdb_env_create(&env) == 0 && mdb_env_set_maxdbs(env, 4) == 0);
    REQUIRE(mdb_env_open(env, path, MDB_NOSUBDIR, 0600) == 0);
    REQUIRE(mdb_txn_begin(env, NULL, 0, &txn) == 0 && mdb_dbi_open(txn, "meta", 0, &meta) == 0);
    MDB_val k = {6, "format"}, v = {16, "agentbus-cache-0"};
    REQUIRE(mdb_put(txn, meta, &k, &v, 0) == 0 && mdb_txn_commit(txn) == 0);
    mdb_env_close(env);
    sleep(1); /* the aside name carries the second */
    l3 = ab_l3_open(s_dir, 4 << 20);
    REQUIRE(l3);
    CHECK_EQ(s_count_prefix("cache.mdb.bad-"), 2);
    CHECK_TRUE(!s_has(l3, 1, 0)); /* nothing of the foreign file is read */
    ab_l3_close(&l3);
}

static void s_fresh(char *path, size_t cap)
{
    snprintf(path, cap, "%s/cache.mdb-lock", s_dir);
    unlink(path);
    snprintf(path, cap, "%s/cache.mdb", s_dir);
    unlink(path);
}

static void s_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    REQUIRE(f);
    REQUIRE(len == 0 || fwrite(data, 1, len, f) == len);
    fclose(f);
}

/* Issue 11: a file cut short made every start die with SIGBUS (LMDB maps
 * it and trusts its meta pages). It is found before the map, moved aside,
 * and an empty L3 is used. Also an empty file and a file of garbage. */
static void t_truncated_empty_garbage(void)
{
    char path[400];
    s_fresh(path, sizeof path);
    int before = s_count_prefix("cache.mdb.bad-");
    ab_l3_t *l3 = ab_l3_open(s_dir, 8 << 20);
    REQUIRE(l3);
    static uint8_t val[3000];
    for (uint64_t i = 1; i <= 400; i++) { /* ~1.2 MB: many pages */
        memset(val, (int)i, sizeof val);
        memcpy(val, &i, 8);
        ab_l3_item_t it = {s_k(i), 1000000, val, sizeof val};
        REQUIRE(ab_l3_put_batch(l3, &it, 1, 0) == 0);
    }
    ab_l3_close(&l3);
    struct stat st;
    REQUIRE(stat(path, &st) == 0 && st.st_size > (1 << 20));
    /* Cut to a third: the meta pages still claim every page. */
    REQUIRE(truncate(path, st.st_size / 3) == 0);
    l3 = ab_l3_open(s_dir, 8 << 20); /* before the fix: SIGBUS here or on a read */
    REQUIRE(l3);
    CHECK_EQ(s_count_prefix("cache.mdb.bad-"), before + 1);
    for (uint64_t i = 1; i <= 400; i += 37)
        CHECK_TRUE(!s_has(l3, i, 0)); /* empty, and every read is safe */
    uint64_t one = 1;
    ab_l3_item_t it = {s_k(1), 1000000, (const uint8_t *)&one, 8};
    CHECK_EQ(ab_l3_put_batch(l3, &it, 1, 0), 0); /* and it caches again */
    CHECK_TRUE(s_has(l3, 1, 0));
    ab_l3_close(&l3);
    /* Cut inside the second meta page. */
    REQUIRE(stat(path, &st) == 0);
    REQUIRE(truncate(path, 4096 + 64) == 0);
    l3 = ab_l3_open(s_dir, 8 << 20);
    REQUIRE(l3);
    CHECK_EQ(s_count_prefix("cache.mdb.bad-"), before + 2);
    CHECK_TRUE(!s_has(l3, 1, 0));
    ab_l3_close(&l3);
    /* Zero length: LMDB initialises it; nothing to move aside. */
    s_fresh(path, sizeof path);
    s_write_file(path, "", 0);
    l3 = ab_l3_open(s_dir, 8 << 20);
    REQUIRE(l3);
    CHECK_EQ(s_count_prefix("cache.mdb.bad-"), before + 2);
    CHECK_EQ(ab_l3_put_batch(l3, &it, 1, 0), 0);
    CHECK_TRUE(s_has(l3, 1, 0));
    ab_l3_close(&l3);
    /* Garbage shorter than a page, and a page of garbage with LMDB's magic
     * but an absurd page size. */
    s_fresh(path, sizeof path);
    s_write_file(path, "garbage", 7);
    l3 = ab_l3_open(s_dir, 8 << 20);
    REQUIRE(l3);
    CHECK_EQ(s_count_prefix("cache.mdb.bad-"), before + 3);
    ab_l3_close(&l3);
    s_fresh(path, sizeof path);
    static uint8_t page[8192];
    for (size_t i = 0; i < sizeof page; i++)
        page[i] = (uint8_t)t_rand();
    page[10] = 0x08; /* P_META */
    page[11] = 0;
    const uint8_t magic[8] = {0xde, 0xc0, 0xef, 0xbe, 1, 0, 0, 0};
    memcpy(page + 16, magic, 8);
    memcpy(page + 40, "\x01\x03\x00\x00", 4); /* 769: not a power of two */
    s_write_file(path, page, sizeof page);
    l3 = ab_l3_open(s_dir, 8 << 20);
    REQUIRE(l3);
    CHECK_EQ(s_count_prefix("cache.mdb.bad-"), before + 4);
    CHECK_TRUE(!s_has(l3, 1, 0));
    ab_l3_close(&l3);
}

/* N entries from key FIRST on, in one batch. */
static int s_put_range(ab_l3_t *l3, uint64_t first, int n)
{
    ab_l3_item_t it[64];
    uint64_t vals[64];
    for (int j = 0; j < n && j < 64; j++) {
        vals[j] = first + (uint64_t)j;
        it[j] = (ab_l3_item_t){s_k(first + (uint64_t)j), 1000000, (const uint8_t *)&vals[j], 8};
    }
    return ab_l3_put_batch(l3, it, (size_t)n, 0);
}

/* The entries and age records in the file (read by LMDB itself, with no
 * ab_l3_t open). */
static void s_count_dbs(const char *path, size_t *entries, size_t *ages)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi de, da;
    MDB_stat se, sa;
    REQUIRE(mdb_env_create(&env) == 0 && mdb_env_set_maxdbs(env, 4) == 0);
    REQUIRE(mdb_env_open(env, path, MDB_NOSUBDIR | MDB_RDONLY, 0600) == 0);
    REQUIRE(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) == 0);
    REQUIRE(mdb_dbi_open(txn, "entries", 0, &de) == 0 && mdb_dbi_open(txn, "age", 0, &da) == 0);
    REQUIRE(mdb_stat(txn, de, &se) == 0 && mdb_stat(txn, da, &sa) == 0);
    *entries = se.ms_entries;
    *ages = sa.ms_entries;
    mdb_txn_abort(txn);
    mdb_env_close(env);
}

/* Two brokers on one data directory: both open the file, then each writes
 * 32 entries of its own. Each process counted ages from what it saw at
 * open, so both wrote ages 1..32 and the second's age records replaced
 * the first's: 32 entries with no age record, which eviction (oldest age
 * first) never removes. Each entry must keep its own. */
static void t_two_writers(void)
{
    char path[400];
    snprintf(path, sizeof path, "%s/cache.mdb", s_dir);
    int go[2], opened[2];
    REQUIRE(pipe(go) == 0 && pipe(opened) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) { /* the other broker */
        ab_l3_t *l3 = ab_l3_open(s_dir, 4 << 20);
        char ch = l3 ? 'o' : 'x';
        if (write(opened[1], &ch, 1) != 1 || read(go[0], &ch, 1) != 1 || !l3)
            _exit(2);
        int rc = s_put_range(l3, 1000, 32);
        ab_l3_close(&l3);
        _exit(rc == 0 ? 0 : 3);
    }
    char ch = 0;
    REQUIRE(read(opened[0], &ch, 1) == 1 && ch == 'o');
    ab_l3_t *l3 = ab_l3_open(s_dir, 4 << 20); /* both have opened: both start at age 1 */
    REQUIRE(l3);
    CHECK_EQ(s_put_range(l3, 1, 32), 0);
    REQUIRE(write(go[1], "g", 1) == 1);
    int st = 0;
    REQUIRE(waitpid(pid, &st, 0) == pid);
    CHECK_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK_EQ(s_put_range(l3, 2000, 8), 0); /* and after the other's writes */
    CHECK_TRUE(s_has(l3, 1, 0) && s_has(l3, 1000, 0) && s_has(l3, 2000, 0));
    ab_l3_close(&l3);
    size_t entries = 0, ages = 0;
    s_count_dbs(path, &entries, &ages);
    CHECK_U64(entries, 72);
    CHECK_U64(ages, 72); /* before the fix: 40 (32 + 32 + 8 entries, ages 1..32 twice) */
    for (int i = 0; i < 2; i++) {
        close(go[i]);
        close(opened[i]);
    }
}

/* Two brokers on one data directory with different cache-l3-bytes: this
 * one opened the file with a 1 MiB map, the other (a child process) with
 * 16 MiB wrote 3 MB. Every transaction here then failed with
 * MDB_MAP_RESIZED, for good: each lookup -1 (a miss), each write batch
 * dropped. Now the first failure has the writer adopt the larger map. */
static void t_map_grown_elsewhere(void)
{
    int go[2];
    REQUIRE(pipe(go) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) { /* the other broker, with a larger map */
        char ch;
        if (read(go[0], &ch, 1) != 1)
            _exit(2);
        ab_l3_t *l3 = ab_l3_open(s_dir, 16 << 20);
        static uint8_t val[3000];
        int rc = l3 ? 0 : 1;
        for (uint64_t i = 5000; rc == 0 && i < 6000; i++) {
            memcpy(val, &i, 8); /* s_has checks it */
            ab_l3_item_t it = {s_k(i), 1000000, val, sizeof val};
            rc = ab_l3_put_batch(l3, &it, 1, 0);
        }
        ab_l3_close(&l3);
        _exit(rc == 0 ? 0 : 3);
    }
    ab_l3_t *l3 = ab_l3_open(s_dir, 1 << 20);
    REQUIRE(l3);
    REQUIRE(write(go[1], "g", 1) == 1);
    int st = 0;
    REQUIRE(waitpid(pid, &st, 0) == pid);
    REQUIRE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK_TRUE(!s_has(l3, 5999, 0)); /* the first lookup finds the map grown: a miss */
    CHECK_EQ(s_put_range(l3, 1, 8), 0); /* the writer adopts the larger map */
    CHECK_TRUE(s_has(l3, 5999, 0));
    CHECK_TRUE(s_has(l3, 1, 0));
    uint64_t entries, bytes, map;
    ab_l3_usage(l3, &entries, &bytes, &map);
    CHECK_U64(map, 16u << 20);
    CHECK_TRUE(entries > 8);
    CHECK_EQ(atomic_load(&ab_l3_counters(l3)->dropped), 0);
    ab_l3_close(&l3);
    close(go[0]);
    close(go[1]);
}

/* A reply larger than the map: the batch is retried after evicting down to
 * 30%, still does not fit and is dropped, its transaction aborted, so
 * nothing was evicted. The counter said 43 evictions by hand (1 MiB map,
 * 80 entries kept). */
static void t_too_big_evicts_nothing(void)
{
    ab_l3_t *l3 = ab_l3_open(s_dir, 1 << 20);
    REQUIRE(l3);
    static uint8_t val[6000], huge[900 * 1024];
    for (uint64_t i = 1; i <= 100; i++) {
        memcpy(val, &i, 8);
        ab_l3_item_t it = {s_k(i), 1000000, val, sizeof val};
        REQUIRE(ab_l3_put_batch(l3, &it, 1, 0) == 0);
    }
    ab_l3_counters_t *c = ab_l3_counters(l3);
    uint64_t e0, b0, map, e1, b1;
    ab_l3_usage(l3, &e0, &b0, &map);
    size_t ev0 = atomic_load(&c->evictions);
    ab_l3_item_t it = {s_k(999), 1000000, huge, sizeof huge};
    CHECK_EQ(ab_l3_put_batch(l3, &it, 1, 0), -1);
    CHECK_EQ(atomic_load(&c->dropped), 1);
    ab_l3_usage(l3, &e1, &b1, &map);
    CHECK_U64(e1, e0); /* rolled back */
    CHECK_U64(atomic_load(&c->evictions), ev0);
    CHECK_TRUE(s_has(l3, 100, 0));
    ab_l3_close(&l3);
}

/* Batches as the writer thread makes them under load (up to 256 writes
 * of replies of about 1.6 KB, each an overflow page of its own) through a
 * map of a few MiB: eviction must keep making room. */
static void t_evict_big_batches(void)
{
    ab_l3_t *l3 = ab_l3_open(s_dir, 4 << 20); /* 4 MiB map */
    REQUIRE(l3);
    static uint8_t val[256][1600];
    int failed = 0;
    uint64_t next = 1;
    for (int batch = 0; batch < 80; batch++) { /* ~33 MB through a 4 MiB map */
        static ab_l3_item_t it[256];
        int n = batch % 2 ? 256 : 1 + batch % 7;
        for (int j = 0; j < n; j++, next++) {
            memset(val[j], (int)next, sizeof val[j]);
            memcpy(val[j], &next, 8);
            it[j].key = s_k(next);
            it[j].expires_ms = 1000000;
            it[j].val = val[j];
            it[j].len = sizeof val[j];
        }
        failed += ab_l3_put_batch(l3, it, (size_t)n, 0) != 0;
    }
    ab_l3_counters_t *c = ab_l3_counters(l3);
    uint64_t entries, bytes, map;
    ab_l3_usage(l3, &entries, &bytes, &map);
    printf("4 MiB map, batches of up to 256 x 1600 B: %d failed, %llu dropped, %llu evicted, "
           "%llu entries\n", failed, (unsigned long long)atomic_load(&c->dropped),
           (unsigned long long)atomic_load(&c->evictions), (unsigned long long)entries);
    CHECK_EQ(failed, 0);
    CHECK_EQ(atomic_load(&c->dropped), 0);
    CHECK_TRUE(atomic_load(&c->evictions) > 0);
    CHECK_TRUE(s_has(l3, next - 1, 0)); /* the newest is kept */
    ab_l3_close(&l3);
}

int main(void)
{
    snprintf(s_dir, sizeof s_dir, "/tmp/ab-test-l3-XXXXXX");
    REQUIRE(mkdtemp(s_dir));
    ab_log_level = AB_LOG_ERROR; /* the moved-aside lines are expected */
    t_evict_near_full();
    t_expiry_and_reopen();
    t_writer_thread();
    t_writer_stop_full_pipe();
    t_corrupt_and_foreign();
    t_truncated_empty_garbage();
    s_rm_dir();
    REQUIRE(mkdir(s_dir, 0700) == 0);
    t_two_writers();
    s_rm_dir();
    REQUIRE(mkdir(s_dir, 0700) == 0);
    t_map_grown_elsewhere();
    s_rm_dir();
    REQUIRE(mkdir(s_dir, 0700) == 0);
    t_too_big_evicts_nothing();
    s_rm_dir();
    REQUIRE(mkdir(s_dir, 0700) == 0);
    t_evict_big_batches();
    s_rm_dir();
    return TEST_DONE("test_cache_lmdb");
}
