/* tl_port.c - see tl_port.h. */
#include "tl_port.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* PORT (0: the kernel picks) if bindable on 127.0.0.1 now, else -1. */
static int s_port_try(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons((uint16_t)port)};
    socklen_t len = sizeof a;
    int got = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        got = ntohs(a.sin_port);
    close(fd);
    return got;
}

/* --- picks shared between processes -----------------------------------------
 * Tests run in parallel (ctest -j) each pick ports and bind them a moment
 * (or seconds) later; two picking the same port in that window collided
 * ("Address already in use", seen at ctest -j4). So every pick is written,
 * under flock(2), to one file per user, ${TMPDIR:-/tmp}/agentbus-ports-UID:
 * lines "PORT UNIX_SECONDS", the last TL_PORT_KEEP picks, and a port picked
 * by any process in the last TL_PORT_HOLD_S seconds is not given again.
 * Without the file (unwritable /tmp) the rule is this process's alone. */
enum { TL_PORT_KEEP = 1024, TL_PORT_HOLD_S = 120 };

typedef struct {
    int fd, n;
    int port[TL_PORT_KEEP];
    long at[TL_PORT_KEEP];
} s_shared_t;

static void s_shared_open(s_shared_t *sh)
{
    char path[512];
    const char *tmp = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/agentbus-ports-%u", tmp && *tmp ? tmp : "/tmp",
             (unsigned)getuid());
    sh->n = 0;
    sh->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (sh->fd < 0)
        return;
    if (flock(sh->fd, LOCK_EX) != 0) {
        close(sh->fd);
        sh->fd = -1;
        return;
    }
    FILE *f = fdopen(dup(sh->fd), "r");
    int port;
    long at;
    while (f && sh->n < TL_PORT_KEEP && fscanf(f, "%d %ld", &port, &at) == 2) {
        sh->port[sh->n] = port;
        sh->at[sh->n++] = at;
    }
    if (f)
        fclose(f);
}

static int s_shared_held(const s_shared_t *sh, int port, long now)
{
    for (int i = 0; i < sh->n; i++)
        if (sh->port[i] == port && now - sh->at[i] < TL_PORT_HOLD_S && now >= sh->at[i])
            return 1;
    return 0;
}

/* Writes the picks back with PORT added (the oldest dropped) and unlocks. */
static void s_shared_close(s_shared_t *sh, int port, long now)
{
    if (sh->fd < 0)
        return;
    if (port > 0 && ftruncate(sh->fd, 0) == 0 && lseek(sh->fd, 0, SEEK_SET) == 0) {
        int from = sh->n >= TL_PORT_KEEP ? 1 : 0;
        char line[32];
        for (int i = from; i <= sh->n; i++) {
            int p = i < sh->n ? sh->port[i] : port;
            long t = i < sh->n ? sh->at[i] : now;
            int len = snprintf(line, sizeof line, "%d %ld\n", p, t);
            if (write(sh->fd, line, (size_t)len) != len)
                break;
        }
    }
    close(sh->fd); /* releases the lock */
}

int tl_free_port(void)
{
    /* At random below the kernel's ephemeral range (where connect(2) and
     * bind to port 0 take ports: one just closed came back twice, and a
     * parallel test's connection could take it before its server bound),
     * never one of the last 256 given here nor one another process picked
     * in the last two minutes (above). */
    static int recent[256];
    static unsigned next;
    int lo = 32768;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f) {
        if (fscanf(f, "%d", &lo) != 1)
            lo = 32768;
        fclose(f);
    }
    static s_shared_t sh; /* 12 KiB: not on the caller's stack */
    s_shared_open(&sh);
    long now = (long)time(NULL);
    int got = -1;
    for (int tries = 0; tries < 1000 && got < 0; tries++) {
        uint32_t r = 0;
        if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
            r = (uint32_t)rand();
        int port = s_port_try(lo > 11024 ? (int)(10000 + r % (uint32_t)(lo - 10000)) : 0), seen = 0;
        for (unsigned i = 0; i < 256 && port > 0 && !seen; i++)
            seen = recent[i] == port;
        if (port <= 0 || seen || s_shared_held(&sh, port, now))
            continue;
        recent[next++ % 256] = port;
        got = port;
    }
    s_shared_close(&sh, got, now);
    return got;
}
