/* infer.h - brokerctl's inference commands (generate, chat, embed, models). */
#ifndef CTL_INFER_H
#define CTL_INFER_H

#include "agentbus.h"

#include <signal.h>
#include <stddef.h>

/* Runs generate|chat|embed|"models load|unload" with its ARGC/ARGV (after
 * the command word). --json among them sets *json. Returns AB_OK or the
 * error (ERR gets its text); AB_EINVAL for bad arguments (usage printed). */
int ctl_infer(ab_client_t *c, const char *cmd, int argc, char **argv, int *json,
                 int timeout_ms, volatile sig_atomic_t *stop, char *err, size_t errcap);
/* brokerctl models: per inference worker its backend, slots, VRAM and models. */
int ctl_models(ab_client_t *c, int json, int timeout_ms);

#endif
