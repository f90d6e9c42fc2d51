/* tl_infer.c - see tl_infer.h. */
#include "tl_infer.h"

#include <stdlib.h>

/* Points REQ's body case at IN's body; 0, or -1 for an unknown kind. */
static int s_body(const tl_infer_t *in, Agentbus__InferenceRequest *req)
{
    char *model = (char *)(in->model ? in->model : "");
    switch (in->kind) {
    case TL_INFER_GENERATE:
        in->body.generate->model = model;
        in->body.generate->has_stream_case = AGENTBUS__GENERATE_REQUEST__HAS_STREAM_STREAM;
        in->body.generate->stream = in->stream != 0;
        req->body_case = AGENTBUS__INFERENCE_REQUEST__BODY_GENERATE;
        req->generate = in->body.generate;
        return 0;
    case TL_INFER_CHAT:
        in->body.chat->model = model;
        in->body.chat->has_stream_case = AGENTBUS__CHAT_REQUEST__HAS_STREAM_STREAM;
        in->body.chat->stream = in->stream != 0;
        req->body_case = AGENTBUS__INFERENCE_REQUEST__BODY_CHAT;
        req->chat = in->body.chat;
        return 0;
    case TL_INFER_EMBED:
        in->body.embed->model = model;
        req->body_case = AGENTBUS__INFERENCE_REQUEST__BODY_EMBED;
        req->embed = in->body.embed;
        return 0;
    case TL_INFER_LOAD:
    case TL_INFER_UNLOAD:
        in->body.command->model = model;
        req->body_case = in->kind == TL_INFER_LOAD ? AGENTBUS__INFERENCE_REQUEST__BODY_LOAD
                                                   : AGENTBUS__INFERENCE_REQUEST__BODY_UNLOAD;
        if (in->kind == TL_INFER_LOAD)
            req->load = in->body.command;
        else
            req->unload = in->body.command;
        return 0;
    }
    return -1;
}

uint8_t *tl_infer_pack(const tl_infer_t *in, size_t *len)
{
    Agentbus__InferenceRequest req = AGENTBUS__INFERENCE_REQUEST__INIT;
    *len = 0;
    if (s_body(in, &req) != 0)
        return NULL;
    size_t n = agentbus__inference_request__get_packed_size(&req);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return NULL;
    agentbus__inference_request__pack(&req, buf);
    *len = n;
    return buf;
}
