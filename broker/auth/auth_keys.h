/*
 * auth_keys.h - the table of trusted keys: loaded from the public
 * certificates of a directory, reloaded in place, grants matched by glob.
 * Shared by auth.c only; no broker state here (a unit test can drive it).
 */
#ifndef AB_AUTH_KEYS_H
#define AB_AUTH_KEYS_H

#include "auth.h"

#include <czmq.h>

#define AB_KEY_TXT 41 /* Z85 public key and its NUL */

struct ab_key {
    char pub[AB_KEY_TXT];
    char name[64];
    ab_keyrole_t role;
    char *services; /* comma-separated globs; "" none (static for auth.c's own records) */
    char *names;
    char *topics;
    uint32_t capacity; /* 0: the broker's cap */
    uint64_t denied;   /* refusals since loaded */
    uint32_t conns;    /* peers that proved it */
    int seen;          /* found by the current reload */
};

typedef struct {
    zhashx_t *by_pub; /* pub -> ab_key_t (owned) */
    char *dir;
    uint64_t gen;     /* counts reloads: a record found in one stays alive until the next */
} ab_keys_t;

/* An empty table for DIR (copied). NULL out of memory. */
ab_keys_t *ab_keys_new(const char *dir);
void ab_keys_destroy(ab_keys_t **keys);
/* Reads DIR again: keys still there keep their record (grants updated in
 * place), new ones are added, and the records of keys gone are moved to
 * GONE (a zlistx the caller frees with ab_key_free after closing their
 * connections). Returns the number of keys trusted, or -1 when DIR cannot
 * be read (the table is then unchanged). */
int ab_keys_reload(ab_keys_t *keys, zlistx_t *gone);
/* Changes with every ab_keys_reload (never 0): a record ab_keys_lookup
 * returned may be kept while it is unchanged. */
uint64_t ab_keys_gen(const ab_keys_t *keys);
void ab_key_free(ab_key_t **k);
/* The trusted key with Z85 public key PUB, or NULL. */
ab_key_t *ab_keys_lookup(ab_keys_t *keys, const char *pub);

/* 1 when S matches one of the comma-separated globs of LIST. */
int ab_glob_list_match(const char *list, const char *s);
/* Role names: "agent", "worker", "admin", "peer"; -1 for another. */
int ab_keyrole_parse(const char *s);
const char *ab_keyrole_name(ab_keyrole_t r);

#endif
