/* bare_hop.c - see bare_hop.h. Both loops run in forked children until
 * SIGTERM (default action) from the bench. */
#include "bare_hop.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <zmq.h>

static void *s_socket(void *ctx, int type)
{
    void *s = zmq_socket(ctx, type);
    int hwm = 100000, linger = 0;
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    return s;
}

/* Moves the rest of a multipart message from IN to OUT; MORE is what the
 * last frame received said (read before sending it: a sent zmq_msg_t is
 * emptied). */
static void s_pass_rest(void *in, void *out, zmq_msg_t *m, int more)
{
    while (more) {
        zmq_msg_init(m);
        zmq_msg_recv(m, in, 0);
        more = zmq_msg_more(m);
        zmq_msg_send(m, out, more ? ZMQ_SNDMORE : 0);
    }
}

/* Worker side: the first message is the worker's hello; after that each
 * message is [worker-id][client-id][payload] going back to the client.
 * Returns 0 when it handled one, -1 when none was waiting. */
static int s_from_back(void *back, void *front, zmq_msg_t *worker_id, int *have_worker)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, back, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return -1;
    }
    if (!*have_worker) {
        zmq_msg_copy(worker_id, &m);
        *have_worker = 1;
    }
    zmq_msg_close(&m);
    zmq_msg_init(&m);
    zmq_msg_recv(&m, back, 0); /* client id, or "READY" */
    int more = zmq_msg_more(&m);
    if (!more) { /* the hello */
        zmq_msg_close(&m);
        return 0;
    }
    zmq_msg_send(&m, front, ZMQ_SNDMORE);
    s_pass_rest(back, front, &m, more);
    return 0;
}

static int s_from_front(void *front, void *back, zmq_msg_t *worker_id)
{
    zmq_msg_t m, wid;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, front, ZMQ_DONTWAIT) < 0) { /* client id */
        zmq_msg_close(&m);
        return -1;
    }
    zmq_msg_init(&wid);
    zmq_msg_copy(&wid, worker_id);
    zmq_msg_send(&wid, back, ZMQ_SNDMORE);
    int more = zmq_msg_more(&m);
    zmq_msg_send(&m, back, ZMQ_SNDMORE);
    s_pass_rest(front, back, &m, more);
    return 0;
}

/* Drains whatever is waiting on each side after every poll, as a real
 * forwarder (and the broker) does, rather than one message per poll. */
static void s_forward(int front_port, int back_port)
{
    void *ctx = zmq_ctx_new();
    void *front = s_socket(ctx, ZMQ_ROUTER), *back = s_socket(ctx, ZMQ_ROUTER);
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", front_port);
    if (zmq_bind(front, ep) != 0)
        _exit(1);
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", back_port);
    if (zmq_bind(back, ep) != 0)
        _exit(1);
    zmq_msg_t worker_id;
    zmq_msg_init(&worker_id);
    int have_worker = 0;
    zmq_pollitem_t items[2] = {{back, 0, ZMQ_POLLIN, 0}, {front, 0, ZMQ_POLLIN, 0}};
    for (;;) {
        /* Until the worker said hello, only its side is read. */
        if (zmq_poll(items, have_worker ? 2 : 1, -1) < 0)
            continue;
        for (int i = 0; i < 4096; i++) {
            int got = s_from_back(back, front, &worker_id, &have_worker) == 0;
            if (have_worker)
                got |= s_from_front(front, back, &worker_id) == 0;
            if (!got)
                break;
        }
    }
}

static void s_echo(int back_port)
{
    void *ctx = zmq_ctx_new();
    void *s = s_socket(ctx, ZMQ_DEALER);
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", back_port);
    if (zmq_connect(s, ep) != 0)
        _exit(1);
    zmq_send(s, "READY", 5, 0);
    zmq_msg_t m;
    for (;;) { /* [client-id][payload] back as it came */
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s, 0) < 0)
            continue;
        int more = zmq_msg_more(&m);
        zmq_msg_send(&m, s, more ? ZMQ_SNDMORE : 0);
        s_pass_rest(s, s, &m, more);
    }
}

static pid_t s_fork(void)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(0);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
    }
    return pid;
}

pid_t bh_start_forwarder(int front_port, int back_port)
{
    pid_t pid = s_fork();
    if (pid == 0) {
        s_forward(front_port, back_port);
        _exit(0);
    }
    return pid;
}

pid_t bh_start_echo(int back_port)
{
    pid_t pid = s_fork();
    if (pid == 0) {
        s_echo(back_port);
        _exit(0);
    }
    return pid;
}
