/* render.h - brokerctl's output: the broker's answers as text or JSON. */
#ifndef AB_BROKERCTL_RENDER_H
#define AB_BROKERCTL_RENDER_H

#include "agentbus.pb-c.h"
#include <stdio.h>

void ab_render_stats(FILE *out, const Agentbus__Stats *st, int json);
void ab_render_services(FILE *out, Agentbus__ServiceInfo **sv, size_t n, int json);
void ab_render_workers(FILE *out, const Agentbus__WorkerList *wl, int json);
/* One worker as a JSON object (new reference), health figures included. */
#include <jansson.h>
json_t *ab_render_worker_json(const Agentbus__WorkerInfo *w);
/* A request's reply as JSON: {"ok": true, "bytes": N, "reply": "..."} (the
 * reply as a string when it is UTF-8, else "reply_hex"). */
void ab_render_reply(FILE *out, const void *data, size_t len);
/* {"ok": false, "code": CODE, "error": TEXT} */
void ab_render_error(FILE *out, const char *code, const char *text);

#endif
