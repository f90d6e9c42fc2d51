/*
 * test_client_payload.c - what a client with a max payload under the
 * broker's gets, and the status a worker's failure carries, against a real
 * broker (found by a library user's trial, 2026-12-08):
 *   batch_burst   50 echoes of 100 B to a client whose max payload is
 *                 1000 B: the broker answers them in BATCHes larger than
 *                 1000 B, whose entries are each small. Every one is
 *                 answered (before: the library dropped each BATCH whose
 *                 body passed the max payload, unseen, and 48 of the 50
 *                 calls waited for their deadline);
 *   answer_over   a reply of 20,000 B to a client that takes 10,000 fails
 *                 AB_EPAYLOADSIZE at once, and a streamed chunk over it
 *                 ends its call the same way and cancels the request at the
 *                 worker (before: both dropped unseen, the call waited for
 *                 its deadline and failed AB_ETIMEOUT);
 *   answer_over_lz4 the same when the answers come lz4-compressed (small,
 *                 declaring 20,000 B): AB_EPAYLOADSIZE too (before:
 *                 AB_EMALFORMED, "compressed payload is corrupt");
 *   request_over  a request of 20,000 B to a worker that takes 10,000 is
 *                 answered AB_EMALFORMED at once and the worker's credit
 *                 comes back (before: dropped unseen by the worker, the
 *                 client waited for the deadline, the credit held);
 *   max_unbounded a max payload of SIZE_MAX ("no bound") takes a reply of
 *                 200 KB (before: ZMQ_MAXMSGSIZE, the max payload plus
 *                 68 KiB, wrapped around to 68 KiB, and the reply cost the
 *                 connection: AB_EDISCONNECTED);
 *   fail_status   ab_worker_fail with a status that is not an AB_E* code
 *                 (-999, 12345) reaches the client as AB_EAPPLICATION, as
 *                 agentbus.h promises (before: -999 arrived as INTERNAL).
 * Each "at once" is told from "at the deadline" by the status, not by the
 * clock: deadlines are 20-30 s, so that a loaded machine does not fail them
 * (the times are printed).
 */
#include "agentbus.h"
#include "harness.h"
#include "test.h"
#include "util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static ab_client_t *s_client(int port, size_t max_payload)
{
    ab_options_t *o = ab_options_new();
    REQUIRE(o != NULL);
    REQUIRE(ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
    REQUIRE(ab_options_set_max_payload(o, max_payload) == AB_OK);
    ab_client_t *c = NULL;
    REQUIRE(ab_client_new(&c, o) == AB_OK);
    ab_options_destroy(&o);
    return c;
}

/* --- batch_burst ---------------------------------------------------------- */

static void s_count_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    int *n = arg;
    if (ev->final)
        n[ev->status == AB_OK ? 0 : 1]++;
}

static void s_batch_burst(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    th_worker(port, "pl", NULL);
    ab_client_t *c = s_client(port, 1000);
    REQUIRE(th_wait_workers(c, "pl", 1, 10000) == 0);
    CHECK_EQ(ab_client_request(c, "pl", "hi", 2, 5000, NULL, NULL), AB_OK);
    char p[100];
    memset(p, 'x', sizeof p);
    int n[2] = {0, 0};
    for (int i = 0; i < 50; i++)
        REQUIRE(ab_client_request_start(c, "pl", p, sizeof p,
                                        &(ab_request_opts_t){.timeout_ms = 20000}, s_count_cb, n,
                                        NULL) == AB_OK);
    int64_t t0 = ab_now_ms();
    while (n[0] + n[1] < 50 && ab_now_ms() - t0 < 25000)
        ab_client_poll(c, 50);
    printf("batch_burst: %d answered, %d failed in %lld ms\n", n[0], n[1],
           (long long)(ab_now_ms() - t0));
    CHECK_EQ(n[0], 50);
    CHECK_EQ(n[1], 0);
    ab_client_destroy(&c);
}

/* --- a worker in a thread: answers by the request's first byte ------------ */

typedef struct {
    int port;
    atomic_int stop, ready, cancels;
} s_wk_t;

static ab_job_t *s_held; /* the job streaming, until cancelled */

static void s_cancel(ab_worker_t *w, uint64_t id, int why, void *arg)
{
    s_wk_t *k = arg;
    (void)why;
    if (s_held && ab_job_id(s_held) == id) {
        ab_worker_fail(w, &s_held, AB_ECANCELLED, "cancelled");
        atomic_fetch_add(&k->cancels, 1);
    }
}

static void s_job(ab_worker_t *w, ab_job_t *job, void *arg)
{
    (void)arg;
    size_t n = 0;
    const char *d = ab_job_data(job, &n);
    static char big[20000];
    if (n && d[0] == 'B') { /* a reply over the client's max payload */
        ab_worker_reply(w, &job, big, sizeof big);
    } else if (n && d[0] == 'S') { /* a chunk over it, then nothing until cancelled */
        ab_worker_reply_part(w, job, big, sizeof big);
        if (s_held)
            ab_job_destroy(&s_held);
        s_held = job;
    } else if (n && d[0] == 'F' && n < 32) { /* F<status>; the payload has no NUL */
        char num[32];
        memcpy(num, d + 1, n - 1);
        num[n - 1] = '\0';
        ab_worker_fail(w, &job, atoi(num), "failed on purpose");
    } else {
        ab_worker_reply(w, &job, d, n);
    }
}

static void *s_wk_main(void *arg)
{
    s_wk_t *k = arg;
    ab_options_t *o = ab_options_new();
    REQUIRE(o != NULL && ab_options_set_endpoint(o, th_ep(k->port)) == AB_OK);
    ab_worker_t *w = NULL;
    REQUIRE(ab_worker_new(&w, o, "pl", 8) == AB_OK);
    ab_options_destroy(&o);
    ab_worker_set_cancel_handler(w, s_cancel, k);
    int64_t end = ab_now_ms() + 60000;
    while (!atomic_load(&k->stop) && ab_now_ms() < end) {
        if (ab_worker_poll(w, 20, s_job, k) < 0)
            break;
        if (ab_worker_connected(w))
            atomic_store(&k->ready, 1);
    }
    if (s_held)
        ab_job_destroy(&s_held);
    ab_worker_destroy(&w);
    return NULL;
}

static pthread_t s_wk_start(s_wk_t *k, ab_client_t *c)
{
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, s_wk_main, k) == 0);
    REQUIRE(th_wait_workers(c, "pl", 1, 10000) == 0);
    return th;
}

/* --- answer_over ---------------------------------------------------------- */

/* LZ4: the broker compresses on loopback too (--compress-local 1), so the
 * answers arrive lz4-compressed, small, declaring 20,000 B. */
static void s_answer_over_on(int lz4)
{
    int port = th_free_port();
    if (lz4)
        th_broker(port, "--compress-local", "1", NULL);
    else
        th_broker(port, NULL);
    ab_client_t *c = s_client(port, 10000);
    s_wk_t k = {.port = port};
    pthread_t th = s_wk_start(&k, c);
    int64_t t0 = ab_now_ms();
    void *r = NULL;
    size_t n = 0;
    int rc = ab_client_request(c, "pl", "B", 1, 30000, &r, &n);
    int64_t ms = ab_now_ms() - t0;
    printf("answer_over: reply of 20000 B -> %s (%s) in %lld ms\n", ab_status_name(rc),
           ab_client_last_error(c), (long long)ms);
    CHECK_EQ(rc, AB_EPAYLOADSIZE);
    CHECK_TRUE(r == NULL);
    th_answer_t a = {0};
    REQUIRE(ab_client_request_start(c, "pl", "S", 1, &(ab_request_opts_t){.timeout_ms = 30000},
                                    th_answer_cb, &a, NULL) == AB_OK);
    t0 = ab_now_ms();
    while ((!a.finals || !atomic_load(&k.cancels)) && ab_now_ms() - t0 < 35000)
        ab_client_poll(c, 20);
    ms = ab_now_ms() - t0;
    printf("answer_over: chunk of 20000 B -> %s after %d events, %lld ms, worker cancels %d\n",
           ab_status_name(a.status), a.events, (long long)ms, atomic_load(&k.cancels));
    CHECK_EQ(a.finals, 1);
    CHECK_EQ(a.status, AB_EPAYLOADSIZE);
    CHECK_EQ(atomic_load(&k.cancels), 1);
    CHECK_EQ(ab_client_request(c, "pl", "hi", 2, 5000, NULL, NULL), AB_OK); /* still usable */
    atomic_store(&k.stop, 1);
    pthread_join(th, NULL);
    ab_client_destroy(&c);
}

static void s_answer_over(void)
{
    s_answer_over_on(0);
}

static void s_answer_over_lz4(void)
{
    s_answer_over_on(1);
}

/* --- request_over --------------------------------------------------------- */
/* A request over the worker's max payload: since the worker says that max
 * payload in its REGISTER (Register.max_payload) the broker never sends it
 * one, and the client gets AB_EPAYLOADSIZE at once (its only worker); the
 * library's own MALFORMED answer stays for a broker that does not read the
 * field. Before either, the request went to the worker and its call waited
 * for its deadline. */

static void s_request_over(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    ab_options_t *o = ab_options_new();
    REQUIRE(o != NULL && ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
    REQUIRE(ab_options_set_max_payload(o, 10000) == AB_OK);
    ab_worker_t *w = NULL;
    REQUIRE(ab_worker_new(&w, o, "pl", 1) == AB_OK);
    ab_options_destroy(&o);
    ab_client_t *c = s_client(port, 1 << 20);
    int64_t t0 = ab_now_ms();
    while (!ab_worker_connected(w) && ab_now_ms() - t0 < 10000)
        ab_worker_poll(w, 20, s_job, NULL);
    REQUIRE(th_wait_workers(c, "pl", 1, 10000) == 0);
    static char big[20000];
    th_answer_t a = {0};
    REQUIRE(ab_client_request_start(c, "pl", big, sizeof big,
                                    &(ab_request_opts_t){.timeout_ms = 30000}, th_answer_cb, &a,
                                    NULL) == AB_OK);
    int jobs = 0;
    t0 = ab_now_ms();
    while (!a.finals && ab_now_ms() - t0 < 35000) {
        ab_client_poll(c, 10);
        int n = ab_worker_poll(w, 10, s_job, NULL);
        jobs += n > 0 ? n : 0;
    }
    int64_t ms = ab_now_ms() - t0;
    printf("request_over: request of 20000 B to a worker that takes 10000 -> %s in %lld ms, "
           "%d jobs handed out\n", ab_status_name(a.status), (long long)ms, jobs);
    CHECK_EQ(a.status, AB_EPAYLOADSIZE);
    CHECK_EQ(jobs, 0);
    /* its credit came back: a request it takes is answered */
    a = (th_answer_t){0};
    REQUIRE(ab_client_request_start(c, "pl", "hi", 2, NULL, th_answer_cb, &a, NULL) == AB_OK);
    t0 = ab_now_ms();
    while (!a.finals && ab_now_ms() - t0 < 20000) {
        ab_client_poll(c, 10);
        ab_worker_poll(w, 10, s_job, NULL);
    }
    CHECK_EQ(a.status, AB_OK);
    ab_worker_destroy(&w);
    ab_client_destroy(&c);
}

/* --- max_unbounded -------------------------------------------------------- */

static void s_max_unbounded(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    th_worker(port, "pl", NULL);
    ab_client_t *c = s_client(port, SIZE_MAX);
    REQUIRE(th_wait_workers(c, "pl", 1, 10000) == 0);
    static char big[200000];
    void *r = NULL;
    size_t n = 0;
    int rc = ab_client_request(c, "pl", big, sizeof big, 20000, &r, &n);
    printf("max_unbounded: echo of 200000 B with max payload SIZE_MAX -> %s (%zu B)\n",
           ab_status_name(rc), n);
    CHECK_EQ(rc, AB_OK);
    CHECK_U64(n, sizeof big);
    ab_free(r);
    ab_client_destroy(&c);
}

/* --- fail_status ---------------------------------------------------------- */

static void s_fail_status(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    ab_client_t *c = s_client(port, 1 << 20);
    s_wk_t k = {.port = port};
    pthread_t th = s_wk_start(&k, c);
    static const struct {
        const char *req;
        int want;
    } t[] = {{"F-999", AB_EAPPLICATION}, {"F12345", AB_EAPPLICATION}, {"F0", AB_EAPPLICATION},
             {"F-5", AB_EBUSY}, {"F-16", AB_ENOTFOUND}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        int rc = ab_client_request(c, "pl", t[i].req, strlen(t[i].req), 5000, NULL, NULL);
        printf("fail_status: ab_worker_fail(%s) -> %s (%s)\n", t[i].req + 1, ab_status_name(rc),
               ab_client_last_error(c));
        CHECK_EQ(rc, t[i].want);
        CHECK_STR(ab_client_last_error(c), "failed on purpose");
    }
    atomic_store(&k.stop, 1);
    pthread_join(th, NULL);
    ab_client_destroy(&c);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"batch_burst", s_batch_burst},
        {"answer_over", s_answer_over},
        {"answer_over_lz4", s_answer_over_lz4},
        {"request_over", s_request_over},
        {"max_unbounded", s_max_unbounded},
        {"fail_status", s_fail_status},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
