/*
 * parse.h - strict number parsing and the NAME=WEIGHT list reader (base/:
 * built into both common/ and tools/lib, see docs/architecture.md).
 * Thread-safe; no allocation.
 */
#ifndef AB_PARSE_H
#define AB_PARSE_H

#include <stddef.h>

/* Parses S as a whole decimal number in [MIN, MAX] into *OUT: digits with
 * an optional leading '-', nothing else. 0 on success; -1 (and *OUT
 * untouched) for NULL, "", a leading blank or '+', trailing characters,
 * overflow or a value out of range. */
int ab_parse_long(const char *s, long min, long max, long *out);

/* Parses S as a whole decimal number in [MIN, MAX] into *OUT: an optional
 * '-', digits with an optional '.' and fraction, an optional exponent (e or
 * E, an optional sign, digits). Nothing else: strtod also took a leading
 * blank or '+', hex ("0x10" was 16), "inf" and "nan". 0 on success; -1
 * (and *OUT untouched) for NULL, "", anything after the number, a value
 * beyond a double's range or outside [MIN, MAX]. */
int ab_parse_double(const char *s, double min, double max, double *out);

/* The decimal number (as ab_parse_double takes it) at the start of S, for
 * a number followed by a unit ("1.5s", "8G"): its length, with its value
 * in *OUT; 0 (and *OUT untouched) when S does not start with one or its
 * value is beyond a double's range. */
size_t ab_parse_decimal_prefix(const char *s, double *out);

/* One item of a NAME=WEIGHT list ("voice=4,planner=2": items separated by
 * ',' or spaces, empty items skipped). NAME is the item up to its last '='
 * (a name may hold one) and is not NUL-terminated. */
typedef struct {
    const char *item; /* the item as written, ITEM_LEN bytes */
    size_t item_len;
    size_t name_len; /* NAME: the first NAME_LEN bytes of ITEM */
    long weight;
} ab_weight_item_t;

/* Reads the next item of SPEC from *POS into *IT and moves *POS past it.
 * 1 for an item; 0 at the end of SPEC; -1 for a bad item (*IT names it),
 * with what is wrong with it in WHY (CAP bytes): a ';' in it (no
 * separator), or no NAME=WEIGHT with WEIGHT in [1, MAX]. The one reader of
 * --client-weights, for the start-up check and the broker that applies it. */
int ab_parse_weight_item(const char *spec, size_t *pos, long max, ab_weight_item_t *it,
                         char *why, size_t cap);

#endif
