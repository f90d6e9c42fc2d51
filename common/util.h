/* util.h - small helpers shared by the broker, the library and the tools. */
#ifndef AB_UTIL_H
#define AB_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Monotonic clock. */
int64_t ab_now_ms(void);
uint64_t ab_now_us(void);
uint64_t ab_now_ns(void);

/* Hex of BYTES into OUT (2*n+1 bytes). Returns OUT. */
char *ab_hex(const void *bytes, size_t n, char *out, size_t cap);

/* 64-bit FNV-1a: for hash tables keyed by short byte strings. */
uint64_t ab_hash_bytes(const void *p, size_t n);

/* Strict decimal parse of S into [MIN, MAX]; 0 on success, -1 otherwise. */
int ab_parse_long(const char *s, long min, long max, long *out);
/* Size with optional K/M/G suffix (powers of 1024). */
int ab_parse_size(const char *s, size_t *out);

#endif
