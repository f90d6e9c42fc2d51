/*
 * scenario_bus.c - run B: the same agents over agentbus. Each agent thread
 * owns one libagentbus client and sends typed generate requests to the
 * "ollama" service, naming the model in the header (placement) and asking
 * deterministic output (seed 42), so the broker's cache and single-flight
 * apply exactly as they would to the seed systems' repeated prompts. Voice
 * calls carry the interactive priority (sc_prio_interactive).
 */
#include "scenario.h"
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "tl_clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef AB_PRIORITY_INTERACTIVE
const unsigned sc_prio_interactive = AB_PRIORITY_INTERACTIVE;
#else
const unsigned sc_prio_interactive = 255u;
#endif

/* Errors by libagentbus status, for the report. */
static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t s_status[128];
static char s_text[128][120]; /* each status's first error text since the last report */

static void *s_open(sc_agent_t *a)
{
    ab_options_t *o = ab_options_new();
    char name[48];
    snprintf(name, sizeof name, "scenario-agent-%d", a->index);
    ab_options_set_name(o, name);
    ab_options_set_endpoint(o, a->cfg->broker);
    ab_client_t *c = NULL;
    int rc = ab_client_new(&c, o);
    ab_options_destroy(&o);
    return rc == AB_OK ? c : NULL;
}

static void s_on_event(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    sc_call_t *call = arg;
    if (ev->status == AB_OK && !call->first_us)
        call->first_us = tl_now_us();
    if (!ev->final)
        return;
    int err = SC_E_NONE;
    if (ev->status == AB_EDEADLINE || ev->status == AB_ETIMEOUT)
        err = SC_E_TIMEOUT;
    else if (ev->status != AB_OK)
        err = SC_E_BUS;
    if (ev->status != AB_OK) {
        unsigned i = (unsigned)-ev->status % 128;
        pthread_mutex_lock(&s_lock);
        if (!s_status[i]++)
            snprintf(s_text[i], sizeof s_text[i], "%s", ev->error_text ? ev->error_text : "");
        pthread_mutex_unlock(&s_lock);
    }
    sc_call_end(call, err == SC_E_NONE, err);
}

static int s_start(void *eng, sc_call_t *call)
{
    ab_client_t *c = eng;
    const sc_req_t *r = &call->req;
    Agentbus__InferenceRequest q = AGENTBUS__INFERENCE_REQUEST__INIT;
    Agentbus__GenerateRequest g = AGENTBUS__GENERATE_REQUEST__INIT;
    Agentbus__InferenceOptions op = AGENTBUS__INFERENCE_OPTIONS__INIT;
    op.has_seed_case = AGENTBUS__INFERENCE_OPTIONS__HAS_SEED_SEED;
    op.seed = 42;
    op.has_num_predict_case = AGENTBUS__INFERENCE_OPTIONS__HAS_NUM_PREDICT_NUM_PREDICT;
    op.num_predict = r->num_predict;
    g.model = (char *)sc_models[r->model].name;
    g.prompt = r->prompt;
    g.has_stream_case = AGENTBUS__GENERATE_REQUEST__HAS_STREAM_STREAM;
    g.stream = r->stream;
    g.options = &op;
    q.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_GENERATE;
    q.generate = &g;
    size_t len = agentbus__inference_request__get_packed_size(&q);
    uint8_t *buf = malloc(len);
    if (!buf)
        return -1;
    agentbus__inference_request__pack(&q, buf);
    int rc = ab_client_request_start(
        c, "ollama", buf, len,
        &(ab_request_opts_t){.timeout_ms = call->timeout_ms, .model = g.model,
                             .priority = sc_classes[r->cls].interactive ? sc_prio_interactive : 0},
        s_on_event, call, &call->id);
    free(buf);
    if (rc != AB_OK) {
        pthread_mutex_lock(&s_lock);
        s_status[(unsigned)-rc % 128]++;
        pthread_mutex_unlock(&s_lock);
    }
    return rc == AB_OK ? 0 : -1;
}

static int s_poll(void *eng, int timeout_ms)
{
    return ab_client_poll(eng, timeout_ms);
}

static void s_close(void *eng)
{
    ab_client_t *c = eng;
    ab_client_destroy(&c); /* ends what is left with AB_ESTOPPED: recorded as cut */
}

const sc_engine_ops_t sc_bus_ops = {"bus", s_open, s_start, s_poll, s_close};

/* Prints the libagentbus errors seen since the last call, each with its
 * first text (what a count alone cannot tell: which WORKER_LOST), then
 * clears. */
void sc_bus_errors(FILE *out)
{
    pthread_mutex_lock(&s_lock);
    for (int i = 1; i < 128; i++)
        if (s_status[i]) {
            fprintf(out, " %s=%llu", ab_status_name(-i), (unsigned long long)s_status[i]);
            if (s_text[i][0])
                fprintf(out, " (first: \"%s\")", s_text[i]);
            s_status[i] = 0;
            s_text[i][0] = '\0';
        }
    pthread_mutex_unlock(&s_lock);
}
