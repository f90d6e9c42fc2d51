/*
 * bench_util.c - see bench_util.h.
 */
#include "bench_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double bu_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, s_cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int bu_reaped(pid_t pid, int status)
{
    if (WIFEXITED(status) && WEXITSTATUS(status) == 23) {
        fprintf(stderr, "child %d crashed: exit status 23 (a LeakSanitizer report)\n", (int)pid);
        return 1;
    }
    if (!WIFSIGNALED(status))
        return 0;
    int sig = WTERMSIG(status);
    if (sig != SIGABRT && sig != SIGSEGV && sig != SIGBUS && sig != SIGILL && sig != SIGFPE)
        return 0;
    fprintf(stderr, "child %d crashed: signal %d (%s)%s\n", (int)pid, sig, strsignal(sig),
            sig == SIGABRT ? ", a sanitizer report or an assertion" : "");
    return 1;
}

int bu_stop_pids(const pid_t *pids, int n)
{
    int crashed = 0;
    for (int i = 0; i < n; i++)
        kill(pids[i], SIGTERM);
    for (int i = 0; i < n; i++) {
        int waited = 0, st = 0;
        pid_t got;
        while ((got = waitpid(pids[i], &st, WNOHANG)) == 0 && waited++ < 300)
            usleep(10000);
        if (got == 0) {
            kill(pids[i], SIGKILL);
            got = waitpid(pids[i], &st, 0);
        }
        if (got == pids[i])
            crashed += bu_reaped(pids[i], st);
    }
    return crashed;
}
