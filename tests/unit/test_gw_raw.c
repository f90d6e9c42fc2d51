/*
 * test_gw_raw.c - the gateway's check of a worker's JSON text (gw_raw.h):
 * it takes what json_loads(text, 0) takes as an array and nothing else
 * (each case is checked against jansson too), bounds the nesting, keeps the
 * text's meaning when it minifies it, and a reply with a 12 MiB logprobs
 * text is rendered in a small multiple of it (a jansson tree took ~17x).
 */
#include "agentbus.pb-c.h"
#include "gw_json.h"
#include "gw_raw.h"
#include "test.h"
#include "tl_json.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

/* ASan's RSS is not the heap's (shadow memory, quarantine), as in
 * common/util.h's AB_ASAN. */
#if defined(__SANITIZE_ADDRESS__)
#define S_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define S_ASAN 1
#endif
#endif
#ifndef S_ASAN
#define S_ASAN 0
#endif

/* gw_raw_array on a copy of TEXT; the minified text in OUT (CAP bytes). */
static int s_check(const char *text, char *out, size_t cap)
{
    char *t = strdup(text);
    size_t n = 0;
    int ok = t && gw_raw_array(t, &n);
    if (ok && out)
        snprintf(out, cap, "%s", t);
    if (ok)
        CHECK_EQ(n, strlen(t));
    free(t);
    return ok;
}

/* What jansson says of TEXT: 1 when it parses to an array. */
static int s_jansson(const char *text)
{
    json_t *j = json_loads(text, 0, NULL);
    int ok = json_is_array(j);
    json_decref(j);
    return ok;
}

static void s_test_valid(void)
{
    static const char *const ok[] = {
        "[]", " [ ] \n", "[1,-0,0.5,1e5,1E-5,-1.5e+3,0e0]", "[true,false,null]",
        "[\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u0041\\ud83d\\ude00\\u00e9\"]",
        "[{\"a\":[{}],\"b\":{\"c\":null}}]", "[\"\xc3\xa9\xe6\x97\xa5\xf0\x9f\x98\x80\"]",
        "[9223372036854775807,-9223372036854775808]", "[1e-400]", "[{\"\":\"\"}]",
        "[\"\\u2028\",\"\x7f\"]", "[[[[[]]]]]", "\t[ {\"k\" : [ 1 , 2 ] } ]\r\n"};
    char out[256];
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        int got = s_check(ok[i], out, sizeof out);
        if (!got)
            fprintf(stderr, "refused: %s\n", ok[i]);
        CHECK_EQ(got, 1);
        CHECK_EQ(s_jansson(ok[i]), 1);
        /* the same value after minifying, on one line */
        json_t *a = json_loads(ok[i], 0, NULL), *b = json_loads(out, 0, NULL);
        CHECK_TRUE(a && b && json_equal(a, b));
        CHECK_TRUE(strpbrk(out, "\n\r\t") == NULL);
        json_decref(a);
        json_decref(b);
    }
    CHECK_TRUE(s_check(" [ 1 ,\n 2 , \" a  b \" , { \"k\" : [ ] } ] ", out, sizeof out));
    CHECK_STR(out, "[1,2,\" a  b \",{\"k\":[]}]");
}

static void s_test_invalid(void)
{
    static const char *const bad[] = {
        "", " ", "{}", "1", "\"a\"", "null", "[", "]", "[1,]", "[,1]", "[1 2]", "[01]", "[-01]",
        "[1.]", "[.5]", "[+1]", "[-]", "[1e]", "[1e+]", "[0x10]", "[tru]", "[nul]", "[True]",
        "[NaN]", "[Infinity]", "[-Infinity]", "[1]x", "[1] [2]", "[1],", "[\"\\u0000\"]",
        "[\"\\ud800\"]", "[\"\\udc00\"]", "[\"\\ud800\\u0041\"]", "[\"\\ud800x\"]", "[\"\\x\"]",
        "[\"\\u12\"]", "[\"\\u12g4\"]", "[\"\\'\"]", "[\"a\x01\"]", "[\"a\tb\"]", "[\"a\nb\"]",
        "[\"open]", "[\"\\\"]", "[\"\xff\"]", "[\"\xc0\xaf\"]", "[\"\xed\xa0\x80\"]",
        "[\"\xf4\x90\x80\x80\"]", "[\"\xe6\x97\"]", "[\"\x80\"]", "[9223372036854775808]",
        "[-9223372036854775809]", "[1e400]", "[-1e400]", "[{\"a\" 1}]", "[{\"a\"}]", "[{1:2}]",
        "[{\"a\":1,}]", "[{\"a\":1\"b\":2}]", "[{,}]", "\xef\xbb\xbf[]", "[]\xef\xbb\xbf", "[\x7f]",
        "['a']", "[1]]", "[[1]", "[{]", "[}", "[\xc3\xa9]", "[/*c*/1]", "[\"a\"\"b\"]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int got = s_check(bad[i], NULL, 0);
        if (got || s_jansson(bad[i]))
            fprintf(stderr, "taken: %s (jansson: %d)\n", bad[i], s_jansson(bad[i]));
        CHECK_EQ(got, 0);
        CHECK_EQ(s_jansson(bad[i]), 0); /* the same as before: left out */
    }
    CHECK_EQ(gw_raw_array(NULL, NULL), 0);
}

/* Nesting: GW_RAW_MAX_DEPTH levels pass, one more does not (jansson took
 * 2048), however the levels are made; far deeper costs no stack. */
static void s_test_depth(void)
{
    size_t deep = 100000;
    char *t = malloc(2 * deep + 8);
    REQUIRE(t);
    for (size_t d = GW_RAW_MAX_DEPTH; d <= GW_RAW_MAX_DEPTH + 1; d++) {
        memset(t, '[', d);
        memset(t + d, ']', d);
        t[2 * d] = '\0';
        CHECK_EQ(s_check(t, NULL, 0), d == GW_RAW_MAX_DEPTH);
        /* objects count as levels: [{"a":{"a":...}}] */
        char *o = malloc(6 * d + 8), *p = o;
        REQUIRE(o);
        *p++ = '[';
        for (size_t i = 1; i < d; i++)
            p += sprintf(p, "{\"a\":");
        *p++ = '1';
        for (size_t i = 1; i < d; i++)
            *p++ = '}';
        *p++ = ']';
        *p = '\0';
        CHECK_EQ(s_check(o, NULL, 0), d == GW_RAW_MAX_DEPTH);
        free(o);
    }
    memset(t, '[', deep);
    memset(t + deep, ']', deep);
    t[2 * deep] = '\0';
    CHECK_EQ(s_check(t, NULL, 0), 0);
    free(t);
}

/* Walking checked text: items, members, escaped keys, the last of two. */
static void s_test_walk(void)
{
    char t[] = "[{\"a\":1,\"top\\u005flogprobs\":[2,{\"x\":\"]\\\"}\"}],\"a\":[3]},\"s\",4]";
    REQUIRE(gw_raw_array(t, NULL));
    const char *e = gw_raw_first(t);
    REQUIRE(e && *e == '{');
    const char *v = gw_raw_member(e, "top_logprobs");
    REQUIRE(v && *v == '[');
    CHECK_EQ(gw_raw_skip(v) - v, (long)strlen("[2,{\"x\":\"]\\\"}\"}]"));
    CHECK_STR(gw_raw_member(e, "a"), "[3]},\"s\",4]"); /* the last "a" */
    CHECK_TRUE(gw_raw_member(e, "b") == NULL);
    CHECK_TRUE(gw_raw_member(v, "a") == NULL); /* not an object */
    CHECK_EQ(gw_raw_key_is(e + 1, "a"), 1);
    CHECK_EQ(gw_raw_key_is(e + 1, "ab"), 0);
    CHECK_EQ(gw_raw_key_is(e + 1, ""), 0);
    const char *n = gw_raw_next(e, 0);
    CHECK_STR(n, "\"s\",4]");
    n = gw_raw_next(n, 0);
    CHECK_STR(n, "4]");
    CHECK_TRUE(gw_raw_next(n, 0) == NULL);
    char empty[] = "[]";
    REQUIRE(gw_raw_array(empty, NULL));
    CHECK_TRUE(gw_raw_first(empty) == NULL);
}

/* Placeholders: spliced where they stand, the object left as it was; a
 * worker's string that looks like one stays a string. */
static void s_test_splice(void)
{
    json_t *o = json_pack("{s:s, s:{s:o}, s:o}", "mark", "\x01gwraw-00\x01", "message", "calls",
                          gw_raw_value("[{\"a\":\"\\\"\"}]", 12), "logprobs",
                          gw_raw_value("[1,2]", 5));
    REQUIRE(o);
    char *txt = gw_raw_dumps(o);
    REQUIRE(txt);
    CHECK_STR(txt, "{\"mark\":\"\\u0001gwraw-00\\u0001\","
                   "\"message\":{\"calls\":[{\"a\":\"\\\"\"}]},\"logprobs\":[1,2]}");
    free(txt);
    size_t n;
    CHECK_STR(gw_raw_text(json_object_get(o, "logprobs"), &n), "[1,2]");
    CHECK_EQ(n, 5);
    CHECK_TRUE(gw_raw_text(json_object_get(o, "mark"), NULL) == NULL);
    gw_raw_list_t l = {0};
    gw_raw_list_add(&l, json_object_get(o, "logprobs"));
    json_t *none = gw_raw_value("[]", 2);
    gw_raw_list_add(&l, none); /* no items: nothing */
    json_decref(none);
    gw_raw_list_add(&l, json_object_get(json_object_get(o, "message"), "calls"));
    json_t *all = gw_raw_list_value(&l);
    CHECK_STR(gw_raw_text(all, NULL), "[1,2,{\"a\":\"\\\"\"}]");
    json_decref(all);
    CHECK_TRUE(gw_raw_list_value(&l) == NULL); /* emptied; none: NULL */
    json_decref(o);
}

static long s_maxrss_kib(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_maxrss;
}

/* A 12 MiB logprobs reply rendered as a client gets it: the peak grows by
 * ~2x the text (the unpacked reply and the placeholder's copy), where a
 * jansson tree took ~17x (203 MiB). The bound: 5x. RSS is not the
 * process's heap under ASan (shadow memory, quarantine): not checked. */
static void s_test_memory(void)
{
    size_t want = (size_t)12 << 20;
    char *t = malloc(want + 512), *p = t;
    REQUIRE(t);
    *p++ = '[';
    for (unsigned i = 0; (size_t)(p - t) < want; i++)
        p += sprintf(p, "%s{\"token\":\"t%u\",\"logprob\":-0.%u,\"bytes\":[116,%u],"
                        "\"top_logprobs\":[{\"token\":\"a\",\"logprob\":-1.25,\"bytes\":[97]}]}",
                     i ? "," : "", i, i % 997 + 1, i % 100);
    strcpy(p, "]");
    Agentbus__GenerateResponse g = AGENTBUS__GENERATE_RESPONSE__INIT;
    g.model = "m";
    g.created_at = "t";
    g.response = "x";
    g.logprobs_json = t;
    size_t len = agentbus__generate_response__get_packed_size(&g);
    uint8_t *pb = malloc(len);
    REQUIRE(pb);
    agentbus__generate_response__pack(&g, pb);
    long before = s_maxrss_kib();
    json_t *o = gw_ollama_reply(GW_GENERATE, pb, len, 0);
    char *txt = gw_raw_dumps(o);
    long grew = s_maxrss_kib() - before;
    json_decref(o);
    REQUIRE(txt);
    /* the whole text, as it was (it had no whitespace) */
    const char *lp = strstr(txt, ",\"logprobs\":[");
    CHECK_TRUE(lp && strncmp(lp + 12, t, strlen(t)) == 0 && strcmp(lp + 12 + strlen(t), "}") == 0);
    fprintf(stderr, "12 MiB logprobs: peak RSS grew %ld KiB (%.1fx the text)\n", grew,
            (double)grew * 1024 / (double)strlen(t));
#if !S_ASAN
    CHECK_TRUE(grew * 1024 < 5 * (long)strlen(t));
#endif
    free(txt);
    free(pb);
    free(t);
}

/* Floats written as text read as jansson wrote them through tl_json_dumps,
 * byte for byte: the shortest text, ".0" after a whole number, exponents
 * without '+' or leading zeros; NaN and infinities left out, as json_real
 * refuses them. Special values, then random bit patterns. */
static void s_test_floats(void)
{
    float v[4096] = {0.5f, -1.0f, 0.0f, -0.0f, 1e-5f, 1.5e20f, 3.4028235e38f, 1.4e-45f,
                     1.17549435e-38f, 0.1f, 100.0f, 123456792.0f, 16777216.0f, 1e7f, -2.5e-7f};
    size_t n = 15;
    uint32_t x = 0x9e3779b9;
    for (; n < sizeof v / sizeof v[0]; n++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5; /* xorshift32 */
        memcpy(&v[n], &x, sizeof x);
    }
    v[20] = NAN, v[21] = INFINITY, v[22] = -INFINITY;
    json_t *want = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(want, json_real(v[i])); /* NULL for NaN, inf: not appended */
    char *w = tl_json_dumps(want, JSON_COMPACT);
    json_t *got = json_object();
    json_object_set_new(got, "v", gw_raw_floats(v, n, gw_raw_floats_digits(v, n)));
    char *g = gw_raw_dumps(got);
    REQUIRE(w && g);
    CHECK_TRUE(strncmp(g, "{\"v\":", 5) == 0);
    size_t at = 0;
    while (w[at] && w[at] == g[5 + at])
        at++;
    if (w[at] || strcmp(g + 5 + at, "}") != 0)
        fprintf(stderr, "floats differ at %zu: jansson '%.40s', here '%.40s'\n", at,
                w + at - (at > 20 ? 20 : at), g + 5 + at - (at > 20 ? 20 : at));
    CHECK_TRUE(!w[at] && strcmp(g + 5 + at, "}") == 0);
    CHECK_TRUE(strstr(w, "1e-5,") && strstr(w, "1.5e20,") && strstr(w, "-0.0,"));
    free(w);
    free(g);
    json_decref(want);
    json_decref(got);
    got = gw_raw_floats(NULL, 0, 0); /* no values: an empty array */
    size_t len;
    const char *t = gw_raw_text(got, &len);
    CHECK_TRUE(t && len == 2 && memcmp(t, "[]", 2) == 0);
    json_decref(got);
}

int main(void)
{
    s_test_valid();
    s_test_invalid();
    s_test_depth();
    s_test_walk();
    s_test_splice();
    s_test_memory();
    s_test_floats();
    return TEST_DONE("gw_raw");
}
