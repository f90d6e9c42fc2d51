/*
 * gw_json.h - the gateway's translation between HTTP JSON bodies (Ollama's
 * and OpenAI's) and the typed inference messages of proto/agentbus.proto.
 * No I/O and no threads: bytes in, bytes out, unit-tested on its own
 * (tests/unit/test_gw_json.c).
 *
 * Requests are built so that the same call through the gateway, through
 * brokerctl or through the C library carries the same InferenceRequest
 * fields, so the broker's cache key (broker/cache_key.c, computed over the
 * decoded fields) is the same: an option absent in the JSON stays absent.
 */
#ifndef GW_JSON_H
#define GW_JSON_H

#include "gw_raw.h" /* the worker's JSON texts in a reply object */

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { GW_GENERATE = 1, GW_CHAT = 2, GW_EMBED = 3 } gw_kind_t;

/* top_logprobs: Ollama takes 0..20 (a 400 beyond, its message). */
#define GW_MAX_TOP_LOGPROBS 20
/* context: token ids a generate may send back (1 Mi; a JSON body of the
 * default 8 MiB bound holds at most ~4 Mi one-digit ids, a real context
 * of 5-6 digit ids ~1.2 Mi). A 400 beyond. */
#define GW_MAX_CONTEXT (1u << 20)

/* A bus request built from an HTTP body. */
typedef struct {
    gw_kind_t kind;
    uint8_t *pb;     /* packed agentbus.InferenceRequest, malloc'd */
    size_t pb_len;
    char model[256]; /* also Header.model, so the broker places by it */
    int stream;      /* 1: the client wants chunks as they arrive */
} gw_req_t;

/* Builds REQ from BODY, an Ollama-shaped request object of KIND
 * (/api/generate, /api/chat, /api/embed fields; "prompt" is taken for
 * embed when "input" is absent, as the older /api/embeddings sends it).
 * A generate without prompt and images, or a chat without messages, is
 * Ollama's load (unload with keep_alive 0): a LOAD / UNLOAD command, whose
 * reply is a GenerateResponse (it decodes as a ChatResponse too).
 * Returns 0, or -1 with a client-facing reason in ERR (answer 400).
 * Owns: BODY stays the caller's; free REQ with gw_req_free. */
int gw_req_from_json(gw_kind_t kind, json_t *body, gw_req_t *req, char *err, size_t errcap);
void gw_req_free(gw_req_t *req);

/* A worker's reply (a message of DESC, as protobuf_c_message_unpack) with
 * each text in it made UTF-8: a byte that is not becomes U+FFFD
 * (ab_text_utf8). jansson refuses text that is not UTF-8, so a hostile
 * worker's bytes would otherwise lose the client its whole answer. Free
 * with protobuf_c_message_free_unpacked(m, NULL); NULL when the bytes do
 * not decode or out of memory. */
void *gw_pb_unpack(const ProtobufCMessageDescriptor *desc, size_t len, const void *pb);
/* protobuf_c_message_unpack(DESC, LEN, PB) within 4x LEN + 1 MiB
 * (ab_pb_unpack, agentbus.h): a record for each entry of a repeated message
 * field took ~25x its 2 bytes on the wire (millions of empty embeddings);
 * NULL past it, as for bytes that do not decode. Free as gw_pb_unpack's. */
void *gw_pb_decode(const ProtobufCMessageDescriptor *desc, size_t len, const void *pb);

/* Ollama's JSON object for one reply chunk of KIND (a packed
 * GenerateResponse, ChatResponse or EmbedResponse). LEGACY renders an
 * embed answer as /api/embeddings does ({"embedding": [...]}).
 * The worker's JSON texts (logprobs, message.tool_calls), a context's ids
 * and embeddings' values are in it as gw_raw_value placeholders
 * (gw_raw.h), not trees: dump it with
 * gw_raw_dumps. Returns a new reference, or NULL when the bytes do not
 * decode. */
json_t *gw_ollama_reply(gw_kind_t kind, const void *pb, size_t len, int legacy);

struct Agentbus__EmbedResponse;
/* The digits an embed answer's values are written with (gw_raw_floats):
 * the most any of its values needs, as jansson wrote a whole dump. */
int gw_embed_digits(const struct Agentbus__EmbedResponse *e);

/* The NDJSON line (with its newline) of a non-final generate or chat
 * chunk, written straight into a malloc'd *LINE (*LEN bytes), the same
 * bytes tl_json_dumps(gw_ollama_reply(...), JSON_COMPACT) gives: the common
 * case of a stream, one per token, without building and dumping a jansson
 * object each time. Returns 1, or 0 when the chunk is of another kind, the
 * final one, not ASCII (jansson checks UTF-8: the caller renders it so) or
 * does not decode; then *LINE is untouched. */
int gw_ollama_line(gw_kind_t kind, const void *pb, size_t len, char **line, size_t *line_len);

#include "tl_base64.h" /* tl_base64_decode/encode: images, embeddings */

#endif
