/*
 * scenario.h - agentbus-scenario: the seed workload (issue 20), shared
 * between its files.
 *
 *   scenario_workload.c  roles, agents, prompts (Zipf), one request's spec
 *   scenario_direct.c    an agent calling over HTTP (libcurl): ollama-sim
 *                        directly (run A) or agentbus-gateway (run C)
 *   scenario_bus.c       an agent calling through agentbus (libagentbus)
 *   scenario_run.c       agent threads: closed and open loop; GPU sampling
 *   scenario_scale.c     1,000 (10,000) connected agents
 *   scenario_report.c    summary of a run, table, CSV, plot, targets
 *   scenario.c           options, processes, the sequence of runs
 *
 * Times inside the workload (think time, timeouts, offered rates, model
 * timings) are in *simulated* seconds; the simulators run --time-scale X
 * faster, so the agents divide every delay by X and the report multiplies
 * measured wall times by X (docs/bench.md, "Seed workload").
 */
#ifndef BN_SCENARIO_H
#define BN_SCENARIO_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#define SC_GPUS 2
#define SC_ROLES 69
#define SC_AGENTS 174
#define SC_MODELS 3
#define SC_PROMPT_MAX 16384

/* The header priority of interactive (voice) calls; batch calls send the
 * default 0 (normal). AB_PRIORITY_INTERACTIVE (priority lanes, issue 16);
 * the highest value where a header does not define it. HTTP agents send it
 * as X-Agentbus-Priority (the simulator ignores the header, as Ollama
 * does). In scenario_bus.c. */
extern const unsigned sc_prio_interactive;

/* Role classes: what a role asks, of which model, how. */
enum { SC_VOICE, SC_ROUTER, SC_SUMMARY, SC_ASSIST, SC_ANALYSIS, SC_CLASSES };

typedef struct {
    const char *name;
    int roles;               /* how many of the 69 roles are of this class */
    int model;               /* index into sc_models */
    int interactive;         /* voice: short, tight deadline */
    int stream;
    int prompt_min, prompt_max; /* words */
    int reply_min, reply_max;   /* num_predict */
    double think_s;          /* mean think time (exponential), closed loop */
    double timeout_s;        /* the agent's deadline for one call */
} sc_class_t;

typedef struct {
    const char *name;        /* as the agents ask for it */
    const char *size;        /* VRAM it takes (ollama-sim size, K/M/G) */
    double load_ms, prefill_tps, token_ms; /* simulated */
    const char *parameter_size;
} sc_model_t;

extern const sc_class_t sc_classes[SC_CLASSES];
extern const sc_model_t sc_models[SC_MODELS];

/* One request, fully determined by (seed, agent, sequence number). */
typedef struct {
    int agent, cls, model, stream, num_predict;
    uint64_t key;            /* identity of (class, prompt): repeats share it */
    char *prompt;            /* malloc'd; sc_req_free */
    size_t prompt_len;
} sc_req_t;

/* The agent's class (agents are spread over the 69 roles: 36 roles with 3
 * agents, 33 with 2). */
int sc_agent_class(int agent);
int sc_agent_role(int agent);
/* Builds request SEQ of AGENT. REPEAT_PCT: share drawn from the class's
 * Zipf-popular pool (the rest are fresh prompts). */
void sc_req_make(sc_req_t *r, uint64_t seed, int agent, uint64_t seq, int pool_pct);
void sc_req_free(sc_req_t *r);
/* Simulated seconds R takes on a free slot: prompt tokens (words + 1) at
 * the model's prefill rate, then num_predict tokens. */
double sc_req_ideal_s(const sc_req_t *r);
/* A uniform double in [0,1) and an exponential draw, from a 64-bit state. */
double sc_rand01(uint64_t *state);
double sc_exp(uint64_t *state, double mean);

/* Marks KEY seen; returns 1 if it had been seen before (a repeat). The set
 * is cleared between runs. Thread-safe. */
int sc_seen(uint64_t key);
void sc_seen_clear(void);

/* --- one finished call ---------------------------------------------------- */
typedef struct {
    uint32_t done_ms;        /* wall ms since the run started */
    uint32_t lat_us;         /* wall */
    uint32_t ttft_us;        /* wall; 0 when not streamed */
    uint32_t ideal_us;       /* wall: the GPU's own time for it, unloaded (prefill + tokens) */
    uint8_t cls, ok, repeat, late; /* late: issued in the run, ended after it */
    int16_t err;             /* SC_E_* when !ok */
} sc_rec_t;

enum { SC_E_NONE, SC_E_HTTP503, SC_E_HTTP, SC_E_TIMEOUT, SC_E_CONN, SC_E_BUS, SC_E_CUT, SC_E_N };
extern const char *const sc_err_names[SC_E_N];

/* --- engines: how an agent sends one call ------------------------------------ */
typedef struct sc_call sc_call_t;
typedef struct sc_agent sc_agent_t;

typedef struct {
    const char *name;
    void *(*open)(sc_agent_t *a);                         /* per agent thread */
    int (*start)(void *eng, sc_call_t *call);             /* 0 or -1 (ended at once) */
    int (*poll)(void *eng, int timeout_ms);               /* runs completions */
    void (*close)(void *eng);                             /* cancels what is left */
} sc_engine_ops_t;

struct sc_call {
    sc_agent_t *a;
    sc_req_t req;
    uint64_t t0_us, first_us;
    int repeat, timeout_ms;
    /* engine scratch */
    void *handle;
    uint64_t id;
    long http_status;
    int saw_done, got_error;
    char tail[64];           /* last bytes of the body (direct: looks for "done":true) */
    size_t tail_len;
};

/* What a run is. */
typedef struct {
    const sc_engine_ops_t *ops;
    const char *label;       /* "direct-new", "direct-keepalive", "bus", "gateway" */
    int keepalive;           /* HTTP: reuse connections */
    int open_loop;
    int no_think;            /* closed loop without think time (the GPU-bound case) */
    double rate;             /* open loop: offered sim req/s, all agents together */
    double seconds;          /* sim seconds of issuing */
    double scale;            /* simulator time scale */
    uint64_t seed;
    int pool_pct;
    int agents;
    char sim_url[SC_GPUS][64];
    char broker[64];         /* set: the broker's stats and cache are read (runs B, C) */
    char gateway[64];        /* set: HTTP agents call this URL instead of their GPU (run C) */
} sc_run_cfg_t;

struct sc_agent {
    const sc_run_cfg_t *cfg;
    int index;
    uint64_t rng, seq;
    uint64_t t_start_us, t_end_us;
    uint64_t next_us;        /* when to issue the next call */
    int inflight, closing;
    uint64_t issued;
    sc_rec_t *recs;
    size_t nrecs, caprecs;
    pthread_t thread;
};

/* Records the end of CALL (ok, or error ERR) and frees it. Engine callback. */
void sc_call_end(sc_call_t *call, int ok, int err);

/* Aggregates of one run. */
typedef struct {
    char label[48];
    int open_loop;
    double rate, seconds_wall, sim_seconds;
    size_t nrecs;
    sc_rec_t *recs;          /* all calls, malloc'd */
    uint64_t issued;
    double util_all, util_queued;     /* GPU slots busy, % */
    double queued_secs;               /* sim seconds with work waiting */
    double gpu_busy;                  /* slot-busy time summed over slots (sim ns) */
    uint64_t sim_503, sim_aborted, sim_completed;
    /* bus only */
    uint64_t hits[3], coalesced, bus_requests;
    int has_bus;
} sc_result_t;

extern const sc_engine_ops_t sc_direct_ops, sc_bus_ops;
/* The libagentbus errors seen since the last call (" NAME=count ..."). */
void sc_bus_errors(FILE *out);

/* Runs one configuration: agent threads, a sampler of the simulators'
 * slot use (and the broker's queue), then waits for every call to end.
 * Fills RES (recs owned by RES). */
int sc_run(const sc_run_cfg_t *cfg, sc_result_t *res);

/* GET URL into a malloc'd NUL-terminated string (or NULL). POST when BODY. */
char *sc_http(const char *url, const char *body, long *status);

/* --- figures (scenario_report.c) --------------------------------------------- */
typedef struct {
    double done_per_s, repeat_pct, err_pct;
    double done2_per_s;          /* over the second half of the window (closer to steady state) */
    double ip[3], bp[3], tt[2];  /* interactive, batch p50/p95/p99; TTFT p50/p95 (sim s) */
    double add95, floor95;       /* batch: p95 of (latency - unloaded GPU time); p95 of the
                                    latter */
    double all95;                /* p95 of every completed call, interactive and batch */
    double hit_pct;              /* bus: (cache hits + coalesced) / issued */
    uint64_t ok, errs, lost, err_by[SC_E_N];
} sc_sum_t;

/* Summary of one run; times in simulated seconds (wall x SCALE). */
void sc_summarise(const sc_result_t *r, double scale, sc_sum_t *s);
/* The table (header and one row per run). */
void sc_table(FILE *f, const sc_result_t *res, int n, double scale);
extern const char *const sc_csv_hdr;
void sc_csv_row(FILE *f, const sc_result_t *r, const sc_sum_t *s, double scale);
/* OUT/LABEL.cdf and OUT/LABEL.rate of a closed-loop run, for the plot. */
void sc_plot_data(const char *out, const sc_result_t *r, double scale);
/* Writes OUT/scenario.gp (and OUT/LABEL.open) and runs gnuplot:
 * OUT/scenario.png. 0 or -1. */
int sc_plot(const char *out, const sc_result_t *res, int n, double scale);
/* Prints the targets as the runs met them or not. */
void sc_targets(const sc_result_t *res, int n, double scale, int agents);

/* Scale part. */
typedef struct {
    const char *self, *broker_bin, *worker_bin;
    int agents;              /* 1000 */
    int per_proc;            /* clients per child process */
    int lone;                /* lone requests per measurement */
    double active_s;
    const char *bopt[8];     /* --broker-opt FLAG, VALUE pairs, NULL-ended */
} sc_scale_cfg_t;
int sc_scale(const sc_scale_cfg_t *cfg, FILE *csv);
/* Stops whatever the scale part still runs (an interrupted run); returns
 * how many of its processes crashed (bu_reaped), counted since the last
 * call. */
int sc_scale_cleanup(void);
/* Child modes (the program execs itself). */
int sc_scale_child(int argc, char **argv);
int sc_bare_router(const char *ep);

#endif
