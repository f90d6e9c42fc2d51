/*
 * gpu_nvml.h - GPU state from NVIDIA's NVML, loaded at run time with
 * dlopen so the worker neither links against it nor needs it: on a machine
 * without an NVIDIA driver (like the CI machines) wk_gpu_open fails quietly
 * and the worker reports no GPUs.
 */
#ifndef WK_GPU_NVML_H
#define WK_GPU_NVML_H

typedef struct wk_gpu wk_gpu_t;
struct Agentbus__InferenceState;

/* NULL when NVML is absent or does not initialise (normal without a GPU). */
wk_gpu_t *wk_gpu_open(void);
void wk_gpu_close(wk_gpu_t **g);
/* Replaces ST's gpus with the current memory, temperature and utilisation
 * of every device; sets vram_total/vram_free from them. 0 or -1. */
int wk_gpu_read(wk_gpu_t *g, struct Agentbus__InferenceState *st);

#endif
