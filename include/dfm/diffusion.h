/* Diffusion objectives: flow matching (rectified flow, as in Wan/FLUX and NeMo DFM) and EDM
 * (Karras et al.), the facts in REFERENCE.md §2.
 *
 * Both are written as one loss over the model output F:
 *     D = c_skip * x_t + c_out * F,    loss = mean_b [ w_b * mean_i (D - target)^2 ]
 * flow matching: x_t = (1-s) x0 + s n, model input x_t, timestep 1000 s, c_skip 0, c_out 1, target n - x0,
 *                w = 1 + flow_shift * s (or 1);
 * EDM:           x_t = x0 + s n, model input c_in x_t, timestep c_noise = ln(s)/4, target x0,
 *                w = (s^2 + sd^2) / (s sd)^2.
 * Every random draw comes from (seed, step, global sample index), see rng.h. */
#ifndef DFM_DIFFUSION_H
#define DFM_DIFFUSION_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { OBJ_FLOW_MATCHING = 0, OBJ_EDM = 1 } objective_kind;
typedef enum { TS_UNIFORM = 0, TS_LOGIT_NORMAL, TS_LOGNORM, TS_MODE, TS_MIX } timestep_sampling;

typedef struct {
    objective_kind kind;
    /* flow matching */
    timestep_sampling sampling;
    float logit_mean, logit_std;
    float flow_shift;
    float mix_uniform_ratio;
    float mode_scale; /* 1.29 */
    float sigma_min, sigma_max;
    int num_train_timesteps; /* 1000: the model sees t = num_train_timesteps * sigma */
    int use_loss_weighting;
    /* EDM */
    float p_mean, p_std, sigma_data, edm_sigma_min, edm_sigma_max;
    /* classifier-free guidance */
    float cond_dropout_prob;
} objective_config;

/* DFM's defaults: flow matching in "pretrain" or "finetune" mode; EDM as DFM's DiT uses it. */
void objective_defaults_flow(objective_config *o, int pretrain);
void objective_defaults_edm(objective_config *o);
const char *timestep_sampling_name(timestep_sampling s);
int timestep_sampling_parse(const char *name, timestep_sampling *out);

/* One micro-batch prepared for the model. */
typedef struct {
    int B;
    size_t per_sample;                                 /* elements per sample (C*H*W) */
    float *noise, *x_t, *model_in, *target;            /* [B, per_sample] */
    float *sigma, *timestep, *weight, *c_skip, *c_out; /* [B] */
    float *c_skip_m1;                                  /* [B] c_skip - 1, computed without cancellation */
    int *labels;                                       /* [B], after condition dropout */
    /* raw draws, exposed for verification: the normal and the uniform behind each sigma, and the batch coin */
    float *draw_normal, *draw_uniform;
    float batch_coin;
} diffusion_batch;

void diffusion_batch_alloc(diffusion_batch *db, int max_B, size_t per_sample);
void diffusion_batch_free(diffusion_batch *db);

/* Sample sigma for one sample from its raw draws (a standard normal, a uniform) and the batch coin. */
double objective_sigma(const objective_config *o, double normal, double uniform, double batch_coin);

/* Prepare B samples x0 [B, per_sample] with class labels. Sample b is global sample first_index + b of step
 * `step`. null_class: the label that replaces dropped conditions. */
void diffusion_prepare(diffusion_batch *db, const objective_config *o, const float *x0, const int *labels, int B,
                       size_t per_sample, int null_class, uint64_t seed, uint32_t step, uint32_t first_index);

/* Loss of model output F [B, per_sample] (first per_sample elements of each out_stride-long row) and its
 * gradient dF = grad_scale * dloss/dF (dF overwritten, out_stride layout, extra channels zero).
 * Returns the micro-batch loss (mean over its samples). */
double diffusion_loss(const diffusion_batch *db, const float *F, float *dF, size_t out_stride, float grad_scale);
/* The same over the elements i with mask[i] set (mask: per_sample bytes, the same for every sample; NULL = all),
 * still divided by the whole per_sample count: a context-parallel rank's share of the per-sample mean, which summed
 * over the ranks holding the other elements is the whole loss. dF is zero where the mask is not set. */
double diffusion_loss_masked(const diffusion_batch *db, const float *F, float *dF, size_t out_stride, float grad_scale,
                             const unsigned char *mask);

#ifdef __cplusplus
}
#endif
#endif
