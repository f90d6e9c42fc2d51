/*
 * gw_framing.h - request framing: whether a request tells its body's
 * length one clear way (RFC 9112 §6), checked by the access handler's
 * first call, before anything reads the body.
 */
#ifndef GW_FRAMING_H
#define GW_FRAMING_H

#include <microhttpd.h>

/* NULL if CONN's request (of HTTP VERSION) is framed one clear way, else
 * the client-facing reason with *STATUS 400 (ambiguous framing: two
 * Content-Lengths, equal or not, both Content-Length and
 * Transfer-Encoding, Transfer-Encoding in HTTP/1.0) or 501 (a transfer
 * coding other than chunked, which libmicrohttpd does not decode: it then
 * waited for a body it could never delimit). The connection must close
 * after the answer: where a next request would start is not known. The
 * thread running CONN; the text is static. */
const char *gw_framing_check(struct MHD_Connection *conn, const char *version,
                             unsigned *status);

#endif
