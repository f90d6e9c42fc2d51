/* status.c - names and texts of status codes, expanded from AB_STATUS_LIST
 * (include/agentbus.h), shared by the library and the programs; and what
 * the library hands its caller: ab_free, ab_pb_unpack. */
#include "agentbus.h"
#include "budget.h"
#include "vocab.h"

#include <protobuf-c/protobuf-c.h>
#include <stdlib.h>

/* Positions of the rows of AB_STATUS_LIST. */
#define S_POS(constant, value, name, text) S_POS_##constant,
enum { AB_STATUS_LIST(S_POS) };

#define S_NAME(constant, value, name, text) name,
static const char *const s_names[AB_STATUS_COUNT] = {AB_STATUS_LIST(S_NAME)};
#define S_TEXT(constant, value, name, text) text,
static const char *const s_texts[AB_STATUS_COUNT] = {AB_STATUS_LIST(S_TEXT)};
#define S_VALUE(constant, value, name, text) constant,
static const int s_values[AB_STATUS_COUNT] = {AB_STATUS_LIST(S_VALUE)};

/* A value listed twice is a duplicate case label: it does not compile. */
int ab_status_index(int status)
{
    switch (status) {
#define S_INDEX(constant, value, name, text)                                                     \
    case constant:                                                                               \
        return S_POS_##constant;
        AB_STATUS_LIST(S_INDEX)
    default:
        return -1;
    }
}

int ab_status_at(int i)
{
    return i >= 0 && i < AB_STATUS_COUNT ? s_values[i] : AB_EINTERNAL;
}

const char *ab_strerror(int code)
{
    int i = ab_status_index(code);
    return i >= 0 ? s_texts[i] : "unknown error code";
}

const char *ab_status_name(int code)
{
    int i = ab_status_index(code);
    return i >= 0 ? s_names[i] : "UNKNOWN";
}

void ab_free(void *p)
{
    free(p);
}

struct ProtobufCMessage *ab_pb_unpack(const struct ProtobufCMessageDescriptor *desc, size_t len,
                                      const void *data)
{
    if (!desc || (!data && len))
        return NULL;
    size_t left = AB_DECODE_BUDGET(len);
    ProtobufCAllocator a = {AB_BUDGET_ALLOCATOR(&left)};
    return protobuf_c_message_unpack(desc, &a, len, data);
}
