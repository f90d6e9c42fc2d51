/*
 * gw_reply.c - the gateway's answers: text, JSON and errors in the
 * caller's dialect (Ollama's or OpenAI's), the 401 challenge, and the
 * mapping from bus statuses to HTTP ones. Every answer is counted by
 * status class for /metrics.
 */
#include "gw_http.h"
#include "agentbus.h"
#include "text.h"
#include "tl_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void s_count(gw_conn_t *c, unsigned status)
{
    unsigned cls = status / 100;
    atomic_fetch_add(&c->g->m.status[cls >= 1 && cls <= 5 ? cls : 0], 1);
}

enum MHD_Result gw_reply_queue(gw_conn_t *c, unsigned status, struct MHD_Response *resp)
{
    if (!resp)
        return MHD_NO;
    enum MHD_Result rc = MHD_queue_response(c->conn, status, resp);
    MHD_destroy_response(resp);
    /* The send deadline starts; an answer queued before the body is in
     * (413, 401) stays under the body deadline: the body must still come. */
    if (rc == MHD_YES && c->body_in)
        gw_conns_reply_started(&c->g->conns, c->conn);
    s_count(c, status);
    return rc;
}

/* An answer's body held for a callback response (s_body). */
struct gw_answer {
    gw_conn_t *c;
    char *data;
    size_t len;
    int owned; /* DATA is freed with it */
};

ssize_t gw_answer_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    gw_answer_t *b = cls;
    if (pos >= b->len)
        return MHD_CONTENT_READER_END_OF_STREAM;
    if (!b->data) /* never: libmicrohttpd reads each block once */
        return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t n = b->len - (size_t)pos < max ? b->len - (size_t)pos : max;
    memcpy(buf, b->data + pos, n);
    if (pos + n == b->len) { /* all of it is libmicrohttpd's now */
        gw_intake_release(b->c);
        if (b->owned) /* what stays held is libmicrohttpd's last block */
            free(b->data);
        b->data = NULL;
    }
    return (ssize_t)n;
}

void gw_answer_free(void *cls)
{
    gw_answer_t *b = cls;
    if (b && b->owned)
        free(b->data);
    free(b);
}

int gw_answer_held(const gw_answer_t *b)
{
    return b->data != NULL;
}

gw_answer_t *gw_answer_new(gw_conn_t *c, const char *data, size_t len,
                           enum MHD_ResponseMemoryMode mode)
{
    gw_answer_t *b = calloc(1, sizeof *b);
    char *copy = b && mode == MHD_RESPMEM_MUST_COPY ? malloc(len ? len : 1) : NULL;
    if (!b || (mode == MHD_RESPMEM_MUST_COPY && !copy)) {
        free(b);
        if (mode == MHD_RESPMEM_MUST_FREE)
            free((void *)data);
        return NULL;
    }
    if (copy)
        memcpy(copy, data, len);
    b->c = c;
    b->data = copy ? copy : (char *)data;
    b->len = len;
    b->owned = mode != MHD_RESPMEM_PERSISTENT;
    return b;
}

/* The response for an answer of LEN bytes at DATA (MODE as for
 * MHD_create_response_from_buffer; with MHD_RESPMEM_MUST_FREE it is taken,
 * also on failure). An admitted request's is a callback response that
 * frees its --max-in-flight slot as soon as libmicrohttpd has taken its
 * last bytes (gw_intake_release): freed at the completion hook, the slot
 * could still be held when the client, having read the answer, sent its
 * next request on another connection, which a strictly sequential client
 * then saw refused 503 at --max-in-flight 1. What the connection holds
 * after that is one block of the answer (at most 64 KiB), so the slots
 * still bound the answers held. */
static struct MHD_Response *s_body(gw_conn_t *c, const char *data, size_t len,
                                   enum MHD_ResponseMemoryMode mode)
{
    if (!c->admitted || !len) {
        struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)data, mode);
        if (!r && mode == MHD_RESPMEM_MUST_FREE)
            free((void *)data);
        return r;
    }
    gw_answer_t *b = gw_answer_new(c, data, len, mode);
    if (!b)
        return NULL;
    size_t block = len < 65536 ? len : 65536;
    struct MHD_Response *r = MHD_create_response_from_callback(len, block, gw_answer_read, b,
                                                               gw_answer_free);
    if (!r)
        gw_answer_free(b);
    return r;
}

enum MHD_Result gw_reply_text(gw_conn_t *c, unsigned status, const char *type, const char *text)
{
    struct MHD_Response *r = s_body(c, text, strlen(text), MHD_RESPMEM_MUST_COPY);
    if (r)
        MHD_add_response_header(r, "Content-Type", type);
    return gw_reply_queue(c, status, r);
}

enum MHD_Result gw_reply_not_allowed(gw_conn_t *c, const char *allow)
{
    static const char text[] = "405 method not allowed";
    struct MHD_Response *r = s_body(c, text, sizeof text - 1, MHD_RESPMEM_PERSISTENT);
    if (r) {
        MHD_add_response_header(r, "Content-Type", "text/plain; charset=utf-8");
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    }
    return gw_reply_queue(c, 405, r);
}

enum MHD_Result gw_reply_json_hdr(gw_conn_t *c, unsigned status, json_t *j, const char *name,
                                  const char *value)
{
    char *txt = gw_raw_dumps(j); /* a worker's JSON text spliced in (gw_raw.h) */
    json_decref(j);
    if (!txt)
        return MHD_NO;
    struct MHD_Response *r = s_body(c, txt, strlen(txt), MHD_RESPMEM_MUST_FREE);
    if (!r)
        return MHD_NO; /* TXT went with it */
    MHD_add_response_header(r, "Content-Type", "application/json; charset=utf-8");
    if (name)
        MHD_add_response_header(r, name, value);
    return gw_reply_queue(c, status, r);
}

enum MHD_Result gw_reply_json(gw_conn_t *c, unsigned status, json_t *j)
{
    return gw_reply_json_hdr(c, status, j, NULL, NULL);
}

/* The parameter a 400's text names ("invalid max_tokens: ..."), for
 * OpenAI's error.param, which its clients show and key on; NULL when the
 * text names none. */
static json_t *s_param(unsigned status, const char *text)
{
    size_t n = 0;
    if (status != 400 || strncmp(text, "invalid ", 8) != 0)
        return json_null();
    text += 8;
    while (text[n] == '_' || text[n] == '.' || (text[n] >= 'a' && text[n] <= 'z') ||
           (text[n] >= '0' && text[n] <= '9'))
        n++;
    return n && text[n] == ':' ? json_stringn(text, n) : json_null();
}

json_t *gw_error_body(const gw_conn_t *c, unsigned status, const char *text)
{
    /* jansson refuses a string that is not UTF-8: the answer was dropped
     * (the connection closed without one) for a worker's error text of
     * other bytes, or one cut inside a character. */
    char clean[2048];
    ab_text_clean(text, strlen(text), clean, sizeof clean);
    text = clean;
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
    return json_pack("{s:{s:s, s:s, s:o, s:o}}", "error", "message", text, "type", type,
                     "param", s_param(status, text), "code", code);
}

enum MHD_Result gw_reply_error(gw_conn_t *c, unsigned status, const char *text)
{
    /* Every 503 here is passing (broker unreachable, no worker, busy): say
     * when to come back, as the shed refusals do. */
    if (status == 503)
        return gw_reply_json_hdr(c, status, gw_error_body(c, status, text), "Retry-After", "1");
    return gw_reply_json(c, status, gw_error_body(c, status, text));
}

/* RFC 6750's challenge. */
enum MHD_Result gw_reply_unauthorized(gw_conn_t *c, int given)
{
    atomic_fetch_add(&c->g->keys.unauthorized, 1);
    const char *text = given ? "unauthorized: the API key is not valid for this gateway"
                             : "unauthorized: an API key is required (header "
                               "'Authorization: Bearer KEY')";
    return gw_reply_json_hdr(c, 401, gw_error_body(c, 401, text), MHD_HTTP_HEADER_WWW_AUTHENTICATE,
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
    else if (detail && *detail) /* a worker's text: it goes into JSON */
        ab_text_clean(detail, strlen(detail), buf, cap);
    else
        snprintf(buf, cap, "%s", ab_strerror(st));
}
