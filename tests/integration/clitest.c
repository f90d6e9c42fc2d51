/*
 * clitest.c - the command-line tests' shell runner (clitest.h).
 */
#include "clitest.h"

#include <stdarg.h>
#include <stdio.h>

char cli_out[65536];

int cli_sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return th_run(cmd, cli_out, sizeof cli_out);
}
