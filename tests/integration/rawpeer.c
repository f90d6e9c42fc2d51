/*
 * rawpeer.c - raw libzmq DEALERs speaking the broker's protocol by hand
 * (rawpeer.h).
 */
#include "rawpeer.h"

#include "harness.h"
#include "msgtest.h"
#include "test.h"
#include "util.h"

#include <stdio.h>
#include <string.h>

static void *s_ctx;

void *rp_ctx(void)
{
    if (!s_ctx)
        s_ctx = zmq_ctx_new();
    REQUIRE(s_ctx);
    return s_ctx;
}

void *rp_raw(int port, const void *rid, size_t len)
{
    void *s = zmq_socket(rp_ctx(), ZMQ_DEALER);
    int linger = 0, hwm = 100000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (rid)
        REQUIRE(zmq_setsockopt(s, ZMQ_ROUTING_ID, rid, len) == 0);
    REQUIRE(zmq_connect(s, th_ep(port)) == 0);
    return s;
}

void rp_end(void **socks, int n)
{
    for (int i = 0; i < n; i++)
        if (socks[i])
            zmq_close(socks[i]);
    zmq_ctx_term(s_ctx);
    s_ctx = NULL;
}

void rp_beat(void *s)
{
    ab_header_t h = ab_header_init(AB_KIND_HEARTBEAT);
    mt_raw_send(s, &h, NULL, 0);
}

void rp_close(rp_msg_t *m)
{
    zmq_msg_close(&m->hdr);
    zmq_msg_close(&m->body);
}

int rp_take(void *s, rp_msg_t *m)
{
    zmq_msg_init(&m->hdr);
    zmq_msg_init(&m->body);
    m->has_body = 0;
    if (zmq_msg_recv(&m->hdr, s, ZMQ_DONTWAIT) < 0) {
        rp_close(m);
        return 0;
    }
    if (zmq_msg_more(&m->hdr)) {
        zmq_msg_recv(&m->body, s, 0);
        m->has_body = 1;
    }
    if (ab_header_parse(zmq_msg_data(&m->hdr), zmq_msg_size(&m->hdr), &m->h) != AB_OK)
        m->h.kind = 0;
    return 1;
}

int rp_wait(void *s, uint32_t kind, rp_msg_t *m, int timeout_ms, void **beat, int n)
{
    int64_t end = ab_now_ms() + timeout_ms, next_beat = 0;
    while (ab_now_ms() < end) {
        if (ab_now_ms() >= next_beat) {
            for (int i = 0; i < n; i++)
                rp_beat(beat[i]);
            next_beat = ab_now_ms() + 150;
        }
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 50) <= 0)
            continue;
        while (rp_take(s, m)) {
            if (m->h.kind == kind)
                return 1;
            rp_close(m);
        }
    }
    return 0;
}

int rp_count(void *s, uint32_t kind, int ms, void **beat, int n)
{
    int got = 0;
    rp_msg_t m;
    int64_t end = ab_now_ms() + ms;
    while (ab_now_ms() < end) {
        int left = (int)(end - ab_now_ms());
        if (!rp_wait(s, kind ? kind : 0xffff, &m, left < 200 ? left : 200, beat, n)) {
            /* kind 0: anything at all counts */
            if (!kind)
                while (rp_take(s, &m)) {
                    got++;
                    rp_close(&m);
                }
            continue;
        }
        got++;
        rp_close(&m);
    }
    return got;
}

void rp_register(void *s, const char *service, uint32_t capacity, uint32_t features)
{
    Agentbus__Register r;
    agentbus__register__init(&r);
    r.service = (char *)service;
    r.capacity = capacity;
    r.name = (char *)"raw";
    r.features = features;
    uint8_t buf[256];
    size_t len = agentbus__register__pack(&r, buf);
    ab_header_t h = ab_header_init(AB_KIND_REGISTER);
    h.id = 1;
    h.target = ab_view_of(service);
    h.credit = capacity;
    mt_raw_send(s, &h, features ? buf : NULL, len);
    rp_msg_t m;
    REQUIRE(rp_wait(s, AB_KIND_REGISTER, &m, 5000, NULL, 0));
    rp_close(&m);
}

void rp_hello(void *s, const char *name, uint64_t instance, int takeover, uint64_t id)
{
    Agentbus__Hello m;
    agentbus__hello__init(&m);
    m.name = (char *)name;
    m.role = (char *)"agent";
    m.instance = instance;
    m.takeover = takeover;
    uint8_t buf[512];
    size_t len = agentbus__hello__pack(&m, buf);
    ab_header_t h = ab_header_init(AB_KIND_HELLO);
    h.id = id;
    mt_raw_send(s, &h, buf, len);
}

void rp_request(void *s, uint64_t id, const char *service, uint32_t flags,
                      const void *data, size_t size)
{
    ab_header_t h = ab_header_init(AB_KIND_REQUEST);
    h.id = id;
    h.target = ab_view_of(service);
    h.flags = flags;
    h.timeout_ms = 20000;
    if (flags & AB_FLAG_LZ4)
        h.original_size = size * 4;
    mt_raw_send(s, &h, data, size);
}

void rp_answer(void *s, uint32_t kind, uint64_t corr, const char *text)
{
    ab_header_t h = ab_header_init(kind);
    h.correlation_id = corr;
    mt_raw_send(s, &h, text, strlen(text));
}

int rp_body_is(const rp_msg_t *m, const char *text)
{
    return m->has_body && zmq_msg_size((zmq_msg_t *)&m->body) == strlen(text) &&
           memcmp(zmq_msg_data((zmq_msg_t *)&m->body), text, strlen(text)) == 0;
}

size_t rp_unhex(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = strlen(hex) / 2;
    for (size_t i = 0; i < n && i < cap; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
    return n < cap ? n : cap;
}
