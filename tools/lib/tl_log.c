/* tl_log.c - see tl_log.h. */
#include "tl_log.h"

#include <stdarg.h>
#include <stdio.h>

int tl_log_level = TL_LOG_INFO;
int tl_log_format = TL_LOG_TEXT;

void tl_log_write(int level, const char *subsys, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ab_log_vwrite(stderr, tl_log_format, level, subsys, fmt, ap);
    va_end(ap);
}
