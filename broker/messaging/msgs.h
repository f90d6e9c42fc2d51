/*
 * msgs.h - messaging's own state and the calls between its three files
 * (the core sees only messaging.h).
 *
 *   msgs.c     shared state, routing, the backlog, timers, stats, "agents"
 *   mailbox.c  agent names (one live connection each), SEND, mailboxes
 *   pubsub.c   SUBSCRIBE/PUBLISH, the topic trie, per-subscriber queues
 *
 * Never blocking: every send is ab_send_try (router.h, ZMQ_DONTWAIT). A
 * peer whose pipe is full (EAGAIN: its SNDHWM is reached) is not waited for:
 * a direct message goes to the recipient's mailbox, a publication to the
 * subscriber's own bounded queue (drop-oldest, reported as a gap). Both are
 * retried from the event loop's timers ("backlog").
 */
#ifndef AB_BROKER_MSGS_H
#define AB_BROKER_MSGS_H

#include "messaging.h"
#include "batch.h"

#define AB_SUBS_PER_PEER_MAX 1024

typedef struct ab_mail ab_mail_t;
typedef struct ab_tnode ab_tnode_t;

/* A name known to the broker: bound to a live connection, or only a mailbox
 * (offline). Invariant: an offline record holds at least one message; it is
 * freed with its last one (delivered, expired) and taken off the flush list
 * before (mailbox.c s_agent_drop), so no list ever points at a freed one. */
typedef struct ab_agent {
    ab_peer_t *peer;          /* NULL while offline */
    uint64_t instance;        /* Hello.instance of the bound connection */
    uint64_t serial;          /* this record's number, never reused (ab_msgs_t.serials):
                                 a freed record's address may be (clients.c) */
    ab_list_t mail;           /* mailbox (ab_mail_t.link), oldest first */
    ab_defer_node_t later;    /* queued to be dropped after a walk (mailbox.c) */
    uint32_t depth;
    size_t bytes;             /* payload bytes in the mailbox */
    int backlog;              /* 1 while in the flush list */
    char name[];              /* NUL-terminated; also the key in agents */
} ab_agent_t;

/* One publication as the broker holds it for its subscribers: header and
 * payload, and its number (ab_msgs_t.pub_seq; equal numbers mean equal
 * bytes, which lets subscribers share one encoded BATCH, pubsub.c). Shared
 * by every subscriber queue that holds it: REFS is counted by the broker
 * thread alone, so holding one costs no atomic operation (a zmq_msg_copy
 * per subscriber did, and the I/O thread fought over the cache line). */
typedef struct ab_pub {
    zmq_msg_t hdr, body;
    int has_body;
    uint32_t refs;
    uint64_t seq;
    size_t size;              /* header + payload bytes */
    uint64_t psize;           /* its payload as a subscriber's max payload judges it
                                 (ab_payload_size: the original size of an lz4 one) */
} ab_pub_t;

/* One queued publication for a subscriber. */
typedef struct {
    ab_pub_t *pub;
} ab_pubq_t;

typedef struct {
    char *pattern;
    ab_tnode_t *node;
    int prefix;
} ab_subpat_t;

/* A connection with at least one subscription. */
typedef struct ab_subr {
    ab_peer_t *peer;
    ab_subpat_t *pats;
    size_t npats, cap_pats;
    ab_pubq_t *q;             /* ring buffer, grows up to sub-queue-max */
    size_t qcap, qhead, qlen;
    size_t qbytes;            /* header + payload bytes queued (pubsub.c) */
    uint64_t gap;             /* dropped since the last gap notice */
    uint64_t dropped;         /* dropped in total */
    uint64_t too_large;       /* not given: over its max payload (also in GAP) */
    uint64_t mark;            /* last publication matched: deduplicates */
    int backlog;
    ab_list_t turn_link;      /* on ab_fanout_t.turn: publications wait for the turn's end */
} ab_subr_t;

/* Fan-out batching (pubsub.c): subscribers that got publications in this
 * loop turn, and the last BATCH body built for one of them, kept while the
 * next subscriber's queue holds the same publications. */
typedef struct {
    ab_list_t turn;           /* ab_subr_t.turn_link */
    uint64_t turn_us;         /* when the first of this turn's waited */
    uint32_t pubs;            /* publications since the age was last checked */
    int ready;                /* hdr and body initialised */
    zmq_msg_t hdr;            /* a BATCH header, encoded once */
    zmq_msg_t body;           /* the last batch body built */
    uint64_t *seqs;           /* its publications, in order */
    size_t n, cap;
    ab_batch_t scratch;       /* where bodies are encoded */
} ab_fanout_t;

typedef struct {
    uint64_t sent, delivered, queued, expired, refused, receipts;
    uint64_t published, fanout, slow_drops, no_subscribers;
    uint64_t too_large;       /* SENDs over the recipient's max payload (mailbox.c) */
    uint64_t pub_too_large;   /* publications over a subscriber's max payload (pubsub.c) */
    uint64_t prev_fanout;
    int64_t prev_ms;
    double fanout_per_s;
} ab_msgs_counters_t;

typedef struct ab_msgs {
    zhashx_t *agents;          /* name -> ab_agent_t (owned) */
    size_t total_bytes;        /* all mailboxes, with overheads */
    size_t handed_bytes;       /* charged for messages handed over to a peer broker until
                                  its answer (ab_mail_fn): with TOTAL_BYTES, under
                                  mailbox-total-bytes */
    uint32_t mailbox_msgs;
    uint32_t bound;            /* agent records bound to a live connection */
    uint64_t serials;          /* ab_agent_t.serial of the newest record */
    ab_agent_t **blog_agents;  /* online agents with a non-empty mailbox */
    size_t n_blog_agents, cap_blog_agents;
    ab_subr_t **blog_subs;     /* subscribers with queued publications */
    size_t n_blog_subs, cap_blog_subs;
    int64_t next_flush_ms, flush_ivl_ms;
    ab_tnode_t *root;
    uint32_t topics;           /* distinct patterns subscribed */
    uint32_t subscribers;
    uint64_t pub_seq;
    ab_fanout_t fan;
    ab_msgs_counters_t c;
} ab_msgs_t;

/* The owners' parts of ab_msgs_audit (mailbox.c, pubsub.c). */
int ab_mailbox_audit(ab_broker_t *b, char *why, size_t cap);
int ab_pubsub_audit(ab_broker_t *b, char *why, size_t cap);

/* msgs.c */
/* The name messages from P carry: its agent name, else "~" + hex id. */
const char *ab_msgs_sender_name(const ab_peer_t *p, char *buf, size_t cap);
void ab_msgs_refuse(ab_broker_t *b, const ab_rid_t *rid, uint64_t id, uint32_t code,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void ab_msgs_backlog_agent(ab_broker_t *b, ab_agent_t *a);
/* Takes A off the flush list, if it is on it (before A is unbound or freed). */
void ab_msgs_unbacklog_agent(ab_broker_t *b, ab_agent_t *a);
void ab_msgs_backlog_sub(ab_broker_t *b, ab_subr_t *s);

/* mailbox.c */
void ab_mailbox_on_send(ab_broker_t *b, ab_peer_t *p, const ab_header_t *h, zmq_msg_t *body,
                        int64_t now);
/* Delivers what the mailbox of online agent A holds, in order, while the
 * pipe takes it. Returns messages sent; sets *done when it is empty. */
size_t ab_mailbox_flush(ab_broker_t *b, ab_agent_t *a, int64_t now, int *done);
void ab_mailbox_expire(ab_broker_t *b, int64_t now);
void ab_mailbox_unbind(ab_broker_t *b, ab_peer_t *p);
void ab_agent_free(void **item);

/* pubsub.c */
void ab_pubsub_on_subscribe(ab_broker_t *b, ab_peer_t *p, const ab_header_t *h);
void ab_pubsub_on_publish(ab_broker_t *b, ab_peer_t *p, const ab_header_t *h, zmq_msg_t *body);
size_t ab_pubsub_flush(ab_broker_t *b, ab_subr_t *s, int *done);
/* End of a loop turn: sends what each subscriber got in it (one BATCH when
 * it reads them); what its pipe refuses goes to the backlog. */
void ab_pubsub_turn_end(ab_broker_t *b);
void ab_pubsub_peer_gone(ab_broker_t *b, ab_peer_t *p);
void ab_pubsub_fini(ab_broker_t *b);

#endif
