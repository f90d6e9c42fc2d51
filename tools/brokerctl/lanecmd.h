/*
 * lanecmd.h - brokerctl's views of priority lanes and clients (issue 16):
 * the lanes under `services`, and `clients` (in flight, queued, refused).
 */
#ifndef CTL_LANECMD_H
#define CTL_LANECMD_H

#include "agentbus.pb-c.h"

#include <jansson.h>
#include <stdio.h>

/* A second table after the services: one row per lane in use. */
void ctl_render_lanes_text(FILE *out, Agentbus__ServiceInfo **sv, size_t n);
/* {"interactive": {...}, "normal": {...}, "batch": {...}} (new reference). */
json_t *ctl_render_lanes_json(const Agentbus__ServiceInfo *s);
void ctl_render_clients(FILE *out, const Agentbus__ClientList *cl, int json);
/* What waits by (service, model) (docs/placement.md, Stats.model_queues):
 * a table after the services when anything waits, and for --json an array
 * of {"service", "model", "queued"} (new reference). */
void ctl_render_model_queues_text(FILE *out, const Agentbus__Stats *st);
json_t *ctl_render_model_queues_json(const Agentbus__Stats *st);

#endif
