/* Wan 2.1 text-to-video transformer (diffusers' WanTransformer3DModel), forward and backward.
 *
 * Parameter names, shapes and semantics are diffusers' (REFERENCE.md §3): patch_embedding (Conv3d as a GEMM),
 * condition_embedder.{time_embedder, time_proj, text_embedder}, blocks.N.{attn1, attn2, norm2, ffn,
 * scale_shift_table}, scale_shift_table, proj_out. Only the Wan 2.1 T2V arrangement is built:
 * cross_attn_norm = true, qk_norm = "rms_norm_across_heads", no image embedder (image_dim and
 * added_kv_proj_dim null). Inputs in PyTorch order: latents [B, C, T, H, W], timesteps [B] (the model's
 * 0..1000 scale), text embeddings [B, L, text_dim].
 *
 * One deliberate extension: cross-attention takes an optional per-sample count of valid text tokens and
 * masks the keys after it (diffusers pads T5 embeddings to 512 with zeros and attends to the padding;
 * passing NULL, or every length = L, computes exactly that). */
#ifndef DFM_WAN_H
#define DFM_WAN_H

#include "dfm/model.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int num_layers;
    int num_heads; /* diffusers: num_attention_heads */
    int head_dim;  /* diffusers: attention_head_dim (even; RoPE splits it 3 ways) */
    int in_channels;
    int out_channels; /* 0 = in_channels */
    int text_dim;     /* width of the text encoder's embeddings (4096 for UMT5-XXL) */
    int freq_dim;     /* timestep sinusoid width, 256 */
    int ffn_dim;
    int patch_t, patch_h, patch_w; /* diffusers: patch_size [1, 2, 2] */
    float eps;                     /* every LayerNorm and RMSNorm, 1e-6 */
    int rope_max_seq_len;          /* 1024: the patch grid may not exceed it along any axis */
} wan_config;

/* Named configs: "wan_tiny" (tests), "wan_1_3b", "wan_14b". Returns 0 if the name is unknown. */
int wan_config_named(wan_config *c, const char *name);
/* Fill defaults (out_channels) and validate; on error returns 0 with a message naming the values in err. */
int wan_config_check(wan_config *c, char *err, size_t errlen);
/* The parameter table (names, shapes, offsets) of a config, without allocating any buffer: parameter
 * counts of the big configs can be had without their memory. Dies on an invalid config. */
void wan_build_table(param_table *t, const wan_config *c);
/* The table of tensor-parallel rank tp_rank of tp: attention q/k/v (self and cross) and ffn.net.0 split by heads /
 * columns (column-parallel, norm_q/norm_k weights with them), to_out.0 and ffn.net.2 row-parallel, the rest whole. */
void wan_build_table_tp(param_table *t, const wan_config *c, int tp, int tp_rank);
/* 1 if tp divides the head count and the FFN width, else 0 with err naming both numbers. */
int wan_tp_check(const wan_config *c, int tp, char *err, size_t errlen);

/* The largest input one forward handles (the activation arena is sized from it), or the input of one call. */
typedef struct {
    int batch, frames, height, width; /* latent frames / height / width (before patching) */
    int text_len;                     /* text tokens L */
} wan_shape;

typedef struct wan_acts wan_acts;

typedef struct {
    wan_config cfg;
    int d, ffn, patch_in, patch_out; /* derived sizes: d = heads * head_dim; C*pt*ph*pw; pt*ph*pw*C_out */
    /* tensor parallelism (wan_create_tp): this rank's heads, attention width (heads x head_dim) and FFN columns;
     * tp = 1: the whole model */
    int tp, tp_rank, heads_local, attn_local, ffn_local;
    /* context parallelism (wan_set_context_parallel): each forward runs on this rank's chunk of ceil(N / cp) of the N
     * video tokens, under sequence parallelism rounded up to a multiple of tp (cp = 1: all of them); max_tokens then
     * counts a chunk */
    int cp, cp_rank, cp_comm;
    float *cp_full; /* [max batch, cp * max_tokens, max(patch_in, patch_out)]: a whole sample's patches / tokens */
    param_table table;
    float *params, *grads;   /* one buffer each, table.total floats */
    wan_shape max;           /* what the activation arena holds */
    int max_tokens;          /* video tokens per sample at max */
    wan_acts *acts;          /* activations saved by the forward, and backward scratch */
    int recompute_layers;    /* blocks 0..recompute_layers-1 are recomputed in the backward (wan_set_recompute) */
    int recompute_chunk;     /* ... in checkpoints of this many consecutive blocks (1: each block its own) */
    int recompute_selective; /* no block keeps its attention outputs: recomputed per block (wan_set_recompute_mode) */
    int sp;                  /* sequence parallelism (wan_set_sequence_parallel): the residual stream holds N / tp
                              * tokens of every sample, [tp_rank N / tp, (tp_rank + 1) N / tp) */
    /* parameter segments in table order: 0 = patch and condition embedders, 1..L = blocks, L+1 = output head;
     * the forward visits them in this order, the backward in reverse */
    int nseg;
    size_t *seg_begin;   /* nseg + 1 offsets into the table */
    segment_hooks hooks; /* zero: parameters and gradients are m->params / m->grads */
    /* pipeline stage (wan_set_stage): blocks [block_begin, block_end), the patch and condition embedders only when
     * block_begin = 0, the output head only when block_end = num_layers; one activation arena per micro-batch in
     * flight, m->acts the current one (wan_use_arena) */
    int block_begin, block_end;
    int n_arenas;
    wan_acts **arenas;
} wan_model;

/* Build the model for inputs up to `max` (batch, tokens per sample and text length). Dies with a message on
 * an invalid config or shape. */
void wan_create(wan_model *m, const wan_config *cfg, const wan_shape *max);
/* The same as tensor-parallel rank tp_rank of tp (Megatron's split, see wan_build_table_tp): forward and backward
 * all-reduce over the TP group after the row-parallel linears, for the column-parallel input gradients and for
 * the q/k RMSNorms' mean squares over all heads. */
void wan_create_tp(wan_model *m, const wan_config *cfg, const wan_shape *max, int tp, int tp_rank);
void wan_free(wan_model *m);
/* Only the config, the parameter table and the parameter buffer (no gradients, no activations): enough to
 * convert weights (load, save, export) in half the memory of a trainable model; wan_forward refuses it until
 * wan_prepare. Free with wan_free. Dies on an invalid config. (wan_create = this + wan_prepare.) */
void wan_create_weights_only(wan_model *m, const wan_config *cfg);
/* The same as tensor-parallel rank tp_rank of tp (see wan_create_tp); wan_prepare then sizes its activations. */
void wan_create_weights_only_tp(wan_model *m, const wan_config *cfg, int tp, int tp_rank);
/* Give a weights-only model its gradients and activation arena for inputs up to max. Returns 0, or -1 with the
 * reason in err (a shape the config cannot take, too large an input); the model is unchanged then. */
int wan_prepare(wan_model *m, const wan_shape *max, char *err, size_t errlen);
/* Activation recomputation (checkpointing): the first `blocks` blocks (0 = none, the default; num_layers = every
 * block) keep only their input x[l] from the forward; the rest of their activations live in one slot of the arena
 * that they share, and the backward runs a block's forward again from x[l] (same kernels, same parameters, through
 * the segment hooks) just before that block's backward. Gradients are bit-identical to a run without it; the arena
 * shrinks by (blocks - 1) blocks' activations (wan_activation_bytes) at the cost of up to one more forward of those
 * blocks per step. Megatron's full/uniform/1 is blocks = num_layers, full/block/N is blocks = N. Call between
 * wan_create_weights_only and wan_prepare (the arena is sized then); 0, or -1 with the reason in err (blocks
 * outside 0..num_layers, or a model that already has its activations). */
int wan_set_recompute(wan_model *m, int blocks, char *err, size_t errlen);
/* The general form, as dit_set_recompute_mode: checkpoints of `chunk` blocks (`chunk` shared slots, a checkpoint
 * keeps its first block's input), or selective (blocks = 0): the self- and cross-attention outputs and
 * log-sum-exps of every block live in one shared set and the backward re-runs the attention kernels on the kept
 * (recomputed-normalised) q/k/v. */
int wan_set_recompute_mode(wan_model *m, int blocks, int chunk, int selective, char *err, size_t errlen);
/* Sequence parallelism over the TP group (Megatron's sequence_parallel): outside attention and the FFN (norms,
 * modulation, gates, residual adds) this rank holds N / tp video tokens of every sample; the inputs of the
 * column-parallel linears (q/k/v, the cross-attention query, ffn.net.0) are all-gathered and the row-parallel
 * outputs reduce-scattered (sums in rank order); the modulation gradients and norm2's weight and bias gradients
 * are summed over the TP group. The embedders and the head run on the whole sequence; the text side is whole on
 * every rank. Call between wan_create_weights_only_tp and wan_prepare; 0, or -1 with the reason in err (tp = 1, or a
 * model that already has its activations). Without context parallelism a token count tp does not divide is refused
 * by wan_shape_check; with it the "sequence" is this rank's chunk, padded to a multiple of tp. */
int wan_set_sequence_parallel(wan_model *m, int on, char *err, size_t errlen);
/* Make m context-parallel rank cp_rank of cp (comm_type: a cp_comm_type of context_parallel.h): the video tokens of
 * each forward are split into cp contiguous chunks (padded at the end when cp does not divide them), this rank runs
 * the network on its chunk, self-attention over all of them (RoPE by global position); cross-attention reads the
 * whole text on every rank. wan_forward still takes and returns whole latents, out zero outside this rank's tokens
 * (wan_cp_owned); wan_backward reads dout there only. Call between wan_create_weights_only(_tp) and wan_prepare. */
void wan_set_context_parallel(wan_model *m, int cp, int cp_rank, int comm_type);
/* mask[c t h w] = 1 where the element of a [channels, frames, height, width] sample of the last forward's shape
 * belongs to this rank's tokens. */
void wan_cp_owned(const wan_model *m, unsigned char *mask, int channels);
/* Wan's initialisation from a seed: xavier-uniform linears (patch embedding as [d, C*pt*ph*pw]), N(0, 0.02)
 * time and text embedder weights, zero biases, unit RMSNorm/LayerNorm weights, scale_shift_tables
 * N(0, 1)/sqrt(d), zero proj_out weight (the initial model predicts proj_out's zero bias). */
void wan_init(wan_model *m, uint64_t seed);
void wan_zero_grad(wan_model *m);
/* Bytes held by activations + scratch. */
size_t wan_activation_bytes(const wan_model *m);

/* Check an input shape against the config and the model's max (divisibility by the patch, RoPE range,
 * arena size). Returns 0 with the reason in err, or 1. */
int wan_shape_check(const wan_model *m, const wan_shape *s, char *err, size_t errlen);

/* Forward: latents [B, C, T, H, W], timesteps [B], text [B, L, text_dim], text_lens [B] (valid tokens of
 * each sample, 1..L; NULL = all L) -> out [B, C_out, T, H, W]. Saves what the backward needs (inputs are
 * copied; the caller's buffers may change afterwards). Dies on a bad shape or text length. */
void wan_forward(wan_model *m, float *out, const float *latents, const float *timesteps, const float *text,
                 const int *text_lens, const wan_shape *s);
/* Backward of the last forward: accumulates (+=) parameter gradients from dout [B, C_out, T, H, W]. */
void wan_backward(wan_model *m, const float *dout);

/* Make a trainable m a pipeline stage running blocks [block_begin, block_end) with n_arenas activation arenas
 * (each sized for the stage's blocks only); arena 0 becomes current. */
void wan_set_stage(wan_model *m, int block_begin, int block_end, int n_arenas);
void wan_use_arena(wan_model *m, int k);
/* The stage-boundary tensors of the current arena for input shape s (model.h): the hidden states [B*N, d]
 * entering block_begin (FWD_IN) or leaving block_end - 1 (FWD_OUT) (N: this rank's chunk of the tokens under
 * context parallelism, its share of that under sequence parallelism), temb [B, d] (the head's modulation),
 * time_proj's output [B, 6d] (every block's) and the projected text [B*L, d]; STAGE_GRAD: their gradients. */
void wan_stage_tensors(wan_model *m, const wan_shape *s, stage_dir dir, stage_tensors *io);

/* The 3-D RoPE tables of the last forward, cos and sin [tokens, head_dim / 2] (for verification). */
const float *wan_rope_cos(const wan_model *m);
const float *wan_rope_sin(const wan_model *m);

/* Model FLOPs of one forward on shape s: every matrix product (2 M N K) and attention (4 B H Nq Nk D, masked keys
 * counted) the forward runs, elementwise work not counted (docs/ARCHITECTURE.md "Model FLOPs"; tests/test_flops.c
 * checks it against the kernels' own count). A training step is counted as 3x. */
double wan_forward_flops(const wan_model *m, const wan_shape *s);

/* Config as JSON in diffusers' transformer/config.json keys (patch_size, num_attention_heads,
 * attention_head_dim, ..., cross_attn_norm, qk_norm), so a diffusers config.json parses too. */
char *wan_config_to_json(const wan_config *c); /* malloc'ed */
int wan_config_from_json(wan_config *c, const char *text, char *err, size_t errlen);
/* Weights files: F32 safetensors under diffusers names with the config as metadata "dfm_wan_config".
 * buf: m->params or an EMA copy laid out by m->table. extra_meta: NULL-terminated key/value pairs or NULL. */
void wan_save_weights(const wan_model *m, const float *buf, const char *path, const char *const *extra_meta);
/* Load every tensor of m->table by name into buf (F32/F16/BF16/F64 converted; a missing tensor or a shape
 * mismatch is an error naming the tensor and both shapes). 0, or -1 with the message in err. */
int wan_load_weights(const wan_model *m, float *buf, const char *path, char *err, size_t errlen);
/* Create m from a dfm weights file's config (for inputs up to max; max NULL: weights only, as
 * wan_create_weights_only) and load its weights. 0, or -1 + err. */
int wan_open_weights(wan_model *m, const char *path, const wan_shape *max, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
