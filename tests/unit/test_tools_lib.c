/*
 * test_tools_lib.c - tools/lib: the histogram against a sorted reference,
 * argument parsing, the intrusive list, the clock and the free-port helper.
 */
#include "test.h"
#include "tl_args.h"
#include "tl_clock.h"
#include "tl_hist.h"
#include "tl_list.h"
#include "tl_port.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int s_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted V; the epsilon absorbs float error. */
static uint64_t s_exact(const uint64_t *v, size_t n, double p)
{
    size_t rank = (size_t)ceil(p / 100.0 * (double)n - 1e-6);
    return v[(rank < 1 ? 1 : rank) - 1];
}

static void s_hist_vs_sorted(uint64_t modulo, size_t n)
{
    uint64_t *v = malloc(n * sizeof *v);
    tl_hist_t *h = malloc(sizeof *h);
    REQUIRE(v && h);
    tl_hist_reset(h);
    for (size_t i = 0; i < n; i++) {
        v[i] = 1 + t_rand() % modulo;
        tl_hist_record(h, v[i]);
    }
    qsort(v, n, sizeof *v, s_cmp);
    const double ps[] = {50, 90, 99, 99.9, 100};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) {
        uint64_t want = s_exact(v, n, ps[i]);
        /* Never below the truth, above it by at most one sub-bucket. */
        double tol = (double)want / (1u << TL_HIST_SUB_BITS) + 1;
        CHECK_RANGE(tl_hist_percentile(h, ps[i]), want, (double)want + tol);
    }
    CHECK_U64(h->total, n);
    CHECK_U64(h->min, v[0]);
    CHECK_U64(h->max, v[n - 1]);
    free(v);
    free(h);
}

static void s_hist_edges(void)
{
    static tl_hist_t h, a, b;
    tl_hist_reset(&h);
    CHECK_U64(tl_hist_percentile(&h, 50), 0);
    for (uint64_t x = 0; x < 32; x++) /* small values are exact */
        tl_hist_record(&h, x);
    CHECK_U64(tl_hist_percentile(&h, 50), 15);
    CHECK_U64(tl_hist_percentile(&h, 0), 0);
    CHECK_U64(tl_hist_percentile(&h, 100), 31);
    tl_hist_reset(&h);
    tl_hist_record(&h, 1ull << 50); /* past the top: capped at the maximum */
    CHECK_U64(tl_hist_percentile(&h, 99), 1ull << 50);
    tl_hist_reset(&a);
    tl_hist_reset(&b);
    tl_hist_reset(&h);
    for (int i = 0; i < 5000; i++) {
        uint64_t x = t_rand() % 50000;
        tl_hist_record(i % 2 ? &a : &b, x);
        tl_hist_record(&h, x);
    }
    tl_hist_merge(&a, &b); /* merging == recording into one */
    CHECK_TRUE(memcmp(&a, &h, sizeof a) == 0);
}

static void s_args(void)
{
    long v = 7;
    CHECK_EQ(tl_parse_long("42", 0, 100, &v), 0);
    CHECK_EQ(v, 42);
    CHECK_EQ(tl_parse_long("-5", -10, 10, &v), 0);
    CHECK_EQ(v, -5);
    CHECK_EQ(tl_parse_long("101", 0, 100, &v), -1);
    CHECK_EQ(tl_parse_long("4x", 0, 100, &v), -1);
    CHECK_EQ(tl_parse_long("", 0, 100, &v), -1);
    CHECK_EQ(tl_parse_long(NULL, 0, 100, &v), -1);
    CHECK_EQ(tl_parse_long("99999999999999999999", 0, 100, &v), -1);
    CHECK_EQ(v, -5); /* untouched by the failures */
    /* ab_parse_double (parse.h): decimal only; strtod took all of these. */
    double d = 7;
    CHECK_EQ(ab_parse_double("1.5", 0, 10, &d), 0);
    CHECK_TRUE(d == 1.5);
    CHECK_EQ(ab_parse_double("-2e3", -1e4, 0, &d), 0);
    CHECK_TRUE(d == -2000);
    CHECK_EQ(ab_parse_double(".5", 0, 1, &d), 0);
    CHECK_TRUE(d == 0.5);
    const char *bad[] = {"0x10", "0x1p-1", " 5", "+5", "inf", "nan", "5x", "1e", ".", "-", "",
                         "1e999", "5 "};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_EQ(ab_parse_double(bad[i], -1e300, 1e300, &d), -1);
    CHECK_EQ(ab_parse_double("11", 0, 10, &d), -1);
    CHECK_TRUE(d == 0.5); /* untouched by the failures */
    CHECK_EQ((long)ab_parse_decimal_prefix("1.5s", &d), 3);
    CHECK_TRUE(d == 1.5);
    CHECK_EQ((long)ab_parse_decimal_prefix("8G", &d), 1);
    CHECK_EQ((long)ab_parse_decimal_prefix("0x10", &d), 1); /* the "0": then 'x' is no unit */
    CHECK_EQ((long)ab_parse_decimal_prefix("s", &d), 0);
    int port = tl_free_port();
    CHECK_RANGE(port, 1, 65535);
    /* Below the ephemeral range (32768 unless the host says otherwise),
     * where no outgoing connection takes it, and never the same twice in
     * a row of 256 (the kernel's bind to port 0 gave one back twice). */
    int lo = 32768;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f) {
        CHECK_EQ(fscanf(f, "%d", &lo), 1);
        fclose(f);
    }
    static int got[256];
    int dup = 0, high = 0;
    for (int i = 0; i < 256; i++) {
        got[i] = tl_free_port();
        high += got[i] >= lo && lo > 11024;
        for (int j = 0; j < i; j++)
            dup += got[j] == got[i];
    }
    CHECK_EQ(dup, 0);
    CHECK_EQ(high, 0);
}

typedef struct {
    int v;
    tl_list_t node;
} s_item_t;

static void s_list(void)
{
    tl_list_t l;
    s_item_t it[5];
    tl_list_init(&l);
    CHECK_TRUE(tl_list_empty(&l));
    for (int i = 0; i < 5; i++) {
        it[i].v = i;
        tl_list_push_back(&l, &it[i].node);
    }
    CHECK_TRUE(!tl_list_empty(&l));
    /* remove the odd ones while iterating, then check order and links */
    for (tl_list_t *n = l.next, *nx; n != &l; n = nx) {
        nx = n->next;
        if (tl_list_entry(n, s_item_t, node)->v % 2)
            tl_list_remove(n);
    }
    int want[] = {0, 2, 4}, k = 0;
    for (tl_list_t *n = l.next; n != &l; n = n->next, k++)
        CHECK_EQ(tl_list_entry(n, s_item_t, node)->v, want[k < 3 ? k : 2]);
    CHECK_EQ(k, 3);
    CHECK_EQ(tl_list_entry(l.prev, s_item_t, node)->v, 4); /* tail kept right */
    tl_list_remove(&it[1].node); /* removed twice: a no-op */
    tl_list_remove(&it[0].node);
    tl_list_remove(&it[4].node);
    tl_list_remove(&it[2].node);
    CHECK_TRUE(tl_list_empty(&l));
}

static void s_clock(void)
{
    uint64_t ns = tl_now_ns(), us = tl_now_us();
    int64_t ms = tl_now_ms();
    CHECK_TRUE(us >= ns / 1000u);
    CHECK_TRUE((uint64_t)ms >= ns / 1000000u);
    CHECK_TRUE(tl_now_ns() >= ns);
}

/* Two processes picking at once never get the same port (the picks are
 * shared in ${TMPDIR}/agentbus-ports-UID), nor does the Python twin after
 * them. Without the sharing, 400 picks each from ~22,700 ports meet about
 * 7 times. A TMPDIR of its own: other tests' picks stay apart. */
enum { PORTS_EACH = 400, PORTS_PY = 200 };

static void s_ports_child(int fd)
{
    int got[PORTS_EACH];
    for (int i = 0; i < PORTS_EACH; i++)
        got[i] = tl_free_port();
    _exit(write(fd, got, sizeof got) == (ssize_t)sizeof got ? 0 : 1);
}

static int s_ports_read(int fd, int *out)
{
    size_t want = PORTS_EACH * sizeof(int), have = 0;
    while (have < want) {
        ssize_t n = read(fd, (char *)out + have, want - have);
        if (n <= 0)
            return -1;
        have += (size_t)n;
    }
    return 0;
}

static int s_ports_common(const int *a, int na, const int *b, int nb)
{
    int common = 0;
    for (int i = 0; i < na; i++)
        for (int j = 0; j < nb; j++)
            common += a[i] == b[j] && a[i] > 0;
    return common;
}

static void s_ports_shared(void)
{
    char dir[] = "/tmp/ab-ports-XXXXXX", file[128], cmd[1024];
    REQUIRE(mkdtemp(dir) != NULL);
    REQUIRE(setenv("TMPDIR", dir, 1) == 0);
    static int got[2][PORTS_EACH];
    int fds[2][2];
    pid_t pid[2];
    for (int k = 0; k < 2; k++) {
        REQUIRE(pipe(fds[k]) == 0);
        REQUIRE((pid[k] = fork()) >= 0);
        if (pid[k] == 0)
            s_ports_child(fds[k][1]);
        close(fds[k][1]);
    }
    for (int k = 0; k < 2; k++) {
        int st = -1;
        CHECK_EQ(s_ports_read(fds[k][0], got[k]), 0);
        close(fds[k][0]);
        REQUIRE(waitpid(pid[k], &st, 0) == pid[k]);
        CHECK_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    CHECK_EQ(s_ports_common(got[0], PORTS_EACH, got[1], PORTS_EACH), 0);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/tools/lib/ports.py %d", AB_SRC_DIR, PORTS_PY);
    FILE *py = popen(cmd, "r");
    REQUIRE(py != NULL);
    int pyp[PORTS_PY], n = 0;
    while (n < PORTS_PY && fscanf(py, "%d", &pyp[n]) == 1)
        n++;
    CHECK_EQ(pclose(py), 0);
    CHECK_EQ(n, PORTS_PY);
    int common = s_ports_common(pyp, n, got[0], PORTS_EACH) +
                 s_ports_common(pyp, n, got[1], PORTS_EACH);
    CHECK_EQ(common, 0);
    snprintf(file, sizeof file, "%s/agentbus-ports-%u", dir, (unsigned)getuid());
    CHECK_EQ(unlink(file), 0);
    CHECK_EQ(rmdir(dir), 0);
    unsetenv("TMPDIR");
}

int main(void)
{
    s_hist_vs_sorted(100000, 100000);
    s_hist_vs_sorted(1000000000ull, 100000);
    s_hist_vs_sorted(7, 1);
    s_hist_edges();
    s_args();
    s_list();
    s_clock();
    s_ports_shared();
    return TEST_DONE("test_tools_lib");
}
