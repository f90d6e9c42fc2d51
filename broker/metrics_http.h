/*
 * metrics_http.h - the monitoring HTTP endpoint (--http HOST:PORT): /metrics,
 * /healthz, /readyz, served by libmicrohttpd's own thread.
 *
 * The broker's loop never waits on HTTP. A scrape of /metrics raises a
 * flag and waits (on its own connection thread) for the next render; the
 * loop, on a short timer, reports that it is alive (ab_http_beat) and,
 * when the flag is up (ab_http_wanted), renders and hands the text over
 * with ab_http_publish, under a mutex held only for a pointer swap. So the
 * HTTP side reads no broker state, the loop renders once per scrape and
 * not at all when nobody scrapes, and a loop that stops reporting is seen
 * as stale (/healthz 503).
 */
#ifndef AB_HTTP_H
#define AB_HTTP_H

#include <stddef.h>
#include <stdint.h>

/* A loop silent longer than this makes /healthz answer 503: it is stuck. */
#define AB_HTTP_STALE_MS 5000
/* A scrape waits this long for the loop's render, then answers 503. */
#define AB_HTTP_RENDER_WAIT_MS 2000

typedef struct ab_http ab_http_t;

/* NULL when SPEC is a listen address ab_http_start takes (HOST:PORT, HOST
 * an IPv4 address, [IPv6] or a name that resolves, PORT 0..65535, 0 any
 * free one); else what is wrong with it. */
const char *ab_http_addr_problem(const char *spec);
/* Listens on SPEC and starts the HTTP thread. NULL (logged) on failure. */
ab_http_t *ab_http_start(const char *spec);
/* The port actually bound (the one asked, or the one picked for 0). */
unsigned ab_http_port(const ab_http_t *h);
/* The loop is alive at NOW_MS (ab_now_ms); READY is what /readyz says. */
void ab_http_beat(ab_http_t *h, int64_t now_ms, int ready);
/* 1 when a scrape waits for a render. */
int ab_http_wanted(ab_http_t *h);
/* Connections closed so far for not sending a complete request within
 * the header deadline (5 s from their start or their last request). */
uint64_t ab_http_cut(ab_http_t *h);
/* Hands TEXT (malloc'd, LEN bytes; ownership passes) to the scrapes
 * waiting, and beats as ab_http_beat. Never blocks beyond a pointer swap. */
void ab_http_publish(ab_http_t *h, char *text, size_t len, int64_t now_ms, int ready);
/* Stops the thread (waits for requests being answered) and frees *H. */
void ab_http_stop(ab_http_t **h);

#endif
