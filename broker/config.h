/*
 * config.h - the broker's configuration, in one place.
 *
 * Every option has one entry in the table in config.c: its name is the
 * command-line flag (--queue-max), the config-file key (queue-max) and, upper
 * cased with '-' -> '_' and an AB_ prefix, the environment variable
 * (AB_QUEUE_MAX). Precedence: defaults < config file < environment < flags.
 * docs/configuration.md documents the same table.
 */
#ifndef AB_BROKER_CONFIG_H
#define AB_BROKER_CONFIG_H

#include <stddef.h>

#define AB_MAX_BINDS 16
/* --peer entries: each is a link, and a broker has AB_LINKS_MAX (link_int.h) */
#define AB_MAX_PEERS 16
#define AB_STR_(x) #x
#define AB_STR(x) AB_STR_(x)

typedef struct {
    char *binds[AB_MAX_BINDS];
    int nbinds;
    long queue_max;          /* requests waiting per service */
    long default_timeout_ms; /* deadline of a request that gives none */
    long max_timeout_ms;     /* cap on any request's deadline */
    size_t max_header_bytes;
    size_t max_payload_bytes;
    long heartbeat_ms;       /* how often peers should heartbeat */
    long liveness;           /* missed heartbeats before a peer is dropped */
    long transport_ping_ms;  /* ZMTP PING interval of the ROUTER's connections; 0: none */
    long listen_backlog;     /* ZMQ_BACKLOG of the bound endpoints */
    long agent_hb_rate;      /* agent heartbeats/s the broker asks for in all; 0: no bound */
    long sndhwm;             /* ZMQ_SNDHWM / ZMQ_RCVHWM of the ROUTER */
    long max_pending;        /* requests held in the broker in total */
    long startup_grace_ms;   /* after start, unknown services wait for workers */
    long log_level;
    long log_format; /* AB_LOG_TEXT or AB_LOG_JSON */
    char *config_path;
    /* issue 5: health, re-dispatch, shutdown */
    long max_attempts;        /* dispatches of one request before WORKER_LOST */
    long health_floor_ms;     /* shortest heartbeat interval asked of a worker */
    long health_ceiling_ms;   /* longest */
    long phi_threshold;       /* suspicion at which a silent worker is dead */
    long eject_failures;      /* consecutive failed requests before ejection */
    long eject_base_ms;       /* first ejection's backoff; doubles each time */
    long eject_max_ms;        /* cap on the backoff */
    long cancel_grace_ms;     /* a CANCEL unanswered this long, nothing else answered: failure */
    long max_client_inflight; /* requests one client may have held at once */
    size_t max_held_bytes;        /* request bytes (payloads + records) held in total */
    size_t max_client_held_bytes; /* request bytes (payloads + records) held for one client */
    long drain_ms;            /* on SIGTERM: time to finish in-flight work */
    long self_check_ms;       /* audit.h: recount the bookkeeping this often; 0 off */
    /* Direct messages and pub/sub (broker/messaging/). */
    long mailbox_max_msgs;      /* messages one agent's mailbox holds */
    size_t mailbox_max_bytes;   /* payload bytes one mailbox holds */
    long mailbox_ttl_ms;        /* how long a message may wait in a mailbox */
    size_t mailbox_total_bytes; /* all mailboxes together (with overheads) */
    size_t message_max_bytes;   /* largest SEND/PUBLISH payload */
    long sub_queue_max;         /* publications queued per slow subscriber */
    /* Batching and compression (issue 4; see broker/batching.c). */
    long batch;                  /* 1: send BATCHes to peers that read them */
    long batch_max_count;        /* messages per BATCH */
    size_t batch_max_bytes;      /* bytes per BATCH body */
    long batch_max_age_us;       /* oldest gathered message flushed after this */
    size_t compress_threshold_bytes; /* payloads the broker creates: lz4 from here; 0 off */
    long compress_min_saving_pct;    /* compress only if it saves this much */
    long compress_local;             /* 1: lz4 also on hops within this machine */
    size_t cache_l1_bytes;        /* in-process cache bound; 0 turns the cache off */
    long cache_ttl_s;             /* TTL of a cached reply whose request gives none */
    size_t cache_max_entry_bytes; /* larger replies are not cached */
    long cache_waiters_max;       /* identical requests that may wait on one in flight */
    char *data_dir;               /* "" = none: no L3 cache */
    size_t cache_l3_bytes;        /* LMDB map size */
    char *cache_redis;            /* "host:port"; "" = no L2 cache */
    long cache_l2_timeout_ms;
    size_t cache_key_decompress_max_bytes; /* lz4 requests larger are keyed compressed */
    /* issue 11: state a peer makes the broker keep */
    long service_idle_ms;            /* a service with no worker and no request goes after */
    long max_services;               /* services at once; beyond: REGISTER refused BUSY */
    size_t register_max_bytes;       /* a REGISTER payload; larger: refused TOO_LARGE */
    long register_max_labels;        /* labels of one worker */
    size_t register_max_string_bytes; /* each label key/value, name, inference string */
    long register_max_models;        /* models, loaded models, GPUs (each) in its state */
    /* Bounds per connection (issue 11, router.c) */
    size_t peer_out_max_bytes; /* sent to one peer, not yet taken by it; 0 off */
    long peer_stall_ms;        /* over that bound this long: disconnected */
    long max_connections;      /* open connections; beyond: refused */
    /* issue 11 (helper A) */
    long mailbox_max_names;       /* offline names holding a mailbox */
    long name_takeover;           /* 1: Hello.takeover honoured across instances */
    char *http; /* issue 13: HOST:PORT of /metrics, /healthz, /readyz; "" = off */
    /* issue 16: lanes, fair queuing, quotas (docs/lanes.md) */
    long max_client_queued;   /* requests one client may have waiting in lanes */
    long lane_normal_min_pct; /* minimum share of dispatches for the normal lane */
    long lane_batch_min_pct;  /* ... and for the batch lane */
    char *client_weights;     /* "name=W,...": DRR weights by client identity */
#define AB_CLIENT_WEIGHT_MAX 1000 /* a weight is requests per turn: past this it is a FIFO */
    /* issue 14: authentication and authorization (broker/auth/) */
    char *auth;                /* "none" or "curve" */
    int auth_curve;            /* auth == "curve" */
    char *keys_dir;            /* trusted public certificates; "" = <data-dir>/keys */
    char *broker_cert;         /* the broker's certificate (secret: <path>_secret) */
    long insecure;             /* 1: non-loopback binds without auth allowed */
    long worker_capacity_max;  /* cap on a REGISTER's capacity (a key's grant may lower it) */
    long cache_label_ttl_max_s; /* cap on a worker's cache-ttl-s label */
    /* issue 15: broker links (broker/link/) */
    char *name;                /* broker name among peers; "" = host name */
    char *peers;               /* comma-separated tcp://HOST:PORT#KEY; "" = none */
    long link_heartbeat_ms;    /* link heartbeat interval; 5 silent: down */
    long link_hop_limit;       /* links a forwarded request may cross */
    size_t link_compress_threshold_bytes; /* lz4 on links from this size; 0 never */
    size_t link_dir_max_bytes; /* largest directory a peer may announce */
    long link_credit_pct;      /* in flight to a peer's service, % of its announced capacity */
} ab_broker_config_t;

/* Fills CFG from defaults, the config file (--config / AB_CONFIG), the
 * environment and ARGV. Returns 0, 1 when --help/--version was handled
 * (caller exits 0), or -1 with a message on stderr (caller exits 2). */
int ab_config_load(ab_broker_config_t *cfg, int argc, char **argv);
void ab_config_free(ab_broker_config_t *cfg);
/* 1 when bind endpoint EP stays on this machine (ipc, inproc, tcp on a
 * loopback address), else 0. */
int ab_bind_is_local(const char *ep);
/* Writes the option table (flags, env, defaults, help) to stdout. */
void ab_config_usage(const char *prog);

#endif
