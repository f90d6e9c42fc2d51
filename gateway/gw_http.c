/*
 * gw_http.c - libmicrohttpd glue: the listening socket and the daemons,
 * the access handler that takes a request from its headers to its route,
 * and the completion hook that cancels the bus request of a client that
 * left early and frees the request.
 */
#include "gw_http.h"
#include "gw_framing.h"
#include "gw_mhdlog.h"
#include "tl_clock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static gw_conn_t *s_conn_new(gw_t *g, struct MHD_Connection *conn, const char *url)
{
    gw_conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->g = g;
    c->conn = conn;
    /* --threads N: one daemon, whose pool may take a connection before
     * gw_http_start has stored it in G->mhd (a data race, under TSan) */
    const union MHD_ConnectionInfo *ci =
        g->cfg.threads ? NULL : MHD_get_connection_info(conn, MHD_CONNECTION_INFO_DAEMON);
    for (unsigned i = 0; ci && i < g->n_mhd; i++)
        if (g->mhd[i] == ci->daemon)
            c->shard = i;
    c->route = gw_route_of(url);
    c->openai = strncmp(url, "/v1/", 4) == 0;
    if (c->route == GW_R_OAI_MODEL) /* its name, from the path (MHD has decoded it) */
        snprintf(c->model, sizeof c->model, "%s", url + strlen(GW_MODEL_PREFIX));
    c->t0_us = tl_now_us();
    atomic_fetch_add(&g->m.requests[c->route], 1);
    return c;
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
    gw_mhdlog_call();
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
            return gw_reply_json_hdr(c, st, gw_error_body(c, st, bad), MHD_HTTP_HEADER_CONNECTION,
                                     "close");
        }
        if (s_needs_key(g, c->route)) {
            const char *auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                           MHD_HTTP_HEADER_AUTHORIZATION);
            unsigned ident = 0;
            if (!gw_keys_authorize(&g->keys, auth, &ident))
                return gw_reply_unauthorized(c, auth != NULL);
            c->ident = ident;
        }
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > g->cfg.max_body_bytes) {
            c->too_big = 1;
            return gw_reply_error(c, 413, "request body too large");
        }
        enum MHD_Result res;
        if (gw_route_on_bus(c->route) && gw_intake_admit(c, &res))
            return res;
        return MHD_YES;
    }
    if (*upload_size)
        return gw_body_append(c, upload, upload_size);
    if (!c->body_in) { /* before a parse here or offloaded: the body deadline stops */
        c->body_in = 1;
        gw_conns_body_done(&g->conns, conn);
    }
    if (c->phase == GW_P_WAIT) { /* resumed: the bus has an answer */
        /* Or the call ended because its client hung up: there is no one
         * to answer, and the call is counted as cancelled, not as an
         * error (a 500 "cancelled" counted in 5xx and bus errors). */
        if (gw_call_gone(c->call)) {
            gw_mhdlog_client_gone();
            return MHD_NO;
        }
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
    gw_intake_release(c); /* if its answer's last bytes did not already */
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

/* The listening socket: the pool's daemon's (--threads N), else the
 * gateway's own, accepted by gw_shards.c. */
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

void gw_refuse_per_ip(gw_t *g, const struct sockaddr_in *sa)
{
    atomic_fetch_add(&g->m.refused_per_ip, 1);
    char ip[INET_ADDRSTRLEN];
    if (sa && inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof ip))
        gw_log_limited("connection from %s refused: %u connections from it open already "
                       "(--max-connections-per-ip)", ip, g->cfg.max_conns_per_ip);
    else
        gw_log_limited("a connection refused: its address has %u connections open already "
                       "(--max-connections-per-ip)", g->cfg.max_conns_per_ip);
}

/* libmicrohttpd's messages. With --threads N and a per-address limit, its
 * "connection limit" refusal at accept is that limit's (at
 * --max-connections each pool thread stops accepting, leaving new
 * connections in the listen queue; at most a race there would be counted
 * too): counted and said as the gateway's own, since libmicrohttpd has no
 * other hook for it. The rest go to gw_mhdlog. */
static void s_mhdlog(void *cls, const char *fmt, va_list ap)
{
    static const char limit[] = "Server reached connection limit";
    gw_t *g = cls;
    if (g->cfg.max_conns_per_ip && strncmp(fmt, limit, sizeof limit - 1) == 0)
        gw_refuse_per_ip(g, NULL);
    else
        gw_mhdlog(NULL, fmt, ap);
}

/* A daemon on LFD (-1: none, connections come by MHD_add_connection). */
struct MHD_Daemon *gw_http_daemon(gw_t *g, unsigned flags, int lfd, unsigned limit)
{
    unsigned pool = g->cfg.threads;
    struct MHD_OptionItem opts[10] = {
        {MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)s_mhdlog, g}, /* first: libmicrohttpd says so */
        {MHD_OPTION_CONNECTION_LIMIT, (intptr_t)limit, NULL},
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)s_completed, g},
        {MHD_OPTION_CONNECTION_TIMEOUT, (intptr_t)g->cfg.idle_timeout_s, NULL},
        {MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)gw_conns_notify, &g->conns},
    };
    unsigned n = 5; /* the rest are MHD_OPTION_END (0) */
    if (pool)
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_THREAD_POOL_SIZE, (intptr_t)pool, NULL};
    /* With a pool there is one daemon and libmicrohttpd counts each address
     * over all its threads; --threads 0 has several, counted by gw_conns at
     * the gateway's accept instead. */
    if (pool && g->cfg.max_conns_per_ip)
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                                            (intptr_t)g->cfg.max_conns_per_ip, NULL};
    if (lfd >= 0)
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_LISTEN_SOCKET, lfd, NULL};
    else
        flags |= MHD_USE_NO_LISTEN_SOCKET;
    return MHD_start_daemon(flags, 0, NULL, NULL, s_access, g, MHD_OPTION_ARRAY, opts,
                            MHD_OPTION_END);
}

int gw_http_start(gw_t *g)
{
    g->ep_fd = g->lfd = -1;
    gw_conns_init(&g->conns, g->cfg.header_timeout_ms, g->cfg.body_timeout_ms,
                  g->cfg.send_timeout_ms);
    if (!g->cfg.threads && g->cfg.max_conns_per_ip &&
        gw_conns_limit_per_ip(&g->conns, g->cfg.max_conns_per_ip, g->cfg.max_connections) != 0) {
        fprintf(stderr, "agentbus-gateway: out of memory\n");
        return -1;
    }
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
        g->mhd[0] = gw_http_daemon(g, flags | MHD_USE_INTERNAL_POLLING_THREAD, lfd,
                             g->cfg.max_connections);
        g->n_mhd = g->mhd[0] ? 1 : 0;
        rc = g->mhd[0] ? 0 : -1;
        if (!rc) { /* the pool has no hook to reap from */
            rc = gw_conns_start_thread(&g->conns, lfd, g->cfg.max_connections);
            lfd = -1; /* the daemon owns it */
        }
    } else {
        rc = gw_shards_start(g, flags, lfd);
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
        gw_bus_serve(g->bus, g->ep_fd, gw_shards_run, g);
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
