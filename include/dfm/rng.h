/* Counter-based random numbers (Philox4x32-10).
 *
 * Every random number dfm draws for training is a pure function of
 * (seed, stream, step, sample index, element index), so noise, timesteps and dropout do not depend on
 * how a batch is split across micro-batches, threads or processes, and a resumed run draws the same
 * numbers as one that was never interrupted. */
#ifndef DFM_RNG_H
#define DFM_RNG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What a draw is for: each purpose gets its own stream so draws never overlap. */
enum {
    RNG_STREAM_NOISE = 1,    /* diffusion noise, one normal per latent element */
    RNG_STREAM_TIMESTEP = 2, /* timestep / sigma sampling */
    RNG_STREAM_DROPOUT = 3,  /* condition dropout for classifier-free guidance */
    RNG_STREAM_INIT = 4,     /* parameter initialisation (index = parameter number) */
    RNG_STREAM_BATCH = 5,    /* per-step (not per-sample) decisions, e.g. the mix-uniform coin */
    RNG_STREAM_SAMPLE = 6,   /* generation: initial latents */
    RNG_STREAM_DATA = 7,     /* data order: the permutation of epoch `step` */
    RNG_STREAM_SPLIT = 8,    /* the train/validation split */
    RNG_STREAM_TEXT = 9,     /* stand-in text encoder: a word's row (step, index = the word's 64-bit hash) */
    RNG_STREAM_CLIP = 10,    /* demo video clips: direction and start position (index = clip number) */
    RNG_STREAM_LORA = 11,    /* LoRA A initialisation (index = adapted module number) */
};

/* One Philox4x32-10 block: 4 random 32-bit words from a 128-bit counter and a 64-bit key. */
void philox4x32_10(uint32_t out[4], const uint32_t counter[4], const uint32_t key[2]);

/* The k-th uniform in (0, 1) of (seed, stream, step, index). */
double rng_uniform(uint64_t seed, uint32_t stream, uint32_t step, uint32_t index, uint32_t k);
/* The k-th standard normal of (seed, stream, step, index). */
double rng_normal(uint64_t seed, uint32_t stream, uint32_t step, uint32_t index, uint32_t k);
/* n standard normals: out[i] = rng_normal(seed, stream, step, index, i), computed 4 at a time. */
void rng_fill_normal(float *out, size_t n, uint64_t seed, uint32_t stream, uint32_t step, uint32_t index);
/* n uniforms in (0, 1) as floats (23 random bits each; never 0 or 1). */
void rng_fill_uniform(float *out, size_t n, uint64_t seed, uint32_t stream, uint32_t step, uint32_t index);

#ifdef __cplusplus
}
#endif
#endif
