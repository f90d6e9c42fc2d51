/*
 * test_ollama_placement.c - Ollama workers' capacity and models (part of
 * test_ollama, ollamatest.h): adaptive concurrency, placement by loaded
 * model and by VRAM, brokerctl models load|unload.
 */
#include "harness.h"
#include "test.h"
#include "ollamatest.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint32_t s_capacity(ab_client_t *c, const char *name)
{
    Agentbus__WorkerList *wl;
    uint32_t cap = 0;
    ot_state(c, name, &wl, &cap);
    if (wl)
        agentbus__worker_list__free_unpacked(wl, NULL);
    return cap;
}

/* MODEL's slot limit as worker NAME reports it: its model_slots entry, or
 * the worker's maximum when the model has none (0: no state yet). */
static uint32_t s_model_slots(ab_client_t *c, const char *name, const char *model)
{
    Agentbus__WorkerList *wl;
    const Agentbus__InferenceState *st = ot_state(c, name, &wl, NULL);
    uint32_t slots = st ? st->slots_max : 0;
    for (size_t i = 0; st && i < st->n_model_slots; i++)
        if (strcmp(st->model_slots[i]->name, model) == 0)
            slots = st->model_slots[i]->slots;
    if (wl)
        agentbus__worker_list__free_unpacked(wl, NULL);
    return slots;
}

void ollama_adaptive(void)
{
    int sim = ot_sim("--num-parallel", "8", NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    ot_oworker(port, sim, "w1", "--capacity", "8", "--preload", "sim-small", "--ollama-retries",
              "0", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    REQUIRE(ot_wait_loaded(c, "w1", "sim-small:latest", 1, 15000) == 0);
    CHECK_EQ(s_capacity(c, "w1"), 8);
    ot_faults(sim, "{\"error_rate\":1,\"error_status\":503}");
    /* waves of requests while the backend pushes back: the slots halve */
    uint32_t cap = 8;
    for (int wave = 0; wave < 40 && cap > 1; wave++) {
        ot_res_t r[8];
        for (int i = 0; i < 8; i++) {
            ot_gen_t g = {"sim-small", "x", NULL, 1, 1, 5000};
            ot_start_gen(c, &g, &r[i]);
        }
        ot_wait(c, r, 8, 10000);
        for (int i = 0; i < 8; i++)
            CHECK_EQ(r[i].status, AB_EBACKENDBUSY); /* no other worker to go to */
        th_sleep_ms(300);
        cap = s_model_slots(c, "w1", "sim-small");
    }
    CHECK_EQ(cap, 1);
    CHECK_EQ(s_capacity(c, "w1"), 8); /* the limit is the model's, not the worker's */
    /* healthy again: it grows back, slowly, to the maximum */
    ot_faults(sim, "{\"reset\":true}");
    int n = 0;
    for (; n < 200 && cap < 8; n++) {
        ot_res_t r;
        ot_gen_t g = {"sim-small", "y", NULL, 1, 1, 10000};
        CHECK_EQ(ot_generate(c, &g, &r), AB_OK);
        cap = s_model_slots(c, "w1", "sim-small");
    }
    CHECK_EQ(cap, 8);
    CHECK_TRUE(n >= 7); /* additive increase: not back in one step */
    ab_client_destroy(&c);
}

/* Issue 20: requests whose deadline passes in Ollama's own queue (one slot,
 * real-time tokens, eight sent at once) are not pushback: the worker's
 * capacity stays at its maximum. A burst of 503s still halves it, down to
 * --min-slots and never below. */
void ollama_timeout_credit(void)
{
    int sim = ot_sim("--num-parallel", "1", "--time-scale", "1", NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    ot_oworker(port, sim, "w1", "--capacity", "8", "--min-slots", "2", "--preload", "sim-small",
               "--ollama-retries", "0", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    REQUIRE(ot_wait_loaded(c, "w1", "sim-small:latest", 1, 30000) == 0);
    CHECK_EQ(s_capacity(c, "w1"), 8);
    int expired = 0;
    for (int wave = 0; wave < 4; wave++) {
        ot_res_t r[8];
        for (int i = 0; i < 8; i++) {
            ot_gen_t g = {"sim-small", "queued", NULL, 1, 100 + wave * 8 + i, 400};
            ot_start_gen(c, &g, &r[i]);
        }
        ot_wait(c, r, 8, 15000);
        for (int i = 0; i < 8; i++) {
            CHECK_EQ(r[i].finals, 1);
            expired += r[i].status == AB_EDEADLINE || r[i].status == AB_ETIMEOUT;
        }
        th_sleep_ms(300);
        CHECK_EQ(s_model_slots(c, "w1", "sim-small"), 8); /* before the fix: 4, 2, 1 */
    }
    /* one slot of ~250 ms each: at most a few of 8 fit in 400 ms */
    CHECK_TRUE(expired >= 16);
    /* 503s are pushback: the capacity halves to the floor, not below */
    ot_faults(sim, "{\"error_rate\":1,\"error_status\":503}");
    uint32_t cap = 8;
    for (int wave = 0; wave < 40 && cap > 2; wave++) {
        ot_res_t r[8];
        for (int i = 0; i < 8; i++) {
            ot_gen_t g = {"sim-small", "x", NULL, 1, 1, 5000};
            ot_start_gen(c, &g, &r[i]);
        }
        ot_wait(c, r, 8, 10000);
        for (int i = 0; i < 8; i++)
            CHECK_EQ(r[i].status, AB_EBACKENDBUSY);
        th_sleep_ms(300);
        cap = s_model_slots(c, "w1", "sim-small");
    }
    CHECK_EQ(cap, 2);
    for (int wave = 0; wave < 3; wave++) { /* more 503s: still the floor */
        ot_res_t r[4];
        for (int i = 0; i < 4; i++) {
            ot_gen_t g = {"sim-small", "x", NULL, 1, 1, 5000};
            ot_start_gen(c, &g, &r[i]);
        }
        ot_wait(c, r, 4, 10000);
        th_sleep_ms(600);
        CHECK_EQ(s_model_slots(c, "w1", "sim-small"), 2);
    }
    ab_client_destroy(&c);
}

/* Worker NAME's requests in flight as the broker counts them. */
static uint32_t s_in_flight(ab_client_t *c, const char *name)
{
    Agentbus__WorkerList *wl = th_workers(c);
    uint32_t n = 0;
    for (size_t i = 0; wl && i < wl->n_workers; i++)
        if (strcmp(wl->workers[i]->name, name) == 0)
            n = wl->workers[i]->in_flight;
    if (wl)
        agentbus__worker_list__free_unpacked(wl, NULL);
    return n;
}

/* Issue 20: credit per (worker, model). Ollama's slots and queue are per
 * model; one model's 503s halve that model's limit only, the worker keeps
 * its capacity, and the broker holds back the limited model's requests
 * (model_slots) while the other model's go through. */
void ollama_model_credit(void)
{
    int sim = ot_sim("--num-parallel", "8", NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    ot_oworker(port, sim, "w1", "--capacity", "8", "--preload", "sim-small,sim-large",
               "--ollama-retries", "0", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    REQUIRE(ot_wait_loaded(c, "w1", "sim-small:latest", 1, 30000) == 0);
    REQUIRE(ot_wait_loaded(c, "w1", "sim-large:latest", 1, 30000) == 0);
    ot_faults(sim, "{\"error_rate\":1,\"error_status\":503,\"model\":\"sim-large\"}");
    uint32_t cap = 8;
    for (int wave = 0; wave < 40 && cap > 1; wave++) {
        ot_res_t r[8];
        for (int i = 0; i < 8; i++) {
            ot_gen_t g = {"sim-large", "x", NULL, 0, 1, 5000};
            ot_start_gen(c, &g, &r[i]);
        }
        ot_wait(c, r, 8, 10000);
        for (int i = 0; i < 8; i++)
            CHECK_EQ(r[i].status, AB_EBACKENDBUSY);
        th_sleep_ms(300);
        cap = s_model_slots(c, "w1", "sim-large");
    }
    CHECK_EQ(cap, 1);
    /* the other model keeps its slots, the worker its capacity */
    CHECK_EQ(s_model_slots(c, "w1", "sim-small"), 8);
    CHECK_EQ(s_capacity(c, "w1"), 8);
    /* sim-large now hangs (no success, no pushback: its limit stays 1):
     * the broker sends the worker one of four, the others wait at the
     * broker, where another worker could take them */
    ot_faults(sim, "{\"reset\":true,\"hang_rate\":1,\"model\":\"sim-large\"}");
    ot_res_t big[4];
    for (int i = 0; i < 4; i++) {
        ot_gen_t g = {"sim-large", "hold", NULL, 0, 200 + i, 20000};
        ot_start_gen(c, &g, &big[i]);
    }
    for (int i = 0; i < 200 && s_in_flight(c, "w1") < 1; i++)
        th_sleep_ms(25);
    th_sleep_ms(300);
    CHECK_EQ(s_in_flight(c, "w1"), 1); /* before: 4 (capacity 8, the worker queued 3) */
    /* sim-small's requests do not wait behind them (before: capacity 1,
     * held by the hanging request until its deadline, after theirs) */
    ot_res_t small[8];
    for (int i = 0; i < 8; i++) {
        ot_gen_t g = {"sim-small", "free", NULL, 1, 300 + i, 10000};
        ot_start_gen(c, &g, &small[i]);
    }
    ot_wait(c, small, 8, 15000);
    for (int i = 0; i < 8; i++)
        CHECK_EQ(small[i].status, AB_OK);
    for (int i = 0; i < 4; i++)
        CHECK_EQ(big[i].finals, 0); /* still held: the sim-large slot hangs */
    ab_client_destroy(&c);
}

/* A broker and worker w1 (capacity 8, --model-slots 2) in front of a
 * simulator with 8 slots, sim-small and sim-large loaded: the client, and
 * the simulator's port in *SIM. */
static ab_client_t *s_two_models(int *sim)
{
    *sim = ot_sim("--num-parallel", "8", NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    ot_oworker(port, *sim, "w1", "--capacity", "8", "--model-slots", "2", "--preload",
               "sim-small,sim-large", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    REQUIRE(ot_wait_loaded(c, "w1", "sim-small:latest", 1, 30000) == 0);
    REQUIRE(ot_wait_loaded(c, "w1", "sim-large:latest", 1, 30000) == 0);
    return c;
}

/* --model-slots: one model's backlog waits at the broker, not in the
 * worker's credit. sim-large hangs; the worker takes two of its requests
 * (the model's cap) and sim-small's requests still go through. */
void ollama_model_slots(void)
{
    int sim;
    ab_client_t *c = s_two_models(&sim);
    Agentbus__WorkerList *wl;
    const Agentbus__InferenceState *st = ot_state(c, "w1", &wl, NULL);
    REQUIRE(st != NULL);
    CHECK_EQ(st->model_slots_max, 2);
    agentbus__worker_list__free_unpacked(wl, NULL);
    ot_faults(sim, "{\"hang_rate\":1,\"model\":\"sim-large\"}");
    ot_res_t big[5];
    for (int i = 0; i < 5; i++) {
        ot_gen_t g = {"sim-large", "hold", NULL, 0, 400 + i, 20000};
        ot_start_gen(c, &g, &big[i]);
    }
    for (int i = 0; i < 200 && s_in_flight(c, "w1") < 2; i++)
        th_sleep_ms(25);
    th_sleep_ms(300);
    CHECK_EQ(s_in_flight(c, "w1"), 2); /* without the cap: 5 */
    ot_res_t small[6];
    for (int i = 0; i < 6; i++) {
        ot_gen_t g = {"sim-small", "free", NULL, 1, 500 + i, 10000};
        ot_start_gen(c, &g, &small[i]);
    }
    ot_wait(c, small, 6, 15000);
    for (int i = 0; i < 6; i++)
        CHECK_EQ(small[i].status, AB_OK);
    for (int i = 0; i < 5; i++)
        CHECK_EQ(big[i].finals, 0);
    ab_client_destroy(&c);
}

/* Issue 20: a free slot of one model finds that model's oldest waiting
 * request however many requests of a busy model wait ahead of it (the
 * dispatch pass used to give up after 64 it could not place). sim-large
 * hangs and takes its cap of two; 80 more of its requests queue at the
 * broker, one client, one flow; then one sim-small request must go at
 * once (before the fix: not until sim-large's requests expired). */
void ollama_model_scan(void)
{
    int sim;
    ab_client_t *c = s_two_models(&sim);
    ot_faults(sim, "{\"hang_rate\":1,\"model\":\"sim-large\"}");
    enum { N = 82 };
    static ot_res_t big[N];
    for (int i = 0; i < N; i++) {
        ot_gen_t g = {"sim-large", "hold", NULL, 0, 1000 + i, 40000};
        ot_start_gen(c, &g, &big[i]);
    }
    for (int i = 0; i < 200 && s_in_flight(c, "w1") < 2; i++)
        th_sleep_ms(25);
    th_sleep_ms(300);
    CHECK_EQ(s_in_flight(c, "w1"), 2);
    Agentbus__Stats *st = th_stats(c); /* the model index, as stats shows it */
    REQUIRE(st != NULL);
    uint32_t waiting = 0;
    for (size_t i = 0; i < st->n_model_queues; i++)
        if (!strcmp(st->model_queues[i]->model, "sim-large"))
            waiting = st->model_queues[i]->queued;
    CHECK_EQ(waiting, N - 2);
    agentbus__stats__free_unpacked(st, NULL);
    ot_res_t small;
    ot_gen_t g = {"sim-small", "behind them", NULL, 0, 7, 30000};
    ot_start_gen(c, &g, &small);
    ot_wait(c, &small, 1, 20000);
    CHECK_EQ(small.finals, 1); /* before the fix: 0 (80 ahead, 64 looked at) */
    CHECK_EQ(small.status, AB_OK);
    int held = 0;
    for (int i = 0; i < N; i++)
        held += big[i].finals == 0;
    CHECK_EQ(held, N); /* every sim-large request still waits */
    ab_client_destroy(&c);
}

static int s_healthy(ab_client_t *c, const char *name)
{
    Agentbus__WorkerList *wl = th_workers(c);
    int ok = 0;
    for (size_t i = 0; wl && i < wl->n_workers; i++)
        if (strcmp(wl->workers[i]->name, name) == 0)
            ok = strcmp(wl->workers[i]->health, "healthy") == 0;
    if (wl)
        agentbus__worker_list__free_unpacked(wl, NULL);
    return ok;
}

/* Issue 20: deadlines that pass while a worker holds requests it is still
 * working through (one slot, twelve sent at once) are the clients' budget,
 * not the worker's failure: it is not ejected (before the fix: ejected at
 * the third, its requests taken back, its streams failed WORKER_LOST). A
 * worker that answers nothing while its requests expire still is. */
void ollama_busy_no_eject(void)
{
    int sim = ot_sim("--num-parallel", "1", "--time-scale", "1", NULL);
    int port = th_free_port();
    th_broker(port, "--eject-failures", "3", NULL);
    ot_oworker(port, sim, "w1", "--capacity", "12", "--preload", "sim-small", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    REQUIRE(ot_wait_loaded(c, "w1", "sim-small:latest", 1, 30000) == 0);
    ot_res_t r[12];
    for (int i = 0; i < 12; i++) {
        ot_gen_t g = {"sim-small", "one slot", NULL, 1, 600 + i, 1500};
        ot_start_gen(c, &g, &r[i]);
    }
    ot_wait(c, r, 12, 20000);
    int ok = 0, expired = 0;
    for (int i = 0; i < 12; i++) {
        CHECK_EQ(r[i].finals, 1);
        ok += r[i].status == AB_OK;
        expired += r[i].status == AB_EDEADLINE || r[i].status == AB_ETIMEOUT;
    }
    printf("busy worker: %d answered, %d expired (%s)\n", ok, expired, r[11].error);
    CHECK_TRUE(ok >= 1);
    CHECK_TRUE(expired >= 3); /* one slot of ~250 ms: at most 6 fit in 1.5 s */
    /* judged as the worker answers each expired one (CANCELLED) */
    Agentbus__Stats *st = th_stats(c);
    for (int i = 0; i < 200 && st && st->deadline_busy < (uint64_t)expired; i++) {
        agentbus__stats__free_unpacked(st, NULL);
        th_sleep_ms(25);
        st = th_stats(c);
    }
    REQUIRE(st != NULL);
    printf("ejected %llu, deadline_busy %llu, deadline_expired %llu\n",
           (unsigned long long)st->workers_ejected, (unsigned long long)st->deadline_busy,
           (unsigned long long)st->deadline_expired);
    CHECK_EQ(st->workers_ejected, 0); /* before the fix: 1 */
    CHECK_TRUE(st->deadline_busy >= 1);
    agentbus__stats__free_unpacked(st, NULL);
    /* hung: nothing answered while its requests expire (on a healthy
     * worker: a suspect one, late heartbeats on a busy machine, gets none) */
    for (int i = 0; i < 200 && !s_healthy(c, "w1"); i++)
        th_sleep_ms(25);
    ot_faults(sim, "{\"hang_rate\":1,\"model\":\"sim-small\"}");
    ot_res_t h[4];
    for (int i = 0; i < 4; i++) {
        ot_gen_t g = {"sim-small", "hung", NULL, 1, 700 + i, 1600}; /* > health-floor-ms */
        ot_start_gen(c, &g, &h[i]);
    }
    ot_wait(c, h, 4, 20000);
    for (int i = 0; i < 4; i++)
        CHECK_EQ(h[i].finals, 1);
    st = th_stats(c);
    for (int i = 0; i < 200 && st && st->workers_ejected == 0; i++) {
        agentbus__stats__free_unpacked(st, NULL);
        th_sleep_ms(25);
        st = th_stats(c);
    }
    REQUIRE(st != NULL);
    CHECK_TRUE(st->workers_ejected >= 1);
    agentbus__stats__free_unpacked(st, NULL);
    ab_client_destroy(&c);
}

/* Model A loaded on worker 1, B on worker 2: requests follow the models. */
void ollama_placement_loaded(void)
{
    int s1 = ot_sim(NULL), s2 = ot_sim(NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    ot_oworker(port, s1, "w1", "--preload", "sim-small", "--gpu-vram-mb", "8192", NULL);
    ot_oworker(port, s2, "w2", "--preload", "sim-large", "--gpu-vram-mb", "8192", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 2, 15000) == 0);
    REQUIRE(ot_wait_loaded(c, "w1", "sim-small:latest", 1, 15000) == 0);
    REQUIRE(ot_wait_loaded(c, "w2", "sim-large:latest", 1, 15000) == 0);
    for (int i = 0; i < 6; i++) {
        ot_res_t r;
        ot_gen_t g = {i % 2 ? "sim-large" : "sim-small", "where do I run", NULL, 1, i, 0};
        CHECK_EQ(ot_generate(c, &g, &r), AB_OK);
        CHECK_STR(r.worker, i % 2 ? "w2" : "w1");
    }
    /* the simulators agree: each saw only its own model */
    json_t *j = NULL;
    REQUIRE(ot_http(s1, "/sim/stats", NULL, &j) == 200);
    json_t *m;
    size_t k;
    json_array_foreach(json_object_get(j, "models"), k, m)
    {
        const char *name = json_string_value(json_object_get(m, "name"));
        long long gen = json_integer_value(json_object_get(m, "generate"));
        if (strcmp(name, "sim-small:latest") == 0)
            CHECK_EQ(gen, 1 + 3); /* the preload is a generate request too */
        else
            CHECK_EQ(gen, 0);
    }
    json_decref(j);
    ab_client_destroy(&c);
}

/* The service's only worker is gone (crashed, restarting): a request for a
 * model waits for a worker, as any request to a service whose workers are
 * away does, and the next worker serves it. Before, placement found no
 * capable worker and failed it at once with MODEL_NOT_FOUND ("try pulling
 * it"), which told the user the model did not exist. */
void ollama_worker_gone(void)
{
    int sim = ot_sim(NULL), port = th_free_port();
    th_broker(port, NULL);
    pid_t w1 = ot_oworker(port, sim, "w1", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    th_kill9(w1);
    int gone = 0;
    for (int i = 0; i < 300 && !gone; i++, th_sleep_ms(50))
        gone = th_workers_of(c, "ollama") == 0;
    REQUIRE(gone);
    ot_res_t r;
    ot_gen_t g = {"sim-small", "still there?", NULL, 0, 7, 30000};
    ot_start_gen(c, &g, &r);
    for (int i = 0; i < 10; i++) /* 0.5 s: it must still be waiting */
        ab_client_poll(c, 50);
    CHECK_EQ(r.finals, 0);
    ot_oworker(port, sim, "w2", NULL);
    ot_wait(c, &r, 1, 20000);
    CHECK_EQ(r.status, AB_OK);
    CHECK_STR(r.worker, "w2");
    CHECK_TRUE(r.len > 0);
    ab_client_destroy(&c);
}

/* A model loaded nowhere goes to the GPU whose free VRAM holds it. */
void ollama_placement_vram(void)
{
    const char *models[] = {"--model", "m-small,size=1G", "--model", "m-mid,size=3G", "--model",
                            "m-big,size=5G", "--gpu", "6G"};
    int s1 = ot_sim(models[0], models[1], models[2], models[3], models[4], models[5], models[6],
                   models[7], NULL);
    int s2 = ot_sim(models[0], models[1], models[2], models[3], models[4], models[5], models[6],
                   models[7], NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    /* w1: 5 of 6 GiB used; w2: 1 of 6 GiB used */
    ot_oworker(port, s1, "w1", "--preload", "m-big", "--gpu-vram-mb", "6144", NULL);
    ot_oworker(port, s2, "w2", "--preload", "m-small", "--gpu-vram-mb", "6144", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 2, 15000) == 0);
    REQUIRE(ot_wait_loaded(c, "w1", "m-big:latest", 1, 15000) == 0);
    REQUIRE(ot_wait_loaded(c, "w2", "m-small:latest", 1, 15000) == 0);
    ot_res_t r;
    ot_gen_t g = {"m-mid", "fits where", NULL, 1, 1, 0};
    CHECK_EQ(ot_generate(c, &g, &r), AB_OK);
    CHECK_STR(r.worker, "w2");
    CHECK_EQ(ot_sim_stat(s1, "evictions"), 0); /* nothing was pushed out on w1 */
    ab_client_destroy(&c);
}

/* brokerctl models: preload, load, eviction when VRAM is full, unload. */
static int s_ctl_loaded(int port, const char *worker, const char *model)
{
    char cmd[512], out[16384];
    snprintf(cmd, sizeof cmd, "%s --broker %s models --json", th_bin("brokerctl"), th_ep(port));
    if (th_run(cmd, out, sizeof out) != 0)
        return -1;
    json_t *j = json_loads(out, 0, NULL), *w, *m;
    size_t i, k;
    int found = 0;
    json_array_foreach(json_object_get(j, "workers"), i, w)
    {
        if (strcmp(json_string_value(json_object_get(w, "worker")), worker) != 0)
            continue;
        json_array_foreach(json_object_get(w, "loaded"), k, m)
            found |= strcmp(json_string_value(json_object_get(m, "name")), model) == 0;
    }
    json_decref(j);
    return found;
}

static int s_ctl_wait(int port, const char *worker, const char *model, int want)
{
    for (int i = 0; i < 100; i++) {
        if (s_ctl_loaded(port, worker, model) == want)
            return 0;
        th_sleep_ms(100);
    }
    return -1;
}

void ollama_models_cli(void)
{
    int sim = ot_sim("--model", "m-small,size=1G", "--model", "m-mid,size=2G", "--model",
                    "m-big,size=4G", "--gpu", "6G", NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    ot_oworker(port, sim, "w1", "--preload", "m-small,m-big", "--gpu-vram-mb", "6144", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(th_wait_workers(c, "ollama", 1, 15000) == 0);
    /* preloaded, one after the other */
    CHECK_EQ(s_ctl_wait(port, "w1", "m-small:latest", 1), 0);
    CHECK_EQ(s_ctl_wait(port, "w1", "m-big:latest", 1), 0);
    char cmd[512], out[4096];
    /* 2 GiB more does not fit in 6: the least recently used idle model goes */
    snprintf(cmd, sizeof cmd, "%s --broker %s models load w1 m-mid", th_bin("brokerctl"),
             th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "loaded m-mid on w1") != NULL);
    CHECK_EQ(s_ctl_wait(port, "w1", "m-mid:latest", 1), 0);
    CHECK_EQ(s_ctl_wait(port, "w1", "m-small:latest", 0), 0);
    CHECK_EQ(s_ctl_loaded(port, "w1", "m-big:latest"), 1);
    CHECK_EQ(ot_sim_stat(sim, "evictions"), 1);
    snprintf(cmd, sizeof cmd, "%s --broker %s models unload w1 m-big", th_bin("brokerctl"),
             th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_EQ(s_ctl_wait(port, "w1", "m-big:latest", 0), 0);
    CHECK_EQ(s_ctl_loaded(port, "w1", "m-mid:latest"), 1);
    /* the text view shows the same */
    snprintf(cmd, sizeof cmd, "%s --broker %s models", th_bin("brokerctl"), th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "loaded: m-mid:latest") != NULL);
    /* an unknown worker is a clear error */
    snprintf(cmd, sizeof cmd, "%s --broker %s models load nobody m-mid", th_bin("brokerctl"),
             th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 1);
    CHECK_TRUE(strstr(out, "NOT_FOUND: no worker 'nobody'") != NULL);
    /* models --service S lists the workers of S only (the option was
     * taken and ignored: w1 of 'ollama' listed for 'other') */
    snprintf(cmd, sizeof cmd, "%s --broker %s models --service other", th_bin("brokerctl"),
             th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "w1") == NULL && strstr(out, "no inference workers of 'other'"));
    snprintf(cmd, sizeof cmd, "%s --broker %s models --service ollama", th_bin("brokerctl"),
             th_ep(port));
    CHECK_EQ(th_run(cmd, out, sizeof out), 0);
    CHECK_TRUE(strstr(out, "w1 (") != NULL);
    ab_client_destroy(&c);
}

/* Waits (bounded) until the broker holds worker NAME's model list. */
static int s_wait_models(ab_client_t *c, const char *name)
{
    for (int i = 0; i < 300; i++, th_sleep_ms(50)) {
        Agentbus__WorkerList *wl = NULL;
        const Agentbus__InferenceState *st = ot_state(c, name, &wl, NULL);
        int n = st ? (int)st->n_models : 0;
        if (wl)
            agentbus__worker_list__free_unpacked(wl, NULL);
        if (n > 0)
            return 0;
    }
    return -1;
}

/* The cache key holds the model's digest, so a re-pulled model's old
 * answers are never served (docs/cache.md). Ollama lists "tiny:latest";
 * a client asking for "tiny" got a key without any digest (the names were
 * compared exactly), and the old answer after the re-pull. And while two
 * workers report different digests for the model (a re-pull that reached
 * one server), the answer may come from either: nothing is cached then. */
void ollama_cache_digest(void)
{
    static const char d1[] = "1111111111111111111111111111111111111111111111111111111111111111",
                      d2[] = "2222222222222222222222222222222222222222222222222222222222222222";
    char m1[128], m2[128];
    snprintf(m1, sizeof m1, "tiny,size=256M,digest=%s", d1);
    snprintf(m2, sizeof m2, "tiny,size=256M,digest=%s", d2);
    int s1 = ot_sim("--model", m1, NULL), s2 = ot_sim("--model", m2, NULL);
    int port = th_free_port();
    th_broker(port, NULL);
    pid_t w1 = ot_oworker(port, s1, "w1", NULL);
    ab_client_t *c = th_client(port);
    REQUIRE(s_wait_models(c, "w1") == 0);
    ot_res_t r;
    ot_gen_t p = {"tiny", "before the re-pull", NULL, 0, 7, 30000};
    CHECK_EQ(ot_generate(c, &p, &r), AB_OK);
    CHECK_EQ(ot_generate(c, &p, &r), AB_OK); /* cached */
    CHECK_EQ(ot_sim_stat(s1, "endpoints.generate"), 1);
    /* w2's server has the re-pulled model: the two disagree. */
    ot_oworker(port, s2, "w2", NULL);
    REQUIRE(s_wait_models(c, "w2") == 0);
    ot_gen_t q = {"tiny", "during the re-pull", NULL, 0, 7, 30000};
    CHECK_EQ(ot_generate(c, &q, &r), AB_OK);
    CHECK_EQ(ot_generate(c, &q, &r), AB_OK); /* not cached: either model may answer */
    CHECK_EQ(ot_sim_stat(s1, "endpoints.generate") + ot_sim_stat(s2, "endpoints.generate"), 3);
    /* Only the re-pulled model is left: P's old answer is not served. */
    th_kill9(w1);
    int gone = 0;
    for (int i = 0; i < 300 && !gone; i++, th_sleep_ms(50))
        gone = th_workers_of(c, "ollama") == 1;
    REQUIRE(gone);
    long long before = ot_sim_stat(s2, "endpoints.generate");
    CHECK_EQ(ot_generate(c, &p, &r), AB_OK);
    CHECK_STR(r.worker, "w2");
    CHECK_EQ(ot_sim_stat(s2, "endpoints.generate"), before + 1);
    ab_client_destroy(&c);
}
