/*
 * test_unreachable.c - clients and tools facing a broker that is not there
 * or stops answering: every wait ends (local deadline, signal), with a clear
 * error, and bad command lines are named. One case per ctest entry.
 */
#include "harness.h"
#include "test.h"
#include "util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static void s_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    int *st = arg;
    if (ev->final)
        *st = ev->status;
}

/* Nothing listens on the port: sync and async requests end with TIMEOUT
 * once their local deadline passes, even in a poll that waits forever. */
static void s_no_broker(void)
{
    int port = th_free_port(); /* free: nobody listens there */
    ab_options_t *o = ab_options_new();
    REQUIRE(o && ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
    ab_client_t *c = NULL;
    REQUIRE(ab_client_new(&c, o) == AB_OK);
    ab_options_destroy(&o);
    CHECK_EQ(ab_client_connected(c), 0);
    void *reply = (void *)1;
    size_t n = 7;
    CHECK_EQ(ab_client_request(c, "echo", "hi", 2, 300, &reply, &n), AB_ETIMEOUT);
    CHECK_TRUE(reply == NULL);
    CHECK_EQ(n, 0);
    CHECK_TRUE(strstr(ab_client_last_error(c), "in time") != NULL);
    CHECK_EQ(ab_client_control(c, "stats", 300, &reply, &n), AB_ETIMEOUT);
    int st = 1;
    CHECK_EQ(ab_client_request_start(c, "echo", "hi", 2, &(ab_request_opts_t){.timeout_ms = 300},
                                     s_cb, &st, NULL),
             AB_OK);
    CHECK_EQ(ab_client_pending(c), 1);
    /* -1 = wait until an event: the expiry is that event. */
    CHECK_EQ(ab_client_poll(c, -1), 1);
    CHECK_EQ(st, AB_ETIMEOUT);
    CHECK_EQ(ab_client_pending(c), 0);
    ab_client_destroy(&c);

    char cmd[1024], out[4096];
    snprintf(cmd, sizeof cmd, "timeout 60 %s --broker %s --timeout-ms 300 stats",
             th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 1);
    CHECK_TRUE(strstr(out, "TIMEOUT") != NULL);
    CHECK_TRUE(strstr(out, th_ep(port)) != NULL);
    CHECK_TRUE(strstr(out, "is agentbus-broker running") != NULL);
    snprintf(cmd, sizeof cmd, "timeout 60 %s --broker %s --timeout-ms 300 request echo hi",
             th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 1);
    CHECK_TRUE(strstr(out, "TIMEOUT") != NULL);
}

/* 1 once PID's handler for SIG is installed (the SigCgt mask in
 * /proc/PID/status), else 0. */
static int s_catches(pid_t pid, int sig)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    unsigned long long mask = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "SigCgt: %llx", &mask) == 1)
            break;
    fclose(f);
    return (mask >> (sig - 1)) & 1;
}

/* A broker that hangs (SIGSTOP): a waiting brokerctl ends on SIGTERM at once
 * with exit 1, not by the harness's SIGKILL. */
static void s_hung_broker_sigterm(void)
{
    int port = th_free_port();
    pid_t broker = th_broker(port, NULL);
    kill(broker, SIGSTOP);
    const char *argv[] = {"--broker", th_ep(port), "--timeout-ms", "600000", "stats", NULL};
    pid_t ctl = th_spawn("brokerctl", argv, NULL);
    /* Signalled only once it has its handler: a slow start (sanitizers, a
     * loaded machine) would otherwise die of the default action. */
    for (int64_t end = ab_now_ms() + 20000; !s_catches(ctl, SIGTERM) && ab_now_ms() < end;)
        th_sleep_ms(20);
    CHECK_TRUE(s_catches(ctl, SIGTERM));
    th_sleep_ms(300); /* not needed for the check: lets it reach its wait */
    CHECK_TRUE(th_alive(ctl));
    kill(ctl, SIGTERM);
    int code = th_wait_exit(ctl, 10000);
    CHECK_EQ(code, 1);
    kill(broker, SIGCONT);
}

/* Programs name what is wrong with their command line and exit 2. */
static void s_bad_usage(void)
{
    char cmd[1024], out[4096];
    snprintf(cmd, sizeof cmd, "timeout 60 %s --bogus", th_bin("agentbus-broker"));
    CHECK_EQ(th_run(cmd, out, sizeof out), 2);
    CHECK_TRUE(strstr(out, "unknown option --bogus") != NULL);
    snprintf(cmd, sizeof cmd, "timeout 60 %s --bogus 5", th_bin("agentbus-broker"));
    CHECK_EQ(th_run(cmd, out, sizeof out), 2);
    CHECK_TRUE(strstr(out, "unknown option --bogus") != NULL);
    snprintf(cmd, sizeof cmd, "timeout 60 %s --queue-max", th_bin("agentbus-broker"));
    CHECK_EQ(th_run(cmd, out, sizeof out), 2);
    CHECK_TRUE(strstr(out, "--queue-max needs a value") != NULL);
    snprintf(cmd, sizeof cmd, "timeout 60 %s --queue-max lots", th_bin("agentbus-broker"));
    CHECK_EQ(th_run(cmd, out, sizeof out), 2);
    CHECK_TRUE(strstr(out, "'lots'") != NULL);
    snprintf(cmd, sizeof cmd, "timeout 60 %s --bogus", th_bin("brokerctl"));
    CHECK_EQ(th_run(cmd, out, sizeof out), 2);
    CHECK_TRUE(strstr(out, "--bogus") != NULL);
}

int main(int argc, char **argv)
{
    static const th_case_t cases[] = {
        {"no_broker", s_no_broker}, {"hung_broker_sigterm", s_hung_broker_sigterm},
        {"bad_usage", s_bad_usage},
    };
    return th_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
