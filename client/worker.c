/*
 * worker.c - the worker side: register a service, receive requests, answer.
 *
 * The worker registers on every (re)connect and whenever the broker says it
 * does not know it (a HELLO out of the blue). Its capacity is its credit:
 * the broker never has more than that many of its requests outstanding.
 */
#include "internal.h"
#include "list.h"
#include "agentbus.pb-c.h"
#include "util.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define AB_MAX_LABELS 64

/* Freed job records kept for the next requests: a calloc and a free of
 * the ~700-byte record per request were 10% of the echo worker's
 * instructions at 64 B (callgrind), and a worker reads a whole burst of
 * requests before it answers the first. Bounded (about 700 KiB); none
 * under ASan, so a job used after its end still shows. */
#define S_JOB_SPARE_MAX (AB_ASAN ? 0 : 1024)
/* A BATCH entry's payload up to this size is kept in the job's record. */
#define S_JOB_SMALL 256
/* What a worker holds past its capacity (s_full). */
#define S_SLACK_JOBS 1024
#define S_SLACK_BYTES ((size_t)64 << 20)

struct ab_worker {
    ab_conn_t conn;
    char service[256];
    unsigned capacity;
    int registered;
    uint64_t register_id; /* the latest REGISTER's id: its refusal names it */
    int refused;          /* the code of that REGISTER's refusal, 0 if none */
    char refused_text[AB_ERRTEXT_MAX]; /* its text (the broker's words) */
    char *label_keys[AB_MAX_LABELS];
    char *label_values[AB_MAX_LABELS];
    size_t nlabels;
    ab_list_t ready;                   /* ab_job_t.link: received, not yet handed out */
    ab_list_t out;                     /* ab_job_t.link: handed out, not yet freed */
    unsigned n_ready, n_out;
    size_t open_bytes;                 /* the payloads of the ready and handed-out jobs */
    char backend_state[64];            /* reported with each heartbeat */
    atomic_int shutdown;               /* ab_worker_shutdown (any thread): drain, then stop */
    atomic_int shutdown_grace_ms;
    int draining;
    int64_t drain_end_ms;
    ab_cancel_fn *cancel_fn;
    void *cancel_arg;
    uint8_t *state; /* encoded agentbus.InferenceState, appended to Register */
    size_t state_len;
    ab_job_t *spare; /* freed jobs, linked through their first bytes */
    size_t nspare;
};

struct ab_job {
    uint64_t id; /* broker id: the reply's correlation id */
    uint32_t timeout_ms;
    zmq_msg_t payload; /* the payload's frame: the payload is SIZE bytes AT bytes into it */
    size_t at, size;   /* (an inline field may sit anywhere in its header frame) */
    int in_record;     /* a small payload of a BATCH entry: in SMALL, no frame */
    ab_list_t link;              /* in its worker's ready or out list */
    ab_worker_t *worker;         /* while handed out; NULL once the worker is gone */
    int answered;
    uint32_t priority;            /* as the client set it */
    int accept_lz4; /* ACCEPT_LZ4: the broker asks for large replies compressed */
    int admin;      /* the broker vouches the requester is an admin (AB_FLAG_ADMIN) */
    /* From here on written whole for each job (s_job_new clears only what
     * is above: the buffers are 800 bytes). */
    char service[256];
    char model[AB_MODEL_MAX + 1]; /* the model the request named, "" for none */
    uint8_t small[S_JOB_SMALL];
};

static int s_answer(ab_worker_t *w, const ab_job_t *job, uint32_t kind, const void *data,
                    size_t size, uint32_t code, const char *text, uint32_t flags);
static int s_heartbeat(ab_worker_t *w, int64_t now);

/* A zeroed job, from W's spares when it has one. */
static ab_job_t *s_job_new(ab_worker_t *w)
{
    ab_job_t *j = w->spare;
    if (!j)
        return calloc(1, sizeof *j);
    w->spare = *(ab_job_t **)j;
    w->nspare--;
    memset(j, 0, offsetof(ab_job_t, service));
    j->service[0] = j->model[0] = '\0';
    return j;
}

/* Ends J's record: its payload frame goes; the record is kept in W's
 * spares (W may be NULL: the worker is gone, the record is freed). J is
 * off every list already, and no pointer to it is left in the library:
 * the application's was set to NULL by whoever called this. */
static void s_job_free(ab_worker_t *w, ab_job_t *j)
{
    zmq_msg_close(&j->payload);
    if (!w || w->nspare + 1 > S_JOB_SPARE_MAX) { /* (+ 1: no always-true test when 0) */
        free(j);
        return;
    }
    *(ab_job_t **)j = w->spare;
    w->spare = j;
    w->nspare++;
}

int ab_worker_new(ab_worker_t **out, const ab_options_t *opts, const char *service,
                  unsigned capacity)
{
    if (!out)
        return AB_EINVAL;
    *out = NULL;
    /* Said in the thread's last error (it kept an earlier call's text, or
     * none: agentbus-worker printed "invalid argument: cannot create"). */
    const char *why = !service || !*service || strlen(service) >= 256
                          ? "service name must be 1..255 bytes"
                      : capacity < 1 || capacity > 100000 ? "capacity must be 1..100000"
                                                          : NULL;
    ab_conn_new_error_set(why ? why : "");
    if (why)
        return AB_EINVAL;
    ab_worker_t *w = calloc(1, sizeof *w);
    if (!w)
        return AB_ENOMEM;
    snprintf(w->service, sizeof w->service, "%s", service);
    w->capacity = capacity;
    int rc = ab_conn_open(&w->conn, opts, "worker");
    ab_conn_new_error_set(rc == AB_OK ? "" : w->conn.error);
    if (rc != AB_OK) {
        ab_worker_destroy(&w);
        return rc;
    }
    *out = w;
    return AB_OK;
}

/* A job freed without an answer is answered here, so its client does not
 * wait for the deadline and the worker's credit comes back. */
void ab_job_destroy(ab_job_t **job)
{
    if (!job || !*job)
        return;
    ab_job_t *j = *job;
    ab_worker_t *w = j->worker;
    if (w) {
        if (!j->answered)
            s_answer(w, j, AB_KIND_ERROR, NULL, 0, AB_ERR_APPLICATION,
                     "the worker dropped the request without answering", 0);
        ab_list_remove(&j->link);
        if (w->n_out)
            w->n_out--;
        w->open_bytes -= w->open_bytes >= j->size ? j->size : w->open_bytes;
    }
    s_job_free(w, j);
    *job = NULL;
}

void ab_worker_destroy(ab_worker_t **wp)
{
    if (!wp || !*wp)
        return;
    ab_worker_t *w = *wp;
    ab_list_t *l;
    while ((l = ab_list_pop_head(&w->ready))) { /* never handed out: BYE hands them back */
        ab_job_t *j = ab_list_data(l, ab_job_t, link);
        j->answered = 1;
        ab_job_destroy(&j);
    }
    while ((l = ab_list_pop_head(&w->out))) /* unlinked: the list goes with W */
        ab_list_data(l, ab_job_t, link)->worker = NULL; /* the application may still
                                                            hold and free them */
    if (w->conn.sock && w->conn.connected) {
        ab_conn_flush(&w->conn); /* replies gathered before the goodbye */
        ab_conn_send_kind(&w->conn, AB_KIND_BYE);
        /* Let the last replies and the BYE leave: dropped, they would make
         * the broker re-dispatch requests this worker finished. */
        int linger = 1000;
        zmq_setsockopt(w->conn.sock, ZMQ_LINGER, &linger, sizeof linger);
    }
    ab_conn_close(&w->conn);
    for (size_t i = 0; i < w->nlabels; i++) {
        free(w->label_keys[i]);
        free(w->label_values[i]);
    }
    free(w->state);
    while (w->spare) {
        ab_job_t *j = w->spare;
        w->spare = *(ab_job_t **)j;
        free(j);
    }
    free(w);
    *wp = NULL;
}

const char *ab_worker_last_error(const ab_worker_t *w)
{
    return w ? w->conn.error : ab_conn_new_error();
}

int ab_worker_set_label(ab_worker_t *w, const char *key, const char *value)
{
    if (!w || !key || !*key || !value)
        return AB_EINVAL;
    for (size_t i = 0; i < w->nlabels; i++) {
        if (strcmp(w->label_keys[i], key) == 0) {
            char *v = strdup(value);
            if (!v)
                return AB_ENOMEM;
            free(w->label_values[i]);
            w->label_values[i] = v;
            return AB_OK;
        }
    }
    if (w->nlabels >= AB_MAX_LABELS)
        return ab_conn_fail(&w->conn, AB_EINVAL, "at most %d labels", AB_MAX_LABELS);
    w->label_keys[w->nlabels] = strdup(key);
    w->label_values[w->nlabels] = strdup(value);
    if (!w->label_keys[w->nlabels] || !w->label_values[w->nlabels]) {
        free(w->label_keys[w->nlabels]);
        free(w->label_values[w->nlabels]);
        return AB_ENOMEM;
    }
    w->nlabels++;
    return AB_OK;
}

static int s_register(ab_worker_t *w)
{
    Agentbus__Register reg;
    agentbus__register__init(&reg);
    Agentbus__Register__LabelsEntry ent[AB_MAX_LABELS], *entp[AB_MAX_LABELS];
    for (size_t i = 0; i < w->nlabels; i++) {
        agentbus__register__labels_entry__init(&ent[i]);
        ent[i].key = w->label_keys[i];
        ent[i].value = w->label_values[i];
        entp[i] = &ent[i];
    }
    reg.service = w->service;
    reg.capacity = w->capacity;
    reg.name = w->conn.opts.name;
    reg.heartbeat_ms = (uint32_t)w->conn.opts.heartbeat_ms;
    reg.features = (w->conn.opts.batch ? AB_FEATURE_BATCH : 0) | AB_FEATURE_LZ4 | AB_FEATURE_INLINE;
    reg.max_payload = w->conn.opts.max_payload; /* the broker sends no larger request */
    reg.n_labels = w->nlabels;
    reg.labels = entp;
    size_t len = agentbus__register__get_packed_size(&reg);
    /* Register.inference (field 30) is appended already encoded: a
     * sub-message on the wire is its bytes behind a key and a length. */
    uint8_t *buf = malloc(len + (w->state_len ? 16 + w->state_len : 1));
    if (!buf)
        return ab_conn_fail(&w->conn, AB_ENOMEM, "out of memory");
    agentbus__register__pack(&reg, buf);
    if (w->state_len) {
        uint64_t v = 30u << 3 | 2u;
        for (int k = 0; k < 2; k++, v = w->state_len) {
            while (v >= 0x80) {
                buf[len++] = (uint8_t)(v | 0x80);
                v >>= 7;
            }
            buf[len++] = (uint8_t)v;
        }
        memcpy(buf + len, w->state, w->state_len);
        len += w->state_len;
    }
    ab_header_t h = ab_header_init(AB_KIND_REGISTER);
    h.id = w->register_id = ab_conn_next_id(&w->conn);
    h.target = ab_view_of(w->service);
    h.credit = w->capacity;
    h.sender = ab_view_of(w->conn.opts.name);
    int rc = ab_conn_send(&w->conn, &h, buf, len);
    free(buf);
    return rc;
}

/* A job still waiting in the ready queue is answered here; one handed out
 * belongs to the application, which is told. */
static void s_on_cancel(ab_worker_t *w, uint64_t id, int why)
{
    ab_list_t *l, *tmp;
    AB_LIST_FOREACH_SAFE(l, tmp, &w->ready) {
        ab_job_t *j = ab_list_data(l, ab_job_t, link);
        if (j->id != id)
            continue;
        ab_list_remove(&j->link);
        w->n_ready--; /* else heartbeats report it as queued (and credit as used) */
        w->open_bytes -= j->size;
        s_answer(w, j, AB_KIND_ERROR, NULL, 0, AB_ERR_CANCELLED, "cancelled", 0);
        s_job_free(w, j);
        return;
    }
    AB_LIST_FOREACH_SAFE(l, tmp, &w->out)
        if (ab_list_data(l, ab_job_t, link)->id == id && w->cancel_fn) {
            w->cancel_fn(w, id, why, w->cancel_arg);
            return;
        }
}

/* Whether W is too full for one more request of SIZE payload bytes. The
 * broker sends no more than the capacity (its credit) and the worker takes
 * all of that. It may have more in flight for a while: after a reconnect
 * the application still holds the old connection's jobs, and a capacity
 * may have been lowered. Past the capacity the worker holds (ready or
 * handed out, not yet answered) up to twice the capacity plus S_SLACK_JOBS
 * jobs, and no more than S_SLACK_BYTES of payloads in all, then refuses
 * (BUSY): a broker that ignores the credit cannot make it hold without
 * bound, and each refused request is answered at once. */
static int s_full(const ab_worker_t *w, size_t size)
{
    size_t open = (size_t)w->n_ready + w->n_out;
    if (open < w->capacity)
        return 0;
    return open >= 2 * (size_t)w->capacity + S_SLACK_JOBS || w->open_bytes + size > S_SLACK_BYTES;
}

static void s_on_message(ab_worker_t *w, ab_in_t *in)
{
    ab_header_t *h = &in->h;
    switch (h->kind) {
    case AB_KIND_HELLO:
        if (h->correlation_id == 0) { /* the broker does not know us (any more) */
            w->registered = 0;
            s_register(w);
        }
        break;
    case AB_KIND_REGISTER:
        w->registered = 1;
        w->refused = 0;
        ab_conn_set_interval(&w->conn, h->credit); /* the broker's adaptive interval */
        w->conn.next_heartbeat_ms = 0; /* report load and backend state at once */
        break;
    case AB_KIND_HEARTBEAT:
        ab_conn_set_interval(&w->conn, h->credit);
        break;
    case AB_KIND_REQUEST: {
        ab_job_t *j = s_job_new(w);
        if (!j)
            return; /* the broker answers the client at the deadline */
        j->id = h->id;
        if (s_full(w, in->has_body ? in->size : 0)) {
            zmq_msg_init(&j->payload);
            s_answer(w, j, AB_KIND_ERROR, NULL, 0, AB_ERR_BUSY,
                     "worker queue full: the broker sent past the worker's capacity", 0);
            s_job_free(w, j);
            return;
        }
        j->timeout_ms = h->timeout_ms;
        j->accept_lz4 = (h->flags & AB_FLAG_ACCEPT_LZ4) != 0;
        j->admin = (h->flags & AB_FLAG_ADMIN) != 0;
        ab_view_copy(h->target, j->service, sizeof j->service);
        ab_view_copy(h->model, j->model, sizeof j->model);
        j->priority = h->priority;
        zmq_msg_init(&j->payload);
        j->size = in->has_body ? in->size : 0;
        if (in->has_body && ab_in_batched(in) && in->size <= sizeof j->small) {
            /* A BATCH entry's payload is copied either way: into the
             * (reused) record, not a frame of its own (a malloc here and a
             * free at the job's end: ~300 instructions a 64 B job). */
            if (in->size)
                memcpy(j->small, in->data, in->size);
            j->in_record = 1;
        } else if (in->has_body && ab_in_take_body(in, &j->payload, &j->at) != AB_OK) {
            s_job_free(w, j);
            return; /* out of memory: the broker answers the client at the deadline */
        }
        ab_list_insert_tail(&w->ready, &j->link);
        w->n_ready++;
        w->open_bytes += j->size;
        break;
    }
    case AB_KIND_CANCEL:
        s_on_cancel(w, h->correlation_id,
                    h->error_code == AB_ERR_DEADLINE ? AB_EDEADLINE : AB_ECANCELLED);
        break;
    case AB_KIND_ERROR:
        /* A refused registration leaves the worker connected and serving
         * nothing: kept (ab_worker_refused) and said (the last error), so
         * that the application can tell that from a broker not reached. */
        if (h->correlation_id && h->correlation_id == w->register_id) {
            ab_view_copy(h->error_text, w->refused_text, sizeof w->refused_text);
            w->registered = 0;
            w->refused = ab_status_from_wire(h->error_code);
            ab_conn_fail(&w->conn, w->refused, "%s", w->refused_text); /* the broker's words */
        }
        break; /* other ERRORs to us (e.g. our message was malformed): nothing to do */
    default:
        break;
    }
}

/* Reads everything waiting; returns messages handled or an error. */
static int s_process(ab_worker_t *w)
{
    ab_conn_flush(&w->conn); /* processing input ends the batching turn */
    int ev = ab_conn_events(&w->conn);
    if (ev & AB_CONN_DISCONNECTED)
        w->registered = 0;
    if (ev & AB_CONN_CONNECTED) {
        w->refused = 0; /* a new connection: its REGISTER is judged afresh */
        s_register(w);
    }
    int handled = 0;
    /* Bounded in bytes too (internal.h): past them the rest waits in the
     * socket, compressed, for the next turn. */
    size_t taken = 0;
    for (int i = 0; i < AB_CONN_TURN_MSGS && taken < AB_CONN_TURN_BYTES; i++) {
        ab_in_t in;
        int rc = ab_conn_recv(&w->conn, &in);
        if (rc < 0)
            return rc;
        if (rc == 0)
            break;
        taken += in.size;
        s_on_message(w, &in);
        ab_in_close(&in);
        handled++;
    }
    /* Once per job handed out: the coarse clock (heartbeats are due in
     * seconds; a clock read per job showed in the worker's profile). */
    s_heartbeat(w, ab_conn_coarse_ms());
    return handled;
}

/* Sends W's heartbeat when one is due at NOW; 1 when it did. */
static int s_heartbeat(ab_worker_t *w, int64_t now)
{
    if (ab_conn_heartbeat_due(&w->conn, now)) {
        /* The heartbeat carries the worker's load and its backend's state. */
        Agentbus__WorkerHeartbeat hb;
        agentbus__worker_heartbeat__init(&hb);
        hb.in_flight = w->n_out;
        hb.queued = w->n_ready;
        hb.free_credit =
            w->capacity > w->n_out + w->n_ready ? w->capacity - w->n_out - w->n_ready : 0;
        hb.backend_state = w->backend_state;
        uint8_t buf[128];
        size_t len = agentbus__worker_heartbeat__get_packed_size(&hb);
        if (len <= sizeof buf)
            agentbus__worker_heartbeat__pack(&hb, buf);
        ab_conn_heartbeat_with(&w->conn, now, w->capacity, len <= sizeof buf ? buf : NULL,
                               len <= sizeof buf ? len : 0);
        return 1;
    }
    return 0;
}

/* Hands out the next ready job, tracking it until it is freed. */
static ab_job_t *s_pop(ab_worker_t *w)
{
    /* A draining worker starts nothing new: its final BYE hands those back. */
    ab_list_t *l = w->draining ? NULL : ab_list_pop_head(&w->ready);
    if (!l)
        return NULL;
    ab_job_t *j = ab_list_data(l, ab_job_t, link);
    w->n_ready--;
    w->n_out++;
    j->worker = w;
    ab_list_insert_head(&w->out, &j->link);
    return j;
}

/* Tells the broker to send nothing new (BYE with FLAG_DRAINING); the
 * worker then finishes what it holds before stopping. */
static void s_drain_begin(ab_worker_t *w)
{
    w->draining = 1;
    w->drain_end_ms = ab_now_ms() + atomic_load(&w->shutdown_grace_ms);
    if (w->conn.connected) {
        ab_header_t h = ab_header_init(AB_KIND_BYE);
        h.id = ab_conn_next_id(&w->conn);
        h.flags = AB_FLAG_DRAINING;
        ab_conn_send(&w->conn, &h, NULL, 0);
    }
}

/* ab_worker_recv; with QUIET a timeout leaves the last error alone, for
 * ab_worker_poll, to which a timeout is no error: the last error may be
 * the broker's refusal (ab_worker_refused), which the application reads
 * between polls. */
static int s_recv(ab_worker_t *w, ab_job_t **job, int timeout_ms, int quiet)
{
    if (!w || !job)
        return AB_EINVAL;
    *job = NULL;
    if (atomic_load(&w->conn.stop)) /* no job handed out; a refusal's text kept */
        return ab_worker_refused(w) ? AB_ESTOPPED : ab_conn_stopped(&w->conn);
    /* Set when the first pass found no job: a job already waiting costs
     * no clock read. */
    int64_t end = 0;
    for (;;) {
        int rc = s_process(w);
        if (rc < 0)
            return rc;
        if (atomic_load(&w->shutdown) && !w->draining)
            s_drain_begin(w);
        if (w->draining && (ab_list_empty(&w->out) || ab_now_ms() >= w->drain_end_ms))
            return ab_conn_fail(&w->conn, AB_ESTOPPED, "drained after shutdown");
        if ((*job = s_pop(w))) {
            /* Its answer must not wait for a later poll when nothing else
             * is waiting (a heartbeat or a CANCEL's answer may have used
             * this turn's direct send). */
            ab_conn_turn_end_idle(&w->conn, !ab_list_empty(&w->ready));
            return AB_OK;
        }
        int64_t now = ab_now_ms();
        if (!end)
            end = timeout_ms < 0 ? INT64_MAX : now + timeout_ms;
        if (w->draining && w->drain_end_ms < end)
            end = w->drain_end_ms;
        if (now >= end) {
            /* The caller may sleep elsewhere now (a backend in its own poll):
             * answers gathered in this turn, such as a CANCEL's, go first. */
            ab_conn_flush(&w->conn);
            if (quiet)
                return AB_ETIMEOUT;
            /* A refused worker gets no request: the last error keeps saying
             * why (ab_worker_refused), not that none came. */
            if (ab_worker_refused(w))
                return ab_conn_fail(&w->conn, AB_ETIMEOUT, "%s",
                                    w->conn.auth_refused ? ab_conn_refusal(&w->conn)
                                                         : w->refused_text);
            return ab_conn_fail(&w->conn, AB_ETIMEOUT, "no request within %d ms", timeout_ms);
        }
        int64_t wait = w->conn.next_heartbeat_ms - now;
        if (wait > end - now)
            wait = end - now;
        rc = ab_conn_wait(&w->conn, wait > 0 ? (int)wait : 0);
        if (rc < 0)
            return rc;
    }
}

int ab_worker_recv(ab_worker_t *w, ab_job_t **job, int timeout_ms)
{
    return s_recv(w, job, timeout_ms, 0);
}

const void *ab_job_data(const ab_job_t *job, size_t *size)
{
    if (size)
        *size = job ? job->size : 0;
    if (!job)
        return NULL;
    if (job->in_record)
        return job->small;
    return (const uint8_t *)zmq_msg_data((zmq_msg_t *)&job->payload) + job->at;
}

uint64_t ab_job_id(const ab_job_t *job)
{
    return job ? job->id : 0;
}

uint32_t ab_job_timeout_ms(const ab_job_t *job)
{
    return job ? job->timeout_ms : 0;
}

const char *ab_job_service(const ab_job_t *job)
{
    return job ? job->service : "";
}

int ab_job_admin(const ab_job_t *job)
{
    return job ? job->admin : 0;
}

uint32_t ab_job_priority(const ab_job_t *job)
{
    return job ? job->priority : 0;
}

const char *ab_job_model(const ab_job_t *job)
{
    return job ? job->model : "";
}

static int s_answer(ab_worker_t *w, const ab_job_t *job, uint32_t kind, const void *data,
                    size_t size, uint32_t code, const char *text, uint32_t flags)
{
    if (!w || !job || (size && !data))
        return AB_EINVAL;
    if (size > w->conn.opts.max_payload)
        return ab_conn_fail(&w->conn, AB_EPAYLOADSIZE, "reply of %zu bytes exceeds %zu", size,
                            w->conn.opts.max_payload);
    ab_header_t h = ab_header_init(kind);
    h.correlation_id = job->id;
    h.error_code = code;
    h.error_text = ab_view_of(text);
    h.flags = flags;
    return ab_conn_send_z(&w->conn, &h, kind == AB_KIND_ERROR ? NULL : (data ? data : ""), size,
                          job->accept_lz4 ? AB_Z_ASKED : AB_Z_NEVER);
}

int ab_worker_reply_part(ab_worker_t *w, ab_job_t *job, const void *data, size_t size)
{
    return s_answer(w, job, AB_KIND_PARTIAL, data, size, 0, NULL, 0);
}

int ab_worker_reply(ab_worker_t *w, ab_job_t **job, const void *data, size_t size)
{
    if (!job || !*job)
        return AB_EINVAL;
    int rc = s_answer(w, *job, AB_KIND_REPLY, data, size, 0, NULL, 0);
    if (rc == AB_EPAYLOADSIZE) /* nothing was sent: tell the client why */
        s_answer(w, *job, AB_KIND_ERROR, NULL, 0, AB_ERR_INTERNAL,
                 "the worker's reply exceeds the maximum payload size", 0);
    (*job)->answered = 1; /* even if the send failed: never answer twice */
    ab_job_destroy(job);
    return rc;
}

static int s_fail(ab_worker_t *w, ab_job_t **job, int status, const char *text, uint32_t flags)
{
    if (!job || !*job)
        return AB_EINVAL;
    /* Not an AB_E* code at all (-999): APPLICATION, as promised, not the
     * INTERNAL ab_status_to_wire gives a status in no row. */
    uint32_t code = ab_status_to_wire(status);
    if (code == AB_ERR_NONE || status >= 0 || ab_status_index(status) < 0)
        code = AB_ERR_APPLICATION;
    int rc = s_answer(w, *job, AB_KIND_ERROR, NULL, 0, code, text ? text : "", flags);
    (*job)->answered = 1;
    ab_job_destroy(job);
    return rc;
}

int ab_worker_fail(ab_worker_t *w, ab_job_t **job, int status, const char *text)
{
    return s_fail(w, job, status, text, 0);
}

int ab_worker_fail_begun(ab_worker_t *w, ab_job_t **job, int status, const char *text)
{
    return s_fail(w, job, status, text, AB_FLAG_NON_IDEMPOTENT);
}

int ab_worker_poll(ab_worker_t *w, int timeout_ms, ab_job_fn *fn, void *arg)
{
    if (!w || !fn)
        return AB_EINVAL;
    int n = 0;
    ab_job_t *job;
    int rc = s_recv(w, &job, timeout_ms, 1);
    if (rc == AB_ETIMEOUT)
        return 0;
    if (rc != AB_OK)
        return rc;
    /* Bounded, so a caller under constant load still gets control back.
     * A lone job's answer goes at once (ab_worker_recv ended the turn);
     * the answers to a backlog are gathered and leave together below. */
    do {
        fn(w, job, arg);
        n++;
    } while (n < 1024 && !atomic_load(&w->conn.stop) &&
             ((job = s_pop(w)) || (s_process(w) > 0 && (job = s_pop(w)))));
    ab_conn_flush(&w->conn); /* the caller may not come back soon */
    return n;
}

int ab_worker_run(ab_worker_t *w, ab_job_fn *fn, void *arg)
{
    if (!w || !fn)
        return AB_EINVAL;
    while (!atomic_load(&w->conn.stop)) {
        int rc = ab_worker_poll(w, 1000, fn, arg);
        if (rc == AB_ESTOPPED)
            break;
        if (rc < 0)
            return rc;
    }
    return AB_OK;
}

unsigned ab_worker_in_flight(const ab_worker_t *w)
{
    return w ? w->n_out : 0;
}

void ab_worker_stop(ab_worker_t *w)
{
    if (w)
        atomic_store(&w->conn.stop, 1);
}

void ab_worker_shutdown(ab_worker_t *w, int grace_ms)
{
    if (!w)
        return;
    atomic_store(&w->shutdown_grace_ms, grace_ms < 0 ? 0 : grace_ms);
    atomic_store(&w->shutdown, 1);
}

int ab_worker_set_backend_state(ab_worker_t *w, const char *state)
{
    if (!w || !state)
        return AB_EINVAL;
    snprintf(w->backend_state, sizeof w->backend_state, "%s", state);
    return AB_OK;
}

int ab_worker_connected(const ab_worker_t *w)
{
    return w ? w->conn.connected && w->registered : 0;
}

int ab_worker_refused(const ab_worker_t *w)
{
    if (!w || (w->conn.connected && w->registered))
        return AB_OK;
    if (w->conn.auth_refused && !w->conn.handshaken)
        return AB_EDENIED;
    return w->refused;
}

int ab_worker_set_cancel_handler(ab_worker_t *w, ab_cancel_fn *fn, void *arg)
{
    if (!w)
        return AB_EINVAL;
    w->cancel_fn = fn;
    w->cancel_arg = arg;
    return AB_OK;
}

int ab_worker_set_capacity(ab_worker_t *w, unsigned capacity)
{
    if (!w || capacity < 1 || capacity > 100000)
        return AB_EINVAL;
    if (capacity == w->capacity)
        return AB_OK;
    w->capacity = capacity;
    return w->conn.connected ? s_register(w) : AB_OK;
}

unsigned ab_worker_capacity(const ab_worker_t *w)
{
    return w ? w->capacity : 0;
}

int ab_worker_set_inference_state(ab_worker_t *w, const void *state, size_t size)
{
    if (!w || (size && !state) || size > (1u << 20))
        return AB_EINVAL;
    uint8_t *copy = NULL;
    if (size && !(copy = malloc(size)))
        return ab_conn_fail(&w->conn, AB_ENOMEM, "out of memory");
    if (size)
        memcpy(copy, state, size);
    free(w->state);
    w->state = copy;
    w->state_len = size;
    return w->conn.connected ? s_register(w) : AB_OK;
}

int ab_worker_fd(ab_worker_t *w, int *fd)
{
    if (!w || !fd)
        return AB_EINVAL;
    size_t len = sizeof *fd;
    if (zmq_getsockopt(w->conn.sock, ZMQ_FD, fd, &len) != 0)
        return ab_conn_fail(&w->conn, AB_EZMQ, "ZMQ_FD: %s", zmq_strerror(zmq_errno()));
    return AB_OK;
}

int ab_worker_has_input(ab_worker_t *w)
{
    if (!w)
        return 0;
    /* Jobs, or entries of a received BATCH. */
    if (!ab_list_empty(&w->ready) || ab_conn_batch_left(&w->conn))
        return 1;
    int ev = 0;
    size_t len = sizeof ev;
    if (zmq_getsockopt(w->conn.sock, ZMQ_EVENTS, &ev, &len) != 0)
        return 1; /* let the caller poll and see the error */
    return (ev & ZMQ_POLLIN) != 0;
}

int ab_worker_flush(ab_worker_t *w)
{
    return w ? ab_conn_flush(&w->conn) : AB_EINVAL;
}

int ab_worker_keepalive(ab_worker_t *w)
{
    if (!w)
        return AB_EINVAL;
    /* Sent at once with what the turn gathered: the handler may go on for
     * long before the loop ends the turn. */
    return s_heartbeat(w, ab_conn_coarse_ms()) ? ab_conn_flush(&w->conn) : AB_OK;
}
