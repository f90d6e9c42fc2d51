/*
 * auth.h - authentication and authorization (--auth curve): the hooks the
 * core calls. docs/security.md is the user's side of it.
 *
 * Authentication happens once per connection, in libzmq's CURVE handshake:
 * the broker answers ZAP (RFC 27) requests itself, on its own loop, from the
 * table of trusted keys (auth_keys.c), and names the proven public key as the
 * connection's User-Id. Every message then carries that User-Id as metadata;
 * the core looks its key up (ab_auth_of_msg) and asks, per message, whether
 * the key's role and grants allow it (ab_auth_check and the may_ calls).
 * Nothing a peer writes in a header decides who it is.
 *
 * ipc endpoints are bound without CURVE (their socket file is 0700 and the
 * directory is expected to be the broker user's): a connection that proved
 * no key is the local operator and holds the admin role.
 *
 * With auth off every call here allows everything and keys are NULL.
 * Broker thread only.
 */
#ifndef AB_AUTH_H
#define AB_AUTH_H

#include "broker.h"

typedef enum {
    AB_KEYROLE_AGENT = 0, /* request, send, listen, publish, subscribe */
    AB_KEYROLE_WORKER,    /* register its granted services, answer what it is given */
    AB_KEYROLE_ADMIN,     /* everything, with the control verbs that change state */
    AB_KEYROLE_PEER,      /* broker-to-broker links (issue 15): link HELLO, request */
    AB_KEYROLE_COUNT
} ab_keyrole_t;

/* A trusted key with its grants (auth_keys.c). Lives while it is trusted:
 * removing it closes every connection that proved it first, so a peer's
 * pointer to its key never dangles. */
typedef struct ab_key ab_key_t;

/* Sets up auth before any bind: the broker's keypair (created on first
 * start), the trusted keys, the ZAP handler. 0, or -1 (logged). Nothing
 * to do when auth is off. */
int ab_auth_init(ab_broker_t *b);
void ab_auth_fini(ab_broker_t *b);
/* Binds the ROUTER to EP with the endpoint's security: CURVE server for tcp
 * when auth is on, plain for ipc (socket file created 0700). 0 or -1
 * (errno as zmq_bind's). */
int ab_auth_bind(ab_broker_t *b, const char *ep);
/* At exit, after the socket closed: removes the socket file of ipc
 * endpoint EP (libzmq leaves it), unless another process listens there. */
void ab_auth_ipc_unlink(const char *ep);
/* The ZAP socket for the loop's poll set; NULL when auth is off. */
void *ab_auth_zap_socket(ab_broker_t *b);
/* Answers every ZAP request waiting (handshakes of new connections). */
void ab_auth_on_zap(ab_broker_t *b);

/* The key the connection of a received message proved. FRAME is any frame
 * of the message but the routing id. 0 with *KEY (NULL when auth is off),
 * or -1: a key no longer trusted (the message is to be dropped). */
int ab_auth_of_msg(ab_broker_t *b, zmq_msg_t *frame, const ab_key_t **key);

/* May key K send a message of H's kind (and, for CONTROL, its verb; for
 * REQUEST, to its service)? 1, or 0 with *WHY. K NULL: auth off, 1. */
int ab_auth_check(ab_broker_t *b, const ab_key_t *k, const ab_header_t *h, const char **why);
/* May K register SERVICE with CAPACITY? 1, or 0 with *WHY. */
int ab_auth_may_register(ab_broker_t *b, const ab_key_t *k, const char *service,
                         uint32_t capacity, const char **why);
/* May K take agent name NAME? 1, or 0 with *WHY. */
int ab_auth_may_name(const ab_key_t *k, const char *name, const char **why);
/* 1 when K holds the admin role (or auth is off): the broker vouches for it
 * to workers with AB_FLAG_ADMIN (models load/unload). */
int ab_auth_is_admin(const ab_key_t *k);
/* 1 when K may answer requests as a worker does (worker, peer broker or
 * admin role; or auth is off): a late answer, matched to a request by the
 * routing id of a worker it went to, is taken only from such a key. */
int ab_auth_may_answer(const ab_key_t *k);
/* Counts a refusal for K, logs it (rate-limited per key) and answers the
 * sender RID of H with ERROR(DENIED) and WHY. */
void ab_auth_deny(ab_broker_t *b, const ab_key_t *k, const ab_rid_t *rid, const ab_header_t *h,
                  const char *why);

/* The identity of a peer's connection: its key's public key (Z85, 40
 * characters), "local" for an ipc connection with auth on, NULL with auth
 * off. For per-key accounting (quotas, issue 16). */
const char *ab_peer_identity(const ab_peer_t *p);
/* The key's name (its certificate's "name"), "local", or NULL. */
const char *ab_key_name(const ab_key_t *k);

/* Broker links (issue 15, broker/link/). Makes SOCK a CURVE client of the
 * peer broker whose Z85 public key is SERVER, proving this broker's key.
 * 0, or -1 (logged); auth off: 0, nothing set (a plain link). */
int ab_auth_link_client(ab_broker_t *b, void *sock, const char *server);
/* 1 when K may hold a broker link: role peer, or auth off (K NULL). */
int ab_auth_is_peer(const ab_key_t *k);
/* The trusted key with Z85 public key PUB, or NULL (also with auth off). */
const ab_key_t *ab_auth_key_lookup(ab_broker_t *b, const char *pub);
/* Changes whenever the keys are read again (never 0 with auth on; 0 with
 * auth off): what ab_auth_key_lookup returned holds while it is unchanged. */
uint64_t ab_auth_keys_gen(const ab_broker_t *b);
/* K's role (ab_keyrole_t), or -1 for NULL. */
int ab_key_role(const ab_key_t *k);
/* K's Z85 public key, or NULL for NULL (auth off). */
const char *ab_key_pub(const ab_key_t *k);

/* A peer was created with key K / is being dropped (broker.c). */
void ab_auth_peer_new(ab_peer_t *p, const ab_key_t *k);
void ab_auth_peer_gone(ab_peer_t *p);

/* CONTROL "keys" (KeyList) and "keys reload" (admin). 0 with *OUT (malloc,
 * caller frees), or a wire error code with *ERR. */
int ab_auth_control(ab_broker_t *b, const char *what, uint8_t **out, size_t *len,
                    const char **err);
/* Called when SIGHUP was seen: reloads the keys directory. */
void ab_auth_reload(ab_broker_t *b);
/* Handshakes the ZAP handler accepted and refused (unknown key, no CURVE). */
void ab_auth_handshakes(const ab_broker_t *b, uint64_t *accepted, uint64_t *refused);

#endif
