/*
 * tl_log.h - log lines for the programs outside the broker (worker, tools):
 * the level in force, the format in use and the macros; the lines
 * themselves are base/logline.h's, the same as the broker writes (RFC 3339
 * UTC time with milliseconds, level, subsystem, message; or one JSON object
 * per line with tl_log_format = TL_LOG_JSON).
 *
 * Nothing is formatted when the level is off. Lines go to stderr, one write
 * each. Not thread-safe to change the level or format while logging.
 */
#ifndef TL_LOG_H
#define TL_LOG_H

#include "logline.h"

#include <stddef.h>
#include <time.h>

enum {
    TL_LOG_ERROR = AB_LOG_ERROR,
    TL_LOG_WARN = AB_LOG_WARN,
    TL_LOG_INFO = AB_LOG_INFO,
    TL_LOG_DEBUG = AB_LOG_DEBUG
};
enum { TL_LOG_TEXT = AB_LOG_TEXT, TL_LOG_JSON = AB_LOG_JSON };

extern int tl_log_level;  /* default TL_LOG_INFO */
extern int tl_log_format; /* default TL_LOG_TEXT */

void tl_log_write(int level, const char *subsys, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* "error", "warn", "info", "debug" -> level; -1 if unknown. */
static inline int tl_log_level_parse(const char *s)
{
    return ab_log_level_parse(s);
}

/* "text" or "json" -> format; -1 if unknown. */
static inline int tl_log_format_parse(const char *s)
{
    return ab_log_format_parse(s);
}

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
