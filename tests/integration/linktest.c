/*
 * linktest.c - the broker-link tests' shared setup (see linktest.h).
 */
#include "linktest.h"
#include "harness.h"
#include "test.h"

#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char s_cert[600], s_certdir[520];

const char *lt_certdir(void)
{
    return s_certdir;
}

const char *lt_cert(void)
{
    return s_cert;
}

static void s_keygen(const char *name_args)
{
    char cmd[2048], out[4096];
    snprintf(cmd, sizeof cmd, "%s keygen %s --out %s", th_bin("brokerctl"), name_args, s_certdir);
    REQUIRE(th_run(cmd, out, sizeof out) == 0);
}

void lt_keys(const char *names, const char *const *more)
{
    char args[600];
    snprintf(s_certdir, sizeof s_certdir, "%s/certs", th_dir());
    REQUIRE(mkdir(s_certdir, 0700) == 0);
    /* one peer key for every broker: it must grant each one's name */
    snprintf(args, sizeof args, "broker --role peer --names %s", names);
    s_keygen(args);
    s_keygen("admin --role admin");
    for (int i = 0; more && more[i]; i++)
        s_keygen(more[i]);
    snprintf(s_cert, sizeof s_cert, "%s/broker.key", s_certdir);
    char path[700];
    snprintf(path, sizeof path, "%s/admin.key_secret", s_certdir);
    setenv("AB_KEY", path, 1);
    setenv("AB_BROKER_KEY", s_cert, 1);
    setenv("AB_AUTH", "curve", 1);
    setenv("AB_BROKER_CERT", s_cert, 1);
}

const char *lt_keysdir(const char *name, const char *extra)
{
    static char dirs[4][700];
    static int slot;
    char *d = dirs[slot++ % 4], cmd[3000], out[1024];
    snprintf(d, sizeof dirs[0], "%s/keys-%s", th_dir(), name);
    snprintf(cmd, sizeof cmd, "mkdir -p %s && cp %s/broker.key %s/admin.key %s/ && cd %s && %s",
             d, s_certdir, s_certdir, d, d, extra ? extra : "true");
    REQUIRE(th_run(cmd, out, sizeof out) == 0);
    return d;
}

const char *lt_peer(int port)
{
    static char buf[4][800];
    static int slot;
    char *p = buf[slot++ % 4];
    snprintf(p, sizeof buf[0], "tcp://127.0.0.1:%d#%s", port, s_cert);
    return p;
}

pid_t lt_broker(int port, const char *name, const char *keys, const char *peer1,
                const char *peer2, const char *extra1, const char *extra2)
{
    return th_broker(port, "--name", name, "--keys-dir", keys, "--link-heartbeat-ms", "100",
                     "--peer", peer1 ? peer1 : "", "--peer", peer2 ? peer2 : "",
                     extra1 ? extra1 : "--queue-max", extra2 ? extra2 : "10000", NULL);
}

Agentbus__PeerList *lt_peers(ab_client_t *c)
{
    void *buf = NULL;
    size_t len = 0;
    if (ab_client_control(c, "peers", 3000, &buf, &len) != AB_OK)
        return NULL;
    Agentbus__PeerList *pl = agentbus__peer_list__unpack(NULL, len, buf);
    ab_free(buf);
    return pl;
}

int lt_peer_info(ab_client_t *c, const char *name, Agentbus__PeerInfo *out, char *state,
                 size_t cap)
{
    Agentbus__PeerList *pl = lt_peers(c);
    int found = 0;
    for (size_t i = 0; pl && i < pl->n_peers && !found; i++)
        if (!strcmp(pl->peers[i]->name, name)) {
            *out = *pl->peers[i];
            out->name = out->endpoint = out->state = out->transport = NULL; /* die with PL */
            snprintf(state, cap, "%s", pl->peers[i]->state);
            found = 1;
        }
    if (pl)
        agentbus__peer_list__free_unpacked(pl, NULL);
    return found;
}

int lt_wait_link(ab_client_t *c, const char *name, int up, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    do {
        Agentbus__PeerInfo pi;
        char st[32] = "";
        int found = lt_peer_info(c, name, &pi, st, sizeof st);
        if ((found && !strcmp(st, "up")) == up)
            return 0;
        th_sleep_ms(20);
    } while (ab_now_ms() < end);
    return -1;
}

int lt_req(ab_client_t *c, const char *svc, const char *data, char *out, size_t cap)
{
    void *reply = NULL;
    size_t n = 0;
    int rc = ab_client_request(c, svc, data, strlen(data), 10000, &reply, &n);
    if (out)
        snprintf(out, cap, "%.*s", rc == AB_OK ? (int)n : 0, rc == AB_OK ? (char *)reply : "");
    ab_free(reply);
    return rc;
}

int lt_wait_rc(ab_client_t *c, const char *svc, int rc, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    do {
        if (lt_req(c, svc, "probe", NULL, 0) == rc)
            return 0;
        th_sleep_ms(50);
    } while (ab_now_ms() < end);
    return -1;
}
