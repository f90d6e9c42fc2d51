/* parse.c - see parse.h. */
#include "parse.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ab_parse_long(const char *s, long min, long max, long *out)
{
    /* strtol takes leading blanks and a '+': "--capacity ' 5'" passed */
    if (!s || !(*s == '-' || (*s >= '0' && *s <= '9')))
        return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static size_t s_digits(const char *s)
{
    size_t n = 0;
    while (s[n] >= '0' && s[n] <= '9')
        n++;
    return n;
}

/* The length of the decimal number at S (0: none there). */
static size_t s_decimal_len(const char *s)
{
    size_t n = *s == '-', whole = s_digits(s + n), frac = 0;
    n += whole;
    if (s[n] == '.') {
        frac = s_digits(s + n + 1);
        n += 1 + frac;
    }
    if (!whole && !frac)
        return 0;
    if (s[n] == 'e' || s[n] == 'E') {
        size_t sign = s[n + 1] == '-' || s[n + 1] == '+', exp = s_digits(s + n + 1 + sign);
        if (exp)
            n += 1 + sign + exp;
    }
    return n;
}

size_t ab_parse_decimal_prefix(const char *s, double *out)
{
    size_t n = s ? s_decimal_len(s) : 0;
    char buf[64];
    if (!n || n >= sizeof buf)
        return 0;
    /* strtod on a copy of just the decimal part: on S it would read
     * "0x10" as 16 where only the "0" is decimal. */
    memcpy(buf, s, n);
    buf[n] = '\0';
    errno = 0;
    double v = strtod(buf, NULL); /* beyond a double: ERANGE (no inf or nan from digits) */
    if (errno)
        return 0;
    *out = v;
    return n;
}

int ab_parse_double(const char *s, double min, double max, double *out)
{
    double v;
    size_t n = ab_parse_decimal_prefix(s, &v);
    if (!n || s[n] || !(v >= min && v <= max))
        return -1;
    *out = v;
    return 0;
}

int ab_parse_weight_item(const char *spec, size_t *pos, long max, ab_weight_item_t *it,
                         char *why, size_t cap)
{
    const char *p = spec + *pos;
    p += strspn(p, ", ");
    if (!*p)
        return 0;
    size_t n = strcspn(p, ", ");
    *it = (ab_weight_item_t){.item = p, .item_len = n};
    *pos = (size_t)(p + n - spec);
    if (memchr(p, ';', n)) {
        snprintf(why, cap, "';' is no separator (NAME=WEIGHT items are separated by ',' or "
                           "spaces, e.g. voice=4,planner=2)");
        return -1;
    }
    const char *eq = NULL; /* the last '=' */
    for (const char *q = p; q < p + n; q++)
        eq = *q == '=' ? q : eq;
    char num[24] = "";
    size_t nl = eq ? n - (size_t)(eq + 1 - p) : 0;
    if (eq && nl && nl < sizeof num)
        memcpy(num, eq + 1, nl);
    if (!eq || eq == p || ab_parse_long(num, 1, max, &it->weight) != 0) {
        snprintf(why, cap, "expected NAME=WEIGHT with WEIGHT 1..%ld", max);
        return -1;
    }
    it->name_len = (size_t)(eq - p);
    return 1;
}
