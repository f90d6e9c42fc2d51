/*
 * metrics.h - the broker's figures in Prometheus text format (0.0.4), for
 * /metrics on the --http port (metrics_http.h).
 *
 * The loop renders the whole exposition every AB_METRICS_MS from the
 * counters (counters.h) and each subsystem's figures, and hands it to the
 * HTTP thread: a scrape never touches broker state and never waits on the
 * loop. Off (nothing allocated, no port) unless --http is given.
 */
#ifndef AB_METRICS_H
#define AB_METRICS_H

#include "broker.h"

#include <stddef.h>

#define AB_METRICS_MS 500 /* render period: the freshness of a scrape */

/* With cfg->http set: starts the HTTP endpoint and the render timer. 0, or
 * -1 (logged). Without it: 0, nothing done. */
int ab_metrics_init(ab_broker_t *b);
void ab_metrics_fini(ab_broker_t *b);
/* The exposition text of B now (malloc'd, *LEN bytes, NUL-terminated), or
 * NULL when out of memory. */
char *ab_metrics_render(ab_broker_t *b, size_t *len);

#endif
