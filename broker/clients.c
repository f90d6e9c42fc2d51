/*
 * clients.c - client records: identity, weights, quotas, the "clients"
 * control answer (see clients.h).
 */
#define AB_LOG_SUBSYS "clients" /* log.h: the subsystem in log lines */
#include "clients.h"
#include "auth.h"
#include "lanes.h"
#include "messaging.h"
#include "parse.h"
#include "service.h"
#include "agentbus.pb-c.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

const char *ab_client_identity(const ab_peer_t *p, char *out, size_t cap)
{
    /* With --auth curve an agent key is one client across its connections
     * and names: its quotas and its round-robin share follow the key, so
     * opening more connections or taking more names does not multiply them.
     * Keys shared by design (admin, the local ipc operator, workers, peer
     * links) stay per agent name, else per connection. "~key:" cannot be
     * an agent name (none starts with '~') nor a connection ("~" + hex). */
    if (p->authkey && ab_key_role(p->authkey) == AB_KEYROLE_AGENT) {
        snprintf(out, cap, "~key:%s", ab_key_name(p->authkey));
        return out;
    }
    return ab_msgs_sender_name(p, out, cap);
}

static uint32_t s_weight_of(ab_broker_t *b, const char *ident)
{
    void *w = b->client_weights ? zhashx_lookup(b->client_weights, ident) : NULL;
    return w ? (uint32_t)(uintptr_t)w : 1;
}

ab_client_rec_t *ab_client_named(ab_broker_t *b, const char *ident)
{
    ab_client_rec_t *c = zhashx_lookup(b->clients, ident);
    if (c)
        return c;
    size_t n = strlen(ident);
    if (!(c = calloc(1, sizeof *c + n + 1)))
        return NULL;
    memcpy(c->ident, ident, n + 1);
    c->id = ++b->next_client_id;
    c->weight = s_weight_of(b, ident);
    if (zhashx_insert(b->clients, c->ident, c) != 0) {
        free(c);
        return NULL;
    }
    return c;
}

void ab_client_hold(ab_client_rec_t *c)
{
    c->refs++;
}

void ab_client_release(ab_broker_t *b, ab_client_rec_t *c)
{
    if (--c->refs)
        return;
    zhashx_delete(b->clients, c->ident);
    free(c);
}

ab_client_rec_t *ab_client_of(ab_broker_t *b, ab_peer_t *p)
{
    ab_client_rec_t *c = p->client;
    /* The identity changes only with the agent name (claimed, taken over):
     * the hot path compares one number. Not the record's address: a rename
     * frees the old name's record (its mailbox empty) and the new one's
     * calloc may get the same address back (it did after 7 renames: glibc's
     * cache for that size full, the chunk went to a fastbin), so the rename
     * went unseen and the new name's requests were the old name's. */
    uint64_t serial = ab_msgs_agent_serial(p);
    if (c && p->client_agent == serial)
        return c;
    char buf[AB_NAME_MAX + 2 * AB_RID_MAX + 2];
    const char *ident = ab_client_identity(p, buf, sizeof buf);
    p->client_agent = serial;
    if (c && strcmp(c->ident, ident) == 0)
        return c;
    ab_client_rec_t *now = ab_client_named(b, ident);
    if (!now)
        return NULL;
    now->refs++;
    now->conns++;
    if (c) { /* renamed: its held requests stay with the old record */
        c->conns--;
        ab_client_release(b, c);
    }
    p->client = now;
    return now;
}

void ab_clients_peer_gone(ab_broker_t *b, ab_peer_t *p)
{
    ab_client_rec_t *c = p->client;
    if (!c)
        return;
    p->client = NULL;
    c->conns--;
    ab_client_release(b, c);
}

/* How long a refused client might wait before trying again: the median
 * wait in the lane it asked for, at least 10 ms, at most a minute. */
static uint64_t s_retry_ms(const ab_service_t *s, int lane)
{
    if (!s || !ab_lanes_wait_count(&s->lanes[lane]))
        return 100;
    uint64_t ms = ab_lanes_wait_pct(&s->lanes[lane], 50) / 1000;
    return ms < 10 ? 10 : ms > 60000 ? 60000 : ms;
}

int ab_client_admit(ab_broker_t *b, ab_client_rec_t *c, const ab_service_t *s, int lane,
                    int queuing, char *why, size_t cap)
{
    const char *what;
    long limit;
    if (!queuing && c->held >= (uint32_t)b->cfg->max_client_inflight) {
        what = "in flight (max-client-inflight";
        limit = b->cfg->max_client_inflight;
        b->c.client_limit_busy++;
    } else if (queuing && c->queued >= (uint32_t)b->cfg->max_client_queued) {
        what = "queued (max-client-queued";
        limit = b->cfg->max_client_queued;
        b->c.client_queue_busy++;
    } else {
        return 0;
    }
    c->refused++;
    snprintf(why, cap, "client %s has %ld request%s %s); retry after %llu ms", c->ident, limit,
             limit == 1 ? "" : "s", what, (unsigned long long)s_retry_ms(s, lane));
    return 1;
}

/* "name=W,name=W": weights by identity, parsed once (as config.c checked). */
static int s_parse_weights(ab_broker_t *b, const char *spec)
{
    ab_weight_item_t it;
    char why[128];
    size_t pos = 0;
    int rc;
    while ((rc = ab_parse_weight_item(spec, &pos, AB_CLIENT_WEIGHT_MAX, &it, why,
                                      sizeof why)) > 0) {
        char *name = strndup(it.item, it.name_len);
        if (!name)
            return -1;
        zhashx_update(b->client_weights, name, (void *)(uintptr_t)it.weight);
        free(name);
    }
    if (rc < 0)
        AB_ERROR("client-weights: '%.*s': %s", (int)it.item_len, it.item, why);
    return rc;
}

int ab_clients_init(ab_broker_t *b)
{
    if (!(b->clients = zhashx_new()))
        return -1;
    const char *spec = b->cfg->client_weights;
    if (!spec || !*spec)
        return 0;
    if (!(b->client_weights = zhashx_new()))
        return -1;
    return s_parse_weights(b, spec);
}

void ab_clients_fini(ab_broker_t *b)
{
    /* Requests and peers are gone: whatever records remain are freed. */
    if (b->clients) {
        for (ab_client_rec_t *c = zhashx_first(b->clients); c; c = zhashx_next(b->clients))
            free(c);
        zhashx_destroy(&b->clients);
    }
    zhashx_destroy(&b->client_weights);
}

int ab_clients_answer(ab_broker_t *b, uint8_t **out, size_t *len)
{
    size_t cap = zhashx_size(b->clients) + 1, n = 0;
    Agentbus__ClientInfo *ci = calloc(cap, sizeof *ci);
    Agentbus__ClientInfo **cp = calloc(cap, sizeof *cp);
    int rc = -1;
    if (ci && cp) {
        for (ab_client_rec_t *c = zhashx_first(b->clients); c && n < cap;
             c = zhashx_next(b->clients), n++) {
            agentbus__client_info__init(&ci[n]);
            ci[n].client = c->ident;
            ci[n].in_flight = c->held - c->queued;
            ci[n].queued = c->queued;
            ci[n].refused = c->refused;
            ci[n].requests = c->requests;
            ci[n].weight = c->weight;
            ci[n].connections = c->conns;
            cp[n] = &ci[n];
        }
        Agentbus__ClientList cl;
        agentbus__client_list__init(&cl);
        cl.n_clients = n;
        cl.clients = cp;
        *len = agentbus__client_list__get_packed_size(&cl);
        if ((*out = malloc(*len ? *len : 1))) {
            agentbus__client_list__pack(&cl, *out);
            rc = 0;
        }
    }
    free(ci);
    free(cp);
    return rc;
}
