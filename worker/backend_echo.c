/*
 * backend_echo.c - replies with the request's payload, after an optional
 * delay and optionally in several streamed parts. Used by the demo, the
 * tests and the benchmark as a stand-in for a real service.
 *
 * Delayed jobs wait in a FIFO: every job has the same delay, so arrival
 * order is due order and the head is always the next one due.
 */
#include "backend.h"
#include "tl_clock.h"
#include "tl_log.h"

#include <stdlib.h>

typedef struct s_item {
    ab_job_t *job;
    int64_t due_ms;
    struct s_item *next;
} s_item_t;

typedef struct {
    wk_backend_args_t args;
    s_item_t *head, *tail;
} s_echo_t;

static int s_create(void **ctx, const wk_backend_args_t *args)
{
    s_echo_t *e = calloc(1, sizeof *e);
    if (!e)
        return AB_ENOMEM;
    e->args = *args;
    if (e->args.chunks < 1)
        e->args.chunks = 1;
    *ctx = e;
    return AB_OK;
}

static void s_answer(s_echo_t *e, ab_worker_t *w, ab_job_t *job)
{
    size_t size;
    const char *data = ab_job_data(job, &size);
    size_t parts = (size_t)e->args.chunks, off = 0;
    if (parts > size && size > 0)
        parts = size;
    if (size == 0)
        parts = 1;
    for (size_t i = 0; i + 1 < parts; i++) {
        size_t n = size / parts;
        ab_worker_reply_part(w, job, data + off, n);
        off += n;
    }
    ab_worker_reply(w, &job, data + off, size - off);
}

static void s_on_job(void *ctx, ab_worker_t *w, ab_job_t *job)
{
    s_echo_t *e = ctx;
    if (e->args.delay_ms <= 0) {
        s_answer(e, w, job);
        return;
    }
    s_item_t *it = malloc(sizeof *it);
    if (!it) {
        ab_worker_fail(w, &job, AB_EINTERNAL, "echo backend out of memory");
        return;
    }
    it->job = job;
    it->due_ms = tl_now_ms() + e->args.delay_ms;
    /* At debug level a test can see the job has left the library's ready
     * queue: a CANCEL or a drain no longer takes it back from here. */
    TL_DEBUG("echo", "holding request %llu for %ld ms", (unsigned long long)ab_job_id(job),
             e->args.delay_ms);
    it->next = NULL;
    if (e->tail)
        e->tail->next = it;
    else
        e->head = it;
    e->tail = it;
}

static int s_next_timeout(void *ctx)
{
    s_echo_t *e = ctx;
    if (!e->head)
        return -1;
    int64_t left = e->head->due_ms - tl_now_ms();
    return left > 0 ? (int)left : 0;
}

static void s_tick(void *ctx, ab_worker_t *w)
{
    s_echo_t *e = ctx;
    int64_t now = tl_now_ms();
    while (e->head && e->head->due_ms <= now) {
        s_item_t *it = e->head;
        e->head = it->next;
        if (!e->head)
            e->tail = NULL;
        s_answer(e, w, it->job);
        free(it);
    }
}

static void s_destroy(void **ctx)
{
    s_echo_t *e = *ctx;
    if (!e)
        return;
    while (e->head) {
        s_item_t *it = e->head;
        e->head = it->next;
        ab_job_destroy(&it->job);
        free(it);
    }
    free(e);
    *ctx = NULL;
}

const wk_backend_ops_t wk_backend_echo = {"echo", s_create, s_on_job, s_next_timeout, s_tick,
                                          s_destroy, NULL, NULL};
