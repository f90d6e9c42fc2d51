/*
 * test_gw_conns.c - the gateway's count of connections per client address
 * (--max-connections-per-ip with --threads 0, gateway/gw_conns.c) on its
 * own: counts kept through adds and drops in any order, with addresses
 * whose slots collide (the table's backward-shift removal must leave every
 * other address findable), and the limit's answer.
 */
#include "gw_conns.h"
#include "test.h"

#include <stdint.h>

/* Addresses that share a few home slots: A * 16 hashes to 16 places. */
#define S_ADDRS 64
#define S_MAX 40

static void s_test_limit(void)
{
    gw_conns_t t;
    gw_conns_init(&t, 0, 0, 0);
    CHECK_EQ(gw_conns_ip_full(&t, 1), 0); /* no limit set: never full */
    CHECK_EQ(gw_conns_limit_per_ip(&t, 2, 16), 0);
    CHECK_EQ(gw_conns_ip_full(&t, 7), 0);
    gw_conns_ip_add(&t, 7);
    CHECK_EQ(gw_conns_ip_full(&t, 7), 0);
    gw_conns_ip_add(&t, 7);
    CHECK_EQ(gw_conns_ip_full(&t, 7), 1);
    CHECK_EQ(gw_conns_ip_full(&t, 8), 0); /* another address is not */
    gw_conns_ip_drop(&t, 7);
    CHECK_EQ(gw_conns_ip_full(&t, 7), 0);
    gw_conns_ip_drop(&t, 7);
    gw_conns_ip_drop(&t, 7); /* more drops than adds: stays 0 */
    CHECK_EQ(gw_conns_ip_count(&t, 7), 0);
    gw_conns_destroy(&t);
}

static void s_test_collisions(void)
{
    gw_conns_t t;
    gw_conns_init(&t, 0, 0, 0);
    CHECK_EQ(gw_conns_limit_per_ip(&t, 1000, S_MAX), 0);
    unsigned ref[S_ADDRS] = {0}, open = 0, seed = 1, bad = 0;
    for (int step = 0; step < 200000 && !bad; step++) {
        seed = seed * 1103515245u + 12345u;
        unsigned a = (seed >> 8) % S_ADDRS;
        if ((seed >> 4 & 1) && open < S_MAX) {
            gw_conns_ip_add(&t, a * 16u);
            ref[a]++, open++;
        } else if (ref[a]) {
            gw_conns_ip_drop(&t, a * 16u);
            ref[a]--, open--;
        }
        for (unsigned b = 0; step % 97 == 0 && b < S_ADDRS; b++)
            if (gw_conns_ip_count(&t, b * 16u) != ref[b]) {
                CHECK_EQ(gw_conns_ip_count(&t, b * 16u), ref[b]);
                bad = 1;
                break;
            }
    }
    gw_conns_destroy(&t);
}

int main(void)
{
    s_test_limit();
    s_test_collisions();
    return TEST_DONE("gw_conns");
}
