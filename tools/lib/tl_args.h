/*
 * tl_args.h - command-line helpers shared by the programs outside the
 * broker (tools/lib). Thread-safe; no allocation.
 */
#ifndef TL_ARGS_H
#define TL_ARGS_H

/* Parses S as a whole decimal number in [MIN, MAX] into *OUT.
 * 0 on success; -1 (and *OUT untouched) for NULL, "", trailing characters,
 * overflow or a value out of range. */
int tl_parse_long(const char *s, long min, long max, long *out);

/* A TCP port that was free on 127.0.0.1 a moment ago (bound to port 0 and
 * released), or -1. Another process may take it before the caller binds:
 * callers that start a server on it retry or fail cleanly. */
int tl_free_port(void);

#endif
