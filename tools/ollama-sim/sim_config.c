/*
 * config.c - ollama-sim's settings: built-in defaults, then the JSON config
 * file, then Ollama's own environment variables, then flags. Every error
 * names the offending option; unknown keys are errors so typos show.
 */
#include "sim.h"
#include "parse.h"

#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void s_usage(FILE *out)
{
    fprintf(out,
            "usage: ollama-sim --port N [--config FILE] [--time-scale X] [options]\n"
            "  --num-parallel N  --max-queue N  --max-loaded-models N  --keep-alive DUR\n"
            "  --max-body-bytes N  --max-connections N  --seed N  --version-string S\n"
            "  --gpu VRAM (repeatable)  --model NAME[,key=value...] (repeatable)\n"
            "  --fault-KEY VALUE for every key of /sim/faults (e.g. --fault-error-rate 0.5)\n"
            "  --quiet  --help, -h  --version (prints \"ollama-sim VERSION\"; --version-string S\n"
            "  sets the Ollama version the simulator reports)\n"
            "Numbers are decimal (1.5, 2e3; sizes and durations with a suffix: 8G, 10s);\n"
            "hex, a leading blank or '+', inf and nan are refused (exit 2).\n"
            "See docs/ollama-sim.md.\n");
}

static void s_normalize(const char *in, char *out, size_t cap)
{
    /* Names are checked shorter than the buffers; a cut one just won't match. */
    if (snprintf(out, cap, "%s%s", in, strchr(in, ':') ? "" : ":latest") >= (int)cap)
        out[cap - 1] = '\0';
}

sim_model_t *sim_model_find(sim_t *s, const char *name)
{
    char want[160];
    s_normalize(name, want, sizeof want);
    for (int i = 0; i < s->n_models; i++)
        if (strcmp(s->models[i].name, want) == 0)
            return &s->models[i];
    return NULL;
}

static void s_model_defaults(sim_model_t *m)
{
    memset(m, 0, sizeof *m);
    snprintf(m->family, sizeof m->family, "llama");
    snprintf(m->parameter_size, sizeof m->parameter_size, "1B");
    snprintf(m->quantization_level, sizeof m->quantization_level, "Q4_K_M");
    m->size = 1ULL << 30;
    m->load_ms = 500;
    m->prefill_tps = 2000;
    m->token_ms = 10;
    m->reply_tokens = 24;
    m->embedding_length = 384;
    m->gpu = -1;
}

static int s_str_field(const json_t *v, char *dst, size_t cap, const char *what)
{
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) >= cap) {
        fprintf(stderr, "ollama-sim: model %s must be a non-empty string shorter than %zu\n",
                what, cap);
        return -1;
    }
    memcpy(dst, json_string_value(v), json_string_length(v) + 1);
    return 0;
}

static int s_num_field(const json_t *v, double lo, double hi, double *out, const char *what)
{
    double x;
    if (json_is_number(v))
        x = json_number_value(v);
    else if (json_is_string(v) && /* --model's key=value: decimal only (sscanf took "0x10", "5x") */
             ab_parse_double(json_string_value(v), -HUGE_VAL, HUGE_VAL, &x) == 0)
        ;
    else
        x = NAN;
    if (!(x >= lo && x <= hi)) {
        fprintf(stderr, "ollama-sim: model %s must be a number in [%g, %g]\n", what, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

static int s_model_from_json(sim_model_t *m, const json_t *o)
{
    s_model_defaults(m);
    if (!json_is_object(o)) {
        fprintf(stderr, "ollama-sim: each model must be a JSON object\n");
        return -1;
    }
    const char *key;
    json_t *v;
    double x = 0; /* s_num_field sets it only on success */
    json_object_foreach((json_t *)o, key, v) {
        int rc = 0;
        if (strcmp(key, "name") == 0) {
            char raw[128];
            rc = s_str_field(v, raw, sizeof raw - 8, "name");
            if (rc == 0)
                s_normalize(raw, m->name, sizeof m->name);
        } else if (strcmp(key, "digest") == 0)
            rc = s_str_field(v, m->digest, sizeof m->digest, "digest");
        else if (strcmp(key, "family") == 0)
            rc = s_str_field(v, m->family, sizeof m->family, "family");
        else if (strcmp(key, "parameter_size") == 0)
            rc = s_str_field(v, m->parameter_size, sizeof m->parameter_size, "parameter_size");
        else if (strcmp(key, "quantization_level") == 0)
            rc = s_str_field(v, m->quantization_level, sizeof m->quantization_level,
                             "quantization_level");
        else if (strcmp(key, "size") == 0) {
            if (json_is_string(v))
                rc = sim_parse_size(json_string_value(v), &m->size);
            else if (json_is_number(v) && json_number_value(v) > 0)
                m->size = (uint64_t)json_number_value(v);
            else
                rc = -1;
            if (rc != 0 || m->size == 0) {
                fprintf(stderr,
                        "ollama-sim: model size must be bytes > 0 (suffix K/M/G allowed)\n");
                rc = -1;
            }
        } else if (strcmp(key, "load_ms") == 0)
            rc = s_num_field(v, 0, 1e9, &m->load_ms, key);
        else if (strcmp(key, "prefill_tps") == 0)
            rc = s_num_field(v, 1e-3, 1e12, &m->prefill_tps, key);
        else if (strcmp(key, "token_ms") == 0)
            rc = s_num_field(v, 0, 1e9, &m->token_ms, key);
        else if (strcmp(key, "reply_tokens") == 0) {
            rc = s_num_field(v, 0, SIM_MAX_TOKENS, &x, key);
            m->reply_tokens = (int)x;
        } else if (strcmp(key, "embedding_length") == 0) {
            rc = s_num_field(v, 1, SIM_MAX_EMBED_DIM, &x, key);
            m->embedding_length = (int)x;
        } else if (strcmp(key, "num_parallel") == 0) {
            rc = s_num_field(v, 1, SIM_MAX_PARALLEL, &x, key);
            m->num_parallel = (int)x;
        } else if (strcmp(key, "thinking") == 0) {
            if (json_is_boolean(v))
                x = json_is_true(v);
            else
                rc = s_num_field(v, 0, 1, &x, key);
            m->thinking = x != 0;
        } else {
            fprintf(stderr, "ollama-sim: unknown model key \"%s\"\n", key);
            rc = -1;
        }
        if (rc != 0)
            return -1;
    }
    if (!m->name[0]) {
        fprintf(stderr, "ollama-sim: a model needs a \"name\"\n");
        return -1;
    }
    if (!m->digest[0]) {
        /* Looks like a sha256 (64 hex) and is stable per name. */
        uint64_t st = sim_hash(SIM_HASH0, m->name, strlen(m->name));
        for (int i = 0; i < 4; i++)
            snprintf(m->digest + i * 16, sizeof m->digest - (size_t)i * 16, "%016llx",
                     (unsigned long long)sim_rand(&st));
    }
    return 0;
}

static int s_add_model(sim_t *s, const json_t *o)
{
    if (s->n_models >= SIM_MAX_MODELS) {
        fprintf(stderr, "ollama-sim: at most %d models\n", SIM_MAX_MODELS);
        return -1;
    }
    sim_model_t *m = &s->models[s->n_models];
    if (s_model_from_json(m, o) != 0)
        return -1;
    for (int i = 0; i < s->n_models; i++)
        if (strcmp(s->models[i].name, m->name) == 0) {
            fprintf(stderr, "ollama-sim: model \"%s\" given twice\n", m->name);
            return -1;
        }
    s->n_models++;
    return 0;
}

static int s_add_gpu(sim_t *s, const char *txt)
{
    uint64_t v;
    if (s->n_gpus >= SIM_MAX_GPUS || sim_parse_size(txt, &v) != 0 || v == 0) {
        fprintf(stderr, "ollama-sim: --gpu wants VRAM bytes > 0 (K/M/G suffix), at most %d GPUs\n",
                SIM_MAX_GPUS);
        return -1;
    }
    s->gpus[s->n_gpus++] = (sim_gpu_t){.vram = v};
    return 0;
}

void sim_config_defaults(sim_t *s)
{
    s->port = 11434;
    s->time_scale = 1.0;
    s->num_parallel = 1;
    s->max_queue = 512;
    s->max_loaded_models = 0;
    s->keep_alive_ns = 300LL * 1000000000LL;
    s->max_body_bytes = 1 << 20;
    s->max_connections = 1024;
    s->seed = 1;
    snprintf(s->version, sizeof s->version, "0.5.7");
    sim_faults_defaults(&s->faults);
}

static void s_builtin_models(sim_t *s)
{
    static const char *specs[] = {
        "{\"name\":\"sim-small\",\"size\":\"1G\",\"parameter_size\":\"1B\",\"load_ms\":500,"
        "\"prefill_tps\":2000,\"token_ms\":10,\"reply_tokens\":24,\"embedding_length\":384,"
        "\"thinking\":true}",
        "{\"name\":\"sim-large\",\"size\":\"5G\",\"parameter_size\":\"8B\",\"load_ms\":2000,"
        "\"prefill_tps\":500,\"token_ms\":40,\"reply_tokens\":48,\"embedding_length\":1024}",
        "{\"name\":\"sim-embed\",\"size\":\"256M\",\"family\":\"bert\",\"parameter_size\":\"137M\","
        "\"quantization_level\":\"F16\",\"load_ms\":200,\"prefill_tps\":8000,\"token_ms\":5,"
        "\"reply_tokens\":8,\"embedding_length\":768}",
    };
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
        json_t *o = json_loads(specs[i], 0, NULL);
        s_add_model(s, o);
        json_decref(o);
    }
}

/* Converts "NAME,key=value,..." into the JSON object a config would hold. */
static json_t *s_model_spec(const char *spec)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", spec);
    json_t *o = json_object();
    char *save = NULL;
    char *tok = strtok_r(buf, ",", &save);
    /* NAME first: strtok skips an empty one, so ",size=8G" made a model
     * named "size=8G". */
    if (!tok || spec[0] == ',' || strchr(tok, '=')) {
        json_decref(o);
        return NULL;
    }
    /* json_string is NULL for text that is not UTF-8: the name was then
     * "missing" and a key=value left out without a word. */
    if (json_object_set_new(o, "name", json_string(tok)) != 0) {
        fprintf(stderr, "ollama-sim: --model: the name is not UTF-8 text\n");
        json_decref(o);
        return NULL;
    }
    while ((tok = strtok_r(NULL, ",", &save))) {
        char *eq = strchr(tok, '=');
        if (!eq) {
            json_decref(o);
            return NULL;
        }
        *eq = '\0';
        if (json_object_set_new(o, tok, json_string(eq + 1)) != 0) {
            fprintf(stderr, "ollama-sim: --model: %s is not UTF-8 text\n", tok);
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

static int s_int_opt(const char *name, const char *v, long lo, long hi, long *out)
{
    long x;
    if (ab_parse_long(v, lo, hi, &x) != 0) { /* decimal only: strtol took " 5" and "+5" */
        fprintf(stderr, "ollama-sim: %s wants an integer in [%ld, %ld], got \"%s\"\n",
                name, lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

static const char s_printable[] = " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                  "[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";

/* Settings shared by the config file, the environment and the flags. */
static int s_set_option(sim_t *s, const char *name, const char *v)
{
    long x;
    if (strcmp(name, "port") == 0) {
        if (s_int_opt("--port", v, 0, 65535, &x)) return -1;
        s->port = (int)x;
    } else if (strcmp(name, "time_scale") == 0) {
        double d;
        /* decimal only: strtod took "0x10" (16), " 5" and "+5" */
        if (ab_parse_double(v, 0, 1e6, &d) != 0 || d <= 0) {
            fprintf(stderr, "ollama-sim: --time-scale wants a number in (0, 1e6], got \"%s\"\n", v);
            return -1;
        }
        s->time_scale = d;
    } else if (strcmp(name, "num_parallel") == 0) {
        if (s_int_opt("--num-parallel", v, 1, SIM_MAX_PARALLEL, &x)) return -1;
        s->num_parallel = (int)x;
    } else if (strcmp(name, "max_queue") == 0) {
        if (s_int_opt("--max-queue", v, 0, 1000000, &x)) return -1;
        s->max_queue = (int)x;
    } else if (strcmp(name, "max_loaded_models") == 0) {
        if (s_int_opt("--max-loaded-models", v, 0, SIM_MAX_MODELS, &x)) return -1;
        s->max_loaded_models = (int)x;
    } else if (strcmp(name, "keep_alive") == 0) {
        if (sim_parse_duration(v, &s->keep_alive_ns) != 0) {
            fprintf(stderr,
                    "ollama-sim: --keep-alive wants a duration (5m, 10s, 300ms, -1), got \"%s\"\n",
                    v);
            return -1;
        }
    } else if (strcmp(name, "max_body_bytes") == 0) {
        uint64_t b;
        if (sim_parse_size(v, &b) != 0 || b < 64 || b > (1ULL << 30)) {
            fprintf(stderr, "ollama-sim: --max-body-bytes wants 64..1G, got \"%s\"\n", v);
            return -1;
        }
        s->max_body_bytes = (size_t)b;
    } else if (strcmp(name, "max_connections") == 0) {
        if (s_int_opt("--max-connections", v, 1, 100000, &x)) return -1;
        s->max_connections = (int)x;
    } else if (strcmp(name, "seed") == 0) {
        if (s_int_opt("--seed", v, 0, 0x7fffffffL, &x)) return -1;
        s->seed = (uint64_t)x;
    } else if (strcmp(name, "version") == 0) {
        /* JSON text: one that is not UTF-8 failed every GET /api/version;
         * "" was said to be "too long" */
        size_t n = strlen(v);
        if (n >= sizeof s->version || !n || strspn(v, s_printable) != n) {
            fprintf(stderr,
                    "ollama-sim: --version-string wants 1..%zu printable ASCII characters, "
                    "got \"%s\"\n", sizeof s->version - 1, v);
            return -1;
        }
        snprintf(s->version, sizeof s->version, "%s", v);
    } else {
        fprintf(stderr, "ollama-sim: unknown option \"%s\"\n", name);
        return -1;
    }
    return 0;
}

static int s_load_file(sim_t *s, const char *path)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root && jerr.line < 1) { /* not read at all: there is no line to name */
        fprintf(stderr, "ollama-sim: --config %s: %s\n", path, jerr.text);
        return -1;
    }
    if (!root) {
        fprintf(stderr, "ollama-sim: --config %s: %s (line %d)\n", path, jerr.text, jerr.line);
        return -1;
    }
    if (!json_is_object(root)) { /* parsed whole: no line to name ("line -1" was said) */
        fprintf(stderr, "ollama-sim: --config %s: not a JSON object ({\"key\": value, ...})\n",
                path);
        json_decref(root);
        return -1;
    }
    int rc = 0;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "models") == 0) {
            if (!json_is_array(v)) {
                fprintf(stderr, "ollama-sim: --config %s: models must be an array\n", path);
                rc = -1;
                break;
            }
            size_t i;
            json_t *m;
            json_array_foreach(v, i, m) if (rc == 0 && s_add_model(s, m) != 0) rc = -1;
        } else if (strcmp(key, "gpus") == 0) {
            size_t i;
            json_t *g;
            if (!json_is_array(v)) {
                rc = -1;
            } else {
                json_array_foreach(v, i, g) {
                    json_t *vr = json_object_get(g, "vram");
                    char txt[64];
                    if (json_is_integer(vr))
                        snprintf(txt, sizeof txt, "%lld", (long long)json_integer_value(vr));
                    else if (json_is_string(vr))
                        snprintf(txt, sizeof txt, "%s", json_string_value(vr));
                    else
                        snprintf(txt, sizeof txt, "bad");
                    if (json_object_size(g) != 1 || s_add_gpu(s, txt) != 0)
                        rc = -1;
                }
            }
            if (rc != 0)
                fprintf(stderr, "ollama-sim: --config %s: gpus must be [{\"vram\": bytes}, ...]\n",
                        path);
        } else if (strcmp(key, "faults") == 0) {
            char err[256];
            if (sim_faults_apply(&s->faults, v, err, sizeof err) != 0) {
                fprintf(stderr, "ollama-sim: --config %s: %s\n", path, err);
                rc = -1;
            }
        } else {
            char txt[256];
            if (json_is_string(v))
                snprintf(txt, sizeof txt, "%s", json_string_value(v));
            else if (json_is_integer(v))
                snprintf(txt, sizeof txt, "%lld", (long long)json_integer_value(v));
            else if (json_is_real(v))
                snprintf(txt, sizeof txt, "%.17g", json_real_value(v));
            else
                snprintf(txt, sizeof txt, "<bad>");
            if (s_set_option(s, key, txt) != 0) {
                fprintf(stderr, "ollama-sim: --config %s: bad key \"%s\"\n", path, key);
                rc = -1;
            }
        }
        if (rc != 0)
            break;
    }
    json_decref(root);
    return rc;
}

/* A --fault-x-y VALUE flag becomes {"x_y": VALUE} with the type the key wants. */
static int s_fault_flag(sim_t *s, const char *flag, const char *val)
{
    char key[64];
    snprintf(key, sizeof key, "%s", flag);
    for (char *p = key; *p; p++)
        if (*p == '-')
            *p = '_';
    json_t *v;
    size_t kl = strlen(key);
    if (kl > 5 && strcmp(key + kl - 5, "_rate") == 0) {
        /* The whole value a finite number: "abc" (strtod: 0) or "0.5x"
         * turned the fault off or on without a word, and "nan" (no JSON
         * real: NULL) left it as it was. */
        double x; /* decimal only, as every number here ("0x1p-1" was 0.5) */
        v = ab_parse_double(val, -HUGE_VAL, HUGE_VAL, &x) == 0 ? json_real(x)
                                                              : json_string(val); /* refused */
    } else if (strcmp(key, "error_message") == 0 || strcmp(key, "midstream_message") == 0 ||
             strcmp(key, "model") == 0)
        v = json_string(val);
    else {
        long x;
        v = ab_parse_long(val, LONG_MIN, LONG_MAX, &x) == 0 ? json_integer(x)
                                                            : json_string(val); /* refused */
    }
    json_t *o = json_object();
    if (json_object_set_new(o, key, v) != 0) { /* v NULL: not UTF-8, left out unsaid */
        fprintf(stderr, "ollama-sim: --fault-%s: \"%s\" is not UTF-8 text\n", flag, val);
        json_decref(o);
        return -1;
    }
    char err[256];
    int rc = sim_faults_apply(&s->faults, o, err, sizeof err);
    json_decref(o);
    if (rc != 0)
        fprintf(stderr, "ollama-sim: --fault-%s: %s\n", flag, err);
    return rc;
}

static const struct option s_long[] = {
    {"port", required_argument, 0, 'p'},
    {"config", required_argument, 0, 'c'},
    {"time-scale", required_argument, 0, 't'},
    {"num-parallel", required_argument, 0, 1},
    {"max-queue", required_argument, 0, 2},
    {"max-loaded-models", required_argument, 0, 3},
    {"keep-alive", required_argument, 0, 4},
    {"max-body-bytes", required_argument, 0, 5},
    {"max-connections", required_argument, 0, 6},
    {"seed", required_argument, 0, 7},
    {"version-string", required_argument, 0, 8},
    {"gpu", required_argument, 0, 'g'},
    {"model", required_argument, 0, 'm'},
    {"quiet", no_argument, 0, 'q'},
    {"help", no_argument, 0, 'h'},
    {"version", no_argument, 0, 'V'},
    {"fault-error-rate", required_argument, 0, 'F'},
    {"fault-error-status", required_argument, 0, 'F'},
    {"fault-error-message", required_argument, 0, 'F'},
    {"fault-midstream-rate", required_argument, 0, 'F'},
    {"fault-midstream-after", required_argument, 0, 'F'},
    {"fault-midstream-message", required_argument, 0, 'F'},
    {"fault-hang-rate", required_argument, 0, 'F'},
    {"fault-hang-after", required_argument, 0, 'F'},
    {"fault-hang-ms", required_argument, 0, 'F'},
    {"fault-slow-start-rate", required_argument, 0, 'F'},
    {"fault-slow-start-ms", required_argument, 0, 'F'},
    {"fault-drop-rate", required_argument, 0, 'F'},
    {"fault-drop-after", required_argument, 0, 'F'},
    {"fault-count", required_argument, 0, 'F'},
    {"fault-model", required_argument, 0, 'F'},
    {0, 0, 0, 0},
};

static const char *const s_names[] = {
    [1] = "num_parallel", [2] = "max_queue", [3] = "max_loaded_models", [4] = "keep_alive",
    [5] = "max_body_bytes", [6] = "max_connections", [7] = "seed", [8] = "version",
};

/* Long options by their whole name only, as every other program takes
 * them (tools/lib/tl_args.h, the broker): getopt_long also takes any
 * unambiguous prefix, so `--por 1234` was --port and `--con FILE` a config
 * file the scan below did not see. -1 (said on stderr) for a name that is
 * not one of s_long's whole; values given apart are skipped. */
static int s_exact_names(int argc, char **argv)
{
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (strncmp(argv[i], "--", 2) != 0)
            continue;
        const char *name = argv[i] + 2, *eq = strchr(name, '=');
        size_t n = eq ? (size_t)(eq - name) : strlen(name);
        const struct option *o = s_long;
        while (o->name && (strlen(o->name) != n || strncmp(o->name, name, n) != 0))
            o++;
        if (!o->name) {
            fprintf(stderr, "ollama-sim: unknown option \"--%.*s\"\n", (int)n, name);
            s_usage(stderr);
            return -1;
        }
        if (o->has_arg == required_argument && !eq)
            i++; /* its value, whatever it looks like */
    }
    return 0;
}

int sim_config_load(sim_t *s, int argc, char **argv)
{
    if (s_exact_names(argc, argv) != 0)
        return -1;
    /* The config file comes before the environment and the other flags. */
    const char *cfg = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            cfg = argv[i + 1];
        else if (strncmp(argv[i], "--config=", 9) == 0)
            cfg = argv[i] + 9;
    }
    if (cfg && s_load_file(s, cfg) != 0)
        return -1;
    static const char *const env[][2] = {
        {"OLLAMA_NUM_PARALLEL", "num_parallel"}, {"OLLAMA_MAX_QUEUE", "max_queue"},
        {"OLLAMA_MAX_LOADED_MODELS", "max_loaded_models"}, {"OLLAMA_KEEP_ALIVE", "keep_alive"},
    };
    for (size_t i = 0; i < sizeof env / sizeof env[0]; i++) {
        const char *v = getenv(env[i][0]);
        if (v && *v && s_set_option(s, env[i][1], v) != 0) {
            fprintf(stderr, "ollama-sim: bad %s\n", env[i][0]);
            return -1;
        }
    }
    bool flag_models = false, flag_gpus = false;
    int c, idx = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", s_long, &idx)) != -1) {
        int rc = 0;
        switch (c) {
        case 'p': rc = s_set_option(s, "port", optarg); break;
        case 'c': break;
        case 't': rc = s_set_option(s, "time_scale", optarg); break;
        case 'q': s->quiet = true; break;
        case 'h': s_usage(stdout); exit(0);
        case 'V': printf("ollama-sim %s\n", SIM_PROGRAM_VERSION); exit(0);
        case 'g':
            if (!flag_gpus)
                s->n_gpus = 0;
            flag_gpus = true;
            rc = s_add_gpu(s, optarg);
            break;
        case 'm': {
            if (!flag_models)
                s->n_models = 0;
            flag_models = true;
            json_t *o = s_model_spec(optarg);
            rc = o ? s_add_model(s, o) : -1;
            if (!o)
                fprintf(stderr, "ollama-sim: --model wants NAME[,key=value...], got \"%s\"\n",
                        optarg);
            json_decref(o);
            break;
        }
        case 'F': rc = s_fault_flag(s, s_long[idx].name + 6, optarg); break;
        case '?': s_usage(stderr); return -1;
        default:
            if (c >= 1 && c <= 8)
                rc = s_set_option(s, s_names[c], optarg);
            break;
        }
        if (rc != 0)
            return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "ollama-sim: unexpected argument \"%s\"\n", argv[optind]);
        return -1;
    }
    if (s->n_models == 0)
        s_builtin_models(s);
    if (s->n_gpus == 0)
        s->gpus[s->n_gpus++] = (sim_gpu_t){.vram = 8ULL << 30};
    for (int i = 0; i < s->n_models; i++) {
        sim_model_t *m = &s->models[i];
        if (m->num_parallel == 0)
            m->num_parallel = s->num_parallel;
        m->keep_alive_ns = s->keep_alive_ns;
        m->expires = SIM_FOREVER;
        m->gpu = -1;
    }
    return 0;
}
