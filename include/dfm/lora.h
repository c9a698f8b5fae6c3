/* LoRA adapters over a model's linear layers (PEFT's LoRA, REFERENCE.md and docs/ARCHITECTURE.md "LoRA").
 *
 * For an adapted linear y = x W^T + b with W [out, in], rank r and alpha:
 *     y = x W^T + b + scale * (x A^T) B^T,     A [r, in], B [out, r], scale = alpha / r (rsLoRA: alpha / sqrt r)
 * A starts uniform in +-1/sqrt(in) (PEFT's kaiming_uniform(a = sqrt 5)), B at zero, so the adapted model starts as
 * the base model. The base weights are frozen; only A and B are trained.
 *
 * How dfm trains them: the model runs on merged weights W' = W + scale B A (the forward costs what the base model's
 * does; the input gradients dX = G W'^T are the adapted model's). The base weights are kept aside untouched
 * (bit-identical to what was loaded) and every step re-merges from them. The backward of an adapted linear (M rows
 * of input X and output gradient G) takes the adapters' gradients from the activations, never forming the weight
 * gradient G^T X:  U = X A^T, V = G B (M x r);  dB += scale G^T U, dA += scale V^T X  (4 M r (in + out) FLOPs
 * instead of 2 M in out), and the frozen parameters get no weight gradient at all (kernels_set_frozen). The older
 * way, kept selectable (merged_backward, the key peft.merged_backward): the model's full backward gives G_W =
 * dL/dW' for every layer, then dL/dA = scale B^T G_W and dL/dB = scale G_W A^T; the same gradients up to rounding
 * (a different association), at the cost of full fine-tuning's backward. Either way the optimizer, its moments, the
 * EMA and the gradient reduction cover the adapters only. Dropout on the adapter input cannot be expressed through
 * merged weights, so peft.dropout > 0 is refused.
 *
 * Modules are the diffusers module names of 2-D ".weight" tensors (embedding tables excluded): e.g.
 * "blocks.0.attn1.to_q". A module is adapted when it matches one of `targets` (or every linear with
 * match_all_linear) and none of `excludes`. A pattern matches when it is the module name, a suffix after a dot
 * ("to_q" matches "blocks.0.attn1.to_q", as PEFT's list form), or a glob (fnmatch, "*" also crosses dots:
 * "*.attn1.to_q", "blocks.1*.ffn.*").
 *
 * Files, as PEFT writes and reads them: adapter_model.safetensors with tensors
 * "base_model.model.<module>.lora_A.weight" [r, in] and "...lora_B.weight" [out, r], and adapter_config.json
 * (peft_type LORA, r, lora_alpha, lora_dropout, target_modules = the adapted module names, ...). Loading also
 * takes diffusers' "transformer.<module>.lora_A.weight" form and bare "<module>.lora_A.weight". */
#ifndef DFM_LORA_H
#define DFM_LORA_H

#include "dfm/model.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int r;
    float alpha;
    float dropout; /* must be 0 (see above) */
    int use_rslora;
    const char *const *targets; /* n_targets patterns */
    int n_targets;
    const char *const *excludes;
    int n_excludes;
    int match_all_linear;
} lora_spec;

typedef struct {
    char *module;        /* "blocks.0.attn1.to_q" */
    size_t w_off;        /* the base weight's offset in the model's buffer */
    int out, in;         /* the base weight's shape in this process (a tensor-parallel slice: its local shape) */
    size_t a_off, b_off; /* offsets of A and B in the adapter buffer */
    float *base;         /* the frozen base weight (out x in) */
    /* Tensor parallelism: the base weight's split axis (-1 whole, 0 column-parallel: rows split, 1 row-parallel:
     * columns split). Column-parallel: B is split by rows like W, A is whole and its gradient scale B_local^T
     * G_local a partial sum over the TP group; row-parallel: A is split by columns, B whole, its gradient scale
     * G_local A_local^T partial. The partial sums go through tp_scratch at p_off. */
    int split;
    size_t p_off;
} lora_target;

typedef struct {
    int r;
    float alpha, scale;
    int use_rslora;
    int n;
    lora_target *t;
    /* the adapters as a model of their own, for the data-parallel engine and checkpoints: table entries
     * "<module>.lora_A.weight" and "<module>.lora_B.weight" in module order, one segment */
    param_table table;
    float *params, *grads;
    int nseg;
    size_t seg_begin[2];
    segment_hooks hooks;
    /* every adapter of the model with its whole (global) shape, in one process's order, and every adapted module:
     * what PEFT files hold, whatever part (tensor-parallel slices, a pipeline stage's modules) this process has */
    param_table global;
    char **all_modules;
    int n_all;
    float *tp_scratch; /* the partial adapter gradients under tensor parallelism (tp_n floats) */
    size_t tp_n;
    int merged_backward; /* 1: adapter gradients from the model's weight gradients (see above); 0 (default): fast */
    /* between lora_micro_backward_begin and _end: the adapters, the gradients' destination, the model's gradient
     * buffer and the span of it being differentiated; U and V of the fast backward (uv_n floats) */
    const float *bw_adapters;
    float *bw_grads, *bw_model_grads;
    size_t bw_lo, bw_hi;
    float *uv;
    size_t uv_n;
    int *bw_hits; /* per module: the fast backward's products taken this micro-batch (each must be taken once) */
} lora_model;

/* 1 when the 2-D tensor `name` of a model is a linear layer's weight LoRA can adapt; module gets its name. */
int lora_is_linear(const param_entry *e, char *module, size_t n);
/* Does `module` match `pattern` (see above)? */
int lora_pattern_match(const char *pattern, const char *module);

/* Adapters for the modules of `base` that spec selects, base weights copied from base_params; A drawn from
 * seed, B zero. 0, or -1 with a message (no module matched: the patterns and a few module names; r < 1;
 * dropout > 0) in err. A table of a tensor-parallel rank (split entries) gives adapters split as above, each rank
 * its slice of the values one process draws. */
int lora_create(lora_model *L, const param_table *base, const float *base_params, const lora_spec *spec, uint64_t seed,
                char *err, size_t errlen);
void lora_free(lora_model *L);
/* Pipeline parallelism: keep the adapters of the modules whose weights are in `part` (a stage's table; w_off
 * becomes the weight's offset there), values kept. The table's model_total stays the whole model's adapter count,
 * so checkpoints read and write pieces of every stage's adapters. Returns the number of modules kept. */
int lora_restrict(lora_model *L, const param_table *part);

/* model_params' adapted weights = base + scale * B A (adapters laid out by L->table; NULL = L->params). */
void lora_merge(const lora_model *L, const float *adapters, float *model_params);
/* Adapter gradients from the model's weight gradients: grads += (scale B^T G, scale G A^T) per module. Under
 * tensor parallelism every TP rank calls it together: the partial gradients are summed over the TP group in rank
 * order (the same bits on every rank). _range: the modules whose weights lie in [lo, hi) of the model's buffer
 * (a pipeline stage's model chunk). */
void lora_backward(lora_model *L, const float *adapters, const float *model_grads, float *adapter_grads);
void lora_backward_range(lora_model *L, const float *adapters, const float *model_grads, float *adapter_grads,
                         size_t lo, size_t hi);

/* In a training step, with a data-parallel engine over the adapters (dp_model of L->table, L->nseg, L->seg_begin,
 * &L->params, &L->grads, &L->hooks): lora_step_begin fetches the adapters (gathered when the engine shards them)
 * and merges them into model_params; returns the adapters, valid until the step's dp_finish_step. Each
 * micro-batch's model backward runs between lora_micro_backward_begin and lora_micro_backward_end: the adapter
 * gradients are added where the engine wants them (TP partial sums reduced in rank order at the end) and the
 * engine is told they are done. model_grads is the model's gradient buffer and [lo, hi) the span of it this
 * backward covers (the whole model, or a pipeline stage's model chunk): the fast backward freezes that span
 * (nothing is written there), the merged one zeroes it and reads the weight gradients from it at the end. */
const float *lora_step_begin(lora_model *L, float *model_params);
void lora_micro_backward_begin(lora_model *L, const float *adapters, float *model_grads, size_t lo, size_t hi);
void lora_micro_backward_end(lora_model *L);

/* Write dir/adapter_model.safetensors and dir/adapter_config.json (PEFT's form) atomically; base_name goes
 * into base_model_name_or_path (may be NULL). dir is created. adapters are laid out by L->global (every module,
 * whole tensors: L->params itself in one process). 0, or -1 + err. */
int lora_save_peft(const lora_model *L, const float *adapters, const char *dir, const char *base_name, char *err,
                   size_t errlen);
/* Fold a PEFT adapter folder (or its adapter_model.safetensors) into a model's weights: W += scale B A for
 * every adapted module. Errors name the file and tensor: an adapter for a module the model lacks or that is
 * not a linear, shape mismatches, an A without its B, unsupported options (DoRA, rank_pattern). On success
 * *n_modules (may be NULL) is the number of modules changed. 0, or -1 + err. */
int lora_apply_peft(const char *path, const param_table *base, float *params, int *n_modules, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
