/*
 * parse.h - strict number parsing (base/: built into both common/ and
 * tools/lib, see docs/architecture.md). Thread-safe; no allocation.
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

#endif
