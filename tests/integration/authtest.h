/*
 * authtest.h - helpers of the authentication tests (authtest.c): keys made
 * by brokerctl keygen in a data dir, a broker with --auth curve, and peers
 * proving a key, libagentbus clients and raw CURVE DEALERs.
 */
#ifndef AB_AUTHTEST_H
#define AB_AUTHTEST_H

#include "codec.h"
#include "agentbus.h"

#include <stdint.h>
#include <sys/types.h>

extern char at_data[512]; /* the broker's --data-dir */

/* Runs a shell command; REQUIREs exit 0. */
void at_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* brokerctl keygen NAME ARGS into <data>/certs; TRUST: into the keys dir too. */
void at_key(const char *name, const char *args, int trust);
const char *at_secret(const char *name); /* NAME's secret key file */
const char *at_broker_pub(void);         /* the broker's public key file */
/* The data dir with a broker keypair and an admin key, which the test's
 * own clients (th_client, th_broker's probe) prove. */
void at_setup(void);
pid_t at_broker(int port); /* --auth curve on that data dir */
/* A client proving key NAME (NULL: none at all), named AGENT (or unnamed). */
ab_client_t *at_client(int port, const char *name, const char *agent, int takeover);
/* An echo worker proving KEY for SERVICE (EXTRA: its --capacity, or NULL). */
pid_t at_worker(int port, const char *key, const char *service, const char *extra);
int at_log_count(pid_t pid, const char *text);
int at_log_has(pid_t pid, const char *text, int timeout_ms);
/* A request's status; its answer's text into OUT (CAP bytes) when OUT. */
int at_request(ab_client_t *c, const char *service, const char *data, int timeout_ms,
               char *out, size_t cap);
/* A raw DEALER proving key NAME (its own context in *CTX), with routing id
 * ID (at_raw_as; NULL: libzmq's). */
void *at_raw(int port, const char *name, void **ctx);
void *at_raw_as(int port, const char *name, const char *id, void **ctx);
void at_raw_send(void *raw, ab_header_t *h, const char *data);
/* RAW registers SERVICE as a worker of capacity 1. */
void at_raw_register(void *raw, const char *service);
/* The next message of KIND on RAW within MS (polling C, and a HEARTBEAT
 * from BEAT every 100 ms); its header's id (or correlation id), or 0. */
uint64_t at_raw_next(void *raw, uint32_t kind, int ms, ab_client_t *c, void *beat);
long at_denied(const char *name); /* key NAME's `denied` in brokerctl keys, or -1 */
int at_port_with_ep(void);        /* a free port, its endpoint in AB_TEST_EP */

/* An answer kept by at_keep (an ab_client_request_start callback). */
typedef struct {
    int done, status;
    char data[64];
} at_answer_t;
void at_keep(ab_client_t *c, const ab_reply_event_t *ev, void *arg);

#endif
