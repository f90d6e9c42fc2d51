/*
 * gw_intake.c - what a request is before its body is read: its route, and
 * whether it is admitted or refused at its headers (--max-in-flight,
 * --max-queue-ms, its own deadline, a client already gone), or already at
 * accept when it waited in the listen backlog (docs/gateway.md,
 * "Overload").
 */
#include "gw_http.h"
#include "gw_mhdlog.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
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
    {"/v1/models/{model}", GW_R_OAI_MODEL}, /* the name in /metrics; matched by prefix */
    {"/metrics", GW_R_METRICS},
    {"/healthz", GW_R_HEALTHZ},
};

gw_route_t gw_route_of(const char *url)
{
    for (size_t i = 0; i < sizeof s_map / sizeof s_map[0]; i++)
        if (strcmp(url, s_map[i].path) == 0)
            return s_map[i].r;
    /* OpenAI's (and Ollama's) GET /v1/models/{model}: the openai clients'
     * models.retrieve() was a 404 "page not found" */
    if (strncmp(url, GW_MODEL_PREFIX, strlen(GW_MODEL_PREFIX)) == 0 &&
        url[strlen(GW_MODEL_PREFIX)])
        return GW_R_OAI_MODEL;
    return GW_R_NOTFOUND;
}

const char *gw_route_path(gw_route_t r)
{
    for (size_t i = 0; i < sizeof s_map / sizeof s_map[0]; i++)
        if (s_map[i].r == r)
            return s_map[i].path;
    return "other";
}

const char *gw_shed_name(gw_shed_t r)
{
    static const char *names[] = {"busy", "queue", "deadline", "gone"};
    return (unsigned)r < sizeof names / sizeof names[0] ? names[r] : "other";
}

/* The routes whose requests go over the bus (and wait for it). */
int gw_route_on_bus(gw_route_t r)
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
    return gw_reply_json_hdr(c, status, gw_error_body(c, status, msg), "Retry-After", "1");
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
int gw_intake_admit(gw_conn_t *c, enum MHD_Result *res)
{
    gw_t *g = c->g;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    if (ci && getsockopt(ci->connect_fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0) {
        if (ti.tcpi_state == TCP_CLOSE_WAIT || ti.tcpi_state == TCP_CLOSE) {
            atomic_fetch_add(&g->m.shed[GW_SHED_GONE], 1); /* no one to answer */
            gw_mhdlog_client_gone();
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
    if ((int)c->age_ms >= gw_call_timeout_ms(c)) {
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

void gw_intake_release(gw_conn_t *c)
{
    if (!c->admitted)
        return;
    c->admitted = 0;
    atomic_fetch_sub(&c->g->m.admitted, 1);
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
int gw_intake_shed_early(gw_t *g, int fd)
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
    gw_route_t r = gw_route_of(sp + 1);
    if (!gw_route_on_bus(r))
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
