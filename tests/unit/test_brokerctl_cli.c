/*
 * test_brokerctl_cli.c - brokerctl's command line (tools/brokerctl/cli.c):
 * options anywhere, per-command options, argument checks, help/version,
 * and the usage texts, without a broker.
 */
#include "test.h"
#include "cli.h"
#include "agentbus.h"

#include <stdio.h>

static ctl_args_t s_a;
static char s_err[4096];

/* Parses the words of LINE (space-separated, no quoting). */
static int s_parse(const char *line)
{
    static char buf[1024];
    char *argv[64];
    int argc = 0;
    snprintf(buf, sizeof buf, "%s", line);
    argv[argc++] = "brokerctl";
    for (char *t = strtok(buf, " "); t && argc < 63; t = strtok(NULL, " "))
        argv[argc++] = t;
    argv[argc] = NULL;
    FILE *f = fmemopen(s_err, sizeof s_err, "w");
    int rc = ctl_cli_parse(&s_a, argc, argv, f);
    fclose(f);
    return rc;
}

static void s_accepts(void)
{
    CHECK_EQ(s_parse("stats --json --watch=2"), 0);
    CHECK_STR(s_a.cmd, "stats");
    CHECK_EQ(s_a.json, 1);
    CHECK_EQ(s_a.watch, 2);
    CHECK_EQ(ctl_cli_is_stream(&s_a), 1);
    CHECK_EQ(s_parse("--broker=tcp://h:1 listen coder --count 1 --takeover"), 0);
    CHECK_STR(s_a.broker, "tcp://h:1");
    CHECK_STR(s_a.pos[0], "coder");
    CHECK_EQ(s_a.count, 1);
    CHECK_EQ(s_a.takeover, 1);
    CHECK_EQ(s_a.timeout_ms, 5000);
    CHECK_EQ(s_a.timeout_set, 0);
    CHECK_EQ(s_parse("request --cache=600 echo hello --no-store --timeout-ms 7"), 0);
    CHECK_EQ(s_a.cache_flags, AB_CACHE_ON | AB_CACHE_NO_STORE);
    CHECK_EQ(s_a.cache_ttl, 600);
    CHECK_EQ(s_a.timeout_ms, 7);
    CHECK_EQ(s_a.timeout_set, 1);
    CHECK_EQ(s_parse("generate m p --temperature 0.5 --seed -3 --no-stream --service=gpu"), 0);
    CHECK_EQ(s_a.infer.has_temp && s_a.infer.has_seed, 1);
    CHECK_EQ(s_a.infer.seed, -3);
    CHECK_STR(s_a.infer.service, "gpu");
    CHECK_EQ(ctl_cli_is_stream(&s_a), 1);
    CHECK_EQ(s_parse("embed m a b c"), 0);
    CHECK_EQ(s_a.npos, 4);
    CHECK_STR(s_a.infer.service, "ollama");
    CHECK_EQ(ctl_cli_is_stream(&s_a), 0);
    CHECK_EQ(s_parse("cache clear --tier l2"), 0);
    CHECK_STR(s_a.tier, "l2");
    CHECK_EQ(s_parse("cache get 0123456789abcdef0123456789ABCDEF"), 0);
    CHECK_EQ(s_parse("models unload w1 llama3"), 0);
    CHECK_EQ(s_parse("pub t -- -data"), 0);
    CHECK_STR(s_a.pos[1], "-data");
}

static void s_refuses(void)
{
    CHECK_EQ(s_parse(""), -1);
    CHECK_TRUE(strstr(s_err, "no command") != NULL);
    CHECK_EQ(s_parse("frobnicate"), -1);
    CHECK_TRUE(strstr(s_err, "unknown command 'frobnicate'") != NULL);
    CHECK_EQ(s_parse("stats extra"), -1);
    CHECK_EQ(s_parse("stats --count 1"), -1);
    CHECK_TRUE(strstr(s_err, "--count does not apply") != NULL);
    CHECK_EQ(s_parse("listen -x"), -1);
    CHECK_TRUE(strstr(s_err, "after '--'") != NULL);
    CHECK_EQ(s_parse("cache clear --tier l9"), -1);
    CHECK_TRUE(strstr(s_err, "'l9'") != NULL);
    CHECK_EQ(s_parse("cache get --tier l1 0123456789abcdef0123456789abcdef"), -1);
    CHECK_EQ(s_parse("cache get xyz"), -1);
    CHECK_EQ(s_parse("cache purge"), -1);
    CHECK_EQ(s_parse("models load w"), -1);
    CHECK_EQ(s_parse("models frob a b"), -1);
    CHECK_EQ(s_parse("--timeout-ms 0 stats"), -1);
    CHECK_EQ(s_parse("--broker 127.0.0.1:5555 stats"), -1);
    CHECK_TRUE(strstr(s_err, "no scheme") != NULL);
    CHECK_EQ(s_parse("generate m p --temperature hot"), -1);
    /* strtod read these as numbers: hex, inf, nan, beyond a double (HUGE_VAL) */
    const char *temps[] = {"0x10", "inf", "nan", "1e999", "abc", "", "0.5x", "1.5e", "+1"};
    for (size_t i = 0; i < sizeof temps / sizeof temps[0]; i++) {
        char line[64];
        snprintf(line, sizeof line, "generate m p --temperature=%s", temps[i]);
        CHECK_EQ(s_parse(line), -1);
        CHECK_TRUE(strstr(s_err, "for --temperature: expected a decimal number") != NULL);
    }
    CHECK_EQ(s_parse("generate m p --temperature=1e1"), 0);
    CHECK_TRUE(s_a.infer.temperature == 10.0);
    /* ab_priority_parse's strtol took "+5" */
    CHECK_EQ(s_parse("generate m p --priority=+5"), -1);
    CHECK_TRUE(strstr(s_err, "--priority") != NULL);
    CHECK_EQ(s_parse("generate m p --priority=5"), 0);
    CHECK_EQ(s_parse("request echo"), -1);
}

static void s_help_version(void)
{
    /* --help wins over errors and never runs the command. */
    CHECK_EQ(s_parse("pub --help x"), 1);
    CHECK_EQ(s_a.help, 1);
    CHECK_STR(s_a.cmd, "pub");
    CHECK_EQ(s_parse("listen -h"), 1);
    CHECK_EQ(s_parse("stats --bogus --help"), 1);
    CHECK_EQ(s_parse("--version"), 1);
    CHECK_EQ(s_a.version, 1);
    char out[8192];
    FILE *f = fmemopen(out, sizeof out, "w");
    ctl_cli_usage(f, "listen");
    fclose(f);
    CHECK_TRUE(strncmp(out, "Usage: brokerctl [options] listen NAME", 38) == 0);
    CHECK_TRUE(strstr(out, "--count N") && strstr(out, "--takeover") && strstr(out, "--broker"));
    CHECK_TRUE(strstr(out, "--watch SECONDS") == NULL);
    f = fmemopen(out, sizeof out, "w");
    ctl_cli_usage(f, NULL);
    fclose(f);
    CHECK_TRUE(strstr(out, "cache [clear | get KEY]") && strstr(out, "COMMAND --help"));
}

int main(void)
{
    s_accepts();
    s_refuses();
    s_help_version();
    return TEST_DONE("test_brokerctl_cli");
}
