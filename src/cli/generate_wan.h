/* dfm generate's Wan path (src/cli/generate_wan.c): the options generate_cmd.c parsed. */
#ifndef DFM_CLI_GENERATE_WAN_H
#define DFM_CLI_GENERATE_WAN_H

#include "dfm/sample.h"

#include <stdint.h>

typedef struct {
    const char *checkpoint, *weights, *out_dir;
    int weights_explicit;
    const char *adapter;         /* a PEFT LoRA folder merged into the weights, or NULL */
    const char *text_embeddings; /* a safetensors file of text_embeddings [n, L, D] (+ text_lens [n]), or NULL */
    const char *const *prompts;  /* --prompt values (encoded by the checkpoint's stand-in encoder) */
    int nprompts;
    int per, batch, steps;  /* clips per prompt; clips per model evaluation; 0 = the sampler's default */
    double guidance, shift; /* shift <= 0: the training shift */
    uint64_t seed;
    void (*progress)(int done, int total, void *ctx);
} wan_gen_opts;

int dfm_generate_wan(const wan_gen_opts *o);

#endif
