/* render.c - see render.h. JSON goes through jansson; text is aligned for
 * a terminal. */
#include "render.h"
#include "cache.h"

#include <jansson.h>
#include <stdlib.h>

static void s_emit(FILE *out, json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (s) {
        fprintf(out, "%s\n", s);
        free(s);
    }
    json_decref(j);
}

static json_t *s_service_json(const Agentbus__ServiceInfo *s)
{
    const Agentbus__LatencySummary *l = s->latency;
    return json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:{s:I, s:I, s:I, s:I, s:I}}",
                     "name", s->name, "queue_depth", (json_int_t)s->queue_depth, "queue_max",
                     (json_int_t)s->queue_max, "workers", (json_int_t)s->workers, "capacity",
                     (json_int_t)s->capacity, "free_credit", (json_int_t)s->free_credit,
                     "requests", (json_int_t)s->requests, "replies", (json_int_t)s->replies,
                     "errors", (json_int_t)s->errors, "latency_us", "count",
                     (json_int_t)(l ? l->count : 0), "p50", (json_int_t)(l ? l->p50_us : 0),
                     "p95", (json_int_t)(l ? l->p95_us : 0), "p99",
                     (json_int_t)(l ? l->p99_us : 0), "max", (json_int_t)(l ? l->max_us : 0));
}

static void s_services_text(FILE *out, Agentbus__ServiceInfo **sv, size_t n)
{
    fprintf(out, "%-20s %7s %7s %11s %10s %10s %8s %8s %8s %8s\n", "SERVICE", "QUEUE", "WORKERS",
            "FREE/CAP", "REQUESTS", "REPLIES", "ERRORS", "P50_US", "P95_US", "P99_US");
    for (size_t i = 0; i < n; i++) {
        const Agentbus__ServiceInfo *s = sv[i];
        const Agentbus__LatencySummary *l = s->latency;
        char credit[32];
        snprintf(credit, sizeof credit, "%u/%u", s->free_credit, s->capacity);
        fprintf(out, "%-20s %7u %7u %11s %10llu %10llu %8llu %8llu %8llu %8llu\n", s->name,
                s->queue_depth, s->workers, credit, (unsigned long long)s->requests,
                (unsigned long long)s->replies, (unsigned long long)s->errors,
                (unsigned long long)(l ? l->p50_us : 0), (unsigned long long)(l ? l->p95_us : 0),
                (unsigned long long)(l ? l->p99_us : 0));
    }
    if (n == 0)
        fprintf(out, "(no services registered)\n");
}

void ab_render_services(FILE *out, Agentbus__ServiceInfo **sv, size_t n, int json)
{
    if (!json) {
        s_services_text(out, sv, n);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, s_service_json(sv[i]));
    s_emit(out, arr);
}

static json_t *s_stats_json(const Agentbus__Stats *st)
{
    json_t *errors = json_object(), *services = json_array();
    for (size_t i = 0; i < st->n_errors; i++)
        json_object_set_new(errors, st->errors[i]->code, json_integer((json_int_t)st->errors[i]->count));
    for (size_t i = 0; i < st->n_services; i++)
        json_array_append_new(services, s_service_json(st->services[i]));
    return json_pack(
        "{s:s, s:I, s:{s:I, s:I, s:I}, s:{s:I, s:I, s:f, s:f}, s:{s:I, s:I, s:f, s:f},"
        " s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:o}",
        "version", st->version, "uptime_ms", (json_int_t)st->uptime_ms, "connections", "agents",
        (json_int_t)st->agents, "workers", (json_int_t)st->workers, "control",
        (json_int_t)st->controls, "messages", "in", (json_int_t)st->msgs_in, "out",
        (json_int_t)st->msgs_out, "in_per_s", st->msgs_in_per_s, "out_per_s", st->msgs_out_per_s,
        "bytes", "in", (json_int_t)st->bytes_in, "out", (json_int_t)st->bytes_out, "in_per_s",
        st->bytes_in_per_s, "out_per_s", st->bytes_out_per_s, "requests",
        (json_int_t)st->requests, "replies", (json_int_t)st->replies, "pending",
        (json_int_t)st->pending, "replies_dropped", (json_int_t)st->replies_dropped, "malformed",
        (json_int_t)st->malformed, "send_failures", (json_int_t)st->send_failures, "errors",
        errors, "services", services);
}

void ab_render_stats(FILE *out, const Agentbus__Stats *st, int json)
{
    if (json) {
        json_t *j = s_stats_json(st);
        if (st->cache) /* issue 6: the inference cache's figures */
            json_object_set_new(j, "cache", ab_cache_json(st->cache));
        s_emit(out, j);
        return;
    }
    fprintf(out, "agentbus-broker %s   uptime %.1f s\n", st->version, st->uptime_ms / 1000.0);
    fprintf(out, "connections  agents %u   workers %u   control %u\n", st->agents, st->workers,
            st->controls);
    fprintf(out, "messages     in %llu (%.0f/s)   out %llu (%.0f/s)\n",
            (unsigned long long)st->msgs_in, st->msgs_in_per_s, (unsigned long long)st->msgs_out,
            st->msgs_out_per_s);
    fprintf(out, "bytes        in %llu (%.0f/s)   out %llu (%.0f/s)\n",
            (unsigned long long)st->bytes_in, st->bytes_in_per_s,
            (unsigned long long)st->bytes_out, st->bytes_out_per_s);
    fprintf(out, "requests     %llu   replies %llu   pending %llu\n",
            (unsigned long long)st->requests, (unsigned long long)st->replies,
            (unsigned long long)st->pending);
    fprintf(out, "dropped      replies %llu   malformed %llu   send failures %llu\n",
            (unsigned long long)st->replies_dropped, (unsigned long long)st->malformed,
            (unsigned long long)st->send_failures);
    fprintf(out, "errors      ");
    for (size_t i = 0; i < st->n_errors; i++)
        fprintf(out, " %s %llu", st->errors[i]->code, (unsigned long long)st->errors[i]->count);
    fprintf(out, "%s\n\n", st->n_errors ? "" : " none");
    s_services_text(out, st->services, st->n_services);
}

void ab_render_workers(FILE *out, const Agentbus__WorkerList *wl, int json)
{
    if (json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < wl->n_workers; i++) {
            const Agentbus__WorkerInfo *w = wl->workers[i];
            json_t *labels = json_object();
            for (size_t k = 0; k < w->n_labels; k++)
                json_object_set_new(labels, w->labels[k]->key, json_string(w->labels[k]->value));
            json_array_append_new(
                arr, json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:o}", "id", w->id,
                               "name", w->name, "service", w->service, "capacity",
                               (json_int_t)w->capacity, "in_flight", (json_int_t)w->in_flight,
                               "completed", (json_int_t)w->completed, "connected_ms",
                               (json_int_t)w->connected_ms, "last_seen_ms",
                               (json_int_t)w->last_seen_ms, "labels", labels));
        }
        s_emit(out, arr);
        return;
    }
    fprintf(out, "%-12s %-16s %-16s %9s %9s %10s %9s  %s\n", "ID", "NAME", "SERVICE", "CAPACITY",
            "IN_FLIGHT", "COMPLETED", "AGE_S", "LABELS");
    for (size_t i = 0; i < wl->n_workers; i++) {
        const Agentbus__WorkerInfo *w = wl->workers[i];
        fprintf(out, "%-12s %-16s %-16s %9u %9u %10llu %9.1f ", w->id, w->name[0] ? w->name : "-",
                w->service, w->capacity, w->in_flight, (unsigned long long)w->completed,
                w->connected_ms / 1000.0);
        for (size_t k = 0; k < w->n_labels; k++)
            fprintf(out, " %s=%s", w->labels[k]->key, w->labels[k]->value);
        fprintf(out, "\n");
    }
    if (wl->n_workers == 0)
        fprintf(out, "(no workers registered)\n");
}

void ab_render_reply(FILE *out, const void *data, size_t len)
{
    json_t *j = json_pack("{s:b, s:I}", "ok", 1, "bytes", (json_int_t)len);
    json_t *str = json_stringn(data, len); /* NULL unless valid UTF-8 */
    if (str) {
        json_object_set_new(j, "reply", str);
    } else {
        char *hex = malloc(2 * len + 1);
        if (hex) {
            for (size_t i = 0; i < len; i++)
                snprintf(hex + 2 * i, 3, "%02x", ((const unsigned char *)data)[i]);
            hex[2 * len] = '\0';
            json_object_set_new(j, "reply_hex", json_string(hex));
            free(hex);
        }
    }
    s_emit(out, j);
}

void ab_render_error(FILE *out, const char *code, const char *text)
{
    json_t *t = json_string(text);
    s_emit(out, json_pack("{s:b, s:s, s:o}", "ok", 0, "code", code,
                          "error", t ? t : json_string("(error text is not UTF-8)")));
}
