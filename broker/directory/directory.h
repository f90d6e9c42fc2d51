/*
 * directory.h - DISCOVER: the service directory in one round trip, and
 * change events pushed to subscribers (DISCOVER with FLAG_WATCH).
 */
#ifndef AB_DIRECTORY_H
#define AB_DIRECTORY_H

#include "broker.h"
#include "agentbus.pb-c.h"

#include <stddef.h>
#include <stdint.h>

#define AB_WATCHERS_MAX 4096 /* subscribers; beyond it a subscription is refused */

typedef struct ab_watcher ab_watcher_t;

typedef struct ab_watchers {
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

/* Answers DISCOVER H from RID: the directory (target "*" or empty: all
 * services; else that one); FLAG_WATCH also subscribes RID to changes. */
void ab_directory_on_discover(ab_broker_t *b, const ab_rid_t *rid, const ab_header_t *h);
/* Pushes CHANGE ("join", "leave", "health") about W to every subscriber. */
void ab_directory_event(ab_broker_t *b, ab_worker_rec_t *w, const char *change);
void ab_directory_forget(ab_broker_t *b, const ab_rid_t *rid);
void ab_directory_fini(ab_broker_t *b);
/* Fills X for W (strings point into W, X and the broker: valid until the
 * broker's state changes). 0 or -1 (out of memory). */
int ab_winfo_fill(ab_broker_t *b, ab_worker_rec_t *w, ab_winfo_t *x, int64_t now);
void ab_winfo_free(ab_winfo_t *x);

#endif
