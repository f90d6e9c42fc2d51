/* util.h - small helpers shared by the broker and the library; with the
 * clock and number parsing of base/ (which the programs outside share). */
#ifndef AB_UTIL_H
#define AB_UTIL_H

#include "clock.h"
#include "parse.h"

#include <stddef.h>
#include <stdint.h>

/* Hex of BYTES into OUT (2*n+1 bytes). Returns OUT. */
char *ab_hex(const void *bytes, size_t n, char *out, size_t cap);

/* 64-bit FNV-1a: for hash tables keyed by short byte strings. */
uint64_t ab_hash_bytes(const void *p, size_t n);

/* Size with optional K/M/G suffix (powers of 1024). */
int ab_parse_size(const char *s, size_t *out);

#endif
