/*
 * messaging.h - direct messages, agent names, mailboxes and pub/sub, as the
 * broker core sees them: the hooks it calls. Everything else (names,
 * mailboxes, the topic trie, subscriber queues, the backlog) is messaging's
 * own, in msgs.h, shared by msgs.c, mailbox.c and pubsub.c only.
 *
 *   HELLO with a name   ab_mailbox_on_hello (after the HELLO answer)
 *   SEND/PUBLISH/SUBSCRIBE  ab_msgs_route
 *   peer dropped        ab_msgs_peer_gone
 *   each loop turn      ab_msgs_timers; the loop sleeps at most until
 *                       ab_msgs_next_wake (a backlog retry)
 *   end of a loop turn  ab_msgs_turn_end (publications gathered in it go)
 *   CONTROL stats/agents  ab_msgs_stats, ab_msgs_agents_answer
 *
 * Broker thread only. Bounds and answers: docs/messaging.md.
 */
#ifndef AB_BROKER_MESSAGING_H
#define AB_BROKER_MESSAGING_H

#include "broker.h"
#include "agentbus.pb-c.h"

/* Allocates b->msgs and registers its window timer. 0 or -1. */
int ab_msgs_init(ab_broker_t *b);
void ab_msgs_fini(ab_broker_t *b);
/* SEND, PUBLISH, SUBSCRIBE from peer P; BODY (may be NULL) may be moved. */
void ab_msgs_route(ab_broker_t *b, ab_peer_t *p, const ab_header_t *h, zmq_msg_t *body,
                   int64_t now);
/* P is being dropped: unbind its name, remove its subscriptions. */
void ab_msgs_peer_gone(ab_broker_t *b, ab_peer_t *p);
/* Retries the backlog of slow readers when due (see ab_msgs_next_wake). */
void ab_msgs_timers(ab_broker_t *b, int64_t now);
/* End of a loop turn, before the loop sleeps: sends the publications
 * gathered for each subscriber in this turn (pubsub.c). */
void ab_msgs_turn_end(ab_broker_t *b);
/* When the loop must wake for a backlog flush; 0 if it needn't. */
int64_t ab_msgs_next_wake(ab_broker_t *b);
void ab_msgs_stats(ab_broker_t *b, Agentbus__Stats *st);
/* Recounts the mailboxes and the subscriber queues against their totals
 * (audit.h). 0, or -1 with the first difference in WHY. */
int ab_msgs_audit(ab_broker_t *b, char *why, size_t cap);
int ab_msgs_agents_answer(ab_broker_t *b, uint8_t **out, size_t *len);
/* The number of P's agent record (0: no name): it changes with the name,
 * where the record's address may not (a freed one's is given again). */
uint64_t ab_msgs_agent_serial(const ab_peer_t *p);
/* The name P goes by: its agent name, else "~" + its key (in BUF of CAP
 * bytes). The identity of a client for fair queuing (clients.c). */
const char *ab_msgs_sender_name(const ab_peer_t *p, char *buf, size_t cap);
/* One waiting message handed over (ab_mailbox_hand_over): 0 taken (BODY,
 * NULL when empty, may be moved), -1 refused (it stays). CHARGE: what it
 * counted against mailbox-total-bytes; taken, it counts on until the taker
 * gives it back (ab_mailbox_handed_done: the peer broker answered, or the
 * message was put back), so that what waits for peers' answers and what
 * the mailboxes hold stay under one bound. */
typedef int ab_mail_fn(ab_broker_t *b, void *arg, const char *sender, uint64_t id, uint64_t corr,
                       uint32_t flags, int64_t ttl_left_ms, zmq_msg_t *body, size_t charge);
/* A handed-over message of CHARGE bytes no longer waits (ab_mail_fn). */
void ab_mailbox_handed_done(ab_broker_t *b, size_t charge);
/* The name NAME, offline here, is bound on a peer broker now (broker links,
 * link_msg.c): what its mailbox holds goes to FN, oldest first, until FN
 * refuses one; an emptied offline name is forgotten. Returns how many. */
size_t ab_mailbox_hand_over(ab_broker_t *b, const char *name, ab_mail_fn *fn, void *arg,
                            int64_t now);
/* A message handed over (ab_mailbox_hand_over) whose link was lost before
 * the peer broker confirmed it goes back to the FRONT of NAME's mailbox
 * (call it newest first to keep the order). BODY (may be NULL) is moved.
 * An expired one is counted and dropped. 0, or -1 out of memory. */
int ab_mailbox_put_back(ab_broker_t *b, const char *name, const char *sender, uint64_t id,
                        uint64_t corr, uint32_t flags, int64_t expires_ms, zmq_msg_t *body,
                        int64_t now);
/* HELLO with a name: binds it to P or refuses it (ERROR NAME_TAKEN). */
void ab_mailbox_on_hello(ab_broker_t *b, ab_peer_t *p, const char *name, int takeover,
                         uint64_t instance, uint64_t hello_id, int64_t now);

#endif
