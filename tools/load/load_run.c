/* load_run.c - see load_run.h. */
#include "load_run.h"
#include "tl_clock.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

volatile sig_atomic_t ld_stop;

static void s_on_signal(int sig)
{
    (void)sig;
    ld_stop = 1;
}

void ld_signals(void)
{
    signal(SIGINT, s_on_signal);
    signal(SIGTERM, s_on_signal);
}

void ld_stats_add(ld_stats_t *dst, const ld_stats_t *src)
{
    dst->sent += src->sent;
    dst->ok += src->ok;
    dst->failed += src->failed;
    if (!dst->first_error && src->first_error) {
        dst->first_error = src->first_error;
        snprintf(dst->first_error_text, sizeof dst->first_error_text, "%s",
                 src->first_error_text);
    }
    tl_hist_merge(&dst->lat, &src->lat);
}

void ld_run(void *agents, size_t size, long n, void *(*fn)(void *), ld_stats_t *total)
{
    pthread_t *threads = calloc((size_t)n, sizeof *threads);
    char *started = calloc((size_t)n, 1);
    memset(total, 0, sizeof *total);
    for (long i = 0; i < n; i++) {
        ld_stats_t *st = (ld_stats_t *)((char *)agents + (size_t)i * size);
        tl_hist_reset(&st->lat);
        if (threads && started && pthread_create(&threads[i], NULL, fn, st) == 0)
            started[i] = 1;
        else
            st->first_error = AB_ENOMEM;
    }
    for (long i = 0; i < n; i++) {
        ld_stats_t *st = (ld_stats_t *)((char *)agents + (size_t)i * size);
        if (started && started[i])
            pthread_join(threads[i], NULL);
        ld_stats_add(total, st);
    }
    free(threads);
    free(started);
}

int ld_connect(const char *broker, const char *prefix, int index, ab_client_t **c)
{
    ab_options_t *o = ab_options_new();
    char name[64];
    snprintf(name, sizeof name, "%s-%d", prefix, index);
    ab_options_set_name(o, name);
    if (broker)
        ab_options_set_endpoint(o, broker);
    int rc = ab_client_new(c, o);
    ab_options_destroy(&o);
    return rc;
}

int ld_wait_broker(const char *broker, const char *prog, int ms)
{
    ab_client_t *c = NULL;
    int rc = ld_connect(broker, "probe", 0, &c);
    /* By the clock: counting 50 ms a poll waited longer on a loaded host. */
    for (int64_t end = tl_now_ms() + ms;
         rc == AB_OK && !ab_client_connected(c) && tl_now_ms() < end && !ld_stop;)
        ab_client_poll(c, 50);
    int up = rc == AB_OK && ab_client_connected(c);
    ab_client_destroy(&c);
    if (up)
        return 0;
    if (rc != AB_OK) { /* no client at all: a bad $AB_KEY was "no broker reachable" */
        fprintf(stderr, "%s: %s: %s\n", prog, ab_status_name(rc),
                ab_client_last_error(NULL)[0] ? ab_client_last_error(NULL) : ab_strerror(rc));
        return rc == AB_EINVAL ? 2 : 1;
    }
    const char *env = getenv("AB_BROKER");
    fprintf(stderr, "%s: no broker reachable at %s (is agentbus-broker running?)\n", prog,
            broker ? broker : env && *env ? env : AB_DEFAULT_ENDPOINT);
    return 1;
}

int ld_parse(int argc, char **argv, const char *prog, const tl_opt_t *opts,
             void (*usage)(const char *argv0), const char **broker,
             int (*take)(void *cfg, int id, const char *v), void *cfg)
{
    char why[256];
    tl_parser_t p;
    tl_parser_init(&p, argc, argv, 1);
    int id;
    while ((id = tl_next(&p, opts)) != TL_END) {
        if (id == LD_HELP) {
            usage(argv[0]);
            return 1;
        }
        if (id == LD_VERSION) {
            tl_print_version(prog, ab_version());
            return 1;
        }
        if (id == TL_ERROR || id == TL_ARG) {
            fprintf(stderr, "%s: %s%s (see --help)\n", prog,
                    id == TL_ARG ? "unexpected argument " : p.err, id == TL_ARG ? p.arg : "");
            return -1;
        }
        if (id == LD_BROKER) {
            *broker = p.value;
            if (tl_check_endpoint(p.value, why, sizeof why) == 0)
                continue;
            fprintf(stderr, "%s: invalid --broker '%s': %s\n", prog, p.value, why);
            return -1;
        }
        if (take(cfg, id, p.value) != 0) {
            fprintf(stderr, "%s: bad value '%s' for --%s (see --help)\n", prog, p.value,
                    p.opt->name);
            return -1;
        }
    }
    return 0;
}
