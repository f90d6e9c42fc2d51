/*
 * test_placement.c - the placement policy (broker/placement/placement.c) on its own:
 * capability, loaded > fits in free VRAM > would evict, waiting instead of
 * evicting, pinning, temperature and load on ties. No sockets.
 */
#include "agentbus.pb-c.h"
#include "service.h"
#include "placement.h"
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GIB (1ull << 30)

static ab_peer_t s_peers[8];
static int s_npeers;

/* A worker whose Ollama lists MODELS (sizes in GiB), has LOADED loaded,
 * VRAM_FREE of VRAM_TOTAL GiB, one GPU at TEMP degrees. */
static ab_worker_rec_t *s_worker(ab_service_t *s, const char *name, uint32_t cap,
                                 uint32_t in_flight, const char *loaded, unsigned vram_free,
                                 unsigned vram_total, unsigned temp)
{
    ab_peer_t *p = &s_peers[s_npeers++];
    memset(p, 0, sizeof *p);
    p->name = (char *)name; /* a literal: these records are never freed */
    snprintf(p->key, sizeof p->key, "%02x", s_npeers);
    p->rid_hash = 1000 + (uint64_t)s_npeers; /* as ab_rid_hash: never 0 */
    ab_worker_rec_t *w = calloc(1, sizeof *w);
    w->peer = p;
    w->capacity = cap;
    w->in_flight = in_flight;
    w->service = s;
    zlistx_add_end(s->workers, w);
    Agentbus__InferenceState *st = calloc(1, sizeof *st);
    agentbus__inference_state__init(st);
    static const char *names[] = {"small:latest", "mid:latest", "big:latest"};
    static const unsigned sizes[] = {1, 3, 5};
    st->n_models = 3;
    st->models = calloc(3, sizeof *st->models);
    for (int i = 0; i < 3; i++) {
        Agentbus__ModelInfo *m = calloc(1, sizeof *m);
        agentbus__model_info__init(m);
        m->name = strdup(names[i]);
        m->size = sizes[i] * GIB;
        st->models[i] = m;
    }
    if (loaded) {
        st->n_loaded = 1;
        st->loaded = calloc(1, sizeof *st->loaded);
        st->loaded[0] = calloc(1, sizeof **st->loaded);
        agentbus__loaded_model__init(st->loaded[0]);
        st->loaded[0]->name = strdup(loaded);
    }
    st->vram_free = vram_free * GIB;
    st->vram_total = vram_total * GIB;
    st->n_gpus = 1;
    st->gpus = calloc(1, sizeof *st->gpus);
    st->gpus[0] = calloc(1, sizeof **st->gpus);
    agentbus__gpu_info__init(st->gpus[0]);
    st->gpus[0]->temperature_c = temp;
    ab_placement_update(w, st);
    return w;
}

static ab_worker_rec_t *s_pick(ab_service_t *s, const char *model, const char *pin,
                               int *impossible)
{
    ab_req_t r;
    memset(&r, 0, sizeof r);
    ab_header_t h = ab_header_init(AB_KIND_REQUEST);
    h.model = ab_view_of(model);
    h.worker = ab_view_of(pin);
    REQUIRE(ab_route_init(&r, &h) == 0);
    ab_worker_rec_t *w = ab_placement_pick(NULL, s, &r, impossible);
    ab_route_free(&r);
    return w;
}

static void s_free(ab_service_t *s)
{
    for (ab_worker_rec_t *w = zlistx_first(s->workers); w; w = zlistx_next(s->workers)) {
        ab_placement_forget(w);
        free(w);
    }
    zlistx_destroy(&s->workers);
    s_npeers = 0;
}

/* A request pushed back by a worker avoids that worker when it is placed
 * again, named by its routing id's hash: a later worker whose record has
 * the same address (the first one left, its record freed and the memory
 * reused) is not avoided. The avoided worker was its record's address
 * until 2026-12-06. */
static void s_test_avoid(void)
{
    ab_service_t s;
    memset(&s, 0, sizeof s);
    snprintf(s.name, sizeof s.name, "ollama");
    s.workers = zlistx_new();
    ab_worker_rec_t *w1 = s_worker(&s, "w1", 4, 0, "small:latest", 1, 6, 50);
    ab_worker_rec_t *w2 = s_worker(&s, "w2", 4, 3, "small:latest", 1, 6, 50);
    ab_req_t r;
    memset(&r, 0, sizeof r);
    ab_header_t h = ab_header_init(AB_KIND_REQUEST);
    h.model = ab_view_of("small");
    REQUIRE(ab_route_init(&r, &h) == 0);
    int imp;
    CHECK_TRUE(ab_placement_pick(NULL, &s, &r, &imp) == w1); /* the less loaded */
    r.route->avoid = w1->peer->rid_hash;
    CHECK_TRUE(ab_placement_pick(NULL, &s, &r, &imp) == w2 && !imp);
    /* w1 leaves; a new worker's record lands where its record was */
    ab_peer_t *p = &s_peers[s_npeers++];
    memset(p, 0, sizeof *p);
    p->name = (char *)"w3";
    p->rid_hash = 1000 + (uint64_t)s_npeers;
    w1->peer = p;
    CHECK_TRUE(ab_placement_pick(NULL, &s, &r, &imp) == w1);
    ab_route_free(&r);
    s_free(&s);
}

static void s_test_tiers(void)
{
    ab_service_t s;
    memset(&s, 0, sizeof s);
    snprintf(s.name, sizeof s.name, "ollama");
    s.workers = zlistx_new();
    int imp;
    ab_worker_rec_t *w1 = s_worker(&s, "w1", 4, 0, "small:latest", 1, 6, 50);
    ab_worker_rec_t *w2 = s_worker(&s, "w2", 4, 0, "big:latest", 0, 5, 50);
    ab_worker_rec_t *w3 = s_worker(&s, "w3", 4, 0, NULL, 6, 6, 50);
    /* loaded wins, with or without the tag */
    CHECK_TRUE(s_pick(&s, "small", NULL, &imp) == w1 && !imp);
    CHECK_TRUE(s_pick(&s, "big:latest", NULL, &imp) == w2);
    /* loaded nowhere: the one whose free VRAM holds it */
    CHECK_TRUE(s_pick(&s, "mid", NULL, &imp) == w3);
    /* unknown to every worker: impossible, never sent anywhere */
    CHECK_TRUE(s_pick(&s, "nope", NULL, &imp) == NULL && imp);
    /* the worker with it loaded is full: wait rather than evict elsewhere...
     * (w3 has room for small, so small may go there: it evicts nothing) */
    w1->in_flight = 4;
    CHECK_TRUE(s_pick(&s, "small", NULL, &imp) == w3);
    w3->in_flight = 4;
    CHECK_TRUE(s_pick(&s, "small", NULL, &imp) == NULL && !imp); /* w2 would evict big */
    w1->in_flight = 0;
    w3->in_flight = 0;
    /* pinned: only that worker, even if another fits better */
    CHECK_TRUE(s_pick(&s, "mid", "w2", &imp) == w2);
    CHECK_TRUE(s_pick(&s, "mid", "nobody", &imp) == NULL && imp);
    ab_req_t r;
    memset(&r, 0, sizeof r);
    ab_header_t h = ab_header_init(AB_KIND_REQUEST);
    h.model = ab_view_of("mid");
    h.worker = ab_view_of("nobody");
    ab_route_init(&r, &h);
    char text[256];
    CHECK_EQ(ab_placement_why(&s, &r, text, sizeof text), AB_ERR_NOT_FOUND);
    CHECK_TRUE(strstr(text, "nobody") != NULL);
    ab_route_free(&r);
    s_free(&s);
}

static void s_test_ties(void)
{
    ab_service_t s;
    memset(&s, 0, sizeof s);
    s.workers = zlistx_new();
    int imp;
    ab_worker_rec_t *hot = s_worker(&s, "hot", 4, 0, "small:latest", 4, 8, 85);
    ab_worker_rec_t *cool = s_worker(&s, "cool", 4, 3, "small:latest", 4, 8, 60);
    /* the coolest GPU first, even when busier */
    CHECK_TRUE(s_pick(&s, "small", NULL, &imp) == cool);
    /* same temperature: the least loaded (in flight / slots) */
    cool->inference->gpus[0]->temperature_c = 85;
    CHECK_TRUE(s_pick(&s, "small", NULL, &imp) == hot);
    hot->in_flight = 3;
    hot->last_dispatch = 5;
    cool->last_dispatch = 2;
    CHECK_TRUE(s_pick(&s, "small", NULL, &imp) == cool); /* then longest since dispatch */
    s_free(&s);
}

int main(void)
{
    s_test_avoid();
    s_test_tiers();
    s_test_ties();
    return TEST_DONE("placement");
}
