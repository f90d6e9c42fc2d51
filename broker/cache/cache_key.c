/*
 * cache_key.c - cacheability and the canonical key of a request.
 *
 * The key is XXH3-128 over a canonical byte stream: every item is a one-byte
 * tag, an 8-byte little-endian length and the bytes, so no two different
 * requests can produce the same stream by shifting bytes between fields.
 * Optional values carry a presence byte, so "absent" and "zero" differ.
 * Protobuf's own encoding is not used as the canonical form: field order,
 * packed/unpacked repeats and unknown fields may vary between senders that
 * mean the same request.
 */
#define XXH_INLINE_ALL
#include "cache_key.h"
#include "codec.h"
#include "agentbus.pb-c.h"

#include <string.h>
#include <xxhash.h>

/* --- canonical stream --------------------------------------------------------- */
static void s_head(XXH3_state_t *st, uint8_t tag, size_t len)
{
    uint8_t hdr[9];
    uint64_t l = len;
    hdr[0] = tag;
    for (int i = 0; i < 8; i++)
        hdr[1 + i] = (uint8_t)(l >> (8 * i));
    XXH3_128bits_update(st, hdr, sizeof hdr);
}

static void s_item(XXH3_state_t *st, uint8_t tag, const void *p, size_t len)
{
    s_head(st, tag, len);
    if (len)
        XXH3_128bits_update(st, p, len);
}

/* N token ids as one item, each 4 bytes little-endian (the same on every
 * host), fed in batches. */
static void s_ids(XXH3_state_t *st, uint8_t tag, size_t n, const uint32_t *ids)
{
    uint8_t b[256];
    size_t k = 0;
    s_head(st, tag, 4 * n);
    for (size_t i = 0; i < n; i++) {
        for (int j = 0; j < 4; j++)
            b[k++] = (uint8_t)(ids[i] >> (8 * j));
        if (k == sizeof b || i + 1 == n) {
            XXH3_128bits_update(st, b, k);
            k = 0;
        }
    }
}

static void s_str(XXH3_state_t *st, uint8_t tag, const char *s)
{
    s_item(st, tag, s ? s : "", s ? strlen(s) : 0);
}

static void s_u64(XXH3_state_t *st, uint8_t tag, int present, uint64_t v)
{
    uint8_t b[9];
    b[0] = present ? 1 : 0;
    for (int i = 0; i < 8; i++)
        b[1 + i] = present ? (uint8_t)(v >> (8 * i)) : 0;
    s_item(st, tag, b, sizeof b);
}

static void s_dbl(XXH3_state_t *st, uint8_t tag, int present, double d)
{
    uint64_t v;
    if (d == 0.0)
        d = 0.0; /* -0.0 and 0.0 mean the same temperature */
    memcpy(&v, &d, sizeof v);
    s_u64(st, tag, present, v);
}

/* Options in a fixed order, every one (present or not): a new option added
 * to the proto must be added here, with a new tag. */
static void s_options(XXH3_state_t *st, const Agentbus__InferenceOptions *o)
{
    Agentbus__InferenceOptions none = AGENTBUS__INFERENCE_OPTIONS__INIT;
    if (!o)
        o = &none;
    s_dbl(st, 'T',
          o->has_temperature_case == AGENTBUS__INFERENCE_OPTIONS__HAS_TEMPERATURE_TEMPERATURE,
          o->temperature);
    s_u64(st, 'S', o->has_seed_case == AGENTBUS__INFERENCE_OPTIONS__HAS_SEED_SEED,
          (uint64_t)o->seed);
    s_u64(st, 'C', o->has_num_ctx_case == AGENTBUS__INFERENCE_OPTIONS__HAS_NUM_CTX_NUM_CTX,
          (uint64_t)o->num_ctx);
    s_u64(st, 'N',
          o->has_num_predict_case == AGENTBUS__INFERENCE_OPTIONS__HAS_NUM_PREDICT_NUM_PREDICT,
          (uint64_t)o->num_predict);
    s_u64(st, 'K', o->has_top_k_case == AGENTBUS__INFERENCE_OPTIONS__HAS_TOP_K_TOP_K,
          (uint64_t)o->top_k);
    s_dbl(st, 'P', o->has_top_p_case == AGENTBUS__INFERENCE_OPTIONS__HAS_TOP_P_TOP_P, o->top_p);
    s_u64(st, 'X', 1, o->n_stop);
    for (size_t i = 0; i < o->n_stop; i++)
        s_str(st, 'x', o->stop[i]);
    s_dbl(st, 'R',
          o->has_repeat_penalty_case ==
              AGENTBUS__INFERENCE_OPTIONS__HAS_REPEAT_PENALTY_REPEAT_PENALTY,
          o->repeat_penalty);
    s_dbl(st, 'M', o->has_min_p_case == AGENTBUS__INFERENCE_OPTIONS__HAS_MIN_P_MIN_P, o->min_p);
    if (o->extra_json && *o->extra_json) /* only when set: older keys stay as they were */
        s_str(st, 'E', o->extra_json);
}

static int s_deterministic(const Agentbus__InferenceOptions *o)
{
    if (!o)
        return 0;
    if (o->has_seed_case == AGENTBUS__INFERENCE_OPTIONS__HAS_SEED_SEED)
        return 1;
    return o->has_temperature_case == AGENTBUS__INFERENCE_OPTIONS__HAS_TEMPERATURE_TEMPERATURE &&
           o->temperature == 0.0;
}

static void s_images(XXH3_state_t *st, size_t n, const ProtobufCBinaryData *im)
{
    s_u64(st, 'I', 1, n);
    for (size_t i = 0; i < n; i++)
        s_item(st, 'i', im[i].data, im[i].len);
}

/* A message's tool calls, tool name and thinking, only when set: every item is
 * tagged, so a request without them keeps the key it had before tools
 * were carried (entries already in L2/L3 stay valid), and one with them
 * never shares a key with one without. */
static void s_tool_fields(XXH3_state_t *st, const Agentbus__ChatMessage *m)
{
    if (m->tool_calls_json && *m->tool_calls_json)
        s_str(st, 'q', m->tool_calls_json);
    if (m->tool_name && *m->tool_name)
        s_str(st, 'a', m->tool_name);
    if (m->thinking && *m->thinking)
        s_str(st, 'h', m->thinking);
}

/* The output-changing fields of a generate (s_typed). */
static void s_generate_key(XXH3_state_t *st, const Agentbus__GenerateRequest *g, int *det)
{
    s_str(st, 'g', "generate");
    s_str(st, 'm', g->model);
    s_str(st, 'p', g->prompt);
    s_str(st, 's', g->system);
    s_str(st, 'f', g->format);
    /* Streaming changes the reply's shape (chunks vs one reply). */
    s_u64(st, 'z', 1,
          g->has_stream_case == AGENTBUS__GENERATE_REQUEST__HAS_STREAM__NOT_SET || g->stream);
    s_u64(st, 'r', 1, g->raw);
    s_str(st, 'u', g->suffix);
    s_images(st, g->n_images, g->images);
    if (g->think && *g->think) /* only when set: older keys stay valid */
        s_str(st, 'k', g->think);
    if (g->has_truncate_case)
        s_u64(st, 'U', 1, g->truncate);
    if (g->has_shift_case)
        s_u64(st, 'V', 1, g->shift);
    if (g->logprobs || g->top_logprobs) /* only when set: older keys stay valid */
        s_u64(st, 'l', 1, (uint64_t)g->logprobs | (uint64_t)(uint32_t)g->top_logprobs << 1);
    if (g->n_context)
        s_ids(st, 'j', g->n_context, g->context);
    s_options(st, g->options);
    *det = s_deterministic(g->options);
}

/* Hashes the output-changing fields of a typed request. keep_alive is left
 * out on purpose: it only says how long the backend keeps the model loaded. */
static int s_typed(XXH3_state_t *st, const Agentbus__InferenceRequest *r, int *det)
{
    switch (r->body_case) {
    case AGENTBUS__INFERENCE_REQUEST__BODY_GENERATE:
        s_generate_key(st, r->generate, det);
        return 0;
    case AGENTBUS__INFERENCE_REQUEST__BODY_CHAT: {
        const Agentbus__ChatRequest *c = r->chat;
        s_str(st, 'g', "chat");
        s_str(st, 'm', c->model);
        s_u64(st, 'n', 1, c->n_messages);
        for (size_t i = 0; i < c->n_messages; i++) {
            s_str(st, 'o', c->messages[i]->role);
            s_str(st, 'c', c->messages[i]->content);
            s_images(st, c->messages[i]->n_images, c->messages[i]->images);
            s_tool_fields(st, c->messages[i]);
        }
        s_str(st, 'f', c->format);
        if (c->tools_json && *c->tools_json)
            s_str(st, 'w', c->tools_json);
        if (c->think && *c->think)
            s_str(st, 'k', c->think);
        if (c->has_truncate_case)
            s_u64(st, 'U', 1, c->truncate);
        if (c->has_shift_case)
            s_u64(st, 'V', 1, c->shift);
        if (c->logprobs || c->top_logprobs)
            s_u64(st, 'l', 1, (uint64_t)c->logprobs | (uint64_t)(uint32_t)c->top_logprobs << 1);
        s_u64(st, 'z', 1,
              c->has_stream_case == AGENTBUS__CHAT_REQUEST__HAS_STREAM__NOT_SET || c->stream);
        s_options(st, c->options);
        *det = s_deterministic(c->options);
        return 0;
    }
    case AGENTBUS__INFERENCE_REQUEST__BODY_EMBED: {
        const Agentbus__EmbedRequest *e = r->embed;
        s_str(st, 'g', "embed");
        s_str(st, 'm', e->model);
        s_u64(st, 'n', 1, e->n_input);
        for (size_t i = 0; i < e->n_input; i++)
            s_str(st, 'e', e->input[i]);
        s_u64(st, 't', 1,
              e->has_truncate_case == AGENTBUS__EMBED_REQUEST__HAS_TRUNCATE__NOT_SET ||
                  e->truncate);
        if (e->has_dimensions_case) /* only when set: older keys stay valid */
            s_u64(st, 'd', 1, (uint64_t)e->dimensions);
        s_options(st, e->options);
        *det = 1; /* an embedding samples nothing */
        return 0;
    }
    default:
        return -1; /* load/unload or empty: commands, never cached */
    }
}

ab_key_kind_t ab_cache_key(const ab_key_input_t *in, ab_cache_key_t *key)
{
    if ((in->flags & (AB_FLAG_NO_CACHE | AB_FLAG_NO_STORE)) ==
        (AB_FLAG_NO_CACHE | AB_FLAG_NO_STORE))
        return AB_KEY_NO;
    int marked = (in->flags & AB_FLAG_CACHEABLE) != 0;
    int has_model = in->model && *in->model;
    if (!marked && (!has_model || !in->size || (in->flags & AB_FLAG_LZ4)))
        return AB_KEY_NO; /* the common case costs two tests, no hashing */
    XXH3_state_t st;
    XXH3_128bits_reset(&st);
    uint8_t ver = AB_CACHE_KEY_VERSION;
    s_item(&st, 'V', &ver, 1);
    s_str(&st, 'v', in->service);
    s_str(&st, 'd', in->digest);
    if (in->plain_only) /* absent for the usual client: their keys stay as they were */
        s_u64(&st, 'z', 1, 1);
    ab_key_kind_t kind = AB_KEY_NO;
    /* A compressed typed payload is not decoded (the broker keeps payloads
     * as they travel); it is cached only when marked, on its bytes. */
    if (has_model && in->size && !(in->flags & AB_FLAG_LZ4)) {
        /* within a budget: a client's 40 MB chat request of empty messages
         * took 2.7 GB here, a record for each (ab_pb_unpack) */
        Agentbus__InferenceRequest *r = (Agentbus__InferenceRequest *)ab_pb_unpack(
            &agentbus__inference_request__descriptor, in->size, in->payload);
        if (r) {
            int det = 0;
            s_str(&st, 'k', "typed");
            int ok = s_typed(&st, r, &det) == 0;
            agentbus__inference_request__free_unpacked(r, NULL);
            if (!ok)
                return AB_KEY_NO;
            if (!det && !marked)
                return AB_KEY_NO;
            kind = AB_KEY_TYPED;
        }
    }
    if (kind == AB_KEY_NO) {
        if (!marked)
            return AB_KEY_NO;
        s_str(&st, 'k', "raw");
        s_str(&st, 'm', in->model);
        s_u64(&st, 'l', 1, in->flags & AB_FLAG_LZ4);
        if (in->flags & AB_FLAG_LZ4) /* keyed compressed: the same bytes may declare sizes */
            s_u64(&st, 'o', 1, in->original_size);
        s_item(&st, 'b', in->payload, in->size);
        kind = AB_KEY_RAW;
    }
    XXH128_hash_t h = XXH3_128bits_digest(&st);
    key->hi = h.high64;
    key->lo = h.low64;
    return kind;
}

void ab_cache_key_hex(const ab_cache_key_t *key, char *buf)
{
    static const char hx[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        buf[i] = hx[(key->hi >> (60 - 4 * i)) & 15];
        buf[16 + i] = hx[(key->lo >> (60 - 4 * i)) & 15];
    }
    buf[32] = '\0';
}

int ab_cache_key_parse(const char *hex, ab_cache_key_t *key)
{
    uint64_t v[2] = {0, 0};
    if (!hex || strlen(hex) != 32)
        return -1;
    for (int i = 0; i < 32; i++) {
        char c = hex[i];
        int d = c >= '0' && c <= '9' ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return -1;
        v[i / 16] = v[i / 16] << 4 | (uint64_t)d;
    }
    key->hi = v[0];
    key->lo = v[1];
    return 0;
}
