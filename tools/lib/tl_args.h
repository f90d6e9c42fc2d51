/*
 * tl_args.h - command-line helpers shared by the programs outside the
 * broker (tools/lib). Thread-safe; no allocation.
 *
 * Every program parses its arguments the same way (tl_next below), so that
 * what works for one works for all:
 *   - options may come before or after the command and its arguments;
 *   - a value is given as `--opt VALUE` or `--opt=VALUE`;
 *   - `--` ends the options: what follows is positional even when it
 *     starts with '-'; before it, an argument starting with '-' (other
 *     than "-" alone, which conventionally means stdin) is an option, and
 *     an unknown one is an error. So a name, topic or data starting with
 *     '-' is refused unless it comes after `--`;
 *   - `--opt VALUE` does not take a VALUE that starts with '-' (unless it
 *     is a number): `--name --json` is a missing value, not a name. Such a
 *     value is given as `--opt=VALUE`.
 */
#ifndef TL_ARGS_H
#define TL_ARGS_H

#include "parse.h"

#include <stddef.h>
#include <stdio.h>

/* Parses S as a whole decimal number in [MIN, MAX] into *OUT.
 * 0 on success; -1 (and *OUT untouched) for NULL, "", trailing characters,
 * overflow or a value out of range (base/parse.h's ab_parse_long). */
static inline int tl_parse_long(const char *s, long min, long max, long *out)
{
    return ab_parse_long(s, min, max, out);
}

/* --- option parsing ------------------------------------------------------ */
enum { TL_NOVAL = 0, TL_VAL = 1, TL_OPTVAL = 2 /* only as --opt=VALUE */ };

typedef struct {
    const char *name; /* long name without the dashes: "timeout-ms" */
    char short_name;  /* 'h' for -h; 0: none */
    int has_value;    /* TL_NOVAL, TL_VAL or TL_OPTVAL */
    int id;           /* > 0: what tl_next returns for it */
} tl_opt_t;

typedef struct {
    int argc;
    char **argv;
    int i;           /* next argument to look at */
    int positional;  /* 1 after "--" */
    const char *value; /* the matched option's value (NULL: none given) */
    const char *arg;   /* the positional argument, or the offending one */
    const tl_opt_t *opt; /* the matched option */
    char err[256];     /* after TL_ERROR: what was wrong, without the program name */
} tl_parser_t;

#define TL_END 0    /* no arguments left */
#define TL_ARG (-1) /* a positional argument: p->arg */
#define TL_ERROR (-2) /* unknown option, missing or unexpected value: p->err */

/* Starts parsing ARGV[FIRST..ARGC-1]. */
void tl_parser_init(tl_parser_t *p, int argc, char **argv, int first);
/* The next argument: an option's id (> 0) with p->value, TL_ARG with
 * p->arg, TL_END, or TL_ERROR with p->err. OPTS ends with a {NULL} row. */
int tl_next(tl_parser_t *p, const tl_opt_t *opts);

/* Checks a broker endpoint a client connects to: tcp://HOST:PORT (PORT
 * 1..65535), ipc://PATH or inproc://NAME. 0 if good; else -1 and WHY
 * (CAP bytes) says what is wrong. */
int tl_check_endpoint(const char *ep, char *why, size_t cap);
/* Checks an HTTP base URL: http(s)://HOST[:PORT][/PATH]. Same returns. */
int tl_check_http_url(const char *url, char *why, size_t cap);

/* Prints "PROGRAM VERSION\n" to stdout (the format help2man reads). */
void tl_print_version(const char *program, const char *version);

/* For the programs that read their arguments by position (the benches,
 * the attack tools, the link proxy): TL_INFO_HELP when an argument before
 * a "--" is --help or -h, TL_INFO_VERSION when it is --version (the first
 * found wins), else 0. Every program answers both the same way: usage or
 * "PROGRAM VERSION" on stdout, exit 0, whatever else the line holds. */
enum { TL_INFO_HELP = 1, TL_INFO_VERSION = 2 };
int tl_info_flag(int argc, char **argv);
/* Answers what tl_info_flag finds: USAGE(stdout, argv[0]) for --help,
 * tl_print_version(PROGRAM, VERSION) for --version. 1 when it answered (the
 * program then exits 0), else 0: `if (tl_info_answer(...)) return 0;`. */
int tl_info_answer(int argc, char **argv, const char *program, const char *version,
                   void (*usage)(FILE *f, const char *argv0));

#endif
