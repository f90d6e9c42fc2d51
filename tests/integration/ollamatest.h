/*
 * ollamatest.h - what the Ollama worker cases share (test_ollama.c,
 * test_ollama_placement.c, test_ollama_backend.c: one program,
 * test_ollama): the simulator and its figures, Ollama workers, requests and
 * their results, and the cases the theme files define for test_ollama.c's
 * table.
 */
#ifndef OLLAMATEST_H
#define OLLAMATEST_H

#include "agentbus.h"
#include "agentbus.pb-c.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The simulator's time scale: loads and tokens take milliseconds. */
#define OT_SCALE "20"

/* --- requests ------------------------------------------------------------------ */
typedef struct {
    int kind; /* 1 generate, 2 chat, 3 embed */
    int partials, finals, status, order_ok;
    char text[8192];
    size_t len;
    char worker[64], error[256], done_reason[32];
    uint64_t eval_count, total_duration, prompt_eval_count;
    size_t dims, n_embeddings;
    float first;
} ot_res_t;
typedef struct {
    const char *model, *prompt, *worker;
    int stream; /* 1 stream, 0 not */
    long seed;  /* < 0: none */
    int timeout_ms;
} ot_gen_t;

/* HTTP to the simulator: BODY NULL = GET. Returns the status (0 when the
 * connection failed); *out (may be NULL) gets the parsed JSON answer. */
long ot_http(int port, const char *path, const char *body, json_t **out);
/* Starts ollama-sim on a free port with extra flags (NULL-terminated) and
 * waits until it answers; returns its port. */
int ot_sim(const char *first, ...);
/* ab-fake-ollama (tests/integration/fake_ollama.py) on a free port with
 * extra arguments (NULL-terminated); returns its port once it answers. */
int ot_fake_ollama(const char *first, ...);
/* A number from /sim/stats: "a" or "a.b" (one level of nesting). */
long long ot_sim_stat(int port, const char *key);
/* Sets the simulator's faults (a /sim/faults JSON body). */
void ot_faults(int port, const char *json);
/* An Ollama worker for the simulator on SIM_PORT, extra flags after name. */
pid_t ot_oworker(int port, int sim_port, const char *name, ...);
/* The inference state the broker holds for worker NAME (NULL if none
 * yet); free with agentbus__worker_list__free_unpacked(*wl). */
const Agentbus__InferenceState *ot_state(ab_client_t *c, const char *name,
                                         Agentbus__WorkerList **wl, uint32_t *capacity);
/* Waits (bounded) until worker NAME reports MODEL loaded (want 1) or not. */
int ot_wait_loaded(ab_client_t *c, const char *name, const char *model, int want,
                   int timeout_ms);
/* Requests: the event callback filling an ot_res_t, a generate started,
 * waited for (N finals) or made whole. */
void ot_on_event(ab_client_t *c, const ab_reply_event_t *ev, void *arg);
uint64_t ot_start_gen(ab_client_t *c, const ot_gen_t *g, ot_res_t *r);
/* The same with InferenceRequest.generate.format = FORMAT ("json" or a
 * JSON schema's text). */
uint64_t ot_start_gen_format(ab_client_t *c, const ot_gen_t *g, const char *format, ot_res_t *r);
void ot_wait(ab_client_t *c, ot_res_t *r, int n, int timeout_ms);
int ot_generate(ab_client_t *c, const ot_gen_t *g, ot_res_t *r);
/* The text the simulator itself answers (no broker, no worker). */
void ot_direct(int sim_port, const char *path, const char *body, char *out, size_t cap);

/* test_ollama_placement.c: adaptive concurrency, placement, models. */
void ollama_adaptive(void);
void ollama_timeout_credit(void);
void ollama_model_credit(void);
void ollama_model_slots(void);
void ollama_model_scan(void);
void ollama_busy_no_eject(void);
void ollama_placement_loaded(void);
void ollama_worker_gone(void);
void ollama_cache_digest(void);
void ollama_placement_vram(void);
void ollama_models_cli(void);
/* test_ollama_backend.c: Ollama down at start, down and up again, a host
 * that never answers the connection, lists over the broker's bounds. */
void ollama_backend_down(void);
void ollama_backend_down_up(void);
void ollama_connect_timeout(void);
void ollama_state_bounds(void);
void ollama_error_bytes(void);
void ollama_cut_answer(void);
void ollama_probe_why(void);
void ollama_big_line(void);
void ollama_line_buffer(void);
void ollama_too_large_count(void);

#endif
