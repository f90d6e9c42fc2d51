/*
 * directory.h - DISCOVER: the service directory in one round trip, and
 * change events pushed to subscribers (DISCOVER with FLAG_WATCH).
 */
#ifndef AB_DIRECTORY_H
#define AB_DIRECTORY_H

#include "agentbus.pb-c.h"

#include <stddef.h>
#include <stdint.h>

#define AB_WATCHERS_MAX 4096 /* subscribers; beyond it a subscription is refused */

typedef struct ab_watcher ab_watcher_t;

typedef struct {
    ab_watcher_t *v; /* array of cap, n used */
    size_t n, cap;
} ab_watchers_t;

/* One worker's WorkerInfo with the storage its strings and labels need. */
typedef struct {
    Agentbus__WorkerInfo info;
    Agentbus__WorkerInfo__LabelsEntry *lab;
    Agentbus__WorkerInfo__LabelsEntry **labp;
    char id[2 * 255 + 1];
} ab_winfo_t;

#endif
