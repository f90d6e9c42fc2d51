/*
 * clientfuzz_peers.c - clientfuzz's library side: the client thread making
 * random API calls and checking the async contract, and the worker thread
 * answering its jobs every way a worker may (clientfuzz.c says which).
 */
#include "clientfuzz.h"

#include "agentbus.pb-c.h"
#include "compress.h"
#include "util.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

/* ==================================================================================== */
/* The client thread                                                                    */
/* ==================================================================================== */
typedef struct {
    uint64_t id;
    int ask;
} cf_call_t;

static struct {
    cf_rng_t rng;
    ab_client_t *c;
    cf_call_t calls[CF_MAX_CALLS]; /* async requests and asks started, not ended */
    int ncalls;
    int depth;      /* callbacks nested in this thread now */
    int destroying; /* inside ab_client_destroy */
    uint64_t started, finals, partials, msgs[8], dir_events, handles;
    uint64_t codes[64]; /* statuses of calls and finals, by -code */
    uint8_t buf[CF_BIG];
} C;

static void s_code(uint64_t *codes, int rc)
{
    codes[(rc < 0 ? -rc : 0) & 63]++;
}

static int s_call_find(uint64_t id)
{
    for (int i = 0; i < C.ncalls; i++)
        if (C.calls[i].id == id)
            return i;
    return -1;
}

static void s_call_add(uint64_t id, int ask)
{
    if (s_call_find(id) >= 0)
        cf_fail("ab_client_%s gave id %llu, which is still in flight",
                ask ? "ask" : "request_start", (unsigned long long)id);
    if (C.ncalls < CF_MAX_CALLS)
        C.calls[C.ncalls++] = (cf_call_t){id, ask};
    C.started++;
}

static void s_client_step_nested(ab_client_t *c);
static void s_async(ab_client_t *c);
static void s_sync(ab_client_t *c, int max_ms);

/* Every event of an async request or ask: the contract's checks. */
static void s_reply_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    atomic_fetch_add(&cf_progress[T_CLIENT], 1);
    if (arg != &C || c != C.c || !ev) {
        cf_fail("a reply callback got the wrong client, event or argument");
        return;
    }
    int i = s_call_find(ev->request_id);
    if (i < 0) {
        cf_fail("a callback (final %d, %s) for request %llu, which was never started or has "
               "ended already", ev->final, ab_status_name(ev->status),
               (unsigned long long)ev->request_id);
        return;
    }
    if ((ev->final != 0 && ev->final != 1) || (!ev->final && ev->status != AB_OK) ||
        (ev->size && !ev->data) || !ev->error_text || ev->status > 0)
        cf_fail("a malformed event for request %llu: final %d, status %d, %zu bytes at %p",
               (unsigned long long)ev->request_id, ev->final, ev->status, ev->size, ev->data);
    if (ev->size) { /* every byte is readable (ASan checks) */
        const uint8_t *d = ev->data;
        volatile uint8_t x = d[0] ^ d[ev->size - 1];
        (void)x;
    }
    if (C.destroying && (!ev->final || ev->status != AB_ESTOPPED))
        cf_fail("inside ab_client_destroy request %llu ended with final %d, %s (not STOPPED)",
               (unsigned long long)ev->request_id, ev->final, ab_status_name(ev->status));
    if (ev->final && ev->size == strlen(CF_FORGED) && !memcmp(ev->data, CF_FORGED, ev->size))
        cf_fail("call %llu ended with the answer of an agent it did not ask (%s)",
               (unsigned long long)ev->request_id, CF_FORGER);
    if (!ev->final) {
        C.partials++;
        if (C.calls[i].ask) /* only a request's reply streams */
            cf_fail("a non-final event for ask %llu: ab_client_ask's callback runs once",
                   (unsigned long long)ev->request_id);
    } else {
        C.finals++;
        s_code(C.codes, ev->status);
        C.calls[i] = C.calls[--C.ncalls];
    }
    s_client_step_nested(c);
}

static void s_check_message(const ab_message_t *m)
{
    if (!m || m->type < AB_MSG_DIRECT || m->type > AB_MSG_ERROR || !m->sender || !m->target ||
        !m->error_text || (m->size && !m->data)) {
        cf_fail("a malformed message: type %d", m ? m->type : -1);
        return;
    }
    volatile size_t n = strlen(m->sender) + strlen(m->target) + strlen(m->error_text);
    if (m->size)
        n += ((const uint8_t *)m->data)[m->size - 1];
    (void)n;
    C.msgs[m->type]++;
}

static void s_message_cb(ab_client_t *c, const ab_message_t *m, void *arg)
{
    atomic_fetch_add(&cf_progress[T_CLIENT], 1);
    if (arg != &C || c != C.c)
        cf_fail("a message callback got the wrong client or argument");
    s_check_message(m);
    if (m && m->type == AB_MSG_DIRECT && m->sender[0] && cf_chance(&C.rng, 20))
        ab_client_reply(c, m, "re", 2);
    s_client_step_nested(c);
}

static void s_check_worker_info(const ab_worker_info_t *w)
{
    volatile size_t n = strlen(w->id) + strlen(w->name) + strlen(w->service) +
                        strlen(w->health) + strlen(w->backend_state);
    for (size_t k = 0; k < w->n_labels; k++)
        n += strlen(w->label_keys[k]) + strlen(w->label_values[k]);
    (void)n;
}

static void s_dir_cb(ab_client_t *c, const ab_dir_event_t *ev, void *arg)
{
    atomic_fetch_add(&cf_progress[T_CLIENT], 1);
    if (arg != &C || c != C.c || !ev || !ev->change || !ev->worker) {
        cf_fail("a malformed directory event");
        return;
    }
    volatile size_t n = strlen(ev->change);
    (void)n;
    s_check_worker_info(ev->worker);
    C.dir_events++;
    s_client_step_nested(c);
}

static void s_client_new(void)
{
    ab_options_t *o = ab_options_new();
    if (!o) {
        cf_fail("ab_options_new failed");
        return;
    }
    ab_options_set_endpoint(o, cf_b.ep);
    ab_options_set_timeout_ms(o, 500 + (int)cf_below(&C.rng, 4000));
    if (cf_chance(&C.rng, 60))
        ab_options_set_heartbeat_ms(o, 100 + (int)cf_below(&C.rng, 2000));
    if (cf_chance(&C.rng, 30))
        ab_options_set_name(o, cf_chance(&C.rng, 80) ? "cf-agent" : "cf-other");
    if (cf_chance(&C.rng, 10))
        ab_options_set_takeover(o, 1);
    if (cf_chance(&C.rng, 20))
        ab_options_set_batching(o, 0);
    else if (cf_chance(&C.rng, 30))
        ab_options_set_batch_limits(o, 2 + cf_below(&C.rng, 100), 256 + cf_below(&C.rng, 70000),
                                    cf_below(&C.rng, 5000));
    if (cf_chance(&C.rng, 40))
        ab_options_set_compression(o, cf_below(&C.rng, 4096), cf_below(&C.rng, 50));
    if (!cf_avoid[MV_c_small_max] && cf_chance(&C.rng, 10)) { /* below what the broker sends */
        cf_count[MV_c_small_max]++;
        ab_options_set_max_payload(o, 1000 + cf_below(&C.rng, 300000));
    }
    CF_DOING(T_CLIENT, "ab_client_new");
    int rc = ab_client_new(&C.c, o);
    ab_options_destroy(&o);
    if (rc != AB_OK) {
        cf_fail("ab_client_new: %s", ab_status_name(rc));
        return;
    }
    C.handles++;
    if (cf_chance(&C.rng, 30))
        ab_client_on_message(C.c, s_message_cb, &C);
}

static void s_client_destroy(void)
{
    if (!C.c)
        return;
    if (!cf_avoid[MV_c_stop] && cf_chance(&C.rng, 10)) {
        /* A stopped handle is good only for destroy, but other calls must
         * still keep their promises (they end with STOPPED). */
        cf_count[MV_c_stop]++;
        CF_DOING(T_CLIENT, "calls on a stopped handle");
        ab_client_stop(C.c);
        for (int i = 0; i < 3 && cf_chance(&C.rng, 60); i++) {
            s_async(C.c);
            s_sync(C.c, 200);
            int rc = ab_client_poll(C.c, 5);
            if (rc != AB_ESTOPPED)
                cf_fail("ab_client_poll on a stopped handle returned %d (%s), not STOPPED: it "
                       "handled what was waiting", rc, ab_status_name(rc));
        }
    }
    CF_DOING(T_CLIENT, "ab_client_destroy");
    C.destroying = 1;
    ab_client_destroy(&C.c);
    C.destroying = 0;
    if (C.c)
        cf_fail("ab_client_destroy did not set the handle to NULL");
    if (C.ncalls)
        cf_fail("after ab_client_destroy %d started request(s) never had their final callback "
               "(the first: %s %llu)", C.ncalls, C.calls[0].ask ? "ask" : "request",
               (unsigned long long)C.calls[0].id);
    C.ncalls = 0;
}

static size_t s_client_payload(const void **data)
{
    size_t n = cf_chance(&C.rng, 95) ? cf_size(&C.rng, 4000) : cf_size(&C.rng, CF_BIG);
    size_t at = cf_below(&C.rng, (uint32_t)(CF_BIG - n + 1));
    *data = C.buf + at;
    return n;
}

static void s_async(ab_client_t *c)
{
    if (C.ncalls >= CF_MAX_CALLS)
        return;
    const void *data;
    size_t n = s_client_payload(&data);
    ab_request_opts_t o = AB_REQUEST_OPTS_INIT;
    o.timeout_ms = cf_chance(&C.rng, 20) ? 0 : 50 + (int)cf_below(&C.rng, 3000);
    if (cf_chance(&C.rng, 20))
        o.model = "m1";
    if (cf_chance(&C.rng, 10))
        o.flags = AB_REQUEST_NON_IDEMPOTENT;
    if (cf_chance(&C.rng, 10))
        o.cache_flags = AB_CACHE_ON;
    o.priority = cf_below(&C.rng, 5);
    uint64_t id = 0;
    int nofn = cf_chance(&C.rng, 5); /* no callback: allowed, and then no events */
    CF_DOING(T_CLIENT, "ab_client_request_start");
    int rc = ab_client_request_start(c, cf_chance(&C.rng, 90) ? CF_SVC : "other", data, n, &o,
                                     nofn ? NULL : s_reply_cb, &C, &id);
    s_code(C.codes, rc);
    if (rc == AB_OK && !nofn)
        s_call_add(id, 0);
}

static void s_sync(ab_client_t *c, int max_ms)
{
    const void *data;
    size_t n = s_client_payload(&data);
    void *reply = NULL;
    size_t rn = 0;
    CF_DOING(T_CLIENT, "ab_client_request");
    int rc = ab_client_request(c, CF_SVC, data, n, 100 + (int)cf_below(&C.rng, (uint32_t)max_ms),
                               cf_chance(&C.rng, 80) ? &reply : NULL, &rn);
    s_code(C.codes, rc);
    if (rc != AB_OK && reply)
        cf_fail("ab_client_request failed (%s) but left a reply", ab_status_name(rc));
    if (reply && rn)
        ((volatile uint8_t *)reply)[rn - 1] ^= 0;
    if (reply && rn == strlen(CF_FORGED) && !memcmp(reply, CF_FORGED, rn))
        cf_fail("a synchronous request ended with the answer of an agent (%s)", CF_FORGER);
    ab_free(reply);
}

static void s_cancel_one(ab_client_t *c)
{
    if (!C.ncalls || cf_chance(&C.rng, 10)) { /* an id not in flight, or some other call */
        CF_DOING(T_CLIENT, "ab_client_cancel");
        s_code(C.codes, ab_client_cancel(c, 1 + cf_below(&C.rng, 5000)));
        return;
    }
    uint64_t id = C.calls[cf_below(&C.rng, (uint32_t)C.ncalls)].id;
    CF_DOING(T_CLIENT, "ab_client_cancel");
    int rc = ab_client_cancel(c, id);
    s_code(C.codes, rc);
    if (s_call_find(id) >= 0)
        cf_fail("ab_client_cancel(%llu) of a request in flight returned %s without its final "
               "callback", (unsigned long long)id, ab_status_name(rc));
}

/* Calls made from inside a callback (the API allows any but destroy). */
static void s_client_step_nested(ab_client_t *c)
{
    if (C.depth >= 2 || cf_avoid[MV_c_nested])
        return;
    C.depth++;
    if (C.destroying) {
        if (!cf_avoid[MV_c_destroy_start] && cf_chance(&C.rng, 10)) {
            cf_count[MV_c_destroy_start]++;
            s_async(c);
        }
    } else {
        uint32_t k = cf_below(&C.rng, 100);
        if (k < 12)
            cf_count[MV_c_nested]++;
        if (k < 6)
            s_async(c);
        else if (k < 9)
            s_cancel_one(c);
        else if (k < 11)
            ab_client_poll(c, 0);
        else if (k < 12)
            s_sync(c, 200);
    }
    C.depth--;
}

static const char *s_pick(cf_rng_t *r, const char *const *v, size_t n)
{
    return v[cf_below(r, (uint32_t)n)];
}
#define CF_PICK(r, arr) s_pick(r, arr, sizeof arr / sizeof arr[0])

/* One random API call of the client thread. */
static void s_client_step(void)
{
    static const int weights[] = {
        [MV_c_async] = 25, [MV_c_sync] = 6,    [MV_c_cancel] = 8,  [MV_c_send] = 5,
        [MV_c_send_wait] = 2, [MV_c_ask] = 5,  [MV_c_publish] = 4, [MV_c_subscribe] = 3,
        [MV_c_unsubscribe] = 2, [MV_c_discover] = 2, [MV_c_watch] = 2, [MV_c_control] = 2,
        [MV_c_recv] = 10,  [MV_c_poll] = 20,   [MV_c_cache] = 1,   [MV_c_handler] = 1,
        [MV_c_misc] = 2,   [MV_c_burst] = 1,   [MV_c_destroy] = 1,
    };
    static const char *const names[] = {"alice", "cf-agent", "~00000000000000ff", "bad name",
                                        "", "~", "~x"};
    static const char *const topics[] = {"t.a", "t.b.c", "news.eu", "bad..topic", "", "t."};
    static const char *const patterns[] = {"t.", "t.a", "news.", "bad..", "x", ""};
    static const char *const whats[] = {"stats", "workers", "agents", "bogus"};
    if (!C.c) {
        s_client_new();
        return;
    }
    ab_client_t *c = C.c;
    /* The library keeps at least the requests the fuzzer waits for. */
    if (ab_client_pending(c) < (size_t)C.ncalls)
        cf_fail("ab_client_pending is %zu, but %d started requests have not ended",
               ab_client_pending(c), C.ncalls);
    int total = 0;
    for (int i = MV_c_async; i <= MV_c_destroy; i++)
        total += cf_avoid[i] ? 0 : weights[i];
    int r = (int)cf_below(&C.rng, (uint32_t)(total ? total : 1)), mv;
    for (mv = MV_c_async; mv < MV_c_destroy; mv++) {
        r -= cf_avoid[mv] ? 0 : weights[mv];
        if (r < 0)
            break;
    }
    if (cf_avoid[mv])
        return;
    if ((mv == MV_c_destroy && cf_below(&C.rng, 8) != 0) ||
        (mv == MV_c_burst && cf_below(&C.rng, 10) != 0))
        mv = MV_c_poll; /* a destroy in about 800 calls, a burst in 1,000 */
    cf_count[mv]++;
    const void *data;
    size_t n;
    uint64_t id = 0;
    int rc = AB_OK;
    switch (mv) {
    case MV_c_async:
        s_async(c);
        return;
    case MV_c_sync:
        s_sync(c, 1400);
        return;
    case MV_c_cancel:
        s_cancel_one(c);
        return;
    case MV_c_send:
        n = s_client_payload(&data);
        CF_DOING(T_CLIENT, "ab_client_send");
        rc = ab_client_send(c, CF_PICK(&C.rng, names), data, n, (int)cf_below(&C.rng, 3), &id);
        break;
    case MV_c_send_wait: {
        int queued = 0;
        n = s_client_payload(&data);
        CF_DOING(T_CLIENT, "ab_client_send_wait");
        rc = ab_client_send_wait(c, CF_PICK(&C.rng, names), data, n, (int)cf_below(&C.rng, 2),
                                 50 + (int)cf_below(&C.rng, 250), &queued);
        break;
    }
    case MV_c_ask:
        if (C.ncalls >= CF_MAX_CALLS)
            return;
        n = s_client_payload(&data);
        CF_DOING(T_CLIENT, "ab_client_ask");
        rc = ab_client_ask(c, CF_PICK(&C.rng, names), data, n, 50 + (int)cf_below(&C.rng, 2000),
                           s_reply_cb, &C, &id);
        if (rc == AB_OK)
            s_call_add(id, 1);
        break;
    case MV_c_publish:
        n = s_client_payload(&data);
        CF_DOING(T_CLIENT, "ab_client_publish");
        rc = ab_client_publish(c, CF_PICK(&C.rng, topics), data, n, &id);
        break;
    case MV_c_subscribe:
    case MV_c_unsubscribe: {
        int t = cf_chance(&C.rng, 50) ? 0 : 50 + (int)cf_below(&C.rng, 250);
        CF_DOING(T_CLIENT, "ab_client_(un)subscribe");
        rc = mv == MV_c_subscribe ? ab_client_subscribe(c, CF_PICK(&C.rng, patterns), t)
                                  : ab_client_unsubscribe(c, CF_PICK(&C.rng, patterns), t);
        break;
    }
    case MV_c_discover: {
        static const char *const svcs[] = {CF_SVC, "*", "nosuch"};
        ab_directory_t *d = NULL;
        CF_DOING(T_CLIENT, "ab_discover");
        rc = ab_discover(c, cf_chance(&C.rng, 20) ? NULL : CF_PICK(&C.rng, svcs),
                         50 + (int)cf_below(&C.rng, 250), &d);
        if (rc == AB_OK && !d)
            cf_fail("ab_discover returned OK without a directory");
        if (d) {
            volatile size_t k = 0;
            for (size_t i = 0; i < d->n_services; i++)
                k += strlen(d->services[i].name);
            for (size_t i = 0; i < d->n_workers; i++)
                s_check_worker_info(&d->workers[i]);
            (void)k;
        }
        ab_directory_destroy(&d);
        break;
    }
    case MV_c_watch:
        CF_DOING(T_CLIENT, "ab_client_watch");
        rc = ab_client_watch(c, cf_chance(&C.rng, 80) ? s_dir_cb : NULL, &C,
                             50 + (int)cf_below(&C.rng, 250));
        break;
    case MV_c_control: {
        void *reply = NULL;
        size_t rn = 0;
        CF_DOING(T_CLIENT, "ab_client_control");
        rc = ab_client_control(c, CF_PICK(&C.rng, whats), 50 + (int)cf_below(&C.rng, 250), &reply,
                               &rn);
        ab_free(reply);
        break;
    }
    case MV_c_recv:
        for (int i = 0; i < 64; i++) {
            ab_message_t *m = NULL;
            CF_DOING(T_CLIENT, "ab_client_recv");
            rc = ab_client_recv(c, &m, 0);
            if (rc != AB_OK)
                break;
            s_check_message(m);
            if (m->type == AB_MSG_DIRECT && m->sender[0] && cf_chance(&C.rng, 20))
                ab_client_reply(c, m, "re", 2);
            ab_message_destroy(&m);
        }
        break;
    case MV_c_poll:
        CF_DOING(T_CLIENT, "ab_client_poll");
        rc = ab_client_poll(c, (int)cf_below(&C.rng, 21));
        break;
    case MV_c_cache:
        rc = ab_client_set_cache(c, cf_below(&C.rng, 20), cf_below(&C.rng, 100));
        break;
    case MV_c_handler:
        rc = ab_client_on_message(c, cf_chance(&C.rng, 50) ? s_message_cb : NULL, &C);
        break;
    case MV_c_misc: {
        int fd = -1;
        CF_DOING(T_CLIENT, "ab_client_flush");
        rc = ab_client_flush(c);
        ab_client_fd(c, &fd);
        if (ab_client_next_timeout_ms(c) < 0)
            cf_fail("ab_client_next_timeout_ms < 0");
        volatile size_t k = strlen(ab_client_last_error(c)) + (size_t)ab_client_connected(c) +
                            (size_t)ab_client_refused(c);
        (void)k;
        break;
    }
    case MV_c_burst: /* a window of requests: the call table grows, many expire at once */
        for (int i = 0, k = 100 + (int)cf_below(&C.rng, 1900); i < k; i++) {
            ab_request_opts_t o = AB_REQUEST_OPTS_INIT;
            o.timeout_ms = 50 + (int)cf_below(&C.rng, 400);
            if (C.ncalls >= CF_MAX_CALLS)
                break;
            CF_DOING(T_CLIENT, "ab_client_request_start (burst)");
            rc = ab_client_request_start(c, CF_SVC, C.buf, cf_below(&C.rng, 64), &o, s_reply_cb,
                                         &C, &id);
            if (rc == AB_OK)
                s_call_add(id, 0);
        }
        break;
    case MV_c_destroy:
        s_client_destroy();
        return;
    default:
        return;
    }
    s_code(C.codes, rc > 0 ? 0 : rc);
}

/* The recovery phase: a synchronous echo must come back right. */
static void s_client_recover(void)
{
    static uint8_t probe[900]; /* under any max payload the client may have */
    for (size_t i = 0; i < sizeof probe; i++)
        probe[i] = (uint8_t)(i * 31 + 7);
    while (atomic_load(&cf_phase) == 1 && !atomic_load(&cf_failed)) {
        atomic_fetch_add(&cf_progress[T_CLIENT], 1);
        if (!C.c) {
            s_client_new();
            continue;
        }
        if (atomic_load(&cf_client_ok)) {
            ab_client_poll(C.c, 10);
            continue;
        }
        size_t n = 1 + cf_below(&C.rng, sizeof probe);
        void *reply = NULL;
        size_t rn = 0;
        CF_DOING(T_CLIENT, "ab_client_request (recovery)");
        int rc = ab_client_request(C.c, CF_SVC, probe, n, 2000, &reply, &rn);
        if (rc == AB_OK && rn == n && memcmp(reply, probe, n) == 0)
            atomic_store(&cf_client_ok, 1);
        else if (rc == AB_OK)
            cf_fail("recovery: the echo of %zu bytes came back as %zu other bytes", n, rn);
        ab_free(reply);
    }
}

void *cf_client_main(void *arg)
{
    (void)arg;
    cf_fill(&C.rng, C.buf, CF_BIG / 2, 1);
    cf_fill(&C.rng, C.buf + CF_BIG / 2, CF_BIG / 2, 0);
    while (atomic_load(&cf_phase) == 0 && !atomic_load(&cf_failed)) {
        atomic_fetch_add(&cf_progress[T_CLIENT], 1);
        s_client_step();
    }
    s_client_recover();
    s_client_destroy();
    CF_DOING(T_CLIENT, "done");
    atomic_store(&cf_client_done, 1);
    return NULL;
}

/* ==================================================================================== */
/* The worker thread                                                                    */
/* ==================================================================================== */
static struct {
    cf_rng_t rng;
    ab_worker_t *w;
    ab_job_t *held[CF_HELD];
    int nheld;
    uint64_t jobs, cancels, handles, codes[64];
    uint8_t buf[70000];
} W;

static void s_job_check(ab_job_t *job)
{
    size_t n = 0;
    const uint8_t *d = ab_job_data(job, &n);
    if (n && !d)
        cf_fail("ab_job_data gave %zu bytes at NULL", n);
    volatile size_t k = strlen(ab_job_service(job)) + strlen(ab_job_model(job));
    if (n)
        k += d[0] + d[n - 1];
    (void)k;
}

/* Answers JOB (held or just received) in one of the ways a worker may. */
static void s_job_answer(ab_worker_t *w, ab_job_t **job, uint32_t how)
{
    size_t n = 0;
    const void *d = ab_job_data(*job, &n);
    int rc;
    if (how < 30) {
        cf_count[MV_w_reply]++;
        if (cf_chance(&W.rng, 50)) {
            n = cf_size(&W.rng, sizeof W.buf);
            d = W.buf;
        }
        rc = ab_worker_reply(w, job, d, n);
    } else if (how < 45) {
        cf_count[MV_w_stream]++;
        for (int i = 0; i < 1 + (int)cf_below(&W.rng, 3); i++)
            s_code(W.codes, ab_worker_reply_part(w, *job, W.buf, cf_size(&W.rng, sizeof W.buf)));
        rc = ab_worker_reply(w, job, d, n);
    } else if (how < 60) {
        static const int st[] = {AB_EBUSY, AB_EAPPLICATION, 7, -999, AB_OK, AB_ECANCELLED,
                                 AB_EDENIED, AB_EBACKEND};
        int status = st[cf_below(&W.rng, 8)];
        const char *text = cf_chance(&W.rng, 50) ? "no" : NULL;
        if (!cf_avoid[MV_w_fail_begun] && cf_chance(&W.rng, 40)) {
            /* the work had begun: the ERROR says so (FLAG_NON_IDEMPOTENT) */
            cf_count[MV_w_fail_begun]++;
            rc = ab_worker_fail_begun(w, job, status, text);
        } else {
            cf_count[MV_w_fail]++;
            rc = ab_worker_fail(w, job, status, text);
        }
    } else {
        cf_count[MV_w_drop]++;
        ab_job_destroy(job);
        rc = AB_OK;
    }
    s_code(W.codes, rc);
    if (*job)
        cf_fail("a job was left set after its answer");
}

static void s_job_fn(ab_worker_t *w, ab_job_t *job, void *arg)
{
    atomic_fetch_add(&cf_progress[T_WORKER], 1);
    if (arg != &W || w != W.w || !job) {
        cf_fail("a job callback got the wrong worker, job or argument");
        return;
    }
    W.jobs++;
    s_job_check(job);
    if (atomic_load(&cf_phase) != 0) { /* recovery: echo */
        size_t n = 0;
        const void *d = ab_job_data(job, &n);
        s_code(W.codes, ab_worker_reply(w, &job, d, n));
        return;
    }
    uint32_t how = cf_below(&W.rng, 100);
    if (how < 70 || W.nheld >= CF_HELD || cf_avoid[MV_w_hold]) {
        s_job_answer(w, &job, how % 70);
        return;
    }
    cf_count[MV_w_hold]++;
    W.held[W.nheld++] = job;
}

static void s_cancel_fn(ab_worker_t *w, uint64_t id, int why, void *arg)
{
    atomic_fetch_add(&cf_progress[T_WORKER], 1);
    if (arg != &W || w != W.w || (why != AB_EDEADLINE && why != AB_ECANCELLED))
        cf_fail("a cancel callback got the wrong worker or argument, or why %d", why);
    W.cancels++;
    for (int i = 0; i < W.nheld; i++)
        if (ab_job_id(W.held[i]) == id) {
            if (cf_chance(&W.rng, 80)) {
                s_code(W.codes, ab_worker_fail(w, &W.held[i], AB_ECANCELLED, "cancelled"));
                W.held[i] = W.held[--W.nheld];
            }
            return;
        }
    cf_fail("the cancel callback named job %llu, which the application does not hold",
           (unsigned long long)id);
}

static void s_worker_new(void)
{
    ab_options_t *o = ab_options_new();
    if (!o) {
        cf_fail("ab_options_new failed");
        return;
    }
    ab_options_set_endpoint(o, cf_b.ep);
    if (cf_chance(&W.rng, 70))
        ab_options_set_heartbeat_ms(o, 100 + (int)cf_below(&W.rng, 2000));
    if (cf_chance(&W.rng, 20))
        ab_options_set_batching(o, 0);
    if (cf_chance(&W.rng, 50))
        ab_options_set_compression(o, cf_below(&W.rng, 2048), cf_below(&W.rng, 30));
    CF_DOING(T_WORKER, "ab_worker_new");
    int rc = ab_worker_new(&W.w, o, CF_SVC, 1 + cf_below(&W.rng, 16));
    ab_options_destroy(&o);
    if (rc != AB_OK) {
        cf_fail("ab_worker_new: %s", ab_status_name(rc));
        return;
    }
    W.handles++;
    if (cf_chance(&W.rng, 50))
        ab_worker_set_label(W.w, "model", "m1");
    if (cf_chance(&W.rng, 70))
        ab_worker_set_cancel_handler(W.w, s_cancel_fn, &W);
}

/* The jobs the application holds go (after the worker, now and then:
 * ab_job_destroy is safe then too). */
static void s_held_free(void)
{
    for (int i = 0; i < W.nheld; i++) {
        uint32_t k = cf_below(&W.rng, 10);
        if (k == 0 && !W.w) /* no handle: AB_EINVAL, and the job is freed all the same */
            ab_worker_reply(NULL, &W.held[i], "x", 1);
        else if (k == 1 && !W.w)
            ab_worker_fail(NULL, &W.held[i], AB_EBUSY, NULL);
        else
            ab_job_destroy(&W.held[i]);
        if (W.held[i])
            cf_fail("a held job was left set after its end");
    }
    W.nheld = 0;
}

static void s_worker_destroy(void)
{
    if (!W.w)
        return;
    int before = cf_chance(&W.rng, 40);
    if (before)
        s_held_free();
    if (!cf_avoid[MV_w_stop] && cf_chance(&W.rng, 10)) { /* stopped first: polls end at once */
        cf_count[MV_w_stop]++;
        ab_worker_stop(W.w);
        int rc = ab_worker_poll(W.w, 10, s_job_fn, &W);
        if (rc != AB_ESTOPPED)
            cf_fail("ab_worker_poll on a stopped worker returned %d (%s), not STOPPED: it "
                   "handed out the jobs that were waiting", rc, ab_status_name(rc));
    } else if (cf_chance(&W.rng, 20)) { /* a graceful stop first */
        CF_DOING(T_WORKER, "ab_worker_shutdown");
        ab_worker_shutdown(W.w, (int)cf_below(&W.rng, 300));
        int64_t end = ab_now_ms() + 3000;
        int rc = 0;
        while (rc != AB_ESTOPPED && ab_now_ms() < end)
            rc = ab_worker_poll(W.w, 10, s_job_fn, &W);
        if (rc != AB_ESTOPPED)
            cf_fail("ab_worker_shutdown: the worker did not stop within 3 s (last poll %s)",
                   ab_status_name(rc));
        if (W.nheld && !before)
            s_held_free();
    }
    CF_DOING(T_WORKER, "ab_worker_destroy");
    ab_worker_destroy(&W.w);
    if (W.w)
        cf_fail("ab_worker_destroy did not set the handle to NULL");
    s_held_free();
}

static void s_worker_step(void)
{
    if (!W.w) {
        s_worker_new();
        return;
    }
    int rc;
    if (cf_chance(&W.rng, 20)) {
        ab_job_t *job = NULL;
        CF_DOING(T_WORKER, "ab_worker_recv");
        rc = ab_worker_recv(W.w, &job, (int)cf_below(&W.rng, 11));
        if ((rc == AB_OK) != (job != NULL))
            cf_fail("ab_worker_recv returned %s with a job %p", ab_status_name(rc), (void *)job);
        if (job)
            s_job_fn(W.w, job, &W);
        rc = rc == AB_ETIMEOUT ? 0 : rc;
    } else {
        CF_DOING(T_WORKER, "ab_worker_poll");
        rc = ab_worker_poll(W.w, 10, s_job_fn, &W);
    }
    if (rc < 0)
        s_code(W.codes, rc);
    if (rc == AB_ESTOPPED)
        cf_fail("ab_worker_poll returned STOPPED on a worker nobody stopped");
    if (W.nheld && !cf_avoid[MV_w_late] && cf_chance(&W.rng, 5)) {
        int i = (int)cf_below(&W.rng, (uint32_t)W.nheld);
        cf_count[MV_w_late]++;
        CF_DOING(T_WORKER, "late answer");
        if (cf_chance(&W.rng, 20)) {
            s_code(W.codes, ab_worker_reply_part(W.w, W.held[i], W.buf, 100));
        } else {
            s_job_answer(W.w, &W.held[i], cf_below(&W.rng, 70));
            W.held[i] = W.held[--W.nheld];
        }
    }
    if (!cf_avoid[MV_w_capacity] && cf_below(&W.rng, 300) == 0) {
        cf_count[MV_w_capacity]++;
        s_code(W.codes, ab_worker_set_capacity(W.w, 1 + cf_below(&W.rng, 16)));
        uint8_t st[600];
        size_t sn = cf_below(&W.rng, sizeof st);
        cf_fill(&W.rng, st, sn, 0); /* not an InferenceState: the library only passes it on */
        s_code(W.codes, ab_worker_set_inference_state(W.w, sn ? st : NULL, sn));
        ab_worker_set_label(W.w, cf_chance(&W.rng, 50) ? "gpu" : "model", "1");
        ab_worker_set_backend_state(W.w, cf_chance(&W.rng, 50) ? "ok" : "degraded: fuzz");
        volatile int k = ab_worker_has_input(W.w) + ab_worker_connected(W.w);
        (void)k;
        ab_worker_flush(W.w);
    }
    if (!cf_avoid[MV_w_destroy] && cf_below(&W.rng, 500) == 0) {
        cf_count[MV_w_destroy]++;
        s_worker_destroy();
    }
}

void *cf_worker_main(void *arg)
{
    (void)arg;
    cf_fill(&W.rng, W.buf, sizeof W.buf, 1);
    while (atomic_load(&cf_phase) == 0 && !atomic_load(&cf_failed)) {
        atomic_fetch_add(&cf_progress[T_WORKER], 1);
        s_worker_step();
    }
    s_held_free(); /* recovery: what it held is dropped, the rest echoed */
    while (atomic_load(&cf_phase) == 1 && !atomic_load(&cf_failed)) {
        atomic_fetch_add(&cf_progress[T_WORKER], 1);
        if (!W.w) {
            s_worker_new();
            continue;
        }
        CF_DOING(T_WORKER, "ab_worker_poll (recovery)");
        int rc = ab_worker_poll(W.w, 10, s_job_fn, &W);
        if (rc > 0)
            atomic_fetch_add(&cf_worker_rec_jobs, rc);
        atomic_store(&cf_worker_connected, ab_worker_connected(W.w));
    }
    CF_DOING(T_WORKER, "ab_worker_destroy");
    ab_worker_destroy(&W.w);
    CF_DOING(T_WORKER, "done");
    atomic_store(&cf_worker_done, 1);
    return NULL;
}

/* ==================================================================================== */
/* Seeds and report                                                                     */
/* ==================================================================================== */
void cf_peers_seed(uint64_t seed)
{
    cf_seed(&C.rng, seed, 2);
    cf_seed(&W.rng, seed, 3);
}

static void s_print_codes(const char *what, const uint64_t *codes)
{
    printf("clientfuzz: %s:", what);
    for (int i = 0; i < 64; i++)
        if (codes[i])
            printf(" %s %llu", ab_status_name(-i), (unsigned long long)codes[i]);
    printf("\n");
}

void cf_peers_report(void)
{
    printf("clientfuzz: client: %llu handles, %llu async started, %llu finals, %llu partials, "
           "%llu directory events; messages: direct %llu topic %llu receipt "
           "%llu gap %llu error %llu\n",
           (unsigned long long)C.handles, (unsigned long long)C.started,
           (unsigned long long)C.finals, (unsigned long long)C.partials,
           (unsigned long long)C.dir_events,
           (unsigned long long)C.msgs[1], (unsigned long long)C.msgs[2],
           (unsigned long long)C.msgs[3], (unsigned long long)C.msgs[4],
           (unsigned long long)C.msgs[5]);
    s_print_codes("client statuses (calls and finals)", C.codes);
    printf("clientfuzz: worker: %llu handles, %llu jobs, %llu cancels\n",
           (unsigned long long)W.handles, (unsigned long long)W.jobs,
           (unsigned long long)W.cancels);
    s_print_codes("worker statuses", W.codes);
}
