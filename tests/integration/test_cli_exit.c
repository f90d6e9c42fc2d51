/*
 * test_cli_exit.c - what every program does with its command line, alike
 * (ctest cli_exit_*, with test_cli.c): a key that cannot be used is bad
 * usage (exit 2, named) from a flag or the environment, in every program;
 * --version and --help on stdout, exit 0, in every program built; long
 * options by their whole name only. One case per ctest entry.
 */
#include "clitest.h"
#include "harness.h"
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A key that cannot be used: exit 2 and its source named, whether given as
 * a flag or in the environment. brokerctl's $AB_KEY was exit 1 ("INVALID:
 * key file ...") while its --key was 2; the worker's and the gateway's
 * were 1 either way; a KEYFILE named in the gateway's --api-keys file was
 * exit 1 after the file had passed its checks; agentbus-load with a bad
 * $AB_KEY said "no broker reachable". No broker is needed: each is
 * refused before connecting. */
static void s_exit_keys(void)
{
    const char *ep = "tcp://127.0.0.1:1";
    char ctl[1024], wk[1024], gw[1024];
    snprintf(ctl, sizeof ctl, "%s --broker %s stats", CTL, ep);
    snprintf(wk, sizeof wk, "%s --broker %s", th_bin("agentbus-worker"), ep);
    snprintf(gw, sizeof gw, "%s --broker %s --listen 127.0.0.1:0 --quiet",
             th_bin("agentbus-gateway"), ep);
    const char *progs[] = {ctl, wk, gw};
    for (size_t i = 0; i < 3; i++) {
        CHECK_EQ(cli_sh("AB_KEY=/nonexistent timeout 10 %s", progs[i]), 2);
        CHECK_TRUE(HAS("AB_KEY") && HAS("'/nonexistent'"));
        CHECK_EQ(cli_sh("timeout 10 %s --key /nonexistent", progs[i]), 2);
        CHECK_TRUE(HAS("--key") && HAS("'/nonexistent'"));
        CHECK_EQ(cli_sh("AB_BROKER_KEY=garbage timeout 10 %s", progs[i]), 2);
        CHECK_TRUE(HAS("AB_BROKER_KEY") && HAS("'garbage'"));
        CHECK_EQ(cli_sh("timeout 10 %s --broker-key garbage", progs[i]), 2);
        CHECK_TRUE(HAS("--broker-key") && HAS("'garbage'"));
    }
    /* brokerctl --json: the same USAGE object as for --key. */
    CHECK_EQ(cli_sh("AB_KEY=/nonexistent timeout 10 %s --json 2>/dev/null", ctl), 2);
    CHECK_TRUE(HAS("\"code\": \"USAGE\"") && HAS("$AB_KEY '/nonexistent' cannot be used"));
    /* The gateway's --api-keys file naming a key file it cannot use. */
    char keys[] = "/tmp/ab-cli-exitXXXXXX";
    int fd = mkstemp(keys);
    REQUIRE(fd >= 0);
    const char line[] = "a 0123456789abcdef0123 /nonexistent.key_secret\n";
    REQUIRE(write(fd, line, sizeof line - 1) == (ssize_t)(sizeof line - 1));
    close(fd);
    REQUIRE(chmod(keys, 0600) == 0);
    CHECK_EQ(cli_sh("timeout 10 %s --api-keys %s", gw, keys), 2);
    CHECK_TRUE(HAS(":1: cannot use the key file /nonexistent.key_secret"));
    unlink(keys);
    /* The load tools take keys from the environment only. */
    CHECK_EQ(cli_sh("AB_KEY=/nonexistent timeout 10 %s --broker %s --seconds 1",
                    th_bin("agentbus-load"), ep), 2);
    CHECK_TRUE(HAS("key file '/nonexistent'") && !HAS("no broker reachable"));
}

/* Every program the project builds (bench ones included): --version is
 * "PROGRAM VERSION" on stdout, --help its usage on stdout, exit 0, nothing
 * on stderr. The attack tools, agentbus-link-echo, agentbus-gateway-bench
 * and ab-linkproxy-c had no --version (usage on stderr, exit 2, or taken
 * for a port); agentbus-lanes-bench had none, and link-echo, gateway-bench
 * and the link proxy no --help. */
static void s_version_help(void)
{
    static const char *progs[] = {
        "agentbus-broker", "agentbus-worker", "brokerctl", "agentbus-gateway", "agentbus-load",
        "agentbus-infer-load", "ollama-sim", "agentbus-faults", "ab-linkproxy-c",
        "agentbus-attack-slow", "agentbus-attack-bomb", "agentbus-attack-cancel",
        "agentbus-attack-services", "agentbus-attack-names", "agentbus-bench",
        "agentbus-cache-bench", "agentbus-link-echo", "agentbus-scenario",
        "agentbus-lanes-bench", "agentbus-gateway-bench"};
    for (size_t i = 0; i < sizeof progs / sizeof progs[0]; i++) {
        const char *bin = th_bin(progs[i]);
        if (access(bin, X_OK) != 0) { /* AB_BUILD_BENCH off: the benches are not built */
            printf("skipped: %s (not built)\n", progs[i]);
            continue;
        }
        char want[128];
        snprintf(want, sizeof want, "%s %s\n", progs[i], ab_version());
        CHECK_EQ(cli_sh("timeout 10 %s --version 2>/dev/null", bin), 0);
        if (strcmp(cli_out, want) != 0)
            fprintf(stderr, "%s --version: \"%s\"\n", progs[i], cli_out);
        CHECK_STR(cli_out, want);
        CHECK_EQ(cli_sh("timeout 10 %s --version 2>&1 >/dev/null", bin), 0);
        CHECK_STR(cli_out, ""); /* nothing on stderr */
        CHECK_EQ(cli_sh("timeout 10 %s --help 2>/dev/null", bin), 0);
        if (!HAS("sage"))
            fprintf(stderr, "%s --help: \"%s\"\n", progs[i], cli_out);
        CHECK_TRUE(HAS("sage") || HAS("SAGE")); /* usage, Usage or USAGE */
        CHECK_EQ(cli_sh("timeout 10 %s --help 2>&1 >/dev/null", bin), 0);
        CHECK_STR(cli_out, "");
    }
}

/* Long options by their whole name only, in every program: ollama-sim
 * (getopt_long) took any unambiguous prefix, `--por 1234` as --port and
 * `--vers` as --version; the others refused them already. */
static void s_exact_names(void)
{
    const char *sim = th_bin("ollama-sim");
    const char *cut[] = {"--por 0", "--vers", "--num-par 2", "--con /dev/null", "--qui"};
    for (size_t i = 0; i < sizeof cut / sizeof cut[0]; i++) {
        CHECK_EQ(cli_sh("timeout 10 %s --port 0 --quiet %s", sim, cut[i]), 2);
        char want[64];
        snprintf(want, sizeof want, "unknown option \"%.*s\"", (int)strcspn(cut[i], " "),
                 cut[i]);
        CHECK_TRUE(HAS(want));
    }
    /* A value that starts with "--" is still a value; --opt=VALUE as ever. */
    CHECK_EQ(cli_sh("timeout 10 %s --port=0 --quiet --version-string=--x --version", sim), 0);
    CHECK_TRUE(HAS("ollama-sim "));
    const char *others[] = {"agentbus-broker --bin tcp://127.0.0.1:0", "brokerctl stats --brok x",
                            "agentbus-worker --brok x", "agentbus-gateway --liste 127.0.0.1:0",
                            "agentbus-load --secon 1", "agentbus-infer-load --secon 1",
                            "agentbus-faults --vers"};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        char prog[64];
        snprintf(prog, sizeof prog, "%.*s", (int)strcspn(others[i], " "), others[i]);
        CHECK_EQ(cli_sh("timeout 10 %s %s", th_bin(prog), strchr(others[i], ' ') + 1), 2);
        CHECK_TRUE(HAS("unknown option"));
    }
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"exit_keys", s_exit_keys},
        {"version_help", s_version_help},
        {"exact_names", s_exact_names},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
