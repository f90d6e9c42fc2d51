/*
 * gw_raw.h - JSON text a worker put in its reply (logprobs_json,
 * tool_calls_json) rendered into the gateway's answers without a jansson
 * tree. The worker is a peer we do not trust, and a tree of a 16 MiB text
 * (the bus's largest payload) took ~17x its size in nodes; here a text is
 * checked and minified in place in one pass, carried through the reply's
 * jansson object as a placeholder holding it as one string, and written in
 * the placeholder's place when the object is dumped (about 2x the text at
 * the peak, with the reply it came in).
 * No I/O; thread-safe (the placeholder's nonce is made once).
 */
#ifndef GW_RAW_H
#define GW_RAW_H

#include <jansson.h>
#include <stddef.h>

/* Arrays and objects nested deeper than this are refused (jansson took
 * 2048; a logprobs entry is 4 deep, and a client's parser may stop far
 * short of 2048 with the answer's own levels on top). */
#define GW_RAW_MAX_DEPTH 64

/* TEXT (NUL-terminated) checked to be one JSON array as json_loads(TEXT, 0)
 * takes it: UTF-8, strings without control characters or \u0000 and with
 * surrogates paired, integers within int64, reals that do not overflow,
 * nothing after it but whitespace; nested at most GW_RAW_MAX_DEPTH deep.
 * Returns 1 with TEXT minified in place (whitespace outside strings
 * dropped, every other byte as it was: one line, as NDJSON and SSE need;
 * *LEN its length when LEN is not NULL), or 0 when it is not such an array
 * (TEXT then partly minified: of no further use). No allocation. */
int gw_raw_array(char *text, size_t *len);

/* Walking text gw_raw_array passed (P points into it; nothing checked
 * again). gw_raw_skip: the end of the value at P. gw_raw_first: the first
 * item of the array or member of the object at P, NULL when it is empty.
 * gw_raw_next: the item (MEMBER 0) or member (MEMBER 1) after the one at P,
 * NULL after the last. A member is at its key; its value at
 * gw_raw_skip(key) + 1. gw_raw_member: the value of the last member named
 * KEY (an ASCII name, escapes in the text decoded) of the value at P, NULL
 * when P is not an object or has none. */
const char *gw_raw_skip(const char *p);
const char *gw_raw_first(const char *p);
const char *gw_raw_next(const char *p, int member);
const char *gw_raw_member(const char *p, const char *key);
/* 1 when the JSON string at K (its opening quote) decodes to NAME (ASCII). */
int gw_raw_key_is(const char *k, const char *name);

/* A jansson value standing for the JSON text RAW (LEN bytes, checked: by
 * gw_raw_array or built of its pieces) in a reply object: gw_raw_dumps
 * writes RAW in its place. Its member's name carries a nonce made at
 * random once per process and never sent, so nothing a worker sent is
 * taken for one. Returns a new reference, NULL out of memory. */
json_t *gw_raw_value(const char *raw, size_t len);
/* The text a gw_raw_value stands for (its length in *LEN), or NULL when V
 * is not one. Valid while V is. */
const char *gw_raw_text(const json_t *v, size_t *len);
/* tl_json_dumps(O, JSON_COMPACT) with each gw_raw_value in O replaced by
 * its text, which jansson never dumps (each stands as its index while it
 * runs; O is as it was after). Malloc'd; NULL when O is NULL or out of
 * memory. O must not be in use by another thread meanwhile. */
char *gw_raw_dumps(json_t *o);

/* The items of several arrays gathered into one (a non-streamed answer's
 * logprobs and tool calls over its chunks), in a growing buffer: zero it
 * to start. A failed allocation sets oom and the list then gives NULL. */
typedef struct {
    char *buf;
    size_t len, cap;
    size_t items;
    int oom;
} gw_raw_list_t;

/* Bytes N at S appended as they are (part of an item). */
void gw_raw_list_put(gw_raw_list_t *l, const char *s, size_t n);
/* Starts the next item (the comma before it). */
void gw_raw_list_item(gw_raw_list_t *l);
/* The digits the N floats at V need (0 for none): the most that any one
 * of them needs for its shortest text (at most 9). jansson wrote every
 * real of a dump with the most any real in it needed (tl_json_dumps), so
 * the floats of one answer are written with the most of them all. */
int gw_raw_floats_digits(const float *v, size_t n);
/* The N floats at V as an array (a gw_raw_value; "[]" for none), NULL out
 * of memory: an embedding, a jansson real of ~40 bytes per 4-byte value
 * before. Each as jansson wrote it through tl_json_dumps with DIGITS (the
 * most gw_raw_floats_digits gave over the answer): its shortest text at
 * that precision, ".0" after a whole number, the exponent without '+' or
 * leading zeros; left out when not finite, as json_real refuses it. */
json_t *gw_raw_floats(const float *v, size_t n, int digits);
/* The items of the gw_raw_value V (an array), if V is one. */
void gw_raw_list_add(gw_raw_list_t *l, const json_t *v);
/* The array of the items as a gw_raw_value (NULL when there are none or
 * out of memory); the list is emptied. */
json_t *gw_raw_list_value(gw_raw_list_t *l);
void gw_raw_list_free(gw_raw_list_t *l);

#endif
