/* keycmd.c - see keycmd.h. */
#include "keycmd.h"
#include "agentbus.pb-c.h"
#include "render.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* A value that can sit between double quotes in a ZPL file. */
static int s_zpl_ok(const char *v)
{
    return v && strlen(v) < 1024 && !strpbrk(v, "\"\n\r");
}

/* 1 if grant V (comma-separated globs) names nothing: "", blanks, commas.
 * The broker reads such a grant as "none", not as the default. */
static int s_grant_empty(const char *v)
{
    return v && strspn(v, " ,") == strlen(v);
}

/* Writes the certificate text to PATH with MODE, as a new file: an
 * existing one is replaced only with --force (O_EXCL either way, so a
 * symlink planted there is not followed). 0 or -1 (errno; EEXIST). */
static int s_write(const char *path, int mode, const char *name, const ctl_keygen_opts_t *o,
                   const char *pub, const char *sec)
{
    if (o->force)
        unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    /* czmq's zcert format (ZPL), which the broker reads with zcert_load. */
    fprintf(f, "#   agentbus CURVE certificate, written by brokerctl keygen\n"
               "#   %s: %s\n", sec ? "SECRET: give it only to the peer it names"
                                  : "public: put it in the broker's keys directory",
            name);
    fprintf(f, "metadata\n    name = \"%s\"\n    role = \"%s\"\n", name, o->role);
    if (o->services)
        fprintf(f, "    services = \"%s\"\n", o->services);
    if (o->names)
        fprintf(f, "    names = \"%s\"\n", o->names);
    if (o->topics)
        fprintf(f, "    topics = \"%s\"\n", o->topics);
    if (o->capacity > 0)
        fprintf(f, "    capacity = \"%ld\"\n", o->capacity);
    fprintf(f, "curve\n    public-key = \"%s\"\n", pub);
    if (sec)
        fprintf(f, "    secret-key = \"%s\"\n", sec);
    return fclose(f) == 0 ? 0 : -1;
}

/* 1 if PATH exists as anything (a dangling symlink too). */
static int s_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* Says why keygen fails: "brokerctl: keygen: TEXT" on stderr and, with
 * --json, {"ok": false, "code": CODE, "error": "keygen: TEXT"} on stdout,
 * as every other command's errors (README, "Command lines": there was
 * nothing on stdout). Returns RC. */
static int s_fail(int json, int rc, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int s_fail(int json, int rc, const char *code, const char *fmt, ...)
{
    char text[1024];
    int n = snprintf(text, sizeof text, "keygen: ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text + n, sizeof text - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(stderr, "brokerctl: %s\n", text);
    if (json)
        ctl_render_error(stdout, code, text);
    return rc;
}

static int s_refuse_existing(const char *name, const char *suffix, const char *dir, int json)
{
    return s_fail(json, 1, "INVALID", "%s%s exists in %s; --force to replace it", name, suffix,
                  dir);
}

/* 0 when NAME and the options make a key; else 2 (bad usage) after
 * saying why. */
static int s_check_opts(const char *name, const ctl_keygen_opts_t *o, int json)
{
    if (!*name || strlen(name) > 60 || strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNO"
                                                    "PQRSTUVWXYZ0123456789_-") != strlen(name))
        return s_fail(json, 2, "USAGE", "NAME must be 1..60 letters, digits, '_' or '-'");
    if (strcmp(o->role, "agent") && strcmp(o->role, "worker") && strcmp(o->role, "admin") &&
        strcmp(o->role, "peer"))
        return s_fail(json, 2, "USAGE", "--role is agent, worker, admin or peer");
    if ((o->services && !s_zpl_ok(o->services)) || (o->names && !s_zpl_ok(o->names)) ||
        (o->topics && !s_zpl_ok(o->topics)))
        return s_fail(json, 2, "USAGE", "a grant may not contain '\"' or a newline");
    if (!strcmp(o->role, "worker") && (!o->services || s_grant_empty(o->services)))
        return s_fail(json, 2, "USAGE",
                      "a worker key needs --services (the services it may register)");
    return 0;
}

/* A grant of nothing is meant sometimes (a key that may claim no name),
 * but from an empty shell variable it took every service away unsaid:
 * said on stderr, the key written. */
static void s_note_empty_grants(const ctl_keygen_opts_t *o)
{
    const char *grant[3] = {o->services, o->names, o->topics};
    static const char *const flag[3] = {"--services", "--names", "--topics"};
    static const char *const what[3] = {"request no service", "claim no agent name",
                                        "publish or subscribe no topic"};
    for (int i = 0; i < 3; i++)
        if (s_grant_empty(grant[i]))
            fprintf(stderr, "brokerctl: keygen: note: %s '%s' grants nothing: this key may %s "
                            "(leave %s out for its default)\n", flag[i], grant[i], what[i],
                    flag[i]);
}

int ctl_keygen(const char *name, const ctl_keygen_opts_t *o, int json)
{
    if (s_check_opts(name, o, json) != 0)
        return 2;
    s_note_empty_grants(o);
    char pub[41], sec[41], path[4096], spath[4200];
    if (ab_curve_keypair(pub, sec) != AB_OK)
        return s_fail(json, 1, "UNSUPPORTED", "libzmq has no CURVE support");
    snprintf(path, sizeof path, "%s/%s.key", o->out_dir, name);
    snprintf(spath, sizeof spath, "%s_secret", path);
    /* A key pair in use is not lost to a repeated command: both files are
     * checked before either is written, so neither half is replaced alone. */
    const char *exists = s_exists(path) ? ".key" : s_exists(spath) ? ".key_secret" : NULL;
    if (exists && !o->force)
        return s_refuse_existing(name, exists, o->out_dir, json);
    const char *failed = s_write(path, 0644, name, o, pub, NULL) != 0 ? path
                         : s_write(spath, 0600, name, o, pub, sec) != 0 ? spath : NULL;
    if (failed && errno == EEXIST) /* made by someone else since the check */
        return s_refuse_existing(name, failed == path ? ".key" : ".key_secret", o->out_dir,
                                 json);
    if (failed)
        return s_fail(json, 1, "INVALID", "cannot write %s: %s", failed, strerror(errno));
    if (json)
        ctl_json_print(stdout, json_pack("{s:s, s:s, s:s, s:s}", "name", name, "public_key", pub,
                                         "public", path, "secret", spath));
    else
        printf("%s  %s (%s)\n  public: %s (copy into the broker's keys directory)\n"
               "  secret: %s (mode 0600; the peer's --key)\n",
               pub, name, o->role, path, spath);
    return 0;
}

static void s_print(const Agentbus__KeyList *kl, int json)
{
    if (json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < kl->n_keys; i++) {
            const Agentbus__KeyInfo *k = kl->keys[i];
            json_array_append_new(
                arr, json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:I}", "name", k->name,
                               "public_key", k->public_key, "role", k->role, "services",
                               k->services, "names", k->names, "topics", k->topics, "capacity",
                               (json_int_t)k->capacity, "denied", (json_int_t)k->denied,
                               "connections", (json_int_t)k->connections));
        }
        ctl_json_print(stdout, json_pack("{s:s, s:s, s:o}", "broker_key", kl->broker_key,
                                         "auth", kl->auth, "keys", arr));
        return;
    }
    printf("broker key: %s (auth %s)\n", kl->broker_key, kl->auth);
    printf("%-16s %-40s %-6s %5s %6s  %s\n", "NAME", "PUBLIC KEY", "ROLE", "CONNS", "DENIED",
           "GRANTS");
    for (size_t i = 0; i < kl->n_keys; i++) {
        const Agentbus__KeyInfo *k = kl->keys[i];
        printf("%-16s %-40s %-6s %5u %6llu  services=%s names=%s topics=%s", k->name,
               k->public_key, k->role, k->connections, (unsigned long long)k->denied,
               k->services[0] ? k->services : "-", k->names[0] ? k->names : "-",
               k->topics[0] ? k->topics : "-");
        if (k->capacity)
            printf(" capacity=%u", k->capacity);
        printf("\n");
    }
}

int ctl_keys(ab_client_t *c, int reload, int json, int timeout_ms)
{
    void *buf = NULL;
    size_t len = 0;
    int rc = ab_client_control(c, reload ? "keys reload" : "keys", timeout_ms, &buf, &len);
    if (rc != AB_OK)
        return rc;
    Agentbus__KeyList *kl = agentbus__key_list__unpack(NULL, len, buf);
    ab_free(buf);
    if (!kl)
        return AB_EMALFORMED;
    ctl_clean_pb(&kl->base, !json); /* names from certificate files */
    s_print(kl, json);
    agentbus__key_list__free_unpacked(kl, NULL);
    return AB_OK;
}
