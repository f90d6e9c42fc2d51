/*
 * failalloc.c - an LD_PRELOAD library for the out-of-memory tests
 * (test_oom.c): the program's calls of zmq_msg_init_size fail with ENOMEM,
 * as they would out of memory, for messages of exactly $AB_FAILALLOC_SIZE
 * bytes; every other size, and libzmq's own allocations (which do not go
 * through the exported function), work as usual.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <zmq.h>

int zmq_msg_init_size(zmq_msg_t *msg, size_t size)
{
    static int (*real)(zmq_msg_t *, size_t);
    static long fail = -2;
    if (fail == -2) {
        const char *v = getenv("AB_FAILALLOC_SIZE");
        fail = v && *v ? atol(v) : -1;
    }
    if (fail >= 0 && size == (size_t)fail) {
        errno = ENOMEM;
        return -1;
    }
    if (!real)
        *(void **)&real = dlsym(RTLD_NEXT, "zmq_msg_init_size");
    return real ? real(msg, size) : -1;
}
