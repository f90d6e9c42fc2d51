/*
 * gw_http.h - the gateway's HTTP side: libmicrohttpd with its internal
 * epoll thread pool. A request that waits for the bus is suspended
 * (MHD_suspend_connection) and resumed by the bus thread when an event
 * arrives, so a waiting or streaming client holds no thread.
 *
 * Shared by gw_http.c (server, access handler, connection life),
 * gw_intake.c (routes, admission), gw_body.c (request bodies), gw_call.c
 * (the bus hand-off, streaming), gw_reply.c (answers), gw_shards.c
 * (--threads 0), gw_routes.c (the Ollama and gateway routes) and
 * gw_openai.c (the OpenAI routes).
 */
#ifndef GW_HTTP_H
#define GW_HTTP_H

#include "gw_bus.h"
#include "gw_conns.h"
#include "gw_json.h"
#include "gw_keys.h"
#include "gw_offload.h"

#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *host;          /* --listen HOST:PORT */
    int port;
    const char *broker;        /* --broker ENDPOINT */
    const char *service;       /* --service (default "ollama") */
    const char *name;          /* --name: the gateway's agent name ("" none) */
    unsigned max_connections;  /* --max-connections */
    unsigned max_conns_per_ip; /* --max-connections-per-ip: from one client address (0: no
                                * limit) */
    size_t max_body_bytes;     /* --max-body-bytes: larger bodies get 413 */
    unsigned threads;          /* --threads: libmicrohttpd's pool */
    int timeout_ms;            /* --timeout-ms: default request deadline */
    int max_timeout_ms;        /* --max-timeout-ms: cap of X-Agentbus-Timeout-Ms */
    const char *version;       /* --ollama-version: what /api/version says */
    const char *api_keys;      /* --api-keys FILE (NULL: no key needed) */
    unsigned idle_timeout_s;   /* --idle-timeout-s: a silent client's connection closes */
    unsigned header_timeout_ms; /* --header-timeout-ms: a request's headers must be in by
                                 * then, from accept or the previous request (0: no limit) */
    unsigned body_timeout_ms;  /* --body-timeout-ms: a request's body must be in by then, from
                                * the end of its headers (0: no limit) */
    unsigned send_timeout_ms;  /* --send-timeout-ms: what was sent or queued for a client
                                * must be acknowledged by then (0: no limit) */
    size_t max_stream_buffer_bytes; /* --max-stream-buffer-bytes: a stream's bytes waiting
                                     * for its client past which it is cut (0: no bound) */
    unsigned max_in_flight;    /* --max-in-flight: bus-route requests held at once; more get 503 */
    unsigned max_queue_ms;     /* --max-queue-ms: a request that waited longer to be read gets
                                * 503 (0: no limit but its deadline) */
    int quiet;
} gw_config_t;

#define GW_LAT_BUCKETS 10

/* Why a request was refused at intake, before its body was read (the
 * labels of agentbus_gateway_shed_total). */
typedef enum {
    GW_SHED_BUSY = 0, /* --max-in-flight requests already held: 503 */
    GW_SHED_QUEUE,    /* waited past --max-queue-ms before the gateway read it: 503 */
    GW_SHED_DEADLINE, /* waited past its own deadline: 504 */
    GW_SHED_GONE      /* its client had already closed the connection: dropped */
} gw_shed_t;

/* The routes (gw_route_of). */
typedef enum {
    GW_R_NOTFOUND = 0, GW_R_ROOT, GW_R_GENERATE, GW_R_CHAT, GW_R_EMBED, GW_R_EMBEDDINGS,
    GW_R_TAGS, GW_R_PS, GW_R_SHOW, GW_R_VERSION, GW_R_OAI_CHAT, GW_R_OAI_COMPLETIONS,
    GW_R_OAI_EMBEDDINGS, GW_R_OAI_MODELS, GW_R_OAI_MODEL, GW_R_METRICS, GW_R_HEALTHZ,
    GW_R_COUNT /* not a route: how many there are */
} gw_route_t;

/* Counters for /metrics; atomics, bumped from any thread. */
typedef struct {
    atomic_ullong requests[GW_R_COUNT]; /* by route */
    atomic_ullong status[6];      /* 1xx..5xx by class; [0] other */
    atomic_ullong in_flight;
    atomic_ullong chunks;         /* streamed chunks written */
    atomic_ullong bus_errors;     /* requests the bus ended with an error */
    atomic_ullong admitted;       /* bus-route requests held (read, waiting, streaming) */
    atomic_ullong shed[4];        /* refused at intake, by gw_shed_t */
    atomic_ullong refused_per_ip; /* connections refused at --max-connections-per-ip */
    atomic_ullong stream_overflows; /* streams cut at --max-stream-buffer-bytes */
    atomic_ullong lat_bucket[GW_LAT_BUCKETS + 1];
    atomic_ullong lat_sum_us, lat_count;
} gw_metrics_t;

/* --threads 0 splits the connections over several libmicrohttpd daemons of
 * at most GW_SHARD_CONNS each (more if --max-connections needs more than
 * GW_MAX_SHARDS of them): libmicrohttpd walks every suspended connection of
 * a daemon each time it resumes any, so one daemon holding thousands of
 * waiting calls spent its thread walking them (docs/gateway.md). */
#define GW_SHARD_CONNS 128
#define GW_MAX_SHARDS 64 /* one bit each in gw_t.resumed */

typedef struct {
    gw_config_t cfg;
    gw_bus_t *bus;
    struct MHD_Daemon *mhd[GW_MAX_SHARDS]; /* --threads N > 0: one, with its pool */
    unsigned n_mhd;
    int ep_fd;                    /* --threads 0: the shards' epoll fds and lfd */
    int lfd;                      /* --threads 0: the listening socket, accepted here */
    unsigned per_shard;           /* --threads 0: connections a shard takes */
    unsigned next_shard;          /* --threads 0: where the next connection goes */
    uint64_t due_us[GW_MAX_SHARDS]; /* when a shard's timers want it run */
    atomic_ullong resumed;        /* shards with a connection resumed (bit mask) */
    gw_metrics_t m;
    gw_keys_t keys;               /* --api-keys; none loaded: no key needed */
    gw_conns_t conns;             /* --header-timeout-ms, --body-timeout-ms,
                                   * --send-timeout-ms */
    gw_offload_t *offload;        /* large bodies are parsed there (NULL: here) */
    atomic_ullong next_id;        /* OpenAI ids */
} gw_t;

typedef enum { GW_P_READ = 0, GW_P_WAIT, GW_P_STREAM } gw_phase_t;

/* Bodies at least this large are parsed on the offload thread: below it a
 * parse costs less than the two thread hand-offs (~3 ms for 64 KiB). */
#define GW_OFFLOAD_BYTES (64u * 1024)

/* The most bytes of a stream: false answer (its chunks and its reply
 * together) the gateway holds: twice what the Ollama worker sends as such
 * an answer (one reply of at most 8 MiB). Rendering it as JSON takes up to
 * ~18 times its size when it is all logprobs (60 MB of them peaked at
 * 1.09 GB), so this bound, not the bus's 64 MiB, is what keeps a call's
 * memory within a few hundred MB. */
#define GW_MAX_WHOLE_BYTES (16u * 1024 * 1024)

/* The outcome of a body parsed on the offload thread. */
typedef struct {
    int rc;          /* 0: REQ holds the bus request; -1: ERR says why (400) */
    gw_req_t req;
    char err[512];
} gw_prep_t;

/* One HTTP request's state (libmicrohttpd's per-request pointer). */
typedef struct gw_conn {
    gw_t *g;
    struct MHD_Connection *conn;
    unsigned shard;     /* index of its daemon in g->mhd */
    gw_route_t route;
    unsigned ident;     /* the bus connection its API key maps to (gw_call_t.ident) */
    int openai;
    char *body;
    size_t len, cap;
    int too_big;
    int body_in;        /* the body is all in: the body deadline stopped */
    int admitted;       /* counted in gw_metrics_t.admitted until it completes */
    unsigned age_ms;    /* how long the request waited before the gateway read it */
    uint64_t t0_us;
    /* bus call; phase and suspended are under call->lock once it exists */
    gw_call_t *call;
    gw_phase_t phase;
    int suspended;
    int stream;         /* chunks as they arrive */
    int wait_final;     /* GW_P_WAIT ends at the final event, not the first */
    gw_kind_t kind;
    int legacy;         /* /api/embeddings */
    char model[256];
    /* a large body's parse on the offload thread */
    gw_job_t job;
    gw_prep_t *prep;    /* its outcome, once done (the offload thread writes it while
                         * the connection is suspended) */
    /* streaming output */
    char *out;
    size_t out_len, out_off, out_cap;
    int eos;            /* everything written */
    int cut;            /* the stream was cut at its bound: the socket is shut down */
    /* OpenAI */
    char oai_id[64];
    long created;
    int oai_usage;      /* stream_options.include_usage */
    int oai_role_sent;
    int oai_b64;        /* embeddings: encoding_format "base64" */
    int oai_tool_calls; /* tool calls sent so far (a stream's delta index) */
    uint64_t prompt_tokens, eval_tokens;
} gw_conn_t;

/* The label of shed reason R in /metrics ("busy", "queue", ...). */
const char *gw_shed_name(gw_shed_t r);

/* The path of route R ("other" for GW_R_NOTFOUND). */
const char *gw_route_path(gw_route_t r);

/* Starts libmicrohttpd on cfg.host:cfg.port (0: any; G->cfg.port gets the
 * bound one). 0 or -1 (reason on stderr). */
int gw_http_start(gw_t *g);
void gw_http_stop(gw_t *g);

/* Responses (every one counts in the metrics). They return what the access
 * handler must return. JSON takes J's reference. */
enum MHD_Result gw_reply_json(gw_conn_t *c, unsigned status, json_t *j);
enum MHD_Result gw_reply_text(gw_conn_t *c, unsigned status, const char *type,
                              const char *text);
/* 405, with the methods the route takes in Allow (RFC 9110 wants it). */
enum MHD_Result gw_reply_not_allowed(gw_conn_t *c, const char *allow);
/* An error in the caller's API dialect: {"error":"..."} (Ollama) or
 * {"error":{"message":...}} (OpenAI). */
enum MHD_Result gw_reply_error(gw_conn_t *c, unsigned status, const char *text);
/* The HTTP status for a bus status (AB_EMODEL -> 404, ...). */
unsigned gw_http_status(int ab_status);
/* The client-facing text of a bus error (Ollama's wording for a missing
 * model). */
void gw_error_text(const gw_conn_t *c, int ab_status, const char *detail, char *buf, size_t cap);

/* Hands C's request to the bus and suspends the connection until it can
 * answer (first event when streaming, else the final one). */
enum MHD_Result gw_call_bus(gw_conn_t *c, gw_call_t *call);
/* Starts an inference call built from REQ (takes REQ's payload). */
enum MHD_Result gw_call_infer(gw_conn_t *c, gw_req_t *req);

/* Answers 200 with a body written by gw_routes_render as events arrive. */
enum MHD_Result gw_stream_start(gw_conn_t *c, const char *type);

/* gw_routes.c: the routes; called once the body is in (phase READ) and
 * again when a suspended call resumes (phase WAIT). */
enum MHD_Result gw_routes_handle(gw_conn_t *c, const char *method);
/* Renders one event of a streamed call into C->out (NDJSON line or SSE
 * event(s)); sets C->eos after the last. */
void gw_routes_render(gw_conn_t *c, const gw_event_t *e);

/* gw_openai.c */
/* C's OpenAI body as a bus request in *REQ (its kind in REQ->kind; sets
 * C's OpenAI fields: oai_usage, oai_b64): 0, or -1 with the 400 text in
 * ERR. Reads only C's body and route: may run on the offload thread. */
int gw_openai_prepare(gw_conn_t *c, gw_req_t *req, char *err, size_t cap);
/* Gives C's OpenAI answer its id and creation time. */
void gw_openai_named(gw_conn_t *c, gw_kind_t kind);
enum MHD_Result gw_openai_answer(gw_conn_t *c);
void gw_openai_render(gw_conn_t *c, const gw_event_t *e);
/* /v1/models from an /api/tags object (takes its reference). */
json_t *gw_openai_models(json_t *tags);
/* Text of C's body as JSON; NULL after answering 400 (in *res). */
json_t *gw_body_json(gw_conn_t *c, enum MHD_Result *res);
/* The same without answering: NULL with the 400 text in ERR. */
json_t *gw_body_parse(const gw_conn_t *c, char *err, size_t cap);
/* The bus request of inference route C's body (Ollama's or OpenAI's): 0,
 * or -1 with the 400 text in ERR. Reads only C's body and request fields:
 * runs on the offload thread for a large body. */
int gw_routes_prepare(gw_conn_t *c, gw_req_t *req, char *err, size_t cap);
/* Hands C's body, if it is at least GW_OFFLOAD_BYTES, to the offload
 * thread: C is suspended, its outcome goes in C->prep and the access
 * handler runs again. 1 if so; 0: parse it here. */
int gw_http_offload(gw_conn_t *c);
/* Appends LEN bytes to C->out. */
void gw_out_append(gw_conn_t *c, const char *s, size_t len);

/* --- between the HTTP files (the thread running the connection, unless
 * said otherwise) --- */
/* gw_intake.c */
/* The route of URL's path (GW_R_NOTFOUND if none). */
/* GET /v1/models/{model}: the prefix before the model's name */
#define GW_MODEL_PREFIX "/v1/models/"
gw_route_t gw_route_of(const char *url);
/* Whether route R's requests go over the bus (and are admitted at intake). */
int gw_route_on_bus(gw_route_t r);
/* Admission of bus-route request C at its headers: 0 admitted (counted in
 * admitted until it completes), 1 refused (answered or dropped; *RES for
 * the access handler). */
int gw_intake_admit(gw_conn_t *c, enum MHD_Result *res);
/* Frees C's --max-in-flight slot, if it holds one: at its completion, or
 * once libmicrohttpd has taken the last bytes of its answer (before they
 * can reach the client). Idempotent. */
void gw_intake_release(gw_conn_t *c);
/* --threads 0, at accept: 1 if FD's request waited past --max-queue-ms in
 * the listen backlog and was refused with a fixed 503 (FD closed), else 0. */
int gw_intake_shed_early(gw_t *g, int fd);

/* gw_reply.c */
/* Queues RESP (taken; NULL: MHD_NO) with STATUS, counted. */
enum MHD_Result gw_reply_queue(gw_conn_t *c, unsigned status, struct MHD_Response *resp);
/* J (taken) as the body, with one more header NAME: VALUE when NAME is set. */
enum MHD_Result gw_reply_json_hdr(gw_conn_t *c, unsigned status, json_t *j, const char *name,
                                  const char *value);
/* The body of an error in C's dialect (a new reference). */
json_t *gw_error_body(const gw_conn_t *c, unsigned status, const char *text);
/* 401 for a request without a known API key (GIVEN: it sent one). */
enum MHD_Result gw_reply_unauthorized(gw_conn_t *c, int given);
/* An admitted request's answer, held for libmicrohttpd's content reader
 * until it has taken the last block: then the slot is released and the
 * bytes freed (only s_body uses these; declared for tests/unit). MODE as
 * for MHD_create_response_from_buffer (MUST_FREE: DATA taken, also on
 * failure); NULL when out of memory. */
typedef struct gw_answer gw_answer_t;
gw_answer_t *gw_answer_new(gw_conn_t *c, const char *data, size_t len,
                           enum MHD_ResponseMemoryMode mode);
/* libmicrohttpd's MHD_ContentReaderCallback and its free callback. */
ssize_t gw_answer_read(void *cls, uint64_t pos, char *buf, size_t max);
void gw_answer_free(void *cls);
/* Whether B still holds its bytes. */
int gw_answer_held(const gw_answer_t *b);

/* gw_call.c */
/* C's deadline in ms: X-Agentbus-Timeout-Ms (capped), else --timeout-ms. */
int gw_call_timeout_ms(const gw_conn_t *c);

/* gw_body.c */
/* Appends *SIZE bytes of C's body (dropped past --max-body-bytes, C->too_big
 * set); *SIZE = 0. MHD_NO when out of memory. */
enum MHD_Result gw_body_append(gw_conn_t *c, const char *upload, size_t *size);

/* gw_http.c */
/* Counts a connection refused at --max-connections-per-ip and says so on
 * stderr (rate limited); SA its client's address, NULL if not known. Any
 * thread. */
void gw_refuse_per_ip(gw_t *g, const struct sockaddr_in *sa);
/* A daemon on LFD (-1: none, connections come by MHD_add_connection) taking
 * at most LIMIT connections. */
struct MHD_Daemon *gw_http_daemon(gw_t *g, unsigned flags, int lfd, unsigned limit);

/* gw_shards.c (--threads 0) */
/* The shards, their epoll fds and the listening socket LFD (taken) in
 * G->ep_fd for the bus thread: 0 or -1. */
int gw_shards_start(gw_t *g, unsigned flags, int lfd);
/* One turn of HTTP work on the bus thread (gw_bus_serve's hook, ARG the
 * gw_t): returns the ms until it wants to run again (-1: none until I/O). */
int gw_shards_run(void *arg);

#endif
