/*
 * agentbus.h - the public API of libagentbus.
 *
 * libagentbus connects a process to an agentbus broker. One library serves
 * both sides of a request:
 *   - clients (agents) send requests to named services and get replies,
 *     synchronously or through callbacks, streamed chunk by chunk; they
 *     also message each other by name and publish on topics;
 *   - workers register a service with a capacity and answer requests.
 *
 * Contents, by topic:
 *   1. version                  7. agent-to-agent messages
 *   2. status codes             8. topics (publish/subscribe)
 *   3. options                  9. discovery (the broker's directory)
 *   4. client: lifecycle       10. operator queries (stats)
 *   5. client: event loop      11. worker: lifecycle and registration
 *   6. client: requests and    12. worker: receiving and answering jobs
 *      streamed replies        13. worker: event loop, cancellation, stop
 *
 * Typed payloads (inference requests and responses, the broker's stats and
 * directory) are the protobuf messages of proto/agentbus.proto; their
 * protobuf-c code is the companion header agentbus.pb-c.h, installed beside
 * this one, whose functions libagentbus exports.
 *
 * Conventions (every function; a function's own comment says where it
 * differs). Each prototype's comment ends with its contract:
 *   Errors:  functions that can fail return int: AB_OK (0) or a negative
 *            AB_E* code. ab_strerror(code) gives a fixed text for a code; a
 *            handle also keeps the detailed text of its last error
 *            (ab_client_last_error, ab_worker_last_error). Any function
 *            given a NULL handle or a NULL required pointer returns
 *            AB_EINVAL (void functions: do nothing).
 *   Owns:    what the caller must free and with what, and how long a
 *            returned pointer stays valid. Arguments are copied before a
 *            function returns unless it says otherwise.
 *   Thread:  a handle (ab_client_t, ab_worker_t, and the jobs, messages
 *            and callbacks that come from it) is used by one thread at a
 *            time; different handles may be used from different threads
 *            concurrently. Callbacks run on the thread that called into the
 *            handle (poll, recv, a synchronous call's wait, destroy). The
 *            only calls safe from any thread and from signal handlers are
 *            ab_client_stop, ab_worker_stop and ab_worker_shutdown. "Any
 *            thread" marks functions that touch no handle.
 *   Handles are opaque. X_new() creates, X_destroy(&p) frees and sets
 *   *p = NULL; destroying NULL or a pointer to NULL is a no-op.
 *   The library never exits, aborts or prints on its own.
 *   Sizes are in bytes, times in milliseconds unless a name says otherwise.
 *
 * Reconnection: a handle reconnects by itself when the broker restarts or the
 * connection drops. Requests in flight at that moment complete with
 * AB_EDISCONNECTED; requests made later are sent on the new connection.
 * A worker registers its service again on every new connection; a client
 * restores its subscriptions and directory watch.
 *
 * The queue to the broker: what a handle sends waits in its ZeroMQ socket
 * until written to the connection; it holds up to 100000 messages and
 * 256 MiB of payloads (those over 1 KiB, and batches). A send that carries
 * a payload past either fails at once with AB_EBUSY ("queue to the broker
 * full": the broker is unreachable or not reading); messages without one
 * (cancels, heartbeats) still go, and a payload goes when nothing waits,
 * whatever its size.
 */
#ifndef AGENTBUS_H
#define AGENTBUS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define AB_EXPORT __attribute__((visibility("default")))
#else
#define AB_EXPORT
#endif

/* ======================================================================== */
/* 1. Version                                                               */
/* ======================================================================== */
#define AB_VERSION_MAJOR 0
#define AB_VERSION_MINOR 1
#define AB_VERSION_PATCH 0
#define AB_VERSION_STRING "0.1.0"

/* The version of the libagentbus actually loaded ("0.1.0"), to compare with
 * AB_VERSION_STRING, the one compiled against.
 * Owns: static storage. Thread: any thread. */
AB_EXPORT const char *ab_version(void);

/* Default broker endpoint, used when neither the options nor $AB_BROKER name one. */
#define AB_DEFAULT_ENDPOINT "tcp://127.0.0.1:5555"

/* ------------------------------------------------------------------------ */
/* Status codes                                                             */
/* ------------------------------------------------------------------------ */
/* The one list of status codes. Each X(CONSTANT, VALUE, NAME, TEXT) row
 * defines the constant (a value of ab_status_t) and gives ab_status_name()
 * its NAME and ab_strerror() its TEXT; the comment says when it happens.
 * Values are part of the ABI and never change; new codes take new values.
 * Codes that come from a peer travel as the protocol's ErrorCode, mapped in
 * the library (common/vocab.h); an ErrorCode this library does not know
 * arrives as AB_EINTERNAL. An application may expand the list with its own X, e.g. to
 * build a table of every code. */
#define AB_STATUS_LIST(X)                                                                        \
    X(AB_OK, 0, "OK", "success")                                                                 \
    X(AB_EINVAL, -1, "INVALID", "invalid argument")                                              \
    X(AB_ENOMEM, -2, "NOMEM", "out of memory")                                                   \
    /* the local wait ran out (sync request, recv) */                                            \
    X(AB_ETIMEOUT, -3, "TIMEOUT", "timed out waiting")                                           \
    /* broker: service was never registered */                                                   \
    X(AB_ENOSERVICE, -4, "NO_SERVICE", "no such service is registered")                          \
    /* broker: service queue full, try later */                                                  \
    X(AB_EBUSY, -5, "BUSY", "service queue is full, try later")                                  \
    /* broker: request deadline passed */                                                        \
    X(AB_EDEADLINE, -6, "DEADLINE", "request deadline passed")                                   \
    /* a peer found the message malformed */                                                     \
    X(AB_EMALFORMED, -7, "MALFORMED", "message was malformed")                                   \
    /* the worker went away holding the request */                                               \
    X(AB_EWORKERLOST, -8, "WORKER_LOST", "the worker was lost while holding the request")        \
    /* internal fault in broker or library; also any code this version does not know */          \
    X(AB_EINTERNAL, -9, "INTERNAL", "internal error")                                            \
    X(AB_EVERSION, -10, "UNSUPPORTED_VERSION", "unsupported protocol version")                   \
    /* message kind or operation not supported */                                                \
    X(AB_EUNSUPPORTED, -11, "UNSUPPORTED", "operation not supported")                            \
    /* the worker's handler failed the request */                                                \
    X(AB_EAPPLICATION, -12, "APPLICATION", "the worker failed the request")                      \
    X(AB_EDISCONNECTED, -13, "DISCONNECTED", "connection to the broker was lost")                \
    /* a ZeroMQ call failed (see the last error text) */                                         \
    X(AB_EZMQ, -14, "ZMQ", "ZeroMQ call failed")                                                 \
    /* the handle was stopped (ab_*_stop) */                                                     \
    X(AB_ESTOPPED, -15, "STOPPED", "handle was stopped")                                         \
    /* broker: the named thing (a cache entry, a pinned worker) does not exist */                \
    X(AB_ENOTFOUND, -16, "NOT_FOUND", "no such entry")                                           \
    /* codec: a received message was rejected (a peer is told MALFORMED) */                      \
    X(AB_EFRAMES, -20, "FRAMES", "wrong number of frames")                                       \
    X(AB_EHDRSIZE, -21, "HEADER_SIZE", "header frame exceeds the size limit")                    \
    X(AB_EMISSING, -22, "MISSING_FIELD", "a required header field is missing")                   \
    X(AB_EPAYLOADSIZE, -23, "PAYLOAD_SIZE", "payload exceeds the size limit")                    \
    X(AB_EDECODE, -24, "DECODE", "header is not valid protobuf")                                 \
    /* inference: no worker or backend has the model */                                          \
    X(AB_EMODEL, -40, "MODEL_NOT_FOUND", "the model is not available on any worker or backend")  \
    /* inference: the backend refused the request (HTTP 400) */                                  \
    X(AB_EBADREQUEST, -41, "BAD_REQUEST", "the inference backend refused the request")           \
    /* inference: backend overloaded (HTTP 503) on every try */                                  \
    X(AB_EBACKENDBUSY, -42, "BACKEND_BUSY", "the inference backend is overloaded, try later")    \
    /* inference: backend unreachable or failed mid-stream */                                    \
    X(AB_EBACKEND, -43, "BACKEND", "the inference backend failed or is unreachable")             \
    /* the request was cancelled (ab_client_cancel) */                                           \
    X(AB_ECANCELLED, -44, "CANCELLED", "the request was cancelled")                              \
    /* broker: a live connection holds that agent name */                                        \
    X(AB_ENAMETAKEN, -50, "NAME_TAKEN", "another live connection holds that agent name")         \
    /* malformed agent name or topic (see ab_client_publish) */                                  \
    X(AB_EBADNAME, -51, "BAD_NAME", "malformed agent name or topic")                             \
    /* broker: message above its message-max-bytes */                                            \
    X(AB_ETOOLARGE, -52, "TOO_LARGE", "message exceeds the broker's message size limit")         \
    /* broker: the unnamed ("~id") recipient is gone */                                          \
    X(AB_ENOAGENT, -53, "NO_AGENT", "no such agent is connected")                                \
    /* broker (--auth curve): the connection's key may not do this; the text says why */         \
    X(AB_EDENIED, -54, "DENIED", "not allowed for this key")                                     \
    /* codec: malformed BATCH (counts, lengths, nesting) */                                      \
    X(AB_EBATCH, -60, "BATCH", "malformed batch: a count or length exceeds what it holds")       \
    /* codec: corrupt lz4 payload or lying original size */                                      \
    X(AB_ELZ4, -61, "LZ4", "corrupt compressed payload or wrong original size")                \
    /* codec: inline payload with a payload frame, twice, too large or not announced */    \
    X(AB_EINLINE, -62, "INLINE", "malformed or unannounced inline payload")

#define AB_STATUS_ENUM_(constant, value, name, text) constant = value,
typedef enum { AB_STATUS_LIST(AB_STATUS_ENUM_) } ab_status_t;
#undef AB_STATUS_ENUM_

/* Fixed English text for a status code (the TEXT of its AB_STATUS_LIST row);
 * "unknown error code" for any other int. Never NULL, static storage. */
AB_EXPORT const char *ab_strerror(int code);

/* Short stable name for a status code ("BUSY", "DEADLINE", ...).
 * Owns: static storage, never NULL. Thread: any thread. */
AB_EXPORT const char *ab_status_name(int code);

/* Frees memory the library returned to the caller (reply buffers of
 * ab_client_request and ab_client_control). NULL is a no-op.
 * Thread: any thread. */
AB_EXPORT void ab_free(void *p);

struct ProtobufCMessage;
struct ProtobufCMessageDescriptor;

/* Decodes LEN bytes at DATA as the message DESC (a descriptor of
 * agentbus.pb-c.h: &agentbus__inference_request__descriptor, ...) within a
 * memory budget of 4x LEN plus 1 MiB. Use it, not X__unpack(NULL, ...), on
 * what a peer sent: protobuf-c takes a record for each entry of a repeated
 * message field, and a request of millions of empty chat messages (2 bytes
 * each on the wire, ~50 decoded) grows the process by gigabytes. An honest
 * message takes at most 4x (token ids of one byte each). Returns NULL when
 * DATA is not a valid DESC or decodes past the budget (DATA may be NULL
 * when LEN is 0). Owns: the caller's, freed with
 * protobuf_c_message_free_unpacked(m, NULL) or X__free_unpacked(m, NULL).
 * Thread: any thread. */
AB_EXPORT struct ProtobufCMessage *ab_pb_unpack(const struct ProtobufCMessageDescriptor *desc,
                                                size_t len, const void *data);

/* ======================================================================== */
/* 3. Options: shared by clients and workers                                */
/* ======================================================================== */
/* An options object is read only by ab_client_new and ab_worker_new, which
 * copy it: changing or destroying it later does not affect those handles,
 * and one object may create any number of them. Every setter returns
 * AB_EINVAL (and changes nothing) for a NULL object or a value out of its
 * range. Thread: one thread at a time per object (concurrent ab_*_new
 * calls only reading it are fine). */
typedef struct ab_options ab_options_t;

/* Creates options with defaults: endpoint from $AB_BROKER, else
 * AB_DEFAULT_ENDPOINT; heartbeat 1000 ms; request timeout 30000 ms; max
 * payload 64 MiB; batching and compression as below (with their $AB_*
 * overrides read now; a malformed variable is ignored).
 * Owns: the caller, until ab_options_destroy. NULL only when out of memory.
 * Thread: any thread (reads the environment). */
AB_EXPORT ab_options_t *ab_options_new(void);
AB_EXPORT void ab_options_destroy(ab_options_t **opts);

/* Broker endpoint, e.g. "tcp://127.0.0.1:5555" or "ipc:///tmp/x.ipc", at
 * most 511 bytes. Copied. Errors: AB_EINVAL for NULL, empty or too long
 * (a malformed endpoint is found by ab_client_new/ab_worker_new: AB_EZMQ). */
AB_EXPORT int ab_options_set_endpoint(ab_options_t *opts, const char *endpoint);
/* Name this peer reports to the broker, at most 255 bytes ("" = none).
 * For a client it is its agent name (section 7). Copied. */
AB_EXPORT int ab_options_set_name(ab_options_t *opts, const char *name);
/* Application heartbeat interval, 100..60000 ms. It also sets the ZMTP
 * heartbeat: a broker silent for three intervals (never less than 3 s)
 * after a PING is taken as gone and the connection is made again. A worker
 * PINGs once an interval, a client (agent) once those three (the broker
 * answers every PING; thousands of agents): a silent broker is found
 * within 4 s by a worker, 6 s by a client, with the default. */
AB_EXPORT int ab_options_set_heartbeat_ms(ab_options_t *opts, int ms);
/* Largest payload accepted from the broker, and sent (> 0; larger ones
 * fail with AB_EPAYLOADSIZE). A client tells the broker in its HELLO
 * (Hello.max_payload), and the broker sends it nothing larger: a direct
 * message to it over this is refused to its sender (AB_ETOOLARGE, naming
 * this limit), a publication over it is not given to it (an AB_MSG_GAP
 * counts it), and an answer over it (a reply, or one chunk of a streamed
 * one) ends its call at once with AB_EPAYLOADSIZE, a request's worker
 * being told to stop (CANCEL). The library holds what it receives to it
 * too (from a broker that does not read the field): such an answer ends
 * its call the same way. A worker tells the broker in its REGISTER
 * (Register.max_payload): the broker sends it no larger request but to
 * another worker of the service that reads it, and a request no worker
 * of the service reads ends AB_EPAYLOADSIZE at its client (a broker that
 * does not read the field: the worker answers it AB_EMALFORMED). Other
 * messages over it are dropped. Batches of smaller answers may be larger, up to the max payload
 * plus 4 KiB: only each answer is held to it. A message from the broker
 * larger than the max payload plus 68 KiB (header and framing) ends the
 * connection (libzmq's ZMQ_MAXMSGSIZE); the library dials again within a
 * second, and the calls in flight fail with AB_EDISCONNECTED. */
AB_EXPORT int ab_options_set_max_payload(ab_options_t *opts, size_t bytes);
/* Default timeout (> 0) of requests and waits given timeout_ms < 0. */
AB_EXPORT int ab_options_set_timeout_ms(ab_options_t *opts, int ms);
/* With ON nonzero (any value but 0 counts as 1: not range-checked), a
 * client's name (ab_options_set_name) replaces a live connection that holds
 * it (for restarts); the old connection gets an AB_ENAMETAKEN message.
 * Default 0: the name is refused instead. */
AB_EXPORT int ab_options_set_takeover(ab_options_t *opts, int on);

/* Batching (see docs/protocol.md, BATCH). When on (the default), messages
 * sent in one "turn" travel to the broker as one ZeroMQ message, and the
 * handle announces that it reads BATCHes, so the broker batches towards it
 * too. A turn ends at every library call that processes input
 * (ab_client_poll, ab_worker_recv/poll, a synchronous request's wait) or at
 * ab_client_flush/ab_worker_flush, and when such a call hands control back
 * to the application (a job, a message, after callbacks) with nothing more
 * waiting, so an answer sent then never waits for a later poll; while more
 * waits (a backlog) the answers are gathered. The first message of a turn
 * always goes out at once, so a lone request is never delayed; the ones after it are
 * gathered until the turn ends or a limit is reached: a count that adapts
 * to the backlog (from 64, doubled after each turn that filled it, halved
 * after one that used under a quarter of it) up to MAX_COUNT messages
 * (2..4096, default 4096; under 64 it is a fixed limit), MAX_BYTES
 * (256..16 MiB, default 64 KiB; a larger message goes alone, in order) or
 * MAX_AGE_US since the oldest gathered one (0..1000000, default 200;
 * checked when the handle sends or polls). Off: one ZeroMQ message per
 * message, and nothing batched is sent to this handle (the wire of
 * libagentbus 0.1).
 * Defaults come from $AB_BATCH (0/1), $AB_BATCH_MAX_COUNT,
 * $AB_BATCH_MAX_BYTES, $AB_BATCH_MAX_AGE_US when set. AB_EINVAL out of range
 * (ON is 0 or 1). */
AB_EXPORT int ab_options_set_batching(ab_options_t *opts, int on);
AB_EXPORT int ab_options_set_batch_limits(ab_options_t *opts, unsigned max_count,
                                          size_t max_bytes, unsigned max_age_us);
/* lz4 compression of payloads this handle sends: a payload of at least
 * THRESHOLD_BYTES (default 1024; 0 disables compression) is compressed when
 * that saves at least MIN_SAVING_PCT percent (0..99, default 10), else sent
 * as is. Requests are compressed only when the broker announced lz4 support
 * to this handle, replies only when the broker asks (the requesting client
 * reads lz4 and the reply crosses a hop that compresses). The broker
 * announces lz4 only to handles whose connection leaves its machine (unless
 * it runs --compress-local): on ipc and loopback lz4 costs more than it
 * saves. Received compressed payloads are always decompressed before the
 * application sees them (bounded by the declared size and the max payload;
 * a corrupt one ends its request with AB_EMALFORMED and cancels it at the
 * broker). Defaults from $AB_COMPRESS_THRESHOLD_BYTES and
 * $AB_COMPRESS_MIN_SAVING_PCT. AB_EINVAL out of range. */
AB_EXPORT int ab_options_set_compression(ab_options_t *opts, size_t threshold_bytes,
                                         unsigned min_saving_pct);
/* CURVE authentication and encryption (a broker run with --auth curve;
 * docs/security.md). A handle with a key connects with CURVE, proving the
 * key to the broker, which grants the key's role; the broker's public key
 * makes sure the other end is that broker.
 * ab_options_set_key_file: PATH is this peer's secret certificate (the
 * NAME.key_secret written by `brokerctl keygen NAME`); "" unsets the key.
 * AB_EINVAL when it cannot be read or holds no keypair (the key is then
 * unset). ab_options_set_broker_key: KEY is the broker's public key, as Z85
 * text (40 characters, `brokerctl keys` shows it) or the path of its public
 * certificate; "" unsets it. ab_options_set_curve_keys: this peer's keypair
 * as Z85 text, for keys kept elsewhere than in a file.
 * Defaults come from $AB_KEY (a key file) and $AB_BROKER_KEY; unlike the
 * other variables, one that cannot be used makes ab_client_new and
 * ab_worker_new fail with AB_EINVAL (the last error says why), as does a
 * key without a broker key or the reverse. A broker that refuses the key
 * (unknown, removed) closes the connection during the handshake: calls in
 * flight and later sends fail with AB_EDENIED once the library has read the
 * refusal (ab_client_refused), and the handle's last error says why.
 * Thread: as the other setters. */
AB_EXPORT int ab_options_set_key_file(ab_options_t *opts, const char *path);
AB_EXPORT int ab_options_set_broker_key(ab_options_t *opts, const char *key);
AB_EXPORT int ab_options_set_curve_keys(ab_options_t *opts, const char *public_key,
                                        const char *secret_key);
/* A new CURVE keypair as Z85 text (40 characters and a NUL each), from
 * libsodium's random source: what `brokerctl keygen` writes into a
 * certificate. AB_EZMQ when libzmq has no CURVE. Thread: any thread. */
AB_EXPORT int ab_curve_keypair(char public_key[41], char secret_key[41]);

/* ======================================================================== */
/* 4. Client: lifecycle                                                     */
/* ======================================================================== */
typedef struct ab_client ab_client_t;

/* Connects to the broker (the connection completes in the background; a
 * request made before it does is queued). OPTS may be NULL for defaults and
 * is copied.
 * Errors: AB_EINVAL, AB_ENOMEM, AB_EZMQ (bad endpoint syntax, ...); *out is
 * NULL then. Owns: on AB_OK *out is the caller's, until ab_client_destroy.
 * Thread: any thread; the handle then follows the one-thread-at-a-time rule. */
AB_EXPORT int ab_client_new(ab_client_t **out, const ab_options_t *opts);

/* Closes the connection. Requests still in flight are cancelled at the
 * broker and completed with AB_ESTOPPED (their callbacks run inside this
 * call; a request they start is refused with AB_ESTOPPED); queued received
 * messages are freed. Sets *client = NULL.
 * Thread: the handle's thread, not from inside one of its callbacks. */
AB_EXPORT void ab_client_destroy(ab_client_t **client);

/* Detailed text of the handle's last error ("" if none). With CLIENT
 * NULL: why the last ab_client_new of this thread failed ("" if it did
 * not), e.g. "a key (AB_KEY, --key) needs the broker's public key too".
 * Owns: the handle (the thread for NULL); valid until the next call on it. */
AB_EXPORT const char *ab_client_last_error(const ab_client_t *client);

/* 1 while the connection to a broker is up, else 0 (also for NULL). */
AB_EXPORT int ab_client_connected(const ab_client_t *client);

/* 1 once the broker refused this handle's CURVE handshake (its key is not
 * trusted there, or the broker requires CURVE and the handle has none),
 * until a later handshake succeeds; else 0 (also for NULL). The refusal is
 * read by ab_client_poll (or any call that receives); ab_client_last_error
 * then says why. The library keeps trying to connect in the background. */
AB_EXPORT int ab_client_refused(const ab_client_t *client);

/* Makes every blocking call on the handle (ab_client_request,
 * ab_client_poll, ab_client_recv, synchronous waits) return AB_ESTOPPED
 * soon, now and from then on, without handing out what is already waiting
 * (no more callbacks or messages): a stopped handle is only good for
 * ab_client_destroy. The call that returns AB_ESTOPPED sets the handle's
 * last error to say so (before 2026-12-07 it kept the text of the call
 * before, such as a recv's "no message in time"). Thread: any thread, and
 * signal handlers. */
AB_EXPORT void ab_client_stop(ab_client_t *client);

/* ======================================================================== */
/* 5. Client: event loop                                                    */
/* ======================================================================== */

/* Processes what has arrived and what has timed out, running callbacks
 * (replies, messages, directory events). Waits up to timeout_ms for the
 * first event (0: don't wait; -1, or any negative: until one arrives).
 * Returns the number of events handled (>= 0): messages received (each of
 * a BATCH's; at most 4,096 a call) plus calls it ended (expired, or failed
 * when the connection was lost or refused), so a mass expiry of many calls
 * gives a large count. Errors: AB_EINVAL, AB_ESTOPPED, AB_EZMQ. */
AB_EXPORT int ab_client_poll(ab_client_t *client, int timeout_ms);

/* A file descriptor that becomes readable when ab_client_poll() may have
 * work. It is edge-triggered (ZMQ_FD semantics): after it fires, call
 * ab_client_poll(client, 0) until it returns 0. Timers (request deadlines,
 * heartbeats) do not make it readable: also call ab_client_poll at least
 * every ab_client_next_timeout_ms() milliseconds.
 * Errors: AB_EINVAL, AB_EZMQ. Owns: the library: never read, write or
 * close it; valid until ab_client_destroy. */
AB_EXPORT int ab_client_fd(ab_client_t *client, int *fd);
/* Milliseconds (>= 0) until the handle needs ab_client_poll() for its
 * timers; 0 also when gathered messages wait to be sent. 0 for NULL. */
AB_EXPORT int ab_client_next_timeout_ms(ab_client_t *client);

/* Ends the current batching turn: sends what was gathered now. Needed only
 * by an application that sends several async requests and then does not
 * call ab_client_poll for a while. Errors: AB_EINVAL, AB_EBUSY (queue to the
 * broker full: the gathered requests are lost and time out), AB_EZMQ. */
AB_EXPORT int ab_client_flush(ab_client_t *client);

/* Number of requests (and other calls awaiting an answer) in flight on
 * this handle; 0 for NULL. */
AB_EXPORT size_t ab_client_pending(const ab_client_t *client);

/* ======================================================================== */
/* 6. Client: requests and streamed replies                                 */
/* ======================================================================== */

/* Synchronous request: sends DATA to SERVICE and waits up to timeout_ms
 * (< 0: the options' default, 30000 unless set; 0 is taken as 1) for the
 * reply. The deadline travels with the request: the broker answers
 * AB_EDEADLINE when it passes.
 * For a model, flags or cache control per request use
 * ab_client_request_start.
 * Errors: any AB_E* status; typical: AB_EINVAL, AB_ENOSERVICE, AB_EBUSY,
 * AB_EDEADLINE, AB_ETIMEOUT, AB_EDISCONNECTED, AB_EAPPLICATION,
 * AB_ESTOPPED; AB_EPAYLOADSIZE when the reply, one chunk of a streamed
 * one, or its chunks together exceed the max payload
 * (ab_options_set_max_payload: a streamed request is cancelled then). On error *reply is NULL and the handle's last error holds
 * the broker's or library's text.
 * Owns: on AB_OK, *reply is a malloc'd buffer of *reply_size bytes (a
 * streamed reply's chunks concatenated), the caller's, freed with ab_free;
 * pass reply = NULL to discard the payload.
 * Thread: the handle's; other requests' callbacks may run during the wait. */
AB_EXPORT int ab_client_request(ab_client_t *client, const char *service,
                                const void *data, size_t size, int timeout_ms,
                                void **reply, size_t *reply_size);

/* One event of an asynchronous request, passed to its callback.
 * Owns: the library; every pointer is valid only during the callback. */
typedef struct {
    uint64_t request_id; /* as ab_client_request_start returned it */
    int status;          /* AB_OK, or the error that ended the request */
    int final;           /* 1 on the last event of this request, else 0 */
    const void *data;    /* chunk (PARTIAL) or final reply payload */
    size_t size;
    const char *error_text; /* detail when status != AB_OK, else "" */
} ab_reply_event_t;

/* Called for each event of an asynchronous request (and of ab_client_ask),
 * on the thread that polls the handle. It may call any function on the
 * handle except ab_client_destroy, including starting new requests. */
typedef void(ab_reply_fn)(ab_client_t *client, const ab_reply_event_t *ev, void *arg);

/* Longest model name a request may carry (bytes). */
#define AB_MODEL_MAX 200

/* AB_REQUEST_* bits of ab_request_opts_t.flags.
 * NON_IDEMPOTENT: the request must not run twice: if its worker is lost
 * while holding it, the broker answers AB_EWORKERLOST instead of
 * re-dispatching it. Without it, a request whose worker is lost (dies,
 * disconnects, goes silent, is ejected, says BYE) goes back to the front of
 * its service's queue and is dispatched again, up to the broker's
 * max-attempts (3). */
#define AB_REQUEST_NON_IDEMPOTENT 1u

/* AB_CACHE_* bits: control of the broker's inference cache (docs/cache.md)
 * for a handle's requests (ab_client_set_cache) or one request
 * (ab_request_opts_t.cache_flags). They are the wire Header.flags bits.
 *   AB_CACHE_ON       the caller marks the request cacheable: the broker
 *                     may answer it from its cache and stores its reply
 *                     (typed inference requests that are deterministic
 *                     are cacheable without it);
 *   AB_CACHE_NO_READ  never answer from the cache (the request still goes
 *                     to a worker, its reply may be stored);
 *   AB_CACHE_NO_STORE never store the reply. */
#define AB_CACHE_NO_READ 2u
#define AB_CACHE_NO_STORE 4u
#define AB_CACHE_ON 8u

/* Options of one request (ab_client_request_start). Start from
 * AB_REQUEST_OPTS_INIT or ab_request_opts_init(), which give the defaults
 * below (all zero), and set the fields you need; with designated
 * initialisers, &(ab_request_opts_t){.timeout_ms = 5000} is a complete set
 * too (every unnamed field keeps its default).
 * Owns: the caller's; nothing is kept after the call returns, so the
 * strings need to live only during it. */
typedef struct {
    int timeout_ms;       /* > 0: the request's budget; <= 0 (default 0): the
                           * handle's (ab_options_set_timeout_ms).
                           * The deadline travels with the request: the broker
                           * answers AB_EDEADLINE when it passes. */
    const char *model;    /* NULL (default) or a model name of at most
                           * AB_MODEL_MAX bytes: the broker places the request on
                           * a worker that has it loaded or can load it
                           * (docs/placement.md) */
    const char *worker;   /* NULL (default), or a worker's name or id: the
                           * request goes to that worker only (operator commands) */
    unsigned flags;       /* AB_REQUEST_* bits; default 0 */
    uint32_t cache_flags; /* AB_CACHE_* bits, or-ed with the handle's
                           * (ab_client_set_cache); default 0 */
    uint32_t cache_ttl_s; /* > 0: how long the broker caches the reply, over the
                           * handle's TTL; 0 (default): the handle's */
    uint32_t priority;    /* the lane the request waits in at the broker: an
                           * AB_PRIORITY_* value (ab_priority_parse reads names);
                           * default 0 = normal. Also carried to the worker. */
} ab_request_opts_t;

/* Priorities (ab_request_opts_t.priority) and the broker's lanes they map
 * onto (docs/lanes.md): 1 batch; 0 and 2 normal; 3 and above interactive.
 * The interactive lane is served first, with a minimum share kept for the
 * lower ones; within a lane clients take turns (fair queuing). */
#define AB_PRIORITY_DEFAULT 0u     /* normal lane */
#define AB_PRIORITY_BATCH 1u
#define AB_PRIORITY_NORMAL 2u
#define AB_PRIORITY_INTERACTIVE 3u

/* Reads TEXT as a priority: "interactive", "normal", "batch" (any case) or
 * a number 0..255, into *PRIORITY. AB_OK, or AB_EINVAL (NULL or unknown;
 * *PRIORITY unchanged). Thread: any. */
AB_EXPORT int ab_priority_parse(const char *text, uint32_t *priority);
/* The lane PRIORITY maps onto: "interactive", "normal" or "batch" (static). */
AB_EXPORT const char *ab_priority_lane(uint32_t priority);

#define AB_REQUEST_OPTS_INIT {0, NULL, NULL, 0u, 0u, 0u, 0u}

/* Sets *OPTS to AB_REQUEST_OPTS_INIT. NULL is a no-op. Thread: any thread. */
AB_EXPORT void ab_request_opts_init(ab_request_opts_t *opts);

/* Asynchronous request to SERVICE with OPTS (NULL: the defaults). Returns at
 * once; FN (may be NULL) runs from ab_client_poll() (or a synchronous call's
 * wait) once per streamed chunk (final = 0) and exactly once with
 * final = 1 (the reply, or an error: deadline, disconnect, stop, cancel).
 * *request_id, if not NULL, gets the id (for ab_client_cancel).
 * An inference request's payload is an agentbus.InferenceRequest
 * (agentbus.pb-c.h); each streamed chunk arrives as its own event holding
 * one encoded GenerateResponse / ChatResponse (decode each on its own:
 * concatenated protobuf messages merge, so the sync ab_client_request's
 * concatenation is only meaningful with stream = false).
 * Errors (FN does not run): AB_EINVAL (NULL handle or service, a model over
 * AB_MODEL_MAX, unknown flags or cache flags), AB_EPAYLOADSIZE, AB_ENOMEM,
 * AB_EBUSY (queue to the broker full), AB_EZMQ.
 * Owns: DATA and OPTS are copied before return; ARG stays the caller's and
 * must live until FN's final event. */
AB_EXPORT int ab_client_request_start(ab_client_t *client, const char *service,
                                      const void *data, size_t size,
                                      const ab_request_opts_t *opts, ab_reply_fn *fn,
                                      void *arg, uint64_t *request_id);

/* The handle's cache control: FLAGS (AB_CACHE_* bits) and TTL_S (> 0: how
 * long the broker keeps the reply; 0 = the broker's default) apply to
 * every later request of the handle until changed (0, 0 restores the
 * defaults); a request's own ab_request_opts_t cache fields add to them.
 * Errors: AB_EINVAL (NULL handle or unknown bits). */
AB_EXPORT int ab_client_set_cache(ab_client_t *client, uint32_t flags, uint32_t ttl_s);

/* Gives up on request REQUEST_ID: its callback runs at once (inside this
 * call) with final = 1 and AB_ECANCELLED, and the broker is told (CANCEL) so
 * the worker holding it stops and frees its slot (an Ollama worker aborts
 * the HTTP transfer). Later answers to it are ignored. ab_client_destroy
 * cancels every request still in flight the same way.
 * Errors: AB_EINVAL (no such request in flight), send errors (the request
 * is ended locally anyway). */
AB_EXPORT int ab_client_cancel(ab_client_t *client, uint64_t request_id);

/* ======================================================================== */
/* 7. Agent-to-agent messages                                               */
/* ======================================================================== */
/*
 * Names. A client whose options carry a name (ab_options_set_name) is the
 * agent of that name: the broker binds the name to one live connection. A
 * second client claiming a live name is refused: it keeps working unnamed
 * and receives an AB_MSG_ERROR message with status AB_ENAMETAKEN (unless it
 * set ab_options_set_takeover and the broker allows takeover, which moves
 * the name to it). The same handle reconnecting gets its name back. Names
 * are 1..255 bytes of printable ASCII without spaces, not starting with '~'.
 * An unnamed client is addressed as "~" + the broker's token for its
 * connection (16 hex digits; that is what the `sender` of its messages
 * reads; never its routing id); such an address has no mailbox.
 *
 * Delivery. Direct messages and topic messages (section 8) arrive through
 * the same ab_client_poll() that runs request callbacks: to the handler set
 * with ab_client_on_message, or, without one, into the handle's receive
 * queue read with ab_client_recv. Direct messages to an offline agent wait
 * in its mailbox at the broker (bounded in count, bytes and time) and
 * arrive in order when it connects.
 */

/* What an ab_message_t is. */
typedef enum {
    AB_MSG_DIRECT = 1,  /* a direct message (ab_client_send) to this agent */
    AB_MSG_TOPIC = 2,   /* a message published on a topic this handle subscribes */
    AB_MSG_RECEIPT = 3, /* the recipient's application got our message `id` */
    AB_MSG_GAP = 4,     /* `dropped` topic messages were lost (slow subscriber, or
                           over this handle's max payload) */
    AB_MSG_ERROR = 5    /* the broker refused our message `id` (status, error_text:
                           AB_EBUSY, AB_EBADNAME, AB_ETOOLARGE, AB_ENOAGENT), or
                           our name (id 0: AB_ENAMETAKEN; AB_EBADNAME for a name
                           that breaks the rules above, which
                           ab_options_set_name does not check; AB_EDENIED) */
} ab_msg_type_t;

/* One received message. Strings are NUL-terminated, never NULL.
 * Owns: see ab_message_fn and ab_client_recv. */
typedef struct {
    int type;             /* ab_msg_type_t */
    const char *sender;   /* DIRECT/TOPIC: sender's agent name or "~id" */
    const char *target;   /* DIRECT: the name it was sent to; TOPIC: the topic */
    uint64_t id;          /* DIRECT/TOPIC: sender's id for it; RECEIPT/ERROR:
                             the id ab_client_send/publish gave our message */
    uint64_t reply_to;    /* DIRECT: id of our message this one answers, else 0 */
    const void *data;     /* payload (may be NULL when size is 0) */
    size_t size;
    uint64_t dropped;     /* GAP: how many topic messages were lost */
    int status;           /* ERROR: AB_E* code; else AB_OK */
    const char *error_text; /* ERROR: broker's text; else "" */
    int want_receipt;     /* DIRECT: the sender asked for a receipt (sent for
                             you once the message is handed to you) */
} ab_message_t;

/* Handler for messages. M and everything it points to are valid only during
 * the call. It runs on the thread calling ab_client_poll (or a sync request's
 * wait) and may call any function on the handle except ab_client_destroy,
 * including ab_client_reply. */
typedef void(ab_message_fn)(ab_client_t *client, const ab_message_t *m, void *arg);

/* Sets (FN) or clears (NULL) the message handler. While none is set,
 * messages go to the receive queue (ab_client_recv), which holds up to
 * 100000 messages and 64 MiB (payloads and their records; the newest
 * message is always kept); beyond that the oldest are dropped and an
 * AB_MSG_GAP says how many.
 * Errors: AB_EINVAL. Owns: ARG stays the caller's while FN is set. */
AB_EXPORT int ab_client_on_message(ab_client_t *client, ab_message_fn *fn, void *arg);

/* Waits up to timeout_ms (-1 or any negative: forever, 0: don't wait) for a message in the
 * receive queue, processing traffic (and request callbacks) meanwhile.
 * Errors: AB_ETIMEOUT, AB_ESTOPPED, AB_EINVAL (a handler is set), AB_EZMQ;
 * *msg is NULL then. Owns: on AB_OK *msg is the caller's, freed with
 * ab_message_destroy (it outlives later calls and even the handle). */
AB_EXPORT int ab_client_recv(ab_client_t *client, ab_message_t **msg, int timeout_ms);
/* Frees a message from ab_client_recv and sets *msg = NULL. Thread: any
 * thread, once the message is no longer used elsewhere. */
AB_EXPORT void ab_message_destroy(ab_message_t **msg);

/* Send flags. */
#define AB_SEND_RECEIPT 1 /* ask for an AB_MSG_RECEIPT when the recipient's
                             application has the message */

/* Sends DATA (copied) to the agent NAME; returns at once. It is delivered at
 * once when NAME is connected, else kept in NAME's mailbox. If the broker
 * refuses it (mailbox full: AB_EBUSY; bad name; too large: AB_ETOOLARGE,
 * over the broker's message-max-bytes or NAME's own max payload, see
 * ab_options_set_max_payload, also when it waited in NAME's mailbox and
 * NAME came back with a smaller one) an AB_MSG_ERROR message with this id
 * arrives later. *id (may be NULL) gets its id. FLAGS: 0 or
 * AB_SEND_RECEIPT; any other bit is AB_EINVAL (ab_client_send_wait too).
 * Errors now: AB_EINVAL, AB_EBADNAME, AB_EPAYLOADSIZE, AB_EBUSY (the local
 * queue to the broker is full), AB_EZMQ. */
AB_EXPORT int ab_client_send(ab_client_t *client, const char *name, const void *data,
                             size_t size, int flags, uint64_t *id);

/* As ab_client_send, but waits up to timeout_ms (< 0: the default timeout)
 * for the broker to accept the message: AB_OK with *queued (may be NULL) = 0
 * when it was handed to NAME's connection, 1 when it waits in the mailbox.
 * Errors: those of ab_client_send, AB_EBUSY (mailbox full), AB_ETOOLARGE
 * (over message-max-bytes or NAME's max payload: nothing was delivered),
 * AB_ETIMEOUT, AB_EDISCONNECTED, AB_ESTOPPED. Other callbacks may run
 * during the wait. */
AB_EXPORT int ab_client_send_wait(ab_client_t *client, const char *name, const void *data,
                                  size_t size, int flags, int timeout_ms, int *queued);

/* Request/reply between agents: sends DATA (copied) to agent NAME and calls
 * FN once (final = 1) with its answer (the payload NAME passed to
 * ab_client_reply) or an error: AB_EBUSY (mailbox full), AB_ETOOLARGE (over
 * message-max-bytes or NAME's max payload), AB_ETIMEOUT (no
 * answer within timeout_ms; < 0: the default), AB_EDISCONNECTED,
 * AB_ESTOPPED. The message may wait in NAME's mailbox while the timeout
 * runs. Only an answer from NAME ends it: a message from another agent
 * that says it answers this id arrives as an AB_MSG_DIRECT (reply_to set).
 * *id (may be NULL) gets its id.
 * Errors now (FN does not run): as ab_client_send. Owns: ARG stays the
 * caller's until FN runs. */
AB_EXPORT int ab_client_ask(ab_client_t *client, const char *name, const void *data,
                            size_t size, int timeout_ms, ab_reply_fn *fn, void *arg,
                            uint64_t *id);

/* Answers direct message M (received by this handle) with DATA (copied):
 * its sender gets an AB_MSG_DIRECT with reply_to = M->id, or its
 * ab_client_ask callback runs. Errors as ab_client_send; AB_EINVAL if M is
 * not DIRECT. */
AB_EXPORT int ab_client_reply(ab_client_t *client, const ab_message_t *m, const void *data,
                              size_t size);

/* Syntax check of an agent name (the rules above): AB_OK or AB_EBADNAME
 * (AB_EINVAL for NULL). Thread: any thread. */
AB_EXPORT int ab_agent_name_check(const char *name);

/* ======================================================================== */
/* 8. Topics (publish/subscribe)                                            */
/* ======================================================================== */
/*
 * Topics are dot-separated labels: "alerts.gpu.temp". A label is 1..64
 * bytes of [A-Za-z0-9_-:]; a topic has at most 255 bytes and 16 labels. A
 * subscription pattern is a topic (exact match) or a topic followed by '.'
 * (prefix: "alerts." matches "alerts.gpu" and "alerts.gpu.temp", not
 * "alerts"). Anything else is AB_EBADNAME, locally and at the broker.
 * Topic messages are not stored: a subscriber gets those published while it
 * is subscribed, as AB_MSG_TOPIC messages (section 7's delivery); a slow one
 * loses the oldest (drop-oldest, per subscriber) and gets an AB_MSG_GAP
 * message saying how many. Subscriptions are kept by the handle and
 * restored on reconnect.
 */

/* Subscribes to PATTERN (copied), kept by the handle and restored after
 * every reconnect. timeout_ms > 0 waits that long for the broker to confirm
 * (so a publish made afterwards by anyone reaches this handle); 0 returns at
 * once (a refusal then arrives as AB_MSG_ERROR). Subscribing twice to a
 * pattern is a no-op. Errors: AB_EBADNAME, AB_EINVAL (NULL, or more than
 * 1024 patterns), AB_ENOMEM, AB_ETIMEOUT, AB_EDISCONNECTED, AB_ESTOPPED. */
AB_EXPORT int ab_client_subscribe(ab_client_t *client, const char *pattern, int timeout_ms);
/* Removes a subscription (same waiting rule and errors). Unknown PATTERN:
 * AB_OK. */
AB_EXPORT int ab_client_unsubscribe(ab_client_t *client, const char *pattern, int timeout_ms);

/* Publishes DATA (copied) on TOPIC (no trailing '.'): every subscriber with
 * a matching pattern gets it once, but a subscriber whose max payload
 * (ab_options_set_max_payload) is smaller, which gets an AB_MSG_GAP instead
 * (the publisher is not told). Returns at once; nothing is stored for
 * absent subscribers. *id (may be NULL) gets its id.
 * Errors: AB_EINVAL, AB_EBADNAME, AB_EPAYLOADSIZE, AB_EBUSY (local queue
 * full), AB_EZMQ; later, as AB_MSG_ERROR: AB_ETOOLARGE. */
AB_EXPORT int ab_client_publish(ab_client_t *client, const char *topic, const void *data,
                                size_t size, uint64_t *id);

/* Syntax check of a topic, or with ALLOW_PREFIX of a subscription pattern:
 * AB_OK or AB_EBADNAME (AB_EINVAL for NULL). Thread: any thread. */
AB_EXPORT int ab_topic_check(const char *topic, int allow_prefix);

/* ======================================================================== */
/* 9. Discovery: the broker's directory                                     */
/* ======================================================================== */

/* One worker in the broker's directory. Strings are never NULL. */
typedef struct {
    const char *id;            /* broker's token for the worker's connection, hex */
    const char *name;
    const char *service;
    const char *health;        /* healthy, suspect, dead, ejected, probing, draining */
    const char *backend_state; /* as the worker last reported ("" if never) */
    unsigned capacity, in_flight;
    unsigned free_credit;      /* what the broker may still send it now */
    unsigned interval_ms;      /* heartbeat interval the broker asks of it */
    double suspicion;          /* phi: -log10 P(its next heartbeat is this late) */
    unsigned ejections;        /* times the circuit breaker ejected it */
    unsigned backoff_ms;       /* backoff of its last ejection (0: never) */
    unsigned failures;         /* consecutive failed requests */
    uint64_t completed;
    uint64_t redispatched;     /* its requests the broker took back */
    size_t n_labels;
    const char *const *label_keys; /* n_labels each */
    const char *const *label_values;
} ab_worker_info_t;

typedef struct {
    const char *name;
    unsigned workers, capacity, free_credit, queue_depth, queue_max;
    uint64_t requests, replies, errors;
} ab_service_info_t;

/* A snapshot of the broker's directory. Read the arrays directly.
 * Owns: the caller, freed with ab_directory_destroy; every pointer inside
 * dies with it. Thread: any thread may read or free it (it is plain data,
 * independent of the client that made it). */
typedef struct {
    size_t n_services;
    const ab_service_info_t *services;
    size_t n_workers;
    const ab_worker_info_t *workers;
    void *priv_;
} ab_directory_t;

/* Looks up SERVICE (NULL or "*" for all) in the broker's directory: one
 * round trip, answered by the broker from its own state. On AB_OK *out is a
 * new snapshot (a service nobody registered gives empty arrays). Other
 * requests' callbacks may run during the wait. Errors: AB_EINVAL,
 * AB_ETIMEOUT, AB_EDISCONNECTED, AB_ESTOPPED, AB_ENOMEM, AB_EMALFORMED
 * (undecodable), AB_ENOSERVICE (SERVICE over 255 bytes: no service can
 * have that name). */
AB_EXPORT int ab_discover(ab_client_t *client, const char *service, int timeout_ms,
                          ab_directory_t **out);
AB_EXPORT void ab_directory_destroy(ab_directory_t **dir);

/* A directory change pushed by the broker.
 * Owns: the library; valid only during the callback. */
typedef struct {
    const char *change;             /* "join", "leave" or "health" */
    const ab_worker_info_t *worker; /* the worker's state after the change */
} ab_dir_event_t;

typedef void(ab_dir_event_fn)(ab_client_t *client, const ab_dir_event_t *ev, void *arg);

/* Subscribes to directory changes: FN runs from ab_client_poll (or a sync
 * call's wait) once per change, for as long as the handle lives; the
 * library subscribes again after a reconnect. Waits up to timeout_ms for
 * the broker to confirm. FN NULL stops delivery (the broker keeps sending
 * to this connection; the events are ignored). Errors as ab_discover (FN is
 * not kept then). Owns: ARG stays the caller's while FN is set. */
AB_EXPORT int ab_client_watch(ab_client_t *client, ab_dir_event_fn *fn, void *arg,
                              int timeout_ms);

/* ======================================================================== */
/* 10. Operator queries (stats)                                             */
/* ======================================================================== */

/* Operator query (used by brokerctl): WHAT is "stats", "services",
 * "workers" or "agents". Waits up to timeout_ms (< 0: the default); other
 * requests' callbacks may run during the wait.
 * Errors: as ab_client_request (AB_EUNSUPPORTED for an unknown WHAT).
 * Owns: on AB_OK *reply holds the broker's protobuf-encoded answer
 * (agentbus.Stats, ServiceList, WorkerList, AgentList: decode with
 * agentbus.pb-c.h), the caller's, freed with ab_free. */
AB_EXPORT int ab_client_control(ab_client_t *client, const char *what, int timeout_ms,
                                void **reply, size_t *reply_size);

/* ======================================================================== */
/* 11. Worker: lifecycle and registration                                   */
/* ======================================================================== */
typedef struct ab_worker ab_worker_t;
typedef struct ab_job ab_job_t; /* one request received by a worker */

/* Creates a worker offering SERVICE (1..255 bytes) with CAPACITY concurrent
 * requests (1..100000). It registers on connect and on every reconnect.
 * The broker sends no more than CAPACITY at once; jobs past twice the
 * capacity plus 1024 held (received and not yet answered), or past 64 MiB
 * of payloads held once over the capacity, are refused with AB_EBUSY at
 * once (a broker that ignores the credit cannot make the worker hold
 * without bound).
 * OPTS may be NULL and is copied.
 * Errors: AB_EINVAL, AB_ENOMEM, AB_EZMQ; *out is NULL then. Owns: on AB_OK
 * *out is the caller's, until ab_worker_destroy. Thread: any thread; the
 * handle then follows the one-thread-at-a-time rule. */
AB_EXPORT int ab_worker_new(ab_worker_t **out, const ab_options_t *opts,
                            const char *service, unsigned capacity);
/* Says BYE to the broker and closes. Jobs not yet answered are freed
 * without an answer: the BYE hands them back to the broker, which
 * re-dispatches them to another worker (or answers AB_EWORKERLOST when a
 * request may not be retried: AB_REQUEST_NON_IDEMPOTENT). While connected
 * it waits up to 1 s for its last replies and the BYE to leave (when the
 * last handle of the process closes). Jobs the application still holds
 * stay valid and must still be freed (ab_job_destroy, safe afterwards).
 * Thread: the handle's, not from inside one of its callbacks. */
AB_EXPORT void ab_worker_destroy(ab_worker_t **worker);
/* Detailed text of the handle's last error ("" if none). With WORKER
 * NULL: why the last ab_worker_new of this thread failed ("" if it did
 * not). Owns: the handle (the thread for NULL); valid until the next call. */
AB_EXPORT const char *ab_worker_last_error(const ab_worker_t *worker);
/* 1 while connected and registered with a broker, else 0 (also for NULL). */
AB_EXPORT int ab_worker_connected(const ab_worker_t *worker);
/* Why the broker does not serve this worker although it answers: AB_OK
 * (0) when it is registered, not yet answered or not reached; else the
 * broker's refusal, read by ab_worker_poll/ab_worker_recv, with its text
 * in ab_worker_last_error:
 *   AB_EDENIED    the CURVE handshake was refused (key not trusted there,
 *                 or none given to a broker that requires one), or the
 *                 key may not register this service or capacity;
 *   AB_ETOOLARGE  the registration is over the broker's register-max-*
 *                 limits (a label, the name: this worker's own settings);
 *   AB_EBUSY      the broker has max-services services already;
 *   others        as the broker answered the REGISTER.
 * The library goes on trying: a refused handshake is retried with a
 * backoff (up to 10 s), a REGISTER when the broker asks for one (it does
 * after a refusal by key, at each heartbeat) and after every reconnect.
 * It is 0 again once a handshake succeeds and a REGISTER is accepted. */
AB_EXPORT int ab_worker_refused(const ab_worker_t *worker);

/* Adds or replaces a free-form label sent with the registration
 * (model=..., gpu=0); KEY non-empty, both copied. Takes effect at the next
 * registration; call before the first recv/poll.
 * Errors: AB_EINVAL (NULL, empty key, more than the label limit), AB_ENOMEM. */
AB_EXPORT int ab_worker_set_label(ab_worker_t *worker, const char *key, const char *value);

/* Changes the worker's capacity (1..100000), e.g. adaptive concurrency.
 * Sent at once (a new registration) when connected and in every heartbeat.
 * Errors: AB_EINVAL, and when connected the registration's send errors. */
AB_EXPORT int ab_worker_set_capacity(ab_worker_t *worker, unsigned capacity);
/* The capacity now (0 for NULL). */
AB_EXPORT unsigned ab_worker_capacity(const ab_worker_t *worker);

/* Sets the protobuf-encoded agentbus.InferenceState (models, loaded models,
 * VRAM, slots; encode with agentbus.pb-c.h) sent with every registration,
 * and registers again at once when connected. The bytes are copied (at
 * most 1 MiB); NULL/0 clears it.
 * Errors: AB_EINVAL, AB_ENOMEM, and when connected the registration's send
 * errors. */
AB_EXPORT int ab_worker_set_inference_state(ab_worker_t *worker, const void *state, size_t size);

/* Free-form state of the worker's backend ("ok", "degraded: ...", at most
 * 63 bytes kept), reported to the broker with each heartbeat and shown by
 * brokerctl workers and ab_discover. Copied. Errors: AB_EINVAL for NULL. */
AB_EXPORT int ab_worker_set_backend_state(ab_worker_t *worker, const char *state);

/* ======================================================================== */
/* 12. Worker: receiving and answering jobs                                 */
/* ======================================================================== */

/* Waits up to timeout_ms (-1 or any negative: forever) for the next request.
 * Errors: AB_EINVAL, AB_ETIMEOUT, AB_ESTOPPED (stopped, or drained after
 * ab_worker_shutdown), AB_EZMQ; *job is NULL then.
 * Owns: on AB_OK the caller owns *job and must end it with ab_worker_reply
 * or ab_worker_fail (or free it with ab_job_destroy). */
AB_EXPORT int ab_worker_recv(ab_worker_t *worker, ab_job_t **job, int timeout_ms);

/* Handler mode: FN is called for each request and owns the job (it ends it
 * now or later, as with ab_worker_recv). */
typedef void(ab_job_fn)(ab_worker_t *worker, ab_job_t *job, void *arg);

/* Processes traffic for up to timeout_ms, calling FN for each request that
 * arrives (at most 1024 per call, so a caller under constant load gets
 * control back). Returns the number of requests handled (>= 0); none in
 * time is no error, and leaves ab_worker_last_error as it was.
 * Errors: AB_EINVAL (NULL FN), AB_ESTOPPED, AB_EZMQ. */
AB_EXPORT int ab_worker_poll(ab_worker_t *worker, int timeout_ms, ab_job_fn *fn, void *arg);
/* Calls ab_worker_poll until ab_worker_stop() or a drained shutdown;
 * returns AB_OK then, or the first other error of ab_worker_poll. */
AB_EXPORT int ab_worker_run(ab_worker_t *worker, ab_job_fn *fn, void *arg);

/* The request's payload and size (NULL and 0 for a NULL job).
 * Owns: the job; valid while the job lives. */
AB_EXPORT const void *ab_job_data(const ab_job_t *job, size_t *size);
/* The request's id (as its client's ab_client_request_start gave it; 0 for
 * NULL). */
AB_EXPORT uint64_t ab_job_id(const ab_job_t *job);
/* Remaining time budget in ms when the job arrived (0 = none given). */
AB_EXPORT uint32_t ab_job_timeout_ms(const ab_job_t *job);
/* The service the request was sent to. Owns: the job ("" for NULL). */
AB_EXPORT const char *ab_job_service(const ab_job_t *job);
/* 1 when the broker vouches that the requester holds the admin role (a
 * broker with --auth curve sets this only for admin keys; a broker without
 * auth for every request), else 0. A worker refuses state-changing jobs
 * (models load/unload) without it, with AB_EDENIED. Thread: any. */
AB_EXPORT int ab_job_admin(const ab_job_t *job);
/* The request's priority as its client set it (ab_request_opts_t.priority,
 * carried unchanged by the broker; 0 when none was set, and for NULL). */
AB_EXPORT uint32_t ab_job_priority(const ab_job_t *job);
/* The model the request named (ab_request_opts_t.model: what the broker
 * placed it by), at most AB_MODEL_MAX bytes; "" when it named none, and for
 * NULL. Owns: the job; valid while the job lives. */
AB_EXPORT const char *ab_job_model(const ab_job_t *job);

/* Sends one chunk of a streamed reply (DATA copied); the job stays open.
 * Errors: AB_EINVAL, AB_EPAYLOADSIZE, AB_EBUSY (queue to the broker full),
 * AB_EZMQ. */
AB_EXPORT int ab_worker_reply_part(ab_worker_t *worker, ab_job_t *job,
                                   const void *data, size_t size);
/* Sends the final reply (DATA copied) and frees the job (*job = NULL), also
 * on error. A job is answered once: after a failed send it is not retried
 * (a reply over the max payload is replaced by an AB_EINTERNAL answer).
 * Errors: AB_EINVAL, AB_EPAYLOADSIZE, AB_EBUSY, AB_EZMQ. */
AB_EXPORT int ab_worker_reply(ab_worker_t *worker, ab_job_t **job, const void *data, size_t size);
/* Fails the request: the client gets STATUS (AB_EAPPLICATION if STATUS is
 * not an AB_E* code) with TEXT (may be NULL; copied). A code the protocol
 * has no ErrorCode for arrives as the nearest it has: the codec's
 * rejections (AB_EFRAMES .. AB_EDECODE, AB_EBATCH, AB_ELZ4, AB_EINLINE) as
 * AB_EMALFORMED, the library's own (AB_EINVAL, AB_ENOMEM, AB_ETIMEOUT,
 * AB_EDISCONNECTED, AB_EZMQ, AB_ESTOPPED) as AB_EINTERNAL. Frees the job
 * (*job = NULL), also on error. Errors: AB_EINVAL, AB_EBUSY, AB_EZMQ. */
AB_EXPORT int ab_worker_fail(ab_worker_t *worker, ab_job_t **job, int status, const char *text);
/* As ab_worker_fail, for a failure after the work may have begun (e.g. a
 * backend's answer cut after its first bytes): the broker hands the request
 * to no other worker, even for AB_EBACKEND or AB_EBACKENDBUSY, which it
 * otherwise re-dispatches before anything streamed (the ERROR carries
 * FLAG_NON_IDEMPOTENT; a broker older than this ignores it). */
AB_EXPORT int ab_worker_fail_begun(ab_worker_t *worker, ab_job_t **job, int status,
                                   const char *text);
/* Frees a job and sets *job = NULL. One not answered yet is answered with
 * AB_EAPPLICATION ("dropped without answering"), so its client is not left
 * waiting and the worker's credit comes back. Safe after the worker was
 * destroyed (then nothing is sent). */
AB_EXPORT void ab_job_destroy(ab_job_t **job);

/* ======================================================================== */
/* 13. Worker: event loop, cancellation, stopping                           */
/* ======================================================================== */

/* Called when the broker cancels job JOB_ID: WHY is AB_EDEADLINE (its
 * deadline passed while the worker held it) or AB_ECANCELLED (the client
 * gave up). The application should stop working on it and end it
 * (ab_worker_fail with AB_ECANCELLED; that answer frees the credit). Jobs
 * cancelled before they were handed out are answered by the library.
 * It runs inside ab_worker_recv/poll/run, on their thread. */
typedef void(ab_cancel_fn)(ab_worker_t *worker, uint64_t job_id, int why, void *arg);
/* Sets (FN) or clears (NULL) the cancel handler. Errors: AB_EINVAL.
 * Owns: ARG stays the caller's while FN is set. */
AB_EXPORT int ab_worker_set_cancel_handler(ab_worker_t *worker, ab_cancel_fn *fn, void *arg);

/* A file descriptor that becomes readable when the worker may have input,
 * for waiting on it together with other I/O (an Ollama worker's HTTP
 * transfers). Edge-triggered (ZMQ_FD semantics): before waiting on it,
 * call ab_worker_poll(worker, 0, ...) and check ab_worker_has_input(),
 * and wake at least every heartbeat interval.
 * Errors: AB_EINVAL, AB_EZMQ. Owns: the library: never read, write or
 * close it; valid until ab_worker_destroy. */
AB_EXPORT int ab_worker_fd(ab_worker_t *worker, int *fd);
/* 1 if a message or job is waiting to be processed now, else 0 (also for
 * NULL). */
AB_EXPORT int ab_worker_has_input(ab_worker_t *worker);
/* Jobs handed out by ab_worker_recv/poll and not yet ended (answered,
 * failed or destroyed): what a draining worker still has to finish, and
 * the in_flight its heartbeats report. 0 for NULL. Thread: the worker's. */
AB_EXPORT unsigned ab_worker_in_flight(const ab_worker_t *worker);

/* Sends the replies gathered for batching now (see ab_client_flush). The
 * library flushes by itself in ab_worker_recv/ab_worker_poll; call this
 * after replying when the next call of those may be far off.
 * Errors: AB_EINVAL, AB_EBUSY, AB_EZMQ. */
AB_EXPORT int ab_worker_flush(ab_worker_t *worker);
/* Sends the worker's heartbeat if one is due (with its load, as
 * ab_worker_poll does), and with it what the turn gathered. For a handler
 * that works long between calls of ab_worker_recv/poll (a large answer
 * put together, a slow decode): the broker hears nothing else from a
 * worker meanwhile, and one silent past its heartbeat interval is taken
 * for dead and its requests sent to others. Cheap when none is due (a
 * coarse clock read): may be called per piece of work.
 * Errors: AB_EINVAL, AB_EBUSY, AB_EZMQ. Thread: the worker's. */
AB_EXPORT int ab_worker_keepalive(ab_worker_t *worker);

/* Makes ab_worker_recv/poll/run return (AB_ESTOPPED, or AB_OK for run) soon,
 * now and from then on. Thread: any thread, and signal handlers. */
AB_EXPORT void ab_worker_stop(ab_worker_t *worker);

/* Graceful stop, e.g. from a SIGTERM handler. The next
 * ab_worker_recv/poll/run tells the broker to send nothing new (BYE with
 * FLAG_DRAINING), keeps processing so the application can finish the jobs
 * it holds, and returns AB_ESTOPPED once none is held or grace_ms (>= 0)
 * has passed. Requests received but not yet handed out are not started;
 * ab_worker_destroy's BYE then hands them, and any job still unanswered,
 * back to the broker for re-dispatch.
 * Thread: any thread, and signal handlers (async-signal-safe). */
AB_EXPORT void ab_worker_shutdown(ab_worker_t *worker, int grace_ms);

#ifdef __cplusplus
}
#endif
#endif /* AGENTBUS_H */
