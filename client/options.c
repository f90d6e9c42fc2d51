/* options.c - ab_options_t: see agentbus.h. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ab_options_defaults(ab_options_t *o)
{
    memset(o, 0, sizeof *o);
    const char *env = getenv("AB_BROKER");
    snprintf(o->endpoint, sizeof o->endpoint, "%s", env && *env ? env : AB_DEFAULT_ENDPOINT);
    o->heartbeat_ms = 1000;
    o->timeout_ms = 30000;
    o->max_payload = AB_DEFAULT_MAX_PAYLOAD;
    o->max_header = AB_DEFAULT_MAX_HEADER;
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
