/*
 * backend_ollama.c - serves inference requests from one Ollama server (one
 * GPU) over libcurl multi: keep-alive connections, N concurrent slots,
 * NDJSON streamed into PARTIAL replies line by line as it arrives.
 * Generate and chat are always asked of Ollama streamed: a client's
 * stream: false request gets no PARTIAL, its lines are put together here
 * into the one REPLY Ollama's stream: false answer would be
 * (ollama_assemble.h). So bytes arrive as soon as Ollama generates, for
 * either kind, and a deadline passing mid-answer is said to the broker as
 * "the backend had begun" (docs/health.md, "Circuit breaker").
 *
 * Why one thread and curl multi: the worker's ZeroMQ socket and every HTTP
 * transfer are driven by the same loop (wait = curl_multi_poll on the curl
 * sockets plus the worker's fd), so nothing is locked and a CANCEL from the
 * broker can abort a transfer at once (curl_multi_remove_handle closes it;
 * Ollama then frees the slot, logging 499).
 *
 * Failure handling:
 *   404 -> MODEL_NOT_FOUND, 400 -> BAD_REQUEST (Ollama's text passed on);
 *   503 and connection errors before any byte of the answer's body ->
 *   retried here with exponential backoff (--ollama-retries), then
 *   BACKEND_BUSY / BACKEND, which the broker re-dispatches to another
 *   worker; once a byte came (Ollama began to generate) -> BACKEND, said
 *   to the broker as begun (ab_worker_fail_begun): no retry anywhere;
 *   an error line mid-stream, or a stream that ends without its done line
 *   -> BACKEND after the partials (never a fake success).
 * Adaptive concurrency (AIMD), per model: only Ollama refusing work for a
 * model (503: its queue is full; out-of-memory) halves that model's limit
 * (at most once per 500 ms, never below --min-slots); each success adds
 * 1/limit. A deadline passing (curl timeout, or a CANCEL because it passed)
 * leaves the limit alone: under tight deadlines requests expire in Ollama's
 * own queue while every slot works, and shrinking on that collapsed the
 * credit to 1 (issue 20). Ollama's slots and queue are per model, so one
 * model's 503s say nothing of the others: with one limit for the worker,
 * one overloaded model halved the credit of all and their slots idled
 * (issue 20). The worker's capacity at the broker stays --capacity; the
 * models whose limit is lower are reported in InferenceState.model_slots
 * and the broker's placement holds their requests back.
 * Models: probed and reported by ollama_probe.c (backend_ollama.h).
 */
#include "backend_ollama.h"
#include "ollama_assemble.h"
#include "ollama_json.h"
#include "text.h"
#include "tl_clock.h"
#include "tl_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Longest NDJSON line (and embeddings answer) accepted. What one costs
 * the worker: the line's buffer (one per slot being filled; freed after
 * the line, over WK_NDJSON_KEEP_MAX) and, one line at a time,
 * its decoding, bounded on its own (WK_OL_DECODE_MAX, ollama_json.h):
 * jansson took ~24x a line of small numbers. docs/ollama.md, "Memory". */
#define S_MAX_LINE (16u << 20)
#define S_ERRBODY 2048 /* error answers kept this far */
#define S_SHRINK_GAP_MS 500
#define S_SUMMARY_MS 60000 /* refusals summed up in the log at most this often */

#define S_JOB(n) tl_list_entry(n, s_job_t, node)

typedef enum { S_WAITING, S_ACTIVE, S_BACKOFF } s_state_t;

typedef struct s_job {
    tl_list_t node; /* in wk_ollama_t.jobs */
    wk_ollama_t *o;
    ab_job_t *job; /* NULL for a preload */
    uint64_t id;
    s_state_t state;
    wk_ol_call_t call;
    CURL *easy;
    wk_ollama_credit_t *credit; /* its model's, while ACTIVE (NULL: admin, or table full) */
    wk_ndjson_t nd;
    wk_ol_asm_t *whole; /* a stream: false generate or chat: its lines put together */
    long status;
    size_t body_bytes; /* of a 200 answer, this attempt: once > 0, no retry */
    char errbody[S_ERRBODY];
    size_t errlen;
    int partials;
    int answered;
    int succeeded; /* the final line was sent as the REPLY */
    int attempts;
    int admin;
    int64_t retry_at, deadline_ms;
} s_job_t;

static void s_job_free(wk_ollama_t *o, s_job_t *j);
static void s_start_waiting(wk_ollama_t *o);

/* --- adaptive concurrency, per model ----------------------------------------- */
static unsigned s_cap(const wk_ollama_t *o, const wk_ollama_credit_t *c)
{
    unsigned cap = c ? (unsigned)c->limit : o->model_max;
    if (cap > o->model_max)
        cap = o->model_max;
    return cap < o->slots_min ? o->slots_min : cap;
}

/* Ollama's names "llama3" and "llama3:latest" are one model. */
static int s_same_model(const char *a, const char *b)
{
    size_t la = strcspn(a, ":"), lb = strcspn(b, ":");
    if (la != lb || strncmp(a, b, la) != 0)
        return 0;
    return strcmp(a[la] ? a + la + 1 : "latest", b[lb] ? b + lb + 1 : "latest") == 0;
}

static wk_ollama_credit_t *s_credit_find(wk_ollama_t *o, const char *model)
{
    for (unsigned i = 0; i < WK_OLLAMA_CREDITS_MAX; i++)
        if (o->credits[i].model[0] && s_same_model(o->credits[i].model, model))
            return &o->credits[i];
    return NULL;
}

static void s_limits_publish(wk_ollama_t *o);

/* MODEL's entry, made when missing: a free one (unused, or at the maximum
 * with nothing running), else the idle one with the highest limit (what it
 * remembered of a pushback is lost: the table is bounded). NULL when every
 * entry has transfers running. */
static wk_ollama_credit_t *s_credit_get(wk_ollama_t *o, const char *model)
{
    wk_ollama_credit_t *c = s_credit_find(o, model), *pick = NULL;
    if (c || !model[0])
        return c;
    for (unsigned i = 0; i < WK_OLLAMA_CREDITS_MAX; i++) {
        wk_ollama_credit_t *x = &o->credits[i];
        if (!x->model[0] || (x->active == 0 && x->limit >= o->model_max)) {
            pick = x;
            break;
        }
        if (x->active == 0 && (!pick || x->limit > pick->limit))
            pick = x;
    }
    if (!pick)
        return NULL;
    int forgot = pick->model[0] && pick->limit < o->model_max;
    snprintf(pick->model, sizeof pick->model, "%s", model);
    pick->limit = o->model_max;
    pick->active = 0;
    pick->last_shrink_ms = 0;
    if (forgot)
        s_limits_publish(o);
    return pick;
}

/* Reports the models whose limit is below the maximum (model_slots) when
 * that list changed; the broker places by it. */
static void s_limits_publish(wk_ollama_t *o)
{
    size_t n = 0;
    for (unsigned i = 0; i < WK_OLLAMA_CREDITS_MAX; i++) {
        wk_ollama_credit_t *c = &o->credits[i];
        if (!c->model[0] || s_cap(o, c) >= o->model_max)
            continue;
        agentbus__model_slots__init(&o->slots_pb[n]);
        o->slots_pb[n].name = c->model;
        o->slots_pb[n].slots = s_cap(o, c);
        o->slots_ptr[n] = &o->slots_pb[n];
        n++;
    }
    o->st.model_slots = n ? o->slots_ptr : NULL;
    o->st.n_model_slots = n;
    if (o->w && o->was_up != -1) /* before the first probe the state has no models */
        wk_ollama_state_send(o);
}

static void s_pushback(wk_ollama_t *o, const char *model, const char *why)
{
    wk_ollama_credit_t *c = s_credit_get(o, model);
    int64_t now = tl_now_ms();
    if (!c || now - c->last_shrink_ms < S_SHRINK_GAP_MS)
        return; /* one burst of 503s is one signal */
    c->last_shrink_ms = now;
    unsigned before = s_cap(o, c);
    c->limit = c->limit / 2 < o->slots_min ? o->slots_min : c->limit / 2;
    o->st.slot_shrinks++;
    TL_WARN("backend", "backend pushed back on %s (%s): slots %u -> %u", model, why, before,
            s_cap(o, c));
    s_limits_publish(o);
}

static void s_success(wk_ollama_t *o, const char *model)
{
    wk_ollama_credit_t *c = s_credit_find(o, model);
    if (!c || c->limit >= o->model_max)
        return;
    unsigned before = s_cap(o, c);
    c->limit += 1.0 / c->limit;
    if (c->limit > o->model_max)
        c->limit = o->model_max;
    if (s_cap(o, c) != before) {
        TL_INFO("backend", "%s: slots %u -> %u", model, before, s_cap(o, c));
        s_limits_publish(o);
    }
}

/* Whether J may start now: a free slot of the worker, and of its model. */
static int s_room(wk_ollama_t *o, const s_job_t *j)
{
    if (j->admin)
        return o->admin_active == 0;
    if (o->active - o->admin_active >= o->slots_max)
        return 0;
    wk_ollama_credit_t *c = s_credit_find(o, j->call.model);
    return !c || c->active < s_cap(o, c);
}

/* --- answering --------------------------------------------------------------- */
static void s_fail(s_job_t *j, int status, const char *fmt, const char *detail)
{
    if (j->answered)
        return;
    j->answered = 1;
    char text[768];
    snprintf(text, sizeof text, fmt, detail);
    if (j->job && j->body_bytes) /* Ollama began: not to be generated again elsewhere */
        ab_worker_fail_begun(j->o->w, &j->job, status, text);
    else if (j->job)
        ab_worker_fail(j->o->w, &j->job, status, text);
    else
        TL_WARN("backend", "preload of %s failed: %s", j->call.model, text);
}

/* An answer over what the worker takes (a line over S_MAX_LINE, a
 * stream: false answer that put together passes WK_OLLAMA_BODY_MAX, a
 * line whose decoding would take over WK_OL_DECODE_MAX): TOO_LARGE, for
 * the client to ask for less. Counted for s_refused_summary. */
static void s_too_large(s_job_t *j, const char *why)
{
    if (j->answered)
        return;
    j->o->too_large++;
    TL_WARN("backend", "request %llu (%s) refused: %s", (unsigned long long)j->id,
            j->call.model, why);
    s_fail(j, AB_ETOOLARGE, "%s", why);
}

/* Says how many answers were refused as too large: at the first, then at
 * most once a minute while more come, and at exit. No figure the worker
 * reports holds them (InferenceState has no field for it; the broker's
 * TOO_LARGE count is every worker's and its own together), and one WARN a
 * request is not a count. */
static void s_refused_summary(wk_ollama_t *o, int at_exit)
{
    int64_t now = tl_now_ms();
    unsigned long long fresh = o->too_large - o->too_large_said;
    if (at_exit && o->too_large)
        TL_INFO("backend", "Ollama at %s: %llu answer%s refused as too large (TOO_LARGE) since "
                "the worker started", o->url, (unsigned long long)o->too_large,
                o->too_large == 1 ? "" : "s");
    if (at_exit || !fresh || (o->too_large_said && now - o->too_large_said_ms < S_SUMMARY_MS))
        return;
    TL_WARN("backend", "Ollama at %s: %llu answer%s refused as too large (TOO_LARGE) in the last "
            "%lld s, %llu since the worker started", o->url, fresh, fresh == 1 ? "" : "s",
            (long long)(now - o->too_large_said_ms + 999) / 1000,
            (unsigned long long)o->too_large);
    o->too_large_said = o->too_large;
    o->too_large_said_ms = now;
}

/* A line of a stream: false request: kept, and when it is the done line
 * the whole answer goes to the client as the REPLY. */
static void s_whole_add(s_job_t *j, const wk_ol_chunk_t *c)
{
    uint8_t *out;
    size_t out_len;
    int rc = wk_ol_asm_add(j->whole, c->pb, c->pb_len, &out, &out_len);
    if (rc == -1) {
        s_too_large(j, "Ollama's answer (stream: false) is over the worker's 8 MiB bound: ask "
                       "for it streamed (stream: true), each line is bounded on its own");
    } else if (rc != 0) {
        s_fail(j, AB_EINTERNAL, "%s", "worker out of memory putting the answer together");
    } else if (out) {
        j->answered = j->succeeded = 1;
        ab_worker_reply(j->o->w, &j->job, out, out_len);
        free(out);
    }
}

static int s_on_line(const char *line, size_t len, void *arg)
{
    s_job_t *j = arg;
    wk_ollama_t *o = j->o;
    if (j->answered)
        return 1;
    /* One call of curl may hand over thousands of lines (a stream: false
     * answer put together here sends nothing until its end): the broker
     * must still hear from this worker as often as it asked. */
    ab_worker_keepalive(o->w);
    wk_ol_chunk_t c;
    int rc = wk_ol_chunk_parse(j->call.kind, line, len, o->worker_name, &c);
    if (rc == -2)
        s_too_large(j, c.error);
    else if (rc != 0)
        s_fail(j, AB_EBACKEND, "%s", c.error);
    if (rc != 0)
        return 1;
    if (c.error[0]) {
        free(c.pb);
        if (strstr(c.error, "memory"))
            s_pushback(o, j->call.model, "out of memory");
        s_fail(j, AB_EBACKEND, "backend error: %s", c.error);
        return 1;
    }
    if (!j->job) { /* preload: only the outcome matters */
        j->answered = j->succeeded = c.done;
    } else if (j->whole) {
        s_whole_add(j, &c);
    } else if (c.done) {
        j->answered = j->succeeded = 1;
        ab_worker_reply(o->w, &j->job, c.pb, c.pb_len);
    } else {
        ab_worker_reply_part(o->w, j->job, c.pb, c.pb_len);
        j->partials++;
    }
    free(c.pb);
    return j->answered ? 1 : 0;
}

static size_t s_on_data(char *data, size_t size, size_t n, void *arg)
{
    s_job_t *j = arg;
    size_t bytes = size * n;
    if (!j->status)
        curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &j->status);
    if (j->status != 200) { /* keep the start of an error answer */
        size_t room = sizeof j->errbody - 1 - j->errlen, take = bytes < room ? bytes : room;
        memcpy(j->errbody + j->errlen, data, take);
        j->errlen += take;
        j->errbody[j->errlen] = '\0';
        return bytes;
    }
    j->body_bytes += bytes;
    int rc = wk_ndjson_feed(&j->nd, data, bytes, s_on_line, j);
    if (rc < 0) /* the bound of S_MAX_LINE, said as the caller can act on it */
        s_too_large(j, j->call.kind != WK_OL_EMBED
                       ? "Ollama sent a line over the worker's 16 MiB bound"
                       : "Ollama's embeddings are over the worker's 16 MiB bound: ask for fewer "
                         "inputs (or dimensions) per request");
    /* A final answer (or an error) ends the transfer: nothing more to read. */
    return rc == 0 ? bytes : 0;
}

/* --- transfers ------------------------------------------------------------------ */
/* Easy handles are kept for the next transfer (reset, not rebuilt): one
 * curl_easy_init per call was measurable next to a ~1 ms call. */
static CURL *s_easy_get(wk_ollama_t *o)
{
    if (o->n_spare == 0)
        return curl_easy_init();
    CURL *e = o->spare[--o->n_spare];
    curl_easy_reset(e);
    return e;
}

static void s_easy_put(wk_ollama_t *o, CURL *e)
{
    if (o->n_spare < WK_OLLAMA_SPARE_MAX)
        o->spare[o->n_spare++] = e;
    else
        curl_easy_cleanup(e);
}

static int s_start(wk_ollama_t *o, s_job_t *j)
{
    char url[600];
    snprintf(url, sizeof url, "%s%s", o->url, j->call.path);
    /* A client's stream: false generate or chat is streamed by Ollama too
     * and its lines put together here. A retry starts a new one: it comes
     * only before any byte of the answer (body_bytes 0). */
    wk_ol_asm_destroy(&j->whole);
    if (j->job && !j->call.stream && j->call.kind != WK_OL_EMBED &&
        !(j->whole = wk_ol_asm_new(j->call.kind, WK_OLLAMA_BODY_MAX)))
        return -1;
    j->easy = s_easy_get(o);
    if (!j->easy)
        return -1;
    j->status = 0;
    j->body_bytes = 0;
    j->errlen = 0;
    j->errbody[0] = '\0';
    wk_ndjson_fini(&j->nd);
    /* embeddings come in one line, as large as a streamed line may be */
    wk_ndjson_init(&j->nd, S_MAX_LINE);
    curl_easy_setopt(j->easy, CURLOPT_URL, url);
    curl_easy_setopt(j->easy, CURLOPT_POSTFIELDS, j->call.body);
    curl_easy_setopt(j->easy, CURLOPT_POSTFIELDSIZE, (long)j->call.body_len);
    curl_easy_setopt(j->easy, CURLOPT_HTTPHEADER, o->hdrs);
    curl_easy_setopt(j->easy, CURLOPT_WRITEFUNCTION, s_on_data);
    curl_easy_setopt(j->easy, CURLOPT_WRITEDATA, j);
    curl_easy_setopt(j->easy, CURLOPT_PRIVATE, j);
    curl_easy_setopt(j->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(j->easy, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(j->easy, CURLOPT_CONNECTTIMEOUT_MS, 3000L);
    if (j->deadline_ms) { /* the broker CANCELs at the deadline; this is the backstop */
        int64_t left = j->deadline_ms - tl_now_ms() + 1000;
        curl_easy_setopt(j->easy, CURLOPT_TIMEOUT_MS, (long)(left > 1 ? left : 1));
    }
    if (curl_multi_add_handle(o->multi, j->easy) != CURLM_OK) {
        s_easy_put(o, j->easy);
        j->easy = NULL;
        return -1;
    }
    j->state = S_ACTIVE;
    j->attempts++;
    o->active++;
    if (j->admin)
        o->admin_active++;
    else if ((j->credit = s_credit_get(o, j->call.model)))
        j->credit->active++;
    return 0;
}

static void s_stop_transfer(wk_ollama_t *o, s_job_t *j)
{
    if (!j->easy)
        return;
    curl_multi_remove_handle(o->multi, j->easy);
    s_easy_put(o, j->easy);
    j->easy = NULL;
    if (j->state == S_ACTIVE) {
        o->active--;
        if (j->admin)
            o->admin_active--;
        if (j->credit)
            j->credit->active--;
        j->credit = NULL;
    }
}

static void s_job_free(wk_ollama_t *o, s_job_t *j)
{
    s_stop_transfer(o, j);
    tl_list_remove(&j->node);
    if (j->job) /* unanswered: the library answers it */
        ab_job_destroy(&j->job);
    wk_ol_call_free(&j->call);
    wk_ndjson_fini(&j->nd);
    wk_ol_asm_destroy(&j->whole);
    free(j);
}

static s_job_t *s_job_add(wk_ollama_t *o)
{
    s_job_t *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->o = o;
    wk_ndjson_init(&j->nd, S_MAX_LINE);
    /* appended: jobs start in arrival order */
    tl_list_push_back(&o->jobs, &j->node);
    return j;
}

/* Retry with backoff, or give up with STATUS. */
static void s_retry_or_fail(wk_ollama_t *o, s_job_t *j, int status, const char *text)
{
    int64_t now = tl_now_ms();
    int64_t delay = 100LL << (j->attempts > 4 ? 4 : j->attempts - 1);
    delay += (int64_t)(tl_now_us() % 50); /* spread retries of a burst */
    int in_time = !j->deadline_ms || now + delay < j->deadline_ms;
    if (j->body_bytes == 0 && j->attempts <= o->args.retries && in_time) {
        o->st.backend_retries++;
        j->state = S_BACKOFF;
        j->retry_at = now + delay;
        return;
    }
    s_fail(j, status, "%s", text);
}

/* Whether MODEL was loaded at the last probe ("name" is "name:latest", as
 * in Ollama). A call for a loaded model changes nothing worth re-probing
 * for: probing after every call (three HTTP calls to the backend and often
 * a REGISTER, since the expiry moves) cost CPU next to the calls in flight. */
static int s_model_loaded(const wk_ollama_t *o, const char *model)
{
    size_t n = strlen(model);
    int bare = strchr(model, ':') == NULL;
    for (size_t i = 0; i < o->st.n_loaded; i++) {
        const char *l = o->st.loaded[i]->name;
        if (!l)
            continue;
        if (strcmp(l, model) == 0 ||
            (bare && strncmp(l, model, n) == 0 && strcmp(l + n, ":latest") == 0))
            return 1;
    }
    return 0;
}

/* A transfer ended: decide what the job's client gets. */
static void s_done(wk_ollama_t *o, s_job_t *j, CURLcode res)
{
    long status = j->status;
    if (!status)
        curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &status);
    s_stop_transfer(o, j);
    if (res == CURLE_OK && status == 200 && !j->answered)
        wk_ndjson_finish(&j->nd, s_on_line, j);
    /* curl says "timed out" for the connect timeout too (3 s: a host that
     * drops the SYN, a full accept queue): that is a connection that
     * failed, retried and then handed back, not the request's deadline. */
    int late = res == CURLE_OPERATION_TIMEDOUT && j->deadline_ms && tl_now_ms() >= j->deadline_ms;
    if (j->answered) {
        if (j->succeeded && !j->admin)
            s_success(o, j->call.model);
    } else if (late) {
        /* not a pushback: the deadline passed, Ollama refused nothing */
        s_fail(j, AB_EDEADLINE, "%s", "the backend did not finish before the deadline");
    } else if (res != CURLE_OK && res != CURLE_WRITE_ERROR) {
        char text[300];
        snprintf(text, sizeof text, "connection to the backend failed%s: %s",
                 j->partials ? " mid-stream" : j->body_bytes ? " mid-answer (not retried: "
                 "Ollama had begun)" : "", curl_easy_strerror(res));
        s_retry_or_fail(o, j, AB_EBACKEND, text);
    } else if (status == 200) {
        s_fail(j, AB_EBACKEND, "%s", "the backend's answer ended without its final line");
    } else {
        wk_ol_chunk_t c;
        const char *raw = j->errbody;
        size_t rawlen = j->errlen;
        if (wk_ol_chunk_parse(WK_OL_GENERATE, j->errbody, j->errlen, "", &c) == 0 && c.error[0])
            raw = c.error, rawlen = strlen(c.error);
        free(c.pb);
        /* The body is the backend's bytes: binary, control characters, not
         * UTF-8 (a client's JSON encoder refused the text, a terminal took
         * its escapes). What the client gets is clean text. */
        char msg[S_ERRBODY * 3], text[S_ERRBODY * 3 + 64];
        ab_text_clean(raw, rawlen, msg, sizeof msg);
        snprintf(text, sizeof text, "HTTP %ld: %s", status, msg);
        if (status == 404) {
            s_fail(j, AB_EMODEL, "%s", msg);
        } else if (status == 400) {
            s_fail(j, AB_EBADREQUEST, "%s", msg);
        } else if (status == 503) {
            s_pushback(o, j->call.model, "503");
            s_retry_or_fail(o, j, AB_EBACKENDBUSY, text);
        } else {
            if (strstr(msg, "memory"))
                s_pushback(o, j->call.model, "out of memory");
            s_fail(j, AB_EBACKEND, "%s", text);
        }
    }
    if (j->call.kind == WK_OL_LOAD || j->call.kind == WK_OL_UNLOAD ||
        (j->attempts == 1 && !s_model_loaded(o, j->call.model)))
        wk_ollama_refresh_soon(o); /* a model may have been (un)loaded */
    if (j->answered || j->state != S_BACKOFF)
        s_job_free(o, j);
}

/* Starts waiting jobs while slots are free; admin (load/unload) jobs run
 * one at a time, in order, so one GPU loads one model at a time. */
static void s_start_waiting(wk_ollama_t *o)
{
    int64_t now = tl_now_ms();
    for (tl_list_t *n = o->jobs.next, *next; n != &o->jobs; n = next) {
        next = n->next; /* J may be freed below */
        s_job_t *j = S_JOB(n);
        if (j->state == S_BACKOFF && j->retry_at <= now)
            j->state = S_WAITING;
        if (j->state != S_WAITING)
            continue;
        if (!s_room(o, j))
            continue;
        if (s_start(o, j) != 0) {
            s_fail(j, AB_EINTERNAL, "%s", "cannot start an HTTP transfer");
            s_job_free(o, j);
        }
    }
}

/* --- backend interface ------------------------------------------------------------- */
static int s_create(void **ctx, const wk_backend_args_t *args)
{
    if (!args->ollama_url || !*args->ollama_url) {
        fprintf(stderr, "agentbus-worker: --backend ollama needs --ollama-url URL\n");
        return AB_EINVAL;
    }
    if (strlen(args->ollama_url) > WK_OLLAMA_URL_MAX) /* main.c refused it */
        return AB_EINVAL;
    wk_ollama_t *o = calloc(1, sizeof *o);
    if (!o)
        return AB_ENOMEM;
    tl_list_init(&o->jobs);
    o->args = *args;
    if (o->args.refresh_ms < WK_OLLAMA_REFRESH_MIN_MS)
        o->args.refresh_ms = WK_OLLAMA_REFRESH_MIN_MS;
    snprintf(o->url, sizeof o->url, "%s", args->ollama_url);
    size_t ul = strlen(o->url);
    while (ul && o->url[ul - 1] == '/')
        o->url[--ul] = '\0';
    snprintf(o->worker_name, sizeof o->worker_name, "%s", args->name ? args->name : "");
    o->slots_max = args->capacity;
    /* the floor: at least 1, at most the maximum */
    o->slots_min = args->min_slots < 1 ? 1u : (unsigned)args->min_slots;
    o->model_max = args->model_slots > 0 && (unsigned long)args->model_slots < o->slots_max
                       ? (unsigned)args->model_slots
                       : o->slots_max;
    if (o->slots_min > o->model_max)
        o->slots_min = o->model_max;
    o->was_up = -1;
    o->too_large_said_ms = tl_now_ms(); /* the first summary's "in the last N s" */
    agentbus__inference_state__init(&o->st);
    o->st.backend_url = o->url;
    o->st.slots = o->st.slots_max = args->capacity;
    o->st.model_slots_max = o->model_max < o->slots_max ? o->model_max : 0;
    o->refresh_ms = WK_OLLAMA_REFRESH_MIN_MS;
    o->gpu = wk_gpu_open();
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || !(o->multi = curl_multi_init())) {
        free(o);
        return AB_EINTERNAL;
    }
    /* Keep a connection per slot (plus the probes) alive between requests. */
    curl_multi_setopt(o->multi, CURLMOPT_MAXCONNECTS, (long)args->capacity + 4);
    o->hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    /* libcurl asks "Expect: 100-continue" for bodies over 1 MiB (images):
     * a round trip more before the body leaves, for a server we trust. */
    struct curl_slist *h = o->hdrs ? curl_slist_append(o->hdrs, "Expect:") : NULL;
    if (h)
        o->hdrs = h;
    /* Load the requested models one after another, before serving. */
    const char *p = args->preload;
    while (p && *p) {
        size_t n = strcspn(p, ",");
        if (n > 0 && n <= AB_MODEL_MAX) { /* main.c refused longer names */
            Agentbus__InferenceRequest r = AGENTBUS__INFERENCE_REQUEST__INIT;
            Agentbus__ModelCommand mc = AGENTBUS__MODEL_COMMAND__INIT;
            char model[256];
            snprintf(model, sizeof model, "%.*s", (int)n, p);
            mc.model = model;
            r.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_LOAD;
            r.load = &mc;
            uint8_t buf[600];
            size_t len = agentbus__inference_request__pack(&r, buf);
            char err[128];
            s_job_t *j = s_job_add(o);
            if (j && wk_ol_call_build(buf, len, &j->call, err, sizeof err) == 0)
                j->admin = 1;
            else {
                TL_WARN("backend", "preload of %s not started: %s", model,
                        j ? err : "out of memory");
                if (j)
                    s_job_free(o, j);
            }
        }
        p += n + (p[n] == ',');
    }
    *ctx = o;
    return AB_OK;
}

static void s_cancel(ab_worker_t *w, uint64_t id, int why, void *arg)
{
    (void)w;
    (void)why; /* a deadline that passed is not pushback (issue 20) */
    wk_ollama_t *o = arg;
    for (tl_list_t *n = o->jobs.next; n != &o->jobs; n = n->next) {
        s_job_t *j = S_JOB(n);
        if (j->id != id || !j->job)
            continue;
        o->st.cancelled++;
        s_stop_transfer(o, j); /* closes the connection: the backend frees the slot */
        s_fail(j, AB_ECANCELLED, "%s", "cancelled");
        s_job_free(o, j);
        s_start_waiting(o);
        return;
    }
}

static void s_attach(void *ctx, ab_worker_t *w)
{
    wk_ollama_t *o = ctx;
    o->w = w;
    ab_worker_set_cancel_handler(w, s_cancel, o);
    s_start_waiting(o); /* preloads */
    wk_ollama_probe_start(o);
}

static void s_on_job(void *ctx, ab_worker_t *w, ab_job_t *job)
{
    wk_ollama_t *o = ctx;
    size_t size;
    const void *data = ab_job_data(job, &size);
    s_job_t *j = s_job_add(o);
    if (!j) {
        ab_worker_fail(w, &job, AB_EINTERNAL, "worker out of memory");
        return;
    }
    char err[256];
    if (wk_ol_call_build(data, size, &j->call, err, sizeof err) != 0) {
        ab_worker_fail(w, &job, AB_EBADREQUEST, err);
        s_job_free(o, j);
        return;
    }
    if ((j->call.kind == WK_OL_LOAD || j->call.kind == WK_OL_UNLOAD) && !ab_job_admin(job)) {
        /* The broker vouches for the requester's role (AB_FLAG_ADMIN). */
        ab_worker_fail(w, &job, AB_EDENIED, "models load/unload need an admin key");
        s_job_free(o, j);
        return;
    }
    j->job = job;
    j->id = ab_job_id(job);
    j->admin = j->call.kind == WK_OL_LOAD || j->call.kind == WK_OL_UNLOAD;
    uint32_t t = ab_job_timeout_ms(job);
    j->deadline_ms = t ? tl_now_ms() + t : 0;
    s_start_waiting(o);
}

static int s_next_timeout(void *ctx)
{
    wk_ollama_t *o = ctx;
    int64_t now = tl_now_ms(), wake = o->probing ? now + 1000 : o->next_refresh_ms;
    for (tl_list_t *n = o->jobs.next; n != &o->jobs; n = n->next)
        if (S_JOB(n)->state == S_BACKOFF && S_JOB(n)->retry_at < wake)
            wake = S_JOB(n)->retry_at;
    if (o->active)
        wake = wake < now + 100 ? wake : now + 100;
    return wake > now ? (int)(wake - now) : 0;
}

static void s_tick(void *ctx, ab_worker_t *w)
{
    (void)w;
    wk_ollama_t *o = ctx;
    int running;
    curl_multi_perform(o->multi, &running);
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(o->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *easy = m->easy_handle;
        CURLcode res = m->data.result;
        if (wk_ollama_probe_done(o, easy, res))
            continue;
        char *priv = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
        s_job_t *j = (s_job_t *)(void *)priv;
        if (j)
            s_done(o, j, res);
    }
    s_refused_summary(o, 0);
    if (!o->probing && tl_now_ms() >= o->next_refresh_ms)
        wk_ollama_probe_start(o);
    s_start_waiting(o);
}

static int s_wait(void *ctx, ab_worker_t *w, int timeout_ms)
{
    wk_ollama_t *o = ctx;
    int fd;
    if (ab_worker_has_input(w) || ab_worker_fd(w, &fd) != AB_OK)
        return 0;
    struct curl_waitfd extra = {fd, CURL_WAIT_POLLIN, 0};
    int n;
    curl_multi_poll(o->multi, &extra, 1, timeout_ms, &n);
    return n;
}

static void s_destroy(void **ctx)
{
    wk_ollama_t *o = *ctx;
    if (!o)
        return;
    s_refused_summary(o, 1);
    while (!tl_list_empty(&o->jobs))
        s_job_free(o, S_JOB(o->jobs.next));
    wk_ollama_probes_free(o);
    while (o->n_spare)
        curl_easy_cleanup(o->spare[--o->n_spare]);
    curl_multi_cleanup(o->multi);
    curl_slist_free_all(o->hdrs);
    curl_global_cleanup();
    o->st.backend_url = NULL;
    o->st.model_slots = NULL; /* points into o->slots_pb */
    o->st.n_model_slots = 0;
    wk_ol_state_clear(&o->st);
    wk_gpu_close(&o->gpu);
    free(o->sent);
    free(o);
    *ctx = NULL;
}

const wk_backend_ops_t wk_backend_ollama = {"ollama", s_create, s_on_job, s_next_timeout,
                                            s_tick, s_destroy, s_attach, s_wait};
