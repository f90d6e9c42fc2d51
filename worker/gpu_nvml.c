/*
 * gpu_nvml.c - the few NVML calls the worker needs, resolved with dlsym.
 *
 * The prototypes below are NVML's documented C ABI (nvml.h), declared here
 * so building needs no CUDA headers. Only plain integers, opaque handles
 * and two small structs cross the boundary.
 */
#include "gpu_nvml.h"
#include "agentbus.pb-c.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

typedef void *s_dev_t;
typedef struct {
    unsigned long long total, free, used;
} s_mem_t;
typedef struct {
    unsigned int gpu, memory;
} s_util_t;

struct wk_gpu {
    void *lib;
    int (*init)(void);
    int (*shutdown)(void);
    int (*count)(unsigned int *);
    int (*handle)(unsigned int, s_dev_t *);
    int (*mem)(s_dev_t, s_mem_t *);
    int (*temp)(s_dev_t, int, unsigned int *);
    int (*util)(s_dev_t, s_util_t *);
    int (*name)(s_dev_t, char *, unsigned int);
};

wk_gpu_t *wk_gpu_open(void)
{
    void *lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib)
        lib = dlopen("libnvidia-ml.so", RTLD_NOW | RTLD_LOCAL);
    if (!lib)
        return NULL;
    wk_gpu_t *g = calloc(1, sizeof *g);
    if (!g) {
        dlclose(lib);
        return NULL;
    }
    g->lib = lib;
    /* POSIX lets a void* from dlsym be converted to a function pointer. */
    *(void **)&g->init = dlsym(lib, "nvmlInit_v2");
    *(void **)&g->shutdown = dlsym(lib, "nvmlShutdown");
    *(void **)&g->count = dlsym(lib, "nvmlDeviceGetCount_v2");
    *(void **)&g->handle = dlsym(lib, "nvmlDeviceGetHandleByIndex_v2");
    *(void **)&g->mem = dlsym(lib, "nvmlDeviceGetMemoryInfo");
    *(void **)&g->temp = dlsym(lib, "nvmlDeviceGetTemperature");
    *(void **)&g->util = dlsym(lib, "nvmlDeviceGetUtilizationRates");
    *(void **)&g->name = dlsym(lib, "nvmlDeviceGetName");
    if (!g->init || !g->shutdown || !g->count || !g->handle || !g->mem || g->init() != 0) {
        dlclose(lib);
        free(g);
        return NULL;
    }
    return g;
}

void wk_gpu_close(wk_gpu_t **gp)
{
    if (!gp || !*gp)
        return;
    (*gp)->shutdown();
    dlclose((*gp)->lib);
    free(*gp);
    *gp = NULL;
}

int wk_gpu_read(wk_gpu_t *g, Agentbus__InferenceState *st)
{
    unsigned int n = 0;
    if (!g || g->count(&n) != 0)
        return -1;
    if (n > 64)
        n = 64;
    Agentbus__GpuInfo **v = calloc(n + 1, sizeof *v);
    if (!v)
        return -1;
    uint64_t total = 0, used = 0;
    unsigned int k = 0;
    for (unsigned int i = 0; i < n; i++) {
        s_dev_t d;
        s_mem_t m;
        if (g->handle(i, &d) != 0 || g->mem(d, &m) != 0)
            continue;
        Agentbus__GpuInfo *x = malloc(sizeof *x);
        if (!x)
            break;
        agentbus__gpu_info__init(x);
        char name[96] = "";
        if (g->name)
            g->name(d, name, sizeof name);
        name[sizeof name - 1] = '\0';
        x->name = strdup(name);
        x->index = i;
        x->memory_total = m.total;
        x->memory_used = m.used;
        unsigned int t = 0;
        s_util_t u = {0, 0};
        if (g->temp && g->temp(d, 0 /* NVML_TEMPERATURE_GPU */, &t) == 0)
            x->temperature_c = t;
        if (g->util && g->util(d, &u) == 0)
            x->utilization_pct = u.gpu;
        total += m.total;
        used += m.used;
        v[k++] = x;
    }
    for (size_t i = 0; i < st->n_gpus; i++) {
        free(st->gpus[i]->name);
        free(st->gpus[i]);
    }
    free(st->gpus);
    st->gpus = v;
    st->n_gpus = k;
    st->vram_total = total;
    st->vram_free = total - used;
    return 0;
}
