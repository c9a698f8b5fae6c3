/* Data parallelism over the DP group: DDP and sharded data parallelism (Megatron's distributed optimizer /
 * Megatron FSDP, Automodel's FSDP), set by ddp.data_parallel_sharding_strategy:
 *
 *   no_shard            every rank holds everything; gradients all-reduced in buckets (one per model segment)
 *                       while the backward is still running
 *   optim               + the AdamW moments and EMA sharded: gradients reduce-scattered, each rank updates its
 *                       shard, the parameters all-gathered after the step (ddp.use_distributed_optimizer)
 *   optim_grads         + gradients sharded: each segment's gradients go to a bucket that is reduce-scattered
 *                       as soon as the backward finishes it, on every micro-batch
 *   optim_grads_params  + parameters sharded: a segment's parameters are all-gathered just before use, the next
 *                       segment's gather in flight meanwhile
 *
 * A rank's shard is a contiguous range of the flat parameter layout: [r*S, (r+1)*S) with S = ceil(total/DP).
 *
 * Hybrid sharding (dist_setup_dp_replicas before dp_engine_new; ddp.num_distributed_optimizer_instances): the
 * DP group is dp_replicate replica groups of dp_shard ranks; everything above happens within a replica (DP read
 * as dp_shard, r as the shard rank), and the reduced fp64 gradient shards are all-reduced across the replicas
 * before the one rounding to fp32, so every replica holds and updates the same shards. */
#ifndef DFM_DATA_PARALLEL_H
#define DFM_DATA_PARALLEL_H

#include "dfm/model.h"
#include "dfm/optim.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { DP_NO_SHARD, DP_OPTIM, DP_OPTIM_GRADS, DP_OPTIM_GRADS_PARAMS } dp_sharding;

int dp_sharding_parse(const char *s, dp_sharding *out); /* 1 if s names a strategy */
const char *dp_sharding_name(dp_sharding s);

/* What the engine needs of a model: its table and segments, and its buffer pointers and hooks, which the
 * engine takes over (it frees the full buffers a strategy shards, and sets the hooks). */
typedef struct {
    const param_table *table;
    int nseg;
    const size_t *seg_begin; /* nseg + 1 */
    float **params, **grads;
    segment_hooks *hooks;
    /* Checkpoints are read and written through ckpt_table's range [ckpt_base, ckpt_base + table->total) (NULL:
     * table itself, from 0). Pieces in the files are named and placed within their whole tensors, so a pipeline
     * stage's own table (pipeline.h: its chunks' entries, model_total the whole model's) reads and writes pieces
     * of the whole model: a PP checkpoint resumes as one process and back. With PP > 1 the gradient norm is
     * summed over the pipeline group (clipping by the global norm, one decision to skip). */
    const param_table *ckpt_table;
    size_t ckpt_base;
} dp_model;

typedef struct dp_engine dp_engine;

/* Shard a model whose parameters are already initialised (every rank identically); n_micro: micro-batches per
 * step on each rank (gradient accumulation). overlap_grad: start each
 * segment's reduction as soon as the backward finishes it; overlap_param: gather the next segment's parameters
 * while the current one computes. */
dp_engine *dp_engine_new(dp_model mdl, dp_sharding s, const adamw_config *oc, int n_micro, int overlap_grad,
                         int overlap_param);
void dp_engine_free(dp_engine *e);

/* A training step: begin (zero gradients), then per micro-batch micro_begin(last?) + forward/backward +
 * micro_end, then finish (reductions completed, clipping over the global norm, AdamW on this rank's part,
 * parameters gathered where needed). finish returns the gradient norm before clipping. */
void dp_begin_step(dp_engine *e);
void dp_micro_begin(dp_engine *e, int last);
void dp_micro_end(dp_engine *e);
/* When the gradient holds NaN or Inf, or skip is set (the loss was not finite), nothing is updated; *bad is then
 * the table index of the first parameter whose reduced gradient is not finite (-1: none), the same on every rank. */
double dp_finish_step(dp_engine *e, float lr, int skip, int *bad);
void dp_ema_update(dp_engine *e, float decay);

/* Bytes this rank holds for parameters (with gather buffers), gradients (with buckets) and optimizer state
 * (AdamW moments + EMA). */
void dp_memory(const dp_engine *e, size_t *param_bytes, size_t *grad_bytes, size_t *optim_bytes);
/* This rank's range of the flat layout. */
void dp_shard_range(const dp_engine *e, size_t *begin, size_t *end);
long dp_optimizer_step(const dp_engine *e);

/* Checkpoints. Sharded strategies: every rank writes its shard of parameters, EMA and moments into dir (meta:
 * key/value pairs for the file); under hybrid sharding only replica 0's ranks write, one file per shard rank.
 * Under pipeline parallelism every stage writes its part (no_shard: data-parallel rank 0 of each stage, whole),
 * numbered pp_rank * writers + rank of pp * writers files, so no two ranks' files collide.
 * no_shard keeps everything whole: the caller writes consolidated files from rank 0 (without PP). Loading reads either
 * form into this rank's layout (load_optim: the moments too). */
void dp_save_shard(dp_engine *e, const char *dir, const char *const *meta);
/* The same split as the Automodel layout keeps it: parameters and EMA into model_dir, moments into optim_dir. */
void dp_save_shard_split(dp_engine *e, const char *model_dir, const char *optim_dir, const char *const *meta);
int dp_load(dp_engine *e, const char *dir, int load_optim, char *err, size_t errlen);
/* The full parameters or EMA gathered on every rank (for validation of a sharded model, export): out holds
 * table->total floats. */
void dp_gather_full(dp_engine *e, int ema, float *out);
/* The full EMA buffer when the engine keeps it whole (no_shard), else NULL. */
float *dp_full_ema(dp_engine *e);
adamw_state *dp_optimizer(dp_engine *e);

#ifdef __cplusplus
}
#endif
#endif
