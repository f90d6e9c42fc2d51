/*
 * authtest.c - what the authentication tests (test_auth.c) share: the data
 * dir with the broker's keypair and keys made by brokerctl keygen, a broker
 * with --auth curve, clients, workers and raw CURVE peers proving a key.
 */
#include "authtest.h"
#include "harness.h"
#include "test.h"
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

char at_data[512]; /* the broker's --data-dir */

/* Runs a shell command; REQUIREs exit 0. */
void at_sh(const char *fmt, ...)
{
    char cmd[2048], out[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = th_run(cmd, out, sizeof out);
    if (rc != 0)
        fprintf(stderr, "command failed (%d): %s\n%s\n", rc, cmd, out);
    REQUIRE(rc == 0);
}

/* brokerctl keygen NAME ARGS into <data>/certs; TRUST: its public half
 * into the keys directory too. */
void at_key(const char *name, const char *args, int trust)
{
    at_sh("%s keygen %s %s --out %s/certs", th_bin("brokerctl"), name, args, at_data);
    if (trust)
        at_sh("cp %s/certs/%s.key %s/keys/", at_data, name, at_data);
}

const char *at_secret(const char *name)
{
    static char path[4][700];
    static int slot;
    char *p = path[slot++ % 4];
    snprintf(p, sizeof path[0], "%s/certs/%s.key_secret", at_data, name);
    return p;
}

const char *at_broker_pub(void)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/broker.key", at_data);
    return path;
}

/* The data dir with a broker keypair and an admin key, and the test's
 * own clients (th_client, th_broker's probe) set to prove the admin key. */
void at_setup(void)
{
    snprintf(at_data, sizeof at_data, "%s/data", th_dir());
    at_sh("mkdir -p %s/keys %s/certs && chmod 700 %s/keys", at_data, at_data, at_data);
    /* The broker's own keypair, made ahead so clients know its key. */
    at_sh("%s keygen broker --role peer --out %s", th_bin("brokerctl"), at_data);
    at_key("admin", "--role admin", 1);
    setenv("AB_KEY", at_secret("admin"), 1);
    setenv("AB_BROKER_KEY", at_broker_pub(), 1);
}

pid_t at_broker(int port)
{
    return th_broker(port, "--auth", "curve", "--data-dir", at_data, NULL);
}

/* A client proving key NAME (NULL: none at all), named AGENT (or unnamed). */
ab_client_t *at_client(int port, const char *name, const char *agent, int takeover)
{
    ab_options_t *o = ab_options_new();
    REQUIRE(o && ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
    if (name) {
        REQUIRE(ab_options_set_key_file(o, at_secret(name)) == AB_OK);
        REQUIRE(ab_options_set_broker_key(o, at_broker_pub()) == AB_OK);
    } else {
        ab_options_set_key_file(o, "");
        ab_options_set_broker_key(o, "");
    }
    if (agent)
        REQUIRE(ab_options_set_name(o, agent) == AB_OK);
    ab_options_set_takeover(o, takeover);
    ab_client_t *c = NULL;
    REQUIRE(ab_client_new(&c, o) == AB_OK);
    ab_options_destroy(&o);
    return c;
}

pid_t at_worker(int port, const char *key, const char *service, const char *extra)
{
    const char *argv[] = {"--broker", th_ep(port), "--backend", "echo", "--service", service,
                          "--key", at_secret(key), "--broker-key", at_broker_pub(),
                          extra ? "--capacity" : NULL, extra, NULL};
    return th_spawn("agentbus-worker", argv, NULL);
}

/* Occurrences of TEXT in the log of PID. */
int at_log_count(pid_t pid, const char *text)
{
    FILE *f = fopen(th_log_of(pid), "r");
    char line[2048];
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        n += strstr(line, text) != NULL;
    if (f)
        fclose(f);
    return n;
}

/* 1 when the log of PID contains TEXT within timeout_ms. */
int at_log_has(pid_t pid, const char *text, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 50) {
        if (at_log_count(pid, text) > 0)
            return 1;
        th_sleep_ms(50);
    }
    fprintf(stderr, "log of %d lacks: %s\n", (int)pid, text);
    return 0;
}

int at_request(ab_client_t *c, const char *service, const char *data, int timeout_ms,
                     char *out, size_t cap)
{
    void *buf = NULL;
    size_t len = 0;
    int rc = ab_client_request(c, service, data, strlen(data), timeout_ms, &buf, &len);
    if (out && cap) {
        snprintf(out, cap, "%.*s", (int)(len < cap ? len : cap - 1), buf ? (char *)buf : "");
    }
    ab_free(buf);
    return rc;
}

/* A raw DEALER proving key NAME (its own context in *CTX), with routing id
 * ID unless NULL. */
void *at_raw(int port, const char *name, void **ctx)
{
    return at_raw_as(port, name, NULL, ctx);
}

void *at_raw_as(int port, const char *name, const char *id, void **ctx)
{
    char pub[41], sec[41], srv[41];
    th_cert_value(at_secret(name), "public-key", pub);
    th_cert_value(at_secret(name), "secret-key", sec);
    th_cert_value(at_broker_pub(), "public-key", srv);
    *ctx = zmq_ctx_new();
    void *raw = zmq_socket(*ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(raw, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(raw, ZMQ_CURVE_SERVERKEY, srv, 41);
    zmq_setsockopt(raw, ZMQ_CURVE_PUBLICKEY, pub, 41);
    zmq_setsockopt(raw, ZMQ_CURVE_SECRETKEY, sec, 41);
    if (id)
        zmq_setsockopt(raw, ZMQ_ROUTING_ID, id, strlen(id));
    REQUIRE(zmq_connect(raw, th_ep(port)) == 0);
    return raw;
}

void at_raw_send(void *raw, ab_header_t *h, const char *data)
{
    uint8_t buf[256];
    size_t n = ab_header_encode(h, buf, sizeof buf);
    REQUIRE(n > 0);
    zmq_send(raw, buf, n, data ? ZMQ_SNDMORE : 0);
    if (data)
        zmq_send(raw, data, strlen(data), 0);
}

/* The `denied` count of key NAME in `brokerctl keys`, or -1. */
long at_denied(const char *name)
{
    char cmd[1024], out[8192];
    snprintf(cmd, sizeof cmd, "%s keys --json --broker %s 2>&1", th_bin("brokerctl"),
             getenv("AB_TEST_EP"));
    if (th_run(cmd, out, sizeof out) != 0)
        return -1;
    char pat[128];
    snprintf(pat, sizeof pat, "\"name\": \"%s\"", name);
    char *p = strstr(out, pat);
    p = p ? strstr(p, "\"denied\": ") : NULL;
    return p ? strtol(p + 10, NULL, 10) : -1;
}

int at_port_with_ep(void)
{
    int port = th_free_port();
    setenv("AB_TEST_EP", th_ep(port), 1);
    return port;
}


void at_keep(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    at_answer_t *a = arg;
    if (!ev->final)
        return;
    a->done = 1;
    a->status = ev->status;
    snprintf(a->data, sizeof a->data, "%.*s", (int)(ev->size < 63 ? ev->size : 63),
             ev->data ? (const char *)ev->data : "");
}

/* The next message of KIND on RAW within MS (polling C, and sending a
 * HEARTBEAT from BEAT every 100 ms so the broker keeps that raw worker);
 * its header's id (or correlation id when ID is 0), or 0. */
uint64_t at_raw_next(void *raw, uint32_t kind, int ms, ab_client_t *c, void *beat)
{
    int64_t end = ab_now_ms() + ms, next_beat = 0;
    while (ab_now_ms() < end) {
        if (beat && ab_now_ms() >= next_beat) {
            ab_header_t hb = ab_header_init(AB_KIND_HEARTBEAT);
            at_raw_send(beat, &hb, NULL);
            next_beat = ab_now_ms() + 100;
        }
        if (c)
            ab_client_poll(c, 10);
        zmq_pollitem_t it = {raw, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 10) <= 0)
            continue;
        zmq_msg_t m;
        zmq_msg_init(&m);
        zmq_msg_recv(&m, raw, 0);
        ab_header_t h;
        int ok = ab_header_parse(zmq_msg_data(&m), zmq_msg_size(&m), &h) == AB_OK;
        while (zmq_msg_more(&m)) {
            zmq_msg_close(&m);
            zmq_msg_init(&m);
            zmq_msg_recv(&m, raw, 0);
        }
        zmq_msg_close(&m);
        if (ok && h.kind == kind)
            return h.id ? h.id : h.correlation_id ? h.correlation_id : 1;
    }
    return 0;
}

void at_raw_register(void *raw, const char *service)
{
    ab_header_t reg = ab_header_init(AB_KIND_REGISTER);
    reg.id = 1;
    reg.target = (ab_view_t){service, strlen(service)};
    reg.credit = 1;
    at_raw_send(raw, &reg, NULL);
}
