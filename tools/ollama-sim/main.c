/*
 * main.c - ollama-sim: an Ollama-API simulator for tests and benches.
 * See docs/ollama-sim.md for the interface.
 */
#include "sim.h"

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    /* Large (models, slots): static, not on the stack. */
    static sim_t s;
    sim_config_defaults(&s);
    if (sim_config_load(&s, argc, argv) != 0)
        return 2;
    return sim_http_run(&s);
}
