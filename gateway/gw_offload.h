/*
 * gw_offload.h - a thread that runs slow per-request work off the thread
 * serving HTTP: parsing a large request body.
 *
 * Why: with --threads 0 libmicrohttpd runs on the bus thread, and parsing
 * a body of several MB (json_loadb, then the request built from it) took
 * 0.3-0.5 s per 8 MB there: every other connection, /healthz included,
 * and every answer from the bus waited behind it. A connection whose body
 * is large is suspended, its parse runs here, and the job resumes it (the
 * access handler is then called again and finds the outcome).
 *
 * Jobs run one at a time, in the order given: parsing is memory-hungry
 * (a jansson tree is several times its text), and one thread bounds that.
 */
#ifndef GW_OFFLOAD_H
#define GW_OFFLOAD_H

/* A job, embedded in its owner (nothing is allocated per job). */
typedef struct gw_job {
    struct gw_job *next;
    void (*run)(struct gw_job *job); /* on the offload thread */
} gw_job_t;

typedef struct gw_offload gw_offload_t;

/* Starts the thread; NULL (with a reason on stderr) on failure. */
gw_offload_t *gw_offload_new(void);
/* Queues JOB (its RUN must be set); never fails. Any thread. JOB must
 * stay valid until its RUN has been called. */
void gw_offload_submit(gw_offload_t *o, gw_job_t *job);
/* Runs the jobs still queued, stops the thread and frees. Sets *O = NULL. */
void gw_offload_destroy(gw_offload_t **o);

#endif
