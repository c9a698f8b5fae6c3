/* Pipeline parallelism (model.pipeline_model_parallel_size = P > 1; docs/ARCHITECTURE.md "Pipeline parallelism").
 *
 * The blocks are split evenly over the P stages of a pipeline group (dist.h: ranks that differ only in pp_rank);
 * the embedders live on the first stage, the output head and the loss on the last. A stage owns its segments of
 * the parameter table only: pp_stage_new moves them into a stage buffer, frees the model's whole buffers and
 * sets the model's hooks, and gives the data-parallel engine a table of the stage's part (so DP, sharding,
 * AdamW, the EMA and checkpoints run per stage; the gradient norm is summed over the pipeline group).
 *
 * A step is 1F1B over the micro-batches of this rank: stage s runs min(P - s - 1, m) forwards, then one forward
 * and one backward at a time, then the remaining backwards. The hidden states and the per-sample conditioning go
 * forward point to point (the model's STAGE_FWD_OUT tensors into the next stage's STAGE_FWD_IN), their gradients
 * back (STAGE_GRAD). Each stage holds min(P - s, m) activation arenas, one per micro-batch in flight. Every stage
 * draws the micro-batch's noise, timesteps and dropout itself (they are keyed by global sample index), so the
 * inputs and the loss are exactly one process's. */
#ifndef DFM_PIPELINE_H
#define DFM_PIPELINE_H

#include "dfm/data_parallel.h"
#include "dfm/model.h"
#include "dfm/train.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pp_stage pp_stage;

/* Blocks [*b0, *b1) of stage `stage` of P for a model of L blocks (an even split); 0, or -1 with err naming
 * model.num_layers and the pipeline size when P does not divide L. */
int pp_layout(int L, int P, int stage, int *b0, int *b1, char *err, size_t errlen);
/* The fraction of a 1F1B step that stages idle: (P - 1) / (m + P - 1) for m micro-batches. */
double pp_bubble(int P, int m);

/* Make this rank the stage of its pipeline (dist_get()->pp_rank) for a model whose table, segments (0 =
 * embedders, 1..L = blocks, L + 1 = head) and buffers are given; the model must already be a stage
 * (dit_set_stage / wan_set_stage) with blocks [b0, b1). Fills *dm for dp_engine_new. */
pp_stage *pp_stage_new(const param_table *table, int nseg, const size_t *seg_begin, float **params, float **grads,
                       segment_hooks *hooks, int b0, int b1, int n_arenas, dp_model *dm);
void pp_stage_free(pp_stage *ps);
/* The stage's part of the table (parameter names for messages). */
const param_table *pp_stage_table(const pp_stage *ps);

/* A 1F1B training step (the loss and the norm are the same on every rank of every stage). Arguments as
 * dit_trainer_step_dp / wan_trainer_step_micro. */
step_result pp_dit_step(pp_stage *ps, dit_trainer *tr, dp_engine *e, const float *x0, const int *labels, int n_local,
                        int B_global, uint32_t first, uint32_t step, float lr);
step_result pp_wan_step(pp_stage *ps, wan_trainer *tr, dp_engine *e, const wan_micro *mb, int n_micro, int B_global,
                        uint32_t step, float lr);
/* The loss of one micro-batch without gradients (validation), through the pipeline; the same on every stage. */
double pp_dit_loss(pp_stage *ps, dit_trainer *tr, const objective_config *o, uint64_t seed, const float *x0,
                   const int *labels, int B, uint32_t step);
double pp_wan_loss(pp_stage *ps, wan_trainer *tr, const objective_config *o, uint64_t seed, const float *latents,
                   const float *text, const int *text_lens, int B, uint32_t step);

#ifdef __cplusplus
}
#endif
#endif
