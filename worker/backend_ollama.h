/*
 * backend_ollama.h - what the Ollama backend's two files share (internal
 * to agentbus-worker, not an API): backend_ollama.c serves the requests
 * (transfers, streamed lines, retries, each model's adaptive limit),
 * ollama_probe.c probes /api/tags, /api/ps and /api/version and sends the
 * worker's InferenceState to the broker. Both run on the worker's one
 * thread (its loop drives every curl transfer): nothing is locked.
 */
#ifndef WK_BACKEND_OLLAMA_H
#define WK_BACKEND_OLLAMA_H

#include "agentbus.pb-c.h"
#include "backend.h"
#include "gpu_nvml.h"
#include "tl_list.h"

#include <curl/curl.h>
#include <stdint.h>

#define WK_OLLAMA_BODY_MAX (8u << 20) /* longest stream: false answer (assembled), probe answer */
#define WK_OLLAMA_REFRESH_MIN_MS 250  /* probes this soon after a change */
#define WK_OLLAMA_SPARE_MAX 16        /* easy handles kept for reuse */
#define WK_OLLAMA_CREDITS_MAX 32      /* models with a limit of their own at once */

/* One model's adaptive limit and its transfers running now. A model with
 * no entry is at the maximum; an entry at the maximum with nothing running
 * is free for another model. */
typedef struct {
    char model[256];
    double limit;
    unsigned active;
    int64_t last_shrink_ms;
} wk_ollama_credit_t;

typedef enum {
    WK_OLLAMA_TAGS,
    WK_OLLAMA_PS,
    WK_OLLAMA_VERSION,
    WK_OLLAMA_NPROBES
} wk_ollama_probe_kind_t;

typedef struct {
    CURL *easy;
    char *buf;
    size_t len, cap; /* cap: BUF's size, kept from probe to probe */
    int ok;
    int over;      /* the answer passed WK_OLLAMA_BODY_MAX */
    char why[160]; /* when not ok: what happened, for the log */
} wk_ollama_probe_t;

typedef struct wk_ollama {
    wk_backend_args_t args;
    char url[WK_OLLAMA_URL_MAX + 1];
    ab_worker_t *w;
    CURLM *multi;
    struct curl_slist *hdrs;
    tl_list_t jobs; /* every job (s_job_t.node), any state, in arrival order */
    unsigned active, admin_active;
    /* AIMD, per model */
    wk_ollama_credit_t credits[WK_OLLAMA_CREDITS_MAX];
    Agentbus__ModelSlots slots_pb[WK_OLLAMA_CREDITS_MAX];
    Agentbus__ModelSlots *slots_ptr[WK_OLLAMA_CREDITS_MAX];
    unsigned slots_max, slots_min;
    unsigned model_max; /* --model-slots: one model's most at once (<= slots_max) */
    /* state probes */
    wk_ollama_probe_t probes[WK_OLLAMA_NPROBES];
    int probing;
    int64_t next_refresh_ms, refresh_ms;
    Agentbus__InferenceState st;
    uint8_t *sent;
    size_t sent_len;
    wk_gpu_t *gpu;
    char worker_name[256];
    int was_up; /* backend up at the last probe; -1 before the first */
    char down_why[160]; /* what the probes saw when it went down */
    int left_out; /* entries of its lists left out of the state at the last probe */
    CURL *spare[WK_OLLAMA_SPARE_MAX]; /* easy handles of ended transfers, for the next */
    unsigned n_spare;
    /* answers refused TOO_LARGE, and as many as the log had said when */
    uint64_t too_large, too_large_said;
    int64_t too_large_said_ms;
} wk_ollama_t;

/* Starts the three probes on O's multi handle (one that cannot start is
 * left out: the others still answer). */
void wk_ollama_probe_start(wk_ollama_t *o);
/* EASY ended with RES: 1 if it was a probe (then handled: after the last,
 * the state is rebuilt and sent when it changed, and the next probe
 * scheduled), 0 if it is not one of O's probes. */
int wk_ollama_probe_done(wk_ollama_t *o, CURL *easy, CURLcode res);
/* Probes within WK_OLLAMA_REFRESH_MIN_MS (a model may have been loaded). */
void wk_ollama_refresh_soon(wk_ollama_t *o);
/* Sends O->st to the broker (a REGISTER) when it differs from what was
 * sent last; 1 if it did. */
int wk_ollama_state_send(wk_ollama_t *o);
/* Stops the probes running and frees their buffers (at destroy). */
void wk_ollama_probes_free(wk_ollama_t *o);

#endif
