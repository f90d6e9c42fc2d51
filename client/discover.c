/*
 * discover.c - the broker's directory as plain C structs.
 *
 * The broker answers DISCOVER with a protobuf Directory; this file turns it
 * into the public ab_directory_t, whose strings point into the unpacked
 * message (kept in priv_ and freed with the snapshot), so nothing is copied
 * twice. Directory change events are converted the same way, on the stack
 * of the callback.
 */
#include "internal.h"
#include "agentbus.pb-c.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    Agentbus__Directory *msg;
    ab_service_info_t *services;
    ab_worker_info_t *workers;
    const char **labels; /* keys then values of every worker, in one array */
} s_priv_t;

/* Fills O from X; label arrays taken from *LABELS (advanced). */
static void s_worker(ab_worker_info_t *o, const Agentbus__WorkerInfo *x, const char ***labels)
{
    o->id = x->id;
    o->name = x->name;
    o->service = x->service;
    o->health = x->health;
    o->backend_state = x->backend_state;
    o->capacity = x->capacity;
    o->in_flight = x->in_flight;
    o->free_credit = x->free_credit;
    o->interval_ms = x->interval_ms;
    o->suspicion = x->suspicion;
    o->ejections = x->ejections;
    o->backoff_ms = x->backoff_ms;
    o->failures = x->failures;
    o->completed = x->completed;
    o->redispatched = x->redispatched;
    o->n_labels = x->n_labels;
    const char **keys = *labels, **vals = keys + x->n_labels;
    for (size_t k = 0; k < x->n_labels; k++) {
        keys[k] = x->labels[k]->key;
        vals[k] = x->labels[k]->value;
    }
    o->label_keys = keys;
    o->label_values = vals;
    *labels += 2 * x->n_labels;
}

int ab_discover(ab_client_t *c, const char *service, int timeout_ms, ab_directory_t **out)
{
    if (!c || !out)
        return AB_EINVAL;
    *out = NULL;
    void *buf = NULL;
    size_t len = 0;
    int rc = ab_client_discover_raw(c, service, timeout_ms, 0, &buf, &len);
    if (rc != AB_OK)
        return rc;
    Agentbus__Directory *m =
        (Agentbus__Directory *)ab_pb_unpack(&agentbus__directory__descriptor, len, buf);
    ab_free(buf);
    if (!m)
        return AB_EMALFORMED;
    size_t nlabels = 0;
    for (size_t i = 0; i < m->n_workers; i++)
        nlabels += 2 * m->workers[i]->n_labels;
    ab_directory_t *d = calloc(1, sizeof *d);
    s_priv_t *p = calloc(1, sizeof *p);
    if (d && p) {
        p->msg = m;
        p->services = calloc(m->n_services + 1, sizeof *p->services);
        p->workers = calloc(m->n_workers + 1, sizeof *p->workers);
        p->labels = calloc(nlabels + 1, sizeof *p->labels);
    }
    if (!d || !p || !p->services || !p->workers || !p->labels) {
        if (p) {
            free(p->services);
            free(p->workers);
            free(p->labels);
        }
        free(p);
        free(d);
        agentbus__directory__free_unpacked(m, NULL);
        return AB_ENOMEM;
    }
    for (size_t i = 0; i < m->n_services; i++) {
        const Agentbus__ServiceInfo *s = m->services[i];
        ab_service_info_t *o = &p->services[i];
        o->name = s->name;
        o->workers = s->workers;
        o->capacity = s->capacity;
        o->free_credit = s->free_credit;
        o->queue_depth = s->queue_depth;
        o->queue_max = s->queue_max;
        o->requests = s->requests;
        o->replies = s->replies;
        o->errors = s->errors;
    }
    const char **lab = p->labels;
    for (size_t i = 0; i < m->n_workers; i++)
        s_worker(&p->workers[i], m->workers[i], &lab);
    d->n_services = m->n_services;
    d->services = p->services;
    d->n_workers = m->n_workers;
    d->workers = p->workers;
    d->priv_ = p;
    *out = d;
    return AB_OK;
}

void ab_directory_destroy(ab_directory_t **dp)
{
    if (!dp || !*dp)
        return;
    s_priv_t *p = (*dp)->priv_;
    if (p) {
        agentbus__directory__free_unpacked(p->msg, NULL);
        free(p->services);
        free(p->workers);
        free(p->labels);
        free(p);
    }
    free(*dp);
    *dp = NULL;
}

void ab_dir_event_deliver(ab_client_t *c, ab_dir_event_fn *fn, void *arg, const void *data,
                          size_t size)
{
    Agentbus__DirectoryEvent *m = (Agentbus__DirectoryEvent *)ab_pb_unpack(
        &agentbus__directory_event__descriptor, size, data);
    if (!m)
        return; /* a broker never sends these */
    if (m->worker) {
        const char *stack[64], **labels = stack;
        size_t need = 2 * m->worker->n_labels;
        if (need > 64)
            labels = malloc(need * sizeof *labels);
        if (labels) {
            const char **cursor = labels;
            ab_worker_info_t w;
            s_worker(&w, m->worker, &cursor);
            ab_dir_event_t ev = {m->change, &w};
            fn(c, &ev, arg);
        }
        if (labels != stack)
            free(labels);
    }
    agentbus__directory_event__free_unpacked(m, NULL);
}
