/* config.c - see config.h. */
#include "config.h"
#include "metrics_http.h"
#include "log.h"
#include "parse.h"
#include "util.h"

#include <czmq.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* OPT_FLAG: a long 0/1 whose flag may stand alone (--insecure means 1). */
/* OPT_LIST: a string to which each further setting appends ",VALUE". */
typedef enum { OPT_LONG, OPT_SIZE, OPT_BINDS, OPT_LOGLEVEL, OPT_LOGFORMAT, OPT_STR, OPT_FLAG,
               OPT_LIST } s_type_t;

typedef struct {
    const char *name;
    s_type_t type;
    size_t offset;
    long min, max;
    const char *def;
    const char *help;
} s_option_t;

#define OFF(f) offsetof(ab_broker_config_t, f)
#define AB_CONFIG_FILE_MAX (1 << 20) /* a config file is a page of text */

static const s_option_t s_options[] = {
    {"bind", OPT_BINDS, OFF(binds), 0, 0, "tcp://127.0.0.1:5555,ipc:///tmp/agentbus.ipc",
     "endpoint to bind; repeat the flag (or comma-separate) for several"},
    {"queue-max", OPT_LONG, OFF(queue_max), 1, 10000000, "10000",
     "requests that may wait per service; beyond it: ERROR(BUSY)"},
    {"default-timeout-ms", OPT_LONG, OFF(default_timeout_ms), 1, 86400000, "30000",
     "deadline of a request that carries none"},
    {"max-timeout-ms", OPT_LONG, OFF(max_timeout_ms), 1, 86400000, "600000",
     "longest deadline a request may ask for"},
    {"max-header-bytes", OPT_SIZE, OFF(max_header_bytes), 64, 16 << 20, "64K",
     "largest header frame accepted; larger: MALFORMED"},
    {"max-payload-bytes", OPT_SIZE, OFF(max_payload_bytes), 1, 1L << 30, "64M",
     "largest payload frame accepted; larger: MALFORMED"},
    {"heartbeat-ms", OPT_LONG, OFF(heartbeat_ms), 50, 600000, "1000",
     "heartbeat interval the broker asks peers to keep"},
    {"liveness", OPT_LONG, OFF(liveness), 2, 100, "3",
     "heartbeat intervals of silence before a peer is dropped"},
    {"transport-ping-ms", OPT_LONG, OFF(transport_ping_ms), 0, 600000, "10000",
     "interval of the broker's ZMTP PINGs on each connection (timeout heartbeat-ms x "
     "liveness); 0: none. Each answered PING costs libzmq a walk over all its timers"},
    {"listen-backlog", OPT_LONG, OFF(listen_backlog), 1, 65535, "4096",
     "connections the kernel completes for each bound TCP/IPC endpoint before the broker "
     "accepts them (ZMQ_BACKLOG; capped by net.core.somaxconn)"},
    {"agent-heartbeat-rate", OPT_LONG, OFF(agent_hb_rate), 0, 10000000, "500",
     "heartbeats per second the broker asks of all agents together: their interval grows "
     "with their number (never under heartbeat-ms, at most 60 s); 0: heartbeat-ms always"},
    {"sndhwm", OPT_LONG, OFF(sndhwm), 0, 100000000, "100000",
     "ZeroMQ high-water mark (messages) per connection, each direction"},
    {"max-pending", OPT_LONG, OFF(max_pending), 1, 100000000, "1000000",
     "requests held by the broker in total (queued + in flight)"},
    {"max-held-bytes", OPT_SIZE, OFF(max_held_bytes), 1024, 1L << 40, "1G",
     "bytes of the requests the broker holds in total (queued, at workers, waiting on a twin): "
     "payloads plus about 1.2 KB of record each; "
     "a request that would pass it: ERROR(BUSY) (one is always taken when none is held)"},
    {"max-client-held-bytes", OPT_SIZE, OFF(max_client_held_bytes), 1024, 1L << 40, "256M",
     "bytes of requests (payloads plus records) one client (agent name, else connection) may "
     "have held; a request "
     "that would pass it: ERROR(BUSY) (one is always taken when the client holds none)"},
    {"startup-grace-ms", OPT_LONG, OFF(startup_grace_ms), 0, 600000, "2000",
     "after a (re)start, requests to unknown services wait this long for their "
     "workers to re-register before NO_SERVICE; 0 disables"},
    {"log-level", OPT_LOGLEVEL, OFF(log_level), 0, 3, "info", "error, warn, info or debug"},
    {"log-format", OPT_LOGFORMAT, OFF(log_format), 0, 1, "text",
     "text (time level subsystem message) or json (one object per line)"},
    {"max-attempts", OPT_LONG, OFF(max_attempts), 1, 8, "3",
     "times a request is dispatched when workers are lost holding it; then WORKER_LOST"},
    {"health-floor-ms", OPT_LONG, OFF(health_floor_ms), 100, 60000, "1000",
     "shortest heartbeat interval asked of a worker (new, failed or flapping)"},
    {"health-ceiling-ms", OPT_LONG, OFF(health_ceiling_ms), 100, 600000, "60000",
     "longest heartbeat interval asked of a stable worker"},
    {"phi-threshold", OPT_LONG, OFF(phi_threshold), 1, 100, "8",
     "heartbeat suspicion (phi) at which a silent worker is declared dead"},
    {"eject-failures", OPT_LONG, OFF(eject_failures), 1, 100000, "5",
     "consecutive failed requests (ERROR replies, deadlines) before ejection"},
    {"eject-base-ms", OPT_LONG, OFF(eject_base_ms), 10, 3600000, "1000",
     "backoff of a worker's first ejection; doubles with each further one"},
    {"eject-max-ms", OPT_LONG, OFF(eject_max_ms), 10, 86400000, "60000",
     "cap on the ejection backoff"},
    {"cancel-grace-ms", OPT_LONG, OFF(cancel_grace_ms), 0, 3600000, "10000",
     "a worker that answers nothing this long after a CANCEL counts a failure (0: off)"},
    {"max-client-inflight", OPT_LONG, OFF(max_client_inflight), 1, 100000000, "100000",
     "requests one client may have held by the broker at once; beyond it BUSY"},
    {"drain-ms", OPT_LONG, OFF(drain_ms), 0, 600000, "2000",
     "on SIGTERM/SIGINT: refuse new requests and let in-flight ones finish this long"},
    {"self-check-ms", OPT_LONG, OFF(self_check_ms), 0, 3600000, "0",
     "recount the broker's bookkeeping this often and log any difference (0: only at exit)"},
    {"mailbox-max-msgs", OPT_LONG, OFF(mailbox_max_msgs), 1, 10000000, "1000",
     "direct messages one agent's mailbox holds; beyond it: ERROR(BUSY) to the sender"},
    {"mailbox-max-bytes", OPT_SIZE, OFF(mailbox_max_bytes), 1, 1L << 30, "16M",
     "payload bytes one agent's mailbox holds; beyond it: ERROR(BUSY)"},
    {"mailbox-ttl-ms", OPT_LONG, OFF(mailbox_ttl_ms), 1, 86400000, "60000",
     "how long a direct message may wait in a mailbox before it expires (counted)"},
    {"mailbox-total-bytes", OPT_SIZE, OFF(mailbox_total_bytes), 1024, 1L << 40, "256M",
     "all mailboxes together, with per-message overhead; beyond it: ERROR(BUSY)"},
    {"message-max-bytes", OPT_SIZE, OFF(message_max_bytes), 1, 1L << 30, "1M",
     "largest SEND/PUBLISH payload; larger: ERROR(TOO_LARGE)"},
    {"sub-queue-max", OPT_LONG, OFF(sub_queue_max), 1, 10000000, "10000",
     "publications the broker queues for a subscriber whose pipe is full; beyond it "
     "the oldest is dropped and the subscriber told of the gap"},
    {"batch", OPT_LONG, OFF(batch), 0, 1, "1",
     "1: gather messages bound for one peer in one turn into BATCHes (peers that "
     "announce it only); 0: one ZeroMQ message per message"},
    {"batch-max-count", OPT_LONG, OFF(batch_max_count), 2, 4096, "4096",
     "most messages per BATCH: each peer's count limit starts at 64 (or this, if lower) "
     "and doubles up to this while its backlog fills batches, halving again as it drains"},
    {"batch-max-bytes", OPT_SIZE, OFF(batch_max_bytes), 256, 16 << 20, "64K",
     "bytes per BATCH before it is sent; a larger message goes alone"},
    {"batch-max-age-us", OPT_LONG, OFF(batch_max_age_us), 0, 1000000, "200",
     "a gathered message waits at most this long (also flushed every loop turn)"},
    {"compress-threshold-bytes", OPT_SIZE, OFF(compress_threshold_bytes), 0, 1L << 30, "1K",
     "payloads the broker itself sends (control answers) are lz4-compressed from "
     "this size, for peers that read lz4; 0 disables. Routed payloads are never touched"},
    {"compress-min-saving-pct", OPT_LONG, OFF(compress_min_saving_pct), 0, 99, "10",
     "compress only when it saves at least this percentage"},
    {"compress-local", OPT_FLAG, OFF(compress_local), 0, 1, "0",
     "1: lz4 also on hops that stay on this machine (ipc, loopback, the host's own "
     "address); 0: payloads are compressed only on hops to or from another machine"},
    {"cache-l1-bytes", OPT_SIZE, OFF(cache_l1_bytes), 0, 1L << 40, "256M",
     "in-process inference cache (LRU) bound; 0 turns the cache off"},
    {"cache-ttl-s", OPT_LONG, OFF(cache_ttl_s), 0, 30L * 86400, "3600",
     "how long a cached reply is kept when its request gives no TTL; 0: store nothing"},
    {"cache-max-entry-bytes", OPT_SIZE, OFF(cache_max_entry_bytes), 1024, 1L << 30, "16M",
     "replies larger than this (all chunks together) are not cached"},
    {"cache-redis", OPT_STR, OFF(cache_redis), 0, 0, "",
     "host:port of the Redis shared by brokers (L2 cache); empty: no L2"},
    {"cache-l2-timeout-ms", OPT_LONG, OFF(cache_l2_timeout_ms), 1, 10000, "50",
     "Redis connect/reply timeout; slower or down: L2 skipped for a backoff"},
    {"data-dir", OPT_STR, OFF(data_dir), 0, 0, "",
     "the broker's files (L3 cache: cache.mdb); created if missing; unusable: exit 2; "
     "empty: no L3"},
    {"cache-l3-bytes", OPT_SIZE, OFF(cache_l3_bytes), 1 << 20, 1L << 40, "4G",
     "LMDB map size of the L3 cache in --data-dir (its bound on disk)"},
    {"cache-waiters-max", OPT_LONG, OFF(cache_waiters_max), 0, 1000000, "1024",
     "identical requests that may wait on one in flight; beyond: sent to a worker"},
    {"cache-key-decompress-max-bytes", OPT_SIZE, OFF(cache_key_decompress_max_bytes), 0,
     1L << 30, "64K",
     "an lz4 request declaring up to this size is decompressed on the broker's thread to "
     "compute its cache key; a larger one is keyed on its compressed bytes (marked only)"},
    {"service-idle-ms", OPT_LONG, OFF(service_idle_ms), 0, 86400000, "60000",
     "a service with no worker and no request is removed after this long (never during "
     "the startup grace); later requests to it get NO_SERVICE"},
    {"max-services", OPT_LONG, OFF(max_services), 1, 10000000, "10000",
     "services at once; a new name then removes the oldest idle service, or is refused "
     "(REGISTER: ERROR(BUSY))"},
    {"register-max-bytes", OPT_SIZE, OFF(register_max_bytes), 1024, 64L << 20, "256K",
     "largest REGISTER payload (labels, inference state); larger: ERROR(TOO_LARGE)"},
    {"register-max-labels", OPT_LONG, OFF(register_max_labels), 0, 100000, "64",
     "labels one worker may register; more: ERROR(TOO_LARGE)"},
    {"register-max-string-bytes", OPT_SIZE, OFF(register_max_string_bytes), 16, 1L << 20, "1K",
     "longest label key or value, worker name or inference-state string; longer: "
     "ERROR(TOO_LARGE)"},
    {"register-max-models", OPT_LONG, OFF(register_max_models), 0, 1000000, "1024",
     "models, loaded models and GPUs (each) in a REGISTER's inference state; more: "
     "ERROR(TOO_LARGE)"},
    {"peer-out-max-bytes", OPT_SIZE, OFF(peer_out_max_bytes), 0, 1L << 40, "32M",
     "bytes sent to one connection that its peer has not yet taken (as its kernel "
     "acknowledges); over it: its new requests BUSY, publications dropped for it "
     "(gap), direct messages wait in its mailbox; over twice it: disconnected. 0 disables"},
    {"peer-stall-ms", OPT_LONG, OFF(peer_stall_ms), 100, 3600000, "10000",
     "a peer over peer-out-max-bytes this long is disconnected (counted)"},
    {"max-connections", OPT_LONG, OFF(max_connections), 1, 10000000, "10000",
     "open connections; one beyond is answered ERROR(BUSY) \"too many connections\" "
     "if it sends anything, then closed (counted)"},
    /* issue 11 (helper A): names and mailboxes */
    {"mailbox-max-names", OPT_LONG, OFF(mailbox_max_names), 1, 100000000, "100000",
     "offline agent names holding a mailbox; a SEND to one more: ERROR(BUSY)"},
    {"name-takeover", OPT_LONG, OFF(name_takeover), 0, 1, "0",
     "1: Hello.takeover may take a name from a live connection of another instance "
     "(unauthenticated: any peer could); 0: only the same instance reclaims it"},
    {"http", OPT_STR, OFF(http), 0, 0, "",
     "HOST:PORT to serve Prometheus /metrics, /healthz and /readyz on (HTTP; port 0: any "
     "free one, logged); empty: off. Unauthenticated: keep it on loopback or a private network"},
    {"max-client-queued", OPT_LONG, OFF(max_client_queued), 1, 100000000, "10000",
     "requests one client (agent name, else connection) may have waiting in service queues; "
     "beyond it: ERROR(BUSY) with a retry hint"},
    {"lane-normal-min-pct", OPT_LONG, OFF(lane_normal_min_pct), 1, 50, "20",
     "minimum share of a service's dispatches for its normal lane while it has work "
     "(1 of every ceil(100/pct)), however busy the interactive lane"},
    {"lane-batch-min-pct", OPT_LONG, OFF(lane_batch_min_pct), 1, 50, "10",
     "minimum share of a service's dispatches for its batch lane while it has work"},
    {"client-weights", OPT_STR, OFF(client_weights), 0, 0, "",
     "NAME=W,... : a client's weight (1..1000, default 1) in each lane's round robin, "
     "by agent name (or ~token)"},
    /* issue 14: authentication and authorization (docs/security.md) */
    {"auth", OPT_STR, OFF(auth), 0, 0, "none",
     "none, or curve: every endpoint but ipc requires CURVE with a key trusted in keys-dir; "
     "each message is authorized by the role of the key its connection proved"},
    {"keys-dir", OPT_STR, OFF(keys_dir), 0, 0, "",
     "directory of trusted public certificates (brokerctl keygen); reloaded on SIGHUP and "
     "when it changes; empty: <data-dir>/keys"},
    {"broker-cert", OPT_STR, OFF(broker_cert), 0, 0, "",
     "the broker's CURVE certificate: public part at this path, secret part (mode 0600) "
     "at PATH_secret; created on first start; empty: <data-dir>/broker.key"},
    {"insecure", OPT_FLAG, OFF(insecure), 0, 1, "0",
     "allow binding beyond loopback without --auth curve (anyone who reaches the port may "
     "do anything)"},
    {"worker-capacity-max", OPT_LONG, OFF(worker_capacity_max), 1, 100000000, "100000",
     "largest capacity a REGISTER may announce; more: ERROR(DENIED) (a key's capacity "
     "grant may lower it)"},
    {"cache-label-ttl-max-s", OPT_LONG, OFF(cache_label_ttl_max_s), 0, 30L * 86400, "86400",
     "cap on the TTL a worker's cache-ttl-s label may give its service's cached replies"},
    /* issue 15: broker links (broker/link/, docs/links.md) */
    {"name", OPT_STR, OFF(name), 0, 0, "",
     "this broker's name among peered brokers (unique); empty: the host name"},
    {"peer", OPT_LIST, OFF(peers), 0, 0, "",
     "peer broker to link with, tcp://HOST:PORT#KEY (KEY: its Z85 public key or the path of "
     "its public certificate); repeat (or comma-separate) for several; settings add up"},
    {"link-heartbeat-ms", OPT_LONG, OFF(link_heartbeat_ms), 20, 60000, "200",
     "heartbeat interval on broker links; a link silent 5 intervals is down"},
    {"link-hop-limit", OPT_LONG, OFF(link_hop_limit), 1, 16, "4",
     "links a forwarded request may cross"},
    {"link-compress-threshold-bytes", OPT_SIZE, OFF(link_compress_threshold_bytes), 0,
     1L << 30, "256", "payloads crossing a broker link uncompressed are lz4-compressed from "
     "this size (0: never); lower than the clients' 1 KiB: links are the slow hop"},
    {"link-credit-pct", OPT_LONG, OFF(link_credit_pct), 100, 1000, "200",
     "requests this broker may have in flight to a peer's service, in percent of the "
     "capacity the peer announced: above 100 the far broker queues the rest, so its workers "
     "do not wait for the link's round trip between two requests"},
    {"link-dir-max-bytes", OPT_SIZE, OFF(link_dir_max_bytes), 4096, 64L << 20, "1M",
     "largest directory a peer broker may announce (its encoded size); a larger one is "
     "refused whole and counted"},
};
#define NOPTS (sizeof s_options / sizeof s_options[0])

static const s_option_t *s_find(const char *name)
{
    for (size_t i = 0; i < NOPTS; i++)
        if (strcmp(s_options[i].name, name) == 0)
            return &s_options[i];
    return NULL;
}

static void s_binds_clear(ab_broker_config_t *cfg)
{
    for (int i = 0; i < cfg->nbinds; i++)
        free(cfg->binds[i]);
    cfg->nbinds = 0;
}

/* A bind endpoint ZeroMQ would take as meant: tcp://HOST:PORT (PORT
 * 0..65535 or '*': any free one), ipc://PATH or inproc://NAME. libzmq
 * itself takes port 99999 as another port, so this is checked here. NULL if
 * good, else what is wrong. */
static const char *s_bind_problem(const char *ep)
{
    const char *sep = strstr(ep, "://");
    if (!sep)
        return "no scheme (expected tcp://HOST:PORT, ipc://PATH or inproc://NAME)";
    const char *rest = sep + 3;
    if (!strncmp(ep, "ipc://", 6) || !strncmp(ep, "inproc://", 9))
        return *rest ? NULL : "empty path or name";
    if (strncmp(ep, "tcp://", 6) != 0)
        return "unknown scheme (expected tcp, ipc or inproc)";
    const char *colon = strrchr(rest, ':');
    if (!colon || colon == rest || (rest[0] == '[' && colon[-1] != ']'))
        return "expected tcp://HOST:PORT";
    const char *port = colon + 1;
    if (strcmp(port, "*") == 0)
        return NULL;
    long v;
    if (strlen(port) > 5 || strspn(port, "0123456789") != strlen(port) ||
        ab_parse_long(port, 0, 65535, &v) != 0)
        return "port is not 0..65535 or '*'";
    return NULL;
}

static int s_binds_add(ab_broker_config_t *cfg, const char *list)
{
    char *copy = strdup(list), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (isspace((unsigned char)*tok))
            tok++;
        if (!*tok)
            continue;
        const char *why = cfg->nbinds >= AB_MAX_BINDS ? "too many endpoints" : s_bind_problem(tok);
        if (why) {
            fprintf(stderr, "agentbus-broker: invalid bind endpoint '%s': %s\n", tok, why);
            free(copy);
            return -1;
        }
        /* libzmq reads a bind's host as an interface or an address, not a
         * name: "localhost" would fail ("No such device"). */
        char local[300];
        if (strncmp(tok, "tcp://localhost:", 16) == 0 && strlen(tok) < sizeof local - 8) {
            snprintf(local, sizeof local, "tcp://127.0.0.1:%s", tok + 16);
            tok = local;
        }
        cfg->binds[cfg->nbinds++] = strdup(tok);
    }
    free(copy);
    return 0;
}

/* The broker's name (63 characters at most, no comma: broker/link) and
 * each peer, tcp://HOST:PORT[#KEY] with a port 1..65535: refused here with
 * the other bad values (exit 2), not at the first dial. */
static int s_check_links(const ab_broker_config_t *cfg)
{
    if (cfg->name && (strlen(cfg->name) > 63 || strchr(cfg->name, ','))) {
        fprintf(stderr, "agentbus-broker: invalid name '%s': at most 63 characters, no comma\n",
                cfg->name);
        return -1;
    }
    char *copy = strdup(cfg->peers ? cfg->peers : ""), *save = NULL;
    const char *seen[AB_MAX_PEERS];
    int rc = copy ? 0 : -1, n = 0;
    for (char *tok = copy ? strtok_r(copy, ",", &save) : NULL; tok && rc == 0;
         tok = strtok_r(NULL, ",", &save)) {
        char *hash = strchr(tok, '#');
        if (hash)
            *hash = '\0';
        const char *why = strncmp(tok, "tcp://", 6) ? "expected tcp://HOST:PORT[#KEY]"
                                                    : s_bind_problem(tok);
        const char *port = strrchr(tok, ':');
        long pn; /* atol read "0x50" or "5a" as a port number (0 or 5) */
        if (!why && port && ab_parse_long(port + 1, 1, 65535, &pn) != 0)
            why = "a peer's port is 1..65535";
        /* Sources add up: the same peer in the file and on the command
         * line dialed it twice, two records for one broker name. */
        for (int i = 0; !why && i < n; i++)
            why = strcmp(seen[i], tok) ? NULL : "given twice (the sources of peer add up)";
        if (!why && n == AB_MAX_PEERS)
            why = "too many peers (at most " AB_STR(AB_MAX_PEERS) ")";
        if (!why)
            seen[n++] = tok;
        if (why) {
            fprintf(stderr, "agentbus-broker: invalid peer '%s': %s\n", tok, why);
            rc = -1;
        }
    }
    free(copy);
    return rc;
}

/* Appends ",VAL" to the list in *SLOT when it holds one: 0 with *DONE 1
 * (or 0 out of memory); -1 when *SLOT is empty (VAL is its first value). */
static int s_list_append(char **slot, const char *val, long *done)
{
    if (!*slot || !**slot)
        return -1;
    char *joined = malloc(strlen(*slot) + strlen(val) + 2);
    *done = joined != NULL;
    if (joined) {
        sprintf(joined, "%s,%s", *slot, val);
        free(*slot);
        *slot = joined;
    }
    return 0;
}

/* Sets one option. APPEND: a repeated --bind adds instead of replacing. */
static int s_set(ab_broker_config_t *cfg, const s_option_t *o, const char *val,
                 const char *source, int append)
{
    char *base = (char *)cfg;
    long l;
    size_t z;
    switch (o->type) {
    case OPT_LONG:
    case OPT_FLAG:
        if (ab_parse_long(val, o->min, o->max, &l) != 0)
            goto bad;
        *(long *)(base + o->offset) = l;
        return 0;
    case OPT_SIZE:
        if (ab_parse_size(val, &z) != 0 || z < (size_t)o->min || z > (size_t)o->max)
            goto bad;
        *(size_t *)(base + o->offset) = z;
        return 0;
    case OPT_LOGLEVEL:
        if ((l = ab_log_level_parse(val)) < 0)
            goto bad;
        *(long *)(base + o->offset) = l;
        return 0;
    case OPT_LOGFORMAT:
        if ((l = ab_log_format_parse(val)) < 0)
            goto bad;
        *(long *)(base + o->offset) = l;
        return 0;
    case OPT_BINDS:
        if (!append)
            s_binds_clear(cfg);
        return s_binds_add(cfg, val);
    case OPT_LIST:
        if (s_list_append((char **)(base + o->offset), val, &l) == 0)
            return l ? 0 : -1;
        /* its first value: */
        /* fall through */
    case OPT_STR: {
        char **slot = (char **)(base + o->offset), *copy = strdup(val);
        if (!copy)
            goto bad;
        free(*slot);
        *slot = copy;
        return 0;
    }
    }
bad:
    fprintf(stderr, "agentbus-broker: invalid value '%s' for %s (from %s)", val, o->name, source);
    if (o->type == OPT_LONG || o->type == OPT_SIZE || o->type == OPT_FLAG)
        fprintf(stderr, "; expected %ld..%ld", o->min, o->max);
    else if (o->type == OPT_LOGLEVEL) /* the words it takes, as the numbers' range is said */
        fprintf(stderr, "; expected error, warn, info or debug");
    else if (o->type == OPT_LOGFORMAT)
        fprintf(stderr, "; expected text or json");
    fprintf(stderr, "\n");
    return -1;
}

/* 0 when TEXT's indentation is what zconfig accepts; else says which line
 * of PATH is wrong and why. czmq's own message lacks the file name and calls
 * a tab "invalid syntax"; ZPL indents by 4 spaces per level, and a file
 * from a web page or an editor often has tabs instead. */
static int s_check_indent(const char *path, const char *text)
{
    int lineno = 0;
    for (const char *line = text, *next; *line; line = next) {
        next = line + strcspn(line, "\n");
        next += *next == '\n';
        lineno++;
        /* zconfig's rules: spaces before anything but a blank line come in
         * fours; a tab may precede a comment but not a key. */
        size_t sp = strspn(line, " "), ws = strspn(line, " \t");
        if (strchr("\r\n", line[ws]))
            continue;
        if (sp % 4 != 0) {
            fprintf(stderr, "agentbus-broker: %s line %d: indented by %zu spaces; config files "
                    "(ZPL) indent each level by exactly 4 spaces\n", path, lineno, sp);
            return -1;
        }
        if (ws > sp && line[ws] != '#') {
            fprintf(stderr, "agentbus-broker: %s line %d: indented with a tab; config files "
                    "(ZPL) indent each level by exactly 4 spaces, never tabs\n", path, lineno);
            return -1;
        }
    }
    return 0;
}

/* PATH parsed, or NULL with the reason on stderr. Read here rather than by
 * zconfig_load, which leaks its file object on a syntax error. */
static zconfig_t *s_parse_file(const char *path)
{
    FILE *f = fopen(path, "r");
    char *text = NULL;
    size_t len = 0;
    if (f) {
        text = malloc(AB_CONFIG_FILE_MAX + 1);
        len = text ? fread(text, 1, AB_CONFIG_FILE_MAX + 1, f) : 0;
    }
    if (!f || !text || ferror(f) || len > AB_CONFIG_FILE_MAX || memchr(text, 0, len)) {
        fprintf(stderr, "agentbus-broker: cannot read config file '%s': %s\n", path,
                !f || !text || ferror(f) ? strerror(errno) : "not a text file of at most 1 MiB");
        if (f)
            fclose(f);
        free(text);
        return NULL;
    }
    fclose(f);
    text[len] = '\0';
    int indent_ok = s_check_indent(path, text) == 0;
    zconfig_t *root = indent_ok ? zconfig_str_load(text) : NULL;
    if (!root && indent_ok)
        fprintf(stderr, "agentbus-broker: cannot parse config file '%s' (ZPL: \"key = value\" "
                "lines under \"broker\", indented by 4 spaces; czmq's message above gives "
                "the line)\n", path);
    free(text);
    return root;
}

static int s_load_file(ab_broker_config_t *cfg, const char *path)
{
    zconfig_t *root = s_parse_file(path);
    if (!root)
        return -1;
    /* Keys may sit at the top level or under a "broker" section. */
    zconfig_t *sect = zconfig_locate(root, "broker");
    zconfig_t *lists[2] = {zconfig_child(root), sect ? zconfig_child(sect) : NULL};
    int rc = 0, binds_seen = 0;
    for (int l = 0; l < 2 && rc == 0; l++) {
        for (zconfig_t *c = lists[l]; c && rc == 0; c = zconfig_next(c)) {
            const char *name = zconfig_name(c), *val = zconfig_value(c);
            const s_option_t *o = s_find(name);
            if (strcmp(name, "broker") == 0 && l == 0) {
                /* "broker = 1" was skipped without a word */
                if (val && *val) {
                    fprintf(stderr, "agentbus-broker: 'broker' in %s is a section, not a key: "
                            "its keys go on the lines under it, indented\n", path);
                    rc = -1;
                }
            } else if (!o) {
                fprintf(stderr, "agentbus-broker: unknown key '%s' in %s\n", name, path);
                rc = -1;
            } else if (zconfig_child(c)) { /* what is indented under a key was ignored */
                fprintf(stderr, "agentbus-broker: key '%s' in %s has lines indented under it\n",
                        name, path);
                rc = -1;
            } else if (!val || !*val) {
                fprintf(stderr, "agentbus-broker: key '%s' in %s has no value\n", name, path);
                rc = -1;
            } else {
                rc = s_set(cfg, o, val, path, o->type == OPT_BINDS && binds_seen++);
            }
        }
    }
    zconfig_destroy(&root);
    return rc;
}

static int s_load_env(ab_broker_config_t *cfg)
{
    for (size_t i = 0; i < NOPTS; i++) {
        char env[64] = "AB_";
        size_t j = 3;
        for (const char *p = s_options[i].name; *p && j < sizeof env - 1; p++)
            env[j++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
        env[j] = '\0';
        const char *v = getenv(env);
        if (v && *v && s_set(cfg, &s_options[i], v, env, 0) != 0)
            return -1;
    }
    return 0;
}

void ab_config_usage(const char *prog)
{
    printf("Usage: %s [--config FILE] [--OPTION VALUE ...]\n\n"
           "The agentbus broker: routes requests from agents to the workers of a service.\n"
           "Each option may also come from a config file (key = value, ZPL format) or\n"
           "from the environment (AB_ + name in upper case, '-' as '_').\n"
           "Precedence: defaults < config file < environment < flags.\n\n",
           prog);
    printf("  %-24s %s\n", "--config FILE", "config file to read (env: AB_CONFIG)");
    for (size_t i = 0; i < NOPTS; i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "--%s", s_options[i].name);
        printf("  %-24s %s\n  %-24s default: %s\n", flag, s_options[i].help, "",
               s_options[i].def);
    }
    printf("  %-24s %s\n  %-24s %s\n", "--help", "show this help", "--version",
           "show the version");
}

/* Finds --config in ARGV (or AB_CONFIG); handles --help/--version. */
static int s_prescan(ab_broker_config_t *cfg, int argc, char **argv)
{
    const char *path = getenv("AB_CONFIG");
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            ab_config_usage(argv[0]);
            return 1;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("agentbus-broker %s\n", AB_PROGRAM_VERSION);
            return 1;
        }
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            path = argv[i + 1];
        else if (strncmp(argv[i], "--config=", 9) == 0)
            path = argv[i] + 9;
    }
    if (path && *path) {
        cfg->config_path = strdup(path);
        return s_load_file(cfg, path) == 0 ? 0 : -1;
    }
    return 0;
}

static int s_load_flags(ab_broker_config_t *cfg, int argc, char **argv)
{
    int binds_seen = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *val = NULL;
        if (strncmp(arg, "--", 2) != 0) {
            fprintf(stderr, "agentbus-broker: unexpected argument '%s' (see --help)\n", arg);
            return -1;
        }
        char name[64];
        const char *eq = strchr(arg, '=');
        size_t n = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
        snprintf(name, sizeof name, "%.*s", (int)n, arg + 2);
        /* An unknown name is reported as such, not as a missing value. */
        const s_option_t *o = strcmp(name, "config") == 0 ? NULL : s_find(name);
        if (!o && strcmp(name, "config") != 0) {
            fprintf(stderr, "agentbus-broker: unknown option --%s (see --help)\n", name);
            return -1;
        }
        if (eq)
            val = eq + 1;
        else if (o && o->type == OPT_FLAG) /* --insecure alone, or --insecure VALUE */
            /* The broker takes no other word than a value: "--compress-local
             * 2" said "unexpected argument '2'", not that 2 is no 0 or 1. */
            val = i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0 ? argv[++i] : "1";
        else if (i + 1 < argc)
            val = argv[++i];
        if (!val) {
            fprintf(stderr, "agentbus-broker: option --%s needs a value\n", name);
            return -1;
        }
        if (!o)
            continue; /* --config: read by the prescan */
        if (s_set(cfg, o, val, "command line", o->type == OPT_BINDS && binds_seen++) != 0)
            return -1;
    }
    return 0;
}

/* client-weights: "NAME=W" items separated by commas or spaces, W 1..1000.
 * A NAME may hold '=' (the last one splits) but not ';': "voice=4;planner=2"
 * was taken as one item, the client "voice=4;planner" with weight 2. */
static int s_check_weights(const char *spec)
{
    ab_weight_item_t it;
    char why[128];
    size_t pos = 0;
    int rc;
    while (spec && (rc = ab_parse_weight_item(spec, &pos, AB_CLIENT_WEIGHT_MAX, &it, why,
                                              sizeof why)) != 0)
        if (rc < 0) {
            fprintf(stderr, "agentbus-broker: invalid client-weights item '%.*s': %s\n",
                    (int)it.item_len, it.item, why);
            return -1;
        }
    return 0;
}

/* With --auth curve, each peer's KEY (after '#'): a Z85 public key of 40
 * characters, or the path of a readable public certificate. Refused here,
 * with the other bad values (exit 2), naming what is wrong: the link code
 * only said "its public key is needed" (exit 1) for a key file that did not
 * exist, a typo in a Z85 key or a file that is no certificate. */
/* 0 when PATH holds a certificate with a Z85 public key; -1 (errno set)
 * when it cannot be read, -2 when it is no certificate. Not zcert_load:
 * on a file that is no ZPL, zconfig_load leaks its file object. */
static int s_cert_check(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char text[8192];
    size_t n = fread(text, 1, sizeof text - 1, f);
    int err = ferror(f);
    fclose(f);
    if (err)
        return -1;
    text[n] = '\0';
    zconfig_t *root = memchr(text, 0, n) ? NULL : zconfig_str_load(text);
    const char *pub = root ? zconfig_get(root, "curve/public-key", "") : "";
    uint8_t raw[32];
    int ok = strlen(pub) == 40 && zmq_z85_decode(raw, pub) != NULL;
    zconfig_destroy(&root);
    return ok ? 0 : -2;
}

static int s_check_peer_keys(const ab_broker_config_t *cfg)
{
    char *copy = strdup(cfg->peers ? cfg->peers : ""), *save = NULL;
    int rc = copy ? 0 : -1;
    for (char *tok = copy ? strtok_r(copy, ",", &save) : NULL; tok && rc == 0;
         tok = strtok_r(NULL, ",", &save)) {
        const char *key = strchr(tok, '#');
        uint8_t raw[32];
        if (key && strlen(key + 1) == 40 && zmq_z85_decode(raw, key + 1))
            continue;
        int cert = key && key[1] ? s_cert_check(key + 1) : -2;
        if (cert == 0)
            continue;
        rc = -1;
        if (!key || !key[1])
            fprintf(stderr, "agentbus-broker: invalid peer '%s': with --auth curve its public "
                    "key is needed: tcp://HOST:PORT#KEY (KEY: its Z85 public key or the path of "
                    "its public certificate; in a config file quote the value, as '#' starts a "
                    "comment there: peer = \"tcp://HOST:PORT#KEY\")\n", tok);
        else if (cert == -1)
            fprintf(stderr, "agentbus-broker: invalid peer '%s': the key '%s' is not a Z85 "
                    "public key (40 characters) and cannot be read as a certificate file: %s\n",
                    tok, key + 1, strerror(errno));
        else
            fprintf(stderr, "agentbus-broker: invalid peer '%s': '%s' is not a public "
                    "certificate (the peer broker's broker.key, or brokerctl keygen's "
                    "NAME.key)\n", tok, key + 1);
    }
    free(copy);
    return rc;
}

int ab_bind_is_local(const char *ep)
{
    if (strncmp(ep, "tcp://", 6) != 0)
        return 1; /* ipc, inproc: this machine only */
    const char *host = ep + 6, *colon = strrchr(host, ':');
    size_t n = colon ? (size_t)(colon - host) : strlen(host);
    char h[128];
    snprintf(h, sizeof h, "%.*s", (int)(n < sizeof h ? n : sizeof h - 1), host);
    /* 127/8, ::1 and the name that means them; '*', 0.0.0.0, an
     * interface's name or any other address reach beyond the machine. */
    return strncmp(h, "127.", 4) == 0 || strcmp(h, "localhost") == 0 ||
           strcmp(h, "[::1]") == 0 || strcmp(h, "::1") == 0 || strcmp(h, "lo") == 0;
}

/* auth is none or curve; curve has a place for its keys; a bind beyond
 * loopback without auth needs --insecure (Redis' protected mode). */
static int s_check_auth(ab_broker_config_t *cfg)
{
    if (strcmp(cfg->auth, "none") != 0 && strcmp(cfg->auth, "curve") != 0) {
        fprintf(stderr, "agentbus-broker: invalid auth '%s': expected none or curve\n",
                cfg->auth);
        return -1;
    }
    cfg->auth_curve = strcmp(cfg->auth, "curve") == 0;
    if (cfg->auth_curve && !cfg->data_dir[0] && (!cfg->keys_dir[0] || !cfg->broker_cert[0])) {
        fprintf(stderr, "agentbus-broker: --auth curve needs --data-dir (for the broker's "
                "keypair and its keys directory), or both --broker-cert and --keys-dir\n");
        return -1;
    }
    for (int i = 0; i < cfg->nbinds && !cfg->auth_curve && !cfg->insecure; i++) {
        if (!ab_bind_is_local(cfg->binds[i])) {
            fprintf(stderr, "agentbus-broker: refusing to bind %s without authentication: any "
                    "host that reaches it could register as a worker, read the requests and "
                    "replies, take agents' names and clear the cache. Use --auth curve (see "
                    "docs/security.md), bind 127.0.0.1 only, or pass --insecure to accept "
                    "that risk on a trusted network.\n", cfg->binds[i]);
            return -1;
        }
    }
    return 0;
}

/* A data-dir given (file, environment or flag; the default is none) is
 * created if missing and must be a directory this process can write: the
 * broker ran on without its L3 cache after one ERROR line when it could
 * not. An empty value is the documented way to run without L3. */
static int s_check_data_dir(const ab_broker_config_t *cfg)
{
    const char *d = cfg->data_dir, *why = NULL;
    struct stat st;
    if (!d[0])
        return 0;
    if (mkdir(d, 0700) != 0 && errno != EEXIST)
        why = "cannot create it";
    else if (stat(d, &st) != 0)
        why = "cannot read it";
    else if (!S_ISDIR(st.st_mode)) {
        why = "cannot use it";
        errno = ENOTDIR;
    }
    else if (access(d, W_OK | X_OK) != 0)
        why = "cannot write in it";
    if (!why)
        return 0;
    fprintf(stderr, "agentbus-broker: invalid data-dir '%s': %s: %s (an empty data-dir runs "
            "without the L3 cache)\n", d, why, strerror(errno));
    return -1;
}

int ab_config_load(ab_broker_config_t *cfg, int argc, char **argv)
{
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < NOPTS; i++)
        if (s_set(cfg, &s_options[i], s_options[i].def, "defaults", 0) != 0)
            return -1;
    int rc = s_prescan(cfg, argc, argv);
    if (rc != 0)
        return rc;
    if (s_load_env(cfg) != 0 || s_load_flags(cfg, argc, argv) != 0)
        return -1;
    if (cfg->health_ceiling_ms < cfg->health_floor_ms) {
        fprintf(stderr, "agentbus-broker: health-ceiling-ms must be >= health-floor-ms\n");
        return -1;
    }
    /* A cap below a default is what applies: said, and shown as such (the
     * start line said "default timeout 700000 ms" under a cap of 1000). */
    if (cfg->default_timeout_ms > cfg->max_timeout_ms) {
        fprintf(stderr, "agentbus-broker: default-timeout-ms %ld is above max-timeout-ms %ld: "
                "%ld applies\n", cfg->default_timeout_ms, cfg->max_timeout_ms,
                cfg->max_timeout_ms);
        cfg->default_timeout_ms = cfg->max_timeout_ms;
    }
    if (cfg->eject_base_ms > cfg->eject_max_ms) {
        fprintf(stderr, "agentbus-broker: eject-base-ms %ld is above eject-max-ms %ld: %ld "
                "applies\n", cfg->eject_base_ms, cfg->eject_max_ms, cfg->eject_max_ms);
        cfg->eject_base_ms = cfg->eject_max_ms;
    }
    if (cfg->nbinds == 0) {
        fprintf(stderr, "agentbus-broker: no endpoint to bind\n");
        return -1;
    }
    const char *colon = cfg->cache_redis[0] ? strrchr(cfg->cache_redis, ':') : NULL;
    long port;
    /* A redis:// URL, as other programs of the stack take, ran with "redis"
     * for a host name it never resolved, L2 off behind its breaker. */
    if (cfg->cache_redis[0] &&
        (!colon || colon == cfg->cache_redis || ab_parse_long(colon + 1, 1, 65535, &port) != 0 ||
         strpbrk(cfg->cache_redis, "/@"))) {
        fprintf(stderr, "agentbus-broker: invalid cache-redis '%s': expected HOST:PORT (no "
                "redis:// URL, user or database: e.g. 127.0.0.1:6379)\n", cfg->cache_redis);
        return -1;
    }
    const char *why = cfg->http[0] ? ab_http_addr_problem(cfg->http) : NULL;
    if (why) {
        fprintf(stderr, "agentbus-broker: invalid http '%s': %s\n", cfg->http, why);
        return -1;
    }
    if (s_check_weights(cfg->client_weights) != 0 || s_check_links(cfg) != 0 ||
        s_check_auth(cfg) != 0 || s_check_data_dir(cfg) != 0)
        return -1;
    return cfg->auth_curve ? s_check_peer_keys(cfg) : 0;
}

void ab_config_free(ab_broker_config_t *cfg)
{
    free(cfg->client_weights);
    cfg->client_weights = NULL;
    free(cfg->auth);
    free(cfg->keys_dir);
    free(cfg->broker_cert);
    cfg->auth = cfg->keys_dir = cfg->broker_cert = NULL;
    s_binds_clear(cfg);
    free(cfg->config_path);
    cfg->config_path = NULL;
    free(cfg->data_dir);
    cfg->data_dir = NULL;
    free(cfg->cache_redis);
    cfg->cache_redis = NULL;
    free(cfg->http);
    cfg->http = NULL;
    free(cfg->name);
    free(cfg->peers);
    cfg->name = cfg->peers = NULL;
}
