/*
 * tl_infer.h - the one builder of agentbus.InferenceRequest for the
 * programs outside the broker: brokerctl's generate, chat, embed and models
 * load|unload (tools/brokerctl/infer.c) and the gateway's Ollama and OpenAI
 * routes (gateway/gw_json.c) both pack their requests here.
 *
 * Why one builder: the broker's cache key is computed over the decoded
 * request fields (broker/cache/cache_key.c), so the same call made through
 * brokerctl and through the gateway hits the same cache entry only if both
 * set the same fields the same way. What each front-end fills differs
 * (flags or JSON); what decides the key's shape is set here: the body case,
 * the model inside the body, and for generate and chat a stream flag that
 * is always present. Options keep the presence the caller gave them (an
 * absent option and a zero one are different requests).
 *
 * Thread-safe; no state. Link ab_tools_infer (it needs the shared
 * libagentbus for agentbus.pb-c.h).
 */
#ifndef TL_INFER_H
#define TL_INFER_H

#include "agentbus.pb-c.h"

#include <stddef.h>
#include <stdint.h>

typedef enum {
    TL_INFER_GENERATE = 1,
    TL_INFER_CHAT = 2,
    TL_INFER_EMBED = 3,
    TL_INFER_LOAD = 4,  /* a ModelCommand: load MODEL on the worker */
    TL_INFER_UNLOAD = 5 /* a ModelCommand: unload MODEL */
} tl_infer_kind_t;

typedef struct {
    tl_infer_kind_t kind;
    const char *model; /* set into the body's model field; NULL as "" */
    int stream;        /* generate and chat: 1 to ask for PARTIALs */
    /* The body of KIND, initialised by the caller (agentbus__..._init) with
     * its own fields filled (prompt, messages, input, options, keep_alive,
     * ...); its model and stream fields are set by tl_infer_pack. */
    union {
        Agentbus__GenerateRequest *generate;
        Agentbus__ChatRequest *chat;
        Agentbus__EmbedRequest *embed;
        Agentbus__ModelCommand *command; /* TL_INFER_LOAD, TL_INFER_UNLOAD */
    } body;
} tl_infer_t;

/* Sets IN's body fields named above and packs the InferenceRequest into a
 * new buffer of *LEN bytes (at least 1 byte allocated, so an empty request
 * is not NULL). Returns it (the caller frees it with free()), or NULL when
 * out of memory or KIND is not one of the above (*LEN is then 0). The
 * body's strings and arrays stay the caller's; they are only read. */
uint8_t *tl_infer_pack(const tl_infer_t *in, size_t *len);

#endif
