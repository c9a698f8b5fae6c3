/* Samplers over a DiT (REFERENCE.md §2): the probability-flow ODE of either objective integrated with Euler
 * or Heun steps, with classifier-free guidance.
 *
 * Both objectives are written as an ODE dx/ds = d(x, s) over a decreasing sigma schedule s_0 > ... > s_N = 0:
 *   flow matching: d = F(x, t = 1000 s)                                     (the model predicts v = noise - x0)
 *                  schedule linspace(1, 0, N+1) shifted: s' = shift s / (1 + (shift - 1) s); x_0 = noise
 *   EDM:           d = (x - D(x, s)) / s,  D = c_skip x + c_out F(c_in x, c_noise = ln(s) / 4)
 *                  schedule Karras (rho 7) from sigma_max to sigma_min, then 0; x_0 = sigma_max * noise
 * Euler: x += (s_next - s) d(x, s). Heun adds the trapezoid correction with d(x', s_next), except on a step
 * that ends at s = 0 (d is undefined there for EDM).
 * Guidance: F = F_uncond + g (F_cond - F_uncond), both halves in ONE forward of 2B samples (the null class
 * is num_classes); g = 1 runs the conditional half only. A learned-sigma model (out_channels > in_channels)
 * contributes its first in_channels channels.
 *
 * Randomness: the initial latent of a sample is the standard normal draw of
 * (sample_seed, RNG_STREAM_SAMPLE, step 0, index 0), so a sample depends only on its own seed and class. */
#ifndef DFM_SAMPLE_H
#define DFM_SAMPLE_H

#include "dfm/diffusion.h"
#include "dfm/dit.h"
#include "dfm/wan.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { SAMPLER_EULER = 0, SAMPLER_HEUN = 1 } sampler_kind;

typedef struct {
    objective_kind objective; /* what the model predicts: decides the ODE and the schedule */
    sampler_kind sampler;
    int steps;      /* number of sigma intervals (model evaluations: steps for Euler, up to 2 steps - 1 for Heun) */
    float guidance; /* classifier-free guidance scale; 1 = none */
    float shift;    /* flow matching: sampling shift */
    float sigma_min, sigma_max, rho, sigma_data; /* EDM: Karras schedule and preconditioning */
} sampler_config;

/* Defaults for an objective: flow -> Euler, 50 steps, shift 1; EDM -> Heun, 35 steps, sigma 0.002..80, rho 7,
 * sigma_data 0.5. Guidance 1 (none). */
void sampler_defaults(sampler_config *s, objective_kind objective);
/* Validate (steps >= 1, guidance finite, shift > 0, 0 < sigma_min < sigma_max, ...); 0 + err on failure. */
int sampler_check(const sampler_config *s, char *err, size_t errlen);
const char *sampler_name(sampler_kind k);
int sampler_parse(const char *name, sampler_kind *out);

/* The schedule s_0 .. s_steps (steps + 1 values, last 0). */
void sampler_sigmas(const sampler_config *s, double *sigmas);

/* The per-sample seed of sample `index` of a run seeded with `seed` (seed + index: so sample i of seed S is
 * sample 0 of seed S + i, and one sample is regenerated alone with --seed <its seed>). */
uint64_t sample_seed(uint64_t seed, uint32_t index);
/* Initial latent of one sample: n standard normals from its seed, times scale. */
void sample_initial_noise(float *x, size_t n, uint64_t sample_seed, float scale);

/* Generate n samples of the classes labels[n] (0..num_classes-1) with per-sample seeds seeds[n] into
 * out [n, in_channels, H, W]. Samples go through the model in chunks of max_batch (max_batch / 2 with
 * guidance). progress (may be NULL) is called after each chunk with the number of samples done.
 * Returns 0, or -1 with a message (bad config, label out of range, max_batch < 2 with guidance). */
int dit_sample(dit_model *m, const sampler_config *s, const int *labels, const uint64_t *seeds, int n, float *out,
               void (*progress)(int done, int total, void *ctx), void *ctx, char *err, size_t errlen);

/* The same for Wan: n clips conditioned on text [n, text_len, text_dim] with valid lengths text_lens[n], into
 * out [n, in_channels, frames, height, width]. With guidance the unconditional half sees one zero text token
 * (what condition dropout trains). */
int wan_sample(wan_model *m, const sampler_config *s, const float *text, const int *text_lens, const uint64_t *seeds,
               int n, int frames, int height, int width, int text_len, float *out,
               void (*progress)(int done, int total, void *ctx), void *pctx, char *err, size_t errlen);
/* Sampling settings stored in a dfm weights file's metadata "dfm_objective":
 * {"kind": "flow_matching"|"edm", "flow_shift": ..., "sigma_data": ..., "cond_dropout_prob": ...}.
 * Returns 1 if present and valid (fields left at their defaults when absent), 0 if the key is absent,
 * -1 with a message if it is malformed. */
typedef struct {
    objective_kind kind;
    float flow_shift;        /* 1 if absent */
    float sigma_data;        /* 0.5 if absent */
    float cond_dropout_prob; /* 0 if absent: the model was not trained for guidance */
} stored_objective;
int stored_objective_parse(const char *json_text, stored_objective *o, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
