/* tl_port.c - see tl_port.h. */
#include "tl_port.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/socket.h>
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

int tl_free_port(void)
{
    /* At random below the kernel's ephemeral range (where connect(2) and
     * bind to port 0 take ports: one just closed came back twice, and a
     * parallel test's connection could take it before its server bound),
     * and never one of the last 256 given. */
    static int recent[256];
    static unsigned next;
    int lo = 32768;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f) {
        if (fscanf(f, "%d", &lo) != 1)
            lo = 32768;
        fclose(f);
    }
    for (int tries = 0; tries < 1000; tries++) {
        uint32_t r = 0;
        if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
            r = (uint32_t)rand();
        int port = s_port_try(lo > 11024 ? (int)(10000 + r % (uint32_t)(lo - 10000)) : 0), seen = 0;
        for (unsigned i = 0; i < 256 && port > 0 && !seen; i++)
            seen = recent[i] == port;
        if (port <= 0 || seen)
            continue;
        recent[next++ % 256] = port;
        return port;
    }
    return -1;
}
