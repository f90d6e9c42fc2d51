/*
 * test_text.c - base/text.c: ab_text_clean turns a backend's or a peer's
 * bytes into text a client can show and a JSON encoder takes (U+FFFD for
 * each byte that is not UTF-8 and for control characters but tab and
 * newline), never cutting a character; ab_utf8_seq, what it and the log
 * lines judge UTF-8 by.
 */
#include "test.h"
#include "text.h"

#include <string.h>

#define FFFD "\xEF\xBF\xBD"

/* IN is a string literal: its bytes, NULs included. */
#define S_EQ(in, want) s_eq(in, sizeof in - 1, want)

static void s_eq(const char *in, size_t len, const char *want)
{
    char out[256];
    size_t n = ab_text_clean(in, len, out, sizeof out);
    CHECK_STR(out, want);
    CHECK_U64(n, strlen(want));
}

/* Whether S is all valid UTF-8 with no control character but \t and \n. */
static int s_clean(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        size_t n = ab_utf8_seq(p);
        if (!n || (n == 1 && ((*p < 0x20 && *p != '\t' && *p != '\n') || *p == 0x7f)) ||
            (n == 2 && p[0] == 0xC2 && p[1] < 0xA0))
            return 0;
        p += n;
    }
    return 1;
}

static void s_test_cases(void)
{
    S_EQ("plain text", "plain text");
    S_EQ("tab\there\nnext", "tab\there\nnext");
    S_EQ("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80", "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
    S_EQ("\xFF\xFE bad", FFFD FFFD " bad");
    S_EQ("a\x01\x1b[31mred\x7f", "a" FFFD FFFD "[31mred" FFFD);
    S_EQ("c1\xC2\x85.", "c1" FFFD ".");      /* NEL, a C1 control */
    S_EQ("nbsp\xC2\xA0.", "nbsp\xC2\xA0.");   /* U+00A0 is text */
    S_EQ("cut \xE2\x82", "cut " FFFD FFFD);   /* a sequence cut short at the end */
    S_EQ("nul\0after", "nul" FFFD "after"); /* LEN counts, not the NUL */
    S_EQ("\xC0\xAF \xED\xA0\x80 \xF4\x90\x80\x80", /* overlong, surrogate, > U+10FFFF */
         FFFD FFFD " " FFFD FFFD FFFD " " FFFD FFFD FFFD FFFD);
    S_EQ("", "");
}

/* ab_text_utf8: a model's text keeps its control characters (JSON escapes
 * them); only what is not UTF-8 goes. 3 * LEN + 1 holds any text whole. */
static void s_test_utf8(void)
{
    char out[64];
    static const char in[] = "a\x01\r\x1b[0m\x7f\xC2\x85 caf\xC3\xA9 \xFF\xED\xA0\x80 cut\xE2\x82";
    size_t n = ab_text_utf8(in, sizeof in - 1, out, sizeof out);
    static const char want[] =
        "a\x01\r\x1b[0m\x7f\xC2\x85 caf\xC3\xA9 " FFFD FFFD FFFD FFFD " cut" FFFD FFFD;
    CHECK_STR(out, want);
    CHECK_U64(n, sizeof want - 1);
    char all[3 * 8 + 1];
    CHECK_U64(ab_text_utf8("\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF", 8, all, sizeof all), 24);
}

/* A character that does not fit whole is left out, with what follows. */
static void s_test_cap(void)
{
    char out[8];
    CHECK_U64(ab_text_clean("abcdef\xE2\x82\xAC", 9, out, sizeof out), 6);
    CHECK_STR(out, "abcdef");
    CHECK_U64(ab_text_clean("abcde\xFF", 6, out, 8), 5); /* U+FFFD needs 3 + the NUL */
    CHECK_STR(out, "abcde");
    CHECK_U64(ab_text_clean("abc", 3, out, 1), 0);
    CHECK_STR(out, "");
}

/* Random bytes, any length and bound: always clean text, terminated. */
static void s_test_random(void)
{
    char in[300], out[1000];
    int bad = 0;
    for (int i = 0; i < 20000 && !bad; i++) {
        size_t len = (size_t)(t_rand() % sizeof in), cap = 1 + (size_t)(t_rand() % sizeof out);
        for (size_t k = 0; k < len; k++)
            in[k] = (char)(t_rand() % 4 ? t_rand() : 0x80 + t_rand() % 0x40);
        memset(out, 'x', sizeof out);
        size_t n = ab_text_clean(in, len, out, cap);
        if (n >= cap || out[n] != '\0' || strlen(out) != n || !s_clean(out)) {
            CHECK_TRUE(n < cap && out[n] == '\0' && strlen(out) == n && s_clean(out));
            bad = 1;
        }
    }
}

int main(void)
{
    s_test_cases();
    s_test_cap();
    s_test_utf8();
    s_test_random();
    return TEST_DONE("text");
}
