/* peers.c - `brokerctl peers`: the broker's links to peer brokers
 * (docs/links.md), as a table or JSON. */
#include "render.h"

#include <jansson.h>

static json_t *s_peer_json(const Agentbus__PeerInfo *p)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "name",
                     p->name, "endpoint", p->endpoint, "state", p->state, "transport",
                     p->transport, "rtt_us", (json_int_t)p->rtt_us, "services",
                     (json_int_t)p->services, "forwarded", (json_int_t)p->forwarded, "received",
                     (json_int_t)p->received, "answered", (json_int_t)p->answered, "failed",
                     (json_int_t)p->failed, "ups", (json_int_t)p->ups, "up_ms",
                     (json_int_t)p->up_ms);
}

void ctl_render_peers(FILE *out, const Agentbus__PeerList *pl, int json)
{
    if (json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < pl->n_peers; i++)
            json_array_append_new(arr, s_peer_json(pl->peers[i]));
        ctl_json_print(out, arr);
        return;
    }
    fprintf(out, "%-16s %-11s %-9s %8s %8s %10s %10s %10s %8s %5s  %s\n", "PEER", "STATE",
            "VIA", "RTT_US", "SERVICES", "FORWARDED", "RECEIVED", "ANSWERED", "FAILED", "UPS",
            "ENDPOINT");
    for (size_t i = 0; i < pl->n_peers; i++) {
        const Agentbus__PeerInfo *p = pl->peers[i];
        fprintf(out, "%-16s %-11s %-9s %8u %8u %10llu %10llu %10llu %8llu %5llu  %s\n",
                p->name[0] ? p->name : "?", p->state, p->transport[0] ? p->transport : "-",
                p->rtt_us, p->services, (unsigned long long)p->forwarded,
                (unsigned long long)p->received, (unsigned long long)p->answered,
                (unsigned long long)p->failed, (unsigned long long)p->ups,
                p->endpoint[0] ? p->endpoint : "(accepted)");
    }
    if (pl->n_peers == 0)
        fprintf(out, "(no peer brokers)\n");
}
