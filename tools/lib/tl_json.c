/*
 * tl_json.c - JSON text with short reals (tl_json.h).
 */
#include "tl_json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

int tl_json_real_digits(double v, double *snap)
{
    /* A float widened to double is kept as that float: its shortest text
     * has at most 9 digits. Any other double keeps all its bits. */
    int as_float = isfinite(v) && (double)(float)v == v;
    char buf[40];
    for (int p = 1; p < 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, v);
        double r = strtod(buf, NULL);
        if (as_float ? (float)r == (float)v : r == v) {
            if (snap)
                *snap = r;
            return p;
        }
    }
    if (snap)
        *snap = v;
    return 17;
}

/* Sets each real under J to the value of its shortest text; the most
 * digits any of them needs (0 when there are none). */
static int s_shorten(json_t *j)
{
    int most = 0, d;
    size_t i;
    const char *k;
    json_t *x;
    if (json_is_real(j)) {
        double snap;
        most = tl_json_real_digits(json_real_value(j), &snap);
        json_real_set(j, snap);
    } else if (json_is_array(j)) {
        json_array_foreach(j, i, x) {
            if ((d = s_shorten(x)) > most)
                most = d;
        }
    } else if (json_is_object(j)) {
        json_object_foreach(j, k, x) {
            if ((d = s_shorten(x)) > most)
                most = d;
        }
    }
    return most;
}

char *tl_json_dumps(json_t *j, size_t flags)
{
    if (!j)
        return NULL;
    /* One precision for the whole text: "%.*g" with more digits than a
     * value needs prints the same text (trailing zeros dropped) as long as
     * it stays under 16; from 16 on, the snapped doubles would show their
     * binary tail, so all go out with 17 (still exact, only longer). */
    int p = s_shorten(j);
    if (p == 0 || p > 15)
        p = 17;
    return json_dumps(j, flags | JSON_REAL_PRECISION(p));
}
