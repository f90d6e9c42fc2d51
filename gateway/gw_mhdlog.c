/* gw_mhdlog.c - see gw_mhdlog.h. */
#include "gw_mhdlog.h"
#include "tl_clock.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

/* One rate limit: libmicrohttpd's messages, or the gateway's own. */
typedef struct {
    const char *who;            /* after "agentbus-gateway: " */
    int64_t window_ms;          /* start of the current window */
    unsigned lines;             /* lines written in it */
    unsigned long long skipped;
} s_limit_t;

static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static s_limit_t s_mhd = {.who = "libmicrohttpd: "}, s_own = {.who = ""};

/* Under the lock: the line for the messages of L left out, if any. */
static void s_say_skipped(s_limit_t *l)
{
    if (!l->skipped)
        return;
    fprintf(stderr, "agentbus-gateway: %s%llu more message(s) not shown (at most "
            "%d per %d s)\n", l->who, l->skipped, GW_MHDLOG_LINES, GW_MHDLOG_WINDOW_MS / 1000);
    l->skipped = 0;
}

/* MSG as one line under L's limit (control bytes written as '?'). */
static void s_emit(s_limit_t *l, char *msg)
{
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)msg[i] < 0x20 || msg[i] == 0x7f)
            msg[i] = '?';
    int64_t now = tl_now_ms();
    pthread_mutex_lock(&s_lock);
    if (!l->window_ms || now - l->window_ms >= GW_MHDLOG_WINDOW_MS) {
        s_say_skipped(l);
        l->window_ms = now;
        l->lines = 0;
    }
    if (l->lines < GW_MHDLOG_LINES) {
        l->lines++;
        fprintf(stderr, "agentbus-gateway: %s%s\n", l->who, msg);
    } else {
        l->skipped++;
    }
    pthread_mutex_unlock(&s_lock);
}

/* Set by gw_mhdlog_client_gone on the thread whose handler returns MHD_NO
 * for a departed client; libmicrohttpd logs its reaction on that thread. */
static _Thread_local int s_gone;

void gw_mhdlog_client_gone(void)
{
    s_gone = 1;
}

void gw_mhdlog_call(void)
{
    s_gone = 0;
}

void gw_mhdlog(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (s_gone && strncmp(msg, "Application reported internal error", 35) == 0) {
        s_gone = 0; /* a client that hung up: nothing went wrong here */
        return;
    }
    s_emit(&s_mhd, msg);
}

void gw_log_limited(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    s_emit(&s_own, msg);
}

void gw_mhdlog_flush(void)
{
    pthread_mutex_lock(&s_lock);
    s_say_skipped(&s_mhd);
    s_say_skipped(&s_own);
    pthread_mutex_unlock(&s_lock);
}
