/*
 * driver.c - runs a libFuzzer-style target without libFuzzer: a fixed-seed
 * stream of inputs (random bytes, valid headers, and mutations of them:
 * bit flips, truncations, inserted bytes, overlong varints). Bounded in
 * iterations; the same seed gives the same inputs, so a failure reproduces.
 * Usage: fuzz_driver [ITERATIONS] [SEED]
 * Built with AB_DRIVER_CORPUS it writes the same inputs out as files
 * instead: the seed corpus of the libFuzzer builds.
 */
#include "codec.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t s_state;
static uint64_t s_rand(void)
{
    s_state ^= s_state << 13;
    s_state ^= s_state >> 7;
    s_state ^= s_state << 17;
    return s_state;
}

/* A valid header of a random kind with random fields, after a framing byte. */
static size_t s_valid(uint8_t *buf, size_t cap)
{
    ab_header_t h = ab_header_init((uint32_t)(s_rand() % 16));
    h.id = s_rand() % 3 ? s_rand() : 0;
    h.correlation_id = s_rand() % 2 ? s_rand() >> (s_rand() % 64) : 0;
    h.target = ab_view_of(s_rand() % 4 ? "echo" : "");
    h.error_code = (uint32_t)(s_rand() % 12);
    h.credit = (uint32_t)(s_rand() % 5);
    h.timeout_ms = (uint32_t)s_rand();
    buf[0] = (uint8_t)s_rand();
    return 1 + ab_header_encode(&h, buf + 1, cap - 1);
}

static size_t s_mutate(uint8_t *buf, size_t n, size_t cap)
{
    int rounds = 1 + (int)(s_rand() % 4);
    for (int r = 0; r < rounds && n > 0; r++) {
        switch (s_rand() % 5) {
        case 0: buf[s_rand() % n] ^= (uint8_t)(1u << (s_rand() % 8)); break;
        case 1: n = s_rand() % n; break;
        case 2: if (n < cap) { size_t at = s_rand() % (n + 1);
                    memmove(buf + at + 1, buf + at, n - at); buf[at] = (uint8_t)s_rand(); n++; }
                break;
        case 3: buf[s_rand() % n] = 0xff; break; /* continuation bits everywhere */
        default: buf[s_rand() % n] = (uint8_t)s_rand(); break;
        }
    }
    return n;
}

/* Input I of the stream (the stream is the same for every target). */
static size_t s_input(long i, uint8_t *buf, size_t cap)
{
    size_t n;
    if (i % 3 == 0) {
        n = s_rand() % 300;
        for (size_t k = 0; k < n; k++)
            buf[k] = (uint8_t)s_rand();
    } else {
        n = s_valid(buf, cap);
        if (i % 3 == 2)
            n = s_mutate(buf, n, cap);
    }
    return n;
}

#ifdef AB_DRIVER_CORPUS
/* fuzz_corpus DIR COUNT: writes the stream's first COUNT inputs as files,
 * the seed corpus of the libFuzzer builds (AB_LIBFUZZER). */
int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    long count = atol(argv[2]);
    s_state = 0x2545f4914f6cdd1dull;
    uint8_t buf[2048];
    for (long i = 0; i < count; i++) {
        size_t n = s_input(i, buf, sizeof buf);
        char path[4096];
        snprintf(path, sizeof path, "%s/seed-%05ld", argv[1], i);
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(buf, 1, n, f) != n) {
            perror(path);
            return 1;
        }
        fclose(f);
    }
    return 0;
}
#else
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 200000;
    s_state = argc > 2 ? strtoull(argv[2], NULL, 0) : 0x2545f4914f6cdd1dull;
    if (s_state == 0)
        s_state = 1;
    uint8_t buf[2048];
    for (long i = 0; i < iters; i++) {
        size_t n = s_input(i, buf, sizeof buf);
        /* An exactly-sized heap copy, as libFuzzer passes it, so ASan sees
         * any read past the end. */
        uint8_t *input = malloc(n ? n : 1);
        if (!input)
            return 1;
        memcpy(input, buf, n);
        LLVMFuzzerTestOneInput(input, n);
        free(input);
    }
    printf("fuzz_driver: %ld inputs, no crash\n", iters);
    return 0;
}
#endif
