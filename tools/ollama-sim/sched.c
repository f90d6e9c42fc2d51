/*
 * sched.c - the simulated GPU side: models placed on GPUs by VRAM, least
 * recently used idle models evicted to make room, NUM_PARALLEL slots per
 * model, one FIFO queue bounded by MAX_QUEUE, loads that take time, and
 * keep-alive expiry. A slot is granted as soon as the model is loading or
 * loaded; the holder then waits for the load to finish itself, so a
 * request that is loading its model counts as active, not queued (as in
 * Ollama, where the scheduler takes the request off the pending queue
 * before it loads the runner).
 *
 * Everything here runs under s->lock except the waits.
 */
#include "sim.h"

#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

static bool s_idle(const sim_model_t *m)
{
    return m->state == SIM_LOADED && m->active == 0 && m->queued == 0;
}

static void s_unload(sim_t *s, sim_model_t *m, int64_t now)
{
    if (m->gpu >= 0)
        s->gpus[m->gpu].used -= m->size;
    if (m->state == SIM_LOADED)
        m->loaded_ns += now - m->loaded_since;
    m->state = SIM_UNLOADED;
    m->unload_pending = false;
    m->gpu = -1;
    m->expires = SIM_FOREVER;
    s->st.unloads++;
}

static int s_loaded_count(const sim_t *s)
{
    int n = 0;
    for (int i = 0; i < s->n_models; i++)
        n += s->models[i].state != SIM_UNLOADED;
    return n;
}

/* The least recently used idle model on GPU g (any GPU if g < 0). */
static sim_model_t *s_lru_idle(sim_t *s, int g, const sim_model_t *skip)
{
    sim_model_t *best = NULL;
    for (int i = 0; i < s->n_models; i++) {
        sim_model_t *m = &s->models[i];
        if (m == skip || !s_idle(m) || (g >= 0 && m->gpu != g))
            continue;
        if (!best || m->last_used < best->last_used)
            best = m;
    }
    return best;
}

/* How many idle models GPU g must evict for M to fit; -1 if it cannot. */
static int s_evictions_needed(sim_t *s, int g, const sim_model_t *m)
{
    uint64_t free_b = s->gpus[g].vram - s->gpus[g].used;
    if (free_b >= m->size)
        return 0;
    /* Idle models of this GPU, oldest first: simulate evicting them. */
    sim_model_t *cand[SIM_MAX_MODELS];
    int n = 0;
    for (int i = 0; i < s->n_models; i++)
        if (s_idle(&s->models[i]) && s->models[i].gpu == g)
            cand[n++] = &s->models[i];
    for (int i = 1; i < n; i++)   /* insertion sort by last_used; n is small */
        for (int j = i; j > 0 && cand[j]->last_used < cand[j - 1]->last_used; j--) {
            sim_model_t *t = cand[j];
            cand[j] = cand[j - 1];
            cand[j - 1] = t;
        }
    for (int i = 0; i < n; i++) {
        free_b += cand[i]->size;
        if (free_b >= m->size)
            return i + 1;
    }
    return -1;
}

/* Starts loading M if some GPU can take it now. 0 or -1 (must wait). */
static int s_place(sim_t *s, sim_model_t *m, int64_t now)
{
    if (s->max_loaded_models > 0 && s_loaded_count(s) >= s->max_loaded_models) {
        sim_model_t *v = s_lru_idle(s, -1, m);
        if (!v)
            return -1;
        s_unload(s, v, now);
        v->evictions++;
        s->st.evictions++;
    }
    int best = -1, best_ev = 0;
    uint64_t best_free = 0;
    for (int g = 0; g < s->n_gpus; g++) {
        int ev = s_evictions_needed(s, g, m);
        uint64_t free_b = s->gpus[g].vram - s->gpus[g].used;
        if (ev < 0)
            continue;
        if (best < 0 || ev < best_ev || (ev == best_ev && free_b > best_free)) {
            best = g;
            best_ev = ev;
            best_free = free_b;
        }
    }
    if (best < 0)
        return -1;
    while (s->gpus[best].vram - s->gpus[best].used < m->size) {
        sim_model_t *v = s_lru_idle(s, best, m);
        if (!v)
            return -1;   /* cannot happen: s_evictions_needed said it fits */
        s_unload(s, v, now);
        v->evictions++;
        s->st.evictions++;
    }
    s->gpus[best].used += m->size;
    m->gpu = best;
    m->state = SIM_LOADING;
    m->load_done = now + sim_scaled_ns(s, m->load_ms);
    m->expires = SIM_FOREVER;
    m->loads++;
    s->st.loads++;
    return 0;
}

static void s_unlink(sim_t *s, sim_job_t *j)
{
    if (j->prev) j->prev->next = j->next; else s->q_head = j->next;
    if (j->next) j->next->prev = j->prev; else s->q_tail = j->prev;
    j->prev = j->next = NULL;
    j->in_queue = false;
    j->model->queued--;
    s->n_queued--;
}

static bool s_grant(sim_t *s, sim_job_t *j, int64_t now)
{
    sim_model_t *m = j->model;
    for (int i = 0; i < m->num_parallel; i++) {
        if (m->slots[i].busy)
            continue;
        m->slots[i].busy = true;
        m->slots[i].busy_since = now;
        m->slots[i].requests++;
        j->slot = i;
        j->granted = true;
        j->granted_at = now;
        m->active++;
        s->n_active++;
        m->keep_alive_ns = j->keep_alive_ns;
        m->last_used = now;
        m->expires = SIM_FOREVER;
        return true;
    }
    return false;
}

/* Gives free slots to queued jobs in arrival order; starts loads. */
static void s_dispatch(sim_t *s)
{
    int64_t now = sim_now();
    sim_job_t *j = s->q_head;
    while (j) {
        sim_job_t *next = j->next;
        sim_model_t *m = j->model;
        if (m->state == SIM_UNLOADED)
            s_place(s, m, now);
        if (m->state != SIM_UNLOADED && s_grant(s, j, now)) {
            s_unlink(s, j);
            uint64_t one = 1;
            if (write(j->efd, &one, sizeof one) < 0)
                perror("ollama-sim: eventfd");
        }
        j = next;
    }
    pthread_cond_signal(&s->wake);
}

int64_t sim_sched_expiry(const sim_t *s, const sim_model_t *m, int64_t now)
{
    if (m->keep_alive_ns < 0)
        return SIM_FOREVER;
    int64_t ka = sim_scaled_ns(s, (double)m->keep_alive_ns / 1e6);   /* time scale applies */
    return ka >= SIM_FOREVER - now ? SIM_FOREVER : now + ka;
}

/* Expiry of an idle model: its last request's keep_alive from now. */
static void s_arm_expiry(const sim_t *s, sim_model_t *m, int64_t now)
{
    m->expires = sim_sched_expiry(s, m, now);
}

sim_q_t sim_sched_enqueue(sim_t *s, sim_job_t *job)
{
    pthread_mutex_lock(&s->lock);
    job->prev = NULL;
    job->next = NULL;
    job->in_queue = true;
    job->granted = false;
    job->slot = -1;
    if (s->q_tail) s->q_tail->next = job, job->prev = s->q_tail;
    else s->q_head = job;
    s->q_tail = job;
    job->model->queued++;
    s->n_queued++;
    s_dispatch(s);
    sim_q_t rc = SIM_Q_GRANTED;
    if (job->in_queue) {
        if (s->n_queued > s->max_queue) {
            s_unlink(s, job);
            rc = SIM_Q_BUSY;
        } else {
            rc = SIM_Q_WAITING;
            if ((uint64_t)s->n_queued > s->st.max_queued)
                s->st.max_queued = (uint64_t)s->n_queued;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static void s_load_complete(sim_t *s, sim_model_t *m, int64_t now)
{
    m->state = SIM_LOADED;
    m->loaded_since = now;
    m->load_ns += now - (m->load_done - sim_scaled_ns(s, m->load_ms));
    m->last_used = now;
    if (m->active == 0)
        m->expires = m->unload_pending ? now : sim_sched_expiry(s, m, now);
}

int sim_sched_wait(sim_t *s, sim_job_t *job, int client_fd)
{
    for (;;) {
        pthread_mutex_lock(&s->lock);
        /* The load's time is up: it is loaded for everyone from now on,
         * not only once the scheduler thread gets to it. */
        int64_t now = sim_now();
        if (job->granted && job->model->state == SIM_LOADING && job->model->load_done <= now)
            s_load_complete(s, job->model, now);
        bool granted = job->granted;
        int64_t ready = job->model->load_done;
        sim_state_t st = job->model->state;
        pthread_mutex_unlock(&s->lock);
        sim_wait_t w;
        if (!granted) {
            w = sim_wait(s, client_fd, job->efd, -1);
            if (w == SIM_WAIT_EVENT) {
                uint64_t v;
                if (read(job->efd, &v, sizeof v) < 0)
                    perror("ollama-sim: eventfd");
                continue;
            }
        } else if (st == SIM_LOADING) {
            /* Round again once the load's time is up: the top of the loop
             * marks it loaded under the lock, so the answer never goes out
             * while /api/ps still shows the model as loading (the time
             * can pass between the unlock above and this check). */
            int64_t left = ready - sim_now();
            if (left <= 0)
                continue;
            w = sim_wait(s, client_fd, -1, left);
            if (w == SIM_WAIT_TIMEOUT)
                continue;
        } else {
            return 0;
        }
        job->gone_queued = !granted;
        sim_sched_release(s, job);
        return (int)w;
    }
}

void sim_sched_release(sim_t *s, sim_job_t *job)
{
    pthread_mutex_lock(&s->lock);
    int64_t now = sim_now();
    if (job->in_queue) {
        s_unlink(s, job);
    } else if (job->granted) {
        sim_model_t *m = job->model;
        sim_slot_t *sl = &m->slots[job->slot];
        sl->busy = false;
        sl->busy_ns += now - sl->busy_since;
        job->granted = false;
        m->active--;
        s->n_active--;
        m->last_used = now;
        m->keep_alive_ns = job->keep_alive_ns;
        if (m->active == 0) {
            s_arm_expiry(s, m, now);
            if ((m->keep_alive_ns == 0 || m->unload_pending) && m->queued == 0 &&
                m->state == SIM_LOADED) {
                s_unload(s, m, now);
                s->st.expirations++;
            }
        }
    }
    s_dispatch(s);
    pthread_mutex_unlock(&s->lock);
}

void sim_sched_unload(sim_t *s, sim_model_t *m)
{
    pthread_mutex_lock(&s->lock);
    m->keep_alive_ns = 0;
    if (s_idle(m)) {
        s_unload(s, m, sim_now());
        s->st.expirations++;
        s_dispatch(s);
    } else if (m->state != SIM_UNLOADED) {
        /* Busy or loading: unloaded when its last request ends (release)
         * or, if none holds it, when the load completes (scheduler thread). */
        m->unload_pending = true;
    }
    pthread_mutex_unlock(&s->lock);
}

uint64_t sim_sched_max_vram(const sim_t *s)
{
    uint64_t v = 0;
    for (int g = 0; g < s->n_gpus; g++)
        if (s->gpus[g].vram > v)
            v = s->gpus[g].vram;
    return v;
}

/* Completes loads and expires idle models, sleeping until the next of
 * those instants or until someone changes the state. */
static void *s_thread(void *arg)
{
    sim_t *s = arg;
    pthread_mutex_lock(&s->lock);
    while (!s->stopping) {
        int64_t now = sim_now();
        int64_t next = SIM_FOREVER;
        bool changed = false;
        for (int i = 0; i < s->n_models; i++) {
            sim_model_t *m = &s->models[i];
            if (m->state == SIM_LOADING) {
                if (m->load_done <= now) {
                    s_load_complete(s, m, now);
                    changed = true;
                } else if (m->load_done < next) {
                    next = m->load_done;
                }
            }
            if (m->state == SIM_LOADED && s_idle(m)) {
                if (m->expires <= now) {
                    s_unload(s, m, now);
                    s->st.expirations++;
                    changed = true;
                } else if (m->expires < next) {
                    next = m->expires;
                }
            }
        }
        if (changed) {
            s_dispatch(s);
            continue;
        }
        if (next == SIM_FOREVER) {
            pthread_cond_wait(&s->wake, &s->lock);
        } else {
            struct timespec ts = {.tv_sec = next / 1000000000LL, .tv_nsec = next % 1000000000LL};
            pthread_cond_timedwait(&s->wake, &s->lock, &ts);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

int sim_sched_start(sim_t *s)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->wake, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&s->lock, NULL);
    s->shutdown_fd = eventfd(0, EFD_CLOEXEC);
    if (s->shutdown_fd < 0)
        return -1;
    s->started = sim_now();
    s->st.since = s->started;
    s->rng = s->seed * 0x9e3779b97f4a7c15ULL + 1;
    sim_rfc3339(s->started_at, sizeof s->started_at, s->started);
    return pthread_create(&s->sched_thread, NULL, s_thread, s) == 0 ? 0 : -1;
}

void sim_sched_stop(sim_t *s)
{
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->sched_thread, NULL);
    close(s->shutdown_fd);
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->lock);
}
