/*
 * cache.h - brokerctl's view of the broker's inference cache (issue 6):
 *
 *   brokerctl cache                    per-tier hits, misses, bytes, entries,
 *                                      evictions, lookup p50/p99, coalesced
 *   brokerctl cache clear [--tier T]   drop every entry (of tier T: l1, l2, l3)
 *   brokerctl cache get KEY            show one entry (32 hex digits)
 */
#ifndef CTL_CACHECMD_H
#define CTL_CACHECMD_H

#include "agentbus.h"
#include "agentbus.pb-c.h"

#include <stdio.h>

/* Runs `cache ARGS...` (checked by cli.c), clearing only TIER when not
 * NULL. AB_OK, or the broker's error. */
int ctl_cache(ab_client_t *c, int argc, char **argv, const char *tier, int json,
              int timeout_ms);
/* The cache figures as a JSON object (a new reference). */
struct json_t;
struct json_t *ctl_cache_json(const Agentbus__CacheStats *cs);
/* The cache section of `stats` (and of `cache`). */
void ctl_render_cache(FILE *out, const Agentbus__CacheStats *cs, int json);

#endif
