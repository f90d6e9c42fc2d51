/*
 * backend.h - what agentbus-worker asks of a backend.
 *
 * A backend turns jobs into replies. The worker's loop owns the connection;
 * it hands each job to on_job (which owns it from then on and must end it
 * with ab_worker_reply/ab_worker_fail, now or later) and calls tick when
 * next_timeout_ms said work would be due. One thread; no locking.
 * The echo backend is here now; an Ollama backend (libcurl multi) slots in
 * the same way: on_job starts an HTTP transfer, tick drives curl_multi.
 */
#ifndef AB_WORKER_BACKEND_H
#define AB_WORKER_BACKEND_H

#include "agentbus.h"

typedef struct {
    const char *service;
    unsigned capacity;
    long delay_ms; /* echo: time before replying */
    long chunks;   /* echo: reply in this many parts (streamed) */
} ab_backend_args_t;

typedef struct {
    const char *name;
    int (*create)(void **ctx, const ab_backend_args_t *args);
    void (*on_job)(void *ctx, ab_worker_t *w, ab_job_t *job);
    /* ms until tick should run; -1 when nothing is pending. */
    int (*next_timeout_ms)(void *ctx);
    void (*tick)(void *ctx, ab_worker_t *w);
    void (*destroy)(void **ctx);
} ab_backend_ops_t;

extern const ab_backend_ops_t ab_backend_echo;

#endif
