/*
 * scenario_direct.c - the HTTP agents. Run A, "as the seed systems do":
 * each agent POSTs /api/generate to the simulator of its GPU (agent index
 * mod 2, a static assignment), with a new TCP connection per call (as they
 * did) or, in the keep-alive variant, reusing its connections. Run C: the
 * same code, the same bytes, pointed at agentbus-gateway instead. One curl
 * multi handle per agent thread, so an open-loop agent can have several
 * calls out; driven through libcurl's socket interface and an epoll set of
 * its own, so a wake-up costs the sockets that are ready, not all of the
 * agent's (an open-loop agent at 500 req/s holds ~90 calls out, and
 * curl_multi_poll's poll(2) over all of them made this driver, not the
 * gateway or the simulators, the limit: docs/bench.md).
 *
 * Every call carries X-Agentbus-Timeout-Ms (its deadline) and, for the
 * voice role, X-Agentbus-Priority: the simulator ignores unknown headers as
 * Ollama does, so runs A and C send identical requests and only the URL
 * differs.
 */
#include "scenario.h"
#include "tl_clock.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

typedef struct {
    sc_agent_t *a;
    CURLM *multi;
    struct curl_slist *headers[SC_CLASSES]; /* per class: deadline, priority */
    CURL **out;              /* transfers in progress */
    size_t nout, capout;
    int ep;                  /* epoll set of the transfers' sockets */
    uint64_t timer_us;       /* when libcurl wants CURL_SOCKET_TIMEOUT (0: never) */
} s_direct_t;

/* libcurl's socket callback: keeps the epoll set as libcurl asks. */
static int s_on_socket(CURL *e, curl_socket_t fd, int what, void *arg, void *sockp)
{
    (void)e;
    s_direct_t *d = arg;
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(d->ep, EPOLL_CTL_DEL, fd, NULL);
        return 0;
    }
    struct epoll_event ev = {.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0u) |
                                       ((what & CURL_POLL_OUT) ? EPOLLOUT : 0u),
                             .data.fd = fd};
    /* A socket libcurl closed left the set by itself (close(2)); MOD on a
     * new one with the same number says ENOENT: ADD it then. */
    int op = sockp ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(d->ep, op, fd, &ev) != 0)
        epoll_ctl(d->ep, errno == ENOENT ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev);
    curl_multi_assign(d->multi, fd, d);
    return 0;
}

/* libcurl's timer callback: only noted; s_poll acts on it. */
static int s_on_timer(CURLM *m, long timeout_ms, void *arg)
{
    (void)m;
    s_direct_t *d = arg;
    d->timer_us = timeout_ms < 0 ? 0 : tl_now_us() + (uint64_t)timeout_ms * 1000;
    return 0;
}

static void *s_open(sc_agent_t *a)
{
    s_direct_t *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->a = a;
    d->multi = curl_multi_init();
    d->ep = epoll_create1(EPOLL_CLOEXEC);
    if (!d->multi || d->ep < 0) {
        if (d->multi)
            curl_multi_cleanup(d->multi);
        if (d->ep >= 0)
            close(d->ep);
        free(d);
        return NULL;
    }
    curl_multi_setopt(d->multi, CURLMOPT_SOCKETFUNCTION, s_on_socket);
    curl_multi_setopt(d->multi, CURLMOPT_SOCKETDATA, d);
    curl_multi_setopt(d->multi, CURLMOPT_TIMERFUNCTION, s_on_timer);
    curl_multi_setopt(d->multi, CURLMOPT_TIMERDATA, d);
    for (int c = 0; c < SC_CLASSES; c++) {
        char h[64];
        struct curl_slist *l = curl_slist_append(NULL, "Content-Type: application/json");
        snprintf(h, sizeof h, "X-Agentbus-Timeout-Ms: %ld",
                 (long)(sc_classes[c].timeout_s / a->cfg->scale * 1000));
        l = l ? curl_slist_append(l, h) : NULL;
        snprintf(h, sizeof h, "X-Agentbus-Priority: %u", sc_prio_interactive);
        if (l && sc_classes[c].interactive)
            l = curl_slist_append(l, h);
        d->headers[c] = l;
    }
    /* Keep-alive: up to 8 idle connections per agent; new-connection mode
     * closes each one after its call (CURLOPT_FORBID_REUSE). */
    curl_multi_setopt(d->multi, CURLMOPT_MAXCONNECTS, 8L);
    return d;
}

/* Notes the first byte (the first token of a stream) and finds
 * "done":true in the body, across chunk boundaries. */
static size_t s_write(char *ptr, size_t size, size_t n, void *arg)
{
    sc_call_t *call = arg;
    size_t len = size * n;
    static const char pat[] = "\"done\":true";
    const size_t pl = sizeof pat - 1, keep = pl - 1;
    if (!call->first_us && len)
        call->first_us = tl_now_us();
    if (call->saw_done || !len)
        return len;
    char joint[2 * sizeof pat];
    size_t head = len < keep ? len : keep;
    memcpy(joint, call->tail, call->tail_len);
    memcpy(joint + call->tail_len, ptr, head);
    if (memmem(joint, call->tail_len + head, pat, pl) || memmem(ptr, len, pat, pl))
        call->saw_done = 1;
    if (len >= keep) { /* the tail: the last KEEP bytes seen */
        memcpy(call->tail, ptr + len - keep, keep);
        call->tail_len = keep;
    } else {
        size_t total = call->tail_len + len, drop = total > keep ? total - keep : 0;
        memmove(call->tail, call->tail + drop, call->tail_len - drop);
        call->tail_len -= drop;
        memcpy(call->tail + call->tail_len, ptr, len);
        call->tail_len += len;
    }
    return len;
}

static int s_start(void *eng, sc_call_t *call)
{
    s_direct_t *d = eng;
    const sc_run_cfg_t *cfg = d->a->cfg;
    const sc_req_t *r = &call->req;
    size_t cap = r->prompt_len + 256;
    char *body = malloc(cap), url[96];
    CURL *e = curl_easy_init();
    if (!body || !e) {
        free(body);
        if (e)
            curl_easy_cleanup(e);
        return -1;
    }
    /* The words of a prompt need no JSON escaping. */
    snprintf(body, cap,
             "{\"model\":\"%s\",\"prompt\":\"%s\",\"stream\":%s,"
             "\"options\":{\"seed\":42,\"num_predict\":%d}}",
             sc_models[r->model].name, r->prompt, r->stream ? "true" : "false", r->num_predict);
    snprintf(url, sizeof url, "%s/api/generate",
             cfg->gateway[0] ? cfg->gateway : cfg->sim_url[r->agent % SC_GPUS]);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, d->headers[r->cls]);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body);
    free(body);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, s_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, call);
    curl_easy_setopt(e, CURLOPT_PRIVATE, call);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)call->timeout_ms);
    if (!cfg->keepalive) {
        curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
        curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    }
    call->handle = e;
    if (d->nout == d->capout) {
        size_t cap2 = d->capout ? 2 * d->capout : 16;
        CURL **o = realloc(d->out, cap2 * sizeof *o);
        if (!o) {
            curl_easy_cleanup(e);
            return -1;
        }
        d->out = o;
        d->capout = cap2;
    }
    if (curl_multi_add_handle(d->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        return -1;
    }
    d->out[d->nout++] = e;
    return 0;
}

static void s_finish(s_direct_t *d, CURL *e, CURLcode res)
{
    sc_call_t *call = NULL;
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&call);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_multi_remove_handle(d->multi, e);
    curl_easy_cleanup(e);
    for (size_t i = 0; i < d->nout; i++)
        if (d->out[i] == e) {
            d->out[i] = d->out[--d->nout];
            break;
        }
    int err = SC_E_NONE;
    if (res == CURLE_OPERATION_TIMEDOUT)
        err = SC_E_TIMEOUT;
    else if (res != CURLE_OK)
        err = SC_E_CONN;
    else if (status == 503)
        err = SC_E_HTTP503;
    else if (status == 504) /* the gateway: the deadline passed on the bus */
        err = SC_E_TIMEOUT;
    else if (status != 200 || !call->saw_done)
        err = SC_E_HTTP;
    sc_call_end(call, err == SC_E_NONE, err);
}

static int s_poll(void *eng, int timeout_ms)
{
    s_direct_t *d = eng;
    int running = 0, left = 0, n = 0;
    uint64_t now = tl_now_us();
    if (d->timer_us) {
        uint64_t due = d->timer_us > now ? (d->timer_us - now + 999) / 1000 : 0;
        if (due < (uint64_t)timeout_ms)
            timeout_ms = (int)due;
    }
    struct epoll_event ev[64];
    int ready = epoll_wait(d->ep, ev, 64, timeout_ms > 0 ? timeout_ms : 0);
    for (int i = 0; i < ready; i++) {
        int flags = ((ev[i].events & EPOLLIN) ? CURL_CSELECT_IN : 0) |
                    ((ev[i].events & EPOLLOUT) ? CURL_CSELECT_OUT : 0) |
                    ((ev[i].events & (EPOLLERR | EPOLLHUP)) ? CURL_CSELECT_ERR : 0);
        curl_multi_socket_action(d->multi, ev[i].data.fd, flags, &running);
    }
    if (d->timer_us && tl_now_us() >= d->timer_us) {
        d->timer_us = 0;
        curl_multi_socket_action(d->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    }
    CURLMsg *m;
    while ((m = curl_multi_info_read(d->multi, &left)))
        if (m->msg == CURLMSG_DONE) {
            s_finish(d, m->easy_handle, m->data.result);
            n++;
        }
    return n;
}

static void s_close(void *eng)
{
    s_direct_t *d = eng;
    if (!d)
        return;
    /* Calls still out are ended as cut (the agent marked itself closing). */
    while (d->nout)
        s_finish(d, d->out[d->nout - 1], CURLE_ABORTED_BY_CALLBACK);
    free(d->out);
    curl_multi_cleanup(d->multi);
    close(d->ep);
    for (int c = 0; c < SC_CLASSES; c++)
        curl_slist_free_all(d->headers[c]);
    free(d);
}

const sc_engine_ops_t sc_direct_ops = {"direct", s_open, s_start, s_poll, s_close};
