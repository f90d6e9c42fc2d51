/* main.c - agentbus-broker: configuration, signals, run. */
#include "broker.h"
#include "heap_tune.h"
#include "util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static ab_broker_t s_broker;

/* The first SIGTERM/SIGINT drains (see --drain-ms); a second stops now. */
static void s_on_signal(int sig)
{
    (void)sig;
    if (atomic_load(&s_broker.term))
        atomic_store(&s_broker.stop, 1);
    atomic_store(&s_broker.term, 1);
}

/* SIGHUP: reload the trusted keys (auth.h) at the loop's next look. */
static void s_on_hup(int sig)
{
    (void)sig;
    atomic_store(&s_broker.reload, 1);
}

int main(int argc, char **argv)
{
    if (!ab_heap_user_set(getenv("GLIBC_TUNABLES")))
        ab_heap_tune(); /* before any thread: heap_tune.h says why */
    ab_broker_config_t cfg;
    int rc = ab_config_load(&cfg, argc, argv);
    if (rc != 0) {
        ab_config_free(&cfg);
        return rc > 0 ? 0 : 2;
    }
    ab_log_level = (int)cfg.log_level;
    ab_log_format = (int)cfg.log_format;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = s_on_hup;
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if ((rc = ab_broker_init(&s_broker, &cfg)) != 0) {
        ab_broker_fini(&s_broker);
        ab_config_free(&cfg);
        return rc == -2 ? 2 : 1;
    }
    AB_INFO("agentbus-broker %s ready (queue-max %ld, default timeout %ld ms)", AB_PROGRAM_VERSION,
            cfg.queue_max, cfg.default_timeout_ms);
    rc = ab_broker_run(&s_broker);
    ab_broker_fini(&s_broker);
    ab_config_free(&cfg);
    if (s_broker.audit_failed) /* audit.h: logged; a bug, whatever else went right */
        return 3;
    return rc == 0 ? 0 : 1;
}
