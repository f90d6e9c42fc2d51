/*
 * metrics.h - the broker's figures in Prometheus text format (0.0.4), for
 * /metrics on the --http port (metrics_http.h).
 *
 * Every AB_METRICS_MS the loop tells the HTTP side it is alive and, when a
 * scrape waits, renders the whole exposition from the counters
 * (counters.h) and each subsystem's figures and hands it over: a scrape
 * never touches broker state, the loop never waits on HTTP, and nothing is
 * rendered while nobody scrapes. Off (nothing allocated, no port) unless
 * --http is given.
 */
#ifndef AB_METRICS_H
#define AB_METRICS_H

#include "broker.h"

#include <stddef.h>

#define AB_METRICS_MS 100 /* beat period: the most a scrape waits for its render */

/* With cfg->http set: starts the HTTP endpoint and the render timer. 0, or
 * -1 (logged). Without it: 0, nothing done. */
int ab_metrics_init(ab_broker_t *b);
void ab_metrics_fini(ab_broker_t *b);
/* The exposition text of B now (malloc'd, *LEN bytes, NUL-terminated), or
 * NULL when out of memory. */
char *ab_metrics_render(ab_broker_t *b, size_t *len);

#endif
