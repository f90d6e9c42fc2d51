/*
 * gw_raw.c - a worker's JSON text checked, minified and spliced into the
 * gateway's answers without a jansson tree (see gw_raw.h).
 */
#include "gw_raw.h"
#include "text.h"
#include "tl_json.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- the check -------------------------------------------------------------------- */
typedef struct {
    const unsigned char *p, *end;
    char *out; /* the minified text, written over the text behind the scan */
    size_t n;
} s_scan_t;

/* In place: the copy never gets ahead of the scan. */
static void s_emit(s_scan_t *s, const unsigned char *from, size_t n)
{
    memmove(s->out + s->n, from, n);
    s->n += n;
}

static void s_ws(s_scan_t *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static int s_hex4(const unsigned char *p, const unsigned char *end, unsigned *cp)
{
    *cp = 0;
    if (end - p < 4)
        return 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d = c >= '0' && c <= '9'   ? c - '0'
                               : c >= 'a' && c <= 'f' ? c - 'a' + 10
                               : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                                      : 16;
        if (d == 16)
            return 0;
        *cp = *cp << 4 | d;
    }
    return 1;
}

/* \uXXXX at s->p (its backslash), as jansson takes it: not \u0000 (it
 * refuses NUL without JSON_ALLOW_NUL), a high surrogate only with a low
 * one after it, no low one alone. */
static int s_escape_u(s_scan_t *s)
{
    unsigned cp, lo;
    if (!s_hex4(s->p + 2, s->end, &cp) || cp == 0 || (cp >= 0xDC00 && cp <= 0xDFFF))
        return 0;
    s->p += 6;
    if (cp < 0xD800 || cp > 0xDBFF)
        return 1;
    if (s->end - s->p < 6 || s->p[0] != '\\' || s->p[1] != 'u' ||
        !s_hex4(s->p + 2, s->end, &lo) || lo < 0xDC00 || lo > 0xDFFF)
        return 0;
    s->p += 6;
    return 1;
}

/* A string at s->p (its opening quote), copied whole: UTF-8 (the text is
 * NUL-terminated, where ab_utf8_seq stops), no control character. */
static int s_string(s_scan_t *s)
{
    const unsigned char *start = s->p++;
    while (s->p < s->end && *s->p != '"') {
        unsigned c = *s->p;
        size_t k;
        if (c < 0x20)
            return 0;
        if (c >= 0x80) {
            if (!(k = ab_utf8_seq(s->p)))
                return 0;
            s->p += k;
        } else if (c != '\\') {
            s->p++;
        } else if (s->end - s->p >= 2 && s->p[1] == 'u') {
            if (!s_escape_u(s))
                return 0;
        } else if (s->end - s->p >= 2 && s->p[1] && strchr("\"\\/bfnrt", s->p[1])) {
            s->p += 2;
        } else {
            return 0;
        }
    }
    if (s->p >= s->end)
        return 0;
    s->p++;
    s_emit(s, start, (size_t)(s->p - start));
    return 1;
}

static const unsigned char *s_digits(const unsigned char *p)
{
    while (*p >= '0' && *p <= '9')
        p++;
    return p;
}

/* A number at s->p, JSON's grammar; as jansson, an integer must fit int64
 * and a real must not overflow (both are an error there). The text ends
 * in a NUL, so the scans and strtoll/strtod stop inside it. */
static int s_number(s_scan_t *s)
{
    const unsigned char *p = s->p;
    int real = 0;
    if (*p == '-')
        p++;
    if (*p == '0')
        p++;
    else if (*p >= '1' && *p <= '9')
        p = s_digits(p);
    else
        return 0;
    if (*p == '.') {
        if (!(p[1] >= '0' && p[1] <= '9'))
            return 0;
        p = s_digits(p + 1), real = 1;
    }
    if (*p == 'e' || *p == 'E') {
        p += p[1] == '+' || p[1] == '-' ? 2 : 1;
        if (!(*p >= '0' && *p <= '9'))
            return 0;
        p = s_digits(p), real = 1;
    }
    if (p > s->end)
        return 0;
    errno = 0;
    if (real) {
        double v = strtod((const char *)s->p, NULL);
        if (errno == ERANGE && (v == HUGE_VAL || v == -HUGE_VAL))
            return 0;
    } else {
        (void)strtoll((const char *)s->p, NULL, 10);
        if (errno == ERANGE)
            return 0;
    }
    s_emit(s, s->p, (size_t)(p - s->p));
    s->p = p;
    return 1;
}

static int s_literal(s_scan_t *s, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
        return 0;
    s_emit(s, s->p, n);
    s->p += n;
    return 1;
}

static int s_value(s_scan_t *s, int depth);

/* An array or object at s->p (its bracket), DEPTH its level: items, or
 * members "key":value, split by commas, none after the last. */
static int s_container(s_scan_t *s, int depth)
{
    unsigned char close = *s->p == '[' ? ']' : '}';
    if (depth > GW_RAW_MAX_DEPTH)
        return 0;
    s_emit(s, s->p++, 1);
    s_ws(s);
    if (s->p < s->end && *s->p == close) {
        s_emit(s, s->p++, 1);
        return 1;
    }
    for (;;) {
        if (close == '}') {
            if (s->p >= s->end || *s->p != '"' || !s_string(s))
                return 0;
            s_ws(s);
            if (s->p >= s->end || *s->p != ':')
                return 0;
            s_emit(s, s->p++, 1);
        }
        if (!s_value(s, depth))
            return 0;
        s_ws(s);
        if (s->p >= s->end || (*s->p != ',' && *s->p != close))
            return 0;
        s_emit(s, s->p, 1);
        if (*s->p++ == close)
            return 1;
        s_ws(s);
    }
}

static int s_value(s_scan_t *s, int depth)
{
    s_ws(s);
    if (s->p >= s->end)
        return 0;
    switch (*s->p) {
    case '[':
    case '{': return s_container(s, depth + 1);
    case '"': return s_string(s);
    case 't': return s_literal(s, "true");
    case 'f': return s_literal(s, "false");
    case 'n': return s_literal(s, "null");
    default: return s_number(s);
    }
}

int gw_raw_array(char *text, size_t *len)
{
    size_t n = text ? strlen(text) : 0;
    s_scan_t s = {(const unsigned char *)text, (const unsigned char *)text + n, text, 0};
    s_ws(&s);
    if (s.p >= s.end || *s.p != '[' || !s_value(&s, 0))
        return 0;
    s_ws(&s);
    if (s.p != s.end)
        return 0;
    text[s.n] = '\0';
    if (len)
        *len = s.n;
    return 1;
}

/* --- walking checked text ------------------------------------------------------------ */
const char *gw_raw_skip(const char *p)
{
    if (*p == '"') {
        for (p++; *p != '"'; p++)
            if (*p == '\\')
                p++;
        return p + 1;
    }
    if (*p != '[' && *p != '{') {
        while (*p && *p != ',' && *p != ']' && *p != '}')
            p++;
        return p;
    }
    int depth = 0;
    do {
        if (*p == '"') {
            p = gw_raw_skip(p);
            continue;
        }
        depth += *p == '[' || *p == '{' ? 1 : *p == ']' || *p == '}' ? -1 : 0;
        p++;
    } while (depth > 0);
    return p;
}

const char *gw_raw_first(const char *p)
{
    return (*p != '[' && *p != '{') || p[1] == ']' || p[1] == '}' ? NULL : p + 1;
}

const char *gw_raw_next(const char *p, int member)
{
    if (member)
        p = gw_raw_skip(p) + 1; /* the key and its colon */
    p = gw_raw_skip(p);
    return *p == ',' ? p + 1 : NULL;
}

int gw_raw_key_is(const char *k, const char *name)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    const unsigned char *p = (const unsigned char *)k + 1;
    for (;; name++) {
        unsigned c = *p;
        if (c == '"')
            return *name == '\0';
        if (c != '\\') {
            p++;
        } else if (p[1] == 'u') {
            s_hex4(p + 2, p + 6, &c);
            p += 6;
        } else {
            c = (unsigned char)to[strchr(from, p[1]) - from];
            p += 2;
        }
        if (*name == '\0' || c != (unsigned char)*name)
            return 0;
    }
}

const char *gw_raw_member(const char *p, const char *key)
{
    const char *found = NULL;
    if (*p != '{')
        return NULL;
    for (const char *m = gw_raw_first(p); m; m = gw_raw_next(m, 1))
        if (gw_raw_key_is(m, key))
            found = gw_raw_skip(m) + 1;
    return found;
}

/* --- placeholders -------------------------------------------------------------------- */
/* A placeholder is {"\x01gwraw-<32 hex>\x01": TEXT}: an object of one
 * member whose name no worker can guess. gw_raw_dumps swaps TEXT for the
 * placeholder's index while jansson dumps the rest, so the text is copied
 * once, into the answer (jansson's dump of a 16 MiB string held ~3x it). */
#define S_NONCE_HEX 32
#define S_MARK_LEN (1 + 6 + S_NONCE_HEX + 1)
/* {"\u0001gwraw-<hex>\u0001": as jansson dumps it (control bytes as \u00XX) */
#define S_DUMPED_LEN (2 + 6 + 6 + S_NONCE_HEX + 6 + 2)
static char s_mark[S_MARK_LEN + 1], s_dumped[S_DUMPED_LEN + 1];
static pthread_once_t s_once = PTHREAD_ONCE_INIT;

static void s_mark_init(void)
{
    unsigned char r[S_NONCE_HEX / 2];
    char hex[S_NONCE_HEX + 1];
    arc4random_buf(r, sizeof r);
    for (size_t i = 0; i < sizeof r; i++)
        snprintf(hex + 2 * i, 3, "%02x", r[i]);
    snprintf(s_mark, sizeof s_mark, "\x01gwraw-%s\x01", hex);
    snprintf(s_dumped, sizeof s_dumped, "{\"\\u0001gwraw-%s\\u0001\":", hex);
}

json_t *gw_raw_value(const char *raw, size_t len)
{
    pthread_once(&s_once, s_mark_init);
    json_t *o = json_object(), *t = json_stringn_nocheck(raw, len); /* checked UTF-8 */
    if (!o || !t || json_object_set_new(o, s_mark, t) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

const char *gw_raw_text(const json_t *v, size_t *len)
{
    if (!json_is_object(v) || json_object_size(v) != 1)
        return NULL;
    pthread_once(&s_once, s_mark_init);
    const json_t *t = json_object_get(v, s_mark);
    if (!json_is_string(t))
        return NULL;
    if (len)
        *len = json_string_length(t);
    return json_string_value(t);
}

typedef struct {
    json_t **text; /* each placeholder's text, held while its index stands in */
    json_t **at;   /* the placeholders */
    size_t n, cap;
    size_t bytes; /* of the texts */
    int oom;
} s_found_t;

/* The placeholders in V, each given its index in F in place of its text. */
static void s_find(json_t *v, s_found_t *f)
{
    size_t i;
    const char *k;
    json_t *x;
    if (gw_raw_text(v, NULL)) {
        if (f->n == f->cap) {
            size_t cap = f->cap ? 2 * f->cap : 8;
            json_t **t = realloc(f->text, cap * sizeof *t);
            if (t)
                f->text = t;
            json_t **a = t ? realloc(f->at, cap * sizeof *a) : NULL;
            if (!a) {
                f->oom = 1;
                return;
            }
            f->at = a, f->cap = cap;
        }
        x = json_object_get(v, s_mark);
        f->bytes += json_string_length(x);
        f->text[f->n] = json_incref(x);
        f->at[f->n] = v;
        if (json_object_set_new(v, s_mark, json_integer((json_int_t)f->n)) != 0)
            f->oom = 1;
        f->n++;
    } else if (json_is_object(v)) {
        json_object_foreach(v, k, x)
            s_find(x, f);
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, x)
            s_find(x, f);
    }
}

/* SKEL (jansson's dump) with each {"<mark>":<index>} replaced by the
 * text of that index. NULL out of memory. */
static char *s_splice(const char *skel, const s_found_t *f)
{
    char *out = malloc(strlen(skel) + f->bytes + 1), *o = out;
    const char *in = skel, *at;
    if (!out)
        return NULL;
    while ((at = strstr(in, s_dumped))) {
        memcpy(o, in, (size_t)(at - in));
        o += at - in;
        char *end;
        unsigned long i = strtoul(at + S_DUMPED_LEN, &end, 10);
        if (i >= f->n || *end != '}') { /* cannot be: the mark is ours */
            free(out);
            return NULL;
        }
        memcpy(o, json_string_value(f->text[i]), json_string_length(f->text[i]));
        o += json_string_length(f->text[i]);
        in = end + 1;
    }
    memcpy(o, in, strlen(in) + 1);
    return out;
}

char *gw_raw_dumps(json_t *o)
{
    s_found_t f = {0};
    pthread_once(&s_once, s_mark_init);
    s_find(o, &f);
    char *skel = f.oom ? NULL : tl_json_dumps(o, JSON_COMPACT), *out = skel;
    for (size_t i = 0; i < f.n; i++) /* O as it was */
        json_object_set_new(f.at[i], s_mark, f.text[i]);
    if (skel && f.n) {
        out = s_splice(skel, &f);
        free(skel);
    }
    free(f.text);
    free(f.at);
    return out;
}

/* --- gathering ----------------------------------------------------------------------- */
void gw_raw_list_put(gw_raw_list_t *l, const char *s, size_t n)
{
    if (l->oom)
        return;
    if (l->len + n + 1 > l->cap) {
        size_t cap = l->cap ? l->cap : 256;
        while (cap < l->len + n + 1)
            cap *= 2;
        char *b = realloc(l->buf, cap);
        if (!b) {
            l->oom = 1;
            return;
        }
        l->buf = b, l->cap = cap;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

void gw_raw_list_item(gw_raw_list_t *l)
{
    gw_raw_list_put(l, l->items++ ? "," : "[", 1);
}

void gw_raw_list_add(gw_raw_list_t *l, const json_t *v)
{
    size_t n;
    const char *t = gw_raw_text(v, &n);
    if (!t || n <= 2) /* not one, or [] */
        return;
    gw_raw_list_item(l);
    gw_raw_list_put(l, t + 1, n - 2);
}

int gw_raw_floats_digits(const float *v, size_t n)
{
    int most = 0;
    for (size_t i = 0; i < n; i++) {
        int d = isfinite(v[i]) ? tl_json_real_digits(v[i], NULL) : 0;
        most = d > most ? d : most;
    }
    return most;
}

/* F (finite) as jansson's dump with DIGITS (1..15) writes its snapped value. */
static void s_put_float(gw_raw_list_t *l, float f, int digits)
{
    double snap;
    tl_json_real_digits(f, &snap);
    char buf[48];
    int n = snprintf(buf, sizeof buf - 2, "%.*g", digits, snap);
    char *e = strchr(buf, 'e');
    if (!e && !strchr(buf, '.')) { /* else it reads back as an integer */
        memcpy(buf + n, ".0", 3);
        n += 2;
    } else if (e) { /* e+07 -> e7, e-05 -> e-5 */
        char *to = e + 1 + (e[1] == '-'), *from = e + 2;
        while (*from == '0' && from[1])
            from++;
        memmove(to, from, strlen(from) + 1);
        n = (int)strlen(buf);
    }
    gw_raw_list_item(l);
    gw_raw_list_put(l, buf, (size_t)n);
}

json_t *gw_raw_floats(const float *v, size_t n, int digits)
{
    gw_raw_list_t l = {0};
    /* a float needs at most 9 digits: the dump's precision, under 16, was
     * the most any real needed (tl_json.c) */
    digits = digits < 1 ? 1 : digits > 15 ? 17 : digits;
    for (size_t i = 0; i < n; i++)
        if (isfinite(v[i]))
            s_put_float(&l, v[i], digits);
    if (!l.items) /* none (or none finite): an empty array */
        return gw_raw_value("[]", 2);
    return gw_raw_list_value(&l);
}

json_t *gw_raw_list_value(gw_raw_list_t *l)
{
    json_t *v = NULL;
    if (l->items) {
        gw_raw_list_put(l, "]", 1);
        v = l->oom ? NULL : gw_raw_value(l->buf, l->len);
    }
    gw_raw_list_free(l);
    return v;
}

void gw_raw_list_free(gw_raw_list_t *l)
{
    free(l->buf);
    memset(l, 0, sizeof *l);
}
