/*
 * gw_pb.c - a worker's reply decoded with its text made UTF-8 (see
 * gw_pb_unpack in gw_json.h).
 */
#include "gw_json.h"
#include "agentbus.h"
#include "text.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* 1 when the NUL-terminated S is UTF-8 (ab_utf8_seq stops at the NUL). */
static int s_is_utf8(const char *s)
{
    size_t n;
    for (const unsigned char *p = (const unsigned char *)s; *p; p += n)
        if (!(n = ab_utf8_seq(p)))
            return 0;
    return 1;
}

/* *S made UTF-8 in a new buffer, the old one freed as free_unpacked would
 * (the default allocator; a field's default "" is UTF-8, never replaced).
 * Returns 0, or -1 out of memory. */
static int s_fix_text(char **s)
{
    if (!*s || s_is_utf8(*s))
        return 0;
    size_t len = strlen(*s), cap = 3 * len + 1;
    char *out = malloc(cap);
    if (!out)
        return -1;
    ab_text_utf8(*s, len, out, cap);
    free(*s);
    *s = out;
    return 0;
}

static int s_fix(ProtobufCMessage *m);

/* The string or message field F of M: its items (one unless repeated). */
static int s_fix_field(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    char *at = (char *)m + f->offset;
    size_t n = 1;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
        memcpy(&n, (char *)m + f->quantifier_offset, sizeof n);
        void *array;
        memcpy(&array, at, sizeof array);
        at = array;
    }
    for (size_t k = 0; at && k < n; k++) {
        if (f->type == PROTOBUF_C_TYPE_STRING) {
            if (s_fix_text((char **)at + k))
                return -1;
        } else {
            ProtobufCMessage *sub = ((ProtobufCMessage **)at)[k];
            if (sub && s_fix(sub))
                return -1;
        }
    }
    return 0;
}

static int s_fix(ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t cas;
            memcpy(&cas, (char *)m + f->quantifier_offset, sizeof cas);
            if (cas != f->id)
                continue; /* another member of the oneof holds the memory */
        }
        if (s_fix_field(m, f))
            return -1;
    }
    return 0;
}

void *gw_pb_decode(const ProtobufCMessageDescriptor *desc, size_t len, const void *pb)
{
    return ab_pb_unpack(desc, len, pb);
}

void *gw_pb_unpack(const ProtobufCMessageDescriptor *desc, size_t len, const void *pb)
{
    ProtobufCMessage *m = gw_pb_decode(desc, len, pb);
    if (m && s_fix(m)) {
        protobuf_c_message_free_unpacked(m, NULL);
        return NULL;
    }
    return m;
}
