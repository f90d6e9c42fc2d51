/*
 * test_tl_args.c - tools/lib's argument parser (options anywhere, --opt=V,
 * "--", leading-dash refusal), endpoint and URL checks.
 */
#include "test.h"
#include "tl_args.h"

enum { O_JSON = 1, O_TIMEOUT, O_CACHE, O_HELP, O_NAME };
static const tl_opt_t s_opts[] = {
    {"json", 0, TL_NOVAL, O_JSON},       {"timeout-ms", 0, TL_VAL, O_TIMEOUT},
    {"cache", 0, TL_OPTVAL, O_CACHE},    {"help", 'h', TL_NOVAL, O_HELP},
    {"name", 0, TL_VAL, O_NAME},         {NULL, 0, 0, 0},
};

/* Parses ARGV and writes what it saw as one string: "json timeout=5 [x]". */
static const char *s_run(int argc, char **argv)
{
    static char out[512];
    out[0] = '\0';
    tl_parser_t p;
    tl_parser_init(&p, argc, argv, 0);
    int id;
    while ((id = tl_next(&p, s_opts)) != TL_END) {
        size_t n = strlen(out);
        if (id == TL_ERROR) {
            snprintf(out + n, sizeof out - n, "ERR(%s)", p.err);
            return out;
        }
        if (id == TL_ARG)
            snprintf(out + n, sizeof out - n, "[%s] ", p.arg);
        else
            snprintf(out + n, sizeof out - n, "%s=%s ", p.opt->name, p.value ? p.value : "-");
    }
    return out;
}

#define RUN(...) s_run(sizeof((char *[]){__VA_ARGS__}) / sizeof(char *), (char *[]){__VA_ARGS__})

static void s_parse(void)
{
    /* Options before, between and after positionals; both value forms. */
    CHECK_STR(RUN("stats", "--json"), "[stats] json=- ");
    CHECK_STR(RUN("--timeout-ms=5", "listen", "x", "--timeout-ms", "7"),
              "timeout-ms=5 [listen] [x] timeout-ms=7 ");
    CHECK_STR(RUN("-h"), "help=- ");
    /* Optional value: only with '='; the next word stays positional. */
    CHECK_STR(RUN("--cache", "svc"), "cache=- [svc] ");
    CHECK_STR(RUN("--cache=60", "svc"), "cache=60 [svc] ");
    /* "-" alone is positional (stdin); negative numbers are values. */
    CHECK_STR(RUN("req", "-"), "[req] [-] ");
    CHECK_STR(RUN("--timeout-ms", "-5"), "timeout-ms=-5 ");
    /* After "--" everything is positional. */
    CHECK_STR(RUN("listen", "--", "-agent", "--json"), "[listen] [-agent] [--json] ");
    CHECK_STR(RUN("--name=-x"), "name=-x ");
}

static void s_errors(void)
{
    CHECK_TRUE(strstr(RUN("listen", "-agent"), "unknown option '-agent'") != NULL);
    CHECK_TRUE(strstr(RUN("listen", "-agent"), "after '--'") != NULL);
    CHECK_TRUE(strstr(RUN("--frob"), "ERR(unknown option '--frob')") != NULL);
    CHECK_TRUE(strstr(RUN("--json=1"), "takes no value") != NULL);
    CHECK_TRUE(strstr(RUN("--timeout-ms"), "needs a value") != NULL);
    CHECK_TRUE(strstr(RUN("--name", "--json"), "--name=VALUE") != NULL);
    CHECK_TRUE(strstr(RUN("-x"), "ERR(") != NULL);
}

static void s_endpoints(void)
{
    char why[256];
    CHECK_EQ(tl_check_endpoint("tcp://127.0.0.1:5555", why, sizeof why), 0);
    CHECK_EQ(tl_check_endpoint("tcp://[::1]:5555", why, sizeof why), 0);
    CHECK_EQ(tl_check_endpoint("tcp://localhost:1", why, sizeof why), 0);
    CHECK_EQ(tl_check_endpoint("ipc:///tmp/x.ipc", why, sizeof why), 0);
    CHECK_EQ(tl_check_endpoint("inproc://x", why, sizeof why), 0);
    CHECK_EQ(tl_check_endpoint("127.0.0.1:5555", why, sizeof why), -1);
    CHECK_TRUE(strstr(why, "no scheme") != NULL);
    CHECK_EQ(tl_check_endpoint("tcp://127.0.0.1:99999", why, sizeof why), -1);
    CHECK_TRUE(strstr(why, "99999") != NULL);
    CHECK_EQ(tl_check_endpoint("tcp://127.0.0.1", why, sizeof why), -1);
    CHECK_EQ(tl_check_endpoint("tcp://:5555", why, sizeof why), -1);
    CHECK_EQ(tl_check_endpoint("tcp://h:0", why, sizeof why), -1);
    CHECK_EQ(tl_check_endpoint("tcp://h:12a", why, sizeof why), -1);
    CHECK_EQ(tl_check_endpoint("udp://h:1", why, sizeof why), -1);
    CHECK_EQ(tl_check_endpoint("ipc://", why, sizeof why), -1);
    CHECK_EQ(tl_check_endpoint(NULL, why, sizeof why), -1);

    CHECK_EQ(tl_check_http_url("http://127.0.0.1:11434", why, sizeof why), 0);
    CHECK_EQ(tl_check_http_url("https://ollama.example/api/", why, sizeof why), 0);
    CHECK_EQ(tl_check_http_url("http://[::1]:8080/", why, sizeof why), 0);
    CHECK_EQ(tl_check_http_url("notaurl", why, sizeof why), -1);
    CHECK_EQ(tl_check_http_url("http://", why, sizeof why), -1);
    CHECK_EQ(tl_check_http_url("http://h:70000", why, sizeof why), -1);
    CHECK_EQ(tl_check_http_url("ftp://h", why, sizeof why), -1);
}

int main(void)
{
    s_parse();
    s_errors();
    s_endpoints();
    return TEST_DONE("test_tl_args");
}
