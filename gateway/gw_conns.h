/*
 * gw_conns.h - the header deadline (--header-timeout-ms): every HTTP
 * connection, from its accept or the end of its previous request, must
 * complete its next request's headers within the deadline, or it is closed;
 * and the body deadline (--body-timeout-ms): a request's body must have
 * arrived within its deadline from the end of its headers, or its
 * connection is closed the same way.
 *
 * Why: libmicrohttpd's own timeout (--idle-timeout-s) restarts on every
 * byte, and a connection still reading its headers has not reached the
 * access handler, so --max-in-flight does not see it either: sockets that
 * dribble a header byte a second held every connection slot forever, and
 * /healthz and every real client were refused (slowloris). An idle
 * keep-alive connection is waiting for headers too, so it is held at most
 * as long. Past its headers a request is admitted (it holds a
 * --max-in-flight slot) and its body comes: a client that sent the body a
 * byte every few seconds held the connection and the slot forever, so a
 * few of them refused every real request with 503.
 *
 * The connections waiting for headers are on one list, oldest first (a
 * connection goes to its tail when it starts waiting), under a mutex:
 * libmicrohttpd's callbacks add and remove them from whichever thread runs
 * the connection (the bus thread with --threads 0, a pool thread with
 * --threads N); the requests whose body is coming are on a second list,
 * oldest first, under the same mutex (a connection is on one list at most:
 * waiting for headers, for a body, or for neither while its request is
 * answered). gw_conns_reap closes the expired ones from any thread
 * with shutdown(2), which makes libmicrohttpd see the socket end and close
 * it on its own thread. Only shutdown is done from outside: the socket is
 * closed by libmicrohttpd after its CLOSED notification, which takes the
 * same mutex, so the fd reaped is still this connection's.
 *
 * And the send deadline (--send-timeout-ms): once its answer is queued, a
 * request whose client does not take what the gateway has sent it is cut.
 * libmicrohttpd's timeout restarts on every byte written, so a client that
 * read its answer a byte every few seconds held its connection, its
 * --max-in-flight slot and the rest of its answer in memory for as long
 * as it liked. How slow is slow is told by the kernel, not by a clock on
 * our writes: at each check (one per deadline) the bytes in the socket's
 * send queue (sent but not acknowledged, or not sent) must have been
 * acknowledged by the next check, a deadline later. A client that reads
 * what comes has an empty queue whenever the answer is slow to come (a
 * long stream of tokens is never cut); only bytes that sat in our buffers
 * a whole deadline are the client's fault. The answers going out are on a
 * third list, oldest check first, under the same mutex.
 */
#ifndef GW_CONNS_H
#define GW_CONNS_H

#include "list.h"

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

/* Why a connection was closed at its header deadline (the labels of
 * agentbus_gateway_header_timeouts_total). */
typedef enum {
    GW_HT_IDLE = 0, /* nothing of a request arrived: an idle keep-alive or an unused socket */
    GW_HT_PARTIAL,  /* part of a request's headers arrived, not the end of them */
    GW_HT_EVICTED   /* before its deadline, to make room for a new connection at the cap */
} gw_ht_t;

/* A connection must have waited this long for headers to be evicted at
 * the cap (gw_conns_evict): a client sends its headers in one go, so one
 * still without them after a second is slow, idle or hostile. */
#define GW_EVICT_MIN_MS 1000
/* Answers gw_conns_evict looks at for one whose client does not take it,
 * per call; and gw_conns_reap samples for it, per GW_PROBE_MS. */
#define GW_EVICT_SCAN 64
/* How often gw_conns_reap samples the answers going out, so that one whose
 * client stopped reading is evictable GW_EVICT_MIN_MS (plus at most this)
 * after, whenever the cap is reached. */
#define GW_PROBE_MS 100

typedef struct {
    pthread_mutex_t lock;
    ab_list_t waiting;        /* gw_sock_t waiting for headers, oldest first */
    ab_list_t body;           /* gw_sock_t whose request's body is coming, oldest first */
    ab_list_t sending;        /* gw_sock_t whose answer goes out, oldest check first */
    uint64_t deadline_us;     /* headers; 0: no deadline */
    uint64_t body_deadline_us; /* bodies; 0: no deadline */
    uint64_t send_deadline_us; /* answers (--send-timeout-ms); 0: no deadline */
    uint64_t probe_due_us;    /* when gw_conns_reap next samples the answers going out */
    atomic_ullong timeouts[3]; /* connections closed waiting for headers, by gw_ht_t */
    atomic_ullong body_timeouts; /* connections closed waiting for a request's body */
    atomic_ullong body_evictions; /* closed at the cap while their request's body came */
    atomic_ullong send_timeouts; /* closed: their client did not take its answer */
    atomic_ullong reader_evictions; /* closed at the cap: their client did not take its answer */
    unsigned n_conns;         /* connections open (under lock) */
    /* --threads N: the thread that reaps (with --threads 0 the bus thread
     * calls gw_conns_reap itself), and evicts at the cap */
    pthread_t thread;
    int running, stop;
    pthread_cond_t wake;
    int lfd;                  /* the listening socket (its accept queue) */
    unsigned limit;           /* --max-connections */
    /* --max-connections-per-ip with --threads 0 (gw_conns_limit_per_ip):
     * connections open per IPv4 address, open addressing (IP_N[i] 0: slot
     * free), under lock */
    unsigned per_ip;          /* 0: not counted */
    unsigned ip_cap;          /* a power of two, at least twice the connections */
    uint32_t *ip_addr;
    unsigned *ip_n;
} gw_conns_t;

/* Sets up T for a header deadline of MS ms, a body deadline of BODY_MS and
 * a send deadline of SEND_MS (0: none; with none, everything else is a
 * no-op). gw_conns_destroy after the daemons are stopped. */
void gw_conns_init(gw_conns_t *t, unsigned ms, unsigned body_ms, unsigned send_ms);
void gw_conns_destroy(gw_conns_t *t);

/* Counts the connections open per client address (IPv4), for a limit of
 * PER_IP each, at most MAX_CONNS open in all (--threads 0, where the
 * gateway accepts: libmicrohttpd's MHD_OPTION_PER_IP_CONNECTION_LIMIT
 * counts per daemon, and there are several). Before the daemons start. 0,
 * or -1 out of memory. */
int gw_conns_limit_per_ip(gw_conns_t *t, unsigned per_ip, unsigned max_conns);
/* Whether ADDR (network order) has the per-address limit's connections
 * open already (0 when there is no limit). The thread that adds the
 * connections (--threads 0: the bus thread, which also runs their
 * notifications, so the count cannot change between this and the add). */
int gw_conns_ip_full(gw_conns_t *t, uint32_t addr);
/* The connections counted open from ADDR, and one more or one less (the
 * connection notifications count them; these are for the unit test).
 * Any thread, without T's lock. */
unsigned gw_conns_ip_count(gw_conns_t *t, uint32_t addr);
void gw_conns_ip_add(gw_conns_t *t, uint32_t addr);
void gw_conns_ip_drop(gw_conns_t *t, uint32_t addr);

/* libmicrohttpd's MHD_OPTION_NOTIFY_CONNECTION callback (CLS is the
 * gw_conns_t): a connection starts waiting for its first request's headers
 * at STARTED, and leaves the list at CLOSED (before libmicrohttpd closes
 * its socket). */
void gw_conns_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                     enum MHD_ConnectionNotificationCode toe);

/* The access handler's first call for a request: its headers are
 * complete, the header deadline stops and the body deadline starts. The
 * thread running CONN. */
void gw_conns_headers_done(gw_conns_t *t, struct MHD_Connection *conn);
/* The access handler's first call with the request's body all in (none
 * for a GET): the body deadline stops, before any parse (the offload
 * thread's too) or wait for the bus, which it does not bound. The thread
 * running CONN; once per request is enough. */
void gw_conns_body_done(gw_conns_t *t, struct MHD_Connection *conn);
/* The request's answer is queued, its body all in: the send deadline
 * starts (its first check only starts the count: nothing was sent yet).
 * The thread running CONN. */
void gw_conns_reply_started(gw_conns_t *t, struct MHD_Connection *conn);
/* The request ended (completion hook): the connection waits for the next
 * request's headers from now. The thread running CONN. */
void gw_conns_request_done(gw_conns_t *t, struct MHD_Connection *conn);

/* Shuts down every connection past its header or body deadline at NOW_US
 * (tl_now_us), and every one whose answer's client did not take, by its
 * check, the bytes queued for it at the check before (its queue is
 * dropped: SO_LINGER 0); each is counted once, body and send timeouts
 * also said on stderr (rate limited, gw_log_limited). And every
 * GW_PROBE_MS, while answers go out, samples the first GW_EVICT_SCAN of
 * them for gw_conns_evict (two system calls each). Any thread. Returns the
 * ms until the next connection's deadline, check or sampling (-1: none). */
int gw_conns_reap(gw_conns_t *t, uint64_t now_us);

/* At the connection cap: shuts down the connection that has waited
 * longest for headers, if at least MIN_WAIT_US, so that a new connection
 * can have its slot (a slowloris client that reconnects as fast as its
 * sockets are reaped otherwise keeps every slot); if none has, the
 * request whose body has been coming longest, if at least MIN_WAIT_US
 * (slow bodies held the cap the same way: a client sends its body with
 * its headers); if none has, an answer whose client has not acknowledged,
 * MIN_WAIT_US after a sample of its socket (taken by gw_conns_reap ahead
 * of the cap, or here), the bytes that sample saw sent or queued for it
 * (readers that do not read held the cap as well; its send queue is
 * dropped, SO_LINGER 0). Returns the daemon of the
 * connection shut down (run it to free the slot), or NULL if none waited
 * long enough (none on a list without its deadline). Counted as
 * GW_HT_EVICTED, in body_evictions or in reader_evictions (the last two
 * said on stderr, rate limited). Any thread. */
struct MHD_Daemon *gw_conns_evict(gw_conns_t *t, uint64_t now_us, uint64_t min_wait_us);

/* --threads N: a thread that reaps every 100 ms at most (libmicrohttpd's
 * pool has no hook to run it), and evicts (gw_conns_evict) while LIMIT
 * connections are open and connections wait in the accept queue of LFD
 * (libmicrohttpd at its limit leaves them there); 0 or -1. */
int gw_conns_start_thread(gw_conns_t *t, int lfd, unsigned limit);
/* Stops that thread (before the daemon closes LFD); gw_conns_destroy
 * does it too. */
void gw_conns_stop_thread(gw_conns_t *t);

#endif
