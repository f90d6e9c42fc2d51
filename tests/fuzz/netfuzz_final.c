/*
 * netfuzz_final.c - netfuzz's last word with each broker it ran: what its
 * links did and its stats, printed, and whether it still answered (the
 * oracle's end, netfuzz.c s_finish).
 */
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "netfuzz.h"

#include <stdio.h>
#include <string.h>

/* The broker at EP's answer to the CONTROL query WHAT, unpacked by
 * UNPACK (NULL when it failed; *RC says why). */
static void *s_query(const char *ep, const char *what, int *rc,
                     void *(*unpack)(size_t, const uint8_t *))
{
    ab_client_t *c = nf_client_at(ep);
    void *data = NULL;
    size_t len = 0;
    *rc = c ? ab_client_control(c, what, 10000, &data, &len) : AB_EINVAL;
    void *out = *rc == AB_OK ? unpack(len, data) : NULL;
    ab_free(data);
    ab_client_destroy(&c);
    return out;
}

static void *s_unpack_peers(size_t len, const uint8_t *data)
{
    return agentbus__peer_list__unpack(NULL, len, data);
}

static void *s_unpack_stats(size_t len, const uint8_t *data)
{
    return agentbus__stats__unpack(NULL, len, data);
}

/* --linked: prints the links of the broker at EP (WHO); what failed when
 * its link to FAR (NULL: not checked) answered no request. */
const char *nf_final_links(const char *ep, const char *who, const char *far, char *buf,
                           size_t cap)
{
    int rc;
    Agentbus__PeerList *pl = s_query(ep, "peers", &rc, s_unpack_peers);
    if (!pl) {
        snprintf(buf, cap, "the %s did not answer a peers CONTROL (%s)", who, ab_strerror(rc));
        return buf;
    }
    uint64_t far_answered = 0;
    for (size_t i = 0; i < pl->n_peers; i++) {
        const Agentbus__PeerInfo *pi = pl->peers[i];
        printf("netfuzz: %s link %s: %s, forwarded %llu, received %llu, answered %llu, taken "
               "back %llu, up %llu times\n",
               who, pi->name[0] ? pi->name : "(no name)", pi->state,
               (unsigned long long)pi->forwarded, (unsigned long long)pi->received,
               (unsigned long long)pi->answered, (unsigned long long)pi->failed,
               (unsigned long long)pi->ups);
        if (far && !strcmp(pi->name, far))
            far_answered = pi->answered;
    }
    agentbus__peer_list__free_unpacked(pl, NULL);
    if (far && !far_answered) {
        snprintf(buf, cap, "the %s's link to %s answered no request: the run tested no link", who,
                 far);
        return buf;
    }
    return NULL;
}

/* The broker at EP (WHO) still answers `stats`: prints some of it. NULL
 * or what failed. */
const char *nf_final_stats(const char *ep, const char *who, char *buf, size_t cap)
{
    int rc;
    Agentbus__Stats *st = s_query(ep, "stats", &rc, s_unpack_stats);
    if (!st) {
        snprintf(buf, cap, "the %s did not answer a stats CONTROL (%s)", who, ab_strerror(rc));
        return buf;
    }
    printf("netfuzz: %s stats: msgs_in %llu, requests %llu, replies %llu, dropped %llu "
           "(duplicates %llu), late %llu, redispatched %llu, malformed %llu, batches_in %llu, "
           "msgs_sent %llu, published %llu, pending %llu, ejected %llu, cancels unanswered "
           "%llu; not read: busy %llu, not sent %llu, disconnected %llu, pipe full %llu\n",
           who, (unsigned long long)st->msgs_in, (unsigned long long)st->requests,
           (unsigned long long)st->replies, (unsigned long long)st->replies_dropped,
           (unsigned long long)st->duplicates_dropped, (unsigned long long)st->late_replies,
           (unsigned long long)st->redispatched,
           (unsigned long long)st->malformed, (unsigned long long)st->batches_in,
           (unsigned long long)st->msgs_sent, (unsigned long long)st->published,
           (unsigned long long)st->pending, (unsigned long long)st->workers_ejected,
           (unsigned long long)st->cancels_unanswered, (unsigned long long)st->out_busy,
           (unsigned long long)st->out_dropped, (unsigned long long)st->slow_disconnects,
           (unsigned long long)st->send_eagain);
    agentbus__stats__free_unpacked(st, NULL);
    return NULL;
}
