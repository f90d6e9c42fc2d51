/*
 * fuzz_decode.c - fuzz target for everything the broker decodes from the
 * network: the header codec and the protobuf-c payloads it unpacks
 * (Hello, Register). libFuzzer-compatible: build with clang
 * -fsanitize=fuzzer,address to explore; ctest runs it through driver.c on a
 * deterministic stream of random and mutated inputs under ASan+UBSan.
 */
#include "agentbus.h"
#include "agentbus.pb-c.h"
#include "codec.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* First byte picks how the rest is framed: one frame, or split in two. */
    if (size == 0)
        return 0;
    size_t split = data[0] % 4 == 0 && size > 1 ? (size - 1) / 2 : size - 1;
    ab_frame_t frames[2] = {{data + 1, split}, {data + 1 + split, size - 1 - split}};
    size_t nframes = split == size - 1 ? 1 : 2;
    ab_limits_t lim = {256, 1024};
    ab_header_t h;
    ab_frame_t pl;
    int rc = ab_msg_decode(frames, nframes, &lim, &h, &pl);
    if (rc == AB_OK) {
        /* A decoded header must re-encode and decode to the same fields. */
        uint8_t buf[1024];
        size_t n = ab_header_encode(&h, buf, sizeof buf);
        ab_header_t again;
        if (n == 0 || ab_header_parse(buf, n, &again) != AB_OK || again.id != h.id ||
            again.kind != h.kind || again.target.len != h.target.len ||
            again.correlation_id != h.correlation_id)
            __builtin_trap();
    } else if (rc != AB_EFRAMES && rc != AB_EHDRSIZE && rc != AB_EMISSING &&
               rc != AB_EPAYLOADSIZE && rc != AB_EDECODE && rc != AB_EVERSION) {
        __builtin_trap(); /* only the codec's own errors may come back */
    }
    Agentbus__Register *reg = agentbus__register__unpack(NULL, size - 1, data + 1);
    if (reg)
        agentbus__register__free_unpacked(reg, NULL);
    Agentbus__Hello *hello = agentbus__hello__unpack(NULL, size - 1, data + 1);
    if (hello)
        agentbus__hello__free_unpacked(hello, NULL);
    return 0;
}
