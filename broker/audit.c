/* audit.c - the broker recounts its own bookkeeping (audit.h). */
#include "audit.h"
#include "cache.h"
#include "clients.h"
#include "messaging.h"
#include "request.h"
#include "service.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* What the requests say one owner (a client record, a service, a worker)
 * should count, keyed by the owner's address. */
typedef struct {
    uint64_t reqs, held, queued, bytes, conns, holds;
    int listed;       /* the broker lists the owner (its table, a service's workers) */
    const char *kind; /* "client record", "service" or "worker" */
} s_tally_t;

typedef struct {
    ab_idmap_t by_owner; /* (uintptr_t)owner -> s_tally_t (owned) */
    int oom;
    uint64_t bytes; /* held bytes (payloads, records) of all pending requests */
    size_t in_heap; /* pending requests in the deadline heap */
} s_tallies_t;

int ab_audit_bad(char *why, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, cap, fmt, ap);
    va_end(ap);
    return -1;
}

/* OWNER's tally, made when absent (KIND not NULL: what OWNER is); NULL when
 * absent or out of memory. */
static s_tally_t *s_tally(s_tallies_t *t, const void *owner, const char *kind)
{
    uint64_t key = (uint64_t)(uintptr_t)owner;
    s_tally_t *x = ab_idmap_get(&t->by_owner, key);
    if (x || !kind)
        return x;
    x = calloc(1, sizeof *x);
    if (x)
        x->kind = kind;
    if (!x || ab_idmap_put(&t->by_owner, key, x) != 0) {
        free(x);
        t->oom = 1;
        return NULL;
    }
    return x;
}

static const s_tally_t s_none;

static const s_tally_t *s_of(s_tallies_t *t, const void *owner)
{
    const s_tally_t *x = s_tally(t, owner, NULL);
    return x ? x : &s_none;
}

/* Each pending request, tallied to its owners (and to T's totals), its own
 * links checked on the way. */
static int s_walk_requests(ab_broker_t *b, s_tallies_t *t, char *why, size_t cap)
{
    uint64_t bytes = 0;
    size_t in_heap = 0;
    for (size_t i = 0; i < b->pending.cap; i++) {
        if (!b->pending.keys[i])
            continue;
        ab_req_t *r = b->pending.vals[i];
        if (r->bid != b->pending.keys[i])
            return ab_audit_bad(why, cap, "request %llu is pending under bid %llu",
                                (unsigned long long)r->bid, (unsigned long long)b->pending.keys[i]);
        if (r->flow && r->worker)
            return ab_audit_bad(why, cap, "request %llu is both queued and at a worker",
                                (unsigned long long)r->bid);
        if (r->mq && !r->flow)
            return ab_audit_bad(why, cap, "request %llu is in a model queue but in no flow",
                                (unsigned long long)r->bid);
        if (r->dl.index != AB_HEAP_NONE) {
            if (r->dl.index >= b->deadlines.len || b->deadlines.a[r->dl.index] != &r->dl)
                return ab_audit_bad(why, cap, "request %llu's deadline slot %zu is not its own",
                                    (unsigned long long)r->bid, r->dl.index);
            in_heap++;
        }
        bytes += r->held_bytes;
        if (r->crec) {
            s_tally_t *c = s_tally(t, r->crec, "client record");
            if (c) {
                c->reqs++;
                c->held += r->client_counted;
                c->queued += r->flow != NULL;
                c->bytes += r->held_bytes;
            }
        } else if (r->client_counted || r->held_bytes) {
            return ab_audit_bad(why, cap,
                                "request %llu is counted for a client it has no record of",
                                (unsigned long long)r->bid);
        }
        if (r->service) {
            s_tally_t *s = s_tally(t, r->service, "service");
            if (s)
                s->holds += r->holds_service;
        }
        if (r->worker) {
            s_tally_t *w = s_tally(t, r->worker, "worker");
            if (w)
                w->reqs++;
        }
    }
    t->bytes = bytes;
    t->in_heap = in_heap;
    return 0;
}

/* The broker's own totals against its requests' (after the lists: a list
 * naming a freed request says more than the count it upsets). */
static int s_totals(ab_broker_t *b, const s_tallies_t *t, char *why, size_t cap)
{
    if (t->bytes != b->held_bytes)
        return ab_audit_bad(why, cap,
                            "the broker counts %llu held payload bytes, its requests %llu",
                            (unsigned long long)b->held_bytes, (unsigned long long)t->bytes);
    if (t->in_heap != b->deadlines.len)
        return ab_audit_bad(why, cap, "the deadline heap holds %zu entries, %zu requests are in it",
                            b->deadlines.len, t->in_heap);
    return 0;
}

/* Each peer's lists of its requests name pending requests it owns; its
 * connection is tallied to its client record. */
static int s_walk_peers(ab_broker_t *b, s_tallies_t *t, char *why, size_t cap)
{
    size_t limit = ab_idmap_size(&b->pending) + 1;
    for (ab_peer_t *p = zhashx_first(b->peers); p; p = zhashx_next(b->peers)) {
        if (p->client) {
            s_tally_t *c = s_tally(t, p->client, "client record");
            if (c)
                c->conns++;
        }
        size_t k = 0;
        ab_list_t *n, *tmp;
        AB_LIST_FOREACH_SAFE(n, tmp, &p->reqs) {
            ab_req_t *r = ab_list_data(n, ab_req_t, clink);
            if (++k > limit)
                return ab_audit_bad(why, cap, "a peer's list of requests does not end");
            if (ab_idmap_get(&b->pending, r->bid) != r || r->owner != p)
                return ab_audit_bad(why, cap, "a peer lists request %llu, which is %s",
                                    (unsigned long long)r->bid,
                                    r->owner != p ? "not its own" : "not pending");
        }
        for (size_t i = 0; i < p->reqs_by_id.cap; i++) {
            if (!p->reqs_by_id.keys[i])
                continue;
            const ab_req_t *r = p->reqs_by_id.vals[i];
            if (ab_idmap_get(&b->pending, r->bid) != r || r->owner != p)
                return ab_audit_bad(why, cap,
                                    "a peer's index of client ids names request %llu, which "
                                    "is %s",
                                    (unsigned long long)r->bid,
                                    r->owner != p ? "not its own" : "not pending");
        }
    }
    return 0;
}

static int s_walk_clients(ab_broker_t *b, s_tallies_t *t, char *why, size_t cap)
{
    for (ab_client_rec_t *c = zhashx_first(b->clients); c; c = zhashx_next(b->clients)) {
        const s_tally_t *x = s_of(t, c);
        if (c->held != x->held || c->queued != x->queued || c->held_bytes != x->bytes ||
            c->conns != x->conns || c->refs != x->conns + x->reqs)
            return ab_audit_bad(
                why, cap,
                "client %s counts %u held, %u queued, %llu bytes, %u connections, "
                "%u references; its requests and peers make %llu, %llu, %llu, %llu, %llu",
                c->ident, c->held, c->queued, (unsigned long long)c->held_bytes, c->conns, c->refs,
                (unsigned long long)x->held, (unsigned long long)x->queued,
                (unsigned long long)x->bytes, (unsigned long long)x->conns,
                (unsigned long long)(x->conns + x->reqs));
        s_tally_t *mark = s_tally(t, c, "client record");
        if (mark)
            mark->listed = 1;
    }
    return 0;
}

static int s_walk_services(ab_broker_t *b, s_tallies_t *t, char *why, size_t cap)
{
    size_t limit = ab_idmap_size(&b->pending) + 1;
    for (ab_service_t *s = zhashx_first(b->services); s; s = zhashx_next(b->services)) {
        if (ab_lanes_audit(b, s, why, cap) != 0)
            return -1;
        s_tally_t *mark = s_tally(t, s, "service");
        if (mark)
            mark->listed = 1;
        for (ab_worker_rec_t *w = zlistx_first(s->workers); w; w = zlistx_next(s->workers)) {
            const s_tally_t *y = s_of(t, w);
            size_t k = 0;
            ab_list_t *n, *tmp;
            AB_LIST_FOREACH_SAFE(n, tmp, &w->reqs) {
                ab_req_t *r = ab_list_data(n, ab_req_t, qlink);
                if (++k > limit)
                    return ab_audit_bad(why, cap, "service %s: a worker's list does not end",
                                        s->name);
                if (ab_idmap_get(&b->pending, r->bid) != r || r->worker != w)
                    return ab_audit_bad(
                        why, cap, "service %s: a worker lists request %llu, which is %s", s->name,
                        (unsigned long long)r->bid, r->worker != w ? "not at it" : "not pending");
            }
            if (w->in_flight != y->reqs || k != y->reqs)
                return ab_audit_bad(why, cap,
                                    "service %s: a worker counts %u in flight and lists %zu; %llu "
                                    "requests are at it",
                                    s->name, w->in_flight, k, (unsigned long long)y->reqs);
            if (w->service != s)
                return ab_audit_bad(why, cap, "service %s lists a worker of another service",
                                    s->name);
            mark = s_tally(t, w, "worker");
            if (mark)
                mark->listed = 1;
        }
        const s_tally_t *x = s_of(t, s);
        if (s->held != x->holds)
            return ab_audit_bad(why, cap, "service %s counts %u requests naming it, %llu do",
                                s->name, s->held, (unsigned long long)x->holds);
    }
    return 0;
}

int ab_broker_audit(ab_broker_t *b, char *why, size_t cap)
{
    s_tallies_t t = {.oom = 0};
    if (ab_idmap_init(&t.by_owner, 64) != 0)
        return 0;
    int rc = s_walk_requests(b, &t, why, cap);
    if (rc == 0)
        rc = s_walk_peers(b, &t, why, cap);
    if (rc == 0)
        rc = s_walk_services(b, &t, why, cap);
    if (rc == 0)
        rc = s_totals(b, &t, why, cap);
    if (rc == 0)
        rc = s_walk_clients(b, &t, why, cap);
    if (rc == 0)
        rc = ab_cache_audit(b, why, cap);
    if (rc == 0)
        rc = ab_msgs_audit(b, why, cap);
    /* Every owner a request or peer names must be one the broker lists: a
     * request pointing at a freed record is found here. */
    for (size_t i = 0; rc == 0 && i < t.by_owner.cap; i++) {
        const s_tally_t *x = t.by_owner.vals[i];
        if (t.by_owner.keys[i] && !x->listed)
            rc = ab_audit_bad(why, cap, "a request or peer names a %s the broker does not list",
                              x->kind);
    }
    for (size_t i = 0; i < t.by_owner.cap; i++)
        if (t.by_owner.keys[i])
            free(t.by_owner.vals[i]);
    ab_idmap_fini(&t.by_owner);
    return t.oom ? 0 : rc;
}

static void s_tick(ab_broker_t *b, int64_t now)
{
    (void)now;
    ab_audit_run(b, "self-check");
}

int ab_audit_init(ab_broker_t *b)
{
    if (b->cfg->self_check_ms <= 0)
        return 0;
    return ab_broker_every(b, b->cfg->self_check_ms, s_tick) < 0 ? -1 : 0;
}

void ab_audit_run(ab_broker_t *b, const char *when)
{
    char why[512];
    if (ab_broker_audit(b, why, sizeof why) == 0)
        return;
    if (!b->audit_failed) /* the first difference says most; the rest follow from it */
        AB_ERROR("%s: the broker's bookkeeping is inconsistent: %s (a bug: please report it)", when,
                 why);
    b->audit_failed++;
}
