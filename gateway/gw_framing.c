/*
 * gw_framing.c - whether a request's body length is told one clear way
 * (RFC 9112 §6), checked at its headers (gw_framing.h).
 */
#include "gw_framing.h"

#include <string.h>
#include <strings.h>

/* The framing headers of a request, counted (MHD_get_connection_values). */
typedef struct {
    unsigned n_cl, n_te;
    const char *te;
} s_framing_t;

static enum MHD_Result s_framing_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                        const char *value)
{
    (void)kind;
    s_framing_t *f = cls;
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0)
        f->n_cl++;
    else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0)
        f->n_te++, f->te = value;
    return MHD_YES;
}

const char *gw_framing_check(struct MHD_Connection *conn, const char *version,
                             unsigned *status)
{
    s_framing_t f = {0, 0, NULL};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, s_framing_header, &f);
    *status = 400;
    if (f.n_cl > 1)
        return "bad request: more than one Content-Length header";
    if (!f.n_te)
        return NULL;
    if (f.n_cl)
        return "bad request: both Content-Length and Transfer-Encoding";
    if (f.n_te > 1)
        return "bad request: more than one Transfer-Encoding header";
    if (strcmp(version, MHD_HTTP_VERSION_1_0) == 0)
        return "bad request: Transfer-Encoding in an HTTP/1.0 request";
    const char *v = f.te;
    size_t n = strlen(v);
    while (*v == ' ' || *v == '\t')
        v++, n--;
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if (n == 7 && strncasecmp(v, "chunked", 7) == 0)
        return NULL;
    *status = 501;
    return "unsupported Transfer-Encoding: only chunked is implemented";
}
