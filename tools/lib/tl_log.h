/*
 * tl_log.h - log lines for the programs outside the broker (worker, tools),
 * in the broker's format (common/log.h, which they may not include): RFC
 * 3339 UTC time with milliseconds, level, subsystem, message; or one JSON
 * object per line (ts, level, subsys, msg) with tl_log_format = TL_LOG_JSON.
 *
 * Nothing is formatted when the level is off. Lines go to stderr, one write
 * each. Not thread-safe to change the level or format while logging.
 */
#ifndef TL_LOG_H
#define TL_LOG_H

#include <stddef.h>
#include <time.h>

enum { TL_LOG_ERROR = 0, TL_LOG_WARN = 1, TL_LOG_INFO = 2, TL_LOG_DEBUG = 3 };
enum { TL_LOG_TEXT = 0, TL_LOG_JSON = 1 };

extern int tl_log_level;  /* default TL_LOG_INFO */
extern int tl_log_format; /* default TL_LOG_TEXT */

void tl_log_write(int level, const char *subsys, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* "error", "warn", "info", "debug" -> level; -1 if unknown. */
int tl_log_level_parse(const char *s);
/* "text" or "json" -> format; -1 if unknown. */
int tl_log_format_parse(const char *s);
/* One line (with its '\n') into BUF of SIZE (>= 128) bytes at time T; a long
 * message is cut and a JSON line stays valid. Returns its length. */
size_t tl_log_format_line(char *buf, size_t size, int format, int level, const char *subsys,
                          const struct timespec *t, const char *msg);

#define TL_LOG(level, subsys, ...)                                                                 \
    do {                                                                                           \
        if ((level) <= tl_log_level)                                                               \
            tl_log_write((level), (subsys), __VA_ARGS__);                                          \
    } while (0)
#define TL_ERR(subsys, ...) TL_LOG(TL_LOG_ERROR, subsys, __VA_ARGS__)
#define TL_WARN(subsys, ...) TL_LOG(TL_LOG_WARN, subsys, __VA_ARGS__)
#define TL_INFO(subsys, ...) TL_LOG(TL_LOG_INFO, subsys, __VA_ARGS__)
#define TL_DEBUG(subsys, ...) TL_LOG(TL_LOG_DEBUG, subsys, __VA_ARGS__)

#endif
