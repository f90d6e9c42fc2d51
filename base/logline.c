/* logline.c - see logline.h. */
#include "logline.h"
#include "text.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static const char *s_upper[] = {"ERROR", "WARN", "INFO", "DEBUG"};
static const char *s_lower[] = {"error", "warn", "info", "debug"};

static int s_clamp(int level)
{
    return level < 0 ? 0 : level > 3 ? 3 : level;
}

/* Appends S to BUF (at *len, SIZE bytes), as JSON string content when JSON,
 * else as text; stops before an escape that would not fit whole, so the
 * line stays valid. A message carries names peers chose: a control byte
 * (a newline that would start a forged line, a terminal escape) is escaped
 * in both formats, and so are C1 controls (U+0080-U+009F) and bytes that
 * are not UTF-8 (as the text "\xNN"), so a line is one line of valid UTF-8
 * whatever a peer sent. A tab stays a tab in text. */
static void s_append(char *buf, size_t size, size_t *len, const char *str, int json)
{
    const unsigned char *s = (const unsigned char *)str;
    while (*s) {
        unsigned char c = *s;
        size_t seq = ab_utf8_seq(s), n;
        char esc[16];
        int c1 = seq == 2 && c == 0xC2 && s[1] < 0xA0; /* a C1 control */
        int plain = seq == 0 ? 0 : seq > 1 ? !c1 : (c >= 0x20 && c != 0x7f) || (!json && c == '\t');
        if (json && (c == '"' || c == '\\'))
            plain = 0;
        if (plain)
            memcpy(esc, s, seq), n = seq;
        else if (seq == 0) /* not UTF-8: the byte's value as text */
            n = (size_t)snprintf(esc, sizeof esc, json ? "\\\\x%02X" : "\\x%02X", c), seq = 1;
        else if (!json)
            n = (size_t)snprintf(esc, sizeof esc, c1 ? "\\xC2\\x%02X" : "\\x%02X", s[seq - 1]);
        else if (c1)
            n = (size_t)snprintf(esc, sizeof esc, "\\u%04x", s[1]);
        else if (c == '"' || c == '\\')
            n = (size_t)snprintf(esc, sizeof esc, "\\%c", c);
        else if (c == '\n' || c == '\t')
            n = (size_t)snprintf(esc, sizeof esc, c == '\n' ? "\\n" : "\\t");
        else
            n = (size_t)snprintf(esc, sizeof esc, "\\u%04x", c);
        if (*len + n >= size)
            return;
        memcpy(buf + *len, esc, n);
        *len += n;
        s += seq;
    }
}

size_t ab_log_format_line(char *buf, size_t size, int format, int level, const char *subsys,
                          const struct timespec *t, const char *msg)
{
    char ts[40], day[24];
    struct tm tm;
    gmtime_r(&t->tv_sec, &tm);
    strftime(day, sizeof day, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts, sizeof ts, "%s.%03ldZ", day, (long)(t->tv_nsec / 1000000));
    level = s_clamp(level);
    if (size < 128)
        return 0;
    if (format != AB_LOG_JSON) {
        int n = snprintf(buf, size - 1, "%s %-5s %-9s ", ts, s_upper[level], subsys);
        size_t len = n < 0 ? 0 : (size_t)n >= size - 1 ? size - 2 : (size_t)n;
        s_append(buf, size - 1, &len, msg, 0);
        buf[len++] = '\n';
        buf[len] = '\0';
        return len;
    }
    /* Reserve room for the closing "}\n so a cut message still closes. */
    size_t len = 0, cap = size - 3;
    len = (size_t)snprintf(buf, cap, "{\"ts\":\"%s\",\"level\":\"%s\",\"subsys\":\"", ts,
                           s_lower[level]);
    s_append(buf, cap, &len, subsys, 1);
    if (len + 9 < cap) {
        memcpy(buf + len, "\",\"msg\":\"", 9);
        len += 9;
        s_append(buf, cap, &len, msg, 1);
    }
    memcpy(buf + len, "\"}\n", 4);
    return len + 3;
}

void ab_log_vwrite(FILE *to, int format, int level, const char *subsys, const char *fmt,
                   va_list ap)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    char msg[1024], line[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = ab_log_format_line(line, sizeof line, format, level, subsys, &t, msg);
    fwrite(line, 1, n, to);
}

int ab_log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcasecmp(s, s_lower[i]) == 0)
            return i;
    return -1;
}

int ab_log_format_parse(const char *s)
{
    if (strcasecmp(s, "text") == 0)
        return AB_LOG_TEXT;
    if (strcasecmp(s, "json") == 0)
        return AB_LOG_JSON;
    return -1;
}
