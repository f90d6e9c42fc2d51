/*
 * ollama_probe.c - what the Ollama worker tells the broker of its backend:
 * /api/tags, /api/ps and /api/version (and NVML when present) are probed
 * at an interval that starts short and doubles while nothing changes, and
 * sent to the broker as Register.inference for placement. The requests
 * themselves are backend_ollama.c's; both share backend_ollama.h.
 */
#include "backend_ollama.h"
#include "ollama_json.h"
#include "tl_clock.h"
#include "tl_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void wk_ollama_refresh_soon(wk_ollama_t *o)
{
    o->refresh_ms = WK_OLLAMA_REFRESH_MIN_MS;
    if (o->next_refresh_ms > tl_now_ms() + WK_OLLAMA_REFRESH_MIN_MS)
        o->next_refresh_ms = tl_now_ms() + WK_OLLAMA_REFRESH_MIN_MS;
}

static size_t s_on_probe(char *data, size_t size, size_t n, void *arg)
{
    wk_ollama_probe_t *p = arg;
    size_t bytes = size * n;
    if (p->len + bytes > WK_OLLAMA_BODY_MAX) {
        p->over = 1;
        return 0;
    }
    /* Grown by doubling: a realloc to the exact size for each piece curl
     * hands over may copy all of it again each time (8 MiB in 16 KiB
     * pieces: 2 GiB; ASan's realloc always moves, and an ASan worker took
     * past its probe's 5 s on a model list it should refuse at once). */
    if (p->len + bytes + 1 > p->cap) {
        size_t cap = p->cap ? p->cap : 16384;
        while (cap < p->len + bytes + 1)
            cap *= 2;
        if (cap > WK_OLLAMA_BODY_MAX + 1)
            cap = WK_OLLAMA_BODY_MAX + 1;
        char *b = realloc(p->buf, cap);
        if (!b)
            return 0;
        p->buf = b;
        p->cap = cap;
    }
    memcpy(p->buf + p->len, data, bytes);
    p->len += bytes;
    p->buf[p->len] = '\0';
    return bytes;
}

static const char *const s_probe_paths[WK_OLLAMA_NPROBES] = {"/api/tags", "/api/ps",
                                                              "/api/version"};

void wk_ollama_probe_start(wk_ollama_t *o)
{
    for (int i = 0; i < WK_OLLAMA_NPROBES; i++) {
        wk_ollama_probe_t *p = &o->probes[i];
        char url[600];
        snprintf(url, sizeof url, "%s%s", o->url, s_probe_paths[i]);
        p->len = 0;
        p->ok = p->over = 0;
        p->why[0] = '\0';
        p->easy = curl_easy_init();
        if (!p->easy)
            continue;
        curl_easy_setopt(p->easy, CURLOPT_URL, url);
        curl_easy_setopt(p->easy, CURLOPT_WRITEFUNCTION, s_on_probe);
        curl_easy_setopt(p->easy, CURLOPT_WRITEDATA, p);
        curl_easy_setopt(p->easy, CURLOPT_PRIVATE, NULL);
        curl_easy_setopt(p->easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(p->easy, CURLOPT_TIMEOUT_MS, 5000L);
        if (curl_multi_add_handle(o->multi, p->easy) != CURLM_OK) {
            curl_easy_cleanup(p->easy);
            p->easy = NULL;
            continue;
        }
        o->probing++;
    }
}

/* Says when Ollama goes away (and why: unreachable, an HTTP error, a list
 * over the bound; all were "unreachable") and comes back, and reports it
 * to the broker as the backend state (brokerctl workers and watch show it). */
static void s_backend_changed(wk_ollama_t *o, int up, const char *why)
{
    if (up == o->was_up && (up || strcmp(why, o->down_why) == 0))
        return;
    if (!up)
        TL_WARN("backend", "Ollama at %s %s", o->url, why);
    else if (o->was_up == 0)
        TL_INFO("backend", "Ollama at %s is reachable again: backend up", o->url);
    else
        TL_INFO("backend", "Ollama at %s is up (version %s)", o->url,
                o->st.backend_version && *o->st.backend_version ? o->st.backend_version : "?");
    o->was_up = up;
    snprintf(o->down_why, sizeof o->down_why, "%s", up ? "" : why);
    if (o->w)
        ab_worker_set_backend_state(o->w, up ? "ok" : strstr(why, "unreachable")
                                    ? "down: Ollama unreachable" : "down: Ollama answers errors");
}

int wk_ollama_state_send(wk_ollama_t *o)
{
    size_t len = agentbus__inference_state__get_packed_size(&o->st);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return 0;
    agentbus__inference_state__pack(&o->st, buf);
    int changed = len != o->sent_len || memcmp(buf, o->sent, len) != 0;
    if (changed && ab_worker_set_inference_state(o->w, buf, len) == AB_OK) {
        free(o->sent);
        o->sent = buf;
        o->sent_len = len;
        return 1;
    }
    free(buf);
    return 0;
}

/* All probes answered: rebuild the state and tell the broker if it changed. */
static void s_probe_finish(wk_ollama_t *o)
{
    wk_ollama_probe_t *pr = o->probes;
    int up = pr[WK_OLLAMA_TAGS].ok && pr[WK_OLLAMA_PS].ok, tags = 0, ps = 0;
    if (pr[WK_OLLAMA_TAGS].ok)
        tags = wk_ol_parse_tags(pr[WK_OLLAMA_TAGS].buf, pr[WK_OLLAMA_TAGS].len, &o->st);
    if (pr[WK_OLLAMA_PS].ok)
        ps = wk_ol_parse_ps(pr[WK_OLLAMA_PS].buf, pr[WK_OLLAMA_PS].len, &o->st);
    int left_out = (tags > 0 ? tags : 0) + (ps > 0 ? ps : 0);
    if (left_out && left_out != o->left_out) /* said once, not at every probe */
        TL_WARN("backend", "Ollama at %s: %d entr%s of /api/tags and /api/ps left out of what "
                "the worker reports (no name, a name over %d bytes, past %d models or what a "
                "REGISTER holds)", o->url, left_out, left_out == 1 ? "y" : "ies", AB_MODEL_MAX,
                WK_OL_MODELS_MAX);
    o->left_out = left_out;
    if (pr[WK_OLLAMA_VERSION].ok)
        wk_ol_parse_version(pr[WK_OLLAMA_VERSION].buf, pr[WK_OLLAMA_VERSION].len, &o->st);
    o->st.backend_up = up;
    s_backend_changed(o, up, pr[WK_OLLAMA_TAGS].ok ? pr[WK_OLLAMA_PS].why : pr[WK_OLLAMA_TAGS].why);
    if (!o->gpu || wk_gpu_read(o->gpu, &o->st) != 0) {
        uint64_t used = 0;
        for (size_t i = 0; i < o->st.n_loaded; i++)
            used += o->st.loaded[i]->size_vram;
        o->st.vram_total = (uint64_t)o->args.gpu_vram_mb << 20;
        o->st.vram_free = o->st.vram_total > used ? o->st.vram_total - used : 0;
    }
    if (wk_ollama_state_send(o))
        o->refresh_ms = WK_OLLAMA_REFRESH_MIN_MS;
    else
        o->refresh_ms *= 2;
    if (o->refresh_ms > o->args.refresh_ms)
        o->refresh_ms = o->args.refresh_ms;
    o->next_refresh_ms = tl_now_ms() + o->refresh_ms;
}

int wk_ollama_probe_done(wk_ollama_t *o, CURL *easy, CURLcode res)
{
    for (int i = 0; i < WK_OLLAMA_NPROBES; i++) {
        wk_ollama_probe_t *p = &o->probes[i];
        if (p->easy != easy)
            continue;
        long status = 0;
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
        p->ok = res == CURLE_OK && status == 200;
        if (p->over)
            snprintf(p->why, sizeof p->why, "sent a model list (%s) over %u MiB: backend down",
                     s_probe_paths[i], WK_OLLAMA_BODY_MAX >> 20);
        else if (status && status != 200)
            snprintf(p->why, sizeof p->why, "answered HTTP %ld to %s: backend down", status,
                     s_probe_paths[i]);
        else if (!p->ok)
            snprintf(p->why, sizeof p->why, "is unreachable: backend down (%s)",
                     curl_easy_strerror(res));
        curl_multi_remove_handle(o->multi, easy);
        curl_easy_cleanup(easy);
        p->easy = NULL;
        if (--o->probing == 0)
            s_probe_finish(o);
        return 1;
    }
    return 0;
}

void wk_ollama_probes_free(wk_ollama_t *o)
{
    for (int i = 0; i < WK_OLLAMA_NPROBES; i++) {
        if (o->probes[i].easy) {
            curl_multi_remove_handle(o->multi, o->probes[i].easy);
            curl_easy_cleanup(o->probes[i].easy);
        }
        free(o->probes[i].buf);
        o->probes[i].easy = NULL;
        o->probes[i].buf = NULL;
        o->probes[i].cap = 0;
    }
}
