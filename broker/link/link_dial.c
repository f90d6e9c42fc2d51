/*
 * link_dial.c - a broker link's dialed connection (link.h): the DEALER to a
 * --peer endpoint with its monitor, the peer's key, and what is said when
 * dialing links nothing.
 */
#define AB_LOG_SUBSYS "link"
#include "link_int.h"
#include "auth.h"
#include "util.h"

#include <czmq.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <zmq.h>

/* Closes L's dialed connection and its monitor (what it held is dropped). */
void ab_link_close_dealer(ab_link_t *l)
{
    if (l->dealer && l->mon)
        zmq_socket_monitor(l->dealer, NULL, 0);
    if (l->mon)
        zmq_close(l->mon);
    if (l->dealer)
        zmq_close(l->dealer);
    l->dealer = l->mon = NULL;
    l->out_conn = 0;
}

static int s_monitor(ab_broker_t *b, ab_link_t *l, void *d)
{
    static unsigned gen;
    char ep[96];
    snprintf(ep, sizeof ep, "inproc://ab-link-monitor-%p-%u", (void *)b, gen++);
    int zero = 0;
    void *m = NULL;
    int events = ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED |
                 ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                 ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL;
    if (zmq_socket_monitor(d, ep, events) != 0 ||
        !(m = zmq_socket(b->zctx, ZMQ_PAIR)) ||
        zmq_setsockopt(m, ZMQ_LINGER, &zero, sizeof zero) != 0 || zmq_connect(m, ep) != 0) {
        AB_ERROR("cannot watch the connection to peer %s: %s", l->endpoint,
                 zmq_strerror(errno));
        if (m)
            zmq_close(m);
        zmq_close(d);
        return -1;
    }
    l->mon = m;
    l->out_conn = 0;
    return 0;
}

/* Opens L's DEALER and dials its endpoint. 0 or -1. */
int ab_link_dial(ab_broker_t *b, ab_link_t *l)
{
    void *d = zmq_socket(b->zctx, ZMQ_DEALER);
    if (!d)
        return -1;
    int zero = 0, hwm = (int)b->cfg->sndhwm, ivl = 100;
    zmq_setsockopt(d, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(d, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(d, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(d, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
    int64_t maxmsg = (int64_t)b->cfg->max_payload_bytes + (1 << 20);
    zmq_setsockopt(d, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    if (l->key[0] && ab_auth_link_client(b, d, l->key) != 0) {
        zmq_close(d);
        return -1;
    }
    if (s_monitor(b, l, d) != 0)
        return -1;
    if (zmq_connect(d, l->endpoint) != 0) {
        AB_ERROR("cannot dial peer %s: %s", l->endpoint, zmq_strerror(errno));
        l->dealer = d;
        ab_link_close_dealer(l);
        return -1;
    }
    l->dealer = d;
    l->out_up = 0;
    l->out_since_ms = ab_now_ms();
    l->out_warned = 0;
    l->retry_at_ms = 0;
    return 0;
}

/* KEY after '#' in a --peer: a Z85 public key (40 characters) or the path
 * of a public certificate. 0 with OUT, or -1. */
int ab_link_peer_key(const char *key, char *out)
{
    if (strlen(key) == 40) {
        uint8_t raw[32];
        if (zmq_z85_decode(raw, key)) {
            snprintf(out, AB_LINK_KEY_TXT, "%s", key);
            return 0;
        }
    }
    zcert_t *c = zcert_load(key);
    if (!c)
        return -1;
    snprintf(out, AB_LINK_KEY_TXT, "%s", zcert_public_txt(c));
    zcert_destroy(&c);
    return 0;
}

/* A dialed peer still not linked S_DIAL_WARN_MS after the dial is said
 * once per dial. Without it a KEY that is not the peer's, a key the peer
 * does not trust and no broker there all looked alike from this side:
 * nothing in the log (only the peer's log said "failed its handshake"). */
#define S_DIAL_WARN_MS 5000
void ab_link_dial_warn(const ab_broker_t *b, ab_link_t *l, int64_t now)
{
    if (!l->dealer || l->out_up || l->out_warned || now - l->out_since_ms < S_DIAL_WARN_MS)
        return;
    l->out_warned = 1;
    long long s = (now - l->out_since_ms) / 1000;
    if (l->out_conn) /* a refusal's reason was logged as it came ("refused the link: ...") */
        AB_WARN("peer %s: connected but not linked after %lld s: it refused this broker's LINK "
                "HELLO or answers none (its log says why, e.g. a broker name its key is not "
                "granted)", l->endpoint, s);
    else if (!b->cfg->auth_curve) /* keys play no part: say what does */
        AB_WARN("peer %s: not linked after %lld s: no handshake completed. No broker listens "
                "there, or it runs --auth curve (this one runs --auth none; its log then says "
                "'does not use CURVE' or 'failed its handshake'); still trying", l->endpoint, s);
    else
        AB_WARN("peer %s: not linked after %lld s: no handshake completed. No broker listens "
                "there, or it does not trust this broker's key, or the KEY given for it is "
                "not its broker key (its log then says 'failed its handshake' or 'unknown "
                "key'); still trying", l->endpoint, s);
}
