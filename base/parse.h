/*
 * parse.h - strict number parsing (base/: built into both common/ and
 * tools/lib, see docs/architecture.md). Thread-safe; no allocation.
 */
#ifndef AB_PARSE_H
#define AB_PARSE_H

/* Parses S as a whole decimal number in [MIN, MAX] into *OUT: digits with
 * an optional leading '-', nothing else. 0 on success; -1 (and *OUT
 * untouched) for NULL, "", a leading blank or '+', trailing characters,
 * overflow or a value out of range. */
int ab_parse_long(const char *s, long min, long max, long *out);

#endif
