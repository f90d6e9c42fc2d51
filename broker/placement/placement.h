/*
 * placement.h - model-aware placement of inference requests and
 * re-dispatch of requests a worker's backend pushed back (issue 7).
 *
 * A request that names a model (Header.model) or a worker (Header.worker)
 * carries an ab_route_t. Workers that report an agentbus.InferenceState in
 * their registration are placed by it (docs/placement.md); workers that do
 * not are "generic" and take any request of their service, as before.
 */
#ifndef AB_PLACEMENT_H
#define AB_PLACEMENT_H

#include "request.h"
#include "agentbus.pb-c.h"

#include <agentbus.h>

struct ab_route {
    char model[AB_MODEL_MAX + 1];
    char worker[AB_NAME_MAX];
    uint64_t model_key;            /* hash of model | 1 (0: none): its fast answers, service.c */
    uint64_t avoid;               /* pushed back by the worker of this routing-id hash
                                    * (0: none): try another. Not its record's address,
                                    * which a later worker's record may have */
    uint8_t retries;               /* re-dispatches so far */
    uint8_t streamed;              /* a PARTIAL reached the client: never re-dispatch */
};

/* Gives R a route when H names a model or a worker. 0, or -1 out of memory. */
int ab_route_init(ab_req_t *r, const ab_header_t *h);
void ab_route_free(ab_req_t *r);

/* Checks a REGISTER against the register-max-* limits of CFG: its payload
 * SIZE (before unpacking: call with M NULL), then M's labels, name and
 * inference state. 0, or -1 with a text for the peer in WHY (CAP bytes). */
int ab_register_check(const ab_broker_config_t *cfg, size_t size,
                      const struct Agentbus__Register *m, char *why, size_t cap);

/* 1 when A and B name the same Ollama model ("llama3" is "llama3:latest"),
 * else 0. Any thread; A and B NUL-terminated. */
int ab_model_same(const char *a, const char *b);

/* Replaces W's inference state with ST (ownership taken; NULL clears). */
void ab_placement_update(ab_worker_rec_t *w, struct Agentbus__InferenceState *st);
/* Frees W's placement data (the worker record is going away). */
void ab_placement_forget(ab_worker_rec_t *w);

/* The worker R should go to now, or NULL to wait. *impossible = 1 when no
 * worker of the service can ever serve it (model unknown to every worker
 * that reports models, or no such pinned worker): the caller fails it. */
ab_worker_rec_t *ab_placement_pick(ab_broker_t *b, ab_service_t *s, ab_req_t *r,
                                   int *impossible);
/* Text for a request ab_placement_pick found impossible, and its code. */
uint32_t ab_placement_why(ab_service_t *s, const ab_req_t *r, char *text, size_t cap);

/* Called for a worker's final ERROR on R: a backend push-back (BACKEND_BUSY,
 * or BACKEND before anything streamed) is put back at the front of the
 * queue to go to another worker, at most twice and only if another worker
 * could take it. Returns 1 when R was requeued (the caller forwards nothing). */
int ab_placement_retry(ab_broker_t *b, ab_req_t *r, uint32_t code);

#endif
