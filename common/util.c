/* util.c - see util.h. */
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

char *ab_hex(const void *bytes, size_t n, char *out, size_t cap)
{
    static const char digits[] = "0123456789abcdef";
    const uint8_t *b = bytes;
    size_t j = 0;
    for (size_t i = 0; i < n && j + 2 < cap; i++) {
        out[j++] = digits[b[i] >> 4];
        out[j++] = digits[b[i] & 15];
    }
    if (cap)
        out[j < cap ? j : cap - 1] = '\0';
    return out;
}

uint64_t ab_hash_bytes(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

int ab_parse_size(const char *s, size_t *out)
{
    if (!s || *s < '0' || *s > '9') /* strtoull takes blanks, '+' and " -1" (wrapped) */
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        return -1;
    unsigned long long mul = 1;
    if (*end == 'K' || *end == 'k')
        mul = 1024ull, end++;
    else if (*end == 'M' || *end == 'm')
        mul = 1024ull * 1024, end++;
    else if (*end == 'G' || *end == 'g')
        mul = 1024ull * 1024 * 1024, end++;
    else if (*end == 'T' || *end == 't') /* the docs give ranges up to 1T */
        mul = 1024ull * 1024 * 1024 * 1024, end++;
    if (*end == 'i' || *end == 'B')
        end++;
    if (*end == 'B')
        end++;
    if (*end || v > SIZE_MAX / mul)
        return -1;
    *out = (size_t)(v * mul);
    return 0;
}

int ab_monitor_event(void *mon, uint16_t *event, uint32_t *value, char *addr, size_t cap)
{
    zmq_msg_t f;
    zmq_msg_init(&f);
    if (zmq_msg_recv(&f, mon, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&f);
        return 0;
    }
    *event = 0;
    *value = 0;
    if (zmq_msg_size(&f) >= 6) { /* 16-bit event, 32-bit value (zmq_socket_monitor) */
        memcpy(event, zmq_msg_data(&f), 2);
        memcpy(value, (uint8_t *)zmq_msg_data(&f) + 2, 4);
    }
    if (addr && cap)
        addr[0] = '\0';
    int more = zmq_msg_more(&f);
    zmq_msg_close(&f);
    while (more) { /* the endpoint; a monitor sends both frames at once */
        zmq_msg_init(&f);
        more = zmq_msg_recv(&f, mon, 0) >= 0 && zmq_msg_more(&f);
        if (addr && cap && !addr[0]) {
            size_t n = zmq_msg_size(&f) < cap - 1 ? zmq_msg_size(&f) : cap - 1;
            memcpy(addr, zmq_msg_data(&f), n);
            addr[n] = '\0';
        }
        zmq_msg_close(&f);
    }
    return 1;
}
