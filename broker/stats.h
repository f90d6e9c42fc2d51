/*
 * stats.h - rates, and the answers to CONTROL queries (Stats, ServiceList,
 * WorkerList) built from the counters (counters.h) and each subsystem.
 */
#ifndef AB_STATS_H
#define AB_STATS_H

#include "service.h"
#include "agentbus.pb-c.h"

/* Registers the rate sampling. */
int ab_stats_init(ab_broker_t *b);
void ab_stats_tick(ab_broker_t *b, int64_t now);
/* Builds the answer to CONTROL target WHAT; *out malloc'd. 0, or -1 for an
 * unknown WHAT. */
int ab_stats_answer(ab_broker_t *b, const char *what, uint8_t **out, size_t *len);
/* Fills SI (and LAT, which SI then points to) for service S. */
void ab_stats_service_info(ab_broker_t *b, ab_service_t *s, Agentbus__ServiceInfo *si,
                           Agentbus__LatencySummary *lat);

/* CONTROL IN from RID: answered with the query's figures (stats, services,
 * workers, agents, cache ...) or ERROR(UNSUPPORTED). */
void ab_stats_on_control(ab_broker_t *b, const ab_rid_t *rid, const ab_header_t *in);

#endif
