/*
 * logline.h - the one format of log lines (base/: built into both common/
 * and tools/lib, see docs/architecture.md), so the broker, the library, the
 * worker and the tools write the same lines.
 *
 * One line per message: RFC 3339 UTC time with milliseconds, level,
 * subsystem, message ("2026-01-02T03:04:05.678Z INFO  router  text"), or in
 * AB_LOG_JSON one JSON object per line with the keys ts, level, subsys, msg.
 *
 * No state and no policy: which levels are on, the format in use and the
 * stream are the caller's (common/log.h for the broker and the library,
 * tools/lib/tl_log.h for the programs outside). Thread-safe.
 */
#ifndef AB_LOGLINE_H
#define AB_LOGLINE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <time.h>

enum { AB_LOG_ERROR = 0, AB_LOG_WARN = 1, AB_LOG_INFO = 2, AB_LOG_DEBUG = 3 };
enum { AB_LOG_TEXT = 0, AB_LOG_JSON = 1 };

/* Parses "error", "warn", "info", "debug" (any case); -1 if unknown. */
int ab_log_level_parse(const char *s);
/* Parses "text" or "json" (any case); -1 if unknown. */
int ab_log_format_parse(const char *s);
/* Formats one line (with its '\n') of FORMAT into BUF of SIZE (>= 128)
 * bytes, at time T; a level out of range is clamped; a message too long for
 * BUF is cut (a JSON line stays valid). Returns the length written, 0 when
 * SIZE is too small. Pure: the writers and the unit test share it. */
size_t ab_log_format_line(char *buf, size_t size, int format, int level, const char *subsys,
                          const struct timespec *t, const char *msg);
/* Formats FMT with AP (cut at 1 KiB) as one line stamped with the current
 * time and writes it to TO in one fwrite, so lines from several threads do
 * not interleave. */
void ab_log_vwrite(FILE *to, int format, int level, const char *subsys, const char *fmt,
                   va_list ap) __attribute__((format(printf, 5, 0)));

#endif
