/*
 * log.h - level-checked logging to stderr for the broker and the library.
 *
 * The line format (text or JSON) is base/logline.h's, shared with the
 * programs outside (tools/lib/tl_log.h); this adds the levels in force, the
 * stream, the macros and the rate limiter.
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

#include "logline.h"

#include <stdint.h>

#ifndef AB_LOG_SUBSYS
#define AB_LOG_SUBSYS "core"
#endif

extern int ab_log_level;
extern int ab_log_format; /* AB_LOG_TEXT or AB_LOG_JSON */

void ab_log_write(int level, const char *subsys, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

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
