/* parse.c - see parse.h. */
#include "parse.h"

#include <errno.h>
#include <stdlib.h>

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
