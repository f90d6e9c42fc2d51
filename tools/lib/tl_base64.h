/*
 * tl_base64.h - standard base64 (RFC 4648 section 4), as Ollama's API and
 * OpenAI's embeddings carry bytes in JSON: images on the way in (the
 * gateway decodes them, the Ollama worker encodes them again for its
 * backend), float vectors on the way out.
 */
#ifndef TL_BASE64_H
#define TL_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* Decodes standard base64 (padding optional, no whitespace) into a
 * malloc'd buffer; *out_len gets its size. NULL on bad input. */
uint8_t *tl_base64_decode(const char *s, size_t *out_len);
/* Encodes LEN bytes as standard padded base64, malloc'd and
 * NUL-terminated; NULL when out of memory. */
char *tl_base64_encode(const void *data, size_t len);

#endif
