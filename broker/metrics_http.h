/*
 * metrics_http.h - the monitoring HTTP endpoint (--http HOST:PORT): /metrics,
 * /healthz, /readyz, served by libmicrohttpd's own thread.
 *
 * The broker's loop never waits on HTTP: it publishes a rendered text (and
 * whether it is ready) with ab_http_publish, under a mutex held only for
 * a pointer swap; the HTTP thread serves a copy of the latest one. So the
 * HTTP side reads no broker state at all, and a loop that stops publishing
 * is visible as a stale render (/healthz 503).
 */
#ifndef AB_HTTP_H
#define AB_HTTP_H

#include <stddef.h>
#include <stdint.h>

/* A render older than this makes /healthz answer 503: the loop is stuck. */
#define AB_HTTP_STALE_MS 5000

typedef struct ab_http ab_http_t;

/* NULL when SPEC is a listen address ab_http_start takes (HOST:PORT, HOST
 * an IPv4 address, [IPv6] or a name that resolves, PORT 0..65535, 0 any
 * free one); else what is wrong with it. */
const char *ab_http_addr_problem(const char *spec);
/* Listens on SPEC and starts the HTTP thread. NULL (logged) on failure. */
ab_http_t *ab_http_start(const char *spec);
/* The port actually bound (the one asked, or the one picked for 0). */
unsigned ab_http_port(const ab_http_t *h);
/* Hands TEXT (malloc'd, LEN bytes; ownership passes) to the HTTP thread as
 * the /metrics answer from now on, rendered at NOW_MS (ab_now_ms); READY
 * is what /readyz says. Never blocks beyond a pointer swap. */
void ab_http_publish(ab_http_t *h, char *text, size_t len, int64_t now_ms, int ready);
/* Stops the thread (waits for requests being answered) and frees *H. */
void ab_http_stop(ab_http_t **h);

#endif
