/* infer.h - brokerctl's inference commands (generate, chat, embed, models). */
#ifndef CTL_INFER_H
#define CTL_INFER_H

#include "agentbus.h"
#include "cli.h"

#include <signal.h>
#include <stddef.h>

/* Runs generate|chat|embed|"models load|unload" with its NPOS arguments
 * POS (after the command word; checked by cli.c) and flags F. Returns AB_OK
 * or the error (ERR gets its text). */
int ctl_infer(ab_client_t *c, const char *cmd, int npos, const char *const *pos,
              const ctl_infer_flags_t *f, int json, int timeout_ms, volatile sig_atomic_t *stop,
              char *err, size_t errcap);
/* brokerctl models: per inference worker its backend, slots, VRAM and models;
 * those of SERVICE only unless it is NULL (--service given: it was ignored). */
int ctl_models(ab_client_t *c, const char *service, int json, int timeout_ms);

#endif
