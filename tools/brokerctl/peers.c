/* peers.c - `brokerctl peers`: the broker's links to peer brokers
 * (docs/links.md), as a table or JSON. */
#include "render.h"

#include <jansson.h>

static json_t *s_peer_json(const Agentbus__PeerInfo *p)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
                          "name", p->name, "endpoint", p->endpoint, "state", p->state,
                          "transport", p->transport, "rtt_us", (json_int_t)p->rtt_us, "services",
                          (json_int_t)p->services, "forwarded", (json_int_t)p->forwarded,
                          "received", (json_int_t)p->received, "answered",
                          (json_int_t)p->answered, "failed", (json_int_t)p->failed, "ups",
                          (json_int_t)p->ups, "up_ms", (json_int_t)p->up_ms, "compressed",
                          (json_int_t)p->compressed, "dir_refused", (json_int_t)p->dir_refused);
    /* Messaging across the link (docs/links.md "Messages and topics"). */
    json_t *m = json_pack("{s:I, s:b, s:I, s:I, s:I, s:I, s:I, s:I}", "names", (json_int_t)p->names,
                          "all_topics", p->topics == UINT32_MAX, "topics",
                          (json_int_t)(p->topics == UINT32_MAX ? 0 : p->topics),
                          "sends_forwarded", (json_int_t)p->sends_forwarded, "sends_received",
                          (json_int_t)p->sends_received, "publishes_forwarded",
                          (json_int_t)p->publishes_forwarded, "publishes_received",
                          (json_int_t)p->publishes_received, "publishes_dropped",
                          (json_int_t)p->publishes_dropped);
    if (o && m)
        json_object_update(o, m);
    json_decref(m);
    return o;
}

/* The second table: names, topics and messages across each link. */
static void s_render_msgs(FILE *out, const Agentbus__PeerList *pl)
{
    fprintf(out, "\n%-16s %8s %8s %12s %12s %12s %12s %12s\n", "PEER", "NAMES", "TOPICS",
            "SEND_FWD", "SEND_RECV", "PUBLISH_FWD", "PUBLISH_RECV", "PUBLISH_DROP");
    for (size_t i = 0; i < pl->n_peers; i++) {
        const Agentbus__PeerInfo *p = pl->peers[i];
        char topics[16];
        if (p->topics == UINT32_MAX)
            snprintf(topics, sizeof topics, "all");
        else
            snprintf(topics, sizeof topics, "%u", p->topics);
        fprintf(out, "%-16s %8u %8s %12llu %12llu %12llu %12llu %12llu\n",
                p->name[0] ? p->name : "?", p->names, topics,
                (unsigned long long)p->sends_forwarded, (unsigned long long)p->sends_received,
                (unsigned long long)p->publishes_forwarded,
                (unsigned long long)p->publishes_received,
                (unsigned long long)p->publishes_dropped);
    }
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
    else
        s_render_msgs(out, pl);
}
