/*
 * test_request_opts.c - ab_client_request_start and ab_request_opts_t: the
 * defaults, argument checks, and the header each option produces, read off
 * the wire by a bare ROUTER standing in for the broker (no broker needed).
 * Also the header's general contract that a NULL handle is AB_EINVAL (or a
 * no-op / 0), never a crash.
 */
#include "agentbus.h"
#include "codec.h"
#include "test.h"

#include <stdio.h>
#include <string.h>
#include <zmq.h>

static int s_done, s_status;

static void s_cb(ab_client_t *c, const ab_reply_event_t *ev, void *arg)
{
    (void)c;
    (void)arg;
    s_done += ev->final;
    s_status = ev->status;
}

/* Receives the next REQUEST the client sent to ROUTER into *H (views into
 * HDR, which the caller closes). 0, or -1 after 5 s. */
static int s_next_request(void *router, zmq_msg_t *hdr, ab_header_t *h)
{
    for (int tries = 0; tries < 100; tries++) {
        zmq_pollitem_t it = {router, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 50) <= 0)
            continue;
        zmq_msg_t id, part;
        zmq_msg_init(&id);
        zmq_msg_recv(&id, router, 0);
        zmq_msg_close(&id);
        zmq_msg_init(hdr);
        zmq_msg_recv(hdr, router, 0);
        while (zmq_msg_more(hdr)) { /* skip the payload */
            zmq_msg_init(&part);
            zmq_msg_recv(&part, router, 0);
            int more = zmq_msg_more(&part);
            zmq_msg_close(&part);
            if (!more)
                break;
        }
        if (ab_header_parse(zmq_msg_data(hdr), zmq_msg_size(hdr), h) == AB_OK &&
            h->kind == AB_KIND_REQUEST)
            return 0;
        zmq_msg_close(hdr);
    }
    return -1;
}

static void s_defaults_and_checks(ab_client_t *c)
{
    ab_request_opts_t o = {99, "m", "w", 7, 7, 7, 7}, init = AB_REQUEST_OPTS_INIT;
    ab_request_opts_init(&o);
    CHECK_TRUE(memcmp(&o, &init, sizeof o) == 0);
    CHECK_EQ(o.timeout_ms, 0);
    CHECK_TRUE(o.model == NULL && o.worker == NULL);
    CHECK_EQ(o.flags + o.cache_flags + o.cache_ttl_s + o.priority, 0);
    ab_request_opts_init(NULL); /* no-op */

    CHECK_EQ(ab_client_request_start(NULL, "s", "x", 1, NULL, s_cb, NULL, NULL), AB_EINVAL);
    CHECK_EQ(ab_client_request_start(c, NULL, "x", 1, NULL, s_cb, NULL, NULL), AB_EINVAL);
    CHECK_EQ(ab_client_request_start(c, "s", NULL, 1, NULL, s_cb, NULL, NULL), AB_EINVAL);
    o.flags = 2; /* not an AB_REQUEST_* bit */
    CHECK_EQ(ab_client_request_start(c, "s", "x", 1, &o, s_cb, NULL, NULL), AB_EINVAL);
    o.flags = 0;
    o.cache_flags = 1; /* not an AB_CACHE_* bit */
    CHECK_EQ(ab_client_request_start(c, "s", "x", 1, &o, s_cb, NULL, NULL), AB_EINVAL);
    o.cache_flags = 0;
    char model[AB_MODEL_MAX + 2];
    memset(model, 'm', sizeof model - 1);
    model[sizeof model - 1] = '\0';
    o.model = model;
    CHECK_EQ(ab_client_request_start(c, "s", "x", 1, &o, s_cb, NULL, NULL), AB_EINVAL);
    CHECK_TRUE(strstr(ab_client_last_error(c), "model") != NULL);
    CHECK_EQ(ab_client_pending(c), 0); /* nothing was started */
    CHECK_EQ(s_done, 0);               /* and no callback ran */
}

/* Each option lands in its header field; the handle's cache settings are
 * the base the request's own add to. */
static void s_wire(ab_client_t *c, void *router)
{
    zmq_msg_t hdr;
    ab_header_t h;
    uint64_t id = 0;
    REQUIRE(ab_client_request_start(c, "plain", "x", 1, NULL, s_cb, NULL, &id) == AB_OK);
    REQUIRE(s_next_request(router, &hdr, &h) == 0);
    CHECK_U64(h.id, id);
    CHECK_TRUE(ab_view_eq(h.target, "plain"));
    CHECK_EQ(h.timeout_ms, 30000); /* the handle's default */
    CHECK_EQ(h.flags & ~(uint32_t)AB_FLAG_LZ4_SKIPPED, 0);
    CHECK_EQ(h.model.len + h.worker.len, 0);
    CHECK_EQ(h.cache_ttl_s + h.priority, 0);
    zmq_msg_close(&hdr);

    ab_request_opts_t o = AB_REQUEST_OPTS_INIT;
    o.timeout_ms = 1234;
    o.model = "llama3:8b";
    o.worker = "w-1";
    o.flags = AB_REQUEST_NON_IDEMPOTENT;
    o.cache_flags = AB_CACHE_NO_STORE;
    o.cache_ttl_s = 60;
    o.priority = 3;
    REQUIRE(ab_client_set_cache(c, AB_CACHE_ON, 5) == AB_OK);
    REQUIRE(ab_client_request_start(c, "infer", "y", 1, &o, s_cb, NULL, NULL) == AB_OK);
    REQUIRE(s_next_request(router, &hdr, &h) == 0);
    CHECK_EQ(h.timeout_ms, 1234);
    CHECK_TRUE(ab_view_eq(h.model, "llama3:8b"));
    CHECK_TRUE(ab_view_eq(h.worker, "w-1"));
    CHECK_EQ(h.flags & AB_FLAG_NON_IDEMPOTENT, AB_FLAG_NON_IDEMPOTENT);
    CHECK_EQ(h.flags & (AB_FLAG_CACHEABLE | AB_FLAG_NO_STORE),
             AB_FLAG_CACHEABLE | AB_FLAG_NO_STORE);
    CHECK_EQ(h.cache_ttl_s, 60); /* the request's TTL over the handle's */
    CHECK_EQ(h.priority, 3);
    zmq_msg_close(&hdr);

    o = (ab_request_opts_t)AB_REQUEST_OPTS_INIT; /* the handle's TTL again */
    REQUIRE(ab_client_request_start(c, "infer", "z", 1, &o, s_cb, NULL, &id) == AB_OK);
    REQUIRE(s_next_request(router, &hdr, &h) == 0);
    CHECK_EQ(h.cache_ttl_s, 5);
    CHECK_EQ(h.timeout_ms, 30000); /* 0 in the options: the handle's default */
    CHECK_EQ(h.flags & AB_FLAG_CACHEABLE, AB_FLAG_CACHEABLE);
    CHECK_EQ(h.flags & AB_FLAG_NON_IDEMPOTENT, 0);
    zmq_msg_close(&hdr);

    CHECK_EQ(ab_client_pending(c), 3);
    CHECK_EQ(ab_client_cancel(c, id), AB_OK); /* a started request is cancellable */
    CHECK_EQ(s_done, 1);
    CHECK_EQ(s_status, AB_ECANCELLED);
}

static void s_null_handles(void)
{
    void *p = NULL;
    size_t n = 0;
    int fd = -1;
    CHECK_EQ(ab_client_request(NULL, "s", "x", 1, 10, &p, &n), AB_EINVAL);
    CHECK_TRUE(p == NULL);
    CHECK_EQ(ab_client_control(NULL, "stats", 10, &p, &n), AB_EINVAL);
    CHECK_EQ(ab_client_poll(NULL, 0), AB_EINVAL);
    CHECK_EQ(ab_client_fd(NULL, &fd), AB_EINVAL);
    CHECK_EQ(ab_client_flush(NULL), AB_EINVAL);
    CHECK_EQ(ab_client_cancel(NULL, 1), AB_EINVAL);
    CHECK_EQ(ab_client_set_cache(NULL, 0, 0), AB_EINVAL);
    CHECK_EQ(ab_client_send(NULL, "a", "x", 1, 0, NULL), AB_EINVAL);
    CHECK_EQ(ab_client_publish(NULL, "t", "x", 1, NULL), AB_EINVAL);
    CHECK_EQ(ab_client_subscribe(NULL, "t", 0), AB_EINVAL);
    CHECK_EQ(ab_client_on_message(NULL, NULL, NULL), AB_EINVAL);
    CHECK_EQ(ab_client_watch(NULL, NULL, NULL, 0), AB_EINVAL);
    CHECK_EQ(ab_client_next_timeout_ms(NULL), 0);
    CHECK_EQ(ab_client_pending(NULL), 0);
    CHECK_EQ(ab_client_connected(NULL), 0);
    CHECK_STR(ab_client_last_error(NULL), "");
    ab_client_stop(NULL);
    ab_client_destroy(NULL);
    CHECK_EQ(ab_worker_recv(NULL, (ab_job_t **)&p, 0), AB_EINVAL);
    CHECK_EQ(ab_worker_run(NULL, NULL, NULL), AB_EINVAL);
    CHECK_EQ(ab_worker_poll(NULL, 0, NULL, NULL), AB_EINVAL);
    CHECK_EQ(ab_worker_flush(NULL), AB_EINVAL);
    CHECK_EQ(ab_worker_fd(NULL, &fd), AB_EINVAL);
    CHECK_EQ(ab_worker_set_capacity(NULL, 1), AB_EINVAL);
    CHECK_EQ(ab_worker_capacity(NULL), 0);
    CHECK_EQ(ab_worker_has_input(NULL), 0);
    CHECK_EQ(ab_worker_connected(NULL), 0);
    CHECK_STR(ab_worker_last_error(NULL), "");
    ab_worker_stop(NULL);
    ab_worker_shutdown(NULL, 0);
    ab_worker_destroy(NULL);
    CHECK_STR(ab_version(), AB_VERSION_STRING);
    /* A refused ab_worker_new says why in the thread's last error, and
     * never leaves an earlier call's text there. */
    ab_worker_t *w = (ab_worker_t *)&p;
    ab_options_t *o = ab_options_new();
    REQUIRE(o && ab_options_set_endpoint(o, "nonsense") == AB_OK);
    CHECK_EQ(ab_worker_new(&w, o, "svc", 1), AB_EZMQ);
    CHECK_TRUE(w == NULL);
    CHECK_TRUE(strstr(ab_worker_last_error(NULL), "nonsense") != NULL);
    char big[300];
    memset(big, 's', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    CHECK_EQ(ab_worker_new(&w, o, big, 1), AB_EINVAL);
    CHECK_STR(ab_worker_last_error(NULL), "service name must be 1..255 bytes");
    CHECK_EQ(ab_worker_new(&w, o, "", 1), AB_EINVAL);
    CHECK_STR(ab_worker_last_error(NULL), "service name must be 1..255 bytes");
    CHECK_EQ(ab_worker_new(&w, o, "svc", 0), AB_EINVAL);
    CHECK_STR(ab_worker_last_error(NULL), "capacity must be 1..100000");
    ab_options_destroy(&o);
}

int main(void)
{
    s_null_handles();
    void *ctx = zmq_ctx_new();
    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger);
    REQUIRE(zmq_bind(router, "tcp://127.0.0.1:*") == 0);
    char ep[128];
    size_t len = sizeof ep;
    zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, ep, &len);

    ab_options_t *opts = ab_options_new();
    REQUIRE(opts && ab_options_set_endpoint(opts, ep) == AB_OK);
    REQUIRE(ab_options_set_batching(opts, 0) == AB_OK); /* one message per request */
    ab_client_t *c = NULL;
    REQUIRE(ab_client_new(&c, opts) == AB_OK);
    s_defaults_and_checks(c);
    s_wire(c, router);
    ab_client_destroy(&c);
    ab_options_destroy(&opts);
    zmq_close(router);
    zmq_ctx_term(ctx);
    return TEST_DONE("test_request_opts");
}
