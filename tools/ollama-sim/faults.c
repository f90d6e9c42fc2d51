/*
 * faults.c - fault injection settings (config, flags, POST /sim/faults) and
 * the per-request draw. One table describes every key so the three ways to
 * set them cannot drift apart.
 */
#include "sim.h"

#include <stdio.h>
#include <string.h>

typedef enum { F_RATE, F_INT, F_I64, F_STR } s_kind_t;

typedef struct {
    const char *key;
    s_kind_t kind;
    size_t off;
    size_t size;
} s_field_t;

#define F(k, kind, member) \
    {k, kind, offsetof(sim_faults_t, member), sizeof(((sim_faults_t *)0)->member)}
static const s_field_t s_fields[] = {
    F("error_rate", F_RATE, error_rate),
    F("error_status", F_INT, error_status),
    F("error_message", F_STR, error_message),
    F("midstream_rate", F_RATE, midstream_rate),
    F("midstream_after", F_INT, midstream_after),
    F("midstream_message", F_STR, midstream_message),
    F("hang_rate", F_RATE, hang_rate),
    F("hang_after", F_INT, hang_after),
    F("hang_ms", F_I64, hang_ms),
    F("slow_start_rate", F_RATE, slow_start_rate),
    F("slow_start_ms", F_I64, slow_start_ms),
    F("drop_rate", F_RATE, drop_rate),
    F("drop_after", F_INT, drop_after),
    F("count", F_I64, count),
    F("model", F_STR, model),
};
#undef F
#define S_NFIELDS (sizeof s_fields / sizeof s_fields[0])

void sim_faults_defaults(sim_faults_t *f)
{
    memset(f, 0, sizeof *f);
    f->error_status = 500;
    snprintf(f->error_message, sizeof f->error_message, "simulated failure");
    f->midstream_after = 2;
    snprintf(f->midstream_message, sizeof f->midstream_message, "simulated error mid-stream");
    f->slow_start_ms = 1000;
    f->count = -1;
}

static int s_set(sim_faults_t *f, const s_field_t *fd, const json_t *v, char *err, size_t cap)
{
    char *p = (char *)f + fd->off;
    switch (fd->kind) {
    case F_RATE: {
        if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 1) {
            snprintf(err, cap, "faults.%s must be a number in [0, 1]", fd->key);
            return -1;
        }
        *(double *)p = json_number_value(v);
        return 0;
    }
    case F_INT:
    case F_I64: {
        if (!json_is_integer(v)) {
            snprintf(err, cap, "faults.%s must be an integer", fd->key);
            return -1;
        }
        json_int_t x = json_integer_value(v);
        bool status = strcmp(fd->key, "error_status") == 0;
        bool signed_ok = strcmp(fd->key, "count") == 0;
        if ((status && (x < 400 || x > 599)) || (!signed_ok && x < 0) || (signed_ok && x < -1) ||
            (fd->kind == F_INT && x > 1000000000)) {
            snprintf(err, cap, "faults.%s out of range", fd->key);
            return -1;
        }
        if (fd->kind == F_INT)
            *(int *)p = (int)x;
        else
            *(int64_t *)p = (int64_t)x;
        return 0;
    }
    case F_STR:
        if (!json_is_string(v) || json_string_length(v) >= fd->size) {
            snprintf(err, cap, "faults.%s must be a string shorter than %zu", fd->key, fd->size);
            return -1;
        }
        memcpy(p, json_string_value(v), json_string_length(v) + 1);
        return 0;
    }
    return -1;
}

int sim_faults_apply(sim_faults_t *f, const json_t *obj, char *err, size_t cap)
{
    if (!json_is_object(obj)) {
        snprintf(err, cap, "faults must be a JSON object");
        return -1;
    }
    sim_faults_t tmp = *f;
    json_t *reset = json_object_get(obj, "reset");
    if (reset && !json_is_boolean(reset)) {
        snprintf(err, cap, "faults.reset must be true or false");
        return -1;
    }
    if (json_is_true(reset))
        sim_faults_defaults(&tmp);
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        if (strcmp(key, "reset") == 0)
            continue;
        size_t i;
        for (i = 0; i < S_NFIELDS; i++)
            if (strcmp(key, s_fields[i].key) == 0)
                break;
        if (i == S_NFIELDS) {
            snprintf(err, cap, "unknown fault key \"%s\"", key);
            return -1;
        }
        if (s_set(&tmp, &s_fields[i], v, err, cap) != 0)
            return -1;
    }
    *f = tmp;
    return 0;
}

json_t *sim_faults_json(const sim_faults_t *f)
{
    json_t *o = json_object();
    for (size_t i = 0; i < S_NFIELDS; i++) {
        const char *p = (const char *)f + s_fields[i].off;
        json_t *v = NULL;
        switch (s_fields[i].kind) {
        case F_RATE: v = json_real(*(const double *)p); break;
        case F_INT: v = json_integer(*(const int *)p); break;
        case F_I64: v = json_integer(*(const int64_t *)p); break;
        case F_STR: v = json_string(p); break;
        }
        json_object_set_new(o, s_fields[i].key, v);
    }
    return o;
}

static bool s_roll(sim_t *s, double rate)
{
    /* Always draw, so one rate does not shift the dice of the others. */
    double r = sim_rand01(&s->rng);
    return rate > 0 && r < rate;
}

void sim_faults_draw(sim_t *s, const sim_model_t *m, sim_draw_t *d)
{
    const sim_faults_t *f = &s->faults;
    memset(d, 0, sizeof *d);
    if (f->count == 0)
        return;
    if (f->model[0]) {
        char want[160];
        snprintf(want, sizeof want, "%s%s", f->model, strchr(f->model, ':') ? "" : ":latest");
        if (!m || strcmp(want, m->name) != 0)
            return;
    }
    d->error = s_roll(s, f->error_rate);
    d->midstream = s_roll(s, f->midstream_rate);
    d->hang = s_roll(s, f->hang_rate);
    d->slow_start = s_roll(s, f->slow_start_rate);
    d->drop = s_roll(s, f->drop_rate);
    if (d->error) {   /* an error answer leaves no room for the others */
        d->midstream = d->hang = d->slow_start = d->drop = false;
    }
    if (!(d->error || d->midstream || d->hang || d->slow_start || d->drop))
        return;
    if (f->count > 0)
        ((sim_faults_t *)f)->count--;
    d->error_status = f->error_status;
    if (f->error_status == 503 && strcmp(f->error_message, "simulated failure") == 0)
        snprintf(d->error_message, sizeof d->error_message,
                 "server busy, please try again.  maximum pending requests exceeded");
    else
        snprintf(d->error_message, sizeof d->error_message, "%s", f->error_message);
    d->midstream_after = f->midstream_after;
    snprintf(d->midstream_message, sizeof d->midstream_message, "%s", f->midstream_message);
    d->hang_after = f->hang_after;
    d->hang_ns = f->hang_ms > 0 ? sim_scaled_ns(s, (double)f->hang_ms) : 0;
    d->slow_start_ns = sim_scaled_ns(s, (double)f->slow_start_ms);
    d->drop_after = f->drop_after;
    if (d->error) s->st.f_error++;
    if (d->midstream) s->st.f_midstream++;
    if (d->hang) s->st.f_hang++;
    if (d->slow_start) s->st.f_slow_start++;
    if (d->drop) s->st.f_drop++;
}
