/* tl_args.c - see tl_args.h. */
#include "tl_args.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tl_parser_init(tl_parser_t *p, int argc, char **argv, int first)
{
    memset(p, 0, sizeof *p);
    p->argc = argc;
    p->argv = argv;
    p->i = first;
}

/* "-5", "-0.5": a negative number is a value, not an option. */
static int s_is_number(const char *s)
{
    char *end = NULL;
    errno = 0;
    (void)strtod(s, &end);
    return end != s && *end == '\0';
}

static const tl_opt_t *s_find(const tl_opt_t *opts, const char *name, size_t n, char short_name)
{
    for (const tl_opt_t *o = opts; o->name; o++) {
        if (short_name && o->short_name == short_name)
            return o;
        if (!short_name && strlen(o->name) == n && strncmp(o->name, name, n) == 0)
            return o;
    }
    return NULL;
}

/* The value of option O, given as ARG (with '=' at EQ, or NULL). */
static int s_value(tl_parser_t *p, const tl_opt_t *o, const char *eq)
{
    if (eq) {
        if (o->has_value == TL_NOVAL) {
            snprintf(p->err, sizeof p->err, "option --%s takes no value", o->name);
            return TL_ERROR;
        }
        p->value = eq + 1;
        return o->id;
    }
    if (o->has_value != TL_VAL)
        return o->id;
    const char *v = p->i < p->argc ? p->argv[p->i] : NULL;
    if (!v || (v[0] == '-' && v[1] != '\0' && !s_is_number(v))) {
        snprintf(p->err, sizeof p->err, "option --%s needs a value%s%s%s", o->name,
                 v ? " (a value starting with '-' is written --" : "", v ? o->name : "",
                 v ? "=VALUE)" : "");
        return TL_ERROR;
    }
    p->i++;
    p->value = v;
    return o->id;
}

int tl_next(tl_parser_t *p, const tl_opt_t *opts)
{
    p->value = p->arg = NULL;
    p->opt = NULL;
    p->err[0] = '\0';
    if (p->i >= p->argc)
        return TL_END;
    const char *a = p->argv[p->i++];
    p->arg = a;
    if (p->positional || a[0] != '-' || a[1] == '\0')
        return TL_ARG;
    if (strcmp(a, "--") == 0) {
        p->positional = 1;
        return tl_next(p, opts);
    }
    const tl_opt_t *o;
    const char *eq = NULL;
    if (a[1] == '-') {
        eq = strchr(a + 2, '=');
        o = s_find(opts, a + 2, eq ? (size_t)(eq - a - 2) : strlen(a + 2), 0);
    } else {
        o = a[2] == '\0' ? s_find(opts, NULL, 0, a[1]) : NULL;
    }
    if (!o) {
        snprintf(p->err, sizeof p->err, "unknown option '%s'%s", a,
                 a[1] != '-' ? " (a name, topic or data starting with '-' goes after '--')" : "");
        return TL_ERROR;
    }
    p->opt = o;
    return s_value(p, o, eq);
}

/* PORT: 1..65535, digits only. */
static int s_port_ok(const char *s, size_t n)
{
    if (n == 0 || n > 5 || strspn(s, "0123456789") < n)
        return 0;
    long v = strtol(s, NULL, 10);
    return v >= 1 && v <= 65535;
}

/* HOST:PORT (HOST may be [v6]); PORT_REQUIRED: else HOST alone is fine. */
static int s_hostport(const char *hp, size_t n, int port_required, char *why, size_t cap)
{
    const char *colon = NULL;
    if (n && hp[0] == '[') {
        const char *close = memchr(hp, ']', n);
        if (!close || close == hp + 1) {
            snprintf(why, cap, "bad IPv6 host");
            return -1;
        }
        colon = (size_t)(close + 1 - hp) < n && close[1] == ':' ? close + 1 : NULL;
        if (!colon && (size_t)(close + 1 - hp) != n) {
            snprintf(why, cap, "bad text after the IPv6 host");
            return -1;
        }
    } else {
        for (size_t i = 0; i < n; i++)
            if (hp[i] == ':')
                colon = hp + i;
    }
    size_t hostlen = colon ? (size_t)(colon - hp) : n;
    if (hostlen == 0) {
        snprintf(why, cap, "no host");
        return -1;
    }
    if (!colon && port_required) {
        snprintf(why, cap, "no port (HOST:PORT)");
        return -1;
    }
    if (colon && !s_port_ok(colon + 1, n - hostlen - 1)) {
        snprintf(why, cap, "port '%.*s' is not 1..65535", (int)(n - hostlen - 1), colon + 1);
        return -1;
    }
    return 0;
}

int tl_check_endpoint(const char *ep, char *why, size_t cap)
{
    const char *sep = ep ? strstr(ep, "://") : NULL;
    if (!sep) {
        snprintf(why, cap, "no scheme (expected tcp://HOST:PORT, ipc://PATH or inproc://NAME)");
        return -1;
    }
    size_t slen = (size_t)(sep - ep);
    const char *rest = sep + 3;
    if (slen == 3 && strncmp(ep, "tcp", 3) == 0)
        return s_hostport(rest, strlen(rest), 1, why, cap);
    if ((slen == 3 && strncmp(ep, "ipc", 3) == 0) ||
        (slen == 6 && strncmp(ep, "inproc", 6) == 0)) {
        if (*rest)
            return 0;
        snprintf(why, cap, "empty %s", slen == 3 ? "path" : "name");
        return -1;
    }
    snprintf(why, cap, "unknown scheme '%.*s' (expected tcp, ipc or inproc)", (int)slen, ep);
    return -1;
}

int tl_check_http_url(const char *url, char *why, size_t cap)
{
    const char *rest = NULL;
    if (url && strncmp(url, "http://", 7) == 0)
        rest = url + 7;
    else if (url && strncmp(url, "https://", 8) == 0)
        rest = url + 8;
    if (!rest) {
        snprintf(why, cap, "not an http:// or https:// URL");
        return -1;
    }
    size_t n = strcspn(rest, "/?#");
    return s_hostport(rest, n, 0, why, cap);
}

void tl_print_version(const char *program, const char *version)
{
    printf("%s %s\n", program, version);
}

int tl_info_flag(int argc, char **argv)
{
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return TL_INFO_HELP;
        if (!strcmp(argv[i], "--version"))
            return TL_INFO_VERSION;
    }
    return 0;
}

int tl_info_answer(int argc, char **argv, const char *program, const char *version,
                   void (*usage)(FILE *f, const char *argv0))
{
    int info = tl_info_flag(argc, argv);
    if (info == TL_INFO_HELP)
        usage(stdout, argv[0]);
    else if (info == TL_INFO_VERSION)
        tl_print_version(program, version);
    return info != 0;
}
