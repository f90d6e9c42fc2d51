/* log.c - see log.h. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>

int ab_log_level = AB_LOG_INFO;
int ab_log_format = AB_LOG_TEXT;

void ab_log_write(int level, const char *subsys, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ab_log_vwrite(stderr, ab_log_format, level, subsys, fmt, ap);
    va_end(ap);
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
