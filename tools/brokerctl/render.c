/* render.c - see render.h. JSON goes through jansson; text is aligned for
 * a terminal. */
#include "render.h"
#include "msgcmd.h"
#include "cachecmd.h"
#include "lanecmd.h"
#include "text.h"
#include "tl_json.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

int ctl_json_lines;

/* JSON text S (jansson's: valid UTF-8, raw bytes only inside strings) to
 * OUT with DEL and the C1 controls (U+0080..U+009F) escaped as \u007f,
 * \u0080...: JSON allows them raw, and jansson leaves them so, but a
 * terminal takes U+009B as CSI, the start of an escape sequence, as it
 * takes ESC (which jansson escapes). In UTF-8 a C1 control is C2 80..9F,
 * and C2 starts nothing else. */
static void s_json_out(FILE *out, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == 0x7f) {
            fputs("\\u007f", out);
        } else if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) {
            fprintf(out, "\\u00%02x", p[1]);
            p++;
        } else {
            fputc(*p, out);
        }
    }
    fputc('\n', out);
}

void ctl_json_print(FILE *out, json_t *j)
{
    size_t flags = (ctl_json_lines ? JSON_COMPACT : JSON_INDENT(2)) | JSON_PRESERVE_ORDER;
    char *s = j ? tl_json_dumps(j, flags) : NULL; /* reals as short as exact */
    if (s) {
        s_json_out(out, s);
        free(s);
    }
    json_decref(j);
}

static json_t *s_service_json_base(const Agentbus__ServiceInfo *s);

static json_t *s_service_json(const Agentbus__ServiceInfo *s)
{
    json_t *j = s_service_json_base(s);
    /* Broker links (docs/links.md): how many of its workers are peers. */
    json_object_set_new(j, "remote_workers", json_integer(s->remote_workers));
    json_object_set_new(j, "remote", json_string(s->remote ? s->remote : ""));
    return j;
}

static json_t *s_service_json_base(const Agentbus__ServiceInfo *s)
{
    const Agentbus__LatencySummary *l = s->latency;
    json_t *j = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
                          "s:{s:I, s:I, s:I, s:I, s:I}}",
                     "name", s->name, "queue_depth", (json_int_t)s->queue_depth, "queue_max",
                     (json_int_t)s->queue_max, "workers", (json_int_t)s->workers, "capacity",
                     (json_int_t)s->capacity, "free_credit", (json_int_t)s->free_credit,
                     "requests", (json_int_t)s->requests, "replies", (json_int_t)s->replies,
                     "errors", (json_int_t)s->errors, "latency_us", "count",
                     (json_int_t)(l ? l->count : 0), "p50", (json_int_t)(l ? l->p50_us : 0),
                     "p95", (json_int_t)(l ? l->p95_us : 0), "p99",
                     (json_int_t)(l ? l->p99_us : 0), "max", (json_int_t)(l ? l->max_us : 0));
    if (j) { /* issue 16 */
        json_object_set_new(j, "lanes", ctl_render_lanes_json(s));
        json_object_set_new(j, "deadline_early", json_integer((json_int_t)s->deadline_early));
    }
    return j;
}

static void s_services_text(FILE *out, Agentbus__ServiceInfo **sv, size_t n)
{
    fprintf(out, "%-20s %7s %7s %11s %10s %10s %8s %8s %8s %8s %s\n", "SERVICE", "QUEUE",
            "WORKERS", "FREE/CAP", "REQUESTS", "REPLIES", "ERRORS", "P50_US", "P95_US", "P99_US",
            "REMOTE");
    for (size_t i = 0; i < n; i++) {
        const Agentbus__ServiceInfo *s = sv[i];
        const Agentbus__LatencySummary *l = s->latency;
        char credit[32];
        snprintf(credit, sizeof credit, "%u/%u", s->free_credit, s->capacity);
        fprintf(out, "%-20s %7u %7u %11s %10llu %10llu %8llu %8llu %8llu %8llu %s\n", s->name,
                s->queue_depth, s->workers, credit, (unsigned long long)s->requests,
                (unsigned long long)s->replies, (unsigned long long)s->errors,
                (unsigned long long)(l ? l->p50_us : 0), (unsigned long long)(l ? l->p95_us : 0),
                (unsigned long long)(l ? l->p99_us : 0),
                s->remote_workers && s->remote && s->remote[0] ? s->remote : "-");
    }
    if (n == 0)
        fprintf(out, "(no services registered)\n");
    ctl_render_lanes_text(out, sv, n);
}

void ctl_render_services(FILE *out, Agentbus__ServiceInfo **sv, size_t n, int json)
{
    if (!json) {
        s_services_text(out, sv, n);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, s_service_json(sv[i]));
    ctl_json_print(out, arr);
}

static json_t *s_stats_json(const Agentbus__Stats *st)
{
    json_t *errors = json_object(), *services = json_array();
    for (size_t i = 0; i < st->n_errors; i++)
        json_object_set_new(errors, st->errors[i]->code,
                            json_integer((json_int_t)st->errors[i]->count));
    for (size_t i = 0; i < st->n_services; i++)
        json_array_append_new(services, s_service_json(st->services[i]));
    json_t *j = json_pack(
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
    if (j) /* answers over their client's max payload (Hello.max_payload) */
        json_object_set_new(j, "answers_too_large",
                            json_integer((json_int_t)st->answers_too_large));
    json_t *msgs = ctl_render_msg_stats_json(st);
    if (j && msgs)
        json_object_update(j, msgs);
    json_decref(msgs);
    return j;
}

/* issue 5: failure handling figures, one object under "health", with the
 * health transitions by the state entered under "transitions". */
static json_t *s_health_json(const Agentbus__Stats *st)
{
    json_t *entered = json_object();
    for (size_t i = 0; i < st->n_health_transitions; i++)
        json_object_set_new(entered, st->health_transitions[i]->state,
                            json_integer((json_int_t)st->health_transitions[i]->count));
    json_t *j = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b}",
                     "redispatched", (json_int_t)st->redispatched, "retries_exhausted",
                     (json_int_t)st->retries_exhausted, "duplicates_dropped",
                     (json_int_t)st->duplicates_dropped, "late_replies",
                     (json_int_t)st->late_replies, "deadline_expired",
                     (json_int_t)st->deadline_expired, "workers_suspected",
                     (json_int_t)st->workers_suspected, "workers_ejected",
                     (json_int_t)st->workers_ejected, "disconnects", (json_int_t)st->disconnects,
                     "probes", (json_int_t)st->probes, "send_eagain", (json_int_t)st->send_eagain,
                     "send_unreachable", (json_int_t)st->send_unreachable, "client_limit_busy",
                     (json_int_t)st->client_limit_busy, "draining", st->draining);
    json_object_set_new(j, "deadline_busy", json_integer((json_int_t)st->deadline_busy));
    json_object_set_new(j, "cancels_unanswered",
                        json_integer((json_int_t)st->cancels_unanswered));
    json_object_set_new(j, "transitions", entered);
    return j;
}

/* The health transitions line of the text view (under "health"). */
static void s_transitions_text(FILE *out, const Agentbus__Stats *st)
{
    fprintf(out, "             entered     ");
    for (size_t i = 0; i < st->n_health_transitions; i++)
        fprintf(out, " %s %llu%s", st->health_transitions[i]->state,
                (unsigned long long)st->health_transitions[i]->count,
                i + 1 < st->n_health_transitions ? "  " : "");
    fprintf(out, "%s\n", st->n_health_transitions ? "" : " -");
}

/* Batching and compression figures (issue 4), added after the rest so the
 * older fields keep their order. */
static json_t *s_stats_json_batching(const Agentbus__Stats *st)
{
    json_t *j = s_stats_json(st);
    json_object_set_new(
        j, "batching",
        json_pack("{s:f, s:f, s:I, s:I, s:I, s:I, s:I}", "factor_in", st->batch_factor_in,
                  "factor_out", st->batch_factor_out, "batches_in", (json_int_t)st->batches_in,
                  "batched_msgs_in", (json_int_t)st->batched_msgs_in, "batches_out",
                  (json_int_t)st->batches_out, "batched_msgs_out",
                  (json_int_t)st->batched_msgs_out, "malformed",
                  (json_int_t)st->batch_malformed));
    json_object_set_new(
        j, "compression",
        json_pack("{s:f, s:I, s:I, s:I, s:I, s:I}", "ratio", st->compression_ratio, "compressed",
                  (json_int_t)st->lz4_msgs, "skipped", (json_int_t)st->lz4_skipped,
                  "wire_bytes", (json_int_t)st->lz4_wire_bytes, "original_bytes",
                  (json_int_t)st->lz4_original_bytes, "bytes_saved",
                  (json_int_t)st->bytes_saved));
    return j;
}

void ctl_render_stats(FILE *out, const Agentbus__Stats *st, int json)
{
    if (json) {
        json_t *j = s_stats_json_batching(st);
        json_object_set_new(j, "health", s_health_json(st));
        json_object_set_new(j, "lanes", /* issue 16: client quotas, early deadlines */
                            json_pack("{s:I, s:I, s:I, s:I}", "clients", (json_int_t)st->clients,
                                      "client_limit_busy", (json_int_t)st->client_limit_busy,
                                      "client_queue_busy", (json_int_t)st->client_queue_busy,
                                      "deadline_early", (json_int_t)st->deadline_early));
        json_object_set_new(
            j, "bounds", /* issue 11: bytes in flight, connections */
            json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "connections",
                      (json_int_t)st->connections, "conn_refused", (json_int_t)st->conn_refused,
                      "slow_peers", (json_int_t)st->slow_peers, "in_flight_bytes",
                      (json_int_t)st->out_in_flight_bytes, "busy", (json_int_t)st->out_busy,
                      "dropped", (json_int_t)st->out_dropped, "disconnects",
                      (json_int_t)st->slow_disconnects, "disconnect_bytes",
                      (json_int_t)st->slow_disconnect_bytes, "lost_bytes",
                      (json_int_t)st->out_lost_bytes, "held_bytes", (json_int_t)st->held_bytes,
                      "held_bytes_busy", (json_int_t)st->held_bytes_busy));
        json_object_set_new(j, "handshakes", /* docs/security.md */
                            json_pack("{s:I, s:I, s:I}", "accepted",
                                      (json_int_t)st->handshakes_accepted, "refused",
                                      (json_int_t)st->handshakes_refused, "failed",
                                      (json_int_t)st->handshakes_failed));
        /* issue 11: refused lz4 requests, offline names and their bytes */
        json_object_set_new(j, "lz4_refused", json_integer((json_int_t)st->lz4_refused));
        json_object_set_new(j, "link_lz4_plain", json_integer((json_int_t)st->link_lz4_plain));
        json_object_set_new(j, "peer_brokers", json_integer((json_int_t)st->peer_brokers));
        json_object_set_new(j, "link_pub_unroutable",
                            json_integer((json_int_t)st->link_pub_unroutable));
        json_object_set_new(j, "remote_workers", json_integer((json_int_t)st->remote_workers));
        json_object_set_new(j, "model_queues", ctl_render_model_queues_json(st));
    json_object_set_new(j, "agent_heartbeat_ms", json_integer((json_int_t)st->agent_heartbeat_ms));
        json_object_set_new(j, "offline_names", json_integer((json_int_t)st->offline_names));
        json_object_set_new(j, "mailbox_charged_bytes",
                            json_integer((json_int_t)st->mailbox_charged_bytes));
        if (st->cache) /* issue 6: the inference cache's figures */
            json_object_set_new(j, "cache", ctl_cache_json(st->cache));
        json_object_set_new( /* issue 11: state peers make the broker keep */
            j, "limits",
            json_pack("{s:I, s:I, s:I, s:I, s:I, s:I}", "cancelled", (json_int_t)st->cancelled,
                      "cancelled_on_leave", (json_int_t)st->cancelled_on_leave,
                      "registers_refused", (json_int_t)st->registers_refused, "services",
                      (json_int_t)st->service_count, "services_expired",
                      (json_int_t)st->services_expired, "services_refused",
                      (json_int_t)st->services_refused));
        ctl_json_print(out, j);
        return;
    }
    fprintf(out, "agentbus-broker %s   uptime %.1f s\n", st->version, st->uptime_ms / 1000.0);
    fprintf(out, "connections  agents %u (heartbeat %u ms)   workers %u   control %u   "
                 "peer brokers %u (%u remote services)\n", st->agents, st->agent_heartbeat_ms,
            st->workers, st->controls, st->peer_brokers, st->remote_workers);
    fprintf(out, "messages     in %llu (%.0f/s)   out %llu (%.0f/s)\n",
            (unsigned long long)st->msgs_in, st->msgs_in_per_s, (unsigned long long)st->msgs_out,
            st->msgs_out_per_s);
    fprintf(out, "bytes        in %llu (%.0f/s)   out %llu (%.0f/s)\n",
            (unsigned long long)st->bytes_in, st->bytes_in_per_s,
            (unsigned long long)st->bytes_out, st->bytes_out_per_s);
    fprintf(out, "requests     %llu   replies %llu   pending %llu\n",
            (unsigned long long)st->requests, (unsigned long long)st->replies,
            (unsigned long long)st->pending);
    fprintf(out, "dropped      replies %llu   malformed %llu   send failures %llu"
                 "   answers too large %llu\n",
            (unsigned long long)st->replies_dropped, (unsigned long long)st->malformed,
            (unsigned long long)st->send_failures, (unsigned long long)st->answers_too_large);
    ctl_render_msg_stats(out, st);
    fprintf(out, "limits       cancelled %llu (client left %llu)   services %u (expired %llu, "
                 "refused %llu)   registers refused %llu\n",
            (unsigned long long)st->cancelled, (unsigned long long)st->cancelled_on_leave,
            st->service_count, (unsigned long long)st->services_expired,
            (unsigned long long)st->services_refused, (unsigned long long)st->registers_refused);
    fprintf(out, "bounds       connections %u (refused %llu)   slow peers %u   "
                 "in flight %llu bytes\n"
                 "             busy %llu   dropped %llu   disconnected %llu (%llu bytes)"
                 "   lost at drop %llu bytes\n"
                 "             requests hold %llu bytes (busy %llu)\n",
            st->connections, (unsigned long long)st->conn_refused, st->slow_peers,
            (unsigned long long)st->out_in_flight_bytes, (unsigned long long)st->out_busy,
            (unsigned long long)st->out_dropped, (unsigned long long)st->slow_disconnects,
            (unsigned long long)st->slow_disconnect_bytes,
            (unsigned long long)st->out_lost_bytes, (unsigned long long)st->held_bytes,
            (unsigned long long)st->held_bytes_busy);
    fprintf(out, "handshakes   accepted %llu   refused %llu (unknown key)   failed %llu\n",
            (unsigned long long)st->handshakes_accepted,
            (unsigned long long)st->handshakes_refused,
            (unsigned long long)st->handshakes_failed);
    fprintf(out, "batching     in %.2f msgs/zmq msg (%llu batches)   out %.2f (%llu batches)"
                 "   malformed %llu\n",
            st->batch_factor_in, (unsigned long long)st->batches_in, st->batch_factor_out,
            (unsigned long long)st->batches_out, (unsigned long long)st->batch_malformed);
    fprintf(out, "compression  ratio %.2f   saved %llu bytes   compressed %llu   skipped %llu\n",
            st->compression_ratio, (unsigned long long)st->bytes_saved,
            (unsigned long long)st->lz4_msgs, (unsigned long long)st->lz4_skipped);
    fprintf(out, "names        offline %u   charged %llu bytes   lz4 refused %llu\n",
            st->offline_names, (unsigned long long)st->mailbox_charged_bytes,
            (unsigned long long)st->lz4_refused);
    fprintf(out, "errors      ");
    for (size_t i = 0; i < st->n_errors; i++)
        fprintf(out, " %s %llu", st->errors[i]->code, (unsigned long long)st->errors[i]->count);
    fprintf(out, "%s\n", st->n_errors ? "" : " none");
    fprintf(out,
            "health       redispatched %llu   retries exhausted %llu   duplicates dropped %llu"
            "   late replies %llu\n"
            "             deadline expired %llu   suspected %llu   ejected %llu   probes %llu"
            "   disconnects %llu\n"
            "             send eagain %llu   unreachable %llu   client limit busy %llu\n"
            "             deadline busy %llu   cancels unanswered %llu%s\n",
            (unsigned long long)st->redispatched, (unsigned long long)st->retries_exhausted,
            (unsigned long long)st->duplicates_dropped, (unsigned long long)st->late_replies,
            (unsigned long long)st->deadline_expired, (unsigned long long)st->workers_suspected,
            (unsigned long long)st->workers_ejected, (unsigned long long)st->probes,
            (unsigned long long)st->disconnects, (unsigned long long)st->send_eagain,
            (unsigned long long)st->send_unreachable, (unsigned long long)st->client_limit_busy,
            (unsigned long long)st->deadline_busy, (unsigned long long)st->cancels_unanswered,
            st->draining ? "   DRAINING" : "");
    s_transitions_text(out, st);
    fprintf(out, "lanes        clients %u   client queue busy %llu   deadline early %llu\n\n",
            st->clients, (unsigned long long)st->client_queue_busy,
            (unsigned long long)st->deadline_early);
    s_services_text(out, st->services, st->n_services);
    ctl_render_model_queues_text(out, st);
}

json_t *ctl_render_worker_json(const Agentbus__WorkerInfo *w)
{
    json_t *labels = json_object();
    for (size_t k = 0; k < w->n_labels; k++)
        json_object_set_new(labels, w->labels[k]->key, json_string(w->labels[k]->value));
    json_t *j = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:o}", "id", w->id, "name",
                          w->name, "service", w->service, "capacity", (json_int_t)w->capacity,
                          "in_flight", (json_int_t)w->in_flight, "completed",
                          (json_int_t)w->completed, "connected_ms", (json_int_t)w->connected_ms,
                          "last_seen_ms", (json_int_t)w->last_seen_ms, "labels", labels);
    /* issue 5: health */
    json_object_set_new(j, "health", json_string(w->health));
    json_object_set_new(j, "free_credit", json_integer(w->free_credit));
    json_object_set_new(j, "interval_ms", json_integer(w->interval_ms));
    json_object_set_new(j, "suspicion", json_real(w->suspicion));
    json_object_set_new(j, "ejections", json_integer(w->ejections));
    json_object_set_new(j, "backoff_ms", json_integer(w->backoff_ms));
    json_object_set_new(j, "failures", json_integer(w->failures));
    json_object_set_new(j, "redispatched", json_integer((json_int_t)w->redispatched));
    json_object_set_new(j, "backend_state", json_string(w->backend_state));
    return j;
}

const char *ctl_backend_word(const char *state, int down, char *buf, size_t cap)
{
    if (down)
        return "down";
    if (!state || !*state)
        return "-";
    snprintf(buf, cap, "%.*s", (int)strcspn(state, ": "), state);
    return buf;
}

void ctl_render_workers(FILE *out, const Agentbus__WorkerList *wl, int json)
{
    if (json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < wl->n_workers; i++)
            json_array_append_new(arr, ctl_render_worker_json(wl->workers[i]));
        ctl_json_print(out, arr);
        return;
    }
    fprintf(out, "%-12s %-16s %-16s %9s %9s %10s %9s %-9s %-8s %7s %6s %5s  %s\n", "ID",
            "NAME", "SERVICE", "CAPACITY", "IN_FLIGHT", "COMPLETED", "AGE_S", "HEALTH", "BACKEND",
            "IVL_MS", "PHI", "EJECT", "LABELS");
    for (size_t i = 0; i < wl->n_workers; i++) {
        const Agentbus__WorkerInfo *w = wl->workers[i];
        char id[16]; /* the column holds 12: a longer id shows its first 10 and ".." */
        if (strlen(w->id) > 12)
            snprintf(id, sizeof id, "%.10s..", w->id);
        else
            snprintf(id, sizeof id, "%s", w->id);
        char word[16];
        const char *backend = ctl_backend_word(
            w->backend_state, w->inference && !w->inference->backend_up, word, sizeof word);
        fprintf(out, "%-12s %-16s %-16s %9u %9u %10llu %9.1f %-9s %-8s %7u %6.1f %5u ", id,
                w->name[0] ? w->name : "-", w->service, w->capacity, w->in_flight,
                (unsigned long long)w->completed, w->connected_ms / 1000.0, w->health, backend,
                w->interval_ms, w->suspicion, w->ejections);
        for (size_t k = 0; k < w->n_labels; k++)
            fprintf(out, " %s=%s", w->labels[k]->key, w->labels[k]->value);
        fprintf(out, "\n");
    }
    if (wl->n_workers == 0)
        fprintf(out, "(no workers registered)\n");
}

void ctl_json_set_bytes(json_t *j, const char *key, const void *data, size_t len)
{
    json_t *str = json_stringn(data, len); /* NULL unless valid UTF-8 */
    if (str) {
        json_object_set_new(j, key, str);
        return;
    }
    char *hex = malloc(2 * len + 1), name[64];
    if (!hex)
        return;
    for (size_t i = 0; i < len; i++)
        snprintf(hex + 2 * i, 3, "%02x", ((const unsigned char *)data)[i]);
    hex[2 * len] = '\0';
    snprintf(name, sizeof name, "%s_hex", key);
    json_object_set_new(j, name, json_string(hex));
    free(hex);
}

void ctl_render_reply(FILE *out, const void *data, size_t len)
{
    json_t *j = json_pack("{s:b, s:I}", "ok", 1, "bytes", (json_int_t)len);
    if (j)
        ctl_json_set_bytes(j, "reply", data, len);
    ctl_json_print(out, j);
}

void ctl_render_error(FILE *out, const char *code, const char *text)
{
    json_t *t = json_string(text);
    ctl_json_print(out, json_pack("{s:b, s:s, s:o}", "ok", 0, "code", code,
                          "error", t ? t : json_string("(error text is not UTF-8)")));
}

void ctl_clean_str(char *s, int text)
{
    unsigned char *p = (unsigned char *)s, *w = p; /* W: where the shown text goes */
    while (p && *p) {
        size_t n = ab_utf8_seq(p);
        int control = *p < 0x20 || *p == 0x7f || (n == 2 && p[0] == 0xc2 && p[1] < 0xa0);
        if (n == 0 || (text && control)) { /* one '?' for a C1 control's two bytes too */
            *w++ = '?';
            p += n ? n : 1;
        } else {
            if (w != p)
                memmove(w, p, n);
            w += n;
            p += n;
        }
    }
    if (w != p) /* written only when shorter: protobuf-c's "" default is read-only */
        *w = '\0';
}

void ctl_clean_pb(ProtobufCMessage *m, int text)
{
    const ProtobufCMessageDescriptor *d = m ? m->descriptor : NULL;
    for (unsigned i = 0; d && i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        char *base = (char *)m;
        if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)(base + f->quantifier_offset) != f->id)
            continue; /* another member of its oneof is set */
        size_t n = 1;
        void **items = (void **)(base + f->offset);
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            n = *(const size_t *)(base + f->quantifier_offset);
            items = *(void ***)(base + f->offset);
        }
        for (size_t k = 0; items && k < n; k++) {
            if (items[k] && f->type == PROTOBUF_C_TYPE_STRING)
                ctl_clean_str(items[k], text);
            else if (items[k])
                ctl_clean_pb(items[k], text);
        }
    }
}

void ctl_report_error(int json, const char *code, const char *text)
{
    char shown[1024];
    snprintf(shown, sizeof shown, "%s", text);
    ctl_clean_str(shown, 1);
    fprintf(stderr, "brokerctl: %s: %s\n", code, shown);
    if (json) {
        snprintf(shown, sizeof shown, "%s", text);
        ctl_clean_str(shown, 0);
        ctl_render_error(stdout, code, shown);
    }
}
