/*
 * text.h - UTF-8 checks for text that peers and backends choose (base/:
 * built into both common/ and tools/lib, see docs/architecture.md).
 * Thread-safe; no allocation.
 */
#ifndef AB_TEXT_H
#define AB_TEXT_H

#include <stddef.h>

/* The length of the valid UTF-8 sequence at S (1 to 4), or 0 when the byte
 * at S does not start one (a stray continuation byte, an overlong form, a
 * surrogate, a code point past U+10FFFF, a sequence cut short by a NUL). */
size_t ab_utf8_seq(const unsigned char *s);

/* Copies the LEN bytes at IN into OUT (CAP > 0 bytes, always terminated)
 * as text a client can show and a JSON encoder takes: each byte that is not
 * UTF-8 and each control character but tab and newline (C0, DEL, C1; a NUL
 * too) becomes U+FFFD; a character that would not fit whole is left out
 * with the rest. Returns the bytes written (without the NUL). */
size_t ab_text_clean(const char *in, size_t len, char *out, size_t cap);

/* As ab_text_clean, but control characters stay (a JSON encoder escapes
 * them, and a model's text may hold them): only the bytes that are not
 * UTF-8 (a NUL too) become U+FFFD. 3 * LEN + 1 bytes of OUT always hold
 * the whole text. */
size_t ab_text_utf8(const char *in, size_t len, char *out, size_t cap);

#endif
