/*
 * conn.c - one connection to the broker: a DEALER socket plus a socket
 * monitor that reports connects and disconnects.
 *
 * ZeroMQ reconnects by itself; the monitor lets the library notice it, so
 * that a worker registers again with a restarted broker and a client fails
 * the requests the old broker took with it. ZMTP heartbeats (in libzmq's I/O
 * thread) detect a broker that vanished without closing TCP.
 *
 * All handles in a process share one ZeroMQ context, created with the first
 * and terminated with the last.
 */
#include "internal.h"
#include "agentbus.pb-c.h"
#include "compress.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/random.h>
#include <unistd.h>

static pthread_mutex_t s_ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static void *s_ctx;
static int s_ctx_refs;
static unsigned long s_monitor_seq;

static pid_t s_ctx_pid; /* the process that made s_ctx */

/* The process's context, made by its first handle. A child of fork()
 * inherits the parent's without its I/O threads: a handle made on it never
 * connected (every call timed out), and terminating it would wait forever
 * for those threads. So a child leaves the inherited one alone (handles it
 * inherited keep pointing at it) and makes its own. */
static void *s_ctx_acquire(unsigned long *seq)
{
    pthread_mutex_lock(&s_ctx_lock);
    if (s_ctx && s_ctx_pid != getpid()) {
        s_ctx = NULL;
        s_ctx_refs = 0;
    }
    if (!s_ctx) {
        s_ctx = zmq_ctx_new();
        s_ctx_pid = getpid();
    }
    if (s_ctx) {
        s_ctx_refs++;
        *seq = ++s_monitor_seq;
    }
    void *ctx = s_ctx;
    pthread_mutex_unlock(&s_ctx_lock);
    return ctx;
}

/* Releases CTX, a handle's s_ctx_acquire; one inherited across fork()
 * (not this process's context) is left as it is. */
static void s_ctx_release(void *ctx)
{
    pthread_mutex_lock(&s_ctx_lock);
    if (ctx && ctx == s_ctx && s_ctx_pid == getpid() && --s_ctx_refs == 0) {
        zmq_ctx_term(s_ctx);
        s_ctx = NULL;
    }
    pthread_mutex_unlock(&s_ctx_lock);
}

/* A random id per handle, so the broker can tell a reconnect of the same
 * handle (which keeps its agent name) from another process claiming it. */
static uint64_t s_instance_id(const void *self)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v)
        v = ab_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)self;
    return v ? v : 1;
}

static _Thread_local char s_new_error[AB_ERRTEXT_MAX];

void ab_conn_new_error_set(const char *text)
{
    snprintf(s_new_error, sizeof s_new_error, "%s", text ? text : "");
}

const char *ab_conn_new_error(void)
{
    return s_new_error;
}

/* The stop flag is set from any thread or a signal handler, which cannot
 * write the handle's text; the call that sees it does, so that
 * last_error does not keep the text of the call before (a recv's "no
 * message in time" came with a STOPPED). */
int ab_conn_stopped(ab_conn_t *c)
{
    if (c->auth_refused) /* the text says why (ab_*_refused): kept */
        return AB_ESTOPPED;
    return ab_conn_fail(c, AB_ESTOPPED, "%s", "the handle was stopped (ab_*_stop)");
}

int ab_conn_fail(ab_conn_t *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof c->error, fmt, ap);
    va_end(ap);
    return code;
}

/* CURVE client options from the handle's keys (none: a plain connection). */
static int s_curve(ab_conn_t *c)
{
    const ab_options_t *o = &c->opts;
    if (o->key_error[0])
        return ab_conn_fail(c, AB_EINVAL, "%s", o->key_error);
    int has_key = o->curve_secret[0] != '\0', has_server = o->curve_server[0] != '\0';
    if (!has_key && !has_server)
        return AB_OK;
    if (!has_key || !has_server)
        return ab_conn_fail(c, AB_EINVAL, "%s", has_key
                            ? "a key (AB_KEY, --key) needs the broker's public key too "
                              "(AB_BROKER_KEY, --broker-key)"
                            : "the broker's key (AB_BROKER_KEY, --broker-key) needs a key of "
                              "this peer too (AB_KEY, --key; brokerctl keygen makes one)");
    if (zmq_setsockopt(c->sock, ZMQ_CURVE_SERVERKEY, o->curve_server, 41) != 0 ||
        zmq_setsockopt(c->sock, ZMQ_CURVE_PUBLICKEY, o->curve_public, 41) != 0 ||
        zmq_setsockopt(c->sock, ZMQ_CURVE_SECRETKEY, o->curve_secret, 41) != 0)
        return ab_conn_fail(c, AB_EINVAL, "CURVE keys: %s", zmq_strerror(errno));
    return AB_OK;
}

/* The largest message libzmq lets in (ZMQ_MAXMSGSIZE): a payload of the
 * max payload with its header, or a BATCH of that size. */
static size_t s_rx_max(const ab_conn_t *c)
{
    size_t extra = c->opts.max_header + 4096;
    return c->opts.max_payload > SIZE_MAX / 2 - extra ? SIZE_MAX / 2
                                                      : c->opts.max_payload + extra;
}

int ab_conn_open(ab_conn_t *c, const ab_options_t *opts, const char *role)
{
    memset(c, 0, sizeof *c);
    if (opts)
        c->opts = *opts;
    else
        ab_options_defaults(&c->opts);
    c->role = role;
    c->limits.max_header = c->opts.max_header;
    c->limits.max_payload = c->opts.max_payload;
    /* A received message is bounded by ZMQ_MAXMSGSIZE (below) as a whole;
     * a BATCH of small answers may pass the max payload: its entries are
     * held to it (s_fits), not the batch. */
    c->rx_limits = c->limits;
    c->rx_limits.max_payload = s_rx_max(c);
    c->next_id = 1;
    c->instance = s_instance_id(c);
    c->hb_rand = c->instance;
    ab_batch_init(&c->out);
    zmq_msg_init(&c->in_batch);
    c->sendq = calloc(1, sizeof *c->sendq);
    if (!c->sendq)
        return ab_conn_fail(c, AB_ENOMEM, "out of memory");
    atomic_init(&c->sendq->refs, 1);
    unsigned long seq = 0;
    c->ctx = s_ctx_acquire(&seq);
    if (!c->ctx)
        return ab_conn_fail(c, AB_EZMQ, "zmq_ctx_new: %s", zmq_strerror(errno));
    c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    if (!c->sock)
        return ab_conn_fail(c, AB_EZMQ, "zmq_socket: %s", zmq_strerror(errno));
    /* The ZMTP timeout runs in wall-clock time, so a process that was
     * paused (SIGSTOP, a debugger, swapping) with a PING unanswered drops
     * its connection the moment it resumes, before reading the broker's
     * traffic waiting in the socket. Three heartbeats, never under 3 s: a
     * worker with a short heartbeat keeps its connection (and the broker
     * its late replies) over a short pause. An agent PINGs once a timeout
     * (not once a heartbeat): each PING costs the broker's I/O thread a
     * wake-up and a PONG, and 10,000 agents at 1 s were 10,000 a second,
     * 20 times their application heartbeats (issue 20, docs/bench.md); a
     * silent broker is then found within two timeouts (6 s) instead of
     * four thirds of one (4 s). Workers keep the tighter beat: few. */
    int linger = 0, hwm = 100000, ivl = c->opts.heartbeat_ms, tmo = 3 * c->opts.heartbeat_ms;
    if (tmo < 3000)
        tmo = 3000;
    if (role && !strcmp(role, "agent"))
        ivl = tmo;
    int64_t maxmsg = (int64_t)s_rx_max(c);
    zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(c->sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(c->sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(c->sock, ZMQ_HEARTBEAT_IVL, &ivl, sizeof ivl);
    zmq_setsockopt(c->sock, ZMQ_HEARTBEAT_TIMEOUT, &tmo, sizeof tmo);
    zmq_setsockopt(c->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    /* No ZMQ_ROUTING_ID: the broker's ROUTER assigns one per connection,
     * so no peer can pose as another by choosing its id, and a reconnect
     * never collides with the old connection the broker has not yet seen
     * close. A worker registers again on every connect; an agent reclaims
     * its name through Hello.instance. */
    if (s_curve(c) != AB_OK)
        return AB_EINVAL;
    char mon_ep[64];
    snprintf(mon_ep, sizeof mon_ep, "inproc://ab-monitor-%lu", seq);
    if (zmq_socket_monitor(c->sock, mon_ep, ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED |
                                                ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                                                ZMQ_EVENT_HANDSHAKE_SUCCEEDED |
                                                ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                                ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                                                ZMQ_EVENT_CONNECT_RETRIED) != 0)
        return ab_conn_fail(c, AB_EZMQ, "zmq_socket_monitor: %s", zmq_strerror(errno));
    c->mon = zmq_socket(c->ctx, ZMQ_PAIR);
    if (!c->mon || zmq_setsockopt(c->mon, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_connect(c->mon, mon_ep) != 0)
        return ab_conn_fail(c, AB_EZMQ, "monitor socket: %s", zmq_strerror(errno));
    if (zmq_connect(c->sock, c->opts.endpoint) != 0)
        return ab_conn_fail(c, AB_EZMQ, "cannot connect to '%s': %s", c->opts.endpoint,
                            zmq_strerror(errno));
    return AB_OK;
}

/* --- The queue to the broker ------------------------------------------------
 * libzmq bounds what waits for the broker in messages only (the high-water
 * mark, 100,000): an application that goes on sending large requests while
 * its broker is unreachable or not reading would queue 100,000 of them. So
 * each payload that goes as a frame of its own (over AB_INLINE_MAX, or
 * before the broker said it reads inline payloads) and each BATCH body is
 * counted until libzmq frees it, once written to the connection (its free
 * function runs in libzmq's I/O thread); a message with a payload that
 * would take the count past S_SENDQ_BYTES fails with AB_EBUSY (messages
 * without one, such as CANCEL and heartbeats, always go). A message goes
 * when nothing is counted, whatever its size (a max payload over the bound
 * still works). Small inline messages stay bounded by the count alone
 * (about 1 KiB each). */
#define S_SENDQ_BYTES ((size_t)256 << 20)

/* What a counted frame's free function needs: its queue, its size, and the
 * buffer to free (BUF, or the bytes right after this record when NULL). */
typedef struct {
    ab_sendq_t *q;
    size_t size;
    void *buf;
} s_qhint_t;

static void s_sendq_release(ab_sendq_t *q)
{
    if (q && atomic_fetch_sub(&q->refs, 1) == 1)
        free(q);
}

static void s_qfree(void *data, void *hint)
{
    (void)data;
    s_qhint_t *h = hint;
    atomic_fetch_sub(&h->q->bytes, h->size);
    s_sendq_release(h->q);
    free(h->buf);
    free(h);
}

/* Room for SIZE more bytes: AB_OK, or AB_EBUSY with the handle's error. */
static int s_sendq_room(ab_conn_t *c, size_t size)
{
    size_t q = atomic_load_explicit(&c->sendq->bytes, memory_order_relaxed);
    if (q == 0 || q + size <= S_SENDQ_BYTES)
        return AB_OK;
    return ab_conn_fail(c, AB_EBUSY,
                        "the queue to the broker holds %zu MiB (bound %zu MiB): the broker is "
                        "unreachable or not reading",
                        q >> 20, S_SENDQ_BYTES >> 20);
}

/* M becomes a counted frame of SIZE bytes: a copy of DATA, or BUF itself
 * (then BUF is M's, sent or not). 0, or -1 out of memory (BUF freed). */
static int s_qmsg(ab_conn_t *c, zmq_msg_t *m, const void *data, void *buf, size_t size)
{
    s_qhint_t *h = malloc(sizeof *h + (buf ? 0 : size));
    if (!h) {
        free(buf);
        return -1;
    }
    h->q = c->sendq;
    h->size = size;
    h->buf = buf;
    void *bytes = buf ? buf : (void *)(h + 1);
    if (!buf && size)
        memcpy(bytes, data, size);
    if (zmq_msg_init_data(m, bytes, size, s_qfree, h) != 0) {
        free(buf);
        free(h);
        return -1;
    }
    atomic_fetch_add(&h->q->refs, 1);
    atomic_fetch_add(&h->q->bytes, size);
    return 0;
}

void ab_conn_close(ab_conn_t *c)
{
    if (c->sock) {
        zmq_socket_monitor(c->sock, NULL, 0);
        zmq_close(c->sock);
    }
    if (c->mon)
        zmq_close(c->mon);
    if (c->ctx)
        s_ctx_release(c->ctx);
    c->sock = c->mon = c->ctx = NULL;
    s_sendq_release(c->sendq);
    c->sendq = NULL;
    ab_batch_fini(&c->out);
    zmq_msg_close(&c->in_batch);
    zmq_msg_init(&c->in_batch);
    ab_batch_entries_fini(&c->in_dec);
    c->in_next = 0;
    c->in_rd.left = 0;
}

uint64_t ab_conn_next_id(ab_conn_t *c)
{
    return c->next_id++;
}

/* Sends one encoded header and optional payload now. */
static int s_read_events(ab_conn_t *c);

/* A lost connection that libzmq has not said it dials again is dialed
 * here after this long (s_read_events). */
#define S_LOST_REDIAL_MS 1000

/* Connects again when a refused handshake's backoff has passed, or a lost
 * connection libzmq does not dial again (libzmq does neither). Called
 * before sends and with heartbeats: a program that only makes synchronous
 * calls gets there too. */
static void s_retry_refused(ab_conn_t *c, int64_t now)
{
    if (c->retry_at_ms && now >= c->retry_at_ms) {
        c->retry_at_ms = 0;
        zmq_disconnect(c->sock, c->opts.endpoint); /* ENOENT when libzmq dropped it */
        zmq_connect(c->sock, c->opts.endpoint);
    }
}

const char *ab_conn_refusal(const ab_conn_t *c)
{
    return c->opts.curve_secret[0]
               ? "the broker refused the connection's handshake: its key is not trusted there "
                 "(or --broker-key is not that broker's key)"
               : "the broker refused the connection's handshake: it requires CURVE (set AB_KEY "
                 "and AB_BROKER_KEY, or --key and --broker-key)";
}

/* Sends the first frame: HDR (HLEN bytes) or, when ONE is given, that
 * message (moved on success). Returns as zmq_send. */
static int s_send_first(ab_conn_t *c, const uint8_t *hdr, size_t hlen, zmq_msg_t *one, int flags)
{
    flags |= ZMQ_DONTWAIT;
    int rc = one ? zmq_msg_send(one, c->sock, flags) : zmq_send(c->sock, hdr, hlen, flags);
    if (rc < 0 && errno == EAGAIN && !c->connected) {
        /* No pipe: libzmq may have given up on a refused handshake whose
         * event nobody read yet (a program making only sync calls). */
        c->events_seen |= s_read_events(c);
        if (c->retry_at_ms) {
            s_retry_refused(c, ab_now_ms());
            rc = one ? zmq_msg_send(one, c->sock, flags) : zmq_send(c->sock, hdr, hlen, flags);
        }
        errno = rc < 0 ? EAGAIN : errno;
    }
    return rc;
}

/* The header and a small payload go as one frame (codec.h "Inline") once
 * the broker's answer on this connection said it reads that; until then,
 * two frames. */
static int s_inline_ok(const ab_conn_t *c, size_t size)
{
    return size <= AB_INLINE_MAX && (c->broker_features & AB_FEATURE_INLINE);
}

/* Sends that one frame. Returns as zmq_send, or -2 when out of memory. */
static int s_send_inline(ab_conn_t *c, const uint8_t *hdr, size_t hlen, const void *data,
                         size_t size)
{
    zmq_msg_t one;
    if (zmq_msg_init_size(&one, ab_msg_inline_size(hlen, size)) != 0)
        return -2;
    ab_msg_inline_put(zmq_msg_data(&one), hdr, hlen, data, size);
    int rc = s_send_first(c, NULL, 0, &one, 0);
    zmq_msg_close(&one);
    return rc;
}

/* BODY, when not NULL, is the payload as a message (moved on success;
 * the caller closes it either way) instead of DATA, SIZE. */
static int s_send_frames(ab_conn_t *c, const uint8_t *hdr, size_t hlen, const void *data,
                         size_t size, int has_data, zmq_msg_t *body)
{
    if (c->retry_at_ms)
        s_retry_refused(c, ab_now_ms());
    int rc;
    if (has_data && s_inline_ok(c, size)) {
        rc = s_send_inline(c, hdr, hlen, body ? zmq_msg_data(body) : data, size);
        if (rc == -2)
            return ab_conn_fail(c, AB_ENOMEM, "out of memory sending a message");
    } else {
        zmq_msg_t own;
        zmq_msg_init(&own);
        if (has_data && !body && s_qmsg(c, &own, data, NULL, size) != 0)
            return ab_conn_fail(c, AB_ENOMEM, "out of memory sending a message");
        rc = s_send_first(c, hdr, hlen, NULL, has_data ? ZMQ_SNDMORE : 0);
        if (rc >= 0 && has_data)
            rc = zmq_msg_send(body ? body : &own, c->sock, 0);
        zmq_msg_close(&own); /* sent: empty; not sent: uncounted and freed */
    }
    if (rc < 0 && errno == EAGAIN && c->auth_refused && !c->handshaken) /* not a full queue */
        return ab_conn_fail(c, AB_EDENIED, "%s", ab_conn_refusal(c));
    if (rc < 0)
        return ab_conn_fail(c, errno == EAGAIN ? AB_EBUSY : AB_EZMQ, "send failed: %s",
                            errno == EAGAIN ? "outgoing queue to the broker is full"
                                            : zmq_strerror(errno));
    return AB_OK;
}

static int s_send_now(ab_conn_t *c, const uint8_t *hdr, size_t hlen, const void *data,
                      size_t size, int has_data)
{
    return s_send_frames(c, hdr, hlen, data, size, has_data, NULL);
}

/* Sends the gathered batch as one BATCH whose body buffer goes to ZeroMQ
 * as it is (freed by its I/O thread once written): no copy of up to
 * batch-max-bytes per batch. */
static int s_send_batch(ab_conn_t *c)
{
    ab_header_t h = ab_header_init(AB_KIND_BATCH);
    uint8_t hb[64];
    size_t hl = ab_header_encode(&h, hb, sizeof hb), len;
    uint8_t *body = ab_batch_detach(&c->out, &len);
    zmq_msg_t m;
    if (!body || s_qmsg(c, &m, NULL, body, len) != 0)
        return ab_conn_fail(c, AB_ENOMEM, "out of memory sending a batch"); /* body freed */
    int rc = s_send_frames(c, hb, hl, NULL, len, 1, &m);
    zmq_msg_close(&m); /* sent: empty; not sent: frees the body */
    return rc;
}

/* Sends what was gathered: a BATCH, or the one message alone. */
static int s_send_gathered(ab_conn_t *c)
{
    if (c->out.count == 0)
        return AB_OK;
    int rc;
    if (c->out.count == 1) {
        ab_frame_t f[2];
        size_t nf = 0;
        rc = ab_batch_single(&c->out, f, &nf) == AB_OK
                 ? s_send_now(c, f[0].data, f[0].size, f[1].data, f[1].size, nf == 2)
                 : ab_conn_fail(c, AB_EINTERNAL, "gathered message does not decode");
    } else {
        rc = s_send_batch(c);
    }
    ab_batch_clear(&c->out);
    return rc;
}

int ab_conn_flush(ab_conn_t *c)
{
    c->turn_used = 0;
    /* The end of a turn: the count limit follows what this one gathered. A
     * turn that gathered nothing says nothing about the backlog: most
     * flushes are of those (a poll, a job, an idle socket), and halving on
     * each kept the limit at 64-128 under a window of 1,000 (batches to the
     * broker averaged 54 entries, the broker's 290). */
    if (c->out_turn)
        c->out_limit = ab_batch_next_limit(c->out_limit, c->out_turn, c->opts.batch_max_count);
    c->out_turn = 0;
    return s_send_gathered(c);
}

int ab_conn_turn_end_idle(ab_conn_t *c, int app_queued)
{
    if (app_queued || !c->in_idle || ab_conn_batch_left(c))
        return AB_OK;
    return ab_conn_flush(c);
}

/* The adaptive rule: the first message of a turn goes at once (nothing is
 * waiting behind it); later ones are gathered until the turn ends or a
 * limit is reached. Everything passes through here, in order. */
static int s_send_encoded(ab_conn_t *c, const uint8_t *hdr, size_t hlen, const void *data,
                          size_t size, int has_data)
{
    /* Checked here, before a message joins a batch: a gathered batch is
     * never refused (its messages were accepted already). */
    if (has_data) {
        int rc = s_sendq_room(c, size);
        if (rc != AB_OK)
            return rc;
    }
    if (!c->opts.batch || !(c->broker_features & AB_FEATURE_BATCH))
        return s_send_now(c, hdr, hlen, data, size, has_data);
    size_t esz = ab_batch_entry_size(hlen, has_data ? size : 0);
    if (!c->turn_used || esz + 8 > c->opts.batch_max_bytes) {
        c->turn_used = 1;
        int rc = s_send_gathered(c);
        return rc != AB_OK ? rc : s_send_now(c, hdr, hlen, data, size, has_data);
    }
    if (c->out.count && c->out.len + esz > c->opts.batch_max_bytes) {
        int rc = s_send_gathered(c);
        if (rc != AB_OK)
            return rc;
    }
    if (ab_batch_add(&c->out, hdr, hlen, data, size, has_data) != AB_OK)
        return ab_conn_fail(c, AB_ENOMEM, "out of memory gathering a batch");
    uint64_t now = c->clock_us ? c->clock_us : ab_now_us();
    if (c->out.count == 1)
        c->out_first_us = now;
    if (!c->out_limit)
        c->out_limit = ab_batch_next_limit(0, 0, c->opts.batch_max_count);
    c->out_turn++;
    if (c->out.count >= c->out_limit ||
        now - c->out_first_us >= c->opts.batch_max_age_us)
        return s_send_gathered(c);
    return AB_OK;
}

int64_t ab_conn_coarse_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* An agent handle silent for a heartbeat interval may have been dropped by
 * the broker (a program making only synchronous calls sends no heartbeats
 * while it does something else). It says HELLO again before KIND, so that
 * the record the broker makes anew knows its features (lz4, batching: the
 * cache keys a request by what its client reads) and its name; a broker
 * that still knows it takes the HELLO as a no-op. */
static void s_hello_if_silent(ab_conn_t *c, uint32_t kind)
{
    int64_t now = ab_conn_coarse_ms();
    int64_t last = c->last_tx_ms;
    c->last_tx_ms = now;
    if (!last || !c->hello_answers || now - last < c->opts.heartbeat_ms ||
        strcmp(c->role, "agent") != 0)
        return;
    if (kind == AB_KIND_HELLO || kind == AB_KIND_HEARTBEAT || kind == AB_KIND_BYE ||
        kind == AB_KIND_CANCEL)
        return;
    ab_conn_hello(c);
}

int ab_conn_send_z(ab_conn_t *c, const ab_header_t *h, const void *data, size_t size, int zmode)
{
    s_hello_if_silent(c, h->kind);
    ab_header_t hh = *h;
    void *z = NULL;
    size_t zl = 0;
    int may = zmode == AB_Z_ASKED ||
              (zmode == AB_Z_IF_ANNOUNCED && (c->broker_features & AB_FEATURE_LZ4));
    if (may && data && c->opts.compress_threshold && size >= c->opts.compress_threshold) {
        int zr = ab_lz4_compress(data, size, c->opts.compress_min_saving_pct, &z, &zl);
        if (zr == 1) {
            hh.flags |= AB_FLAG_LZ4;
            hh.original_size = size;
            data = z;
            size = zl;
        } else {
            hh.flags |= AB_FLAG_LZ4_SKIPPED; /* also on ENOMEM: sent as is */
        }
    }
    uint8_t stack[512];
    size_t len;
    uint8_t *buf = ab_header_encode_buf(&hh, stack, sizeof stack, &len);
    int rc = buf ? s_send_encoded(c, buf, len, data, size, data != NULL)
                 : ab_conn_fail(c, AB_ENOMEM, "out of memory encoding a header");
    if (buf && buf != stack)
        free(buf);
    free(z);
    return rc;
}

int ab_conn_send(ab_conn_t *c, const ab_header_t *h, const void *data, size_t size)
{
    return ab_conn_send_z(c, h, data, size, AB_Z_NEVER);
}

int ab_conn_hello(ab_conn_t *c)
{
    Agentbus__Hello m;
    agentbus__hello__init(&m);
    m.name = c->opts.name;
    m.role = (char *)c->role;
    m.heartbeat_ms = (uint32_t)c->opts.heartbeat_ms;
    m.takeover = c->opts.takeover;
    m.instance = c->instance;
    /* The broker sends nothing larger (SEND, PUBLISH, answers), and no
     * BATCH past it + 4096: nothing it sends cuts this connection at
     * ZMQ_MAXMSGSIZE (s_rx_max), nor is dropped unseen (s_fits). */
    m.max_payload = (uint64_t)c->opts.max_payload;
    m.features = (c->opts.batch ? AB_FEATURE_BATCH : 0) | AB_FEATURE_LZ4 | AB_FEATURE_INLINE;
    uint8_t buf[512];
    size_t len = agentbus__hello__get_packed_size(&m);
    if (len > sizeof buf)
        return ab_conn_fail(c, AB_EINVAL, "name too long for HELLO");
    agentbus__hello__pack(&m, buf);
    ab_header_t h = ab_header_init(AB_KIND_HELLO);
    h.id = ab_conn_next_id(c);
    c->hello_id = h.id;
    return ab_conn_send(c, &h, buf, len);
}

int ab_conn_send_kind(ab_conn_t *c, uint32_t kind)
{
    ab_header_t h = ab_header_init(kind);
    h.id = ab_conn_next_id(c);
    return ab_conn_send(c, &h, NULL, 0);
}

int ab_conn_wait(ab_conn_t *c, int timeout_ms)
{
    zmq_pollitem_t items[2] = {{c->sock, 0, ZMQ_POLLIN, 0}, {c->mon, 0, ZMQ_POLLIN, 0}};
    if (atomic_load(&c->stop))
        return ab_conn_stopped(c);
    ab_conn_flush(c); /* never sleep on gathered messages */
    int rc = zmq_poll(items, 2, timeout_ms);
    if (atomic_load(&c->stop))
        return ab_conn_stopped(c);
    if (rc < 0)
        return errno == EINTR ? 0 : ab_conn_fail(c, AB_EZMQ, "poll: %s", zmq_strerror(errno));
    return rc > 0;
}

/* Reads the monitor's events into C's state; returns the AB_CONN_* seen. */
static int s_read_events(ab_conn_t *c)
{
    int seen = 0;
    uint16_t event;
    uint32_t value;
    while (ab_monitor_event(c->mon, &event, &value, NULL, 0)) {
        /* With CURVE the connection is usable once the broker accepted
         * the key, not when TCP connects. */
        int curve = c->opts.curve_secret[0] != '\0';
        if (event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            /* A refusal ends here, not at a TCP connect: a broker that
             * requires CURVE accepts a keyless connection's TCP and then
             * hangs up on its greeting, so between two refused attempts
             * the refusal would read as none (ab_worker_refused). */
            c->hangups = 0;
            c->handshaken = 1;
            c->auth_refused = 0;
        }
        if (event == (curve ? ZMQ_EVENT_HANDSHAKE_SUCCEEDED : ZMQ_EVENT_CONNECTED)) {
            c->connected = 1;
            c->retry_ms = 0;
            c->retry_at_ms = 0;
            c->retry_lost = 0;
            seen |= AB_CONN_CONNECTED;
        } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH ||
                   event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL ||
                   event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) {
            /* A broker that refuses says so (AUTH, or PROTOCOL for a
             * mechanism mismatch or bad key), or just hangs up: a keyless
             * client meeting a CURVE broker mostly sees the hang-up. But a
             * broker stopping or restarting hangs up on a greeting once,
             * too; only a second hang-up with no handshake between is a
             * refusal. The retry below is scheduled either way. */
            int refused = event != ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL || ++c->hangups >= 2;
            /* Said once per run of refusals; libzmq keeps retrying. */
            if (refused && !c->auth_refused)
                ab_conn_fail(c, AB_EDENIED, "%s", ab_conn_refusal(c));
            if (refused) {
                c->auth_refused = 1;
                seen |= AB_CONN_REFUSED;
            }
            /* libzmq ends the session on a refused handshake and does not
             * reconnect; the key may be trusted again later (a reload). */
            c->retry_ms = c->retry_ms ? (c->retry_ms < 5000 ? c->retry_ms * 2 : 10000) : 500;
            c->retry_at_ms = ab_now_ms() + c->retry_ms;
            c->retry_lost = 0;
        } else if (event == ZMQ_EVENT_CONNECT_RETRIED && c->retry_lost) {
            c->retry_at_ms = 0; /* libzmq dials again itself */
            c->retry_lost = 0;
        } else if (event == ZMQ_EVENT_DISCONNECTED && !c->handshaken) {
            /* An attempt that failed its handshake: nothing went over it,
             * no connection was lost (the event above said what failed). */
            c->connected = 0;
        } else if (event == ZMQ_EVENT_DISCONNECTED) {
            c->connected = 0;
            c->handshaken = 0;
            /* libzmq dials again after a lost connection (CONNECT_RETRIED
             * follows at once), but not after a protocol error, such as a
             * message over ZMQ_MAXMSGSIZE (the max payload): then the
             * handle would stay cut off. Dial again here unless libzmq
             * says it does. */
            if (!c->retry_at_ms) {
                c->retry_at_ms = ab_now_ms() + S_LOST_REDIAL_MS;
                c->retry_lost = 1;
            }
            /* What was gathered belonged to the old connection (its calls
             * fail now); the next broker says again what it reads. */
            ab_batch_clear(&c->out);
            c->broker_features = 0;
            seen |= AB_CONN_DISCONNECTED;
        }
    }
    return seen;
}

int ab_conn_events(ab_conn_t *c)
{
    /* With what a send already read (s_send_now): the caller acts on them. */
    int seen = c->events_seen | s_read_events(c);
    c->events_seen = 0;
    return seen;
}

void ab_conn_set_interval(ab_conn_t *c, uint32_t ms)
{
    /* The broker's wish, within sane bounds; a change is acknowledged with
     * a heartbeat at once so the broker can start expecting the new pace. */
    if (ms < 100 || ms > 600000 || (int)ms == c->opts.heartbeat_ms)
        return;
    c->opts.heartbeat_ms = (int)ms;
    c->next_heartbeat_ms = 0;
}

/* The wait until the next heartbeat: never more than the interval the
 * broker expects, but not the same for every handle. Handles started
 * together (a process opening hundreds, a fleet restarted at once) would
 * otherwise heartbeat together for as long as they live, and the broker
 * would take each wave as one burst that requests queue behind. The first
 * wait is a random half to whole interval (a phase of its own), each later
 * one 90-100% of it (so phases keep drifting apart): at most ~11% more
 * heartbeats than a fixed interval. Agents only: a worker's heartbeats
 * are timed by the broker's failure detector (phi accrual, docs/health.md),
 * which a regular beat lets detect sooner; workers are few. */
static int64_t s_heartbeat_wait(ab_conn_t *c)
{
    int64_t ivl = c->opts.heartbeat_ms;
    if (!c->role || strcmp(c->role, "agent") != 0)
        return ivl;
    uint64_t x = c->hb_rand;
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    c->hb_rand = x;
    uint64_t span = (uint64_t)(c->hb_phased ? ivl / 10 : ivl / 2) + 1;
    c->hb_phased = 1;
    return ivl - (int64_t)(x % span);
}

/* When the beat after this one is due. An agent keeps its phase: the next
 * is timed from when this one was due, not from now, so a loop that stalled
 * (a busy machine, a long handler) and then sent every handle's overdue beat
 * in one sweep does not leave them beating together from then on. Skipped
 * beats are skipped whole, so no gap exceeds the interval. A worker's beat
 * is timed from now: the broker's failure detector expects it regular. */
static int64_t s_heartbeat_next(ab_conn_t *c, int64_t now)
{
    int64_t due = c->next_heartbeat_ms, ivl = c->opts.heartbeat_ms, wait = s_heartbeat_wait(c);
    if (due <= 0 || ivl <= 0 || !c->role || strcmp(c->role, "agent") != 0)
        return now + wait;
    int64_t next = due + wait;
    if (next <= now)
        next += ((now - next) / ivl + 1) * ivl;
    return next;
}

int ab_conn_heartbeat(ab_conn_t *c, int64_t now, uint32_t credit)
{
    return ab_conn_heartbeat_with(c, now, credit, NULL, 0);
}

int ab_conn_heartbeat_with(ab_conn_t *c, int64_t now, uint32_t credit, const void *data,
                           size_t size)
{
    s_retry_refused(c, now);
    if (now >= c->next_heartbeat_ms) {
        if (c->connected) {
            ab_header_t h = ab_header_init(AB_KIND_HEARTBEAT);
            h.credit = credit;
            ab_conn_send(c, &h, data, size); /* best effort: a full queue skips one */
        }
        c->next_heartbeat_ms = s_heartbeat_next(c, now);
    }
    int64_t left = c->next_heartbeat_ms - now;
    if (c->retry_at_ms && c->retry_at_ms - now < left)
        left = c->retry_at_ms - now;
    return left > 0 ? (int)left : 0;
}
