/* metrics_http.c - see metrics_http.h. */
#define AB_LOG_SUBSYS "metrics" /* log.h: the subsystem in log lines */
#include "metrics_http.h"
#include "log.h"
#include "util.h"

#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define AB_HTTP_CONNS 32      /* scrapers and probes are few */
#define AB_HTTP_TIMEOUT_S 10  /* an idle or slow client is cut after this */
/* A request's headers are complete within this from the connection's
 * start (or its previous request's end), or it is closed: libmicrohttpd's
 * timeout restarts at each byte, so a byte every few seconds on each of
 * the 32 connections would keep every probe out. */
#define AB_HTTP_HEADER_MS 5000
#define AB_PROM_TYPE "text/plain; version=0.0.4; charset=utf-8"

struct ab_http {
    struct MHD_Daemon *d;
    unsigned port;
    pthread_mutex_t mu; /* guards the fields below: held for copies and swaps only */
    pthread_cond_t rendered; /* signalled by each publish (CLOCK_MONOTONIC waits) */
    char *text;
    size_t len;
    uint64_t gen;     /* publishes so far */
    int waiting;      /* scrapes waiting for a render */
    int64_t alive_ms; /* last beat of the loop; 0: none yet */
    int ready;
    /* Open connections (fd -1: a free slot), for the header deadline. */
    struct s_conn {
        int fd;
        int in_request;   /* its headers came; until the request is done */
        int64_t since_ms; /* its start, or its previous request's end */
    } conns[AB_HTTP_CONNS + 8];
    uint64_t cut;        /* connections closed at the header deadline */
    uint64_t cut_logged; /* of those, said in the log */
    int64_t logged_ms;
};

/* Splits SPEC into HOST (brackets removed) and PORT; resolves it into SS.
 * NULL or the reason. */
static const char *s_resolve(const char *spec, struct sockaddr_storage *ss, socklen_t *sslen)
{
    char host[256];
    const char *colon = strrchr(spec, ':');
    if (!colon || colon == spec)
        return "expected HOST:PORT";
    size_t hl = (size_t)(colon - spec);
    if (spec[0] == '[') {
        if (hl < 3 || spec[hl - 1] != ']')
            return "expected [IPv6]:PORT";
        snprintf(host, sizeof host, "%.*s", (int)(hl - 2), spec + 1);
    } else if (memchr(spec, ':', hl)) {
        return "an IPv6 address goes in brackets: [ADDR]:PORT";
    } else if (hl >= sizeof host) {
        return "host name too long";
    } else {
        snprintf(host, sizeof host, "%.*s", (int)hl, spec);
    }
    const char *port = colon + 1;
    long v;
    if (!*port || strlen(port) > 5 || strspn(port, "0123456789") != strlen(port) ||
        ab_parse_long(port, 0, 65535, &v) != 0)
        return "port is not 0..65535";
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, port, &hints, &res) != 0 || !res) {
        if (res)
            freeaddrinfo(res);
        return "host does not resolve to an address";
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *sslen = res->ai_addrlen;
    freeaddrinfo(res);
    return NULL;
}

const char *ab_http_addr_problem(const char *spec)
{
    struct sockaddr_storage ss;
    socklen_t len;
    return s_resolve(spec, &ss, &len);
}

static enum MHD_Result s_reply(struct MHD_Connection *conn, unsigned status, const char *type,
                               const char *body, size_t len)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result s_text(struct MHD_Connection *conn, unsigned status, const char *msg)
{
    return s_reply(conn, status, "text/plain; charset=utf-8", msg, strlen(msg));
}

/* /metrics: asks the loop for a render, waits for it (this connection's
 * thread only), and answers a copy made under the lock. */
static enum MHD_Result s_metrics(ab_http_t *h, struct MHD_Connection *conn)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += AB_HTTP_RENDER_WAIT_MS / 1000;
    until.tv_nsec += (long)(AB_HTTP_RENDER_WAIT_MS % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&h->mu);
    uint64_t gen = h->gen;
    h->waiting++;
    while (h->gen == gen && pthread_cond_timedwait(&h->rendered, &h->mu, &until) == 0)
        ;
    h->waiting--; /* a scrape that gave up asks for nothing more */
    enum MHD_Result rc = MHD_NO;
    int fresh = h->gen != gen && h->text;
    if (fresh)
        rc = s_reply(conn, MHD_HTTP_OK, AB_PROM_TYPE, h->text, h->len);
    pthread_mutex_unlock(&h->mu);
    return fresh ? rc
                 : s_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE,
                          "the broker loop did not render the metrics in time\n");
}

/* /healthz and /readyz, from the time and flag of the latest render. */
static enum MHD_Result s_probe(ab_http_t *h, struct MHD_Connection *conn, int readyz)
{
    pthread_mutex_lock(&h->mu);
    int64_t at = h->alive_ms;
    int ready = h->ready;
    pthread_mutex_unlock(&h->mu);
    int64_t age = ab_now_ms() - at;
    char msg[128];
    if (!at || age > AB_HTTP_STALE_MS) {
        snprintf(msg, sizeof msg, at ? "stale: the broker loop last reported %lld ms ago\n"
                                     : "starting: the broker loop has not reported yet\n",
                 (long long)age);
        return s_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, msg);
    }
    if (readyz && !ready)
        return s_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "not ready: draining or starting\n");
    return s_text(conn, MHD_HTTP_OK, "ok\n");
}

/* The slot of CONN (s_notify), or NULL. */
static struct s_conn *s_slot(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *i =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return i ? i->socket_context : NULL;
}

/* Marks CONN's slot in a request (its headers came) or done with one. */
static void s_mark(ab_http_t *h, struct MHD_Connection *conn, int in_request)
{
    struct s_conn *c = s_slot(conn);
    if (!c)
        return;
    pthread_mutex_lock(&h->mu);
    c->in_request = in_request;
    c->since_ms = ab_now_ms();
    pthread_mutex_unlock(&h->mu);
}

/* A connection opened or closed: its slot taken or freed. The fd is
 * forgotten here, before libmicrohttpd closes it, so the sweep never
 * shuts down a descriptor that was reused. */
static void s_notify(void *cls, struct MHD_Connection *conn, void **ctx,
                     enum MHD_ConnectionNotificationCode what)
{
    ab_http_t *h = cls;
    pthread_mutex_lock(&h->mu);
    struct s_conn *c = *ctx;
    if (what == MHD_CONNECTION_NOTIFY_CLOSED && c) {
        c->fd = -1;
        *ctx = NULL;
    } else if (what == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *i =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        for (size_t k = 0; i && k < sizeof h->conns / sizeof h->conns[0]; k++)
            if (h->conns[k].fd < 0) {
                h->conns[k] = (struct s_conn){i->connect_fd, 0, ab_now_ms()};
                *ctx = &h->conns[k];
                break;
            }
    }
    pthread_mutex_unlock(&h->mu);
}

static void s_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                        enum MHD_RequestTerminationCode toe)
{
    (void)con_cls;
    (void)toe;
    s_mark(cls, conn, 0);
}

static enum MHD_Result s_access(void *cls, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *version, const char *upload,
                                size_t *upload_len, void **con_cls)
{
    (void)version;
    (void)upload;
    ab_http_t *h = cls;
    if (!*con_cls) { /* first call: headers only; answer on the next */
        *con_cls = h;
        s_mark(h, conn, 1);
        return MHD_YES;
    }
    if (*upload_len) { /* a body is not expected; drop it */
        *upload_len = 0;
        return MHD_YES;
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return s_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    if (strcmp(url, "/metrics") == 0)
        return s_metrics(h, conn);
    if (strcmp(url, "/healthz") == 0)
        return s_probe(h, conn, 0);
    if (strcmp(url, "/readyz") == 0)
        return s_probe(h, conn, 1);
    return s_text(conn, MHD_HTTP_NOT_FOUND, "not found (try /metrics, /healthz, /readyz)\n");
}

ab_http_t *ab_http_start(const char *spec)
{
    struct sockaddr_storage ss;
    socklen_t sslen;
    const char *why = s_resolve(spec, &ss, &sslen);
    if (why) {
        AB_ERROR("invalid http address '%s': %s", spec, why);
        return NULL;
    }
    ab_http_t *h = calloc(1, sizeof *h);
    pthread_condattr_t ca;
    if (!h || pthread_condattr_init(&ca) != 0) {
        free(h);
        return NULL;
    }
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int ok = pthread_cond_init(&h->rendered, &ca) == 0;
    pthread_condattr_destroy(&ca);
    if (!ok || pthread_mutex_init(&h->mu, NULL) != 0) {
        if (ok)
            pthread_cond_destroy(&h->rendered);
        free(h);
        return NULL;
    }
    /* A thread per connection: a scrape waiting for its render holds up
     * no probe. */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_POLL |
                     (ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0);
    for (size_t k = 0; k < sizeof h->conns / sizeof h->conns[0]; k++)
        h->conns[k].fd = -1;
    h->d = MHD_start_daemon(flags, 0, NULL, NULL, s_access, h, MHD_OPTION_SOCK_ADDR,
                            (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT,
                            (unsigned)AB_HTTP_CONNS, MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned)AB_HTTP_TIMEOUT_S, MHD_OPTION_NOTIFY_CONNECTION, s_notify,
                            h, MHD_OPTION_NOTIFY_COMPLETED, s_completed, h,
                            MHD_OPTION_THREAD_STACK_SIZE, (size_t)256 * 1024, MHD_OPTION_END);
    if (!h->d) {
        AB_ERROR("cannot listen for HTTP on %s (address in use or not local?)", spec);
        pthread_cond_destroy(&h->rendered);
        pthread_mutex_destroy(&h->mu);
        free(h);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : 0;
    return h;
}

unsigned ab_http_port(const ab_http_t *h)
{
    return h->port;
}

/* Under the lock: closes the connections past the header deadline (a
 * shutdown: the connection's thread sees the end and closes it). */
static void s_sweep(ab_http_t *h, int64_t now_ms)
{
    for (size_t k = 0; k < sizeof h->conns / sizeof h->conns[0]; k++) {
        struct s_conn *c = &h->conns[k];
        if (c->fd < 0 || c->in_request || now_ms - c->since_ms < AB_HTTP_HEADER_MS)
            continue;
        shutdown(c->fd, SHUT_RDWR);
        c->since_ms = now_ms; /* once; closed soon after */
        h->cut++;
    }
}

void ab_http_beat(ab_http_t *h, int64_t now_ms, int ready)
{
    pthread_mutex_lock(&h->mu);
    h->alive_ms = now_ms;
    h->ready = ready;
    s_sweep(h, now_ms);
    uint64_t cut = h->cut, said = h->cut_logged;
    int say = cut != said && now_ms - h->logged_ms >= 60000;
    if (say) {
        h->cut_logged = cut;
        h->logged_ms = now_ms;
    }
    pthread_mutex_unlock(&h->mu);
    if (say)
        AB_WARN("closed %llu HTTP connection(s) that sent no complete request within %d ms "
                "(slow or stalled clients; %llu since start)",
                (unsigned long long)(cut - said), AB_HTTP_HEADER_MS, (unsigned long long)cut);
}

uint64_t ab_http_cut(ab_http_t *h)
{
    pthread_mutex_lock(&h->mu);
    uint64_t n = h->cut;
    pthread_mutex_unlock(&h->mu);
    return n;
}

int ab_http_wanted(ab_http_t *h)
{
    pthread_mutex_lock(&h->mu);
    int w = h->waiting > 0;
    pthread_mutex_unlock(&h->mu);
    return w;
}

void ab_http_publish(ab_http_t *h, char *text, size_t len, int64_t now_ms, int ready)
{
    pthread_mutex_lock(&h->mu);
    char *old = h->text;
    h->text = text;
    h->len = len;
    h->gen++;
    h->alive_ms = now_ms;
    h->ready = ready;
    s_sweep(h, now_ms);
    pthread_cond_broadcast(&h->rendered);
    pthread_mutex_unlock(&h->mu);
    free(old); /* outside the lock */
}

void ab_http_stop(ab_http_t **hp)
{
    ab_http_t *h = *hp;
    if (!h)
        return;
    MHD_stop_daemon(h->d); /* joins the connection threads */
    pthread_cond_destroy(&h->rendered);
    pthread_mutex_destroy(&h->mu);
    free(h->text);
    free(h);
    *hp = NULL;
}
