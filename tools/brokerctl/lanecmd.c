/* lanecmd.c - see lanecmd.h. */
#include "lanecmd.h"
#include "render.h"

#include <jansson.h>
#include <string.h>

void ctl_render_lanes_text(FILE *out, Agentbus__ServiceInfo **sv, size_t n)
{
    int any = 0;
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < sv[i]->n_lanes; k++) {
            const Agentbus__LaneInfo *l = sv[i]->lanes[k];
            if (!l->depth && !l->dispatched)
                continue; /* a lane never used says nothing */
            if (!any++)
                fprintf(out, "\n%-20s %-11s %7s %7s %10s %10s %10s\n", "SERVICE", "LANE",
                        "QUEUE", "CLIENTS", "DISPATCHED", "WAIT_P50", "WAIT_P99");
            fprintf(out, "%-20s %-11s %7u %7u %10llu %8.1fms %8.1fms\n", sv[i]->name, l->name,
                    l->depth, l->clients, (unsigned long long)l->dispatched,
                    (double)l->wait_p50_us / 1000.0, (double)l->wait_p99_us / 1000.0);
        }
    }
}

json_t *ctl_render_lanes_json(const Agentbus__ServiceInfo *s)
{
    json_t *lanes = json_object();
    for (size_t k = 0; k < s->n_lanes; k++) {
        const Agentbus__LaneInfo *l = s->lanes[k];
        json_object_set_new(lanes, l->name,
                            json_pack("{s:I, s:I, s:I, s:I, s:I, s:I}", "queue_depth",
                                      (json_int_t)l->depth, "clients", (json_int_t)l->clients,
                                      "dispatched", (json_int_t)l->dispatched, "wait_p50_us",
                                      (json_int_t)l->wait_p50_us, "wait_p99_us",
                                      (json_int_t)l->wait_p99_us, "waits",
                                      (json_int_t)l->waits));
    }
    return lanes;
}

static void s_clients_text(FILE *out, const Agentbus__ClientList *cl)
{
    fprintf(out, "%-32s %9s %8s %9s %10s %6s %5s\n", "CLIENT", "IN_FLIGHT", "QUEUED",
            "REFUSED", "REQUESTS", "WEIGHT", "CONNS");
    for (size_t i = 0; i < cl->n_clients; i++) {
        const Agentbus__ClientInfo *c = cl->clients[i];
        fprintf(out, "%-32s %9u %8u %9llu %10llu %6u %5u\n", c->client, c->in_flight, c->queued,
                (unsigned long long)c->refused, (unsigned long long)c->requests, c->weight,
                c->connections);
    }
    if (cl->n_clients == 0)
        fprintf(out, "(no clients)\n");
}

void ctl_render_clients(FILE *out, const Agentbus__ClientList *cl, int json)
{
    if (!json) {
        s_clients_text(out, cl);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < cl->n_clients; i++) {
        const Agentbus__ClientInfo *c = cl->clients[i];
        json_array_append_new(arr, json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I}", "client",
                                             c->client, "in_flight", (json_int_t)c->in_flight,
                                             "queued", (json_int_t)c->queued, "refused",
                                             (json_int_t)c->refused, "requests",
                                             (json_int_t)c->requests, "weight",
                                             (json_int_t)c->weight, "connections",
                                             (json_int_t)c->connections));
    }
    ctl_json_print(out, arr);
}

void ctl_render_model_queues_text(FILE *out, const Agentbus__Stats *st)
{
    for (size_t i = 0; i < st->n_model_queues; i++) {
        const Agentbus__ModelQueue *q = st->model_queues[i];
        if (i == 0)
            fprintf(out, "\n%-20s %-40s %7s\n", "SERVICE", "MODEL", "QUEUED");
        fprintf(out, "%-20s %-40s %7u\n", q->service, q->model[0] ? q->model : "-", q->queued);
    }
}

json_t *ctl_render_model_queues_json(const Agentbus__Stats *st)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < st->n_model_queues; i++) {
        const Agentbus__ModelQueue *q = st->model_queues[i];
        json_array_append_new(arr, json_pack("{s:s, s:s, s:I}", "service", q->service, "model",
                                             q->model, "queued", (json_int_t)q->queued));
    }
    return arr;
}
