/*
 * util.c - clocks, hashing, RNG, parsers of durations and sizes, and the
 * one place that waits (ppoll on the client socket, so a client that leaves
 * is seen at once and no thread spins).
 */
#include "sim.h"
#include "parse.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int64_t sim_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void sim_rfc3339(char *buf, size_t cap, int64_t mono_ns)
{
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    int64_t wall = (int64_t)rt.tv_sec * 1000000000LL + rt.tv_nsec;
    if (mono_ns == SIM_FOREVER) {
        /* What Ollama shows for keep_alive < 0: a date far away. */
        snprintf(buf, cap, "2318-08-24T00:00:00.000000000Z");
        return;
    }
    int64_t delta = mono_ns - sim_now();
    /* Clamp so a huge keep-alive cannot overflow the arithmetic. */
    if (delta > (int64_t)1e18)
        delta = (int64_t)1e18;
    wall += delta;
    time_t sec = (time_t)(wall / 1000000000LL);
    long nsec = (long)(wall % 1000000000LL);
    struct tm tm;
    gmtime_r(&sec, &tm);
    char date[40];
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, cap, "%s.%09ldZ", date, nsec);
}

uint64_t sim_hash(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    /* A separator so ("ab","c") and ("a","bc") differ. */
    h ^= 0xff;
    h *= 1099511628211ULL;
    return h;
}

uint64_t sim_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

double sim_rand01(uint64_t *state)
{
    return (double)(sim_rand(state) >> 11) / 9007199254740992.0;
}

int64_t sim_scaled_ns(const sim_t *s, double ms)
{
    double ns = ms * 1e6 / s->time_scale;
    if (ns <= 0)
        return 0;
    if (ns > 9e18)
        return SIM_FOREVER;
    return (int64_t)ns;
}

int sim_parse_duration(const char *txt, int64_t *ns)
{
    if (!txt || !*txt)
        return -1;
    double plain; /* decimal only: strtod took "0x10", " 5", "inf" and "nan" */
    if (ab_parse_double(txt, -HUGE_VAL, HUGE_VAL, &plain) == 0) { /* bare number = seconds */
        /* beyond int64 nanoseconds: for ever, as a long Go duration here */
        *ns = plain < 0 ? -1 : plain * 1e9 > 9e18 ? SIM_FOREVER : (int64_t)(plain * 1e9);
        return 0;
    }
    /* Go duration: [-]N unit [N unit]..., units ns us ms s m h. */
    const char *p = txt;
    int neg = 0;
    if (*p == '-' || *p == '+')
        neg = *p++ == '-';
    double total = 0;
    if (!*p)
        return -1;
    while (*p) {
        double v;
        size_t n = ab_parse_decimal_prefix(p, &v); /* "nanms" and "0x10s" too */
        if (!n || !(v >= 0))
            return -1;
        p += n;
        double unit;
        if (strncmp(p, "ns", 2) == 0) unit = 1, p += 2;
        else if (strncmp(p, "us", 2) == 0) unit = 1e3, p += 2;
        else if (strncmp(p, "ms", 2) == 0) unit = 1e6, p += 2;
        else if (*p == 's') unit = 1e9, p++;
        else if (*p == 'm') unit = 60e9, p++;
        else if (*p == 'h') unit = 3600e9, p++;
        else return -1;
        total += v * unit;
    }
    if (neg && total > 0) {
        *ns = -1;
        return 0;
    }
    *ns = total > 9e18 ? SIM_FOREVER : (int64_t)total;
    return 0;
}

int sim_parse_keep_alive(const json_t *v, int64_t *ns)
{
    if (json_is_number(v)) {
        double sec = json_number_value(v);
        *ns = sec < 0 ? -1 : (sec * 1e9 > 9e18 ? SIM_FOREVER : (int64_t)(sec * 1e9));
        return 0;
    }
    if (json_is_string(v))
        return sim_parse_duration(json_string_value(v), ns);
    return -1;
}

int sim_parse_size(const char *txt, uint64_t *out)
{
    double v;
    size_t n = ab_parse_decimal_prefix(txt, &v); /* decimal only: strtod took "0x10" */
    if (!n || v < 0)
        return -1;
    const char *end = txt + n;
    double mul = 1;
    switch (toupper((unsigned char)*end)) {
    case '\0': break;
    case 'K': mul = 1024.0; end++; break;
    case 'M': mul = 1048576.0; end++; break;
    case 'G': mul = 1073741824.0; end++; break;
    case 'T': mul = 1099511627776.0; end++; break;
    default: return -1;
    }
    if (*end == 'i' || *end == 'I')
        end++;
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end)
        return -1;
    /* Below 2^62 bytes (4 EiB): a size past it (or inf, nan) would wrap
     * when converted and summed, e.g. to a negative VRAM. */
    if (!(v * mul < 4611686018427387904.0))
        return -1;
    *out = (uint64_t)llround(v * mul);
    return 0;
}

sim_wait_t sim_wait(const sim_t *s, int client_fd, int event_fd, int64_t timeout_ns)
{
    int64_t deadline = timeout_ns < 0 || timeout_ns == SIM_FOREVER ? -1 : sim_now() + timeout_ns;
    for (;;) {
        struct pollfd p[3];
        int n = 0;
        p[n++] = (struct pollfd){.fd = s->shutdown_fd, .events = POLLIN};
        int ci = -1, ei = -1;
        if (client_fd >= 0) {
            ci = n;
            p[n++] = (struct pollfd){.fd = client_fd, .events = POLLRDHUP};
        }
        if (event_fd >= 0) {
            ei = n;
            p[n++] = (struct pollfd){.fd = event_fd, .events = POLLIN};
        }
        /* ppoll, not poll: poll's milliseconds rounded every token pause up
         * to 1 ms, a floor real Ollama does not have (an 8-token answer
         * took ~10 ms at any --time-scale). The kernel's hrtimer sleeps for
         * the nanoseconds asked, so short waits still block, never spin. */
        struct timespec ts, *tsp = NULL;
        if (deadline >= 0) {
            int64_t left = deadline - sim_now();
            if (left <= 0)
                return SIM_WAIT_TIMEOUT;
            ts.tv_sec = (time_t)(left / 1000000000LL);
            ts.tv_nsec = (long)(left % 1000000000LL);
            tsp = &ts;
        }
        int rc = ppoll(p, (nfds_t)n, tsp, NULL);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc < 0)
            return SIM_WAIT_GONE;
        if (p[0].revents)
            return SIM_WAIT_SHUTDOWN;
        if (ei >= 0 && p[ei].revents)
            return SIM_WAIT_EVENT;
        if (ci >= 0 && (p[ci].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)))
            return SIM_WAIT_GONE;
        if (rc == 0 && deadline >= 0 && sim_now() >= deadline)
            return SIM_WAIT_TIMEOUT;
    }
}

/* The offset of the first byte of TXT that is not strict, padded base64
 * (Go's encoding/base64 StdEncoding, which Ollama decodes images with),
 * or -1 when it all is. */
static long s_base64_bad(const char *txt, size_t n)
{
    size_t pad = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)txt[i];
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 c == '+' || c == '/';
        if (c == '=' && i + 2 >= n && n % 4 == 0)
            pad++;
        else if (!ok || pad)
            return (long)i;
    }
    return n % 4 ? (long)(n / 4 * 4) : -1;
}

/* Adds ARR's images to *N; -1 with ERR at the first that is not base64. */
static int s_images_of(const json_t *arr, int *n, char *err, size_t cap)
{
    if (!arr || json_is_null(arr))
        return 0;
    if (!json_is_array(arr)) {
        if (err)
            snprintf(err, cap, "invalid images: want a list of base64 strings");
        return -1;
    }
    size_t i;
    json_t *im;
    json_array_foreach(arr, i, im) {
        long bad = json_is_string(im) ? s_base64_bad(json_string_value(im), json_string_length(im))
                                      : 0;
        if (!json_is_string(im) || bad >= 0) {
            if (err)
                snprintf(err, cap, "illegal base64 data at input byte %ld", bad < 0 ? 0 : bad);
            return -1;
        }
        (*n)++;
    }
    return 0;
}

int sim_images(const json_t *in, bool chat, char *err, size_t cap)
{
    int n = 0;
    if (!chat)
        return s_images_of(json_object_get(in, "images"), &n, err, cap) ? -1 : n;
    size_t i;
    json_t *msg;
    json_array_foreach(json_object_get(in, "messages"), i, msg)
        if (s_images_of(json_object_get(msg, "images"), &n, err, cap) != 0)
            return -1;
    return n;
}
