/* options.c - ab_options_t: see agentbus.h. */
#include "internal.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 1 and *OUT when NAME is set to a number (K/M/G allowed) in [MIN, MAX]. */
static int s_env_long(const char *name, long min, long max, long *out)
{
    const char *v = getenv(name);
    size_t z;
    if (!v || !*v || ab_parse_size(v, &z) != 0 || z < (size_t)min || z > (size_t)max)
        return 0;
    *out = (long)z;
    return 1;
}

/* 1 when S is a CURVE key in Z85 (40 characters that decode to 32 bytes). */
static int s_is_z85_key(const char *s)
{
    uint8_t bin[32];
    return s && strlen(s) == 40 && zmq_z85_decode(bin, s) != NULL;
}

/* Reads the quoted value of KEY ("public-key", "secret-key") from the text
 * of a certificate (czmq's zcert format: ZPL, `    public-key = "..."`)
 * into OUT (41 bytes). 0 or -1. */
static int s_cert_value(const char *text, const char *key, char *out)
{
    for (const char *p = strstr(text, key); p; p = strstr(p + 1, key)) {
        if (p > text && p[-1] != ' ' && p[-1] != '\t' && p[-1] != '\n')
            continue;
        const char *q = p + strlen(key);
        q += strspn(q, " \t");
        if (*q != '=')
            continue;
        q++;
        q += strspn(q, " \t");
        if (*q == '"')
            q++;
        char v[41];
        size_t n = strcspn(q, "\"\r\n");
        if (n != 40)
            continue;
        memcpy(v, q, 40);
        v[40] = '\0';
        if (!s_is_z85_key(v))
            continue;
        memcpy(out, v, 41);
        return 0;
    }
    return -1;
}

/* Reads certificate file PATH (at most 64 KiB) into BUF. 0 or -1. */
static int s_read_small(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = '\0';
    return 0;
}

/* KEY as a public key: Z85 text itself, or the file of a certificate. */
static int s_load_broker_key(ab_options_t *o, const char *key)
{
    if (s_is_z85_key(key)) {
        memcpy(o->curve_server, key, 41);
        return AB_OK;
    }
    char *buf = malloc(65536);
    int ok = buf && s_read_small(key, buf, 65536) == 0 &&
             s_cert_value(buf, "public-key", o->curve_server) == 0;
    free(buf);
    if (!ok) {
        snprintf(o->key_error, sizeof o->key_error, "broker key '%.200s' is neither a Z85 "
                 "public key (40 characters) nor a readable certificate file", key);
        return AB_EINVAL;
    }
    return AB_OK;
}

static int s_load_key_file(ab_options_t *o, const char *path)
{
    char *buf = malloc(65536);
    int readable = buf && s_read_small(path, buf, 65536) == 0;
    int ok = readable && s_cert_value(buf, "public-key", o->curve_public) == 0 &&
             s_cert_value(buf, "secret-key", o->curve_secret) == 0;
    free(buf);
    if (!ok) {
        o->curve_public[0] = o->curve_secret[0] = '\0';
        snprintf(o->key_error, sizeof o->key_error, "key file '%.200s': %s", path,
                 readable ? "no public-key and secret-key in it (expected the NAME.key_secret "
                            "file of brokerctl keygen)" : strerror(errno));
        return AB_EINVAL;
    }
    return AB_OK;
}

void ab_options_defaults(ab_options_t *o)
{
    memset(o, 0, sizeof *o);
    const char *env = getenv("AB_BROKER");
    snprintf(o->endpoint, sizeof o->endpoint, "%s", env && *env ? env : AB_DEFAULT_ENDPOINT);
    o->heartbeat_ms = 1000;
    o->timeout_ms = 30000;
    o->max_payload = AB_DEFAULT_MAX_PAYLOAD;
    o->max_header = AB_DEFAULT_MAX_HEADER;
    o->batch = 1;
    o->batch_max_count = AB_BATCH_DEFAULT_COUNT;
    o->batch_max_bytes = AB_BATCH_DEFAULT_BYTES;
    o->batch_max_age_us = AB_BATCH_DEFAULT_AGE_US;
    o->compress_threshold = 1024;
    o->compress_min_saving_pct = 10;
    /* The same AB_* names as the broker's options: one environment can set
     * a whole machine. A bad value is ignored (the library never fails on
     * its environment); the setters below report errors. */
    long v;
    if (s_env_long("AB_BATCH", 0, 1, &v))
        o->batch = (int)v;
    if (s_env_long("AB_BATCH_MAX_COUNT", 2, AB_BATCH_MAX_COUNT, &v))
        o->batch_max_count = (unsigned)v;
    if (s_env_long("AB_BATCH_MAX_BYTES", 256, 16 << 20, &v))
        o->batch_max_bytes = (size_t)v;
    if (s_env_long("AB_BATCH_MAX_AGE_US", 0, 1000000, &v))
        o->batch_max_age_us = (unsigned)v;
    if (s_env_long("AB_COMPRESS_THRESHOLD_BYTES", 0, 1L << 30, &v))
        o->compress_threshold = (size_t)v;
    if (s_env_long("AB_COMPRESS_MIN_SAVING_PCT", 0, 99, &v))
        o->compress_min_saving_pct = (unsigned)v;
    /* Unlike the figures above, a key that cannot be used is not ignored:
     * connecting without it would fail later and say less. */
    const char *key = getenv("AB_KEY"), *bkey = getenv("AB_BROKER_KEY");
    if (key && *key)
        s_load_key_file(o, key);
    if (bkey && *bkey && !o->key_error[0])
        s_load_broker_key(o, bkey);
}

int ab_options_set_key_file(ab_options_t *o, const char *path)
{
    if (!o || !path)
        return AB_EINVAL;
    o->key_error[0] = '\0';
    if (!*path) {
        o->curve_public[0] = o->curve_secret[0] = '\0';
        return AB_OK;
    }
    int rc = s_load_key_file(o, path);
    if (rc != AB_OK)
        o->key_error[0] = '\0'; /* the setter reports it; the options stay usable */
    return rc;
}

int ab_options_set_broker_key(ab_options_t *o, const char *key)
{
    if (!o || !key)
        return AB_EINVAL;
    if (!*key) {
        o->curve_server[0] = '\0';
        return AB_OK;
    }
    char saved[sizeof o->key_error];
    memcpy(saved, o->key_error, sizeof saved);
    int rc = s_load_broker_key(o, key);
    if (rc != AB_OK)
        memcpy(o->key_error, saved, sizeof saved);
    return rc;
}

int ab_options_set_curve_keys(ab_options_t *o, const char *public_key, const char *secret_key)
{
    if (!o || !public_key || !secret_key || !s_is_z85_key(public_key) ||
        !s_is_z85_key(secret_key))
        return AB_EINVAL;
    memcpy(o->curve_public, public_key, 41);
    memcpy(o->curve_secret, secret_key, 41);
    o->key_error[0] = '\0';
    return AB_OK;
}

ab_options_t *ab_options_new(void)
{
    ab_options_t *o = malloc(sizeof *o);
    if (o)
        ab_options_defaults(o);
    return o;
}

void ab_options_destroy(ab_options_t **opts)
{
    if (opts && *opts) {
        free(*opts);
        *opts = NULL;
    }
}

int ab_options_set_endpoint(ab_options_t *o, const char *endpoint)
{
    if (!o || !endpoint || !*endpoint || strlen(endpoint) >= sizeof o->endpoint)
        return AB_EINVAL;
    snprintf(o->endpoint, sizeof o->endpoint, "%s", endpoint);
    return AB_OK;
}

int ab_options_set_name(ab_options_t *o, const char *name)
{
    if (!o || !name || strlen(name) >= sizeof o->name)
        return AB_EINVAL;
    snprintf(o->name, sizeof o->name, "%s", name);
    return AB_OK;
}

int ab_options_set_heartbeat_ms(ab_options_t *o, int ms)
{
    if (!o || ms < 100 || ms > 60000)
        return AB_EINVAL;
    o->heartbeat_ms = ms;
    return AB_OK;
}

int ab_options_set_max_payload(ab_options_t *o, size_t bytes)
{
    if (!o || bytes == 0)
        return AB_EINVAL;
    o->max_payload = bytes;
    return AB_OK;
}

int ab_options_set_timeout_ms(ab_options_t *o, int ms)
{
    if (!o || ms <= 0)
        return AB_EINVAL;
    o->timeout_ms = ms;
    return AB_OK;
}

int ab_options_set_takeover(ab_options_t *o, int on)
{
    if (!o)
        return AB_EINVAL;
    o->takeover = on != 0;
    return AB_OK;
}

int ab_options_set_batching(ab_options_t *o, int on)
{
    if (!o || (on != 0 && on != 1))
        return AB_EINVAL;
    o->batch = on;
    return AB_OK;
}

int ab_options_set_batch_limits(ab_options_t *o, unsigned max_count, size_t max_bytes,
                                unsigned max_age_us)
{
    if (!o || max_count < 2 || max_count > AB_BATCH_MAX_COUNT || max_bytes < 256 ||
        max_bytes > (16u << 20) || max_age_us > 1000000)
        return AB_EINVAL;
    o->batch_max_count = max_count;
    o->batch_max_bytes = max_bytes;
    o->batch_max_age_us = max_age_us;
    return AB_OK;
}

int ab_options_set_compression(ab_options_t *o, size_t threshold_bytes, unsigned min_saving_pct)
{
    if (!o || min_saving_pct > 99)
        return AB_EINVAL;
    o->compress_threshold = threshold_bytes;
    o->compress_min_saving_pct = min_saving_pct;
    return AB_OK;
}

int ab_curve_keypair(char public_key[41], char secret_key[41])
{
    if (!public_key || !secret_key)
        return AB_EINVAL;
    if (zmq_curve_keypair(public_key, secret_key) != 0)
        return AB_EZMQ; /* libzmq built without CURVE (libsodium) */
    return AB_OK;
}

const char *ab_version(void)
{
    return AB_VERSION_STRING;
}
