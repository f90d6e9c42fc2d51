/*
 * gw_call.c - a request's bus call: the X-Agentbus-* headers read into
 * it, the suspend / resume hand-off with the bus thread, and a streamed
 * answer written chunk by chunk as its events arrive.
 */
#include "gw_http.h"
#include "agentbus.h"
#include "parse.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

/* Whether C can answer (or write) now. Caller holds call->lock. */
static int s_ready(const gw_conn_t *c)
{
    const gw_call_t *k = c->call;
    if (c->phase == GW_P_WAIT && c->wait_final)
        return k->final;
    return k->head != NULL || k->final || k->overflow;
}

/* K's stream was cut at its bound (K->overflow): its connection is shut
 * down now, not when libmicrohttpd next asks for bytes, which for a
 * client that does not read (the one that makes a stream overflow) may be
 * never: so its --max-in-flight slot is freed at once (the completion hook
 * runs) and the client gets what the kernel holds for it, then the end.
 * Caller holds K's lock with K->owner set: the completion hook, after
 * which libmicrohttpd closes the socket, has not taken it, so the fd is
 * still this connection's. */
static void s_cut(gw_call_t *k)
{
    gw_conn_t *c = k->owner;
    if (c->cut)
        return;
    c->cut = 1;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci && ci->connect_fd >= 0)
        shutdown(ci->connect_fd, SHUT_RDWR); /* libmicrohttpd sees its end and closes it */
}

static int s_wake(gw_call_t *k)
{
    gw_conn_t *c = k->owner;
    if (c && k->overflow)
        s_cut(k);
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

static int s_cache_header(const char *v, uint32_t *flags);

/* The lines of one header: how many, the first, and with FLAGS each read
 * as X-Agentbus-Cache words (BAD set for one that does not read). */
typedef struct {
    const char *name, *first;
    int n, bad;
    uint32_t *flags;
} s_lines_t;

static enum MHD_Result s_line(void *cls, enum MHD_ValueKind kind, const char *key,
                              const char *value)
{
    s_lines_t *l = cls;
    (void)kind;
    if (!key || strcasecmp(key, l->name) != 0)
        return MHD_YES;
    if (l->n++ == 0)
        l->first = value;
    if (l->flags && (!value || s_cache_header(value, l->flags) != 0))
        l->bad = 1;
    return MHD_YES;
}

/* MHD_lookup_connection_value gives the first line of a header only: a
 * second "X-Agentbus-Timeout-Ms: 5" or "X-Agentbus-Cache: no-store" (HTTP
 * joins repeated lines into one list, RFC 9110 5.3), or an unreadable one,
 * was ignored and the caller silently got the first. */
static s_lines_t s_header_lines(const gw_conn_t *c, const char *name, uint32_t *flags)
{
    s_lines_t l = {name, NULL, 0, 0, flags};
    MHD_get_connection_values(c->conn, MHD_HEADER_KIND, s_line, &l);
    return l;
}

/* A header's whole number: decimal digits only (strtoll also took "+5"
 * and a leading blank), one past a long's range read as LONG_MAX (the
 * caller caps it). 0, or -1. */
static int s_header_number(const char *t, long *v)
{
    if (!t[0] || t[strspn(t, "0123456789")])
        return -1;
    if (ab_parse_long(t, 0, LONG_MAX, v) != 0)
        *v = LONG_MAX;
    return 0;
}

/* X-Agentbus-Timeout-Ms into *MS, capped at --max-timeout-ms (0: not
 * given). 0, -1 when it is not a number of ms > 0, -2 when given twice. */
static int s_header_timeout(const gw_conn_t *c, int *ms)
{
    s_lines_t l = s_header_lines(c, "X-Agentbus-Timeout-Ms", NULL);
    const char *t = l.first;
    *ms = 0;
    if (l.n > 1)
        return -2;
    if (!t)
        return 0;
    long v;
    if (s_header_number(t, &v) != 0 || v <= 0)
        return -1;
    *ms = v > c->g->cfg.max_timeout_ms ? c->g->cfg.max_timeout_ms : (int)v;
    return 0;
}

/* The request's deadline in ms: X-Agentbus-Timeout-Ms, else --timeout-ms
 * (also for an unreadable value: that request is refused with a 400 once
 * admitted, s_call_headers). */
int gw_call_timeout_ms(const gw_conn_t *c)
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
    for (char *save = NULL, *t = strtok_r(buf, ", \t", &save); t;
         t = strtok_r(NULL, ", \t", &save)) {
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
    int rc = s_header_timeout(c, &h->timeout_ms);
    if (rc == -2)
        return "invalid X-Agentbus-Timeout-Ms: given more than once (send one value)";
    if (rc != 0)
        return "invalid X-Agentbus-Timeout-Ms: want a number of milliseconds > 0";
    /* A lane name (interactive, normal, batch) or a number; a larger number
     * is capped at 255. */
    s_lines_t pl = s_header_lines(c, "X-Agentbus-Priority", NULL);
    const char *pr = pl.first;
    if (pl.n > 1)
        return "invalid X-Agentbus-Priority: given more than once (send one value)";
    if (pr) {
        long n;
        if (ab_priority_parse(pr, &h->priority) == AB_OK)
            h->has_priority = 1;
        else if (s_header_number(pr, &n) == 0 && n > 255)
            h->priority = 255u, h->has_priority = 1;
        else
            return "invalid X-Agentbus-Priority: want interactive, normal, batch or a number >= 0 "
                   "(above 255: 255)";
    }
    if (s_header_lines(c, "X-Agentbus-Cache", &h->cache_flags).bad) /* every line, joined */
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
    if (req->stream) { /* a client that does not read must not have every token pile up */
        k->max_queued = c->g->cfg.max_stream_buffer_bytes;
        k->overflows = &c->g->m.stream_overflows;
    }
    /* nor a worker that sends chunks without end, or one past all bounds */
    k->max_whole = GW_MAX_WHOLE_BYTES;
    k->whole_each = req->stream;
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
        if (k->overflow) { /* its tokens were dropped: the stream ends broken */
            pthread_mutex_unlock(&k->lock);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
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
    if (c->out_off == c->out_len) { /* eos, all written */
        /* Its slot is free once its last bytes are libmicrohttpd's: the
         * client may read them and send its next request before the
         * completion hook runs (gw_reply.c, s_body). */
        gw_intake_release(c);
        return MHD_CONTENT_READER_END_OF_STREAM;
    }
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
    return gw_reply_queue(c, 200, r);
}
