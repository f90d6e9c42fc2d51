/* gw_mhdlog.c - see gw_mhdlog.h. */
#include "gw_mhdlog.h"
#include "tl_clock.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t s_window_ms; /* start of the current window */
static unsigned s_lines;     /* lines written in it */
static unsigned long long s_skipped;

/* Under the lock: the line for the messages left out, if any. */
static void s_say_skipped(void)
{
    if (!s_skipped)
        return;
    fprintf(stderr, "agentbus-gateway: libmicrohttpd: %llu more message(s) not shown (at most "
            "%d per %d s)\n", s_skipped, GW_MHDLOG_LINES, GW_MHDLOG_WINDOW_MS / 1000);
    s_skipped = 0;
}

void gw_mhdlog(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)msg[i] < 0x20 || msg[i] == 0x7f)
            msg[i] = '?';
    int64_t now = tl_now_ms();
    pthread_mutex_lock(&s_lock);
    if (!s_window_ms || now - s_window_ms >= GW_MHDLOG_WINDOW_MS) {
        s_say_skipped();
        s_window_ms = now;
        s_lines = 0;
    }
    if (s_lines < GW_MHDLOG_LINES) {
        s_lines++;
        fprintf(stderr, "agentbus-gateway: libmicrohttpd: %s\n", msg);
    } else {
        s_skipped++;
    }
    pthread_mutex_unlock(&s_lock);
}

void gw_mhdlog_flush(void)
{
    pthread_mutex_lock(&s_lock);
    s_say_skipped();
    pthread_mutex_unlock(&s_lock);
}
