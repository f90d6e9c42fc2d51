/* options.c - ab_options_t: see agentbus.h. */
#include "internal.h"
#include "util.h"

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

const char *ab_version(void)
{
    return AB_VERSION_STRING;
}
