/*
 * nf_lsan.h - reading a LeakSanitizer report in a broker's log, to tell
 * libzmq's own leak at close from one of agentbus's.
 *
 * libzmq 4.3.4 loses a message that is half received when its socket
 * closes while the connection is still sending (pipe_t::process_pipe_term
 * drops the pipe without the rollback pipe_t::terminate does; see
 * tests/fuzz/clientfuzz.c). A broker stopped while a linked broker still
 * streams to its link socket can lose one that way: the connection's
 * receive buffer (18,160 bytes, malloc on a libzmq I/O thread) and the
 * metadata the frame points to (operator new). netfuzz fails a broker's
 * exit on any other leak.
 */
#ifndef AB_NF_LSAN_H
#define AB_NF_LSAN_H

#include <stddef.h>

/* The size of the v2 decoder's shared receive buffer in libzmq 4.3.4:
 * 8,192 bytes of data, an 8-byte counter, ceil(8192 / 33) = 249 content
 * records of 40 bytes. */
#define NF_ZMQ_RECV_BUFFER (8192 + 8 + 249 * 40)

/* What the log at PATH says of leaks: 0 no LeakSanitizer report; 1 one
 * report, and every record in it is libzmq's loss at close: direct leaks
 * are malloc'd receive buffers (a multiple of NF_ZMQ_RECV_BUFFER), the
 * others operator new, every frame past the allocator inside libzmq, and
 * the log has no other sanitizer error and no failed recount of the
 * broker's bookkeeping; -1 anything else (any other leak, error, or an
 * unreadable log). *BYTES gets the bytes the report counts. */
int nf_lsan_only_libzmq(const char *path, size_t *bytes);

#endif
