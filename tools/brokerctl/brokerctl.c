/*
 * brokerctl - what an operator looks at first. `brokerctl --help` lists the
 * commands, `brokerctl COMMAND --help` the options of one (cli.c). Every
 * command first waits up to --timeout-ms for a connection to the broker and
 * says so, the same way for all, when there is none.
 *
 * Exit codes: 0 success; 1 the broker answered with an error or could not
 * be reached (code name and text on stderr); 2 bad usage.
 */
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "cachecmd.h"
#include "infer.h"
#include "render.h"
#include "msgcmd.h"
#include "cli.h"
#include "lanecmd.h"
#include "keycmd.h"
#include "tl_args.h"
#include "tl_clock.h"
#include "grow.h"

#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t s_stop;
static ab_client_t *s_client; /* for the signal handler: a wait ends at once */
static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
    if (s_client)
        ab_client_stop(s_client); /* documented as async-signal-safe */
}

static int s_json;
static const char *s_endpoint = AB_DEFAULT_ENDPOINT; /* for error texts */

/* Bad usage found before anything is sent: "brokerctl: TEXT" on stderr and,
 * with --json, {"ok": false, "code": "USAGE", ...} on stdout as for any
 * other usage error (a bad --key, --broker-key or $AB_BROKER printed
 * nothing there; so does one in $AB_KEY or $AB_BROKER_KEY). Returns 2, the
 * exit status. */
static int s_usage_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int s_usage_fail(const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    fprintf(stderr, "brokerctl: %s\n", text);
    if (s_json)
        ctl_render_error(stdout, "USAGE", text);
    return 2;
}

/* Reports a failed command: always on stderr; with --json also as an
 * object on stdout, so scripts parsing stdout see the failure too. */
static int s_fail(ab_client_t *c, int rc)
{
    /* With no handle (ab_client_new failed), the thread's text says why. */
    const char *text = ab_client_last_error(c)[0] ? ab_client_last_error(c) : ab_strerror(rc);
    char hint[512];
    if (rc == AB_ETIMEOUT && c && !ab_client_connected(c)) {
        /* The likeliest cause by far: say it. */
        snprintf(hint, sizeof hint, "no broker reachable at %s (is agentbus-broker running?)",
                 s_endpoint);
        text = hint;
    }
    ctl_report_error(s_json, ab_status_name(rc), text);
    return 1;
}

static int s_show(ab_client_t *c, const char *what, int json, int timeout_ms)
{
    void *buf = NULL;
    size_t len = 0;
    int rc = ab_client_control(c, what, timeout_ms, &buf, &len);
    if (rc != AB_OK)
        return s_fail(c, rc);
    int bad = 0;
    if (strcmp(what, "stats") == 0) {
        Agentbus__Stats *st = agentbus__stats__unpack(NULL, len, buf);
        if ((bad = !st) == 0) {
            ctl_clean_pb(&st->base, !json); /* names peers chose */
            ctl_render_stats(stdout, st, json);
            if (st->cache && !json) { /* JSON: in the object, "cache" */
                fprintf(stdout, "\ncache\n");
                ctl_render_cache(stdout, st->cache, 0);
            }
            agentbus__stats__free_unpacked(st, NULL);
        }
    } else if (strcmp(what, "peers") == 0) {
        Agentbus__PeerList *pl = agentbus__peer_list__unpack(NULL, len, buf);
        if ((bad = !pl) == 0) {
            ctl_clean_pb(&pl->base, !json); /* names peers chose */
            ctl_render_peers(stdout, pl, json);
            agentbus__peer_list__free_unpacked(pl, NULL);
        }
    } else if (strcmp(what, "services") == 0) {
        Agentbus__ServiceList *sl = agentbus__service_list__unpack(NULL, len, buf);
        if ((bad = !sl) == 0) {
            ctl_clean_pb(&sl->base, !json); /* names peers chose */
            ctl_render_services(stdout, sl->services, sl->n_services, json);
            agentbus__service_list__free_unpacked(sl, NULL);
        }
    } else if (strcmp(what, "clients") == 0) {
        Agentbus__ClientList *cl = agentbus__client_list__unpack(NULL, len, buf);
        if ((bad = !cl) == 0) {
            ctl_clean_pb(&cl->base, !json); /* names peers chose */
            ctl_render_clients(stdout, cl, json);
            agentbus__client_list__free_unpacked(cl, NULL);
        }
    } else {
        Agentbus__WorkerList *wl = agentbus__worker_list__unpack(NULL, len, buf);
        if ((bad = !wl) == 0) {
            ctl_clean_pb(&wl->base, !json); /* names peers chose */
            ctl_render_workers(stdout, wl, json);
            agentbus__worker_list__free_unpacked(wl, NULL);
        }
    }
    ab_free(buf);
    fflush(stdout);
    if (bad)
        fprintf(stderr, "brokerctl: MALFORMED: the broker's answer could not be decoded\n");
    return bad;
}

static char *s_read_stdin(size_t *len)
{
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, stdin);
        n += r;
        if (r == 0)
            break;
        if (n == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb)
                free(buf);
            buf = nb;
        }
    }
    *len = n;
    return buf;
}

typedef struct {
    int done, status;
    char *buf;
    size_t len, cap;
    char error[512];
} s_reply_t;

/* Gathers a request's chunks and its end (as a synchronous request does). */
static void s_on_reply(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    s_reply_t *r = arg;
    /* By doubling: a realloc to the exact size for each chunk copied the
     * whole answer again each time (base/grow.h). */
    if (ev->size && ab_grow(&r->buf, &r->cap, r->len + ev->size) == 0) {
        memcpy(r->buf + r->len, ev->data, ev->size);
        r->len += ev->size;
    }
    if (ev->final) {
        r->done = 1;
        r->status = ev->status;
        snprintf(r->error, sizeof r->error, "%s", ev->error_text ? ev->error_text : "");
    }
}

/* A request with options (its priority): started, then polled to its end. */
static int s_request_opts(ab_client_t *c, const char *service, const void *data, size_t len,
                          const ab_request_opts_t *o, void **reply, size_t *rlen)
{
    s_reply_t r = {0};
    int rc = ab_client_request_start(c, service, data, len, o, s_on_reply, &r, NULL);
    while (rc == AB_OK && !r.done && !s_stop)
        ab_client_poll(c, 100);
    if (rc == AB_OK && !r.done)
        rc = AB_ECANCELLED;
    else if (rc == AB_OK)
        rc = r.status;
    if (rc != AB_OK) {
        if (r.error[0])
            fprintf(stderr, "brokerctl: %s: %s\n", ab_status_name(rc), r.error);
        free(r.buf);
        return rc;
    }
    *reply = r.buf;
    *rlen = r.len;
    return AB_OK;
}

static int s_request(ab_client_t *c, const char *service, const char *data, int timeout_ms,
                     uint32_t priority)
{
    size_t len = 0;
    char *in = NULL;
    if (strcmp(data, "-") == 0) {
        if (!(in = s_read_stdin(&len))) {
            fprintf(stderr, "brokerctl: cannot read stdin\n");
            return 1;
        }
        data = in;
    } else {
        len = strlen(data);
    }
    void *reply = NULL;
    size_t rlen = 0;
    int rc = priority ? s_request_opts(c, service, data, len,
                                       &(ab_request_opts_t){.timeout_ms = timeout_ms,
                                                            .priority = priority},
                                       &reply, &rlen)
                      : ab_client_request(c, service, data, len, timeout_ms, &reply, &rlen);
    free(in);
    if (rc != AB_OK)
        return s_fail(c, rc);
    if (s_json) {
        ctl_render_reply(stdout, reply, rlen);
    } else {
        fwrite(reply, 1, rlen, stdout);
        if (isatty(STDOUT_FILENO) && (rlen == 0 || ((char *)reply)[rlen - 1] != '\n'))
            fputc('\n', stdout);
    }
    ab_free(reply);
    return 0;
}

/* --- watch: directory changes pushed by the broker ----------------------- */
static long s_events_left = -1;

static void s_on_dir_event(ab_client_t *c, const ab_dir_event_t *ev, void *arg)
{
    (void)c;
    (void)arg;
    const ab_worker_info_t *w = ev->worker;
    if (s_events_left == 0) /* --events N: N printed already, more came in the same poll */
        return;
    /* The names a worker chose, made printable (ctl_clean_str). */
    char *name = strdup(w->name), *service = strdup(w->service);
    char *state = strdup(w->backend_state);
    if (!name || !service || !state) {
        free(name), free(service), free(state);
        return;
    }
    ctl_clean_str(name, !s_json);
    ctl_clean_str(service, !s_json);
    ctl_clean_str(state, !s_json);
    if (s_json) {
        json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:f, s:I, s:s}",
                              "change", ev->change, "id", w->id, "name", name, "service",
                              service, "health", w->health, "capacity",
                              (json_int_t)w->capacity, "in_flight", (json_int_t)w->in_flight,
                              "free_credit", (json_int_t)w->free_credit, "interval_ms",
                              (json_int_t)w->interval_ms, "suspicion", w->suspicion,
                              "ejections", (json_int_t)w->ejections, "backend_state", state);
        ctl_json_print(stdout, j); /* one line: watch is a stream */
    } else {
        char word[16];
        printf("%-7s %-16s %-16s %-9s backend %-7s free %u/%u  interval %u ms  phi %.1f  "
               "ejections %u\n",
               ev->change, name[0] ? name : w->id, service, w->health,
               ctl_backend_word(state, 0, word, sizeof word), w->free_credit, w->capacity,
               w->interval_ms, w->suspicion, w->ejections);
    }
    free(name), free(service), free(state);
    fflush(stdout);
    if (s_events_left > 0)
        s_events_left--;
}

static int s_watch(ab_client_t *c, int timeout_ms)
{
    int rc = ab_client_watch(c, s_on_dir_event, NULL, timeout_ms);
    if (rc != AB_OK)
        return s_fail(c, rc);
    while (!s_stop && s_events_left != 0) {
        rc = ab_client_poll(c, 200);
        if (rc < 0 && rc != AB_ESTOPPED)
            return s_fail(c, rc);
    }
    return 0;
}

/* Waits up to TIMEOUT_MS for the connection to the broker: every command
 * fails the same way, and as soon, when there is none. */
static int s_connect(ab_client_t *c, long timeout_ms)
{
    int64_t end = tl_now_ms() + timeout_ms;
    while (!ab_client_connected(c) && !s_stop && tl_now_ms() < end) {
        int rc = ab_client_poll(c, 10);
        if (rc < 0 && rc != AB_ETIMEOUT)
            return rc;
        /* A broker that refused our key answers nothing: say so now, with
         * the library's reason, not "no broker" after the whole timeout. */
        if (ab_client_refused(c))
            return AB_EDENIED;
    }
    return ab_client_connected(c) ? AB_OK : s_stop ? AB_ESTOPPED : AB_ETIMEOUT;
}

static void s_show_loop(ab_client_t *c, const ctl_args_t *a, int *rc)
{
    int tty = isatty(STDOUT_FILENO);
    for (int first = 1;; first = 0) {
        /* Terminal codes only for a terminal; a pipe gets a blank line
         * between repeats (text) or one JSON object per line. */
        if (a->watch && !a->json && tty)
            printf("\033[H\033[2J");
        else if (a->watch && !a->json && !first)
            printf("\n");
        *rc = s_show(c, a->cmd, a->json, (int)a->timeout_ms);
        for (long t = 0; a->watch && !s_stop && t < a->watch * 10; t++)
            usleep(100000);
        if (!a->watch || s_stop || *rc != 0)
            return;
    }
}

static int s_infer(ab_client_t *c, const ctl_args_t *a)
{
    char err[512];
    int irc = ctl_infer(c, a->cmd, a->npos, a->pos, &a->infer, a->json,
                        a->timeout_set ? (int)a->timeout_ms : 120000, &s_stop, err, sizeof err);
    if (irc == AB_OK)
        return 0;
    ctl_report_error(s_json, ab_status_name(irc), err[0] ? err : ab_strerror(irc));
    return 1;
}

static int s_run(ab_client_t *c, const ctl_args_t *a)
{
    const char *cmd = a->cmd;
    if (!strcmp(cmd, "watch"))
        return s_watch(c, (int)a->timeout_ms);
    if (!strcmp(cmd, "generate") || !strcmp(cmd, "chat") || !strcmp(cmd, "embed") ||
        (!strcmp(cmd, "models") && a->npos))
        return s_infer(c, a);
    if (!strcmp(cmd, "models")) {
        int mrc = ctl_models(c, a->infer.has_service ? a->infer.service : NULL, a->json,
                             (int)a->timeout_ms);
        return mrc == AB_OK ? 0 : s_fail(c, mrc);
    }
    if (!strcmp(cmd, "cache")) {
        int crc = ctl_cache(c, a->npos, (char **)a->pos, a->tier, a->json, (int)a->timeout_ms);
        return crc == AB_OK ? 0 : s_fail(c, crc);
    }
    if (!strcmp(cmd, "keys")) {
        int krc = ctl_keys(c, a->npos == 1, a->json, (int)a->timeout_ms);
        return krc == AB_OK ? 0 : s_fail(c, krc);
    }
    if (!strcmp(cmd, "request")) {
        if (a->cache_flags)
            ab_client_set_cache(c, a->cache_flags, a->cache_ttl);
        return s_request(c, a->pos[0], a->pos[1], (int)a->timeout_ms, a->priority);
    }
    if (!strcmp(cmd, "stats") || !strcmp(cmd, "services") || !strcmp(cmd, "workers") ||
        !strcmp(cmd, "clients") || !strcmp(cmd, "peers")) {
        int rc = 0;
        s_show_loop(c, a, &rc);
        return rc;
    }
    ctl_msgcmd_opts_t mo = {a->json, (int)a->timeout_ms, a->count, &s_stop};
    return ctl_msgcmd_run(c, cmd, (char **)a->pos, &mo);
}

/* The client for A: endpoint, name (listen), takeover. 0, or the exit
 * status after a message. */
static int s_client_new(const ctl_args_t *a, ab_client_t **c)
{
    const char *env = getenv("AB_BROKER");
    s_endpoint = a->broker ? a->broker : env && *env ? env : AB_DEFAULT_ENDPOINT;
    char why[256];
    if (!a->broker && tl_check_endpoint(s_endpoint, why, sizeof why) != 0)
        return s_usage_fail("invalid $AB_BROKER '%s': %s", s_endpoint, why);
    ab_options_t *o = ab_options_new();
    if (!o || ab_options_set_endpoint(o, s_endpoint) != AB_OK) {
        ab_options_destroy(&o);
        return s_usage_fail("invalid broker endpoint '%s'", s_endpoint);
    }
    /* Only `listen` is an agent with a name: other commands stay unnamed,
     * so that any number of them can run at once. */
    if (!strcmp(a->cmd, "listen") && ab_options_set_name(o, a->pos[0]) != AB_OK) {
        ab_options_destroy(&o);
        return s_usage_fail("listen: invalid agent name '%s'", a->pos[0]);
    }
    ab_options_set_takeover(o, a->takeover);
    /* $AB_KEY and $AB_BROKER_KEY are the same values as the flags, with
     * the same exit status 2 (one in $AB_KEY failed later, in
     * ab_client_new, exit 1 and not named). */
    const char *ek = getenv("AB_KEY"), *ebk = getenv("AB_BROKER_KEY");
    const char *key = a->key ? a->key : ek && *ek ? ek : NULL;
    const char *bkey = a->broker_key ? a->broker_key : ebk && *ebk ? ebk : NULL;
    const char *bad = key && ab_options_set_key_file(o, key) != AB_OK
                          ? (a->key ? "--key" : "$AB_KEY") : NULL;
    if (!bad && bkey && ab_options_set_broker_key(o, bkey) != AB_OK)
        bad = a->broker_key ? "--broker-key" : "$AB_BROKER_KEY";
    if (bad) {
        int is_key = !strcmp(bad, "--key") || !strcmp(bad, "$AB_KEY");
        ab_options_destroy(&o);
        return s_usage_fail("%s '%s' cannot be used: expected %s", bad, is_key ? key : bkey,
                            is_key ? "a readable secret certificate (keygen's NAME.key_secret)"
                                   : "a Z85 public key (40 characters) or a certificate file");
    }
    int rc = ab_client_new(c, o);
    ab_options_destroy(&o);
    return rc == AB_OK ? 0 : s_fail(*c, rc);
}

int main(int argc, char **argv)
{
    ctl_args_t a;
    int prc = ctl_cli_parse(&a, argc, argv, stderr);
    if (prc < 0) { /* with --json, as every error: README, "brokerctl" */
        ctl_json_lines = ctl_cli_is_stream(&a);
        if (a.json)
            ctl_render_error(stdout, "USAGE", a.usage_error);
        return 2;
    }
    if (prc > 0) {
        if (a.version)
            tl_print_version("brokerctl", ab_version());
        else
            ctl_cli_usage(stdout, a.cmd);
        return 0;
    }
    if (!strcmp(a.cmd, "keygen")) /* local: no broker */
        return ctl_keygen(a.pos[0], &a.kg, a.json);
    s_json = a.json;
    ctl_json_lines = ctl_cli_is_stream(&a);
    s_events_left = a.events ? a.events : -1;
    ab_client_t *c = NULL;
    int rc = s_client_new(&a, &c);
    if (rc != 0) {
        ab_client_destroy(&c);
        return rc;
    }
    s_client = c;
    signal(SIGINT, s_on_signal);
    signal(SIGTERM, s_on_signal);
    int crc = s_connect(c, a.timeout_ms);
    if (crc == AB_OK)
        rc = s_run(c, &a);
    else
        rc = crc == AB_ESTOPPED ? 1 : s_fail(c, crc);
    s_client = NULL;
    ab_client_destroy(&c);
    return rc;
}
