/*
 * attack_util.c - helpers shared by the agentbus-attack-* programs (see
 * attack_util.h for each one's contract).
 */
#include "attack_util.h"

#include "agentbus.h"
#include "tl_clock.h"
#include "tl_args.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

double at_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

long at_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

pid_t at_spawn(const char *path, const char *const argv[], int quiet)
{
    pid_t pid = fork();
    if (pid == 0) {
        if (quiet) {
            int fd = open("/dev/null", O_WRONLY);
            if (fd >= 0) {
                dup2(fd, 1);
                dup2(fd, 2);
            }
        }
        execv(path, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

void at_stop(pid_t pid)
{
    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    for (int i = 0; i < 100 && waitpid(pid, NULL, WNOHANG) != pid; i++)
        usleep(50000);
    at_kill(pid);
}

void at_kill(pid_t pid)
{
    if (pid <= 0)
        return;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

void *at_dealer(void *ctx, const char *ep)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, hwm = 0;
    if (!s)
        return NULL;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (zmq_connect(s, ep) != 0) {
        fprintf(stderr, "connect %s: %s\n", ep, zmq_strerror(zmq_errno()));
        zmq_close(s);
        return NULL;
    }
    return s;
}

Agentbus__Header at_header(Agentbus__Kind kind)
{
    Agentbus__Header h = AGENTBUS__HEADER__INIT;
    h.version = 1;
    h.kind = kind;
    return h;
}

int at_parse(const void *buf, size_t len, at_reply_t *out)
{
    Agentbus__Header *h = agentbus__header__unpack(NULL, len, buf);
    if (!h)
        return -1;
    *out = (at_reply_t){(uint32_t)h->kind, h->id, h->correlation_id, h->flags,
                        (uint32_t)h->error_code};
    agentbus__header__free_unpacked(h, NULL);
    return 0;
}

const char *at_err_name(uint32_t code)
{
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&agentbus__error_code__descriptor, (int)code);
    /* "ERR_BUSY" -> "BUSY", as the broker's logs and the library name it */
    return v ? v->name + (strncmp(v->name, "ERR_", 4) == 0 ? 4 : 0) : "?";
}

int at_send(void *s, const Agentbus__Header *h, const void *data, size_t size)
{
    uint8_t buf[1024];
    if (agentbus__header__get_packed_size(h) > sizeof buf)
        return -1;
    size_t n = agentbus__header__pack(h, buf);
    if (zmq_send(s, buf, n, data ? ZMQ_SNDMORE : 0) < 0)
        return -1;
    return data && zmq_send(s, data, size, 0) < 0 ? -1 : 0;
}

Agentbus__Stats *at_stats(void *s, uint64_t id, int timeout_ms)
{
    Agentbus__Header h = at_header(AT_KIND(CONTROL));
    h.id = id;
    h.target = "stats";
    if (at_send(s, &h, NULL, 0) != 0)
        return NULL;
    int64_t end = tl_now_ms() + timeout_ms;
    while (tl_now_ms() < end) {
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 100) <= 0)
            continue;
        zmq_msg_t hdr, body;
        zmq_msg_init(&hdr);
        zmq_msg_init(&body);
        if (zmq_msg_recv(&hdr, s, 0) < 0) {
            zmq_msg_close(&hdr);
            zmq_msg_close(&body);
            continue;
        }
        int more = zmq_msg_more(&hdr), parts = 0;
        while (more) { /* the first part is the body; any further ones are skipped */
            zmq_msg_t extra, *m = parts ? &extra : &body;
            if (parts)
                zmq_msg_init(&extra);
            zmq_msg_recv(m, s, 0);
            more = zmq_msg_more(m);
            if (parts)
                zmq_msg_close(&extra);
            parts++;
        }
        at_reply_t r;
        Agentbus__Stats *st = NULL;
        if (at_parse(zmq_msg_data(&hdr), zmq_msg_size(&hdr), &r) == 0 &&
            r.kind == AT_KIND(REPLY) && r.correlation_id == id && parts > 0 &&
            !(r.flags & AT_FLAG(LZ4))) /* raw peer: announced no lz4 */
            st = agentbus__stats__unpack(NULL, zmq_msg_size(&body), zmq_msg_data(&body));
        zmq_msg_close(&hdr);
        zmq_msg_close(&body);
        if (st)
            return st;
    }
    return NULL;
}

void at_sibling(char *out, size_t size, const char *argv0, const char *name)
{
    char self[PATH_MAX];
    snprintf(self, sizeof self, "%s", argv0);
    snprintf(out, size, "%s/%s", dirname(self), name);
}

int at_info_asked(int argc, char **argv, const char *prog,
                  void (*usage)(FILE *f, const char *argv0))
{
    /* --version: once none ("unknown option" and the usage, exit 2) */
    return tl_info_answer(argc, argv, prog, ab_version(), usage);
}

long at_num(const char *prog, const char *opt, const char *v, long min, long max)
{
    long n;
    if (tl_parse_long(v, min, max, &n) == 0)
        return n;
    fprintf(stderr, "%s: bad value '%s' for %s (expected %ld..%ld)\n", prog, v, opt, min, max);
    exit(2);
}
