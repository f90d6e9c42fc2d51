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

/* Size with optional K/M/G/T suffix (powers of 1024; "KiB", "KB" too). */
int ab_parse_size(const char *s, size_t *out);

/* Reads one event from the socket monitor MON (a PAIR given to
 * zmq_socket_monitor) without waiting: its number and value from the first
 * frame, and the endpoint from the second into ADDR (CAP bytes, cut short;
 * ADDR may be NULL). Returns 1 when an event was read, 0 when none waits. */
int ab_monitor_event(void *mon, uint16_t *event, uint32_t *value, char *addr, size_t cap);

/* 1 in an AddressSanitizer build: records that are otherwise kept for
 * reuse (spare lists) are freed there, so a use after the end shows. */
#if defined(__SANITIZE_ADDRESS__)
#define AB_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AB_ASAN 1
#endif
#endif
#ifndef AB_ASAN
#define AB_ASAN 0
#endif

#endif
