/*
 * peer.c - the peer table: a record per routing id, created by a peer's
 * first message (broker.c), found by routing id or by key, and dropped
 * (ab_peer_drop tells every subsystem) when it leaves or falls silent.
 */
#include "broker.h"
#include "batching.h"
#include "directory.h"
#include "health.h"
#include "link.h"
#include "messaging.h"
#include "request.h"
#include "clients.h"
#include "router.h"
#include "service.h"
#include "auth.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* Peers are keyed by their binary routing id (the ab_rid_t inside the peer),
 * so the per-message lookup hashes a few bytes and formats nothing. */
static size_t s_rid_hash(const void *key)
{
    const ab_rid_t *r = key;
    return (size_t)ab_hash_bytes(r->bytes, r->len);
}

static int s_rid_cmp(const void *a, const void *b)
{
    const ab_rid_t *x = a, *y = b;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return memcmp(x->bytes, y->bytes, x->len);
}

/* The name of a peer without one: never freed. */
static char s_no_name[1];

int ab_peer_set_name(ab_peer_t *p, const char *prefix, const char *name)
{
    size_t lp = strlen(prefix), ln = strlen(name);
    if (lp + ln > AB_NAME_MAX - 1)
        ln = lp < AB_NAME_MAX - 1 ? AB_NAME_MAX - 1 - lp : 0;
    char *n = lp + ln ? malloc(lp + ln + 1) : NULL;
    if (p->name != s_no_name)
        free(p->name); /* NULL in a record just calloc'd */
    p->name = s_no_name;
    if (!n)
        return lp + ln ? -1 : 0;
    memcpy(n, prefix, lp);
    memcpy(n + lp, name, ln);
    n[lp + ln] = '\0';
    p->name = n;
    return 0;
}

void ab_peer_said_max_payload(const ab_broker_t *b, ab_peer_t *p, uint64_t said)
{
    /* Any value a peer writes: 0 (not said) or one past what this broker
     * takes stands for max-payload-bytes (ab_peer_max_payload). */
    p->max_payload = said < b->cfg->max_payload_bytes ? (size_t)said : 0;
}

size_t ab_peer_max_payload(const ab_broker_t *b, const ab_peer_t *p)
{
    return p && p->max_payload ? p->max_payload : b->cfg->max_payload_bytes;
}

uint64_t ab_payload_size(const ab_header_t *h, size_t size)
{
    /* An lz4 payload stands for its original bytes: a receiver that
     * inflates it holds those (a hostile sender may declare anything: the
     * larger of the two is judged). */
    if ((h->flags & AB_FLAG_LZ4) && h->original_size > size)
        return h->original_size;
    return size;
}

int ab_peer_over_max(const ab_broker_t *b, const ab_peer_t *p, const ab_header_t *h,
                     size_t size)
{
    return ab_payload_size(h, size) > (uint64_t)ab_peer_max_payload(b, p);
}

size_t ab_peer_batch_max(const ab_broker_t *b, const ab_peer_t *p)
{
    /* max_payload is at most max-payload-bytes (1 GiB, config.c): no
     * overflow in the sum. */
    size_t max = b->cfg->batch_max_bytes, rx = ab_peer_max_payload(b, p) + AB_PEER_RX_SLACK;
    return rx < max ? rx : max;
}

static void s_peer_free(void **item)
{
    ab_peer_t *p = *item;
    ab_peer_set_name(p, "", "");
    ab_defer_cancel(&p->later); /* a walk's queue never reaches a freed peer */
    ab_defer_cancel(&p->kill);
    ab_batching_peer_free(NULL, *item);
    ab_idmap_fini(&((ab_peer_t *)*item)->reqs_by_id);
    free(*item);
    *item = NULL;
}

int ab_peers_new(ab_broker_t *b)
{
    b->peers = zhashx_new();
    b->peer_keys = zhashx_new();
    if (!b->peers || !b->peer_keys)
        return -1;
    zhashx_set_key_hasher(b->peers, s_rid_hash);
    zhashx_set_key_comparator(b->peers, s_rid_cmp);
    zhashx_set_key_duplicator(b->peers, NULL);
    zhashx_set_key_destructor(b->peers, NULL);
    zhashx_set_destructor(b->peers, s_peer_free);
    zhashx_set_key_duplicator(b->peer_keys, NULL);
    zhashx_set_key_destructor(b->peer_keys, NULL);
    return 0;
}

void ab_rid_key(const ab_rid_t *rid, char *key)
{
    ab_hex(rid->bytes, rid->len, key, 2 * AB_RID_MAX + 1);
}

ab_peer_t *ab_peer_lookup(ab_broker_t *b, const ab_rid_t *rid)
{
    /* The entries of a BATCH all come from one peer, and its answers and
     * requests follow each other: the last two peers found are checked
     * first (a hash of the id and a table probe saved per message; two,
     * since a client's requests and a worker's answers alternate). */
    for (int i = 0; i < 2; i++) {
        ab_peer_t *p = b->peer_hint[i];
        if (p && p->rid.len == rid->len && memcmp(p->rid.bytes, rid->bytes, rid->len) == 0)
            return p;
    }
    ab_peer_t *p = zhashx_lookup(b->peers, rid);
    if (p) {
        b->peer_hint[1] = b->peer_hint[0];
        b->peer_hint[0] = p;
    }
    return p;
}

ab_peer_t *ab_peer_by_key(ab_broker_t *b, const char *key)
{
    return zhashx_lookup(b->peer_keys, key);
}

/* Names P with a random 64-bit token, unique among live peers. Never the
 * routing id: the ROUTER assigns ids in sequence from a random start, and a
 * peer that saw one could connect with the next ones (ZMQ_ROUTING_ID); when
 * libzmq (4.3) then assigns such an id to a new connection it aborts the
 * broker (an assertion in socket_base.cpp). So ids are never shown. */
static void s_peer_key(ab_broker_t *b, ab_peer_t *p)
{
    static uint64_t seq;
    for (int i = 0; i < 8; i++) {
        uint64_t v = 0;
        if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v)
            v = ab_hash_bytes(p->rid.bytes, p->rid.len) ^ ab_now_ns() ^ ++seq;
        snprintf(p->key, sizeof p->key, "%016llx", (unsigned long long)v);
        if (!zhashx_lookup(b->peer_keys, p->key))
            break;
    }
    zhashx_update(b->peer_keys, p->key, p);
}

ab_peer_t *ab_peer_new(ab_broker_t *b, const ab_rid_t *rid, ab_role_t role, int64_t now)
{
    ab_peer_t *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->rid = *rid;
    p->name = s_no_name;
    p->rid_hash = ab_rid_hash(rid, b->in_key);
    s_peer_key(b, p);
    p->role = role;
    p->connected_ms = p->last_seen_ms = now;
    p->heartbeat_ms = b->cfg->heartbeat_ms;
    p->fd = -1;
    /* Its requests by client id: the same churn as the pending table. */
    p->reqs_by_id.keep_cap = 2048;
    ab_auth_peer_new(p, b->in_key);
    zhashx_insert(b->peers, &p->rid, p);
    AB_DEBUG("peer %s connected", p->key);
    return p;
}

ab_peer_t *ab_peer_add(ab_broker_t *b, const ab_rid_t *rid, ab_role_t role, int64_t now)
{
    const struct ab_key *k = b->in_key;
    b->in_key = NULL; /* no connection: no key */
    ab_peer_t *p = ab_peer_new(b, rid, role, now);
    b->in_key = k;
    return p;
}

void ab_peer_drop(ab_broker_t *b, ab_peer_t *peer, const char *why)
{
    ab_link_peer_gone(b, peer); /* first: its worker record still names its service */
    /* Agents come and go all day; a worker leaving matters to an operator. */
    AB_LOG(peer->worker ? AB_LOG_INFO : AB_LOG_DEBUG, "peer %s (%s%s%s) dropped: %s", peer->key,
           peer->worker ? "worker" : "agent", peer->name[0] ? " " : "", peer->name, why);
    ab_directory_forget(b, &peer->rid);
    int agent = !peer->worker;
    if (peer->worker)
        ab_worker_detach(b, peer->worker, why);
    ab_cancel_client_gone(b, peer, agent); /* frees their workers' slots */
    ab_clients_peer_gone(b, peer); /* after its requests left their flows */
    ab_msgs_peer_gone(b, peer);
    ab_batching_peer_free(b, peer);
    ab_router_peer_gone(b, peer);
    ab_auth_peer_gone(peer);
    if (zhashx_lookup(b->peer_keys, peer->key) == peer)
        zhashx_delete(b->peer_keys, peer->key);
    for (int i = 0; i < 2; i++)
        if (b->peer_hint[i] == peer)
            b->peer_hint[i] = NULL; /* freed next */
    zhashx_delete(b->peers, &peer->rid);
}

static void s_drop_silent(void *ctx, ab_defer_node_t *n)
{
    ab_peer_drop(ctx, ab_defer_data(n, ab_peer_t, later), "heartbeat timeout");
}

void ab_peers_sweep(ab_broker_t *b, int64_t now)
{
    /* Queued, then dropped: a zhashx may not change while iterated, and
     * dropping one peer may drop another (re-dispatch), which then leaves
     * the queue as it is freed. */
    ab_defer_t dead;
    ab_defer_init(&dead);
    uint32_t agents = 0;
    for (ab_peer_t *p = zhashx_first(b->peers); p; p = zhashx_next(b->peers)) {
        if (p->link_role >= AB_LINK_WORKER)
            continue; /* no connection: lives and dies with its link (link.h) */
        int64_t ivl = p->heartbeat_ms > b->cfg->heartbeat_ms ? p->heartbeat_ms
                                                             : b->cfg->heartbeat_ms;
        if (p->worker && p->worker->health.expect_ms > ivl)
            ivl = p->worker->health.expect_ms; /* adaptive interval (health.c) */
        if (!p->worker && p->hb_told > ivl)
            ivl = p->hb_told; /* agents' interval grows with their number (health.h) */
        agents += !p->worker && p->link_role == AB_LINK_NONE;
        if (now - p->last_seen_ms > ivl * b->cfg->liveness)
            ab_defer_add(&dead, &p->later, s_drop_silent);
    }
    ab_defer_run(&dead, b);
    ab_health_agents_counted(b, agents);
}
