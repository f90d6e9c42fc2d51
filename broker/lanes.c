/*
 * lanes.c - priority lanes and per-client fair queuing (see lanes.h).
 *
 * Deficit round robin with a cost of one per request: a flow at the head of
 * its lane's ring whose deficit is spent is given its client's weight, pays
 * one per request dispatched, and goes to the ring's tail when it has paid
 * its weight. One agent with 1,000 queued requests and another with one
 * therefore alternate: the single request waits one dispatch, not 1,000.
 * Costs are counted in requests, not in tokens or seconds: the broker does
 * not know a request's cost before it is answered.
 *
 * The model index (lanes.h) exists for one case: many requests of a model
 * whose workers are full ahead of a request of a model with a free slot.
 * The lanes' walk passes at most AB_LANES_SCAN of them; the model pass then
 * takes each other model's oldest request directly (issue 20: with three
 * models and 174 agents, the fast model's requests starved behind more
 * than 64 of the slow ones while its slots idled).
 */
#include "lanes.h"
#include "audit.h"
#include "broker.h"
#include "clients.h"
#include "placement.h"
#include "request.h"
#include "service.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

/* One client's requests in one lane of one service. */
typedef struct ab_flow {
    ab_list_t reqs;   /* its queued requests (ab_req_t.qlink), FIFO */
    ab_list_t ring;   /* in the lane's ring while it has requests (always) */
    uint32_t n;       /* requests in reqs */
    int32_t deficit;  /* requests it may still send in its current turn */
    ab_client_rec_t *crec;
} ab_flow_t;

/* One model's queued requests in one service. */
struct ab_mqueue {
    ab_list_t reqs[AB_LANES]; /* by lane (ab_req_t.mlink), oldest first */
    ab_list_t ring;           /* on the service's models.ring */
    uint32_t n;               /* requests in reqs */
    uint32_t full;            /* the dispatch pass that found its workers full */
    char model[];             /* its key in the index */
};

/* --- wait histogram: log-linear, 8 sub-buckets per power of two (about 6%) -- */
#define W_SUB_BITS 3
#define W_SUB (1u << W_SUB_BITS)
#define W_MAX_BITS 40 /* 2^40 us: 12 days, far past any deadline */
#define W_BUCKETS ((W_MAX_BITS - W_SUB_BITS + 1) * W_SUB)

struct ab_lanes_wait {
    uint64_t total;
    uint32_t counts[W_BUCKETS]; /* saturating: 4 G samples per bucket */
};

static unsigned s_wbucket(uint64_t v)
{
    if (v < W_SUB)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    if (msb >= W_MAX_BITS)
        return W_BUCKETS - 1;
    unsigned sub = (unsigned)(v >> (msb - W_SUB_BITS)) & (W_SUB - 1);
    return (msb - W_SUB_BITS + 1) * W_SUB + sub;
}

static uint64_t s_wbucket_high(unsigned i)
{
    if (i < W_SUB)
        return i;
    unsigned msb = i / W_SUB + W_SUB_BITS - 1, sub = i % W_SUB;
    return ((uint64_t)(W_SUB + sub + 1) << (msb - W_SUB_BITS)) - 1;
}

static void s_wait_record(ab_lane_t *l, uint64_t us)
{
    if (!l->wait && !(l->wait = calloc(1, sizeof *l->wait)))
        return; /* a sample lost, nothing else */
    uint32_t *c = &l->wait->counts[s_wbucket(us)];
    if (*c != UINT32_MAX)
        (*c)++;
    l->wait->total++;
}

uint64_t ab_lanes_wait_count(const ab_lane_t *l)
{
    return l->wait ? l->wait->total : 0;
}

uint64_t ab_lanes_wait_pct(const ab_lane_t *l, double p)
{
    if (!l->wait || !l->wait->total)
        return 0;
    uint64_t want = (uint64_t)((double)l->wait->total * p / 100.0 + 0.999999), seen = 0;
    if (want == 0)
        want = 1;
    for (unsigned i = 0; i < W_BUCKETS; i++)
        if ((seen += l->wait->counts[i]) >= want)
            return s_wbucket_high(i);
    return s_wbucket_high(W_BUCKETS - 1);
}

/* --- names ------------------------------------------------------------------ */
int ab_lane_of(uint32_t priority)
{
    if (priority >= 3)
        return AB_LANE_INTERACTIVE;
    return priority == 1 ? AB_LANE_BATCH : AB_LANE_NORMAL;
}

const char *ab_lane_name(int lane)
{
    static const char *const names[AB_LANES] = {"interactive", "normal", "batch"};
    return lane >= 0 && lane < AB_LANES ? names[lane] : "?";
}

/* --- flows ------------------------------------------------------------------- */
static ab_flow_t *s_flow_get(ab_lane_t *l, ab_client_rec_t *c, int front)
{
    ab_flow_t *f = ab_idmap_get(&l->flows, c->id);
    if (f)
        return f;
    if (!(f = calloc(1, sizeof *f)))
        return NULL;
    if (ab_idmap_put(&l->flows, c->id, f) != 0) {
        free(f);
        return NULL;
    }
    f->crec = c;
    if (front)
        ab_list_insert_head(&l->ring, &f->ring);
    else
        ab_list_insert_tail(&l->ring, &f->ring);
    return f;
}

/* F has no request left: off the ring and the index, freed. */
static void s_flow_free(ab_lane_t *l, ab_flow_t *f)
{
    ab_list_remove(&f->ring);
    ab_idmap_del(&l->flows, f->crec->id);
    free(f);
}

/* --- the model index ------------------------------------------------------------ */
static ab_mqueue_t *s_mqueue_get(ab_models_t *m, const char *model)
{
    if (!m->index && !(m->index = zhashx_new()))
        return NULL;
    ab_mqueue_t *mq = zhashx_lookup(m->index, model);
    if (mq)
        return mq;
    size_t len = strlen(model);
    if (!(mq = calloc(1, sizeof *mq + len + 1)))
        return NULL;
    memcpy(mq->model, model, len + 1);
    if (zhashx_insert(m->index, mq->model, mq) != 0) {
        free(mq);
        return NULL;
    }
    ab_list_insert_tail(&m->ring, &mq->ring);
    return mq;
}

/* R (naming a model) joins its model's queue. 0, or -1 out of memory. */
static int s_model_put(ab_service_t *s, ab_req_t *r, int front)
{
    if (!r->route || !r->route->model[0])
        return 0;
    ab_mqueue_t *mq = s_mqueue_get(&s->models, r->route->model);
    if (!mq)
        return -1;
    if (front)
        ab_list_insert_head(&mq->reqs[r->lane], &r->mlink);
    else
        ab_list_insert_tail(&mq->reqs[r->lane], &r->mlink);
    mq->n++;
    r->mq = mq;
    return 0;
}

/* R leaves its model's queue, freed when it was the last. */
static void s_model_unlink(ab_service_t *s, ab_req_t *r)
{
    ab_mqueue_t *mq = r->mq;
    if (!mq)
        return;
    ab_list_remove(&r->mlink);
    r->mq = NULL;
    if (--mq->n)
        return;
    ab_list_remove(&mq->ring);
    zhashx_delete(s->models.index, mq->model);
    free(mq);
}

/* The first request of MQ, by lane, not passed over in pass MARK; NULL
 * when none among the first AB_LANES_SCAN. */
static ab_req_t *s_model_first(ab_mqueue_t *mq, uint32_t mark)
{
    int passed = 0;
    for (int i = 0; i < AB_LANES; i++)
        for (ab_list_t *q = ab_list_first(&mq->reqs[i]); q; q = ab_list_next(&mq->reqs[i], q)) {
            ab_req_t *r = ab_list_data(q, ab_req_t, mlink);
            if (r->skip_mark != mark)
                return r;
            if (++passed >= AB_LANES_SCAN)
                return NULL;
        }
    return NULL;
}

/* The model pass (lanes.h): each model's oldest request in ring order,
 * skipping the models found full in this pass. A model with nothing left
 * to offer is marked full, so each call looks at it once. */
static ab_req_t *s_model_next(ab_service_t *s, uint32_t mark)
{
    int seen = 0;
    for (ab_list_t *ml = ab_list_first(&s->models.ring); ml && seen < AB_LANES_SCAN;
         ml = ab_list_next(&s->models.ring, ml), seen++) {
        ab_mqueue_t *mq = ab_list_data(ml, ab_mqueue_t, ring);
        if (mq->full == mark)
            continue;
        ab_req_t *r = s_model_first(mq, mark);
        if (r)
            return r;
        mq->full = mark;
    }
    return NULL;
}

size_t ab_lanes_models(const ab_service_t *s, const char **names, uint32_t *queued, size_t max)
{
    size_t n = 0;
    for (ab_list_t *ml = ab_list_first(&s->models.ring); ml && n < max;
         ml = ab_list_next(&s->models.ring, ml), n++) {
        const ab_mqueue_t *mq = ab_list_data(ml, ab_mqueue_t, ring);
        names[n] = mq->model;
        queued[n] = mq->n;
    }
    return n;
}

void ab_lanes_skip(ab_req_t *r, uint32_t mark)
{
    r->skip_mark = mark;
    const struct ab_route *rt = r->route;
    if (r->mq && !rt->worker[0] && !rt->avoid && !r->fwd)
        r->mq->full = mark;
}

/* 1 when R was passed over in pass MARK, itself or by its model. */
static int s_passed(const ab_req_t *r, uint32_t mark)
{
    return r->skip_mark == mark || (r->mq && r->mq->full == mark);
}

int ab_lanes_put(ab_service_t *s, ab_req_t *r, int front)
{
    ab_lane_t *l = &s->lanes[r->lane];
    if (s_model_put(s, r, front) != 0)
        return -1;
    ab_flow_t *f = s_flow_get(l, r->crec, front);
    if (!f) {
        s_model_unlink(s, r);
        return -1;
    }
    if (front) {
        ab_list_insert_head(&f->reqs, &r->qlink);
        ab_list_remove(&f->ring); /* taken back from a worker: it goes first */
        ab_list_insert_head(&l->ring, &f->ring);
    } else {
        ab_list_insert_tail(&f->reqs, &r->qlink);
    }
    f->n++;
    r->flow = f;
    r->state = AB_REQ_QUEUED;
    r->enq_us = r->enq_us ? r->enq_us : ab_now_us();
    l->depth++;
    s->q_len++;
    r->crec->queued++;
    return 0;
}

/* R out of its flow (freed when empty); the counts follow. */
static void s_unlink(ab_service_t *s, ab_req_t *r)
{
    ab_lane_t *l = &s->lanes[r->lane];
    ab_flow_t *f = r->flow;
    ab_list_remove(&r->qlink);
    r->flow = NULL;
    s_model_unlink(s, r);
    l->depth--;
    s->q_len--;
    if (r->crec->queued)
        r->crec->queued--;
    if (--f->n == 0)
        s_flow_free(l, f);
}

void ab_lanes_remove(ab_service_t *s, ab_req_t *r)
{
    if (!r->flow)
        return;
    s->lanes[r->lane].expired++;
    s_unlink(s, r);
}

void ab_lanes_take(ab_service_t *s, ab_req_t *r, uint64_t now_us)
{
    ab_lane_t *l = &s->lanes[r->lane];
    ab_flow_t *f = r->flow;
    if (f->deficit <= 0) /* its turn starts */
        f->deficit += (int32_t)r->crec->weight;
    f->deficit--;
    if (f->n > 1 && f->deficit <= 0) { /* turn used up: the next flow's */
        ab_list_remove(&f->ring);
        ab_list_insert_tail(&l->ring, &f->ring);
    }
    s_wait_record(l, now_us > r->enq_us ? now_us - r->enq_us : 0);
    r->enq_us = 0;
    if (r->mq) { /* its model had a turn: the model pass offers the others first */
        ab_list_remove(&r->mq->ring);
        ab_list_insert_tail(&s->models.ring, &r->mq->ring);
    }
    s_unlink(s, r); /* may free F */
    for (int i = 0; i < AB_LANES; i++)
        if (i != r->lane && s->lanes[i].depth)
            s->lanes[i].skipped++;
    l->skipped = 0;
    l->dispatched++;
}

void ab_lanes_direct(ab_service_t *s, int lane)
{
    ab_lane_t *l = &s->lanes[lane];
    s_wait_record(l, 0);
    for (int i = 0; i < AB_LANES; i++)
        if (i != lane && s->lanes[i].depth)
            s->lanes[i].skipped++;
    l->skipped = 0;
    l->dispatched++;
}

/* --- which request next ---------------------------------------------------------- */
/* 1 when lower lane I with work is owed the next dispatch: it has seen
 * "every - 1" dispatches go elsewhere, where 1 of every "every" is its
 * share (ceil(100 / pct)). */
static int s_owed(const ab_broker_t *b, const ab_service_t *s, int i)
{
    long pct = i == AB_LANE_NORMAL ? b->cfg->lane_normal_min_pct : b->cfg->lane_batch_min_pct;
    if (pct <= 0)
        return 0;
    uint32_t every = (uint32_t)((100 + pct - 1) / pct);
    return s->lanes[i].depth && s->lanes[i].skipped + 1 >= every;
}

/* The lanes in the order they are offered the next dispatch: owed lower
 * lanes first (the lowest first), then from interactive down. */
static int s_order(const ab_broker_t *b, const ab_service_t *s, int order[AB_LANES])
{
    int n = 0, owed[AB_LANES] = {0};
    for (int i = AB_LANES - 1; i > AB_LANE_INTERACTIVE; i--)
        if (s_owed(b, s, i))
            order[n++] = i, owed[i] = 1;
    for (int i = 0; i < AB_LANES; i++)
        if (!owed[i] && s->lanes[i].depth)
            order[n++] = i;
    return n;
}

ab_req_t *ab_lanes_next(const ab_broker_t *b, ab_service_t *s, uint32_t mark)
{
    int order[AB_LANES], n = s_order(b, s, order), passed = 0;
    for (int k = 0; k < n; k++) {
        ab_lane_t *l = &s->lanes[order[k]];
        for (ab_list_t *fl = ab_list_first(&l->ring); fl; fl = ab_list_next(&l->ring, fl)) {
            ab_flow_t *f = ab_list_data(fl, ab_flow_t, ring);
            for (ab_list_t *q = ab_list_first(&f->reqs); q; q = ab_list_next(&f->reqs, q)) {
                ab_req_t *r = ab_list_data(q, ab_req_t, qlink);
                if (!s_passed(r, mark))
                    return r;
                if (++passed >= AB_LANES_SCAN)
                    return s_model_next(s, mark);
            }
        }
    }
    return NULL;
}

ab_req_t *ab_lanes_any(ab_service_t *s)
{
    for (int i = 0; i < AB_LANES; i++) {
        ab_list_t *fl = ab_list_first(&s->lanes[i].ring);
        if (fl) {
            ab_flow_t *f = ab_list_data(fl, ab_flow_t, ring);
            return ab_list_data(ab_list_first(&f->reqs), ab_req_t, qlink);
        }
    }
    return NULL;
}

void ab_lanes_fini(ab_service_t *s)
{
    for (int i = 0; i < AB_LANES; i++) {
        ab_lane_t *l = &s->lanes[i];
        ab_list_t *fl;
        while ((fl = ab_list_pop_head(&l->ring)))
            free(ab_list_data(fl, ab_flow_t, ring));
        ab_idmap_fini(&l->flows);
        free(l->wait);
        l->wait = NULL;
    }
    ab_list_t *ml;
    while ((ml = ab_list_pop_head(&s->models.ring)))
        free(ab_list_data(ml, ab_mqueue_t, ring));
    zhashx_destroy(&s->models.index);
}

/* --- audit (audit.h) ---------------------------------------------------------- */
/* R, found in one of S's queues, is pending and queued in S. 0 or -1 (WHY). */
static int s_audit_req(ab_broker_t *b, ab_service_t *s, const ab_req_t *r, char *why, size_t cap)
{
    if (ab_idmap_get(&b->pending, r->bid) != r)
        return ab_audit_bad(why, cap, "service %s: a queued request (bid %llu) is not pending",
                            s->name, (unsigned long long)r->bid);
    if (r->service != s || !r->flow || r->worker)
        return ab_audit_bad(
            why, cap, "service %s: queued request %llu names service %s, flow %s, worker %s",
            s->name, (unsigned long long)r->bid, r->service ? r->service->name : "none",
            r->flow ? "set" : "none", r->worker ? "set" : "none");
    return 0;
}

int ab_lanes_audit(ab_broker_t *b, ab_service_t *s, char *why, size_t cap)
{
    size_t limit = ab_idmap_size(&b->pending) + 1, total = 0;
    ab_list_t *n, *t, *rn, *rt;
    for (int i = 0; i < AB_LANES; i++) {
        ab_lane_t *l = &s->lanes[i];
        size_t depth = 0, flows = 0;
        AB_LIST_FOREACH_SAFE(n, t, &l->ring) {
            ab_flow_t *f = ab_list_data(n, ab_flow_t, ring);
            if (++flows > limit)
                return ab_audit_bad(why, cap, "service %s, lane %s: the ring of flows does not end",
                                    s->name, ab_lane_name(i));
            if (!f->crec || ab_idmap_get(&l->flows, f->crec->id) != f)
                return ab_audit_bad(why, cap,
                                    "service %s, lane %s: a flow is not in the lane's index",
                                    s->name, ab_lane_name(i));
            size_t k = 0;
            AB_LIST_FOREACH_SAFE(rn, rt, &f->reqs) {
                ab_req_t *r = ab_list_data(rn, ab_req_t, qlink);
                if (++k > limit)
                    return ab_audit_bad(why, cap, "service %s: a flow's list does not end",
                                        s->name);
                if (s_audit_req(b, s, r, why, cap) != 0)
                    return -1;
                if (r->flow != f || r->lane != i || r->crec != f->crec)
                    return ab_audit_bad(
                        why, cap,
                        "service %s, lane %s: request %llu is in a flow that is not its "
                        "own (its lane %s, %s client)",
                        s->name, ab_lane_name(i), (unsigned long long)r->bid, ab_lane_name(r->lane),
                        r->crec == f->crec ? "same" : "another");
            }
            if (k != f->n || k == 0)
                return ab_audit_bad(why, cap,
                                    "service %s, lane %s: a flow counts %u requests and lists %zu",
                                    s->name, ab_lane_name(i), f->n, k);
            depth += k;
        }
        if (flows != ab_idmap_size(&l->flows))
            return ab_audit_bad(why, cap,
                                "service %s, lane %s: %zu flows in the ring, %zu in the index",
                                s->name, ab_lane_name(i), flows, ab_idmap_size(&l->flows));
        if (depth != l->depth)
            return ab_audit_bad(why, cap,
                                "service %s, lane %s: depth %u, %zu requests in its flows", s->name,
                                ab_lane_name(i), l->depth, depth);
        total += depth;
    }
    if (total != s->q_len)
        return ab_audit_bad(why, cap, "service %s: q_len %u, %zu requests in its lanes", s->name,
                            s->q_len, total);
    size_t models = 0, in_models = 0;
    AB_LIST_FOREACH_SAFE(n, t, &s->models.ring) {
        ab_mqueue_t *mq = ab_list_data(n, ab_mqueue_t, ring);
        if (++models > limit)
            return ab_audit_bad(why, cap, "service %s: the ring of model queues does not end",
                                s->name);
        if (!s->models.index || zhashx_lookup(s->models.index, mq->model) != mq)
            return ab_audit_bad(why, cap, "service %s: model queue %s is not in the index", s->name,
                                mq->model);
        size_t k = 0;
        for (int i = 0; i < AB_LANES; i++)
            AB_LIST_FOREACH_SAFE(rn, rt, &mq->reqs[i]) {
                ab_req_t *r = ab_list_data(rn, ab_req_t, mlink);
                if (++k > limit)
                    return ab_audit_bad(why, cap, "service %s: model %s's list does not end",
                                        s->name, mq->model);
                if (s_audit_req(b, s, r, why, cap) != 0)
                    return -1;
                if (r->mq != mq || r->lane != i)
                    return ab_audit_bad(why, cap,
                                        "service %s: request %llu is in model queue %s, "
                                        "not its own",
                                        s->name, (unsigned long long)r->bid, mq->model);
            }
        if (k != mq->n || k == 0)
            return ab_audit_bad(why, cap,
                                "service %s: model queue %s counts %u requests and lists %zu",
                                s->name, mq->model, mq->n, k);
        in_models += k;
    }
    if ((s->models.index ? zhashx_size(s->models.index) : 0) != models)
        return ab_audit_bad(why, cap, "service %s: %zu model queues in the ring, %zu in the index",
                            s->name, models, s->models.index ? zhashx_size(s->models.index) : 0);
    if (in_models > total)
        return ab_audit_bad(why, cap, "service %s: %zu requests in model queues, %zu queued",
                            s->name, in_models, total);
    return 0;
}
