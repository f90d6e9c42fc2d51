/*
 * gw_mhdlog.h - libmicrohttpd's own messages (a request it refuses before
 * the gateway sees it: a bad Content-Length, headers too large, a
 * malformed request line), rate limited: one line each on stderr let any
 * client fill the log at the rate it can send bad requests.
 */
#ifndef GW_MHDLOG_H
#define GW_MHDLOG_H

#include <stdarg.h>

/* At most this many lines per window; the rest are counted and said in
 * one line when the next window has a message (or at gw_mhdlog_flush). */
#define GW_MHDLOG_LINES 5
#define GW_MHDLOG_WINDOW_MS 10000

/* MHD_OPTION_EXTERNAL_LOGGER's callback (CLS unused): any thread. Control
 * bytes in the message are written as '?' (one line per message). */
void gw_mhdlog(void *cls, const char *fmt, va_list ap);

/* Says how many were left out since the last line (at exit). */
void gw_mhdlog_flush(void);

#endif
