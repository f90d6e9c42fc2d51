/* auth_keys.c - see auth_keys.h. */
#define AB_LOG_SUBSYS "auth" /* log.h: the subsystem in log lines */
#include "auth_keys.h"
#include "log.h"
#include "parse.h"

#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define AB_KEYS_MAX 100000 /* files read from one directory */

static const char *s_roles[] = {"agent", "worker", "admin", "peer"};

int ab_keyrole_parse(const char *s)
{
    for (int i = 0; i < AB_KEYROLE_COUNT; i++)
        if (s && strcmp(s, s_roles[i]) == 0)
            return i;
    return -1;
}

const char *ab_keyrole_name(ab_keyrole_t r)
{
    return r >= 0 && r < AB_KEYROLE_COUNT ? s_roles[r] : "?";
}

int ab_glob_list_match(const char *list, const char *s)
{
    /* Globs as fnmatch(3) without flags: '*' also spans dots and slashes,
     * so "team.*" grants every topic under team. */
    char pat[256];
    for (const char *p = list; p && *p;) {
        size_t n = strcspn(p, ",");
        while (n && (*p == ' '))
            p++, n--;
        size_t m = n;
        while (m && p[m - 1] == ' ')
            m--;
        if (m == 1 && *p == '*')
            return 1; /* what fnmatch says without flags: the default grant, per request */
        if (m && m < sizeof pat) {
            memcpy(pat, p, m);
            pat[m] = '\0';
            if (fnmatch(pat, s, 0) == 0)
                return 1;
        }
        p += n;
        p += *p == ',';
    }
    return 0;
}

void ab_key_free(ab_key_t **k)
{
    if (k && *k) {
        free((*k)->services);
        free((*k)->names);
        free((*k)->topics);
        free(*k);
        *k = NULL;
    }
}

static void s_key_destroy(void **item)
{
    ab_key_free((ab_key_t **)item);
}

ab_keys_t *ab_keys_new(const char *dir)
{
    ab_keys_t *t = calloc(1, sizeof *t);
    if (!t || !(t->by_pub = zhashx_new()) || !(t->dir = strdup(dir))) {
        ab_keys_destroy(&t);
        return NULL;
    }
    zhashx_set_destructor(t->by_pub, s_key_destroy);
    return t;
}

void ab_keys_destroy(ab_keys_t **keys)
{
    if (keys && *keys) {
        zhashx_destroy(&(*keys)->by_pub);
        free((*keys)->dir);
        free(*keys);
        *keys = NULL;
    }
}

ab_key_t *ab_keys_lookup(ab_keys_t *keys, const char *pub)
{
    return keys ? zhashx_lookup(keys->by_pub, pub) : NULL;
}

/* A grant from the certificate's metadata, or the role's default DEF when
 * the certificate does not name it. */
static char *s_grant(zcert_t *c, const char *meta, const char *def)
{
    const char *v = zcert_meta(c, meta);
    return strdup(v ? v : def);
}

/* Fills K's grants from certificate C (file PATH, base name FILE). 0, or
 * -1 with the reason logged. */
static int s_key_fill(ab_key_t *k, zcert_t *c, const char *path, const char *file)
{
    const char *role = zcert_meta(c, "role");
    int r = ab_keyrole_parse(role ? role : "agent");
    if (r < 0) {
        AB_WARN("key %s: unknown role '%s' (agent, worker, admin or peer): not trusted", path,
                role);
        return -1;
    }
    const char *name = zcert_meta(c, "name");
    snprintf(k->name, sizeof k->name, "%.*s", (int)strcspn(name ? name : file, "."),
             name ? name : file);
    k->role = (ab_keyrole_t)r;
    free(k->services);
    free(k->names);
    free(k->topics);
    /* Least privilege by role: a worker registers only what it was granted,
     * an agent takes only its own name unless granted more. */
    int adm = r == AB_KEYROLE_ADMIN;
    k->services = s_grant(c, "services", r == AB_KEYROLE_WORKER ? "" : "*");
    /* An agent's names are agent names; a peer's are the broker names it
     * may say in LINK HELLO (link.c): by default its own. */
    k->names = s_grant(c, "names", adm ? "*" : (r == AB_KEYROLE_AGENT || r == AB_KEYROLE_PEER)
                                                   ? k->name : "");
    k->topics = s_grant(c, "topics", adm || r == AB_KEYROLE_AGENT ? "*" : "");
    /* strtoul read "-1" as 4294967295 (no cap at all) and "8x" or "abc"
     * as 8 or 0: a grant misread is a wider grant, so the key is refused. */
    const char *cap = zcert_meta(c, "capacity");
    long capv = 0;
    if (cap && ab_parse_long(cap, 0, UINT32_MAX, &capv) != 0) {
        AB_WARN("key %s: capacity '%s' is not a whole number 0..%lu: not trusted", path, cap,
                (unsigned long)UINT32_MAX);
        return -1;
    }
    k->capacity = (uint32_t)capv;
    return k->services && k->names && k->topics ? 0 : -1;
}

/* Loads one certificate file into the table (or updates its key). */
static void s_load_one(ab_keys_t *t, const char *file)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", t->dir, file);
    zcert_t *c = zcert_load(path);
    if (!c) {
        AB_WARN("key %s: not a CURVE certificate (zcert): not trusted", path);
        return;
    }
    const char *pub = zcert_public_txt(c);
    ab_key_t *k = zhashx_lookup(t->by_pub, pub);
    int fresh = !k;
    if (fresh && !(k = calloc(1, sizeof *k))) {
        zcert_destroy(&c);
        return;
    }
    snprintf(k->pub, sizeof k->pub, "%s", pub);
    if (s_key_fill(k, c, path, file) != 0) {
        if (fresh)
            ab_key_free(&k);
        else
            k->seen = 0; /* now invalid: removed like a deleted file */
        zcert_destroy(&c);
        return;
    }
    k->seen = 1;
    if (fresh)
        zhashx_insert(t->by_pub, k->pub, k);
    zcert_destroy(&c);
}

uint64_t ab_keys_gen(const ab_keys_t *t)
{
    return t->gen + 1;
}

int ab_keys_reload(ab_keys_t *t, zlistx_t *gone)
{
    t->gen++; /* before anything is freed or changed, even when DIR cannot be read */
    DIR *d = opendir(t->dir);
    if (!d) {
        AB_ERROR("cannot read the keys directory %s: %s", t->dir, strerror(errno));
        return -1;
    }
    for (ab_key_t *k = zhashx_first(t->by_pub); k; k = zhashx_next(t->by_pub))
        k->seen = 0;
    struct dirent *e;
    int files = 0;
    while ((e = readdir(d)) && files < AB_KEYS_MAX) {
        size_t n = strlen(e->d_name);
        /* Public certificates only: a secret one here is a mistake, and
         * editors' and tools' dot files are not keys. */
        if (e->d_name[0] == '.' || (n > 7 && strcmp(e->d_name + n - 7, "_secret") == 0) ||
            (n > 1 && e->d_name[n - 1] == '~'))
            continue;
        files++;
        s_load_one(t, e->d_name);
    }
    closedir(d);
    zlistx_t *drop = zlistx_new();
    for (ab_key_t *k = zhashx_first(t->by_pub); k; k = zhashx_next(t->by_pub))
        if (!k->seen && drop)
            zlistx_add_end(drop, k);
    zhashx_set_destructor(t->by_pub, NULL); /* the records move to GONE */
    for (ab_key_t *k = drop ? zlistx_first(drop) : NULL; k; k = zlistx_next(drop)) {
        zhashx_delete(t->by_pub, k->pub);
        zlistx_add_end(gone, k);
    }
    zhashx_set_destructor(t->by_pub, s_key_destroy);
    zlistx_destroy(&drop);
    return (int)zhashx_size(t->by_pub);
}
