/* Pipeline parallelism (model.pipeline_model_parallel_size = P > 1; docs/ARCHITECTURE.md "Pipeline parallelism").
 *
 * The blocks are split over the P stages of a pipeline group (dist.h: ranks that differ only in pp_rank), evenly
 * or as model.num_layers_in_first/last_pipeline_stage or model.pipeline_model_parallel_layout say (pp_plan_make);
 * the embedders live on the first stage, the output head and the loss on the last. A stage owns its segments of
 * the parameter table only: pp_stage_new moves them into a stage buffer, frees the model's whole buffers and
 * sets the model's hooks, and gives the data-parallel engine a table of the stage's part (so DP, sharding,
 * AdamW, the EMA and checkpoints run per stage; the gradient norm is summed over the pipeline group).
 *
 * A step is 1F1B over the micro-batches of this rank: stage s runs min(P - s - 1, m) forwards, then one forward
 * and one backward at a time, then the remaining backwards. With V model chunks per stage
 * (model.virtual_pipeline_model_parallel_size) it is Megatron's interleaved 1F1B: chunk k of the P V lives on stage
 * k mod P, and the schedule walks (micro-batch, chunk) pairs in groups of P micro-batches. The hidden states and
 * the per-sample conditioning go forward point to point (the model's STAGE_FWD_OUT tensors into the next chunk's
 * STAGE_FWD_IN), their gradients back (STAGE_GRAD). Each chunk holds one activation arena per micro-batch in flight
 * (1F1B: min(P - s, m)). Every stage
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

#define PP_MAX_CHUNKS 16 /* model chunks per stage (virtual pipeline stages) */

#define PP_MAX_STAGES 64 /* model chunks of a pipeline, P V (the message tags number the boundaries in 6 bits) */

/* How the L blocks are split over the P V model chunks of a pipeline (P stages, V chunks per stage; V = 1: the
 * plain pipeline). Chunk k holds n[k] consecutive blocks, after those of chunks 0..k-1; it is model chunk k / P of
 * stage k mod P (Megatron's interleaved assignment), so chunk 0 has the embedders and chunk P V - 1 the head. */
typedef struct {
    int P, V, L;
    int n[PP_MAX_STAGES];
    int even; /* every chunk has L / (P V) blocks */
} pp_plan;

/* Fill *pl from Megatron's keys, or -1 with err naming the keys and the numbers:
 *  - even (first = last = -1, layout NULL): L / (P V) blocks a chunk; P V must divide L;
 *  - model.num_layers_in_first_pipeline_stage / _last_ (first, last >= 1 when set, -1 when null): the first / last
 *    stage has that many blocks, the other stages split the rest evenly; with V chunks per stage every stage's
 *    count is cut into V equal chunks (Megatron's rule: each stage's count must divide by V);
 *  - model.pipeline_model_parallel_layout (layout): Megatron's string, stages separated by '|', 'E' the embedders
 *    (opening the first stage), 't' a block, 'L' the head and the loss (closing the last stage), "X*N" and
 *    "(...)*N" repeat, commas are cosmetic; its P V stages are chunks 0..P V - 1 in the order above. *V is set
 *    from it (V_set: model.virtual_pipeline_model_parallel_size was given, and must then agree).
 * A chunk of no blocks is refused (not built). V is in/out: the configured chunks per stage (1 when null). */
int pp_plan_make(pp_plan *pl, int L, int P, int *V, int V_set, int first, int last, const char *layout, char *err,
                 size_t errlen);
/* Blocks [*b0, *b1) of model chunk `chunk` (0..V-1) of stage `stage` of the plan. */
void pp_layout(const pp_plan *pl, int stage, int chunk, int *b0, int *b1);
/* The blocks of stage s (all its chunks). */
int pp_stage_blocks(const pp_plan *pl, int s);
/* The micro-batches per step the schedule can take: 0, or -1 with err naming them and P when V > 1 and P does
 * not divide m (the interleaved schedule goes through the micro-batches in groups of P). */
int pp_check_micro(int P, int V, int m, char *err, size_t errlen);
/* The fraction of a step that a stage idles: (P - 1) / (V m + P - 1) for m micro-batches and V chunks per stage
 * (V = 1: 1F1B's (P - 1) / (m + P - 1)). Megatron states it as bubble time over ideal time, (P - 1) / (V m). */
double pp_bubble(int P, int m, int V);
/* Activation arenas stage s needs for its chunk v: the most micro-batches of that chunk in flight at once under
 * the schedule (1F1B for V = 1, min(P - s, m); the interleaved schedule otherwise). */
int pp_chunk_arenas(int P, int s, int V, int m, int v);

/* One model chunk of this rank's stage: a model (dit_model * or wan_model *) already made a stage of blocks
 * [b0, b1) with n_arenas arenas (dit_set_stage / wan_set_stage), and its buffers and hooks, which the stage
 * takes over. */
typedef struct {
    void *model;
    float **params, **grads;
    segment_hooks *hooks;
    int b0, b1, n_arenas;
} pp_chunk_model;

/* Make this rank the stage of its pipeline (dist_get()->pp_rank) holding the V chunks given (in order), for a
 * model whose whole table (under tensor parallelism this TP rank's slices, split fields included) and segments
 * (0 = embedders, 1..L = blocks, L + 1 = head) are given. Fills *dm for dp_engine_new: the stage's table is the
 * chunks' parts of the whole table one after the other (entries keep their split fields; checkpoints name the
 * pieces, so they are read and written in any layout). m: micro-batches per step on this rank. */
pp_stage *pp_stage_new(const param_table *table, int nseg, const size_t *seg_begin, int V, const pp_chunk_model *chunks,
                       int m, dp_model *dm);
void pp_stage_free(pp_stage *ps);
/* The stage's part of the table (parameter names for messages). */
const param_table *pp_stage_table(const pp_stage *ps);
/* The stage's parameters laid out by its table (LoRA: the merged weights, which the engine does not hold). */
float *pp_stage_params(pp_stage *ps);

/* A training step, 1F1B or interleaved (the loss and the norm are the same on every rank of every stage). Arguments as
 * dit_trainer_step_dp / wan_trainer_step_micro. With the trainer's lora set (LoRA: the engine was made over the
 * adapters of this stage's modules, lora_restrict), the adapters are merged into the stage's weights first, and
 * each backward of a model chunk runs between lora_micro_backward_begin and _end over the chunk's span of the
 * stage's gradient buffer: its adapters' gradients go to the engine, as one process's per micro-batch. */
step_result pp_dit_step(pp_stage *ps, dit_trainer *tr, dp_engine *e, const float *x0, const int *labels, int n_local,
                        int B_global, uint32_t first, uint32_t step, float lr);
step_result pp_wan_step(pp_stage *ps, wan_trainer *tr, dp_engine *e, const wan_micro *mb, int n_micro, int B_global,
                        uint32_t step, float lr);
/* The loss of one micro-batch without gradients (validation), through the pipeline; the same on every stage. */
double pp_dit_loss(pp_stage *ps, dit_trainer *tr, const objective_config *o, uint64_t seed, const float *x0,
                   const int *labels, int B, uint32_t step);
double pp_wan_loss(pp_stage *ps, wan_trainer *tr, const objective_config *o, uint64_t seed, const float *latents,
                   const float *text, const int *text_lens, int B, uint32_t step);
/* The same for B samples of one latent shape (validation over resolution buckets). */
double pp_wan_loss_shaped(pp_stage *ps, wan_trainer *tr, const objective_config *o, uint64_t seed, const float *latents,
                          const float *text, const int *text_lens, int B, int frames, int height, int width,
                          uint32_t step);

#ifdef __cplusplus
}
#endif
#endif
