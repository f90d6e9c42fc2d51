/* msgtest.c - see msgtest.h. */
#include "msgtest.h"
#include "codec.h"
#include "harness.h"
#include "test.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

static void s_box_cb(ab_client_t *c, const ab_message_t *m, void *arg)
{
    (void)c;
    mt_box_t *b = arg;
    if (m->type >= 0 && m->type < 8)
        b->count[m->type]++;
    if (m->type == AB_MSG_GAP)
        b->dropped += m->dropped;
    if (b->n >= MT_MAX)
        return;
    int i = b->n++;
    b->type[i] = m->type;
    b->status[i] = m->status;
    b->id[i] = m->id;
    b->reply_to[i] = m->reply_to;
    snprintf(b->sender[i], sizeof b->sender[i], "%s", m->sender);
    snprintf(b->target[i], sizeof b->target[i], "%s", m->target);
    snprintf(b->data[i], sizeof b->data[i], "%.*s", (int)(m->size < 63 ? m->size : 63),
             m->data ? (const char *)m->data : "");
}

ab_client_t *mt_agent(int port, const char *name, int takeover, mt_box_t *box)
{
    ab_options_t *o = ab_options_new();
    REQUIRE(o != NULL);
    REQUIRE(ab_options_set_endpoint(o, th_ep(port)) == AB_OK);
    if (name)
        REQUIRE(ab_options_set_name(o, name) == AB_OK);
    ab_options_set_takeover(o, takeover);
    ab_client_t *c = NULL;
    REQUIRE(ab_client_new(&c, o) == AB_OK);
    ab_options_destroy(&o);
    if (box) {
        memset(box, 0, sizeof *box);
        ab_client_on_message(c, s_box_cb, box);
    }
    return c;
}

void mt_box_attach(ab_client_t *c, mt_box_t *box)
{
    memset(box, 0, sizeof *box);
    ab_client_on_message(c, s_box_cb, box);
}

int mt_wait(ab_client_t *c, mt_box_t *box, int type, int want, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    for (;;) {
        int have = type ? box->count[type] : box->n;
        if (have >= want || ab_now_ms() >= end)
            return have;
        ab_client_poll(c, 20);
    }
}

void mt_pump(ab_client_t **cs, int n, int ms)
{
    int64_t end = ab_now_ms() + ms;
    do {
        for (int i = 0; i < n; i++)
            ab_client_poll(cs[i], n == 1 ? 10 : 0);
        if (n > 1)
            th_sleep_ms(2);
    } while (ab_now_ms() < end);
}

Agentbus__AgentList *mt_agents(ab_client_t *ctl)
{
    void *buf = NULL;
    size_t len = 0;
    if (ab_client_control(ctl, "agents", 5000, &buf, &len) != AB_OK)
        return NULL;
    Agentbus__AgentList *al = agentbus__agent_list__unpack(NULL, len, buf);
    ab_free(buf);
    return al;
}

int mt_wait_bound(ab_client_t *ctl, const char *name, int timeout_ms)
{
    int64_t end = ab_now_ms() + timeout_ms;
    while (ab_now_ms() < end) {
        Agentbus__AgentList *al = mt_agents(ctl);
        int found = 0;
        for (size_t i = 0; al && i < al->n_agents; i++)
            if (strcmp(al->agents[i]->name, name) == 0 && al->agents[i]->connected)
                found = 1;
        if (al)
            agentbus__agent_list__free_unpacked(al, NULL);
        if (found)
            return 1;
        th_sleep_ms(20);
    }
    return 0;
}

void *mt_raw(int port, void **ctx)
{
    *ctx = zmq_ctx_new();
    void *raw = zmq_socket(*ctx, ZMQ_DEALER);
    int linger = 0, timeout = 2000;
    zmq_setsockopt(raw, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(raw, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    th_secure(raw); /* CURVE under AB_TEST_AUTH=curve */
    REQUIRE(zmq_connect(raw, th_ep(port)) == 0);
    return raw;
}

int mt_raw_expect_error(void *raw, uint32_t kind, const char *target, uint64_t id, size_t size,
                        char *text, size_t cap)
{
    ab_header_t h = ab_header_init(kind);
    h.id = id;
    h.target = ab_view_of(target);
    uint8_t buf[1024];
    size_t n = ab_header_encode(&h, buf, sizeof buf);
    char *payload = size ? malloc(size) : NULL;
    if (payload)
        memset(payload, 'x', size);
    zmq_send(raw, buf, n, payload ? ZMQ_SNDMORE : 0);
    if (payload)
        zmq_send(raw, payload, size, 0);
    free(payload);
    int64_t end = ab_now_ms() + 2000;
    while (ab_now_ms() < end) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, raw, 0) < 0) {
            zmq_msg_close(&m);
            break;
        }
        int more = zmq_msg_more(&m);
        ab_header_t r;
        int code = -1;
        if (ab_header_parse(zmq_msg_data(&m), zmq_msg_size(&m), &r) == AB_OK &&
            r.kind == AB_KIND_ERROR && r.correlation_id == id) {
            code = (int)r.error_code;
            if (text)
                ab_view_copy(r.error_text, text, cap);
        }
        zmq_msg_close(&m);
        while (more) { /* drain a payload frame */
            zmq_msg_init(&m);
            zmq_msg_recv(&m, raw, 0);
            more = zmq_msg_more(&m);
            zmq_msg_close(&m);
        }
        if (code >= 0)
            return code;
    }
    return -1;
}

void mt_raw_send(void *s, const ab_header_t *h, const void *data, size_t size)
{
    uint8_t buf[1024];
    size_t n = ab_header_encode(h, buf, sizeof buf);
    REQUIRE(n > 0);
    zmq_send(s, buf, n, (data ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT);
    if (data)
        zmq_send(s, data, size, ZMQ_DONTWAIT);
}
