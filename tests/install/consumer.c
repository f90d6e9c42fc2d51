/*
 * consumer.c - a program built against an installed agentbus (tests/install):
 * it needs agentbus.h, the companion agentbus.pb-c.h and libagentbus, and
 * exits non-zero unless the library it loaded is the one it compiled with.
 */
#include <agentbus.h>
#include <agentbus.pb-c.h>

#include <stdio.h>
#include <string.h>

int main(void)
{
    if (strcmp(ab_version(), AB_VERSION_STRING) != 0) {
        fprintf(stderr, "header %s, library %s\n", AB_VERSION_STRING, ab_version());
        return 1;
    }
    ab_options_t *o = ab_options_new();
    int rc = o ? ab_options_set_endpoint(o, "tcp://127.0.0.1:1") : AB_ENOMEM;
    ab_options_destroy(&o);
    ab_request_opts_t req;
    ab_request_opts_init(&req);
    /* A typed payload through the companion header's exported functions. */
    Agentbus__InferenceRequest ir = AGENTBUS__INFERENCE_REQUEST__INIT;
    size_t packed = agentbus__inference_request__get_packed_size(&ir);
    if (rc != AB_OK || o != NULL || req.timeout_ms != 0 || packed != 0) {
        fprintf(stderr, "rc %s, options %p, timeout %d, packed %zu\n", ab_status_name(rc),
                (void *)o, req.timeout_ms, packed);
        return 1;
    }
    printf("agentbus %s: %s\n", ab_version(), ab_strerror(AB_EBUSY));
    return 0;
}
