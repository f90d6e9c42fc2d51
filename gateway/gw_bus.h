/*
 * gw_bus.h - the gateway's one bus connection, owned by one thread.
 *
 * libagentbus handles are used by one thread at a time, and HTTP requests
 * arrive on libmicrohttpd's pool threads, so those threads never touch
 * the handle: they hand a gw_call_t to the bus thread (gw_bus_submit), which
 * starts the request and appends each reply event to the call. The call is
 * shared, guarded by its own mutex and counted: one reference for the HTTP
 * side, one for the bus side while the request is in flight. A waiter (the
 * HTTP side) is told through WAKE and RESUME whenever an event arrives.
 * GW_OP_WORKERS calls go on from the bus thread to a lookup thread with a
 * connection of its own (operator queries only block), which delivers
 * their one event the same way.
 */
#ifndef GW_BUS_H
#define GW_BUS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct gw_bus gw_bus_t;

/* One reply event, in arrival order. */
typedef struct gw_event {
    struct gw_event *next;
    int status;   /* AB_OK, or the error that ended the request */
    int final;
    size_t size;
    uint8_t data[];
} gw_event_t;

typedef enum { GW_OP_REQUEST = 1, GW_OP_WORKERS = 2 } gw_op_t;

typedef struct gw_call gw_call_t;
/* WAKE runs with the call's lock held when an event arrives and says
 * whether the waiter must be resumed; RESUME then runs without the lock
 * (it calls into libmicrohttpd, which takes locks of its own). */
typedef int(gw_wake_fn)(gw_call_t *call);
typedef void(gw_resume_fn)(gw_call_t *call);

struct gw_call {
    pthread_mutex_t lock;
    atomic_int refs;      /* not under lock: a submit may run while it is held */
    /* set before gw_bus_submit, read-only afterwards */
    gw_op_t op;
    uint8_t *pb;          /* request payload (freed with the call) */
    size_t pb_len;
    char model[256];
    int timeout_ms;       /* <= 0: the gateway's default */
    uint32_t cache_flags; /* AB_CACHE_* */
    uint32_t priority;    /* carried in the header: the broker's lane (AB_PRIORITY_*) */
    unsigned ident;       /* bus connection: 0 the gateway's own, i > 0 the i-th identity */
    gw_wake_fn *wake;
    gw_resume_fn *resume;
    void *owner;          /* the HTTP side's state */
    size_t max_queued;    /* bytes of events waiting for the HTTP side past which a
                           * stream is cut (0: no bound; a stream's client that does not
                           * read would otherwise have every token pile up here) */
    atomic_ullong *overflows; /* counts the calls cut so (NULL: not counted) */
    size_t max_whole;     /* a stream: false answer's bytes (its events together), or
                           * with WHOLE_EACH a streamed answer's chunk's, past which
                           * the call ends AB_EBACKEND and is cancelled (0: no bound) */
    int whole_each;
    /* under lock: what arrived */
    gw_event_t *head, *tail;
    size_t queued;        /* bytes of the events waiting (head to tail) */
    int overflow;         /* past MAX_QUEUED: the events were dropped, and are from now
                           * on; the HTTP side ends the answer with an error (shuts its
                           * connection) and the bus thread cancels the request */
    size_t whole;         /* bytes of its events so far (or of the last one) */
    int whole_cut;        /* past MAX_WHOLE: the events were dropped, and are from now
                           * on (the final one too); the call ended there */
    int final;            /* the final event has been appended */
    int status;           /* of the final event */
    char error[512];
    int gone;             /* the client left before the final event: the call was
                           * cancelled, counted once (gw_bus_cancelled), and is
                           * not answered */
    int watch_fd;         /* HTTP side: the client socket watched, or -1 */
    /* bus thread only */
    gw_bus_t *bus;        /* the bus it was submitted to (set when it starts) */
    uint64_t id;
    int started, ended;
    int hungup;           /* the client closed its connection */
};

/* Starts the bus thread, connected to ENDPOINT as a client named NAME ("" =
 * unnamed), with the key of $AB_KEY if any; and one more unnamed client
 * per path in IDENTS (N_IDENTS of them), each with that secret certificate
 * as its key: the bus identities of the API keys (gw_keys.h). A call's
 * IDENT picks its connection. DEFAULT_TIMEOUT_MS applies to calls without
 * their own. Returns NULL (with a reason on stderr) on failure. */
gw_bus_t *gw_bus_new(const char *endpoint, const char *name, int default_timeout_ms,
                     const char *service, char *const *idents, unsigned n_idents);
/* Makes the bus thread also wait for FD to be readable and call RUN(ARG)
 * each turn (after reading FD, and again after the bus events, so a
 * connection resumed by an event answers in the same turn), and once more
 * after its last events when stopping. RUN returns the ms until it wants
 * to run again without FD becoming readable (-1: not before). For serving
 * HTTP on this thread: no hand-off between an HTTP thread and the bus
 * thread either way. Call once, before any HTTP request can arrive. */
typedef int(gw_io_fn)(void *arg);
void gw_bus_serve(gw_bus_t *bus, int fd, gw_io_fn *run, void *arg);
/* Wakes the bus thread for a turn: for a connection resumed from another
 * thread (the offload thread), which the bus thread then runs (with
 * --threads 0 it serves HTTP). Any thread. */
void gw_bus_wake(gw_bus_t *bus);
/* Stops the thread: calls in flight end with AB_ESTOPPED (their WAKE runs);
 * later submits fail. The handle stays valid for submit/cancel (which then
 * do nothing) until gw_bus_destroy, so HTTP threads may still call them. */
void gw_bus_stop(gw_bus_t *bus);
/* Stops (if not yet) and frees. Sets *bus = NULL. */
void gw_bus_destroy(gw_bus_t **bus);

/* A new call with one reference (the caller's); NULL when out of memory. */
gw_call_t *gw_call_new(gw_op_t op);
void gw_call_unref(gw_call_t *call);

/* Hands CALL to the bus thread (which takes its own reference). Any thread.
 * -1 when the bus is stopping or out of memory (nothing was taken). */
int gw_bus_submit(gw_bus_t *bus, gw_call_t *call);
/* Asks the bus thread to cancel CALL's request (CANCEL reaches the worker
 * and its backend) if it is still in flight: its client left. Any thread,
 * without CALL's lock. */
void gw_bus_cancel(gw_bus_t *bus, gw_call_t *call);

/* Watches FD, CALL's client socket, while the call waits: if the client
 * hangs up, the bus thread cancels the request (as gw_bus_cancel). Takes a
 * reference. HTTP side, once per call. */
void gw_bus_watch(gw_bus_t *bus, gw_call_t *call, int fd);
/* Stops watching (before libmicrohttpd closes the socket: the completion
 * hook); the reference goes on the bus thread. */
void gw_bus_unwatch(gw_bus_t *bus, gw_call_t *call);
/* Clients seen hanging up while waiting. Any thread. */
unsigned long long gw_bus_hangups(const gw_bus_t *bus);
/* Calls whose client left before their final event, by a hang-up seen by
 * the watch or by gw_bus_cancel: each counted once. Any thread. */
unsigned long long gw_bus_cancelled(const gw_bus_t *bus);
/* Whether CALL's client left before its end (CALL->gone). Any thread,
 * without CALL's lock. */
int gw_call_gone(gw_call_t *call);

/* Takes the oldest event of CALL (caller holds the lock; free it with
 * free()), or NULL. Once CALL->overflow is set there is none but the
 * final one, if it came. */
gw_event_t *gw_call_pop(gw_call_t *call);

/* Appends an event of CALL (the bus side: the bus or lookup thread,
 * holding none of CALL's locks) and tells the waiter, within the call's
 * bounds (MAX_QUEUED, MAX_WHOLE; each event charged its record too).
 * Returns 2 if this event cut the call (a bound passed: the caller cancels
 * the request unless the event was final), else 0, or 1 when it was
 * dropped after such a cut. Does not drop the bus's reference. */
int gw_call_deliver(gw_call_t *call, int status, int final, const void *data, size_t size,
                    const char *text);

/* 1 while the bus connection is up. Any thread. */
int gw_bus_connected(const gw_bus_t *bus);

/* Operator queries (GW_OP_WORKERS calls, and the probe below) run on a
 * lookup thread with a connection of its own, never on the bus thread:
 * each waits at most GW_BUS_LOOKUP_MS for the broker, and fails at once
 * (AB_EDISCONNECTED) while the bus connection is down. */
enum { GW_BUS_LOOKUP_MS = 5000 };
/* The lookup thread asks the broker for its stats when it has not answered
 * for GW_BUS_PROBE_MS; one silent for GW_BUS_SILENT_MS is unresponsive
 * (/healthz), though its TCP connection may still be up (SIGSTOP). */
enum { GW_BUS_PROBE_MS = 1000, GW_BUS_SILENT_MS = 3000 };
/* Milliseconds since the broker last answered the lookup thread, or -1 if
 * it never has. Any thread. */
long long gw_bus_heard_ms(const gw_bus_t *bus);
/* 1 while the bus connection is up and the broker was heard within
 * GW_BUS_SILENT_MS (/healthz, /metrics). Any thread. */
int gw_bus_responsive(const gw_bus_t *bus);

#endif
