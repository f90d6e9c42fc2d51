/*
 * gw_mhdlog.h - libmicrohttpd's own messages (a request it refuses before
 * the gateway sees it: a bad Content-Length, headers too large, a
 * malformed request line), rate limited: one line each on stderr let any
 * client fill the log at the rate it can send bad requests. The gateway's
 * own lines about what a remote party did (gw_log_limited) are limited
 * the same way, counted apart.
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

/* "agentbus-gateway: MESSAGE" on stderr, at most GW_MHDLOG_LINES per
 * window (its own count, not libmicrohttpd's): for what any client can
 * make happen (a connection closed at a deadline). Any thread. */
void gw_log_limited(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The access handler of this thread is about to return MHD_NO because
 * its client has gone (no one to answer): libmicrohttpd's "Application
 * reported internal error" that follows on this thread is not written
 * (it is no error; counted in /metrics as a hangup). gw_mhdlog_call()
 * at the start of each handler call forgets it, so it covers only the
 * return that set it. */
void gw_mhdlog_client_gone(void);
void gw_mhdlog_call(void);

/* Says how many were left out since the last line (at exit). */
void gw_mhdlog_flush(void);

#endif
