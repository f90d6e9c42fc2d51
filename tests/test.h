/*
 * test.h - assertions for agentbus tests. Each prints file:line, the
 * expression and both values on failure, and counts; a failed CHECK lets the
 * test go on, a failed REQUIRE ends it. TEST_DONE prints the closing line
 * and returns the exit status.
 */
#ifndef AB_TEST_H
#define AB_TEST_H

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Weak: one pair of counters shared by every file of a test program.
 * Atomic, so that a test's own threads may CHECK and REQUIRE too (a failed
 * REQUIRE there ends the process at once, as on the main thread). */
__attribute__((weak)) atomic_int t_checks, t_failed;

#define T_FAIL_(fmt, ...)                                                                          \
    do {                                                                                           \
        fprintf(stderr, "%s:%d: " fmt "\n", __FILE__, __LINE__, __VA_ARGS__);                      \
        t_failed++;                                                                                \
    } while (0)

#define CHECK_EQ(a, b)                                                                             \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        t_checks++;                                                                                \
        if (a_ != b_)                                                                              \
            T_FAIL_("CHECK_EQ(%s, %s): %lld != %lld", #a, #b, a_, b_);                             \
    } while (0)

#define CHECK_U64(a, b)                                                                            \
    do {                                                                                           \
        unsigned long long a_ = (unsigned long long)(a), b_ = (unsigned long long)(b);             \
        t_checks++;                                                                                \
        if (a_ != b_)                                                                              \
            T_FAIL_("CHECK_U64(%s, %s): %llu != %llu", #a, #b, a_, b_);                            \
    } while (0)

#define CHECK_TRUE(e)                                                                              \
    do {                                                                                           \
        t_checks++;                                                                                \
        if (!(e))                                                                                  \
            T_FAIL_("CHECK_TRUE(%s) is false", #e);                                                \
    } while (0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        t_checks++;                                                                                \
        if (!a_ || !b_ || strcmp(a_, b_) != 0)                                                     \
            T_FAIL_("CHECK_STR(%s, %s): \"%s\" != \"%s\"", #a, #b, a_ ? a_ : "(null)",             \
                    b_ ? b_ : "(null)");                                                           \
    } while (0)

/* A range check: lo <= v <= hi. */
#define CHECK_RANGE(v, lo, hi)                                                                     \
    do {                                                                                           \
        double v_ = (double)(v), lo_ = (double)(lo), hi_ = (double)(hi);                           \
        t_checks++;                                                                                \
        if (v_ < lo_ || v_ > hi_)                                                                  \
            T_FAIL_("CHECK_RANGE(%s): %g not in [%g, %g]", #v, v_, lo_, hi_);                      \
    } while (0)

#define REQUIRE(e)                                                                                 \
    do {                                                                                           \
        t_checks++;                                                                                \
        if (!(e)) {                                                                                \
            T_FAIL_("REQUIRE(%s) failed; stopping", #e);                                           \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

/* Deterministic xorshift64 for test data: the same run every time. */
static inline unsigned long long t_rand(void)
{
    static unsigned long long state = 0x9e3779b97f4a7c15ull;
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

#define TEST_DONE(name)                                                                            \
    (printf("%s: %d checks, %d failed\n", (name), t_checks, t_failed), t_failed ? 1 : 0)

#endif
