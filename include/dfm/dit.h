/* DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers"), adaLN-Zero, class-conditional.
 *
 * Parameter names are those of diffusers' DiTTransformer2DModel. dfm keeps ONE timestep/class embedder
 * (as the paper does) under block 0's names; diffusers stores a copy in every block, so export writes the
 * copies and import reads block 0's (see docs/ARCHITECTURE.md). */
#ifndef DFM_DIT_H
#define DFM_DIT_H

#include "dfm/model.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int num_layers;
    int hidden_size;
    int num_heads;
    int ffn_hidden_size; /* 0 = 4 * hidden_size */
    int patch_size;
    int in_channels;
    int out_channels; /* 0 = in_channels */
    int image_size;   /* input height = width (diffusers: sample_size) */
    int num_classes;  /* the class table has num_classes + 1 rows: the last is the null class */
    int freq_dim;     /* timestep sinusoid width, 256 */
    float norm_eps;   /* eps of each block's second LayerNorm (diffusers' norm_eps); the others use 1e-6 */
} dit_config;

/* Named configs: "tiny", "S/2", "B/2", "L/2", "XL/2" (DiT-S/2 etc). Returns 0 if the name is unknown. */
int dit_config_named(dit_config *c, const char *name);
/* Fill defaults (ffn, out_channels) and validate; on error returns 0 with a message in err. */
int dit_config_check(dit_config *c, char *err, size_t errlen);

typedef struct dit_acts dit_acts;

typedef struct {
    dit_config cfg;
    int d, T, grid, head_dim, ffn, patch_dim, out_dim; /* derived sizes */
    /* tensor parallelism (dit_create_tp): this rank's heads, attention width (heads x head_dim) and FFN columns;
     * tp = 1: the whole model (heads_local = num_heads, ...) */
    int tp, tp_rank, heads_local, attn_local, ffn_local;
    /* sequence parallelism (dit_set_sequence_parallel): outside attention and the MLP this rank holds tokens
     * [tp_rank T_local, (tp_rank + 1) T_local) of every sample; sp = 0: T_local = T */
    int sp, T_local;
    /* context parallelism (dit_set_context_parallel): T is this rank's chunk of the T_full tokens, starting at global
     * token tok0 (positions >= T_full are padding; under sequence parallelism T is a multiple of tp, so T_local is
     * this TP rank's share of the chunk); cp = 1: T = T_full, tok0 = 0 */
    int cp, cp_rank, cp_comm, T_full, tok0;
    float *cp_full; /* [max_batch, T_full, max(patch_dim, out_dim)]: the whole sample's patches / output tokens */
    param_table table;
    float *params, *grads; /* one buffer each, table.total floats */
    int max_batch;
    dit_acts *acts;   /* activation and scratch buffers for max_batch samples */
    float *pos_embed; /* fixed [T, d] */
    /* parameter segments in table order: 0 = patch/timestep/class embedders, 1..L = blocks, L+1 = output
     * head; the forward visits them in this order, the backward in reverse */
    int nseg;
    size_t *seg_begin;   /* nseg + 1 offsets into the table */
    segment_hooks hooks; /* zero: parameters and gradients are m->params / m->grads */
    /* pipeline stage (dit_set_stage): the forward and backward run blocks [block_begin, block_end), the embedders
     * only when block_begin = 0, the output head only when block_end = num_layers; one activation arena per
     * micro-batch in flight, m->acts the current one (dit_use_arena) */
    int block_begin, block_end;
    int n_arenas;
    dit_acts **arenas;
} dit_model;

/* Build the model (parameter table, buffers) for micro-batches of up to max_batch samples. Dies on a bad config. */
void dit_create(dit_model *m, const dit_config *cfg, int max_batch);
/* The same as tensor-parallel rank tp_rank of tp (Megatron's split: q/k/v and ff.net.0 column-parallel, split
 * by heads and FFN columns; to_out.0 and ff.net.2 row-parallel; everything else whole on every rank). The table
 * lists this rank's slices (param_entry.split_*); forward and backward all-reduce over the TP group. */
void dit_create_tp(dit_model *m, const dit_config *cfg, int max_batch, int tp, int tp_rank);
/* Make m context-parallel rank cp_rank of cp (comm_type: a cp_comm_type of context_parallel.h): the network runs on
 * this rank's chunk of the tokens, attention over all of them. Call right after dit_create(_tp), before
 * dit_set_recompute / dit_set_stage. dit_forward still takes and returns whole images; out is zero outside this rank's
 * tokens (dit_cp_owned says which pixels are its), and dit_backward reads dout only there. */
void dit_set_context_parallel(dit_model *m, int cp, int cp_rank, int comm_type);
/* mask[c h w] = 1 where the pixel of a [C, H, W] sample belongs to one of this rank's tokens (C = channels). */
void dit_cp_owned(const dit_model *m, unsigned char *mask, int channels);
/* 1 if tp divides the head count and the FFN width, else 0 with err naming both numbers. */
int dit_tp_check(const dit_config *cfg, int tp, char *err, size_t errlen);
void dit_free(dit_model *m);
/* Paper initialisation (xavier-uniform linears, N(0, 0.02) embeddings, zero adaLN and output) from a seed. */
void dit_init(dit_model *m, uint64_t seed);
/* Activation recomputation (checkpointing), as wan_set_recompute: the first `blocks` blocks (0 = none, the default;
 * num_layers = every block) keep only their input from the forward and share one activation slot; the backward runs
 * a block's forward again just before its backward. Bit-identical gradients, (blocks - 1) blocks' activations fewer.
 * Reallocates the arena (call it between steps, not between a forward and its backward). 0, or -1 with the reason
 * in err (blocks outside 0..num_layers). */
int dit_set_recompute(dit_model *m, int blocks, char *err, size_t errlen);
/* The general form: the first `blocks` blocks recomputed in checkpoints of `chunk` consecutive blocks from the
 * stage's first (Megatron's uniform with recompute_num_layers = chunk; the last checkpoint may be shorter): a
 * checkpoint keeps only its first block's input, and its blocks' activations live in `chunk` shared slots,
 * re-run from that input before the checkpoint's last block is differentiated. selective (blocks must be 0):
 * every block keeps its activations but its core attention's output and log-sum-exp, one pair shared by all
 * blocks; the backward re-runs the attention kernel on the kept qkv. Bit-identical gradients either way. */
int dit_set_recompute_mode(dit_model *m, int blocks, int chunk, int selective, char *err, size_t errlen);
/* Sequence parallelism over the TP group (Megatron's sequence_parallel): the residual stream, norms, modulation,
 * gates and residual adds hold T / tp tokens of every sample; the inputs of the column-parallel linears are
 * all-gathered, the row-parallel outputs reduce-scattered (sums in rank order). The embedders and the output head
 * run on the whole sequence. Reallocates the arena (call it before the pipeline stage). With context parallelism
 * (dit_set_context_parallel first) the "sequence" is this rank's chunk, its length rounded up to a multiple of tp.
 * 0, or -1 with err (tp = 1, or without context parallelism a token count tp does not divide: both numbers named). */
int dit_set_sequence_parallel(dit_model *m, int on, char *err, size_t errlen);
/* Bytes held by activations + scratch. */
size_t dit_activation_bytes(const dit_model *m);

/* Forward: x [B, C, H, W], t [B] (model timesteps), labels [B] (num_classes = null class) -> out [B, C_out, H, W].
 * Saves what the backward needs. */
void dit_forward(dit_model *m, float *out, const float *x, const float *t, const int *labels, int B);
/* Backward of the last forward: accumulates parameter gradients from dout [B, C_out, H, W]. */
void dit_backward(dit_model *m, const float *dout, int B);
/* Weights files: F32 safetensors under diffusers names (block 0 holding the shared embedder) with the
 * config as metadata "dfm_dit_config" (JSON), so the file alone rebuilds the model. */
char *dit_config_to_json(const dit_config *c); /* malloc'ed */
int dit_config_from_json(dit_config *c, const char *text, char *err, size_t errlen);
/* buf: m->params or an EMA copy laid out by m->table. extra_meta: NULL-terminated key/value pairs or NULL. */
void dit_save_weights(const dit_model *m, const float *buf, const char *path, const char *const *extra_meta);
/* Create m from the file's config (for micro-batches up to max_batch) and load its weights. 0 or -1 + err. */
int dit_open_weights(dit_model *m, const char *path, int max_batch, char *err, size_t errlen);

/* Make m a pipeline stage running blocks [block_begin, block_end) with n_arenas activation arenas (each sized
 * for the stage's blocks only). Every other arena is freed; arena 0 becomes current. */
void dit_set_stage(dit_model *m, int block_begin, int block_end, int n_arenas);
void dit_use_arena(dit_model *m, int k);
/* The stage-boundary tensors of the current arena for a micro-batch of B samples (model.h): the hidden states
 * [B, T, d] entering block_begin (FWD_IN) or leaving block_end - 1 (FWD_OUT) and the conditioning silu(c)
 * [B, d]; STAGE_GRAD: their gradients. */
void dit_stage_tensors(dit_model *m, int B, stage_dir dir, stage_tensors *io);

/* Model FLOPs of one forward of B samples (matrix products and attention); a training step is about 3x. */
double dit_forward_flops(const dit_model *m, int B);
/* Zero the gradient buffer. */
void dit_zero_grad(dit_model *m);

#ifdef __cplusplus
}
#endif
#endif
