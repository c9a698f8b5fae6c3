/* One DiT training step: split the global batch into micro-batches, draw noise/timesteps/dropout per
 * global sample index, forward, loss, backward with gradient accumulation, clip, AdamW. */
#ifndef DFM_TRAIN_H
#define DFM_TRAIN_H

#include "dfm/data_parallel.h"
#include "dfm/diffusion.h"
#include "dfm/dit.h"
#include "dfm/lora.h"
#include "dfm/optim.h"
#include "dfm/wan.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    dit_model *model;
    adamw_state *opt;
    objective_config obj;
    uint64_t seed;
    diffusion_batch db;     /* sized for the model's max micro-batch */
    float *out, *dout;      /* model output and its gradient, [max_batch, C_out, H, W] */
    lora_model *lora;       /* set: LoRA training (lora.h); the engine of the _dp steps then holds the adapters */
    unsigned char *cp_mask; /* context parallelism: the input pixels of this rank's tokens (dit_cp_owned), else NULL */
} dit_trainer;

typedef struct {
    double loss;      /* mean over the global batch */
    double grad_norm; /* before clipping */
    int skipped;      /* data-parallel steps: the loss or the gradient was not finite, nothing was updated */
    int bad_param;    /* then the table index of the first parameter with a non-finite gradient (-1: none) */
} step_result;

void dit_trainer_init(dit_trainer *tr, dit_model *m, adamw_state *opt, const objective_config *obj, uint64_t seed);
void dit_trainer_free(dit_trainer *tr);
/* Forward + backward of the global batch x0 [B, C, H, W], labels [B], in micro-batches of the model's
 * max_batch; gradients are accumulated (pre-scaled so they equal the gradient of the global mean loss).
 * Does not zero gradients or step the optimiser. Returns the global mean loss. */
double dit_trainer_grads(dit_trainer *tr, const float *x0, const int *labels, int B, uint32_t step);
/* Zero grads, dit_trainer_grads, clip + AdamW at lr. */
step_result dit_trainer_step(dit_trainer *tr, const float *x0, const int *labels, int B, uint32_t step, float lr);
/* A data-parallel step: this rank's n_local samples x0 [n_local, C, H, W] of a global batch of B_global whose
 * first one has global index `first` (noise, timesteps and dropout are drawn by global index), in micro-batches
 * of the model's max_batch; the engine reduces the gradients and updates the parameters. The loss returned is
 * the global mean over every rank. tr->opt is not used (the engine holds the optimizer). */
step_result dit_trainer_step_dp(dit_trainer *tr, dp_engine *e, const float *x0, const int *labels, int n_local,
                                int B_global, uint32_t first, uint32_t step, float lr);

/* Wan 2.1 training: latents [B, C, T, H, W] with text embeddings [B, L, D] and valid lengths. Condition dropout
 * (diffusion.cfg_dropout_prob, drawn like the DiT's null class) replaces a sample's text by one zero token: the
 * unconditional input classifier-free guidance needs at sampling time. */
typedef struct {
    wan_model *model;
    objective_config obj;
    uint64_t seed;
    int frames, height, width, text_len; /* sample shape (the largest, with resolution buckets) */
    diffusion_batch db;                  /* sized for the model's max micro-batch */
    float *out, *dout;                   /* [max_batch, C_out, T, H, W] */
    float *text;                         /* the micro-batch's text after dropout */
    int *cond, *lens;                    /* condition flags (0 = keep) and the lengths after dropout */
    lora_model *lora;                    /* set: LoRA training, as dit_trainer's */
    unsigned char *cp_mask;              /* context parallelism: the latent elements of this rank's tokens */
} wan_trainer;

void wan_trainer_init(wan_trainer *tr, wan_model *m, const objective_config *obj, uint64_t seed, int frames, int height,
                      int width, int text_len);
void wan_trainer_free(wan_trainer *tr);
/* As dit_trainer_step_dp for Wan: this rank's n_local samples of a global batch of B_global, the first with
 * global index `first`. */
step_result wan_trainer_step_dp(wan_trainer *tr, dp_engine *e, const float *latents, const float *text,
                                const int *text_lens, int n_local, int B_global, uint32_t first, uint32_t step,
                                float lr);
/* One micro-batch of a Wan step: `count` samples of latents [count, C, frames, height, width] (a shape the
 * model was prepared for: at most its max tokens and batch) with text [count, text_len, text_dim] and lengths;
 * noise, timesteps and dropout are drawn for global sample indices first, first + 1, ... */
typedef struct {
    const float *latents, *text;
    const int *text_lens;
    int count, frames, height, width;
    uint32_t first;
} wan_micro;
/* A data-parallel step over this rank's n_micro micro-batches (the engine's micro-batch count), each of its own
 * latent shape (resolution buckets): each micro-batch's loss is weighted by count / B_global, B_global being
 * the samples of the whole global step over every rank. Gradients are reduced by the engine, which updates. */
step_result wan_trainer_step_micro(wan_trainer *tr, dp_engine *e, const wan_micro *mb, int n_micro, int B_global,
                                   uint32_t step, float lr);
/* The inputs of one micro-batch: noise, timesteps and condition dropout into tr->db, the text after dropout and
 * its lengths into tr->text / tr->lens (what wan_forward and diffusion_loss then read). */
void wan_trainer_prepare(wan_trainer *tr, const objective_config *o, uint64_t seed, const float *latents,
                         const float *text, const int *text_lens, int B, int frames, int height, int width,
                         uint32_t step, uint32_t first);
/* Loss of one micro-batch (at most the model's max batch) under the objective `o` with draws keyed by
 * (seed, step, first), without gradients: validation. */
double wan_trainer_loss(wan_trainer *tr, const objective_config *o, uint64_t seed, const float *latents,
                        const float *text, const int *text_lens, int B, uint32_t step, uint32_t first);
/* The same for latents of frames x height x width (at most the trainer's shape). */
double wan_trainer_loss_shaped(wan_trainer *tr, const objective_config *o, uint64_t seed, const float *latents,
                               const float *text, const int *text_lens, int B, int frames, int height, int width,
                               uint32_t step, uint32_t first);

#ifdef __cplusplus
}
#endif
#endif
