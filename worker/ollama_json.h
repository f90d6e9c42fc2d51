/*
 * ollama_json.h - the Ollama HTTP API's JSON, translated to and from the
 * typed inference messages of proto/agentbus.proto. No I/O: bytes in,
 * bytes out, so it is unit-tested on its own (tests/unit/test_ollama_json.c).
 */
#ifndef WK_OLLAMA_JSON_H
#define WK_OLLAMA_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    WK_OL_GENERATE = 1,
    WK_OL_CHAT = 2,
    WK_OL_EMBED = 3,
    WK_OL_LOAD = 4,
    WK_OL_UNLOAD = 5
} wk_ol_kind_t;

/* An HTTP call built from an agentbus.InferenceRequest. */
typedef struct {
    wk_ol_kind_t kind;
    const char *path;  /* "/api/generate", "/api/chat", "/api/embed" */
    char *body;        /* JSON, malloc'd */
    size_t body_len;
    char model[256];
    int stream;        /* 1: the client wants a PARTIAL per line; 0: one REPLY (Ollama
                        * is asked to stream generate and chat either way) */
} wk_ol_call_t;

/* Decodes PB (an InferenceRequest) into CALL. 0, or -1 with a reason in
 * ERR (the request is malformed: the caller answers BAD_REQUEST). */
int wk_ol_call_build(const void *pb, size_t len, wk_ol_call_t *call, char *err, size_t errcap);
void wk_ol_call_free(wk_ol_call_t *call);

/* One line (JSON object) of an answer, as a typed message. */
typedef struct {
    uint8_t *pb;      /* packed GenerateResponse / ChatResponse / EmbedResponse (malloc'd) */
    size_t pb_len;
    int done;         /* the line had "done": true (or was an embed answer) */
    char error[512];  /* non-empty: the line was {"error": ...} */
    char done_reason[32];
} wk_ol_chunk_t;

/* At least what jansson takes to decode LINE (LEN bytes): 32 bytes for
 * each ',' outside a string. Each separates two values of an array or an
 * object, and each value is a json_t of 24 bytes or more (malloc's
 * smallest block) with an 8-byte slot in its array, or a larger pair in
 * its object; 8 when the value is true, false or null, which jansson
 * shares. One pass over the line, no allocation. */
size_t wk_ol_decode_floor(const char *line, size_t len);

/* Parses LINE (LEN bytes, one JSON object) of a KIND answer; WORKER names
 * the worker in final messages. 0 (chunk filled; free chunk->pb), -1 when
 * the line is not valid JSON, -2 when decoding it would take more than
 * WK_OL_DECODE_MAX bytes (chunk->error says why in both cases). The first
 * call sets jansson's allocation functions (json_set_alloc_funcs: malloc
 * and free, counted per thread while a line is decoded): make it before
 * other threads use jansson. */
#define WK_OL_DECODE_MAX (96u << 20)
int wk_ol_chunk_parse(wk_ol_kind_t kind, const char *line, size_t len, const char *worker,
                      wk_ol_chunk_t *chunk);

/* Splits a byte stream into lines. Bounded: a line longer than max is an
 * error (a broken or hostile backend must not grow memory without end).
 * A line that does not come whole in one feed is gathered in buf (cap
 * bytes, grown by doubling); once a line has taken it past
 * WK_NDJSON_KEEP_MAX it is freed when that line has been handed on, so a
 * stream holds at most WK_NDJSON_KEEP_MAX between lines, whatever came. */
#define WK_NDJSON_KEEP_MAX (1u << 20)
typedef struct {
    char *buf;
    size_t len, cap, max;
} wk_ndjson_t;

typedef int(wk_ndjson_fn)(const char *line, size_t len, void *arg);

void wk_ndjson_init(wk_ndjson_t *nd, size_t max_line);
void wk_ndjson_fini(wk_ndjson_t *nd);
/* Feeds N bytes; calls FN for each complete non-empty line (without the
 * newline). Returns 0, -1 if a line is too long or out of memory, or FN's
 * non-zero return (which stops feeding). */
int wk_ndjson_feed(wk_ndjson_t *nd, const char *data, size_t n, wk_ndjson_fn *fn, void *arg);
/* End of stream: the last line may lack its newline. Same returns. */
int wk_ndjson_finish(wk_ndjson_t *nd, wk_ndjson_fn *fn, void *arg);

/* Parses /api/tags, /api/ps and /api/version answers into ST (an
 * Agentbus__InferenceState, fields models / loaded / backend_version).
 * The state goes to the broker in a REGISTER, which it refuses (TOO_LARGE,
 * and the worker exits) over its register-max-models (1024),
 * register-max-string-bytes (1K) or register-max-bytes (256K): what a
 * backend lists is kept within those defaults. An entry without a name or
 * with one over AB_MODEL_MAX bytes (no request can name it) is left out,
 * and so is each entry past WK_OL_MODELS_MAX or past the list's bytes
 * (WK_OL_TAGS_BYTES, WK_OL_PS_BYTES: its strings together); the other
 * strings are cut to WK_OL_STR_MAX bytes. Returns the number of entries
 * left out (0 normally), or -1 (bad JSON; ST unchanged); the version: 0 or
 * -1. Strings are malloc'd: free the state with wk_ol_state_clear. */
#define WK_OL_MODELS_MAX 1024
#define WK_OL_STR_MAX 128
#define WK_OL_TAGS_BYTES (160u << 10)
#define WK_OL_PS_BYTES (32u << 10)
struct Agentbus__InferenceState;
int wk_ol_parse_tags(const char *json, size_t len, struct Agentbus__InferenceState *st);
int wk_ol_parse_ps(const char *json, size_t len, struct Agentbus__InferenceState *st);
int wk_ol_parse_version(const char *json, size_t len, struct Agentbus__InferenceState *st);
void wk_ol_state_clear(struct Agentbus__InferenceState *st);

#endif
