/*
 * http.c - the libmicrohttpd glue: one thread per connection (so a request
 * may block in poll() while it waits for a slot or paces its tokens), a
 * bounded request body, routing, and the completion hook that frees a slot
 * the moment a client goes away.
 */
#include "http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static enum MHD_Result s_queue(sim_req_t *r, int status, struct MHD_Response *resp)
{
    if (!resp)
        return MHD_NO;
    enum MHD_Result rc = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->status = status;
    if (r->route != R_SIM_FAULTS && r->route != R_SIM_STATS && r->route != R_SIM_STATS_RESET) {
        pthread_mutex_lock(&r->s->lock);
        sim_stats_status(r->s, status);
        pthread_mutex_unlock(&r->s->lock);
    }
    return rc;
}

enum MHD_Result sim_http_json(sim_req_t *r, int status, json_t *j)
{
    char *txt = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(j);
    if (!txt)
        return MHD_NO;
    size_t n = strlen(txt);
    struct MHD_Response *resp = MHD_create_response_from_buffer(n, txt, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(txt);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json; charset=utf-8");
    return s_queue(r, status, resp);
}

enum MHD_Result sim_http_text(sim_req_t *r, int status, const char *text)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", "text/plain; charset=utf-8");
    return s_queue(r, status, resp);
}

enum MHD_Result sim_http_error(sim_req_t *r, int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return sim_http_json(r, status, json_pack("{s:s}", "error", msg));
}

static const struct {
    const char *path;
    sim_route_t r;
} s_map[] = {
    {"/", R_ROOT}, {"/api/generate", R_GENERATE}, {"/api/chat", R_CHAT},
    {"/api/embed", R_EMBED}, {"/api/tags", R_TAGS}, {"/api/ps", R_PS},
    {"/api/version", R_VERSION}, {"/sim/faults", R_SIM_FAULTS}, {"/sim/stats", R_SIM_STATS},
    {"/sim/stats/reset", R_SIM_STATS_RESET},
};

static sim_route_t s_route(const char *url)
{
    for (size_t i = 0; i < sizeof s_map / sizeof s_map[0]; i++)
        if (strcmp(url, s_map[i].path) == 0)
            return s_map[i].r;
    return R_NOTFOUND;
}

static const char *s_path(sim_route_t r)
{
    for (size_t i = 0; i < sizeof s_map / sizeof s_map[0]; i++)
        if (s_map[i].r == r)
            return s_map[i].path;
    return "(unknown path)";
}

static bool s_method_ok(sim_route_t r, const char *method)
{
    bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    bool post = strcmp(method, "POST") == 0;
    switch (r) {
    case R_GENERATE: case R_CHAT: case R_EMBED: case R_SIM_STATS_RESET: return post;
    case R_SIM_FAULTS: return get || post;
    default: return get;
    }
}

static enum MHD_Result s_access(void *cls, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *version, const char *upload,
                                size_t *upload_size, void **con_cls)
{
    (void)version;
    sim_t *s = cls;
    sim_req_t *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r)
            return MHD_NO;
        r->s = s;
        r->conn = conn;
        r->route = s_route(url);
        r->post = strcmp(method, "POST") == 0;
        r->job.efd = -1;
        r->t_arrive = sim_now();
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        r->client_fd = ci ? ci->connect_fd : -1;
        *con_cls = r;
        /* A declared length over the limit is refused before reading it. */
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > s->max_body_bytes) {
            r->too_big = true;
            if (s_route(url) != R_NOTFOUND && s_method_ok(r->route, method))
                return sim_http_error(r, 413, "request body too large");
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (!r->too_big && r->len + *upload_size > s->max_body_bytes)
            r->too_big = true;
        if (!r->too_big) {
            if (r->len + *upload_size + 1 > r->cap) {
                size_t cap = (r->len + *upload_size + 1) * 2;
                if (cap > s->max_body_bytes + 1)
                    cap = s->max_body_bytes + 1;
                char *p = realloc(r->body, cap);
                if (!p)
                    return MHD_NO;
                r->body = p;
                r->cap = cap;
            }
            memcpy(r->body + r->len, upload, *upload_size);
            r->len += *upload_size;
            r->body[r->len] = '\0';
        }
        *upload_size = 0;   /* consumed (or dropped when too big: memory stays bounded) */
        return MHD_YES;
    }
    if (r->route == R_NOTFOUND)
        return sim_http_text(r, 404, "404 page not found");
    if (!s_method_ok(r->route, method))
        return sim_http_text(r, 405, "405 method not allowed");
    if (r->too_big)
        return sim_http_error(r, 413, "request body too large");
    if (r->route == R_GENERATE || r->route == R_CHAT || r->route == R_EMBED)
        return sim_infer_handle(r);
    return sim_routes_handle(r);
}

static void s_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                        enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    sim_t *s = cls;
    sim_req_t *r = *con_cls;
    if (!r)
        return;
    *con_cls = NULL;
    sim_infer_finish(r, toe);
    if (!s->quiet && r->route != R_SIM_STATS && r->route != R_SIM_FAULTS)
        fprintf(stderr, "ollama-sim: %s %s %d %.1f ms%s\n", s_path(r->route),
                r->model_echo[0] ? r->model_echo : "-",
                /* 499 as Ollama logs a client that left early */
                toe == MHD_REQUEST_TERMINATED_COMPLETED_OK || r->server_closed ? r->status : 499,
                (double)(sim_now() - r->t_arrive) / 1e6,
                r->server_closed ? " (closed by a fault)" : "");
    free(r->body);
    free(r->pending);
    free(r);
}

int sim_http_run(sim_t *s)
{
    /* Signals are taken by sigwait() in this thread only; every other thread
     * (libmicrohttpd's, the scheduler) inherits the blocked mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (sim_sched_start(s) != 0) {
        fprintf(stderr, "ollama-sim: cannot start the scheduler\n");
        return 1;
    }
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)s->port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL |
            (s->quiet ? 0 : MHD_USE_ERROR_LOG),
        (uint16_t)s->port, NULL, NULL, s_access, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_NOTIFY_COMPLETED, s_completed, s, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)s->max_connections, MHD_OPTION_THREAD_STACK_SIZE, (size_t)256 * 1024,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600, MHD_OPTION_END);
    /* (No MHD_OPTION_LISTENING_ADDRESS_REUSE: it sets SO_REUSEPORT, which
     * would let a second simulator share a port a test thinks is its own.) */
    if (!d) {
        fprintf(stderr, "ollama-sim: cannot listen on 127.0.0.1:%d\n", s->port);
        sim_sched_stop(s);
        return 1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    printf("ollama-sim listening on 127.0.0.1:%u\n", di ? (unsigned)di->port : (unsigned)s->port);
    fflush(stdout);
    int sig = 0;
    sigwait(&set, &sig);
    /* Wake every request that waits or hangs, then let them end. */
    uint64_t one = 1;
    if (write(s->shutdown_fd, &one, sizeof one) < 0)
        perror("ollama-sim: shutdown");
    MHD_stop_daemon(d);
    sim_sched_stop(s);
    return 0;
}
