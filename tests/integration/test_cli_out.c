/*
 * test_cli_out.c - what brokerctl and agentbus-load print, as a user reads
 * it (ctest cli_*, with test_cli.c): names that workers chose printed
 * safely, inference commands sent to a service that is not one, the load's
 * rate. One case per ctest entry.
 */
#include "clitest.h"
#include "harness.h"
#include "test.h"
#include "util.h"

#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

/* Lines of cli_out. */
static int s_lines(void)
{
    int n = 0;
    for (const char *p = cli_out; *p; p++)
        n += *p == '\n';
    return n;
}

/* Names a worker chose (its name, a label, its service), with a newline,
 * terminal escapes and a byte that is not UTF-8. brokerctl printed them as
 * they were: a line of its own in `workers`, the terminal's title set, text
 * turned red; --json workers and services left that worker and its service
 * out (json_pack refused the string). `watch --events 1` printed every
 * change that arrived in the same poll, here two. */
static void s_peer_names(void)
{
    int port = th_free_port();
    th_broker(port, "--startup-grace-ms", "0", NULL);
    const char *ep = th_ep(port);
    ab_client_t *c = th_client(port);
    const char *watch_args[] = {"--broker", ep, "watch", "--events", "1", NULL};
    pid_t watch = th_spawn("brokerctl", watch_args, NULL);
    /* connected (an agent to the broker; this client, by its stats query,
     * is a control peer), then a moment for its DISCOVER */
    unsigned agents = 0;
    for (int i = 0; i < 200 && agents < 1; i++) {
        Agentbus__Stats *st = th_stats(c);
        agents = st ? st->agents : 0;
        agentbus__stats__free_unpacked(st, NULL);
        th_sleep_ms(50);
    }
    REQUIRE(agents >= 1);
    th_sleep_ms(300);
    kill(watch, SIGSTOP); /* the two joins below wait for one poll */
    const char *svc = "svc\033[1m\377";
    th_worker(port, svc, "--name", "evil\033[31m\nfake\377", "--label",
              "k=v\033]0;title\007", NULL);
    th_worker(port, svc, "--name", "evil2", NULL);
    REQUIRE(th_wait_workers(c, svc, 2, 10000) == 0);
    th_sleep_ms(300);
    kill(watch, SIGCONT);
    CHECK_EQ(th_wait_exit(watch, 5000), 0);
    CHECK_EQ(cli_sh("cat %s", th_log_of(watch)), 0);
    CHECK_EQ(s_lines(), 1);
    CHECK_TRUE(!strpbrk(cli_out, "\033\007\377"));
    CHECK_EQ(cli_sh("timeout 30 %s --broker %s workers", CTL, ep), 0);
    CHECK_EQ(s_lines(), 3); /* the header and one line each */
    CHECK_TRUE(!strpbrk(cli_out, "\033\007\377") && HAS("evil?[31m?fake? ") && HAS(" svc?[1m? "));
    CHECK_TRUE(HAS(" k=v?]0;title?"));
    CHECK_EQ(cli_sh("timeout 30 %s --broker %s services", CTL, ep), 0);
    CHECK_TRUE(!strpbrk(cli_out, "\033\377") && HAS("svc?[1m?"));
    CHECK_EQ(cli_sh("timeout 30 %s --broker %s --json workers 2>/dev/null", CTL, ep), 0);
    json_t *j = json_loads(cli_out, 0, NULL);
    CHECK_EQ(json_array_size(j), 2);
    int named = 0;
    for (size_t i = 0; i < json_array_size(j); i++) {
        const char *name = json_string_value(json_object_get(json_array_get(j, i), "name"));
        named += name && strcmp(name, "evil\033[31m\nfake?") == 0;
    }
    CHECK_EQ(named, 1);
    json_decref(j);
    CHECK_EQ(cli_sh("timeout 30 %s --broker %s --json services 2>/dev/null", CTL, ep), 0);
    CHECK_TRUE(HAS("\"name\": \"svc\\u001B[1m?\""));
    ab_client_destroy(&c);
}

/* generate and chat sent to a service that is not an inference one: the
 * echo worker's answer (the request's bytes) decoded as an empty,
 * unfinished answer, and brokerctl printed nothing and exited 0. */
static void s_not_inference(void)
{
    int port = th_free_port();
    th_broker(port, "--startup-grace-ms", "0", NULL);
    th_worker(port, "echo", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "echo", 1, 10000) == 0);
    const char *cmds[] = {"generate", "chat"};
    for (int i = 0; i < 2; i++) {
        CHECK_EQ(cli_sh("timeout 30 %s --broker %s %s m p --service echo", CTL, th_ep(port),
                        cmds[i]), 1);
        char want[128];
        snprintf(want, sizeof want, "brokerctl: MALFORMED: the answer of 'echo' is no %s answer",
                 cmds[i]);
        CHECK_TRUE(HAS(want) && HAS("is it an inference service?"));
    }
    ab_client_destroy(&c);
}

/* agentbus-load stopped early (SIGINT, as a user's Ctrl-C): its rate was
 * ok / --seconds, a fifth of the truth after 2 s of --seconds 10. */
static void s_load_rate(void)
{
    int port = th_free_port();
    th_broker(port, "--startup-grace-ms", "0", NULL);
    th_worker(port, "echo", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "echo", 1, 10000) == 0);
    CHECK_EQ(cli_sh("timeout -s INT 2 %s --broker %s --agents 2 --seconds 30; true",
                    th_bin("agentbus-load"), th_ep(port)), 0);
    const char *line = strstr(cli_out, " ok ");
    unsigned long long ok = 0, rate = 0;
    double secs = 0;
    const char *r = line ? strchr(line, '(') : NULL;
    CHECK_TRUE(line && sscanf(line, " ok %llu", &ok) == 1);
    CHECK_TRUE(r && sscanf(r, "(%llu req/s in %lf s)", &rate, &secs) == 2);
    CHECK_TRUE(secs > 1.5 && secs < 10);
    /* ok / secs, rounded */
    CHECK_TRUE(ok > 0 && rate * secs > ok * 0.95 && rate * secs < ok * 1.05 + 1);
    ab_client_destroy(&c);
}

typedef struct {
    int port;
    atomic_int stop;
    const char *text; /* NULL: the one s_worker_error_text checks */
} s_failer_t;

/* A worker that fails every request with a text of its choosing. */
static void *s_failer(void *arg)
{
    s_failer_t *x = arg;
    ab_options_t *o = ab_options_new();
    ab_options_set_endpoint(o, th_ep(x->port));
    ab_worker_t *w = NULL;
    int rc = ab_worker_new(&w, o, "failer", 4);
    ab_options_destroy(&o);
    while (rc == AB_OK && !atomic_load(&x->stop)) {
        ab_job_t *job;
        if (ab_worker_recv(w, &job, 100) == AB_OK)
            ab_worker_fail(w, &job, AB_EAPPLICATION,
                           x->text ? x->text : "no\033]0;pwned\007\nbrokerctl: OK\377");
    }
    ab_worker_destroy(&w);
    return NULL;
}

/* A worker's failure text went to stderr as it was (a terminal's title
 * set, a line of its own), and with --json a text that is not UTF-8 was
 * replaced whole by "(error text is not UTF-8)". */
static void s_worker_error_text(void)
{
    int port = th_free_port();
    th_broker(port, "--startup-grace-ms", "0", NULL);
    s_failer_t x = {port, 0, NULL};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, s_failer, &x) == 0);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "failer", 1, 10000) == 0);
    CHECK_EQ(cli_sh("timeout 30 %s --broker %s request failer x", CTL, th_ep(port)), 1);
    CHECK_STR(cli_out, "brokerctl: APPLICATION: no?]0;pwned??brokerctl: OK?\n");
    CHECK_EQ(cli_sh("timeout 30 %s --broker %s --json request failer x 2>/dev/null", CTL,
                    th_ep(port)), 1);
    json_t *j = json_loads(cli_out, 0, NULL);
    CHECK_STR(json_string_value(json_object_get(j, "error")),
              "no\033]0;pwned\007\nbrokerctl: OK?");
    json_decref(j);
    atomic_store(&x.stop, 1);
    pthread_join(th, NULL);
    ab_client_destroy(&c);
}

static void s_ignore_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c, (void)ev, (void)arg;
}

/* What waits by model (docs/placement.md: the stats answer lists it) is in
 * `brokerctl stats`: the broker sent it and brokerctl showed it nowhere,
 * neither in the text nor in --json. One slot busy, two requests for model
 * m1 and one for m2 wait. */
static void s_model_queues(void)
{
    int port = th_free_port();
    th_broker(port, "--startup-grace-ms", "0", "--cache-l1-bytes", "0", NULL);
    th_worker(port, "gen", "--capacity", "1", "--delay-ms", "20000", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "gen", 1, 10000) == 0);
    const char *models[] = {"m1", "m1", "m1", "m2"};
    for (int i = 0; i < 4; i++)
        REQUIRE(ab_client_request_start(c, "gen", "x", 1,
                                        &(ab_request_opts_t){.timeout_ms = 30000,
                                                             .model = models[i]},
                                        s_ignore_cb, NULL, NULL) == AB_OK);
    int64_t end = ab_now_ms() + 10000; /* until the three wait behind the first */
    do {
        ab_client_poll(c, 50);
        cli_sh("%s --broker %s --json stats", CTL, th_ep(port));
    } while (!strstr(cli_out, "\"queued\": 2") && ab_now_ms() < end);
    json_t *j = json_loads(cli_out, 0, NULL), *mq = json_object_get(j, "model_queues");
    CHECK_TRUE(json_is_array(mq) && json_array_size(mq) == 2);
    for (size_t i = 0; i < json_array_size(mq); i++) {
        json_t *q = json_array_get(mq, i);
        const char *m = json_string_value(json_object_get(q, "model"));
        CHECK_STR(json_string_value(json_object_get(q, "service")), "gen");
        CHECK_EQ(json_integer_value(json_object_get(q, "queued")), m && !strcmp(m, "m1") ? 2 : 1);
    }
    json_decref(j);
    CHECK_EQ(cli_sh("%s --broker %s stats", CTL, th_ep(port)), 0);
    CHECK_TRUE(HAS("MODEL") && HAS("QUEUED"));
    CHECK_TRUE(strstr(cli_out, "\ngen                  m1 ") != NULL);
    ab_client_destroy(&c);
}

/* C1 controls (U+0080..U+009F; U+009B is CSI to a terminal) and DEL in
 * what peers chose: brokerctl --json printed them raw (JSON allows it,
 * jansson leaves them), so `brokerctl --json workers` in a terminal ran a
 * worker's escape sequence; they come out as \u009b, \u007f. Text output
 * shows one '?' for each (a C1 control was two), and listen's text escapes
 * them as bytes (\xc2\x9b), with a byte that is not UTF-8 (\x9b). */
static void s_c1_controls(void)
{
    int port = th_free_port();
    th_broker(port, "--startup-grace-ms", "0", NULL);
    const char *ep = th_ep(port);
    ab_client_t *c = th_client(port);
    th_worker(port, "c1", "--name", "w\xc2\x9b" "31m\x7f" "end", NULL);
    REQUIRE(th_wait_workers(c, "c1", 1, 10000) == 0);
    CHECK_EQ(cli_sh("timeout 30 %s --broker %s --json workers 2>/dev/null", CTL, ep), 0);
    CHECK_TRUE(!strstr(cli_out, "\xc2\x9b") && !strchr(cli_out, 0x7f));
    CHECK_TRUE(HAS("\"name\": \"w\\u009b31m\\u007fend\""));
    json_t *j = json_loads(cli_out, 0, NULL); /* the same string, read back */
    CHECK_STR(json_string_value(json_object_get(json_array_get(j, 0), "name")),
              "w\xc2\x9b" "31m\x7f" "end");
    json_decref(j);
    CHECK_EQ(cli_sh("timeout 30 %s --broker %s workers", CTL, ep), 0);
    CHECK_TRUE(HAS(" w?31m?end ") && !strstr(cli_out, "\xc2\x9b"));
    /* An error text a worker chose, as --json and as text. */
    s_failer_t x = {port, 0, "bad\xc2\x9b" "2J\xc2\x85" "x"};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, s_failer, &x) == 0);
    REQUIRE(th_wait_workers(c, "failer", 1, 10000) == 0);
    CHECK_EQ(cli_sh("timeout 30 %s --broker %s --json request failer x 2>/dev/null", CTL, ep),
             1);
    CHECK_TRUE(HAS("\"error\": \"bad\\u009b2J\\u0085x\"") && !strstr(cli_out, "\xc2"));
    CHECK_EQ(cli_sh("timeout 30 %s --broker %s request failer x", CTL, ep), 1);
    CHECK_STR(cli_out, "brokerctl: APPLICATION: bad?2J?x\n");
    atomic_store(&x.stop, 1);
    pthread_join(th, NULL);
    /* listen's text: a direct message's bytes. */
    CHECK_EQ(cli_sh("(timeout 30 %s --broker %s listen c1l --count 1 & sleep 1.5; "
                    "%s --broker %s send c1l \"$(printf 'a\\302\\233b\\233c')\"; wait)",
                    CTL, ep, CTL, ep), 0);
    CHECK_TRUE(HAS("a\\xc2\\x9bb\\x9bc") && !strstr(cli_out, "\x9b"));
    ab_client_destroy(&c);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"peer_names", s_peer_names},
        {"not_inference", s_not_inference},
        {"load_rate", s_load_rate},
        {"worker_error_text", s_worker_error_text},
        {"c1_controls", s_c1_controls},
        {"model_queues", s_model_queues},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
