/*
 * gw_body.c - a request's body: buffered up to --max-body-bytes (what
 * comes beyond is dropped, so memory stays bounded), and a large one
 * parsed on the offload thread instead of the thread serving HTTP.
 */
#include "gw_http.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* On the offload thread, while C is suspended: nothing else touches C
 * until it is resumed, and after MHD_resume_connection an HTTP thread
 * (--threads N) may answer and free it at once, so nothing of C is read
 * after. */
static void s_parse_job(gw_job_t *j)
{
    gw_conn_t *c = (gw_conn_t *)(void *)((char *)j - offsetof(gw_conn_t, job));
    gw_prep_t *p = c->prep;
    p->rc = gw_routes_prepare(c, &p->req, p->err, sizeof p->err);
    gw_t *g = c->g;
    atomic_fetch_or(&g->resumed, 1ULL << c->shard); /* run that shard next turn */
    MHD_resume_connection(c->conn);
    gw_bus_wake(g->bus); /* --threads 0: the bus thread runs libmicrohttpd */
}

int gw_http_offload(gw_conn_t *c)
{
    if (!c->g->offload || c->len < GW_OFFLOAD_BYTES)
        return 0;
    c->prep = calloc(1, sizeof *c->prep);
    if (!c->prep)
        return 0; /* parsed here, as before */
    c->job.run = s_parse_job;
    /* Suspended before the job can resume it. */
    MHD_suspend_connection(c->conn);
    gw_offload_submit(c->g->offload, &c->job);
    return 1;
}

enum MHD_Result gw_body_append(gw_conn_t *c, const char *upload, size_t *size)
{
    size_t max = c->g->cfg.max_body_bytes;
    if (!c->too_big && c->len + *size > max)
        c->too_big = 1;
    if (!c->too_big) {
        if (c->len + *size + 1 > c->cap) {
            size_t cap = (c->len + *size + 1) * 2;
            if (cap > max + 1)
                cap = max + 1;
            char *p = realloc(c->body, cap);
            if (!p)
                return MHD_NO;
            c->body = p;
            c->cap = cap;
        }
        memcpy(c->body + c->len, upload, *size);
        c->len += *size;
        c->body[c->len] = '\0';
    }
    *size = 0; /* dropped when too big: memory stays bounded */
    return MHD_YES;
}
