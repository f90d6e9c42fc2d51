/* log.c - see log.h. */
#include "log.h"
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

int ab_log_level = AB_LOG_INFO;

void ab_log_write(int level, const char *fmt, ...)
{
    static const char *names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
    char ts[32];
    struct timespec t;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &t);
    gmtime_r(&t.tv_sec, &tm);
    strftime(ts, sizeof ts, "%H:%M:%S", &tm);
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s.%03ld %-5s %s\n", ts, t.tv_nsec / 1000000,
            names[level < 0 ? 0 : level > 3 ? 3 : level], line);
}

int ab_log_level_parse(const char *s)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (strcasecmp(s, names[i]) == 0)
            return i;
    return -1;
}

int ab_ratelimit_allow(ab_ratelimit_t *rl, uint64_t key, int64_t now_ms, uint64_t *suppressed)
{
    ab_ratelimit_slot_t *s = &rl->slots[key % AB_RATELIMIT_SLOTS];
    int64_t ivl = rl->interval_ms > 0 ? rl->interval_ms : 10000;
    if (s->key != key || s->window_start_ms == 0 || now_ms - s->window_start_ms >= ivl) {
        *suppressed = s->key == key ? s->suppressed : 0;
        s->key = key;
        s->window_start_ms = now_ms ? now_ms : 1;
        s->suppressed = 0;
        return 1;
    }
    s->suppressed++;
    return 0;
}
