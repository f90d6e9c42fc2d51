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
    gw_key_t *keys;
    size_t n;
    char *idents[GW_IDENTS_MAX]; /* KEYFILE paths, one bus connection each */
    unsigned n_idents;
    atomic_ullong unauthorized;  /* requests refused: no token or an unknown one */
} gw_keys_t;

/* Reads PATH into *KEYS. The file must not be readable or writable by group
 * or others (it holds secrets), NAMEs and TOKENs must be unique, TOKENs at
 * least GW_TOKEN_MIN characters. 0, or -1 with the reason (file and line)
 * in ERR. */
int gw_keys_load(gw_keys_t *keys, const char *path, char *err, size_t cap);
void gw_keys_free(gw_keys_t *keys);

/* The key whose token is the bearer token in AUTHORIZATION (the header's
 * value, "Bearer TOKEN"), or NULL. Every entry is compared in constant
 * time, so the answer's timing says nothing about the tokens. */
gw_key_t *gw_keys_find(gw_keys_t *keys, const char *authorization);

#endif
