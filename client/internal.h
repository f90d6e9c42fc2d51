/*
 * internal.h - what the client and worker halves of libagentbus share:
 * options and the connection (a DEALER socket, its monitor, heartbeats).
 */
#ifndef AB_CLIENT_INTERNAL_H
#define AB_CLIENT_INTERNAL_H

#include "agentbus.h"
#include "batch.h"
#include "codec.h"
#include "idmap.h"
#include "list.h"

#include <stdatomic.h>
#include <stdint.h>
#include <zmq.h>

#define AB_ENDPOINT_MAX 512
#define AB_ERRTEXT_MAX 512

struct ab_options {
    char endpoint[AB_ENDPOINT_MAX];
    char name[256];
    int heartbeat_ms;
    int timeout_ms;
    size_t max_payload;
    size_t max_header;
    int takeover; /* claim the name from a live holder (Hello.takeover) */
    /* Batching and compression (issue 4); defaults from AB_* env vars. */
    int batch;
    unsigned batch_max_count;
    size_t batch_max_bytes;
    unsigned batch_max_age_us;
    size_t compress_threshold;
    unsigned compress_min_saving_pct;
    /* CURVE (issue 14): this peer's keypair and the broker's public key,
     * Z85 text; empty when unset. key_error: why AB_KEY / AB_BROKER_KEY
     * could not be used (ab_client_new / ab_worker_new then fail). */
    char curve_public[41], curve_secret[41], curve_server[41];
    char key_error[300];
};

void ab_options_defaults(ab_options_t *o);

/* Events ab_conn_events reports. */
/* AB_CONN_REFUSED: the broker refused the handshake (no connection was
 * made, so no DISCONNECTED follows). */
enum { AB_CONN_CONNECTED = 1, AB_CONN_DISCONNECTED = 2, AB_CONN_REFUSED = 4 };

/* Bytes of payload frames handed to libzmq for the broker and not yet
 * written to the connection (conn.c, "The queue to the broker"). Messages
 * still queued when their handle goes (a worker's linger) keep it alive. */
typedef struct {
    atomic_size_t bytes;
    atomic_int refs;
} ab_sendq_t;

typedef struct {
    ab_options_t opts;
    ab_limits_t limits;
    ab_limits_t rx_limits; /* what a received message may hold: a BATCH's body can
                            * pass the max payload (up to ZMQ_MAXMSGSIZE), its
                            * entries are checked one by one (conn.c, s_fits) */
    ab_sendq_t *sendq;
    void *ctx;
    void *sock;
    void *mon;
    int connected;
    int64_t next_heartbeat_ms;
    uint64_t hb_rand;      /* xorshift state of the heartbeat jitter (conn.c) */
    int hb_phased;         /* the first interval (a random phase) was drawn */
    uint64_t next_id;
    const char *role; /* "agent" or "worker": sent in HELLO */
    uint32_t broker_features; /* AB_FEATURE_* from the broker's HELLO/REGISTER answer */
    ab_batch_t out;           /* messages gathered in this turn (see conn.c) */
    int turn_used;            /* a message went out directly in this turn */
    int in_idle;              /* the last ab_conn_recv found nothing waiting */
    int64_t last_tx_ms;       /* when this handle last sent anything (coarse clock) */
    unsigned hello_answers;   /* HELLO answers received */
    uint64_t hello_id;        /* the id of the last HELLO sent (its refusal ends every call) */
    int refused_busy;         /* the broker refused the connection (max-connections) ... */
    char busy_text[128];      /* ... saying this; until a HELLO of ours is answered */
    int restore_pending;      /* the broker forgot us: restore at its HELLO answer */
    uint64_t out_first_us;    /* when the oldest gathered message was added */
    uint64_t clock_us;        /* the caller's clock read for the send under way (0: none):
                               * a request's deadline and its batch age share one read */
    uint32_t out_limit;       /* count limit now, adaptive (ab_batch_next_limit); 0: unset */
    uint32_t out_turn;        /* messages gathered since the last ab_conn_flush */
    zmq_msg_t in_batch;       /* a received BATCH being handed out entry by entry */
    ab_batch_entries_t in_dec; /* its entries, each header decoded once (ab_batch_decode) */
    uint32_t in_next;          /* the next of in_dec's entries to hand out */
    ab_batch_reader_t in_rd;   /* its entries when in_dec could not grow (out of memory) */
    atomic_int stop; /* ab_*_stop: any thread or a signal handler */
    char error[AB_ERRTEXT_MAX];
    uint64_t instance; /* random per handle: Hello.instance */
    int auth_refused;  /* the broker refused the CURVE handshake (last error says how) */
    int64_t retry_at_ms; /* libzmq gives up after a refused handshake: connect again then */
    int retry_ms;        /* backoff of those retries: 500 ms doubling to 10 s */
    int retry_lost;      /* retry_at_ms is for a lost connection libzmq may not redial */
    int hangups;         /* handshakes the broker hung up on since the last that succeeded */
    int handshaken;      /* this connection finished its ZMTP handshake */
    int events_seen;     /* AB_CONN_* read by a send, for the next ab_conn_events */
} ab_conn_t;

/* One received message. The header's views and DATA point into hdr/body,
 * or, for an entry of a received BATCH, into that batch (no copy); either
 * way they are valid until ab_in_close. */
typedef struct {
    zmq_msg_t hdr;
    zmq_msg_t body; /* holds the payload when body_owned */
    int has_body;
    ab_header_t h;
    const void *data; /* the payload (has_body), else NULL */
    size_t size;
    int body_owned;
    int in_hdr; /* DATA is an inline payload inside hdr (codec.h "Inline") */
    int status; /* an answer the library could not use, made an ERROR for
                 * its call: AB_EPAYLOADSIZE over the max payload (conn.c,
                 * s_fits), AB_EMALFORMED or AB_EINTERNAL for an lz4 one
                 * (s_inflate); else AB_OK. The broker still thinks the
                 * call runs: the client tells it (CANCEL) */
} ab_in_t;

/* Moves IN's payload into OUT (initialised by the caller) without copying
 * it where it can: its own frame, or the header frame an inline payload
 * sits in (then the payload starts *AT bytes into OUT); an entry of a
 * batch is copied (*AT = 0). Call it last: IN's header views may point
 * into the moved frame. AB_OK or AB_ENOMEM. */
int ab_in_take_body(ab_in_t *in, zmq_msg_t *out, size_t *at);
/* 1 when IN's payload is bytes of a received BATCH (ab_in_take_body would
 * copy them): valid until the next ab_conn_recv. */
static inline int ab_in_batched(const ab_in_t *in)
{
    return in->has_body && !in->body_owned && !in->in_hdr;
}

/* Entries of a received BATCH not handed out yet (ab_conn_recv gives them
 * before reading the socket again). */
static inline uint32_t ab_conn_batch_left(const ab_conn_t *c)
{
    return c->in_dec.n - c->in_next + c->in_rd.left;
}

int ab_conn_open(ab_conn_t *c, const ab_options_t *opts, const char *role);
/* The detailed text of the last failed ab_client_new / ab_worker_new in
 * this thread (its handle is gone): set by them, read through
 * ab_client_last_error(NULL) and ab_worker_last_error(NULL). */
void ab_conn_new_error_set(const char *text);
const char *ab_conn_new_error(void);
void ab_conn_close(ab_conn_t *c);
/* Why the broker refused C's handshake (a last error's text). */
const char *ab_conn_refusal(const ab_conn_t *c);
/* Formats the handle's last error text and returns CODE. */
int ab_conn_fail(ab_conn_t *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* AB_ESTOPPED, with the handle's text saying so (the stop flag's setter
 * cannot write it: any thread, a signal handler), unless the handshake
 * was refused: the text then says why, as ab_*_refused promise. Handle's
 * thread. */
int ab_conn_stopped(ab_conn_t *c);
/* Sends header H and DATA (copied; NULL/0 for none). */
int ab_conn_send(ab_conn_t *c, const ab_header_t *h, const void *data, size_t size);
/* How ab_conn_send_z may compress. The broker decides which hops are
 * worth lz4 (only those that leave the machine, by default): it announces
 * LZ4 to a peer whose hop is, and marks a request ACCEPT_LZ4 when its
 * reply should be compressed. */
enum {
    AB_Z_NEVER = 0,
    AB_Z_IF_ANNOUNCED = 1, /* a request: when the broker announced LZ4 to this handle */
    AB_Z_ASKED = 2,        /* a reply to an ACCEPT_LZ4 request: the broker asked */
};
/* As ab_conn_send; Z (AB_Z_*): lz4 the payload when it and the options
 * allow it (the final receiver reads lz4). The message may be gathered
 * into a BATCH (see conn.c) and leave at the next ab_conn_flush. */
int ab_conn_send_z(ab_conn_t *c, const ab_header_t *h, const void *data, size_t size, int z);
/* Ends the turn: sends what was gathered. AB_OK or a send error. */
int ab_conn_flush(ab_conn_t *c);
/* Called where the library hands control back to the application (a job,
 * a message, a callback, a return from a poll). With nothing more waiting
 * (APP_QUEUED 0: the handle's own queue of jobs or messages is empty, and
 * the last receive found the socket empty) the turn ends here: what was
 * gathered leaves, and the application's next message goes out at once
 * instead of waiting in a batch for a poll that may be far off. Under load
 * (more waiting) the turn goes on, so the answers the application sends
 * while working through the backlog are still gathered; its next call to
 * take input ends that turn. AB_OK or a send error. */
int ab_conn_turn_end_idle(ab_conn_t *c, int app_queued);
/* Sends HELLO with this peer's name, role and heartbeat interval. */
int ab_conn_hello(ab_conn_t *c);
/* Sends a header-only message of KIND. */
int ab_conn_send_kind(ab_conn_t *c, uint32_t kind);
/* Receives one message without waiting: 1 got one (caller calls
 * ab_in_close), 0 none waiting, < 0 error. Malformed input is skipped.
 * An lz4 payload is inflated here (up to the max payload, 64 MiB). */
int ab_conn_recv(ab_conn_t *c, ab_in_t *in);
/* What one turn of a handle reads before it lets its heartbeat go (and,
 * for a worker, its jobs run): AB_CONN_TURN_MSGS messages or
 * AB_CONN_TURN_BYTES of payloads as inflated, at least one message. A turn
 * that read a whole credit of lz4 bombs (64 MiB each) held them all at once
 * and was silent for seconds: the broker dropped the peer. */
#define AB_CONN_TURN_MSGS 4096
#define AB_CONN_TURN_BYTES ((size_t)8 << 20)
void ab_in_close(ab_in_t *in);
/* Waits up to timeout_ms for socket or monitor input: 1 ready, 0 timeout,
 * AB_ESTOPPED, AB_EZMQ. */
int ab_conn_wait(ab_conn_t *c, int timeout_ms);
/* Reads monitor events; returns a mask of AB_CONN_* seen. */
int ab_conn_events(ab_conn_t *c);
/* Sends a heartbeat when one is due. CREDIT is the worker's capacity (0 for
 * a client). Returns ms until the next one is due. */
int ab_conn_heartbeat(ab_conn_t *c, int64_t now, uint32_t credit);
/* The same with a payload (a worker's WorkerHeartbeat); DATA may be NULL. */
int ab_conn_heartbeat_with(ab_conn_t *c, int64_t now, uint32_t credit, const void *data,
                           size_t size);
/* 1 when a heartbeat is due at NOW. */
#define ab_conn_heartbeat_due(c, now) ((now) >= (c)->next_heartbeat_ms)
/* Adopts the heartbeat interval the broker asked for (HELLO, REGISTER or
 * HEARTBEAT from the broker, in credit). */
void ab_conn_set_interval(ab_conn_t *c, uint32_t ms);
uint64_t ab_conn_next_id(ab_conn_t *c);
/* Milliseconds on CLOCK_MONOTONIC_COARSE: cheap enough to read on every
 * send or job, a few ms behind ab_now_ms (the kernel's tick). For what is
 * due in seconds (heartbeats, a silent handle), not for deadlines. */
int64_t ab_conn_coarse_ms(void);

/* client.c: DISCOVER (WATCH: subscribe too); *reply is a Directory. */
int ab_client_discover_raw(ab_client_t *c, const char *service, int timeout_ms, int watch,
                           void **reply, size_t *reply_size);
/* discover.c: decodes a DirectoryEvent and calls FN with it. */
void ab_dir_event_deliver(ab_client_t *c, ab_dir_event_fn *fn, void *arg, const void *data,
                          size_t size);

/* --- the client handle, shared by client.c and message.c ------------------ */
typedef struct ab_rxmsg ab_rxmsg_t;

/* Direct messages and topics on a client handle (message.c). */
typedef struct {
    ab_message_fn *fn;
    void *arg;
    ab_list_t rxq;           /* ab_rxmsg_t.link: receive queue when no handler is set */
    size_t qlen, qbytes;     /* messages in it, and their records' bytes */
    uint64_t gap;            /* dropped from the full receive queue */
    char **subs;             /* patterns, restored on reconnect */
    size_t nsubs, cap_subs;
} ab_cmsg_t;

struct ab_client {
    ab_conn_t conn;
    ab_idmap_t calls; /* id -> s_call_t (owned) */
    void *call_spare; /* ended s_call_t records kept for reuse (client.c) */
    size_t call_nspare;
    int64_t next_expiry_ms;
    int in_callback;
    ab_cmsg_t msg;
    int early_hello;  /* HELLO already queued before the first connect */
    int destroying;   /* in ab_client_destroy: no new calls */
    ab_dir_event_fn *watch_fn; /* directory subscription (ab_client_watch) */
    void *watch_arg;
    uint64_t watch_id;         /* id of the subscribing DISCOVER */
    uint32_t cache_flags;      /* ab_client_set_cache: added to every REQUEST */
    uint32_t cache_ttl_s;
};

/* client.c: a call (REQUEST, CONTROL, SEND, SUBSCRIBE) waiting for its
 * answer. TMPL (may be NULL) gives flags, correlation_id, credit and
 * timeout_ms of the header. */
int ab_client_call_start(ab_client_t *c, uint32_t kind, const char *target,
                         const ab_header_t *tmpl, const void *data, size_t size, int timeout_ms,
                         ab_reply_fn *fn, void *arg, uint64_t *id_out);
/* An ab_client_ask: a SEND whose call only an answer from NAME ends. */
int ab_client_ask_start(ab_client_t *c, const char *name, const ab_header_t *tmpl,
                        const void *data, size_t size, int timeout_ms, ab_reply_fn *fn,
                        void *arg, uint64_t *id_out);
int ab_client_call_wait(ab_client_t *c, uint32_t kind, const char *target,
                        const ab_header_t *tmpl, const void *data, size_t size, int timeout_ms,
                        void **reply, size_t *reply_size);

/* message.c */
void ab_cmsg_fini(ab_client_t *c);
/* Sends SUBSCRIBE for every pattern held (after a (re)connect). */
void ab_cmsg_resubscribe(ab_client_t *c);
/* A SEND or PUBLISH from the broker. */
void ab_cmsg_on_message(ab_client_t *c, const ab_in_t *in);
/* An ERROR that ends no call: a refused send, publish or name. */
void ab_cmsg_on_error(ab_client_t *c, const ab_in_t *in);

#endif
