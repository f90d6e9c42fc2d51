/*
 * tl_json.h - JSON text with numbers as short as they can be and still
 * read back as the same value, for the worker's and the gateway's
 * answers (logprobs, embeddings).
 *
 * Why: jansson prints every real with "%.17g", enough for any double. The
 * reals these programs pass on are floats widened to doubles (Ollama's
 * logprobs are float32 softmax values sent as float64, embeddings are
 * float in the proto), for which 17 digits are mostly noise:
 * -0.10536054521799088 where -0.10536055 reads back as the same float.
 *
 * Thread-safe; no state. Link ab_tools_json.
 */
#ifndef TL_JSON_H
#define TL_JSON_H

#include <jansson.h>
#include <stddef.h>

/* Digits (1..17) of the shortest "%.*g" of V that reads back as V, or,
 * when V is a float widened to double, as the same float; *SNAP (may be
 * NULL) gets the double that text reads back as. */
int tl_json_real_digits(double v, double *snap);

/* json_dumps(J, FLAGS) with each real printed by the shortest text that
 * keeps its value (as above: a float's as a float). FLAGS must not hold a
 * JSON_REAL_PRECISION. Changes the reals of J in place to the values that
 * text reads back as (the same float for a float). Returns malloc'd text,
 * or NULL (no memory, or J NULL). */
char *tl_json_dumps(json_t *j, size_t flags);

#endif
