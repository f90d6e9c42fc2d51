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

/* What a good decode promises about the payload (codec.h): a second
 * frame as it is, or an inline one inside frame 0, within the limits,
 * never left in the header (it would be re-encoded when passed on). */
static void s_check_payload(const ab_frame_t *frames, size_t nframes, const ab_limits_t *lim,
                            const ab_header_t *h, const ab_frame_t *pl)
{
    if (h->inline_payload.ptr || h->inline_payload.len)
        __builtin_trap();
    if (nframes == 2 && (pl->size != frames[1].size || !pl->data))
        __builtin_trap();
    if (nframes == 1 && pl->data) {
        const uint8_t *f0 = frames[0].data, *p = pl->data;
        if (p < f0 || p + pl->size > f0 + frames[0].size || pl->size > lim->max_payload ||
            pl->size > AB_INLINE_LIMIT || frames[0].size - pl->size > lim->max_header + 8)
            __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* First byte picks how the rest is framed: one frame, split in two, or
     * (mode 1) a header followed by an inline payload field made of the
     * second half, alone or (bit 2) with a payload frame too. */
    if (size == 0)
        return 0;
    static uint8_t joined[1 << 16];
    size_t split = data[0] % 4 <= 1 && size > 1 ? (size - 1) / 2 : size - 1;
    ab_frame_t frames[2] = {{data + 1, split}, {data + 1 + split, size - 1 - split}};
    size_t nframes = split == size - 1 ? 1 : 2;
    if (data[0] % 4 == 1 && ab_msg_inline_size(split, size - 1 - split) <= sizeof joined) {
        ab_msg_inline_put(joined, data + 1, split, data + 1 + split, size - 1 - split);
        frames[0] = (ab_frame_t){joined, ab_msg_inline_size(split, size - 1 - split)};
        frames[1] = (ab_frame_t){data + 1, split};
        nframes = data[0] & 4 ? 2 : 1;
    }
    ab_limits_t lim = {256, 1024};
    ab_header_t h;
    ab_frame_t pl;
    int rc = ab_msg_decode(frames, nframes, &lim, &h, &pl);
    if (rc == AB_OK) {
        s_check_payload(frames, nframes, &lim, &h, &pl);
        /* A decoded header must re-encode and decode to the same fields. */
        uint8_t buf[1024];
        size_t n = ab_header_encode(&h, buf, sizeof buf);
        ab_header_t again;
        if (n == 0 || ab_header_parse(buf, n, &again) != AB_OK || again.id != h.id ||
            again.kind != h.kind || again.target.len != h.target.len ||
            again.correlation_id != h.correlation_id)
            __builtin_trap();
    } else if (rc != AB_EFRAMES && rc != AB_EHDRSIZE && rc != AB_EMISSING &&
               rc != AB_EPAYLOADSIZE && rc != AB_EDECODE && rc != AB_EVERSION &&
               rc != AB_EINLINE) {
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
