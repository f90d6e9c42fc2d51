/*
 * http.h - one HTTP request's state, shared by the HTTP glue (http.c), the
 * inference endpoints (infer.c) and the plain endpoints (routes.c).
 */
#ifndef SIM_HTTP_H
#define SIM_HTTP_H

#include "sim.h"

#include <microhttpd.h>

typedef enum {
    R_NOTFOUND = 0, R_ROOT, R_GENERATE, R_CHAT, R_EMBED, R_TAGS, R_PS, R_VERSION,
    R_SIM_FAULTS, R_SIM_STATS, R_SIM_STATS_RESET,
} sim_route_t;

typedef struct {
    sim_t *s;
    struct MHD_Connection *conn;
    sim_route_t route;
    bool post;
    int status;              /* of the response queued, for the log */
    char *body;
    size_t len, cap;
    bool too_big;
    int client_fd;
    /* inference */
    bool inference;          /* generate/chat/embed that reached the scheduler */
    bool server_closed;      /* we closed on purpose (drop, hang timeout) */
    bool shutdown;
    bool job_used;
    sim_job_t job;
    sim_draw_t draw;
    sim_gen_t gen;
    bool gen_init;
    bool stream, chat;
    bool length_limited;     /* num_predict given */
    char model_echo[160];
    int prompt_tokens;
    int64_t t_arrive, t_ready, t_prefill_end, t_end;
    int64_t t_token_due; /* when the last token made was due (infer.c) */
    int phase;               /* 0 before prefill, 1 tokens, 2 ended */
    char *pending;
    size_t pend_len, pend_off;
    /* tool calling (tools.c) */
    json_t *tool_calls;      /* the answer is these calls (no text) */
    bool tool_calls_sent;    /* streamed: the chunk carrying them went out */
    int embed_dims;          /* embed: dimensions asked (0 = the model's) */
    int think_words;         /* thinking words owed before the answer (think given) */
    int think_sent;          /* of which streamed or produced */
    char *tool_prefix;       /* the answer's text starts with this (a tool result) */
    /* logprobs.c */
    sim_lp_t lp;             /* logprobs, top_logprobs, context asked */
    int lp_pos;              /* tokens given an entry so far */
    json_t *lp_last;         /* streamed: the entry of the token just made */
    json_t *lp_all;          /* stream false: every token's entry */
    json_t *ctx;             /* a non-raw generate: its context so far */
} sim_req_t;

/* Queue a JSON (takes ownership of J) or text response; count the status. */
enum MHD_Result sim_http_json(sim_req_t *r, int status, json_t *j);
enum MHD_Result sim_http_text(sim_req_t *r, int status, const char *text);
enum MHD_Result sim_http_error(sim_req_t *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* infer.c */
enum MHD_Result sim_infer_handle(sim_req_t *r);
void sim_infer_finish(sim_req_t *r, enum MHD_RequestTerminationCode toe);

/* routes.c */
enum MHD_Result sim_routes_handle(sim_req_t *r);

#endif
