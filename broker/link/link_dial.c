/*
 * link_dial.c - a broker link's dialed connection (link.h): the DEALER to a
 * --peer endpoint with its monitor, the peer's key, the lookup of its host
 * name, and what is said when dialing links nothing.
 */
#define AB_LOG_SUBSYS "link"
#include "link_int.h"
#include "auth.h"
#include "util.h"

#include <arpa/inet.h>
#include <czmq.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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
    int events = ZMQ_EVENT_CONNECTED | ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED |
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

/* --- the peer's host name ------------------------------------------------------
 * libzmq looks a tcp:// host name up itself, at each attempt, and says
 * nothing when it does not resolve: the "not linked" warning then spoke of
 * keys and of no broker listening. So each dial looks the name up here too,
 * asynchronously (getaddrinfo_a: the broker's loop never waits on DNS), and
 * the warning 5 s on reads the answer. A literal IP address needs none. */
struct ab_link_lookup {
    struct gaicb cb; /* the request: reads host and hints until it is done */
    struct addrinfo hints;
    char host[256];
};

/* The HOST of "tcp://[SOURCE;]HOST:PORT" into OUT: 0, or -1 for a literal
 * IP address (or none). */
static int s_host_name(const char *ep, char *out, size_t cap)
{
    const char *h = strrchr(ep, ';');
    h = h ? h + 1 : ep + 6; /* after "tcp://" (s_peer_add) */
    const char *end = strrchr(h, ':');
    if (*h == '[' || !end || end == h || (size_t)(end - h) >= cap)
        return -1; /* "[...]" holds an IPv6 address */
    snprintf(out, cap, "%.*s", (int)(end - h), h);
    unsigned char a[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, out, a) == 1 || inet_pton(AF_INET6, out, a) == 1 ? -1 : 0;
}

static void s_lookup_start(ab_link_t *l)
{
    char host[sizeof l->lookup->host];
    if (s_host_name(l->endpoint, host, sizeof host) != 0)
        return;
    if (l->lookup && gai_error(&l->lookup->cb) == EAI_INPROGRESS)
        return; /* the last dial's answer will do */
    ab_link_lookup_free(l);
    struct ab_link_lookup *lk = calloc(1, sizeof *lk);
    if (!lk)
        return; /* no hint, then */
    memcpy(lk->host, host, sizeof host);
    lk->hints.ai_family = AF_UNSPEC;
    lk->hints.ai_socktype = SOCK_STREAM;
    lk->cb.ar_name = lk->host;
    lk->cb.ar_request = &lk->hints;
    struct gaicb *list[1] = {&lk->cb};
    if (getaddrinfo_a(GAI_NOWAIT, list, 1, NULL) != 0) {
        free(lk); /* not queued */
        return;
    }
    l->lookup = lk;
}

void ab_link_lookup_free(ab_link_t *l)
{
    struct ab_link_lookup *lk = l->lookup;
    if (!lk)
        return;
    l->lookup = NULL;
    if (gai_error(&lk->cb) == EAI_INPROGRESS && gai_cancel(&lk->cb) == EAI_NOTCANCELED) {
        const struct gaicb *list[1] = {&lk->cb};
        struct timespec two_s = {2, 0};
        gai_suspend(list, 1, &two_s);
    }
    if (gai_error(&lk->cb) == EAI_INPROGRESS)
        return; /* a resolver thread still writes into it: left to it (link_int.h) */
    if (lk->cb.ar_result)
        freeaddrinfo(lk->cb.ar_result);
    free(lk);
}

/* What the lookup of L's host name says, into BUF: NULL when it resolved
 * (or is no name). */
static const char *s_lookup_hint(ab_link_t *l, char *buf, size_t cap)
{
    int rc = l->lookup ? gai_error(&l->lookup->cb) : 0;
    if (rc == 0 || rc == EAI_CANCELED)
        return NULL;
    if (rc == EAI_INPROGRESS)
        snprintf(buf, cap, "its host name '%s' has not resolved yet (DNS slow or not answering)",
                 l->lookup->host);
    else
        snprintf(buf, cap, "its host name '%s' does not resolve (%s)", l->lookup->host,
                 gai_strerror(rc));
    return buf;
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
    s_lookup_start(l);
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
    char hint[400];
    if (!l->out_conn && s_lookup_hint(l, hint, sizeof hint))
        AB_WARN("peer %s: not linked after %lld s: %s: check the host in --peer, or this "
                "machine's DNS; still trying", l->endpoint, s, hint);
    else if (l->out_conn) /* a refusal's reason was logged as it came ("refused the link: ...") */
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
