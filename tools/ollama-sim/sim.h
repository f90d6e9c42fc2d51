/*
 * sim.h - ollama-sim's shared types: configuration, simulated models and
 * GPUs, the slot scheduler, faults, statistics and text generation.
 *
 * Threading: libmicrohttpd runs one thread per connection; a scheduler
 * thread completes loads and expires keep-alives. Everything in sim_t that
 * changes at run time (models' state, the queue, faults, stats, the RNG) is
 * guarded by sim_t.lock; the configuration part is read-only once serving.
 * Waiting is done in ppoll() on the client socket, so a client that goes
 * away is noticed at once and nothing spins.
 */
#ifndef SIM_H
#define SIM_H

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SIM_MAX_MODELS 64
#define SIM_MAX_GPUS 16
#define SIM_MAX_PARALLEL 64
#define SIM_MAX_TOKENS 16384   /* num_predict cap: bounds a reply's memory */
#define SIM_MAX_EMBED_INPUTS 1024
#define SIM_MAX_EMBED_DIM 8192
#define SIM_MAX_EMBED_FLOATS (1 << 20)   /* inputs x embedding_length per request */
#define SIM_FOREVER INT64_MAX

typedef enum { SIM_UNLOADED = 0, SIM_LOADING, SIM_LOADED } sim_state_t;

typedef struct {
    double error_rate;
    int error_status;
    char error_message[256];
    double midstream_rate;
    int midstream_after;
    char midstream_message[256];
    double hang_rate;
    int hang_after;
    int64_t hang_ms;
    double slow_start_rate;
    int64_t slow_start_ms;
    double drop_rate;
    int drop_after;
    int64_t count;
    char model[128];
} sim_faults_t;

/* The faults one request drew. */
typedef struct {
    bool error, midstream, hang, slow_start, drop;
    int error_status;
    char error_message[256];
    int midstream_after;
    char midstream_message[256];
    int hang_after;
    int64_t hang_ns;         /* 0 = until the client closes */
    int64_t slow_start_ns;
    int drop_after;
} sim_draw_t;

typedef struct {
    bool busy;
    int64_t busy_since;
    int64_t busy_ns;
    uint64_t requests;
} sim_slot_t;

typedef struct {
    /* configuration */
    char name[128];
    char digest[72];
    char family[32];
    char parameter_size[16];
    char quantization_level[16];
    uint64_t size;
    double load_ms, prefill_tps, token_ms;
    int reply_tokens;
    int embedding_length;
    int num_parallel;        /* 0 = the server's */
    bool thinking;           /* a reasoning model: takes think (else think: true is a 400) */
    /* run time (under sim_t.lock) */
    sim_state_t state;
    int gpu;
    int64_t load_done;       /* monotonic ns */
    int64_t loaded_since;
    int64_t last_used;
    int64_t expires;         /* monotonic ns, SIM_FOREVER */
    int64_t keep_alive_ns;   /* of the last request; <0 forever */
    int active, queued;
    bool unload_pending;     /* keep_alive 0 came while it was busy or loading */
    sim_slot_t slots[SIM_MAX_PARALLEL];
    /* stats */
    uint64_t requests, n_generate, n_chat, n_embed, prompt_tokens, eval_tokens;
    uint64_t loads, evictions;
    int64_t loaded_ns, load_ns;
} sim_model_t;

typedef struct {
    uint64_t vram;
    uint64_t used;
} sim_gpu_t;

#define SIM_OPTS_SEEN 64

typedef struct {
    uint64_t requests, completed, aborted, aborted_queued, max_queued;
    uint64_t st200, st400, st404, st405, st413, st500, st503, st_other;
    uint64_t f_error, f_midstream, f_hang, f_slow_start, f_drop;
    uint64_t loads, unloads, evictions, expirations;
    uint64_t ep_generate, ep_chat, ep_embed, ep_tags, ep_ps, ep_version;
    /* option names seen in requests, with their counts (bounded: past
     * SIM_OPTS_SEEN names, or a name of 32 bytes or more, "(other)") */
    struct {
        char name[32];
        uint64_t n;
    } opts[SIM_OPTS_SEEN + 1];
    int n_opts;
    int64_t since;
} sim_stats_t;

/* A request that wants a slot. Lives in the HTTP request's context. */
typedef struct sim_job {
    struct sim_job *prev, *next;
    sim_model_t *model;
    int efd;                 /* eventfd written on grant */
    bool in_queue, granted;
    bool gone_queued;        /* the client left while this waited in the queue */
    int slot;
    int64_t arrived, granted_at;
    int64_t keep_alive_ns;
} sim_job_t;

typedef struct {
    /* configuration */
    int port;
    double time_scale;
    int num_parallel;
    int max_queue;
    int max_loaded_models;
    int64_t keep_alive_ns;
    size_t max_body_bytes;
    int max_connections;
    uint64_t seed;
    char version[32];
    bool quiet;
    sim_model_t models[SIM_MAX_MODELS];
    int n_models;
    sim_gpu_t gpus[SIM_MAX_GPUS];
    int n_gpus;
    sim_faults_t faults;
    char started_at[64];     /* RFC 3339, for modified_at */
    /* run time */
    pthread_mutex_t lock;
    pthread_cond_t wake;     /* scheduler thread */
    pthread_t sched_thread;
    bool stopping;
    int shutdown_fd;         /* eventfd, readable once stopping */
    sim_job_t *q_head, *q_tail;
    int n_queued, n_active;
    uint64_t rng;
    sim_stats_t st;
    int64_t started;
} sim_t;

/* --- util.c --- */
int64_t sim_now(void);                         /* CLOCK_MONOTONIC ns */
void sim_rfc3339(char *buf, size_t cap, int64_t mono_ns); /* wall time of a monotonic instant */
uint64_t sim_hash(uint64_t h, const void *data, size_t n); /* FNV-1a; start with SIM_HASH0 */
#define SIM_HASH0 1469598103934665603ULL
uint64_t sim_rand(uint64_t *state);            /* splitmix64 */
double sim_rand01(uint64_t *state);
int64_t sim_scaled_ns(const sim_t *s, double ms);   /* simulated ms -> real ns */
int sim_parse_duration(const char *txt, int64_t *ns);  /* Go duration or seconds */
int sim_parse_keep_alive(const json_t *v, int64_t *ns); /* JSON number (s) or string */
/* Prompt tokens an image adds: a llava-1.5-style projector turns a 336 px
 * picture into a 24 x 24 grid of patches, one token each. */
#define SIM_IMAGE_TOKENS 576
/* The images of a generate (IN's "images") or of every chat message (CHAT):
 * their count, or -1 with ERR (may be NULL) when one is not a base64
 * string, as Ollama refuses them with 400. */
int sim_images(const json_t *in, bool chat, char *err, size_t cap);
int sim_parse_size(const char *txt, uint64_t *out);     /* bytes, K/M/G suffixes */

typedef enum { SIM_WAIT_TIMEOUT = 0, SIM_WAIT_EVENT, SIM_WAIT_GONE, SIM_WAIT_SHUTDOWN } sim_wait_t;
/* Sleeps up to timeout_ns (<0: no limit) unless the client on CLIENT_FD
 * hangs up, EVENT_FD (may be -1) becomes readable or the simulator stops. */
sim_wait_t sim_wait(const sim_t *s, int client_fd, int event_fd, int64_t timeout_ns);

/* --- config.c --- */
void sim_config_defaults(sim_t *s);
/* Parses argv (and the config file and environment it names); on error
 * prints a message naming the option and returns -1. */
int sim_config_load(sim_t *s, int argc, char **argv);
sim_model_t *sim_model_find(sim_t *s, const char *name);

/* --- faults.c --- */
void sim_faults_defaults(sim_faults_t *f);
/* Applies the keys of OBJ to F; on error writes ERR and leaves F as it was. */
int sim_faults_apply(sim_faults_t *f, const json_t *obj, char *err, size_t cap);
json_t *sim_faults_json(const sim_faults_t *f);
/* Rolls the dice for one request for MODEL (lock held). */
void sim_faults_draw(sim_t *s, const sim_model_t *m, sim_draw_t *d);

/* --- sched.c --- */
int sim_sched_start(sim_t *s);
void sim_sched_stop(sim_t *s);
typedef enum { SIM_Q_GRANTED = 0, SIM_Q_WAITING, SIM_Q_BUSY, SIM_Q_TOOBIG } sim_q_t;
/* Takes a slot for JOB or queues it (lock taken inside). */
sim_q_t sim_sched_enqueue(sim_t *s, sim_job_t *job);
/* Waits until JOB holds a slot and its model is loaded. 0, or the
 * sim_wait_t that ended the wait (GONE, SHUTDOWN); then JOB holds nothing. */
int sim_sched_wait(sim_t *s, sim_job_t *job, int client_fd);
/* Gives back JOB's slot or queue place; safe to call twice. */
void sim_sched_release(sim_t *s, sim_job_t *job);
/* keep_alive 0 without work: unload now if idle, else when idle. */
void sim_sched_unload(sim_t *s, sim_model_t *m);
/* When M would expire if it became idle at NOW (lock held). */
int64_t sim_sched_expiry(const sim_t *s, const sim_model_t *m, int64_t now);
/* Largest GPU VRAM. */
uint64_t sim_sched_max_vram(const sim_t *s);

/* --- tools.c --- (tool calling on /api/chat; docs/ollama-sim.md) */
/* 0, or -1 with ERR when IN's tools or its messages' tool fields are
 * wrongly typed (answer 400). */
int sim_tools_check(const json_t *in, char *err, size_t cap);
/* The tool calls the simulated model answers IN with (a new reference),
 * or NULL when it answers in text (no tools, or the last message is not
 * the user's). */
json_t *sim_tools_call(const json_t *in);
/* When IN's last message is a tool result: the text the answer starts
 * with, quoting it (malloc'd); else NULL. */
char *sim_tools_result_text(const json_t *in);

/* --- logprobs.c --- (logprobs, top_logprobs, context; docs/ollama-sim.md) */
#define SIM_MAX_TOP_LOGPROBS 20  /* Ollama's bound on top_logprobs */
typedef struct {
    bool on;        /* logprobs: true */
    int top;        /* top_logprobs (0..20) */
    int n_context;  /* generate: token ids in the request's context */
} sim_lp_t;
/* Reads IN's logprobs, top_logprobs and (generate) context into LP: 0, or
 * -1 with ERR when one is wrongly typed or out of range (answer 400). */
int sim_lp_check(const json_t *in, bool chat, sim_lp_t *lp, char *err, size_t cap);
/* The logprobs entry of token TOK at position POS (deterministic), with
 * TOP top_logprobs (the sampled token first) when TOP > 0. New reference. */
json_t *sim_lp_entry(const char *tok, int pos, int top);
/* A generate's context so far: the request's ids, then an id per word of
 * its system and prompt (new reference); the answer's words are added
 * with sim_ctx_add_words. */
json_t *sim_ctx_start(const json_t *in);
void sim_ctx_add_words(json_t *ctx, const char *text);

/* --- textgen.c --- */
typedef struct {
    uint64_t rng;
    int n, limit;
    int sentence_left;
    bool json;
    bool stopped_by_stop;
    char **stop;
    int n_stop;
    char *text;              /* everything produced so far */
    size_t len, cap;
} sim_gen_t;
/* SEED_MATERIAL identifies the input; DETERMINISTIC says whether only it
 * counts (else the server's RNG varies the text). LIMIT = tokens. */
int sim_gen_init(sim_gen_t *g, uint64_t seed, int limit, bool json, const json_t *stop);
/* The next token in BUF; 0, or 1 when generation is over (nothing in BUF). */
int sim_gen_next(sim_gen_t *g, char *buf, size_t cap);
void sim_gen_free(sim_gen_t *g);
int sim_count_words(const char *txt);
/* Unit-length embedding of TEXT for MODEL into OUT[dim]. */
void sim_embed(const char *model, const char *text, int dim, double *out);

/* --- stats.c --- */
json_t *sim_stats_json(sim_t *s);   /* takes the lock */
void sim_stats_reset(sim_t *s);     /* takes the lock */
/* Counts each key of the request's "options" object (takes the lock). */
void sim_stats_options(sim_t *s, const json_t *opts);
void sim_stats_status(sim_t *s, int status);  /* lock held */

/* --- http.c --- */
int sim_http_run(sim_t *s);   /* serves until SIGTERM/SIGINT; exit status */

#endif
