/*
 * gw_http.c - libmicrohttpd glue: request bodies (bounded), the suspend /
 * resume hand-off with the bus thread, streamed bodies written chunk by
 * chunk as events arrive, and the completion hook that cancels the bus
 * request of a client that left early.
 */
#include "gw_http.h"
#include "agentbus.h"
#include "gw_framing.h"
#include "gw_mhdlog.h"
#include "tl_clock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static const struct {
    const char *path;
    gw_route_t r;
} s_map[] = {
    {"/", GW_R_ROOT},
    {"/api/generate", GW_R_GENERATE},
    {"/api/chat", GW_R_CHAT},
    {"/api/embed", GW_R_EMBED},
    {"/api/embeddings", GW_R_EMBEDDINGS},
    {"/api/tags", GW_R_TAGS},
    {"/api/ps", GW_R_PS},
    {"/api/show", GW_R_SHOW},
    {"/api/version", GW_R_VERSION},
    {"/v1/chat/completions", GW_R_OAI_CHAT},
    {"/v1/completions", GW_R_OAI_COMPLETIONS},
    {"/v1/embeddings", GW_R_OAI_EMBEDDINGS},
    {"/v1/models", GW_R_OAI_MODELS},
    {"/metrics", GW_R_METRICS},
    {"/healthz", GW_R_HEALTHZ},
};

static gw_route_t s_route(const char *url)
{
    for (size_t i = 0; i < sizeof s_map / sizeof s_map[0]; i++)
        if (strcmp(url, s_map[i].path) == 0)
            return s_map[i].r;
    return GW_R_NOTFOUND;
}

const char *gw_route_path(gw_route_t r)
{
    for (size_t i = 0; i < sizeof s_map / sizeof s_map[0]; i++)
        if (s_map[i].r == r)
            return s_map[i].path;
    return "other";
}

/* --- responses ------------------------------------------------------------------ */
static void s_count(gw_conn_t *c, unsigned status)
{
    unsigned cls = status / 100;
    atomic_fetch_add(&c->g->m.status[cls >= 1 && cls <= 5 ? cls : 0], 1);
}

static enum MHD_Result s_queue(gw_conn_t *c, unsigned status, struct MHD_Response *resp)
{
    if (!resp)
        return MHD_NO;
    enum MHD_Result rc = MHD_queue_response(c->conn, status, resp);
    MHD_destroy_response(resp);
    s_count(c, status);
    return rc;
}

enum MHD_Result gw_reply_text(gw_conn_t *c, unsigned status, const char *type, const char *text)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);
    if (r)
        MHD_add_response_header(r, "Content-Type", type);
    return s_queue(c, status, r);
}

enum MHD_Result gw_reply_not_allowed(gw_conn_t *c, const char *allow)
{
    static const char text[] = "405 method not allowed";
    struct MHD_Response *r =
        MHD_create_response_from_buffer(sizeof text - 1, (void *)text, MHD_RESPMEM_PERSISTENT);
    if (r) {
        MHD_add_response_header(r, "Content-Type", "text/plain; charset=utf-8");
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    }
    return s_queue(c, 405, r);
}

/* J as the body, with one more header NAME: VALUE when NAME is set. */
static enum MHD_Result s_json(gw_conn_t *c, unsigned status, json_t *j, const char *name,
                              const char *value)
{
    char *txt = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!txt)
        return MHD_NO;
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(txt), txt, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(txt);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "application/json; charset=utf-8");
    if (name)
        MHD_add_response_header(r, name, value);
    return s_queue(c, status, r);
}

enum MHD_Result gw_reply_json(gw_conn_t *c, unsigned status, json_t *j)
{
    return s_json(c, status, j, NULL, NULL);
}

/* The body of an error in C's dialect. */
static json_t *s_error_body(const gw_conn_t *c, unsigned status, const char *text)
{
    if (!c->openai)
        return json_pack("{s:s}", "error", text);
    const char *type = status == 404 || status == 400 || status == 413 || status == 401
                           ? "invalid_request_error"
                       : status == 403                  ? "permission_error"
                       : status == 503 || status == 429 ? "server_overloaded"
                                                        : "api_error";
    json_t *code = status == 404   ? json_string("model_not_found")
                   : status == 401 ? json_string("invalid_api_key")
                   : strncmp(text, "server busy", 11) == 0 ? json_string("server_busy")
                                   : json_null();
    return json_pack("{s:{s:s, s:s, s:n, s:o}}", "error", "message", text, "type", type,
                     "param", "code", code);
}

enum MHD_Result gw_reply_error(gw_conn_t *c, unsigned status, const char *text)
{
    /* Every 503 here is passing (broker unreachable, no worker, busy): say
     * when to come back, as the shed refusals do. */
    if (status == 503)
        return s_json(c, status, s_error_body(c, status, text), "Retry-After", "1");
    return gw_reply_json(c, status, s_error_body(c, status, text));
}

/* 401 for a request without a known API key (RFC 6750's challenge). */
static enum MHD_Result s_unauthorized(gw_conn_t *c, int given)
{
    atomic_fetch_add(&c->g->keys.unauthorized, 1);
    const char *text = given ? "unauthorized: the API key is not valid for this gateway"
                             : "unauthorized: an API key is required (header "
                               "'Authorization: Bearer KEY')";
    return s_json(c, 401, s_error_body(c, 401, text), MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                  "Bearer realm=\"agentbus-gateway\"");
}

unsigned gw_http_status(int st)
{
    switch (st) {
    case AB_OK: return 200;
    case AB_EMODEL: case AB_ENOTFOUND: return 404;
    case AB_EDENIED: return 403;
    case AB_EBADREQUEST: case AB_EINVAL: case AB_EMALFORMED: return 400;
    case AB_EPAYLOADSIZE: case AB_ETOOLARGE: return 413;
    case AB_EBUSY: case AB_EBACKENDBUSY: case AB_ENOSERVICE: case AB_EDISCONNECTED:
    case AB_ESTOPPED: return 503;
    case AB_EDEADLINE: case AB_ETIMEOUT: return 504;
    case AB_EBACKEND: case AB_EWORKERLOST: return 502;
    default: return 500;
    }
}

void gw_error_text(const gw_conn_t *c, int st, const char *detail, char *buf, size_t cap)
{
    if (st == AB_EMODEL) /* Ollama's own words, which its clients show */
        snprintf(buf, cap, "model \"%s\" not found, try pulling it first", c->model);
    else if (detail && *detail)
        snprintf(buf, cap, "%s", detail);
    else
        snprintf(buf, cap, "%s", ab_strerror(st));
}

/* --- the bus hand-off ---------------------------------------------------------- */
/* Whether C can answer (or write) now. Caller holds call->lock. */
static int s_ready(const gw_conn_t *c)
{
    const gw_call_t *k = c->call;
    if (c->phase == GW_P_WAIT && c->wait_final)
        return k->final;
    return k->head != NULL || k->final;
}

static int s_wake(gw_call_t *k)
{
    gw_conn_t *c = k->owner;
    if (!c || !c->suspended || !s_ready(c))
        return 0;
    c->suspended = 0;
    return 1;
}

/* Called by the bus thread (or the lookup thread, which then rings the
 * bus thread to run the shard) after s_wake, without the call's lock: the
 * connection is still suspended, so it and C live until it is resumed.
 * Once resumed, an HTTP thread (--threads) may answer, complete and free C
 * at once: nothing of C is read after MHD_resume_connection. */
static void s_resume(gw_call_t *k)
{
    gw_conn_t *c = k->owner;
    atomic_fetch_or(&c->g->resumed, 1ULL << c->shard); /* run that shard this turn */
    MHD_resume_connection(c->conn);
}

enum MHD_Result gw_call_bus(gw_conn_t *c, gw_call_t *k)
{
    k->wake = s_wake;
    k->resume = s_resume;
    k->owner = c;
    k->ident = c->ident;
    c->call = k;
    c->phase = GW_P_WAIT;
    atomic_fetch_add(&c->g->m.in_flight, 1);
    pthread_mutex_lock(&k->lock);
    if (gw_bus_submit(c->g->bus, k) != 0) {
        pthread_mutex_unlock(&k->lock);
        return gw_reply_error(c, 503, "gateway is stopping");
    }
    if (s_ready(c)) {
        pthread_mutex_unlock(&k->lock);
        return gw_routes_handle(c, "");
    }
    /* A suspended connection is not watched by libmicrohttpd: the bus
     * thread watches it for a hang-up instead. */
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    gw_bus_watch(c->g->bus, k, ci ? ci->connect_fd : -1);
    c->suspended = 1;
    MHD_suspend_connection(c->conn);
    pthread_mutex_unlock(&k->lock);
    return MHD_YES;
}

/* X-Agentbus-Timeout-Ms into *MS, capped at --max-timeout-ms (0: not
 * given). 0, or -1 when it is not a number of ms > 0. */
static int s_header_timeout(const gw_conn_t *c, int *ms)
{
    const char *t = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, "X-Agentbus-Timeout-Ms");
    *ms = 0;
    if (!t)
        return 0;
    char *end = NULL;
    long long v = strtoll(t, &end, 10);
    if (end == t || *end || v <= 0)
        return -1;
    *ms = v > c->g->cfg.max_timeout_ms ? c->g->cfg.max_timeout_ms : (int)v;
    return 0;
}

/* The request's deadline in ms: X-Agentbus-Timeout-Ms, else --timeout-ms
 * (also for an unreadable value: that request is refused with a 400 once
 * admitted, s_call_headers). */
static int s_timeout_ms(const gw_conn_t *c)
{
    int ms;
    return s_header_timeout(c, &ms) == 0 && ms ? ms : c->g->cfg.timeout_ms;
}

/* The request's deadline, priority and cache control from its headers. */
typedef struct {
    int timeout_ms;       /* 0: not given */
    int has_priority;
    uint32_t priority;
    uint32_t cache_flags;
} s_hdrs_t;

/* X-Agentbus-Cache: comma- or space-separated on, off, no-read, no-store. */
static int s_cache_header(const char *v, uint32_t *flags)
{
    char buf[128];
    if (strlen(v) >= sizeof buf)
        return -1;
    snprintf(buf, sizeof buf, "%s", v);
    int any = 0;
    for (char *save = NULL, *t = strtok_r(buf, ", \t", &save); t; t = strtok_r(NULL, ", \t", &save)) {
        if (!strcasecmp(t, "off"))
            *flags = (*flags | AB_CACHE_NO_READ | AB_CACHE_NO_STORE) & ~(uint32_t)AB_CACHE_ON;
        else if (!strcasecmp(t, "no-read"))
            *flags |= AB_CACHE_NO_READ;
        else if (!strcasecmp(t, "no-store"))
            *flags |= AB_CACHE_NO_STORE;
        else if (!strcasecmp(t, "on"))
            *flags |= AB_CACHE_ON;
        else
            return -1;
        any = 1;
    }
    return any ? 0 : -1;
}

/* Reads the X-Agentbus-* headers into H; NULL, or the 400 text of the
 * first bad one (a value the gateway cannot read is refused, not ignored:
 * a caller who asked for a deadline or "cache off" must not silently get
 * the default). */
static const char *s_call_headers(gw_conn_t *c, s_hdrs_t *h)
{
    memset(h, 0, sizeof *h);
    if (s_header_timeout(c, &h->timeout_ms) != 0)
        return "invalid X-Agentbus-Timeout-Ms: want a number of milliseconds > 0";
    /* A lane name (interactive, normal, batch) or a number; a larger number
     * is capped at 255. */
    const char *pr = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, "X-Agentbus-Priority");
    if (pr) {
        char *end = NULL;
        long long n = strtoll(pr, &end, 10);
        if (ab_priority_parse(pr, &h->priority) == AB_OK)
            h->has_priority = 1;
        else if (end != pr && !*end && n > 255)
            h->priority = 255u, h->has_priority = 1;
        else
            return "invalid X-Agentbus-Priority: want interactive, normal, batch or 0..255";
    }
    const char *cf = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, "X-Agentbus-Cache");
    if (cf && s_cache_header(cf, &h->cache_flags) != 0)
        return "invalid X-Agentbus-Cache: want on, off, no-read or no-store";
    return NULL;
}

enum MHD_Result gw_call_infer(gw_conn_t *c, gw_req_t *req)
{
    s_hdrs_t h;
    const char *bad = s_call_headers(c, &h);
    if (bad) {
        gw_req_free(req);
        return gw_reply_error(c, 400, bad);
    }
    gw_call_t *k = gw_call_new(GW_OP_REQUEST);
    if (!k) {
        gw_req_free(req);
        return MHD_NO;
    }
    k->pb = req->pb;
    k->pb_len = req->pb_len;
    req->pb = NULL;
    snprintf(k->model, sizeof k->model, "%s", req->model);
    snprintf(c->model, sizeof c->model, "%s", req->model);
    c->kind = req->kind;
    c->stream = req->stream;
    c->wait_final = !req->stream;
    /* The deadline counts from when the client sent the request, so the
     * time it waited before the gateway read it is taken off: the broker
     * then gives up when the client does, not later. */
    int ms = h.timeout_ms ? h.timeout_ms : c->g->cfg.timeout_ms;
    k->timeout_ms = ms > (int)c->age_ms ? ms - (int)c->age_ms : 1;
    if (h.has_priority)
        k->priority = h.priority;
    k->cache_flags |= h.cache_flags;
    return gw_call_bus(c, k);
}

/* --- large bodies, parsed off this thread ---------------------------------------- */
/* On the offload thread, while C is suspended: nothing else touches C
 * until it is resumed, and after MHD_resume_connection an HTTP thread
 * (--threads N) may answer and free it at once, so nothing of C is read
 * after. */
static void s_parse_job(gw_job_t *j)
{
    gw_conn_t *c = (gw_conn_t *)(void *)((char *)j - offsetof(gw_conn_t, job));
    gw_prep_t *p = c->prep;
    p->rc = gw_routes_prepare(c, &p->req, p->err, sizeof p->err);
    gw_t *g = c->g;
    atomic_fetch_or(&g->resumed, 1ULL << c->shard); /* run that shard next turn */
    MHD_resume_connection(c->conn);
    gw_bus_wake(g->bus); /* --threads 0: the bus thread runs libmicrohttpd */
}

int gw_http_offload(gw_conn_t *c)
{
    if (!c->g->offload || c->len < GW_OFFLOAD_BYTES)
        return 0;
    c->prep = calloc(1, sizeof *c->prep);
    if (!c->prep)
        return 0; /* parsed here, as before */
    c->job.run = s_parse_job;
    /* Suspended before the job can resume it. */
    MHD_suspend_connection(c->conn);
    gw_offload_submit(c->g->offload, &c->job);
    return 1;
}

/* --- streaming ----------------------------------------------------------------- */
/* The buffer grows by doubling: a stream appends one line per token. */
void gw_out_append(gw_conn_t *c, const char *s, size_t len)
{
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_len + len + 1 > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 512;
        while (cap < c->out_len + len + 1)
            cap *= 2;
        char *p = realloc(c->out, cap);
        if (!p)
            return;
        c->out = p;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, s, len);
    c->out_len += len;
}

/* libmicrohttpd asks for the next bytes of a stream. Every event that has
 * arrived goes out in this write (up to MAX bytes), not one event per
 * write: a cached answer replayed by the broker arrives as all its chunks
 * at once, and writing them one send(2) each (300 for a long answer) was
 * the largest cost of a streamed call under load. A chunk that arrives
 * alone still leaves at once. */
static ssize_t s_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    gw_conn_t *c = cls;
    gw_call_t *k = c->call;
    while (!c->eos && c->out_len - c->out_off < max) {
        pthread_mutex_lock(&k->lock);
        gw_event_t *e = gw_call_pop(k);
        if (!e) {
            if (c->out_off < c->out_len) { /* send what is rendered */
                pthread_mutex_unlock(&k->lock);
                break;
            }
            if (k->final) { /* the final event was lost (out of memory) */
                pthread_mutex_unlock(&k->lock);
                return MHD_CONTENT_READER_END_WITH_ERROR;
            }
            /* Nothing yet: step out of the event loop until the bus thread
             * has the next chunk (s_wake / s_resume). */
            c->suspended = 1;
            MHD_suspend_connection(c->conn);
            pthread_mutex_unlock(&k->lock);
            return 0;
        }
        pthread_mutex_unlock(&k->lock);
        gw_routes_render(c, e);
        free(e);
        atomic_fetch_add(&c->g->m.chunks, 1);
    }
    if (c->out_off == c->out_len)
        return MHD_CONTENT_READER_END_OF_STREAM; /* eos, all written */
    size_t n = c->out_len - c->out_off;
    if (n > max)
        n = max;
    memcpy(buf, c->out + c->out_off, n);
    c->out_off += n;
    return (ssize_t)n;
}

enum MHD_Result gw_stream_start(gw_conn_t *c, const char *type)
{
    c->phase = GW_P_STREAM;
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, s_read,
                                                                c, NULL);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    if (c->openai) {
        MHD_add_response_header(r, "Cache-Control", "no-cache");
    }
    return s_queue(c, 200, r);
}

/* --- libmicrohttpd callbacks ------------------------------------------------------ */
static enum MHD_Result s_body(gw_conn_t *c, const char *upload, size_t *size)
{
    size_t max = c->g->cfg.max_body_bytes;
    if (!c->too_big && c->len + *size > max)
        c->too_big = 1;
    if (!c->too_big) {
        if (c->len + *size + 1 > c->cap) {
            size_t cap = (c->len + *size + 1) * 2;
            if (cap > max + 1)
                cap = max + 1;
            char *p = realloc(c->body, cap);
            if (!p)
                return MHD_NO;
            c->body = p;
            c->cap = cap;
        }
        memcpy(c->body + c->len, upload, *size);
        c->len += *size;
        c->body[c->len] = '\0';
    }
    *size = 0; /* dropped when too big: memory stays bounded */
    return MHD_YES;
}

static gw_conn_t *s_conn_new(gw_t *g, struct MHD_Connection *conn, const char *url)
{
    gw_conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->g = g;
    c->conn = conn;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_DAEMON);
    for (unsigned i = 0; ci && i < g->n_mhd; i++)
        if (g->mhd[i] == ci->daemon)
            c->shard = i;
    c->route = s_route(url);
    c->openai = strncmp(url, "/v1/", 4) == 0;
    c->t0_us = tl_now_us();
    atomic_fetch_add(&g->m.requests[c->route], 1);
    return c;
}

/* --- intake: what is refused before its body is read ---------------------------- */
const char *gw_shed_name(gw_shed_t r)
{
    static const char *names[] = {"busy", "queue", "deadline", "gone"};
    return (unsigned)r < sizeof names / sizeof names[0] ? names[r] : "other";
}

/* The routes whose requests go over the bus (and wait for it). */
static int s_bus_route(gw_route_t r)
{
    return r != GW_R_NOTFOUND && r != GW_R_ROOT && r != GW_R_VERSION && r != GW_R_METRICS &&
           r != GW_R_HEALTHZ;
}

/* Refuses request C, counted under WHY: 503 "server busy" with Retry-After
 * (Ollama answers its full queue with a 503 "server busy" too), 504 for a
 * deadline already passed. */
static enum MHD_Result s_shed_reply(gw_conn_t *c, gw_shed_t why, unsigned age_ms)
{
    atomic_fetch_add(&c->g->m.shed[why], 1);
    char msg[256];
    unsigned status = 503;
    if (why == GW_SHED_DEADLINE) {
        status = 504;
        snprintf(msg, sizeof msg, "deadline passed: the request waited %u ms before the "
                 "gateway could read it", age_ms);
    } else if (why == GW_SHED_QUEUE) {
        snprintf(msg, sizeof msg, "server busy, please try again: the request waited %u ms "
                 "before the gateway could read it (--max-queue-ms %u)", age_ms,
                 c->g->cfg.max_queue_ms);
    } else {
        snprintf(msg, sizeof msg, "server busy, please try again: %u requests in progress "
                 "(--max-in-flight)", c->g->cfg.max_in_flight);
    }
    return s_json(c, status, s_error_body(c, status, msg), "Retry-After", "1");
}

/* Admission of a bus-route request, at its headers, before its body is
 * read or parsed: under overload the gateway spends on a refusal an accept,
 * a header parse and one small write, not the JSON, the bus and the reply
 * of a call its client will have given up on. What the kernel says of the
 * socket (TCP_INFO, one call) tells how long ago the request's last bytes
 * arrived (the time it waited for this thread: the listen backlog and
 * earlier requests; for one pipelined behind another on its connection,
 * since that one's answer went out) and whether the client already closed. Returns 1 when C
 * was refused (*RES for the access handler). */
static int s_shed(gw_conn_t *c, enum MHD_Result *res)
{
    gw_t *g = c->g;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    if (ci && getsockopt(ci->connect_fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0) {
        if (ti.tcpi_state == TCP_CLOSE_WAIT || ti.tcpi_state == TCP_CLOSE) {
            atomic_fetch_add(&g->m.shed[GW_SHED_GONE], 1); /* no one to answer */
            *res = MHD_NO;
            return 1;
        }
        /* A request sent behind another on its connection (pipelined)
         * could not be read before that one's answer went out: it waited
         * for its connection, not for the gateway, so its age starts at
         * that answer's last bytes when they are later than its own.
         * Those are the socket's last send (a response; for a new
         * connection the handshake, before any request bytes). */
        c->age_ms = ti.tcpi_last_data_recv < ti.tcpi_last_data_sent ? ti.tcpi_last_data_recv
                                                                     : ti.tcpi_last_data_sent;
    }
    if ((int)c->age_ms >= s_timeout_ms(c)) {
        *res = s_shed_reply(c, GW_SHED_DEADLINE, c->age_ms);
        return 1;
    }
    if (g->cfg.max_queue_ms && c->age_ms >= g->cfg.max_queue_ms) {
        *res = s_shed_reply(c, GW_SHED_QUEUE, c->age_ms);
        return 1;
    }
    if (g->cfg.max_in_flight &&
        atomic_fetch_add(&g->m.admitted, 1) >= g->cfg.max_in_flight) {
        atomic_fetch_sub(&g->m.admitted, 1);
        *res = s_shed_reply(c, GW_SHED_BUSY, c->age_ms);
        return 1;
    }
    if (!g->cfg.max_in_flight)
        atomic_fetch_add(&g->m.admitted, 1);
    c->admitted = 1;
    return 0;
}

/* With API keys, every route but "/", /healthz, /metrics and unknown paths
 * wants one: those say nothing of the models or the bus. */
static int s_needs_key(const gw_t *g, gw_route_t r)
{
    return g->keys.on && r != GW_R_ROOT && r != GW_R_HEALTHZ && r != GW_R_METRICS &&
           r != GW_R_NOTFOUND;
}

static enum MHD_Result s_access(void *cls, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *version, const char *upload,
                                size_t *upload_size, void **con_cls)
{
    gw_t *g = cls;
    gw_conn_t *c = *con_cls;
    if (!c) {
        gw_conns_headers_done(&g->conns, conn); /* the header deadline stops, the body's starts */
        c = s_conn_new(g, conn, url);
        if (!c)
            return MHD_NO;
        *con_cls = c;
        unsigned st;
        const char *bad = gw_framing_check(conn, version, &st);
        if (bad) { /* before anything reads the body: it cannot be delimited */
            c->too_big = 1; /* what comes is dropped, not buffered */
            return s_json(c, st, s_error_body(c, st, bad), MHD_HTTP_HEADER_CONNECTION, "close");
        }
        if (s_needs_key(g, c->route)) {
            const char *auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                           MHD_HTTP_HEADER_AUTHORIZATION);
            unsigned ident = 0;
            if (!gw_keys_authorize(&g->keys, auth, &ident))
                return s_unauthorized(c, auth != NULL);
            c->ident = ident;
        }
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > g->cfg.max_body_bytes) {
            c->too_big = 1;
            return gw_reply_error(c, 413, "request body too large");
        }
        enum MHD_Result res;
        if (s_bus_route(c->route) && s_shed(c, &res))
            return res;
        return MHD_YES;
    }
    if (*upload_size)
        return s_body(c, upload, upload_size);
    if (!c->body_in) { /* before a parse here or offloaded: the body deadline stops */
        c->body_in = 1;
        gw_conns_body_done(&g->conns, conn);
    }
    if (c->phase == GW_P_WAIT) { /* resumed: the bus has an answer */
        /* Or the call ended because its client hung up: there is no one
         * to answer, and the call is counted as cancelled, not as an
         * error (a 500 "cancelled" counted in 5xx and bus errors). */
        if (gw_call_gone(c->call))
            return MHD_NO;
        return gw_routes_handle(c, method);
    }
    if (c->too_big)
        return gw_reply_error(c, 413, "request body too large");
    return gw_routes_handle(c, method);
}

static void s_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                        enum MHD_RequestTerminationCode toe)
{
    (void)toe; /* an unfinished call is what counts: a client can leave after its end */
    gw_t *g = cls;
    gw_conns_request_done(&g->conns, conn); /* the next request's headers are due */
    gw_conn_t *c = *con_cls;
    if (!c)
        return;
    *con_cls = NULL;
    if (c->call) {
        gw_call_t *k = c->call;
        gw_bus_unwatch(g->bus, k); /* the socket closes after this hook */
        pthread_mutex_lock(&k->lock);
        int unfinished = !k->final;
        k->owner = NULL; /* no more wake-ups for this connection */
        pthread_mutex_unlock(&k->lock);
        if (unfinished) /* counted as cancelled; CANCEL reaches the worker and backend */
            gw_bus_cancel(g->bus, k);
        atomic_fetch_sub(&g->m.in_flight, 1);
        gw_call_unref(k);
    }
    if (c->admitted)
        atomic_fetch_sub(&g->m.admitted, 1);
    if (c->prep) { /* parsed, never used: the connection closed first */
        gw_req_free(&c->prep->req);
        free(c->prep);
    }
    uint64_t us = tl_now_us() - c->t0_us;
    static const uint64_t edge_ms[GW_LAT_BUCKETS] = {1, 2, 5, 10, 50, 100, 500, 1000, 5000, 30000};
    int b = 0;
    while (b < GW_LAT_BUCKETS && us > edge_ms[b] * 1000)
        b++;
    atomic_fetch_add(&g->m.lat_bucket[b], 1);
    atomic_fetch_add(&g->m.lat_sum_us, us);
    atomic_fetch_add(&g->m.lat_count, 1);
    free(c->body);
    free(c->out);
    free(c);
}

/* One shard's work. A resumed connection is ready inside libmicrohttpd
 * without making its epoll fd readable, so run while it says work is due
 * now; returns the ms until it wants to run again (-1: only when its fd is
 * readable). */
static int s_run_shard(struct MHD_Daemon *d)
{
    MHD_UNSIGNED_LONG_LONG to = 0;
    for (int i = 0; i < 8; i++) {
        MHD_run(d);
        if (MHD_get_timeout(d, &to) != MHD_YES)
            return -1;
        if (to > 0)
            break;
    }
    return to > 1000 ? 1000 : (int)to;
}

/* A new connection whose request waited in the listen backlog past
 * --max-queue-ms, for a bus route: refused before libmicrohttpd sees it,
 * with a fixed 503 in the dialect its path says, the request read and
 * dropped, the socket closed. Under overload the backlog is a FIFO that
 * the gateway otherwise works through at its own pace: every request then
 * waits the whole backlog and times out at its client however fast the
 * bus is (the collapse of docs/bench.md). This drains it at the cost of an
 * accept, a read, one write and a close. Returns 1 if FD was refused (and
 * closed). */
static int s_shed_early(gw_t *g, int fd)
{
    struct tcp_info ti;
    socklen_t tl = sizeof ti;
    char buf[4096];
    if (!g->cfg.max_queue_ms || getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) != 0 ||
        ti.tcpi_last_data_recv < g->cfg.max_queue_ms)
        return 0;
    ssize_t n = recv(fd, buf, 64, MSG_PEEK | MSG_DONTWAIT);
    char *sp = n > 0 ? memchr(buf, ' ', (size_t)n) : NULL;
    char *end = sp ? memchr(sp + 1, ' ', (size_t)(buf + n - sp - 1)) : NULL;
    if (!end)
        return 0; /* no request line yet, or a long one: libmicrohttpd reads it */
    *end = '\0';
    char *q = strchr(sp + 1, '?');
    if (q)
        *q = '\0';
    gw_route_t r = s_route(sp + 1);
    if (!s_bus_route(r))
        return 0; /* /healthz, /metrics, ... are answered whatever the load */
    atomic_fetch_add(&g->m.requests[r], 1);
    atomic_fetch_add(&g->m.shed[GW_SHED_QUEUE], 1);
    atomic_fetch_add(&g->m.status[5], 1);
    char body[320], resp[640];
    unsigned age = ti.tcpi_last_data_recv;
    if (strncmp(sp + 1, "/v1/", 4) == 0)
        snprintf(body, sizeof body, "{\"error\":{\"message\":\"server busy, please try again: "
                 "the request waited %u ms before the gateway could read it (--max-queue-ms "
                 "%u)\",\"type\":\"server_overloaded\",\"param\":null,\"code\":"
                 "\"server_busy\"}}", age, g->cfg.max_queue_ms);
    else
        snprintf(body, sizeof body, "{\"error\":\"server busy, please try again: the request "
                 "waited %u ms before the gateway could read it (--max-queue-ms %u)\"}", age,
                 g->cfg.max_queue_ms);
    int len = snprintf(resp, sizeof resp, "HTTP/1.1 503 Service Unavailable\r\nConnection: "
                       "close\r\nContent-Type: application/json; charset=utf-8\r\n"
                       "Retry-After: 1\r\nContent-Length: %zu\r\n\r\n%s", strlen(body), body);
    /* Read what came of the request first: closing with unread bytes
     * would send a reset, which may destroy the answer at the client. */
    for (int k = 0; k < 16 && recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0; k++)
        ;
    if (send(fd, resp, (size_t)len, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        /* the client left: nothing to tell */
    }
    shutdown(fd, SHUT_WR);
    close(fd);
    return 1;
}

/* Every shard is full: the connection waiting longest for its headers is
 * shut down and its shard run, so its slot is free for a new one
 * (gw_conns_evict). Returns that shard, or G->n_mhd if none has room. */
static unsigned s_evict(gw_t *g)
{
    struct MHD_Daemon *d = gw_conns_evict(&g->conns, tl_now_us(), GW_EVICT_MIN_MS * 1000ull);
    for (unsigned s = 0; d && s < g->n_mhd; s++) {
        if (g->mhd[s] != d)
            continue;
        s_run_shard(d); /* reads the end of the socket and closes it */
        const union MHD_DaemonInfo *di =
            MHD_get_daemon_info(d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
        return di && di->num_connections < g->per_shard ? s : g->n_mhd;
    }
    return g->n_mhd;
}

/* New connections (--threads 0), each handed to a shard with room, round
 * robin; returns the shards that got one. The gateway accepts them itself
 * because the shards sharing the listening socket were all woken by each
 * new connection, and each then tried accept() in vain: 64 shards (at
 * --max-connections 8192 and more) made that most of a short call's cost
 * under load. At most 256 a turn (the socket is level-triggered: the rest
 * come next turn), so answers to calls in flight are not held behind a
 * flood of new ones. With every shard full the connection is closed, as
 * libmicrohttpd did at its limit. */
static uint64_t s_accept(gw_t *g)
{
    uint64_t got = 0;
    for (int i = 0, shed = 0; i < 256 && shed < 4096; i++) {
        struct sockaddr_in sa;
        socklen_t len = sizeof sa;
        int fd = accept4(g->lfd, (struct sockaddr *)&sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            break;
        if (s_shed_early(g, fd)) {
            i--, shed++; /* refusals are cheap: they do not take the turn's budget */
            continue;
        }
        unsigned s = g->next_shard, k = 0;
        for (; k < g->n_mhd; k++, s = (s + 1) % g->n_mhd) {
            const union MHD_DaemonInfo *di =
                MHD_get_daemon_info(g->mhd[s], MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
            if (di && di->num_connections < g->per_shard)
                break;
        }
        if (k == g->n_mhd && (s = s_evict(g)) == g->n_mhd) {
            close(fd);
            continue;
        }
        g->next_shard = (s + 1) % g->n_mhd;
        if (MHD_add_connection(g->mhd[s], fd, (struct sockaddr *)&sa, len) == MHD_YES)
            got |= 1ULL << s; /* it closed FD otherwise */
    }
    return got;
}

/* libmicrohttpd's work, on the bus thread (--threads 0): the shards whose
 * epoll fd is readable, that had a connection resumed or added, or whose
 * timers are due; the others are not touched. Returns the ms until one
 * wants to run again (-1: none until I/O). */
static int s_run_http(void *arg)
{
    gw_t *g = arg;
    struct epoll_event ev[GW_MAX_SHARDS + 1];
    int n = epoll_wait(g->ep_fd, ev, GW_MAX_SHARDS + 1, 0);
    uint64_t run = atomic_exchange(&g->resumed, 0);
    for (int i = 0; i < n; i++)
        run |= ev[i].data.u32 == GW_MAX_SHARDS ? s_accept(g) : 1ULL << ev[i].data.u32;
    uint64_t now = tl_now_us();
    int wait = gw_conns_reap(&g->conns, now); /* the sockets it shuts down wake their shard */
    for (unsigned s = 0; s < g->n_mhd; s++) {
        if ((run >> s & 1) || g->due_us[s] <= now) {
            int to = s_run_shard(g->mhd[s]);
            g->due_us[s] = to < 0 ? UINT64_MAX : now + (uint64_t)to * 1000;
        }
        if (g->due_us[s] != UINT64_MAX) {
            uint64_t left = g->due_us[s] > now ? (g->due_us[s] - now + 999) / 1000 : 0;
            if (wait < 0 || left < (uint64_t)wait)
                wait = (int)left;
        }
    }
    return wait;
}

/* The listening socket: the pool's daemon's (--threads N), else the
 * gateway's own, accepted by s_accept. */
static int s_listen(gw_t *g)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)g->cfg.port);
    if (inet_pton(AF_INET, g->cfg.host, &sa.sin_addr) != 1) {
        fprintf(stderr, "agentbus-gateway: --listen wants an IPv4 address, got '%s'\n",
                g->cfg.host);
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    socklen_t len = sizeof sa;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, SOMAXCONN) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        fprintf(stderr, "agentbus-gateway: cannot listen on %s:%d: %s\n", g->cfg.host,
                g->cfg.port, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    g->cfg.port = ntohs(sa.sin_port);
    return fd;
}

/* A daemon on LFD (-1: none, connections come by MHD_add_connection). */
static struct MHD_Daemon *s_daemon(gw_t *g, unsigned flags, int lfd, unsigned limit)
{
    unsigned pool = g->cfg.threads;
    struct MHD_OptionItem opts[] = {
        {MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)gw_mhdlog, NULL}, /* first: libmicrohttpd says so */
        {MHD_OPTION_CONNECTION_LIMIT, (intptr_t)limit, NULL},
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)s_completed, g},
        {MHD_OPTION_CONNECTION_TIMEOUT, (intptr_t)g->cfg.idle_timeout_s, NULL},
        {MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)gw_conns_notify, &g->conns},
        {pool ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, (intptr_t)pool, NULL},
        {MHD_OPTION_END, 0, NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    if (lfd >= 0) /* in the first END's place when there is no pool */
        opts[pool ? 6 : 5] = (struct MHD_OptionItem){MHD_OPTION_LISTEN_SOCKET, lfd, NULL};
    else
        flags |= MHD_USE_NO_LISTEN_SOCKET;
    return MHD_start_daemon(flags, 0, NULL, NULL, s_access, g, MHD_OPTION_ARRAY, opts,
                            MHD_OPTION_END);
}

/* --threads 0: the shards, their epoll fds and the listening socket LFD
 * (taken) in G->ep_fd for the bus thread. */
static int s_start_shards(gw_t *g, unsigned flags, int lfd)
{
    unsigned max = g->cfg.max_connections;
    unsigned k = (max + GW_SHARD_CONNS - 1) / GW_SHARD_CONNS;
    if (k > GW_MAX_SHARDS)
        k = GW_MAX_SHARDS;
    g->per_shard = (max + k - 1) / k;
    g->lfd = lfd;
    g->ep_fd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.u32 = GW_MAX_SHARDS};
    if (g->ep_fd < 0 || epoll_ctl(g->ep_fd, EPOLL_CTL_ADD, lfd, &lev) != 0)
        return -1;
    for (unsigned s = 0; s < k; s++) {
        struct MHD_Daemon *d = s_daemon(g, flags, -1, g->per_shard);
        if (!d)
            return -1;
        g->mhd[g->n_mhd++] = d;
        g->due_us[s] = 0; /* run once at the first turn */
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_EPOLL_FD);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = s};
        if (!di || di->epoll_fd < 0 || epoll_ctl(g->ep_fd, EPOLL_CTL_ADD, di->epoll_fd, &ev) != 0)
            return -1;
    }
    return 0;
}

int gw_http_start(gw_t *g)
{
    g->ep_fd = g->lfd = -1;
    gw_conns_init(&g->conns, g->cfg.header_timeout_ms, g->cfg.body_timeout_ms);
    g->offload = gw_offload_new();
    int lfd = g->offload ? s_listen(g) : -1;
    if (lfd < 0) {
        gw_offload_destroy(&g->offload);
        return -1;
    }
    /* --threads 0 (the default): HTTP runs on the bus thread, which polls
     * the shards' epoll fds next to the bus handle; a call then costs two
     * thread wake-ups less (HTTP thread <-> bus thread, each way). N > 0: a
     * pool of N HTTP threads handing calls to the bus thread. */
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    int rc = 0;
    if (g->cfg.threads) {
        g->mhd[0] = s_daemon(g, flags | MHD_USE_INTERNAL_POLLING_THREAD, lfd,
                             g->cfg.max_connections);
        g->n_mhd = g->mhd[0] ? 1 : 0;
        rc = g->mhd[0] ? 0 : -1;
        if (!rc) { /* the pool has no hook to reap from */
            rc = gw_conns_start_thread(&g->conns, lfd, g->cfg.max_connections);
            lfd = -1; /* the daemon owns it */
        }
    } else {
        rc = s_start_shards(g, flags, lfd);
        lfd = -1; /* G->lfd, closed by gw_http_stop */
    }
    if (lfd >= 0)
        close(lfd);
    if (rc != 0) {
        fprintf(stderr, "agentbus-gateway: cannot start libmicrohttpd on %s:%d\n", g->cfg.host,
                g->cfg.port);
        gw_http_stop(g);
        return -1;
    }
    if (!g->cfg.threads)
        gw_bus_serve(g->bus, g->ep_fd, s_run_http, g);
    return 0;
}

void gw_http_stop(gw_t *g)
{
    /* Its jobs resume their connections: libmicrohttpd refuses to stop
     * with one still suspended. */
    gw_offload_destroy(&g->offload);
    gw_conns_stop_thread(&g->conns); /* it reads the listening socket the daemon closes */
    for (unsigned s = 0; s < g->n_mhd; s++)
        MHD_stop_daemon(g->mhd[s]);
    g->n_mhd = 0;
    gw_conns_destroy(&g->conns); /* after the daemons: they notify it while closing */
    if (g->ep_fd >= 0)
        close(g->ep_fd);
    if (g->lfd >= 0)
        close(g->lfd);
    g->ep_fd = g->lfd = -1;
}
