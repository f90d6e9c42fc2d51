/*
 * test_cli.c - the command lines of brokerctl, agentbus-worker,
 * agentbus-broker, ollama-sim and the load tools as a user types them
 * (issue 13): options before or after the command, --opt=VALUE, --help per
 * brokerctl command, --version everywhere, one message and a bounded wait
 * when no broker runs, endpoints and URLs checked at start (exit 2 naming
 * the value), names starting with '-' refused before '--'. One case per
 * ctest entry.
 */
#include "clitest.h"
#include "harness.h"
#include "test.h"
#include "util.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

/* Options after the command and --opt=VALUE, as the README writes them. */
static void s_arg_order(void)
{
    int port = th_free_port();
    th_broker(port, "--startup-grace-ms", "0", NULL);
    th_worker(port, "echo", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "echo", 1, 10000) == 0);
    const char *ep = th_ep(port);
    CHECK_EQ(cli_sh("timeout 30 %s stats --json --broker %s", CTL, ep), 0);
    CHECK_TRUE(HAS("\"uptime_ms\""));
    CHECK_EQ(cli_sh("timeout 30 %s workers --broker=%s --json", CTL, ep), 0);
    CHECK_TRUE(HAS("\"service\": \"echo\""));
    CHECK_EQ(cli_sh("timeout 30 %s --broker=%s request echo hi --timeout-ms=5000", CTL, ep), 0);
    CHECK_STR(cli_out, "hi");
    /* Data starting with '-' after "--". */
    CHECK_EQ(cli_sh("timeout 30 %s request echo --broker %s -- -dash", CTL, ep), 0);
    CHECK_STR(cli_out, "-dash");
    /* listen with --count after its name (documented in the README). */
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "timeout 30 %s listen coder --count 1 --broker %s & sleep 1; "
             "%s send coder hello --broker %s >/dev/null; wait",
             CTL, ep, CTL, ep);
    CHECK_EQ(th_run(cmd, cli_out, sizeof cli_out), 0);
    CHECK_TRUE(HAS("\thello"));
    /* --watch into a pipe: no terminal codes, repeats separated. */
    CHECK_EQ(cli_sh("timeout --foreground -k 5 -s INT 3 %s services --watch 1 --broker %s; true",
                    CTL, ep),
             0);
    CHECK_TRUE(HAS("SERVICE"));
    CHECK_TRUE(!HAS("\033["));
    /* A stream with --json: one compact object per line. */
    CHECK_EQ(
        cli_sh("timeout --foreground -k 5 -s INT 3 %s services --watch 1 --json --broker %s; true",
               CTL, ep),
        0);
    CHECK_TRUE(cli_out[0] == '[' && strchr(cli_out, '\n') && strchr(cli_out, '\n')[-1] == ']');
    /* The workers table keeps its columns: the id fits in 12. */
    CHECK_EQ(cli_sh("timeout 30 %s workers --broker %s", CTL, ep), 0);
    const char *row = strchr(cli_out, '\n');
    REQUIRE(row != NULL);
    CHECK_EQ(strchr(row + 1, ' ') - (row + 1), 12);
    ab_client_destroy(&c);
}

static const char *s_cmds[] = {"stats", "services", "workers", "request", "watch",
                               "generate", "chat", "embed", "models", "cache",
                               "send", "listen", "pub", "sub", "agents"};
#define NCMDS (sizeof s_cmds / sizeof s_cmds[0])

/* COMMAND --help (and -h) prints that command's usage and exits 0 at once,
 * broker or not; it never runs the command. */
static void s_help(void)
{
    for (size_t i = 0; i < NCMDS; i++) {
        char want[128];
        snprintf(want, sizeof want, "Usage: brokerctl [options] %s", s_cmds[i]);
        CHECK_EQ(cli_sh("timeout 10 %s %s --help", CTL, s_cmds[i]), 0);
        CHECK_TRUE(strncmp(cli_out, want, strlen(want)) == 0);
        CHECK_EQ(cli_sh("timeout 10 %s -h %s", CTL, s_cmds[i]), 0);
        CHECK_TRUE(strncmp(cli_out, want, strlen(want)) == 0);
    }
    CHECK_EQ(cli_sh("timeout 10 %s pub --help some.topic data", CTL), 0);
    CHECK_TRUE(HAS("Usage: brokerctl [options] pub TOPIC DATA"));
    CHECK_EQ(cli_sh("timeout 10 %s --help", CTL), 0);
    CHECK_TRUE(HAS("COMMAND --help"));
    CHECK_EQ(cli_sh("timeout 10 %s --help", th_bin("agentbus-worker")), 0);
    CHECK_TRUE(HAS("no default"));
    CHECK_TRUE(!HAS("URL (http://127.0.0.1:11434)"));
}

/* --version: "PROGRAM VERSION", one line, exit 0, for every program. */
static void s_version(void)
{
    static const char *progs[] = {"brokerctl", "agentbus-worker", "agentbus-broker",
                                  "ollama-sim", "agentbus-load", "agentbus-infer-load",
                                  "agentbus-faults", "agentbus-gateway"};
    for (size_t i = 0; i < sizeof progs / sizeof progs[0]; i++) {
        CHECK_EQ(cli_sh("timeout 10 %s --version", th_bin(progs[i])), 0);
        char want[128];
        snprintf(want, sizeof want, "%s %s\n", progs[i], ab_version());
        CHECK_STR(cli_out, want);
    }
}

/* No broker: every command ends within a bound, exit 1, with one message. */
static void s_no_broker(void)
{
    int port = th_free_port();
    const char *ep = th_ep(port);
    static const char *args[NCMDS] = {"", "", "", "echo hi", "", "m p", "m p", "m t", "",
                                      "", "a d", "n", "t d", "t", ""};
    char want[256];
    snprintf(want, sizeof want, "no broker reachable at %s (is agentbus-broker running?)", ep);
    for (size_t i = 0; i < NCMDS; i++) {
        int64_t t0 = ab_now_ms();
        CHECK_EQ(cli_sh("timeout 30 %s %s %s --broker %s --timeout-ms 300", CTL, s_cmds[i],
                        args[i], ep), 1);
        int64_t took = ab_now_ms() - t0;
        CHECK_RANGE(took, 250, 5000);
        if (!HAS(want))
            fprintf(stderr, "%s: %s\n", s_cmds[i], cli_out);
        CHECK_TRUE(HAS(want));
    }
    /* The same with the default timeout (5 s) for listen and generate,
     * which used to wait forever or 120 s. */
    for (int k = 0; k < 2; k++) {
        int64_t t0 = ab_now_ms();
        CHECK_EQ(cli_sh("timeout 30 %s --broker %s %s", CTL, ep, k ? "listen n" : "generate m p"),
                 1);
        CHECK_RANGE(ab_now_ms() - t0, 4500, 9000);
        CHECK_TRUE(HAS(want));
    }
    /* agentbus-infer-load --seconds 1 took a minute (each call waited 60 s
     * for its answer), then said "CANCELLED". */
    int64_t t0 = ab_now_ms();
    CHECK_EQ(cli_sh("timeout 60 %s --broker %s --seconds 1", th_bin("agentbus-infer-load"), ep), 1);
    CHECK_RANGE(ab_now_ms() - t0, 4500, 9000);
    snprintf(want, sizeof want, "agentbus-infer-load: no broker reachable at %s", ep);
    CHECK_TRUE(HAS(want));
    /* agentbus-load (the demo's load) sent for --seconds, waited the
     * requests' 5 s more and said only "first error: timed out waiting". */
    t0 = ab_now_ms();
    CHECK_EQ(cli_sh("timeout 60 %s --broker %s --seconds 20", th_bin("agentbus-load"), ep), 1);
    CHECK_RANGE(ab_now_ms() - t0, 4500, 9000);
    snprintf(want, sizeof want, "agentbus-load: no broker reachable at %s", ep);
    CHECK_TRUE(HAS(want));
}

/* A worker with no broker says what it waits for, then that it still does. */
static void s_worker_no_broker(void)
{
    const char *ep = th_ep(th_free_port());
    CHECK_EQ(cli_sh("timeout -k 5 -s INT 7 %s --broker %s --drain-ms 0; true",
                    th_bin("agentbus-worker"), ep), 0);
    char want[256];
    snprintf(want, sizeof want, "waiting for the broker at %s", ep);
    CHECK_TRUE(HAS(want));
    snprintf(want, sizeof want, "no broker reachable at %s yet", ep);
    CHECK_TRUE(HAS(want));
    CHECK_TRUE(!HAS("connected to the broker"));
    /* SIGHUP (its terminal closed) stops it as SIGTERM does, with exit 0;
     * it used to die of the signal (status 129). */
    CHECK_EQ(cli_sh("timeout --preserve-status -k 5 -s HUP 2 %s --broker %s --drain-ms 0",
                    th_bin("agentbus-worker"), ep), 0);
}

/* A worker the broker refuses for its own settings (a label over
 * register-max-string-bytes) says so and exits 1, instead of saying "no
 * broker reachable" for ever. */
static void s_worker_refused(void)
{
    int port = th_free_port();
    th_broker(port, NULL);
    const char *ep = th_ep(port);
    int64_t t0 = ab_now_ms();
    CHECK_EQ(cli_sh("timeout -k 5 20 %s --broker %s --label \"k=$(head -c 2000 /dev/zero | tr "
                    "'\\0' v)\"", th_bin("agentbus-worker"), ep), 1);
    CHECK_RANGE(ab_now_ms() - t0, 0, 10000);
    char want[256];
    snprintf(want, sizeof want, "the broker at %s refused this worker: TOO_LARGE: REGISTER label 0",
             ep);
    CHECK_TRUE(HAS(want));
    CHECK_TRUE(HAS(" ERROR "));
    CHECK_TRUE(!HAS("no broker reachable"));
    /* A label key is sent whole, for the broker to judge: one of 1100
     * bytes was cut to 255 and registered. */
    CHECK_EQ(cli_sh("timeout -k 5 20 %s --broker %s --label \"$(head -c 1100 /dev/zero | tr "
                    "'\\0' k)=v\"", th_bin("agentbus-worker"), ep), 1);
    CHECK_TRUE(HAS(want));
}

/* keygen replaces neither half of an existing key pair without --force,
 * and writes nothing when it refuses. */
static void s_keygen_force(void)
{
    const char *d = th_dir();
    char pub[41], again[41], spath[700], path[700];
    snprintf(path, sizeof path, "%s/k1.key", d);
    snprintf(spath, sizeof spath, "%s/k1.key_secret", d);
    CHECK_EQ(cli_sh("%s keygen k1 --out %s", CTL, d), 0);
    th_cert_value(spath, "public-key", pub);
    CHECK_EQ(cli_sh("%s keygen k1 --role admin --out %s", CTL, d), 1);
    CHECK_TRUE(HAS("brokerctl: keygen: k1.key exists in ") && HAS("; --force to replace it"));
    th_cert_value(spath, "public-key", again);
    CHECK_STR(again, pub);
    th_cert_value(path, "public-key", again);
    CHECK_STR(again, pub);
    /* Only the secret half left: still refused, and no public half made. */
    CHECK_EQ(cli_sh("rm %s && %s keygen k1 --out %s", path, CTL, d), 1);
    CHECK_TRUE(HAS("k1.key_secret exists in "));
    CHECK_EQ(access(path, F_OK), -1);
    /* --force: a new pair, both halves. */
    CHECK_EQ(cli_sh("%s keygen k1 --force --out %s", CTL, d), 0);
    th_cert_value(spath, "public-key", again);
    CHECK_TRUE(strcmp(again, pub) != 0);
    th_cert_value(path, "public-key", pub);
    CHECK_STR(pub, again);
}

/* The broker's --bind, --peer, --name and --cache-redis (s_endpoints). */
static void s_broker_endpoints(const char *bk)
{
    CHECK_EQ(cli_sh("timeout 10 %s --bind tcp://127.0.0.1:99999", bk), 2);
    CHECK_TRUE(HAS("'tcp://127.0.0.1:99999'"));
    CHECK_EQ(cli_sh("timeout 10 %s --bind=127.0.0.1:5555", bk), 2);
    CHECK_TRUE(HAS("'127.0.0.1:5555'") && HAS("no scheme"));
    /* Peers and the broker's name too (port 99999 used to be dialled, as
     * another port, forever; a bad name stopped the broker with exit 1). */
    CHECK_EQ(cli_sh("timeout 10 %s --bind tcp://127.0.0.1:0 --peer tcp://127.0.0.1:99999", bk), 2);
    CHECK_TRUE(HAS("invalid peer 'tcp://127.0.0.1:99999'"));
    CHECK_EQ(cli_sh("timeout 10 %s --bind tcp://127.0.0.1:0 --peer tcp://abc#KEY", bk), 2);
    CHECK_TRUE(HAS("invalid peer 'tcp://abc'"));
    CHECK_EQ(cli_sh("timeout 10 %s --bind tcp://127.0.0.1:0 --name a,b", bk), 2);
    CHECK_TRUE(HAS("invalid name 'a,b'"));
    /* A second broker on a live ipc path fails (libzmq would unlink the
     * first one's socket and take the path over); at a clean exit the
     * broker removes its socket file. */
    char ipc[600];
    snprintf(ipc, sizeof ipc, "ipc://%s/cli.ipc", th_dir());
    int iport = th_free_port();
    pid_t first = th_broker(iport, "--bind", ipc, NULL);
    CHECK_EQ(cli_sh("timeout 10 %s --bind %s --bind tcp://127.0.0.1:0", bk, ipc), 1);
    CHECK_TRUE(HAS("Address already in use"));
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s stats", CTL, ipc), 0);
    CHECK_EQ(th_stop(first), 0);
    struct stat st;
    CHECK_TRUE(stat(ipc + 6, &st) != 0);
    CHECK_EQ(cli_sh("timeout 10 %s --cache-redis localhost", bk), 2);
    CHECK_TRUE(HAS("'localhost'"));
    /* A URL, as a Redis client elsewhere in the stack takes: the broker ran
     * with L2 never connected ("cannot resolve the host name"). */
    CHECK_EQ(cli_sh("timeout 10 %s --bind tcp://127.0.0.1:0 --cache-redis "
                    "redis://127.0.0.1:6379", bk), 2);
    CHECK_TRUE(HAS("invalid cache-redis 'redis://127.0.0.1:6379'") && HAS("no redis:// URL"));
    CHECK_EQ(cli_sh("timeout 10 %s --bind tcp://127.0.0.1:0 --cache-redis u@127.0.0.1:6379",
                    bk), 2);
}

/* The endpoints and numbers of brokerctl, the worker and agentbus-load
 * (s_endpoints). */
static void s_client_endpoints(const char *bk, const char *wk)
{
    CHECK_EQ(cli_sh("timeout 10 %s --broker 127.0.0.1:5555 stats", CTL), 2);
    CHECK_TRUE(HAS("'127.0.0.1:5555'"));
    CHECK_EQ(cli_sh("AB_BROKER=nowhere timeout 10 %s stats", CTL), 2);
    CHECK_TRUE(HAS("'nowhere'"));
    CHECK_EQ(cli_sh("timeout 10 %s --broker tcp://127.0.0.1:99999", wk), 2);
    CHECK_TRUE(HAS("'tcp://127.0.0.1:99999'"));
    CHECK_EQ(cli_sh("timeout 10 %s --backend ollama --ollama-url notaurl", wk), 2);
    CHECK_TRUE(HAS("'notaurl'"));
    /* What libcurl refuses, or a URL the worker cut at 511 bytes: every
     * request failed ("URL using bad/illegal format"), or went elsewhere. */
    CHECK_EQ(cli_sh("timeout 10 %s --backend ollama --ollama-url 'http://a b'", wk), 2);
    CHECK_TRUE(HAS("'http://a b'") && HAS("libcurl refuses it"));
    CHECK_EQ(cli_sh("timeout 10 %s --backend ollama --ollama-url \"http://127.0.0.1:1/$(head -c "
                    "500 /dev/zero | tr '\\0' p)\"", wk), 2);
    CHECK_TRUE(HAS("519 bytes (at most 511)"));
    /* A number with a blank or a '+' before it (strtol took them), and
     * an $OLLAMA_NUM_PARALLEL that is no capacity (it was 4 without a word). */
    CHECK_EQ(cli_sh("timeout 10 %s --capacity ' 5'", wk), 2);
    CHECK_TRUE(HAS("bad value ' 5' for --capacity"));
    CHECK_EQ(cli_sh("timeout 10 %s --capacity +5", wk), 2);
    CHECK_EQ(cli_sh("timeout 10 %s --max-pending ' 5'", bk), 2);
    CHECK_EQ(cli_sh("timeout 10 %s --max-payload-bytes ' 1M'", bk), 2);
    CHECK_EQ(cli_sh("OLLAMA_NUM_PARALLEL=four timeout 10 %s --backend ollama --ollama-url "
                    "http://127.0.0.1:1", wk), 2);
    CHECK_TRUE(HAS("bad value 'four' for $OLLAMA_NUM_PARALLEL"));
    CHECK_EQ(cli_sh("timeout 10 %s --broker=ipc:// ", th_bin("agentbus-load")), 2);
}

/* The gateway's --broker, --listen and key files (s_endpoints). */
static void s_gateway_endpoints(void)
{
    char gw[1024];
    snprintf(gw, sizeof gw, "%s", th_bin("agentbus-gateway"));
    CHECK_EQ(cli_sh("timeout 10 %s --broker bogus --listen 127.0.0.1:0", gw), 2);
    CHECK_TRUE(HAS("'bogus'") && HAS("no scheme"));
    /* --opt=VALUE, as every program takes it (README, "Command lines"): the
     * gateway took the whole "--broker=bogus" for an unknown option. */
    CHECK_EQ(cli_sh("timeout 10 %s --listen=127.0.0.1:0 --broker=bogus", gw), 2);
    CHECK_TRUE(HAS("invalid --broker 'bogus'"));
    CHECK_EQ(cli_sh("timeout 10 %s --body-timeout-ms=-1", gw), 2);
    CHECK_TRUE(HAS("--body-timeout-ms") && HAS("'-1'"));
    /* A --listen that is not IPv4:PORT is bad usage, exit 2 (it was 1, as
     * if the port could not be bound) */
    CHECK_EQ(cli_sh("timeout 10 %s --broker tcp://127.0.0.1:1 --listen localhost:0", gw), 2);
    CHECK_TRUE(HAS("'localhost:0'") && HAS("IPv4"));
    /* An unusable key file is named (it was "cannot connect to ...:
     * invalid argument"); exit 2, a bad value (test_cli_exit.c). */
    CHECK_EQ(cli_sh("timeout 10 %s --listen 127.0.0.1:0 --broker tcp://127.0.0.1:1 --key "
                    "/nonexistent", gw), 2);
    CHECK_TRUE(HAS("--key") && HAS("'/nonexistent'") && HAS("secret certificate"));
    CHECK_EQ(cli_sh("timeout 10 %s --listen 127.0.0.1:0 --broker tcp://127.0.0.1:1 --broker-key x",
                    gw), 2);
    CHECK_TRUE(HAS("--broker-key") && HAS("'x'"));
}

/* The broker logs the port it bound, not the one asked for (s_endpoints). */
static void s_bound_ports(const char *bk)
{
    /* Port '*': the log names the port actually bound. */
    CHECK_EQ(cli_sh("timeout -k 5 -s INT 2 %s --bind 'tcp://127.0.0.1:*' --drain-ms 0; "
                    "true", bk), 0);
    const char *l = strstr(cli_out, "listening on tcp://127.0.0.1:");
    CHECK_TRUE(l && l[29] >= '1' && l[29] <= '9');
    /* "localhost" is loopback (libzmq takes a bind's host as an interface or
     * an address: it failed, "No such device"); an IPv6 address binds. */
    CHECK_EQ(cli_sh("timeout -k 5 -s INT 2 %s --bind 'tcp://localhost:0' --drain-ms 0; "
                    "true", bk), 0);
    CHECK_TRUE(HAS("listening on tcp://127.0.0.1:"));
    if (cli_sh("grep -q '^0\\{31\\}1 ' /proc/net/if_inet6") != 0)
        return; /* no IPv6 loopback on this machine */
    CHECK_EQ(cli_sh("timeout -k 5 -s INT 2 %s --bind 'tcp://[::1]:0' --drain-ms 0; true", bk), 0);
    CHECK_TRUE(HAS("listening on tcp://[::1]:"));
}

/* Endpoints and URLs are checked before anything starts: exit 2, naming
 * the value. The broker logs the port it bound, not the one asked for. */
static void s_endpoints(void)
{
    char bk[1024], wk[1024]; /* th_bin's buffer is reused by the next call */
    snprintf(bk, sizeof bk, "%s", th_bin("agentbus-broker"));
    snprintf(wk, sizeof wk, "%s", th_bin("agentbus-worker"));
    s_broker_endpoints(bk);
    s_client_endpoints(bk, wk);
    s_gateway_endpoints();
    s_bound_ports(bk);
}

/* Names, topics and data starting with '-' are refused unless after "--";
 * usage errors are found locally (exit 2), not sent to a broker. */
static void s_leading_dash(void)
{
    const char *ep = th_ep(th_free_port()); /* nothing there: exit 2 must come first */
    static const char *lines[] = {"listen -agent", "sub -t", "pub -t x", "send -a x",
                                  "request -svc x", "listen --count 1 -x"};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        CHECK_EQ(cli_sh("timeout 10 %s --broker %s %s", CTL, ep, lines[i]), 2);
        CHECK_TRUE(HAS("after '--'"));
    }
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s cache clear --tier l9", CTL, ep), 2);
    CHECK_TRUE(HAS("'l9'"));
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s cache get nothex", CTL, ep), 2);
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s stats --count 2", CTL, ep), 2);
    CHECK_TRUE(HAS("--count"));
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s bogus", CTL, ep), 2);
    CHECK_TRUE(HAS("unknown command 'bogus'"));
    /* A name the broker would refuse: `listen ''` used to wait unnamed. */
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s listen ''", CTL, ep), 2);
    CHECK_TRUE(HAS("brokerctl: listen: invalid agent name ''"));
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s listen '~x'", CTL, ep), 2);
    /* send, pub and sub alike (they were exit 1: the library's or the
     * broker's BAD_NAME, after waiting for a broker) */
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s send '' hi", CTL, ep), 2);
    CHECK_TRUE(HAS("brokerctl: send: invalid agent name ''"));
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s send 'a b' hi", CTL, ep), 2);
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s pub '' x", CTL, ep), 2);
    CHECK_TRUE(HAS("brokerctl: pub: invalid topic ''"));
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s pub 'a.' x", CTL, ep), 2);
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s sub ''", CTL, ep), 2);
    CHECK_TRUE(HAS("brokerctl: sub: invalid pattern ''"));
    /* a service name that cannot be one (was "INVALID: invalid argument",
     * exit 1, or "service name too long" from the broker) */
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s request '' hi", CTL, ep), 2);
    CHECK_TRUE(HAS("brokerctl: request: invalid service name ''"));
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s request "
                    "\"$(head -c 256 /dev/zero | tr '\\0' s)\" hi", CTL, ep), 2);
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s --timeout-ms 200 request "
                    "\"$(head -c 255 /dev/zero | tr '\\0' s)\" hi", CTL, ep), 1);
    /* what is no usage error still waits for a broker (none: exit 1) */
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s --timeout-ms 200 send '~0123456789abcdef' hi", CTL,
                    ep), 1);
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s --timeout-ms 200 sub 'a.'", CTL, ep), 1);
    /* embed's limit is named (it said "too many arguments") */
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s embed m 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17",
                    CTL, ep), 2);
    CHECK_TRUE(HAS("embed takes at most 16 per call"));
    CHECK_EQ(cli_sh("timeout 10 %s --name --capacity 2", th_bin("agentbus-worker")), 2);
    CHECK_TRUE(HAS("--name=VALUE"));
    /* Values the library would refuse are command-line errors, said as
     * such (they were "invalid argument" with no text, exit 1). */
    CHECK_EQ(cli_sh("timeout 10 %s --label =v", th_bin("agentbus-worker")), 2);
    CHECK_TRUE(HAS("bad value '=v' for --label"));
    CHECK_EQ(cli_sh("timeout 10 %s --name \"$(head -c 300 /dev/zero | tr '\\0' n)\"",
                    th_bin("agentbus-worker")), 2);
    CHECK_TRUE(HAS("for --name"));
    /* A service name ab_worker_new refuses, and a floor over its maximum:
     * usage errors (were exit 1 "invalid argument: cannot create the
     * worker", and a --min-slots silently lowered to the capacity). */
    CHECK_EQ(cli_sh("timeout 10 %s --service \"$(head -c 256 /dev/zero | tr '\\0' s)\"",
                    th_bin("agentbus-worker")), 2);
    CHECK_TRUE(HAS("for --service"));
    CHECK_EQ(cli_sh("timeout 10 %s --backend ollama --ollama-url http://127.0.0.1:1 --capacity 2 "
                    "--min-slots 3", th_bin("agentbus-worker")), 2);
    CHECK_TRUE(HAS("--min-slots 3 is above --capacity 2"));
    CHECK_EQ(cli_sh("timeout 10 %s --backend ollama --ollama-url http://127.0.0.1:1 --capacity 8 "
                    "--model-slots 2 --min-slots 3", th_bin("agentbus-worker")), 2);
    CHECK_TRUE(HAS("--min-slots 3 is above --model-slots 2"));
    /* A --preload name longer than a request's model may be (AB_MODEL_MAX)
     * was skipped without a word; 200 bytes passes to the next check. */
    CHECK_EQ(cli_sh("timeout 10 %s --backend ollama --preload \"a,$(head -c 201 /dev/zero | "
                    "tr '\\0' m)\"", th_bin("agentbus-worker")), 2);
    CHECK_TRUE(HAS("is 201 bytes (at most 200)"));
    CHECK_EQ(cli_sh("timeout 10 %s --backend ollama --ollama-url http://127.0.0.1:1 --broker "
                    "nonsense --preload \"$(head -c 200 /dev/zero | tr '\\0' m),b\"",
                    th_bin("agentbus-worker")), 2);
    CHECK_TRUE(HAS("invalid --broker 'nonsense'") && !HAS("--preload"));
    CHECK_EQ(cli_sh("timeout 10 %s $(for i in $(seq 65); do printf -- '--label k%%d=v ' $i; done)",
                    th_bin("agentbus-worker")), 2);
    CHECK_TRUE(HAS("at most 64 --label"));
    /* A key that cannot be used says why, not only "invalid argument"
     * (exit 2, a bad value: test_cli_exit.c). */
    CHECK_EQ(cli_sh("AB_KEY=/nonexistent timeout 10 %s stats", CTL), 2);
    CHECK_TRUE(HAS("$AB_KEY '/nonexistent'"));
    CHECK_EQ(cli_sh("AB_KEY=/nonexistent timeout 10 %s", th_bin("agentbus-worker")), 2);
    CHECK_TRUE(HAS("$AB_KEY '/nonexistent'"));
    /* After "--" a leading-dash name reaches the broker, which judges it. */
    int port = th_free_port();
    th_broker(port, NULL);
    CHECK_EQ(cli_sh("timeout 30 %s --broker %s --timeout-ms 2000 sub -- -x --count 1 & "
                    "sleep 1; kill %%1; wait; true", CTL, th_ep(port)), 0);
    CHECK_TRUE(!HAS("unknown option"));
}

/* ollama-sim's flags that took a bad value (s_bad_values). */
static void s_bad_sim_values(const char *sim)
{
    /* ollama-sim's fault rates: "abc" and "0.5x" were read by strtod (0,
     * 0.5) and "nan" left the default, all with the simulator started. */
    const char *rates[] = {"abc", "0.5x", "nan", "inf", ""};
    for (size_t i = 0; i < sizeof rates / sizeof rates[0]; i++) {
        CHECK_EQ(cli_sh("timeout 10 %s --port 0 --quiet --fault-error-rate '%s'", sim,
                        rates[i]), 2);
        CHECK_TRUE(HAS("faults.error_rate must be a number in [0, 1]"));
    }
    /* --model's NAME comes first: ",size=8G" made a model named
     * "size=8G" (strtok skipped the empty name) and the simulator started. */
    const char *models[] = {",size=8G", "size=8G"};
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        CHECK_EQ(cli_sh("timeout 10 %s --port 0 --quiet --model '%s'", sim, models[i]), 2);
        CHECK_TRUE(HAS("--model wants NAME[,key=value...]"));
    }
    /* A keep-alive of "nan" seconds was cast to nanoseconds (undefined) and
     * taken. */
    CHECK_EQ(cli_sh("timeout 10 %s --port 0 --quiet --keep-alive nan", sim), 2);
    CHECK_TRUE(HAS("--keep-alive wants a duration"));
    CHECK_EQ(cli_sh("timeout 10 %s --port 0 --quiet --keep-alive nanms", sim), 2);
    /* Decimal only, as the other programs: strtod took "0x10" (16) and a
     * leading blank or '+', sscanf a model's "token_ms=0x10". */
    const char *hex[] = {"--time-scale 0x10", "--time-scale ' 5'", "--time-scale +5",
                         "--port 0x10", "--num-parallel ' 2'", "--keep-alive 0x10",
                         "--max-body-bytes 0x100", "--gpu 0x10G", "--seed 0x10"};
    for (size_t i = 0; i < sizeof hex / sizeof hex[0]; i++) {
        CHECK_EQ(cli_sh("timeout 10 %s --port 0 --quiet %s", sim, hex[i]), 2);
        char opt[32];
        snprintf(opt, sizeof opt, "%.*s", (int)strcspn(hex[i], " "), hex[i]);
        CHECK_TRUE(HAS(opt));
    }
    CHECK_EQ(cli_sh("timeout 10 %s --port 0 --quiet --model m,token_ms=0x10", sim), 2);
    CHECK_TRUE(HAS("token_ms must be a number"));
    CHECK_EQ(cli_sh("timeout 10 %s --port 0 --quiet --fault-error-rate 0x1p-1", sim), 2);
    CHECK_TRUE(HAS("faults.error_rate must be a number in [0, 1]"));
}

/* Values that were taken without a word, or refused without saying what
 * is expected (found trying every program's flags as a new user would). */
/* The gateway's values that each parse but are not usable. */
static void s_bad_gateway_values(const char *ep)
{
    char gw[1024];
    snprintf(gw, sizeof gw, "%s", th_bin("agentbus-gateway"));
    /* The gateway's --name: one the broker refuses left the gateway
     * unnamed without a word (a 300-byte one was "bad broker endpoint or
     * name", exit 1); a --service over 255 bytes failed every call. */
    const char *names[] = {"a b", "~x"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        CHECK_EQ(cli_sh("timeout 10 %s --broker %s --listen 127.0.0.1:0 --name '%s'", gw, ep,
                        names[i]), 2);
        CHECK_TRUE(HAS("bad value for --name") && HAS("expected an agent name"));
    }
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s --listen 127.0.0.1:0 --name \"$(head -c 300 "
                    "/dev/zero | tr '\\0' n)\"", gw, ep), 2);
    CHECK_TRUE(HAS("bad value for --name"));
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s --listen 127.0.0.1:0 --service \"$(head -c 256 "
                    "/dev/zero | tr '\\0' s)\"", gw, ep), 2);
    CHECK_TRUE(HAS("bad value for --service"));
    /* --api-keys naming a directory (mode 0700) was "open to group or
     * others"; with 0700 fopen and the mode check passed and it read as
     * holding no key. */
    char dir[] = "/tmp/ab-cli-keysXXXXXX";
    REQUIRE(mkdtemp(dir) != NULL);
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s --listen 127.0.0.1:0 --api-keys "
                    "%s", gw, ep, dir), 2);
    CHECK_TRUE(HAS("is not a regular file"));
    rmdir(dir);
    /* A default deadline above the cap gave a call without the header more
     * time than the cap lets one with it ask for. */
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s --listen 127.0.0.1:0 --timeout-ms 9000 "
                    "--max-timeout-ms 5000", gw, ep), 2);
    CHECK_TRUE(HAS("--timeout-ms 9000 is above --max-timeout-ms 5000"));
    /* --ollama-version goes into JSON: one that is not UTF-8 started and
     * failed every GET /api/version (the connection closed, "internal
     * error"); an empty one was reported as "". */
    const char *versions[] = {"\377", ""};
    for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++) {
        CHECK_EQ(cli_sh("timeout 10 %s --broker %s --listen 127.0.0.1:0 --ollama-version '%s'",
                        gw, ep, versions[i]), 2);
        CHECK_TRUE(HAS("bad value for --ollama-version") && HAS("printable ASCII"));
    }
}

/* brokerctl --json: a usage error is an error as any other, {"ok": false,
 * ...} on stdout (README), one compact line for a stream command; it was
 * only the text on stderr. */
static void s_json_usage(void)
{
    CHECK_EQ(cli_sh("timeout 10 %s --json stats --timeout-ms abc 2>/dev/null", CTL), 2);
    json_t *j = json_loads(cli_out, 0, NULL);
    CHECK_TRUE(j && json_is_false(json_object_get(j, "ok")));
    CHECK_STR(json_string_value(json_object_get(j, "code")), "USAGE");
    CHECK_STR(json_string_value(json_object_get(j, "error")),
              "stats: bad value 'abc' for --timeout-ms");
    json_decref(j);
    CHECK_EQ(cli_sh("timeout 10 %s watch --bogus --json 2>/dev/null", CTL), 2);
    CHECK_STR(cli_out, "{\"ok\":false,\"code\":\"USAGE\",\"error\":\"watch: unknown option "
                     "'--bogus'\"}\n");
    CHECK_EQ(cli_sh("timeout 10 %s stats --bogus 2>/dev/null", CTL), 2); /* text: stderr only */
    CHECK_STR(cli_out, "");
    /* Errors found after the command line was read, before anything is
     * sent (a key or an endpoint that cannot be used, keygen's own), were
     * on stderr only, nothing on stdout. */
    static const struct {
        const char *args, *code, *error;
        int exit;
    } after[] = {
        {"--key /nonexistent stats", "USAGE", "--key '/nonexistent' cannot be used", 2},
        {"--broker-key garbage workers", "USAGE", "--broker-key 'garbage' cannot be used", 2},
        {"keygen k --role nobody --out /tmp", "USAGE", "keygen: --role is", 2},
        {"keygen k --out /nonexistent", "INVALID", "keygen: cannot write /nonexistent/k.key",
         1},
    };
    for (size_t i = 0; i < sizeof after / sizeof after[0]; i++) {
        CHECK_EQ(cli_sh("timeout 10 %s --json %s 2>/dev/null", CTL, after[i].args), after[i].exit);
        json_t *e = json_loads(cli_out, 0, NULL);
        const char *text = json_string_value(json_object_get(e, "error"));
        CHECK_TRUE(e && json_is_false(json_object_get(e, "ok")));
        CHECK_STR(json_string_value(json_object_get(e, "code")), after[i].code);
        CHECK_TRUE(text && strncmp(text, after[i].error, strlen(after[i].error)) == 0);
        json_decref(e);
    }
    CHECK_EQ(cli_sh("AB_BROKER=nowhere timeout 10 %s --json watch 2>/dev/null", CTL), 2);
    CHECK_TRUE(strncmp(cli_out, "{\"ok\":false,\"code\":\"USAGE\",\"error\":\"invalid $AB_BROKER "
                              "'nowhere'", 64) == 0);
}

/* The load tools' lists and brokerctl's --cache TTL (s_bad_values); EP
 * has no broker. */
static void s_bad_load_values(const char *ep)
{
    /* agentbus-load --priority: an empty item and a ninth were skipped
     * without a word ("normal," ran as "normal"). */
    const char *prios[] = {"normal,", ",batch", "normal,,batch",
                           "1,1,1,1,1,1,1,1,interactive"};
    for (size_t i = 0; i < sizeof prios / sizeof prios[0]; i++) {
        CHECK_EQ(cli_sh("timeout 20 %s --broker %s --seconds 1 --priority '%s'",
                        th_bin("agentbus-load"), ep, prios[i]), 2);
        char want[128];
        snprintf(want, sizeof want, "bad value '%s' for --priority", prios[i]);
        CHECK_TRUE(HAS(want));
    }
    /* agentbus-infer-load --models: an empty item sent requests naming no
     * model (each failed at the worker); one of 128 bytes or more asked
     * for its first 127. */
    const char *models[] = {"sim-small,", "a,,b", ",a"};
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        CHECK_EQ(cli_sh("timeout 20 %s --broker %s --seconds 1 --models '%s'",
                        th_bin("agentbus-infer-load"), ep, models[i]), 2);
        char want[128];
        snprintf(want, sizeof want, "bad value '%s' for --models", models[i]);
        CHECK_TRUE(HAS(want));
    }
    CHECK_EQ(cli_sh("timeout 20 %s --broker %s --seconds 1 --models \"$(head -c 128 /dev/zero | "
                    "tr '\\0' m)\"", th_bin("agentbus-infer-load"), ep), 2);
    CHECK_TRUE(HAS("for --models"));
    /* A --service over the broker's 255 bytes failed every request at run
     * time ("no such service is registered"), as brokerctl refuses it. */
    const char *loads[] = {"agentbus-load", "agentbus-infer-load"};
    for (int i = 0; i < 2; i++) {
        CHECK_EQ(cli_sh("timeout 20 %s --broker %s --seconds 1 --service \"$(head -c 256 "
                        "/dev/zero | tr '\\0' s)\"", th_bin(loads[i]), ep), 2);
        CHECK_TRUE(HAS("for --service"));
    }
    /* brokerctl request --cache 600: "wrong number of arguments" without a
     * word of why (--cache's TTL is written --cache=600). */
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s request --cache 600 echo hi", CTL, ep), 2);
    CHECK_TRUE(HAS("a TTL is written --cache=TTL_S"));
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s request echo hi --cache 600", CTL, ep), 2);
    CHECK_TRUE(HAS("a TTL is written --cache=TTL_S"));
}

static void s_bad_values(void)
{
    char wk[1024], sim[1024];
    snprintf(wk, sizeof wk, "%s", th_bin("agentbus-worker"));
    snprintf(sim, sizeof sim, "%s", th_bin("ollama-sim"));
    const char *ep = th_ep(th_free_port()); /* nothing there: exit 2 must come first */
    /* An Ollama option without --backend ollama ran an echo worker on
     * "echo", and an echo option was ignored by an Ollama worker. */
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s --ollama-url http://127.0.0.1:1 --name gpu0",
                    wk, ep), 2);
    CHECK_TRUE(HAS("--ollama-url is for --backend ollama (this worker's backend is echo)"));
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s --backend echo --min-slots 2", wk, ep), 2);
    CHECK_TRUE(HAS("--min-slots is for --backend ollama"));
    CHECK_EQ(cli_sh("timeout 10 %s --broker %s --backend ollama --ollama-url http://127.0.0.1:1 "
                    "--chunks 3", wk, ep), 2);
    CHECK_TRUE(HAS("--chunks is for --backend echo (this worker's backend is ollama)"));
    s_bad_load_values(ep);
    s_bad_sim_values(sim);
    s_json_usage();
    s_bad_gateway_values(ep);
    /* The broker's words-valued options say what they take, as the
     * numeric ones say their range. */
    CHECK_EQ(cli_sh("timeout 10 %s --bind tcp://127.0.0.1:0 --log-level loud",
                    th_bin("agentbus-broker")), 2);
    CHECK_TRUE(HAS("for log-level (from command line); expected error, warn, info or debug"));
    CHECK_EQ(cli_sh("AB_LOG_FORMAT=xml timeout 10 %s --bind tcp://127.0.0.1:0",
                    th_bin("agentbus-broker")), 2);
    CHECK_TRUE(HAS("for log-format (from AB_LOG_FORMAT); expected text or json"));
    /* A 0/1 option's value that is neither was "unexpected argument '2'". */
    CHECK_EQ(cli_sh("timeout 10 %s --bind tcp://127.0.0.1:0 --compress-local 2",
                    th_bin("agentbus-broker")), 2);
    CHECK_TRUE(HAS("invalid value '2' for compress-local (from command line); expected 0..1"));
    CHECK_EQ(cli_sh("timeout 10 %s --bind tcp://127.0.0.1:0 --insecure yes",
                    th_bin("agentbus-broker")), 2);
    CHECK_TRUE(HAS("invalid value 'yes' for insecure (from command line); expected 0..1"));
    /* A ';' between client-weights items was taken into one client's name:
     * "voice=4;planner" weighted 2, voice and planner 1. */
    CHECK_EQ(cli_sh("timeout 10 %s --bind tcp://127.0.0.1:0 --client-weights 'voice=4;planner=2'",
                    th_bin("agentbus-broker")), 2);
    CHECK_TRUE(HAS("invalid client-weights item 'voice=4;planner=2': ';' is no separator"));
    CHECK_EQ(cli_sh("timeout 10 %s --bind tcp://127.0.0.1:0 --client-weights 'a=1,b=2;c=3'",
                    th_bin("agentbus-broker")), 2);
    CHECK_TRUE(HAS("invalid client-weights item 'b=2;c=3'"));
}

/* 1 when TS is RFC 3339 UTC with milliseconds: 2026-01-02T03:04:05.678Z. */
static int s_rfc3339(const char *ts)
{
    int y, mo, d, h, mi, sec, ms, n = 0;
    return sscanf(ts, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ%n", &y, &mo, &d, &h, &mi, &sec, &ms, &n) == 7 &&
           n == 24 && y >= 2024 && mo >= 1 && mo <= 12 && d >= 1 && d <= 31 && h < 24 &&
           mi < 60 && sec <= 60;
}

/* Every line of cli_out is a JSON log object (ts, level, subsys, msg); the
 * number of lines whose subsys is SUBSYS and msg contains NEEDLE. */
static int s_json_lines(const char *subsys, const char *needle)
{
    int found = 0, lines = 0;
    for (char *line = strtok(cli_out, "\n"); line; line = strtok(NULL, "\n")) {
        json_t *j = json_loads(line, 0, NULL);
        const char *ts = json_string_value(json_object_get(j, "ts"));
        const char *lv = json_string_value(json_object_get(j, "level"));
        const char *sub = json_string_value(json_object_get(j, "subsys"));
        const char *msg = json_string_value(json_object_get(j, "msg"));
        CHECK_TRUE(j && json_object_size(j) == 4 && ts && s_rfc3339(ts) && lv && sub && msg);
        if (!j || !ts || !lv || !sub || !msg)
            fprintf(stderr, "not a JSON log line: %s\n", line);
        found += sub && msg && strcmp(sub, subsys) == 0 && strstr(msg, needle);
        lines++;
        json_decref(j);
    }
    CHECK_TRUE(lines > 0);
    return found;
}

/* Sends TEXT to 127.0.0.1:PORT over plain TCP, as a non-ZeroMQ client
 * would, and waits a little for the broker to close it. */
static void s_send_raw(int port, const char *text)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    CHECK_TRUE(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    char buf[64];
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    while (read(fd, buf, sizeof buf) > 0) {
    }
    close(fd);
}

/* An HTTP request on the broker's port is logged as not ZeroMQ, once
 * within the rate limit however often it comes. */
static void s_not_zeromq(void)
{
    int port = th_free_port();
    pid_t bk = th_broker(port, NULL);
    for (int i = 0; i < 3; i++)
        s_send_raw(port, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    int lines = 0;
    for (int waited = 0; waited < 5000 && lines == 0; waited += 50) {
        th_sleep_ms(50);
        FILE *f = fopen(th_log_of(bk), "r");
        char line[1024];
        lines = 0;
        while (f && fgets(line, sizeof line, f))
            lines += strstr(line, "is not ZeroMQ (handshake failed") != NULL;
        if (f)
            fclose(f);
    }
    CHECK_EQ(lines, 1);
}

/* Log lines of the broker and the worker: text with date, level and
 * subsystem; JSON lines; --log-level everywhere, checked at start-up. */
/* The program after it gets its stderr joined to its stdout by a shell it
 * replaces, so that what timeout itself writes can go elsewhere. */
#define S_OWN "sh -c 'exec \"$0\" \"$@\" 2>&1' "

static void s_log_lines(void)
{
    /* -k 5 on every interrupted run: under ASan on a loaded machine,
     * LeakSanitizer's exit-time scan (a ptrace tracer it forks) has been
     * seen to deadlock once in ~40 interrupted runs (the tracer waiting in
     * wait4, the process never exiting); the lines checked here are
     * written long before that, so a stuck exit is killed, not waited on.
     * Then timeout writes "Killed" to its stderr, which was the program's
     * too and broke the JSON lines (flaky build-asan, 2026-12-08): the
     * program's stderr goes to the output through S_OWN, timeout's away. */
    const char *bk = th_bin("agentbus-broker"), *wk = th_bin("agentbus-worker");
    CHECK_EQ(cli_sh("timeout -k 5 -s INT 2 " S_OWN "%s --bind 'tcp://127.0.0.1:*' --drain-ms 0 "
                    "2>/dev/null; true", bk), 0);
    CHECK_TRUE(s_rfc3339(cli_out));
    CHECK_TRUE(strncmp(cli_out + 24, " INFO  core      listening on tcp://", 36) == 0);
    CHECK_EQ(cli_sh("timeout -k 5 -s INT 2 " S_OWN "%s --bind 'tcp://127.0.0.1:*' --drain-ms 0 "
                    "--log-format json 2>/dev/null; true", bk), 0);
    CHECK_EQ(s_json_lines("core", "listening on tcp://127.0.0.1:"), 1);
    const char *ep = th_ep(th_free_port()); /* no broker there: the worker says so */
    CHECK_EQ(cli_sh("timeout -k 5 -s INT 2 " S_OWN "%s --broker %s --log-format=json "
                    "2>/dev/null; true", wk, ep), 0);
    CHECK_EQ(s_json_lines("worker", "serving 'echo'"), 1);
    /* --log-level error: the worker's INFO line is not written. */
    CHECK_EQ(cli_sh("timeout -k 5 -s INT 2 " S_OWN "%s --broker %s --log-level error "
                    "2>/dev/null; true", wk, ep), 0);
    CHECK_TRUE(!HAS("serving"));
    CHECK_EQ(cli_sh("timeout 10 %s --log-level loud", wk), 2);
    CHECK_TRUE(HAS("'loud'"));
    CHECK_EQ(cli_sh("timeout 10 %s --log-format xml", bk), 2);
    CHECK_TRUE(HAS("'xml'"));
}

/* 1 when TEXT is in the log of PID, waiting up to MS. */
static int s_log_has(pid_t pid, const char *text, int ms)
{
    static char log[1 << 16];
    for (int waited = 0; waited <= ms; waited += 50, th_sleep_ms(50)) {
        FILE *f = fopen(th_log_of(pid), "r");
        if (!f)
            continue;
        log[fread(log, 1, sizeof log - 1, f)] = '\0';
        fclose(f);
        if (strstr(log, text))
            return 1;
    }
    return 0;
}

/* A listen whose broker goes away says so on stderr, and again when the
 * broker is back (it said nothing: events of the gap were lost unseen),
 * then still gets its message. */
static void s_listen_reconnect(void)
{
    int port = th_free_port();
    char ep[64];
    snprintf(ep, sizeof ep, "%s", th_ep(port));
    pid_t b = th_broker(port, NULL);
    const char *args[] = {"--broker", ep, "listen", "watcher", "--count", "1", NULL};
    pid_t l = th_spawn("brokerctl", args, NULL);
    ab_client_t *c = th_client(port);
    int named = 0;
    for (int i = 0; i < 200 && !named; i++, th_sleep_ms(50)) {
        void *buf = NULL;
        size_t len = 0;
        named = ab_client_control(c, "agents", 2000, &buf, &len) == AB_OK && buf &&
                memmem(buf, len, "watcher", 7) != NULL;
        ab_free(buf);
    }
    ab_client_destroy(&c);
    REQUIRE(named);
    CHECK_EQ(th_stop(b), 0);
    CHECK_TRUE(s_log_has(l, "lost the broker", 15000));
    th_broker(port, NULL);
    CHECK_TRUE(s_log_has(l, "connected to the broker again", 20000));
    CHECK_EQ(cli_sh("timeout 30 %s --broker %s send watcher back", CTL, ep), 0);
    CHECK_EQ(th_wait_exit(l, 15000), 0);
    CHECK_TRUE(s_log_has(l, "back", 0));
}

/* agentbus-infer-load --seconds N with a live broker and calls that take
 * 30 s: it ran until they were answered (up to 60 s past N). Now a call
 * still running 2 s after N is cancelled and counted as cut off, not as
 * failed or ok; exit 0. */
static void s_infer_load_cut(void)
{
    int port = th_free_port();
    th_broker(port, "--startup-grace-ms", "0", NULL);
    th_worker(port, "slow", "--delay-ms", "30000", "--capacity", "4", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "slow", 1, 10000) == 0);
    int64_t t0 = ab_now_ms();
    CHECK_EQ(cli_sh("timeout 60 %s --broker %s --service slow --agents 2 --seconds 1",
                    th_bin("agentbus-infer-load"), th_ep(port)), 0);
    CHECK_RANGE(ab_now_ms() - t0, 2500, 8000); /* 1 s + 2 s grace, not 30 s */
    CHECK_TRUE(HAS("2 requests, 0 ok") && HAS("0 failed, 2 cut off"));
    CHECK_TRUE(HAS("2 cut off: still running 2 s after the end"));
    ab_client_destroy(&c);
}

/* A --data-dir given (flag, AB_DATA_DIR or config file) that cannot be
 * created or opened stops the broker, exit 2 naming it and why: it ran on
 * without its L3 cache after one ERROR line. An empty one runs without
 * L3, as documented; a good one is created. */
static void s_data_dir(void)
{
    char bk[1024], file[600], cfg[700];
    snprintf(bk, sizeof bk, "%s", th_bin("agentbus-broker"));
    snprintf(file, sizeof file, "%s/plain-file", th_dir());
    snprintf(cfg, sizeof cfg, "%s/dd.cfg", th_dir());
    REQUIRE(cli_sh("touch %s && printf 'broker\n    data-dir = %s/sub\n' > %s", file, file,
                   cfg) == 0);
    const char *bind = "--bind tcp://127.0.0.1:0 --drain-ms 0";
    CHECK_EQ(cli_sh("timeout 10 %s %s --data-dir %s/sub", bk, bind, file), 2);
    CHECK_TRUE(HAS("invalid data-dir '") && HAS("/plain-file/sub': cannot create it: Not a dir"));
    CHECK_TRUE(!HAS("listening on"));
    CHECK_EQ(cli_sh("timeout 10 %s %s --data-dir=%s", bk, bind, file), 2);
    CHECK_TRUE(HAS("/plain-file': cannot use it: Not a directory"));
    CHECK_EQ(cli_sh("AB_DATA_DIR=%s timeout 10 %s %s", file, bk, bind), 2);
    CHECK_TRUE(HAS("invalid data-dir"));
    CHECK_EQ(cli_sh("timeout 10 %s %s --config %s", bk, bind, cfg), 2);
    CHECK_TRUE(HAS("/plain-file/sub': cannot create it"));
    /* The directory is there but LMDB cannot open cache.mdb in it. */
    CHECK_EQ(cli_sh("mkdir -p %s/lockdir/cache.mdb-lock && timeout 10 %s %s --data-dir %s/lockdir",
                    th_dir(), bk, bind, th_dir()), 2);
    CHECK_TRUE(HAS("cannot open the L3 cache in it") && HAS("Is a directory"));
    /* Empty: no L3 (the default); a new directory: created, L3 on. */
    CHECK_EQ(cli_sh("timeout -k 5 -s INT 2 %s %s --data-dir ''; true", bk, bind), 0);
    CHECK_TRUE(HAS("listening on") && !HAS("L3 cache") && !HAS("ERROR"));
    CHECK_EQ(cli_sh("timeout -k 5 -s INT 2 %s %s --data-dir %s/new; true", bk, bind, th_dir()), 0);
    CHECK_TRUE(HAS("listening on") && HAS("L3 cache: ") && !HAS("ERROR"));
}

/* A peer in the config file as docs/links.md writes it: quoted, it is
 * dialed with its key; unquoted, ZPL takes "#KEY" for a comment, and the
 * broker's exit 2 says to quote it (it said only that a key was needed,
 * while the line in the file held one). Two peers given as two lines add
 * up. */
static void s_conf_peer(void)
{
    char bk[1024], cfg[700];
    const char *d = th_dir();
    snprintf(bk, sizeof bk, "%s", th_bin("agentbus-broker"));
    snprintf(cfg, sizeof cfg, "%s/peer.cfg", d);
    REQUIRE(cli_sh("%s keygen pc2 --role peer --out %s", CTL, d) == 0);
    const char *head = "broker\n    auth = curve\n    keys-dir = %s/keys\n"
                       "    data-dir = %s/data\n";
    REQUIRE(cli_sh("printf '%s    peer = tcp://127.0.0.1:1#%s/pc2.key\n' %s %s > %s", head, d, d,
                   d, cfg) == 0);
    const char *bind = "--bind tcp://127.0.0.1:0 --drain-ms 0";
    CHECK_EQ(cli_sh("timeout 10 %s %s --config %s", bk, bind, cfg), 2);
    CHECK_TRUE(HAS("invalid peer 'tcp://127.0.0.1:1'") && HAS("its public key is needed"));
    CHECK_TRUE(HAS("in a config file quote the value"));
    REQUIRE(cli_sh("printf '%s    peer = \"tcp://127.0.0.1:1#%s/pc2.key\"\n"
                   "    peer = \"tcp://127.0.0.1:2#%s/pc2.key\"\n' %s %s > %s",
                   head, d, d, d, d, cfg) == 0);
    CHECK_EQ(cli_sh("timeout -k 5 -s INT 2 %s %s --config %s; true", bk, bind, cfg), 0);
    CHECK_TRUE(HAS("2 peer(s) to dial") && HAS("listening on") && !HAS("invalid"));
}

/* keygen --services '' (or --names, --topics: blanks and commas only)
 * wrote a grant of nothing without a word. It may be meant (a key that
 * claims no name: auth_listen_denied), so it is written and said; a worker
 * key that may register nothing is refused, as one without --services. */
static void s_keygen_grants(void)
{
    const char *d = th_dir();
    const char *none[][2] = {{"--services ''", "may request no service"},
                             {"--services ' , '", "may request no service"},
                             {"--names ''", "may claim no agent name"},
                             {"--topics ,", "may publish or subscribe no topic"}};
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++) { /* meant, or an empty $VAR */
        CHECK_EQ(cli_sh("%s keygen g%zu %s --out %s", CTL, i, none[i][0], d), 0);
        CHECK_TRUE(HAS("grants nothing: this key") && HAS(none[i][1]));
        CHECK_EQ(cli_sh("test -f %s/g%zu.key", d, i), 0);
    }
    CHECK_EQ(cli_sh("%s keygen w --role worker --services ' ' --out %s", CTL, d), 2);
    CHECK_TRUE(HAS("a worker key needs --services"));
    CHECK_TRUE(cli_sh("ls %s/w.key* 2>/dev/null", d) != 0);
    CHECK_EQ(cli_sh("%s keygen g9 --services 'a,b' --out %s", CTL, d), 0);
    CHECK_TRUE(!HAS("grants nothing"));
    CHECK_EQ(cli_sh("grep -q 'services = \"a,b\"' %s/g9.key", d), 0);
}

/* brokerctl request --cache=TTL out of its range said only "bad value '0'
 * for --cache": now the range too, and still exit 2 before connecting. */
static void s_cache_ttl_value(void)
{
    const char *bad[] = {"0", "-1", "2592001", "abc"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_EQ(cli_sh("timeout 10 %s --broker tcp://127.0.0.1:1 request --cache=%s echo hi",
                        CTL, bad[i]), 2);
        CHECK_TRUE(HAS("for --cache: a TTL in seconds, 1..2592000"));
    }
}

/* agentbus-attack-slow's numbers after its mode: atol took "abc" as 0,
 * "1x" as 1 and "-5" as a count; now each is range-checked, exit 2 with
 * the usage, before anything connects. */
static void s_attack_slow_args(void)
{
    char at[1024];
    snprintf(at, sizeof at, "%s --broker tcp://127.0.0.1:1 --pid 1",
             th_bin("agentbus-attack-slow"));
    const char *bad[][2] = {
        {"replies abc 10", "bad value 'abc' for replies N"},
        {"replies 10 1x", "bad value '1x' for replies SIZE"},
        {"replies 10 10 -5", "bad value '-5' for replies PAUSE_MS"},
        {"replies 10", "replies takes 2 to 3 numbers, not 1"},
        {"subscribers 0 1 1", "bad value '0' for subscribers K"},
        {"subscribers 1 1 99999999999", "for subscribers SIZE (expected 1..67108864)"},
        {"connections 1 2", "connections takes 1 to 1 numbers, not 2"},
        {"connections 100001", "bad value '100001' for connections C"},
        {"bogus 1", "unknown mode 'bogus'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_EQ(cli_sh("timeout 10 %s %s", at, bad[i][0]), 2);
        CHECK_TRUE(HAS(bad[i][1]) && HAS("usage: "));
    }
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"arg_order", s_arg_order},       {"help", s_help},
        {"version", s_version},           {"no_broker", s_no_broker},
        {"worker_no_broker", s_worker_no_broker}, {"endpoints", s_endpoints},
        {"leading_dash", s_leading_dash}, {"log_lines", s_log_lines},
        {"not_zeromq", s_not_zeromq},     {"worker_refused", s_worker_refused},
        {"keygen_force", s_keygen_force},
        {"listen_reconnect", s_listen_reconnect}, {"bad_values", s_bad_values},
        {"infer_load_cut", s_infer_load_cut},
        {"data_dir", s_data_dir},
        {"conf_peer", s_conf_peer},
        {"keygen_grants", s_keygen_grants},
        {"attack_slow_args", s_attack_slow_args},
        {"cache_ttl_value", s_cache_ttl_value},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
