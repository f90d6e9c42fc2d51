/* cache_redis.c - see cache_redis.h. */
#define AB_LOG_SUBSYS "cache" /* log.h: the subsystem in log lines */
#include "cache_redis.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define AB_L2_NS "agentbus:cache:v1:"
#define AB_L2_NS_LEN 18
#define AB_L2_BACKOFF_MIN_MS 1000
#define AB_L2_BACKOFF_MAX_MS 30000
#define AB_L2_QUEUE_MAX (64u << 20) /* bytes of commands waiting to be written */
#define AB_L2_READS_PER_TURN 16     /* 64 KiB reads: the loop's other work goes on */
#define AB_L2_RESOLVE_POLL_MS 10
#define AB_L2_SMALL_REPLY_MAX (1u << 20) /* a reply to anything but GET (SCAN: ~1000 keys) */
#define AB_L2_ARRAY_MAX 65536 /* elements of one array (SCAN's keys, COUNT 1000) */
/* A value: this magic and format byte, its expiry (ms since the epoch, 8
 * bytes big-endian), then the blob. The expiry travels with the value so a
 * broker promoting a hit to L1 and L3 keeps it only as long as it had left
 * here (with the promoting request's TTL, an entry stored for 2 s was
 * served for an hour), in the same round trip as the GET. Format 1 had no
 * expiry: a value of another format is a miss. */
static const char s_vmagic[5] = {'A', 'B', 'L', '2', 2};
#define S_VHDR (sizeof s_vmagic + 8)

/* What a command in flight was, so its reply (Redis answers in order) is
 * handled as such. */
enum { S_GET, S_SET, S_SCAN, S_UNLINK };

typedef struct {
    uint8_t kind;
    uint64_t tag;   /* S_GET: the broker's tag */
    int64_t t_ns;   /* when it was queued */
    redisReply *r;  /* an answer: the GET's reply (NULL: a miss) */
} s_item_t;

typedef struct {
    s_item_t *v;
    size_t cap, head, n; /* cap a power of two */
} s_ring_t;

struct ab_l2 {
    char host[256], port_s[8];
    int port, timeout_ms;
    size_t max_reply;
    size_t max_get;     /* the longest value a lookup reads: a header and a blob */
    ab_l2_counters_t c;
    int fd, connecting;
    int64_t conn_ns;          /* when the connect started */
    redisReader *rd;
    size_t reply_fed;         /* bytes fed to RD since its last complete reply */
    char *obuf;               /* commands not yet written */
    size_t olen, ooff, ocap;
    s_ring_t pend;            /* written or queued, waiting for their reply */
    s_ring_t ready;           /* lookup answers for ab_l2_recv */
    redisReply *given;        /* the reply ab_l2_recv handed out last */
    int64_t retry_at_ms, backoff_ms;
    int said_down; /* the first failure to reach redis was logged at WARN */
    int said_error; /* an error reply on this connection was logged at WARN */
    int clearing;
    long cleared;
    struct gaicb *gai;        /* a name being resolved (NULL: none) */
    struct addrinfo *hints;
    struct sockaddr_storage addr;
    socklen_t alen;
    int numeric;              /* the address is numeric: resolved once */
    unsigned addr_turn;       /* which of a name's addresses the next connect uses */
};

/* --- rings -------------------------------------------------------------------------- */
static int s_ring_push(s_ring_t *q, const s_item_t *it)
{
    if (q->n == q->cap) {
        if (q->cap >= AB_L2_PENDING_MAX) /* pend.n + ready.n stays under it (ab_l2_get) */
            return -1;
        size_t cap = q->cap ? q->cap * 2 : 64;
        s_item_t *v = malloc(cap * sizeof *v);
        if (!v)
            return -1;
        for (size_t i = 0; i < q->n; i++)
            v[i] = q->v[(q->head + i) & (q->cap - 1)];
        free(q->v);
        q->v = v;
        q->cap = cap;
        q->head = 0;
    }
    q->v[(q->head + q->n++) & (q->cap - 1)] = *it;
    return 0;
}

static int s_ring_pop(s_ring_t *q, s_item_t *it)
{
    if (!q->n)
        return 0;
    *it = q->v[q->head];
    q->head = (q->head + 1) & (q->cap - 1);
    q->n--;
    return 1;
}

/* --- output buffer: RESP commands ---------------------------------------------------- */
static int s_out_reserve(ab_l2_t *l2, size_t need)
{
    if (l2->ooff && l2->ooff == l2->olen)
        l2->ooff = l2->olen = 0;
    if (l2->olen - l2->ooff + need > AB_L2_QUEUE_MAX)
        return -1;
    if (l2->olen + need <= l2->ocap)
        return 0;
    if (l2->ooff) { /* written bytes first make room */
        memmove(l2->obuf, l2->obuf + l2->ooff, l2->olen - l2->ooff);
        l2->olen -= l2->ooff;
        l2->ooff = 0;
        if (l2->olen + need <= l2->ocap)
            return 0;
    }
    size_t cap = l2->ocap ? l2->ocap : 4096;
    while (cap < l2->olen + need)
        cap *= 2;
    char *p = realloc(l2->obuf, cap);
    if (!p)
        return -1;
    l2->obuf = p;
    l2->ocap = cap;
    return 0;
}

/* One bulk string made of A then B (B may be NULL). */
static char *s_bulk(char *p, const void *a, size_t alen, const void *b, size_t blen)
{
    p += sprintf(p, "$%zu\r\n", alen + blen);
    memcpy(p, a, alen);
    p += alen;
    if (blen)
        memcpy(p, b, blen);
    p += blen;
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

/* Appends a command of ARGC arguments; argument VAL_AT (or -1) is
 * prefixed with the S_VHDR bytes at HDR. 0, or -1 over the queue bound. */
static int s_cmd(ab_l2_t *l2, int argc, const char **argv, const size_t *lens, int val_at,
                 const uint8_t *hdr)
{
    size_t need = 16;
    for (int i = 0; i < argc; i++)
        need += 24 + lens[i] + (i == val_at ? S_VHDR : 0);
    if (s_out_reserve(l2, need) != 0)
        return -1;
    char *p = l2->obuf + l2->olen;
    p += sprintf(p, "*%d\r\n", argc);
    for (int i = 0; i < argc; i++)
        p = i == val_at ? s_bulk(p, hdr, S_VHDR, argv[i], lens[i])
                        : s_bulk(p, argv[i], lens[i], NULL, 0);
    l2->olen = (size_t)(p - l2->obuf);
    return 0;
}

/* Queues a command whose reply is of KIND (for lookup TAG): its place in
 * the replies' order first, then its bytes, so neither exists without the
 * other. 0, or -1 over a bound or out of memory (nothing queued). */
static int s_send(ab_l2_t *l2, uint8_t kind, uint64_t tag, int argc, const char **argv,
                  const size_t *lens, int val_at, const uint8_t *hdr)
{
    s_item_t it = {kind, tag, (int64_t)ab_now_ns(), NULL};
    if (s_ring_push(&l2->pend, &it) != 0)
        return -1;
    if (s_cmd(l2, argc, argv, lens, val_at, hdr) != 0) {
        l2->pend.n--; /* the item just pushed, at the tail */
        return -1;
    }
    return 0;
}

/* --- connection --------------------------------------------------------------------- */
static void s_close(ab_l2_t *l2)
{
    if (l2->fd >= 0)
        close(l2->fd);
    l2->fd = -1;
    l2->connecting = 0;
    if (l2->rd)
        redisReaderFree(l2->rd);
    l2->rd = NULL;
    l2->reply_fed = 0;
    l2->olen = l2->ooff = 0;
    if (l2->ocap > (1u << 20)) { /* a burst of stores does not keep its buffer */
        free(l2->obuf);
        l2->obuf = NULL;
        l2->ocap = 0;
    }
}

/* The connection is gone (WHY): every command in flight is ended (lookups
 * answered "miss", counted in *LOST; stores dropped) and the breaker opens
 * for the next backoff. */
static void s_fail(ab_l2_t *l2, const char *why, uint64_t *lost)
{
    s_close(l2);
    s_item_t it;
    while (s_ring_pop(&l2->pend, &it)) {
        if (it.kind == S_GET) { /* a lookup not answered */
            it.r = NULL;
            (*lost)++;
            s_ring_push(&l2->ready, &it); /* cannot fail: ready holds fewer than pend did */
        } else if (it.kind == S_SET)
            l2->c.dropped++;
    }
    /* A clear under way (clearing) starts again from cursor 0 on the next
     * connection: SCAN + UNLINK may be repeated, and an operator's clear is
     * not lost to a slow reply. */
    l2->backoff_ms = l2->backoff_ms ? l2->backoff_ms * 2 : AB_L2_BACKOFF_MIN_MS;
    if (l2->backoff_ms > AB_L2_BACKOFF_MAX_MS)
        l2->backoff_ms = AB_L2_BACKOFF_MAX_MS;
    l2->retry_at_ms = ab_now_ms() + l2->backoff_ms;
    if (l2->c.state == AB_L2_CLOSED) {
        l2->c.state = AB_L2_OPEN;
        l2->c.opens++;
        l2->said_down = 1;
        AB_WARN("L2 cache (redis %s:%d) skipped for %lld ms: %s", l2->host, l2->port,
                (long long)l2->backoff_ms, why);
    } else if (!l2->said_down) { /* never reached since the start: say so once */
        AB_WARN("L2 cache (redis %s:%d) not reachable: %s; requests skip it, retried with "
                "backoff",
                l2->host, l2->port, why);
        l2->said_down = 1;
    } else {
        AB_DEBUG("L2 cache: redis %s:%d: %s (retry in %lld ms)", l2->host, l2->port, why,
                 (long long)l2->backoff_ms);
    }
}

/* Frees a finished (or never started) resolve. */
static void s_resolve_free(ab_l2_t *l2)
{
    if (l2->gai && l2->gai->ar_result)
        freeaddrinfo(l2->gai->ar_result);
    free(l2->gai);
    free(l2->hints);
    l2->gai = NULL;
    l2->hints = NULL;
}

/* The address to connect to: 1 ready, 0 still resolving, -1 failed. A
 * numeric address is parsed once; a name is resolved again before each
 * connect (it may move), by glibc's resolver thread, never on the loop. */
static int s_resolve(ab_l2_t *l2)
{
    if (l2->numeric)
        return 1;
    if (!l2->gai) {
        struct addrinfo h = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
        struct addrinfo *res = NULL;
        if (getaddrinfo(l2->host, l2->port_s, &h, &res) == 0) {
            memcpy(&l2->addr, res->ai_addr, res->ai_addrlen);
            l2->alen = res->ai_addrlen;
            freeaddrinfo(res);
            l2->numeric = 1;
            return 1;
        }
        l2->gai = calloc(1, sizeof *l2->gai);
        l2->hints = calloc(1, sizeof *l2->hints);
        struct gaicb *list[1] = {l2->gai};
        if (l2->gai && l2->hints) {
            l2->hints->ai_socktype = SOCK_STREAM;
            l2->hints->ai_flags = AI_NUMERICSERV;
            *l2->gai = (struct gaicb){.ar_name = l2->host, .ar_service = l2->port_s,
                                      .ar_request = l2->hints};
        }
        if (!l2->gai || !l2->hints || getaddrinfo_a(GAI_NOWAIT, list, 1, NULL) != 0) {
            s_resolve_free(l2);
            return -1;
        }
    }
    int rc = gai_error(l2->gai);
    if (rc == EAI_INPROGRESS)
        return 0;
    struct addrinfo *res = l2->gai->ar_result;
    int ok = rc == 0 && res;
    /* A name with several addresses (localhost: ::1 and 127.0.0.1, while
     * Redis may listen on one): each connect tries the next. */
    size_t n = 0;
    for (struct addrinfo *a = res; ok && a; a = a->ai_next)
        n++;
    for (size_t i = n ? l2->addr_turn++ % n : 0; ok && i > 0; i--)
        res = res->ai_next;
    if (ok) {
        memcpy(&l2->addr, res->ai_addr, res->ai_addrlen);
        l2->alen = res->ai_addrlen;
    }
    s_resolve_free(l2);
    return ok ? 1 : -1;
}

static void s_scan_send(ab_l2_t *l2, const char *cursor);

static void s_connected(ab_l2_t *l2)
{
    l2->connecting = 0;
    l2->c.reconnects++;
    l2->c.state = AB_L2_CLOSED;
    l2->said_error = 0;
    AB_INFO("L2 cache: connected to redis %s:%d", l2->host, l2->port);
    if (l2->clearing) /* cut by the last connection's end: from the start */
        s_scan_send(l2, "0");
}

/* hiredis allocates an array's table of elements from its header alone:
 * "*100000000" was 800 MB of address space (and, under ASan, 100 MB of
 * resident shadow) before a single element came. Larger arrays are
 * refused before that (a reader error: the connection fails as for a
 * malformed reply). hiredis 1.x has the bound built in (maxelements). */
#if HIREDIS_MAJOR >= 1
static redisReader *s_reader_new(void)
{
    redisReader *rd = redisReaderCreate();
    if (rd)
        rd->maxelements = AB_L2_ARRAY_MAX;
    return rd;
}
#else
static redisReplyObjectFunctions s_fn;
static void *(*s_create_array)(const redisReadTask *, int);

static void *s_bounded_array(const redisReadTask *t, int elements)
{
    return elements > AB_L2_ARRAY_MAX ? NULL : s_create_array(t, elements);
}

static redisReader *s_reader_new(void)
{
    redisReader *rd = redisReaderCreate();
    if (!rd || !rd->fn)
        return rd;
    if (!s_create_array) { /* hiredis' own functions, but for arrays */
        s_fn = *rd->fn;
        s_create_array = s_fn.createArray;
        s_fn.createArray = s_bounded_array;
    }
    rd->fn = &s_fn;
    return rd;
}
#endif

/* Starts a non-blocking connect (the poll reports when it is done). */
static void s_connect(ab_l2_t *l2)
{
    int r = s_resolve(l2);
    if (r <= 0) {
        if (r < 0)
            s_fail(l2, "cannot resolve the host name", &l2->c.failed);
        return;
    }
    l2->rd = s_reader_new();
    l2->fd = socket(l2->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (!l2->rd || l2->fd < 0) {
        s_fail(l2, "out of memory or descriptors", &l2->c.failed);
        return;
    }
    int one = 1;
    setsockopt(l2->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    l2->conn_ns = (int64_t)ab_now_ns();
    if (connect(l2->fd, (struct sockaddr *)&l2->addr, l2->alen) == 0)
        s_connected(l2);
    else if (errno == EINPROGRESS)
        l2->connecting = 1;
    else
        s_fail(l2, strerror(errno), &l2->c.failed);
}

/* --- replies ------------------------------------------------------------------------ */
static void s_scan_reply(ab_l2_t *l2, redisReply *r);

/* One reply, for the oldest command in flight. -1: a protocol error. */
static int s_on_reply(ab_l2_t *l2, redisReply *r)
{
    s_item_t it;
    if (!s_ring_pop(&l2->pend, &it)) {
        freeReplyObject(r);
        return -1; /* a reply nobody asked for */
    }
    l2->backoff_ms = 0; /* answered: a later failure starts a new backoff */
    if (r->type == REDIS_REPLY_ERROR) {
        l2->c.errors++;
        /* A Redis with requirepass answers every command NOAUTH: L2 then
         * looked healthy (connected, breaker closed) while each lookup
         * missed and each write was dropped, said only at DEBUG. */
        if (!l2->said_error)
            AB_WARN("L2 cache: redis %s:%d answers errors (lookups miss, writes are dropped): "
                    "%s",
                    l2->host, l2->port, r->str);
        else
            AB_DEBUG("L2 cache: redis error: %s", r->str);
        l2->said_error = 1;
    }
    if (it.kind == S_GET) {
        it.r = r;
        s_ring_push(&l2->ready, &it); /* ready holds at most what pend held */
        return 0;
    }
    if (it.kind == S_SET) {
        if (r->type == REDIS_REPLY_STATUS)
            l2->c.stores++;
        else
            l2->c.dropped++;
    } else if (it.kind == S_SCAN) {
        s_scan_reply(l2, r);
    } else if (r->type == REDIS_REPLY_INTEGER) {
        l2->cleared += (long)r->integer;
    }
    freeReplyObject(r);
    return 0;
}

/* The type of the reply RD is parsing now (-1: none, or its first byte
 * has not come yet). hiredis keeps it in its read stack, whose shape
 * changed in 1.0. */
static int s_reply_type(const redisReader *rd)
{
    if (rd->ridx < 0)
        return -1;
#if HIREDIS_MAJOR >= 1
    return rd->task && rd->task[0] ? rd->task[0]->type : -1;
#else
    return rd->rstack[0].type;
#endif
}

/* A reply being parsed that may not be one: bigger than what its command
 * can answer (a GET: cache-max-entry-bytes and some; anything else: 1 MiB),
 * or an array to a command other than SCAN. hiredis builds an object per
 * array element as the bytes come, ~18 times the bytes' size for ":1"
 * elements, so a garbage reply "*100000000" followed by an endless stream
 * of elements grew the broker by 2 GB in the 2 s of its timeout: the bytes
 * of the reply in progress are counted, not what hiredis still holds. */
static int s_reply_bad(ab_l2_t *l2)
{
    int kind = l2->pend.n ? l2->pend.v[l2->pend.head].kind : -1;
    size_t bound = kind == S_GET ? l2->max_reply : AB_L2_SMALL_REPLY_MAX;
    int type = s_reply_type(l2->rd);
    return l2->reply_fed > bound || (kind != S_SCAN && type == REDIS_REPLY_ARRAY);
}

/* Reads what Redis sent and handles each complete reply. */
static void s_read(ab_l2_t *l2)
{
    char buf[65536];
    for (int i = 0; i < AB_L2_READS_PER_TURN && l2->fd >= 0; i++) {
        ssize_t n = recv(l2->fd, buf, sizeof buf, 0);
        if (n == 0) {
            s_fail(l2, "connection closed by redis", &l2->c.failed);
            return;
        }
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                s_fail(l2, strerror(errno), &l2->c.failed);
            return;
        }
        redisReaderFeed(l2->rd, buf, (size_t)n);
        l2->reply_fed += (size_t)n;
        void *r = NULL;
        int bad = 0;
        while (!bad && redisReaderGetReply(l2->rd, &r) == REDIS_OK && r) {
            l2->reply_fed = l2->rd->len - l2->rd->pos; /* the next reply's bytes */
            bad = s_on_reply(l2, r) != 0;
            r = NULL;
        }
        if (bad || l2->rd->err || s_reply_bad(l2)) {
            l2->c.errors++;
            s_fail(l2, "malformed, unexpected or oversized reply", &l2->c.failed);
            return;
        }
        if ((size_t)n < sizeof buf)
            return;
    }
}

static void s_write(ab_l2_t *l2)
{
    while (l2->fd >= 0 && !l2->connecting && l2->ooff < l2->olen) {
        ssize_t n = send(l2->fd, l2->obuf + l2->ooff, l2->olen - l2->ooff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                s_fail(l2, strerror(errno), &l2->c.failed);
            return;
        }
        l2->ooff += (size_t)n;
    }
}

/* --- clear: SCAN + UNLINK ------------------------------------------------------------ */
/* Deletes every key of our namespace with SCAN + UNLINK, a bounded batch
 * per round trip, never KEYS: on a Redis shared by brokers (and by whatever
 * else the deployment keeps there) one O(keys) command would stall them
 * all. Lookups go on between the batches. */
static void s_scan_send(ab_l2_t *l2, const char *cursor)
{
    const char *argv[6] = {"SCAN", cursor, "MATCH", AB_L2_NS "*", "COUNT", "1000"};
    size_t lens[6] = {4, strlen(cursor), 5, AB_L2_NS_LEN + 1, 5, 4};
    if (s_send(l2, S_SCAN, 0, 6, argv, lens, -1, NULL) != 0) {
        l2->c.errors++;
        l2->clearing = 0; /* the output buffer is full: the operator tries again */
    }
}

static void s_unlink_send(ab_l2_t *l2, redisReply *keys)
{
    const char **argv = calloc(keys->elements + 1, sizeof *argv);
    size_t *lens = calloc(keys->elements + 1, sizeof *lens);
    if (argv && lens) {
        argv[0] = "UNLINK", lens[0] = 6;
        size_t n = 1;
        for (size_t i = 0; i < keys->elements; i++)
            if (keys->element[i]->type == REDIS_REPLY_STRING)
                argv[n] = keys->element[i]->str, lens[n++] = keys->element[i]->len;
        if (n > 1 && s_send(l2, S_UNLINK, 0, (int)n, argv, lens, -1, NULL) != 0)
            l2->c.errors++;
    }
    free(argv);
    free(lens);
}

static void s_scan_reply(ab_l2_t *l2, redisReply *r)
{
    if (!l2->clearing)
        return;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[0]->len >= 32) {
        l2->c.errors++;
        l2->clearing = 0;
        return;
    }
    if (r->element[1]->type == REDIS_REPLY_ARRAY && r->element[1]->elements)
        s_unlink_send(l2, r->element[1]);
    if (strcmp(r->element[0]->str, "0") != 0) {
        s_scan_send(l2, r->element[0]->str);
        return;
    }
    l2->clearing = 0;
    AB_INFO("L2 cache cleared: SCAN done, UNLINK answered for %ld keys so far", l2->cleared);
}

/* --- the loop's side ------------------------------------------------------------------ */
ab_l2_t *ab_l2_new(const char *addr, int timeout_ms, size_t max_value)
{
    const char *colon = strrchr(addr, ':');
    long port;
    if (!colon || colon == addr || (size_t)(colon - addr) >= 256 ||
        ab_parse_long(colon + 1, 1, 65535, &port) != 0) {
        AB_ERROR("L2 cache off: '%s' is not host:port", addr);
        return NULL;
    }
    ab_l2_t *l2 = calloc(1, sizeof *l2);
    if (!l2)
        return NULL;
    /* "[::1]:6379": the brackets are not part of the address. */
    const char *h = addr;
    size_t hl = (size_t)(colon - addr);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']')
        h++, hl -= 2;
    snprintf(l2->host, sizeof l2->host, "%.*s", (int)hl, h);
    l2->port = (int)port;
    snprintf(l2->port_s, sizeof l2->port_s, "%ld", port);
    l2->timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
    l2->max_get = max_value + S_VHDR;
    l2->max_reply = l2->max_get + 65536;
    l2->fd = -1;
    l2->c.state = AB_L2_OPEN; /* until connected */
    return l2;
}

/* Shutdown: what is queued (stores) gets up to the timeout to be written. */
static void s_flush_blocking(ab_l2_t *l2)
{
    int64_t end = ab_now_ms() + l2->timeout_ms;
    while (l2->fd >= 0 && (l2->connecting || l2->ooff < l2->olen)) {
        int64_t left = end - ab_now_ms();
        struct pollfd p = {l2->fd, POLLOUT, 0};
        if (left <= 0 || poll(&p, 1, (int)left) <= 0)
            return;
        ab_l2_on_poll(l2, (short)((p.revents & POLLOUT ? ZMQ_POLLOUT : 0) |
                                  (p.revents & (POLLERR | POLLHUP) ? ZMQ_POLLERR : 0)));
    }
}

void ab_l2_destroy(ab_l2_t **p)
{
    ab_l2_t *l2 = p ? *p : NULL;
    if (!l2)
        return;
    s_flush_blocking(l2);
    s_close(l2);
    s_item_t it;
    while (s_ring_pop(&l2->ready, &it))
        if (it.r)
            freeReplyObject(it.r);
    if (l2->given)
        freeReplyObject(l2->given);
    free(l2->pend.v);
    free(l2->ready.v);
    free(l2->obuf);
    /* A resolve still running writes into its gaicb: leave it to the
     * process' end rather than free it under glibc's thread. */
    if (l2->gai && gai_cancel(l2->gai) != EAI_NOTCANCELED)
        s_resolve_free(l2);
    free(l2);
    *p = NULL;
}

int ab_l2_poll_item(ab_l2_t *l2, zmq_pollitem_t *it)
{
    if (l2->fd < 0)
        return 0;
    it->socket = NULL;
    it->fd = l2->fd;
    it->events = l2->connecting ? ZMQ_POLLOUT
                                : (short)(ZMQ_POLLIN | (l2->ooff < l2->olen ? ZMQ_POLLOUT : 0));
    it->revents = 0;
    return 1;
}

void ab_l2_on_poll(ab_l2_t *l2, short revents)
{
    if (l2->fd < 0 || !revents)
        return;
    if (l2->connecting) {
        int err = 0;
        socklen_t el = sizeof err;
        if (getsockopt(l2->fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
            err = errno;
        if (err)
            s_fail(l2, strerror(err), &l2->c.failed);
        else if (revents & ZMQ_POLLOUT)
            s_connected(l2);
        return;
    }
    if (revents & (ZMQ_POLLIN | ZMQ_POLLERR))
        s_read(l2);
    if (revents & ZMQ_POLLOUT)
        s_write(l2);
}

void ab_l2_tick(ab_l2_t *l2, int64_t now_ms)
{
    int64_t tmo_ns = (int64_t)l2->timeout_ms * 1000000;
    int64_t now_ns = (int64_t)ab_now_ns();
    if (l2->fd < 0 && now_ms >= l2->retry_at_ms)
        s_connect(l2);
    if (l2->fd >= 0 && l2->connecting && now_ns - l2->conn_ns > tmo_ns)
        s_fail(l2, "connect timed out", &l2->c.failed);
    if (l2->pend.n && now_ns - l2->pend.v[l2->pend.head].t_ns > tmo_ns) {
        l2->c.errors++;
        s_fail(l2, "no answer in time", &l2->c.timeouts);
    }
    s_write(l2);
}

int64_t ab_l2_next_wake_ms(ab_l2_t *l2)
{
    if (l2->gai)
        return ab_now_ms() + AB_L2_RESOLVE_POLL_MS;
    if (l2->fd < 0)
        return l2->retry_at_ms > 0 ? l2->retry_at_ms : ab_now_ms();
    int64_t since_ns = l2->connecting ? l2->conn_ns
                       : l2->pend.n   ? l2->pend.v[l2->pend.head].t_ns
                                      : 0;
    if (!since_ns)
        return 0;
    return (since_ns + (int64_t)l2->timeout_ms * 1000000) / 1000000 + 1; /* ab_now_ms' clock */
}

int ab_l2_usable(ab_l2_t *l2)
{
    return l2->c.state == AB_L2_CLOSED;
}

static void s_key_str(const ab_cache_key_t *k, char *out)
{
    memcpy(out, AB_L2_NS, AB_L2_NS_LEN);
    ab_cache_key_hex(k, out + AB_L2_NS_LEN);
}

int ab_l2_get(ab_l2_t *l2, uint64_t tag, const ab_cache_key_t *key)
{
    if (l2->fd < 0 || l2->connecting || l2->pend.n + l2->ready.n >= AB_L2_PENDING_MAX)
        return -1;
    char k[AB_L2_NS_LEN + AB_CACHE_KEY_HEX];
    s_key_str(key, k);
    /* GETRANGE, not GET: a value over our cache-max-entry-bytes (stored by
     * a broker allowed more) comes cut to one byte over it, and is a miss.
     * A GET of it was a reply over max_reply, a protocol error: every
     * lookup of that key closed the connection and opened the breaker. A
     * missing key answers "" (a miss too). */
    char end[24];
    snprintf(end, sizeof end, "%zu", l2->max_get);
    const char *argv[4] = {"GETRANGE", k, "0", end};
    size_t lens[4] = {8, strlen(k), 1, strlen(end)};
    if (s_send(l2, S_GET, tag, 4, argv, lens, -1, NULL) != 0)
        return -1;
    l2->c.sent++;
    return 0;
}

int ab_l2_put(ab_l2_t *l2, const ab_cache_key_t *key, int64_t ttl_ms, const void *val,
              size_t len)
{
    if (l2->fd < 0 || l2->connecting || l2->pend.n + l2->ready.n >= AB_L2_PENDING_MAX) {
        l2->c.dropped++;
        return -1;
    }
    char k[AB_L2_NS_LEN + AB_CACHE_KEY_HEX], px[24];
    s_key_str(key, k);
    ttl_ms = ttl_ms > 0 ? ttl_ms : 1;
    snprintf(px, sizeof px, "%lld", (long long)ttl_ms);
    uint8_t hdr[S_VHDR];
    memcpy(hdr, s_vmagic, sizeof s_vmagic);
    uint64_t exp = (uint64_t)(ab_wall_ms() + ttl_ms);
    for (int i = 0; i < 8; i++)
        hdr[sizeof s_vmagic + i] = (uint8_t)(exp >> (56 - 8 * i));
    /* The value (the header, then the blob) is written straight from VAL. */
    const char *argv[5] = {"SET", k, val, "PX", px};
    size_t lens[5] = {3, strlen(k), len, 2, strlen(px)};
    if (s_send(l2, S_SET, 0, 5, argv, lens, 2, hdr) != 0) {
        l2->c.dropped++;
        return -1;
    }
    return 0;
}

int ab_l2_clear(ab_l2_t *l2)
{
    if (l2->fd < 0 || l2->connecting)
        return -1;
    if (l2->clearing)
        return 0; /* one pass already runs: it deletes these too */
    l2->clearing = 1;
    l2->cleared = 0;
    s_scan_send(l2, "0");
    return l2->clearing ? 0 : -1;
}

int ab_l2_recv(ab_l2_t *l2, uint64_t *tag, int *hit, const uint8_t **val, size_t *len,
               int64_t *ttl_ms)
{
    if (l2->given) {
        freeReplyObject(l2->given);
        l2->given = NULL;
    }
    s_item_t it;
    if (!s_ring_pop(&l2->ready, &it))
        return 0;
    redisReply *r = it.r;
    *tag = it.tag;
    *hit = r && r->type == REDIS_REPLY_STRING && r->len >= S_VHDR && r->len <= l2->max_get &&
           memcmp(r->str, s_vmagic, sizeof s_vmagic) == 0;
    uint64_t exp = 0;
    for (size_t i = 0; *hit && i < 8; i++)
        exp = exp << 8 | (uint8_t)r->str[sizeof s_vmagic + i];
    /* Its time left by this machine's clock: past (a clock ahead of the
     * writer's by more than the TTL left) is a miss, never a stale hit. */
    *ttl_ms = *hit ? (int64_t)exp - ab_wall_ms() : 0;
    *hit = *hit && *ttl_ms > 0;
    *val = *hit ? (const uint8_t *)r->str + S_VHDR : NULL;
    *len = *hit ? r->len - S_VHDR : 0;
    l2->given = r;
    return 1;
}

ab_l2_counters_t *ab_l2_counters(ab_l2_t *l2)
{
    return &l2->c;
}

const char *ab_l2_state_name(ab_l2_t *l2)
{
    return l2->c.state == AB_L2_CLOSED ? "closed" : "open";
}
