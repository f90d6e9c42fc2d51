/*
 * auth.c - see auth.h: the broker's keypair, the ZAP handler, per-message
 * authorization, key reloads and the "keys" control verbs.
 */
#define AB_LOG_SUBSYS "auth" /* log.h: the subsystem in log lines */
#include "auth.h"
#include "auth_keys.h"
#include "router.h"
#include "agentbus.pb-c.h"
#include "util.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define S_ZAP_EP "inproc://zeromq.zap.01" /* the address libzmq asks (RFC 27) */
#define S_ZAP_DOMAIN "agentbus"
#define S_TICK_MS 250         /* how often SIGHUP and directory changes are looked at */
#define S_UNKNOWN_LOG_MS 60000 /* an unknown key is logged once a minute */

struct ab_auth {
    ab_keys_t *keys;
    void *zap;           /* REP socket answering libzmq's ZAP requests */
    zcert_t *cert;       /* the broker's keypair */
    ab_key_t local;      /* ipc connections: the broker's own user */
    ab_key_t revoked;    /* b->in_key when its key was removed mid-message (a BATCH
                            holding "keys reload"): may do nothing */
    ab_ratelimit_t rl_unknown, rl_denied;
    int inotify_fd;      /* the keys directory's changes; -1 if unwatched */
    uint64_t zap_ok, zap_refused;
};

/* --- set-up ---------------------------------------------------------------- */

/* mkdir DIR mode 0700 unless it exists. 0 or -1 (logged). */
/* This broker's name among peers, as links say it in HELLO (--name, else
 * the host name): the name its first keypair is made for. */
static const char *s_self_name(const ab_broker_t *b)
{
    static char host[64];
    if (b->cfg->name && b->cfg->name[0])
        return b->cfg->name;
    if (gethostname(host, sizeof host - 1) != 0 || !host[0])
        snprintf(host, sizeof host, "broker");
    return host;
}

static int s_mkdir(const char *dir)
{
    if (mkdir(dir, 0700) == 0 || errno == EEXIST)
        return 0;
    AB_ERROR("cannot create %s: %s", dir, strerror(errno));
    return -1;
}

/* The broker's keypair from PATH (secret at PATH_secret), created there on
 * first start. A secret readable by others is refused, as ssh does. */
static zcert_t *s_broker_cert(const char *path, const char *name)
{
    char secret[4200];
    snprintf(secret, sizeof secret, "%s_secret", path);
    struct stat st;
    if (stat(secret, &st) == 0) {
        if (st.st_mode & 077) {
            AB_ERROR("%s is readable by other users (mode %03o): chmod 600 it, or remove it "
                     "(and its public half) to make a new keypair", secret,
                     (unsigned)(st.st_mode & 0777));
            return NULL;
        }
        zcert_t *c = zcert_load(path);
        if (!c || !zcert_secret_txt(c)[0] || !strcmp(zcert_secret_txt(c),
                                                     "0000000000000000000000000000000000000000")) {
            AB_ERROR("cannot read the broker's keypair from %s", secret);
            zcert_destroy(&c);
        }
        return c;
    }
    /* A public half without its secret is never replaced: peers may trust
     * it. It was, and --broker-cert NAME.key_secret (the secret's path, an
     * easy slip) wrote a public certificate over that secret. */
    if (stat(path, &st) == 0) {
        size_t n = strlen(path);
        if (n > 7 && strcmp(path + n - 7, "_secret") == 0)
            AB_ERROR("broker-cert %s: give the public half's path, %.*s (the secret half is "
                     "read from beside it)", path, (int)(n - 7), path);
        else
            AB_ERROR("%s exists but its secret half %s does not: restore it, or remove %s to "
                     "make a new keypair (peers then need its new public key)", path, secret,
                     path);
        return NULL;
    }
    zcert_t *c = zcert_new();
    if (!c)
        return NULL;
    /* Its key names it to peer brokers, and a peer key may say only the
     * broker names it is granted (names; by default its own name). */
    zcert_set_meta(c, "name", "%s", name);
    zcert_set_meta(c, "role", "%s", "peer");
    mode_t old = umask(077);
    int rc = zcert_save_secret(c, secret);
    umask(old);
    if (rc != 0 || zcert_save_public(c, path) != 0) {
        AB_ERROR("cannot write the broker's keypair to %s: %s", path, strerror(errno));
        zcert_destroy(&c);
        return NULL;
    }
    AB_INFO("created the broker's keypair: %s (public), %s (secret, mode 0600)", path, secret);
    return c;
}

static void s_tick(ab_broker_t *b, int64_t now);

/* Paths from the configuration; the keys directory made if missing. */
static int s_paths(ab_broker_t *b, char *cert, char *keys, size_t cap)
{
    const ab_broker_config_t *cfg = b->cfg;
    if (cfg->data_dir[0] && s_mkdir(cfg->data_dir) != 0)
        return -1;
    snprintf(cert, cap, "%s", cfg->broker_cert);
    if (!cert[0])
        snprintf(cert, cap, "%s/broker.key", cfg->data_dir);
    snprintf(keys, cap, "%s", cfg->keys_dir);
    if (!keys[0])
        snprintf(keys, cap, "%s/keys", cfg->data_dir);
    return s_mkdir(keys);
}

/* 1 when a process listens on the ipc socket at PATH now: a second broker
 * given the same path must fail, not take it from the first (libzmq
 * unlinks an existing file before it binds). A stale file left by a broker
 * that died refuses the connection, and is replaced as before. */
static int s_ipc_live(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof a.sun_path)
        return 0; /* libzmq gives its own error */
    memcpy(a.sun_path, path, n);
    if (path[0] == '@')
        a.sun_path[0] = '\0'; /* the abstract namespace, as libzmq reads '@' */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    int live = connect(fd, (struct sockaddr *)&a, (socklen_t)(offsetof(struct sockaddr_un,
                                                                        sun_path) + n)) == 0;
    close(fd);
    return live;
}

void ab_auth_ipc_unlink(const char *ep)
{
    struct stat st;
    if (strncmp(ep, "ipc://", 6) != 0 || ep[6] == '@' || s_ipc_live(ep + 6))
        return;
    if (stat(ep + 6, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(ep + 6);
}

/* The ZAP handler's socket, bound before any endpoint so that no
 * handshake can happen without it. */
static int s_zap_open(ab_broker_t *b, struct ab_auth *a)
{
    a->zap = zmq_socket(b->zctx, ZMQ_REP);
    int linger = 0;
    if (!a->zap || zmq_setsockopt(a->zap, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_bind(a->zap, S_ZAP_EP) != 0) {
        AB_ERROR("cannot bind the ZAP handler: %s", zmq_strerror(errno));
        return -1;
    }
    return 0;
}

int ab_auth_init(ab_broker_t *b)
{
    if (!b->cfg->auth_curve)
        return 0;
    struct ab_auth *a = calloc(1, sizeof *a);
    if (!a)
        return -1;
    b->auth = a;
    a->inotify_fd = -1;
    a->rl_unknown.interval_ms = S_UNKNOWN_LOG_MS;
    a->rl_denied.interval_ms = 10000;
    snprintf(a->local.pub, sizeof a->local.pub, "local");
    snprintf(a->local.name, sizeof a->local.name, "local");
    a->local.role = AB_KEYROLE_ADMIN;
    a->local.services = a->local.names = a->local.topics = "*";
    snprintf(a->revoked.pub, sizeof a->revoked.pub, "revoked");
    snprintf(a->revoked.name, sizeof a->revoked.name, "revoked");
    a->revoked.role = AB_KEYROLE_COUNT; /* in no role's mask: every check fails */
    a->revoked.services = a->revoked.names = a->revoked.topics = "";
    char cert[4096], keys[4096];
    if (s_paths(b, cert, keys, sizeof cert) != 0 ||
        !(a->cert = s_broker_cert(cert, s_self_name(b))))
        return -1;
    if (!(a->keys = ab_keys_new(keys)))
        return -1;
    zlistx_t *gone = zlistx_new();
    int n = ab_keys_reload(a->keys, gone);
    zlistx_destroy(&gone);
    if (n < 0)
        return -1;
    a->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (a->inotify_fd >= 0 &&
        inotify_add_watch(a->inotify_fd, keys, IN_CREATE | IN_DELETE | IN_MOVED_FROM |
                                                   IN_MOVED_TO | IN_CLOSE_WRITE | IN_ATTRIB) < 0)
        AB_WARN("cannot watch %s (%s): keys are reloaded on SIGHUP only", keys, strerror(errno));
    if (s_zap_open(b, a) != 0 || ab_broker_every(b, S_TICK_MS, s_tick) < 0)
        return -1;
    AB_INFO("auth curve: broker public key %s; %d trusted key(s) in %s", zcert_public_txt(a->cert),
            n, keys);
    return 0;
}

void ab_auth_fini(ab_broker_t *b)
{
    struct ab_auth *a = b->auth;
    if (!a)
        return;
    if (a->zap)
        zmq_close(a->zap);
    if (a->inotify_fd >= 0)
        close(a->inotify_fd);
    ab_keys_destroy(&a->keys);
    zcert_destroy(&a->cert);
    free(a);
    b->auth = NULL;
}

int ab_auth_bind(ab_broker_t *b, const char *ep)
{
    struct ab_auth *a = b->auth;
    int ipc = strncmp(ep, "ipc://", 6) == 0;
    /* Options are copied into a listener when it binds: the ipc ones stay
     * plain, every other one is a CURVE server whose clients ZAP checks. */
    if (a) {
        int server = !ipc;
        const char *domain = ipc ? "" : S_ZAP_DOMAIN;
        if (server)
            zmq_setsockopt(b->router, ZMQ_CURVE_SECRETKEY, zcert_secret_key(a->cert), 32);
        zmq_setsockopt(b->router, ZMQ_CURVE_SERVER, &server, sizeof server);
        /* libzmq clears a string option only when given NULL and 0. */
        zmq_setsockopt(b->router, ZMQ_ZAP_DOMAIN, ipc ? NULL : domain, strlen(domain));
    }
    if (ipc) { /* a directory of its own, made 0700, when it does not exist yet */
        char dir[512];
        snprintf(dir, sizeof dir, "%s", ep + 6);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = '\0';
            if (mkdir(dir, 0700) == 0)
                AB_INFO("created %s (mode 0700) for the ipc socket", dir);
        }
    }
    if (ipc && s_ipc_live(ep + 6)) {
        errno = EADDRINUSE; /* libzmq would unlink it and take the path over */
        return -1;
    }
    /* The socket file is created without group or other access: on Linux
     * connecting needs write permission on it. */
    mode_t old = ipc ? umask(077) : 0;
    int rc = zmq_bind(b->router, ep);
    int err = errno;
    if (ipc)
        umask(old);
    errno = err;
    return rc;
}

/* --- ZAP (RFC 27) ------------------------------------------------------- */

/* Sends the ZAP reply for request REQ_ID. */
static void s_zap_reply(void *zap, zmq_msg_t *req_id, const char *code, const char *text,
                        const char *user)
{
    zmq_send(zap, "1.0", 3, ZMQ_SNDMORE);
    zmq_msg_send(req_id, zap, ZMQ_SNDMORE);
    zmq_send(zap, code, strlen(code), ZMQ_SNDMORE);
    zmq_send(zap, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(zap, user, strlen(user), ZMQ_SNDMORE);
    zmq_send(zap, "", 0, 0);
}

static void s_reload(ab_broker_t *b, const char *why);

/* 1 when the keys directory reported a change since it was last asked
 * (what it reported is read and dropped). */
static int s_dir_changed(struct ab_auth *a)
{
    char buf[4096];
    int changed = 0;
    while (a->inotify_fd >= 0 && read(a->inotify_fd, buf, sizeof buf) > 0)
        changed = 1;
    return changed;
}

/* Decides one ZAP request (frames F, N of them). */
static void s_zap_one(ab_broker_t *b, zmq_msg_t *f, size_t n)
{
    struct ab_auth *a = b->auth;
    char addr[64] = "?", pub[AB_KEY_TXT] = "";
    const ab_key_t *k = NULL;
    if (n >= 6 && zmq_msg_size(&f[3]) < sizeof addr) {
        memcpy(addr, zmq_msg_data(&f[3]), zmq_msg_size(&f[3]));
        addr[zmq_msg_size(&f[3])] = '\0';
    }
    int curve = n >= 7 && zmq_msg_size(&f[5]) == 5 && !memcmp(zmq_msg_data(&f[5]), "CURVE", 5);
    if (curve && zmq_msg_size(&f[6]) == 32 && zmq_z85_encode(pub, zmq_msg_data(&f[6]), 32))
        k = ab_keys_lookup(a->keys, pub);
    if (!k && pub[0] && s_dir_changed(a)) {
        /* A key copied in since the last tick (S_TICK_MS) is read now: a
         * peer started right after the copy (`cp NAME.key KEYS/ &&
         * brokerctl ...`, as security.md sets up) was refused, and
         * brokerctl stops at that DENIED. Only a refusal asks, and only a
         * change reported costs a reload. */
        s_reload(b, "the keys directory changed");
        k = ab_keys_lookup(a->keys, pub);
    }
    /* NULL comes only from a plain (ipc) listener, whose ZAP domain is
     * empty: a tcp listener is a CURVE server, where a NULL client fails the
     * mechanism handshake before ZAP. */
    int null_local = n >= 6 && zmq_msg_size(&f[2]) == 0 && zmq_msg_size(&f[5]) == 4 &&
                     !memcmp(zmq_msg_data(&f[5]), "NULL", 4);
    if (null_local) {
        s_zap_reply(a->zap, &f[1], "200", "OK", "");
        return;
    }
    if (k) {
        a->zap_ok++;
        AB_DEBUG("key %s (%s) accepted from %s", k->name, ab_keyrole_name(k->role), addr);
        s_zap_reply(a->zap, &f[1], "200", "OK", k->pub);
        return;
    }
    a->zap_refused++;
    char mech[16] = "";
    if (n >= 6 && zmq_msg_size(&f[5]) < sizeof mech)
        memcpy(mech, zmq_msg_data(&f[5]), zmq_msg_size(&f[5]));
    AB_LOG_RL(&a->rl_unknown, ab_hash_bytes(pub, strlen(pub)), ab_now_ms(), AB_LOG_WARN,
              "refused a connection from %s: %s %s", addr, curve ? "unknown key" : "mechanism",
              curve ? pub : mech);
    s_zap_reply(a->zap, &f[1], "400", curve ? "unknown key" : "CURVE required", "");
}

void ab_auth_on_zap(ab_broker_t *b)
{
    struct ab_auth *a = b->auth;
    for (int turn = 0; a && turn < 1024; turn++) {
        zmq_msg_t f[8];
        size_t kept;
        if (ab_recv_frames(a->zap, f, 8, &kept, NULL) == 0)
            return;
        if (kept >= 2)
            s_zap_one(b, f, kept);
        else /* a REP must answer something: libzmq never sends this */
            zmq_send(a->zap, "", 0, 0);
        for (size_t i = 0; i < kept; i++)
            zmq_msg_close(&f[i]);
    }
}

void *ab_auth_zap_socket(ab_broker_t *b)
{
    return b->auth ? b->auth->zap : NULL;
}

/* --- per message ---------------------------------------------------------- */

int ab_auth_of_msg(ab_broker_t *b, zmq_msg_t *frame, const ab_key_t **key)
{
    struct ab_auth *a = b->auth;
    *key = NULL;
    if (!a)
        return 0;
    const char *uid = zmq_msg_gets(frame, "User-Id");
    if (!uid || !*uid) { /* no ZAP: an ipc connection, the broker's own user */
        *key = &a->local;
        return 0;
    }
    *key = ab_keys_lookup(a->keys, uid);
    return *key ? 0 : -1;
}

int ab_auth_is_admin(const ab_key_t *k)
{
    return !k || k->role == AB_KEYROLE_ADMIN;
}

int ab_auth_may_answer(const ab_key_t *k)
{
    return !k || k->role == AB_KEYROLE_ADMIN || k->role == AB_KEYROLE_WORKER ||
           k->role == AB_KEYROLE_PEER;
}

/* CONTROL verbs any key may use: they only read. Every other verb (cache
 * clear/get, keys, later ones) needs the admin role. */
static int s_read_only(const ab_view_t *t)
{
    static const char *ro[] = {"stats", "services", "workers", "agents", "cache", "peers"};
    for (size_t i = 0; i < sizeof ro / sizeof ro[0]; i++)
        if (t->len == strlen(ro[i]) && memcmp(t->ptr, ro[i], t->len) == 0)
            return 1;
    return 0;
}

static int s_role_in(const ab_key_t *k, unsigned mask)
{
    return (mask >> k->role) & 1u;
}
#define S_R(r) (1u << (r))

int ab_auth_check(ab_broker_t *b, const ab_key_t *k, const ab_header_t *h, const char **why)
{
    char target[AB_NAME_MAX];
    if (h->kind == AB_KIND_REGISTER) { /* the capacity cap holds without auth too */
        ab_view_copy(h->target, target, sizeof target);
        return ab_auth_may_register(b, k, target, h->credit, why);
    }
    if (!k || k->role == AB_KEYROLE_ADMIN)
        return 1;
    switch (h->kind) {
    case AB_KIND_REQUEST:
        *why = "this key's role may not send requests";
        if (!s_role_in(k, S_R(AB_KEYROLE_AGENT) | S_R(AB_KEYROLE_PEER)))
            return 0;
        ab_view_copy(h->target, target, sizeof target);
        *why = "this key is not granted the service";
        return ab_glob_list_match(k->services, target);
    case AB_KIND_SEND:
        *why = "this key's role may not send direct messages";
        return k->role == AB_KEYROLE_AGENT;
    case AB_KIND_PUBLISH:
    case AB_KIND_SUBSCRIBE:
        *why = "this key's role may not use topics";
        if (k->role != AB_KEYROLE_AGENT)
            return 0;
        ab_view_copy(h->target, target, sizeof target);
        *why = "this key is not granted the topic";
        return ab_glob_list_match(k->topics, target);
    case AB_KIND_CONTROL:
        *why = "the control verb needs an admin key";
        return s_read_only(&h->target);
    default: /* HELLO (names: ab_auth_may_name), answers (request.c checks the
              * dispatch), HEARTBEAT, DISCOVER, CANCEL, BYE */
        return 1;
    }
}

int ab_auth_may_register(ab_broker_t *b, const ab_key_t *k, const char *service,
                         uint32_t capacity, const char **why)
{
    uint32_t cap = (uint32_t)b->cfg->worker_capacity_max;
    if (k && k->capacity && k->capacity < cap)
        cap = k->capacity;
    if (capacity > cap) {
        *why = "capacity above this key's grant (or worker-capacity-max)";
        return 0;
    }
    if (!k || k->role == AB_KEYROLE_ADMIN)
        return 1;
    /* Not a peer (issue 15): a broker link offers its services through the
     * link's directory, never by registering workers on its own authority. */
    if (k->role != AB_KEYROLE_WORKER) {
        *why = "this key's role may not register a service";
        return 0;
    }
    *why = "this key is not granted the service";
    return ab_glob_list_match(k->services, service);
}

int ab_auth_may_name(const ab_key_t *k, const char *name, const char **why)
{
    *why = "this key is not granted the agent name";
    return !k || ab_glob_list_match(k->names, name);
}

void ab_auth_deny(ab_broker_t *b, const ab_key_t *k, const ab_rid_t *rid, const ab_header_t *h,
                  const char *why)
{
    ab_key_t *key = (ab_key_t *)k; /* counters live in the record */
    if (key)
        key->denied++;
    AB_COUNT_ERROR(b, AB_ERR_DENIED);
    char target[128];
    ab_view_copy(h->target, target, sizeof target);
    if (b->auth)
        AB_LOG_RL(&b->auth->rl_denied, ab_hash_bytes(k ? k->pub : "", k ? strlen(k->pub) : 0),
                  ab_now_ms(), AB_LOG_WARN, "denied %s '%s' to key %s (%s): %s",
                  ab_kind_name(h->kind), target, k ? k->name : "-",
                  k ? ab_keyrole_name(k->role) : "-", why);
    if (h->kind != AB_KIND_ERROR)
        ab_send_error(b, rid, h->id, AB_ERR_DENIED, why);
}

const char *ab_peer_identity(const ab_peer_t *p)
{
    return p && p->authkey ? p->authkey->pub : NULL;
}

const char *ab_key_name(const ab_key_t *k)
{
    return k ? k->name : NULL;
}

int ab_auth_link_client(ab_broker_t *b, void *sock, const char *server)
{
    struct ab_auth *a = b->auth;
    uint8_t key[32];
    if (!a)
        return 0;
    if (strlen(server) != 40 || !zmq_z85_decode(key, server)) {
        AB_ERROR("invalid peer broker key '%s'", server);
        return -1;
    }
    zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, key, 32);
    zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, zcert_public_key(a->cert), 32);
    zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, zcert_secret_key(a->cert), 32);
    return 0;
}

int ab_auth_is_peer(const ab_key_t *k)
{
    return !k || k->role == AB_KEYROLE_PEER;
}

const ab_key_t *ab_auth_key_lookup(ab_broker_t *b, const char *pub)
{
    return b->auth && pub && pub[0] ? ab_keys_lookup(b->auth->keys, pub) : NULL;
}

uint64_t ab_auth_keys_gen(const ab_broker_t *b)
{
    return b->auth ? ab_keys_gen(b->auth->keys) : 0;
}

int ab_key_role(const ab_key_t *k)
{
    return k ? (int)k->role : -1;
}

const char *ab_key_pub(const ab_key_t *k)
{
    return k ? k->pub : NULL;
}

void ab_auth_peer_new(ab_peer_t *p, const ab_key_t *k)
{
    p->authkey = k;
    if (k)
        ((ab_key_t *)k)->conns++;
}

void ab_auth_peer_gone(ab_peer_t *p)
{
    if (p->authkey && p->authkey->conns)
        ((ab_key_t *)p->authkey)->conns--;
    p->authkey = NULL;
}

/* --- reloads ---------------------------------------------------------------- */

static void s_cut(void *ctx, ab_defer_node_t *n)
{
    ab_broker_t *b = ctx;
    ab_peer_t *p = ab_defer_data(n, ab_peer_t, later);
    /* libzmq closes the connection and the monitor reports it; the client
     * reconnects, and the handshake now refuses its key. */
    if (p->fd >= 0 && !p->fd_closed_ms)
        shutdown(p->fd, SHUT_RDWR);
    ab_peer_drop(b, p, "its key is no longer trusted");
}

/* Reads the keys directory again; closes the connections of keys gone. */
static void s_reload(ab_broker_t *b, const char *why)
{
    struct ab_auth *a = b->auth;
    zlistx_t *gone = zlistx_new();
    if (!gone)
        return;
    int n = ab_keys_reload(a->keys, gone);
    if (zlistx_size(gone)) {
        for (ab_key_t *k = zlistx_first(gone); k; k = zlistx_next(gone))
            k->seen = -1;
        ab_defer_t q;
        ab_defer_init(&q);
        for (ab_peer_t *p = zhashx_first(b->peers); p; p = zhashx_next(b->peers))
            if (p->authkey && p->authkey->seen == -1)
                ab_defer_add(&q, &p->later, s_cut);
        ab_defer_run(&q, b);
        if (b->in_key && b->in_key->seen == -1)
            b->in_key = &a->revoked; /* the rest of a BATCH from that key */
        for (ab_key_t *k = zlistx_first(gone); k; k = zlistx_next(gone)) {
            AB_INFO("key %s (%s) no longer trusted: its connections were closed", k->name,
                    k->pub);
            ab_key_t *dead = k;
            ab_key_free(&dead);
        }
    }
    zlistx_destroy(&gone);
    if (n >= 0)
        AB_INFO("keys reloaded (%s): %d trusted", why, n);
}

void ab_auth_reload(ab_broker_t *b)
{
    if (b->auth)
        s_reload(b, "SIGHUP");
}

static void s_tick(ab_broker_t *b, int64_t now)
{
    (void)now;
    struct ab_auth *a = b->auth;
    if (atomic_exchange(&b->reload, 0))
        s_reload(b, "SIGHUP");
    if (s_dir_changed(a))
        s_reload(b, "the keys directory changed");
}

/* --- control ---------------------------------------------------------------- */

static int s_pack(const ProtobufCMessage *m, uint8_t **out, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    *out = malloc(*len ? *len : 1);
    if (!*out)
        return -1;
    protobuf_c_message_pack(m, *out);
    return 0;
}

static int s_key_list(ab_broker_t *b, uint8_t **out, size_t *len)
{
    struct ab_auth *a = b->auth;
    size_t n = zhashx_size(a->keys->by_pub), i = 0;
    Agentbus__KeyInfo *ki = calloc(n ? n : 1, sizeof *ki);
    Agentbus__KeyInfo **kp = calloc(n ? n : 1, sizeof *kp);
    int rc = -1;
    if (ki && kp) {
        for (ab_key_t *k = zhashx_first(a->keys->by_pub); k && i < n;
             k = zhashx_next(a->keys->by_pub), i++) {
            agentbus__key_info__init(&ki[i]);
            ki[i].name = k->name;
            ki[i].public_key = k->pub;
            ki[i].role = (char *)ab_keyrole_name(k->role);
            ki[i].services = k->services;
            ki[i].names = k->names;
            ki[i].topics = k->topics;
            ki[i].capacity = k->capacity;
            ki[i].denied = k->denied;
            ki[i].connections = k->conns;
            kp[i] = &ki[i];
        }
        Agentbus__KeyList kl;
        agentbus__key_list__init(&kl);
        kl.broker_key = (char *)zcert_public_txt(a->cert);
        kl.auth = "curve";
        kl.n_keys = i;
        kl.keys = kp;
        rc = s_pack(&kl.base, out, len);
    }
    free(ki);
    free(kp);
    return rc;
}

int ab_auth_control(ab_broker_t *b, const char *what, uint8_t **out, size_t *len,
                    const char **err)
{
    *out = NULL;
    *len = 0;
    if (!b->auth) {
        *err = "authentication is off (--auth none): no keys";
        return AB_ERR_UNSUPPORTED;
    }
    if (strcmp(what, "keys reload") == 0)
        s_reload(b, "asked by an admin");
    else if (strcmp(what, "keys") != 0) {
        *err = "unknown keys query (try: keys, keys reload)";
        return AB_ERR_UNSUPPORTED;
    }
    if (s_key_list(b, out, len) != 0) {
        *err = "out of memory";
        return AB_ERR_INTERNAL;
    }
    return 0;
}

void ab_auth_handshakes(const ab_broker_t *b, uint64_t *accepted, uint64_t *refused)
{
    *accepted = b->auth ? b->auth->zap_ok : 0;
    *refused = b->auth ? b->auth->zap_refused : 0;
}
