/*
 * msgtest.h - helpers for the direct-message and pub/sub tests: agents
 * that record what they receive, bounded waits, raw ZeroMQ peers.
 */
#ifndef AB_MSGTEST_H
#define AB_MSGTEST_H

#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "codec.h"

#include <stddef.h>
#include <stdint.h>

#define MT_MAX 4096

/* Everything one handle's message handler saw, in order. */
typedef struct {
    int n;
    int type[MT_MAX];
    int status[MT_MAX];
    uint64_t id[MT_MAX], reply_to[MT_MAX];
    char sender[MT_MAX][80];
    char target[MT_MAX][64];
    char data[MT_MAX][64];
    uint64_t dropped; /* sum of GAP counts */
    int count[8];     /* per ab_msg_type_t */
} mt_box_t;

/* A client named NAME (NULL: unnamed), TAKEOVER as in the options, whose
 * messages land in BOX (may be NULL: then ab_client_recv works). */
ab_client_t *mt_agent(int port, const char *name, int takeover, mt_box_t *box);
/* Records what C receives in BOX (cleared), as mt_agent does. */
void mt_box_attach(ab_client_t *c, mt_box_t *box);
/* Polls C until BOX counted WANT messages of TYPE (0: of any type), at
 * most timeout_ms. Returns the count reached. */
int mt_wait(ab_client_t *c, mt_box_t *box, int type, int want, int timeout_ms);
/* Polls all N clients for MS milliseconds. */
void mt_pump(ab_client_t **cs, int n, int ms);
/* The broker's AgentList (free with agentbus__agent_list__free_unpacked). */
Agentbus__AgentList *mt_agents(ab_client_t *ctl);
/* Waits until NAME is bound to a live connection (1) or timeout (0). */
int mt_wait_bound(ab_client_t *ctl, const char *name, int timeout_ms);
/* A raw DEALER (its own context in *CTX) connected to the broker. */
void *mt_raw(int port, void **ctx);
/* Sends KIND with TARGET and id ID (+ payload of SIZE bytes of 'x') on RAW,
 * then waits up to 2 s for an ERROR answering ID. Its error code, or -1. */
int mt_raw_expect_error(void *raw, uint32_t kind, const char *target, uint64_t id, size_t size,
                        char *text, size_t cap);
/* Sends H and, when DATA is not NULL, a payload frame, never blocking (a
 * hostile peer's flood may go nowhere; what does not fit is dropped). */
void mt_raw_send(void *s, const ab_header_t *h, const void *data, size_t size);

#endif
