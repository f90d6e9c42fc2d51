/*
 * keycmd.h - brokerctl keygen (writes a CURVE certificate pair, no broker)
 * and brokerctl keys [reload] (the broker's public key and trusted keys).
 */
#ifndef CTL_KEYCMD_H
#define CTL_KEYCMD_H

#include "agentbus.h"

typedef struct {
    const char *role, *services, *names, *topics, *out_dir;
    long capacity; /* 0: none */
    int force;     /* --force: replace an existing NAME.key / NAME.key_secret */
} ctl_keygen_opts_t;

/* Writes OUT_DIR/NAME.key (public) and NAME.key_secret (mode 0600). Exit
 * status: 0, 1 (cannot write, or either file exists and O->force is not
 * set: nothing is written then), 2 (bad NAME or grant). */
int ctl_keygen(const char *name, const ctl_keygen_opts_t *o, int json);
/* CONTROL "keys" or "keys reload", printed. AB_OK or the error. */
int ctl_keys(ab_client_t *c, int reload, int json, int timeout_ms);

#endif
