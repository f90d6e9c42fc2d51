/*
 * gw_keys.h - the gateway's API keys (--api-keys FILE): bearer tokens an
 * HTTP client must present, each mapped to a bus identity.
 *
 * The file has one key per line, `NAME TOKEN [KEYFILE]`; blank lines and
 * lines starting with '#' are skipped. NAME labels the key in /metrics and
 * logs; TOKEN is what clients send (`Authorization: Bearer TOKEN`, as the
 * OpenAI clients do with their apiKey); KEYFILE, when given, is a secret
 * certificate (`brokerctl keygen`) the calls made with this token use on
 * the bus, so the broker applies that key's role and grants to them.
 * Without KEYFILE the calls use the gateway's own connection (--key).
 * docs/gateway.md, "API keys".
 */
#ifndef GW_KEYS_H
#define GW_KEYS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

#define GW_KEYS_MAX 1024      /* entries in one file */
#define GW_IDENTS_MAX 32      /* distinct KEYFILEs: one bus connection each */
#define GW_TOKEN_MIN 16       /* shortest token accepted */
#define GW_TOKEN_MAX 256

typedef struct {
    char name[64];
    char token[GW_TOKEN_MAX + 1];
    size_t token_len;
    unsigned ident;           /* 0: the gateway's own connection; i > 0: idents[i - 1] */
    atomic_ullong requests;   /* HTTP requests authorised with this key */
} gw_key_t;

typedef struct {
    gw_key_t *keys;              /* KEYS and N: read under LOCK (a reload swaps them) */
    size_t n;
    char *idents[GW_IDENTS_MAX]; /* KEYFILE paths, one bus connection each; fixed at start */
    unsigned n_idents;
    int on;                      /* a file was loaded: every API call needs a key */
    atomic_ullong unauthorized;  /* requests refused: no token or an unknown one */
    pthread_rwlock_t lock;       /* initialised by gw_keys_load when ON */
} gw_keys_t;

/* Reads PATH into *KEYS. The file must not be readable or writable by group
 * or others (it holds secrets), NAMEs and TOKENs must be unique, TOKENs at
 * least GW_TOKEN_MIN characters, each KEYFILE a secret certificate the
 * library can use. 0, or -1 with the reason (file and line) in ERR. */
int gw_keys_load(gw_keys_t *keys, const char *path, char *err, size_t cap);
void gw_keys_free(gw_keys_t *keys);

/* Whether the bearer token in AUTHORIZATION (the header's value, "Bearer
 * TOKEN") is a key's: 1, with the request counted against that key and its
 * bus identity in *IDENT; else 0. Every entry is compared in constant time,
 * so the answer's timing says nothing about the tokens. Any thread. */
int gw_keys_authorize(gw_keys_t *keys, const char *authorization, unsigned *ident);

/* Reads PATH again (SIGHUP) and, when it passes every check of
 * gw_keys_load and names only key files that were in it at start (a new
 * bus identity needs a new connection: a restart), makes it the keys in
 * use at once. Request counts carry over by key name. 0, or -1 with the
 * reason in ERR and the keys in use unchanged. */
int gw_keys_reload(gw_keys_t *keys, const char *path, char *err, size_t cap);

#endif
