/*
 * log.h - level-checked logging to stderr.
 *
 * One line per message: RFC 3339 UTC time with milliseconds, level,
 * subsystem, message ("2026-01-02T03:04:05.678Z INFO  router  text"), or with
 * ab_log_format = AB_LOG_JSON one JSON object per line with the keys ts,
 * level, subsys and msg.
 *
 * The subsystem is AB_LOG_SUBSYS where the macro is used: a .c file defines
 * it (a string literal) before its first #include; "core" when it does not.
 *
 * Nothing is formatted when the level is off. AB_LOG_RL limits a message a
 * remote party can trigger to one line per key per interval, and reports how
 * many were suppressed.
 */
#ifndef AB_LOG_H
#define AB_LOG_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#ifndef AB_LOG_SUBSYS
#define AB_LOG_SUBSYS "core"
#endif

enum { AB_LOG_ERROR = 0, AB_LOG_WARN = 1, AB_LOG_INFO = 2, AB_LOG_DEBUG = 3 };
enum { AB_LOG_TEXT = 0, AB_LOG_JSON = 1 };

extern int ab_log_level;
extern int ab_log_format; /* AB_LOG_TEXT or AB_LOG_JSON */

void ab_log_write(int level, const char *subsys, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Parses "error", "warn", "info", "debug"; -1 if unknown. */
int ab_log_level_parse(const char *s);
/* Parses "text" or "json"; -1 if unknown. */
int ab_log_format_parse(const char *s);
/* Formats one line (with its '\n') of FORMAT into BUF of SIZE bytes, at time
 * T; a message too long for BUF is cut (a JSON line stays valid). Returns the
 * length written. Pure: the writer and the unit test share it. */
size_t ab_log_format_line(char *buf, size_t size, int format, int level, const char *subsys,
                          const struct timespec *t, const char *msg);

#define AB_LOG(level, ...)                                                                         \
    do {                                                                                           \
        if ((level) <= ab_log_level)                                                               \
            ab_log_write((level), AB_LOG_SUBSYS, __VA_ARGS__);                                     \
    } while (0)
#define AB_ERROR(...) AB_LOG(AB_LOG_ERROR, __VA_ARGS__)
#define AB_WARN(...) AB_LOG(AB_LOG_WARN, __VA_ARGS__)
#define AB_INFO(...) AB_LOG(AB_LOG_INFO, __VA_ARGS__)
#define AB_DEBUG(...) AB_LOG(AB_LOG_DEBUG, __VA_ARGS__)

/* Rate limiter: a small fixed table of (key, window start, suppressed). */
typedef struct {
    uint64_t key;
    int64_t window_start_ms;
    uint64_t suppressed;
} ab_ratelimit_slot_t;

#define AB_RATELIMIT_SLOTS 64
typedef struct {
    ab_ratelimit_slot_t slots[AB_RATELIMIT_SLOTS];
    int64_t interval_ms;
} ab_ratelimit_t;

/* Returns 1 if a message with KEY may be logged now; then *suppressed holds
 * how many were dropped for this key since the last one logged. */
int ab_ratelimit_allow(ab_ratelimit_t *rl, uint64_t key, int64_t now_ms, uint64_t *suppressed);

#define AB_LOG_RL(rl, key, now, level, fmt, ...)                                                  \
    do {                                                                                           \
        uint64_t ab_sup_;                                                                          \
        if ((level) <= ab_log_level && ab_ratelimit_allow((rl), (key), (now), &ab_sup_))          \
            ab_log_write((level), AB_LOG_SUBSYS, fmt " (%llu similar suppressed)", __VA_ARGS__,   \
                         (unsigned long long)ab_sup_);                                            \
    } while (0)

#endif
