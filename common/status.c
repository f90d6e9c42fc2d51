/* status.c - texts for status codes, shared by the library and the programs. */
#include "agentbus.h"

#include <stdlib.h>

typedef struct {
    int code;
    const char *name;
    const char *text;
} s_status_t;

static const s_status_t s_table[] = {
    {AB_OK, "OK", "success"},
    {AB_EINVAL, "INVALID", "invalid argument"},
    {AB_ENOMEM, "NOMEM", "out of memory"},
    {AB_ETIMEOUT, "TIMEOUT", "timed out waiting"},
    {AB_ENOSERVICE, "NO_SERVICE", "no such service is registered"},
    {AB_EBUSY, "BUSY", "service queue is full, try later"},
    {AB_EDEADLINE, "DEADLINE", "request deadline passed"},
    {AB_EMALFORMED, "MALFORMED", "message was malformed"},
    {AB_EWORKERLOST, "WORKER_LOST", "the worker was lost while holding the request"},
    {AB_EINTERNAL, "INTERNAL", "internal error"},
    {AB_EVERSION, "UNSUPPORTED_VERSION", "unsupported protocol version"},
    {AB_EUNSUPPORTED, "UNSUPPORTED", "operation not supported"},
    {AB_EAPPLICATION, "APPLICATION", "the worker failed the request"},
    {AB_EDISCONNECTED, "DISCONNECTED", "connection to the broker was lost"},
    {AB_EZMQ, "ZMQ", "ZeroMQ call failed"},
    {AB_ESTOPPED, "STOPPED", "handle was stopped"},
    {AB_EFRAMES, "FRAMES", "wrong number of frames"},
    {AB_EHDRSIZE, "HEADER_SIZE", "header frame exceeds the size limit"},
    {AB_EMISSING, "MISSING_FIELD", "a required header field is missing"},
    {AB_EPAYLOADSIZE, "PAYLOAD_SIZE", "payload exceeds the size limit"},
    {AB_EDECODE, "DECODE", "header is not valid protobuf"},
    {AB_EMODEL, "MODEL_NOT_FOUND", "the model is not available on any worker or backend"},
    {AB_EBADREQUEST, "BAD_REQUEST", "the inference backend refused the request"},
    {AB_EBACKENDBUSY, "BACKEND_BUSY", "the inference backend is overloaded, try later"},
    {AB_EBACKEND, "BACKEND", "the inference backend failed or is unreachable"},
    {AB_ECANCELLED, "CANCELLED", "the request was cancelled"},
    {AB_ENAMETAKEN, "NAME_TAKEN", "another live connection holds that agent name"},
    {AB_EBADNAME, "BAD_NAME", "malformed agent name or topic"},
    {AB_ETOOLARGE, "TOO_LARGE", "message exceeds the broker's message size limit"},
    {AB_ENOAGENT, "NO_AGENT", "no such agent is connected"},
    {AB_EBATCH, "BATCH", "malformed batch: a count or length exceeds what it holds"},
    {AB_ELZ4, "LZ4", "corrupt compressed payload or wrong original size"},
};

static const s_status_t *s_find(int code)
{
    for (size_t i = 0; i < sizeof s_table / sizeof s_table[0]; i++)
        if (s_table[i].code == code)
            return &s_table[i];
    return NULL;
}

const char *ab_strerror(int code)
{
    const s_status_t *s = s_find(code);
    return s ? s->text : "unknown error code";
}

const char *ab_status_name(int code)
{
    const s_status_t *s = s_find(code);
    return s ? s->name : "UNKNOWN";
}

void ab_free(void *p)
{
    free(p);
}
