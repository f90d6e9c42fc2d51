/*
 * gw_bus.c - the bus thread: a poll() loop over the library's fd and an
 * eventfd that other threads ring when they queue work, so a request from
 * HTTP starts within one loop turn and the handle stays single-threaded.
 * Beside it the lookup thread, with a connection of its own, runs the
 * operator queries that the library offers only as blocking calls.
 */
#include "gw_bus.h"
#include "gw_mhdlog.h"
#include "agentbus.h"
#include "gw_keys.h"

#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

enum { S_START = 0, S_CANCEL = 1, S_UNWATCH = 2 };

typedef struct s_cmd {
    struct s_cmd *next;
    gw_call_t *call;
    int cancel; /* S_START, S_CANCEL or S_UNWATCH */
} s_cmd_t;

struct gw_bus {
    pthread_t thread;
    ab_client_t *clients[1 + GW_IDENTS_MAX]; /* [0]: the gateway's own connection;
                                              * [i > 0]: the API keys' identities */
    unsigned n_clients;
    int efd;
    int epfd;             /* client sockets of waiting calls (EPOLLRDHUP) */
    int default_timeout_ms;
    char service[128];
    pthread_mutex_t lock; /* guards the command queue and stopping */
    s_cmd_t *head, *tail;
    int stopping;
    atomic_int connected;
    atomic_llong heard_ms; /* s_now_ms() of the broker's last answer on CTL, 0: never */
    /* The lookup thread (s_ctl_thread): operator queries on a connection
     * of its own, so a broker that does not answer stalls only them. */
    pthread_t ctl_thread;
    int ctl_started;
    ab_client_t *ctl;
    pthread_cond_t ctl_cond; /* with LOCK: a lookup queued, or stopping */
    s_cmd_t *ctl_head, *ctl_tail; /* under LOCK */
    atomic_ullong hangups;
    atomic_ullong cancelled;
    /* gw_bus_serve: other I/O this thread runs (HTTP), set once */
    atomic_int io_fd;
    gw_io_fn *io_run;
    void *io_arg;
};

gw_call_t *gw_call_new(gw_op_t op)
{
    gw_call_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    pthread_mutex_init(&c->lock, NULL);
    c->refs = 1;
    c->op = op;
    c->watch_fd = -1;
    return c;
}

void gw_call_unref(gw_call_t *c)
{
    if (!c)
        return;
    if (atomic_fetch_sub(&c->refs, 1) > 1)
        return;
    gw_event_t *e;
    while ((e = gw_call_pop(c)))
        free(e);
    free(c->pb);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* What an event of SIZE bytes holds: its record too, so that empty chunks
 * (a worker may send millions) count against the bounds. */
#define S_COST(size) (sizeof(gw_event_t) + (size))

gw_event_t *gw_call_pop(gw_call_t *c)
{
    gw_event_t *e = c->head;
    if (e) {
        c->head = e->next;
        if (!c->head)
            c->tail = NULL;
        c->queued -= S_COST(e->size);
    }
    return e;
}

/* Frees the events waiting (caller holds the lock). */
static void s_drop_events(gw_call_t *c)
{
    for (gw_event_t *e = c->head, *n; e; e = n) {
        n = e->next;
        free(e);
    }
    c->head = c->tail = NULL;
    c->queued = 0;
}

/* Whether C's next event (not final) of SIZE bytes is past its bound
 * (caller holds the lock): once more bytes wait than MAX_QUEUED, which
 * only a client that does not take its stream makes happen, what waits is
 * dropped and every chunk after it: its stream is broken anyway, and the
 * answer's tokens would pile up here for as long as the bus sends them.
 * The final event still goes (the call ends as before). 2 the first time,
 * 1 after, 0 within the bound. */
static int s_over_bound(gw_call_t *c, size_t size, int final)
{
    if (final || !c->max_queued)
        return 0;
    if (c->overflow)
        return 1;
    if (!c->head || c->queued + S_COST(size) <= c->max_queued)
        return 0; /* one event always goes, however large */
    c->overflow = 1;
    s_drop_events(c);
    if (c->overflows)
        atomic_fetch_add(c->overflows, 1);
    return 2;
}

/* Whether C's next event of SIZE bytes passes MAX_WHOLE (caller holds the
 * lock): with the events before it, for a stream: false answer, or alone,
 * for a streamed one (WHOLE_EACH). An honest worker sends such an answer
 * as one reply and a stream in small chunks, but a worker may send any
 * number of chunks, each up to the bus's 64 MiB: without a bound a stream:
 * false answer's waited here until the final one (200 MB of chunks held the
 * gateway at 873 MB). Past it the call ends AB_EBACKEND there: what waits of
 * a stream: false answer is dropped (a streamed one's earlier chunks still
 * go), and every event after (the final one too, when it comes). 2 the
 * first time, with the error's text in TEXT; 1 after; 0 within the bound. */
static int s_over_whole(gw_call_t *c, size_t size, char *text, size_t cap)
{
    if (c->whole_cut)
        return 1;
    size_t n = c->whole_each ? size : c->whole + S_COST(size);
    if (!c->max_whole || n <= c->max_whole) {
        c->whole = n;
        return 0;
    }
    c->whole_cut = 1;
    if (c->whole_each) {
        snprintf(text, cap, "the worker sent a chunk of %zu bytes, over the %zu the gateway takes",
                 size, c->max_whole);
    } else {
        s_drop_events(c);
        snprintf(text, cap,
                 "the worker's answer passed %zu bytes, the most the gateway holds of an "
                 "answer with stream false: ask for it streamed",
                 c->max_whole);
    }
    return 2;
}

int gw_call_deliver(gw_call_t *c, int status, int final, const void *data, size_t size,
                    const char *text)
{
    gw_event_t *e = malloc(sizeof *e + size);
    pthread_mutex_lock(&c->lock);
    char cut[160];
    int whole = s_over_whole(c, size, cut, sizeof cut);
    if (whole == 2) { /* the call ends here, with this error */
        status = AB_EBACKEND;
        final = 1;
        size = 0;
        text = cut;
    }
    int over = whole == 1 ? 1 : s_over_bound(c, size, final);
    if (over) {
        free(e);
    } else if (e) {
        e->next = NULL;
        e->status = status;
        e->final = final;
        e->size = size;
        if (size)
            memcpy(e->data, data, size);
        if (c->tail)
            c->tail->next = e;
        else
            c->head = e;
        c->tail = e;
        c->queued += S_COST(size);
    } else if (!final) {
        status = AB_ENOMEM; /* a lost chunk must not pass silently */
    }
    if ((final || status != AB_OK) && whole != 1) {
        c->final = 1;
        c->status = status;
        snprintf(c->error, sizeof c->error, "%s", text ? text : "");
    }
    int resume = c->wake ? c->wake(c) : 0;
    size_t bound = c->max_queued;
    pthread_mutex_unlock(&c->lock);
    if (resume && c->resume)
        c->resume(c);
    if (whole == 2) /* a worker can make these: rate limited, outside the lock */
        gw_log_limited("an answer cut: %s", cut);
    else if (over == 2) /* any client can make these */
        gw_log_limited("a streamed answer cut: over %zu bytes of it waited for a client that "
                       "did not take them", bound);
    return whole == 2 ? 2 : over;
}

static int s_queue(gw_bus_t *b, gw_call_t *c, int cancel, int ring);

static void s_on_event(ab_client_t *client, const ab_reply_event_t *ev, void *arg)
{
    (void)client;
    gw_call_t *c = arg;
    int cut = gw_call_deliver(c, ev->status, ev->final, ev->data, ev->size, ev->error_text) == 2;
    if (ev->final) {
        c->ended = 1;
        gw_call_unref(c);
    } else if (cut) {
        /* Its stream is broken (the HTTP side shuts the connection): the
         * worker and its backend need not make the rest. Cancelled on the
         * next turn, not here: the library still holds the request while
         * this callback runs. Not counted as a client gone. */
        s_queue(c->bus, c, S_CANCEL, 1);
    }
}

/* The connection CALL goes over. */
static ab_client_t *s_client(gw_bus_t *b, const gw_call_t *c)
{
    return b->clients[c->ident < b->n_clients ? c->ident : 0];
}

static void s_lookup_queue(gw_bus_t *b, gw_call_t *c, ab_client_t *cl);

static void s_start(gw_bus_t *b, gw_call_t *c)
{
    ab_client_t *cl = s_client(b, c);
    c->bus = b;
    if (c->hungup) { /* the client left before the request was sent */
        gw_call_deliver(c, AB_ECANCELLED, 1, NULL, 0, "client closed the connection");
        c->ended = 1;
        gw_call_unref(c);
        return;
    }
    if (c->op == GW_OP_WORKERS) {
        s_lookup_queue(b, c, cl);
        return;
    }
    if (!ab_client_connected(cl) && !ab_client_refused(cl)) {
        /* Sent now it would wait for a reconnect until its deadline (five
         * minutes by default): refuse it, so the client retries or goes
         * elsewhere. Calls in flight when the connection drops end with
         * AB_EDISCONNECTED from the library: 503 as well. A key the broker
         * refused is the library's to answer (AB_EDENIED, with why). */
        gw_call_deliver(c, AB_EDISCONNECTED, 1, NULL, 0, "broker unreachable");
        c->ended = 1;
        gw_call_unref(c);
        return;
    }
    ab_request_opts_t o = AB_REQUEST_OPTS_INIT;
    o.timeout_ms = c->timeout_ms > 0 ? c->timeout_ms : b->default_timeout_ms;
    o.model = c->model[0] ? c->model : NULL;
    o.cache_flags = c->cache_flags;
    o.priority = c->priority;
    c->started = 1;
    int rc = ab_client_request_start(cl, b->service, c->pb, c->pb_len, &o, s_on_event, c,
                                     &c->id);
    if (rc != AB_OK) {
        gw_call_deliver(c, rc, 1, NULL, 0, ab_client_last_error(cl));
        c->ended = 1;
        gw_call_unref(c);
    }
}

/* --- the lookup thread ------------------------------------------------------------- */
static long long s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Whether RC, of an operator query, came from the broker: any answer,
 * even a refusal, shows that it reads and answers. */
static int s_answered(int rc)
{
    return rc != AB_ETIMEOUT && rc != AB_EDEADLINE && rc != AB_EDISCONNECTED &&
           rc != AB_ESTOPPED && rc != AB_EBUSY && rc != AB_ENOMEM;
}

/* Ends every lookup of Q with RC and the broker's answer (BUF, LEN). */
static void s_lookups_end(gw_bus_t *b, s_cmd_t *q, int rc, const void *buf, size_t len,
                          const char *text)
{
    if (!q)
        return;
    while (q) {
        s_cmd_t *next = q->next;
        gw_call_deliver(q->call, rc, 1, buf, rc == AB_OK ? len : 0, text);
        gw_call_unref(q->call); /* the command's */
        free(q);
        q = next;
    }
    /* A connection resumed from here answers on the bus thread's next
     * turn (gw_bus_serve): wake it rather than wait for its timer. */
    uint64_t one = 1;
    if (write(b->efd, &one, sizeof one) < 0) {
        /* the counter is full: the thread is awake anyway */
    }
}

/* Takes the queued lookups (caller holds LOCK). */
static s_cmd_t *s_lookups_take(gw_bus_t *b)
{
    s_cmd_t *q = b->ctl_head;
    b->ctl_head = b->ctl_tail = NULL;
    return q;
}

/* Hands lookup C (with the command's reference) to the lookup thread. It
 * asks over the gateway's own connection; the broker's worker list is the
 * same for every key, but a key the broker refused (CL, C's connection)
 * is refused here too, as its requests are. Bus thread. */
static void s_lookup_queue(gw_bus_t *b, gw_call_t *c, ab_client_t *cl)
{
    s_cmd_t *q = ab_client_refused(cl) ? NULL : calloc(1, sizeof *q);
    if (q) {
        q->call = c;
        pthread_mutex_lock(&b->lock);
        int stopping = b->stopping; /* the lookup thread may be gone */
        if (!stopping) {
            if (b->ctl_tail)
                b->ctl_tail->next = q;
            else
                b->ctl_head = q;
            b->ctl_tail = q;
            pthread_cond_signal(&b->ctl_cond);
        }
        pthread_mutex_unlock(&b->lock);
        if (!stopping)
            return;
        free(q);
        gw_call_deliver(c, AB_ESTOPPED, 1, NULL, 0, "gateway stopping");
    } else if (ab_client_refused(cl)) {
        gw_call_deliver(c, AB_EDENIED, 1, NULL, 0, ab_client_last_error(cl));
    } else {
        gw_call_deliver(c, AB_ENOMEM, 1, NULL, 0, "out of memory");
    }
    c->ended = 1;
    gw_call_unref(c);
}

/* One "workers" query for every lookup in Q. A failure also ends the
 * lookups queued meanwhile: they asked a broker that did not answer
 * either, and waiting for another try would make them wait twice. */
static void s_lookups_run(gw_bus_t *b, s_cmd_t *q)
{
    if (!atomic_load(&b->connected)) {
        s_lookups_end(b, q, AB_EDISCONNECTED, NULL, 0, "broker unreachable");
        return;
    }
    void *buf = NULL;
    size_t len = 0;
    int rc = ab_client_control(b->ctl, "workers", GW_BUS_LOOKUP_MS, &buf, &len);
    if (s_answered(rc))
        atomic_store(&b->heard_ms, s_now_ms());
    char text[256];
    snprintf(text, sizeof text, "%s", rc == AB_OK ? "" : ab_client_last_error(b->ctl));
    s_lookups_end(b, q, rc, buf, len, text);
    if (rc != AB_OK) {
        pthread_mutex_lock(&b->lock);
        q = s_lookups_take(b);
        pthread_mutex_unlock(&b->lock);
        s_lookups_end(b, q, rc, NULL, 0, text);
    }
    ab_free(buf);
}

/* Asks the broker for its stats when it has not answered for a probe
 * interval: its answer is what gw_bus_heard_ms reports. libzmq's own
 * heartbeat only drops the connection after 6 s of silence, and a broker
 * that is stopped (SIGSTOP, swapping) keeps its TCP connections up. */
static void s_probe(gw_bus_t *b)
{
    if (s_now_ms() - atomic_load(&b->heard_ms) < GW_BUS_PROBE_MS || !atomic_load(&b->connected))
        return;
    void *buf = NULL;
    size_t len = 0;
    int rc = ab_client_control(b->ctl, "stats", GW_BUS_LOOKUP_MS, &buf, &len);
    ab_free(buf);
    if (s_answered(rc)) {
        atomic_store(&b->heard_ms, s_now_ms());
        return;
    }
    /* The lookups queued meanwhile asked the same silent broker. */
    pthread_mutex_lock(&b->lock);
    s_cmd_t *q = s_lookups_take(b);
    pthread_mutex_unlock(&b->lock);
    s_lookups_end(b, q, rc, NULL, 0, ab_client_last_error(b->ctl));
}

/* Waits (LOCK held) until a lookup is queued, the bus stops, or MS pass. */
static void s_ctl_wait(gw_bus_t *b, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    if (!b->ctl_head && !b->stopping)
        pthread_cond_timedwait(&b->ctl_cond, &b->lock, &ts);
}

/* The blocking operator queries (ab_client_control has no asynchronous
 * form) run here, on CTL, never on the bus thread: a broker that does not
 * answer used to stall every stream and /healthz for 5 s per lookup. */
static void *s_ctl_thread(void *arg)
{
    gw_bus_t *b = arg;
    for (;;) {
        while (ab_client_poll(b->ctl, 0) > 0) /* heartbeats, connection state */
            ;
        s_probe(b);
        int wait = ab_client_next_timeout_ms(b->ctl);
        if (wait < 0 || wait > GW_BUS_PROBE_MS)
            wait = GW_BUS_PROBE_MS;
        pthread_mutex_lock(&b->lock);
        s_ctl_wait(b, wait);
        s_cmd_t *q = s_lookups_take(b);
        int stopping = b->stopping;
        pthread_mutex_unlock(&b->lock);
        if (stopping) {
            s_lookups_end(b, q, AB_ESTOPPED, NULL, 0, "gateway stopping");
            return NULL;
        }
        if (q)
            s_lookups_run(b, q);
    }
}

static void s_cancel(gw_bus_t *b, gw_call_t *c)
{
    if (c->started && !c->ended)
        ab_client_cancel(s_client(b, c), c->id); /* its final event runs inside */
    gw_call_unref(c);                        /* the command's reference */
}

/* Runs what other threads queued; 1 if the bus is stopping. */
static int s_run_commands(gw_bus_t *b)
{
    uint64_t v;
    if (read(b->efd, &v, sizeof v) < 0 && errno != EAGAIN)
        return 1;
    pthread_mutex_lock(&b->lock);
    s_cmd_t *q = b->head;
    b->head = b->tail = NULL;
    int stopping = b->stopping;
    pthread_mutex_unlock(&b->lock);
    while (q) {
        s_cmd_t *next = q->next;
        if (q->cancel == S_CANCEL) {
            s_cancel(b, q->call);
        } else if (q->cancel == S_UNWATCH) {
            gw_call_unref(q->call); /* the watch's reference */
            gw_call_unref(q->call); /* the command's */
        } else {
            s_start(b, q->call);
        }
        free(q);
        q = next;
    }
    return stopping;
}

/* CALL's client left: marks it gone and counts it, once, unless its final
 * event came first (then it ended as the bus said, and is answered so). */
static void s_client_gone(gw_bus_t *b, gw_call_t *c)
{
    pthread_mutex_lock(&c->lock);
    int first = !c->final && !c->gone && !c->overflow; /* a cut stream is counted as cut */
    c->gone = 1;
    pthread_mutex_unlock(&c->lock);
    if (first)
        atomic_fetch_add(&b->cancelled, 1);
}

int gw_call_gone(gw_call_t *c)
{
    pthread_mutex_lock(&c->lock);
    int gone = c->gone;
    pthread_mutex_unlock(&c->lock);
    return gone;
}

/* Clients that hung up while their call waits: cancel the bus request so
 * the worker and its backend stop (libmicrohttpd does not watch a
 * suspended connection). Runs before the commands of the same turn, so an
 * UNWATCH never frees a call an event here still points at. */
static void s_hangups(gw_bus_t *b)
{
    struct epoll_event ev[64];
    int n = epoll_wait(b->epfd, ev, 64, 0);
    for (int i = 0; i < n; i++) {
        gw_call_t *c = ev[i].data.ptr;
        c->hungup = 1;
        atomic_fetch_add(&b->hangups, 1);
        s_client_gone(b, c);
        if (c->started && !c->ended)
            ab_client_cancel(s_client(b, c), c->id);
    }
}

/* The soonest timer of any connection, capped at 100 ms. */
static int s_next_timeout(gw_bus_t *b)
{
    int wait = 100;
    for (unsigned i = 0; i < b->n_clients; i++) {
        int w = ab_client_next_timeout_ms(b->clients[i]);
        if (w >= 0 && w < wait)
            wait = w;
    }
    return wait;
}

static void *s_thread(void *arg)
{
    gw_bus_t *b = arg;
    enum { FIXED = 3 }; /* eventfd, hang-up epoll, HTTP */
    struct pollfd p[FIXED + 1 + GW_IDENTS_MAX];
    for (unsigned i = 0; i < b->n_clients; i++) {
        int fd = -1;
        ab_client_fd(b->clients[i], &fd);
        p[FIXED + i] = (struct pollfd){fd, POLLIN, 0};
    }
    int io_wait = -1; /* what RUN asked for last */
    for (;;) {
        int io = atomic_load(&b->io_fd);
        p[0] = (struct pollfd){b->efd, POLLIN, 0};
        p[1] = (struct pollfd){b->epfd, POLLIN, 0};
        p[2] = (struct pollfd){io, POLLIN, 0}; /* a negative fd is skipped by poll */
        int wait = s_next_timeout(b);
        if (io_wait >= 0 && io_wait < wait)
            wait = io_wait;
        poll(p, FIXED + b->n_clients, wait);
        s_hangups(b);
        if (io >= 0) /* new HTTP requests queue their commands here */
            b->io_run(b->io_arg);
        if (s_run_commands(b))
            break;
        /* The library fds are edge-triggered: drain until nothing is left. */
        for (unsigned i = 0; i < b->n_clients; i++)
            while (ab_client_poll(b->clients[i], 0) > 0)
                ;
        if (io >= 0) /* connections resumed by those events answer now */
            io_wait = b->io_run(b->io_arg);
        atomic_store(&b->connected, ab_client_connected(b->clients[0]));
    }
    /* Ends every call in flight (AB_ESTOPPED). */
    for (unsigned i = 0; i < b->n_clients; i++)
        ab_client_destroy(&b->clients[i]);
    if (atomic_load(&b->io_fd) >= 0)
        b->io_run(b->io_arg); /* their connections resume, to be closed */
    return NULL;
}

void gw_bus_wake(gw_bus_t *b)
{
    uint64_t one = 1;
    if (write(b->efd, &one, sizeof one) < 0) {
        /* the counter is full: the thread is awake anyway */
    }
}

void gw_bus_serve(gw_bus_t *b, int fd, gw_io_fn *run, void *arg)
{
    b->io_run = run;
    b->io_arg = arg;
    atomic_store(&b->io_fd, fd); /* publishes RUN and ARG to the thread */
}

/* Connects one client: NAME ("" none) and KEYFILE (NULL: $AB_KEY's). */
static ab_client_t *s_connect(const char *endpoint, const char *name, int timeout_ms,
                              const char *keyfile)
{
    ab_options_t *o = ab_options_new();
    ab_client_t *cl = NULL;
    if (!o || ab_options_set_endpoint(o, endpoint) != AB_OK ||
        (name && *name && ab_options_set_name(o, name) != AB_OK) ||
        ab_options_set_timeout_ms(o, timeout_ms) != AB_OK) {
        fprintf(stderr, "agentbus-gateway: bad broker endpoint or name\n");
    } else if (keyfile && ab_options_set_key_file(o, keyfile) != AB_OK) {
        fprintf(stderr, "agentbus-gateway: cannot use the key file %s (a secret certificate "
                        "from brokerctl keygen is expected)\n", keyfile);
    } else {
        int rc = ab_client_new(&cl, o);
        if (rc != AB_OK)
            fprintf(stderr, "agentbus-gateway: cannot connect to %s%s%s: %s\n", endpoint,
                    keyfile ? " with the key " : "", keyfile ? keyfile : "", ab_strerror(rc));
    }
    ab_options_destroy(&o);
    return cl;
}

gw_bus_t *gw_bus_new(const char *endpoint, const char *name, int default_timeout_ms,
                     const char *service, char *const *idents, unsigned n_idents)
{
    gw_bus_t *b = n_idents <= GW_IDENTS_MAX ? calloc(1, sizeof *b) : NULL;
    if (!b)
        return NULL;
    atomic_init(&b->io_fd, -1);
    b->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    b->epfd = epoll_create1(EPOLL_CLOEXEC);
    b->default_timeout_ms = default_timeout_ms;
    snprintf(b->service, sizeof b->service, "%s", service);
    pthread_mutex_init(&b->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->ctl_cond, &ca);
    pthread_condattr_destroy(&ca);
    if (b->efd < 0 || b->epfd < 0)
        goto fail;
    for (unsigned i = 0; i <= n_idents; i++) {
        b->clients[i] = s_connect(endpoint, i ? "" : name, default_timeout_ms,
                                  i ? idents[i - 1] : NULL);
        if (!b->clients[i])
            goto fail;
        b->n_clients = i + 1;
    }
    b->ctl = s_connect(endpoint, "", default_timeout_ms, NULL);
    if (!b->ctl)
        goto fail;
    if (pthread_create(&b->ctl_thread, NULL, s_ctl_thread, b) != 0)
        goto fail;
    b->ctl_started = 1;
    if (pthread_create(&b->thread, NULL, s_thread, b) != 0)
        goto fail;
    return b;
fail:
    if (b->ctl_started) {
        pthread_mutex_lock(&b->lock);
        b->stopping = 1;
        pthread_cond_signal(&b->ctl_cond);
        pthread_mutex_unlock(&b->lock);
        ab_client_stop(b->ctl);
        pthread_join(b->ctl_thread, NULL);
    }
    ab_client_destroy(&b->ctl);
    pthread_cond_destroy(&b->ctl_cond);
    for (unsigned i = 0; b && i < b->n_clients; i++)
        ab_client_destroy(&b->clients[i]);
    if (b && b->efd >= 0)
        close(b->efd);
    if (b && b->epfd >= 0)
        close(b->epfd);
    free(b);
    return NULL;
}

/* Queues a command; RING wakes the bus thread for it. */
static int s_queue(gw_bus_t *b, gw_call_t *c, int cancel, int ring)
{
    s_cmd_t *q = calloc(1, sizeof *q);
    if (!q)
        return -1;
    q->call = c;
    q->cancel = cancel;
    pthread_mutex_lock(&b->lock);
    if (b->stopping) {
        pthread_mutex_unlock(&b->lock);
        free(q);
        return -1;
    }
    atomic_fetch_add(&c->refs, 1);
    if (b->tail)
        b->tail->next = q;
    else
        b->head = q;
    b->tail = q;
    pthread_mutex_unlock(&b->lock);
    uint64_t one = 1;
    if (ring && write(b->efd, &one, sizeof one) < 0) {
        /* the counter is full: the thread is awake anyway */
    }
    return 0;
}

int gw_bus_submit(gw_bus_t *b, gw_call_t *c)
{
    return s_queue(b, c, S_START, 1);
}

void gw_bus_cancel(gw_bus_t *b, gw_call_t *c)
{
    s_client_gone(b, c);
    s_queue(b, c, S_CANCEL, 1);
}

void gw_bus_watch(gw_bus_t *b, gw_call_t *c, int fd)
{
    if (fd < 0 || c->watch_fd >= 0)
        return;
    struct epoll_event ev = {.events = EPOLLRDHUP | EPOLLONESHOT, .data.ptr = c};
    atomic_fetch_add(&c->refs, 1); /* the watch's, dropped by UNWATCH */
    if (epoll_ctl(b->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        gw_call_unref(c);
        return;
    }
    c->watch_fd = fd;
}

void gw_bus_unwatch(gw_bus_t *b, gw_call_t *c)
{
    if (c->watch_fd < 0)
        return;
    epoll_ctl(b->epfd, EPOLL_CTL_DEL, c->watch_fd, NULL);
    c->watch_fd = -1;
    /* The reference goes on the bus thread, after any event it holds. It
     * rides with the next command (or the thread's next timer turn, at most
     * 100 ms): a wake-up of its own, as the response leaves and the
     * client's next request arrives, took a core from the calls in flight. */
    if (s_queue(b, c, S_UNWATCH, 0) != 0)
        gw_call_unref(c); /* stopped: no event can come any more */
}

unsigned long long gw_bus_hangups(const gw_bus_t *b)
{
    return atomic_load(&((gw_bus_t *)b)->hangups);
}

unsigned long long gw_bus_cancelled(const gw_bus_t *b)
{
    return atomic_load(&((gw_bus_t *)b)->cancelled);
}

int gw_bus_connected(const gw_bus_t *b)
{
    return atomic_load(&((gw_bus_t *)b)->connected);
}

long long gw_bus_heard_ms(const gw_bus_t *b)
{
    long long at = atomic_load(&((gw_bus_t *)b)->heard_ms);
    return at ? s_now_ms() - at : -1;
}

int gw_bus_responsive(const gw_bus_t *b)
{
    long long heard = gw_bus_heard_ms(b);
    return gw_bus_connected(b) && heard >= 0 && heard < GW_BUS_SILENT_MS;
}

void gw_bus_stop(gw_bus_t *b)
{
    pthread_mutex_lock(&b->lock);
    int was = b->stopping;
    b->stopping = 1;
    pthread_cond_signal(&b->ctl_cond);
    pthread_mutex_unlock(&b->lock);
    if (was)
        return;
    ab_client_stop(b->ctl); /* a lookup waiting for the broker ends now */
    pthread_join(b->ctl_thread, NULL);
    uint64_t one = 1;
    if (write(b->efd, &one, sizeof one) < 0) {
        /* awake anyway */
    }
    pthread_join(b->thread, NULL);
}

void gw_bus_destroy(gw_bus_t **bp)
{
    gw_bus_t *b = bp ? *bp : NULL;
    if (!b)
        return;
    gw_bus_stop(b);
    /* Commands queued after the last turn: drop their references. */
    for (s_cmd_t *q = b->head, *n; q; q = n) {
        n = q->next;
        if (q->cancel == S_START)
            gw_call_deliver(q->call, AB_ESTOPPED, 1, NULL, 0, "gateway stopping");
        if (q->cancel == S_UNWATCH)
            gw_call_unref(q->call);
        gw_call_unref(q->call);
        free(q);
    }
    ab_client_destroy(&b->ctl);
    close(b->efd);
    close(b->epfd);
    pthread_cond_destroy(&b->ctl_cond);
    pthread_mutex_destroy(&b->lock);
    free(b);
    *bp = NULL;
}
