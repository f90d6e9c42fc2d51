/*
 * netfuzz_moves.c - the messages the network fuzzer's peers send: one
 * builder per move, valid-looking (right kinds, fields and typed payloads,
 * names and ids from small pools so that they meet), drawn from the seeded
 * PRNG. netfuzz.c decides who sends what, when, and what counts as broken.
 */
#include "netfuzz.h"

#include "agentbus.pb-c.h"
#include "compress.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int nf_avoid[MV_COUNT_];
struct nf_answers nf_answers;
uint64_t nf_rng = 1;
static uint64_t s_seen[NF_SEEN];
static int s_nseen;

uint64_t nf_rand(void)
{
    uint64_t x = nf_rng; /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    nf_rng = x;
    return x * 0x2545F4914F6CDD1Dull;
}

uint32_t nf_below(uint32_t n)
{
    return n ? (uint32_t)(nf_rand() % n) : 0;
}

int nf_chance(int pct)
{
    return (int)nf_below(100) < pct;
}

const char *nf_pick(const char *const *v, size_t n)
{
    return v[nf_below((uint32_t)n)];
}

static const char *const s_names[] = {"alice", "bob", "carol", "dave", "eve", "mallory", "~1",
                                      "~2", "ghost"};
static const char *const s_services[] = {"svc-a", "svc-b", "infer", NF_GOOD_SVC, NF_FAR_SVC,
                                         "nosuch"};
static const char *const s_reg_services[] = {"svc-a", "svc-b", "infer"};
static const char *const s_topics[] = {"t.a", "t.b", "t.a.x", "news.eu", "news.us"};
static const char *const s_patterns[] = {"t.", "t.a", "news.", "t.a.x", "news.eu"};
static const char *const s_models[] = {"sim-small", "llama3:8b", ""};
static const char *const s_vias[] = {"", "nf-b2", "nf-b1,nf-b3", "nf-b3,nf-b2,nf-b1", ",,"};
static const char *const s_controls[] = {"stats", "services", "workers", "agents", "cache",
                                         "bogus"};

void nf_remember(uint64_t *v, int *n, uint64_t id)
{
    if (*n < NF_IDS)
        v[(*n)++] = id;
    else
        v[nf_below(NF_IDS)] = id;
}

void nf_seen_add(uint64_t id)
{
    s_seen[s_nseen < NF_SEEN ? s_nseen++ : (int)nf_below(NF_SEEN)] = id;
}

/* An id to answer or cancel: usually one that exists somewhere. */
static uint64_t s_some_id(const uint64_t *own, int n)
{
    int r = (int)nf_below(10);
    if (r < 5 && n)
        return own[nf_below((uint32_t)n)];
    if (r < 9 && s_nseen)
        return s_seen[nf_below((uint32_t)s_nseen)];
    return nf_chance(50) ? nf_below(1000) : nf_rand();
}

uint64_t nf_seen_pick(void)
{
    return s_some_id(NULL, 0);
}

/* --- message moves -------------------------------------------------------------------- */
static void s_out_payload(nf_out_t *o, size_t len)
{
    o->data = o->buf;
    o->len = len;
    o->has = 1;
}

/* Some plain bytes: printable, compressible, of a small random size. */
static void nf_out_text(nf_out_t *o, size_t max)
{
    size_t n = 1 + nf_below((uint32_t)(max < sizeof o->buf ? max : sizeof o->buf));
    for (size_t i = 0; i < n; i++)
        o->buf[i] = (uint8_t)"abcd efgh"[nf_below(9)];
    s_out_payload(o, n);
}

static uint64_t s_new_id(nf_peer_t *p)
{
    if (p->nsent && nf_chance(3)) /* an id it already used */
        return p->sent[nf_below((uint32_t)p->nsent)];
    return p->next_id++;
}

static void s_mk_hello(nf_peer_t *p, nf_out_t *o)
{
    Agentbus__Hello m;
    agentbus__hello__init(&m);
    m.name = nf_chance(75) ? (char *)NF_PICK(s_names) : (char *)"";
    m.role = nf_chance(80) ? (char *)"agent" : (char *)"worker";
    m.features = nf_below(8); /* BATCH, LZ4 and INLINE in any combination */
    m.heartbeat_ms = nf_chance(50) ? 0 : 100 + nf_below(2000);
    m.takeover = nf_chance(30);
    m.instance = nf_chance(80) ? p->instance : nf_rand();
    /* Hello.max_payload: unsaid, small (the broker then holds SENDs,
     * publications, answers and BATCHes to it), the edges, anything. */
    static const uint64_t maxes[] = {1, 100, 4096, 65536, 1 << 20, UINT64_MAX};
    m.max_payload = nf_chance(50)   ? 0
                    : nf_chance(80) ? maxes[nf_below(sizeof maxes / sizeof maxes[0])]
                                    : nf_rand();
    o->h = ab_header_init(AB_KIND_HELLO);
    o->h.id = s_new_id(p);
    if (nf_chance(90))
        s_out_payload(o, agentbus__hello__pack(&m, o->buf));
}

static void s_mk_register(nf_peer_t *p, nf_out_t *o)
{
    static const char *keys[] = {"model", "gpu", "host", "zone"};
    Agentbus__Register m;
    agentbus__register__init(&m);
    Agentbus__Register__LabelsEntry le[3], *lp[3];
    Agentbus__InferenceState inf;
    Agentbus__ModelInfo mi, *mip[1] = {&mi};
    const char *svc = NF_PICK(s_reg_services);
    m.service = (char *)svc;
    m.capacity = 1 + nf_below(8);
    m.name = nf_chance(70) ? (char *)NF_PICK(s_names) : (char *)"";
    m.features = nf_below(8);
    m.heartbeat_ms = nf_chance(50) ? 0 : 200 + nf_below(2000);
    /* Register.max_payload: mostly unsaid; else requests over it must go
     * to another worker or end TOO_LARGE, never to this one. */
    static const uint64_t maxes[] = {1, 100, 4096, 1 << 20, UINT64_MAX};
    m.max_payload = nf_chance(70)   ? 0
                    : nf_chance(80) ? maxes[nf_below(sizeof maxes / sizeof maxes[0])]
                                    : nf_rand();
    m.n_labels = nf_below(4);
    for (size_t i = 0; i < m.n_labels; i++) {
        agentbus__register__labels_entry__init(&le[i]);
        le[i].key = (char *)keys[nf_below(4)];
        le[i].value = (char *)NF_PICK(s_models);
        lp[i] = &le[i];
    }
    m.labels = lp;
    if (nf_chance(30)) { /* an inference worker's state */
        agentbus__inference_state__init(&inf);
        agentbus__model_info__init(&mi);
        mi.name = (char *)NF_PICK(s_models);
        mi.size = nf_below(1u << 30);
        inf.n_models = 1;
        inf.models = mip;
        inf.backend_up = nf_chance(80);
        inf.vram_total = nf_below(1u << 31);
        inf.slots = nf_below(4);
        m.inference = &inf;
    }
    o->h = ab_header_init(AB_KIND_REGISTER);
    o->h.id = s_new_id(p);
    o->h.target = ab_view_of(svc);
    o->h.credit = m.capacity;
    if (nf_chance(85)) /* else an old worker: no payload, so no features */
        s_out_payload(o, agentbus__register__pack(&m, o->buf));
    p->registered = 1;
}

static void s_mk_request(nf_peer_t *p, nf_out_t *o)
{
    static const uint32_t flags[] = {0, AB_FLAG_NO_CACHE, AB_FLAG_NO_STORE, AB_FLAG_CACHEABLE,
                                     AB_FLAG_NON_IDEMPOTENT, AB_FLAG_LZ4_SKIPPED};
    o->h = ab_header_init(AB_KIND_REQUEST);
    o->h.id = s_new_id(p);
    o->h.target = ab_view_of(NF_PICK(s_services));
    o->h.flags = flags[nf_below(6)] | (nf_chance(20) ? flags[nf_below(6)] : 0);
    o->h.timeout_ms = nf_chance(30) ? 0 : 50 + nf_below(4000);
    o->h.priority = nf_below(5); /* every lane: 1 batch, 0 and 2 normal, 3+ interactive */
    if (nf_chance(20))
        o->h.model = ab_view_of(NF_PICK(s_models));
    if (nf_chance(10))
        o->h.worker = ab_view_of(NF_PICK(s_names));
    if (nf_chance(10))
        o->h.cache_ttl_s = nf_below(100);
    if (nf_chance(90))
        nf_out_text(o, 300);
    if (nf_chance(20)) { /* a forwarded request's route: heeded from a link only */
        o->h.via = ab_view_of(NF_PICK(s_vias));
        o->h.hops_left = nf_below(5);
        o->h.origin_role = nf_below(6);
        o->h.origin_key = ab_view_of(nf_chance(50) ? "" : "netfuzz-origin");
    }
    nf_remember(p->sent, &p->nsent, o->h.id);
    nf_seen_add(o->h.id);
}

/* Compresses o's payload in place (heap); LIE: declare a wrong size. */
static void s_out_lz4(nf_out_t *o, int lie)
{
    void *z = NULL;
    size_t zl = 0;
    if (!o->has || o->len < 16 || ab_lz4_compress(o->data, o->len, 0, &z, &zl) != 1)
        return;
    o->h.flags |= AB_FLAG_LZ4;
    o->h.original_size = lie ? o->len + nf_below(3) - 1 : o->len;
    o->heap = z;
    o->data = z;
    o->len = zl;
}

/* A request flagged LZ4, mostly to the services raw peers register (some
 * without the lz4 feature): the broker must refuse or forward it. */
static void s_mk_lz4(nf_peer_t *p, nf_out_t *o)
{
    s_mk_request(p, o);
    o->h.target = ab_view_of(nf_chance(80) ? NF_PICK(s_reg_services) : NF_PICK(s_services));
    size_t n = 64 + nf_below(4000);
    for (size_t i = 0; i < n; i++)
        o->buf[i] = (uint8_t)"the agent asked"[i % 15];
    s_out_payload(o, n);
    s_out_lz4(o, nf_chance(5));
}

/* A typed inference request (generate, chat or embed), deterministic or
 * marked, so the cache keys it and single-flight groups the same ones. */
static void s_mk_typed(nf_peer_t *p, nf_out_t *o)
{
    Agentbus__InferenceRequest ir;
    Agentbus__GenerateRequest g;
    Agentbus__EmbedRequest e;
    Agentbus__InferenceOptions opt;
    char *inputs[1] = {(char *)"hello"};
    const char *model = NF_PICK(s_models);
    agentbus__inference_request__init(&ir);
    agentbus__inference_options__init(&opt);
    if (nf_chance(50)) {
        opt.has_temperature_case = AGENTBUS__INFERENCE_OPTIONS__HAS_TEMPERATURE_TEMPERATURE;
        opt.temperature = 0;
    } else if (nf_chance(50)) {
        opt.has_seed_case = AGENTBUS__INFERENCE_OPTIONS__HAS_SEED_SEED;
        opt.seed = nf_below(3);
    }
    if (nf_chance(70)) {
        agentbus__generate_request__init(&g);
        g.model = (char *)model;
        g.prompt = nf_chance(50) ? (char *)"why is the sky blue" : (char *)"hang";
        g.options = &opt;
        ir.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_GENERATE;
        ir.generate = &g;
    } else {
        agentbus__embed_request__init(&e);
        e.model = (char *)model;
        e.n_input = 1;
        e.input = inputs;
        ir.body_case = AGENTBUS__INFERENCE_REQUEST__BODY_EMBED;
        ir.embed = &e;
    }
    s_mk_request(p, o);
    o->h.target = ab_view_of(nf_chance(80) ? "infer" : NF_PICK(s_services));
    o->h.model = ab_view_of(model);
    o->h.flags = nf_chance(30) ? AB_FLAG_CACHEABLE : 0;
    s_out_payload(o, agentbus__inference_request__pack(&ir, o->buf));
    if (!nf_avoid[MV_lz4] && nf_chance(20))
        s_out_lz4(o, 0);
}

static void s_mk_cancel(nf_peer_t *p, nf_out_t *o)
{
    o->h = ab_header_init(AB_KIND_CANCEL);
    o->h.id = s_new_id(p);
    o->h.correlation_id = s_some_id(p->sent, p->nsent);
}

/* PARTIAL, REPLY or ERROR to a request it holds, another peer's, or none;
 * sometimes again to the id it answered last (a second final, a chunk
 * after its final, an ERROR after a REPLY). An ERROR may say the work had
 * begun (FLAG_NON_IDEMPOTENT, ab_worker_fail_begun): the broker then hands
 * the request to no other worker. BACKEND and BACKEND_BUSY are the codes
 * placement re-dispatches without that flag. */
static void s_mk_answer(nf_peer_t *p, nf_out_t *o)
{
    static const uint32_t kinds[] = {AB_KIND_PARTIAL, AB_KIND_REPLY, AB_KIND_REPLY,
                                     AB_KIND_ERROR};
    static const uint32_t codes[] = {AB_ERR_APPLICATION, AB_ERR_BUSY, AB_ERR_BACKEND_BUSY,
                                     AB_ERR_INTERNAL, AB_ERR_MODEL_NOT_FOUND, AB_ERR_CANCELLED,
                                     AB_ERR_BACKEND, AB_ERR_BACKEND, AB_ERR_DEADLINE};
    o->h = ab_header_init(kinds[nf_below(4)]);
    o->h.id = s_new_id(p);
    int again = p->answered && nf_chance(15), stale = !again && p->nold && nf_chance(10);
    o->h.correlation_id = again   ? p->answered
                          : stale ? p->old[nf_below((uint32_t)p->nold)]
                                  : s_some_id(p->held, p->nheld);
    nf_answers.again += again;
    nf_answers.stale += stale;
    for (int i = 0; i < p->nheld; i++)
        if (p->held[i] == o->h.correlation_id) {
            nf_answers.to_held++;
            break;
        }
    p->answered = o->h.correlation_id;
    if (o->h.kind == AB_KIND_ERROR) {
        o->h.error_code = codes[nf_below(9)];
        o->h.error_text = ab_view_of("netfuzz");
        if (nf_chance(40)) {
            o->h.flags |= AB_FLAG_NON_IDEMPOTENT;
            nf_answers.begun++;
        }
    } else {
        nf_out_text(o, 2000);
        if (!nf_avoid[MV_lz4] && nf_chance(15))
            s_out_lz4(o, nf_chance(5));
        if (nf_chance(5)) /* a flag that means nothing on a chunk or a reply */
            o->h.flags |= AB_FLAG_NON_IDEMPOTENT;
    }
}

void nf_answer_to(nf_peer_t *p, nf_out_t *o, uint32_t kind, uint64_t corr, int begun)
{
    static const uint32_t codes[] = {AB_ERR_BACKEND, AB_ERR_BACKEND_BUSY, AB_ERR_APPLICATION,
                                     AB_ERR_CANCELLED, AB_ERR_DEADLINE};
    memset(o, 0, sizeof *o);
    o->h = ab_header_init(kind);
    o->h.id = s_new_id(p);
    o->h.correlation_id = corr;
    p->answered = corr;
    if (kind == AB_KIND_ERROR) {
        o->h.error_code = codes[nf_below(5)];
        o->h.error_text = ab_view_of("netfuzz work");
        if (begun) {
            o->h.flags |= AB_FLAG_NON_IDEMPOTENT;
            nf_answers.begun++;
        }
    } else {
        nf_out_text(o, 300);
    }
}

static void s_mk_bye(nf_peer_t *p, nf_out_t *o)
{
    o->h = ab_header_init(AB_KIND_BYE);
    o->h.id = s_new_id(p);
    if (nf_chance(30))
        o->h.flags = AB_FLAG_DRAINING;
}

static void s_mk_subscribe(nf_peer_t *p, nf_out_t *o, int unsubscribe)
{
    o->h = ab_header_init(AB_KIND_SUBSCRIBE);
    o->h.id = s_new_id(p);
    o->h.target = ab_view_of(NF_PICK(s_patterns));
    if (unsubscribe)
        o->h.flags = AB_FLAG_UNSUBSCRIBE;
}

static void s_mk_send(nf_peer_t *p, nf_out_t *o)
{
    o->h = ab_header_init(AB_KIND_SEND);
    o->h.id = s_new_id(p);
    o->h.target = ab_view_of(NF_PICK(s_names));
    if (nf_chance(30))
        o->h.flags = AB_FLAG_WANT_RECEIPT;
    else if (nf_chance(10)) {
        o->h.flags = AB_FLAG_RECEIPT;
        o->h.correlation_id = s_some_id(p->held, p->nheld);
    }
    if (nf_chance(10))
        o->h.timeout_ms = nf_below(2000);
    nf_out_text(o, nf_chance(5) ? 8000 : 200);
}

static void s_mk_publish(nf_peer_t *p, nf_out_t *o)
{
    o->h = ab_header_init(AB_KIND_PUBLISH);
    o->h.id = s_new_id(p);
    o->h.target = ab_view_of(NF_PICK(s_topics));
    if (nf_chance(20)) { /* a forwarded publication's route: heeded from a link only */
        static const char *const dests[] = {"", "nf-b1", "nf-b1,nf-b2,nf-b3", ",", "a,,b"};
        o->h.via = ab_view_of(NF_PICK(s_vias));
        o->h.dests = ab_view_of(NF_PICK(dests));
        o->h.hops_left = nf_below(5);
        o->h.origin_role = nf_below(6);
    }
    nf_out_text(o, nf_chance(5) ? 8000 : 200);
}

static void s_mk_heartbeat(nf_peer_t *p, nf_out_t *o)
{
    o->h = ab_header_init(AB_KIND_HEARTBEAT);
    o->h.id = s_new_id(p);
    o->h.credit = nf_below(10);
    if (p->registered && nf_chance(50)) {
        Agentbus__WorkerHeartbeat m;
        agentbus__worker_heartbeat__init(&m);
        m.in_flight = nf_below(8);
        m.free_credit = nf_below(8);
        m.backend_state = nf_chance(80) ? (char *)"ok" : (char *)"down: netfuzz";
        s_out_payload(o, agentbus__worker_heartbeat__pack(&m, o->buf));
    }
}

static void s_mk_discover(nf_peer_t *p, nf_out_t *o)
{
    o->h = ab_header_init(AB_KIND_DISCOVER);
    o->h.id = s_new_id(p);
    o->h.target = ab_view_of(nf_chance(50) ? "" : NF_PICK(s_services));
    if (nf_chance(40))
        o->h.flags = AB_FLAG_WATCH;
}

static void s_mk_control(nf_peer_t *p, nf_out_t *o)
{
    o->h = ab_header_init(AB_KIND_CONTROL);
    o->h.id = s_new_id(p);
    o->h.target = ab_view_of(nf_chance(40) ? (nf_chance(50) ? "workers" : "agents")
                                           : NF_PICK(s_controls));
}

/* --- broker links (broker/link/) ------------------------------------------------------ */
static const char *const s_brokers[] = {"nf-b1", "nf-b2", "nf-b3", "", "a,b",
                                        "nf-a-broker-name-that-is-far-too-long-for-a-link-"
                                        "record-and-then-some-more"};

/* A peer broker's directory: a few entries, sometimes many, some invalid
 * (no name, capacity 0, duplicates, long names, routes through anyone). */
static void s_link_dir(Agentbus__LinkMsg *m, nf_out_t *o)
{
    static Agentbus__LinkService es[64], *ps[64];
    static char names[64][300];
    size_t n = nf_chance(10) ? 64 : nf_below(6);
    for (size_t i = 0; i < n; i++) {
        agentbus__link_service__init(&es[i]);
        if (nf_chance(80))
            /* never the good client's service: a fake link would answer it */
            snprintf(names[i], sizeof names[i], "%s", nf_chance(90) ? NF_PICK(s_reg_services)
                                                                    : "nosuch");
        else
            snprintf(names[i], sizeof names[i], "nf-r%u-%.*s", nf_below(100), (int)nf_below(280),
                     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
        es[i].name = names[i];
        es[i].capacity = nf_chance(10) ? 0 : nf_chance(5) ? 0xffffffffu : 1 + nf_below(16);
        es[i].free_credit = nf_below(16);
        es[i].hops = nf_chance(80) ? nf_below(3) : nf_rand() & 0xffffffffu;
        es[i].workers = nf_below(4);
        es[i].via = (char *)NF_PICK(s_vias);
        es[i].lz4 = nf_chance(50);
        /* models behind it (placement reads them), sometimes too many */
        static char *mods[] = {"sim-small", "llama3:8b", "sim-large:latest", ""};
        size_t off = nf_below(2);
        es[i].n_models = nf_chance(10) ? 4 : nf_below(3);
        es[i].models = mods;
        es[i].n_loaded = nf_below((uint32_t)(4 - off) + 1);
        es[i].loaded = mods + off;
        ps[i] = &es[i];
    }
    m->full = nf_chance(90);
    m->n_services = n;
    m->services = ps;
    (void)o;
}

/* A peer broker's topic interest: its own patterns and routes to brokers
 * beyond it, some invalid (bad patterns, empty or looping routes, names
 * far too long, more routes and patterns than a link takes). */
static void s_link_interest(Agentbus__LinkMsg *m)
{
    static Agentbus__LinkTopicRoute es[80], *ps[80];
    static char *pats[] = {"t.", "t.a", "news.", "bad..pattern", "", "t.a.x", "news.eu"};
    static const char *const vias[] = {"nf-b2", "nf-b1,nf-b3", "nf-b3,nf-b2,nf-b1", ",,",
                                       "nf-b2,nf-b2", "", "x,", "nf-b9,nf-b8,nf-b7,nf-b6"};
    m->n_topics = nf_below(8);
    m->topics = pats;
    m->all_topics = nf_chance(5);
    size_t n = nf_chance(10) ? 80 : nf_below(5);
    for (size_t i = 0; i < n; i++) {
        agentbus__link_topic_route__init(&es[i]);
        es[i].via = (char *)(nf_chance(90) ? NF_PICK(vias) : NF_PICK(s_brokers));
        es[i].n_topics = nf_below(8);
        es[i].topics = pats;
        es[i].all_topics = nf_chance(10);
        ps[i] = &es[i];
    }
    m->n_routes = n;
    m->routes = ps;
}

/* M packed as a LINK message into O (on the heap when larger than O's buffer). */
static void s_link_out(nf_peer_t *p, nf_out_t *o, const Agentbus__LinkMsg *m)
{
    size_t len = agentbus__link_msg__get_packed_size(m);
    uint8_t *buf = len <= sizeof o->buf ? o->buf : malloc(len);
    if (!buf)
        return;
    agentbus__link_msg__pack(m, buf);
    o->h = ab_header_init(AB_KIND_LINK);
    o->h.id = s_new_id(p);
    if (buf != o->buf)
        o->heap = buf;
    o->data = buf;
    o->len = len;
    o->has = 1;
}

/* A LINK message: HELLO as some broker, a heartbeat (echoed or echoing),
 * a directory, or a type nobody knows. Once HELLO is answered the peer is
 * a link: its REQUESTs are forwarded ones (s_mk_request sets their route
 * sometimes), its answers answer what the broker forwarded to it. */
static void s_mk_link(nf_peer_t *p, nf_out_t *o)
{
    Agentbus__LinkMsg m;
    agentbus__link_msg__init(&m);
    int r = (int)nf_below(100);
    m.type = r < 30 ? 1 : r < 50 ? 3 : r < 80 ? 4 : r < 95 ? 6 : nf_below(10);
    m.broker = (char *)NF_PICK(s_brokers);
    m.session = nf_chance(90) ? p->instance : nf_rand();
    m.sent_us = nf_chance(50) ? nf_rand() : 0;
    m.echo_us = nf_chance(30) ? nf_rand() : 0;
    if (m.type == 4)
        s_link_dir(&m, o);
    else if (m.type == 6)
        s_link_interest(&m);
    s_link_out(p, o, &m);
}

/* --- LINK NAMES and INTEREST (broker/link/link_msg.c) -------------------------------- */
enum { S_HUGE = 70000 }; /* past both bounds: 65536 names, 4096 patterns */

/* Entries no valid set holds: empty, invalid or cut UTF-8, control bytes,
 * odd dots, too long. */
static const char *const s_odd_names[] = {
    "", "\xff\xfe", "al\xc3", "a\tb", "a b", "~", "~x@", "~1@nf-b1", "\xed\xa0\x80",
    "nf-agent-name-too-long-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"};
static const char *const s_odd_patterns[] = {
    "", ".", "..", "...", ".t", "t..a", "t.a.", "news..", "..news", "\xff.", "t.\xc3", "t.a\x01",
    "*", "#", "t.*", ">", "t.a.x.y.z.......", "news.eu.\xed\xa0\x80"};

static char *s_set_ptr[S_HUGE];
static char s_set_gen[S_HUGE][8];

/* One whole set as a peer broker sends it, into s_set_ptr; its size. Mostly
 * a few of GOOD mixed with ODD; often one of two halves of GOOD in turn (a
 * peer swapping its whole set back and forth, each replacing the last);
 * rarely S_HUGE generated entries ("n12345" or "t.12345"), past the bound. */
static size_t s_set(const char *const *good, size_t ngood, const char *const *odd, size_t nodd,
                    const char *gen)
{
    static unsigned turn;
    uint32_t r = nf_below(100);
    size_t n = 0;
    if (r < 3) {
        for (n = 0; n < S_HUGE; n++) {
            snprintf(s_set_gen[n], sizeof s_set_gen[n], "%s%05u", gen, (unsigned)n);
            s_set_ptr[n] = s_set_gen[n];
        }
    } else if (r < 35) {
        size_t half = ngood / 2, from = turn++ % 2 ? half : 0, to = from ? ngood : half;
        for (size_t i = from; i < to; i++)
            s_set_ptr[n++] = (char *)good[i];
    } else {
        size_t want = nf_chance(10) ? 0 : 1 + nf_below(10);
        for (; n < want; n++)
            s_set_ptr[n] = (char *)(nf_chance(60) ? good[nf_below((uint32_t)ngood)]
                                                   : odd[nf_below((uint32_t)nodd)]);
    }
    return n;
}

/* LINK NAMES (type 5) or INTEREST (6): a peer broker's whole set of agent
 * names or of its subscribers' patterns, sent whether or not this peer said
 * HELLO (before it, the broker must ignore it). Names a netfuzz SEND goes to
 * make the broker hand mailboxes over; patterns netfuzz publishes on make
 * it forward publications to the fake link. */
static void s_mk_link_set(nf_peer_t *p, nf_out_t *o, int interest)
{
    Agentbus__LinkMsg m;
    agentbus__link_msg__init(&m);
    m.type = interest ? 6 : 5;
    m.broker = (char *)NF_PICK(s_brokers);
    m.session = nf_chance(90) ? p->instance : nf_rand();
    if (interest) {
        m.topics = s_set_ptr;
        m.n_topics = s_set(s_patterns, sizeof s_patterns / sizeof *s_patterns, s_odd_patterns,
                           sizeof s_odd_patterns / sizeof *s_odd_patterns, "t.");
        m.all_topics = nf_chance(10);
    } else {
        m.names = s_set_ptr;
        m.n_names = s_set(s_names, sizeof s_names / sizeof *s_names, s_odd_names,
                          sizeof s_odd_names / sizeof *s_odd_names, "n");
    }
    s_link_out(p, o, &m);
}

/* Builds the message of move MV (one that is a single message). */
int nf_make(int mv, nf_peer_t *p, nf_out_t *o)
{
    memset(o, 0, sizeof *o);
    switch (mv) {
    case MV_hello: s_mk_hello(p, o); break;
    case MV_register: s_mk_register(p, o); break;
    case MV_request: s_mk_request(p, o); break;
    case MV_lz4: s_mk_lz4(p, o); break;
    case MV_typed: s_mk_typed(p, o); break;
    case MV_cancel: s_mk_cancel(p, o); break;
    case MV_answer: s_mk_answer(p, o); break;
    case MV_bye: s_mk_bye(p, o); break;
    case MV_subscribe: s_mk_subscribe(p, o, 0); break;
    case MV_unsubscribe: s_mk_subscribe(p, o, 1); break;
    case MV_send: s_mk_send(p, o); break;
    case MV_publish: s_mk_publish(p, o); break;
    case MV_heartbeat: s_mk_heartbeat(p, o); break;
    case MV_discover: s_mk_discover(p, o); break;
    case MV_control: s_mk_control(p, o); break;
    case MV_link: s_mk_link(p, o); break;
    case MV_link_names: s_mk_link_set(p, o, 0); break;
    case MV_link_interest: s_mk_link_set(p, o, 1); break;
    default: return 0;
    }
    return 1;
}
