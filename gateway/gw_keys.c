/*
 * gw_keys.c - the API keys file and the bearer-token lookup.
 */
#include "gw_keys.h"
#include "agentbus.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

/* A token held zero-padded to the full width, so every comparison reads
 * the same number of words whatever the lengths. */
typedef union {
    char c[GW_TOKEN_MAX + 8];
    uint64_t w[(GW_TOKEN_MAX + 8) / 8];
} s_pad_t;

/* A name is a label value in /metrics: no quoting needed. */
static const char s_name_chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";

static int s_token_ok(const char *t, size_t len)
{
    if (len < GW_TOKEN_MIN || len > GW_TOKEN_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (t[i] < 0x21 || t[i] > 0x7e)
            return 0;
    return 1;
}

/* Whether the library takes PATH as a secret certificate, as the bus
 * connection made for it later will. */
static int s_keyfile_ok(const char *path)
{
    ab_options_t *o = ab_options_new();
    int ok = o && ab_options_set_key_file(o, path) == AB_OK;
    ab_options_destroy(&o);
    return ok;
}

/* The index (1-based) of KEYFILE in the identities, added if new; 0 (and
 * the reason in ERR) when there are too many or a new one is not a usable
 * secret certificate: checked here, with the file's other checks, so that
 * it is bad usage (exit 2) naming the line, not a failure to connect. */
static unsigned s_ident(gw_keys_t *k, const char *dir, const char *file, char *err, size_t cap)
{
    char path[4096];
    if (file[0] == '/' || !dir[0])
        snprintf(path, sizeof path, "%s", file);
    else
        snprintf(path, sizeof path, "%s/%s", dir, file);
    for (unsigned i = 0; i < k->n_idents; i++)
        if (strcmp(k->idents[i], path) == 0)
            return i + 1;
    if (k->n_idents == GW_IDENTS_MAX) {
        snprintf(err, cap, "more than %d distinct key files", GW_IDENTS_MAX);
        return 0;
    }
    if (!s_keyfile_ok(path)) {
        snprintf(err, cap, "cannot use the key file %s (a secret certificate from brokerctl "
                 "keygen is expected)", path);
        return 0;
    }
    k->idents[k->n_idents] = strdup(path);
    if (!k->idents[k->n_idents])
        snprintf(err, cap, "out of memory");
    return k->idents[k->n_idents] ? ++k->n_idents : 0;
}

/* One line's fields into a new entry; 0, or -1 with the reason in ERR. */
static int s_line(gw_keys_t *k, const char *dir, char *line, char *err, size_t cap)
{
    char *save = NULL, *f[4] = {0};
    int n = 0;
    for (char *t = strtok_r(line, " \t\r\n", &save); t && n < 4;
         t = strtok_r(NULL, " \t\r\n", &save))
        f[n++] = t;
    if (n == 0 || f[0][0] == '#')
        return 0;
    if (n < 2 || n > 3) {
        snprintf(err, cap, "expected NAME TOKEN [KEYFILE], got %d field%s", n, n == 1 ? "" : "s");
        return -1;
    }
    if (strlen(f[0]) >= sizeof k->keys[0].name || strspn(f[0], s_name_chars) != strlen(f[0])) {
        snprintf(err, cap, "name '%s': up to %zu of A-Z a-z 0-9 . _ -", f[0],
                 sizeof k->keys[0].name - 1);
        return -1;
    }
    size_t tl = strlen(f[1]);
    if (!s_token_ok(f[1], tl)) {
        snprintf(err, cap, "token of key '%s' must be %d to %d printable characters", f[0],
                 GW_TOKEN_MIN, GW_TOKEN_MAX);
        return -1;
    }
    for (size_t i = 0; i < k->n; i++)
        if (strcmp(k->keys[i].name, f[0]) == 0 || strcmp(k->keys[i].token, f[1]) == 0) {
            snprintf(err, cap, "key '%s' repeats the name or the token of key '%s'", f[0],
                     k->keys[i].name);
            return -1;
        }
    if (k->n == GW_KEYS_MAX) {
        snprintf(err, cap, "more than %d keys", GW_KEYS_MAX);
        return -1;
    }
    gw_key_t *e = &k->keys[k->n];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", f[0]);
    memcpy(e->token, f[1], tl + 1);
    e->token_len = tl;
    if (n == 3 && !(e->ident = s_ident(k, dir, f[2], err, cap)))
        return -1;
    k->n++;
    return 0;
}

int gw_keys_load(gw_keys_t *k, const char *path, char *err, size_t cap)
{
    memset(k, 0, sizeof *k);
    FILE *fp = fopen(path, "r");
    struct stat st;
    if (!fp || fstat(fileno(fp), &st) != 0) {
        snprintf(err, cap, "cannot read %s: %s", path, strerror(errno));
        if (fp)
            fclose(fp);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) { /* a directory was "open to group or others (mode 755)" */
        snprintf(err, cap, "%s is not a regular file", path);
        fclose(fp);
        return -1;
    }
    if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        snprintf(err, cap, "%s is open to group or others (mode %03o): it holds secrets; "
                 "chmod 600 it", path, (unsigned)(st.st_mode & 0777));
        fclose(fp);
        return -1;
    }
    k->keys = calloc(GW_KEYS_MAX, sizeof *k->keys);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        dir[0] = '\0';
    char line[1024], why[512];
    int no = 0, rc = k->keys ? 0 : -1;
    while (rc == 0 && fgets(line, sizeof line, fp)) {
        no++;
        if (!strchr(line, '\n') && !feof(fp)) {
            snprintf(why, sizeof why, "line longer than %zu bytes", sizeof line - 2);
            rc = -1;
        } else {
            rc = s_line(k, dir, line, why, sizeof why);
        }
        if (rc != 0)
            snprintf(err, cap, "%s:%d: %s", path, no, why);
    }
    fclose(fp);
    if (rc == 0 && k->n == 0) {
        snprintf(err, cap, "%s holds no key", path);
        rc = -1;
    }
    if (rc == 0 && pthread_rwlock_init(&k->lock, NULL) != 0) {
        snprintf(err, cap, "%s: cannot make a lock", path);
        rc = -1;
    }
    if (rc != 0) {
        gw_keys_free(k);
        return -1;
    }
    k->on = 1;
    return 0;
}

void gw_keys_free(gw_keys_t *k)
{
    for (unsigned i = 0; i < k->n_idents; i++)
        free(k->idents[i]);
    free(k->keys);
    if (k->on)
        pthread_rwlock_destroy(&k->lock);
    memset(k, 0, sizeof *k);
}

int gw_keys_reload(gw_keys_t *k, const char *path, char *err, size_t cap)
{
    gw_keys_t next;
    if (gw_keys_load(&next, path, err, cap) != 0)
        return -1;
    /* The file's key files, as indices of the connections made at start. */
    unsigned map[GW_IDENTS_MAX + 1] = {0};
    for (unsigned i = 0; i < next.n_idents; i++) {
        unsigned j = 0;
        while (j < k->n_idents && strcmp(k->idents[j], next.idents[i]) != 0)
            j++;
        if (j == k->n_idents) {
            snprintf(err, cap, "%s: key file %s was not in it at start (a new bus identity "
                     "needs a restart)", path, next.idents[i]);
            gw_keys_free(&next);
            return -1;
        }
        map[i + 1] = j + 1;
    }
    for (size_t i = 0; i < next.n; i++)
        next.keys[i].ident = map[next.keys[i].ident];
    pthread_rwlock_wrlock(&k->lock);
    for (size_t i = 0; i < next.n; i++)
        for (size_t j = 0; j < k->n; j++)
            if (strcmp(next.keys[i].name, k->keys[j].name) == 0)
                atomic_store(&next.keys[i].requests, atomic_load(&k->keys[j].requests));
    gw_key_t *old = k->keys;
    k->keys = next.keys;
    k->n = next.n;
    pthread_rwlock_unlock(&k->lock);
    next.keys = old; /* freed with the rest of NEXT */
    gw_keys_free(&next);
    return 0;
}

/* The key whose token is the bearer token in AUTHORIZATION, or NULL.
 * Called with the lock held. */
static gw_key_t *s_find(gw_keys_t *k, const char *authorization)
{
    if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0)
        return NULL;
    const char *t = authorization + 7;
    while (*t == ' ')
        t++;
    size_t len = strlen(t);
    while (len && (t[len - 1] == ' ' || t[len - 1] == '\t'))
        len--;
    if (len > GW_TOKEN_MAX)
        return NULL;
    s_pad_t given, held;
    memset(&given, 0, sizeof given);
    memcpy(given.c, t, len);
    gw_key_t *found = NULL;
    for (size_t i = 0; i < k->n; i++) {
        memset(&held, 0, sizeof held);
        memcpy(held.c, k->keys[i].token, k->keys[i].token_len);
        uint64_t diff = (uint64_t)(len ^ k->keys[i].token_len);
        for (size_t w = 0; w < sizeof given.w / sizeof given.w[0]; w++)
            diff |= given.w[w] ^ held.w[w];
        if (diff == 0)
            found = &k->keys[i]; /* no early exit: the same work for every token */
    }
    return found;
}

int gw_keys_authorize(gw_keys_t *k, const char *authorization, unsigned *ident)
{
    if (!k->on)
        return 0;
    pthread_rwlock_rdlock(&k->lock);
    gw_key_t *key = s_find(k, authorization);
    if (key) {
        atomic_fetch_add(&key->requests, 1);
        *ident = key->ident;
    }
    pthread_rwlock_unlock(&k->lock);
    return key != NULL;
}
