/*
 * backend.h - what agentbus-worker asks of a backend.
 *
 * A backend turns jobs into replies. The worker's loop owns the connection;
 * it hands each job to on_job (which owns it from then on and must end it
 * with ab_worker_reply/ab_worker_fail, now or later) and calls tick when
 * next_timeout_ms said work would be due. One thread; no locking.
 * Backends with I/O of their own (Ollama: libcurl multi) also provide
 * attach (called once the worker exists: cancel handler, state) and wait
 * (sleeps on their sockets and the worker's fd together).
 */
#ifndef WK_BACKEND_H
#define WK_BACKEND_H

#include "agentbus.h"

/* --ollama-url's longest (main.c refuses a longer one). */
#define WK_OLLAMA_URL_MAX 511

typedef struct {
    const char *service;
    unsigned capacity;
    long delay_ms; /* echo: time before replying */
    long chunks;   /* echo: reply in this many parts (streamed) */
    /* ollama */
    const char *name;        /* worker name, reported in final replies */
    const char *ollama_url;  /* base URL, e.g. http://127.0.0.1:11434 */
    const char *preload;     /* comma-separated models to load at start */
    long gpu_vram_mb;        /* VRAM when NVML cannot tell (0 = unknown) */
    long retries;            /* local retries of 503 / connection errors */
    long min_slots;          /* the adaptive limit's floor (1..capacity) */
    long model_slots;        /* most requests of one model at once (0: capacity) */
    long refresh_ms;         /* longest interval between /api/tags+/api/ps probes */
} wk_backend_args_t;

typedef struct {
    const char *name;
    int (*create)(void **ctx, const wk_backend_args_t *args);
    void (*on_job)(void *ctx, ab_worker_t *w, ab_job_t *job);
    /* ms until tick should run; -1 when nothing is pending. */
    int (*next_timeout_ms)(void *ctx);
    void (*tick)(void *ctx, ab_worker_t *w);
    void (*destroy)(void **ctx);
    /* optional (NULL): see above */
    void (*attach)(void *ctx, ab_worker_t *w);
    int (*wait)(void *ctx, ab_worker_t *w, int timeout_ms);
} wk_backend_ops_t;

extern const wk_backend_ops_t wk_backend_echo;
extern const wk_backend_ops_t wk_backend_ollama;

#endif
