/*
 * ollama_assemble.h - the one answer of a client's stream: false generate
 * or chat, made by the worker from Ollama's streamed lines.
 *
 * Why the worker asks Ollama to stream what the client wants whole: with
 * stream: false Ollama sends nothing until the whole answer is ready, so
 * when the broker CANCELs at the deadline the worker cannot say that its
 * backend had begun, and the broker counted each such deadline as a
 * failure of the worker (five ejected a healthy one: docs/health.md).
 * Streamed, bytes come as soon as Ollama generates; this puts them
 * together again into what Ollama's own stream: false answer holds.
 *
 * No I/O: packed messages in (wk_ol_chunk_parse's), one packed message
 * out; unit-tested on its own (tests/unit/test_ollama_assemble.c). One
 * thread at a time per assembler.
 */
#ifndef WK_OLLAMA_ASSEMBLE_H
#define WK_OLLAMA_ASSEMBLE_H

#include "ollama_json.h"

#include <stddef.h>
#include <stdint.h>

typedef struct wk_ol_asm wk_ol_asm_t;

/* An assembler for the lines of a KIND (WK_OL_GENERATE or WK_OL_CHAT)
 * answer that keeps at most MAX bytes (its text, thinking, logprobs and
 * tool calls together, and then the packed answer). NULL when out of
 * memory. */
wk_ol_asm_t *wk_ol_asm_new(wk_ol_kind_t kind, size_t max);
void wk_ol_asm_destroy(wk_ol_asm_t **a);

/* Takes one line's message (PB, LEN bytes: a packed GenerateResponse or
 * ChatResponse, as wk_ol_chunk_parse made it). When it is the done line,
 * *OUT gets the whole answer (malloc'd, *OUT_LEN bytes; the caller frees
 * it), as Ollama's stream: false answer would be: response (content) and
 * thinking each the lines' pieces in order, logprobs every line's entries
 * in one array, the tool calls of every line in one array, the rest
 * (model, created_at, done_reason, timings, context, worker, role) the
 * done line's; otherwise *OUT is NULL. Returns 0; -1 when what it keeps
 * would pass its MAX (the answer is to be refused: TOO_LARGE); -2 when PB
 * does not decode or memory ran out. After a non-zero return, do not feed
 * it more. */
int wk_ol_asm_add(wk_ol_asm_t *a, const uint8_t *pb, size_t len, uint8_t **out, size_t *out_len);

#endif
