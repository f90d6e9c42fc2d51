/*
 * ollama_assemble.c - Ollama's streamed lines put together into the one
 * answer of a stream: false request (why: ollama_assemble.h). It does what
 * Ollama's own server does for stream: false (routes.go: the pieces of
 * text and thinking concatenated, every line's logprobs and tool calls
 * appended, the rest from the last line), on the typed messages the lines
 * were made into, so the client gets the same message either way.
 */
#include "ollama_assemble.h"
#include "agentbus.pb-c.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    char *p; /* NUL-terminated once anything was added */
    size_t len, cap;
} s_buf_t;

struct wk_ol_asm {
    wk_ol_kind_t kind;
    size_t max, used;
    s_buf_t text, thinking, logprobs, calls;
    char role[32]; /* the last role a line named: the done line may name none */
};

wk_ol_asm_t *wk_ol_asm_new(wk_ol_kind_t kind, size_t max)
{
    wk_ol_asm_t *a = calloc(1, sizeof *a);
    if (a) {
        a->kind = kind;
        a->max = max;
    }
    return a;
}

void wk_ol_asm_destroy(wk_ol_asm_t **ap)
{
    wk_ol_asm_t *a = *ap;
    if (!a)
        return;
    free(a->text.p);
    free(a->thinking.p);
    free(a->logprobs.p);
    free(a->calls.p);
    free(a);
    *ap = NULL;
}

/* Appends N bytes of S to B, charged to A's bound: 0, -1 past it, -2 out
 * of memory. */
static int s_put(wk_ol_asm_t *a, s_buf_t *b, const char *s, size_t n)
{
    if (n == 0)
        return 0;
    if (n > a->max - a->used)
        return -1;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return -2;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    a->used += n;
    return 0;
}

static int s_put_str(wk_ol_asm_t *a, s_buf_t *b, const char *s)
{
    return s ? s_put(a, b, s, strlen(s)) : 0;
}

/* Appends the entries of the JSON array ARR ("[x,y]", as the lines carry
 * logprobs and tool calls) to the array in B: "[a]" and "[x,y]" make
 * "[a,x,y]", the bytes one dump of all the entries gives. Not an array or
 * an empty one: nothing to add. */
static int s_put_array(wk_ol_asm_t *a, s_buf_t *b, const char *arr)
{
    size_t n = arr ? strlen(arr) : 0;
    if (n < 3 || arr[0] != '[' || arr[n - 1] != ']')
        return 0;
    if (b->len == 0)
        return s_put(a, b, arr, n);
    b->p[b->len - 1] = ','; /* was the closing "]": charged already */
    return s_put(a, b, arr + 1, n - 1);
}

static const char *s_or_empty(const s_buf_t *b)
{
    return b->p ? b->p : "";
}

/* Packs M (the done line's message, its pieces replaced by the whole) into
 * *OUT; -1 when it is over A's bound, -2 out of memory. */
static int s_pack(const wk_ol_asm_t *a, const ProtobufCMessage *m, uint8_t **out,
                  size_t *out_len)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    if (n > a->max)
        return -1;
    uint8_t *p = malloc(n ? n : 1);
    if (!p)
        return -2;
    protobuf_c_message_pack(m, p);
    *out = p;
    *out_len = n;
    return 0;
}

static int s_generate(wk_ol_asm_t *a, const uint8_t *pb, size_t len, uint8_t **out,
                      size_t *out_len)
{
    Agentbus__GenerateResponse *g = agentbus__generate_response__unpack(NULL, len, pb);
    if (!g)
        return -2;
    int rc = s_put_str(a, &a->text, g->response);
    if (rc == 0)
        rc = s_put_str(a, &a->thinking, g->thinking);
    if (rc == 0)
        rc = s_put_array(a, &a->logprobs, g->logprobs_json);
    if (rc == 0 && g->done) {
        /* the line's own strings go back before it is freed */
        char *response = g->response, *thinking = g->thinking, *lp = g->logprobs_json;
        g->response = (char *)s_or_empty(&a->text);
        g->thinking = (char *)s_or_empty(&a->thinking);
        g->logprobs_json = (char *)s_or_empty(&a->logprobs);
        rc = s_pack(a, &g->base, out, out_len);
        g->response = response;
        g->thinking = thinking;
        g->logprobs_json = lp;
    }
    agentbus__generate_response__free_unpacked(g, NULL);
    return rc;
}

/* The done line's message with the whole content, thinking and tool
 * calls, packed; M is put back as it was. */
static int s_chat_done(wk_ol_asm_t *a, Agentbus__ChatResponse *c, uint8_t **out,
                       size_t *out_len)
{
    Agentbus__ChatMessage none = AGENTBUS__CHAT_MESSAGE__INIT, *m = c->message;
    if (!m)
        m = c->message = &none;
    char *role = m->role, *content = m->content, *thinking = m->thinking;
    char *calls = m->tool_calls_json, *lp = c->logprobs_json;
    if (!m->role || !m->role[0])
        m->role = a->role;
    m->content = (char *)s_or_empty(&a->text);
    m->thinking = (char *)s_or_empty(&a->thinking);
    m->tool_calls_json = (char *)s_or_empty(&a->calls);
    c->logprobs_json = (char *)s_or_empty(&a->logprobs);
    int rc = s_pack(a, &c->base, out, out_len);
    m->role = role;
    m->content = content;
    m->thinking = thinking;
    m->tool_calls_json = calls;
    c->logprobs_json = lp;
    if (m == &none)
        c->message = NULL;
    return rc;
}

static int s_chat(wk_ol_asm_t *a, const uint8_t *pb, size_t len, uint8_t **out, size_t *out_len)
{
    Agentbus__ChatResponse *c = agentbus__chat_response__unpack(NULL, len, pb);
    if (!c)
        return -2;
    const Agentbus__ChatMessage *m = c->message;
    int rc = 0;
    if (m) {
        if (m->role && m->role[0] && strlen(m->role) < sizeof a->role)
            strcpy(a->role, m->role);
        rc = s_put_str(a, &a->text, m->content);
        if (rc == 0)
            rc = s_put_str(a, &a->thinking, m->thinking);
        if (rc == 0)
            rc = s_put_array(a, &a->calls, m->tool_calls_json);
    }
    if (rc == 0)
        rc = s_put_array(a, &a->logprobs, c->logprobs_json);
    if (rc == 0 && c->done)
        rc = s_chat_done(a, c, out, out_len);
    agentbus__chat_response__free_unpacked(c, NULL);
    return rc;
}

int wk_ol_asm_add(wk_ol_asm_t *a, const uint8_t *pb, size_t len, uint8_t **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    return a->kind == WK_OL_CHAT ? s_chat(a, pb, len, out, out_len)
                                 : s_generate(a, pb, len, out, out_len);
}
