/* cache_lmdb.c - see cache_lmdb.h. */
#define AB_LOG_SUBSYS "cache" /* log.h: the subsystem in log lines */
#include "cache_lmdb.h"
#include "log.h"
#include "util.h"

#include <czmq.h>
#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define AB_L3_FORMAT "agentbus-cache-1" /* bump with the record layout */
#define AB_L3_HIGH 0.75                 /* tree pages / map: start evicting */
#define AB_L3_LOW 0.60                  /* ...down to this */
#define AB_L3_INCOMPATIBLE (-1)         /* our own code: file of another format */

/* Record: magic, expires_ms (since the epoch: the monotonic clock starts
 * again at each boot, and an entry written before a reboot lived on by
 * the uptime it was written at), age sequence (host order: the format
 * string names the layout), then the reply blob. */
static const uint8_t s_magic[4] = {'A', 'B', '3', 1};
#define AB_L3_REC_HDR 20

struct ab_l3 {
    MDB_env *env;
    MDB_dbi entries, age, meta;
    MDB_txn *rtxn; /* the broker thread's reused read transaction */
    int rtxn_live; /* renewed and not yet reset */
    atomic_size_t map_bytes; /* grows when another broker's map is adopted */
    size_t psize;
    /* Another process grew the map (MDB_MAP_RESIZED): the writer adopts
     * its size while the broker thread keeps out of LMDB (pause, in_txn). */
    atomic_int resize_wanted, pause, in_txn;
    uint64_t next_seq;     /* writer only */
    uint8_t scan_key[16];  /* writer only: where the expiry scan goes on */
    int scan_valid;
    ab_ratelimit_t rl;     /* writer only: its WARN lines, one a minute */
    ab_l3_counters_t c;
};

static void s_key_bytes(const ab_cache_key_t *k, uint8_t *out)
{
    memcpy(out, &k->hi, 8);
    memcpy(out + 8, &k->lo, 8);
}

static void s_seq_bytes(uint64_t seq, uint8_t *out)
{
    for (int i = 0; i < 8; i++) /* big endian: LMDB's byte order is age order */
        out[i] = (uint8_t)(seq >> (56 - 8 * i));
}

/* Ages go on from the newest one in the file. Called in each write
 * transaction, not only at open: another broker may write this file too
 * (LMDB serialises write transactions across processes), and two writers
 * counting on their own gave the same age to two entries, the second age
 * record replacing the first: that entry was then never evicted (the map
 * filled up with such entries and every later write was dropped). */
static int s_seq_sync(ab_l3_t *l3, MDB_txn *txn)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, l3->age, &cur);
    if (rc != 0)
        return rc;
    if (mdb_cursor_get(cur, &k, &v, MDB_LAST) == 0 && k.mv_size == 8) {
        uint64_t last = 0;
        for (int i = 0; i < 8; i++)
            last = last << 8 | ((uint8_t *)k.mv_data)[i];
        if (last >= l3->next_seq)
            l3->next_seq = last + 1;
    }
    mdb_cursor_close(cur);
    return 0;
}

/* --- open, with corrupt files moved aside ------------------------------------------- */
static int s_try_open(ab_l3_t *l3, const char *path)
{
    int rc = mdb_env_create(&l3->env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(l3->env, 4);
    if (rc == 0)
        rc = mdb_env_set_mapsize(l3->env, atomic_load(&l3->map_bytes));
    /* NOTLS: the broker thread's read transaction is not tied to thread
     * storage; NOMETASYNC: a cache may lose its last commit in a power cut,
     * never its integrity. */
    if (rc == 0)
        rc = mdb_env_open(l3->env, path, MDB_NOSUBDIR | MDB_NOTLS | MDB_NOMETASYNC, 0600);
    MDB_txn *txn = NULL;
    if (rc == 0)
        rc = mdb_txn_begin(l3->env, NULL, 0, &txn);
    if (rc == 0)
        rc = mdb_dbi_open(txn, "entries", MDB_CREATE, &l3->entries);
    if (rc == 0)
        rc = mdb_dbi_open(txn, "age", MDB_CREATE, &l3->age);
    if (rc == 0)
        rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &l3->meta);
    if (rc == 0) {
        MDB_val k = {6, "format"}, v;
        rc = mdb_get(txn, l3->meta, &k, &v);
        if (rc == MDB_NOTFOUND) {
            v.mv_data = AB_L3_FORMAT;
            v.mv_size = strlen(AB_L3_FORMAT);
            rc = mdb_put(txn, l3->meta, &k, &v, 0);
        } else if (rc == 0 && (v.mv_size != strlen(AB_L3_FORMAT) ||
                               memcmp(v.mv_data, AB_L3_FORMAT, v.mv_size) != 0)) {
            rc = AB_L3_INCOMPATIBLE;
        }
    }
    if (rc == 0) {
        l3->next_seq = 1;
        rc = s_seq_sync(l3, txn);
    }
    if (rc == 0) {
        rc = mdb_txn_commit(txn);
        txn = NULL;
    }
    if (txn)
        mdb_txn_abort(txn);
    if (rc == 0) {
        MDB_stat st;
        mdb_env_stat(l3->env, &st);
        l3->psize = st.ms_psize;
    } else if (l3->env) {
        mdb_env_close(l3->env);
        l3->env = NULL;
    }
    return rc;
}

/* --- the file checked before LMDB maps it ------------------------------------------- */
/* LMDB maps the whole file and trusts its meta pages: a file cut short (a
 * full disk, a copy that stopped) makes the first read of a page past its
 * end a SIGBUS, on every start: a crash loop. LMDB 0.9's meta page, on a
 * 64-bit host (its layout is private to mdb.c, so it is spelled out here):
 * a 16-byte page header (pgno u64, pad u16, flags u16 with P_META 0x08,
 * lower/upper u16), then magic u32 0xBEEFC0DE, version u32 (1), address,
 * mapsize u64, two 48-byte database records (the first one's leading u32
 * is the page size), last_pg u64, txnid u64. Two meta pages, at 0 and at
 * one page size; LMDB uses the one with the larger txnid. */
#define AB_MDB_MAGIC 0xBEEFC0DEu
#define AB_MDB_VERSION 1u
#define AB_MDB_P_META 0x08u
#define AB_MDB_META_END 152 /* header + meta, bytes */

typedef struct {
    uint32_t psize;
    uint64_t mapsize, last_pg, txnid;
} s_meta_t;

static uint64_t s_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* Parses the meta page in P. NULL, or why it is not one LMDB would take. */
static const char *s_meta_parse(const uint8_t *p, s_meta_t *m)
{
    if (!(s_le(p + 10, 2) & AB_MDB_P_META) || s_le(p + 16, 4) != AB_MDB_MAGIC)
        return "not an LMDB file (no meta page)";
    if (s_le(p + 20, 4) != AB_MDB_VERSION)
        return "another LMDB data version";
    m->mapsize = s_le(p + 32, 8);
    m->psize = (uint32_t)s_le(p + 40, 4);
    m->last_pg = s_le(p + 136, 8);
    m->txnid = s_le(p + 144, 8);
    if (m->psize < 512 || m->psize > 65536 || (m->psize & (m->psize - 1)))
        return "meta page with an impossible page size";
    return NULL;
}

/* Checks PATH before LMDB maps it: NULL when it is absent, empty (LMDB
 * initialises it) or whole; else why it cannot be used. Reads two pages. */
static const char *s_check_file(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0 || st.st_size == 0)
        return NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL; /* LMDB reports what is wrong */
    uint8_t p0[AB_MDB_META_END], p1[AB_MDB_META_END];
    s_meta_t m0, m1;
    const char *why = NULL;
    if (fread(p0, 1, sizeof p0, f) != sizeof p0)
        why = "shorter than one LMDB meta page";
    else if (!(why = s_meta_parse(p0, &m0)) &&
             (fseeko(f, (off_t)m0.psize, SEEK_SET) != 0 || fread(p1, 1, sizeof p1, f) != sizeof p1))
        why = "truncated: shorter than its two meta pages";
    else if (!why && !(why = s_meta_parse(p1, &m1)) && m1.psize != m0.psize)
        why = "meta pages disagree on the page size";
    fclose(f);
    if (why)
        return why;
    const s_meta_t *m = m1.txnid > m0.txnid ? &m1 : &m0;
    if (m->last_pg >= (uint64_t)1 << 40 ||
        (uint64_t)st.st_size < (m->last_pg + 1) * (uint64_t)m->psize)
        return "truncated: shorter than the last page its meta page records";
    return NULL;
}

/* Moves PATH (and its lock file) aside as PATH.bad-<unix time>[.N]. 0, or -1
 * with errno. */
static int s_move_aside(const char *path, const char *lock, char *aside, size_t cap)
{
    long long t = (long long)time(NULL);
    snprintf(aside, cap, "%s.bad-%lld", path, t);
    for (int n = 1; n < 100 && access(aside, F_OK) == 0; n++) /* two in one second */
        snprintf(aside, cap, "%s.bad-%lld.%d", path, t, n);
    int mv = rename(path, aside);
    int e = errno;
    unlink(lock);
    errno = e;
    return mv;
}

static int s_is_bad_file(int rc)
{
    return rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH || rc == MDB_CORRUPTED ||
           rc == MDB_PAGE_NOTFOUND || rc == MDB_INCOMPATIBLE || rc == MDB_BAD_DBI ||
           rc == AB_L3_INCOMPATIBLE;
}

ab_l3_t *ab_l3_open(const char *dir, size_t map_bytes)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        AB_ERROR("L3 cache off: cannot create data directory %s: %s", dir, strerror(errno));
        return NULL;
    }
    ab_l3_t *l3 = calloc(1, sizeof *l3);
    if (!l3)
        return NULL;
    l3->rl.interval_ms = 60000; /* a full map drops every batch: said once a minute */
    atomic_store(&l3->map_bytes, map_bytes);
    char path[4096], lock[4200];
    snprintf(path, sizeof path, "%s/cache.mdb", dir);
    snprintf(lock, sizeof lock, "%s-lock", path);
    /* A bad file is found before LMDB maps it (a truncated one would crash
     * the broker), or by LMDB itself when it reads it. */
    const char *why = s_check_file(path);
    int rc = why ? AB_L3_INCOMPATIBLE : s_try_open(l3, path);
    if (rc != 0 && s_is_bad_file(rc)) {
        char aside[4300];
        int mv = s_move_aside(path, lock, aside, sizeof aside);
        AB_ERROR("L3 cache file %s is corrupt or incompatible (%s): %s%s; starting with an "
                 "empty one",
                 path, why ? why : rc == AB_L3_INCOMPATIBLE ? "written by another cache format"
                                                            : mdb_strerror(rc),
                 mv == 0 ? "moved aside to " : "could not be moved aside, ",
                 mv == 0 ? aside : strerror(errno));
        l3->next_seq = 0;
        rc = mv == 0 ? s_try_open(l3, path) : rc;
    }
    if (rc != 0) {
        AB_ERROR("L3 cache off: cannot open %s: %s", path,
                 rc == AB_L3_INCOMPATIBLE ? "incompatible format" : mdb_strerror(rc));
        free(l3);
        return NULL;
    }
    AB_INFO("L3 cache: %s, map %zu MiB", path, map_bytes >> 20);
    return l3;
}

void ab_l3_close(ab_l3_t **p)
{
    ab_l3_t *l3 = p ? *p : NULL;
    if (!l3)
        return;
    if (l3->rtxn)
        mdb_txn_abort(l3->rtxn);
    mdb_env_sync(l3->env, 1);
    mdb_env_close(l3->env);
    free(l3);
    *p = NULL;
}

/* --- reads (broker thread) ------------------------------------------------------------ */
/* The broker thread enters LMDB: 0, or -1 while the writer adopts a new
 * map size (a miss for the caller; nothing waits). Sequentially
 * consistent: either the writer sees in_txn or this thread sees pause. */
static int s_enter(ab_l3_t *l3)
{
    atomic_store(&l3->in_txn, 1);
    if (!atomic_load(&l3->pause))
        return 0;
    atomic_store(&l3->in_txn, 0);
    return -1;
}

int ab_l3_get(ab_l3_t *l3, const ab_cache_key_t *key, int64_t now_ms, const uint8_t **val,
              size_t *len, int64_t *expires_ms)
{
    if (s_enter(l3) != 0)
        return 0;
    int rc = l3->rtxn ? mdb_txn_renew(l3->rtxn)
                      : mdb_txn_begin(l3->env, NULL, MDB_RDONLY, &l3->rtxn);
    if (rc != 0) {
        if (l3->rtxn) {
            mdb_txn_abort(l3->rtxn);
            l3->rtxn = NULL;
        }
        if (rc == MDB_MAP_RESIZED)
            atomic_store(&l3->resize_wanted, 1); /* the writer adopts it */
        atomic_store(&l3->in_txn, 0);
        return -1;
    }
    l3->rtxn_live = 1;
    uint8_t kb[16];
    s_key_bytes(key, kb);
    MDB_val k = {16, kb}, v;
    rc = mdb_get(l3->rtxn, l3->entries, &k, &v);
    if (rc != 0)
        return rc == MDB_NOTFOUND ? 0 : -1;
    if (v.mv_size < AB_L3_REC_HDR || memcmp(v.mv_data, s_magic, 4) != 0)
        return 0; /* not ours: treated as absent (the writer overwrites it) */
    int64_t exp;
    memcpy(&exp, (uint8_t *)v.mv_data + 4, 8);
    if (exp <= now_ms)
        return 0;
    *val = (const uint8_t *)v.mv_data + AB_L3_REC_HDR;
    *len = v.mv_size - AB_L3_REC_HDR;
    if (expires_ms)
        *expires_ms = exp;
    return 1;
}

void ab_l3_release(ab_l3_t *l3)
{
    if (l3->rtxn && l3->rtxn_live)
        mdb_txn_reset(l3->rtxn);
    l3->rtxn_live = 0;
    atomic_store(&l3->in_txn, 0);
}

/* Writer thread: another broker on this file has a larger map and the
 * data grew past ours, so every transaction here failed with
 * MDB_MAP_RESIZED (each lookup a miss, each write dropped, for good).
 * LMDB's remedy is mdb_env_set_mapsize(env, 0) with no transaction of this
 * process active: the broker thread is kept out meanwhile (its lookups
 * miss). The larger map then bounds this broker's evictions too, or the
 * two would evict each other's entries down to the smaller bound. */
static int s_adopt_map(ab_l3_t *l3)
{
    atomic_store(&l3->pause, 1);
    for (int i = 0; i < 1000 && atomic_load(&l3->in_txn); i++)
        usleep(1000); /* one lookup in progress: microseconds */
    int rc = atomic_load(&l3->in_txn) ? EBUSY : mdb_env_set_mapsize(l3->env, 0);
    MDB_envinfo info;
    if (rc == 0 && mdb_env_info(l3->env, &info) == 0) {
        atomic_store(&l3->resize_wanted, 0);
        if (info.me_mapsize > atomic_load(&l3->map_bytes)) {
            AB_WARN("L3 cache: another broker on this cache.mdb has a larger map: %zu MiB "
                    "used here too (cache-l3-bytes %zu MiB)",
                    info.me_mapsize >> 20, atomic_load(&l3->map_bytes) >> 20);
            atomic_store(&l3->map_bytes, info.me_mapsize);
        }
    }
    atomic_store(&l3->pause, 0);
    return rc;
}

/* mdb_txn_begin for a write, adopting a map another process grew. */
static int s_write_begin(ab_l3_t *l3, MDB_txn **txn)
{
    int rc = atomic_load(&l3->resize_wanted) ? MDB_MAP_RESIZED
                                              : mdb_txn_begin(l3->env, NULL, 0, txn);
    if (rc == MDB_MAP_RESIZED && s_adopt_map(l3) == 0)
        rc = mdb_txn_begin(l3->env, NULL, 0, txn);
    return rc;
}

/* --- writes (writer thread) --------------------------------------------------------------- */
static size_t s_used(ab_l3_t *l3, MDB_txn *txn)
{
    MDB_stat a, b;
    if (mdb_stat(txn, l3->entries, &a) != 0 || mdb_stat(txn, l3->age, &b) != 0)
        return 0;
    return (a.ms_branch_pages + a.ms_leaf_pages + a.ms_overflow_pages + b.ms_branch_pages +
            b.ms_leaf_pages + b.ms_overflow_pages) *
           l3->psize;
}

/* Removes the entry under KB and its age record. */
static int s_del_entry(ab_l3_t *l3, MDB_txn *txn, const uint8_t *kb)
{
    MDB_val k = {16, (void *)kb}, v;
    if (mdb_get(txn, l3->entries, &k, &v) != 0)
        return 0;
    if (v.mv_size >= AB_L3_REC_HDR) {
        uint64_t seq;
        memcpy(&seq, (uint8_t *)v.mv_data + 12, 8);
        uint8_t sb[8];
        s_seq_bytes(seq, sb);
        MDB_val ak = {8, sb};
        mdb_del(txn, l3->age, &ak, NULL);
    }
    return mdb_del(txn, l3->entries, &k, NULL) == 0;
}

/* Oldest first, at most MAX entries, until the tree pages are under TARGET
 * bytes. The count is the caller's to add once its transaction commits. */
static size_t s_evict_to(ab_l3_t *l3, MDB_txn *txn, size_t target, size_t max)
{
    size_t n = 0;
    MDB_cursor *cur;
    if (mdb_cursor_open(txn, l3->age, &cur) != 0)
        return 0;
    MDB_val k, v;
    while (n < max && s_used(l3, txn) > target &&
           mdb_cursor_get(cur, &k, &v, MDB_FIRST) == 0) {
        uint8_t kb[16];
        if (v.mv_size != 16) {
            mdb_cursor_del(cur, 0);
            continue;
        }
        memcpy(kb, v.mv_data, 16);
        mdb_cursor_del(cur, 0);
        MDB_val ek = {16, kb};
        if (mdb_del(txn, l3->entries, &ek, NULL) == 0)
            n++;
    }
    mdb_cursor_close(cur);
    return n;
}

/* When the tree pages pass HIGH bytes, evicts down to LOW in transactions
 * of their own, 64 entries each, committed before the batch that needs the
 * room is written. Evicting inside the batch's transaction took pages too
 * (copy on write): with the map full that broke the transaction, and every
 * batch after it was dropped (MDB_BAD_TXN), the cache full for good. */
static void s_evict_apart(ab_l3_t *l3, size_t high, size_t low)
{
    for (int round = 0; round < 4096; round++) {
        MDB_txn *txn;
        if (s_write_begin(l3, &txn) != 0)
            return;
        size_t n = 0;
        if (s_used(l3, txn) > (round ? low : high))
            n = s_evict_to(l3, txn, low, 64);
        if (n == 0) {
            mdb_txn_abort(txn);
            return;
        }
        if (mdb_txn_commit(txn) != 0) /* frees TXN, committed or not */
            return;
        atomic_fetch_add(&l3->c.evictions, n);
    }
}

static int s_put_one(ab_l3_t *l3, MDB_txn *txn, const ab_l3_item_t *it)
{
    uint8_t kb[16], sb[8];
    s_key_bytes(&it->key, kb);
    s_del_entry(l3, txn, kb); /* a replaced entry leaves no stale age record */
    uint64_t seq = l3->next_seq++;
    MDB_val k = {16, kb}, v = {AB_L3_REC_HDR + it->len, NULL};
    int rc = mdb_put(txn, l3->entries, &k, &v, MDB_RESERVE);
    if (rc != 0)
        return rc;
    uint8_t *p = v.mv_data;
    memcpy(p, s_magic, 4);
    memcpy(p + 4, &it->expires_ms, 8);
    memcpy(p + 12, &seq, 8);
    memcpy(p + AB_L3_REC_HDR, it->val, it->len);
    s_seq_bytes(seq, sb);
    MDB_val ak = {8, sb}, av = {16, kb};
    return mdb_put(txn, l3->age, &ak, &av, 0);
}

static int s_try_batch(ab_l3_t *l3, const ab_l3_item_t *items, size_t n)
{
    MDB_txn *txn;
    uint64_t seq0 = l3->next_seq;
    int rc = s_write_begin(l3, &txn);
    if (rc != 0)
        return rc;
    rc = s_seq_sync(l3, txn);
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = s_put_one(l3, txn, &items[i]);
    if (rc != 0)
        mdb_txn_abort(txn);
    else
        rc = mdb_txn_commit(txn); /* frees TXN, committed or not */
    if (rc != 0)
        l3->next_seq = seq0;
    return rc;
}

int ab_l3_put_batch(ab_l3_t *l3, const ab_l3_item_t *items, size_t n, int64_t now_ms)
{
    if (!n)
        return 0;
    size_t map = atomic_load(&l3->map_bytes), need = 0, room = (size_t)(map * AB_L3_HIGH);
    for (size_t i = 0; i < n; i++) /* pages hold about half their size (inline values */
        need += 2 * (AB_L3_REC_HDR + items[i].len + 64); /* split, overflow pages, copies) */
    if (need > map - room && n > 1) /* more than the headroom: in halves, each made room for */
        return ab_l3_put_batch(l3, items, n / 2, now_ms) |
               ab_l3_put_batch(l3, items + n / 2, n - n / 2, now_ms);
    /* Room for this batch below the high mark, made before it is written:
     * a map filled to the last page cannot even delete (copies on write). */
    size_t high = need < room ? room - need : 0, low = (size_t)(map * AB_L3_LOW);
    if (need < room) /* else a reply that may never fit: it evicts nothing */
        s_evict_apart(l3, high, high < low ? high : low);
    int rc = s_try_batch(l3, items, n);
    int full = rc == MDB_MAP_FULL || rc == MDB_TXN_FULL;
    if (full && n > 1) { /* a batch as large as the room left: in halves */
        int a = ab_l3_put_batch(l3, items, n / 2, now_ms);
        return ab_l3_put_batch(l3, items + n / 2, n - n / 2, now_ms) | a;
    }
    if (full && need <= (size_t)(map * AB_L3_LOW / 2)) {
        /* Free pages LMDB cannot reuse yet (old readers): make much more
         * room and try once more. A reply that could never fit evicts
         * nothing. */
        s_evict_apart(l3, 0, (size_t)(map * AB_L3_LOW / 2));
        rc = s_try_batch(l3, items, n);
    }
    if (rc != 0) {
        atomic_fetch_add(&l3->c.dropped, n);
        AB_LOG_RL(&l3->rl, 1, ab_now_ms(), AB_LOG_WARN,
                  "L3 cache: a batch of %zu writes was dropped: %s", n, mdb_strerror(rc));
        return -1;
    }
    atomic_fetch_add(&l3->c.stores, n);
    atomic_fetch_add(&l3->c.batches, 1);
    return 0;
}

size_t ab_l3_maintain(ab_l3_t *l3, int64_t now_ms, size_t max)
{
    MDB_txn *txn;
    if (s_write_begin(l3, &txn) != 0)
        return 0;
    MDB_cursor *cur;
    size_t removed = 0, seen = 0;
    if (mdb_cursor_open(txn, l3->entries, &cur) == 0) {
        MDB_val k = {16, l3->scan_key}, v;
        int rc = l3->scan_valid ? mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE)
                                : mdb_cursor_get(cur, &k, &v, MDB_FIRST);
        while (rc == 0 && seen < max) {
            seen++;
            int64_t exp = 0;
            if (v.mv_size >= AB_L3_REC_HDR)
                memcpy(&exp, (uint8_t *)v.mv_data + 4, 8);
            if (v.mv_size < AB_L3_REC_HDR || exp <= now_ms) {
                uint8_t kb[16];
                memcpy(kb, k.mv_data, 16 < k.mv_size ? 16 : k.mv_size);
                mdb_cursor_close(cur);
                removed += (size_t)s_del_entry(l3, txn, kb);
                if (mdb_cursor_open(txn, l3->entries, &cur) != 0) {
                    cur = NULL;
                    break;
                }
                k.mv_data = kb;
                k.mv_size = 16;
                rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
                continue;
            }
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        l3->scan_valid = rc == 0 && k.mv_size == 16;
        if (l3->scan_valid)
            memcpy(l3->scan_key, k.mv_data, 16);
        if (cur)
            mdb_cursor_close(cur);
    }
    if (mdb_txn_commit(txn) != 0)
        return 0;
    atomic_fetch_add(&l3->c.expired, removed);
    size_t map = atomic_load(&l3->map_bytes);
    s_evict_apart(l3, (size_t)(map * AB_L3_HIGH), (size_t)(map * AB_L3_LOW));
    return removed;
}

int ab_l3_clear(ab_l3_t *l3)
{
    MDB_txn *txn;
    if (s_write_begin(l3, &txn) != 0)
        return -1;
    if (mdb_drop(txn, l3->entries, 0) != 0 || mdb_drop(txn, l3->age, 0) != 0) {
        mdb_txn_abort(txn);
        return -1;
    }
    l3->scan_valid = 0;
    return mdb_txn_commit(txn) == 0 ? 0 : -1;
}

void ab_l3_usage(ab_l3_t *l3, uint64_t *entries, uint64_t *bytes, uint64_t *map_bytes)
{
    MDB_txn *txn;
    *entries = *bytes = 0;
    *map_bytes = atomic_load(&l3->map_bytes);
    if (s_enter(l3) != 0)
        return;
    int rc = mdb_txn_begin(l3->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0) {
        if (rc == MDB_MAP_RESIZED)
            atomic_store(&l3->resize_wanted, 1);
        atomic_store(&l3->in_txn, 0);
        return;
    }
    MDB_stat st;
    if (mdb_stat(txn, l3->entries, &st) == 0)
        *entries = st.ms_entries;
    *bytes = s_used(l3, txn);
    mdb_txn_abort(txn);
    atomic_store(&l3->in_txn, 0);
}

ab_l3_counters_t *ab_l3_counters(ab_l3_t *l3)
{
    return &l3->c;
}

/* --- the writer thread ----------------------------------------------------------------- */
#define AB_L3_BATCH 256           /* messages per transaction at most */
#define AB_L3_MAINTAIN_MS 1000    /* expiry scan period */
#define AB_L3_SCAN 1024           /* entries looked at per scan */

struct ab_l3_writer {
    ab_l3_t *l3;
    zactor_t *actor;
    size_t queue_max;
    atomic_size_t queued; /* bytes sent to the thread, not yet written */
    atomic_int done;      /* the thread's last touch of this record and of l3 */
};

/* Message: 'P' key(16) expires(8) blob | 'C'. */
static void s_apply(ab_l3_writer_t *w, zmq_msg_t *msgs, size_t n)
{
    ab_l3_item_t items[AB_L3_BATCH];
    size_t ni = 0, bytes = 0;
    for (size_t i = 0; i <= n; i++) {
        const uint8_t *d = i < n ? zmq_msg_data(&msgs[i]) : NULL;
        size_t sz = i < n ? zmq_msg_size(&msgs[i]) : 0;
        bytes += sz;
        if (d && sz >= 25 && d[0] == 'P') {
            ab_l3_item_t *it = &items[ni++];
            memcpy(&it->key.hi, d + 1, 8);
            memcpy(&it->key.lo, d + 9, 8);
            memcpy(&it->expires_ms, d + 17, 8);
            it->val = d + 25;
            it->len = sz - 25;
            continue;
        }
        ab_l3_put_batch(w->l3, items, ni, ab_wall_ms()); /* in order, before a clear */
        ni = 0;
        if (d && sz == 1 && d[0] == 'C')
            ab_l3_clear(w->l3);
    }
    atomic_fetch_sub(&w->queued, bytes);
}

static void s_writer_task(zsock_t *pipe, void *arg)
{
    ab_l3_writer_t *w = arg;
    zsock_signal(pipe, 0);
    void *sock = zsock_resolve(pipe);
    int64_t next_maint = ab_now_ms() + AB_L3_MAINTAIN_MS;
    int term = 0;
    zmq_msg_t msgs[AB_L3_BATCH];
    while (!term) {
        int64_t now = ab_now_ms();
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, next_maint > now ? (long)(next_maint - now) : 0) < 0 &&
            zmq_errno() != EINTR)
            break;
        size_t n = 0;
        while (n < AB_L3_BATCH) {
            zmq_msg_init(&msgs[n]);
            if (zmq_msg_recv(&msgs[n], sock, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&msgs[n]);
                break;
            }
            if (zmq_msg_size(&msgs[n]) == 5 && memcmp(zmq_msg_data(&msgs[n]), "$TERM", 5) == 0) {
                zmq_msg_close(&msgs[n]);
                term = 1;
                break;
            }
            n++;
        }
        s_apply(w, msgs, n);
        for (size_t i = 0; i < n; i++)
            zmq_msg_close(&msgs[i]);
        if (ab_now_ms() >= next_maint) {
            ab_l3_maintain(w->l3, ab_wall_ms(), AB_L3_SCAN);
            next_maint = ab_now_ms() + AB_L3_MAINTAIN_MS;
        }
    }
    atomic_store(&w->done, 1);
}

ab_l3_writer_t *ab_l3_writer_new(ab_l3_t *l3, size_t queue_max)
{
    ab_l3_writer_t *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->l3 = l3;
    w->queue_max = queue_max;
    /* czmq would otherwise take SIGINT/SIGTERM from the broker's own
     * handlers when it starts (the broker stops on its own flag). */
    zsys_handler_set(NULL);
    w->actor = zactor_new(s_writer_task, w);
    if (!w->actor) {
        free(w);
        return NULL;
    }
    return w;
}

/* $TERM: the thread writes what it has, then ends. zactor_destroy alone
 * did not wait for that end when its $TERM (sent with a zero timeout) found
 * the pipe full of writes, nor when a signal interrupted its wait (a second
 * SIGTERM to a stopping broker): W was freed, and the L3 closed, under the
 * thread (heap-use-after-free in s_apply, seen under ASan). So $TERM goes
 * here, blocking, and the thread's own flag says it is done with W; the
 * thread's exit signal is left for zactor_destroy to collect. */
void ab_l3_writer_destroy(ab_l3_writer_t **p)
{
    ab_l3_writer_t *w = p ? *p : NULL;
    if (!w)
        return;
    zsock_set_sndtimeo(w->actor, -1);
    int sent;
    while ((sent = zstr_send(w->actor, "$TERM")) != 0 && zmq_errno() == EINTR)
        ;
    if (sent != 0)
        AB_ERROR("L3 cache writer: cannot stop its thread (%s)", zmq_strerror(zmq_errno()));
    while (sent == 0 && !atomic_load(&w->done))
        zclock_sleep(1);
    zactor_destroy(&w->actor);
    free(w);
    *p = NULL;
}

static int s_send(ab_l3_writer_t *w, zmq_msg_t *m)
{
    size_t sz = zmq_msg_size(m);
    atomic_fetch_add(&w->queued, sz);
    if (zmq_msg_send(m, zsock_resolve(w->actor), ZMQ_DONTWAIT) < 0) {
        atomic_fetch_sub(&w->queued, sz);
        zmq_msg_close(m);
        return -1;
    }
    return 0;
}

int ab_l3_writer_put(ab_l3_writer_t *w, const ab_cache_key_t *key, int64_t ttl_ms,
                     const void *val, size_t len)
{
    int64_t expires_ms = ab_wall_ms() + ttl_ms; /* the file outlives this boot */
    if (atomic_load(&w->queued) + len > w->queue_max) {
        atomic_fetch_add(&w->l3->c.dropped, 1);
        return -1;
    }
    zmq_msg_t m;
    if (zmq_msg_init_size(&m, 25 + len) != 0)
        return -1;
    uint8_t *d = zmq_msg_data(&m);
    d[0] = 'P';
    memcpy(d + 1, &key->hi, 8);
    memcpy(d + 9, &key->lo, 8);
    memcpy(d + 17, &expires_ms, 8);
    memcpy(d + 25, val, len);
    if (s_send(w, &m) != 0) {
        atomic_fetch_add(&w->l3->c.dropped, 1);
        return -1;
    }
    return 0;
}

int ab_l3_writer_clear(ab_l3_writer_t *w)
{
    zmq_msg_t m;
    zmq_msg_init_size(&m, 1);
    *(uint8_t *)zmq_msg_data(&m) = 'C';
    return s_send(w, &m);
}
