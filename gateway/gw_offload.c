/*
 * gw_offload.c - the thread that runs slow per-request work off the HTTP
 * thread, one job at a time, in order (gw_offload.h).
 */
#include "gw_offload.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

struct gw_offload {
    pthread_mutex_t lock;
    pthread_cond_t more;
    gw_job_t *head, *tail; /* under lock */
    int stop;              /* under lock */
    pthread_t thread;
};

static void *s_thread(void *arg)
{
    gw_offload_t *o = arg;
    pthread_mutex_lock(&o->lock);
    for (;;) {
        gw_job_t *j = o->head;
        if (!j) {
            if (o->stop)
                break;
            pthread_cond_wait(&o->more, &o->lock);
            continue;
        }
        o->head = j->next;
        if (!o->head)
            o->tail = NULL;
        pthread_mutex_unlock(&o->lock);
        j->run(j); /* may free J's owner: nothing of J is read after */
        pthread_mutex_lock(&o->lock);
    }
    pthread_mutex_unlock(&o->lock);
    return NULL;
}

gw_offload_t *gw_offload_new(void)
{
    gw_offload_t *o = calloc(1, sizeof *o);
    if (!o)
        return NULL;
    pthread_mutex_init(&o->lock, NULL);
    pthread_cond_init(&o->more, NULL);
    if (pthread_create(&o->thread, NULL, s_thread, o) != 0) {
        fprintf(stderr, "agentbus-gateway: cannot start the parse thread\n");
        pthread_cond_destroy(&o->more);
        pthread_mutex_destroy(&o->lock);
        free(o);
        return NULL;
    }
    return o;
}

void gw_offload_submit(gw_offload_t *o, gw_job_t *job)
{
    job->next = NULL;
    pthread_mutex_lock(&o->lock);
    if (o->tail)
        o->tail->next = job;
    else
        o->head = job;
    o->tail = job;
    pthread_cond_signal(&o->more);
    pthread_mutex_unlock(&o->lock);
}

void gw_offload_destroy(gw_offload_t **op)
{
    gw_offload_t *o = *op;
    if (!o)
        return;
    pthread_mutex_lock(&o->lock);
    o->stop = 1; /* the thread ends once the queue is empty */
    pthread_cond_signal(&o->more);
    pthread_mutex_unlock(&o->lock);
    pthread_join(o->thread, NULL);
    pthread_cond_destroy(&o->more);
    pthread_mutex_destroy(&o->lock);
    free(o);
    *op = NULL;
}
