/*
 * test_nf_lsan.c - netfuzz's reader of LeakSanitizer reports
 * (tests/fuzz/nf_lsan.c): libzmq's loss at close is told from any other.
 */
#include "test.h"
#include "nf_lsan.h"

#include <stdio.h>
#include <unistd.h>

static char s_path[64];

/* Writes TEXT to a temporary log and reads it. */
static int s_read(const char *text, size_t *bytes)
{
    FILE *f = fopen(s_path, "w");
    REQUIRE(f);
    fputs(text, f);
    fclose(f);
    return nf_lsan_only_libzmq(s_path, bytes);
}

#define S_LOG "2026-12-06T00:55:31.146Z WARN  link      link to 'nf-b2' down\n\n"
#define S_HEAD "=================================================================\n" \
               "==21558==ERROR: LeakSanitizer: detected memory leaks\n\n"
#define S_BUF "Direct leak of 18160 byte(s) in 1 object(s) allocated from:\n"                  \
              "    #0 0x7f7e89cb89cf in __interceptor_malloc "                                  \
              "../../../../src/libsanitizer/asan/asan_malloc_linux.cpp:69\n"                     \
              "    #1 0x7f7e8a3dca3f  (/lib/x86_64-linux-gnu/libzmq.so.5+0x83a3f)\n\n"
#define S_NEW(kind, n) kind " leak of " n " byte(s) in 2 object(s) allocated from:\n"         \
              "    #0 0x7f7e89cb94c8 in operator new(unsigned long) "                           \
              "../../../../src/libsanitizer/asan/asan_new_delete.cpp:95\n"                       \
              "    #1 0x7f7e8a395219  (/lib/x86_64-linux-gnu/libzmq.so.5+0x3c219)\n\n"
#define S_TAIL "SUMMARY: AddressSanitizer: 18352 byte(s) leaked in 3 allocation(s).\n"

int main(void)
{
    snprintf(s_path, sizeof s_path, "/tmp/test_nf_lsan.%d", (int)getpid());
    size_t bytes = 0;
    /* the far broker's report of 2026-12-06 (netfuzz --line --seed 9101) */
    CHECK_EQ(s_read(S_LOG S_HEAD S_BUF S_NEW("Indirect", "192") S_TAIL, &bytes), 1);
    CHECK_EQ(bytes, 18160 + 192);
    /* metadata alone (a frame under 34 bytes): operator new, direct */
    CHECK_EQ(s_read(S_HEAD S_NEW("Direct", "440") S_TAIL, &bytes), 1);
    CHECK_EQ(s_read(S_LOG, &bytes), 0); /* no report */
    CHECK_EQ(bytes, 0);
    /* a frame of agentbus's in the stack */
    CHECK_EQ(s_read(S_HEAD "Direct leak of 18160 byte(s) in 1 object(s) allocated from:\n"
                           "    #0 0x7f in __interceptor_malloc ../src/libsanitizer/asan/x.cpp:69\n"
                           "    #1 0x55 in ab_req_new /work/main/broker/request.c:99\n\n" S_TAIL,
                    &bytes),
             -1);
    /* malloc'd by libzmq, not a receive buffer (a whole large message) */
    CHECK_EQ(s_read(S_HEAD "Direct leak of 70000 byte(s) in 1 object(s) allocated from:\n"
                           "    #0 0x7f in __interceptor_malloc ../src/libsanitizer/asan/x.cpp:69\n"
                           "    #1 0x7f (/lib/x86_64-linux-gnu/libzmq.so.5+0x3ab00)\n\n" S_TAIL,
                    &bytes),
             -1);
    /* malloc'd, indirect: not how libzmq's loss looks */
    CHECK_EQ(s_read(S_HEAD S_BUF "Indirect leak of 18160 byte(s) in 1 object(s) allocated from:\n"
                                 "    #0 0x7f in __interceptor_malloc ../src/libsanitizer/a.cpp:1\n"
                                 "    #1 0x7f (/lib/x86_64-linux-gnu/libzmq.so.5+0x83a3f)\n\n"
                                 S_TAIL,
                    &bytes),
             -1);
    /* a record with no frame past the allocator */
    CHECK_EQ(s_read(S_HEAD "Direct leak of 18160 byte(s) in 1 object(s) allocated from:\n"
                           "    #0 0x7f in __interceptor_malloc ../src/libsanitizer/a.cpp:1\n\n"
                           S_TAIL,
                    &bytes),
             -1);
    /* another sanitizer error, a failed recount, two reports, an unknown line */
    CHECK_EQ(s_read("x.c:1:2: runtime error: signed integer overflow\n" S_HEAD S_BUF S_TAIL,
                    &bytes),
             -1);
    CHECK_EQ(s_read("2026 ERROR core at exit: the broker's bookkeeping is inconsistent: x\n" S_HEAD
                        S_BUF S_TAIL,
                    &bytes),
             -1);
    CHECK_EQ(s_read(S_HEAD S_BUF S_TAIL S_HEAD S_BUF S_TAIL, &bytes), -1);
    CHECK_EQ(s_read(S_HEAD S_BUF "Objects leaked above:\n" S_TAIL, &bytes), -1);
    CHECK_EQ(s_read(S_HEAD S_BUF, &bytes), -1); /* cut before its SUMMARY */
    unlink(s_path);
    CHECK_EQ(nf_lsan_only_libzmq(s_path, &bytes), -1); /* unreadable */
    return TEST_DONE("test_nf_lsan");
}
