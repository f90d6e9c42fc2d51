/*
 * linktest.c - the broker-link tests' shared setup (see linktest.h).
 */
#include "linktest.h"
#include "harness.h"
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
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
