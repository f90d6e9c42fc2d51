/*
 * router.c - the send path: every message the broker sends goes through
 * ab_send, which encodes the header on the stack and moves the payload.
 *
 * ZMQ_ROUTER_MANDATORY is on, so a send to a peer that is gone fails with
 * EHOSTUNREACH and one to a peer whose pipe is full fails with EAGAIN instead
 * of vanishing silently. Both are counted (send_failures) and logged at a
 * rate limit; the caller decides what a failure means for its request.
 */
#include "broker.h"
#include "placement.h"
#include "cache.h"
#include "agentbus.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void s_send_failed(ab_broker_t *b, const ab_rid_t *rid)
{
    int err = errno;
    char key[2 * AB_RID_MAX + 1];
    b->c.send_failures++;
    if (err == EAGAIN)
        b->c.send_eagain++;
    else if (err == EHOSTUNREACH)
        b->c.send_unreachable++;
    ab_hex(rid->bytes, rid->len, key, sizeof key);
    AB_LOG_RL(&b->rl, ab_hash_bytes(rid->bytes, rid->len) ^ 0x5e17, ab_now_ms(), AB_LOG_WARN,
              "cannot send to %s: %s", key,
              err == EHOSTUNREACH ? "peer is gone" : err == EAGAIN ? "peer's queue is full"
                                                                  : zmq_strerror(err));
}

int ab_send_raw(ab_broker_t *b, const ab_rid_t *rid, const uint8_t *buf, size_t len,
                zmq_msg_t *payload)
{
    if (zmq_send(b->router, rid->bytes, rid->len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        goto fail;
    /* Once the identity frame is accepted the rest of the message is too. */
    if (zmq_send(b->router, buf, len, payload ? ZMQ_SNDMORE : 0) < 0)
        goto fail;
    size_t plen = payload ? zmq_msg_size(payload) : 0;
    if (payload && zmq_msg_send(payload, b->router, 0) < 0)
        goto fail;
    b->c.msgs_out++;
    b->c.bytes_out += rid->len + len + plen;
    return 0;
fail:
    s_send_failed(b, rid);
    return -1;
}

int ab_send(ab_broker_t *b, const ab_rid_t *rid, const ab_header_t *h, zmq_msg_t *payload)
{
    uint8_t stack[512];
    size_t len;
    uint8_t *buf = ab_header_encode_buf(h, stack, sizeof stack, &len);
    if (!buf)
        return -1;
    ab_peer_t *p = b->cfg->batch ? ab_peer_lookup(b, rid) : NULL;
    int rc = p && (p->features & AB_FEATURE_BATCH) ? ab_batching_send(b, p, buf, len, payload)
                                                     : ab_send_raw(b, rid, buf, len, payload);
    if (buf != stack)
        free(buf);
    return rc;
}

int ab_send_error(ab_broker_t *b, const ab_rid_t *rid, uint64_t corr, uint32_t code,
                  const char *text)
{
    ab_header_t h = ab_header_init(AB_KIND_ERROR);
    h.correlation_id = corr;
    h.error_code = code;
    h.error_text = ab_view_of(text);
    return ab_send(b, rid, &h, NULL);
}

void ab_req_client_done(ab_broker_t *b, ab_req_t *r)
{
    if (!r->client_counted)
        return;
    r->client_counted = 0;
    ab_peer_t *p = ab_peer_lookup(b, &r->client);
    if (p && p->in_flight)
        p->in_flight--;
}

void ab_req_free(ab_broker_t *b, ab_req_t *r)
{
    ab_client_untrack(r);
    ab_req_client_done(b, r);
    if (r->cache)
        ab_cache_req_gone(b, r);
    if (r->state == AB_REQ_QUEUED)
        ab_queue_remove(r->service, r);
    else if (r->worker)
        ab_worker_req_remove(r->worker, r);
    ab_heap_remove(b, r);
    ab_idmap_del(&b->pending, r->bid);
    ab_service_release(b, r); /* it may be idle now (service.c) */
    ab_req_destroy(r);
}

void ab_req_destroy(ab_req_t *r)
{
    ab_route_free(r);
    ab_cache_req_free(&r->cache);
    if (r->has_payload)
        zmq_msg_close(&r->payload);
    free(r);
}

void ab_req_fail(ab_broker_t *b, ab_req_t *r, uint32_t code, const char *text)
{
    ab_send_error(b, &r->client, r->client_id, code, text);
    AB_COUNT_ERROR(b, code);
    r->service->errors++;
    ab_req_free(b, r);
}
