/*
 * clitest.h - what the command-line tests (test_cli.c, test_cli_out.c)
 * share: a command line run through the shell, its output kept.
 */
#ifndef AB_CLITEST_H
#define AB_CLITEST_H

#include "harness.h"

#include <string.h>

#define CTL th_bin("brokerctl")

/* The output of the last cli_sh (stdout and stderr). */
extern char cli_out[65536];

/* Runs a command line built from FMT; its exit status, output in cli_out. */
int cli_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define HAS(s) (strstr(cli_out, (s)) != NULL)

#endif
